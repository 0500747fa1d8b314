// `weftctl uninstall`: removes a Weft installation from a cluster, BPF pins included.
//
// Order matters. The agents' pins outlive their pods on purpose (a restarted agent adopts them), so
// deleting the objects alone would leave every enrolled pod's connect() redirected to a port
// nobody listens on. So: (1) delete the agent DaemonSet and wait for its pods to go (a running
// agent would pin again); (2) run the cleanup DaemonSet (`agent --uninstall` on every node, same
// image) and wait until it is ready on every node it is scheduled to; (3) delete it, the waypoint
// objects and ConfigMaps the controller made, the CA and debug-token Secrets and Lease it created, and every object
// `weftctl install` renders (the namespace last but one, and only when nothing but Weft's is left in
// it; the CRDs last unless kept).
import type { KubeConfig, KubernetesObject, KubernetesObjectApi } from '@kubernetes/client-node';
import { AGENT_NAME, CONTROLLER_LEASE, DEFAULT_CA_SECRET, TRUST_BUNDLE_CONFIGMAP } from '../../lib/defaults.ts';
import { DEBUG_TOKEN_SECRET } from '../../lib/debug-http.ts';
import { WAYPOINT_OBJECTS_SELECTOR } from '../../lib/model/objects.ts';
import { AGENT_CLEANUP_NAME, renderAgentCleanup } from './agent.ts';
import { PART_OF } from './names.ts';
import { resolveInstallOptions, type InstallOptions } from './options.ts';
import { renderInstall } from './render.ts';
import { clientNode } from '../kube.ts';

/**
 * Every object `weftctl install` may have rendered in namespace `ns`, whatever its options: the
 * multi-cluster parts and the dashboard too (the east-west gateway; the weft-reader and
 * weft-dashboard ClusterRoles and bindings, which deleting the namespace would leave behind, the
 * dashboard's granting pods/proxy cluster-wide to whoever recreates its ServiceAccount). Objects
 * that are not there are skipped.
 */
export function installedObjects(ns: string, image: string): KubernetesObject[] {
  return renderInstall({ image, trustDomain: 'cluster.local', namespace: ns, clusterId: 'uninstall', eastwest: true, dashboard: true, warn: () => {} }) as KubernetesObject[];
}

/** Kinds whose objects in Weft's namespace would be lost with it (Weft's own carry its labels). */
const FOREIGN_KINDS: ReadonlyArray<readonly [string, string]> = [
  ['v1', 'Pod'], ['apps/v1', 'Deployment'], ['apps/v1', 'StatefulSet'], ['apps/v1', 'DaemonSet'], ['batch/v1', 'Job'],
  ['v1', 'Service'], ['v1', 'ConfigMap'], ['v1', 'Secret'], ['v1', 'PersistentVolumeClaim'],
];
/** The ConfigMap Kubernetes puts in every namespace. */
const KUBE_ROOT_CA_CONFIGMAP = 'kube-root-ca.crt';

/** `Kind ns/name` of each object in `ns` that neither Weft nor Kubernetes made, and that is not going away. */
async function foreignObjects(api: KubernetesObjectApi, ns: string): Promise<string[]> {
  const out: string[] = [];
  for (const [apiVersion, kind] of FOREIGN_KINDS) {
    let items: KubernetesObject[];
    try {
      items = (await api.list(apiVersion, kind, ns)).items ?? [];
    } catch (e) {
      // A kind this cluster does not serve holds nothing.
      if (code(e) === 404 || /^Unrecognized API version and kind/.test((e as Error).message)) continue;
      throw new UninstallError(`cannot list ${kind}s in ${ns}: ${(e as Error).message}`, { cause: e });
    }
    for (const x of items) {
      const l = x.metadata?.labels ?? {};
      if (x.metadata?.deletionTimestamp || l['app.kubernetes.io/part-of'] === PART_OF || l['app.kubernetes.io/managed-by'] === 'weft-controller') continue;
      if (kind === 'ConfigMap' && x.metadata?.name === KUBE_ROOT_CA_CONFIGMAP) continue;
      out.push(`${kind} ${ns}/${x.metadata?.name}`);
    }
  }
  return out;
}

export class UninstallError extends Error {
  readonly code = 'WEFT_UNINSTALL';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'UninstallError';
  }
}

export interface UninstallOptions {
  kubeConfig: KubeConfig;
  namespace?: string;
  /** Image of the cleanup DaemonSet; default: the installed agent DaemonSet's image. */
  image?: string;
  /** Keep the CustomResourceDefinitions (and so users' Waypoints and policies). */
  keepCrds?: boolean;
  /** Longest wait for each step; default 180 s. */
  timeoutMs?: number;
  pollMs?: number;
  say?: (line: string) => void;
}

type Obj = KubernetesObject & { spec?: Record<string, unknown>; status?: Record<string, unknown> };

const code = (e: unknown): number | undefined => (e as { code?: number }).code;

