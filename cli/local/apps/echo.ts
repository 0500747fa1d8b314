// Sample application for the local mesh: an HTTP/1.1 and h2c echo server that says who it is and
// who it sees as the client, so traffic through the mesh can be checked by eye and by tests.
//   node cli/local/apps/echo.ts --port 8080 [--host ::] --name reviews-v1 --version v1 [--fail-rate 0.5]
//     [--grpc-port 7070]   also serve the gRPC echo (echo-grpc.ts) on that port
//     [--log-requests]     print one JSON line per request (method, path, headers)
// A request may ask for a slow answer (`?delay=1s`, a Gateway API duration), for response headers
// (`x-echo-set-header: name:value,...`), and for failures before success (`?uuid=..&responseCode=500
// &succeedAfter=2[&delayRetry=300ms]`, the upstream echo backend's retry simulation; without
// responseCode a failure is a TCP reset). A WebSocket handshake (HTTP/1.1 Upgrade) is accepted on
// any path and every message is sent back as it came (text or binary).
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { parseArgs } from 'node:util';
import { createHash } from 'node:crypto';
import { parseDuration } from '../../../lib/model/duration.ts';
import { upgradeOf } from '../../../lib/websocket.ts';
import { acceptWebSocket } from './websocket.ts';

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: '8080' },
    // '::' listens on IPv6 and IPv4 (dual stack).
    host: { type: 'string', default: '0.0.0.0' },
    name: { type: 'string', default: process.env.POD_NAME ?? 'echo' },
    namespace: { type: 'string', default: process.env.POD_NAMESPACE ?? 'default' },
    version: { type: 'string', default: 'v1' },
    'fail-rate': { type: 'string', default: '0' },
    'fail-every': { type: 'string', default: '0' },
    'grpc-port': { type: 'string' },
    'log-requests': { type: 'boolean', default: false },
  },
});
// --fail-rate answers 503 at random; --fail-every N answers 503 to every Nth request (repeatable tests).
const failRate = Number(values['fail-rate']);
const failEvery = Number(values['fail-every']);
let served = 0;

/** The `delay` query parameter in milliseconds (0 when absent or not a duration). */
function delayOf(path: string): number {
  const q = path.indexOf('?');
  const d = q < 0 ? null : new URLSearchParams(path.slice(q + 1)).get('delay');
  try {
    return d ? parseDuration(d) : 0;
  } catch {
    return 0;
  }
}

/**
 * Answers after the delay the request asks for; logs it first with --log-requests. A request the
 * retry simulation fails is answered its `responseCode`, or reset (`reset`) when it names none,
 * after its `delayRetry`.
 */
function answerLater(method: string, path: string, peer: net.Socket | undefined, headers: Record<string, unknown>, send: (a: { status: number; body: string }) => void, reset: () => void): void {
  if (values['log-requests']) console.log(JSON.stringify({ msg: 'request', method, path, headers }));
  const failure = simulatedRetryFailure(path);
  if (failure) {
    const fail = (): void => { if (failure.status === undefined) reset(); else send({ ...answer(method, path, peer, headers), status: failure.status }); };
    if (failure.delayMs > 0) setTimeout(fail, failure.delayMs);
    else fail();
    return;
  }
  const delay = delayOf(path);
  if (delay > 0) setTimeout(() => send(answer(method, path, peer, headers)), delay);
  else send(answer(method, path, peer, headers));
}

/** Requests seen per `uuid` query parameter (the retry simulation below). */
const retrySeen = new Map<string, number>();

/**
 * The Gateway API echo backend's retry simulation (echo-basic's retrySimulationHandler): the first
 * `succeedAfter` requests whose query has a given `uuid` fail, each after `delayRetry` (a duration,
 * default none), with `responseCode` or, when the query names none, a TCP reset; later ones are
 * answered as any other. Undefined when the request does not ask for the simulation or succeeds.
 */
function simulatedRetryFailure(path: string): { status: number | undefined; delayMs: number } | undefined {
  const q = path.indexOf('?');
  if (q < 0) return undefined;
  const params = new URLSearchParams(path.slice(q + 1));
  const uuid = params.get('uuid');
  const after = Number(params.get('succeedAfter') ?? NaN);
  if (!uuid || !Number.isInteger(after) || after < 0) return undefined;
  const codeParam = params.get('responseCode');
  const code = codeParam === null ? undefined : Number(codeParam);
  if (code !== undefined && (!Number.isInteger(code) || code < 100 || code > 599)) return undefined;
  const n = (retrySeen.get(uuid) ?? 0) + 1;
  retrySeen.set(uuid, n);
  if (retrySeen.size > 10_000) retrySeen.delete(retrySeen.keys().next().value!);
  if (n > after) return undefined;
  let delayMs = 0;
  try {
    delayMs = parseDuration(params.get('delayRetry') ?? '0s');
  } catch { /* not a duration: no delay */ }
  return { status: code, delayMs };
}

