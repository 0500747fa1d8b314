// Same-node splice end to end (issue 20): node1's agent runs with --splice (authorized same-node
// connections are spliced pod to pod in the kernel), node2's with the default (the agent carries
// them). The same client pushes 100 MiB through both, half-closing after the body, and gets the
// server's sha256 back (a sender far ahead of its reader: TCP and the agent carry what the kernel's
// bound refuses, and the kernel takes the direction back once the reader caught up); a policy
// change refuses new connections on the spliced path and closes open ones, as Istio's ztunnel does.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { collectOutput } from '../../lib/sys/exec.ts';
import { localMeshSuite, until } from './mesh-suite.ts';
import type { LocalMesh } from '../../cli/local/mesh.ts';

const suite = localMeshSuite();
let mesh: LocalMesh;
const VIP1 = '10.96.0.21'; // server on node1 (spliced)
const VIP2 = '10.96.0.22'; // server on node2 (not spliced)
const VIP3 = '10.96.0.23'; // server on node1 that opted out (weft.dev/splice: disabled)
const FIXTURE = join(import.meta.dirname, 'fixtures', 'bulk-post.ts');

interface BulkResult { sent: number; sha256: string; reply: string; ms: number; error?: string }
interface BpfSpliced { spliced?: Array<{ clientPod: string; bytesFromClient: string; bytesFromServer: string; reads?: { client: string[]; server: string[] } }> }

function allow(principal: string): object[] {
  return [{
    apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'near-allow', namespace: 'sp' },
    spec: { selector: { matchLabels: { app: 'near1' } }, action: 'ALLOW', rules: [{ from: [{ source: { principals: [principal] } }] }] },
  }];
}

before(async () => {
  mesh = await suite.create(['node1', 'node2']);
  mesh.writeConfig('10-sp.yaml', [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'sp', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'near1', namespace: 'sp' }, spec: { clusterIP: VIP1, selector: { app: 'near1' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'near2', namespace: 'sp' }, spec: { clusterIP: VIP2, selector: { app: 'near2' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'near3', namespace: 'sp' }, spec: { clusterIP: VIP3, selector: { app: 'near3' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
  ]);
  mesh.writeConfig('20-allow.yaml', allow('cluster.local/ns/sp/sa/client1'));
  mesh.addWorkload({ node: 'node1', namespace: 'sp', name: 'client1' });
  mesh.addWorkload({ node: 'node1', namespace: 'sp', name: 'near1', labels: { app: 'near1' }, command: ['cli/local/apps/echo.ts', '--port', '8080', '--name', 'near1'] });
  mesh.addWorkload({ node: 'node1', namespace: 'sp', name: 'near3', labels: { app: 'near3', 'weft.dev/splice': 'disabled' }, command: ['cli/local/apps/echo.ts', '--port', '8080', '--name', 'near3'] });
  mesh.addWorkload({ node: 'node2', namespace: 'sp', name: 'client2' });
  mesh.addWorkload({ node: 'node2', namespace: 'sp', name: 'near2', labels: { app: 'near2' }, command: ['cli/local/apps/echo.ts', '--port', '8080', '--name', 'near2'] });
  mesh.startController();
  await mesh.waitControllerReady();
  for (const n of ['node1', 'node2']) mesh.startKubelet(n);
  mesh.startAgent('node1', { extraArgs: ['--splice'] });
  mesh.startAgent('node2');
  await mesh.waitReady(60_000);
  await mesh.waitWorkloadsEnrolled(['sp/client1', 'sp/near1', 'sp/near3', 'sp/client2', 'sp/near2']);
});

async function bulk(client: string, vip: string, mb: number): Promise<BulkResult> {
  const r = await mesh.exec(client, process.execPath, [FIXTURE, '--host', vip, '--port', '80', '--mb', String(mb)], 120_000);
  assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}\n${mesh.logTail('agent-node1.log')}`);
  return JSON.parse(r.stdout.trim()) as BulkResult;
}

for (const [label, client, vip] of [['spliced (node1)', 'sp/client1', VIP1], ['carried by the agent (node2, without --splice)', 'sp/client2', VIP2]] as const) {
  test(`100 MiB reach a same-node server unchanged and the reply comes back after the client's half-close: ${label}`, async () => {
    const r = await bulk(client, vip, 100);
    const body = JSON.parse(r.reply) as { bytes: number; sha256: string };
    assert.equal(body.bytes, r.sent);
    assert.equal(body.sha256, r.sha256);
  });
}

