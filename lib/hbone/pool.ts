import {
  connect as h2connect,
  constants as h2,
  type ClientHttp2Session,
  type ClientHttp2Stream,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
} from 'node:http2';
import { connect as netConnect, isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import { connect as tlsConnect, type PeerCertificate, type TLSSocket } from 'node:tls';
import { clip } from '../log.ts';
import { formatAuthority, parseAuthority } from './authority.ts';
import {
  HboneConnectTimeoutError,
  HboneError,
  HbonePeerIdentityError,
  HbonePoolClosedError,
  HboneRefusedError,
  HboneSessionError,
  HboneStreamError,
} from './errors.ts';
import { checkPeer, expectedPeerKey, spiffeIdFromCert, type ExpectedPeer } from './peer.ts';
import { SessionBuffer } from './session-buffer.ts';
import {
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_CONNECTION_WINDOW,
  DEFAULT_MAX_FRAME_SIZE,
  DEFAULT_MAX_SESSION_MEMORY_MB,
  DEFAULT_MAX_STREAMS_PER_SESSION,
  DEFAULT_PING_INTERVAL_MS,
  DEFAULT_PING_TIMEOUT_MS,
  DEFAULT_POOL_IDLE_TIMEOUT_MS,
  DEFAULT_SESSION_BUFFER,
  DEFAULT_STREAM_WINDOW,
  HBONE_REASON_HEADER,
  MAX_HEADER_LIST_SIZE,
} from './tuning.ts';

/** A source identity's TLS material as plain node:tls values. */
export interface ClientTlsMaterial {
  key: string | Buffer;
  /** Leaf certificate followed by intermediates. */
  cert: string | Buffer;
  /** Trust bundle the server's chain must verify against. */
  ca: string | Buffer | Array<string | Buffer>;
  /** SNI to send (never an IP address). Default: none. */
  servername?: string;
}

export interface HboneConnectOptions {
  /**
   * The source identity (e.g. its SPIFFE ID). Sessions are shared only between connects with the
   * same source key, destination and expected peer, and the same `tls` certificate and trust
   * bundle: a connect with other ones (a rotated certificate, new roots) retires the sessions made
   * with the old ones, so that a server verified against a root since removed gets no new tunnel.
   */
  sourceKey: string;
  tls: ClientTlsMaterial;
  /** The HBONE endpoint: destination agent or waypoint, usually port 15008. */
  dest: { host: string; port: number };
  /** CONNECT target, `ip:port` or `[ipv6]:port`. */
  target: string;
  /**
   * Who the server must be. Sessions are keyed by it: pass a string, an array, or the same check
   * function every time (a fresh closure per connect would get a fresh session per connect).
   */
  expectPeer: ExpectedPeer;
  /** Extra request headers (forwarded, baggage, traceparent). */
  headers?: Record<string, string>;
  /** Overrides the pool's connect timeout. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /**
   * `dest` is on another network, reached only through that network's east-west gateway (double
   * HBONE, Istio's multi-network data path). The session to `dest` then runs inside one CONNECT
   * stream of a session to the gateway, both pooled here and both with `tls` (the outer one without
   * SNI): the gateway terminates only the outer TLS and pipes the inner session's ciphertext to
   * `dest`, which authenticates this source's own certificate. The outer CONNECT names `target`
   * (the gateway admits only its own network's enrolled endpoints and connects to their agent), or
   * `gateway.target` (one of that network's waypoints, at its HBONE port); the
   * inner session is pooled like any other, keyed by the gateway too, so later connects to targets
   * behind the same agent and identity reuse it: no TLS handshake and no outer CONNECT of their own.
   */
  gateway?: HboneGateway;
  /**
   * Called once if the session carrying this tunnel leaves the pool while the tunnel is open (the
   * server sent GOAWAY because it drains, or a certificate rotation retired it). The tunnel goes on;
   * a caller that keeps it for more work (a keep-alive HTTP connection) should send new work over a
   * new tunnel, or the server's drain deadline cuts it.
   */
  onRetired?: () => void;
}

/** Another network's east-west gateway (`HboneConnectOptions.gateway`). */
export interface HboneGateway {
  /** Its HBONE address (port 15008 at the other network's edge). */
  host: string;
  port: number;
  /** Who the gateway must be (`spiffe://<td>/ns/<root ns>/sa/weft-eastwest`). */
  expectPeer: ExpectedPeer;
  /**
   * What the outer CONNECT names. Default: the inner `target`, an endpoint, whose node agent the
   * gateway connects to. A waypoint of that network: its own HBONE address (`dest`), which the
   * gateway admits as one of its cluster's waypoints and connects to as it is.
   */
  target?: string;
}

export interface HbonePoolOptions {
  /** Session establishment plus the CONNECT's 200. Default 10 s. */
  connectTimeoutMs?: number;
  /** A session without streams is closed after this long. Default 60 s. */
  idleTimeoutMs?: number;
  /** Per-stream receive window. Default 4 MiB. */
  streamWindow?: number;
  /** Per-session receive window. Default 64 MiB. */
  connectionWindow?: number;
  /** SETTINGS_MAX_FRAME_SIZE. Default 16 KiB. */
  maxFrameSize?: number;
  /** nghttp2 memory cap per session in MB. Default 256. */
  maxSessionMemoryMb?: number;
  /**
   * Streams per session before the pool opens another session to the same destination; the
   * server's SETTINGS_MAX_CONCURRENT_STREAMS lowers it further. Default 1000.
   */
  maxStreamsPerSession?: number;
  /**
   * The source address of the pool's sessions, for destinations of its family: an agent gives its
   * node address, which the receiver checks a `for=` claim against (the workload's node). Without
   * it the kernel picks one, and towards a pod on the same node that is the address of the pod's
   * link (a bridge's or a link-local gateway's), which no node owns.
   */
  localAddress?: string;
  /**
   * Liveness: every `intervalMs` a PING; one not answered within `timeoutMs` tears the session down
   * with its tunnels (`stats().sessionsPingTimedOut`). Default 10 s / 20 s, as ztunnel.
   */
  ping?: { intervalMs: number; timeoutMs: number };
  /**
   * Bytes a session's tunnels may hold received from the server and not yet taken by their callers
   * (a pod that reads slowly), whatever the number of tunnels: past it every stream's window shrinks
   * until they catch up (session-buffer.ts). Default DEFAULT_SESSION_BUFFER (64 MiB).
   */
  sessionBuffer?: number;
  /** A session went over its buffer: the server may send its tunnels only a shrunk window until their callers catch up. */
  onSessionThrottled?: (e: { sourceKey: string; dest: string; heldBytes: number; tunnels: number }) => void;
  /** Called once per new session, after the handshake and the identity check. */
  onSession?: (ev: { sourceKey: string; dest: string; peerSpiffeId: string | undefined; via?: string }) => void;
}

export interface HbonePoolStats {
  sessionsOpened: number;
  sessionsActive: number;
  sessionFailures: number;
  streamsOpened: number;
  streamsActive: number;
  /** CONNECTs the server refused unprocessed as over its stream limit (retried on another session). */
  streamsRefusedOverLimit: number;
  /** Sessions torn down because the server sent no SETTINGS within the connect timeout. */
  sessionsSetupTimedOut: number;
  /**
   * Sessions retired because their server would take no stream of ours: it advertises
   * SETTINGS_MAX_CONCURRENT_STREAMS 0, or refused a CONNECT as over its limit while none of ours was open.
   */
  sessionsRetiredNoStreams: number;
  /** Times a session went over its buffer (`sessionBuffer`) and had its stream windows shrunk. */
  sessionsThrottled: number;
  /** Sessions cut off because the server did not acknowledge a shrunk window in time (SETTINGS_TIMEOUT). */
  sessionsSettingsTimedOut: number;
  /** Sessions torn down because the server did not answer a PING in time (`ping`). */
  sessionsPingTimedOut: number;
}

interface PooledSession {
  key: string;
  sourceKey: string;
  dest: string;
  /** The certificate and trust bundle the session was made with (`sameCredentials`). */
  tls: ClientTlsMaterial;
  /** Undefined while the tunnel through a gateway that will carry it is being opened. */
  session: ClientHttp2Session | undefined;
  /** What the session's answered tunnels hold unread, against `sessionBuffer`. */
  buffer: SessionBuffer | undefined;
  ready: Promise<ClientHttp2Session>;
  /** Aborts the outer CONNECT of a session through a gateway while it is being opened. */
  dial: AbortController | undefined;
  /** Streams open on the session. */
  active: number;
  /** Connects that picked this session and have not sent their CONNECT yet. */
  pending: number;
  idleTimer: NodeJS.Timeout | undefined;
  /** Out of the pool: GOAWAY, error, idle close or retirement. Existing streams continue. */
  retired: boolean;
  /**
   * The server refused a stream as over its limit (it still counts streams we already closed):
   * no new streams here until one of ours closes.
   */
  saturated: boolean;
  /** The session's error, if it died of one (TLS alert, reset): the best explanation for its streams. */
  error: Error | undefined;
  /** The session emitted 'close'. */
  closeSeen: boolean;
  /** `onRetired` of the open tunnels that asked for it. */
  retiredWatchers: Set<() => void>;
}

/** Streams the server refused as over its limit (their own 'close' frees no slot). */
const overLimit = new WeakSet<ClientHttp2Stream>();

/** How often one connect may move to another session because the chosen one turned out full. */
const MAX_SESSION_MOVES = 8;

/**
 * A failure before the server could have acted on the stream: safe to retry on another session.
 * `retire`: the session itself is unusable (GOAWAY, closed); otherwise it was only full.
 */
class RetryableStreamError extends Error {
  readonly inner: HboneError;
  readonly retire: boolean;
  constructor(inner: HboneError, retire = true) {
    super(inner.message);
    this.inner = inner;
    this.retire = retire;
  }
}

/**
 * Streams a session keeps free of its server's SETTINGS_MAX_CONCURRENT_STREAMS (for limits of 64 and
 * up): the server frees a stream a little after we consider it closed, so under churn a session
 * filled to the last slot gets new streams refused (Node: RST_STREAM ENHANCE_YOUR_CALM).
 */
export function streamHeadroom(limit: number): number {
  return limit >= 64 ? Math.ceil(limit / 32) : 0;
}

/**
 * Pooled HBONE client: one HTTP/2 session per (source identity, destination, expected peer), many
 * CONNECT streams on it. Concurrent connects share one in-flight handshake; a session that fails
 * or receives GOAWAY leaves the pool and the next connect builds a fresh one. A destination on
 * another network (`gateway`) gets the same: one session per (source, destination, expected peer,
 * gateway), carried in one CONNECT stream of the source's session to the gateway (double HBONE).
 */
export class HbonePool {
  readonly #opts: HbonePoolOptions;
  /** Live sessions per pool key; more than one only when the first is at its stream limit. */
  readonly #sessions = new Map<string, PooledSession[]>();
  readonly #all = new Set<PooledSession>();
  readonly #stats: HbonePoolStats = {
    sessionsOpened: 0,
    sessionsActive: 0,
    sessionFailures: 0,
    streamsOpened: 0,
    streamsActive: 0,
    streamsRefusedOverLimit: 0,
    sessionsSetupTimedOut: 0,
    sessionsRetiredNoStreams: 0,
    sessionsThrottled: 0,
    sessionsSettingsTimedOut: 0,
    sessionsPingTimedOut: 0,
  };
  #closed = false;

  constructor(opts: HbonePoolOptions = {}) {
    this.#opts = opts;
  }

  stats(): HbonePoolStats {
    return { ...this.#stats };
  }

  /**
   * Opens a tunnel to `target` through `dest`. Resolves with the stream (a Duplex carrying the
   * tunnel's bytes) once the server answered 200. Rejects with HboneRefusedError (non-200, with
   * status and reason), HboneConnectTimeoutError, HbonePeerIdentityError, HboneSessionError or
   * HboneStreamError.
   */
  async connect(opts: HboneConnectOptions): Promise<ClientHttp2Stream> {
    if (this.#closed) throw new HbonePoolClosedError();
    parseAuthority(opts.target);
    const timeoutMs = opts.timeoutMs ?? this.#opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const dest = formatAuthority(opts.dest.host, opts.dest.port);
    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(new HboneConnectTimeoutError(dest, opts.target, timeoutMs)), timeoutMs);
    const onCallerAbort = (): void => deadline.abort(opts.signal?.reason);
    opts.signal?.addEventListener('abort', onCallerAbort, { once: true });
    let moves = 0;
    try {
      for (let attempt = 0; ; attempt++) {
        const pooled = this.#acquire(opts, dest);
        let reserved = true;
        const release = (): void => {
          if (!reserved) return;
          reserved = false;
          pooled.pending--;
        };
        try {
          const session = await raceAbort(pooled.ready, deadline.signal);
          const capacity = this.#capacity(pooled);
          if (capacity === 0) {
            // It takes no streams (RFC 9113 section 6.5.2): out of the pool, closed once nobody uses
            // it, so that every connect to such a server does not leave one more session behind.
            if (!pooled.retired) this.#stats.sessionsRetiredNoStreams++;
            this.#retire(pooled);
            throw new HboneSessionError(dest, 'the server advertises SETTINGS_MAX_CONCURRENT_STREAMS 0 (it is shutting down or overloaded)');
          }
          if (pooled.active + pooled.pending > capacity && moves++ < MAX_SESSION_MOVES) {
            // A burst larger than the server's stream limit piled onto a new session before its
            // SETTINGS said so: move on to (or start) another session.
            release();
            attempt--;
            continue;
          }
          return await this.#openStream(pooled, session, opts, dest, deadline.signal, release);
        } catch (err) {
          if (err instanceof RetryableStreamError) {
            release();
            if (err.retire) this.#retire(pooled);
            if (attempt < 2) continue;
            throw err.inner;
          }
          throw err;
        } finally {
          release();
          if (pooled.retired) this.#retire(pooled);
        }
      }
    } finally {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onCallerAbort);
    }
  }

  /**
   * Takes every session of `sourceKey` (or all) out of the pool, e.g. after a certificate rotation.
   * Their open tunnels continue; the sessions close when the last one ends.
   */
  retire(sourceKey?: string): void {
    for (const p of this.#all) if (sourceKey === undefined || p.sourceKey === sourceKey) this.#retire(p);
  }

  /** Closes the pool: GOAWAY on every session, destroying them after `graceMs`. */
  async close(graceMs = 5000): Promise<void> {
    this.#closed = true;
    const sessions = [...this.#all];
    for (const p of sessions) this.#retire(p);
    await Promise.race([
      Promise.all(sessions.map((p) => new Promise<void>((resolve) => {
        if (!p.session || p.session.destroyed) resolve();
        else p.session.once('close', () => resolve());
      }))),
      new Promise<void>((resolve) => setTimeout(resolve, graceMs).unref()),
    ]);
    for (const p of sessions) p.session?.destroy();
  }

  /** Picks a live session with a free stream slot for the key (or starts one) and reserves the slot. */
  #acquire(opts: HboneConnectOptions, dest: string): PooledSession {
    const gw = opts.gateway;
    const key = `${opts.sourceKey}\u0000${dest}\u0000${expectedPeerKey(opts.expectPeer)}` +
      (gw ? `\u0000via\u0000${formatAuthority(gw.host, gw.port)}\u0000${expectedPeerKey(gw.expectPeer)}` : '');
    // The source's certificate rotated or its roots changed: sessions made with the old ones
    // take no new tunnels (their open ones go on), as pool.retire(sourceKey) after a rotation.
    for (const p of [...this.#sessions.get(key) ?? []]) {
      if (!sameCredentials(p.tls, opts.tls)) this.#retire(p);
    }
    let list = this.#sessions.get(key);
    if (!list) {
      list = [];
      this.#sessions.set(key, list);
    }
    let pooled = list.find((p) => !p.retired && !p.saturated && !p.session?.destroyed && !p.session?.closed &&
      p.active + p.pending < this.#capacity(p));
    if (!pooled) {
      pooled = this.#createSession(key, opts, dest);
      list.push(pooled);
      this.#all.add(pooled);
    }
    pooled.pending++;
    return pooled;
  }

  #capacity(pooled: PooledSession): number {
    const local = this.#opts.maxStreamsPerSession ?? DEFAULT_MAX_STREAMS_PER_SESSION;
    // Before the server's SETTINGS arrive Node reports the protocol default (unlimited).
    const remote = pooled.session?.remoteSettings?.maxConcurrentStreams ?? local;
    const limit = Math.min(local, remote);
    return limit - streamHeadroom(limit);
  }

  /** `localAddress` when the pool has one of `host`'s family. */
  #localAddressFor(host: string): { localAddress?: string } {
    const local = this.#opts.localAddress;
    return local && isIP(local) === isIP(host) ? { localAddress: local } : {};
  }

  #createSession(key: string, opts: HboneConnectOptions, dest: string): PooledSession {
    const pooled: PooledSession = {
      key,
      sourceKey: opts.sourceKey,
      dest,
      tls: opts.tls,
      session: undefined,
      buffer: undefined,
      ready: undefined as unknown as Promise<ClientHttp2Session>,
      dial: undefined,
      active: 0,
      pending: 0,
      idleTimer: undefined,
      retired: false,
      saturated: false,
      error: undefined,
      closeSeen: false,
      retiredWatchers: new Set(),
    };
    this.#stats.sessionsActive++;
    const gw = opts.gateway;
    if (!gw) {
      // Our own TCP socket so Nagle is off before the first byte: CONNECT frames are small.
      pooled.ready = this.#startSession(pooled, opts, dest,
        netConnect({ host: opts.dest.host, port: opts.dest.port, noDelay: true, ...this.#localAddressFor(opts.dest.host) }));
    } else {
      pooled.ready = this.#startThroughGateway(pooled, opts, dest, gw);
    }
    // Waiters attach their own handlers; this one only keeps a failed setup from going unhandled.
    pooled.ready.catch(noop);
    return pooled;
  }

  /**
   * Double HBONE: a CONNECT to the gateway naming the first target (a session of its own in this
   * pool, per source identity and gateway), then the session to `dest` over that stream. The
   * stream lives as long as the inner session: the inner session's close ends it, and its end
   * (reset, the gateway gone) closes the inner session, which leaves the pool like any dead one.
   *
   * Istio's ztunnel (src/proxy/outbound.rs, `proxy_to_double_hbone`) opens a fresh inner TLS
   * session, and a fresh outer CONNECT, for every connection and leaves the inner one unpooled on
   * purpose: its outer CONNECT names the Service hostname and the gateway picks the workload, so a
   * pooled inner session would pin every connection to the one workload first picked. Here the
   * source picks the endpoint and the outer CONNECT names it, so the inner session's end (agent
   * address, identity) is known before dialling and pools as ztunnel pools its single-network
   * sessions (per source identity, destination identity and address, `WorkloadKey` in
   * src/proxy/pool.rs), the gateway in the key as well.
   */
  async #startThroughGateway(pooled: PooledSession, opts: HboneConnectOptions, dest: string, gw: HboneGateway): Promise<ClientHttp2Session> {
    const dial = new AbortController();
    pooled.dial = dial;
    let outer: ClientHttp2Stream;
    try {
      outer = await this.connect({
        sourceKey: opts.sourceKey,
        // The caller's own certificate on both hops; SNI names the inner destination only.
        tls: { key: opts.tls.key, cert: opts.tls.cert, ca: opts.tls.ca },
        dest: { host: gw.host, port: gw.port },
        target: gw.target ?? opts.target,
        expectPeer: gw.expectPeer,
        ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
        signal: dial.signal,
        // The gateway drains (GOAWAY) or the source's certificate rotated: no new work on this path.
        onRetired: () => this.#retire(pooled),
      });
    } catch (err) {
      if (!dial.signal.aborted) this.#stats.sessionFailures++;
      pooled.error ??= err as Error;
      this.#retire(pooled);
      this.#forget(pooled);
      throw err;
    } finally {
      pooled.dial = undefined;
    }
    if (dial.signal.aborted) {
      // Retired with nobody waiting while the outer CONNECT was answered.
      outer.destroy();
      this.#forget(pooled);
      throw new HboneSessionError(dest, 'the session was retired while its tunnel through the gateway opened');
    }
    // Errors of the outer stream reach the inner session as its socket's close.
    outer.on('error', noop);
    return this.#startSession(pooled, opts, dest, outer, formatAuthority(gw.host, gw.port));
  }

  /** The session's bookkeeping ends (once): it no longer counts as active and leaves the pool's list. */
  #forget(pooled: PooledSession): void {
    if (pooled.closeSeen) return;
    pooled.closeSeen = true;
    if (pooled.idleTimer) clearTimeout(pooled.idleTimer);
    this.#all.delete(pooled);
    this.#stats.sessionsActive--;
  }

  /** TLS and HTTP/2 over `transport` (a TCP socket, or a tunnel through a gateway: `via`). */
  #startSession(pooled: PooledSession, opts: HboneConnectOptions, dest: string, transport: Duplex, via?: string): Promise<ClientHttp2Session> {
    const { tls, expectPeer } = opts;
    let identityError: HbonePeerIdentityError | undefined;
    let peerSpiffeId: string | undefined;
    const session = h2connect(`https://${dest}`, {
      createConnection: () => destroyOnError(tlsConnect({
        socket: transport,
        host: opts.dest.host,
        key: tls.key,
        cert: tls.cert,
        ca: tls.ca,
        ...(tls.servername ? { servername: tls.servername } : {}),
        minVersion: 'TLSv1.3',
        maxVersion: 'TLSv1.3',
        ALPNProtocols: ['h2'],
        rejectUnauthorized: true,
        // Mesh certificates name workloads by SPIFFE ID, not host name: check that instead.
        checkServerIdentity: (_host: string, cert: PeerCertificate) => {
          peerSpiffeId = spiffeIdFromCert(cert)?.uri;
          const reason = checkPeer(expectPeer, peerSpiffeId, cert);
          if (reason === undefined) return undefined;
          identityError = new HbonePeerIdentityError(dest, peerSpiffeId, reason);
          return identityError;
        },
      })),
      maxSessionMemory: this.#opts.maxSessionMemoryMb ?? DEFAULT_MAX_SESSION_MEMORY_MB,
      settings: {
        enablePush: false,
        initialWindowSize: this.#opts.streamWindow ?? DEFAULT_STREAM_WINDOW,
        maxFrameSize: this.#opts.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE,
        maxHeaderListSize: MAX_HEADER_LIST_SIZE,
      },
    });
    pooled.session = session;
    pooled.buffer = new SessionBuffer(session, {
      budget: this.#opts.sessionBuffer ?? DEFAULT_SESSION_BUFFER,
      streamWindow: this.#opts.streamWindow ?? DEFAULT_STREAM_WINDOW,
      onThrottled: ({ heldBytes, tunnels }) => {
        this.#stats.sessionsThrottled++;
        this.#opts.onSessionThrottled?.({ sourceKey: opts.sourceKey, dest, heldBytes, tunnels });
      },
      onSettingsTimeout: (reason) => {
        this.#stats.sessionsSettingsTimedOut++;
        pooled.error ??= new HboneSessionError(dest, `the server ignored a smaller window: ${reason}`);
      },
    });
    // Every unanswered CONNECT on a dying session waits for its 'close' to learn why (decideAfterClose),
    // up to a session's worth at once: not a leak, so no MaxListenersExceededWarning in the log.
    session.setMaxListeners(0);
    // Registered before the setup listeners so that they see the session's error and close reason.
    session.on('error', (err: Error) => { pooled.error ??= err; });
    session.once('goaway', (code: number, _lastStreamId: number, data?: Buffer) => {
      if (code !== h2.NGHTTP2_NO_ERROR) {
        const said = data && data.length > 0 ? `: ${clip(data.toString('utf8').replace(/[^\x20-\x7e]/g, ' '))}` : '';
        pooled.error ??= new HboneSessionError(dest, `the server ended the session with GOAWAY code ${code}${said}`);
      }
      this.#retire(pooled);
    });
    let remoteSettings = false;
    // A server that accepts the connection (TCP, or TLS too) and never sends its SETTINGS would hold
    // this session in the pool for good, every later connect to it waiting for the same dead
    // handshake and timing out: the session is torn down at the connect timeout instead, so the
    // next connect dials afresh (RFC 9113 section 3.4: the server's preface is its SETTINGS).
    const setupMs = opts.timeoutMs ?? this.#opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const setupTimer = setTimeout(() => {
      if (remoteSettings || session.destroyed) return;
      this.#stats.sessionsSetupTimedOut++;
      pooled.error ??= new HboneSessionError(dest, `no HTTP/2 SETTINGS from the server within ${setupMs} ms of connecting ` +
        `(${session.connecting ? 'TCP or TLS did not complete' : 'it accepted TLS but does not speak HTTP/2'})`);
      session.destroy();
    }, setupMs);
    setupTimer.unref();
    session.once('remoteSettings', () => { remoteSettings = true; clearTimeout(setupTimer); });
    session.once('close', () => {
      clearTimeout(setupTimer);
      if (!remoteSettings && !pooled.error && !identityError) {
        // Node servers verify client certificates after the TLS 1.3 handshake and just close the
        // socket, so this is the only trace a rejected client certificate leaves. (Their
        // certificate_required alert is not always read before the close: when it is not, that we
        // sent no certificate is still known here.)
        pooled.error = !tls.cert ? new HboneSessionError(dest, NO_CLIENT_CERT) : new HboneSessionError(dest, via
          ? `the inner session through the gateway ${via} closed before HTTP/2 started: the destination most ` +
            'likely rejected our client certificate, or the gateway closed the tunnel'
          : 'the server closed the connection right after the TLS handshake, before HTTP/2 started: it most ' +
            'likely rejected our client certificate (issuer not in its trust bundle, expired, or no SPIFFE ID)');
      }
      this.#retire(pooled);
      this.#forget(pooled);
      // The tunnel through the gateway carried only this session.
      if (via && !transport.destroyed) transport.destroy();
    });
    return new Promise<ClientHttp2Session>((resolve, reject) => {
      let settled = false;
      const fail = (err: HboneError): void => {
        if (settled) return;
        settled = true;
        this.#stats.sessionFailures++;
        reject(err);
      };
      const onError = (err: Error): void => fail(identityError ?? sessionError(dest, err, !tls.cert));
      session.once('error', onError);
      // A close after 'remoteSettings' is not a setup failure (nor counted as one).
      session.once('close', () => fail(identityError ?? (pooled.error ? sessionError(dest, pooled.error, !tls.cert) : new HboneSessionError(dest, 'the session closed during setup'))));
      // Ready once the server's SETTINGS arrive: that is after it accepted our certificate (TLS 1.3
      // servers check it after the client considers the handshake done) and tells us its stream limit.
      session.once('remoteSettings', () => {
        if (settled) return;
        settled = true;
        session.off('error', onError);
        this.#stats.sessionsOpened++;
        try {
          session.setLocalWindowSize(this.#opts.connectionWindow ?? DEFAULT_CONNECTION_WINDOW);
        } catch {
          // Closed in the meantime; 'close' below retires it.
        }
        this.#opts.onSession?.({ sourceKey: opts.sourceKey, dest, peerSpiffeId, ...(via ? { via } : {}) });
        this.#keepAlive(pooled, session);
        this.#armIdle(pooled);
        resolve(session);
      });
    });
  }

  /** PINGs the server while the session lives; one unanswered in time ends it (DEFAULT_PING_TIMEOUT_MS). */
  #keepAlive(pooled: PooledSession, session: ClientHttp2Session): void {
    const { intervalMs, timeoutMs } = this.#opts.ping ?? { intervalMs: DEFAULT_PING_INTERVAL_MS, timeoutMs: DEFAULT_PING_TIMEOUT_MS };
    let deadline: NodeJS.Timeout | undefined;
    const interval = setInterval(() => {
      if (deadline || session.destroyed) return;
      deadline = setTimeout(() => {
        if (session.destroyed) return;
        this.#stats.sessionsPingTimedOut++;
        const err = new HboneSessionError(pooled.dest, `no answer to a PING within ${timeoutMs} ms: the destination is gone ` +
          '(node lost, path dropped) or no longer reads; the session and its tunnels are torn down');
        pooled.error ??= err;
        // With the error, so that every tunnel on it fails with it (their pods get a reset).
        session.destroy(err);
      }, timeoutMs);
      deadline.unref();
      try {
        session.ping((err) => {
          if (err) return; // the session is going: its own close handles that
          clearTimeout(deadline);
          deadline = undefined;
        });
      } catch {
        // Closing, or too many PINGs unanswered already: the deadline decides.
      }
    }, intervalMs);
    interval.unref();
    session.once('close', () => {
      clearInterval(interval);
      clearTimeout(deadline);
    });
  }

  #retire(pooled: PooledSession): void {
    if (!pooled.retired) {
      pooled.retired = true;
      const list = this.#sessions.get(pooled.key);
      const i = list ? list.indexOf(pooled) : -1;
      if (list && i >= 0) {
        list.splice(i, 1);
        if (list.length === 0) this.#sessions.delete(pooled.key);
      }
      const watchers = [...pooled.retiredWatchers];
      pooled.retiredWatchers.clear();
      for (const w of watchers) w();
    }
    if (pooled.active !== 0 || pooled.pending !== 0) return;
    const session = pooled.session;
    if (!session) {
      // Still opening its tunnel through a gateway, for nobody now.
      pooled.dial?.abort(new HboneSessionError(pooled.dest, 'the session was retired while its tunnel through the gateway opened'));
    } else if (!session.closed && !session.destroyed) {
      // A session still connecting has nothing to say goodbye to.
      if (session.connecting) session.destroy();
      else session.close();
    }
  }

  #armIdle(pooled: PooledSession): void {
    if (pooled.idleTimer) clearTimeout(pooled.idleTimer);
    pooled.idleTimer = setTimeout(() => {
      if (pooled.active === 0 && pooled.pending === 0) this.#retire(pooled);
    }, this.#opts.idleTimeoutMs ?? DEFAULT_POOL_IDLE_TIMEOUT_MS);
    pooled.idleTimer.unref();
  }

  #openStream(
    pooled: PooledSession,
    session: ClientHttp2Session,
    opts: HboneConnectOptions,
    dest: string,
    signal: AbortSignal,
    release: () => void,
  ): Promise<ClientHttp2Stream> {
    const headers: OutgoingHttpHeaders = { ':method': 'CONNECT', ':authority': opts.target };
    if (opts.headers) {
      for (const [name, value] of Object.entries(opts.headers)) {
        if (!name.startsWith(':')) headers[name.toLowerCase()] = value;
      }
    }
    let stream: ClientHttp2Stream;
    try {
      stream = session.request(headers, { endStream: false });
    } catch (err) {
      // The session closed or got GOAWAY between the pool lookup and now.
      throw new RetryableStreamError(new HboneStreamError(dest, opts.target, `session unusable: ${errText(err)}`, undefined, err));
    }
    this.#stats.streamsOpened++;
    this.#stats.streamsActive++;
    release();
    pooled.active++;
    if (pooled.idleTimer) { clearTimeout(pooled.idleTimer); pooled.idleTimer = undefined; }
    let counted = true;
    /**
     * The server refused this CONNECT unprocessed as over its stream limit. With other streams of
     * ours open the session is only full for now; with none, the limit is not ours to free (a server
     * that refuses everything), and a session kept "full" until the idle timeout per try would let
     * it make the pool hold sessions without bound: it is retired instead.
     */
    const refusedOverLimit = (): void => {
      overLimit.add(stream);
      this.#stats.streamsRefusedOverLimit++;
      pooled.saturated = true;
      if (pooled.active - (counted ? 1 : 0) === 0 && !pooled.retired) {
        this.#stats.sessionsRetiredNoStreams++;
        this.#retire(pooled);
      }
    };
    stream.once('close', () => {
      counted = false;
      this.#stats.streamsActive--;
      // A slot on the server frees up, unless this is the stream it refused for want of one.
      if (!overLimit.has(stream)) pooled.saturated = false;
      if (--pooled.active === 0) {
        if (pooled.retired) this.#retire(pooled);
        else this.#armIdle(pooled);
      }
    });

    return new Promise<ClientHttp2Stream>((resolve, reject) => {
      const cleanup = (): void => {
        stream.off('response', onResponse);
        stream.off('error', onError);
        stream.off('close', onClose);
        signal.removeEventListener('abort', onAbort);
      };
      const fail = (err: Error): void => {
        cleanup();
        stream.on('error', noop);
        if (!stream.closed) stream.close(h2.NGHTTP2_CANCEL);
        reject(err);
      };
      const onResponse = (h: IncomingHttpHeaders): void => {
        const status = Number(h[':status']);
        if (status === 200) {
          cleanup();
          pooled.buffer?.watch(stream);
          const onRetired = opts.onRetired;
          if (onRetired) {
            if (pooled.retired) queueMicrotask(onRetired);
            else {
              pooled.retiredWatchers.add(onRetired);
              stream.once('close', () => pooled.retiredWatchers.delete(onRetired));
            }
          }
          resolve(stream);
          return;
        }
        // The server's words go into the caller's access log and error: cut, so that a destination
        // cannot make every refused connection a 16 KiB log line.
        const reason = h[HBONE_REASON_HEADER];
        fail(new HboneRefusedError(dest, opts.target, status, clip(Array.isArray(reason) ? reason.join(', ') : reason ?? '')!));
      };
      const onError = (err: Error & { code?: string }): void => {
        if (!err.code?.startsWith('ERR_HTTP2') || err.code === 'ERR_HTTP2_SESSION_ERROR') {
          // The session died under the stream (TLS alert, TCP reset, GOAWAY with an error code).
          fail(sessionError(dest, pooled.error ?? err));
          return;
        }
        const inner = new HboneStreamError(dest, opts.target, errText(err), stream.rstCode, err);
        if (err.code === 'ERR_HTTP2_GOAWAY_SESSION') {
          fail(new RetryableStreamError(inner));
        } else if (stream.rstCode === h2.NGHTTP2_ENHANCE_YOUR_CALM || stream.rstCode === h2.NGHTTP2_REFUSED_STREAM) {
          // Refused unanswered as over the server's stream limit: not processed, and the session
          // is fine, only full for now.
          refusedOverLimit();
          fail(new RetryableStreamError(inner, false));
        } else {
          fail(inner);
        }
      };
      const decideAfterClose = (): void => {
        if (pooled.error) {
          fail(sessionError(dest, pooled.error));
          return;
        }
        const code = stream.rstCode;
        const inner = new HboneStreamError(dest, opts.target,
          `stream closed with HTTP/2 code ${code ?? 'none'}${code === h2.NGHTTP2_REFUSED_STREAM ? ' (refused, not processed)' : ''}`, code);
        // REFUSED_STREAM and streams above a GOAWAY's last stream id were not processed, and a
        // session that went away under an unanswered CONNECT took any upstream with it. Nothing of
        // the application's has been sent yet either way, so a fresh session may try again.
        const sessionGone = pooled.retired || session.closed || session.destroyed;
        if (sessionGone) {
          fail(new RetryableStreamError(inner));
        } else if (code === h2.NGHTTP2_REFUSED_STREAM || code === h2.NGHTTP2_ENHANCE_YOUR_CALM) {
          refusedOverLimit();
          fail(new RetryableStreamError(inner, false));
        } else {
          fail(inner);
        }
      };
      const onClose = (): void => {
        // A dying session closes its streams before it reports why (a TLS alert, say): wait for it.
        if (session.destroyed && !pooled.closeSeen && !pooled.error) session.once('close', decideAfterClose);
        else decideAfterClose();
      };
      const onAbort = (): void => {
        const reason: unknown = signal.reason;
        fail(reason instanceof Error ? reason : new HboneStreamError(dest, opts.target, 'aborted by the caller'));
      };
      stream.once('response', onResponse);
      stream.once('error', onError);
      stream.once('close', onClose);
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
    });
  }
}