function answer(method: string, path: string, socket: net.Socket | undefined, headers: Record<string, unknown>) {
  served++;
  const fail = (failRate > 0 && Math.random() < failRate) || (failEvery > 0 && served % failEvery === 0);
  const peer = socket?.remoteAddress;
  const peerPort = socket?.remotePort;
  const body = JSON.stringify({ pod: values.name, namespace: values.namespace, version: values.version, ...(process.env.WEFT_CLUSTER ? { cluster: process.env.WEFT_CLUSTER } : {}), method, path, peer, peerPort, headers });
  return { status: fail ? 503 : 200, body: body + '\n' };
}

/**
 * Response headers a client asks for with `x-echo-set-header: name:value,name:value` (a route's
 * ResponseHeaderModifier needs headers from the backend to set, add to and remove).
 */
function requestedHeaders(v: string | string[] | undefined): Record<string, string | string[]> {
  const out: Record<string, string[]> = {};
  for (const item of (Array.isArray(v) ? v.join(',') : v ?? '').split(',')) {
    const colon = item.indexOf(':');
    if (colon <= 0) continue;
    const name = item.slice(0, colon).trim().toLowerCase();
    if (!/^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(name)) continue;
    (out[name] ??= []).push(item.slice(colon + 1).trim());
  }
  return out;
}

const h1 = http.createServer({
  // Only WebSocket upgrades leave the request path (an h2c Upgrade is answered as HTTP/1.1).
  shouldUpgradeCallback: (req) => upgradeOf(req) === 'websocket',
}, (req, res) => {
  // POST /sha256 hashes the body as it streams (large transfers), anything else echoes.
  const hash = req.url === '/sha256' ? createHash('sha256') : undefined;
  let bytes = 0;
  req.on('data', (c: Buffer) => {
    bytes += c.length;
    hash?.update(c);
  });
  req.on('end', () => {
    if (hash) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ pod: values.name, bytes, sha256: hash.digest('hex'), peer: req.socket.remoteAddress }) + '\n');
      return;
    }
    answerLater(req.method ?? 'GET', req.url ?? '/', req.socket, req.headers, ({ status, body }) => {
      if (res.destroyed) return;
      res.writeHead(status, { ...requestedHeaders(req.headers['x-echo-set-header']), 'content-type': 'application/json', 'x-served-by': values.name!, 'x-version': values.version! });
      res.end(body);
    }, () => req.socket.resetAndDestroy());
  });
});
h1.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
  if (values['log-requests']) console.log(JSON.stringify({ msg: 'request', method: req.method, path: req.url, headers: req.headers }));
  acceptWebSocket(req, socket, head, (peer, data, text) => peer.send(text ? data.toString() : data), { 'x-served-by': values.name! });
});
const h2 = http2.createServer();
h2.on('stream', (stream, headers) => {
  stream.resume();
  stream.on('end', () => {
    answerLater(String(headers[':method']), String(headers[':path']), stream.session?.socket as net.Socket | undefined, headers, ({ status, body }) => {
      if (stream.destroyed) return;
      stream.respond({ ...requestedHeaders(headers['x-echo-set-header']), ':status': status, 'content-type': 'application/json', 'x-served-by': values.name!, 'x-version': values.version! });
      stream.end(body);
    }, () => { if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR); });
  });
});

// One port for both: h2c prior knowledge starts with the HTTP/2 preface.
const PREFACE = 'PRI * HTTP/2.0';
const server = net.createServer((socket) => {
  socket.once('data', (first: Buffer) => {
    socket.pause();
    socket.unshift(first);
    if (first.toString('latin1', 0, PREFACE.length) === PREFACE) {
      // The HTTP/2 session reads the socket itself (and the unshifted preface); resuming the JS
      // stream here would take the bytes from under it and the session would never answer.
      h2.emit('connection', socket);
      return;
    }
    h1.emit('connection', socket);
    socket.resume();
  });
  socket.on('error', () => socket.destroy());
});
server.listen(Number(values.port), values.host, () => {
  console.log(JSON.stringify({ msg: 'echo listening', port: Number(values.port), name: values.name, version: values.version }));
});
if (values['grpc-port'] !== undefined) {
  const { startEchoGrpc } = await import('./echo-grpc.ts');
  const port = Number(values['grpc-port']);
  await startEchoGrpc(port, { pod: values.name!, namespace: values.namespace!, version: values.version! });
  console.log(JSON.stringify({ msg: 'echo grpc listening', port, name: values.name }));
}
process.on('SIGTERM', () => server.close(() => process.exit(0)));
