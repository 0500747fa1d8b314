// Kubernetes mode with Istio's security CRDs (security.istio.io): when the API server serves them,
// the controller watches them too, in the newest version served, and enforces their objects as
// weft.dev ones; without them it starts as it does without any optional CRD and picks them up once
// installed. Weft never writes status into an Istio object (istiod may own it): its findings and
// its refusal are Events naming the object's apiVersion. A weft.dev and a security.istio.io object of
// one name are two objects for Kubernetes and for Weft: both are enforced.
// https://istio.io/latest/docs/reference/config/security/authorization-policy/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Registry } from 'prom-client';
import { EventRecorder } from '../../controller/src/cluster/events.ts';
import { KubeSource, kubeConfigForServer } from '../../controller/src/sources/kube.ts';
import { DEFAULT_RESOURCES, FakeApiServer, ISTIO_SECURITY_RESOURCES } from '../../cli/local/kube/fake-apiserver.ts';
import { policySelectsWorkload, type AuthorizationPolicy } from '../../lib/model/mesh.ts';
import { CompiledPolicies, evaluate } from '../../lib/policy/authz.ts';
import { authz, ns, pod } from './controller-fixtures.ts';
import { captureLogger, startHarness, until, type Harness, type LogLine } from './controller-harness.ts';

const ISTIO = 'security.istio.io/v1';

async function withKube(resources: typeof DEFAULT_RESOURCES, fn: (api: FakeApiServer, h: Harness, source: KubeSource, registry: Registry) => Promise<void>): Promise<void> {
  const api = new FakeApiServer({ resources });
  await api.start();
  const kubeConfig = kubeConfigForServer(api.url);
  const source = new KubeSource({ kubeConfig, restartDelayMs: 20, absentKindRetryMs: 50 });
  const events = new EventRecorder({ kubeConfig, instance: 'weft-controller-0' });
  const registry = new Registry();
  let h: Harness | undefined;
  try {
    h = await startHarness(source, undefined, { registry, onFindings: (f) => events.record(f) });
    await fn(api, h, source, registry);
  } finally {
    await h?.close();
    await api.stop();
  }
}

const istioDeny = (name: string, namespaces: string[]) => ({ apiVersion: ISTIO, kind: 'AuthorizationPolicy', metadata: { name, namespace: 'foo' }, spec: { action: 'DENY', rules: [{ from: [{ source: { namespaces } }] }] } });

type Snapshot = { workloads: Array<{ name: string }>; policies: readonly AuthorizationPolicy[] };
const allowedFrom = (snapshot: Snapshot | undefined, callerNs: string) => {
  const w = snapshot?.workloads.find((x) => x.name === 'httpbin') as unknown as Parameters<typeof policySelectsWorkload>[1] | undefined;
  if (!snapshot || !w) return undefined;
  return evaluate(new CompiledPolicies(snapshot.policies.filter((p) => policySelectsWorkload(p, w))), { sourcePrincipal: `spiffe://cluster.local/ns/${callerNs}/sa/client`, destinationIp: '10.4.0.1', destinationPort: 80 }).allowed;
};

type Ev = { involvedObject?: { apiVersion?: string; kind?: string; name?: string; fieldPath?: string }; reason?: string; message?: string };
const eventsOn = (api: FakeApiServer, name: string) => (api.list('Event') as Ev[]).filter((e) => e.involvedObject?.name === name);

/** A fake API server serving Istio's CRDs whose security.istio.io group answers `status`, and a KubeSource reading it (its log kept). */
async function istioGroupAnswering(status: number): Promise<{ api: FakeApiServer; source: KubeSource; logs: LogLine[] }> {
  const api = new FakeApiServer({ resources: [...DEFAULT_RESOURCES, ...ISTIO_SECURITY_RESOURCES] });
  await api.start();
  api.failing.set('/apis/security.istio.io/', status);
  const logs: LogLine[] = [];
  const source = new KubeSource({ kubeConfig: kubeConfigForServer(api.url), restartDelayMs: 20, absentKindRetryMs: 50, logger: captureLogger(logs) });
  return { api, source, logs };
}

