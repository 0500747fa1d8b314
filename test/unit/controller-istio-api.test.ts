// Manifests written for Istio, in Istio's security API group (security.istio.io v1 and v1beta1), are
// read as Weft's own AuthorizationPolicy, PeerAuthentication and RequestAuthentication: the same
// validation (a field Weft does not support is refused at its field), the same compile, the same
// enforcement. Kubernetes keeps a weft.dev and a security.istio.io object of one name as two
// objects: Weft, which reads one per kind, namespace and name, refuses the second rather than let
// one silently replace the other.
// The samples are Istio's own, from its references:
// https://istio.io/latest/docs/reference/config/security/authorization-policy/
// https://istio.io/latest/docs/reference/config/security/peer_authentication/
// https://istio.io/latest/docs/reference/config/security/request_authentication/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { stringify } from 'yaml';
import { ConfigDirSource } from '../../controller/src/sources/files.ts';
import type { RawObject } from '../../controller/src/sources/source.ts';
import { ObjectStore } from '../../controller/src/store.ts';
import { compile, emptyInputs } from '../../controller/src/compile.ts';
import type { AuthorizationPolicy } from '../../lib/model/objects.ts';
import { policySelectsWorkload, type AuthorizationPolicy as ModelPolicy } from '../../lib/model/mesh.ts';
import { validateObject } from '../../lib/model/validate.ts';
import { CompiledPolicies, evaluate } from '../../lib/policy/authz.ts';
import { authz, ns, pod, svc, waypoint } from './controller-fixtures.ts';
import { startHarness, until } from './controller-harness.ts';
import { jwksOf, testKey } from './jwt-fixtures.ts';

const JWKS = jwksOf(testKey('ec256', 'k1'));
const V1 = 'security.istio.io/v1';
const V1BETA1 = 'security.istio.io/v1beta1';

async function withDir(fn: (dir: string, write: (file: string, ...objects: unknown[]) => void) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'weft-istio-api-'));
  try {
    await fn(dir, (file, ...objects) => writeFileSync(join(dir, file), objects.map((o) => stringify(o)).join('---\n')));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const mesh = () => [
  ns('foo', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'waypoint' }),
  waypoint('foo', 'waypoint'),
  pod('foo', 'httpbin', { ip: '10.4.0.1', labels: { app: 'httpbin' } }),
  svc('foo', 'httpbin', { app: 'httpbin' }, '10.96.0.20'),
];

// AuthorizationPolicy reference: "denies requests from all namespaces other than foo" (DENY,
// notNamespaces), and the v1beta1 "allow-read" of its selector section.
const denyOthers = { apiVersion: V1, kind: 'AuthorizationPolicy', metadata: { name: 'httpbin', namespace: 'foo' }, spec: { action: 'DENY', rules: [{ from: [{ source: { notNamespaces: ['foo'] } }] }] } };
const allowRead = { apiVersion: V1BETA1, kind: 'AuthorizationPolicy', metadata: { name: 'allow-read', namespace: 'foo' }, spec: { selector: { matchLabels: { app: 'httpbin' } }, action: 'ALLOW', rules: [{ to: [{ operation: { methods: ['GET', 'HEAD'] } }] }] } };
// PeerAuthentication reference: "policy to allow mTLS traffic for all workloads under namespace foo".
const strict = { apiVersion: V1, kind: 'PeerAuthentication', metadata: { name: 'default', namespace: 'foo' }, spec: { mtls: { mode: 'STRICT' } } };
// RequestAuthentication reference, attached by targetRefs (Weft has no sidecars: spec.selector is refused).
const jwt = { apiVersion: V1, kind: 'RequestAuthentication', metadata: { name: 'httpbin', namespace: 'foo' }, spec: { targetRefs: [{ group: '', kind: 'Service', name: 'httpbin' }], jwtRules: [{ issuer: 'issuer-foo', jwks: JWKS }] } };

