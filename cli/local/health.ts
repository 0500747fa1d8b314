// Facts about a running local mesh for `weftctl check`: controller and agent readiness, each
// agent's certificates and BPF links (admin endpoints), each waypoint's readiness; in a
// multi-cluster mesh, the controller's federation status and its gateways' probes.
import { join } from 'node:path';
import type { MeshFacts } from '../check.ts';
import type { FederationFacts, GatewayProbe } from '../check-federation.ts';
import type { ClusterExport, RemoteStatus } from '../../lib/model/federation.ts';
import { PORTS, READINESS_PATH } from '../../lib/defaults.ts';
import { CONTROLLER_IP } from './mesh.ts';
import { getJsonInNetns, requestInNetns, tcpConnectsInNetns } from './netns-http.ts';
import { status, type LocalState } from './up.ts';
import { waypointStatuses } from '../waypoints.ts';

async function readiness(netns: string, url: string): Promise<{ ready: boolean; detail: string }> {
  try {
    const r = await requestInNetns(netns, url, { timeoutMs: 2_000 });
    return { ready: r.status === 200, detail: r.body.trim() || `HTTP ${r.status}` };
  } catch (err) {
    return { ready: false, detail: `no answer on ${url}: ${(err as Error).message}` };
  }
}

export async function gatherMeshFacts(st: LocalState): Promise<MeshFacts> {
  const controller = await readiness(`/var/run/netns/${st.prefix}-wire`, `http://${CONTROLLER_IP}:15021/healthz/ready`);
  const agents: MeshFacts['agents'] = [];
  for (const s of await status({ kind: 'local', st })) {
    const n = st.nodes.find((x) => x.name === s.node)!;
    const admin = <T>(path: string) => getJsonInNetns<T>(`/var/run/netns/${n.netns}`, `http://127.0.0.1:15000${path}`);
    const a: MeshFacts['agents'][number] = { node: s.node, ready: s.ready, detail: s.ready ? 'ready' : s.reason || 'not ready' };
    try {
      a.certificates = (await admin<{ certificates: Array<{ identity: string; notAfter: string }> }>('/certs')).certificates;
      const bpf = await admin<{ links: Array<{ program: string; id: number }>; refusals?: Record<string, number>; kubeletCgroups?: string[]; inboundExcludedPorts?: number[] }>('/bpf');
      a.links = bpf.links;
      a.inbound = {
        ipv6Refused: (bpf.refusals?.ipv6_refused ?? 0) + (bpf.refusals?.lookup_ipv6_refused ?? 0),
        kubeletCgroups: bpf.kubeletCgroups?.length ?? 0,
        inboundExcludedPorts: bpf.inboundExcludedPorts ?? [],
      };
    } catch {
      /* readiness already says the agent does not answer */
    }
    agents.push(a);
  }
  const waypoints = (await waypointStatuses({ kind: 'local', st })).map((w) => ({ namespace: w.namespace, name: w.name, ready: w.ready, ...(w.reason ? { reason: w.reason } : {}) }));
  return { now: Date.now(), logDir: join(st.stateDir, 'logs'), controller, agents, waypoints };
}

/**
 * An east-west gateway probed from the network edge where the controller runs: a TCP connection to
 * its HBONE port, and its readiness on the same address (ready once it knows its cluster's
 * endpoints; the local multi-cluster mesh serves it there, eastwest/src/main.ts).
 */
async function probeGateway(netns: string, address: string, port: number): Promise<GatewayProbe> {
  const tcp = await tcpConnectsInNetns(netns, address, port);
  if (!tcp.ok) return { reachable: false, ready: false, detail: `HBONE port not reachable: ${tcp.error}` };
  try {
    const r = await requestInNetns(netns, `http://${address}:${PORTS.readiness}${READINESS_PATH}`, { timeoutMs: 2_000 });
    return { reachable: true, ready: r.status === 200, detail: r.status === 200 ? 'ready' : `readiness ${r.status}: ${r.body.trim()}` };
  } catch (e) {
    return { reachable: true, ready: false, detail: `readiness did not answer: ${(e as Error).message}` };
  }
}

/** The controller's federation status and every gateway's probe; undefined when the controller federates with no one. */
export async function gatherFederationFacts(st: Pick<LocalState, 'prefix' | 'stateDir'>): Promise<FederationFacts | undefined> {
  const netns = `/var/run/netns/${st.prefix}-wire`;
  const fed = await getJsonInNetns<{ export?: ClusterExport; remotes: RemoteStatus[] }>(netns, `http://127.0.0.1:${PORTS.admin}/debug/federation`);
  if (!fed.export || fed.remotes.length === 0) return undefined;
  const own = fed.export;
  const remotes: FederationFacts['remotes'] = [];
  for (const r of fed.remotes) {
    remotes.push(r.gateway && r.network !== own.network ? { ...r, gatewayProbe: await probeGateway(netns, r.gateway.address, r.gateway.port) } : r);
  }
  return {
    now: Date.now(), cluster: own.cluster, network: own.network, logDir: join(st.stateDir, 'logs'), remotes,
    ...(own.gateway ? { gateway: { address: own.gateway.address, port: own.gateway.port, probe: await probeGateway(netns, own.gateway.address, own.gateway.port) } } : {}),
  };
}
