// What a workload-certificate holder (the agent's CertManager, a proxy's IssuedIdentity) needs from
// whoever signs its CSRs, and how it keeps a certificate it holds. The gRPC client of the
// controller's certificate service implements the signer in both; tests use in-process stand-ins.
// How a held certificate is renewed is lib/identity/renewal.ts.
import { parseCertificate, type CertificateDetails } from './x509.ts';

export interface SignResult {
  /** PEM, leaf first. */
  certChain: string[];
  /** PEM roots as the CA currently publishes them. */
  trustBundle: string[];
}

/** Anything that turns a CSR into a certificate chain for an identity. */
export interface CertificateSigner {
  sign(identity: string, csrPem: string, lifetimeSeconds: number): Promise<SignResult>;
  /** Roots to verify the CA itself against changed. */
  setTrustBundle(bundle: readonly string[]): void;
  /**
   * Follows the CA's trust bundle and the certificate it signs with (undefined when the CA does not
   * say), reconnecting as needed, until the returned function is called.
   */
  watchTrustBundle?(onBundle: (roots: string[], signer?: string) => void): () => void;
  close(): void;
}

/** A certificate held and served, with its key and when to renew it. */
export interface HeldCertificate {
  keyPem: string;
  certChain: string[];
  serial: string;
  issuer: string;
  notBefore: Date;
  notAfter: Date;
  /** Epoch ms. */
  renewAt: number;
}

/** What `/certs`, `weftctl certs` and the metrics say of a held certificate. */
export type CertificateState = 'valid' | 'renewing' | 'expired';

/** Describes a certificate to hold: its leaf's serial, issuer (one line) and validity. */
export function heldCertificate(keyPem: string, certChain: string[], renewAt: number, leaf: CertificateDetails = parseCertificate(certChain[0]!)): HeldCertificate {
  return {
    keyPem, certChain, serial: leaf.serial, issuer: (leaf.x509.issuer ?? '').replace(/\n/g, ', '),
    notBefore: leaf.notBefore, notAfter: leaf.notAfter, renewAt,
  };
}

/** Expired past its notAfter (whatever else is going on), else renewing while a renewal is under way. */
export function certificateState(cert: HeldCertificate, renewing: boolean, now: number): CertificateState {
  return now >= cert.notAfter.getTime() ? 'expired' : renewing ? 'renewing' : 'valid';
}

/** The same roots, in any order (a CA may publish them reordered; whitespace around PEM blocks aside). */
export function sameRoots(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  const s = new Set(b.map((p) => p.trim()));
  return a.every((p) => s.has(p.trim()));
}
