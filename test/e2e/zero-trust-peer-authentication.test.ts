// PeerAuthentication as Istio spells it, enforced end to end (kernel RST, counters, access log) on a
// two-node local mesh, from an outsider's side: a mesh-wide STRICT written in the root namespace
// with `selector: {matchLabels: {}}` (Istio: a selector without labels is mesh-wide, pilot ambient
// convertedSelectorPeerAuthentications), and a workload policy whose mode is UNSET with one STRICT
// port (Istio accepts UNSET: the port is STRICT, the rest inherits). Before, the first held only in
// the root namespace and the second was refused whole, so both pods took plaintext.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { agentDeniedLines, deniedMetric, localMeshSuite, until } from './mesh-suite.ts';
import type { LocalMesh } from '../../cli/local/mesh.ts';

const suite = localMeshSuite();
let mesh: LocalMesh;
const VIP = '10.96.0.70';

type Bpf = { counters: Record<string, number> };
const bpf = (node: string) => mesh.agentAdmin<Bpf>(node, '/bpf');
const ip = (w: string) => mesh.workloads.get(w)!.pod.ip;
const inPod = (w: string, args: string[]) => mesh.exec(w, 'curl', ['-sS', '--max-time', '5', ...args]);

before(async () => {
  mesh = await suite.create();
  const echo = (name: string) => ['cli/local/apps/echo.ts', '--port', '8080', '--name', name];
  mesh.writeConfig('10-peer-authentication.yaml', [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'weft-system' } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'shop', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'legacy' } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'echo', namespace: 'demo' }, spec: { clusterIP: VIP, selector: { app: 'echo' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
    { apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'mesh-strict', namespace: 'weft-system' }, spec: { selector: { matchLabels: {} }, mtls: { mode: 'STRICT' } } },
    { apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'shop-permissive', namespace: 'shop' }, spec: { mtls: { mode: 'PERMISSIVE' } } },
    { apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'db-port', namespace: 'shop' }, spec: { selector: { matchLabels: { app: 'db' } }, mtls: { mode: 'UNSET' }, portLevelMtls: { '8080': { mode: 'STRICT' } } } },
  ]);
  mesh.addWorkload({ node: 'node1', namespace: 'demo', name: 'client' });
  mesh.addWorkload({ node: 'node1', namespace: 'legacy', name: 'outsider' });
  mesh.addWorkload({ node: 'node2', namespace: 'demo', name: 'echo', labels: { app: 'echo' }, command: echo('echo') });
  mesh.addWorkload({ node: 'node2', namespace: 'shop', name: 'db', labels: { app: 'db' }, command: echo('db') });
  mesh.startController();
  await mesh.waitControllerReady();
  mesh.startAgents();
  await mesh.waitReady(60_000);
  await mesh.waitWorkloadsEnrolled(['demo/client', 'demo/echo', 'shop/db']);
  await until('the mesh client is served', async () => (await inPod('demo/client', [`http://${VIP}/`])).code === 0, 30_000,
    { explain: () => mesh.logTail('agent-node2.log') });
});

test('the agent enrols both pods STRICT on the port at stake: echo by the root-namespace policy with an empty selector, db by its UNSET policy\'s STRICT port', async () => {
  const pods = (await mesh.agentAdmin<{ pods: Array<{ podIp: string; mode: string; portModes: Record<string, string> }> }>('node2', '/bpf')).pods;
  assert.equal(pods.find((p) => p.podIp === ip('demo/echo'))?.mode, 'STRICT');
  const db = pods.find((p) => p.podIp === ip('shop/db'));
  assert.equal(db?.mode, 'PERMISSIVE');
  assert.deepEqual(db?.portModes, { 8080: 'STRICT' });
});

test('an outsider gets no plaintext into either pod: RST in the kernel, counted as strict_denied with the workload, and an access-log line naming mtls:STRICT', async () => {
  for (const w of ['demo/echo', 'shop/db']) {
    const [namespace, name] = w.split('/') as [string, string];
    const before = (await bpf('node2')).counters.strict_denied!;
    const r = await inPod('legacy/outsider', [`http://${ip(w)}:8080/`]);
    assert.notEqual(r.code, 0, `${w} answered plaintext: ${r.stdout}`);
    assert.ok((await bpf('node2')).counters.strict_denied! > before, `${w}: counted in the kernel`);
    await until(`${w}: weft_connections_denied_total names the refused workload`, async () =>
      deniedMetric(await mesh.agentMetrics('node2'), { reporter: 'kernel', reason: 'strict_denied', destination_workload: name, destination_workload_namespace: namespace }) >= 1, 5_000);
    await until(`${w}: an access-log line for the kernel's refusal`, () => agentDeniedLines(mesh, 'node2').some((l) =>
      l.reporter === 'kernel' && l.reason === 'strict_denied' && l.dst_workload === name && l.policy === 'mtls:STRICT'), 5_000);
  }
});
