// WebSocket through the waypoint: the opening handshake (RFC 6455 section 4.1, an HTTP/1.1 Upgrade,
// RFC 9110 section 7.8) goes through the request pipeline like any request, and a 101 joins the two
// connections. Gateway API: HTTPRouteBackendProtocolWebSocket (httproute-backend-protocol-websocket.go)
// has the mesh-tier case; these are the engine's, from the user's side and the attacker's.
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { AuthorizationPolicy } from '../../lib/model/mesh.ts';
import { acceptWebSocket } from '../../cli/local/apps/websocket.ts';
import { upgradeOf } from '../../lib/websocket.ts';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import { CALLER, backend, config, endpoint, metricSamples, route, service, startTunnelListener, trafficPolicy, type Listener } from '../../waypoint/testing/harness.ts';
import { until } from '../lab/wait.ts';

interface WsBackend {
  port: number;
  /** Request heads the backend saw (upgrades and ordinary requests), in order. */
  seen: Array<{ url: string; upgrade: boolean; headers: http.IncomingHttpHeaders }>;
  close(): Promise<void>;
}

/** A backend that answers WebSocket handshakes with an echo (text and binary) and other requests with 200. */
async function startWsBackend(opts: { refuseUpgrade?: boolean; hold?: (url: string) => Promise<void> | undefined } = {}): Promise<WsBackend> {
  const b: WsBackend = { port: 0, seen: [], close: async () => {} };
  const sockets = new Set<net.Socket>();
  const server = http.createServer((req, res) => {
    b.seen.push({ url: req.url ?? '', upgrade: false, headers: req.headers });
    req.resume();
    const held = opts.hold?.(req.url ?? '');
    if (held) void held.then(() => res.end(`plain ${req.url}`));
    else res.end(`plain ${req.url}`);
  });
  server.on('connection', (s: net.Socket) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
    b.seen.push({ url: req.url ?? '', upgrade: true, headers: req.headers });
    if (opts.refuseUpgrade) {
      socket.end('HTTP/1.1 426 Upgrade Required\r\nconnection: close\r\ncontent-length: 4\r\n\r\nnope');
      return;
    }
    acceptWebSocket(req, socket, head, (peer, data, text) => peer.send(text ? data.toString() : data), { 'x-backend': 'ws' });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  b.port = (server.address() as AddressInfo).port;
  b.close = () => new Promise((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); });
  return b;
}

/**
 * Sends raw bytes on a new connection to the listener; resolves with what was read once the waypoint
 * closed the connection (`closed`), or once `complete` says the answer is all there (the connection
 * is then left open, and closed by us).
 */
function rawExchange(port: number, bytes: string, complete?: (text: string) => boolean): Promise<{ text: string; closed: boolean }> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(bytes));
    let text = '';
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`no complete answer within 5 s: ${JSON.stringify(text)}`)); }, 5000);
    s.on('data', (c: Buffer) => {
      text += c.toString('latin1');
      if (complete?.(text)) { clearTimeout(timer); s.destroy(); resolve({ text, closed: false }); }
    });
    s.on('end', () => { clearTimeout(timer); s.destroy(); resolve({ text, closed: true }); });
    s.on('error', (err) => { clearTimeout(timer); reject(err); });
  });
}