/** The controller over config directory `dir`, and the AuthorizationPolicies it has refused so far (weft_controller_rejected_objects_total). */
async function watchedDir(dir: string) {
  const source = new ConfigDirSource({ dir, debounceMs: 10 });
  const registry = new Registry();
  const h = await startHarness(source, undefined, { registry });
  const rejected = async () => (await registry.getSingleMetric('weft_controller_rejected_objects_total')!.get()).values.find((v) => v.labels.kind === 'AuthorizationPolicy')?.value ?? 0;
  return { source, h, rejected };
}

const judge = (snapshot: { workloads: Array<{ name: string }>; policies: readonly ModelPolicy[] }, callerNs: string) => {
  const w = snapshot.workloads.find((x) => x.name === 'httpbin') as unknown as Parameters<typeof policySelectsWorkload>[1];
  return evaluate(new CompiledPolicies(snapshot.policies.filter((p) => policySelectsWorkload(p, w))), { sourcePrincipal: `spiffe://cluster.local/ns/${callerNs}/sa/client`, destinationIp: '10.4.0.1', destinationPort: 80 });
};

test('Istio\'s reference samples in security.istio.io/v1 and v1beta1 from a config directory are accepted and enforced: the DENY at the agent, STRICT mTLS, the RequestAuthentication at the waypoint', () =>
  withDir(async (dir, write) => {
    write('mesh.yaml', ...mesh());
    write('istio.yaml', denyOthers, allowRead, strict, jwt);
    const source = new ConfigDirSource({ dir, debounceMs: 10 });
    const h = await startHarness(source);
    try {
      const a = h.agent('node-a');
      const wp = h.waypoint('foo');
      await until('the agent has the Istio policies', () => (a.snapshot?.policies.length ?? 0) >= 2);
      // An object of Istio's group is named name@security.istio.io (objects.ts nameIn).
      for (const key of ['AuthorizationPolicy/foo/httpbin@security.istio.io', 'PeerAuthentication/foo/default@security.istio.io', 'RequestAuthentication/foo/httpbin@security.istio.io']) {
        await until(`${key} accepted`, () => source.statuses().get(key)?.ok === true);
      }
      // As in weft.dev, and as ztunnel reports it: an L7 rule at an agent never matches (ambient).
      await until('allow-read compiled', () => source.statuses().get('AuthorizationPolicy/foo/allow-read@security.istio.io') !== undefined);
      assert.equal(source.statuses().get('AuthorizationPolicy/foo/allow-read@security.istio.io')!.reason, 'UnsupportedValue');
      const denied = judge(a.snapshot!, 'bar');
      assert.equal(denied.allowed, false);
      assert.equal(denied.policy, 'foo/httpbin@security.istio.io');
      assert.notEqual(judge(a.snapshot!, 'foo').policy, 'foo/httpbin@security.istio.io', 'the DENY spares namespace foo');
      assert.equal(a.snapshot!.workloads.find((w) => w.name === 'httpbin')!.mode, 'STRICT');
      await until('the waypoint has the RequestAuthentication', () => wp.snapshot?.requestAuthentications?.some((r) => r.name === 'httpbin@security.istio.io' && r.namespace === 'foo') === true);
    } finally {
      await h.close();
    }
  }));

test('a field Istio has and Weft does not support is refused at its field in security.istio.io/v1 as in weft.dev (RequestAuthentication spec.selector)', () => {
  const withSelector = { ...jwt, spec: { ...jwt.spec, targetRefs: undefined, selector: { matchLabels: { app: 'httpbin' } } } };
  delete (withSelector.spec as { targetRefs?: unknown }).targetRefs;
  const paths = (o: object) => validateObject(o).map((i) => i.path);
  assert.deepEqual(paths(withSelector), ['spec.selector']);
  assert.deepEqual(paths({ ...withSelector, apiVersion: 'weft.dev/v1alpha1' }), ['spec.selector']);
  assert.deepEqual(paths({ ...denyOthers, spec: { ...denyOthers.spec, unknownField: true } }), ['spec.unknownField']);
  assert.deepEqual(paths({ ...denyOthers, apiVersion: 'security.istio.io/v2' }), ['apiVersion']);
  assert.deepEqual(paths({ ...denyOthers, apiVersion: 'networking.istio.io/v1' }), ['apiVersion']);
});

