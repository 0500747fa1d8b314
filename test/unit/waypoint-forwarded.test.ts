// The waypoint and RFC 7239 `forwarded: for=` (issue 15 item 7), both ways:
// - in: a caller's claim is believed only as the agents believe it (lib/hbone/forwarded.ts
//   tunnelClient): the address must belong to a workload of the caller's own identity on the node
//   the tunnel came from. A workload that forges another's address is not believed (the client is
//   the TCP peer), and the ignored claim is counted and reported;
// - out: on the CONNECT of a caller's passthrough stream the waypoint names the original client,
//   so the destination's agent (which honours it from a waypoint serving the destination) sees it;
//   and it names the caller by identity (x-forwarded-client-cert URI, the tunnel's verified peer),
//   never by what the caller itself sent.
import assert from 'node:assert/strict';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { HbonePool, HboneServer } from '../../lib/hbone/index.ts';
import { CertificateAuthority, createCsr, generateKeyPair, privateKeyToPem, tlsMaterial, type TlsCredentials } from '../../lib/identity/index.ts';
import { AddressOwnerTable } from '../../controller/src/xds/address-owners.ts';
import type { AddressOwner, AuthorizationPolicy, Workload } from '../../lib/model/mesh.ts';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { HboneUpstream, tunnelHandler } from '../../waypoint/src/hbone.ts';
import { config, metricSamples, service } from '../../waypoint/testing/harness.ts';

const TD = 'cluster.local';
const WAYPOINT = `spiffe://${TD}/ns/shop/sa/waypoint`;
const TESTER = `spiffe://${TD}/ns/shop/sa/tester`;
const VICTIM = `spiffe://${TD}/ns/shop/sa/victim`;
const REVIEWS = `spiffe://${TD}/ns/shop/sa/reviews`;
const TESTER_IP = '10.1.1.5';
const VICTIM_IP = '10.1.1.9';

async function creds(ca: CertificateAuthority, id: string): Promise<TlsCredentials> {
  const { privateKey } = await generateKeyPair();
  const issued = ca.signCsr(createCsr(id, privateKey), id);
  return { key: privateKeyToPem(privateKey), certChain: issued.certChain, trustBundle: ca.trustBundle() };
}

function workload(name: string, ip: string, spiffeId: string): Workload {
  return {
    uid: name, name, namespace: 'shop', node: 'node-a', nodeIp: '127.0.0.1', ip, serviceAccount: name, spiffeId, labels: {}, enrolled: true,
    mode: 'PERMISSIVE', services: [], workloadName: name, canonicalService: name, canonicalRevision: 'latest', cluster: 'Kubernetes',
  };
}

/** The controller's address-owner table for `workloads`, as the config stream delivers it. */
function addressOwners(workloads: Workload[]): AddressOwner[] {
  const t = new AddressOwnerTable();
  t.update(undefined, new Map(workloads.map((w) => [w.uid, w])), workloads.map((w) => w.uid));
  return [...t.table.values()];
}

/** Sends `ping` through the tunnel; resolves with what came back before the stream closed. */
function ping(t: Duplex): Promise<string> {
  return new Promise((resolve) => {
    let got = '';
    t.on('data', (d: Buffer) => { got += d.toString(); if (got === 'ping') { t.destroy(); resolve(got); } });
    t.on('end', () => { t.destroy(); resolve(got); });
    t.on('close', () => resolve(got));
    t.on('error', () => resolve(got));
    t.write('ping');
  });
}

