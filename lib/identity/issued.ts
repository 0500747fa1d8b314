// A proxy's own identity (a waypoint's, the east-west gateway's): its certificate and the roots it
// trusts, and how both change.
//
// - Static (`--cert-file`/`--key-file`/`--ca-file`): read once, never rotated.
// - Issued: a key and certificate from the controller's certificate service (token auth), with the
//   lifecycle the agent's CertManager shares (IdentityRenewal, lib/identity/renewal.ts): renewed at
//   half of the validity left at issuance, at once when the trust bundle changes (root rotation)
//   and when the CA announces a signing certificate that did not issue the one held (a new
//   intermediate under the same root: Istio's plug-in CA rotated; IdentityRenewal
//   announced); a failed attempt retried with exponential backoff and jitter (500 ms
//   doubling to 30 s), no wait outlasting half of the remaining validity, each failure reported
//   ('renewalFailed') with the next attempt. A refusal is retried too: nobody else would ask for
//   this identity again, and a holder that gave up would serve its certificate past expiry.
// - What is its own: the roots and the signing certificate, from the CA's trust-bundle stream
//   (followed for the life of the holder, reconnecting with backoff), the roots also from each
//   signing response, and the /certs view.
// - 'rotated' (a new certificate) and 'trustBundleChanged' (new roots) let the holder move its
//   HBONE server, its HBONE client pool and its config stream to the new material.
// Metrics and flag errors are the holder's (waypoint/src/identity.ts, eastwest/src/main.ts).
import { EventEmitter } from 'node:events';
import { readFile } from 'node:fs/promises';
import type { Logger } from '../log.ts';
import { IdentityError } from './errors.ts';
import { CertificateServiceClient, followTrustBundle } from './ca-client.ts';
import { IdentityRenewal, type RenewalBackoffOptions, type RenewalFailure, type RenewalOptions } from './renewal.ts';
import { parseCertificate, splitPemCertificates } from './x509.ts';
import { spiffeIdOfCertificate, type PeerExpectation, type TlsCredentials } from './tls.ts';
import { certificateState, heldCertificate, sameRoots, type CertificateSigner, type CertificateState, type HeldCertificate } from './signing.ts';

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
  state: CertificateState;
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

/** What 'renewalFailed' reports besides the error: an issued identity retries every failure, so there is always a wait. */
export interface RenewalRetry extends RenewalFailure {
  retryInMs: number;
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

// ---------------------------------------------------------------------------------------------
// Static material

class StaticIdentity extends EventEmitter<IdentityEvents> implements ProxyIdentity {
  readonly spiffeId: string;
  readonly #creds: TlsCredentials;
  readonly #held: HeldCertificate;

  constructor(spiffeId: string, creds: TlsCredentials) {
    super();
    this.spiffeId = spiffeId;
    this.#creds = creds;
    this.#held = heldCertificate(creds.key, [...creds.certChain], Infinity);
  }

  current(): TlsCredentials {
    return this.#creds;
  }

  view(): CertificateView {
    const h = this.#held;
    return {
      identity: this.spiffeId, source: 'static', serial: h.serial, issuer: h.issuer,
      notBefore: h.notBefore.toISOString(), notAfter: h.notAfter.toISOString(),
      state: certificateState(h, false, Date.now()),
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

export interface IssuedIdentityOptions extends RenewalOptions {
  spiffeId: string;
  signer: CertificateSigner;
  /** Roots to start with (--ca-bundle); replaced by what the CA publishes. */
  trustBundle: readonly string[];
}

export class IssuedIdentity extends EventEmitter<IdentityEvents> implements ProxyIdentity {
  readonly spiffeId: string;
  readonly #signer: CertificateSigner;
  readonly #renewal: IdentityRenewal;
  #roots: string[];
  #started = false;
  #stopWatch: (() => void) | undefined;
  #closed = false;

  constructor(o: IssuedIdentityOptions) {
    super();
    this.spiffeId = o.spiffeId;
    this.#signer = o.signer;
    this.#roots = [...o.trustBundle];
    this.#renewal = new IdentityRenewal(o.spiffeId, o.signer, o, {
      retryRefused: true,
      issued: (_cert, previous, roots, superseded) => {
        // Roots learned from the response: this certificate was issued under them already. Unless
        // the stream announced other roots while it was on its way (a renewal follows for those).
        if (!superseded && roots.length > 0 && !sameRoots(roots, this.#roots)) this.#applyRoots(roots);
        if (previous) this.emit('rotated', this.current());
      },
      // retryRefused: every failure has a next attempt.
      failed: (error, retry) => this.emit('renewalFailed', error, { ...retry, retryInMs: retry.retryInMs! }),
    });
  }

  /**
   * Gets the first certificate (retrying with backoff until it has one; failures are reported as
   * 'renewalFailed'), then follows the CA's roots. current() and view() need it done.
   */
  async start(): Promise<void> {
    if (this.#started) throw new Error('IssuedIdentity.start: already started');
    this.#started = true;
    await this.#renewal.renew();
    this.#stopWatch = this.#signer.watchTrustBundle?.((roots, signer) => this.setTrustBundle(roots, signer));
  }

  current(): TlsCredentials {
    const h = this.#renewal.held!;
    return { key: h.keyPem, certChain: h.certChain, trustBundle: this.#roots };
  }

  trustBundle(): readonly string[] {
    return this.#roots;
  }

  view(): CertificateView {
    const r = this.#renewal;
    const h = r.held!;
    const v: CertificateView = {
      identity: this.spiffeId, source: 'issued', serial: h.serial, issuer: h.issuer,
      notBefore: h.notBefore.toISOString(), notAfter: h.notAfter.toISOString(), renewAt: new Date(h.renewAt).toISOString(),
      state: certificateState(h, r.renewing, r.now()),
      trustBundle: this.#roots.length, roots: this.#roots.map(subjectOf), issued: r.issued,
      renewalFailures: r.failures,
    };
    if (r.lastError) v.lastRenewalError = r.lastError.message;
    if (r.nextAttemptAt !== undefined) v.nextRenewalAttempt = new Date(r.nextAttemptAt).toISOString();
    return v;
  }

  /**
   * What the CA's stream announces: new roots are trusted at once and the certificate renewed under
   * them; a new signing certificate `signer` (PEM) that did not issue the certificate held has it
   * renewed too (IdentityRenewal.announced: an intermediate changed under the same root
   * leaves the roots as they were). One renewal for both.
   */
  setTrustBundle(roots: readonly string[], signer?: string): void {
    if (this.#closed) return;
    const newRoots = roots.length > 0 && !sameRoots(roots, this.#roots);
    if (newRoots) this.#applyRoots(roots);
    this.#renewal.announced(signer, newRoots);
  }

  /** Renews now; if a renewal is under way, once more after it (or now, if it is waiting to retry). */
  renewNow(): void {
    this.#renewal.renewNow();
  }

  close(): void {
    this.#closed = true;
    this.#renewal.stop();
    this.#stopWatch?.();
    this.#signer.close();
  }

  #applyRoots(roots: readonly string[]): void {
    this.#roots = [...roots];
    this.#signer.setTrustBundle(this.#roots);
    this.emit('trustBundleChanged', this.#roots);
  }
}
