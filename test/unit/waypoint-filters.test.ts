import assert from 'node:assert/strict';
import type { ServerResponse } from 'node:http';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { rewritePath } from '../../waypoint/src/filters.ts';
import type { ConfigIssue } from '../../waypoint/src/errors.ts';
import { RouteTable, pathPrefixMatches } from '../../waypoint/src/router.ts';
import { splitTarget } from '../../waypoint/src/normalize.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import {
  backend, config, echo, endpoint, match, metricSamples, request, route, service, startHttpBackend, startTunnelListener, trafficPolicy,
  type Backend, type Listener,
} from '../../waypoint/testing/harness.ts';

describe('route filters', () => {
  let main: Backend;
  let mirror: Backend;
  const mirrored: Array<{ host: string | undefined; body: string; url: string | undefined }> = [];
  let engine: WaypointEngine;
  let listener: Listener;

  before(async () => {
    main = await startHttpBackend(echo('main'));
    mirror = await startHttpBackend((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        mirrored.push({ host: req.headers.host, body: Buffer.concat(chunks).toString(), url: req.url });
        res.writeHead(500);
        res.end('mirror answers are discarded');
      });
    });
    engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    engine.applyConfig(config({
      services: [
        service('reviews', '10.96.0.10', [endpoint(main.port)]),
        service('shadow', '10.96.0.11', [endpoint(mirror.port)]),
      ],
      routes: [route('reviews', 'reviews', [
        {
          matches: [match({ path: { type: 'PathPrefix', value: '/api/v1' } })],
          filters: [
            { type: 'RequestHeaderModifier', headers: { set: [{ name: 'X-Env', value: 'prod' }], add: [{ name: 'x-tag', value: 'b' }], remove: ['x-drop'] } },
            { type: 'ResponseHeaderModifier', headers: { set: [{ name: 'x-served-by', value: 'waypoint' }], add: [], remove: ['x-backend'] } },
            { type: 'URLRewrite', hostname: 'internal.reviews', path: { type: 'ReplacePrefixMatch', value: '/v2' } },
          ],
          backends: [backend('reviews')],
        },
        {
          matches: [match({ path: { type: 'PathPrefix', value: '/utf8' } })],
          filters: [
            { type: 'RequestHeaderModifier', headers: { set: [{ name: 'x-who', value: 'Zoë 管理者' }], add: [{ name: 'x-tag', value: 'é' }], remove: [] } },
            { type: 'ResponseHeaderModifier', headers: { set: [{ name: 'x-greet', value: 'José 👋' }], add: [], remove: [] } },
          ],
          backends: [backend('reviews')],
        },
        {
          matches: [match({ path: { type: 'Exact', value: '/old' } })],
          filters: [{ type: 'RequestRedirect', scheme: 'https', hostname: 'new.example.com', path: { type: 'ReplaceFullPath', value: '/new' }, statusCode: 301 }],
          backends: [],
        },
        {
          matches: [match({ path: { type: 'PathPrefix', value: '/mirror' } })],
          filters: [{ type: 'RequestMirror', backend: backend('shadow'), percent: 100 }],
          backends: [backend('reviews')],
        },
      ])],
    }));
    listener = await startTunnelListener(engine, '10.96.0.10:80');
  });

  after(async () => {
    await listener.close();
    await engine.close();
    await main.close();
    await mirror.close();
  });

  it('modifies request and response headers and rewrites host and path prefix', async () => {
    const r = await request(listener.port, { path: '/api/v1/items?id=3', headers: { 'x-tag': 'a', 'x-drop': 'yes' } });
    assert.equal(r.status, 200);
    const seen = JSON.parse(r.body);
    assert.equal(seen.url, '/v2/items?id=3');
    assert.equal(seen.headers.host, 'internal.reviews');
    assert.equal(seen.headers['x-env'], 'prod');
    assert.equal(seen.headers['x-tag'], 'a, b');
    assert.equal(seen.headers['x-drop'], undefined);
    assert.match(seen.headers.traceparent, /^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/);
    assert.equal(r.headers['x-served-by'], 'waypoint');
    assert.equal(r.headers['x-backend'], undefined);
  });

  it('redirects with scheme, host, path and status code', async () => {
    const r = await request(listener.port, { path: '/old?q=1' });
    assert.equal(r.status, 301);
    assert.equal(r.headers.location, 'https://new.example.com/new?q=1');
    assert.equal(main.hits, 1);
  });

  it('mirrors a copy with its body and discards the mirror answer', async () => {
    const r = await request(listener.port, { method: 'POST', path: '/mirror/x', body: 'payload', headers: { 'content-type': 'text/plain' } });
    assert.equal(r.status, 200);
    assert.equal(JSON.parse(r.body).body, 'payload');
    for (let i = 0; i < 50 && mirrored.length === 0; i++) await delay(10);
    assert.equal(mirrored.length, 1);
    assert.equal(mirrored[0]!.body, 'payload');
    assert.equal(mirrored[0]!.url, '/mirror/x');
    assert.match(mirrored[0]!.host ?? '', /-shadow$/);
  });

  it('answers 404 NR to a path no rule matches instead of sending it to the service (Gateway API GAMMA)', async () => {
    const before = main.hits;
    const r = await request(listener.port, { path: '/other' });
    assert.equal(r.status, 404);
    assert.equal(r.headers['x-weft-flags'], 'NR');
    assert.match(r.body, /no route rule of shop\/reviews port 80 matches GET \/other/);
    assert.equal(main.hits, before);
  });

  // Envoy writes a header modifier's value as its UTF-8 bytes (the Gateway API's value is a string
  // of any characters but controls). The waypoint wrote each character as one byte: `ë` as the byte
  // EB, and a character past U+00FF failed the request.
  it('writes a header modifier value outside ASCII as its UTF-8 bytes, request and response', async () => {
    const r = await request(listener.port, { path: '/utf8', headers: { 'x-tag': 'a' } });
    assert.equal(r.status, 200, r.body);
    const seen = JSON.parse(r.body) as { headers: Record<string, string> };
    const text = (v: string | string[] | undefined): string => Buffer.from(String(v), 'latin1').toString('utf8');
    assert.equal(text(seen.headers['x-who']), 'Zoë 管理者');
    assert.equal(text(seen.headers['x-tag']), 'a, é');
    assert.equal(text(r.headers['x-greet']), 'José 👋');
  });
});