// Whether the kernel or the agent's pipe carries a given MiB depends on how far the server has read
// (the order rule and the bound, test/bpf/splice.test.ts); the metric gets both, so it counts the
// whole body either way.
test('the spliced connection is listed by the agent while open, and its bytes, the kernel\'s and the pipe\'s, reach istio_tcp_received_bytes_total', async () => {
  const trigger = join(suite.stateDir, 'release-1');
  const w = mesh.workloads.get('sp/client1')!;
  const before = receivedBytes(await mesh.agentMetrics('node1'));
  const child = mesh.net.spawn(w.pod, process.execPath, [FIXTURE, '--host', VIP1, '--port', '80', '--mb', '8', '--hold', trigger]);
  const out = collectOutput(child, 60_000);
  let listed: NonNullable<BpfSpliced['spliced']> = [];
  await until('node1 lists the connection as spliced', async () => {
    listed = (await mesh.agentAdmin<BpfSpliced>('node1', '/bpf')).spliced ?? [];
    return listed.some((s) => s.clientPod === w.pod.ip && /^\d+$/.test(s.bytesFromClient));
  }, 20_000, { explain: () => JSON.stringify(listed) });
  writeFileSync(trigger, '');
  const { code, stdout } = await out;
  assert.equal(code, 0, stdout);
  const r = JSON.parse(stdout.trim().split('\n').pop()!) as BulkResult;
  assert.equal((JSON.parse(r.reply) as { sha256: string }).sha256, r.sha256);
  await until('the body\'s bytes, the kernel\'s and the pipe\'s, reach the metric', async () => receivedBytes(await mesh.agentMetrics('node1')) >= before + 8 * 1024 * 1024, 10_000);
  // How the pods read: the server (Node) with recvmsg, so nothing was kept on TCP for it; the
  // splicing agent exports the readers' counters, the other agent does not.
  assert.ok(listed.every((s) => !s.reads || !s.reads.server.includes('splice(2)')), JSON.stringify(listed));
  assert.match(await mesh.agentMetrics('node1'), /^weft_splice_sockets_total\{event="stranded"\} 0$/m);
  assert.doesNotMatch(await mesh.agentMetrics('node2'), /weft_splice_sockets_total/);
});

// Istio's ztunnel closes open connections a policy change no longer allows; the agent does too,
// spliced or not (LocalDelivery.reauthorize destroys its socket to the pod, which ends the pair).
test('removing a policy\'s permission refuses new connections on the spliced path and closes the open spliced one, counted and logged with the policy', async () => {
  const trigger = join(suite.stateDir, 'release-2');
  const w = mesh.workloads.get('sp/client1')!;
  const child = mesh.net.spawn(w.pod, process.execPath, [FIXTURE, '--host', VIP1, '--port', '80', '--mb', '8', '--hold', trigger]);
  const out = collectOutput(child, 60_000);
  await until('the held connection is spliced', async () => ((await mesh.agentAdmin<BpfSpliced>('node1', '/bpf')).spliced ?? []).some((s) => s.clientPod === w.pod.ip), 20_000);
  const closedBefore = mesh.logEntries('agent-node1.log', 'open connection closed: the policies no longer allow it').length;
  mesh.writeConfig('20-allow.yaml', allow('cluster.local/ns/sp/sa/nobody'));
  try {
    await until('a new connection from client1 is refused', async () => {
      const r = await mesh.exec('sp/client1', 'curl', ['-sS', '--max-time', '5', `http://${VIP1}/`]);
      return r.code !== 0;
    }, 30_000);
    assert.match(await mesh.agentMetrics('node1'), /weft_connections_denied_total\{[^}]*reason="policy"[^}]*destination_workload="near1"[^}]*\} [1-9]/);
    await until('the open spliced connection is closed by the change', () =>
      mesh.logEntries('agent-node1.log', 'open connection closed: the policies no longer allow it').slice(closedBefore)
        .some((l) => l.source === 'spiffe://cluster.local/ns/sp/sa/client1' && String(l.destination).startsWith('sp/near1')), 20_000,
    { explain: () => mesh.logTail('agent-node1.log', 8) });
    writeFileSync(trigger, '');
    const { stdout } = await out;
    const r = JSON.parse(stdout.trim().split('\n').pop()!) as Partial<BulkResult> & { error?: string };
    assert.ok(r.error !== undefined && r.reply === undefined, `the connection opened before the change got no reply: ${stdout.trim().slice(-300)}`);
  } finally {
    mesh.writeConfig('20-allow.yaml', allow('cluster.local/ns/sp/sa/client1'));
  }
});

// An application that relies on FIONREAD (answered from the redirect queue only on a spliced
// socket) opts its pod out with a label; its connections stay on the agent's pipe.
test('a pod labelled weft.dev/splice: disabled is not spliced on a splicing node: its connection is carried by the agent, counted as ever', async () => {
  const trigger = join(suite.stateDir, 'release-3');
  const w = mesh.workloads.get('sp/client1')!;
  const before = receivedBytes(await mesh.agentMetrics('node1'), 'near3');
  const child = mesh.net.spawn(w.pod, process.execPath, [FIXTURE, '--host', VIP3, '--port', '80', '--mb', '8', '--hold', trigger]);
  const out = collectOutput(child, 60_000);
  // Open and past its first MiB (the agent counts an open connection's bytes as they pass).
  await until('the held connection carried its first MiB', async () => receivedBytes(await mesh.agentMetrics('node1'), 'near3') >= before + 1024 * 1024, 20_000);
  const listed = (await mesh.agentAdmin<BpfSpliced>('node1', '/bpf')).spliced ?? [];
  assert.deepEqual(listed.filter((s) => s.clientPod === w.pod.ip), [], 'not spliced');
  writeFileSync(trigger, '');
  const { code, stdout } = await out;
  assert.equal(code, 0, stdout);
  const r = JSON.parse(stdout.trim().split('\n').pop()!) as BulkResult;
  assert.equal((JSON.parse(r.reply) as { sha256: string }).sha256, r.sha256);
});

function receivedBytes(metrics: string, workload = 'near1'): number {
  let sum = 0;
  for (const line of metrics.split('\n')) {
    if (line.startsWith('istio_tcp_received_bytes_total{') && line.includes(`destination_workload="${workload}"`) && line.includes('reporter="source"')) sum += Number(line.split(' ').pop());
  }
  return sum;
}
