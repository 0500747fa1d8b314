// Cross-namespace waypoints end to end, as Istio's "Use a waypoint in a different namespace"
// (https://istio.io/latest/docs/ambient/usage/use-waypoint/#use-a-waypoint-in-a-different-namespace):
// namespace `front` runs waypoint `wp`, which allows the namespaces labelled
// waypoint.example/front=allowed (spec.allowedNamespaces, Gateway API RouteNamespaces Selector).
// `back` is so labelled and points its namespace at front/wp (weft.dev/use-waypoint +
// weft.dev/use-waypoint-namespace): a client reaches back's Service through front's waypoint, and
// the L7 DENY attached to back's Service (a policy of `back`) holds there. `rogue` points at front/wp
// too, without the label: the binding is refused (AttachmentDenied, as Istio's), front's waypoint
// is sent nothing of rogue and serves none of it, and rogue's traffic fails closed, so rogue's own
// L7 policy cannot be skipped by naming a waypoint that does not take it. Once front allows rogue,
// front's waypoint serves it and applies rogue's policy, and does not carry a Service of rogue's
// listing back's pod (a hand-written EndpointSlice) to that pod around back's policy. `solo`'s pod
// alone names front/wp (its own labels, as Istio allows on a Pod): front's waypoint serves traffic
// addressed to it, with solo's policy. Real kernel, eBPF, TLS and processes.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { localMeshSuite } from './mesh-suite.ts';
import type { LocalMesh } from '../../cli/local/mesh.ts';
import { CONTROLLER_IP } from '../../cli/local/mesh.ts';
import { getJsonInNetns, requestInNetns } from '../../cli/local/netns-http.ts';
import { until } from '../lab/wait.ts';

const suite = localMeshSuite();
let mesh: LocalMesh;
const BACK_VIP = '10.96.3.10';
const ROGUE_VIP = '10.96.3.20';
const SOLO_VIP = '10.96.3.40';
const ALLOW_LABEL = 'waypoint.example/front';
const USE = { 'weft.dev/use-waypoint': 'wp', 'weft.dev/use-waypoint-namespace': 'front' };

/** One request from the client pod: the status code (0: no HTTP answer) and the body. */
async function get(url: string): Promise<{ status: number; body: string }> {
  const r = await mesh.exec('client/client', 'curl', ['-s', '-w', '\\n%{http_code}', '--max-time', '5', url]);
  const lines = r.stdout.split('\n');
  return { status: Number(lines.pop()?.trim() || '0'), body: lines.join('\n') };
}

function namespaces(rogueAllowed: boolean): object[] {
  return [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'front', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'client', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'back', labels: { 'weft.dev/dataplane-mode': 'ambient', [ALLOW_LABEL]: 'allowed', ...USE } } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'rogue', labels: { 'weft.dev/dataplane-mode': 'ambient', ...(rogueAllowed ? { [ALLOW_LABEL]: 'allowed' } : {}), ...USE } } },
    // solo is allowed but only its pod names front/wp, by its own labels.
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'solo', labels: { 'weft.dev/dataplane-mode': 'ambient', [ALLOW_LABEL]: 'allowed' } } },
  ];
}

type Dump = { config: { services: Array<{ namespace: string; name: string }>; policies: Array<{ namespace: string; name: string }> } | null };
async function waypointConfig(): Promise<NonNullable<Dump['config']>> {
  const wp = mesh.workloads.get('front/wp-0')!;
  return (await getJsonInNetns<Dump>(wp.pod.netnsPath, 'http://127.0.0.1:15000/config_dump')).config ?? { services: [], policies: [] };
}
const has = (xs: Array<{ namespace: string; name: string }>, key: string) => xs.some((x) => `${x.namespace}/${x.name}` === key);

function metricSum(text: string, name: string, ...labels: string[]): number {
  let sum = 0;
  for (const line of text.split('\n')) if (line.startsWith(`${name}{`) && labels.every((l) => line.includes(l))) sum += Number(line.split(' ').pop());
  return sum;
}

