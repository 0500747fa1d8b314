// Istio's own tests of ambient L7 authorization (a waypoint enforcing policies attached to it by
// targetRefs), translated: each row names its source in istio/istio. The policies are written as
// Istio writes them, validated as the controller validates them (Istio accepts every one of these,
// so Weft must too: a policy the controller refuses is not enforced at all, so a refused ALLOW lets
// everything through and a refused DENY denies nothing), compiled by the controller and judged by
// the waypoint's PolicyTable, the one call the waypoint's authorize stage makes.
//
// Sources:
//   baseline_test.go        tests/integration/ambient/baseline_test.go (TestAuthorizationL7,
//                           TestAuthorizationServiceAttached, TestL7JWT with
//                           testdata/requestauthn/waypoint-jwt.yaml.tmpl)
//   builder testdata        pilot/pkg/security/authz/builder/testdata/http/*-in.yaml
//   generator.go            pilot/pkg/security/authz/model/generator.go (and generator_test.go)
//   matcher/header.go       pilot/pkg/security/authz/matcher/header.go (HostMatcher, HeaderMatcher)
//   uri_template            Envoy source/extensions/path/uri_template_lib (what Istio's {*}/{**} compile to)
//   validation.go           pkg/config/validation/validation.go ValidateAuthorizationPolicy
//   security_test.go        pkg/config/security/security_test.go (TestCheckValidPathTemplate)
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { compile, emptyInputs } from '../../controller/src/compile.ts';
import type { AuthorizationPolicy } from '../../lib/model/objects.ts';
import { validateObject } from '../../lib/model/validate.ts';
import { PolicyTable, type RequestAttributes } from '../../lib/policy/authz.ts';
import { claimWordsOf, type RequestAuth } from '../../lib/policy/jwt.ts';
import { CONDITION_KEYS, SOURCE_FIELDS } from '../../lib/policy/keys.ts';
import { authz, ns, svc } from './controller-fixtures.ts';

type Spec = NonNullable<AuthorizationPolicy['spec']>;
const SERVICE = 'shop/reviews';
const SOURCE = 'spiffe://cluster.local/ns/shop/sa/client';
const WAYPOINT_REF = { group: 'gateway.networking.k8s.io', kind: 'Gateway', name: 'wp' };

/** Istio's policies attached to the waypoint (`targetRefs: Gateway wp`, as TestAuthorizationL7 writes them), validated and compiled. */
function waypointTable(specs: Record<string, Spec>): PolicyTable {
  const inputs = emptyInputs();
  inputs.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'wp' }));
  inputs.services.push(svc('shop', 'reviews', { app: 'reviews' }, '10.96.0.70'));
  inputs.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'shop' }, spec: {} });
  for (const [name, spec] of Object.entries(specs)) {
    const p = authz('shop', name, { targetRefs: [WAYPOINT_REF], ...spec });
    assert.deepEqual(validateObject(p), [], `${name}: Istio accepts this policy, so Weft must`);
    inputs.authorizationPolicies.push(p);
  }
  return new PolicyTable([...compile(inputs).model.policies.values()]);
}

function request(r: Partial<RequestAttributes> = {}): RequestAttributes {
  return { sourcePrincipal: SOURCE, sourceIp: '10.1.0.5', destinationIp: '10.96.0.70', destinationPort: 80, method: 'GET', target: '/', host: 'reviews.shop.svc.cluster.local', headers: {}, ...r };
}

/** A verified token's RequestAuth, its space-delimited claims (`spaceDelimited`, Istio's default: scope, permission) split as jwt.ts splits them. */
const token = (issuer: string, subject: string | undefined, claims: Record<string, unknown> = {}, spaceDelimited?: ReadonlySet<string>): RequestAuth => {
  const all = { iss: issuer, ...(subject !== undefined ? { sub: subject } : {}), ...claims } as RequestAuth['claims'];
  const claimWords = claimWordsOf(all, spaceDelimited);
  return { issuer, ...(subject !== undefined ? { subject } : {}), audiences: [], claims: all, ...(claimWords ? { claimWords } : {}) };
};

// TestAuthorizationL7's policySpec and denySpec, {{.Source}} being SOURCE's service account.
const L7_ALLOW: Spec = {
  rules: [
    { to: [{ operation: { paths: ['/allowed'], methods: ['GET'] } }] },
    { from: [{ source: { principals: ['cluster.local/ns/shop/sa/client'] } }], to: [{ operation: { paths: ['/allowed-identity'], methods: ['GET'] } }] },
    { from: [{ source: { principals: ['cluster.local/ns/shop/sa/someone-else'] } }], to: [{ operation: { paths: ['/denied-identity'], methods: ['GET'] } }] },
    { to: [{ operation: { methods: ['GET'], paths: ['/allowed-wildcard*'] } }] },
    { to: [{ operation: { methods: ['GET'], paths: ['/headers'] } }], when: [{ key: 'request.headers[x-test-header]', values: ['match'], notValues: ['do-not-match'] }] },
    { to: [{ operation: { methods: ['POST'] } }] },
  ],
};
const L7_DENY: Spec = { action: 'DENY', rules: [{ to: [{ operation: { paths: ['/explicit-deny'] } }] }] };
// waypoint-jwt.yaml.tmpl's AuthorizationPolicy (the RequestAuthentication having verified the token).
const JWT_ALLOW: Spec = {
  rules: [
    { from: [{ source: { requestPrincipals: ['test-issuer-1@istio.io/sub-1'] } }, { source: { requestPrincipals: ['test-issuer-3@istio.io/sub-1'] } }] },
    { to: [{ operation: { paths: ['/healthz'] } }] },
  ],
};

interface Row {
  source: string;
  name: string;
  policies: Record<string, Spec>;
  request: Partial<RequestAttributes>;
  allowed: boolean;
}

