// The request pipeline: an ordered list of stages over one request context,
//
//   admit → normalize → resolve → authorize → rate limit → quota → route → fault → forward
//
// each of which either passes the request on or ends it with a local reply (`localReply`, the one
// place a waypoint answers by itself). Normalization runs once, before routing and policy, and what
// it produces is what is judged, routed and forwarded. `forward(ctx, cluster)` sends the request upstream with
// retries, timeouts, circuit breaking and outlier detection, and streams the answer back. Every
// request ends in exactly one telemetry record (`finish`).
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import http2 from 'node:http2';
import type { Duplex, Readable } from 'node:stream';
import { pipeBidirectional } from '../../lib/hbone/index.ts';
import type { UpgradeKind } from '../../lib/websocket.ts';
import { isConsumerRoute, servesService, type Endpoint, type RouteBackend, type RouteRule, type Service, type WorkloadMeta } from '../../lib/model/mesh.ts';
import { ReplayableBody, type ReplayBudget } from './body.ts';
import type { Snapshot } from './config.ts';
import { backendService, routesFor, serviceKey } from './config.ts';
import { UpstreamConnectError, UpstreamTimeoutError } from './errors.ts';
import { applyRouteFilters, type FilterContext } from './filters.ts';
import * as F from './flags.ts';
import { applyHeaderEdits, forwardableHeaders, headerListSize, headerValue, splitHostPort, type HeaderMap } from './headers.ts';
import { GRPC_UNKNOWN, endResponse, grpcStatusCode, sendLocalReply, writeHead, type DownstreamResponse, type LocalReply } from './local-reply.ts';
import { normalizeRequestTarget, type NormalizeOptions } from './normalize.ts';
import type { RedisQuota } from './quota.ts';
import { OVERLOADED_HEADER, type RequestAdmission } from './overload.ts';
import { LocalRateLimiter, retryAfterSeconds } from './ratelimit.ts';
import { OVERFLOW, decideFault, isRetriable, retryBackoffMs, type AttemptOutcome, type Cluster, type EndpointState } from './resilience.ts';
import { pickBackend, type RouteDecision, type RouteTable } from './router.ts';
import { pathOf, remoteIpOf, type Decision, type DryRunResult } from '../../lib/policy/authz.ts';
import { authenticateRequest, refusalDetails, type RequestAuth } from '../../lib/policy/jwt.ts';
import { clip } from '../../lib/log.ts';
import { outgoingTraceHeaders, type RequestRecord, type Telemetry, type TraceContext } from './telemetry.ts';
import { isRefusedStream, type UpstreamEndpoint, type UpstreamPool, type UpstreamProtocol, type UpstreamResponse } from './upstream.ts';

export type DownstreamRequest = http.IncomingMessage | http2.Http2ServerRequest;

/** What the engine knows about the tunnel a request arrived on. */
export interface ConnContext {
  peerSpiffeId?: string;
  /** The caller's workload, from the tunnel's baggage (believed for the namespace its certificate proves). */
  peerMeta?: WorkloadMeta;
  /** `ip:port` the client dialled (the service VIP and port). */
  target: string;
  clientAddress?: string;
  /** The caller's port when it is known (its agent's for= was honoured). */
  clientPort?: number;
  protocol: 'HTTP/1.1' | 'HTTP/2';
}

export interface ProxyLimits {
  /** Largest request header list (HTTP/2: RFC 9113 size; HTTP/1.1: enforced by the parser). */
  maxHeaderBytes: number;
  /** Largest body kept so that the request can be retried or mirrored. */
  retryBufferBytes: number;
}

/** What the pipeline needs from the engine. */
export interface ProxyEnv {
  snapshot(): Snapshot;
  /** The cluster of a service port (created on first use, kept across config updates). */
  cluster(service: Service, port: number): Cluster;
  pool: UpstreamPool;
  telemetry: Telemetry;
  rateLimiter: LocalRateLimiter;
  quota: RedisQuota | undefined;
  random: () => number;
  limits: ProxyLimits;
  /** The ceiling on requests in progress in this waypoint. */
  admission: RequestAdmission;
  /** The ceiling on RequestMirror copies in flight (apart from the requests: a copy never refuses one). */
  mirrors: RequestAdmission;
  /** The bytes all request bodies may keep for retries and mirrors at once. */
  replayBudget: ReplayBudget;
  /** `namespace/name` of the waypoint, for overload answers. */
  waypoint: string;
  /** Path normalization (Istio MeshConfig pathNormalization). */
  normalize: NormalizeOptions;
  /** X-Forwarded-For hops trusted for `remote.ip` (Istio numTrustedProxies). */
  numTrustedProxies: number;
}

/** The destination service port the request was addressed to (set by `resolve`). */
export interface Destination {
  service: Service;
  port: number;
  /** `namespace/name`. */
  key: string;
  /**
   * The pod address the tunnel was addressed to, when it was not a service address. Gateway API
   * GAMMA (MeshFrontend): a Service's routes apply to traffic sent to the Service, not to traffic
   * sent to its pods directly; such a request goes to that pod, under the Service's policy.
   */
  workloadIp?: string;
}

/** What `route` decided: where the request goes and how it is sent (read by `fault` and `forward`). */
export interface UpstreamPlan {
  service: Service;
  port: number;
  /** `namespace/name` of the backend service. */
  key: string;
  protocol: UpstreamProtocol;
  /** The request as it will be sent (method, path, authority, headers after filters). */
  request: FilterContext['request'];
  responseEdits: FilterContext['responseEdits'];
  mirrors: FilterContext['mirrors'];
  timeouts: { requestMs?: number; perTryMs?: number };
  /**
   * The timeouts are a consumer route's (GEP-1294: its namespace's callers' own patience), not the
   * producer's: when they fire they say nothing about the endpoint, and are kept from the outlier
   * state every caller shares.
   */
  consumerTimeouts?: { request: boolean; perTry: boolean };
  /** The route rule's retries (HTTPRouteRetry), in place of the backend's TrafficPolicy retries. */
  retry?: RouteRule['retry'];
  /** Only this endpoint address (a request addressed to a pod, not to the Service). */
  onlyEndpoint?: string;
}

/** One request on its way through the stages; also what its telemetry record is made of. */
export interface RequestContext {
  readonly env: ProxyEnv;
  readonly conn: ConnContext;
  readonly req: DownstreamRequest;
  readonly res: DownstreamResponse;
  /**
   * Request headers: as received, but for what a RequestAuthentication changed (`authenticate`: the
   * token header removed, payload and claim headers written, callers' copies of those dropped).
   */
  headers: HeaderMap;
  /** What the request's JWT said, once `authenticate` verified it; absent: no token (or no RequestAuthentication). */
  requestAuth?: RequestAuth;
  readonly snap: Snapshot;
  /** Cancels everything upstream: the client went away, or the request timeout fired. */
  readonly overall: AbortController;
  readonly start: number;
  readonly startHr: bigint;
  method: string;
  /** The request target, query included: as received until `normalize`, then origin-form and normalized. */
  target: string;
  /** The normalized target's path and query (`?...` or empty), split once by `normalize`; empty before it. */
  path: string;
  query: string;
  authority: string;
  /** The address the tunnel came from (`source.ip`, `ipBlocks`): the caller, as the mesh vouches. */
  directIp?: string;
  /**
   * The original client (`remote.ip`, `remoteIpBlocks`): the last X-Forwarded-For entry when it is an
   * address, as Envoy reads it at a proxy that is not the edge (xff_num_trusted_hops 0), else
   * `directIp`. Callers write X-Forwarded-For, so this is no stronger than the last hop's word.
   */
  remoteIp?: string;
  grpc: boolean;
  flags: F.ResponseFlags;
  requestId: string;
  trace?: TraceContext;
  dest?: Destination;
  upstream?: UpstreamPlan;
  routeName?: string;
  /** The route rule the request matched (routeMatch), kept from the authorize stage to the route stage. */
  routeMatch?: { matched: RouteDecision | undefined; table: RouteTable | undefined };
  upstreamHost?: string;
  destinationEndpoint?: Endpoint;
  attempts: number;
  status: number;
  grpcStatus?: string;
  /** The upstream's grpc-status named none of gRPC's codes (grpcStatus says UNKNOWN). */
  grpcStatusInvalid?: boolean;
  responseBytes: number;
  detail?: string;
  /** AUDIT policies that matched (logged, never deciding). */
  audit?: string[];
  /** What the dry-run policies would have decided (logged and counted, never deciding). */
  dryRun?: DryRunResult[];
  body?: ReplayableBody;
  /** Bytes the client sent, when there is no body to count them (an upgraded connection). */
  requestBytes?: number;
  /**
   * An HTTP/1.1 Upgrade request: what it asks for (engine.ts onUpgrade, lib/websocket.ts upgradeOf;
   * `other` is refused), the client's connection, which node:http has handed over, and the bytes the
   * client sent after the request head (they belong to the new protocol).
   */
  upgrade?: { kind: UpgradeKind; socket: Duplex; head: Buffer };
  /** The upgrade was answered 101: the connection is the endpoint's now, and is recorded when it ends. */
  upgraded?: boolean;
  /** A stage answered; no later stage runs. */
  done: boolean;
  downstreamGone: boolean;
  recorded: boolean;
}

