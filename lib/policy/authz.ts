// AuthorizationPolicy evaluation, Istio semantics, shared by agents (L4) and waypoints (L7).
//
// DENY policies first: any matching rule denies. Then, if any ALLOW policy applies, the request
// must match one of their rules; with no ALLOW policy, it is allowed. An ALLOW policy without rules
// matches nothing (deny all); a DENY policy without rules denies nothing.
//
// At L4 (an agent, no HTTP in sight) a rule that needs L7 attributes cannot be checked, so it fails
// closed: in an ALLOW policy it never matches, in a DENY policy it matches on its L4 parts alone.
import { BlockList, isIP } from 'node:net';
import type { AuthorizationPolicy, CompiledCondition, CompiledOperation, CompiledRule, CompiledSource } from '../model/mesh.ts';

export interface ConnectionAttributes {
  /** Peer SPIFFE ID (spiffe://td/ns/x/sa/y), absent for plaintext. */
  sourcePrincipal?: string;
  sourceNamespace?: string;
  sourceIp: string;
  destinationIp?: string;
  destinationPort: number;
}

export interface RequestAttributes extends ConnectionAttributes {
  method: string;
  path: string;
  host?: string;
  /** Lower-case header names. */
  headers: Record<string, string | string[] | undefined>;
}

export type EvaluationLayer = 'L4' | 'L7';

export interface Decision {
  allowed: boolean;
  /** `namespace/name` of the deciding policy, when one decided. */
  policy?: string;
  reason: string;
}

/** Glob as Istio writes it: `*`, `prefix*`, `*suffix`, or exact. */
export function globMatch(pattern: string, value: string): boolean {
  if (pattern === '*') return true;
  if (pattern.endsWith('*')) return value.startsWith(pattern.slice(0, -1));
  if (pattern.startsWith('*')) return value.endsWith(pattern.slice(1));
  return pattern === value;
}

/** Istio principals omit the `spiffe://` scheme; accept both spellings. */
function principalMatch(pattern: string, principal: string | undefined): boolean {
  if (principal === undefined) return false;
  const strip = (s: string) => (s.startsWith('spiffe://') ? s.slice('spiffe://'.length) : s);
  return globMatch(strip(pattern), strip(principal));
}

const blockCache = new Map<string, BlockList>();
/** Does `ip` fall in any of the CIDRs (or bare addresses)? Invalid entries never match. */
export function ipInBlocks(blocks: string[], ip: string): boolean {
  const family = isIP(ip);
  if (!family) return false;
  const key = blocks.join(',');
  let list = blockCache.get(key);
  if (!list) {
    list = new BlockList();
    for (const b of blocks) {
      const [addr, len] = b.split('/');
      const fam = isIP(addr ?? '');
      if (!fam || !addr) continue;
      const type = fam === 6 ? 'ipv6' : 'ipv4';
      if (len === undefined) list.addAddress(addr, type);
      else list.addSubnet(addr, Number(len), type);
    }
    if (blockCache.size > 1000) blockCache.clear();
    blockCache.set(key, list);
  }
  // An IPv4-mapped IPv6 peer (::ffff:a.b.c.d) is checked as IPv4.
  const v4 = ip.startsWith('::ffff:') && isIP(ip.slice(7)) === 4 ? ip.slice(7) : undefined;
  if (v4) return list.check(v4, 'ipv4');
  return list.check(ip, family === 6 ? 'ipv6' : 'ipv4');
}

function anyOf<T>(patterns: T[] | undefined, test: (p: T) => boolean): boolean {
  return patterns !== undefined && patterns.some(test);
}

/** A field that is present must match; absent fields match anything. */
function sourceMatches(s: CompiledSource, a: ConnectionAttributes): boolean {
  if (s.principals && !anyOf(s.principals, (p) => principalMatch(p, a.sourcePrincipal))) return false;
  if (anyOf(s.notPrincipals, (p) => principalMatch(p, a.sourcePrincipal))) return false;
  const ns = a.sourceNamespace ?? '';
  if (s.namespaces && !(a.sourceNamespace !== undefined && anyOf(s.namespaces, (p) => globMatch(p, ns)))) return false;
  if (a.sourceNamespace !== undefined && anyOf(s.notNamespaces, (p) => globMatch(p, ns))) return false;
  if (s.ipBlocks && !ipInBlocks(s.ipBlocks, a.sourceIp)) return false;
  if (s.notIpBlocks && ipInBlocks(s.notIpBlocks, a.sourceIp)) return false;
  return true;
}

function isRequest(a: ConnectionAttributes): a is RequestAttributes {
  return typeof (a as RequestAttributes).method === 'string';
}

