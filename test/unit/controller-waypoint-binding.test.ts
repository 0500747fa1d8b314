// Which waypoint a Service's or a pod's traffic goes through, against Istio's rules
// (https://istio.io/latest/docs/ambient/usage/waypoint/#useawaypoint; istio/istio pilot ambient
// getUseWaypoint): the object's own use-waypoint label wins over its namespace's, and the value
// `none` means no waypoint, on the object (an opt-out of its namespace's waypoint) as on the
// namespace. The compiled model is taken through the agent's resolver, which decides where a
// captured connection goes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AgentState, NoRouteError } from '../../agent/src/state.ts';
import { compile, emptyInputs } from '../../controller/src/compile.ts';
import { forwardedFor } from '../../lib/hbone/index.ts';
import { tunnelClient } from '../../lib/hbone/forwarded.ts';
import type { AgentConfig } from '../../lib/model/mesh.ts';
import type { Waypoint } from '../../lib/model/objects.ts';
import { ns, pod, svc } from './controller-fixtures.ts';

function readyWaypoint(namespace: string, name: string, address: string): Waypoint {
  return { apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name, namespace }, spec: {}, status: { addresses: [{ value: address }], conditions: [{ type: 'Ready', status: 'True', reason: 'Running', message: '' }] } };
}

/** Namespace `a` uses waypoint `wp`; `opted` (Service and pod) say `none`, `plain` (Service and pod) say nothing. */
function meshWithOptOut() {
  const i = emptyInputs();
  i.namespaces.push(ns('a', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'wp' }));
  const opted = svc('a', 'opted', { app: 'opted' }, '10.96.0.21');
  opted.metadata.labels = { 'weft.dev/use-waypoint': 'none' };
  i.services.push(opted, svc('a', 'plain', { app: 'plain' }, '10.96.0.22'));
  i.pods.push(
    pod('a', 'opted', { labels: { app: 'opted', 'weft.dev/use-waypoint': 'none' }, ip: '10.1.5.1', node: 'node-b' }),
    pod('a', 'plain', { labels: { app: 'plain' }, ip: '10.1.5.2', node: 'node-b' }),
    pod('a', 'client', { labels: { app: 'client' }, ip: '10.1.5.3' }),
  );
  i.waypoints.push(readyWaypoint('a', 'wp', '10.2.0.1'));
  const result = compile(i);
  const state = new AgentState('node-a');
  const config: AgentConfig = { node: 'node-a', workloads: [...result.model.workloads.values()], services: [...result.model.services.values()], policies: [], peerAuthentications: [], waypoints: [...result.model.waypoints.values()] };
  state.apply(config);
  const client = state.localWorkload('10.1.5.3')!;
  return { ...result, state, client };
}

test('use-waypoint "none" on a Service or a pod opts it out of its namespace\'s waypoint, as in Istio, instead of failing closed on a waypoint named "none"', () => {
  const m = meshWithOptOut();
  assert.equal(m.model.services.get('a/opted')?.waypoint, undefined);
  assert.deepEqual(m.model.services.get('a/plain')?.waypoint, { name: 'wp', namespace: 'a' });
  const byName = new Map([...m.model.workloads.values()].map((w) => [w.name, w]));
  assert.equal(byName.get('opted')?.waypoint, undefined);
  assert.deepEqual(byName.get('plain')?.waypoint, { name: 'wp', namespace: 'a' });
  assert.deepEqual(m.findings.filter((f) => f.reason === 'WaypointNotFound'), [], 'no finding for a waypoint named none');

  // The agent: the opted-out Service and pod are reached directly (HBONE to their node), the others through wp.
  const svcUp = m.state.resolve(m.client, '10.96.0.21', 80);
  assert.equal(svcUp[0]?.kind === 'hbone' && svcUp[0].waypoint, undefined);
  assert.equal(svcUp[0]?.kind === 'hbone' && svcUp[0].target, '10.1.5.1:8080');
  const podUp = m.state.resolve(m.client, '10.1.5.1', 8080);
  assert.equal(podUp[0]?.kind === 'hbone' && podUp[0].waypoint, undefined);
  for (const [ip, port] of [['10.96.0.22', 80], ['10.1.5.2', 8080]] as const) {
    const up = m.state.resolve(m.client, ip, port);
    assert.equal(up[0]?.kind === 'hbone' && up[0].waypoint?.name, 'wp', `${ip}:${port} goes through the namespace's waypoint`);
  }
});

