// A destination node's agent upgraded under waypoint traffic: the old agent sends GOAWAY on its HBONE
// sessions and drains (lets open tunnels finish for --drain-timeout, then cuts them) while the new one
// listens on the same port (SO_REUSEPORT). The waypoint pools keep-alive HTTP connections and HTTP/2
// sessions inside HBONE tunnels; a tunnel on a session that got GOAWAY must take no new request
// (RFC 9113 section 6.8: the sender of GOAWAY will not process new streams; the client opens a new
// connection for new work), or every request sent on it after the GOAWAY is cut at the drain deadline
// (issue 17: 8 ECONNRESET at the client while the agent DaemonSet rolled under waypoint traffic).
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { HbonePool, HboneServer } from '../../lib/hbone/index.ts';
import { CertificateAuthority, createCsr, generateKeyPair, privateKeyToPem, tlsMaterial, type TlsCredentials } from '../../lib/identity/index.ts';
import { HboneUpstream } from '../../waypoint/src/hbone.ts';
import { UpstreamPool, type UpstreamProtocol, type UpstreamEndpoint, type Upstream, type UpstreamConnectOptions } from '../../waypoint/src/upstream.ts';

const TD = 'cluster.local';
const WAYPOINT = `spiffe://${TD}/ns/shop/sa/waypoint`;
const REVIEWS = `spiffe://${TD}/ns/shop/sa/reviews`;
/** The old agent's drain deadline; the slow request outlasts it. */
const DRAIN_MS = 300;
const SLOW_MS = 1_000;

async function creds(ca: CertificateAuthority, id: string): Promise<TlsCredentials> {
  const { privateKey } = await generateKeyPair();
  const issued = ca.signCsr(createCsr(id, privateKey), id);
  return { key: privateKeyToPem(privateKey), certChain: issued.certChain, trustBundle: ca.trustBundle() };
}

/** A destination node agent: terminates HBONE and connects to the pod. */
function agentServer(c: TlsCredentials): HboneServer {
  return new HboneServer({
    tls: tlsMaterial(c),
    handler: async (req) => {
      const sock = net.connect(req.target.port, req.target.host);
      await new Promise<void>((resolve, reject) => { sock.once('connect', resolve); sock.once('error', reject); });
      return { upstream: sock };
    },
  });
}

async function until(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    assert.ok(Date.now() < deadline, `no ${what} within ${timeoutMs} ms`);
    await sleep(10);
  }
}

function slowHandler(req: { url?: string }, res: { statusCode: number; end(body: string): unknown }): void {
  const ms = req.url === '/slow' ? SLOW_MS : 0;
  setTimeout(() => { res.statusCode = 200; res.end(`ok ${req.url}`); }, ms);
}

describe('waypoint upstream pool while the destination agent drains', () => {
  let ca: CertificateAuthority;
  let wpCreds: TlsCredentials;
  let reviewsCreds: TlsCredentials;
  let h1: http.Server;
  let h2: http2.Http2Server;
  const open: HboneServer[] = [];
  const pools: Array<{ close(): unknown }> = [];

  before(async () => {
    ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
    [wpCreds, reviewsCreds] = await Promise.all([creds(ca, WAYPOINT), creds(ca, REVIEWS)]);
    h1 = http.createServer(slowHandler);
    h2 = http2.createServer(slowHandler);
    await Promise.all([h1, h2].map((s) => new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve))));
  });

  after(async () => {
    // The waypoint's pools before the HBONE pools under them.
    for (const p of pools.reverse()) await p.close();
    await Promise.all(open.map((s) => s.close(0)));
    h1.closeAllConnections();
    h1.close();
    h2.close();
  });

  for (const protocol of ['http1', 'http2'] as UpstreamProtocol[]) {
    it(`sends no new ${protocol} request into a tunnel whose HBONE session got GOAWAY, so the drain cuts nothing`, async () => {
      const old = agentServer(reviewsCreds);
      open.push(old);
      const port = (await old.listen(0, '127.0.0.1', { reusePort: true })).port;
      const hbone = new HbonePool();
      pools.push({ close: () => hbone.close(0) });
      const tunnels: Duplex[] = [];
      const inner = new HboneUpstream({ pool: hbone, credentials: () => wpCreds, spiffeId: WAYPOINT, hbonePort: port });
      const recording: Upstream = {
        async connect(ep: UpstreamEndpoint, opts: UpstreamConnectOptions): Promise<Duplex> {
          const d = await inner.connect(ep, opts);
          tunnels.push(d);
          return d;
        },
      };
      const pool = new UpstreamPool(recording);
      pools.push(pool);
      const backendPort = ((protocol === 'http1' ? h1 : h2).address() as net.AddressInfo).port;
      const ep: UpstreamEndpoint = { ip: '127.0.0.1', port: backendPort, node: '127.0.0.1', spiffeId: REVIEWS };
      const send = async (path: string): Promise<string> => {
        const resp = await pool.request(ep, protocol, {
          method: 'GET', path, authority: 'reviews.shop.svc.cluster.local', headers: {}, body: null, signal: new AbortController().signal,
        }, 5_000);
        const chunks: Buffer[] = [];
        for await (const c of resp.body) chunks.push(c as Buffer);
        assert.equal(resp.status, 200);
        return Buffer.concat(chunks).toString();
      };

      assert.equal(await send('/first'), 'ok /first');
      assert.equal(tunnels.length, 1);
      const first = tunnels[0] as http2.ClientHttp2Stream;

      // The upgrade: the new agent shares the port, then the old one drains.
      const next = agentServer(reviewsCreds);
      open.push(next);
      await next.listen(port, '127.0.0.1', { reusePort: true });
      const drained = old.close(DRAIN_MS);
      // The waypoint saw the GOAWAY: its session closed to new streams (or, once idle, the tunnel is gone).
      await until('GOAWAY at the waypoint', () => first.destroyed || first.session?.closed === true);

      // A request that outlasts the old agent's drain deadline.
      assert.equal(await send('/slow'), 'ok /slow', 'the request after the GOAWAY went over a new tunnel, not into the draining one');
      assert.equal(tunnels.length, 2, 'one new tunnel, to the new agent');
      assert.equal(await drained, 0, 'the old agent had nothing left to cut at its deadline');
      assert.equal(await send('/again'), 'ok /again');
      assert.equal(tunnels.length, 2, 'the new tunnel is kept alive and reused');
    });
  }
});
