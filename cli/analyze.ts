// `weftctl analyze`: everything the controller would find about a set of objects, and what only
// becomes visible with all of them at hand, without a running mesh. The objects go through the
// controller's own object store (controller/src/store.ts: the same validation, null handling and
// "last valid version" rules) and compiler (controller/src/compile.ts: the status findings); the
// checks added here read the compiled model:
//   - routes that no waypoint enforces (their Service has none) and rules two routes both claim;
//   - AuthorizationPolicies with targetRefs to a Service without waypoint (nothing enforces them),
//     and L7 rules in policies the node agents enforce (they fail closed: an agent sees no HTTP);
//   - policies whose selector selects no workload (Pods, or the pod templates of Deployments,
//     StatefulSets, DaemonSets, ReplicaSets and Jobs in the same input);
//   - GAMMA consumer routes (a route whose parent Service is in another namespace applies to
//     requests from the route's namespace only);
//     (route status reasons NoWaypoint and RefNotPermitted come from compile.ts itself);
//   - a namespace label naming a Waypoint that does not exist.
// Severities follow `istioctl analyze`: Error and Warning fail the run (exit 1), Info does not.
import type { CompileFinding, CompileOptions } from '../controller/src/compile.ts';
import { compileObjects, type Compiled } from './mesh-view.ts';
import type { RawObject } from '../controller/src/sources/source.ts';
import { KINDS, groupOf, isMeshKind, keyOfNamed, nameIn, objectKey } from '../lib/model/objects.ts';
import { labelsMatch, type MeshModel } from '../lib/model/mesh.ts';

export type Severity = 'Error' | 'Warning' | 'Info';

export interface Finding {
  severity: Severity;
  /** Stable: the controller's status reason, or an analyzer code (RouteConflict, …). */
  code: string;
  kind: string;
  namespace: string;
  name: string;
  /** Field path inside the object, when one field is at fault. */
  path?: string;
  message: string;
  /** File the object came from (files), absent for objects read from the API. */
  source?: string;
}

export interface AnalyzeInput {
  object: unknown;
  source?: string;
}

export interface AnalyzeOptions {
  /** Namespace for namespaced objects that give none (files); default `default`. */
  defaultNamespace?: string;
  /**
   * Every workload of the mesh is in the input (a cluster): a selector that matches none is a
   * finding even in a namespace with no workload at all. Files usually hold only some of them.
   */
  complete?: boolean;
  /** What the install's controller compiles with (a cluster: mesh-view.ts installCompileOptions); default the controller's defaults. */
  compile?: CompileOptions;
}

/** Kinds whose pod template's labels stand for the pods they will create. */
const POD_TEMPLATE_KINDS = new Set(['Deployment', 'StatefulSet', 'DaemonSet', 'ReplicaSet', 'Job']);

/** The severity of each controller status reason (compile.ts findings). */
const COMPILE_SEVERITY: Record<string, Severity> = {
  WaypointNotFound: 'Warning',
  AttachmentDenied: 'Warning',
  TargetNotFound: 'Warning',
  BackendNotFound: 'Error',
  NoMatchingParent: 'Warning',
  Conflicted: 'Warning',
  RefNotPermitted: 'Warning',
  NoWaypoint: 'Warning',
  UnsupportedValue: 'Warning',
  AncestorNotBound: 'Warning',
};

type Meta = { name?: unknown; namespace?: unknown; labels?: unknown };
type Loose = { apiVersion?: unknown; kind?: unknown; metadata?: Meta; spec?: Record<string, unknown>; [k: string]: unknown };

function str(v: unknown): string {
  return typeof v === 'string' ? v : '';
}

