// Zero trust end to end (issue 15), tried as an attacker would on a two-node dual-stack local mesh:
// every TCP connection into an enrolled pod reaches the application only through its node's agent,
// except the kubelet's probes. `echo` (node2) and `near` (node1) are STRICT; `perm` (node2) is
// PERMISSIVE with an ALLOW policy naming only demo/client; `open` (node2) is PERMISSIVE with no
// policy. The attackers: processes in a node's root netns (what a hostNetwork pod or a node daemon
// is), a pod outside the mesh, crafted IPv6. Each attack must fail and be named: a BPF counter, a
// weft_connections_denied_total reason, an access-log line naming the policy.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { collectOutput } from '../../lib/sys/exec.ts';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { agentDeniedLines, deniedMetric, localMeshSuite, until } from './mesh-suite.ts';
import { LocalMesh } from '../../cli/local/mesh.ts';
import { checkMesh, type MeshFacts } from '../../cli/check.ts';
import type { LineResult } from './fixtures/line-client.ts';

const suite = localMeshSuite();
let mesh: LocalMesh;
const VIP = '10.96.0.10';
const NEAR_VIP = '10.96.0.11';
const PERM_VIP = '10.96.0.12';
const LINES_NEAR_VIP = '10.96.0.13';
const LINES_FAR_VIP = '10.96.0.14';

type Bpf = { counters: Record<string, number>; refusals: Record<string, number>; kubeletCgroups: string[]; inboundExcludedPorts: number[]; excludedPorts: number[] };
const bpf = (node: string) => mesh.agentAdmin<Bpf>(node, '/bpf');
const ip = (w: string) => mesh.workloads.get(w)!.pod.ip;

/** curl from a node's root netns, in an ordinary cgroup of that node (not the kubelet's). */
async function fromNode(node: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const n = mesh.node(node);
  const cgroup = join(n.cgroup, 'system.slice', 'node-daemon.service');
  mkdirSync(cgroup, { recursive: true });
  const child = mesh.net.spawn({ netns: n.netns, cgroup }, 'curl', ['-sS', '--max-time', '5', ...args]);
  const { code, stdout, stderr } = await collectOutput(child);
  return { code, stdout, stderr };
}

const inPod = (w: string, args: string[]) => mesh.exec(w, 'curl', ['-sS', '--max-time', '5', ...args]);

before(async () => {
  mesh = await suite.create(['node1', 'node2'], { dualStack: true });
  const echo = (name: string) => ['cli/local/apps/echo.ts', '--port', '8080', '--host', '::', '--name', name];
  mesh.writeConfig('10-demo.yaml', [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'legacy' } },
    ...[['echo', VIP], ['near', NEAR_VIP], ['perm', PERM_VIP]].map(([name, vip]) => ({
      apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: 'demo' }, spec: { clusterIP: vip, selector: { app: name }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] },
    })),
    // Two line-echo pods (no policy, PERMISSIVE) for connections held across a policy change.
    ...[['lines-near', LINES_NEAR_VIP], ['lines-far', LINES_FAR_VIP]].map(([name, vip]) => ({
      apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: 'demo' }, spec: { clusterIP: vip, selector: { app: name }, ports: [{ name: 'tcp', port: 7000, targetPort: 7000 }] },
    })),
    ...['echo', 'near'].map((app) => ({
      apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: `strict-${app}`, namespace: 'demo' },
      spec: { selector: { matchLabels: { app } }, mtls: { mode: 'STRICT' } },
    })),
    ...['echo', 'perm'].map((app) => ({
      apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: `allow-client-${app}`, namespace: 'demo' },
      spec: { selector: { matchLabels: { app } }, action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/demo/sa/client'] } }] }] },
    })),
  ]);
  mesh.addWorkload({ node: 'node1', namespace: 'demo', name: 'client' });
  mesh.addWorkload({ node: 'node1', namespace: 'legacy', name: 'outsider' });
  for (const [node, name] of [['node2', 'echo'], ['node1', 'near'], ['node2', 'perm'], ['node2', 'open']] as const) {
    mesh.addWorkload({ node, namespace: 'demo', name, labels: { app: name }, command: echo(name), probePort: 8080 });
  }
  for (const [node, name] of [['node1', 'lines-near'], ['node2', 'lines-far']] as const) {
    mesh.addWorkload({ node, namespace: 'demo', name, labels: { app: name, held: 'yes' }, command: ['test/e2e/fixtures/line-echo.ts', '--port', '7000'] });
  }
  mesh.startController();
  await mesh.waitControllerReady();
  for (const n of ['node1', 'node2']) {
    mesh.startKubelet(n);
    // 8080 excluded from outbound capture: it must stay closed inbound all the same.
    mesh.startAgent(n, { extraArgs: ['--exclude-port', '8080'] });
  }
  await mesh.waitReady(60_000);
  await mesh.waitWorkloadsEnrolled(['demo/client', 'demo/echo', 'demo/near', 'demo/perm', 'demo/open', 'demo/lines-near', 'demo/lines-far']);
  // The policies are in force once the allowed client is served and an outsider is not.
  await until('STRICT and ALLOW in force', async () =>
    (await inPod('demo/client', [`http://${VIP}/`])).code === 0 && (await inPod('legacy/outsider', [`http://${ip('demo/perm')}:8080/`])).code !== 0,
  30_000, { explain: () => mesh.logTail('agent-node2.log') });
});

