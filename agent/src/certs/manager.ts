// The agent's certificate manager: one key and certificate per local workload identity.
//
// - On demand and cached: get(identity) returns the current certificate or fetches one;
//   concurrent callers for one identity share a single key generation and signing call.
// - Renewal at a fraction (default half) of the remaining lifetime at issuance, and at once for
//   every identity when the trust bundle changes (root rotation).
// - CA unreachable: retry with exponential backoff and jitter; the current certificate keeps
//   being served until it expires. Close to expiry the wait never exceeds half of the validity
//   left (down to MIN_RETRY_MS), so a CA that returns before the certificate expires is seen
//   before it does; the backoff goes on where it was afterwards. Refusals (identity not
//   allowed, bad CSR) are not retried.
// - Emits 'rotated' when an identity's certificate is replaced, 'trustBundleChanged', and
//   'renewalFailed' for each failed attempt (metrics/logs), with when the next one is due.
//   list() shows the failures of a renewal in progress.
// - Builds the TLS credentials, SecureContexts and HBONE options of lib/identity/tls.ts.
import { EventEmitter } from 'node:events';
import type { ConnectionOptions, SecureContext, TlsOptions } from 'node:tls';
import { createCsr, generateKeyPair, privateKeyToPem } from '../../../lib/identity/csr.ts';
import { CaUnavailableError, CertificateRefusedError, IdentityError } from '../../../lib/identity/errors.ts';
import { parseSpiffeId } from '../../../lib/identity/spiffe.ts';
import {
  hboneClientOptions, hboneSecureContext, hboneServerOptions, type PeerExpectation, type TlsCredentials, type VerificationFailureHook,
} from '../../../lib/identity/tls.ts';
import { parseCertificate } from '../../../lib/identity/x509.ts';
import { RenewalBackoff, type RenewalBackoffOptions } from '../../../lib/identity/renewal.ts';
import type { CertificateSigner, HeldCertificate } from '../../../lib/identity/signing.ts';

/** Fraction of the lifetime (from issuance) after which a certificate is renewed. */
export const DEFAULT_RENEW_FRACTION = 0.5;
/** How long get() waits for a first certificate before failing with CaUnavailableError. */
export const DEFAULT_FETCH_TIMEOUT_MS = 30_000;

export interface CertManagerOptions {
  signer: CertificateSigner;
  /** Roots to trust initially (updated from CA responses and setTrustBundle). */
  trustBundle: readonly string[];
  /** Requested certificate lifetime; 0 (default) = the CA's default (24 h). */
  lifetimeSeconds?: number;
  renewFraction?: number;
  /** Retry schedule of a failing signing (lib/identity/renewal.ts; default 500 ms doubling to 30 s). */
  backoff?: RenewalBackoffOptions;
  fetchTimeoutMs?: number;
  /** Follow the CA's trust bundle stream when the signer offers one (default true). */
  watchTrustBundle?: boolean;
  clock?: () => number;
}

/** What `weftctl certs` and the admin endpoint show per identity. */
export interface CertificateInfo {
  identity: string;
  serial: string;
  issuer: string;
  notBefore: Date;
  notAfter: Date;
  renewAt: Date;
  state: 'valid' | 'renewing' | 'expired';
  /** Failed attempts of the renewal in progress (0 when none failed). */
  renewalFailures: number;
  /** The last failure of the renewal in progress. */
  lastRenewalError?: string;
  /** When the renewal in progress tries again after a failure. */
  nextRenewalAttempt?: Date;
}

/** What 'renewalFailed' reports besides the error. */
export interface RenewalRetry {
  /** Failed attempts of this renewal so far, this one included. */
  failures: number;
  /** Wait before the next attempt; undefined when there is none (the CA refused the identity). */
  retryInMs: number | undefined;
  /** The certificate still held and served meanwhile, if any. */
  expiresAt: Date | undefined;
}

type HeldCert = HeldCertificate;

