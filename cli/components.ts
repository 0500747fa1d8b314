// The mesh's running parts (controller, node agents, waypoints) and a way to read each one's
// metrics and its read-only admin paths (config dump, certificates, BPF state, the /flows stream),
// on both transports: inside the local mesh's network namespaces (metrics on :15020, admin on
// loopback :15000), or on a cluster through the API server's pod proxy
// (/api/v1/namespaces/<ns>/pods/<pod>:15020/proxy/metrics and …/proxy/debug/<path>: the admin
// port is loopback only, so each component serves those paths read-only on its metrics port too,
// lib/debug-http.ts). One code path reads both.
import { CONTROLLER_IP } from './local/mesh.ts';
import { requestInNetns, streamLinesInNetns } from './local/netns-http.ts';
import { wireNetnsName } from './local/network.ts';
import { waypointOfPod } from './local/waypoints.ts';
import { DEBUG_PATH_PREFIX, DEBUG_TOKEN_FILE_ENV, DEBUG_TOKEN_HEADER, DEBUG_TOKEN_SECRET, cachedRead, debugTokenFile, debugTokenOfSecret } from '../lib/debug-http.ts';
import { parseProm, type Sample } from './local/prom.ts';
import { AGENT_NAME, CONTROLLER_NAME, PART_OF, PORTS } from './install/names.ts';
import { LABEL_WAYPOINT_FOR } from '../lib/model/objects.ts';
import { KubeApiError, type KubeClient } from './kube.ts';
import { CONTROLLER_DEBUG_GRANT_PATH, READINESS_PATH } from '../lib/defaults.ts';
import { DEBUG_GRANT_HEADER } from '../lib/identity/debug-grant.ts';
import type { Target } from './commands/target.ts';

export type Role = 'controller' | 'agent' | 'waypoint';

export interface Component {
  role: Role;
  /** Node name (agents), `namespace/pod` (controller and waypoint pods on a cluster). */
  name: string;
  node?: string;
  /** Who reports a flow: `agent <node>`, `waypoint <namespace>/<waypoint>`, `controller`. */
  reporter: string;
  /** Its address (an agent's is its node's). */
  address?: string;
  /** The component's /metrics text. */
  metrics(): Promise<string>;
  /** GET of a read-only admin path (`/config_dump`, `/certs`, `/bpf`; the controller's `/debug/clients`), parsed as JSON. */
  admin<T>(path: string): Promise<T>;
  /** Follows a newline-delimited admin path (`/flows`) until it ends or `signal` aborts. */
  stream(path: string, onLine: (line: string) => void, signal: AbortSignal): Promise<void>;
  /** Its readiness endpoint (:15021/healthz/ready): ready, or why not. */
  ready(): Promise<{ ready: boolean; reason: string }>;
}

/** A readiness answer: 200 is ready, anything else (or no answer) says why not. */
async function readiness(get: () => Promise<{ status: number; body: string }>): Promise<{ ready: boolean; reason: string }> {
  try {
    const r = await get();
    return { ready: r.status === 200, reason: r.body.trim() };
  } catch (e) {
    return { ready: false, reason: (e as Error).message };
  }
}

function parseJson<T>(what: string, body: string): T {
  try {
    return JSON.parse(body) as T;
  } catch {
    throw new Error(`${what}: the answer is not JSON`);
  }
}

const TIMEOUT_MS = 3_000;

/** Every component of the target mesh. */
export async function components(t: Target): Promise<Component[]> {
  if (t.kind === 'local') {
    const st = t.st;
    const via = st.nodes[0];
    const get = async (netns: string, url: string) => {
      const r = await requestInNetns(`/var/run/netns/${netns}`, url, { timeoutMs: TIMEOUT_MS });
      if (r.status !== 200) throw new Error(`GET ${url}: ${r.status} ${r.body.trim().slice(0, 200)}`);
      return r.body;
    };
    /** A component whose metrics are at `ip` and admin port on loopback, both inside `netns`. */
    const local = (role: Role, name: string, reporter: string, metricsNetns: string, ip: string, adminNetns: string, node?: string): Component => {
      const admin = `http://127.0.0.1:${PORTS.admin}`;
      return {
        role, name, reporter, address: ip, ...(node ? { node } : {}),
        metrics: () => get(metricsNetns, `http://${ip}:${PORTS.metrics}/metrics`),
        admin: async <T>(path: string) => parseJson<T>(`${reporter} ${path}`, await get(adminNetns, admin + path)),
        stream: (path, onLine, signal) => streamLinesInNetns(`/var/run/netns/${adminNetns}`, admin + path, onLine, signal),
        ready: () => readiness(() => requestInNetns(`/var/run/netns/${metricsNetns}`, `http://${ip}:${PORTS.readiness}${READINESS_PATH}`, { timeoutMs: TIMEOUT_MS })),
      };
    };
    return [
      // The controller's admin port is loopback inside the wire namespace, where it runs.
      ...(via ? [local('controller', 'controller', 'controller', via.netns, CONTROLLER_IP, wireNetnsName(st.prefix))] : []),
      ...st.nodes.map((n) => local('agent', n.name, `agent ${n.name}`, n.netns, n.ip, n.netns, n.name)),
      ...st.pods.flatMap((p) => {
        const wp = waypointOfPod(st, p);
        return wp ? [local('waypoint', `${p.namespace}/${p.name}`, `waypoint ${p.namespace}/${wp}`, p.netns, p.ip, p.netns, p.node)] : [];
      }),
    ];
  }
  return clusterComponents(t.kube, t.namespace);
}

