// RequestAuthentication (JWT), Istio's semantics as Envoy's jwt_authn applies them
// (https://istio.io/latest/docs/reference/config/security/request_authentication/): the one place a
// token is found, checked and turned into request attributes, for the waypoint to enforce and the
// controller to validate JWKS with.
//
//  - A request without a token is admitted with no request principal; an AuthorizationPolicy
//    requires one (`requestPrincipals: ["*"]`).
//  - A request with a token that fails any check is refused: 401 (Envoy: 403 when only the
//    audience is wrong, JwtAudienceNotAllowed). So is one with two different tokens (Envoy
//    JwtMultipleTokens): which one would name the caller is not defined (Istio: "requests with
//    multiple tokens ... the output principal of such requests is undefined"); the same token in
//    two places is one token.
//  - A CORS preflight is not checked (Istio sets Envoy's bypass_cors_preflight).
//  - Asymmetric algorithms only (RS256/384/512, PS256/384/512, ES256/384/512, EdDSA), each bound to
//    the key type it needs; `none` and HS* are refused, so an RSA public key can never serve as an
//    HMAC secret (key confusion).
//  - `exp` and `nbf` are checked with Envoy's default clock skew (60 s).
//
// Pure: no I/O. Each rule's JWKS is imported once (a WeakMap keyed by the rule object, as
// lib/policy/authz.ts compiles policies), a service's rules are compiled once into what they read
// (a WeakMap keyed by the rules list), and verified tokens are remembered until their exp (a bounded
// LRU, Envoy's jwt_cache_config); a token costs at most MAX_KEYS_PER_TOKEN signature checks.
import { createPublicKey, type KeyObject } from 'node:crypto';
import { JWS_ALGS, decodeCompactJws, isJwsAlg, jwsKeyFits, verifyJws, type JsonValue, type JwsAlg } from '../identity/jws.ts';
import { FIELD_BYTES_BAD, fieldBytes } from '../field-bytes.ts';

/** One `jwtRules[]` entry as the controller compiles it (keys inline). */
export interface JwtRule {
  issuer: string;
  /** Empty or absent: the audience is not checked (Istio). */
  audiences?: string[];
  /** The JWKS document (JSON text). */
  jwks: string;
  fromHeaders?: Array<{ name: string; prefix?: string }>;
  fromParams?: string[];
  fromCookies?: string[];
  /** Default false: the header the token came in is removed before forwarding. */
  forwardOriginalToken?: boolean;
  /** The verified token's payload (base64url, as received) in this header. */
  outputPayloadToHeader?: string;
  outputClaimToHeaders?: Array<{ header: string; claim: string }>;
  /** Claims, besides DEFAULT_SPACE_DELIMITED_CLAIMS, that policies read as lists of their space-separated words (Istio 1.26+). */
  spaceDelimitedClaims?: string[];
}

/**
 * The claims Istio always has Envoy's jwt_authn turn from a space-delimited string into a list for
 * policy (pilot authn buildSpaceDelimitedClaims, normalize_payload_in_metadata; RFC 8693's scope).
 */
export const DEFAULT_SPACE_DELIMITED_CLAIMS: ReadonlySet<string> = new Set(['permission', 'scope']);

const spaceDelimitedSets = new WeakMap<JwtRule, ReadonlySet<string>>();

/** A rule's space-delimited claims with Istio's defaults, one set per rule object (a config's lifetime); undefined: the defaults alone. */
function spaceDelimitedOf(rule: JwtRule): ReadonlySet<string> | undefined {
  if (!rule.spaceDelimitedClaims?.length) return undefined;
  let set = spaceDelimitedSets.get(rule);
  if (!set) {
    set = new Set([...DEFAULT_SPACE_DELIMITED_CLAIMS, ...rule.spaceDelimitedClaims]);
    spaceDelimitedSets.set(rule, set);
  }
  return set;
}

/** Envoy's clock_skew_seconds default. */
export const JWT_CLOCK_SKEW_SECONDS = 60;
/**
 * The longest token looked at: the waypoint's header bound (waypoint/src/engine.ts
 * DEFAULT_MAX_HEADER_BYTES); a longer one cannot have come in a header, and is refused unparsed.
 */
