// The L4 mesh end to end: two nodes in network namespaces, the controller on a config directory,
// an agent per node, a client pod on node1 and a server pod on node2 (the Kubernetes API server is
// not involved: local mode reads YAML). Everything here is real: kernel, eBPF, TLS, processes.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { collectOutput } from '../../lib/sys/exec.ts';
import { randomBytes, createHash } from 'node:crypto';
import { writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { until } from '../lab/wait.ts';
import { localMeshSuite } from './mesh-suite.ts';
import { LocalMesh } from '../../cli/local/mesh.ts';
import type { ReadPoolStats } from '../../lib/hbone/index.ts';

const suite = localMeshSuite();
let mesh: LocalMesh;
const stateDir = suite.stateDir;
const VIP = '10.96.0.10';
const NEAR_VIP = '10.96.0.11';

const inPod = (name: string, cmd: string, args: string[]) => mesh.exec(name, cmd, args);

const curl = (args: string[]) => inPod('demo/client', 'curl', ['-sS', '--max-time', '10', ...args]);

before(async () => {
  mesh = await suite.create();
  mesh.writeConfig('10-demo.yaml', [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'echo', namespace: 'demo' }, spec: { clusterIP: VIP, selector: { app: 'echo' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'near', namespace: 'demo' }, spec: { clusterIP: NEAR_VIP, selector: { app: 'near' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'legacy' } },
  ]);
  mesh.addWorkload({ node: 'node1', namespace: 'demo', name: 'client' });
  mesh.addWorkload({ node: 'node2', namespace: 'demo', name: 'echo', labels: { app: 'echo' }, command: ['cli/local/apps/echo.ts', '--port', '8080', '--name', 'echo'] });
  mesh.addWorkload({ node: 'node1', namespace: 'demo', name: 'near', labels: { app: 'near' }, command: ['cli/local/apps/echo.ts', '--port', '8080', '--name', 'near'] });
  mesh.addWorkload({ node: 'node1', namespace: 'legacy', name: 'outsider' });
  mesh.startController();
  await mesh.waitControllerReady();
  mesh.startAgents();
  await mesh.waitReady(60_000);
  await mesh.waitWorkloadsEnrolled(['demo/client', 'demo/echo', 'demo/near']);
});

test('a client pod on node1 reaches a server pod on node2 by service address, and the server sees the client pod IP', async () => {
  // Every pod is enrolled (before()), so the very first connection is captured and carried.
  const r = await curl([`http://${VIP}/hello`]);
  assert.equal(r.code, 0, `curl failed: ${r.stderr}\n${mesh.logTail('agent-node1.log')}\n${mesh.logTail('agent-node2.log')}`);
  const body = JSON.parse(r.stdout);
  assert.equal(body.pod, 'echo');
  assert.equal(body.path, '/hello');
  assert.equal(body.peer.replace(/^::ffff:/, ''), mesh.workloads.get('demo/client')!.pod.ip);
});

test('100 MB cross the mesh unchanged (same sha256 at both ends)', async () => {
  const file = join(stateDir, 'payload.bin');
  const data = randomBytes(100 * 1024 * 1024);
  writeFileSync(file, data);
  const want = createHash('sha256').update(data).digest('hex');
  const pool = async () => (await mesh.agentAdmin<{ readPool: ReadPoolStats }>('node1', '/stats')).readPool;
  const before = await pool();
  const r = await curl(['--data-binary', `@${file}`, '-H', 'content-type: application/octet-stream', `http://${VIP}/sha256`]);
  assert.equal(r.code, 0, r.stderr);
  const body = JSON.parse(r.stdout);
  assert.equal(body.bytes, data.length);
  assert.equal(body.sha256, want);
  // The source agent read the upload from the client pod through its read pool (no buffer
  // allocated per read, lib/hbone/read-pool.ts), and every chunk came back once written.
  const after = await pool();
  assert.ok(after.pooled - before.pooled > 100, `node1's agent read the upload through pooled chunks: ${JSON.stringify({ before, after })}`);
  await until('node1\'s agent has every pooled chunk back', async () => (await pool()).lent === before.lent, 10_000);
});

// Issue 20, agent memory: the node executable is about 100 MB of code and read-only data; start-up
// leaves about 50 MB of it mapped, half of which the running agent never touches again. The agent
// unmaps what it does not use once ready and every 10 s (agent/native/memory.cc).
test('the agent keeps mapped only the executable pages it uses: /stats names the last release, and after traffic its file-backed RSS is well below what start-up mapped', async () => {
  const stats = await mesh.agentAdmin<{ filePagesReleased: { mappings: number; bytes: number; at: string } | null }>('node1', '/stats');
  assert.ok(stats.filePagesReleased && stats.filePagesReleased.mappings >= 1, `a release ran: ${JSON.stringify(stats.filePagesReleased)}`);
  // Without the release an agent maps 55-58 MB of files (the executable and its libraries); with it about 30.
  const fileMb = () => Number(/RssFile:\s+(\d+)/.exec(readFileSync(`/proc/${mesh.agents.get('node1')!.pid!}/status`, 'utf8'))![1]) / 1024;
  await until('node1\'s agent maps under 40 MB of files after the traffic above', () => fileMb() < 40, 25_000, { explain: () => `RssFile ${fileMb().toFixed(1)} MB` });
});

test('the link from node1 to the other nodes carries TLS to port 15008 and no plaintext of the request', async () => {
  const marker = `weft-secret-${randomBytes(6).toString('hex')}`;
  const pcap = join(stateDir, 'wire.pcap');
  const dump = spawn('nsenter', [`--net=/var/run/netns/${mesh.net.wireNetns}`, 'tcpdump', '-Z', 'root', '--immediate-mode', '-i', 'n1', '-U', '-w', pcap, 'tcp'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let dumpErr = '';
  dump.stderr!.on('data', (c: Buffer) => (dumpErr += c));
  // tcpdump says "listening on" once the capture is open.
  while (!dumpErr.includes('listening on')) await new Promise((r) => setTimeout(r, 50));
  const r = await curl(['-H', `x-marker: ${marker}`, `http://${VIP}/${marker}`]);
  await new Promise((res) => setTimeout(res, 500));
  dump.kill('SIGINT');
  await once(dump, 'exit');
  assert.equal(r.code, 0, r.stderr);
  assert.ok(r.stdout.includes(marker), 'the server got the request');
  const raw = readFileSync(pcap);
  assert.ok(raw.length > 1000, `the capture holds the exchange (${raw.length} bytes; tcpdump: ${dumpErr})`);
  assert.equal(raw.includes(Buffer.from(marker)), false, 'no plaintext of the request on the wire');
  const tshark = spawn('tshark', ['-r', pcap, '-d', 'tcp.port==15008,tls', '-Y', 'tls.handshake || tls.app_data', '-T', 'fields', '-e', 'tcp.dstport', '-e', 'tcp.srcport']);
  let out = '';
  tshark.stdout.on('data', (c: Buffer) => (out += c));
  await once(tshark, 'exit');
  assert.match(out, /15008/, 'TLS records to or from port 15008');
});

/** Runs a node script (a fixture) inside a node's network namespace. */
async function onNode(node: string, script: string, args: string[]): Promise<Record<string, unknown>> {
  const child = mesh.net.spawn(mesh.node(node), process.execPath, [join(import.meta.dirname, 'fixtures', script), ...args]);
  const { stdout: out, stderr: err } = await collectOutput(child);
  assert.ok(out.trim(), `fixture ${script} printed nothing: ${err}`);
  return JSON.parse(out.trim().split('\n').pop()!);
}

const echoId = 'spiffe://cluster.local/ns/demo/sa/echo';
const probe = (extra: string[]) => onNode('node1', 'hbone-probe.ts', [
  '--dest', `${mesh.node('node2').ip}:15008`, '--expect', echoId,
  '--ca-cert', join(stateDir, 'ca.crt'), '--ca-key', join(stateDir, 'ca.key'), ...extra,
]);

test('a peer with a certificate from another CA is refused by the destination agent', async () => {
  const echoIp = mesh.workloads.get('demo/echo')!.pod.ip;
  const r = await probe(['--identity', 'spiffe://cluster.local/ns/demo/sa/client', '--target', `${echoIp}:8080`, '--foreign']);
  assert.equal(r.ok, false);
  const stats = await mesh.agentAdmin<{ hboneServer: { refusals: Record<string, number> } }>('node2', '/stats');
  assert.ok(stats.hboneServer.refusals['tls-handshake']! >= 1, 'the refusal is counted');
});

test('a CONNECT to a pod that is not on the destination node is refused: the agent is not an open proxy', async () => {
  const clientIp = mesh.workloads.get('demo/client')!.pod.ip; // on node1, asked of node2
  const r = await probe(['--identity', 'spiffe://cluster.local/ns/demo/sa/client', '--target', `${clientIp}:8080`]);
  assert.equal(r.ok, false);
  assert.equal(r.status, 403);
  assert.match(String(r.message), /not an enrolled pod on node node2/);
  // The same identity asking for a pod that is there gets through: the refusal was about the target.
  const ok = await probe(['--identity', 'spiffe://cluster.local/ns/demo/sa/client', '--target', `${mesh.workloads.get('demo/echo')!.pod.ip}:8080`]);
  assert.equal(ok.ok, true, JSON.stringify(ok));
  assert.match(String(ok.reply), /"pod":"echo"/);
});

// What a peer holding a mesh identity may name in its CONNECT to another node's agent: an enrolled
// pod of that node at its own address, nothing else (ztunnel src/proxy/inbound.rs: the target must
// be the local workload; its own proxy ports are refused as SelfCall). The node's loopback and
// address (the admin port 15000), the wildcard, the cloud metadata address, and a pod's address
// spelt IPv4-mapped are no pod of the node: 403, counted and logged with the authority. A pod's own
// address at the agent's ports reaches no agent listener (the plaintext one is on the pod's
// loopback; the delivery comes from inside the pod, which weft_lookup does not steer): the connect
// fails (503) and nothing answers.
test('a CONNECT to the node\'s loopback, its address, the wildcard, the metadata address, or a pod spelt IPv4-mapped is refused (403), counted and logged; a pod\'s own address at the agent\'s ports reaches no listener', async () => {
  const echoIp = mesh.workloads.get('demo/echo')!.pod.ip;
  const node2 = mesh.node('node2').ip;
  const refusals = async () => (await mesh.agentAdmin<{ hboneServer: { refusals: Record<string, number> } }>('node2', '/stats')).hboneServer.refusals;
  const before = await refusals();
  const notPods = ['127.0.0.1:15000', '127.0.0.2:15020', `${node2}:15000`, `${node2}:15008`, '0.0.0.0:15000', '169.254.169.254:80', `[::ffff:${echoIp}]:8080`, '[::1]:15000'];
  for (const target of notPods) {
    const r = await probe(['--identity', 'spiffe://cluster.local/ns/demo/sa/client', '--target', target]);
    assert.equal(r.ok, false, `${target}: ${JSON.stringify(r)}`);
    assert.equal(r.status, 403, `${target}: ${JSON.stringify(r)}`);
    assert.match(String(r.message), /not an enrolled pod on node node2/, target);
  }
  assert.equal((await refusals())['denied']! - (before['denied'] ?? 0), notPods.length, 'each counted once');
  const logged = mesh.logEntries('agent-node2.log', 'HBONE refused').map((l) => l['authority']);
  for (const target of notPods) assert.ok(logged.includes(target), `${target} logged`);
  for (const port of [15001, 15006, 15008]) {
    const r = await probe(['--identity', 'spiffe://cluster.local/ns/demo/sa/client', '--target', `${echoIp}:${port}`]);
    assert.equal(r.ok, false, `${port}: ${JSON.stringify(r)}`);
    assert.equal(r.status, 503, `${port}: ${JSON.stringify(r)}`);
  }
});

test('a DENY policy makes the connection fail and counts the reason; removing it restores traffic without a restart', async () => {
  mesh.writeConfig('20-deny.yaml', [{
    apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'deny-client', namespace: 'demo' },
    spec: { selector: { matchLabels: { app: 'echo' } }, action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster.local/ns/demo/sa/client'] } }] }] },
  }]);
  let denied = false;
  for (let i = 0; i < 40 && !denied; i++) {
    const r = await curl([`http://${VIP}/`]);
    denied = r.code !== 0;
    if (!denied) await new Promise((res) => setTimeout(res, 250));
  }
  assert.ok(denied, 'the client is denied once the policy is in force');
  const metrics = await mesh.agentMetrics('node2');
  assert.match(metrics, /weft_connections_denied_total\{[^}]*reason="policy"[^}]*destination_workload="echo"[^}]*\} [1-9]/);
  mesh.removeConfig('20-deny.yaml');
  let ok = false;
  for (let i = 0; i < 40 && !ok; i++) {
    ok = (await curl([`http://${VIP}/`])).code === 0;
    if (!ok) await new Promise((res) => setTimeout(res, 250));
  }
  assert.ok(ok, 'traffic flows again after the policy is removed');
});

