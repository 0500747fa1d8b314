// `weftctl install -f values.yaml`: the knobs users expect from a chart, applied to the rendered
// objects in one place (after the renderers), so every renderer stays about what Weft needs and
// this file about what a cluster operator adds. A bad value is refused with its field path.
//
//   image: registry.example/weft:0.1.0        # the same as the flags of the same name (flags win)
//   trustDomain: cluster.local
//   trustDomainAliases: [old-td.example]     # Istio's meshConfig.trustDomainAliases
//   namespace: weft-system
//   caSecret: weft-ca
//   logLevel: info
//   controller: { replicas: 2, resources: {...}, nodeSelector: {...}, tolerations: [...] }
//   agent: { resources: {...}, nodeSelector: {...}, tolerations: [...] }
//   imagePullSecrets: [regcred]
//   podLabels: { team: mesh }                # on every Weft pod
//   podAnnotations: { example.com/owner: mesh }
//   podMonitor: true                         # a monitoring.coreos.com/v1 PodMonitor for :15020
import { parse as parseYaml } from 'yaml';
import { InstallOptionError } from './errors.ts';
import { AGENT_NAME, CONTROLLER_NAME, PART_OF } from './names.ts';

export interface Resources {
  requests?: Record<string, string>;
  limits?: Record<string, string>;
}

export interface Toleration {
  key?: string;
  operator?: 'Exists' | 'Equal';
  value?: string;
  effect?: 'NoSchedule' | 'PreferNoSchedule' | 'NoExecute';
  tolerationSeconds?: number;
}

export interface ComponentValues {
  resources?: Resources;
  nodeSelector?: Record<string, string>;
  tolerations?: Toleration[];
}

export interface InstallValues {
  image?: string;
  trustDomain?: string;
  trustDomainAliases?: string[];
  namespace?: string;
  caSecret?: string;
  logLevel?: string;
  controller?: ComponentValues & { replicas?: number };
  agent?: ComponentValues;
  imagePullSecrets?: string[];
  podLabels?: Record<string, string>;
  podAnnotations?: Record<string, string>;
  podMonitor?: boolean;
}

const QUANTITY = /^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|E|Ei|P|Pi)?$/;
const LABEL_KEY = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
const NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

type Json = unknown;
const isMap = (v: Json): v is Record<string, Json> => !!v && typeof v === 'object' && !Array.isArray(v);

