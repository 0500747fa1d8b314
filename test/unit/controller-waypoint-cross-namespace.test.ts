// Cross-namespace waypoints, as Istio's `istio.io/use-waypoint-namespace`
// (https://istio.io/latest/docs/ambient/usage/use-waypoint/#use-a-waypoint-in-a-different-namespace;
// pilot ambient waypoints.go fetchWaypointForTarget): `weft.dev/use-waypoint` with
// `weft.dev/use-waypoint-namespace` on a Namespace, Service or Pod names a Waypoint of another
// namespace, which must allow the object's namespace (spec.allowedNamespaces, Gateway API
// RouteNamespaces: Same by default, All, Selector). A refused binding (Istio: AttachmentDenied) is
// reported at the label and fails closed: the waypoint neither serves the Service nor speaks for
// its pods, and the Service's traffic goes nowhere, so a tenant gains nothing by pointing at a
// waypoint that does not allow it.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AgentState, NoRouteError } from '../../agent/src/state.ts';
import { CompileCache, compile, emptyInputs, type CompileFinding, type MeshInputs } from '../../controller/src/compile.ts';
import { compileChanges } from '../../controller/src/compile-incremental.ts';
import { MemorySource } from '../../controller/src/sources/memory.ts';
import { Controller } from '../../controller/src/controller.ts';
import { ConfigServer } from '../../controller/src/xds/server.ts';
import { Registry } from 'prom-client';
import { ObjectStore } from '../../controller/src/store.ts';
import { AddressOwnerTable } from '../../controller/src/xds/address-owners.ts';
import { buildIndex, reboundWaypointNamespaces, waypointHolds, waypointView } from '../../controller/src/xds/views.ts';
import { forwardedFor, tunnelClient } from '../../lib/hbone/forwarded.ts';
import type { AgentConfig, MeshModel, WaypointConfig } from '../../lib/model/mesh.ts';
import type { Waypoint, WaypointAllowedNamespaces } from '../../lib/model/objects.ts';
import { validateObject } from '../../lib/model/validate.ts';
import { TYPE_URLS, type ResourceType } from '../../lib/xds/protocol.ts';
import { buildSnapshot } from '../../waypoint/src/config.ts';
import { resolveService } from '../../waypoint/src/proxy.ts';
import { authz, ns, pod, svc } from './controller-fixtures.ts';
import { startHarness, until } from './controller-harness.ts';

const USE = 'weft.dev/use-waypoint';
const USE_NS = 'weft.dev/use-waypoint-namespace';

function readyWaypoint(namespace: string, name: string, address: string, allowedNamespaces?: WaypointAllowedNamespaces): Waypoint {
  return {
    apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name, namespace },
    spec: allowedNamespaces ? { allowedNamespaces } : {},
    status: { addresses: [{ value: address }], conditions: [{ type: 'Ready', status: 'True', reason: 'Running', message: '' }] },
  };
}

/**
 * Namespace `a` runs waypoint `wp` (allowing `allowed`); `b` (team=b) and `c` (team=c) both point
 * their namespace at it; each has a Service with a pod on node-b, a targetRefs DENY on it and a
 * route. `d` is the client's namespace (node-a).
 */
function mesh(allowed: WaypointAllowedNamespaces | undefined): MeshInputs {
  const i = emptyInputs();
  i.namespaces.push(
    ns('a', { 'weft.dev/dataplane-mode': 'ambient' }),
    ns('b', { 'weft.dev/dataplane-mode': 'ambient', team: 'b', [USE]: 'wp', [USE_NS]: 'a' }),
    ns('c', { 'weft.dev/dataplane-mode': 'ambient', team: 'c', [USE]: 'wp', [USE_NS]: 'a' }),
    ns('d', { 'weft.dev/dataplane-mode': 'ambient' }),
  );
  i.waypoints.push(readyWaypoint('a', 'wp', '10.2.0.1', allowed));
  i.pods.push(
    pod('b', 'api', { ip: '10.1.8.2', node: 'node-b' }),
    pod('c', 'api', { ip: '10.1.8.3', node: 'node-b' }),
    pod('d', 'client', { ip: '10.1.8.9', node: 'node-a' }),
    { ...pod('a', 'wp-1', { ip: '10.2.0.1', node: 'node-b', sa: 'wp', labels: { 'weft.dev/waypoint': 'wp' } }) },
  );
  i.services.push(svc('b', 'api', { app: 'api' }, '10.96.1.2'), svc('c', 'api', { app: 'api' }, '10.96.1.3'));
  for (const n of ['b', 'c']) {
    i.authorizationPolicies.push(authz(n, 'no-admin', { targetRefs: [{ group: '', kind: 'Service', name: 'api' }], action: 'DENY', rules: [{ to: [{ operation: { paths: ['/admin*'] } }] }] }));
    i.trafficPolicies.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'TrafficPolicy', metadata: { name: 'api', namespace: n }, spec: { targetRef: { group: '', kind: 'Service', name: 'api' }, timeouts: { request: '1s' } } });
    i.httpRoutes.push({ apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'api', namespace: n }, spec: { parentRefs: [{ group: '', kind: 'Service', name: 'api' }], rules: [{ backendRefs: [{ name: 'api', port: 80 }] }] } });
  }
  return i;
}

/** a/wp's tunnel to `dest`, naming the client 10.1.8.9 in `forwarded: for=`: whom the agent believes. */
function claimFromWaypoint(state: AgentState, dest: ReturnType<AgentState['localWorkload']> & object) {
  const forwarded = 'for="10.1.8.9:40000"';
  return tunnelClient(state, dest, { peer: { spiffeId: 'spiffe://cluster.local/ns/a/sa/wp', address: '10.2.0.1', port: 40001 }, forwardedFor: forwardedFor(forwarded), headers: { forwarded } });
}

