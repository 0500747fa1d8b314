import assert from 'node:assert/strict';
import http2 from 'node:http2';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { AuthorizationPolicy } from '../../lib/model/mesh.ts';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { PolicyTable } from '../../lib/policy/authz.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import {
  CALLER, config, echo, endpoint, h2request, metricSamples, request, service, startHttpBackend, startTunnelListener,
  type Backend, type Listener, type Reply,
} from '../../waypoint/testing/harness.ts';
import { H2, H2_PREFACE, h2Frame, hpackLiteral } from '../lab/h2-frames.ts';
import { until } from '../lab/wait.ts';

function policy(name: string, action: AuthorizationPolicy['action'], rules: AuthorizationPolicy['rules'], targets = ['shop/reviews']): AuthorizationPolicy {
  return { name, namespace: 'shop', action, scope: 'service', targetServices: targets, rules, layer: 'L7' };
}

/**
 * A waypoint in front of the reviews backend (service 10.96.0.10:80) enforcing `policies`, and a
 * tunnel listener into it from `caller`: started before the calling describe's tests, closed after.
 */
function reviewsWaypoint(policies: AuthorizationPolicy[], caller?: string, accessLog: ((line: string) => void) | null = null): { engine: WaypointEngine; l: Listener } {
  const w = {} as { engine: WaypointEngine; l: Listener; b: Backend };
  before(async () => {
    w.b = await startHttpBackend(echo('reviews'));
    w.engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog } });
    w.engine.applyConfig(config({ services: [service('reviews', '10.96.0.10', [endpoint(w.b.port)])], policies }));
    w.l = await startTunnelListener(w.engine, '10.96.0.10:80', ...(caller ? [caller] : []));
  });
  after(async () => {
    await w.l.close();
    await w.engine.close();
    await w.b.close();
  });
  return w;
}

describe('waypoint authorization', () => {
  let b: Backend;
  let engine: WaypointEngine;
  let tester: Listener;
  let other: Listener;

  before(async () => {
    b = await startHttpBackend(echo('reviews'));
    engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    engine.applyConfig(config({
      services: [service('reviews', '10.96.0.10', [endpoint(b.port)])],
      policies: [policy('deny-admin-post', 'DENY', [{
        from: [{ principals: [CALLER] }], to: [{ methods: ['POST'], paths: ['/admin', '/admin/*'] }], when: [], layer: 'L7',
      }])],
    }));
    tester = await startTunnelListener(engine, '10.96.0.10:80', CALLER);
    other = await startTunnelListener(engine, '10.96.0.10:80', 'spiffe://cluster.local/ns/shop/sa/ops');
  });

  after(async () => {
    await tester.close();
    await other.close();
    await engine.close();
    await b.close();
  });

  it('denies POST /admin from the principal in the DENY rule with a 403 naming the policy', async () => {
    const r = await request(tester.port, { method: 'POST', path: '/admin', body: 'x' });
    assert.equal(r.status, 403);
    assert.match(r.body, /shop\/deny-admin-post/);
    assert.equal(r.headers['x-weft-flags'], 'RBAC');
    const sub = await request(tester.port, { method: 'POST', path: '/admin/users' });
    assert.equal(sub.status, 403);
  });

  it('lets GET / from the same caller through', async () => {
    const r = await request(tester.port, { path: '/' });
    assert.equal(r.status, 200);
    assert.equal(JSON.parse(r.body).backend, 'reviews');
  });

  it('lets POST /admin from another principal through', async () => {
    const r = await request(other.port, { method: 'POST', path: '/admin' });
    assert.equal(r.status, 200);
  });

  it('labels the denial with the caller principal in metrics', async () => {
    const samples = await metricSamples(engine, 'istio_requests_total');
    const denied = samples.find((s) => s.labels['response_code'] === '403');
    assert.ok(denied, JSON.stringify(samples));
    assert.equal(denied.labels['source_principal'], CALLER);
    assert.equal(denied.labels['source_workload_namespace'], 'shop');
    assert.equal(denied.labels['destination_service'], 'reviews.shop.svc.cluster.local');
  });

  it('requires a match of some ALLOW policy once one applies', async () => {
    engine.applyConfig(config({
      services: [service('reviews', '10.96.0.10', [endpoint(b.port)])],
      policies: [policy('allow-ops-get', 'ALLOW', [{
        from: [{ principals: ['cluster.local/ns/shop/sa/ops'] }], to: [{ methods: ['GET'] }], when: [
          { key: 'request.headers[x-team]', values: ['blue*'] },
        ], layer: 'L7',
      }])],
    }));
    assert.equal((await request(other.port, { headers: { 'x-team': 'blue-1' } })).status, 200);
    const noHeader = await request(other.port);
    assert.equal(noHeader.status, 403);
    assert.match(noHeader.body, /shop\/allow-ops-get/);
    assert.equal((await request(tester.port, { headers: { 'x-team': 'blue-1' } })).status, 403);
  });
});

