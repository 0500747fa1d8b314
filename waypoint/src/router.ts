// HTTPRoute/GRPCRoute matching for one destination service, with Gateway API precedence, and the
// weighted choice among a rule's backends.
//
// Precedence of HTTPRoute rules (httproute_types.go HTTPRouteRule.Matches, "across all rules of all
// routes attached to a parent"):
//   1. Exact path, then RegularExpression path (implementation-specific; Envoy Gateway's order),
//      then PathPrefix with the most characters;
//   2. a method match; 3. the most header matches; 4. the most query param matches.
// GRPCRoute service/method matches arrive compiled to paths (`/pkg.Service/Method`), but GRPCRoute
// rules rank by their own criteria (grpcroute_types.go GRPCRouteRule.Matches), carried on the match
// as `grpc`: 1. the most characters of service; 2. of method; 3. the most header matches.
// GRPCRoute and HTTPRoute rules are never merged (GEP-1294: the controller reports the HTTPRoute
// Conflicted and does not send it); should both arrive for one Service, GRPCRoute rules come first.
// Ties, for both: the older route (compiled `order`: creation time then namespace/name), then rule
// order, then match order within the rule.
// Regular expressions are RE2 (lib/regex.ts): linear-time matching, full-string anchoring, as Envoy.
import type { GrpcMatchRank, Route, RouteBackend, RouteMatch, RouteRule, StringMatch } from '../../lib/model/mesh.ts';
import { RegexCache } from '../../lib/regex.ts';
import { fieldBytes, fieldText } from '../../lib/field-bytes.ts';
import { MAX_TIMER_MS } from '../../lib/model/validate.ts';
import type { ConfigIssue } from './errors.ts';
import { validateRouteFilter } from './filters.ts';
import type { HeaderMap } from './headers.ts';

export interface RouteRequest {
  method: string;
  /** The normalized path, without the query. */
  path: string;
  /** The query, `?...` or empty (waypoint/src/normalize.ts RequestTarget). */
  query: string;
  headers: HeaderMap;
}

export interface RouteDecision {
  route: Route;
  rule: RouteRule;
  ruleIndex: number;
  /** The PathPrefix value that matched, for URLRewrite ReplacePrefixMatch. */
  matchedPrefix?: string;
}

interface CompiledStringMatch {
  name: string;
  test: (value: string | undefined) => boolean;
}

interface CompiledEntry {
  route: Route;
  rule: RouteRule;
  ruleIndex: number;
  matchIndex: number;
  pathType: 'Exact' | 'PathPrefix' | 'RegularExpression';
  pathValue: string;
  pathTest: (path: string) => boolean;
  method?: string;
  headers: CompiledStringMatch[];
  query: CompiledStringMatch[];
  /** GRPCRoute entries only: what ranks them. */
  grpc?: GrpcMatchRank;
}

const PATH_RANK = { Exact: 3, RegularExpression: 2, PathPrefix: 1 } as const;

/** HTTPRoute precedence before the tie-breaks. */
function compareHttp(a: CompiledEntry, b: CompiledEntry): number {
  return (
    PATH_RANK[b.pathType] - PATH_RANK[a.pathType] ||
    (a.pathType === 'PathPrefix' ? b.pathValue.length - a.pathValue.length : 0) ||
    Number(b.method !== undefined) - Number(a.method !== undefined) ||
    b.headers.length - a.headers.length ||
    b.query.length - a.query.length
  );
}

/** GRPCRoute precedence before the tie-breaks. */
function compareGrpc(a: GrpcMatchRank, b: GrpcMatchRank, aHeaders: number, bHeaders: number): number {
  return b.serviceChars - a.serviceChars || b.methodChars - a.methodChars || bHeaders - aHeaders;
}

function compareEntries(a: CompiledEntry, b: CompiledEntry): number {
  return (
    Number(b.grpc !== undefined) - Number(a.grpc !== undefined) ||
    (a.grpc && b.grpc ? compareGrpc(a.grpc, b.grpc, a.headers.length, b.headers.length) : compareHttp(a, b)) ||
    (a.route.order < b.route.order ? -1 : a.route.order > b.route.order ? 1 : 0) ||
    a.ruleIndex - b.ruleIndex ||
    a.matchIndex - b.matchIndex
  );
}

/**
 * The rank of a GRPCRoute match from a controller that sent no `grpc`: its Exact `/service/method`
 * or PathPrefix `/service` says the lengths; anything else (a regular expression) counts none.
 */
function grpcRankOfPath(path: NonNullable<RouteMatch['path']>): GrpcMatchRank {
  const parts = path.value.split('/');
  if (path.type === 'Exact' && parts.length === 3) return { serviceChars: parts[1]!.length, methodChars: parts[2]!.length };
  if (path.type === 'PathPrefix' && parts.length === 2) return { serviceChars: parts[1]!.length, methodChars: 0 };
  return { serviceChars: 0, methodChars: 0 };
}


