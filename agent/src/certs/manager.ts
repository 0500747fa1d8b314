// The agent's certificate manager: one key and certificate per local workload identity, each an
// IdentityRenewal (lib/identity/renewal.ts, the lifecycle a proxy's own IssuedIdentity shares).
// What is the manager's own:
//
// - On demand and cached: get(identity) returns the current certificate or fetches one;
//   concurrent callers for one identity share a single key generation and signing call, and wait
//   at most fetchTimeoutMs (the retries go on in the background).
// - Renewal (the shared lifecycle): at a fraction (default half) of the validity left at issuance;
//   a failure retried with RenewalBackoff, never waiting past half of the validity left, the
//   current certificate served until it expires. A refusal (identity not allowed on this node, bad
//   CSR) is retried so only while a valid certificate is held; without one it reaches the
//   connection that asked at once, and the next one asks again.
// - One trust bundle for every identity, from the CA's trust bundle stream, setTrustBundle and
//   signing responses; a change renews every identity at once (root rotation), wakes one waiting
//   to retry, and renews again one whose signing was on its way. A signing certificate the stream
//   announces renews each identity it did not issue (a new intermediate under the same root).
// - Emits 'rotated' when an identity's certificate is replaced, 'trustBundleChanged', and
//   'renewalFailed' for each failed attempt (metrics/logs), with when the next one is due.
//   list() shows the failures of a renewal in progress.
// - Builds the TLS credentials, SecureContexts (cached per certificate) and HBONE options of
//   lib/identity/tls.ts.
import { EventEmitter } from 'node:events';
import type { ConnectionOptions, SecureContext, TlsOptions } from 'node:tls';
import { CaUnavailableError, IdentityError } from '../../../lib/identity/errors.ts';
import { parseSpiffeId } from '../../../lib/identity/spiffe.ts';
import {
  hboneClientOptions, hboneSecureContext, hboneServerOptions, type PeerExpectation, type TlsCredentials, type VerificationFailureHook,
} from '../../../lib/identity/tls.ts';
import { IdentityRenewal, type RenewalFailure, type RenewalOptions } from '../../../lib/identity/renewal.ts';
import { certificateState, sameRoots, type CertificateSigner, type CertificateState, type HeldCertificate } from '../../../lib/identity/signing.ts';

/** How long get() waits for a first certificate before failing with CaUnavailableError. */
export const DEFAULT_FETCH_TIMEOUT_MS = 30_000;

export interface CertManagerOptions extends RenewalOptions {
  signer: CertificateSigner;
  /** Roots to trust initially (updated from CA responses and setTrustBundle). */
  trustBundle: readonly string[];
  fetchTimeoutMs?: number;
  /** Follow the CA's trust bundle stream when the signer offers one (default true). */
  watchTrustBundle?: boolean;
}

/** What `weftctl certs` and the admin endpoint show per identity. */
export interface CertificateInfo {
  identity: string;
  serial: string;
  issuer: string;
  notBefore: Date;
  notAfter: Date;
  renewAt: Date;
  state: CertificateState;
  /** Failed attempts of the renewal in progress (0 when none failed). */
  renewalFailures: number;
  /** The last failure of the renewal in progress. */
  lastRenewalError?: string;
  /** When the renewal in progress tries again after a failure. */
  nextRenewalAttempt?: Date;
}

/** What 'renewalFailed' reports besides the error (retryInMs undefined: refused, not retried). */
export type RenewalRetry = RenewalFailure;

interface Entry {
  renewal: IdentityRenewal;
  contexts: Map<string, SecureContext>;
}

export interface CertManagerEvents {
  rotated: [info: CertificateInfo, previous: CertificateInfo | undefined];
  trustBundleChanged: [bundle: readonly string[]];
  renewalFailed: [identity: string, error: IdentityError, retry: RenewalRetry];
}

export class CertManager extends EventEmitter<CertManagerEvents> {
  readonly #signer: CertificateSigner;
  readonly #renewal: RenewalOptions;
  readonly #fetchTimeoutMs: number;
  readonly #entries = new Map<string, Entry>();
  #bundle: string[];
  #closed = false;
  #stopWatch: (() => void) | undefined;

  constructor(opts: CertManagerOptions) {
    super();
    this.#signer = opts.signer;
    this.#bundle = [...opts.trustBundle];
    this.#renewal = opts;
    this.#fetchTimeoutMs = opts.fetchTimeoutMs ?? DEFAULT_FETCH_TIMEOUT_MS;
    if (opts.watchTrustBundle !== false && this.#signer.watchTrustBundle) {
      this.#stopWatch = this.#signer.watchTrustBundle((roots, signer) => this.setTrustBundle(roots, signer));
    }
  }

  /** The certificate for `identity`, fetching it if there is none that is still valid. */
  async get(identity: string): Promise<TlsCredentials> {
    const entry = this.#entry(identity);
    const cert = entry.renewal.valid();
    if (cert) return this.#creds(cert);
    return this.#creds(await this.#waitFor(entry));
  }

  /** The current valid certificate, without fetching. */
  current(identity: string): TlsCredentials | undefined {
    const cert = this.#entries.get(identity)?.renewal.valid();
    return cert ? this.#creds(cert) : undefined;
  }