describe('policy table (waypoint scoping)', () => {
  const svc = 'shop/reviews';
  const base = { destinationPort: 80, method: 'GET', target: '/', host: 'reviews', headers: {} };

  it('allows everything when no policy applies to the service', () => {
    const t = new PolicyTable([policy('p', 'DENY', [{ from: [], to: [], when: [], layer: 'L7' }], ['shop/other'])]);
    assert.equal(t.evaluate(svc, base).allowed, true);
  });

  it('denies everything with an ALLOW policy without rules', () => {
    const t = new PolicyTable([policy('nothing', 'ALLOW', [])]);
    assert.equal(t.evaluate(svc, base).allowed, false);
  });

  // Istio (pilot/pkg/model/policyattachment.go ShouldAttachPolicy: "waypoints never use selector"):
  // a waypoint applies only policies whose targetRefs reach it. A namespace-wide policy, with or
  // without a selector, and a root-namespace one are the destination agents' (ztunnel's), which
  // judge the waypoint as the peer.
  it('applies only policies attached by targetRefs: namespace-wide, mesh-wide and selector policies are the agents\'', () => {
    const ns: AuthorizationPolicy = { name: 'ns', namespace: 'shop', action: 'DENY', scope: 'namespace', rules: [{ from: [], to: [{ paths: ['/x'] }], when: [], layer: 'L7' }], layer: 'L7' };
    const mesh: AuthorizationPolicy = { ...ns, name: 'mesh', namespace: 'weft-system', scope: 'mesh' };
    const wl: AuthorizationPolicy = { ...ns, name: 'wl', scope: 'workload', selector: { app: 'reviews' }, rules: [{ from: [], to: [], when: [], layer: 'L4' }] };
    const t = new PolicyTable([ns, mesh, wl]);
    assert.equal(t.evaluate(svc, { ...base, target: '/x' }).allowed, true);
    assert.equal(t.evaluate(svc, base).allowed, true);
    const attached = new PolicyTable([{ ...ns, scope: 'service', targetServices: [svc] }]);
    assert.equal(attached.evaluate(svc, { ...base, target: '/x' }).allowed, false);
    assert.equal(attached.evaluate('web/front', { ...base, target: '/x' }).allowed, true);
  });

  it('fails closed on a policy it cannot compile and reports the field (a controller/waypoint version skew)', () => {
    const bad = policy('bad', 'DENY', [{ from: [{ ipBlocks: ['10.0.0.0/33'] }], to: [], when: [], layer: 'L4' }]);
    const t = new PolicyTable([bad]);
    assert.equal(t.errors.length, 1);
    assert.equal(t.errors[0]!.policy, 'shop/bad');
    assert.match(t.errors[0]!.error.path, /rules\[0\]\.from\[0\]\.ipBlocks/);
    const d = t.evaluate(svc, base);
    assert.equal(d.allowed, false);
    assert.match(d.reason, /fails closed/);
    assert.equal(t.evaluate('shop/other', base).allowed, true, 'it costs only the services it applies to');
  });
});

// Istio AuthorizationPolicy reference: remoteIpBlocks / remote.ip are "populated from
// X-Forwarded-For"; ipBlocks / source.ip are the connection's. AUDIT "does not affect whether
// requests are allowed or denied".
describe('remote.ip and AUDIT through the waypoint', () => {
  const lines: string[] = [];
  const w = reviewsWaypoint([
    policy('no-bad-client', 'DENY', [{ from: [{ remoteIpBlocks: ['198.51.100.0/24'] }], to: [], when: [], layer: 'L7' }]),
    policy('watch-admin', 'AUDIT', [{ from: [], to: [{ paths: ['/admin*'] }], when: [], layer: 'L7' }]),
    // A DENY on the connection's own address never reads X-Forwarded-For.
    policy('no-lab', 'DENY', [{ from: [{ ipBlocks: ['192.0.2.0/24'] }], to: [], when: [], layer: 'L4' }]),
  ], undefined, (x) => lines.push(x));

  it('denies by the last X-Forwarded-For address, and not by an earlier one', async () => {
    const denied = await request(w.l.port, { headers: { 'x-forwarded-for': '203.0.113.5, 198.51.100.7' } });
    assert.equal(denied.status, 403);
    assert.match(denied.body, /shop\/no-bad-client/);
    assert.equal((await request(w.l.port, { headers: { 'x-forwarded-for': '198.51.100.7, 203.0.113.5' } })).status, 200);
  });

  it('a forged X-Forwarded-For does not move a connection out of an ipBlocks DENY', async () => {
    // A tunnel whose client address (from the HBONE peer) is in 192.0.2.0/24.
    const server = net.createServer((sock) => w.engine.handleTunnel(sock, { target: '10.96.0.10:80', peerSpiffeId: CALLER, clientAddress: '192.0.2.9' }));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const port = (server.address() as net.AddressInfo).port;
      const r = await request(port, { headers: { 'x-forwarded-for': '10.0.0.1' }, agent: false });
      assert.equal(r.status, 403);
      assert.match(r.body, /shop\/no-lab/);
    } finally {
      server.close();
    }
  });

  it('an AUDIT match is logged and decides nothing', async () => {
    lines.length = 0;
    const r = await request(w.l.port, { path: '/admin/x' });
    assert.equal(r.status, 200);
    const entry = lines.map((x) => JSON.parse(x) as { path: string; audit_policies?: string[] }).find((e) => e.path === '/admin/x');
    assert.deepEqual(entry?.audit_policies, ['shop/watch-admin']);
  });
});