const HANDSHAKE = (path: string, extra = ''): string => `GET ${path} HTTP/1.1\r\nHost: chat.shop.svc.cluster.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
  `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n${extra}\r\n`;

function openWs(url: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    ws.addEventListener('open', () => resolve(ws), { once: true });
    ws.addEventListener('error', () => reject(new Error(`WebSocket to ${url} failed`)), { once: true });
  });
}

function nextMessage(ws: WebSocket): Promise<string | Buffer> {
  return new Promise((resolve) => ws.addEventListener('message', (e) => resolve(typeof e.data === 'string' ? e.data : Buffer.from(e.data as ArrayBuffer)), { once: true }));
}

function denyAdmin(): AuthorizationPolicy {
  return {
    name: 'deny-admin', namespace: 'shop', action: 'DENY', scope: 'service', targetServices: ['shop/chat'], layer: 'L7',
    rules: [{ from: [{ principals: [CALLER] }], to: [{ paths: ['/admin', '/admin/*'] }], when: [], layer: 'L7' }],
  };
}

// One classifier for the waypoint's node:http (which requests it takes as upgrades), its pipeline
// (which of those it refuses) and the sample echo app (which it answers).
it('classifies an Upgrade: websocket only for a GET whose whole value is websocket; h2c alone is none; anything else other (RFC 6455 section 4.1)', () => {
  const of = (method: string, upgrade?: string): ReturnType<typeof upgradeOf> => upgradeOf({ method, headers: upgrade === undefined ? {} : { upgrade } } as http.IncomingMessage);
  assert.equal(of('GET', 'websocket'), 'websocket');
  assert.equal(of('GET', ' WebSocket '), 'websocket');
  assert.equal(of('POST', 'websocket'), undefined);
  assert.equal(of('GET'), undefined);
  assert.equal(of('GET', 'h2c'), undefined);
  for (const other of ['websocket, h2c', 'h2c, websocket', 'foo', 'TLS/1.2', '']) assert.equal(of('GET', other), 'other', other);
  assert.equal(of('POST', 'foo'), 'other');
});

describe('waypoint: WebSocket upgrades (RFC 6455, RFC 9110 section 7.8)', () => {
  let ws: WsBackend;
  let refusing: WsBackend;
  let engine: WaypointEngine;
  let chat: Listener;
  let legacy: Listener;

  before(async () => {
    ws = await startWsBackend();
    refusing = await startWsBackend({ refuseUpgrade: true });
    engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    engine.applyConfig(config({
      services: [service('chat', '10.96.0.30', [endpoint(ws.port)]), service('legacy', '10.96.0.31', [endpoint(refusing.port)])],
      routes: [route('chat', 'chat', [{
        backends: [backend('chat')],
        filters: [{ type: 'RequestHeaderModifier', headers: { set: [{ name: 'x-routed', value: 'chat-route' }], add: [], remove: [] } }],
      }])],
      policies: [denyAdmin()],
    }));
    chat = await startTunnelListener(engine, '10.96.0.30:80');
    legacy = await startTunnelListener(engine, '10.96.0.31:80');
  });

  after(async () => {
    await chat.close();
    await legacy.close();
    await engine.close();
    await ws.close();
    await refusing.close();
  });

  it('carries a WebSocket both ways, text and binary, through the route and its filters, and records it as a 101 when it closes', async () => {
    const client = await openWs(`ws://127.0.0.1:${chat.port}/socket`);
    let reply = nextMessage(client);
    client.send('Websocket Support!');
    assert.equal(await reply, 'Websocket Support!');
    reply = nextMessage(client);
    client.send(new Uint8Array([1, 2, 3, 4, 5, 6, 7]));
    assert.deepEqual(await reply, Buffer.from([1, 2, 3, 4, 5, 6, 7]));
    // A large message crosses intact (several reads on each side).
    const big = 'x'.repeat(300_000);
    reply = nextMessage(client);
    client.send(big);
    assert.equal(await reply, big);
    const hs = ws.seen.find((s) => s.url === '/socket');
    assert.ok(hs?.upgrade, 'the backend saw an upgrade request');
    assert.equal(hs.headers['x-routed'], 'chat-route', 'the route\'s RequestHeaderModifier applies to the handshake');
    assert.equal(hs.headers['upgrade'], 'websocket');
    assert.match(String(hs.headers['via']), /waypoint\.shop/);
    // The open WebSocket holds its place under --max-requests, and gives it back when it closes.
    const active = async (): Promise<number> => (await metricSamples(engine, 'weft_waypoint_downstream_requests_active'))[0]?.value ?? -1;
    assert.equal(await active(), 1);
    const closed = new Promise((r) => client.addEventListener('close', r, { once: true }));
    client.close(1000);
    await closed;
    await until('the WebSocket\'s admission released', async () => (await active()) === 0, 5000);
    await until('a 101 in istio_requests_total', async () => (await metricSamples(engine, 'istio_requests_total')).some((s) => String(s.labels['response_code']) === '101' && s.labels['destination_service_name'] === 'chat'), 5000);
  });

  it('judges the handshake by L7 policy: a DENY answers 403 and closes, and the backend never sees the upgrade', async () => {
    const before = ws.seen.length;
    const r = await rawExchange(chat.port, HANDSHAKE('/admin/console'));
    assert.match(r.text, /^HTTP\/1\.1 403 /);
    assert.match(r.text, /x-weft-flags: RBAC/i);
    assert.match(r.text, /shop\/deny-admin/, 'the refusal names the policy');
    assert.match(r.text, /connection: close/i);
    assert.ok(r.closed, 'the waypoint closed the connection after the refusal');
    assert.equal(ws.seen.length, before, 'nothing reached the backend');
    // Recorded when the connection has closed on the waypoint's side too.
    await until('the refusal counted in istio_requests_total, flagged RBAC', async () => (await metricSamples(engine, 'istio_requests_total'))
      .some((s) => String(s.labels['response_code']) === '403' && s.labels['response_flags'] === 'RBAC' && s.value >= 1), 5000);
  });

  it('relays a backend that refuses the upgrade as a response and closes: bytes sent after the handshake never reach it as a request (smuggling)', async () => {
    const r = await rawExchange(legacy.port, HANDSHAKE('/ws') + 'GET /smuggled HTTP/1.1\r\nHost: legacy\r\n\r\n');
    assert.match(r.text, /^HTTP\/1\.1 426 /);
    assert.match(r.text, /connection: close/i);
    assert.ok(r.closed, 'the client connection is closed after the refused upgrade');
    assert.deepEqual(refusing.seen.map((s) => s.url), ['/ws'], 'the backend saw the handshake only');
  });

  // Envoy's HTTP/1 codec dispatches one request at a time (conn_manager_impl.cc onData), so a
  // handshake pipelined behind a GET is read after the GET is answered and upgraded as it would be
  // alone. node hands both over at once; the waypoint used to take the socket still owed to the GET
  // (ERR_HTTP_SOCKET_ASSIGNED, uncaught: the process exited).
  it('upgrades a handshake pipelined behind two GETs after they are answered, in order, carries its frames, and stays up', async () => {
    const s = net.connect(chat.port, '127.0.0.1', () => s.write('GET /before-ws-1 HTTP/1.1\r\nHost: chat\r\n\r\nGET /before-ws-2 HTTP/1.1\r\nHost: chat\r\n\r\n' + HANDSHAKE('/pipelined-ws')));
    s.on('error', () => {});
    let text = '';
    s.on('data', (c: Buffer) => { text += c.toString('latin1'); });
    try {
      await until('the 101 after both responses', () => /HTTP\/1\.1 101 [^]*\r\n\r\n/.test(text), 5000);
      assert.match(text, /^HTTP\/1\.1 200 [^]*plain \/before-ws-1HTTP\/1\.1 200 [^]*plain \/before-ws-2HTTP\/1\.1 101 /, JSON.stringify(text.slice(0, 160)));
      assert.match(text, /x-backend: ws/i);
      assert.deepEqual(ws.seen.filter((h) => h.url.startsWith('/before-ws') || h.url === '/pipelined-ws').map((h) => [h.url, h.upgrade]),
        [['/before-ws-1', false], ['/before-ws-2', false], ['/pipelined-ws', true]]);
      // A masked text frame (RFC 6455 section 5.2, mask key 0) comes back unmasked: the upgraded
      // connection reads the client though the socket waited paused behind the GETs.
      const at = text.length;
      s.write(Buffer.from([0x81, 0x82, 0, 0, 0, 0, 0x68, 0x69]));
      await until('the echoed frame', () => text.slice(at) === '\x81\x02hi', 5000, { explain: () => JSON.stringify(text.slice(at)) });
    } finally {
      s.destroy();
    }
  });

  // When the first of two GETs is answered, the second starts while the handshake behind it still
  // waits: the socket stays paused (holdH1's release resumes it only when no upgrade follows), so a
  // frame the client sends before the 101 is left in the socket for the upgraded connection's pipe.
  // Resumed there, node read the frame with no one listening and it was lost.
  it('keeps a frame sent while a pipelined handshake still waits behind a GET in the socket, and echoes it after the 101', async () => {
    let release!: () => void;
    const held = new Promise<void>((r) => { release = r; });
    const b = await startWsBackend({ hold: (url) => (url === '/held' ? held : undefined) });
    const e2 = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    e2.applyConfig(config({ services: [service('chat', '10.96.0.30', [endpoint(b.port)])] }));
    const l = await startTunnelListener(e2, '10.96.0.30:80');
    const requests = 'GET /first HTTP/1.1\r\nHost: chat\r\n\r\nGET /held HTTP/1.1\r\nHost: chat\r\n\r\n' + HANDSHAKE('/ws-behind');
    const frame = Buffer.from([0x81, 0x82, 0, 0, 0, 0, 0x68, 0x69]);
    const s = net.connect(l.port, '127.0.0.1', () => s.write(requests));
    s.on('error', () => {});
    let text = '';
    s.on('data', (c: Buffer) => { text += c.toString('latin1'); });
    try {
      await until('the first response', () => text.includes('plain /first'), 5000);
      // The first GET is answered and the second is at the backend, held: the handshake still waits.
      await until('the second GET at the backend', () => b.seen.some((h) => h.url === '/held'), 5000);
      s.write(frame);
      release();
      await until('the 101 after both responses', () => /HTTP\/1\.1 101 [^]*\r\n\r\n/.test(text), 5000);
      assert.match(text, /^HTTP\/1\.1 200 [^]*plain \/firstHTTP\/1\.1 200 [^]*plain \/heldHTTP\/1\.1 101 /, JSON.stringify(text.slice(0, 160)));
      await until('the echoed frame after the 101', () => text.endsWith('\x81\x02hi'), 5000, { explain: () => JSON.stringify(text.slice(-40)) });
    } finally {
      release();
      s.destroy();
      await l.close();
      await e2.close();
      await b.close();
    }
  });

  it('a backend without WebSocket support answers as to an ordinary request; the pipelined bytes after it are dropped with the connection', async () => {
    // The backend's server has an upgrade handler only for WebSocket; an h2c-only server answers 200.
    const plain = http.createServer((req, res) => { req.resume(); res.end(`plain ${req.url}`); });
    await new Promise<void>((r) => plain.listen(0, '127.0.0.1', r));
    const port = (plain.address() as AddressInfo).port;
    let seen: string[] = [];
    plain.on('request', (req: http.IncomingMessage) => { seen = [...seen, req.url ?? '']; });
    const e2 = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    e2.applyConfig(config({ services: [service('plain', '10.96.0.32', [endpoint(port)])] }));
    const l = await startTunnelListener(e2, '10.96.0.32:80');
    try {
      const r = await rawExchange(l.port, HANDSHAKE('/ws') + 'GET /smuggled HTTP/1.1\r\nHost: plain\r\n\r\n');
      assert.match(r.text, /^HTTP\/1\.1 200 /);
      assert.match(r.text, /plain \/ws/);
      assert.doesNotMatch(r.text, /smuggled/);
      assert.ok(r.closed);
      assert.deepEqual(seen, ['/ws']);
    } finally {
      await l.close();
      await e2.close();
      plain.closeAllConnections();
      await new Promise<void>((r) => plain.close(() => r()));
    }
  });

  it('keeps any other Upgrade (h2c) an ordinary request: the Upgrade field is not forwarded and the connection stays open', async () => {
    const b = await startWsBackend();
    const e2 = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    e2.applyConfig(config({ services: [service('h2c', '10.96.0.33', [endpoint(b.port)])] }));
    const l = await startTunnelListener(e2, '10.96.0.33:80');
    try {
      const r = await rawExchange(l.port, 'GET /h2c HTTP/1.1\r\nHost: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n', (t) => t.endsWith('plain /h2c'));
      assert.match(r.text, /^HTTP\/1\.1 200 /);
      assert.match(r.text, /connection: keep-alive/i, 'an ordinary keep-alive response');
      assert.doesNotMatch(r.text, /^upgrade:/im);
      assert.deepEqual(b.seen.map((s) => [s.url, s.upgrade, s.headers['upgrade']]), [['/h2c', false, undefined]]);
    } finally {
      await l.close();
      await e2.close();
      await b.close();
    }
  });

  // Envoy answers an Upgrade it has no upgrade_configs entry for with 403 (response code details
  // upgrade_failed, stat downstream_rq_ws_on_non_ws_route) and closes the connection after it, so that
  // what the client sent for the protocol it asked for is never read as a request; Istio configures
  // websocket only, matched against the whole Upgrade value. (h2c alone is stripped by Envoy's codec,
  // above.) A list naming websocket and another protocol went to the backend as it was, for the
  // backend to switch to the other one on a connection the waypoint then pipes unjudged.
  for (const upgrade of ['foo', 'websocket, h2c', 'TLS/1.0']) {
    it(`refuses Upgrade: ${upgrade} with 403 upgrade_failed, counted, closes the connection, and the backend never sees it`, async () => {
      const b = await startWsBackend();
      const logged: Array<Record<string, unknown>> = [];
      const e2 = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: (line) => logged.push(JSON.parse(line) as Record<string, unknown>) } });
      e2.applyConfig(config({ services: [service('odd', '10.96.0.34', [endpoint(b.port)])] }));
      const l = await startTunnelListener(e2, '10.96.0.34:80');
      try {
        const r = await rawExchange(l.port, `GET /odd HTTP/1.1\r\nHost: odd\r\nConnection: Upgrade\r\nUpgrade: ${upgrade}\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: odd\r\n\r\n`);
        assert.match(r.text, /^HTTP\/1\.1 403 /);
        assert.equal(r.closed, true, 'the connection closes after the 403');
        assert.doesNotMatch(r.text, /smuggled/);
        assert.deepEqual(b.seen, [], 'the backend saw nothing');
        await until('the refusal is logged', () => logged.length === 1, 5_000);
        assert.match(String(logged[0]!['response_code_details']), /^upgrade_failed/);
        const counted = await metricSamples(e2, 'istio_requests_total');
        assert.deepEqual(counted.map((c) => [c.labels['response_code'], c.value]), [['403', 1]]);
      } finally {
        await l.close();
        await e2.close();
        await b.close();
      }
    });
  }

  it('times the wait for the 101 by the route\'s request timeout (504, flag UT), not the upgraded connection', async () => {
    // A backend that takes the handshake and never answers.
    const silent = net.createServer((s) => { s.on('error', () => {}); s.resume(); });
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const port = (silent.address() as AddressInfo).port;
    const e2 = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    e2.applyConfig(config({
      services: [service('slow', '10.96.0.35', [endpoint(port)]), service('chat', '10.96.0.30', [endpoint(ws.port)])],
      routes: [
        route('slow', 'slow', [{ backends: [backend('slow')], timeouts: { requestMs: 300 } }]),
        route('chat', 'chat', [{ backends: [backend('chat')], timeouts: { requestMs: 300 } }]),
      ],
    }));
    const l = await startTunnelListener(e2, '10.96.0.35:80');
    const c = await startTunnelListener(e2, '10.96.0.30:80');
    try {
      const r = await rawExchange(l.port, HANDSHAKE('/ws'));
      assert.match(r.text, /^HTTP\/1\.1 504 /);
      assert.match(r.text, /x-weft-flags: UT/i);
      assert.ok(r.closed);
      // The same timeout on a route whose backend upgrades: the WebSocket outlives it.
      const client = await openWs(`ws://127.0.0.1:${c.port}/long`);
      const t0 = Date.now();
      await until('the WebSocket has outlived the 300 ms request timeout', () => Date.now() - t0 > 600, 5000, { intervalMs: 100 });
      const reply = nextMessage(client);
      client.send('still here');
      assert.equal(await reply, 'still here');
      client.close();
    } finally {
      await l.close();
      await c.close();
      await e2.close();
      await new Promise<void>((r) => silent.close(() => r()));
    }
  });

  it('bounds the wait for a connection slot by the request timeout: a handshake queued behind an open WebSocket gets 504, not a wait without end', async () => {
    // A careless tenant's limits: one connection to the backend, and every WebSocket holds one.
    const e2 = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    e2.applyConfig(config({
      services: [service('chat', '10.96.0.36', [endpoint(ws.port)])],
      trafficPolicies: [trafficPolicy('chat', { connectionLimits: { maxConnections: 1, maxPendingRequests: 10 } })],
      routes: [route('chat', 'chat', [{ backends: [backend('chat')], timeouts: { requestMs: 300 } }])],
    }));
    const l = await startTunnelListener(e2, '10.96.0.36:80');
    try {
      const first = await openWs(`ws://127.0.0.1:${l.port}/first`);
      const r = await rawExchange(l.port, HANDSHAKE('/second'));
      assert.match(r.text, /^HTTP\/1\.1 504 /);
      assert.match(r.text, /x-weft-flags: UT/i);
      assert.ok(r.closed);
      assert.deepEqual([e2.clusterStats()[0]!.pendingRequests, e2.clusterStats()[0]!.activeConnections], [0, 1], 'the timed-out handshake left the queue; the WebSocket holds its slot');
      // The first still works, and once it closes its slot serves the next one.
      const reply = nextMessage(first);
      first.send('first');
      assert.equal(await reply, 'first');
      const closed = new Promise((res) => first.addEventListener('close', res, { once: true }));
      first.close();
      await closed;
      await until('the closed WebSocket\'s connection slot is free', () => e2.clusterStats()[0]!.activeConnections === 0, 5000);
      const third = await openWs(`ws://127.0.0.1:${l.port}/third`);
      third.close();
    } finally {
      await l.close();
      await e2.close();
    }
  });

  it('records the upgraded connection\'s bytes each way when it ends', async () => {
    const client = await openWs(`ws://127.0.0.1:${chat.port}/bytes`);
    const reply = nextMessage(client);
    client.send('y'.repeat(50_000));
    await reply;
    const closed = new Promise((r) => client.addEventListener('close', r, { once: true }));
    client.close(1000);
    await closed;
    const sums = async (name: string): Promise<number> => (await engine.telemetry.registry.getSingleMetric(name)!.get()).values
      .filter((v) => (v as { metricName?: string }).metricName === `${name}_sum` && String(v.labels['response_code']) === '101' && v.labels['destination_service_name'] === 'chat')
      .reduce((n, v) => n + v.value, 0);
    await until('request and response bytes of the upgraded connection recorded', async () => (await sums('istio_request_bytes')) >= 50_000 && (await sums('istio_response_bytes')) >= 50_000, 5000);
  });

  it('answers a handshake for a service with no endpoint with 503 and closes', async () => {
    const e2 = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    e2.applyConfig(config({ services: [service('gone', '10.96.0.34', [])] }));
    const l = await startTunnelListener(e2, '10.96.0.34:80');
    try {
      const r = await rawExchange(l.port, HANDSHAKE('/ws'));
      assert.match(r.text, /^HTTP\/1\.1 503 /);
      assert.ok(r.closed);
    } finally {
      await l.close();
      await e2.close();
    }
  });
});


