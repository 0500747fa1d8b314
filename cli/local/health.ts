// Facts about a running local mesh for `weftctl check`: controller and agent readiness, each
// agent's certificates and BPF links (admin endpoints), each waypoint's readiness.
import { join } from 'node:path';
import type { MeshFacts } from '../check.ts';
import { CONTROLLER_IP } from './mesh.ts';
import { getJsonInNetns, requestInNetns } from './netns-http.ts';
import { status, type LocalState } from './up.ts';
import { waypointStatuses } from './waypoints.ts';

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
  const waypoints = (await waypointStatuses(st)).map((w) => ({ namespace: w.namespace, name: w.name, ready: w.ready, ...(w.reason ? { reason: w.reason } : {}) }));
  return { now: Date.now(), logDir: join(st.stateDir, 'logs'), controller, agents, waypoints };
}
