// The one guard of every listener that is not a data path (lib/listener-limits.ts
// limitHttpListener), run by each of its callers with its own bounds and labels: the agent's side
// ports (agent/src/admin.ts limitSidePort, weft_side_port_requests_refused_total{port,reason}) and
// the other components' metrics and readiness listeners (statusListenerLimits,
// weft_<component>_listener_refused_total{listener,reason}). What a client's error gets is Node's
// own answer, written once: a client that holds its side of the connection open and keeps sending
// is neither refused (and counted) again nor kept past a second.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { Registry } from 'prom-client';
import { connectionCounter, statusListenerLimits } from '../../lib/listener-limits.ts';
import { jsonServer, limitSidePort } from '../../agent/src/admin.ts';
import { AgentMetrics } from '../../agent/src/metrics.ts';
import type { Logger } from '../../lib/log.ts';
import { until as waitUntil } from '../lab/wait.ts';

/** The lab's until (test/lab/wait.ts), polled every 25 ms. */
const until = (what: string, cond: () => Promise<boolean> | boolean, ms: number) => waitUntil(what, cond, ms, { intervalMs: 25 });

const HEADERS_TIMEOUT_MS = 500;

interface Listener {
  server: http.Server;
  port: number;
  /** The caller's count of a refusal, by its own label. */
  count(label: string): Promise<number>;
  lines: Array<{ msg: string; fields: Record<string, unknown> }>;
  close(): void;
}

async function listening(server: http.Server, count: Listener['count'], lines: Listener['lines']): Promise<Listener> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { server, port: (server.address() as net.AddressInfo).port, count, lines, close: () => { server.closeAllConnections(); server.close(); } };
}

function recorder(): { lines: Listener['lines']; log: Logger } {
  const lines: Listener['lines'] = [];
  return { lines, log: { debug() {}, info() {}, error() {}, warn: (msg, fields = {}) => lines.push({ msg, fields }) } };
}

/** Each caller of the guard; `labels` its names for the guard's refusals (absent: not counted). */
const CALLERS: Array<{ name: string; labels: { timeout: string; badRequest?: string; inactive?: string }; start(): Promise<Listener> }> = [
  {
    name: 'the agent\'s side port (limitSidePort)',
    labels: { timeout: 'header_timeout', inactive: 'idle' },
    async start() {
      const metrics = new AgentMetrics();
      const { lines, log } = recorder();
      const refused = metrics.sidePortRefusals('metrics', log);
      const server = jsonServer({ '/x': () => ({}) }, { refused });
      // Idle far past the linger, so that a connection kept until it would be seen.
      limitSidePort(server, { refused, headersTimeoutMs: HEADERS_TIMEOUT_MS, idleTimeoutMs: 8_000 });
      return listening(server, async (label) => Number(new RegExp(`^weft_side_port_requests_refused_total\\{port="metrics",reason="${label}"\\} (\\d+)$`, 'm').exec(await metrics.registry.metrics())?.[1] ?? 0), lines);
    },
  },
  {
    name: 'a status listener (statusListenerLimits)',
    labels: { timeout: 'request-timeout', badRequest: 'bad-request' },
    async start() {
      const registry = new Registry();
      const { lines, log } = recorder();
      const server = http.createServer((_req, res) => res.end('ok\n'));
      statusListenerLimits({ registry, metric: 'weft_test_listener_refused_total', log, limits: { headersTimeoutMs: HEADERS_TIMEOUT_MS, requestTimeoutMs: 2 * HEADERS_TIMEOUT_MS } }).limit({ metrics: server });
      return listening(server, async (label) => Number(new RegExp(`^weft_test_listener_refused_total\\{listener="metrics",reason="${label}"\\} (\\d+)$`, 'm').exec(await registry.metrics())?.[1] ?? 0), lines);
    },
  },
];

/** A client that never closes its side: what it was sent, and its socket (destroy it when done). */
function holdingClient(port: number, first: string): { socket: net.Socket; received: () => string } {
  const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true }, () => socket.write(first));
  let received = '';
  socket.setEncoding('latin1').on('data', (d: string) => (received += d));
  socket.on('error', () => {});
  return { socket, received: () => received };
}

const connections = (s: http.Server) => new Promise<number>((r) => s.getConnections((_e, n) => r(n)));

