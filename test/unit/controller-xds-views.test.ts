// The config stream's two answers to "may this client see that resource": agentView/waypointView (a
// whole view, for a new subscription or a NACK) and agentHolds/waypointHolds (one name at a time, for
// delta pushes). They must agree for every resource type, or a delta push silently withholds (or
// leaks) what a full one sends.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compile } from '../../controller/src/compile.ts';
import { ObjectStore } from '../../controller/src/store.ts';
import { AddressOwnerTable } from '../../controller/src/xds/address-owners.ts';
import { agentHolds, agentView, buildIndex, modelResources, waypointHolds, waypointView } from '../../controller/src/xds/views.ts';
import type { MeshModel } from '../../lib/model/mesh.ts';
import { TYPE_URLS, type ResourceType } from '../../lib/xds/protocol.ts';
import { authz, ns, pod, svc, waypoint } from './controller-fixtures.ts';

/** The model's resources and the address-owner table, indexed as the config server does. */
function published(model: MeshModel) {
  const owners = new AddressOwnerTable();
  owners.update(undefined, model.workloads, model.workloads.keys());
  const all: Record<ResourceType, ReadonlyMap<string, unknown>> = { ...modelResources(model), AddressOwner: owners.table };
  return { ix: buildIndex(model, owners.table), all };
}

test('agentHolds answers exactly as agentView, for every resource type and node', () => {
  const store = new ObjectStore();
  const objects: object[] = [
    ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }),
    ns('plain'),
    pod('shop', 'web', { node: 'node-a' }),
    pod('shop', 'api', { node: 'node-b' }),
    pod('plain', 'legacy', { node: 'node-b' }),
    svc('shop', 'web', { app: 'web' }, '10.96.0.20'),
    svc('shop', 'api', { app: 'api' }, '10.96.0.21'),
    authz('shop', 'web-only', { selector: { matchLabels: { app: 'web' } }, rules: [{ from: [{ source: { principals: ['cluster.local/ns/shop/sa/api'] } }] }] }),
    authz('shop', 'api-only', { selector: { matchLabels: { app: 'api' } }, action: 'DENY', rules: [{ to: [{ operation: { ports: ['9000'] } }] }] }),
    { apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'strict-web', namespace: 'shop' }, spec: { selector: { matchLabels: { app: 'web' } }, mtls: { mode: 'STRICT' } } },
    { apiVersion: 'weft.dev/v1alpha1', kind: 'TrafficPolicy', metadata: { name: 'web', namespace: 'shop' }, spec: { targetRef: { group: '', kind: 'Service', name: 'web' }, timeouts: { request: '1s' } } },
  ];
  const r = store.apply(objects.map((o, i) => ({ type: 'upsert' as const, object: o as never, resourceVersion: String(i + 1) })));
  assert.deepEqual(r.rejections, []);
  const model = compile(store.inputs()).model;
  const { ix, all } = published(model);
  for (const node of ['node-a', 'node-b', 'node-c']) {
    for (const type of Object.keys(TYPE_URLS) as ResourceType[]) {
      const view = agentView(ix, node, type);
      const expected = [...(view ?? all[type].keys())].sort();
      const held = [...all[type].keys()].filter((k) => agentHolds(ix, node, type, k)).sort();
      assert.deepEqual(held, expected, `${type} on ${node}`);
    }
  }
  // The fixture exercises every type that has resources.
  assert.ok(all.TrafficPolicy.size > 0 && all.AuthorizationPolicy.size > 0 && all.PeerAuthentication.size > 0);
});

