// Metrics (Istio's names and labels), JSON access logs, and W3C trace context with OTLP span export.
import { randomFillSync } from 'node:crypto';
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, TraceFlags, trace, type Span, type Tracer } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, ParentBasedSampler, AlwaysOnSampler, TracerProvider, type SpanExporter, type SpanProcessor, SimpleSpanProcessor } from '@opentelemetry/sdk-trace';
import { Counter, Histogram, Registry } from 'prom-client';
import { namespaceOfPrincipal } from '../../lib/policy/authz.ts';

export const REQUEST_LABELS = [
  'reporter', 'source_workload', 'source_workload_namespace', 'source_principal', 'destination_service',
  'destination_service_name', 'destination_service_namespace', 'destination_workload', 'response_code',
  'response_flags', 'grpc_response_status', 'request_protocol',
] as const;
type RequestLabel = (typeof REQUEST_LABELS)[number];

export const TCP_LABELS = [
  'reporter', 'source_workload', 'source_workload_namespace', 'source_principal', 'destination_service',
  'destination_service_name', 'destination_service_namespace', 'destination_workload', 'response_flags',
] as const;
type TcpLabel = (typeof TCP_LABELS)[number];

/** One TCP connection passed through (opened, or closed with its byte counts). */
export interface TcpRecord {
  startTime: number;
  durationMs?: number;
  sourcePrincipal?: string;
  sourceAddress?: string;
  destinationService?: string;
  destinationServiceKey?: string;
  destinationWorkload?: string;
  upstreamHost?: string;
  responseFlags: string;
  /** Client → endpoint. */
  receivedBytes?: number;
  /** Endpoint → client. */
  sentBytes?: number;
  detail?: string;
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
  sourceAddress?: string;
  /** Destination service hostname and `namespace/name`. */
  destinationService?: string;
  destinationServiceKey?: string;
  destinationWorkload?: string;
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
}

export interface TracingOptions {
  /** OTLP/HTTP traces endpoint, e.g. `http://otel-collector:4318/v1/traces`. */
  endpoint?: string;
  /** A ready exporter (tests: InMemorySpanExporter); exported synchronously per span. */
  exporter?: SpanExporter;
  serviceName?: string;
}

export interface TelemetryOptions {
  /** Registry to register metrics in; default a fresh one (engines in one process stay separate). */
  registry?: Registry;
  /** Receives one JSON line per request; default: stdout. `null` disables access logs. */
  accessLog?: ((line: string) => void) | null;
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
  readonly requestsTotal: Counter<RequestLabel>;
  readonly requestDuration: Histogram<RequestLabel>;
  readonly requestBytes: Histogram<RequestLabel>;
  readonly responseBytes: Histogram<RequestLabel>;
  readonly tcpOpened: Counter<TcpLabel>;
  readonly tcpClosed: Counter<TcpLabel>;
  readonly tcpSent: Counter<TcpLabel>;
  readonly tcpReceived: Counter<TcpLabel>;
  readonly quotaBackendErrors: Counter<'failure_mode'>;
  readonly configApplies: Counter<'result'>;
  readonly rapidResetGoaways: Counter<never>;
  readonly downstreamTimeouts: Counter<'protocol' | 'timeout'>;
  readonly overloadRejections: Counter<'protocol'>;
  private readonly accessLog: ((line: string) => void) | null;
  private readonly provider: TracerProvider | undefined;
  private readonly tracer: Tracer | undefined;
  private readonly waypoint: string | undefined;

