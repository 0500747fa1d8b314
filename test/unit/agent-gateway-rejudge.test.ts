// A connection the east-west gateway carried to a pod (the agent's gateway port, 15009) is judged
// by the gateway's rules (AgentState.gatewayRefusal: only the ports the exported Services send
// to, a pod behind a waypoint only as that waypoint) at its CONNECT and again at every config
// change while it is open (LocalDelivery.reauthorize), as ztunnel judges its open connections
// again at a policy change (istio/ztunnel src/proxy/connection_manager.rs: the policy watcher closes
// connections no longer allowed). Before, a remote caller's tunnel opened while a Service was
// exported kept flowing after the Service was withdrawn or put behind a waypoint.
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import { LocalDelivery } from '../../agent/src/delivery.ts';
import { AgentMetrics } from '../../agent/src/metrics.ts';
import { AgentState } from '../../agent/src/state.ts';
import type { Logger } from '../../lib/log.ts';
import type { AgentConfig, Endpoint, Service, Waypoint, Workload } from '../../lib/model/mesh.ts';

const TD = 'cluster.local';
const id = (ns: string, sa: string) => `spiffe://${TD}/ns/${ns}/sa/${sa}`;
/** Another network's caller, carried by the gateway. */
const REMOTE = id('demo', 'client');
const WAYPOINT = id('demo', 'waypoint');