export const MAX_TOKEN_BYTES = 16 * 1024;
/** The shortest RSA modulus accepted in a JWKS. */
export const MIN_RSA_BITS = 2048;
/** The largest JWKS document accepted (Istio has none; a waypoint holds every rule's keys). */
export const MAX_JWKS_BYTES = 64 * 1024;
/**
 * The most signature checks one token costs: a token without `kid` fits every key of its type, and
 * the caller chooses to send one (Envoy tries them all; a JWKS of 64 KiB holds a hundred RSA keys).
 */
export const MAX_KEYS_PER_TOKEN = 8;
/** Verified tokens remembered until their `exp` (Envoy jwt_cache_config, jwt_cache_size default 100). */
export const JWT_CACHE_SIZE = 100;

/** Why a token was refused: stable strings, the label of weft_waypoint_jwt_refused_total. */
export type JwtRefusal =
  | 'malformed'
  | 'too-large'
  | 'multiple-tokens'
  | 'unsupported-alg'
  | 'unknown-issuer'
  | 'unknown-kid'
  | 'bad-signature'
  | 'expired'
  | 'not-yet-valid'
  | 'audience-not-allowed'
  | 'bad-claim';

/** Envoy's status strings (jwt_verify_lib getStatusString), the body of the refusal. */
const ENVOY_STATUS: Record<JwtRefusal, string> = {
  'malformed': 'Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections',
  'too-large': 'Jwt is too large',
  'multiple-tokens': 'Found multiple Jwt tokens',
  'unsupported-alg': 'Jwt header [alg] field value is invalid',
  'unknown-issuer': 'Jwt issuer is not configured',
  'unknown-kid': "Jwks doesn't have key to match kid or alg from Jwt",
  'bad-signature': 'Jwt verification fails',
  'expired': 'Jwt is expired',
  'not-yet-valid': 'Jwt not yet valid',
  'audience-not-allowed': 'Audiences in Jwt are not allowed',
  'bad-claim': 'Jwt payload has a registered claim of the wrong type',
};

export type { JsonValue } from '../identity/jws.ts';

/** What a verified token says, for AuthorizationPolicy (`request.auth.*`, `requestPrincipals`). */
export interface RequestAuth {
  /**
   * `iss` and `sub`, Istio's request principal `<iss>/<sub>` kept in its two parts: a policy's
   * value is split at its last `/` and each part matched on its own (authz.ts requestPrincipalMatch).
   */
  issuer: string;
  /** Absent when the token has no `sub`: such a token matches no request principal, `*` included. */
  subject?: string;
  audiences: string[];
  /** `azp`, when it is a string. */
  presenter?: string;
  claims: { readonly [k: string]: JsonValue };
  /**
   * The words of each top-level space-delimited claim (DEFAULT_SPACE_DELIMITED_CLAIMS and the rule's
   * spaceDelimitedClaims) that is a string, split once when the token is verified: what
   * `request.auth.claims[...]` reads for it (the claim headers keep the token's text).
   */
  claimWords?: ReadonlyMap<string, readonly string[]>;
}

/** RequestAuth.claimWords of a token's claims, for the space-delimited claim names `names`. */
export function claimWordsOf(claims: RequestAuth['claims'], names: ReadonlySet<string> = DEFAULT_SPACE_DELIMITED_CLAIMS): ReadonlyMap<string, readonly string[]> | undefined {
  let out: Map<string, readonly string[]> | undefined;
  for (const name of names) {
    const v = Object.hasOwn(claims, name) ? claims[name] : undefined;
    if (typeof v === 'string') (out ??= new Map()).set(name, v.split(' ').filter((w) => w !== ''));
  }
  return out;
}

/** Edits of the request headers a verification leads to (before forwarding; route matching sees them). */
export interface HeaderEditsOut {
  remove: string[];
  set: Array<{ name: string; value: string }>;
}

export type JwtOutcome =
  | { kind: 'none'; edits: HeaderEditsOut }
  | { kind: 'verified'; auth: RequestAuth; issuer: string; edits: HeaderEditsOut }
  | { kind: 'refused'; reason: JwtRefusal; status: 401 | 403; message: string; detail: string; issuer?: string };

