// The agent's HTTP side doors: admin on localhost (config dump, certificates, BPF state, live
// flows), Prometheus metrics, and readiness; and their bounds and refusal labels under the guard of
// every such listener (lib/listener-limits.ts limitHttpListener, here limitSidePort): the agent
// runs in the node's network, so its loopback is every node process's, and its metrics and
// readiness ports are every pod's.
import http from 'node:http';
import type { Socket } from 'node:net';
import { limitHttpListener, type HttpListenerLimits, type HttpListenerRefusal } from '../../lib/listener-limits.ts';
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
/** A side port's client must have sent a whole request head within this (Node's default is 60 s); a whole request within twice it. */
export const SIDE_HEADERS_TIMEOUT_MS = 10_000;
/** A side-port connection on which nothing moves for this long is closed; streams (/flows) are exempt. */
export const SIDE_IDLE_TIMEOUT_MS = 30_000;
/** A kept-alive side-port connection between requests is closed after this (Node's default, not counted). */
const SIDE_KEEP_ALIVE_TIMEOUT_MS = 5_000;

/**
 * The side ports' labels of the guard's refusals. A request Node cannot parse is answered as Node
 * does and not counted (`bad_target` is a parsed request's target: jsonServer); the side ports are
 * plain HTTP (no `tls-handshake`).
 */
const SIDE_PORT_LABELS: Partial<Record<HttpListenerRefusal, SidePortRefusal>> = {
  'too-many-connections': 'source_connections',
  'request-timeout': 'header_timeout',
  inactive: 'idle',
  'peer-uid': 'peer_uid',
};

export interface SidePortGuard {
  refused: OnSidePortRefusal;
  /** Default MAX_SIDE_CONNECTIONS_PER_SOURCE. */
  maxConnectionsPerSource?: number;
  /**
   * Admit only clients whose socket one of these uids owns, for a port on the node's loopback:
   * any process of the node can connect there (HttpListenerLimits.ownerUids). Default: anyone.
   */
  ownerUids?: readonly number[];
  /** Default SIDE_HEADERS_TIMEOUT_MS. */
  headersTimeoutMs?: number;
  /** Default SIDE_IDLE_TIMEOUT_MS. */
  idleTimeoutMs?: number;
}

/**
 * Puts `server` behind the listeners' guard (lib/listener-limits.ts limitHttpListener) with a side
 * port's bounds: a per-source connection cap, the header and idle deadlines, and for the admin
 * port the owner check, each refusal told to `refused` with its side-port label.
 */
export function limitSidePort(server: http.Server, g: SidePortGuard): void {
  const headersTimeoutMs = g.headersTimeoutMs ?? SIDE_HEADERS_TIMEOUT_MS;
  const limits: HttpListenerLimits = {
    headersTimeoutMs,
    requestTimeoutMs: 2 * headersTimeoutMs,
    idleTimeoutMs: SIDE_KEEP_ALIVE_TIMEOUT_MS,
    inactivityTimeoutMs: g.idleTimeoutMs ?? SIDE_IDLE_TIMEOUT_MS,
    maxConnectionsPerSource: g.maxConnectionsPerSource ?? MAX_SIDE_CONNECTIONS_PER_SOURCE,
    ...(g.ownerUids ? { ownerUids: g.ownerUids } : {}),
  };
  limitHttpListener(server, limits, (r) => {
    const label = SIDE_PORT_LABELS[r.reason];
    if (label) g.refused(label, r.socket, r.facts);
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
  return http.createServer((req, res) => {
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