/** httpbin in the ambient namespace foo, a weft.dev DENY of namespace bar's callers and an Istio DENY of baz's. */
function httpbinWithTwoDenies(api: FakeApiServer): void {
  api.apply(ns('foo', { 'weft.dev/dataplane-mode': 'ambient' }));
  api.apply(pod('foo', 'httpbin', { ip: '10.4.0.1', labels: { app: 'httpbin' } }));
  api.apply(authz('foo', 'weft-deny', { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['bar'] } }] }] }));
  api.apply(istioDeny('httpbin', ['baz']));
}

test('with Istio\'s CRDs served, a security.istio.io/v1 AuthorizationPolicy is watched and enforced; no status is written into it; its refusal is an Event naming its apiVersion and field', () =>
  withKube([...DEFAULT_RESOURCES, ...ISTIO_SECURITY_RESOURCES], async (api, h, source) => {
    assert.deepEqual(source.absentResources(), []);
    api.apply(ns('foo', { 'weft.dev/dataplane-mode': 'ambient' }));
    api.apply(pod('foo', 'httpbin', { ip: '10.4.0.1', labels: { app: 'httpbin' } }));
    api.apply(istioDeny('httpbin', ['bar']));
    const a = h.agent('node-a');
    await until('the Istio DENY is enforced', () => allowedFrom(a.snapshot, 'bar') === false);
    assert.equal(allowedFrom(a.snapshot, 'baz'), true);

    // An invalid one: refused at its field, named in an Event on the Istio object, never in its status.
    api.apply({ ...istioDeny('bad', ['bar']), spec: { action: 'DENY', rules: [{ from: [{ source: { ipBlocks: ['10.0.0.0/99'] } }] }] } });
    await until('the refusal is an Event on the Istio object', () => eventsOn(api, 'bad').some((e) => e.reason === 'Invalid'));
    const ev = eventsOn(api, 'bad').find((e) => e.reason === 'Invalid')!;
    assert.equal(ev.involvedObject?.apiVersion, ISTIO);
    assert.equal(ev.involvedObject?.fieldPath, 'spec.rules[0].from[0].source.ipBlocks[0]');
    await h.controller.settled();
    assert.equal(api.get('AuthorizationPolicy', 'foo', 'httpbin', ISTIO)?.status, undefined, 'no Weft status in an Istio object');
    assert.equal(api.get('AuthorizationPolicy', 'foo', 'bad', ISTIO)?.status, undefined, 'no Weft status in an Istio object');
    assert.ok(!api.requests.some((r) => r.method === 'PATCH' && r.path.startsWith('/apis/security.istio.io/')), 'nothing patched in security.istio.io');

    // Deleted: no longer enforced.
    api.remove('AuthorizationPolicy', 'foo', 'httpbin', ISTIO);
    await until('the deleted Istio DENY no longer enforced', () => allowedFrom(a.snapshot, 'bar') === true);
  }));

