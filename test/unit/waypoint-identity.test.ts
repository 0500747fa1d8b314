// The waypoint's issued identity: the renewal retry schedule (backoff with jitter, never past half of
// the validity left), failures counted and logged with the next attempt, renewal when the roots
// change, and a whole root rotation against an in-process controller (certificate service, config
// stream with client certificates required, restarts) with HBONE handshakes along the way.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import * as grpc from '@grpc/grpc-js';
import { Registry } from 'prom-client';
import { describe, it } from 'node:test';
import { compile, emptyInputs } from '../../controller/src/compile.ts';
import { ConfigServer, addConfigStreamService } from '../../controller/src/xds/server.ts';
import { spiffeStreamAuthorizer } from '../../controller/src/xds/authz.ts';
import { StaticTokenAuthenticator, addCertificateService, createControllerCredentials, type ControllerCredentials } from '../../controller/src/ca/index.ts';
import { HbonePool } from '../../lib/hbone/index.ts';
import {
  CaUnavailableError, CertificateAuthority, RenewalBackoff, createCsr, generateKeyPair, privateKeyToPem, tlsMaterial, type TlsCredentials,
} from '../../lib/identity/index.ts';
import type { Logger } from '../../lib/log.ts';
import { CertificateFileIdentityError, IssuedIdentity, staticIdentity, type CertificateView, type RenewalRetry } from '../../lib/identity/index.ts';
import type { CertificateSigner } from '../../lib/identity/signing.ts';
import { staticWaypointIdentity, watchIdentity } from '../../waypoint/src/identity.ts';
import { FlagError } from '../../waypoint/src/errors.ts';
import { parseFlags, runWaypoint, type RunningWaypoint } from '../../waypoint/src/main.ts';
import { echo, startHttpBackend } from '../../waypoint/testing/harness.ts';
import { get, service, slice } from './waypoint-process-fixtures.ts';

const TD = 'cluster.local';
const WAYPOINT = `spiffe://${TD}/ns/shop/sa/waypoint`;
const TESTER = `spiffe://${TD}/ns/shop/sa/tester`;
const noJitter = (): number => 0.5;

describe('renewal retry schedule (lib/identity/renewal.ts)', () => {
  it('doubles from 500 ms to the 30 s cap', () => {
    const b = new RenewalBackoff({}, noJitter);
    assert.deepEqual(Array.from({ length: 9 }, () => b.next()), [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000]);
    b.reset();
    assert.equal(b.next(), 500, 'reset starts over');
  });

  it('spreads each wait by ±20 %', () => {
    assert.equal(new RenewalBackoff({}, () => 0).next(), 400);
    assert.ok(Math.abs(new RenewalBackoff({}, () => 0.999_999).next() - 600) < 0.01);
    const waits = Array.from({ length: 200 }, () => new RenewalBackoff().next());
    assert.ok(waits.every((w) => w >= 400 && w <= 600), 'always within the spread');
    assert.ok(new Set(waits).size > 100, 'and actually random');
  });

  it('never waits past half of the validity left, down to 250 ms, without advancing the backoff', () => {
    const b = new RenewalBackoff({}, noJitter);
    for (let i = 0; i < 6; i++) b.next(); // step is now 30 s
    assert.equal(b.next(10 * 60_000), 30_000, 'plenty of validity left: the backoff rules');
    assert.equal(b.next(20_000), 10_000, 'half of the 20 s left');
    assert.equal(b.next(2_000), 1_000);
    assert.equal(b.next(300), 250, 'not below 250 ms');
    assert.equal(b.stepMs, 30_000, 'shortened waits leave the step where it was');
    const early = new RenewalBackoff({}, noJitter);
    assert.equal(early.next(2_000), 500, 'a wait already shorter than half the validity left is kept');
    assert.equal(early.stepMs, 1000);
    assert.equal(early.next(-5), 1000, 'expired: the backoff resumes');
    assert.equal(early.next(undefined), 2000, 'no certificate: plain backoff');
  });

  it('refuses nonsense options', () => {
    assert.throws(() => new RenewalBackoff({ initialMs: 0 }), RangeError);
    assert.throws(() => new RenewalBackoff({ initialMs: 10, maxMs: 5 }), RangeError);
    assert.throws(() => new RenewalBackoff({ jitter: 1 }), RangeError);
  });
});

