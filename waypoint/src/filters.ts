// Route filters (Gateway API HTTPRoute/GRPCRoute `filters`), one handler per type in a registry so
// that a new filter is a new entry, not another switch arm.
import { fieldBytes } from '../../lib/field-bytes.ts';
import type { PathRewrite, RouteBackend, RouteFilter } from '../../lib/model/mesh.ts';
import { isCorsOrigin } from '../../lib/model/validate.ts';
import { applyHeaderEdits, headerValue, splitHostPort, type HeaderEditsLike, type HeaderMap } from './headers.ts';
import { splitTarget } from './normalize.ts';

/** The request as it will be sent upstream; filters edit it in place. */
export interface FilterRequest {
  method: string;
  /** Path with query string. */
  path: string;
  authority: string;
  headers: HeaderMap;
}

export interface FilterContext {
  request: FilterRequest;
  /** The PathPrefix that selected the rule (for ReplacePrefixMatch), if any. */
  matchedPrefix?: string;
  /** Port the client addressed (the service port). */
  listenerPort: number;
  /** Edits to apply to the response headers, in order. */
  responseEdits: HeaderEditsLike[];
  /** Set by RequestRedirect: answer locally instead of proxying. */
  redirect?: { statusCode: number; location: string };
  /** Set by CORS for an allowed preflight request: answer it locally with these headers. */
  preflight?: Record<string, string>;
  /** Copies to send, fire-and-forget. */
  mirrors: Array<{ backend: RouteBackend; percent: number }>;
}

export interface RouteFilterHandler<F extends RouteFilter = RouteFilter> {
  /** A reason the filter cannot be applied, or undefined. Runs when a config is applied. */
  validate(filter: F): string | undefined;
  apply(filter: F, ctx: FilterContext): void;
}

type HandlerMap = { [K in RouteFilter['type']]?: RouteFilterHandler<Extract<RouteFilter, { type: K }>> };
const registry: HandlerMap = {};

export function registerRouteFilter<K extends RouteFilter['type']>(
  type: K, handler: RouteFilterHandler<Extract<RouteFilter, { type: K }>>,
): void {
  (registry as Record<string, unknown>)[type] = handler;
}

function handlerFor(filter: RouteFilter): RouteFilterHandler | undefined {
  return (registry as Record<string, RouteFilterHandler | undefined>)[filter.type];
}

export function validateRouteFilter(filter: RouteFilter): string | undefined {
  const h = handlerFor(filter);
  if (!h) return `filter type ${JSON.stringify((filter as { type: unknown }).type)} is not supported by the waypoint`;
  return h.validate(filter);
}

export function applyRouteFilters(filters: readonly RouteFilter[], ctx: FilterContext): void {
  for (const f of filters) {
    handlerFor(f)!.apply(f, ctx);
    if (ctx.redirect || ctx.preflight) return;
  }
}

/** Gateway API path modifier applied to a path (without query). */
export function rewritePath(path: string, rewrite: PathRewrite, matchedPrefix: string | undefined): string {
  if (rewrite.type === 'ReplaceFullPath') return rewrite.value;
  const prefix = (matchedPrefix ?? '/').replace(/\/+$/, '');
  let rest = path.startsWith(prefix) ? path.slice(prefix.length) : path;
  const replacement = rewrite.value;
  if (replacement.endsWith('/') && rest.startsWith('/')) rest = rest.slice(1);
  const out = replacement + rest;
  return out === '' ? '/' : out.startsWith('/') ? out : `/${out}`;
}

function validatePathRewrite(p: PathRewrite | undefined): string | undefined {
  if (!p) return undefined;
  if (p.type !== 'ReplaceFullPath' && p.type !== 'ReplacePrefixMatch') return `path.type ${String(p.type)} is unknown`;
  if (typeof p.value !== 'string') return 'path value must be a string';
  // Gateway API HTTPPathModifier: ReplacePrefixMatch may be empty (prefix /foo on /foo/bar gives /bar).
  if (p.type === 'ReplacePrefixMatch' ? p.value !== '' && !p.value.startsWith('/') : !p.value.startsWith('/')) return 'path value must start with /';
  return undefined;
}

