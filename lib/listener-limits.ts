// Bounds of a listener against slow or many connections. Connections one source address may hold
// open: a peer (or anyone who reaches the port) that opens connections and leaves them silent holds
// a socket, a TLS handshake's state and a timer each until its timeout; without a cap one source
// could hold them all. Counted at accept, before TLS: a connection past the cap costs its source a
// TCP handshake and the listener nothing more. The cap is used by the HBONE server
// (lib/hbone/server.ts); the check interval of node:http's timeouts by the waypoint's HTTP
// listener; limitHttpListener (both, the timeouts and, for a port on the node's loopback, the
// client's uid) is the one guard of every listener that is not a data path: the agent's side ports
// (agent/src/admin.ts limitSidePort), the controller's federation listener, and the metrics and
// readiness listeners of the controller, the waypoints and the east-west gateway
// (statusListenerLimits). Node's own defaults for an HTTP listener are 60 s for a request's
// headers, 300 s for a request, 120 s for a TLS handshake and no cap.
import type { Server as HttpServer } from 'node:http';
import type { Server, Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { Counter, type Registry } from 'prom-client';
import { clip, LogBudget, REFUSAL_LOG_PER_SECOND, type Logger } from './log.ts';
import { peerSocketOwner } from './sys/listeners.ts';

export interface ConnectionCap {
  /** Whether this TCP socket was closed for a cap (its TLS handshake then fails too; count it once). */
  refused(socket: Socket): boolean;
}

export interface ConnectionCounter {
  /** Counts `socket` until it closes, or, past a cap, tells onRefused, destroys it and says false. */
  admit(socket: Socket): boolean;
  /** The connections admitted and not yet closed, from all sources. */
  readonly open: number;
}

/**
 * The connections each source address holds, capped at `perSource` and, when given, all of them
 * together at `total`, a number or read at each connection (many sources, each under its own share, cannot take the process's
 * descriptors and memory); `onRefused` hears of each connection refused, and which cap. A listener
 * admits at accept (capConnectionsPerSource), or later, after a check of its own (the agent's admin
 * port admits only sockets of root, so that other users' refused connections take none of root's share:
 * HttpListenerLimits.ownerUids).
 */
export function connectionCounter(
  max: number | { perSource: number; total?: number | (() => number) },
  onRefused: (address: string, max: number, cap: 'per-source' | 'total', socket: Socket) => void,
): ConnectionCounter {
  const { perSource, total: totalOf = Infinity } = typeof max === 'number' ? { perSource: max } : max;
  const open = new Map<string, number>();
  let all = 0;
  return {
    admit(socket) {
      const from = socket.remoteAddress ?? '';
      const n = (open.get(from) ?? 0) + 1;
      const total = typeof totalOf === 'function' ? totalOf() : totalOf;
      const over = n > perSource ? 'per-source' : all >= total ? 'total' : undefined;
      if (over) {
        onRefused(from, over === 'per-source' ? perSource : total, over, socket);
        socket.destroy();
        return false;
      }
      open.set(from, n);
      all++;
      socket.once('close', () => {
        all--;
        const left = (open.get(from) ?? 1) - 1;
        if (left <= 0) open.delete(from);
        else open.set(from, left);
      });
      return true;
    },
    get open() {
      return all;
    },
  };
}

/** Caps the connections on `server` at accept, before TLS (connectionCounter). */
export function capConnectionsPerSource(
  server: Server,
  max: number | { perSource: number; total?: number },
  onRefused: (address: string, max: number, cap: 'per-source' | 'total', socket: Socket) => void,
): ConnectionCap {
  const counter = connectionCounter(max, onRefused);
  const refused = new WeakSet<Socket>();
  server.on('connection', (socket: Socket) => {
    if (!counter.admit(socket)) refused.add(socket);
  });
  return { refused: (socket) => refused.has(socket) };
}

/**
 * How often node:http looks for connections past their headers or request timeout
 * (`connectionsCheckingInterval`, 30 s by default): often enough that a client is cut within about
 * `headersTimeoutMs` + 1 s, never more than once a millisecond.
 */
export function timeoutCheckIntervalMs(headersTimeoutMs: number): number {
  return Math.max(1, Math.min(1000, Math.floor(headersTimeoutMs / 4)));
}

/**
 * Bounds of an HTTP(S) listener that is not a data path (metrics, readiness, an export, the agent's
 * admin port): requests are short, readers few.
 */
export interface HttpListenerLimits {
  /** A request's headers must have arrived within this (a slowloris is cut here). */
  headersTimeoutMs: number;
  /** A whole request within this. */
  requestTimeoutMs: number;
  /** A kept-alive connection with no request in progress is closed after this (not reported: a client's ordinary end). */
  idleTimeoutMs: number;
  /** Open connections (TLS handshakes included) one source address may hold; past it one is closed at accept. */
  maxConnectionsPerSource: number;
  /**
   * A connection on which nothing is sent or received for this long is closed (`inactive`), in a
   * request or between requests; a response that may stay quiet for long (a stream) turns it off
   * for its socket (`socket.setTimeout(0)`). Default: none (the header and request deadlines).
   */
  inactivityTimeoutMs?: number;
  /**
   * Admit only clients whose socket one of these uids owns (the kernel's record of the socket in
   * /proc/net/tcp, lib/sys/listeners.ts peerSocketOwner), for a plain HTTP listener on the node's
   * loopback, where any process of the node can connect; a client outside this network namespace,
   * or gone, is refused too (`peer-uid`, answered 403). A connection is read only once admitted,
   * and counted against `maxConnectionsPerSource` only then: the clients refused (anyone on the
   * node, all from 127.0.0.1) use up none of the owners' share. Default: anyone.
   */
  ownerUids?: readonly number[];
}

/**
 * A metrics or readiness listener: a scraper or a prober opens a connection or two at a time and
 * asks once; a request has no body.
 */
export const DEFAULT_STATUS_LISTENER_LIMITS: Readonly<HttpListenerLimits> = {
  headersTimeoutMs: 5_000,
  requestTimeoutMs: 10_000,
  idleTimeoutMs: 5_000,
  maxConnectionsPerSource: 16,
};

/**
 * Why such a listener closed a connection; stable strings (metric labels, or mapped to a
 * component's own: the agent's side ports). `too-many-connections`: its source already holds
 * `maxConnectionsPerSource`; `tls-handshake`: failed or not within the handshake timeout;
 * `request-timeout`: headers or request not within their deadline (408); `bad-request`: what the
 * client sent is not HTTP/1.1, or the client reset the connection (400, 431 for headers past
 * Node's 16 KiB); `inactive`: nothing moved for `inactivityTimeoutMs`; `peer-uid`: the client's
 * socket is not one of `ownerUids`' (403).
 */
export type HttpListenerRefusal = 'too-many-connections' | 'tls-handshake' | 'request-timeout' | 'bad-request' | 'inactive' | 'peer-uid';

/** A connection a listener closed: why, whose, said for a log line (`detail`) and as fields (`facts`: the cap, the deadline, the uid). */
export interface RefusedConnection {
  reason: HttpListenerRefusal;
  socket: Socket;
  detail: string;
  facts: Record<string, string | number>;
}

/** A refused connection's socket is destroyed at the latest this long after its answer is written. */
const REFUSED_LINGER_MS = 1_000;

/**
 * Writes `answer` (a whole HTTP response) and closes the connection: whatever the client sends
 * meanwhile is read and dropped (closing with it unread would reset the connection under the
 * answer); the socket goes when the client closes its side, or REFUSED_LINGER_MS after the answer
 * if it does not (an HTTP server allows half-open connections).
 */
function answerAndClose(socket: Socket, answer: string): void {
  socket.resume();
  socket.once('end', () => socket.destroy());
  const linger = setTimeout(() => socket.destroy(), REFUSED_LINGER_MS);
  socket.once('close', () => clearTimeout(linger));
  socket.end(answer);
}

/**
 * What Node answers a client's error with when nobody listens for it (node:http socketOnError), but
 * 400 for chunk extensions past Node's limit (Node's 413), as both guards this one replaced answered.
 */
function clientErrorStatus(code: string | undefined): string {
  return code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout' : code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : '400 Bad Request';
}

/**
 * Applies `limits` to `server` before it listens; each connection it closes is reported to
 * `onRefused` (count it, log it), once. An HTTPS server's handshake timeout is its own
 * construction option (`handshakeTimeout`); its failed handshakes are reported here
 * (`tls-handshake`). The one guard of every listener that is not a data path: the agent's side
 * ports (agent/src/admin.ts limitSidePort), the status listeners of the other components
 * (statusListenerLimits) and the federation listener.
 */
export function limitHttpListener(server: HttpServer, limits: HttpListenerLimits, onRefused: (r: RefusedConnection) => void): void {
  server.headersTimeout = limits.headersTimeoutMs;
  server.requestTimeout = Math.max(limits.requestTimeoutMs, limits.headersTimeoutMs);
  server.keepAliveTimeout = limits.idleTimeoutMs;
  // Read when it starts listening.
  (server as HttpServer & { connectionsCheckingInterval: number }).connectionsCheckingInterval = timeoutCheckIntervalMs(limits.headersTimeoutMs);
  // Connections already answered and closing: whatever else befalls them is not another refusal.
  const closing = new WeakSet<Socket>();
  const overCap = (from: string, max: number, _cap: unknown, socket: Socket): void =>
    onRefused({ reason: 'too-many-connections', socket, detail: `${from} already holds ${max} connections`, facts: { limit: max } });
  const cap = limits.ownerUids
    ? admitOwnersOnly(server, limits.ownerUids, connectionCounter(limits.maxConnectionsPerSource, overCap), onRefused)
    : capConnectionsPerSource(server, limits.maxConnectionsPerSource, overCap);
  server.on('tlsClientError', (err: Error & { code?: string }, socket: TLSSocket) => {
    // A connection closed for its source's count fails its handshake too; it counts once.
    // (`_parent`: the TCP socket a server-side TLSSocket wraps; Node has no public name for it.)
    if (cap.refused((socket as unknown as { _parent?: Socket })._parent!)) return;
    onRefused({ reason: 'tls-handshake', socket, detail: `TLS handshake failed: ${err.code ?? err.message}`, facts: { code: err.code ?? err.message } });
  });
  const inactivity = limits.inactivityTimeoutMs;
  if (inactivity) {
    // node:http sets it on each connection it serves and tells the server when one passes it.
    server.timeout = inactivity;
    server.on('timeout', (socket: Socket) => {
      if (closing.has(socket)) return;
      onRefused({ reason: 'inactive', socket, detail: `nothing sent or received for ${inactivity} ms`, facts: { idleMs: inactivity } });
      socket.destroy();
    });
  }
  // Node answers these itself when nobody listens; the same answer, reported. The parser reads on
  // after an error, so a client that keeps sending would be refused again: answered once, closed.
  server.on('clientError', (err: Error & { code?: string }, socket: Socket) => {
    if (closing.has(socket)) return;
    closing.add(socket);
    const timeout = err.code === 'ERR_HTTP_REQUEST_TIMEOUT';
    onRefused(timeout
      ? { reason: 'request-timeout', socket, detail: `request not complete within its headers (${limits.headersTimeoutMs} ms) or request (${limits.requestTimeoutMs} ms) timeout`, facts: { timeoutMs: limits.headersTimeoutMs } }
      : { reason: 'bad-request', socket, detail: err.code ?? err.message, facts: { code: err.code ?? err.message } });
    if (!socket.writable || err.code === 'ECONNRESET') {
      socket.destroy();
      return;
    }
    answerAndClose(socket, `HTTP/1.1 ${clientErrorStatus(err.code)}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  });
}

/**
 * limitHttpListener's owner check (HttpListenerLimits.ownerUids): Node's handler of `server`'s
 * connections is called only for a client whose socket an owner holds, and only then counted.
 */
function admitOwnersOnly(server: HttpServer, uids: readonly number[], counter: ConnectionCounter, onRefused: (r: RefusedConnection) => void): ConnectionCap {
  const [serve] = server.listeners('connection') as Array<(s: Socket) => void>;
  if (!serve) throw new Error('limitHttpListener: the server has no connection listener');
  server.removeAllListeners('connection');
  // Not read until admitted: Node's HTTP parser takes the socket over when `serve` is called.
  (server as HttpServer & { pauseOnConnect: boolean }).pauseOnConnect = true;
  server.on('connection', (socket: Socket) => {
    // Nobody else listens to it until it is served.
    socket.on('error', () => {});
    const local = { address: socket.localAddress ?? '', port: socket.localPort ?? 0 };
    const remote = { address: socket.remoteAddress ?? '', port: socket.remotePort ?? 0 };
    peerSocketOwner({ local, remote }).then((uid) => {
      if (socket.destroyed) return;
      if (uid !== undefined && uids.includes(uid)) {
        if (!counter.admit(socket)) return;
        serve.call(server, socket);
        socket.resume();
        return;
      }
      onRefused({ reason: 'peer-uid', socket, detail: `a socket of uid ${uid ?? 'unknown'}, not ${uids.join(' or ')}`, facts: { uid: uid ?? 'unknown', allowed: uids.join(',') } });
      const body = JSON.stringify({ error: `this port answers only processes of uid ${uids.join(' or ')} on this node (yours is ${uid ?? 'unknown'}): run weftctl as root, or through kubectl exec or port-forward` }) + '\n';
      answerAndClose(socket, `HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
    }, () => socket.destroy());
  });
  // A plain HTTP listener: no TLS handshake to fail after a cap's refusal.
  return { refused: () => false };
}

