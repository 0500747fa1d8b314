// The agent's HBONE port (15008) against a hostile peer that holds a mesh identity: what it does
// costs only itself. Each case is one way a peer made the agent hold or write more than the peer
// paid for: a record left open by a CONNECT reset mid-connect, metric series minted from baggage,
// log lines amplified by HPACK.
import assert from 'node:assert/strict';
import { connect as h2connect, constants as h2, type ClientHttp2Session } from 'node:http2';
import { createSecureContext } from 'node:tls';
import { once } from 'node:events';
import { after, test } from 'node:test';
import { connectTcp } from '../../agent/src/connect.ts';
import { DeniedError } from '../../agent/src/delivery.ts';
import { Inbound } from '../../agent/src/inbound.ts';
import { DEFAULT_MAX_CONNECTIONS_PER_SOURCE } from '../../lib/hbone/server.ts';
import { MAX_UNVERIFIED_WORKLOADS } from '../../lib/telemetry/labels.ts';
import { AgentMetrics } from '../../agent/src/metrics.ts';
import { AgentState } from '../../agent/src/state.ts';
import { jsonLogger, silentLogger } from '../../lib/log.ts';
import type { AgentConfig, Workload } from '../../lib/model/mesh.ts';
import { until } from '../lab/wait.ts';
import { refusalLineBound, refusalLogBytesBound } from '../lab/log-bound.ts';
import { createTestCa, tcpServer, type TestCa, type TestLeaf } from './hbone-certs.ts';

const TD = 'test.local';
const cleanups: Array<() => unknown> = [];
after(async () => { for (const c of cleanups.reverse()) await c(); });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function workload(name: string, ns: string, ip: string, node = 'node2'): Workload {
  return {
    uid: `${ns}/${name}`, name, namespace: ns, node, nodeIp: '127.0.0.1', ip, serviceAccount: name, spiffeId: `spiffe://${TD}/ns/${ns}/sa/${name}`,
    labels: { app: name }, enrolled: true, mode: 'STRICT', services: [], workloadName: name, canonicalService: name, canonicalRevision: 'v1', cluster: 'Kubernetes',
  };
}

const DEST = workload('echo', 'demo', '127.0.0.1');
const CLIENT = workload('client', 'src', '10.0.0.7', 'node1');

async function startInbound(ca: TestCa, delivery: object, opts: { log?: typeof silentLogger; accessLog?: (e: unknown) => void; prepare?: (s: AgentState) => void; maxTunnelsPerPeer?: number; memoryBudget?: number } = {}): Promise<{ inbound: Inbound; metrics: AgentMetrics; port: number; gatewayPort: number }> {
  const serverLeaf = ca.issue(DEST.spiffeId);
  const state = new AgentState('node2');
  state.apply({ node: 'node2', workloads: [DEST, CLIENT], services: [], policies: [], peerAuthentications: [], waypoints: [] } as AgentConfig);
  opts.prepare?.(state);
  const metrics = new AgentMetrics();
  const inbound = new Inbound({
    node: 'node2', trustDomain: TD, state, delivery: delivery as never, metrics, log: opts.log ?? silentLogger, accessLog: opts.accessLog ?? (() => {}),
    serverTls: { SNICallback: (_n: string, cb: (e: Error | null, c?: unknown) => void) => cb(null, createSecureContext({ key: serverLeaf.key, cert: serverLeaf.cert, ca: ca.cert })) } as never,
    trustBundle: () => [ca.cert],
    ...(opts.maxTunnelsPerPeer !== undefined ? { maxTunnelsPerPeer: opts.maxTunnelsPerPeer } : {}),
    ...(opts.memoryBudget !== undefined ? { memoryBudget: opts.memoryBudget } : {}),
  });
  const { hbone: port, gateway: gatewayPort } = await inbound.listen({ hbone: 0, gateway: 0 }, '127.0.0.1');
  cleanups.push(() => inbound.server.close(100));
  return { inbound, metrics, port, gatewayPort };
}

