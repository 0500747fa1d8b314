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
import { policySelectsWorkload as policySelects, type AgentConfig } from '../../lib/model/mesh.ts';
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
    assert.equal(table.evaluate('shop/db', { ...request, target: '/admin/x' }).allowed, false);
    assert.equal(table.evaluate('shop/db', { ...request, target: '/' }).allowed, true);
    assert.equal(table.evaluate('shop/direct', { ...request, target: '/admin/x' }).allowed, true);
  }
  assert.equal(model.policies.get('shop/gone')?.scope, 'service', 'a missing waypoint attaches to nothing, never to the namespace');
  assert.deepEqual(model.policies.get('shop/gone')?.targetServices, []);
  assert.deepEqual(findings.filter((f) => f.reason === 'TargetNotFound').map((f) => `${f.name} ${f.path}`), ['gone spec.targetRefs[0].name']);
  const entry = validateObject(authz('shop', 'se', { targetRefs: [{ group: 'networking.istio.io', kind: 'ServiceEntry', name: 'x' }], rules: [{}] }));
  assert.deepEqual(entry.map((i) => i.path).sort(), ['spec.targetRefs[0].group', 'spec.targetRefs[0].kind']);
});

// Istio (pilot/pkg/model/policyattachment.go ShouldAttachPolicy): "waypoints never use selector".
// A waypoint applies only policies attached by targetRefs; a namespace-wide or root-namespace
// policy without them is enforced by the destination's agent (ztunnel), which judges the waypoint
// as the peer. So Istio's pattern of a namespace-wide ALLOW naming only the waypoint's identity
// admits every client through the waypoint, and refuses a client that goes around it.
test('a waypoint applies no namespace-wide or mesh-wide policy (Istio: only targetRefs); the agent judges the waypoint as the peer, so the namespace ALLOW of the waypoint\'s identity admits it and refuses a client that goes around it', () => {
  const inputs = emptyInputs();
  inputs.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'wp' }));
  inputs.pods.push(pod('shop', 'db', { labels: { app: 'db' }, ip: '10.1.8.8' }));
  inputs.services.push(svc('shop', 'db', { app: 'db' }, '10.96.0.61'));
  inputs.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'shop' }, spec: {} });
  inputs.authorizationPolicies.push(
    authz('shop', 'only-waypoint', { action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/shop/sa/wp'] } }] }] }),
    authz('weft-system', 'mesh-deny-debug', { action: 'DENY', rules: [{ to: [{ operation: { ports: ['9999'] } }] }] }),
  );
  const { model } = compile(inputs);
  const table = new PolicyTable([...model.policies.values()]);
  const request = { sourcePrincipal: CLIENT, sourceNamespace: 'other', sourceIp: '10.1.0.1', destinationIp: '10.96.0.61', destinationPort: 80, method: 'GET', target: '/', host: 'db', headers: {} };
  assert.equal(table.evaluate('shop/db', request).allowed, true, 'the waypoint does not judge the client by the namespace ALLOW');
  assert.equal(table.evaluate('shop/db', { ...request, destinationPort: 9999 }).allowed, true, 'nor by the mesh-wide DENY (the agents\' policy)');

  const state = new AgentState('node-a');
  state.apply({ node: 'node-a', workloads: [...model.workloads.values()], services: [...model.services.values()], policies: [...model.policies.values()], peerAuthentications: [], waypoints: [] });
  const lines: string[] = [];
  const log: Logger = { debug() {}, info: (msg) => lines.push(msg), warn: (msg) => lines.push(msg), error: (msg) => lines.push(msg) };
  const delivery = new LocalDelivery({ state, metrics: new AgentMetrics(), log, datapath: { registerPeer() {}, unregisterPeer() { return true; }, tagAgentSocket() {} } });
  const db = state.localWorkload('10.1.8.8')!;
  const viaWaypoint = { sourcePrincipal: 'spiffe://cluster.local/ns/shop/sa/wp', sourceNamespace: 'shop', sourceIp: '10.1.9.9' };
  assert.doesNotThrow(() => delivery.authorize(db, 8080, viaWaypoint, CLIENT), 'the waypoint, carrying the client, is admitted');
  assert.throws(() => delivery.authorize(db, 8080, { sourcePrincipal: CLIENT, sourceNamespace: 'other', sourceIp: '10.1.0.1' }), (e: unknown) => e instanceof DeniedError && e.policy === 'shop/only-waypoint', 'the client going around the waypoint is refused, naming the policy');
  assert.throws(() => delivery.authorize(db, 9999, viaWaypoint, CLIENT), (e: unknown) => e instanceof DeniedError && e.policy === 'weft-system/mesh-deny-debug');
  assert.ok(lines.includes('connection denied'));
});

