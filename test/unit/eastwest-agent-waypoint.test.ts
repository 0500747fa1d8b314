// The east-west gateway and the node agent behind it, together: what the gateway refuses must not
// be reachable by naming it one level down. The gateway sees only the outer CONNECT (the endpoint a
// caller names, whose node agent it connects to); the inner session is the caller's own HBONE to
// that agent, encrypted end to end, and carries a CONNECT per connection to any pod of that node.
// So the agent applies the gateway's rules to sessions the gateway carries, which come to its own
// port (PORTS.hboneGateway; whatever address they come from: SNAT rewrites it, a config learns it
// late): only the ports the exported Services send to, and a pod's port whose every Service here
// goes through a waypoint only by that waypoint's identity. Istio's east-west gateway carries callers to a Service, never to a pod of their
// choosing, and the destination ztunnel (in-pod, its 15008 at the pod's own address) refuses an
// inner CONNECT naming another address than the one dialled (ztunnel src/proxy/inbound.rs
// validate_destination, IPMismatch); https://istio.io/latest/docs/ambient/install/multicluster/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { createSecureContext } from 'node:tls';
import { Registry } from 'prom-client';
import { CertificateAuthority } from '../../lib/identity/ca.ts';
import { HbonePool, HboneRefusedError } from '../../lib/hbone/index.ts';
import { serverNameForIdentity } from '../../lib/hbone/sni.ts';
import type { AgentConfig, Endpoint, MeshModel, Service, Waypoint, Workload } from '../../lib/model/mesh.ts';
import { emptyMeshModel } from '../../lib/model/mesh.ts';
import { EASTWEST_SERVICE_ACCOUNT } from '../../lib/model/federation.ts';
import { FLAG_DENY } from '../../lib/telemetry/labels.ts';
import { Federation } from '../../controller/src/federation.ts';
import { EastWestGateway } from '../../eastwest/src/gateway.ts';
import { Inbound } from '../../agent/src/inbound.ts';
import { AgentMetrics } from '../../agent/src/metrics.ts';
import { AgentState } from '../../agent/src/state.ts';
import { jsonLogger, silentLogger } from '../../lib/log.ts';

const TD = 'cluster.local';
const id = (ns: string, sa: string) => `spiffe://${TD}/ns/${ns}/sa/${sa}`;
const CTRL = id('weft-system', 'weft-controller');
const GW_ID = id('weft-system', EASTWEST_SERVICE_ACCOUNT);
const ECHO = id('demo', 'echo');
const CLIENT = id('demo', 'client');
const WAYPOINT = id('demo', 'waypoint');
/** Only an endpoint of `guarded` (behind demo/waypoint). */
const GUARDED_POD = '10.78.1.5';
/** An endpoint of `echo` (no waypoint) too: any caller may be carried to it. */
const OPEN_POD = '10.78.1.1';
/** An enrolled pod of node1 that no Service lists: the gateway carries no one to it. */
const LONE_POD = '10.78.1.7';

const cleanups: Array<() => unknown> = [];
let c1: CertificateAuthority;
let gwPort = 0;
const agentLines: string[] = [];
const accessLog: Array<Record<string, unknown>> = [];
const metrics = new AgentMetrics();
const gwRegistry = new Registry();
/** The agent's 15008 (sessions from its own network). */
let agentHbonePort = 0;
const delivered: string[] = [];
let state: AgentState;

async function creds(ca: CertificateAuthority, spiffe: string): Promise<{ key: string; cert: string; ca: string[] }> {
  const issued = await ca.issueServingCertificate({ uris: [spiffe] });
  return { key: issued.keyPem, cert: issued.certChain.join(''), ca: ca.trustBundle() };
}