async function peer(port: number, leaf: TestLeaf, settings?: import('node:http2').Settings): Promise<ClientHttp2Session> {
  const session = h2connect(`https://127.0.0.1:${port}`, { key: leaf.key, cert: leaf.cert, ca: leaf.ca, checkServerIdentity: () => undefined, servername: 'hbone.test', ...(settings ? { settings } : {}) } as never);
  session.on('error', () => {});
  await new Promise<void>((resolve, reject) => { session.once('connect', () => resolve()); session.once('error', reject); });
  cleanups.push(() => session.destroy());
  return session;
}

/** The status a CONNECT to `authority` is answered with (0 when the stream ends without one). */
function connectStatus(session: ClientHttp2Session, authority: string): Promise<number> {
  return new Promise<number>((resolve) => {
    const r = session.request({ ':method': 'CONNECT', ':authority': authority }, { endStream: false });
    r.on('response', (h) => resolve(Number(h[':status'])));
    r.on('error', () => resolve(0));
    r.resume();
  });
}

const total = async (m: { get(): Promise<{ values: Array<{ value: number }> }> }): Promise<number> => (await m.get()).values.reduce((n, v) => n + v.value, 0);

// CVE-2023-44487 costs the server what a reset stream set in motion. A CONNECT reset while the agent
// was connecting to the pod used to leave its connection record open for ever (opened, never closed,
// no access-log line: a leak per stream) and its pod connection made regardless.
test('a CONNECT reset while the pod connect is in flight: the connect is abandoned, and its record closed once and logged', async () => {
  const ca = createTestCa();
  let accepted = 0;
  const pod = await tcpServer((s) => { accepted++; s.on('error', () => {}); s.resume(); });
  cleanups.push(() => pod.server.close());
  let connects = 0;
  const lines: unknown[] = [];
  const { inbound, metrics, port } = await startInbound(ca, {
    authorize() {},
    track() {},
    // A pod slow to accept: the real connect starts only once the caller has given up (its signal
    // aborted, or 5 s), with the caller's signal, so the reset always lands while it is in flight.
    async connectToPod(_d: Workload, p: number, _c: unknown, timeoutMs: number, opts: { signal?: AbortSignal } = {}) {
      connects++;
      const signal = opts.signal;
      if (signal && !signal.aborted) await Promise.race([once(signal, 'abort'), sleep(5_000)]);
      return connectTcp(`127.0.0.1:${p}`, { timeoutMs, ...(signal ? { signal } : {}) });
    },
  }, { accessLog: (e) => lines.push(e) });
  const session = await peer(port, ca.issue(CLIENT.spiffeId));
  const N = 20;
  for (let i = 0; i < N; i++) {
    const r = session.request({ ':method': 'CONNECT', ':authority': `127.0.0.1:${pod.port}` }, { endStream: false });
    r.on('error', () => {});
    await until(`CONNECT ${i + 1} reached the pod connect`, () => connects === i + 1, 5000);
    r.close(h2.NGHTTP2_CANCEL);
  }
  await until('every CONNECT was handled', () => connects === N, 5000);
  await until('every record is closed', async () => (await total(metrics.closed)) === N, 5000);
  assert.equal(await total(metrics.opened), N);
  assert.equal(lines.length, N, 'one access-log line each');
  assert.equal(accepted, 0, 'no pod connection for a tunnel the peer had already reset');
  assert.equal(inbound.server.stats().tunnelsOpened, 0);
});

