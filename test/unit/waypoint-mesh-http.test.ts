// Mesh-wide HTTP settings, set once on the controller and applied by every waypoint: path
// normalization (Istio MeshConfig pathNormalization) and the X-Forwarded-For hops trusted for
// `remote.ip` (Istio gatewayTopology.numTrustedProxies, Envoy xff_num_trusted_hops). A waypoint's own
// flag wins over the mesh-wide value; without either, BASE and 0.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { parseControllerArgs } from '../../controller/src/main.ts';
import { MemorySource } from '../../controller/src/sources/memory.ts';
import type { AuthorizationPolicy, MeshHttpSettings, Waypoint } from '../../lib/model/mesh.ts';
import { remoteIpOf } from '../../lib/policy/authz.ts';
import { WaypointEngine, type WaypointEngineOptions } from '../../waypoint/src/engine.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import { config, echo, endpoint, metricSamples, request, service, startHttpBackend, startTunnelListener, type Backend, type Listener } from '../../waypoint/testing/harness.ts';
import { ns, pod, svc, waypoint } from './controller-fixtures.ts';
import { startHarness, until } from './controller-harness.ts';

describe('mesh-wide HTTP settings from the controller', () => {
  it('the controller reads --path-normalization, --escaped-slashes and --num-trusted-proxies, naming a bad value', () => {
    const base = ['--config-dir', '/tmp/x'];
    assert.equal(parseControllerArgs(base).meshHttp, undefined);
    assert.deepEqual(parseControllerArgs([...base, '--path-normalization', 'MERGE_SLASHES', '--escaped-slashes', 'REJECT_REQUEST', '--num-trusted-proxies', '1']).meshHttp,
      { pathNormalization: 'MERGE_SLASHES', escapedSlashes: 'REJECT_REQUEST', numTrustedProxies: 1 });
    assert.throws(() => parseControllerArgs([...base, '--path-normalization', 'merge']), /--path-normalization: "merge" is not one of NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES/);
    assert.throws(() => parseControllerArgs([...base, '--num-trusted-proxies=-1']), /--num-trusted-proxies: "-1"/);
    assert.throws(() => parseControllerArgs([...base, '--num-trusted-proxies', '1000']), /--num-trusted-proxies: "1000"/);
  });

  it('reach every waypoint on the config stream; a waypoint flag wins over them', async () => {
    const source = new MemorySource([
      ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'wp' }), waypoint('shop', 'wp'),
      pod('shop', 'reviews', { ip: '10.1.9.1' }), svc('shop', 'reviews'),
    ]);
    const h = await startHarness(source, { meshHttp: { pathNormalization: 'MERGE_SLASHES', numTrustedProxies: 2 } });
    const plain = new WaypointEngine({ namespace: 'shop', name: 'wp', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    const own = new WaypointEngine({ namespace: 'shop', name: 'wp', upstream: new TcpUpstream(), telemetry: { accessLog: null }, pathNormalization: 'NONE' });
    try {
      assert.deepEqual(plain.httpSettings, { pathNormalization: 'BASE', escapedSlashes: 'KEEP_UNCHANGED', numTrustedProxies: 0 });
      const wp = h.waypoint('shop');
      wp.on('snapshot', (cfg) => { plain.applyConfig(cfg); own.applyConfig(cfg); });
      await wp.ready();
      await until('mesh settings at the waypoint', () => plain.httpSettings.pathNormalization === 'MERGE_SLASHES');
      assert.deepEqual(plain.httpSettings, { pathNormalization: 'MERGE_SLASHES', escapedSlashes: 'KEEP_UNCHANGED', numTrustedProxies: 2 });
      assert.deepEqual(own.httpSettings, { pathNormalization: 'NONE', escapedSlashes: 'KEEP_UNCHANGED', numTrustedProxies: 2 });
      // The same stream brings who owns each client address (the waypoint's for= decision), and
      // nothing else of the workloads.
      assert.deepEqual(plain.config.addressOwners, [{ ip: '10.1.9.1', spiffeId: 'spiffe://cluster.local/ns/shop/sa/reviews', nodeIp: '192.168.0.1' }]);
      assert.equal((plain.config as { workloads?: unknown }).workloads, undefined);
    } finally {
      await plain.close();
      await own.close();
      await h.close();
    }
  });
});

