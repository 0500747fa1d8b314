// X.509 certificate assembly and the few parsing steps node:crypto's X509Certificate does not
// offer (raw subject/issuer Name bytes, the SubjectKeyIdentifier, URI SANs as a list).
import { createHash, sign as cryptoSign, X509Certificate, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';
import {
  TAG, DerError, bits, bool, children, ctx, expectTag, octets, oid, readBits, readDer, readOid, seq, set, smallInt,
  tlv, time, uint, utf8, pemBlocks, toPem, type DerNode,
} from './der.ts';

export const OID = {
  ecPublicKey: '1.2.840.10045.2.1',
  rsaEncryption: '1.2.840.113549.1.1.1',
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  ecdsaWithSha384: '1.2.840.10045.4.3.3',
  sha256WithRsa: '1.2.840.113549.1.1.11',
  commonName: '2.5.4.3',
  organization: '2.5.4.10',
  subjectKeyId: '2.5.29.14',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  authorityKeyId: '2.5.29.35',
  extKeyUsage: '2.5.29.37',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
  extensionRequest: '1.2.840.113549.1.9.14',
} as const;

// ---- signing ----

interface SignatureAlgorithm {
  /** DER AlgorithmIdentifier. */
  id: Buffer;
  hash: string;
}

/** The signature algorithm Weft uses for a signing key: ECDSA with SHA-256/384, or RSA PKCS#1 v1.5 SHA-256. */
export function signatureAlgorithmFor(key: KeyObject): SignatureAlgorithm {
  let alg = algorithmCache.get(key);
  if (!alg) {
    alg = pickSignatureAlgorithm(key);
    algorithmCache.set(key, alg);
  }
  return alg;
}

const algorithmCache = new WeakMap<KeyObject, SignatureAlgorithm>();

function pickSignatureAlgorithm(key: KeyObject): SignatureAlgorithm {
  if (key.asymmetricKeyType === 'ec') {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    if (curve === 'secp384r1') return { id: seq(oid(OID.ecdsaWithSha384)), hash: 'sha384' };
    return { id: seq(oid(OID.ecdsaWithSha256)), hash: 'sha256' };
  }
  if (key.asymmetricKeyType === 'rsa') return { id: seq(oid(OID.sha256WithRsa), tlv(TAG.NULL, Buffer.alloc(0))), hash: 'sha256' };
  throw new DerError(`signing keys of type ${key.asymmetricKeyType ?? 'unknown'} are not supported; use an EC (P-256/P-384) or RSA key`);
}

/** The hash named by a signature AlgorithmIdentifier, for verification. */
export function hashForSignatureOid(algOid: string): string {
  switch (algOid) {
    case OID.ecdsaWithSha256:
    case OID.sha256WithRsa:
      return 'sha256';
    case OID.ecdsaWithSha384:
      return 'sha384';
    default:
      throw new DerError(`signature algorithm ${algOid} is not supported; sign with ECDSA-SHA256/384 or RSA-SHA256`);
  }
}

/** Wraps `tbs` as { tbs, algorithm, signature } — the shape of both Certificate and CertificationRequest. */
export function signStructure(tbs: Buffer, key: KeyObject): Buffer {
  const alg = signatureAlgorithmFor(key);
  const signature = cryptoSign(alg.hash, tbs, key);
  return seq(tbs, alg.id, bits(signature));
}

// ---- names and extensions ----

export type NameAttribute = readonly [oid: string, value: string];

export function buildName(attrs: readonly NameAttribute[]): Buffer {
  return seq(...attrs.map(([o, v]) => set(seq(oid(o), utf8(v)))));
}

export interface AltNames {
  uris?: readonly string[];
  dnsNames?: readonly string[];
  ipAddresses?: readonly string[];
}

function ipBytes(ip: string): Buffer {
  const v = isIP(ip);
  if (v === 4) return Buffer.from(ip.split('.').map(Number));
  if (v === 6) {
    const [head = '', tail = ''] = ip.split('::');
    const h = head ? head.split(':') : [];
    const t = ip.includes('::') ? (tail ? tail.split(':') : []) : [];
    const groups = ip.includes('::') ? [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t] : h;
    const b = Buffer.alloc(16);
    groups.forEach((g, i) => b.writeUInt16BE(parseInt(g, 16), i * 2));
    return b;
  }
  throw new DerError(`"${ip}" is not an IP address`);
}

export function generalNames(names: AltNames): Buffer {
  return seq(
    ...(names.dnsNames ?? []).map((d) => ctx(2, false, Buffer.from(d, 'ascii'))),
    ...(names.uris ?? []).map((u) => ctx(6, false, Buffer.from(u, 'ascii'))),
    ...(names.ipAddresses ?? []).map((ip) => ctx(7, false, ipBytes(ip))),
  );
}

export function extension(extOid: string, critical: boolean, value: Buffer): Buffer {
  return critical ? seq(oid(extOid), bool(true), octets(value)) : seq(oid(extOid), octets(value));
}

/** KeyUsage bits (RFC 5280 4.2.1.3). */
export const KeyUsage = { digitalSignature: 0, keyEncipherment: 2, keyCertSign: 5, cRLSign: 6 } as const;

export function keyUsageValue(bitNumbers: readonly number[]): Buffer {
  const highest = Math.max(...bitNumbers);
  const nbytes = Math.floor(highest / 8) + 1;
  const b = Buffer.alloc(nbytes);
  for (const n of bitNumbers) b[Math.floor(n / 8)]! |= 0x80 >> (n % 8);
  const unused = nbytes * 8 - 1 - highest;
  return tlv(TAG.BIT_STRING, Buffer.concat([Buffer.from([unused]), b]));
}

/** SHA-1 of the subjectPublicKey bits (RFC 5280 4.2.1.2 method 1). */
export function keyIdentifier(spki: Buffer): Buffer {
  const [, pub] = children(readDer(spki));
  return createHash('sha1').update(readBits(expectTag(pub, TAG.BIT_STRING, 'subjectPublicKey'))).digest();
}

// ---- certificates ----

export interface CertificateTemplate {
  serial: Buffer;
  issuer: Buffer;
  subject: Buffer;
  notBefore: Date;
  notAfter: Date;
  /** DER SubjectPublicKeyInfo, embedded as is. */
  spki: Buffer;
  extensions: readonly Buffer[];
}

export function buildCertificate(t: CertificateTemplate, signingKey: KeyObject): Buffer {
  const tbs = seq(
    ctx(0, true, smallInt(2)),
    uint(t.serial),
    signatureAlgorithmFor(signingKey).id,
    t.issuer,
    seq(time(t.notBefore), time(t.notAfter)),
    t.subject,
    t.spki,
    ctx(3, true, seq(...t.extensions)),
  );
  return signStructure(tbs, signingKey);
}

/** What Weft needs from a certificate beyond X509Certificate's fields. */
export interface CertificateDetails {
  der: Buffer;
  x509: X509Certificate;
  subjectName: Buffer;
  issuerName: Buffer;
  spki: Buffer;
  subjectKeyId: Buffer | undefined;
  uris: string[];
  isCa: boolean;
  serial: string;
  notBefore: Date;
  notAfter: Date;
}

function extensionsOf(tbsChildren: DerNode[]): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const wrapper = tbsChildren.find((c) => c.tag === 0xa3);
  if (!wrapper) return out;
  for (const ext of children(expectTag(children(wrapper)[0], TAG.SEQUENCE, 'extensions'))) {
    const parts = children(ext);
    const value = parts[parts.length - 1];
    out.set(readOid(parts[0]!), expectTag(value, TAG.OCTET_STRING, 'extension value').content);
  }
  return out;
}