/** One step of the pipeline: it passes the request on by returning, or ends it with `localReply`. */
export type Stage = (ctx: RequestContext) => void | Promise<void>;

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) { resolve(); return; }
    const t = setTimeout(() => { signal.removeEventListener('abort', onAbort); resolve(); }, ms);
    const onAbort = (): void => { clearTimeout(t); resolve(); };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

function requestHasBody(req: DownstreamRequest): boolean {
  if ('stream' in req) return !(req.stream as http2.ServerHttp2Stream & { endAfterHeaders?: boolean }).endAfterHeaders;
  const cl = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (cl !== undefined && cl !== '0');
}

/** Endpoint IP → the Services that have it, per snapshot (for tunnels addressed to a workload). */
/** gRPC status UNAVAILABLE (grpc/doc/statuscodes.md). */
const GRPC_UNAVAILABLE = 14;

const servicesByEndpoint = new WeakMap<Snapshot, Map<string, Service[]>>();

function servicesWithEndpoint(snap: Snapshot, ip: string): Service[] {
  let index = servicesByEndpoint.get(snap);
  if (!index) {
    index = new Map();
    for (const key of [...snap.services.keys()].sort()) {
      const svc = snap.services.get(key)!;
      // Served Services only (Snapshot.byAddress): another namespace's not bound here is here to be
      // sent to, but for its pods bound here by their own or their namespace's labels (Istio
      // use-waypoint-namespace on a Pod; the address-owner table says which).
      const served = servesService(snap.namespace, svc);
      for (const e of svc.endpoints) {
        if (!served && snap.addressOwners.get(e.ip)?.waypointNamespace !== snap.namespace) continue;
        const list = index.get(e.ip) ?? [];
        if (!list.includes(svc)) list.push(svc);
        index.set(e.ip, list);
      }
    }
    servicesByEndpoint.set(snap, index);
  }
  return index.get(ip) ?? [];
}

/** The port an endpoint of `svc` serves service port `port` on (named target ports resolved per endpoint). */
export function endpointPort(svc: Service, e: Service['endpoints'][number], port: number): number {
  const sp = svc.ports.find((p) => p.port === port);
  return e.ports[String(port)] ?? (typeof sp?.targetPort === 'number' ? sp.targetPort : undefined) ?? e.port ?? port;
}

/** The service port of `svc` whose endpoint `ip` listens on `targetPort`, if any. */
function servicePortFor(svc: Service, ip: string, targetPort: number): number | undefined {
  const e = svc.endpoints.find((x) => x.ip === ip);
  return e && svc.ports.find((sp) => endpointPort(svc, e, sp.port) === targetPort)?.port;
}

/**
 * The Service a request is for. The tunnel's CONNECT target decides, never Host alone: Host is the
 * caller's to write, and letting it choose would reach another namespace's Service past that
 * namespace's policy (issue 16).
 *  - a Service VIP: that Service; its port is the target's, else Host's if declared, else the first;
 *  - a workload's address (a pod that uses this waypoint): a Service that has it as an endpoint on
 *    that port (Host chooses among those only);
 *  - anything else: none.
 */
export function resolveService(snap: Snapshot, target: string, authority: string): { service: Service; port: number; workloadIp?: string } | undefined {
  const { host: targetIp, port: targetPort } = splitHostPort(target);
  const { host, port: hostPort } = splitHostPort(authority);
  const byVip = snap.byAddress.get(target) ?? snap.byAddress.get(targetIp);
  if (byVip) {
    const port = [targetPort, hostPort].find((p) => p !== undefined && byVip.ports.some((sp) => sp.port === p)) ?? byVip.ports[0]?.port ?? targetPort ?? 80;
    return { service: byVip, port };
  }
  if (targetPort === undefined) return undefined;
  const candidates = servicesWithEndpoint(snap, targetIp)
    .map((service) => ({ service, port: servicePortFor(service, targetIp, targetPort) }))
    .filter((c): c is { service: Service; port: number } => c.port !== undefined);
  const named = snap.byHost.get(host.toLowerCase());
  const chosen = candidates.find((c) => c.service === named) ?? candidates[0];
  return chosen ? { ...chosen, workloadIp: targetIp } : undefined;
}

/**
 * HTTP/2 upstream for ports declared grpc or http2 and for gRPC requests; HTTP/1.1 otherwise, as
 * Istio does (an undeclared backend may not speak HTTP/2 even when the client does).
 */
function upstreamProtocol(service: Service, port: number, grpc: boolean): UpstreamProtocol {
  const app = service.ports.find((p) => p.port === port)?.appProtocol;
  return app === 'grpc' || app === 'http2' || grpc ? 'http2' : 'http1';
}

/**
 * The one way the waypoint answers by itself: records status, flags and detail on the context, sends
 * the reply (a gRPC status for gRPC callers) and ends the pipeline.
 */
export function localReply(ctx: RequestContext, r: LocalReply): void {
  ctx.done = true;
  for (const f of r.flags.split(',')) if (f !== '-' && f !== '') ctx.flags.add(f);
  ctx.status = r.status;
  ctx.detail ??= r.body.trim();
  const out = sendLocalReply(ctx.res, { ...r, flags: ctx.flags.toString() }, ctx.grpc);
  ctx.responseBytes += out.bytes;
  if (out.grpcStatus) ctx.grpcStatus = out.grpcStatus;
}

function destination(ctx: RequestContext): Destination {
  if (!ctx.dest) throw new Error('stage ran before resolve');
  return ctx.dest;
}

function plan(ctx: RequestContext): UpstreamPlan {
  if (!ctx.upstream) throw new Error('stage ran before route');
  return ctx.upstream;
}

/** A RequestRedirect filter ran: answer with its redirect instead of forwarding. */
function answerRedirect(ctx: RequestContext, fctx: FilterContext): boolean {
  const r = fctx.redirect;
  if (!r) return false;
  localReply(ctx, { status: r.statusCode, flags: '-', body: `redirect to ${r.location}`, headers: { location: r.location } });
  return true;
}

/** A CORS filter allowed a preflight request: the waypoint answers it (200, no body), the backend never sees it. */
function answerPreflight(ctx: RequestContext, fctx: FilterContext): boolean {
  if (!fctx.preflight) return false;
  localReply(ctx, { status: 200, flags: '-', body: '', headers: fctx.preflight });
  ctx.detail = 'cors_preflight';
  return true;
}

// -------------------------------------------------------------------------------------------------
// Stages

/** Overload: over the ceiling nothing else is looked at, and nothing leaves the waypoint. */
const admit: Stage = (ctx) => {
  const { env, conn, res } = ctx;
  if (!env.admission.tryAdmit()) {
    env.telemetry.overloadRejections.inc({ protocol: conn.protocol });
    localReply(ctx, {
      status: 503, flags: F.FLAG_OVERLOADED,
      body: `waypoint ${env.waypoint} is overloaded: ${env.admission.max} requests in progress (--max-requests); not forwarded, retry later`,
      headers: { [OVERLOADED_HEADER]: `waypoint ${env.waypoint} at ${env.admission.max} concurrent requests` },
    });
    return;
  }
  res.once('close', () => env.admission.release());
  if ('stream' in ctx.req && headerListSize(ctx.headers) > env.limits.maxHeaderBytes) {
    localReply(ctx, { status: 431, body: `request header fields too large: more than ${env.limits.maxHeaderBytes} bytes`, flags: '-' });
  }
};

