// Waypoints across clusters without root (issue 18 item 6):
// - an HTTPRoute's backendRef may name a Service only another cluster has (a per-cluster Service,
//   imported by namespace sameness): the route resolves once the federation imports it, the
//   waypoint gets that Service with the other cluster's endpoints, and it leaves with its cluster;
// - the destination's DENY policies judge the caller a waypoint carries (x-forwarded-client-cert
//   URI) as well as the waypoint itself, so a DENY naming a client holds whatever waypoint, in
//   whatever cluster, it came through; the claim can only refuse more.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Federation } from '../../controller/src/federation.ts';
import { MemorySource } from '../../controller/src/sources/memory.ts';
import { LocalDelivery, DeniedError } from '../../agent/src/delivery.ts';
import { AgentState } from '../../agent/src/state.ts';
import { AgentMetrics } from '../../agent/src/metrics.ts';
import { callerOf, formatCaller } from '../../lib/hbone/forwarded.ts';
import { silentLogger } from '../../lib/log.ts';
import type { ClusterExport } from '../../lib/model/federation.ts';
import type { AuthorizationPolicy, Workload } from '../../lib/model/mesh.ts';
import { ns, pod, svc, waypoint } from './controller-fixtures.ts';
import { captureLogger, startHarness, until, type LogLine } from './controller-harness.ts';

const TD = 'cluster.local';
const id = (n: string, sa: string) => `spiffe://${TD}/ns/${n}/sa/${sa}`;
const CLIENT = id('demo', 'client');
const WAYPOINT = id('demo', 'waypoint');
const GW = { network: 'network2', address: '192.168.77.2', port: 15008, spiffeId: id('weft-system', 'weft-eastwest') };

/** cluster2's export: demo/echo-c2, a Service only cluster2 has, over cluster2's echo pod. */
const cluster2: ClusterExport = {
  cluster: 'cluster2', network: 'network2', gateway: GW,
  services: [{
    name: 'echo-c2', namespace: 'demo', hostname: 'echo-c2.demo.svc.cluster.local', vips: ['10.96.0.20'],
    ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP', appProtocol: 'http' }],
    endpoints: [{ workloadUid: 'c2-echo', ip: '10.78.1.5', node: 'node1', nodeIp: '10.78.0.1', ports: { '80': 8080 }, enrolled: true, spiffeId: id('demo', 'echo'), ready: true }],
  }],
};

test('an HTTPRoute backendRef to a Service only cluster2 has resolves once it is imported: the waypoint gets it with cluster2\'s endpoint behind cluster2\'s gateway, the split as written; it is BackendNotFound again when cluster2 leaves', async (t) => {
  const route = {
    apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'split', namespace: 'demo' },
    spec: { parentRefs: [{ group: '', kind: 'Service', name: 'echo', port: 80 }], rules: [{ backendRefs: [{ name: 'echo', port: 80, weight: 80 }, { name: 'echo-c2', port: 80, weight: 20 }] }] },
  };
  const source = new MemorySource([
    ns('demo', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'waypoint' }), waypoint('demo', 'waypoint'),
    svc('demo', 'echo'), pod('demo', 'echo', { ip: '10.77.1.5' }), route,
  ]);
  const federation = new Federation({
    cluster: 'cluster1', network: 'network1', remotes: [{ name: 'cluster2', url: 'kube:cluster2', pushed: true }],
    tls: () => { throw new Error('no listener here'); }, mayRead: () => false, isController: () => false, log: silentLogger,
  });
  const h = await startHarness(source, undefined, { federation });
  t.after(() => h.close());
  const resolved = () => source.statuses.get('HTTPRoute/demo/split')?.parents?.[0]?.conditions.find((c) => c.type === 'ResolvedRefs');
  await until('the route is BackendNotFound while no cluster has echo-c2', () => resolved()?.reason === 'BackendNotFound');
  assert.match(resolved()!.message, /spec\.rules\[0\]\.backendRefs\[1\]: Service demo\/echo-c2 does not exist in any cluster/);
  const wp = h.waypoint('demo');
  await wp.ready();

  federation.report('cluster2', { export: JSON.stringify(cluster2) });
  await until('the route resolves', () => resolved()?.status === true);
  await until('the waypoint has echo-c2', () => wp.snapshot?.services.some((s) => s.name === 'echo-c2') ?? false);
  const imported = wp.snapshot!.services.find((s) => s.name === 'echo-c2')!;
  assert.deepEqual(imported.endpoints.map((e) => [e.ip, e.cluster, e.gateway?.address]), [['10.78.1.5', 'cluster2', '192.168.77.2']]);
  assert.deepEqual(imported.vips, ['10.96.0.20']);
  const rule = wp.snapshot!.routes.find((r) => r.name === 'split')!.rules[0]!;
  assert.deepEqual(rule.backends.map((b) => [b.service, b.weight, b.refused]), [['demo/echo', 80, undefined], ['demo/echo-c2', 20, undefined]]);

  federation.removeRemote('cluster2');
  await until('the route is BackendNotFound again', () => resolved()?.reason === 'BackendNotFound');
  await until('the waypoint no longer has echo-c2', () => !(wp.snapshot?.services.some((s) => s.name === 'echo-c2') ?? true));
});