describe('a waypoint under mesh-wide settings', () => {
  let b: Backend;
  const seen: string[] = [];
  const engines: WaypointEngine[] = [];
  const listeners: Listener[] = [];

  const self = (http?: MeshHttpSettings): Waypoint => ({
    name: 'wp', namespace: 'shop', port: 15008, spiffeId: 'spiffe://cluster.local/ns/shop/sa/wp', ready: true, address: '10.1.0.9', ...(http ? { http } : {}),
  });
  async function start(policy: AuthorizationPolicy, http: MeshHttpSettings | undefined, own: Partial<WaypointEngineOptions> = {}): Promise<{ engine: WaypointEngine; port: number }> {
    const engine = new WaypointEngine({ namespace: 'shop', name: 'wp', upstream: new TcpUpstream(), telemetry: { accessLog: null }, ...own });
    engine.applyConfig(config({ services: [service('reviews', '10.96.0.10', [endpoint(b.port)])], policies: [policy], waypoints: [self(http)] }));
    const listener = await startTunnelListener(engine, '10.96.0.10:80');
    engines.push(engine);
    listeners.push(listener);
    return { engine, port: listener.port };
  }

  before(async () => {
    b = await startHttpBackend((req, res) => { seen.push(req.url ?? ''); echo('reviews')(req, res); });
  });
  after(async () => {
    for (const l of listeners) await l.close();
    for (const e of engines) await e.close();
    await b.close();
  });

  const DENY_ADMIN: AuthorizationPolicy = {
    name: 'deny-admin', namespace: 'shop', scope: 'service', targetServices: ['shop/reviews'], action: 'DENY', layer: 'L7',
    rules: [{ from: [], to: [{ paths: ['/admin*'] }], when: [], layer: 'L7' }],
  };

  it('MERGE_SLASHES from the controller refuses //admin; under the default BASE it is another path', async () => {
    const merged = await start(DENY_ADMIN, { pathNormalization: 'MERGE_SLASHES' });
    const before = seen.length;
    assert.equal((await request(merged.port, { path: '//admin' })).status, 403);
    assert.equal(seen.length, before, 'the backend never saw //admin');
    const denied = (await metricSamples(merged.engine, 'istio_requests_total')).filter((s) => s.labels['response_flags'] === 'RBAC');
    assert.equal(denied.reduce((n, s) => n + s.value, 0), 1);
    // Control: BASE keeps // (Istio), so /admin* does not match and the request is forwarded as is.
    const base = await start(DENY_ADMIN, undefined);
    assert.equal((await request(base.port, { path: '//admin' })).status, 200);
    assert.equal(seen.at(-1), '//admin');
    // The waypoint's own flag wins: NONE here, although the mesh says MERGE_SLASHES.
    const own = await start(DENY_ADMIN, { pathNormalization: 'MERGE_SLASHES' }, { pathNormalization: 'NONE' });
    assert.equal((await request(own.port, { path: '//admin' })).status, 200);
  });

  // Envoy's X-Forwarded-For examples: with use_remote_address false and N trusted hops, the client
  // is the (N+1)th address from the right.
  it('remote.ip is the X-Forwarded-For entry numTrustedProxies places from the right', async () => {
    assert.equal(remoteIpOf('203.0.113.128, 203.0.113.10, 203.0.113.1', '10.0.0.1', 1), '203.0.113.10');
    assert.equal(remoteIpOf('203.0.113.128, 203.0.113.10, 203.0.113.1', '10.0.0.1', 0), '203.0.113.1');
    assert.equal(remoteIpOf('203.0.113.1', '10.0.0.1', 1), '10.0.0.1', 'fewer entries than trusted hops: the connection');
    assert.equal(remoteIpOf('junk, 203.0.113.1', '10.0.0.1', 1), '10.0.0.1');

    const denyBlocked: AuthorizationPolicy = {
      name: 'deny-blocked', namespace: 'shop', scope: 'service', targetServices: ['shop/reviews'], action: 'DENY', layer: 'L7',
      rules: [{ from: [{ remoteIpBlocks: ['198.51.100.0/24'] }], to: [], when: [], layer: 'L7' }],
    };
    // One trusted proxy in front appended the real client (198.51.100.7) after what the client
    // claimed (192.0.2.1): the client's claim cannot step around the DENY.
    const xff = { 'x-forwarded-for': '192.0.2.1, 198.51.100.7, 10.2.0.5' };
    const trusted = await start(denyBlocked, { numTrustedProxies: 1 });
    assert.equal((await request(trusted.port, { path: '/', headers: xff })).status, 403);
    // With the default 0 the last entry (the proxy, 10.2.0.5) is the client: not blocked.
    const dflt = await start(denyBlocked, undefined);
    assert.equal((await request(dflt.port, { path: '/', headers: xff })).status, 200);
  });
});