test('1,000 concurrent connections through the mesh all complete', async () => {
  const w = mesh.workloads.get('demo/client')!;
  const child = mesh.net.spawn(w.pod, process.execPath, [join(import.meta.dirname, 'fixtures', 'concurrent.ts'), '--host', VIP, '--port', '80', '--count', '1000']);
  const { stdout: out } = await collectOutput(child);
  const r = JSON.parse(out.trim());
  assert.deepEqual({ connected: r.connected, answered: r.answered }, { connected: 1000, answered: 1000 }, JSON.stringify(r));
});

test('same-node traffic is authorized like any other, with no TLS, and the server sees the client', async () => {
  const r = await curl([`http://${NEAR_VIP}/local`]);
  assert.equal(r.code, 0, r.stderr);
  const body = JSON.parse(r.stdout);
  assert.equal(body.pod, 'near');
  assert.equal(body.peer.replace(/^::ffff:/, ''), mesh.workloads.get('demo/client')!.pod.ip);
  const metrics = await mesh.agentMetrics('node1');
  // Same node, no TLS on the wire, but both identities established by the agent and the
  // destination's policy applied: Istio's vocabulary has mutual_tls or none, and this is the former
  // (ztunnel reports its same-node fast path the same way).
  assert.match(metrics, /istio_tcp_connections_opened_total\{[^}]*destination_workload="near"[^}]*connection_security_policy="mutual_tls"[^}]*\} [1-9]/);
  mesh.writeConfig('21-deny-near.yaml', [{
    apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'only-echo', namespace: 'demo' },
    spec: { selector: { matchLabels: { app: 'near' } }, action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/demo/sa/echo'] } }] }] },
  }]);
  try {
    let denied = false;
    for (let i = 0; i < 40 && !denied; i++) {
      denied = (await curl([`http://${NEAR_VIP}/local`])).code !== 0;
      if (!denied) await new Promise((res) => setTimeout(res, 250));
    }
    assert.ok(denied, 'an ALLOW policy that does not name the client denies it on the same node too');
  } finally {
    mesh.removeConfig('21-deny-near.yaml');
  }
});

