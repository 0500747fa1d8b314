// Header maps as the waypoint passes them around: lower-case names, string or string[] values,
// no HTTP/2 pseudo-headers, no hop-by-hop fields.

export type HeaderMap = Record<string, string | string[] | undefined>;

/** An RFC 9110 token (section 5.6.2): a method or a field name. */
export function isToken(s: string): boolean {
  return TOKEN.test(s);
}
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** Connection-specific fields that a proxy must not forward (RFC 9110 7.6.1, RFC 9113 8.2.2). */
const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer',
  'http2-settings', 'host', 'proxy-authenticate', 'proxy-authorization',
]);

/** A copy of `raw` without pseudo-headers, hop-by-hop fields, or those named by `Connection`. */
export function forwardableHeaders(raw: HeaderMap): HeaderMap {
  const out: HeaderMap = {};
  const named = new Set<string>();
  const conn = raw['connection'];
  if (conn !== undefined) {
    for (const v of Array.isArray(conn) ? conn : [conn]) {
      for (const token of v.split(',')) named.add(token.trim().toLowerCase());
    }
  }
  for (const [k, v] of Object.entries(raw)) {
    if (v === undefined || k.startsWith(':')) continue;
    const name = k.toLowerCase();
    if (HOP_BY_HOP.has(name) || named.has(name)) continue;
    out[name] = v;
  }
  return out;
}

/** The first value of a header (or the joined values for repeated list headers). */
export function headerValue(headers: HeaderMap, name: string): string | undefined {
  const v = headers[name];
  if (v === undefined) return undefined;
  return Array.isArray(v) ? v.join(',') : v;
}

/** RFC 9113 section 6.5.2 size: name + value + 32 per field. */
export function headerListSize(headers: HeaderMap): number {
  let size = 0;
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined) continue;
    for (const one of Array.isArray(v) ? v : [v]) size += k.length + String(one).length + 32;
  }
  return size;
}

export interface HeaderEditsLike {
  set: Array<{ name: string; value: string }>;
  add: Array<{ name: string; value: string }>;
  remove: string[];
}

/** Applies Gateway API header modifier semantics (set replaces, add appends, remove deletes). */
export function applyHeaderEdits(headers: HeaderMap, edits: HeaderEditsLike): void {
  for (const { name, value } of edits.set) headers[name.toLowerCase()] = value;
  for (const { name, value } of edits.add) {
    const key = name.toLowerCase();
    const cur = headers[key];
    if (cur === undefined) headers[key] = value;
    else headers[key] = Array.isArray(cur) ? [...cur, value] : [cur, value];
  }
  for (const name of edits.remove) delete headers[name.toLowerCase()];
}

/**
 * A Host field value (RFC 9110 section 7.2): uri-host [ ":" port ], uri-host an IP literal in
 * brackets or a reg-name (unreserved, pct-encoded, sub-delims; RFC 3986 section 3.2.2), possibly
 * empty. No userinfo, no path, one port of digits at most.
 */
export function isValidHost(value: string): boolean {
  return HOST.test(value);
}
const HOST = /^(?:\[[0-9A-Za-z:._~!$&'()*+,;=%-]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?$/;

/** Splits `host:port` / `[v6]:port`; the port is undefined when absent. */
export function splitHostPort(authority: string): { host: string; port: number | undefined } {
  if (authority.startsWith('[')) {
    const close = authority.indexOf(']');
    const host = close < 0 ? authority : authority.slice(1, close);
    const rest = close < 0 ? '' : authority.slice(close + 1);
    return { host, port: rest.startsWith(':') ? toPort(rest.slice(1)) : undefined };
  }
  const colon = authority.lastIndexOf(':');
  if (colon < 0 || authority.indexOf(':') !== colon) return { host: authority, port: undefined };
  return { host: authority.slice(0, colon), port: toPort(authority.slice(colon + 1)) };
}

function toPort(s: string): number | undefined {
  if (!/^[0-9]{1,5}$/.test(s)) return undefined;
  const n = Number(s);
  return n >= 1 && n <= 65535 ? n : undefined;
}