/**
 * The request target becomes origin-form and normalized (normalize.ts); anything it refuses gets 400
 * with flag DPE and the reason in the access log. From here on, `ctx.target` (split into
 * `ctx.path` and `ctx.query`) is what policy judges, routes match and the backend receives.
 */
const normalize: Stage = (ctx) => {
  if (ctx.upgrade?.kind === 'other') {
    // An Upgrade the waypoint does not proxy (lib/websocket.ts): Envoy answers 403 upgrade_failed,
    // Istio configuring websocket only. The connection closes after the answer (engine.ts
    // onUpgrade): what follows the head is the refused protocol's.
    ctx.detail = `upgrade_failed: Upgrade ${JSON.stringify(clip(headerValue(ctx.headers, 'upgrade')))} is not proxied by the waypoint (websocket only)`;
    localReply(ctx, { status: 403, flags: '-', body: 'upgrade not supported by the waypoint (websocket only)' });
    return;
  }
  if (ctx.method === 'CONNECT') {
    // A waypoint is not a forward proxy: a CONNECT names no resource of the Service to route or judge.
    ctx.detail = 'connect_not_supported: CONNECT at a waypoint';
    localReply(ctx, { status: 405, flags: '-', body: 'CONNECT is not supported by the waypoint', headers: { allow: 'GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE' } });
    return;
  }
  if (!('stream' in ctx.req)) {
    // RFC 9112 section 3.2: a server MUST answer 400 to an HTTP/1.1 request without a Host field, and
    // to any request with more than one (node keeps the first of several, and would pass the rest).
    // An invalid value is refused below, for both protocols (normalizeRequestTarget).
    const hosts = countHeader(ctx.req.rawHeaders, 'host');
    const problem = hosts > 1 ? ['duplicate_host', `${hosts} Host header fields`]
      : hosts === 0 && ctx.req.httpVersion === '1.1' ? ['missing_host', 'no Host header field in an HTTP/1.1 request']
      : undefined;
    if (problem) {
      ctx.detail = `${problem[0]}: ${problem[1]}`;
      localReply(ctx, { status: 400, flags: F.FLAG_DOWNSTREAM_PROTOCOL_ERROR, body: `bad request: ${problem[1]} (RFC 9112 section 3.2)` });
      return;
    }
  }
  const host = headerValue(ctx.headers, ':authority') ?? headerValue(ctx.headers, 'host');
  const n = normalizeRequestTarget(ctx.method, ctx.target, host, ctx.env.normalize);
  if (!n.ok) {
    ctx.detail = `${n.reason}: ${n.message}`;
    localReply(ctx, { status: 400, flags: F.FLAG_DOWNSTREAM_PROTOCOL_ERROR, body: `bad request: ${n.message}` });
    return;
  }
  ctx.target = n.target;
  ctx.path = n.path;
  ctx.query = n.query;
};

/** The fields of `raw` (name, value, ...) by lower-case name, each with every value it came with. */
function fieldsOf(raw: readonly string[]): Record<string, string[]> {
  const out: Record<string, string[]> = Object.create(null) as Record<string, string[]>;
  for (let i = 0; i + 1 < raw.length; i += 2) (out[raw[i]!.toLowerCase()] ??= []).push(raw[i + 1]!);
  return out;
}

function countHeader(raw: readonly string[], name: string): number {
  let n = 0;
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.length === name.length && raw[i]!.toLowerCase() === name) n++;
  return n;
}

/** The destination service port, chosen by the tunnel's target (never by Host alone). */
const resolve: Stage = (ctx) => {
  const dest = resolveService(ctx.snap, ctx.conn.target, ctx.authority);
  if (!dest) {
    localReply(ctx, { status: 404, flags: F.FLAG_NO_ROUTE, body: `no service for host "${ctx.authority}" (path ${ctx.target}) behind waypoint namespace ${ctx.snap.namespace}` });
    return;
  }
  ctx.dest = { ...dest, key: serviceKey(dest.service) };
};

/** Characters of a value the waypoint echoes in a header (the realm): printable ASCII but the quote and backslash. */
const REALM_UNSAFE = /[^\x21\x23-\x5b\x5d-\x7e]/g;

/**
 * RequestAuthentication (https://istio.io/latest/docs/reference/config/security/request_authentication/),
 * as Envoy's jwt_authn runs before RBAC: a token that fails is refused (401, or 403 for an audience
 * not allowed) with Envoy's body, WWW-Authenticate and response code details, counted by reason and
 * logged within the refusal budget; no token passes with no request principal; a verified token's
 * attributes go to `authorize`, and its header edits apply to everything after.
 */
const authenticate: Stage = (ctx) => {
  const dest = destination(ctx);
  const rules = ctx.snap.jwtRules.get(dest.key);
  if (!rules) return;
  // Every value of a repeated field, from the fields as received, HTTP/1.1 and HTTP/2 alike (node
  // keeps only the first Authorization of either), so two tokens in two Authorization fields are two.
  const out = authenticateRequest(rules, { headers: fieldsOf(ctx.req.rawHeaders), query: ctx.query.slice(1), method: ctx.method });
  if (out.kind === 'refused') {
    ctx.env.telemetry.jwtRefusal(out.reason, {
      detail: clip(out.detail), issuer: clip(out.issuer), service: dest.key,
      peer: ctx.conn.peerSpiffeId, address: ctx.directIp, authority: clip(ctx.authority),
    });
    ctx.detail = refusalDetails(out.message);
    // Envoy: `Bearer realm="<original URI>", error="invalid_token"`; without the query, which may hold the token.
    const realm = `http://${ctx.authority}${ctx.path}`.replace(REALM_UNSAFE, '_');
    localReply(ctx, { status: out.status, flags: '-', body: out.message, headers: { 'www-authenticate': `Bearer realm="${realm}", error="invalid_token"` } });
    return;
  }
  if (out.edits.remove.length > 0 || out.edits.set.length > 0) {
    const h: HeaderMap = { ...ctx.headers };
    for (const name of out.edits.remove) delete h[name];
    for (const { name, value } of out.edits.set) h[name] = value;
    ctx.headers = h;
  }
  if (out.kind === 'verified') ctx.requestAuth = out.auth;
};

/**
 * The policy engine's decision on a request from this connection's caller to Service `key` at
 * `port`, the request as given (`req`): as the caller addressed it (the authorize stage), or as a
 * consumer route sends it (the route stage).
 */
function decide(ctx: RequestContext, key: string, port: number, req: { method: string; target: string; host: string; headers: HeaderMap }): Decision {
  const { conn } = ctx;
  return ctx.snap.policies.evaluate(key, {
    ...(conn.peerSpiffeId ? { sourcePrincipal: conn.peerSpiffeId } : {}),
    ...(ctx.directIp ? { sourceIp: ctx.directIp } : {}),
    ...(ctx.remoteIp ? { remoteIp: ctx.remoteIp } : {}),
    destinationIp: splitHostPort(conn.target).host, destinationPort: port, method: req.method,
    target: req.target, host: req.host, headers: req.headers,
    ...(ctx.requestAuth ? { requestAuth: ctx.requestAuth } : {}),
  });
}

/** The decision that judges the request: its AUDIT matches and dry-run results are the request's (counted once). */
function recordDecision(ctx: RequestContext, decision: Decision): void {
  if (decision.audit) ctx.audit = decision.audit;
  if (decision.dryRun) {
    ctx.dryRun = decision.dryRun;
    ctx.env.telemetry.dryRunResults(decision.dryRun);
  }
}

/**
 * The caller's route table for the destination and the rule the request matches, once a request
 * (the authorize stage asks whose route it is; the route stage acts on it). A request addressed to
 * one workload (dest.workloadIp) takes no route.
 */
function routeMatch(ctx: RequestContext): NonNullable<RequestContext['routeMatch']> {
  if (ctx.routeMatch) return ctx.routeMatch;
  const dest = destination(ctx);
  const table = dest.workloadIp ? undefined : routesFor(ctx.snap, ctx.conn.peerSpiffeId);
  const matched = table?.match(dest.key, dest.port, { method: ctx.method, path: ctx.path, query: ctx.query, headers: ctx.headers });
  return (ctx.routeMatch = { matched, table });
}