/** The parts of a request a token may come in. */
export interface TokenSources {
  /** Lower-case names; repeated fields as arrays (each value counts as a token). */
  headers: Readonly<Record<string, string | readonly string[] | undefined>>;
  /** The request target's query (after `?`), or ''. */
  query: string;
  /** The method, for the CORS preflight bypass; absent: not a preflight. */
  method?: string;
}

// ---------------------------------------------------------------------------------------------
// Keys

export const JWT_ALGS: readonly JwsAlg[] = Object.keys(JWS_ALGS) as JwsAlg[];

interface Jwk {
  kid?: string;
  alg?: string;
  key: KeyObject;
}

/** Can key `k` verify `alg` (RFC 7518: the key type each algorithm needs, jws.ts; a key's own `alg` binds it)? */
function keyFits(k: Jwk, alg: JwsAlg): boolean {
  return (k.alg === undefined || k.alg === alg) && jwsKeyFits(k.key, alg);
}

/** A JWKS document's usable keys, and why each other key was left out. */
export interface ParsedJwks {
  keys: Jwk[];
  /** `keys[i]: <why>` of each key left out. */
  skipped: string[];
}

const jwksCache = new WeakMap<JwtRule, ParsedJwks | Error>();

/**
 * Parses a JWKS document into public keys: RSA, EC (P-256/384/521) and OKP (Ed25519/Ed448) keys
 * for signing. A key that cannot be used (another kty, a bad key, an RSA modulus under 2048 bits) is
 * left out and the others serve, as Envoy's jwt_verify_lib skips such keys (Jwks::createFrom: only
 * "no valid keys" fails the document). A symmetric (`oct`) key or one with private parts refuses the
 * whole document: a shared secret or private key in a policy object would let anyone who reads it
 * mint tokens, and its author should hear so. Throws naming the key.
 */
export function parseJwks(text: string): ParsedJwks {
  if (Buffer.byteLength(text) > MAX_JWKS_BYTES) throw new Error(`is larger than ${MAX_JWKS_BYTES} bytes`);
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new Error(`is not JSON: ${(e as Error).message}`);
  }
  const keys = (doc as { keys?: unknown } | null)?.keys;
  if (typeof doc !== 'object' || doc === null || !Array.isArray(keys)) throw new Error('is not a JWKS (an object with a "keys" list)');
  const out: Jwk[] = [];
  const skipped: string[] = [];
  keys.forEach((raw, i) => {
    const k = raw as Record<string, unknown>;
    const where = `keys[${i}]`;
    const skip = (why: string): void => { skipped.push(`${where}${why}`); };
    if (typeof k !== 'object' || k === null) return skip(' is not an object');
    if (k.kty === 'oct') throw new Error(`${where}: symmetric (oct) keys are not accepted: HS* tokens are refused, a shared secret in a policy lets its readers mint tokens`);
    if (k.d !== undefined || k.p !== undefined) throw new Error(`${where} holds a private key; a JWKS lists public keys only`);
    if (k.kty !== 'RSA' && k.kty !== 'EC' && k.kty !== 'OKP') return skip(`: kty ${JSON.stringify(k.kty)} is not RSA, EC or OKP`);
    if (k.use !== undefined && k.use !== 'sig') return undefined;
    if (k.kid !== undefined && typeof k.kid !== 'string') return skip('.kid is not a string');
    if (k.alg !== undefined && !(JWT_ALGS as readonly unknown[]).includes(k.alg)) return skip(`.alg ${JSON.stringify(k.alg)} is not one of ${JWT_ALGS.join(', ')}`);
    let key: KeyObject;
    try {
      key = createPublicKey({ key: k as never, format: 'jwk' });
    } catch (e) {
      return skip(` is not a usable ${k.kty} public key: ${(e as Error).message}`);
    }
    const bits = key.asymmetricKeyDetails?.modulusLength;
    if (k.kty === 'RSA' && (bits === undefined || bits < MIN_RSA_BITS)) return skip(`: an RSA key of ${bits ?? 0} bits; at least ${MIN_RSA_BITS} (NIST SP 800-131A), a shorter one can be factored`);
    out.push({ key, ...(typeof k.kid === 'string' ? { kid: k.kid } : {}), ...(typeof k.alg === 'string' ? { alg: k.alg } : {}) });
    return undefined;
  });
  if (out.length === 0) throw new Error(`has no usable signing key${skipped.length > 0 ? ` (${skipped.join('; ')})` : ''}`);
  return { keys: out, skipped };
}

