// The request pipeline: resolve the destination service, authorize, rate-limit, route, apply filters
// and faults, then send upstream with retries, timeouts, circuit breaking and outlier detection, and
// stream the answer back. Every request ends in exactly one telemetry record.
import { randomUUID } from 'node:crypto';
import type http from 'node:http';
import http2 from 'node:http2';
import type { Readable } from 'node:stream';
import type { RouteBackend, Service } from '../../lib/model/mesh.ts';
import { ReplayableBody } from './body.ts';
import type { Snapshot } from './config.ts';
import { backendService, routesFor, serviceKey } from './config.ts';
import { UpstreamConnectError, UpstreamTimeoutError } from './errors.ts';
import { applyRouteFilters, type FilterContext } from './filters.ts';
import * as F from './flags.ts';
import { applyHeaderEdits, forwardableHeaders, headerListSize, headerValue, splitHostPort, type HeaderMap } from './headers.ts';
import { endResponse, sendLocalReply, writeHead, type DownstreamResponse, type LocalReply } from './local-reply.ts';
import type { RedisQuota } from './quota.ts';
import { OVERLOADED_HEADER, type RequestAdmission } from './overload.ts';
import { LocalRateLimiter, retryAfterSeconds } from './ratelimit.ts';
import { OVERFLOW, decideFault, isRetriable, retryBackoffMs, type AttemptOutcome, type Cluster, type ClusterSettings, type EndpointState } from './resilience.ts';
import { pickBackend } from './router.ts';
import { remoteIpOf } from '../../lib/policy/authz.ts';
import type { RequestRecord, Telemetry, TraceContext } from './telemetry.ts';
import { isRefusedStream, type UpstreamPool, type UpstreamProtocol, type UpstreamResponse } from './upstream.ts';

export type DownstreamRequest = http.IncomingMessage | http2.Http2ServerRequest;

/** What the engine knows about the tunnel a request arrived on. */
export interface ConnContext {
  peerSpiffeId?: string;
  /** `ip:port` the client dialled (the service VIP and port). */
  target: string;
  clientAddress?: string;
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
  /** `namespace/name` of the waypoint, for overload answers. */
  waypoint: string;
}

interface RequestState {
  start: number;
  startHr: bigint;
  method: string;
  path: string;
  authority: string;
  grpc: boolean;
  flags: F.ResponseFlags;
  requestId: string;
  trace?: TraceContext;
  service?: Service;
  routeName?: string;
  upstreamHost?: string;
  destinationWorkload?: string;
  attempts: number;
  status: number;
  grpcStatus?: string;
  requestBytes: number;
  responseBytes: number;
  detail?: string;
  /** AUDIT policies that matched (logged, never deciding). */
  audit?: string[];
  body?: ReplayableBody;
  downstreamGone: boolean;
  recorded: boolean;
}

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

function rawHeaders(req: DownstreamRequest): HeaderMap {
  return req.headers as HeaderMap;
}

/** Where the request goes: the tunnel's target address, else the Host header. */
export function resolveService(snap: Snapshot, target: string, authority: string): { service: Service; port: number } | undefined {
  const byTarget = snap.byAddress.get(target);
  if (byTarget) {
    const { port } = splitHostPort(target);
    if (port !== undefined && byTarget.ports.some((p) => p.port === port)) return { service: byTarget, port };
  }
  const { host, port: hostPort } = splitHostPort(authority);
  const byHost = snap.byHost.get(host.toLowerCase()) ?? snap.byAddress.get(host);
  const svc = byHost ?? byTarget;
  if (!svc) return undefined;
  const targetPort = splitHostPort(target).port;
  const port = [hostPort, targetPort].find((p) => p !== undefined && svc.ports.some((sp) => sp.port === p))
    ?? svc.ports[0]?.port ?? hostPort ?? targetPort ?? 80;
  return { service: svc, port };
}

/**
 * HTTP/2 upstream for ports declared grpc or http2 and for gRPC requests; HTTP/1.1 otherwise, as
 * Istio does (an undeclared backend may not speak HTTP/2 even when the client does).
 */
function upstreamProtocol(service: Service, port: number, grpc: boolean): UpstreamProtocol {
  const app = service.ports.find((p) => p.port === port)?.appProtocol;
  return app === 'grpc' || app === 'http2' || grpc ? 'http2' : 'http1';
}

