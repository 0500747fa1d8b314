// A Service only another cluster has, behind that cluster's own waypoint (Istio ambient
// multi-network: the caller's traffic goes to the remote waypoint through the remote network's
// east-west gateway, double HBONE, so the waypoint applies the Service's routes and L7 policy to
// the caller's own identity). Here without root: the export carrying the waypoint (checked field
// by field, a bad entry costing only the Services behind it), the import (the Service references
// the waypoint, cluster-qualified; refused, named, when it cannot be used), what a controller
// exports and merges, and where the caller's agent sends the connection.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { exportSelection, exportedPodsOf, mergeRemoteServices, parseClusterExport, FederationExportError, type ClusterExport, type ExportedWaypoint } from '../../lib/model/federation.ts';
import type { AgentConfig, Endpoint, MeshModel, Service, Waypoint, Workload } from '../../lib/model/mesh.ts';
import { Federation } from '../../controller/src/federation.ts';
import { isOwnWaypointIdentity } from '../../controller/src/waypoint-admission.ts';
import { AgentState, NoRouteError } from '../../agent/src/state.ts';
import { silentLogger } from '../../lib/log.ts';

const TD = 'cluster.local';
const id = (ns: string, sa: string) => `spiffe://${TD}/ns/${ns}/sa/${sa}`;
const ep = (ip: string): Endpoint => ({ workloadUid: ip, ip, node: 'node1', nodeIp: '10.78.0.1', ports: { '80': 8080 }, enrolled: true, spiffeId: id('demo', 'echo'), ready: true });
const svc = (name: string, extra: Partial<Service> = {}): Service => ({
  name, namespace: 'demo', hostname: `${name}.demo.svc.cluster.local`, vips: ['10.97.0.20'],
  ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP', appProtocol: 'http' }], endpoints: [ep('10.78.1.1')], ...extra,
});
const GW = { network: 'network2', address: '192.168.77.2', port: 15008, spiffeId: id('weft-system', 'weft-eastwest') };
const WP: ExportedWaypoint = { name: 'waypoint', namespace: 'demo', address: '10.78.1.7', port: 15008, spiffeId: id('demo', 'waypoint'), ready: true };
const behind = (name: string, vip: string, waypoint = 'waypoint') => svc(name, { vips: [vip], waypoint: { namespace: 'demo', name: waypoint } });

test('a remote-only Service behind its cluster\'s waypoint is imported with that waypoint, not its endpoints: cluster-qualified, on its network, through its gateway (Istio ambient multi-network); the same network dials it directly', () => {
  const c2: ClusterExport = { cluster: 'cluster2', network: 'network2', gateway: GW, services: [behind('echo-c2', '10.97.0.20')], waypoints: [WP] };
  const { services, waypoints, refused } = mergeRemoteServices({ services: [] }, { network: 'network1' }, [c2]);
  assert.deepEqual(refused, []);
  const s = services.get('demo/echo-c2')!;
  assert.deepEqual(s.waypoint, { namespace: 'demo', name: 'waypoint', cluster: 'cluster2' });
  assert.deepEqual(s.vips, ['10.97.0.20']);
  assert.deepEqual(s.endpoints, [], 'reached only through its waypoint: no endpoint to go around it by');
  assert.deepEqual([...waypoints.keys()], ['cluster2/demo/waypoint'], 'keyed apart from a local demo/waypoint (namespace sameness)');
  const w = waypoints.get('cluster2/demo/waypoint')!;
  assert.deepEqual([w.address, w.port, w.spiffeId, w.ready, w.cluster, w.network, w.gateway?.address], ['10.78.1.7', 15008, id('demo', 'waypoint'), true, 'cluster2', 'network2', '192.168.77.2']);
  const same = mergeRemoteServices({ services: [] }, { network: 'network2' }, [c2]).waypoints.get('cluster2/demo/waypoint')!;
  assert.equal(same.gateway, undefined, 'same network: no gateway');
  // Another cluster that has the same Service without a waypoint adds no way around it.
  const c3: ClusterExport = { cluster: 'cluster3', network: 'network3', gateway: { ...GW, network: 'network3', address: '192.168.77.3' }, services: [svc('echo-c2', { vips: ['10.98.0.20'], endpoints: [ep('10.79.1.1')] })] };
  assert.deepEqual(mergeRemoteServices({ services: [] }, { network: 'network1' }, [c3, c2]).services.get('demo/echo-c2')!.endpoints, []);
});

