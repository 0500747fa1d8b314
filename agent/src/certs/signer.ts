// How the agent gets CSRs signed: the controller's certificate service over gRPC.
//
// Local mode: the agent holds a per-node bootstrap token. It exchanges the token once for a node
// certificate (spiffe://<td>/node/<name>), then authenticates every request with mTLS using that
// certificate, renewing it through mTLS at half-life. If the CA stops accepting the node
// certificate (e.g. after a root rotation), it falls back to the token once. The node certificate
// is renewed early when the CA's trust-bundle stream announces a signing certificate that did not
// issue it (a new intermediate under the same root), and when its holder asks (renewNodeCertificate:
// the config stream was refused).
// Kubernetes mode (`useNodeCertificate: false`): every request carries the agent's projected
// ServiceAccount token, which the controller checks with a TokenReview.
import { CertificateServiceClient, followTrustBundle } from '../../../lib/identity/ca-client.ts';
import { createCsr, generateKeyPair, privateKeyToPem } from '../../../lib/identity/csr.ts';
import { CaAuthenticationError } from '../../../lib/identity/errors.ts';
import { nodeId } from '../../../lib/identity/spiffe.ts';
import type { PeerExpectation } from '../../../lib/identity/tls.ts';
import { AnnouncedSigners } from '../../../lib/identity/renewal.ts';
import { parseCertificate } from '../../../lib/identity/x509.ts';

export type { CertificateSigner, SignResult } from '../../../lib/identity/signing.ts';
import { sameRoots, type CertificateSigner, type SignResult } from '../../../lib/identity/signing.ts';

export interface GrpcSignerOptions {
  /** host:port of the controller (15012). */
  address: string;
  /** Initial roots (from the install: a ConfigMap or a file). */
  trustBundle: readonly string[];
  /** The controller's SPIFFE ID or a predicate over it. */
  serverIdentity: PeerExpectation;
  /** Bootstrap token (local mode) or ServiceAccount token reader (Kubernetes mode). */
  token: () => string | Promise<string>;
  trustDomain: string;
  nodeName: string;
  /** Exchange the token for a node certificate and use mTLS afterwards (default true). */
  useNodeCertificate?: boolean;
  /** Requested lifetime of the node certificate; 0 = the CA's default. */
  nodeCertLifetimeSeconds?: number;
  deadlineMs?: number;
  clock?: () => number;
  /**
   * Told when the CA's trust-bundle stream (watchTrustBundle) announced a signing certificate that
   * did not issue the node certificate held, which is due from now on (the agent renews it and
   * opens its config stream again with the new one). Once per announced signer.
   */
  onNodeCertificateDue?: () => void;
}

interface NodeCert {
  keyPem: string;
  certChain: string[];
  renewAt: number;
}

export class GrpcCertificateSigner implements CertificateSigner {
  readonly #opts: GrpcSignerOptions;
  readonly #clock: () => number;
  #bundle: readonly string[];
  #tokenClient: CertificateServiceClient | undefined;
  #mtlsClient: CertificateServiceClient | undefined;
  #nodeCert: NodeCert | undefined;
  #nodeCertInflight: Promise<NodeCert> | undefined;
  /** The signing certificates the CA's stream announced. */
  readonly #signers = new AnnouncedSigners();

  constructor(opts: GrpcSignerOptions) {
    this.#opts = opts;
    this.#bundle = [...opts.trustBundle];
    this.#clock = opts.clock ?? Date.now;
  }

