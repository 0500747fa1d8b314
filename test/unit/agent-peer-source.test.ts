// Who a connection comes from, as the agent decides it (issue 15, item 7): the inbound tunnel's
// client from the peer and its forwarded for= claim (lib/hbone/forwarded.ts), and the outbound
// source from the netns cookie the kernel recorded (agent/src/outbound.ts).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { AgentState } from '../../agent/src/state.ts';
import { tunnelClient } from '../../lib/hbone/forwarded.ts';
import { Outbound } from '../../agent/src/outbound.ts';
import { AgentMetrics } from '../../agent/src/metrics.ts';
import type { LocalDelivery } from '../../agent/src/delivery.ts';
import { HbonePool, forwardedFor } from '../../lib/hbone/index.ts';
import { silentLogger } from '../../lib/log.ts';
import { until } from '../lab/wait.ts';
import type { AgentConfig, Service, Waypoint, Workload } from '../../lib/model/mesh.ts';

const cleanups: Array<() => unknown> = [];
after(async () => { for (const c of cleanups.reverse()) await c(); });

const td = 'cluster.local';
const NODE1 = '10.77.0.1';
const NODE2 = '10.77.0.2';
function wl(name: string, node: 'node1' | 'node2', ip: string, extra: Partial<Workload> = {}): Workload {
  return {
    uid: `demo/${name}`, name, namespace: 'demo', node, nodeIp: node === 'node1' ? NODE1 : NODE2, ip,
    serviceAccount: name, spiffeId: `spiffe://${td}/ns/demo/sa/${name}`, labels: { app: name },
    enrolled: true, mode: 'STRICT', services: [], workloadName: name, canonicalService: name, canonicalRevision: 'latest', cluster: 'Kubernetes', ...extra,
  } as Workload;
}
const client = wl('client', 'node1', '10.77.1.1');
const other = wl('other', 'node1', '10.77.1.2');
const outsider = wl('outsider', 'node1', '10.77.1.3', { enrolled: false });
const echo = wl('echo', 'node2', '10.77.2.1', { services: ['demo/echo'] });
const waypoint: Waypoint = { name: 'waypoint', namespace: 'demo', address: '10.77.2.9', port: 15008, spiffeId: `spiffe://${td}/ns/demo/sa/waypoint`, ready: true };
const otherWaypoint: Waypoint = { name: 'wp2', namespace: 'other', address: '10.77.2.8', port: 15008, spiffeId: `spiffe://${td}/ns/other/sa/wp2`, ready: true };
const echoSvc: Service = {
  name: 'echo', namespace: 'demo', hostname: 'echo.demo.svc.cluster.local', vips: ['10.96.0.10'], waypoint: { name: 'waypoint', namespace: 'demo' },
  ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP', appProtocol: 'http' }], endpoints: [],
};

function state(): AgentState {
  const s = new AgentState('node2');
  const config: AgentConfig = { node: 'node2', workloads: [client, other, outsider, echo], services: [echoSvc], policies: [], peerAuthentications: [], waypoints: [waypoint, otherWaypoint] };
  s.apply(config);
  return s;
}

function req(peer: { spiffeId: string; address: string; port?: number }, forwarded?: string) {
  return {
    peer: { spiffeId: peer.spiffeId, address: peer.address, port: peer.port ?? 40000 },
    forwardedFor: forwardedFor(forwarded),
    headers: (forwarded === undefined ? {} : { forwarded }) as Record<string, string>,
  };
}