export async function handleRequest(env: ProxyEnv, conn: ConnContext, req: DownstreamRequest, res: DownstreamResponse): Promise<void> {
  const headers = rawHeaders(req);
  const method = req.method ?? 'GET';
  const path = req.url ?? '/';
  const authority = headerValue(headers, ':authority') ?? headerValue(headers, 'host') ?? conn.target;
  const st: RequestState = {
    start: Date.now(), startHr: process.hrtime.bigint(), method, path, authority,
    grpc: (headerValue(headers, 'content-type') ?? '').startsWith('application/grpc'),
    flags: new F.ResponseFlags(), requestId: headerValue(headers, 'x-request-id') ?? randomUUID(),
    attempts: 0, status: 0, requestBytes: 0, responseBytes: 0, downstreamGone: false, recorded: false,
  };
  const overall = new AbortController();
  res.on('close', () => {
    if (!res.writableFinished) {
      st.downstreamGone = true;
      if (!st.recorded) st.flags.add(F.FLAG_DOWNSTREAM_TERMINATED);
      overall.abort(new Error('downstream closed'));
    }
    finish(env, conn, st);
  });
  st.trace = env.telemetry.startTrace(headerValue(headers, 'traceparent'), headerValue(headers, 'tracestate'), `${method} ${path.split('?')[0]}`, {
    'http.request.method': method, 'url.path': path.split('?')[0]!, 'server.address': authority,
    ...(conn.peerSpiffeId ? { 'weft.source_principal': conn.peerSpiffeId } : {}),
  });
  const reply = (r: LocalReply): void => {
    for (const f of r.flags.split(',')) if (f !== '-' && f !== '') st.flags.add(f);
    st.status = r.status;
    st.detail ??= r.body.trim();
    const out = sendLocalReply(res, { ...r, flags: st.flags.toString() }, st.grpc);
    st.responseBytes += out.bytes;
    if (out.grpcStatus) st.grpcStatus = out.grpcStatus;
  };

  // Overload: over the ceiling nothing else is looked at, and nothing leaves the waypoint.
  if (!env.admission.tryAdmit()) {
    env.telemetry.overloadRejections.inc({ protocol: conn.protocol });
    reply({
      status: 503, flags: F.FLAG_OVERLOADED,
      body: `waypoint ${env.waypoint} is overloaded: ${env.admission.max} requests in progress (--max-requests); not forwarded, retry later`,
      headers: { [OVERLOADED_HEADER]: `waypoint ${env.waypoint} at ${env.admission.max} concurrent requests` },
    });
    return;
  }
  res.once('close', () => env.admission.release());

  try {
    if ('stream' in req && headerListSize(headers) > env.limits.maxHeaderBytes) {
      reply({ status: 431, body: `request header fields too large: more than ${env.limits.maxHeaderBytes} bytes`, flags: '-' });
      return;
    }
    const snap = env.snapshot();
    const dest = resolveService(snap, conn.target, authority);
    if (!dest) {
      reply({ status: 404, flags: F.FLAG_NO_ROUTE, body: `no service for host "${authority}" (path ${path}) behind waypoint namespace ${snap.namespace}` });
      return;
    }
    const { service, port } = dest;
    const svcKey = serviceKey(service);
    st.service = service;

    const pathOnly = path.split('?')[0]!;
    const decision = snap.policies.evaluate(svcKey, {
      ...(conn.peerSpiffeId ? { sourcePrincipal: conn.peerSpiffeId } : {}),
      ...(conn.clientAddress ? { sourceIp: conn.clientAddress } : {}),
      remoteIp: remoteIpOf(headers['x-forwarded-for'], conn.clientAddress),
      destinationIp: splitHostPort(conn.target).host, destinationPort: port, method, path: pathOnly, host: authority, headers,
    });
    if (decision.audit) st.audit = decision.audit;
    if (!decision.allowed) {
      reply({ status: 403, flags: F.FLAG_POLICY_DENIED, body: `RBAC: access denied by AuthorizationPolicy ${decision.policy} (${decision.reason})` });
      return;
    }

    const svcSettings = snap.settings.get(svcKey);
    if (svcSettings?.rateLimit) {
      const v = env.rateLimiter.check(svcKey, svcSettings.rateLimit, conn.peerSpiffeId ?? conn.clientAddress);
      if (!v.allowed) {
        reply({ status: 429, flags: F.FLAG_RATE_LIMITED, body: `local rate limit of ${svcSettings.rateLimit.tokens} requests per ${svcSettings.rateLimit.fillIntervalMs} ms exceeded for ${svcKey}`, headers: { 'retry-after': retryAfterSeconds(v.retryAfterMs) } });
        return;
      }
    }
    if (env.quota?.hasRule(svcKey)) {
      const q = await env.quota.check(svcKey, conn.peerSpiffeId ?? conn.clientAddress);
      if (q.backendError) {
        st.flags.add(F.FLAG_RATE_LIMIT_SERVICE_ERROR);
        env.telemetry.quotaBackendErrors.inc({ failure_mode: env.quota.failureMode });
      }
      if (st.downstreamGone) return;
      if (!q.allowed) {
        reply({ status: 429, flags: q.backendError ? '-' : F.FLAG_RATE_LIMITED, body: q.backendError ? `quota store unavailable and quota for ${svcKey} fails closed` : `shared quota for ${svcKey} exceeded`, headers: { 'retry-after': retryAfterSeconds(q.retryAfterMs) } });
        return;
      }
    }

    // Routing.
    const routeReq = { method, path, headers };
    const matched = routesFor(snap, conn.peerSpiffeId).match(svcKey, port, routeReq);
    let backends: RouteBackend[];
    const fctx: FilterContext = {
      request: { method, path, authority, headers: forwardableHeaders(headers) },
      listenerPort: port, responseEdits: [], mirrors: [],
    };
    let timeouts: { requestMs?: number; backendRequestMs?: number } = {};
    if (matched) {
      st.routeName = `${matched.route.namespace}/${matched.route.name}${matched.rule.name ? `/${matched.rule.name}` : ''}`;
      if (matched.matchedPrefix !== undefined) fctx.matchedPrefix = matched.matchedPrefix;
      backends = matched.rule.backends;
      timeouts = matched.rule.timeouts;
      applyRouteFilters(matched.rule.filters, fctx);
    } else {
      backends = [{ service: svcKey, hostname: service.hostname, port, weight: 1, filters: [] }];
    }
    const redirect = redirectOf(fctx);
    if (redirect) {
      reply({ status: redirect.statusCode, flags: '-', body: `redirect to ${redirect.location}`, headers: { location: redirect.location } });
      return;
    }
    const backend = pickBackend(backends, env.random);
    if (!backend) {
      reply({ status: 500, flags: F.FLAG_NO_ROUTE, body: `route ${st.routeName ?? svcKey} has no backend with a weight above 0` });
      return;
    }
    applyRouteFilters(backend.filters, fctx);
    const backendRedirect = redirectOf(fctx);
    if (backendRedirect) {
      reply({ status: backendRedirect.statusCode, flags: '-', body: `redirect to ${backendRedirect.location}`, headers: { location: backendRedirect.location } });
      return;
    }
    const backendSvc = backendService(snap, backend);
    if (!backendSvc) {
      reply({ status: 500, flags: F.FLAG_NO_ROUTE, body: `backend service ${backend.service} is unknown` });
      return;
    }
    const backendPort = backend.port ?? (backend.service === svcKey ? port : backendSvc.ports[0]?.port ?? port);
    const settings = snap.settings.get(backend.service)!;

    // Fault injection.
    const fault = decideFault(settings.fault, env.random);
    if (fault.delayMs !== undefined) {
      st.flags.add(F.FLAG_DELAY_INJECTED);
      await sleep(fault.delayMs, overall.signal);
      if (st.downstreamGone) return;
    }
    if (fault.abortStatus !== undefined) {
      reply({ status: fault.abortStatus, flags: F.FLAG_FAULT_INJECTED, body: 'fault filter abort' });
      return;
    }

    // Upstream request headers.
    const out = fctx.request;
    const xff = headerValue(headers, 'x-forwarded-for');
    if (conn.clientAddress) out.headers['x-forwarded-for'] = xff ? `${xff}, ${conn.clientAddress}` : conn.clientAddress;
    out.headers['x-forwarded-proto'] ??= 'http';
    out.headers['x-request-id'] = st.requestId;
    out.headers['traceparent'] = st.trace.traceparent;
    if (st.trace.tracestate) out.headers['tracestate'] = st.trace.tracestate;
    const proto = upstreamProtocol(backendSvc, backendPort, st.grpc);
    if (proto === 'http2' && headerValue(headers, 'te') === 'trailers') out.headers['te'] = 'trailers';

    if (requestHasBody(req)) st.body = new ReplayableBody(req as Readable, env.limits.retryBufferBytes);
    else (req as Readable).resume();

    for (const m of fctx.mirrors) {
      if (env.random() * 100 < m.percent) void sendMirror(env, snap, m.backend, out, st.body);
    }

    const cluster = env.cluster(backendSvc, backendPort);
    await forward(env, conn, st, res, cluster, settings, proto, out, fctx.responseEdits, {
      requestMs: timeouts.requestMs ?? settings.timeouts.requestMs,
      perTryMs: timeouts.backendRequestMs ?? settings.timeouts.perTryMs,
    }, overall);
  } catch (err) {
    st.detail = `internal error: ${(err as Error).message}`;
    if (!res.headersSent && !st.downstreamGone) reply({ status: 500, flags: '-', body: 'waypoint internal error' });
    else res.destroy();
  }
}

