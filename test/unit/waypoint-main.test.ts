import assert from 'node:assert/strict';
import { refusalLineBound } from '../lab/log-bound.ts';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import * as grpc from '@grpc/grpc-js';
import { after, before, describe, it } from 'node:test';
import { compile, emptyInputs, type MeshInputs } from '../../controller/src/compile.ts';
import { ConfigServer, addConfigStreamService } from '../../controller/src/xds/server.ts';
import { StaticTokenAuthenticator, addCertificateService, createControllerCredentials } from '../../controller/src/ca/index.ts';
import { HbonePool, HboneSessionError } from '../../lib/hbone/index.ts';
import { CertificateAuthority, createCsr, generateKeyPair, privateKeyToPem, tlsMaterial, type TlsCredentials } from '../../lib/identity/index.ts';
import { silentLogger } from '../../lib/log.ts';
import { DEBUG_GRANT_HEADER, debugGrantAudience } from '../../lib/identity/debug-grant.ts';
import http2 from 'node:http2';
import { captureLogger, until, type LogLine } from './controller-harness.ts';
import type { HTTPRoute } from '../../lib/model/objects.ts';
import { FlagError } from '../../waypoint/src/errors.ts';
import { parseFlags, parseQuotaFlag, runWaypoint, type RunningWaypoint } from '../../waypoint/src/main.ts';
import { echo, startHttpBackend, type Backend } from '../../waypoint/testing/harness.ts';
import { waypointCommand } from '../../cli/local/mesh.ts';
import { get, service, slice } from './waypoint-process-fixtures.ts';

const TD = 'cluster.local';
const WAYPOINT = `spiffe://${TD}/ns/shop/sa/waypoint`;
const TESTER = `spiffe://${TD}/ns/shop/sa/tester`;

async function creds(ca: CertificateAuthority, id: string): Promise<TlsCredentials> {
  const { privateKey } = await generateKeyPair();
  const issued = ca.signCsr(createCsr(id, privateKey), id);
  return { key: privateKeyToPem(privateKey), certChain: issued.certChain, trustBundle: ca.trustBundle() };
}

async function fetchText(port: number, path: string): Promise<{ status: number; body: string }> {
  const r = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: r.status, body: await r.text() };
}

