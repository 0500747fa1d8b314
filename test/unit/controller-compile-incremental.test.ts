// Incremental compile (controller/src/compile-incremental.ts) against a full compile: after every
// step of seeded random change sequences (pods added, moved, relabelled, readdressed, finished,
// deleted; EndpointSlices rewritten; now and then a Service, Namespace or PeerAuthentication, which
// forces a full compile), the incremental result equals compiling the same objects from scratch.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CompileCache, compile, type CompileResult } from '../../controller/src/compile.ts';
import { compileChanges, compileIncrementally } from '../../controller/src/compile-incremental.ts';
import { ObjectStore } from '../../controller/src/store.ts';
import { deltaOf } from '../../controller/src/model-delta.ts';
import type { SourceEvent } from '../../controller/src/sources/source.ts';
import { prng } from '../lab/config-fuzz.ts';

const NS = ['a', 'b'];
const APPS = ['web', 'api', 'db'];
const NODES = ['n1', 'n2', 'n3'];

function pick<T>(r: () => number, xs: readonly T[]): T {
  return xs[Math.floor(r() * xs.length)]!;
}

function ownWaypoint(y: number): Record<string, string> {
  return y < 0.15 ? { 'weft.dev/use-waypoint': 'wp', 'weft.dev/use-waypoint-namespace': 'a' } : y < 0.25 ? { 'weft.dev/use-waypoint': 'wp2', 'weft.dev/use-waypoint-namespace': 'a' } : {};
}

function pod(r: () => number, i: number, uidGen: number): object {
  const node = pick(r, NODES);
  const ns = pick(r, NS);
  const phase = pick(r, ['Running', 'Running', 'Running', 'Pending', 'Succeeded']);
  return {
    apiVersion: 'v1', kind: 'Pod',
    // Now and then a pod names a's waypoint by its own labels: allowed or refused (a finding of the
    // Pod's) as its namespace's labels say; or a/wp2, which comes and goes (WaypointNotFound, the Pod's).
    metadata: { name: `p${i}`, namespace: ns, uid: `u${ns}${i}-${uidGen}`, labels: { app: pick(r, APPS), ...(r() < 0.3 ? { tier: 'x' } : {}), ...ownWaypoint(r()) } },
    spec: { nodeName: node, serviceAccountName: pick(r, APPS), containers: [{ name: 'c', ports: [{ name: 'http', containerPort: 8080 }] }] },
    status: {
      phase,
      // A small address pool: pods now and then share an address (the incremental compile must step aside).
      ...(r() < 0.9 ? { podIP: `10.0.0.${1 + Math.floor(r() * 40)}` } : {}),
      // Now and then a node's address moves (a full compile).
      hostIP: r() < 0.05 ? '192.168.9.9' : `192.168.0.${NODES.indexOf(node) + 1}`,
      ...(r() < 0.3 ? { conditions: [{ type: 'Ready', status: r() < 0.5 ? 'True' : 'False' }] } : {}),
    },
  };
}

function service(ns: string, app: string, selector: boolean): object {
  return {
    apiVersion: 'v1', kind: 'Service', metadata: { name: app, namespace: ns },
    spec: { clusterIP: `10.96.${NS.indexOf(ns)}.${APPS.indexOf(app) + 1}`, ...(selector ? { selector: { app } } : {}), ports: [{ name: 'http', port: 80, targetPort: 'http' }] },
  };
}

