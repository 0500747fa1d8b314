// A waypoint's debug grant: what lets one reader into one waypoint's read-only /debug paths for a
// few minutes. A waypoint runs in its application's namespace, where the install's debug token
// (lib/debug-http.ts) cannot be mounted, and anyone who may create pods there can wear a
// waypoint's label; so the waypoint holds no secret at all. The controller, asked with the
// install's token, signs a grant with the mesh CA's key; the waypoint checks it with the trust
// bundle it already holds (public), so a stolen waypoint holds nothing that opens anything. A grant
// is for one pod of one waypoint (its audience): one handed to a pod wearing a waypoint's label
// opens only that pod, which no other pod's name can be, and only until it expires.
//
// The grant is a JWS in compact form (RFC 7515) carrying JWT claims (RFC 7519: aud, iat, exp) and,
// in its `x5c` header (RFC 7515 4.1.6), the certificate whose key signed it and the chain up to a
// root. The signing certificate must be a CA's (basicConstraints CA:TRUE, RFC 5280 4.2.1.9): a
// workload's, node's or gateway's certificate (CA:FALSE, the only kind the CA issues from a CSR)
// signs no grant, whatever key its holder has. Signed bytes start with the base64url of a JSON
// header, never with a DER SEQUENCE, so a grant's signature is never a certificate's.
import { X509Certificate, sign, verify, type KeyObject } from 'node:crypto';

/** The request header a waypoint's /debug paths want a grant in. */
export const DEBUG_GRANT_HEADER = 'weft-debug-grant';
/** The JWS `typ` of a grant (RFC 7515 4.1.9): nothing else signed by the CA passes for one. */
export const DEBUG_GRANT_TYPE = 'weft-debug-grant+jwt';
/** How long a grant the controller signs lasts. */
export const DEBUG_GRANT_LIFETIME_MS = 5 * 60_000;
/** The longest lifetime a waypoint accepts (a grant lasting longer was not made by a Weft controller). */
export const MAX_DEBUG_GRANT_LIFETIME_MS = 10 * 60_000;
/** Clock skew allowed between the controller and a waypoint, as certificates are backdated (lib/identity/ca.ts). */
export const DEBUG_GRANT_SKEW_MS = 60_000;
/** Longest grant a waypoint reads (a chain of a few certificates is well under it). */
export const MAX_DEBUG_GRANT_CHARS = 12_000;
/** Most certificates in a grant's x5c (the signing CA and its intermediates). */
const MAX_CHAIN = 4;

/**
 * The audience of a grant for pod `pod` of waypoint `name` in `namespace`: the grant opens that
 * replica only (a waypoint knows its pod's name, POD_NAME; two pods of a namespace never share one).
 */
export function debugGrantAudience(namespace: string, name: string, pod: string): string {
  return `waypoint-debug:${namespace}/${name}/${pod}`;
}

/**
 * Why a waypoint refused a grant; stable words (metric labels): `missing` (no header), `malformed`
 * (not a grant: encoding, header, claims or lifetime), `signer` (signed with a key whose certificate
 * is no CA's: a workload's), `untrusted` (the chain does not lead to the trust bundle, or a
 * certificate in it is not valid now), `signature` (the signature does not verify), `audience`
 * (a grant for another waypoint), `expired` (or not valid yet).
 */
export type DebugGrantRefusal = 'missing' | 'malformed' | 'signer' | 'untrusted' | 'signature' | 'audience' | 'expired';

/** A grant a waypoint refused, with what to tell the operator. */
export class DebugGrantError extends Error {
  readonly code = 'WEFT_DEBUG_GRANT_REFUSED';
  readonly reason: DebugGrantRefusal;
  constructor(reason: DebugGrantRefusal, message: string) {
    super(message);
    this.name = 'DebugGrantError';
    this.reason = reason;
  }
}

