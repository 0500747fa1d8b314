// The agent's certificate manager against an in-process signer that calls the CA directly.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CertificateAuthority } from '../../lib/identity/ca.ts';
import { RENEWAL_BACKOFF_DEFAULTS } from '../../lib/identity/renewal.ts';
import { CaUnavailableError, CertificateRefusedError, type IdentityError } from '../../lib/identity/errors.ts';
import {
  CertManager,
  type CertificateInfo, type CertificateSigner, type RenewalRetry, type SignResult,
} from '../../agent/src/certs/index.ts';
import { AgentMetrics } from '../../agent/src/metrics.ts';
import { EchoServer, TD, connectHbone, id } from './identity-fixtures.ts';
import { holds } from '../lab/wait.ts';

/** Signs through the CA in-process; can be told to fail like an unreachable CA. */
class InProcessSigner implements CertificateSigner {
  calls = 0;
  failNext = 0;
  delayMs = 0;
  refuse = new Set<string>();
  ca: CertificateAuthority;
  constructor(ca: CertificateAuthority) {
    this.ca = ca;
  }
  async sign(identity: string, csr: string, lifetimeSeconds: number): Promise<SignResult> {
    this.calls++;
    if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs));
    if (this.failNext > 0) {
      this.failNext--;
      throw new CaUnavailableError('certificate service at 127.0.0.1:15012 is unavailable (test)');
    }
    if (this.refuse.has(identity)) throw new CertificateRefusedError(`node test may not obtain identity ${identity}`);
    const issued = this.ca.signCsr(csr, identity, lifetimeSeconds > 0 ? { lifetimeMs: lifetimeSeconds * 1000 } : {});
    return { certChain: issued.certChain, trustBundle: this.ca.trustBundle() };
  }
  setTrustBundle(): void {}
  close(): void {}
}

const web = id('default', 'web');

test('concurrent requests for one identity share one key generation and signing call', async (t) => {
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const signer = new InProcessSigner(ca);
  signer.delayMs = 50;
  const m = new CertManager({ signer, trustBundle: ca.trustBundle() });
  t.after(() => m.close());
  const results = await Promise.all(Array.from({ length: 20 }, () => m.get(web)));
  assert.equal(signer.calls, 1);
  assert.ok(results.every((r) => r.certChain[0] === results[0]!.certChain[0]));
  await m.get(web);
  assert.equal(signer.calls, 1, 'a cached certificate is served without signing again');
  await m.get(id('default', 'api'));
  assert.equal(signer.calls, 2, 'another identity gets its own certificate');
});

test('renews at half-life: the serial changes before the old certificate expires', async (t) => {
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const signer = new InProcessSigner(ca);
  const m = new CertManager({ signer, trustBundle: ca.trustBundle(), lifetimeSeconds: 4 });
  t.after(() => m.close());
  await m.get(web);
  const [first] = m.list();
  assert.ok(first);
  const halfLife = first.renewAt.getTime() - Date.now();
  assert.ok(halfLife > 500 && halfLife <= 2000, `renewal scheduled ${halfLife} ms from now`);
  const rotated = await new Promise<{ info: CertificateInfo; previous: CertificateInfo | undefined; at: number }>((resolve) =>
    m.once('rotated', (info, previous) => resolve({ info, previous, at: Date.now() })),
  );
  assert.notEqual(rotated.info.serial, first.serial);
  assert.equal(rotated.previous?.serial, first.serial);
  assert.ok(rotated.at < first.notAfter.getTime(), 'renewed before the old certificate expired');
  assert.equal(m.list()[0]?.serial, rotated.info.serial);
});

test('retries with backoff while the CA is unreachable and then succeeds', async (t) => {
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const signer = new InProcessSigner(ca);
  signer.failNext = 3;
  const m = new CertManager({ signer, trustBundle: ca.trustBundle(), backoff: { initialMs: 20, maxMs: 100 } });
  t.after(() => m.close());
  const failures: IdentityError[] = [];
  m.on('renewalFailed', (_identity, err) => failures.push(err));
  const started = Date.now();
  await m.get(web);
  assert.equal(signer.calls, 4);
  assert.deepEqual(failures.map((f) => f.code), ['WEFT_CA_UNAVAILABLE', 'WEFT_CA_UNAVAILABLE', 'WEFT_CA_UNAVAILABLE']);
  assert.ok(Date.now() - started >= 20 * 0.8 + 40 * 0.8 + 80 * 0.8 - 5, 'waited with growing delays');
});