/**
 * A TLS alert that arrives after the client considered the handshake done (TLS 1.3: the server's
 * verdict on our certificate, e.g. alert 116 "certificate required") makes the TLS socket emit
 * 'error' without destroying it (node:tls destroys the socket itself only for errors before
 * 'secureConnect'). http2 then destroys the session, but waits for its GOAWAY to be written before
 * it emits 'error' and 'close', and that write never completes on a socket whose TLS state has
 * failed: the session hung, silent, until the connect timeout. Destroying the socket on such an
 * error lets the session finish at once with it. Earlier errors (refused, reset, handshake alerts)
 * already destroy the socket and are left to node:tls and http2.
 */
function destroyOnError(socket: TLSSocket): TLSSocket {
  socket.once('secureConnect', () => {
    socket.on('error', (err: Error) => {
      if (!socket.destroyed) socket.destroy(err);
    });
  });
  return socket;
}

/** Whether two connects present the same certificate and trust the same roots (`key` goes with `cert`). */
function sameCredentials(a: ClientTlsMaterial, b: ClientTlsMaterial): boolean {
  if (a === b) return true;
  if (!samePem(a.cert, b.cert)) return false;
  const caA = Array.isArray(a.ca) ? a.ca : [a.ca];
  const caB = Array.isArray(b.ca) ? b.ca : [b.ca];
  return caA.length === caB.length && caA.every((c, i) => samePem(c, caB[i]!));
}

