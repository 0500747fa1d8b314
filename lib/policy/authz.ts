// The one AuthorizationPolicy engine, Istio semantics, for every enforcement point: agents judge
// connections (L4), waypoints judge HTTP requests (L7) and the TCP connections they pass through
// (L4). The vocabulary (fields, `when` keys, their layer and value kind) is lib/policy/keys.ts.
//
// Order: DENY policies first (any matching rule denies); then, if any ALLOW policy applies, the
// request must match one of their rules; with no ALLOW policy it is allowed. AUDIT policies never
// decide: the decision lists the ones that matched, for the caller to log. An ALLOW policy without
// rules matches nothing (deny all); a DENY or AUDIT policy without rules matches nothing.
// A dry-run policy (Istio's istio.io/dry-run) never decides: Istio's two shadow engines judge the
// dry-run DENYs alone and the dry-run ALLOWs alone, and report what they would have decided (dryRunOf).
// A rule matches when all of `from` (OR of sources), `to` (OR of operations) and `when` (AND of
// conditions) match; a field's values are OR'ed, a `notX` field fails the rule when any value
// matches.
//
// What an enforcement point cannot see (Istio's rule, the same at every layer): an ALLOW or AUDIT
// rule that needs an attribute of a higher layer never matches there; a DENY rule is narrowed to
// the parts it can see (its L7 fields and conditions are dropped, so it denies more, never less).
// That is Istio's documented rule; istiod's conversion for ztunnel instead makes a DENY whose
// source, operation or condition is HTTP-only deny nothing (docs/SECURITY.md "Compared with Istio
// ambient's ztunnel").
//
// Each AuthorizationPolicy object is compiled once into predicates (a WeakMap keyed by the object:
// a new config version brings new objects, an unchanged one is not recompiled); a PolicyTable
// holds one config version's policies for a waypoint, with the per-service lists computed once.
import { BlockList, isIP } from 'node:net';
import { compileFullMatch, escapeRegex, type FullMatch } from '../regex.ts';
import { fieldBytes, fieldIsUtf8 } from '../field-bytes.ts';
import { encodeRawPathChars, policyAction, waypointTargets, type AuthorizationPolicy, type CompiledCondition, type CompiledOperation, type CompiledRule, type CompiledSource } from '../model/mesh.ts';
import { claimAt, type RequestAuth } from './jwt.ts';
import { COMPILED_SOURCE_FIELDS, OPERATION_FIELDS, namespacePattern, pathTemplatePattern, conditionKey, isCidr, isPathTemplate, parseConditionKey, positiveField, type FieldSpec, type PolicyLayer, type ValueKind } from './keys.ts';

export interface ConnectionAttributes {
  /** Peer SPIFFE ID (spiffe://td/ns/x/sa/y), absent for plaintext. */
  sourcePrincipal?: string;
  /** Default: the namespace of `sourcePrincipal`. */
  sourceNamespace?: string;
  /** The connection's source address (`source.ip`, `ipBlocks`); absent when unknown. */
  sourceIp?: string;
  destinationIp?: string;
  destinationPort: number;
}

export interface RequestAttributes extends ConnectionAttributes {
  /** The method the backend will see (compared case-sensitively). */
  method: string;
  /**
   * The request target the backend will see (normalized), query included: what
   * `request.headers[:path]` reads (Envoy's :path header). `paths` read its path, the part before
   * the first `?` (Envoy's path matcher), split here so that no caller can hand the two apart.
   */
  target: string;
  host?: string;
  /** Lower-case header names. */
  headers: Readonly<Record<string, string | readonly string[] | undefined>>;
  /**
   * The original client address for `remote.ip` / `remoteIpBlocks`, from X-Forwarded-For (see
   * remoteIpOf); `sourceIp` when absent.
   */
  remoteIp?: string;
  /** What the request's JWT said, once a RequestAuthentication verified it (lib/policy/jwt.ts); absent: no token. */
  requestAuth?: RequestAuth;
}

export type EvaluationLayer = PolicyLayer;

export interface Decision {
  allowed: boolean;
  /** `namespace/name` of the deciding policy, when one decided. */
  policy?: string;
  /** DENY, or ALLOW when no ALLOW rule matched. */
  action?: 'ALLOW' | 'DENY';
  reason: string;
  /** `namespace/name` of every AUDIT policy that matched (absent when none). */
  audit?: string[];
  /**
   * What the dry-run policies that apply would have decided (absent when none apply): one result
   * per action that has any, as Istio's two shadow engines (dryRunOf). Never part of `allowed`.
   */
  dryRun?: DryRunResult[];
}

/**
 * One shadow engine's verdict (Envoy RBAC's shadow rules, as Istio builds them for `istio.io/dry-run`:
 * the dry-run DENY policies in one engine, the dry-run ALLOW policies in another, each judged as if
 * it were the only policy of its action; https://istio.io/latest/docs/tasks/security/authorization/authz-dry-run/,
 * "Limitations": two separate results).
 */