/**
 * What is wrong with a `jwksUri` (undefined when nothing): an absolute http or https URL with a
 * host, as Istio's ParseJwksURI takes (pkg/config/security: 'URI scheme %q is not supported').
 */
export function jwksUriProblem(uri: string): string | undefined {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    return `"${uri.slice(0, 200)}" is not a URL`;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return `URI scheme "${url.protocol.slice(0, -1)}" is not supported: http or https`;
  if (url.hostname === '') return 'names no host';
  return undefined;
}

/** A rule's keys, parsed once per rule object (the waypoint's snapshot check and its requests share them). */
function keysOf(rule: JwtRule): ParsedJwks | Error {
  let keys = jwksCache.get(rule);
  if (!keys) {
    try {
      keys = parseJwks(rule.jwks);
    } catch (e) {
      keys = e as Error;
    }
    jwksCache.set(rule, keys);
  }
  return keys;
}

/**
 * What is wrong with a rule's JWKS, for the waypoint's config report: `error` when no key of it
 * verifies anything (its tokens are refused), `skipped` for keys left out while others serve.
 */
export function jwksProblem(rule: JwtRule): { error?: string; skipped: string[] } {
  const keys = keysOf(rule);
  return keys instanceof Error ? { error: keys.message, skipped: [] } : { skipped: keys.skipped };
}

// ---------------------------------------------------------------------------------------------
// Finding tokens

interface Location {
  /**
   * `header:<name>:<prefix>`, `param:<name>` or `cookie:<name>`. A header location is its name and
   * prefix, as Envoy's extractor keys it (header + value_prefix): two rules reading one header with
   * different prefixes each read it.
   */
  id: string;
  header?: { name: string; prefix: string };
  param?: string;
  cookie?: string;
}

/** Istio's default locations: `Authorization: Bearer <token>`, then the `access_token` parameter. */
const DEFAULT_LOCATIONS: readonly Location[] = [
  { id: 'header:authorization:Bearer ', header: { name: 'authorization', prefix: 'Bearer ' } },
  { id: 'param:access_token', param: 'access_token' },
];

function locationsOf(rule: JwtRule): Location[] {
  const out: Location[] = [];
  for (const h of rule.fromHeaders ?? []) {
    const name = h.name.toLowerCase();
    const prefix = h.prefix ?? '';
    out.push({ id: `header:${name}:${prefix}`, header: { name, prefix } });
  }
  for (const p of rule.fromParams ?? []) out.push({ id: `param:${p}`, param: p });
  for (const c of rule.fromCookies ?? []) out.push({ id: `cookie:${c}`, cookie: c });
  return out.length > 0 ? out : [...DEFAULT_LOCATIONS];
}

function valuesOf(v: string | readonly string[] | undefined): readonly string[] {
  return v === undefined ? [] : typeof v === 'string' ? [v] : v;
}


function cookieValues(headers: TokenSources['headers'], name: string): string[] {
  const out: string[] = [];
  for (const line of valuesOf(headers['cookie'])) {
    for (const pair of line.split(';')) {
      const eq = pair.indexOf('=');
      if (eq >= 0 && pair.slice(0, eq).trim() === name) out.push(pair.slice(eq + 1).trim().replace(/^"(.*)"$/, '$1'));
    }
  }
  return out;
}

/**
 * The token one header value holds for one location, as Envoy's extractor reads it (jwt_authn
 * extractor.cc extract and extractJWT): the prefix found anywhere in the value as written (absl
 * find: `bearer <token>` holds none for `Bearer `), the token from the first base64url or `.`
 * character after it to the end of the value (Envoy stopped cutting it at the next other character
 * in envoyproxy/envoy#28678, so `<token> junk` is a malformed token, never a valid one), the whole
 * value if no such character follows; a location without prefix takes the whole value. Every location
 * reading a header reads it on its own: `Token <forged>, Bearer <valid>` holds two tokens.
 */