function slice(r: () => number, ns: string, app: string, gen: number): object {
  const endpoints = Array.from({ length: 1 + Math.floor(r() * 3) }, () => {
    const i = Math.floor(r() * 12);
    return { addresses: [`10.0.0.${1 + Math.floor(r() * 40)}`], ...(r() < 0.5 ? { targetRef: { kind: 'Pod', name: `p${i}`, uid: `u${ns}${i}-0` } } : {}), conditions: { ready: r() < 0.8 } };
  });
  return { apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', addressType: 'IPv4', metadata: { name: `${app}-${gen % 2}`, namespace: ns, labels: { 'kubernetes.io/service-name': app } }, endpoints, ports: [{ name: 'http', port: 8080 }] };
}

function normal(r: CompileResult): unknown {
  const sorted = (m: Map<string, unknown>) => [...m].sort(([a], [b]) => (a < b ? -1 : 1));
  const m = r.model;
  return {
    workloads: sorted(m.workloads), services: sorted(m.services), policies: sorted(m.policies), peerAuthentications: sorted(m.peerAuthentications),
    trafficPolicies: sorted(m.trafficPolicies), routes: sorted(m.routes), waypoints: sorted(m.waypoints),
    findings: r.findings.map((f) => JSON.stringify(f)).sort(),
    routeParents: sorted(r.routeParents),
  };
}

for (const seed of [1, 2, 3, 4, 5, 6]) {
  test(`incremental compile equals a full compile after random pod and EndpointSlice changes (seed ${seed})`, () => {
    const r = prng(seed);
    const store = new ObjectStore();
    let version = 0;
    const apply = (events: Array<Omit<SourceEvent, 'resourceVersion'>>) => store.apply(events.map((e) => ({ ...e, resourceVersion: String(++version) })) as SourceEvent[]);
    const initial: object[] = [
      { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'a', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
      { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'b' } },
      { apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'strict-db', namespace: 'a' }, spec: { selector: { matchLabels: { app: 'db' } }, mtls: { mode: 'STRICT' } } },
      { apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'web', namespace: 'a' }, spec: { selector: { matchLabels: { app: 'web' } }, rules: [{ from: [{ source: { namespaces: ['a'] } }] }] } },
      { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'rt', namespace: 'a' }, spec: { parentRefs: [{ group: '', kind: 'Service', name: 'web', port: 80 }], rules: [{ backendRefs: [{ name: 'api', port: 80 }] }] } },
      // A waypoint of a's that b may use when labelled so (use-waypoint-namespace, allowedNamespaces).
      { apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'a' }, spec: { allowedNamespaces: { from: 'Selector', selector: { matchLabels: { team: 'b' } } } } },
    ];
    for (const ns of NS) for (const app of APPS) initial.push(service(ns, app, app !== 'db' || ns === 'b'));
    for (let i = 0; i < 12; i++) initial.push(pod(r, i, 0));
    initial.push(slice(r, 'a', 'db', 0));
    apply([{ type: 'snapshot', kinds: ['Namespace', 'Pod', 'Service', 'EndpointSlice', 'PeerAuthentication', 'AuthorizationPolicy', 'HTTPRoute', 'Waypoint'], objects: initial } as never]);
    const cache = new CompileCache();
    let prev = compileChanges(store.inputs(), { cache }, store.takeChanges()).model;
    let incremental = 0;
    for (let step = 0; step < 150; step++) {
      const events: Array<Record<string, unknown>> = [];
      for (let k = 1 + Math.floor(r() * 3); k > 0; k--) {
        const x = r();
        const i = Math.floor(r() * 16);
        if (x < 0.55) events.push({ type: 'upsert', object: pod(r, i, r() < 0.2 ? step : 0) });
        else if (x < 0.7) events.push({ type: 'delete', kind: 'Pod', namespace: pick(r, NS), name: `p${i}` });
        else if (x < 0.82) events.push({ type: 'upsert', object: slice(r, pick(r, NS), pick(r, APPS), step) });
        else if (x < 0.88) events.push({ type: 'delete', kind: 'EndpointSlice', namespace: pick(r, NS), name: `${pick(r, APPS)}-${step % 2}` });
        else if (x < 0.93) events.push({ type: 'upsert', object: service(pick(r, NS), pick(r, APPS), r() < 0.7) });
        else if (x < 0.97) {
          // b ambient or not, and now and then using a's waypoint, allowed (team=b) or refused.
          const y = r();
          const cross = y < 0.5 ? {} : { 'weft.dev/use-waypoint': 'wp', 'weft.dev/use-waypoint-namespace': 'a', ...(y < 0.75 ? { team: 'b' } : {}) };
          events.push({ type: 'upsert', object: { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'b', labels: { ...(r() < 0.5 ? { 'weft.dev/dataplane-mode': 'ambient' } : {}), ...cross } } } });
        }
        // a/wp2, which some pods name by their own labels, made or deleted (a full compile keeping those pods' cached units).
        else if (x < 0.985) events.push(r() < 0.5 ? { type: 'upsert', object: { apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp2', namespace: 'a' }, spec: { allowedNamespaces: { from: 'All' } } } } : { type: 'delete', kind: 'Waypoint', namespace: 'a', name: 'wp2' });
        else events.push({ type: 'upsert', object: { apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'strict-db', namespace: 'a' }, spec: { mtls: { mode: r() < 0.5 ? 'STRICT' : 'PERMISSIVE' } } } });
      }
      apply(events as never);
      const inputs = store.inputs();
      const changed = store.takeChanges();
      const inc = compileIncrementally(inputs, { cache }, changed);
      if (inc) incremental++;
      const got = inc ?? compile(inputs, { cache });
      assert.deepEqual(normal(got), normal(compile(inputs)), `seed ${seed}, step ${step}: ${[...changed].join(', ')}`);
      if (inc && got.model !== prev) {
        // What publish relies on (model-delta.ts): every entry that differs from the previous model is named.
        for (const kind of ['workloads', 'services'] as const) {
          const delta = deltaOf(got.model[kind]);
          assert.ok(delta && delta.from === prev[kind], `seed ${seed}, step ${step}: ${kind} delta recorded against the previous model`);
          for (const k of new Set([...prev[kind].keys(), ...got.model[kind].keys()])) {
            if (prev[kind].get(k) !== got.model[kind].get(k)) assert.ok(delta.names.has(k), `seed ${seed}, step ${step}: ${kind} ${k} changed but is not named`);
          }
        }
      }
      prev = got.model;
    }
    // Most steps change only pods and slices: most take the incremental path.
    assert.ok(incremental > 60, `only ${incremental} of 150 steps were incremental`);
  });
}