function validateEdits(e: HeaderEditsLike | undefined): string | undefined {
  if (!e) return 'header modifier is missing';
  for (const { name } of [...e.set, ...e.add]) {
    if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name)) return `header name ${JSON.stringify(name)} is not a token`;
  }
  return undefined;
}

const WELL_KNOWN_PORT: Record<string, number> = { http: 80, https: 443 };

const onWire = new WeakMap<HeaderEditsLike, HeaderEditsLike>();

/**
 * A header modifier with its values as their UTF-8 bytes, one character a byte as the waypoint
 * holds and writes field values (lib/field-bytes.ts), as Envoy writes them; once per filter.
 */
function wireEdits(e: HeaderEditsLike): HeaderEditsLike {
  let w = onWire.get(e);
  if (!w) {
    const bytes = (list: HeaderEditsLike['set']): HeaderEditsLike['set'] => list.map(({ name, value }) => ({ name, value: fieldBytes(value) }));
    w = { set: bytes(e.set), add: bytes(e.add), remove: e.remove };
    onWire.set(e, w);
  }
  return w;
}

registerRouteFilter('RequestHeaderModifier', {
  validate: (f) => validateEdits(f.headers),
  apply: (f, ctx) => applyHeaderEdits(ctx.request.headers, wireEdits(f.headers)),
});

registerRouteFilter('ResponseHeaderModifier', {
  validate: (f) => validateEdits(f.headers),
  apply: (f, ctx) => { ctx.responseEdits.push(wireEdits(f.headers)); },
});

registerRouteFilter('URLRewrite', {
  validate: (f) => validatePathRewrite(f.path),
  apply: (f, ctx) => {
    if (f.hostname) ctx.request.authority = f.hostname;
    if (f.path) {
      const { path, query } = splitTarget(ctx.request.path);
      ctx.request.path = rewritePath(path, f.path, ctx.matchedPrefix) + query;
    }
  },
});

registerRouteFilter('RequestRedirect', {
  validate: (f) => {
    if (![301, 302, 303, 307, 308].includes(f.statusCode)) return `statusCode ${f.statusCode} is not a redirect status`;
    if (f.scheme !== undefined && f.scheme !== 'http' && f.scheme !== 'https') return `scheme ${String(f.scheme)} is unknown`;
    return validatePathRewrite(f.path);
  },
  apply: (f, ctx) => {
    const { host } = splitHostPort(ctx.request.authority);
    const scheme = f.scheme ?? 'http';
    const hostname = f.hostname ?? host;
    // Gateway API: without a port, use the scheme's well-known port when a scheme is given, else the
    // listener's; a well-known port is left out of Location.
    const port = f.port ?? (f.scheme ? WELL_KNOWN_PORT[scheme]! : ctx.listenerPort);
    const { path, query } = splitTarget(ctx.request.path);
    const newPath = f.path ? rewritePath(path, f.path, ctx.matchedPrefix) : path;
    const hostPart = hostname.includes(':') ? `[${hostname}]` : hostname;
    const portPart = port === WELL_KNOWN_PORT[scheme] ? '' : `:${port}`;
    ctx.redirect = { statusCode: f.statusCode, location: `${scheme}://${hostPart}${portPart}${newPath}${query}` };
  },
});

registerRouteFilter('RequestMirror', {
  validate: (f) => (f.percent < 0 || f.percent > 100 ? `percent ${f.percent} is outside 0-100` : undefined),
  apply: (f, ctx) => { ctx.mirrors.push({ backend: f.backend, percent: f.percent }); },
});

type CorsFilter = Extract<RouteFilter, { type: 'CORS' }>;

const DEFAULT_PORT: Record<string, string> = { http: '80', https: '443' };

