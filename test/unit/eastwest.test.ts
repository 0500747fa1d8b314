// The east-west gateway on loopback, from the caller's side and the attacker's: double HBONE
// through it reaches the destination agent with the caller's own identity (the gateway only
// pipes), and it is no open proxy: endpoints that are not enrolled workloads of its cluster, and
// identities that are not workloads, are refused and counted.
import { test, before, after, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { refusalLineBound, refusalLogBytesBound } from '../lab/log-bound.ts';
import net from 'node:net';
import { Registry } from 'prom-client';
import { CertificateAuthority } from '../../lib/identity/ca.ts';
import { HbonePool, HboneServer, HboneRefusedError, type HbonePeer } from '../../lib/hbone/index.ts';
import { serverNameForIdentity } from '../../lib/hbone/sni.ts';
import type { Endpoint, MeshModel, Service } from '../../lib/model/mesh.ts';
import { emptyMeshModel } from '../../lib/model/mesh.ts';
import { Federation } from '../../controller/src/federation.ts';
import { EastWestGateway } from '../../eastwest/src/gateway.ts';
import { jsonLogger, silentLogger } from '../../lib/log.ts';
import { until } from '../lab/wait.ts';

const TD = 'cluster.local';
const id = (ns: string, sa: string) => `spiffe://${TD}/ns/${ns}/sa/${sa}`;
const CTRL = id('weft-system', 'weft-controller');
const GW_ID = id('weft-system', 'weft-eastwest');
const ECHO = id('demo', 'echo');
const CLIENT = id('demo', 'client');

let c1: CertificateAuthority, c2: CertificateAuthority;
let federation: Federation, gateway: EastWestGateway, agent: HboneServer, waypoint: HboneServer, echoServer: net.Server;
let gwPort = 0;
/** cluster2's waypoint of demo: its HBONE port (on 127.0.0.1), what it was asked for and by whom. */
let wpPort = 0;
/** cluster2's "node agent" (echo's identity). */
let agentPort = 0;
const WAYPOINT2 = id('demo', 'waypoint');
const seenAtWaypoint: Array<{ peer: string | undefined; target: string }> = [];
const registry = new Registry();
const seenPeers: HbonePeer[] = [];
const pools: HbonePool[] = [];

async function creds(ca: CertificateAuthority, spiffe: string): Promise<{ key: string; cert: string; ca: string[] }> {
  const issued = await ca.issueServingCertificate({ uris: [spiffe] });
  return { key: issued.keyPem, cert: issued.certChain.join(''), ca: ca.trustBundle() };
}

// A pod of demo (exportedPodsOf opens only endpoints with a pod of the Service's own namespace).
const ECHO_POD = { workloadName: 'echo', namespace: 'demo', canonicalService: 'echo', canonicalRevision: 'latest', cluster: 'cluster2' };
const ep = (ip: string, enrolled: boolean): Endpoint => ({ workloadUid: ip, ip, node: 'node1', nodeIp: '127.0.0.1', ports: { '80': 8080 }, enrolled, ...(enrolled ? { spiffeId: ECHO } : {}), ready: true, workload: ECHO_POD });
const svc: Service = { name: 'echo', namespace: 'demo', hostname: 'echo.demo.svc.cluster.local', vips: ['10.96.0.10'], ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP', appProtocol: 'http' }], endpoints: [ep('10.78.1.1', true), ep('10.78.1.9', false)] };
/** A Service behind cluster2's waypoint demo/waypoint: 10.78.1.5 is only its endpoint, 10.78.1.1 is echo's too. */
const guarded: Service = { ...svc, name: 'guarded', hostname: 'guarded.demo.svc.cluster.local', vips: ['10.96.0.11'], endpoints: [ep('10.78.1.5', true), ep('10.78.1.1', true)], waypoint: { name: 'waypoint', namespace: 'demo' } };
/** The shared gateway's log lines. */
const gwLines: string[] = [];

before(async () => {
  const root = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const load = async (n: string) => {
    const i = await root.issueIntermediate(n);
    return CertificateAuthority.fromPem({ certPem: i.certPem, keyPem: i.keyPem, rootsPem: i.rootPem }, { trustDomain: TD });
  };
  c1 = await load('cluster1');
  c2 = await load('cluster2');
  // cluster2: the controller's export, a "node agent" (HBONE server holding echo's identity) in front of an echo.
  const ctrlTls = await creds(c2, CTRL);
  federation = new Federation({ cluster: 'cluster2', network: 'network2', listen: { host: '127.0.0.1', port: 0 }, remotes: [], tls: () => ctrlTls, mayRead: (x) => x === CTRL || x === GW_ID, isController: (x) => x === CTRL, log: silentLogger });
  const model: MeshModel = { ...emptyMeshModel(), services: new Map([['demo/echo', svc], ['demo/guarded', guarded]]) };
  federation.merge(model);
  await federation.start();
  echoServer = net.createServer((s) => s.pipe(s));
  await new Promise<void>((r) => echoServer.listen(0, '127.0.0.1', () => r()));
  const echoPort = (echoServer.address() as net.AddressInfo).port;
  const echoTls = await creds(c2, ECHO);
  agent = new HboneServer({
    tls: echoTls, trustDomains: [TD],
    handler: async (req) => {
      seenPeers.push(req.peer);
      return { upstream: net.connect(echoPort, '127.0.0.1') };
    },
  });
  agentPort = (await agent.listen(0, '127.0.0.1')).port;
  waypoint = new HboneServer({
    tls: await creds(c2, WAYPOINT2), trustDomains: [TD],
    handler: async (req) => {
      seenAtWaypoint.push({ peer: req.peer.spiffeId, target: req.authority });
      return { upstream: net.connect(echoPort, '127.0.0.1') };
    },
  });
  wpPort = (await waypoint.listen(0, '127.0.0.1')).port;
  // The export now names the waypoint too (where the gateway admits it).
  federation.merge({ ...model, waypoints: new Map([['demo/waypoint', { name: 'waypoint', namespace: 'demo', address: '127.0.0.1', port: wpPort, spiffeId: WAYPOINT2, ready: true }]]) });
  const gwTls = await creds(c2, GW_ID);
  gateway = new EastWestGateway({ tls: gwTls, trustDomains: [TD], controllerUrl: `https://127.0.0.1:${federation.port}`, controllerId: CTRL, agentPort, pollMs: 60_000, log: jsonLogger('eastwest', 'info', (l) => gwLines.push(l)), registry });
  gwPort = await gateway.listen(0, '127.0.0.1');
});

after(async () => {
  for (const p of pools) await p.close(0);
  await gateway?.close();
  await agent?.close(0);
  await waypoint?.close(0);
  echoServer?.close();
  await federation?.stop();
});

async function outer(as: string, target: string, ca: CertificateAuthority = c1) {
  const pool = new HbonePool();
  pools.push(pool);
  return pool.connect({ sourceKey: as, tls: await creds(ca, as), dest: { host: '127.0.0.1', port: gwPort }, target, expectPeer: GW_ID, timeoutMs: 5_000 });
}

/** Double HBONE from `as` to echo's agent (behind the gateway at 127.0.0.1:15008 of its network). */
async function throughGateway(as: string, expectPeer: string) {
  const pool = new HbonePool();
  pools.push(pool);
  return pool.connect({
    sourceKey: as, tls: { ...(await creds(c1, as)), servername: serverNameForIdentity(ECHO)! }, dest: { host: '127.0.0.1', port: 15008 },
    target: '10.78.1.1:8080', expectPeer, gateway: { host: '127.0.0.1', port: gwPort, expectPeer: GW_ID }, timeoutMs: 5_000,
  });
}

test('double HBONE through the gateway reaches the destination agent, which sees the caller\'s own identity from the other cluster; the bytes come back', async () => {
  const inner = await throughGateway(CLIENT, ECHO);
  const back = new Promise<string>((resolve) => {
    let got = '';
    inner.on('data', (c: Buffer) => {
      got += c;
      if (got.includes('\n')) resolve(got);
    });
  });
  inner.write('hello across networks\n');
  assert.equal(await back, 'hello across networks\n');
  inner.end();
  assert.equal(seenPeers.at(-1)?.spiffeId, CLIENT, 'the destination authenticated the caller itself, not the gateway');
  assert.match(await registry.metrics(), /^weft_eastwest_tunnels_total 1$/m);
});

test('the inner tunnel checks the destination identity end to end: a caller expecting another identity refuses it', async () => {
  await assert.rejects(throughGateway(CLIENT, id('demo', 'other')), (e: Error & { code?: string }) => e.code === 'WEFT_HBONE_PEER_IDENTITY');
});

test('the gateway is no open proxy: an address that is not an endpoint of its cluster, and an endpoint outside the mesh, are refused (403) and counted by reason', async () => {
  await assert.rejects(outer(CLIENT, '10.78.0.254:15012'), (e: Error) => e instanceof HboneRefusedError && e.status === 403 && /neither an endpoint nor a waypoint of this cluster/.test(e.message));
  await assert.rejects(outer(CLIENT, '10.78.1.9:8080'), (e: Error) => e instanceof HboneRefusedError && e.status === 403 && /not enrolled/.test(e.message));
  const m = await registry.metrics();
  assert.match(m, /^weft_eastwest_refused_total\{reason="unknown-endpoint"\} 1$/m);
  assert.match(m, /^weft_eastwest_refused_total\{reason="not-enrolled"\} 1$/m);
});

test('only workload identities of the mesh may open tunnels: a node identity and a foreign root are refused and counted', async () => {
  await assert.rejects(outer(`spiffe://${TD}/node/node9`, '10.78.1.1:8080'));
  const stranger = await CertificateAuthority.generateRoot({ trustDomain: TD });
  await assert.rejects(outer(CLIENT, '10.78.1.1:8080', stranger));
  const m = await registry.metrics();
  assert.match(m, /^weft_eastwest_refused_total\{reason="peer-not-workload"\} 1$/m);
});

test('a renewed gateway certificate (setTls, as its issued identity rotates) is what new callers see; tunnels keep working', async () => {
  const { connect } = await import('node:tls');
  const serverSerial = async (): Promise<string> => {
    const client = await creds(c1, CLIENT);
    return new Promise<string>((resolve, reject) => {
      const s = connect({ ...client, host: '127.0.0.1', port: gwPort, ALPNProtocols: ['h2'], checkServerIdentity: () => undefined }, () => {
        const serial = s.getPeerCertificate().serialNumber;
        s.destroy();
        resolve(serial);
      });
      s.on('error', reject);
    });
  };
  const before = await serverSerial();
  const renewed = await creds(c2, GW_ID);
  gateway.setTls(renewed);
  const after = await serverSerial();
  assert.notEqual(after, before);
  assert.equal(after.toLowerCase(), new (await import('node:crypto')).X509Certificate(renewed.cert).serialNumber.toLowerCase());
  await outer(CLIENT, '10.78.1.1:8080');
});

test('a waypoint forwarding to an endpoint on another network goes through that network\'s gateway with double HBONE; the destination agent sees the waypoint\'s own identity (issue 18 item 6)', async () => {
  const { HboneUpstream } = await import('../../waypoint/src/hbone.ts');
  const WAYPOINT = id('demo', 'waypoint');
  const wpTls = await creds(c1, WAYPOINT);
  const pool = new HbonePool();
  pools.push(pool);
  const upstream = new HboneUpstream({ pool, spiffeId: WAYPOINT, credentials: () => ({ key: wpTls.key, certChain: [wpTls.cert], trustBundle: wpTls.ca }) });
  const before = Number(/^weft_eastwest_tunnels_total (\d+)$/m.exec(await registry.metrics())?.[1] ?? 0);
  const s = await upstream.connect({ ip: '10.78.1.1', port: 8080, node: '10.78.0.1', spiffeId: ECHO, gateway: { network: 'network2', address: '127.0.0.1', port: gwPort, spiffeId: GW_ID } }, { timeoutMs: 5_000 });
  const back = new Promise<string>((resolve) => {
    let got = '';
    s.on('data', (c: Buffer) => {
      got += c;
      if (got.includes('\n')) resolve(got);
    });
  });
  s.write('from a waypoint across networks\n');
  assert.equal(await back, 'from a waypoint across networks\n');
  s.end();
  assert.equal(seenPeers.at(-1)?.spiffeId, WAYPOINT, 'the destination authenticated the waypoint, not the gateway');
  assert.match(await registry.metrics(), new RegExp(`^weft_eastwest_tunnels_total ${before + 1}$`, 'm'), 'it went through the gateway');
  // The gateway is checked as the outer peer: expecting another identity there fails.
  await assert.rejects(upstream.connect({ ip: '10.78.1.1', port: 8080, node: '10.78.0.1', spiffeId: ECHO, gateway: { network: 'network2', address: '127.0.0.1', port: gwPort, spiffeId: id('demo', 'impostor') } }, { timeoutMs: 5_000 }), /double HBONE via gateway/);
});

// Istio ambient multi-network: a Service behind a waypoint in the other cluster is served by that
// waypoint, reached through the gateway by double HBONE (outer CONNECT to the waypoint's HBONE
// address, inner CONNECT to the Service VIP:port), so the waypoint sees the caller's own identity.
test('double HBONE through the gateway to one of its cluster\'s waypoints: the outer CONNECT names the waypoint\'s HBONE address, the waypoint sees the caller\'s own identity and the Service VIP:port; any other port of a waypoint, and an address that is neither endpoint nor waypoint, are refused and counted', async () => {
  const pool = new HbonePool();
  pools.push(pool);
  const before = Number(/^weft_eastwest_tunnels_total (\d+)$/m.exec(await registry.metrics())?.[1] ?? 0);
  const s = await pool.connect({
    sourceKey: CLIENT, tls: await creds(c1, CLIENT), dest: { host: '127.0.0.1', port: wpPort }, target: '10.97.0.20:80', expectPeer: WAYPOINT2,
    gateway: { host: '127.0.0.1', port: gwPort, expectPeer: GW_ID, target: `127.0.0.1:${wpPort}` }, timeoutMs: 5_000,
  });
  const back = new Promise<string>((resolve) => {
    let got = '';
    s.on('data', (c: Buffer) => {
      got += c;
      if (got.includes('\n')) resolve(got);
    });
  });
  s.write('to a waypoint across networks\n');
  assert.equal(await back, 'to a waypoint across networks\n');
  s.end();
  assert.deepEqual(seenAtWaypoint.at(-1), { peer: CLIENT, target: '10.97.0.20:80' }, 'the waypoint authenticated the caller itself, not the gateway');
  assert.match(await registry.metrics(), new RegExp(`^weft_eastwest_tunnels_total ${before + 1}$`, 'm'), 'through the gateway');
  // Attacker side: the waypoint's address is no open door to its other ports, nor is anything else.
  await assert.rejects(outer(CLIENT, '127.0.0.1:15020'), (e: Error) => e instanceof HboneRefusedError && e.status === 403 && new RegExp(`127\\.0\\.0\\.1 is a waypoint of this cluster; the gateway carries only HBONE to its port ${wpPort}, not 15020`).test(e.message));
  await assert.rejects(outer(CLIENT, '10.97.0.20:80'), (e: Error) => e instanceof HboneRefusedError && e.status === 403 && /10\.97\.0\.20 is neither an endpoint nor a waypoint of this cluster/.test(e.message));
  const m = await registry.metrics();
  assert.match(m, /^weft_eastwest_refused_total\{reason="not-hbone-port"\} 1$/m);
  assert.match(m, /^weft_eastwest_refused_total\{reason="unknown-endpoint"\} 2$/m);
});

// The authority of a refused CONNECT is the caller's to choose, and HPACK lets it send a 3 KB one
// once and then refer to it with a byte or two per request (RFC 7541 2.3.2): each refusal must not
// cost the gateway a full log line. Lines are cut and at most REFUSAL_LOG_PER_SECOND a second, with
// a count of those left out; the counter stays exact (as the agent's HBONE port does).
test('refused CONNECTs at the gateway cannot make its log cost more than the caller sends: lines cut and rate limited with a count of the rest; every refusal counted by reason', async (t) => {
  const { connect: h2connect } = await import('node:http2');
  const lines: string[] = [];
  const reg = new Registry();
  const gw = new EastWestGateway({ tls: await creds(c2, GW_ID), trustDomains: [TD], controllerUrl: `https://127.0.0.1:${federation.port}`, controllerId: CTRL, pollMs: 60_000, log: jsonLogger('eastwest', 'info', (l) => lines.push(l)), registry: reg });
  const port = await gw.listen(0, '127.0.0.1');
  t.after(() => gw.close());
  const session = h2connect(`https://127.0.0.1:${port}`, { ...(await creds(c1, CLIENT)), checkServerIdentity: () => undefined });
  t.after(() => session.destroy());
  session.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    session.once('remoteSettings', () => resolve());
    session.once('error', reject);
  });
  const burst = (authority: string, n: number) => Promise.all(Array.from({ length: n }, () => new Promise<void>((resolve) => {
    const r = session.request({ ':method': 'CONNECT', ':authority': authority }, { endStream: false });
    r.on('error', () => {});
    r.on('close', () => resolve());
    r.resume();
  })));
  const sentBefore = session.socket.bytesWritten;
  const started = Date.now();
  const N = 300;
  await burst(`${'9'.repeat(3000)}:80`, N); // not an address: the HBONE server's bad-authority
  await burst('10.78.0.254:15012', N); // an address the gateway does not carry: unknown-endpoint
  const sent = session.socket.bytesWritten - sentBefore;
  const m = await reg.metrics();
  assert.match(m, new RegExp(`^weft_eastwest_refused_total\\{reason="bad-authority"\\} ${N}$`, 'm'));
  assert.match(m, new RegExp(`^weft_eastwest_refused_total\\{reason="unknown-endpoint"\\} ${N}$`, 'm'));
  assert.doesNotMatch(m, /^weft_eastwest_refused_total\{reason="denied"\}/m, 'each refusal is counted once, by the gateway\'s own reason');
  const refused = lines.filter((l) => l.includes('"tunnel refused"'));
  assert.ok(refused.length > 0 && refused.length <= refusalLineBound(started), `${refused.length} refusal lines for ${2 * N} refusals`);
  assert.ok(refused.every((l) => l.length < 1500), 'each line cut');
  const logBytes = lines.reduce((n, l) => n + l.length, 0);
  assert.ok(logBytes <= refusalLogBytesBound(started, 1500), `${sent} bytes from the caller made ${logBytes} bytes of log`);
  assert.ok(logBytes < N * 3000, 'far less than one quoted authority per refusal');
  // Those left out are said with their number once the next second's first refusal comes.
  const second = Math.floor(Date.now() / 1000);
  await until('the next second', () => Math.floor(Date.now() / 1000) > second, 2_000);
  await burst('10.78.0.254:15012', 1);
  const summary = lines.map((l) => JSON.parse(l) as { msg: string; count?: number }).filter((l) => l.msg.startsWith('tunnel refusals not logged (rate limit'));
  assert.ok(summary.length > 0 && summary.every((l) => (l.count ?? 0) > 0), JSON.stringify(summary));
  assert.equal(refused.length + summary.reduce((n, l) => n + l.count!, 0), 2 * N, 'every refusal is either logged or in a count');
});