test('a root-namespace policy targeting GatewayClass istio-waypoint (or weft-waypoint) applies at every waypoint (Istio); elsewhere it applies nowhere and says so; another class name is refused at its field', () => {
  const inputs = emptyInputs();
  inputs.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'wp' }), ns('bank', { 'weft.dev/dataplane-mode': 'ambient' }));
  inputs.services.push(svc('shop', 'db', { app: 'db' }, '10.96.0.61'), svc('bank', 'vault', { app: 'vault' }, '10.96.0.62'));
  inputs.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'shop' }, spec: {} });
  const ref = (name: string) => ({ targetRefs: [{ group: 'gateway.networking.k8s.io', kind: 'GatewayClass', name }], action: 'DENY' as const, rules: [{ to: [{ operation: { paths: ['/debug*'] } }] }] });
  inputs.authorizationPolicies.push(authz('weft-system', 'istio-class', ref('istio-waypoint')), authz('weft-system', 'weft-class', ref('weft-waypoint')), authz('shop', 'not-root', ref('istio-waypoint')));
  for (const p of inputs.authorizationPolicies) assert.deepEqual(validateObject(p), [], p.metadata.name);
  const { model, findings } = compile(inputs);
  for (const name of ['weft-system/istio-class', 'weft-system/weft-class']) assert.deepEqual(model.policies.get(name)?.targetServices, ['shop/db'], `${name}: every Service that uses a waypoint`);
  assert.deepEqual(model.policies.get('shop/not-root')?.targetServices, []);
  assert.deepEqual(findings.filter((f) => f.reason === 'TargetNotFound').map((f) => `${f.namespace}/${f.name} ${f.path}`), ['shop/not-root spec.targetRefs[0].name']);
  const other = validateObject(authz('weft-system', 'other', ref('my-class')));
  assert.deepEqual(other.map((i) => i.path), ['spec.targetRefs[0].name']);
});

// Istio reports a ztunnel-enforced policy with HTTP attributes as ZtunnelAccepted, reason
// UnsupportedValue ("ztunnel does not support HTTP attributes (found: ...)"); Weft's agents are in
// the same place and the controller reports the same reason, at the first such rule.
test('a policy the agents enforce (no targetRefs) that uses HTTP attributes is reported UnsupportedValue, naming the attributes and what it does at L4', () => {
  const deny = mesh(authz('shop', 'no-admin', { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['other'] } }] }, { to: [{ operation: { paths: ['/admin*'], methods: ['POST'] } }] }] }));
  const f = deny.findings.filter((x) => x.reason === 'UnsupportedValue');
  assert.deepEqual(f.map((x) => `${x.name} ${x.path}`), ['no-admin spec.rules[1]']);
  assert.match(f[0]!.message, /found: methods, paths/);
  assert.match(f[0]!.message, /DENY is enforced without its HTTP attributes/);
  const allow = mesh(authz('shop', 'get-only', { selector: { matchLabels: { app: 'db' } }, action: 'ALLOW', rules: [{ to: [{ operation: { methods: ['GET'] } }] }] }));
  assert.match(allow.findings.find((x) => x.reason === 'UnsupportedValue')!.message, /never match/);
  assert.equal(allow.connect(), 'denied by shop/get-only', 'fails closed at the agent');
  const attached = mesh(authz('shop', 'at-waypoint', { targetRefs: [{ group: '', kind: 'Service', name: 'db' }], action: 'ALLOW', rules: [{ to: [{ operation: { methods: ['GET'] } }] }] }));
  assert.equal(attached.findings.filter((x) => x.reason === 'UnsupportedValue').length, 0, 'a waypoint sees HTTP');
});

// Istio's Source.serviceAccounts: `<name>` is in the policy's namespace, `<namespace>/<name>` as
// written (pilot srcServiceAccountGenerator, serviceAccountRegex's defaultNamespace).
test('serviceAccounts: a bare name is the policy\'s namespace\'s, and the agent judges the peer by it', () => {
  const m = mesh(authz('shop', 'from-client', { selector: { matchLabels: { app: 'db' } }, action: 'ALLOW', rules: [{ from: [{ source: { serviceAccounts: ['client', 'other/client'] } }] }, { when: [{ key: 'source.serviceAccount', values: ['api'] }] }] }));
  const p = m.model.policies.get('shop/from-client')!;
  assert.deepEqual(p.rules[0]!.from[0]!.serviceAccounts, ['shop/client', 'other/client']);
  assert.deepEqual(p.rules[1]!.when[0]!.values, ['shop/api']);
  assert.equal(m.connect(), 'allowed', 'spiffe://cluster.local/ns/other/sa/client is other/client');
  const only = mesh(authz('shop', 'only-shop-client', { selector: { matchLabels: { app: 'db' } }, action: 'ALLOW', rules: [{ from: [{ source: { serviceAccounts: ['client'] } }] }] }));
  assert.equal(only.connect(), 'denied by shop/only-shop-client', 'other/client is not shop/client');
});