test('remote waypoint, attacker and failure side: a Service whose waypoint is missing, invalid, not ready, without an address or with an address no waypoint may have is refused (reason waypoint, named); a network without a gateway refuses its remote-only Services (no-gateway); each costs only that Service', () => {
  const c2: ClusterExport = {
    cluster: 'cluster2', network: 'network2', gateway: GW,
    services: [
      behind('missing', '10.97.0.1', 'nowhere'),
      behind('invalid', '10.97.0.2', 'bad'),
      behind('not-ready', '10.97.0.3', 'starting'),
      behind('no-address', '10.97.0.4', 'empty'),
      behind('loopback', '10.97.0.5', 'lo'),
      behind('fine', '10.97.0.6'),
    ],
    waypoints: [
      WP,
      { ...WP, name: 'bad', port: 0, spiffeId: '', ready: false, invalid: 'federation export: waypoints[1].port: 0 is not a port' },
      { ...WP, name: 'starting', ready: false, reason: 'no ready replica' },
      { name: 'empty', namespace: 'demo', port: 15008, spiffeId: id('demo', 'empty'), ready: true },
      { ...WP, name: 'lo', address: '127.0.0.1' },
    ],
  };
  const c3: ClusterExport = { cluster: 'cluster3', network: 'network3', services: [behind('cut-off', '10.97.0.7')], waypoints: [WP] };
  const { services, refused } = mergeRemoteServices({ services: [] }, { network: 'network1' }, [c2, c3]);
  const why = Object.fromEntries(refused.map((r) => [`${r.cluster}/${r.service}`, `${r.reason}: ${r.message}`]));
  assert.match(why['cluster2/demo/missing']!, /^waypoint: Service demo\/missing of cluster cluster2 not imported: its traffic goes through waypoint demo\/nowhere of cluster cluster2, which enforces its L7 policy and is not in its export; going around it would bypass that policy$/);
  assert.match(why['cluster2/demo/invalid']!, /^waypoint: .*waypoint demo\/bad .*is invalid \(federation export: waypoints\[1\]\.port: 0 is not a port\)/);
  assert.match(why['cluster2/demo/not-ready']!, /^waypoint: .*is not ready \(no ready replica\)/);
  assert.match(why['cluster2/demo/no-address']!, /^waypoint: .*has no address/);
  assert.match(why['cluster2/demo/loopback']!, /^waypoint: .*has the address 127\.0\.0\.1, which no waypoint may have/);
  assert.match(why['cluster3/demo/cut-off']!, /^no-gateway: .*cluster cluster3 is on network network3, which has no east-west gateway/);
  assert.equal(refused.length, 6);
  assert.deepEqual([...services.keys()], ['demo/fine'], 'the Service behind the good waypoint is imported');
});