// Istio's east-west gateway carries a caller to a Service (SNI outbound_.<port>_._.<hostname>, or
// the Service in the double-HBONE authority), never to a pod of the caller's choosing; a Service
// behind a waypoint is served by that waypoint, which applies its L7 policy. So a pod whose every
// Service here goes through a waypoint is carried to only from that waypoint's identity (another
// cluster's waypoint of the same namespace and name under namespace sameness): any other caller
// would step around the waypoint's L7 policy (docs/SECURITY.md).
test('the gateway does not carry a caller around a waypoint: a pod whose Services here all go through one is reached only by that waypoint\'s identity; anyone else is refused (403, behind-waypoint), counted and named', async () => {
  await assert.rejects(outer(CLIENT, '10.78.1.5:8080'), (e: Error) => e instanceof HboneRefusedError && e.status === 403 && /10\.78\.1\.5 is an endpoint of demo\/guarded, behind waypoint demo\/waypoint of this cluster/.test(e.message));
  assert.match(await registry.metrics(), /^weft_eastwest_refused_total\{reason="behind-waypoint"\} 1$/m);
  const line = gwLines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.reason === 'behind-waypoint');
  assert.ok(line && line.peer === CLIENT && line.authority === '10.78.1.5:8080', JSON.stringify(line));
  // The waypoint of another cluster with the same identity (namespace sameness) is carried.
  await outer(WAYPOINT2, '10.78.1.5:8080');
  // A pod that is also an endpoint of a Service without a waypoint is reachable by that Service's callers.
  await outer(CLIENT, '10.78.1.1:8080');
  assert.match(await registry.metrics(), /^weft_eastwest_refused_total\{reason="behind-waypoint"\} 1$/m);
});

