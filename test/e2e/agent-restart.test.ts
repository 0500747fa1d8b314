// A node agent killed and started again, with the real agent process: enrolled pods never get a
// plaintext path while it is down (the pinned programs keep redirecting to the dead listener, which
// refuses fast, and STRICT pods keep refusing plaintext), traffic resumes when it is back, and the
// new agent adopts the pinned links instead of attaching anything twice.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { Lab } from '../lab/lab.ts';
import { LocalMesh } from '../../cli/local/mesh.ts';
import { BpfMap, possibleCpus } from '../../agent/libbpf/index.ts';
import { decodePercpuCounters } from '../../agent/src/datapath/codecs.ts';

const lab = new Lab();
let mesh: LocalMesh;
const stateDir = mkdtempSync(join(tmpdir(), 'weft-e2e-'));
const VIP = '10.96.0.10';

function counters(node: string): Record<string, number> {
  const m = BpfMap.openPinned(join(mesh.node(node).pinRoot, 'weft_counters'));
  try {
    const key = Buffer.alloc(4);
    return decodePercpuCounters(m.lookup(key)!, possibleCpus());
  } finally {
    m.close();
  }
}

function cgroupPrograms(node: string): string[] {
  return execFileSync('bpftool', ['cgroup', 'show', mesh.node(node).cgroup], { encoding: 'utf8' })
    .split('\n').slice(1).map((l) => l.trim().split(/\s+/).pop() ?? '').filter(Boolean).sort();
}

before(async () => {
  mesh = await LocalMesh.create({ prefix: lab.id, stateDir, nodes: ['node1', 'node2'] });
  mesh.writeConfig('10-demo.yaml', [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'legacy' } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'echo', namespace: 'demo' }, spec: { clusterIP: VIP, selector: { app: 'echo' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
    { apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'strict', namespace: 'demo' }, spec: { mtls: { mode: 'STRICT' } } },
  ]);
  mesh.addWorkload({ node: 'node1', namespace: 'demo', name: 'client' });
  mesh.addWorkload({ node: 'node1', namespace: 'demo', name: 'guarded', labels: { app: 'guarded' }, command: ['cli/local/apps/echo.ts', '--port', '8080', '--name', 'guarded'] });
  mesh.addWorkload({ node: 'node1', namespace: 'legacy', name: 'outsider' });
  mesh.addWorkload({ node: 'node2', namespace: 'demo', name: 'echo', labels: { app: 'echo' }, command: ['cli/local/apps/echo.ts', '--port', '8080', '--name', 'echo'] });
  mesh.startController();
  await mesh.waitControllerReady();
  mesh.startAgents();
  await mesh.waitReady();
  for (const k of ['demo/client', 'demo/guarded', 'demo/echo']) await mesh.waitEnrolled(mesh.workloads.get(k)!.spec.node, mesh.workloads.get(k)!.pod.ip);
});

after(async () => {
  await mesh?.destroy();
  await lab.cleanup();
  rmSync(stateDir, { recursive: true, force: true });
});

const curl = (from: string, url: string) => mesh.exec(from, 'curl', ['-sS', '--max-time', '5', '-o', '/dev/null', '-w', '%{http_code}', url]);

test('with the agent killed, captured connections fail fast instead of leaking, and STRICT still refuses plaintext', async () => {
  assert.equal((await curl('demo/client', `http://${VIP}/`)).stdout, '200');
  const programsBefore = cgroupPrograms('node1');
  assert.deepEqual(programsBefore, ['weft_connect4', 'weft_connect6', 'weft_getpeer4', 'weft_getpeer6', 'weft_sockops']);

  await mesh.killAgent('node1');
  const before = counters('node1');
  const echoIp = mesh.workloads.get('demo/echo')!.pod.ip;
  const started = Date.now();
  const direct = await curl('demo/client', `http://${echoIp}:8080/`);
  assert.notEqual(direct.code, 0, 'a connection to a mesh address is not let through in plaintext while the agent is down');
  assert.ok(Date.now() - started < 4_000, `it fails fast (${Date.now() - started} ms), it does not hang`);
  assert.ok(counters('node1').connect4_redirected! > before.connect4_redirected!, 'the pinned connect4 program still redirected it');

  const guardedIp = mesh.workloads.get('demo/guarded')!.pod.ip;
  const plain = await curl('legacy/outsider', `http://${guardedIp}:8080/`);
  assert.notEqual(plain.code, 0, 'STRICT holds with no agent running');
  assert.ok(counters('node1').strict_denied! > before.strict_denied!);

  mesh.startAgent('node1');
  await mesh.waitReady(60_000, ['node1']);
  let code = '';
  for (let i = 0; i < 20 && code !== '200'; i++) {
    code = (await curl('demo/client', `http://${VIP}/`)).stdout;
    if (code !== '200') await new Promise((r) => setTimeout(r, 250));
  }
  assert.equal(code, '200', 'traffic resumes through the restarted agent');
  assert.deepEqual(cgroupPrograms('node1'), programsBefore, 'the restarted agent attached nothing twice');
});
