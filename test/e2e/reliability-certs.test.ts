// Certificates under stress, with the real agents in namespaces. The agents run with
// --cert-lifetime 6 (workload certificates renewed every ~3 s):
// - a long-lived TCP connection across nodes (HBONE, mTLS) keeps working while the certificates of
//   both ends rotate several times, and new connections keep succeeding;
// - at the agent's HBONE port, expired, self-signed and missing client certificates are refused
//   in the handshake and counted, while a valid one (the control) gets through.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { once } from 'node:events';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { Lab } from '../lab/lab.ts';
import { LocalMesh } from '../../cli/local/mesh.ts';

const lab = new Lab();
let mesh: LocalMesh;
const stateDir = mkdtempSync(join(tmpdir(), 'weft-e2e-'));
const VIP = '10.96.0.20';
const CERT_LIFETIME_S = 6;
const CLIENT_ID = 'spiffe://cluster.local/ns/demo/sa/client';
const LINES_ID = 'spiffe://cluster.local/ns/demo/sa/lines';
const fixture = (name: string) => join(import.meta.dirname, 'fixtures', name);

before(async () => {
  mesh = await LocalMesh.create({ prefix: lab.id, stateDir, nodes: ['node1', 'node2'] });
  mesh.writeConfig('10-demo.yaml', [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'lines', namespace: 'demo' }, spec: { clusterIP: VIP, selector: { app: 'lines' }, ports: [{ name: 'tcp', port: 7000, targetPort: 7000 }] } },
  ]);
  mesh.addWorkload({ node: 'node1', namespace: 'demo', name: 'client' });
  mesh.addWorkload({ node: 'node2', namespace: 'demo', name: 'lines', labels: { app: 'lines' }, command: ['test/e2e/fixtures/line-echo.ts', '--port', '7000'] });
  mesh.startController();
  await mesh.waitControllerReady();
  for (const n of ['node1', 'node2']) mesh.startAgent(n, { extraArgs: ['--cert-lifetime', String(CERT_LIFETIME_S)] });
  await mesh.waitReady();
  for (const k of ['demo/client', 'demo/lines']) await mesh.waitEnrolled(mesh.workloads.get(k)!.spec.node, mesh.workloads.get(k)!.pod.ip);
});

after(async () => {
  await mesh?.destroy();
  await lab.cleanup();
  rmSync(stateDir, { recursive: true, force: true });
});

interface LineResult { sent: number; echoed: number; outOfOrder: number; failure: string | null }

async function lineClient(durationMs: number): Promise<LineResult> {
  const r = await mesh.exec('demo/client', process.execPath, [fixture('line-client.ts'), '--host', VIP, '--port', '7000', '--interval-ms', '200', '--duration-ms', String(durationMs)], durationMs + 15_000);
  assert.ok(r.stdout.trim(), `line-client printed nothing (exit ${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as LineResult;
}

async function serial(node: string, identity: string): Promise<string | undefined> {
  const certs = await mesh.agentAdmin<{ certificates: Array<{ identity: string; serial: string }> }>(node, '/certs');
  return certs.certificates.find((c) => c.identity === identity)?.serial;
}

test('a long-lived connection across nodes keeps working while both ends\' workload certificates rotate, and new connections keep succeeding', async () => {
  const seen = { client: new Set<string>(), lines: new Set<string>() };
  let polling = true;
  const shortResults: LineResult[] = [];
  const poll = (async () => {
    let i = 0;
    while (polling) {
      const c = await serial('node1', CLIENT_ID).catch(() => undefined);
      const l = await serial('node2', LINES_ID).catch(() => undefined);
      if (c) seen.client.add(c);
      if (l) seen.lines.add(l);
      // Every ~2 s, a fresh connection as well (new HBONE streams, possibly new TLS sessions).
      if (++i % 4 === 0) shortResults.push(await lineClient(400));
      await sleep(500);
    }
  })();
  const long = await lineClient(14_000);
  polling = false;
  await poll;

  console.log(`# long-lived connection: ${long.sent} lines sent, ${long.echoed} echoed; client certificates seen ${seen.client.size}, server ${seen.lines.size}; ${shortResults.length} new connections`);
  assert.equal(long.failure, null, 'the long-lived connection was never closed or reset');
  assert.ok(long.sent >= 50, `it carried traffic the whole time (${long.sent} lines)`);
  assert.equal(long.echoed, long.sent, 'every line came back');
  assert.equal(long.outOfOrder, 0, 'in order');
  assert.ok(seen.client.size >= 3, `the client's certificate rotated at least twice (${seen.client.size} serials)`);
  assert.ok(seen.lines.size >= 3, `the server's certificate rotated at least twice (${seen.lines.size} serials)`);
  assert.ok(shortResults.length >= 3);
  for (const r of shortResults) {
    assert.equal(r.failure, null, `a new connection during rotation worked: ${JSON.stringify(r)}`);
    assert.ok(r.sent >= 1 && r.echoed === r.sent, `a new connection during rotation carried data: ${JSON.stringify(r)}`);
  }
});