const ROWS: Row[] = [
  // TestAuthorizationL7, every subtest.
  { source: 'baseline_test.go TestAuthorizationL7 "simple deny"', name: 'GET /deny matches no rule', policies: { policy: L7_ALLOW, deny: L7_DENY }, request: { target: '/deny' }, allowed: false },
  { source: 'baseline_test.go TestAuthorizationL7 "simple allow"', name: 'GET /allowed', policies: { policy: L7_ALLOW, deny: L7_DENY }, request: { target: '/allowed' }, allowed: true },
  { source: 'baseline_test.go TestAuthorizationL7 "identity deny"', name: 'GET /denied-identity from a principal the rule does not name', policies: { policy: L7_ALLOW, deny: L7_DENY }, request: { target: '/denied-identity' }, allowed: false },
  { source: 'baseline_test.go TestAuthorizationL7 "identity allow"', name: 'GET /allowed-identity from the named principal', policies: { policy: L7_ALLOW, deny: L7_DENY }, request: { target: '/allowed-identity' }, allowed: true },
  { source: 'baseline_test.go TestAuthorizationL7 "identity allow"', name: 'GET /allowed-identity without a peer identity', policies: { policy: L7_ALLOW, deny: L7_DENY }, request: { target: '/allowed-identity', sourcePrincipal: undefined }, allowed: false },
  { source: 'baseline_test.go TestAuthorizationL7 "explicit deny"', name: 'POST /explicit-deny: the DENY wins over the ALLOW of every POST', policies: { policy: L7_ALLOW, deny: L7_DENY }, request: { target: '/explicit-deny', method: 'POST' }, allowed: false },
  { source: 'baseline_test.go TestAuthorizationL7 "explicit deny"', name: 'POST elsewhere is allowed', policies: { policy: L7_ALLOW, deny: L7_DENY }, request: { target: '/other', method: 'POST' }, allowed: true },
  { source: 'baseline_test.go TestAuthorizationL7 "wildcard allow"', name: 'GET /allowed-wildcardtest by the prefix /allowed-wildcard*', policies: { policy: L7_ALLOW, deny: L7_DENY }, request: { target: '/allowed-wildcardtest' }, allowed: true },
  { source: 'baseline_test.go TestAuthorizationL7 "headers allow"', name: 'x-test-header: match', policies: { policy: L7_ALLOW, deny: L7_DENY }, request: { target: '/headers', headers: { 'x-test-header': 'match' } }, allowed: true },
  { source: 'baseline_test.go TestAuthorizationL7 "headers deny"', name: 'x-test-header: do-not-match', policies: { policy: L7_ALLOW, deny: L7_DENY }, request: { target: '/headers', headers: { 'x-test-header': 'do-not-match' } }, allowed: false },
  { source: 'baseline_test.go TestAuthorizationL7 "headers deny"', name: 'no x-test-header', policies: { policy: L7_ALLOW, deny: L7_DENY }, request: { target: '/headers' }, allowed: false },
  // TestAuthorizationServiceAttached: a policy attached to one Service.
  { source: 'baseline_test.go TestAuthorizationServiceAttached "principal"', name: 'an ALLOW naming another principal denies', policies: { 'policy-waypoint': { targetRefs: [{ kind: 'Service', group: '', name: 'reviews' }], rules: [{ from: [{ source: { principals: ['cluster.local/ns/something/sa/else'] } }] }] } }, request: {}, allowed: false },
  { source: 'baseline_test.go TestAuthorizationServiceAttached "header"', name: 'x-foo: x-bar is allowed', policies: { 'policy-header-match': { targetRefs: [{ kind: 'Service', group: '', name: 'reviews' }], action: 'ALLOW', rules: [{ when: [{ key: 'request.headers[x-foo]', values: ['x-bar'] }] }] } }, request: { headers: { 'x-foo': 'x-bar' } }, allowed: true },
  { source: 'baseline_test.go TestAuthorizationServiceAttached "header"', name: 'x-foo: wrong-value is denied', policies: { 'policy-header-match': { targetRefs: [{ kind: 'Service', group: '', name: 'reviews' }], action: 'ALLOW', rules: [{ when: [{ key: 'request.headers[x-foo]', values: ['x-bar'] }] }] } }, request: { headers: { 'x-foo': 'wrong-value' } }, allowed: false },
  { source: 'baseline_test.go TestAuthorizationL4 "not allow" (targetRefs kind Service, group core)', name: 'a Service target in group "core" attaches (Istio\'s canonical name of the core group)', policies: { 'policy-waypoint': { targetRefs: [{ kind: 'Service', group: 'core', name: 'reviews' }], rules: [{ from: [{ source: { principals: ['cluster.local/ns/something/sa/else'] } }] }] } }, request: {}, allowed: false },
  { source: 'baseline_test.go TestAuthorizationL4 "allow" (targetRefs kind Service, group core)', name: 'and allows the principal it names', policies: { 'policy-waypoint': { targetRefs: [{ kind: 'Service', group: 'core', name: 'reviews' }], rules: [{ from: [{ source: { principals: ['cluster.local/ns/shop/sa/client', 'cluster.local/ns/shop/sa/wp'] } }] }] } }, request: {}, allowed: true },
  // TestL7JWT (401s for bad tokens are the RequestAuthentication's: test/unit/waypoint-jwt.test.ts).
  { source: 'baseline_test.go TestL7JWT "deny without token"', name: 'no token: no request principal', policies: { authz: JWT_ALLOW }, request: {}, allowed: false },
  { source: 'baseline_test.go TestL7JWT "allow with sub-1 token"', name: 'issuer-1 sub-1', policies: { authz: JWT_ALLOW }, request: { requestAuth: token('test-issuer-1@istio.io', 'sub-1') }, allowed: true },
  { source: 'baseline_test.go TestL7JWT "deny with sub-2 token"', name: 'issuer-2 sub-2', policies: { authz: JWT_ALLOW }, request: { requestAuth: token('test-issuer-2@istio.io', 'sub-2') }, allowed: false },
  { source: 'baseline_test.go TestL7JWT "allow healthz"', name: '/healthz without a token', policies: { authz: JWT_ALLOW }, request: { target: '/healthz' }, allowed: true },
  // Builder testdata: rules present, absent, empty.
  { source: 'builder testdata allow-nil-rule-in.yaml', name: 'an ALLOW without rules denies everything', policies: { p: {} }, request: {}, allowed: false },
  { source: 'builder testdata allow-empty-rule-in.yaml', name: 'an ALLOW with one empty rule allows everything', policies: { p: { rules: [{}] } }, request: {}, allowed: true },
  { source: 'builder testdata deny-empty-rule-in.yaml', name: 'a DENY with one empty rule denies everything', policies: { p: { action: 'DENY', rules: [{}] } }, request: {}, allowed: false },
  { source: 'builder testdata deny-and-allow-in.yaml', name: 'DENY is judged before ALLOW', policies: { a: { rules: [{ to: [{ operation: { paths: ['/x'] } }] }] }, d: { action: 'DENY', rules: [{ to: [{ operation: { paths: ['/x'] } }] }] } }, request: { target: '/x' }, allowed: false },
  { source: 'builder testdata audit-full-rule-in.yaml', name: 'an AUDIT decides nothing', policies: { p: { action: 'AUDIT', rules: [{}] } }, request: {}, allowed: true },
  { source: 'builder testdata custom-bad-multiple-providers-in.yaml → custom-bad-out.yaml (deny-due-to-bad-CUSTOM-action)', name: 'a CUSTOM policy whose provider the mesh does not have denies what its rules match', policies: { ext: { action: 'CUSTOM', provider: { name: 'opa' }, rules: [{ to: [{ operation: { paths: ['/httpbin1'] } }] }] } }, request: { target: '/httpbin1' }, allowed: false },
  { source: 'builder testdata custom-bad-out.yaml', name: 'and only that', policies: { ext: { action: 'CUSTOM', provider: { name: 'opa' }, rules: [{ to: [{ operation: { paths: ['/httpbin1'] } }] }] } }, request: { target: '/httpbin2' }, allowed: true },
  // Attributes a Weft waypoint never has (Istio accepts them; its waypoint's inner HTTP connection
  // carries no SNI, and no filter writes the metadata): a rule on them matches nothing, and its
  // notValues everything, as Envoy's matchers on an absent value.
  { source: 'generator.go connSNIGenerator (requested_server_name, empty inside the tunnel)', name: 'an ALLOW on connection.sni is in force and matches nothing', policies: { p: { rules: [{ when: [{ key: 'connection.sni', values: ['reviews.example'] }] }] } }, request: {}, allowed: false },
  { source: 'generator.go connSNIGenerator (requested_server_name, empty inside the tunnel)', name: 'a DENY on connection.sni notValues denies', policies: { p: { action: 'DENY', rules: [{ when: [{ key: 'connection.sni', notValues: ['reviews.example'] }] }] } }, request: {}, allowed: false },
  { source: 'generator_test.go envoyFilterGenerator-string (metadata no filter wrote)', name: 'an ALLOW on experimental.envoy.filters.* is in force and matches nothing', policies: { p: { rules: [{ when: [{ key: 'experimental.envoy.filters.network.mysql_proxy[db.table]', values: ['[update]'] }] }] } }, request: {}, allowed: false },
  { source: 'generator_test.go envoyFilterGenerator-string (metadata no filter wrote)', name: 'a DENY on experimental.envoy.filters.* values denies nothing', policies: { p: { action: 'DENY', rules: [{ when: [{ key: 'experimental.envoy.filters.http.foo[bar]', values: ['x'] }] }] } }, request: {}, allowed: true },
  // Paths: generator.go pathGenerator, Envoy's path matcher (query aside) and uri_template.
  { source: 'generator.go pathGenerator', name: 'an exact path ignores the query', policies: { p: { rules: [{ to: [{ operation: { paths: ['/abc'] } }] }] } }, request: { target: '/abc?x=1' }, allowed: true },
  { source: 'generator.go pathGenerator', name: 'an exact path is not a prefix: /abc/ is not /abc', policies: { p: { rules: [{ to: [{ operation: { paths: ['/abc'] } }] }] } }, request: { target: '/abc/' }, allowed: false },
  { source: 'generator.go pathGenerator', name: 'paths are case-sensitive', policies: { p: { rules: [{ to: [{ operation: { paths: ['/abc'] } }] }] } }, request: { target: '/ABC' }, allowed: false },
  { source: 'generator.go pathGenerator', name: 'a suffix path *.html', policies: { p: { rules: [{ to: [{ operation: { paths: ['*.html'] } }] }] } }, request: { target: '/a/b.html' }, allowed: true },
  { source: 'generator_test.go pathGenerator-template + uri_template', name: '/abc/{*} matches one segment', policies: { p: { rules: [{ to: [{ operation: { paths: ['/abc/{*}'] } }] }] } }, request: { target: '/abc/x' }, allowed: true },
  { source: 'generator_test.go pathGenerator-template + uri_template', name: '/abc/{*} does not match an empty segment', policies: { p: { rules: [{ to: [{ operation: { paths: ['/abc/{*}'] } }] }] } }, request: { target: '/abc/' }, allowed: false },
  { source: 'generator_test.go pathGenerator-template + uri_template', name: '/abc/{*} does not match two segments', policies: { p: { rules: [{ to: [{ operation: { paths: ['/abc/{*}'] } }] }] } }, request: { target: '/abc/x/y' }, allowed: false },
  { source: 'uri_template (kPathGlobRegex: pchar without *)', name: 'a DENY /admin/{*} does not hold a segment with a * in it (as Envoy)', policies: { p: { action: 'DENY', rules: [{ to: [{ operation: { paths: ['/admin/{*}'] } }] }] } }, request: { target: '/admin/a*b' }, allowed: true },
  { source: 'uri_template (kLiteral: % is a pchar)', name: 'a DENY /admin/{*} holds a segment with an encoded slash (KEEP_UNCHANGED)', policies: { p: { action: 'DENY', rules: [{ to: [{ operation: { paths: ['/admin/{*}'] } }] }] } }, request: { target: '/admin/a%2Fb' }, allowed: false },
  { source: 'security_test.go "matchAnyTemplate at end" + uri_template', name: '/foo/{**} matches /foo/ and deeper, not /foo', policies: { p: { rules: [{ to: [{ operation: { paths: ['/foo/{**}'] } }] }] } }, request: { target: '/foo' }, allowed: false },
  { source: 'security_test.go "matchAnyTemplate at end" + uri_template', name: '/foo/{**} matches /foo/a/b/c', policies: { p: { rules: [{ to: [{ operation: { paths: ['/foo/{**}'] } }] }] } }, request: { target: '/foo/a/b/c' }, allowed: true },
  { source: 'security_test.go "matchAnyTemplate" + uri_template', name: '/foo/{**}/bar matches /foo/a/b/bar', policies: { p: { rules: [{ to: [{ operation: { paths: ['/foo/{**}/bar'] } }] }] } }, request: { target: '/foo/a/b/bar' }, allowed: true },
  { source: 'security_test.go "matchOneTemplate with trailing slash" + uri_template', name: '/{*}/foo/ needs the trailing slash', policies: { p: { rules: [{ to: [{ operation: { paths: ['/{*}/foo/'] } }] }] } }, request: { target: '/x/foo' }, allowed: false },
  { source: 'security_test.go IsValidLiteral "valid - equals"', name: 'a template literal may hold =', policies: { p: { rules: [{ to: [{ operation: { paths: ['/a=c/{*}'] } }] }] } }, request: { target: '/a=c/x' }, allowed: true },
  // Hosts and methods: matcher/header.go.
  { source: 'matcher/header.go HostMatcher (ignore case)', name: 'hosts are case-insensitive', policies: { p: { rules: [{ to: [{ operation: { hosts: ['Reviews.SHOP.svc.cluster.local'] } }] }] } }, request: {}, allowed: true },
  { source: 'matcher/header.go HostMatcher (exact :authority)', name: 'a host without a port does not match the authority with one', policies: { p: { rules: [{ to: [{ operation: { hosts: ['reviews.shop.svc.cluster.local'] } }] }] } }, request: { host: 'reviews.shop.svc.cluster.local:80' }, allowed: false },
  { source: 'matcher/header.go HostMatcher (prefix)', name: 'host prefix reviews.shop* matches with a port', policies: { p: { rules: [{ to: [{ operation: { hosts: ['reviews.shop*'] } }] }] } }, request: { host: 'reviews.shop:80' }, allowed: true },
  { source: 'matcher/header.go HostMatcher', name: 'notHosts holds whatever the case', policies: { p: { action: 'DENY', rules: [{ to: [{ operation: { notHosts: ['reviews.shop.svc.cluster.local'] } }] }] } }, request: { host: 'EVIL.example' }, allowed: false },
  { source: 'generator.go methodGenerator (HeaderMatcher :method)', name: 'methods: * is any method', policies: { p: { rules: [{ to: [{ operation: { methods: ['*'] } }] }] } }, request: { method: 'PATCH' }, allowed: true },
  { source: 'generator.go methodGenerator (exact, case-sensitive)', name: 'methods: ["get"] matches no GET', policies: { p: { rules: [{ to: [{ operation: { methods: ['get'] } }] }] } }, request: {}, allowed: false },
  // Headers: generator.go requestHeaderGenerator, matcher/header.go HeaderMatcher.
  { source: 'matcher/header.go HeaderMatcher (present_match)', name: 'request.headers[x] values ["*"] matches a present empty header', policies: { p: { rules: [{ when: [{ key: 'request.headers[x-user]', values: ['*'] }] }] } }, request: { headers: { 'x-user': '' } }, allowed: true },
  { source: 'matcher/header.go HeaderMatcher (exact, case-sensitive value)', name: 'header values are case-sensitive', policies: { p: { rules: [{ when: [{ key: 'request.headers[x-user]', values: ['Alice'] }] }] } }, request: { headers: { 'x-user': 'alice' } }, allowed: false },
  { source: 'generator.go requestHeaderGenerator (Envoy HeaderMatcher on a pseudo-header)', name: 'a DENY on request.headers[:method] holds', policies: { p: { action: 'DENY', rules: [{ when: [{ key: 'request.headers[:method]', values: ['DELETE'] }] }] } }, request: { method: 'DELETE' }, allowed: false },
  { source: 'generator.go requestHeaderGenerator (Envoy HeaderMatcher on a pseudo-header)', name: 'a DENY on request.headers[:path] holds (the path with its query, as Envoy\'s :path)', policies: { p: { action: 'DENY', rules: [{ when: [{ key: 'request.headers[:path]', values: ['/admin*'] }] }] } }, request: { target: '/admin/users' }, allowed: false },
  { source: 'generator.go requestHeaderGenerator (Envoy HeaderMatcher on a pseudo-header)', name: 'request.headers[:path] is the whole :path, query included', policies: { p: { action: 'DENY', rules: [{ when: [{ key: 'request.headers[:path]', values: ['/admin'] }] }] } }, request: { target: '/admin?x=1' }, allowed: true },
  { source: 'generator.go requestHeaderGenerator (Envoy HeaderMatcher on a pseudo-header)', name: 'a DENY on request.headers[:authority] holds', policies: { p: { action: 'DENY', rules: [{ when: [{ key: 'request.headers[:authority]', values: ['reviews.shop*'] }] }] } }, request: {}, allowed: false },
  // Sources: generator.go.
  { source: 'generator.go srcNamespaceGenerator (each * is .*)', name: 'namespaces ["sh*p"] matches shop', policies: { p: { rules: [{ from: [{ source: { namespaces: ['sh*p'] } }] }] } }, request: {}, allowed: true },
  { source: 'generator.go srcNamespaceGenerator (each * is .*)', name: 'a DENY on namespaces ["s*o*"] holds', policies: { p: { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['s*o*'] } }] }] } }, request: {}, allowed: false },
  { source: 'generator.go srcNamespaceGenerator (each * is .*)', name: 'namespaces ["sh*x"] does not match shop', policies: { p: { rules: [{ from: [{ source: { namespaces: ['sh*x'] } }] }] } }, request: {}, allowed: false },
  { source: 'generator_test.go srcTrustDomainGenerator-exact', name: 'trustDomains ["cluster.local"] matches a peer of that trust domain', policies: { p: { rules: [{ from: [{ source: { trustDomains: ['cluster.local'] } }] }] } }, request: {}, allowed: true },
  { source: 'generator_test.go srcTrustDomainGenerator-exact', name: 'a DENY on trustDomains ["other.td"] holds for its peers only', policies: { p: { action: 'DENY', rules: [{ from: [{ source: { trustDomains: ['other.td'] } }] }] } }, request: { sourcePrincipal: 'spiffe://other.td/ns/shop/sa/client' }, allowed: false },
  { source: 'generator_test.go srcTrustDomainGenerator-exact', name: 'trustDomains ["cluster"] is not a prefix of cluster.local', policies: { p: { rules: [{ from: [{ source: { trustDomains: ['cluster'] } }] }] } }, request: {}, allowed: false },
  { source: 'generator_test.go srcTrustDomainGenerator-wildcard', name: 'trustDomains ["*"] matches any peer with an identity, not plaintext', policies: { p: { rules: [{ from: [{ source: { trustDomains: ['*'] } }] }] } }, request: { sourcePrincipal: undefined }, allowed: false },
  { source: 'generator_test.go srcTrustDomainGenerator-prefix-wildcard', name: 'source.trustDomain ["cluster.*"]', policies: { p: { rules: [{ when: [{ key: 'source.trustDomain', values: ['cluster.*'] }] }] } }, request: {}, allowed: true },
  { source: 'generator_test.go srcTrustDomainGenerator-suffix-wildcard', name: 'notTrustDomains ["*local"] excludes cluster.local', policies: { p: { rules: [{ from: [{ source: { notTrustDomains: ['*local'] } }] }] } }, request: {}, allowed: false },
  { source: 'generator_test.go srcPrincipalGenerator ("foo")', name: 'an ALLOW naming a principal that is no SPIFFE path matches nothing, and still applies', policies: { p: { rules: [{ from: [{ source: { principals: ['foo'] } }] }] } }, request: {}, allowed: false },
  { source: 'generator.go requestPrincipalGenerator (split at the last /)', name: 'requestPrincipals with an issuer URL', policies: { p: { rules: [{ from: [{ source: { requestPrincipals: ['https://idp.example/realm/sub-1'] } }] }] } }, request: { requestAuth: token('https://idp.example/realm', 'sub-1') }, allowed: true },
  { source: 'generator.go requestPrincipalGenerator (matchAny .+)', name: 'requestPrincipals ["*"] does not match a token without sub', policies: { p: { rules: [{ from: [{ source: { requestPrincipals: ['*'] } }] }] } }, request: { requestAuth: token('test-issuer-1@istio.io', undefined) }, allowed: false },
  { source: 'generator.go requestClaimGenerator (list claim, one of)', name: 'request.auth.claims[groups] matches one item of a list', policies: { p: { rules: [{ when: [{ key: 'request.auth.claims[groups]', values: ['group2'] }] }] } }, request: { requestAuth: token('i', 's', { groups: ['group1', 'group2'] }) }, allowed: true },
  { source: 'pilot authn policy_applier.go buildSpaceDelimitedClaims (Envoy normalize_payload_in_metadata)', name: 'a DENY on request.auth.claims[scope] holds for one scope of a space-delimited list', policies: { p: { action: 'DENY', rules: [{ when: [{ key: 'request.auth.claims[scope]', values: ['admin'] }] }] } }, request: { requestAuth: token('i', 's', { scope: 'read admin' }) }, allowed: false },
  { source: 'pilot authn policy_applier.go buildSpaceDelimitedClaims (Envoy normalize_payload_in_metadata)', name: 'an ALLOW on request.auth.claims[permission] matches one of its words', policies: { p: { rules: [{ when: [{ key: 'request.auth.claims[permission]', values: ['write'] }] }] } }, request: { requestAuth: token('i', 's', { permission: 'read  write' }) }, allowed: true },
  { source: 'pilot authn policy_applier.go buildSpaceDelimitedClaims (only the listed claims)', name: 'another claim is not split', policies: { p: { rules: [{ when: [{ key: 'request.auth.claims[role]', values: ['admin'] }] }] } }, request: { requestAuth: token('i', 's', { role: 'read admin' }) }, allowed: false },
  { source: 'pilot authn policy_applier.go buildSpaceDelimitedClaims (the rule\'s spaceDelimitedClaims)', name: 'a claim the RequestAuthentication lists is split', policies: { p: { action: 'DENY', rules: [{ when: [{ key: 'request.auth.claims[roles]', values: ['admin'] }] }] } }, request: { requestAuth: token('i', 's', { roles: 'read admin' }, new Set(['permission', 'roles', 'scope'])) }, allowed: false },
  { source: 'matcher/metadata.go MetadataListValueMatcher (ListMatcher one_of: any item)', name: 'a DENY on request.auth.claims[groups] holds for a list that also holds other types', policies: { p: { action: 'DENY', rules: [{ when: [{ key: 'request.auth.claims[groups]', values: ['admin'] }] }] } }, request: { requestAuth: token('i', 's', { groups: [7, 'admin', { x: 1 }] }) }, allowed: false },
  { source: 'generator.go requestClaimGenerator (nested claims)', name: 'request.auth.claims[nested][key] reads the nested claim', policies: { p: { rules: [{ when: [{ key: 'request.auth.claims[nested][key]', values: ['v'] }] }] } }, request: { requestAuth: token('i', 's', { nested: { key: 'v' } }) }, allowed: true },
  { source: 'generator.go destPortGenerator', name: 'ports: ["0"] is a port no request has', policies: { p: { rules: [{ to: [{ operation: { ports: ['0'] } }] }] } }, request: {}, allowed: false },
  { source: 'generator.go destPortGenerator', name: 'ports: ["0", "80"] allows port 80', policies: { p: { rules: [{ to: [{ operation: { ports: ['0', '80'] } }] }] } }, request: {}, allowed: true },
];

