// The agent's HTTP side doors: admin on localhost (config dump, certificates, BPF state, live
// flows), Prometheus metrics, and readiness; and the guard every one of them stands behind
// (guardSidePort): the agent runs in the node's network, so its loopback is every node process's,
// and its metrics and readiness ports are every pod's.
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { peerSocketOwner } from '../../lib/sys/listeners.ts';
import { connectionCounter } from '../../lib/listener-limits.ts';
import type { DebugTokenAccess, DebugTokenRefusal } from '../../lib/debug-http.ts';

/**
 * Why a side port refused a request or a connection by itself, without a route: a metric label.
 * `bad_target`: the request target is not a URL; `peer_uid`: the admin port's client socket is not
 * root's (nor the agent's own user's); `source_connections`: its source already holds
 * MAX_SIDE_CONNECTIONS_PER_SOURCE; `header_timeout`: no whole request head within
 * SIDE_HEADERS_TIMEOUT_MS; `idle`: nothing sent or received for SIDE_IDLE_TIMEOUT_MS;
 * `debug-token-<why>`: a /debug path asked for without the install's debug token, `why` as the
 * controller labels it (lib/debug-http.ts DebugTokenRefusal: missing, wrong, unset).
 */
export type SidePortRefusal = 'bad_target' | 'peer_uid' | 'source_connections' | 'header_timeout' | 'idle' | `debug-token-${DebugTokenRefusal}`;
/** Hears of each refused request or connection (the agent counts and logs it), with what names it. */
export type OnSidePortRefusal = (reason: SidePortRefusal, socket: Socket, fields?: Record<string, unknown>) => void;

/** The metrics port's debug refusals (lib/debug-http.ts admitDebugRequest) told to `refused` as `debug-token-<why>`, with the target. */
export function debugTokenRefused(refused: OnSidePortRefusal): DebugTokenAccess['refused'] {
  // A token access is refused only for a DebugTokenRefusal (a grant's reasons are a waypoint's).
  return (req, why) => refused(`debug-token-${why as DebugTokenRefusal}`, req.socket, { target: req.url });
}

/**
 * Open connections one source address may hold on one side port; past it a new connection is
 * closed at once. A Prometheus scrape holds one, the API server's pod proxy one per request or
 * stream it carries (weftctl tap, the dashboard), the kubelet's probes one at a time.
 */
export const MAX_SIDE_CONNECTIONS_PER_SOURCE = 32;
/** A side port's client must have sent a whole request head within this (Node's default is 60 s). */
export const SIDE_HEADERS_TIMEOUT_MS = 10_000;
/** A side-port connection on which nothing moves for this long is closed; streams (/flows) are exempt. */
export const SIDE_IDLE_TIMEOUT_MS = 30_000;
/** A refused admin-port client's socket is destroyed at the latest this long after its 403 is written. */
const REFUSED_LINGER_MS = 1_000;
/** How often Node checks the header and request deadlines (its default is every 30 s). */
const SIDE_DEADLINE_CHECK_MS = 1_000;

/** An HTTP server for a side port: its deadlines checked every second (guardSidePort sets them). */
export function sideHttpServer(handler: http.RequestListener): http.Server {
  return http.createServer({ connectionsCheckingInterval: SIDE_DEADLINE_CHECK_MS }, handler);
}

export interface SidePortGuard {
  refused: OnSidePortRefusal;
  /** Default MAX_SIDE_CONNECTIONS_PER_SOURCE. */
  maxConnectionsPerSource?: number;
  /**
   * Admit only clients whose socket one of these uids owns (the kernel's record of the socket in
   * /proc/net/tcp), for a port on the node's loopback: any process of the node can connect there.
   * A client outside this network namespace, or gone, is refused too. Default: anyone.
   */
  ownerUids?: readonly number[];
  /** Default SIDE_HEADERS_TIMEOUT_MS. */
  headersTimeoutMs?: number;
  /** Default SIDE_IDLE_TIMEOUT_MS. */
  idleTimeoutMs?: number;
}

/**
 * Puts `server` behind a side port's guard: a per-source connection cap, the header and idle
 * deadlines, and for the admin port the owner check, each refusal told to `refused` with its
 * reason. A connection is read only once admitted (the owner check waits for the kernel's table).
 */
