// lib/identity/renewal.ts: one identity's certificate lifecycle and the schedule of a failing
// renewal, shared by the agent's CertManager and a proxy's IssuedIdentity (waypoint, east-west
// gateway). The table at the end runs the same cases through both holders.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CertificateAuthority } from '../../lib/identity/ca.ts';
import { CaUnavailableError, CertificateRefusedError } from '../../lib/identity/errors.ts';
import { IssuedIdentity } from '../../lib/identity/issued.ts';
import { AnnouncedSigners, RenewalBackoff, RENEWAL_BACKOFF_DEFAULTS, type RenewalFailure, type RenewalOptions } from '../../lib/identity/renewal.ts';
import type { CertificateSigner, SignResult } from '../../lib/identity/signing.ts';
import { CertManager } from '../../agent/src/certs/index.ts';
import { TD, id, workloadCreds } from './identity-fixtures.ts';
import { holds, until } from '../lab/wait.ts';

test('retry waits near expiry: at most half of the validity left (not below 250 ms), without advancing the backoff, which resumes after expiry where it was', () => {
  const b = new RenewalBackoff({}, () => 0.5);
  // A 6 s certificate renewed at half-life; every attempt fails at once. Time 0 = first failure.
  const expiresAt = 3_000;
  let t = 0;
  const waits: number[] = [];
  while (t < 40_000) {
    const w = b.next(expiresAt - t);
    waits.push(Math.round(w));
    t += w;
  }
  assert.equal(RENEWAL_BACKOFF_DEFAULTS.minMs, 250);
  // 500 and 1000: the backoff; 750, 375: half of what is left; 250, 250: the floor (the second
  // lands after expiry); then 2000, 4000, ... from the step reached before, up to the 30 s cap.
  assert.deepEqual(waits, [500, 1000, 750, 375, 250, 250, 2000, 4000, 8000, 16000, 30000]);
  // The floor never makes a wait longer than the backoff's own.
  const short = new RenewalBackoff({ initialMs: 100 }, () => 0.5);
  assert.equal(short.next(150), 100);
});