// A tenant's hand-written EndpointSlice may list a pod of another namespace (Kubernetes allows any
// address): the controller marks such an endpoint with the pod's own waypoint (Endpoint.waypoint),
// through which every in-cluster caller reaches it. The gateway must read the same mark: Istio's
// east-west gateway carries callers to a Service, which its waypoint serves, never to a pod of the
// caller's choosing (https://istio.io/latest/docs/ambient/usage/waypoint/ "use-waypoint-namespace",
// ambient multi-network). Without it the tenant's Service (no waypoint) opened the pod to every
// remote peer, and one bound to the tenant's own waypoint added that waypoint's identity. Only the
// pod's own namespace's Services export it (lib/model/federation.ts exportedPodsOf): a pod only a
// tenant's Service lists is not exported at all (403, not-service-port).
test('a tenant\'s Service listing another namespace\'s pod behind its own waypoint (Endpoint.waypoint) opens no way around that waypoint through the gateway: only the pod\'s waypoint is carried; a remote client and the tenant\'s waypoint are refused (403, behind-waypoint), counted and named; a pod only a tenant\'s Service lists is not exported (403, not-service-port)', async (t) => {
  const TENANT_WP = id('tenant', 'waypoint');
  const pod = (ip: string): Endpoint => ({ ...ep(ip, true), waypoint: { name: 'waypoint', namespace: 'demo' } });
  const tenantSvc = (name: string, extra: Partial<Service> = {}): Service => ({ ...svc, name, namespace: 'tenant', hostname: `${name}.tenant.svc.cluster.local`, vips: [], endpoints: [pod('10.78.2.5')], ...extra });
  const ctrlTls = await creds(c2, CTRL);
  const fed = new Federation({ cluster: 'cluster2', network: 'network2', listen: { host: '127.0.0.1', port: 0 }, remotes: [], tls: () => ctrlTls, mayRead: (x) => x === CTRL || x === GW_ID, isController: (x) => x === CTRL, log: silentLogger });
  fed.merge({
    ...emptyMeshModel(),
    services: new Map([
      // back's own Service, behind back's waypoint.
      ['demo/back', { ...guarded, name: 'back', hostname: 'back.demo.svc.cluster.local', endpoints: [ep('10.78.2.5', true)] }],
      // The tenant's: one without a waypoint, one bound to its own waypoint; both list back's pod.
      ['tenant/alias', tenantSvc('alias')],
      ['tenant/bound', tenantSvc('bound', { waypoint: { name: 'waypoint', namespace: 'tenant' } })],
      // One listing a pod whose own binding is refused: reached by no one.
      ['tenant/refused', tenantSvc('refused', { endpoints: [{ ...ep('10.78.2.6', true), waypoint: { name: 'waypoint', namespace: 'demo', refused: 'NamespaceNotAllowed' } }] })],
    ]),
    waypoints: new Map([
      ['demo/waypoint', { name: 'waypoint', namespace: 'demo', address: '127.0.0.1', port: wpPort, spiffeId: WAYPOINT2, ready: true }],
      ['tenant/waypoint', { name: 'waypoint', namespace: 'tenant', address: '127.0.0.2', port: wpPort, spiffeId: TENANT_WP, ready: true }],
    ]),
  });
  await fed.start();
  t.after(() => fed.stop());
  const lines: string[] = [];
  const reg = new Registry();
  const gw = new EastWestGateway({ tls: await creds(c2, GW_ID), trustDomains: [TD], controllerUrl: `https://127.0.0.1:${fed.port}`, controllerId: CTRL, agentPort, pollMs: 60_000, log: jsonLogger('eastwest', 'info', (l) => lines.push(l)), registry: reg });
  const port = await gw.listen(0, '127.0.0.1');
  t.after(() => gw.close());
  const via = async (as: string, target: string) => {
    const pool = new HbonePool();
    pools.push(pool);
    return pool.connect({ sourceKey: as, tls: await creds(c1, as), dest: { host: '127.0.0.1', port }, target, expectPeer: GW_ID, timeoutMs: 5_000 });
  };
  const behind = (ip: string) => (e: Error) => e instanceof HboneRefusedError && e.status === 403 && new RegExp(`${ip.replaceAll('.', '\\.')} is an endpoint of .*behind waypoint demo/waypoint of this cluster`).test(e.message);
  await assert.rejects(via(CLIENT, '10.78.2.5:8080'), behind('10.78.2.5'), 'a remote client, through the tenant\'s Service without a waypoint');
  await assert.rejects(via(TENANT_WP, '10.78.2.5:8080'), behind('10.78.2.5'), 'the tenant\'s own waypoint, which may not speak for back\'s pod');
  const notExported = (e: Error) => e instanceof HboneRefusedError && e.status === 403 && /10\.78\.2\.6:8080: no Service of this cluster sends to port 8080/.test(e.message);
  await assert.rejects(via(CLIENT, '10.78.2.6:8080'), notExported, 'a pod only a tenant\'s Service lists (its binding refused) is not exported');
  await assert.rejects(via(WAYPOINT2, '10.78.2.6:8080'), notExported);
  assert.match(await reg.metrics(), /^weft_eastwest_refused_total\{reason="behind-waypoint"\} 2$/m);
  assert.match(await reg.metrics(), /^weft_eastwest_refused_total\{reason="not-service-port"\} 2$/m);
  const named = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.reason === 'behind-waypoint');
  assert.ok(named.some((l) => l.peer === TENANT_WP && l.authority === '10.78.2.5:8080' && /endpoint of demo\/back, behind waypoint demo\/waypoint/.test(String(l.detail))), JSON.stringify(named));
  // The pod's own waypoint (or its namesake in another cluster) is carried.
  await via(WAYPOINT2, '10.78.2.5:8080');
});

