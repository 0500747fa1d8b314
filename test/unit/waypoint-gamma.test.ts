// GAMMA at the waypoint (GEP-1294): a consumer route (an HTTPRoute in namespace X whose parent is a
// Service in another namespace) applies only to clients in X, in place of the Service's producer
// routes; everyone else keeps the producer routes. The client's namespace is its tunnel identity,
// never a header. A refused cross-namespace backend (no ReferenceGrant) answers 500.
import assert from 'node:assert/strict';
import net from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import type { AuthorizationPolicy, Route, Service } from '../../lib/model/mesh.ts';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import {
  backend, config, echo, endpoint, match, metricSamples, request, route, service, startHttpBackend, startTunnelListener, trafficPolicy,
  type Backend, type Listener,
} from '../../waypoint/testing/harness.ts';

describe('consumer and producer routes', () => {
  let v1: Backend;
  let v2: Backend;
  let v3: Backend;
  let engine: WaypointEngine;
  let fromShop: Listener;
  let fromEvil: Listener;
  let plaintext: Listener;

  before(async () => {
    v1 = await startHttpBackend(echo('v1'));
    v2 = await startHttpBackend(echo('v2'));
    v3 = await startHttpBackend(echo('v3'));
    engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    const consumer: Route = { ...route('steal', 'reviews', [{ backends: [backend('sink', 1, [], 'evil')] }]), namespace: 'evil' };
    const producer = route('canary', 'reviews', [{ backends: [backend('reviews-v3')] }]);
    const refused = route('refused', 'ratings', [{ backends: [{ ...backend('cache', 1, [], 'web'), refused: 'no ReferenceGrant in namespace web' }] }]);
    engine.applyConfig(config({
      services: [
        service('reviews', '10.96.0.10', [endpoint(v1.port)]),
        service('reviews-v3', '10.96.0.13', [endpoint(v3.port)]),
        service('ratings', '10.96.0.14', [endpoint(v1.port)]),
        service('sink', '10.96.1.10', [endpoint(v2.port)], { namespace: 'evil' }),
        service('cache', '10.96.2.10', [endpoint(v2.port)], { namespace: 'web' }),
      ],
      routes: [consumer, producer, refused],
    }));
    fromShop = await startTunnelListener(engine, '10.96.0.10:80', 'spiffe://cluster.local/ns/shop/sa/web');
    fromEvil = await startTunnelListener(engine, '10.96.0.10:80', 'spiffe://cluster.local/ns/evil/sa/x');
    plaintext = await startTunnelListener(engine, '10.96.0.10:80', undefined);
  });

  after(async () => {
    for (const l of [fromShop, fromEvil, plaintext]) await l.close();
    await engine.close();
    for (const b of [v1, v2, v3]) await b.close();
  });

  it('a consumer route from namespace evil does not apply to a client of namespace shop (the producer route does)', async () => {
    for (let i = 0; i < 3; i++) assert.equal(JSON.parse((await request(fromShop.port)).body).backend, 'v3');
  });

  it('nor to a plaintext client, nor to a shop client claiming evil in a header', async () => {
    assert.equal(JSON.parse((await request(plaintext.port)).body).backend, 'v3');
    assert.equal(JSON.parse((await request(fromShop.port, { headers: { 'x-forwarded-client-cert': 'By=spiffe://cluster.local/ns/evil/sa/x' } })).body).backend, 'v3');
  });

  it('it applies to clients of its own namespace, in place of the producer route', async () => {
    assert.equal(JSON.parse((await request(fromEvil.port)).body).backend, 'v2');
  });

  // A waypoint serves its own namespace's Services (those that use it; the controller sends it those
  // and, to route to, the Services its routes name). A tunnel addressed to another namespace's
  // Service (a route backend, known here only to send to) would reach that Service's pods under this
  // namespace's policies and limits, around its own waypoint's: refused 404 NR, counted, named.
  it('a tunnel addressed to another namespace\'s Service, known here only as a route backend, is refused 404 NR, HTTP and TCP alike', async () => {
    const hits = v2.hits;
    for (const target of ['10.96.1.10:80', '10.96.2.10:80']) {
      const l = await startTunnelListener(engine, target, 'spiffe://cluster.local/ns/evil/sa/x');
      try {
        const r = await request(l.port, { host: target.startsWith('10.96.1') ? 'sink.evil.svc.cluster.local' : 'cache.web.svc.cluster.local' });
        assert.equal(r.status, 404, r.body);
        assert.equal(r.headers['x-weft-flags'], 'NR');
        assert.match(r.body, /no service/);
      } finally {
        await l.close();
      }
    }
    // A workload address of such a Service is refused the same way.
    const byPod = await startTunnelListener(engine, `127.0.0.1:${v2.port}`, 'spiffe://cluster.local/ns/evil/sa/x');
    try {
      assert.equal((await request(byPod.port, { host: 'sink.evil.svc.cluster.local' })).status, 404);
    } finally {
      await byPod.close();
    }
    // Nor passed through as TCP.
    const tcp = await startTunnelListener(engine, '10.96.1.10:80', 'spiffe://cluster.local/ns/evil/sa/x');
    try {
      const got = await new Promise<{ bytes: number; closed: boolean }>((resolve) => {
        const sock = net.connect(tcp.port, '127.0.0.1');
        let bytes = 0;
        const t = setTimeout(() => { sock.destroy(); resolve({ bytes, closed: false }); }, 5_000);
        sock.on('connect', () => sock.write(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x01, 1])));
        sock.on('data', (c: Buffer) => { bytes += c.length; });
        sock.on('error', () => {});
        sock.on('close', () => { clearTimeout(t); resolve({ bytes, closed: true }); });
      });
      assert.deepEqual(got, { bytes: 0, closed: true });
    } finally {
      await tcp.close();
    }
    assert.equal(v2.hits, hits, 'nothing reached the other namespaces\' pods');
    const refused = async (): Promise<number> => (await metricSamples(engine, 'istio_requests_total'))
      .filter((v) => v.labels['response_flags'] === 'NR' && String(v.labels['response_code']) === '404').reduce((n, v) => n + v.value, 0);
    const deadline = Date.now() + 5_000;
    while (await refused() < 3 && Date.now() < deadline) await delay(10);
    assert.ok(await refused() >= 3, 'each refusal is counted (istio_requests_total, 404, flag NR)');
    // Routing to it, as the consumer route does, still works.
    assert.equal(JSON.parse((await request(fromEvil.port)).body).backend, 'v2');
  });

  it('a backend the controller refused (no ReferenceGrant) answers 500 for its own requests', async () => {
    const l = await startTunnelListener(engine, '10.96.0.14:80', 'spiffe://cluster.local/ns/shop/sa/web');
    try {
      const r = await request(l.port);
      assert.equal(r.status, 500);
      assert.match(r.body, /web\/cache/);
    } finally {
      await l.close();
    }
  });
});