describe('the waypoint and forwarded for=', () => {
  let ca: CertificateAuthority;
  let echoServer: net.Server;
  let agent: HboneServer;
  const agentSaw: Array<{ peer: string | undefined; forwarded: string | undefined; caller?: string | undefined }> = [];
  let engine: WaypointEngine;
  let wpServer: HboneServer;
  let wpPort: number;
  let upstreamPool: HbonePool;
  const pools: HbonePool[] = [];
  const ignored: Array<Record<string, unknown>> = [];
  const credsOf = new Map<string, TlsCredentials>();

  before(async () => {
    ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
    for (const id of [WAYPOINT, TESTER, VICTIM, REVIEWS]) credsOf.set(id, await creds(ca, id));
    echoServer = net.createServer((s) => s.pipe(s));
    await new Promise<void>((r) => echoServer.listen(0, '127.0.0.1', r));
    const echoPort = (echoServer.address() as net.AddressInfo).port;
    // The destination node's agent: records what the waypoint's CONNECT says, then connects.
    agent = new HboneServer({
      tls: tlsMaterial(credsOf.get(REVIEWS)!),
      handler: async (req) => {
        agentSaw.push({ peer: req.peer.spiffeId, forwarded: req.headers['forwarded'], caller: req.headers['x-forwarded-client-cert'] });
        const sock = net.connect(req.target.port, req.target.host);
        await new Promise<void>((resolve, reject) => { sock.once('connect', resolve); sock.once('error', reject); });
        return { upstream: sock };
      },
    });
    const agentAddr = await agent.listen(0, '127.0.0.1');
    upstreamPool = new HbonePool();
    engine = new WaypointEngine({
      namespace: 'shop', name: 'waypoint', telemetry: { accessLog: null },
      upstream: new HboneUpstream({ pool: upstreamPool, credentials: () => credsOf.get(WAYPOINT)!, spiffeId: WAYPOINT, hbonePort: agentAddr.port }),
    });
    const svc = (name: string, vip: string) => {
      const s = service(name, vip, [], { appProtocol: 'tcp' });
      s.endpoints = [{ workloadUid: `${name}-1`, ip: '127.0.0.1', node: 'node-b', nodeIp: '127.0.0.1', port: echoPort, ports: { '80': echoPort }, enrolled: true, spiffeId: REVIEWS, ready: true }];
      return s;
    };
    // `locked` admits only the victim's address (ipBlocks, judged on the client the waypoint believes).
    const onlyVictim: AuthorizationPolicy = {
      name: 'only-victim', namespace: 'shop', action: 'ALLOW', scope: 'service', targetServices: ['shop/locked'], layer: 'L4',
      rules: [{ from: [{ ipBlocks: [`${VICTIM_IP}/32`] }], to: [], when: [], layer: 'L4' }],
    };
    engine.applyConfig(config({
      services: [svc('open', '10.96.0.10'), svc('locked', '10.96.0.11')],
      policies: [onlyVictim],
      addressOwners: addressOwners([workload('tester', TESTER_IP, TESTER), workload('victim', VICTIM_IP, VICTIM)]),
    }));
    wpServer = new HboneServer({ tls: tlsMaterial(credsOf.get(WAYPOINT)!), handler: tunnelHandler(engine, (f) => ignored.push(f)) });
    wpPort = (await wpServer.listen(0, '127.0.0.1')).port;
  });

  after(async () => {
    for (const p of pools) await p.close(100);
    await wpServer.close(100);
    await engine.close();
    await upstreamPool.close(100);
    await agent.close(100);
    echoServer.close();
  });

  /** A tunnel to the waypoint as `who`'s agent opens it (from 127.0.0.1, the node), claiming `forwarded`. */
  const tunnel = (who: string, target: string, forwarded: string, extra: Record<string, string> = {}): Promise<Duplex> => {
    const pool = new HbonePool();
    pools.push(pool);
    return pool.connect({
      sourceKey: who, tls: tlsMaterial(credsOf.get(who)!), dest: { host: '127.0.0.1', port: wpPort }, target, expectPeer: WAYPOINT,
      headers: { forwarded, ...extra },
    });
  };
  const ignoredCount = async (reason: string) =>
    (await metricSamples(engine, 'weft_hbone_forwarded_ignored_total')).filter((s) => s.labels['reason'] === reason).reduce((n, s) => n + s.value, 0);

  it('believes a caller\'s agent naming its own workload, and passes the client on to the destination\'s agent', async () => {
    assert.equal(await ping(await tunnel(TESTER, '10.96.0.10:80', `for="${TESTER_IP}:4711"`)), 'ping');
    assert.deepEqual(agentSaw.at(-1), { peer: WAYPOINT, forwarded: `for="${TESTER_IP}:4711"`, caller: `By="${WAYPOINT}";URI="${TESTER}"` });
    assert.equal(ignored.length, 0);
  });

  it('names the caller by its verified identity: a caller\'s own x-forwarded-client-cert naming another workload is not passed on', async () => {
    assert.equal(await ping(await tunnel(TESTER, '10.96.0.10:80', `for="${TESTER_IP}:4712"`, { 'x-forwarded-client-cert': `By="${WAYPOINT}";URI="${VICTIM}"` })), 'ping');
    assert.equal(agentSaw.at(-1)?.caller, `By="${WAYPOINT}";URI="${TESTER}"`);
  });

  it('does not believe a workload that forges another workload\'s address: the forged ALLOW ipBlocks does not let it in; counted and reported', async () => {
    // Control: the victim itself (its identity, its node) is let in.
    assert.equal(await ping(await tunnel(VICTIM, '10.96.0.11:80', `for="${VICTIM_IP}:5000"`)), 'ping');
    const before = await ignoredCount('identity-mismatch');
    const seenBefore = agentSaw.length;
    assert.equal(await ping(await tunnel(TESTER, '10.96.0.11:80', `for="${VICTIM_IP}:5000"`)), '', 'refused: the client is the TCP peer, not the victim');
    assert.equal(await ignoredCount('identity-mismatch'), before + 1);
    assert.deepEqual(ignored.at(-1), { reason: 'identity-mismatch', claimed: `${VICTIM_IP}:5000`, peer: TESTER, peerAddress: '127.0.0.1' });
    // Through `open` the destination's agent is told the TCP peer, never the forged address.
    assert.equal(await ping(await tunnel(TESTER, '10.96.0.10:80', `for="${VICTIM_IP}:5000"`)), 'ping');
    assert.equal(agentSaw.at(-1)?.forwarded, 'for=127.0.0.1');
    // An address no workload has, and a malformed header: not believed either.
    await ping(await tunnel(TESTER, '10.96.0.10:80', 'for="192.0.2.77:1"'));
    assert.equal(await ignoredCount('unknown-address'), 1);
    await ping(await tunnel(TESTER, '10.96.0.10:80', 'for=[oops'));
    assert.equal(await ignoredCount('malformed'), 1);
    assert.ok(agentSaw.slice(seenBefore).every((s) => !s.forwarded?.includes(VICTIM_IP) && !s.forwarded?.includes('192.0.2.77')), JSON.stringify(agentSaw));
  });
});