function headerToken(value: string, prefix: string): { token: string; variant: boolean } | undefined {
  if (prefix === '') return { token: value, variant: false };
  const at = value.indexOf(prefix);
  if (at < 0) return undefined;
  const start = value.slice(at + prefix.length).search(JWT_CHAR);
  const token = start < 0 ? value : value.slice(at + prefix.length + start);
  // Stricter than Envoy: a case variant of the prefix before the one found (`bearer <forged>,
  // Bearer <valid>`) is a second token to a backend reading the scheme case-insensitively (RFC 9110
  // section 11.1), which forwardOriginalToken would hand the whole value, the forged token first;
  // the caller refuses it as two tokens. One after it is inside the token, which is then malformed.
  const variant = asciiLower(value).indexOf(asciiLower(prefix)) !== at;
  return { token, variant };
}

/** `s` with ASCII letters in lower case only, as HTTP compares a case-insensitive token (RFC 9110 section 5.6.2). */
function asciiLower(s: string): string {
  return s.replace(/[A-Z]+/g, (m) => m.toLowerCase());
}

/** A character of a compact JWS (RFC 4648 section 5 base64url, and the dots between its parts). */
const JWT_CHAR = /[A-Za-z0-9_.-]/;

/** The tokens at a parameter or cookie location. */
function tokensAt(loc: Location, src: TokenSources, query: URLSearchParams | undefined): string[] {
  if (loc.param !== undefined) return (query?.getAll(loc.param) ?? []).filter((t) => t !== '');
  return cookieValues(src.headers, loc.cookie!).filter((t) => t !== '');
}

// ---------------------------------------------------------------------------------------------
// Checking one token

function own(o: { readonly [k: string]: JsonValue }, k: string): JsonValue | undefined {
  return Object.hasOwn(o, k) ? o[k] : undefined;
}

type Check = { ok: true; auth: RequestAuth; payloadPart: string } | { ok: false; reason: JwtRefusal; why: string };

