// Metrics (Istio's names and labels), JSON access logs, and W3C trace context with OTLP span export.
import { randomFillSync } from 'node:crypto';
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, TraceFlags, trace, type Span, type Tracer } from '@opentelemetry/api';
import { OtlpLogExporters, otlpLogMetrics, type OtlpLogExporter } from '../../lib/telemetry/otlp-logs.ts';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, ParentBasedSampler, TraceIdRatioBasedSampler, TracerProvider, type SpanExporter, type SpanProcessor, SimpleSpanProcessor } from '@opentelemetry/sdk-trace';
import { Counter, Registry } from 'prom-client';
import { LogBudget, REFUSAL_LOG_PER_SECOND } from '../../lib/log.ts';
import type { JwtRefusal } from '../../lib/policy/jwt.ts';
import { DRY_RUN_METRIC, dryRunLabels, dryRunLogFields, type DryRunResult } from '../../lib/policy/authz.ts';
import { DEFAULT_SAMPLING_PERCENTAGE, type Endpoint, type TelemetrySettings } from '../../lib/model/mesh.ts';
import type { WorkloadMeta } from '../../lib/model/workload-meta.ts';
import { stdoutLines } from '../../lib/sys/line-batch.ts';
import { REQUEST_LABELS, TRAFFIC_LABELS, encodeBaggage, trafficLabels, type TrafficLabel } from '../../lib/telemetry/labels.ts';
import { SeriesTable } from '../../lib/telemetry/series.ts';

export { REQUEST_LABELS } from '../../lib/telemetry/labels.ts';
type RequestLabel = import('../../lib/telemetry/labels.ts').RequestLabel;
export const TCP_LABELS = TRAFFIC_LABELS;
type TcpLabel = TrafficLabel;

/** One TCP connection passed through (opened, or closed with its byte counts). */
export interface TcpRecord {
  startTime: number;
  durationMs?: number;
  sourcePrincipal?: string;
  /** The caller's workload, from the tunnel's baggage (lib/telemetry/labels.ts peerFromBaggage). */
  sourceMeta?: WorkloadMeta;
  sourceAddress?: string;
  destinationService?: string;
  destinationServiceKey?: string;
  /** The endpoint the connection went to (its workload and identity label the destination). */
  destinationEndpoint?: Endpoint;
  upstreamHost?: string;
  responseFlags: string;
  /** Client → endpoint. */
  receivedBytes?: number;
  /** Endpoint → client. */
  sentBytes?: number;
  detail?: string;
  /** AUDIT AuthorizationPolicies that matched the connection (`namespace/name`). */
  auditPolicies?: string[];
  /** What the dry-run AuthorizationPolicies would have decided (the istio_dry_run_* log fields). */
  dryRun?: DryRunResult[];
}

/** Istio's default duration buckets (ms). */
const DURATION_BUCKETS = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000];
const BYTES_BUCKETS = [1, 10, 100, 1000, 10000, 100000, 1000000, 10000000];

/** Everything recorded about one finished request. */
export interface RequestRecord {
  startTime: number;
  durationMs: number;
  method: string;
  path: string;
  authority: string;
  /** `HTTP/1.1` or `HTTP/2`. */
  protocol: string;
  grpc: boolean;
  responseCode: number;
  responseFlags: string;
  grpcStatus?: string;
  requestBytes: number;
  responseBytes: number;
  sourcePrincipal?: string;
  /** The caller's workload, from the tunnel's baggage. */
  sourceMeta?: WorkloadMeta;
  sourceAddress?: string;
  /** Destination service hostname and `namespace/name`. */
  destinationService?: string;
  destinationServiceKey?: string;
  /** The endpoint of the last attempt. */
  destinationEndpoint?: Endpoint;
  upstreamHost?: string;
  routeName?: string;
  attempts: number;
  requestId: string;
  traceId?: string;
  spanId?: string;
  userAgent?: string;
  /** Why a local reply was sent (policy name, limit, ...). */
  detail?: string;
  /** AUDIT AuthorizationPolicies that matched the request (`namespace/name`). */
  auditPolicies?: string[];
  /** What the dry-run AuthorizationPolicies would have decided (the istio_dry_run_* log fields). */
  dryRun?: DryRunResult[];
}