// Kubernetes keeps authorizationpolicies.weft.dev foo/httpbin and authorizationpolicies.security.istio.io
// foo/httpbin as two objects, and Istio enforces two policies of different names both
// (https://istio.io/latest/docs/concepts/security/#implicit-enablement: DENY policies are evaluated
// first, any match denies). So does Weft: whoever creates objects in one group cannot switch off a
// policy of the other by taking its name first (or again after a GitOps delete-and-recreate). The
// object of the kind's own group keeps the id namespace/name, the other is namespace/name@group.
const operatorDeny = () => ({ ...authz('foo', 'httpbin', { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['bar'] } }] }] }), metadata: { name: 'httpbin', namespace: 'foo', creationTimestamp: '2026-01-01T00:00:05Z' } });
const tenantAllow = () => ({ ...denyOthers, metadata: { ...denyOthers.metadata, creationTimestamp: '2026-01-01T00:00:00Z' }, spec: { action: 'ALLOW', rules: [{ from: [{ source: { namespaces: ['bar'] } }] }] } });

test('an operator\'s weft.dev DENY and a tenant\'s older security.istio.io ALLOW of one name are both enforced, whichever is read first, listed or updated, and after a restart (listing reversed): the DENY holds, nothing is refused', () => {
  const deny = operatorDeny() as unknown as RawObject;
  const allow = tenantAllow() as unknown as RawObject;
  const agent = (store: ObjectStore) => {
    const { model } = compile(store.inputs());
    assert.equal(model.policies.get('foo/httpbin')?.action, 'DENY');
    assert.equal(model.policies.get('foo/httpbin@security.istio.io')?.action, 'ALLOW');
    return [...model.policies.values()];
  };
  const w = { name: 'httpbin', namespace: 'foo', labels: { app: 'httpbin' } } as unknown as Parameters<typeof policySelectsWorkload>[1];
  const fromBar = (policies: ModelPolicy[]) => evaluate(new CompiledPolicies(policies.filter((p) => policySelectsWorkload(p, w))), { sourcePrincipal: 'spiffe://cluster.local/ns/bar/sa/client', destinationIp: '10.4.0.1', destinationPort: 80 });
  for (const order of [[deny, allow], [allow, deny]]) {
    const listed = `${order.map((o) => o.apiVersion).join(', ')}`;
    // A snapshot (a start, a new leader, a relist) and the reverse one after a restart.
    for (const objects of [order, [...order].reverse()]) {
      const store = new ObjectStore();
      const r = store.apply([{ type: 'snapshot', kinds: ['AuthorizationPolicy'], objects, resourceVersion: '1' }]);
      assert.deepEqual(r.rejections, [], listed);
      assert.equal(store.get('AuthorizationPolicy/foo/httpbin')?.apiVersion, 'weft.dev/v1alpha1');
      assert.equal(store.get('AuthorizationPolicy/foo/httpbin@security.istio.io')?.apiVersion, V1);
      const denied = fromBar(agent(store));
      assert.equal(denied.allowed, false, listed);
      assert.equal(denied.policy, 'foo/httpbin');
    }
    // One update after the other (the tenant's arrives before the operator applies, or after).
    const store = new ObjectStore();
    let rejected = 0;
    for (const [n, o] of order.entries()) rejected += store.apply([{ type: 'upsert', object: o, resourceVersion: String(n + 2) }]).rejections.length;
    assert.equal(rejected, 0, listed);
    assert.equal(fromBar(agent(store)).allowed, false, listed);
    // Each is deleted from its own group only.
    store.apply([{ type: 'delete', kind: 'AuthorizationPolicy', namespace: 'foo', name: 'httpbin', group: 'security.istio.io', resourceVersion: '9' }]);
    assert.equal(store.get('AuthorizationPolicy/foo/httpbin')?.apiVersion, 'weft.dev/v1alpha1', 'deleting the Istio one leaves the weft.dev one');
    assert.equal(store.get('AuthorizationPolicy/foo/httpbin@security.istio.io'), undefined);
  }
});

