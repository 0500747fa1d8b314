// How an AuthorizationPolicy attaches, against Istio's rules
// (https://istio.io/latest/docs/reference/config/security/authorization-policy/ and istio/istio
// pkg/config/validation ValidateAuthorizationPolicy, validateOneOfSelectorType; model.GetTargetRefs):
// `targetRefs` counts only when it lists something, so `targetRefs: []` (what a template renders for
// "none") leaves a selector or namespace policy, enforced by the node agents; the deprecated singular
// `targetRef` is one target; selector, targetRef and a non-empty targetRefs exclude one another.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DeniedError, LocalDelivery } from '../../agent/src/delivery.ts';
import { AgentMetrics } from '../../agent/src/metrics.ts';
import { AgentState } from '../../agent/src/state.ts';
import { compile, emptyInputs } from '../../controller/src/compile.ts';
import type { Logger } from '../../lib/log.ts';
import type { AgentConfig } from '../../lib/model/mesh.ts';
import type { AuthorizationPolicy } from '../../lib/model/objects.ts';
import { validateObject } from '../../lib/model/validate.ts';
import { PolicyTable } from '../../lib/policy/authz.ts';
import { authz, ns, pod, svc } from './controller-fixtures.ts';

const CLIENT = 'spiffe://cluster.local/ns/other/sa/client';

/** shop/db (app=db) behind Service db, and one policy; the agent of its node judges a connection from `CLIENT`. */
function mesh(policy: AuthorizationPolicy) {
  const inputs = emptyInputs();
  inputs.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  inputs.pods.push(pod('shop', 'db', { labels: { app: 'db' }, ip: '10.1.8.8' }));
  inputs.services.push(svc('shop', 'db', { app: 'db' }, '10.96.0.60'));
  inputs.authorizationPolicies.push(policy);
  const { model, findings } = compile(inputs);
  const state = new AgentState('node-a');
  const config: AgentConfig = { node: 'node-a', workloads: [...model.workloads.values()], services: [...model.services.values()], policies: [...model.policies.values()], peerAuthentications: [], waypoints: [] };
  state.apply(config);
  const lines: Array<{ msg: string; fields: Record<string, unknown> | undefined }> = [];
  const log: Logger = { debug() {}, info: (msg, fields) => lines.push({ msg, fields }), warn: (msg, fields) => lines.push({ msg, fields }), error: (msg, fields) => lines.push({ msg, fields }) };
  const metrics = new AgentMetrics();
  const delivery = new LocalDelivery({ state, metrics, log, datapath: { registerPeer() {}, unregisterPeer() { return true; }, tagAgentSocket() {} } });
  const connect = (): string => {
    try {
      delivery.authorize(state.localWorkload('10.1.8.8')!, 8080, { sourcePrincipal: CLIENT, sourceNamespace: 'other', sourceIp: '10.1.0.1' });
      return 'allowed';
    } catch (err) {
      if (!(err instanceof DeniedError)) throw err;
      return `denied by ${err.policy}`;
    }
  };
  return { model, findings, metrics, lines, connect };
}

const policyDenials = async (m: AgentMetrics): Promise<number> =>
  (await m.denied.get()).values.filter((v) => v.labels['reason'] === 'policy').reduce((n, v) => n + v.value, 0);

test('a DENY with an empty targetRefs list is a namespace (or selector) policy, as in Istio, not one attached to nothing: the agent refuses, counts and names it', async () => {
  for (const spec of [
    { targetRefs: [], action: 'DENY' as const, rules: [{}] },
    { targetRefs: [], selector: { matchLabels: { app: 'db' } }, action: 'DENY' as const, rules: [{}] },
  ]) {
    const p = authz('shop', 'deny-all', spec);
    assert.deepEqual(validateObject(p), [], JSON.stringify(spec));
    const m = mesh(p);
    assert.equal(m.model.policies.get('shop/deny-all')?.scope, spec.selector ? 'workload' : 'namespace');
    assert.equal(m.connect(), 'denied by shop/deny-all');
    assert.equal(await policyDenials(m.metrics), 1, 'counted');
    assert.equal(m.lines.find((l) => l.msg === 'connection denied')?.fields?.['policy'], 'shop/deny-all', 'named');
  }
});

