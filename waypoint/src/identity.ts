// The waypoint's own identity: its certificate and the roots it trusts, and how both change.
//
// - Static (`--cert-file`/`--key-file`/`--ca-file`): read once, never rotated.
// - Issued: a key and certificate from the controller's certificate service (token auth), renewed
//   at half of the validity left at issuance, and at once when the trust bundle changes (root
//   rotation). The roots come from the CA's trust-bundle stream (followed for the life of the
//   waypoint, reconnecting with backoff) and from each signing response.
// - A failed attempt is retried with exponential backoff and jitter (500 ms doubling to 30 s);
//   while a certificate is held no wait outlasts half of its remaining validity
//   (lib/identity/renewal.ts). Each failure is reported ('renewalFailed') with the next attempt.
// - 'rotated' (a new certificate) and 'trustBundleChanged' (new roots) let the waypoint move its
//   HBONE server, its HBONE client pool and its config stream to the new material.
import { EventEmitter } from 'node:events';
import { readFile } from 'node:fs/promises';
import * as grpc from '@grpc/grpc-js';
import { Counter, Gauge, type Registry } from 'prom-client';
import {
  CaUnavailableError, CertificateRefusedError, CertificateServiceClient, IdentityError, followTrustBundle, RenewalBackoff, createCsr, generateKeyPair,
  parseCertificate, privateKeyToPem, spiffeIdOfCertificate, splitPemCertificates, type PeerExpectation, type RenewalBackoffOptions,
  type TlsCredentials,
} from '../../lib/identity/index.ts';
import type { Logger } from '../../lib/log.ts';
import type { CertificateSigner, HeldCertificate } from '../../lib/identity/signing.ts';
import { FlagError } from './errors.ts';

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

export interface WaypointIdentity extends EventEmitter<IdentityEvents> {
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

class StaticIdentity extends EventEmitter<IdentityEvents> implements WaypointIdentity {
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

/** Identity from PEM files; the certificate must carry `spiffeId`. */
export async function staticIdentity(files: { certFile: string; keyFile: string; caFile: string }, spiffeId: string): Promise<WaypointIdentity> {
  const [cert, key, ca] = await Promise.all([readFile(files.certFile, 'utf8'), readFile(files.keyFile, 'utf8'), readFile(files.caFile, 'utf8')]);
  const creds: TlsCredentials = { key, certChain: splitPemCertificates(cert), trustBundle: splitPemCertificates(ca) };
  const id = spiffeIdOfCertificate(parseCertificate(creds.certChain[0]!).der).uri;
  if (id !== spiffeId) throw new FlagError(`--cert-file holds ${id}, not the waypoint identity ${spiffeId} (--spiffe-id)`);
  return new StaticIdentity(spiffeId, creds);
}

// ---------------------------------------------------------------------------------------------
// The controller's certificate service

/** Signs CSRs and publishes the roots: the controller, or a stand-in in tests. */
export type WaypointSigner = CertificateSigner;

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
export class ControllerSigner implements WaypointSigner {
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

  watchTrustBundle(onBundle: (roots: string[]) => void): () => void {
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
  signer: WaypointSigner;
  /** Roots to start with (--ca-bundle); replaced by what the CA publishes. */
  trustBundle: readonly string[];
  /** Requested certificate lifetime in seconds; 0 = the CA's default (24 h). */
  lifetimeSeconds?: number;
  /** Fraction of the validity left at issuance after which a certificate is renewed (default 0.5). */
  renewFraction?: number;
  backoff?: RenewalBackoffOptions;
  random?: () => number;
}

export class IssuedIdentity extends EventEmitter<IdentityEvents> implements WaypointIdentity {
  readonly spiffeId: string;
  readonly #o: IssuedIdentityOptions;
  readonly #signer: WaypointSigner;
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
    this.#stopWatch = this.#signer.watchTrustBundle?.((roots) => this.setTrustBundle(roots));
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