// Kubernetes keeps authorizationpolicies.weft.dev foo/httpbin and authorizationpolicies.security.istio.io
// foo/httpbin apart, and Istio enforces both of two policies: a tenant who may create objects in one
// group cannot switch off the operator's DENY in the other by taking its name, first or later.
test('an operator\'s weft.dev DENY and a tenant\'s security.istio.io ALLOW of one name, created in either order: both are enforced (the DENY holds), nothing is refused, the weft.dev status is its own', async () => {
  const operatorDeny = () => authz('foo', 'httpbin', { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['bar'] } }] }] });
  const tenantAllow = () => ({ ...istioDeny('httpbin', ['bar']), spec: { action: 'ALLOW', rules: [{ from: [{ source: { namespaces: ['bar'] } }] }] } });
  for (const order of [[tenantAllow, operatorDeny], [operatorDeny, tenantAllow]]) {
    await withKube([...DEFAULT_RESOURCES, ...ISTIO_SECURITY_RESOURCES], async (api, h, _source, registry) => {
      api.apply(ns('foo', { 'weft.dev/dataplane-mode': 'ambient' }));
      api.apply(pod('foo', 'httpbin', { ip: '10.4.0.1', labels: { app: 'httpbin' } }));
      const a = h.agent('node-a');
      for (const make of order) api.apply(make());
      await until('both policies at the agent', () => (a.snapshot?.policies.length ?? 0) === 2);
      // The object of the kind's own group keeps namespace/name, the other is namespace/name@group (objects.ts nameIn).
      assert.deepEqual(a.snapshot!.policies.map((p) => `${p.namespace}/${p.name} ${p.action}`).sort(), ['foo/httpbin DENY', 'foo/httpbin@security.istio.io ALLOW']);
      assert.equal(allowedFrom(a.snapshot, 'bar'), false, 'the operator\'s DENY is enforced');
      const status = () => api.get('AuthorizationPolicy', 'foo', 'httpbin', 'weft.dev/v1alpha1')?.status as { conditions?: Array<{ status: string; reason: string }> } | undefined;
      await until('the weft.dev one accepted in its status', () => status()?.conditions?.[0]?.status === 'True');
      await h.controller.settled();
      const rejected = (await registry.getSingleMetric('weft_controller_rejected_objects_total')!.get()).values.find((v) => v.labels.kind === 'AuthorizationPolicy')?.value ?? 0;
      assert.equal(rejected, 0, 'nothing refused');
      assert.ok(!h.logs.some((l) => l.msg.startsWith('invalid object refused')));
      assert.equal(api.get('AuthorizationPolicy', 'foo', 'httpbin', ISTIO)?.status, undefined, 'no Weft status in an Istio object');
    });
  }
});

// A refusal is a new version's content refused, not the status we write on it coming back.
test('a refused weft.dev AuthorizationPolicy is counted and logged once, though its Invalid status written back is a new version (new resourceVersion and managedFields); a changed spec refused is counted again', () =>
  withKube([...DEFAULT_RESOURCES, ...ISTIO_SECURITY_RESOURCES], async (api, h, _source, registry) => {
    api.apply(ns('foo', { 'weft.dev/dataplane-mode': 'ambient' }));
    const bad = (cidr: string) => authz('foo', 'bad', { action: 'DENY', rules: [{ from: [{ source: { ipBlocks: [cidr] } }] }] });
    api.apply(bad('10.0.0.0/99'));
    const status = () => api.get('AuthorizationPolicy', 'foo', 'bad', 'weft.dev/v1alpha1')?.status as { conditions?: Array<{ status: string; reason: string; message: string }> } | undefined;
    await until('refused in its status', () => status()?.conditions?.[0]?.reason === 'Invalid');
    assert.match(status()!.conditions![0]!.message, /spec\.rules\[0\]\.from\[0\]\.source\.ipBlocks\[0\]/);
    // Our status write comes back as an update of the object (a new resourceVersion, and a
    // managedFields entry for the write through /status, as a real API server records), read by the store.
    assert.ok((api.get('AuthorizationPolicy', 'foo', 'bad', 'weft.dev/v1alpha1')?.metadata as { managedFields?: Array<{ subresource?: string }> }).managedFields?.some((m) => m.subresource === 'status'), 'the status write is recorded in managedFields');
    const seenBack = () => h.controller.store.resourceVersion === String(api.get('AuthorizationPolicy', 'foo', 'bad', 'weft.dev/v1alpha1')?.metadata?.resourceVersion);
    await until('the status write seen back', seenBack);
    await h.controller.settled();
    const rejected = async () => (await registry.getSingleMetric('weft_controller_rejected_objects_total')!.get()).values.find((v) => v.labels.kind === 'AuthorizationPolicy')?.value ?? 0;
    const logged = () => h.logs.filter((l) => l.msg.startsWith('invalid object refused') && String(l.fields.object).endsWith('/bad')).length;
    assert.equal(await rejected(), 1);
    assert.equal(logged(), 1);
    api.apply(bad('10.0.0.0/98'));
    await until('the new content refused and counted', async () => (await rejected()) === 2);
    await h.controller.settled();
    assert.equal(logged(), 2);
  }));