test('the export\'s waypoints are checked field by field: a wrong field is named by its path and costs only the Services behind that waypoint; an entry without a name, or a waypoints that is no list, makes the export unreadable', () => {
  const good = { cluster: 'cluster2', network: 'network2', gateway: GW, services: [behind('echo-c2', '10.97.0.20'), behind('other', '10.97.0.21', 'other')], waypoints: [WP, { ...WP, name: 'other' }] };
  const parsed = parseClusterExport(JSON.parse(JSON.stringify(good)));
  assert.deepEqual(parsed.waypoints, good.waypoints);
  assert.deepEqual(parseClusterExport({ ...good, waypoints: undefined }).waypoints, [], 'an older release\'s export has none');
  const entry = (w: Record<string, unknown>) => parseClusterExport({ ...good, waypoints: [WP, { ...WP, name: 'other', ...w }] }).waypoints![1]!;
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ port: undefined }, /^federation export: waypoints\[1\]\.port: undefined is not a port$/],
    [{ port: 70000 }, /waypoints\[1\]\.port: 70000 is not a port/],
    [{ address: 'evil.example' }, /waypoints\[1\]\.address: "evil\.example" is not an IP address/],
    [{ addresses: ['10.78.1.7', 'x'] }, /waypoints\[1\]\.addresses\[1\]: "x" is not an IP address/],
    [{ addresses: '10.78.1.7' }, /waypoints\[1\]\.addresses: must be a list/],
    [{ spiffeId: undefined }, /waypoints\[1\]\.spiffeId: must be a non-empty string/],
    [{ ready: 'yes' }, /waypoints\[1\]\.ready: must be a boolean/],
    [{ reason: 7 }, /waypoints\[1\]\.reason: must be a string/],
  ];
  for (const [bad, msg] of cases) {
    const e = entry(bad);
    assert.match(e.invalid ?? '', msg, JSON.stringify(bad));
    assert.deepEqual([e.name, e.namespace, e.ready], ['other', 'demo', false]);
    // Only the Service behind it pays.
    const { services, refused } = mergeRemoteServices({ services: [] }, { network: 'network1' }, [parseClusterExport({ ...good, waypoints: [WP, { ...WP, name: 'other', ...bad }] })]);
    assert.deepEqual([...services.keys()], ['demo/echo-c2'], JSON.stringify(bad));
    assert.deepEqual(refused.map((r) => [r.service, r.reason]), [['demo/other', 'waypoint']]);
    assert.ok(refused[0]!.message.includes(e.invalid!), 'the refusal names the field');
  }
  const whole: Array<[unknown, RegExp]> = [
    [{ ...good, waypoints: {} }, /^federation export: waypoints: must be a list$/],
    [{ ...good, waypoints: [WP, 'x'] }, /waypoints\[1\]: must be an object/],
    [{ ...good, waypoints: [{ ...WP, name: undefined }] }, /waypoints\[0\]\.name: must be a non-empty string/],
    [{ ...good, waypoints: [{ ...WP, namespace: '' }] }, /waypoints\[0\]\.namespace: must be a non-empty string/],
  ];
  for (const [input, msg] of whole) assert.throws(() => parseClusterExport(input), (e: Error) => e instanceof FederationExportError && msg.test(e.message), JSON.stringify(input).slice(0, 120));
});

function model(services: Service[], waypoints: Waypoint[] = []): MeshModel {
  return {
    workloads: new Map(), services: new Map(services.map((s) => [`${s.namespace}/${s.name}`, s])), policies: new Map(), requestAuthentications: new Map(), peerAuthentications: new Map(),
    trafficPolicies: new Map(), routes: new Map(), waypoints: new Map(waypoints.map((w) => [`${w.namespace}/${w.name}`, w])),
  };
}

test('a controller exports its own waypoints (address, port, identity, readiness) and none it imported; merging adds the imported one beside a local waypoint of the same namespace/name', () => {
  const fed = new Federation({ cluster: 'cluster1', network: 'network1', remotes: [], tls: () => ({ key: '', cert: '', ca: [] }), mayRead: () => false, isController: () => false, log: silentLogger });
  const localWp: Waypoint = { name: 'waypoint', namespace: 'demo', address: '10.77.1.7', port: 15008, spiffeId: id('demo', 'waypoint'), ready: true };
  const starting: Waypoint = { name: 'starting', namespace: 'demo', port: 15008, spiffeId: id('demo', 'starting'), ready: false, reason: 'no ready replica' };
  fed.merge(model([svc('echo', { vips: ['10.96.0.10'] })], [localWp, starting]));
  const exp = fed.export();
  assert.deepEqual(exp.waypoints, [
    { name: 'waypoint', namespace: 'demo', address: '10.77.1.7', port: 15008, spiffeId: id('demo', 'waypoint'), ready: true },
    { name: 'starting', namespace: 'demo', port: 15008, spiffeId: id('demo', 'starting'), ready: false, reason: 'no ready replica' },
  ]);
  // Round trip: what one controller exports, another reads.
  assert.deepEqual(parseClusterExport(JSON.parse(JSON.stringify(exp))).waypoints, exp.waypoints);
});