// The peer's baggage names its workload for the destination's telemetry labels. Believed only where
// the agent's config knows a workload of the peer's (certified) identity by that name: otherwise a
// peer mints label values, each a metric series the agent keeps for the life of the process.
test('baggage picks among the workloads the config knows for the peer identity, and mints no metric series', async () => {
  const ca = createTestCa();
  const { inbound, metrics, port } = await startInbound(ca, {
    authorize() { throw new DeniedError('no ALLOW policy matches', 403, 'demo/allow-nothing'); },
    track() {},
    async connectToPod() { throw new Error('not reached'); },
  });
  const session = await peer(port, ca.issue(CLIENT.spiffeId));
  const connect = (baggage: string): Promise<number> => new Promise((resolve) => {
    const r = session.request({ ':method': 'CONNECT', ':authority': '127.0.0.1:8080', baggage }, { endStream: false });
    r.on('response', (h) => resolve(Number(h[':status'])));
    r.on('error', () => resolve(0));
    r.resume();
  });
  const N = 200;
  const pad = 'x'.repeat(200);
  for (let i = 0; i < N; i++) {
    assert.equal(await connect(`k8s.cluster.name=Kubernetes,k8s.namespace.name=src,k8s.workload.name=w${i}${pad},service.name=s${i},service.version=v${i}`), 403);
  }
  // The one true claim: the workload the config knows.
  await connect('k8s.cluster.name=Kubernetes,k8s.namespace.name=src,k8s.workload.name=client,service.name=client,service.version=v1');
  assert.equal(inbound.server.stats().refusals.denied, N + 1);
  const series = (await metrics.opened.get()).values;
  assert.equal(series.length, 1, JSON.stringify(series.map((s) => s.labels)));
  assert.equal(series[0]!.labels['source_workload'], 'client');
  assert.equal(series[0]!.labels['source_canonical_revision'], 'v1');

  // An identity the config knows no workload of (a caller of another cluster; or a claim naming a
  // cluster the config lists none of the identity's workloads in): the claim is all there is, taken
  // for at most MAX_UNVERIFIED_WORKLOADS distinct descriptions per identity, then `unknown`.
  const stranger = await peer(port, ca.issue(`spiffe://${TD}/ns/far/sa/caller`));
  for (let i = 0; i < 50; i++) {
    await new Promise<void>((resolve) => {
      const r = stranger.request({ ':method': 'CONNECT', ':authority': '127.0.0.1:8080', baggage: `k8s.namespace.name=far,k8s.workload.name=w${i},k8s.cluster.name=c2` }, { endStream: false });
      r.on('error', () => {});
      r.on('close', () => resolve());
      r.resume();
    });
  }
  const far = (await metrics.opened.get()).values.filter((v) => v.labels['source_workload_namespace'] === 'far');
  assert.equal(far.length, MAX_UNVERIFIED_WORKLOADS + 1, JSON.stringify(far.map((v) => v.labels['source_workload'])));
  assert.ok(far.some((v) => v.labels['source_workload'] === 'w0' && v.labels['source_cluster'] === 'c2'), 'the first claims are taken');
  assert.ok(far.some((v) => v.labels['source_workload'] === 'unknown'));
});

// HPACK lets a peer send a 3 KB :authority once and then refer to it with a byte or two per
// request; each refusal's log line quoted it in full, twice. The lines are now cut and at most
// REFUSAL_LOG_PER_SECOND a second, with a count of those left out; the counters stay exact.
test('refused CONNECTs cannot make the log cost more than the peer sends: cut lines, rate limited, counted exactly', async () => {
  const ca = createTestCa();
  const lines: string[] = [];
  const { inbound, port } = await startInbound(ca, {}, { log: jsonLogger('agent', 'info', (l) => lines.push(l)) });
  const session = await peer(port, ca.issue(CLIENT.spiffeId));
  const authority = `${'9'.repeat(3000)}:80`;
  const sentBefore = session.socket.bytesWritten;
  const started = Date.now();
  const N = 500;
  await Promise.all(Array.from({ length: N }, () => new Promise<void>((resolve) => {
    const r = session.request({ ':method': 'CONNECT', ':authority': authority }, { endStream: false });
    r.on('error', () => {});
    r.on('close', () => resolve());
    r.resume();
  })));
  const sent = session.socket.bytesWritten - sentBefore;
  assert.equal(inbound.server.stats().refusals['bad-authority'], N, 'every refusal counted');
  const refused = lines.filter((l) => l.includes('"HBONE refused"'));
  assert.ok(refused.length <= refusalLineBound(started), `${refused.length} refusal lines`);
  assert.ok(refused.every((l) => l.length < 1500), 'each line cut');
  const logBytes = lines.reduce((n, l) => n + l.length, 0);
  assert.ok(logBytes <= refusalLogBytesBound(started, 1500), `${sent} bytes from the peer made ${logBytes} bytes of log`);
  assert.ok(logBytes < N * authority.length, 'far less than one quoted authority per refusal');
});

