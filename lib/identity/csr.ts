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

export interface ParsedCsr {
  /** DER SubjectPublicKeyInfo, byte for byte as in the request. */
  spki: Buffer;
  publicKey: KeyObject;
  /** URI SANs requested. */
  uris: string[];
}

/**
 * Decodes a PEM or DER CSR and verifies its self-signature. Throws MalformedCsrError for
 * anything undecodable and CsrSignatureError when the signature does not match the key.
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
    ok = cryptoVerify(hashForSignatureOid(algOid), info, publicKey, signature);
  } catch (err) {
    throw new MalformedCsrError(`CSR public key or signature algorithm is unusable (${(err as Error).message}); use an EC P-256 or RSA key`, { cause: err });
  }
  if (!ok) throw new CsrSignatureError('CSR signature does not verify with the public key it carries; the request was corrupted or not signed by its own key');
  return { spki, publicKey, uris };
}
