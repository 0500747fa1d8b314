// A waypoint's read-only /debug paths on its metrics port (15020, reached by every pod) answer only
// a debug grant for that waypoint, signed by the CA that issued the waypoint's own certificate: its
// cluster's (lib/identity/debug-grant.ts): a JWS (RFC 7515, compact) with JWT claims (RFC 7519
// 4.1.3 aud, 4.1.4 exp). Clusters of one mesh share the root, each with its own intermediate
// (Istio's plug-in CA, https://istio.io/latest/docs/tasks/security/cert-management/plugin-ca-cert/);
// a grant another cluster's CA signed opens nothing here. Istio keeps
// these paths on the loopback admin port
// (https://istio.io/latest/docs/ops/deployment/application-requirements/#ports-used-by-istio);
// the waypoint holds no secret that opens them: only the trust bundle, which is public. Each attack
// below is refused 403, counted in weft_waypoint_listener_refused_total{listener="metrics",
// reason="debug-grant-<why>"} and logged within the refusal budget.
import assert from 'node:assert/strict';
import { createPrivateKey, createSign, type KeyObject } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { get } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { CertificateAuthority, createCsr, generateKeyPair, parseCertificate, privateKeyToPem } from '../../lib/identity/index.ts';
import { DEBUG_GRANT_HEADER, DEBUG_GRANT_TYPE, debugGrantAudience, debugGrantSigners, encodeDebugGrant, verifyDebugGrant, DebugGrantError } from '../../lib/identity/debug-grant.ts';
import { admitDebugRequest } from '../../lib/debug-http.ts';
import { parseFlags, runWaypoint, type RunningWaypoint } from '../../waypoint/src/main.ts';
import { captureLogger, type LogLine } from './controller-harness.ts';
import { refusalLineBound } from '../lab/log-bound.ts';
import { until } from '../lab/wait.ts';
import { StaticTokenAuthenticator, addCertificateService, createControllerCredentials, type ControllerCredentials } from '../../controller/src/ca/index.ts';

const TD = 'cluster.local';
const WAYPOINT = `spiffe://${TD}/ns/shop/sa/waypoint`;
const AUDIENCE = debugGrantAudience('shop', 'waypoint', 'waypoint-0');

const b64url = (v: unknown) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
/** A JWS signed by `key` with the header and claims given: what an attacker can make with a key it holds. */
function craft(key: KeyObject, header: Record<string, unknown>, claims: Record<string, unknown>, hash = 'sha256'): string {
  const input = `${b64url(header)}.${b64url(claims)}`;
  const sig = createSign(hash).update(input).sign({ key, dsaEncoding: 'ieee-p1363' });
  return `${input}.${sig.toString('base64url')}`;
}
const now = () => Math.floor(Date.now() / 1000);

/** A cluster's CA: an intermediate of `root` (cli/local/kube/multicluster.ts, Istio's plug-in CA). */
async function clusterCa(root: CertificateAuthority, name: string, clock?: () => number): Promise<CertificateAuthority> {
  const inter = await root.issueIntermediate(name);
  return CertificateAuthority.fromPem({ certPem: inter.certPem, keyPem: inter.keyPem, rootsPem: inter.rootPem }, { trustDomain: TD, ...(clock ? { clock } : {}) });
}