test('a for= claim is honoured only from the destination\'s waypoint or for the peer\'s own workload on the peer\'s node', () => {
  const s = state();
  const table: Array<{ name: string; peer: { spiffeId: string; address: string }; fwd?: string; want: { ip: string; port: number; source: string; ignored?: string } }> = [
    { name: 'the source agent for its own pod: honoured, port included',
      peer: { spiffeId: client.spiffeId, address: NODE1 }, fwd: 'for="10.77.1.1:34567"', want: { ip: '10.77.1.1', port: 34567, source: 'forwarded' } },
    { name: 'v4-mapped peer address is the same node',
      peer: { spiffeId: client.spiffeId, address: `::ffff:${NODE1}` }, fwd: 'for="10.77.1.1:34567"', want: { ip: '10.77.1.1', port: 34567, source: 'forwarded' } },
    { name: 'no header: the peer itself',
      peer: { spiffeId: client.spiffeId, address: NODE1 }, want: { ip: NODE1, port: 40000, source: 'peer' } },
    { name: 'forged: an address the mesh does not know',
      peer: { spiffeId: client.spiffeId, address: NODE1 }, fwd: 'for="192.0.2.7:80"', want: { ip: NODE1, port: 40000, source: 'peer', ignored: 'unknown-address' } },
    { name: 'forged: another workload\'s address on the same node',
      peer: { spiffeId: client.spiffeId, address: NODE1 }, fwd: 'for="10.77.1.2:5000"', want: { ip: NODE1, port: 40000, source: 'peer', ignored: 'identity-mismatch' } },
    { name: 'forged: a pod outside the mesh (no identity)',
      peer: { spiffeId: client.spiffeId, address: NODE1 }, fwd: 'for="10.77.1.3:5000"', want: { ip: NODE1, port: 40000, source: 'peer', ignored: 'identity-mismatch' } },
    { name: 'forged: its own identity, but the tunnel comes from another node',
      peer: { spiffeId: client.spiffeId, address: '10.77.0.3' }, fwd: 'for="10.77.1.1:5000"', want: { ip: '10.77.0.3', port: 40000, source: 'peer', ignored: 'node-mismatch' } },
    { name: 'malformed (a port must be quoted)',
      peer: { spiffeId: client.spiffeId, address: NODE1 }, fwd: 'for=10.77.1.1:5000', want: { ip: NODE1, port: 40000, source: 'peer', ignored: 'malformed' } },
    { name: 'the destination\'s waypoint speaks for anyone',
      peer: { spiffeId: waypoint.spiffeId, address: '10.77.2.9' }, fwd: 'for="192.0.2.7:80"', want: { ip: '192.0.2.7', port: 80, source: 'forwarded' } },
    { name: 'the waypoint\'s identity from another address is not the waypoint',
      peer: { spiffeId: waypoint.spiffeId, address: '10.77.2.50' }, fwd: 'for="192.0.2.7:80"', want: { ip: '10.77.2.50', port: 40000, source: 'peer', ignored: 'unknown-address' } },
    { name: 'a waypoint that does not serve the destination speaks only for itself',
      peer: { spiffeId: otherWaypoint.spiffeId, address: '10.77.2.8' }, fwd: 'for="10.77.1.1:80"', want: { ip: '10.77.2.8', port: 40000, source: 'peer', ignored: 'identity-mismatch' } },
  ];
  for (const row of table) {
    const got = tunnelClient(s, echo, req(row.peer, row.fwd));
    assert.deepEqual({ ip: got.ip, port: got.port, source: got.source, ...(got.ignored ? { ignored: got.ignored.reason } : {}) }, row.want, row.name);
  }
});

/** An outbound proxy on 127.0.0.1 whose datapath reports `cookie` for every connection. */
async function outbound(podIpOf: (cookie: bigint) => string | undefined, orig: { ip: string; port: number }, prepare?: (s: AgentState) => void) {
  const s = new AgentState('node1');
  const self = wl('self', 'node1', '127.0.0.1');
  const neighbour = wl('neighbour', 'node1', '127.0.0.2');
  const plain = wl('plain', 'node2', '127.0.0.3', { enrolled: false });
  s.apply({ node: 'node1', workloads: [self, neighbour, plain], services: [], policies: [], peerAuthentications: [], waypoints: [] });
  prepare?.(s);
  const metrics = new AgentMetrics();
  const warnings: Array<Record<string, unknown>> = [];
  const pool = new HbonePool();
  cleanups.push(() => pool.close(0));
  const o = new Outbound({
    node: 'node1', nodeIp: '127.0.0.1', state: s, pool, metrics,
    datapath: { originalDestination: () => ({ ...orig, clientNetnsCookie: 7n }) },
    podIpOf,
    certs: { get: () => Promise.reject(new Error('no certificates in this test')) },
    authorizer: {} as LocalDelivery,
    log: { ...silentLogger, warn: (_m: string, f?: Record<string, unknown>) => { warnings.push(f ?? {}); } },
    accessLog: () => {},
  });
  await o.listen(0, '127.0.0.1');
  cleanups.push(() => o.close(0));
  return { port: (o.server.address() as net.AddressInfo).port, metrics, warnings, outbound: o };
}

/** Connects from `from`, sends a line, returns what came back before the close. */
async function talk(port: number, from: string): Promise<string> {
  const sock = net.connect({ host: '127.0.0.1', port, localAddress: from });
  sock.on('error', () => {});
  await once(sock, 'connect');
  sock.write('ping\n');
  let got = '';
  sock.on('data', (c: Buffer) => (got += c));
  await once(sock, 'close');
  return got;
}

