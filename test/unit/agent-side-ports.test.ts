// The agent's side ports (admin on loopback; metrics 15020 and readiness 15021 on every address,
// reachable by any pod) against a hostile client: a request target that is not a URL
// (RFC 9112 section 3.2: origin-form or absolute-form; `http://[` is neither) is answered
// 400, counted in weft_side_port_requests_refused_total{port,reason="bad_target"} and logged
// with the peer and the target; it had thrown in the request handler and ended the agent (the
// node's data path) at one unauthenticated request.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import type http from 'node:http';
import type { AddressInfo } from 'node:net';
import { jsonServer } from '../../agent/src/admin.ts';
import { AgentMetrics } from '../../agent/src/metrics.ts';
import type { Logger } from '../../lib/log.ts';

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
