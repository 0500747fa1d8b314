// Root CA rotation with the real controller and agents, while a long-lived cross-node connection
// and a stream of new connections run through the mesh. The operator's procedure, one controller
// restart per step (the controller reads its CA files at start):
//   1. trust both: sign with the old root A, publish roots A+B;   wait until every agent trusts 2
//   2. sign with B, still publish A+B;                          wait until every certificate is B's
//   3. retire A: sign with B, publish B only;                   wait until every agent trusts 1
// No connection may fail at any step: established TLS sessions are not re-verified, and new ones
// always meet a peer whose certificate the other side trusts.
// A waypoint (namespace `shop`, with an L7 DENY rule) rotates with them: HTTP requests through it,
// on new and on kept-alive connections, keep getting their answers (200, and 403 from the policy)
// at every step; its certificate ends up issued by B; and after A is retired it still gets new
// config from the controller (a policy written then is enforced).
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { holdInPod, localMeshSuite, until as untilWithin } from './mesh-suite.ts';

/** Every wait here gets 30 s unless it says otherwise, and shows the logs that explain a timeout. */
const until = (what: string, check: () => Promise<boolean>, timeoutMs = 30_000) => untilWithin(what, check, timeoutMs, {
  intervalMs: 200,
  explain: () => `${mesh.logTail('controller.log', 10)}\n${mesh.logTail('agent-node1.log', 10)}\n${mesh.logTail('pod-shop-waypoint-0.log', 10)}`,
});
import { LocalMesh } from '../../cli/local/mesh.ts';
import { getJsonInNetns } from '../../cli/local/netns-http.ts';
import { CertificateAuthority } from '../../lib/identity/index.ts';

const suite = localMeshSuite();
let mesh: LocalMesh;
const stateDir = suite.stateDir;
const VIP = '10.96.0.30';
const SHOP_VIP = '10.96.0.40';
const NODES = ['node1', 'node2'];
const fixture = (name: string) => join(import.meta.dirname, 'fixtures', name);

before(async () => {
  mesh = await suite.create(NODES);
  mesh.writeConfig('10-demo.yaml', [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'lines', namespace: 'demo' }, spec: { clusterIP: VIP, selector: { app: 'lines' }, ports: [{ name: 'tcp', port: 7000, targetPort: 7000 }] } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'shop', labels: { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'waypoint' } } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'shop', namespace: 'shop' }, spec: { clusterIP: SHOP_VIP, selector: { app: 'shop' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
    {
      apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'no-admin', namespace: 'shop' },
      spec: { targetRefs: [{ kind: 'Service', group: '', name: 'shop' }], action: 'DENY', rules: [{ to: [{ operation: { paths: ['/admin*'] } }] }] },
    },
  ]);
  mesh.addWorkload({ node: 'node1', namespace: 'demo', name: 'client' });
  mesh.addWorkload({ node: 'node2', namespace: 'demo', name: 'lines', labels: { app: 'lines' }, command: ['test/e2e/fixtures/line-echo.ts', '--port', '7000'] });
  mesh.addWorkload({ node: 'node1', namespace: 'shop', name: 'buyer' });
  mesh.addWorkload({ node: 'node2', namespace: 'shop', name: 'shop', labels: { app: 'shop' }, command: ['cli/local/apps/echo.ts', '--port', '8080', '--name', 'shop'] });
  mesh.startController();
  await mesh.waitControllerReady();
  // Short-lived workload certificates (renewed every ~5 s), so step 2 does not wait for hours.
  for (const n of NODES) mesh.startAgent(n, { extraArgs: ['--cert-lifetime', '10'] });
  mesh.startWaypoint('node2', 'shop', 'waypoint', { extraArgs: ['--cert-lifetime', '10'] });
  await mesh.waitReady();
  await mesh.waitWaypointReady('shop');
  await mesh.waitWorkloadsEnrolled(['demo/client', 'demo/lines', 'shop/buyer', 'shop/shop']);
  await until('the waypoint serves and enforces its policy', async () => (await curl(`http://${SHOP_VIP}/`)) === '200' && (await curl(`http://${SHOP_VIP}/admin`)) === '403', 20_000);
});

interface CertsView { trustBundle: number; certificates: Array<{ identity: string; serial: string; issuer: string }> }
const certs = (node: string) => mesh.agentAdmin<CertsView>(node, '/certs');
/** The waypoint's admin port (localhost in its pod). */
const waypointAdmin = <T>(path: string) => getJsonInNetns<T>(mesh.waypointReplicas('shop')[0]!.pod.netnsPath, `http://127.0.0.1:15000${path}`);
interface WaypointCerts { identity: string; serial: string; issuer: string; trustBundle: number; roots: string[]; issued: number; state: string }
const waypointCerts = () => waypointAdmin<WaypointCerts>('/certs');
const curl = async (url: string) => (await mesh.exec('shop/buyer', 'curl', ['-sS', '--max-time', '5', '-o', '/dev/null', '-w', '%{http_code}', url])).stdout;


