// GAMMA at the waypoint (GEP-1294): a consumer route (an HTTPRoute in namespace X whose parent is a
// Service in another namespace) applies only to clients in X, in place of the Service's producer
// routes; everyone else keeps the producer routes. The client's namespace is its tunnel identity,
// never a header. A refused cross-namespace backend (no ReferenceGrant) answers 500.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Route } from '../../lib/model/mesh.ts';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import {
  backend, config, echo, endpoint, request, route, service, startHttpBackend, startTunnelListener,
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
