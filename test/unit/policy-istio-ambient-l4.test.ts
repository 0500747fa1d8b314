// Istio's own tests of ambient L4 authorization (what ztunnel enforces, without a waypoint), translated
// into Weft's: the node agent plays ztunnel's role. Each row cites its source in istio/istio or
// istio/ztunnel:
//   - tests/integration/ambient/baseline_test.go TestAuthorizationL4, TestPeerAuthentication;
//   - pilot/pkg/serviceregistry/ambient/authorization.go (convertAuthorizationPolicy, handleRule,
//     convertPeerAuthentication) and authorization_test.go TestConvertAuthorizationPolicyStatus;
//   - pilot/pkg/serviceregistry/ambient/testdata/peer-authn-*.yaml (TestPeerAuthentication there);
//   - pilot/pkg/serviceregistry/ambient/workloads.go buildWorkloadPolicies (which policies select a workload);
//   - pkg/config/validation/validation.go ValidateAuthorizationPolicy;
//   - ztunnel src/rbac.rs (Authorization::matches and its tests).
// Every row runs the controller's compile and the agent's judgement (LocalDelivery), so selection
// (namespace, selector, root namespace, targetRefs) is part of what is checked. Where Weft
// deliberately differs (fail closed where ztunnel's conversion drops a rule), the row says so and
// docs/SECURITY.md gives the reason.
import assert from 'node:assert/strict';
import { describe, it, test } from 'node:test';
import { Registry } from 'prom-client';
import { DeniedError, LocalDelivery } from '../../agent/src/delivery.ts';
import { AgentMetrics } from '../../agent/src/metrics.ts';
import { AgentState } from '../../agent/src/state.ts';
import { compile, emptyInputs } from '../../controller/src/compile.ts';
import { MemorySource } from '../../controller/src/sources/memory.ts';
import type { AgentConfig } from '../../lib/model/mesh.ts';
import type { AuthorizationPolicy, PeerAuthentication } from '../../lib/model/objects.ts';
import { validateObject } from '../../lib/model/validate.ts';
import { authz, ns, pod, svc } from './controller-fixtures.ts';
import { startHarness, until } from './controller-harness.ts';

const FRONTEND = 'spiffe://cluster.local/ns/web/sa/frontend';
const OTHER = 'spiffe://cluster.local/ns/other/sa/client';
const ROOT = 'weft-system';

const DB_IP = '10.1.8.8';

/** A connection to shop/db: ztunnel's rbac.rs test connections, in this mesh's names and addresses. */
interface Conn { principal?: string; ip: string; port: number }
const CONNS = {
  /** plaintext_conn(): no identity. */
  plain: { ip: '10.1.0.1', port: 8080 },
  /** tls_conn(): a mesh identity. */
  tls: { principal: OTHER, ip: '10.1.0.1', port: 8080 },
  /** tls_conn_alt(): another trust domain, namespace, address and port. */
  alt: { principal: 'spiffe://td-alt/ns/alt/sa/alt', ip: '10.1.0.3', port: 9090 },
} satisfies Record<string, Conn>;
type Verdicts = Record<keyof typeof CONNS, 'A' | 'D'>;

/** The agent's verdict (A: delivered, D: refused) on `conn` to shop/db under `config`. */
function judgeConn(config: AgentConfig, conn: Conn): 'A' | 'D' {
  const state = new AgentState('node-a');
  state.apply(config);
  const log = { debug() {}, info() {}, warn() {}, error() {} };
  const delivery = new LocalDelivery({ state, metrics: new AgentMetrics(), log, datapath: { registerPeer() {}, unregisterPeer() { return true; }, tagAgentSocket() {} } });
  const db = state.localWorkload(DB_IP)!;
  try {
    if (conn.principal === undefined) delivery.authorizePlaintext(db, conn.port, conn.ip);
    else delivery.authorize(db, conn.port, { sourcePrincipal: conn.principal, sourceIp: conn.ip });
    return 'A';
  } catch (err) {
    if (!(err instanceof DeniedError)) throw err;
    return 'D';
  }
}