export interface TracingOptions {
  /** OTLP/HTTP traces endpoint, e.g. `http://otel-collector:4318/v1/traces`. */
  endpoint?: string;
  /** A ready exporter (tests: InMemorySpanExporter); exported synchronously per span. */
  exporter?: SpanExporter;
  serviceName?: string;
  /** Percentage of new traces sampled (a caller's sampled flag is honoured); default 1, as Istio's. */
  samplingPercentage?: number;
}

export interface TelemetryOptions {
  /** Registry to register metrics in; default a fresh one (engines in one process stay separate). */
  registry?: Registry;
  /** Receives one line per request (JSON, or TEXT when a Telemetry says so); default: stdout. `null` disables access logs. */
  accessLog?: ((line: string) => void) | null;
  /** Warnings (access-log entries the OTLP collector did not take). */
  warn?: (msg: string, fields: Record<string, unknown>) => void;
  /**
   * Receives every entry, whatever the access-log settings (live flows: /flows), with its JSON when
   * the access log made it; the entry is not changed afterwards.
   */
  entries?: (entry: Record<string, unknown>, json: string | undefined) => void;
  tracing?: TracingOptions;
  /** Extra metric, span and log attribute: the waypoint's `namespace/name`. */
  waypoint?: string;
}

export interface TraceContext {
  traceId: string;
  spanId: string;
  sampled: boolean;
  /** traceparent for the upstream request: same trace, this hop's span as parent. */
  traceparent: string;
  tracestate?: string;
  /** The caller's span, when it sent one. */
  parentSpanId?: string;
  span?: Span;
}

const TRACEPARENT_RE = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?$/;

/** Parses a W3C traceparent; undefined for absent, malformed or all-zero ids. */
export function parseTraceparent(v: string | undefined): { traceId: string; parentSpanId: string; sampled: boolean } | undefined {
  if (!v) return undefined;
  const m = TRACEPARENT_RE.exec(v.trim().toLowerCase());
  if (!m || m[1] === 'ff') return undefined;
  if (m[1] === '00' && v.trim().length !== 55) return undefined;
  const traceId = m[2]!;
  const parentSpanId = m[3]!;
  if (/^0+$/.test(traceId) || /^0+$/.test(parentSpanId)) return undefined;
  return { traceId, parentSpanId, sampled: (parseInt(m[4]!, 16) & 1) === 1 };
}

/**
 * The caller's trace context from W3C `traceparent`, else B3 (single `b3` header or the
 * `x-b3-*` multi headers, as Istio's proxies propagate both). 64-bit B3 trace ids are left-padded.
 */
export function incomingTraceContext(get: (name: string) => string | undefined): { traceId: string; parentSpanId: string; sampled: boolean } | undefined {
  const w3c = parseTraceparent(get('traceparent'));
  if (w3c) return w3c;
  const hex = (v: string | undefined, lens: number[]) => (v && lens.includes(v.length) && /^[0-9a-f]+$/.test(v) && !/^0+$/.test(v) ? v : undefined);
  const single = get('b3')?.trim().toLowerCase();
  let traceId: string | undefined;
  let spanId: string | undefined;
  let sampledFlag: string | undefined;
  if (single && single.includes('-')) {
    const [t, sp, smp] = single.split('-');
    traceId = hex(t, [16, 32]);
    spanId = hex(sp, [16]);
    sampledFlag = smp;
  } else {
    traceId = hex(get('x-b3-traceid')?.trim().toLowerCase(), [16, 32]);
    spanId = hex(get('x-b3-spanid')?.trim().toLowerCase(), [16]);
    sampledFlag = get('x-b3-flags') === '1' ? '1' : get('x-b3-sampled')?.trim();
  }
  if (!traceId || !spanId) return undefined;
  return { traceId: traceId.padStart(32, '0'), parentSpanId: spanId, sampled: sampledFlag === '1' || sampledFlag === 'd' || sampledFlag === 'true' };
}

