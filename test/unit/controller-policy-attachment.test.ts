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
  const wrongKind = validateObject(authz('shop', 'gw', { targetRef: { group: 'gateway.networking.k8s.io', kind: 'Gateway', name: 'wp' }, rules: [{}] }));
  assert.deepEqual(wrongKind.map((i) => i.path).sort(), ['spec.targetRef.group', 'spec.targetRef.kind']);
});