const echo: Workload = {
  uid: 'demo/echo', name: 'echo', namespace: 'demo', node: 'node1', nodeIp: '10.77.0.1', ip: '10.77.1.2',
  serviceAccount: 'echo', spiffeId: id('demo', 'echo'), labels: { app: 'echo' }, enrolled: true, mode: 'PERMISSIVE',
  services: ['demo/echo'], workloadName: 'echo', canonicalService: 'echo', canonicalRevision: 'latest', cluster: 'Kubernetes',
};
const endpoint: Endpoint = {
  workloadUid: echo.uid, ip: echo.ip, node: 'node1', nodeIp: echo.nodeIp, ports: { '80': 8080 }, enrolled: true, spiffeId: echo.spiffeId, ready: true,
  workload: { workloadName: 'echo', namespace: 'demo', canonicalService: 'echo', canonicalRevision: 'latest', cluster: 'Kubernetes' },
};
const svc: Service = { name: 'echo', namespace: 'demo', hostname: 'echo.demo.svc.cluster.local', vips: ['10.96.0.10'], ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP', appProtocol: 'http' }], endpoints: [endpoint] };
const waypoint: Waypoint = { name: 'waypoint', namespace: 'demo', address: '10.77.1.40', port: 15008, spiffeId: WAYPOINT, ready: true };

function setup() {
  const state = new AgentState('node1');
  const config: AgentConfig = { node: 'node1', workloads: [echo], services: [svc], policies: [], peerAuthentications: [], waypoints: [waypoint] };
  state.apply(config);
  const records: Array<{ msg: string; fields: Record<string, unknown> | undefined }> = [];
  const line = (m: string, f?: Record<string, unknown>) => { records.push({ msg: m, fields: f }); };
  const log: Logger = { debug() {}, info: line, warn: line, error: line };
  const metrics = new AgentMetrics();
  const delivery = new LocalDelivery({ state, metrics, log, datapath: { registerPeer() {}, unregisterPeer() { return true; }, tagAgentSocket() {} } });
  delivery.configApplied(config);
  /** A push: the state applies it, then the open deliveries are judged by what changed (as the agent does). */
  const push = (next: AgentConfig): number => {
    state.apply(next);
    return delivery.configApplied(next);
  };
  /** An open delivery to echo:8080 from REMOTE, through the gateway or not. */
  const open = (throughGateway: boolean, principal = REMOTE) => {
    const upstream = new PassThrough();
    assert.equal(state.gatewayRefusal(echo.ip, 8080, principal), undefined, 'carried at its CONNECT');
    delivery.track({ dest: state.localWorkload(echo.ip)!, port: 8080, source: { sourceIp: '10.88.0.9', sourcePrincipal: principal }, upstream, judgedAt: state.version, ...(throughGateway ? { throughGateway } : {}) });
    return upstream;
  };
  return { state, delivery, metrics, records, config, open, push };
}

const denied = async (m: AgentMetrics, reason: string): Promise<number> => (await m.denied.get()).values.filter((v) => v.labels['reason'] === reason).reduce((n, v) => n + v.value, 0);

test('a connection the east-west gateway carried is closed when its Service is no longer exported at that port: counted not_exported and logged; one from this network stays (https://istio.io/latest/docs/ambient/install/multicluster/: the gateway carries callers to exported Services only)', async () => {
  for (const change of ['service withdrawn', 'port removed'] as const) {
    const s = setup();
    const carried = open(s, true);
    const local = open(s, false);
    const services = change === 'service withdrawn' ? [] : [{ ...svc, ports: [{ name: 'other', port: 81, targetPort: 9090, protocol: 'TCP' as const, appProtocol: 'tcp' as const }] }];
    // Only the Services change: neither the policies nor the workloads.
    const next = { ...s.config, services };
    assert.equal(s.push(next), 1, change);
    assert.equal(carried.destroyed, true, change);
    assert.equal(local.destroyed, false, `${change}: 15008's rules are the policies', which did not change`);
    assert.equal(await denied(s.metrics, 'not_exported'), 1);
    const line = s.records.find((r) => r.msg === 'open connection closed: the east-west gateway no longer carries it');
    assert.equal(line?.fields?.['label'], 'not_exported');
    assert.equal(line?.fields?.['destination'], 'demo/echo:8080');
    assert.equal(line?.fields?.['source'], REMOTE);
    assert.match(String(line?.fields?.['reason']), /10\.77\.1\.2:8080 is not an endpoint of a Service this cluster exports/);
    // Judged once: a push changing nothing more closes nothing more.
    assert.equal(s.push({ ...next }), 0);
  }
});

function open(s: ReturnType<typeof setup>, throughGateway: boolean, principal = REMOTE) {
  return s.open(throughGateway, principal);
}

test('a connection the east-west gateway carried is closed when its pod\'s Service goes behind a waypoint, unless it is that waypoint\'s: counted behind_waypoint and logged', async () => {
  const s = setup();
  const remote = open(s, true);
  const fromWaypoint = open(s, true, WAYPOINT);
  assert.equal(s.push({ ...s.config, services: [{ ...svc, waypoint: { name: 'waypoint', namespace: 'demo' } }] }), 1);
  assert.equal(remote.destroyed, true);
  assert.equal(fromWaypoint.destroyed, false, 'the waypoint\'s own identity is still carried');
  assert.equal(await denied(s.metrics, 'behind_waypoint'), 1);
  const line = s.records.find((r) => r.msg === 'open connection closed: the east-west gateway no longer carries it');
  assert.match(String(line?.fields?.['reason']), /behind waypoint demo\/waypoint of this cluster/);
});

test('a waypoint withdrawn closes what only its identity was carried to: a push changing only the waypoints judges the gateway\'s deliveries again', async () => {
  const s = setup();
  const guarded = { ...s.config, services: [{ ...svc, waypoint: { name: 'waypoint', namespace: 'demo' } }] };
  s.push(guarded);
  const fromWaypoint = open(s, true, WAYPOINT);
  // The waypoint is gone: the guard admits no one (fail closed), and only the waypoints changed.
  assert.equal(s.push({ ...guarded, waypoints: [] }), 1);
  assert.equal(fromWaypoint.destroyed, true);
  assert.equal(await denied(s.metrics, 'behind_waypoint'), 1);
});

// A delivery is judged before its pod connect and tracked after it: a push applied while it
// connected is one reauthorize did not see (it was not open yet), so it came in under the old
// rules and kept them until a later push. ztunnel's connection manager judges a connection it
// registers against the current policies (istio/ztunnel src/proxy/connection_manager.rs); here
// track judges it again at once when the state moved on since its judgement (judgedAt), by the
// gateway's rules and the policies alike.
test('a delivery whose judgement straddled a push is judged again when tracked: one the gateway no longer carries, or a new DENY names, is closed at once, counted once and named; one judged by the current config is not judged again', async () => {
  const s = setup();
  // Judged at its CONNECT, then the Service is withdrawn while the pod connect is in flight.
  const judgedAt = s.state.version;
  assert.equal(s.state.gatewayRefusal(echo.ip, 8080, REMOTE), undefined);
  s.push({ ...s.config, services: [] });
  const carried = new PassThrough();
  const closed = s.delivery.track({ dest: echo, port: 8080, source: { sourceIp: '10.88.0.9', sourcePrincipal: REMOTE }, upstream: carried, throughGateway: true, judgedAt });
  assert.match(String(closed), /10\.77\.1\.2:8080 is not an endpoint of a Service this cluster exports/);
  assert.equal(carried.destroyed, true);
  assert.equal(await denied(s.metrics, 'not_exported'), 1, 'counted once');
  const lines = s.records.filter((r) => r.msg === 'open connection closed: the east-west gateway no longer carries it');
  assert.equal(lines.length, 1);
  assert.equal(lines[0]!.fields?.['label'], 'not_exported');
  // Closed, it is not judged (or counted) again at the next push.
  assert.equal(s.push({ ...s.config, services: [], policies: [] }), 0);
  assert.equal(await denied(s.metrics, 'not_exported'), 1);

  // The policies alike: a DENY of the caller arrives while it connects.
  const p = setup();
  const before = p.state.version;
  const deny = { name: 'no-remote', namespace: 'demo', action: 'DENY' as const, scope: 'workload' as const, selector: { app: 'echo' }, rules: [{ from: [{ principals: [REMOTE] }], to: [], when: [], layer: 'L4' as const }], layer: 'L4' as const };
  p.push({ ...p.config, policies: [deny] });
  const local = new PassThrough();
  assert.notEqual(p.delivery.track({ dest: echo, port: 8080, source: { sourceIp: '10.88.0.9', sourcePrincipal: REMOTE }, upstream: local, judgedAt: before }), undefined);
  assert.equal(local.destroyed, true);
  assert.equal(await denied(p.metrics, 'policy'), 1, 'counted once');
  assert.equal(p.records.filter((r) => r.msg === 'open connection closed: the policies no longer allow it').length, 1);
  // Judged by the config in force: tracked as it is (no second evaluation, no count).
  const current = new PassThrough();
  assert.equal(p.delivery.track({ dest: echo, port: 8080, source: { sourceIp: '10.88.0.9', sourcePrincipal: id('demo', 'other') }, upstream: current, judgedAt: p.state.version }), undefined);
  assert.equal(current.destroyed, false);
  assert.equal(await denied(p.metrics, 'policy'), 1);
});

// Every endpoint change anywhere in the mesh is a Services push. What it can change for an open
// delivery is the gateway's rules (the deliveries the gateway carried) and whose address a
// plaintext client's is; a push changing only the policies or workloads cannot change what the
// gateway carries, so it asks nothing of the exported pods (built from every Service's
// endpoints and ports).
test('a push judges only what it can change: a policies or workloads push asks nothing of the gateway\'s rules; a Services push looks at no delivery from this network', async () => {
  const s = setup();
  let askedGateway = 0;
  const gatewayRefusal = s.state.gatewayRefusal.bind(s.state);
  s.state.gatewayRefusal = (...a) => { askedGateway++; return gatewayRefusal(...a); };
  let lookedUp = 0;
  const localWorkload = s.state.localWorkload.bind(s.state);
  s.state.localWorkload = (ip) => { lookedUp++; return localWorkload(ip); };
  const carried = open(s, true);
  const locals = Array.from({ length: 10 }, () => open(s, false));
  askedGateway = 0;
  lookedUp = 0;
  // Policies and workloads only (a new array each, the Services as they were).
  const pushed = { ...s.config, policies: [], workloads: [...s.config.workloads] };
  assert.equal(s.push(pushed), 0);
  assert.equal(askedGateway, 0, 'the gateway\'s rules are not asked when no Service or waypoint changed');
  assert.equal(carried.destroyed, false);
  // Services only: the one delivery the gateway carried is judged, the ten from this network not looked at.
  lookedUp = 0;
  assert.equal(s.push({ ...pushed, services: [{ ...svc }] }), 0);
  assert.equal(askedGateway, 1);
  assert.equal(lookedUp, 1, 'only the gateway\'s delivery');
  assert.ok(locals.every((l) => !l.destroyed));
});
