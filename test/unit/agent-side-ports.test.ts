// The agent's side ports (admin on loopback; metrics 15020 and readiness 15021 on every address,
// reachable by any pod) against a hostile client: a request target that is not a URL
// (RFC 9112 section 3.2: origin-form or absolute-form; `http://[` is neither) is answered
// 400, counted in weft_side_port_requests_refused_total{port,reason="bad_target"} and logged
// with the peer and the target; it had thrown in the request handler and ended the agent (the
// node's data path) at one unauthenticated request.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { debugTokenRefused, jsonServer, limitSidePort } from '../../agent/src/admin.ts';
import { DEBUG_TOKEN_HEADER, debugThroughAdmin } from '../../lib/debug-http.ts';
import { AgentMetrics } from '../../agent/src/metrics.ts';
import type { Logger } from '../../lib/log.ts';
import { until as waitUntil } from '../lab/wait.ts';

/** One raw HTTP/1.1 exchange: the status line of the answer. */
function exchange(port: number, target: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.connect(port, '127.0.0.1', () => c.end(`GET ${target} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n`));
    let out = '';
    c.setEncoding('latin1');
    c.on('data', (d: string) => (out += d));
    c.on('close', () => resolve(out.split('\r\n')[0] ?? ''));
    c.on('error', reject);
    c.setTimeout(5_000, () => c.destroy(new Error(`no answer to GET ${target}`)));
  });
}

async function listening(server: http.Server): Promise<number> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return (server.address() as AddressInfo).port;
}

test('a request target that is not a URL (RFC 9112 3.2) gets 400 on the metrics port, counted and logged; the port keeps serving', async () => {
  const metrics = new AgentMetrics();
  const lines: Array<{ msg: string; fields: Record<string, unknown> }> = [];
  const log: Logger = { debug() {}, info() {}, error() {}, warn: (msg, fields = {}) => lines.push({ msg, fields }) };
  const server = jsonServer({}, { text: { '/metrics': async () => ({ type: 'text/plain', body: await metrics.registry.metrics() }) }, refused: metrics.sidePortRefusals('metrics', log) });
  const port = await listening(server);
  try {
    for (const target of ['http://[/metrics', 'http://:99999/metrics', '//[/metrics', 'http://%zz/metrics']) {
      assert.match(await exchange(port, target), /^HTTP\/1\.1 400 /, target);
    }
    assert.match(await exchange(port, '/metrics'), /^HTTP\/1\.1 200 /, 'the port still serves');
    assert.match(await exchange(port, 'http://node/metrics'), /^HTTP\/1\.1 200 /, 'absolute-form is a URL (RFC 9112 3.2.2)');
    const text = await metrics.registry.metrics();
    assert.match(text, /weft_side_port_requests_refused_total\{port="metrics",reason="bad_target"\} 4/, text);
    assert.equal(lines.length, 4);
    assert.equal(lines[0]!.fields.port, 'metrics');
    assert.equal(lines[0]!.fields.reason, 'bad_target');
    assert.equal(lines[0]!.fields.target, 'http://[/metrics');
    assert.match(String(lines[0]!.fields.peer), /^127\.0\.0\.1:\d+$/);
  } finally {
    server.closeAllConnections();
    server.close();
  }
});

test('the admin routes and the readiness port answer a bad target with 400 too, naming it', async () => {
  const server = jsonServer({ '/healthz/ready': () => ({ ready: true }) });
  const port = await listening(server);
  try {
    assert.match(await exchange(port, 'http://[/healthz/ready'), /^HTTP\/1\.1 400 /);
    assert.match(await exchange(port, '/healthz/ready'), /^HTTP\/1\.1 200 /);
  } finally {
    server.closeAllConnections();
    server.close();
  }
});

// The agent runs in the node's network: its admin port's loopback is every node process's (and
// every hostNetwork pod's). Istio's ztunnel serves its admin port (15000) on the loopback of its own
// pod network (https://istio.io/latest/docs/ops/deployment/application-requirements/#ports-used-by-istio:
// "Envoy admin port ... localhost only"); here only root's sockets are answered.

