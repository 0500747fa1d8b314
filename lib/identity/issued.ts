// A proxy's own identity (a waypoint's, the east-west gateway's): its certificate and the roots it
// trusts, and how both change.
//
// - Static (`--cert-file`/`--key-file`/`--ca-file`): read once, never rotated.
// - Issued: a key and certificate from the controller's certificate service (token auth), renewed
//   at half of the validity left at issuance, and at once when the trust bundle changes (root
//   rotation) or when the CA announces a signing certificate that did not issue the one held (a
//   new intermediate under the same root: Istio's plug-in CA rotated). The roots and the signing
//   certificate come from the CA's trust-bundle stream (followed for the life of the holder,
//   reconnecting with backoff); the roots also from each signing response.
// - A failed attempt is retried with exponential backoff and jitter (500 ms doubling to 30 s);
//   while a certificate is held no wait outlasts half of its remaining validity
//   (lib/identity/renewal.ts). Each failure is reported ('renewalFailed') with the next attempt.
// - 'rotated' (a new certificate) and 'trustBundleChanged' (new roots) let the holder move its
//   HBONE server, its HBONE client pool and its config stream to the new material.
// Metrics and flag errors are the holder's (waypoint/src/identity.ts, eastwest/src/main.ts).
import { EventEmitter } from 'node:events';
import { readFile } from 'node:fs/promises';
import type { Logger } from '../log.ts';
import { CaUnavailableError, CertificateRefusedError, IdentityError } from './errors.ts';
import { CertificateServiceClient, followTrustBundle } from './ca-client.ts';
import { RenewalBackoff, type RenewalBackoffOptions } from './renewal.ts';
import { createCsr, generateKeyPair, privateKeyToPem } from './csr.ts';
import { issuedBy, parseCertificate, splitPemCertificates } from './x509.ts';
import { spiffeIdOfCertificate, type PeerExpectation, type TlsCredentials } from './tls.ts';
import type { CertificateSigner, HeldCertificate } from './signing.ts';

/** What the admin endpoint `/certs` shows. */
export interface CertificateView {
  identity: string;
  source: 'static' | 'issued';
  serial: string;
  issuer: string;
  notBefore: string;
  notAfter: string;
  /** When the next scheduled renewal is due (issued identities). */
  renewAt?: string;
  state: 'valid' | 'renewing' | 'expired';
  /** Roots trusted for peers (and the controller): how many, and their subjects. */
  trustBundle: number;
  roots: string[];
  /** Certificates received since start, the first included. */
  issued: number;
  /** Failed attempts of the renewal in progress (0 when none failed). */
  renewalFailures: number;
  lastRenewalError?: string;
  nextRenewalAttempt?: string;
}

export interface RenewalRetry {
  /** Failed attempts of this renewal so far, this one included. */
  failures: number;
  /** Wait before the next attempt. */
  retryInMs: number;
  /** The certificate still held meanwhile, if any. */
  expiresAt: Date | undefined;
}

export interface IdentityEvents {
  /** A new certificate is in use (not emitted for the first one). */
  rotated: [creds: TlsCredentials];
  /** The trusted roots changed. */
  trustBundleChanged: [roots: readonly string[]];
  renewalFailed: [error: IdentityError, retry: RenewalRetry];
}

export interface ProxyIdentity extends EventEmitter<IdentityEvents> {
  readonly spiffeId: string;
  /** Key, chain and the current roots. */
  current(): TlsCredentials;
  view(): CertificateView;
  close(): void;
}

function subjectOf(pem: string): string {
  try {
    return (parseCertificate(pem).x509.subject ?? '').replace(/\n/g, ', ');
  } catch {
    return '(unparseable)';
  }
}

/** Whether `cert` (PEM) was issued by another than `signer` (PEM); false when either cannot be read (nothing to renew for). */
function issuedByAnother(cert: string, signer: string): boolean {
  try {
    return !issuedBy(parseCertificate(cert).x509, parseCertificate(signer).x509);
  } catch {
    return false;
  }
}

function sameRoots(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  const s = new Set(b.map((p) => p.trim()));
  return a.every((p) => s.has(p.trim()));
}

type Held = HeldCertificate;

function describe(keyPem: string, certChain: string[], renewAt: number): Held {
  const leaf = parseCertificate(certChain[0]!);
  return {
    keyPem, certChain, serial: leaf.serial, issuer: (leaf.x509.issuer ?? '').replace(/\n/g, ', '),
    notBefore: leaf.notBefore, notAfter: leaf.notAfter, renewAt,
  };
}

