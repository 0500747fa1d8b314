// A waypoint's read-only /debug paths on its metrics port (15020, reached by every pod) answer only
// a debug grant for that waypoint, signed by the mesh CA (lib/identity/debug-grant.ts): a JWS
// (RFC 7515, compact, x5c 4.1.6) with JWT claims (RFC 7519 4.1.3 aud, 4.1.4 exp). Istio keeps
// these paths on the loopback admin port
// (https://istio.io/latest/docs/ops/deployment/application-requirements/#ports-used-by-istio);
// the waypoint holds no secret that opens them: only the trust bundle, which is public. Each attack
// below is refused 403, counted in weft_waypoint_listener_refused_total{listener="metrics",
// reason="debug-grant-<why>"} and logged within the refusal budget.
import assert from 'node:assert/strict';
import { createPrivateKey, createSign, type KeyObject } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { get } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CertificateAuthority, createCsr, generateKeyPair, parseCertificate, privateKeyToPem } from '../../lib/identity/index.ts';
import { DEBUG_GRANT_HEADER, DEBUG_GRANT_TYPE, debugGrantAudience, encodeDebugGrant, verifyDebugGrant, DebugGrantError } from '../../lib/identity/debug-grant.ts';
import { parseFlags, runWaypoint, type RunningWaypoint } from '../../waypoint/src/main.ts';
import { captureLogger, type LogLine } from './controller-harness.ts';
import { refusalLineBound } from '../lab/log-bound.ts';

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

