// L7 AuthorizationPolicy evaluation with Istio semantics:
//   - DENY policies first: any matching DENY rule denies;
//   - then, if any ALLOW policy applies to the destination, the request must match one of them;
//   - no applicable policy: allow.
// A rule matches when all of its parts match: `from` (OR of sources), `to` (OR of operations),
// `when` (AND of conditions). Within a field, values are OR'ed; a `notX` field fails the rule when any
// value matches. Strings use Istio matching: exact, `prefix*`, `*suffix`, or `*` (present).
//
// Scope: service-targeted policies apply to their services; namespace and mesh policies to every
// service behind this waypoint. Workload-selector policies are enforced by the node agents (as in
// Istio ambient) and are skipped here.
//
// TCP connections (no HTTP) follow Istio too: an HTTP-only field (methods, paths, hosts, request.*
// conditions) never matches in an ALLOW rule and is ignored in a DENY rule, so policies only ever get
// stricter for traffic they cannot fully inspect.
//
// Field and `when` key matchers live in registries: a new attribute is one `register*` call.
import { BlockList, isIP } from 'node:net';
import type { AuthorizationPolicy, CompiledCondition, CompiledOperation, CompiledRule, CompiledSource } from '../../lib/model/mesh.ts';
import type { ConfigIssue } from './errors.ts';
import type { HeaderMap } from './headers.ts';

/** What the policy engine sees of one request. */
export interface PolicyRequest {
  /** Destination service, `namespace/name`. */
  service: string;
  /** The caller's SPIFFE ID (the tunnel's peer identity); undefined for plaintext. */
  principal?: string;
  sourceIp?: string;
  /** The original client for `remote.ip` (X-Forwarded-For at the waypoint); `sourceIp` when absent. */
  remoteIp?: string;
  destinationIp?: string;
  port: number;
  method: string;
  /** Path without the query string. */
  path: string;
  host: string;
  headers: HeaderMap;
  /** False for a TCP connection the waypoint passes through without HTTP. Default true. */
  l7?: boolean;
}

export type PolicyDecision =
  | { allowed: true }
  | { allowed: false; policy: string; action: 'DENY' | 'ALLOW'; reason: string };

type Predicate = (req: PolicyRequest) => boolean;

/** Compiles a field's values into a predicate that is true when any value matches; throws on bad values. */
export type FieldMatcher = (values: readonly string[]) => Predicate;

const sourceFields = new Map<string, FieldMatcher>();
const operationFields = new Map<string, FieldMatcher>();

/** `key` → values compiler, for `when` conditions. Keys with `[...]` register their prefix, e.g. `request.headers`. */
const conditionKeys = new Map<string, (arg: string | undefined, values: readonly string[]) => Predicate>();

/** Fields and condition keys that need HTTP (see the TCP rule in the module comment). */
const httpOnly = new Set<string>();

export function registerSourceField(field: string, m: FieldMatcher): void { sourceFields.set(field, m); }
export function registerOperationField(field: string, m: FieldMatcher, opts: { httpOnly?: boolean } = {}): void {
  operationFields.set(field, m);
  if (opts.httpOnly) httpOnly.add(`to:${field}`);
}
export function registerConditionKey(key: string, m: (arg: string | undefined, values: readonly string[]) => Predicate, opts: { httpOnly?: boolean } = {}): void {
  conditionKeys.set(key, m);
  if (opts.httpOnly) httpOnly.add(`when:${key}`);
}

/** For a TCP request an HTTP-only predicate is true in a DENY rule and false in an ALLOW rule. */
function l7Only(p: Predicate, action: string): Predicate {
  const tcpVerdict = action === 'DENY';
  return (r) => (r.l7 === false ? tcpVerdict : p(r));
}

/** Istio string matching: exact, `prefix*`, `*suffix`, `*` = any non-empty value. */
export function istioStringMatch(pattern: string, value: string | undefined): boolean {
  if (value === undefined) return false;
  if (pattern === '*') return value !== '';
  if (pattern.endsWith('*')) return value.startsWith(pattern.slice(0, -1));
  if (pattern.startsWith('*')) return value.endsWith(pattern.slice(1));
  return value === pattern;
}

