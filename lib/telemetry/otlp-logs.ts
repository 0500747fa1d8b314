// Access logs over OTLP/HTTP (JSON encoding, OpenTelemetry protocol spec "OTLP/HTTP", signal
// logs: POST ExportLogsServiceRequest to the endpoint with content-type application/json), as
// Istio's `envoyOtelAls` provider sends them: the formatted line as the body, its fields as
// attributes. Entries are batched and sent one request at a time; the queue is bounded, so a slow
// or dead collector costs a bounded amount of memory and never slows the proxy: what does not fit
// (queue full) or cannot be delivered (collector error, timeout) is dropped and counted.
import { Counter, type Registry } from 'prom-client';

/** Entries held at most while waiting for the collector; more are dropped (`queue_full`). */
export const OTLP_LOG_MAX_QUEUE = 2048;
/** Entries per export request. */
export const OTLP_LOG_MAX_BATCH = 512;
/** How long an entry waits for a batch to fill before it is sent anyway. */
export const OTLP_LOG_FLUSH_INTERVAL_MS = 1_000;
/** How long one export request may take. */
export const OTLP_LOG_TIMEOUT_MS = 5_000;

/** Drops are logged at most this often per reason (the metric counts every one). */
export const OTLP_LOG_WARN_INTERVAL_MS = 30_000;

/** Why entries were dropped; the metric's `reason` label. */
export type OtlpLogDropReason = 'queue_full' | 'export_failed';

export interface OtlpLogExporterOptions {
  /** OTLP/HTTP logs URL, e.g. `http://otel-collector:4318/v1/logs`; a URL with no path gets `/v1/logs`. */
  endpoint: string;
  /** The resource's `service.name`. */
  serviceName: string;
  /** More resource attributes (`k8s.node.name`, ...). */
  resource?: Record<string, string>;
  /** Default OTLP_LOG_MAX_QUEUE. */
  maxQueue?: number;
  /** Default OTLP_LOG_MAX_BATCH. */
  maxBatch?: number;
  /** Default OTLP_LOG_FLUSH_INTERVAL_MS. */
  flushIntervalMs?: number;
  /** Default OTLP_LOG_TIMEOUT_MS. */
  timeoutMs?: number;
  onExported?: (count: number) => void;
  onDropped?: (reason: OtlpLogDropReason, count: number, error?: string) => void;
}

type AnyValue = { stringValue: string } | { intValue: string } | { doubleValue: number } | { boolValue: boolean };
interface KeyValue { key: string; value: AnyValue }
interface LogRecord {
  timeUnixNano: string;
  observedTimeUnixNano: string;
  severityNumber: number;
  severityText: string;
  body: { stringValue: string };
  attributes: KeyValue[];
}

/** A JSON value as an OTLP AnyValue (int64 as a decimal string, as proto3 JSON writes it). */
function anyValue(v: unknown): AnyValue {
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (typeof v === 'number') return Number.isInteger(v) ? { intValue: String(v) } : { doubleValue: v };
  if (typeof v === 'bigint') return { intValue: v.toString() };
  return { stringValue: JSON.stringify(v) };
}

export function otlpAttributes(fields: Record<string, unknown>): KeyValue[] {
  return Object.entries(fields).filter(([, v]) => v !== undefined && v !== null).map(([key, v]) => ({ key, value: anyValue(v) }));
}

/** The logs URL: as given, or `/v1/logs` on a bare `http://host:4318`. */
export function otlpLogsUrl(endpoint: string): string {
  const u = new URL(endpoint);
  if (u.pathname === '/' || u.pathname === '') u.pathname = '/v1/logs';
  return u.toString();
}

export class OtlpLogExporter {
  readonly url: string;
  readonly #o: OtlpLogExporterOptions;
  readonly #resource: KeyValue[];
  #queue: LogRecord[] = [];
  #timer: NodeJS.Timeout | undefined;
  #inflight: Promise<void> | undefined;
  #closed = false;

  constructor(o: OtlpLogExporterOptions) {
    this.#o = o;
    this.url = otlpLogsUrl(o.endpoint);
    this.#resource = otlpAttributes({ 'service.name': o.serviceName, ...o.resource });
  }