describe('a waypoint\'s debug paths want a grant for it, signed by the mesh CA', () => {
  let dir: string;
  let ca: CertificateAuthority;
  let wp: RunningWaypoint;
  const logs: LogLine[] = [];
  let workloadKey: KeyObject;
  let workloadChain: Buffer[];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'weft-wp-grant-'));
    ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const issue = async (id: string) => {
      const { privateKey } = await generateKeyPair();
      return { key: privateKey, chain: ca.signCsr(createCsr(id, privateKey), id).certChain };
    };
    const w = await issue(WAYPOINT);
    await writeFile(join(dir, 'tls.crt'), w.chain.join(''));
    await writeFile(join(dir, 'tls.key'), privateKeyToPem(w.key));
    await writeFile(join(dir, 'ca.crt'), ca.trustBundle().join(''));
    // A workload of the mesh: its certificate chains to the same root, its key is its own.
    const tester = await issue(`spiffe://${TD}/ns/shop/sa/tester`);
    workloadKey = tester.key;
    workloadChain = tester.chain.map((pem) => parseCertificate(pem).der);
    wp = await runWaypoint(parseFlags([
      // No controller answers here: the metrics port serves regardless of the config stream.
      '--namespace', 'shop', '--name', 'waypoint', '--controller', '127.0.0.1:9', '--insecure-xds', '--id', 'waypoint-0',
      '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--metrics', '127.0.0.1:0', '--ready', '127.0.0.1:0', '--access-log', 'off',
      '--cert-file', join(dir, 'tls.crt'), '--key-file', join(dir, 'tls.key'), '--ca-file', join(dir, 'ca.crt'), '--debug-endpoints',
    ], {}), captureLogger(logs));
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
    const { keyPem, certPem } = ca.exportPem();
    const caKey = createPrivateKey(keyPem);
    const x5c = [parseCertificate(certPem).der.toString('base64')];
    await assertRefused(craft(caKey, { alg: 'ES256', typ: DEBUG_GRANT_TYPE, x5c }, { aud: AUDIENCE, iat: now(), exp: now() + 86_400 }), 'malformed');
    await assertRefused(craft(caKey, { alg: 'ES256', typ: DEBUG_GRANT_TYPE, x5c }, { aud: AUDIENCE, iat: now() + 3_600, exp: now() + 3_700 }), 'expired');
  });

  it('refuses a grant for another waypoint or pod (RFC 7519 4.1.3 aud): another replica of this waypoint (a tenant\'s pod wearing its label is sent one), another name, another namespace, every waypoint', async () => {
    await assertRefused(ca.signDebugGrant(debugGrantAudience('shop', 'waypoint', 'waypoint-evil')).grant, 'audience');
    await assertRefused(ca.signDebugGrant(debugGrantAudience('shop', 'other', 'waypoint-0')).grant, 'audience');
    await assertRefused(ca.signDebugGrant(debugGrantAudience('bank', 'waypoint', 'waypoint-0')).grant, 'audience');
    await assertRefused(ca.signDebugGrant('waypoint-debug:shop/waypoint').grant, 'audience');
    await assertRefused(ca.signDebugGrant('waypoint-debug').grant, 'audience');
  });

  it('refuses a grant signed with a workload certificate\'s key, even with the chain to the mesh root (RFC 5280 4.2.1.9: no CA:TRUE)', async () => {
    await assertRefused(encodeDebugGrant(workloadKey, workloadChain, AUDIENCE, Date.now()).grant, 'signer');
    // Its chain carries the CA after the leaf: the signer is still the leaf.
    await assertRefused(encodeDebugGrant(workloadKey, [...workloadChain, parseCertificate(ca.signingCertificate()).der], AUDIENCE, Date.now()).grant, 'signer');
  });

  it('refuses a grant of a CA outside the trust bundle, and forged or malformed grants', async () => {
    const other = await CertificateAuthority.generateRoot({ trustDomain: TD });
    await assertRefused(other.signDebugGrant(AUDIENCE).grant, 'untrusted');
    // The mesh CA's certificate in x5c, signed with another key: the signature does not verify.
    const { grant } = ca.signDebugGrant(debugGrantAudience('shop', 'other', 'waypoint-0'));
    const [h, , s] = grant.split('.');
    await assertRefused(`${h}.${b64url({ aud: AUDIENCE, iat: now(), exp: now() + 60 })}.${s}`, 'signature');
    const { keyPem: otherKey } = other.exportPem();
    const x5c = [parseCertificate(ca.signingCertificate()).der.toString('base64')];
    await assertRefused(craft(createPrivateKey(otherKey), { alg: 'ES256', typ: DEBUG_GRANT_TYPE, x5c }, { aud: AUDIENCE, iat: now(), exp: now() + 60 }), 'signature');
    // An unsigned JWS (RFC 7518 3.6 "none"), a mismatched alg, a missing typ, critical extensions, garbage.
    await assertRefused(`${b64url({ alg: 'none', typ: DEBUG_GRANT_TYPE, x5c })}.${b64url({ aud: AUDIENCE, iat: now(), exp: now() + 60 })}.`, 'malformed');
    await assertRefused(`${b64url({ alg: 'HS256', typ: DEBUG_GRANT_TYPE, x5c })}.${b64url({ aud: AUDIENCE, iat: now(), exp: now() + 60 })}.${s}`, 'malformed');
    await assertRefused(`${b64url({ alg: 'RS256', typ: DEBUG_GRANT_TYPE, x5c })}.${grant.split('.')[1]}.${s}`, 'signature');
    await assertRefused(`${b64url({ alg: 'ES256', x5c })}.${grant.split('.')[1]}.${s}`, 'malformed');
    await assertRefused(`${b64url({ alg: 'ES256', typ: DEBUG_GRANT_TYPE, x5c, crit: ['exp'] })}.${grant.split('.')[1]}.${s}`, 'malformed');
    for (const junk of ['x', 'a.b.c', `${b64url({ alg: 'ES256', typ: DEBUG_GRANT_TYPE, x5c: ['bm90IGEgY2VydA'] })}.e30.AA`, 'A'.repeat(13_000)]) await assertRefused(junk, 'malformed');
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

describe('verifyDebugGrant', () => {
  it('takes a grant signed by a cluster\'s intermediate CA (Istio\'s plug-in CA, one per cluster) against the shared root, and follows the root bundle', async () => {
    const root = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const inter = await root.issueIntermediate('cluster-1');
    const cluster = CertificateAuthority.fromPem({ certPem: inter.certPem, keyPem: inter.keyPem, rootsPem: inter.rootPem }, { trustDomain: TD });
    const { grant, expires } = cluster.signDebugGrant(AUDIENCE);
    assert.equal(verifyDebugGrant(grant, AUDIENCE, root.trustBundle()).expires.getTime(), expires.getTime());
    // A waypoint whose bundle no longer holds that root (rotated away) refuses it.
    const next = await CertificateAuthority.generateRoot({ trustDomain: TD });
    assert.throws(() => verifyDebugGrant(grant, AUDIENCE, next.trustBundle()), (e: Error) => e instanceof DebugGrantError && e.reason === 'untrusted');
    // Past its expiry and the skew, expired.
    assert.throws(() => verifyDebugGrant(grant, AUDIENCE, root.trustBundle(), expires.getTime() + 61_000), (e: Error) => e instanceof DebugGrantError && e.reason === 'expired');
  });
});
