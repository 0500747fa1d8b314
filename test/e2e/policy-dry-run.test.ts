// Istio's dry-run task end to end on the local mesh
// (https://istio.io/latest/docs/tasks/security/authorization/authz-dry-run/): a DENY naming the
// client, annotated `istio.io/dry-run: "true"`, lets the client through, across nodes and on the
// same node, while the destination's agent counts the would-be refusal naming the policy; removing
// the annotation enforces it without a restart. Real kernel, eBPF, TLS and processes.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { until } from '../lab/wait.ts';
import { localMeshSuite } from './mesh-suite.ts';
import { LocalMesh } from '../../cli/local/mesh.ts';

const suite = localMeshSuite();
let mesh: LocalMesh;
const VIP = '10.96.0.10';
const NEAR_VIP = '10.96.0.11';

const curl = (url: string) => mesh.exec('demo/client', 'curl', ['-sS', '--max-time', '10', url]);

before(async () => {
  mesh = await suite.create();
  mesh.writeConfig('10-demo.yaml', [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'echo', namespace: 'demo' }, spec: { clusterIP: VIP, selector: { app: 'echo' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'near', namespace: 'demo' }, spec: { clusterIP: NEAR_VIP, selector: { app: 'near' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
  ]);
  mesh.addWorkload({ node: 'node1', namespace: 'demo', name: 'client' });
  mesh.addWorkload({ node: 'node2', namespace: 'demo', name: 'echo', labels: { app: 'echo' }, command: ['cli/local/apps/echo.ts', '--port', '8080', '--name', 'echo'] });
  mesh.addWorkload({ node: 'node1', namespace: 'demo', name: 'near', labels: { app: 'near' }, command: ['cli/local/apps/echo.ts', '--port', '8080', '--name', 'near'] });
  mesh.startController();
  await mesh.waitControllerReady();
  mesh.startAgents();
  await mesh.waitReady(60_000);
  await mesh.waitWorkloadsEnrolled(['demo/client', 'demo/echo', 'demo/near']);
});

const policy = (annotations: Record<string, string>) => [{
  apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'deny-client', namespace: 'demo', annotations },
  spec: { action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster.local/ns/demo/sa/client'] } }] }] },
}];
const shadowDenied = /weft_authz_dry_run_total\{[^}]*policy="demo\/deny-client"[^}]*authz_dry_run_action="deny"[^}]*authz_dry_run_result="denied"[^}]*\} [1-9]/;

test('a dry-run DENY naming the client refuses nothing, across nodes or on one, and each destination agent counts the shadow denial naming it; without the annotation it is enforced', async () => {
  mesh.writeConfig('20-dry-run.yaml', policy({ 'istio.io/dry-run': 'true' }));
  try {
    // The policy is in force (dry run) once an agent counts its shadow verdict; every request still succeeds.
    const failed: string[] = [];
    const through = async (url: string) => {
      const r = await curl(url);
      if (r.code !== 0) failed.push(`${url}: ${r.stderr}`);
    };
    await until('node2 counts the dry-run DENY', async () => {
      await through(`http://${VIP}/`);
      return shadowDenied.test(await mesh.agentMetrics('node2'));
    }, 20_000);
    await until('node1 counts the dry-run DENY on the same node', async () => {
      await through(`http://${NEAR_VIP}/`);
      return shadowDenied.test(await mesh.agentMetrics('node1'));
    }, 20_000);
    assert.deepEqual(failed, [], 'a dry-run policy refuses nothing');
    assert.doesNotMatch(await mesh.agentMetrics('node2'), /weft_connections_denied_total\{[^}]*reason="policy"[^}]*destination_workload="echo"[^}]*\} [1-9]/);

    // The task's last step: remove the annotation to enforce the policy.
    mesh.writeConfig('20-dry-run.yaml', policy({}));
    await until('the policy is enforced', async () => (await curl(`http://${VIP}/`)).code !== 0, 20_000);
    assert.match(await mesh.agentMetrics('node2'), /weft_connections_denied_total\{[^}]*reason="policy"[^}]*destination_workload="echo"[^}]*\} [1-9]/);
  } finally {
    mesh.removeConfig('20-dry-run.yaml');
  }
});
