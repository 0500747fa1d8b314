import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { MAX_BUCKETS, TokenBucket } from '../../lib/token-bucket.ts';
import { LocalRateLimiter } from '../../waypoint/src/ratelimit.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import {
  config, echo, endpoint, metricSamples, request, service, startHttpBackend, startTunnelListener, trafficPolicy,
  type Backend,
} from '../../waypoint/testing/harness.ts';
import { freePort, startRedis, type RedisInstance } from '../../waypoint/testing/redis.ts';

describe('local rate limit', () => {
  it('answers 429 with retry-after beyond 10 requests per second', async () => {
    const b = await startHttpBackend(echo('b'));
    const engine = new WaypointEngine({ namespace: 'shop', name: 'wp', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    engine.applyConfig(config({
      services: [service('reviews', '10.96.0.10', [endpoint(b.port)])],
      trafficPolicies: [trafficPolicy('reviews', { rateLimit: { tokens: 10, fillIntervalMs: 1000, per: 'route' } })],
    }));
    const l = await startTunnelListener(engine, '10.96.0.10:80');
    try {
      const replies = await Promise.all(Array.from({ length: 15 }, () => request(l.port)));
      assert.equal(replies.filter((r) => r.status === 200).length, 10);
      const limited = replies.filter((r) => r.status === 429);
      assert.equal(limited.length, 5);
      for (const r of limited) {
        assert.equal(r.headers['x-weft-flags'], 'RL');
        assert.ok(Number(r.headers['retry-after']) >= 1);
      }
      assert.equal(b.hits, 10);
    } finally {
      await l.close();
      await engine.close();
      await b.close();
    }
  });

  it('refills the bucket every fill interval', () => {
    const bucket = new TokenBucket(2, 1000, 0);
    assert.equal(bucket.take(0).allowed, true);
    assert.equal(bucket.take(10).allowed, true);
    const denied = bucket.take(20);
    assert.deepEqual(denied, { allowed: false, retryAfterMs: 980 });
    assert.equal(bucket.take(1000).allowed, true);
  });

  // A per-source limit keeps a bucket per caller; callers that keep their buckets in use (none full
  // to sweep) must not grow the limiter without bound.
  it('holds at most MAX_BUCKETS buckets however many sources keep theirs in use', () => {
    const limiter = new LocalRateLimiter(() => 0);
    const limit = { tokens: 5, fillIntervalMs: 60_000, per: 'source' as const };
    for (let i = 0; i < MAX_BUCKETS * 2; i++) assert.equal(limiter.check('shop/reviews', limit, `spiffe://cluster.local/ns/shop/sa/s${i}`).allowed, true);
    assert.ok(limiter.size <= MAX_BUCKETS, `${limiter.size} buckets`);
    // The newest sources keep their own buckets.
    const last = `spiffe://cluster.local/ns/shop/sa/s${MAX_BUCKETS * 2 - 1}`;
    for (let i = 0; i < 4; i++) assert.equal(limiter.check('shop/reviews', limit, last).allowed, true);
    assert.equal(limiter.check('shop/reviews', limit, last).allowed, false);
  });

  it('keeps a separate bucket per source identity with per: source', async () => {
    const b = await startHttpBackend(echo('b'));
    const engine = new WaypointEngine({ namespace: 'shop', name: 'wp', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    engine.applyConfig(config({
      services: [service('reviews', '10.96.0.10', [endpoint(b.port)])],
      trafficPolicies: [trafficPolicy('reviews', { rateLimit: { tokens: 2, fillIntervalMs: 60_000, per: 'source' } })],
    }));
    const a = await startTunnelListener(engine, '10.96.0.10:80', 'spiffe://cluster.local/ns/shop/sa/a');
    const c = await startTunnelListener(engine, '10.96.0.10:80', 'spiffe://cluster.local/ns/shop/sa/c');
    try {
      const fromA = [];
      for (let i = 0; i < 3; i++) fromA.push((await request(a.port)).status);
      assert.deepEqual(fromA, [200, 200, 429]);
      assert.equal((await request(c.port)).status, 200);
    } finally {
      await a.close();
      await c.close();
      await engine.close();
      await b.close();
    }
  });
});

describe('shared quota in Redis', () => {
  let redis: RedisInstance;
  let b: Backend;
  before(async () => {
    redis = await startRedis();
    b = await startHttpBackend(echo('b'));
  });
  after(async () => {
    await b.close();
    await redis.stop();
  });

  function engineWith(redisUrl: string, failureMode: 'open' | 'closed' = 'open', prefix = 'test1'): WaypointEngine {
    const e = new WaypointEngine({
      namespace: 'shop', name: 'wp', upstream: new TcpUpstream(), telemetry: { accessLog: null },
      quota: { redis: redisUrl, rules: [{ service: 'shop/reviews', limit: 20, windowMs: 60_000 }], failureMode, keyPrefix: prefix, timeoutMs: 300 },
    });
    e.applyConfig(config({ services: [service('reviews', '10.96.0.10', [endpoint(b.port)])] }));
    return e;
  }

  it('holds a quota of 20 in total across two waypoint engines sharing one Redis', async () => {
    const e1 = engineWith(redis.url);
    const e2 = engineWith(redis.url);
    const l1 = await startTunnelListener(e1, '10.96.0.10:80');
    const l2 = await startTunnelListener(e2, '10.96.0.10:80');
    try {
      const replies = await Promise.all(Array.from({ length: 40 }, (_, i) => request(i % 2 === 0 ? l1.port : l2.port)));
      const ok = replies.filter((r) => r.status === 200).length;
      assert.equal(ok, 20, `${ok} requests passed`);
      const limited = replies.filter((r) => r.status === 429);
      assert.equal(limited.length, 20);
      assert.ok(limited.every((r) => Number(r.headers['retry-after']) >= 1 && r.headers['x-weft-flags'] === 'RL'));
      // Both replicas admitted some of the 20.
      const passed1 = (await metricSamples(e1, 'istio_requests_total')).filter((s) => s.labels['response_code'] === '200').reduce((n, s) => n + s.value, 0);
      assert.ok(passed1 > 0 && passed1 < 20, `engine 1 admitted ${passed1}`);
    } finally {
      await l1.close();
      await l2.close();
      await e1.close();
      await e2.close();
    }
  });

  it('a TrafficPolicy quota is enforced from the config (no --quota flag), over a flag rule for the same Service, and dropped with the policy', async () => {
    const mk = () => {
      const e = new WaypointEngine({
        namespace: 'shop', name: 'wp', upstream: new TcpUpstream(), telemetry: { accessLog: null },
        quota: { redis: redis.url, rules: [{ service: 'shop/reviews', limit: 1000, windowMs: 60_000 }], keyPrefix: 'test-tp', timeoutMs: 300 },
      });
      e.applyConfig(config({
        services: [service('reviews', '10.96.0.10', [endpoint(b.port)])],
        trafficPolicies: [trafficPolicy('reviews', { quota: { limit: 6, windowMs: 60_000, per: 'service' } })],
      }));
      return e;
    };
    const e1 = mk();
    const e2 = mk();
    const l1 = await startTunnelListener(e1, '10.96.0.10:80');
    const l2 = await startTunnelListener(e2, '10.96.0.10:80');
    try {
      const replies = await Promise.all(Array.from({ length: 12 }, (_, i) => request(i % 2 === 0 ? l1.port : l2.port)));
      assert.equal(replies.filter((r) => r.status === 200).length, 6, 'the TrafficPolicy limit of 6, shared, not the flag\'s 1000');
      assert.ok(replies.filter((r) => r.status === 429).every((r) => r.headers['x-weft-flags'] === 'RL'));
      // Without the TrafficPolicy the flag rule is back (its own, much larger, count).
      e1.applyConfig(config({ services: [service('reviews', '10.96.0.10', [endpoint(b.port)])] }));
      assert.equal((await request(l1.port)).status, 200);
    } finally {
      await l1.close();
      await l2.close();
      await e1.close();
      await e2.close();
    }
  });

  it('fails open by default when Redis is unreachable, and counts it', async () => {
    const dead = `redis://127.0.0.1:${await freePort()}`;
    const e = engineWith(dead, 'open', 'test2');
    const l = await startTunnelListener(e, '10.96.0.10:80');
    try {
      const r = await request(l.port);
      assert.equal(r.status, 200);
      assert.equal(r.headers['x-weft-flags'], 'RLSE');
      const errs = await metricSamples(e, 'weft_waypoint_quota_backend_errors_total');
      assert.equal(errs[0]?.value, 1);
      assert.equal(errs[0]?.labels['failure_mode'], 'open');
    } finally {
      await l.close();
      await e.close();
    }
  });

  it('fails closed with 429 when configured so', async () => {
    const dead = `redis://127.0.0.1:${await freePort()}`;
    const e = engineWith(dead, 'closed', 'test3');
    const l = await startTunnelListener(e, '10.96.0.10:80');
    try {
      const r = await request(l.port);
      assert.equal(r.status, 429);
      assert.equal(r.headers['x-weft-flags'], 'RLSE');
    } finally {
      await l.close();
      await e.close();
    }
  });
});
