// No window before enrolment (issue 15, item 5): a pod created on a node whose agent runs gets its
// network through the chained CNI plugin, which has the agent enrol it before the pod's command
// starts; the local mesh starts the command right after the plugin, as a kubelet does, without
// waiting on anything else. An outsider probes the new STRICT pod in a tight loop from before the
// pod exists and must never get an answer in plaintext, while mesh clients are served.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { collectOutput } from '../../lib/sys/exec.ts';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { localMeshSuite, until } from './mesh-suite.ts';
import { holds } from '../lab/wait.ts';
import type { LocalMesh } from '../../cli/local/mesh.ts';

const suite = localMeshSuite();
let mesh: LocalMesh;
const VIP = '10.96.0.20';

before(async () => {
  mesh = await suite.create();
  mesh.writeConfig('10-demo.yaml', [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'strict', namespace: 'demo' }, spec: { mtls: { mode: 'STRICT' } } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'fresh', namespace: 'demo' }, spec: { clusterIP: VIP, selector: { app: 'fresh' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'legacy' } },
  ]);
  mesh.addWorkload({ node: 'node1', namespace: 'demo', name: 'client' });
  mesh.addWorkload({ node: 'node1', namespace: 'legacy', name: 'outsider' });
  mesh.startController();
  await mesh.waitControllerReady();
  mesh.startAgents();
  await mesh.waitReady(60_000);
  await mesh.waitWorkloadsEnrolled(['demo/client']);
});

test('a new STRICT pod never answers plaintext, probed by an outsider from before its first instant', async (t) => {
  const outsider = mesh.workloads.get('legacy/outsider')!;
  const stop = join(suite.stateDir, 'stop-prober');
  // The address the next pod on node2 gets (the local network hands out the smallest free index).
  const freshIp = `${mesh.node('node2').ip.split('.').slice(0, 2).join('.')}.2.1`;
  const prober = mesh.net.spawn(outsider.pod, process.execPath, [join(import.meta.dirname, 'fixtures', 'first-instant-prober.ts'), '--target', `${freshIp}:8080`, '--until', stop]);
  const output = collectOutput(prober);
  try {
    const w = mesh.addWorkload({ node: 'node2', namespace: 'demo', name: 'fresh', labels: { app: 'fresh' }, command: ['cli/local/apps/echo.ts', '--port', '8080', '--name', 'fresh'] });
    assert.equal(w.pod.ip, freshIp);
    const t0 = Date.now();
    await w.started;
    t.diagnostic(`network set up and command started after ${Date.now() - t0} ms`);
    // The pod is enrolled by the time its command runs: no waiting on the agent's scan here.
    const bpf = await mesh.agentAdmin<{ pods: Array<{ podIp: string; mode: string }> }>('node2', '/bpf');
    assert.deepEqual(bpf.pods.filter((p) => p.podIp === freshIp).map((p) => p.mode), ['STRICT'], 'enrolled STRICT before its command started');
    // Mesh clients are served as soon as the application listens: the prober ran against a live server.
    const served = await until('the mesh client is served by the new pod', async () =>
      (await mesh.exec('demo/client', 'curl', ['-sS', '--max-time', '3', `http://${VIP}/`])).stdout.includes('"pod":"fresh"'), 30_000);
    t.diagnostic(`served through the mesh ${served} ms later`);
    // Keep probing the live server a while longer: the server's first second is the window at stake.
    await holds('the prober keeps running', () => prober.exitCode === null, 1000, { intervalMs: 100 });
  } finally {
    writeFileSync(stop, '');
  }
  const out = (await output).stdout;
  const r = JSON.parse(out.trim()) as { attempts: number; outcomes: Record<string, number>; leaks: unknown[] };
  t.diagnostic(`prober: ${JSON.stringify(r)}`);
  assert.deepEqual(r.leaks, [], `the outsider got plaintext answers: ${JSON.stringify(r)}`);
  assert.ok(r.attempts >= 20, `the prober ran in a tight loop (${JSON.stringify(r)})`);
  assert.ok((r.outcomes['ECONNREFUSED'] ?? 0) >= 1, `the pod's kernel refused it (RST) while the server listened: ${JSON.stringify(r)}`);
  const counters = await mesh.agentAdmin<{ counters: Record<string, number> }>('node2', '/bpf');
  assert.ok(counters.counters.strict_denied! >= 1, 'and counted the refusals');
});

test('the CNI plugin\'s CHECK and DEL act on the agent\'s enrolment; with the agent down, a new pod waits for its network', async () => {
  const w = mesh.workloads.get('demo/fresh')!;
  const ok = await mesh.runCni('CHECK', w);
  assert.equal(ok.code, 0, ok.stdout);
  const enrolled = async () => (await mesh.agentAdmin<{ pods: Array<{ podIp: string }> }>('node2', '/bpf')).pods.some((p) => p.podIp === w.pod.ip);
  const del = await mesh.runCni('DEL', w);
  assert.equal(del.code, 0, del.stdout);
  assert.equal(await enrolled(), false, 'DEL unenrolled the pod');
  const bad = await mesh.runCni('CHECK', w);
  assert.equal(bad.code, 1);
  assert.match(bad.stdout, /"code":101.*not enrolled/);
  const again = await mesh.runCni('ADD', w);
  assert.equal(again.code, 0, again.stdout);
  assert.equal(await enrolled(), true, 'ADD enrolled it again');

  // The agent killed: a pod created now gets no network (ADD fails, retried) and its command does not run.
  await mesh.killAgent('node2');
  const late = mesh.addWorkload({ node: 'node2', namespace: 'demo', name: 'late', labels: { app: 'late' }, command: ['cli/local/apps/echo.ts', '--port', '8080', '--name', 'late'] });
  const direct = await mesh.runCni('ADD', late);
  assert.equal(direct.code, 1);
  assert.match(direct.stdout, /"code":11.*cannot be reached/);
  await holds('the pod\'s command waits for its network', () => late.process === undefined, 1500, { intervalMs: 50 });
  // The agent back: the pending pod is enrolled, then started.
  mesh.startAgent('node2');
  await late.started;
  assert.ok(late.process, 'started once the plugin succeeded');
  assert.ok((await mesh.agentAdmin<{ pods: Array<{ podIp: string }> }>('node2', '/bpf')).pods.some((p) => p.podIp === late.pod.ip));
});