/** Runs `curl` as uid/gid 65534 (nobody) against `url`: its status line and body. */
function curlAsNobody(url: string): Promise<{ code: string; body: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'curl', '-sS', '-m', '5', '-w', '\n%{http_code}', url], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    p.on('error', reject);
    p.on('close', () => {
      const i = out.lastIndexOf('\n');
      resolve({ code: out.slice(i + 1), body: out.slice(0, i) + err });
    });
  });
}

/** An admin server with a config dump and a flow stream, behind the guard the agent puts it behind. */
async function guardedAdmin(o: { ownerUids?: number[]; idleTimeoutMs?: number; headersTimeoutMs?: number; maxConnectionsPerSource?: number } = {}) {
  const metrics = new AgentMetrics();
  const lines: Array<{ msg: string; fields: Record<string, unknown> }> = [];
  const log: Logger = { debug() {}, info() {}, error() {}, warn: (msg, fields = {}) => lines.push({ msg, fields }) };
  const refused = metrics.sidePortRefusals('admin', log);
  const server = jsonServer({ '/config_dump': () => ({ config: 'the node config SECRET-ish' }) }, {
    raw: { '/flows': (_req, res) => { res.writeHead(200).write('{"type":"hello"}\n'); } },
    refused,
  });
  limitSidePort(server, { refused, ...o });
  const port = await listening(server);
  const count = async (reason: string) => Number(new RegExp(`weft_side_port_requests_refused_total\\{port="admin",reason="${reason}"\\} (\\d+)`).exec(await metrics.registry.metrics())?.[1] ?? 0);
  return { server, port, lines, count, close: () => { server.closeAllConnections(); server.close(); } };
}

/** The lab's until (test/lab/wait.ts), polled every 25 ms, 10 s unless told. */
const until = (what: string, cond: () => Promise<boolean> | boolean, ms = 10_000) => waitUntil(what, cond, ms, { intervalMs: 25 });

test('the admin port on the node loopback refuses a process of another uid (65534): 403 before any route, counted peer_uid, logged with the uid; root is served', { skip: process.getuid?.() !== 0 ? 'needs root to drop to uid 65534' : false }, async () => {
  const a = await guardedAdmin({ ownerUids: [0] });
  try {
    const nobody = await curlAsNobody(`http://127.0.0.1:${a.port}/config_dump`);
    assert.equal(nobody.code, '403', nobody.body);
    assert.doesNotMatch(nobody.body, /SECRET/);
    assert.match(nobody.body, /uid 0/, 'the answer says who may read it');
    const flows = await curlAsNobody(`http://127.0.0.1:${a.port}/flows`);
    assert.equal(flows.code, '403', flows.body);
    assert.equal(await a.count('peer_uid'), 2);
    const line = a.lines.find((l) => l.fields.reason === 'peer_uid');
    assert.ok(line, JSON.stringify(a.lines));
    assert.equal(line.fields.uid, 65534);
    assert.equal(line.fields.port, 'admin');
    assert.match(line.msg, /answers only root/);
    // Root (weftctl on the node, kubectl exec and port-forward) is served, a stream included.
    const root = await fetch(`http://127.0.0.1:${a.port}/config_dump`);
    assert.equal(root.status, 200);
    assert.match(await root.text(), /SECRET/);
    assert.match(await exchange(a.port, '/config_dump'), /^HTTP\/1\.1 200 /);
  } finally {
    a.close();
  }
});

test('a refused process cannot use up root\'s share of the admin port: its connections, held open after the 403, neither count against the per-source cap nor stay open', { skip: process.getuid?.() !== 0 ? 'needs root to drop to uid 65534' : false }, async () => {
  const a = await guardedAdmin({ ownerUids: [0], maxConnectionsPerSource: 2 });
  // As nobody: five connections, each sends a request, reads nothing and never closes its side.
  const script = `import socket,sys
s=[socket.create_connection(("127.0.0.1",${a.port})) for _ in range(5)]
for c in s: c.sendall(b"GET /config_dump HTTP/1.1\\r\\nhost: x\\r\\n\\r\\n")
print("held", flush=True)
sys.stdin.read()`;
  const holder = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '/usr/bin/python3', '-c', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  try {
    await new Promise<void>((resolve, reject) => {
      holder.stdout.setEncoding('utf8').on('data', (d: string) => { if (d.includes('held')) resolve(); });
      holder.on('exit', (c) => reject(new Error(`holder exited ${c}`)));
    });
    await until('the five refused', async () => (await a.count('peer_uid')) === 5);
    // Root is served while they are held, more than the cap's worth of times in a row.
    for (let i = 0; i < 3; i++) assert.equal((await fetch(`http://127.0.0.1:${a.port}/config_dump`)).status, 200);
    assert.equal(await a.count('source_connections'), 0, 'the refused connections took none of the share');
    await until('the server dropped the refused connections the client still holds', () => new Promise((r) => a.server.getConnections((_e, n) => r(n === 0))));
  } finally {
    holder.kill('SIGKILL');
    a.close();
  }
});

