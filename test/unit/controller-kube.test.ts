import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KubeSource, kubeConfigForServer, normalize } from '../../controller/src/sources/kube.ts';
import { validateObject } from '../../lib/model/validate.ts';
import { FakeApiServer } from '../../cli/local/kube/fake-apiserver.ts';
import { authz, ns, pod, svc } from './controller-fixtures.ts';
import { startHarness, until, type Harness } from './controller-harness.ts';
import { holds } from '../lab/wait.ts';
import { isDeepStrictEqual } from 'node:util';

async function withKube(fn: (api: FakeApiServer, h: Harness, source: KubeSource) => Promise<void>, opts: { goneAsHttpStatus?: boolean } = {}): Promise<void> {
  const api = new FakeApiServer(opts);
  await api.start();
  const source = new KubeSource({ kubeConfig: kubeConfigForServer(api.url), restartDelayMs: 20 });
  let h: Harness | undefined;
  try {
    h = await startHarness(source);
    await fn(api, h, source);
  } finally {
    await h?.close();
    await api.stop();
  }
}

const names = (ws: Array<{ name: string }>) => ws.map((w) => w.name).sort().join();
/** What an agent holds: its node's enrolled pods, other nodes' enrolled pods, its node's plain pods. */
const held = (ws: Array<{ name: string; node: string; enrolled: boolean }>, node: string) => [
  names(ws.filter((w) => w.enrolled && w.node === node)),
  names(ws.filter((w) => w.enrolled && w.node !== node)),
  names(ws.filter((w) => !w.enrolled)),
].join('|');

