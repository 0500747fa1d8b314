// A tenant's way around another namespace's waypoint, tried end to end: namespace `bank` uses its
// waypoint, whose policy (targetRefs its Service `vault`) refuses /admin to the client of namespace
// `tenant`. The tenant writes, in its own namespace, a selectorless Service `alias` and an
// EndpointSlice listing bank's pod, and dials that. A namespace's waypoint also takes traffic
// addressed to its pods (docs/ARCHITECTURE.md, "Waypoint binding"), so the alias must lead through
// it too: 403 from bank's waypoint, counted (istio_requests_total, response_flags RBAC) and
// logged, never the pod's answer.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { localMeshSuite } from './mesh-suite.ts';
import type { LocalMesh } from '../../cli/local/mesh.ts';
import { getJsonInNetns, requestInNetns } from '../../cli/local/netns-http.ts';
import { until } from '../lab/wait.ts';

const suite = localMeshSuite();
let mesh: LocalMesh;
const VAULT_VIP = '10.96.2.10';
const ALIAS_VIP = '10.96.2.20';

/** One request from the tenant's client: the status code. */
async function status(url: string): Promise<number> {
  const r = await mesh.exec('tenant/client', 'curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '5', url]);
  return Number(r.stdout.trim() || '0');
}

/** The waypoint's 403s for policy (Envoy's response flag RBAC) to the tenant's client. */
async function rbacDenials(): Promise<number> {
  const wp = mesh.workloads.get('bank/waypoint-0')!;
  const metrics = (await requestInNetns(wp.pod.netnsPath, `http://${wp.pod.ip}:15020/metrics`)).body;
  let total = 0;
  for (const line of metrics.split('\n')) {
    if (line.startsWith('istio_requests_total{') && line.includes('response_code="403"') && line.includes('response_flags="RBAC"') && line.includes('source_workload_namespace="tenant"')) total += Number(line.split(' ').pop());
  }
  return total;
}

before(async () => {
  mesh = await suite.create();
  mesh.addWorkload({ node: 'node1', namespace: 'tenant', name: 'client' });
  const vault = mesh.addWorkload({ node: 'node2', namespace: 'bank', name: 'vault', labels: { app: 'vault' }, command: ['cli/local/apps/echo.ts', '--port', '8080', '--name', 'vault'] });
  mesh.writeConfig('10-binding.yaml', [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'bank', labels: { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'waypoint' } } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'tenant', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'vault', namespace: 'bank' }, spec: { clusterIP: VAULT_VIP, selector: { app: 'vault' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
    {
      apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'no-admin-for-tenant', namespace: 'bank' },
      spec: { targetRefs: [{ group: '', kind: 'Service', name: 'vault' }], action: 'DENY', rules: [{ from: [{ source: { namespaces: ['tenant'] } }], to: [{ operation: { paths: ['/admin*'] } }] }] },
    },
    // The tenant's own objects: a selectorless Service and a hand-written EndpointSlice naming bank's pod.
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'alias', namespace: 'tenant' }, spec: { clusterIP: ALIAS_VIP, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
    {
      apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: 'alias-1', namespace: 'tenant', labels: { 'kubernetes.io/service-name': 'alias' } },
      addressType: 'IPv4', ports: [{ name: 'http', port: 8080, protocol: 'TCP' }], endpoints: [{ addresses: [vault.pod.ip] }],
    },
  ]);
  mesh.startController();
  await mesh.waitControllerReady();
  mesh.startAgents();
  mesh.startWaypoint('node2', 'bank');
  await mesh.waitReady(60_000);
  await mesh.waitWaypointReady('bank');
  await mesh.waitWorkloadsEnrolled(['tenant/client', 'bank/vault']);
  const wp = mesh.workloads.get('bank/waypoint-0')!;
  type Dump = { config: { policies: Array<{ name: string }> } | null };
  await until('the waypoint has the policy', async () =>
    Boolean((await getJsonInNetns<Dump>(wp.pod.netnsPath, 'http://127.0.0.1:15000/config_dump')).config?.policies.some((p) => p.name === 'no-admin-for-tenant')),
  30_000, { intervalMs: 200, explain: () => mesh.logTail('pod-bank-waypoint-0.log') });
  await until('the tenant is served by bank\'s Service', async () => (await status(`http://${VAULT_VIP}/`)) === 200, 30_000,
    { explain: () => mesh.logTail('agent-node1.log') });
});

test('controls: the tenant reaches bank\'s pod through its Service and its address, and /admin is refused by bank\'s waypoint either way', async () => {
  assert.equal(await status(`http://${VAULT_VIP}/admin`), 403);
  assert.equal(await status(`http://${mesh.workloads.get('bank/vault')!.pod.ip}:8080/admin`), 403, 'addressed to the pod, through the namespace\'s waypoint');
  assert.equal(await status(`http://${mesh.workloads.get('bank/vault')!.pod.ip}:8080/`), 200);
});

test('a Service and EndpointSlice the tenant writes in its own namespace naming bank\'s pod lead through bank\'s waypoint: /admin is refused (403), counted and logged', async () => {
  const before = await rbacDenials();
  assert.equal(await status(`http://${ALIAS_VIP}/`), 200, 'the alias itself works');
  assert.equal(await status(`http://${ALIAS_VIP}/admin`), 403, 'the alias is no way around bank\'s waypoint');
  await until('the waypoint counts the refusal', async () => (await rbacDenials()) > before, 5_000);
  await until('the waypoint logs it', () => mesh.logTail('pod-bank-waypoint-0.log', 400).split('\n').some((l) => l.includes('/admin') && l.includes('403')), 5_000);
});