// An address spelt another way must not name an endpoint the gateway would carry (RFC 3986 3.2.2:
// an IPv4 literal is dotted-decimal; HBONE targets are IP literals, never names).
test('the gateway is no open proxy under another spelling: octal, short or IPv4-mapped forms of an endpoint, a trailing dot, a name, loopback and the gateway\'s own port are refused, each counted', async (t) => {
  const before = await registry.metrics();
  const count = (m: string, reason: string) => Number(new RegExp(`^weft_eastwest_refused_total\\{reason="${reason}"\\} (\\d+)$`, 'm').exec(m)?.[1] ?? 0);
  const spellings = ['010.078.001.001:8080', '10.78.257:8080', '[::ffff:10.78.1.1]:8080', '[::ffff:a4e:101]:8080', '10.78.1.1.:8080', 'echo.demo.svc.cluster.local:80', 'localhost:15000', '127.0.0.1:15000', `127.0.0.1:${gwPort}`, '0.0.0.0:8080'];
  // A raw HTTP/2 session: the pool refuses to send what is not an IP literal.
  const { connect: h2connect } = await import('node:http2');
  const session = h2connect(`https://127.0.0.1:${gwPort}`, { ...(await creds(c1, CLIENT)), checkServerIdentity: () => undefined });
  t.after(() => session.destroy());
  session.on('error', () => {});
  for (const target of spellings) {
    const status = await new Promise<number>((resolve, reject) => {
      const r = session.request({ ':method': 'CONNECT', ':authority': target }, { endStream: false });
      r.on('response', (h) => resolve(Number(h[':status'])));
      r.on('error', reject);
      r.resume();
    });
    assert.ok(status === 400 || status === 403, `${target}: ${status}`);
  }
  const after_ = await registry.metrics();
  const refused = ['bad-authority', 'unknown-endpoint', 'not-hbone-port'].reduce((n, r) => n + count(after_, r) - count(before, r), 0);
  assert.equal(refused, spellings.length, 'each counted once');
});

/**
 * A gateway (cluster2's identity, its log lines and registry kept) reading the export at
 * `federationPort`, dialling agents at `agentPort` with a 20 s connect timeout, listening on
 * loopback, and one HBONE session into it from cluster1's client; `open` sends a CONNECT to
 * 10.78.1.1:8080 and gives its status (0 for a stream error). Closed when the test ends.
 */
async function gatewayBefore(t: TestContext, federationPort: number | undefined, agentPort: number, extra: { maxTunnelsPerUpstream?: number; upstreamReserve?: number; pollMs: number }) {
  const { connect: h2connect } = await import('node:http2');
  const lines: string[] = [];
  const reg = new Registry();
  const gw = new EastWestGateway({ tls: await creds(c2, GW_ID), trustDomains: [TD], controllerUrl: `https://127.0.0.1:${federationPort}`, controllerId: CTRL, agentPort, connectTimeoutMs: 20_000, log: jsonLogger('eastwest', 'info', (l) => lines.push(l)), registry: reg, ...extra });
  const port = await gw.listen(0, '127.0.0.1');
  t.after(() => gw.close());
  const session = h2connect(`https://127.0.0.1:${port}`, { ...(await creds(c1, CLIENT)), checkServerIdentity: () => undefined });
  t.after(() => session.destroy());
  session.on('error', () => {});
  const open = () => new Promise<number>((resolve) => {
    const r = session.request({ ':method': 'CONNECT', ':authority': '10.78.1.1:8080' }, { endStream: false });
    r.on('response', (h) => resolve(Number(h[':status'])));
    r.on('error', () => resolve(0));
  });
  return { gw, port, lines, reg, session, open };
}

/**
 * An "agent" in a child process listening on loopback with the smallest accept queue (listen(0)):
 * one connect completes into the queue, later SYNs wait. `then` is Python run after it prints its
 * port, with the socket as `s` (it decides when, if ever, to accept). Killed when the test ends.
 */
async function backloggedAgent(t: TestContext, then: string): Promise<{ sink: import('node:child_process').ChildProcess; port: number }> {
  const { spawn } = await import('node:child_process');
  const sink = spawn('python3', ['-c', `import socket,sys\ns=socket.socket();s.bind(("127.0.0.1",0));s.listen(0);print(s.getsockname()[1],flush=True)\n${then}`], { stdio: ['pipe', 'pipe', 'inherit'] });
  t.after(() => sink.kill());
  const port = await new Promise<number>((resolve, reject) => {
    sink.stdout!.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
    sink.once('error', reject);
  });
  return { sink, port };
}

// A node agent (or waypoint) that does not answer must not let callers pile up sockets at the
// gateway, each held for the connect timeout: a connect waiting holds its place among the tunnels
// to that upstream (maxTunnelsPerUpstream), past which a CONNECT is refused at once (503), as the
// agent bounds connects to a pod (Envoy's circuit breaker max_pending_requests).
test('connects waiting for one upstream are bounded by the tunnels to it: past maxTunnelsPerUpstream, those waiting included, a CONNECT is refused at once (503 too-many-to-upstream), counted and named; the gateway stays open to the rest', async (t) => {
  // An "agent" that listens and never accepts, with the smallest queue: one connect completes into
  // the queue, the SYNs after it are dropped (their connects wait).
  const { port: sinkPort } = await backloggedAgent(t, 'sys.stdin.read()');
  const { lines, reg, open } = await gatewayBefore(t, federation.port, sinkPort, { maxTunnelsPerUpstream: 2, upstreamReserve: 0, pollMs: 60_000 });
  const answers: number[] = [];
  const started = performance.now();
  for (let i = 0; i < 5; i++) void open().then((s) => answers.push(s));
  // Two wait at most (the one the queue takes completes, 200); the others are refused at once.
  const overloaded = async () => Number(/^weft_eastwest_refused_total\{reason="too-many-to-upstream"\} (\d+)$/m.exec(await reg.metrics())?.[1] ?? 0);
  await until('the connects past the bound are refused at once, each counted', async () => answers.length >= 3 && (await overloaded()) === answers.filter((s) => s === 503).length, 10_000);
  assert.ok(performance.now() - started < 10_000, 'refused long before the 20 s connect timeout');
  assert.ok(answers.filter((s) => s === 503).length >= 2, `${answers}`);
  assert.ok(answers.filter((s) => s === 200).length <= 1, `only the connect the queue took completes: ${answers}`);
  const line = lines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.reason === 'too-many-to-upstream');
  assert.match(String(line?.detail), /the gateway holds 2 tunnels to the node agent of 10\.78\.1\.1 \(127\.0\.0\.1:\d+\) from all callers \(it allows at most 2 to one upstream/);
  // Another upstream is not held back by this one's queue.
  await assert.rejects(outer(CLIENT, '10.78.0.254:8080'), (e: Error) => e instanceof HboneRefusedError && e.status === 403);
});