/** Parses and checks a values file; throws InstallOptionError naming the file and the field. */
export function parseValues(text: string, file: string): InstallValues {
  let doc: Json;
  try {
    doc = parseYaml(text) as Json;
  } catch (e) {
    throw new InstallOptionError('values', `${file}: not YAML (${(e as Error).message})`);
  }
  if (doc === null || doc === undefined) return {};
  const bad = (path: string, msg: string): never => {
    throw new InstallOptionError('values', `${file}: ${path}: ${msg}`);
  };
  const known = (v: Record<string, Json>, path: string, keys: readonly string[]) => {
    for (const k of Object.keys(v)) if (!keys.includes(k)) bad(path ? `${path}.${k}` : k, `unknown field (known: ${keys.join(', ')})`);
  };
  const str = (v: Json, path: string): string => (typeof v === 'string' ? v : bad(path, `must be a string, not ${JSON.stringify(v)}`));
  const stringMap = (v: Json, path: string, keyRe: RegExp, valueRe?: RegExp): Record<string, string> => {
    if (!isMap(v)) bad(path, 'must be a map of strings');
    const out: Record<string, string> = {};
    for (const [k, x] of Object.entries(v as Record<string, Json>)) {
      if (!keyRe.test(k)) bad(`${path}["${k}"]`, 'is not a valid label or annotation key');
      const s = str(x, `${path}["${k}"]`);
      if (valueRe && !valueRe.test(s)) bad(`${path}["${k}"]`, `"${s}" is not a valid label value`);
      out[k] = s;
    }
    return out;
  };
  const resources = (v: Json, path: string): Resources => {
    if (!isMap(v)) bad(path, 'must be a map with requests and/or limits');
    known(v as Record<string, Json>, path, ['requests', 'limits']);
    const out: Resources = {};
    for (const part of ['requests', 'limits'] as const) {
      const m = (v as Record<string, Json>)[part];
      if (m === undefined) continue;
      if (!isMap(m)) bad(`${path}.${part}`, 'must be a map like {cpu: 100m, memory: 128Mi}');
      const q: Record<string, string> = {};
      for (const [k, x] of Object.entries(m as Record<string, Json>)) {
        const s = typeof x === 'number' ? String(x) : str(x, `${path}.${part}.${k}`);
        if (!QUANTITY.test(s)) bad(`${path}.${part}.${k}`, `"${s}" is not a Kubernetes quantity (e.g. 100m, 128Mi, 2)`);
        q[k] = s;
      }
      out[part] = q;
    }
    return out;
  };
  const tolerations = (v: Json, path: string): Toleration[] => {
    if (!Array.isArray(v)) bad(path, 'must be a list');
    return (v as Json[]).map((t, i) => {
      const p = `${path}[${i}]`;
      if (!isMap(t)) bad(p, 'must be a map');
      known(t as Record<string, Json>, p, ['key', 'operator', 'value', 'effect', 'tolerationSeconds']);
      const r = t as Record<string, Json>;
      if (r['operator'] !== undefined && r['operator'] !== 'Exists' && r['operator'] !== 'Equal') bad(`${p}.operator`, 'must be Exists or Equal');
      if (r['effect'] !== undefined && !['NoSchedule', 'PreferNoSchedule', 'NoExecute'].includes(r['effect'] as string)) bad(`${p}.effect`, 'must be NoSchedule, PreferNoSchedule or NoExecute');
      if (r['tolerationSeconds'] !== undefined && !Number.isInteger(r['tolerationSeconds'])) bad(`${p}.tolerationSeconds`, 'must be a whole number');
      return r as Toleration;
    });
  };
  const component = (v: Json, path: string, extra: readonly string[]): ComponentValues & { replicas?: number } => {
    if (!isMap(v)) bad(path, 'must be a map');
    const m = v as Record<string, Json>;
    known(m, path, ['resources', 'nodeSelector', 'tolerations', ...extra]);
    const out: ComponentValues & { replicas?: number } = {};
    if (m['resources'] !== undefined) out.resources = resources(m['resources'], `${path}.resources`);
    if (m['nodeSelector'] !== undefined) out.nodeSelector = stringMap(m['nodeSelector'], `${path}.nodeSelector`, LABEL_KEY, LABEL_VALUE);
    if (m['tolerations'] !== undefined) out.tolerations = tolerations(m['tolerations'], `${path}.tolerations`);
    if (m['replicas'] !== undefined) {
      if (!Number.isInteger(m['replicas'])) bad(`${path}.replicas`, 'must be a whole number');
      out.replicas = m['replicas'] as number;
    }
    return out;
  };

  if (!isMap(doc)) bad('<root>', 'must be a map');
  const d = doc as Record<string, Json>;
  known(d, '', ['image', 'trustDomain', 'trustDomainAliases', 'namespace', 'caSecret', 'logLevel', 'controller', 'agent', 'imagePullSecrets', 'podLabels', 'podAnnotations', 'podMonitor']);
  const out: InstallValues = {};
  for (const k of ['image', 'trustDomain', 'namespace', 'caSecret', 'logLevel'] as const) if (d[k] !== undefined) out[k] = str(d[k], k);
  if (d['trustDomainAliases'] !== undefined) {
    if (!Array.isArray(d['trustDomainAliases'])) bad('trustDomainAliases', 'must be a list of trust domains');
    out.trustDomainAliases = (d['trustDomainAliases'] as Json[]).map((td, i) => str(td, `trustDomainAliases[${i}]`));
  }
  if (d['controller'] !== undefined) out.controller = component(d['controller'], 'controller', ['replicas']);
  if (d['agent'] !== undefined) out.agent = component(d['agent'], 'agent', []);
  if (d['imagePullSecrets'] !== undefined) {
    if (!Array.isArray(d['imagePullSecrets'])) bad('imagePullSecrets', 'must be a list of Secret names');
    out.imagePullSecrets = (d['imagePullSecrets'] as Json[]).map((s, i) => {
      const n = str(isMap(s) ? s['name'] : s, `imagePullSecrets[${i}]`);
      if (!NAME.test(n)) bad(`imagePullSecrets[${i}]`, `"${n}" is not a Secret name`);
      return n;
    });
  }
  if (d['podLabels'] !== undefined) out.podLabels = stringMap(d['podLabels'], 'podLabels', LABEL_KEY, LABEL_VALUE);
  if (d['podAnnotations'] !== undefined) out.podAnnotations = stringMap(d['podAnnotations'], 'podAnnotations', LABEL_KEY);
  if (d['podMonitor'] !== undefined) {
    if (typeof d['podMonitor'] !== 'boolean') bad('podMonitor', 'must be true or false');
    out.podMonitor = d['podMonitor'] as boolean;
  }
  return out;
}

