import assert from 'node:assert/strict';
import http from 'node:http';
import { setTimeout as delay } from 'node:timers/promises';
import { after, afterEach, describe, it } from 'node:test';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { Cluster, OVERFLOW, clusterSettings } from '../../waypoint/src/resilience.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import {
  config, echo, endpoint, metricSamples, request, service, startHttpBackend, startTunnelListener, trafficPolicy,
  type Backend, type Listener,
} from '../../waypoint/testing/harness.ts';

/** A per-cluster counter's value for shop/reviews:80. */
async function clusterCounter(engine: WaypointEngine, name: string): Promise<number | undefined> {
  return (await metricSamples(engine, name)).find((v) => v.labels['cluster'] === 'shop/reviews:80')?.value;
}

describe('waypoint resilience', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => { for (const c of cleanups.splice(0).reverse()) await c(); });
  after(async () => { for (const c of cleanups.splice(0).reverse()) await c(); });

  async function setup(backends: Backend[], tp: Parameters<typeof trafficPolicy>[1]): Promise<{ engine: WaypointEngine; listener: Listener }> {
    const engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    engine.applyConfig(config({
      services: [service('reviews', '10.96.0.10', backends.map((b) => endpoint(b.port)))],
      trafficPolicies: [trafficPolicy('reviews', tp)],
    }));
    const listener = await startTunnelListener(engine, '10.96.0.10:80');
    cleanups.push(async () => { await listener.close(); await engine.close(); for (const b of backends) await b.close(); });
    return { engine, listener };
  }

  it('hides a backend that fails every other request behind retries', async () => {
    const flaky = await startHttpBackend((req, res, n) => {
      if (n % 2 === 1) { res.writeHead(503); res.end('flaky'); return; }
      echo('flaky')(req, res);
    });
    const { engine, listener } = await setup([flaky], { retries: { attempts: 3, retryOn: ['5xx'] } });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
    const replies = [];
    for (let i = 0; i < 100; i++) replies.push(await request(listener.port, { agent }));
    agent.destroy();
    assert.deepEqual([...new Set(replies.map((r) => r.status))], [200]);
    assert.ok(flaky.hits >= 200, `backend saw ${flaky.hits} attempts`);
    const stats = engine.clusterStats()[0]!;
    assert.ok(stats.retries >= 100, `retries ${stats.retries}`);
  });

  // Istio's HTTPRetry without retryOn retries "connect-failure,refused-stream,unavailable,cancelled,
  // retriable-status-codes" with 503 (the default it gives every route), never a 500: a POST the
  // backend failed while doing it is not sent again. A TrafficPolicy's retries without retryOn
  // (compiled to an empty list) are the same.
  it('retries without retryOn are Istio\'s: a 503 is retried, a 500 to a POST is not', async () => {
    const tp = { retries: { attempts: 2, retryOn: [] as string[] } };
    assert.deepEqual(clusterSettings(trafficPolicy('reviews', tp)).retries.retryOn, ['connect-failure', 'refused-stream', 'unavailable', 'cancelled', '503']);
    const statusOf = new Map<string, number>([['/500', 500], ['/503', 503]]);
    const seen: string[] = [];
    const b = await startHttpBackend((req, res) => {
      seen.push(req.url!);
      req.resume();
      const n = seen.filter((u) => u === req.url).length;
      res.writeHead(n === 1 ? statusOf.get(req.url!)! : 200);
      res.end();
    });
    const { listener } = await setup([b], tp);
    assert.equal((await request(listener.port, { method: 'POST', path: '/500', body: 'order' })).status, 500);
    assert.equal((await request(listener.port, { method: 'POST', path: '/503', body: 'order' })).status, 200);
    assert.deepEqual(seen, ['/500', '/503', '/503']);
  });

  it('replays the request body on a retry', async () => {
    const bodies: string[] = [];
    const failsFirst = await startHttpBackend((req, res, n) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        bodies.push(Buffer.concat(chunks).toString());
        if (n === 1) { res.writeHead(503); res.end(); return; }
        res.writeHead(200);
        res.end('ok');
      });
    });
    const { listener } = await setup([failsFirst], { retries: { attempts: 2, retryOn: ['503'] } });
    const payload = 'x'.repeat(100_000);
    const r = await request(listener.port, { method: 'POST', body: payload, headers: { 'content-type': 'text/plain' } });
    assert.equal(r.status, 200);
    assert.deepEqual(bodies.map((b) => b.length), [100_000, 100_000]);
    assert.equal(bodies[1], payload);
  });

  // Each request keeps up to 1 MiB of its body to replay it (Envoy buffers a retried body the same
  // way, up to its buffer limit). Clients sending many large bodies to a slow endpoint must not make
  // the waypoint keep requests x 1 MiB: the bodies share a budget, and one past it is served as
  // usual but not kept (so not retried), counted.
  it('bodies kept for retries share the waypoint\'s replay budget: past it a body is not kept, counted, and the bytes come back', async () => {
    const held: Array<() => void> = [];
    const attempts = new Map<string, number>();
    const b = await startHttpBackend((req, res) => {
      const id = String(req.headers['x-id']);
      attempts.set(id, (attempts.get(id) ?? 0) + 1);
      req.resume();
      req.on('end', () => {
        // First attempts wait (so their bodies stay kept), then fail with a retriable 503.
        if (attempts.get(id) === 1) held.push(() => { res.writeHead(503); res.end(); });
        else { res.writeHead(200); res.end('ok'); }
      });
    });
    const engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null }, replayBudgetBytes: 250_000 });
    engine.applyConfig(config({
      services: [service('reviews', '10.96.0.10', [endpoint(b.port)])],
      trafficPolicies: [trafficPolicy('reviews', { retries: { attempts: 1, retryOn: ['503'] } })],
    }));
    const listener = await startTunnelListener(engine, '10.96.0.10:80');
    cleanups.push(async () => { await listener.close(); await engine.close(); await b.close(); });
    const gauge = async (name: string): Promise<number> => (await metricSamples(engine, name))[0]?.value ?? 0;
    const body = 'x'.repeat(100_000);
    const replies = ['a', 'b', 'c'].map((id) => request(listener.port, { method: 'POST', body, headers: { 'x-id': id, 'content-type': 'text/plain' } }));
    const deadline = Date.now() + 5_000;
    while (held.length < 3 && Date.now() < deadline) await delay(10);
    assert.equal(held.length, 3);
    assert.ok(await gauge('weft_waypoint_replay_buffer_bytes') <= 250_000);
    assert.equal(await gauge('weft_waypoint_replay_budget_exhausted_total'), 1);
    for (const h of held.splice(0)) h();
    const statuses = (await Promise.all(replies)).map((r) => r.status).sort();
    // Two bodies were kept and retried; the third could not be replayed and returns the 503.
    assert.deepEqual(statuses, [200, 200, 503]);
    const back = Date.now() + 5_000;
    while (await gauge('weft_waypoint_replay_buffer_bytes') > 0 && Date.now() < back) await delay(10);
    assert.equal(await gauge('weft_waypoint_replay_buffer_bytes'), 0, 'what was kept goes back once the requests end');
  });

  it('stops retrying when the retry budget is spent', async () => {
    let n = 0;
    const slowFlaky = await startHttpBackend((req, res) => {
      n++;
      // Every first attempt fails slowly, so many retries would be in flight at once.
      if (n % 2 === 1) setTimeout(() => { res.writeHead(503); res.end(); }, 50);
      else echo('ok')(req, res);
    });
    const { engine, listener } = await setup([slowFlaky], { retries: { attempts: 3, retryOn: ['5xx'], budget: { percent: 0, minRetryConcurrency: 1 } } });
    const replies = await Promise.all(Array.from({ length: 20 }, () => request(listener.port)));
    const stats = engine.clusterStats()[0]!;
    assert.ok(stats.retryBudgetExhausted > 0, JSON.stringify(stats));
    assert.ok(replies.some((r) => r.status === 503), 'requests denied a retry return the failure');
    assert.equal(stats.activeRetries, 0);
    // Counted where Prometheus reads them too (Envoy: upstream_rq_retry, upstream_rq_retry_overflow).
    assert.deepEqual(await clusterCounter(engine, 'weft_waypoint_retry_budget_exhausted_total'), stats.retryBudgetExhausted);
    assert.deepEqual(await clusterCounter(engine, 'weft_waypoint_upstream_retries_total'), stats.retries);
  });

  // Envoy's cluster statistics are kept once per cluster; a scrape of the four counters read from
  // them (overflows, ejections, retries, retry budget) reads the clusters once, not once each.
  it('a scrape reads the clusters\' statistics once for the four cluster counters', async () => {
    const { engine, listener } = await setup([await startHttpBackend(echo('ok'))], {});
    assert.equal((await request(listener.port)).status, 200);
    let reads = 0;
    const read = engine.clusterStats.bind(engine);
    engine.clusterStats = () => { reads++; return read(); };
    const text = await engine.telemetry.registry.metrics();
    assert.match(text, /weft_waypoint_upstream_retries_total/);
    assert.equal(reads, 1);
    // The next scrape reads them afresh.
    await engine.telemetry.registry.metrics();
    assert.equal(reads, 2);
  });

  it('retries a connect failure on another endpoint', async () => {
    const good = await startHttpBackend(echo('good'));
    const dead = await startHttpBackend(echo('dead'));
    await dead.close();
    const { listener } = await setup([dead, good], { loadBalancer: 'ROUND_ROBIN' });
    for (let i = 0; i < 10; i++) {
      const r = await request(listener.port);
      assert.equal(r.status, 200, r.body);
    }
  });

  it('ejects an endpoint that always fails and brings it back after the ejection time', async () => {
    const good = await startHttpBackend(echo('good'));
    const bad = await startHttpBackend((_req, res) => { res.writeHead(500); res.end('broken'); });
    const EJECTION_MS = 1_500;
    const { engine, listener } = await setup([good, bad], {
      retries: { attempts: 0, retryOn: [] },
      outlierDetection: { consecutive5xx: 3, intervalMs: 1000, baseEjectionTimeMs: EJECTION_MS, maxEjectionPercent: 50 },
    });
    const statuses: number[] = [];
    // The ejection starts at the third failure, so it lasts at least until t0 + EJECTION_MS.
    const t0 = Date.now();
    for (let i = 0; i < 10; i++) statuses.push((await request(listener.port)).status);
    // Round robin: the bad endpoint fails 3 times, then it is ejected.
    assert.equal(statuses.filter((s) => s === 500).length, 3);
    const ejected = engine.clusterStats()[0]!.endpoints.find((e) => e.address.endsWith(`:${bad.port}`))!;
    assert.equal(ejected.ejected, true);
    const badHits = bad.hits;
    // Only requests sent while the ejection must still hold (a loaded machine sends fewer).
    let sent = 0;
    while (sent < 20 && Date.now() < t0 + EJECTION_MS - 100) {
      assert.equal((await request(listener.port)).status, 200);
      sent++;
    }
    assert.ok(sent >= 1, 'requests were sent during the ejection');
    assert.equal(bad.hits, badHits, `an ejected endpoint receives no traffic (${sent} requests)`);
    // It returns once the ejection time is over: wait for it by condition, then check when.
    const deadline = Date.now() + 10_000;
    while (bad.hits === badHits && Date.now() < deadline) {
      await request(listener.port);
      if (bad.hits === badHits) await delay(50);
    }
    assert.ok(bad.hits > badHits, 'the endpoint returns after baseEjectionTime');
    assert.ok(Date.now() - t0 >= EJECTION_MS, `not before baseEjectionTime (${Date.now() - t0} ms)`);
    assert.equal(engine.clusterStats()[0]!.ejections, 1);
    assert.equal(await clusterCounter(engine, 'weft_waypoint_outlier_ejections_total'), 1);
  });

  // Envoy's outlier detection counts what the upstream did (5xx) and what interrupted or prevented
  // talking to it (connect failure, upstream reset, timeout): "locally originated errors"
  // (https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/outlier). A client
  // that goes away before the answer cancels its request; the endpoint did nothing wrong, and
  // counting it would let any caller eject healthy endpoints for everyone.
  it('a client that abandons its requests before the answer ejects no endpoint (counted DC, not a failure)', async () => {
    const slow = (name: string) => startHttpBackend((req, res) => { setTimeout(() => echo(name)(req, res), 300); });
    const a = await slow('a');
    const b = await slow('b');
    const { engine, listener } = await setup([a, b], {
      retries: { attempts: 0, retryOn: [] },
      outlierDetection: { consecutive5xx: 2, intervalMs: 1000, baseEjectionTimeMs: 30_000, maxEjectionPercent: 100 },
    });
    const ABANDONED = 6;
    for (let i = 0; i < ABANDONED; i++) {
      const sent = a.hits + b.hits;
      const req = http.request({ host: '127.0.0.1', port: listener.port, path: '/', headers: { host: 'reviews.shop.svc.cluster.local' } });
      req.on('error', () => {});
      req.end();
      // Gone once the endpoint has the request, before it answers.
      const deadline = Date.now() + 5_000;
      while (a.hits + b.hits === sent && Date.now() < deadline) await delay(5);
      req.destroy();
    }
    const dc = async (): Promise<number> => (await metricSamples(engine, 'istio_requests_total'))
      .filter((v) => String(v.labels['response_flags']).includes('DC')).reduce((n, v) => n + v.value, 0);
    const deadline = Date.now() + 5_000;
    while (await dc() < ABANDONED && Date.now() < deadline) await delay(20);
    assert.equal(await dc(), ABANDONED, 'every abandoned request is recorded with flag DC');
    const stats = engine.clusterStats()[0]!;
    assert.equal(stats.ejections, 0, JSON.stringify(stats));
    assert.ok(stats.endpoints.every((e) => !e.ejected));
    assert.equal((await request(listener.port)).status, 200);
  });

  // Envoy (outlier_detection_impl.cc, DetectorImpl::ejectHost): a host is ejected while the share
  // already ejected is below max_ejection_percent (100 * ejected / hosts < max), so 3 hosts at 50%
  // lose 2 (0% and 33% are below 50%), 10 at 25% lose 3; 0% ejects none. Istio's
  // outlierDetection.maxEjectionPercent is that field
  // (https://istio.io/latest/docs/reference/config/networking/destination-rule/#OutlierDetection).
  it('maxEjectionPercent ejects as Envoy does: while the share ejected is below it', () => {
    const ejectedOf = (hosts: number, maxEjectionPercent: number): number => {
      const tp = trafficPolicy('reviews', { outlierDetection: { consecutive5xx: 1, intervalMs: 10_000, baseEjectionTimeMs: 30_000, maxEjectionPercent } });
      const cluster = new Cluster('shop/reviews:80', clusterSettings(tp), () => 1_000);
      cluster.update(clusterSettings(tp), Array.from({ length: hosts }, (_, i) => ({ endpoint: endpoint(8000 + i), port: 8000 + i })));
      // Every endpoint answers one 500 (consecutive5xx 1), one after the other.
      const tried = new Set<string>();
      for (let i = 0; i < hosts; i++) {
        const ep = cluster.pick(() => 0, tried)!;
        assert.ok(!tried.has(ep.key));
        tried.add(ep.key);
        cluster.report(ep, { kind: 'response', status: 500 });
      }
      return cluster.stats().ejections;
    };
    assert.equal(ejectedOf(3, 50), 2);
    assert.equal(ejectedOf(10, 25), 3);
    assert.equal(ejectedOf(5, 10), 1);
    assert.equal(ejectedOf(4, 50), 2);
    assert.equal(ejectedOf(2, 100), 2);
    assert.equal(ejectedOf(3, 0), 0);
  });

  it('answers 503 with flag UO when maxConnections and maxPendingRequests are exhausted', async () => {
    const slow = await startHttpBackend((req, res) => { setTimeout(() => echo('slow')(req, res), 300); });
    const { engine, listener } = await setup([slow], { connectionLimits: { maxConnections: 1, maxPendingRequests: 1 } });
    const replies = await Promise.all(Array.from({ length: 4 }, () => request(listener.port)));
    const overflowed = replies.filter((r) => r.status === 503);
    assert.equal(replies.filter((r) => r.status === 200).length, 2, 'one active and one pending request are served');
    assert.equal(overflowed.length, 2);
    for (const r of overflowed) assert.equal(r.headers['x-weft-flags'], 'UO');
    const total = await metricSamples(engine, 'istio_requests_total');
    assert.ok(total.some((v) => v.labels['response_flags'] === 'UO' && v.value === 2), JSON.stringify(total));
    // Envoy's upstream_rq_pending_overflow, per cluster.
    assert.equal(await clusterCounter(engine, 'weft_waypoint_upstream_overflows_total'), 2);
  });

  // A request waiting for a connection slot (Istio connectionPool http1MaxPendingRequests, Envoy
  // max_pending_requests) that its client abandons leaves the queue at once: while every connection
  // stays busy (a slow endpoint), abandoned waits must not pile up and make each new one slower.
  it('a pending wait the client abandons leaves the queue: 100,000 abandoned waits cost no more than a few', async () => {
    const tp = trafficPolicy('reviews', { connectionLimits: { maxConnections: 1, maxPendingRequests: 10 } });
    const cluster = new Cluster('shop/reviews:80', clusterSettings(tp));
    const held = await cluster.acquireConnection();
    assert.notEqual(held, OVERFLOW);
    const started = performance.now();
    for (let i = 0; i < 100_000; i++) {
      const ac = new AbortController();
      const wait = cluster.acquireConnection(ac.signal);
      ac.abort();
      assert.equal(await wait, OVERFLOW);
    }
    const elapsed = performance.now() - started;
    assert.equal(cluster.pendingRequests, 0);
    assert.ok(elapsed < 10_000, `100,000 abandoned waits took ${Math.round(elapsed)} ms`);
    // The queue still takes maxPendingRequests live waits, and they are served in order.
    const waits = Array.from({ length: 10 }, () => cluster.acquireConnection());
    assert.equal(await cluster.acquireConnection(), OVERFLOW, 'an 11th wait overflows');
    assert.equal(cluster.pendingRequests, 10);
    (held as () => void)();
    const first = await waits[0]!;
    assert.notEqual(first, OVERFLOW);
    assert.equal(cluster.pendingRequests, 9);
  });

  it('answers 503 UO beyond maxRequests', async () => {
    const slow = await startHttpBackend((req, res) => { setTimeout(() => echo('slow')(req, res), 200); });
    const { listener } = await setup([slow], { connectionLimits: { maxRequests: 2 } });
    const replies = await Promise.all(Array.from({ length: 5 }, () => request(listener.port)));
    assert.equal(replies.filter((r) => r.status === 200).length, 2);
    assert.ok(replies.filter((r) => r.status === 503).every((r) => r.headers['x-weft-flags'] === 'UO'));
  });

  it('times out a slow backend with 504 UT and retries a per-try timeout', async () => {
    let calls = 0;
    const sometimesSlow = await startHttpBackend((req, res) => {
      calls++;
      if (calls === 1) setTimeout(() => echo('late')(req, res), 500);
      else echo('fast')(req, res);
    });
    const { listener } = await setup([sometimesSlow], { timeouts: { perTryMs: 100, requestMs: 1000 }, retries: { attempts: 2, retryOn: ['5xx'] } });
    const first = await request(listener.port);
    assert.equal(first.status, 200);
    assert.equal(JSON.parse(first.body).backend, 'fast');

    const never = await startHttpBackend(() => { /* never answers */ });
    const { listener: l2 } = await setup([never], { timeouts: { requestMs: 150 } });
    const started = Date.now();
    const r = await request(l2.port);
    assert.equal(r.status, 504);
    assert.equal(r.headers['x-weft-flags'], 'UT');
    assert.ok(Date.now() - started < 1000);
  });

  // TrafficPolicy timeouts.idle is Istio's connectionPool.http.idleTimeout: "the period in which
  // there are no active requests", after which the upstream connection is closed
  // (https://istio.io/latest/docs/reference/config/networking/destination-rule/#ConnectionPoolSettings-HTTPSettings).
  it('closes an idle upstream connection after the TrafficPolicy idle timeout', async () => {
    const server = http.createServer((req, res) => echo('b')(req, res));
    server.keepAliveTimeout = 60_000;
    const closed: number[] = [];
    server.on('connection', (sock) => sock.on('close', () => closed.push(Date.now())));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    const b: Backend = { port, hits: 0, close: () => new Promise((r) => { server.closeAllConnections(); server.close(() => r()); }) };
    const { listener } = await setup([b], { timeouts: { idleMs: 200 } });
    assert.equal((await request(listener.port)).status, 200);
    const answered = Date.now();
    const deadline = answered + 5_000;
    while (closed.length === 0 && Date.now() < deadline) await delay(20);
    assert.equal(closed.length, 1, 'the waypoint closed its idle connection to the endpoint');
    assert.ok(closed[0]! - answered >= 150, `not before the idle timeout (${closed[0]! - answered} ms)`);
  });

  it('injects an abort fault for the configured percentage and a delay', async () => {
    const b = await startHttpBackend(echo('b'));
    const { listener } = await setup([b], { fault: { abort: { httpStatus: 418, percentage: 100 } } });
    const r = await request(listener.port);
    assert.equal(r.status, 418);
    assert.equal(r.headers['x-weft-flags'], 'FI');
    assert.equal(b.hits, 0);

    const c = await startHttpBackend(echo('c'));
    const { listener: l2 } = await setup([c], { fault: { delay: { fixedDelayMs: 200, percentage: 100 } } });
    const t0 = Date.now();
    const d = await request(l2.port);
    assert.equal(d.status, 200);
    assert.ok(Date.now() - t0 >= 190);
  });

  it('spreads LEAST_REQUEST and RANDOM load over all endpoints', async () => {
    for (const lb of ['LEAST_REQUEST', 'RANDOM'] as const) {
      const a = await startHttpBackend(echo('a'));
      const b = await startHttpBackend(echo('b'));
      const { listener } = await setup([a, b], { loadBalancer: lb });
      await Promise.all(Array.from({ length: 100 }, () => request(listener.port)));
      assert.ok(a.hits > 15 && b.hits > 15, `${lb}: a=${a.hits} b=${b.hits}`);
    }
  });
});