/** Reports a request a status listener refused by itself (a /debug path without its token or grant): counted and logged as the connections it closes. */
export type StatusListenerRefusal = (listener: string, reason: string, address: string | undefined, detail: string) => void;

/** A component's status listeners' refusals: one count and one log budget for what they refuse. */
export interface StatusListenerLimits {
  /** Counts and logs a request a listener refused itself (`debug-token-<why>`, `debug-grant-<why>`: lib/debug-http.ts). */
  refused: StatusListenerRefusal;
  /** Bounds `listeners` (name: server) under the limits, every connection they close counted and logged as `refused`. */
  limit: (listeners: Readonly<Record<string, HttpServer>>) => void;
}

/**
 * A component's metrics and readiness listeners (reachable by every pod, or from other networks for
 * the east-west gateway) under DEFAULT_STATUS_LISTENER_LIMITS (or `limits`), every connection they
 * close and every request they refuse counted in `<metric>{listener,reason}` on `registry` and
 * logged within the refusal budget. Built before the servers (their handlers report refusals), then
 * `.limit({ metrics, readiness })`.
 * The agent's side ports stand behind the same guard with bounds and labels of their own
 * (agent/src/admin.ts limitSidePort: `weft_side_port_requests_refused_total{port,reason}`).
 */
export function statusListenerLimits(o: {
  registry: Registry;
  /** e.g. `weft_controller_listener_refused_total`. */
  metric: string;
  log: Logger;
  limits?: Partial<HttpListenerLimits>;
}): StatusListenerLimits {
  const refused = new Counter({ name: o.metric, help: 'Connections and requests the metrics and readiness listeners refused, by listener and reason (too-many-connections from one source, request-timeout: headers or request too slow, bad-request; debug-token-<why>: a /debug path without the install\'s token; debug-grant-<why>: a /debug path of a waypoint without a valid grant for it)', labelNames: ['listener', 'reason'], registers: [o.registry] });
  const budget = new LogBudget(REFUSAL_LOG_PER_SECOND, (count) => o.log.warn(`status listener refusals not logged (rate limit; every one is counted in ${o.metric})`, { count, perSecond: REFUSAL_LOG_PER_SECOND }));
  const limits = { ...DEFAULT_STATUS_LISTENER_LIMITS, ...o.limits };
  const refuse = (what: 'connection' | 'request', listener: string, reason: string, address: string | undefined, detail: string): void => {
    refused.inc({ listener, reason });
    if (budget.take()) o.log.warn(`status listener refused a ${what}`, { listener, reason, address, detail: clip(detail) });
  };
  return {
    refused: (listener, reason, address, detail) => refuse('request', listener, reason, address, detail),
    limit: (listeners) => {
      for (const [listener, server] of Object.entries(listeners)) limitHttpListener(server, limits, (r) => refuse('connection', listener, r.reason, r.socket.remoteAddress, r.detail));
    },
  };
}
