// `weftctl up --clusters N`: N clusters on this machine (cli/local/multicluster.ts), the same sample
// apps in each (namespace demo: `echo` on node2, a client on node1), and who answered cluster1's
// client, naming the cluster. Each cluster's state is written like a single mesh's, so every
// inspection command works on one cluster with WEFT_LOCAL_PREFIX / WEFT_LOCAL_STATE_DIR.
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { destroyLocalNetwork } from './network.ts';
import { listNetns } from '../../lib/sys/netns.ts';
import { destroyExchange, exchangeNetnsOf } from './exchange.ts';
import { LocalMultiCluster, type LocalCluster } from './multicluster.ts';
import { LocalMeshError, type LocalState } from './up.ts';
import { REPO_ROOT } from './mesh.ts';

const ECHO_VIP = '10.96.0.10';

export interface MultiClusterState {
  prefix: string;
  stateDir: string;
  startedAt: string;
  clusters: Array<{ name: string; network: string; prefix: string; stateDir: string; edgeIp: string }>;
}

/** The clusters of a local multi-cluster mesh, if `stateDir` holds one (`clusters.json`, written by upClusters). */
export function readLocalClusters(stateDir: string): MultiClusterState | undefined {
  const f = join(stateDir, 'clusters.json');
  return existsSync(f) ? (JSON.parse(readFileSync(f, 'utf8')) as MultiClusterState) : undefined;
}

function sampleApps(c: LocalCluster): void {
  c.mesh.writeConfig('10-demo.yaml', [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'echo', namespace: 'demo' }, spec: { clusterIP: ECHO_VIP, selector: { app: 'echo' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
  ]);
  c.mesh.addWorkload({ node: 'node1', namespace: 'demo', name: 'client', labels: { app: 'client' } });
  c.mesh.addWorkload({
    node: 'node2', namespace: 'demo', name: 'echo', labels: { app: 'echo' }, deployment: 'echo', probePort: 8080,
    command: ['cli/local/apps/echo.ts', '--port', '8080', '--name', 'echo'], env: { WEFT_CLUSTER: c.name },
  });
}

export async function upClusters(o: { prefix: string; stateDir: string; clusters: number; trustDomains?: 'shared' | 'per-cluster'; say: (l: string) => void }): Promise<{ state: MultiClusterState; mc: LocalMultiCluster }> {
  if (process.getuid?.() !== 0) throw new LocalMeshError('WEFT_NOT_ROOT', 'weftctl up needs root (network namespaces, cgroups and eBPF): run it with sudo');
  if (!existsSync(join(REPO_ROOT, 'build/bpf/redirect.bpf.o'))) throw new LocalMeshError('WEFT_NOT_BUILT', 'build/bpf is missing: run `make build` first');
  if (listNetns().some((n) => n.startsWith(`${o.prefix}c1-`) || n === exchangeNetnsOf(o.prefix))) {
    o.say(`leftovers of a local multi-cluster mesh "${o.prefix}" found; removing them first`);
    await downClusters(o.prefix, o.stateDir, () => {});
  }
  rmSync(o.stateDir, { recursive: true, force: true });
  o.say(`creating ${o.clusters} clusters (one root CA, an intermediate each; networks joined only at the exchange ${'192.168.77.0/24'})`);
  const mc = await LocalMultiCluster.create({ prefix: o.prefix, stateDir: o.stateDir, clusters: o.clusters, nodes: ['node1', 'node2'], detached: true, ...(o.trustDomains ? { trustDomains: o.trustDomains } : {}) });
  try {
    for (const c of mc.clusters) sampleApps(c);
    o.say('starting each cluster\'s controller (federation with the others over mutual TLS)');
    mc.startControllers();
    for (const c of mc.clusters) await c.mesh.waitControllerReady();
    o.say('starting the agents');
    for (const c of mc.clusters) c.mesh.startAgents();
    for (const c of mc.clusters) await c.mesh.waitReady(120_000);
    o.say('starting each cluster\'s east-west gateway (HBONE on the exchange, :15008)');
    mc.startGateways();
    await mc.waitGatewaysReady(120_000);
    const state: MultiClusterState = {
      prefix: o.prefix, stateDir: o.stateDir, startedAt: new Date().toISOString(),
      clusters: mc.clusters.map((c) => ({ name: c.name, network: c.network, prefix: c.mesh.o.prefix, stateDir: c.mesh.o.stateDir, edgeIp: c.edgeIp })),
    };
    for (const c of mc.clusters) {
      const st: LocalState = {
        prefix: c.mesh.o.prefix, stateDir: c.mesh.o.stateDir, startedAt: state.startedAt,
        nodes: c.mesh.net.nodes.map((n) => ({ name: n.name, ip: n.ip, netns: n.netns, pinRoot: n.pinRoot, cgroup: n.cgroup })),
        pods: c.mesh.net.nodes.flatMap((n) => n.pods.map((p) => ({ namespace: p.namespace, name: p.name, node: n.name, ip: p.ip, netns: p.netns }))),
        services: [{ namespace: 'demo', name: 'echo', vip: ECHO_VIP, port: 80 }],
      };
      writeFileSync(join(c.mesh.o.stateDir, 'state.json'), JSON.stringify(st, null, 2));
    }
    writeFileSync(join(o.stateDir, 'clusters.json'), JSON.stringify(state, null, 2));
    return { state, mc };
  } catch (err) {
    o.say(`start failed; logs under ${o.stateDir}/cluster*/logs`);
    await mc.destroy();
    throw err;
  }
}

/** Requests from cluster1's client to demo/echo; prints who answered, by pod and cluster. */
export async function showClusterTraffic(mc: LocalMultiCluster, say: (l: string) => void, requests = 20): Promise<boolean> {
  const c1 = mc.clusters[0]!;
  // Remote endpoints arrive with the first federation poll after the gateways are up.
  const deadline = Date.now() + 30_000;
  let seen = new Map<string, number>();
  let ok = true;
  while (Date.now() < deadline) {
    seen = new Map();
    ok = true;
    for (let i = 0; i < requests; i++) {
      const r = await c1.mesh.exec('demo/client', 'curl', ['-sS', '--max-time', '5', `http://${ECHO_VIP}/`]);
      let key: string;
      if (r.code === 0) {
        const b = JSON.parse(r.stdout) as { pod: string; cluster?: string };
        key = `${b.pod} in ${b.cluster ?? '?'}`;
      } else {
        ok = false;
        key = `error: ${r.stderr.trim()}`;
      }
      seen.set(key, (seen.get(key) ?? 0) + 1);
    }
    if (seen.size >= mc.clusters.length) break;
    await new Promise((res) => setTimeout(res, 1_000));
  }
  say(`  ${c1.name} demo/client → echo.demo (${ECHO_VIP}:80): ${[...seen.entries()].map(([k, n]) => `${n}× ${k}`).join(', ')}`);
  return ok;
}

export async function downClusters(prefix: string, stateDir: string, say: (l: string) => void): Promise<void> {
  for (let i = 1; i <= 9; i++) await destroyLocalNetwork(`${prefix}c${i}`);
  destroyExchange(exchangeNetnsOf(prefix));
  rmSync(join(stateDir, 'clusters.json'), { force: true });
  say(`local multi-cluster mesh "${prefix}" removed`);
}