test('a weft.dev DENY and a security.istio.io ALLOW of one name from a config directory: both accepted, each with its own status naming its apiVersion, the DENY enforced; deleting one leaves the other in force', () =>
  withDir(async (dir, write) => {
    write('mesh.yaml', ...mesh());
    write('a-weft.yaml', operatorDeny());
    write('b-istio.yaml', tenantAllow());
    const { source, h, rejected } = await watchedDir(dir);
    try {
      const a = h.agent('node-a');
      await until('both policies at the agent', () => (a.snapshot?.policies.length ?? 0) >= 2);
      await until('both accepted', () => source.statuses().get('AuthorizationPolicy/foo/httpbin')?.ok === true && source.statuses().get('AuthorizationPolicy/foo/httpbin@security.istio.io')?.ok === true);
      assert.equal(source.statuses().get('AuthorizationPolicy/foo/httpbin')!.apiVersion, undefined);
      assert.equal(source.statuses().get('AuthorizationPolicy/foo/httpbin@security.istio.io')!.apiVersion, V1);
      const denied = judge(a.snapshot!, 'bar');
      assert.equal(denied.allowed, false, 'the operator\'s DENY is enforced beside the tenant\'s ALLOW');
      assert.equal(denied.policy, 'foo/httpbin');
      assert.equal(await rejected(), 0);
      assert.ok(!h.logs.some((l) => l.msg.startsWith('invalid object refused')));

      unlinkSync(join(dir, 'a-weft.yaml'));
      await until('the Istio ALLOW alone in force', () => judge(a.snapshot!, 'bar').allowed && judge(a.snapshot!, 'bar').policy === 'foo/httpbin@security.istio.io');
      assert.equal(source.statuses().get('AuthorizationPolicy/foo/httpbin@security.istio.io')?.ok, true);
    } finally {
      await h.close();
    }
  }));

// An object is keyed before it is validated (a config directory tracks it by file): an invalid one
// must not take a valid one's key. A weft.dev policy named `httpbin@security.istio.io` (no
// Kubernetes name holds '@') and one in a group AuthorizationPolicy is not accepted in
// (networking.istio.io) are refused under keys of their own: the Istio DENY `httpbin` and the
// weft.dev DENY `weftdeny` stay accepted and in force, each refusal counted once and named at its field.
// https://kubernetes.io/docs/concepts/overview/working-with-objects/names/#dns-subdomain-names
test('a weft.dev policy named httpbin@security.istio.io and one of another group named as a weft.dev DENY are refused under their own keys: the Istio and weft.dev DENYs stay in force, each refusal counted and named', () =>
  withDir(async (dir, write) => {
    write('mesh.yaml', ...mesh());
    write('a-impostor.yaml', authz('foo', 'httpbin@security.istio.io', { action: 'ALLOW', rules: [{ from: [{ source: { namespaces: ['bar'] } }] }] }));
    write('a-other-group.yaml', { ...authz('foo', 'weftdeny', { action: 'ALLOW', rules: [{}] }), apiVersion: 'networking.istio.io/v1' });
    write('b-istio.yaml', denyOthers);
    write('b-weft.yaml', authz('foo', 'weftdeny', { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['foo'] } }] }] }));
    const { source, h, rejected } = await watchedDir(dir);
    try {
      const a = h.agent('node-a');
      await until('both DENYs at the agent', () => a.snapshot !== undefined && judge(a.snapshot, 'bar').policy === 'foo/httpbin@security.istio.io' && judge(a.snapshot, 'foo').policy === 'foo/weftdeny');
      assert.equal(judge(a.snapshot!, 'bar').allowed, false, 'the Istio DENY');
      assert.equal(judge(a.snapshot!, 'foo').allowed, false, 'the weft.dev DENY (the Istio one spares foo)');
      await until('the refusals in their own statuses', () => source.statuses().get('AuthorizationPolicy/foo/httpbin@security.istio.io@weft.dev')?.reason === 'Invalid' && source.statuses().get('AuthorizationPolicy/foo/weftdeny@networking.istio.io')?.reason === 'Invalid');
      assert.equal(source.statuses().get('AuthorizationPolicy/foo/httpbin@security.istio.io@weft.dev')!.path, 'metadata.name');
      assert.equal(source.statuses().get('AuthorizationPolicy/foo/weftdeny@networking.istio.io')!.path, 'apiVersion');
      assert.equal(source.statuses().get('AuthorizationPolicy/foo/httpbin@security.istio.io')?.ok, true, 'the Istio DENY\'s status is its own');
      assert.equal(source.statuses().get('AuthorizationPolicy/foo/weftdeny')?.ok, true, 'the weft.dev DENY\'s status is its own');
      await h.controller.settled();
      assert.equal(await rejected(), 2);
      const refused = h.logs.filter((l) => l.msg.startsWith('invalid object refused'));
      assert.equal(refused.length, 2, JSON.stringify(refused));
    } finally {
      await h.close();
    }
  }));