/** Checks a token against the rules that may verify it (those whose locations it was found in). */
function checkToken(token: string, candidates: readonly JwtRule[], nowSeconds: number): Check & { rule?: JwtRule; issuer?: string } {
  const jws = decodeCompactJws(token, MAX_TOKEN_BYTES);
  if ('error' in jws) return { ok: false, reason: jws.error, why: `token: ${jws.why}` };
  const { header, payload } = jws;
  const alg = own(header, 'alg');
  if (!isJwsAlg(alg)) {
    return { ok: false, reason: 'unsupported-alg', why: `alg ${JSON.stringify(alg)} (only ${JWT_ALGS.join(', ')})` };
  }
  const kid = own(header, 'kid');
  if (kid !== undefined && typeof kid !== 'string') return { ok: false, reason: 'malformed', why: 'kid is not a string' };
  const iss = own(payload, 'iss');
  if (typeof iss !== 'string') return { ok: false, reason: 'unknown-issuer', why: 'no iss claim' };
  const rules = candidates.filter((r) => r.issuer === iss);
  if (rules.length === 0) return { ok: false, reason: 'unknown-issuer', why: `issuer ${JSON.stringify(iss)} is not configured for where the token was found`, issuer: iss };
  // Registered claims of the wrong type are refused, as Envoy's parser does.
  const sub = own(payload, 'sub');
  const aud = own(payload, 'aud');
  const exp = own(payload, 'exp');
  const nbf = own(payload, 'nbf');
  const iat = own(payload, 'iat');
  const azp = own(payload, 'azp');
  if (sub !== undefined && typeof sub !== 'string') return { ok: false, reason: 'bad-claim', why: 'sub is not a string', issuer: iss };
  if (aud !== undefined && typeof aud !== 'string' && !(Array.isArray(aud) && aud.every((a) => typeof a === 'string'))) return { ok: false, reason: 'bad-claim', why: 'aud is not a string or a list of strings', issuer: iss };
  if (exp !== undefined && (typeof exp !== 'number' || !Number.isFinite(exp))) return { ok: false, reason: 'bad-claim', why: 'exp is not a number', issuer: iss };
  if (nbf !== undefined && (typeof nbf !== 'number' || !Number.isFinite(nbf))) return { ok: false, reason: 'bad-claim', why: 'nbf is not a number', issuer: iss };
  // Envoy's jwt_verify_lib: JwtPayloadParseErrorIatNotInteger.
  if (iat !== undefined && (typeof iat !== 'number' || !Number.isFinite(iat))) return { ok: false, reason: 'bad-claim', why: 'iat is not a number', issuer: iss };
  let last: Check & { rule?: JwtRule; issuer?: string } = { ok: false, reason: 'unknown-kid', why: `no key of issuer ${iss} fits kid ${JSON.stringify(kid ?? null)} and alg ${alg}`, issuer: iss };
  let tries = MAX_KEYS_PER_TOKEN;
  for (const rule of rules) {
    if (tries === 0) break;
    const parsed = keysOf(rule);
    if (parsed instanceof Error) continue;
    const keys = parsed.keys;
    // Envoy: a token's kid selects keys with that kid (a key without one fits any); the key type must
    // fit alg. The keys it names come first, so keys without a kid cannot crowd them out of the cap.
    const fitting = keys.filter((k) => (kid === undefined || k.kid === undefined || k.kid === kid) && keyFits(k, alg));
    const fit = (kid === undefined ? fitting : [...fitting.filter((k) => k.kid === kid), ...fitting.filter((k) => k.kid === undefined)]).slice(0, tries);
    if (fit.length === 0) continue;
    tries -= fit.length;
    if (!fit.some((k) => verifyJws(alg, k.key, jws.signingInput, jws.signature))) {
      const capped = tries === 0 ? ` (the first ${MAX_KEYS_PER_TOKEN} keys that fit; a token names its key by kid)` : '';
      last = { ok: false, reason: 'bad-signature', why: `signature does not verify with the keys of issuer ${iss}${capped}`, issuer: iss };
      continue;
    }
    if (typeof exp === 'number' && nowSeconds > exp + JWT_CLOCK_SKEW_SECONDS) return { ok: false, reason: 'expired', why: `exp ${exp} is past`, issuer: iss };
    if (typeof nbf === 'number' && nowSeconds + JWT_CLOCK_SKEW_SECONDS < nbf) return { ok: false, reason: 'not-yet-valid', why: `nbf ${nbf} is ahead`, issuer: iss };
    const audiences = aud === undefined ? [] : typeof aud === 'string' ? [aud] : (aud as string[]);
    if (rule.audiences && rule.audiences.length > 0 && !audiencesAllowed(rule, audiences)) {
      last = { ok: false, reason: 'audience-not-allowed', why: `aud ${JSON.stringify(audiences)} names none of ${JSON.stringify(rule.audiences)}`, issuer: iss };
      continue;
    }
    const claimWords = claimWordsOf(payload, spaceDelimitedOf(rule));
    const auth: RequestAuth = {
      issuer: iss, ...(typeof sub === 'string' ? { subject: sub } : {}), audiences, claims: payload, ...(typeof azp === 'string' ? { presenter: azp } : {}),
      ...(claimWords ? { claimWords } : {}),
    };
    return { ok: true, auth, payloadPart: jws.payloadPart, rule, issuer: iss };
  }
  return last;
}

/**
 * Envoy's CheckAudience (source/common/jwt/check_audience.cc): an audience is compared without an
 * `http://` or `https://` prefix and one trailing `/`, in the rule and in the token alike, "because
 * users easily add a wrong scheme and trailing slash"; nothing else is taken off.
 */
function sanitizeAudience(aud: string): string {
  const start = aud.startsWith('http://') ? 7 : aud.startsWith('https://') ? 8 : 0;
  return aud.slice(start, aud.endsWith('/') ? -1 : undefined);
}

const audienceSets = new WeakMap<JwtRule, ReadonlySet<string>>();

/** Whether a token's audiences name one of the rule's (set once per rule object, a config's lifetime). */
function audiencesAllowed(rule: JwtRule, audiences: readonly string[]): boolean {
  let set = audienceSets.get(rule);
  if (!set) {
    set = new Set((rule.audiences ?? []).map(sanitizeAudience));
    audienceSets.set(rule, set);
  }
  return audiences.some((a) => set.has(sanitizeAudience(a)));
}