test('keeps serving the current certificate while renewal fails', async (t) => {
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const signer = new InProcessSigner(ca);
  const m = new CertManager({ signer, trustBundle: ca.trustBundle(), lifetimeSeconds: 4, backoff: { initialMs: 50, maxMs: 50 } });
  t.after(() => m.close());
  const first = await m.get(web);
  signer.failNext = 1000;
  await new Promise<void>((resolve) => m.once('renewalFailed', () => resolve()));
  assert.equal(m.current(web)?.certChain[0], first.certChain[0]);
  assert.equal((await m.get(web)).certChain[0], first.certChain[0]);
  assert.equal(m.list()[0]?.state, 'renewing');
});

test('a refused identity fails at once and is not retried', async (t) => {
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const signer = new InProcessSigner(ca);
  signer.refuse.add(web);
  const m = new CertManager({ signer, trustBundle: ca.trustBundle() });
  t.after(() => m.close());
  await assert.rejects(m.get(web), CertificateRefusedError);
  assert.equal(signer.calls, 1);
});

test('a trust bundle change renews every certificate and the new certificates verify in HBONE handshakes', async (t) => {
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const signer = new InProcessSigner(ca);
  const m = new CertManager({ signer, trustBundle: ca.trustBundle() });
  t.after(() => m.close());
  const api = id('default', 'api');
  const webOld = await m.get(web);
  await m.get(api);
  const rotatedIds = new Set<string>();
  const allRotated = new Promise<void>((resolve) =>
    m.on('rotated', (info) => {
      rotatedIds.add(info.identity);
      if (rotatedIds.size === 2) resolve();
    }),
  );
  ca.rotateTo(await CertificateAuthority.generateRoot({ trustDomain: TD }));
  m.setTrustBundle(ca.trustBundle());
  await allRotated;
  const webNew = await m.get(web);
  assert.notEqual(webNew.certChain[0], webOld.certChain[0]);
  assert.equal(webNew.trustBundle.length, 2);

  const srv = await EchoServer.start(await m.get(api));
  t.after(() => srv.close());
  const conn = await connectHbone(srv.port, await m.get(web), api);
  assert.equal(conn.serverId, api);
  conn.socket.destroy();
  // A server with per-connection identity selection (SNI) built by the manager also works.
  const sctx = await m.secureContext(api);
  assert.equal(sctx, await m.secureContext(api), 'SecureContexts are cached per certificate');
});

test('forget stops renewing an identity', async (t) => {
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const signer = new InProcessSigner(ca);
  const m = new CertManager({ signer, trustBundle: ca.trustBundle(), lifetimeSeconds: 2 });
  t.after(() => m.close());
  await m.get(web);
  m.forget(web);
  // Past the 1 s renewal time of a 2 s certificate: a forgotten identity is not renewed.
  await holds('a forgotten identity is never renewed', () => signer.calls === 1, 1_300, { intervalMs: 50 });
  assert.deepEqual(m.list(), []);
});

test('an SNI-selected server identity verifies clients against that identity\'s trust bundle', async (t) => {
  const { createServer, connect } = await import('node:tls');
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const other = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const m = new CertManager({ signer: new InProcessSigner(ca), trustBundle: ca.trustBundle() });
  const stranger = new CertManager({ signer: new InProcessSigner(other), trustBundle: [...ca.trustBundle(), ...other.trustBundle()] });
  t.after(() => m.close());
  t.after(() => stranger.close());
  const api = id('default', 'api');
  const server = createServer(m.serverOptions((name) => (name === 'api.default.weft' ? api : undefined)));
  server.on('secureConnection', (s) => s.end('ok'));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => server.close());
  const port = (server.address() as { port: number }).port;
  const attempt = async (from: CertManager, servername: string) => new Promise<string>((resolve) => {
    void from.clientOptions(web, api).then((opts) => {
      const s = connect({ host: '127.0.0.1', port, servername, ...opts });
      let got = '';
      s.on('data', (d: Buffer) => (got += d.toString()));
      s.on('end', () => resolve(got || 'closed'));
      s.on('error', (e: Error & { code?: string }) => resolve(`error:${e.code ?? e.message}`));
    });
  });
  assert.equal(await attempt(m, 'api.default.weft'), 'ok');
  assert.notEqual(await attempt(stranger, 'api.default.weft'), 'ok', 'a client from another CA is refused by the SNI context');
  assert.match(await attempt(m, 'unknown.name'), /^error:|closed/);
});