test('the singular targetRef (Istio\'s deprecated field) attaches to its Service like targetRefs; combined with a selector or targetRefs it is refused at its field', () => {
  const single = authz('shop', 'at-waypoint', { targetRef: { group: '', kind: 'Service', name: 'db' }, action: 'DENY', rules: [{}] });
  assert.deepEqual(validateObject(single), []);
  const m = mesh(single);
  assert.deepEqual(m.model.policies.get('shop/at-waypoint')?.targetServices, ['shop/db']);
  assert.equal(m.model.policies.get('shop/at-waypoint')?.scope, 'service');
  const missing = mesh(authz('shop', 'gone', { targetRef: { group: '', kind: 'Service', name: 'gone' }, action: 'DENY', rules: [{}] }));
  assert.deepEqual(missing.findings.filter((f) => f.reason === 'TargetNotFound').map((f) => f.path), ['spec.targetRef.name']);

  const both = validateObject(authz('shop', 'both', { targetRef: { group: '', kind: 'Service', name: 'db' }, targetRefs: [{ group: '', kind: 'Service', name: 'db' }], rules: [{}] }));
  assert.deepEqual(both.map((i) => i.path), ['spec.targetRef']);
  const withSelector = validateObject(authz('shop', 'sel', { targetRef: { group: '', kind: 'Service', name: 'db' }, selector: { matchLabels: { app: 'db' } }, rules: [{}] }));
  assert.deepEqual(withSelector.map((i) => i.path), ['spec.targetRef']);
  const wrongKind = validateObject(authz('shop', 'se', { targetRef: { group: 'networking.istio.io', kind: 'ServiceEntry', name: 'x' }, rules: [{}] }));
  assert.deepEqual(wrongKind.map((i) => i.path).sort(), ['spec.targetRef.group', 'spec.targetRef.kind']);
});

// Istio attaches a policy to a whole waypoint with targetRefs to its Gateway
// (https://istio.io/latest/docs/ambient/usage/l7-features/#attach-to-the-entire-waypoint-proxy:
// "it applies to all traffic enrolled to use it"). Weft's waypoint is a Waypoint, so the same
// attachment names it (weft.dev Waypoint), or names it as Istio writes it (a Gateway of that name).
test('targetRefs to a Waypoint (or, as Istio writes it, a Gateway of that name) attaches the policy to every Service that uses the waypoint, and the waypoint refuses what it denies', () => {
  const inputs = emptyInputs();
  inputs.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'wp' }));
  const direct = svc('shop', 'direct', { app: 'direct' }, '10.96.0.63');
  direct.metadata.labels = { 'weft.dev/use-waypoint': 'none' };
  inputs.services.push(svc('shop', 'db', { app: 'db' }, '10.96.0.61'), svc('shop', 'web', { app: 'web' }, '10.96.0.62'), direct);
  inputs.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'shop' }, spec: {} });
  const refs = [{ group: 'weft.dev', kind: 'Waypoint', name: 'wp' }, { group: 'gateway.networking.k8s.io', kind: 'Gateway', name: 'wp' }];
  refs.forEach((ref, i) => inputs.authorizationPolicies.push(authz('shop', `no-admin-${i}`, { targetRefs: [ref], action: 'DENY', rules: [{ to: [{ operation: { paths: ['/admin*'] } }] }] })));
  inputs.authorizationPolicies.push(authz('shop', 'gone', { targetRefs: [{ group: 'weft.dev', kind: 'Waypoint', name: 'gone' }], action: 'DENY', rules: [{}] }));
  for (const p of inputs.authorizationPolicies) assert.deepEqual(validateObject(p), [], p.metadata.name);
  const { model, findings } = compile(inputs);
  for (const name of ['no-admin-0', 'no-admin-1']) {
    const p = model.policies.get(`shop/${name}`)!;
    assert.equal(p.scope, 'service');
    assert.deepEqual(p.targetServices, ['shop/db', 'shop/web'], `${name}: the Services that use wp, not the one opted out`);
    const table = new PolicyTable([p]);
    const request = { sourcePrincipal: CLIENT, sourceNamespace: 'other', sourceIp: '10.1.0.1', destinationIp: '10.96.0.61', destinationPort: 80, method: 'GET', host: 'db', headers: {} };
    assert.equal(table.evaluate('shop/db', { ...request, path: '/admin/x' }).allowed, false);
    assert.equal(table.evaluate('shop/db', { ...request, path: '/' }).allowed, true);
    assert.equal(table.evaluate('shop/direct', { ...request, path: '/admin/x' }).allowed, true);
  }
  assert.equal(model.policies.get('shop/gone')?.scope, 'service', 'a missing waypoint attaches to nothing, never to the namespace');
  assert.deepEqual(model.policies.get('shop/gone')?.targetServices, []);
  assert.deepEqual(findings.filter((f) => f.reason === 'TargetNotFound').map((f) => `${f.name} ${f.path}`), ['gone spec.targetRefs[0].name']);
  const entry = validateObject(authz('shop', 'se', { targetRefs: [{ group: 'networking.istio.io', kind: 'ServiceEntry', name: 'x' }], rules: [{}] }));
  assert.deepEqual(entry.map((i) => i.path).sort(), ['spec.targetRefs[0].group', 'spec.targetRefs[0].kind']);
});
