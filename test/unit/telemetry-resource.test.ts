// The Telemetry resource: validation with field paths, resolution mesh < namespace < workload (the
// most specific object sets each field, Istio's Telemetry inheritance), delivery on the compiled
// Workload and Waypoint, and what the waypoint does with it (sampling, access logs, B3).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace';
import { validateObject } from '../../lib/model/validate.ts';
import { compile, emptyInputs } from '../../controller/src/compile.ts';
import type { Telemetry as TelemetryObject } from '../../lib/model/objects.ts';
import { Telemetry, incomingTraceContext, outgoingTraceHeaders } from '../../waypoint/src/telemetry.ts';
import { AgentMetrics, accessLogSink, formatAccessLog } from '../../agent/src/metrics.ts';
import net from 'node:net';
import { once } from 'node:events';
import { AgentState } from '../../agent/src/state.ts';
import { Outbound } from '../../agent/src/outbound.ts';
import { DeniedError } from '../../agent/src/delivery.ts';
import { HbonePool } from '../../lib/hbone/index.ts';
import { silentLogger } from '../../lib/log.ts';
import { until as waitFor } from '../lab/wait.ts';
import type { TelemetrySettings, Workload } from '../../lib/model/mesh.ts';
import { pod, ns } from './controller-fixtures.ts';

const tel = (namespace: string, name: string, spec: TelemetryObject['spec'], created = '2026-01-01T00:00:00Z'): TelemetryObject =>
  ({ apiVersion: 'weft.dev/v1alpha1', kind: 'Telemetry', metadata: { name, namespace, creationTimestamp: created }, ...(spec ? { spec } : {}) });

test('bad Telemetry objects are refused naming the field', () => {
  const paths = (spec: unknown) => validateObject({ ...tel('shop', 't', undefined), spec }).map((i) => `${i.path}: ${i.message}`);
  assert.deepEqual(paths({ tracing: { randomSamplingPercentage: 1 } }), []);
  assert.match(paths({ tracing: { randomSamplingPercentage: 101 } })[0]!, /^spec\.tracing\.randomSamplingPercentage: 101 is above the maximum 100/);
  assert.match(paths({ tracing: { otlp: { endpoint: 'collector:4318' } } })[0]!, /^spec\.tracing\.otlp\.endpoint: .*not an http/);
  assert.match(paths({ tracing: { otlp: {} } })[0]!, /^spec\.tracing\.otlp\.endpoint/);
  assert.match(paths({ accessLogging: { encoding: 'XML' } })[0]!, /^spec\.accessLogging\.encoding/);
  assert.match(paths({ accessLogging: { disabled: 'yes' } })[0]!, /^spec\.accessLogging\.disabled/);
  assert.match(paths({ metrics: [] })[0]!, /^spec\.metrics: unknown field/);
});

test('resolution: workload selector > namespace > root namespace, field by field; default sampling 1 %', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), ns('other', { 'weft.dev/dataplane-mode': 'ambient' }));
  i.pods.push(pod('shop', 'web', { labels: { app: 'web' } }), pod('shop', 'db', { labels: { app: 'db' } }), pod('other', 'x'));
  i.telemetries.push(
    tel('weft-system', 'mesh', { tracing: { otlp: { endpoint: 'http://collector:4318/v1/traces' } } }),
    tel('shop', 'ns', { tracing: { randomSamplingPercentage: 10 }, accessLogging: { encoding: 'TEXT' } }),
    tel('shop', 'quiet-db', { selector: { matchLabels: { app: 'db' } }, accessLogging: { disabled: true } }),
  );
  i.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'waypoint', namespace: 'shop' } });
  const { model } = compile(i);
  const w = (uid: string) => model.workloads.get(uid)!.telemetry;
  assert.deepEqual(w('uid-other-x'), {
    sources: ['weft-system/mesh'],
    tracing: { otlpEndpoint: 'http://collector:4318/v1/traces', samplingPercentage: 1, disabled: false },
    accessLogging: { disabled: false, encoding: 'JSON' },
  });
  assert.deepEqual(w('uid-shop-web'), {
    sources: ['shop/ns', 'weft-system/mesh'],
    tracing: { otlpEndpoint: 'http://collector:4318/v1/traces', samplingPercentage: 10, disabled: false },
    accessLogging: { disabled: false, encoding: 'TEXT' },
  });
  assert.deepEqual(w('uid-shop-db')?.accessLogging, { disabled: true, encoding: 'TEXT' });
  assert.deepEqual(w('uid-shop-db')?.sources, ['shop/quiet-db', 'shop/ns', 'weft-system/mesh']);
  // The waypoint gets its namespace's settings (its pods match no app=db selector).
  assert.deepEqual(model.waypoints.get('shop/waypoint')?.telemetry?.sources, ['shop/ns', 'weft-system/mesh']);
  // No Telemetry at all: nothing on the model (the defaults apply).
  assert.equal(compile({ ...i, telemetries: [] }).model.workloads.get('uid-shop-web')!.telemetry, undefined);
});