// ---------------------------------------------------------------------------------------------
// The request

/**
 * The output headers of `rules` (payload and claim headers): removed from every request first, so a
 * caller can never supply them itself, token or not.
 */
function outputHeaders(rules: readonly JwtRule[]): string[] {
  const out = new Set<string>();
  for (const r of rules) {
    if (r.outputPayloadToHeader) out.add(r.outputPayloadToHeader.toLowerCase());
    for (const c of r.outputClaimToHeaders ?? []) out.add(c.header.toLowerCase());
  }
  return [...out];
}

/**
 * A claim by its path into nested claims (`["org", "team"]`), own properties only (never
 * `constructor` or `__proto__`): the one walk for outputClaimToHeaders and `request.auth.claims`.
 */
export function claimAt(claims: RequestAuth['claims'], path: readonly string[]): JsonValue | undefined {
  let v: JsonValue | undefined = claims;
  for (const seg of path) {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
    v = own(v, seg);
  }
  return v;
}

/** A claim for a header: a string, number or boolean as text; a list of those joined by `,`; else none. */
export function claimHeaderValue(claims: RequestAuth['claims'], path: string): string | undefined {
  const v = claimAt(claims, path.split('.'));
  const scalar = (x: JsonValue | undefined): string | undefined => (typeof x === 'string' ? x : typeof x === 'number' || typeof x === 'boolean' ? String(x) : undefined);
  if (Array.isArray(v)) {
    const items = v.map(scalar);
    return items.every((x) => x !== undefined) ? items.join(',') : undefined;
  }
  return scalar(v);
}

/** One location and the rules reading it. */
interface PlanEntry {
  loc: Location;
  rules: JwtRule[];
}

/** What a service's rules read, compiled once per rules list (the snapshot keeps one per service). */
interface Plan {
  /** The output headers, removed from every request. */
  outputs: string[];
  /** Header locations, each read on its own (Envoy's extractor: header + value_prefix). */
  headers: PlanEntry[];
  /** Parameter and cookie locations. */
  others: PlanEntry[];
}

const plans = new WeakMap<readonly JwtRule[], Plan>();

function planOf(rules: readonly JwtRule[]): Plan {
  let plan = plans.get(rules);
  if (plan) return plan;
  const byLocation = new Map<string, PlanEntry>();
  for (const r of rules) {
    for (const loc of locationsOf(r)) {
      const e = byLocation.get(loc.id);
      if (e) e.rules.push(r);
      else byLocation.set(loc.id, { loc, rules: [r] });
    }
  }
  const headers: PlanEntry[] = [];
  const others: PlanEntry[] = [];
  for (const e of byLocation.values()) (e.loc.header ? headers : others).push(e);
  plan = { outputs: outputHeaders(rules), headers, others };
  plans.set(rules, plan);
  return plan;
}

type Checked = Check & { rule?: JwtRule; issuer?: string };

/**
 * Verified tokens, least recently used first: a token verified for a service's rules (`plan`) at the
 * same locations is not verified again until its `exp` (Envoy's jwt_cache_config). Only verified
 * tokens are kept, so a caller sending forged ones fills nothing; the bound is global.
 */
const verified = new Map<string, { plan: Plan; where: string; result: Checked; exp?: number; nbf?: number }>();

function checkCached(token: string, plan: Plan, where: string, candidates: readonly JwtRule[], nowSeconds: number): Checked {
  const hit = verified.get(token);
  if (hit && hit.plan === plan && hit.where === where
    && !(hit.exp !== undefined && nowSeconds > hit.exp + JWT_CLOCK_SKEW_SECONDS) && !(hit.nbf !== undefined && nowSeconds + JWT_CLOCK_SKEW_SECONDS < hit.nbf)) {
    verified.delete(token);
    verified.set(token, hit);
    return hit.result;
  }
  const result = checkToken(token, candidates, nowSeconds);
  if (hit) verified.delete(token);
  if (result.ok) {
    const { exp, nbf } = result.auth.claims;
    verified.set(token, { plan, where, result, ...(typeof exp === 'number' ? { exp } : {}), ...(typeof nbf === 'number' ? { nbf } : {}) });
    if (verified.size > JWT_CACHE_SIZE) verified.delete(verified.keys().next().value!);
  }
  return result;
}