  /** Queues one entry: `body` is the formatted line, `fields` become its attributes. Never blocks. */
  emit(body: string, fields: Record<string, unknown>, timeMs = Date.now()): void {
    if (this.#closed) return;
    if (this.#queue.length >= (this.#o.maxQueue ?? OTLP_LOG_MAX_QUEUE)) {
      this.#o.onDropped?.('queue_full', 1);
      return;
    }
    const nanos = `${BigInt(Math.round(timeMs)) * 1_000_000n}`;
    this.#queue.push({ timeUnixNano: nanos, observedTimeUnixNano: nanos, severityNumber: 9, severityText: 'INFO', body: { stringValue: body }, attributes: otlpAttributes(fields) });
    if (this.#queue.length >= (this.#o.maxBatch ?? OTLP_LOG_MAX_BATCH)) this.#kick();
    else this.#timer ??= setTimeout(() => this.#kick(), this.#o.flushIntervalMs ?? OTLP_LOG_FLUSH_INTERVAL_MS).unref();
  }

  /** Entries waiting to be sent. */
  get queued(): number {
    return this.#queue.length;
  }

  /** Sends every queued entry now (in batches) and resolves when the collector has answered. */
  async flush(): Promise<void> {
    while (this.#queue.length > 0 || this.#inflight) {
      this.#kick();
      await this.#inflight;
    }
  }

  /** Flushes for up to `deadlineMs` (what is left then is dropped), then accepts no more entries. */
  async shutdown(deadlineMs = OTLP_LOG_TIMEOUT_MS): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.flush(), new Promise<void>((r) => { timer = setTimeout(r, deadlineMs); })]);
    clearTimeout(timer);
    this.#closed = true;
    clearTimeout(this.#timer);
    if (this.#queue.length > 0) this.#o.onDropped?.('export_failed', this.#queue.splice(0).length, 'shut down before the collector took them');
  }

  #kick(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#inflight || this.#queue.length === 0) return;
    const batch = this.#queue.splice(0, this.#o.maxBatch ?? OTLP_LOG_MAX_BATCH);
    this.#inflight = this.#send(batch).finally(() => {
      this.#inflight = undefined;
      if (this.#queue.length >= (this.#o.maxBatch ?? OTLP_LOG_MAX_BATCH)) this.#kick();
      else if (this.#queue.length > 0 && !this.#closed) this.#timer ??= setTimeout(() => this.#kick(), this.#o.flushIntervalMs ?? OTLP_LOG_FLUSH_INTERVAL_MS).unref();
    });
  }

  async #send(batch: LogRecord[]): Promise<void> {
    const body = JSON.stringify({ resourceLogs: [{ resource: { attributes: this.#resource }, scopeLogs: [{ scope: { name: 'weft.access_log' }, logRecords: batch }] }] });
    try {
      const res = await fetch(this.url, { method: 'POST', headers: { 'content-type': 'application/json' }, body, signal: AbortSignal.timeout(this.#o.timeoutMs ?? OTLP_LOG_TIMEOUT_MS) });
      const text = await res.text();
      if (!res.ok) throw new Error(`collector answered ${res.status} ${text.slice(0, 200)}`);
      // OTLP partial success: the collector names how many it refused.
      let rejected = 0;
      try {
        rejected = Number((JSON.parse(text || '{}') as { partialSuccess?: { rejectedLogRecords?: string | number } }).partialSuccess?.rejectedLogRecords ?? 0) || 0;
      } catch {
        /* an empty or non-JSON 200 is a full success */
      }
      if (rejected > 0) this.#o.onDropped?.('export_failed', rejected, 'partial success');
      if (batch.length - rejected > 0) this.#o.onExported?.(batch.length - rejected);
    } catch (e) {
      this.#o.onDropped?.('export_failed', batch.length, (e as Error).message);
    }
  }
}

/** One exporter per endpoint (an agent's workloads may each name their own collector). */
export class OtlpLogExporters {
  readonly #o: Omit<OtlpLogExporterOptions, 'endpoint'>;
  readonly #by = new Map<string, OtlpLogExporter>();

  constructor(o: Omit<OtlpLogExporterOptions, 'endpoint'>) {
    this.#o = o;
  }

  get(endpoint: string): OtlpLogExporter {
    let e = this.#by.get(endpoint);
    if (!e) this.#by.set(endpoint, (e = new OtlpLogExporter({ ...this.#o, endpoint })));
    return e;
  }

  async flush(): Promise<void> {
    await Promise.all([...this.#by.values()].map((e) => e.flush()));
  }

  async shutdown(deadlineMs?: number): Promise<void> {
    await Promise.all([...this.#by.values()].map((e) => e.shutdown(deadlineMs)));
  }
}

/**
 * weft_access_log_otlp_exported_total and weft_access_log_otlp_dropped_total{reason} in
 * `registry`, as the callbacks an exporter takes.
 */
export function otlpLogMetrics(registry: Registry, warn?: (msg: string, fields: Record<string, unknown>) => void): Pick<OtlpLogExporterOptions, 'onExported' | 'onDropped'> {
  const registers = [registry];
  const exported = new Counter({ name: 'weft_access_log_otlp_exported_total', help: 'Access-log entries the OTLP collector accepted', registers });
  const dropped = new Counter({
    name: 'weft_access_log_otlp_dropped_total',
    help: 'Access-log entries not delivered over OTLP, by reason (queue_full: the collector is slower than the traffic; export_failed: an error, timeout or refusal)',
    labelNames: ['reason'],
    registers,
  });
  for (const reason of ['queue_full', 'export_failed'] satisfies OtlpLogDropReason[]) dropped.inc({ reason }, 0);
  // Logged at most once per OTLP_LOG_WARN_INTERVAL_MS and reason, with the count since the last line.
  const last = new Map<string, { at: number; count: number }>();
  return {
    onExported: (n) => exported.inc(n),
    onDropped: (reason, n, error) => {
      dropped.inc({ reason }, n);
      if (!warn) return;
      const l = last.get(reason) ?? { at: 0, count: 0 };
      l.count += n;
      last.set(reason, l);
      if (Date.now() - l.at < OTLP_LOG_WARN_INTERVAL_MS) return;
      warn('access-log entries not delivered over OTLP', { reason, dropped: l.count, ...(error ? { error } : {}) });
      l.at = Date.now();
      l.count = 0;
    },
  };
}
