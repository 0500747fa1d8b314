// Istio's own tests of ambient L4 authorization (what ztunnel enforces, without a waypoint), translated
// into Weft's: the node agent plays ztunnel's role. Each row cites its source in istio/istio or
// istio/ztunnel:
//   - tests/integration/ambient/baseline_test.go TestAuthorizationL4, TestPeerAuthentication;
//   - pilot/pkg/serviceregistry/ambient/authorization.go (convertAuthorizationPolicy, handleRule,
//     convertPeerAuthentication) and authorization_test.go TestConvertAuthorizationPolicyStatus;
//   - pilot/pkg/serviceregistry/ambient/testdata/peer-authn-*.yaml (TestPeerAuthentication there);
//   - pilot/pkg/serviceregistry/ambient/workloads.go buildWorkloadPolicies (which policies select a workload);
//   - pkg/config/validation/validation.go ValidateAuthorizationPolicy;
//   - ztunnel src/rbac.rs (Authorization::matches and its tests).
// Every row runs the controller's compile and the agent's judgement (LocalDelivery), so selection
// (namespace, selector, root namespace, targetRefs) is part of what is checked. Where Weft
// deliberately differs (fail closed where ztunnel's conversion drops a rule), the row says so and
// docs/SECURITY.md gives the reason.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Registry } from 'prom-client';
import { DeniedError, LocalDelivery } from '../../agent/src/delivery.ts';
import { AgentMetrics } from '../../agent/src/metrics.ts';
import { AgentState } from '../../agent/src/state.ts';
import { MemorySource } from '../../controller/src/sources/memory.ts';
import type { AgentConfig } from '../../lib/model/mesh.ts';
import { validateObject } from '../../lib/model/validate.ts';
import { authz, ns, pod } from './controller-fixtures.ts';
import { startHarness, until } from './controller-harness.ts';

const FRONTEND = 'spiffe://cluster.local/ns/web/sa/frontend';
const OTHER = 'spiffe://cluster.local/ns/other/sa/client';

/** The agent's verdict on a connection to shop/db:8080 from `principal` under `config`. */
function judge(config: AgentConfig, principal: string): string {
  const state = new AgentState('node-a');
  state.apply(config);
  const log = { debug() {}, info() {}, warn() {}, error() {} };
  const delivery = new LocalDelivery({ state, metrics: new AgentMetrics(), log, datapath: { registerPeer() {}, unregisterPeer() { return true; }, tagAgentSocket() {} } });
  try {
    delivery.authorize(state.localWorkload('10.1.8.8')!, 8080, { sourcePrincipal: principal, sourceIp: '10.1.0.1' });
    return 'allowed';
  } catch (err) {
    if (!(err instanceof DeniedError)) throw err;
    return 'denied';
  }
}

// pkg/config/validation/validation.go ValidateAuthorizationPolicy: "`from` must not be empty" and
// "`to` must not be empty" (a rule's `from: []` or `to: []`). Weft read an empty list as no
// `from` at all, any source: a template rendering "allowed callers" as an empty list turned an ALLOW
// into allow-all. Istio's webhook refuses the object, so the version before it stays in force.
test('an ALLOW whose rule has from: [] or to: [] is refused at its field, counted and logged, and the last good version keeps refusing other callers (Istio ValidateAuthorizationPolicy)', async () => {
  const good = authz('shop', 'lockdown', { selector: { matchLabels: { app: 'db' } }, action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/web/sa/frontend'] } }] }] });
  const source = new MemorySource([ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), pod('shop', 'db', { labels: { app: 'db' }, ip: '10.1.8.8' }), good]);
  const registry = new Registry();
  const h = await startHarness(source, undefined, { registry });
  try {
    const agent = h.agent('node-a');
    await until('the policy reaches the agent', () => agent.snapshot?.policies.some((p) => p.name === 'lockdown') === true);
    assert.equal(judge(agent.snapshot!, OTHER), 'denied');
    const cases = [
      { rules: [{ from: [] }], path: 'spec.rules[0].from' },
      { rules: [{ from: [{ source: { principals: ['cluster.local/ns/web/sa/frontend'] } }] }, { to: [] }], path: 'spec.rules[1].to' },
    ];
    for (const [i, c] of cases.entries()) {
      const bad = authz('shop', 'lockdown', { selector: { matchLabels: { app: 'db' } }, action: 'ALLOW', rules: c.rules });
      bad.metadata.generation = i + 2;
      assert.deepEqual(validateObject(bad).map((x) => x.path), [c.path]);
      source.upsert(bad);
      await until(`${c.path} refused in the status`, () => source.statuses.get('AuthorizationPolicy/shop/lockdown')?.reason === 'Invalid' && source.statuses.get('AuthorizationPolicy/shop/lockdown')?.path === c.path);
      assert.match(source.statuses.get('AuthorizationPolicy/shop/lockdown')!.message, /must not be an empty list/);
      await h.controller.settled();
      assert.equal(judge(agent.snapshot!, OTHER), 'denied', `${c.path}: the caller the last good version refuses is still refused`);
      assert.equal(judge(agent.snapshot!, FRONTEND), 'allowed');
    }
    const rejected = await registry.getSingleMetric('weft_controller_rejected_objects_total')?.get();
    assert.equal(rejected?.values.find((v) => v.labels.kind === 'AuthorizationPolicy')?.value, 2);
    assert.equal(h.logs.filter((l) => l.msg.startsWith('invalid object refused') && l.fields.object === 'AuthorizationPolicy/shop/lockdown').length, 2);
  } finally {
    await h.close();
  }
});