  constructor(opts: TelemetryOptions = {}) {
    this.registry = opts.registry ?? new Registry();
    const registers = [this.registry];
    this.requestsTotal = new Counter({ name: 'istio_requests_total', help: 'Requests handled by the waypoint', labelNames: REQUEST_LABELS, registers });
    this.requestDuration = new Histogram({ name: 'istio_request_duration_milliseconds', help: 'Request duration (ms)', labelNames: REQUEST_LABELS, buckets: DURATION_BUCKETS, registers });
    this.requestBytes = new Histogram({ name: 'istio_request_bytes', help: 'Request body size (bytes)', labelNames: REQUEST_LABELS, buckets: BYTES_BUCKETS, registers });
    this.responseBytes = new Histogram({ name: 'istio_response_bytes', help: 'Response body size (bytes)', labelNames: REQUEST_LABELS, buckets: BYTES_BUCKETS, registers });
    this.tcpOpened = new Counter({ name: 'istio_tcp_connections_opened_total', help: 'TCP connections passed through', labelNames: TCP_LABELS, registers });
    this.tcpClosed = new Counter({ name: 'istio_tcp_connections_closed_total', help: 'TCP connections closed', labelNames: TCP_LABELS, registers });
    this.tcpSent = new Counter({ name: 'istio_tcp_sent_bytes_total', help: 'Bytes sent to clients of TCP connections', labelNames: TCP_LABELS, registers });
    this.tcpReceived = new Counter({ name: 'istio_tcp_received_bytes_total', help: 'Bytes received from clients of TCP connections', labelNames: TCP_LABELS, registers });
    this.quotaBackendErrors = new Counter({ name: 'weft_waypoint_quota_backend_errors_total', help: 'Quota checks that could not reach Redis', labelNames: ['failure_mode'], registers });
    this.configApplies = new Counter({ name: 'weft_waypoint_config_applies_total', help: 'Configuration updates, by result', labelNames: ['result'], registers });
    this.rapidResetGoaways = new Counter({ name: 'weft_waypoint_rapid_reset_goaways_total', help: 'HTTP/2 sessions closed for resetting streams too fast', registers });
    this.downstreamTimeouts = new Counter({
      name: 'weft_waypoint_downstream_timeouts_total',
      help: 'Client connections cut by a waypoint timeout: request_headers (headers not complete in time; HTTP/1.1 gets 408) or idle (no request in progress)',
      labelNames: ['protocol', 'timeout'], registers,
    });
    this.overloadRejections = new Counter({
      name: 'weft_waypoint_overload_rejections_total',
      help: 'Requests refused with 503 (gRPC UNAVAILABLE) because the waypoint had --max-requests in progress; none was sent upstream',
      labelNames: ['protocol'], registers,
    });
    this.accessLog = opts.accessLog === undefined ? (line) => { process.stdout.write(line + '\n'); } : opts.accessLog;
    this.waypoint = opts.waypoint;
    const t = opts.tracing;
    if (t && (t.endpoint || t.exporter)) {
      const processors: SpanProcessor[] = [];
      if (t.exporter) processors.push(new SimpleSpanProcessor({ exporter: t.exporter }));
      if (t.endpoint) processors.push(new BatchSpanProcessor({ exporter: new OTLPTraceExporter({ url: t.endpoint }) }));
      this.provider = new TracerProvider({
        resource: resourceFromAttributes({ 'service.name': t.serviceName ?? 'weft-waypoint' }),
        sampler: new ParentBasedSampler({ root: new AlwaysOnSampler() }),
        spanProcessors: processors,
      });
      this.tracer = this.provider.getTracer('weft-waypoint');
    }
  }