export interface DryRunResult {
  /** The engine: the dry-run DENY policies, or the dry-run ALLOW policies. */
  action: 'ALLOW' | 'DENY';
  /** Envoy's shadow_engine_result; `error` when the judgement threw (the real decision is untouched). */
  result: 'allowed' | 'denied' | 'error';
  /** Envoy's shadow_effective_policy_id: the dry-run policy that matched (absent when none did). */
  policy?: string;
  /** How many dry-run policies of this action applied. */
  policies: number;
  reason: string;
}

type Attributes = ConnectionAttributes | RequestAttributes;
type Predicate = (a: Attributes) => boolean;

function isRequest(a: Attributes): a is RequestAttributes {
  return typeof (a as RequestAttributes).method === 'string';
}

// ---------------------------------------------------------------------------------------------
// Matchers

/**
 * Istio string matching: exact, `prefix*`, `*suffix`; `*` alone matches any non-empty value (for
 * headers: any value of a header that is present, even empty, as Envoy's present_match).
 */
export function globMatch(pattern: string, value: string | undefined, starMatchesEmpty = false): boolean {
  if (value === undefined) return false;
  if (pattern === '*') return starMatchesEmpty || value !== '';
  if (pattern.endsWith('*')) return value.startsWith(pattern.slice(0, -1));
  if (pattern.startsWith('*')) return value.endsWith(pattern.slice(1));
  return pattern === value;
}

/**
 * A path template (Istio's `{*}` and `{**}`) as Envoy's uri_template matches it: the whole path,
 * query aside (keys.ts pathTemplatePattern). On RE2 (lib/regex.ts), as the route regexes: the path
 * is the client's, and this data plane does not rely on the controller's validation. No input
 * length bound: a path too long to match would step around a DENY.
 */
function pathTemplateMatch(template: string): FullMatch {
  return compileFullMatch(pathTemplatePattern(template), Infinity);
}

/**
 * Istio's `serviceAccounts` (`<namespace>/<name>`, the controller having written in the policy's
 * namespace): the peer's SPIFFE ID names that namespace and service account
 * (pilot srcServiceAccountGenerator: `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?`).
 */
function serviceAccountMatch(value: string): FullMatch {
  const [ns, sa] = value.includes('/') ? value.split('/') as [string, string] : ['', value];
  if (ns === '' || sa === '') throw new Error(`${JSON.stringify(value)} is not <namespace>/<service-account>`);
  return compileFullMatch(`(?:spiffe://)?[^/]+/ns/${escapeRegex(ns)}/(?:.+/|)sa/${escapeRegex(sa)}(?:/.+)?`, Infinity);
}

function stripSpiffe(id: string): string {
  return id.startsWith('spiffe://') ? id.slice('spiffe://'.length) : id;
}

/** Namespace of a SPIFFE ID `spiffe://td/ns/<ns>/sa/<sa>`. */
export function namespaceOfPrincipal(principal: string | undefined): string | undefined {
  if (!principal) return undefined;
  const m = /\/ns\/([^/]+)\/sa\//.exec(principal);
  return m ? m[1] : undefined;
}

function blockList(values: readonly string[]): BlockList {
  const list = new BlockList();
  for (const v of values) {
    if (!isCidr(v)) throw new Error(`${JSON.stringify(v)} is not an IP address or CIDR block`);
    const [addr, bits] = v.split('/') as [string, string | undefined];
    const family = isIP(addr);
    list.addSubnet(addr, bits === undefined ? (family === 4 ? 32 : 128) : Number(bits), family === 4 ? 'ipv4' : 'ipv6');
  }
  return list;
}

function inBlocks(list: BlockList, ip: string | undefined): boolean {
  if (!ip) return false;
  // An IPv4-mapped IPv6 peer (::ffff:a.b.c.d) is checked as IPv4.
  const v4 = ip.startsWith('::ffff:') && isIP(ip.slice(7)) === 4 ? ip.slice(7) : undefined;
  if (v4) return list.check(v4, 'ipv4');
  const family = isIP(ip);
  return family !== 0 && list.check(ip, family === 4 ? 'ipv4' : 'ipv6');
}

/** Does `ip` fall in any of the CIDRs (or bare addresses)? */
export function ipInBlocks(blocks: readonly string[], ip: string): boolean {
  return inBlocks(blockList(blocks.filter(isCidr)), ip);
}

/**
 * The client address Envoy would call the downstream remote address of a request at a proxy that is
 * not the edge (use_remote_address false) with `trustedHops` proxies in front of it (Istio
 * gatewayTopology.numTrustedProxies, Envoy xff_num_trusted_hops): the X-Forwarded-For entry
 * `trustedHops` places from the right (0: the last one). With fewer entries than that, or an entry
 * that is not an address, the connection's source. Whoever is left of the trusted hops can write
 * X-Forwarded-For, so `remote.ip` is no stronger than what the last trusted hop wrote; identity
 * and `source.ip` come from the tunnel.
 */
export function remoteIpOf(xff: string | readonly string[] | undefined, sourceIp: string | undefined, trustedHops = 0): string | undefined {
  const joined = Array.isArray(xff) ? xff.join(',') : (xff as string | undefined);
  if (joined) {
    const entries = joined.split(',').map((s) => s.trim()).filter((s) => s !== '');
    const chosen = entries[entries.length - 1 - trustedHops];
    if (chosen !== undefined && isIP(chosen) !== 0) return chosen;
  }
  return sourceIp;
}

