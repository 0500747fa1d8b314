// The mesh's running parts (controller, node agents, waypoints) and a way to read each one's
// metrics port (:15020, every address), on both transports: inside the local mesh's network
// namespaces, or on a cluster through the API server's pod proxy
// (/api/v1/namespaces/<ns>/pods/<pod>:15020/proxy/metrics).
import { CONTROLLER_IP } from './local/mesh.ts';
import { requestInNetns } from './local/netns-http.ts';
import { parseProm, type Sample } from './local/prom.ts';
import { AGENT_NAME, CONTROLLER_NAME, PART_OF, PORTS } from './install/names.ts';
import { LABEL_WAYPOINT_FOR } from '../lib/model/objects.ts';
import type { KubeClient } from './kube.ts';
import type { Target } from './commands/target.ts';

export type Role = 'controller' | 'agent' | 'waypoint';

export interface Component {
  role: Role;
  /** Node name (agents), `namespace/pod` (controller and waypoint pods on a cluster). */
  name: string;
  node?: string;
  /** The component's /metrics text. */
  metrics(): Promise<string>;
}

const TIMEOUT_MS = 3_000;

/** Every component of the target mesh. */
export async function components(t: Target): Promise<Component[]> {
  if (t.kind === 'local') {
    const st = t.st;
    const via = st.nodes[0];
    const get = async (netns: string, url: string) => {
      const r = await requestInNetns(`/var/run/netns/${netns}`, url, { timeoutMs: TIMEOUT_MS });
      if (r.status !== 200) throw new Error(`GET ${url}: ${r.status}`);
      return r.body;
    };
    return [
      ...(via ? [{ role: 'controller' as const, name: 'controller', metrics: () => get(via.netns, `http://${CONTROLLER_IP}:${PORTS.metrics}/metrics`) }] : []),
      ...st.nodes.map((n) => ({ role: 'agent' as const, name: n.name, node: n.name, metrics: () => get(n.netns, `http://${n.ip}:${PORTS.metrics}/metrics`) })),
      ...st.pods.filter((p) => p.name.startsWith('waypoint')).map((p) => ({ role: 'waypoint' as const, name: `${p.namespace}/${p.name}`, node: p.node, metrics: () => get(p.netns, `http://${p.ip}:${PORTS.metrics}/metrics`) })),
    ];
  }
  return clusterComponents(t.kube);
}

interface PodLite {
  metadata: { name: string; namespace: string; labels?: Record<string, string> };
  spec?: { nodeName?: string };
  status?: { phase?: string };
}

async function clusterComponents(kube: KubeClient): Promise<Component[]> {
  const of = (name: string) => kube.list<PodLite>('v1', 'pods', undefined, { labelSelector: `app.kubernetes.io/name=${name},app.kubernetes.io/part-of=${PART_OF}` });
  const [controllers, agents, waypoints] = await Promise.all([of(CONTROLLER_NAME), of(AGENT_NAME), kube.list<PodLite>('v1', 'pods', undefined, { labelSelector: LABEL_WAYPOINT_FOR })]);
  const comp = (role: Role, p: PodLite): Component => ({
    role,
    name: role === 'agent' ? (p.spec?.nodeName ?? p.metadata.name) : `${p.metadata.namespace}/${p.metadata.name}`,
    ...(p.spec?.nodeName ? { node: p.spec.nodeName } : {}),
    metrics: () => kube.getText(kube.podProxyPath(p.metadata.namespace, p.metadata.name, PORTS.metrics, '/metrics')),
  });
  const running = (p: PodLite) => p.status?.phase === undefined || p.status.phase === 'Running';
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
