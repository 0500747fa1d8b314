// The metrics and readiness listeners of the controller, the waypoint and the east-west gateway
// (lib/listener-limits.ts statusListenerLimits): every pod reaches them, so one source holds at most
// DEFAULT_STATUS_LISTENER_LIMITS.maxConnectionsPerSource connections and a request head must
// arrive within its deadline; each connection closed is counted by listener and reason, and logged.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import { Registry } from 'prom-client';
import { DEFAULT_STATUS_LISTENER_LIMITS, statusListenerLimits } from '../../lib/listener-limits.ts';
import type { Logger } from '../../lib/log.ts';
import { until as waitUntil } from '../lab/wait.ts';

/** The lab's until (test/lab/wait.ts), polled every 25 ms, 10 s unless told. */
const until = (what: string, cond: () => Promise<boolean> | boolean, ms = 10_000) => waitUntil(what, cond, ms, { intervalMs: 25 });

test('a status listener holds at most maxConnectionsPerSource connections from one source and cuts a request head that never ends; each closed connection counted by listener and reason, and logged', async () => {
  const registry = new Registry();
  const lines: Array<{ msg: string; fields: Record<string, unknown> }> = [];
  const log: Logger = { debug() {}, info() {}, error() {}, warn: (msg, fields = {}) => lines.push({ msg, fields }) };
  const metrics = http.createServer((_req, res) => res.end('ok\n'));
  const ready = http.createServer((_req, res) => res.end('ready\n'));
  statusListenerLimits({ registry, metric: 'weft_test_listener_refused_total', log, limits: { headersTimeoutMs: 300, requestTimeoutMs: 600 } }).limit({ metrics, readiness: ready });
  await Promise.all([metrics, ready].map((s) => new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()))));
  const port = (s: http.Server) => (s.address() as net.AddressInfo).port;
  const count = async (listener: string, reason: string) => Number(new RegExp(`weft_test_listener_refused_total\\{listener="${listener}",reason="${reason}"\\} (\\d+)`).exec(await registry.metrics())?.[1] ?? 0);
  const held: net.Socket[] = [];
  try {
    const max = DEFAULT_STATUS_LISTENER_LIMITS.maxConnectionsPerSource;
    for (let i = 0; i < max; i++) {
      const c = net.connect(port(metrics), '127.0.0.1');
      c.on('error', () => {});
      held.push(c);
      await once(c, 'connect');
    }
    await until(`${max} connections held`, () => new Promise((r) => metrics.getConnections((_e, n) => r(n === max))));
    const over = net.connect(port(metrics), '127.0.0.1');
    over.on('error', () => {});
    await once(over, 'close');
    assert.equal(await count('metrics', 'too-many-connections'), 1);
    // The readiness listener keeps its own count: the metrics flood does not shut out the prober.
    const probe = await fetch(`http://127.0.0.1:${port(ready)}/`);
    assert.equal(probe.status, 200);
    // A request head that never ends is cut at its deadline (408).
    const slow = net.connect(port(ready), '127.0.0.1', () => slow.write('GET / HTTP/1.1\r\nHost: x\r\n'));
    let answer = '';
    slow.setEncoding('latin1').on('data', (d: string) => (answer += d));
    await once(slow, 'close');
    assert.match(answer, /^HTTP\/1\.1 408 /);
    assert.equal(await count('readiness', 'request-timeout'), 1);
    assert.ok(lines.some((l) => l.fields.listener === 'metrics' && l.fields.reason === 'too-many-connections'), JSON.stringify(lines));
    assert.ok(lines.some((l) => l.fields.listener === 'readiness' && l.fields.reason === 'request-timeout'), JSON.stringify(lines));
  } finally {
    for (const c of held) c.destroy();
    for (const s of [metrics, ready]) { s.closeAllConnections(); s.close(); }
  }
});