/**
 * An east-west gateway of cluster2 run as its main does (runEastWest) on `host`, with its certificate
 * files in a scratch directory; `stop` ends it and removes them.
 */
async function startEdgeGateway(host: string, extra: Partial<Parameters<typeof import('../../eastwest/src/main.ts')['runEastWest']>[0]> = {}) {
  const { mkdtempSync, rmSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { runEastWest } = await import('../../eastwest/src/main.ts');
  const dir = mkdtempSync(join(tmpdir(), 'weft-ew-edge-'));
  const gwTls = await creds(c2, GW_ID);
  writeFileSync(join(dir, 'cert.pem'), gwTls.cert);
  writeFileSync(join(dir, 'key.pem'), gwTls.key);
  writeFileSync(join(dir, 'root.pem'), gwTls.ca.join(''));
  const running = await runEastWest({
    host, port: 0, identity: { kind: 'static', certFile: join(dir, 'cert.pem'), keyFile: join(dir, 'key.pem') }, trustBundleFile: join(dir, 'root.pem'),
    controllerUrl: `https://127.0.0.1:${federation.port}`, controllerId: CTRL, trustDomain: TD, trustDomainAliases: [], logLevel: 'error', ...extra,
  });
  return {
    stop: async () => {
      await running.stop('SIGTERM');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** One GET on a fresh connection from `localAddress`: its status and body. */
async function getFrom(host: string, port: number, path: string, localAddress: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  const { get } = await import('node:http');
  return new Promise((resolve, reject) => {
    get({ host, port, path, localAddress, agent: false, headers }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject);
  });
}

// The gateway's metrics (15020) and readiness (15021) listeners are on the network's edge like its
// HBONE port: Node's defaults would let one source hold any number of connections and a client
// that never finishes its headers hold one 60 s (a request 300 s).
test('the gateway\'s metrics and readiness listeners bound their connections: a client that never finishes its headers is cut at the headers timeout, one source holds at most maxConnectionsPerSource; each counted (weft_eastwest_listener_refused_total) and logged; a scrape from elsewhere is served', async () => {
  const { DEFAULT_STATUS_LISTENER_LIMITS } = await import('../../lib/listener-limits.ts');
  const host = '127.0.0.71';
  const lines: string[] = [];
  const gateway = await startEdgeGateway(host, {
    logLevel: 'info', logger: jsonLogger('eastwest', 'info', (l) => lines.push(l)), statusLimits: { headersTimeoutMs: 300, requestTimeoutMs: 600 },
  });
  const held: net.Socket[] = [];
  const open = (port: number) => new Promise<{ socket: net.Socket; closed: Promise<void> }>((resolve, reject) => {
    const socket = net.connect({ port, host, localAddress: '127.0.0.1' });
    held.push(socket);
    const closed = new Promise<void>((r) => socket.once('close', () => r()));
    socket.on('error', () => {});
    socket.once('connect', () => resolve({ socket, closed }));
    socket.once('error', reject);
  });
  const within = <T>(p: Promise<T>, ms: number, what: string) => Promise.race([p, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms).unref())]);
  const count = async (listener: string, reason: string) => Number(new RegExp(`weft_eastwest_listener_refused_total\\{listener="${listener}",reason="${reason}"\\} (\\d+)`).exec(await scrape())?.[1] ?? 0);
  // From another source address than the attacker's, a new connection each time.
  const scrape = async () => (await getFrom(host, 15020, '/metrics', '127.0.0.2')).body;
  try {
    // A slowloris on the readiness port: headers a line at a time, never finished.
    const slow = await open(15021);
    slow.socket.write('GET /healthz/ready HTTP/1.1\r\nHost: x\r\n');
    const drip = setInterval(() => !slow.socket.destroyed && slow.socket.write('X-Slow: a\r\n'), 50);
    try {
      await within(slow.closed, 3_000, 'the slowloris cut');
    } finally {
      clearInterval(drip);
    }
    await until('the cut counted', async () => await count('readiness', 'request-timeout') >= 1, 3_000);
    // Silent connections from one source on the metrics port: past the cap, closed at accept.
    const max = DEFAULT_STATUS_LISTENER_LIMITS.maxConnectionsPerSource;
    for (let i = 0; i < max; i++) await open(15020);
    const over = await open(15020);
    await within(over.closed, 3_000, `connection ${max + 1} from one source closed`);
    assert.match(await scrape(), /weft_eastwest_listener_refused_total\{listener="metrics",reason="too-many-connections"\} [1-9]/, 'a scrape from another source address is served');
    const logged = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.msg === 'status listener refused a connection');
    assert.ok(logged.some((l) => l.listener === 'readiness' && l.reason === 'request-timeout' && l.address === '127.0.0.1'));
    assert.ok(logged.some((l) => l.listener === 'metrics' && l.reason === 'too-many-connections' && l.address === '127.0.0.1'));
  } finally {
    for (const s of held) s.destroy();
    await gateway.stop();
  }
});

// The gateway's 15020 and 15021 face other networks (docs/SECURITY.md): Istio's east-west gateway
// exposes its 15021 status port and no admin path there
// (https://istio.io/latest/docs/ops/deployment/application-requirements/#ports-used-by-istio: 15000
// is the proxy's admin port on localhost). What they answer must name no identity, address or
// endpoint of this cluster: counts only, and no /debug path at all (it has no admin port to relay).
test('the gateway\'s metrics and readiness ports, reached from another network, answer Prometheus counts and readiness only: every /debug or admin path is 404, and no identity, address or endpoint of this cluster is named', async () => {
  const host = '127.0.0.72';
  const gateway = await startEdgeGateway(host);
  // From an address of another network's choosing, a connection each.
  const ask = (port: number, path: string) => getFrom(host, port, path, '127.0.0.3', { 'weft-debug-token': 'x', 'weft-debug-grant': 'x' });
  try {
    await until('the gateway knows this cluster\'s endpoints', async () => (await ask(15021, '/healthz/ready')).status === 200, 5_000);
    for (const path of ['/debug/config_dump', '/debug/certs', '/debug/flows', '/debug/clients', '/debug/federation', '/debug/waypoint-grant?waypoint=shop%2Fwaypoint', '/config_dump', '/certs', '/stats', '/flows', '/']) {
      for (const port of [15020, 15021]) {
        const r = await ask(port, path);
        assert.ok(r.status === 404 || (port === 15021 && r.status === 503), `${port}${path}: ${r.status}`);
        assert.doesNotMatch(r.body, /spiffe:|\d+\.\d+\.\d+\.\d+|BEGIN/, `${port}${path} names nothing`);
      }
    }
    assert.equal((await ask(15021, '/healthz/ready')).body, 'ready\n');
    assert.deepEqual(await ask(15021, '/healthz/live').then((r) => [r.status, r.body]), [200, 'live\n'], 'the liveness probe\'s path, as every part serves it');
    const metrics = await ask(15020, '/metrics');
    assert.equal(metrics.status, 200);
    const families = [...new Set(metrics.body.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => /^[a-z_:]+/.exec(l)![0]))];
    assert.ok(families.length > 0 && families.every((f) => f.startsWith('weft_eastwest_')), families.join(', '));
    assert.doesNotMatch(metrics.body, /spiffe:|\d+\.\d+\.\d+\.\d+/, 'no identity or address in a label');
    // Label values are a fixed vocabulary (reasons, directions, listeners), never a caller's or an endpoint's.
    for (const [, label, value] of metrics.body.matchAll(/([a-z_]+)="([^"]*)"/g)) assert.match(`${label}=${value}`, /^(reason|direction|listener)=[a-z-]+$/);
  } finally {
    await gateway.stop();
  }
});

/**
 * A gateway whose node agents are one echo sink (the gateway dials it for every node), with `bound`
 * among its options; `sessionAs` opens an HTTP/2 session to it as a caller of cluster1 and `open` a
 * CONNECT to 10.78.1.1:8080 on one, resolving with the status (0 on a reset) and the stream.
 */