/** `scheme://host[:port]` → its parts, lower-cased, with the scheme's default port made explicit; undefined if it is not one. */
function parseOrigin(origin: string): { scheme: string; host: string; port: string } | undefined {
  const m = /^([a-z][a-z0-9+.-]*):\/\/(\[[0-9a-f:.]+\]|[^:/?#]+)(?::([0-9]{1,5}))?$/i.exec(origin);
  if (!m) return undefined;
  const scheme = m[1]!.toLowerCase();
  return { scheme, host: m[2]!.toLowerCase(), port: m[3] ?? DEFAULT_PORT[scheme] ?? '' };
}

/**
 * Gateway API CORSOrigin matching: `*` is any origin; otherwise scheme and port must be equal (a
 * missing port is the scheme's default) and the host equal, or, for a `*.` entry, the host must end
 * with the rest after at least one label (`https://*.bar.com` takes `https://xpto.www.bar.com`).
 */
export function corsOriginAllowed(allowed: readonly string[], origin: string): boolean {
  const o = parseOrigin(origin);
  for (const a of allowed) {
    if (a === '*') return true;
    const e = parseOrigin(a);
    if (!o || !e || e.scheme !== o.scheme || e.port !== o.port) continue;
    if (e.host.startsWith('*.') ? o.host.endsWith(e.host.slice(1)) && o.host.length > e.host.length - 1 : e.host === o.host) return true;
  }
  return false;
}

/**
 * HTTPCORSFilter (GEP-1767; the Fetch standard's CORS protocol). A request with an Origin the filter
 * allows gets Access-Control-Allow-Origin (the origin itself, so that credentials stay usable),
 * Vary: Origin, and Access-Control-Allow-Credentials when allowed; an actual request also gets
 * Access-Control-Expose-Headers on its response. A preflight (OPTIONS with
 * Access-Control-Request-Method) is answered by the waypoint with the allowed methods and headers
 * and Access-Control-Max-Age, and never reaches the backend; a `*` in methods or headers answers
 * with what the preflight asked for, which the Fetch standard requires when credentials are
 * allowed. A request from an origin the filter does not allow gets no CORS headers, and a preflight
 * from it goes on to the backend: the browser is what refuses it.
 */
registerRouteFilter('CORS', {
  validate: (f: CorsFilter) => {
    if (!Number.isInteger(f.maxAge) || f.maxAge < 1) return `maxAge ${f.maxAge} must be a whole number of seconds ≥ 1`;
    for (const o of f.allowOrigins) if (!isCorsOrigin(o)) return `allowOrigins entry ${JSON.stringify(o)} is not an origin`;
    return undefined;
  },
  apply: (f: CorsFilter, ctx: FilterContext) => {
    const h = ctx.request.headers;
    const origin = headerValue(h, 'origin');
    if (origin === undefined || !corsOriginAllowed(f.allowOrigins, origin)) return;
    const out: Record<string, string> = { 'access-control-allow-origin': origin };
    if (f.allowCredentials) out['access-control-allow-credentials'] = 'true';
    if (f.exposeHeaders.length > 0) out['access-control-expose-headers'] = f.exposeHeaders.join(', ');
    const requestedMethod = headerValue(h, 'access-control-request-method');
    if (ctx.request.method === 'OPTIONS' && requestedMethod !== undefined) {
      const requestedHeaders = headerValue(h, 'access-control-request-headers');
      const methods = f.allowMethods.includes('*') ? requestedMethod : f.allowMethods.join(', ');
      const headers = f.allowHeaders.includes('*') ? requestedHeaders : f.allowHeaders.join(', ');
      if (methods) out['access-control-allow-methods'] = methods;
      if (headers) out['access-control-allow-headers'] = headers;
      out['access-control-max-age'] = String(f.maxAge);
      out['vary'] = 'Origin';
      ctx.preflight = out;
      return;
    }
    ctx.responseEdits.push({ set: Object.entries(out).map(([name, value]) => ({ name, value })), add: [{ name: 'vary', value: 'Origin' }], remove: [] });
  },
});
