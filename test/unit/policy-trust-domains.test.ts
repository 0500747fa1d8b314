// Trust-domain aliases in AuthorizationPolicy principals, as Istio defines them: the task "Trust
// Domain Migration" (https://istio.io/latest/docs/tasks/security/authorization/authz-td-migration/)
// and pilot pkg/security/trustdomain/bundle.go ReplaceTrustDomainAliases, applied by
// Model.MigrateTrustDomain (pilot/pkg/security/authz/model/model.go) to `principals`,
// `notPrincipals` and the `source.principal` condition alike. The controller expands them when it
// compiles a policy, so an agent (L4, LocalDelivery) and a waypoint (L7, WaypointEngine) enforce
// the same lists; both are checked here through the compiled model.
import assert from 'node:assert/strict';
import { after, before, describe, it, test } from 'node:test';
import { DeniedError, LocalDelivery } from '../../agent/src/delivery.ts';
import { AgentMetrics } from '../../agent/src/metrics.ts';
import { AgentState } from '../../agent/src/state.ts';
import { CompileCache, compile, emptyInputs, type CompileOptions } from '../../controller/src/compile.ts';
import type { Logger } from '../../lib/log.ts';
import type { AgentConfig } from '../../lib/model/mesh.ts';
import type { AuthorizationPolicy } from '../../lib/model/objects.ts';
import { validateObject } from '../../lib/model/validate.ts';
import { expandTrustDomainAliases, expandTrustDomainList } from '../../lib/policy/trust-domains.ts';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import { config, echo, endpoint, metricSamples, request, service, startHttpBackend, startTunnelListener, type Backend, type Listener } from '../../waypoint/testing/harness.ts';
import { authz, ns, pod, svc } from './controller-fixtures.ts';

// The migration of the task: the mesh moved to new-td and keeps old-td as an alias.
const MIGRATED: CompileOptions = { trustDomain: 'new-td', trustDomainAliases: ['old-td'] };
const NEW_CLIENT = 'spiffe://new-td/ns/other/sa/client';
const OLD_CLIENT = 'spiffe://old-td/ns/other/sa/client';
// A trust domain that is not the mesh's nor an alias (same root: it passed TLS, as in the task's
// "foreign" case): what names it is never widened, and it is refused as before.
const FOREIGN_CLIENT = 'spiffe://foreign-td/ns/other/sa/client';

// pilot/pkg/security/trustdomain/bundle_test.go TestReplaceTrustDomainAliases, case by case.
test('expandTrustDomainAliases follows Istio\'s ReplaceTrustDomainAliases (bundle_test.go)', () => {
  const cases: Array<[string, string[], string[], string[]]> = [
    ['no aliases', ['cluster.local'], ['cluster.local/ns/foo/sa/bar'], ['cluster.local/ns/foo/sa/bar']],
    ['* is kept', ['cluster.local'], ['*'], ['*']],
    ['a * trust domain is kept', ['cluster.local'], ['*/ns/foo/sa/bar'], ['*/ns/foo/sa/bar']],
    ['one alias', ['td2', 'td1'], ['td1/ns/foo/sa/bar'], ['td2/ns/foo/sa/bar', 'td1/ns/foo/sa/bar']],
    ['cluster.local as an alias', ['td1', 'cluster.local'], ['cluster.local/ns/foo/sa/bar', 'cluster.local/ns/yyy/sa/zzz'], ['td1/ns/foo/sa/bar', 'cluster.local/ns/foo/sa/bar', 'td1/ns/yyy/sa/zzz', 'cluster.local/ns/yyy/sa/zzz']],
    ['principals with * kept', ['td1', 'cluster.local'], ['*/ns/foo/sa/bar', '*sa/zzz', '*'], ['*/ns/foo/sa/bar', '*sa/zzz', '*']],
    ['two aliases', ['td2', 'td1', 'cluster.local'], ['cluster.local/ns/foo/sa/bar', 'td1/ns/yyy/sa/zzz'], ['td2/ns/foo/sa/bar', 'td1/ns/foo/sa/bar', 'cluster.local/ns/foo/sa/bar', 'td2/ns/yyy/sa/zzz', 'td1/ns/yyy/sa/zzz', 'cluster.local/ns/yyy/sa/zzz']],
    ['a *-prefixed trust domain', ['td2', 'foo-td1', 'cluster.local'], ['*-td1/ns/foo/sa/bar'], ['td2/ns/foo/sa/bar', '*-td1/ns/foo/sa/bar', 'cluster.local/ns/foo/sa/bar']],
    ['a foreign trust domain is kept', ['td1', 'td2'], ['some-td/ns/foo/sa/bar'], ['some-td/ns/foo/sa/bar']],
    ['one alias matches', ['td1', 'td2', 'some-td'], ['some-td/ns/foo/sa/bar'], ['td1/ns/foo/sa/bar', 'td2/ns/foo/sa/bar', 'some-td/ns/foo/sa/bar']],
    ['one of two matches', ['new-td', 'td2', 'td3'], ['td1/ns/some-ns/sa/some-sa', 'td2/ns/foo/sa/bar'], ['td1/ns/some-ns/sa/some-sa', 'new-td/ns/foo/sa/bar', 'td2/ns/foo/sa/bar', 'td3/ns/foo/sa/bar']],
    ['an empty trust domain is kept', ['new-td', 'td2', 'td3'], ['/ns/some-ns/sa/some-sa'], ['/ns/some-ns/sa/some-sa']],
    ['a pattern matching every domain is kept once', ['new-td', 'old-td'], ['*-td/ns/some-ns/sa/some-sa'], ['*-td/ns/some-ns/sa/some-sa']],
    // Beyond the table: cluster.local stands for the bundle even when it is not in it; a
    // principal not of five parts enforces no trust domain; a trailing * is carried over.
    ['cluster.local is the local trust domain', ['new-td'], ['cluster.local/ns/foo/sa/bar'], ['new-td/ns/foo/sa/bar']],
    ['not five parts', ['new-td', 'old-td'], ['old-td/ns/foo/*', 'old-td/ns/foo/sa/bar/extra'], ['old-td/ns/foo/*', 'old-td/ns/foo/sa/bar/extra']],
    ['a trailing *', ['new-td', 'old-td'], ['old-td/ns/foo/sa/*'], ['new-td/ns/foo/sa/*', 'old-td/ns/foo/sa/*']],
  ];
  for (const [name, bundle, principals, expect] of cases) assert.deepEqual(expandTrustDomainAliases(principals, bundle), expect, name);
});

