// The local mesh seen as a cluster: the kube lab's API server (cli/local/kube/fake-apiserver.ts) holding
// the same objects as the mesh's config folder (Nodes, Pods, Services, policies, routes, Waypoints)
// plus the pods a cluster would show for the agents (host network, one per node) and the
// controller, and a pod proxy that reaches each one's :15020 (and the waypoints' readiness port
// :15021) inside the lab's network namespaces.
// weftctl pointed at it with --kubeconfig takes its cluster transport against the same running
// components the local transport reads, so the two can be compared row for row.
import net from 'node:net';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { createSocketInNetns } from '../../agent/libbpf/index.ts';
import { FakeApiServer } from '../../cli/local/kube/fake-apiserver.ts';
import { CONTROLLER_IP } from '../../cli/local/mesh.ts';
import type { LocalState } from '../../cli/local/up.ts';
import { waypointOfPod } from '../../cli/local/waypoints.ts';

export interface ClusterMirror {
  api: FakeApiServer;
  kubeconfig: string;
  stop(): Promise<void>;
}

/** A TCP relay on loopback into `ip:port` inside the network namespace at `netnsPath`. */
async function relay(netnsPath: string, ip: string, port: number): Promise<net.Server> {
  const srv = net.createServer((client) => {
    const fd = createSocketInNetns(netnsPath, { bind: { host: '0.0.0.0', port: 0 } });
    const up = new net.Socket({ fd, readable: true, writable: true }).connect(port, ip);
    client.pipe(up).pipe(client);
    const end = () => { client.destroy(); up.destroy(); };
    client.on('error', end);
    up.on('error', end);
    client.on('close', end);
    up.on('close', end);
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return srv;
}

export async function mirrorLocalMesh(st: LocalState, stateDir: string, dir: string): Promise<ClusterMirror> {
  const api = new FakeApiServer();
  await api.start();
  const configDir = join(stateDir, 'config');
  for (const file of readdirSync(configDir).filter((f) => /\.ya?ml$/.test(f) && !f.startsWith('.'))) {
    for (const doc of parseAllDocuments(readFileSync(join(configDir, file), 'utf8'))) {
      const obj = doc.toJS() as { kind?: string } | null;
      if (obj?.kind) api.apply(obj as never);
    }
  }
  const relays: net.Server[] = [];
  const targets = new Map<string, { host: string; port: number }>();
  const via = st.nodes[0]!;
  const part = { 'app.kubernetes.io/part-of': 'weft' };
  for (const n of st.nodes) {
    const pod = `weft-agent-${n.name}`;
    api.apply({ apiVersion: 'v1', kind: 'Pod', metadata: { name: pod, namespace: 'weft-system', labels: { ...part, 'app.kubernetes.io/name': 'weft-agent' } }, spec: { nodeName: n.name, hostNetwork: true }, status: { phase: 'Running', podIP: n.ip } } as never);
    const r = await relay(`/var/run/netns/${n.netns}`, n.ip, 15020);
    relays.push(r);
    targets.set(`weft-system/${pod}:15020`, { host: '127.0.0.1', port: (r.address() as net.AddressInfo).port });
  }
  // The controller runs on the lab's wire (host network in this picture), reached from a node.
  api.apply({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'weft-controller-0', namespace: 'weft-system', labels: { ...part, 'app.kubernetes.io/name': 'weft-controller' } }, spec: { nodeName: via.name, hostNetwork: true }, status: { phase: 'Running', podIP: CONTROLLER_IP } } as never);
  const c = await relay(`/var/run/netns/${via.netns}`, CONTROLLER_IP, 15020);
  relays.push(c);
  targets.set('weft-system/weft-controller-0:15020', { host: '127.0.0.1', port: (c.address() as net.AddressInfo).port });
  // Waypoint replicas: metrics and read-only paths (:15020) and readiness (:15021).
  for (const p of st.pods.filter((x) => waypointOfPod(st, x) !== undefined)) {
    for (const port of [15020, 15021]) {
      const r = await relay(`/var/run/netns/${p.netns}`, p.ip, port);
      relays.push(r);
      targets.set(`${p.namespace}/${p.name}:${port}`, { host: '127.0.0.1', port: (r.address() as net.AddressInfo).port });
    }
  }
  api.podProxyTarget = (ns, pod, port) => targets.get(`${ns}/${pod}:${port}`);
  const kubeconfig = join(dir, 'mirror.kubeconfig');
  writeFileSync(kubeconfig, api.kubeconfig());
  return {
    api, kubeconfig,
    async stop() {
      for (const r of relays) r.close();
      await api.stop();
    },
  };
}