test('an incremental compile of one pod change recompiles only its services: other objects keep their identity', () => {
  const store = new ObjectStore();
  const objs: object[] = [{ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'a', labels: { 'weft.dev/dataplane-mode': 'ambient' } } }];
  for (const app of APPS) objs.push(service('a', app, true));
  const r = prng(9);
  for (let i = 0; i < 30; i++) objs.push({ ...(pod(r, i, 0) as Record<string, unknown>), metadata: { name: `p${i}`, namespace: 'a', uid: `u${i}`, labels: { app: APPS[i % 3] } } });
  store.apply([{ type: 'snapshot', kinds: ['Namespace', 'Pod', 'Service'], objects: objs as never, resourceVersion: '1' }]);
  const cache = new CompileCache();
  const first = compileChanges(store.inputs(), { cache }, store.takeChanges());
  store.apply([{ type: 'upsert', object: { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'new', namespace: 'a', uid: 'unew', labels: { app: 'web' } }, spec: { nodeName: 'n1' }, status: { phase: 'Running', podIP: '10.1.1.1', hostIP: '192.168.0.1' } } as never, resourceVersion: '2' }]);
  const second = compileIncrementally(store.inputs(), { cache }, store.takeChanges());
  assert.ok(second, 'a pod change compiles incrementally');
  assert.notEqual(second.model.services.get('a/web'), first.model.services.get('a/web'));
  assert.equal(second.model.services.get('a/api'), first.model.services.get('a/api'));
  assert.equal(second.model.services.get('a/db'), first.model.services.get('a/db'));
  const changedWorkloads = [...second.model.workloads].filter(([uid, w]) => first.model.workloads.get(uid) !== w).map(([uid]) => uid);
  assert.deepEqual(changedWorkloads, ['unew']);
});

