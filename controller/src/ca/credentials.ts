// TLS credentials for the controller's gRPC port (15012), issued by its own CA.
//
// The serving certificate carries the controller's SPIFFE ID plus DNS/IP SANs, and is renewed at
// half-life and whenever the trust bundle changes. Client certificates are requested but not
// required: agents bootstrapping with a token have none yet; agents with a node certificate
// present it, and grpc-js reports it to handlers (getAuthContext) only when it verified
// against the trust bundle.
import * as grpc from '@grpc/grpc-js';
import type { CertificateAuthority, IssuedCertificate } from '../../../lib/identity/ca.ts';

export interface ControllerCredentialsOptions {
  /** SPIFFE ID of the controller, e.g. spiffe://cluster.local/ns/weft-system/sa/weft-controller. */
  identity: string;
  dnsNames?: readonly string[];
  ipAddresses?: readonly string[];
  /** Lifetime of the serving certificate (default: the CA's workload default). */
  lifetimeMs?: number;
}

export interface ControllerCredentials {
  credentials: grpc.ServerCredentials;
  /** The serving certificate currently in use. */
  current(): IssuedCertificate;
  /** Stops renewal. */
  close(): void;
}

type CaListener = grpc.experimental.CaCertificateUpdateListener;
type IdListener = grpc.experimental.IdentityCertificateUpdateListener;

class CaBackedProvider implements grpc.experimental.CertificateProvider {
  readonly caListeners = new Set<CaListener>();
  readonly idListeners = new Set<IdListener>();
  ca: grpc.experimental.CaCertificateUpdate | null = null;
  identity: grpc.experimental.IdentityCertificateUpdate | null = null;

  // grpc-js registers its own watcher only after adding these listeners, so an update delivered
  // synchronously here would be lost and the server would drop every connection: deliver the
  // current value on the next microtask instead.
  addCaCertificateListener(l: CaListener): void {
    this.caListeners.add(l);
    queueMicrotask(() => {
      if (this.caListeners.has(l)) l(this.ca);
    });
  }
  removeCaCertificateListener(l: CaListener): void {
    this.caListeners.delete(l);
  }
  addIdentityCertificateListener(l: IdListener): void {
    this.idListeners.add(l);
    queueMicrotask(() => {
      if (this.idListeners.has(l)) l(this.identity);
    });
  }
  removeIdentityCertificateListener(l: IdListener): void {
    this.idListeners.delete(l);
  }
  setCa(roots: readonly string[]): void {
    this.ca = { caCertificate: Buffer.from(roots.join('')) };
    for (const l of this.caListeners) l(this.ca);
  }
  setIdentity(keyPem: string, chain: readonly string[]): void {
    this.identity = { certificate: Buffer.from(chain.join('')), privateKey: Buffer.from(keyPem) };
    for (const l of this.idListeners) l(this.identity);
  }
}

/** Server credentials for the controller, backed by `ca`; renews itself until close(). */
export async function createControllerCredentials(ca: CertificateAuthority, opts: ControllerCredentialsOptions): Promise<ControllerCredentials> {
  const provider = new CaBackedProvider();
  let current!: IssuedCertificate;
  let timer: NodeJS.Timeout | undefined;
  let closed = false;

  const renew = async (): Promise<void> => {
    const names = { uris: [opts.identity], dnsNames: opts.dnsNames ?? [], ipAddresses: opts.ipAddresses ?? [] };
    const issued = await ca.issueServingCertificate(names, opts.lifetimeMs !== undefined ? { lifetimeMs: opts.lifetimeMs } : {});
    if (closed) return;
    current = issued;
    provider.setCa(ca.trustBundle());
    provider.setIdentity(issued.keyPem, issued.certChain);
    clearTimeout(timer);
    const delay = Math.max(1000, (issued.notAfter.getTime() - Date.now()) / 2);
    timer = setTimeout(() => void renew().catch(() => undefined), delay);
    timer.unref();
  };
  await renew();
  const off = ca.onTrustBundleChange(() => void renew().catch(() => undefined));
  return {
    credentials: grpc.experimental.createCertificateProviderServerCredentials(provider, provider, false),
    current: () => current,
    close: () => {
      closed = true;
      off();
      clearTimeout(timer);
    },
  };
}