test('use-waypoint "none" on a namespace means no waypoint; a Service of it naming a waypoint still uses that one', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('a', { 'weft.dev/use-waypoint': 'none' }));
  const own = svc('a', 'own', { app: 'own' }, '10.96.0.31');
  own.metadata.labels = { 'weft.dev/use-waypoint': 'wp' };
  i.services.push(svc('a', 'plain', { app: 'plain' }, '10.96.0.32'), own);
  i.pods.push(pod('a', 'plain'));
  i.waypoints.push(readyWaypoint('a', 'wp', '10.2.0.1'));
  const { model, findings } = compile(i);
  assert.equal(model.services.get('a/plain')?.waypoint, undefined);
  assert.equal([...model.workloads.values()][0]?.waypoint, undefined);
  assert.deepEqual(model.services.get('a/own')?.waypoint, { name: 'wp', namespace: 'a' });
  assert.deepEqual(findings, []);
});

test('a Waypoint named "none" is refused at metadata.name (NameReserved): the label value means no waypoint, so nothing could use it', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('a'));
  i.waypoints.push(readyWaypoint('a', 'none', '10.2.0.9'));
  const { model, findings } = compile(i);
  const f = findings.find((x) => x.kind === 'Waypoint' && x.name === 'none');
  assert.equal(f?.path, 'metadata.name');
  assert.equal(f?.reason, 'NameReserved');
  assert.equal(model.waypoints.get('a/none')?.ready, false);
  // A Service that names a waypoint that does not exist still fails closed (the refusal is named).
  const state = new AgentState('node-a');
  const missing = svc('a', 'gone', { app: 'gone' }, '10.96.0.41');
  missing.metadata.labels = { 'weft.dev/use-waypoint': 'gone' };
  i.services.push(missing);
  i.pods.push(pod('a', 'client', { ip: '10.1.6.1' }));
  const r = compile(i);
  state.apply({ node: 'node-a', workloads: [...r.model.workloads.values()], services: [...r.model.services.values()], policies: [], peerAuthentications: [], waypoints: [...r.model.waypoints.values()] });
  assert.throws(() => state.resolve(state.localWorkload('10.1.6.1')!, '10.96.0.41', 80), (e: unknown) => e instanceof NoRouteError && /uses waypoint a\/gone, which does not exist; traffic that must pass it fails closed/.test(e.message));
  assert.equal(r.findings.find((x) => x.kind === 'Service' && x.name === 'gone')?.reason, 'WaypointNotFound');
});

// docs/ARCHITECTURE.md "Waypoint binding": a namespace's waypoint also takes traffic addressed to
// its pods. A tenant of namespace `a` who writes a selectorless Service and an EndpointSlice
// listing a pod of namespace `b` must not reach it around b's waypoint (and b's L7 policies and
// routes there), which only b's owner can opt out of. Within one namespace, a Service addressed
// without a waypoint still goes straight to its endpoints, as in ztunnel (outbound build_request:
// a Service-addressed connection never takes a workload's waypoint).
test('a Service of another namespace listing a pod in its EndpointSlice is no way around the pod\'s namespace waypoint: the agent sends it through that waypoint, or fails closed naming it', () => {
  const build = (withWaypoint: boolean) => {
    const i = emptyInputs();
    i.namespaces.push(ns('a', { 'weft.dev/dataplane-mode': 'ambient' }), ns('b', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'wp' }));
    i.pods.push(pod('a', 'client', { ip: '10.1.7.1' }), pod('b', 'secret', { ip: '10.1.7.2', node: 'node-b' }), pod('b', 'local', { ip: '10.1.7.3', labels: { app: 'local' } }));
    if (withWaypoint) i.waypoints.push(readyWaypoint('b', 'wp', '10.2.0.1'));
    i.services.push({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'alias', namespace: 'a' }, spec: { clusterIP: '10.96.0.50', ports: [{ name: 'http', port: 80, targetPort: 8080 }] } });
    i.endpointSlices.push({ apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: 'alias-1', namespace: 'a', labels: { 'kubernetes.io/service-name': 'alias' } }, addressType: 'IPv4', ports: [{ name: 'http', port: 8080 }], endpoints: [{ addresses: ['10.1.7.2'] }] });
    // b's own Service opted out of the waypoint reaches its pod (which has the waypoint) directly: b's owner chose so.
    const mine = svc('b', 'mine', { app: 'local' }, '10.96.0.51');
    mine.metadata.labels = { 'weft.dev/use-waypoint': 'none' };
    i.services.push(mine);
    const r = compile(i);
    const state = new AgentState('node-a');
    state.apply({ node: 'node-a', workloads: [...r.model.workloads.values()], services: [...r.model.services.values()], policies: [], peerAuthentications: [], waypoints: [...r.model.waypoints.values()] });
    return { state, client: state.localWorkload('10.1.7.1')! };
  };
  const m = build(true);
  for (const [ip, port] of [['10.1.7.2', 8080], ['10.96.0.50', 80]] as const) {
    const up = m.state.resolve(m.client, ip, port);
    assert.equal(up.length, 1);
    assert.equal(up[0]?.kind === 'hbone' && up[0].waypoint?.name, 'wp', `${ip}:${port} passes b's waypoint`);
    assert.equal(up[0]?.kind === 'hbone' && up[0].target, '10.1.7.2:8080', 'the waypoint is asked for the pod, as when the pod is dialled');
  }
  const own = m.state.resolve(m.client, '10.96.0.51', 80);
  assert.equal(own[0]?.kind, 'local', 'a Service of the pod\'s own namespace, opted out, goes straight to it');

  const gone = build(false);
  assert.throws(() => gone.state.resolve(gone.client, '10.96.0.50', 80), (e: unknown) => e instanceof NoRouteError && /workload b\/secret \(an endpoint of service a\/alias\) uses waypoint b\/wp, which does not exist; traffic that must pass it fails closed/.test(e.message));
});