// A pod of demo (exportedPodsOf opens only endpoints with a pod of the Service's own namespace).
const ECHO_POD = { workloadName: 'echo', namespace: 'demo', canonicalService: 'echo', canonicalRevision: 'latest', cluster: 'cluster2' };
const ep = (ip: string): Endpoint => ({ workloadUid: ip, ip, node: 'node1', nodeIp: '127.0.0.1', ports: { '80': 8080 }, enrolled: true, spiffeId: ECHO, ready: true, workload: ECHO_POD });
const echoSvc: Service = { name: 'echo', namespace: 'demo', hostname: 'echo.demo.svc.cluster.local', vips: ['10.96.0.10'], ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP', appProtocol: 'http' }], endpoints: [ep(OPEN_POD)] };
const guarded: Service = { ...echoSvc, name: 'guarded', hostname: 'guarded.demo.svc.cluster.local', vips: ['10.96.0.11'], endpoints: [ep(GUARDED_POD), ep(OPEN_POD)], waypoint: { name: 'waypoint', namespace: 'demo' } };
const waypoint: Waypoint = { name: 'waypoint', namespace: 'demo', address: '10.78.1.40', port: 15008, spiffeId: WAYPOINT, ready: true };

function workload(name: string, ns: string, sa: string, ip: string, node: string, enrolled: boolean): Workload {
  return {
    uid: `${ns}/${name}`, name, namespace: ns, node, nodeIp: '127.0.0.1', ip, serviceAccount: sa, spiffeId: id(ns, sa),
    labels: { app: name }, enrolled, mode: 'PERMISSIVE', services: [], workloadName: name, canonicalService: name, canonicalRevision: 'v1', cluster: 'Kubernetes',
  };
}

before(async () => {
  const root = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const load = async (n: string) => {
    const i = await root.issueIntermediate(n);
    return CertificateAuthority.fromPem({ certPem: i.certPem, keyPem: i.keyPem, rootsPem: i.rootPem }, { trustDomain: TD });
  };
  c1 = await load('cluster1');
  const c2 = await load('cluster2');

  // cluster2's node agent of node1 (127.0.0.1): the real inbound, a delivery that pipes to an echo.
  const echoServer = net.createServer((s) => s.pipe(s));
  await new Promise<void>((r) => echoServer.listen(0, '127.0.0.1', () => r()));
  cleanups.push(() => echoServer.close());
  const echoPort = (echoServer.address() as net.AddressInfo).port;
  state = new AgentState('node1');
  state.apply({
    node: 'node1',
    workloads: [
      { ...workload('echo-a', 'demo', 'echo', OPEN_POD, 'node1', true), services: ['demo/echo', 'demo/guarded'] },
      { ...workload('echo-b', 'demo', 'echo', GUARDED_POD, 'node1', true), services: ['demo/guarded'] },
      workload('echo-c', 'demo', 'echo', LONE_POD, 'node1', true),
    ],
    services: [echoSvc, guarded], policies: [], peerAuthentications: [], waypoints: [waypoint],
  } as AgentConfig);
  const echoTls = await creds(c2, ECHO);
  const inbound = new Inbound({
    node: 'node1', trustDomain: TD, state, metrics, accessLog: (e) => { accessLog.push(e); },
    log: jsonLogger('agent', 'info', (l) => agentLines.push(l)),
    delivery: {
      authorize: () => {},
      connectToPod: async (dest: Workload) => { delivered.push(dest.ip); return net.connect(echoPort, '127.0.0.1'); },
      track: () => {},
    } as never,
    serverTls: { SNICallback: (_n: string, cb: (e: Error | null, c?: unknown) => void) => cb(null, createSecureContext({ key: echoTls.key, cert: echoTls.cert, ca: echoTls.ca })) } as never,
    trustBundle: () => echoTls.ca,
  });
  // The gateway dials the agent's gateway port: no address of the gateway's is in the agent's config.
  const { hbone, gateway: agentPort } = await inbound.listen({ hbone: 0, gateway: 0 }, '127.0.0.1');
  agentHbonePort = hbone;
  cleanups.push(() => inbound.server.close(100));

  // cluster2's controller export and its east-west gateway in front of that agent.
  const ctrlTls = await creds(c2, CTRL);
  const federation = new Federation({ cluster: 'cluster2', network: 'network2', listen: { host: '127.0.0.1', port: 0 }, remotes: [], tls: () => ctrlTls, mayRead: (x) => x === CTRL || x === GW_ID, isController: (x) => x === CTRL, log: silentLogger });
  const model: MeshModel = { ...emptyMeshModel(), services: new Map([['demo/echo', echoSvc], ['demo/guarded', guarded]]), waypoints: new Map([['demo/waypoint', waypoint]]) };
  federation.merge(model);
  await federation.start();
  cleanups.push(() => federation.stop());
  const gateway = new EastWestGateway({ tls: await creds(c2, GW_ID), trustDomains: [TD], controllerUrl: `https://127.0.0.1:${federation.port}`, controllerId: CTRL, agentPort, pollMs: 60_000, log: silentLogger, registry: gwRegistry });
  gwPort = await gateway.listen(0, '127.0.0.1');
  cleanups.push(() => gateway.close());
});

after(async () => { for (const c of cleanups.reverse()) await c(); });

/** Double HBONE from `as` (cluster1): the outer CONNECT names `outer`, the inner one `inner`. */
async function through(as: string, outer: string, inner: string) {
  const pool = new HbonePool();
  cleanups.push(() => pool.close(0));
  return pool.connect({
    sourceKey: as, tls: { ...(await creds(c1, as)), servername: serverNameForIdentity(ECHO)! }, dest: { host: '127.0.0.1', port: 15008 },
    target: inner, expectPeer: ECHO, gateway: { host: '127.0.0.1', port: gwPort, expectPeer: GW_ID, target: outer }, timeoutMs: 5_000,
  });
}

async function echoes(s: NodeJS.ReadWriteStream & { end(): void }): Promise<void> {
  const back = new Promise<string>((resolve) => { let got = ''; s.on('data', (c: Buffer) => { got += c; if (got.includes('\n')) resolve(got); }); });
  s.write('hi\n');
  assert.equal(await back, 'hi\n');
  s.end();
}

const denied = async (reason: string): Promise<number> =>
  (await metrics.denied.get()).values.filter((v) => v.labels['reason'] === reason).reduce((n, v) => n + v.value, 0);
const deniedBehindWaypoint = (): Promise<number> => denied('behind_waypoint');

/** CLIENT, carried to the open pod, names the guarded pod inside: refused 403 behind the waypoint, counted once. */
async function refusedBehindWaypoint(): Promise<void> {
  const before = await deniedBehindWaypoint();
  await assert.rejects(through(CLIENT, `${OPEN_POD}:8080`, `${GUARDED_POD}:8080`), (e: Error) =>
    e instanceof HboneRefusedError && e.status === 403 && /behind waypoint demo\/waypoint/.test(e.message));
  assert.equal(await deniedBehindWaypoint(), before + 1);
}

test('a caller the gateway carries to one pod cannot name a pod behind a waypoint in its inner CONNECT: the agent refuses it (403), counts it behind_waypoint once and names it; the waypoint\'s identity and the open pod are served', async () => {
  // The gateway admits the outer CONNECT: OPEN_POD is an endpoint of a Service without a waypoint.
  await assert.rejects(through(CLIENT, `${OPEN_POD}:8080`, `${GUARDED_POD}:8080`), (e: Error) =>
    e instanceof HboneRefusedError && e.status === 403 && /10\.78\.1\.5 is an endpoint of demo\/guarded, behind waypoint demo\/waypoint.* to its port 8080/.test(e.message));
  assert.deepEqual(delivered, [], 'nothing reached the pod behind the waypoint');
  assert.equal(await deniedBehindWaypoint(), 1);
  // Counted once: not again as the server's generic refusal; under the pod refused, as a policy's no is.
  assert.equal(await denied('denied'), 0);
  assert.deepEqual((await metrics.denied.get()).values.filter((v) => v.labels['reason'] === 'behind_waypoint').map((v) => [v.labels['destination_workload'], v.labels['destination_workload_namespace'], v.value]), [['echo-b', 'demo', 1]]);
  const line = agentLines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l['msg'] === 'HBONE refused' && /behind waypoint/.test(String(l['reason'])));
  assert.ok(line && line['peer'] === CLIENT && line['authority'] === `${GUARDED_POD}:8080` && line['label'] === 'behind_waypoint', JSON.stringify(line));

  // What the gateway would carry is served: the open pod to anyone, the guarded one to its waypoint
  // (another cluster's of the same namespace and name: namespace sameness).
  await echoes(await through(CLIENT, `${OPEN_POD}:8080`, `${OPEN_POD}:8080`));
  await echoes(await through(WAYPOINT, `${OPEN_POD}:8080`, `${GUARDED_POD}:8080`));
  assert.deepEqual(delivered, [OPEN_POD, GUARDED_POD]);
  assert.equal(await deniedBehindWaypoint(), 1);
});