// apis/v1/httproute_types.go (HTTPRouteRule.Matches): "When no rules matching a request have been
// successfully attached to the parent a request is coming from, a HTTP 404 status code MUST be
// returned"; GEP-1294: a namespace with consumer routes uses its own routes for the Service, and a
// route with `parentRef.port` is associated with that port only.
describe('consumer routes decide for their own clients, on their own ports', () => {
  let v1: Backend;
  let v2: Backend;
  let engine: WaypointEngine;
  const listeners: Listener[] = [];
  const listen = async (target: string, principal: string): Promise<Listener> => {
    const l = await startTunnelListener(engine, target, principal);
    listeners.push(l);
    return l;
  };
  const CLIENT = 'spiffe://cluster.local/ns/client/sa/app';

  before(async () => {
    v1 = await startHttpBackend(echo('v1'));
    v2 = await startHttpBackend(echo('v2'));
    engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    const twoPorts = (name: string, vip: string, port: number): Service => ({
      name, namespace: 'shop', hostname: `${name}.shop.svc.cluster.local`, vips: [vip],
      ports: [
        { name: 'http', port: 80, targetPort: port, protocol: 'TCP', appProtocol: 'http' },
        { name: 'alt', port: 8080, targetPort: port, protocol: 'TCP', appProtocol: 'http' },
      ],
      endpoints: [{ ...endpoint(port), ports: { '80': port, '8080': port } }],
    });
    engine.applyConfig(config({
      services: [service('reviews', '10.96.0.10', [endpoint(v1.port)]), twoPorts('ratings', '10.96.0.20', v1.port), twoPorts('details', '10.96.0.30', v1.port), service('sink', '10.96.0.40', [endpoint(v2.port)])],
      routes: [
        // reviews: only a consumer route, on /api.
        { ...route('only-api', 'reviews', [{ matches: [match({ path: { type: 'PathPrefix', value: '/api' } })], backends: [backend('reviews')] }]), namespace: 'client' },
        // ratings: a producer route on 8080, a consumer route on 80.
        { ...route('producer-8080', 'ratings', [{ backends: [{ ...backend('sink'), port: 80 }] }]), port: 8080 },
        { ...route('consumer-80', 'ratings', [{ backends: [{ ...backend('ratings'), port: 80 }] }]), namespace: 'client', port: 80 },
        // details: a producer route on every port, a consumer route on 80.
        route('producer-all', 'details', [{ backends: [{ ...backend('sink'), port: 80 }] }]),
        { ...route('consumer-80', 'details', [{ backends: [{ ...backend('details'), port: 80 }] }]), namespace: 'client', port: 80 },
      ],
    }));
  });

  after(async () => {
    for (const l of listeners) await l.close();
    await engine.close();
    for (const b of [v1, v2]) await b.close();
  });

  it('a request no consumer rule matches gets 404, not the Service', async () => {
    const l = await listen('10.96.0.10:80', CLIENT);
    assert.equal((await request(l.port, { path: '/api/x' })).status, 200);
    const r = await request(l.port, { path: '/other' });
    assert.equal(r.status, 404, `${r.status} ${r.body.slice(0, 80)}`);
    const shop = await listen('10.96.0.10:80', 'spiffe://cluster.local/ns/shop/sa/web');
    assert.equal((await request(shop.port, { path: '/other' })).status, 200, 'other namespaces keep the Service (no producer route)');
  });

  it('a consumer route on port 80 leaves the producer route of port 8080 in force for its namespace', async () => {
    const on8080 = await listen('10.96.0.20:8080', CLIENT);
    assert.equal(JSON.parse((await request(on8080.port)).body).backend, 'v2');
    const on80 = await listen('10.96.0.20:80', CLIENT);
    assert.equal(JSON.parse((await request(on80.port)).body).backend, 'v1');
  });

  it('a producer route on every port stays on the ports its consumer route does not bind', async () => {
    const on8080 = await listen('10.96.0.30:8080', CLIENT);
    assert.equal(JSON.parse((await request(on8080.port)).body).backend, 'v2');
    const on80 = await listen('10.96.0.30:80', CLIENT);
    assert.equal(JSON.parse((await request(on80.port)).body).backend, 'v1', 'the consumer route wins on its port');
  });
});