// lib/hbone/forwarded.ts: a destination's agent believes a `for=` claim (the client's address, which
// ipBlocks policies judge) only from a waypoint that serves the destination. A Service of another
// namespace listing the pod in its EndpointSlice must not make that namespace's waypoint (whose
// replicas its tenant may run: any pod labelled weft.dev/waypoint with the waypoint's account)
// one that speaks for the pod.
test('a Service of another namespace listing a pod does not make that namespace\'s waypoint speak for the pod: its for= claims are ignored (named, counted by reason); the pod\'s own waypoint is still believed', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('tenant', { 'weft.dev/dataplane-mode': 'ambient' }), ns('bank', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'wp' }));
  i.pods.push(pod('bank', 'vault', { ip: '10.1.9.2', node: 'node-b' }));
  i.waypoints.push(readyWaypoint('bank', 'wp', '10.2.0.1'), readyWaypoint('tenant', 'tw', '10.2.0.2'));
  i.services.push({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'alias', namespace: 'tenant', labels: { 'weft.dev/use-waypoint': 'tw' } }, spec: { clusterIP: '10.96.0.60', ports: [{ name: 'http', port: 80, targetPort: 8080 }] } });
  i.endpointSlices.push({ apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: 'alias-1', namespace: 'tenant', labels: { 'kubernetes.io/service-name': 'alias' } }, addressType: 'IPv4', ports: [{ name: 'http', port: 8080 }], endpoints: [{ addresses: ['10.1.9.2'] }] });
  const r = compile(i);
  const state = new AgentState('node-b');
  state.apply({ node: 'node-b', workloads: [...r.model.workloads.values()], services: [...r.model.services.values()], policies: [], peerAuthentications: [], waypoints: [...r.model.waypoints.values()] });
  const vault = state.localWorkload('10.1.9.2')!;
  const claim = (spiffeId: string, address: string) => tunnelClient(state, vault, { peer: { spiffeId, address, port: 40000 }, forwardedFor: forwardedFor('for="192.0.2.7:5555"'), headers: { forwarded: 'for="192.0.2.7:5555"' } });
  assert.deepEqual(state.waypointsServing(vault).map((w) => `${w.namespace}/${w.name}`), ['bank/wp']);
  const forged = claim('spiffe://cluster.local/ns/tenant/sa/tw', '10.2.0.2');
  assert.equal(forged.source, 'peer', 'the tenant\'s waypoint does not speak for bank\'s pod');
  assert.equal(forged.ip, '10.2.0.2');
  assert.deepEqual(forged.ignored, { reason: 'unknown-address', claimed: '192.0.2.7:5555' });
  assert.deepEqual(claim('spiffe://cluster.local/ns/bank/sa/wp', '10.2.0.1'), { ip: '192.0.2.7', port: 5555, source: 'forwarded' });
});