export function analyze(inputs: readonly AnalyzeInput[], options: AnalyzeOptions = {}): Finding[] {
  const findings: Finding[] = [];
  const sourceOf = new Map<string, string>();
  /** The API group of each object read, by key: a refusal is named with it (nameIn). */
  const groupAt = new Map<string, string>();
  const raw: RawObject[] = [];
  const others: Loose[] = [];
  const seen = new Map<string, string | undefined>();
  for (const { object, source } of inputs) {
    if (!object || typeof object !== 'object' || Array.isArray(object)) continue;
    const o = object as Loose;
    const kind = str(o.kind);
    if (!isMeshKind(kind)) {
      others.push(o);
      continue;
    }
    const meta = o.metadata;
    if (KINDS[kind].namespaced && meta && typeof meta === 'object' && meta.namespace === undefined) {
      o.metadata = { ...meta, namespace: options.defaultNamespace ?? 'default' };
    }
    // The same name in another API group (weft.dev, security.istio.io) is another object, enforced
    // beside the first (the store holds both), not a later definition of this one.
    const key = objectKey(o);
    if (seen.has(key)) {
      findings.push({
        severity: 'Warning', code: 'Duplicate', kind, namespace: str(o.metadata?.namespace), name: str(o.metadata?.name),
        message: `defined again${source ? ` in ${source}` : ''}${seen.get(key) ? ` (first in ${seen.get(key)})` : ''}; the later definition wins`,
        ...(source ? { source } : {}),
      });
    }
    seen.set(key, source);
    groupAt.set(key, groupOf(str(o.apiVersion)));
    if (source) sourceOf.set(key, source);
    raw.push(o as RawObject);
  }

  // The controller's own path: validate into the object store, then compile.
  const { model, findings: compiled, rejections, inputs: meshInputs } = compileObjects(raw, options.compile);
  for (const r of rejections) {
    for (const i of r.issues) {
      const source = sourceOf.get(r.key);
      // Named as the controller names it (nameIn): a refusal in each group of one name is two findings.
      findings.push({ severity: 'Error', code: 'Invalid', kind: i.kind, namespace: i.namespace, name: nameIn(i.kind, i.name, groupAt.get(r.key)), ...(i.path ? { path: i.path } : {}), message: i.message, ...(source ? { source } : {}) });
    }
  }
  const at = (kind: string, namespace: string, name: string) => {
    // A finding names the object as the controller does (nameIn's name@group).
    const source = sourceOf.get(keyOfNamed(kind, isMeshKind(kind) && KINDS[kind].namespaced ? namespace : undefined, name));
    return source ? { source } : {};
  };
  const add = (f: Omit<Finding, 'source'>) => findings.push({ ...f, ...at(f.kind, f.namespace, f.name) });
  for (const c of compiled) add(fromCompile(c));

  routeChecks(model, meshInputs, add);
  policyChecks(model, meshInputs, others, options, add);
  return dedupe(findings).sort(byObject);
}

function fromCompile(c: CompileFinding): Omit<Finding, 'source'> {
  return { severity: COMPILE_SEVERITY[c.reason] ?? 'Warning', code: c.reason, kind: c.kind, namespace: c.namespace, name: c.name, ...(c.path ? { path: c.path } : {}), message: c.message };
}

type Add = (f: Omit<Finding, 'source'>) => void;
type Inputs = Compiled['inputs'];

function routeChecks(model: MeshModel, inputs: Inputs, add: Add): void {
  // Routes are enforced by the waypoint of their parent Service; without one nothing applies them.
  const claimed = new Map<string, { route: string; order: string }>();
  const routes = [...model.routes.values()].sort((a, b) => (a.order < b.order ? -1 : a.order > b.order ? 1 : 0));
  for (const r of routes) {
    // A route on a Service without a waypoint, and backendRefs no ReferenceGrant permits, are the
    // controller's own findings (NoWaypoint, RefNotPermitted in compile.ts), reported above.
    // Gateway API: among routes claiming the same match on the same parent, the oldest wins.
    r.rules.forEach((rule, i) => {
      for (const m of rule.matches) {
        const k = `${r.service}\u0000${r.port ?? '*'}\u0000${[...r.hostnames].sort().join(',')}\u0000${JSON.stringify(m)}`;
        const first = claimed.get(k);
        if (!first) claimed.set(k, { route: `${r.kind} ${r.namespace}/${r.name}`, order: r.order });
        else if (first.route !== `${r.kind} ${r.namespace}/${r.name}`) {
          add({ severity: 'Warning', code: 'RouteConflict', kind: r.kind, namespace: r.namespace, name: r.name, path: `spec.rules[${i}].matches`, message: `${first.route} already routes the same match (${describeMatch(m)}) on Service ${r.service}; the older route wins` });
        }
      }
    });
  }
  // GAMMA: a route in another namespace than its parent Service is a consumer route.
  for (const r of [...inputs.httpRoutes, ...inputs.grpcRoutes]) {
    const ns = r.metadata.namespace!;
    (r.spec.parentRefs ?? []).forEach((p, i) => {
      if (p.namespace && p.namespace !== ns) {
        add({ severity: 'Info', code: 'ConsumerRoute', kind: r.kind, namespace: ns, name: r.metadata.name, path: `spec.parentRefs[${i}]`, message: `consumer route: it applies only to requests from namespace ${ns} to Service ${p.namespace}/${p.name} (Gateway API GAMMA)` });
      }
    });
  }
}