describe('waypoint main', () => {
  let dir: string;
  let v1: Backend;
  let v2: Backend;
  let grpcServer: grpc.Server;
  let configServer: ConfigServer;
  let controllerPort: number;
  let wp: RunningWaypoint;
  let pool: HbonePool;
  let testerCreds: TlsCredentials;
  let ca: CertificateAuthority;
  const logs: LogLine[] = [];

  function inputs(withRoute: boolean): MeshInputs {
    const i = emptyInputs();
    i.namespaces.push({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'shop', labels: { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'waypoint' } } });
    i.services.push(service('reviews', '10.96.0.10'), service('reviews-v2', '10.96.0.12'));
    i.endpointSlices.push(slice('reviews', v1.port), slice('reviews-v2', v2.port));
    i.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'waypoint', namespace: 'shop' }, spec: {} });
    if (withRoute) {
      const route: HTTPRoute = {
        apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'reviews', namespace: 'shop', creationTimestamp: '2026-01-01T00:00:00Z' },
        spec: {
          parentRefs: [{ group: '', kind: 'Service', name: 'reviews', port: 80 }],
          rules: [
            { matches: [{ headers: [{ name: 'x-user', value: 'tester' }] }], backendRefs: [{ name: 'reviews-v2', port: 80 }] },
            { backendRefs: [{ name: 'reviews', port: 80 }] },
          ],
        },
      };
      i.httpRoutes.push(route);
    }
    return i;
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'weft-waypoint-main-'));
    v1 = await startHttpBackend(echo('v1'));
    v2 = await startHttpBackend(echo('v2'));
    ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const wpCreds = await creds(ca, WAYPOINT);
    testerCreds = await creds(ca, TESTER);
    await writeFile(join(dir, 'tls.crt'), wpCreds.certChain.join(''));
    await writeFile(join(dir, 'tls.key'), wpCreds.key);
    await writeFile(join(dir, 'ca.crt'), wpCreds.trustBundle.join(''));

    configServer = new ConfigServer();
    grpcServer = new grpc.Server();
    addConfigStreamService(grpcServer, { configServer });
    controllerPort = await new Promise<number>((res, rej) => grpcServer.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
    const compiled = compile(inputs(true));
    configServer.publish(compiled.model);

    wp = await runWaypoint(parseFlags([
      '--namespace', 'shop', '--name', 'waypoint', '--controller', `127.0.0.1:${controllerPort}`, '--insecure-xds', '--id', 'waypoint-0',
      '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--metrics', '127.0.0.1:0', '--ready', '127.0.0.1:0',
      '--access-log', 'off', '--cert-file', join(dir, 'tls.crt'), '--key-file', join(dir, 'tls.key'), '--ca-file', join(dir, 'ca.crt'),
    ], {}), captureLogger(logs));
    pool = new HbonePool();
  });

  after(async () => {
    await pool.close(100);
    await wp.close();
    configServer.closeAll();
    await new Promise<void>((r) => grpcServer.tryShutdown(() => r()));
    await v1.close();
    await v2.close();
    await rm(dir, { recursive: true, force: true });
  });

  const tunnel = (): Promise<Duplex> => pool.connect({
    sourceKey: TESTER, tls: tlsMaterial(testerCreds), dest: { host: '127.0.0.1', port: wp.hbone.port }, target: '10.96.0.10:80', expectPeer: WAYPOINT,
  });

  it('becomes ready once the controller config arrives', async () => {
    let ready = await fetchText(wp.ready.port, '/healthz/ready');
    for (let i = 0; i < 100 && ready.status !== 200; i++) { await delay(20); ready = await fetchText(wp.ready.port, '/healthz/ready'); }
    assert.equal(ready.status, 200, ready.body);
    const dump = JSON.parse((await fetchText(wp.admin.port, '/config_dump')).body);
    assert.equal(dump.identity, WAYPOINT);
    assert.deepEqual(dump.config.routes.map((r: { name: string }) => r.name), ['reviews']);
  });

  it('routes HBONE traffic with the compiled HTTPRoute', async () => {
    assert.equal(JSON.parse((await get(await tunnel())).body).backend, 'v1');
    assert.equal(JSON.parse((await get(await tunnel(), { headers: { 'x-user': 'tester' } })).body).backend, 'v2');
    const metrics = await fetchText(wp.metrics.port, '/metrics');
    assert.match(metrics.body, /istio_requests_total\{[^}]*source_principal="spiffe:\/\/cluster\.local\/ns\/shop\/sa\/tester"[^}]*\} 2/);
    // Without --debug-endpoints the metrics port (reachable from the network) shows no admin path:
    // config and live flows stay on the loopback admin port.
    for (const path of ['/debug/config_dump', '/debug/flows', '/debug/certs']) assert.equal((await fetchText(wp.metrics.port, path)).status, 404, path);
  });

  // A caller chooses the authority, and HPACK lets it repeat a long one for a byte a request: the
  // waypoint's refusals must not turn that into log volume (as the agents' and the gateway's do not).
  it('HBONE refusals are each counted by kind, logged cut to 256 characters and at most 50 lines a second', async () => {
    const session = http2.connect(`https://127.0.0.1:${wp.hbone.port}`, {
      key: testerCreds.key, cert: testerCreds.certChain.join(''), ca: [...testerCreds.trustBundle], checkServerIdentity: () => undefined,
    });
    try {
      const authority = `${'a'.repeat(3_000)}:80`;
      const n = 200;
      const started = Date.now();
      const statuses = await Promise.all(Array.from({ length: n }, () => new Promise<number>((resolve, reject) => {
        const req = session.request({ ':method': 'CONNECT', ':authority': authority });
        req.on('response', (h) => { resolve(Number(h[':status'])); req.close(); });
        req.on('error', reject);
      })));
      assert.ok(statuses.every((st) => st === 400), `statuses: ${[...new Set(statuses)].join(', ')}`);
      const metrics = (await fetchText(wp.metrics.port, '/metrics')).body;
      assert.match(metrics, new RegExp(`weft_waypoint_hbone_refused_total\\{kind="[a-z-]+"\\} ${n}`));
      const lines = logs.filter((l) => l.msg === 'HBONE refusal');
      assert.ok(lines.length >= 1 && lines.length <= refusalLineBound(started), `${lines.length} refusal lines for ${n} refusals`);
      for (const l of lines) assert.ok(JSON.stringify(l.fields).length < 1_500, 'the peer\'s authority is cut in the log');
    } finally {
      session.destroy();
    }
  });

  it('follows config updates from the stream', async () => {
    configServer.publish(compile(inputs(false)).model);
    let routes = 1;
    for (let i = 0; i < 100 && routes !== 0; i++) {
      await delay(20);
      routes = JSON.parse((await fetchText(wp.admin.port, '/config_dump')).body).config.routes.length;
    }
    assert.equal(routes, 0);
    assert.equal(JSON.parse((await get(await tunnel(), { headers: { 'x-user': 'tester' } })).body).backend, 'v1');
  });

  // Multi-cluster with a trust domain per cluster (cli/local/multicluster.ts per-cluster): a caller
  // of another cluster reaches this waypoint through the east-west gateway with its own
  // certificate (the inner session is its own), of its cluster's trust domain. Agents and the
  // gateway admit those named by --trust-domain-alias; so must the waypoint, as Istio's proxies
  // take meshConfig.trustDomainAliases (https://istio.io/latest/docs/reference/config/istio.mesh.v1alpha1/,
  // trustDomainAliases); a trust domain neither its own nor an alias is still another mesh.
  it('admits workload identities of a --trust-domain-alias on HBONE and still refuses another trust domain, counted peer-trust-domain and logged', async () => {
    // Clusters share the root, each signing with its own intermediate in its own trust domain.
    const clusterCa = async (td: string, name: string): Promise<CertificateAuthority> => {
      const i = await ca.issueIntermediate(name);
      return CertificateAuthority.fromPem({ certPem: i.certPem, keyPem: i.keyPem, rootsPem: i.rootPem }, { trustDomain: td });
    };
    const ALIASED = 'spiffe://cluster2.local/ns/shop/sa/tester';
    const FOREIGN = 'spiffe://cluster3.local/ns/shop/sa/tester';
    const aliased = await creds(await clusterCa('cluster2.local', 'cluster2'), ALIASED);
    const foreign = await creds(await clusterCa('cluster3.local', 'cluster3'), FOREIGN);
    const aliasLogs: LogLine[] = [];
    const aliasPool = new HbonePool({ connectTimeoutMs: 3_000 });
    let aliasWp: RunningWaypoint | undefined;
    try {
      // Without the alias (the waypoint above) the caller of cluster2.local is another mesh.
      await assert.rejects(aliasPool.connect({ sourceKey: ALIASED, tls: tlsMaterial(aliased), dest: { host: '127.0.0.1', port: wp.hbone.port }, target: '10.96.0.10:80', expectPeer: WAYPOINT }),
        (err: unknown) => err instanceof HboneSessionError && /trust domain cluster2\.local/.test(err.message));
      aliasWp = await runWaypoint(parseFlags([
        '--namespace', 'shop', '--name', 'waypoint', '--controller', `127.0.0.1:${controllerPort}`, '--insecure-xds', '--id', 'waypoint-1',
        '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--metrics', '127.0.0.1:0', '--ready', '127.0.0.1:0', '--access-log', 'off',
        '--cert-file', join(dir, 'tls.crt'), '--key-file', join(dir, 'tls.key'), '--ca-file', join(dir, 'ca.crt'),
        '--trust-domain', TD, '--trust-domain-alias', 'cluster2.local',
      ], {}), captureLogger(aliasLogs));
      const port = aliasWp.hbone.port;
      const readyPort = aliasWp.ready.port;
      await until('the aliased waypoint has its config', async () => (await fetchText(readyPort, '/healthz/ready')).status === 200);
      const t = await aliasPool.connect({ sourceKey: ALIASED, tls: tlsMaterial(aliased), dest: { host: '127.0.0.1', port }, target: '10.96.0.10:80', expectPeer: WAYPOINT });
      assert.equal(JSON.parse((await get(t)).body).backend, 'v1');
      await assert.rejects(aliasPool.connect({ sourceKey: FOREIGN, tls: tlsMaterial(foreign), dest: { host: '127.0.0.1', port }, target: '10.96.0.10:80', expectPeer: WAYPOINT }),
        (err: unknown) => err instanceof HboneSessionError && /trust domain cluster3\.local/.test(err.message));
      const metrics = (await fetchText(aliasWp.metrics.port, '/metrics')).body;
      assert.match(metrics, /weft_waypoint_hbone_refused_total\{kind="peer-trust-domain"\} 1\n/);
      assert.match(metrics, /istio_requests_total\{[^}]*source_principal="spiffe:\/\/cluster2\.local\/ns\/shop\/sa\/tester"[^}]*\} 1/);
      const refusal = aliasLogs.find((l) => l.msg === 'HBONE refusal');
      assert.equal(refusal?.fields['kind'], 'peer-trust-domain');
      assert.equal(refusal?.fields['peer'], FOREIGN);
      assert.match(String(refusal?.fields['reason']), /this port admits cluster\.local, cluster2\.local/);
    } finally {
      await aliasPool.close(100);
      await aliasWp?.close();
    }
  });
});