/** The path of a request target: the part before the first `?`. */
export function pathOf(target: string): string {
  const q = target.indexOf('?');
  return q < 0 ? target : target.slice(0, q);
}

/** The values of the attribute a field or key reads, for a request or connection. */
type Getter = (a: Attributes) => string | number | undefined | readonly string[] | RequestAuth;

function headerValue(a: Attributes, name: string): string | undefined {
  if (!isRequest(a)) return undefined;
  const v = a.headers[name];
  return v === undefined ? undefined : typeof v === 'string' ? v : v.join(',');
}

const getters = {
  principal: (a: Attributes) => a.sourcePrincipal,
  namespace: (a: Attributes) => a.sourceNamespace ?? namespaceOfPrincipal(a.sourcePrincipal),
  sourceIp: (a: Attributes) => a.sourceIp,
  remoteIp: (a: Attributes) => (isRequest(a) ? (a.remoteIp ?? a.sourceIp) : a.sourceIp),
  destinationIp: (a: Attributes) => a.destinationIp,
  port: (a: Attributes) => a.destinationPort,
  method: (a: Attributes) => (isRequest(a) ? a.method : undefined),
  path: (a: Attributes) => (isRequest(a) ? pathOf(a.target) : undefined),
  target: (a: Attributes) => (isRequest(a) ? a.target : undefined),
  host: (a: Attributes) => (isRequest(a) ? (a.host ?? '') : undefined),
  requestPrincipal: (a: Attributes) => (isRequest(a) ? a.requestAuth : undefined),
  audiences: (a: Attributes) => (isRequest(a) ? a.requestAuth?.audiences : undefined),
  presenter: (a: Attributes) => (isRequest(a) ? a.requestAuth?.presenter : undefined),
} satisfies Record<string, Getter>;

/**
 * A claim of the request's JWT by its path (`request.auth.claims[a][b]`: `["a", "b"]`): a string,
 * or the string items of a list (Istio matches one of them); any other type matches nothing.
 * A top-level space-delimited claim (`scope`, `permission`, those its RequestAuthentication lists)
 * is the list of its words, as Envoy's jwt_authn writes it for RBAC (normalize_payload_in_metadata),
 * split once when the token was verified (RequestAuth.claimWords).
 */
function claimOf(a: Attributes, path: readonly string[]): string | readonly string[] | undefined {
  if (!isRequest(a) || !a.requestAuth) return undefined;
  const words = path.length === 1 ? a.requestAuth.claimWords?.get(path[0]!) : undefined;
  if (words) return words;
  const v = claimAt(a.requestAuth.claims, path);
  if (typeof v === 'string') return v;
  // Envoy's ListMatcher one_of: any string item may match; items of other types match nothing.
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : undefined;
}

/**
 * One `requestPrincipals` / `request.auth.principal` value as Istio's requestPrincipalGenerator
 * compiles it (pilot/pkg/security/authz/model/generator.go): split at the last `/` (an issuer may be
 * a URL) into iss and sub, matched each on its own, never as one joined string; `*` is any non-empty
 * value, so a token without `sub` matches nothing, `*` included (Envoy's metadata matcher on a
 * missing claim). `*x/sub`: iss by suffix, sub exactly; `iss/x*`: iss exactly, sub by prefix; no
 * `/`: `*x` is a suffix of sub, `x*` a prefix of iss.
 */
function requestPrincipalMatch(value: string): (auth: RequestAuth) => boolean {
  const any = (v: string | undefined): boolean => v !== undefined && v !== '';
  const exact = (x: string) => (v: string | undefined): boolean => v === x;
  const idx = value.lastIndexOf('/');
  const found = idx >= 0;
  const iss = found ? value.slice(0, idx) : value;
  const sub = found ? value.slice(idx + 1) : '';
  let matchIss: (v: string | undefined) => boolean;
  let matchSub: (v: string | undefined) => boolean;
  if (value === '*') {
    matchIss = any;
    matchSub = any;
  } else if (value.startsWith('*')) {
    if (found) {
      matchIss = iss === '*' ? any : (v) => v !== undefined && v.endsWith(iss.slice(1));
      matchSub = exact(sub);
    } else {
      matchIss = any;
      matchSub = (v) => v !== undefined && v.endsWith(value.slice(1));
    }
  } else if (value.endsWith('*')) {
    if (found) {
      matchIss = exact(iss);
      matchSub = sub === '*' ? any : (v) => v !== undefined && v.startsWith(sub.slice(0, -1));
    } else {
      matchIss = (v) => v !== undefined && v.startsWith(value.slice(0, -1));
      matchSub = any;
    }
  } else {
    matchIss = exact(iss);
    matchSub = exact(sub);
  }
  return (auth) => matchIss(auth.issuer) && matchSub(auth.subject);
}

/**
 * Istio's `namespaces` / `source.namespace` (pilot srcNamespaceGenerator: the regex
 * `.*` + `/ns/<value>/` + `.*` on the peer's SPIFFE ID, each `*` of the value turned into `.*`): `*`
 * any namespace, and a `*` anywhere else any characters there (`team-*-prod`).
 */
