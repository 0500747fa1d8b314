import type { SecureContext } from 'node:tls';
import {
  constants as h2,
  createSecureServer,
  type Http2SecureServer,
  type IncomingHttpHeaders,
  type ServerHttp2Session,
  type ServerHttp2Stream,
} from 'node:http2';
import { createServer as createTcpServer, type AddressInfo, type Server as TcpServer, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import { parseAuthority, type TunnelTarget } from './authority.ts';
import { HboneError } from './errors.ts';
import { admitWorkloadPeer, spiffeIdFromCert, type PeerCheck } from './peer.ts';
import type { SpiffeId } from '../identity/spiffe.ts';
import { forwardedFor, type ForwardedNode } from './forwarded.ts';
import { abortSide, pipeBidirectional, type PipeResult } from './pipe.ts';
import { RapidResetGuard, type RapidResetLimits } from './rapid-reset.ts';
import { SessionBuffer } from './session-buffer.ts';
import { TunnelMemory, defaultMemoryBudget, type Buffered, type MemoryBudget, type MemoryReset, type TrackedTunnel } from './memory-pressure.ts';
import { connectionCounter, type ConnectionCounter } from '../listener-limits.ts';
import { KeyedCount } from '../keyed-count.ts';
import {
  DEFAULT_CONNECTION_WINDOW,
  DEFAULT_FORWARDED_HEADERS,
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  DEFAULT_MAX_CONCURRENT_STREAMS,
  DEFAULT_MAX_FRAME_SIZE,
  DEFAULT_MAX_SESSION_MEMORY_MB,
  DEFAULT_MAX_EARLY_DATA,
  DEFAULT_SESSION_BUFFER,
  DEFAULT_SERVER_IDLE_TIMEOUT_MS,
  DEFAULT_STREAM_WINDOW,
  HBONE_REASON_HEADER,
  MAX_HEADER_LIST_SIZE,
  MEMORY_RESET_TARGET,
  DEFAULT_DRAIN_TIMEOUT_MS,
} from './tuning.ts';

/** The server's TLS material as plain node:tls values (PEM strings or buffers). */
export interface ServerTlsMaterial {
  /** Private key of the server's identity (optional with SNICallback). */
  key?: string | Buffer;
  /** Leaf certificate followed by intermediates (optional with SNICallback). */
  cert?: string | Buffer;
  /** Trust bundle that client certificates must chain to (several roots during a rotation). */
  ca: string | Buffer | Array<string | Buffer>;
  /**
   * Chooses the served identity per connection from the SNI (a node agent serves every local
   * workload's identity). Client certificates are still verified against `ca`.
   */
  SNICallback?: (servername: string, cb: (err: Error | null, ctx?: SecureContext) => void) => void;
}

/** Who is on the other end of a session, after chain verification. */
export interface HbonePeer {
  /** SPIFFE ID from the client certificate's URI SAN (undefined when the checker allowed none). */
  spiffeId: string | undefined;
  cert: PeerCertificate;
  /** Address of the TCP peer (the source agent or waypoint, not the application). */
  address: string;
  port: number;
}

/** One CONNECT, as the owner's handler sees it. */
export interface HboneConnectRequest {
  target: TunnelTarget;
  /** The raw `:authority`. */
  authority: string;
  peer: HbonePeer;
  /** The selected request headers (lower-case names, see `forwardHeaders`). */
  headers: Record<string, string>;
  /**
   * `for=` of the `forwarded` header's last element (RFC 7239): the client the peer says it
   * carries. A claim, not a fact: the owner decides whether this peer may make it. undefined when
   * the header is absent, malformed or names no address (`headers.forwarded` has the raw value).
   */
  forwardedFor: ForwardedNode | undefined;
  /**
   * The name the listener the session came by was given (listen's `listener`; '' when none): the
   * server may listen on several ports, and the owner may judge each one's CONNECTs by its own rules.
   */
  listener: string;
  /** Aborted when the client resets the stream or the session goes away before the answer. */
  signal: AbortSignal;
}

/** Accept with the upstream (already connected), or refuse with a status and a reason. */
export type HboneConnectDecision =
  /**
   * `inner`: when the upstream is one end of an in-memory pair (the waypoint's duplexPair), the
   * other end, whose buffers hold the tunnel's bytes too: they count against the memory budget.
   */
  | { upstream: Duplex; inner?: Buffered }
  /**
   * `kind`: why, for the refusal's count (default `denied`, a policy's no); `label`: the owner's own
   * name for it, handed back in the HboneRefusal so that the owner counts the refusal once, there.
   */
  | { status: number; reason: string; kind?: 'denied' | 'upstream-failed' | 'overloaded'; label?: string };

export type HboneConnectHandler = (req: HboneConnectRequest) => Promise<HboneConnectDecision>;

/** Why the server turned something away. Stable strings: metric labels use them. */
export type HboneRefusalKind =
  | 'tls-handshake'
  /** No (or several, or a malformed) SPIFFE ID, or `checkPeer` said no. */
  | 'peer-identity'
  /** A SPIFFE ID of a trust domain not in `trustDomains`. */
  | 'peer-trust-domain'
  /** A node identity (or any non-workload SPIFFE ID) where `trustDomains` admits workloads only. */
  | 'peer-not-workload'
  | 'method-not-allowed'
  | 'bad-authority'
  /** The handler refused: a policy's no. */
  | 'denied'
  /** The handler could not reach the upstream (refused, timed out). */
  | 'upstream-failed'
  /** The handler refused at once because the upstream already has too many connections waiting. */
  | 'overloaded'
  | 'handler-failed'
  | 'rapid-reset'
  /** The source address already holds `maxConnectionsPerSource` connections on the port. */
  | 'too-many-connections'
  /** The server already holds `maxConnections` connections over all its ports, from all sources together. */
  | 'server-full'
  /** The port already holds its own cap (listen's `maxConnections`), from all sources together. */
  | 'listener-full'
  /** More than `maxEarlyData` bytes sent on a CONNECT before its answer. */
  | 'early-data'
  /** The peer did not acknowledge our SETTINGS in time (RFC 9113 6.5.3). */
  | 'settings-timeout'
  /** The peer (its identity from its address) already holds `maxTunnelsPerPeer` tunnels open or opening. */
  | 'too-many-tunnels'
  /**
   * The server's tunnels held more than `memoryBudget` together and this one (open or opening) was
   * among those holding the most: reset (Envoy's reset_high_memory_stream).
   */
  | 'memory-pressure'
  /** The CONNECT stream closed and the destination did not take the client's last bytes within `drainTimeoutMs`: reset. */
  | 'drain-timeout';

export interface HboneRefusal {
  kind: HboneRefusalKind;
  /** HTTP status sent, when the refusal was an HTTP response. */
  status?: number;
  reason: string;
  peer?: { spiffeId: string | undefined; address: string | undefined };
  authority?: string;
  /** What the CONNECT named, once its authority parsed: the owner counts a refusal under its destination. */
  target?: TunnelTarget;
  /** The handler's own name for a refusal it decided (HboneConnectDecision `label`). */
  label?: string;
}

export interface HboneTunnelClosed extends PipeResult {
  request: HboneConnectRequest;
  durationMs: number;
}

export interface HboneServerStats {
  /** TCP connections open over all ports (TLS handshakes included): what maxConnections bounds. */
  connections: number;
  sessionsOpened: number;
  sessionsActive: number;
  streamsOpened: number;
  tunnelsOpened: number;
  tunnelsActive: number;
  /** Sessions that ended on an error (Node's or the peer's), every stream on them with it. */
  sessionErrors: number;
  /** Times a session went over its buffer and had its stream windows shrunk. */
  sessionsThrottled: number;
  /** Bytes all tunnels held together at the last check (what `memoryBudget` bounds). */
  heldBytes: number;
  /** Refusals by kind; every refusal counts once. */
  refusals: Record<HboneRefusalKind, number>;
}

export interface HboneServerOptions {
  tls: ServerTlsMaterial;
  /** Decides every CONNECT. */
  handler: HboneConnectHandler;
  /**
   * Data-port admission: when set, only workload identities (`spiffe://<td>/ns/<ns>/sa/<sa>`) of
   * these trust domains (the mesh's, then its aliases) get a session; node identities and other
   * trust domains are refused after the handshake (`peer-not-workload`, `peer-trust-domain`).
   * Default: unset (any SPIFFE ID; `checkPeer` decides).
   */
  trustDomains?: readonly string[];
  /**
   * Accepts or rejects a client whose chain verified (after `trustDomains`). Default: any client
   * with exactly one SPIFFE ID.
   */
  checkPeer?: PeerCheck;
  /** Request headers passed to the handler. Default: forwarded, x-forwarded-client-cert, baggage, traceparent, tracestate. */
  forwardHeaders?: readonly string[];
  /** SETTINGS_MAX_CONCURRENT_STREAMS. Default DEFAULT_MAX_CONCURRENT_STREAMS (2000). */
  maxConcurrentStreams?: number;
  /** Per-stream receive window. Default 4 MiB. */
  streamWindow?: number;
  /** Per-session receive window. Default 64 MiB. */
  connectionWindow?: number;
  /** SETTINGS_MAX_FRAME_SIZE. Default 16 KiB. */
  maxFrameSize?: number;
  /** nghttp2 memory cap per session in MB. Default 256. */
  maxSessionMemoryMb?: number;
  /** A session with no open stream is closed after this long. Default 5 min. */
  idleTimeoutMs?: number;
  /** TLS handshake deadline. Default 10 s. */
  handshakeTimeoutMs?: number;
  /**
   * Open TCP connections one source address may hold on each port (TLS handshakes included);
   * beyond it a new connection is closed at once and counted. Agents pool one session per (source
   * identity, destination), so a node needs a handful; default 1024.
   */
  maxConnectionsPerSource?: number;
  /**
   * Open TCP connections on all ports from all sources together (TLS handshakes included); beyond
   * it a new connection is closed at once and counted (`server-full`), so many peers, each under
   * its own share, cannot take the process's descriptors and memory. One total over all ports: a
   * port whose sources (anyone who reaches it, before TLS) must not take another's is given a cap
   * of its own (listen's `maxConnections`, `listener-full`), and a port the others' sources must
   * not fill a reserve of it (listen's `reserved`). Default DEFAULT_MAX_CONNECTIONS.
   */
  maxConnections?: number;
  /**
   * Tunnels one peer (its identity from its address) may hold open or opening, over all its
   * sessions; past it a CONNECT is refused at once (503, `too-many-tunnels`) and a closed tunnel
   * frees its place. Each tunnel holds an upstream socket and its state (roughly 10 KiB), and
   * `maxConnectionsPerSource` sessions of `maxConcurrentStreams` each are two million. Default
   * DEFAULT_MAX_TUNNELS_PER_PEER.
   */
  maxTunnelsPerPeer?: number;
  /**
   * Rapid-reset guard: more than `max` premature resets inside `intervalMs` and the session takes no
   * new streams (GOAWAY). A reset is premature when the stream had no answer yet and lived less
   * than `minLifetimeMs` (Envoy's premature_reset_min_stream_lifetime_seconds, 1 s). Default
   * 100 / 1 s / 1 s. Also, over the session's life: once it opened `totalStreams` (default 500),
   * more than half of them reset early (Envoy's premature_reset_total_stream_count).
   */
  rapidReset?: RapidResetLimits;
  /** Bytes a client may send on a CONNECT before its answer (DEFAULT_MAX_EARLY_DATA). */
  maxEarlyData?: number;
  /** Bytes a session's tunnels may hold not yet taken by their destinations (DEFAULT_SESSION_BUFFER). */
  sessionBuffer?: number;
  /**
   * Bytes all tunnels may hold together, both ways and every session and peer included (streams'
   * and destinations' buffers, the pipes', what CONNECTs carried before their answer). Past it
   * tunnels are reset (RST_STREAM ENHANCE_YOUR_CALM, the destination a TCP RST), the largest of the
   * peer holding the most first (memory-pressure.ts), until the total is below 3/4 of it, each counted and named `memory-pressure`
   * (Envoy's reset_high_memory_stream). Default: half the process's cgroup memory limit, 256 MiB
   * without one (defaultMemoryBudget; tuning.ts says why); `memoryBudget` on the server says which.
   */
  memoryBudget?: number;
  /**
   * Once a tunnel's CONNECT stream has closed, how long its destination may take to take the
   * client's last bytes before it is reset (`drain-timeout`) and the tunnel released: a destination
   * that half-closes and never reads would otherwise hold its peer's slot forever. Default
   * DEFAULT_DRAIN_TIMEOUT_MS.
   */
  drainTimeoutMs?: number;
  onRefusal?: (refusal: HboneRefusal) => void;
  onTunnelClosed?: (closed: HboneTunnelClosed) => void;
  /** A session went over its buffer: every stream's window is shrunk until its destinations catch up. */
  onSessionThrottled?: (e: { peer: { spiffeId: string | undefined; address: string }; heldBytes: number; tunnels: number }) => void;
  /** A session ended on an error: `streams` were open on it (and ended with it). */
  onSessionError?: (e: { peer: { spiffeId: string | undefined; address: string }; error: string; code: string | undefined; streams: number }) => void;
}

interface SessionState {
  session: ServerHttp2Session;
  peer: HbonePeer;
  active: number;
  idleTimer: NodeJS.Timeout | undefined;
  /** Premature resets (rapid-reset.ts); once it cuts, GOAWAY was sent and the session takes no new streams. */
  resets: RapidResetGuard;
  /** Answered streams against the session's buffer (session-buffer.ts). */
  buffer: SessionBuffer;
  /** Streams that closed because the session was destroyed (they close before its 'error'). */
  tornDown: number;
  /** `address identity`: the peer's key in the server's tunnel count (maxTunnelsPerPeer). */
  peerKey: string;
  /** The name of the listener the session came by (HboneConnectRequest.listener). */
  listener: string;
  /** What its answered streams hold unread, summed at each check of the server's tunnel memory. */
  unread: number;
  answered: number;
}

/** A tunnel (or a CONNECT not yet answered) in the server's tunnel memory. */
interface HeldTunnel extends TrackedTunnel {
  readonly stream: ServerHttp2Stream;
  upstream: Duplex | undefined;
  /** Answered and piped: it is the server's until the pipe settles, not until its stream closes. */
  piping: boolean;
  readonly session: SessionState;
  readonly authority: string;
  readonly target: TunnelTarget;
}

export const DEFAULT_MAX_CONNECTIONS_PER_SOURCE = 1024;
/**
 * Open connections from all sources together. A node's agent pools one session per (source
 * identity, destination) to each peer agent or waypoint, so even a thousand peers with a dozen
 * identities each stay well under it; sixteen sources at their full share reach it.
 */
export const DEFAULT_MAX_CONNECTIONS = 16_384;
/**
 * Tunnels one peer (identity and address: a node's agent for one of its workload identities, a
 * waypoint replica) may hold open or opening. ztunnel sets none; without one, one holder of any
 * mesh certificate (a tenant's pod running as its waypoint's ServiceAccount obtains one) could have
 * an agent hold two million pod sockets for it, the node's every pod losing the mesh when the agent
 * runs out of memory or descriptors. A peer carrying a busy client's connections to one node holds
 * a few thousand; this is four times the east-west gateway's bound per caller, whose callers pool.
 */
export const DEFAULT_MAX_TUNNELS_PER_PEER = 16_384;

/** nghttp2 RST_STREAM rate limit (token bucket) on HBONE sessions: effectively off; see the server options. */
export const STREAM_RESET_BURST = 1_000_000;
export const STREAM_RESET_RATE = 1_000_000;
export const MAX_SESSION_REJECTED_STREAMS = 1_000_000;

/** Streams we answered or reset ourselves; a reset on any other stream came from the peer early. */
const answered = new WeakSet<ServerHttp2Stream>();
/** What a stream's client sent before its answer, held until the tunnel opens. */
const earlyData = new WeakMap<ServerHttp2Stream, { chunks: Buffer[]; listener: (chunk: Buffer) => void }>();

/**
 * The HBONE server: TLS 1.3 with client certificates, HTTP/2, CONNECT only. Each CONNECT goes to
 * the owner's handler; an accepted one is answered 200 and piped to the upstream it returned.
 */
export class HboneServer {
  readonly #opts: HboneServerOptions;
  readonly #server: Http2SecureServer;
  readonly #sessions = new Set<SessionState>();
  /** The ports it listens on, each handing its connections to #server (listen). */
  readonly #listeners: TcpServer[] = [];
  /** maxConnections, its default applied. */
  readonly maxConnections: number;
  /**
   * Each port's connection counter (its cap per source and its own; `open`, its connections) and
   * the part of the total kept for it (listen's `reserved`), by listener; #stats.connections counts
   * those the total took.
   */
  readonly #ports: Array<{ counter: ConnectionCounter; reserved: number }> = [];
  /** A connection (its TCP socket) → the name of the listener it came by (listen's `listener`). */
  readonly #listenerOf = new WeakMap<Socket, string>();
  /** `address identity` of a peer → its tunnels open or opening (maxTunnelsPerPeer). */
  readonly #tunnelsOf = new KeyedCount();
  readonly #forward: readonly string[];
  readonly #stats: HboneServerStats = {
    connections: 0,
    sessionsOpened: 0,
    sessionsActive: 0,
    streamsOpened: 0,
    tunnelsOpened: 0,
    tunnelsActive: 0,
    sessionErrors: 0,
    sessionsThrottled: 0,
    heldBytes: 0,
    refusals: {
      'tls-handshake': 0,
      'peer-identity': 0,
      'peer-trust-domain': 0,
      'peer-not-workload': 0,
      'method-not-allowed': 0,
      'bad-authority': 0,
      denied: 0,
      'upstream-failed': 0,
      overloaded: 0,
      'handler-failed': 0,
      'rapid-reset': 0,
      'too-many-connections': 0,
      'server-full': 0,
      'listener-full': 0,
      'early-data': 0,
      'settings-timeout': 0,
      'too-many-tunnels': 0,
      'memory-pressure': 0,
      'drain-timeout': 0,
    },
  };
  #closing = false;
  /** The memory budget chosen and why (each component logs it at start). */
  readonly memoryBudget: MemoryBudget;
  /** Every tunnel and CONNECT not yet answered against memoryBudget; its check also judges the session buffers. */
  readonly #memory: TunnelMemory<HeldTunnel>;

  constructor(opts: HboneServerOptions) {
    this.#opts = opts;
    this.#forward = (opts.forwardHeaders ?? DEFAULT_FORWARDED_HEADERS).map((h) => h.toLowerCase());
    this.maxConnections = opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
    this.memoryBudget = opts.memoryBudget !== undefined ? { bytes: opts.memoryBudget, limit: undefined, from: 'the memoryBudget option' } : defaultMemoryBudget();
    const memoryBudget = this.memoryBudget.bytes;
    this.#memory = new TunnelMemory<HeldTunnel>({
      budget: memoryBudget,
      target: memoryBudget * MEMORY_RESET_TARGET,
      afterPass: () => this.#judgeSessions(),
      reset: (t, e) => this.#resetForMemory(t, e, memoryBudget),
    });
    this.#server = createSecureServer({
      ...(opts.tls.key !== undefined ? { key: opts.tls.key } : {}),
      ...(opts.tls.cert !== undefined ? { cert: opts.tls.cert } : {}),
      ...(opts.tls.SNICallback ? { SNICallback: opts.tls.SNICallback } : {}),
      ca: opts.tls.ca,
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.3',
      maxVersion: 'TLSv1.3',
      allowHTTP1: false,
      noDelay: true,
      handshakeTimeout: opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS,
      maxSessionMemory: opts.maxSessionMemoryMb ?? DEFAULT_MAX_SESSION_MEMORY_MB,
      unknownProtocolTimeout: 1000,
      // nghttp2's own rapid-reset limit (a burst of 1,000 RST_STREAMs, then 33/s) counts every
      // reset, and a tunnel whose application connection was reset ends with one: a node with a
      // few hundred aborted connections per second would get whole sessions, with every tunnel on
      // them, torn down (GOAWAY INTERNAL_ERROR). The guard that matters is #onEarlyReset, which
      // counts only streams reset before they were answered (the attack); this one is lifted.
      streamResetBurst: STREAM_RESET_BURST,
      streamResetRate: STREAM_RESET_RATE,
      // Node refuses a new stream while its own table of the session's streams is full (it keeps
      // streams nghttp2 has closed until they are destroyed, so under load it runs ahead of the
      // protocol's count), and after 100 refusals in a row ends the session and every tunnel on it
      // ("The user callback function failed"). A peer over the advertised limit is refused by
      // nghttp2 itself (a protocol error), so this count only ever caught our own pools while the
      // server was slow: a refusal is left at that (RST_STREAM ENHANCE_YOUR_CALM, which the pool
      // retries on another session and marks this one full).
      maxSessionRejectedStreams: MAX_SESSION_REJECTED_STREAMS,
      settings: {
        enablePush: false,
        initialWindowSize: opts.streamWindow ?? DEFAULT_STREAM_WINDOW,
        maxConcurrentStreams: opts.maxConcurrentStreams ?? DEFAULT_MAX_CONCURRENT_STREAMS,
        maxFrameSize: opts.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE,
        maxHeaderListSize: MAX_HEADER_LIST_SIZE,
      },
    });
    this.#server.on('connection', (socket: Socket) => {
      if (!socket.destroyed) socket.setNoDelay(true);
    });
    this.#server.on('tlsClientError', (err: Error & { code?: string }, socket: TLSSocket) => {
      this.#refuse({
        kind: 'tls-handshake',
        reason: `TLS handshake failed: ${err.code ?? err.message}`,
        peer: { spiffeId: undefined, address: socket.remoteAddress },
      });
    });
    this.#server.on('unknownProtocol', (socket: TLSSocket) => {
      this.#refuse({
        kind: 'tls-handshake',
        reason: 'client did not negotiate ALPN h2',
        peer: { spiffeId: undefined, address: socket.remoteAddress },
      });
      socket.destroy();
    });
    this.#server.on('session', (session: ServerHttp2Session) => this.#onSession(session));
  }

  /**
   * Starts listening on one more port; resolves with the bound address. Every port is one server:
   * tunnels per peer, session buffers and the connection total (maxConnections) hold over all of
   * them; each port takes maxConnectionsPerSource from one source, and at most `maxConnections`
   * (default: no cap of its own, the server's total), so that the sources of a port given a cap,
   * which may be anyone who reaches it, cannot take the others' connections, while a port without
   * one uses whatever of the total is free but the parts of it the other ports keep (`reserved`,
   * default 0: a part of the total no other port's connections take, so that a port without a cap
   * cannot refuse every connection of this one; at most its `maxConnections`). A CONNECT tells its handler the `listener` name of the
   * port it came by (HboneConnectRequest.listener; '' when not given), a fact of the socket, not
   * a port number compared with another the owner may not have set. `reusePort` shares the port
   * with another process that also sets it (an agent upgrade: old and new listen side by side).
   */
  listen(port: number, host?: string, opts: { reusePort?: boolean; listener?: string; maxConnections?: number; reserved?: number } = {}): Promise<AddressInfo> {
    const name = opts.listener ?? '';
    const total = this.maxConnections;
    const reserved = opts.reserved ?? 0;
    const othersKeep = this.#ports.reduce((n, p) => n + p.reserved, 0);
    if (reserved > (opts.maxConnections ?? total)) throw new RangeError(`listen: reserved (${reserved}) is more than the port's maxConnections (${opts.maxConnections ?? total})`);
    if (reserved + othersKeep > total) throw new RangeError(`listen: reserved (${reserved}) and the other ports' (${othersKeep}) are more than the server's maxConnections (${total})`);
    // Before TLS: costs the attacker a TCP handshake, us nothing more.
    const counter = connectionCounter({ perSource: this.#opts.maxConnectionsPerSource ?? DEFAULT_MAX_CONNECTIONS_PER_SOURCE, total: opts.maxConnections ?? Infinity }, (from, max, which, socket) =>
      this.#refuse(which === 'per-source'
        ? { kind: 'too-many-connections', reason: `${from} already holds ${max} connections on port ${socket.localPort}`, peer: { spiffeId: undefined, address: from } }
        : { kind: 'listener-full', reason: `port ${socket.localPort} already holds ${max} connections from all sources (its cap, of the server's ${total})`, peer: { spiffeId: undefined, address: from } }));
    const own = { counter, reserved };
    // The TLS server takes connections handed to it ('connection', as node:tls documents). The
    // port's own count first: a connection it refuses takes nothing of the total.
    const listener = createTcpServer((socket) => {
      if (!counter.admit(socket) || !this.#admitToTotal(socket, own)) return;
      this.#listenerOf.set(socket, name);
      this.#server.emit('connection', socket);
    });
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      listener.once('error', onError);
      listener.listen({ port, ...(host !== undefined ? { host } : {}), reusePort: opts.reusePort === true }, () => {
        listener.off('error', onError);
        this.#listeners.push(listener);
        this.#ports.push(own);
        resolve(listener.address() as AddressInfo);
      });
    });
  }

  /**
   * Counts `socket` of port `own` in the total until it closes, or, when the total less what the
   * other ports keep unused of their reserves is held, refuses it (`server-full`) and destroys it.
   */
  #admitToTotal(socket: Socket, own: { counter: ConnectionCounter; reserved: number }): boolean {
    // A port's count (its counter's) holds a connection the total refused until it closes (the
    // next turn): its reserve is kept the less for that moment, never the more.
    const kept = this.#ports.reduce((n, p) => (p === own ? n : n + Math.max(0, p.reserved - p.counter.open)), 0);
    const all = this.#stats.connections;
    if (all >= this.maxConnections - kept) {
      const from = socket.remoteAddress ?? '';
      this.#refuse({ kind: 'server-full', reason: `the server already holds ${all} connections over all its ports (its total${kept > 0 ? ` ${this.maxConnections}, ${kept} of it kept for its other ports` : ''})`, peer: { spiffeId: undefined, address: from } });
      socket.destroy();
      return false;
    }
    this.#stats.connections++;
    socket.once('close', () => this.#stats.connections--);
    return true;
  }

  /** Bound address of the first port listened on (after listen). */
  address(): AddressInfo {
    return this.#listeners[0]!.address() as AddressInfo;
  }

  /** Replaces key, certificate and trust bundle for new sessions (certificate rotation). */
  setTls(tls: ServerTlsMaterial): void {
    this.#server.setSecureContext({
      ...(tls.key !== undefined ? { key: tls.key } : {}),
      ...(tls.cert !== undefined ? { cert: tls.cert } : {}),
      ca: tls.ca,
    });
  }

  /**
   * Ends the sessions of peers that match (all when no filter): GOAWAY and let their tunnels finish,
   * or with `abrupt`, destroy them at once (identity revoked, policy tightened). Returns how many.
   */
  dropSessions(match?: (peer: HbonePeer) => boolean, abrupt = false): number {
    let n = 0;
    for (const s of this.#sessions) {
      if (match && !match(s.peer)) continue;
      n++;
      if (abrupt) s.session.destroy();
      else if (!s.session.closed) s.session.close();
    }
    return n;
  }

  /** A snapshot of the counters. */
  stats(): HboneServerStats {
    return { ...this.#stats, heldBytes: this.#memory.heldBytes, refusals: { ...this.#stats.refusals } };
  }

  /**
   * Stops accepting, sends GOAWAY to every session so clients move to another server, waits up to
   * `graceMs` for open tunnels, then destroys what is left. Resolves with how many sessions had
   * to be destroyed at the deadline (0: everything ended on its own).
   */
  async close(graceMs = 5000): Promise<number> {
    this.#closing = true;
    // Each listener closes once its connections (the sessions' sockets) have.
    const closed = Promise.all(this.#listeners.map((l) => new Promise<void>((resolve) => l.close(() => resolve()))));
    for (const s of this.#sessions) if (!s.session.closed) s.session.close();
    let cut = 0;
    const timer = setTimeout(() => {
      for (const s of this.#sessions) {
        cut++;
        s.session.destroy();
      }
    }, graceMs);
    timer.unref();
    await closed;
    clearTimeout(timer);
    return cut;
  }

  /**
   * After each pass of the tunnel memory: every session's buffer judges what its answered streams
   * hold unread. Returns whether a session is still throttled (checks go on to release it).
   */
  #judgeSessions(): boolean {
    let throttled = false;
    for (const s of this.#sessions) {
      s.buffer.judge(s.unread, s.answered);
      s.unread = 0;
      s.answered = 0;
      if (s.buffer.throttled) throttled = true;
    }
    return throttled;
  }

  /** Resets a tunnel the tunnel memory chose (its peer holds the most while all hold more than the budget). */
  #resetForMemory(t: HeldTunnel, e: MemoryReset, budget: number): void {
    const { stream, session: state } = t;
    const closed = stream.closed || stream.destroyed;
    // A stream closed while its destination still holds the client's bytes: only the destination is left to reset.
    if (closed && !(t.piping && t.upstream !== undefined && !t.upstream.destroyed)) return;
    // Ours, not the peer's early reset; a handler still deciding finds it closed and drops its upstream.
    answered.add(stream);
    const reason = `tunnel to ${t.authority} holds ${e.held} bytes; its peer holds ${e.peerHeld} bytes in ${e.peerTunnels} tunnels, the most of any peer, while ${e.tunnels} tunnels hold ${e.total} bytes together, past the server's memory budget ${budget}; reset (the peer holding the most first, its largest tunnels, down to ${Math.floor(budget * MEMORY_RESET_TARGET)})`;
    // Reset first, then notified: the tunnel memory checks a tunnel it chose no more, so a
    // notification that throws must not leave it open.
    try {
      // RFC 9113 section 7: ENHANCE_YOUR_CALM, as for early data; the pipe passes it on to the
      // destination as a TCP RST (RFC 9113 section 8.5).
      if (!closed) stream.close(h2.NGHTTP2_ENHANCE_YOUR_CALM);
      else abortSide(t.upstream!);
    } finally {
      this.#refuse({ kind: 'memory-pressure', reason, peer: { spiffeId: state.peer.spiffeId, address: state.peer.address }, authority: t.authority, target: t.target });
    }
  }

  #refuse(refusal: HboneRefusal): void {
    this.#stats.refusals[refusal.kind]++;
    this.#opts.onRefusal?.(refusal);
  }

  #onSession(session: ServerHttp2Session): void {
    const socket = session.socket as TLSSocket;
    const cert = socket.getPeerCertificate();
    const id = spiffeIdFromCert(cert);
    const spiffeId = id?.uri;
    const peer: HbonePeer = {
      spiffeId,
      cert,
      address: socket.remoteAddress ?? '',
      port: socket.remotePort ?? 0,
    };
    // Sessions end on their own errors; one bad peer never takes the server down.
    session.on('error', noop);
    const refusal = this.#admit(id, cert);
    if (refusal) {
      const { kind, reason } = refusal;
      this.#refuse({ kind, reason, peer: { spiffeId, address: peer.address } });
      session.goaway(h2.NGHTTP2_REFUSED_STREAM, 0, Buffer.from(reason.slice(0, 256)));
      session.close();
      setTimeout(() => session.destroy(), 1000).unref();
      return;
    }
    const state: SessionState = {
      session,
      peer,
      active: 0,
      idleTimer: undefined,
      resets: new RapidResetGuard(this.#opts.rapidReset),
      buffer: undefined as unknown as SessionBuffer,
      tornDown: 0,
      peerKey: `${peer.address} ${spiffeId ?? ''}`,
      // (`_parent`: the TCP socket a server-side TLSSocket wraps; Node has no public name for it.)
      listener: this.#listenerOf.get((socket as unknown as { _parent?: Socket })._parent!) ?? '',
      unread: 0,
      answered: 0,
    };
    state.buffer = new SessionBuffer(session, {
      budget: this.#opts.sessionBuffer ?? DEFAULT_SESSION_BUFFER,
      streamWindow: this.#opts.streamWindow ?? DEFAULT_STREAM_WINDOW,
      onThrottled: ({ heldBytes, tunnels }) => {
        this.#stats.sessionsThrottled++;
        this.#opts.onSessionThrottled?.({ peer: { spiffeId: state.peer.spiffeId, address: state.peer.address }, heldBytes, tunnels });
      },
      onSettingsTimeout: (reason) => this.#refuse({ kind: 'settings-timeout', reason, peer: { spiffeId: state.peer.spiffeId, address: state.peer.address } }),
    });
    session.on('error', (err: Error & { code?: string }) => {
      this.#stats.sessionErrors++;
      this.#opts.onSessionError?.({ peer: { spiffeId, address: peer.address }, error: err.message, code: err.code, streams: state.tornDown });
    });
    this.#sessions.add(state);
    this.#stats.sessionsOpened++;
    this.#stats.sessionsActive++;
    try {
      session.setLocalWindowSize(this.#opts.connectionWindow ?? DEFAULT_CONNECTION_WINDOW);
    } catch {
      // The session died during setup; its close handler cleans up.
    }
    session.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) =>
      this.#onStream(state, stream, headers));
    session.once('close', () => {
      if (state.idleTimer) clearTimeout(state.idleTimer);
      this.#sessions.delete(state);
      this.#stats.sessionsActive--;
    });
    this.#armIdle(state);
    if (this.#closing) session.close();
  }

  /** Undefined when the peer may open tunnels, else why not. */
  #admit(id: SpiffeId | undefined, cert: PeerCertificate): { kind: HboneRefusalKind; reason: string } | undefined {
    if (this.#opts.trustDomains) {
      const refused = admitWorkloadPeer(id, this.#opts.trustDomains);
      if (refused) return refused;
    }
    const verdict = this.#opts.checkPeer
      ? this.#opts.checkPeer(id?.uri, cert)
      : id !== undefined || 'client certificate has no SPIFFE ID';
    if (verdict === true) return undefined;
    return { kind: 'peer-identity', reason: typeof verdict === 'string' ? verdict : 'client identity rejected' };
  }

  #armIdle(state: SessionState): void {
    if (state.idleTimer) clearTimeout(state.idleTimer);
    state.idleTimer = setTimeout(() => {
      if (state.active === 0 && !state.session.closed) state.session.close();
    }, this.#opts.idleTimeoutMs ?? DEFAULT_SERVER_IDLE_TIMEOUT_MS);
    state.idleTimer.unref();
  }

  #onStream(state: SessionState, stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    this.#stats.streamsOpened++;
    state.resets.opened();
    state.active++;
    if (state.idleTimer) { clearTimeout(state.idleTimer); state.idleTimer = undefined; }
    const ac = new AbortController();
    const opened = performance.now();
    stream.on('error', noop);
    stream.once('close', () => {
      state.active--;
      if (state.session.destroyed) state.tornDown++;
      if (!answered.has(stream)) {
        ac.abort();
        // Streams torn down with their session (ours or the peer's TCP close) are not resets. Nor
        // is a CONNECT the client gave up on after waiting its deadline: what the attack
        // (CVE-2023-44487) needs is streams that cost the server work and the client nothing, so
        // it resets them at once. A client that keeps each one open a second is held to
        // SETTINGS_MAX_CONCURRENT_STREAMS like any other, while a loaded server whose answers
        // come late (every one a reset before the answer) would otherwise take it for an attack
        // and cost its client a new session and handshake just when it can least afford them.
        if (!state.session.destroyed) this.#onEarlyReset(state, performance.now() - opened);
      }
      if (state.active === 0 && !state.session.destroyed) this.#armIdle(state);
    });

    const peerInfo = { spiffeId: state.peer.spiffeId, address: state.peer.address };
    const method = headers[':method'];
    const authority = headers[':authority'] ?? '';
    if (method !== 'CONNECT') {
      this.#refuse({ kind: 'method-not-allowed', status: 405, reason: `method ${method} is not CONNECT`, peer: peerInfo, authority });
      this.#respondRefusal(stream, 405, 'only CONNECT is served on the HBONE port');
      return;
    }
    let target: TunnelTarget;
    try {
      target = parseAuthority(authority);
    } catch (err) {
      const reason = err instanceof HboneError ? err.message : String(err);
      this.#refuse({ kind: 'bad-authority', status: 400, reason, peer: peerInfo, authority });
      this.#respondRefusal(stream, 400, reason);
      return;
    }
    // The peer's tunnels over all its sessions, held from here until the stream's close or, once
    // answered, until the pipe settles (the destination may hold the client's bytes after that).
    const { peerKey } = state;
    const holding = this.#tunnelsOf.get(peerKey);
    const maxTunnels = this.#opts.maxTunnelsPerPeer ?? DEFAULT_MAX_TUNNELS_PER_PEER;
    if (holding >= maxTunnels) {
      const reason = `${state.peer.spiffeId ?? '(no identity)'} from ${state.peer.address} holds ${holding} tunnels here (it allows ${maxTunnels} a peer); refused at once`;
      this.#refuse({ kind: 'too-many-tunnels', status: 503, reason, peer: peerInfo, authority, target });
      this.#respondRefusal(stream, 503, reason);
      return;
    }
    this.#tunnelsOf.take(peerKey);
    // In the server's tunnel memory from here, early data included, as long as it holds the peer's slot.
    const held: HeldTunnel = { stream, upstream: undefined, inner: undefined, early: 0, held: 0, reset: false, piping: false, session: state, peer: peerKey, authority, target };
    this.#memory.add(held);
    stream.once('close', () => {
      if (!held.piping) this.#release(held);
    });
    const selected: Record<string, string> = {};
    for (const name of this.#forward) {
      const v = headers[name];
      if (v !== undefined) selected[name] = Array.isArray(v) ? v.join(', ') : v;
    }
    const request: HboneConnectRequest = {
      target,
      authority,
      peer: state.peer,
      headers: selected,
      forwardedFor: forwardedFor(selected['forwarded']),
      listener: state.listener,
      signal: ac.signal,
    };

    // What the client sends before the answer is held here while the handler decides; a bounded
    // amount (see DEFAULT_MAX_EARLY_DATA), handed on in order once the tunnel opens.
    const early: Buffer[] = [];
    let earlyBytes = 0;
    const maxEarly = this.#opts.maxEarlyData ?? DEFAULT_MAX_EARLY_DATA;
    const onEarly = (chunk: Buffer): void => {
      earlyBytes += chunk.length;
      if (earlyBytes <= maxEarly) { early.push(chunk); held.early = earlyBytes; return; }
      stream.off('data', onEarly);
      if (answered.has(stream)) return;
      answered.add(stream);
      this.#refuse({ kind: 'early-data', reason: `more than ${maxEarly} bytes sent before the CONNECT was answered`, peer: peerInfo, authority, target });
      stream.close(h2.NGHTTP2_ENHANCE_YOUR_CALM);
    };
    stream.on('data', onEarly);
    earlyData.set(stream, { chunks: early, listener: onEarly });

    let decision: Promise<HboneConnectDecision>;
    try {
      decision = this.#opts.handler(request);
    } catch (err) {
      decision = Promise.reject(err);
    }
    decision.then((d) => {
      if ('upstream' in d) this.#accept(held, request, d.upstream, d.inner);
      else {
        if (stream.closed || stream.destroyed) return;
        this.#refuse({ kind: d.kind ?? 'denied', status: d.status, reason: d.reason, peer: peerInfo, authority, target, ...(d.label !== undefined ? { label: d.label } : {}) });
        this.#respondRefusal(stream, d.status, d.reason);
      }
    }, (err: unknown) => {
      if (stream.closed || stream.destroyed) return;
      const reason = `connect handler failed: ${err instanceof Error ? err.message : String(err)}`;
      this.#refuse({ kind: 'handler-failed', status: 503, reason, peer: peerInfo, authority, target });
      this.#respondRefusal(stream, 503, reason);
    });
  }

  #accept(held: HeldTunnel, request: HboneConnectRequest, upstream: Duplex, inner: Buffered | undefined): void {
    const { stream } = held;
    if (answered.has(stream)) {
      // Refused meanwhile (early data past the limit, reset under memory pressure): the upstream
      // is not needed.
      upstream.destroy();
      this.#opts.onTunnelClosed?.({ bytesAtoB: 0, bytesBtoA: 0, error: new Error('the CONNECT was refused before it was answered'), abortedBy: 'a', request, durationMs: 0 });
      return;
    }
    if (stream.closed || stream.destroyed) {
      // The peer reset the CONNECT while the handler was connecting: the upstream it opened goes,
      // and its owner hears the tunnel closed (a record it opened must not stay open forever).
      upstream.destroy();
      this.#opts.onTunnelClosed?.({
        bytesAtoB: 0, bytesBtoA: 0, error: new Error('the peer reset the CONNECT before it was answered'), abortedBy: 'a',
        request, durationMs: 0,
      });
      return;
    }
    answered.add(stream);
    const early = earlyData.get(stream);
    if (early) {
      earlyData.delete(stream);
      stream.off('data', early.listener);
      if (stream.readableEnded) {
        // The client ended its side before the answer: what it sent goes first, and the pipe
        // passes its end on (pipeBidirectional: a side whose readable already ended).
        for (const chunk of early.chunks) upstream.write(chunk);
      } else {
        stream.pause();
        for (let i = early.chunks.length - 1; i >= 0; i--) stream.unshift(early.chunks[i]!);
      }
    }
    // From here its early bytes are in the stream's or the upstream's buffers.
    held.early = 0;
    held.upstream = upstream;
    held.inner = inner;
    stream.respond({ ':status': 200 });
    this.#stats.tunnelsOpened++;
    this.#stats.tunnelsActive++;
    const started = performance.now();
    held.piping = true;
    const piping = pipeBidirectional(stream, upstream);
    // Holding the early data paused the stream; a paused stream does not start flowing on its own
    // when the pipe listens.
    if (stream.readableFlowing === false) stream.resume();
    // The stream closed, the pipe not settled: the destination still holds (or will not take) the
    // client's last bytes. It gets a deadline, then a reset, so that it cannot pin the tunnel.
    const drainMs = this.#opts.drainTimeoutMs ?? DEFAULT_DRAIN_TIMEOUT_MS;
    let drain: NodeJS.Timeout | undefined;
    let settled = false;
    const onStreamClose = (): void => {
      if (settled) return;
      drain = setTimeout(() => {
        if (settled || upstream.destroyed) return;
        const { peer } = held.session;
        abortSide(upstream);
        this.#refuse({
          kind: 'drain-timeout',
          reason: `tunnel to ${held.authority}: its CONNECT stream closed and the destination did not take the client's last bytes within ${drainMs} ms; reset`,
          peer: { spiffeId: peer.spiffeId, address: peer.address }, authority: held.authority, target: held.target,
        });
      }, drainMs);
      drain.unref();
    };
    if (stream.closed || stream.destroyed) onStreamClose();
    else stream.once('close', onStreamClose);
    void piping.then((result) => {
      settled = true;
      clearTimeout(drain);
      stream.off('close', onStreamClose);
      this.#release(held);
      this.#stats.tunnelsActive--;
      this.#opts.onTunnelClosed?.({ ...result, request, durationMs: performance.now() - started });
    });
  }

  /** A tunnel gives back its peer's slot and leaves the memory count. */
  #release(held: HeldTunnel): void {
    this.#tunnelsOf.release(held.peer);
    this.#memory.delete(held);
  }

  #respondRefusal(stream: ServerHttp2Stream, status: number, reason: string): void {
    if (stream.closed || stream.destroyed) return;
    answered.add(stream);
    stream.respond({ ':status': status, [HBONE_REASON_HEADER]: headerSafe(reason) }, { endStream: true });
    // RST_STREAM(NO_ERROR) after the response: the client need not send anything more (RFC 9113 8.1).
    stream.close(h2.NGHTTP2_NO_ERROR);
  }

  #onEarlyReset(state: SessionState, lifetimeMs: number): void {
    const reason = state.resets.reset(lifetimeMs);
    if (!reason) return;
    this.#refuse({ kind: 'rapid-reset', reason, peer: { spiffeId: state.peer.spiffeId, address: state.peer.address } });
    const session = state.session;
    if (session.destroyed || session.closed) return;
    // What the attack costs is stream creation, so the session takes no more streams: GOAWAY with
    // the last stream it processed, then close once the open ones have ended. The tunnels it already
    // answered go on. A legitimate client looks the same under load (its CONNECTs time out while
    // the server is slow, each one a reset before an answer), and cutting its established tunnels
    // would drop hundreds of healthy connections. The code is NO_ERROR with the reason in the debug
    // data: a Node client (and so HbonePool) destroys its session, every stream on it included, on
    // any other code; it opens a new session for its next CONNECT, which is admitted like any other.
    session.goaway(h2.NGHTTP2_NO_ERROR, 0, Buffer.from('rapid reset'));
    session.close();
  }
}

/** Header values may not contain CR, LF or NUL; keep reasons short. */
function headerSafe(reason: string): string {
  return reason.replace(/[^\x20-\x7e]/g, ' ').slice(0, 256);
}

function noop(): void {}