test('a STRICT pod refuses plaintext from a pod outside the mesh while mesh traffic still reaches it', async () => {
  mesh.writeConfig('22-strict.yaml', [{
    apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'strict', namespace: 'demo' }, spec: { mtls: { mode: 'STRICT' } },
  }]);
  try {
    const nearIp = mesh.workloads.get('demo/near')!.pod.ip;
    // The agent takes up STRICT a moment before the kernel map does (in that moment its plaintext
    // listener refuses): keep trying until the kernel itself answers with a RST and counts it.
    await until('plaintext from outside the mesh is refused by the kernel, and counted', async () => {
      const r = await inPod('legacy/outsider', 'curl', ['-sS', '--max-time', '5', `http://${nearIp}:8080/`]);
      if (r.code === 0) return false; // still PERMISSIVE: the policy is not in force yet
      const bpf = await mesh.agentAdmin<{ counters: Record<string, number> }>('node1', '/bpf');
      return bpf.counters.strict_denied! >= 1;
    }, 10_000, { intervalMs: 250 });
    const viaMesh = await curl([`http://${NEAR_VIP}/strict`]);
    assert.equal(viaMesh.code, 0, viaMesh.stderr);
    const viaMeshRemote = await curl([`http://${VIP}/strict`]);
    assert.equal(viaMeshRemote.code, 0, viaMeshRemote.stderr);
  } finally {
    mesh.removeConfig('22-strict.yaml');
  }
});