test('controls: the allowed mesh client is served by the STRICT and PERMISSIVE+ALLOW pods, across nodes and on the same node, and the server sees it', async () => {
  for (const vip of [VIP, PERM_VIP, NEAR_VIP]) {
    const r = await inPod('demo/client', [`http://${vip}/control`]);
    assert.equal(r.code, 0, `${vip}: ${r.stderr}`);
    assert.equal(JSON.parse(r.stdout).peer.replace(/^::ffff:/, ''), ip('demo/client'));
  }
});

test('the kubelet (its cgroup, found by the agent) keeps probing the STRICT pods; the agent reports the exemption', async () => {
  const b = await bpf('node2');
  assert.equal(b.kubeletCgroups.length, 1, 'node2\'s agent found system.slice/kubelet.service');
  const start = mesh.kubeletStatus('node2')['demo/echo']?.okCount ?? 0;
  await until('two more successful probes of the STRICT echo pod', () => (mesh.kubeletStatus('node2')['demo/echo']?.okCount ?? 0) >= start + 2, 15_000,
    { explain: () => JSON.stringify(mesh.kubeletStatus('node2')) + mesh.logTail('kubelet-node2.log') });
  assert.equal(mesh.kubeletStatus('node1')['demo/near']?.ok, true, 'node1\'s kubelet probes near');
  assert.ok((await bpf('node2')).counters.probe_allowed! > 0);
});

test('a node process (not the kubelet) gets no plaintext into a STRICT pod: RST in the kernel, counted as strict_denied and in weft_connections_denied_total', async () => {
  const before = (await bpf('node2')).counters.strict_denied!;
  const r = await fromNode('node2', [`http://${ip('demo/echo')}:8080/`]);
  assert.equal(r.code, 7, `curl could not connect (refused at once): ${r.stdout}${r.stderr}`);
  assert.ok((await bpf('node2')).counters.strict_denied! > before, 'counted in the kernel');
  assert.ok(deniedMetric(await mesh.agentMetrics('node2'), { reporter: 'kernel', reason: 'strict_denied' }) >= 1);
  // The refused pod's workload labels come from the model (the ring buffer event's destination).
  await until('weft_connections_denied_total names the refused workload', async () =>
    deniedMetric(await mesh.agentMetrics('node2'), { reporter: 'kernel', reason: 'strict_denied', destination_workload: 'echo', destination_workload_namespace: 'demo' }) >= 1, 5_000);
  await until('an access-log line for the kernel\'s refusal', () => agentDeniedLines(mesh, 'node2').some((l) =>
    l.reporter === 'kernel' && l.reason === 'strict_denied' && l.dst_workload === 'echo' && l.policy === 'mtls:STRICT' && String(l.src).startsWith(`${mesh.node('node2').ip}:`)), 5_000);
});