const ALGORITHMS = {
  ES256: { hash: 'sha256', key: 'ec', curve: 'prime256v1' },
  ES384: { hash: 'sha384', key: 'ec', curve: 'secp384r1' },
  RS256: { hash: 'sha256', key: 'rsa', curve: undefined },
} as const;
type Algorithm = keyof typeof ALGORITHMS;

function algorithmOf(key: KeyObject): Algorithm {
  for (const [alg, a] of Object.entries(ALGORITHMS) as Array<[Algorithm, (typeof ALGORITHMS)[Algorithm]]>) {
    if (key.asymmetricKeyType === a.key && (a.curve === undefined || key.asymmetricKeyDetails?.namedCurve === a.curve)) return alg;
  }
  throw new Error(`a debug grant cannot be signed with a ${key.asymmetricKeyType ?? 'unknown'} ${key.asymmetricKeyDetails?.namedCurve ?? ''} key; the CA key must be EC P-256/P-384 or RSA`);
}

const b64url = (b: Buffer | string): string => Buffer.from(b).toString('base64url');

/**
 * A grant for `audience`, valid from `now` for `lifetimeMs`, signed with `key`, the key of the
 * CA certificate `chain[0]` (DER; then its intermediates, not the root). The CA's one caller:
 * CertificateAuthority.signDebugGrant.
 */