test('a refusal on the gateway port is in the access log (and so /flows) as a policy\'s is: one connection record closed with response_flags DENY, naming the pod and why', async () => {
  const before = accessLog.length;
  await assert.rejects(through(CLIENT, `${OPEN_POD}:8080`, `${GUARDED_POD}:8080`), (e: Error) => e instanceof HboneRefusedError && e.status === 403);
  // (The tunnels the test before served may close in this time: only refusals are looked at.)
  const entries = accessLog.slice(before).filter((e) => e['bytes_sent'] === 0 && e['src.identity'] === CLIENT);
  assert.equal(entries.length, 1, JSON.stringify(entries));
  assert.equal(entries[0]!['response_flags'], FLAG_DENY);
  assert.equal(entries[0]!['dst.addr'], `${GUARDED_POD}:8080`);
  assert.equal(entries[0]!['src.identity'], CLIENT);
  assert.match(String(entries[0]!['error']), /^denied: .*behind waypoint demo\/waypoint/);
});

test('the agent knows a session the gateway carries by the port it came to, not by its address: no address of the gateway\'s is in the agent\'s config (SNAT, a hostNetwork gateway, config lag), and its rules hold all the same', async () => {
  // The gateway's connections come from 127.0.0.1, an address the config gives no one (and, below,
  // the address of an enrolled pod of another node: what SNAT to a node address can look like).
  assert.ok(!state.current.workloads.some((w) => w.serviceAccount === EASTWEST_SERVICE_ACCOUNT), 'the config names no pod of the gateway');
  const cfg = state.current;
  state.apply({ ...cfg, workloads: [...cfg.workloads, workload('other', 'demo', 'client', '127.0.0.1', 'node2', true)] });
  try {
    await refusedBehindWaypoint();
  } finally {
    state.apply(cfg);
  }
});