describe('a waypoint\'s debug paths want a grant for it, signed by the CA of its own cluster', () => {
  let dir: string;
  let root: CertificateAuthority;
  let ca: CertificateAuthority;
  let wp: RunningWaypoint;
  const logs: LogLine[] = [];
  let workloadKey: KeyObject;
  /** When set, the time (epoch ms) the waypoint judges grants at; the real time otherwise. */
  let frozen: number | undefined;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'weft-wp-grant-'));
    // Cluster A's CA, an intermediate under the mesh's root, issues the waypoint's certificate.
    root = await CertificateAuthority.generateRoot({ trustDomain: TD });
    ca = await clusterCa(root, 'cluster-a');
    const issue = async (id: string) => {
      const { privateKey } = await generateKeyPair();
      return { key: privateKey, chain: ca.signCsr(createCsr(id, privateKey), id).certChain };
    };
    const w = await issue(WAYPOINT);
    await writeFile(join(dir, 'tls.crt'), w.chain.join(''));
    await writeFile(join(dir, 'tls.key'), privateKeyToPem(w.key));
    await writeFile(join(dir, 'ca.crt'), ca.trustBundle().join(''));
    // A workload of the mesh: its certificate chains to the same root, its key is its own.
    workloadKey = (await issue(`spiffe://${TD}/ns/shop/sa/tester`)).key;
    wp = await runWaypoint({ ...parseFlags([
      // No controller answers here: the metrics port serves regardless of the config stream.
      '--namespace', 'shop', '--name', 'waypoint', '--controller', '127.0.0.1:9', '--insecure-xds', '--id', 'waypoint-0',
      '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--metrics', '127.0.0.1:0', '--ready', '127.0.0.1:0', '--access-log', 'off',
      '--cert-file', join(dir, 'tls.crt'), '--key-file', join(dir, 'tls.key'), '--ca-file', join(dir, 'ca.crt'), '--debug-endpoints',
    ], {}), debugClock: () => frozen ?? Date.now() }, captureLogger(logs));
  });

  after(async () => {
    await wp?.close();
    await rm(dir, { recursive: true, force: true });
  });

  // A connection per request (no pool): one source holds at most 16 connections on this port.
  const read = (path: string, grant?: string) => new Promise<{ status: number; body: string }>((resolve, reject) => {
    get({ host: '127.0.0.1', port: wp.metrics.port, path, agent: false, headers: grant === undefined ? {} : { [DEBUG_GRANT_HEADER]: grant } }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => { body += c.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject);
  });
  const refused = async (why: string) => Number(new RegExp(`^weft_waypoint_listener_refused_total\\{listener="metrics",reason="debug-grant-${why}"\\} (\\d+)$`, 'm').exec((await read('/metrics')).body)?.[1] ?? 0);
  /** The attack is refused 403, counted under its reason and logged naming it. */
  const assertRefused = async (grant: string | undefined, why: string, path = '/debug/config_dump') => {
    const before = await refused(why);
    const r = await read(path, grant);
    assert.equal(r.status, 403, `${why}: ${r.body}`);
    assert.match(r.body, new RegExp(`wants a debug grant for ${AUDIENCE.replace('/', '\\/')} in the ${DEBUG_GRANT_HEADER} header`));
    assert.doesNotMatch(r.body, /"config"|PRIVATE KEY/, 'nothing of the dump');
    assert.equal(await refused(why), before + 1, `counted as debug-grant-${why}`);
    assert.ok(logs.some((l) => l.msg === 'status listener refused a request' && l.fields['reason'] === `debug-grant-${why}` && String(l.fields['detail']).startsWith(path)), `logged: debug-grant-${why}`);
  };

  it('answers a grant the controller signed for this waypoint, and refuses a request without one', async () => {
    await assertRefused(undefined, 'missing');
    await assertRefused(undefined, 'missing', '/debug/flows');
    const { grant } = ca.signDebugGrant(AUDIENCE);
    const dump = await read('/debug/config_dump', grant);
    assert.equal(dump.status, 200, dump.body);
    assert.equal(JSON.parse(dump.body).identity, WAYPOINT);
    const certs = await read('/debug/certs', grant);
    assert.equal(certs.status, 200, certs.body);
    assert.doesNotMatch(certs.body, /PRIVATE KEY/);
    // Prometheus needs nothing.
    assert.equal((await read('/metrics')).status, 200);
  });

  it('refuses the replay of an expired grant (RFC 7519 4.1.4 exp), and one that lasts longer than a controller signs', async () => {
    // The same CA, its clock 20 minutes back: a grant signed then, long expired (5 min + 1 min skew).
    const past = CertificateAuthority.fromPem(ca.exportPem(), { trustDomain: TD, clock: () => Date.now() - 20 * 60_000 });
    await assertRefused(past.signDebugGrant(AUDIENCE).grant, 'expired');
    const caKey = createPrivateKey(ca.exportPem().keyPem);
    await assertRefused(craft(caKey, { alg: 'ES256', typ: DEBUG_GRANT_TYPE }, { aud: AUDIENCE, iat: now(), exp: now() + 86_400 }), 'malformed');
    await assertRefused(craft(caKey, { alg: 'ES256', typ: DEBUG_GRANT_TYPE }, { aud: AUDIENCE, iat: now() + 3_600, exp: now() + 3_700 }), 'expired');
  });

  it('refuses a grant for another waypoint or pod (RFC 7519 4.1.3 aud): another replica of this waypoint (a tenant\'s pod wearing its label is sent one), another name, another namespace, every waypoint', async () => {
    await assertRefused(ca.signDebugGrant(debugGrantAudience('shop', 'waypoint', 'waypoint-evil')).grant, 'audience');
    await assertRefused(ca.signDebugGrant(debugGrantAudience('shop', 'other', 'waypoint-0')).grant, 'audience');
    await assertRefused(ca.signDebugGrant(debugGrantAudience('bank', 'waypoint', 'waypoint-0')).grant, 'audience');
    await assertRefused(ca.signDebugGrant('waypoint-debug:shop/waypoint').grant, 'audience');
    await assertRefused(ca.signDebugGrant('waypoint-debug').grant, 'audience');
  });

  it('refuses a grant signed by another cluster\'s CA under the shared root: a holder of cluster B\'s debug token opens nothing in cluster A (Istio plug-in CA, one intermediate per cluster)', async () => {
    // Cluster B's controller signs what its token holder asks, this waypoint and pod included.
    const clusterB = await clusterCa(root, 'cluster-b');
    await assertRefused(clusterB.signDebugGrant(AUDIENCE).grant, 'signature');
    // Nor does the shared root's key (it issued no waypoint's certificate; Weft's controllers sign with their intermediate).
    await assertRefused(root.signDebugGrant(AUDIENCE).grant, 'signature');
    const r = await read('/debug/config_dump', clusterB.signDebugGrant(AUDIENCE).grant);
    assert.match(r.body, /does not verify with the key of the CA that issued this waypoint's certificate/);
  });

  it('refuses a grant signed with a workload certificate\'s key (its certificate chains to the mesh root; its key is not the CA\'s)', async () => {
    await assertRefused(encodeDebugGrant(workloadKey, AUDIENCE, Date.now()).grant, 'signature');
  });

  it('refuses a grant of a CA outside the trust bundle, and forged or malformed grants', async () => {
    const other = await CertificateAuthority.generateRoot({ trustDomain: TD });
    await assertRefused(other.signDebugGrant(AUDIENCE).grant, 'signature');
    // Another waypoint's grant with this one's audience pasted in: the signature does not verify.
    const { grant } = ca.signDebugGrant(debugGrantAudience('shop', 'other', 'waypoint-0'));
    const [h, , s] = grant.split('.');
    await assertRefused(`${h}.${b64url({ aud: AUDIENCE, iat: now(), exp: now() + 60 })}.${s}`, 'signature');
    const { keyPem: otherKey } = other.exportPem();
    // An old-style grant carrying the cluster CA's certificate (x5c) but signed with another key.
    const x5c = [parseCertificate(ca.signingCertificate()).der.toString('base64')];
    await assertRefused(craft(createPrivateKey(otherKey), { alg: 'ES256', typ: DEBUG_GRANT_TYPE, x5c }, { aud: AUDIENCE, iat: now(), exp: now() + 60 }), 'signature');
    // An unsigned JWS (RFC 7518 3.6 "none"), a mismatched alg, a missing typ, critical extensions, garbage.
    await assertRefused(`${b64url({ alg: 'none', typ: DEBUG_GRANT_TYPE })}.${b64url({ aud: AUDIENCE, iat: now(), exp: now() + 60 })}.`, 'malformed');
    await assertRefused(`${b64url({ alg: 'HS256', typ: DEBUG_GRANT_TYPE })}.${b64url({ aud: AUDIENCE, iat: now(), exp: now() + 60 })}.${s}`, 'malformed');
    await assertRefused(`${b64url({ alg: 'RS256', typ: DEBUG_GRANT_TYPE })}.${b64url({ aud: AUDIENCE, iat: now(), exp: now() + 60 })}.${s}`, 'signature');
    await assertRefused(`${b64url({ alg: 'ES256' })}.${b64url({ aud: AUDIENCE, iat: now(), exp: now() + 60 })}.${s}`, 'malformed');
    await assertRefused(`${b64url({ alg: 'ES256', typ: DEBUG_GRANT_TYPE, crit: ['exp'] })}.${b64url({ aud: AUDIENCE, iat: now(), exp: now() + 60 })}.${s}`, 'malformed');
    for (const junk of ['x', 'a.b.c', `${b64url({ alg: 'ES256', typ: DEBUG_GRANT_TYPE })}.e30.AA`, 'A'.repeat(3_000)]) await assertRefused(junk, 'malformed');
  });

  // RFC 7519 4.1.4: "the JWT MUST NOT be accepted for processing" on or after exp. A stream opened
  // with a grant is not a way to keep reading past it (nor is a new one: that is refused expired).
  it('ends a /flows stream when the grant that opened it expires, with a last line saying why, counted and logged as an expired grant', async () => {
    // A grant past its exp, within the minute of skew a grant is allowed (it lapses at exp + 60 s);
    // the waypoint judges it a second before it lapses, however long the request takes to arrive
    // (a loaded machine), so the stream opens and ends a second later.
    const exp = now() - 30;
    const grant = craft(createPrivateKey(ca.exportPem().keyPem), { alg: 'ES256', typ: DEBUG_GRANT_TYPE }, { aud: AUDIENCE, iat: now() - 120, exp });
    const before = await refused('expired');
    frozen = exp * 1000 + 59_000;
    const lines: string[] = [];
    let ended = false;
    const req = get({ host: '127.0.0.1', port: wp.metrics.port, path: '/debug/flows', agent: false, headers: { [DEBUG_GRANT_HEADER]: grant } });
    try {
      const res = await new Promise<IncomingMessage>((resolve, reject) => req.on('response', resolve).on('error', reject));
      assert.equal(res.statusCode, 200);
      let buf = '';
      res.on('data', (c: Buffer) => {
        buf += c.toString();
        const parts = buf.split('\n');
        buf = parts.pop()!;
        lines.push(...parts);
      });
      res.on('end', () => { ended = true; });
      await until('the stream opened (its hello line)', () => lines.length > 0, 5_000);
      assert.equal(JSON.parse(lines[0]!).type, 'hello');
      await until('the stream ends once the grant has expired', () => ended, 15_000);
    } finally {
      req.destroy();
      frozen = undefined;
    }
    const last = JSON.parse(lines.at(-1)!) as { type: string; reason: string };
    assert.equal(last.type, 'closed');
    assert.match(last.reason, /the grant that opened it expired at /);
    assert.equal(await refused('expired'), before + 1, 'counted as debug-grant-expired');
    assert.ok(logs.some((l) => l.msg === 'status listener refused a request' && l.fields['reason'] === 'debug-grant-expired' && /the stream is closed: the grant that opened it expired/.test(String(l.fields['detail']))), 'logged: the stream closed for its grant');
  });

  it('a flood of forged grants is each counted and logged within the refusal budget; the port keeps serving', async () => {
    const before = await refused('signature');
    const { grant } = ca.signDebugGrant(debugGrantAudience('shop', 'other', 'waypoint-0'));
    const [h, , s] = grant.split('.');
    const forged = `${h}.${b64url({ aud: AUDIENCE, iat: now(), exp: now() + 60 })}.${s}`;
    const n = 300;
    const started = Date.now();
    const linesBefore = logs.filter((l) => l.msg === 'status listener refused a request').length;
    for (let i = 0; i < n; i += 10) {
      const statuses = await Promise.all(Array.from({ length: 10 }, async () => (await read('/debug/config_dump', forged)).status));
      assert.ok(statuses.every((st) => st === 403));
    }
    assert.equal(await refused('signature'), before + n);
    const lines = logs.filter((l) => l.msg === 'status listener refused a request').length - linesBefore;
    assert.ok(lines >= 1 && lines <= refusalLineBound(started), `${lines} lines for ${n} refusals`);
    assert.equal((await read('/debug/config_dump', ca.signDebugGrant(AUDIENCE).grant)).status, 200);
  });
});

