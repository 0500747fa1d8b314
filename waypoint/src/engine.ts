// The waypoint engine: accepts tunnels, detects HTTP/1.1 or HTTP/2 (prior knowledge) per tunnel,
// serves them with node:http / node:http2 servers that never listen on a port, and holds the state
// that outlives a request: the config snapshot, upstream clusters, pools, limiters and telemetry.
import http from 'node:http';
import http2 from 'node:http2';
import type { Duplex } from 'node:stream';
import { Counter, Gauge } from 'prom-client';
import { tunnelClient, type ForwardedNode, type TunnelClient } from '../../lib/hbone/forwarded.ts';
import { RapidResetGuard, type RapidResetLimits } from '../../lib/hbone/rapid-reset.ts';
import { LogBudget, REFUSAL_LOG_PER_SECOND } from '../../lib/log.ts';
import { upgradeOf } from '../../lib/websocket.ts';
import { ESCAPED_SLASHES_ACTIONS, MAX_TRUSTED_PROXIES, PATH_NORMALIZATIONS, type MeshHttpSettings, type Service, type WaypointConfig, type WorkloadMeta } from '../../lib/model/mesh.ts';
import { DEFAULT_REPLAY_BUDGET_BYTES, DEFAULT_RETRY_BUFFER_BYTES, ReplayBudget } from './body.ts';
import { buildSnapshot, emptyConfig, serviceKey, type Snapshot } from './config.ts';
import { ConfigRejectedError, type ConfigIssue } from './errors.ts';
import { FLAGS_HEADER, FLAG_DOWNSTREAM_PROTOCOL_ERROR } from './flags.ts';
import { DEFAULT_NORMALIZE_OPTIONS, type EscapedSlashesAction, type PathNormalization } from './normalize.ts';
import { endpointPort, handleRequest, type ConnContext, type DownstreamRequest, type ProxyEnv, type ProxyLimits } from './proxy.ts';
import { DEFAULT_MAX_MIRRORS, DEFAULT_MAX_REQUESTS, RequestAdmission } from './overload.ts';
import { RedisQuota, type QuotaOptions, type QuotaRule } from './quota.ts';
import { LocalRateLimiter } from './ratelimit.ts';
import { Cluster, type ClusterSettings, type ClusterStats } from './resilience.ts';
import { proxyTcp } from './tcp.ts';
import { Telemetry, type TelemetryOptions } from './telemetry.ts';
import {
  DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_REQUEST_HEADERS_TIMEOUT_MS, H2Timeouts, addInactivityTimeout,
} from './timeouts.ts';
import { UpstreamPool, type Upstream } from './upstream.ts';
import { timeoutCheckIntervalMs } from '../../lib/listener-limits.ts';
import type { DownstreamResponse } from './local-reply.ts';

/** The HTTP/2 connection preface (RFC 9113 3.4). */
const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

export const DEFAULT_MAX_HEADER_BYTES = 16 * 1024;
/**
 * A tunnel whose client sends nothing for this long is taken to carry a server-first protocol
 * (MySQL, SMTP, ...) and passed through as TCP.
 */
export const DEFAULT_SERVER_FIRST_TIMEOUT_MS = 1000;
export const DEFAULT_MAX_CONCURRENT_STREAMS = 250;
/**
 * Pipelined HTTP/1.1 requests one connection may have waiting for the one in progress (holdH1): as
 * many as an HTTP/2 session may open streams. Past it the connection is closed.
 */
export const MAX_H1_PIPELINED = DEFAULT_MAX_CONCURRENT_STREAMS;

/**
 * A TCP socket that holdH1 paused while node's parser read it has its handle stopped
 * (_http_server.js onSocketPause), and node's unconsume (an upgrade or CONNECT) removes the listener
 * that would start it again (onSocketResume): an upgrade pipelined behind waiting requests was never
 * read. This starts it as onSocketResume does. Other streams (an HBONE CONNECT stream) have no handle.
 */
function readAgain(socket: Duplex): void {
  const handle = (socket as Duplex & { _handle?: { reading?: boolean; readStart?: () => unknown } })._handle;
  if (handle?.reading !== false || typeof handle.readStart !== 'function') return;
  handle.reading = true;
  handle.readStart();
}

/** An HTTP/1.1 connection's requests not yet answered: how many, those waiting their turn, and a refusal waiting for all. */
interface H1Pending {
  responses: number;
  waiting: Array<{ res: http.ServerResponse; start: () => void }>;
  then?: () => void;
}
export { DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_REQUEST_HEADERS_TIMEOUT_MS } from './timeouts.ts';
/**
 * HTTP/2 header lists up to this many times maxHeaderBytes reach the pipeline, which answers 431;
 * beyond it nghttp2 refuses the stream (REFUSED_STREAM): the client ignored our
 * SETTINGS_MAX_HEADER_LIST_SIZE.
 */
export const H2_HEADER_CEILING_FACTOR = 16;

/** Why a client's HTTP/2 session was ended: stable strings, the label of weft_waypoint_h2_session_errors_total. */
export type H2SessionErrorReason = 'flood' | 'continuation_flood' | 'invalid_frames' | 'protocol_error';

/** nghttp2's library error codes (nghttp2.h) that name a flood; node passes them on as `errno`. */
const NGHTTP2_ERR_FLOODED = -904;
const NGHTTP2_ERR_TOO_MANY_CONTINUATIONS = -905;

