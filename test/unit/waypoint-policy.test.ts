import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { AuthorizationPolicy } from '../../lib/model/mesh.ts';
import type { ConfigIssue } from '../../waypoint/src/errors.ts';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { PolicyTable } from '../../waypoint/src/policy.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import {
  CALLER, config, echo, endpoint, metricSamples, request, service, startHttpBackend, startTunnelListener,
  type Backend, type Listener,
} from '../../waypoint/testing/harness.ts';

function policy(name: string, action: 'ALLOW' | 'DENY', rules: AuthorizationPolicy['rules'], targets = ['shop/reviews']): AuthorizationPolicy {
  return { name, namespace: 'shop', action, scope: 'service', targetServices: targets, rules, layer: 'L7' };
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

describe('policy table', () => {
  const base = { service: 'shop/reviews', port: 80, method: 'GET', path: '/', host: 'reviews', headers: {} };

  it('allows everything when no policy applies', () => {
    const t = new PolicyTable([policy('p', 'DENY', [{ from: [], to: [], when: [], layer: 'L7' }], ['shop/other'])], []);
    assert.deepEqual(t.evaluate(base), { allowed: true });
  });

  it('denies everything with an ALLOW policy without rules', () => {
    const t = new PolicyTable([policy('nothing', 'ALLOW', [])], []);
    assert.equal(t.evaluate(base).allowed, false);
  });

  it('matches namespaces, ipBlocks, suffix paths and notValues', () => {
    const t = new PolicyTable([policy('p', 'DENY', [{
      from: [{ namespaces: ['shop'], ipBlocks: ['10.0.0.0/8'] }], to: [{ paths: ['*.php'], notMethods: ['HEAD'] }], when: [], layer: 'L7',
    }])], []);
    const req = { ...base, principal: 'spiffe://cluster.local/ns/shop/sa/a', sourceIp: '10.1.2.3', path: '/x/index.php' };
    assert.equal(t.evaluate(req).allowed, false);
    assert.equal(t.evaluate({ ...req, method: 'HEAD' }).allowed, true);
    assert.equal(t.evaluate({ ...req, sourceIp: '192.168.0.1' }).allowed, true);
    assert.equal(t.evaluate({ ...req, principal: 'spiffe://cluster.local/ns/web/sa/a' }).allowed, true);
    assert.equal(t.evaluate({ ...req, path: '/x/index.html' }).allowed, true);
  });

  it('never matches HTTP-only fields of an ALLOW rule for a TCP connection, and ignores them in DENY rules', () => {
    const tcp = { ...base, method: '', path: '', host: '', l7: false, principal: 'spiffe://cluster.local/ns/shop/sa/a' };
    const allow = new PolicyTable([policy('get-only', 'ALLOW', [{ from: [], to: [{ methods: ['GET'] }], when: [], layer: 'L7' }])], []);
    assert.equal(allow.evaluate(tcp).allowed, false);
    assert.equal(allow.evaluate({ ...tcp, l7: true, method: 'GET', path: '/' }).allowed, true);
    const allowL4 = new PolicyTable([policy('from-shop', 'ALLOW', [{ from: [{ namespaces: ['shop'] }], to: [], when: [], layer: 'L4' }])], []);
    assert.equal(allowL4.evaluate(tcp).allowed, true);
    const deny = new PolicyTable([policy('no-header', 'DENY', [{ from: [{ namespaces: ['shop'] }], to: [], when: [{ key: 'request.headers[x-a]', values: ['1'] }], layer: 'L7' }])], []);
    assert.equal(deny.evaluate(tcp).allowed, false);
    assert.equal(deny.evaluate({ ...tcp, l7: true, path: '/' }).allowed, true);
  });

  it('rejects unknown condition keys and bad CIDRs, naming the policy', () => {
    const issues: ConfigIssue[] = [];
    new PolicyTable([policy('bad', 'ALLOW', [{
      from: [{ ipBlocks: ['10.0.0.0/33'] }], to: [], when: [{ key: 'request.auth.claims[iss]', values: ['x'] }], layer: 'L7',
    }])], issues);
    assert.equal(issues.length, 2);
    assert.ok(issues.every((i) => i.object === 'shop/bad' && i.kind === 'AuthorizationPolicy'));
    assert.match(issues[0]!.path, /rules\[0\]\.from\[0\]\.ipBlocks/);
  });
});