describe('Istio\'s ambient L7 authorization tests, at Weft\'s waypoint', () => {
  for (const row of ROWS) {
    it(`${row.source}: ${row.name}`, () => {
      const table = waypointTable(row.policies);
      assert.deepEqual(table.errors, [], 'every policy compiles');
      const d = table.evaluate(SERVICE, request(row.request));
      assert.equal(d.allowed, row.allowed, d.reason);
      // A refusal names the policy that decided (the waypoint's 403 body and access log carry it).
      if (!d.allowed) assert.match(d.reason, /shop\//);
    });
  }
});

// Istio's validation (validation.go ValidateAuthorizationPolicy, security_test.go): what it accepts
// the controller accepts, what it refuses the controller refuses, at the field.
interface ValidationRow {
  source: string;
  spec: Spec;
  /** The field path Weft names; absent: Istio accepts. */
  refusedAt?: string;
}

const VALIDATION: ValidationRow[] = [
  { source: 'validation.go: DENY action without `rules` is meaningless', spec: { action: 'DENY' }, refusedAt: 'spec.rules' },
  { source: 'validation.go: DENY action without `rules` (an empty list is none)', spec: { action: 'DENY', rules: [] }, refusedAt: 'spec.rules' },
  { source: 'validation.go: `from` must not be empty', spec: { rules: [{ from: [] }] }, refusedAt: 'spec.rules[0].from' },
  { source: 'validation.go: `to` must not be empty', spec: { rules: [{ to: [] }] }, refusedAt: 'spec.rules[0].to' },
  { source: 'validation.go: `to.operation` must not be empty (an empty list counts as unset)', spec: { rules: [{ to: [{ operation: { paths: [] } }] }] }, refusedAt: 'spec.rules[0].to[0].operation' },
  { source: 'validation.go: an empty list is unset', spec: { rules: [{ to: [{ operation: { paths: [], methods: ['GET'] } }] }] } },
  { source: 'security_test.go "unsupported path/path template - named var: {buzz}"', spec: { rules: [{ to: [{ operation: { paths: ['/foo/{buzz}/bar'] } }] }] }, refusedAt: 'spec.rules[0].to[0].operation.paths[0]' },
  { source: 'security_test.go "unsupported path/path template - only named var: {buzz}"', spec: { rules: [{ to: [{ operation: { notPaths: ['/{buzz}'] } }] }] }, refusedAt: 'spec.rules[0].to[0].operation.notPaths[0]' },
  { source: 'security_test.go "matchAnyTemplate with additional chars"', spec: { rules: [{ to: [{ operation: { paths: ['/foo/{**}buzz/bar'] } }] }] }, refusedAt: 'spec.rules[0].to[0].operation.paths[0]' },
  { source: 'security_test.go "matchOneTemplate with file extension"', spec: { rules: [{ to: [{ operation: { paths: ['/{*}/foo/{*}.txt'] } }] }] }, refusedAt: 'spec.rules[0].to[0].operation.paths[0]' },
  { source: 'security_test.go "simple multiple matchAnyTemplates"', spec: { rules: [{ to: [{ operation: { paths: ['/{**}/{**}'] } }] }] }, refusedAt: 'spec.rules[0].to[0].operation.paths[0]' },
  { source: 'security_test.go "invalid literal in path template"', spec: { rules: [{ to: [{ operation: { paths: ['/{*}/foo/?abc'] } }] }] }, refusedAt: 'spec.rules[0].to[0].operation.paths[0]' },
  { source: 'validation.go ValidatePorts (0-65535)', spec: { rules: [{ to: [{ operation: { ports: ['65536'] } }] }] }, refusedAt: 'spec.rules[0].to[0].operation.ports[0]' },
  { source: 'validation.go ValidatePorts (0-65535)', spec: { rules: [{ to: [{ operation: { ports: ['0'] } }], when: [{ key: 'destination.port', values: ['0'] }] }] } },
  { source: 'validation.go CheckEmptyValues only: a lower-case method', spec: { rules: [{ to: [{ operation: { methods: ['get'] } }] }] } },
  { source: 'generator.go requestPrincipalGenerator: a * inside is an exact issuer', spec: { rules: [{ from: [{ source: { requestPrincipals: ['a*b'] } }] }] } },
  { source: 'validation.go CheckEmptyValues only: a path without a leading /, or with a * inside (an exact match)', spec: { rules: [{ to: [{ operation: { paths: ['foo', '/a*b'] } }] }] } },
  { source: 'validation.go CheckEmptyValues only: a host with a * inside (an exact match)', spec: { rules: [{ to: [{ operation: { hosts: ['a*b.example'] } }] }] } },
  { source: 'generator_test.go srcPrincipalGenerator: principal "foo"', spec: { rules: [{ from: [{ source: { principals: ['foo', 'cluster.local/ns/a*b/sa/c'] } }] }] } },
  { source: 'generator.go srcNamespaceGenerator: a * anywhere', spec: { rules: [{ from: [{ source: { namespaces: ['team-*-prod'] } }], when: [{ key: 'source.namespace', values: ['a*b*c'] }] }] } },
  { source: 'validation.go CheckTrustDomainValues: trustDomains', spec: { rules: [{ from: [{ source: { trustDomains: ['cluster.local', '*.example'], notTrustDomains: ['old.*'] } }], when: [{ key: 'source.trustDomain', notValues: ['*'] }] }] } },
  { source: 'security.go CheckTrustDomainValues: one wildcard, at an end', spec: { rules: [{ from: [{ source: { trustDomains: ['a*b'] } }] }] }, refusedAt: 'spec.rules[0].from[0].source.trustDomains[0]' },
  { source: 'security.go CheckTrustDomainValues: no /', spec: { rules: [{ from: [{ source: { trustDomains: ['cluster.local/ns'] } }] }] }, refusedAt: 'spec.rules[0].from[0].source.trustDomains[0]' },
  { source: 'validation.go: CUSTOM with provider.name and rules', spec: { action: 'CUSTOM', provider: { name: 'opa' }, rules: [{ from: [{ source: { ipBlocks: ['10.0.0.0/8'] } }], to: [{ operation: { paths: ['/api/*'] } }] }] } },
  { source: 'validation.go: CUSTOM action without `rules` is meaningless', spec: { action: 'CUSTOM', provider: { name: 'opa' } }, refusedAt: 'spec.rules' },
  { source: 'validation.go: `provider.name` must not be empty', spec: { action: 'CUSTOM', rules: [{}] }, refusedAt: 'spec.provider.name' },
  { source: 'validation.go: From.Principals is currently not supported with CUSTOM action', spec: { action: 'CUSTOM', provider: { name: 'opa' }, rules: [{ from: [{ source: { principals: ['cluster.local/ns/a/sa/b'] } }] }] }, refusedAt: 'spec.rules[0].from[0].source.principals' },
  { source: 'validation.go: request.auth.* is currently not supported with CUSTOM action', spec: { action: 'CUSTOM', provider: { name: 'opa' }, rules: [{ when: [{ key: 'request.auth.claims[iss]', values: ['x'] }] }] }, refusedAt: 'spec.rules[0].when[0].key' },
  { source: 'validation.go: `provider` must not be with non CUSTOM action', spec: { action: 'DENY', provider: { name: 'opa' }, rules: [{}] }, refusedAt: 'spec.provider' },
  { source: 'lib/regex.ts bounds (what a data plane could not compile is refused here)', spec: { rules: [{ from: [{ source: { namespaces: [`a*${'b'.repeat(70_000)}`] } }] }] }, refusedAt: 'spec.rules[0].from[0].source.namespaces[0]' },
  { source: 'security.go ValidateAttribute: request.headers[<any name>]', spec: { rules: [{ when: [{ key: 'request.headers[:authority]', values: ['a'] }, { key: 'request.headers[:path]', notValues: ['/b'] }] }] } },
];

// pilot/pkg/security/authz/builder/testdata/http/allow-full-rule-in.yaml, every field and key.
const FULL_RULE: Spec = {
  rules: [
    { from: [{ source: { serviceAccounts: ['my-ns/my-sa', 'sa-only'], notServiceAccounts: ['my-ns/my-sa-not', 'sa-not-only'] } }] },
    {
      from: [{ source: {
        principals: ['principal', 'principal-prefix-*', '*-suffix-principal', '*'],
        requestPrincipals: ['requestPrincipals', 'requestPrincipals-prefix-*', '*-suffix-requestPrincipals', '*'],
        namespaces: ['ns', 'ns-prefix-*', '*-ns-suffix', '*'],
        ipBlocks: ['1.2.3.4', '5.6.0.0/16'],
        remoteIpBlocks: ['1.2.3.4', '5.6.0.0/16'],
        notPrincipals: ['not-principal', 'not-principal-prefix-*', '*-not-suffix-principal', '*'],
        notRequestPrincipals: ['not-requestPrincipals', 'not-requestPrincipals-prefix-*', '*-not-suffix-requestPrincipals', '*'],
        notNamespaces: ['not-ns', 'not-ns-prefix-*', '*-not-ns-suffix', '*'],
        notIpBlocks: ['9.0.0.1', '9.2.0.0/16'],
        notRemoteIpBlocks: ['9.0.0.1', '9.2.0.0/16'],
      } }],
      to: [{ operation: {
        methods: ['method', 'method-prefix-*', '*-suffix-method', '*'],
        hosts: ['exact.com', '*.suffix.com', 'prefix.*', '*'],
        ports: ['80', '90'],
        paths: ['/exact', '/prefix/*', '*/suffix', '*', '/path/template/{*}', '/{**}/path/template'],
        notMethods: ['not-method', 'not-method-prefix-*', '*-not-suffix-method', '*'],
        notHosts: ['not-exact.com', '*.not-suffix.com', 'not-prefix.*', '*'],
        notPorts: ['8000', '9000'],
        notPaths: ['/not-exact', '/not-prefix/*', '*/not-suffix', '*', '/not-path/template/{*}', '/{**}/not-path/template'],
      } }],
      when: [
        { key: 'request.headers[X-header]', values: ['header', 'header-prefix-*', '*-suffix-header', '*'], notValues: ['not-header', 'not-header-prefix-*', '*-not-suffix-header', '*'] },
        { key: 'source.ip', values: ['10.10.10.10', '192.168.10.0/24'], notValues: ['90.10.10.10', '90.168.10.0/24'] },
        { key: 'remote.ip', values: ['10.10.10.10', '192.168.10.0/24'], notValues: ['90.10.10.10', '90.168.10.0/24'] },
        { key: 'source.namespace', values: ['ns', 'ns-prefix-*', '*-ns-suffix', '*'], notValues: ['not-ns', 'not-ns-prefix-*', '*-not-ns-suffix', '*'] },
        { key: 'source.principal', values: ['principal', 'principal-prefix-*', '*-suffix-principal', '*'], notValues: ['not-principal', 'not-principal-prefix-*', '*-not-suffix-principal', '*'] },
        { key: 'request.auth.principal', values: ['requestPrincipals', 'requestPrincipals-prefix-*', '*-suffix-requestPrincipals', '*', 'https://example.com/*'], notValues: ['not-requestPrincipals', 'not-requestPrincipals-prefix-*', '*-not-suffix-requestPrincipals', '*'] },
        { key: 'request.auth.audiences', values: ['audiences', 'audiences-prefix-*', '*-suffix-audiences', '*'], notValues: ['not-audiences', 'not-audiences-prefix-*', '*-not-suffix-audiences', '*'] },
        { key: 'request.auth.presenter', values: ['presenter', 'presenter-prefix-*', '*-suffix-presenter', '*'], notValues: ['not-presenter', 'not-presenter-prefix-*', '*-not-suffix-presenter', '*'] },
        { key: 'request.auth.claims[iss]', values: ['iss', 'iss-prefix-*', '*-suffix-iss', '*'], notValues: ['not-iss', 'not-iss-prefix-*', '*-not-suffix-iss', '*'] },
        { key: 'request.auth.claims[nested1][nested2]', values: ['nested', 'nested-prefix-*', '*-suffix-nested', '*'], notValues: ['not-nested', 'not-nested-prefix-*', '*-not-suffix-nested', '*'] },
        { key: 'destination.ip', values: ['10.10.10.10', '192.168.10.0/24'], notValues: ['90.10.10.10', '90.168.10.0/24'] },
        { key: 'destination.port', values: ['91', '92'], notValues: ['9001', '9002'] },
        { key: 'connection.sni', values: ['exact.com', '*.suffix.com', 'prefix.*', '*'], notValues: ['not-exact.com', '*.not-suffix.com', 'not-prefix.*', '*'] },
        { key: 'experimental.envoy.filters.a.b[c]', values: ['exact', 'prefix-*', '*-suffix', '*'], notValues: ['not-exact', 'not-prefix-*', '*-not-suffix', '*'] },
      ],
    },
  ],
};

it('builder testdata allow-full-rule-in.yaml: every field and key Istio\'s builder compiles is accepted, compiled and judged', () => {
  const table = waypointTable({ full: FULL_RULE });
  assert.deepEqual(table.errors, []);
  // Its first rule admits my-ns/my-sa; its second, whose notValues hold '*', nothing.
  assert.equal(table.evaluate(SERVICE, request({ sourcePrincipal: 'spiffe://cluster.local/ns/my-ns/sa/my-sa' })).allowed, true);
  assert.equal(table.evaluate(SERVICE, request()).allowed, false);
});

describe('Istio\'s validation of an AuthorizationPolicy, at the controller', () => {
  for (const row of VALIDATION) {
    it(`${row.source}: ${row.refusedAt ? `refused at ${row.refusedAt}` : 'accepted'}`, () => {
      const issues = validateObject(authz('shop', 'p', { targetRefs: [WAYPOINT_REF], ...row.spec }));
      if (row.refusedAt === undefined) assert.deepEqual(issues, []);
      else assert.deepEqual(issues.map((i) => i.path), [row.refusedAt], JSON.stringify(issues));
    });
  }

  // pkg/config/validation/validation.go ValidateAuthorizationPolicy, CUSTOM: From.Namespaces,
  // ServiceAccounts, TrustDomains, Principals, RequestPrincipals (and their Not*), when keys
  // source.namespace, source.serviceAccount, source.trustDomain, source.principal, request.auth.*.
  // The vocabulary marks them (keys.ts FieldSpec.identity), so one added there is refused too.
  it('a CUSTOM policy is refused at every identity field and key the vocabulary marks, exactly Istio\'s list', () => {
    const fields = Object.entries(SOURCE_FIELDS).filter(([, s]) => s.identity).map(([f]) => f).sort();
    assert.deepEqual(fields, ['namespaces', 'principals', 'requestPrincipals', 'serviceAccounts', 'trustDomains']);
    const keys = Object.entries(CONDITION_KEYS).filter(([, s]) => s.identity).map(([k]) => k).sort();
    assert.deepEqual(keys, ['request.auth.audiences', 'request.auth.claims', 'request.auth.presenter', 'request.auth.principal', 'source.namespace', 'source.principal', 'source.serviceAccount', 'source.trustDomain']);
    const custom = (rule: object) => validateObject(authz('shop', 'p', { targetRefs: [WAYPOINT_REF], action: 'CUSTOM', provider: { name: 'opa' }, rules: [rule] }));
    for (const f of fields.flatMap((x) => [x, `not${x[0]!.toUpperCase()}${x.slice(1)}`])) {
      const value = f.toLowerCase().includes('serviceaccounts') ? 'shop/sa' : f.toLowerCase().includes('principals') ? 'cluster.local/ns/a/sa/b' : 'x';
      const issues = custom({ from: [{ source: { [f]: [value] } }] });
      assert.deepEqual(issues.map((i) => [i.path, i.message]), [[`spec.rules[0].from[0].source.${f}`, 'is not supported with a CUSTOM action (Istio)']], f);
    }
    for (const k of keys) {
      const key = k === 'request.auth.claims' ? `${k}[iss]` : k;
      const issues = custom({ when: [{ key, values: ['x'] }] });
      assert.deepEqual(issues.map((i) => i.path), ['spec.rules[0].when[0].key'], key);
      assert.match(issues[0]!.message, /is not supported with a CUSTOM action/);
    }
    assert.deepEqual(custom({ from: [{ source: { ipBlocks: ['10.0.0.0/8'] } }], when: [{ key: 'source.ip', values: ['10.0.0.1'] }] }), [], 'the rest is accepted');
  });
});

// Istio builder (extauthz.go, testdata custom-bad-*): a CUSTOM policy whose provider is not among the
// mesh's extensionProviders becomes a DENY of what its rules match. Weft has no extension
// providers, so every CUSTOM policy is such a one, and says so.
it('a CUSTOM policy is enforced as Istio enforces one with an unknown provider, and the controller names why', () => {
  const inputs = emptyInputs();
  inputs.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'wp' }));
  inputs.services.push(svc('shop', 'reviews', { app: 'reviews' }, '10.96.0.70'));
  inputs.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'shop' }, spec: {} });
  inputs.authorizationPolicies.push(authz('shop', 'ext', { targetRefs: [WAYPOINT_REF], action: 'CUSTOM', provider: { name: 'opa' }, rules: [{ to: [{ operation: { paths: ['/admin*'] } }] }] }));
  const { model, findings } = compile(inputs);
  assert.equal(model.policies.get('shop/ext')?.action, 'DENY');
  const f = findings.filter((x) => x.name === 'ext');
  assert.deepEqual(f.map((x) => `${x.path} ${x.reason}`), ['spec.provider.name UnsupportedValue']);
  assert.match(f[0]!.message, /"opa".*denies the requests its rules match/);
  const d = new PolicyTable([...model.policies.values()]).evaluate(SERVICE, request({ target: '/admin/x' }));
  assert.equal(d.allowed, false);
  assert.equal(d.policy, 'shop/ext');
});