export function encodeDebugGrant(key: KeyObject, chain: readonly Buffer[], audience: string, now: number, lifetimeMs: number = DEBUG_GRANT_LIFETIME_MS): { grant: string; expires: Date } {
  const alg = algorithmOf(key);
  const iat = Math.floor(now / 1000);
  const exp = Math.floor((now + Math.min(lifetimeMs, MAX_DEBUG_GRANT_LIFETIME_MS)) / 1000);
  const input = `${b64url(JSON.stringify({ alg, typ: DEBUG_GRANT_TYPE, x5c: chain.map((c) => c.toString('base64')) }))}.${b64url(JSON.stringify({ aud: audience, iat, exp }))}`;
  const signature = sign(ALGORITHMS[alg].hash, Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
  return { grant: `${input}.${b64url(signature)}`, expires: new Date(exp * 1000) };
}

const BASE64URL = /^[A-Za-z0-9_-]+$/;

function jsonObject(part: string, what: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
  } catch {
    throw new DebugGrantError('malformed', `the grant's ${what} is not base64url JSON`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new DebugGrantError('malformed', `the grant's ${what} is not a JSON object`);
  return v as Record<string, unknown>;
}

const validAt = (c: X509Certificate, now: number): boolean => Date.parse(c.validFrom) <= now && now <= Date.parse(c.validTo);

/**
 * Checks `grant` for `audience` against `roots` (PEM, the waypoint's trust bundle) at `now`;
 * returns its expiry, or throws DebugGrantError naming why it opens nothing.
 */
export function verifyDebugGrant(grant: string | undefined, audience: string, roots: readonly string[], now: number = Date.now()): { expires: Date } {
  if (grant === undefined || grant === '') throw new DebugGrantError('missing', `no grant in the ${DEBUG_GRANT_HEADER} header`);
  if (grant.length > MAX_DEBUG_GRANT_CHARS) throw new DebugGrantError('malformed', `the grant is longer than ${MAX_DEBUG_GRANT_CHARS} characters`);
  const parts = grant.split('.');
  if (parts.length !== 3 || !parts.every((p) => BASE64URL.test(p))) throw new DebugGrantError('malformed', 'the grant is not a compact JWS (three base64url parts)');
  const [h, p, s] = parts as [string, string, string];
  const header = jsonObject(h, 'header');
  if (header['typ'] !== DEBUG_GRANT_TYPE) throw new DebugGrantError('malformed', `the grant's typ is not ${DEBUG_GRANT_TYPE}`);
  // RFC 7515 4.1.11: extensions the reader does not know make the JWS invalid.
  if ('crit' in header) throw new DebugGrantError('malformed', 'the grant names critical header extensions');
  const alg = header['alg'];
  if (typeof alg !== 'string' || !Object.hasOwn(ALGORITHMS, alg)) throw new DebugGrantError('malformed', `the grant's alg is not one of ${Object.keys(ALGORITHMS).join(', ')}`);
  const x5c = header['x5c'];
  if (!Array.isArray(x5c) || x5c.length < 1 || x5c.length > MAX_CHAIN || !x5c.every((c) => typeof c === 'string')) throw new DebugGrantError('malformed', `the grant's x5c is not 1 to ${MAX_CHAIN} certificates`);
  let chain: X509Certificate[];
  try {
    chain = (x5c as string[]).map((c) => new X509Certificate(Buffer.from(c, 'base64')));
  } catch {
    throw new DebugGrantError('malformed', 'a certificate in the grant\'s x5c cannot be read');
  }
  const signer = chain[0]!;
  if (!signer.ca) throw new DebugGrantError('signer', `the grant is signed with the key of a certificate that is no CA's (${signer.subjectAltName ?? signer.subject}); only the mesh CA signs grants`);
  for (let i = 0; i < chain.length; i++) {
    const c = chain[i]!;
    if (!validAt(c, now)) throw new DebugGrantError('untrusted', `certificate ${i} of the grant's chain is not valid now (${c.validFrom} to ${c.validTo})`);
    const up = chain[i + 1];
    if (up && !(up.ca && c.checkIssued(up) && c.verify(up.publicKey))) throw new DebugGrantError('untrusted', `certificate ${i} of the grant's chain is not issued by the next`);
  }
  const top = chain[chain.length - 1]!;
  const anchored = roots.some((pem) => {
    try {
      const root = new X509Certificate(pem);
      return top.raw.equals(root.raw) || (top.checkIssued(root) && top.verify(root.publicKey));
    } catch {
      return false;
    }
  });
  if (!anchored) throw new DebugGrantError('untrusted', 'the grant\'s chain does not lead to a root of this waypoint\'s trust bundle');
  const a = ALGORITHMS[alg as Algorithm];
  const key = signer.publicKey;
  if (key.asymmetricKeyType !== a.key || (a.curve !== undefined && key.asymmetricKeyDetails?.namedCurve !== a.curve)) throw new DebugGrantError('signature', `the grant's alg ${alg} is not its signer's key type`);
  if (!verify(a.hash, Buffer.from(`${h}.${p}`), { key, dsaEncoding: 'ieee-p1363' }, Buffer.from(s, 'base64url'))) throw new DebugGrantError('signature', 'the grant\'s signature does not verify with its signer\'s key');
  const claims = jsonObject(p, 'claims');
  const { aud, iat, exp } = claims;
  if (typeof aud !== 'string' || typeof iat !== 'number' || typeof exp !== 'number' || !Number.isFinite(iat) || !Number.isFinite(exp)) throw new DebugGrantError('malformed', 'the grant\'s claims want aud (a string), iat and exp (numbers)');
  if (exp - iat > MAX_DEBUG_GRANT_LIFETIME_MS / 1000 || exp < iat) throw new DebugGrantError('malformed', `the grant lasts ${exp - iat} s, more than ${MAX_DEBUG_GRANT_LIFETIME_MS / 1000} s`);
  if (aud !== audience) throw new DebugGrantError('audience', `the grant is for ${JSON.stringify(aud.slice(0, 256))}, not ${audience}`);
  if (now > exp * 1000 + DEBUG_GRANT_SKEW_MS) throw new DebugGrantError('expired', `the grant expired at ${new Date(exp * 1000).toISOString()}`);
  if (iat * 1000 > now + DEBUG_GRANT_SKEW_MS) throw new DebugGrantError('expired', `the grant is not valid before ${new Date(iat * 1000).toISOString()}`);
  return { expires: new Date(exp * 1000) };
}
