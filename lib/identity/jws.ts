// A JWS in compact form (RFC 7515 section 7.1): the one decoder and signature check for the two
// readers of one, a RequestAuthentication's JWT (lib/policy/jwt.ts) and a waypoint's debug grant
// (lib/identity/debug-grant.ts). What each trusts stays its own: where its keys come from, which
// algorithms it takes, its `typ`, its claims, its clock skew and its errors.
//
// Here: three base64url parts, a header and payload that are JSON objects, no critical header
// extensions (RFC 7515 section 4.1.11: a reader that knows none refuses them), and a signature
// checked only with a key of the type its algorithm needs (RFC 7518 section 3.1), so an RSA public
// key never serves as an HMAC secret; no HMAC algorithm, and `none` is in no table.
import { constants, verify, type KeyObject } from 'node:crypto';

export type JsonValue = string | number | boolean | null | JsonValue[] | { [k: string]: JsonValue };

export type JwsAlg = 'RS256' | 'RS384' | 'RS512' | 'PS256' | 'PS384' | 'PS512' | 'ES256' | 'ES384' | 'ES512' | 'EdDSA';

/** Each algorithm's hash and the key it needs (an EC key's curve and its r || s length, RFC 7518 section 3.4). */
export const JWS_ALGS: Readonly<Record<JwsAlg, { hash: string | null; key: 'rsa' | 'ec' | 'okp'; curve?: string; sigBytes?: number }>> = {
  RS256: { hash: 'sha256', key: 'rsa' }, RS384: { hash: 'sha384', key: 'rsa' }, RS512: { hash: 'sha512', key: 'rsa' },
  PS256: { hash: 'sha256', key: 'rsa' }, PS384: { hash: 'sha384', key: 'rsa' }, PS512: { hash: 'sha512', key: 'rsa' },
  ES256: { hash: 'sha256', key: 'ec', curve: 'prime256v1', sigBytes: 64 },
  ES384: { hash: 'sha384', key: 'ec', curve: 'secp384r1', sigBytes: 96 },
  ES512: { hash: 'sha512', key: 'ec', curve: 'secp521r1', sigBytes: 132 },
  EdDSA: { hash: null, key: 'okp' },
};

export function isJwsAlg(alg: unknown): alg is JwsAlg {
  return typeof alg === 'string' && Object.hasOwn(JWS_ALGS, alg);
}

/** Can `key` verify `alg`: RSA for RS and PS, EC of the algorithm's curve for ES, Ed25519/Ed448 for EdDSA. */
export function jwsKeyFits(key: KeyObject, alg: JwsAlg): boolean {
  const a = JWS_ALGS[alg];
  const type = key.asymmetricKeyType;
  if (a.key === 'rsa') return type === 'rsa';
  if (a.key === 'okp') return type === 'ed25519' || type === 'ed448';
  return type === 'ec' && key.asymmetricKeyDetails?.namedCurve === a.curve;
}

export interface CompactJws {
  header: { readonly [k: string]: JsonValue };
  payload: { readonly [k: string]: JsonValue };
  /** The payload part as received (base64url). */
  payloadPart: string;
  /** `<header>.<payload>`, what the signature signs. */
  signingInput: Buffer;
  signature: Buffer;
}

export type JwsDecodeError = { error: 'too-large' | 'malformed'; why: string };

const B64URL = /^[A-Za-z0-9_-]*$/;

function jsonObject(part: string): { [k: string]: JsonValue } | undefined {
  if (part === '' || !B64URL.test(part)) return undefined;
  try {
    const v = JSON.parse(Buffer.from(part, 'base64url').toString('utf8')) as unknown;
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as { [k: string]: JsonValue }) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Decodes a compact JWS of at most `maxChars` characters (longer: refused unparsed). An empty
 * signature part decodes (an unsecured JWS, RFC 7515 appendix A.5) and verifies with no key: the
 * reader refuses its `alg: none` by name.
 */
export function decodeCompactJws(token: string, maxChars: number): CompactJws | JwsDecodeError {
  if (token.length > maxChars) return { error: 'too-large', why: `${token.length} characters, more than ${maxChars}` };
  const parts = token.split('.');
  if (parts.length !== 3) return { error: 'malformed', why: 'not three dot-separated parts' };
  const [h, p, s] = parts as [string, string, string];
  const header = jsonObject(h);
  if (!header) return { error: 'malformed', why: 'the header is not base64url of a JSON object' };
  const payload = jsonObject(p);
  if (!payload) return { error: 'malformed', why: 'the payload is not base64url of a JSON object' };
  if (!B64URL.test(s)) return { error: 'malformed', why: 'the signature is not base64url' };
  if (Object.hasOwn(header, 'crit')) return { error: 'malformed', why: 'the header names critical extensions (crit), which this reader does not know (RFC 7515 section 4.1.11)' };
  return { header, payload, payloadPart: p, signingInput: Buffer.from(`${h}.${p}`), signature: Buffer.from(s, 'base64url') };
}

/** Does `signature` over `input` verify with `key` for `alg`? False for a key of another type, an ES signature of the wrong length, or any error. */
export function verifyJws(alg: JwsAlg, key: KeyObject, input: Buffer, signature: Buffer): boolean {
  const a = JWS_ALGS[alg];
  if (!jwsKeyFits(key, alg) || signature.length === 0) return false;
  try {
    if (a.key === 'okp') return verify(null, input, key, signature);
    if (alg.startsWith('PS')) return verify(a.hash, input, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST }, signature);
    if (a.key === 'ec') return signature.length === a.sigBytes && verify(a.hash, input, { key, dsaEncoding: 'ieee-p1363' }, signature);
    return verify(a.hash, input, key, signature);
  } catch {
    return false;
  }
}
