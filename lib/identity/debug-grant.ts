// A waypoint's debug grant: what lets one reader into one waypoint's read-only /debug paths for a
// few minutes. A waypoint runs in its application's namespace, where the install's debug token
// (lib/debug-http.ts) cannot be mounted, and anyone who may create pods there can wear a
// waypoint's label; so the waypoint holds no secret at all. The controller, asked with the
// install's token, signs a grant with its CA's key; the waypoint checks it with the public key of
// the CA that issued its own certificate, so a stolen waypoint holds nothing that opens anything. A grant
// is for one pod of one waypoint (its audience): one handed to a pod wearing a waypoint's label
// opens only that pod, which no other pod's name can be, and only until it expires.
//
// The grant is a JWS in compact form (RFC 7515) carrying JWT claims (RFC 7519: aud, iat, exp),
// signed with the key of the CA that signs its cluster's certificates. A waypoint checks it with the
// key of the certificate that issued its own certificate (debugGrantSigners), not with its trust
// bundle: clusters of one mesh share the root (each has its own intermediate, Istio's plug-in CA),
// so a grant any CA under the root signed would let a holder of one cluster's token open every
// cluster's waypoints (CertificateAuthority.issued says the same of node certificates). The grant
// carries no certificate (no x5c): the waypoint already knows the one key it takes, so there is no
// chain to walk, no CA:TRUE to check and no size that depends on the chain. A workload's,
// node's or gateway's key signs no grant: it is not that key. Signed bytes start with the
// base64url of a JSON header, never with a DER SEQUENCE, so a grant's signature is never a
// certificate's.
import { sign, type KeyObject, type X509Certificate } from 'node:crypto';
import { JWS_ALGS, decodeCompactJws, isJwsAlg, jwsKeyFits, verifyJws, type JwsAlg } from './jws.ts';
import { issuerOf } from './x509.ts';

/** The request header a waypoint's /debug paths want a grant in. */
export const DEBUG_GRANT_HEADER = 'weft-debug-grant';
/** The JWS `typ` of a grant (RFC 7515 4.1.9): nothing else signed by the CA passes for one. */
export const DEBUG_GRANT_TYPE = 'weft-debug-grant+jwt';
/** How long a grant the controller signs lasts. */
const DEBUG_GRANT_LIFETIME_MS = 5 * 60_000;
/** The longest lifetime a waypoint accepts (a grant lasting longer was not made by a Weft controller). */
const MAX_DEBUG_GRANT_LIFETIME_MS = 10 * 60_000;
/** Clock skew allowed between the controller and a waypoint, as certificates are backdated (lib/identity/ca.ts). */
const DEBUG_GRANT_SKEW_MS = 60_000;
/** Longest grant a waypoint reads (one the controller signs is under 400 characters, whatever its CA's chain). */
const MAX_DEBUG_GRANT_CHARS = 2_048;

/**
 * The audience of a grant for pod `pod` of waypoint `name` in `namespace`: the grant opens that
 * replica only (a waypoint knows its pod's name, POD_NAME; two pods of a namespace never share one).
 */
export function debugGrantAudience(namespace: string, name: string, pod: string): string {
  return `waypoint-debug:${namespace}/${name}/${pod}`;
}

/**
 * Why a waypoint refused a grant; stable words (metric labels): `missing` (no header), `malformed`
 * (not a grant: encoding, header, claims or lifetime), `untrusted` (the waypoint knows no CA that
 * issued its certificate, so takes no grant), `signature` (the signature does not verify with the
 * key of the CA that issued this waypoint's certificate: forged, or signed by another cluster's CA,
 * a workload's key, a CA outside the mesh), `audience` (a grant for another waypoint), `expired`
 * (or not valid yet).
 */
export type DebugGrantRefusal = 'missing' | 'malformed' | 'untrusted' | 'signature' | 'audience' | 'expired';

/** A grant a waypoint refused, with what to tell the operator. */
export class DebugGrantError extends Error {
  readonly reason: DebugGrantRefusal;
  constructor(reason: DebugGrantRefusal, message: string) {
    super(message);
    this.name = 'DebugGrantError';
    this.reason = reason;
  }
}

/** The algorithms of a grant: those of the keys a CA signs with (lib/identity/jws.ts checks each). */
const ALGORITHMS: readonly JwsAlg[] = ['ES256', 'ES384', 'RS256'];

function algorithmOf(key: KeyObject): JwsAlg {
  for (const alg of ALGORITHMS) if (jwsKeyFits(key, alg)) return alg;
  throw new Error(`a debug grant cannot be signed with a ${key.asymmetricKeyType ?? 'unknown'} ${key.asymmetricKeyDetails?.namedCurve ?? ''} key; the CA key must be EC P-256/P-384 or RSA`);
}

const b64url = (b: Buffer | string): string => Buffer.from(b).toString('base64url');

/**
 * A grant for `audience`, valid from `now` for DEBUG_GRANT_LIFETIME_MS, signed with `key` (the
 * CA's signing key). The CA's one caller: CertificateAuthority.signDebugGrant.
 */