/**
 * AuthorizationPolicy: the one call into the policy engine for a request no consumer route matched,
 * as it was addressed (Envoy's RBAC runs before its router). A request a consumer route matched is
 * judged once, as the route sends it (route stage): the route acts on its clients' side, as a
 * sidecar's outbound route would, and the policies judge what arrives (Istio sidecar mode).
 */
const authorize: Stage = (ctx) => {
  const { matched } = routeMatch(ctx);
  if (matched && isConsumerRoute(matched.route)) return;
  const dest = destination(ctx);
  const decision = decide(ctx, dest.key, dest.port, { method: ctx.method, target: ctx.target, host: ctx.authority, headers: ctx.headers });
  recordDecision(ctx, decision);
  if (!decision.allowed) {
    localReply(ctx, { status: 403, flags: F.FLAG_POLICY_DENIED, body: `RBAC: access denied by AuthorizationPolicy ${decision.policy} (${decision.reason})` });
  }
};

const rateLimit: Stage = (ctx) => {
  const { key } = destination(ctx);
  const limit = ctx.snap.settings.get(key)?.rateLimit;
  if (!limit) return;
  const v = ctx.env.rateLimiter.check(key, limit, ctx.conn.peerSpiffeId ?? ctx.conn.clientAddress);
  if (!v.allowed) {
    localReply(ctx, { status: 429, flags: F.FLAG_RATE_LIMITED, body: `local rate limit of ${limit.tokens} requests per ${limit.fillIntervalMs} ms exceeded for ${key}`, headers: { 'retry-after': retryAfterSeconds(v.retryAfterMs) } });
  }
};

const quota: Stage = async (ctx) => {
  const { env } = ctx;
  const { key } = destination(ctx);
  if (!env.quota?.hasRule(key)) return;
  const q = await env.quota.check(key, ctx.conn.peerSpiffeId ?? ctx.conn.clientAddress);
  if (q.backendError) {
    ctx.flags.add(F.FLAG_RATE_LIMIT_SERVICE_ERROR);
    env.telemetry.quotaBackendErrors.inc({ failure_mode: env.quota.failureMode });
  }
  if (ctx.downstreamGone) return;
  if (!q.allowed) {
    localReply(ctx, { status: 429, flags: q.backendError ? '-' : F.FLAG_RATE_LIMITED, body: q.backendError ? `quota store unavailable and quota for ${key} fails closed` : `shared quota for ${key} exceeded`, headers: { 'retry-after': retryAfterSeconds(q.retryAfterMs) } });
  }
};

/** HTTPRoute/GRPCRoute: the rule, its filters, the weighted backend, and the request as it will be sent. */
const route: Stage = (ctx) => {
  const { snap, env } = ctx;
  const dest = destination(ctx);
  const { matched, table } = routeMatch(ctx);
  let backends: RouteBackend[];
  const fctx: FilterContext = {
    request: { method: ctx.method, path: ctx.target, authority: ctx.authority, headers: forwardableHeaders(ctx.headers) },
    listenerPort: dest.port, responseEdits: [], mirrors: [],
  };
  let timeouts: { requestMs?: number; backendRequestMs?: number } = {};
  let consumerTimeouts: UpstreamPlan['consumerTimeouts'];
  let retry: RouteRule['retry'];
  if (matched) {
    ctx.routeName = `${matched.route.namespace}/${matched.route.name}${matched.rule.name ? `/${matched.rule.name}` : ''}`;
    if (matched.matchedPrefix !== undefined) fctx.matchedPrefix = matched.matchedPrefix;
    backends = matched.rule.backends;
    timeouts = matched.rule.timeouts;
    if (isConsumerRoute(matched.route)) consumerTimeouts = { request: timeouts.requestMs !== undefined, perTry: timeouts.backendRequestMs !== undefined };
    retry = matched.rule.retry;
    applyRouteFilters(matched.rule.filters, fctx);
  } else if (table?.hasRoutes(dest.key, dest.port)) {
    // Gateway API (GAMMA): once routes attach to a Service, a request no rule matches gets 404
    // (gRPC: UNIMPLEMENTED); it is not sent to the Service as if it had no routes. The routes are
    // the caller's: its namespace's consumer routes where it has them (GEP-1294).
    localReply(ctx, { status: 404, flags: F.FLAG_NO_ROUTE, body: `no route rule of ${dest.key} port ${dest.port} matches ${ctx.method} ${ctx.path}` });
    return;
  } else {
    backends = [{ service: dest.key, hostname: dest.service.hostname, port: dest.port, weight: 1, filters: [] }];
  }
  if (answerRedirect(ctx, fctx) || answerPreflight(ctx, fctx)) return;
  const backend = pickBackend(backends, env.random);
  if (!backend) {
    // GRPCRoute (grpcroute_types.go, BackendRefs): a request routed to no valid backend gets UNAVAILABLE.
    localReply(ctx, { status: 500, grpcStatus: GRPC_UNAVAILABLE, flags: F.FLAG_NO_ROUTE, body: `route ${ctx.routeName ?? dest.key} has no backend with a weight above 0` });
    return;
  }
  applyRouteFilters(backend.filters, fctx);
  if (answerRedirect(ctx, fctx)) return;
  if (fctx.request.path !== ctx.target) {
    // A rewritten target goes through the one normalization the request did (normalize stage), so
    // what is judged and sent is what the backend resolves: a rewrite to `/public/../admin` or
    // `/%61dmin` is /admin, as it would be on arrival at the backend's sidecar.
    const n = normalizeRequestTarget(fctx.request.method, fctx.request.path, undefined, ctx.env.normalize);
    if (!n.ok) {
      ctx.detail = `rewritten_target_${n.reason}: ${n.message}`;
      localReply(ctx, { status: 400, flags: F.FLAG_DOWNSTREAM_PROTOCOL_ERROR, body: `bad request: route ${ctx.routeName ?? dest.key} rewrote the target to one that does not normalize: ${n.message}` });
      return;
    }
    fctx.request.path = n.target;
  }
  const backendSvc = backendService(snap, backend);
  if (!backendSvc) {
    // Gateway API: a backendRef that does not resolve costs the requests routed to it (500), nothing else.
    localReply(ctx, { status: 500, grpcStatus: GRPC_UNAVAILABLE, flags: F.FLAG_NO_ROUTE, body: `backend service ${backend.service} is unknown` });
    return;
  }
  const backendPort = backend.port ?? (backend.service === dest.key ? dest.port : backendSvc.ports[0]?.port ?? dest.port);
  if (matched && isConsumerRoute(matched.route)) {
    // A consumer route acts for its own namespace's callers, on their side (GEP-1294: as a
    // sidecar's outbound route would), so what it sends (another port of the Service, a rewritten
    // and normalized path, a host, edited headers) is what the policies of where it goes judge, once,
    // as they would on arrival there (Istio sidecar mode); judged as addressed, another namespace's
    // route stepped around this one's DENY. Its mirrors alike: a copy the policies refuse is not sent.
    const sent = fctx.request;
    const decision = decide(ctx, backend.service, backendPort, { method: sent.method, target: sent.path, host: sent.authority, headers: sent.headers });
    recordDecision(ctx, decision);
    if (!decision.allowed) {
      localReply(ctx, { status: 403, flags: F.FLAG_POLICY_DENIED, body: `RBAC: access denied by AuthorizationPolicy ${decision.policy} (${decision.reason}) to the request as consumer route ${ctx.routeName} sends it` });
      return;
    }
    fctx.mirrors = fctx.mirrors.filter((m) => {
      const to = mirrorTarget(snap, m.backend, sent);
      const allowed = !to || decide(ctx, m.backend.service, to.port, { method: sent.method, target: sent.path, host: to.authority, headers: sent.headers }).allowed;
      if (!allowed) env.telemetry.mirrorsDropped.inc({ reason: 'policy' });
      return allowed;
    });
  }
  const settings = snap.settings.get(backend.service)!;
  ctx.upstream = {
    service: backendSvc, port: backendPort, key: backend.service,
    protocol: upstreamProtocol(backendSvc, backendPort, ctx.grpc),
    request: fctx.request, responseEdits: fctx.responseEdits, mirrors: fctx.mirrors,
    timeouts: {
      requestMs: timeouts.requestMs ?? settings.timeouts.requestMs,
      perTryMs: timeouts.backendRequestMs ?? settings.timeouts.perTryMs,
    },
    ...(retry ? { retry } : {}),
    ...(consumerTimeouts ? { consumerTimeouts } : {}),
    ...(dest.workloadIp && backend.service === dest.key ? { onlyEndpoint: dest.workloadIp } : {}),
  };
};