// Envoy maps the legacy `host` header onto :authority (envoyproxy/envoy
// source/common/http/header_map_impl.cc), so Istio's `request.headers[host]` reads the authority
// over HTTP/1.1 and HTTP/2 alike: a caller cannot step around such a DENY by speaking HTTP/2, whose
// requests carry :authority and no host header.
describe('a DENY on request.headers[host] holds over HTTP/2', () => {
  const w = reviewsWaypoint([policy('deny-admin-host', 'DENY', [{ from: [], to: [], when: [{ key: 'request.headers[host]', values: ['admin.shop'] }], layer: 'L7' }])], CALLER);

  it('denies HTTP/1.1 (Host) and HTTP/2 (:authority) alike, counts both, and lets other hosts through', async () => {
    assert.equal((await request(w.l.port, { host: 'admin.shop' })).status, 403);
    const session = http2.connect(`http://127.0.0.1:${w.l.port}`);
    try {
      const denied = await h2request(session, { ':path': '/', ':authority': 'admin.shop' });
      assert.equal(denied.status, 403);
      assert.match(denied.body, /shop\/deny-admin-host/);
      assert.equal((await h2request(session, { ':path': '/', ':authority': 'reviews.shop' })).status, 200);
    } finally {
      session.close();
    }
    const samples = await metricSamples(w.engine, 'istio_requests_total');
    const count = samples.filter((s) => s.labels['response_code'] === '403' && s.labels['response_flags'] === 'RBAC').reduce((n, s) => n + s.value, 0);
    assert.equal(count, 2, JSON.stringify(samples));
  });
});

// Istio's `request.headers[:path]` / `[:method]` (pilot requestHeaderGenerator: Envoy's header
// matcher on the pseudo-header; istio.io/latest/docs/reference/config/security/conditions/): a DENY
// on them holds at the waypoint over HTTP/1.1 and HTTP/2; `:path` is the whole normalized target,
// query included, as Envoy's :path, so `/admin*` holds for `/admin?x=1` and `/%61dmin`.
describe('a DENY on request.headers[:path] and [:method] holds at the waypoint', () => {
  const w = reviewsWaypoint([
    policy('deny-admin-path', 'DENY', [{ from: [], to: [], when: [{ key: 'request.headers[:path]', values: ['/admin*'] }], layer: 'L7' }]),
    policy('deny-delete', 'DENY', [{ from: [], to: [], when: [{ key: 'request.headers[:method]', values: ['DELETE'] }], layer: 'L7' }]),
    policy('deny-secret', 'DENY', [{ from: [], to: [{ paths: ['/secret'] }], when: [], layer: 'L7' }]),
  ], CALLER);


  /** The RBAC refusals counted so far: each `it` reads it before and asserts its own, whatever ran first. */
  const rbacDenials = async (): Promise<number> =>
    (await metricSamples(w.engine, 'istio_requests_total')).filter((s) => s.labels['response_code'] === '403' && s.labels['response_flags'] === 'RBAC').reduce((n, s) => n + s.value, 0);

  it('denies by :path (query included, normalized) and :method over HTTP/1.1 and HTTP/2, counts each, lets the rest through', async () => {
    const before = await rbacDenials();
    const denied = await request(w.l.port, { path: '/admin?x=1' });
    assert.equal(denied.status, 403);
    assert.match(denied.body, /shop\/deny-admin-path/);
    assert.equal((await request(w.l.port, { path: '/%61dmin/users' })).status, 403);
    assert.equal((await request(w.l.port, { method: 'DELETE', path: '/items/1' })).status, 403);
    const session = http2.connect(`http://127.0.0.1:${w.l.port}`);
    try {
      assert.equal((await h2request(session, { ':path': '/admin/users', ':authority': 'reviews.shop' })).status, 403);
      const del = await h2request(session, { ':method': 'DELETE', ':path': '/items/1', ':authority': 'reviews.shop' });
      assert.equal(del.status, 403);
      assert.match(del.body, /shop\/deny-delete/);
      assert.equal((await h2request(session, { ':path': '/items/1', ':authority': 'reviews.shop' })).status, 200);
    } finally {
      session.close();
    }
    assert.equal((await request(w.l.port, { path: '/public?next=/admin' })).status, 200);
    assert.equal(await rbacDenials() - before, 5);
  });

  // Istio pathGenerator (Envoy's path matcher): `paths` read the path without the query.
  it('a DENY on paths holds for the path with any query (paths read the path without it), counted and named', async () => {
    const before = await rbacDenials();
    const denied = await request(w.l.port, { path: '/secret?x=1' });
    assert.equal(denied.status, 403);
    assert.match(denied.body, /shop\/deny-secret/);
    assert.equal((await request(w.l.port, { path: '/secret/x?y=1' })).status, 200);
    assert.equal(await rbacDenials() - before, 1);
  });
});