/** Gateway API PathPrefix: element-wise, `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`. */
export function pathPrefixMatches(prefix: string, path: string): boolean {
  const p = prefix.length > 1 ? prefix.replace(/\/+$/, '') : prefix;
  if (p === '/' || p === '') return true;
  if (!path.startsWith(p)) return false;
  return path.length === p.length || path[p.length] === '/';
}

function compileString(m: StringMatch, lowerName: boolean, regexes: RegexCache): CompiledStringMatch {
  const name = lowerName ? m.name.toLowerCase() : m.name;
  // A header's bytes against the value's UTF-8 bytes, as Envoy's header matcher (lib/field-bytes.ts);
  // a query parameter's value is decoded text already.
  if (m.type === 'RegularExpression') {
    const re = regexes.compile(m.value);
    return { name, test: lowerName ? (v) => v !== undefined && re(fieldText(v)) : (v) => v !== undefined && re(v) };
  }
  const value = lowerName ? fieldBytes(m.value) : m.value;
  return { name, test: (v) => v === value };
}

function compileMatch(route: Route, rule: RouteRule, ruleIndex: number, match: RouteMatch, matchIndex: number, regexes: RegexCache): CompiledEntry {
  const path = match.path ?? { type: 'PathPrefix' as const, value: '/' };
  let pathTest: (p: string) => boolean;
  if (path.type === 'Exact') pathTest = (p) => p === path.value;
  else if (path.type === 'RegularExpression') pathTest = regexes.compile(path.value);
  else pathTest = (p) => pathPrefixMatches(path.value, p);
  const entry: CompiledEntry = {
    route, rule, ruleIndex, matchIndex,
    pathType: path.type, pathValue: path.value, pathTest,
    headers: match.headers.map((h) => compileString(h, true, regexes)),
    query: match.queryParams.map((q) => compileString(q, false, regexes)),
  };
  // Methods are case-sensitive (RFC 9110 section 9.1); requests with lower-case methods are refused
  // before routing (normalize.ts), so `GET` never meets `get` here.
  if (match.method !== undefined) entry.method = match.method;
  if (route.kind === 'GRPCRoute') entry.grpc = match.grpc ?? grpcRankOfPath(path);
  return entry;
}

function validateRoute(route: Route, knownServices: ReadonlySet<string>, issues: ConfigIssue[], regexes: RegexCache): void {
  const object = `${route.namespace}/${route.name}`;
  const issue = (path: string, message: string): void => { issues.push({ kind: route.kind, object, path, message }); };
  const checkRe = (path: string, re: string): void => {
    try { regexes.compile(re); } catch (e) { issue(path, `invalid regular expression ${JSON.stringify(re.slice(0, 80))}: it ${(e as Error).message}`); }
  };
  const checkBackend = (path: string, b: RouteBackend): void => {
    // A backend the configuration lacks costs only its own requests (500 when picked), as the
    // Gateway API says for a backendRef that does not resolve.
    if (!Number.isInteger(b.weight) || b.weight < 0 || b.weight > 1_000_000) issue(`${path}.weight`, `weight ${b.weight} must be an integer in 0-1000000`);
  };
  if (!knownServices.has(route.service)) issue('service', `parent service ${route.service} is not in the waypoint's configuration`);
  route.rules.forEach((rule, ri) => {
    rule.matches.forEach((m, mi) => {
      const base = `rules[${ri}].matches[${mi}]`;
      if (m.path) {
        if (m.path.type === 'RegularExpression') checkRe(`${base}.path.value`, m.path.value);
        else if (!m.path.value.startsWith('/')) issue(`${base}.path.value`, 'path must start with /');
      }
      m.headers.forEach((h, i) => { if (h.type === 'RegularExpression') checkRe(`${base}.headers[${i}].value`, h.value); });
      m.queryParams.forEach((q, i) => { if (q.type === 'RegularExpression') checkRe(`${base}.queryParams[${i}].value`, q.value); });
      if (m.grpc) {
        for (const k of ['serviceChars', 'methodChars'] as const) {
          const n = m.grpc[k];
          if (!Number.isInteger(n) || n < 0) issue(`${base}.grpc.${k}`, `${n} is not a whole number ≥ 0`);
        }
      }
    });
    rule.filters.forEach((f, fi) => {
      const why = validateRouteFilter(f);
      if (why) issue(`rules[${ri}].filters[${fi}]`, why);
      if (f.type === 'RequestMirror') checkBackend(`rules[${ri}].filters[${fi}].backend`, f.backend);
    });
    rule.backends.forEach((b, bi) => {
      checkBackend(`rules[${ri}].backends[${bi}]`, b);
      b.filters.forEach((f, fi) => {
        const why = validateRouteFilter(f);
        if (why) issue(`rules[${ri}].backends[${bi}].filters[${fi}]`, why);
      });
    });
    for (const [k, v] of Object.entries(rule.timeouts)) {
      if (v !== undefined && (!Number.isFinite(v) || v < 0)) issue(`rules[${ri}].timeouts.${k}`, `${v} is not a duration`);
      // Node.js fires a longer timer after 1 ms (the controller refuses these; a version skew must not arm one).
      else if (v !== undefined && v > MAX_TIMER_MS) issue(`rules[${ri}].timeouts.${k}`, `${v} ms is longer than ${MAX_TIMER_MS} ms`);
    }
    const rt = rule.retry;
    if (rt) {
      rt.codes.forEach((code, i) => { if (!Number.isInteger(code) || code < 400 || code > 599) issue(`rules[${ri}].retry.codes[${i}]`, `${code} is not a status code in 400-599`); });
      if (rt.attempts !== undefined && (!Number.isInteger(rt.attempts) || rt.attempts < 0)) issue(`rules[${ri}].retry.attempts`, `${rt.attempts} is not a whole number ≥ 0`);
      if (rt.backoffMs !== undefined && (!Number.isFinite(rt.backoffMs) || rt.backoffMs < 0)) issue(`rules[${ri}].retry.backoffMs`, `${rt.backoffMs} is not a duration`);
    }
  });
}