// ---------------------------------------------------------------------------------------------
// Static material

class StaticIdentity extends EventEmitter<IdentityEvents> implements ProxyIdentity {
  readonly spiffeId: string;
  readonly #creds: TlsCredentials;
  readonly #held: Held;

  constructor(spiffeId: string, creds: TlsCredentials) {
    super();
    this.spiffeId = spiffeId;
    this.#creds = creds;
    this.#held = describe(creds.key, [...creds.certChain], Infinity);
  }

  current(): TlsCredentials {
    return this.#creds;
  }

  view(): CertificateView {
    const h = this.#held;
    return {
      identity: this.spiffeId, source: 'static', serial: h.serial, issuer: h.issuer,
      notBefore: h.notBefore.toISOString(), notAfter: h.notAfter.toISOString(),
      state: Date.now() >= h.notAfter.getTime() ? 'expired' : 'valid',
      trustBundle: this.#creds.trustBundle.length, roots: this.#creds.trustBundle.map(subjectOf), issued: 1, renewalFailures: 0,
    };
  }

  close(): void {}
}

/** The certificate file holds another identity than the one the proxy is to have. */
export class CertificateFileIdentityError extends IdentityError {
  readonly found: string;
  constructor(found: string, expected: string) {
    super('WEFT_CERT_FILE_IDENTITY', `the certificate file holds ${found}, not ${expected}`);
    this.found = found;
  }
}

/** Identity from PEM files; the certificate must carry `spiffeId`. */
export async function staticIdentity(files: { certFile: string; keyFile: string; caFile: string }, spiffeId: string): Promise<ProxyIdentity> {
  const [cert, key, ca] = await Promise.all([readFile(files.certFile, 'utf8'), readFile(files.keyFile, 'utf8'), readFile(files.caFile, 'utf8')]);
  const creds: TlsCredentials = { key, certChain: splitPemCertificates(cert), trustBundle: splitPemCertificates(ca) };
  const id = spiffeIdOfCertificate(parseCertificate(creds.certChain[0]!).der).uri;
  if (id !== spiffeId) throw new CertificateFileIdentityError(id, spiffeId);
  return new StaticIdentity(spiffeId, creds);
}

// ---------------------------------------------------------------------------------------------
// The controller's certificate service

export interface ControllerSignerOptions {
  address: string;
  trustBundle: readonly string[];
  /** The controller's SPIFFE ID. */
  serverIdentity: PeerExpectation;
  /** Bearer token (read again for every call: projected tokens rotate). */
  token: () => string | Promise<string>;
  log: Logger;
  /** Reconnect schedule of the trust-bundle stream (default 500 ms doubling to 30 s, ±20 %). */
  watchBackoff?: RenewalBackoffOptions;
}

/**
 * The certificate service client, rebuilt with the new roots when they change (the controller's
 * serving certificate moves to the new root during a rotation).
 */
export class ControllerSigner implements CertificateSigner {
  readonly #o: ControllerSignerOptions;
  #roots: readonly string[];
  #client: CertificateServiceClient | undefined;
  #closed = false;

  constructor(o: ControllerSignerOptions) {
    this.#o = o;
    this.#roots = [...o.trustBundle];
  }

