// Normalizing the request target once, before routing and policy; the normalized target is also what
// is forwarded, so a backend never sees a path other than the one that was judged.
//
// Modes, as Istio's MeshConfig `pathNormalization` (istio.io "Authorization Policy Normalization"):
//   NONE                      nothing beyond turning absolute-form into origin-form;
//   BASE (default)            RFC 3986 section 6.2.2: `%XX` of unreserved characters decoded (once,
//                             never twice), remaining `%xx` upper-cased, the raw characters
//                             RFC 3986 wants encoded (`"`, `<`, `{`...: encodeRawPathChars) encoded,
//                             `\` read as `/` (Envoy normalize_path), dot segments removed
//                             (RFC 3986 section 5.2.4);
//   MERGE_SLASHES             BASE, then `//` runs merged (Envoy merge_slashes);
//   DECODE_AND_MERGE_SLASHES  `%2F` and `%5C` decoded first (Envoy path_with_escaped_slashes_action
//                             UNESCAPE_AND_FORWARD), then MERGE_SLASHES.
// In the other modes an encoded slash or backslash is kept encoded (KEEP_UNCHANGED, Istio's default)
// or the request is refused with 400 (REJECT_REQUEST), per `escapedSlashes`.
//
// Always (every mode): `%00` is refused (Istio), as is a malformed `%`, a byte outside the URI
// character set (RFC 3986 appendix A), a fragment, and a target that is none of origin-form,
// absolute-form or asterisk-form (RFC 9112 section 3.2). An absolute-form target becomes origin-form
// and its authority must name the same host and port as Host (or :authority). Host (or :authority,
// its HTTP/2 form: RFC 9113 section 8.3.1) must be uri-host [ ":" port ] (RFC 9110 section 7.2):
// policy `hosts` matches it as written, and an HTTP/1.1 backend gets it as its Host, so a value that
// parsers read different ways (`admin@reviews`, `reviews:80:81`) never reaches either. This is
// stricter than Envoy, which checks the characters only (nghttp2's rule, and `@` allowed over
// HTTP/1.1), so that the check is the same for both protocols. Methods are compared
// case-sensitively (RFC 9110 section 9.1); one with a lower-case letter is refused, as Istio does, so
// that a DENY on `DELETE` cannot be stepped around with an HTTP/2 `delete`.
import { pathOf } from '../../lib/policy/authz.ts';
import { isToken, isValidHost, splitHostPort } from './headers.ts';
import { clip } from '../../lib/log.ts';
import { encodeRawPathChars, type EscapedSlashesAction, type PathNormalization } from '../../lib/model/mesh.ts';

// The mode names are the mesh model's (the controller sets them mesh-wide, lib/model/mesh.ts).
export { PATH_NORMALIZATIONS, ESCAPED_SLASHES_ACTIONS, type PathNormalization, type EscapedSlashesAction } from '../../lib/model/mesh.ts';

export interface NormalizeOptions {
  /** Default BASE. */
  pathNormalization: PathNormalization;
  /** Default KEEP_UNCHANGED. */
  escapedSlashes: EscapedSlashesAction;
}

export const DEFAULT_NORMALIZE_OPTIONS: NormalizeOptions = { pathNormalization: 'BASE', escapedSlashes: 'KEEP_UNCHANGED' };

/** Why a request target or method was refused; stable strings, used in access-log details. */
export type TargetRejection =
  | 'invalid_character' | 'invalid_percent_encoding' | 'null_character' | 'escaped_slash' | 'fragment'
  | 'invalid_request_target' | 'absolute_form_userinfo' | 'absolute_form_host_mismatch' | 'method_not_uppercase'
  | 'invalid_method' | 'invalid_host';

export type NormalizeResult =
  | { ok: true; path: string }
  | { ok: false; reason: TargetRejection; message: string };

const UNRESERVED = /^[A-Za-z0-9\-._~]$/;

/**
 * Visible ASCII (RFC 9112 section 3.2: a request target has no whitespace or controls, and RFC 3986
 * is ASCII). Characters RFC 3986 does not allow unencoded (`"`, `<`, `{`...) are tolerated as HTTP
 * parsers do; except in mode NONE they are encoded (encodeRawPathChars), and forwarded exactly as judged.
 */
const TARGET_CHARS = /^[\x21-\x7e]*$/;

/**
 * A request target normalized, split once at its first `?`: `path` (what `paths`, route path matches
 * and rewrites read), `query` (`?...`, or empty) and `target`, the two joined (what the backend
 * receives and `request.headers[:path]` reads).
 */
export interface RequestTarget {
  target: string;
  path: string;
  query: string;
}

/** A request target split at its first `?` (no normalization; the policy engine's pathOf is the one rule). */
export function splitTarget(target: string): RequestTarget {
  const path = pathOf(target);
  return { target, path, query: target.slice(path.length) };
}

export type TargetResult = ({ ok: true } & RequestTarget) | { ok: false; reason: TargetRejection; message: string };

function reject(reason: TargetRejection, message: string): { ok: false; reason: TargetRejection; message: string } {
  return { ok: false, reason, message };
}