export async function uninstall(o: UninstallOptions): Promise<{ deleted: string[] }> {
  const api = (await clientNode()).KubernetesObjectApi.makeApiClient(o.kubeConfig);
  const ns = o.namespace ?? 'weft-system';
  const say = o.say ?? (() => {});
  const timeoutMs = o.timeoutMs ?? 180_000;
  const pollMs = o.pollMs ?? 500;
  const deleted: string[] = [];
  const name = (x: KubernetesObject) => `${x.kind}${x.metadata?.namespace ? ` ${x.metadata.namespace}/` : ' '}${x.metadata?.name}`;
  const read = async (x: KubernetesObject): Promise<Obj | undefined> => {
    try {
      return (await api.read(x as Parameters<typeof api.read>[0])) as Obj;
    } catch (e) {
      if (code(e) === 404) return undefined;
      throw new UninstallError(`cannot read ${name(x)}: ${(e as Error).message}`, { cause: e });
    }
  };
  const remove = async (x: KubernetesObject): Promise<void> => {
    try {
      await api.delete(x);
      deleted.push(name(x));
    } catch (e) {
      if (code(e) === 404) return;
      throw new UninstallError(`cannot delete ${name(x)}: ${(e as Error).message}`, { cause: e });
    }
  };
  const until = async (what: string, done: () => Promise<boolean>): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    while (!(await done())) {
      if (Date.now() > deadline) throw new UninstallError(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
      await new Promise((r) => setTimeout(r, pollMs));
    }
  };
  const podsOf = async (app: string): Promise<number> =>
    ((await api.list('v1', 'Pod', ns, undefined, undefined, undefined, undefined, `app.kubernetes.io/name=${app}`)).items ?? []).length;

  // 1. The agents go first, and are gone before the cleanup runs.
  const agentRef = { apiVersion: 'apps/v1', kind: 'DaemonSet', metadata: { name: AGENT_NAME, namespace: ns } };
  const agentDs = await read(agentRef);
  const image = o.image ?? ((agentDs?.spec?.['template'] as { spec?: { containers?: Array<{ image?: string }> } } | undefined)?.spec?.containers?.[0]?.image);
  if (agentDs) {
    await remove(agentRef);
    say(`deleted DaemonSet ${ns}/${AGENT_NAME}; waiting for its pods to stop`);
    await until(`the agent pods in ${ns} to stop`, async () => (await podsOf(AGENT_NAME)) === 0);
  }

  // 2. The cleanup DaemonSet removes the datapath on every node.
  if (image) {
    const opts: InstallOptions = { image, trustDomain: 'cluster.local', namespace: ns };
    const cleanup = renderAgentCleanup(resolveInstallOptions(opts)) as Obj;
    if (!(await read(cleanup))) await api.create(cleanup);
    say(`started DaemonSet ${ns}/${AGENT_CLEANUP_NAME}: removing BPF programs and pins on every node`);
    await until(`DaemonSet ${ns}/${AGENT_CLEANUP_NAME} to be ready on every node`, async () => {
      const ds = await read(cleanup);
      const st = (ds?.status ?? {}) as { desiredNumberScheduled?: number; numberReady?: number; observedGeneration?: number };
      return !!ds && (st.observedGeneration ?? 0) >= (ds.metadata?.generation ?? 1) && st.numberReady === st.desiredNumberScheduled;
    });
    say('BPF programs detached and pins removed on every node');
    await remove(cleanup);
  } else {
    say(`no agent DaemonSet in ${ns} and no --image: skipping the node cleanup`);
  }

  // 3. What the controller made, then what install rendered.
  // Only what the waypoint reconciler made (an object merely labelled weft.dev/waypoint is someone else's).
  for (const [apiVersion, kind, selector] of [
    ['apps/v1', 'Deployment', WAYPOINT_OBJECTS_SELECTOR],
    ['v1', 'Service', WAYPOINT_OBJECTS_SELECTOR],
    ['policy/v1', 'PodDisruptionBudget', WAYPOINT_OBJECTS_SELECTOR],
    ['v1', 'ConfigMap', 'app.kubernetes.io/managed-by=weft-controller'],
  ] as const) {
    const list = await api.list(apiVersion, kind, undefined, undefined, undefined, undefined, undefined, selector);
    for (const item of list.items ?? []) {
      if (kind === 'ConfigMap' && item.metadata?.name !== TRUST_BUNDLE_CONFIGMAP) continue;
      await remove({ apiVersion, kind, metadata: { name: item.metadata!.name!, namespace: item.metadata!.namespace! } });
    }
  }
  // The Secrets the controller made once: the CA root and the debug paths' token.
  for (const name of [DEFAULT_CA_SECRET, DEBUG_TOKEN_SECRET]) {
    const secret = await read({ apiVersion: 'v1', kind: 'Secret', metadata: { name, namespace: ns } });
    if (secret?.metadata?.labels?.['app.kubernetes.io/managed-by'] === 'weft-controller') await remove(secret);
  }
  await remove({ apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name: CONTROLLER_LEASE, namespace: ns } });
  const rendered = installedObjects(ns, image ?? 'weft:uninstall');
  const crds = rendered.filter((x) => x.kind === 'CustomResourceDefinition');
  const namespace = rendered.filter((x) => x.kind === 'Namespace');
  for (const x of rendered.filter((r) => !crds.includes(r) && !namespace.includes(r)).reverse()) await remove(x);
  // Its namespace only when nothing of anyone else's is left there: installed beside an
  // application, deleting the namespace would take the application with it (Istio leaves the
  // namespace to the operator altogether).
  const others = (await Promise.all(namespace.map(async (x) => foreignObjects(api, x.metadata!.name!)))).flat();
  if (others.length > 0) say(`kept namespace ${ns}: it holds objects Weft did not make (${others.slice(0, 5).join(', ')}${others.length > 5 ? `, and ${others.length - 5} more` : ''}); delete it yourself once they are gone`);
  else for (const x of namespace) await remove(x);
  if (!o.keepCrds) for (const x of crds) await remove(x);
  return { deleted };
}