// IP reuse (docs/SECURITY.md, "a pod's address is not its identity"): a pod's network is torn down
// (CNI DEL) while its Pod object still lists it, and the node's next pod, of another namespace and
// not enrolled, is given its address. The agent must not find the newcomer's namespace by that
// address and enrol it as the old pod: it would carry the old pod's identity (a STRICT pod's peer)
// on every connection. Istio's CNI agent finds a pod's namespace by its uid, never its address
// (istio/istio cni/pkg/nodeagent/podcgroupns.go).
test('a new pod given a removed pod\'s address is never enrolled as that pod while the config still lists it, and cannot reach a STRICT pod with its identity', async () => {
  const vault = await mesh.startWorkload({ node: 'node2', namespace: 'demo', name: 'vault', labels: { app: 'vault' }, command: ['cli/local/apps/echo.ts', '--port', '8080', '--name', 'vault'] });
  const victim = await mesh.startWorkload({ node: 'node1', namespace: 'demo', name: 'victim' });
  await mesh.waitWorkloadsEnrolled(['demo/vault', 'demo/victim']);
  const asVictim = await mesh.exec('demo/victim', 'curl', ['-sS', '--max-time', '3', `http://${vault.pod.ip}:8080/`]);
  assert.match(asVictim.stdout, /"pod":"vault"/, 'the victim itself is served');
  const enrolledAt = async (ip: string) => (await mesh.agentAdmin<{ pods: Array<{ podIp: string }> }>('node1', '/bpf')).pods.some((p) => p.podIp === ip);
  // The victim's network goes (its Pod object stays in the config), and the next pod takes its address.
  const del = await mesh.runCni('DEL', victim);
  assert.equal(del.code, 0, del.stdout);
  await mesh.net.removePod('demo', 'victim');
  mesh.workloads.delete('demo/victim');
  const intruder = await mesh.startWorkload({ node: 'node1', namespace: 'legacy', name: 'intruder' });
  try {
    assert.equal(intruder.pod.ip, victim.pod.ip, 'the new pod was given the removed pod\'s address');
    // The intruder's Pod in the config pushes a new config, and the agent looks for the pods it lists.
    await holds('the intruder\'s namespace stays unenrolled', async () => !(await enrolledAt(victim.pod.ip)), 3 * 1000 + 500, { intervalMs: 200 });
    const r = await mesh.exec('legacy/intruder', 'curl', ['-sS', '--max-time', '3', `http://${vault.pod.ip}:8080/`]);
    assert.doesNotMatch(r.stdout, /"pod":"vault"/, 'the intruder got no answer from the STRICT pod as the victim');
    await until('the refusal is counted', async () => /weft_pod_enrolment_refused_total\{reason="network_removed"\} [1-9]/.test(await mesh.agentMetrics('node1')), 10_000);
    const logged = mesh.logEntries('agent-node1.log', 'pod not enrolled at its address: the config names a pod that no longer holds it');
    assert.ok(logged.some((l) => l['pod'] === 'demo/victim' && l['reason'] === 'network_removed' && l['ip'] === victim.pod.ip), JSON.stringify(logged));
  } finally {
    mesh.removeConfig('pod-demo-victim.yaml');
  }
});

// The CNI spec lets a runtime call DEL more than once (it "should not return an error" for what is
// gone; containerd calls it when it stops a sandbox and again when it removes it): a DEL repeated for
// a removed pod, after its address went to a new ambient pod, must not unenrol the new pod.
test('a DEL repeated for a removed pod does not unenrol the new pod given its address (CNI spec: DEL may be called again)', async () => {
  const first = await mesh.startWorkload({ node: 'node1', namespace: 'demo', name: 'first' });
  await mesh.waitWorkloadsEnrolled(['demo/first']);
  const enrolledAt = async (ip: string) => (await mesh.agentAdmin<{ pods: Array<{ podIp: string; netnsCookie: string }> }>('node1', '/bpf')).pods.filter((p) => p.podIp === ip);
  assert.equal((await mesh.runCni('DEL', first)).code, 0);
  await mesh.net.removePod('demo', 'first');
  mesh.workloads.delete('demo/first');
  const heir = await mesh.startWorkload({ node: 'node1', namespace: 'demo', name: 'heir' });
  try {
    assert.equal(heir.pod.ip, first.pod.ip, 'the new pod was given the removed pod\'s address');
    await mesh.waitWorkloadsEnrolled(['demo/heir']);
    const before = await enrolledAt(heir.pod.ip);
    assert.equal(before.length, 1);
    const again = await mesh.runCni('DEL', first);
    assert.equal(again.code, 0, again.stdout);
    await holds('the new pod stays enrolled', async () => JSON.stringify(await enrolledAt(heir.pod.ip)) === JSON.stringify(before), 1500, { intervalMs: 100 });
  } finally {
    mesh.removeConfig('pod-demo-first.yaml');
  }
});