/** shop/db on new-td (alias old-td unless `options` says otherwise) and one policy; its agent judges a connection from `caller`. */
function agentMesh(policy: AuthorizationPolicy, options: CompileOptions = MIGRATED) {
  assert.deepEqual(validateObject(policy), [], policy.metadata.name);
  const inputs = emptyInputs();
  inputs.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  inputs.pods.push(pod('shop', 'db', { labels: { app: 'db' }, ip: '10.1.8.8' }));
  inputs.services.push(svc('shop', 'db', { app: 'db' }, '10.96.0.60'));
  inputs.authorizationPolicies.push(policy);
  const { model } = compile(inputs, options);
  const state = new AgentState('node-a');
  state.apply({ node: 'node-a', workloads: [...model.workloads.values()], services: [...model.services.values()], policies: [...model.policies.values()], peerAuthentications: [], waypoints: [] } satisfies AgentConfig);
  const lines: Array<{ msg: string; fields: Record<string, unknown> | undefined }> = [];
  const log: Logger = { debug() {}, info: (msg, fields) => lines.push({ msg, fields }), warn: (msg, fields) => lines.push({ msg, fields }), error: (msg, fields) => lines.push({ msg, fields }) };
  const metrics = new AgentMetrics();
  const delivery = new LocalDelivery({ state, metrics, log, datapath: { registerPeer() {}, unregisterPeer() { return true; }, tagAgentSocket() {} } });
  const connect = (caller: string): string => {
    try {
      delivery.authorize(state.localWorkload('10.1.8.8')!, 8080, { sourcePrincipal: caller, sourceIp: '10.1.0.1' });
      return 'allowed';
    } catch (err) {
      if (!(err instanceof DeniedError)) throw err;
      return `denied by ${err.policy}`;
    }
  };
  const policyDenials = async (): Promise<number> => (await metrics.denied.get()).values.filter((v) => v.labels['reason'] === 'policy').reduce((n, v) => n + v.value, 0);
  return { model, lines, connect, policyDenials };
}

const onDb = { selector: { matchLabels: { app: 'db' } } };