async function tunnelGateway(t: TestContext, bound: Partial<ConstructorParameters<typeof EastWestGateway>[0]>) {
  const { connect: h2connect } = await import('node:http2');
  const sinkSockets = new Set<net.Socket>();
  const sink = net.createServer((s) => {
    sinkSockets.add(s);
    s.on('close', () => sinkSockets.delete(s));
    s.pipe(s);
  });
  await new Promise<void>((r) => sink.listen(0, '127.0.0.1', () => r()));
  t.after(() => {
    for (const s of sinkSockets) s.destroy();
    sink.close();
  });
  const lines: string[] = [];
  const reg = new Registry();
  const gw = new EastWestGateway({ tls: await creds(c2, GW_ID), trustDomains: [TD], controllerUrl: `https://127.0.0.1:${federation.port}`, controllerId: CTRL, agentPort: (sink.address() as net.AddressInfo).port, pollMs: 60_000, ...bound, log: jsonLogger('eastwest', 'info', (l) => lines.push(l)), registry: reg });
  const port = await gw.listen(0, '127.0.0.1');
  t.after(() => gw.close());
  const sessionAs = async (as: string) => {
    const session = h2connect(`https://127.0.0.1:${port}`, { ...(await creds(c1, as)), checkServerIdentity: () => undefined });
    t.after(() => session.destroy());
    session.on('error', () => {});
    return session;
  };
  const open = (session: Awaited<ReturnType<typeof sessionAs>>, authority = '10.78.1.1:8080') => new Promise<{ status: number; stream: ReturnType<typeof session.request> }>((resolve) => {
    const stream = session.request({ ':method': 'CONNECT', ':authority': authority }, { endStream: false });
    stream.on('response', (h) => resolve({ status: Number(h[':status']), stream }));
    stream.on('error', () => resolve({ status: 0, stream }));
  });
  return { sessionAs, open, reg, lines };
}

// A caller pools its inner sessions, one outer tunnel per destination agent or waypoint and
// identity; a workload holding any mesh certificate that opens outer tunnels without end would
// have the gateway hold an upstream socket for each (1,000 streams on each of 1,024 sessions a
// source), for every other caller's cost.
test('tunnels one caller (identity and address) holds through the gateway are bounded: past maxTunnelsPerPeer a CONNECT is refused at once (503 too-many-tunnels), counted and named; another caller is served, and a tunnel closed frees its place', async (t) => {
  const { sessionAs, open, reg, lines } = await tunnelGateway(t, { maxTunnelsPerPeer: 3 });
  const client = await sessionAs(CLIENT);
  const held = [await open(client), await open(client), await open(client)];
  assert.deepEqual(held.map((x) => x.status), [200, 200, 200]);
  // From a second session of the same caller too: the bound is the caller's, not the session's.
  const again = await sessionAs(CLIENT);
  assert.equal((await open(again)).status, 503);
  assert.match(await reg.metrics(), /^weft_eastwest_refused_total\{reason="too-many-tunnels"\} 1$/m);
  const line = lines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.reason === 'too-many-tunnels');
  assert.match(String(line?.detail), new RegExp(`${CLIENT.replace(/[/.]/g, '\\$&')} from 127\\.0\\.0\\.1 holds 3 tunnels here \\(it allows 3 a peer\\)`));
  assert.equal((await open(await sessionAs(id('demo', 'other')))).status, 200, 'another caller is served');
  held[0]!.stream.close();
  await until('a closed tunnel frees its place', async () => (await open(again)).status === 200, 5_000, { intervalMs: 50 });
});

/**
 * Opens tunnels as each of `ids` in turn, one at a time round the list, until a whole round is
 * refused: resolves with the tunnels open and the statuses of the refusals.
 */
async function saturate(sessionAs: (as: string) => Promise<import('node:http2').ClientHttp2Session>, open: (s: import('node:http2').ClientHttp2Session, authority?: string) => Promise<{ status: number; stream: import('node:http2').ClientHttp2Stream }>, ids: string[], authority?: string) {
  const sessions = await Promise.all(ids.map((x) => sessionAs(x)));
  const held: Array<{ as: string; stream: import('node:http2').ClientHttp2Stream }> = [];
  const refused: number[] = [];
  for (let round = 0; round < 1000; round++) {
    let served = 0;
    for (const [i, session] of sessions.entries()) {
      const r = await open(session, authority);
      if (r.status === 200) { served++; held.push({ as: ids[i]!, stream: r.stream }); } else refused.push(r.status);
    }
    if (served === 0) return { held, refused };
  }
  throw new Error('never saturated');
}

// Every tunnel the gateway carries to one upstream (a node's agent, a waypoint replica) comes from
// its one address, so the gateway holds at most maxTunnelsPerUpstream there. A fixed sixteenth of
// that per caller let sixteen identities of one remote tenant (ServiceAccounts are a namespace's to
// mint) take it all, and every other caller was refused: the bound is now shared among the tenants
// (trust domain and namespace, Istio's namespace sameness) calling that upstream, a tenant over its
// fair share admitted only while more than the reserve is left, and open tunnels never cut for it
// (Envoy's circuit breakers refuse new connections; they do not close established ones).
test('sixteen identities of one remote tenant cannot lock other callers out of an upstream: they saturate it, a caller of another namespace still gets tunnels; the tenant, over its fair share, is refused (503 over-fair-share), counted and named; a tunnel closing goes to the tenant under its share', async (t) => {
  const { sessionAs, open, reg, lines } = await tunnelGateway(t, { maxTunnelsPerUpstream: 32, upstreamReserve: 2 });
  const hostile = Array.from({ length: 16 }, (_, i) => id('tenant', `sa${i}`));
  const taken = await saturate(sessionAs, open, hostile);
  assert.equal(taken.held.length, 30, 'the tenant alone takes all but the reserve');
  const client = await sessionAs(CLIENT);
  assert.equal((await open(client)).status, 200, 'a caller of another tenant gets a place of the reserve');
  const metric = async (reason: string) => Number(new RegExp(`^weft_eastwest_refused_total\\{reason="${reason}"\\} (\\d+)$`, 'm').exec(await reg.metrics())?.[1] ?? 0);
  assert.equal(await metric('over-fair-share'), taken.refused.length, 'each of the tenant\'s refusals counted as over its share');
  // The last place is still a newcomer's.
  assert.equal((await open(await sessionAs(id('third', 'default')))).status, 200, 'a third tenant gets the last');
  assert.ok(taken.refused.every((x) => x === 503), `${taken.refused}`);
  const line = lines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.reason === 'over-fair-share');
  assert.match(String(line?.detail), /^cluster\.local\/ns\/tenant holds 30 tunnels to the node agent of 10\.78\.1\.1 \(127\.0\.0\.1:\d+\), at or above its fair share there \(16: 32 among the 1 tenants/);
  assert.match(String(line?.peer), /^spiffe:\/\/cluster\.local\/ns\/tenant\/sa/);
  // Full now: the next is refused whoever asks, counted as the upstream's bound.
  assert.equal((await open(client)).status, 503);
  assert.equal(await metric('too-many-to-upstream'), 1);
  // Two tunnels of the tenant's close: a place goes to the caller under its share (the other is
  // kept for a newcomer), not back to the tenant.
  taken.held[0]!.stream.close();
  taken.held[1]!.stream.close();
  await until('the freed place is the caller\'s', async () => (await open(client)).status === 200, 5_000, { intervalMs: 50 });
  assert.equal((await open(await sessionAs(hostile[0]!))).status, 503);
});

// The reserve is kept for the tenant not calling an upstream yet: a tenant under its fair share that
// took all of it (the second tenant at an upstream the first filled) left every later one refused
// for as long as the two held their tunnels, which a pooled session and a gateway that never cuts
// an open tunnel (Envoy's circuit breakers,
// https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/circuit_breaking) made
// forever. A tenant under its share takes of the reserve only while more than a newcomer's part of
// it is left; a tenant with none there takes any place free.
test('two tenants cannot take the reserve between them: the first fills an upstream to its limit, the second takes what it may and is refused the newcomer\'s part (503 over-fair-share, counted once and named), and a third tenant still gets a tunnel', async (t) => {
  const { sessionAs, open, reg, lines } = await tunnelGateway(t, { maxTunnelsPerUpstream: 32, upstreamReserve: 4 });
  const a = await saturate(sessionAs, open, [id('tenant-a', 'default')]);
  assert.equal(a.held.length, 28, 'the first tenant alone takes all but the reserve');
  const metric = async (reason: string) => Number(new RegExp(`^weft_eastwest_refused_total\\{reason="${reason}"\\} (\\d+)$`, 'm').exec(await reg.metrics())?.[1] ?? 0);
  const before = await metric('over-fair-share');
  const b = await saturate(sessionAs, open, [id('tenant-b', 'default')]);
  assert.ok(b.held.length >= 1 && b.held.length < 4, `the second tenant takes of the reserve, not all of it (${b.held.length})`);
  assert.deepEqual(b.refused, [503]);
  assert.equal(await metric('over-fair-share'), before + 1, 'its refusal counted once');
  const line = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.reason === 'over-fair-share' && String(l.peer).includes('/ns/tenant-b/'));
  assert.equal(line.length, 1);
  assert.match(String(line[0]!.detail), /^cluster\.local\/ns\/tenant-b holds \d+ tunnels to the node agent of 10\.78\.1\.1 .*kept for a tenant not calling it yet/);
  assert.equal((await open(await sessionAs(id('tenant-c', 'default')))).status, 200, 'a third tenant still gets a tunnel');
  assert.equal(await metric('too-many-to-upstream'), 0, 'nobody was refused for a full upstream');
});