// ---- HBONE peers (issue 15, item 7), from the attacker's side ----------------------------------

/** The JSON body echo answered inside a probe's raw HTTP/1.0 reply. */
function echoBody(reply: unknown): { pod: string; peer: string; peerPort: number } {
  const text = String(reply);
  return JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4));
}

test('a node identity and a workload of a foreign trust domain are refused on 15008, counted and logged', async () => {
  const echoIp = mesh.workloads.get('demo/echo')!.pod.ip;
  // A valid chain from the mesh CA: an agent's node certificate, used to open a tunnel.
  const asNode = await probe(['--identity', 'spiffe://cluster.local/node/node1', '--target', `${echoIp}:8080`]);
  assert.equal(asNode.ok, false, JSON.stringify(asNode));
  assert.match(String(asNode.message), /node identity/);
  // The same CA signing another trust domain's workload (a second mesh sharing a root).
  const foreign = await probe(['--identity', 'spiffe://evil.example/ns/demo/sa/client', '--trust-domain', 'evil.example', '--target', `${echoIp}:8080`]);
  assert.equal(foreign.ok, false, JSON.stringify(foreign));
  const metrics = await mesh.agentMetrics('node2');
  assert.match(metrics, /weft_connections_denied_total\{[^}]*reason="peer-not-workload"[^}]*\} [1-9]/);
  assert.match(metrics, /weft_connections_denied_total\{[^}]*reason="peer-(trust-domain|identity)"[^}]*\} [1-9]/);
  const logged = mesh.logEntries('agent-node2.log', 'HBONE refused').map((e) => [e.kind, e.peer]);
  assert.ok(logged.some(([k, p]) => k === 'peer-not-workload' && p === 'spiffe://cluster.local/node/node1'), JSON.stringify(logged));
  assert.ok(logged.some(([k, p]) => k === 'peer-trust-domain' && p === 'spiffe://evil.example/ns/demo/sa/client'), JSON.stringify(logged));
  // The control: the mesh's own workload identity gets through.
  const ok = await probe(['--identity', 'spiffe://cluster.local/ns/demo/sa/client', '--target', `${echoIp}:8080`]);
  assert.equal(ok.ok, true, JSON.stringify(ok));
});