// IP reuse: the destination's pod was deleted and its address given to a new pod (uid-new), which
// the agent enrolled there; the config still names the old pod at the address. A tunnel naming the
// address must reach neither the old pod's policies nor the new pod as if it were the old one
// (ztunnel keys local pods by uid: istio/istio cni/pkg/nodeagent).
test('a CONNECT to an address the config still gives a deleted pod is refused, counted and logged naming the pod enrolled there now', async () => {
  const ca = createTestCa();
  const lines: string[] = [];
  let delivered = 0;
  const delivery = { authorize: () => { delivered++; }, connect: () => { delivered++; return Promise.reject(new Error('must not be called')); }, track: () => {} };
  const { inbound, metrics, port } = await startInbound(ca, delivery, { log: jsonLogger('agent', 'info', (l) => lines.push(l)), prepare: (s) => s.podEnrolled(DEST.ip, 'uid-new') });
  const session = await peer(port, ca.issue(CLIENT.spiffeId));
  const status = await connectStatus(session, `${DEST.ip}:8080`);
  assert.equal(status, 403);
  assert.equal(delivered, 0, 'nothing judged or delivered as the old pod');
  assert.equal(inbound.server.stats().refusals['denied'], 1);
  assert.equal(await total(metrics.denied), 1, 'counted');
  await until('logged', () => lines.some((l) => l.includes('"HBONE refused"') && l.includes('uid-new') && l.includes('demo/echo')), 5_000);
});

// A peer holding any mesh certificate (a tenant's pod running as its waypoint's ServiceAccount gets
// one) opened 1,024 sessions of 2,000 CONNECTs each to a pod that accepts them, and the agent held a
// pod socket for every one: two million, the node's every pod losing the mesh when the agent ran
// out of memory or descriptors (8,000 tunnels of one peer cost 180 MB). The east-west gateway bounds
// each caller's tunnels; the agent's HBONE server now does the same, for every peer.
test('tunnels one peer (identity and address) holds are bounded over all its sessions: past maxTunnelsPerPeer a CONNECT is refused at once (503), counted too-many-tunnels and logged; another peer is served, and a closed tunnel frees its place', async () => {
  const ca = createTestCa();
  const lines: string[] = [];
  const held: import('node:net').Socket[] = [];
  const app = await tcpServer((s) => { held.push(s); s.on('error', () => {}); });
  cleanups.push(() => { for (const s of held) s.destroy(); app.server.close(); });
  let delivered = 0;
  const delivery = {
    authorize: () => {},
    connectToPod: async () => { delivered++; return connectTcp(`127.0.0.1:${app.port}`, { timeoutMs: 5_000 }); },
    track: () => {},
  };
  const { inbound, metrics, port } = await startInbound(ca, delivery, { log: jsonLogger('agent', 'info', (l) => lines.push(l)), maxTunnelsPerPeer: 3 });
  const open = (session: ClientHttp2Session) => new Promise<{ status: number; close: () => void }>((resolve) => {
    const r = session.request({ ':method': 'CONNECT', ':authority': `${DEST.ip}:${app.port}` }, { endStream: false });
    r.on('response', (h) => resolve({ status: Number(h[':status']), close: () => r.close() }));
    r.on('error', () => resolve({ status: 0, close: () => {} }));
  });
  const leaf = ca.issue(CLIENT.spiffeId);
  const first = await peer(port, leaf);
  const tunnels = [await open(first), await open(first), await open(first)];
  assert.deepEqual(tunnels.map((t) => t.status), [200, 200, 200]);
  // From a second session of the same peer too: the bound is the peer's, not the session's.
  const second = await peer(port, leaf);
  assert.equal((await open(second)).status, 503);
  assert.equal(delivered, 3, 'nothing delivered past the bound');
  assert.equal(inbound.server.stats().refusals['too-many-tunnels'], 1);
  const counted = (await metrics.denied.get()).values.find((v) => v.labels['reason'] === 'too-many-tunnels');
  assert.equal(counted?.value, 1);
  await until('logged', () => lines.some((l) => l.includes('"HBONE refused"') && l.includes('too-many-tunnels') && l.includes(CLIENT.spiffeId)), 5_000);
  assert.equal((await open(await peer(port, ca.issue(DEST.spiffeId)))).status, 200, 'another peer is served');
  tunnels[0]!.close();
  await until('a closed tunnel frees its place', async () => (await open(second)).status === 200, 5_000, { intervalMs: 50 });
});