function anyString(values: readonly string[], get: (r: PolicyRequest) => string | undefined): Predicate {
  const vs = [...values];
  return (r) => { const v = get(r); return vs.some((p) => istioStringMatch(p, v)); };
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

function cidrList(values: readonly string[]): BlockList {
  const list = new BlockList();
  for (const v of values) {
    const [addr, bits, extra] = v.split('/');
    const family = isIP(addr ?? '');
    if (extra !== undefined || family === 0) throw new Error(`${JSON.stringify(v)} is not an IP address or CIDR`);
    const type = family === 4 ? 'ipv4' : 'ipv6';
    const max = family === 4 ? 32 : 128;
    const prefix = bits === undefined ? max : Number(bits);
    if (!Number.isInteger(prefix) || prefix < 0 || prefix > max || (bits !== undefined && !/^[0-9]+$/.test(bits))) {
      throw new Error(`${JSON.stringify(v)} has an invalid prefix length`);
    }
    list.addSubnet(addr!, prefix, type);
  }
  return list;
}

function ipPredicate(values: readonly string[], get: (r: PolicyRequest) => string | undefined): Predicate {
  const list = cidrList(values);
  return (r) => {
    let ip = get(r);
    if (!ip) return false;
    if (ip.startsWith('::ffff:') && isIP(ip.slice(7)) === 4) ip = ip.slice(7);
    const fam = isIP(ip);
    return fam !== 0 && list.check(ip, fam === 4 ? 'ipv4' : 'ipv6');
  };
}

function portPredicate(values: readonly (string | number)[], get: (r: PolicyRequest) => number): Predicate {
  const ports = values.map((v) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1 || n > 65535) throw new Error(`${JSON.stringify(v)} is not a port`);
    return n;
  });
  return (r) => ports.includes(get(r));
}

registerSourceField('principals', (vs) => {
  const patterns = vs.map(stripSpiffe);
  return (r) => { const p = r.principal ? stripSpiffe(r.principal) : undefined; return patterns.some((x) => istioStringMatch(x, p)); };
});
registerSourceField('namespaces', (vs) => anyString(vs, (r) => namespaceOfPrincipal(r.principal)));
registerSourceField('ipBlocks', (vs) => ipPredicate(vs, (r) => r.sourceIp));

registerOperationField('methods', (vs) => anyString(vs, (r) => r.method), { httpOnly: true });
registerOperationField('paths', (vs) => anyString(vs, (r) => r.path), { httpOnly: true });
registerOperationField('hosts', (vs) => {
  const lower = vs.map((v) => v.toLowerCase());
  return (r) => {
    const h = r.host.toLowerCase();
    const bare = h.replace(/:[0-9]+$/, '');
    return lower.some((p) => istioStringMatch(p, h) || istioStringMatch(p, bare));
  };
}, { httpOnly: true });
registerOperationField('ports', (vs) => portPredicate(vs, (r) => r.port));

registerConditionKey('request.headers', (arg, vs) => {
  if (!arg) throw new Error('request.headers needs a header name: request.headers[x-name]');
  const name = arg.toLowerCase();
  return anyString(vs, (r) => { const v = r.headers[name]; return Array.isArray(v) ? v.join(',') : v; });
}, { httpOnly: true });
registerConditionKey('source.ip', (_a, vs) => ipPredicate(vs, (r) => r.sourceIp));
registerConditionKey('remote.ip', (_a, vs) => ipPredicate(vs, (r) => r.remoteIp ?? r.sourceIp));
registerConditionKey('destination.ip', (_a, vs) => ipPredicate(vs, (r) => r.destinationIp));
registerConditionKey('destination.port', (_a, vs) => portPredicate(vs, (r) => r.port));
registerConditionKey('source.principal', (_a, vs) => {
  const patterns = vs.map(stripSpiffe);
  return (r) => { const p = r.principal ? stripSpiffe(r.principal) : undefined; return patterns.some((x) => istioStringMatch(x, p)); };
});
registerConditionKey('source.namespace', (_a, vs) => anyString(vs, (r) => namespaceOfPrincipal(r.principal)));
registerConditionKey('request.method', (_a, vs) => anyString(vs, (r) => r.method), { httpOnly: true });
registerConditionKey('request.path', (_a, vs) => anyString(vs, (r) => r.path), { httpOnly: true });

function parseKey(key: string): { base: string; arg: string | undefined } {
  const m = /^([a-z.]+)\[([^\]]+)\]$/.exec(key);
  return m ? { base: m[1]!, arg: m[2] } : { base: key, arg: undefined };
}

function compileFields(obj: object, registry: Map<string, FieldMatcher>, kind: 'from' | 'to', action: string, path: string, issues: string[]): Predicate[] {
  const preds: Predicate[] = [];
  for (const [field, raw] of Object.entries(obj)) {
    if (raw === undefined) continue;
    const negated = /^not[A-Z]/.test(field);
    const base = negated ? field[3]!.toLowerCase() + field.slice(4) : field;
    const m = registry.get(base);
    if (!m) { issues.push(`${path}.${field}: field is not supported by the waypoint`); continue; }
    const values = (raw as Array<string | number>).map(String);
    try {
      const p = m(values);
      const pred: Predicate = negated ? (r) => !p(r) : p;
      preds.push(httpOnly.has(`${kind}:${base}`) ? l7Only(pred, action) : pred);
    } catch (e) {
      issues.push(`${path}.${field}: ${(e as Error).message}`);
    }
  }
  return preds;
}

