// What a waypoint is sent when pods change elsewhere in the mesh (issue 20): the address-owner table
// its for= decision needs (lib/hbone/forwarded.ts), as deltas, and not the mesh's workloads. A pod
// change in another namespace costs it one entry or nothing; what it is sent keeps the for=
// decision exactly as the agents make it, including when an address is held twice.
import { EventEmitter } from 'node:events';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { compile, emptyInputs, type MeshInputs } from '../../controller/src/compile.ts';
import { AddressOwnerTable } from '../../controller/src/xds/address-owners.ts';
import { ConfigServer } from '../../controller/src/xds/server.ts';
import { tunnelClient } from '../../lib/hbone/forwarded.ts';
import type { Pod } from '../../lib/model/objects.ts';
import type { WaypointConfig, Workload } from '../../lib/model/mesh.ts';
import { ConfigClient } from '../../lib/xds/client.ts';
import { TYPE_URLS, configStreamServiceDefinition, type ConfigStreamCall, type DeltaConfigRequest, type DeltaConfigResponse } from '../../lib/xds/protocol.ts';
import { buildSnapshot } from '../../waypoint/src/config.ts';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import { ns, pod, svc, waypoint } from './controller-fixtures.ts';
import { until } from './controller-harness.ts';

const FRONT = 'spiffe://cluster.local/ns/web/sa/front';
const NODE_B = '192.168.0.2';

function inputs(webPods: Pod[]): MeshInputs {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'waypoint' }), ns('web', { 'weft.dev/dataplane-mode': 'ambient' }));
  i.waypoints.push(waypoint('shop', 'waypoint'));
  i.pods.push(pod('shop', 'reviews', { ip: '10.4.0.1' }), ...webPods);
  i.services.push(svc('shop', 'reviews', { app: 'reviews' }, '10.96.0.20'), svc('web', 'front', { app: 'front' }, '10.96.0.21'));
  return i;
}

interface Sent { kind: string; res: DeltaConfigResponse }

async function serve(configServer: ConfigServer, sent: Sent[]): Promise<{ server: grpc.Server; port: number }> {
  const server = new grpc.Server();
  server.addService(configStreamServiceDefinition(), {
    DeltaConfig: (call: ConfigStreamCall) => {
      let kind = '';
      call.once('data', (req: DeltaConfigRequest) => { kind = req.node?.kind ?? ''; });
      const write = call.write.bind(call);
      // The callback too: the server holds a stream's next batch until it has taken the last.
      call.write = ((m: DeltaConfigResponse, cb?: (e?: Error | null) => void) => {
        sent.push({ kind, res: m });
        return write(m, cb);
      }) as typeof call.write;
      configServer.handle(call);
    },
  });
  const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  return { server, port };
}

/** `Type:name` of every resource (and `-Type:name` of every removal) sent to `kind` since `from`. */
function delivered(sent: Sent[], kind: string, from: number): string[] {
  return sent.slice(from).filter((s) => s.kind === kind).flatMap(({ res }) => {
    const type = res.type_url.split('.').pop();
    return [...res.resources.map((r) => `${type}:${r.name}`), ...res.removed_resources.map((n) => `-${type}:${n}`)];
  }).sort();
}