// A consumer route's timeouts are its namespace's own patience (GEP-1294: they apply to its callers
// only), not evidence about the producer's endpoints. The waypoint's outlier state is shared by every
// caller, as Envoy's is per cluster: a timeout a consumer route set, when it fires, must not count
// toward ejecting the producer's endpoints for everyone (in Istio's sidecars the consumer's own proxy
// would be the only one to eject them). Timeouts the producer set (its TrafficPolicy, its routes)
// still count, as in Envoy.
describe('consumer route timeouts and the shared outlier state', () => {
  it('a consumer route\'s tight backendRequest timeout answers its own callers 504 and ejects nothing', async () => {
    const slow = (name: string) => startHttpBackend((req, res) => { setTimeout(() => echo(name)(req, res), 150); });
    const a = await slow('a');
    const b = await slow('b');
    const engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    const impatient: Route = { ...route('impatient', 'reviews', [{ backends: [backend('reviews')], timeouts: { backendRequestMs: 20 } }]), namespace: 'evil' };
    engine.applyConfig(config({
      services: [service('reviews', '10.96.0.10', [endpoint(a.port), endpoint(b.port)])],
      trafficPolicies: [trafficPolicy('reviews', { retries: { attempts: 0, retryOn: [] }, outlierDetection: { consecutive5xx: 2, intervalMs: 1000, baseEjectionTimeMs: 30_000, maxEjectionPercent: 100 } })],
      routes: [impatient],
    }));
    const fromEvil = await startTunnelListener(engine, '10.96.0.10:80', 'spiffe://cluster.local/ns/evil/sa/x');
    const fromShop = await startTunnelListener(engine, '10.96.0.10:80', 'spiffe://cluster.local/ns/shop/sa/web');
    try {
      for (let i = 0; i < 6; i++) {
        const r = await request(fromEvil.port);
        assert.equal(r.status, 504);
        assert.equal(r.headers['x-weft-flags'], 'UT');
      }
      const stats = engine.clusterStats()[0]!;
      assert.equal(stats.ejections, 0, JSON.stringify(stats));
      const ut = (await metricSamples(engine, 'istio_requests_total')).filter((v) => v.labels['response_flags'] === 'UT').reduce((n, v) => n + v.value, 0);
      assert.equal(ut, 6, 'each timeout is counted on the consumer\'s requests');
      const served = new Set<string>();
      for (let i = 0; i < 4; i++) served.add(JSON.parse((await request(fromShop.port)).body).backend);
      assert.deepEqual([...served].sort(), ['a', 'b'], 'shop\'s callers keep both endpoints');
    } finally {
      await fromEvil.close();
      await fromShop.close();
      await engine.close();
      await a.close();
      await b.close();
    }
  });
});