function describeMatch(m: { path?: { type: string; value: string }; headers?: unknown[]; method?: string }): string {
  const parts = [m.path ? `${m.path.type} ${m.path.value}` : 'any path'];
  if (m.method) parts.push(m.method);
  if (m.headers && m.headers.length > 0) parts.push(`${m.headers.length} header(s)`);
  return parts.join(', ');
}

function policyChecks(model: MeshModel, inputs: Inputs, others: Loose[], options: AnalyzeOptions, add: Add): void {
  // Labels of every workload known, by namespace: Pods, and the pod templates of controllers.
  const labels = new Map<string, Array<Record<string, string>>>();
  const push = (ns: string, l: Record<string, string>) => {
    let list = labels.get(ns);
    if (!list) labels.set(ns, (list = []));
    list.push(l);
  };
  for (const p of inputs.pods) push(p.metadata.namespace!, p.metadata.labels ?? {});
  for (const o of others) {
    if (!POD_TEMPLATE_KINDS.has(str(o.kind))) continue;
    const tpl = (o.spec as { template?: { metadata?: { labels?: Record<string, string> } } } | undefined)?.template;
    push(str(o.metadata?.namespace) || (options.defaultNamespace ?? 'default'), tpl?.metadata?.labels ?? {});
  }
  const selectsNothing = (ns: string, selector: Record<string, string>): boolean => {
    const list = labels.get(ns);
    if (!list) return options.complete === true;
    return !list.some((l) => labelsMatch(selector, l));
  };
  for (const p of model.policies.values()) {
    if (p.scope === 'workload' && p.selector && selectsNothing(p.namespace, p.selector)) {
      add({ severity: 'Warning', code: 'SelectsNothing', kind: 'AuthorizationPolicy', namespace: p.namespace, name: p.name, path: 'spec.selector', message: `selector ${formatSelector(p.selector)} matches no workload in namespace ${p.namespace}` });
    }
  }
  for (const pa of model.peerAuthentications.values()) {
    if (pa.scope === 'workload' && pa.selector && selectsNothing(pa.namespace, pa.selector)) {
      add({ severity: 'Warning', code: 'SelectsNothing', kind: 'PeerAuthentication', namespace: pa.namespace, name: pa.name, path: 'spec.selector', message: `selector ${formatSelector(pa.selector)} matches no workload in namespace ${pa.namespace}` });
    }
  }
}

function formatSelector(s: Record<string, string>): string {
  return Object.entries(s).map(([k, v]) => `${k}=${v}`).join(',') || '{}';
}

function dedupe(list: Finding[]): Finding[] {
  const seen = new Set<string>();
  return list.filter((f) => {
    const k = `${f.code}\u0000${f.kind}\u0000${f.namespace}\u0000${f.name}\u0000${f.path ?? ''}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

const RANK: Record<Severity, number> = { Error: 0, Warning: 1, Info: 2 };
function byObject(a: Finding, b: Finding): number {
  return RANK[a.severity] - RANK[b.severity] || `${a.kind}/${a.namespace}/${a.name}/${a.path ?? ''}`.localeCompare(`${b.kind}/${b.namespace}/${b.name}/${b.path ?? ''}`);
}

/** `Warning [NoWaypoint] HTTPRoute shop/reviews spec.parentRefs (routes.yaml): message` */
export function formatFinding(f: Finding): string {
  const obj = `${f.kind} ${f.namespace ? `${f.namespace}/` : ''}${f.name}`;
  return `${f.severity} [${f.code}] ${obj}${f.path ? ` ${f.path}` : ''}${f.source ? ` (${f.source})` : ''}: ${f.message}`;
}

/** 0 clean (Info allowed), 1 an Error or Warning. */
export function analyzeExitCode(findings: readonly Finding[]): 0 | 1 {
  return findings.some((f) => f.severity !== 'Info') ? 1 : 0;
}