  /**
   * Continues the caller's trace (or starts one): a new span id for this hop, and the traceparent
   * to send upstream. A span is recorded and exported when tracing is configured.
   */
  startTrace(traceparent: string | undefined, tracestate: string | undefined, name: string, attrs: Record<string, string | number>): TraceContext {
    const parent = parseTraceparent(traceparent);
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
      const out: TraceContext = {
        traceId: sc.traceId, spanId: sc.spanId, sampled, span,
        traceparent: `00-${sc.traceId}-${sc.spanId}-${sampled ? '01' : '00'}`,
      };
      if (tracestate) out.tracestate = tracestate;
      return out;
    }
    const traceId = parent?.traceId ?? randomHex(16);
    const spanId = randomHex(8);
    const sampled = parent?.sampled ?? false;
    const out: TraceContext = { traceId, spanId, sampled, traceparent: `00-${traceId}-${spanId}-${sampled ? '01' : '00'}` };
    if (tracestate) out.tracestate = tracestate;
    return out;
  }

  /** Records metrics, the access log line and ends the span. */
  record(r: RequestRecord, tc: TraceContext | undefined): void {
    const sourceNs = namespaceOfPrincipal(r.sourcePrincipal);
    const svcKey = r.destinationServiceKey ?? '';
    const slash = svcKey.indexOf('/');
    const labels: Record<RequestLabel, string> = {
      reporter: 'waypoint',
      // The peer identity proves namespace and service account; the service account stands for the
      // workload (the compiled config carries no workload names for callers).
      source_workload: serviceAccountOf(r.sourcePrincipal) ?? 'unknown',
      source_workload_namespace: sourceNs ?? 'unknown',
      source_principal: r.sourcePrincipal ?? 'unknown',
      destination_service: r.destinationService ?? 'unknown',
      destination_service_name: slash >= 0 ? svcKey.slice(slash + 1) : 'unknown',
      destination_service_namespace: slash >= 0 ? svcKey.slice(0, slash) : 'unknown',
      destination_workload: r.destinationWorkload ?? 'unknown',
      response_code: String(r.responseCode),
      response_flags: r.responseFlags,
      grpc_response_status: r.grpcStatus ?? '',
      request_protocol: r.grpc ? 'grpc' : 'http',
    };
    this.requestsTotal.inc(labels);
    this.requestDuration.observe(labels, r.durationMs);
    this.requestBytes.observe(labels, r.requestBytes);
    this.responseBytes.observe(labels, r.responseBytes);
    if (this.accessLog) {
      this.accessLog(JSON.stringify({
        start_time: new Date(r.startTime).toISOString(),
        waypoint: this.waypoint,
        method: r.method, path: r.path, authority: r.authority, protocol: r.protocol,
        response_code: r.responseCode, response_flags: r.responseFlags, grpc_status: r.grpcStatus,
        bytes_received: r.requestBytes, bytes_sent: r.responseBytes, duration_ms: Math.round(r.durationMs * 1000) / 1000,
        source_principal: r.sourcePrincipal, source_address: r.sourceAddress,
        destination_service: r.destinationService, upstream_host: r.upstreamHost, route_name: r.routeName,
        attempts: r.attempts, request_id: r.requestId, trace_id: r.traceId, span_id: r.spanId,
        user_agent: r.userAgent, detail: r.detail, audit_policies: r.auditPolicies,
      }));
    }
    const span = tc?.span;
    if (span) {
      span.setAttributes({
        'http.response.status_code': r.responseCode,
        'weft.response_flags': r.responseFlags,
        ...(r.upstreamHost ? { 'server.address': r.upstreamHost } : {}),
        ...(r.grpcStatus ? { 'rpc.grpc.status_code': Number(r.grpcStatus) } : {}),
      });
      if (r.responseCode >= 500 || r.responseCode === 0) span.setStatus({ code: SpanStatusCode.ERROR });
      span.end();
    }
  }

  private tcpLabels(r: TcpRecord): Record<TcpLabel, string> {
    const svcKey = r.destinationServiceKey ?? '';
    const slash = svcKey.indexOf('/');
    return {
      reporter: 'waypoint',
      source_workload: serviceAccountOf(r.sourcePrincipal) ?? 'unknown',
      source_workload_namespace: namespaceOfPrincipal(r.sourcePrincipal) ?? 'unknown',
      source_principal: r.sourcePrincipal ?? 'unknown',
      destination_service: r.destinationService ?? 'unknown',
      destination_service_name: slash >= 0 ? svcKey.slice(slash + 1) : 'unknown',
      destination_service_namespace: slash >= 0 ? svcKey.slice(0, slash) : 'unknown',
      destination_workload: r.destinationWorkload ?? 'unknown',
      response_flags: r.responseFlags,
    };
  }

  tcpOpen(r: TcpRecord): void {
    this.tcpOpened.inc(this.tcpLabels(r));
  }

  /** Counts the close and the bytes, and writes the access-log line. */
  tcpClose(r: TcpRecord): void {
    const labels = this.tcpLabels(r);
    this.tcpClosed.inc(labels);
    if (r.sentBytes) this.tcpSent.inc(labels, r.sentBytes);
    if (r.receivedBytes) this.tcpReceived.inc(labels, r.receivedBytes);
    if (this.accessLog) {
      this.accessLog(JSON.stringify({
        start_time: new Date(r.startTime).toISOString(), waypoint: this.waypoint, protocol: 'TCP',
        response_flags: r.responseFlags, bytes_received: r.receivedBytes ?? 0, bytes_sent: r.sentBytes ?? 0,
        duration_ms: r.durationMs, source_principal: r.sourcePrincipal, source_address: r.sourceAddress,
        destination_service: r.destinationService, upstream_host: r.upstreamHost, detail: r.detail,
      }));
    }
  }

  async shutdown(): Promise<void> {
    await this.provider?.shutdown();
  }

  async flush(): Promise<void> {
    await this.provider?.forceFlush();
  }
}

function serviceAccountOf(principal: string | undefined): string | undefined {
  if (!principal) return undefined;
  const m = /\/sa\/([^/]+)$/.exec(principal);
  return m ? m[1] : undefined;
}
