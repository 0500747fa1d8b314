// Access logs over OTLP/HTTP JSON (lib/telemetry/otlp-logs.ts) against a small OTLP/HTTP receiver:
// batched, one request at a time, a bounded queue whose overflow is dropped and counted, collector
// failures counted, the OTLP JSON shape (resourceLogs/scopeLogs/logRecords, int64 as strings); the
// waypoint's Telemetry sends its access log where its Telemetry settings say.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Registry } from 'prom-client';
import { OtlpLogExporter, otlpLogMetrics, otlpLogsUrl } from '../../lib/telemetry/otlp-logs.ts';
import { Telemetry } from '../../waypoint/src/telemetry.ts';

interface Export { resourceLogs: Array<{ resource: { attributes: Array<{ key: string; value: Record<string, unknown> }> }; scopeLogs: Array<{ logRecords: Array<{ timeUnixNano: string; body: { stringValue: string }; attributes: Array<{ key: string; value: Record<string, unknown> }> }> }> }> }

/** A collector: records each request; `status` and `hold` let a test make it fail or stall. */
async function collector() {
  const requests: Array<{ path: string; type: string; body: Export }> = [];
  let status = 200;
  let hold: Promise<void> | undefined;
  const srv = createServer((req: IncomingMessage, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', async () => {
      await hold;
      requests.push({ path: req.url ?? '', type: req.headers['content-type'] ?? '', body: JSON.parse(Buffer.concat(chunks).toString()) as Export });
      res.writeHead(status, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  after(() => srv.close());
  return {
    url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`,
    requests,
    records: () => requests.flatMap((r) => r.body.resourceLogs.flatMap((l) => l.scopeLogs.flatMap((s) => s.logRecords))),
    setStatus(s: number) { status = s; },
    stall() { let release!: () => void; hold = new Promise((r) => { release = r; }); return () => { hold = undefined; release(); }; },
  };
}

async function counters(reg: Registry): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const l of (await reg.metrics()).split('\n')) {
    const m = /^(weft_access_log_otlp_\w+?)(?:\{reason="(\w+)"\})? (\d+)$/.exec(l);
    if (m) out[m[2] ? `${m[1]}:${m[2]}` : m[1]!] = Number(m[3]);
  }
  return out;
}

test('a bare collector URL gets /v1/logs, a full one is kept', () => {
  assert.equal(otlpLogsUrl('http://c:4318'), 'http://c:4318/v1/logs');
  assert.equal(otlpLogsUrl('http://c:4318/custom/logs'), 'http://c:4318/custom/logs');
});

test('entries are sent in batches as OTLP/HTTP JSON, with the line as body and the fields as attributes', async () => {
  const c = await collector();
  const reg = new Registry();
  const e = new OtlpLogExporter({ endpoint: c.url, serviceName: 'weft-agent', resource: { 'k8s.node.name': 'node1' }, maxBatch: 3, flushIntervalMs: 60_000, ...otlpLogMetrics(reg) });
  for (let i = 0; i < 7; i++) e.emit(`line ${i}`, { 'src.addr': `10.0.0.${i}:1`, bytes_sent: i, ratio: 0.5, ok: true, skipped: undefined }, 1_700_000_000_123);
  await e.flush();
  assert.deepEqual(c.requests.map((r) => r.body.resourceLogs[0]!.scopeLogs[0]!.logRecords.length), [3, 3, 1], 'full batches go at once, the rest on flush');
  assert.equal(c.requests[0]!.path, '/v1/logs');
  assert.equal(c.requests[0]!.type, 'application/json');
  assert.deepEqual(c.requests[0]!.body.resourceLogs[0]!.resource.attributes, [
    { key: 'service.name', value: { stringValue: 'weft-agent' } }, { key: 'k8s.node.name', value: { stringValue: 'node1' } }]);
  const r = c.records()[2]!;
  assert.equal(r.body.stringValue, 'line 2');
  assert.equal(r.timeUnixNano, '1700000000123000000');
  assert.deepEqual(r.attributes, [
    { key: 'src.addr', value: { stringValue: '10.0.0.2:1' } }, { key: 'bytes_sent', value: { intValue: '2' } },
    { key: 'ratio', value: { doubleValue: 0.5 } }, { key: 'ok', value: { boolValue: true } }]);
  assert.deepEqual(await counters(reg), { weft_access_log_otlp_exported_total: 7, 'weft_access_log_otlp_dropped_total:queue_full': 0, 'weft_access_log_otlp_dropped_total:export_failed': 0 });
});

test('a stalled collector: one request in flight, the queue stays bounded and the overflow is dropped and counted', async () => {
  const c = await collector();
  const release = c.stall();
  const reg = new Registry();
  const e = new OtlpLogExporter({ endpoint: c.url, serviceName: 's', maxBatch: 10, maxQueue: 50, flushIntervalMs: 10, ...otlpLogMetrics(reg) });
  const started = process.hrtime.bigint();
  for (let i = 0; i < 1000; i++) e.emit('x', { i });
  assert.ok(Number(process.hrtime.bigint() - started) / 1e6 < 500, 'emitting never waits for the collector');
  assert.ok(e.queued <= 50, `queue bounded (${e.queued})`);
  release();
  await e.flush();
  const n = await counters(reg);
  assert.equal(n.weft_access_log_otlp_exported_total! + n['weft_access_log_otlp_dropped_total:queue_full']!, 1000, 'every entry is delivered or counted as dropped');
  assert.ok(n['weft_access_log_otlp_dropped_total:queue_full']! >= 900, JSON.stringify(n));
  assert.equal(c.records().length, n.weft_access_log_otlp_exported_total);
});

test('a collector that refuses or is gone: entries counted as export_failed, with a warning', async () => {
  const c = await collector();
  c.setStatus(503);
  const reg = new Registry();
  const warnings: Array<Record<string, unknown>> = [];
  const e = new OtlpLogExporter({ endpoint: c.url, serviceName: 's', ...otlpLogMetrics(reg, (_m, f) => warnings.push(f)) });
  e.emit('a', {});
  e.emit('b', {});
  await e.flush();
  const gone = new OtlpLogExporter({ endpoint: 'http://127.0.0.1:1/v1/logs', serviceName: 's', timeoutMs: 2_000, ...otlpLogMetrics(new Registry()) });
  gone.emit('c', {});
  await gone.flush();
  assert.equal((await counters(reg))['weft_access_log_otlp_dropped_total:export_failed'], 2);
  assert.equal(warnings[0]!.reason, 'export_failed');
  assert.match(String(warnings[0]!.error), /503/);
});

test('the waypoint sends its access log to the collector its Telemetry settings name, and stops when they say disabled', async () => {
  const c = await collector();
  const lines: string[] = [];
  const t = new Telemetry({ accessLog: (l) => lines.push(l), waypoint: 'shop/waypoint' });
  const rec = { startTime: Date.now(), method: 'GET', path: '/a', protocol: 'HTTP/1.1', responseCode: 200, responseFlags: '-', detail: 'via_upstream', requestBytes: 0, responseBytes: 5, durationMs: 1, attempts: 1 };
  t.configure({ sources: ['istio-system/mesh-default'], accessLogging: { disabled: false, encoding: 'JSON', otlpEndpoint: `${c.url}/v1/logs` } });
  t.record(rec as never, undefined);
  await t.flush();
  assert.equal(c.records().length, 1);
  assert.equal(c.records()[0]!.body.stringValue, lines[0]);
  assert.ok(c.records()[0]!.attributes.some((a) => a.key === 'path' && a.value.stringValue === '/a'));
  assert.deepEqual(c.requests[0]!.body.resourceLogs[0]!.resource.attributes[0], { key: 'service.name', value: { stringValue: 'waypoint.shop' } });
  t.configure({ sources: ['istio-system/mesh-default'], accessLogging: { disabled: true, encoding: 'JSON', otlpEndpoint: `${c.url}/v1/logs` } });
  t.record(rec as never, undefined);
  await t.flush();
  assert.equal(c.records().length, 1);
  await t.shutdown();
});