function agentOn(node: string, model: MeshModel): AgentState {
  const state = new AgentState(node);
  const config: AgentConfig = { node, workloads: [...model.workloads.values()], services: [...model.services.values()], policies: [], peerAuthentications: [], waypoints: [...model.waypoints.values()] };
  state.apply(config);
  return state;
}

/** The config a waypoint of namespace `a` gets (the controller's view), as its snapshot. */
function waypointConfigOf(model: MeshModel, namespace: string): WaypointConfig {
  const ix = buildIndex(model);
  const pick = <T>(m: Map<string, T>, t: ResourceType): T[] => [...(waypointView(ix, namespace, t) ?? m.keys())].map((k) => m.get(k)!);
  const owners = new AddressOwnerTable();
  owners.update(undefined, model.workloads, model.workloads.keys());
  return {
    namespace,
    services: pick(model.services, 'Service'), routes: pick(model.routes, 'Route'), trafficPolicies: pick(model.trafficPolicies, 'TrafficPolicy'),
    policies: pick(model.policies, 'AuthorizationPolicy'), waypoints: pick(model.waypoints, 'Waypoint'), addressOwners: [...owners.table.values()],
  };
}

test('use-waypoint-namespace binds a namespace\'s Services and pods to another namespace\'s Waypoint that allows it (allowedNamespaces.from All): the agents steer to it and its view holds their Services, targetRefs policies, routes and traffic policies', () => {
  const { model, findings } = compile(mesh({ from: 'All' }));
  assert.deepEqual(findings.filter((f) => f.reason === 'AttachmentDenied' || f.reason === 'WaypointNotFound'), []);
  assert.deepEqual(model.services.get('b/api')?.waypoint, { name: 'wp', namespace: 'a' });
  assert.deepEqual([...model.workloads.values()].find((w) => w.namespace === 'b')?.waypoint, { name: 'wp', namespace: 'a' });

  // The client's agent sends b/api's traffic (and traffic to b's pod) to a/wp.
  const client = agentOn('node-a', model);
  const src = client.localWorkload('10.1.8.9')!;
  for (const [ip, port] of [['10.96.1.2', 80], ['10.1.8.2', 8080]] as const) {
    const up = client.resolve(src, ip, port)[0];
    assert.equal(up?.kind === 'hbone' && up.waypoint && `${up.waypoint.namespace}/${up.waypoint.name}`, 'a/wp', `${ip}:${port} goes through a/wp`);
  }
  // b's agent believes a/wp's for= for b's pod: a/wp serves it.
  const dest = agentOn('node-b', model);
  const api = dest.localWorkload('10.1.8.2')!;
  assert.deepEqual(dest.waypointsServing(api).map((w) => `${w.namespace}/${w.name}`), ['a/wp']);
  assert.equal(claimFromWaypoint(dest, api).ip, '10.1.8.9', 'the caller a/wp names');

  // a's waypoint is sent b's Service, its targetRefs policy (which lives in b), route and traffic policy.
  const cfg = waypointConfigOf(model, 'a');
  const names = (xs: Array<{ namespace: string; name: string }>) => xs.map((x) => `${x.namespace}/${x.name}`).sort();
  assert.deepEqual(names(cfg.services), ['b/api', 'c/api']);
  assert.deepEqual(names(cfg.policies), ['b/no-admin', 'c/no-admin']);
  assert.deepEqual(names(cfg.routes), ['b/api', 'c/api']);
  assert.deepEqual(names(cfg.trafficPolicies), ['b/api', 'c/api']);
  // ... and serves it: a tunnel addressed to b/api's VIP is b/api's.
  const snap = buildSnapshot(cfg, 1);
  assert.equal(resolveService(snap, '10.96.1.2:80', 'api.b')?.service.name, 'api');
  assert.deepEqual(snap.issues, []);
  // The policy and route are reported as a waypoint's.
  assert.equal(findings.find((f) => f.kind === 'AuthorizationPolicy' && f.namespace === 'b'), undefined);
});

test('a Waypoint that does not allow a namespace (default from: Same) refuses its binding: AttachmentDenied at the label\'s path on the Namespace and at metadata.namespace on its Services, counted as findings; its traffic fails closed and the waypoint neither serves it nor speaks for its pods (Istio ReportWaypointAttachmentDenied)', () => {
  const { model, findings } = compile(mesh(undefined));
  const denied = findings.filter((f) => f.reason === 'AttachmentDenied').map((f) => `${f.kind} ${f.namespace}/${f.name} ${f.path}`).sort();
  assert.deepEqual(denied, [
    'Namespace /b metadata.labels["weft.dev/use-waypoint-namespace"]',
    'Namespace /c metadata.labels["weft.dev/use-waypoint-namespace"]',
    'Service b/api metadata.namespace',
    'Service c/api metadata.namespace',
  ]);
  assert.match(findings.find((f) => f.kind === 'Service' && f.namespace === 'c')!.message, /Waypoint a\/wp does not allow namespace c \(spec\.allowedNamespaces\.from is Same \(the default\)\).*fails closed/);
  // The route and the targetRefs policy say nothing enforces them.
  assert.equal(findings.find((f) => f.kind === 'HTTPRoute' && f.namespace === 'c')?.reason, 'NoWaypoint');
  assert.equal(findings.find((f) => f.kind === 'AuthorizationPolicy' && f.namespace === 'c')?.reason, 'AncestorNotBound');

  // Fails closed at the client's agent, naming the refusal: not around the waypoint, not into it.
  const client = agentOn('node-a', model);
  const src = client.localWorkload('10.1.8.9')!;
  for (const [ip, port] of [['10.96.1.3', 80], ['10.1.8.3', 8080]] as const) {
    assert.throws(() => client.resolve(src, ip, port), (e: unknown) => e instanceof NoRouteError && /may not use waypoint a\/wp: Waypoint a\/wp does not allow namespace c/.test(e.message), `${ip}:${port}`);
  }
  // c's agent does not let a/wp speak for c's pod: a tenant pointing at a waypoint that refuses it
  // gives that waypoint nothing.
  const dest = agentOn('node-b', model);
  const api = dest.localWorkload('10.1.8.3')!;
  assert.deepEqual(dest.waypointsServing(api), []);
  assert.equal(claimFromWaypoint(dest, api).ip, '10.2.0.1', 'the claim is ignored: the client is the waypoint itself');

  // a's waypoint is sent none of c's objects, and does not serve c/api's VIP.
  const cfg = waypointConfigOf(model, 'a');
  assert.deepEqual([...cfg.services, ...cfg.policies, ...cfg.routes, ...cfg.trafficPolicies], []);
  assert.equal(resolveService(buildSnapshot(cfg, 1), '10.96.1.3:80', 'api.c'), undefined);
});

