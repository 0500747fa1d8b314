// The Weft certificate authority: a root (generated, or loaded with an optional intermediate)
// that signs short-lived workload and node certificates from CSRs.
//
// Trust bundle: the PEM roots peers must trust. During a root rotation it holds more than one
// root: `rotateTo(next)` switches signing to the next CA and keeps the previous roots in the
// bundle until `retirePreviousRoots()`, so certificates from both roots verify while workloads
// move over.
import { X509Certificate, createPrivateKey, createPublicKey, randomBytes, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { generateKeyPair, parseCsr, privateKeyToPem } from './csr.ts';
import { CaLoadError, CertificateLifetimeError, CsrIdentityMismatchError } from './errors.ts';
import { parseSpiffeId, validateTrustDomain } from './spiffe.ts';
import {
  KeyUsage, OID, buildCertificate, buildName, certToPem, extension, generalNames, issuedBy, keyIdentifier, keyUsageValue,
  parseCertificate, splitPemCertificates, type AltNames, type CertificateDetails,
} from './x509.ts';
import { bool, oid, octets, ctx, seq, uint } from './der.ts';
import { encodeDebugGrant } from './debug-grant.ts';

/** Default lifetime of workload and node certificates. */
export const DEFAULT_WORKLOAD_CERT_LIFETIME_MS = 24 * 60 * 60 * 1000;
/** Longest lifetime a requester may ask for. */
export const DEFAULT_MAX_WORKLOAD_CERT_LIFETIME_MS = 7 * 24 * 60 * 60 * 1000;
/** Default lifetime of a generated root. */
export const DEFAULT_ROOT_LIFETIME_MS = 10 * 365 * 24 * 60 * 60 * 1000;
/** notBefore is set this far in the past to tolerate clock skew between nodes (capped at the lifetime). */
export const DEFAULT_BACKDATE_MS = 60 * 1000;

export interface CaOptions {
  /** Trust domain of the identities this CA signs, e.g. "cluster.local". */
  trustDomain: string;
  /** Lifetime of issued certificates when the request names none (default 24 h). */
  workloadCertLifetimeMs?: number;
  /** Upper bound on requested lifetimes (default 7 days). */
  maxWorkloadCertLifetimeMs?: number;
  /** Backdating of notBefore (default 60 s). */
  backdateMs?: number;
  /** Clock in ms since the epoch (default Date.now); tests move it to mint expired certificates. */
  clock?: () => number;
}

export interface GenerateRootOptions extends CaOptions {
  rootLifetimeMs?: number;
  /** Subject organization of the root (default "weft"). */
  organization?: string;
}

export interface IssueOptions {
  /** Requested lifetime; capped by the CA's maximum and by the signing certificate's own expiry. */
  lifetimeMs?: number;
}

export interface IssuedCertificate {
  /** The SPIFFE ID in the URI SAN. */
  identity: string;
  /** Leaf first, then intermediates (never the root); PEM each. */
  certChain: string[];
  serial: string;
  notBefore: Date;
  notAfter: Date;
}

interface Signer {
  key: KeyObject;
  cert: CertificateDetails;
  /** PEMs of intermediates between the signing cert and the root, signing cert first (empty for a root signer). */
  intermediates: string[];
  roots: string[];
}

export type TrustBundleListener = (bundle: readonly string[]) => void;

export class CertificateAuthority {
  readonly trustDomain: string;
  readonly #lifetimeMs: number;
  readonly #maxLifetimeMs: number;
  readonly #backdateMs: number;
  readonly #clock: () => number;
  #signer: Signer;
  #previousRoots: string[] = [];
  /** Signing certificates a rotation moved away from, until retirePreviousRoots (see issued()). */
  #previousSigners: X509Certificate[] = [];
  readonly #listeners = new Set<TrustBundleListener>();

  private constructor(signer: Signer, opts: CaOptions) {
    this.trustDomain = validateTrustDomain(opts.trustDomain);
    this.#lifetimeMs = opts.workloadCertLifetimeMs ?? DEFAULT_WORKLOAD_CERT_LIFETIME_MS;
    this.#maxLifetimeMs = opts.maxWorkloadCertLifetimeMs ?? DEFAULT_MAX_WORKLOAD_CERT_LIFETIME_MS;
    this.#backdateMs = opts.backdateMs ?? DEFAULT_BACKDATE_MS;
    this.#clock = opts.clock ?? Date.now;
    this.#signer = signer;
  }

  /** A new self-signed ECDSA P-256 root (CA:true, keyCertSign|cRLSign). */
  static async generateRoot(opts: GenerateRootOptions): Promise<CertificateAuthority> {
    validateTrustDomain(opts.trustDomain);
    const { privateKey, publicKey } = await generateKeyPair();
    const spki = publicKey.export({ type: 'spki', format: 'der' });
    const now = (opts.clock ?? Date.now)();
    const name = buildName([
      [OID.organization, opts.organization ?? 'weft'],
      [OID.commonName, `weft root CA ${opts.trustDomain} ${new Date(now).toISOString()}`],
    ]);
    const ski = keyIdentifier(spki);
    const der = buildCertificate({
      serial: newSerial(),
      issuer: name,
      subject: name,
      notBefore: new Date(now - DEFAULT_BACKDATE_MS),
      notAfter: new Date(now + (opts.rootLifetimeMs ?? DEFAULT_ROOT_LIFETIME_MS)),
      spki,
      extensions: [
        extension(OID.basicConstraints, true, seq(bool(true))),
        extension(OID.keyUsage, true, keyUsageValue([KeyUsage.digitalSignature, KeyUsage.keyCertSign, KeyUsage.cRLSign])),
        extension(OID.subjectKeyId, false, octets(ski)),
      ],
    }, privateKey);
    const pem = certToPem(der);
    return new CertificateAuthority({ key: privateKey, cert: parseCertificate(der), intermediates: [], roots: [pem] }, opts);
  }

  /**
   * Loads a signing certificate and key. `certPem` may carry the chain after the signing
   * certificate (as tls.crt often does); `rootsPem` is the root bundle (ca.crt). Without roots,
   * the signing certificate must itself be a self-signed root.
   */
  static fromPem(material: { certPem: string; keyPem: string; rootsPem?: string }, opts: CaOptions): CertificateAuthority {
    const certs = splitPemCertificates(material.certPem);
    if (certs.length === 0) throw new CaLoadError('CA certificate has no PEM CERTIFICATE block; supply the signing certificate (tls.crt / ca-cert.pem)');
    let signingCert: CertificateDetails;
    let key: KeyObject;
    try {
      signingCert = parseCertificate(certs[0]!);
      key = createPrivateKey(material.keyPem);
    } catch (err) {
      throw new CaLoadError(`CA certificate or key could not be parsed (${(err as Error).message}); supply PEM files`, { cause: err });
    }
    const keySpki = createPublicKey(key).export({ type: 'spki', format: 'der' });
    if (!keySpki.equals(signingCert.spki)) {
      throw new CaLoadError(`CA key does not belong to the CA certificate (${describe(signingCert)}); supply the matching key`);
    }
    if (!signingCert.isCa) {
      throw new CaLoadError(`certificate ${describe(signingCert)} is not a CA (basicConstraints CA:false); supply a CA certificate`);
    }
    const roots = material.rootsPem ? splitPemCertificates(material.rootsPem) : [];
    const selfSigned = issuedBy(signingCert.x509, signingCert.x509);
    if (roots.length === 0) {
      if (!selfSigned) throw new CaLoadError('CA certificate is an intermediate but no root bundle (ca.crt / root-cert.pem) was supplied; supply the root');
      roots.push(certs[0]!);
    }
    const intermediates = selfSigned ? [] : certs.filter((c) => !roots.includes(c));
    // The top of the supplied chain must be issued by one of the roots.
    const top = parseCertificate(intermediates.length ? intermediates[intermediates.length - 1]! : certs[0]!).x509;
    const anchored = roots.some((r) => issuedBy(top, parseCertificate(r).x509));
    if (!anchored) throw new CaLoadError('CA certificate chain does not lead to any certificate in the root bundle; supply the matching ca.crt');
    return new CertificateAuthority({ key, cert: signingCert, intermediates, roots }, opts);
  }

  /**
   * A new intermediate CA (CA:true, pathLen 0) that this CA signs: the plug-in CA of Istio's
   * multi-cluster model, one intermediate per cluster under a shared root, so workload
   * identities of every cluster verify against the one root. Returned as PEM for fromPem: the
   * intermediate followed by this CA's chain, its key, and the root bundle.
   */
  async issueIntermediate(name: string, opts: { lifetimeMs?: number } = {}): Promise<{ certPem: string; keyPem: string; rootPem: string }> {
    const { privateKey, publicKey } = await generateKeyPair();
    const spki = publicKey.export({ type: 'spki', format: 'der' });
    const signer = this.#signer;
    const now = this.#clock();
    const notAfter = Math.min(now + (opts.lifetimeMs ?? DEFAULT_ROOT_LIFETIME_MS), signer.cert.notAfter.getTime());
    const der = buildCertificate({
      serial: newSerial(),
      issuer: signer.cert.subjectName,
      subject: buildName([[OID.organization, 'weft'], [OID.commonName, `weft intermediate CA ${name} ${this.trustDomain}`]]),
      notBefore: new Date(Math.floor((now - DEFAULT_BACKDATE_MS) / 1000) * 1000),
      notAfter: new Date(Math.floor(notAfter / 1000) * 1000),
      spki,
      extensions: [
        extension(OID.basicConstraints, true, seq(bool(true), uint(Buffer.from([0])))),
        extension(OID.keyUsage, true, keyUsageValue([KeyUsage.digitalSignature, KeyUsage.keyCertSign, KeyUsage.cRLSign])),
        extension(OID.subjectKeyId, false, octets(keyIdentifier(spki))),
        extension(OID.authorityKeyId, false, seq(ctx(0, false, signer.cert.subjectKeyId ?? keyIdentifier(signer.cert.spki)))),
      ],
    }, signer.key);
    return { certPem: certToPem(der) + signer.intermediates.join(''), keyPem: privateKeyToPem(privateKey), rootPem: signer.roots.join('') };
  }

  /**
   * The signing certificate (with its chain) and key as PEM, the inverse of fromPem: for writing a
   * generated root to files or a Secret so a restarted controller keeps the same CA.
   */
  exportPem(): { certPem: string; keyPem: string; rootsPem: string } {
    return {
      certPem: this.#signer.cert.x509.toString() + this.#signer.intermediates.join(''),
      keyPem: this.#signer.key.export({ type: 'pkcs8', format: 'pem' }).toString(),
      rootsPem: this.#signer.roots.join(''),
    };
  }

  /** Loads from PEM files: the signing certificate (+ chain), its key, and optionally the root bundle. */
  static async fromFiles(files: { certFile: string; keyFile: string; rootsFile?: string }, opts: CaOptions): Promise<CertificateAuthority> {
    const read = async (f: string) => {
      try {
        return await readFile(f, 'utf8');
      } catch (err) {
        throw new CaLoadError(`cannot read CA file ${f} (${(err as Error).message}); check the path and permissions`, { cause: err });
      }
    };
    const material: { certPem: string; keyPem: string; rootsPem?: string } = { certPem: await read(files.certFile), keyPem: await read(files.keyFile) };
    if (files.rootsFile) material.rootsPem = await read(files.rootsFile);
    return CertificateAuthority.fromPem(material, opts);
  }

  /**
   * Loads from a Kubernetes Secret's `data` (base64 values, or `stringData` with PEM values):
   * tls.crt / tls.key / ca.crt (kubernetes.io/tls), or Istio's cacerts names
   * ca-cert.pem / ca-key.pem / root-cert.pem (+ cert-chain.pem).
   */
  static fromSecretData(data: Readonly<Record<string, string>>, opts: CaOptions): CertificateAuthority {
    const get = (...names: string[]): string | undefined => {
      for (const n of names) {
        const v = data[n];
        if (v === undefined || v === '') continue;
        return v.includes('-----BEGIN') ? v : Buffer.from(v, 'base64').toString('utf8');
      }
      return undefined;
    };
    const certPem = get('tls.crt', 'ca-cert.pem');
    const keyPem = get('tls.key', 'ca-key.pem');
    if (!certPem || !keyPem) {
      throw new CaLoadError(`CA Secret lacks ${certPem ? '' : 'tls.crt '}${keyPem ? '' : 'tls.key'}; it needs tls.crt, tls.key and (for an intermediate) ca.crt`.replace('  ', ' '));
    }
    const chain = get('cert-chain.pem');
    const rootsPem = get('ca.crt', 'root-cert.pem');
    const material: { certPem: string; keyPem: string; rootsPem?: string } = { certPem: chain && !certPem.includes(chain) ? certPem + chain : certPem, keyPem };
    if (rootsPem) material.rootsPem = rootsPem;
    return CertificateAuthority.fromPem(material, opts);
  }

  /** Roots peers must trust: the current roots first, then roots kept during a rotation. */
  trustBundle(): string[] {
    return [...new Set([...this.#signer.roots, ...this.#previousRoots])];
  }

  /** The certificate this CA signs with (root or intermediate), PEM. */
  signingCertificate(): string {
    return certToPem(this.#signer.cert.der);
  }

  onTrustBundleChange(listener: TrustBundleListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Starts a root rotation: sign with `next` from now on, keep trusting the current roots. */
  rotateTo(next: CertificateAuthority): void {
    if (next.trustDomain !== this.trustDomain) {
      throw new CaLoadError(`cannot rotate from trust domain ${this.trustDomain} to ${next.trustDomain}; a rotation keeps the trust domain`);
    }
    this.#previousRoots = [...new Set([...this.#previousRoots, ...this.#signer.roots])].filter((r) => !next.#signer.roots.includes(r));
    this.#previousSigners = [...this.#previousSigners, this.#signer.cert.x509].filter((c) => !c.raw.equals(next.#signer.cert.der));
    this.#signer = next.#signer;
    this.#emit();
  }

  /** Ends a root rotation: only the current roots stay trusted, and only the current signer's certificates are this CA's (issued()). */
  retirePreviousRoots(): void {
    this.#previousSigners = [];
    if (this.#previousRoots.length === 0) return;
    this.#previousRoots = [];
    this.#emit();
  }

  /**
   * Whether this CA signed `cert` (DER or X509Certificate): with its current signing certificate,
   * or with the one a rotation is moving away from (until retirePreviousRoots). Chaining to the
   * trust bundle is not enough where the identity is per cluster: clusters of one mesh share the
   * root and the trust domain, and each cluster's controller names its own nodes (node names
   * repeat), so a node certificate is this controller's only if this controller issued it.
   */
  issued(cert: Buffer | X509Certificate): boolean {
    let leaf: X509Certificate;
    try {
      leaf = Buffer.isBuffer(cert) ? new X509Certificate(cert) : cert;
    } catch {
      return false;
    }
    return [this.#signer.cert.x509, ...this.#previousSigners].some((signer) => issuedBy(leaf, signer));
  }

  #emit(): void {
    const bundle = this.trustBundle();
    for (const l of this.#listeners) l(bundle);
  }

  /**
   * Signs a CSR for `identity`. The CSR's signature must verify and its URI SANs must be
   * exactly [identity]; otherwise MalformedCsrError / CsrSignatureError / CsrIdentityMismatchError.
   * A lifetime past the CA's maximum is refused (CertificateLifetimeError), as Istio's CA refuses it.
   */
  signCsr(csr: string | Buffer, identity: string, opts: IssueOptions = {}): IssuedCertificate {
    if (opts.lifetimeMs !== undefined && opts.lifetimeMs > this.#maxLifetimeMs) {
      throw new CertificateLifetimeError(`requested lifetime of ${Math.ceil(opts.lifetimeMs / 1000)} s is greater than the ${this.#maxLifetimeMs / 1000} s this CA grants; ask for at most that, or 0 for the default (${this.#lifetimeMs / 1000} s)`);
    }
    const id = parseSpiffeId(identity);
    if (id.trustDomain !== this.trustDomain) {
      throw new CsrIdentityMismatchError([identity], `an identity in trust domain ${this.trustDomain}`);
    }
    const parsed = parseCsr(csr);
    if (parsed.uris.length !== 1 || parsed.uris[0] !== id.uri) throw new CsrIdentityMismatchError(parsed.uris, id.uri);
    return this.issue(parsed.spki, { uris: [id.uri] }, opts);
  }

  /**
   * Issues a leaf (CA:false, serverAuth+clientAuth) for a public key, with the given SANs. Used
   * by signCsr and for serving certificates (the controller's, with DNS/IP SANs).
   */
  issue(spki: Buffer, names: AltNames, opts: IssueOptions = {}): IssuedCertificate {
    const now = this.#clock();
    const lifetime = Math.min(opts.lifetimeMs ?? this.#lifetimeMs, this.#maxLifetimeMs);
    const notAfter = Math.min(now + lifetime, this.#signer.cert.notAfter.getTime());
    const notBefore = now - Math.min(this.#backdateMs, lifetime);
    const signer = this.#signer;
    // keyEncipherment only makes sense for RSA keys (RFC 5280 4.2.1.3).
    const usage = spki.includes(RSA_ENCRYPTION_OID_DER) ? [KeyUsage.digitalSignature, KeyUsage.keyEncipherment] : [KeyUsage.digitalSignature];
    const serial = newSerial();
    // Certificates carry whole seconds.
    const notBeforeDate = new Date(Math.floor(notBefore / 1000) * 1000);
    const notAfterDate = new Date(Math.floor(notAfter / 1000) * 1000);
    const extensions = [
      extension(OID.basicConstraints, true, seq()),
      extension(OID.keyUsage, true, keyUsageValue(usage)),
      extension(OID.extKeyUsage, false, seq(oid(OID.serverAuth), oid(OID.clientAuth))),
      // The subject is empty, so the SAN is critical (RFC 5280 4.2.1.6).
      extension(OID.subjectAltName, true, generalNames(names)),
      extension(OID.subjectKeyId, false, octets(keyIdentifier(spki))),
      extension(OID.authorityKeyId, false, seq(ctx(0, false, signer.cert.subjectKeyId ?? keyIdentifier(signer.cert.spki)))),
    ];
    const der = buildCertificate({
      serial,
      issuer: signer.cert.subjectName,
      subject: seq(),
      notBefore: notBeforeDate,
      notAfter: notAfterDate,
      spki,
      extensions,
    }, signer.key);
    return {
      identity: names.uris?.[0] ?? '',
      certChain: [certToPem(der), ...signer.intermediates],
      serial: serial.toString('hex'),
      notBefore: notBeforeDate,
      notAfter: notAfterDate,
    };
  }

  /**
   * A waypoint debug grant (lib/identity/debug-grant.ts) for `audience`, signed with this CA's
   * signing key: the key of the certificate that issued the waypoint's own, which is what the
   * waypoint checks it with (another cluster's CA under the same root opens nothing here). The
   * controller signs one only for a caller holding the install's debug token.
   */
  signDebugGrant(audience: string): { grant: string; expires: Date } {
    return encodeDebugGrant(this.#signer.key, audience, this.#clock());
  }

  /** A fresh key and certificate for a server (the controller's gRPC port), PEM. */
  async issueServingCertificate(names: AltNames, opts: IssueOptions = {}): Promise<IssuedCertificate & { keyPem: string }> {
    const { privateKey, publicKey } = await generateKeyPair();
    const issued = this.issue(publicKey.export({ type: 'spki', format: 'der' }), names, opts);
    return { ...issued, keyPem: privateKeyToPem(privateKey) };
  }
}

function describe(cert: CertificateDetails): string {
  const subject = (cert.x509.subject ?? '').replace(/\n/g, ', ');
  return subject || cert.uris.join(', ') || `serial ${cert.serial}`;
}

const RSA_ENCRYPTION_OID_DER = oid(OID.rsaEncryption);

/**
 * 128-bit positive serial (RFC 5280 allows up to 20 octets). The top byte is 0x40-0x7f, so the
 * DER INTEGER is positive and minimal: a leading 0x00 followed by a byte below 0x80 is a
 * non-minimal encoding that OpenSSL refuses ("illegal padding").
 */
export function newSerial(): Buffer {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) | 0x40;
  return b;
}