/** Headers that carry this hop's context upstream: W3C and B3 (multi and, if the caller used it, single). */
export function outgoingTraceHeaders(tc: TraceContext, callerUsedSingleB3: boolean): Record<string, string> {
  const out: Record<string, string> = {
    traceparent: tc.traceparent,
    'x-b3-traceid': tc.traceId,
    'x-b3-spanid': tc.spanId,
    'x-b3-sampled': tc.sampled ? '1' : '0',
  };
  if (tc.parentSpanId) out['x-b3-parentspanid'] = tc.parentSpanId;
  if (tc.tracestate) out['tracestate'] = tc.tracestate;
  if (callerUsedSingleB3) out['b3'] = `${tc.traceId}-${tc.spanId}-${tc.sampled ? '1' : '0'}${tc.parentSpanId ? `-${tc.parentSpanId}` : ''}`;
  return out;
}

/** Random hex ids from a pooled buffer: one getrandom call per 4 KiB instead of one per id. */
const ID_POOL = Buffer.alloc(4096);
let idPoolOffset = ID_POOL.length;

export function randomHex(bytes: number): string {
  if (idPoolOffset + bytes > ID_POOL.length) { randomFillSync(ID_POOL); idPoolOffset = 0; }
  const out = ID_POOL.toString('hex', idPoolOffset, idPoolOffset + bytes);
  idPoolOffset += bytes;
  return out;
}

export class Telemetry {
  readonly registry: Registry;
  /** istio_requests_total, istio_request_duration_milliseconds, istio_request_bytes and istio_response_bytes, one label set per request. */
  private readonly requests: SeriesTable<RequestLabel>;
  readonly tcpOpened: Counter<TcpLabel>;
  readonly tcpClosed: Counter<TcpLabel>;
  readonly tcpSent: Counter<TcpLabel>;
  readonly tcpReceived: Counter<TcpLabel>;
  readonly quotaBackendErrors: Counter<'failure_mode'>;
  readonly configApplies: Counter<'result'>;
  readonly rapidResetGoaways: Counter<never>;
  readonly h2SessionErrors: Counter<'reason'>;
  readonly h1ConnectionsClosed: Counter<'reason'>;
  readonly downstreamTimeouts: Counter<'protocol' | 'timeout'>;
  readonly overloadRejections: Counter<'protocol'>;
  readonly grpcStatusInvalid: Counter<never>;
  /** weft_waypoint_upstream_protocol_errors_total{reason}: HTTP/1.1 connections to endpoints given up for what they sent (h1client.ts H1ProtocolError). */
  readonly upstreamProtocolErrors: Counter<'reason'>;
  readonly mirrorsDropped: Counter<'reason'>;
  /** Requests refused for their JWT (RequestAuthentication), by lib/policy/jwt.ts reason. */
  readonly jwtRefused: Counter<'reason'>;
  /** weft_authz_dry_run_total: each shadow engine's verdict on a request or connection (dryRunResults). */
  readonly dryRun: Counter<(typeof DRY_RUN_METRIC.labelNames)[number]>;
  private readonly warn: (msg: string, fields: Record<string, unknown>) => void;
  private readonly jwtRefusalLog: LogBudget;
  /** Where lines go (from the options); `null`: nowhere, whatever the Telemetry objects say. */
  private readonly accessLogSink: ((line: string) => void) | null;
  private accessLog: ((line: string) => void) | null;
  private accessLogEncoding: 'JSON' | 'TEXT' = 'JSON';
  private provider: TracerProvider | undefined;
  private tracer: Tracer | undefined;
  private readonly waypoint: string | undefined;
  private readonly entries: ((entry: Record<string, unknown>, json: string | undefined) => void) | undefined;
  /** Tracing as the options set it, before any Telemetry object. */
  private readonly tracingDefaults: TracingOptions | undefined;
  private tracingKey = '';
  private readonly serviceName: string;
  /** Access logs over OTLP, when the waypoint's Telemetry names a collector. */
  private readonly otlpLogs: OtlpLogExporters;
  private otlpLog: OtlpLogExporter | undefined;