/** Matches the L4 fields always; L7 fields only when `a` is a request (else `l7Unknown` decides). */
function operationMatches(o: CompiledOperation, a: ConnectionAttributes, l7Unknown: boolean): boolean {
  if (o.ports && !o.ports.includes(a.destinationPort)) return false;
  if (o.notPorts && o.notPorts.includes(a.destinationPort)) return false;
  const hasL7 = Boolean(o.methods || o.notMethods || o.paths || o.notPaths || o.hosts || o.notHosts);
  if (!hasL7) return true;
  if (!isRequest(a)) return l7Unknown;
  if (o.methods && !o.methods.some((m) => m === '*' || m.toUpperCase() === a.method.toUpperCase())) return false;
  if (o.notMethods && o.notMethods.some((m) => m === '*' || m.toUpperCase() === a.method.toUpperCase())) return false;
  const path = a.path.split('?')[0] ?? a.path;
  if (o.paths && !o.paths.some((p) => globMatch(p, path))) return false;
  if (o.notPaths && o.notPaths.some((p) => globMatch(p, path))) return false;
  const host = (a.host ?? '').toLowerCase();
  if (o.hosts && !o.hosts.some((h) => globMatch(h.toLowerCase(), host))) return false;
  if (o.notHosts && o.notHosts.some((h) => globMatch(h.toLowerCase(), host))) return false;
  return true;
}

/** The values a `when` key names; undefined when the key needs L7 and `a` is a connection. */
function conditionValues(key: string, a: ConnectionAttributes): string[] | undefined {
  switch (key) {
    case 'source.ip':
    case 'remote.ip':
      return [a.sourceIp];
    case 'source.namespace':
      return a.sourceNamespace === undefined ? [] : [a.sourceNamespace];
    case 'source.principal':
      return a.sourcePrincipal === undefined ? [] : [a.sourcePrincipal];
    case 'destination.ip':
      return a.destinationIp === undefined ? [] : [a.destinationIp];
    case 'destination.port':
      return [String(a.destinationPort)];
  }
  if (!isRequest(a)) return undefined;
  const header = /^request\.headers\[(.+)\]$/.exec(key);
  if (header) {
    const v = a.headers[header[1]!.toLowerCase()];
    return v === undefined ? [] : Array.isArray(v) ? v : [v];
  }
  if (key === 'request.method') return [a.method];
  if (key === 'request.path') return [a.path];
  if (key === 'request.host') return a.host === undefined ? [] : [a.host];
  return [];
}

function conditionMatches(c: CompiledCondition, a: ConnectionAttributes, l7Unknown: boolean): boolean {
  const values = conditionValues(c.key, a);
  if (values === undefined) return l7Unknown;
  const match = (p: string, v: string) => (c.key.endsWith('.ip') ? ipInBlocks([p], v) : principalOrGlob(c.key, p, v));
  if (c.values && !values.some((v) => c.values!.some((p) => match(p, v)))) return false;
  if (c.notValues && values.some((v) => c.notValues!.some((p) => match(p, v)))) return false;
  return true;
}

function principalOrGlob(key: string, pattern: string, value: string): boolean {
  return key === 'source.principal' ? principalMatch(pattern, value) : globMatch(pattern, value);
}

/** Does the rule match? `l7Unknown` is what an unanswerable L7 clause counts as. */
export function ruleMatches(rule: CompiledRule, a: ConnectionAttributes, l7Unknown: boolean): boolean {
  if (rule.from.length > 0 && !rule.from.some((s) => sourceMatches(s, a))) return false;
  if (rule.to.length > 0 && !rule.to.some((o) => operationMatches(o, a, l7Unknown))) return false;
  return rule.when.every((c) => conditionMatches(c, a, l7Unknown));
}

const id = (p: AuthorizationPolicy) => `${p.namespace}/${p.name}`;

/**
 * Decides a connection (L4) or a request (L7) against the policies that apply to the destination.
 * The caller selects the policies (policySelectsWorkload for agents, targetServices for waypoints).
 */
export function evaluate(policies: readonly AuthorizationPolicy[], a: ConnectionAttributes | RequestAttributes): Decision {
  const l4 = !isRequest(a);
  for (const p of policies) {
    if (p.action !== 'DENY') continue;
    // Fail closed: at L4 an L7 clause of a DENY rule counts as matching.
    if (p.rules.some((r) => ruleMatches(r, a, l4))) {
      const why = l4 && p.layer === 'L7' ? 'DENY policy with L7 rules, enforced at L4 without a waypoint' : 'matched a DENY rule';
      return { allowed: false, policy: id(p), reason: `denied by ${id(p)}: ${why}` };
    }
  }
  const allows = policies.filter((p) => p.action === 'ALLOW');
  if (allows.length === 0) return { allowed: true, reason: 'no ALLOW policy applies' };
  for (const p of allows) {
    // Fail closed: at L4 an L7 clause of an ALLOW rule never matches.
    if (p.rules.some((r) => ruleMatches(r, a, false))) return { allowed: true, policy: id(p), reason: `allowed by ${id(p)}` };
  }
  const names = allows.map(id).join(', ');
  const l7 = l4 && allows.some((p) => p.layer === 'L7') ? ' (rules with L7 attributes cannot match without a waypoint)' : '';
  return { allowed: false, reason: `no ALLOW rule matched in ${names}${l7}` };
}