test('a pod change in another namespace sends a waypoint one address-owner entry or nothing, never workloads, and its for= decision follows', async () => {
  const configServer = new ConfigServer();
  const front = pod('web', 'front', { node: 'node-b', ip: '10.5.0.1' });
  configServer.publish(compile(inputs([front])).model);
  const sent: Sent[] = [];
  const { server, port } = await serve(configServer, sent);
  const engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
  const wp = new ConfigClient({ target: `127.0.0.1:${port}`, credentials: grpc.credentials.createInsecure(), kind: 'waypoint', id: 'waypoint-0', namespace: 'shop',
    validate: (cfg) => engine.validateConfig(cfg) });
  wp.on('snapshot', (cfg) => engine.applyConfig(cfg));
  const agent = new ConfigClient({ target: `127.0.0.1:${port}`, credentials: grpc.credentials.createInsecure(), kind: 'agent', id: 'node-b' });
  // The caller's agent on node-b claims an address for a workload of web/front.
  const claim = (ip: string) => engine.tunnelClient({ peer: { spiffeId: FRONT, address: NODE_B, port: 40000 }, forwardedFor: { ip, port: 5555 }, headers: { forwarded: `for="${ip}:5555"` } });
  const publish = async (webPods: Pod[]): Promise<string> => {
    const version = configServer.publish(compile(inputs(webPods)).model);
    await until(`every client acknowledged ${version} or was sent nothing`, () => configServer.clients().every((c) => c.synced) && agent.version === version, 5000);
    return version;
  };
  try {
    wp.start();
    agent.start();
    await Promise.all([wp.ready(), agent.ready()]);
    const first = wp.snapshot!;
    assert.deepEqual(first.addressOwners?.map((o) => o.ip).sort(), ['10.4.0.1', '10.5.0.1']);
    assert.equal((first as WaypointConfig & { workloads?: unknown }).workloads, undefined, 'no workloads');
    assert.ok(delivered(sent, 'waypoint', 0).every((r) => !r.startsWith('Workload:')));
    assert.equal(claim('10.5.0.1').source, 'forwarded');

    // A label of web/front changes (not its address, identity or Services): the agents get the
    // workload, the waypoint nothing at all.
    let mark = sent.length;
    await publish([pod('web', 'front', { node: 'node-b', ip: '10.5.0.1', labels: { app: 'front', tier: 'edge' } })]);
    assert.deepEqual(delivered(sent, 'agent', mark), ['Workload:uid-web-front']);
    assert.deepEqual(delivered(sent, 'waypoint', mark), []);
    assert.equal(wp.snapshot, first, 'the waypoint applied nothing new');

    // A new pod in web: its address's entry, and not web's Service (the waypoint serves shop).
    mark = sent.length;
    const second = pod('web', 'front-2', { node: 'node-b', ip: '10.5.0.2', sa: 'front', labels: { app: 'front' } });
    await publish([front, second]);
    assert.deepEqual(delivered(sent, 'waypoint', mark), ['AddressOwner:10.5.0.2']);
    await until('the waypoint applied it', () => wp.snapshot?.addressOwners?.length === 3);
    assert.equal(claim('10.5.0.2').source, 'forwarded');

    // The pod goes: its entry is removed, and a claim on its address is no longer believed.
    mark = sent.length;
    await publish([front]);
    assert.deepEqual(delivered(sent, 'waypoint', mark), ['-AddressOwner:10.5.0.2']);
    await until('the waypoint applied the removal', () => wp.snapshot?.addressOwners?.length === 2);
    assert.deepEqual(claim('10.5.0.2').ignored, { reason: 'unknown-address', claimed: '10.5.0.2:5555' });

    // A pod of the waypoint's own namespace changes a Service it serves: that Service too.
    mark = sent.length;
    await publish([front].concat([pod('shop', 'reviews-2', { ip: '10.4.0.2', sa: 'reviews', labels: { app: 'reviews' } })]));
    assert.deepEqual(delivered(sent, 'waypoint', mark), ['AddressOwner:10.4.0.2', 'Service:shop/reviews']);
  } finally {
    wp.close();
    agent.close();
    await engine.close();
    server.forceShutdown();
  }
});

test('an address-owner change alone rebuilds only the waypoint\'s address table, not its routes, policies and services', () => {
  const base: WaypointConfig = { namespace: 'shop', services: [], routes: [], trafficPolicies: [], policies: [], waypoints: [], addressOwners: [{ ip: '10.5.0.1', spiffeId: FRONT, nodeIp: NODE_B }] };
  const one = buildSnapshot(base, 1);
  const two = buildSnapshot({ ...base, addressOwners: [...base.addressOwners!, { ip: '10.5.0.2', spiffeId: FRONT, nodeIp: NODE_B }] }, 2, one);
  assert.equal(two.routes, one.routes);
  assert.equal(two.policies, one.policies);
  assert.equal(two.services, one.services);
  assert.equal(two.version, 2);
  assert.deepEqual(two.addressOwners.get('10.5.0.2'), { spiffeId: FRONT, nodeIp: NODE_B });
  // Anything else new is built again.
  const three = buildSnapshot({ ...two.config, policies: [] }, 3, two);
  assert.notEqual(three.policies, two.policies);
  assert.equal(three.addressOwners, two.addressOwners);
});

function workload(uid: string, ip: string, spiffeId: string, nodeIp: string, enrolled = true): Workload {
  return {
    uid, name: uid, namespace: 'web', node: 'n', nodeIp, ip, serviceAccount: uid, spiffeId, labels: {}, enrolled, mode: 'PERMISSIVE', services: [],
    workloadName: uid, canonicalService: uid, canonicalRevision: 'latest', cluster: 'Kubernetes',
  };
}