/** Fault injection (TrafficPolicy of the backend service). */
const fault: Stage = async (ctx) => {
  const settings = ctx.snap.settings.get(plan(ctx).key)!;
  const f = decideFault(settings.fault, ctx.env.random);
  if (f.delayMs !== undefined) {
    ctx.flags.add(F.FLAG_DELAY_INJECTED);
    await sleep(f.delayMs, ctx.overall.signal);
    if (ctx.downstreamGone) return;
  }
  if (f.abortStatus !== undefined) {
    localReply(ctx, { status: f.abortStatus, flags: F.FLAG_FAULT_INJECTED, body: 'fault filter abort' });
  }
};

/** `namespace/name` → `name.namespace`, this waypoint's Via pseudonym. */
export function viaPseudonym(waypoint: string): string {
  const slash = waypoint.indexOf('/');
  return slash < 0 ? waypoint : `${waypoint.slice(slash + 1)}.${waypoint.slice(0, slash)}`;
}

/** Upstream request headers, the body, mirrors; then `forward`. */
const send: Stage = async (ctx) => {
  const { env, headers } = ctx;
  const up = plan(ctx);
  const out = up.request;
  const xff = headerValue(headers, 'x-forwarded-for');
  if (ctx.directIp) out.headers['x-forwarded-for'] = xff ? `${xff}, ${ctx.directIp}` : ctx.directIp;
  out.headers['x-forwarded-proto'] ??= 'http';
  out.headers['x-request-id'] = ctx.requestId;
  // RFC 9110 section 7.6.3: a proxy adds itself to Via on what it forwards (the protocol it
  // received and a pseudonym, `<name>.<namespace>`). With the caller's own address reaching the
  // server, this is what says that a waypoint was on the path.
  const via = `${'stream' in ctx.req ? '2' : '1.1'} ${viaPseudonym(env.waypoint)}`;
  const prior = headerValue(headers, 'via');
  out.headers['via'] = prior ? `${prior}, ${via}` : via;
  Object.assign(out.headers, outgoingTraceHeaders(ctx.trace!, headerValue(ctx.headers, 'b3') !== undefined));
  if (up.protocol === 'http2' && headerValue(headers, 'te') === 'trailers') out.headers['te'] = 'trailers';
  if (ctx.upgrade) {
    await forwardUpgrade(ctx, env.cluster(up.service, up.port));
    return;
  }

  if (requestHasBody(ctx.req)) ctx.body = new ReplayableBody(ctx.req as Readable, env.limits.retryBufferBytes, env.replayBudget);
  else (ctx.req as Readable).resume();

  for (const m of up.mirrors) {
    if (env.random() * 100 < m.percent) void sendMirror(env, ctx.snap, m.backend, out, ctx.body, ctx.conn.peerSpiffeId);
  }
  await forward(ctx, env.cluster(up.service, up.port));
};

/** The stages in order; a request goes through them until one answers. */
export const STAGES: ReadonlyArray<readonly [name: string, stage: Stage]> = [
  ['admit', admit],
  ['normalize', normalize],
  ['resolve', resolve],
  ['authenticate', authenticate],
  ['authorize', authorize],
  ['rate-limit', rateLimit],
  ['quota', quota],
  ['route', route],
  ['fault', fault],
  ['forward', send],
];

export async function handleRequest(env: ProxyEnv, conn: ConnContext, req: DownstreamRequest, res: DownstreamResponse, upgrade?: RequestContext['upgrade']): Promise<void> {
  const headers = req.headers as HeaderMap;
  const method = req.method ?? 'GET';
  const target = req.url ?? '/';
  const authority = headerValue(headers, ':authority') ?? headerValue(headers, 'host') ?? conn.target;
  const ctx: RequestContext = {
    env, conn, req, res, headers, snap: env.snapshot(), overall: new AbortController(),
    start: Date.now(), startHr: process.hrtime.bigint(), method, target, path: '', query: '', authority,
    grpc: (headerValue(headers, 'content-type') ?? '').startsWith('application/grpc'),
    flags: new F.ResponseFlags(), requestId: headerValue(headers, 'x-request-id') ?? randomUUID(),
    attempts: 0, status: 0, responseBytes: 0, done: false, downstreamGone: false, recorded: false,
  };
  if (conn.clientAddress) ctx.directIp = conn.clientAddress;
  if (upgrade) ctx.upgrade = upgrade;
  const remoteIp = remoteIpOf(headerValue(headers, 'x-forwarded-for'), ctx.directIp, env.numTrustedProxies);
  if (remoteIp) ctx.remoteIp = remoteIp;
  res.on('close', () => {
    if (ctx.upgraded) return;
    if (!res.writableFinished) {
      ctx.downstreamGone = true;
      if (!ctx.recorded) ctx.flags.add(F.FLAG_DOWNSTREAM_TERMINATED);
      ctx.overall.abort(new Error('downstream closed'));
    }
    finish(ctx);
  });
  ctx.trace = env.telemetry.startTrace((n) => headerValue(headers, n), method, {
    'http.request.method': method, 'url.path': pathOf(target), 'server.address': authority,
    ...(conn.peerSpiffeId ? { 'weft.source_principal': conn.peerSpiffeId } : {}),
  });

  try {
    for (const [, stage] of STAGES) {
      const pending = stage(ctx);
      if (pending) await pending;
      if (ctx.done || ctx.downstreamGone) return;
    }
  } catch (err) {
    ctx.detail = `internal error: ${(err as Error).message}`;
    if (!res.headersSent && !ctx.downstreamGone) localReply(ctx, { status: 500, flags: '-', body: 'waypoint internal error' });
    else res.destroy();
  }
}

/**
 * Where a mirror copy of `out` goes and as what: the backend's Service, its port (the backendRef's,
 * else the Service's first, else 80) and the authority `<host>-shadow`, before any port (Envoy's
 * shadow host). The route stage judges a consumer route's copy with these and sendMirror sends it
 * with them; undefined when the Service is unknown (no copy).
 */
function mirrorTarget(snap: Snapshot, backend: RouteBackend, out: FilterContext['request']): { svc: Service; port: number; authority: string } | undefined {
  const svc = backendService(snap, backend);
  if (!svc) return undefined;
  const { host, port } = splitHostPort(out.authority);
  return { svc, port: backend.port ?? svc.ports[0]?.port ?? 80, authority: `${host}-shadow${port === undefined ? '' : `:${port}`}` };
}

/** How long a mirror copy may take, its answer included. */
const MIRROR_TIMEOUT_MS = 30_000;

/**
 * Sends one copy of the request to a mirror backend and discards the answer (`caller` named to its
 * agent, as for the request itself). A copy never changes the request's answer, and what copies hold
 * is bounded apart from the requests: the mirror backend's circuit breaker (maxRequests, as Envoy
 * sends a shadow through its cluster) and the waypoint's ceiling on copies in flight; past either the
 * copy is dropped and counted. Its port and host `<host>-shadow` are mirrorTarget's.
 */
async function sendMirror(env: ProxyEnv, snap: Snapshot, backend: RouteBackend, out: FilterContext['request'], body: ReplayableBody | undefined, caller: string | undefined): Promise<void> {
  const dropped = (reason: 'overflow' | 'max_mirrors' | 'body_not_kept'): void => env.telemetry.mirrorsDropped.inc({ reason });
  try {
    const to = mirrorTarget(snap, backend, out);
    if (!to) return;
    const { svc, port, authority } = to;
    if (body && !(await body.whenComplete())) { dropped('body_not_kept'); return; }
    const cluster = env.cluster(svc, port);
    const ep = cluster.pick(env.random);
    if (!ep) return;
    if (!env.mirrors.tryAdmit()) { dropped('max_mirrors'); return; }
    if (!cluster.beginRequest(false)) { env.mirrors.release(); dropped('overflow'); return; }
    // Taken once admitted: the copy holds the body's bytes in the replay budget until it ends.
    const stream = body ? body.snapshot() ?? null : null;
    if (body && !stream) { cluster.endRequest(); env.mirrors.release(); dropped('body_not_kept'); return; }
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), MIRROR_TIMEOUT_MS);
    try {
      const resp = await env.pool.request(upstreamEndpoint(ep), upstreamProtocol(svc, port, false), {
        method: out.method, path: out.path, authority, headers: { ...out.headers }, body: stream, signal: ac.signal,
        ...(caller ? { callerId: caller } : {}),
        ...(cluster.settings.timeouts.idleMs !== undefined ? { idleMs: cluster.settings.timeouts.idleMs } : {}),
      }, cluster.settings.timeouts.connectMs);
      // The copy holds its place until its answer is over (or the timeout discards it).
      await new Promise<void>((resolve) => {
        if (ac.signal.aborted) { resp.discard(); resolve(); return; }
        ac.signal.addEventListener('abort', () => { resp.discard(); resolve(); }, { once: true });
        resp.body.on('error', () => {});
        resp.body.once('close', () => resolve());
        resp.body.once('end', () => resolve());
        resp.body.resume();
      });
    } finally {
      clearTimeout(timer);
      stream?.destroy();
      cluster.endRequest();
      env.mirrors.release();
    }
  } catch {
    // Mirrors are fire-and-forget: their failures never reach the client.
  }
}