  get nodeIdentity(): string {
    return nodeId(this.#opts.trustDomain, this.#opts.nodeName).uri;
  }

  setTrustBundle(bundle: readonly string[]): void {
    if (sameRoots(bundle, this.#bundle)) return;
    this.#bundle = [...bundle];
    // A new root is being rolled out: move the node certificate over at the next request too.
    this.#makeDue();
    this.#tokenClient?.close();
    this.#mtlsClient?.close();
    this.#tokenClient = undefined;
    this.#mtlsClient = undefined;
  }

  #clientOpts() {
    const o = { address: this.#opts.address, trustBundle: this.#bundle, serverIdentity: this.#opts.serverIdentity };
    return this.#opts.deadlineMs !== undefined ? { ...o, deadlineMs: this.#opts.deadlineMs } : o;
  }

  #token(): CertificateServiceClient {
    this.#tokenClient ??= new CertificateServiceClient({ ...this.#clientOpts(), credentials: { kind: 'token', token: this.#opts.token } });
    return this.#tokenClient;
  }

  #mtls(cert: NodeCert): CertificateServiceClient {
    this.#mtlsClient ??= new CertificateServiceClient({ ...this.#clientOpts(), credentials: { kind: 'mtls', key: cert.keyPem, certChain: cert.certChain } });
    return this.#mtlsClient;
  }

  async sign(identity: string, csrPem: string, lifetimeSeconds: number): Promise<SignResult> {
    if (this.#opts.useNodeCertificate === false) return this.#token().createCertificate(identity, csrPem, lifetimeSeconds);
    const cert = await this.#ensureNodeCert();
    try {
      return await this.#mtls(cert).createCertificate(identity, csrPem, lifetimeSeconds);
    } catch (err) {
      if (!(err instanceof CaAuthenticationError)) throw err;
      // The node certificate is no longer accepted: bootstrap again with the token, once.
      this.#dropNodeCert();
      return this.#mtls(await this.#ensureNodeCert()).createCertificate(identity, csrPem, lifetimeSeconds);
    }
  }

  /**
   * This node's own certificate (bootstrapping it with the token if needed): the agent presents it
   * on the config stream so the controller serves it only its node's config.
   */
  async nodeCredentials(): Promise<{ keyPem: string; certChain: readonly string[]; renewAt: number }> {
    const c = await this.#ensureNodeCert();
    return { keyPem: c.keyPem, certChain: c.certChain, renewAt: c.renewAt };
  }

  /**
   * Makes the node certificate whose leaf is `leafPem` due: the next nodeCredentials() renews it.
   * Nothing when another is held by now (renewed already: one renewal however many ask).
   */
  renewNodeCertificate(leafPem: string): void {
    if (this.#nodeCert?.certChain[0] === leafPem) this.#makeDue();
  }

  /** Makes the node certificate held due: the next nodeCredentials() renews it. */
  #makeDue(): void {
    if (this.#nodeCert) this.#nodeCert.renewAt = 0;
  }

  /** The CA announced the certificate it signs with: a node certificate it did not issue is due (the holder told, unless due already). */
  #signerAnnounced(signer: string | undefined): void {
    if (!this.#signers.due(signer, this.#nodeCert?.certChain[0]) || this.#nodeCert?.renewAt === 0) return;
    this.#makeDue();
    this.#opts.onNodeCertificateDue?.();
  }

  #dropNodeCert(): void {
    this.#nodeCert = undefined;
    this.#mtlsClient?.close();
    this.#mtlsClient = undefined;
  }

  async #ensureNodeCert(): Promise<NodeCert> {
    const now = this.#clock();
    if (this.#nodeCert && now < this.#nodeCert.renewAt) return this.#nodeCert;
    this.#nodeCertInflight ??= this.#fetchNodeCert().finally(() => {
      this.#nodeCertInflight = undefined;
    });
    return this.#nodeCertInflight;
  }

  async #fetchNodeCert(): Promise<NodeCert> {
    const { privateKey } = await generateKeyPair();
    const csr = createCsr(this.nodeIdentity, privateKey);
    const lifetime = this.#opts.nodeCertLifetimeSeconds ?? 0;
    let res: SignResult;
    const previous = this.#nodeCert;
    if (previous) {
      // Renew with the still-valid node certificate; fall back to the token if it is refused.
      try {
        res = await this.#mtls(previous).createCertificate(this.nodeIdentity, csr, lifetime);
      } catch {
        res = await this.#token().createCertificate(this.nodeIdentity, csr, lifetime);
      }
    } else {
      res = await this.#token().createCertificate(this.nodeIdentity, csr, lifetime);
    }
    const leaf = parseCertificate(res.certChain[0]!);
    const now = this.#clock();
    const cert: NodeCert = { keyPem: privateKeyToPem(privateKey), certChain: res.certChain, renewAt: now + (leaf.notAfter.getTime() - now) / 2 };
    this.#dropNodeCert();
    this.#nodeCert = cert;
    return cert;
  }

  watchTrustBundle(onBundle: (roots: string[], signer?: string) => void): () => void {
    // Roots are public: the stream needs no node credentials, so the bootstrap channel serves.
    return followTrustBundle(() => this.#token(), (roots, signer) => {
      this.#signerAnnounced(signer);
      onBundle(roots, signer);
    });
  }

  close(): void {
    this.#tokenClient?.close();
    this.#mtlsClient?.close();
    this.#tokenClient = undefined;
    this.#mtlsClient = undefined;
  }
}
