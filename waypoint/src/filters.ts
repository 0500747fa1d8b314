// Route filters (Gateway API HTTPRoute/GRPCRoute `filters`), one handler per type in a registry so
// that a new filter is a new entry, not another switch arm.
import type { PathRewrite, RouteBackend, RouteFilter } from '../../lib/model/mesh.ts';
import { applyHeaderEdits, splitHostPort, type HeaderEditsLike, type HeaderMap } from './headers.ts';

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
    if (ctx.redirect) return;
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

function splitQuery(pathWithQuery: string): { path: string; query: string } {
  const q = pathWithQuery.indexOf('?');
  return q < 0 ? { path: pathWithQuery, query: '' } : { path: pathWithQuery.slice(0, q), query: pathWithQuery.slice(q) };
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

registerRouteFilter('RequestHeaderModifier', {
  validate: (f) => validateEdits(f.headers),
  apply: (f, ctx) => applyHeaderEdits(ctx.request.headers, f.headers),
});

registerRouteFilter('ResponseHeaderModifier', {
  validate: (f) => validateEdits(f.headers),
  apply: (f, ctx) => { ctx.responseEdits.push(f.headers); },
});

registerRouteFilter('URLRewrite', {
  validate: (f) => validatePathRewrite(f.path),
  apply: (f, ctx) => {
    if (f.hostname) ctx.request.authority = f.hostname;
    if (f.path) {
      const { path, query } = splitQuery(ctx.request.path);
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
    const { path, query } = splitQuery(ctx.request.path);
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