before(async () => {
  mesh = await suite.create();
  const svc = (namespace: string, vip: string) => ({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'api', namespace }, spec: { clusterIP: vip, selector: { app: 'api' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } });
  const deny = (namespace: string, path: string) => ({
    apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: `no-${path}`, namespace },
    spec: { targetRefs: [{ group: '', kind: 'Service', name: 'api' }], action: 'DENY', rules: [{ to: [{ operation: { paths: [`/${path}*`] } }] }] },
  });
  mesh.writeConfig('10-namespaces.yaml', namespaces(false));
  mesh.writeConfig('20-services.yaml', [svc('back', BACK_VIP), deny('back', 'admin'), svc('rogue', ROGUE_VIP), deny('rogue', 'secret'), svc('solo', SOLO_VIP), deny('solo', 'private')]);
  const echo = (name: string) => ['cli/local/apps/echo.ts', '--port', '8080', '--name', name];
  mesh.addWorkload({ node: 'node1', namespace: 'client', name: 'client' });
  mesh.addWorkload({ node: 'node2', namespace: 'back', name: 'api', labels: { app: 'api' }, command: echo('back-api') });
  mesh.addWorkload({ node: 'node2', namespace: 'rogue', name: 'api', labels: { app: 'api' }, command: echo('rogue-api') });
  mesh.addWorkload({ node: 'node2', namespace: 'solo', name: 'api', labels: { app: 'api', ...USE }, command: echo('solo-api') });
  mesh.startController();
  await mesh.waitControllerReady();
  mesh.startAgents();
  mesh.startWaypoint('node1', 'front', 'wp', { allowedNamespaces: { from: 'Selector', selector: { matchLabels: { [ALLOW_LABEL]: 'allowed' } } } });
  await mesh.waitReady(60_000);
  await mesh.waitWaypointReady('front', 'wp');
  await mesh.waitWorkloadsEnrolled(['client/client', 'back/api', 'rogue/api', 'solo/api']);
  await until('front\'s waypoint has back\'s Service and policy', async () => {
    const c = await waypointConfig();
    return has(c.services, 'back/api') && has(c.policies, 'back/no-admin');
  }, 30_000, { intervalMs: 200, explain: () => mesh.logTail('pod-front-wp-0.log') });
  await until('the client reaches back\'s Service', async () => (await get(`http://${BACK_VIP}/`)).status === 200, 30_000, { explain: () => mesh.logTail('agent-node1.log') });
});

test('a client reaches back\'s Service through front\'s waypoint, and the L7 DENY attached to back\'s Service (a policy of back) holds there', async () => {
  const ok = await get(`http://${BACK_VIP}/`);
  assert.equal(ok.status, 200);
  const denied = await get(`http://${BACK_VIP}/admin/users`);
  assert.equal(denied.status, 403, denied.body);
  assert.match(denied.body, /back\/no-admin/, 'front\'s waypoint names back\'s policy');
  // Addressed to back's pod, traffic passes its namespace's waypoint too.
  assert.equal((await get(`http://${mesh.workloads.get('back/api')!.pod.ip}:8080/admin`)).status, 403);
  const wp = mesh.workloads.get('front/wp-0')!;
  const m = (await requestInNetns(wp.pod.netnsPath, `http://${wp.pod.ip}:15020/metrics`)).body;
  assert.ok(metricSum(m, 'istio_requests_total', 'destination_service_namespace="back"', 'response_code="200"') >= 1, 'front\'s waypoint served back/api');
  assert.ok(metricSum(m, 'istio_requests_total', 'destination_service_namespace="back"', 'response_code="403"', 'response_flags="RBAC"') >= 2, 'and refused /admin for policy');
});

test('rogue, which front\'s waypoint does not allow, is not served by it and cannot use it to skip its own policy: its traffic fails closed, counted and named, and the binding is reported AttachmentDenied', async () => {
  const c = await waypointConfig();
  assert.ok(!has(c.services, 'rogue/api') && !has(c.policies, 'rogue/no-secret'), `front's waypoint holds nothing of rogue: ${JSON.stringify(c.services)}`);
  const failedBefore = metricSum(await mesh.agentMetrics('node1'), 'weft_connections_failed_total', 'reason="no_route"');
  // A bypass would reach rogue's pod directly: 200, and /secret (which rogue's policy refuses at a waypoint) too.
  for (const url of [`http://${ROGUE_VIP}/`, `http://${ROGUE_VIP}/secret`, `http://${mesh.workloads.get('rogue/api')!.pod.ip}:8080/secret`]) {
    const r = await get(url);
    assert.equal(r.status, 0, `${url}: no HTTP answer at all (${r.body})`);
  }
  await until('the client\'s agent counted the three refusals (weft_connections_failed_total{reason="no_route"})', async () =>
    metricSum(await mesh.agentMetrics('node1'), 'weft_connections_failed_total', 'reason="no_route"') >= failedBefore + 3, 10_000);
  let logged: string[] = [];
  await until('the agent\'s access log names the refused binding', () => {
    logged = mesh.logTail('agent-node1.log', 50).split('\n').filter((l) => l.includes('may not use waypoint front/wp'));
    return logged.length >= 3;
  }, 10_000, { explain: () => mesh.logTail('agent-node1.log', 5) });
  assert.match(logged.at(-1)!, /Waypoint front\/wp does not allow namespace rogue \(its spec\.allowedNamespaces\)/);
  // The controller reports the refusal (weft_controller_findings{kind,reason}) on the Namespace and the Service.
  const cm = (await requestInNetns(`/var/run/netns/${mesh.net.wireNetns}`, `http://${CONTROLLER_IP}:15020/metrics`, { timeoutMs: 2_000 })).body;
  for (const kind of ['Namespace', 'Service']) assert.ok(metricSum(cm, 'weft_controller_findings', `kind="${kind}"`, 'reason="AttachmentDenied"') >= 1, `${kind} AttachmentDenied counted`);
});

