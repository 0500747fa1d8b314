// The AuthorizationPolicy vocabulary, in one place: every source field, operation field and `when`
// key Weft reads, the layer that can see it (L4: an agent, or a waypoint passing TCP through; L7: a
// waypoint looking at an HTTP request), and the kind of value it takes. Validation
// (lib/model/validate.ts), compilation (controller/src/compile.ts) and both data planes
// (lib/policy/authz.ts) read this table, so a key the validator accepts is one every enforcement
// point understands, and one it does not know is refused before it reaches any of them.
//
// `requestPrincipals` and `request.auth.*` read what a RequestAuthentication verified (lib/policy/jwt.ts):
// only a waypoint sees a request's token, so they are L7, and an agent enforcing them treats them as
// any other L7 attribute (an ALLOW rule never matches, a DENY rule is narrowed to its L4 parts).
//
// Istio keys whose attribute no Weft enforcement point has, accepted as Istio accepts them and
// judged as Envoy judges an absent value (a value never matches, a notValue always does):
//   - `connection.sni`: HBONE tunnels carry no application SNI to an enforcement point (Istio's
//     waypoint sees none either: its inner HTTP connection has no TLS);
//   - `experimental.envoy.filters.*[key]`: Envoy filter metadata, which no Weft data plane writes.
// They are L7 (ztunnel's l4WhenAttributes leave them out): at an agent an ALLOW rule on them never
// matches and a DENY rule is narrowed to its L4 parts. Refusing them would be worse than Istio: a
// refused ALLOW is not in force, and with no other ALLOW its scope is open.
import { isIP } from 'node:net';
import { addressProblem } from '../model/address.ts';
import { escapeRegex, regexProblem, type RegexBudget } from '../regex.ts';

/** Where an attribute can be seen. */
export type PolicyLayer = 'L4' | 'L7';

/** What a field's values are and how they match. */
export type ValueKind =
  /** `<td>/ns/<ns>/sa/<sa>` (the `spiffe://` scheme optional), `*` at either end; any other value is matched exactly. */
  | 'principal'
  /** A namespace name; each `*` stands for any characters (Istio's srcNamespaceGenerator: `.*`). */
  | 'namespace'
  /** The trust domain of the peer's SPIFFE ID: exact, or one `*` at either end; `*` any peer with an identity. */
  | 'trustDomain'
  /**
   * `<namespace>/<service-account>`, or `<service-account>` in the policy's own namespace (the
   * controller writes the namespace in); no `*` (Istio `serviceAccounts`, `source.serviceAccount`).
   */
  | 'serviceAccount'
  /** An IP address or CIDR block. */
  | 'cidr'
  /** 0-65535 (Istio ValidatePorts; 0 is a port no connection has). */
  | 'port'
  /** An HTTP method, compared case-sensitively (RFC 9110 §9.1). */
  | 'method'
  /** A path: exact, `prefix*`, `*suffix` or `*`; or a template with `{*}` and `{**}` (Istio, Envoy's uri_template). */
  | 'path'
  /** A host, compared case-insensitively and as written, port included (`foo.com:*` for any port). */
  | 'host'
  /** A header value: exact, `prefix*`, `*suffix`; `*` means the header is present. */
  | 'header'
  /**
   * A request principal `<iss>/<sub>` from a verified JWT, split at the last `/` and matched part by
   * part as Istio does (authz.ts requestPrincipalMatch): exact, `prefix*`, `*suffix`, `*` (any).
   */
  | 'requestPrincipal'
  /** A JWT claim, audience or presenter: exact, `prefix*`, `*suffix`, `*` (any non-empty); a list claim matches when one item does. */
  | 'claim'
  /** An attribute no Weft enforcement point has (`connection.sni`, Envoy filter metadata): no value matches it. */
  | 'unavailable';

export interface FieldSpec {
  layer: PolicyLayer;
  kind: ValueKind;
  /**
   * Names who the caller is (the peer's identity or the request's token): Istio refuses it with a
   * CUSTOM action (ValidateAuthorizationPolicy "is currently not supported with CUSTOM action").
   */
  identity?: true;
}