function judge(config: AgentConfig, principal: string): string {
  return judgeConn(config, { principal, ip: '10.1.0.1', port: 8080 }) === 'A' ? 'allowed' : 'denied';
}

/** Compiles shop/db (app=db, Service db) under `objects`, as the agent of its node receives it. */
function meshOf(policies: AuthorizationPolicy[], peerAuthentications: PeerAuthentication[] = []) {
  const inputs = emptyInputs();
  inputs.namespaces.push(ns(ROOT), ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), ns('other', { 'weft.dev/dataplane-mode': 'ambient' }));
  inputs.pods.push(pod('shop', 'db', { labels: { app: 'db' }, ip: DB_IP }));
  inputs.services.push(svc('shop', 'db', { app: 'db' }, '10.96.0.60'));
  inputs.authorizationPolicies.push(...policies);
  inputs.peerAuthentications.push(...peerAuthentications);
  const { model, findings } = compile(inputs);
  const config: AgentConfig = { node: 'node-a', workloads: [...model.workloads.values()], services: [...model.services.values()], policies: [...model.policies.values()], peerAuthentications: [...model.peerAuthentications.values()], waypoints: [] };
  return { config, findings };
}

// pkg/config/validation/validation.go ValidateAuthorizationPolicy: "`from` must not be empty" and
// "`to` must not be empty" (a rule's `from: []` or `to: []`). Weft read an empty list as no
// `from` at all, any source: a template rendering "allowed callers" as an empty list turned an ALLOW
// into allow-all. Istio's webhook refuses the object, so the version before it stays in force.
test('an ALLOW whose rule has from: [] or to: [] is refused at its field, counted and logged, and the last good version keeps refusing other callers (Istio ValidateAuthorizationPolicy)', async () => {
  const good = authz('shop', 'lockdown', { selector: { matchLabels: { app: 'db' } }, action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/web/sa/frontend'] } }] }] });
  const source = new MemorySource([ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), pod('shop', 'db', { labels: { app: 'db' }, ip: '10.1.8.8' }), good]);
  const registry = new Registry();
  const h = await startHarness(source, undefined, { registry });
  try {
    const agent = h.agent('node-a');
    await until('the policy reaches the agent', () => agent.snapshot?.policies.some((p) => p.name === 'lockdown') === true);
    assert.equal(judge(agent.snapshot!, OTHER), 'denied');
    const cases = [
      { rules: [{ from: [] }], path: 'spec.rules[0].from' },
      { rules: [{ from: [{ source: { principals: ['cluster.local/ns/web/sa/frontend'] } }] }, { to: [] }], path: 'spec.rules[1].to' },
    ];
    for (const [i, c] of cases.entries()) {
      const bad = authz('shop', 'lockdown', { selector: { matchLabels: { app: 'db' } }, action: 'ALLOW', rules: c.rules });
      bad.metadata.generation = i + 2;
      assert.deepEqual(validateObject(bad).map((x) => x.path), [c.path]);
      source.upsert(bad);
      await until(`${c.path} refused in the status`, () => source.statuses.get('AuthorizationPolicy/shop/lockdown')?.reason === 'Invalid' && source.statuses.get('AuthorizationPolicy/shop/lockdown')?.path === c.path);
      assert.match(source.statuses.get('AuthorizationPolicy/shop/lockdown')!.message, /must not be an empty list/);
      await h.controller.settled();
      assert.equal(judge(agent.snapshot!, OTHER), 'denied', `${c.path}: the caller the last good version refuses is still refused`);
      assert.equal(judge(agent.snapshot!, FRONTEND), 'allowed');
    }
    const rejected = await registry.getSingleMetric('weft_controller_rejected_objects_total')?.get();
    assert.equal(rejected?.values.find((v) => v.labels.kind === 'AuthorizationPolicy')?.value, 2);
    assert.equal(h.logs.filter((l) => l.msg.startsWith('invalid object refused') && l.fields.object === 'AuthorizationPolicy/shop/lockdown').length, 2);
  } finally {
    await h.close();
  }
});

interface PolicyRow {
  /** Where Istio defines the case (file, test or case name). */
  source: string;
  /** What the agent does, in words. */
  name: string;
  policies: AuthorizationPolicy[];
  expect: Verdicts;
  /** What ztunnel does where Weft deliberately differs (docs/SECURITY.md "Compared with ztunnel"). */
  ztunnel?: Verdicts;
  /** Attributes the compile names in an UnsupportedValue finding (agents see no HTTP). */
  unsupported?: string;
}

const SEL = { matchLabels: { app: 'db' } };
const allow = (rules: unknown[], extra: Record<string, unknown> = {}, namespace = 'shop'): AuthorizationPolicy => authz(namespace, 'p', { selector: SEL, action: 'ALLOW', rules, ...extra } as AuthorizationPolicy['spec']);
const deny = (rules: unknown[], extra: Record<string, unknown> = {}, namespace = 'shop'): AuthorizationPolicy => authz(namespace, 'd', { selector: SEL, action: 'DENY', rules, ...extra } as AuthorizationPolicy['spec']);
const from = (source: Record<string, unknown>) => ({ from: [{ source }] });
const when = (key: string, values: string[], not = false) => ({ when: [not ? { key, notValues: values } : { key, values }] });
const v = (plain: 'A' | 'D', tls: 'A' | 'D', alt: 'A' | 'D'): Verdicts => ({ plain, tls, alt });
const RBAC = 'ztunnel src/rbac.rs';
const CONVERT = 'pilot/pkg/serviceregistry/ambient/authorization_test.go TestConvertAuthorizationPolicyStatus';

const POLICY_ROWS: PolicyRow[] = [
  // ztunnel src/rbac.rs: one match per field against plaintext_conn, tls_conn, tls_conn_alt.
  { source: `${RBAC} rbac_test!(namespaces)`, name: 'namespaces', policies: [allow([from({ namespaces: ['other'] })])], expect: v('D', 'A', 'D') },
  { source: `${RBAC} rbac_test!(not_namespaces)`, name: 'notNamespaces (a plaintext peer has no namespace)', policies: [allow([from({ notNamespaces: ['other'] })])], expect: v('A', 'D', 'A') },
  { source: `${RBAC} rbac_test!(service_accounts)`, name: 'serviceAccounts', policies: [allow([from({ serviceAccounts: ['other/client'] })])], expect: v('D', 'A', 'D') },
  { source: `${RBAC} rbac_test!(not_service_accounts)`, name: 'notServiceAccounts', policies: [allow([from({ notServiceAccounts: ['other/client'] })])], expect: v('A', 'D', 'A') },
  { source: `${RBAC} rbac_test!(principals)`, name: 'principals', policies: [allow([from({ principals: ['cluster.local/ns/other/sa/client'] })])], expect: v('D', 'A', 'D') },
  { source: `${RBAC} rbac_test!(not_principals)`, name: 'notPrincipals', policies: [allow([from({ notPrincipals: ['cluster.local/ns/other/sa/client'] })])], expect: v('A', 'D', 'A') },
  { source: `${RBAC} rbac_test!(source_ips)`, name: 'ipBlocks', policies: [allow([from({ ipBlocks: ['10.1.0.1/32'] })])], expect: v('A', 'A', 'D') },
  { source: `${RBAC} rbac_test!(not_source_ips)`, name: 'notIpBlocks', policies: [allow([from({ notIpBlocks: ['10.1.0.1'] })])], expect: v('D', 'D', 'A') },
  { source: `${RBAC} rbac_test!(destination_ips, cidr_range)`, name: 'destination.ip (the pod\'s address)', policies: [allow([when('destination.ip', ['10.1.8.0/24'])])], expect: v('A', 'A', 'A') },
  { source: `${RBAC} rbac_test!(not_destination_ips)`, name: 'destination.ip notValues', policies: [allow([when('destination.ip', [DB_IP], true)])], expect: v('D', 'D', 'D') },
  { source: `${RBAC} rbac_test!(destination_ports)`, name: 'ports', policies: [allow([{ to: [{ operation: { ports: ['8080'] } }] }])], expect: v('A', 'A', 'D') },
  { source: `${RBAC} rbac_test!(not_destination_ports)`, name: 'notPorts', policies: [allow([{ to: [{ operation: { notPorts: ['8080'] } }] }])], expect: v('D', 'D', 'A') },
  { source: `${RBAC} rbac_empty_policy`, name: 'an ALLOW without rules allows nothing', policies: [allow([])], expect: v('D', 'D', 'D') },
  { source: `${RBAC} rbac_empty_policy`, name: 'an ALLOW with the empty rule {} allows everything', policies: [allow([{}])], expect: v('A', 'A', 'A') },
  { source: `${RBAC} rbac_nesting`, name: 'sources OR\'ed, and AND\'ed with the operation', policies: [allow([{ from: [{ source: { namespaces: ['other'] } }, { source: { namespaces: ['alt'] } }], to: [{ operation: { ports: ['8080'] } }] }])], expect: v('D', 'A', 'D') },
  { source: `${RBAC} rbac_multi_rule`, name: 'rules OR\'ed', policies: [allow([from({ namespaces: ['other'] }), from({ namespaces: ['alt'] })])], expect: v('D', 'A', 'A') },
  { source: `${RBAC} string_match (prefix)`, name: 'a principal prefix', policies: [allow([from({ principals: ['cluster.local/ns/other/*'] })])], expect: v('D', 'A', 'D') },
  { source: `${RBAC} string_match (suffix)`, name: 'a principal suffix', policies: [allow([from({ principals: ['*/sa/client'] })])], expect: v('D', 'A', 'D') },
  { source: `${RBAC} string_match (presence)`, name: 'principals * is any identity, never plaintext', policies: [allow([from({ principals: ['*'] })])], expect: v('D', 'A', 'A') },
  { source: `${RBAC} string_match (presence)`, name: 'notPrincipals * is plaintext only', policies: [allow([from({ notPrincipals: ['*'] })])], expect: v('A', 'D', 'D') },
  { source: `${RBAC} string_match (presence)`, name: 'namespaces * is any mesh namespace', policies: [allow([from({ namespaces: ['*'] })])], expect: v('D', 'A', 'A') },
  // istiod's conversion: pilot/pkg/serviceregistry/ambient/authorization.go handleRule, l4WhenAttributes.
  { source: 'authorization.go l4WhenAttributes source.ip', name: 'when source.ip', policies: [allow([when('source.ip', ['10.1.0.0/31'])])], expect: v('A', 'A', 'D') },
  { source: 'authorization.go l4WhenAttributes source.namespace', name: 'when source.namespace notValues', policies: [allow([when('source.namespace', ['other'], true)])], expect: v('A', 'D', 'A') },
  { source: 'authorization.go l4WhenAttributes source.principal', name: 'when source.principal', policies: [allow([when('source.principal', ['td-alt/ns/alt/sa/alt'])])], expect: v('D', 'D', 'A') },
  { source: 'authorization.go l4WhenAttributes destination.port', name: 'when destination.port', policies: [allow([when('destination.port', ['9090'])])], expect: v('D', 'D', 'A') },
  { source: 'authorization.go handleRule (remote.ip is not an L4 when key)', name: 'an ALLOW rule on remote.ip never matches at the agent', policies: [allow([when('remote.ip', ['10.1.0.0/16'])])], expect: v('D', 'D', 'D'), unsupported: 'remote.ip' },
  { source: 'authorization.go httpSources (remoteIpBlocks)', name: 'an ALLOW rule on remoteIpBlocks never matches at the agent', policies: [allow([from({ remoteIpBlocks: ['10.1.0.0/16'] })])], expect: v('D', 'D', 'D'), unsupported: 'remoteIpBlocks' },
  { source: 'authorization.go handleRule (source.serviceAccount is not in l4WhenAttributes)', name: 'when source.serviceAccount is judged by the peer\'s identity, as the serviceAccounts field', policies: [allow([when('source.serviceAccount', ['other/client'])])], expect: v('D', 'A', 'D'), ztunnel: v('D', 'D', 'D') },
  // istiod's conversion, with the status it writes.
  { source: `${CONVERT} "no status - targetRef is not for ztunnel"`, name: 'a targetRefs policy is not the agent\'s', policies: [authz('shop', 't', { targetRefs: [{ kind: 'Service', group: '', name: 'db' }], action: 'DENY', rules: [{}] })], expect: v('A', 'A', 'A') },
  { source: `${CONVERT} "unsupported AUDIT action"`, name: 'AUDIT decides nothing', policies: [authz('shop', 'a', { selector: SEL, action: 'AUDIT', rules: [{}] })], expect: v('A', 'A', 'A') },
  { source: `${CONVERT} "unsupported HTTP methods"`, name: 'an ALLOW rule with HTTP attributes is omitted', policies: [allow([{ from: [{ source: { requestPrincipals: ['example.com/sub-1'] } }], to: [{ operation: { methods: ['GET'] } }], when: [{ key: 'request.auth.presenter', values: ['presenter.example.com'] }] }])], expect: v('D', 'D', 'D'), unsupported: 'methods, request.auth.presenter, requestPrincipals' },
  { source: `${CONVERT} "DENY policy with only L4 attributes - no status warning"`, name: 'a DENY on a principal', policies: [deny([from({ principals: ['cluster.local/ns/other/sa/client'] })])], expect: v('A', 'D', 'A') },
  { source: `${CONVERT} "DENY policy with mixed L4 and L7 attributes is enforced without HTTP rules"`, name: 'a DENY source keeps its L4 fields', policies: [deny([from({ principals: ['cluster.local/ns/other/sa/client'], notRequestPrincipals: ['example.com/sub-1'] })])], expect: v('A', 'D', 'A'), unsupported: 'notRequestPrincipals' },
  { source: `${CONVERT} "DENY policy with empty catch-all rule and L7-only rule is still enforced"`, name: 'a DENY with {} denies everything', policies: [deny([{}, from({ notRequestPrincipals: ['example.com/sub-1'] })])], expect: v('D', 'D', 'D'), unsupported: 'notRequestPrincipals' },
  { source: `${CONVERT} "DENY policy with only L7 attributes results in no effect at ztunnel"`, name: 'a DENY rule of HTTP attributes only denies every connection (fail closed)', policies: [deny([from({ notRequestPrincipals: ['example.com/sub-1'] })])], expect: v('D', 'D', 'D'), ztunnel: v('A', 'A', 'A'), unsupported: 'notRequestPrincipals' },
  { source: `${CONVERT} "DENY policy with L7-only and separate L4 rule is still enforced"`, name: 'its L7-only rule denies every connection too', policies: [deny([from({ notRequestPrincipals: ['example.com/sub-1'] }), from({ principals: ['cluster.local/ns/other/sa/client'] })])], expect: v('D', 'D', 'D'), ztunnel: v('A', 'D', 'A'), unsupported: 'notRequestPrincipals' },
  { source: `${CONVERT} "DENY policy with L4 From and L7 When is a no-op due to AND empty clause"`, name: 'a DENY of a source and an HTTP condition denies the source', policies: [deny([{ ...from({ principals: ['cluster.local/ns/other/sa/client'] }), ...when('request.headers[x-token]', ['secret']) }])], expect: v('A', 'D', 'A'), ztunnel: v('A', 'A', 'A'), unsupported: 'request.headers[x-token]' },
  { source: `${CONVERT} "DENY policy with L4 From and L7-only To methods is a no-op due to AND empty clause"`, name: 'a DENY of a source and a method denies the source', policies: [deny([{ ...from({ principals: ['cluster.local/ns/other/sa/client'] }), to: [{ operation: { methods: ['GET'] } }] }])], expect: v('A', 'D', 'A'), ztunnel: v('A', 'A', 'A'), unsupported: 'methods' },
  // https://istio.io/latest/docs/reference/config/security/authorization-policy/ examples.
  { source: 'authorization-policy reference "allow-nothing" (spec: {})', name: 'an ALLOW of nothing refuses every connection in its namespace', policies: [authz('shop', 'allow-nothing', {})], expect: v('D', 'D', 'D') },
  { source: 'authorization-policy reference "allow-all" (rules: [{}])', name: 'the empty rule allows every connection', policies: [authz('shop', 'allow-all', { rules: [{}] })], expect: v('A', 'A', 'A') },
  { source: 'authorization-policy reference "deny-all" (action: DENY, rules: [{}])', name: 'a DENY of the empty rule refuses every connection', policies: [authz('shop', 'deny-all', { action: 'DENY', rules: [{}] })], expect: v('D', 'D', 'D') },
  // Order and scope: ztunnel judges DENY before ALLOW; istiod's scopes (convertAuthorizationPolicy, workloads.go buildWorkloadPolicies).
  { source: 'ztunnel src/state.rs assert_rbac (DENY policies first)', name: 'a DENY wins over an ALLOW of everything', policies: [allow([{}]), deny([from({ namespaces: ['other'] })])], expect: v('A', 'D', 'A') },
  { source: 'authorization.go convertAuthorizationPolicy (Scope_GLOBAL)', name: 'a root-namespace policy without selector applies in every namespace', policies: [authz(ROOT, 'g', { action: 'DENY', rules: [from({ namespaces: ['other'] })] })], expect: v('A', 'D', 'A') },
  { source: 'workloads.go buildWorkloadPolicies (nsMatch: the root namespace or the workload\'s)', name: 'a root-namespace selector policy applies to the selected workloads of every namespace', policies: [deny([{}], {}, ROOT)], expect: v('D', 'D', 'D') },
  { source: 'workloads.go buildWorkloadPolicies (nsMatch)', name: 'another namespace\'s selector policy does not apply', policies: [deny([{}], {}, 'other')], expect: v('A', 'A', 'A') },
  { source: 'tests/integration/ambient/baseline_test.go TestAuthorizationL4 "allow"', name: 'the source\'s identity (or its waypoint\'s) is admitted; a caller without identity is refused', policies: [allow([from({ principals: ['cluster.local/ns/other/sa/client', 'cluster.local/ns/shop/sa/waypoint'] })])], expect: v('D', 'A', 'D') },
  { source: 'tests/integration/ambient/baseline_test.go TestAuthorizationL4 "not allow"', name: 'an ALLOW naming someone else refuses everyone', policies: [allow([from({ principals: ['cluster.local/ns/something/sa/else'] })])], expect: v('D', 'D', 'D') },
];

describe('Istio ambient L4 authorization, judged by the agent', () => {
  for (const row of POLICY_ROWS) {
    it(`${row.name} [${row.source}]`, () => {
      for (const p of row.policies) assert.deepEqual(validateObject(p), [], `${p.metadata.namespace}/${p.metadata.name} validates`);
      const { config, findings } = meshOf(row.policies);
      const got = Object.fromEntries(Object.entries(CONNS).map(([k, c]) => [k, judgeConn(config, c)]));
      assert.deepEqual(got, row.expect);
      const unsupported = findings.filter((f) => f.reason === 'UnsupportedValue').map((f) => /\(found: ([^)]*)\)/.exec(f.message)?.[1]);
      assert.deepEqual(unsupported, row.unsupported ? [row.unsupported] : []);
    });
  }
});

