// How one identity's certificate is issued and kept renewed: the one lifecycle behind the agent's
// CertManager (one IdentityRenewal per local workload identity, agent/src/certs/manager.ts) and a
// proxy's own IssuedIdentity (a waypoint's, the east-west gateway's: lib/identity/issued.ts). The
// holders keep what is theirs: CertManager its map of identities, their SecureContexts and get()'s
// deadline; IssuedIdentity the CA's trust-bundle stream and its /certs view. Both hold the roots.
//
// - An attempt: a fresh P-256 key, a CSR for the identity, the signer's answer, whose leaf must
//   carry exactly that one URI SAN (else CertificateRefusedError: a CA that signs something else
//   is not taken at its word). The certificate is renewed after `renewFraction` (default half) of
//   the validity it had left when it arrived.
// - A failed attempt is retried with RenewalBackoff (below: exponential with jitter, never waiting
//   past half of what is left of the held certificate's validity); each failure is reported with
//   {failures, retryInMs, expiresAt}, and the held certificate keeps being served until it
//   expires. A refusal (WEFT_CA_REFUSED: identity not allowed, bad CSR, a certificate for another
//   identity) is retried when the holder says so (`retryRefused`): a proxy's own identity
//   has nobody else who would ask again, and ztunnel retries every failed fetch with backoff
//   (src/identity/manager.rs); and while a valid certificate is held: it is served meanwhile and
//   nobody else asks. Otherwise (the agent's certificates, asked for per connection, none valid)
//   a refusal ends the renewal, reaches the connection waiting for it at once, and the next one
//   asks again.
// - announced() (the CA's trust-bundle stream said something): renews at most once, when the
//   signing certificate it named did not issue the one held (once per announcement: a new
//   intermediate under the same root, Istio's plug-in CA rotated; proto/weft/ca.proto
//   WatchTrustBundle), or when the holder says the roots changed.
// - renewNow() (new roots, a holder's request): renews at once; a retry waiting for its turn goes
//   now (the roots it failed under may be what failed it); an attempt already on its way is
//   followed by one more, and its answer is marked `superseded` so that the roots it carries,
//   which may predate the change, are not applied over it.
// - stop() (the identity forgotten, the holder closed): a retry waiting for its turn ends at once,
//   and an answer still on its way is not installed.
// - One clock for every time read (renewal time, expiry, the state shown), injectable in tests.
//
// RenewalBackoff: exponential backoff with jitter, as for any remote call (lib/backoff.ts), with
// one rule of its own: while a certificate is still held, no wait may outlast half of what is left
// of its validity, so a CA that comes back before the certificate expires is found before it does.
// Such a shortened wait does not grow the backoff: once the certificate has expired the schedule
// continues from where it was, not from its cap.

import { jittered, type BackoffOptions } from '../backoff.ts';
import { createCsr, generateKeyPair, privateKeyToPem } from './csr.ts';
import { CaUnavailableError, CertificateRefusedError, IdentityError } from './errors.ts';
import { heldCertificate, type CertificateSigner, type HeldCertificate } from './signing.ts';
import { issuedByAnother, parseCertificate } from './x509.ts';

export interface RenewalBackoffOptions extends BackoffOptions {
  /** Shortest wait near expiry; default 250 ms. */
  minMs?: number;
}

export const RENEWAL_BACKOFF_DEFAULTS: Readonly<Required<RenewalBackoffOptions>> = {
  initialMs: 500, maxMs: 30_000, multiplier: 2, jitter: 0.2, minMs: 250,
};

/** The retry schedule of one renewal: call next() after each failure, reset() after a success. */
export class RenewalBackoff {
  readonly #o: Required<RenewalBackoffOptions>;
  readonly #random: () => number;
  #stepMs: number;