/** The routes of every service, compiled and sorted by precedence; immutable once built. */
export class RouteTable {
  private readonly byService = new Map<string, CompiledEntry[]>();

  /**
   * Validates and compiles; problems are appended to `issues` (the caller rejects the config).
   * `regexes`: where patterns are compiled (a snapshot's, kept for the next: RegexCache).
   */
  constructor(routes: readonly Route[], knownServices: ReadonlySet<string>, issues: ConfigIssue[], regexes = new RegexCache()) {
    for (const route of routes) {
      const before = issues.length;
      validateRoute(route, knownServices, issues, regexes);
      if (issues.length !== before) continue;
      const list = this.byService.get(route.service) ?? [];
      route.rules.forEach((rule, ri) => {
        const matches = rule.matches.length > 0 ? rule.matches : [{ headers: [], queryParams: [] }];
        matches.forEach((m, mi) => list.push(compileMatch(route, rule, ri, m, mi, regexes)));
      });
      this.byService.set(route.service, list);
    }
    for (const list of this.byService.values()) list.sort(compareEntries);
  }

  /** Does any route attach to the service (on that port)? */
  hasRoutes(service: string, port: number): boolean {
    return (this.byService.get(service) ?? []).some((e) => e.route.port === undefined || e.route.port === port);
  }

  /** The highest-precedence rule that matches, or undefined. */
  match(service: string, port: number, req: RouteRequest): RouteDecision | undefined {
    const list = this.byService.get(service);
    if (!list) return undefined;
    const path = req.path;
    let query: URLSearchParams | undefined;
    const method = req.method;
    for (const e of list) {
      if (e.route.port !== undefined && e.route.port !== port) continue;
      if (!e.pathTest(path)) continue;
      if (e.method !== undefined && e.method !== method) continue;
      if (!e.headers.every((h) => h.test(joinHeader(headerOf(req.headers, h.name))))) continue;
      if (e.query.length > 0) {
        query ??= new URLSearchParams(req.query.slice(1));
        const qp = query;
        if (!e.query.every((m) => m.test(qp.get(m.name) ?? undefined))) continue;
      }
      const decision: RouteDecision = { route: e.route, rule: e.rule, ruleIndex: e.ruleIndex };
      if (e.pathType === 'PathPrefix') decision.matchedPrefix = e.pathValue;
      return decision;
    }
    return undefined;
  }
}

/**
 * A request header by lower-case name. `host` is the request's authority, Host over HTTP/1.1 or
 * :authority over HTTP/2 (RFC 9113 section 8.3.1), as Envoy maps the one onto the other: a Host
 * match must not depend on the protocol.
 */
function headerOf(headers: HeaderMap, name: string): string | string[] | undefined {
  return name === 'host' ? (headers[':authority'] ?? headers['host']) : headers[name];
}

function joinHeader(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v.join(',') : v;
}

/**
 * Weighted choice among backends (canary / blue-green). Weight 0 backends never receive traffic;
 * undefined when every weight is 0 (the Gateway API answers 500 then).
 */
export function pickBackend(backends: readonly RouteBackend[], random: () => number): RouteBackend | undefined {
  let total = 0;
  for (const b of backends) total += b.weight;
  if (total <= 0) return undefined;
  let r = random() * total;
  for (const b of backends) {
    if (b.weight <= 0) continue;
    if (r < b.weight) return b;
    r -= b.weight;
  }
  return backends.findLast((b) => b.weight > 0);
}