// RFC 9113 6.9: a peer's windows are its own, 0 included. A workload that asks a pod for a download
// and never reads it (SETTINGS_INITIAL_WINDOW_SIZE 0) had the agent hold 320 KiB a tunnel for it,
// 5 GiB over the 16,384 tunnels a peer may hold. Envoy's reset_high_memory_stream: past the
// server's memory budget the tunnels holding the most are reset (lib/hbone/memory-pressure.ts).
test('a peer with a zero stream window that never reads what its pod sends cannot hold the agent past its memory budget: the largest tunnels are reset, their pod connections closed, counted memory-pressure under the pod and logged with the peer', async () => {
  const ca = createTestCa();
  const lines: string[] = [];
  const pods: import('node:net').Socket[] = [];
  const chunk = Buffer.alloc(64 * 1024);
  // A pod that sends without end (a large download).
  let podsReset = 0;
  let podsEnded = 0;
  const app = await tcpServer((s) => {
    pods.push(s);
    // RFC 9113 8.5: a stream error becomes a TCP RST, which the pod sees as ECONNRESET (EPIPE when
    // it arrives under a write); a FIN would be a clean end, as if the download were complete.
    s.on('error', (e: NodeJS.ErrnoException) => { if (e.code === 'ECONNRESET' || e.code === 'EPIPE') podsReset++; });
    s.on('end', () => { podsEnded++; });
    const send = (): void => { while (!s.destroyed && s.write(chunk)); };
    s.on('drain', send);
    send();
  });
  cleanups.push(() => { for (const s of pods) s.destroy(); app.server.close(); });
  const delivery = { authorize: () => {}, connectToPod: async () => connectTcp(`127.0.0.1:${app.port}`, { timeoutMs: 5_000 }), track: () => {} };
  const budget = 1024 * 1024;
  const { inbound, metrics, port } = await startInbound(ca, delivery, { log: jsonLogger('agent', 'info', (l) => lines.push(l)), memoryBudget: budget });
  const session = await peer(port, ca.issue(CLIENT.spiffeId), { initialWindowSize: 0 });
  const statuses = await Promise.all(Array.from({ length: 16 }, () => new Promise<number>((resolve) => {
    const r = session.request({ ':method': 'CONNECT', ':authority': `${DEST.ip}:${app.port}` }, { endStream: false });
    r.on('response', (h) => resolve(Number(h[':status'])));
    r.on('error', () => resolve(0));
  })));
  assert.deepEqual(statuses, Array(16).fill(200));
  const resets = (): number => inbound.server.stats().refusals['memory-pressure'];
  await until('the largest tunnels are reset, each pod connection closed', () => resets() >= 8 && pods.filter((s) => s.destroyed).length === resets(), 10_000,
    { explain: () => `${resets()} resets, ${pods.filter((s) => s.destroyed).length} pod connections closed, ${inbound.server.stats().heldBytes} bytes held` });
  await until('the agent holds its budget at most', () => inbound.server.stats().heldBytes <= budget, 5_000);
  await until('each reset pod connection got an RST', () => podsReset === resets(), 5_000, { explain: () => `${podsReset} RST of ${resets()} resets` });
  assert.equal(podsEnded, 0, 'no pod connection got a FIN');
  const counted = (await metrics.denied.get()).values.find((v) => v.labels['reason'] === 'memory-pressure');
  assert.equal(counted?.value, resets());
  assert.equal(counted?.labels['destination_workload'], DEST.workloadName);
  await until('logged with the peer', () => lines.some((l) => l.includes('"HBONE refused"') && l.includes('memory-pressure') && l.includes(CLIENT.spiffeId) && l.includes('127.0.0.1')), 5_000);
});

