// The CORS route filter (Gateway API HTTPCORSFilter, GEP-1767): the cases of the upstream
// conformance test httproute-cors.go against the engine, origin matching, and that a preflight is
// answered by the waypoint after policy, never by the backend.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { AuthorizationPolicy, RouteFilter } from '../../lib/model/mesh.ts';
import { corsOriginAllowed } from '../../waypoint/src/filters.ts';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import {
  CALLER, backend, config, echo, endpoint, match, request, route, service, startHttpBackend, startTunnelListener,
  type Backend, type Listener, type Reply,
} from '../../waypoint/testing/harness.ts';

const cors = (c: Partial<Extract<RouteFilter, { type: 'CORS' }>>): RouteFilter => ({
  type: 'CORS', allowOrigins: [], allowCredentials: false, allowMethods: [], allowHeaders: [], exposeHeaders: [], maxAge: 5, ...c,
});

/** A comma list compared as a set, whitespace ignored (upstream's IgnoreWhitespace and either order). */
function list(v: string | string[] | undefined): string[] {
  return String(v ?? '').split(',').map((s) => s.trim()).filter(Boolean).sort();
}

describe('waypoint: CORS filter (HTTPCORSFilter, GEP-1767, httproute-cors.go)', () => {
  let b: Backend;
  let engine: WaypointEngine;
  let l: Listener;

  before(async () => {
    b = await startHttpBackend(echo('web'));
    engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    const rule = (prefix: string, c: Partial<Extract<RouteFilter, { type: 'CORS' }>>) => ({ matches: [match({ path: { type: 'PathPrefix', value: prefix } })], filters: [cors(c)], backends: [backend('web')] });
    const deny: AuthorizationPolicy = {
      name: 'no-options-on-private', namespace: 'shop', action: 'DENY', scope: 'service', targetServices: ['shop/web'], layer: 'L7',
      rules: [{ from: [{ principals: [CALLER] }], to: [{ methods: ['OPTIONS'], paths: ['/private*'] }], when: [], layer: 'L7' }],
    };
    engine.applyConfig(config({
      services: [service('web', '10.96.0.50', [endpoint(b.port)])],
      routes: [route('cors', 'web', [
        rule('/cors-1', { allowOrigins: ['https://www.foo.com', 'https://*.bar.com'], allowMethods: ['GET', 'OPTIONS'], allowHeaders: ['x-header-1', 'x-header-2'], exposeHeaders: ['x-header-3', 'x-header-4'], allowCredentials: true, maxAge: 3600 }),
        rule('/cors-2', { allowOrigins: ['https://www.foo.com'], allowMethods: ['*'] }),
        rule('/cors-wildcard-origin', { allowOrigins: ['*'], allowMethods: ['PUT'] }),
        rule('/cors-wildcard-methods-headers', { allowOrigins: ['https://other.foo.com'], allowMethods: ['*'], allowHeaders: ['*'], allowCredentials: true }),
        rule('/cors-wildcard-methods-headers-unauth', { allowOrigins: ['https://other.foo.com'], allowMethods: ['*'], allowHeaders: ['*'] }),
        rule('/private', { allowOrigins: ['*'], allowMethods: ['GET'] }),
      ])],
      policies: [deny],
    }));
    l = await startTunnelListener(engine, '10.96.0.50:80');
  });

  after(async () => {
    await l.close();
    await engine.close();
    await b.close();
  });

  const send = (method: string, path: string, headers: Record<string, string>): Promise<Reply> => request(l.port, { method, path, host: 'web', headers });
  const preflight = (path: string, origin: string, method: string, reqHeaders?: string): Promise<Reply> =>
    send('OPTIONS', path, { origin, 'access-control-request-method': method, ...(reqHeaders ? { 'access-control-request-headers': reqHeaders } : {}) });

  it('answers a preflight from an exact, a wildcard and a deeper wildcard origin itself, with every allowed header', async () => {
    for (const origin of ['https://www.foo.com', 'https://www.bar.com', 'https://xpto.www.bar.com']) {
      const hits = b.hits;
      const r = await preflight('/cors-1', origin, 'GET', 'x-header-1, x-header-2');
      assert.equal(r.status, 200, origin);
      assert.equal(b.hits, hits, 'the backend never saw the preflight');
      assert.equal(r.headers['access-control-allow-origin'], origin);
      assert.deepEqual(list(r.headers['access-control-allow-methods']), ['GET', 'OPTIONS']);
      assert.deepEqual(list(r.headers['access-control-allow-headers']), ['x-header-1', 'x-header-2']);
      assert.deepEqual(list(r.headers['access-control-expose-headers']), ['x-header-3', 'x-header-4']);
      assert.equal(r.headers['access-control-max-age'], '3600');
      assert.equal(r.headers['access-control-allow-credentials'], 'true');
      assert.equal(r.body, '');
    }
  });

  it('gives an origin it does not allow no CORS headers, preflight or not', async () => {
    const p = await preflight('/cors-1', 'https://foobar.com', 'GET');
    assert.ok([200, 204, 403].includes(p.status));
    assert.equal(p.headers['access-control-allow-origin'], undefined);
    const g = await send('GET', '/cors-1', { origin: 'https://foobar.com' });
    assert.equal(g.status, 200);
    assert.equal(g.headers['access-control-allow-origin'], undefined);
    // Not a look-alike either: the wildcard needs a whole label, and the scheme must match.
    for (const o of ['https://evilbar.com', 'http://www.foo.com', 'https://www.foo.com.evil.com', 'https://www.foo.com:8443']) {
      assert.equal((await send('GET', '/cors-1', { origin: o })).headers['access-control-allow-origin'], undefined, o);
    }
  });

  it('adds the CORS headers to the backend\'s answer to an actual request', async () => {
    for (const origin of ['https://www.foo.com', 'https://www.bar.com']) {
      const r = await send('GET', '/cors-1', { origin, 'access-control-request-method': 'GET' });
      assert.equal(r.status, 200);
      assert.equal(JSON.parse(r.body).backend, 'web', 'the request reached the backend');
      assert.equal(r.headers['access-control-allow-origin'], origin);
      assert.equal(r.headers['access-control-allow-credentials'], 'true');
      assert.deepEqual(list(r.headers['access-control-expose-headers']), ['x-header-3', 'x-header-4']);
      assert.match(String(r.headers['vary']), /Origin/);
    }
  });

  it('answers a * method list with the requested method, and sends no credentials header unless allowed', async () => {
    const r = await preflight('/cors-2', 'https://www.foo.com', 'POST');
    assert.equal(r.status, 200);
    assert.ok(['POST', '*'].includes(String(r.headers['access-control-allow-methods'])));
    assert.equal(r.headers['access-control-allow-origin'], 'https://www.foo.com');
    assert.equal(r.headers['access-control-allow-credentials'], undefined);
  });

  it('allows any origin with *, with or without a port, on preflights and actual requests', async () => {
    for (const origin of ['https://foobar.com', 'https://foobar.com:12345']) {
      const p = await preflight('/cors-wildcard-origin', origin, 'PUT');
      assert.equal(p.status, 200);
      assert.ok([origin, '*'].includes(String(p.headers['access-control-allow-origin'])));
      assert.equal(p.headers['access-control-allow-methods'], 'PUT');
      assert.equal(p.headers['access-control-allow-credentials'], undefined);
      const r = await send('PUT', '/cors-wildcard-origin', { origin });
      assert.equal(r.status, 200);
      assert.ok([origin, '*'].includes(String(r.headers['access-control-allow-origin'])));
    }
  });

  it('with credentials allowed, answers wildcards with what was asked (the Fetch standard), and hides credentials where they are not', async () => {
    const p = await preflight('/cors-wildcard-methods-headers', 'https://other.foo.com', 'PUT', 'x-header-1, x-header-2');
    assert.equal(p.headers['access-control-allow-origin'], 'https://other.foo.com');
    assert.equal(p.headers['access-control-allow-methods'], 'PUT');
    assert.deepEqual(list(p.headers['access-control-allow-headers']), ['x-header-1', 'x-header-2']);
    assert.equal(p.headers['access-control-allow-credentials'], 'true');
    const u = await preflight('/cors-wildcard-methods-headers-unauth', 'https://other.foo.com', 'PUT', 'x-header-1, x-header-2');
    assert.equal(u.status, 200);
    assert.equal(u.headers['access-control-allow-credentials'], undefined);
    const g = await send('GET', '/cors-wildcard-methods-headers', { origin: 'https://other.foo.com', authorization: 'Bearer test' });
    assert.equal(g.headers['access-control-allow-origin'], 'https://other.foo.com');
    assert.equal(g.headers['access-control-allow-credentials'], 'true');
    const gu = await send('GET', '/cors-wildcard-methods-headers-unauth', { origin: 'https://other.foo.com', authorization: 'Bearer test' });
    assert.equal(gu.headers['access-control-allow-origin'], 'https://other.foo.com');
    assert.equal(gu.headers['access-control-allow-credentials'], undefined);
  });

  it('judges a preflight by policy first: a DENY on OPTIONS answers 403 (RBAC), not a CORS grant', async () => {
    const r = await preflight('/private', 'https://any.example', 'GET');
    assert.equal(r.status, 403);
    assert.equal(r.headers['x-weft-flags'], 'RBAC');
    assert.equal(r.headers['access-control-allow-origin'], undefined);
  });

  it('matches origins as the Gateway API defines them', () => {
    const allowed = ['https://www.foo.com', 'https://*.bar.com', 'http://local.test:8080'];
    const cases: Array<[string, boolean]> = [
      ['https://www.foo.com', true], ['HTTPS://WWW.FOO.COM', true], ['https://www.foo.com:443', true], ['https://www.foo.com:444', false],
      ['http://www.foo.com', false], ['https://a.bar.com', true], ['https://a.b.bar.com', true], ['https://bar.com', false],
      ['https://xbar.com', false], ['http://local.test:8080', true], ['http://local.test', false], ['null', false], ['https://www.foo.com/path', false],
    ];
    for (const [origin, want] of cases) assert.equal(corsOriginAllowed(allowed, origin), want, origin);
    assert.equal(corsOriginAllowed(['*'], 'null'), true, '* is any origin');
  });

  it('refuses a filter that cannot work when the config is applied, naming it', () => {
    const e2 = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    const applied = e2.applyConfig(config({
      services: [service('web', '10.96.0.51', [endpoint(b.port)])],
      routes: [route('bad', 'web', [{ backends: [backend('web')], filters: [cors({ allowOrigins: ['not an origin'] })] }])],
    }));
    assert.ok(applied.issues.some((i) => i.path === 'rules[0].filters[0]' && /not an origin/.test(i.message)), JSON.stringify(applied.issues));
    const star = e2.applyConfig(config({
      services: [service('web', '10.96.0.51', [endpoint(b.port)])],
      routes: [route('bad', 'web', [{ backends: [backend('web')], filters: [cors({ allowOrigins: ['https://*'] })] }])],
    }));
    assert.ok(star.issues.some((i) => /"https:\/\/\*" is not an origin/.test(i.message)), JSON.stringify(star.issues));
    void e2.close();
  });
});