interface PodLite {
  metadata: { name: string; namespace: string; labels?: Record<string, string> };
  spec?: { nodeName?: string };
  status?: { phase?: string; podIP?: string };
}

/**
 * The install's debug token (lib/debug-http.ts) as the header the agents' /debug paths want: from
 * the file DEBUG_TOKEN_FILE_ENV names (the in-cluster dashboard's mount; debugTokenFile reads it
 * again every few seconds, as the kubelet updates it), else the Secret in `namespace`, read again
 * after a minute or after a failed read (a re-install makes a new token). None when neither can be
 * read: an install without it does not ask for one, one with it answers 403 saying so.
 */
function debugTokenHeader(kube: KubeClient, namespace: string): () => Promise<Record<string, string>> {
  const file = process.env[DEBUG_TOKEN_FILE_ENV];
  const header = (token: string | undefined): Record<string, string> => (token ? { [DEBUG_TOKEN_HEADER]: token } : {});
  if (file) {
    const token = debugTokenFile(file);
    return async () => header(token());
  }
  const secret = cachedRead(
    () => kube.get<{ data?: { token?: string } }>(`/api/v1/namespaces/${namespace}/secrets/${DEBUG_TOKEN_SECRET}`).then((s) => header(debugTokenOfSecret(s.data))),
    (_, now) => now + DEBUG_TOKEN_SECRET_TTL_MS,
  );
  return () => secret().catch(() => ({}));
}

/** How long weftctl uses the debug token Secret it read before reading it again. */
const DEBUG_TOKEN_SECRET_TTL_MS = 60_000;
/** A grant is asked for again this long before it expires (a /flows stream it opened ends when it lapses; watchFlows reopens it with the next). */
const DEBUG_GRANT_RENEW_BEFORE_MS = 60_000;

/**
 * A waypoint pod's debug grant (lib/identity/debug-grant.ts) as the header its /debug paths want: a
 * waypoint holds no token (it runs in its application's namespace), so the controller signs a
 * grant for that one pod of that waypoint, for a few minutes, to whoever holds the install's token;
 * asked of `controller` through the pod proxy with `token`, kept until shortly before it expires.
 * A pod wearing a waypoint's label gets a grant that opens only itself.
 */
function debugGrantHeader(kube: KubeClient, controller: PodLite | undefined, token: () => Promise<Record<string, string>>): (namespace: string, waypoint: string, pod: string) => Promise<Record<string, string>> {
  const held = new Map<string, () => Promise<{ header: Record<string, string>; expires: number }>>();
  return async (namespace, waypoint, pod) => {
    const key = `${namespace}/${waypoint}`;
    let grant = held.get(`${key}/${pod}`);
    if (!grant) {
      grant = cachedRead(async () => {
        if (!controller) throw new Error(`no running controller in the install namespace to sign a debug grant for waypoint ${key}`);
        const path = kube.podProxyPath(controller.metadata.namespace, controller.metadata.name, PORTS.metrics, `${CONTROLLER_DEBUG_GRANT_PATH}?waypoint=${encodeURIComponent(key)}&pod=${encodeURIComponent(pod)}`);
        try {
          const r = await kube.get<{ grant?: string; expires?: string }>(path, await token());
          if (typeof r.grant !== 'string') throw new Error('the answer holds no grant');
          return { header: { [DEBUG_GRANT_HEADER]: r.grant }, expires: Date.parse(r.expires ?? '') };
        } catch (e) {
          const why = e instanceof KubeApiError && e.status === 404 ? 'install with `weftctl install --debug-endpoints` (or --dashboard)' : (e as Error).message;
          throw new Error(`the controller signed no debug grant for waypoint ${key} (pod ${pod}): ${why}`);
        }
      }, (g) => g.expires - DEBUG_GRANT_RENEW_BEFORE_MS || 0);
      held.set(`${key}/${pod}`, grant);
    }
    return (await grant()).header;
  };
}