test('allowedNamespaces.from Selector admits the namespaces its label selector matches (matchLabels and matchExpressions, Kubernetes semantics), the Waypoint\'s own included only if matched', () => {
  const cases: Array<{ allowed: WaypointAllowedNamespaces; bound: string[] }> = [
    { allowed: { from: 'Selector', selector: { matchLabels: { team: 'b' } } }, bound: ['b'] },
    { allowed: { from: 'Selector', selector: { matchExpressions: [{ key: 'team', operator: 'In', values: ['b', 'c'] }] } }, bound: ['b', 'c'] },
    { allowed: { from: 'Selector', selector: { matchExpressions: [{ key: 'team', operator: 'NotIn', values: ['b'] }] } }, bound: ['c'] },
    { allowed: { from: 'Selector', selector: { matchExpressions: [{ key: 'team', operator: 'DoesNotExist' }] } }, bound: [] },
    { allowed: { from: 'Selector', selector: {} }, bound: ['b', 'c'] },
    // The API server's own label on every Namespace, the usual way to allow one by name (set here
    // for a config directory's Namespace too, whatever it says).
    { allowed: { from: 'Selector', selector: { matchLabels: { 'kubernetes.io/metadata.name': 'c' } } }, bound: ['c'] },
    { allowed: { from: 'Same' }, bound: [] },
  ];
  for (const { allowed, bound } of cases) {
    const { model } = compile(mesh(allowed));
    const got = ['b', 'c'].filter((n) => { const r = model.services.get(`${n}/api`)?.waypoint; return r !== undefined && r.refused === undefined; });
    assert.deepEqual(got, bound, JSON.stringify(allowed));
  }
  // Istio applies the selector to the waypoint's own namespace too: a Service of `a` bound to a/wp.
  const i = mesh({ from: 'Selector', selector: { matchLabels: { team: 'b' } } });
  const own = svc('a', 'own', { app: 'own' }, '10.96.1.9');
  own.metadata.labels = { [USE]: 'wp' };
  i.services.push(own);
  const r = compile(i);
  assert.equal(r.model.services.get('a/own')?.waypoint?.refused, 'NamespaceNotAllowed');
  const f = r.findings.find((x) => x.kind === 'Service' && x.name === 'own');
  assert.equal(f?.path, 'metadata.labels["weft.dev/use-waypoint"]');
  assert.match(f?.message ?? '', /does not allow namespace a \(spec\.allowedNamespaces\.selector does not match its labels\)/);
});

test('a Service\'s own use-waypoint-namespace wins over its namespace\'s labels, and is read only beside its own use-waypoint (Istio getUseWaypoint)', () => {
  const i = mesh({ from: 'All' });
  i.waypoints.push(readyWaypoint('d', 'other', '10.2.0.4', { from: 'All' }));
  const own = svc('c', 'own', { app: 'api' }, '10.96.1.10');
  own.metadata.labels = { [USE]: 'other', [USE_NS]: 'd' };
  // A namespace label alone on the Service does not move its namespace's waypoint.
  const stray = svc('c', 'stray', { app: 'api' }, '10.96.1.11');
  stray.metadata.labels = { [USE_NS]: 'd' };
  i.services.push(own, stray);
  const { model } = compile(i);
  assert.deepEqual(model.services.get('c/own')?.waypoint, { name: 'other', namespace: 'd' });
  assert.deepEqual(model.services.get('c/stray')?.waypoint, { name: 'wp', namespace: 'a' });
});

test('a tenant cannot gain through a refused binding: a Service of a namespace the Waypoint refuses, but labelled to use it, stays out of the waypoint\'s view even when another namespace is allowed; a change of the allowance rebinds in one publish (the waypoint views follow)', () => {
  const before = compile(mesh({ from: 'Selector', selector: { matchLabels: { team: 'b' } } })).model;
  const after = compile(mesh({ from: 'All' })).model;
  const ix = buildIndex(before);
  assert.ok(waypointHolds(ix, 'a', 'Service', 'b/api') && !waypointHolds(ix, 'a', 'Service', 'c/api'));
  assert.ok(waypointHolds(ix, 'a', 'AuthorizationPolicy', 'b/no-admin') && !waypointHolds(ix, 'a', 'AuthorizationPolicy', 'c/no-admin'));
  assert.ok(!waypointHolds(ix, 'c', 'Service', 'b/api'), 'another namespace\'s waypoint holds nothing of b');
  // Only the changed binding's waypoint namespace is recomputed whole.
  assert.deepEqual([...reboundWaypointNamespaces(before.services, after.services, ['b/api', 'c/api'])], ['a']);
  assert.deepEqual([...reboundWaypointNamespaces(before.services, before.services, ['b/api', 'c/api'])], []);
});