function namespaceMatch(value: string): (ns: string | undefined) => boolean {
  if (value === '*' || !value.includes('*')) return (ns) => globMatch(value, ns);
  const m = compileFullMatch(namespacePattern(value), Infinity);
  return (ns) => ns !== undefined && m(ns);
}

/** The trust domain of a SPIFFE ID (`spiffe://<td>/...`); undefined for none. */
function trustDomainOf(principal: string | undefined): string | undefined {
  if (!principal) return undefined;
  const bare = stripSpiffe(principal);
  const slash = bare.indexOf('/');
  return slash > 0 ? bare.slice(0, slash) : undefined;
}

/**
 * Istio's `trustDomains` / `source.trustDomain` (pilot srcTrustDomainGenerator, on the peer's
 * SPIFFE ID): globMatch on its trust domain (exact, `prefix*`, `*suffix`; a trust domain has no
 * `/`), `*` any peer with an identity (a trust domain is never empty). The controller expanded the values with the
 * trust-domain aliases (lib/policy/trust-domains.ts expandTrustDomainList).
 */
function trustDomainValueMatch(value: string): (principal: string | undefined) => boolean {
  return (p) => globMatch(value, trustDomainOf(p));
}

/** A configured string whose characters are each one byte in ISO-8859-1 (none past U+00FF). */
const LATIN1 = /^[\x00-\xff]*$/;

/**
 * A predicate true when any of `values` matches the attribute `get` reads. `widen`: a positive
 * match of a DENY or AUDIT policy, which may match more than Envoy's, never less (a header value
 * below).
 */
function matcher(kind: ValueKind, values: readonly string[], get: (a: Attributes) => unknown, widen = false): Predicate {
  switch (kind) {
    case 'principal': {
      const ps = values.map(stripSpiffe);
      return (a) => { const v = get(a) as string | undefined; const p = v ? stripSpiffe(v) : undefined; return ps.some((x) => globMatch(x, p)); };
    }
    case 'serviceAccount': {
      const matches = values.map(serviceAccountMatch);
      return (a) => { const v = get(a) as string | undefined; return v !== undefined && matches.some((m) => m(v)); };
    }
    case 'path': {
      // A path the policy writes with a raw `{`, `|`, `"`... also matches the form the waypoint
      // judges (encodeRawPathChars: BASE and the other modes but NONE encode them).
      const templates = values.filter(isPathTemplate).map(pathTemplateMatch);
      const forms = [...new Set(values.filter((x) => !isPathTemplate(x)).flatMap((x) => [x, encodeRawPathChars(x)]))];
      return (a) => {
        const v = get(a) as string | undefined;
        return forms.some((x) => globMatch(x, v)) || (v !== undefined && templates.some((m) => m(v)));
      };
    }
    case 'requestPrincipal': {
      const matches = values.map(requestPrincipalMatch);
      return (a) => { const v = get(a) as RequestAuth | undefined; return v !== undefined && matches.some((m) => m(v)); };
    }
    case 'namespace': {
      const matches = values.map(namespaceMatch);
      return (a) => { const v = get(a) as string | undefined; return matches.some((m) => m(v)); };
    }
    case 'trustDomain': {
      const matches = values.map(trustDomainValueMatch);
      return (a) => { const v = get(a) as string | undefined; return matches.some((m) => m(v)); };
    }
    case 'method':
      // Methods are case-sensitive (RFC 9110 §9.1): `delete` is not `DELETE`; the caller passes
      // the method the backend will see.
      return (a) => { const v = get(a) as string | undefined; return values.some((x) => globMatch(x, v)); };
    case 'header': {
      // A field's bytes against the value's UTF-8 bytes, as Envoy's header matcher (lib/field-bytes.ts).
      // A DENY or AUDIT also matches the latin1 reading of a value whose characters are all up to
      // U+00FF (`Jos` and the byte E9), which a backend reading fields as ISO-8859-1 takes for José:
      // it denies more, never less. Only a received value that is not valid UTF-8 is read so: a
      // UTF-8 value is compared as UTF-8 only, as Envoy (read as latin1, `Ã*` would take `über`,
      // whose lead byte C3 is `Ã`). An ALLOW, and a negated value, match the UTF-8 bytes only.
      const wire = [...new Set(values.map(fieldBytes))];
      const latin1 = widen ? [...new Set(values.filter((x) => LATIN1.test(x) && !wire.includes(x)))] : [];
      return (a) => {
        const v = get(a) as string | undefined;
        if (wire.some((x) => globMatch(x, v, true))) return true;
        return latin1.length > 0 && v !== undefined && !fieldIsUtf8(v) && latin1.some((x) => globMatch(x, v, true));
      };
    }
    case 'claim':
      return (a) => {
        const v = get(a) as string | readonly string[] | undefined;
        const items = v === undefined ? [] : typeof v === 'string' ? [v] : v;
        return items.some((item) => values.some((x) => globMatch(x, item)));
      };
    case 'host': {
      const lower = values.map((v) => v.toLowerCase());
      return (a) => {
        const h = (get(a) as string | undefined)?.toLowerCase();
        if (h === undefined) return false;
        // As written, port included: Istio matches `hosts` against :authority exactly (case aside),
        // so `foo.com` does not match `foo.com:8080`; a policy lists `foo.com:*` for that.
        return lower.some((p) => globMatch(p, h));
      };
    }
    case 'cidr': {
      const list = blockList(values);
      return (a) => inBlocks(list, get(a) as string | undefined);
    }
    case 'unavailable':
      return () => false;
    case 'port': {
      const ports = values.map((v) => {
        const n = Number(v);
        if (!Number.isInteger(n) || n < 0 || n > 65535) throw new Error(`${JSON.stringify(v)} is not a port`);
        return n;
      });
      return (a) => ports.includes(get(a) as number);
    }
  }
}

