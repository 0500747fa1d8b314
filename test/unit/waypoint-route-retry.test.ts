// HTTPRoute rules' retry field (Gateway API HTTPRouteRetry, GEP-1731): the cases of the upstream
// conformance test httproute-retry.go against the engine, and what GEP-1731 adds (backoff is a
// minimum, connection failures are retried, a request timeout bounds every attempt and backoff),
// plus the precedence over the backend's TrafficPolicy retries.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { RouteRule } from '../../lib/model/mesh.ts';
import { retryPolicy } from '../../waypoint/src/proxy.ts';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import {
  backend, config, endpoint, match, request, route, service, startHttpBackend, startTunnelListener, trafficPolicy,
  type Backend, type Listener,
} from '../../waypoint/testing/harness.ts';

describe('waypoint: HTTPRoute retry (GEP-1731, httproute-retry.go)', () => {
  let sim: Backend;
  const seen = new Map<string, number>();
  let engine: WaypointEngine;
  let l: Listener;
  let uuid = 0;

  before(async () => {
    sim = await startHttpBackend((req, res) => {
      const q = new URLSearchParams((req.url ?? '').split('?')[1] ?? '');
      const id = q.get('uuid')!;
      const n = (seen.get(id) ?? 0) + 1;
      seen.set(id, n);
      req.resume();
      res.writeHead(n <= Number(q.get('succeedAfter')) ? Number(q.get('responseCode')) : 200);
      res.end(`attempt ${n}`);
    });
    engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    const rule = (prefix: string, retry: RouteRule['retry']) => ({ matches: [match({ path: { type: 'PathPrefix', value: prefix } })], backends: [backend('echo')], ...(retry ? { retry } : {}) });
    engine.applyConfig(config({
      services: [service('echo', '10.96.0.40', [endpoint(sim.port)])],
      // TrafficPolicy retries that the route's must replace (they would retry 503 five times).
      trafficPolicies: [trafficPolicy('echo', { retries: { attempts: 5, retryOn: ['503'] } })],
      routes: [route('retries', 'echo', [
        rule('/retry/code-500-attempts-3', { codes: [500], attempts: 3 }),
        rule('/retry/code-all-attempts-2', { codes: [500, 502, 503, 504], attempts: 2 }),
        rule('/retry/code-all-attempts-0', { codes: [500, 502, 503, 504], attempts: 0 }),
        rule('/retry/backoff', { codes: [500], attempts: 2, backoffMs: 150 }),
        // A backoff longer than the request timeout (httproute-retry-with-timeouts.go's last case, made certain).
        { ...rule('/retry/request-timeout', { codes: [500], attempts: 5, backoffMs: 300 }), timeouts: { requestMs: 200 } },
        rule('/policy', undefined),
      ])],
    }));
    l = await startTunnelListener(engine, '10.96.0.40:80');
  });

  after(async () => {
    await l.close();
    await engine.close();
    await sim.close();
  });

  async function get(path: string, responseCode: number, succeedAfter: number): Promise<{ status: number; attempts: number }> {
    const id = `u${++uuid}`;
    const r = await request(l.port, { path: `${path}?uuid=${id}&responseCode=${responseCode}&succeedAfter=${succeedAfter}`, host: 'echo' });
    return { status: r.status, attempts: seen.get(id) ?? 0 };
  }

  // The upstream test's cases, one line each: path, code, succeedAfter → status.
  const cases: Array<[string, number, number, number]> = [
    ['/retry/code-500-attempts-3', 500, 2, 200],
    ['/retry/code-500-attempts-3', 500, 4, 500],
    ['/retry/code-500-attempts-3', 503, 2, 503],
    ['/retry/code-all-attempts-2', 500, 1, 200],
    ['/retry/code-all-attempts-2', 500, 3, 500],
    ['/retry/code-all-attempts-2', 502, 1, 200],
    ['/retry/code-all-attempts-2', 502, 3, 502],
    ['/retry/code-all-attempts-2', 503, 1, 200],
    ['/retry/code-all-attempts-2', 503, 3, 503],
    ['/retry/code-all-attempts-2', 504, 1, 200],
    ['/retry/code-all-attempts-2', 504, 3, 504],
  ];
  for (const [path, code, after_, want] of cases) {
    it(`${path}: ${code} for the first ${after_} attempts → ${want}`, async () => {
      const r = await get(path, code, after_);
      assert.equal(r.status, want);
    });
  }

  it('attempts is the most retries: 3 retries on 500 make 4 attempts, and a code the rule does not list is not retried', async () => {
    assert.deepEqual(await get('/retry/code-500-attempts-3', 500, 10), { status: 500, attempts: 4 });
    // The TrafficPolicy would retry this 503; the rule replaces it.
    assert.deepEqual(await get('/retry/code-500-attempts-3', 503, 10), { status: 503, attempts: 1 });
  });

  it('attempts 0 retries nothing', async () => {
    assert.deepEqual(await get('/retry/code-all-attempts-0', 503, 1), { status: 503, attempts: 1 });
  });

  it('a rule without retry keeps the backend\'s TrafficPolicy retries', async () => {
    assert.deepEqual(await get('/policy', 503, 2), { status: 200, attempts: 3 });
  });

  it('waits at least the backoff before each retry', async () => {
    const t0 = Date.now();
    const r = await get('/retry/backoff', 500, 2);
    assert.equal(r.status, 200);
    assert.equal(r.attempts, 3);
    assert.ok(Date.now() - t0 >= 150 + 300, `two retries after backoffs of at least 150 and 300 ms took ${Date.now() - t0} ms`);
  });

  it('a request timeout that fires during the backoff ends the request with 504: no attempt starts after it', async () => {
    assert.deepEqual(await get('/retry/request-timeout', 500, 1), { status: 504, attempts: 1 });
  });

  it('retryPolicy: backoff is a floor with jitter above it, and connection failures and resets are retried', () => {
    const p = retryPolicy({ codes: [500], attempts: 2, backoffMs: 100 }, { attempts: 5, retryOn: ['5xx'] });
    assert.equal(p.attempts, 2);
    assert.deepEqual(p.retryOn, ['500', 'connect-failure', 'refused-stream', 'reset']);
    for (const [n, lo, hi] of [[0, 100, 125], [1, 200, 250], [5, 1000, 1250]] as const) {
      assert.ok(p.backoffMs(n, () => 0) === lo && p.backoffMs(n, () => 0.999999) <= hi, `retry ${n}: between ${lo} and ${hi}`);
    }
    assert.equal(retryPolicy({ codes: [] }, { attempts: 5, retryOn: ['5xx'] }).attempts, 5, 'unset attempts: the backend\'s');
    assert.deepEqual(retryPolicy(undefined, { attempts: 5, retryOn: ['5xx'] }).retryOn, ['5xx']);
  });

  it('retries a connection failure on the rule\'s attempts, on another endpoint', async () => {
    // A port nothing listens on, beside the working backend.
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const dead = (probe.address() as net.AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));
    const e2 = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    e2.applyConfig(config({
      services: [service('echo', '10.96.0.41', [endpoint(dead, '127.0.0.1', 'dead'), endpoint(sim.port, '127.0.0.1', 'live')])],
      trafficPolicies: [trafficPolicy('echo', { retries: { attempts: 0, retryOn: [] } })],
      routes: [route('r', 'echo', [{ backends: [backend('echo')], retry: { codes: [503], attempts: 2 } }])],
    }));
    const l2 = await startTunnelListener(e2, '10.96.0.41:80');
    try {
      for (let i = 0; i < 6; i++) {
        const r = await request(l2.port, { path: `/x?uuid=c${i}&responseCode=200&succeedAfter=0`, host: 'echo' });
        assert.equal(r.status, 200, `request ${i}`);
      }
    } finally {
      await l2.close();
      await e2.close();
    }
  });
});