/** Sends one copy of the request to a mirror backend and discards the answer. */
async function sendMirror(env: ProxyEnv, snap: Snapshot, backend: RouteBackend, out: FilterContext['request'], body: ReplayableBody | undefined): Promise<void> {
  try {
    const svc = backendService(snap, backend);
    if (!svc) return;
    const port = backend.port ?? svc.ports[0]?.port ?? 80;
    let stream: Readable | null = null;
    if (body) {
      if (!(await body.whenComplete())) return;
      stream = body.snapshot() ?? null;
      if (!stream) return;
    }
    const cluster = env.cluster(svc, port);
    const ep = cluster.pick(env.random);
    if (!ep) return;
    const { host } = splitHostPort(out.authority);
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), 30_000);
    const resp = await env.pool.request(upstreamEndpoint(ep), upstreamProtocol(svc, port, false), {
      method: out.method, path: out.path, authority: `${host}-shadow`, headers: { ...out.headers }, body: stream, signal: ac.signal,
    }, cluster.settings.timeouts.connectMs);
    resp.body.resume();
    resp.body.on('close', () => clearTimeout(timer));
    resp.body.on('error', () => {});
  } catch {
    // Mirrors are fire-and-forget: their failures never reach the client.
  }
}

function redirectOf(f: FilterContext): FilterContext['redirect'] {
  return f.redirect;
}

