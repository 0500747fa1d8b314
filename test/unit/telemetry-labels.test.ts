// Istio's standard labels, derived once (controller) and built once (every reporter):
// https://istio.io/latest/docs/reference/config/metrics/ and ztunnel's CommonTrafficLabels.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { canonicalOf, workloadMetaOf, workloadNameOf } from '../../lib/model/workload-meta.ts';
import { REQUEST_LABELS, TRAFFIC_LABELS, encodeBaggage, peerFromBaggage, trafficLabels, MAX_UNVERIFIED_WORKLOADS, UnverifiedClaims } from '../../lib/telemetry/labels.ts';
import { compile, emptyInputs } from '../../controller/src/compile.ts';
import { validateObject } from '../../lib/model/validate.ts';
import { pod, svc, ns } from './controller-fixtures.ts';

const meta = (name: string, labels: Record<string, string> = {}, owners?: Array<{ kind: string; name: string; controller?: boolean }>) =>
  ({ metadata: { name, namespace: 'shop', labels, ...(owners ? { ownerReferences: owners } : {}) } });

test('workload name: a Deployment\'s pod is named after the Deployment (ReplicaSet hash stripped), a bare pod after itself (Istio GetDeployMetaFromPod)', () => {
  const table: Array<[ReturnType<typeof meta>, string]> = [
    [meta('reviews-v1-7d4b9c-x2k9q', { 'pod-template-hash': '7d4b9c' }, [{ kind: 'ReplicaSet', name: 'reviews-v1-7d4b9c', controller: true }]), 'reviews-v1'],
    // A ReplicaSet without the hash label is its own workload.
    [meta('rs-abc', {}, [{ kind: 'ReplicaSet', name: 'standalone', controller: true }]), 'standalone'],
    [meta('db-0', {}, [{ kind: 'StatefulSet', name: 'db', controller: true }]), 'db'],
    [meta('agent-x', {}, [{ kind: 'DaemonSet', name: 'agent', controller: true }]), 'agent'],
    [meta('backup-28391040-abcde', {}, [{ kind: 'Job', name: 'backup-28391040', controller: true }]), 'backup'],
    [meta('migrate-x', {}, [{ kind: 'Job', name: 'migrate', controller: true }]), 'migrate'],
    // The controller reference wins over other owners.
    [meta('p', {}, [{ kind: 'ConfigMap', name: 'cm' }, { kind: 'StatefulSet', name: 'db', controller: true }]), 'db'],
    [meta('bare'), 'bare'],
  ];
  for (const [pod_, want] of table) assert.equal(workloadNameOf(pod_), want, pod_.metadata.name);
});

test('canonical service and revision: service.istio.io/canonical-*, then app.kubernetes.io/name|version, then app/version, then the workload name and latest', () => {
  assert.deepEqual(canonicalOf({ 'service.istio.io/canonical-name': 'c', 'service.istio.io/canonical-revision': 'r', 'app.kubernetes.io/name': 'k', app: 'a', version: 'v' }, 'w'), { service: 'c', revision: 'r' });
  assert.deepEqual(canonicalOf({ 'app.kubernetes.io/name': 'k', 'app.kubernetes.io/version': '2', app: 'a', version: 'v' }, 'w'), { service: 'k', revision: '2' });
  assert.deepEqual(canonicalOf({ app: 'a', version: 'v' }, 'w'), { service: 'a', revision: 'v' });
  assert.deepEqual(canonicalOf({}, 'w'), { service: 'w', revision: 'latest' });
});

test('the compiled Workload and each Endpoint carry the workload meta; the cluster comes from the controller', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  const p = pod('shop', 'web-5f6d8-abcde', { labels: { app: 'web', version: 'v2', 'pod-template-hash': '5f6d8' } });
  p.metadata.ownerReferences = [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'web-5f6d8', controller: true }];
  i.pods.push(p);
  i.services.push(svc('shop', 'web'));
  const { model } = compile(i, { clusterId: 'east' });
  const w = model.workloads.get('uid-shop-web-5f6d8-abcde')!;
  assert.deepEqual([w.name, w.workloadName, w.canonicalService, w.canonicalRevision, w.cluster], ['web-5f6d8-abcde', 'web', 'web', 'v2', 'east']);
  assert.deepEqual(model.services.get('shop/web')!.endpoints[0]!.workload, { workloadName: 'web', namespace: 'shop', canonicalService: 'web', canonicalRevision: 'v2', cluster: 'east' });
  assert.equal(workloadMetaOf(p).cluster, 'Kubernetes', 'Istio\'s default cluster ID');
});