function upstreamEndpoint(ep: EndpointState): UpstreamEndpoint {
  const out: UpstreamEndpoint = { ip: ep.ip, port: ep.port };
  if (ep.endpoint.enrolled && ep.endpoint.nodeIp) out.node = ep.endpoint.nodeIp;
  if (ep.endpoint.enrolled && ep.endpoint.spiffeId) out.spiffeId = ep.endpoint.spiffeId;
  if (ep.endpoint.enrolled && ep.endpoint.gateway) out.gateway = ep.endpoint.gateway;
  return out;
}

function classify(err: unknown, timedOut: boolean): AttemptOutcome {
  if (timedOut) return { kind: 'timeout' };
  if (err instanceof UpstreamConnectError) return { kind: 'connect-failure' };
  if (isRefusedStream(err)) return { kind: 'refused-stream' };
  return { kind: 'reset' };
}

/** An attempt that ended without an answer because the client went away or broke off its body (not a timeout). */
function cancelledByClient(ctx: RequestContext, outcome: AttemptOutcome): boolean {
  return outcome.kind !== 'response' && outcome.kind !== 'timeout' && (ctx.downstreamGone || ctx.body?.error !== undefined);
}

/**
 * The gRPC status in `h`: its code, or UNKNOWN (`invalid`) for a value that is none of gRPC's
 * codes, so that what an upstream sends cannot grow the grpc_response_status label without bound.
 */
function grpcStatusOf(h: HeaderMap | undefined): { code: number; invalid: boolean } | undefined {
  const v = h ? headerValue(h, 'grpc-status') : undefined;
  if (v === undefined) return undefined;
  const code = grpcStatusCode(v.trim());
  return code === undefined ? { code: GRPC_UNKNOWN, invalid: true } : { code, invalid: false };
}

function setGrpcStatus(ctx: RequestContext, s: { code: number; invalid: boolean }): void {
  ctx.grpcStatus = String(s.code);
  ctx.grpcStatusInvalid = s.invalid;
}

/** Circuit breaking's first limit: answers 503 (UO) and returns false when `cluster` is at maxRequests. */
function beginRequest(ctx: RequestContext, cluster: Cluster): boolean {
  if (cluster.beginRequest()) return true;
  localReply(ctx, { status: 503, flags: F.FLAG_UPSTREAM_OVERFLOW, body: `upstream overflow: ${cluster.name} is at maxRequests (${cluster.settings.maxRequests})` });
  return false;
}

/**
 * An endpoint for one attempt (the pod the request was addressed to, or the cluster's pick among
 * those not `tried`) and a connection slot on it, waiting in the pending queue if need be. Answers
 * and returns undefined when there is none: no healthy endpoint (503 UH), the request's timeout
 * (`timedOut`, 504 UT) or the client's going away ended the wait, or the queue is full (503 UO).
 */
async function takeEndpoint(ctx: RequestContext, cluster: Cluster, tried: Set<string>, timeout: { timedOut(): boolean; ms: number | undefined }): Promise<{ ep: EndpointState; release: () => void } | undefined> {
  const only = ctx.upstream?.onlyEndpoint;
  const ep = only !== undefined ? cluster.endpointAt(only) : cluster.pick(ctx.env.random, tried);
  if (!ep) {
    localReply(ctx, { status: 503, flags: F.FLAG_NO_HEALTHY_UPSTREAM, body: `no healthy upstream for ${cluster.name}` });
    return undefined;
  }
  const release = await cluster.acquireConnection(ctx.overall.signal);
  if (release === OVERFLOW) {
    const { settings } = cluster;
    if (timeout.timedOut()) localReply(ctx, { status: 504, flags: F.FLAG_UPSTREAM_TIMEOUT, body: `upstream request timeout after ${timeout.ms} ms` });
    else if (!ctx.downstreamGone) localReply(ctx, { status: 503, flags: F.FLAG_UPSTREAM_OVERFLOW, body: `upstream overflow: ${cluster.name} has ${settings.maxConnections} connections busy and ${settings.maxPendingRequests} requests pending` });
    return undefined;
  }
  if (ctx.downstreamGone) { release(); return undefined; }
  tried.add(ep.key);
  ep.active++;
  ep.requests++;
  ctx.attempts++;
  ctx.upstreamHost = ep.key;
  ctx.destinationEndpoint = ep.endpoint;
  return { ep, release };
}

/** The answer to a last attempt that got no response: 504 UT for a timeout (`timeoutText` says which), 503 UF or UR otherwise. */
function replyAttemptFailed(ctx: RequestContext, outcome: AttemptOutcome, ep: EndpointState, cluster: Cluster, timeoutText: string): void {
  if (outcome.kind === 'timeout') localReply(ctx, { status: 504, flags: F.FLAG_UPSTREAM_TIMEOUT, body: `upstream ${timeoutText} from ${ep.key}` });
  else if (outcome.kind === 'connect-failure') localReply(ctx, { status: 503, flags: F.FLAG_UPSTREAM_CONNECT_FAILURE, body: `upstream connect error to ${ep.key} (${cluster.name})` });
  else localReply(ctx, { status: 503, flags: F.FLAG_UPSTREAM_RESET, body: `upstream ${ep.key} reset the request before headers` });
}

export interface RetryPolicy {
  attempts: number;
  retryOn: readonly string[];
  backoffMs: (retryNumber: number, random: () => number) => number;
}

/** Built once per compiled rule and per backend settings object, not per request. */
const ruleRetries = new WeakMap<NonNullable<RouteRule['retry']>, Omit<RetryPolicy, 'attempts'>>();
const backendRetries = new WeakMap<object, RetryPolicy>();

/**
 * The retries a request gets: its route rule's (Gateway API HTTPRouteRetry, GEP-1731) when the rule
 * has them, else its backend's TrafficPolicy's. A rule retries the status codes it lists and, as
 * GEP-1731 says implementations should, connection failures, refused streams, resets and per-try
 * timeouts; `attempts` is the most retries (0: none; unset: the backend's); no retry starts before
 * `backoff` (each waits backoff × 2^n, at most 10 × backoff, plus up to a quarter of that in
 * jitter); without one, the default backoff. The retry budget of the backend still applies.
 */
export function retryPolicy(rule: RouteRule['retry'], backend: { attempts: number; retryOn: readonly string[] }): RetryPolicy {
  if (!rule) {
    let p = backendRetries.get(backend);
    if (!p) backendRetries.set(backend, p = { attempts: backend.attempts, retryOn: backend.retryOn, backoffMs: retryBackoffMs });
    return p;
  }
  let r = ruleRetries.get(rule);
  if (!r) {
    const min = rule.backoffMs;
    r = {
      retryOn: [...rule.codes.map(String), 'connect-failure', 'refused-stream', 'reset'],
      backoffMs: min === undefined ? retryBackoffMs : (n, random) => {
        const base = Math.min(min * 2 ** n, min * 10);
        return Math.floor(base + random() * base / 4);
      },
    };
    ruleRetries.set(rule, r);
  }
  return { ...r, attempts: rule.attempts ?? backend.attempts };
}

/**
 * Sends the planned request (`ctx.upstream`) to an endpoint of `cluster` and streams the answer back:
 * circuit breaking, the request and per-try timeouts, retries with backoff, outlier reports.
 */
