import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace';
import { after, before, describe, it } from 'node:test';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import {
  backend, config, echo, endpoint, match, metricSamples, request, route, service, startHttpBackend, startTunnelListener, trafficPolicy,
  type Backend, type Listener,
} from '../../waypoint/testing/harness.ts';

describe('config application', () => {
  let v1: Backend;
  let v2: Backend;
  let engine: WaypointEngine;
  let listener: Listener;
  const services = () => [
    service('reviews', '10.96.0.10', [endpoint(v1.port)]),
    service('reviews-v2', '10.96.0.12', [endpoint(v2.port)]),
  ];

  before(async () => {
    v1 = await startHttpBackend(echo('v1'));
    v2 = await startHttpBackend(echo('v2'));
    engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    listener = await startTunnelListener(engine, '10.96.0.10:80');
  });

  after(async () => {
    await listener.close();
    await engine.close();
    await v1.close();
    await v2.close();
  });

  it('answers 404 for every host before the first configuration', async () => {
    assert.equal((await request(listener.port)).status, 404);
  });

  it('swaps routes atomically when a new configuration is applied', async () => {
    const a = engine.applyConfig(config({ services: services() }));
    assert.equal(a.version, 1);
    assert.equal(JSON.parse((await request(listener.port)).body).backend, 'v1');
    const b = engine.applyConfig(config({ services: services(), routes: [route('to-v2', 'reviews', [{ backends: [backend('reviews-v2')] }])] }));
    assert.equal(b.version, 2);
    assert.equal(JSON.parse((await request(listener.port)).body).backend, 'v2');
  });

  it('a bad object costs only itself: it is left out and named, while a new DENY policy and an endpoint change in the same config take effect', async () => {
    const bad = config({
      // The endpoint of reviews changes to v2's backend in the same config as the bad objects.
      services: [service('reviews', '10.96.0.10', [endpoint(v2.port)]), service('reviews-v2', '10.96.0.12', [endpoint(v2.port)])],
      routes: [route('broken', 'reviews', [{ matches: [match({ path: { type: 'RegularExpression', value: '/(unclosed' } })], backends: [backend('reviews')] }])],
      trafficPolicies: [trafficPolicy('reviews', { retries: { attempts: 2, retryOn: ['sometimes'] } })],
      policies: [{ name: 'no-private', namespace: 'shop', action: 'DENY', scope: 'service', targetServices: ['shop/reviews'], rules: [{ from: [], to: [{ paths: ['/private'] }], when: [], layer: 'L7' }], layer: 'L7' }],
    });
    const applied = engine.applyConfig(bad);
    assert.equal(applied.version, 3);
    assert.deepEqual(applied.issues.map((i) => `${i.kind} ${i.object}: ${i.path}`).sort(), [
      'HTTPRoute shop/broken: rules[0].matches[0].path.value',
      'TrafficPolicy shop/reviews-tp: retries.retryOn[0]',
    ]);
    assert.match(applied.issues.find((i) => i.kind === 'TrafficPolicy')!.message, /unknown retry condition "sometimes"/);
    assert.equal((await request(listener.port, { path: '/private' })).status, 403, 'the new DENY policy is enforced');
    assert.equal(JSON.parse((await request(listener.port)).body).backend, 'v2', 'the endpoint change took effect');
    const applies = await metricSamples(engine, 'weft_waypoint_config_applies_total');
    assert.deepEqual(applies.map((s) => [s.labels['result'], s.value]).sort(), [['applied', 2], ['partial', 1]]);
    assert.equal(engine.configIssues.length, 2);
  });

  // Node.js runs a timer longer than 2^31-1 ms after 1 ms: a 600h timeout would answer 504 at once.
  // The controller refuses such durations; a waypoint given one anyway (a version skew) leaves the
  // object out, named, instead of arming it.
  it('leaves out a route or TrafficPolicy whose timeout Node.js cannot time (over 2^31-1 ms), naming the field', () => {
    const cfg = engine.config;
    try {
      const applied = engine.applyConfig(config({
        services: [service('reviews', '10.96.0.10', [endpoint(v2.port)])],
        routes: [{ ...route('slow', 'reviews', [{ backends: [backend('reviews')] }]), rules: [{ matches: [], filters: [], backends: [backend('reviews')], timeouts: { requestMs: 600 * 3_600_000 } }] }],
        trafficPolicies: [trafficPolicy('reviews', { timeouts: { connectMs: 1000, requestMs: 2 ** 31 } })],
      }));
      assert.deepEqual(applied.issues.map((i) => `${i.kind} ${i.object}: ${i.path}`).sort(), [
        'HTTPRoute shop/slow: rules[0].timeouts.requestMs',
        'TrafficPolicy shop/reviews-tp: timeouts.requestMs',
      ]);
    } finally {
      engine.applyConfig(cfg);
    }
  });

  it('accepts a route to a service the configuration lacks: only requests routed there get 500, weight 0 gets nothing (Gateway API)', async () => {
    engine.applyConfig(config({
      services: services(),
      routes: [route('r', 'reviews', [
        { matches: [match({ path: { type: 'PathPrefix', value: '/ghost' } })], backends: [backend('ghost')] },
        { backends: [backend('reviews'), backend('ghost', 0)] },
      ])],
    }));
    assert.deepEqual(engine.configIssues, [], 'nothing is left out for it');
    const ghost = await request(listener.port, { path: '/ghost/x' });
    assert.equal(ghost.status, 500);
    assert.match(ghost.body, /backend service shop\/ghost is unknown/);
    const rest = await Promise.all(Array.from({ length: 20 }, () => request(listener.port, { path: '/page' })));
    assert.deepEqual([...new Set(rest.map((r) => r.status))], [200]);
  });

  it('leaves out a second Service claiming a taken address; the first keeps it', async () => {
    const applied = engine.applyConfig(config({ services: [...services(), service('dup', '10.96.0.10', [])] }));
    assert.match(applied.issues.map((i) => `${i.kind} ${i.object}: ${i.path}: ${i.message}`).join('\n'), /Service shop\/dup: vips: address 10\.96\.0\.10 is also claimed by shop\/reviews/);
    assert.equal(JSON.parse((await request(listener.port)).body).backend, 'v1');
  });

  it('rejects a structurally broken configuration', () => {
    assert.throws(() => engine.applyConfig({ namespace: 'shop' } as never), /WaypointConfig -: services: must be an array/);
  });

  it('keeps endpoint health across a configuration update', async () => {
    const bad = await startHttpBackend((_q, res) => { res.writeHead(500); res.end(); });
    try {
      const cfg = config({
        services: [service('reviews', '10.96.0.10', [endpoint(v1.port), endpoint(bad.port)])],
        trafficPolicies: [trafficPolicy('reviews', { retries: { attempts: 0, retryOn: [] }, outlierDetection: { consecutive5xx: 1, intervalMs: 1000, baseEjectionTimeMs: 60_000, maxEjectionPercent: 50 } })],
      });
      engine.applyConfig(cfg);
      for (let i = 0; i < 4; i++) await request(listener.port);
      engine.applyConfig(cfg);
      const stats = engine.clusterStats().find((c) => c.service === 'shop/reviews:80')!;
      assert.equal(stats.endpoints.find((e) => e.address.endsWith(`:${bad.port}`))?.ejected, true);
    } finally {
      await bad.close();
    }
  });
});