interface Entry {
  identity: string;
  cert: HeldCert | undefined;
  inflight: Promise<HeldCert> | undefined;
  timer: NodeJS.Timeout | undefined;
  forgotten: boolean;
  contexts: Map<string, SecureContext>;
  lastError: IdentityError | undefined;
  /** A fetch is under way and has not got its certificate yet. */
  renewing: boolean;
  /** Failed attempts of the fetch under way. */
  failures: number;
  nextAttemptAt: number | undefined;
}

export interface CertManagerEvents {
  rotated: [info: CertificateInfo, previous: CertificateInfo | undefined];
  trustBundleChanged: [bundle: readonly string[]];
  renewalFailed: [identity: string, error: IdentityError, retry: RenewalRetry];
}

export class CertManager extends EventEmitter<CertManagerEvents> {
  readonly #signer: CertificateSigner;
  readonly #lifetimeSeconds: number;
  readonly #renewFraction: number;
  readonly #backoff: RenewalBackoffOptions;
  readonly #fetchTimeoutMs: number;
  readonly #clock: () => number;
  readonly #entries = new Map<string, Entry>();
  #bundle: string[];
  #closed = false;
  #stopWatch: (() => void) | undefined;

  constructor(opts: CertManagerOptions) {
    super();
    this.#signer = opts.signer;
    this.#bundle = [...opts.trustBundle];
    this.#lifetimeSeconds = opts.lifetimeSeconds ?? 0;
    this.#renewFraction = opts.renewFraction ?? DEFAULT_RENEW_FRACTION;
    this.#backoff = { ...opts.backoff };
    this.#fetchTimeoutMs = opts.fetchTimeoutMs ?? DEFAULT_FETCH_TIMEOUT_MS;
    this.#clock = opts.clock ?? Date.now;
    if (opts.watchTrustBundle !== false && this.#signer.watchTrustBundle) {
      this.#stopWatch = this.#signer.watchTrustBundle((roots) => {
        if (roots.length > 0) this.setTrustBundle(roots);
      });
    }
  }

  /** The certificate for `identity`, fetching it if there is none that is still valid. */
  async get(identity: string): Promise<TlsCredentials> {
    const entry = this.#entry(identity);
    const cert = entry.cert;
    if (cert && this.#clock() < cert.notAfter.getTime()) return this.#creds(cert);
    return this.#creds(await this.#waitFor(entry));
  }

  /** The current valid certificate, without fetching. */
  current(identity: string): TlsCredentials | undefined {
    const cert = this.#entries.get(identity)?.cert;
    return cert && this.#clock() < cert.notAfter.getTime() ? this.#creds(cert) : undefined;
  }

  /** Stops holding and renewing `identity` (its last pod left the node). */
  forget(identity: string): void {
    const entry = this.#entries.get(identity);
    if (!entry) return;
    entry.forgotten = true;
    clearTimeout(entry.timer);
    this.#entries.delete(identity);
  }

  /**
   * Every issued certificate, by identity in code-unit order (SPIFFE IDs are ASCII). Not
   * localeCompare: the agent lists its certificates on every config, and collation loads ICU's
   * data, 1.6 MB of the node binary made resident for a sort (docs/PERFORMANCE.md, agent memory).
   */
  list(): CertificateInfo[] {
    return [...this.#entries.values()].filter((e) => e.cert).map((e) => this.#info(e, e.cert!)).sort((a, b) => (a.identity < b.identity ? -1 : a.identity > b.identity ? 1 : 0));
  }

  trustBundle(): readonly string[] {
    return this.#bundle;
  }

  /** New roots (from the CA's trust bundle stream or a response): renews every certificate. */
  setTrustBundle(bundle: readonly string[]): void {
    this.#applyTrustBundle(bundle, undefined);
  }

  #applyTrustBundle(bundle: readonly string[], fresh: Entry | undefined): void {
    if (sameBundle(bundle, this.#bundle)) return;
    this.#bundle = [...bundle];
    this.#signer.setTrustBundle(bundle);
    for (const e of this.#entries.values()) e.contexts.clear();
    this.emit('trustBundleChanged', this.#bundle);
    for (const e of this.#entries.values()) {
      if (!e.cert || e.inflight || e === fresh) continue;
      clearTimeout(e.timer);
      this.#refresh(e).catch(() => undefined);
    }
  }

  /** A SecureContext for `identity` with the current trust bundle (cached per certificate). */
  async secureContext(identity: string): Promise<SecureContext> {
    const creds = await this.get(identity);
    const entry = this.#entry(identity);
    const key = `${entry.cert?.serial}/${this.#bundle.length}:${this.#bundle.join('').length}`;
    let ctx = entry.contexts.get(key);
    if (!ctx) {
      ctx = hboneSecureContext(creds);
      entry.contexts.clear();
      entry.contexts.set(key, ctx);
    }
    return ctx;
  }

  /** HBONE client options for a connection made as `identity` to a peer matching `expected`. */
  async clientOptions(identity: string, expected: PeerExpectation, hook?: VerificationFailureHook): Promise<ConnectionOptions> {
    return hboneClientOptions(await this.get(identity), expected, hook);
  }

  /**
   * HBONE server options that pick the served identity per connection: `select` maps the TLS
   * server name (SNI, may be undefined) to an identity held here.
   */
  serverOptions(select: (servername: string | undefined) => string | undefined): TlsOptions {
    return hboneServerOptions({
      SNICallback: (servername, cb) => {
        const identity = select(servername || undefined);
        if (!identity) {
          cb(new IdentityError('WEFT_TLS_NO_LOCAL_IDENTITY', `no local workload identity serves server name "${servername}"`), undefined);
          return;
        }
        this.secureContext(identity).then((ctx) => cb(null, ctx), (err: Error) => cb(err, undefined));
      },
    });
  }

  close(): void {
    this.#closed = true;
    this.#stopWatch?.();
    for (const e of this.#entries.values()) {
      e.forgotten = true;
      clearTimeout(e.timer);
    }
    this.#entries.clear();
    this.#signer.close();
  }

  #entry(identity: string): Entry {
    let e = this.#entries.get(identity);
    if (!e) {
      parseSpiffeId(identity);
      e = { identity, cert: undefined, inflight: undefined, timer: undefined, forgotten: false, contexts: new Map(), lastError: undefined, renewing: false, failures: 0, nextAttemptAt: undefined };
      this.#entries.set(identity, e);
    }
    return e;
  }

  #creds(cert: HeldCert): TlsCredentials {
    return { key: cert.keyPem, certChain: cert.certChain, trustBundle: this.#bundle };
  }

  #info(e: Entry, c: HeldCert): CertificateInfo {
    const now = this.#clock();
    const state = now >= c.notAfter.getTime() ? 'expired' : e.renewing ? 'renewing' : 'valid';
    const info: CertificateInfo = {
      identity: e.identity, serial: c.serial, issuer: c.issuer, notBefore: c.notBefore, notAfter: c.notAfter, renewAt: new Date(c.renewAt), state,
      renewalFailures: e.renewing ? e.failures : 0,
    };
    if (e.renewing && e.failures > 0 && e.lastError) info.lastRenewalError = e.lastError.message;
    if (e.renewing && e.nextAttemptAt !== undefined) info.nextRenewalAttempt = new Date(e.nextAttemptAt);
    return info;
  }

  /** Waits for the (shared) fetch, at most fetchTimeoutMs. */
  async #waitFor(entry: Entry): Promise<HeldCert> {
    const inflight = entry.inflight ?? this.#refresh(entry);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const last = entry.lastError ? ` (last error: ${entry.lastError.message})` : '';
        reject(new CaUnavailableError(`no certificate for ${entry.identity} within ${this.#fetchTimeoutMs} ms${last}; retries continue in the background`, { cause: entry.lastError }));
      }, this.#fetchTimeoutMs);
      timer.unref();
    });
    try {
      return await Promise.race([inflight, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Starts (or joins) the signing of a fresh certificate for `entry`, retrying until it succeeds or is refused. */
  #refresh(entry: Entry): Promise<HeldCert> {
    if (entry.inflight) return entry.inflight;
    const p = this.#fetchWithRetry(entry).finally(() => {
      if (entry.inflight === p) entry.inflight = undefined;
    });
    entry.inflight = p;
    // Background renewals have no awaiting caller; failures are reported through events.
    p.catch(() => undefined);
    return p;
  }

  async #fetchWithRetry(entry: Entry): Promise<HeldCert> {
    const backoff = new RenewalBackoff(this.#backoff);
    entry.renewing = true;
    entry.failures = 0;
    entry.nextAttemptAt = undefined;
    try {
      for (;;) {
        if (this.#closed || entry.forgotten) throw new CaUnavailableError(`certificate manager stopped before ${entry.identity} was signed`);
        try {
          const fetched = await this.#fetchOnce(entry.identity);
          // Done before #install emits 'rotated', so that listeners see the new state.
          entry.renewing = false;
          entry.lastError = undefined;
          entry.failures = 0;
          entry.nextAttemptAt = undefined;
          return this.#install(entry, fetched);
        } catch (err) {
          entry.renewing = true;
          const typed = err instanceof IdentityError ? err : new CaUnavailableError(`signing ${entry.identity} failed: ${(err as Error).message}`, { cause: err });
          entry.lastError = typed;
          entry.failures++;
          const refused = typed instanceof CertificateRefusedError;
          let wait: number | undefined;
          if (!refused) {
            wait = backoff.next(entry.cert ? entry.cert.notAfter.getTime() - this.#clock() : undefined);
            entry.nextAttemptAt = this.#clock() + wait;
          }
          this.emit('renewalFailed', entry.identity, typed, { failures: entry.failures, retryInMs: wait, expiresAt: entry.cert?.notAfter });
          if (wait === undefined) throw typed;
          await new Promise<void>((r) => setTimeout(r, wait).unref());
        }
      }
    } finally {
      entry.renewing = false;
    }
  }

  async #fetchOnce(identity: string): Promise<HeldCert & { trustBundle: string[] }> {
    const { privateKey } = await generateKeyPair();
    const res = await this.#signer.sign(identity, createCsr(identity, privateKey), this.#lifetimeSeconds);
    const leaf = parseCertificate(res.certChain[0]!);
    if (leaf.uris.length !== 1 || leaf.uris[0] !== identity) {
      throw new CertificateRefusedError(`certificate service returned a certificate for ${leaf.uris.join(', ') || '(no URI SAN)'} when ${identity} was requested`);
    }
    const now = this.#clock();
    const notAfter = leaf.notAfter.getTime();
    return {
      keyPem: privateKeyToPem(privateKey),
      certChain: res.certChain,
      serial: leaf.serial,
      issuer: (leaf.x509.issuer ?? '').replace(/\n/g, ', '),
      notBefore: leaf.notBefore,
      notAfter: leaf.notAfter,
      renewAt: now + Math.max(0, notAfter - now) * this.#renewFraction,
      trustBundle: res.trustBundle,
    };
  }

  #install(entry: Entry, fetched: HeldCert & { trustBundle: string[] }): HeldCert {
    const { trustBundle, ...cert } = fetched;
    const previous = entry.cert;
    if (entry.forgotten || this.#closed) return cert;
    entry.cert = cert;
    entry.contexts.clear();
    clearTimeout(entry.timer);
    entry.timer = setTimeout(() => {
      this.#refresh(entry).catch(() => undefined);
    }, Math.max(0, cert.renewAt - this.#clock()));
    entry.timer.unref();
    if (previous) this.emit('rotated', this.#info(entry, cert), this.#info(entry, previous));
    if (trustBundle.length > 0 && !sameBundle(trustBundle, this.#bundle)) {
      // Learned new roots from the CA; this certificate was issued under them already.
      this.#applyTrustBundle(trustBundle, entry);
    }
    return cert;
  }
}

function sameBundle(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  const s = new Set(b.map((p) => p.trim()));
  return a.every((p) => s.has(p.trim()));
}