test('waypointHolds answers exactly as waypointView, for every resource type and namespace', () => {
  const store = new ObjectStore();
  const route = (namespace: string, name: string, parent: string, backends: Array<{ name: string; namespace?: string }>, parentNamespace?: string) => ({
    apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name, namespace },
    spec: { parentRefs: [{ group: '', kind: 'Service', name: parent, ...(parentNamespace ? { namespace: parentNamespace } : {}) }], rules: [{ backendRefs: backends.map((b) => ({ ...b, port: 80 })) }] },
  });
  const objects: object[] = [
    ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'waypoint' }),
    ns('web', { 'weft.dev/dataplane-mode': 'ambient' }),
    ns('plain'),
    waypoint('shop', 'waypoint'),
    pod('shop', 'reviews', { node: 'node-a' }),
    pod('web', 'front', { node: 'node-b' }),
    pod('plain', 'legacy', { node: 'node-b' }),
    svc('shop', 'reviews', { app: 'reviews' }, '10.96.0.20'),
    svc('shop', 'ratings', { app: 'ratings' }, '10.96.0.21'),
    svc('web', 'front', { app: 'front' }, '10.96.0.22'),
    svc('web', 'other', { app: 'other' }, '10.96.0.23'),
    svc('web', 'api', { app: 'api' }, '10.96.0.24'),
    // A route of shop's sending to a Service of web's: shop's waypoint sees web/front, not web/other.
    { apiVersion: 'gateway.networking.k8s.io/v1beta1', kind: 'ReferenceGrant', metadata: { name: 'shop', namespace: 'web' }, spec: { from: [{ group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', namespace: 'shop' }], to: [{ group: '', kind: 'Service' }] } },
    route('shop', 'reviews', 'reviews', [{ name: 'reviews' }, { name: 'front', namespace: 'web' }]),
    // web's consumer route for shop/ratings (served by shop's waypoint), sending to web/api.
    route('web', 'ratings-to-api', 'ratings', [{ name: 'api' }], 'shop'),
    authz('shop', 'reviews-only', { targetRefs: [{ group: '', kind: 'Service', name: 'reviews' }], rules: [{ from: [{ source: { principals: ['cluster.local/ns/web/sa/front'] } }] }] }),
    authz('weft-system', 'mesh-wide', { action: 'DENY', rules: [{ to: [{ operation: { ports: ['9999'] } }] }] }),
    authz('web', 'front-admin', { action: 'DENY', targetRefs: [{ group: '', kind: 'Service', name: 'front' }], rules: [{ to: [{ operation: { paths: ['/admin'] } }] }] }),
    authz('web', 'api-admin', { action: 'DENY', targetRefs: [{ group: '', kind: 'Service', name: 'api' }], rules: [{ to: [{ operation: { paths: ['/admin'] } }] }] }),
    authz('web', 'other-admin', { action: 'DENY', targetRefs: [{ group: '', kind: 'Service', name: 'other' }], rules: [{ to: [{ operation: { paths: ['/admin'] } }] }] }),
    authz('weft-system', 'every-waypoint', { targetRefs: [{ group: 'gateway.networking.k8s.io', kind: 'GatewayClass', name: 'istio-waypoint' }], action: 'DENY', rules: [{ to: [{ operation: { paths: ['/debug*'] } }] }] }),
    { apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'strict', namespace: 'shop' }, spec: { mtls: { mode: 'STRICT' } } },
    { apiVersion: 'weft.dev/v1alpha1', kind: 'TrafficPolicy', metadata: { name: 'reviews', namespace: 'shop' }, spec: { targetRef: { group: '', kind: 'Service', name: 'reviews' }, timeouts: { request: '1s' } } },
  ];
  const r = store.apply(objects.map((o, i) => ({ type: 'upsert' as const, object: o as never, resourceVersion: String(i + 1) })));
  assert.deepEqual(r.rejections, []);
  const model = compile(store.inputs()).model;
  const { ix, all } = published(model);
  for (const namespace of ['shop', 'web', 'plain']) {
    for (const type of Object.keys(TYPE_URLS) as ResourceType[]) {
      const view = waypointView(ix, namespace, type);
      const expected = [...(view ?? all[type].keys())].sort();
      const held = [...all[type].keys()].filter((k) => waypointHolds(ix, namespace, type, k)).sort();
      assert.deepEqual(held, expected, `${type} in ${namespace}`);
    }
  }
  // The fixture exercises what makes the answers differ: a cross-namespace backend, a mesh-wide policy, every address.
  assert.ok(waypointHolds(ix, 'shop', 'Service', 'web/front') && !waypointHolds(ix, 'shop', 'Service', 'web/other'));
  assert.ok(all.Route.size > 0 && all.TrafficPolicy.size > 0 && all.PeerAuthentication.size > 0);
  // Istio (policyattachment.go): a waypoint gets only policies attached by targetRefs, among them a
  // root-namespace GatewayClass target; a mesh-wide policy without targetRefs is the agents'.
  assert.ok(waypointHolds(ix, 'shop', 'AuthorizationPolicy', 'weft-system/every-waypoint'), 'a GatewayClass target reaches the waypoints');
  assert.ok(waypointHolds(ix, 'shop', 'AuthorizationPolicy', 'shop/reviews-only'));
  // Review of branch tc, finding 7: a request a consumer route sends to a Service of another
  // namespace is judged at this waypoint by that Service's policies, as sent; they were not sent
  // here, so the check found none and allowed. A consumer route backend's targetRef policies are sent.
  assert.ok(waypointHolds(ix, 'shop', 'AuthorizationPolicy', 'web/api-admin'), 'the policy of a consumer route backend of another namespace (before: not sent)');
  // Second review of branch tc: a producer-routed request is judged as addressed (proxy.ts
  // authorize), so its backends' policies are never evaluated here; they were sent all the same,
  // another namespace's policy contents read by this waypoint's namespace for nothing.
  assert.ok(!waypointHolds(ix, 'shop', 'AuthorizationPolicy', 'web/front-admin'), 'not that of a producer route\'s backend (before: sent)');
  assert.ok(waypointHolds(ix, 'shop', 'Service', 'web/front'), 'the producer route\'s backend Service is still sent, to send to it');
  assert.ok(!waypointHolds(ix, 'shop', 'AuthorizationPolicy', 'web/other-admin'), 'not that of a Service no route sends to');
  assert.ok(!waypointHolds(ix, 'shop', 'AuthorizationPolicy', 'weft-system/mesh-wide') && !waypointHolds(ix, 'web', 'AuthorizationPolicy', 'weft-system/mesh-wide'), 'a mesh-wide policy without targetRefs reaches no waypoint');
  assert.equal([...all.AddressOwner.keys()].filter((k) => waypointHolds(ix, 'web', 'AddressOwner', k)).length, 3, 'every workload address, enrolled or not');
});