// The attack: a tenant's consumer routes (GEP-1294: no consent of the Service's namespace needed)
// land in that Service's waypoint, which rebuilt every route table, compiling every pattern again
// (re2js, about 6 ms for `x[a-z]{1,900}`), at each change of its Services: evil's 40 routes of 8
// such patterns (each route within the controller's MAX_OBJECT_REGEX_COST) held shop's waypoint
// 4 s at every endpoint change of shop's Services. Now a pattern compiled for the configuration in
// force is reused by the next one (lib/regex.ts RegexCache): a rebuild compiles only new patterns.
describe('another namespace\'s consumer routes at a waypoint', () => {
  it('cost a rebuild for an endpoint change no pattern compile: compiled patterns carry over to the next snapshot, and the routes still match', async () => {
    const { buildSnapshot, routesFor } = await import('../../waypoint/src/config.ts');
    const pattern = (r: number, j: number) => `/x${r}-${j}[a-z]{1,900}`;
    const routes: Route[] = Array.from({ length: 40 }, (_, r) => ({
      ...route(`r${r}`, 'reviews', [{ matches: Array.from({ length: 8 }, (_, j) => match({ path: { type: 'RegularExpression', value: pattern(r, j) } })), backends: [backend('reviews')] }]),
      namespace: 'evil',
    }));
    const producer = route('main', 'reviews', [{ matches: [match({ path: { type: 'RegularExpression', value: '/v[0-9]+/.*' } })], backends: [backend('reviews')] }]);
    const first = config({ services: [service('reviews', '10.96.0.10', [endpoint(9001)])], routes: [...routes, producer] });
    const one = buildSnapshot(first, 1);
    assert.deepEqual(one.issues, []);
    const compiledBefore = one.regexes.compiled;
    assert.equal(compiledBefore, 40 * 8 + 1, 'each pattern compiled once (validation and the table share it; the producer route once for every consumer table)');
    // shop's endpoints churn: the controller sends the Services anew, the routes as they were.
    const two = buildSnapshot({ ...first, services: [service('reviews', '10.96.0.10', [endpoint(9001), endpoint(9002)])] }, 2, one);
    assert.equal(two.regexes.compiled - compiledBefore, 0, 'no pattern compiled again (before: 321, about 4 s)');
    const req = (path: string) => ({ method: 'GET', path, query: '', headers: {} });
    assert.equal(routesFor(two, 'spiffe://cluster.local/ns/evil/sa/x').match('shop/reviews', 80, req('/x7-3abc'))?.route.name, 'r7');
    assert.equal(routesFor(two, 'spiffe://cluster.local/ns/shop/sa/web').match('shop/reviews', 80, req('/x7-3abc')), undefined, 'shop\'s clients see only the producer route');
    assert.equal(routesFor(two, 'spiffe://cluster.local/ns/shop/sa/web').match('shop/reviews', 80, req('/v2/items'))?.route.name, 'main');
    // A pattern no longer in the configuration is forgotten (the cache holds the configuration's own).
    const three = buildSnapshot({ ...first, routes: [producer] }, 3, two);
    assert.equal(three.regexes.size, 1);
  });
});

/** shop's reviews Service on 80 (named `first`) and 9090 (`admin`), both served by one backend: the consumer-route tests' producer. */
function reviewsOnTwoPorts(backendPort: number, first: string): Service {
  return {
    ...service('reviews', '10.96.0.10', []),
    ports: [{ name: first, port: 80, targetPort: 80, protocol: 'TCP', appProtocol: 'http' }, { name: 'admin', port: 9090, targetPort: 9090, protocol: 'TCP', appProtocol: 'http' }],
    endpoints: [{ ...endpoint(backendPort), ports: { '80': backendPort, '9090': backendPort } }],
  };
}

