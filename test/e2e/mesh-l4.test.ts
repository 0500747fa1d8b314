// The L4 mesh end to end: two nodes in network namespaces, the controller on a config directory,
// an agent per node, a client pod on node1 and a server pod on node2 (the Kubernetes API server is
// not involved: local mode reads YAML). Everything here is real: kernel, eBPF, TLS, processes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { randomBytes, createHash } from 'node:crypto';
import { writeFileSync, mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { Lab } from '../lab/lab.ts';
import { LocalMesh } from '../../cli/local/mesh.ts';

const lab = new Lab();
let mesh: LocalMesh;
const stateDir = mkdtempSync(join(tmpdir(), 'weft-e2e-'));
const VIP = '10.96.0.10';

/** Runs a command inside a pod (its netns and cgroup, so the datapath sees it). */
async function inPod(name: string, cmd: string, args: string[], timeoutMs = 30_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const w = mesh.workloads.get(name)!;
  const child = mesh.net.spawn(w.pod, cmd, args);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (c: Buffer) => (stdout += c));
  child.stderr!.on('data', (c: Buffer) => (stderr += c));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const [code] = (await once(child, 'exit')) as [number | null];
  clearTimeout(timer);
  return { code, stdout, stderr };
}

const curl = (args: string[]) => inPod('demo/client', 'curl', ['-sS', '--max-time', '10', ...args]);

before(async () => {
  mesh = await LocalMesh.create({ prefix: lab.id, stateDir, nodes: ['node1', 'node2'] });
  mesh.writeConfig('10-demo.yaml', [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'echo', namespace: 'demo' }, spec: { clusterIP: VIP, selector: { app: 'echo' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
  ]);
  mesh.addWorkload({ node: 'node1', namespace: 'demo', name: 'client' });
  mesh.addWorkload({ node: 'node2', namespace: 'demo', name: 'echo', labels: { app: 'echo' }, command: ['cli/local/apps/echo.ts', '--port', '8080', '--name', 'echo'] });
  mesh.startController();
  mesh.startAgents();
  await mesh.waitReady(60_000);
});

after(async () => {
  await mesh?.destroy();
  await lab.cleanup();
  rmSync(stateDir, { recursive: true, force: true });
});

test('a client pod on node1 reaches a server pod on node2 by service address, and the server sees the client pod IP', async () => {
  let r = { code: 1 as number | null, stdout: '', stderr: '' };
  // The agents enrol pods as soon as config arrives; allow a moment for the first pass.
  for (let i = 0; i < 20; i++) {
    r = await curl([`http://${VIP}/hello`]);
    if (r.code === 0) break;
    await new Promise((res) => setTimeout(res, 250));
  }
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
  const r = await curl(['--data-binary', `@${file}`, '-H', 'content-type: application/octet-stream', `http://${VIP}/sha256`]);
  assert.equal(r.code, 0, r.stderr);
  const body = JSON.parse(r.stdout);
  assert.equal(body.bytes, data.length);
  assert.equal(body.sha256, want);
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
