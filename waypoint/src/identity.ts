// The waypoint's side of its identity (the identity itself, static or issued and renewed by the
// controller, is lib/identity/issued.ts, shared with the east-west gateway): the waypoint's flag
// errors, its weft_waypoint_certificate_* metrics and log lines, and config-stream credentials
// that follow the identity.
import * as grpc from '@grpc/grpc-js';
import { Counter, Gauge, type Registry } from 'prom-client';
import { CertificateFileIdentityError, spiffeIdOfCertificate, staticIdentity, type ProxyIdentity, type TlsCredentials } from '../../lib/identity/index.ts';
import type { Logger } from '../../lib/log.ts';
import { FlagError } from './errors.ts';

export type WaypointIdentity = ProxyIdentity;

/** Identity from PEM files (--cert-file, --key-file, --ca-file); the certificate must carry `spiffeId` (--spiffe-id). */
export async function staticWaypointIdentity(files: { certFile: string; keyFile: string; caFile: string }, spiffeId: string): Promise<WaypointIdentity> {
  try {
    return await staticIdentity(files, spiffeId);
  } catch (e) {
    if (e instanceof CertificateFileIdentityError) throw new FlagError(`--cert-file holds ${e.found}, not the waypoint identity ${spiffeId} (--spiffe-id)`);
    throw e;
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