for (const caller of CALLERS) {
  // RFC 9110 15.5.9 (408): the server "SHOULD send a "close" connection option ... since 408
  // implies that the server has decided to close the connection rather than continue waiting".
  for (const after of ['sends nothing more', 'keeps sending']) {
    test(`${caller.name}: a request head that never ends is answered 408 once and counted once; the client holds its side open and ${after}, and the server closes the connection a second after the answer, not at a later deadline`, async () => {
      const l = await caller.start();
      const c = holdingClient(l.port, 'GET /x HTTP/1.1\r\nHost: n\r\n');
      // Header bytes now and then until the answer; then garbage, which the parser would refuse again.
      const drip = setInterval(() => {
        if (!c.received()) c.socket.write('x');
        else if (after === 'keeps sending' && c.socket.writable) c.socket.write('\r\nnot http\r\n\r\n');
      }, 100);
      try {
        await until('the 408', () => c.received().startsWith('HTTP/1.1 408 '), 10_000);
        await until('the server dropped the connection the client holds', async () => (await connections(l.server)) === 0, 4_000);
        assert.equal(c.received().split('HTTP/1.1 ').length - 1, 1, `one answer: ${JSON.stringify(c.received())}`);
        assert.equal(await l.count(caller.labels.timeout), 1, 'counted once');
        if (caller.labels.badRequest) assert.equal(await l.count(caller.labels.badRequest), 0, 'what it sent after its answer is no refusal of its own');
        if (caller.labels.inactive) assert.equal(await l.count(caller.labels.inactive), 0, 'not left to the idle deadline');
        assert.equal(l.lines.filter((x) => x.fields['reason'] === caller.labels.timeout).length, 1, JSON.stringify(l.lines));
      } finally {
        clearInterval(drip);
        c.socket.destroy();
        l.close();
      }
    });
  }

  // RFC 6585 section 5: 431 Request Header Fields Too Large, what Node answers a head past its
  // --max-http-header-size (16 KiB) when nobody listens for its clientError.
  test(`${caller.name}: a request head past Node's 16 KiB is answered 431, as Node answers it; counted where the caller labels a bad request`, async () => {
    const l = await caller.start();
    const c = holdingClient(l.port, `GET /x HTTP/1.1\r\nHost: n\r\nx-big: ${'a'.repeat(20_000)}\r\n\r\n`);
    try {
      await until('the answer', () => c.received().includes('\r\n\r\n'), 10_000);
      assert.match(c.received(), /^HTTP\/1\.1 431 /);
      await until('the server dropped the connection', async () => (await connections(l.server)) === 0, 4_000);
      if (caller.labels.badRequest) {
        assert.equal(await l.count(caller.labels.badRequest), 1);
        assert.ok(l.lines.some((x) => x.fields['reason'] === caller.labels.badRequest), JSON.stringify(l.lines));
      }
    } finally {
      c.socket.destroy();
      l.close();
    }
  });
}

// The HBONE server keeps each port's part of its total (listen's `reserved`) by that port's counter:
// its `open` is the connections it admitted and not yet closed, a refused one never counted.
test('connectionCounter: open counts the connections admitted until each closes; one refused (per source, total) is never counted', async () => {
  const refused: string[] = [];
  const counter = connectionCounter({ perSource: 2, total: 3 }, (_from, _max, cap) => refused.push(cap));
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    counter.admit(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as net.AddressInfo).port;
  const clients: net.Socket[] = [];
  try {
    const dial = (localAddress: string) => {
      const c = net.connect({ port, host: '127.0.0.1', localAddress });
      c.on('error', () => {});
      clients.push(c);
    };
    dial('127.0.0.1'); dial('127.0.0.1'); dial('127.0.0.1');
    await until('three seen', () => sockets.size === 3, 5_000);
    assert.deepEqual([counter.open, refused], [2, ['per-source']]);
    dial('127.0.0.2'); dial('127.0.0.3');
    await until('five seen', () => sockets.size === 5, 5_000);
    assert.deepEqual([counter.open, refused], [3, ['per-source', 'total']]);
    clients[0]!.destroy();
    await until('a close is counted', () => counter.open === 2, 5_000);
  } finally {
    for (const c of clients) c.destroy();
    server.close();
  }
});