test('the caller\'s agent sends a remote waypoint\'s Service to that waypoint through its network\'s gateway (the inner CONNECT names the VIP:port), never directly; a local waypoint of the same namespace/name is not confused with it; not ready fails closed', () => {
  const client: Workload = {
    uid: 'demo/client', name: 'client', namespace: 'demo', node: 'node1', nodeIp: '10.77.0.1', ip: '10.77.1.1', serviceAccount: 'client', spiffeId: id('demo', 'client'),
    labels: {}, enrolled: true, mode: 'PERMISSIVE', services: [], workloadName: 'client', canonicalService: 'client', canonicalRevision: 'latest', cluster: 'cluster1',
  };
  const c2: ClusterExport = { cluster: 'cluster2', network: 'network2', gateway: GW, services: [behind('echo-c2', '10.97.0.20')], waypoints: [{ ...WP, addresses: ['10.78.1.7', '10.78.2.7'] }] };
  const { services, waypoints } = mergeRemoteServices({ services: [] }, { network: 'network1' }, [c2]);
  const localWp: Waypoint = { name: 'waypoint', namespace: 'demo', address: '10.77.1.7', port: 15008, spiffeId: id('demo', 'waypoint'), ready: true };
  const config = (wps: Waypoint[]): AgentConfig => ({ node: 'node1', workloads: [client], services: [...services.values()], policies: [], peerAuthentications: [], waypoints: wps });
  const s = new AgentState('node1');
  s.apply(config([localWp, ...waypoints.values()]));
  const ups = s.resolve(client, '10.97.0.20', 80);
  assert.deepEqual(ups.map((u) => u.kind === 'hbone' && [u.address, u.port, u.target, u.identity, u.gateway?.address, u.waypoint?.cluster]), [
    ['10.78.1.7', 15008, '10.97.0.20:80', id('demo', 'waypoint'), '192.168.77.2', 'cluster2'],
    ['10.78.2.7', 15008, '10.97.0.20:80', id('demo', 'waypoint'), '192.168.77.2', 'cluster2'],
  ]);
  // A client in cluster1 with the waypoint's own identity is not that waypoint: it too goes through it.
  assert.equal(s.resolve({ ...client, spiffeId: id('demo', 'waypoint') }, '10.97.0.20', 80)[0]!.kind, 'hbone');
  s.apply(config([localWp]));
  assert.throws(() => s.resolve(client, '10.97.0.20', 80), (e: Error) => e instanceof NoRouteError && /uses waypoint demo\/waypoint, which does not exist; traffic that must pass it fails closed/.test(e.message), 'the local one of the same name is not used instead');
  s.apply(config([localWp, { ...waypoints.get('cluster2/demo/waypoint')!, ready: false }]));
  assert.throws(() => s.resolve(client, '10.97.0.20', 80), /is not ready; traffic that must pass it fails closed/);
});

test('a Service this cluster has without a waypoint does not take in another cluster\'s endpoints that sit behind that cluster\'s waypoint (they would be reached around its L7 policy): refused, named, counted as waypoint; with a waypoint here, or without one there, they join (namespace sameness)', () => {
  const c2: ClusterExport = { cluster: 'cluster2', network: 'network2', gateway: GW, services: [behind('echo', '10.97.0.20')], waypoints: [WP] };
  const plainHere = svc('echo', { vips: ['10.96.0.20'], endpoints: [ep('10.77.1.1')] });
  const m = mergeRemoteServices({ services: [plainHere] }, { network: 'network1' }, [c2]);
  assert.deepEqual(m.services.get('demo/echo')!.endpoints.map((e) => e.ip), ['10.77.1.1'], 'only the local endpoint');
  assert.equal(m.refused.length, 1);
  assert.equal(m.refused[0]!.reason, 'waypoint');
  assert.match(m.refused[0]!.message, /^Service demo\/echo of cluster cluster2 not imported: its endpoints there go through waypoint demo\/waypoint of cluster cluster2, .* would bypass that policy$/);
  // The same with the two remotes the other way round: a remote-only Service first imported
  // plainly from cluster1 (sorted first) takes no endpoints from cluster2 behind its waypoint.
  const c1: ClusterExport = { cluster: 'cluster1', network: 'network1', services: [svc('echo-x', { vips: ['10.98.0.30'], endpoints: [ep('10.77.2.2')] })] };
  const c2x: ClusterExport = { ...c2, services: [behind('echo-x', '10.97.0.30')] };
  const r = mergeRemoteServices({ services: [] }, { network: 'network3' }, [c2x, { ...c1, gateway: { ...GW, network: 'network1', address: '192.168.77.1' } }]);
  assert.deepEqual(r.services.get('demo/echo-x')!.endpoints.map((e) => e.ip), ['10.77.2.2']);
  assert.deepEqual(r.refused.map((x) => `${x.cluster}/${x.service}:${x.reason}`), ['cluster2/demo/echo-x:waypoint']);
  // With a waypoint here the remote endpoints join (that waypoint routes to them), and a remote
  // copy without a waypoint joins a plain local one as before.
  const withWaypoint = mergeRemoteServices({ services: [{ ...plainHere, waypoint: { namespace: 'demo', name: 'waypoint' } }] }, { network: 'network1' }, [c2]);
  assert.deepEqual(withWaypoint.services.get('demo/echo')!.endpoints.map((e) => e.ip), ['10.77.1.1', '10.78.1.1']);
  assert.deepEqual(withWaypoint.refused, []);
  const plainThere = mergeRemoteServices({ services: [plainHere] }, { network: 'network1' }, [{ ...c2, services: [svc('echo')] }]);
  assert.deepEqual(plainThere.services.get('demo/echo')!.endpoints.map((e) => e.ip), ['10.77.1.1', '10.78.1.1']);
});