// The agent's HBONE port and its gateway port are one server (agent/src/inbound.ts): with two, one
// identity held maxTunnelsPerPeer tunnels on each, and every other limit was doubled too.
test('the HBONE port and the gateway port share one server: a peer holding its maxTunnelsPerPeer on 15008 is refused on the gateway port (503 too-many-tunnels), counted once and logged', async () => {
  const ca = createTestCa();
  const lines: string[] = [];
  const held: import('node:net').Socket[] = [];
  const app = await tcpServer((s) => { held.push(s); s.on('error', () => {}); });
  cleanups.push(() => { for (const s of held) s.destroy(); app.server.close(); });
  const delivery = { authorize: () => {}, connectToPod: async () => connectTcp(`127.0.0.1:${app.port}`, { timeoutMs: 5_000 }), track: () => {} };
  const { inbound, metrics, port, gatewayPort } = await startInbound(ca, delivery, { log: jsonLogger('agent', 'info', (l) => lines.push(l)), maxTunnelsPerPeer: 1 });
  const open = (session: ClientHttp2Session) => new Promise<number>((resolve) => {
    const r = session.request({ ':method': 'CONNECT', ':authority': `${DEST.ip}:${app.port}` }, { endStream: false });
    r.on('response', (h) => resolve(Number(h[':status'])));
    r.on('error', () => resolve(0));
  });
  const leaf = ca.issue(CLIENT.spiffeId);
  assert.equal(await open(await peer(port, leaf)), 200);
  assert.equal(await open(await peer(gatewayPort, leaf)), 503);
  assert.equal(inbound.server.stats().refusals['too-many-tunnels'], 1);
  const counted = (await metrics.denied.get()).values.filter((v) => v.labels['reason'] === 'too-many-tunnels');
  assert.deepEqual(counted.map((v) => v.value), [1]);
  await until('logged', () => lines.some((l) => l.includes('"HBONE refused"') && l.includes('too-many-tunnels') && l.includes(CLIENT.spiffeId)), 5_000);
});

// Which rules judge a CONNECT is a fact of the listener it came by (HboneServer.listen's name), not
// a port number compared with one the agent may not have set: a port of the agent's server that is
// not its named HBONE port is judged by the gateway's rules too (exportedPodsOf, as Istio's gateway
// carries other networks' callers to Service ports only). Before, a port listened on directly
// (inbound.server.listen, or before Inbound.listen had noted the gateway port) was judged as 15008.
test('a port of the agent\'s HBONE server that is not its named 15008 (inbound.server.listen on its own) fails closed: a CONNECT to a pod no exported Service lists is refused (403) not_exported, counted once and logged', async () => {
  const ca = createTestCa();
  const lines: string[] = [];
  const app = await tcpServer((s) => { s.on('error', () => {}); s.resume(); });
  cleanups.push(() => app.server.close());
  const delivery = { authorize: () => {}, connectToPod: async () => connectTcp(`127.0.0.1:${app.port}`, { timeoutMs: 5_000 }), track: () => {} };
  const { inbound, metrics } = await startInbound(ca, delivery, { log: jsonLogger('agent', 'info', (l) => lines.push(l)) });
  const { port: bare } = await inbound.server.listen(0, '127.0.0.1');
  const r = (await peer(bare, ca.issue(CLIENT.spiffeId))).request({ ':method': 'CONNECT', ':authority': `${DEST.ip}:${app.port}` }, { endStream: false });
  r.on('error', () => {});
  const [headers] = await once(r, 'response') as [Record<string, unknown>];
  assert.equal(headers[':status'], 403);
  const counted = (await metrics.denied.get()).values.filter((v) => v.labels['reason'] === 'not_exported');
  assert.deepEqual(counted.map((v) => v.value), [1], 'counted once');
  await until('logged', () => lines.some((l) => l.includes('not_exported') && l.includes(CLIENT.spiffeId)), 5_000);
});