async function restartController(ca: { certFile: string; keyFile: string; rootsFile?: string }): Promise<void> {
  // The agents' open streams must not hold a graceful stop open (the kubelet would SIGKILL it).
  const stoppedMs = await mesh.stopController('SIGTERM', 5_000);
  process.stdout.write(`# the controller stopped ${stoppedMs} ms after SIGTERM\n`);
  mesh.startController(ca);
  await mesh.waitControllerReady();
}

const lastJson = <T>(r: { code: number | null; stdout: string; stderr: string }): T => {
  assert.ok(r.stdout.trim(), `the fixture printed nothing (exit ${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as T;
};

test('a root CA rotation in three controller restarts breaks no connection, long-lived or new', async () => {
  const a = { certFile: mesh.caFile, keyFile: join(stateDir, 'ca.key') };
  const rootB = (await CertificateAuthority.generateRoot({ trustDomain: mesh.trustDomain, organization: 'weft-root-b' })).exportPem();
  const b = { certFile: join(stateDir, 'b.crt'), keyFile: join(stateDir, 'b.key') };
  writeFileSync(b.certFile, rootB.certPem);
  writeFileSync(b.keyFile, rootB.keyPem, { mode: 0o600 });
  const both = join(stateDir, 'roots-ab.crt');
  writeFileSync(both, readFileSync(mesh.caFile, 'utf8') + rootB.certPem);
  for (const n of NODES) {
    const c = await certs(n);
    assert.equal(c.trustBundle, 1);
    assert.ok(c.certificates.length > 0 && c.certificates.every((x) => !/weft-root-b/.test(x.issuer)), `${n} starts on root A`);
  }
  const wpStart = await waypointCerts();
  assert.equal(wpStart.trustBundle, 1);
  assert.doesNotMatch(wpStart.issuer, /weft-root-b/, 'the waypoint starts on root A');

  // The traffic runs until the rotation is over, however long a loaded machine takes for it (each
  // fixture stops on SIGTERM and prints its summary; the durations are only an upper bound).
  const MAX_MS = 300_000;
  const started = Date.now();
  const long = holdInPod(mesh, 'demo/client', process.execPath, [fixture('line-client.ts'), '--host', VIP, '--port', '7000', '--interval-ms', '250', '--duration-ms', String(MAX_MS)]);
  const churn = holdInPod(mesh, 'demo/client', process.execPath, [fixture('load-conns.ts'), '--host', VIP, '--port', '7000', '--idle', '0', '--rate', '20', '--churn-ms', String(MAX_MS), '--hold-ms', '0']);
  const http = holdInPod(mesh, 'shop/buyer', process.execPath, [fixture('http-prober.ts'), '--host', SHOP_VIP, '--port', '80', '--expect', '/=200', '--expect', '/admin=403', '--interval-ms', '100', '--duration-ms', String(MAX_MS)]);
  await sleep(1_000);

  const t: Record<string, number> = {};
  await restartController({ ...a, rootsFile: both });
  t.trustBoth = await until('every agent and the waypoint trust A and B', async () =>
    (await Promise.all(NODES.map(certs))).every((c) => c.trustBundle === 2) && (await waypointCerts()).trustBundle === 2);
  process.stdout.write(`# step trustBoth: ${t.trustBoth} ms (at ${Date.now() - started} ms)\n`);

  await restartController({ ...b, rootsFile: both });
  t.signedByB = await until('every workload certificate and the waypoint\'s are signed by B', async () =>
    (await Promise.all(NODES.map(certs))).every((c) => c.certificates.length > 0 && c.certificates.every((x) => /weft-root-b/.test(x.issuer))) &&
    /weft-root-b/.test((await waypointCerts()).issuer));
  process.stdout.write(`# step signedByB: ${t.signedByB} ms (at ${Date.now() - started} ms)\n`);
  // The controller signing with B takes node certificates of its own CA only (controller/src/xds/authz.ts,
  // node names repeat across clusters): each agent renews its node certificate from A, told by the CA's
  // trust-bundle stream or by the refusal, and reads config again before A is retired, not at the
  // certificate's half-life (agent/src/config-stream.ts); the renewal is counted by its reason.
  for (const n of NODES) {
    await until(`${n} reads config from the controller signing with B`, async () => (await mesh.agentAdmin<{ controllerConnected: boolean }>(n, '/config_dump')).controllerConnected, 15_000);
    const renewed = [...(await mesh.agentMetrics(n)).matchAll(/^weft_node_certificate_renewals_total\{reason="(?:signer-changed|config-stream-refused)"\} (\d+)$/gm)].reduce((sum, m) => sum + Number(m[1]), 0);
    assert.ok(renewed >= 1, `${n} counted the renewal of its node certificate from A`);
  }

  await restartController(b);
  t.retireA = await until('every agent and the waypoint trust B only', async () =>
    (await Promise.all(NODES.map(certs))).every((c) => c.trustBundle === 1) && (await waypointCerts()).trustBundle === 1);
  process.stdout.write(`# step retireA: ${t.retireA} ms (at ${Date.now() - started} ms)\n`);
  for (const n of NODES) {
    assert.ok((await certs(n)).certificates.every((x) => /weft-root-b/.test(x.issuer)), `${n} holds only certificates from B`);
  }
  const wpEnd = await waypointCerts();
  assert.match(wpEnd.issuer, /weft-root-b/, 'the waypoint holds a certificate from B');
  assert.ok(wpEnd.roots.every((r) => /weft-root-b/.test(r)), `the waypoint trusts only B: ${JSON.stringify(wpEnd.roots)}`);
  const rotatedAt = Date.now() - started;
  process.stdout.write(`# rotation done ${rotatedAt} ms after the traffic started; it runs 3 s more\n`);
  await sleep(3_000);
  const ranS = (Date.now() - started) / 1000;
  const [lOut, cOut, hOut] = await Promise.all([long.stop(), churn.stop(), http.stop()]);
  const l = lastJson<{ sent: number; echoed: number; outOfOrder: number; failure: string | null }>(lOut);
  const c = lastJson<{ churnOk: number; churnFailed: number; errors: Record<string, number> }>(cOut);
  interface Lane { sent: number; expected: number; unexpected: Record<string, number>; errors: Record<string, number> }
  const h = lastJson<{ fresh: Lane; keepalive: Lane }>(hOut);
  process.stdout.write(`# through the waypoint: new connections ${h.fresh.expected}/${h.fresh.sent} as expected, kept-alive ${h.keepalive.expected}/${h.keepalive.sent} (${JSON.stringify(h)}); waypoint certificates issued ${wpEnd.issued}\n`);
  process.stdout.write(`# root rotation: trust A+B in ${t.trustBoth} ms, all certificates from B ${t.signedByB} ms after the signing switch, A retired in ${t.retireA} ms; long-lived connection ${l.echoed}/${l.sent} echoed; ${c.churnOk} new connections, ${c.churnFailed} failed ${JSON.stringify(c.errors)}\n`);
  assert.equal(l.failure, null, `the long-lived connection survived the rotation: ${JSON.stringify(l)}`);
  assert.equal(l.echoed, l.sent);
  assert.equal(l.outOfOrder, 0);
  // 20 new connections a second, and a request every 100 ms per lane: at least a third of that
  // (the client shares a loaded machine), which needs them to have run all along.
  assert.ok(c.churnOk > ranS * 20 / 3, `new connections ran all along (${c.churnOk} in ${ranS} s)`);
  assert.equal(c.churnFailed, 0, `no new connection failed during the rotation: ${JSON.stringify(c.errors)}`);
  for (const [name, lane] of Object.entries(h)) {
    assert.ok(lane.sent > ranS * 10 / 3, `${name}: requests ran all along (${lane.sent} in ${ranS} s)`);
    assert.equal(lane.expected, lane.sent, `${name}: every request through the waypoint got its answer (200, or 403 from the policy): ${JSON.stringify(lane)}`);
  }
  // And after it: the agents talk to the controller on B alone.
  for (const n of NODES) {
    await until(`${n} is connected to the controller signing with B`, async () => (await mesh.agentAdmin<{ controllerConnected: boolean }>(n, '/config_dump')).controllerConnected, 15_000);
  }
  // The waypoint too: a policy written after A was retired reaches it and is enforced.
  await until('the waypoint is connected to the controller signing with B', async () => (await waypointAdmin<{ controllerConnected: boolean }>('/config_dump')).controllerConnected, 15_000);
  mesh.writeConfig('20-shop-private.yaml', [{
    apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'no-private', namespace: 'shop' },
    spec: { targetRefs: [{ kind: 'Service', group: '', name: 'shop' }], action: 'DENY', rules: [{ to: [{ operation: { paths: ['/private'] } }] }] },
  }]);
  const policyMs = await until('the waypoint enforces a policy written after the rotation', async () => (await curl(`http://${SHOP_VIP}/private`)) === '403', 15_000);
  process.stdout.write(`# a policy written after A was retired was enforced by the waypoint ${policyMs} ms later\n`);
  assert.equal(await curl(`http://${SHOP_VIP}/`), '200');
});