// Istio's plug-in CA rotated (https://istio.io/latest/docs/tasks/security/cert-management/plugin-ca-cert/):
// the cluster's controller restarts on a new intermediate under the same root, so its grants are
// signed with the new intermediate's key while the waypoint's certificate, from the one before,
// has up to half its lifetime to run. The CA's trust-bundle stream names the certificate it signs
// with now, and a waypoint holding one another issued renews at once; the grant is checked against
// the issuer of the waypoint's own certificate as before, so another cluster's CA still opens nothing.
describe('a waypoint\'s debug grants after its cluster\'s intermediate changed under the same root', () => {
  it('takes the new intermediate\'s grants once its certificate follows it (within a renewal, not at half its lifetime), and still refuses another cluster\'s', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'weft-wp-grant-rotation-'));
    const root = await CertificateAuthority.generateRoot({ trustDomain: TD });
    let ca = await clusterCa(root, 'cluster-a');
    const token = 'node-a-bootstrap-token-0123456789';
    await writeFile(join(dir, 'token'), token);
    await writeFile(join(dir, 'roots.pem'), root.trustBundle().join(''));
    let server: grpc.Server | undefined;
    let serving: ControllerCredentials | undefined;
    let port = 0;
    const startController = async (): Promise<void> => {
      serving = await createControllerCredentials(ca, { identity: `spiffe://${TD}/ns/weft-system/sa/weft-controller`, ipAddresses: ['127.0.0.1'], dnsNames: ['weft-controller'] });
      server = new grpc.Server();
      addCertificateService(server, {
        ca, authenticator: new StaticTokenAuthenticator({ 'node-a': token }),
        pods: { identitiesOnNode: (node) => new Set(node === 'node-a' ? [WAYPOINT] : []) }, log: () => {},
      });
      port = await new Promise<number>((res, rej) => server!.bindAsync(`127.0.0.1:${port}`, serving!.credentials, (e, p) => (e ? rej(e) : res(p))));
    };
    const stopController = (): void => {
      server?.forceShutdown();
      serving?.close();
    };
    let wp: RunningWaypoint | undefined;
    const logs: LogLine[] = [];
    try {
      await startController();
      wp = await runWaypoint(parseFlags([
        '--namespace', 'shop', '--name', 'waypoint', '--controller', `127.0.0.1:${port}`, '--id', 'waypoint-0',
        '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--metrics', '127.0.0.1:0', '--ready', '127.0.0.1:0', '--access-log', 'off',
        '--token-file', join(dir, 'token'), '--ca-bundle', join(dir, 'roots.pem'), '--debug-endpoints',
      ], {}), captureLogger(logs));
      const metricsPort = wp.metrics.port;
      const status = (grant: string) => new Promise<number>((resolve, reject) => {
        get({ host: '127.0.0.1', port: metricsPort, path: '/debug/certs', agent: false, headers: { [DEBUG_GRANT_HEADER]: grant } }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        }).on('error', reject);
      });
      assert.equal(await status(ca.signDebugGrant(AUDIENCE).grant), 200, 'the grant of the CA that issued the waypoint\'s certificate');
      const before = ca.signDebugGrant(AUDIENCE).grant;

      // The operator replaces cacerts with a new intermediate of the same root and restarts the controller.
      stopController();
      ca = await clusterCa(root, 'cluster-a');
      await startController();
      await until('a grant of the new intermediate opens the waypoint\'s debug paths', async () => (await status(ca.signDebugGrant(AUDIENCE).grant)) === 200, 15_000);
      assert.equal(await status(before), 200, 'a grant signed just before the rotation, within the overlap');
      // Another cluster's controller, under the same root, still opens nothing here.
      const refused = async () => Number(/^weft_waypoint_listener_refused_total\{listener="metrics",reason="debug-grant-signature"\} (\d+)$/m.exec(await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text())?.[1] ?? 0);
      const counted = await refused();
      const lines = logs.length;
      const clusterB = await clusterCa(root, 'cluster-b');
      assert.equal(await status(clusterB.signDebugGrant(AUDIENCE).grant), 403);
      assert.equal(await refused(), counted + 1, 'counted as debug-grant-signature');
      assert.ok(logs.slice(lines).some((l) => l.msg === 'status listener refused a request' && l.fields['reason'] === 'debug-grant-signature' && /does not verify with the key of the CA that issued this waypoint's certificate/.test(String(l.fields['detail']))), 'logged, naming why');
    } finally {
      await wp?.close();
      stopController();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('verifyDebugGrant', () => {
  /** A waypoint's credentials: its certificate (leaf, then its CA's chain) issued by `ca`, and `ca`'s roots. */
  const waypointOf = async (ca: CertificateAuthority) => {
    const { privateKey } = await generateKeyPair();
    return { certChain: ca.signCsr(createCsr(WAYPOINT, privateKey), WAYPOINT).certChain, trustBundle: ca.trustBundle() };
  };
  const refusedAs = (why: string) => (e: Error) => e instanceof DebugGrantError && e.reason === why;

  it('takes the grants of the CA that issued the waypoint\'s certificate, a root or a cluster\'s intermediate, and no other CA\'s under the same root', async () => {
    const root = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const a = await clusterCa(root, 'cluster-a');
    const b = await clusterCa(root, 'cluster-b');
    const signersA = debugGrantSigners(() => creds);
    let creds = await waypointOf(a);
    const { grant, expires } = a.signDebugGrant(AUDIENCE);
    assert.equal(verifyDebugGrant(grant, AUDIENCE, signersA()).expires.getTime(), expires.getTime());
    assert.throws(() => verifyDebugGrant(b.signDebugGrant(AUDIENCE).grant, AUDIENCE, signersA()), refusedAs('signature'));
    assert.throws(() => verifyDebugGrant(root.signDebugGrant(AUDIENCE).grant, AUDIENCE, signersA()), refusedAs('signature'));
    // Past its expiry and the skew, expired (checked before the signature).
    assert.throws(() => verifyDebugGrant(grant, AUDIENCE, signersA(), expires.getTime() + 61_000), refusedAs('expired'));
    // A waypoint of a root-signed mesh: the root in its bundle issued its certificate.
    creds = await waypointOf(root);
    assert.doesNotThrow(() => verifyDebugGrant(root.signDebugGrant(AUDIENCE).grant, AUDIENCE, signersA()));
    // A waypoint whose issuer is nowhere in its chain or bundle takes nothing.
    const lone = debugGrantSigners(() => ({ certChain: [creds.certChain[0]!], trustBundle: [b.signingCertificate()] }));
    assert.throws(() => verifyDebugGrant(root.signDebugGrant(AUDIENCE).grant, AUDIENCE, lone()), refusedAs('untrusted'));
  });

  it('at a rotation the waypoint\'s renewed certificate brings the new CA; the one before is taken for the longest grant\'s lifetime, then not', async () => {
    const root = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const before = await clusterCa(root, 'cluster-a');
    const next = await clusterCa(root, 'cluster-a');
    let t = Date.now();
    let creds = await waypointOf(before);
    const signers = debugGrantSigners(() => creds, () => t);
    const old = before.signDebugGrant(AUDIENCE).grant;
    assert.doesNotThrow(() => verifyDebugGrant(old, AUDIENCE, signers()));
    assert.throws(() => verifyDebugGrant(next.signDebugGrant(AUDIENCE).grant, AUDIENCE, signers()), refusedAs('signature'));
    creds = await waypointOf(next);
    assert.doesNotThrow(() => verifyDebugGrant(next.signDebugGrant(AUDIENCE).grant, AUDIENCE, signers()));
    assert.doesNotThrow(() => verifyDebugGrant(old, AUDIENCE, signers()), 'a grant signed before the renewal');
    t += 10 * 60_000 + 1;
    assert.throws(() => verifyDebugGrant(old, AUDIENCE, signers(), Date.now()), refusedAs('signature'));
  });

  it('the issuer is found once per certificate, not per request', async () => {
    const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
    let reads = 0;
    let bundle = ca.trustBundle();
    const creds = await waypointOf(ca);
    const signers = debugGrantSigners(() => { reads++; return { certChain: creds.certChain, trustBundle: bundle }; });
    const first = signers();
    for (let i = 0; i < 100; i++) assert.equal(signers()[0], first[0], 'the same key object, not parsed again');
    assert.equal(reads, 101);
    bundle = [...bundle];
    assert.equal(signers()[0], first[0], 'a new bundle with the same certificate: its issuer is still known');
  });
});

// A key or input node:crypto chokes on (anything but a DebugGrantError) is a refusal like the
// others, not an exception out of the request handler, which would end the waypoint.
test('admitDebugRequest refuses as malformed, counted and named, a grant whose check throws anything', () => {
  const refusals: Array<{ why: string; detail: string }> = [];
  const res = { status: 0, body: '', writeHead(status: number) { this.status = status; return this; }, end(body: string) { this.body = body; return this; } };
  const req = { headers: { [DEBUG_GRANT_HEADER]: 'e30.e30.AA' }, url: '/debug/certs', socket: {} } as unknown as IncomingMessage;
  const admitted = admitDebugRequest({
    audience: AUDIENCE,
    signers: () => { throw new TypeError('unsupported key'); },
    refused: (_req, why, detail) => refusals.push({ why, detail }),
  }, req, res as never, '/debug/certs');
  assert.equal(admitted, false);
  assert.equal(res.status, 403);
  assert.match(res.body, /wants a debug grant for .* unsupported key/);
  assert.deepEqual(refusals.map((r) => r.why), ['malformed']);
  assert.match(refusals[0]!.detail, /unsupported key/);
});