test('waypointHolds answers exactly as waypointView with Services bound across namespaces, allowed and refused', () => {
  const store = new ObjectStore();
  const i = mesh({ from: 'Selector', selector: { matchLabels: { team: 'b' } } });
  const objects = [...i.namespaces, ...i.waypoints, ...i.pods, ...i.services, ...i.authorizationPolicies, ...i.trafficPolicies, ...i.httpRoutes];
  const r = store.apply(objects.map((o, n) => ({ type: 'upsert' as const, object: o as never, resourceVersion: String(n + 1) })));
  assert.deepEqual(r.rejections, []);
  const model = compile(store.inputs()).model;
  const ix = buildIndex(model);
  const all = { Workload: model.workloads, Service: model.services, AuthorizationPolicy: model.policies, RequestAuthentication: model.requestAuthentications, PeerAuthentication: model.peerAuthentications, Waypoint: model.waypoints, TrafficPolicy: model.trafficPolicies, Route: model.routes, AddressOwner: new Map() } as Record<ResourceType, Map<string, unknown>>;
  for (const namespace of ['a', 'b', 'c', 'd']) {
    for (const type of Object.keys(TYPE_URLS) as ResourceType[]) {
      const expected = [...(waypointView(ix, namespace, type) ?? all[type].keys())].sort();
      const held = [...all[type].keys()].filter((k) => waypointHolds(ix, namespace, type, k)).sort();
      assert.deepEqual(held, expected, `${type} in ${namespace}`);
    }
  }
});

test('validation: use-waypoint-namespace must be a namespace name, and spec.allowedNamespaces is Gateway API RouteNamespaces, each refusal at its field', () => {
  const issues = (o: object) => validateObject(o).map((x) => `${x.path}: ${x.message}`);
  for (const kind of ['Namespace', 'Service', 'Pod'] as const) {
    const o = kind === 'Namespace' ? ns('x', { [USE]: 'wp', [USE_NS]: 'Not_A_Namespace' }) : kind === 'Service' ? { ...svc('x', 'y'), metadata: { name: 'y', namespace: 'x', labels: { [USE_NS]: 'UPPER' } } } : { ...pod('x', 'y'), metadata: { name: 'y', namespace: 'x', labels: { [USE_NS]: 'a.b' } } };
    assert.match(issues(o).join('\n'), /^metadata\.labels\["weft\.dev\/use-waypoint-namespace"\]: ".*" is not a namespace name/m, kind);
  }
  const wp = (allowedNamespaces: unknown) => issues({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'a' }, spec: { allowedNamespaces } });
  assert.deepEqual(wp({ from: 'All' }), []);
  assert.deepEqual(wp({ from: 'Selector', selector: { matchLabels: { team: 'b' }, matchExpressions: [{ key: 'env', operator: 'Exists' }] } }), []);
  assert.match(wp({ from: 'Any' }).join('\n'), /^spec\.allowedNamespaces\.from: /m);
  assert.match(wp({ from: 'Selector' }).join('\n'), /^spec\.allowedNamespaces\.selector: is required with from: Selector/m);
  assert.match(wp({ selector: { matchLabels: { team: 'b' } } }).join('\n'), /^spec\.allowedNamespaces\.selector: applies only with from: Selector/m);
  assert.match(wp({ from: 'Selector', selector: { matchExpressions: [{ key: 'team', operator: 'In' }] } }).join('\n'), /^spec\.allowedNamespaces\.selector\.matchExpressions\[0\]\.values: must be non-empty when operator is In/m);
  assert.match(wp({ from: 'Selector', selector: { matchExpressions: [{ key: 'team', operator: 'Exists', values: ['x'] }] } }).join('\n'), /^spec\.allowedNamespaces\.selector\.matchExpressions\[0\]\.values: must be empty/m);
  assert.match(wp({ from: 'Selector', selector: { matchExpressions: [{ key: 'team', operator: 'Has' }] } }).join('\n'), /^spec\.allowedNamespaces\.selector\.matchExpressions\[0\]\.operator: /m);
  assert.match(wp({ from: 'All', extra: 1 }).join('\n'), /^spec\.allowedNamespaces\.extra: unknown field/m);
});

test('on the config stream, a namespace the Waypoint comes to allow brings the waypoint its Service with the targetRefs policy, route and traffic policy that did not change, and one it stops allowing takes them away: a waypoint never serves a Service without its policy', async () => {
  const i = mesh({ from: 'Selector', selector: { matchLabels: { team: 'b' } } });
  const source = new MemorySource([...i.namespaces, ...i.waypoints, ...i.pods, ...i.services, ...i.authorizationPolicies, ...i.trafficPolicies, ...i.httpRoutes]);
  const h = await startHarness(source);
  const held = (cfg: WaypointConfig | undefined) => cfg ? [...cfg.services, ...cfg.policies, ...cfg.routes, ...cfg.trafficPolicies].map((x) => `${x.namespace}/${x.name}`).sort() : [];
  try {
    const wp = h.waypoint('a');
    await wp.ready();
    await until('a\'s waypoint holds b\'s objects', () => held(wp.snapshot).join() === 'b/api,b/api,b/api,b/no-admin');
    // c's namespace gets the label the selector asks for: only c's Service changes in the model.
    source.upsert(ns('c', { 'weft.dev/dataplane-mode': 'ambient', team: 'b', [USE]: 'wp', [USE_NS]: 'a' }));
    await until('c\'s Service comes with its policy, route and traffic policy', () => held(wp.snapshot).join() === 'b/api,b/api,b/api,b/no-admin,c/api,c/api,c/api,c/no-admin', 5000);
    // The Waypoint stops allowing any other namespace: both go, policies with them.
    source.upsert(readyWaypoint('a', 'wp', '10.2.0.1', { from: 'Same' }));
    await until('b\'s and c\'s objects are gone', () => held(wp.snapshot).length === 0, 5000);
  } finally {
    await h.close();
  }
});