function upstreamEndpoint(ep: EndpointState): { ip: string; port: number; node?: string; spiffeId?: string } {
  const out: { ip: string; port: number; node?: string; spiffeId?: string } = { ip: ep.ip, port: ep.port };
  if (ep.endpoint.enrolled && ep.endpoint.nodeIp) out.node = ep.endpoint.nodeIp;
  if (ep.endpoint.enrolled && ep.endpoint.spiffeId) out.spiffeId = ep.endpoint.spiffeId;
  return out;
}

function classify(err: unknown, timedOut: boolean): AttemptOutcome {
  if (timedOut) return { kind: 'timeout' };
  if (err instanceof UpstreamConnectError) return { kind: 'connect-failure' };
  if (isRefusedStream(err)) return { kind: 'refused-stream' };
  return { kind: 'reset' };
}

function grpcStatusOf(h: HeaderMap | undefined): number | undefined {
  const v = h ? headerValue(h, 'grpc-status') : undefined;
  return v === undefined ? undefined : Number(v);
}

async function forward(
  env: ProxyEnv, conn: ConnContext, st: RequestState, res: DownstreamResponse, cluster: Cluster, settings: ClusterSettings,
  proto: UpstreamProtocol, out: FilterContext['request'], responseEdits: FilterContext['responseEdits'],
  timeouts: { requestMs?: number; perTryMs?: number }, overall: AbortController,
): Promise<void> {
  const reply = (r: LocalReply): void => {
    for (const f of r.flags.split(',')) if (f !== '-' && f !== '') st.flags.add(f);
    st.status = r.status;
    st.detail ??= r.body.trim();
    const sent = sendLocalReply(res, { ...r, flags: st.flags.toString() }, st.grpc);
    st.responseBytes += sent.bytes;
    if (sent.grpcStatus) st.grpcStatus = sent.grpcStatus;
  };
  if (!cluster.beginRequest()) {
    reply({ status: 503, flags: F.FLAG_UPSTREAM_OVERFLOW, body: `upstream overflow: ${cluster.name} is at maxRequests (${settings.maxRequests})` });
    return;
  }
  let overallTimedOut = false;
  const overallTimer = timeouts.requestMs !== undefined && timeouts.requestMs > 0
    ? setTimeout(() => { overallTimedOut = true; overall.abort(new UpstreamTimeoutError('request', timeouts.requestMs!)); }, timeouts.requestMs)
    : undefined;
  const tried = new Set<string>();
  let inRetry = false;
  try {
    for (let attempt = 0; ; attempt++) {
      if (st.downstreamGone) return;
      const ep = cluster.pick(env.random, tried);
      if (!ep) {
        reply({ status: 503, flags: F.FLAG_NO_HEALTHY_UPSTREAM, body: `no healthy upstream for ${cluster.name}` });
        return;
      }
      const release = await cluster.acquireConnection(overall.signal);
      if (release === OVERFLOW) {
        if (overallTimedOut) reply({ status: 504, flags: F.FLAG_UPSTREAM_TIMEOUT, body: `upstream request timeout after ${timeouts.requestMs} ms` });
        else if (!st.downstreamGone) reply({ status: 503, flags: F.FLAG_UPSTREAM_OVERFLOW, body: `upstream overflow: ${cluster.name} has ${settings.maxConnections} connections busy and ${settings.maxPendingRequests} requests pending` });
        return;
      }
      if (st.downstreamGone) { release(); return; }
      tried.add(ep.key);
      ep.active++;
      ep.requests++;
      st.attempts++;
      st.upstreamHost = ep.key;
      st.destinationWorkload = ep.endpoint.workloadUid || undefined;
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
        resp = await env.pool.request(upstreamEndpoint(ep), proto, {
          method: out.method, path: out.path, authority: out.authority, headers: out.headers,
          body: st.body ? st.body.open() : null, signal: tryAc.signal,
        }, settings.timeouts.connectMs);
        outcome = { kind: 'response', status: resp.status };
        const gs = grpcStatusOf(resp.headers);
        if (gs !== undefined) outcome.grpcStatus = gs;
      } catch (err) {
        outcome = classify(err, perTryTimedOut || overallTimedOut);
      }
      clearTimeout(perTryTimer);
      cluster.report(ep, outcome);
      if (inRetry) { cluster.endRetry(); inRetry = false; }
      const done = (): void => {
        overall.signal.removeEventListener('abort', onOverall);
        ep.active--;
        release();
      };

      const canRetry = attempt < settings.retries.attempts && !overallTimedOut && !st.downstreamGone &&
        (st.body === undefined || st.body.replayable) && isRetriable(settings.retries.retryOn, outcome);
      if (canRetry && cluster.tryBeginRetry()) {
        inRetry = true;
        resp?.discard();
        done();
        await sleep(retryBackoffMs(attempt, env.random), overall.signal);
        continue;
      }

      if (!resp) {
        done();
        if (st.downstreamGone) return;
        if (attempt > 0) st.flags.add(F.FLAG_RETRY_LIMIT_EXCEEDED);
        if (outcome.kind === 'timeout') {
          reply({ status: 504, flags: F.FLAG_UPSTREAM_TIMEOUT, body: `upstream ${overallTimedOut ? 'request' : 'per-try'} timeout (${overallTimedOut ? timeouts.requestMs : timeouts.perTryMs} ms) from ${ep.key}` });
        } else if (outcome.kind === 'connect-failure') {
          reply({ status: 503, flags: F.FLAG_UPSTREAM_CONNECT_FAILURE, body: `upstream connect error to ${ep.key} (${cluster.name})` });
        } else {
          reply({ status: 503, flags: F.FLAG_UPSTREAM_RESET, body: `upstream ${ep.key} reset the request before headers` });
        }
        return;
      }
      if (attempt > 0 && isRetriable(settings.retries.retryOn, outcome)) st.flags.add(F.FLAG_RETRY_LIMIT_EXCEEDED);
      await streamResponse(st, conn, res, resp, responseEdits, overall.signal);
      done();
      if (overallTimedOut && !res.writableFinished) st.flags.add(F.FLAG_UPSTREAM_TIMEOUT);
      return;
    }
  } finally {
    if (inRetry) cluster.endRetry();
    clearTimeout(overallTimer);
    cluster.endRequest();
  }
}