  constructor(opts: TelemetryOptions = {}) {
    this.registry = opts.registry ?? new Registry();
    const registers = [this.registry];
    this.requests = new SeriesTable(this.registry, REQUEST_LABELS, [
      { name: 'istio_requests_total', help: 'Requests handled by the waypoint' },
      { name: 'istio_request_duration_milliseconds', help: 'Request duration (ms)', buckets: DURATION_BUCKETS },
      { name: 'istio_request_bytes', help: 'Request body size (bytes)', buckets: BYTES_BUCKETS },
      { name: 'istio_response_bytes', help: 'Response body size (bytes)', buckets: BYTES_BUCKETS },
    ]);
    this.tcpOpened = new Counter({ name: 'istio_tcp_connections_opened_total', help: 'TCP connections passed through', labelNames: TCP_LABELS, registers });
    this.tcpClosed = new Counter({ name: 'istio_tcp_connections_closed_total', help: 'TCP connections closed', labelNames: TCP_LABELS, registers });
    this.tcpSent = new Counter({ name: 'istio_tcp_sent_bytes_total', help: 'Bytes sent to clients of TCP connections', labelNames: TCP_LABELS, registers });
    this.tcpReceived = new Counter({ name: 'istio_tcp_received_bytes_total', help: 'Bytes received from clients of TCP connections', labelNames: TCP_LABELS, registers });
    this.quotaBackendErrors = new Counter({ name: 'weft_waypoint_quota_backend_errors_total', help: 'Quota checks that could not reach Redis', labelNames: ['failure_mode'], registers });
    this.configApplies = new Counter({ name: 'weft_waypoint_config_applies_total', help: 'Configuration updates, by result', labelNames: ['result'], registers });
    this.rapidResetGoaways = new Counter({ name: 'weft_waypoint_rapid_reset_goaways_total', help: 'HTTP/2 sessions closed for resetting streams too fast', registers });
    this.h2SessionErrors = new Counter({
      name: 'weft_waypoint_h2_session_errors_total',
      help: 'Client HTTP/2 sessions the waypoint ended with a connection error (RFC 9113 section 5.4.1), by reason: flood (PING or SETTINGS faster than they are answered), continuation_flood, invalid_frames (too many malformed requests, empty DATA frames or refused streams), protocol_error',
      labelNames: ['reason'], registers,
    });
    this.h1ConnectionsClosed = new Counter({
      name: 'weft_waypoint_h1_connections_closed_total',
      help: 'Client HTTP/1.1 connections the waypoint closed for what the client sent, by reason: pipeline_depth (more pipelined requests waiting for the one in progress than an HTTP/2 session may open streams)',
      labelNames: ['reason'], registers,
    });
    this.downstreamTimeouts = new Counter({
      name: 'weft_waypoint_downstream_timeouts_total',
      help: 'Client connections cut by a waypoint timeout: request_headers (headers not complete in time; HTTP/1.1 gets 408) or idle (no request in progress; protocol tcp: a passed-through connection with no bytes either way for its idle timeout)',
      labelNames: ['protocol', 'timeout'], registers,
    });
    this.overloadRejections = new Counter({
      name: 'weft_waypoint_overload_rejections_total',
      help: 'Requests refused with 503 (gRPC UNAVAILABLE) because the waypoint had --max-requests in progress; none was sent upstream',
      labelNames: ['protocol'], registers,
    });
    this.grpcStatusInvalid = new Counter({
      name: 'weft_waypoint_grpc_status_invalid_total',
      help: 'Responses whose grpc-status named none of gRPC\'s codes (0..16): reported as UNKNOWN (2) in grpc_response_status, the access log and spans',
      registers,
    });
    this.upstreamProtocolErrors = new Counter({
      name: 'weft_waypoint_upstream_protocol_errors_total',
      help: 'HTTP/1.1 connections to endpoints closed for what the endpoint sent (Envoy upstream_cx_protocol_error), by reason: malformed_response (a response the parser refuses: two Content-Lengths, a bad chunk...), unsolicited_response (a response begun with no request waiting: bytes after a complete one, the body of a 204 or of the answer to HEAD, bytes on an idle connection), unexpected_upgrade (a 101 to a request that asked for no upgrade)',
      labelNames: ['reason'], registers,
    });
    this.mirrorsDropped = new Counter({
      name: 'weft_waypoint_mirror_requests_dropped_total',
      help: 'RequestMirror copies not sent (the request itself was served): overflow (the mirror backend at its maxRequests), max_mirrors (the waypoint at its ceiling on copies in flight), body_not_kept (a body over the retry buffer, or cut short), policy (a copy a consumer route makes, which the AuthorizationPolicies of where it goes refuse)',
      labelNames: ['reason'], registers,
    });
    this.dryRun = new Counter({ ...DRY_RUN_METRIC, labelNames: [...DRY_RUN_METRIC.labelNames], registers });
    this.jwtRefused = new Counter({
      name: 'weft_waypoint_jwt_refused_total',
      help: 'Requests refused by a RequestAuthentication for their token (401, or 403 for an audience not allowed), by reason: malformed, too-large, multiple-tokens, unsupported-alg, unknown-issuer, unknown-kid, bad-signature, expired, not-yet-valid, audience-not-allowed, bad-claim',
      labelNames: ['reason'], registers,
    });
    this.warn = opts.warn ?? (() => {});
    this.jwtRefusalLog = new LogBudget(REFUSAL_LOG_PER_SECOND, (count) => this.warn('JWT refusals not logged (rate limit; every one is counted in weft_waypoint_jwt_refused_total)', { count, perSecond: REFUSAL_LOG_PER_SECOND }));
    this.accessLogSink = opts.accessLog === undefined ? stdoutLines() : opts.accessLog;
    this.accessLog = this.accessLogSink;
    this.waypoint = opts.waypoint;
    this.entries = opts.entries;
    this.tracingDefaults = opts.tracing;
    // OpenTelemetry's service.name for spans and logs: `<name>.<namespace>` as Istio names a proxy.
    this.serviceName = opts.tracing?.serviceName ?? (opts.waypoint ? opts.waypoint.split('/').reverse().join('.') : 'weft-waypoint');
    this.setTracing(opts.tracing);
    this.otlpLogs = new OtlpLogExporters({ serviceName: this.serviceName, ...otlpLogMetrics(this.registry, opts.warn) });
  }