test('followTrustBundle reopens the stream after it fails to open or ends, until stopped', async () => {
  const { followTrustBundle } = await import('../../lib/identity/ca-client.ts');
  let opens = 0;
  const seen: string[][] = [];
  const client = {
    async watchTrustBundle(onBundle: (roots: string[]) => void, onEnd: (err: Error) => void): Promise<() => void> {
      opens++;
      if (opens === 1) throw new Error('no connection');
      onBundle([`root-${opens}`]);
      if (opens === 2) setImmediate(() => onEnd(new Error('stream ended')));
      return () => undefined;
    },
  };
  const retries: string[] = [];
  const stop = followTrustBundle(() => client as never, (r) => seen.push(r), { backoff: { initialMs: 5, maxMs: 10 }, onRetry: (e) => retries.push(e.message) });
  const deadline = Date.now() + 2_000;
  while (seen.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  stop();
  assert.deepEqual(seen, [['root-2'], ['root-3']]);
  assert.deepEqual(retries, ['no connection', 'stream ended']);
  // Several retry intervals (5-10 ms) long: a watch still running would have opened again.
  await holds('nothing opened after stop', () => opens === 3, 50);
});

// ---------------------------------------------------------------------------------------------
// One lifecycle, two holders

/** Signs through an in-process CA; fails, refuses, holds its answer, or answers for another identity when told to. */
class TableSigner implements CertificateSigner {
  calls = 0;
  failNext = 0;
  refuseNext = 0;
  /** Answers wait for this promise (the test resolves it). */
  hold: Promise<void> | undefined;
  /** The holder's trust-bundle stream callback: the test announces roots and signing certificates through it. */
  onBundle: ((roots: string[], signer?: string) => void) | undefined;
  /** Answer with a certificate for this identity instead of the one asked for. */
  answerFor: string | undefined;
  /** The roots an answer carries, read when the request arrives (default: the CA's). */
  publish: string[] | undefined;
  readonly ca: CertificateAuthority;
  constructor(ca: CertificateAuthority) {
    this.ca = ca;
  }
  async sign(identity: string, csr: string): Promise<SignResult> {
    this.calls++;
    const trustBundle = this.publish ?? this.ca.trustBundle();
    if (this.hold) await this.hold;
    if (this.failNext > 0) {
      this.failNext--;
      throw new CaUnavailableError('certificate service at table is unavailable (test)');
    }
    if (this.refuseNext > 0) {
      this.refuseNext--;
      throw new CertificateRefusedError('the CA refused the request (test)');
    }
    if (this.answerFor) return { certChain: [...(await workloadCreds(this.ca, this.answerFor)).certChain], trustBundle };
    return { certChain: this.ca.signCsr(csr, identity).certChain, trustBundle };
  }
  setTrustBundle(): void {}
  watchTrustBundle(onBundle: (roots: string[], signer?: string) => void): () => void {
    this.onBundle = onBundle;
    return () => { this.onBundle = undefined; };
  }
  close(): void {}
}

/** What the table asks of a holder of one identity. */
interface Holder {
  /** Gets the first certificate (CertManager.get, IssuedIdentity.start). */
  start(): Promise<unknown>;
  serial(): string | undefined;
  state(): string | undefined;
  roots(): readonly string[];
  setRoots(roots: string[]): void;
  rotations(): number;
  failures(): Array<{ code: string; retry: RenewalFailure }>;
  close(): void;
}

const WEB = id('default', 'web');

function agentHolder(signer: TableSigner, opts: RenewalOptions): Holder {
  const m = new CertManager({ signer, trustBundle: signer.ca.trustBundle(), ...opts });
  let rotations = 0;
  const failures: Array<{ code: string; retry: RenewalFailure }> = [];
  m.on('rotated', () => rotations++);
  m.on('renewalFailed', (_id, e, retry) => failures.push({ code: e.code, retry }));
  return {
    start: () => m.get(WEB), serial: () => m.list()[0]?.serial, state: () => m.list()[0]?.state, roots: () => m.trustBundle(),
    setRoots: (r) => m.setTrustBundle(r), rotations: () => rotations, failures: () => failures, close: () => m.close(),
  };
}

function proxyHolder(signer: TableSigner, opts: RenewalOptions): Holder {
  const p = new IssuedIdentity({ spiffeId: WEB, signer, trustBundle: signer.ca.trustBundle(), ...opts });
  let rotations = 0;
  let started = false;
  const failures: Array<{ code: string; retry: RenewalFailure }> = [];
  p.on('rotated', () => rotations++);
  p.on('renewalFailed', (e, retry) => failures.push({ code: e.code, retry }));
  return {
    start: () => p.start().then(() => { started = true; }), serial: () => (started ? p.view().serial : undefined), state: () => (started ? p.view().state : undefined),
    roots: () => p.trustBundle(), setRoots: (r) => p.setTrustBundle(r), rotations: () => rotations, failures: () => failures, close: () => p.close(),
  };
}

const holders = [
  { name: "the agent's CertManager", make: agentHolder, retriesRefusal: false },
  { name: "a proxy's IssuedIdentity", make: proxyHolder, retriesRefusal: true },
];

async function otherRoot(): Promise<string> {
  return (await CertificateAuthority.generateRoot({ trustDomain: TD, organization: 'other' })).trustBundle()[0]!;
}

for (const h of holders) {
  test(`${h.name}: new roots wake a retry waiting for its turn (the roots it failed under may be why it failed)`, async (t) => {
    const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const signer = new TableSigner(ca);
    signer.failNext = 1;
    const holder = h.make(signer, { backoff: { initialMs: 20_000, maxMs: 20_000 } });
    t.after(() => holder.close());
    let done = false;
    const first = holder.start().then(() => { done = true; });
    await until('the first attempt fails', () => holder.failures().length === 1, 5_000);
    assert.ok((holder.failures()[0]!.retry.retryInMs ?? 0) > 10_000, 'the next attempt is far away');
    holder.setRoots([...ca.trustBundle(), await otherRoot()]);
    await until('a certificate, long before the 20 s retry', () => done, 3_000);
    await first;
    assert.equal(signer.calls, 2);
    assert.equal(holder.state(), 'valid');
  });

  test(`${h.name}: new roots while a signing is on its way renew once more after it, and its answer's older roots are not applied`, async (t) => {
    const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const signer = new TableSigner(ca);
    const holder = h.make(signer, {});
    t.after(() => holder.close());
    await holder.start();
    const first = holder.serial();
    const [x, y] = [await otherRoot(), await otherRoot()];
    // The answer to the renewal below carries the roots as they were when it was asked for.
    signer.publish = ca.trustBundle();
    let answer!: () => void;
    signer.hold = new Promise((r) => { answer = r; });
    holder.setRoots([...ca.trustBundle(), x]);
    await until('the renewal is on its way', () => signer.calls === 2, 5_000);
    signer.publish = [...ca.trustBundle(), x, y];
    holder.setRoots([...ca.trustBundle(), x, y]);
    // Only now does the answer to the renewal on its way arrive.
    signer.hold = undefined;
    answer();
    await until('a second renewal after the one on its way', () => holder.rotations() === 2, 5_000);
    assert.deepEqual(holder.roots(), [...ca.trustBundle(), x, y], 'the roots announced last, not those of the older answer');
    assert.notEqual(holder.serial(), first);
    await holds('no renewal beyond those two', () => signer.calls === 3 && holder.rotations() === 2, 300);
  });

  test(`${h.name}: a certificate for another identity is refused (WEFT_CA_REFUSED)${h.retriesRefusal ? ' and retried: nobody else asks for a proxy\'s own identity' : ', not retried: the next connection asks again'}`, async (t) => {
    const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const signer = new TableSigner(ca);
    signer.answerFor = id('default', 'admin');
    const holder = h.make(signer, { backoff: { initialMs: 20, maxMs: 20 } });
    t.after(() => holder.close());
    const first = holder.start();
    first.catch(() => undefined); // awaited below
    await until('the refusal is reported', () => holder.failures().length >= 1, 5_000);
    const [refused] = holder.failures();
    assert.equal(refused!.code, 'WEFT_CA_REFUSED');
    assert.equal(holder.serial(), undefined, 'the foreign certificate is not held');
    if (h.retriesRefusal) {
      assert.ok(refused!.retry.retryInMs !== undefined);
      await until('a second refused attempt', () => holder.failures().length >= 2, 5_000);
      signer.answerFor = undefined;
      await first;
      assert.equal(holder.state(), 'valid');
    } else {
      assert.equal(refused!.retry.retryInMs, undefined);
      await assert.rejects(first, (e: Error & { code?: string }) => e.code === 'WEFT_CA_REFUSED');
      await holds('no attempt after the refusal', () => signer.calls === 1, 100);
    }
  });

  test(`${h.name}: a refused renewal is retried while the certificate held is still valid, with backoff within its validity (nobody else would ask: it is served meanwhile)`, async (t) => {
    const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const signer = new TableSigner(ca);
    // Renewed after ~0.4 s of the CA's 24 h; the certificate stays valid throughout.
    const holder = h.make(signer, { renewFraction: 0.000005, backoff: { initialMs: 20, maxMs: 20 } });
    t.after(() => holder.close());
    await holder.start();
    const first = holder.serial();
    signer.refuseNext = 1;
    await until('the scheduled renewal is refused', () => holder.failures().length === 1, 5_000);
    const [refused] = holder.failures();
    assert.equal(refused!.code, 'WEFT_CA_REFUSED');
    assert.ok(refused!.retry.retryInMs !== undefined && refused!.retry.retryInMs <= 12 * 3_600_000, 'a next attempt, within half of the validity left');
    assert.ok(refused!.retry.expiresAt, 'the certificate still held');
    await until('the retry installs a certificate', () => holder.rotations() >= 1, 5_000);
    assert.notEqual(holder.serial(), first);
    assert.equal(holder.state(), 'valid');
    assert.equal(holder.failures().length, 1, 'the refusal reported once');
  });

  test(`${h.name}: a signing certificate announced that did not issue the certificate held renews it, once per announcement (a new intermediate under the same root, Istio's plug-in CA rotated; proto/weft/ca.proto WatchTrustBundle)`, async (t) => {
    const root = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const intermediate = async (): Promise<CertificateAuthority> => {
      const i = await root.issueIntermediate('cluster-a');
      return CertificateAuthority.fromPem({ certPem: i.certPem, keyPem: i.keyPem, rootsPem: i.rootPem }, { trustDomain: TD });
    };
    const ca = await intermediate();
    const signer = new TableSigner(ca);
    const holder = h.make(signer, {});
    t.after(() => holder.close());
    await holder.start();
    const first = holder.serial();
    // The signer that issued the certificate held: nothing.
    signer.onBundle!(ca.trustBundle(), ca.signingCertificate());
    ca.rotateTo(await intermediate());
    assert.deepEqual(ca.trustBundle(), root.trustBundle(), 'the same root: the roots alone say nothing');
    signer.onBundle!(ca.trustBundle(), ca.signingCertificate());
    await until('the renewal under the new intermediate', () => holder.rotations() === 1, 5_000);
    assert.notEqual(holder.serial(), first);
    // The same announcement again: nothing. A CA still signing with another (replicas on two
    // intermediates for a while) is asked once per announcement, not in a loop.
    signer.onBundle!(ca.trustBundle(), ca.signingCertificate());
    const other = await intermediate();
    signer.onBundle!(ca.trustBundle(), other.signingCertificate());
    await until('one renewal for the announcement', () => holder.rotations() === 2, 5_000);
    signer.onBundle!(ca.trustBundle(), other.signingCertificate());
    // A barrier: a third signer renews once more, and the signing calls show nothing came between.
    signer.onBundle!(ca.trustBundle(), (await intermediate()).signingCertificate());
    await until('one renewal for the third signer', () => holder.rotations() === 3, 5_000);
    assert.equal(signer.calls, 4, 'one signing request per new announcement, none for a repeated one');
    assert.deepEqual(holder.roots(), root.trustBundle());
  });

  test(`${h.name}: one announcement of new roots and a signing certificate that did not issue the certificate held renews once (IdentityRenewal.announced)`, async (t) => {
    const root = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const intermediate = async (): Promise<CertificateAuthority> => {
      const i = await root.issueIntermediate('cluster-a');
      return CertificateAuthority.fromPem({ certPem: i.certPem, keyPem: i.keyPem, rootsPem: i.rootPem }, { trustDomain: TD });
    };
    const ca = await intermediate();
    const signer = new TableSigner(ca);
    const holder = h.make(signer, {});
    t.after(() => holder.close());
    await holder.start();
    const roots = [...ca.trustBundle(), await otherRoot()];
    signer.publish = roots;
    ca.rotateTo(await intermediate());
    signer.onBundle!(roots, ca.signingCertificate());
    await until('the renewal', () => holder.rotations() === 1, 5_000);
    // A barrier: another signer renews once more, and the signing calls show nothing came between.
    ca.rotateTo(await intermediate());
    signer.onBundle!(roots, ca.signingCertificate());
    await until('the renewal for the next signer', () => holder.rotations() === 2, 5_000);
    assert.equal(signer.calls, 3, 'one signing request per announcement');
    assert.deepEqual(holder.roots(), roots);
  });

  test(`${h.name}: renewal time, expiry and the state shown follow the injected clock`, async (t) => {
    const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const signer = new TableSigner(ca);
    let offsetMs = 0;
    const holder = h.make(signer, { clock: () => Date.now() + offsetMs, renewFraction: 0.5 });
    t.after(() => holder.close());
    await holder.start();
    assert.equal(holder.state(), 'valid');
    offsetMs = 25 * 3_600_000; // past the CA's 24 h
    assert.equal(holder.state(), 'expired');
  });

  test(`${h.name}: stopping ends a retry waiting for its turn; nothing is signed after it`, async (t) => {
    const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const signer = new TableSigner(ca);
    signer.failNext = 1;
    const holder = h.make(signer, { backoff: { initialMs: 20_000, maxMs: 20_000 } });
    t.after(() => holder.close());
    let settled = false;
    const first = holder.start().finally(() => { settled = true; });
    first.catch(() => undefined);
    await until('the first attempt fails', () => holder.failures().length === 1, 5_000);
    holder.close();
    await until('the first certificate is given up at once, not after the 20 s wait', () => settled, 2_000);
    await assert.rejects(first, CaUnavailableError);
    assert.equal(signer.calls, 1);
  });
}

test('AnnouncedSigners: a certificate is due once per newly announced signer that did not issue it (the one rule of IdentityRenewal.announced and the agent\'s node certificate)', async () => {
  const root = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const intermediate = async (): Promise<CertificateAuthority> => {
    const i = await root.issueIntermediate('cluster-a');
    return CertificateAuthority.fromPem({ certPem: i.certPem, keyPem: i.keyPem, rootsPem: i.rootPem }, { trustDomain: TD });
  };
  const [a, b, c] = [await intermediate(), await intermediate(), await intermediate()];
  const leaf = (await workloadCreds(a, id('shop', 'web'))).certChain[0]!;
  const signers = new AnnouncedSigners();
  assert.equal(signers.due(undefined, leaf), false, 'no signer named');
  assert.equal(signers.due(a.signingCertificate(), leaf), false, 'its own issuer');
  assert.equal(signers.due(b.signingCertificate(), leaf), true, 'another signer');
  assert.equal(signers.due(b.signingCertificate(), leaf), false, 'the same announcement again');
  assert.equal(signers.due(c.signingCertificate(), undefined), false, 'nothing held');
  assert.equal(signers.due(c.signingCertificate(), leaf), false, 'announced already, while nothing was held');
  assert.equal(signers.due(a.signingCertificate(), 'not a certificate'), false, 'an unreadable certificate: nothing to renew for');
});
