import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { HbonePool, HboneServer } from '../../lib/hbone/index.ts';
import { CertificateAuthority, createCsr, generateKeyPair, privateKeyToPem, tlsMaterial, type TlsCredentials } from '../../lib/identity/index.ts';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { HboneUpstream, tunnelHandler } from '../../waypoint/src/hbone.ts';
import { config, echo, metricSamples, service, startHttpBackend, type Backend } from '../../waypoint/testing/harness.ts';

const TD = 'cluster.local';
const WAYPOINT = `spiffe://${TD}/ns/shop/sa/waypoint`;
const TESTER = `spiffe://${TD}/ns/shop/sa/tester`;
const REVIEWS = `spiffe://${TD}/ns/shop/sa/reviews`;

async function creds(ca: CertificateAuthority, id: string): Promise<TlsCredentials> {
  const { privateKey } = await generateKeyPair();
  const issued = ca.signCsr(createCsr(id, privateKey), id);
  return { key: privateKeyToPem(privateKey), certChain: issued.certChain, trustBundle: ca.trustBundle() };
}

function get(tunnel: Duplex, path: string, method = 'GET'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ createConnection: () => tunnel, method, path, headers: { host: 'reviews.shop.svc.cluster.local' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('waypoint over HBONE', () => {
  let ca: CertificateAuthority;
  let backendHttp: Backend;
  let agent: HboneServer;
  const agentPeers: Array<string | undefined> = [];
  const agentClaims: Array<string | undefined> = [];
  let engine: WaypointEngine;
  let wpServer: HboneServer;
  let wpPort: number;
  let upstreamPool: HbonePool;
  let clientPool: HbonePool;
  /** Another caller: its tunnels come from 127.0.0.3. */
  let otherClientPool: HbonePool;
  let testerCreds: TlsCredentials;

  before(async () => {
    ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const [wpCreds, reviewsCreds] = await Promise.all([creds(ca, WAYPOINT), creds(ca, REVIEWS)]);
    testerCreds = await creds(ca, TESTER);
    backendHttp = await startHttpBackend(echo('reviews'));
    // The destination node's agent: terminates HBONE and connects to the pod.
    agent = new HboneServer({
      tls: tlsMaterial(reviewsCreds),
      handler: async (req) => {
        agentPeers.push(req.peer.spiffeId);
        agentClaims.push(req.forwardedFor?.ip);
        const sock = net.connect(req.target.port, req.target.host);
        await new Promise<void>((resolve, reject) => { sock.once('connect', resolve); sock.once('error', reject); });
        return { upstream: sock };
      },
    });
    const agentAddr = await agent.listen(0, '127.0.0.1');
    upstreamPool = new HbonePool();
    engine = new WaypointEngine({
      namespace: 'shop', name: 'waypoint', telemetry: { accessLog: null },
      upstream: new HboneUpstream({ pool: upstreamPool, credentials: () => wpCreds, spiffeId: WAYPOINT, hbonePort: agentAddr.port }),
    });
    const svc = service('reviews', '10.96.0.10', []);
    svc.endpoints = [{ workloadUid: 'reviews-1', ip: '127.0.0.1', node: 'node-b', nodeIp: '127.0.0.1', port: backendHttp.port, ports: { '80': backendHttp.port }, enrolled: true, spiffeId: REVIEWS, ready: true }];
    engine.applyConfig(config({
      services: [svc],
      policies: [{ name: 'deny-tester-admin', namespace: 'shop', action: 'DENY', scope: 'service', targetServices: ['shop/reviews'], layer: 'L7', rules: [{ from: [{ principals: [TESTER] }], to: [{ paths: ['/admin'] }], when: [], layer: 'L7' }] }],
    }));
    wpServer = new HboneServer({ tls: tlsMaterial(wpCreds), handler: tunnelHandler(engine) });
    wpPort = (await wpServer.listen(0, '127.0.0.1')).port;
    clientPool = new HbonePool();
    otherClientPool = new HbonePool({ localAddress: '127.0.0.3' });
  });

  after(async () => {
    await clientPool.close(100);
    await otherClientPool.close(100);
    await wpServer.close(100);
    await engine.close();
    await upstreamPool.close(100);
    await agent.close(100);
    await backendHttp.close();
  });

  const tunnel = (pool = clientPool): Promise<Duplex> => pool.connect({
    sourceKey: TESTER, tls: tlsMaterial(testerCreds), dest: { host: '127.0.0.1', port: wpPort }, target: '10.96.0.10:80', expectPeer: WAYPOINT,
  });

  it('serves HTTP/1.1 in an mTLS tunnel and reaches the endpoint through its agent with the waypoint identity', async () => {
    const r = await get(await tunnel(), '/hello');
    assert.equal(r.status, 200);
    assert.equal(JSON.parse(r.body).url, '/hello');
    assert.deepEqual([...new Set(agentPeers)], [WAYPOINT]);
    const samples = await metricSamples(engine, 'istio_requests_total');
    assert.ok(samples.some((s) => s.labels['source_principal'] === TESTER && s.labels['response_code'] === '200'));
  });

  it('serves HTTP/2 prior knowledge in a tunnel', async () => {
    const t = await tunnel();
    const session = http2.connect('http://reviews.shop.svc.cluster.local', { createConnection: () => t });
    const status = await new Promise<number>((resolve, reject) => {
      const s = session.request({ ':path': '/h2', ':authority': 'reviews.shop.svc.cluster.local' });
      s.on('response', (h) => resolve(Number(h[':status'])));
      s.on('error', reject);
      s.resume();
    });
    session.close();
    assert.equal(status, 200);
  });

  it('names each request\'s caller to the destination agent (forwarded: for=, the tunnel\'s client, never X-Forwarded-For), pooling connections per caller (issue 15, item 7)', async () => {
    const forged = (pool: HbonePool) => new Promise<number>((resolve, reject) => {
      void tunnel(pool).then((t) => {
        const req = http.request({ createConnection: () => t, path: '/who', headers: { host: 'reviews.shop.svc.cluster.local', 'x-forwarded-for': '10.9.9.9' } }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode ?? 0)); });
        req.on('error', reject);
        req.end();
      }, reject);
    });
    assert.deepEqual(await Promise.all([forged(clientPool), forged(otherClientPool), forged(clientPool), forged(otherClientPool)]), [200, 200, 200, 200]);
    // Every connection the agent saw (these and the earlier tests') named its caller, and the new
    // caller got a connection of its own.
    assert.deepEqual(new Set(agentClaims), new Set(['127.0.0.1', '127.0.0.3']), `the agent was told each caller, and only them: ${JSON.stringify(agentClaims)}`);
  });

  it('applies L7 policy to the peer identity the tunnel proved', async () => {
    const r = await get(await tunnel(), '/admin');
    assert.equal(r.status, 403);
    assert.match(r.body, /shop\/deny-tester-admin/);
  });
});