test('a CA that comes back shortly before the certificate expires gets it renewed before expiry; list() shows the failing renewal meanwhile', async (t) => {
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const signer = new InProcessSigner(ca);
  // A first retry 2 s after the first failure would land after expiry (the certificate has 1-1.5 s
  // left when its renewal falls due): only the shortened waits near expiry can make it in time.
  const m = new CertManager({ signer, trustBundle: ca.trustBundle(), lifetimeSeconds: 3, backoff: { initialMs: 2_000, maxMs: 30_000 } });
  t.after(() => m.close());
  await m.get(web);
  const [first] = m.list();
  assert.ok(first);
  assert.equal(first.renewalFailures, 0);
  // Two failures: at 1-1.5 s left, then at half of that; the third attempt, at three quarters, works.
  signer.failNext = 2;
  const seen: Array<{ at: number; retry: RenewalRetry; info: CertificateInfo }> = [];
  m.on('renewalFailed', (_id, _err, retry) => seen.push({ at: Date.now(), retry, info: m.list()[0]! }));
  const rotated = await new Promise<{ at: number; previous: CertificateInfo | undefined }>((resolve) =>
    m.once('rotated', (_info, previous) => resolve({ at: Date.now(), previous })));
  const notAfter = first.notAfter.getTime();
  assert.equal(seen.length, 2);
  assert.ok(rotated.at < notAfter, `renewed ${notAfter - rotated.at} ms before the old certificate expired`);
  seen.forEach(({ at, retry, info }, i) => {
    assert.equal(retry.failures, i + 1);
    assert.equal(retry.expiresAt?.getTime(), notAfter);
    assert.ok(retry.retryInMs !== undefined && retry.retryInMs <= Math.max((notAfter - at) / 2, RENEWAL_BACKOFF_DEFAULTS.minMs) + 5,
      `attempt ${i + 1}: waits ${retry.retryInMs} ms with ${notAfter - at} ms left`);
    assert.equal(info.state, 'renewing');
    assert.equal(info.serial, first.serial, 'the held certificate is still the one served');
    assert.equal(info.renewalFailures, i + 1);
    assert.match(info.lastRenewalError ?? '', /unavailable/);
    assert.ok(info.nextRenewalAttempt && Math.abs(info.nextRenewalAttempt.getTime() - (at + retry.retryInMs!)) < 20);
  });
  const [now] = m.list();
  assert.equal(now?.renewalFailures, 0);
  assert.equal(now?.lastRenewalError, undefined);
  assert.equal(now?.nextRenewalAttempt, undefined);
  assert.equal(now?.state, 'valid');
});

test('agent metrics count renewal failures by reason and rotations, and certificates by state', async (t) => {
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const signer = new InProcessSigner(ca);
  const m = new CertManager({ signer, trustBundle: ca.trustBundle(), lifetimeSeconds: 2, backoff: { initialMs: 20, maxMs: 20 } });
  t.after(() => m.close());
  const metrics = new AgentMetrics();
  metrics.watchCertificates(m);
  assert.throws(() => metrics.watchCertificates(m), /already/);
  signer.failNext = 2;
  await m.get(web);
  signer.refuse.add(id('default', 'nope'));
  await assert.rejects(m.get(id('default', 'nope')), CertificateRefusedError);
  let text = await metrics.registry.metrics();
  assert.match(text, /^weft_certificate_renewal_failures_total\{reason="WEFT_CA_UNAVAILABLE"\} 2$/m);
  assert.match(text, /^weft_certificate_renewal_failures_total\{reason="WEFT_CA_REFUSED"\} 1$/m);
  assert.match(text, /^weft_certificates\{state="valid"\} 1$/m);
  assert.match(text, /^weft_certificate_rotations_total 0$/m);
  await new Promise<void>((resolve) => m.once('rotated', () => resolve()));
  text = await metrics.registry.metrics();
  assert.match(text, /^weft_certificate_rotations_total 1$/m);
});

test('list() orders by identity in code-unit order (no locale collation: it runs on every config and would load ICU data)', async (t) => {
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const m = new CertManager({ signer: new InProcessSigner(ca), trustBundle: ca.trustBundle() });
  t.after(() => m.close());
  // localeCompare would put 'api' before 'Web' and 'a-b' after 'ab'.
  const ids = [id('default', 'api'), id('default', 'Web'), id('default', 'ab'), id('default', 'a-b')];
  for (const i of ids) await m.get(i);
  assert.deepEqual(m.list().map((c) => c.identity), [...ids].sort());
  assert.deepEqual(m.list().map((c) => c.identity), [id('default', 'Web'), id('default', 'a-b'), id('default', 'ab'), id('default', 'api')]);
});