test('sixteen remote tenants of one identity each cannot lock a seventeenth out of an upstream either: each is held to its fair share with a place left for one more, and the seventeenth is served', async (t) => {
  const { sessionAs, open, reg } = await tunnelGateway(t, { maxTunnelsPerUpstream: 32, upstreamReserve: 2 });
  const hostile = Array.from({ length: 16 }, (_, i) => id(`tenant${i}`, 'default'));
  const taken = await saturate(sessionAs, open, hostile);
  assert.ok(taken.held.length < 32, `${taken.held.length} held`);
  assert.equal((await open(await sessionAs(CLIENT))).status, 200, 'the seventeenth tenant is served');
  assert.ok(/^weft_eastwest_refused_total\{reason="over-fair-share"\} [1-9]/m.test(await reg.metrics()));
});

// A waypoint replica's HBONE server takes from the gateway's address what it takes from any
// source (1,024, waypoint/src/main.ts), as a node's agent does: its bound is shared alike.
test('the tunnels to one waypoint replica are shared among tenants as to a node: a tenant over its fair share is refused (503 over-fair-share), counted, and another tenant is served', async (t) => {
  const { sessionAs, open, reg } = await tunnelGateway(t, { maxTunnelsPerUpstream: 8, upstreamReserve: 2 });
  const at = `127.0.0.1:${wpPort}`;
  const taken = await saturate(sessionAs, open, [id('tenant', 'a'), id('tenant', 'b')], at);
  assert.equal(taken.held.length, 6);
  assert.match(await reg.metrics(), /^weft_eastwest_refused_total\{reason="over-fair-share"\} [1-9]/m);
  assert.equal((await open(await sessionAs(CLIENT), at)).status, 200, 'another tenant is served');
});

// All of the gateway's tunnels to one upstream come from its one address, which the upstream lets
// hold DEFAULT_MAX_CONNECTIONS_PER_SOURCE (1,024): sixteen callers at 64 each filled it, and the
// upstream then refused every other caller's tunnel (closed before TLS, counted there against the
// gateway's address). The gateway holds all of them below that, each caller a sixteenth.
test('tunnels all callers hold to one upstream are bounded below the upstream\'s per-source cap: past maxTunnelsPerUpstream a CONNECT to it is refused at once by the gateway (503 too-many-to-upstream), counted once and named; another upstream is served', async (t) => {
  const { DEFAULT_MAX_CONNECTIONS_PER_SOURCE } = await import('../../lib/hbone/server.ts');
  const { DEFAULT_MAX_TUNNELS_PER_UPSTREAM } = await import('../../eastwest/src/gateway.ts');
  assert.ok(DEFAULT_MAX_TUNNELS_PER_UPSTREAM < DEFAULT_MAX_CONNECTIONS_PER_SOURCE, 'the upstream never refuses the gateway\'s address');
  const { sessionAs, open, reg, lines } = await tunnelGateway(t, { maxTunnelsPerUpstream: 3 });
  // Three tenants, each under its fair share.
  const a = await sessionAs(CLIENT);
  const b = await sessionAs(id('other', 'default'));
  const held = [await open(a), await open(b), await open(await sessionAs(id('third', 'default')))];
  assert.deepEqual(held.map((x) => x.status), [200, 200, 200]);
  const c = await sessionAs(id('fourth', 'default'));
  assert.equal((await open(c)).status, 503);
  assert.match(await reg.metrics(), /^weft_eastwest_refused_total\{reason="too-many-to-upstream"\} 1$/m);
  const refusedLines = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.reason === 'too-many-to-upstream');
  assert.equal(refusedLines.length, 1);
  assert.match(String(refusedLines[0]!.detail), /the gateway holds 3 tunnels to the node agent of 10\.78\.1\.1 .*at most 3 to one upstream/);
  assert.equal((await open(c, `127.0.0.1:${wpPort}`)).status, 200, 'another upstream is served');
  held[0]!.stream.close();
  await until('a closed tunnel frees its place', async () => (await open(c)).status === 200, 5_000, { intervalMs: 50 });
});

/**
 * cluster2's own export served on loopback for the test: demo/echo (svc) and its namespace's
 * waypoint (ready, WAYPOINT2); `base` is that model, to merge changed copies of. Stopped when the test ends.
 */
async function echoWithWaypointExport(t: TestContext): Promise<{ fed: Federation; base: MeshModel }> {
  const ctrlTls = await creds(c2, CTRL);
  const fed = new Federation({ cluster: 'cluster2', network: 'network2', listen: { host: '127.0.0.1', port: 0 }, remotes: [], tls: () => ctrlTls, mayRead: (x) => x === CTRL || x === GW_ID, isController: (x) => x === CTRL, log: silentLogger });
  const wp = { name: 'waypoint', namespace: 'demo', address: '127.0.0.1', port: wpPort, spiffeId: WAYPOINT2, ready: true };
  const base: MeshModel = { ...emptyMeshModel(), services: new Map([['demo/echo', svc]]), waypoints: new Map([['demo/waypoint', wp]]) };
  fed.merge(base);
  await fed.start();
  t.after(() => fed.stop());
  return { fed, base };
}

// Istio's ztunnel judges its open connections again when the policies change and closes those no
// longer allowed (istio/ztunnel src/proxy/connection_manager.rs); the gateway's rules are the
// exported Services and their waypoints (https://istio.io/latest/docs/ambient/install/multicluster/:
// the east-west gateway carries callers to exported Services). A tunnel opened while a Service was
// exported, or before its pod went behind a waypoint, kept flowing after either changed.
test('tunnels open through the gateway are judged again at every new export: one it would no longer carry (now behind a waypoint, its Service withdrawn) is closed, counted under its refusal reason and named; one still allowed stays', async (t) => {
  const { fed, base } = await echoWithWaypointExport(t);
  const { sessionAs, open, reg, lines } = await tunnelGateway(t, { controllerUrl: `https://127.0.0.1:${fed.port}`, pollMs: 50 });
  const client = await open(await sessionAs(CLIENT));
  const fromWaypoint = await open(await sessionAs(WAYPOINT2));
  assert.deepEqual([client.status, fromWaypoint.status], [200, 200]);
  const closed = (s: typeof client, what: string) => until(what, () => s.stream.closed, 5_000);
  const refusedBy = async (reason: string) => Number(new RegExp(`^weft_eastwest_refused_total\\{reason="${reason}"\\} (\\d+)$`, 'm').exec(await reg.metrics())?.[1] ?? 0);
  const closedLines = () => lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.msg === 'open tunnel closed: the gateway no longer carries it');
  // echo goes behind demo/waypoint: only the waypoint's identity is carried there now.
  fed.merge({ ...base, services: new Map([['demo/echo', { ...svc, waypoint: { name: 'waypoint', namespace: 'demo' } }]]) });
  await closed(client, 'the caller\'s tunnel is closed');
  assert.equal(await refusedBy('behind-waypoint'), 1);
  assert.equal(fromWaypoint.stream.closed, false, 'the waypoint\'s own tunnel stays');
  await until('the closure is named', () => closedLines().length === 1, 5_000);
  assert.equal(closedLines()[0]!.peer, CLIENT);
  assert.equal(closedLines()[0]!.authority, '10.78.1.1:8080');
  assert.match(String(closedLines()[0]!.detail), /10\.78\.1\.1 is an endpoint of demo\/echo, behind waypoint demo\/waypoint/);
  // The Service is withdrawn: its endpoint is no longer the gateway's to carry anyone to.
  fed.merge({ ...base, services: new Map() });
  await closed(fromWaypoint, 'the waypoint\'s tunnel is closed');
  assert.equal(await refusedBy('unknown-endpoint'), 1);
  await until('named', () => closedLines().length === 2, 5_000);
  assert.equal(closedLines()[1]!.peer, WAYPOINT2);
});

