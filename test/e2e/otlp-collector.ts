// A tiny OTLP/HTTP receiver (JSON encoding): our own test double of an OpenTelemetry collector,
// listening inside a lab network namespace so agents and waypoints reach it as they would a
// collector Service. It accepts POST /v1/traces and /v1/logs (ExportTraceServiceRequest /
// ExportLogsServiceRequest, OTLP spec "OTLP/HTTP"), answers 200 with an empty partial success, and
// keeps what it received for the test to read.
import { createServer, type Server } from 'node:http';
import { createSocketInNetns } from '../../agent/libbpf/index.ts';

type Attr = { key: string; value: Record<string, unknown> };
export interface ReceivedLog { resource: Record<string, unknown>; body: string; attributes: Record<string, unknown>; timeUnixNano: string }
export interface ReceivedSpan { resource: Record<string, unknown>; name: string; traceId: string; spanId: string; parentSpanId?: string; attributes: Record<string, unknown> }

const flat = (attrs: Attr[] | undefined): Record<string, unknown> =>
  Object.fromEntries((attrs ?? []).map((a) => [a.key, Object.values(a.value)[0]]));

export class OtlpCollector {
  readonly logs: ReceivedLog[] = [];
  readonly spans: ReceivedSpan[] = [];
  /** Requests that were not OTLP JSON (content type, path, or body), by reason. */
  readonly refused: string[] = [];
  readonly #server: Server;

  private constructor(server: Server) {
    this.#server = server;
  }

  /** Listens on `host:port` inside the network namespace at `netnsPath`. */
  static async start(netnsPath: string, host: string, port: number): Promise<OtlpCollector> {
    const c = new OtlpCollector(createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (b: Buffer) => chunks.push(b));
      req.on('end', () => {
        try {
          if (req.method !== 'POST' || !String(req.headers['content-type']).startsWith('application/json')) throw new Error(`${req.method} ${req.headers['content-type']}`);
          const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>;
          if (req.url === '/v1/logs') c.#logs(body);
          else if (req.url === '/v1/traces') c.#traces(body);
          else throw new Error(`path ${req.url}`);
          res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
        } catch (e) {
          c.refused.push((e as Error).message);
          res.writeHead(400).end();
        }
      });
    }));
    const fd = createSocketInNetns(netnsPath, { listen: { host, port, backlog: 64 } });
    await new Promise<void>((r) => c.#server.listen({ fd }, r));
    return c;
  }

  #logs(body: Record<string, unknown>): void {
    for (const rl of (body['resourceLogs'] ?? []) as Array<{ resource?: { attributes?: Attr[] }; scopeLogs?: Array<{ logRecords?: Array<{ body?: { stringValue?: string }; attributes?: Attr[]; timeUnixNano: string }> }> }>) {
      for (const sl of rl.scopeLogs ?? []) for (const r of sl.logRecords ?? []) {
        this.logs.push({ resource: flat(rl.resource?.attributes), body: r.body?.stringValue ?? '', attributes: flat(r.attributes), timeUnixNano: r.timeUnixNano });
      }
    }
  }

  #traces(body: Record<string, unknown>): void {
    for (const rs of (body['resourceSpans'] ?? []) as Array<{ resource?: { attributes?: Attr[] }; scopeSpans?: Array<{ spans?: Array<{ name: string; traceId: string; spanId: string; parentSpanId?: string; attributes?: Attr[] }> }> }>) {
      for (const ss of rs.scopeSpans ?? []) for (const s of ss.spans ?? []) {
        this.spans.push({ resource: flat(rs.resource?.attributes), name: s.name, traceId: s.traceId, spanId: s.spanId, ...(s.parentSpanId ? { parentSpanId: s.parentSpanId } : {}), attributes: flat(s.attributes) });
      }
    }
  }

  stop(): Promise<void> {
    return new Promise((r) => this.#server.close(() => r()));
  }
}