test('a forged forwarded for= from a peer that is not a waypoint is not honoured: the server sees the peer itself, and it is counted', async () => {
  const echoIp = mesh.workloads.get('demo/echo')!.pod.ip;
  const clientIp = mesh.workloads.get('demo/client')!.pod.ip;
  const nearIp = mesh.workloads.get('demo/near')!.pod.ip;
  const node1 = mesh.node('node1').ip;
  const as = (forwarded: string) => probe(['--identity', 'spiffe://cluster.local/ns/demo/sa/client', '--target', `${echoIp}:8080`, '--forwarded', forwarded]);
  // Claims an address the mesh does not know, then another workload's (demo/near, same node).
  for (const [forged, reason] of [['for="192.0.2.66:4444"', 'unknown-address'], [`for="${nearIp}:4444"`, 'identity-mismatch']] as const) {
    const r = await as(forged);
    assert.equal(r.ok, true, JSON.stringify(r));
    const body = echoBody(r.reply);
    assert.equal(body.peer.replace(/^::ffff:/, ''), node1, `${forged}: the server sees the tunnel's own peer (node1), not the claim`);
    assert.notEqual(body.peerPort, 4444);
    const metrics = await mesh.agentMetrics('node2');
    assert.match(metrics, new RegExp(`weft_hbone_forwarded_ignored_total\\{reason="${reason}"\\} [1-9]`));
  }
  const logged = mesh.logEntries('agent-node2.log', 'forwarded client address not honoured: the peer may not speak for it');
  assert.ok(logged.some((e) => e.claimed === '192.0.2.66:4444' && e.reason === 'unknown-address'), JSON.stringify(logged));
  // The control: the same identity, from the client's own node, for the client's own address: honoured, port and all.
  const honest = await as(`for="${clientIp}:4321"`);
  const body = echoBody(honest.reply);
  assert.deepEqual([body.peer.replace(/^::ffff:/, ''), body.peerPort], [clientIp, 4321]);
});

test('the client\'s port reaches the server across two agents, and on the same node', async () => {
  const clientIp = mesh.workloads.get('demo/client')!.pod.ip;
  // Ports below the pod's ephemeral range (32768-60999 by default): an earlier connection of the
  // client in this file cannot hold them (in TIME_WAIT, curl's bind failed with EADDRINUSE).
  for (const [vip, port] of [[VIP, 23071], [NEAR_VIP, 23072]] as const) {
    const r = await curl(['--local-port', String(port), `http://${vip}/port`]);
    assert.equal(r.code, 0, r.stderr);
    const body = JSON.parse(r.stdout);
    assert.deepEqual([body.peer.replace(/^::ffff:/, ''), body.peerPort], [clientIp, port], `via ${vip}`);
  }
});