// The attack: a consumer route (GEP-1294; evil's, on shop's Service, sending to that Service needs
// no grant) runs at shop's waypoint, after shop's AuthorizationPolicies judged the request as evil's
// client addressed it; its filters and backend then changed it (another port of the Service, a
// rewritten path), so shop's DENY on port 9090 or on /admin was judged on port 80 and /public and
// the request reached them. Under the Gateway API's model a consumer route acts on the consumer's
// side (a sidecar's outbound), so the producer's policy judges the request as the route sends it:
// a consumer-routed request is judged again as sent, and refused 403 RBAC when that is denied.
describe('a consumer route cannot step around the producer\'s waypoint policy', () => {
  let b: Backend;
  let engine: WaypointEngine;
  let fromEvil: Listener;
  let fromShop: Listener;
  before(async () => {
    b = await startHttpBackend(echo('reviews'));
    engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    const reviews = reviewsOnTwoPorts(b.port, 'http');
    const toReviews = (port: number) => ({ ...backend('reviews', 1, [], 'shop'), port });
    const consumer: Route = {
      ...route('detour', 'reviews', [
        { matches: [match({ path: { type: 'PathPrefix', value: '/port' } })], backends: [toReviews(9090)] },
        { matches: [match({ path: { type: 'Exact', value: '/public' } })], filters: [{ type: 'URLRewrite', path: { type: 'ReplaceFullPath', value: '/admin' } }], backends: [toReviews(80)] },
        { matches: [match({ path: { type: 'Exact', value: '/copy' } })], filters: [{ type: 'RequestMirror', backend: toReviews(9090), percent: 100 }], backends: [toReviews(80)] },
        { matches: [match({ path: { type: 'PathPrefix', value: '/' } })], backends: [toReviews(80)] },
      ]),
      namespace: 'evil', port: 80,
    };
    const deny = (name: string, to: AuthorizationPolicy['rules'][number]['to']): AuthorizationPolicy =>
      ({ name, namespace: 'shop', action: 'DENY', scope: 'service', targetServices: ['shop/reviews'], rules: [{ from: [], to, when: [], layer: 'L7' }], layer: 'L7' });
    engine.applyConfig(config({ services: [reviews], routes: [consumer], policies: [deny('no-admin-port', [{ ports: [9090] }]), deny('no-admin-path', [{ paths: ['/admin'] }])] }));
    fromEvil = await startTunnelListener(engine, '10.96.0.10:80', 'spiffe://cluster.local/ns/evil/sa/x');
    fromShop = await startTunnelListener(engine, '10.96.0.10:80', 'spiffe://cluster.local/ns/shop/sa/web');
  });
  after(async () => {
    for (const l of [fromEvil, fromShop]) await l.close();
    await engine.close();
    await b.close();
  });

  it('another port of the Service, or a path rewritten to one the producer denies, is refused 403 RBAC naming the policy, and counted; a mirror copy there is not sent', async () => {
    const port = await request(fromEvil.port, { path: '/port' });
    assert.equal(port.status, 403, `to port 9090 through the route (before: ${port.status === 200 ? 'this' : '200'}): ${port.body}`);
    assert.match(port.body, /no-admin-port/);
    const path = await request(fromEvil.port, { path: '/public' });
    assert.equal(path.status, 403, `/public rewritten to /admin: ${path.body}`);
    assert.match(path.body, /no-admin-path/);
    const rbac = (await metricSamples(engine, 'istio_requests_total')).filter((s) => s.labels['response_flags'] === 'RBAC' && s.labels['source_workload_namespace'] === 'evil');
    assert.equal(rbac.reduce((n, s) => n + s.value, 0), 2);
    // Its copy to port 9090 is not sent; the request itself is served.
    const hits = b.hits;
    assert.equal((await request(fromEvil.port, { path: '/copy' })).status, 200);
    assert.deepEqual((await metricSamples(engine, 'weft_waypoint_mirror_requests_dropped_total')).map((x) => [x.labels['reason'], x.value]), [['policy', 1]]);
    // What the route sends where the producer allows it still goes; so does shop's own client.
    assert.equal((await request(fromEvil.port, { path: '/items' })).status, 200);
    assert.equal(b.hits - hits, 2, 'the backend got the two requests and no copy');
    assert.equal((await request(fromShop.port, { path: '/public' })).status, 200);
  });
});

