import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AgentState, endpointKey, NoRouteError } from '../../agent/src/state.ts';
import type { AgentConfig, Endpoint, Service, Workload } from '../../lib/model/mesh.ts';
import { MAX_DESTS } from '../../agent/src/datapath/codecs.ts';
import { mergeRemoteServices } from '../../lib/model/federation.ts';
import { overflowChange, overflowNamespaces } from '../../agent/src/agent.ts';

const td = 'cluster.local';
function wl(name: string, ns: string, node: string, ip: string, extra: Partial<Workload> = {}): Workload {
  return {
    uid: `${ns}/${name}`, name, namespace: ns, node, nodeIp: node === 'node1' ? '10.77.0.1' : '10.77.0.2', ip,
    serviceAccount: name, spiffeId: `spiffe://${td}/ns/${ns}/sa/${name}`, labels: { app: name },
    enrolled: true, mode: 'PERMISSIVE', services: [], workloadName: name, canonicalService: name, canonicalRevision: 'latest', cluster: 'Kubernetes', ...extra,
  };
}
function ep(w: Workload, port: number): Endpoint {
  return { workloadUid: w.uid, ip: w.ip, node: w.node, nodeIp: w.nodeIp!, port, ports: { '80': port }, enrolled: w.enrolled, spiffeId: w.spiffeId, ready: true };
}
const client = wl('client', 'default', 'node1', '10.77.1.1');
const local = wl('echo-a', 'default', 'node1', '10.77.1.2');
const remote = wl('echo-b', 'default', 'node2', '10.77.2.1');
const plain = wl('legacy', 'default', 'node2', '10.77.2.2', { enrolled: false });
const echo: Service = {
  name: 'echo', namespace: 'default', hostname: 'echo.default.svc.cluster.local', vips: ['10.96.0.10'],
  ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP', appProtocol: 'http' }],
  endpoints: [ep(local, 8080), ep(remote, 8080)],
};
function config(extra: Partial<AgentConfig> = {}): AgentConfig {
  return { node: 'node1', workloads: [client, local, remote, plain], services: [echo], policies: [], peerAuthentications: [], waypoints: [], ...extra };
}

test('a service address resolves to its endpoints in round-robin order, local ones without TLS', () => {
  const s = new AgentState('node1');
  s.apply(config());
  const first = s.resolve(client, '10.96.0.10', 80);
  const second = s.resolve(client, '10.96.0.10', 80);
  assert.equal(first.length, 2);
  assert.notEqual(first[0]!.target, second[0]!.target, 'round robin rotates the first choice');
  const kinds = Object.fromEntries(first.map((u) => [u.target, u.kind]));
  assert.deepEqual(kinds, { '10.77.1.2:8080': 'local', '10.77.2.1:8080': 'hbone' });
  const h = first.find((u) => u.kind === 'hbone');
  assert.ok(h && h.kind === 'hbone');
  assert.equal(h.address, '10.77.0.2');
  assert.equal(h.port, 15008);
  assert.equal(h.identity, 'spiffe://cluster.local/ns/default/sa/echo-b');
});

test('an endpoint that failed to connect goes last until its backoff ends', () => {
  const s = new AgentState('node1');
  s.apply(config());
  s.endpointFailed('10.77.2.1');
  for (let i = 0; i < 4; i++) assert.equal(s.resolve(client, '10.96.0.10', 80)[0]!.target, '10.77.1.2:8080');
  s.endpointSucceeded('10.77.2.1');
  const firsts = new Set([0, 1, 2].map(() => s.resolve(client, '10.96.0.10', 80)[0]!.target));
  assert.equal(firsts.size, 2);
});

test('least-request prefers the endpoint with fewer open connections', () => {
  const s = new AgentState('node1');
  s.apply(config({ trafficPolicies: [{ name: 'lr', namespace: 'default', service: 'default/echo', timeouts: {}, loadBalancer: 'LEAST_REQUEST' }] }));
  s.connectionOpened('10.77.1.2');
  s.connectionOpened('10.77.1.2');
  for (let i = 0; i < 4; i++) assert.equal(s.resolve(client, '10.96.0.10', 80)[0]!.target, '10.77.2.1:8080');
});