// GEP-709 (ReferenceGrant): a reference into another namespace holds only with the consent of that
// namespace. A route's backend the controller refused for want of a grant gets 500 at the waypoint,
// which never looks its Service up (waypoint/src/config.ts backendService); sent anyway, that
// Service (its addresses, ports, endpoints and their identities) reached a waypoint of the route's
// parent's namespace, whose config a tenant of that namespace can read (its waypoint runs there):
// any tenant named another namespace's Service in a route to read it.
test('a waypoint is not sent a Service its routes name only as a backend refused for want of a ReferenceGrant; a granted one it is', () => {
  const store = new ObjectStore();
  const route = (backendNs: string, name: string) => ({
    apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name, namespace: 'evil' },
    spec: { parentRefs: [{ group: '', kind: 'Service', name: 'front' }], rules: [{ backendRefs: [{ name: 'ledger', namespace: backendNs, port: 80 }], filters: [{ type: 'RequestMirror', requestMirror: { backendRef: { name: 'vault', namespace: backendNs, port: 80 } } }] }] },
  });
  const objects: object[] = [
    ns('evil', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'wp' }), ns('bank', { 'weft.dev/dataplane-mode': 'ambient' }), ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }),
    waypoint('evil', 'wp'), pod('evil', 'front'), svc('evil', 'front', { app: 'front' }, '10.96.0.30'),
    pod('bank', 'ledger'), svc('bank', 'ledger', { app: 'ledger' }, '10.96.0.31'), pod('bank', 'vault'), svc('bank', 'vault', { app: 'vault' }, '10.96.0.32'),
    pod('shop', 'ledger'), svc('shop', 'ledger', { app: 'ledger' }, '10.96.0.33'), pod('shop', 'vault'), svc('shop', 'vault', { app: 'vault' }, '10.96.0.34'),
    route('bank', 'peek'), route('shop', 'granted'),
    { apiVersion: 'gateway.networking.k8s.io/v1beta1', kind: 'ReferenceGrant', metadata: { name: 'evil-routes', namespace: 'shop' }, spec: { from: [{ group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', namespace: 'evil' }], to: [{ group: '', kind: 'Service' }] } },
  ];
  const r = store.apply(objects.map((o, i) => ({ type: 'upsert' as const, object: o as never, resourceVersion: String(i + 1) })));
  assert.deepEqual(r.rejections, []);
  const model = compile(store.inputs()).model;
  assert.match(model.routes.get('evil/peek/HTTPRoute/evil/front')!.rules[0]!.backends[0]!.refused ?? '', /no ReferenceGrant in namespace bank/);
  const { ix } = published(model);
  const view = [...waypointView(ix, 'evil', 'Service')!].sort();
  assert.deepEqual(view, ['evil/front', 'shop/ledger', 'shop/vault'], 'bank\'s Services are not sent (before: bank/ledger and bank/vault were)');
  for (const name of ['bank/ledger', 'bank/vault']) assert.equal(waypointHolds(ix, 'evil', 'Service', name), false, name);
  for (const name of ['shop/ledger', 'shop/vault']) assert.equal(waypointHolds(ix, 'evil', 'Service', name), true, name);
});