async function forward(ctx: RequestContext, cluster: Cluster): Promise<void> {
  const { env } = ctx;
  const { protocol, request: out, responseEdits, timeouts, retry, consumerTimeouts: consumerTimeoutSet } = plan(ctx);
  const settings = cluster.settings;
  const retries = retryPolicy(retry, settings.retries);
  const overall = ctx.overall;
  if (!beginRequest(ctx, cluster)) return;
  let overallTimedOut = false;
  const overallTimer = timeouts.requestMs !== undefined && timeouts.requestMs > 0
    ? setTimeout(() => { overallTimedOut = true; overall.abort(new UpstreamTimeoutError('request', timeouts.requestMs!)); }, timeouts.requestMs)
    : undefined;
  const tried = new Set<string>();
  let inRetry = false;
  try {
    for (let attempt = 0; ; attempt++) {
      if (ctx.downstreamGone) return;
      const taken = await takeEndpoint(ctx, cluster, tried, { timedOut: () => overallTimedOut, ms: timeouts.requestMs });
      if (!taken) return;
      const { ep, release } = taken;
      const tryAc = new AbortController();
      const onOverall = (): void => tryAc.abort(overall.signal.reason);
      overall.signal.addEventListener('abort', onOverall, { once: true });
      let perTryTimedOut = false;
      const perTryTimer = timeouts.perTryMs !== undefined && timeouts.perTryMs > 0
        ? setTimeout(() => { perTryTimedOut = true; tryAc.abort(new UpstreamTimeoutError('per-try', timeouts.perTryMs!)); }, timeouts.perTryMs)
        : undefined;
      let resp: UpstreamResponse | undefined;
      let outcome: AttemptOutcome;
      try {
        resp = await env.pool.request(upstreamEndpoint(ep), protocol, {
          method: out.method, path: out.path, authority: out.authority, headers: out.headers,
          body: ctx.body ? ctx.body.open() : null, signal: tryAc.signal,
          ...(ctx.directIp ? { client: ctx.directIp } : {}),
          ...(ctx.conn.peerSpiffeId ? { callerId: ctx.conn.peerSpiffeId } : {}),
          ...(settings.timeouts.idleMs !== undefined ? { idleMs: settings.timeouts.idleMs } : {}),
        }, settings.timeouts.connectMs);
        outcome = { kind: 'response', status: resp.status };
        const gs = grpcStatusOf(resp.headers);
        if (gs !== undefined) outcome.grpcStatus = gs.code;
      } catch (err) {
        outcome = classify(err, perTryTimedOut || overallTimedOut);
      }
      clearTimeout(perTryTimer);
      // Outlier detection judges the endpoint (Envoy: its answers, and what interrupted or prevented
      // talking to it). An attempt the client cancelled, by going away or by breaking off its body,
      // says nothing about the endpoint: counting it would let any caller eject healthy endpoints.
      // Nor does a consumer route's own timeout firing (see UpstreamPlan.consumerTimeouts).
      const consumerTimeout = outcome.kind === 'timeout' && ((perTryTimedOut && consumerTimeoutSet?.perTry) || (overallTimedOut && consumerTimeoutSet?.request));
      if (!cancelledByClient(ctx, outcome) && !consumerTimeout) cluster.report(ep, outcome);
      if (inRetry) { cluster.endRetry(); inRetry = false; }
      const done = (): void => {
        overall.signal.removeEventListener('abort', onOverall);
        ep.active--;
        release();
      };

      const canRetry = attempt < retries.attempts && !overallTimedOut && !ctx.downstreamGone &&
        (ctx.body === undefined || ctx.body.replayable) && isRetriable(retries.retryOn, outcome);
      if (canRetry && cluster.tryBeginRetry()) {
        inRetry = true;
        resp?.discard();
        done();
        await sleep(retries.backoffMs(attempt, env.random), overall.signal);
        // The request timeout bounds the retries too (GEP-1731): once it fires during the backoff,
        // no attempt starts (the next one would no longer be bounded: `overall` has aborted).
        if (overallTimedOut) {
          localReply(ctx, { status: 504, flags: F.FLAG_UPSTREAM_TIMEOUT, body: `upstream request timeout (${timeouts.requestMs} ms) before retry ${attempt + 1}` });
          return;
        }
        continue;
      }

      if (!resp) {
        done();
        if (ctx.downstreamGone) return;
        if (attempt > 0) ctx.flags.add(F.FLAG_RETRY_LIMIT_EXCEEDED);
        replyAttemptFailed(ctx, outcome, ep, cluster, `${overallTimedOut ? 'request' : 'per-try'} timeout (${overallTimedOut ? timeouts.requestMs : timeouts.perTryMs} ms)`);
        return;
      }
      if (attempt > 0 && isRetriable(retries.retryOn, outcome)) ctx.flags.add(F.FLAG_RETRY_LIMIT_EXCEEDED);
      await streamResponse(ctx, resp, responseEdits);
      done();
      if (overallTimedOut && !ctx.res.writableFinished) ctx.flags.add(F.FLAG_UPSTREAM_TIMEOUT);
      return;
    }
  } finally {
    if (inRetry) cluster.endRetry();
    clearTimeout(overallTimer);
    cluster.endRequest();
  }
}

/**
 * An HTTP/1.1 Upgrade (RFC 9110 section 7.8; WebSocket's opening handshake, RFC 6455 section 4.1).
 * The request has been through every stage as any other (normalization, policy, limits, routes and
 * their header filters); here it goes to one endpoint on a connection of its own, never pooled and
 * never retried, since after a 101 that connection carries the new protocol. A 101 joins the
 * client's connection and that one byte for byte until either side closes: the endpoint's
 * connection slot (circuit breaking) and the request's place in the waypoint's admission stay taken
 * until then, and the request is recorded when it ends, as Envoy logs an upgraded stream. Any other
 * answer is relayed as a response, and the client's connection is closed after it (engine.ts): what
 * the client sent after its request head belongs to a protocol that was refused. The request
 * timeout covers the wait for the answer, not the upgraded connection.
 */
async function forwardUpgrade(ctx: RequestContext, cluster: Cluster): Promise<void> {
  const { timeouts } = plan(ctx);
  if (!beginRequest(ctx, cluster)) return;
  // The wait for the answer, a connection slot included, is the request's and its one try's: the
  // tighter of the two timeouts. It ends with the answer.
  const limits = [timeouts.requestMs, timeouts.perTryMs].filter((t): t is number => t !== undefined && t > 0);
  const timeout = { ms: limits.length > 0 ? Math.min(...limits) : undefined, timedOut: false };
  const timer = timeout.ms !== undefined
    ? setTimeout(() => { timeout.timedOut = true; ctx.overall.abort(new UpstreamTimeoutError('request', timeout.ms!)); }, timeout.ms)
    : undefined;
  try {
    const taken = await takeEndpoint(ctx, cluster, new Set(), { timedOut: () => timeout.timedOut, ms: timeout.ms });
    if (!taken) return;
    try {
      await upgradeOnce(ctx, taken.ep, cluster, timeout, () => clearTimeout(timer));
    } finally {
      taken.ep.active--;
      taken.release();
    }
  } finally {
    clearTimeout(timer);
    cluster.endRequest();
  }
}

/**
 * One upgrade attempt on `ep` (forwardUpgrade); resolves once the exchange, or the upgraded
 * connection, is over. `answered` runs when the endpoint has answered, or the attempt failed.
 */