// Istio's loadBalancer RANDOM (Envoy's random LB): each connection draws its endpoint; round robin
// would alternate the two endpoints exactly.
test('RANDOM draws the first endpoint per connection instead of taking turns', () => {
  const s = new AgentState('node1');
  s.apply(config({ trafficPolicies: [{ name: 'rnd', namespace: 'default', service: 'default/echo', timeouts: {}, loadBalancer: 'RANDOM' }] }));
  const firsts = Array.from({ length: 400 }, () => s.resolve(client, '10.96.0.10', 80)[0]!.target);
  const a = firsts.filter((t) => t === '10.77.1.2:8080').length;
  assert.ok(a > 120 && a < 280, `${a} of 400 went to one of two endpoints`);
  assert.ok(firsts.some((t, i) => i > 0 && t === firsts[i - 1]), 'the draw repeats an endpoint at some point, which turns never do');
  assert.equal(s.resolve(client, '10.96.0.10', 80).length, 2, 'the other endpoint follows, for a retry');
});

test('a workload address outside the mesh passes through in plaintext', () => {
  const s = new AgentState('node1');
  s.apply(config());
  assert.deepEqual(s.resolve(client, '10.77.2.2', 5432).map((u) => u.kind), ['passthrough']);
});

test('a service behind a waypoint goes to the waypoint, and fails closed when it is not ready', () => {
  const s = new AgentState('node1');
  const wp = { name: 'waypoint', namespace: 'default', port: 15008, spiffeId: `spiffe://${td}/ns/default/sa/waypoint`, ready: true, address: '10.77.2.9' };
  s.apply(config({ services: [{ ...echo, waypoint: { name: 'waypoint', namespace: 'default' } }], waypoints: [wp] }));
  const [u] = s.resolve(client, '10.96.0.10', 80);
  assert.ok(u && u.kind === 'hbone');
  assert.equal(u.address, '10.77.2.9');
  assert.equal(u.target, '10.96.0.10:80', 'the waypoint gets the service address');
  s.apply(config({ services: [{ ...echo, waypoint: { name: 'waypoint', namespace: 'default' } }], waypoints: [{ ...wp, ready: false, reason: 'no pod' }] }));
  assert.throws(() => s.resolve(client, '10.96.0.10', 80), (e: Error) => e instanceof NoRouteError && /fails closed/.test(e.message));
});

test('connections to a service behind a waypoint with two replicas alternate between them, the other replica next', () => {
  const s = new AgentState('node1');
  const wp = { name: 'waypoint', namespace: 'default', port: 15008, spiffeId: `spiffe://${td}/ns/default/sa/waypoint`, ready: true, address: '10.77.1.9', addresses: ['10.77.1.9', '10.77.2.9'] };
  s.apply(config({ services: [{ ...echo, waypoint: { name: 'waypoint', namespace: 'default' } }], waypoints: [wp] }));
  const picks = Array.from({ length: 4 }, () => s.resolve(client, '10.96.0.10', 80).map((u) => (u.kind === 'hbone' ? u.address : u.kind)));
  assert.deepEqual(picks, [['10.77.1.9', '10.77.2.9'], ['10.77.2.9', '10.77.1.9'], ['10.77.1.9', '10.77.2.9'], ['10.77.2.9', '10.77.1.9']]);
});

test('a service or workload whose waypoint does not exist fails closed instead of going around it', () => {
  const s = new AgentState('node1');
  s.apply(config({ services: [{ ...echo, waypoint: { name: 'gone', namespace: 'default' } }], workloads: [client, { ...remote, waypoint: { name: 'gone', namespace: 'default' } }] }));
  assert.throws(() => s.resolve(client, '10.96.0.10', 80), (e: Error) => e instanceof NoRouteError && /waypoint default\/gone, which does not exist; .*fails closed/.test(e.message));
  assert.throws(() => s.resolve(client, remote.ip, 8080), (e: Error) => e instanceof NoRouteError && /fails closed/.test(e.message));
});