/**
 * The reason a session 'error' event gives for ending a client's session, or undefined. Node ends
 * it (GOAWAY) when nghttp2 finds a connection error (RFC 9113 section 5.4.1: a bad frame, a
 * content-length its DATA overrun, a flow-control overflow), when the client queues more PING or
 * SETTINGS acknowledgements than it reads (a flood), sends CONTINUATION frames without end
 * (CVE-2024-27316), or passes maxSessionInvalidFrames (malformed requests, empty DATA frames) or
 * maxSessionRejectedStreams.
 */
export function h2SessionErrorReason(err: { code?: string; errno?: number }): H2SessionErrorReason | undefined {
  if (err.code === 'ERR_HTTP2_TOO_MANY_INVALID_FRAMES') return 'invalid_frames';
  // Anything else (the tunnel went away under the session) is no verdict on the client.
  if (err.code !== 'ERR_HTTP2_ERROR') return undefined;
  if (err.errno === NGHTTP2_ERR_FLOODED) return 'flood';
  if (err.errno === NGHTTP2_ERR_TOO_MANY_CONTINUATIONS) return 'continuation_flood';
  return 'protocol_error';
}

/** What the waypoint knows about one accepted tunnel. */
export interface TunnelInfo {
  /** The caller's SPIFFE ID, verified by the HBONE server (mTLS). */
  peerSpiffeId?: string;
  /** The caller's workload, from the CONNECT's baggage (already checked against peerSpiffeId). */
  peerMeta?: WorkloadMeta;
  /** `ip:port` the caller dialled: a service VIP and port. */
  target: string;
  /** The caller's address (original source). */
  clientAddress?: string;
  /** The caller's port, when its `forwarded: for=` was honoured (0: unknown). */
  clientPort?: number;
}

export interface WaypointEngineOptions {
  namespace: string;
  name: string;
  /** How to reach endpoints (HBONE in production, TCP in tests). */
  upstream: Upstream;
  telemetry?: TelemetryOptions;
  quota?: QuotaOptions;
  /** Default 16 KiB; larger request headers get 431. */
  maxHeaderBytes?: number;
  /** Default 1 MiB; larger bodies are streamed but not retried or mirrored. */
  retryBufferBytes?: number;
  /** Bytes all request bodies may keep for retries and mirrors at once (default DEFAULT_REPLAY_BUDGET_BYTES, 128 MiB). */
  replayBudgetBytes?: number;
  /** RequestMirror copies in flight at most (default DEFAULT_MAX_MIRRORS, 1024); past it copies are dropped and counted. */
  maxMirrors?: number;
  /**
   * HTTP/2 rapid-reset guard per client session, the HBONE server's rule (lib/hbone/rapid-reset.ts):
   * default more than 100 premature resets (within 1 s of the stream's start, before its answer) in
   * 1 s, or more than half of the streams once 500 opened, and the session is cut.
   */
  rapidReset?: RapidResetLimits;
  maxConcurrentStreams?: number;
  /** Idle upstream connections close after this long (default 60 s). */
  upstreamIdleTimeoutMs?: number;
  /** Silence before a tunnel is treated as a server-first TCP protocol. Default 1 s. */
  serverFirstTimeoutMs?: number;
  /**
   * A client must send complete request headers within this long after the request began (HTTP/1.1:
   * 408 and close; HTTP/2: GOAWAY). Bodies and responses are not limited by it. Default 10 s.
   */
  requestHeadersTimeoutMs?: number;
  /**
   * A client connection with no request in progress (HTTP/1.1 between requests, HTTP/2 with no open
   * stream) is closed after this long. Default 60 s.
   */
  idleTimeoutMs?: number;
  /**
   * Requests in progress at once, over all connections; beyond it a request gets 503 (gRPC:
   * UNAVAILABLE) with `x-weft-overloaded` and flag OM, and is not forwarded. Default 10,000.
   */
  maxRequests?: number;
  /** Source of randomness (weighted routing, LB, faults, backoff). */
  random?: () => number;
  /**
   * Request path normalization (Istio MeshConfig pathNormalization). Set: this waypoint's own
   * (flag), over the controller's mesh-wide setting; unset: the controller's, else BASE.
   */
  pathNormalization?: PathNormalization;
  /** `%2F`/`%5C` in paths outside DECODE_AND_MERGE_SLASHES; as pathNormalization, default KEEP_UNCHANGED. */
  escapedSlashes?: EscapedSlashesAction;
  /** X-Forwarded-For hops trusted for `remote.ip` (Istio numTrustedProxies); as pathNormalization, default 0. */
  numTrustedProxies?: number;
}

export interface AppliedConfig {
  version: number;
  services: number;
  routes: number;
  policies: number;
  /** Objects left out or failing closed (a controller/waypoint version skew), naming object and field. */
  issues: ConfigIssue[];
}

