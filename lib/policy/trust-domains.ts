// Trust-domain aliases in AuthorizationPolicy principals, as Istio defines them (pilot
// pkg/security/trustdomain/bundle.go ReplaceTrustDomainAliases; the task "Trust Domain Migration",
// https://istio.io/latest/docs/tasks/security/authorization/authz-td-migration/): the mesh's trust
// domain and its aliases are one bundle, and a principal naming any of them, or `cluster.local`
// (which stands for the local trust domain and its aliases), names the same namespace and service
// account under every trust domain of the bundle. The controller expands each policy's principals
// once when it compiles it (controller/src/compile.ts), so agents and waypoints receive the same
// expanded lists and match them as written (lib/policy/authz.ts).
import { DEFAULT_TRUST_DOMAIN } from '../model/mesh.ts';

/** Istio's string match of two trust domains, either of which may be a pattern (bundle util.go stringMatch). */
function matchesBundle(a: string, list: readonly string[]): boolean {
  return list.some((s) => a === s || s === '*' || prefixMatch(a, s) || prefixMatch(s, a) || suffixMatch(a, s) || suffixMatch(s, a));
}

function prefixMatch(a: string, pattern: string): boolean {
  return pattern.endsWith('*') && a.startsWith(pattern.slice(0, -1));
}

function suffixMatch(a: string, pattern: string): boolean {
  return pattern.startsWith('*') && a.endsWith(pattern.slice(1));
}

/**
 * `principals` (no `spiffe://`) with every one whose trust domain is the bundle's, one of its
 * aliases or `cluster.local` replaced by the same principal under each trust domain of
 * `trustDomains` (the mesh's first, then its aliases), as Istio's ReplaceTrustDomainAliases:
 *   - a principal that is not `<td>/<a>/<b>/<c>/<d>` (five `/`-separated parts: `*`, `*sa/y`,
 *     `td/ns/x/*`) or whose trust domain is `*` enforces no trust domain and is kept as written;
 *   - one of a foreign trust domain is kept as written; `cluster.local` is never foreign: when it
 *     is not in the bundle it only stands for the bundle, so it is replaced by each bundle domain
 *     and the literal `cluster.local/...` is not kept (as Istio);
 *   - a trust domain written as a pattern (`*-td`) is kept as written for each bundle domain it
 *     matches and replaced for the others.
 * Applied alike to `principals`, `notPrincipals` and the `source.principal` condition's values and
 * notValues (Istio's Model.MigrateTrustDomain rewrites every rule keyed `source.principal`), so a
 * DENY naming `old-td/...` also refuses the caller presenting `new-td/...`. The result holds each
 * value once and is at most the bundle's size times the input: the bundle is the operator's
 * (`--trust-domain`, `--trust-domain-alias`), never a tenant's.
 */
export function expandTrustDomainAliases(principals: readonly string[], trustDomains: readonly string[]): string[] {
  const out = new Set<string>();
  for (const principal of principals) {
    const parts = principal.split('/');
    const td = parts[0]!;
    if (parts.length !== 5) {
      out.add(principal);
      continue;
    }
    const rest = parts.slice(1).join('/');
    // The principal itself where it already names that domain: no second copy of each string.
    for (const d of principalDomains(td, trustDomains)) out.add(d === td ? principal : `${d}/${rest}`);
  }
  return [...out];
}

/**
 * The trust domains of `trustDomains` / `notTrustDomains` and the `source.trustDomain` condition
 * under the bundle, as Istio's ExpandTrustDomainAliases (pilot pkg/security/trustdomain/bundle.go,
 * applied by pilot pkg/security/authz/model/model.go MigrateTrustDomain to the values and notValues
 * of every rule keyed source.trustDomain, which all three are): a value equal to a domain of the
 * bundle stands for every domain of it; any other is kept as written, `*`, a pattern (`old*` still
 * matches trust domains outside the bundle) and `cluster.local` when it is not in the bundle
 * (unlike principals, where it stands for the bundle).
 */
export function expandTrustDomainList(domains: readonly string[], trustDomains: readonly string[]): string[] {
  return [...new Set(domains.flatMap((td) => (trustDomains.includes(td) ? trustDomains : [td])))];
}

/** What the trust domain `td` of a principal stands for under the bundle: itself, or each bundle domain (a pattern kept for those it matches). */
function principalDomains(td: string, trustDomains: readonly string[]): string[] {
  if (td === '*' || !(matchesBundle(td, trustDomains) || td === DEFAULT_TRUST_DOMAIN)) return [td];
  return trustDomains.map((bundled) => (bundled === td || suffixMatch(bundled, td) ? td : bundled));
}