  /** New roots (from the CA's stream): trust them at once and renew the certificate under them. */
  setTrustBundle(roots: readonly string[]): void {
    if (this.#closed || roots.length === 0 || sameRoots(roots, this.#roots)) return;
    this.#applyRoots(roots);
    this.renewNow();
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

/**
 * Logs and counts what happens to an identity, on `registry`:
 * - weft_waypoint_certificate_renewal_failures_total{reason}: failed signing attempts (first
 *   certificate or renewal), by error code (WEFT_CA_UNAVAILABLE while the controller is down);
 * - weft_waypoint_certificate_rotations_total: certificates replaced by a renewed one;
 * - weft_waypoint_certificate_expiry_timestamp_seconds: when the certificate in use expires;
 * - weft_waypoint_trust_bundle_roots: roots trusted.
 */
export function watchIdentity(identity: WaypointIdentity, registry: Registry, log: Logger): void {
  const failures = new Counter({
    name: 'weft_waypoint_certificate_renewal_failures_total',
    help: 'Failed attempts to get the waypoint certificate signed (first or renewal), by error code',
    labelNames: ['reason'], registers: [registry],
  });
  const rotations = new Counter({ name: 'weft_waypoint_certificate_rotations_total', help: 'Waypoint certificates replaced by a renewed one', registers: [registry] });
  new Gauge({
    name: 'weft_waypoint_certificate_expiry_timestamp_seconds', help: 'When the waypoint certificate in use expires (Unix seconds)', registers: [registry],
    collect() { this.set(Date.parse(identity.view().notAfter) / 1000); },
  });
  new Gauge({
    name: 'weft_waypoint_trust_bundle_roots', help: 'Root certificates the waypoint trusts', registers: [registry],
    collect() { this.set(identity.current().trustBundle.length); },
  });
  identity.on('renewalFailed', (err, retry) => {
    failures.inc({ reason: err.code });
    log.warn('waypoint certificate renewal failed', {
      identity: identity.spiffeId, code: err.code, error: err.message, failures: retry.failures,
      retryInMs: Math.round(retry.retryInMs), nextAttempt: new Date(Date.now() + retry.retryInMs).toISOString(),
      ...(retry.expiresAt ? { expiresAt: retry.expiresAt.toISOString() } : {}),
    });
  });
  identity.on('rotated', () => {
    rotations.inc();
    const v = identity.view();
    log.info('waypoint certificate renewed', { serial: v.serial, issuer: v.issuer, notAfter: v.notAfter });
  });
  identity.on('trustBundleChanged', (roots) => log.info('trust bundle changed', { roots: roots.length }));
}

// ---------------------------------------------------------------------------------------------
// Config stream credentials that follow the identity

/**
 * A grpc-js certificate provider fed from the identity: every new connection of a channel built
 * with it uses the current roots and certificate, so the config stream reconnects (after a
 * controller restart) with what the controller accepts now, not what it accepted at start.
 */
class IdentityCertificateProvider implements grpc.experimental.CertificateProvider {
  readonly #caListeners = new Set<grpc.experimental.CaCertificateUpdateListener>();
  readonly #idListeners = new Set<grpc.experimental.IdentityCertificateUpdateListener>();
  #ca: grpc.experimental.CaCertificateUpdate;
  #id: grpc.experimental.IdentityCertificateUpdate;

  constructor(creds: TlsCredentials) {
    this.#ca = { caCertificate: Buffer.from(creds.trustBundle.join('')) };
    this.#id = { certificate: Buffer.from(creds.certChain.join('')), privateKey: Buffer.from(creds.key) };
  }

  // A channel's credentials record the update in these listeners and build their TLS context from
  // the latest one when they connect, so delivering the current value at once is safe.
  addCaCertificateListener(l: grpc.experimental.CaCertificateUpdateListener): void {
    this.#caListeners.add(l);
    l(this.#ca);
  }
  removeCaCertificateListener(l: grpc.experimental.CaCertificateUpdateListener): void {
    this.#caListeners.delete(l);
  }
  addIdentityCertificateListener(l: grpc.experimental.IdentityCertificateUpdateListener): void {
    this.#idListeners.add(l);
    l(this.#id);
  }
  removeIdentityCertificateListener(l: grpc.experimental.IdentityCertificateUpdateListener): void {
    this.#idListeners.delete(l);
  }

  update(creds: TlsCredentials): void {
    this.#ca = { caCertificate: Buffer.from(creds.trustBundle.join('')) };
    this.#id = { certificate: Buffer.from(creds.certChain.join('')), privateKey: Buffer.from(creds.key) };
    for (const l of this.#caListeners) l(this.#ca);
    for (const l of this.#idListeners) l(this.#id);
  }
}

/**
 * mTLS channel credentials for the controller that follow `identity` (roots and certificate), and
 * check that the server is `controllerIdentity`.
 */
export function controllerChannelCredentials(identity: WaypointIdentity, controllerIdentity: string): grpc.ChannelCredentials {
  const provider = new IdentityCertificateProvider(identity.current());
  const follow = (): void => provider.update(identity.current());
  identity.on('rotated', follow);
  identity.on('trustBundleChanged', follow);
  return grpc.experimental.createCertificateProviderChannelCredentials(provider, provider, {
    checkServerIdentity: (_host, cert) => {
      try {
        const id = spiffeIdOfCertificate(cert).uri;
        return id === controllerIdentity ? undefined : new Error(`controller presented ${id}, expected ${controllerIdentity} (--controller-identity)`);
      } catch (err) {
        return err as Error;
      }
    },
  });
}