// Review of branch tc: a consumer route's rewritten path was judged and forwarded as the filter left
// it, unnormalized, so with shop's DENY on ["/admin", "/admin/*"], a ReplaceFullPath
// "/public/../admin" or "/%61dmin", or a ReplacePrefixMatch "/v2/.." on /pfx/admin, got 200 and
// the backend received the raw path (which it resolves to /admin). The rewritten target now goes
// through the waypoint's one normalization (normalize.ts, the mesh's mode), as a request arriving
// at the backend's sidecar would (Envoy normalizes on arrival, before RBAC); a target it refuses is
// answered 400 DPE, named in the access log.
describe('a consumer route\'s rewritten path is normalized before it is judged and sent', () => {
  let b: Backend;
  let engine: WaypointEngine;
  let fromEvil: Listener;
  const lines: string[] = [];
  before(async () => {
    b = await startHttpBackend(echo('reviews'));
    engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: (l: string) => { lines.push(l); } } });
    const to = { ...backend('reviews', 1, [], 'shop'), port: 80 };
    const rewrite = (from: string, path: { type: 'ReplaceFullPath' | 'ReplacePrefixMatch'; value: string }, type: 'Exact' | 'PathPrefix' = 'Exact') =>
      ({ matches: [match({ path: { type, value: from } })], filters: [{ type: 'URLRewrite' as const, path }], backends: [to] });
    const consumer: Route = {
      ...route('detour', 'reviews', [
        rewrite('/dots', { type: 'ReplaceFullPath', value: '/public/../admin' }),
        rewrite('/encoded', { type: 'ReplaceFullPath', value: '/%61dmin' }),
        rewrite('/pfx', { type: 'ReplacePrefixMatch', value: '/v2/..' }, 'PathPrefix'),
        rewrite('/items-dots', { type: 'ReplaceFullPath', value: '/public/../items' }),
        rewrite('/broken', { type: 'ReplaceFullPath', value: '/a%zz' }),
      ]),
      namespace: 'evil', port: 80,
    };
    const deny: AuthorizationPolicy = { name: 'no-admin', namespace: 'shop', action: 'DENY', scope: 'service', targetServices: ['shop/reviews'], rules: [{ from: [], to: [{ paths: ['/admin', '/admin/*'] }], when: [], layer: 'L7' }], layer: 'L7' };
    engine.applyConfig(config({ services: [service('reviews', '10.96.0.10', [endpoint(b.port)])], routes: [consumer], policies: [deny] }));
    fromEvil = await startTunnelListener(engine, '10.96.0.10:80', 'spiffe://cluster.local/ns/evil/sa/x');
  });
  after(async () => {
    await fromEvil.close();
    await engine.close();
    await b.close();
  });

  it('a rewrite to "/public/../admin", "/%61dmin" or a prefix "/v2/.." is judged as /admin and refused 403; an allowed one is sent normalized; one that does not normalize is 400', async () => {
    for (const path of ['/dots', '/encoded', '/pfx/admin']) {
      const r = await request(fromEvil.port, { path });
      assert.equal(r.status, 403, `${path} (before: 200, the backend receiving the raw path): ${r.body}`);
      assert.match(r.body, /no-admin/);
    }
    const ok = await request(fromEvil.port, { path: '/items-dots' });
    assert.equal(ok.status, 200, ok.body);
    assert.equal(JSON.parse(ok.body).url, '/items', 'the backend receives the normalized path');
    const bad = await request(fromEvil.port, { path: '/broken' });
    assert.equal(bad.status, 400, bad.body);
    const samples = await metricSamples(engine, 'istio_requests_total');
    const count = (code: string, flags: string) => samples.filter((s) => s.labels['response_code'] === code && s.labels['response_flags'] === flags).reduce((n, s) => n + s.value, 0);
    assert.equal(count('403', 'RBAC'), 3);
    assert.equal(count('400', 'DPE'), 1);
    assert.ok(lines.some((l) => l.includes('rewritten_target_invalid_percent_encoding')), 'the 400 is named in the access log');
  });
});