// Envoy's header matcher (and so Istio's `request.headers[...]` and the Gateway API's header match)
// compares a field's bytes with the configured string's UTF-8 bytes (StringMatcher on the raw value).
// node hands the waypoint each byte of a field value as one character (latin1), so a DENY written
// `José` never met `José` sent as UTF-8, over HTTP/1.1 or HTTP/2, and the backend got it.
describe('a DENY on a header value outside ASCII holds for its UTF-8 bytes and its latin1 reading', () => {
  const w = reviewsWaypoint([
    policy('deny-jose', 'DENY', [{ from: [], to: [], when: [{ key: 'request.headers[x-user]', values: ['José', 'Zoë*'] }], layer: 'L7' }]),
  ], CALLER);

  it('denies the value sent as UTF-8 over HTTP/1.1 and HTTP/2, counts each, and passes other bytes on unchanged', async () => {
    const rbac = async (): Promise<number> =>
      (await metricSamples(w.engine, 'istio_requests_total')).filter((s) => s.labels['response_code'] === '403' && s.labels['response_flags'] === 'RBAC').reduce((n, s) => n + s.value, 0);
    const before = await rbac();
    // node's client writes each character of a field value as one byte: these are the value's bytes.
    const h1 = (user: Buffer): Promise<Reply> => request(w.l.port, { headers: { 'x-user': user.toString('latin1') } });
    const denied = await h1(Buffer.from('José', 'utf8'));
    assert.equal(denied.status, 403);
    assert.match(denied.body, /shop\/deny-jose/);
    assert.equal((await h1(Buffer.from('Zoë Smith', 'utf8'))).status, 403, 'a prefix outside ASCII');
    // HTTP/2, its field written as the UTF-8 bytes of the string (RFC 9113 section 8.2.1 forbids no such octet).
    const block = Buffer.concat(([[':method', 'GET'], [':scheme', 'http'], [':path', '/h2'], [':authority', 'reviews.shop'], ['x-user', 'José']] as const).map(([n, v]) => hpackLiteral(n, v)));
    const sock = net.connect(w.l.port, '127.0.0.1');
    sock.on('error', () => {});
    try {
      sock.write(Buffer.concat([H2_PREFACE, h2Frame(H2.SETTINGS, 0, 0, Buffer.alloc(0)), h2Frame(H2.HEADERS, H2.END_HEADERS | H2.END_STREAM, 1, block)]));
      await until('the HTTP/2 request is denied (counted)', async () => await rbac() === before + 3, 10_000);
    } finally {
      sock.destroy();
    }
    // `Jos` and the latin1 byte E9 is another value to Envoy, but a backend reading fields as
    // ISO-8859-1 (RFC 9110 section 5.5's historical reading) sees José: a DENY or AUDIT also matches
    // the latin1 reading of a value whose characters are all up to U+00FF, denying more, never less
    // (main denied it; the UTF-8 comparison alone let it through).
    assert.equal((await h1(Buffer.from([0x4a, 0x6f, 0x73, 0xe9]))).status, 403, 'José as latin1 bytes');
    assert.equal((await h1(Buffer.from('Zo\xeb Smith', 'latin1'))).status, 403, 'the prefix as latin1 bytes');
    // `José` written decomposed (e + U+0301) is another value: it reaches the backend byte for byte.
    const user = Buffer.from('Jose\u0301', 'utf8');
    const passed = await h1(user);
    assert.equal(passed.status, 200, user.toString('hex'));
    assert.equal(Buffer.from(JSON.parse(passed.body).headers['x-user'] as string, 'latin1').toString('hex'), user.toString('hex'));
    assert.equal(await rbac(), before + 5);
  });
});