function compileCondition(c: CompiledCondition, action: string, path: string, issues: string[]): Predicate[] {
  const { base, arg } = parseKey(c.key);
  const m = conditionKeys.get(base);
  if (!m) { issues.push(`${path}.key: ${JSON.stringify(c.key)} is not a supported condition key`); return []; }
  const preds: Predicate[] = [];
  try {
    if (c.values && c.values.length > 0) preds.push(m(arg, c.values));
    if (c.notValues && c.notValues.length > 0) { const p = m(arg, c.notValues); preds.push((r) => !p(r)); }
  } catch (e) {
    issues.push(`${path}: ${(e as Error).message}`);
  }
  return httpOnly.has(`when:${base}`) ? preds.map((p) => l7Only(p, action)) : preds;
}

function all(preds: Predicate[]): Predicate {
  return (r) => preds.every((p) => p(r));
}

function anyOf(groups: Predicate[]): Predicate {
  return groups.length === 0 ? () => true : (r) => groups.some((g) => g(r));
}

function compileRule(rule: CompiledRule, action: string, path: string, issues: string[]): Predicate {
  const from = rule.from.map((s: CompiledSource, i) => all(compileFields(s, sourceFields, 'from', action, `${path}.from[${i}]`, issues)));
  const to = rule.to.map((o: CompiledOperation, i) => all(compileFields(o, operationFields, 'to', action, `${path}.to[${i}]`, issues)));
  const when = rule.when.flatMap((c, i) => compileCondition(c, action, `${path}.when[${i}]`, issues));
  const f = anyOf(from);
  const t = anyOf(to);
  const w = all(when);
  return (r) => f(r) && t(r) && w(r);
}

interface CompiledPolicy {
  id: string;
  action: 'ALLOW' | 'DENY';
  appliesTo: (service: string) => boolean;
  matches: Predicate;
}

/** The policies of one configuration, compiled; immutable once built. */
export class PolicyTable {
  private readonly deny: CompiledPolicy[] = [];
  private readonly allow: CompiledPolicy[] = [];

  constructor(policies: readonly AuthorizationPolicy[], issues: ConfigIssue[]) {
    for (const p of policies) {
      if (p.scope === 'workload') continue;
      const id = `${p.namespace}/${p.name}`;
      const problems: string[] = [];
      if (p.action !== 'ALLOW' && p.action !== 'DENY') problems.push(`action: ${String(p.action)} is not ALLOW or DENY`);
      const rules = p.rules.map((r, i) => compileRule(r, p.action, `rules[${i}]`, problems));
      if (problems.length > 0) {
        for (const m of problems) {
          const colon = m.indexOf(': ');
          issues.push({ kind: 'AuthorizationPolicy', object: id, path: m.slice(0, colon), message: m.slice(colon + 2) });
        }
        continue;
      }
      let appliesTo: (s: string) => boolean;
      if (p.scope === 'service') {
        const targets = new Set(p.targetServices ?? []);
        appliesTo = (s) => targets.has(s);
      } else if (p.scope === 'namespace') {
        appliesTo = (s) => s.startsWith(`${p.namespace}/`);
      } else {
        appliesTo = () => true;
      }
      const compiled: CompiledPolicy = {
        id, action: p.action, appliesTo,
        // No rules: matches nothing (an ALLOW policy without rules therefore denies everything).
        matches: rules.length === 0 ? () => false : (r) => rules.some((rule) => rule(r)),
      };
      (p.action === 'DENY' ? this.deny : this.allow).push(compiled);
    }
  }

  evaluate(req: PolicyRequest): PolicyDecision {
    for (const p of this.deny) {
      if (p.appliesTo(req.service) && p.matches(req)) {
        return { allowed: false, policy: p.id, action: 'DENY', reason: `denied by DENY policy ${p.id}` };
      }
    }
    const applicable = this.allow.filter((p) => p.appliesTo(req.service));
    if (applicable.length === 0) return { allowed: true };
    if (applicable.some((p) => p.matches(req))) return { allowed: true };
    const names = applicable.map((p) => p.id).join(', ');
    return { allowed: false, policy: applicable[0]!.id, action: 'ALLOW', reason: `no rule of ALLOW policy ${names} matched` };
  }
}