/** A signer backed by an in-process CA that fails while `failing` is set. */
class FakeSigner implements CertificateSigner {
  failing = false;
  calls = 0;
  roots: readonly string[] = [];
  onBundle: ((roots: string[], signer?: string) => void) | undefined;
  readonly ca: CertificateAuthority;
  readonly lifetimeMs: number | undefined;
  constructor(ca: CertificateAuthority, lifetimeMs?: number) {
    this.ca = ca;
    this.lifetimeMs = lifetimeMs;
  }
  async sign(identity: string, csr: string): Promise<{ certChain: string[]; trustBundle: string[] }> {
    this.calls++;
    if (this.failing) throw new CaUnavailableError('certificate service at fake is unavailable (UNAVAILABLE: no connection)');
    const issued = this.ca.signCsr(csr, identity, this.lifetimeMs !== undefined ? { lifetimeMs: this.lifetimeMs } : {});
    return { certChain: issued.certChain, trustBundle: this.ca.trustBundle() };
  }
  setTrustBundle(roots: readonly string[]): void {
    this.roots = roots;
  }
  watchTrustBundle(onBundle: (roots: string[], signer?: string) => void): () => void {
    this.onBundle = onBundle;
    return () => { this.onBundle = undefined; };
  }
  close(): void {}
}

function capturingLogger(): Logger & { lines: Array<{ level: string; msg: string; fields: Record<string, unknown> }> } {
  const lines: Array<{ level: string; msg: string; fields: Record<string, unknown> }> = [];
  const at = (level: string) => (msg: string, fields: Record<string, unknown> = {}) => { lines.push({ level, msg, fields }); };
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

async function until(what: string, cond: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await delay(10);
  }
}