describe('waypoint main with an issued identity', () => {
  it('gets its certificate from the certificate service and its config over mTLS', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'weft-waypoint-ca-'));
    const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const token = 'node-a-bootstrap-token-0123456789';
    await writeFile(join(dir, 'token'), token);
    await writeFile(join(dir, 'roots.pem'), ca.trustBundle().join(''));
    const controllerId = `spiffe://${TD}/ns/weft-system/sa/weft-controller`;
    const controllerCreds = await createControllerCredentials(ca, { identity: controllerId, ipAddresses: ['127.0.0.1'], dnsNames: ['weft-controller'] });
    const configServer = new ConfigServer();
    const server = new grpc.Server();
    addConfigStreamService(server, { configServer });
    addCertificateService(server, {
      ca, authenticator: new StaticTokenAuthenticator({ 'node-a': token }),
      pods: { identitiesOnNode: (node) => new Set(node === 'node-a' ? [WAYPOINT] : []) },
      log: () => {},
    });
    const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', controllerCreds.credentials, (e, p) => (e ? rej(e) : res(p))));
    const b = await startHttpBackend(echo('v1'));
    const i = emptyInputs();
    i.namespaces.push({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'shop', labels: { 'weft.dev/dataplane-mode': 'ambient' } } });
    i.services.push(service('reviews', '10.96.0.10'));
    i.endpointSlices.push(slice('reviews', b.port));
    configServer.publish(compile(i).model);
    let wp: RunningWaypoint | undefined;
    const pool = new HbonePool();
    try {
      wp = await runWaypoint(parseFlags([
        '--namespace', 'shop', '--name', 'waypoint', '--controller', `127.0.0.1:${port}`, '--id', 'waypoint-0',
        '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--metrics', '127.0.0.1:0', '--ready', '127.0.0.1:0', '--access-log', 'off',
        '--token-file', join(dir, 'token'), '--ca-bundle', join(dir, 'roots.pem'), '--debug-endpoints',
      ], {}), silentLogger);
      let ready = await fetchText(wp.ready.port, '/healthz/ready');
      for (let n = 0; n < 150 && ready.status !== 200; n++) { await delay(20); ready = await fetchText(wp.ready.port, '/healthz/ready'); }
      assert.equal(ready.status, 200, ready.body);
      const tester = await creds(ca, TESTER);
      const t = await pool.connect({ sourceKey: TESTER, tls: tlsMaterial(tester), dest: { host: '127.0.0.1', port: wp.hbone.port }, target: '10.96.0.10:80', expectPeer: WAYPOINT });
      assert.equal(JSON.parse((await get(t)).body).backend, 'v1');
      // With --debug-endpoints the read-only paths answer on the metrics port, to a debug grant for
      // this waypoint checked with the trust bundle its issued identity follows
      // (test/unit/waypoint-debug-grant.test.ts tries the attacks); keys never among them.
      assert.equal((await fetchText(wp.metrics.port, '/debug/certs')).status, 403, 'no grant, nothing');
      const r = await fetch(`http://127.0.0.1:${wp.metrics.port}/debug/certs`, { headers: { [DEBUG_GRANT_HEADER]: ca.signDebugGrant(debugGrantAudience('shop', 'waypoint', 'waypoint-0')).grant } });
      const certs = { status: r.status, body: await r.text() };
      assert.equal(certs.status, 200, certs.body);
      assert.doesNotMatch(certs.body, /PRIVATE KEY/);
    } finally {
      await pool.close(100);
      await wp?.close();
      configServer.closeAll();
      await new Promise<void>((r) => server.tryShutdown(() => r()));
      controllerCreds.close();
      await b.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('waypoint flags', () => {
  it('requires namespace and name, and pairs static identity files', () => {
    assert.throws(() => parseFlags(['--name', 'x'], {}), FlagError);
    assert.throws(() => parseFlags(['--namespace', 'a', '--name', 'b', '--cert-file', 'c'], {}), /go together/);
    assert.throws(() => parseFlags(['--namespace', 'a', '--name', 'b'], {}), /--controller/);
    assert.throws(() => parseFlags(['--namespace', 'a', '--name', 'b', '--controller', 'c:1', '--listen', 'nope'], {}), /--listen: "nope" is not host:port/);
  });

  it('reads the controller and identity from the environment the reconciler sets', () => {
    const o = parseFlags(['--namespace', 'shop', '--name', 'waypoint'], { WEFT_CONTROLLER: 'weft-controller.weft-system.svc:15012', WEFT_SPIFFE_ID: WAYPOINT, POD_NAME: 'waypoint-abc' });
    assert.equal(o.controller, 'weft-controller.weft-system.svc:15012');
    assert.equal(o.spiffeId, WAYPOINT);
    assert.equal(o.id, 'waypoint-abc');
    assert.deepEqual(o.listen, { host: '0.0.0.0', port: 15008 });
    assert.deepEqual(o.admin, { host: '127.0.0.1', port: 15000 });
  });

  it('reads --path-normalization and --escaped-slashes (Istio pathNormalization; default BASE, KEEP_UNCHANGED)', () => {
    const base = ['--namespace', 'a', '--name', 'b', '--controller', 'c:1'];
    // Unset: the controller's mesh-wide setting applies, else the engine's defaults (BASE, KEEP_UNCHANGED, 0).
    const d = parseFlags(base, {});
    assert.equal(d.pathNormalization, undefined);
    assert.equal(d.escapedSlashes, undefined);
    assert.equal(d.numTrustedProxies, undefined);
    assert.equal(parseFlags([...base, '--num-trusted-proxies', '2'], {}).numTrustedProxies, 2);
    assert.throws(() => parseFlags([...base, '--num-trusted-proxies=x'], {}), /--num-trusted-proxies/);
    const o = parseFlags([...base, '--path-normalization', 'MERGE_SLASHES', '--escaped-slashes', 'REJECT_REQUEST'], {});
    assert.equal(o.pathNormalization, 'MERGE_SLASHES');
    assert.equal(o.escapedSlashes, 'REJECT_REQUEST');
    assert.throws(() => parseFlags([...base, '--path-normalization', 'merge'], {}), /--path-normalization: "merge" is not one of NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES/);
  });

  it('reads --trust-domain-alias (repeatable, default none) and refuses an invalid trust domain naming the flag', () => {
    const base = ['--namespace', 'a', '--name', 'b', '--controller', 'c:1'];
    assert.deepEqual(parseFlags(base, {}).trustDomainAliases, []);
    assert.deepEqual(parseFlags([...base, '--trust-domain-alias', 'cluster2.local', '--trust-domain-alias', 'cluster3.local'], {}).trustDomainAliases, ['cluster2.local', 'cluster3.local']);
    assert.throws(() => parseFlags([...base, '--trust-domain-alias', 'Cluster2/x'], {}), (e: unknown) => e instanceof FlagError && /^--trust-domain-alias: trust domain "Cluster2\/x" is invalid/.test(e.message));
    assert.throws(() => parseFlags([...base, '--trust-domain', ''], {}), (e: unknown) => e instanceof FlagError && /^--trust-domain: trust domain "" is invalid/.test(e.message));
  });

  it('the local mesh starts a waypoint with its trust domain aliases (a per-cluster-trust-domain lab), on a command line the waypoint takes', () => {
    const command = waypointCommand({ namespace: 'shop', name: 'waypoint', id: 'waypoint-0', trustDomain: 'cluster1.local', trustDomainAliases: ['cluster2.local', 'cluster3.local'], tokenFile: '/t', caFile: '/c' });
    assert.equal(command[0], 'waypoint/src/main.ts');
    const o = parseFlags(command.slice(1), {});
    assert.equal(o.trustDomain, 'cluster1.local');
    assert.deepEqual(o.trustDomainAliases, ['cluster2.local', 'cluster3.local']);
    assert.deepEqual(parseFlags(waypointCommand({ namespace: 'shop', name: 'waypoint', id: 'waypoint-0', trustDomain: 'cluster.local', tokenFile: '/t', caFile: '/c' }).slice(1), {}).trustDomainAliases, []);
  });

  it('parses quota flags', () => {
    assert.deepEqual(parseQuotaFlag('service=shop/reviews,limit=100,window=1s,per=source'), { service: 'shop/reviews', limit: 100, windowMs: 1000, per: 'source' });
    assert.throws(() => parseQuotaFlag('limit=1'), /service=/);
    // The window is a Gateway API duration (GEP-2257), read by the one parser in lib/model/duration.ts.
    assert.equal(parseQuotaFlag('service=shop/reviews,limit=1,window=1m30s').windowMs, 90_000);
    assert.throws(() => parseQuotaFlag('service=shop/reviews,limit=1,window=1d'), /--quota: window "1d" is not a duration/);
    assert.throws(() => parseFlags(['--namespace', 'a', '--name', 'b', '--controller', 'c:1', '--quota', 'service=a/b,limit=1'], {}), /--quota-redis/);
  });
});
