// Workload keys and PKCS#10 certificate signing requests (RFC 2986) carrying a SPIFFE URI SAN.
//
// Keys are ECDSA P-256 from node:crypto. The CSR has an empty subject (SPIFFE X509-SVIDs are
// identified by the URI SAN alone) and one extensionRequest attribute holding the SAN.
import { createPublicKey, generateKeyPair as generateKeyPairCb, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { promisify } from 'node:util';
import { TAG, DerError, children, ctx, expectTag, oid, readBits, readDer, readOid, seq, set, smallInt, pemBlocks, toPem } from './der.ts';
import { CsrSignatureError, MalformedCsrError } from './errors.ts';
import { OID, extension, generalNames, hashForSignatureOid, signStructure, urisOf } from './x509.ts';

const generateKeyPairAsync = promisify(generateKeyPairCb);

export interface KeyPair {
  privateKey: KeyObject;
  publicKey: KeyObject;
}

/** A fresh ECDSA P-256 key pair. */
export async function generateKeyPair(): Promise<KeyPair> {
  return generateKeyPairAsync('ec', { namedCurve: 'prime256v1' });
}

export function privateKeyToPem(key: KeyObject): string {
  return key.export({ type: 'pkcs8', format: 'pem' }).toString();
}

/** A PEM CSR for `spiffeId` (the URI SAN), signed with `privateKey`. */
export function createCsr(spiffeId: string, privateKey: KeyObject): string {
  const spki = createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
  const san = extension(OID.subjectAltName, true, generalNames({ uris: [spiffeId] }));
  const attributes = ctx(0, true, seq(oid(OID.extensionRequest), set(seq(san))));
  const info = seq(smallInt(0), seq(), spki, attributes);
  return toPem('CERTIFICATE REQUEST', signStructure(info, privateKey));
}

/**
 * Public keys the CA signs (CA/Browser Forum Baseline Requirements 6.1.5, NIST SP 800-131A):
 * ECDSA on the NIST curves P-256, P-384 and P-521, and RSA of at least 2048 bits. Weaker keys
 * (RSA 512/1024, P-192) can be broken within a certificate's lifetime; other curves
 * (secp256k1, brainpool) are off the profile TLS peers expect. Every key Weft generates is P-256.
 */
export const ACCEPTED_EC_CURVES: readonly string[] = ['prime256v1', 'secp384r1', 'secp521r1'];
/** Smallest RSA modulus accepted, in bits. */
export const MIN_RSA_MODULUS_BITS = 2048;

/** Why `key` is off the profile above, or undefined when it is on it. */
export function keyProfileProblem(key: KeyObject): string | undefined {
  const details = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === 'ec') {
    const curve = details?.namedCurve;
    return curve && ACCEPTED_EC_CURVES.includes(curve) ? undefined : `EC curve ${curve ?? '(unnamed)'} is not accepted (only P-256, P-384, P-521)`;
  }
  if (key.asymmetricKeyType === 'rsa') {
    const bits = details?.modulusLength ?? 0;
    return bits >= MIN_RSA_MODULUS_BITS ? undefined : `RSA key of ${bits} bits is too weak (at least ${MIN_RSA_MODULUS_BITS})`;
  }
  return `${key.asymmetricKeyType ?? 'unknown'} keys are not accepted`;
}

export interface ParsedCsr {
  /** DER SubjectPublicKeyInfo, byte for byte as in the request. */
  spki: Buffer;
  publicKey: KeyObject;
  /** URI SANs requested. */
  uris: string[];
}

/**
 * Decodes a PEM or DER CSR and verifies its self-signature. Throws MalformedCsrError for
 * anything undecodable or a key off the accepted profile (keyProfileProblem), and
 * CsrSignatureError when the signature does not match the key.
 */
export function parseCsr(input: string | Buffer): ParsedCsr {
  let der: Buffer;
  if (typeof input === 'string') {
    const [block] = [...pemBlocks(input, 'CERTIFICATE REQUEST'), ...pemBlocks(input, 'NEW CERTIFICATE REQUEST')];
    if (!block) throw new MalformedCsrError('CSR is not PEM: expected a -----BEGIN CERTIFICATE REQUEST----- block');
    der = block;
  } else {
    der = input;
  }
  let info: Buffer, spki: Buffer, algOid: string, signature: Buffer;
  let uris: string[] = [];
  try {
    const [infoNode, algNode, sigNode] = children(expectTag(readDer(der), TAG.SEQUENCE, 'CertificationRequest'));
    info = expectTag(infoNode, TAG.SEQUENCE, 'CertificationRequestInfo').bytes;
    algOid = readOid(children(expectTag(algNode, TAG.SEQUENCE, 'signatureAlgorithm'))[0]!);
    signature = readBits(expectTag(sigNode, TAG.BIT_STRING, 'signature'));
    const [version, subject, spkiNode, attrs] = children(infoNode!);
    expectTag(version, TAG.INTEGER, 'version');
    expectTag(subject, TAG.SEQUENCE, 'subject');
    spki = expectTag(spkiNode, TAG.SEQUENCE, 'subjectPublicKeyInfo').bytes;
    if (attrs) {
      for (const attr of children(expectTag(attrs, 0xa0, 'attributes'))) {
        const [type, values] = children(attr);
        if (readOid(type!) !== OID.extensionRequest) continue;
        for (const ext of children(children(expectTag(values, TAG.SET, 'extensionRequest values'))[0]!)) {
          const parts = children(ext);
          if (readOid(parts[0]!) === OID.subjectAltName) {
            uris = uris.concat(urisOf(expectTag(parts[parts.length - 1], TAG.OCTET_STRING, 'SAN value').content));
          }
        }
      }
    }
  } catch (err) {
    if (err instanceof DerError || err instanceof RangeError || err instanceof TypeError) {
      throw new MalformedCsrError(`CSR could not be decoded (${err.message}); send a DER PKCS#10 request in PEM form`, { cause: err });
    }
    throw err;
  }
  let publicKey: KeyObject;
  let ok: boolean;
  try {
    publicKey = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  } catch (err) {
    throw new MalformedCsrError(`CSR public key is unusable (${(err as Error).message}); use an EC P-256 key (or P-384, P-521, RSA of at least ${MIN_RSA_MODULUS_BITS} bits)`, { cause: err });
  }
  const weak = keyProfileProblem(publicKey);
  if (weak) throw new MalformedCsrError(`CSR public key refused: ${weak}; use an EC P-256 key (or P-384, P-521, RSA of at least ${MIN_RSA_MODULUS_BITS} bits)`);
  try {
    ok = cryptoVerify(hashForSignatureOid(algOid), info, publicKey, signature);
  } catch (err) {
    throw new MalformedCsrError(`CSR signature algorithm is unusable (${(err as Error).message}); sign with ECDSA-SHA256/384 or RSA-SHA256`, { cause: err });
  }
  if (!ok) throw new CsrSignatureError('CSR signature does not verify with the public key it carries; the request was corrupted or not signed by its own key');
  return { spki, publicKey, uris };
}