/** URI entries of a GeneralNames value. */
export function urisOf(generalNamesDer: Buffer): string[] {
  return children(readDer(generalNamesDer)).filter((n) => n.tag === 0x86).map((n) => n.content.toString('ascii'));
}

export function parseCertificate(input: Buffer | string): CertificateDetails {
  const der = typeof input === 'string' ? firstCertDer(input) : input;
  const x509 = new X509Certificate(der);
  const [tbsNode] = children(readDer(der));
  const tbs = children(expectTag(tbsNode, TAG.SEQUENCE, 'TBSCertificate'));
  const i = tbs[0]?.tag === 0xa0 ? 1 : 0;
  const issuerName = expectTag(tbs[i + 2], TAG.SEQUENCE, 'issuer').bytes;
  const subjectName = expectTag(tbs[i + 4], TAG.SEQUENCE, 'subject').bytes;
  const spki = expectTag(tbs[i + 5], TAG.SEQUENCE, 'subjectPublicKeyInfo').bytes;
  const exts = extensionsOf(tbs);
  const ski = exts.get(OID.subjectKeyId);
  const san = exts.get(OID.subjectAltName);
  return {
    der,
    x509,
    subjectName,
    issuerName,
    spki,
    subjectKeyId: ski ? readDer(ski).content : undefined,
    uris: san ? urisOf(san) : [],
    isCa: x509.ca,
    serial: x509.serialNumber.toLowerCase(),
    notBefore: new Date(x509.validFrom),
    notAfter: new Date(x509.validTo),
  };
}

/**
 * Whether `issuer` signed `cert`: its subject is the certificate's issuer and its key verifies the
 * certificate's signature. The one test of "who issued this" (CertificateAuthority.issued and
 * fromPem, a waypoint finding the CA whose key signs its debug grants).
 */
export function issuedBy(cert: X509Certificate, issuer: X509Certificate): boolean {
  return cert.checkIssued(issuer) && cert.verify(issuer.publicKey);
}

/** Whether `cert` (PEM) was issued by another than `signer` (PEM); false when either cannot be read (nothing to renew for). */
export function issuedByAnother(cert: string, signer: string): boolean {
  try {
    return !issuedBy(parseCertificate(cert).x509, parseCertificate(signer).x509);
  } catch {
    return false;
  }
}

/**
 * The certificate that issued the leaf of `chain` (PEM, leaf first, then intermediates): the next
 * one in the chain, else the root of `roots` that signed it; undefined when none did.
 */
export function issuerOf(chain: readonly string[], roots: readonly string[]): X509Certificate | undefined {
  const leaf = chain[0] === undefined ? undefined : parseCertificate(chain[0]).x509;
  if (!leaf) return undefined;
  for (const pem of [...chain.slice(1), ...roots]) {
    let c: X509Certificate;
    try {
      c = parseCertificate(pem).x509;
    } catch {
      continue;
    }
    if (issuedBy(leaf, c)) return c;
  }
  return undefined;
}

function firstCertDer(pem: string): Buffer {
  const [first] = pemBlocks(pem, 'CERTIFICATE');
  if (!first) throw new DerError('no PEM CERTIFICATE block found');
  return first;
}

export const certToPem = (der: Buffer): string => toPem('CERTIFICATE', der);

/** Splits a PEM bundle into one PEM string per certificate. */
export function splitPemCertificates(bundle: string): string[] {
  return pemBlocks(bundle, 'CERTIFICATE').map(certToPem);
}