test('a side port holds at most MAX_SIDE_CONNECTIONS_PER_SOURCE connections per source: the next is closed, counted source_connections and logged; another source is served', async () => {
  const a = await guardedAdmin({ maxConnectionsPerSource: 4 });
  const held: net.Socket[] = [];
  try {
    for (let i = 0; i < 4; i++) {
      const c = net.connect(a.port, '127.0.0.1');
      c.on('error', () => {});
      held.push(c);
      await once(c, 'connect');
    }
    await until('4 connections held', () => new Promise((r) => a.server.getConnections((_e, n) => r(n === 4))));
    const fifth = net.connect(a.port, '127.0.0.1');
    fifth.on('error', () => {});
    await once(fifth, 'close');
    assert.equal(await a.count('source_connections'), 1);
    const line = a.lines.find((l) => l.fields.reason === 'source_connections');
    assert.ok(line, JSON.stringify(a.lines));
    assert.match(String(line.fields.peer), /^127\.0\.0\.1:/);
    // Another source address (all of 127/8 is this host's) is not held back by the first's.
    const other = net.connect({ port: a.port, host: '127.0.0.1', localAddress: '127.0.0.2' }, () => other.end('GET /config_dump HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n'));
    let answer = '';
    other.setEncoding('latin1').on('data', (d: string) => (answer += d));
    await once(other, 'close');
    assert.match(answer, /^HTTP\/1\.1 200 /);
    // The first source's room comes back as its connections close.
    held.pop()!.destroy();
    await until('a connection freed', () => new Promise((r) => a.server.getConnections((_e, n) => r(n === 3))));
    assert.match(await exchange(a.port, '/config_dump'), /^HTTP\/1\.1 200 /);
  } finally {
    for (const c of held) c.destroy();
    a.close();
  }
});

test('a side-port connection that sends nothing is closed after the idle deadline, one with half a request head after the header deadline (408); each counted and logged; a /flows stream is not idle', async () => {
  // The idle deadline is 15 times the drip below, so that a loaded machine's stall cannot pass for
  // idleness on the partial head, which only the header deadline (later) may end; the silent
  // connection meets the idle deadline first.
  const a = await guardedAdmin({ idleTimeoutMs: 1_500, headersTimeoutMs: 3_000 });
  const silent = net.connect(a.port, '127.0.0.1');
  const partial = net.connect(a.port, '127.0.0.1', () => partial.write('GET /config_dump HTTP/1.1\r\nHost: n\r\n'));
  const stream = net.connect(a.port, '127.0.0.1', () => stream.write('GET /flows HTTP/1.1\r\nHost: n\r\n\r\n'));
  try {
    let partialAnswer = '';
    partial.setEncoding('latin1').on('data', (d: string) => (partialAnswer += d));
    // The partial head trickles a byte now and then, so only the header deadline can end it.
    const drip = setInterval(() => partial.writable && partial.write('x'), 100);
    try {
      await Promise.all([once(silent, 'close'), once(partial, 'close')]);
    } finally {
      clearInterval(drip);
    }
    assert.match(partialAnswer, /^HTTP\/1\.1 408 /);
    assert.equal(await a.count('idle'), 1);
    assert.equal(await a.count('header_timeout'), 1);
    assert.ok(a.lines.some((l) => l.fields.reason === 'idle' && /idle/.test(l.msg)), JSON.stringify(a.lines));
    assert.ok(a.lines.some((l) => l.fields.reason === 'header_timeout'), JSON.stringify(a.lines));
    assert.ok(!stream.destroyed, 'the quiet /flows stream stays open');
  } finally {
    silent.destroy();
    partial.destroy();
    stream.destroy();
    a.close();
  }
});