test('unknown addresses and ports are named in the error', () => {
  const s = new AgentState('node1');
  s.apply(config());
  assert.throws(() => s.resolve(client, '10.96.0.10', 81), /no port 81/);
  assert.throws(() => s.resolve(client, '192.0.2.1', 80), /192\.0\.2\.1:80 is not a service or workload/);
});

test('mesh destinations cover service ports and enrolled workload addresses, once each', () => {
  const s = new AgentState('node1');
  s.apply(config());
  const d = s.meshDestinations().map((x) => `${x.ip}:${x.port}`).sort();
  assert.deepEqual(d, ['10.77.1.1:0', '10.77.1.2:0', '10.77.2.1:0', '10.96.0.10:80']);
});

// weft_dests holds WEFT_MAX_DESTS entries; past it the agent keeps the head of this list
// (Datapath.setDestinations), so what other clusters export must come after this cluster's own.
test('mesh destinations list this cluster\'s own first (its workloads, its Services\' VIPs and endpoints), then what other clusters add (the VIPs of Services only they have, their endpoints), so past the map\'s capacity it is an import that is left out', () => {
  const near: Endpoint = { workloadUid: 'c3/db', ip: '10.79.1.1', node: 'c3-node', nodeIp: '10.79.0.1', ports: { '5432': 5432 }, enrolled: true, spiffeId: `spiffe://${td}/ns/default/sa/db`, ready: true, cluster: 'cluster3' };
  const onlyThere: Service = { name: 'db', namespace: 'default', hostname: 'db.default.svc.cluster.local', vips: ['10.97.0.5'], ports: [{ name: 'pg', port: 5432, targetPort: 5432, protocol: 'TCP', appProtocol: 'tcp' }], endpoints: [near], cluster: 'cluster3' };
  const merged: Service = { ...echo, endpoints: [...echo.endpoints, { ...near, workloadUid: 'c3/echo', ip: '10.79.1.2' }] };
  const s = new AgentState('node1');
  s.apply(config({ services: [onlyThere, merged] }));
  const d = s.meshDestinations().map((x) => `${x.ip}:${x.port}`);
  const own = ['10.96.0.10:80', ...echo.endpoints.filter((e) => e.enrolled).map((e) => `${e.ip}:0`)];
  const firstImported = Math.min(d.indexOf('10.97.0.5:5432'), d.indexOf('10.79.1.1:0'), d.indexOf('10.79.1.2:0'));
  assert.ok(firstImported > 0 && own.every((x) => d.indexOf(x) >= 0 && d.indexOf(x) < firstImported), d.join(' '));
  assert.deepEqual(d.slice(firstImported).sort(), ['10.79.1.1:0', '10.79.1.2:0', '10.97.0.5:5432']);
});