// docs/ARCHITECTURE.md "Waypoint binding": namespace b trusts the waypoint it names (its agents
// believe its for=, and Istio's pattern is a namespace ALLOW naming the waypoint's identity). A
// tenant c that the same shared waypoint also allows must not use it to reach b's pods with only
// c's own policies applied: a Service of c whose hand-written EndpointSlice lists b's pod.
test('a shared waypoint does not carry another namespace\'s Service to a pod it serves for its own namespace: the alias\'s endpoint is left out and named, so b\'s L7 policy cannot be skipped through it', () => {
  const i = mesh({ from: 'All' });
  i.services.push({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'alias', namespace: 'c' }, spec: { clusterIP: '10.96.1.50', ports: [{ name: 'http', port: 80, targetPort: 8080 }] } });
  i.endpointSlices.push({ apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: 'alias-1', namespace: 'c', labels: { 'kubernetes.io/service-name': 'alias' } }, addressType: 'IPv4', ports: [{ name: 'http', port: 8080 }], endpoints: [{ addresses: ['10.1.8.2', '10.1.8.3'] }] });
  const { model } = compile(i);
  assert.deepEqual(model.services.get('c/alias')?.endpoints.map((e) => e.ip), ['10.1.8.2', '10.1.8.3'], 'the controller lists what the slice says');
  const snap = buildSnapshot(waypointConfigOf(model, 'a'), 1);
  const alias = resolveService(snap, '10.96.1.50:80', 'alias.c');
  assert.deepEqual(alias?.service.endpoints.map((e) => e.ip), ['10.1.8.3'], 'b\'s pod is left out; c\'s own pod stays');
  assert.match(snap.issues.map((x) => `${x.kind} ${x.object} ${x.path}: ${x.message}`).join('\n'), /^Service c\/alias endpoints\[0\]: 10\.1\.8\.2 is a pod of namespace b behind waypoint a\/wp; left out/m);
  // b's own Service, and a route backend of it, keep b's pod.
  assert.deepEqual(snap.services.get('b/api')?.endpoints.map((e) => e.ip), ['10.1.8.2']);
});

// The same way around a waypoint without sharing one: c's Service, bound to c's own waypoint, lists
// a pod of b, which uses b's waypoint. An agent sends a Service without a waypoint to such a pod
// through the pod's waypoint (agent/src/state.ts foreignWaypoint); c's waypoint must not send it
// there directly either, around b's waypoint's L7 policy.
test('a waypoint does not send a Service of its namespace to another namespace\'s pod that has a waypoint of its own (a hand-written EndpointSlice): the endpoint carries the pod\'s waypoint and is left out, named', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('b', { 'weft.dev/dataplane-mode': 'ambient', [USE]: 'wp' }), ns('c', { 'weft.dev/dataplane-mode': 'ambient', [USE]: 'wp' }));
  i.waypoints.push(readyWaypoint('b', 'wp', '10.2.0.2'), readyWaypoint('c', 'wp', '10.2.0.3'));
  i.pods.push(pod('b', 'api', { ip: '10.1.9.2', node: 'node-b' }), pod('c', 'own', { ip: '10.1.9.3', labels: { app: 'own' } }));
  i.services.push(svc('b', 'api', { app: 'api' }, '10.96.2.2'));
  i.services.push({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'alias', namespace: 'c' }, spec: { clusterIP: '10.96.2.50', ports: [{ name: 'http', port: 80, targetPort: 8080 }] } });
  i.endpointSlices.push({ apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: 'alias-1', namespace: 'c', labels: { 'kubernetes.io/service-name': 'alias' } }, addressType: 'IPv4', ports: [{ name: 'http', port: 8080 }], endpoints: [{ addresses: ['10.1.9.2', '10.1.9.3'] }] });
  const { model } = compile(i);
  const eps = model.services.get('c/alias')!.endpoints;
  assert.deepEqual(eps.map((e) => [e.ip, e.waypoint]), [['10.1.9.2', { name: 'wp', namespace: 'b' }], ['10.1.9.3', undefined]], 'b\'s pod carries b\'s waypoint; c\'s own pod nothing');
  assert.equal(model.services.get('b/api')!.endpoints[0]!.waypoint, undefined, 'a pod of the Service\'s own namespace carries nothing');
  const snap = buildSnapshot(waypointConfigOf(model, 'c'), 1);
  assert.deepEqual(resolveService(snap, '10.96.2.50:80', 'alias.c')?.service.endpoints.map((e) => e.ip), ['10.1.9.3']);
  assert.match(snap.issues.map((x) => `${x.object} ${x.path}: ${x.message}`).join('\n'), /^c\/alias endpoints\[0\]: 10\.1\.9\.2 is a pod of namespace b behind waypoint b\/wp; left out/m);
});