test('editing a policy\'s apiVersion from weft.dev to security.istio.io in place replaces the object, nothing refused', () =>
  withDir(async (dir, write) => {
    write('mesh.yaml', ...mesh());
    write('policy.yaml', authz('foo', 'httpbin', { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['bar'] } }] }] }));
    const source = new ConfigDirSource({ dir, debounceMs: 10 });
    const h = await startHarness(source);
    try {
      const a = h.agent('node-a');
      await until('the weft.dev DENY in force', () => judge(a.snapshot ?? { workloads: [], policies: [] }, 'bar').allowed === false);
      write('policy.yaml', { ...denyOthers, spec: { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['baz'] } }] }] } });
      await until('the Istio one replaced it', () => judge(a.snapshot!, 'baz').allowed === false && judge(a.snapshot!, 'bar').allowed);
      await until('the Istio one accepted', () => source.statuses().get('AuthorizationPolicy/foo/httpbin@security.istio.io')?.ok === true);
      assert.ok(!h.logs.some((l) => l.msg.startsWith('invalid object refused')));
    } finally {
      await h.close();
    }
  }));

// Istio applies a policy without selector or targetRefs in its root namespace (istio-system by
// default, meshConfig.rootNamespace) to the whole mesh:
// https://istio.io/latest/docs/reference/config/security/authorization-policy/ ("root namespace").
// Weft's root namespace is its own (--root-namespace, default weft-system): a platform's
// mesh-wide Istio policy in istio-system would apply to istio-system alone, so Weft says so.
test('a security.istio.io policy in istio-system while Weft\'s root namespace is another is named NotRootNamespace at metadata.namespace; with --root-namespace istio-system it is mesh-wide', () => {
  const meshDeny = { ...denyOthers, metadata: { name: 'deny-others', namespace: 'istio-system' } };
  const inputs = emptyInputs();
  inputs.authorizationPolicies.push(meshDeny as unknown as AuthorizationPolicy, { ...meshDeny, apiVersion: 'weft.dev/v1alpha1', metadata: { name: 'weft-own', namespace: 'istio-system' } } as unknown as AuthorizationPolicy);
  const found = compile(inputs).findings.filter((f) => f.reason === 'NotRootNamespace');
  assert.deepEqual(found.map((f) => `${f.name} ${f.path}`), ['deny-others metadata.namespace']);
  assert.match(found[0]!.message, /weft-system \(--root-namespace\)/);
  const root = compile(inputs, { rootNamespace: 'istio-system' });
  assert.deepEqual(root.findings.filter((f) => f.reason === 'NotRootNamespace'), []);
  assert.equal(root.model.policies.get('istio-system/deny-others')?.scope, 'mesh');
});
