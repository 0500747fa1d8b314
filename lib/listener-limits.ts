// Bounds of a listener against slow or many connections. Connections one source address may hold
// open: a peer (or anyone who reaches the port) that opens connections and leaves them silent holds
// a socket, a TLS handshake's state and a timer each until its timeout; without a cap one source
// could hold them all. Counted at accept, before TLS: a connection past the cap costs its source a
// TCP handshake and the listener nothing more. Used by the HBONE server (lib/hbone/server.ts), the
// agent's side ports (agent/src/admin.ts guardSidePort) and the controller's federation listener; the check interval of node:http's timeouts by the waypoint's
// HTTP listener; limitHttpListener (both, and the timeouts) by the federation listener and the
// east-west gateway's metrics and readiness listeners. Node's own defaults for an HTTP listener are
// 60 s for a request's headers, 300 s for a request, 120 s for a TLS handshake and no cap.
import type { Server as HttpServer } from 'node:http';
import type { Server, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { Counter, type Registry } from 'prom-client';
import { clip, LogBudget, REFUSAL_LOG_PER_SECOND, type Logger } from './log.ts';

export interface ConnectionCap {
  /** Whether this TCP socket was closed for a cap (its TLS handshake then fails too; count it once). */
  refused(socket: Socket): boolean;
}

export interface ConnectionCounter {
  /** Counts `socket` until it closes, or, past a cap, tells onRefused, destroys it and says false. */
  admit(socket: Socket): boolean;
}

/**
 * The connections each source address holds, capped at `perSource` and, when given, all of them
 * together at `total` (many sources, each under its own share, cannot take the process's
 * descriptors and memory); `onRefused` hears of each connection refused, and which cap. A listener
 * admits at accept (capConnectionsPerSource), or later, after a check of its own (the agent's admin
 * port admits only sockets of root, so that other users' refused connections take none of root's share).
 */
export function connectionCounter(
  max: number | { perSource: number; total?: number },
  onRefused: (address: string, max: number, cap: 'per-source' | 'total', socket: Socket) => void,
): ConnectionCounter {
  const { perSource, total = Infinity } = typeof max === 'number' ? { perSource: max } : max;
  const open = new Map<string, number>();
  let all = 0;
  return {
    admit(socket) {
      const from = socket.remoteAddress ?? '';
      const n = (open.get(from) ?? 0) + 1;
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

/** Bounds of a small HTTP(S) listener (metrics, readiness, an export): requests are short, readers few. */
export interface HttpListenerLimits {
  /** A request's headers must have arrived within this (a slowloris is cut here). */
  headersTimeoutMs: number;
  /** A whole request within this. */
  requestTimeoutMs: number;
  /** A kept-alive connection with no request in progress is closed after this. */
  idleTimeoutMs: number;
  /** Open connections (TLS handshakes included) one source address may hold; past it one is closed at accept. */
  maxConnectionsPerSource: number;
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

/** Why such a listener closed a connection; stable strings (metric labels). */
export type HttpListenerRefusal = 'too-many-connections' | 'tls-handshake' | 'request-timeout' | 'bad-request';

/**
 * Applies `limits` to `server` before it listens; each connection it closes is reported to
 * `onRefused` (count it, log it). An HTTPS server's handshake timeout is its own construction
 * option (`handshakeTimeout`); its failed handshakes are reported here (`tls-handshake`).
 */
export function limitHttpListener(server: HttpServer, limits: HttpListenerLimits, onRefused: (reason: HttpListenerRefusal, address: string | undefined, detail: string) => void): void {
  server.headersTimeout = limits.headersTimeoutMs;
  server.requestTimeout = Math.max(limits.requestTimeoutMs, limits.headersTimeoutMs);
  server.keepAliveTimeout = limits.idleTimeoutMs;
  // Read when it starts listening.
  (server as HttpServer & { connectionsCheckingInterval: number }).connectionsCheckingInterval = timeoutCheckIntervalMs(limits.headersTimeoutMs);
  const cap = capConnectionsPerSource(server, limits.maxConnectionsPerSource, (from, max) => onRefused('too-many-connections', from, `${from} already holds ${max} connections`));
  server.on('tlsClientError', (err: Error & { code?: string }, socket: TLSSocket) => {
    // A connection closed for its source's count fails its handshake too; it counts once.
    // (`_parent`: the TCP socket a server-side TLSSocket wraps; Node has no public name for it.)
    if (cap.refused((socket as unknown as { _parent?: Socket })._parent!)) return;
    onRefused('tls-handshake', socket.remoteAddress, `TLS handshake failed: ${err.code ?? err.message}`);
  });
  // Node answers these itself (408, 400) when nobody listens; the same answer, written as Node does
  // before the connection is destroyed, and reported.
  server.on('clientError', (err: Error & { code?: string }, socket: Duplex) => {
    const timeout = err.code === 'ERR_HTTP_REQUEST_TIMEOUT';
    onRefused(timeout ? 'request-timeout' : 'bad-request', (socket as Socket).remoteAddress,
      timeout ? `request not complete within its headers (${limits.headersTimeoutMs} ms) or request (${limits.requestTimeoutMs} ms) timeout` : (err.code ?? err.message));
    if (socket.writable) socket.write(`HTTP/1.1 ${timeout ? '408 Request Timeout' : '400 Bad Request'}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    socket.destroy();
  });
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
 * The agent's side ports have a guard of their own (agent/src/admin.ts guardSidePort: its admin port
 * checks the client's uid, and its /flows streams outlive an idle timeout).
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
      for (const [listener, server] of Object.entries(listeners)) limitHttpListener(server, limits, (reason, address, detail) => refuse('connection', listener, reason, address, detail));
    },
  };
}