test('node-local and off-node plaintext into a PERMISSIVE pod whose ALLOW names only demo/client is steered to the agent and refused, naming the policy', async () => {
  for (const [who, attempt] of [
    ['node2 process', () => fromNode('node2', [`http://${ip('demo/perm')}:8080/`])],
    ['node1 process', () => fromNode('node1', [`http://${ip('demo/perm')}:8080/`])],
    ['pod outside the mesh', () => inPod('legacy/outsider', [`http://${ip('demo/perm')}:8080/`])],
  ] as const) {
    const before = agentDeniedLines(mesh, 'node2').length;
    const r = await attempt();
    assert.notEqual(r.code, 0, `${who} was served: ${r.stdout}`);
    await until(`${who}: an access-log line names the policy`, () => agentDeniedLines(mesh, 'node2').length > before, 5_000);
    const line = agentDeniedLines(mesh, 'node2').at(-1)!;
    assert.equal(line.dst_workload, 'perm');
    assert.equal(line.reason, 'policy');
    assert.equal(line.policy, 'demo/allow-client-perm');
    assert.equal(line.security, 'none');
  }
  assert.ok(deniedMetric(await mesh.agentMetrics('node2'), { reason: 'policy', destination_workload: 'perm' }) >= 3);
  assert.ok((await bpf('node2')).counters.lookup_steered! >= 3, 'the kernel steered them to the agent');
});

test('plaintext into a PERMISSIVE pod with no policy goes through the agent: delivered, the app sees the real client, counted as connection_security_policy="none"', async () => {
  const r = await fromNode('node2', [`http://${ip('demo/open')}:8080/plain`]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).peer.replace(/^::ffff:/, ''), mesh.node('node2').ip, 'the application sees the node process, not the agent');
  const metrics = await mesh.agentMetrics('node2');
  assert.match(metrics, /istio_tcp_connections_opened_total\{[^}]*destination_workload="open"[^}]*connection_security_policy="none"[^}]*\} [1-9]/);
});

test('IPv6 into a STRICT pod is refused and counted, and the check flags it', async () => {
  const echo6 = mesh.workloads.get('demo/echo')!.pod.ip6!;
  // The application does serve IPv6: from inside its own pod it answers.
  const inside = await mesh.exec('demo/echo', 'curl', ['-sS', '--max-time', '5', `http://[${echo6}]:8080/`]);
  assert.equal(inside.code, 0, `the app listens on IPv6: ${inside.stderr}`);
  const r = await fromNode('node2', ['-6', '--connect-timeout', '3', `http://[${echo6}]:8080/`]);
  assert.notEqual(r.code, 0, `served over IPv6: ${r.stdout}`);
  const b = await bpf('node2');
  assert.ok(b.refusals.ipv6_refused! + b.refusals.lookup_ipv6_refused! >= 1, JSON.stringify(b.refusals));
  const facts: MeshFacts = {
    now: Date.now(), logDir: mesh.logDir, controller: { ready: true, detail: '' }, waypoints: [],
    agents: [{ node: 'node2', ready: true, detail: '', inbound: { ipv6Refused: b.refusals.ipv6_refused! + b.refusals.lookup_ipv6_refused!, kubeletCgroups: b.kubeletCgroups.length, inboundExcludedPorts: b.inboundExcludedPorts } }],
  };
  assert.equal(checkMesh(facts).find((c) => c.id === 'mesh.ipv6.node2')?.status, 'warn');
});

test('a port excluded from outbound capture (8080) is still closed inbound on a STRICT pod', async () => {
  const b = await bpf('node1');
  assert.ok(b.excludedPorts.includes(8080) && b.inboundExcludedPorts.length === 0);
  const before = b.counters.strict_denied!;
  const r = await inPod('legacy/outsider', [`http://${ip('demo/near')}:8080/`]);
  assert.notEqual(r.code, 0, `served: ${r.stdout}`);
  assert.ok((await bpf('node1')).counters.strict_denied! > before);
});

/** A line client held in `workload`'s pod against host:7000: up once its first line came back; its result once the connection ended. */
function holdLines(workload: string, host: string) {
  const child = mesh.net.spawn(mesh.workloads.get(workload)!.pod, process.execPath,
    [join(import.meta.dirname, 'fixtures/line-client.ts'), '--host', host, '--port', '7000', '--interval-ms', '100', '--duration-ms', '120000']);
  let out = '';
  let err = '';
  child.stdout!.on('data', (c: Buffer) => { out += c.toString(); });
  child.stderr!.on('data', (c: Buffer) => { err += c.toString(); });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    up: () => out.includes('"up":true'),
    output: () => `${out}${err}`.trim().slice(-300),
    ended: () => child.exitCode !== null || child.signalCode !== null,
    result: async (): Promise<LineResult> => { await exited; return JSON.parse(out.trim().split('\n').pop()!) as LineResult; },
    kill: () => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); },
  };
}