// The gateway port is reachable by anyone who reaches the node, before TLS: it takes from one
// source what 15008 does (DEFAULT_MAX_CONNECTIONS_PER_SOURCE; the agent knows no address of the
// gateway's to lift it for), and its connections are its own, so filling it refuses nothing on
// 15008. Before, one source held 8,192 there, and two filled the node's one shared total.
test('one source holds at most 1,024 connections on the gateway port, the next refused before TLS (too-many-connections, counted once and named), and 15008 still serves that source', async () => {
  const ca = createTestCa();
  const lines: string[] = [];
  const app = await tcpServer((s) => { s.on('error', () => {}); s.pipe(s); });
  cleanups.push(() => app.server.close());
  const delivery = { authorize: () => {}, connectToPod: async () => connectTcp(`127.0.0.1:${app.port}`, { timeoutMs: 5_000 }), track: () => {} };
  const { inbound, metrics, port, gatewayPort } = await startInbound(ca, delivery, { log: jsonLogger('agent', 'info', (l) => lines.push(l)) });
  const held: import('node:net').Socket[] = [];
  cleanups.push(() => { for (const s of held) s.destroy(); });
  const { connect: netConnect } = await import('node:net');
  let closedEarly = 0;
  const dial = () => new Promise<void>((resolve) => {
    const s = netConnect({ host: '127.0.0.1', port: gatewayPort }, () => resolve());
    s.on('error', () => resolve());
    s.once('close', () => closedEarly++);
    held.push(s);
  });
  // In rounds of 64, each connected before the next (a burst past the listen backlog is retried by the kernel, slowly).
  for (let i = 0; i < DEFAULT_MAX_CONNECTIONS_PER_SOURCE; i += 64) await Promise.all(Array.from({ length: 64 }, dial));
  await until('the share held', () => closedEarly === 0 && inbound.server.stats().refusals['too-many-connections'] === 0, 5_000);
  await dial();
  await until('the one past the share refused', () => inbound.server.stats().refusals['too-many-connections'] === 1, 10_000);
  await until('and closed', () => closedEarly === 1, 5_000);
  const counted = (await metrics.denied.get()).values.filter((v) => v.labels['reason'] === 'too-many-connections');
  assert.deepEqual(counted.map((v) => v.value), [1], 'counted once');
  await until('logged', () => lines.some((l) => l.includes('too-many-connections') && l.includes(`already holds ${DEFAULT_MAX_CONNECTIONS_PER_SOURCE} connections on port ${gatewayPort}`)), 5_000);
  const r = (await peer(port, ca.issue(CLIENT.spiffeId))).request({ ':method': 'CONNECT', ':authority': `${DEST.ip}:${app.port}` }, { endStream: false });
  r.on('error', () => {});
  const [headers] = await once(r, 'response') as [Record<string, unknown>];
  assert.equal(headers[':status'], 200, '15008 serves the same source');
  assert.equal(inbound.server.stats().refusals['server-full'], 0);
  r.destroy();
});

// A policy's no is counted where the policy decided (Delivery.authorize: reason="policy", under the
// pod), and the HBONE server's refusal report of the same CONNECT counted it again as
// reason="denied" with destination_workload="unknown": two refusals per denied tunnel in
// weft_connections_denied_total, one of them under no workload.
test('a CONNECT an AuthorizationPolicy refuses is counted once in weft_connections_denied_total (reason policy, as Delivery counts it), not again as denied, and logged once (Delivery\'s line, no "HBONE refused")', async () => {
  const ca = createTestCa();
  const held: { metrics?: AgentMetrics } = {};
  const lines: string[] = [];
  const { metrics, port } = await startInbound(ca, {
    // As Delivery.authorize does: count under the pod, then throw.
    authorize(dest: Workload) {
      held.metrics!.denied.inc({ reporter: 'destination', reason: 'policy', destination_workload: dest.name, destination_workload_namespace: dest.namespace });
      throw new DeniedError('no ALLOW policy matches', 403, 'demo/allow-nothing');
    },
    track() {},
    async connectToPod() { throw new Error('not reached'); },
  }, { log: jsonLogger('agent', 'info', (l) => lines.push(l)) });
  held.metrics = metrics;
  const session = await peer(port, ca.issue(CLIENT.spiffeId));
  const status = await connectStatus(session, `${DEST.ip}:8080`);
  assert.equal(status, 403);
  const series = (await metrics.denied.get()).values;
  assert.deepEqual(series.map((v) => [v.labels['reason'], v.value]), [['policy', 1]], JSON.stringify(series.map((v) => v.labels)));
  assert.deepEqual(lines.filter((l) => l.includes('HBONE refused')), [], 'Delivery.authorize logged the denial; the HBONE server\'s report of it is not a second line');
});