test('a changed Telemetry reaches a cached workload (the compile cache keys on it)', async () => {
  const { CompileCache } = await import('../../controller/src/compile.ts');
  const cache = new CompileCache();
  const i = emptyInputs();
  i.pods.push(pod('shop', 'web'));
  compile(i, { cache });
  i.telemetries.push(tel('shop', 'ns', { accessLogging: { disabled: true } }));
  assert.equal(compile(i, { cache }).model.workloads.get('uid-shop-web')!.telemetry?.accessLogging.disabled, true);
});

test('waypoint: Telemetry settings switch access logs off and on, and set the encoding', () => {
  const lines: string[] = [];
  const t = new Telemetry({ accessLog: (l) => lines.push(l) });
  const rec = { startTime: Date.now(), durationMs: 1, method: 'GET', path: '/a', authority: 'svc', protocol: 'HTTP/1.1', grpc: false, responseCode: 200, responseFlags: '-', requestBytes: 0, responseBytes: 2, attempts: 1, requestId: 'r1' };
  t.record(rec, undefined);
  assert.equal(JSON.parse(lines[0]!).response_code, 200);
  t.configure({ sources: ['shop/x'], accessLogging: { disabled: true, encoding: 'JSON' } });
  t.record(rec, undefined);
  assert.equal(lines.length, 1, 'disabled: no line');
  t.configure({ sources: ['shop/x'], accessLogging: { disabled: false, encoding: 'TEXT' } });
  t.record(rec, undefined);
  assert.match(lines[1]!, /^\[\S+\] "GET \/a HTTP\/1\.1" 200 - /);
  t.configure(undefined);
  t.record(rec, undefined);
  assert.equal(JSON.parse(lines[2]!).path, '/a');
});