test('ownerReferences are validated with field paths', () => {
  const p = pod('shop', 'x');
  (p.metadata as unknown as Record<string, unknown>).ownerReferences = [{ kind: 'ReplicaSet' }, 'nope'];
  const issues = validateObject(p).map((i) => i.path);
  assert.ok(issues.includes('metadata.ownerReferences[0].name'), issues.join(', '));
  assert.ok(issues.includes('metadata.ownerReferences[1]'), issues.join(', '));
});

test('every label Istio\'s standard metrics define, unknown where nobody knows', () => {
  const l = trafficLabels({
    reporter: 'source',
    source: { meta: { workloadName: 'client', namespace: 'shop', canonicalService: 'client-app', canonicalRevision: 'v1', cluster: 'Kubernetes' }, principal: 'spiffe://cluster.local/ns/shop/sa/client' },
    destination: { principal: 'spiffe://cluster.local/ns/other/sa/db' },
    service: { hostname: 'db.other.svc.cluster.local', name: 'db', namespace: 'other' },
    protocol: 'tcp',
    security: 'mutual_tls',
  });
  assert.deepEqual(Object.keys(l).sort(), [...TRAFFIC_LABELS].sort());
  assert.equal(l.source_workload, 'client');
  assert.equal(l.source_app, 'client-app');
  assert.equal(l.source_version, 'v1');
  assert.equal(l.destination_workload, 'unknown');
  assert.equal(l.destination_workload_namespace, 'other', 'from the principal when the workload is unknown');
  assert.equal(l.destination_cluster, 'unknown');
  assert.equal(l.response_flags, '-');
  assert.ok(REQUEST_LABELS.includes('response_code') && REQUEST_LABELS.includes('grpc_response_status'));
});

test('baggage round-trips the workload meta; a peer can only describe its own namespace (attacker: forged baggage is ignored)', () => {
  const m = { workloadName: 'web', namespace: 'shop', canonicalService: 'web app', canonicalRevision: 'v1,2', cluster: 'Kubernetes' };
  const b = encodeBaggage(m);
  assert.deepEqual(peerFromBaggage(b, 'spiffe://cluster.local/ns/shop/sa/web'), m);
  // A certificate of namespace evil claiming to be shop's web: not believed.
  assert.equal(peerFromBaggage(b, 'spiffe://cluster.local/ns/evil/sa/web'), undefined);
  assert.equal(peerFromBaggage(b, undefined), undefined);
  // ztunnel's k8s.deployment.name reads as the workload name; application members are ignored.
  assert.equal(peerFromBaggage('userid=7,k8s.namespace.name=shop,k8s.deployment.name=web', 'spiffe://cluster.local/ns/shop/sa/x')?.workloadName, 'web');
  assert.equal(peerFromBaggage('k8s.namespace.name=shop', 'spiffe://cluster.local/ns/shop/sa/x'), undefined, 'incomplete');
  assert.equal(peerFromBaggage('k8s.namespace.name=shop,k8s.workload.name=%E0%A4%A', 'spiffe://cluster.local/ns/shop/sa/x'), undefined, 'malformed escape');
});

// A reporter that cannot check a peer's baggage against its config (a waypoint, for every caller)
// bounds it per identity: the first MAX_UNVERIFIED_WORKLOADS distinct descriptions are taken, then
// `unknown`, so that a peer cannot mint metric series (each lives as long as the process).
test('unverified baggage: at most MAX_UNVERIFIED_WORKLOADS distinct descriptions per identity, the same one again always', () => {
  const claims = new UnverifiedClaims();
  const meta = (i: number) => ({ workloadName: `w${i}`, namespace: 'shop', canonicalService: 'w', canonicalRevision: 'v1', cluster: 'Kubernetes' });
  const a = 'spiffe://cluster.local/ns/shop/sa/a';
  for (let i = 0; i < MAX_UNVERIFIED_WORKLOADS; i++) assert.deepEqual(claims.take(a, meta(i)), meta(i));
  assert.equal(claims.take(a, meta(99)), undefined, 'a new one past the bound');
  assert.deepEqual(claims.take(a, meta(0)), meta(0), 'one already taken stays');
  assert.deepEqual(claims.take('spiffe://cluster.local/ns/shop/sa/b', meta(99)), meta(99), 'another identity has its own bound');
});