/**
 * The request pseudo-headers Envoy's header matcher reads (Istio's `request.headers[:path]`...), for
 * HTTP/1.1 and HTTP/2 alike: `:path` the whole request target, query included; `:scheme` `http`,
 * the scheme of the request inside the tunnel. Any other `:name` is a header no request has.
 */
const PSEUDO_HEADERS: ReadonlyMap<string, (a: Attributes) => unknown> = new Map([
  [':method', getters.method],
  [':path', getters.target],
  [':authority', getters.host],
  [':scheme', (a: Attributes) => (isRequest(a) ? 'http' : undefined)],
]);

const SOURCE_GETTERS: Record<string, (a: Attributes) => unknown> = {
  principals: getters.principal,
  namespaces: getters.namespace,
  namespacePatterns: getters.namespace,
  trustDomains: getters.principal,
  serviceAccounts: getters.principal,
  ipBlocks: getters.sourceIp,
  remoteIpBlocks: getters.remoteIp,
  requestPrincipals: getters.requestPrincipal,
};
const OPERATION_GETTERS: Record<string, (a: Attributes) => unknown> = {
  ports: getters.port,
  methods: getters.method,
  paths: getters.path,
  hosts: getters.host,
};
const CONDITION_GETTERS: Record<string, (args: readonly string[]) => (a: Attributes) => unknown> = {
  'source.ip': () => getters.sourceIp,
  'source.namespace': () => getters.namespace,
  'source.namespacePattern': () => getters.namespace,
  'source.trustDomain': () => getters.principal,
  'source.principal': () => getters.principal,
  'source.serviceAccount': () => getters.principal,
  'destination.ip': () => getters.destinationIp,
  'destination.port': () => getters.port,
  'remote.ip': () => getters.remoteIp,
  // `host` is the request's authority, whether it came as Host (HTTP/1.1) or :authority (HTTP/2), as
  // Envoy maps the one onto the other; a condition on it must not depend on the protocol.
  'request.headers': ([arg]) => { const name = arg!.toLowerCase(); return PSEUDO_HEADERS.get(name) ?? (name === 'host' ? getters.host : (a) => headerValue(a, name)); },
  'request.auth.principal': () => getters.requestPrincipal,
  'request.auth.audiences': () => getters.audiences,
  'request.auth.presenter': () => getters.presenter,
  'request.auth.claims': (args) => (a) => claimOf(a, args),
};

// ---------------------------------------------------------------------------------------------
// Compilation

/** One clause of a rule: a predicate and the layer needed to see it. */
interface Clause {
  layer: PolicyLayer;
  test: Predicate;
}

export class PolicyCompileError extends Error {
  readonly code = 'WEFT_POLICY_COMPILE';
  /** Field path inside the compiled rule list, e.g. `rules[0].from[1].ipBlocks`. */
  readonly path: string;
  constructor(path: string, message: string) {
    super(`${path}: ${message}`);
    this.name = 'PolicyCompileError';
    this.path = path;
  }
}

function fieldClauses(obj: object, table: Readonly<Record<string, FieldSpec>>, getters: Record<string, (a: Attributes) => unknown>, path: string, widen: boolean): Clause[] {
  const out: Clause[] = [];
  for (const [field, raw] of Object.entries(obj)) {
    if (raw === undefined) continue;
    const base = positiveField(field) ?? field;
    const spec = table[base];
    const get = getters[base];
    if (!spec || !get) throw new PolicyCompileError(`${path}.${field}`, 'field is not supported');
    if (!Array.isArray(raw)) throw new PolicyCompileError(`${path}.${field}`, 'must be a list');
    let test: Predicate;
    try {
      test = matcher(spec.kind, raw.map(String), get, widen && base === field);
    } catch (e) {
      throw new PolicyCompileError(`${path}.${field}`, (e as Error).message);
    }
    out.push({ layer: spec.layer, test: base === field ? test : (a) => !test(a) });
  }
  return out;
}

function conditionClauses(c: CompiledCondition, path: string, widen: boolean): Clause[] {
  const k = conditionKey(c.key, true);
  if ('error' in k) throw new PolicyCompileError(`${path}.key`, k.error);
  const { base } = parseConditionKey(c.key);
  const get = CONDITION_GETTERS[base]?.(k.args ?? []) ?? (() => undefined);
  const out: Clause[] = [];
  try {
    if (c.values && c.values.length > 0) out.push({ layer: k.spec.layer, test: matcher(k.spec.kind, c.values, get, widen) });
    if (c.notValues && c.notValues.length > 0) {
      const m = matcher(k.spec.kind, c.notValues, get);
      out.push({ layer: k.spec.layer, test: (a) => !m(a) });
    }
  } catch (e) {
    throw new PolicyCompileError(path, (e as Error).message);
  }
  return out;
}