describe('waypoint issued identity', () => {
  it('retries the first certificate with backoff, logs each failure with the next attempt and counts it', async () => {
    const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const signer = new FakeSigner(ca);
    signer.failing = true;
    const id = new IssuedIdentity({ spiffeId: WAYPOINT, signer, trustBundle: ca.trustBundle(), backoff: { initialMs: 20, maxMs: 100 }, random: noJitter });
    const registry = new Registry();
    const log = capturingLogger();
    watchIdentity(id, registry, log);
    const retries: RenewalRetry[] = [];
    id.on('renewalFailed', (_e, r) => {
      retries.push(r);
      if (r.failures === 6) signer.failing = false;
    });
    const started = id.start();
    await started;
    assert.deepEqual(retries.map((r) => r.retryInMs), [20, 40, 80, 100, 100, 100]);
    assert.deepEqual(retries.map((r) => r.failures), [1, 2, 3, 4, 5, 6]);
    assert.equal(retries[0]!.expiresAt, undefined, 'no certificate held yet');
    assert.equal(signer.calls, 7);
    const failed = log.lines.filter((l) => l.msg === 'waypoint certificate renewal failed');
    assert.equal(failed.length, 6);
    assert.equal(failed[2]!.level, 'warn');
    assert.equal(failed[2]!.fields.retryInMs, 80);
    assert.equal(failed[2]!.fields.code, 'WEFT_CA_UNAVAILABLE');
    assert.match(String(failed[2]!.fields.nextAttempt), /^\d{4}-\d\d-\d\dT/);
    assert.match(await registry.metrics(), /^weft_waypoint_certificate_renewal_failures_total\{reason="WEFT_CA_UNAVAILABLE"\} 6$/m);
    const v = id.view();
    assert.equal(v.state, 'valid');
    assert.equal(v.renewalFailures, 0);
    assert.equal(v.issued, 1);
    id.close();
  });

  it('near expiry retries at most half of the validity left, then resumes the backoff where it was', async () => {
    const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
    // 3 s certificates (the CA issues whole seconds), renewed after half; then the CA goes away.
    const signer = new FakeSigner(ca, 3_000);
    const id = new IssuedIdentity({ spiffeId: WAYPOINT, signer, trustBundle: ca.trustBundle(), backoff: { initialMs: 2_500, maxMs: 10_000, minMs: 100 }, random: noJitter });
    await id.start();
    const notAfter = Date.parse(id.view().notAfter);
    signer.failing = true;
    const seen: Array<{ at: number; retry: RenewalRetry; view: CertificateView }> = [];
    id.on('renewalFailed', (_e, retry) => seen.push({ at: Date.now(), retry, view: id.view() }));
    await until('an attempt after expiry', () => seen.some((s) => s.at > notAfter), 8_000);
    id.close();
    const before = seen.filter((s) => s.at < notAfter);
    const after = seen.find((s) => s.at >= notAfter)!;
    console.log(`# near expiry: failures at ${seen.map((s) => s.at - notAfter).join(', ')} ms from expiry; waits ${seen.map((s) => Math.round(s.retry.retryInMs)).join(', ')} ms`);
    assert.ok(before.length >= 3, `several attempts before expiry, though the backoff starts at 2.5 s (${before.length})`);
    for (const s of before) {
      const left = notAfter - s.at;
      assert.ok(s.retry.retryInMs <= Math.max(left / 2, 100) + 5, `wait ${s.retry.retryInMs} ms with ${left} ms left`);
      assert.equal(s.retry.expiresAt?.getTime(), notAfter);
      assert.equal(s.view.state, 'renewing');
      assert.equal(s.view.renewalFailures, s.retry.failures);
      assert.ok(s.view.nextRenewalAttempt && s.view.lastRenewalError);
    }
    assert.equal(after.retry.retryInMs, 2_500, 'after expiry: the first backoff step, not its cap');
    assert.equal(after.view.state, 'expired');
  });

  it('follows new roots: trusts them at once and renews under them', async () => {
    const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const signer = new FakeSigner(ca);
    const id = new IssuedIdentity({ spiffeId: WAYPOINT, signer, trustBundle: ca.trustBundle() });
    await id.start();
    const first = id.view().serial;
    const events: string[] = [];
    id.on('trustBundleChanged', (roots) => events.push(`roots ${roots.length}`));
    id.on('rotated', () => events.push('rotated'));
    ca.rotateTo(await CertificateAuthority.generateRoot({ trustDomain: TD, organization: 'root-b' }));
    signer.onBundle!(ca.trustBundle());
    assert.equal(id.current().trustBundle.length, 2, 'the new roots are trusted before the renewal completes');
    assert.deepEqual(signer.roots, ca.trustBundle(), 'and used to verify the CA');
    await until('the renewal', () => events.includes('rotated'));
    assert.deepEqual(events, ['roots 2', 'rotated']);
    assert.notEqual(id.view().serial, first);
    assert.match(id.view().issuer, /O=root-b/);
    signer.onBundle!(ca.trustBundle());
    await delay(50);
    assert.deepEqual(events, ['roots 2', 'rotated'], 'the same roots again change nothing');
    id.close();
  });

  it('follows a new intermediate under the same root (Istio plug-in CA rotated): a signer announced that did not issue the certificate held renews it, once per announcement', async () => {
    const root = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const intermediate = async (name: string) => {
      const i = await root.issueIntermediate(name);
      return CertificateAuthority.fromPem({ certPem: i.certPem, keyPem: i.keyPem, rootsPem: i.rootPem }, { trustDomain: TD });
    };
    const ca = await intermediate('cluster-a');
    const signer = new FakeSigner(ca);
    const id = new IssuedIdentity({ spiffeId: WAYPOINT, signer, trustBundle: ca.trustBundle() });
    await id.start();
    const rotated: string[] = [];
    id.on('rotated', () => rotated.push(id.view().serial));
    id.on('trustBundleChanged', () => assert.fail('the roots did not change'));
    signer.onBundle!(ca.trustBundle(), ca.signingCertificate());
    const calls = signer.calls;
    ca.rotateTo(await intermediate('cluster-a'));
    assert.deepEqual(ca.trustBundle(), root.trustBundle(), 'the same root: the roots alone say nothing');
    signer.onBundle!(ca.trustBundle(), ca.signingCertificate());
    await until('the renewal under the new intermediate', () => rotated.length === 1);
    assert.equal(id.current().certChain[1], ca.signingCertificate(), 'the certificate held is the new intermediate\'s');
    // The same announcement again, and the announcement of the signer that issued it: nothing.
    signer.onBundle!(ca.trustBundle(), ca.signingCertificate());
    signer.onBundle!(ca.trustBundle());
    // A CA still signing with another (replicas on two intermediates for a while) is asked once per announcement, not in a loop.
    const other = await intermediate('cluster-a');
    signer.onBundle!(ca.trustBundle(), other.signingCertificate());
    await until('one renewal for the announcement', () => rotated.length === 2);
    signer.onBundle!(ca.trustBundle(), other.signingCertificate());
    // A barrier: a third signer renews once more, and the signing calls show nothing came between.
    signer.onBundle!(ca.trustBundle(), (await intermediate('cluster-a')).signingCertificate());
    await until('one renewal for the third signer', () => rotated.length === 3);
    assert.equal(signer.calls, calls + 3, 'one signing request per new announcement, none for a repeated one');
    id.close();
  });
});