// Istio lets a Pod name another namespace's waypoint (istio.io/use-waypoint with
// istio.io/use-waypoint-namespace on the Pod, https://istio.io/latest/docs/ambient/usage/use-waypoint/
// "Configure a pod to use a waypoint", pilot ambient getUseWaypoint reads a Pod's labels as a
// Service's): traffic addressed to the pod goes through that waypoint, which serves it. The
// agent sent it there, but the waypoint's view held only Services bound to it, so it answered 404
// "no service for host". Now the Services of such a pod reach its view for tunnels addressed to
// the pod (with their targetRefs policies), never for their VIPs, and only for pods bound to it.
test('a Pod bound by its own labels to another namespace\'s waypoint (allowed) is served by it for traffic addressed to the pod, with its Service\'s targetRefs policy; the Service\'s VIP and a pod of it not bound there are not served by it (a tunnel naming them is refused)', () => {
  const i = mesh({ from: 'All' });
  i.namespaces = i.namespaces.map((n) => n.metadata.name === 'b' ? ns('b', { 'weft.dev/dataplane-mode': 'ambient', team: 'b' }) : n);
  i.pods = i.pods.map((p) => p.metadata.namespace === 'b' ? pod('b', 'api', { ip: '10.1.8.2', node: 'node-b', labels: { app: 'api', [USE]: 'wp', [USE_NS]: 'a' } }) : p);
  // Another pod of b/api that is not bound to a/wp.
  i.pods.push(pod('b', 'api-2', { ip: '10.1.8.4', node: 'node-b', labels: { app: 'api' } }));
  // d's Service listing b's bound pod (a hand-written EndpointSlice): d's, not the pod's, so not a/wp's to hold.
  i.services.push({ ...svc('d', 'alias', {}, '10.96.1.9'), spec: { clusterIP: '10.96.1.9', ports: [{ name: 'http', port: 80, targetPort: 8080 }] } });
  i.endpointSlices.push({ apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: 'alias-1', namespace: 'd', labels: { 'kubernetes.io/service-name': 'alias' } }, addressType: 'IPv4', ports: [{ name: 'http', port: 8080 }], endpoints: [{ addresses: ['10.1.8.2'] }] });
  const { model, findings } = compile(i);
  assert.deepEqual(findings.filter((f) => f.reason === 'AttachmentDenied' || f.reason === 'WaypointNotFound'), []);
  assert.equal(model.services.get('b/api')?.waypoint, undefined, 'the Service itself uses no waypoint');
  assert.deepEqual(model.workloads.get('uid-b-api')?.waypoint, { name: 'wp', namespace: 'a' });
  const client = agentOn('node-a', model);
  const up = client.resolve(client.localWorkload('10.1.8.9')!, '10.1.8.2', 8080)[0];
  assert.equal(up?.kind === 'hbone' && up.waypoint && `${up.waypoint.namespace}/${up.waypoint.name}`, 'a/wp');

  const cfg = waypointConfigOf(model, 'a');
  const names = (xs: Array<{ namespace: string; name: string }>) => xs.map((x) => `${x.namespace}/${x.name}`).sort();
  assert.deepEqual(names(cfg.services), ['b/api', 'c/api']);
  assert.deepEqual(names(cfg.policies), ['b/no-admin', 'c/no-admin'], 'never a Service without its policy');
  const snap = buildSnapshot(cfg, 1);
  const served = resolveService(snap, '10.1.8.2:8080', '10.1.8.2');
  assert.equal(served && `${served.service.namespace}/${served.service.name} ${served.workloadIp}`, 'b/api 10.1.8.2');
  assert.equal(resolveService(snap, '10.1.8.4:8080', '10.1.8.4'), undefined, 'b\'s pod not bound to a/wp: its own L7 policies are not a/wp\'s to skip');
  assert.equal(resolveService(snap, '10.96.1.2:80', 'api.b'), undefined, 'b/api\'s VIP is not a/wp\'s (its callers go straight to it)');
  assert.equal(resolveService(snap, '10.1.8.4:8080', 'api.b'), undefined, 'Host does not choose it either');

  // The binding refused (a/wp allows only its own namespace): nothing of b reaches a's view.
  const refused = compile({ ...i, waypoints: [readyWaypoint('a', 'wp', '10.2.0.1', { from: 'Selector', selector: { matchLabels: { team: 'c' } } })] }).model;
  const rcfg = waypointConfigOf(refused, 'a');
  assert.deepEqual(names(rcfg.services), ['c/api']);
  assert.equal(resolveService(buildSnapshot(rcfg, 1), '10.1.8.2:8080', '10.1.8.2'), undefined);
  // A pod's binding moving rebinds a's view in one publish.
  assert.deepEqual([...reboundWaypointNamespaces(refused.services, model.services, [], refused.workloads, model.workloads, ['uid-b-api'])], ['a']);
});