/** A rule compiled for both layers: what it needs and its predicate as seen from each. */
interface CompiledRulePredicates {
  /** The rule needs L7 attributes somewhere. */
  layer: PolicyLayer;
  /** All clauses checked (an L7 enforcement point). */
  full: Predicate;
  /** Only the L4 clauses checked: the DENY narrowing at L4. */
  l4Part: Predicate;
}

function allOf(cs: Clause[], upTo: PolicyLayer): Predicate {
  const tests = cs.filter((c) => upTo === 'L7' || c.layer === 'L4').map((c) => c.test);
  return (a) => tests.every((t) => t(a));
}

/** `widen`: the rule is a DENY's or an AUDIT's, whose positive matches may match more (matcher). */
function compileRule(rule: CompiledRule, path: string, widen: boolean): CompiledRulePredicates {
  const from = rule.from.map((s: CompiledSource, i) => fieldClauses(s, COMPILED_SOURCE_FIELDS, SOURCE_GETTERS, `${path}.from[${i}]`, widen));
  const to = rule.to.map((o: CompiledOperation, i) => fieldClauses(o, OPERATION_FIELDS, OPERATION_GETTERS, `${path}.to[${i}]`, widen));
  const when = rule.when.flatMap((c, i) => conditionClauses(c, `${path}.when[${i}]`, widen));
  const needsL7 = [...from.flat(), ...to.flat(), ...when].some((c) => c.layer === 'L7');
  const build = (upTo: PolicyLayer): Predicate => {
    const f = from.map((cs) => allOf(cs, upTo));
    const t = to.map((cs) => allOf(cs, upTo));
    const w = allOf(when, upTo);
    return (a) => (f.length === 0 || f.some((p) => p(a))) && (t.length === 0 || t.some((p) => p(a))) && w(a);
  };
  return { layer: needsL7 ? 'L7' : 'L4', full: build('L7'), l4Part: build('L4') };
}

/** The layer a rule needs: L7 when any of its fields or conditions is one only a request shows. */
export function ruleLayer(rule: Pick<CompiledRule, 'from' | 'to' | 'when'>): PolicyLayer {
  return ruleL7Attributes(rule).length > 0 ? 'L7' : 'L4';
}

/** The attributes of a rule that only an L7 enforcement point sees (field names and condition keys), sorted. */
export function ruleL7Attributes(rule: Pick<CompiledRule, 'from' | 'to' | 'when'>): string[] {
  const found = new Set<string>();
  const fields = (o: object, table: Readonly<Record<string, FieldSpec>>) => {
    for (const f of Object.keys(o)) if (table[positiveField(f) ?? f]?.layer === 'L7') found.add(f);
  };
  for (const s of rule.from) fields(s, COMPILED_SOURCE_FIELDS);
  for (const o of rule.to) fields(o, OPERATION_FIELDS);
  for (const c of rule.when) {
    const k = conditionKey(c.key, true);
    if ('spec' in k && k.spec.layer === 'L7') found.add(c.key);
  }
  return [...found].sort();
}

export interface CompiledPolicy {
  id: string;
  /** As written: a dry-run policy's is the one it shadows (sent as AUDIT, mesh.ts policyAction). */
  action: AuthorizationPolicy['action'];
  /** Istio's dry-run: never enforced, judged only by the shadow engine of its action (never counted as AUDIT). */
  dryRun: boolean;
  /** Does the policy match, as seen from `layer`? */
  matches(a: Attributes, layer: PolicyLayer): boolean;
  /** Why it could not be compiled (a data plane newer or older than the controller); it then fails closed. */
  error?: PolicyCompileError;
}

const compiled = new WeakMap<AuthorizationPolicy, CompiledPolicy>();

/**
 * Compiles one policy (once per object). A policy that does not compile (which validation prevents;
 * only a version skew between controller and data plane can cause it) fails closed and costs only
 * its own scope: a DENY policy denies everything it applies to, an ALLOW policy allows nothing.
 */
export function compilePolicy(p: AuthorizationPolicy): CompiledPolicy {
  let c = compiled.get(p);
  if (c) return c;
  const id = `${p.namespace}/${p.name}`;
  const action = policyAction(p);
  const dryRun = p.dryRun !== undefined;
  try {
    if (action !== 'ALLOW' && action !== 'DENY' && action !== 'AUDIT') throw new PolicyCompileError(p.dryRun !== undefined ? 'dryRun' : 'action', `${JSON.stringify(action)} is not ALLOW, DENY or AUDIT`);
    const widens = action === 'DENY' || action === 'AUDIT';
    const rules = p.rules.map((r, i) => compileRule(r, `rules[${i}]`, widens));
    c = {
      id, action, dryRun,
      matches: (a, layer) => rules.some((r) => {
        if (layer === 'L7' || r.layer === 'L4') return r.full(a);
        // L4 cannot see the rule's L7 parts: an ALLOW rule never matches; a DENY or AUDIT rule is
        // narrowed to its L4 part, which widens what it denies or audits (Istio, for a TCP
        // enforcement point: pilot's authz model ignores the HTTP fields of DENY and AUDIT rules).
        return widens && r.l4Part(a);
      }),
    };
  } catch (e) {
    const error = e instanceof PolicyCompileError ? e : new PolicyCompileError('', (e as Error).message);
    // An action this data plane does not know (CUSTOM from a newer controller) denies what it
    // applies to, as Istio's waypoint does with a CUSTOM policy it cannot serve.
    const failClosed = action !== 'ALLOW' && action !== 'AUDIT';
    c = { id, action: action === 'ALLOW' || action === 'AUDIT' ? action : 'DENY', dryRun, matches: () => failClosed, error };
  }
  compiled.set(p, c);
  return c;
}