// Review of branch tc, findings 6 and 4: a consumer-routed request was judged twice, as addressed
// and as sent, stricter than Istio, where the consumer route runs at the client's sidecar and the
// server's sidecar judges only the request as it arrives (a consumer route rewriting /v1 to /v2,
// with the producer's ALLOW on /v2/*, is 200 there and was 403 here). A request a consumer route
// matched is now judged once, as sent (after routing, filters and normalization); one a producer
// route (or none) matched is judged as addressed. That one decision's dry-run results and AUDIT
// list are recorded, counted once (they were dropped on the consumer-route check).
describe('a request a consumer route matched is judged once, as it is sent (Istio: the server\'s sidecar judges what arrives)', () => {
  let b: Backend;
  let cache: Backend;
  let engine: WaypointEngine;
  let fromEvil: Listener;
  let fromShop: Listener;
  before(async () => {
    b = await startHttpBackend(echo('reviews'));
    cache = await startHttpBackend(echo('cache'));
    engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    const to = { ...backend('reviews', 1, [], 'shop'), port: 80 };
    const consumer: Route = {
      ...route('versions', 'reviews', [
        { matches: [match({ path: { type: 'PathPrefix', value: '/v1' } })], filters: [{ type: 'URLRewrite', path: { type: 'ReplacePrefixMatch', value: '/v2' } }], backends: [to] },
        { matches: [match({ path: { type: 'PathPrefix', value: '/cache' } })], backends: [{ ...backend('cache', 1, [], 'web'), port: 80 }] },
      ]),
      namespace: 'evil', port: 80,
    };
    const policy = (p: Partial<AuthorizationPolicy> & Pick<AuthorizationPolicy, 'name' | 'action'>, service: string, paths: string[]): AuthorizationPolicy =>
      ({ namespace: service.split('/')[0]!, scope: 'service', targetServices: [service], rules: [{ from: [], to: [{ paths }], when: [], layer: 'L7' }], layer: 'L7', ...p });
    engine.applyConfig(config({
      services: [service('reviews', '10.96.0.10', [endpoint(b.port)]), service('cache', '10.96.2.10', [endpoint(cache.port)], { namespace: 'web' })],
      routes: [consumer],
      policies: [
        policy({ name: 'v2-only', action: 'ALLOW' }, 'shop/reviews', ['/v2/*']),
        policy({ name: 'shadow', action: 'AUDIT', dryRun: 'DENY' }, 'shop/reviews', ['/v2/secret']),
        policy({ name: 'no-cache', action: 'DENY' }, 'web/cache', ['/cache/*']),
      ],
    }));
    fromEvil = await startTunnelListener(engine, '10.96.0.10:80', 'spiffe://cluster.local/ns/evil/sa/x');
    fromShop = await startTunnelListener(engine, '10.96.0.10:80', 'spiffe://cluster.local/ns/shop/sa/web');
  });
  after(async () => {
    for (const l of [fromEvil, fromShop]) await l.close();
    await engine.close();
    await b.close();
    await cache.close();
  });

  it('a consumer route rewriting /v1 to /v2 under the producer\'s ALLOW on /v2/* is served; the producer\'s client addressing /v1 is not', async () => {
    const r = await request(fromEvil.port, { path: '/v1/items' });
    assert.equal(r.status, 200, `(before: 403, judged as addressed too): ${r.body}`);
    assert.equal(JSON.parse(r.body).url, '/v2/items');
    assert.equal((await request(fromShop.port, { path: '/v1/items' })).status, 403, 'no consumer route for shop: judged as addressed');
  });

  it('the dry-run results of the one decision are those of the request as sent, counted once', async () => {
    const before = (await metricSamples(engine, 'weft_authz_dry_run_total')).reduce((n, s) => n + s.value, 0);
    assert.equal((await request(fromEvil.port, { path: '/v1/secret' })).status, 200, 'a dry-run DENY is never enforced');
    const samples = await metricSamples(engine, 'weft_authz_dry_run_total');
    assert.equal(samples.reduce((n, s) => n + s.value, 0) - before, 1, 'one shadow verdict for the one decision');
    assert.equal(samples.find((s) => /shadow/.test(String(s.labels['policy'] ?? '')) && s.labels['authz_dry_run_result'] === 'denied')?.value, 1, `the request as sent (/v2/secret) would be denied: ${JSON.stringify(samples.map((s) => s.labels))}`);
  });

  it('a backend in another namespace is judged by its own policies (web\'s DENY), as it would be on arrival there', async () => {
    const r = await request(fromEvil.port, { path: '/cache/x' });
    assert.equal(r.status, 403, r.body);
    assert.match(r.body, /no-cache/);
  });
});