// A remote-only Service is imported whatever its endpoints (none: scaled to zero, all left out), and
// its VIPs x ports are destinations all the same; it counted as an import only with an endpoint or
// a waypoint, so 82 empty ones of 8 VIPs x 100 ports (65,600) listed before this cluster's own
// Services filled weft_dests and those lost their VIP redirect. mergeRemoteServices marks an
// import (Service.cluster) and the agent orders on that mark.
test('attack: empty remote-only Services of 8 VIPs x 100 ports listed first never push this cluster\'s own Services out of weft_dests: imports are marked by the merge (cluster) and listed last', () => {
  const ports = Array.from({ length: 100 }, (_, i) => ({ name: `p${i}`, port: i + 1, targetPort: i + 1, protocol: 'TCP' as const, appProtocol: 'tcp' as const }));
  const empty = Array.from({ length: 82 }, (_, i): Service => ({
    name: `s${i}`, namespace: 'aaa', hostname: `s${i}.aaa.svc.cluster.local`, ports, endpoints: [],
    vips: Array.from({ length: 8 }, (_, j) => `10.98.${i}.${j + 1}`),
  }));
  const { services } = mergeRemoteServices({ services: [echo] }, { network: 'network1' }, [{ cluster: 'cluster2', network: 'network1', services: empty }]);
  assert.ok(empty.every((x) => services.get(`aaa/${x.name}`)?.cluster === 'cluster2'), 'each empty import is marked with its cluster');
  assert.equal(services.get('default/echo')!.cluster, undefined, 'this cluster\'s own Service is not');
  // The config lists Services by name: the imports (namespace aaa) before this cluster's echo.
  const s = new AgentState('node1');
  s.apply(config({ services: [...services.values()].sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`)) }));
  const d = s.meshDestinations();
  assert.ok(d.length > MAX_DESTS, `${d.length} destinations, past the map's ${MAX_DESTS}`);
  const kept = new Set(d.slice(0, MAX_DESTS).map((x) => `${x.ip}:${x.port}`));
  assert.ok(kept.has('10.96.0.10:80'), 'this cluster\'s own Service VIP keeps its redirect');
  assert.ok(['10.77.1.1', '10.77.1.2', '10.77.2.1'].every((ip) => kept.has(`${ip}:0`)), 'and its workloads theirs');
});

// weft_dests (MAX_DESTS entries) is shared by every tenant of the node, and Kubernetes puts no bound on
// a Service's ports (kubernetes/kubernetes#99382: "Service does have an unbounded list here", unlike
// an EndpointSlice's 100): one namespace's two Services of 40,000 ports each (about 1 MB each in etcd),
// listed first by name, pushed every later namespace's Service VIPs out of it, so their callers'
// connections went around the mesh (plaintext to kube-proxy, past the destination's waypoint). Each
// namespace's Services now share the map fairly (round-robin, max-min): the namespace past its share
// loses only its own tail.
test('one namespace\'s Services past weft_dests\' capacity cost only that namespace: every other namespace\'s VIPs keep their redirect, the cut is the hog\'s own', () => {
  const hog = (name: string, vip: string): Service => ({
    name, namespace: 'aaa', hostname: `${name}.aaa.svc.cluster.local`, vips: [vip], endpoints: [],
    ports: Array.from({ length: 40_000 }, (_, i) => ({ name: `p${i}`, port: i + 1, targetPort: i + 1, protocol: 'TCP', appProtocol: 'tcp' })),
  });
  const victims: Service[] = ['bbb', 'zzz'].map((ns, i) => ({ ...echo, namespace: ns, hostname: `echo.${ns}.svc.cluster.local`, vips: [`10.96.9.${i + 1}`] }));
  const s = new AgentState('node1');
  s.apply(config({ services: [hog('big1', '10.96.5.1'), hog('big2', '10.96.5.2'), ...victims, echo] }));
  const d = s.meshDestinations();
  assert.ok(d.length > MAX_DESTS, `${d.length} destinations, past the map's ${MAX_DESTS}`);
  const kept = new Set(d.slice(0, MAX_DESTS).map((x) => `${x.ip}:${x.port}`));
  for (const vip of ['10.96.9.1', '10.96.9.2', '10.96.0.10']) assert.ok(kept.has(`${vip}:80`), `${vip}:80 keeps its redirect`);
  assert.ok(['10.77.1.1', '10.77.1.2', '10.77.2.1'].every((ip) => kept.has(`${ip}:0`)), 'and the workloads theirs');
  assert.deepEqual(overflowNamespaces(d, d.length - MAX_DESTS), ['aaa'], 'what is left out is the hog\'s, and the overflow\'s log line names it');
});

// Istio ambient looks a dialled address up within the caller's own network (ztunnel
// src/state.rs find_upstream: workloads.find_address(network_addr(network, ip))): another network's
// pod addresses are its own address space, reachable only through their Service and that
// network's gateway. A remote cluster exporting an endpoint at an address of this network (an
// outside database, a node, an API server) must not capture what this cluster's pods send there.
test('an endpoint of another network (behind its gateway) is no destination by its address here: not captured, not resolved, not an address owner; its Service still reaches it through the gateway; a same-network remote endpoint still is', () => {
  const GW = { network: 'network2', address: '192.168.77.2', port: 15008, spiffeId: `spiffe://${td}/ns/weft-system/sa/weft-eastwest` };
  const far: Endpoint = { workloadUid: 'c2/db', ip: '10.77.9.9', node: 'c2-node', nodeIp: '10.78.0.1', ports: { '5432': 5432 }, enrolled: true, spiffeId: `spiffe://${td}/ns/default/sa/hijacker`, ready: true, cluster: 'cluster2', network: 'network2', gateway: GW };
  const near: Endpoint = { ...far, workloadUid: 'c3/db', ip: '10.79.1.1', nodeIp: '10.79.0.1', cluster: 'cluster3', network: undefined, gateway: undefined };
  const db: Service = { name: 'db', namespace: 'default', hostname: 'db.default.svc.cluster.local', vips: ['10.97.0.5'], ports: [{ name: 'pg', port: 5432, targetPort: 5432, protocol: 'TCP', appProtocol: 'tcp' }], endpoints: [far, near] };
  const s = new AgentState('node1');
  s.apply(config({ services: [echo, db] }));
  const dests = s.meshDestinations().map((x) => `${x.ip}:${x.port}`);
  assert.ok(!dests.includes('10.77.9.9:0'), 'the other network\'s address is not captured');
  assert.ok(dests.includes('10.79.1.1:0') && dests.includes('10.97.0.5:5432'));
  assert.throws(() => s.resolve(client, '10.77.9.9', 5432), NoRouteError);
  assert.equal(s.addressOwner('10.77.9.9'), undefined, 'plaintext from this network\'s 10.77.9.9 is not taken for the other network\'s workload');
  assert.deepEqual(s.resolve(client, '10.79.1.1', 5432).map((u) => [u.kind, u.target]), [['hbone', '10.79.1.1:5432']]);
  const viaVip = s.resolve(client, '10.97.0.5', 5432);
  assert.deepEqual(viaVip.map((u) => [u.kind, u.target, u.kind === 'hbone' ? u.gateway?.address : undefined]).sort(), [['hbone', '10.77.9.9:5432', '192.168.77.2'], ['hbone', '10.79.1.1:5432', undefined]]);
});

// Networks may reuse each other's pod addresses (that is why they are separate networks: ztunnel
// keys its workloads by network and address). An endpoint of another network that fails, or is
// busy, must not be taken for this network's endpoint at the same address.
test('an endpoint of another network at the same address as a local one keeps its own failure and load state (endpointKey): one failing does not push the other back', () => {
  const GW = { network: 'network2', address: '192.168.77.2', port: 15008, spiffeId: `spiffe://${td}/ns/weft-system/sa/weft-eastwest` };
  const twin: Endpoint = { ...ep(local, 8080), workloadUid: 'c2/echo', node: 'c2-node', nodeIp: '10.78.0.1', cluster: 'cluster2', network: 'network2', gateway: GW };
  const svc2: Service = { ...echo, endpoints: [ep(local, 8080), twin] };
  const s = new AgentState('node1');
  s.apply(config({ services: [svc2] }));
  s.endpointFailed(endpointKey(twin));
  for (let i = 0; i < 4; i++) {
    const first = s.resolve(client, '10.96.0.10', 80)[0]!;
    assert.equal(first.kind, 'local', 'the local endpoint stays first: only cluster2\'s failed');
  }
  s.endpointSucceeded(endpointKey(twin));
  s.endpointFailed(endpointKey(svc2.endpoints[0]!));
  for (let i = 0; i < 4; i++) {
    const first = s.resolve(client, '10.96.0.10', 80)[0]!;
    assert.ok(first.kind === 'hbone' && first.gateway?.address === '192.168.77.2', 'cluster2\'s endpoint is first while the local one fails');
  }
  assert.equal(endpointKey(svc2.endpoints[0]!), '10.77.1.2', 'this network\'s endpoints keep their address as key');
});

// IP reuse: a pod is deleted and its address given to a new pod of another namespace and
// ServiceAccount while the config still names the old one there. ztunnel keys its local pods by uid
// (istio/istio cni/pkg/nodeagent finds a pod's namespace by uid; ztunnel's inpod snapshot is keyed by
// WorkloadUid), so the new pod never speaks, nor is judged, as the old one.
test('an address reused by a new pod is never the config\'s stale pod there: its traffic is refused until the config names the new pod', () => {
  const reused = '10.77.1.9';
  const old = wl('payments', 'finance', 'node1', reused, { uid: 'uid-old', mode: 'STRICT' });
  const fresh = wl('intruder', 'tenant', 'node1', '', { uid: 'uid-new' });
  const s = new AgentState('node1');
  s.apply(config({ workloads: [client, old, fresh] }));
  assert.equal(s.localWorkload(reused)?.uid, 'uid-old', 'before any enrolment, the config alone says who holds the address');
  // The CNI plugin enrolled the new pod's namespace at the address; the config still lists the old pod there.
  s.podEnrolled(reused, 'uid-new');
  assert.equal(s.localWorkload(reused), undefined, 'neither the old pod (wrong netns) nor the new one (the config does not give it the address yet)');
  assert.deepEqual(s.staleAt(reused), { enrolledUid: 'uid-new', listed: old }, 'the disagreement is named');
  // A connection to the address from a local client does not go to the new pod as the old one.
  assert.throws(() => s.resolve(client, reused, 8080), (e: unknown) => e instanceof NoRouteError && /enrolled for another pod than finance\/payments/.test(e.message));
  // The config catches up: the old pod is gone and the new one holds the address.
  s.apply(config({ workloads: [client, { ...fresh, ip: reused }] }));
  assert.equal(s.localWorkload(reused)?.spiffeId, fresh.spiffeId);
  assert.equal(s.staleAt(reused), undefined);
  assert.equal(s.resolve(client, reused, 8080)[0]?.kind, 'local');
  s.podUnenrolled(reused);
  assert.equal(s.localWorkload(reused)?.uid, 'uid-new');
});

// A Service's endpoint at an address this agent enrolled for another pod (the config still lists
// the deleted pod there) is not one the Service can reach: it is skipped for the others, as
// ztunnel's load balancing picks only healthy workloads (istio/ztunnel src/state.rs load_balance)
// and Envoy picks another healthy host, not refused by this node's own inbound with a 403.
test('a Service VIP with one stale same-node endpoint and one good endpoint always reaches the good one; with only the stale one, no route naming it', () => {
  const reused = '10.77.1.9';
  const old = wl('echo-old', 'default', 'node1', reused, { uid: 'uid-old' });
  const svc: Service = { ...echo, endpoints: [ep(old, 8080), ep(local, 8080)] };
  const s = new AgentState('node1');
  s.apply(config({ workloads: [client, local, old], services: [svc] }));
  s.podEnrolled(reused, 'uid-new');
  for (let i = 0; i < 6; i++) {
    const candidates = s.resolve(client, '10.96.0.10', 80);
    assert.deepEqual(candidates.map((u) => `${u.kind} ${u.target}`), ['local 10.77.1.2:8080'], `connection ${i}`);
  }
  s.apply(config({ workloads: [client, old], services: [{ ...svc, endpoints: [ep(old, 8080)] }] }));
  assert.throws(() => s.resolve(client, '10.96.0.10', 80), (e: unknown) => e instanceof NoRouteError && /no ready endpoint/.test(e.message) && e.message.includes(reused));
  // Dialled by its address (an endpoint the config lists with no workload there): no route either.
  s.apply(config({ workloads: [client], services: [{ ...svc, endpoints: [ep(old, 8080)] }] }));
  assert.throws(() => s.resolve(client, reused, 8080), (e: unknown) => e instanceof NoRouteError && /enrolled for another pod/.test(e.message));
});

// A remote within its quota changes its export often; each change of how many destinations are
// left out was a warning of its own.
test('weft_dests\' overflow is logged when it starts and when it ends, not at every change of its size (the gauge has that)', () => {
  assert.deepEqual([[0, 0], [0, 5], [5, 7], [7, 7], [7, 0]].map(([a, b]) => overflowChange(a!, b!)), [undefined, 'started', undefined, undefined, 'ended']);
});