test('labelling a namespace through the API enrols its pods; unlabelling removes them; none stays out', () =>
  withKube(async (api, h) => {
    api.apply(ns('shop'));
    api.apply(pod('shop', 'web', { node: 'node-a' }));
    api.apply(pod('shop', 'api', { node: 'node-b' }));
    api.apply(pod('shop', 'legacy', { node: 'node-a', labels: { app: 'legacy', 'weft.dev/dataplane-mode': 'none' } }));
    const a = h.agent('node-a');
    const b = h.agent('node-b');
    await until('pods seen by the controller', () => h.controller.store.objects('Pod').length === 3);
    await a.ready();
    // Not enrolled: each agent holds only its own node's pods (the CNI plugin asks about them).
    await until('node-a holds its plain pods only', () => held(a.snapshot!.workloads, 'node-a') === '||legacy,web');

    api.apply(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
    await until('node-a agent enrols web only', () => held(a.snapshot!.workloads, 'node-a') === 'web|api|legacy');
    await until('node-b agent enrols api only', () => held(b.snapshot!.workloads, 'node-b') === 'api|web|');

    api.apply(ns('shop'));
    await until('unlabelled: node-a enrols nothing', () => held(a.snapshot!.workloads, 'node-a') === '||legacy,web');
    await until('unlabelled: node-b enrols nothing', () => held(b.snapshot!.workloads, 'node-b') === '||api');
  }));

test('an invalid AuthorizationPolicy gets Accepted=False Invalid with the field path in its status, and the old one keeps serving', () =>
  withKube(async (api, h) => {
    api.apply(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
    api.apply(pod('shop', 'web'));
    api.apply(authz('shop', 'p', { selector: { matchLabels: { app: 'web' } }, rules: [{ to: [{ operation: { ports: ['8080'] } }] }] }));
    const a = h.agent('node-a');
    await until('policy delivered', () => a.snapshot?.policies.length === 1);
    await until('status Accepted', () => api.get('AuthorizationPolicy', 'shop', 'p')?.status !== undefined);
    const accepted = api.get('AuthorizationPolicy', 'shop', 'p')!.status as { conditions: Array<{ type: string; status: string; reason: string }> };
    assert.deepEqual([accepted.conditions[0]!.type, accepted.conditions[0]!.status, accepted.conditions[0]!.reason], ['Accepted', 'True', 'Accepted']);
    assert.ok(api.requests.some((r) => r.method === 'PATCH' && r.path.endsWith('/authorizationpolicies/p/status')), 'status written through the status subresource');

    const before = structuredClone(a.snapshot);
    const version = a.version;
    api.apply(authz('shop', 'p', { selector: { matchLabels: { app: 'web' } }, rules: [{ to: [{ operation: { ports: ['8080', '99999'] } }] }] }));
    await until('status Invalid', () => (api.get('AuthorizationPolicy', 'shop', 'p')?.status as { conditions?: Array<{ reason: string }> })?.conditions?.[0]?.reason === 'Invalid');
    const st = api.get('AuthorizationPolicy', 'shop', 'p')!.status as { conditions: Array<{ status: string; message: string; observedGeneration: number }> };
    assert.equal(st.conditions[0]!.status, 'False');
    assert.match(st.conditions[0]!.message, /AuthorizationPolicy shop\/p: spec\.rules\[0\]\.to\[0\]\.operation\.ports\[1\]: 99999 is above the maximum 65535/);
    assert.equal(st.conditions[0]!.observedGeneration, 2);
    // Nothing new may reach the agent: a window, the test's stated timing dependency.
    await holds('the agent keeps the config it had', () => isDeepStrictEqual(a.snapshot, before) && a.version === version, 300);
    assert.deepEqual(h.controller.model!.policies.get('shop/p')!.rules[0]!.to, [{ ports: [8080] }]);
  }));

for (const goneAsHttpStatus of [false, true]) {
  test(`an informer whose watch expires (410 Gone ${goneAsHttpStatus ? 'as HTTP status' : 'as watch event'}) relists and the agent converges`, () =>
    withKube(async (api, h) => {
      api.apply(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
      api.apply(pod('shop', 'web'));
      api.apply(pod('shop', 'gone-soon'));
      const a = h.agent('node-a');
      await until('initial', () => names(a.snapshot?.workloads ?? []) === 'gone-soon,web');
      await until('watches open', () => api.watchers('Pod') === 1);
      // Changes while the watch is down, then history compacted: the informer must relist.
      api.closeWatches();
      api.remove('Pod', 'shop', 'gone-soon');
      api.apply(pod('shop', 'new-one'));
      api.compact();
      await until('agent converged after relist', () => names(a.snapshot!.workloads) === 'new-one,web', 8000);
      const podLists = api.requests.filter((r) => r.method === 'GET' && r.path === '/api/v1/pods');
      assert.equal(podLists.length, 2, 'the pod informer listed again after 410 Gone');
    }, { goneAsHttpStatus }));
}

test('an informer whose connection is reset restarts and the agent converges', () =>
  withKube(async (api, h, source) => {
    api.apply(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
    api.apply(pod('shop', 'web'));
    const a = h.agent('node-a');
    await until('initial', () => names(a.snapshot?.workloads ?? []) === 'web');
    await until('watches open', () => api.watchers('Pod') === 1);
    api.dropConnections();
    api.apply(pod('shop', 'after-reset'));
    await until('agent converged after reset', () => names(a.snapshot!.workloads) === 'after-reset,web', 8000);
    assert.ok(Object.values(source.restarts()).some((n) => n > 0), 'some informer was restarted');
  }));

test('services get endpoints from EndpointSlices in Kubernetes mode', () =>
  withKube(async (api, h) => {
    api.apply(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
    const p = api.apply(pod('shop', 'web', { ip: '10.1.7.7' }));
    api.apply(svc('shop', 'web'));
    api.apply({
      apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', addressType: 'IPv4',
      metadata: { name: 'web-1', namespace: 'shop', labels: { 'kubernetes.io/service-name': 'web' } },
      endpoints: [{ addresses: ['10.1.7.7'], nodeName: 'node-a', conditions: { ready: true }, targetRef: { kind: 'Pod', name: 'web', namespace: 'shop', uid: p.metadata.uid } }],
      ports: [{ name: 'http', port: 8443 }],
    });
    const a = h.agent('node-a');
    await until('endpoint from slice', () => a.snapshot?.services[0]?.endpoints[0]?.port === 8443);
    assert.equal(a.snapshot!.services[0]!.endpoints[0]!.workloadUid, p.metadata.uid);
  }));

// Gateway API route status (GEP-1426 for Service parents): one status.parents entry per Service
// parentRef under controllerName weft.dev/controller with Accepted and ResolvedRefs; a Gateway
// parent and another controller's entry are left as they are.
test('an HTTPRoute gets per-parent status for its Service parents only, keeping other controllers\' entries', () =>
  withKube(async (api) => {
    api.apply(svc('shop', 'web'));
    const ingress = { group: 'gateway.networking.k8s.io', kind: 'Gateway', name: 'public', namespace: 'edge' };
    const route = (parent: string, backendNs?: string) => ({
      apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'r', namespace: 'shop' },
      spec: {
        parentRefs: [ingress, { group: '', kind: 'Service', name: parent, port: 80 }],
        rules: [{ matches: [{ path: { type: 'PathPrefix', value: '/api' } }], backendRefs: [{ name: 'web', port: 80, ...(backendNs ? { namespace: backendNs } : {}) }] }],
      },
    });
    type Cond = { type: string; status: string; reason: string; message: string };
    type RouteStatus = { parents?: Array<{ controllerName: string; parentRef: { name: string; kind?: string }; conditions: Cond[] }> };
    const ours = () => ((api.get('HTTPRoute', 'shop', 'r')?.status as RouteStatus | undefined)?.parents ?? []).filter((p) => p.controllerName === 'weft.dev/controller');
    const cond = (type: string) => ours()[0]?.conditions.find((c) => c.type === type);
    const obj = api.apply(route('web'));
    // An ingress controller already wrote its entry for the Gateway parent.
    const theirs = { parentRef: ingress, controllerName: 'example.com/ingress', conditions: [{ type: 'Accepted', status: 'True', reason: 'Accepted', message: 'ok', lastTransitionTime: '2026-01-01T00:00:00Z' }] };
    api.apply({ ...obj, status: { parents: [theirs] } });

    // A Service without a waypoint: valid, but nothing enforces the route.
    await until('route reported as not enforced', () => cond('Accepted')?.reason === 'NoWaypoint');
    assert.equal(cond('Accepted')!.status, 'False');
    assert.equal(cond('ResolvedRefs')!.status, 'True');
    let st = api.get('HTTPRoute', 'shop', 'r')!.status as RouteStatus;
    assert.equal(ours().length, 1, 'no entry for the Gateway parent');
    assert.equal(ours()[0]!.parentRef.name, 'web');
    assert.deepEqual(st.parents!.find((p) => p.controllerName === 'example.com/ingress'), theirs, 'the ingress controller\'s entry is kept');

    api.apply({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'shop' }, spec: {} });
    api.apply({ ...svc('shop', 'web'), metadata: { name: 'web', namespace: 'shop', labels: { 'weft.dev/use-waypoint': 'wp' } } });
    await until('route accepted', () => cond('Accepted')?.status === 'True');
    assert.match(cond('Accepted')!.message, /producer route/);

    // (Test control: apply replaces status too, so carry it over as a spec update would.)
    const update = (o: object) => api.apply({ ...o, status: api.get('HTTPRoute', 'shop', 'r')!.status });
    update(route('web', 'other'));
    await until('cross-namespace backend refused', () => cond('ResolvedRefs')?.reason === 'RefNotPermitted');
    assert.match(cond('ResolvedRefs')!.message, /spec\.rules\[0\]\.backendRefs\[0\].*no ReferenceGrant in namespace other/);

    update(route('nope'));
    await until('route not accepted', () => cond('Accepted')?.reason === 'NoMatchingParent');
    assert.match(cond('Accepted')!.message, /Service shop\/nope does not exist/);
    st = api.get('HTTPRoute', 'shop', 'r')!.status as RouteStatus;
    assert.ok(st.parents!.some((p) => p.controllerName === 'example.com/ingress'), 'still kept after our updates: ' + JSON.stringify(st));
  }));

test('an API server that is down at start delays the first snapshot instead of serving an empty mesh', async () => {
  // Find a free port, then leave it closed: the API server is not up yet.
  const api = new FakeApiServer();
  await api.start();
  const url = api.url;
  const port = api.port;
  await api.stop();
  const source = new KubeSource({ kubeConfig: kubeConfigForServer(url), restartDelayMs: 20 });
  const batches: number[] = [];
  const started = source.start((events) => batches.push(events.length));
  await holds('no snapshot while nothing could be listed', () => batches.length === 0, 300);
  const again = new FakeApiServer();
  await again.startOn(port);
  again.apply(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  again.apply(pod('shop', 'web'));
  try {
    await started;
    assert.deepEqual(batches, [1], 'one snapshot, once everything could be listed');
  } finally {
    await source.stop();
    await again.stop();
  }
});

test('a restarted controller does not rewrite statuses that are already right', () =>
  withKube(async (api, h) => {
    api.apply(authz('shop', 'p', { rules: [{ to: [{ operation: { ports: ['8080'] } }] }] }));
    await until('status written', () => api.get('AuthorizationPolicy', 'shop', 'p')?.status !== undefined);
    await h.controller.settled();
    const patches = () => api.requests.filter((r) => r.method === 'PATCH').length;
    const before = patches();
    const again = await startHarness(new KubeSource({ kubeConfig: kubeConfigForServer(api.url) }));
    try {
      await again.controller.settled();
      assert.equal(again.controller.statuses().get('AuthorizationPolicy/shop/p')?.ok, true);
      assert.equal(patches(), before);
    } finally {
      await again.close();
    }
  }));

test('a status someone else clears or replaces is written again (the write and the clearing arrive coalesced)', () =>
  withKube(async (api, h) => {
    api.apply(authz('shop', 'p', { rules: [{ to: [{ operation: { ports: ['8080'] } }] }] }));
    const accepted = () => (api.get('AuthorizationPolicy', 'shop', 'p')?.status as { conditions?: Array<{ reason: string; observedGeneration?: number }> } | undefined)?.conditions?.[0];
    await until('status written', () => accepted()?.reason === 'Accepted');
    await h.controller.settled();
    // The same spec applied again without a status (found by the kube fuzz, seed 1108354311): the
    // generation stays, nothing compiled changes, and our status must come back.
    api.apply(authz('shop', 'p', { rules: [{ to: [{ operation: { ports: ['8080'] } }] }] }));
    assert.equal(api.get('AuthorizationPolicy', 'shop', 'p')?.status, undefined);
    await until('status restored after a re-apply without status', () => accepted()?.reason === 'Accepted' && accepted()?.observedGeneration === 1);
    // Another writer replaces the status through the subresource: ours is restored.
    const res = await fetch(`${api.url}/apis/weft.dev/v1alpha1/namespaces/shop/authorizationpolicies/p/status`, {
      method: 'PATCH', headers: { 'content-type': 'application/merge-patch+json' },
      body: JSON.stringify({ status: { conditions: [{ type: 'Accepted', status: 'False', reason: 'Forged', message: 'not ours', lastTransitionTime: new Date().toISOString() }] } }),
    });
    assert.equal(res.status, 200);
    await until('status restored after a foreign status write', () => accepted()?.reason === 'Accepted');
  }));

test('an invalid object\'s status that someone clears is written again too (kube fuzz, seed 1146722915)', () =>
  withKube(async (api, h) => {
    // A `to` without its required operation (what the fuzz's mutation made), past the types.
    const bad = () => authz('shop', 'q', { rules: [{ to: [{} as { operation: {} }] }] });
    api.apply(bad());
    const verdict = () => (api.get('AuthorizationPolicy', 'shop', 'q')?.status as { conditions?: Array<{ reason: string; observedGeneration?: number }> } | undefined)?.conditions?.[0];
    await until('the Invalid status is written', () => verdict()?.reason === 'Invalid');
    await h.controller.settled();
    api.apply(bad());
    assert.equal(api.get('AuthorizationPolicy', 'shop', 'q')?.status, undefined);
    await until('the Invalid status is restored after a re-apply without status', () => verdict()?.reason === 'Invalid' && verdict()?.observedGeneration === 1);
  }));

test('the fake API server keeps status and spec apart like the status subresource does', async () => {
  const api = new FakeApiServer();
  await api.start();
  try {
    const created = api.apply(authz('shop', 'p', { action: 'DENY' }));
    const base = `${api.url}/apis/weft.dev/v1alpha1/namespaces/shop/authorizationpolicies/p`;
    const put = (url: string, body: unknown) => fetch(url, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    // PUT on /status changes only status.
    let res = await put(`${base}/status`, { ...created, spec: { action: 'ALLOW' }, status: { conditions: [{ type: 'Accepted', status: 'True', reason: 'Accepted', message: '' }] } });
    assert.equal(res.status, 200);
    let now = api.get('AuthorizationPolicy', 'shop', 'p')!;
    assert.equal((now.spec as { action: string }).action, 'DENY');
    assert.equal((now.status as { conditions: unknown[] }).conditions.length, 1);
    // PUT on the object changes spec, keeps status, moves generation; a stale resourceVersion conflicts.
    res = await put(base, { ...now, spec: { action: 'ALLOW' }, status: {} });
    assert.equal(res.status, 200);
    now = api.get('AuthorizationPolicy', 'shop', 'p')!;
    assert.equal((now.spec as { action: string }).action, 'ALLOW');
    assert.equal((now.status as { conditions: unknown[] }).conditions.length, 1);
    assert.equal(now.metadata.generation, 2);
    res = await put(base, { ...created, spec: { action: 'DENY' } });
    assert.equal(res.status, 409);
    // Merge patch and JSON patch (RFC 6902) on /status; an unknown patch type is refused with 415.
    res = await fetch(`${base}/status`, { method: 'PATCH', headers: { 'content-type': 'application/merge-patch+json' }, body: JSON.stringify({ status: { observedGeneration: 2 } }) });
    assert.equal(((await res.json()) as { status: { observedGeneration: number } }).status.observedGeneration, 2);
    res = await fetch(`${base}/status`, { method: 'PATCH', headers: { 'content-type': 'application/json-patch+json' }, body: JSON.stringify([{ op: 'replace', path: '/status/observedGeneration', value: 3 }]) });
    assert.equal(((await res.json()) as { status: { observedGeneration: number } }).status.observedGeneration, 3);
    res = await fetch(`${base}/status`, { method: 'PATCH', headers: { 'content-type': 'application/vnd.unknown-patch+json' }, body: '{}' });
    assert.equal(res.status, 415);
    // A list carries the resourceVersion a watch continues from.
    const list = (await (await fetch(`${api.url}/apis/weft.dev/v1alpha1/authorizationpolicies`)).json()) as { kind: string; metadata: { resourceVersion: string }; items: unknown[] };
    assert.equal(list.kind, 'AuthorizationPolicyList');
    assert.equal(list.metadata.resourceVersion, api.resourceVersion);
  } finally {
    await api.stop();
  }
});

// The API server keeps what a tenant sends in a field that preserves unknown fields, up to Go's
// 10,000 levels of JSON; the informer's object then went through JSON.stringify, which overflowed
// the stack at a few thousand levels, out of the controller's start or watch.
test('an object from the API server nested 8,000 levels deep is read without a throw and refused by validation at its field path', () => {
  const text = `{"apiVersion":"weft.dev/v1alpha1","kind":"RequestAuthentication","metadata":{"name":"deep","namespace":"aaa"},"spec":{"selector":${'{"a":'.repeat(8000)}1${'}'.repeat(8000)}}}`;
  const raw = normalize('RequestAuthentication', JSON.parse(text));
  assert.deepEqual(validateObject(raw).map((i) => [i.kind, i.namespace, i.name, i.path]), [['RequestAuthentication', 'aaa', 'deep', `spec.selector${'.a'.repeat(98)}`]]);
});