function samePem(a: string | Buffer, b: string | Buffer): boolean {
  if (typeof a === 'string' && typeof b === 'string') return a === b;
  return Buffer.from(a).equals(Buffer.from(b));
}

function raceAbort<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => { signal.removeEventListener('abort', onAbort); resolve(v); },
      (e: unknown) => { signal.removeEventListener('abort', onAbort); reject(e); },
    );
  });
}

const NO_CLIENT_CERT = 'the server refused the connection because we presented no client certificate; HBONE needs this workload\'s mesh certificate';

/** `noCert`: we presented no client certificate (a reset during setup is then the refusal of that). */
function sessionError(dest: string, err: Error & { code?: string }, noCert = false): HboneError {
  if (err instanceof HboneError) return err;
  const code = err.code ?? '';
  let detail = errText(err);
  if (code === 'ECONNREFUSED') detail = `connection refused (${code}); nothing listens there`;
  else if (code === 'ECONNRESET') detail = noCert ? `${NO_CLIENT_CERT} (${code})` : `connection reset (${code}); the server may have rejected our client certificate`;
  else if (code === 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED') detail = `${NO_CLIENT_CERT} (${code})`; else if (/ALERT_UNKNOWN_CA|ALERT_BAD_CERTIFICATE|ALERT_CERTIFICATE_EXPIRED|CERTIFICATE_REQUIRED/.test(code)) {
    detail = `the server rejected our client certificate (${code}); is this node's certificate issued by the mesh CA the server trusts?`;
  } else if (code.startsWith('ERR_SSL') || code.includes('CERT') || /alert|certificate/i.test(err.message)) {
    detail = `TLS handshake failed (${code || err.message})`;
  }
  return new HboneSessionError(dest, detail, err);
}

function errText(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as Error & { code?: string }).code;
    return code ? `${code}: ${err.message}` : err.message;
  }
  return String(err);
}

function noop(): void {}
