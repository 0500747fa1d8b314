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
import { MemorySource } from '../../controller/src/sources/memory.ts';
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
      for (const key of ['AuthorizationPolicy/foo/httpbin', 'PeerAuthentication/foo/default', 'RequestAuthentication/foo/httpbin']) {
        await until(`${key} accepted`, () => source.statuses().get(key)?.ok === true);
      }
      // As in weft.dev, and as ztunnel reports it: an L7 rule at an agent never matches (ambient).
      await until('allow-read compiled', () => source.statuses().get('AuthorizationPolicy/foo/allow-read') !== undefined);
      assert.equal(source.statuses().get('AuthorizationPolicy/foo/allow-read')!.reason, 'UnsupportedValue');
      const denied = judge(a.snapshot!, 'bar');
      assert.equal(denied.allowed, false);
      assert.equal(denied.policy, 'foo/httpbin');
      assert.notEqual(judge(a.snapshot!, 'foo').policy, 'foo/httpbin', 'the DENY spares namespace foo');
      assert.equal(a.snapshot!.workloads.find((w) => w.name === 'httpbin')!.mode, 'STRICT');
      await until('the waypoint has the RequestAuthentication', () => wp.snapshot?.requestAuthentications?.some((r) => r.name === 'httpbin' && r.namespace === 'foo') === true);
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
// foo/httpbin apart. Weft reads one: the one held stays in force, the other is refused at
// metadata.name naming both apiVersions, counted, and taken once the held one is gone.
test('a weft.dev and a security.istio.io AuthorizationPolicy of one namespace and name: the second is refused at metadata.name naming both apiVersions and counted; the first keeps serving; deleting the first brings the second in', () =>
  withDir(async (dir, write) => {
    write('mesh.yaml', ...mesh());
    const weft = authz('foo', 'httpbin', { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['bar'] } }] }] });
    write('a-weft.yaml', weft);
    const source = new ConfigDirSource({ dir, debounceMs: 10 });
    const registry = new Registry();
    const h = await startHarness(source, undefined, { registry });
    const rejected = async () => (await registry.getSingleMetric('weft_controller_rejected_objects_total')!.get()).values.find((v) => v.labels.kind === 'AuthorizationPolicy')?.value ?? 0;
    try {
      const a = h.agent('node-a');
      await until('the weft.dev DENY in force', () => judge(a.snapshot ?? { workloads: [], policies: [] }, 'bar').allowed === false);
      // An Istio policy of the same name that would let bar in and deny baz instead.
      write('b-istio.yaml', { ...denyOthers, spec: { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['baz'] } }] }] } });
      await until('the collision is named', () => source.statuses().get('AuthorizationPolicy/foo/httpbin')?.ok === false);
      const st = source.statuses().get('AuthorizationPolicy/foo/httpbin')!;
      assert.equal(st.path, 'metadata.name');
      assert.match(st.message, /weft\.dev\/v1alpha1/);
      assert.match(st.message, /security\.istio\.io\/v1/);
      assert.equal(await rejected(), 1);
      assert.ok(h.logs.some((l) => l.msg.startsWith('invalid object refused') && l.fields.file === 'b-istio.yaml'));
      assert.equal(judge(a.snapshot!, 'bar').allowed, false, 'the weft.dev policy stays in force');
      assert.equal(judge(a.snapshot!, 'baz').allowed, true, 'the refused one is not');
      assert.equal(h.controller.store.get('AuthorizationPolicy/foo/httpbin')?.apiVersion, 'weft.dev/v1alpha1');

      unlinkSync(join(dir, 'a-weft.yaml'));
      await until('the Istio policy is taken once the weft.dev one is gone', () => judge(a.snapshot!, 'baz').allowed === false);
      assert.equal(judge(a.snapshot!, 'bar').allowed, true);
      await until('accepted again', () => source.statuses().get('AuthorizationPolicy/foo/httpbin')?.ok === true);
    } finally {
      await h.close();
    }
  }));

test('editing a policy\'s apiVersion from weft.dev to security.istio.io in place is no collision: the object is replaced, nothing refused', () =>
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
      assert.equal(source.statuses().get('AuthorizationPolicy/foo/httpbin')?.ok, true);
      assert.ok(!h.logs.some((l) => l.msg.startsWith('invalid object refused')));
    } finally {
      await h.close();
    }
  }));

test('one update batch holding both objects of a key (a snapshot) keeps the first and refuses the second; deleting the refused one clears the finding', async () => {
  const weft = authz('foo', 'httpbin', { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['bar'] } }] }] });
  const source = new MemorySource([...mesh(), weft, denyOthers]);
  const h = await startHarness(source);
  try {
    await until('the collision is named', () => source.statuses.get('AuthorizationPolicy/foo/httpbin')?.path === 'metadata.name');
    assert.equal(h.controller.store.get('AuthorizationPolicy/foo/httpbin')?.apiVersion, 'weft.dev/v1alpha1');
    h.controller.store.apply([{ type: 'delete', kind: 'AuthorizationPolicy', namespace: 'foo', name: 'httpbin', group: 'security.istio.io', resourceVersion: '99' }]);
    assert.equal(h.controller.store.invalid('AuthorizationPolicy/foo/httpbin'), undefined);
    assert.equal(h.controller.store.get('AuthorizationPolicy/foo/httpbin')?.apiVersion, 'weft.dev/v1alpha1', 'deleting the refused one leaves the held one');
  } finally {
    await h.close();
  }
});

// Which of the two holds must not depend on the order a controller lists the two API groups in:
// a restarted controller (or a new leader) would otherwise turn the policy in force around. As
// Gateway API resolves conflicts (the oldest creationTimestamp wins), the older object holds.
test('the older of a weft.dev and a security.istio.io object of one name holds, in whichever order they are listed (a restart does not turn the policy in force around)', () => {
  const older = { ...denyOthers, metadata: { ...denyOthers.metadata, creationTimestamp: '2026-01-01T00:00:00Z' } };
  const newer = authz('foo', 'httpbin', { action: 'DENY', rules: [{}] });
  (newer.metadata as { creationTimestamp?: string }).creationTimestamp = '2026-01-01T00:00:05Z';
  for (const order of [[newer, older], [older, newer]]) {
    const store = new ObjectStore();
    const r = store.apply([{ type: 'snapshot', kinds: ['AuthorizationPolicy'], objects: order as unknown as RawObject[], resourceVersion: '1' }]);
    assert.equal(store.get('AuthorizationPolicy/foo/httpbin')?.apiVersion, V1, `listed ${order.map((o) => o.apiVersion).join(', ')}`);
    assert.deepEqual(r.rejections.map((x) => x.issues[0]!.path), ['metadata.name']);
    assert.match(store.invalid('AuthorizationPolicy/foo/httpbin')!.issues[0]!.message, /weft\.dev\/v1alpha1/);
    assert.equal(store.invalid('AuthorizationPolicy/foo/httpbin')!.apiVersion, 'weft.dev/v1alpha1', 'the refused one is the newer');
  }
});

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