test('x-forwarded-client-cert: the waypoint names the caller it carries; only a SPIFFE URI of the last element is read, anything malformed is no caller', () => {
  assert.equal(formatCaller(WAYPOINT, CLIENT), `By="${WAYPOINT}";URI="${CLIENT}"`);
  assert.equal(callerOf(formatCaller(WAYPOINT, CLIENT)), CLIENT);
  const cases: Array<[string | undefined, string | undefined]> = [
    [undefined, undefined],
    ['', undefined],
    [`By="${WAYPOINT}";URI="${id('demo', 'a')}",By="${WAYPOINT}";URI="${CLIENT}"`, CLIENT],
    [`By="${WAYPOINT}"`, undefined],
    ['URI="https://evil.example/"', undefined],
    [`URI=${CLIENT}`, undefined], // unquoted ':' and '/' are not RFC 7239 tokens
    [`URI="${CLIENT}`, undefined],
    [`URI="${CLIENT}";URI="${id('demo', 'b')}"`, undefined], // a parameter twice
    [`URI="spiffe://${TD}/ns/demo/sa/a b"`, undefined],
    [`URI="${'spiffe://x/' + 'a'.repeat(5000)}"`, undefined],
  ];
  for (const [value, want] of cases) assert.equal(callerOf(value), want, String(value).slice(0, 80));
});

function wl(name: string, ip: string, labels: Record<string, string> = { app: name }): Workload {
  return {
    uid: `demo/${name}`, name, namespace: 'demo', node: 'node1', nodeIp: '10.78.0.1', ip, serviceAccount: name, spiffeId: id('demo', name), labels,
    enrolled: true, mode: 'STRICT', services: [], workloadName: name, canonicalService: name, canonicalRevision: 'latest', cluster: 'cluster2',
  } as Workload;
}
const policy = (name: string, action: 'ALLOW' | 'DENY', from: AuthorizationPolicy['rules'][number]['from']): AuthorizationPolicy => ({
  name, namespace: 'demo', action, scope: 'workload', selector: { app: 'echo' }, layer: 'L4', rules: [{ from, to: [], when: [], layer: 'L4' }],
});

test('the destination agent judges the caller a waypoint carries by its DENY policies too, and by nothing else: a DENY naming cluster1\'s client refuses it through any waypoint; an ALLOW is not widened by a claim; a forged claim only refuses its sender', () => {
  const echo = wl('echo', '10.78.1.5');
  const deliver = (policies: AuthorizationPolicy[]) => {
    const state = new AgentState('node1');
    state.apply({ node: 'node1', workloads: [echo], services: [], policies, peerAuthentications: [], waypoints: [] });
    const logs: LogLine[] = [];
    const d = new LocalDelivery({ state, metrics: new AgentMetrics(), log: captureLogger(logs), datapath: { registerPeer: () => {}, unregisterPeer: () => true, tagAgentSocket: () => {} } });
    return { logs, verdict: (peer: string, caller?: string): string => {
      try {
        d.authorize(echo, 8080, { sourcePrincipal: peer, sourceIp: '192.168.77.2' }, caller);
        return 'allowed';
      } catch (e) {
        assert.ok(e instanceof DeniedError);
        return `denied by ${e.policy}`;
      }
    } };
  };
  const denyClient = policy('deny-cluster1-client', 'DENY', [{ principals: [`${TD}/ns/demo/sa/client`] }]);
  const denyOtherNs = policy('deny-other-ns', 'DENY', [{ notNamespaces: ['demo'] }]);
  const allowWaypoint = policy('only-waypoint', 'ALLOW', [{ principals: [`${TD}/ns/demo/sa/waypoint`] }]);
  const allowClient = policy('only-client', 'ALLOW', [{ principals: [`${TD}/ns/demo/sa/client`] }]);
  const table: Array<[string, AuthorizationPolicy[], string, string | undefined, string]> = [
    ['no policy: the waypoint carrying the client passes', [], WAYPOINT, CLIENT, 'allowed'],
    ['a DENY naming the client: the client itself is refused', [denyClient], CLIENT, undefined, 'denied by demo/deny-cluster1-client'],
    ['a DENY naming the client: refused through a waypoint too (Istio would see only the waypoint)', [denyClient], WAYPOINT, CLIENT, 'denied by demo/deny-cluster1-client'],
    ['a DENY naming the client: another caller through the waypoint passes', [denyClient], WAYPOINT, id('demo', 'other'), 'allowed'],
    ['a DENY naming the client: the waypoint naming no caller passes (judged as Istio judges it)', [denyClient], WAYPOINT, undefined, 'allowed'],
    ['a DENY of other namespaces: a caller from another namespace through demo\'s waypoint is refused', [denyOtherNs], WAYPOINT, id('shop', 'client'), 'denied by demo/deny-other-ns'],
    ['ALLOW only the waypoint: a carried caller does not count against it', [allowWaypoint], WAYPOINT, CLIENT, 'allowed'],
    ['ALLOW only the client: a claim grants nothing, the peer is the waypoint', [allowClient], WAYPOINT, CLIENT, 'denied by demo/only-client'],
    ['attacker: a workload claiming to carry a denied caller only refuses itself', [denyClient], id('demo', 'other'), CLIENT, 'denied by demo/deny-cluster1-client'],
    ['attacker: the client claiming to carry someone else is still refused as itself', [denyClient], CLIENT, id('demo', 'other'), 'denied by demo/deny-cluster1-client'],
  ];
  for (const [name, policies, peer, caller, want] of table) assert.equal(deliver(policies).verdict(peer, caller), want, name);
  const { logs, verdict } = deliver([denyClient]);
  verdict(WAYPOINT, CLIENT);
  const line = logs.find((l) => l.msg === 'connection denied')!;
  assert.equal(line.fields.caller, CLIENT, 'the refusal names the caller');
  assert.equal(line.fields.source, WAYPOINT);
  assert.match(String(line.fields.reason), /the caller spiffe:\/\/cluster\.local\/ns\/demo\/sa\/client, carried by spiffe:\/\/cluster\.local\/ns\/demo\/sa\/waypoint/);
});