export function encodeDebugGrant(key: KeyObject, audience: string, now: number): { grant: string; expires: Date } {
  const alg = algorithmOf(key);
  const iat = Math.floor(now / 1000);
  const exp = Math.floor((now + DEBUG_GRANT_LIFETIME_MS) / 1000);
  const input = `${b64url(JSON.stringify({ alg, typ: DEBUG_GRANT_TYPE }))}.${b64url(JSON.stringify({ aud: audience, iat, exp }))}`;
  const signature = sign(JWS_ALGS[alg].hash, Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
  return { grant: `${input}.${b64url(signature)}`, expires: new Date(exp * 1000) };
}

/**
 * Checks `grant` for `audience` at `now` against `signers`: the public keys of the CA that issued
 * this waypoint's certificate (and, for a short overlap after a rotation, the one before;
 * debugGrantSigners). Returns its expiry (`exp`) and `until`, the instant it stops opening anything
 * here (`exp` and the clock skew allowed: a request is refused from then on, and a stream it opened
 * is ended then, lib/debug-http.ts), or throws DebugGrantError naming why it opens nothing.
 * The cheap checks (form, audience, lifetime, expiry) come before the signature.
 */
export function verifyDebugGrant(grant: string | undefined, audience: string, signers: readonly KeyObject[], now: number = Date.now()): { expires: Date; until: number } {
  if (grant === undefined || grant === '') throw new DebugGrantError('missing', `no grant in the ${DEBUG_GRANT_HEADER} header`);
  const jws = decodeCompactJws(grant, MAX_DEBUG_GRANT_CHARS);
  if ('error' in jws) throw new DebugGrantError('malformed', `the grant is not a compact JWS: ${jws.why}`);
  const { header, payload } = jws;
  if (header['typ'] !== DEBUG_GRANT_TYPE) throw new DebugGrantError('malformed', `the grant's typ is not ${DEBUG_GRANT_TYPE}`);
  const alg = header['alg'];
  if (!isJwsAlg(alg) || !ALGORITHMS.includes(alg)) throw new DebugGrantError('malformed', `the grant's alg is not one of ${ALGORITHMS.join(', ')}`);
  const { aud, iat, exp } = payload;
  if (typeof aud !== 'string' || typeof iat !== 'number' || typeof exp !== 'number' || !Number.isFinite(iat) || !Number.isFinite(exp)) throw new DebugGrantError('malformed', 'the grant\'s claims want aud (a string), iat and exp (numbers)');
  if (exp - iat > MAX_DEBUG_GRANT_LIFETIME_MS / 1000 || exp < iat) throw new DebugGrantError('malformed', `the grant lasts ${exp - iat} s, more than ${MAX_DEBUG_GRANT_LIFETIME_MS / 1000} s`);
  if (aud !== audience) throw new DebugGrantError('audience', `the grant is for ${JSON.stringify(aud.slice(0, 256))}, not ${audience}`);
  const until = exp * 1000 + DEBUG_GRANT_SKEW_MS;
  if (now > until) throw new DebugGrantError('expired', `the grant expired at ${new Date(exp * 1000).toISOString()}`);
  if (iat * 1000 > now + DEBUG_GRANT_SKEW_MS) throw new DebugGrantError('expired', `the grant is not valid before ${new Date(iat * 1000).toISOString()}`);
  if (signers.length === 0) throw new DebugGrantError('untrusted', 'this waypoint knows no CA that issued its certificate (its issuer is neither in its chain nor in its trust bundle), so it takes no grant');
  if (!signers.some((key) => verifyJws(alg, key, jws.signingInput, jws.signature))) {
    throw new DebugGrantError('signature', `the grant's signature does not verify with the key of the CA that issued this waypoint's certificate (only this cluster's controller signs grants for it)`);
  }
  return { expires: new Date(exp * 1000), until };
}

/**
 * The keys a waypoint takes grants from, given its credentials (read at each request; they change
 * at renewal): the public key of the certificate that issued its own (x509 issuerOf: the next in
 * its chain, else the root of its bundle that signed it), found once per certificate (or, while none is found, per
 * trust bundle), not per request. The controller's CA signs both the waypoint's certificate and its grants, so they move
 * together at a rotation: a new root renews the certificate at once, and so does a new intermediate under the same root
 * (the CA's trust-bundle stream names the certificate it signs with; IssuedIdentity.setTrustBundle). The issuer of the
 * certificate before is still taken for
 * MAX_DEBUG_GRANT_LIFETIME_MS after the change, so a grant signed just before it keeps working.
 */
export function debugGrantSigners(credentials: () => { certChain: readonly string[]; trustBundle: readonly string[] }, clock: () => number = Date.now): () => readonly KeyObject[] {
  let leaf: string | undefined;
  let bundle: readonly string[] | undefined;
  let issuer: { cert: X509Certificate; key: KeyObject } | undefined;
  let previous: { cert: X509Certificate; key: KeyObject; until: number } | undefined;
  return () => {
    const c = credentials();
    if (c.certChain[0] !== leaf || (!issuer && c.trustBundle !== bundle)) {
      let cert: X509Certificate | undefined;
      try {
        cert = issuerOf(c.certChain, c.trustBundle);
      } catch {
        cert = undefined;
      }
      if (issuer && cert && !issuer.cert.raw.equals(cert.raw)) previous = { ...issuer, until: clock() + MAX_DEBUG_GRANT_LIFETIME_MS };
      leaf = c.certChain[0];
      bundle = c.trustBundle;
      issuer = cert && { cert, key: cert.publicKey };
    }
    if (previous && clock() > previous.until) previous = undefined;
    return [...(issuer ? [issuer.key] : []), ...(previous ? [previous.key] : [])];
  };
}