/** `rules[].from[].source` fields (each also exists as `not<Field>`). */
export const SOURCE_FIELDS: Readonly<Record<string, FieldSpec>> = {
  principals: { identity: true, layer: 'L4', kind: 'principal' },
  namespaces: { identity: true, layer: 'L4', kind: 'namespace' },
  trustDomains: { identity: true, layer: 'L4', kind: 'trustDomain' },
  serviceAccounts: { identity: true, layer: 'L4', kind: 'serviceAccount' },
  ipBlocks: { layer: 'L4', kind: 'cidr' },
  /** The client address from X-Forwarded-For: only a waypoint reading the request sees it. */
  remoteIpBlocks: { layer: 'L7', kind: 'cidr' },
  /** `<iss>/<sub>` of the request's verified JWT (RequestAuthentication): only a waypoint sees it. */
  requestPrincipals: { identity: true, layer: 'L7', kind: 'requestPrincipal' },
};

/** `rules[].to[].operation` fields (each also exists as `not<Field>`). */
export const OPERATION_FIELDS: Readonly<Record<string, FieldSpec>> = {
  ports: { layer: 'L4', kind: 'port' },
  methods: { layer: 'L7', kind: 'method' },
  paths: { layer: 'L7', kind: 'path' },
  hosts: { layer: 'L7', kind: 'host' },
};

/**
 * `when` keys; `request.headers` takes a header name (`request.headers[x-user]`), `request.auth.claims`
 * a claim name, or a path of them into nested claims (`request.auth.claims[a][b]`), as Istio
 * (https://istio.io/latest/docs/reference/config/security/conditions/).
 */
export const CONDITION_KEYS: Readonly<Record<string, FieldSpec & { arg?: 'header' | 'claim' }>> = {
  'source.ip': { layer: 'L4', kind: 'cidr' },
  'source.namespace': { identity: true, layer: 'L4', kind: 'namespace' },
  'source.trustDomain': { identity: true, layer: 'L4', kind: 'trustDomain' },
  'source.principal': { identity: true, layer: 'L4', kind: 'principal' },
  'source.serviceAccount': { identity: true, layer: 'L4', kind: 'serviceAccount' },
  'destination.ip': { layer: 'L4', kind: 'cidr' },
  'destination.port': { layer: 'L4', kind: 'port' },
  'remote.ip': { layer: 'L7', kind: 'cidr' },
  'request.headers': { layer: 'L7', kind: 'header', arg: 'header' },
  'request.auth.principal': { identity: true, layer: 'L7', kind: 'requestPrincipal' },
  'request.auth.audiences': { identity: true, layer: 'L7', kind: 'claim' },
  'request.auth.presenter': { identity: true, layer: 'L7', kind: 'claim' },
  'request.auth.claims': { identity: true, layer: 'L7', kind: 'claim', arg: 'claim' },
  'connection.sni': { layer: 'L7', kind: 'unavailable' },
};

/**
 * Written only by the controller (controller/src/compile.ts), never accepted in a policy: a
 * `namespaces` / `notNamespaces` list or a `source.namespace` condition with a value a data plane
 * older than namespace patterns reads wrongly (namespaceNeedsPattern: its globMatch took
 * `team-*-prod` literally, matching nothing, so a DENY naming it denied nothing) is sent under these
 * names. That older data plane refuses a field or key it does not know (authz.ts fieldClauses "field
 * is not supported", conditionClauses "is not a supported condition key"), so the policy fails
 * closed there, a DENY denying all it applies to, until it is upgraded.
 */
export const COMPILED_SOURCE_FIELDS: Readonly<Record<string, FieldSpec>> = { ...SOURCE_FIELDS, namespacePatterns: SOURCE_FIELDS.namespaces! };
const COMPILED_CONDITION_KEYS: Readonly<Record<string, FieldSpec>> = { 'source.namespacePattern': CONDITION_KEYS['source.namespace']! };

/**
 * Does a data plane older than namespace patterns misread this `namespaces` value? It matched
 * `*`, `prefix*` and `*suffix` as Istio does, and any other value with a `*` literally.
 */
export function namespaceNeedsPattern(value: string): boolean {
  const stars = value.split('*').length - 1;
  return stars > 1 || (stars === 1 && value !== '*' && !value.startsWith('*') && !value.endsWith('*'));
}

/** Istio's `experimental.envoy.filters.<filter>[<key>]` (Envoy dynamic metadata): accepted, never present. */
const ENVOY_FILTER_METADATA = 'experimental.envoy.filters.';
const ENVOY_FILTER_SPEC: FieldSpec = { layer: 'L7', kind: 'unavailable' };

/**
 * A header name, or one of HTTP/2's request pseudo-headers (`:method`, `:path`, `:authority`,
 * `:scheme`), which Envoy's header matcher reads and Istio's `request.headers[...]` accepts.
 */