describe('--cert-lifetime', () => {
  it('takes whole seconds up to the CA\'s 7-day maximum, only for an issued identity', () => {
    const base = ['--namespace', 'shop', '--name', 'waypoint', '--controller', 'c:1'];
    assert.equal(parseFlags(base, {}).certLifetimeSeconds, 0, 'default: the CA\'s lifetime');
    assert.equal(parseFlags([...base, '--cert-lifetime', '10'], {}).certLifetimeSeconds, 10);
    for (const bad of ['0', '1.5', '10s', '604801']) {
      assert.throws(() => parseFlags([...base, `--cert-lifetime=${bad}`], {}), /^FlagError: --cert-lifetime: ".*" is not a whole number of seconds from 1 to 604800$/m, bad);
    }
    assert.throws(() => parseFlags([...base, '--cert-lifetime', '10', '--cert-file', 'a', '--key-file', 'b', '--ca-file', 'c'], {}), /--cert-lifetime applies to a certificate from the controller/);
  });
});

// ---------------------------------------------------------------------------------------------
// Root rotation against an in-process controller

async function adminJson<T>(port: number, path: string): Promise<T> {
  return (await fetch(`http://127.0.0.1:${port}${path}`)).json() as Promise<T>;
}

async function creds(ca: CertificateAuthority, id: string, trustBundle: string[]): Promise<TlsCredentials> {
  const { privateKey } = await generateKeyPair();
  return { key: privateKeyToPem(privateKey), certChain: ca.signCsr(createCsr(id, privateKey), id).certChain, trustBundle };
}