// Istio's ztunnel closes open connections that a policy change no longer allows; so does Weft's
// agent, for every delivery it made (LocalDelivery.reauthorize): an HBONE tunnel, a same-node mesh
// connection and steered plaintext. Without it a connection opened before a DENY outlives it.
test('a new DENY closes connections already open: same node, across nodes over HBONE, and plaintext steered to the agent; each closure is counted and logged with the policy', async () => {
  const held = [
    { what: 'same node', node: 'node1', h: holdLines('demo/client', LINES_NEAR_VIP) },
    { what: 'HBONE', node: 'node2', h: holdLines('demo/client', LINES_FAR_VIP) },
    { what: 'plaintext', node: 'node2', h: holdLines('legacy/outsider', ip('demo/lines-far')) },
  ];
  try {
    await until('every held connection echoes', () => held.every((c) => c.h.up()), 30_000,
      { explain: () => held.map((c) => `${c.what}: up ${c.h.up()}, ended ${c.h.ended()}: ${c.h.output()}`).join('\n') });
    const deniedBefore = { node1: deniedMetric(await mesh.agentMetrics('node1'), { reason: 'policy' }), node2: deniedMetric(await mesh.agentMetrics('node2'), { reason: 'policy' }) };
    const closedBefore = (node: string) => mesh.logEntries(`agent-${node}.log`, 'open connection closed: the policies no longer allow it').length;
    const before1 = closedBefore('node1');
    const before2 = closedBefore('node2');
    mesh.writeConfig('70-deny-held.yaml', [{
      apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'deny-held', namespace: 'demo' },
      spec: { selector: { matchLabels: { held: 'yes' } }, action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster.local/ns/demo/sa/client'] } }, { source: { ipBlocks: [`${ip('legacy/outsider')}/32`] } }] }] },
    }]);
    try {
      await until('every held connection is closed by the new DENY', () => held.every((c) => c.h.ended()), 30_000,
        { explain: () => `${held.map((c) => `${c.what}: ended ${c.h.ended()}`).join('; ')}\n${mesh.logTail('agent-node1.log', 4)}\n${mesh.logTail('agent-node2.log', 4)}` });
      for (const c of held) {
        const r = await c.h.result();
        assert.notEqual(r.failure, null, `${c.what}: the connection was closed (${JSON.stringify(r)})`);
      }
      const closed1 = mesh.logEntries('agent-node1.log', 'open connection closed: the policies no longer allow it').slice(before1);
      const closed2 = mesh.logEntries('agent-node2.log', 'open connection closed: the policies no longer allow it').slice(before2);
      assert.ok(closed1.some((l) => l.policy === 'demo/deny-held' && l.source === 'spiffe://cluster.local/ns/demo/sa/client'), `node1 closed the same-node connection naming the policy:\n${mesh.logTail('agent-node1.log', 6)}`);
      assert.ok(closed2.some((l) => l.policy === 'demo/deny-held' && l.source === 'spiffe://cluster.local/ns/demo/sa/client'), `node2 closed the HBONE tunnel naming the policy:\n${mesh.logTail('agent-node2.log', 6)}`);
      assert.ok(closed2.some((l) => l.policy === 'demo/deny-held' && l.source === ip('legacy/outsider')), `node2 closed the plaintext connection naming the policy:\n${mesh.logTail('agent-node2.log', 6)}`);
      assert.ok(deniedMetric(await mesh.agentMetrics('node1'), { reason: 'policy' }) > deniedBefore.node1, 'node1 counted its closure in weft_connections_denied_total{reason="policy"}');
      assert.ok(deniedMetric(await mesh.agentMetrics('node2'), { reason: 'policy' }) >= deniedBefore.node2 + 2, 'node2 counted both closures');
    } finally {
      mesh.removeConfig('70-deny-held.yaml');
    }
    // The control: with the DENY gone the same client connects again. The removal reaches the
    // agents a moment after the file goes (controller, config stream), and a connection made before
    // that is still refused: each refused attempt is followed by a new one until one holds.
    let again = holdLines('demo/client', LINES_FAR_VIP);
    held.push({ what: 'after', node: 'node2', h: again });
    await until('the client connects again once the DENY is removed', () => {
      if (again.ended()) {
        again = holdLines('demo/client', LINES_FAR_VIP);
        held.push({ what: 'after', node: 'node2', h: again });
      }
      return again.up();
    }, 30_000);
  } finally {
    for (const c of held) c.h.kill();
  }
});