// Endpoint.waypoint marks a pod of another namespace than the Service's that has a waypoint of its
// own (a tenant's hand-written EndpointSlice listing it): its cluster's agents and gateway reach it
// only through that waypoint. The export keeps the mark (checked, by path); an importer leaves such
// an endpoint out, named, rather than send callers straight to it around that waypoint.
test('the export carries Endpoint.waypoint (checked, a wrong field named by its path, costing only its Service); an importer leaves such an endpoint out, named (reason endpoints), and keeps the rest', () => {
  const marked = (ip: string, refused?: string): Endpoint => ({ ...ep(ip), workload: { workloadName: 'back', namespace: 'back', canonicalService: 'back', canonicalRevision: 'latest', cluster: 'cluster2' }, waypoint: { namespace: 'back', name: 'waypoint', ...(refused ? { refused: refused as 'NamespaceNotAllowed' } : {}) } });
  const raw = JSON.parse(JSON.stringify({ cluster: 'cluster2', network: 'network1', services: [svc('alias', { endpoints: [ep('10.78.1.1'), marked('10.78.1.2'), marked('10.78.1.3', 'not allowed (an older release\'s sentence)')] })] })) as ClusterExport;
  const parsed = parseClusterExport(raw);
  assert.deepEqual(parsed.services[0]!.endpoints.map((e) => e.waypoint), [undefined, { namespace: 'back', name: 'waypoint' }, { namespace: 'back', name: 'waypoint', refused: 'NamespaceNotAllowed' }], 'a refusal stays one whatever its code says');
  const bad = parseClusterExport({ ...raw, services: [{ ...raw.services[0]!, endpoints: [{ ...raw.services[0]!.endpoints[1]!, waypoint: { name: 'waypoint' } }] }, svc('other', { vips: ['10.97.0.21'] })] });
  assert.equal(bad.services[0]!.invalid, 'federation export: services[0].endpoints[0].waypoint.namespace: must be a non-empty string');
  assert.equal(bad.services[1]!.invalid, undefined, 'costs only its Service');
  const m = mergeRemoteServices({ services: [] }, { network: 'network1' }, [parsed]);
  assert.deepEqual(m.services.get('demo/alias')!.endpoints.map((e) => e.ip), ['10.78.1.1']);
  assert.deepEqual(m.refused.map((x) => x.reason), ['endpoints']);
  assert.match(m.refused[0]!.message, /2 of its 3 endpoints not imported: 10\.78\.1\.2: a pod of namespace back behind its own waypoint back\/waypoint of cluster cluster2, which this Service does not go through; reaching it directly would bypass that waypoint's L7 policy; 10\.78\.1\.3: /);
  // Joined to a local copy of the Service, the same.
  const joined = mergeRemoteServices({ services: [svc('alias', { vips: ['10.96.0.9'], endpoints: [ep('10.77.1.1')] })] }, { network: 'network1' }, [parsed]);
  assert.deepEqual(joined.services.get('demo/alias')!.endpoints.map((e) => e.ip), ['10.77.1.1', '10.78.1.1']);
});

test('a local ServiceAccount token obtains the identity of this cluster\'s own waypoint only: an imported waypoint of another cluster, same namespace and same SPIFFE ID, gives it nothing (controller/src/main.ts TokenReview)', () => {
  const own: Pick<Waypoint, 'namespace' | 'spiffeId' | 'cluster'> = { namespace: 'demo', spiffeId: id('demo', 'waypoint') };
  const remote: Pick<Waypoint, 'namespace' | 'spiffeId' | 'cluster'> = { namespace: 'demo', spiffeId: id('demo', 'waypoint'), cluster: 'cluster2' };
  assert.equal(isOwnWaypointIdentity([own], 'demo', id('demo', 'waypoint')), true);
  assert.equal(isOwnWaypointIdentity([remote], 'demo', id('demo', 'waypoint')), false, 'imported from cluster2: not ours to hand out');
  assert.equal(isOwnWaypointIdentity([own, remote], 'other', id('demo', 'waypoint')), false, 'another namespace');
  assert.equal(isOwnWaypointIdentity([own], 'demo', id('demo', 'client')), false, 'another ServiceAccount');
});

// Only a pod's own namespace decides how other networks reach it (Istio: a Service's endpoints are
// its namespace's pods; a hand-written EndpointSlice in another namespace naming the pod is that
// tenant's claim, not the owner's): another namespace's Service, with no waypoint or with its own,
// neither opens the pod's port to other networks nor removes the owner's waypoint guard.
test('exportedPodsOf: a Service of another namespace listing a pod (a hand-written EndpointSlice) neither exports its port nor lifts its own Service\'s waypoint guard; same-namespace Services keep Istio\'s semantics (any one without a waypoint makes the port direct)', () => {
  const owner = { workloadName: 'back', namespace: 'demo', canonicalService: 'back', canonicalRevision: 'latest', cluster: 'cluster2' };
  const pod = (ip: string): Endpoint => ({ ...ep(ip), workload: owner });
  const guarded = svc('guarded', { endpoints: [pod('10.78.1.1')], waypoint: { namespace: 'demo', name: 'waypoint' } });
  const alias = { ...svc('alias', { endpoints: [pod('10.78.1.1'), pod('10.78.1.2')], ports: [{ name: 'admin', port: 9090, targetPort: 9090, protocol: 'TCP', appProtocol: 'tcp' }, { name: 'http', port: 80, targetPort: 8080, protocol: 'TCP', appProtocol: 'http' }] }), namespace: 'tenant', hostname: 'alias.tenant.svc.cluster.local' } as Service;
  const waypoints: ExportedWaypoint[] = [['demo', 'waypoint'], ['tenant', 'wp']].map(([namespace, name]) => ({ namespace: namespace!, name: name!, port: 15008, spiffeId: id(namespace!, name!), ready: true }));
  const pods = exportedPodsOf({ services: [guarded, alias], waypoints });
  assert.deepEqual([...pods.exported].sort(), ['10.78.1.1:8080'], 'the tenant\'s Service exports neither 9090 nor the other pod');
  assert.deepEqual([...pods.guards.get('10.78.1.1:8080')!.ids], [id('demo', 'waypoint')], 'still guarded by its own Service\'s waypoint');
  // A tenant's Service with a waypoint of its own adds no identity to the guard either.
  const aliasWp = exportedPodsOf({ services: [guarded, { ...alias, waypoint: { namespace: 'tenant', name: 'wp' } }], waypoints });
  assert.deepEqual([...aliasWp.guards.get('10.78.1.1:8080')!.ids], [id('demo', 'waypoint')]);
  // Same namespace: a Service without a waypoint makes the port direct (Istio: the pod is reachable through it).
  const plain = exportedPodsOf({ services: [guarded, svc('plain', { endpoints: [pod('10.78.1.1')] })], waypoints });
  assert.deepEqual([...plain.exported], ['10.78.1.1:8080']);
  assert.equal(plain.guards.get('10.78.1.1:8080'), undefined);
});

// A namespace past its share of the export's bytes (exportSelection) lost its largest entries
// first, and a waypoint (~300 B) is larger than a small Service (~200 B): a tenant of thousands of
// small Services got its waypoint left out before them, and every importer then refused each
// Service bound to it, other namespaces' bound across to it too, with no finding for them. A
// waypoint is left out only once none of its namespace's Services is left to leave out, and then
// the Services bound to it are left out too (`waypoint`), each named at its binding.
test('attack: a namespace past its export share loses its Services before its waypoint; a waypoint left out takes the Services bound to it (another namespace\'s too) out with it, each named (reason waypoint, its binding\'s label)', () => {
  const wp = (namespace: string, name: string): Waypoint => ({ name, namespace, address: 'fd00:78::9:9', addresses: ['fd00:78::9:9', 'fd00:78::9:10', 'fd00:78::9:11', '10.78.9.9', '10.78.9.10', '10.78.9.11'], port: 15008, spiffeId: id(namespace, name), ready: true });
  const small = Array.from({ length: 40 }, (_, i) => svc(`s${String(i).padStart(2, '0')}`, { namespace: 'aaa', hostname: `s${i}.aaa.svc.cluster.local`, vips: [`10.97.1.${i}`], endpoints: [], waypoint: { namespace: 'aaa', name: 'waypoint-with-a-long-name-to-be-the-largest-entry' } }));
  const across = svc('front', { namespace: 'bbb', hostname: 'front.bbb.svc.cluster.local', vips: ['10.97.2.1'], endpoints: [], waypoint: { namespace: 'aaa', name: 'waypoint-with-a-long-name-to-be-the-largest-entry' } });
  const plain = svc('plain', { namespace: 'ccc', hostname: 'plain.ccc.svc.cluster.local', vips: ['10.97.2.2'], endpoints: [] });
  const waypoints = [wp('aaa', 'waypoint-with-a-long-name-to-be-the-largest-entry')];
  const services = [...small, across, plain];
  const bytes = (x: object) => Buffer.byteLength(JSON.stringify(x)) + 1;
  assert.ok(bytes(waypoints[0]!) > bytes(small[0]!), 'the waypoint is the namespace\'s largest entry');
  const envelope = 64 * 1024;
  const others = bytes(across) + bytes(plain);
  // aaa's share (what bbb's and ccc's leave): room for its waypoint and 10 of its Services.
  const some = exportSelection(services, waypoints, envelope + others + bytes(waypoints[0]!) + 10 * bytes(small[0]!) + 5);
  assert.deepEqual(some.waypoints.map((w) => w.name), ['waypoint-with-a-long-name-to-be-the-largest-entry'], 'the waypoint is kept while Services of its namespace are left to leave out');
  assert.equal(some.services.filter((s) => s.namespace === 'aaa').length, 10);
  assert.ok(some.services.some((s) => s.name === 'front'), 'the Service bound across to it is exported');
  assert.ok(some.left.every((x) => x.kind === 'Service' && x.namespace === 'aaa' && x.reason === 'namespace-share'));
  // aaa's share too small even for its waypoint alone: it is left out, and so is every Service bound to it.
  const share = Math.max(bytes(across), bytes(plain)) + 1;
  assert.ok(share < bytes(waypoints[0]!));
  const none = exportSelection(services, waypoints, envelope + others + share);
  assert.deepEqual(none.waypoints, []);
  assert.deepEqual(none.services.map((s) => `${s.namespace}/${s.name}`), ['ccc/plain']);
  const front = none.left.find((x) => x.name === 'front')!;
  assert.deepEqual([front.kind, front.namespace, front.reason, front.path], ['Service', 'bbb', 'waypoint', 'metadata.labels["weft.dev/use-waypoint-namespace"]']);
  assert.match(front.message, /goes through waypoint aaa\/waypoint-with-a-long-name-to-be-the-largest-entry, which is left out of the export/);
  assert.ok(none.left.some((x) => x.kind === 'Waypoint' && x.reason === 'namespace-share'));
  assert.equal(none.left.filter((x) => x.kind === 'Service').length, 41, 'each Service left out is named once');
  // What the importer would have refused is not sent at all: no exported Service names a waypoint the export lacks.
  for (const sel of [some, none]) {
    const sent = new Set(sel.waypoints.map((w) => `${w.namespace}/${w.name}`));
    assert.deepEqual(sel.services.filter((s) => s.waypoint && !sent.has(`${s.waypoint.namespace}/${s.waypoint.name}`)), []);
  }
});

// The east-west gateway judges the outer CONNECT by the export it reads (eastwest/src/gateway.ts:
// each waypoint looked up among the export's own), and every agent of the cluster each CONNECT on
// its gateway port by its own copy of the model: the agent looked a guard's waypoint up in its
// whole config, so a waypoint the export left out (its namespace past its share) admitted nobody
// at the gateway and still its own identity at the agent. Both now take exportedPodsOf of one
// selection; compared here guard by guard (pods, Services, waypoints, identities).
test('an agent\'s gateway-port guards are the ones the east-west gateway builds from the export it reads: the same pods, Services, waypoints and identities, with another cluster\'s waypoint of the same name in the agent\'s config', () => {
  const workload = { workloadName: 'echo', namespace: 'demo', canonicalService: 'echo', canonicalRevision: 'v1', cluster: 'cluster1' };
  const own = (ip: string): Endpoint => ({ ...ep(ip), workload });
  const localWp: Waypoint = { name: 'waypoint', namespace: 'demo', address: '10.77.1.7', port: 15008, spiffeId: id('demo', 'waypoint'), ready: true };
  const services = [
    svc('behind', { vips: ['10.96.0.20'], endpoints: [own('10.77.1.1'), own('10.77.1.2')], waypoint: { namespace: 'demo', name: 'waypoint' } }),
    svc('refused', { vips: ['10.96.0.21'], endpoints: [own('10.77.1.3')], waypoint: { namespace: 'demo', name: 'waypoint', refused: 'NamespaceNotAllowed' } }),
    svc('missing', { vips: ['10.96.0.22'], endpoints: [own('10.77.1.4')], waypoint: { namespace: 'demo', name: 'nowhere' } }),
    svc('direct', { vips: ['10.96.0.23'], endpoints: [own('10.77.1.2'), own('10.77.1.5')] }),
  ];
  const fed = new Federation({ cluster: 'cluster1', network: 'network1', remotes: [], tls: () => ({ key: '', cert: '', ca: [] }), mayRead: () => false, isController: () => false, log: silentLogger });
  fed.merge(model(services, [localWp]));
  const atGateway = exportedPodsOf(parseClusterExport(JSON.parse(JSON.stringify(fed.export()))));
  const imported: Waypoint = { ...localWp, spiffeId: 'spiffe://other.td/ns/demo/sa/waypoint', cluster: 'cluster2', network: 'network2', gateway: GW };
  const agent = new AgentState('node1');
  agent.apply({ node: 'node1', workloads: [], services, policies: [], peerAuthentications: [], waypoints: [localWp, imported] });
  const guards = (p: ReturnType<typeof exportedPodsOf>) => [...p.guards].map(([k, g]) => [k, g.services, g.waypoints, [...g.ids]]).sort();
  assert.deepEqual(guards(agent.exportedPods()), guards(atGateway));
  assert.deepEqual([...agent.exportedPods().exported].sort(), [...atGateway.exported].sort());
  assert.deepEqual(guards(atGateway).find(([k]) => k === '10.77.1.1:8080'), ['10.77.1.1:8080', ['demo/behind'], ['demo/waypoint'], [id('demo', 'waypoint')]]);
  assert.deepEqual(guards(atGateway).find(([k]) => k === '10.77.1.3:8080')?.[3], [], 'a refused binding admits no one');
  assert.equal(agent.gatewayRefusal('10.77.1.1', 8080, 'spiffe://other.td/ns/demo/sa/waypoint')?.label, 'behind_waypoint', 'another cluster\'s waypoint of the name is not this one');
  assert.equal(agent.gatewayRefusal('10.77.1.1', 8080, id('demo', 'waypoint')), undefined);
});