// Istio reports a refused binding wherever its labels are (pilot ambient waypoints.go,
// ReportWaypointAttachmentDenied on the object naming the waypoint): a Pod's own labels included.
// A Pod's labels change without a full compile (controller/src/compile-incremental.ts), so the
// finding must follow them there too.
test('a Pod whose own labels name another namespace\'s waypoint that refuses it is a finding (AttachmentDenied at its use-waypoint-namespace label), its traffic failing closed; the finding comes and goes with the label on the incremental compile as on a full one', () => {
  const store = new ObjectStore();
  const i = mesh({ from: 'Selector', selector: { matchLabels: { team: 'b' } } });
  // d's client will name a/wp by its own labels; d is not allowed.
  const client = () => i.pods.find((p) => p.metadata.name === 'client')!;
  const objects = [...i.namespaces, ...i.waypoints, ...i.pods, ...i.services];
  store.apply(objects.map((o, n) => ({ type: 'upsert' as const, object: o as never, resourceVersion: String(n + 1) })));
  const cache = new CompileCache();
  const podDenied = (f: CompileFinding[]) => f.filter((x) => x.reason === 'AttachmentDenied' && x.kind === 'Pod');
  assert.deepEqual(podDenied(compileChanges(store.inputs(), { cache }, store.takeChanges()).findings), []);
  const labelled = { ...client(), metadata: { ...client().metadata, labels: { app: 'client', [USE]: 'wp', [USE_NS]: 'a' } } };
  store.apply([{ type: 'upsert', object: labelled as never, resourceVersion: '100' }]);
  const r = compileChanges(store.inputs(), { cache }, store.takeChanges());
  const denied = podDenied(r.findings);
  assert.deepEqual(denied.map((f) => `${f.kind} ${f.namespace}/${f.name} ${f.path}`), ['Pod d/client metadata.labels["weft.dev/use-waypoint-namespace"]']);
  assert.match(denied[0]!.message, /Waypoint a\/wp does not allow namespace d \(spec\.allowedNamespaces\.selector does not match its labels\).*fails closed/);
  assert.deepEqual(podDenied(compile(store.inputs()).findings), denied, 'as a full compile says');
  assert.ok(r.model.workloads.get('uid-d-client')?.waypoint?.refused !== undefined, 'the pod\'s traffic fails closed');
  // The Waypoint refuses by another rule now: the finding names that rule, not the cached one.
  const wp = i.waypoints.find((w) => w.metadata.name === 'wp')!;
  store.apply([{ type: 'upsert', object: { ...wp, spec: { ...wp.spec, allowedNamespaces: { from: 'Same' } } } as never, resourceVersion: '102' }]);
  const same = podDenied(compileChanges(store.inputs(), { cache }, store.takeChanges()).findings);
  assert.match(same[0]?.message ?? '', /does not allow namespace d \(spec\.allowedNamespaces\.from is Same\)/);
  store.apply([{ type: 'upsert', object: wp as never, resourceVersion: '103' }]);
  compileChanges(store.inputs(), { cache }, store.takeChanges());
  // Only its own labels: a pod inheriting its namespace's refused binding is the Namespace's finding.
  assert.deepEqual(podDenied(compile(mesh(undefined)).findings), []);
  // The label taken off: the finding goes, incrementally too.
  store.apply([{ type: 'upsert', object: client() as never, resourceVersion: '101' }]);
  assert.deepEqual(podDenied(compileChanges(store.inputs(), { cache }, store.takeChanges()).findings), []);
});

// A Service or Namespace naming a Waypoint that does not exist is a finding (WaypointNotFound); a
// Pod's own labels name one just as well (Istio binds a pod by its own istio.io/use-waypoint,
// https://istio.io/latest/docs/ambient/usage/waypoint/#configure-a-pod-to-use-a-waypoint). Its
// unit is cached across compiles by what it depends on, so the Waypoint's coming must reach it:
// the finding comes with the label on the incremental compile and goes when the Waypoint is made.
test('a Pod whose own labels name a Waypoint that does not exist is a finding (WaypointNotFound at its use-waypoint label), its traffic failing closed; it comes with the label on the incremental compile, goes when the Waypoint is created and comes back when it is deleted, as a full compile says', () => {
  const store = new ObjectStore();
  const i = mesh({ from: 'All' });
  const client = () => i.pods.find((p) => p.metadata.name === 'client')!;
  const objects = [...i.namespaces, ...i.waypoints, ...i.pods, ...i.services];
  store.apply(objects.map((o, n) => ({ type: 'upsert' as const, object: o as never, resourceVersion: String(n + 1) })));
  const cache = new CompileCache();
  const notFound = (f: CompileFinding[]) => f.filter((x) => x.reason === 'WaypointNotFound' && x.kind === 'Pod').map((x) => `${x.kind} ${x.namespace}/${x.name} ${x.path}: ${x.message}`);
  const step = () => {
    const r = compileChanges(store.inputs(), { cache }, store.takeChanges());
    assert.deepEqual(notFound(r.findings), notFound(compile(store.inputs()).findings), 'as a full compile says');
    return r;
  };
  assert.deepEqual(notFound(step().findings), []);
  // d's client names d/gone (not there) by its own label, then a/gone across namespaces.
  for (const [labels, wp] of [[{ [USE]: 'gone' }, 'd/gone'], [{ [USE]: 'gone', [USE_NS]: 'a' }, 'a/gone']] as const) {
    store.apply([{ type: 'upsert', object: { ...client(), metadata: { ...client().metadata, labels: { app: 'client', ...labels } } } as never, resourceVersion: String(100 + wp.length) }]);
    const r = step();
    assert.deepEqual(notFound(r.findings), [`Pod d/client metadata.labels["weft.dev/use-waypoint"]: Waypoint ${wp} does not exist; traffic addressed to this pod fails closed until it does`]);
    // Unchanged traffic: addressed to the pod it fails closed at the caller's agent, naming the waypoint.
    const caller = agentOn('node-b', r.model);
    assert.throws(() => caller.resolve(caller.localWorkload('10.1.8.2')!, '10.1.8.9', 8080), (e: unknown) => e instanceof NoRouteError && e.message.includes(`uses waypoint ${wp}, which does not exist; traffic that must pass it fails closed`));
  }
  // The Waypoint created (a change the incremental compile hands to a full one, which keeps the pod's cached unit): the finding goes, and the pod is sent to it.
  store.apply([{ type: 'upsert', object: readyWaypoint('a', 'gone', '10.2.0.7', { from: 'All' }) as never, resourceVersion: '200' }]);
  const made = step();
  assert.deepEqual(notFound(made.findings), []);
  assert.deepEqual(made.findings.filter((f) => f.kind === 'Pod'), []);
  assert.deepEqual(made.model.workloads.get('uid-d-client')?.waypoint, { name: 'gone', namespace: 'a' });
  // Deleted again: it comes back.
  store.apply([{ type: 'delete', kind: 'Waypoint', namespace: 'a', name: 'gone', resourceVersion: '201' }]);
  assert.equal(notFound(step().findings).length, 1);
  // Only its own labels: a pod inheriting its namespace's missing waypoint is not a Pod finding.
  const inherited = mesh({ from: 'All' });
  inherited.waypoints = [];
  assert.deepEqual(notFound(compile(inherited).findings), []);
});