// `--debug-endpoints` (on with `--dashboard`) serves the admin port's read-only paths on 15020 for
// the API server's pod proxy, which cannot be told from any pod reaching the node's address; the
// install's token can (the pod proxy passes a request's headers on). Istio keeps this data on its
// components' loopback admin ports
// (https://istio.io/latest/docs/ops/deployment/application-requirements/#ports-used-by-istio).
test('with the debug paths open on the metrics port, a pod without the install\'s token gets 403 from every one, counted debug-token-<why> (missing, wrong, unset: the controller\'s labels) and logged; the token is served; /metrics stays open', async () => {
  const metrics = new AgentMetrics();
  const lines: Array<{ msg: string; fields: Record<string, unknown> }> = [];
  const log: Logger = { debug() {}, info() {}, error() {}, warn: (msg, fields = {}) => lines.push({ msg, fields }) };
  const refused = metrics.sidePortRefusals('metrics', log);
  const admin = jsonServer({ '/config_dump': () => ({ config: 'the node config SECRET-ish' }), '/bpf': () => ({ pods: ['SECRET-ish'] }) }, { raw: { '/flows': (_q, res) => { res.writeHead(200).end('{"peer":"SECRET-ish"}\n'); } } });
  const prom = jsonServer({}, { text: { '/metrics': async () => ({ type: 'text/plain', body: 'up 1\n' }) } });
  let token: string | undefined = 'the-install-token';
  const server = http.createServer(debugThroughAdmin(admin, ['/config_dump', '/bpf', '/flows'], (req, res) => prom.emit('request', req, res), {
    token: () => token,
    refused: debugTokenRefused(refused),
  }));
  limitSidePort(server, { refused });
  const port = await listening(server);
  const get = (path: string, headers: Record<string, string> = {}) => fetch(`http://127.0.0.1:${port}${path}`, { headers }).then(async (r) => ({ status: r.status, body: await r.text() }));
  try {
    for (const path of ['/debug/config_dump', '/debug/bpf', '/debug/flows', '/debug/flows?recent=1']) {
      const r = await get(path);
      assert.equal(r.status, 403, `${path}: ${r.body}`);
      assert.doesNotMatch(r.body, /SECRET/);
      assert.match(r.body, new RegExp(DEBUG_TOKEN_HEADER));
    }
    const wrong = await get('/debug/config_dump', { [DEBUG_TOKEN_HEADER]: 'the-install-tokeX' });
    assert.equal(wrong.status, 403);
    // Labelled as the controller's refusals are (debug-token-<why>, lib/debug-http.ts admitDebugRequest).
    const count = async (why: string) => Number(new RegExp(`^weft_side_port_requests_refused_total\\{port="metrics",reason="debug-token-${why}"\\} (\\d+)$`, 'm').exec(await metrics.registry.metrics())?.[1] ?? 0);
    assert.equal(await count('missing'), 4);
    assert.equal(await count('wrong'), 1);
    const line = lines.find((l) => l.fields.reason === 'debug-token-wrong');
    assert.ok(line, JSON.stringify(lines));
    assert.equal(line.fields.target, '/debug/config_dump');
    assert.match(line.msg, /another token than the install's/);
    assert.match(lines.find((l) => l.fields.reason === 'debug-token-missing')?.msg ?? '', /without the install's debug token/);
    // The operator's path (weftctl, the dashboard through the pod proxy) carries the token.
    const ok = await get('/debug/config_dump', { [DEBUG_TOKEN_HEADER]: 'the-install-token' });
    assert.equal(ok.status, 200);
    assert.match(ok.body, /SECRET/);
    assert.equal((await get('/metrics')).status, 200, 'Prometheus needs no token');
    // A token that cannot be read (the Secret not mounted yet) opens nothing.
    token = undefined;
    assert.equal((await get('/debug/config_dump', { [DEBUG_TOKEN_HEADER]: 'the-install-token' })).status, 403);
    assert.equal(await count('unset'), 1);
    assert.match(lines.find((l) => l.fields.reason === 'debug-token-unset')?.msg ?? '', /cannot read the install's debug token/);
  } finally {
    server.closeAllConnections();
    server.close();
  }
});