test('without Istio\'s CRDs the controller starts as without any optional CRD, and watches security.istio.io once the CRD is installed', () =>
  withKube(DEFAULT_RESOURCES, async (api, h, source) => {
    assert.deepEqual(source.absentResources().sort(), ['AuthorizationPolicy.security.istio.io', 'PeerAuthentication.security.istio.io', 'RequestAuthentication.security.istio.io']);
    assert.deepEqual(source.absentKinds(), [], 'weft.dev\'s own kinds are all served');
    api.apply(ns('foo', { 'weft.dev/dataplane-mode': 'ambient' }));
    api.apply(pod('foo', 'httpbin', { ip: '10.4.0.1', labels: { app: 'httpbin' } }));
    const a = h.agent('node-a');
    await until('the agent has the pod', () => allowedFrom(a.snapshot, 'bar') === true);
    api.apply({
      apiVersion: 'apiextensions.k8s.io/v1', kind: 'CustomResourceDefinition', metadata: { name: 'authorizationpolicies.security.istio.io' },
      spec: { group: 'security.istio.io', scope: 'Namespaced', names: { kind: 'AuthorizationPolicy', plural: 'authorizationpolicies' },
        versions: [{ name: 'v1', served: true, storage: true, subresources: { status: {} } }, { name: 'v1beta1', served: true, storage: false, subresources: { status: {} } }] },
    });
    await until('the Istio resource is watched', () => !source.absentResources().includes('AuthorizationPolicy.security.istio.io'));
    api.apply(istioDeny('httpbin', ['bar']));
    await until('the Istio DENY is enforced', () => allowedFrom(a.snapshot, 'bar') === false);
  }));

// An optional API group the controller may not read (403) must cost only its own objects: not the
// controller's start, its first snapshot and readiness, nor the watching of the other kinds; and it
// must be said (one warning, the attempts after it counted at debug level, health()), as RBAC, not as
// "CRD not installed".
test('security.istio.io answering 403: the controller starts and serves the weft.dev DENY without it, warns once (later attempts counted at debug) and says so in health(); the Istio DENY is enforced once it answers', { timeout: 30_000 }, async () => {
  const { api, source, logs } = await istioGroupAnswering(403);
  let h: Harness | undefined;
  try {
    httpbinWithTwoDenies(api);
    h = await startHarness(source);
    const a = h.agent('node-a');
    await until('the weft.dev DENY served', () => allowedFrom(a.snapshot, 'bar') === false);
    assert.equal(allowedFrom(a.snapshot, 'baz'), true, 'the Istio DENY is not read yet');
    const said = (level: string) => logs.filter((l) => l.level === level && /Istio security objects are not being read: RBAC/.test(l.msg) && l.fields.resource === 'AuthorizationPolicy.security.istio.io');
    await until('asked three times', () => said('debug').length >= 2);
    assert.deepEqual(said('warn').map((l) => l.fields.attempts), [1], 'warned once');
    assert.deepEqual(said('debug').slice(0, 2).map((l) => l.fields.attempts), [2, 3], 'later attempts counted at debug level');
    assert.ok(!logs.some((l) => /CRD not installed/.test(l.msg) && String(l.fields.resource).includes('security.istio.io')), 'not taken for an absent CRD');
    assert.match(source.health() ?? '', /^AuthorizationPolicy\.security\.istio\.io: Istio security objects are not being read: RBAC/);
    api.failing.clear();
    await until('the Istio DENY enforced once the group answers', () => allowedFrom(a.snapshot, 'baz') === false);
    assert.equal(source.health(), undefined);
  } finally {
    await h?.close();
    await api.stop();
  }
});