// Review of branch tc, finding 5: a consumer route's mirror copy was judged with the request's own
// authority and the backend's port (fallback), but sent with `<host>-shadow` (Envoy's shadow host)
// and port 80 (fallback): what was judged was not what was sent. One helper (mirrorTarget) now gives
// the copy's Service, port and authority to both, so a DENY on the shadow host holds for the copy.
describe('a consumer route\'s mirror copy is judged as it is sent (`<host>-shadow`, its port)', () => {
  let b: Backend;
  let copies: Backend;
  let engine: WaypointEngine;
  let fromEvil: Listener;
  before(async () => {
    b = await startHttpBackend(echo('reviews'));
    copies = await startHttpBackend(echo('copies'));
    engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    const consumer: Route = {
      ...route('copy', 'reviews', [{ filters: [{ type: 'RequestMirror', backend: backend('audit', 1, [], 'shop'), percent: 100 }], backends: [{ ...backend('reviews', 1, [], 'shop'), port: 80 }] }]),
      namespace: 'evil', port: 80,
    };
    const noShadow: AuthorizationPolicy = { name: 'no-shadow', namespace: 'shop', action: 'DENY', scope: 'service', targetServices: ['shop/audit'], rules: [{ from: [], to: [{ hosts: ['*-shadow'] }], when: [], layer: 'L7' }], layer: 'L7' };
    engine.applyConfig(config({ services: [service('reviews', '10.96.0.10', [endpoint(b.port)]), service('audit', '10.96.0.11', [endpoint(copies.port)])], routes: [consumer], policies: [noShadow] }));
    fromEvil = await startTunnelListener(engine, '10.96.0.10:80', 'spiffe://cluster.local/ns/evil/sa/x');
  });
  after(async () => {
    await fromEvil.close();
    await engine.close();
    await b.close();
    await copies.close();
  });

  it('a copy whose shadow host the mirror backend denies is not sent, and counted', async () => {
    const r = await request(fromEvil.port, { path: '/items' });
    assert.equal(r.status, 200, r.body);
    const dropped = (await metricSamples(engine, 'weft_waypoint_mirror_requests_dropped_total')).map((x) => [x.labels['reason'], x.value]);
    assert.deepEqual(dropped, [['policy', 1]], `(before: judged with the host unsuffixed, allowed and sent): ${JSON.stringify(dropped)}`);
    // The copy is decided before the request is forwarded (sendMirror starts then): by its answer,
    // a copy sent would have been on its way; a second request with its answer bounds the wait.
    assert.equal((await request(fromEvil.port, { path: '/more' })).status, 200);
    assert.equal(copies.hits, 0, 'the mirror backend got no copy');
  });
});

// A GRPCRoute consumer route takes the same route stage as an HTTPRoute one (GEP-1294 applies to
// both kinds): what it sends is what shop's policies judge, once.
describe('a GRPCRoute consumer route is judged as it sends', () => {
  let b: Backend;
  let engine: WaypointEngine;
  let fromEvil: Listener;
  before(async () => {
    b = await startHttpBackend(echo('reviews'));
    engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    const reviews = reviewsOnTwoPorts(b.port, 'grpc');
    const consumer: Route = {
      ...route('grpc-detour', 'reviews', [{ matches: [match({ path: { type: 'Exact', value: '/shop.Reviews/Get' } })], backends: [{ ...backend('reviews', 1, [], 'shop'), port: 9090 }] }], { kind: 'GRPCRoute' }),
      namespace: 'evil', port: 80,
    };
    const deny: AuthorizationPolicy = { name: 'no-admin-port', namespace: 'shop', action: 'DENY', scope: 'service', targetServices: ['shop/reviews'], rules: [{ from: [], to: [{ ports: [9090] }], when: [], layer: 'L7' }], layer: 'L7' };
    engine.applyConfig(config({ services: [reviews], routes: [consumer], policies: [deny] }));
    fromEvil = await startTunnelListener(engine, '10.96.0.10:80', 'spiffe://cluster.local/ns/evil/sa/x');
  });
  after(async () => {
    await fromEvil.close();
    await engine.close();
    await b.close();
  });

  it('a method sent to port 9090, which shop denies, is refused 403 naming the policy; the backend is not called', async () => {
    const hits = b.hits;
    const r = await request(fromEvil.port, { path: '/shop.Reviews/Get', method: 'POST' });
    assert.equal(r.status, 403, r.body);
    assert.match(r.body, /no-admin-port.*grpc-detour/s);
    assert.equal(b.hits, hits);
  });
});