/**
 * Finds, checks and applies the tokens of a request for the rules that apply to its destination
 * (every RequestAuthentication attached to it, merged, as Istio merges them).
 */
export function authenticateRequest(rules: readonly JwtRule[], src: TokenSources, nowMs = Date.now()): JwtOutcome {
  const plan = planOf(rules);
  const edits: HeaderEditsOut = { remove: [...plan.outputs], set: [] };
  if (rules.length === 0 || isCorsPreflight(src)) return { kind: 'none', edits };
  // Every token at every location some rule reads, and the rules reading each location.
  const refuse = (reason: JwtRefusal, why: string, issuer?: string): JwtOutcome => ({
    kind: 'refused', reason, status: reason === 'audience-not-allowed' ? 403 : 401, message: ENVOY_STATUS[reason],
    detail: `${why}`, ...(issuer !== undefined ? { issuer } : {}),
  });
  const found: Array<{ token: string; loc: Location; rules: JwtRule[] }> = [];
  for (const { loc, rules: rs } of plan.headers) {
    for (const v of valuesOf(src.headers[loc.header!.name])) {
      const t = headerToken(v, loc.header!.prefix);
      if (!t?.token) continue;
      if (t.variant) return refuse('multiple-tokens', `${loc.id}: the value also holds the prefix in another case before the token`);
      found.push({ token: t.token, loc, rules: rs });
    }
  }
  const query = src.query !== '' && plan.others.some((e) => e.loc.param !== undefined) ? new URLSearchParams(src.query) : undefined;
  for (const { loc, rules: rs } of plan.others) for (const token of tokensAt(loc, src, query)) found.push({ token, loc, rules: rs });
  if (found.length === 0) return { kind: 'none', edits };
  // The same token in two places is one token; two different ones are refused, whichever would verify.
  if (new Set(found.map((f) => f.token)).size > 1) return refuse('multiple-tokens', `${found.length} tokens (${[...new Set(found.map((f) => f.loc.id))].join(', ')})`);
  const { token, loc } = found[0]!;
  // Every rule reading any of the places it came from may verify it.
  const candidates = [...new Set(found.flatMap((f) => f.rules))];
  const r = checkCached(token, plan, found.map((f) => f.loc.id).join(' '), candidates, Math.floor(nowMs / 1000));
  if (!r.ok) return refuse(r.reason, `${r.why} (token from ${loc.id})`, r.issuer);
  const rule = r.rule!;
  if (!rule.forwardOriginalToken) for (const f of found) if (f.loc.header) edits.remove.push(f.loc.header.name);
  if (rule.outputPayloadToHeader) edits.set.push({ name: rule.outputPayloadToHeader.toLowerCase(), value: r.payloadPart });
  for (const c of rule.outputClaimToHeaders ?? []) {
    // Its UTF-8 bytes, as Envoy writes it (lib/field-bytes.ts): a header value is sent one byte a character.
    const v = claimHeaderValue(r.auth.claims, c.claim);
    const bytes = v === undefined ? undefined : fieldBytes(v);
    if (bytes !== undefined && !FIELD_BYTES_BAD.test(bytes)) edits.set.push({ name: c.header.toLowerCase(), value: bytes });
  }
  return { kind: 'verified', auth: r.auth, issuer: r.issuer!, edits };
}

/**
 * A CORS preflight (OPTIONS with Origin and Access-Control-Request-Method) is not checked: Istio
 * configures Envoy's jwt_authn with bypass_cors_preflight (pilot authn builder), since a browser
 * sends no credentials on a preflight.
 */
function isCorsPreflight(src: TokenSources): boolean {
  const one = (n: string): string | undefined => valuesOf(src.headers[n])[0];
  return src.method === 'OPTIONS' && !!one('origin') && !!one('access-control-request-method');
}

/** Envoy's response code details for a refusal: `jwt_authn_access_denied{<status, spaces as _>}`. */
export function refusalDetails(message: string): string {
  return `jwt_authn_access_denied{${message.replace(/\s/g, '_')}}`;
}