// Istio writes WaypointAccepted with reason AncestorNotBound ("Service ns/x is not bound to a
// waypoint") for a targetRefs policy whose Service has no waypoint: nothing enforces it there.
test('a targetRefs policy on a Service without a waypoint is reported AncestorNotBound at the target\'s name (Istio WaypointAccepted)', () => {
  const unbound = mesh(authz('shop', 'no-admin', { targetRefs: [{ group: '', kind: 'Service', name: 'db' }], action: 'DENY', rules: [{ to: [{ operation: { paths: ['/admin'] } }] }] }));
  assert.deepEqual(unbound.findings.filter((f) => f.reason === 'AncestorNotBound').map((f) => `${f.name} ${f.path}`), ['no-admin spec.targetRefs[0].name']);
  const inputs = emptyInputs();
  inputs.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'wp' }));
  inputs.services.push(svc('shop', 'db', { app: 'db' }, '10.96.0.60'));
  inputs.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'shop' }, spec: {} });
  inputs.authorizationPolicies.push(authz('shop', 'no-admin', { targetRefs: [{ group: '', kind: 'Service', name: 'db' }], action: 'DENY', rules: [{ to: [{ operation: { paths: ['/admin'] } }] }] }));
  assert.equal(compile(inputs).findings.filter((f) => f.reason === 'AncestorNotBound').length, 0);
});

// A tenant's policy reaching into another namespace: Istio refuses a targetRef naming any namespace
// (validatePolicyTargetReference: "targetRef namespace must not be set; cross namespace referencing
// is not supported"; the CRD's CEL rule `self.size() == 0` lets only "" through), so a targetRefs
// policy attaches to targets of its own namespace only; without one it applies to its own
// namespace's workloads, whatever labels another namespace's pods carry.
test('a policy of namespace evil cannot attach to or select shop\'s workloads: a targetRef naming shop is refused at its namespace field (Istio), an empty one is the policy\'s own, and a selector matches only evil\'s pods', () => {
  for (const kind of ['AuthorizationPolicy', 'RequestAuthentication'] as const) {
    const spec = kind === 'AuthorizationPolicy' ? { action: 'ALLOW', rules: [{}] } : { jwtRules: [{ issuer: 'https://idp.example', jwksUri: 'https://idp.example/jwks' }] };
    const obj = (namespace: string) => ({ apiVersion: 'weft.dev/v1alpha1', kind, metadata: { name: 'reach', namespace: 'evil' }, spec: { ...spec, targetRefs: [{ group: '', kind: 'Service', name: 'db', namespace }] } });
    const issues = validateObject(obj('shop'));
    assert.deepEqual(issues.map((i) => i.path), ['spec.targetRefs[0].namespace'], kind);
    assert.match(issues[0]!.message, /cross-namespace referencing is not supported/);
    assert.deepEqual(validateObject(obj('')), [], `${kind}: an empty namespace is the policy's own (Istio's CEL rule takes it)`);
  }
  // Selector and namespace policies of evil, matching shop/db's labels: shop's agent is not sent them and they do not select it.
  const inputs = emptyInputs();
  inputs.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), ns('evil', { 'weft.dev/dataplane-mode': 'ambient' }));
  inputs.pods.push(pod('shop', 'db', { labels: { app: 'db' }, ip: '10.1.8.8', node: 'node-b' }), pod('evil', 'lookalike', { labels: { app: 'db' }, ip: '10.1.8.9' }));
  inputs.authorizationPolicies.push(authz('evil', 'sel', { selector: { matchLabels: { app: 'db' } }, action: 'DENY', rules: [{}] }), authz('evil', 'ns', { action: 'DENY', rules: [{}] }));
  const { model } = compile(inputs);
  const db = model.workloads.get('uid-shop-db')!;
  assert.deepEqual([...model.policies.values()].filter((p) => policySelects(p, db)).map((p) => p.name), []);
  assert.deepEqual([...model.policies.values()].filter((p) => policySelects(p, model.workloads.get('uid-evil-lookalike')!)).map((p) => p.name).sort(), ['ns', 'sel']);
});