describe('an agent (L4) enforces principals under the mesh\'s trust-domain aliases (Istio trust-domain migration)', () => {
  it('an ALLOW naming old-td/ns/x/sa/y admits new-td\'s x/y, and refuses, counts and names a caller of a trust domain that is no alias', async () => {
    const m = agentMesh(authz('shop', 'from-client', { ...onDb, action: 'ALLOW', rules: [{ from: [{ source: { principals: ['old-td/ns/other/sa/client'] } }] }] }));
    assert.deepEqual(m.model.policies.get('shop/from-client')!.rules[0]!.from[0]!.principals, ['new-td/ns/other/sa/client', 'old-td/ns/other/sa/client']);
    assert.equal(m.connect(NEW_CLIENT), 'allowed', 'the same service account under the mesh\'s trust domain');
    assert.equal(m.connect(OLD_CLIENT), 'allowed');
    assert.equal(m.connect(FOREIGN_CLIENT), 'denied by shop/from-client', 'foreign-td is not an alias');
    assert.equal(await m.policyDenials(), 1, 'counted');
    assert.equal(m.lines.find((l) => l.msg === 'connection denied')?.fields?.['source'], FOREIGN_CLIENT, 'named');
  });

  it('a principal of a foreign trust domain is kept as written: it admits only that trust domain\'s caller', () => {
    const m = agentMesh(authz('shop', 'from-foreign', { ...onDb, action: 'ALLOW', rules: [{ from: [{ source: { principals: ['foreign-td/ns/other/sa/client'] } }] }] }));
    assert.deepEqual(m.model.policies.get('shop/from-foreign')!.rules[0]!.from[0]!.principals, ['foreign-td/ns/other/sa/client']);
    assert.equal(m.connect(NEW_CLIENT), 'denied by shop/from-foreign');
    assert.equal(m.connect(OLD_CLIENT), 'denied by shop/from-foreign');
  });

  it('cluster.local/... stands for the local trust domain when the mesh runs with another one', () => {
    const m = agentMesh(authz('shop', 'from-client', { ...onDb, action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/other/sa/client'] } }] }] }), { trustDomain: 'new-td' });
    assert.equal(m.connect(NEW_CLIENT), 'allowed');
    assert.equal(m.connect(FOREIGN_CLIENT), 'denied by shop/from-client');
  });

  it('a DENY, notPrincipals and source.principal cannot be walked around by presenting the alias form', async () => {
    const deny = agentMesh(authz('shop', 'deny-client', { ...onDb, action: 'DENY', rules: [{ from: [{ source: { principals: ['old-td/ns/other/sa/client'] } }] }] }));
    assert.equal(deny.connect(NEW_CLIENT), 'denied by shop/deny-client');
    assert.equal(await deny.policyDenials(), 1);
    const notPrincipals = agentMesh(authz('shop', 'all-but-client', { ...onDb, action: 'ALLOW', rules: [{ from: [{ source: { principals: ['*'], notPrincipals: ['old-td/ns/other/sa/client'] } }] }] }));
    assert.deepEqual(notPrincipals.model.policies.get('shop/all-but-client')!.rules[0]!.from[0]!.principals, ['*'], '* is kept');
    assert.equal(notPrincipals.connect(NEW_CLIENT), 'denied by shop/all-but-client');
    assert.equal(notPrincipals.connect('spiffe://new-td/ns/other/sa/friend'), 'allowed');
    const when = agentMesh(authz('shop', 'deny-when', { ...onDb, action: 'DENY', rules: [{ when: [{ key: 'source.principal', values: ['new-td/ns/other/sa/client'] }] }] }));
    assert.deepEqual(when.model.policies.get('shop/deny-when')!.rules[0]!.when[0]!.values, ['new-td/ns/other/sa/client', 'old-td/ns/other/sa/client']);
    assert.equal(when.connect(OLD_CLIENT), 'denied by shop/deny-when');
    const whenNot = agentMesh(authz('shop', 'deny-unless', { ...onDb, action: 'DENY', rules: [{ when: [{ key: 'source.principal', notValues: ['old-td/ns/other/sa/client'] }] }] }));
    assert.equal(whenNot.connect(NEW_CLIENT), 'allowed', 'notValues under the alias too');
    assert.equal(whenNot.connect(FOREIGN_CLIENT), 'denied by shop/deny-unless');
  });
});

// Istio's trustDomains / notTrustDomains / source.trustDomain stand for the bundle as principals do
// (the trust-domain migration keeps every policy working under the new domain).
// Istio (pilot/pkg/security/authz/model/model.go MigrateTrustDomain: values and notValues of every
// rule keyed source.trustDomain, which trustDomains, notTrustDomains and the condition all are;
// pilot/pkg/security/trustdomain/bundle.go ExpandTrustDomainAliases): a value equal to a domain of
// the bundle becomes the bundle; any other (`*`, a pattern, a foreign domain, and cluster.local when
// it is not in the bundle, unlike principals) is kept as written.
test('trustDomains, notTrustDomains and source.trustDomain naming the mesh\'s trust domain or an alias stand for every domain of the bundle; anything else (*, a pattern, cluster.local outside the bundle, a foreign domain) is kept as written', async () => {
  assert.deepEqual(expandTrustDomainList(['old-td', 'cluster.local', 'new-td'], ['new-td', 'old-td']), ['new-td', 'old-td', 'cluster.local']);
  assert.deepEqual(expandTrustDomainList(['*', 'foreign-td'], ['new-td', 'old-td']), ['*', 'foreign-td']);
  // A pattern matching a bundle domain is kept: replaced by the bundle, `old*` would no longer match old-eu.
  assert.deepEqual(expandTrustDomainList(['old*', '*-td'], ['new-td', 'old-td']), ['old*', '*-td']);
  assert.deepEqual(expandTrustDomainList(['cluster.local'], ['cluster.local', 'old-td']), ['cluster.local', 'old-td']);
  const allow = agentMesh(authz('shop', 'from-td', { ...onDb, action: 'ALLOW', rules: [{ from: [{ source: { trustDomains: ['old-td'] } }] }] }));
  assert.deepEqual(allow.model.policies.get('shop/from-td')!.rules[0]!.from[0]!.trustDomains, ['new-td', 'old-td']);
  assert.equal(allow.connect(NEW_CLIENT), 'allowed', 'the mesh\'s own domain, named by its alias');
  assert.equal(allow.connect(FOREIGN_CLIENT), 'denied by shop/from-td');
  assert.equal(await allow.policyDenials(), 1, 'counted');
  const deny = agentMesh(authz('shop', 'deny-unless-td', { ...onDb, action: 'DENY', rules: [{ from: [{ source: { notTrustDomains: ['cluster.local'] } }] }] }));
  assert.equal(deny.connect(OLD_CLIENT), 'denied by shop/deny-unless-td', 'cluster.local outside the bundle is that domain only (as Istio), not the bundle');
  assert.equal(deny.connect(FOREIGN_CLIENT), 'denied by shop/deny-unless-td');
  const denyNew = agentMesh(authz('shop', 'deny-unless-new', { ...onDb, action: 'DENY', rules: [{ from: [{ source: { notTrustDomains: ['new-td'] } }] }] }));
  assert.equal(denyNew.connect(OLD_CLIENT), 'allowed', 'the alias is not "another" domain');
  assert.equal(denyNew.connect(FOREIGN_CLIENT), 'denied by shop/deny-unless-new');
  const when = agentMesh(authz('shop', 'deny-when-td', { ...onDb, action: 'DENY', rules: [{ when: [{ key: 'source.trustDomain', values: ['new-td'] }] }] }));
  assert.equal(when.connect(OLD_CLIENT), 'denied by shop/deny-when-td', 'a DENY on the domain holds under its alias');
});

describe('a waypoint (L7) enforces the same expanded principals (Istio trust-domain migration)', () => {
  let b: Backend;
  let engine: WaypointEngine;
  const listeners: Listener[] = [];
  const from = async (principal: string): Promise<Listener> => { const l = await startTunnelListener(engine, '10.96.0.10:80', principal); listeners.push(l); return l; };

  before(async () => {
    b = await startHttpBackend(echo('reviews'));
    engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    const inputs = emptyInputs();
    const targets = { targetRefs: [{ group: '', kind: 'Service', name: 'reviews' }] };
    inputs.authorizationPolicies.push(
      authz('shop', 'allow-client', { ...targets, action: 'ALLOW', rules: [{ from: [{ source: { principals: ['old-td/ns/other/sa/client', 'new-td/ns/other/sa/ops'] } }], to: [{ operation: { methods: ['GET', 'POST'] } }] }] }),
      authz('shop', 'deny-ops-post', { ...targets, action: 'DENY', rules: [{ from: [{ source: { notPrincipals: ['old-td/ns/other/sa/client'] } }], to: [{ operation: { methods: ['POST'] } }] }] }),
    );
    const policies = [...compile(inputs, MIGRATED).model.policies.values()].map((p) => ({ ...p, targetServices: ['shop/reviews'] }));
    engine.applyConfig(config({ services: [service('reviews', '10.96.0.10', [endpoint(b.port)])], policies }));
  });

  after(async () => {
    for (const l of listeners) await l.close();
    await engine.close();
    await b.close();
  });

  /** RBAC refusals counted so far, of one source principal or all: each `it` reads them before and asserts its own, whatever ran first. */
  const rbacDenials = async (principal?: string): Promise<number> =>
    (await metricSamples(engine, 'istio_requests_total')).filter((s) => s.labels['response_code'] === '403' && s.labels['response_flags'] === 'RBAC' && (principal === undefined || s.labels['source_principal'] === principal)).reduce((n, s) => n + s.value, 0);

  it('admits new-td\'s client by the old-td principal, refuses a foreign trust domain\'s with a 403 naming the policy, counted RBAC', async () => {
    const [all, foreignBefore] = [await rbacDenials(), await rbacDenials(FOREIGN_CLIENT)];
    assert.equal((await request((await from(NEW_CLIENT)).port, { path: '/' })).status, 200);
    const foreign = await request((await from(FOREIGN_CLIENT)).port, { path: '/' });
    assert.equal(foreign.status, 403);
    assert.match(foreign.body, /shop\/allow-client/);
    assert.equal(await rbacDenials(FOREIGN_CLIENT) - foreignBefore, 1, 'the foreign caller counted once');
    assert.equal(await rbacDenials() - all, 1, 'and no other');
  });

  it('a DENY\'s notPrincipals under the alias: new-td\'s client may POST, old-td\'s ops may not', async () => {
    assert.equal((await request((await from(NEW_CLIENT)).port, { method: 'POST', path: '/', body: 'x' })).status, 200);
    const ops = await request((await from('spiffe://old-td/ns/other/sa/ops')).port, { method: 'POST', path: '/', body: 'x' });
    assert.equal(ops.status, 403, 'old-td ops: admitted by the ALLOW (new-td/ns/other/sa/ops under the alias), refused by the DENY');
    assert.match(ops.body, /shop\/deny-ops-post/);
  });
});

// The compiled-policy cache (CompileCache.policies) keeps an unchanged policy's object; the
// principals depend on the trust domains, and a cache belongs to one bundle (the controller's
// flags), so each bundle here is compiled with a cache of its own.
test('principals follow the trust domain and its aliases; with a compile cache (one per bundle, as the controller keeps) an unchanged bundle keeps its object', () => {
  const caches = new Map<string, CompileCache>();
  const inputs = emptyInputs();
  inputs.authorizationPolicies.push(authz('shop', 'from-client', { action: 'ALLOW', rules: [{ from: [{ source: { principals: ['old-td/ns/other/sa/client'] } }] }] }));
  const principals = (o: CompileOptions) => {
    const bundle = [o.trustDomain, ...(o.trustDomainAliases ?? [])].join();
    if (!caches.has(bundle)) caches.set(bundle, new CompileCache());
    const p = compile(inputs, { ...o, cache: caches.get(bundle)! }).model.policies.get('shop/from-client')!;
    return { p, principals: p.rules[0]!.from[0]!.principals };
  };
  const before = principals({ trustDomain: 'new-td' });
  assert.deepEqual(before.principals, ['old-td/ns/other/sa/client'], 'old-td is foreign without the alias');
  const migrated = principals(MIGRATED);
  assert.deepEqual(migrated.principals, ['new-td/ns/other/sa/client', 'old-td/ns/other/sa/client']);
  assert.equal(principals(MIGRATED).p, migrated.p, 'same bundle: the same object');
  assert.deepEqual(principals({ trustDomain: 'newer-td', trustDomainAliases: ['new-td', 'old-td'] }).principals, ['newer-td/ns/other/sa/client', 'new-td/ns/other/sa/client', 'old-td/ns/other/sa/client']);
  assert.deepEqual(principals({ trustDomain: 'new-td' }).principals, ['old-td/ns/other/sa/client'], 'the alias dropped: literal again');
});

// Istio sets no bound (each Envoy's RBAC filter holds every principal times the bundle); here the
// expansion is at most the bundle's size times what the tenant wrote, and the bundle is the
// operator's (--trust-domain, --trust-domain-alias), never a tenant's.
test('the expansion is bounded by the bundle: 1,000 principals under 3 aliases compile to 4,000, each once', () => {
  const inputs = emptyInputs();
  const many = Array.from({ length: 1000 }, (_, j) => `old-td/ns/x/sa/s${j}`);
  inputs.authorizationPolicies.push(authz('big', 'many', { action: 'DENY', rules: [{ from: [{ source: { principals: [...many, ...many] } }] }] }));
  const p = compile(inputs, { trustDomain: 'new-td', trustDomainAliases: ['old-td', 'a-td', 'b-td'] }).model.policies.get('big/many')!;
  assert.equal(p.rules[0]!.from[0]!.principals!.length, 4000);
});