test('once front\'s waypoint allows rogue (its namespace labelled), it serves rogue\'s Service and applies rogue\'s own policy', async () => {
  mesh.writeConfig('10-namespaces.yaml', namespaces(true));
  await until('front\'s waypoint has rogue\'s Service and policy', async () => {
    const c = await waypointConfig();
    return has(c.services, 'rogue/api') && has(c.policies, 'rogue/no-secret');
  }, 30_000, { intervalMs: 200, explain: () => mesh.logTail('controller.log') });
  await until('the client reaches rogue\'s Service', async () => (await get(`http://${ROGUE_VIP}/`)).status === 200, 30_000, { explain: () => mesh.logTail('agent-node1.log', 5) });
  const r = await get(`http://${ROGUE_VIP}/secret`);
  assert.equal(r.status, 403, r.body);
  assert.match(r.body, /rogue\/no-secret/);
});

test('rogue, now allowed, cannot reach back\'s pod through the shared waypoint by a Service of its own listing it (a hand-written EndpointSlice): the waypoint leaves that endpoint out (503 UH, named in its log), so back\'s L7 DENY is not skipped', async () => {
  const ALIAS_VIP = '10.96.3.30';
  mesh.writeConfig('30-alias.yaml', [
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'alias', namespace: 'rogue' }, spec: { clusterIP: ALIAS_VIP, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
    {
      apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: 'alias-1', namespace: 'rogue', labels: { 'kubernetes.io/service-name': 'alias' } },
      addressType: 'IPv4', ports: [{ name: 'http', port: 8080, protocol: 'TCP' }], endpoints: [{ addresses: [mesh.workloads.get('back/api')!.pod.ip] }],
    },
  ]);
  await until('front\'s waypoint has rogue\'s alias', async () => has((await waypointConfig()).services, 'rogue/alias'), 30_000, { intervalMs: 200 });
  // A bypass would be back's pod answering 200 to /admin, which back's policy refuses at the waypoint.
  for (const path of ['/admin', '/']) {
    const r = await get(`http://${ALIAS_VIP}${path}`);
    assert.equal(r.status, 503, `${path}: ${r.body}`);
    assert.match(r.body, /no healthy upstream/);
  }
  assert.match(mesh.logTail('pod-front-wp-0.log', 200), /is a pod of namespace back behind waypoint front\/wp; left out/);
  const wp = mesh.workloads.get('front/wp-0')!;
  const m = (await requestInNetns(wp.pod.netnsPath, `http://${wp.pod.ip}:15020/metrics`)).body;
  assert.ok(metricSum(m, 'istio_requests_total', 'destination_service_name="alias"', 'response_code="503"', 'response_flags="UH"') >= 2, 'counted as no healthy upstream');
  assert.ok(metricSum(m, 'weft_waypoint_config_applies_total', 'result="partial"') >= 1, 'the config applied with the endpoint left out is counted partial');
});

// Istio allows use-waypoint with use-waypoint-namespace on a Pod
// (https://istio.io/latest/docs/ambient/usage/use-waypoint/#configure-a-pod-to-use-a-waypoint):
// traffic addressed to the pod goes through that waypoint, which serves it. Before the fix the
// agent sent it there and the waypoint answered 404 (no service for host): solo's Service, not
// bound to front/wp, was not in its view.
test('a pod naming front\'s waypoint by its own labels is served by it when addressed directly, with its Service\'s policy (solo/no-private holds there); its Service\'s VIP, not bound, goes straight to the pod', async () => {
  const ip = mesh.workloads.get('solo/api')!.pod.ip;
  await until('front\'s waypoint has solo\'s Service and policy', async () => {
    const c = await waypointConfig();
    return has(c.services, 'solo/api') && has(c.policies, 'solo/no-private');
  }, 30_000, { intervalMs: 200, explain: () => mesh.logTail('controller.log') });
  await until('the client reaches solo\'s pod through front\'s waypoint', async () => (await get(`http://${ip}:8080/`)).status === 200, 30_000, { explain: () => mesh.logTail('pod-front-wp-0.log', 5) });
  const r = await get(`http://${ip}:8080/private`);
  assert.equal(r.status, 403, r.body);
  assert.match(r.body, /solo\/no-private/);
  const wp = mesh.workloads.get('front/wp-0')!;
  const m = (await requestInNetns(wp.pod.netnsPath, `http://${wp.pod.ip}:15020/metrics`)).body;
  assert.ok(metricSum(m, 'istio_requests_total', 'destination_service_namespace="solo"', 'response_code="200"') >= 1, 'front\'s waypoint served solo\'s pod');
  // The Service itself uses no waypoint: its VIP is not front/wp's, its traffic goes to the pod (no L7 there).
  assert.equal((await get(`http://${SOLO_VIP}/private`)).status, 200);
});