async function onNode(node: string, script: string, args: string[]): Promise<{ ok: boolean; code?: string; message?: string; reply?: string }> {
  const child = mesh.net.spawn(mesh.node(node), process.execPath, [fixture(script), ...args]);
  let out = '';
  let err = '';
  child.stdout!.on('data', (c: Buffer) => (out += c));
  child.stderr!.on('data', (c: Buffer) => (err += c));
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  await once(child, 'exit');
  clearTimeout(timer);
  assert.ok(out.trim(), `fixture ${script} printed nothing: ${err}`);
  return JSON.parse(out.trim().split('\n').pop()!);
}

test('expired, self-signed and missing client certificates are refused at the agent\'s HBONE port and counted, while a valid one gets through', async () => {
  const linesIp = mesh.workloads.get('demo/lines')!.pod.ip;
  const probe = (cert: string) => onNode('node1', 'hbone-bad-cert.ts', [
    '--dest', `${mesh.node('node2').ip}:15008`, '--target', `${linesIp}:7000`, '--expect', LINES_ID, '--identity', CLIENT_ID,
    '--ca-cert', mesh.caFile, '--ca-key', join(stateDir, 'ca.key'), '--cert', cert,
  ]);
  type Stats = { hboneServer: { refusals: Record<string, number> } };
  const refusals = async () => (await mesh.agentAdmin<Stats>('node2', '/stats')).hboneServer.refusals['tls-handshake'] ?? 0;
  const denied = async () => {
    const m = (await mesh.agentMetrics('node2')).match(/^weft_connections_denied_total\{[^}]*reason="tls-handshake"[^}]*\} (\d+)/m);
    return m ? Number(m[1]) : 0;
  };

  const valid = await probe('valid');
  assert.equal(valid.ok, true, `the control: a valid mesh certificate gets through (${valid.message})`);
  assert.equal(valid.reply, 'ping\n', 'and reaches the server');

  const refusalsBefore = await refusals();
  const deniedBefore = await denied();
  for (const kind of ['expired', 'self-signed', 'none']) {
    const started = Date.now();
    const r = await probe(kind);
    assert.equal(r.ok, false, `a ${kind} client certificate is refused`);
    assert.ok(Date.now() - started < 10_000, `and refused promptly (${Date.now() - started} ms)`);
    console.log(`# ${kind} client certificate: refused (${r.code ?? ''} ${r.message ?? ''})`);
  }
  // The server counts after its side of the handshake failed; give it a moment.
  let counted = 0;
  for (let i = 0; i < 20 && counted < 3; i++) {
    counted = (await refusals()) - refusalsBefore;
    if (counted < 3) await sleep(100);
  }
  assert.equal(counted, 3, 'each refusal is counted in the HBONE server stats');
  assert.equal((await denied()) - deniedBefore, 3, 'and in weft_connections_denied_total{reason="tls-handshake"}');
});