describe('waypoint through a root rotation (in-process controller)', () => {
  it('trusts both roots, moves to a certificate from the new root, drops the old root and keeps its config stream across controller restarts', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'weft-waypoint-rotation-'));
    const ca = await CertificateAuthority.generateRoot({ trustDomain: TD, organization: 'root-a' });
    const rootA = ca.trustBundle();
    const token = 'node-a-bootstrap-token-0123456789';
    await writeFile(join(dir, 'token'), token);
    await writeFile(join(dir, 'roots.pem'), rootA.join(''));
    const controllerId = `spiffe://${TD}/ns/weft-system/sa/weft-controller`;
    // Client certificates required on the config stream, as with --require-client-identity.
    const configServer = new ConfigServer({ authorize: spiffeStreamAuthorizer(TD, ca) });
    let server: grpc.Server | undefined;
    let controllerCreds: ControllerCredentials | undefined;
    let port = 0;
    const startController = async (): Promise<void> => {
      controllerCreds = await createControllerCredentials(ca, { identity: controllerId, ipAddresses: ['127.0.0.1'], dnsNames: ['weft-controller'] });
      server = new grpc.Server();
      addConfigStreamService(server, { configServer });
      addCertificateService(server, {
        ca, authenticator: new StaticTokenAuthenticator({ 'node-a': token }),
        pods: { identitiesOnNode: (node) => new Set(node === 'node-a' ? [WAYPOINT] : []) }, log: () => {},
      });
      port = await new Promise<number>((res, rej) => server!.bindAsync(`127.0.0.1:${port}`, controllerCreds!.credentials, (e, p) => (e ? rej(e) : res(p))));
    };
    const stopController = (): void => {
      server?.forceShutdown();
      controllerCreds?.close();
    };
    const b = await startHttpBackend(echo('v1'));
    const inputs = (denyPrivate: boolean) => {
      const i = emptyInputs();
      i.namespaces.push({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'shop', labels: { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'waypoint' } } });
      i.services.push(service('reviews', '10.96.0.10'));
      i.endpointSlices.push(slice('reviews', b.port));
      i.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'waypoint', namespace: 'shop' }, spec: {} });
      if (denyPrivate) {
        i.authorizationPolicies.push({
          apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'no-private', namespace: 'shop' },
          spec: { targetRefs: [{ kind: 'Service', group: '', name: 'reviews' }], action: 'DENY', rules: [{ to: [{ operation: { paths: ['/private'] } }] }] },
        });
      }
      return compile(i).model;
    };
    configServer.publish(inputs(false));
    await startController();
    let wp: RunningWaypoint | undefined;
    const pool = new HbonePool();
    const log = capturingLogger();
    try {
      wp = await runWaypoint(parseFlags([
        '--namespace', 'shop', '--name', 'waypoint', '--controller', `127.0.0.1:${port}`, '--id', 'waypoint-0',
        '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--metrics', '127.0.0.1:0', '--ready', '127.0.0.1:0', '--access-log', 'off',
        '--token-file', join(dir, 'token'), '--ca-bundle', join(dir, 'roots.pem'),
      ], {}), log);
      const w = wp;
      const certs = () => adminJson<CertificateView>(w.admin.port, '/certs');
      const connected = async () => (await adminJson<{ controllerConnected: boolean }>(w.admin.port, '/config_dump')).controllerConnected;
      let n = 0;
      const request = async (tester: TlsCredentials, path = '/'): Promise<number> => {
        const t = await pool.connect({ sourceKey: `${TESTER}#${n++}`, tls: tlsMaterial(tester), dest: { host: '127.0.0.1', port: w.hbone.port }, target: '10.96.0.10:80', expectPeer: WAYPOINT });
        return (await get(t, { path })).status;
      };
      await until('the waypoint is connected', connected);
      const start = await certs();
      assert.equal(start.trustBundle, 1);
      assert.match(start.issuer, /O=root-a/);
      const testerA = await creds(ca, TESTER, rootA);
      assert.equal(await request(testerA), 200);

      // 1+2 (in process the CA does both at once): sign with B, publish A+B.
      ca.rotateTo(await CertificateAuthority.generateRoot({ trustDomain: TD, organization: 'root-b' }));
      const both = ca.trustBundle();
      await until('the waypoint trusts A and B, with a certificate from B', async () => {
        const c = await certs();
        return c.trustBundle === 2 && /O=root-b/.test(c.issuer);
      });
      const testerB = await creds(ca, TESTER, both);
      assert.equal(await request(testerB), 200, 'a peer with a certificate from B is accepted');
      assert.equal(await request({ ...testerA, trustBundle: both }), 200, 'a peer still on A too');
      // The controller restarts (the e2e procedure): the waypoint reconnects with its B certificate.
      stopController();
      await startController();
      await until('the waypoint reconnects', connected);

      // 3: retire A, and restart the controller once more.
      ca.retirePreviousRoots();
      await until('the waypoint trusts B only', async () => (await certs()).trustBundle === 1);
      assert.match((await certs()).roots.join(), /O=root-b/);
      stopController();
      await startController();
      await until('the waypoint reconnects to the controller on B alone', connected);
      configServer.publish(inputs(true));
      await until('a policy published after the rotation is enforced', async () => (await request(testerB, '/private')) === 403);
      assert.equal(await request(testerB), 200);
      await assert.rejects(request({ ...testerA, trustBundle: both }), 'a peer certificate from the retired root is refused');
      const metrics = await (await fetch(`http://127.0.0.1:${w.metrics.port}/metrics`)).text();
      assert.match(metrics, /^weft_waypoint_trust_bundle_roots 1$/m);
      assert.match(metrics, /^weft_waypoint_controller_connected 1$/m);
      assert.ok(log.lines.some((l) => l.msg === 'trust bundle changed: reopening the config stream with the new roots'));
      assert.equal(log.lines.filter((l) => l.msg === 'config rejected').length, 0);
    } finally {
      await pool.close(100);
      await wp?.close();
      configServer.closeAll();
      stopController();
      await b.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('static identity (lib/identity/issued.ts, flag errors in waypoint/src/identity.ts)', () => {
  it('a certificate file of another identity is refused: CertificateFileIdentityError in lib, a FlagError naming --cert-file and --spiffe-id in the waypoint', async () => {
    const ca = await CertificateAuthority.generateRoot({ trustDomain: 'cluster.local' });
    const issued = await ca.issueServingCertificate({ uris: ['spiffe://cluster.local/ns/shop/sa/other'] });
    const dir = await mkdtemp(join(tmpdir(), 'weft-static-id-'));
    try {
      const files = { certFile: join(dir, 'cert.pem'), keyFile: join(dir, 'key.pem'), caFile: join(dir, 'ca.pem') };
      await writeFile(files.certFile, issued.certChain.join(''));
      await writeFile(files.keyFile, issued.keyPem);
      await writeFile(files.caFile, ca.trustBundle().join(''));
      const want = 'spiffe://cluster.local/ns/shop/sa/waypoint';
      await assert.rejects(staticIdentity(files, want), (e: Error) => e instanceof CertificateFileIdentityError && e.code === 'WEFT_CERT_FILE_IDENTITY' && e.found === 'spiffe://cluster.local/ns/shop/sa/other');
      await assert.rejects(staticWaypointIdentity(files, want), (e: Error) => e instanceof FlagError && /--cert-file holds spiffe:\/\/cluster\.local\/ns\/shop\/sa\/other, not the waypoint identity .*\(--spiffe-id\)/.test(e.message));
      const ok = await staticWaypointIdentity(files, 'spiffe://cluster.local/ns/shop/sa/other');
      assert.equal(ok.view().source, 'static');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