// A tunnel still connecting to its upstream when a new export arrives is not yet among the open
// ones #rejudge judges: it is judged by the new export once connected, and refused if it no longer
// may pass (the same rules and reasons as a CONNECT).
test('a tunnel still connecting when a new export arrives is judged by it once connected: one the gateway no longer carries is refused (403 behind-waypoint), counted and named, not opened', async (t) => {
  // An "agent" whose queue holds one connection; each line on its stdin accepts one, which lets the next SYN in.
  const { sink, port: sinkPort } = await backloggedAgent(t, 'held=[]\nfor _ in iter(sys.stdin.readline, ""): held.append(s.accept()[0])');
  const { fed, base } = await echoWithWaypointExport(t);
  const { lines, reg, open } = await gatewayBefore(t, fed.port, sinkPort, { pollMs: 50 });
  const behind = async () => Number(/^weft_eastwest_refused_total\{reason="behind-waypoint"\} (\d+)$/m.exec(await reg.metrics())?.[1] ?? 0);
  // The first fills the sink's queue; the second's connect waits for a place.
  assert.equal(await open(), 200);
  let second: number | undefined;
  void open().then((x) => { second = x; });
  // echo goes behind demo/waypoint; the open tunnel is closed by it (counted), which says the gateway read it.
  fed.merge({ ...base, services: new Map([['demo/echo', { ...svc, waypoint: { name: 'waypoint', namespace: 'demo' } }]]) });
  await until('the new export is applied', async () => (await behind()) === 1, 5_000);
  assert.equal(second, undefined, 'still connecting');
  // A place in the sink's queue: the waiting connect completes, under the new export.
  sink.stdin!.write('\n');
  await until('the waiting connect is answered', () => second !== undefined, 10_000);
  assert.equal(second, 403);
  assert.equal(await behind(), 2);
  const refused = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.msg === 'tunnel refused' && l.reason === 'behind-waypoint');
  assert.equal(refused.length, 1);
  assert.equal(refused[0]!.peer, CLIENT);
});

// The gateway reads its controller's export as the controllers read each other's
// (lib/federation-read.ts): a read that never ends, or never stops growing, would have held the
// gateway's start (it reads once before it listens) and every refresh after it.
test('the gateway\'s read of its controller\'s export is bounded as the controllers\' are: an export answered a byte at a time fails at the read deadline, one past 16 MiB at the bound, each named in the log; the gateway starts regardless and refuses with no-config until a read succeeds', async (t) => {
  const { createServer: httpsServer } = await import('node:https');
  const { MAX_EXPORT_BYTES } = await import('../../lib/model/federation.ts');
  let mode: 'drip' | 'huge' = 'drip';
  const ctrl = httpsServer({ ...(await creds(c2, CTRL)) }, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    if (mode === 'drip') {
      const timer = setInterval(() => res.write(' '), 100);
      res.on('close', () => clearInterval(timer));
      return;
    }
    const chunk = Buffer.alloc(1 << 20, ' ');
    let sent = 0;
    const more = () => {
      while (sent <= MAX_EXPORT_BYTES + chunk.length && !res.destroyed) {
        sent += chunk.length;
        if (!res.write(chunk)) return void res.once('drain', more);
      }
      res.end();
    };
    more();
  });
  await new Promise<void>((r) => ctrl.listen(0, '127.0.0.1', () => r()));
  t.after(() => {
    ctrl.closeAllConnections();
    ctrl.close();
  });
  const lines: string[] = [];
  const gw = new EastWestGateway({ tls: await creds(c2, GW_ID), trustDomains: [TD], controllerUrl: `https://127.0.0.1:${(ctrl.address() as net.AddressInfo).port}`, controllerId: CTRL, fetchDeadlineMs: 500, pollMs: 200, log: jsonLogger('eastwest', 'info', (l) => lines.push(l)), registry: new Registry() });
  t.after(() => gw.close());
  const started = Date.now();
  const port = await Promise.race([gw.listen(0, '127.0.0.1'), new Promise<never>((_, reject) => setTimeout(() => reject(new Error('the gateway did not start within 5 s')), 5_000).unref())]);
  assert.ok(Date.now() - started < 5_000);
  const errors = () => lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => /controller export not read/.test(String(l.msg))).map((l) => String(l.error));
  assert.ok(errors().some((e) => /no complete export within 500 ms/.test(e)), errors().join('; '));
  const pool = new HbonePool();
  t.after(() => pool.close(0));
  await assert.rejects(pool.connect({ sourceKey: CLIENT, tls: await creds(c1, CLIENT), dest: { host: '127.0.0.1', port }, target: '10.78.1.1:8080', expectPeer: GW_ID, timeoutMs: 5_000 }), (e: Error) => e instanceof HboneRefusedError && e.status === 503 && /not read its cluster's endpoints yet/.test(e.message));
  mode = 'huge';
  await until('an export past the bound fails the read', () => errors().some((e) => new RegExp(`export larger than ${MAX_EXPORT_BYTES} bytes`).test(e)), 10_000);
});

// The gateway reads its controller's export each second, which may be 16 MiB: the controller tags
// each export with an ETag (a SHA-256 of its text, made once per merge) and answers a read sending
// it back in If-None-Match with 304 Not Modified (RFC 9110 13.1.2, 15.4.5), so an unchanged export
// is neither transferred, hashed nor parsed nor judged again. Each 304 is counted
// (weft_federation_export_reads_total{result="unchanged"}); a changed export is read and applied.
test('the gateway reads an unchanged export as a 304 (If-None-Match with its ETag): nothing transferred, parsed or judged again, also after a merge that changes nothing; a changed export is applied', async (t) => {
  const ctrlTls = await creds(c2, CTRL);
  const fedReg = new Registry();
  const fed = new Federation({ cluster: 'cluster2', network: 'network2', listen: { host: '127.0.0.1', port: 0 }, remotes: [], tls: () => ctrlTls, mayRead: (x) => x === CTRL || x === GW_ID, isController: (x) => x === CTRL, log: silentLogger, registry: fedReg });
  const base: MeshModel = { ...emptyMeshModel(), services: new Map([['demo/echo', svc]]) };
  fed.merge(base);
  await fed.start();
  t.after(() => fed.stop());
  const parse = JSON.parse;
  let parsed = 0;
  JSON.parse = ((text: string, ...rest: unknown[]) => {
    if (typeof text === 'string' && text.startsWith('{"cluster":"cluster2"')) parsed++;
    return (parse as (...a: unknown[]) => unknown)(text, ...rest);
  }) as typeof JSON.parse;
  t.after(() => { JSON.parse = parse; });
  const { reg, lines } = await tunnelGateway(t, { controllerUrl: `https://127.0.0.1:${fed.port}`, pollMs: 50 });
  const failedReads = () => lines.filter((l) => l.includes('controller export not read'));
  const reads = async (result: string) => Number(new RegExp(`^weft_federation_export_reads_total\\{result="${result}"\\} (\\d+)$`, 'm').exec(await fedReg.metrics())?.[1] ?? 0);
  const endpoints = async () => Number(/^weft_eastwest_endpoints (\d+)$/m.exec(await reg.metrics())?.[1] ?? -1);
  await until('the export is read and then answered 304', async () => (await reads('unchanged')) >= 3, 10_000);
  assert.equal(await reads('ok'), 1, 'transferred once');
  assert.equal(parsed, 1, 'parsed once');
  assert.equal(await endpoints(), 1);
  assert.deepEqual(failedReads(), [], 'a 304 is a read, not a failure');
  // A merge that leaves the export as it was keeps its ETag.
  fed.merge(base);
  const after = await reads('unchanged');
  await until('still 304 after a merge changing nothing', async () => (await reads('unchanged')) >= after + 2, 10_000);
  assert.deepEqual([await reads('ok'), parsed], [1, 1]);
  // A changed export is transferred and applied.
  fed.merge({ ...base, services: new Map([['demo/echo', { ...svc, endpoints: [...svc.endpoints, ep('10.78.1.2', true)] }]]) });
  await until('the changed export is applied', async () => (await endpoints()) === 2, 10_000);
  assert.deepEqual([await reads('ok'), parsed], [2, 2]);
  assert.deepEqual(failedReads(), [], 'a 304 is a read, not a failure');
});
