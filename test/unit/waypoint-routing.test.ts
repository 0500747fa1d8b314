import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import { after, before, describe, it } from 'node:test';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import {
  backend, config, echo, endpoint, h2request, match, request, route, service, startHttpBackend, startTunnelListener,
  type Backend, type Listener,
} from '../../waypoint/testing/harness.ts';

describe('waypoint routing', () => {
  let v1: Backend;
  let v2: Backend;
  let engine: WaypointEngine;
  let listener: Listener;
  const logs: string[] = [];

  before(async () => {
    v1 = await startHttpBackend(echo('v1'));
    v2 = await startHttpBackend(echo('v2'));
    engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: (l) => logs.push(l) } });
    engine.applyConfig(config({
      services: [
        service('reviews', '10.96.0.10', [endpoint(v1.port)]),
        service('reviews-v1', '10.96.0.11', [endpoint(v1.port)]),
        service('reviews-v2', '10.96.0.12', [endpoint(v2.port)]),
        service('hosts', '10.96.0.30', [endpoint(v1.port)]),
      ],
      routes: [
        route('reviews', 'reviews', [
          { matches: [match({ headers: [{ type: 'Exact', name: 'x-user', value: 'tester' }] })], backends: [backend('reviews-v2')] },
          { matches: [match({ headers: [{ type: 'Exact', name: 'x-user', value: 'Zoë' }] }), match({ headers: [{ type: 'RegularExpression', name: 'x-name', value: 'Jos.' }] })], backends: [backend('reviews-v2')] },
          { backends: [backend('reviews-v1', 90), backend('reviews-v2', 10)] },
        ]),
        route('by-host', 'hosts', [{ matches: [match({ headers: [{ type: 'Exact', name: 'host', value: 'hosts.shop' }] })], backends: [backend('reviews-v2')] }]),
      ],
    }));
    listener = await startTunnelListener(engine, '10.96.0.10:80');
  });

  after(async () => {
    await listener.close();
    await engine.close();
    await v1.close();
    await v2.close();
  });

  it('sends about 90% of 1,000 requests to v1 on a 90/10 weighted route', async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 20 });
    const before1 = v1.hits;
    const before2 = v2.hits;
    const replies = await Promise.all(Array.from({ length: 1000 }, () => request(listener.port, { agent })));
    agent.destroy();
    assert.ok(replies.every((r) => r.status === 200), `statuses: ${[...new Set(replies.map((r) => r.status))]}`);
    const toV1 = v1.hits - before1;
    const toV2 = v2.hits - before2;
    assert.equal(toV1 + toV2, 1000);
    assert.ok(toV1 >= 850 && toV1 <= 950, `v1 got ${toV1} of 1000`);
    // Keep-alive pooling: at most one upstream connection per concurrent request, per endpoint.
    assert.ok(engine.upstreamConnectionsOpened() <= 40, `${engine.upstreamConnectionsOpened()} upstream connections for 1000 requests`);
  });

  it('sends a request with the tester header only to v2', async () => {
    const replies = await Promise.all(Array.from({ length: 50 }, () => request(listener.port, { headers: { 'x-user': 'tester' } })));
    for (const r of replies) assert.equal(JSON.parse(r.body).backend, 'v2');
  });

  // Envoy's header matcher compares the field's bytes with the value's UTF-8 bytes, and RE2 reads
  // them as UTF-8 (one `.` for `é`); node hands the waypoint each byte as one character.
  it('matches a header value outside ASCII by its UTF-8 bytes, Exact and RegularExpression alike', async () => {
    // node's client writes each character of a field value as one byte: these are the value's bytes.
    const backendOf = async (header: string, value: Buffer): Promise<string> =>
      JSON.parse((await request(listener.port, { host: 'reviews.shop', headers: { [header]: value.toString('latin1') } })).body).backend as string;
    assert.equal(await backendOf('x-user', Buffer.from('Zoë')), 'v2');
    assert.equal(await backendOf('x-name', Buffer.from('José')), 'v2');
    // The latin1 byte for ë is not Zoë's UTF-8, to Envoy as here: the weighted rule takes it (v1 at 90%).
    const others = await Promise.all(Array.from({ length: 20 }, () => backendOf('x-user', Buffer.from([0x5a, 0x6f, 0xeb]))));
    assert.ok(others.includes('v1'), others.join());
  });

  // GEP-1294 ("hostnames field"): mesh routes filter by host with an HTTPHeaderMatch on Host, whose
  // names are case-insensitive (httproute_types.go HTTPHeaderMatch.Name). Over HTTP/2 the host is
  // :authority (RFC 9113 section 8.3.1), which Envoy maps Host onto: a match on `host` reads it.
  it('matches an HTTPRoute header match on Host against HTTP/1.1 Host and HTTP/2 :authority alike', async () => {
    const hosts = await startTunnelListener(engine, '10.96.0.30:80');
    const session = http2.connect(`http://127.0.0.1:${hosts.port}`);
    try {
      assert.equal(JSON.parse((await request(hosts.port, { host: 'hosts.shop' })).body).backend, 'v2');
      assert.equal((await request(hosts.port, { host: 'other.shop' })).status, 404);
      const r = await h2request(session, { ':path': '/', ':authority': 'hosts.shop' });
      assert.equal(r.status, 200, `HTTP/2 got ${r.status} ${r.body.slice(0, 80)}`);
      assert.equal(JSON.parse(r.body).backend, 'v2');
      assert.equal((await h2request(session, { ':path': '/', ':authority': 'other.shop' })).status, 404);
    } finally {
      session.close();
      await hosts.close();
    }
  });
});
