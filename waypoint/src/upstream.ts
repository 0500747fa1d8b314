// Sending requests to endpoints. Connections come from an injected `Upstream` (production: an HBONE
// tunnel to the endpoint's node agent with the waypoint's identity; tests: plain TCP), so this file
// only pools them: keep-alive HTTP/1.1 connections (h1client.ts) and one HTTP/2 session per endpoint and caller.
import http2 from 'node:http2';
import net from 'node:net';
import type { Duplex, Readable } from 'node:stream';
import { UpstreamConnectError, UpstreamResetError, UpstreamTimeoutError } from './errors.ts';
import { H1Pool, type H1ProtocolError } from './h1client.ts';
import type { HeaderMap } from './headers.ts';
import type { NetworkGateway } from '../../lib/model/mesh.ts';
import { MAX_TIMER_MS } from '../../lib/model/validate.ts';

export interface UpstreamEndpoint {
  ip: string;
  port: number;
  /** Address of the endpoint's node agent, when it is reached over HBONE. */
  node?: string;
  /** Identity the endpoint must present (HBONE). */
  spiffeId?: string;
  /** The endpoint is on another network: reached through that network's east-west gateway (double HBONE). */
  gateway?: NetworkGateway;
}

export interface UpstreamConnectOptions {
  timeoutMs: number;
  /** The original client this stream carries (a passthrough stream of one caller); HBONE sends it as `forwarded: for=`. */
  forwardedFor?: { ip: string; port: number };
  /** The caller's SPIFFE ID (its tunnel's verified peer); HBONE sends it as x-forwarded-client-cert `URI`, for the destination's DENY policies. */
  caller?: string;
  /**
   * Called once when what carries the connection is going away (its HBONE session got GOAWAY: the
   * destination's agent is draining for an upgrade). The connection still finishes what is in flight,
   * but the caller must send no new request on it (RFC 9113 section 6.8), or the drain deadline cuts it.
   */
  onDraining?: () => void;
}

/** Opens byte streams to endpoints. */
export interface Upstream {
  connect(endpoint: UpstreamEndpoint, opts: UpstreamConnectOptions): Promise<Duplex>;
}

export type UpstreamProtocol = 'http1' | 'http2';

export interface UpstreamRequest {
  method: string;
  path: string;
  authority: string;
  headers: HeaderMap;
  /** Request body; null for none. */
  body: Readable | null;
  signal: AbortSignal;
  /**
   * The caller's address as the waypoint knows it (its tunnel's vouched client, not X-Forwarded-For):
   * sent as the HBONE `forwarded: for=`, so the destination agent delivers from it and its policy
   * sees the caller, not the waypoint. Connections are pooled per endpoint and caller for that.
   */
  client?: string;
  /** The caller's SPIFFE ID (its tunnel's verified peer), named to the destination agent (`UpstreamConnectOptions.caller`); part of the pool key too. */
  callerId?: string;
  /**
   * How long this endpoint's connections may sit idle before they close: the backend's TrafficPolicy
   * `timeouts.idle` (Istio connectionPool.http.idleTimeout; 0: never). Default the pool's
   * (`idleTimeoutMs`). Taken when the connections for the endpoint and caller are first made.
   */
  idleMs?: number;
}

export interface UpstreamResponse {
  status: number;
  headers: HeaderMap;
  body: Readable;
  /** HTTP/2 only: the response headers carried END_STREAM (a gRPC trailers-only response). */
  endStreamOnHeaders: boolean;
  /** Trailers, once `body` has ended. */
  trailers(): HeaderMap | undefined;
  /** Stops reading and releases the stream (a response that is discarded, e.g. before a retry). */
  discard(): void;
  /** HTTP/1.1 only: a 101 to a request that asked to upgrade. The connection, and what followed the head on it. */
  upgraded?: { socket: Duplex; head: Buffer };
}