export class WaypointEngine {
  readonly namespace: string;
  readonly name: string;
  readonly telemetry: Telemetry;
  private snap: Snapshot;
  private version = 0;
  /** The snapshot validateConfig built, taken by applyConfig when it is given the same config next. */
  private validated: Snapshot | undefined;
  private readonly clusters = new Map<string, Cluster>();
  private readonly pool: UpstreamPool;
  private readonly rateLimiter = new LocalRateLimiter();
  private readonly quota: RedisQuota | undefined;
  /** Quotas from the command line (--quota); a TrafficPolicy quota for the same Service wins. */
  private readonly flagQuotaRules: readonly QuotaRule[];
  private readonly env: ProxyEnv;
  private readonly h1: http.Server;
  private readonly h2: http2.Http2Server;
  private readonly h1Conns = new WeakMap<object, ConnContext>();
  /** Per HTTP/1.1 connection: its requests not yet answered, one in progress and the rest waiting (holdH1). */
  private readonly h1Pending = new WeakMap<object, H1Pending>();
  private readonly h2Conns = new WeakMap<object, ConnContext>();
  private pendingH2: { ctx: ConnContext; socket: Duplex } | undefined;
  private readonly tunnels = new Set<Duplex>();
  private readonly rapidReset: RapidResetLimits | undefined;
  private readonly limits: ProxyLimits;
  /** Requests in progress and the --max-requests ceiling. */
  readonly admission: RequestAdmission;
  private readonly serverFirstTimeoutMs: number;
  private readonly h2Timeouts: H2Timeouts;
  /** The downstream timeouts in force (ms). */
  readonly timeouts: { requestHeadersMs: number; idleMs: number; checkIntervalMs: number };
  private closed = false;
  /** Last rejection, for the admin endpoint. */
  lastRejection: ConfigRejectedError | undefined;
  /** HTTP settings set on this waypoint itself (flags); they win over the controller's mesh-wide ones. */
  private readonly ownHttp: MeshHttpSettings;
  /** weft_hbone_forwarded_ignored_total{reason}: callers' for= claims not honoured. */
  private readonly forwardedIgnored: Counter<'reason'>;
  private readonly warn: (msg: string, fields: Record<string, unknown>) => void;
  /** Client sessions (HTTP/2) and connections (HTTP/1.1) ended for misbehaving are each counted, and logged at most REFUSAL_LOG_PER_SECOND a second. */
  private readonly sessionCutLog: LogBudget;
  /** Upstream connections given up for what the endpoint sent: each counted, logged at most REFUSAL_LOG_PER_SECOND a second. */
  private readonly upstreamProtocolLog: LogBudget;

