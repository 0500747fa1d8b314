// Keys and tokens for RequestAuthentication tests: real key pairs (node:crypto), tokens signed as
// RFC 7515 says, and the attacker's variants (forged, alg none, HS256 keyed with the public key).
import { constants, createHmac, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';

export interface TestKey {
  kid: string;
  alg: string;
  privateKey: KeyObject;
  publicKey: KeyObject;
}

export function testKey(kind: 'rsa' | 'ec256' | 'ec384' | 'ed25519', kid: string): TestKey {
  switch (kind) {
    case 'rsa': { const k = generateKeyPairSync('rsa', { modulusLength: 2048 }); return { kid, alg: 'RS256', ...k }; }
    case 'ec256': { const k = generateKeyPairSync('ec', { namedCurve: 'P-256' }); return { kid, alg: 'ES256', ...k }; }
    case 'ec384': { const k = generateKeyPairSync('ec', { namedCurve: 'P-384' }); return { kid, alg: 'ES384', ...k }; }
    case 'ed25519': { const k = generateKeyPairSync('ed25519'); return { kid, alg: 'EdDSA', ...k }; }
  }
}

/** The JWKS document (JSON text) of the keys' public halves. */
export function jwksOf(...keys: TestKey[]): string {
  return JSON.stringify({ keys: keys.map((k) => ({ ...k.publicKey.export({ format: 'jwk' }), kid: k.kid, use: 'sig' })) });
}

const b64 = (v: unknown): string => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

/** A signed JWT; `alg` defaults to the key's. */
export function signToken(key: TestKey, payload: Record<string, unknown>, opts: { alg?: string; kid?: string | null; header?: Record<string, unknown> } = {}): string {
  const alg = opts.alg ?? key.alg;
  const header = { alg, typ: 'JWT', ...(opts.kid === null ? {} : { kid: opts.kid ?? key.kid }), ...opts.header };
  const input = `${b64(header)}.${b64(payload)}`;
  const hash = { RS256: 'sha256', RS384: 'sha384', RS512: 'sha512', PS256: 'sha256', PS384: 'sha384', PS512: 'sha512', ES256: 'sha256', ES384: 'sha384', ES512: 'sha512', EdDSA: null }[alg] ?? null;
  let sig: Buffer;
  if (alg === 'EdDSA') sig = sign(null, Buffer.from(input), key.privateKey);
  else if (alg.startsWith('PS')) sig = sign(hash, Buffer.from(input), { key: key.privateKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST });
  else if (alg.startsWith('ES')) sig = sign(hash, Buffer.from(input), { key: key.privateKey, dsaEncoding: 'ieee-p1363' });
  else sig = sign(hash, Buffer.from(input), key.privateKey);
  return `${input}.${sig.toString('base64url')}`;
}

/** `alg: none` (RFC 7519 section 6): an unsecured token, empty signature. */
export function unsignedToken(payload: Record<string, unknown>): string {
  return `${b64({ alg: 'none', typ: 'JWT' })}.${b64(payload)}.`;
}

/**
 * Key confusion: HS256 with the issuer's RSA public key (PEM, as a library that takes "the key"
 * would read it) as the HMAC secret. Anyone holding the JWKS can make it.
 */
export function hs256WithPublicKey(key: TestKey, payload: Record<string, unknown>): string {
  const input = `${b64({ alg: 'HS256', typ: 'JWT', kid: key.kid })}.${b64(payload)}`;
  const secret = key.publicKey.export({ format: 'pem', type: 'spki' });
  return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
}

/** A token whose payload was changed after signing (the signature is the original's). */
export function tamper(token: string, payload: Record<string, unknown>): string {
  const [h, , s] = token.split('.');
  return `${h}.${b64(payload)}.${s}`;
}

export const nowSeconds = (): number => Math.floor(Date.now() / 1000);