export function guardSidePort(server: http.Server, g: SidePortGuard): void {
  const [serve] = server.listeners('connection') as Array<(s: Socket) => void>;
  if (!serve) throw new Error('guardSidePort: the server has no connection listener');
  server.removeAllListeners('connection');
  // Not read until admitted: Node's HTTP parser takes the socket over when `serve` is called.
  (server as http.Server & { pauseOnConnect: boolean }).pauseOnConnect = true;
  // Counted against the cap only once admitted: a client the owner check refuses (anyone on the
  // node, all from 127.0.0.1) must not use up root's share of the admin port.
  const counter = connectionCounter(g.maxConnectionsPerSource ?? MAX_SIDE_CONNECTIONS_PER_SOURCE, (_from, limit, _which, socket) => g.refused('source_connections', socket, { limit }));
  const admit = (socket: Socket): void => {
    if (!counter.admit(socket)) return;
    serve.call(server, socket);
    socket.resume();
  };
  server.on('connection', (socket: Socket) => {
    const from = socket.remoteAddress ?? '';
    socket.on('error', () => {});
    if (!g.ownerUids) return admit(socket);
    const uids = g.ownerUids;
    peerSocketOwner({ local: { address: socket.localAddress ?? '', port: socket.localPort ?? 0 }, remote: { address: from, port: socket.remotePort ?? 0 } }).then((uid) => {
      if (socket.destroyed) return;
      if (uid !== undefined && uids.includes(uid)) return admit(socket);
      g.refused('peer_uid', socket, { uid: uid ?? 'unknown', allowed: uids.join(',') });
      const body = JSON.stringify({ error: `this port answers only processes of uid ${uids.join(' or ')} on this node (yours is ${uid ?? 'unknown'}): run weftctl as root, or through kubectl exec or port-forward` }) + '\n';
      // Whatever it sent is read and dropped, unparsed: closing with it unread would reset the
      // connection under the answer. The socket goes when the client closes its side, or after
      // REFUSED_LINGER_MS of silence if it does not (the server allows half-open connections).
      socket.resume();
      socket.once('end', () => socket.destroy());
      socket.setTimeout(REFUSED_LINGER_MS, () => socket.destroy());
      socket.end(`HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
    }, () => socket.destroy());
  });
  const headersTimeout = g.headersTimeoutMs ?? SIDE_HEADERS_TIMEOUT_MS;
  server.headersTimeout = headersTimeout;
  server.requestTimeout = 2 * headersTimeout;
  const idle = g.idleTimeoutMs ?? SIDE_IDLE_TIMEOUT_MS;
  server.timeout = idle;
  server.on('timeout', (socket: Socket) => {
    g.refused('idle', socket, { idleMs: idle });
    socket.destroy();
  });
  // Node's own answers to a client's error, but the header deadline counted and named.
  server.on('clientError', (err: Error & { code?: string }, socket: Socket) => {
    const timeout = err.code === 'ERR_HTTP_REQUEST_TIMEOUT';
    if (timeout) g.refused('header_timeout', socket, { timeoutMs: headersTimeout });
    if (!socket.writable || (err.code === 'ECONNRESET')) {
      socket.destroy();
      return;
    }
    const status = timeout ? '408 Request Timeout' : err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : '400 Bad Request';
    socket.end(`HTTP/1.1 ${status}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
  });
}

export type Route = (url: URL, req: http.IncomingMessage) => Promise<unknown> | unknown;

export class HttpStatusError extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

/** A small JSON (or text) HTTP server over a table of routes; unknown paths list the known ones. */
export function jsonServer(routes: Record<string, Route>, opts: {
  text?: Record<string, () => Promise<{ type: string; body: string }>>;
  /** Paths that answer by themselves (streams such as /flows). */
  raw?: Record<string, (req: http.IncomingMessage, res: http.ServerResponse) => void>;
  /** Told of each request answered 400 because its target is not a URL. */
  refused?: OnSidePortRefusal;
} = {}): http.Server {
  return sideHttpServer((req, res) => {
    // RFC 9112 3.2: origin-form or absolute-form. A target that is neither (`http://[`) is the
    // client's mistake, answered here; `new URL` would throw out of the handler and end the process.
    const url = URL.parse(req.url ?? '/', 'http://localhost');
    if (!url) {
      opts.refused?.('bad_target', req.socket, { target: req.url });
      res.writeHead(400, { 'content-type': 'application/json', connection: 'close' }).end(JSON.stringify({ error: 'the request target is not a URL (RFC 9112 section 3.2)' }) + '\n');
      return;
    }
    const raw = opts.raw?.[url.pathname];
    if (raw) {
      // A stream may stay quiet for long (no flows): the idle deadline is for connections, not it.
      req.socket.setTimeout(0);
      raw(req, res);
      return;
    }
    const text = opts.text?.[url.pathname];
    if (text) {
      text().then(
        (r) => res.writeHead(200, { 'content-type': r.type }).end(r.body),
        (e: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${e.message}\n`),
      );
      return;
    }
    const route = routes[url.pathname];
    if (!route) {
      res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: `no ${url.pathname}`, paths: Object.keys(routes) }) + '\n');
      return;
    }
    Promise.resolve()
      .then(() => route(url, req))
      .then(
        (body) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body, jsonReplacer, 2) + '\n'),
        (e: Error) => {
          const status = e instanceof HttpStatusError ? e.status : 500;
          res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify({ error: e.message }) + '\n');
        },
      );
  });
}

/** bigint (netns cookies) and Map survive JSON. */
export function jsonReplacer(_k: string, v: unknown): unknown {
  if (typeof v === 'bigint') return v.toString();
  if (v instanceof Map) return Object.fromEntries([...v.entries()].map(([k, x]) => [String(k), x]));
  return v;
}

/** Listens with SO_REUSEPORT, so an upgraded agent can bind the same port while the old one drains. */
export function listen(server: http.Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port, host, reusePort: true }, () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}