test('two pods of one change taking the same new address: the incremental compile steps aside, as for an address already held, and the result is a full compile\'s (the last pod listed holds it)', () => {
  const store = new ObjectStore();
  const objs: object[] = [{ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'a', labels: { 'weft.dev/dataplane-mode': 'ambient' } } }, service('a', 'web', false)];
  objs.push({ apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', addressType: 'IPv4', metadata: { name: 'web-1', namespace: 'a', labels: { 'kubernetes.io/service-name': 'web' } }, endpoints: [{ addresses: ['10.0.0.21'] }], ports: [{ name: 'http', port: 8080 }] });
  store.apply([{ type: 'snapshot', kinds: ['Namespace', 'Pod', 'Service', 'EndpointSlice'], objects: objs as never, resourceVersion: '1' }]);
  const cache = new CompileCache();
  compileChanges(store.inputs(), { cache }, store.takeChanges());
  const at = (name: string, ip: string) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: 'a', uid: `u-${name}`, labels: { app: 'x' } }, spec: { nodeName: 'n1', serviceAccountName: name }, status: { phase: 'Running', podIP: ip, hostIP: '192.168.0.1' } });
  store.apply([{ type: 'upsert', object: at('one', '10.0.0.1') as never, resourceVersion: '2' }, { type: 'upsert', object: at('two', '10.0.0.2') as never, resourceVersion: '3' }]);
  compileChanges(store.inputs(), { cache }, store.takeChanges());
  // Both move to one address, changed in the other order than the store lists them.
  store.apply([{ type: 'upsert', object: at('two', '10.0.0.21') as never, resourceVersion: '4' }, { type: 'upsert', object: at('one', '10.0.0.21') as never, resourceVersion: '5' }]);
  const inputs = store.inputs();
  const got = compileChanges(inputs, { cache }, store.takeChanges());
  assert.deepEqual(normal(got), normal(compile(inputs)));
});

test('the record of what an incremental compile changed keeps no earlier model alive', async () => {
  const { setFlagsFromString } = await import('node:v8');
  const { runInNewContext } = await import('node:vm');
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const store = new ObjectStore();
  const objs: object[] = [{ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'a', labels: { 'weft.dev/dataplane-mode': 'ambient' } } }, service('a', 'web', true)];
  store.apply([{ type: 'snapshot', kinds: ['Namespace', 'Pod', 'Service'], objects: objs as never, resourceVersion: '1' }]);
  const cache = new CompileCache();
  let first: WeakRef<object> | undefined;
  for (let i = 0; i < 5; i++) {
    store.apply([{ type: 'upsert', object: { apiVersion: 'v1', kind: 'Pod', metadata: { name: `p${i}`, namespace: 'a', uid: `u${i}`, labels: { app: 'web' } }, spec: { nodeName: 'n1' }, status: { phase: 'Running', podIP: `10.1.1.${i + 1}`, hostIP: '192.168.0.1' } } as never, resourceVersion: String(i + 2) }]);
    const r = compileChanges(store.inputs(), { cache }, store.takeChanges());
    first ??= new WeakRef(r.model.workloads);
  }
  // WeakRef targets live to the end of the current job.
  await new Promise((r) => setImmediate(r));
  gc();
  assert.equal(first!.deref(), undefined, 'the first model\'s workload map was collected');
});