/** Plain TCP: endpoints outside the mesh, and tests. */
export class TcpUpstream implements Upstream {
  connect(ep: UpstreamEndpoint, opts: UpstreamConnectOptions): Promise<Duplex> {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host: ep.ip, port: ep.port });
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new UpstreamConnectError(addr(ep), `no connection within ${opts.timeoutMs} ms`));
      }, opts.timeoutMs);
      sock.once('connect', () => { clearTimeout(timer); sock.setNoDelay(true); resolve(sock); });
      sock.once('error', (err) => { clearTimeout(timer); reject(new UpstreamConnectError(addr(ep), err.message, err)); });
    });
  }
}

export function addr(ep: { ip: string; port: number }): string {
  return ep.ip.includes(':') ? `[${ep.ip}]:${ep.port}` : `${ep.ip}:${ep.port}`;
}

export interface UpstreamPoolOptions {
  /** Idle keep-alive connections and HTTP/2 sessions close after this long. Default 60 s. */
  idleTimeoutMs?: number;
  /** An HTTP/1.1 connection to `endpoint` was given up for what the endpoint sent (H1ProtocolError). */
  onProtocolError?: (reason: H1ProtocolError, endpoint: string, detail: string) => void;
}

export const DEFAULT_IDLE_TIMEOUT_MS = 60_000;

export class UpstreamPool {
  private readonly upstream: Upstream;
  private readonly h1Pools = new Map<string, H1Pool>();
  private readonly sessions = new Map<string, Promise<http2.ClientHttp2Session>>();
  private readonly idleMs: number;
  private readonly onProtocolError: NonNullable<UpstreamPoolOptions['onProtocolError']>;
  private closed = false;
  /** Connections opened so far (for tests and stats). */
  connectionsOpened = 0;

  /** HTTP/1.1 pools held (one per endpoint and caller; a pool whose connections all closed is dropped). */
  get agentsHeld(): number {
    return this.h1Pools.size;
  }

  constructor(upstream: Upstream, opts: UpstreamPoolOptions = {}) {
    this.upstream = upstream;
    this.idleMs = opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
    this.onProtocolError = opts.onProtocolError ?? (() => {});
  }

