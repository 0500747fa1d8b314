// The config stream's two answers to "may this agent see that resource": agentView (a whole view,
// for a new subscription or a NACK) and agentHolds (one name at a time, for delta pushes). They must
// agree for every resource type, or a delta push silently withholds (or leaks) what a full one sends.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compile } from '../../controller/src/compile.ts';
import { ObjectStore } from '../../controller/src/store.ts';
import { agentHolds, agentView, buildIndex, modelResources } from '../../controller/src/xds/views.ts';
import { TYPE_URLS, type ResourceType } from '../../lib/xds/protocol.ts';
import { authz, ns, pod, svc } from './controller-fixtures.ts';

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
  const ix = buildIndex(model);
  const all = modelResources(model);
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