test('waypoint: new traces are sampled at the Telemetry percentage (0 % and 100 %), a caller\'s sampled flag always wins; spans are named after the route', async () => {
  const exporter = new InMemorySpanExporter();
  const t = new Telemetry({ accessLog: null, tracing: { exporter } });
  const none = () => undefined;
  const rec = (routeName?: string) => ({ startTime: Date.now(), durationMs: 1, method: 'GET', path: '/users/42?x=1', authority: 'svc', protocol: 'HTTP/2', grpc: false, responseCode: 200, responseFlags: '-', requestBytes: 0, responseBytes: 2, attempts: 1, requestId: 'r', ...(routeName ? { routeName } : {}) });
  t.configure({ sources: ['weft-system/mesh'], tracing: { samplingPercentage: 0, disabled: false }, accessLogging: { disabled: false, encoding: 'JSON' } });
  for (let i = 0; i < 20; i++) t.record(rec(), t.startTrace(none, 'GET', {}));
  assert.equal(exporter.getFinishedSpans().length, 0, '0 %: no new trace sampled');
  const parent = { traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' } as Record<string, string>;
  t.record(rec('shop/users'), t.startTrace((n) => parent[n], 'GET', {}));
  const spans = exporter.getFinishedSpans();
  assert.equal(spans.length, 1, 'the caller sampled it: recorded');
  assert.equal(spans[0]!.name, 'GET shop/users', 'named after the route, not /users/42');
  assert.equal(spans[0]!.attributes['network.protocol.version'], '2');
  t.configure({ sources: ['weft-system/mesh'], tracing: { samplingPercentage: 100, disabled: false }, accessLogging: { disabled: false, encoding: 'JSON' } });
  t.record(rec(), t.startTrace(none, 'GET', {}));
  assert.equal(exporter.getFinishedSpans().at(-1)!.name, 'GET', 'no route: the method alone');
  assert.equal(exporter.getFinishedSpans().length, 2);
  await t.shutdown();
});

test('trace context: W3C first, else B3 single or multi headers; both propagated upstream', () => {
  const h = (o: Record<string, string>) => (n: string) => o[n];
  assert.deepEqual(incomingTraceContext(h({ 'x-b3-traceid': '463ac35c9f6413ad', 'x-b3-spanid': 'a2fb4a1d1a96d312', 'x-b3-sampled': '1' })),
    { traceId: '0000000000000000463ac35c9f6413ad', parentSpanId: 'a2fb4a1d1a96d312', sampled: true });
  assert.deepEqual(incomingTraceContext(h({ b3: '80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90' })),
    { traceId: '80f198ee56343ba864fe8b2a57d3eff7', parentSpanId: 'e457b5a2e4d86bd1', sampled: true });
  assert.equal(incomingTraceContext(h({ 'x-b3-traceid': 'zz', 'x-b3-spanid': 'a2fb4a1d1a96d312' })), undefined, 'malformed B3 is ignored');
  assert.equal(incomingTraceContext(h({ traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00', 'x-b3-traceid': '463ac35c9f6413ad', 'x-b3-spanid': 'a2fb4a1d1a96d312' }))?.traceId, '4bf92f3577b34da6a3ce929d0e0e4736');
  const t = new Telemetry({ accessLog: null });
  const tc = t.startTrace(h({ 'x-b3-traceid': '463ac35c9f6413ad', 'x-b3-spanid': 'a2fb4a1d1a96d312', 'x-b3-sampled': '1' }), 'GET', {});
  const out = outgoingTraceHeaders(tc, true);
  assert.equal(out['x-b3-traceid'], '0000000000000000463ac35c9f6413ad');
  assert.equal(out['x-b3-parentspanid'], 'a2fb4a1d1a96d312');
  assert.notEqual(out['x-b3-spanid'], 'a2fb4a1d1a96d312', 'a span id of this hop');
  assert.equal(out['x-b3-sampled'], '1');
  assert.match(out['traceparent']!, /^00-0000000000000000463ac35c9f6413ad-[0-9a-f]{16}-01$/);
  assert.match(out['b3']!, /^0000000000000000463ac35c9f6413ad-[0-9a-f]{16}-1-a2fb4a1d1a96d312$/);
});

test('agent access log: JSON, or ztunnel-like text with key=value pairs', () => {
  const e = { time: '2026-01-01T00:00:00.000Z', msg: 'connection complete', 'src.addr': '10.0.0.1:5000', error: 'reset by peer', bytes_sent: 3, skipped: undefined };
  assert.deepEqual(JSON.parse(formatAccessLog(e)), { time: e.time, msg: e.msg, 'src.addr': '10.0.0.1:5000', error: 'reset by peer', bytes_sent: 3 });
  assert.equal(formatAccessLog(e, 'TEXT'), '2026-01-01T00:00:00.000Z info access connection complete src.addr=10.0.0.1:5000 error="reset by peer" bytes_sent=3');
});

test('agent TEXT access log: a value a peer chose (an HBONE refusal reason) with CR/LF, ESC, DEL or C1 controls stays one line, quoted, every control escaped (log injection, CWE-117)', () => {
  const e = { time: '2026-01-01T00:00:00.000Z', msg: 'connection complete', error: 'refused:\x1b]52;c;eA==\x07\u009b2J\x7f', reason: 'a\r\n2026-01-01T00:00:01.000Z info access forged' };
  const line = formatAccessLog(e, 'TEXT');
  assert.doesNotMatch(line, /[\x00-\x1f\x7f-\x9f]/, JSON.stringify(line));
  assert.equal(line, '2026-01-01T00:00:00.000Z info access connection complete error="refused:\\u001b]52;c;eA==\\u0007\\u009b2J\\u007f" reason="a\\r\\n2026-01-01T00:00:01.000Z info access forged"');
});

// The attack: a namespace's Telemetry names an endpoint of its choosing (a cloud metadata server, a
// service on the node's loopback); the node's agent, shared by every namespace and in the node's
// network, would POST access logs there. Istio lets a Telemetry name only the providers the mesh
// operator defined (MeshConfig extensionProviders; https://istio.io/latest/docs/tasks/observability/telemetry/);
// in Weft those are the endpoints the root namespace's Telemetries name.
test('a Telemetry outside the root namespace may name only an OTLP endpoint the root namespace names: another is refused at its field, does not apply, and is counted (Istio: providers come from the mesh config)', async () => {
  const { Registry } = await import('prom-client');
  const { Controller } = await import('../../controller/src/controller.ts');
  const { ConfigServer } = await import('../../controller/src/xds/server.ts');
  const { MemorySource } = await import('../../controller/src/sources/memory.ts');
  const { until } = await import('./controller-harness.ts');
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), ns('data', { 'weft.dev/dataplane-mode': 'ambient' }));
  i.pods.push(pod('shop', 'web', { labels: { app: 'web' } }), pod('data', 'db'));
  i.telemetries.push(
    tel('weft-system', 'mesh', { accessLogging: { otlp: { endpoint: 'http://collector.observability:4318/v1/logs' } } }),
    tel('weft-system', 'providers', { selector: { matchLabels: { none: 'none' } }, tracing: { otlp: { endpoint: 'http://tempo.observability:4318/v1/traces' } } }),
    tel('shop', 'exfil', { accessLogging: { encoding: 'TEXT', otlp: { endpoint: 'http://169.254.169.254/latest/api/token' } } }),
    tel('data', 'declared', { tracing: { otlp: { endpoint: 'http://tempo.observability:4318/v1/traces' } }, accessLogging: { otlp: { endpoint: 'http://collector.observability:4318/v1/logs' } } }),
  );
  const { model, findings } = compile(i);
  assert.deepEqual(findings.filter((f) => f.kind === 'Telemetry').map((f) => [`${f.namespace}/${f.name}`, f.path, f.reason]), [['shop/exfil', 'spec.accessLogging.otlp.endpoint', 'EndpointNotAllowed']]);
  assert.match(findings.find((f) => f.name === 'exfil')!.message, /"http:\/\/169\.254\.169\.254\/latest\/api\/token" is not one of the mesh's .*http:\/\/collector\.observability:4318\/v1\/logs/);
  const shop = model.workloads.get('uid-shop-web')!.telemetry!;
  assert.deepEqual(shop.sources, ['weft-system/mesh'], 'the refused Telemetry does not apply: the mesh level does');
  assert.equal(shop.accessLogging?.otlpEndpoint, 'http://collector.observability:4318/v1/logs');
  assert.deepEqual(model.workloads.get('uid-data-db')!.telemetry!.sources, ['data/declared', 'weft-system/mesh'], 'an endpoint the root namespace names is allowed');

  // In the controller: the status names the field, and the refusal is counted.
  const registry = new Registry();
  const source = new MemorySource([...i.namespaces, ...i.pods, ...i.telemetries]);
  const controller = new Controller({ source, configServer: new ConfigServer(), registry, debounceMs: 5 });
  try {
    await controller.start();
    await until('the refusal in status', () => source.statuses.get('Telemetry/shop/exfil')?.reason === 'EndpointNotAllowed');
    assert.equal(source.statuses.get('Telemetry/shop/exfil')!.path, 'spec.accessLogging.otlp.endpoint');
    assert.equal(source.statuses.get('Telemetry/data/declared')!.ok, true);
    const counted = (await registry.getSingleMetric('weft_controller_findings')!.get()).values;
    assert.ok(counted.some((v) => v.labels['kind'] === 'Telemetry' && v.labels['reason'] === 'EndpointNotAllowed' && v.value === 1), JSON.stringify(counted));
  } finally {
    await controller.stop();
  }
});

// The attack: namespace evil's Telemetry switches its own access log off, and its pod calls shop's
// pod on the same node. Only the source's agent sees such a connection (no tunnel, no second
// agent), so its one line is shop's inbound line as well; written under the source's settings alone,
// evil's Telemetry removed shop's record of the connection, the DENY naming shop's policy included
// (docs/SECURITY.md: every refusal is an access-log line naming the policy). Istio's sidecars log a
// connection once at each end, each under its own workload's Telemetry
// (https://istio.io/latest/docs/tasks/observability/telemetry/): a workload's settings are its own.
test('a Telemetry of namespace A cannot switch off the access log of B\'s pod: a same-node connection from A\'s pod is logged under B\'s settings too, allowed or denied', async () => {
  const server = net.createServer((c) => { c.on('error', () => {}); c.pipe(c); });
  server.listen(0, '127.0.0.2');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  const wl = (namespace: string, name: string, ip: string, logging?: Logging): Workload => ({
    uid: `${namespace}/${name}`, name, namespace, node: 'node1', nodeIp: '127.0.0.1', ip, serviceAccount: name,
    spiffeId: `spiffe://cluster.local/ns/${namespace}/sa/${name}`, labels: {}, enrolled: true, mode: 'PERMISSIVE', services: [],
    workloadName: name, canonicalService: name, canonicalRevision: 'latest', cluster: 'Kubernetes',
    ...(logging ? { telemetry: { sources: [`${namespace}/t`], accessLogging: logging } } : {}),
  }) as Workload;
  type Logging = TelemetrySettings['accessLogging'];
  const quiet: Logging = { disabled: true, encoding: 'JSON' };
  /** One connection from evil/client (127.0.0.1) to shop/db (127.0.0.2) on node1; the lines written and sent to OTLP. */
  const connect = async (src: Logging | undefined, dst: Logging | undefined, deny: boolean) => {
    const state = new AgentState('node1');
    state.apply({ node: 'node1', workloads: [wl('evil', 'client', '127.0.0.1', src), wl('shop', 'db', '127.0.0.2', dst)], services: [], policies: [], peerAuthentications: [], waypoints: [] });
    const lines: string[] = [];
    const otlp: Array<[string, string]> = [];
    const pool = new HbonePool();
    const o = new Outbound({
      node: 'node1', nodeIp: '127.0.0.1', state, pool, metrics: new AgentMetrics(),
      datapath: { originalDestination: () => ({ ip: '127.0.0.2', port, clientNetnsCookie: 7n }) },
      podIpOf: () => '127.0.0.1',
      certs: { get: () => Promise.reject(new Error('no certificates in this test')) },
      authorizer: {
        authorize: () => { if (deny) throw new DeniedError('no ALLOW policy matched', 403, 'shop/allow-web'); return undefined; },
        connectToPod: async (_w: Workload, p: number) => { const s = net.connect({ host: '127.0.0.2', port: p }); await once(s, 'connect'); return s; },
        track: () => undefined,
      } as never,
      log: silentLogger,
      accessLog: accessLogSink({ node: 'node1', write: (l) => lines.push(l), otlp: (endpoint, text) => otlp.push([endpoint, text]), publish: () => {} }),
    });
    await o.listen(0, '127.0.0.1');
    try {
      const sock = net.connect({ host: '127.0.0.1', port: (o.server.address() as net.AddressInfo).port, localAddress: '127.0.0.1' });
      sock.on('error', () => {});
      await once(sock, 'connect');
      sock.end('ping\n');
      sock.resume();
      await once(sock, 'close');
      await waitFor('the connection is done', () => o.active === 0, 5000);
    } finally {
      await o.close(0);
      pool.close(0);
    }
    return { lines, otlp };
  };
  try {
    // The attack, allowed and denied: evil's Telemetry turns its log off; shop's says nothing (the default: on).
    const allowed = await connect(quiet, undefined, false);
    assert.equal(allowed.lines.length, 1, 'shop\'s pod keeps its line of the connection (before: none)');
    const line = JSON.parse(allowed.lines[0]!);
    assert.deepEqual([line['src.namespace'], line['dst.namespace'], line['dst.workload']], ['evil', 'shop', 'db']);
    const denied = await connect(quiet, undefined, true);
    assert.equal(denied.lines.length, 1, 'the refusal keeps its access-log line naming shop\'s policy (before: none)');
    assert.equal(JSON.parse(denied.lines[0]!).response_flags, 'DENY');
    assert.match(JSON.parse(denied.lines[0]!).error, /no ALLOW policy matched/);
    // Each side's settings are its own: both off writes nothing; shop's off leaves evil's line; in two
    // encodings, a line in each; an OTLP endpoint (one the root namespace names) gets its own side's line.
    assert.deepEqual((await connect(quiet, quiet, false)).lines, []);
    assert.equal((await connect(undefined, quiet, false)).lines.length, 1);
    const two = await connect({ disabled: false, encoding: 'TEXT', otlpEndpoint: 'http://collector-a:4318/v1/logs' }, { disabled: false, encoding: 'JSON', otlpEndpoint: 'http://collector-b:4318/v1/logs' }, false);
    assert.equal(two.lines.length, 2);
    assert.match(two.lines[0]!, / info access connection complete /);
    assert.equal(JSON.parse(two.lines[1]!)['dst.workload'], 'db');
    assert.deepEqual(two.otlp.map(([e, t]) => [e, t.startsWith('{') ? 'JSON' : 'TEXT']), [['http://collector-a:4318/v1/logs', 'TEXT'], ['http://collector-b:4318/v1/logs', 'JSON']]);
    // Review of branch tc: shop's copy is its inbound line; what only the client knew (the address it
    // dialled, `dst.original`, and `via`) stays on the client's: a ztunnel's inbound line has neither.
    const clientOnly = ['dst.original', 'via'];
    for (const k of clientOnly) {
      assert.equal(k in JSON.parse(two.otlp[1]![1]), false, `${k} not in shop's OTLP copy`);
      assert.equal(k in JSON.parse(two.lines[1]!), false, `${k} not in shop's stdout line`);
      assert.equal(k in line, false, `${k} not in the line written for shop alone`);
    }
    assert.match(two.otlp[0]![1], /dst\.original=/, 'evil\'s own copy keeps them');
    // Second review of branch tc: shop's copy is its inbound line (docs/OBSERVABILITY.md), so it says
    // so, with the bytes as shop counts them (ztunnel's inbound line); it said "outbound".
    const theirs = JSON.parse(two.lines[1]!);
    const ours = JSON.parse(two.otlp[1]![1]);
    assert.equal(theirs.direction, 'inbound', 'shop\'s stdout line (before: outbound)');
    assert.equal(ours.direction, 'inbound', 'shop\'s OTLP copy');
    assert.equal(line.direction, 'inbound', 'the line written for shop alone');
    assert.match(two.otlp[0]![1], /direction=outbound/, 'evil\'s copy is its outbound line');
    assert.equal(line.bytes_recv, 5, 'shop received the client\'s 5 bytes');
    const both = await connect(undefined, undefined, false);
    assert.equal(both.lines.length, 1);
    assert.equal('dst.original' in JSON.parse(both.lines[0]!), true, 'one line for both in one encoding: the client\'s, whole');
  } finally {
    server.close();
  }
});