function upgradeOnce(ctx: RequestContext, ep: EndpointState, cluster: Cluster, timeout: { ms: number | undefined; timedOut: boolean }, answered: () => void): Promise<void> {
  const { env, res } = ctx;
  const { request: out, responseEdits } = plan(ctx);
  const client = ctx.upgrade!;
  const signal = ctx.overall.signal;
  return new Promise<void>((resolve) => {
    let done = false;
    // Cut when the request's timeout (forwardUpgrade) or the client's going away aborts `signal`.
    const attempt = new AbortController();
    const onAbort = (): void => fail(signal.reason);
    const answer = (): boolean => {
      if (done) return false;
      done = true;
      answered();
      signal.removeEventListener('abort', onAbort);
      return true;
    };
    function fail(err: unknown): void {
      if (!answer()) return;
      attempt.abort(err);
      if (!ctx.downstreamGone) {
        const outcome = classify(err, timeout.timedOut);
        cluster.report(ep, outcome);
        replyAttemptFailed(ctx, outcome, ep, cluster, `request timeout (${timeout.ms} ms)`);
      }
      resolve();
    }
    if (signal.aborted) { fail(signal.reason); return; }
    signal.addEventListener('abort', onAbort, { once: true });
    const forwardedFor = ctx.directIp ? { ip: ctx.directIp, port: ctx.conn.clientPort ?? 0 } : undefined;
    // The hop-by-hop fields of the handshake are this hop's to send again (RFC 9110 section 7.8).
    const headers: HeaderMap = { ...out.headers, host: out.authority, connection: 'Upgrade', upgrade: headerValue(ctx.headers, 'upgrade') ?? '' };
    env.pool.upgrade(upstreamEndpoint(ep), {
      method: out.method, path: out.path, authority: out.authority, headers, body: null, signal: attempt.signal,
      ...(ctx.conn.peerSpiffeId ? { callerId: ctx.conn.peerSpiffeId } : {}),
    }, cluster.settings.timeouts.connectMs, forwardedFor).then((up) => {
      if (!answer()) { up.discard(); return; }
      cluster.report(ep, { kind: 'response', status: up.status });
      const switched = up.upgraded;
      if (!switched) {
        // Refused (or answered as an ordinary request): relayed as a response; the connection closes after it.
        void streamResponse(ctx, up, responseEdits).then(() => resolve());
        return;
      }
      const { socket: usock, head: uhead } = switched;
      usock.on('error', () => {});
      const h = forwardableHeaders(up.headers);
      for (const e of responseEdits) applyHeaderEdits(h, e);
      h['connection'] = 'Upgrade';
      h['upgrade'] = headerValue(up.headers, 'upgrade') ?? '';
      if (!ctx.flags.empty) h[F.FLAGS_HEADER] = ctx.flags.toString();
      ctx.status = 101;
      try {
        writeHead(res, 101, h as http.OutgoingHttpHeaders);
      } catch (err) {
        ctx.detail = `bad response headers from upstream: ${(err as Error).message}`;
        usock.destroy();
        res.destroy();
        resolve();
        return;
      }
      ctx.upgraded = true;
      endResponse(res);
      if (uhead.length > 0) client.socket.write(uhead);
      if (client.head.length > 0) usock.write(client.head);
      void pipeBidirectional(client.socket, usock).then((r) => {
        ctx.requestBytes = client.head.length + r.bytesAtoB;
        ctx.responseBytes += uhead.length + r.bytesBtoA;
        if (r.abortedBy === 'b') ctx.flags.add(F.FLAG_UPSTREAM_RESET);
        finish(ctx);
        resolve();
      });
      // Paused since the handover; the pipe's listeners are in place now.
      usock.resume();
    }, (err: unknown) => fail(err));
  });
}

const GRPC_TRAILER_FIELDS = ['grpc-status', 'grpc-message', 'grpc-status-details-bin'];

/** Copies the upstream response to the client, with trailers; resolves when it is done either way. */
function streamResponse(ctx: RequestContext, up: UpstreamResponse, edits: FilterContext['responseEdits']): Promise<void> {
  const { res, conn } = ctx;
  const signal = ctx.overall.signal;
  return new Promise((resolve) => {
    const headers = forwardableHeaders(up.headers);
    for (const e of edits) applyHeaderEdits(headers, e);
    if (!ctx.flags.empty) headers[F.FLAGS_HEADER] = ctx.flags.toString();
    const h2down = conn.protocol === 'HTTP/2';
    let movedTrailers: HeaderMap | undefined;
    if (h2down && up.endStreamOnHeaders && headers['grpc-status'] !== undefined) {
      // A gRPC trailers-only response: send headers, then the status as trailers.
      movedTrailers = {};
      for (const f of GRPC_TRAILER_FIELDS) if (headers[f] !== undefined) { movedTrailers[f] = headers[f]; delete headers[f]; }
    }
    ctx.status = up.status;
    const gsHead = grpcStatusOf(up.headers);
    if (gsHead !== undefined) setGrpcStatus(ctx, gsHead);
    if (ctx.downstreamGone) { up.discard(); resolve(); return; }
    try {
      writeHead(res, up.status, headers as http.OutgoingHttpHeaders);
    } catch (err) {
      up.discard();
      ctx.detail = `bad response headers from upstream: ${(err as Error).message}`;
      res.destroy();
      resolve();
      return;
    }
    let finished = false;
    const end = (): void => {
      if (finished) return;
      finished = true;
      signal.removeEventListener('abort', onAbort);
      up.body.off('data', onData);
      res.off('drain', onDrain);
      resolve();
    };
    const onData = (c: Buffer): void => {
      ctx.responseBytes += c.length;
      if (!(res as http.ServerResponse).write(c)) up.body.pause();
    };
    const onDrain = (): void => { up.body.resume(); };
    const onAbort = (): void => { up.discard(); resetDownstream(res); end(); };
    const onEnd = (): void => {
      if (finished) return;
      const trailers = { ...movedTrailers, ...(up.trailers() ? forwardableHeaders(up.trailers()!) : {}) };
      const gs = grpcStatusOf(trailers);
      if (gs !== undefined) setGrpcStatus(ctx, gs);
      if (h2down && Object.keys(trailers).length > 0) (res as http2.Http2ServerResponse).addTrailers(trailers as http.OutgoingHttpHeaders);
      endResponse(res);
      end();
    };
    if (up.endStreamOnHeaders) {
      // No body by definition (a gRPC trailers-only response). The upstream stream may already be
      // closed and destroyed by now without ever emitting 'end', so do not wait for it.
      up.body.resume();
      onEnd();
      return;
    }
    signal.addEventListener('abort', onAbort, { once: true });
    up.body.on('data', onData);
    res.on('drain', onDrain);
    up.body.once('end', onEnd);
    up.body.once('error', () => { ctx.flags.add(F.FLAG_UPSTREAM_RESET); resetDownstream(res); end(); });
    up.body.once('close', () => {
      if (!up.body.readableEnded) { ctx.flags.add(F.FLAG_UPSTREAM_RESET); resetDownstream(res); end(); }
    });
  });
}

function resetDownstream(res: DownstreamResponse): void {
  if ('stream' in res) {
    const s = res.stream;
    if (!s.closed) s.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
  } else {
    res.destroy();
  }
}

function finish(ctx: RequestContext): void {
  const { env, conn } = ctx;
  if (ctx.recorded) return;
  ctx.recorded = true;
  ctx.body?.release();
  const durationMs = Number(process.hrtime.bigint() - ctx.startHr) / 1e6;
  const rec: RequestRecord = {
    startTime: ctx.start, durationMs, method: ctx.method, path: ctx.target, authority: ctx.authority,
    protocol: conn.protocol, grpc: ctx.grpc, responseCode: ctx.downstreamGone && ctx.status === 0 ? 0 : ctx.status,
    responseFlags: ctx.flags.toString(), requestBytes: ctx.requestBytes ?? ctx.body?.bytes ?? 0, responseBytes: ctx.responseBytes,
    attempts: ctx.attempts, requestId: ctx.requestId,
  };
  if (ctx.grpcStatus !== undefined) rec.grpcStatus = ctx.grpcStatus;
  if (ctx.grpcStatusInvalid) env.telemetry.grpcStatusInvalid.inc();
  if (conn.peerSpiffeId) rec.sourcePrincipal = conn.peerSpiffeId;
  if (conn.peerMeta) rec.sourceMeta = conn.peerMeta;
  if (conn.clientAddress) rec.sourceAddress = conn.clientAddress;
  if (ctx.dest) { rec.destinationService = ctx.dest.service.hostname; rec.destinationServiceKey = ctx.dest.key; }
  if (ctx.destinationEndpoint) rec.destinationEndpoint = ctx.destinationEndpoint;
  if (ctx.upstreamHost) rec.upstreamHost = ctx.upstreamHost;
  if (ctx.routeName) rec.routeName = ctx.routeName;
  if (ctx.trace) { rec.traceId = ctx.trace.traceId; rec.spanId = ctx.trace.spanId; }
  if (ctx.detail) rec.detail = ctx.detail;
  if (ctx.audit) rec.auditPolicies = ctx.audit;
  if (ctx.dryRun) rec.dryRun = ctx.dryRun;
  env.telemetry.record(rec, ctx.trace);
}
