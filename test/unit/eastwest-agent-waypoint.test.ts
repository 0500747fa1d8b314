// The east-west gateway and the node agent behind it, together: what the gateway refuses must not
// be reachable by naming it one level down. The gateway sees only the outer CONNECT (the endpoint a
// caller names, whose node agent it connects to); the inner session is the caller's own HBONE to
// that agent, encrypted end to end, and carries a CONNECT per connection to any pod of that node.
// So the agent applies the gateway's rule to sessions the gateway carries: a pod whose every
// Service here goes through a waypoint is reached from another network only by that waypoint's
// identity. Istio's east-west gateway carries callers to a Service, never to a pod of their
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
const metrics = new AgentMetrics();
const delivered: string[] = [];
let state: AgentState;

async function creds(ca: CertificateAuthority, spiffe: string): Promise<{ key: string; cert: string; ca: string[] }> {
  const issued = await ca.issueServingCertificate({ uris: [spiffe] });
  return { key: issued.keyPem, cert: issued.certChain.join(''), ca: ca.trustBundle() };
}

const ep = (ip: string): Endpoint => ({ workloadUid: ip, ip, node: 'node1', nodeIp: '127.0.0.1', ports: { '80': 8080 }, enrolled: true, spiffeId: ECHO, ready: true });
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
      // The gateway's pod: where its connections to this agent come from (loopback here).
      workload('weft-eastwest-0', 'weft-system', EASTWEST_SERVICE_ACCOUNT, '127.0.0.1', 'node9', false),
    ],
    services: [echoSvc, guarded], policies: [], peerAuthentications: [], waypoints: [waypoint],
  } as AgentConfig);
  const echoTls = await creds(c2, ECHO);
  const inbound = new Inbound({
    node: 'node1', trustDomain: TD, state, metrics, accessLog: () => {},
    log: jsonLogger('agent', 'info', (l) => agentLines.push(l)),
    delivery: {
      authorize: () => {},
      connectToPod: async (dest: Workload) => { delivered.push(dest.ip); return net.connect(echoPort, '127.0.0.1'); },
      track: () => {},
    } as never,
    serverTls: { SNICallback: (_n: string, cb: (e: Error | null, c?: unknown) => void) => cb(null, createSecureContext({ key: echoTls.key, cert: echoTls.cert, ca: echoTls.ca })) } as never,
    trustBundle: () => echoTls.ca,
  });
  const agentPort = (await inbound.server.listen(0, '127.0.0.1')).port;
  cleanups.push(() => inbound.server.close(100));

  // cluster2's controller export and its east-west gateway in front of that agent.
  const ctrlTls = await creds(c2, CTRL);
  const federation = new Federation({ cluster: 'cluster2', network: 'network2', listen: { host: '127.0.0.1', port: 0 }, remotes: [], tls: () => ctrlTls, mayRead: (x) => x === CTRL || x === GW_ID, isController: (x) => x === CTRL, log: silentLogger });
  const model: MeshModel = { ...emptyMeshModel(), services: new Map([['demo/echo', echoSvc], ['demo/guarded', guarded]]), waypoints: new Map([['demo/waypoint', waypoint]]) };
  federation.merge(model);
  await federation.start();
  cleanups.push(() => federation.stop());
  const gateway = new EastWestGateway({ tls: await creds(c2, GW_ID), trustDomains: [TD], controllerUrl: `https://127.0.0.1:${federation.port}`, controllerId: CTRL, agentPort, pollMs: 60_000, log: silentLogger, registry: new Registry() });
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

const deniedBehindWaypoint = async (): Promise<number> =>
  (await metrics.denied.get()).values.filter((v) => v.labels['reason'] === 'behind_waypoint').reduce((n, v) => n + v.value, 0);

test('a caller the gateway carries to one pod cannot name a pod behind a waypoint in its inner CONNECT: the agent refuses it (403), counts it behind_waypoint and names it; the waypoint\'s identity and the open pod are served', async () => {
  // The gateway admits the outer CONNECT: OPEN_POD is an endpoint of a Service without a waypoint.
  await assert.rejects(through(CLIENT, `${OPEN_POD}:8080`, `${GUARDED_POD}:8080`), (e: Error) =>
    e instanceof HboneRefusedError && e.status === 403 && /10\.78\.1\.5.*behind waypoint demo\/waypoint/.test(e.message));
  assert.deepEqual(delivered, [], 'nothing reached the pod behind the waypoint');
  assert.equal(await deniedBehindWaypoint(), 1);
  const line = agentLines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l['msg'] === 'HBONE refused' && /behind waypoint/.test(String(l['reason'])));
  assert.ok(line && line['peer'] === CLIENT && line['authority'] === `${GUARDED_POD}:8080`, JSON.stringify(line));

  // What the gateway would carry is served: the open pod to anyone, the guarded one to its waypoint
  // (another cluster's of the same namespace and name: namespace sameness).
  await echoes(await through(CLIENT, `${OPEN_POD}:8080`, `${OPEN_POD}:8080`));
  await echoes(await through(WAYPOINT, `${OPEN_POD}:8080`, `${GUARDED_POD}:8080`));
  assert.deepEqual(delivered, [OPEN_POD, GUARDED_POD]);
  assert.equal(await deniedBehindWaypoint(), 1);
});

test('a session from any other address is judged as before: within a network a caller may name a pod directly, as in Istio (an ALLOW naming the waypoint\'s identity is what keeps it out)', async () => {
  const cfg = state.current;
  // The gateway's pod moves away: loopback is now an in-cluster peer (another node's agent).
  state.apply({ ...cfg, workloads: cfg.workloads.map((w) => (w.serviceAccount === EASTWEST_SERVICE_ACCOUNT ? { ...w, ip: '10.78.9.9' } : w)) });
  try {
    const before = delivered.length;
    await echoes(await through(CLIENT, `${OPEN_POD}:8080`, `${GUARDED_POD}:8080`));
    assert.deepEqual(delivered.slice(before), [GUARDED_POD]);
    assert.equal(await deniedBehindWaypoint(), 1);
  } finally {
    state.apply(cfg);
  }
});

// The gateway carries callers only to endpoints of the Services its cluster exports ("neither an
// endpoint nor a waypoint of this cluster", unknown-endpoint); Istio's east-west gateway routes to
// Services, so a pod no exported Service lists is not reachable from another network.
test('a caller the gateway carries to one pod cannot name a pod no exported Service lists in its inner CONNECT: refused (403), counted not_exported and named', async () => {
  const before = delivered.length;
  await assert.rejects(through(CLIENT, `${OPEN_POD}:8080`, `${LONE_POD}:8080`), (e: Error) =>
    e instanceof HboneRefusedError && e.status === 403 && /10\.78\.1\.7 is not an endpoint of a Service this cluster exports/.test(e.message));
  assert.equal(delivered.length, before, 'nothing delivered');
  const counted = (await metrics.denied.get()).values.find((v) => v.labels['reason'] === 'not_exported');
  assert.equal(counted?.value, 1);
  assert.ok(agentLines.some((l) => l.includes('"HBONE refused"') && l.includes(`${LONE_POD}:8080`) && l.includes(CLIENT)));
});