  /** Stops holding and renewing `identity` (its last pod left the node). */
  forget(identity: string): void {
    const entry = this.#entries.get(identity);
    if (!entry) return;
    entry.renewal.stop();
    this.#entries.delete(identity);
  }

  /**
   * Every issued certificate, by identity in code-unit order (SPIFFE IDs are ASCII). Not
   * localeCompare: the agent lists its certificates on every config, and collation loads ICU's
   * data, 1.6 MB of the node binary made resident for a sort (docs/PERFORMANCE.md, agent memory).
   */
  list(): CertificateInfo[] {
    const out: CertificateInfo[] = [];
    for (const e of this.#entries.values()) if (e.renewal.held) out.push(this.#info(e.renewal, e.renewal.held));
    return out.sort((a, b) => (a.identity < b.identity ? -1 : a.identity > b.identity ? 1 : 0));
  }

  trustBundle(): readonly string[] {
    return this.#bundle;
  }

  /**
   * What the CA's trust bundle stream announces: new roots (none: unchanged) renew every
   * certificate; a signing certificate `signer` (PEM) renews each one it did not issue
   * (IdentityRenewal.announced: a new intermediate under the same root). One renewal for both.
   */
  setTrustBundle(bundle: readonly string[], signer?: string): void {
    this.#applyTrustBundle(bundle, undefined, signer);
  }

  /** `fresh`: the identity whose signing response brought `bundle` (issued under it already). */
  #applyTrustBundle(bundle: readonly string[], fresh: IdentityRenewal | undefined, signer?: string): void {
    const newRoots = bundle.length > 0 && !sameRoots(bundle, this.#bundle);
    if (newRoots) {
      this.#bundle = [...bundle];
      this.#signer.setTrustBundle(bundle);
      for (const e of this.#entries.values()) e.contexts.clear();
      this.emit('trustBundleChanged', this.#bundle);
    }
    for (const e of this.#entries.values()) {
      const r = e.renewal;
      r.announced(signer, newRoots && r !== fresh && (r.held !== undefined || r.renewing));
    }
  }

  /** A SecureContext for `identity` with the current trust bundle (cached per certificate). */
  async secureContext(identity: string): Promise<SecureContext> {
    const creds = await this.get(identity);
    const entry = this.#entry(identity);
    const key = `${entry.renewal.held?.serial}/${this.#bundle.length}:${this.#bundle.join('').length}`;
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
    for (const e of this.#entries.values()) e.renewal.stop();
    this.#entries.clear();
    this.#signer.close();
  }

  #entry(identity: string): Entry {
    let e = this.#entries.get(identity);
    if (!e) {
      if (this.#closed) throw new CaUnavailableError(`certificate manager closed: no certificate for ${identity}`);
      parseSpiffeId(identity);
      const contexts = new Map<string, SecureContext>();
      const renewal: IdentityRenewal = new IdentityRenewal(identity, this.#signer, this.#renewal, {
        // Certificates are asked for per connection: a refusal reaches the one waiting, the next asks again.
        retryRefused: false,
        issued: (cert, previous, roots, superseded) => {
          contexts.clear();
          if (previous) this.emit('rotated', this.#info(renewal, cert), this.#info(renewal, previous));
          // Learned new roots from the CA; this certificate was issued under them already. Unless
          // other roots were announced while it was on its way (a renewal follows for those).
          if (!superseded && roots.length > 0 && !sameRoots(roots, this.#bundle)) this.#applyTrustBundle(roots, renewal);
        },
        failed: (error, retry) => this.emit('renewalFailed', identity, error, retry),
      });
      e = { renewal, contexts };
      this.#entries.set(identity, e);
    }
    return e;
  }

  #creds(cert: HeldCertificate): TlsCredentials {
    return { key: cert.keyPem, certChain: cert.certChain, trustBundle: this.#bundle };
  }

  #info(r: IdentityRenewal, c: HeldCertificate): CertificateInfo {
    const info: CertificateInfo = {
      identity: r.identity, serial: c.serial, issuer: c.issuer, notBefore: c.notBefore, notAfter: c.notAfter, renewAt: new Date(c.renewAt),
      state: certificateState(c, r.renewing, r.now()), renewalFailures: r.failures,
    };
    if (r.lastError) info.lastRenewalError = r.lastError.message;
    if (r.nextAttemptAt !== undefined) info.nextRenewalAttempt = new Date(r.nextAttemptAt);
    return info;
  }

  /** Waits for the (shared) fetch, at most fetchTimeoutMs. */
  async #waitFor(entry: Entry): Promise<HeldCertificate> {
    const inflight = entry.renewal.renew();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const lastError = entry.renewal.lastError;
        const last = lastError ? ` (last error: ${lastError.message})` : '';
        reject(new CaUnavailableError(`no certificate for ${entry.renewal.identity} within ${this.#fetchTimeoutMs} ms${last}; retries continue in the background`, { cause: lastError }));
      }, this.#fetchTimeoutMs);
      timer.unref();
    });
    try {
      return await Promise.race([inflight, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
}