// ---------------------------------------------------------------------------------------------
// Evaluation

/**
 * A list of policies compiled (compilePolicy), with each shadow engine's dry-run policies listed
 * once: an enforcement point keeps one per destination per config version (a waypoint's
 * PolicyTable per Service, an agent's AgentState per workload), so judging a connection or request
 * walks no policy for its dry-run bookkeeping.
 */
export class CompiledPolicies {
  readonly list: readonly CompiledPolicy[];
  /** How many dry-run policies each shadow engine that has any holds; undefined when none is dry-run. */
  readonly dryRun: Readonly<Partial<Record<ShadowEngine, number>>> | undefined;
  readonly #policies: readonly AuthorizationPolicy[];
  #deny: CompiledPolicies | undefined;

  constructor(policies: readonly AuthorizationPolicy[]) {
    this.#policies = policies;
    this.list = policies.map(compilePolicy);
    let dryRun: Partial<Record<ShadowEngine, number>> | undefined;
    for (const p of this.list) {
      if (p.dryRun && (p.action === 'DENY' || p.action === 'ALLOW')) (dryRun ??= {})[p.action] = (dryRun[p.action] ?? 0) + 1;
    }
    this.dryRun = dryRun;
  }

  /** The DENY policies alone (enforced and dry-run), listed once. */
  get deny(): CompiledPolicies {
    return (this.#deny ??= new CompiledPolicies(this.#policies.filter((_, i) => this.list[i]!.action === 'DENY')));
  }
}

/**
 * Decides a connection (L4) or a request (L7) against the policies that apply to the destination.
 * The caller selects the policies (policySelectsWorkload for agents, PolicyTable for waypoints).
 * `layer` defaults to L7 for a request and L4 for a connection. Dry-run policies never decide;
 * their shadow results come with the decision (`dryRun`). `engine` asks for one judgement only:
 * `enforced` (no shadow results), or one shadow engine's (see dryRunOf).
 */
export function evaluate(compiledList: CompiledPolicies, a: Attributes, opts: { layer?: PolicyLayer; engine?: ShadowEngine | 'enforced' } = {}): Decision {
  const { layer = isRequest(a) ? 'L7' : 'L4', engine } = opts;
  const list = compiledList.list;
  if (engine !== undefined) return decide(list, a, layer, engine === 'enforced' ? undefined : engine);
  return withDryRun(decide(list, a, layer), compiledList, (shadow) => decide(list, a, layer, shadow));
}

/**
 * Decides with the enforced policies; dry-run ones never count. With `shadow`, decides instead as
 * that shadow engine: the dry-run policies of that action alone, as if enforced (no AUDIT).
 */
function decide(policies: readonly CompiledPolicy[], a: Attributes, layer: PolicyLayer, shadow?: ShadowEngine): Decision {
  const counts = shadow === undefined ? (p: CompiledPolicy) => !p.dryRun : (p: CompiledPolicy) => p.dryRun && p.action === shadow;
  const audit = shadow === undefined ? policies.filter((p) => p.action === 'AUDIT' && counts(p) && p.matches(a, layer)).map((p) => p.id) : [];
  const withAudit = (d: Decision): Decision => (audit.length > 0 ? { ...d, audit } : d);
  for (const p of policies) {
    if (p.action !== 'DENY' || !counts(p) || !p.matches(a, layer)) continue;
    const why = p.error ? `policy cannot be evaluated (${p.error.message}), fails closed` : 'matched a DENY rule';
    return withAudit({ allowed: false, policy: p.id, action: 'DENY', reason: `denied by ${p.id}: ${why}` });
  }
  const allows = policies.filter((p) => p.action === 'ALLOW' && counts(p));
  if (allows.length === 0) return withAudit({ allowed: true, reason: 'no ALLOW policy applies' });
  for (const p of allows) {
    if (p.matches(a, layer)) return withAudit({ allowed: true, policy: p.id, reason: `allowed by ${p.id}` });
  }
  const names = allows.map((p) => p.id).join(', ');
  const l7 = layer === 'L4' ? ' (rules with L7 attributes cannot match without a waypoint)' : '';
  return withAudit({ allowed: false, policy: allows[0]!.id, action: 'ALLOW', reason: `no ALLOW rule matched in ${names}${l7}` });
}

/** A shadow engine: the dry-run policies of one action. */
export type ShadowEngine = 'ALLOW' | 'DENY';

/**
 * What the dry-run policies among `policies` would have decided, one result per shadow engine that
 * has a policy (undefined when none is dry-run; the counts are CompiledPolicies', made once).
 * `judge(engine)` is the enforcement point's own judgement made with that engine's policies alone
 * (evaluate's `engine`), so every rule it adds (an agent's carried caller, say) applies in shadow
 * too. Shadow judgement never changes the real decision and never throws: a judge that throws
 * gives that engine the result `error`, with the reason.
 */
export function dryRunOf(policies: CompiledPolicies, judge: (engine: ShadowEngine) => Decision): DryRunResult[] | undefined {
  const engines = policies.dryRun;
  if (!engines) return undefined;
  const out: DryRunResult[] = [];
  for (const action of ['DENY', 'ALLOW'] as const) {
    const count = engines[action];
    if (!count) continue;
    try {
      const d = judge(action);
      // A DENY engine's refusal names the DENY that matched, an ALLOW engine's admission the ALLOW
      // (an ALLOW engine's refusal matched none).
      const matched = (action === 'DENY') !== d.allowed ? d.policy : undefined;
      out.push({ action, result: d.allowed ? 'allowed' : 'denied', ...(matched !== undefined ? { policy: matched } : {}), policies: count, reason: d.reason });
    } catch (err) {
      out.push({ action, result: 'error', policies: count, reason: `shadow evaluation failed: ${(err as Error).message}` });
    }
  }
  return out;
}

function withDryRun(d: Decision, list: CompiledPolicies, judge: (engine: ShadowEngine) => Decision): Decision {
  const dryRun = dryRunOf(list, judge);
  return dryRun ? { ...d, dryRun } : d;
}

/**
 * Istio's access-log keys for the shadow results (the RBAC filter's dynamic metadata under its
 * shadow_rules_stat_prefix `istio_dry_run_allow_` / `istio_dry_run_deny_`): the engine result and,
 * when a dry-run policy matched, its id.
 */
export function dryRunLogFields(results: readonly DryRunResult[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const r of results ?? []) {
    const prefix = `istio_dry_run_${r.action.toLowerCase()}_`;
    out[`${prefix}shadow_engine_result`] = r.result;
    if (r.policy !== undefined) out[`${prefix}shadow_effective_policy_id`] = r.policy;
  }
  return out;
}

/**
 * The labels a shadow result is counted under (`weft_authz_dry_run_total`, agents and waypoints
 * alike): Istio's stat tags `authz_dry_run_action` (allow, deny) and `authz_dry_run_result`
 * (allowed, denied), and the dry-run policy that matched, empty when none did (as Envoy's
 * shadow_effective_policy_id), so adding or removing a dry-run policy leaves no stale series.
 */
export function dryRunLabels(r: DryRunResult): { policy: string; authz_dry_run_action: string; authz_dry_run_result: string } {
  return { policy: r.policy ?? '', authz_dry_run_action: r.action.toLowerCase(), authz_dry_run_result: r.result };
}

/** The counter's name and help, one definition for every reporter. */
export const DRY_RUN_METRIC = {
  name: 'weft_authz_dry_run_total',
  help: 'What dry-run AuthorizationPolicies (istio.io/dry-run) would have decided, by shadow engine (authz_dry_run_action), result and policy; never enforced',
  labelNames: ['policy', 'authz_dry_run_action', 'authz_dry_run_result'] as const,
};

/**
 * Does a policy apply to a Service at its waypoint? Only a policy attached by `targetRefs`: to the
 * Service, or to the whole waypoint (the controller lists that waypoint's Services). As in Istio
 * (pilot/pkg/model/policyattachment.go, ShouldAttachPolicy: "waypoints never use selector"),
 * namespace-wide, root-namespace and selector policies are the destination agents', which judge
 * the waypoint as the peer (and, for DENY, the caller it carries: agent/src/delivery.ts).
 */
export function appliesToService(p: AuthorizationPolicy, service: string): boolean {
  return waypointTargets(p).includes(service);
}

/** One config version's policies for a waypoint, compiled once, listed per Service on first use. */
export class PolicyTable {
  readonly #policies: readonly AuthorizationPolicy[];
  readonly #byService = new Map<string, CompiledPolicies>();

  constructor(policies: readonly AuthorizationPolicy[]) {
    this.#policies = policies;
    for (const p of policies) compilePolicy(p);
  }

  /** Policies that could not be compiled (each failing closed), with the field at fault. */
  get errors(): Array<{ policy: string; error: PolicyCompileError }> {
    return this.#policies.map(compilePolicy).filter((c) => c.error).map((c) => ({ policy: c.id, error: c.error! }));
  }

  /** Judges a request (L7) or a passed-through connection (L4) to `service` (`namespace/name`). */
  evaluate(service: string, a: Attributes, layer: PolicyLayer = isRequest(a) ? 'L7' : 'L4'): Decision {
    let list = this.#byService.get(service);
    if (!list) {
      list = new CompiledPolicies(this.#policies.filter((p) => appliesToService(p, service)));
      this.#byService.set(service, list);
    }
    return evaluate(list, a, { layer });
  }
}