test('the outbound source is the pod whose netns the kernel recorded: another pod\'s address is refused and counted', async () => {
  const target = net.createServer((c) => c.pipe(c));
  target.listen(0, '127.0.0.3');
  await once(target, 'listening');
  cleanups.push(() => target.close());
  const tport = (target.address() as net.AddressInfo).port;

  // The kernel says the connection came from the netns of `self` (127.0.0.1); it arrives from 127.0.0.2.
  const spoof = await outbound(() => '127.0.0.1', { ip: '127.0.0.3', port: tport });
  assert.equal(await talk(spoof.port, '127.0.0.2'), '', 'refused: nothing carried');
  const denied = await spoof.metrics.denied.get();
  assert.deepEqual(denied.values.map((v) => [v.labels.reason, v.labels.reporter, v.value]), [['source-mismatch', 'source', 1]]);
  assert.equal(spoof.warnings[0]?.reason, 'source-mismatch');
  assert.equal(spoof.warnings[0]?.podIp, '127.0.0.1');

  // A netns cookie the agent never enrolled: unknown source, whatever the address says.
  const unknown = await outbound(() => undefined, { ip: '127.0.0.3', port: tport });
  assert.equal(await talk(unknown.port, '127.0.0.1'), '');
  assert.deepEqual((await unknown.metrics.failed.get()).values.map((v) => v.labels.reason), ['unknown_source']);

  // The control: cookie and address agree, and the connection is carried (plain TCP to a non-mesh pod).
  const honest = await outbound(() => '127.0.0.1', { ip: '127.0.0.3', port: tport });
  assert.equal(await talkEcho(honest.port, '127.0.0.1'), 'ping\n');
  assert.equal((await honest.metrics.denied.get()).values.length, 0);
});

// IP reuse: `self` was deleted and its address given to a new pod, which the agent enrolled there
// (uid-new); the config still lists `self` at the address. The new pod's connections must not leave
// with self's identity (ztunnel keys a local pod by its uid: istio/istio cni/pkg/nodeagent).
test('a pod enrolled at an address the config still gives a deleted pod is refused as a stale source, never sent as that pod', async () => {
  const target = net.createServer((c) => c.pipe(c));
  target.listen(0, '127.0.0.3');
  await once(target, 'listening');
  cleanups.push(() => target.close());
  const tport = (target.address() as net.AddressInfo).port;
  const reused = await outbound(() => '127.0.0.1', { ip: '127.0.0.3', port: tport }, (s) => s.podEnrolled('127.0.0.1', 'uid-new'));
  assert.equal(await talkEcho(reused.port, '127.0.0.1'), '', 'refused: nothing carried (before, the echo came back: sent as demo/self)');
  assert.deepEqual((await reused.metrics.failed.get()).values.map((v) => [v.labels.reason, v.value]), [['stale_source', 1]]);
  assert.match(String(reused.warnings[0]?.reason), /pod uid uid-new at 127\.0\.0\.1.*still names demo\/self there/);
});

async function talkEcho(port: number, from: string): Promise<string> {
  const sock = net.connect({ host: '127.0.0.1', port, localAddress: from });
  await once(sock, 'connect');
  let got = '';
  sock.on('data', (c: Buffer) => (got += c));
  sock.end('ping\n');
  await once(sock, 'close');
  return got;
}

test('closing the outbound proxy lets open connections finish within the grace period, then cuts what is left (the agent\'s drain)', async () => {
  // The proxy cuts a connection with a reset; the target's side of it just goes away.
  const target = net.createServer((c) => { c.on('error', () => {}); c.pipe(c); });
  target.listen(0, '127.0.0.3');
  await once(target, 'listening');
  cleanups.push(() => target.close());
  const tport = (target.address() as net.AddressInfo).port;
  const p = await outbound(() => '127.0.0.1', { ip: '127.0.0.3', port: tport });
  const open = async (): Promise<net.Socket> => {
    const sock = net.connect({ host: '127.0.0.1', port: p.port, localAddress: '127.0.0.1' });
    sock.on('error', () => {});
    await once(sock, 'connect');
    sock.write('a');
    await once(sock, 'data');
    return sock;
  };
  // One that outlives the grace period: still carried during it, cut at its end, and counted.
  const long = await open();
  assert.equal(p.outbound.active, 1);
  // A grace period long enough for an echo on a loaded machine; the cut at its end is what counts.
  const closing = p.outbound.close(1_500);
  long.write('b');
  const [during] = await once(long, 'data') as [Buffer];
  assert.equal(during.toString(), 'b', 'carried while the proxy drains');
  const closedAt = once(long, 'close');
  assert.equal(await closing, 1, 'the connection left at the end of the grace period is cut');
  await closedAt;
  // The proxy's own 'close' for its socket comes once the handle is closed, a turn after the cut.
  await until('the proxy has let go of the cut connection', () => p.outbound.active === 0, 5_000);

  // One that ends within the grace period: close() waits for it, cuts nothing.
  const q = await outbound(() => '127.0.0.1', { ip: '127.0.0.3', port: tport });
  const s2 = net.connect({ host: '127.0.0.1', port: q.port, localAddress: '127.0.0.1' });
  s2.on('error', () => {});
  await once(s2, 'connect');
  s2.write('c');
  await once(s2, 'data');
  let done = false;
  const closing2 = q.outbound.close(10_000).then((cut) => { done = true; return cut; });
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(done, false, 'close() waits for the open connection');
  s2.end();
  assert.equal(await closing2, 0);
});