/** RFC 3986 section 5.2.4 remove_dot_segments, on a path that starts with `/`. */
export function removeDotSegments(path: string): string {
  const out: string[] = [];
  const segs = path.split('/');
  // segs[0] is '' (the path starts with '/').
  for (let i = 1; i < segs.length; i++) {
    const s = segs[i]!;
    const last = i === segs.length - 1;
    if (s === '.') { if (last) out.push(''); continue; }
    if (s === '..') { out.pop(); if (last) out.push(''); continue; }
    out.push(s);
  }
  return `/${out.join('/')}`;
}

/** Normalizes the path part (no query) per `opts`; see the module comment. */
export function normalizePath(path: string, opts: NormalizeOptions): NormalizeResult {
  const mode = opts.pathNormalization;
  let out = '';
  for (let i = 0; i < path.length; i++) {
    const c = path[i]!;
    if (c !== '%') { out += c; continue; }
    const hex = path.slice(i + 1, i + 3);
    if (!/^[0-9A-Fa-f]{2}$/.test(hex)) return reject('invalid_percent_encoding', `"%${hex}" is not a percent-encoded byte`);
    i += 2;
    const byte = parseInt(hex, 16);
    if (byte === 0) return reject('null_character', '%00 in the path');
    if (mode === 'NONE') { out += `%${hex}`; continue; }
    const ch = String.fromCharCode(byte);
    if (ch === '/' || ch === '\\') {
      if (mode === 'DECODE_AND_MERGE_SLASHES') { out += '/'; continue; }
      if (opts.escapedSlashes === 'REJECT_REQUEST') return reject('escaped_slash', `encoded ${ch === '/' ? 'slash' : 'backslash'} %${hex} in the path`);
      out += `%${hex.toUpperCase()}`;
      continue;
    }
    out += UNRESERVED.test(ch) ? ch : `%${hex.toUpperCase()}`;
  }
  if (mode === 'NONE') return { ok: true, path: out };
  // A raw character RFC 3986 allows only encoded is judged and forwarded in its encoded form, so
  // that `/{x}` and `/%7Bx%7D` (the same resource, RFC 3986 section 6.2.2) meet the same rule. (No
  // decoded byte is one of them: only unreserved characters are decoded above.)
  out = removeDotSegments(encodeRawPathChars(out).replaceAll('\\', '/'));
  if (mode === 'MERGE_SLASHES' || mode === 'DECODE_AND_MERGE_SLASHES') out = out.replace(/\/{2,}/g, '/');
  return { ok: true, path: out };
}

function sameAuthority(a: string, b: string, scheme: string): boolean {
  const def = scheme === 'https' ? 443 : 80;
  const x = splitHostPort(a.toLowerCase());
  const y = splitHostPort(b.toLowerCase());
  return x.host === y.host && (x.port ?? def) === (y.port ?? def);
}

/**
 * The request target as it will be judged and forwarded: origin-form, normalized. `host` is the
 * Host header (HTTP/1.1) or :authority (HTTP/2), if any.
 */
export function normalizeRequestTarget(method: string, target: string, host: string | undefined, opts: NormalizeOptions): TargetResult {
  if (!isToken(method)) return reject('invalid_method', `method ${JSON.stringify(method)} is not a token`);
  if (/[a-z]/.test(method)) return reject('method_not_uppercase', `method ${JSON.stringify(method)} is not upper case (methods are case-sensitive, RFC 9110 section 9.1)`);
  if (host !== undefined && !isValidHost(host)) return reject('invalid_host', `invalid Host (or :authority) ${JSON.stringify(clip(host, 64))}: not a host and optional port (RFC 9110 section 7.2)`);
  if (target === '*' && method === 'OPTIONS') return { ok: true, target: '*', path: '*', query: '' };
  let originForm = target;
  const abs = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)(.*)$/s.exec(target);
  if (abs) {
    const scheme = abs[1]!.toLowerCase();
    const authority = abs[2]!;
    if (scheme !== 'http' && scheme !== 'https') return reject('invalid_request_target', `absolute-form with scheme ${JSON.stringify(abs[1])}`);
    // RFC 9110 section 4.2.4: userinfo in an http(s) URI is an error.
    if (authority.includes('@')) return reject('absolute_form_userinfo', 'absolute-form target carries userinfo');
    if (authority === '') return reject('invalid_request_target', 'absolute-form target without a host');
    if (host !== undefined && !sameAuthority(authority, host, scheme)) {
      return reject('absolute_form_host_mismatch', `absolute-form target names ${JSON.stringify(authority)} but Host is ${JSON.stringify(host)}`);
    }
    // RFC 9110 section 4.2.3: an empty path is "/".
    originForm = abs[3]!.startsWith('/') ? abs[3]! : `/${abs[3]!}`;
  }
  if (!originForm.startsWith('/')) return reject('invalid_request_target', `request target ${JSON.stringify(clip(target, 64))} is not origin-form`);
  if (originForm.includes('#')) return reject('fragment', 'a fragment in the request target (RFC 9112 section 3.2.1)');
  if (!TARGET_CHARS.test(originForm)) return reject('invalid_character', 'a byte outside the URI character set in the request target');
  const { path, query } = splitTarget(originForm);
  const n = normalizePath(path, opts);
  return n.ok ? { ok: true, target: n.path + query, path: n.path, query } : n;
}