describe('telemetry', () => {
  let b: Backend;
  let engine: WaypointEngine;
  let listener: Listener;
  const lines: string[] = [];
  const exporter = new InMemorySpanExporter();
  const otlpBodies: Buffer[] = [];
  let collector: http.Server;

  before(async () => {
    collector = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => { if (req.url === '/v1/traces') otlpBodies.push(Buffer.concat(chunks)); res.writeHead(200, { 'content-type': 'application/json' }); res.end('{}'); });
    });
    await new Promise<void>((r) => collector.listen(0, '127.0.0.1', r));
    b = await startHttpBackend(echo('b'));
    engine = new WaypointEngine({
      namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(),
      telemetry: {
        accessLog: (l) => lines.push(l),
        tracing: { exporter, endpoint: `http://127.0.0.1:${(collector.address() as AddressInfo).port}/v1/traces`, serviceName: 'waypoint-test' },
      },
    });
    engine.applyConfig(config({ services: [service('reviews', '10.96.0.10', [endpoint(b.port)])] }));
    listener = await startTunnelListener(engine, '10.96.0.10:80');
  });

  after(async () => {
    await listener.close();
    await engine.close();
    await b.close();
    collector.close();
  });

  it('continues the caller trace with a new span id and exports the span', async () => {
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const parent = '00f067aa0ba902b7';
    const r = await request(listener.port, { path: '/traced', headers: { traceparent: `00-${traceId}-${parent}-01`, tracestate: 'k=v' } });
    const upstream = JSON.parse(r.body).headers;
    const [, tid, sid, flags] = (upstream.traceparent as string).split('-');
    assert.equal(tid, traceId);
    assert.notEqual(sid, parent);
    assert.equal(flags, '01');
    assert.equal(upstream.tracestate, 'k=v');
    await delay(20);
    const span = exporter.getFinishedSpans().find((s) => s.spanContext().traceId === traceId);
    assert.ok(span);
    assert.equal(span.spanContext().spanId, sid);
    assert.equal(span.parentSpanContext?.spanId, parent);
    assert.equal(span.attributes['http.response.status_code'], 200);
    await engine.telemetry.flush();
    assert.ok(otlpBodies.length > 0, 'spans were posted to the OTLP/HTTP endpoint');
    assert.ok(otlpBodies.some((body) => body.includes(Buffer.from(traceId, 'hex')) || body.toString().includes(traceId)));
  });

  it('writes one JSON access-log line per request', async () => {
    lines.length = 0;
    await request(listener.port, { path: '/logged?x=1', headers: { 'user-agent': 'probe/1' } });
    await request(listener.port, { method: 'DELETE', path: '/other' });
    assert.equal(lines.length, 2);
    const first = JSON.parse(lines[0]!);
    assert.equal(first.method, 'GET');
    assert.equal(first.path, '/logged?x=1');
    assert.equal(first.response_code, 200);
    assert.equal(first.response_flags, '-');
    assert.equal(first.source_principal, 'spiffe://cluster.local/ns/shop/sa/tester');
    assert.equal(first.destination_service, 'reviews.shop.svc.cluster.local');
    assert.equal(first.upstream_host, `127.0.0.1:${b.port}`);
    assert.equal(first.protocol, 'HTTP/1.1');
    assert.match(first.trace_id, /^[0-9a-f]{32}$/);
    assert.equal(first.waypoint, 'shop/waypoint');
    assert.equal(JSON.parse(lines[1]!).method, 'DELETE');
  });

  it('records a client that hangs up before the answer with code 0 and flag DC', async () => {
    const slow = await startHttpBackend((req, res) => { setTimeout(() => echo('slow')(req, res), 300); });
    engine.applyConfig(config({ services: [service('reviews', '10.96.0.10', [endpoint(b.port)]), service('slow', '10.96.0.30', [endpoint(slow.port)])] }));
    const slowListener = await startTunnelListener(engine, '10.96.0.30:80');
    lines.length = 0;
    await new Promise<void>((resolve) => {
      const req = http.request({ host: '127.0.0.1', port: slowListener.port, path: '/hangup', headers: { host: 'slow.shop.svc.cluster.local' } });
      req.on('error', () => resolve());
      req.end();
      // A reset, not a FIN: an HTTP/1.1 half-close still lets the response be delivered.
      setTimeout(() => { req.socket?.resetAndDestroy(); resolve(); }, 50);
    });
    for (let i = 0; i < 50 && lines.length === 0; i++) await delay(10);
    await slowListener.close();
    await slow.close();
    const entry = JSON.parse(lines[0]!);
    assert.equal(entry.path, '/hangup');
    assert.equal(entry.response_code, 0);
    assert.equal(entry.response_flags, 'DC');
  });

  it('records request counts, durations and sizes with Istio labels', async () => {
    await request(listener.port, { method: 'POST', path: '/sized', body: 'x'.repeat(1000) });
    const total = await metricSamples(engine, 'istio_requests_total');
    const s = total.find((v) => v.labels['response_code'] === '200')!;
    // Istio's standard labels: the caller from its tunnel's baggage, the destination from the
    // endpoint's workload in the model.
    assert.equal(s.labels['source_workload'], 'tester');
    assert.equal(s.labels['source_workload_namespace'], 'shop');
    assert.equal(s.labels['source_canonical_service'], 'tester-app');
    assert.equal(s.labels['source_canonical_revision'], 'v1');
    assert.equal(s.labels['source_app'], 'tester-app');
    assert.equal(s.labels['source_version'], 'v1');
    assert.equal(s.labels['source_cluster'], 'Kubernetes');
    assert.equal(s.labels['source_principal'], 'spiffe://cluster.local/ns/shop/sa/tester');
    assert.equal(s.labels['destination_workload'], `pod-${b.port}`);
    assert.equal(s.labels['destination_workload_namespace'], 'shop');
    assert.equal(s.labels['destination_service'], 'reviews.shop.svc.cluster.local');
    assert.equal(s.labels['destination_service_name'], 'reviews');
    assert.equal(s.labels['destination_service_namespace'], 'shop');
    assert.equal(s.labels['connection_security_policy'], 'mutual_tls');
    assert.equal(s.labels['request_protocol'], 'http');
    assert.equal(s.labels['reporter'], 'waypoint');
    const text = await engine.telemetry.registry.metrics();
    assert.match(text, /istio_request_duration_milliseconds_bucket\{/);
    assert.match(text, /istio_request_bytes_sum\{[^}]*response_code="200"[^}]*\} 1000/);
  });
});