// A CONNECT is judged before the pod connect and its delivery tracked after it: a push applied
// while the pod connect was in flight was not seen until a later push (ztunnel judges a connection
// against the policies in force when it registers it, src/proxy/connection_manager.rs). Now the
// delivery is judged again when tracked, and the CONNECT refused (403), counted once and named.
test('a DENY pushed while the pod connect is in flight refuses the CONNECT (403) once connected: the pod connection closed, counted once (reason policy) and logged', async () => {
  const ca = createTestCa();
  const lines: string[] = [];
  const podSide: import('node:net').Socket[] = [];
  let podEnded = 0;
  const app = await tcpServer((s) => { podSide.push(s); s.on('error', () => {}); s.once('end', () => podEnded++); s.once('close', () => podEnded++); s.resume(); });
  cleanups.push(() => { for (const s of podSide) s.destroy(); app.server.close(); });
  const { LocalDelivery } = await import('../../agent/src/delivery.ts');
  let state: AgentState | undefined;
  const log = jsonLogger('agent', 'info', (l) => lines.push(l));
  const deny = { name: 'no-client', namespace: 'demo', action: 'DENY' as const, scope: 'workload' as const, selector: { app: 'echo' }, rules: [{ from: [{ principals: [CLIENT.spiffeId] }], to: [], when: [], layer: 'L4' as const }], layer: 'L4' as const };
  let delivery: InstanceType<typeof LocalDelivery> | undefined;
  const { inbound, metrics: inboundMetrics, port } = await startInbound(ca, {
    authorize: (...a: Parameters<InstanceType<typeof LocalDelivery>['authorize']>) => delivery!.authorize(...a),
    track: (d: Parameters<InstanceType<typeof LocalDelivery>['track']>[0]) => delivery!.track(d),
    connectToPod: async () => {
      // The push lands while the pod connect is in flight.
      const next = { ...state!.current, policies: [deny] };
      state!.apply(next);
      delivery!.configApplied(next);
      return connectTcp(`127.0.0.1:${app.port}`, { timeoutMs: 5_000 });
    },
  }, { log, prepare: (s) => { state = s; } });
  delivery = new LocalDelivery({ state: state!, metrics: inboundMetrics, log, datapath: { registerPeer() {}, unregisterPeer() { return true; }, tagAgentSocket() {} } });
  delivery.configApplied(state!.current);
  assert.equal(await connectStatus(await peer(port, ca.issue(CLIENT.spiffeId)), `${DEST.ip}:${app.port}`), 403);
  await until('the pod connection closed', () => podSide.length === 1 && podEnded > 0, 5_000);
  const counted = (await inboundMetrics.denied.get()).values.filter((v) => v.value > 0);
  assert.deepEqual(counted.map((v) => [v.labels['reason'], v.value]), [['policy', 1]], 'counted once, as the policy\'s no');
  assert.equal(inbound.server.stats().refusals.denied, 1);
  await until('logged', () => lines.some((l) => l.includes('open connection closed: the policies no longer allow it') && l.includes('demo/no-client')), 5_000);
  assert.ok(!lines.some((l) => l.includes('"HBONE refused"')), 'not logged again as a refusal');
});