test('an address two workloads of different identities hold at once vouches for neither, until one lets it go (fail closed, not first-come)', () => {
  const owners = new AddressOwnerTable();
  const decide = (spiffeId: string, nodeIp: string) => tunnelClient({ addressOwner: (ip) => owners.table.get(ip), waypointsServing: () => [] }, undefined,
    { peer: { spiffeId, address: nodeIp, port: 1 }, forwardedFor: { ip: '10.5.0.9', port: 2 }, headers: { forwarded: 'for="10.5.0.9:2"' } });
  const old = workload('old', '10.5.0.9', FRONT, NODE_B);
  const attacker = workload('new', '10.5.0.9', 'spiffe://cluster.local/ns/web/sa/attacker', '192.168.0.3');
  let before = new Map<string, Workload>();
  const set = (ws: Workload[], changed: string[]) => {
    const after = new Map(ws.map((w) => [w.uid, w]));
    const touched = owners.update(before, after, changed);
    before = after;
    return touched;
  };
  assert.deepEqual(set([old], ['old']), ['10.5.0.9']);
  assert.equal(decide(FRONT, NODE_B).source, 'forwarded');
  // The address is handed to another pod while the old one is still listed: neither is believed.
  assert.deepEqual(set([old, attacker], ['new']), ['10.5.0.9']);
  assert.deepEqual(owners.table.get('10.5.0.9'), { ip: '10.5.0.9' });
  assert.equal(decide(FRONT, NODE_B).ignored?.reason, 'identity-mismatch');
  assert.equal(decide(attacker.spiffeId, '192.168.0.3').ignored?.reason, 'identity-mismatch');
  // The old pod goes: the address is the new pod's.
  assert.deepEqual(set([attacker], ['old']), ['10.5.0.9']);
  assert.equal(decide(attacker.spiffeId, '192.168.0.3').source, 'forwarded');
  assert.equal(decide(FRONT, NODE_B).ignored?.reason, 'identity-mismatch');
  // A change that leaves the owner as it was (labels) touches no entry; a plain pod's address vouches for nobody.
  assert.deepEqual(set([{ ...attacker, labels: { a: 'b' } }], ['new']), []);
  assert.deepEqual(set([{ ...attacker, labels: { a: 'b' }, enrolled: false }], ['new']), ['10.5.0.9']);
  assert.equal(decide(attacker.spiffeId, '192.168.0.3').ignored?.reason, 'identity-mismatch');
  assert.deepEqual(set([], ['new']), ['10.5.0.9']);
  assert.equal(owners.table.has('10.5.0.9'), false);
});

test('a waypoint of the previous release, subscribing to every Workload, is still served during a rollout', async () => {
  const configServer = new ConfigServer();
  configServer.publish(compile(inputs([pod('web', 'front', { node: 'node-b', ip: '10.5.0.1' })])).model);
  const written: DeltaConfigResponse[] = [];
  const call = Object.assign(new EventEmitter(), { write: (m: DeltaConfigResponse) => { written.push(m); return true; }, end: () => {} });
  configServer.handle(call as unknown as ConfigStreamCall);
  call.emit('data', {
    node: { id: 'old-waypoint', kind: 'waypoint', namespace: 'shop', user_agent: 'weft-previous' },
    type_url: TYPE_URLS.Workload, resource_names_subscribe: ['*'], resource_names_unsubscribe: [], initial_resource_versions: {}, response_nonce: '',
  } satisfies DeltaConfigRequest);
  await until('the workloads are sent', () => written.length > 0);
  assert.deepEqual(written[0]!.resources.map((r) => r.name).sort(), ['uid-shop-reviews', 'uid-web-front']);
  configServer.closeAll();
});

// A waypoint runs in its tenant's namespace, under its tenant's identity: it is sent no pod's labels
// (no waypoint reads them: its policies attach by targetRefs, its telemetry names come resolved),
// as no agent of another node is (controller/src/xds/views.ts remoteWorkload; Istio's workload
// address type carries no labels, only canonical_name, canonical_revision and workload_name:
// istio/ztunnel proto/workload.proto Workload).
test('a waypoint of the previous release, subscribing to every Workload, is sent none of their labels', async () => {
  const configServer = new ConfigServer();
  configServer.publish(compile(inputs([pod('web', 'front', { node: 'node-b', ip: '10.5.0.1', labels: { app: 'front', 'secret-team': 'x' } })])).model);
  const written: DeltaConfigResponse[] = [];
  const call = Object.assign(new EventEmitter(), { write: (m: DeltaConfigResponse) => { written.push(m); return true; }, end: () => {} });
  configServer.handle(call as unknown as ConfigStreamCall);
  call.emit('data', {
    node: { id: 'old-waypoint', kind: 'waypoint', namespace: 'shop', user_agent: 'weft-previous' },
    type_url: TYPE_URLS.Workload, resource_names_subscribe: ['*'], resource_names_unsubscribe: [], initial_resource_versions: {}, response_nonce: '',
  } satisfies DeltaConfigRequest);
  try {
    await until('the workloads are sent', () => written.length > 0);
    const sent = written[0]!.resources.map((r) => JSON.parse(String(r.body)) as Workload);
    assert.deepEqual(sent.map((w) => [w.name, w.labels, w.canonicalService]).sort(), [['front', {}, 'front'], ['reviews', {}, 'reviews']]);
  } finally {
    configServer.closeAll();
  }
});