let age = 0;
function pa(namespace: string, name: string, spec: PeerAuthentication['spec']): PeerAuthentication {
  const creationTimestamp = new Date(Date.UTC(2026, 0, 1, 0, 0, age++)).toISOString();
  return { apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name, namespace, creationTimestamp }, spec };
}
const STRICT = { mode: 'STRICT' as const };
const PERMISSIVE = { mode: 'PERMISSIVE' as const };
const DISABLE = { mode: 'DISABLE' as const };
const UNSET = { mode: 'UNSET' as const };
const wl = (mtls: { mode: 'STRICT' | 'PERMISSIVE' | 'DISABLE' | 'UNSET' } | undefined, ports: Record<string, { mode: 'STRICT' | 'PERMISSIVE' | 'DISABLE' | 'UNSET' }>) => pa('shop', 'workload', { selector: SEL, ...(mtls ? { mtls } : {}), portLevelMtls: ports });
const TESTDATA = 'pilot/pkg/serviceregistry/ambient/testdata';

/** Plaintext to shop/db on 8080, 9090 and another port (7070): P delivered (policy allowing), S refused as STRICT. */
const PA_ROWS: Array<{ source: string; policies: PeerAuthentication[]; expect: string }> = [
  { source: `${TESTDATA}/peer-authn-disable-in.yaml`, policies: [pa('shop', 'x', { mtls: DISABLE })], expect: 'PPP' },
  { source: `${TESTDATA}/peer-authn-disable-port-mtls-strict-in.yaml`, policies: [wl(DISABLE, { 9090: STRICT })], expect: 'PSP' },
  { source: `${TESTDATA}/peer-authn-permissive-in.yaml`, policies: [pa('shop', 'x', { mtls: PERMISSIVE })], expect: 'PPP' },
  { source: `${TESTDATA}/peer-authn-permissive-port-mtls-strict-in.yaml`, policies: [wl(PERMISSIVE, { 9090: STRICT })], expect: 'PSP' },
  { source: `${TESTDATA}/peer-authn-permissive-port-mtls-strict-and-permissive-in.yaml`, policies: [wl(PERMISSIVE, { 9090: STRICT, 8080: PERMISSIVE })], expect: 'PSP' },
  { source: `${TESTDATA}/peer-authn-permissive-root-permissive-namespace-strict-workload-ports-in.yaml`, policies: [pa(ROOT, 'm', { mtls: PERMISSIVE }), pa('shop', 'n', { mtls: PERMISSIVE }), wl(undefined, { 9090: STRICT, 8080: STRICT })], expect: 'SSP' },
  { source: `${TESTDATA}/peer-authn-permissive-root-permissive-workload-in.yaml`, policies: [pa(ROOT, 'm', { mtls: PERMISSIVE }), wl(undefined, { 9090: PERMISSIVE })], expect: 'PPP' },
  { source: `${TESTDATA}/peer-authn-permissive-root-strict-namespace-permissive-workload-in.yaml`, policies: [pa(ROOT, 'm', { mtls: PERMISSIVE }), pa('shop', 'n', { mtls: STRICT }), wl(undefined, { 9090: PERMISSIVE })], expect: 'SPS' },
  { source: `${TESTDATA}/peer-authn-permissive-root-unset-namespace-mixed-workload-ports-in.yaml`, policies: [pa(ROOT, 'm', { mtls: PERMISSIVE }), pa('shop', 'n', { mtls: UNSET }), wl(undefined, { 9090: STRICT, 8080: PERMISSIVE })], expect: 'PSP' },
  { source: `${TESTDATA}/peer-authn-strict-and-disable-port-mtls-in.yaml`, policies: [wl(STRICT, { 9090: DISABLE })], expect: 'SPS' },
  { source: `${TESTDATA}/peer-authn-strict-and-permissive-port-mtls-in.yaml`, policies: [wl(STRICT, { 9090: PERMISSIVE })], expect: 'SPS' },
  { source: `${TESTDATA}/peer-authn-strict-and-strict-port-mtls-in.yaml`, policies: [wl(STRICT, { 8080: STRICT })], expect: 'SSS' },
  { source: `${TESTDATA}/peer-authn-strict-in.yaml`, policies: [pa('shop', 'x', { mtls: STRICT })], expect: 'SSS' },
  { source: `${TESTDATA}/peer-authn-strict-port-mtls-strict-and-permissive-in.yaml`, policies: [wl(STRICT, { 9090: STRICT, 8080: PERMISSIVE })], expect: 'PSS' },
  { source: `${TESTDATA}/peer-authn-strict-root-permissive-namespace-strict-workload-in.yaml`, policies: [pa(ROOT, 'm', { mtls: STRICT }), pa('shop', 'n', { mtls: PERMISSIVE }), wl(undefined, { 9090: STRICT })], expect: 'PSP' },
  { source: `${TESTDATA}/peer-authn-strict-root-permissive-workload-in.yaml`, policies: [pa(ROOT, 'm', { mtls: STRICT }), wl(undefined, { 9090: PERMISSIVE })], expect: 'SPS' },
  { source: `${TESTDATA}/peer-authn-strict-root-unset-workload-port-mtls-strict-and-permissive-in.yaml`, policies: [pa(ROOT, 'm', { mtls: STRICT }), wl(undefined, { 9090: PERMISSIVE, 8080: STRICT })], expect: 'SPS' },
  { source: `${TESTDATA}/peer-authn-strict-workload-in.yaml`, policies: [pa('shop', 'x', { selector: SEL, mtls: STRICT })], expect: 'SSS' },
  { source: `${TESTDATA}/peer-authn-unset-port-mtls-strict-in.yaml`, policies: [wl(UNSET, { 8080: STRICT })], expect: 'SPP' },
  { source: 'baseline_test.go TestPeerAuthentication "strict-permissive-ports"', policies: [wl(STRICT, { 18080: PERMISSIVE, 19090: PERMISSIVE })], expect: 'SSS' },
  { source: 'baseline_test.go TestPeerAuthentication "global-strict-permissive-workload-ports"', policies: [pa(ROOT, 'm', { mtls: STRICT }), wl(undefined, { 8080: PERMISSIVE, 9090: PERMISSIVE })], expect: 'PPS' },
  { source: 'baseline_test.go TestPeerAuthentication "global-permissive-strict-workload-ports"', policies: [pa(ROOT, 'm', { mtls: PERMISSIVE }), wl(undefined, { 8080: STRICT, 9090: STRICT })], expect: 'SSP' },
  // convertPeerAuthentication skips a STRICT port of a PERMISSIVE workload policy under a STRICT mesh
  // policy (its condition reads `A || B && C || D`), so ztunnel leaves 9090 PERMISSIVE: Weft keeps it STRICT.
  { source: 'authorization.go convertPeerAuthentication (a STRICT port of a PERMISSIVE workload under a STRICT mesh; ztunnel: PPP)', policies: [pa(ROOT, 'm', { mtls: STRICT }), wl(PERMISSIVE, { 9090: STRICT })], expect: 'PSP' },
];

describe('Istio ambient PeerAuthentication, judged by the agent', () => {
  for (const row of PA_ROWS) {
    it(`plaintext to 8080, 9090, 7070: ${row.expect} [${row.source}]`, () => {
      for (const p of row.policies) assert.deepEqual(validateObject(p), [], `${p.metadata.namespace}/${p.metadata.name} validates`);
      const { config } = meshOf([], row.policies);
      const got = [8080, 9090, 7070].map((port) => (judgeConn(config, { ip: '192.168.0.1', port }) === 'A' ? 'P' : 'S')).join('');
      assert.equal(got, row.expect);
      for (const port of [8080, 9090, 7070]) assert.equal(judgeConn(config, { principal: OTHER, ip: '10.1.0.1', port }), 'A', `mTLS to ${port} is never refused by a PeerAuthentication`);
    });
  }
});