  /** Counts what the dry-run policies would have decided (a request's or a connection's). */
  dryRunResults(results: readonly DryRunResult[] | undefined): void {
    for (const r of results ?? []) this.dryRun.inc(dryRunLabels(r));
  }

  /** Counts a request refused for its JWT and logs it within the refusal budget (the token's parts are the caller's: clipped). */
  jwtRefusal(reason: JwtRefusal, fields: Record<string, string | undefined>): void {
    this.jwtRefused.inc({ reason });
    if (this.jwtRefusalLog.take()) this.warn('JWT refused', { reason, ...fields });
  }

  /** (Re)builds the tracer for `t`; a no-op when nothing changed. The previous provider flushes and stops. */
  private setTracing(t: TracingOptions | undefined): void {
    const enabled = !!t && !!(t.endpoint || t.exporter);
    const key = enabled ? JSON.stringify([t!.endpoint ?? '', !!t!.exporter, t!.samplingPercentage ?? DEFAULT_SAMPLING_PERCENTAGE, t!.serviceName ?? '']) : '';
    if (key === this.tracingKey) return;
    this.tracingKey = key;
    const old = this.provider;
    this.provider = undefined;
    this.tracer = undefined;
    if (old) void old.shutdown().catch(() => undefined);
    if (!enabled) return;
    const processors: SpanProcessor[] = [];
    if (t!.exporter) {
      // The given exporter outlives this provider (a reconfiguration builds a new one): not ours to shut down.
      const given = t!.exporter;
      const borrowed: SpanExporter = { export: (spans, done) => given.export(spans, done), shutdown: async () => {}, forceFlush: async () => { await given.forceFlush?.(); } };
      processors.push(new SimpleSpanProcessor({ exporter: borrowed }));
    }
    if (t!.endpoint) processors.push(new BatchSpanProcessor({ exporter: new OTLPTraceExporter({ url: t!.endpoint }) }));
    this.provider = new TracerProvider({
      resource: resourceFromAttributes({ 'service.name': t!.serviceName ?? 'weft-waypoint' }),
      // A caller's decision stands (W3C / B3 sampled flag); new traces are sampled at the percentage.
      sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler((t!.samplingPercentage ?? DEFAULT_SAMPLING_PERCENTAGE) / 100) }),
      spanProcessors: processors,
    });
    this.tracer = this.provider.getTracer('weft-waypoint');
  }

  /**
   * Applies the waypoint's Telemetry settings (from its config): tracing provider and sampling
   * (default 1 %), access logs on or off and their encoding. Without settings, the options given
   * at construction (command-line flags) apply.
   */
  configure(settings: TelemetrySettings | undefined): void {
    const t = settings?.tracing;
    if (!t) this.setTracing(this.tracingDefaults);
    else if (t.disabled) this.setTracing(undefined);
    else {
      const endpoint = t.otlpEndpoint ?? this.tracingDefaults?.endpoint;
      this.setTracing({
        ...(endpoint ? { endpoint } : {}),
        ...(this.tracingDefaults?.exporter ? { exporter: this.tracingDefaults.exporter } : {}),
        serviceName: this.serviceName,
        samplingPercentage: t.samplingPercentage ?? DEFAULT_SAMPLING_PERCENTAGE,
      });
    }
    this.accessLog = settings?.accessLogging.disabled ? null : this.accessLogSink;
    const logs = settings?.accessLogging;
    this.otlpLog = logs && !logs.disabled && logs.otlpEndpoint && this.accessLogSink ? this.otlpLogs.get(logs.otlpEndpoint) : undefined;
    this.accessLogEncoding = settings?.accessLogging.encoding ?? 'JSON';
  }

  /**
   * Continues the caller's trace (or starts one): a new span id for this hop, and the traceparent
   * to send upstream. A span is recorded and exported when tracing is configured.
   */
  startTrace(get: (name: string) => string | undefined, name: string, attrs: Record<string, string | number>): TraceContext {
    const parent = incomingTraceContext(get);
    const tracestate = get('tracestate');
    let out: TraceContext;
    if (this.tracer) {
      const ctx = parent
        ? trace.setSpanContext(ROOT_CONTEXT, {
            traceId: parent.traceId, spanId: parent.parentSpanId, isRemote: true,
            traceFlags: parent.sampled ? TraceFlags.SAMPLED : TraceFlags.NONE,
          })
        : ROOT_CONTEXT;
      const span = this.tracer.startSpan(name, { kind: SpanKind.SERVER, attributes: attrs }, ctx);
      const sc = span.spanContext();
      const sampled = (sc.traceFlags & TraceFlags.SAMPLED) !== 0;
      out = { traceId: sc.traceId, spanId: sc.spanId, sampled, span, traceparent: `00-${sc.traceId}-${sc.spanId}-${sampled ? '01' : '00'}` };
    } else {
      const traceId = parent?.traceId ?? randomHex(16);
      const spanId = randomHex(8);
      const sampled = parent?.sampled ?? false;
      out = { traceId, spanId, sampled, traceparent: `00-${traceId}-${spanId}-${sampled ? '01' : '00'}` };
    }
    if (parent) out.parentSpanId = parent.parentSpanId;
    if (tracestate) out.tracestate = tracestate;
    return out;
  }

  /** Records metrics, the access log line and ends the span. */
  record(r: RequestRecord, tc: TraceContext | undefined): void {
    const traffic = this.trafficLabels(r, r.grpc ? 'grpc' : 'http');
    const values: string[] = [];
    for (const name of TRAFFIC_LABELS) values.push(traffic[name]);
    values.push(String(r.responseCode), r.grpcStatus ?? '');
    const series = this.requests.get(values);
    series.inc(0);
    series.observe(1, r.durationMs);
    series.observe(2, r.requestBytes);
    series.observe(3, r.responseBytes);
    if (this.accessLog || this.entries || this.otlpLog) {
      // Istio's JSON access-log keys (meshConfig.accessLogEncoding JSON), then Weft's extras.
      this.writeLog({
        start_time: new Date(r.startTime).toISOString(),
        method: r.method, path: r.path, protocol: r.protocol,
        response_code: r.responseCode, response_flags: r.responseFlags, response_code_details: r.detail,
        bytes_received: r.requestBytes, bytes_sent: r.responseBytes, duration: Math.round(r.durationMs),
        user_agent: r.userAgent, request_id: r.requestId, authority: r.authority,
        upstream_host: r.upstreamHost, upstream_cluster: r.destinationServiceKey ? `outbound|${r.destinationServiceKey}` : undefined,
        downstream_remote_address: r.sourceAddress, route_name: r.routeName,
        // Weft's: the waypoint, identities, gRPC status, retries, trace.
        waypoint: this.waypoint, source_principal: r.sourcePrincipal, destination_service: r.destinationService,
        grpc_status: r.grpcStatus, attempts: r.attempts, trace_id: r.traceId, span_id: r.spanId,
        audit_policies: r.auditPolicies,
        ...dryRunLogFields(r.dryRun),
      });
    }
    const span = tc?.span;
    if (span) {
      // OpenTelemetry HTTP server semantic conventions; the span is named after the route that
      // matched (`GET shop/reviews`), never the raw path (unbounded cardinality), else the method.
      span.updateName(r.routeName ? `${r.method} ${r.routeName}` : r.method);
      span.setAttributes({
        'http.response.status_code': r.responseCode,
        'url.scheme': 'http',
        'network.protocol.name': 'http',
        'network.protocol.version': r.protocol === 'HTTP/2' ? '2' : '1.1',
        ...(r.sourceAddress ? { 'client.address': r.sourceAddress.replace(/:\d+$/, '') } : {}),
        ...(r.userAgent ? { 'user_agent.original': r.userAgent } : {}),
        ...(r.routeName ? { 'weft.route': r.routeName } : {}),
        ...(r.destinationService ? { 'weft.destination_service': r.destinationService } : {}),
        ...(r.upstreamHost ? { 'weft.upstream_host': r.upstreamHost } : {}),
        'weft.response_flags': r.responseFlags,
        // Istio's span tags for the shadow results (authz-dry-run task, "Check dry-run result in tracing").
        ...Object.fromEntries((r.dryRun ?? []).flatMap((d) => {
          const tag = `istio.authorization.dry_run.${d.action.toLowerCase()}_policy`;
          return [[`${tag}.result`, d.result], ...(d.policy !== undefined ? [[`${tag}.name`, d.policy]] : [])];
        })),
        ...(r.grpcStatus ? { 'rpc.system': 'grpc', 'rpc.grpc.status_code': Number(r.grpcStatus) } : {}),
      });
      if (r.responseCode >= 500 || r.responseCode === 0) {
        span.setAttribute('error.type', r.responseCode === 0 ? 'downstream_disconnect' : String(r.responseCode));
        span.setStatus({ code: SpanStatusCode.ERROR });
      }
      span.end();
    }
  }

  /** The entry to the live flows (JSON) and, unless disabled, to the access log in its encoding. */
  private writeLog(e: Record<string, unknown>): void {
    // Serialized here only for the access log: the live flows serialize an entry when someone reads it.
    const json = this.accessLog && this.accessLogEncoding === 'JSON' ? JSON.stringify(e) : undefined;
    this.entries?.(e, json);
    if (!this.accessLog) return;
    const line = json ?? this.formatText(e);
    this.accessLog(line);
    this.otlpLog?.emit(line, e);
  }

  /** Envoy's default text format (Istio's TEXT access-log encoding). */
  private formatText(e: Record<string, unknown>): string {
    const v = (x: unknown) => (x === undefined || x === null || x === '' ? '-' : String(x));
    return `[${v(e['start_time'])}] "${v(e['method'])} ${v(e['path'])} ${v(e['protocol'])}" ${v(e['response_code'])} ${v(e['response_flags'])} ${v(e['response_code_details'])} - ` +
      `${v(e['bytes_received'])} ${v(e['bytes_sent'])} ${v(e['duration'])} - "-" "${v(e['user_agent'])}" "${v(e['request_id'])}" "${v(e['authority'])}" "${v(e['upstream_host'])}" ` +
      `${v(e['upstream_cluster'])} - - ${v(e['downstream_remote_address'])} - ${v(e['route_name'])}`;
  }

  /** Istio's labels for what passed this waypoint (lib/telemetry/labels.ts, reporter `waypoint`). */
  private trafficLabels(r: TcpRecord | RequestRecord, protocol: 'tcp' | 'http' | 'grpc'): Record<TcpLabel, string> {
    const svcKey = r.destinationServiceKey ?? '';
    const slash = svcKey.indexOf('/');
    const ep = r.destinationEndpoint;
    return trafficLabels({
      reporter: 'waypoint',
      source: { meta: r.sourceMeta, principal: r.sourcePrincipal },
      destination: { meta: ep?.workload, principal: ep?.spiffeId },
      service: r.destinationService && slash >= 0 ? { hostname: r.destinationService, namespace: svcKey.slice(0, slash), name: svcKey.slice(slash + 1) } : undefined,
      protocol,
      flags: r.responseFlags,
      // Every tunnel into a waypoint is HBONE: mTLS with the caller's verified identity.
      security: 'mutual_tls',
    });
  }

  private tcpLabels(r: TcpRecord): Record<TcpLabel, string> {
    return this.trafficLabels(r, 'tcp');
  }

  /** The waypoint's own workload (from its config), described to the agents it tunnels to. */
  setSelf(meta: WorkloadMeta | undefined): void {
    this.selfBaggage = meta ? encodeBaggage(meta) : undefined;
  }

  selfBaggage: string | undefined;

  tcpOpen(r: TcpRecord): void {
    this.tcpOpened.inc(this.tcpLabels(r));
  }

  /** Counts the close and the bytes, and writes the access-log line. */
  tcpClose(r: TcpRecord): void {
    const labels = this.tcpLabels(r);
    this.tcpClosed.inc(labels);
    if (r.sentBytes) this.tcpSent.inc(labels, r.sentBytes);
    if (r.receivedBytes) this.tcpReceived.inc(labels, r.receivedBytes);
    if (this.accessLog || this.entries || this.otlpLog) {
      this.writeLog({
        start_time: new Date(r.startTime).toISOString(), protocol: 'TCP',
        response_flags: r.responseFlags, response_code_details: r.detail, bytes_received: r.receivedBytes ?? 0, bytes_sent: r.sentBytes ?? 0,
        duration: r.durationMs, upstream_host: r.upstreamHost,
        upstream_cluster: r.destinationServiceKey ? `outbound|${r.destinationServiceKey}` : undefined, downstream_remote_address: r.sourceAddress,
        waypoint: this.waypoint, source_principal: r.sourcePrincipal, destination_service: r.destinationService,
        audit_policies: r.auditPolicies,
        ...dryRunLogFields(r.dryRun),
      });
    }
  }

  async shutdown(): Promise<void> {
    await Promise.all([this.provider?.shutdown(), this.otlpLogs.shutdown()]);
  }

  async flush(): Promise<void> {
    await Promise.all([this.provider?.forceFlush(), this.otlpLogs.flush()]);
  }
}