  #current(): CertificateServiceClient {
    this.#client ??= new CertificateServiceClient({
      address: this.#o.address, trustBundle: this.#roots, serverIdentity: this.#o.serverIdentity, credentials: { kind: 'token', token: this.#o.token },
    });
    return this.#client;
  }

  sign(identity: string, csrPem: string, lifetimeSeconds: number): Promise<{ certChain: string[]; trustBundle: string[] }> {
    return this.#current().createCertificate(identity, csrPem, lifetimeSeconds);
  }

  setTrustBundle(roots: readonly string[]): void {
    if (sameRoots(roots, this.#roots)) return;
    this.#roots = [...roots];
    // Calls in progress finish on the old channel; the next one verifies with the new roots.
    this.#client?.close();
    this.#client = undefined;
  }

  watchTrustBundle(onBundle: (roots: string[], signer?: string) => void): () => void {
    return followTrustBundle(() => this.#current(), onBundle, {
      ...(this.#o.watchBackoff ? { backoff: this.#o.watchBackoff } : {}),
      stopped: () => this.#closed,
      onRetry: (err, wait) => this.#o.log.debug('trust bundle stream ended; reconnecting', { error: err.message, retryInMs: Math.round(wait) }),
    });
  }

  close(): void {
    this.#closed = true;
    this.#client?.close();
    this.#client = undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Issued identity

export interface IssuedIdentityOptions {
  spiffeId: string;
  signer: CertificateSigner;
  /** Roots to start with (--ca-bundle); replaced by what the CA publishes. */
  trustBundle: readonly string[];
  /** Requested certificate lifetime in seconds; 0 = the CA's default (24 h). */
  lifetimeSeconds?: number;
  /** Fraction of the validity left at issuance after which a certificate is renewed (default 0.5). */
  renewFraction?: number;
  backoff?: RenewalBackoffOptions;
  random?: () => number;
}

export class IssuedIdentity extends EventEmitter<IdentityEvents> implements ProxyIdentity {
  readonly spiffeId: string;
  readonly #o: IssuedIdentityOptions;
  readonly #signer: CertificateSigner;
  #roots: string[];
  /** Bumped whenever the roots change, so a response sent before a change cannot undo it. */
  #rootsVersion = 0;
  #held: Held | undefined;
  #issued = 0;
  #timer: NodeJS.Timeout | undefined;
  #renewal: Promise<void> | undefined;
  /** Renew once more when the renewal under way is done (the roots changed meanwhile). */
  #again = false;
  /** Ends the wait between two attempts early (new roots: the CA is reachable again). */
  #wake: (() => void) | undefined;
  #failures = 0;
  #lastError: IdentityError | undefined;
  #nextAttemptAt: number | undefined;
  #stopWatch: (() => void) | undefined;
  /** The signing certificate the CA's stream last announced (setTrustBundle). */
  #announcedSigner: string | undefined;
  #closed = false;

  constructor(o: IssuedIdentityOptions) {
    super();
    this.spiffeId = o.spiffeId;
    this.#o = o;
    this.#signer = o.signer;
    this.#roots = [...o.trustBundle];
  }

  /**
   * Gets the first certificate (retrying with backoff until it has one; failures are reported as
   * 'renewalFailed'), then follows the CA's roots. current() and view() need it done.
   */
  async start(): Promise<void> {
    if (this.#held || this.#renewal) throw new Error('IssuedIdentity.start: already started');
    await this.#renew();
    if (!this.#held) throw new CaUnavailableError(`no certificate for ${this.spiffeId}: closed before one was issued`);
    this.#stopWatch = this.#signer.watchTrustBundle?.((roots, signer) => this.setTrustBundle(roots, signer));
  }

  current(): TlsCredentials {
    const h = this.#held!;
    return { key: h.keyPem, certChain: h.certChain, trustBundle: this.#roots };
  }

  trustBundle(): readonly string[] {
    return this.#roots;
  }

  view(): CertificateView {
    const h = this.#held!;
    const renewing = this.#renewal !== undefined;
    const v: CertificateView = {
      identity: this.spiffeId, source: 'issued', serial: h.serial, issuer: h.issuer,
      notBefore: h.notBefore.toISOString(), notAfter: h.notAfter.toISOString(), renewAt: new Date(h.renewAt).toISOString(),
      state: Date.now() >= h.notAfter.getTime() ? 'expired' : renewing ? 'renewing' : 'valid',
      trustBundle: this.#roots.length, roots: this.#roots.map(subjectOf), issued: this.#issued,
      renewalFailures: renewing ? this.#failures : 0,
    };
    if (renewing && this.#lastError) v.lastRenewalError = this.#lastError.message;
    if (renewing && this.#nextAttemptAt !== undefined) v.nextRenewalAttempt = new Date(this.#nextAttemptAt).toISOString();
    return v;
  }

  /**
   * What the CA's stream announces: new roots are trusted at once and the certificate renewed under
   * them; a new signing certificate `signer` (PEM) that did not issue the certificate held has it
   * renewed too (an intermediate changed under the same root leaves the roots as they were), so the
   * holder's certificate, and what it takes from its issuer (a waypoint's debug grants,
   * lib/identity/debug-grant.ts), follow the CA within a renewal, not at half its lifetime. Once per
   * announcement: a CA whose replicas sign with two intermediates for a while is not asked again
   * and again.
   */
  setTrustBundle(roots: readonly string[], signer?: string): void {
    if (this.#closed) return;
    const newSigner = signer !== undefined && signer !== '' && signer !== this.#announcedSigner;
    if (newSigner) this.#announcedSigner = signer;
    if (roots.length > 0 && !sameRoots(roots, this.#roots)) {
      this.#applyRoots(roots);
      this.renewNow();
    } else if (newSigner && this.#held && issuedByAnother(this.#held.certChain[0]!, signer)) {
      this.renewNow();
    }
  }

  /** Renews now; if a renewal is under way, once more after it (or now, if it is waiting to retry). */
  renewNow(): void {
    if (this.#closed) return;
    if (this.#renewal) {
      this.#again = true;
      this.#wake?.();
      return;
    }
    void this.#renew();
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#stopWatch?.();
    this.#wake?.();
    this.#signer.close();
  }

  #applyRoots(roots: readonly string[]): void {
    this.#roots = [...roots];
    this.#rootsVersion++;
    this.#signer.setTrustBundle(this.#roots);
    this.emit('trustBundleChanged', this.#roots);
  }

  /** One renewal: attempts until a certificate is installed or the identity is closed. */
  #renew(): Promise<void> {
    clearTimeout(this.#timer);
    const p = this.#attempts().finally(() => {
      this.#renewal = undefined;
      if (this.#again && !this.#closed) {
        this.#again = false;
        void this.#renew();
      }
    });
    this.#renewal = p;
    return p;
  }

  async #attempts(): Promise<void> {
    const backoff = new RenewalBackoff(this.#o.backoff, this.#o.random);
    this.#failures = 0;
    this.#lastError = undefined;
    this.#nextAttemptAt = undefined;
    while (!this.#closed) {
      this.#again = false;
      try {
        const fetched = await this.#fetch();
        if (this.#closed) return;
        this.#install(fetched);
        return;
      } catch (err) {
        if (this.#closed) return;
        const e = err instanceof IdentityError ? err : new CaUnavailableError(`signing ${this.spiffeId} failed: ${(err as Error).message}`, { cause: err });
        this.#failures++;
        this.#lastError = e;
        const now = Date.now();
        const wait = backoff.next(this.#held ? this.#held.notAfter.getTime() - now : undefined);
        this.#nextAttemptAt = now + wait;
        this.emit('renewalFailed', e, { failures: this.#failures, retryInMs: wait, expiresAt: this.#held?.notAfter });
        await new Promise<void>((resolve) => {
          const t = setTimeout(() => { this.#wake = undefined; resolve(); }, wait);
          this.#wake = () => { clearTimeout(t); this.#wake = undefined; resolve(); };
        });
      }
    }
  }

  async #fetch(): Promise<{ held: Held; roots: string[]; rootsVersion: number }> {
    const rootsVersion = this.#rootsVersion;
    const { privateKey } = await generateKeyPair();
    const res = await this.#signer.sign(this.spiffeId, createCsr(this.spiffeId, privateKey), this.#o.lifetimeSeconds ?? 0);
    const leaf = parseCertificate(res.certChain[0]!);
    if (leaf.uris.length !== 1 || leaf.uris[0] !== this.spiffeId) {
      throw new CertificateRefusedError(`certificate service returned a certificate for ${leaf.uris.join(', ') || '(no URI SAN)'} when ${this.spiffeId} was requested`);
    }
    const now = Date.now();
    const renewAt = now + Math.max(0, leaf.notAfter.getTime() - now) * (this.#o.renewFraction ?? 0.5);
    return { held: describe(privateKeyToPem(privateKey), res.certChain, renewAt), roots: res.trustBundle, rootsVersion };
  }

  #install({ held, roots, rootsVersion }: { held: Held; roots: string[]; rootsVersion: number }): void {
    const first = this.#held === undefined;
    this.#held = held;
    this.#issued++;
    this.#failures = 0;
    this.#lastError = undefined;
    this.#nextAttemptAt = undefined;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.renewNow(), Math.max(0, held.renewAt - Date.now()));
    this.#timer.unref();
    // Roots learned from the response: this certificate was issued under them already. Unless the
    // stream announced other roots while it was on its way (a renewal follows for those).
    if (roots.length > 0 && rootsVersion === this.#rootsVersion && !sameRoots(roots, this.#roots)) this.#applyRoots(roots);
    if (!first) this.emit('rotated', this.current());
  }
}