  constructor(options: RenewalBackoffOptions = {}, random: () => number = Math.random) {
    const o = { ...RENEWAL_BACKOFF_DEFAULTS, ...options };
    if (!(o.initialMs > 0) || !(o.maxMs >= o.initialMs) || !(o.multiplier >= 1) || !(o.jitter >= 0 && o.jitter < 1) || !(o.minMs >= 0)) {
      throw new RangeError(`renewal backoff: need 0 < initialMs <= maxMs, multiplier >= 1, 0 <= jitter < 1, minMs >= 0 (got ${JSON.stringify(o)})`);
    }
    this.#o = o;
    this.#random = random;
    this.#stepMs = o.initialMs;
  }

  /** The un-jittered wait the next failure gets (unless the held certificate shortens it). */
  get stepMs(): number {
    return this.#stepMs;
  }

  /**
   * The wait after a failure. `validForMs`: how long the certificate still held stays valid (0,
   * negative or undefined when there is none or it has expired).
   */
  next(validForMs?: number): number {
    const wait = jittered(this.#stepMs, this.#o.jitter, this.#random);
    if (validForMs !== undefined && validForMs > 0) {
      const cap = Math.max(validForMs / 2, this.#o.minMs);
      if (wait > cap) return Math.min(cap, wait);
    }
    this.#stepMs = Math.min(this.#stepMs * this.#o.multiplier, this.#o.maxMs);
    return wait;
  }

  reset(): void {
    this.#stepMs = this.#o.initialMs;
  }
}

// ---------------------------------------------------------------------------------------------
// One identity's certificate

/**
 * The signing certificates the CA's trust-bundle stream announced, one holder's: the one rule of
 * when an announcement makes a certificate due (IdentityRenewal.announced, the agent's node
 * certificate in agent/src/certs/signer.ts). Once per announced signer: a CA whose replicas sign
 * with two intermediates for a while is not asked again and again.
 */
export class AnnouncedSigners {
  #last: string | undefined;

  /** A newly announced `signerPem` did not issue `leafPem`, the leaf held (none held: false). */
  due(signerPem: string | undefined, leafPem: string | undefined): boolean {
    if (!signerPem || signerPem === this.#last) return false;
    this.#last = signerPem;
    return leafPem !== undefined && issuedByAnother(leafPem, signerPem);
  }
}

/** Fraction of the validity left at issuance after which a certificate is renewed. */
export const DEFAULT_RENEW_FRACTION = 0.5;

/** What a holder tunes of its certificates' lifecycle (the same options in CertManager and IssuedIdentity). */
export interface RenewalOptions {
  /** Requested certificate lifetime in seconds; 0 (default) = the CA's default (24 h). */
  lifetimeSeconds?: number;
  /** Fraction of the validity left at issuance after which a certificate is renewed (default 0.5). */
  renewFraction?: number;
  /** Retry schedule of a failing signing (default 500 ms doubling to 30 s, ±20 %). */
  backoff?: RenewalBackoffOptions;
  /** Source of the backoff's jitter (default Math.random). */
  random?: () => number;
  /** Now, in epoch ms (default Date.now): renewal times, expiry, the state shown. */
  clock?: () => number;
}

/** What a failed attempt reports besides the error. */
export interface RenewalFailure {
  /** Failed attempts of this renewal so far, this one included. */
  failures: number;
  /** Wait before the next attempt; undefined when there is none (a refusal that ends the renewal). */
  retryInMs: number | undefined;
  /** The certificate still held and served meanwhile, if any. */
  expiresAt: Date | undefined;
}

/** What the holder does with what happens: called synchronously, in order. */
export interface RenewalHooks {
  /**
   * Retry a refusal (WEFT_CA_REFUSED) with backoff like any failure; otherwise it ends the renewal
   * unless a valid certificate is held (then it is retried too: nobody waits for the answer).
   */
  retryRefused: boolean;
  /**
   * A certificate was installed (`previous`: the one it replaces). `roots`: the CA's roots as the
   * answer carried them; `superseded`: renewNow() was called while it was on its way, another
   * renewal follows, and `roots` may predate what asked for it.
   */
  issued(cert: HeldCertificate, previous: HeldCertificate | undefined, roots: string[], superseded: boolean): void;
  /** An attempt failed; the state (failures, lastError, nextAttemptAt) already says so. */
  failed(error: IdentityError, retry: RenewalFailure): void;
}

/** One identity's key and certificate, issued on renew() and renewed on schedule until stop(). */
export class IdentityRenewal {
  readonly identity: string;
  readonly #signer: CertificateSigner;
  readonly #o: RenewalOptions;
  readonly #hooks: RenewalHooks;
  readonly #clock: () => number;
  #held: HeldCertificate | undefined;
  #issued = 0;
  #renewal: Promise<HeldCertificate> | undefined;
  /** An attempt is under way and has not installed its certificate yet. */
  #renewing = false;
  /** renewNow() came while an attempt was on its way: renew once more after it. */
  #again = false;
  /** Ends the wait between two attempts early. */
  #wake: (() => void) | undefined;
  #timer: NodeJS.Timeout | undefined;
  #failures = 0;
  #lastError: IdentityError | undefined;
  #nextAttemptAt: number | undefined;
  /** The signing certificates announced (announced()). */
  readonly #signers = new AnnouncedSigners();
  #stopped = false;

  constructor(identity: string, signer: CertificateSigner, options: RenewalOptions, hooks: RenewalHooks) {
    this.identity = identity;
    this.#signer = signer;
    this.#o = options;
    this.#hooks = hooks;
    this.#clock = options.clock ?? Date.now;
  }

  now(): number {
    return this.#clock();
  }

  /** The certificate held (expired or not). */
  get held(): HeldCertificate | undefined {
    return this.#held;
  }

  /** The certificate held if it has not expired. */
  valid(): HeldCertificate | undefined {
    const h = this.#held;
    return h && this.#clock() < h.notAfter.getTime() ? h : undefined;
  }

  /** Certificates installed so far. */
  get issued(): number {
    return this.#issued;
  }

  /** An attempt is under way (or waiting to retry) and has not installed its certificate yet. */
  get renewing(): boolean {
    return this.#renewing;
  }

  /** Failed attempts of the renewal under way (0 when none is, or none failed). */
  get failures(): number {
    return this.#renewing ? this.#failures : 0;
  }

  /** The last failure of the renewal under way. */
  get lastError(): IdentityError | undefined {
    return this.#renewing ? this.#lastError : undefined;
  }

  /** When the renewal under way tries again (epoch ms). */
  get nextAttemptAt(): number | undefined {
    return this.#renewing ? this.#nextAttemptAt : undefined;
  }

  /**
   * Starts the renewal, or joins the one under way: resolves with the certificate it installs;
   * rejects with a refusal it does not retry, or with CaUnavailableError once stopped.
   */
  renew(): Promise<HeldCertificate> {
    if (this.#renewal) return this.#renewal;
    clearTimeout(this.#timer);
    const p = this.#attempts().finally(() => {
      if (this.#renewal === p) this.#renewal = undefined;
      if (this.#again && !this.#stopped) {
        this.#again = false;
        void this.renew().catch(() => undefined);
      }
    });
    this.#renewal = p;
    // Scheduled renewals have no awaiting caller; failures are reported through the hooks.
    p.catch(() => undefined);
    return p;
  }

  /** Renews now; if a renewal is under way, once more after it (or now, if it is waiting to retry). */
  renewNow(): void {
    if (this.#stopped) return;
    if (this.#renewal) {
      this.#again = true;
      this.#wake?.();
      return;
    }
    void this.renew().catch(() => undefined);
  }

  /**
   * The CA's trust-bundle stream announced its signing certificate `signerPem` (PEM, if it named
   * one) and, as the holder found, new roots (`rootsChanged`): renews now, at most once for both.
   * A signer renews when it did not issue the certificate held, so that the certificate, and what
   * a holder takes from its issuer (a waypoint's debug grants, lib/identity/debug-grant.ts), follow
   * the CA within a renewal, not at the next scheduled one; once per announced signer: a CA whose
   * replicas sign with two intermediates for a while is not asked again and again.
   */
  announced(signerPem: string | undefined, rootsChanged: boolean): void {
    if (!this.#renewUnlessIssuedBy(signerPem) && rootsChanged) this.renewNow();
  }

  /** Renews (true) when the newly announced signer `signerPem` did not issue the certificate held. */
  #renewUnlessIssuedBy(signerPem: string | undefined): boolean {
    if (!this.#signers.due(signerPem, this.#held?.certChain[0]) || this.#stopped) return false;
    this.renewNow();
    return true;
  }

  /** Stops renewing: a waiting retry ends, an answer still on its way is not installed. */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#wake?.();
  }

  #stoppedError(): CaUnavailableError {
    return new CaUnavailableError(`no certificate for ${this.identity}: stopped before one was issued`);
  }

  async #attempts(): Promise<HeldCertificate> {
    const backoff = new RenewalBackoff(this.#o.backoff, this.#o.random);
    this.#renewing = true;
    this.#failures = 0;
    this.#lastError = undefined;
    this.#nextAttemptAt = undefined;
    try {
      for (;;) {
        if (this.#stopped) throw this.#stoppedError();
        this.#again = false;
        let fetched: { cert: HeldCertificate; roots: string[] };
        try {
          fetched = await this.#fetch();
        } catch (err) {
          if (this.#stopped) throw this.#stoppedError();
          const error = err instanceof IdentityError ? err : new CaUnavailableError(`signing ${this.identity} failed: ${(err as Error).message}`, { cause: err });
          this.#failures++;
          this.#lastError = error;
          const now = this.#clock();
          const validForMs = this.#held ? this.#held.notAfter.getTime() - now : undefined;
          // A refusal ends the renewal only where the holder does not retry refusals and no valid
          // certificate is held: then a caller is waiting for this answer, and the next one asks
          // again. While one is held it is served without asking, so nobody would.
          const retry = !(error instanceof CertificateRefusedError) || this.#hooks.retryRefused || (validForMs !== undefined && validForMs > 0);
          const wait = retry ? backoff.next(validForMs) : undefined;
          this.#nextAttemptAt = wait === undefined ? undefined : now + wait;
          this.#hooks.failed(error, { failures: this.#failures, retryInMs: wait, expiresAt: this.#held?.notAfter });
          if (wait === undefined) throw error;
          await this.#sleep(wait);
          continue;
        }
        if (this.#stopped) throw this.#stoppedError();
        return this.#install(fetched);
      }
    } finally {
      this.#renewing = false;
    }
  }

  #sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(t);
        this.#wake = undefined;
        resolve();
      };
      const t = setTimeout(done, ms);
      this.#wake = done;
    });
  }

  async #fetch(): Promise<{ cert: HeldCertificate; roots: string[] }> {
    const { privateKey } = await generateKeyPair();
    const res = await this.#signer.sign(this.identity, createCsr(this.identity, privateKey), this.#o.lifetimeSeconds ?? 0);
    const leaf = parseCertificate(res.certChain[0]!);
    if (leaf.uris.length !== 1 || leaf.uris[0] !== this.identity) {
      throw new CertificateRefusedError(`certificate service returned a certificate for ${leaf.uris.join(', ') || '(no URI SAN)'} when ${this.identity} was requested`);
    }
    const now = this.#clock();
    const renewAt = now + Math.max(0, leaf.notAfter.getTime() - now) * (this.#o.renewFraction ?? DEFAULT_RENEW_FRACTION);
    return { cert: heldCertificate(privateKeyToPem(privateKey), res.certChain, renewAt, leaf), roots: res.trustBundle };
  }

  #install({ cert, roots }: { cert: HeldCertificate; roots: string[] }): HeldCertificate {
    const previous = this.#held;
    this.#held = cert;
    this.#issued++;
    // Before the hook, so that whoever it tells sees the new state.
    this.#renewing = false;
    this.#failures = 0;
    this.#lastError = undefined;
    this.#nextAttemptAt = undefined;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.renewNow(), Math.max(0, cert.renewAt - this.#clock()));
    this.#timer.unref();
    this.#hooks.issued(cert, previous, roots, this.#again);
    return cert;
  }
}