interface PodOwner {
  kind?: string;
  metadata?: { name?: string; namespace?: string };
  spec?: { template?: { metadata?: { labels?: Record<string, string>; annotations?: Record<string, string> }; spec?: Record<string, unknown> & { containers?: Array<{ name: string; resources?: unknown }> } } };
}

/** Applies the values to rendered objects (in place) and returns them with a PodMonitor when asked. */
export function applyValues<T extends object>(objects: T[], v: InstallValues, namespace: string): Array<T | Record<string, unknown>> {
  for (const o of objects as PodOwner[]) {
    if (o.kind !== 'Deployment' && o.kind !== 'DaemonSet') continue;
    const tpl = o.spec?.template;
    if (!tpl?.spec) continue;
    const component = o.metadata?.name === CONTROLLER_NAME ? v.controller : o.metadata?.name === AGENT_NAME ? v.agent : undefined;
    tpl.metadata = { ...tpl.metadata, labels: { ...(v.podLabels ?? {}), ...(tpl.metadata?.labels ?? {}) }, annotations: { ...(tpl.metadata?.annotations ?? {}), ...(v.podAnnotations ?? {}) } };
    if (v.imagePullSecrets?.length) tpl.spec['imagePullSecrets'] = v.imagePullSecrets.map((name) => ({ name }));
    if (component?.nodeSelector) tpl.spec['nodeSelector'] = { ...(tpl.spec['nodeSelector'] as object | undefined), ...component.nodeSelector };
    // The agent already tolerates every taint; more tolerations add to the controller's.
    if (component?.tolerations) tpl.spec['tolerations'] = [...((tpl.spec['tolerations'] as Toleration[] | undefined) ?? []), ...component.tolerations];
    const main = tpl.spec.containers?.[0];
    if (component?.resources && main) main.resources = component.resources;
  }
  const out: Array<T | Record<string, unknown>> = [...objects];
  if (v.podMonitor) {
    out.push({
      apiVersion: 'monitoring.coreos.com/v1',
      kind: 'PodMonitor',
      metadata: { name: PART_OF, namespace, labels: { 'app.kubernetes.io/part-of': PART_OF } },
      spec: {
        selector: { matchLabels: { 'app.kubernetes.io/part-of': PART_OF } },
        podMetricsEndpoints: [{ port: 'http-metrics', path: '/metrics', interval: '15s' }],
        namespaceSelector: { matchNames: [namespace] },
      },
    });
  }
  return out;
}