const GRPC_TRAILER_FIELDS = ['grpc-status', 'grpc-message', 'grpc-status-details-bin'];

/** Copies the upstream response to the client, with trailers; resolves when it is done either way. */
function streamResponse(st: RequestState, conn: ConnContext, res: DownstreamResponse, up: UpstreamResponse,
  edits: FilterContext['responseEdits'], signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const headers = forwardableHeaders(up.headers);
    for (const e of edits) applyHeaderEdits(headers, e);
    if (!st.flags.empty) headers[F.FLAGS_HEADER] = st.flags.toString();
    const h2down = conn.protocol === 'HTTP/2';
    let movedTrailers: HeaderMap | undefined;
    if (h2down && up.endStreamOnHeaders && headers['grpc-status'] !== undefined) {
      // A gRPC trailers-only response: send headers, then the status as trailers.
      movedTrailers = {};
      for (const f of GRPC_TRAILER_FIELDS) if (headers[f] !== undefined) { movedTrailers[f] = headers[f]; delete headers[f]; }
    }
    st.status = up.status;
    const gsHead = grpcStatusOf(up.headers);
    if (gsHead !== undefined) st.grpcStatus = String(gsHead);
    if (st.downstreamGone) { up.discard(); resolve(); return; }
    try {
      writeHead(res, up.status, headers as http.OutgoingHttpHeaders);
    } catch (err) {
      up.discard();
      st.detail = `bad response headers from upstream: ${(err as Error).message}`;
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
      st.responseBytes += c.length;
      if (!(res as http.ServerResponse).write(c)) up.body.pause();
    };
    const onDrain = (): void => { up.body.resume(); };
    const onAbort = (): void => { up.discard(); resetDownstream(res); end(); };
    const onEnd = (): void => {
      if (finished) return;
      const trailers = { ...movedTrailers, ...(up.trailers() ? forwardableHeaders(up.trailers()!) : {}) };
      const gs = grpcStatusOf(trailers);
      if (gs !== undefined) st.grpcStatus = String(gs);
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
    up.body.once('error', () => { st.flags.add(F.FLAG_UPSTREAM_RESET); resetDownstream(res); end(); });
    up.body.once('close', () => {
      if (!up.body.readableEnded) { st.flags.add(F.FLAG_UPSTREAM_RESET); resetDownstream(res); end(); }
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

function finish(env: ProxyEnv, conn: ConnContext, st: RequestState): void {
  if (st.recorded) return;
  st.recorded = true;
  const durationMs = Number(process.hrtime.bigint() - st.startHr) / 1e6;
  const rec: RequestRecord = {
    startTime: st.start, durationMs, method: st.method, path: st.path, authority: st.authority,
    protocol: conn.protocol, grpc: st.grpc, responseCode: st.downstreamGone && st.status === 0 ? 0 : st.status,
    responseFlags: st.flags.toString(), requestBytes: st.body?.bytes ?? 0, responseBytes: st.responseBytes,
    attempts: st.attempts, requestId: st.requestId,
  };
  if (st.grpcStatus !== undefined) rec.grpcStatus = st.grpcStatus;
  if (conn.peerSpiffeId) rec.sourcePrincipal = conn.peerSpiffeId;
  if (conn.clientAddress) rec.sourceAddress = conn.clientAddress;
  if (st.service) { rec.destinationService = st.service.hostname; rec.destinationServiceKey = serviceKey(st.service); }
  if (st.destinationWorkload) rec.destinationWorkload = st.destinationWorkload;
  if (st.upstreamHost) rec.upstreamHost = st.upstreamHost;
  if (st.routeName) rec.routeName = st.routeName;
  if (st.trace) { rec.traceId = st.trace.traceId; rec.spanId = st.trace.spanId; }
  if (st.detail) rec.detail = st.detail;
  if (st.audit) rec.auditPolicies = st.audit;
  env.telemetry.record(rec, st.trace);
}