test('EndpointSlice churn leaves no emptied entries in the incremental state: sliceRefs equals a full compile\'s (compile-incremental.ts "The result equals a full compile of the same inputs")', () => {
  const store = new ObjectStore();
  const objs: object[] = [{ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'a', labels: { 'weft.dev/dataplane-mode': 'ambient' } } }, service('a', 'web', false)];
  store.apply([{ type: 'snapshot', kinds: ['Namespace', 'Pod', 'Service', 'EndpointSlice'], objects: objs as never, resourceVersion: '1' }]);
  const cache = new CompileCache();
  compileChanges(store.inputs(), { cache }, store.takeChanges());
  let incremental = 0;
  for (let i = 0; i < 500; i++) {
    // Each step a new pod (new uid, new address) behind the one endpoint, as a rolling Deployment does.
    const slice = { apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', addressType: 'IPv4', metadata: { name: 'web-1', namespace: 'a', labels: { 'kubernetes.io/service-name': 'web' } }, endpoints: [{ addresses: [`10.2.${i >> 8}.${i & 255}`], targetRef: { kind: 'Pod', name: `p-${i}`, namespace: 'a', uid: `uid-${i}` } }], ports: [{ name: 'http', port: 8080 }] };
    store.apply([{ type: 'upsert', object: slice as never, resourceVersion: String(i + 2) }]);
    const changed = store.takeChanges();
    if (compileIncrementally(store.inputs(), { cache }, changed)) incremental++;
    else compile(store.inputs(), { cache });
  }
  assert.ok(incremental > 400, `only ${incremental} of 500 steps were incremental`);
  const refs = cache.last!.sliceRefs;
  assert.deepEqual([...refs].filter(([, s]) => s.size === 0).map(([r]) => r), [], 'no emptied sets');
  const fullCache = new CompileCache();
  const full = compile(store.inputs(), { cache: fullCache });
  assert.deepEqual([...refs].map(([r, s]) => [r, [...s]]).sort(), [...fullCache.last!.sliceRefs].map(([r, s]) => [r, [...s]]).sort());
  assert.deepEqual(normal(cache.last!.result), normal(full));
});

// Review of branch tc: the controller validated an object again at each watch event, the echo of
// its own status write and every relist included, so a tenant's objects just under the regex budget
// (45 to 80 ms each) cost their validation again at every status write. The verdict is now kept by
// the object's content (the store's fingerprint: spec and metadata, not status or resourceVersion).
test('an object whose content did not change is not validated again: the echo of our status write and a relist reuse the verdict, valid or not', () => {
  const store = new ObjectStore();
  const route = (name: string, value: string, extra: Record<string, unknown> = {}) => ({
    apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name, namespace: 'evil', generation: 1, ...extra },
    spec: { parentRefs: [{ group: '', kind: 'Service', name: 'web', namespace: 'shop' }], rules: [{ matches: [{ path: { type: 'RegularExpression', value } }], backendRefs: [{ name: 'web', namespace: 'shop', port: 80 }] }] },
  });
  let rv = 0;
  const upsert = (o: object) => store.apply([{ type: 'upsert', object: o as never, resourceVersion: String(++rv) }]);
  upsert(route('good', '/x[a-z]{1,900}', { resourceVersion: '1' }));
  upsert(route('bad', '(?=look)', { resourceVersion: '2' }));
  assert.equal(store.validated, 2);
  // Our status seen back: a new resourceVersion, managedFields and status, the same spec.
  const echo = { resourceVersion: '3', managedFields: [{ manager: 'weft', operation: 'Update', subresource: 'status' }] };
  const r1 = upsert({ ...route('good', '/x[a-z]{1,900}', echo), status: { parents: [] } });
  const r2 = upsert({ ...route('bad', '(?=look)', echo), status: { parents: [] } });
  assert.equal(store.validated, 2, 'neither is validated again');
  assert.equal(r1.changed, false);
  assert.deepEqual(r2.rejections, [], 'the same refusal is not reported again');
  assert.match(store.invalid('HTTPRoute/evil/bad')!.issues[0]!.message, /not an RE2 regular expression/, 'the verdict is kept');
  store.apply([{ type: 'snapshot', kinds: ['HTTPRoute'], objects: [route('good', '/x[a-z]{1,900}'), route('bad', '(?=look)')] as never, resourceVersion: String(++rv) }]);
  assert.equal(store.validated, 2, 'a relist validates nothing unchanged');
  assert.ok(store.get('HTTPRoute/evil/good') && store.invalid('HTTPRoute/evil/bad'));
  // A change is validated, valid to invalid and back.
  upsert(route('good', '(?=now-bad)', { generation: 2 }));
  assert.equal(store.validated, 3);
  assert.ok(store.invalid('HTTPRoute/evil/good'));
  upsert(route('good', '/x[a-z]{1,900}', { generation: 3 }));
  assert.equal(store.validated, 4);
  assert.equal(store.invalid('HTTPRoute/evil/good'), undefined);
});