// A transient failure (5xx) of security.istio.io at start must not switch the operator's Istio DENYs
// off: a first snapshot without them would push every agent a config with the DENY gone (fail open,
// on a controller restart during an API-server blip). The start is held back as for any kind whose
// list fails, asked again on the restart backoff (the attempts counted, the failure named in health()
// and a warning); the first snapshot holds the Istio DENY.
// https://istio.io/latest/docs/concepts/security/#authorization-policies (DENY policies are evaluated before ALLOW)
test('security.istio.io answering 503 at start: no snapshot without the Istio DENY; the start waits, warns once, counts the attempts, and the first snapshot enforces both DENYs', { timeout: 30_000 }, async () => {
  const { api, source, logs } = await istioGroupAnswering(503);
  let h: Harness | undefined;
  try {
    httpbinWithTwoDenies(api);
    let done = false;
    const started = startHarness(source).then((x) => ((done = true), (h = x)));
    const said = (level: string) => logs.filter((l) => l.level === level && /Istio security objects are not being read/.test(l.msg) && l.fields.resource === 'AuthorizationPolicy.security.istio.io');
    await until('asked again three times', () => said('debug').length >= 2);
    // The failure's message carries the response's Date header (@kubernetes/client-node's
    // ApiException), so it differs once a second has passed: still the same failure, not warned again.
    const firstWarned = Date.now();
    await until('a second after the first warning', () => Date.now() - firstWarned > 1_100, 5_000);
    const askedBefore = said('debug').length + said('warn').length;
    await until('asked again after that second', () => said('debug').length + said('warn').length > askedBefore, 10_000);
    assert.equal(done, false, 'the start (and the first snapshot) waits for the Istio group');
    assert.deepEqual(said('warn').map((l) => l.fields.attempts), [1], 'warned once');
    assert.deepEqual(said('debug').slice(0, 2).map((l) => l.fields.attempts), [2, 3]);
    assert.match(source.health() ?? '', /^AuthorizationPolicy\.security\.istio\.io: Istio security objects are not being read yet: .*503|^AuthorizationPolicy\.security\.istio\.io: Istio security objects are not being read yet/);
    api.failing.clear();
    await started;
    const a = h!.agent('node-a');
    await until('the agent has its first config', () => allowedFrom(a.snapshot, 'bar') !== undefined);
    assert.equal(allowedFrom(a.snapshot, 'bar'), false, 'the weft.dev DENY');
    assert.equal(allowedFrom(a.snapshot, 'baz'), false, 'the Istio DENY, in the first config');
    assert.equal(source.health(), undefined);
  } finally {
    if (!h) await source.stop();
    await h?.close();
    await api.stop();
  }
});

// stop() while the absent resources are being asked about (a slow API server): the answer that
// comes after must start no informer, which nothing would stop.
test('stop() while security.istio.io is asked about again: its answer after stop() starts no informer', { timeout: 30_000 }, async () => {
  const api = new FakeApiServer({ resources: [...DEFAULT_RESOURCES, ...ISTIO_SECURITY_RESOURCES] });
  await api.start();
  api.failing.set('/apis/security.istio.io/', 403);
  const source = new KubeSource({ kubeConfig: kubeConfigForServer(api.url), restartDelayMs: 20, absentKindRetryMs: 20 });
  let release = () => {};
  try {
    await source.start(() => {});
    assert.equal(source.unanswered().length, 3);
    const asked = api.requests.length;
    api.stalled.set('/apis/security.istio.io/', new Promise<void>((resolve) => (release = resolve)));
    api.failing.clear();
    await until('asked again, the answer held', () => api.requests.slice(asked).some((r) => r.path.startsWith('/apis/security.istio.io/')));
    await source.stop();
    release();
    await until('answered', () => source.unanswered().length < 3);
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(Object.keys(source.restarts()).filter((k) => k.includes('security.istio.io')), [], 'no informer started after stop()');
  } finally {
    release();
    await source.stop();
    await api.stop();
  }
});