// RequestMirror (GEP-3171): the mirror's answer is discarded and must not change the request's.
// What a mirror holds (its copy of the body, a connection, up to 30 s) is bounded apart from the
// requests themselves: the mirror backend's own circuit breaker (maxRequests), as Envoy sends a
// shadow through its cluster, and at most `maxMirrors` in flight in the waypoint. Past either, the
// copy is dropped, counted (weft_waypoint_mirror_requests_dropped_total{reason}), and the request
// is served as before. Envoy names the copy's host `<host>-shadow`, before the port (envoy#2595).
describe('request mirror bounds', () => {
  it('a mirror backend that never answers holds at most maxMirrors copies, and its maxRequests; the requests are served and the drops counted', async () => {
    const main = await startHttpBackend(echo('main'));
    const held: Array<{ host: string | undefined; res: ServerResponse }> = [];
    const shadow = await startHttpBackend((req, res) => { req.resume(); held.push({ host: req.headers.host, res }); });
    const engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null }, maxMirrors: 4 });
    const listener = await startTunnelListener(engine, '10.96.0.10:80');
    try {
      const mirrorTo = (name: string, vip: string, limit?: number) => ({
        services: [service(name, vip, [endpoint(shadow.port, '127.0.0.1', `${name}-pod`)])],
        trafficPolicies: limit === undefined ? [] : [trafficPolicy(name, { connectionLimits: { maxRequests: limit } })],
      });
      const a = mirrorTo('shadow-a', '10.96.0.11', 2);
      const b = mirrorTo('shadow-b', '10.96.0.12');
      engine.applyConfig(config({
        services: [service('reviews', '10.96.0.10', [endpoint(main.port)]), ...a.services, ...b.services],
        trafficPolicies: [...a.trafficPolicies],
        routes: [route('reviews', 'reviews', [
          { matches: [match({ path: { type: 'PathPrefix', value: '/a' } })], filters: [{ type: 'RequestMirror', backend: backend('shadow-a'), percent: 100 }], backends: [backend('reviews')] },
          { matches: [match({ path: { type: 'PathPrefix', value: '/b' } })], filters: [{ type: 'RequestMirror', backend: backend('shadow-b'), percent: 100 }], backends: [backend('reviews')] },
        ])],
      }));
      const dropped = async (reason: string): Promise<number> =>
        (await metricSamples(engine, 'weft_waypoint_mirror_requests_dropped_total')).find((v) => v.labels['reason'] === reason)?.value ?? 0;
      const until = async (what: string, ok: () => Promise<boolean> | boolean): Promise<void> => {
        const deadline = Date.now() + 10_000;
        while (!(await ok())) {
          if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
          await delay(10);
        }
      };
      // shadow-a's maxRequests (2) holds first.
      for (let i = 0; i < 5; i++) assert.equal((await request(listener.port, { method: 'POST', path: '/a', body: 'x'.repeat(1000), headers: { host: 'reviews.shop.svc.cluster.local:80' } })).status, 200);
      await until('two mirrors held', () => held.length === 2);
      await until('three drops for shadow-a\'s circuit breaker', async () => await dropped('overflow') === 3);
      const overflows = (await metricSamples(engine, 'weft_waypoint_upstream_overflows_total')).reduce((n, v) => n + v.value, 0);
      assert.equal(overflows, 0, 'a dropped copy is no request answered 503 (UO)');
      assert.equal(held[0]!.host, 'reviews.shop.svc.cluster.local-shadow:80');
      // Then the waypoint's ceiling (4 in flight): two more to shadow-b, the rest dropped.
      for (let i = 0; i < 5; i++) assert.equal((await request(listener.port, { path: '/b' })).status, 200);
      await until('four mirrors held', () => held.length === 4);
      await until('three drops at the waypoint\'s ceiling', async () => await dropped('max_mirrors') === 3);
      assert.equal(held.length, 4);
      assert.equal(main.hits, 10);
      // Answered mirrors free their places.
      for (const h of held.splice(0)) h.res.end();
      await until('a new mirror once places are free', async () => {
        if (held.length > 0) return true;
        await request(listener.port, { path: '/b' });
        return held.length > 0;
      });
    } finally {
      for (const h of held.splice(0)) h.res.destroy();
      await listener.close();
      await engine.close();
      await main.close();
      await shadow.close();
    }
  });
});