  constructor(opts: WaypointEngineOptions) {
    this.namespace = opts.namespace;
    this.name = opts.name;
    this.telemetry = new Telemetry({ ...opts.telemetry, waypoint: `${opts.namespace}/${opts.name}` });
    this.warn = opts.telemetry?.warn ?? (() => {});
    this.sessionCutLog = new LogBudget(REFUSAL_LOG_PER_SECOND, (count) => this.warn('client connections ended not logged (rate limit; every one is counted in weft_waypoint_h2_session_errors_total, weft_waypoint_rapid_reset_goaways_total or weft_waypoint_h1_connections_closed_total)', { count, perSecond: REFUSAL_LOG_PER_SECOND }));
    this.snap = buildSnapshot(emptyConfig(opts.namespace), 0);
    this.upstreamProtocolLog = new LogBudget(REFUSAL_LOG_PER_SECOND, (count) => this.warn('upstream connections closed for a protocol error not logged (rate limit; every one is counted in weft_waypoint_upstream_protocol_errors_total)', { count, perSecond: REFUSAL_LOG_PER_SECOND }));
    this.pool = new UpstreamPool(opts.upstream, {
      ...(opts.upstreamIdleTimeoutMs !== undefined ? { idleTimeoutMs: opts.upstreamIdleTimeoutMs } : {}),
      onProtocolError: (reason, endpoint, error) => {
        this.telemetry.upstreamProtocolErrors.inc({ reason });
        if (this.upstreamProtocolLog.take()) this.warn('upstream HTTP/1.1 connection closed: the endpoint broke the protocol', { reason, endpoint, error });
      },
    });
    this.quota = opts.quota ? new RedisQuota(opts.quota) : undefined;
    this.flagQuotaRules = opts.quota?.rules ?? [];
    this.rapidReset = opts.rapidReset;
    this.limits = {
      maxHeaderBytes: opts.maxHeaderBytes ?? DEFAULT_MAX_HEADER_BYTES,
      retryBufferBytes: opts.retryBufferBytes ?? DEFAULT_RETRY_BUFFER_BYTES,
    };
    this.serverFirstTimeoutMs = opts.serverFirstTimeoutMs ?? DEFAULT_SERVER_FIRST_TIMEOUT_MS;
    const requestHeadersMs = opts.requestHeadersTimeoutMs ?? DEFAULT_REQUEST_HEADERS_TIMEOUT_MS;
    const idleMs = opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
    for (const [k, v] of [['requestHeadersTimeoutMs', requestHeadersMs], ['idleTimeoutMs', idleMs]] as const) {
      if (!Number.isInteger(v) || v < 1 || v > 2 ** 31 - 1) throw new RangeError(`${k} must be a whole number of milliseconds from 1 to 2^31-1, not ${v}`);
    }
    this.timeouts = { requestHeadersMs, idleMs, checkIntervalMs: timeoutCheckIntervalMs(requestHeadersMs) };
    const random = opts.random ?? Math.random;
    this.admission = new RequestAdmission(opts.maxRequests ?? DEFAULT_MAX_REQUESTS);
    const admission = this.admission;
    new Gauge({
      name: 'weft_waypoint_downstream_requests_active', help: 'Requests in progress (admitted under --max-requests and not finished)',
      registers: [this.telemetry.registry], collect() { this.set(admission.active); },
    });
    new Gauge({
      name: 'weft_waypoint_max_requests', help: 'The --max-requests ceiling on requests in progress',
      registers: [this.telemetry.registry], collect() { this.set(admission.max); },
    });
    // Envoy's cluster statistics (upstream_rq_pending_overflow, outlier_detection.ejections_enforced_total,
    // upstream_rq_retry, upstream_rq_retry_overflow), read from the clusters at each scrape; /clusters
    // shows the same numbers with the endpoints' state. A scrape collects the four counters in one
    // synchronous run, so the clusters are read once for it and forgotten after that run.
    let scraped: ClusterStats[] | undefined;
    const clusterStats = (): ClusterStats[] => {
      if (!scraped) {
        scraped = this.clusterStats();
        queueMicrotask(() => { scraped = undefined; });
      }
      return scraped;
    };
    const CLUSTER_COUNTERS: Array<[name: string, help: string, field: 'overflows' | 'ejections' | 'retries' | 'retryBudgetExhausted']> = [
      ['weft_waypoint_upstream_overflows_total', 'Requests answered 503 (flag UO) because their cluster was at a circuit breaker limit (maxRequests, or maxConnections with maxPendingRequests waiting)', 'overflows'],
      ['weft_waypoint_outlier_ejections_total', 'Endpoints ejected by outlier detection (consecutive5xx)', 'ejections'],
      ['weft_waypoint_upstream_retries_total', 'Retries sent upstream', 'retries'],
      ['weft_waypoint_retry_budget_exhausted_total', 'Retries not sent because the retry budget was spent', 'retryBudgetExhausted'],
    ];
    for (const [name, help, field] of CLUSTER_COUNTERS) {
      new Counter({
        name, help, labelNames: ['cluster'], registers: [this.telemetry.registry],
        collect() {
          this.reset();
          for (const c of clusterStats()) if (c[field] > 0) this.inc({ cluster: c.service }, c[field]);
        },
      });
    }
    const replayBudget = new ReplayBudget(opts.replayBudgetBytes ?? DEFAULT_REPLAY_BUDGET_BYTES);
    new Gauge({
      name: 'weft_waypoint_replay_buffer_bytes', help: 'Bytes of request bodies kept for retries and mirrors (bounded by the replay budget)',
      registers: [this.telemetry.registry], collect() { this.set(replayBudget.used); },
    });
    new Counter({
      name: 'weft_waypoint_replay_budget_exhausted_total', help: 'Request bodies not kept for retries or mirrors because the waypoint\'s replay budget was spent (the request itself was served)',
      registers: [this.telemetry.registry], collect() { this.reset(); this.inc(replayBudget.refused); },
    });
    this.env = {
      snapshot: () => this.snap,
      cluster: (svc, port) => this.clusterFor(svc, port),
      pool: this.pool,
      telemetry: this.telemetry,
      rateLimiter: this.rateLimiter,
      quota: this.quota,
      random,
      limits: this.limits,
      admission,
      mirrors: new RequestAdmission(opts.maxMirrors ?? DEFAULT_MAX_MIRRORS, 'maxMirrors'),
      replayBudget,
      waypoint: `${opts.namespace}/${opts.name}`,
      normalize: { ...DEFAULT_NORMALIZE_OPTIONS },
      numTrustedProxies: 0,
    };
    this.forwardedIgnored = new Counter({
      name: 'weft_hbone_forwarded_ignored_total',
      help: 'HBONE forwarded for= claims not honoured (the peer may not speak for that client), by reason',
      labelNames: ['reason'], registers: [this.telemetry.registry],
    });
    this.ownHttp = {
      ...(opts.pathNormalization ? { pathNormalization: opts.pathNormalization } : {}),
      ...(opts.escapedSlashes ? { escapedSlashes: opts.escapedSlashes } : {}),
      ...(opts.numTrustedProxies !== undefined ? { numTrustedProxies: opts.numTrustedProxies } : {}),
    };
    this.applyHttpSettings(undefined);

    this.h1 = http.createServer({
      maxHeaderSize: this.limits.maxHeaderBytes,
      // Only the headers are timed: a long body or a long response is not a slow client.
      requestTimeout: 0,
      headersTimeout: requestHeadersMs,
      connectionsCheckingInterval: this.timeouts.checkIntervalMs,
      keepAliveTimeout: idleMs,
      // A WebSocket handshake is proxied as an upgrade (proxy.ts, forwardUpgrade). Any other
      // Upgrade is taken as one too, so that node stops reading the connection there, and refused
      // with 403 (proxy.ts normalize), as Envoy refuses an upgrade it has no upgrade_configs
      // entry for; but `h2c` alone, which Envoy's codec strips, stays an ordinary request whose
      // Upgrade field is not forwarded, and so does a non-GET naming websocket (lib/websocket.ts).
      shouldUpgradeCallback: (req) => upgradeOf(req) !== undefined,
      // The pipeline refuses a missing or repeated Host itself (proxy.ts normalize), counted and
      // logged; node's own refusal would be neither.
      requireHostHeader: false,
    }, (req, res) => {
      this.holdH1(req.socket, res, () => this.onRequest(this.h1Conns.get(req.socket), req, res));
    });
    this.h1.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => this.onUpgrade(req, socket, head));
    this.h1.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => this.onClientError(err, socket));
    // A CONNECT gets the pipeline's answer (405, counted), not node's silent close.
    this.h1.on('connect', (req: http.IncomingMessage, socket: Duplex) => this.onConnect(req, socket));
    // keepAliveTimeout expired on a connection between requests (with a listener here node leaves
    // the socket to us).
    this.h1.on('timeout', (socket: Duplex) => {
      this.telemetry.downstreamTimeouts.inc({ protocol: 'HTTP/1.1', timeout: 'idle' });
      socket.destroy();
    });
    // node:http tracks connections for headersTimeout, and checks them every
    // connectionsCheckingInterval, from the moment a server starts listening. This one never
    // listens (tunnels are handed to it), so without this the header timeout never fired.
    this.h1.emit('listening');

    this.h2 = http2.createServer({
      maxSessionRejectedStreams: 100,
      maxSessionInvalidFrames: 100,
      settings: {
        maxConcurrentStreams: opts.maxConcurrentStreams ?? DEFAULT_MAX_CONCURRENT_STREAMS,
        // The protocol-level ceiling; requests between maxHeaderBytes and this get a 431 from the
        // pipeline (a larger list is refused by nghttp2 itself).
        maxHeaderListSize: this.limits.maxHeaderBytes * H2_HEADER_CEILING_FACTOR,
        enablePush: false,
      },
      maxHeaderListPairs: 256,
    }, (req, res) => this.onRequest(this.h2Conns.get(req.stream.session as object), req, res));
    this.h2.on('session', (session) => this.onH2Session(session));
    // node answers an HTTP/2 CONNECT with 405 itself when nothing listens, uncounted.
    this.h2.on('connect', (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => this.onRequest(this.h2Conns.get(req.stream.session as object), req, res));
    this.h2Timeouts = new H2Timeouts({
      headersTimeoutMs: requestHeadersMs, idleTimeoutMs: idleMs, checkIntervalMs: this.timeouts.checkIntervalMs,
      onTimeout: (timeout) => this.telemetry.downstreamTimeouts.inc({ protocol: 'HTTP/2', timeout }),
    });
  }

  // -------------------------------------------------------------------------------------------
  // Configuration

  /**
   * Validates and applies a configuration atomically. Throws ConfigRejectedError (the previous
   * configuration stays in force) naming each object and field at fault.
   */
  applyConfig(cfg: WaypointConfig): AppliedConfig {
    let next: Snapshot;
    try {
      // The config stream validates each update just before applying it: the same snapshot.
      const validated = this.validated;
      this.validated = undefined;
      next = validated?.config === cfg && validated.version === this.version + 1 ? validated : buildSnapshot(cfg, this.version + 1, this.snap);
    } catch (err) {
      this.telemetry.configApplies.inc({ result: 'rejected' });
      if (err instanceof ConfigRejectedError) this.lastRejection = err;
      throw err;
    }
    this.version = next.version;
    this.snap = next;
    this.lastRejection = undefined;
    this.refreshClusters();
    this.quota?.setRules(quotaRules(this.flagQuotaRules, next.settings));
    const limited = new Set<string>();
    for (const [k, s] of next.settings) if (s.rateLimit) limited.add(k);
    this.rateLimiter.retain(limited);
    const self = cfg.waypoints.find((w) => w.name === this.name && w.namespace === this.namespace);
    this.telemetry.setSelf(self?.workload);
    this.telemetry.configure(self?.telemetry);
    this.applyHttpSettings(self?.http);
    this.telemetry.configApplies.inc({ result: next.issues.length > 0 ? 'partial' : 'applied' });
    return { version: next.version, services: next.services.size, routes: cfg.routes.length, policies: cfg.policies.length, issues: [...next.issues] };
  }

  /**
   * The HTTP settings in force: this waypoint's own flags, else the controller's mesh-wide ones
   * (`mesh`, from this waypoint's entry in the config), else the defaults. A mesh-wide value this
   * waypoint does not know (a newer controller) is ignored.
   */
  private applyHttpSettings(mesh: MeshHttpSettings | undefined): void {
    const known = <T extends string>(v: T | undefined, names: readonly string[]) => (v !== undefined && names.includes(v) ? v : undefined);
    const n = mesh?.numTrustedProxies;
    const meshTrusted = Number.isInteger(n) && n! >= 0 && n! <= MAX_TRUSTED_PROXIES ? n : undefined;
    this.env.normalize = {
      pathNormalization: this.ownHttp.pathNormalization ?? known(mesh?.pathNormalization, PATH_NORMALIZATIONS) ?? DEFAULT_NORMALIZE_OPTIONS.pathNormalization,
      escapedSlashes: this.ownHttp.escapedSlashes ?? known(mesh?.escapedSlashes, ESCAPED_SLASHES_ACTIONS) ?? DEFAULT_NORMALIZE_OPTIONS.escapedSlashes,
    };
    this.env.numTrustedProxies = this.ownHttp.numTrustedProxies ?? meshTrusted ?? 0;
  }

  /**
   * The client of a tunnel a caller opened to this waypoint: its `forwarded: for=` only where the
   * peer may speak for that address, as the agents decide (lib/hbone/forwarded.ts: a workload of the
   * peer's identity on the peer's node); otherwise the TCP peer, and the ignored claim is counted.
   * Nobody speaks for others to a waypoint: its callers are agents carrying their own workloads.
   */
  tunnelClient(req: { peer: { spiffeId: string | undefined; address: string; port: number }; forwardedFor: ForwardedNode | undefined; headers: Record<string, string> }): TunnelClient {
    const owners = this.snap.addressOwners;
    const client = tunnelClient({ addressOwner: (ip) => owners.get(ip), waypointsServing: () => [] }, undefined, req);
    if (client.ignored) this.forwardedIgnored.inc({ reason: client.ignored.reason });
    return client;
  }

  /** The HTTP settings in force (admin config dump, tests). */
  get httpSettings(): Required<MeshHttpSettings> {
    return { ...this.env.normalize, numTrustedProxies: this.env.numTrustedProxies };
  }

  /** Validates a configuration without applying it (the config stream's NACK check). */
  validateConfig(cfg: WaypointConfig): void {
    this.validated = buildSnapshot(cfg, this.version + 1, this.snap);
  }

  /** Objects of the configuration in force that were left out or fail closed. */
  get configIssues(): readonly ConfigIssue[] {
    return this.snap.issues;
  }

  /** The configuration in force. */
  get config(): WaypointConfig {
    return this.snap.config;
  }

  get configVersion(): number {
    return this.snap.version;
  }

  private clusterEndpoints(svc: Service, port: number): Array<{ endpoint: Service['endpoints'][number]; port: number }> {
    return svc.endpoints.filter((e) => e.ready).map((e) => ({ endpoint: e, port: endpointPort(svc, e, port) }));
  }

  private clusterFor(svc: Service, port: number): Cluster {
    const key = `${serviceKey(svc)}:${port}`;
    let c = this.clusters.get(key);
    if (!c) {
      c = new Cluster(key, this.snap.settings.get(serviceKey(svc))!);
      c.update(c.settings, this.clusterEndpoints(svc, port));
      this.clusters.set(key, c);
    }
    return c;
  }

  private refreshClusters(): void {
    for (const [key, c] of this.clusters) {
      const colon = key.lastIndexOf(':');
      const svc = this.snap.services.get(key.slice(0, colon));
      if (!svc) { this.clusters.delete(key); continue; }
      c.update(this.snap.settings.get(serviceKey(svc))!, this.clusterEndpoints(svc, Number(key.slice(colon + 1))));
    }
  }

  /** Upstream connections (HBONE tunnels or TCP) opened so far; pooling keeps this small. */
  upstreamConnectionsOpened(): number {
    return this.pool.connectionsOpened;
  }

  /** Circuit breaker, retry and outlier state of every cluster used so far. */
  clusterStats(): ClusterStats[] {
    return [...this.clusters.values()].map((c) => c.stats());
  }

  // -------------------------------------------------------------------------------------------
  // Tunnels

  /**
   * Serves one tunnel (an HBONE CONNECT stream, or any byte stream in tests). Returns at once; the
   * tunnel is closed when its client is done or the engine closes.
   */
  handleTunnel(duplex: Duplex, info: TunnelInfo): void {
    if (this.closed) { duplex.destroy(); return; }
    this.tunnels.add(duplex);
    duplex.once('close', () => this.tunnels.delete(duplex));
    duplex.on('error', () => {});
    // Responses are written as headers then body; Nagle would hold the second write for an ACK.
    const sock = duplex as Duplex & { setNoDelay?: (on: boolean) => unknown };
    if (typeof sock.setNoDelay === 'function') sock.setNoDelay(true);
    void detectProtocol(duplex, this.serverFirstTimeoutMs).then((proto) => {
      if (proto === undefined || this.closed) { duplex.destroy(); return; }
      const ctx: ConnContext = { target: info.target, protocol: proto === 'h2' ? 'HTTP/2' : 'HTTP/1.1' };
      if (info.peerSpiffeId) ctx.peerSpiffeId = info.peerSpiffeId;
      if (info.peerMeta) ctx.peerMeta = info.peerMeta;
      if (info.clientAddress) ctx.clientAddress = info.clientAddress;
      if (info.clientPort) ctx.clientPort = info.clientPort;
      if (proto === 'silent' && this.needsHttp(info.target)) {
        // Passing a silent tunnel through would let a client that waits skip routes and limits.
        duplex.destroy();
        return;
      }
      if (proto === 'tcp' && (this.needsHttp(info.target) || this.declaredHttp(info.target))) {
        // Bytes that do not open like HTTP (a request line led by a space, a lower-case method) go
        // to the HTTP/1.1 parser, which refuses them (400, counted), instead of passing through
        // unjudged where routes, limits or faults apply or the port is declared HTTP (Istio does
        // not sniff a declared protocol).
        this.h1Conns.set(duplex, ctx);
        addInactivityTimeout(duplex);
        this.h1.emit('connection', duplex);
        if (duplex.readableFlowing === false) duplex.resume();
        return;
      }
      if (proto === 'tcp' || proto === 'silent') {
        void proxyTcp(this.env, duplex, ctx);
        return;
      }
      if (proto === 'h2') {
        this.pendingH2 = { ctx, socket: duplex };
        try { this.h2.emit('connection', duplex); } finally { this.pendingH2 = undefined; }
      } else {
        this.h1Conns.set(duplex, ctx);
        addInactivityTimeout(duplex);
        this.h1.emit('connection', duplex);
      }
      if (duplex.readableFlowing === false) duplex.resume();
    });
  }

  /** Is the port at `target` declared HTTP (appProtocol http, http2 or grpc, or an http-/grpc- port name)? */
  private declaredHttp(target: string): boolean {
    const svc = this.snap.byAddress.get(target);
    const port = Number(target.slice(target.lastIndexOf(':') + 1));
    const app = svc?.ports.find((p) => p.port === port)?.appProtocol;
    return app !== undefined && app !== 'tcp';
  }

  /** Does the service at `target` have configuration only HTTP can honour (routes, limits, faults)? */
  private needsHttp(target: string): boolean {
    const svc = this.snap.byAddress.get(target);
    if (!svc) return false;
    const key = serviceKey(svc);
    const port = Number(target.slice(target.lastIndexOf(':') + 1));
    const st = this.snap.settings.get(key);
    return this.snap.routes.hasRoutes(key, port) || [...this.snap.consumerRoutes.values()].some((t) => t.hasRoutes(key, port)) || st?.rateLimit !== undefined || st?.fault !== undefined || (this.quota?.hasRule(key) ?? false);
  }

  private onRequest(ctx: ConnContext | undefined, req: DownstreamRequest, res: DownstreamResponse): void {
    if (!ctx) { res.destroy(); return; }
    void handleRequest(this.env, ctx, req, res);
  }

  /**
   * node:http hands the connection over with an upgrade request. The pipeline answers on it with a
   * response of its own, which closes the connection unless it was a 101 (then the connection is
   * joined to the endpoint's and closes with it).
   */
  private onUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => {});
    this.afterH1Responses(socket, () => this.upgrade(req, socket, head));
  }

  private upgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    const ctx = this.h1Conns.get(socket);
    if (!ctx || !socket.writable) { socket.destroy(); return; }
    readAgain(socket);
    // The keep-alive timer node:http may have armed between requests; the upgraded connection
    // lives as long as its two ends do.
    (socket as Duplex & { setTimeout?: (ms: number) => unknown }).setTimeout?.(0);
    const res = new http.ServerResponse(req);
    res.shouldKeepAlive = false;
    res.assignSocket(socket as Parameters<http.ServerResponse['assignSocket']>[0]);
    res.once('finish', () => { if (res.statusCode !== 101) socket.end(); });
    // What it asks for: upgradeOf again, a read of its headers with no side effect, which
    // shouldUpgradeCallback found to be an upgrade (node asks it first, with this request).
    void handleRequest(this.env, ctx, req, res, { kind: upgradeOf(req) ?? 'other', socket, head });
  }

  private onConnect(req: http.IncomingMessage, socket: Duplex): void {
    socket.on('error', () => {});
    this.afterH1Responses(socket, () => this.connect(req, socket));
  }

  private connect(req: http.IncomingMessage, socket: Duplex): void {
    const ctx = this.h1Conns.get(socket);
    if (!ctx || !socket.writable) { socket.destroy(); return; }
    const res = new http.ServerResponse(req);
    res.shouldKeepAlive = false;
    res.assignSocket(socket as Parameters<http.ServerResponse['assignSocket']>[0]);
    res.once('finish', () => socket.end());
    void handleRequest(this.env, ctx, req, res);
  }

  /**
   * An HTTP/1.1 request, counted as pending on its connection until its response is handed to the
   * socket (or the connection goes), and started once the requests before it on its connection are answered, as
   * Envoy's HTTP/1 codec dispatches one request at a time and reads no further until it is answered
   * (conn_manager_impl.cc onData). node parses whatever a read brought and hands every pipelined
   * request over at once: they wait here, the socket paused meanwhile, and a connection with more of
   * them than an HTTP/2 session may open streams (MAX_H1_PIPELINED) is closed, counted
   * (`weft_waypoint_h1_connections_closed_total{reason="pipeline_depth"}`) and logged. Before, each
   * was started at once: one connection put any number of requests at the backend and took as many
   * places of --max-requests. A refusal of a malformed request waits for the responses before it
   * (RFC 9112 section 9.3.2: responses go in request order).
   */
  private holdH1(socket: object, res: http.ServerResponse, start: () => void): void {
    let p = this.h1Pending.get(socket);
    if (!p) { p = { responses: 0, waiting: [] }; this.h1Pending.set(socket, p); }
    const pending = p;
    const duplex = socket as Duplex;
    pending.responses++;
    let done = false;
    const release = (): void => {
      if (done) return;
      done = true;
      pending.responses--;
      // The next request whose client is still there; one abandoned while waiting is never started.
      for (let next = pending.waiting.shift(); next; next = pending.waiting.shift()) {
        if (next.res.destroyed || duplex.destroyed) continue;
        // Reading resumes with the last one started, unless an upgrade or CONNECT follows: node no
        // longer reads for it, and its data is left for the upgraded connection's pipe.
        if (pending.waiting.length === 0 && !pending.then) duplex.resume();
        next.start();
        return;
      }
      if (pending.responses > 0 || !pending.then) return;
      const then = pending.then;
      pending.then = undefined;
      then();
    };
    res.once('finish', release).once('close', release);
    if (pending.responses === 1) { start(); return; }
    if (pending.waiting.length >= MAX_H1_PIPELINED) {
      pending.waiting.length = 0;
      this.telemetry.h1ConnectionsClosed.inc({ reason: 'pipeline_depth' });
      const ctx = this.h1Conns.get(socket);
      if (this.sessionCutLog.take()) {
        this.warn('HTTP/1.1 connection closed: more pipelined requests waiting than the waypoint holds for one connection', {
          reason: 'pipeline_depth', waiting: MAX_H1_PIPELINED, target: ctx?.target, peer: ctx?.peerSpiffeId, address: ctx?.clientAddress,
        });
      }
      duplex.destroy();
      return;
    }
    pending.waiting.push({ res, start });
    duplex.pause();
  }

  /**
   * Runs `next` once every response owed on an HTTP/1.1 connection is handed to it, at once if none
   * is. node hands over an upgrade, a CONNECT or a malformed request as soon as it parses it, while
   * the requests before it may still be waiting or in progress; Envoy reads it only after they are
   * answered (one request at a time, conn_manager_impl.cc onData), and responses go in request
   * order (RFC 9112 section 9.3.2). Taking the socket earlier threw ERR_HTTP_SOCKET_ASSIGNED
   * (uncaught: the process exited). After a response that ends the connection, `next` finds the
   * socket gone and does nothing.
   */
  private afterH1Responses(socket: object, next: () => void): void {
    const pending = this.h1Pending.get(socket);
    if (pending && pending.responses > 0) { pending.then = next; return; }
    next();
  }

  private onClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
    this.afterH1Responses(socket, () => this.refuseMalformed(err, socket));
  }

  private refuseMalformed(err: NodeJS.ErrnoException, socket: Duplex): void {
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'HPE_HEADERS_TIMEOUT' || err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    // ERR_HTTP_REQUEST_TIMEOUT: headersTimeout expired (requestTimeout is off).
    if (status === 408) this.telemetry.downstreamTimeouts.inc({ protocol: 'HTTP/1.1', timeout: 'request_headers' });
    if (!socket.writable || err.code === 'ECONNRESET') { socket.destroy(); return; }
    const body = status === 431 ? `request header fields too large (limit ${this.limits.maxHeaderBytes} bytes)\n`
      : status === 408 ? `request headers not received within ${this.timeouts.requestHeadersMs} ms\n` : `malformed HTTP/1.1 request: ${err.code ?? err.message}\n`;
    socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nconnection: close\r\ncontent-type: text/plain\r\n` +
      `${FLAGS_HEADER}: ${FLAG_DOWNSTREAM_PROTOCOL_ERROR}\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    const ctx = this.h1Conns.get(socket);
    this.telemetry.record({
      startTime: Date.now(), durationMs: 0, method: '-', path: '-', authority: '-', protocol: 'HTTP/1.1', grpc: false,
      responseCode: status, responseFlags: FLAG_DOWNSTREAM_PROTOCOL_ERROR, requestBytes: (err as { bytesParsed?: number }).bytesParsed ?? 0,
      responseBytes: Buffer.byteLength(body), attempts: 0, requestId: '-', detail: status === 408 ? 'request_headers_timeout' : err.message,
      ...(ctx?.peerSpiffeId ? { sourcePrincipal: ctx.peerSpiffeId } : {}),
      ...(ctx?.clientAddress ? { sourceAddress: ctx.clientAddress } : {}),
    }, undefined);
    setTimeout(() => socket.destroy(), 1000).unref();
  }

  private onH2Session(session: http2.ServerHttp2Session): void {
    const pending = this.pendingH2;
    if (!pending) { session.destroy(); return; }
    const ctx = pending.ctx;
    this.h2Conns.set(session, ctx);
    session.on('error', (err: Error & { code?: string; errno?: number }) => {
      const reason = h2SessionErrorReason(err);
      if (!reason) return;
      this.telemetry.h2SessionErrors.inc({ reason });
      this.logSessionCut(ctx, reason, err.message);
    });
    this.h2Timeouts.watch(session, pending.socket);
    const resets = new RapidResetGuard(this.rapidReset);
    session.on('stream', (stream: http2.ServerHttp2Stream) => {
      stream.on('error', () => {});
      resets.opened();
      const opened = performance.now();
      // 'aborted': the stream closed before we finished answering it (the client reset it). Streams
      // torn down with their session are no resets; nor are requests the client gave up on after
      // waiting (rapid-reset.ts).
      stream.once('aborted', () => {
        if (session.destroyed) return;
        const reason = resets.reset(performance.now() - opened);
        if (!reason) return;
        this.telemetry.rapidResetGoaways.inc();
        this.logSessionCut(ctx, 'rapid_reset', reason);
        // As Envoy ends a connection with too many premature resets: the session goes, with what it carries.
        session.goaway(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
        setTimeout(() => { if (!session.destroyed) session.destroy(); }, 100).unref();
      });
    });
  }

  private logSessionCut(ctx: ConnContext, reason: H2SessionErrorReason | 'rapid_reset', error: string): void {
    if (!this.sessionCutLog.take()) return;
    this.warn('HTTP/2 session ended: the client broke the protocol or flooded it', {
      reason, error, target: ctx.target, peer: ctx.peerSpiffeId, address: ctx.clientAddress,
    });
  }

  /** Stops serving: closes tunnels, pooled upstream connections, Redis and span export. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const d of this.tunnels) d.destroy();
    this.tunnels.clear();
    this.h1.close();
    this.h2.close();
    this.h2Timeouts.close();
    this.pool.close();
    await this.quota?.close();
    await this.telemetry.shutdown();
  }
}

/**
 * Reads just enough of a tunnel to tell HTTP/2 prior knowledge (the connection preface), HTTP/1.1
 * (a request line starts with an upper-case method token, or with the empty lines RFC 9112 lets a
 * server skip) and anything else (TCP: TLS, binary protocols), then puts the bytes back. `silent`:
 * the client said nothing for `silenceMs` (a server-first protocol); undefined when the tunnel ends
 * before saying anything.
 */
export function detectProtocol(d: Duplex, silenceMs: number): Promise<'h1' | 'h2' | 'tcp' | 'silent' | undefined> {
  return new Promise((resolve) => {
    let buf: Buffer = Buffer.alloc(0);
    const done = (p: 'h1' | 'h2' | 'tcp' | 'silent' | undefined): void => {
      clearTimeout(timer);
      d.off('data', onData).off('end', onEnd).off('error', onEnd).off('close', onEnd);
      d.pause();
      if (buf.length > 0 && p !== undefined) d.unshift(buf);
      resolve(p);
    };
    const onData = (chunk: Buffer): void => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      const first = buf[0]!;
      if (first !== H2_PREFACE[0]) { done((first >= 0x41 && first <= 0x5a) || first === 0x0d || first === 0x0a ? 'h1' : 'tcp'); return; }
      const n = Math.min(buf.length, H2_PREFACE.length);
      if (!buf.subarray(0, n).equals(H2_PREFACE.subarray(0, n))) done('h1');
      else if (buf.length >= H2_PREFACE.length) done('h2');
    };
    const onEnd = (): void => done(undefined);
    const timer = setTimeout(() => done(buf.length === 0 ? 'silent' : 'h1'), silenceMs);
    timer.unref();
    d.on('data', onData).once('end', onEnd).once('error', onEnd).once('close', onEnd);
  });
}

/**
 * The quotas in force: the TrafficPolicy `quota`s the snapshot accepted, over the --quota flags for
 * the same Service.
 */
export function quotaRules(flags: readonly QuotaRule[], settings: ReadonlyMap<string, ClusterSettings>): QuotaRule[] {
  const rules = new Map(flags.map((r) => [r.service, r]));
  for (const [service, s] of settings) if (s.quota) rules.set(service, { service, limit: s.quota.limit, windowMs: s.quota.windowMs, per: s.quota.per });
  return [...rules.values()];
}
