// What a workload-certificate holder (the agent's CertManager, a waypoint) needs from whoever signs
// its CSRs, and how it keeps a certificate it holds. The gRPC client of the controller's certificate
// service implements the signer in both; tests use in-process stand-ins.

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