/**
 * The controller and agents: the pods wearing their labels in `namespace` (where Weft is installed),
 * never elsewhere: anyone who may create a pod in some namespace can give it those labels, and it
 * would then feed weftctl and the dashboard the flows, metrics and state it likes. Waypoints are the
 * pods labelled `weft.dev/waypoint` in their own namespace.
 */
async function clusterComponents(kube: KubeClient, namespace: string): Promise<Component[]> {
  const of = (name: string) => kube.list<PodLite>('v1', 'pods', namespace, { labelSelector: `app.kubernetes.io/name=${name},app.kubernetes.io/part-of=${PART_OF}` });
  const [controllers, agents, waypoints] = await Promise.all([of(CONTROLLER_NAME), of(AGENT_NAME), kube.list<PodLite>('v1', 'pods', undefined, { labelSelector: LABEL_WAYPOINT_FOR })]);
  const token = debugTokenHeader(kube, namespace);
  const running = (p: PodLite) => p.status?.phase === undefined || p.status.phase === 'Running';
  const grant = debugGrantHeader(kube, controllers.find(running), token);
  const comp = (role: Role, p: PodLite): Component => {
    // The token goes only to the install namespace's components: a waypoint's pod is its
    // namespace's, and anyone who may create pods there can wear a waypoint's label; a waypoint
    // gets a grant for its own pod alone.
    const headers = (): Promise<Record<string, string>> => role === 'waypoint'
      ? grant(p.metadata.namespace, p.metadata.labels?.[LABEL_WAYPOINT_FOR] ?? p.metadata.name, p.metadata.name)
      : token();
    const name = role === 'agent' ? (p.spec?.nodeName ?? p.metadata.name) : `${p.metadata.namespace}/${p.metadata.name}`;
    const reporter = role === 'agent' ? `agent ${name}` : role === 'waypoint' ? `waypoint ${p.metadata.namespace}/${p.metadata.labels?.[LABEL_WAYPOINT_FOR] ?? p.metadata.name}` : 'controller';
    // The controller's admin paths already start with /debug/; agents' and waypoints' get it on the metrics port.
    const proxied = (path: string) => kube.podProxyPath(p.metadata.namespace, p.metadata.name, PORTS.metrics, role === 'controller' ? path : DEBUG_PATH_PREFIX + path);
    return {
      role, name, reporter,
      ...(p.status?.podIP ? { address: p.status.podIP } : {}),
      ...(p.spec?.nodeName ? { node: p.spec.nodeName } : {}),
      metrics: () => kube.getText(kube.podProxyPath(p.metadata.namespace, p.metadata.name, PORTS.metrics, '/metrics')),
      admin: async <T>(path: string) => kube.get<T>(proxied(path), await headers()).catch((e: unknown) => {
        // Off unless the install opened them (weftctl install --debug-endpoints, or --dashboard).
        if (e instanceof KubeApiError && e.status === 404) throw new Error(`${reporter} does not serve ${proxied(path).split('/proxy')[1] ?? path} on its metrics port: install with \`weftctl install --debug-endpoints\` (or --dashboard) to read it on a cluster`);
        throw e;
      }),
      stream: async (path, onLine, signal) => kube.streamLines(proxied(path), onLine, signal, await headers()),
      ready: () => readiness(async () => {
        try {
          return { status: 200, body: await kube.getText(kube.podProxyPath(p.metadata.namespace, p.metadata.name, PORTS.readiness, READINESS_PATH)) };
        } catch (e) {
          if (e instanceof KubeApiError && e.status) return { status: e.status, body: e.detail };
          throw e;
        }
      }),
    };
  };
  return [
    ...controllers.filter(running).map((p) => comp('controller', p)),
    ...agents.filter(running).map((p) => comp('agent', p)),
    ...waypoints.filter(running).map((p) => comp('waypoint', p)),
  ];
}

/** A component's samples, or the error that kept us from reading them. */
export async function scrapeComponent(c: Component): Promise<{ samples: Sample[] } | { error: string }> {
  try {
    return { samples: parseProm(await c.metrics()) };
  } catch (e) {
    return { error: (e as Error).message };
  }
}
