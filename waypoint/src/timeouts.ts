// Downstream (client-side) timeouts: how long a client may take to send request headers, and how
// long a connection may sit with no request in progress. The equivalents of Envoy's
// request_headers_timeout and the connection idle_timeout.
//
// HTTP/1.1 uses node:http's own machinery (headersTimeout checked every connectionsCheckingInterval,
// keepAliveTimeout between requests); the engine only has to switch it on (see engine.ts). HTTP/2
// has no header timeout in node:http2, so H2Timeouts below watches each session.
import type http2 from 'node:http2';
import type { Duplex } from 'node:stream';

/** A client must finish its request headers within this long (HTTP/1.1 and HTTP/2). */
export const DEFAULT_REQUEST_HEADERS_TIMEOUT_MS = 10_000;
/** A client connection with no request in progress is closed after this long. */
export const DEFAULT_IDLE_TIMEOUT_MS = 60_000;
/**
 * After a timeout, a session with no open stream whose connection is still up after this long (the
 * client reads nothing, so the GOAWAY and FIN cannot leave) has its connection destroyed.
 */
const H2_CLOSE_GRACE_MS = 1000;

/**
 * Gives a tunnel that is not a net.Socket (an HBONE stream is one end of a duplexPair) the
 * inactivity timeout net.Socket has: `setTimeout(ms)` emits 'timeout' after `ms` without bytes from
 * the client. node:http arms it between requests (keepAliveTimeout) and only if the socket has one,
 * so without this idle HTTP/1.1 connections over HBONE were never closed.
 */
export function addInactivityTimeout(d: Duplex): void {
  const s = d as Duplex & { setTimeout?: unknown };
  if (typeof s.setTimeout === 'function') return;
  let timer: NodeJS.Timeout | undefined;
  const stop = (): void => { clearTimeout(timer); timer = undefined; };
  d.on('data', () => timer?.refresh());
  d.once('close', stop);
  s.setTimeout = (ms: number, cb?: () => void): Duplex => {
    stop();
    if (cb) d.once('timeout', cb);
    if (ms > 0 && !d.destroyed) {
      timer = setTimeout(() => { timer = undefined; d.emit('timeout'); }, ms);
      timer.unref();
    }
    return d;
  };
}

export type DownstreamTimeout = 'request_headers' | 'idle';

interface SessionWatch {
  session: http2.ServerHttp2Session;
  /** The tunnel the session runs on. */
  socket: Duplex;
  /** Streams the client opened that are not closed yet. */
  open: number;
  /** Highest client stream id whose headers were complete (a 'stream' event). */
  maxStreamId: number;
  /** Since when the session has had no open stream (undefined while streams are open). */
  idleSince: number | undefined;
  /** A header block that has begun but not produced a stream: its id and when it was first seen. */
  pending: { id: number; since: number } | undefined;
  /** When a timeout ended the session. */
  expiredAt: number | undefined;
}

/**
 * Header and idle timeouts for HTTP/2 client sessions, checked on one shared interval.
 *
 * - Idle: a session with no open stream for `idleTimeoutMs` gets GOAWAY (NO_ERROR) and is closed.
 *   PING or SETTINGS frames do not count as activity, so a client cannot hold an idle session.
 * - Request headers: nghttp2 advances `lastProcStreamID` when a HEADERS frame begins a new stream,
 *   and node:http2 emits 'stream' only when the header block is complete (END_HEADERS). A session
 *   whose newest stream has begun but not been emitted for `headersTimeoutMs` holds an unfinished
 *   header block (HEADERS without END_HEADERS, then silence or a trickle): it gets GOAWAY and is
 *   closed. While a header block is open the client can send nothing else on the session, so
 *   nothing healthy is waiting. Streams already open are left to finish (graceful close): a
 *   long request or a gRPC stream on the session is not cut by the header timeout.
 *
 * A stream nghttp2 began but node refused before emitting it (too many header pairs) looks like
 * an unfinished block until the next stream; such a session gets the same graceful GOAWAY.
 */
export class H2Timeouts {
  private readonly sessions = new Set<SessionWatch>();
  private timer: NodeJS.Timeout | undefined;
  private readonly o: { headersTimeoutMs: number; idleTimeoutMs: number; checkIntervalMs: number; onTimeout: (kind: DownstreamTimeout) => void };

  constructor(o: { headersTimeoutMs: number; idleTimeoutMs: number; checkIntervalMs: number; onTimeout: (kind: DownstreamTimeout) => void }) {
    this.o = o;
  }

  watch(session: http2.ServerHttp2Session, socket: Duplex): void {
    const w: SessionWatch = { session, socket, open: 0, maxStreamId: 0, idleSince: Date.now(), pending: undefined, expiredAt: undefined };
    this.sessions.add(w);
    session.on('stream', (stream: http2.ServerHttp2Stream) => {
      w.open++;
      w.idleSince = undefined;
      const id = stream.id ?? 0;
      if (id > w.maxStreamId) w.maxStreamId = id;
      stream.once('close', () => {
        if (--w.open === 0) w.idleSince = Date.now();
      });
    });
    session.once('close', () => {
      this.sessions.delete(w);
      if (this.sessions.size === 0) { clearInterval(this.timer); this.timer = undefined; }
    });
    if (!this.timer) {
      this.timer = setInterval(() => this.check(), this.o.checkIntervalMs);
      this.timer.unref();
    }
  }

  private check(): void {
    const now = Date.now();
    for (const w of this.sessions) {
      const s = w.session;
      if (w.expiredAt !== undefined) {
        if (w.open === 0 && now - w.expiredAt >= H2_CLOSE_GRACE_MS && !w.socket.destroyed) w.socket.destroy();
        continue;
      }
      if (s.destroyed || s.closed) continue;
      let last: number;
      try {
        last = s.state.lastProcStreamID ?? 0;
      } catch {
        continue; // the handle went away between the destroyed check and here
      }
      if (last > w.maxStreamId) {
        if (w.pending?.id !== last) w.pending = { id: last, since: now };
        else if (now - w.pending.since >= this.o.headersTimeoutMs) { this.expire(w, 'request_headers'); continue; }
      } else {
        w.pending = undefined;
      }
      if (w.idleSince !== undefined && w.pending === undefined && now - w.idleSince >= this.o.idleTimeoutMs) this.expire(w, 'idle');
    }
  }

  private expire(w: SessionWatch, kind: DownstreamTimeout): void {
    w.expiredAt = Date.now();
    this.o.onTimeout(kind);
    // Either way the client gets GOAWAY (NO_ERROR, the last stream processed). With no stream open,
    // destroy: nghttp2 sends the GOAWAY and the connection is ended at once (close() would wait for
    // the next frame from the client to notice there is nothing left). With streams open, close():
    // they may finish, new ones go to another connection.
    if (w.open === 0) w.session.destroy();
    else w.session.close();
  }

  /** Sessions being watched (tests). */
  get size(): number {
    return this.sessions.size;
  }

  close(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    this.sessions.clear();
  }
}