// Istio's istio.io/dry-run annotation (builder testdata dry-run-*; pilot/pkg/serviceregistry/ambient
// authorization.go): a dry-run ALLOW or DENY is judged but never enforced, at a waypoint (Envoy's
// shadow rules) as at ztunnel; its matches are logged (Weft: as an AUDIT's, `audit_policies`).
// Validation (checkDryRunAnnotation): a boolean, on ALLOW or DENY only.
describe('istio.io/dry-run', () => {
  const withAnnotation = (name: string, value: string, spec: Spec) => {
    const p = authz('shop', name, { targetRefs: [WAYPOINT_REF], ...spec });
    p.metadata.annotations = { 'istio.io/dry-run': value };
    return p;
  };
  const table = (...policies: AuthorizationPolicy[]) => {
    const inputs = emptyInputs();
    inputs.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'wp' }));
    inputs.services.push(svc('shop', 'reviews', { app: 'reviews' }, '10.96.0.70'));
    inputs.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'shop' }, spec: {} });
    for (const p of policies) assert.deepEqual(validateObject(p), [], p.metadata.name);
    inputs.authorizationPolicies.push(...policies);
    return new PolicyTable([...compile(inputs).model.policies.values()]);
  };

  it('builder testdata dry-run-mix-in.yaml: a dry-run DENY that matches is logged and denies nothing; a dry-run ALLOW allows nothing less', () => {
    const t = table(
      withAnnotation('shadow-deny', 'true', { action: 'DENY', rules: [{ to: [{ operation: { paths: ['/deny'] } }] }] }),
      withAnnotation('shadow-allow', 'True', { rules: [{ to: [{ operation: { paths: ['/allow'] } }] }] }),
    );
    const d = t.evaluate(SERVICE, request({ target: '/deny' }));
    assert.equal(d.allowed, true, d.reason);
    // Judged in shadow (Istio's shadow rules): the dry-run DENY engine's result names the policy.
    const deny = d.dryRun?.find((r) => r.action === 'DENY');
    assert.equal(deny?.result, 'denied');
    assert.equal(deny?.policy, 'shop/shadow-deny');
    assert.equal(t.evaluate(SERVICE, request({ target: '/other' })).allowed, true);
  });

  it('builder testdata dry-run-mix-in.yaml: "false" enforces', () => {
    const t = table(withAnnotation('deny', 'false', { action: 'DENY', rules: [{ to: [{ operation: { paths: ['/deny'] } }] }] }));
    assert.equal(t.evaluate(SERVICE, request({ target: '/deny' })).allowed, false);
  });

  it('validation.go checkDryRunAnnotation: a value that is not a boolean, or on AUDIT or CUSTOM, is refused at the annotation', () => {
    const at = 'metadata.annotations["istio.io/dry-run"]';
    assert.deepEqual(validateObject(withAnnotation('p', 'maybe', { action: 'DENY', rules: [{}] })).map((i) => i.path), [at]);
    assert.deepEqual(validateObject(withAnnotation('p', 'true', { action: 'AUDIT', rules: [{}] })).map((i) => i.path), [at]);
    assert.deepEqual(validateObject(withAnnotation('p', '1', { action: 'DENY', rules: [{}] })), []);
  });
});