  private connect(ep: UpstreamEndpoint, timeoutMs: number, forwardedFor?: { ip: string; port: number }, onDraining?: () => void, caller?: string): Promise<Duplex> {
    this.connectionsOpened++;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new UpstreamConnectError(addr(ep), `no connection within ${timeoutMs} ms`, new UpstreamTimeoutError('connect', timeoutMs))), timeoutMs);
    });
    const attempt = this.upstream.connect(ep, { timeoutMs, ...(forwardedFor ? { forwardedFor } : {}), ...(onDraining ? { onDraining } : {}), ...(caller ? { caller } : {}) }).then((d) => d, (err: unknown) => {
      throw err instanceof UpstreamConnectError ? err : new UpstreamConnectError(addr(ep), (err as Error).message, err);
    });
    attempt.then((d) => { if (timer === undefined) d.destroy(); }, () => {});
    return Promise.race([attempt, timeout]).finally(() => { clearTimeout(timer); timer = undefined; });
  }

  /** A raw byte stream to the endpoint (TCP passthrough) for one caller (`forwardedFor`, `caller` its SPIFFE ID); not pooled. */
  openStream(ep: UpstreamEndpoint, connectTimeoutMs: number, forwardedFor?: { ip: string; port: number }, caller?: string): Promise<Duplex> {
    return this.connect(ep, connectTimeoutMs, forwardedFor, undefined, caller);
  }

  /**
   * An HTTP/1.1 request that asks to switch protocols, on a connection of its own (never pooled: a
   * 101 hands it over as `upgraded`, any other answer closes it once read). `forwardedFor` carries
   * the client's port too, as a passthrough stream does. `req.headers` go as they are (Host, Connection
   * and Upgrade included: they are this hop's to send).
   */
  upgrade(ep: UpstreamEndpoint, req: UpstreamRequest, connectTimeoutMs: number, forwardedFor?: { ip: string; port: number }): Promise<UpstreamResponse> {
    const own = new H1Pool(addr(ep), () => this.connect(ep, connectTimeoutMs, forwardedFor, undefined, req.callerId), this.idleMs, () => {}, this.onProtocolError);
    return own.request(req, true);
  }

  request(ep: UpstreamEndpoint, protocol: UpstreamProtocol, req: UpstreamRequest, connectTimeoutMs: number): Promise<UpstreamResponse> {
    return protocol === 'http2' ? this.requestH2(ep, req, connectTimeoutMs) : this.requestH1(ep, req, connectTimeoutMs);
  }

  /** The pool key: the endpoint, and the caller its connections speak for (`forwarded: for=`, and by identity). */
  private static key(ep: UpstreamEndpoint, client: string | undefined, caller: string | undefined): string {
    return `${addr(ep)}${client ? ` for ${client}` : ''}${caller ? ` as ${caller}` : ''}`;
  }

  /** The caller a pooled connection speaks for: its address, no port (the connection outlives any one of the caller's). */
  private static forwardedFor(client: string | undefined): { ip: string; port: number } | undefined {
    return client ? { ip: client, port: 0 } : undefined;
  }

  /** A request's idle timeout for its endpoint's connections (`UpstreamRequest.idleMs`). */
  private idleFor(r: UpstreamRequest): number {
    return r.idleMs === undefined ? this.idleMs : r.idleMs === 0 ? MAX_TIMER_MS : Math.min(r.idleMs, MAX_TIMER_MS);
  }

  private h1For(ep: UpstreamEndpoint, connectTimeoutMs: number, client: string | undefined, caller: string | undefined, idleMs: number): H1Pool {
    const key = UpstreamPool.key(ep, client, caller);
    let p = this.h1Pools.get(key);
    if (!p) {
      const pool: H1Pool = new H1Pool(addr(ep), (onDraining) => this.connect(ep, connectTimeoutMs, UpstreamPool.forwardedFor(client), onDraining, caller), idleMs, () => {
        if (this.h1Pools.get(key) === pool) this.h1Pools.delete(key);
      }, this.onProtocolError);
      p = pool;
      this.h1Pools.set(key, p);
    }
    return p;
  }

  private requestH1(ep: UpstreamEndpoint, r: UpstreamRequest, connectTimeoutMs: number): Promise<UpstreamResponse> {
    const headers: HeaderMap = { ...r.headers, host: r.authority };
    // Every body is framed (RFC 9112 section 6): Content-Length when the client sent one, else
    // chunked. A body of a GET, DELETE or OPTIONS sent raw onto the keep-alive connection would be
    // read by the backend as a second request (request smuggling). No body: no framing fields at all.
    if (r.body) {
      if (headers['content-length'] === undefined) headers['transfer-encoding'] = 'chunked';
    } else if (headers['content-length'] !== undefined && headers['content-length'] !== '0') {
      delete headers['content-length'];
    }
    return this.h1For(ep, connectTimeoutMs, r.client, r.callerId, this.idleFor(r)).request({ ...r, headers });
  }

  private async sessionFor(ep: UpstreamEndpoint, connectTimeoutMs: number, client: string | undefined, caller: string | undefined, idleMs: number): Promise<http2.ClientHttp2Session> {
    const key = UpstreamPool.key(ep, client, caller);
    for (let i = 0; i < 2; i++) {
      let p = this.sessions.get(key);
      if (!p) {
        p = this.openSession(ep, key, connectTimeoutMs, client, caller, idleMs);
        this.sessions.set(key, p);
        p.catch(() => { if (this.sessions.get(key) === p) this.sessions.delete(key); });
      }
      const s = await p;
      if (!s.closed && !s.destroyed) return s;
      if (this.sessions.get(key) === p) this.sessions.delete(key);
    }
    throw new UpstreamConnectError(addr(ep), 'HTTP/2 session closed while opening');
  }

  private async openSession(ep: UpstreamEndpoint, key: string, connectTimeoutMs: number, client: string | undefined, caller: string | undefined, idleMs: number): Promise<http2.ClientHttp2Session> {
    // Its tunnel draining: new requests go to a new session, this one finishes its streams (GOAWAY).
    let draining = false;
    let session: http2.ClientHttp2Session | undefined;
    const retire = (): void => {
      draining = true;
      if (!session) return;
      forget();
      if (!session.closed) session.close();
    };
    const duplex = await this.connect(ep, connectTimeoutMs, UpstreamPool.forwardedFor(client), retire, caller);
    if (this.closed) { duplex.destroy(); throw new UpstreamConnectError(addr(ep), 'pool closed'); }
    const s = http2.connect(`http://${addr(ep)}`, {
      createConnection: () => duplex,
      settings: { enablePush: false },
      peerMaxConcurrentStreams: 1000,
    });
    const forget = (): void => {
      const cur = this.sessions.get(key);
      if (cur) cur.then((c) => { if (c === s && this.sessions.get(key) === cur) this.sessions.delete(key); }, () => {});
    };
    session = s;
    if (draining) s.close();
    s.on('error', forget);
    s.on('goaway', forget);
    s.on('close', forget);
    s.setTimeout(idleMs, () => { forget(); s.close(); });
    return s;
  }

  private async requestH2(ep: UpstreamEndpoint, r: UpstreamRequest, connectTimeoutMs: number): Promise<UpstreamResponse> {
    const session = await this.sessionFor(ep, connectTimeoutMs, r.client, r.callerId, this.idleFor(r));
    return new Promise((resolve, reject) => {
      const headers: http2.OutgoingHttpHeaders = {
        ...r.headers, ':method': r.method, ':path': r.path, ':authority': r.authority, ':scheme': 'http',
      };
      let stream: http2.ClientHttp2Stream;
      try {
        stream = session.request(headers, { endStream: r.body === null });
      } catch (err) {
        reject(new UpstreamResetError(addr(ep), (err as Error).message, err));
        return;
      }
      let responded = false;
      let trailers: HeaderMap | undefined;
      const onAbort = (): void => { if (!stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL); };
      r.signal.addEventListener('abort', onAbort, { once: true });
      stream.on('trailers', (t) => { trailers = stripPseudo(t as HeaderMap); });
      const fail = (detail: string, code: number | undefined, cause?: unknown): void => {
        if (responded) return;
        responded = true;
        const err = new UpstreamResetError(addr(ep), detail, cause);
        if (code === http2.constants.NGHTTP2_REFUSED_STREAM) (err as UpstreamResetError & { refusedStream?: boolean }).refusedStream = true;
        reject(err);
      };
      stream.on('error', (err: Error) => fail(err.message, stream.rstCode, err));
      stream.on('close', () => {
        r.signal.removeEventListener('abort', onAbort);
        fail(`stream closed with code ${stream.rstCode ?? 'none'} before a response`, stream.rstCode);
      });
      stream.on('response', (h, flags) => {
        if (responded) return;
        responded = true;
        resolve({
          status: Number(h[':status'] ?? 502),
          headers: stripPseudo(h as HeaderMap),
          body: stream,
          endStreamOnHeaders: (flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0,
          trailers: () => trailers,
          discard: () => { if (!stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL); },
        });
      });
      if (r.body) r.body.pipe(stream);
    });
  }

  /** Closes pooled connections; requests in flight are cut. */
  close(): void {
    this.closed = true;
    for (const a of this.h1Pools.values()) a.destroy();
    this.h1Pools.clear();
    for (const p of this.sessions.values()) p.then((s) => s.destroy(), () => {});
    this.sessions.clear();
  }
}

function stripPseudo(h: HeaderMap): HeaderMap {
  const out: HeaderMap = {};
  for (const [k, v] of Object.entries(h)) if (!k.startsWith(':')) out[k] = v;
  return out;
}

/** Did the attempt fail because the stream was refused (HTTP/2 REFUSED_STREAM)? */
export function isRefusedStream(err: unknown): boolean {
  return (err as { refusedStream?: boolean } | undefined)?.refusedStream === true;
}