test('a session on 15008 is judged as before: within a network a caller may name a pod directly, as in Istio (an ALLOW naming the waypoint\'s identity is what keeps it out)', async () => {
  const before = delivered.length;
  const refused = await deniedBehindWaypoint();
  const pool = new HbonePool();
  cleanups.push(() => pool.close(0));
  const s = await pool.connect({
    sourceKey: CLIENT, tls: { ...(await creds(c1, CLIENT)), servername: serverNameForIdentity(ECHO)! }, dest: { host: '127.0.0.1', port: agentHbonePort },
    target: `${GUARDED_POD}:8080`, expectPeer: ECHO, timeoutMs: 5_000,
  });
  await echoes(s);
  assert.deepEqual(delivered.slice(before), [GUARDED_POD]);
  assert.equal(await deniedBehindWaypoint(), refused);
});

// The gateway carries callers only to endpoints of the Services its cluster exports ("neither an
// endpoint nor a waypoint of this cluster", unknown-endpoint); Istio's east-west gateway routes to
// Services, so a pod no exported Service lists is not reachable from another network.
test('a caller the gateway carries to one pod cannot name a pod no exported Service lists in its inner CONNECT: refused (403), counted not_exported once and named', async () => {
  const before = delivered.length;
  await assert.rejects(through(CLIENT, `${OPEN_POD}:8080`, `${LONE_POD}:8080`), (e: Error) =>
    e instanceof HboneRefusedError && e.status === 403 && /10\.78\.1\.7:8080 is not an endpoint of a Service this cluster exports/.test(e.message));
  assert.equal(delivered.length, before, 'nothing delivered');
  assert.equal(await denied('not_exported'), 1);
  assert.equal(await denied('denied'), 0);
  assert.ok(agentLines.some((l) => l.includes('"HBONE refused"') && l.includes(`${LONE_POD}:8080`) && l.includes(CLIENT)));
});

// Istio's east-west gateway routes to a Service's ports (its listeners are the Services' hosts and
// ports, https://istio.io/latest/docs/ambient/install/multicluster/): a port of an exported pod that
// no Service sends to is not reachable from another network, at the gateway or inside its session.
test('a caller of another network reaches only the ports the exported Services send to: the gateway refuses an outer CONNECT to another port of an exported pod (403 not-service-port), the agent an inner one (403 not_exported), each counted once and named', async () => {
  const before = delivered.length;
  await assert.rejects(through(CLIENT, `${OPEN_POD}:9999`, `${OPEN_POD}:8080`), (e: Error) =>
    e instanceof HboneRefusedError && e.status === 403 && /10\.78\.1\.1:9999: no Service of this cluster sends to port 9999/.test(e.message));
  assert.match(await gwRegistry.metrics(), /^weft_eastwest_refused_total\{reason="not-service-port"\} 1$/m);
  const exportedBefore = await denied('not_exported');
  await assert.rejects(through(CLIENT, `${OPEN_POD}:8080`, `${OPEN_POD}:9999`), (e: Error) =>
    e instanceof HboneRefusedError && e.status === 403 && /10\.78\.1\.1:9999 is not an endpoint of a Service this cluster exports at that port/.test(e.message));
  assert.equal(delivered.length, before, 'nothing delivered');
  assert.equal(await denied('not_exported'), exportedBefore + 1);
  assert.equal(await denied('denied'), 0);
  assert.ok(agentLines.some((l) => l.includes('"HBONE refused"') && l.includes(`${OPEN_POD}:9999`) && l.includes(CLIENT)));
});

// The gateway judges by its cluster's export, which leaves cluster-local Services out (kube-system,
// Istio's default clusterLocal hosts): the agent judges by the same list, so a cluster-local
// Service without a waypoint listing a pod opens it at neither.
test('a pod behind a waypoint that a cluster-local Service (kube-system) also lists without one stays guarded at the agent, as at the gateway: refused (403) behind_waypoint', async () => {
  const cfg = state.current;
  const local: Service = { ...echoSvc, name: 'metrics', namespace: 'kube-system', hostname: 'metrics.kube-system.svc.cluster.local', vips: ['10.96.0.12'], endpoints: [ep(GUARDED_POD)] };
  state.apply({ ...cfg, services: [...cfg.services, local] });
  try {
    await refusedBehindWaypoint();
  } finally {
    state.apply(cfg);
  }
});