describe('route precedence', () => {
  const svc = new Set(['shop/a', 'shop/exact', 'shop/long', 'shop/method', 'shop/headers', 'shop/old', 'shop/new', 'shop/regex']);
  const b = (name: string) => [backend(name)];

  function pick(table: RouteTable, req: { method?: string; path: string; headers?: Record<string, string> }): string | undefined {
    return table.match('shop/a', 80, { method: req.method ?? 'GET', ...splitTarget(req.path), headers: req.headers ?? {} })?.rule.backends[0]?.service;
  }

  it('prefers Exact, then RegularExpression, then the longest prefix, then method, headers, and the older route', () => {
    const issues: never[] = [];
    const table = new RouteTable([
      route('new', 'a', [{ matches: [match({ path: { type: 'PathPrefix', value: '/x' } })], backends: b('new') }], { order: '2026-02-01/shop/new' }),
      route('old', 'a', [{ matches: [match({ path: { type: 'PathPrefix', value: '/x' } })], backends: b('old') }], { order: '2026-01-01/shop/old' }),
      route('r', 'a', [
        { matches: [match({ path: { type: 'PathPrefix', value: '/x/y' } })], backends: b('long') },
        { matches: [match({ path: { type: 'Exact', value: '/x/y/z' } })], backends: b('exact') },
        { matches: [match({ path: { type: 'RegularExpression', value: '/x/y/[0-9]+' } })], backends: b('regex') },
        { matches: [match({ path: { type: 'PathPrefix', value: '/m' }, method: 'POST' })], backends: b('method') },
        { matches: [match({ path: { type: 'PathPrefix', value: '/m' }, headers: [{ type: 'Exact', name: 'x-a', value: '1' }, { type: 'Exact', name: 'x-b', value: '2' }] })], backends: b('headers') },
      ], { order: '2026-03-01/shop/r' }),
    ], svc, issues);
    assert.deepEqual(issues, []);
    assert.equal(pick(table, { path: '/x/y/z' }), 'shop/exact');
    assert.equal(pick(table, { path: '/x/y/42' }), 'shop/regex');
    assert.equal(pick(table, { path: '/x/y/q' }), 'shop/long');
    assert.equal(pick(table, { path: '/x/q' }), 'shop/old');
    assert.equal(pick(table, { path: '/xyz' }), undefined);
    assert.equal(pick(table, { path: '/m', method: 'POST', headers: { 'x-a': '1', 'x-b': '2' } }), 'shop/method');
    assert.equal(pick(table, { path: '/m', headers: { 'x-a': '1', 'x-b': '2' } }), 'shop/headers');
    assert.equal(pick(table, { path: '/m' }), undefined);
  });

  // grpcroute_types.go GRPCRouteRule.Matches: service characters, method characters, header matches;
  // "Merging MUST not be done between GRPCRoutes and HTTPRoutes" (GEP-1294: GRPCRoute first).
  it('ranks GRPCRoute matches by their grpc service and method characters, an older controller\'s by its paths, and GRPCRoute before HTTPRoute', () => {
    const issues: ConfigIssue[] = [];
    const grpc = (service: number, method: number) => ({ serviceChars: service, methodChars: method });
    const table = new RouteTable([
      route('h', 'a', [{ matches: [match({ path: { type: 'Exact', value: '/s.Svc/M' } })], backends: b('old') }], { order: '2020-01-01/shop/h' }),
      route('g', 'a', [
        { matches: [match({ path: { type: 'RegularExpression', value: '^/[^/]+/M$' }, method: 'POST', grpc: grpc(0, 1) })], backends: b('method') },
        { matches: [match({ path: { type: 'PathPrefix', value: '/s.Svc' }, method: 'POST', grpc: grpc(5, 0) })], backends: b('long') },
      ], { kind: 'GRPCRoute' }),
      // No `grpc` (a controller before it): Exact /service/method counts both parts, PathPrefix the service.
      route('legacy', 'a', [
        { matches: [match({ path: { type: 'PathPrefix', value: '/l.Svc' }, method: 'POST' })], backends: b('long') },
        { matches: [match({ path: { type: 'Exact', value: '/l.Svc/M' }, method: 'POST' })], backends: b('exact') },
      ], { kind: 'GRPCRoute' }),
    ], svc, issues);
    assert.deepEqual(issues, []);
    assert.equal(pick(table, { method: 'POST', path: '/s.Svc/M' }), 'shop/long');
    assert.equal(pick(table, { method: 'POST', path: '/x.Svc/M' }), 'shop/method');
    assert.equal(pick(table, { method: 'POST', path: '/l.Svc/M' }), 'shop/exact');
    assert.equal(pick(table, { method: 'POST', path: '/l.Svc/N' }), 'shop/long');
    const bad: ConfigIssue[] = [];
    new RouteTable([route('g', 'a', [{ matches: [match({ grpc: grpc(-1, 0.5) })], backends: b('new') }], { kind: 'GRPCRoute' })], svc, bad);
    assert.deepEqual(bad.map((i) => i.path), ['rules[0].matches[0].grpc.serviceChars', 'rules[0].matches[0].grpc.methodChars']);
  });

  it('matches query parameters', () => {
    const table = new RouteTable([route('q', 'a', [
      { matches: [match({ queryParams: [{ type: 'Exact', name: 'v', value: '2' }] })], backends: b('new') },
      { backends: b('old') },
    ])], svc, []);
    assert.equal(pick(table, { path: '/p?v=2' }), 'shop/new');
    assert.equal(pick(table, { path: '/p?v=3' }), 'shop/old');
  });

  it('matches path prefixes element-wise', () => {
    assert.equal(pathPrefixMatches('/foo', '/foo'), true);
    assert.equal(pathPrefixMatches('/foo/', '/foo/bar'), true);
    assert.equal(pathPrefixMatches('/foo', '/foobar'), false);
    assert.equal(pathPrefixMatches('/', '/anything'), true);
  });

  it('rewrites prefixes the Gateway API way', () => {
    assert.equal(rewritePath('/foo/bar', { type: 'ReplacePrefixMatch', value: '/' }, '/foo'), '/bar');
    assert.equal(rewritePath('/foo', { type: 'ReplacePrefixMatch', value: '/bar' }, '/foo'), '/bar');
    assert.equal(rewritePath('/foo/x', { type: 'ReplacePrefixMatch', value: '/bar/' }, '/foo/'), '/bar/x');
    assert.equal(rewritePath('/foo/x', { type: 'ReplaceFullPath', value: '/y' }, '/foo'), '/y');
  });
});