// A finding's path names the field that says it (docs/STYLE.md): a Namespace naming a Waypoint that
// does not exist is the Namespace's finding at its label, in the controller (its pods and Services
// fail closed; weftctl analyze said so alone, and a namespace of pods only had no finding), and a
// Service inheriting it is named at metadata.namespace, as a refused inherited binding is: it
// carries no such label.
test('a Namespace naming a Waypoint that does not exist is a finding of the Namespace\'s (WaypointNotFound at its use-waypoint label), pods only or with Services; a Service inheriting it is named at metadata.namespace, one with its own label at that label', () => {
  const i = mesh({ from: 'All' });
  i.namespaces = i.namespaces.map((n) => n.metadata.name === 'd' ? ns('d', { 'weft.dev/dataplane-mode': 'ambient', [USE]: 'gone' }) : n);
  const notFound = (f: CompileFinding[]) => f.filter((x) => x.reason === 'WaypointNotFound').map((x) => `${x.kind} ${x.namespace}/${x.name} ${x.path}: ${x.message}`).sort();
  assert.deepEqual(notFound(compile(i).findings), ['Namespace /d metadata.labels["weft.dev/use-waypoint"]: Waypoint d/gone does not exist; traffic to the namespace\'s services and pods fails closed until it does']);
  i.services.push(svc('d', 'client', { app: 'client' }, '10.96.1.9'), { ...svc('d', 'own', { app: 'client' }, '10.96.1.10'), metadata: { name: 'own', namespace: 'd', labels: { [USE]: 'gone-too' } } });
  assert.deepEqual(notFound(compile(i).findings), [
    'Namespace /d metadata.labels["weft.dev/use-waypoint"]: Waypoint d/gone does not exist; traffic to the namespace\'s services and pods fails closed until it does',
    'Service d/client metadata.namespace: Waypoint d/gone does not exist (its Namespace\'s labels weft.dev/use-waypoint=gone, weft.dev/use-waypoint-namespace=d); traffic to this service fails closed until it does',
    'Service d/own metadata.labels["weft.dev/use-waypoint"]: Waypoint d/gone-too does not exist; traffic to this service fails closed until it does',
  ]);
});

test('in the controller, a Pod naming a Waypoint that does not exist is counted (weft_controller_findings{kind="Pod",reason="WaypointNotFound"}) and the count goes when the Waypoint is created', async () => {
  const i = mesh({ from: 'All' });
  i.pods = i.pods.map((p) => p.metadata.name === 'client' ? pod('d', 'client', { ip: '10.1.8.9', node: 'node-a', labels: { app: 'client', [USE]: 'gone' } }) : p);
  const registry = new Registry();
  const source = new MemorySource([...i.namespaces, ...i.waypoints, ...i.pods, ...i.services]);
  const controller = new Controller({ source, configServer: new ConfigServer(), registry, debounceMs: 5 });
  const counted = async () => (await registry.getSingleMetric('weft_controller_findings')!.get()).values.find((v) => v.labels['kind'] === 'Pod' && v.labels['reason'] === 'WaypointNotFound')?.value ?? 0;
  try {
    await controller.start();
    await until('the Pod\'s finding counted', async () => await counted() === 1);
    source.upsert(readyWaypoint('d', 'gone', '10.2.0.8'));
    await until('the count gone with the Waypoint\'s coming', async () => await counted() === 0);
  } finally {
    await controller.stop();
  }
});

test('a namespace\'s binding is worked out once per compile, whatever number of its pods and Services inherit it (one WaypointRef, allowed or refused); a pod\'s own label is judged for that pod', () => {
  for (const allowed of [{ from: 'All' as const }, undefined]) {
    const i = mesh(allowed);
    i.pods.push(pod('b', 'api-2', { ip: '10.1.8.4', node: 'node-b', labels: { app: 'api' } }), pod('b', 'own', { ip: '10.1.8.5', node: 'node-b', labels: { app: 'own', [USE]: 'wp', [USE_NS]: 'a' } }));
    const { model } = compile(i);
    const [one, two, own] = ['uid-b-api', 'uid-b-api-2', 'uid-b-own'].map((u) => model.workloads.get(u)!.waypoint);
    assert.ok(one !== undefined && one === two && one === model.services.get('b/api')!.waypoint, 'the same object');
    assert.ok(own !== one);
    assert.deepEqual(own, one);
  }
});

// The model carries a refusal as a code: it is copied onto every workload of a refused namespace,
// sent to every agent and part of each workload's cache key; the sentence (which rule refused it)
// is the finding's, once per object.
test('a refused binding is a short code in the model (WaypointRef.refused NamespaceNotAllowed) on the Service and every workload; its sentence is in the findings, and the agent words its own refusal', () => {
  const { model, findings } = compile(mesh(undefined));
  const refs = [model.services.get('c/api')!.waypoint, ...[...model.workloads.values()].filter((w) => w.namespace === 'c').map((w) => w.waypoint)];
  assert.deepEqual(refs.map((w) => w?.refused), refs.map(() => 'NamespaceNotAllowed'));
  assert.match(findings.find((f) => f.kind === 'Namespace' && f.name === 'c')!.message, /^Waypoint a\/wp does not allow namespace c \(spec\.allowedNamespaces\.from is Same \(the default\)\)/);
  const client = agentOn('node-a', model);
  assert.throws(() => client.resolve(client.localWorkload('10.1.8.9')!, '10.96.1.3', 80), (e: unknown) => e instanceof NoRouteError && e.message === 'service c/api may not use waypoint a/wp: Waypoint a/wp does not allow namespace c (its spec.allowedNamespaces); traffic that must pass a waypoint fails closed');
});