const HEADER_NAME = /^:?[A-Za-z0-9!#$%&'*+\-.^_`|~]+$/;

/**
 * Splits `request.headers[x-user]` into its base key and argument (`["x-user"]`),
 * `request.auth.claims[a][b]` into its base key and arguments (`["a", "b"]`).
 */
export function parseConditionKey(key: string): { base: string; args?: string[] } {
  const m = /^([a-z.]+)((?:\[[^\][]*\])+)$/.exec(key);
  if (!m) return { base: key };
  return { base: m[1]!, args: m[2]!.slice(1, -1).split('][') };
}

/** The spec of a `when` key, or why it is refused; `compiled`: also a key only the controller writes (COMPILED_CONDITION_KEYS). */
export function conditionKey(key: string, compiled = false): { spec: FieldSpec; args?: string[] } | { error: string } {
  if (key.startsWith(ENVOY_FILTER_METADATA)) {
    // Istio (validateMapKey, envoyFilterGenerator): `<filter>[<key>]`.
    return /^[^[\]]+\[[^[\]]+\]$/.test(key.slice(ENVOY_FILTER_METADATA.length)) ? { spec: ENVOY_FILTER_SPEC } : { error: `"${key}" needs a filter and a key: ${ENVOY_FILTER_METADATA}<filter>[<key>]` };
  }
  const { base, args } = parseConditionKey(key);
  const spec = CONDITION_KEYS[base] ?? (compiled ? COMPILED_CONDITION_KEYS[base] : undefined);
  if (!spec) {
    const known = Object.entries(CONDITION_KEYS).map(([k, s]) => (s.arg ? `${k}[<name>]` : k)).join(', ');
    return { error: `"${key}" is not a supported condition key (${known}, ${ENVOY_FILTER_METADATA}<filter>[<key>])` };
  }
  if (spec.arg === 'header' && (args === undefined || args.length !== 1 || !HEADER_NAME.test(args[0]!))) return { error: `"${key}" needs a header name: ${base}[x-name]` };
  if (spec.arg === 'claim' && (args === undefined || args.some((a) => a === ''))) return { error: `"${key}" needs a claim name: ${base}[name], or ${base}[name][nested] for a nested claim` };
  if (!spec.arg && args !== undefined) return { error: `"${key}" takes no [argument]` };
  return args !== undefined ? { spec, args } : { spec };
}

/** `notPaths` → `paths`; undefined when the field is not negated. */
export function positiveField(field: string): string | undefined {
  return /^not[A-Z]/.test(field) ? field[3]!.toLowerCase() + field.slice(4) : undefined;
}

/** Is `s` an IP address or a CIDR block with a valid prefix length? */
export function isCidr(s: string): boolean {
  return cidrProblem(s) === undefined;
}

/** Why `s` is not an IP address or a CIDR block with a valid prefix length, or undefined (its address as addressProblem judges one: no zone). */
export function cidrProblem(s: string): string | undefined {
  const slash = s.indexOf('/');
  const addr = slash < 0 ? s : s.slice(0, slash);
  const family = isIP(addr);
  const notOne = `${JSON.stringify(s)} is not an IP address or CIDR block`;
  if (family === 0) return notOne;
  // A zone (fe80::1%eth0) names no peer's address. Matched by prefix, not as a string
  // (lib/policy/authz.ts blockList), any spelling Istio's netip parse takes is one (FD00::/8).
  const why = addressProblem(addr);
  if (why) return why;
  if (slash < 0) return undefined;
  const bits = s.slice(slash + 1);
  return /^[0-9]{1,3}$/.test(bits) && Number(bits) <= (family === 4 ? 32 : 128) ? undefined : notOne;
}

/**
 * What is wrong with `value` for a field of `kind`; undefined when it is fine. Istio's validation
 * (pkg/config/validation ValidateAuthorizationPolicy) asks of most values only that they are not
 * empty: a value no request can match (a lower-case method, a principal that is no SPIFFE path, a
 * `*` inside a host) is a rule that matches nothing, not a refused policy. Refusing more than Istio
 * would not be safer: a refused ALLOW is not in force, and with no other ALLOW its scope is open.
 */
export function valueProblem(kind: ValueKind, value: string, budget?: RegexBudget): string | undefined {
  const q = JSON.stringify(value);
  switch (kind) {
    case 'cidr':
      return cidrProblem(value);
    case 'port':
      // Istio (pkg/config/security ValidatePorts): 0-65535.
      return /^[0-9]+$/.test(value) && Number(value) <= 65535 ? undefined : `${q} is not a port number (0-65535)`;
    case 'serviceAccount': {
      // Istio (pkg/config/security CheckServiceAccount).
      if (value.includes('*')) return `${q}: no wildcard is allowed in a service account`;
      if (value.length > 320) return `${q} is longer than 320 characters`;
      const parts = value.split('/');
      if (parts.length > 2 || parts.some((x) => x === '')) return `${q} is not <service-account> or <namespace>/<service-account>`;
      return undefined;
    }
    case 'trustDomain':
      // Istio (pkg/config/security CheckWildcardValues; a source's trustDomains also refuse `/`).
      if (value === '*') return undefined;
      if ((value.match(/\*/g) ?? []).length > 1 || (value.includes('*') && !value.startsWith('*') && !value.endsWith('*'))) return `${q}: at most one *, and only as the first or last character`;
      return undefined;
    case 'path':
      // Istio (pkg/config/security CheckValidPathTemplate), for every path: `{` and `}` only in a
      // whole `{*}` or `{**}` segment (`/{buzz}`, a named variable, is refused).
      if (isPathTemplate(value)) return pathTemplateProblem(value, budget);
      if (/[{}]/.test(value)) return `${q}: { and } are allowed only in a whole segment {*} or {**}`;
      return undefined;
    case 'namespace': {
      const tooBig = value !== '*' && value.includes('*') ? regexProblem(namespacePattern(value), budget) : undefined;
      return tooBig ? `${q}: as a pattern it ${tooBig}` : undefined;
    }
    case 'principal':
    case 'method':
    case 'host':
    case 'header':
    case 'requestPrincipal':
    case 'claim':
    case 'unavailable':
      return undefined;
  }
}

/**
 * The RE2 pattern (full match) of a `namespaces` value with a `*` in it, as Istio's
 * srcNamespaceGenerator writes it: each `*` any characters, the rest literally.
 */
export function namespacePattern(value: string): string {
  return value.split('*').map(escapeRegex).join('.*');
}

/** Istio's path template operators (Operation.paths): one path segment, and any number of them (last). */
export const PATH_MATCH_ONE = '{*}';
export const PATH_MATCH_ANY = '{**}';

/** Is this `paths` value a template (Istio: it contains `{*}` or `{**}`)? */
export function isPathTemplate(value: string): boolean {
  return value.includes(PATH_MATCH_ONE) || value.includes(PATH_MATCH_ANY);
}

/** Characters a literal path segment of a template may hold (RFC 3986 pchar, as Envoy's uri_template). */
const PATH_TEMPLATE_LITERAL = "a-zA-Z0-9\\-._~%!$&'()+,;:@=";
const TEMPLATE_LITERAL = new RegExp(`^[${PATH_TEMPLATE_LITERAL}]+$`);

/**
 * The RE2 pattern (full match) of a path template, as Envoy's uri_template matches it: `{*}` one or
 * more characters of a path segment, `{**}` any characters including `/` (possibly none),
 * everything else literally. Validation checks that it compiles within lib/regex.ts's bounds.
 */
export function pathTemplatePattern(template: string): string {
  const one = `[${PATH_TEMPLATE_LITERAL}]+`;
  const any = `[${PATH_TEMPLATE_LITERAL}/]*`;
  return template.split(PATH_MATCH_ANY).map((part) => part.split(PATH_MATCH_ONE).map(escapeRegex).join(one)).join(any);
}

/**
 * What is wrong with a path template, as Istio's CheckValidPathTemplate judges it: every segment is
 * `{*}`, `{**}` (at most one, after every other operator) or a literal of pchar characters, so no
 * `*`, `{` or `}` outside an operator and nothing else in an operator's segment.
 */
function pathTemplateProblem(value: string, budget: RegexBudget | undefined): string | undefined {
  const q = JSON.stringify(value);
  if (!value.startsWith('/')) return `${q}: a path template must start with /`;
  let anySeen = false;
  for (const seg of value.replace(/^\/+|\/+$/g, '').split('/')) {
    if ((seg === PATH_MATCH_ONE || seg === PATH_MATCH_ANY) && anySeen) return `${q}: {**} must be the last operator`;
    if (seg === PATH_MATCH_ANY) anySeen = true;
    if (seg === PATH_MATCH_ONE || seg === PATH_MATCH_ANY) continue;
    if (/[{}]/.test(seg)) return `${q}: { and } are allowed only in a whole segment {*} or {**}`;
    if (!TEMPLATE_LITERAL.test(seg)) return `${q}: segment ${JSON.stringify(seg)} is not a literal of a path template (no *, and only RFC 3986 path characters)`;
  }
  const tooBig = regexProblem(pathTemplatePattern(value), budget);
  return tooBig ? `${q}: as a pattern it ${tooBig}` : undefined;
}
