import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { compile, emptyInputs, type MeshInputs } from '../../controller/src/compile.ts';
import { ConfigServer } from '../../controller/src/xds/server.ts';
import { ConfigClient } from '../../lib/xds/client.ts';
import { backoffDelay } from '../../lib/backoff.ts';
import { configStreamServiceDefinition, type ConfigStreamCall, type DeltaConfigResponse } from '../../lib/xds/protocol.ts';
import { ns, pod, svc } from './controller-fixtures.ts';
import { until } from './controller-harness.ts';

function inputs(podNames: string[]): MeshInputs {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  for (const [n, name] of podNames.entries()) i.pods.push(pod('shop', name, { ip: `10.3.0.${n + 1}` }));
  i.services.push(svc('shop', 'web'), svc('shop', 'other', { app: 'other' }, '10.96.0.11'));
  return i;
}

async function serveRecording(configServer: ConfigServer, sent: DeltaConfigResponse[], port = 0): Promise<{ server: grpc.Server; port: number }> {
  const server = new grpc.Server();
  server.addService(configStreamServiceDefinition(), {
    DeltaConfig: (call: ConfigStreamCall) => {
      const write = call.write.bind(call);
      // The callback too: the server holds a stream's next batch until it has taken the last.
      call.write = ((m: DeltaConfigResponse, cb?: (e?: Error | null) => void) => {
        sent.push(m);
        return write(m, cb);
      }) as typeof call.write;
      configServer.handle(call);
    },
  });
  const bound = await new Promise<number>((res, rej) => server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  return { server, port: bound };
}

test('backoff grows exponentially to its cap with bounded jitter', () => {
  const o = { initialMs: 100, maxMs: 1000, multiplier: 2, jitter: 0.2 };
  assert.equal(backoffDelay(0, o, () => 0.5), 100);
  assert.equal(backoffDelay(3, o, () => 0.5), 800);
  assert.equal(backoffDelay(10, o, () => 0.5), 1000);
  assert.equal(backoffDelay(0, o, () => 0), 80);
  assert.equal(backoffDelay(0, o, () => 1), 120);
});

test('a client that reconnects sends the versions it holds and receives only what changed', async () => {
  const configServer = new ConfigServer();
  configServer.publish(compile(inputs(['web', 'api'])).model);
  const sent: DeltaConfigResponse[] = [];
  let { server, port } = await serveRecording(configServer, sent);
  const client = new ConfigClient({ target: `127.0.0.1:${port}`, credentials: grpc.credentials.createInsecure(), kind: 'agent', id: 'node-a', backoff: { initialMs: 20, maxMs: 100 } });
  const snapshots: string[] = [];
  client.on('snapshot', (c) => snapshots.push(c.workloads.map((w) => w.name).sort().join()));
  try {
    client.start();
    await client.ready();
    assert.equal(client.snapshot!.workloads.length, 2);
    assert.equal(client.snapshot!.services.length, 2);

    const disconnected = new Promise((r) => client.once('disconnected', r));
    server.forceShutdown();
    await disconnected;
    configServer.closeAll();
    configServer.publish(compile(inputs(['web', 'api', 'new'])).model);
    sent.length = 0;
    ({ server } = await serveRecording(configServer, sent, port));
    await until('client reconnected and converged', () => snapshots.at(-1) === 'api,new,web', 5000);
    const resources = sent.flatMap((r) => r.resources.map((x) => `${r.type_url.split('.').pop()}:${x.name}`));
    // Only the new workload travelled again; everything else was already held at its version.
    assert.deepEqual(resources.sort(), ['Workload:uid-shop-new']);
    assert.ok(sent.every((r) => r.system_version_info === sent[0]!.system_version_info), 'one consistent version');
  } finally {
    client.close();
    server.forceShutdown();
  }
});

test('an agent is sent the mesh\'s enrolled workloads but not other nodes\' plain pods nor policies that select none of its workloads', async () => {
  const i = inputs(['web']);
  i.pods.push(pod('shop', 'far', { node: 'node-b' }));
  // Outside the mesh: sent to its own node's agent (the CNI plugin asks about it), to no other.
  i.pods.push(pod('shop', 'plain-near', { labels: { app: 'plain-near', 'weft.dev/dataplane-mode': 'none' } }));
  i.pods.push(pod('shop', 'plain-far', { node: 'node-b', labels: { app: 'plain-far', 'weft.dev/dataplane-mode': 'none' } }));
  i.authorizationPolicies.push(
    { apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'for-web', namespace: 'shop' }, spec: { selector: { matchLabels: { app: 'web' } } } },
    { apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'for-far', namespace: 'shop' }, spec: { selector: { matchLabels: { app: 'far' } } } },
  );
  const configServer = new ConfigServer();
  configServer.publish(compile(i).model);
  const sent: DeltaConfigResponse[] = [];
  const { server, port } = await serveRecording(configServer, sent);
  const client = new ConfigClient({ target: `127.0.0.1:${port}`, credentials: grpc.credentials.createInsecure(), kind: 'agent', id: 'node-a' });
  try {
    client.start();
    const cfg = await client.ready();
    // Other nodes' enrolled workloads: an inbound tunnel's forwarded client is checked against them.
    assert.deepEqual(cfg.workloads.map((w) => w.name).sort(), ['far', 'plain-near', 'web']);
    assert.deepEqual(cfg.policies.map((p) => p.name), ['for-web']);
    assert.ok(!sent.some((r) => r.resources.some((x) => x.name.includes('for-far') || x.name.includes('plain-far'))), 'node-b\'s policies and plain pods did not go on the wire');
  } finally {
    client.close();
    server.forceShutdown();
  }
});

test('with client identity required, an agent may read only its own node and a waypoint only its namespace', async () => {
  const { X509Certificate } = await import('node:crypto');
  const { CertificateAuthority } = await import('../../lib/identity/ca.ts');
  const { spiffeStreamAuthorizer } = await import('../../controller/src/xds/authz.ts');
  const ca = await CertificateAuthority.generateRoot({ trustDomain: 'cluster.local' });
  const cert = async (uri: string) => {
    const issued = await ca.issueServingCertificate({ uris: [uri], dnsNames: [], ipAddresses: [] });
    return { raw: new X509Certificate(issued.certChain[0]!).raw } as import('node:tls').PeerCertificate;
  };
  const authorize = spiffeStreamAuthorizer('cluster.local', ca);
  const nodeA = await cert('spiffe://cluster.local/node/node-a');
  const shopWp = await cert('spiffe://cluster.local/ns/shop/sa/wp');
  assert.equal(authorize({ kind: 'agent', id: 'node-a', namespace: '' }, nodeA), undefined);
  assert.match(authorize({ kind: 'agent', id: 'node-b', namespace: '' }, nodeA)!, /may not read the config of node node-b/);
  assert.match(authorize({ kind: 'agent', id: 'node-a', namespace: '' }, undefined)!, /no client certificate/);
  assert.equal(authorize({ kind: 'waypoint', id: 'wp-1', namespace: 'shop' }, shopWp), undefined);
  assert.match(authorize({ kind: 'waypoint', id: 'wp-1', namespace: 'bank' }, shopWp)!, /may not read the waypoint config of namespace bank/);
  assert.match(authorize({ kind: 'waypoint', id: 'wp-1', namespace: 'shop' }, nodeA)!, /may not read/);
});

test('a refused client gets PERMISSION_DENIED and no config', async () => {
  const configServer = new ConfigServer({ authorize: () => 'no certificate, no config' });
  configServer.publish(compile(inputs(['web'])).model);
  const { server, port } = await serveRecording(configServer, []);
  const client = new ConfigClient({ target: `127.0.0.1:${port}`, credentials: grpc.credentials.createInsecure(), kind: 'agent', id: 'node-a', backoff: { initialMs: 1000 } });
  try {
    const err = new Promise<Error | undefined>((r) => client.once('disconnected', r));
    client.start();
    assert.match(String((await err)?.message), /PERMISSION_DENIED.*no certificate, no config/);
    assert.equal(client.snapshot, undefined);
  } finally {
    client.close();
    server.forceShutdown();
  }
});

test('flow control: with a tiny unacknowledged-bytes budget every client still converges', async () => {
  const configServer = new ConfigServer({ maxUnackedBytes: 1 });
  configServer.publish(compile(inputs(['web', 'api'])).model);
  const sent: DeltaConfigResponse[] = [];
  const { server, port } = await serveRecording(configServer, sent);
  const clients = ['node-a', 'node-b', 'node-c', 'node-d'].map((id) => {
    const c = new ConfigClient({ target: `127.0.0.1:${port}`, credentials: grpc.credentials.createInsecure(), kind: 'agent', id });
    c.start();
    return c;
  });
  try {
    await Promise.all(clients.map((c) => c.ready()));
    // A second web pod changes the web service, which every agent holds.
    const next = inputs(['web', 'api']);
    next.pods.push(pod('shop', 'web-2', { labels: { app: 'web' }, ip: '10.3.0.9', node: 'node-c' }));
    configServer.publish(compile(next).model);
    await until('all clients at the new version', () => clients.every((c) => c.version === configServer.systemVersion));
    for (const c of clients) assert.equal(c.snapshot!.services.find((s) => s.name === 'web')!.endpoints.length, 2);
    for (const c of clients) assert.deepEqual(c.snapshot!.workloads.map((w) => w.name).sort(), ['api', 'web', 'web-2']);
  } finally {
    for (const c of clients) c.close();
    server.forceShutdown();
  }
});

test('a client may subscribe to named resources only, and unsubscribe again', async () => {
  const { configStreamClientConstructor, TYPE_URLS } = await import('../../lib/xds/protocol.ts');
  const configServer = new ConfigServer();
  configServer.publish(compile(inputs(['web'])).model);
  const { server, port } = await serveRecording(configServer, []);
  const Ctor = configStreamClientConstructor();
  const raw = new Ctor(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  const call = (raw as unknown as { DeltaConfig(): grpc.ClientDuplexStream<object, DeltaConfigResponse> }).DeltaConfig();
  const responses: DeltaConfigResponse[] = [];
  call.on('data', (r: DeltaConfigResponse) => responses.push(r));
  call.on('error', () => {});
  try {
    call.write({ node: { id: 'node-a', kind: 'agent', namespace: '', user_agent: 'test' }, type_url: TYPE_URLS.Service, resource_names_subscribe: ['shop/other'], resource_names_unsubscribe: [], initial_resource_versions: {}, response_nonce: '' });
    await until('first response', () => responses.length === 1);
    assert.deepEqual(responses[0]!.resources.map((r) => r.name), ['shop/other']);
    call.write({ type_url: TYPE_URLS.Service, resource_names_subscribe: ['shop/web'], resource_names_unsubscribe: ['shop/other'], initial_resource_versions: {}, response_nonce: responses[0]!.nonce });
    await until('second response', () => responses.length === 2);
    assert.deepEqual(responses[1]!.resources.map((r) => r.name), ['shop/web']);
    assert.deepEqual(responses[1]!.removed_resources, ['shop/other']);
    assert.equal(JSON.parse(responses[1]!.resources[0]!.body).hostname, 'web.shop.svc.cluster.local');
  } finally {
    call.cancel();
    raw.close();
    server.forceShutdown();
  }
});

test('a client reconnecting to a restarted controller never keeps a resource because of a reused version number', async () => {
  const sent: DeltaConfigResponse[] = [];
  const first = new ConfigServer();
  first.publish(compile(inputs(['web'])).model);
  let { server, port } = await serveRecording(first, sent);
  const client = new ConfigClient({ target: `127.0.0.1:${port}`, credentials: grpc.credentials.createInsecure(), kind: 'agent', id: 'node-a', backoff: { initialMs: 20, maxMs: 50 } });
  try {
    client.start();
    await client.ready();
    const ipBefore = client.snapshot!.workloads[0]!.ip;
    const disconnected = new Promise((r) => client.once('disconnected', r));
    server.forceShutdown();
    await disconnected;
    // A new controller process: same names, different content, version counters from scratch.
    const second = new ConfigServer();
    const changed = inputs([]);
    changed.pods.push(pod('shop', 'web', { ip: '10.3.3.3' }));
    second.publish(compile(changed).model);
    ({ server } = await serveRecording(second, sent, port));
    await until('client has the new controller\'s workload', () => client.snapshot!.workloads[0]!.ip === '10.3.3.3', 5000);
    assert.notEqual(ipBefore, '10.3.3.3');
  } finally {
    client.close();
    server.forceShutdown();
  }
});

test('a reconnect that changes nothing is acknowledged without a new snapshot event', async () => {
  const configServer = new ConfigServer();
  configServer.publish(compile(inputs(['web'])).model);
  const { server, port } = await serveRecording(configServer, []);
  const client = new ConfigClient({ target: `127.0.0.1:${port}`, credentials: grpc.credentials.createInsecure(), kind: 'agent', id: 'node-a', backoff: { initialMs: 10, maxMs: 20 } });
  let snapshots = 0;
  let connects = 0;
  client.on('snapshot', () => snapshots++);
  client.on('connected', () => connects++);
  try {
    client.start();
    await client.ready();
    configServer.closeAll();
    await until('reconnected and acknowledged', () => connects === 2 && configServer.clients().some((c) => c.ackedVersion === configServer.systemVersion));
    assert.equal(snapshots, 1);
  } finally {
    client.close();
    server.forceShutdown();
  }
});

test('a push after a pod change carries only the objects that changed, to the agents whose view holds them; a client that connects afresh gets the full state', async () => {
  const base = () => {
    const i = inputs(['web']);
    i.pods.push(pod('shop', 'api', { node: 'node-b', ip: '10.3.1.1' }));
    i.authorizationPolicies.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'for-canary', namespace: 'shop' }, spec: { selector: { matchLabels: { track: 'canary' } } } });
    return i;
  };
  const configServer = new ConfigServer();
  configServer.publish(compile(base()).model);
  const sentA: DeltaConfigResponse[] = [];
  const sentB: DeltaConfigResponse[] = [];
  const a = await serveRecording(configServer, sentA);
  const b = await serveRecording(configServer, sentB);
  const client = (port: number, id: string) => new ConfigClient({ target: `127.0.0.1:${port}`, credentials: grpc.credentials.createInsecure(), kind: 'agent', id });
  const ca = client(a.port, 'node-a');
  const cb = client(b.port, 'node-b');
  const names = (sent: DeltaConfigResponse[]) => sent.flatMap((r) => r.resources.map((x) => `${r.type_url.split('.').pop()}:${x.name}`)).sort();
  let fresh: ConfigClient<'agent'> | undefined;
  try {
    ca.start();
    cb.start();
    await Promise.all([ca.ready(), cb.ready()]);
    sentA.length = 0;
    sentB.length = 0;
    // A canary replica of web lands on node-b: web's endpoints change, and node-b now runs a
    // workload that for-canary selects.
    const next = base();
    next.pods.push(pod('shop', 'web-canary', { node: 'node-b', ip: '10.3.1.2', labels: { app: 'web', track: 'canary' } }));
    const version = configServer.publish(compile(next).model);
    await until('both agents acknowledged', () => configServer.clients().every((c) => c.ackedVersion === version), 5000);
    assert.deepEqual(names(sentA), ['Service:shop/web', 'Workload:uid-shop-web-canary']);
    assert.deepEqual(names(sentB), ['AuthorizationPolicy:shop/for-canary', 'Service:shop/web', 'Workload:uid-shop-web-canary']);
    assert.ok([...sentA, ...sentB].every((r) => r.removed_resources.length === 0));
    assert.deepEqual(cb.snapshot!.policies.map((p) => p.name), ['for-canary']);

    // A client holding nothing (a restarted agent) gets the whole view, equal to what the
    // incrementally updated client holds.
    sentA.length = 0;
    fresh = client(a.port, 'node-b');
    fresh.start();
    const full = await fresh.ready();
    const sorted = (c: typeof full) => JSON.stringify({ w: c.workloads.map((w) => w.uid).sort(), s: c.services.map((s) => JSON.stringify(s)).sort(), p: c.policies.map((p) => p.name).sort() });
    assert.equal(sorted(full), sorted(cb.snapshot!));
    assert.deepEqual(names(sentA), ['AuthorizationPolicy:shop/for-canary', 'Service:shop/other', 'Service:shop/web', 'Workload:uid-shop-api', 'Workload:uid-shop-web', 'Workload:uid-shop-web-canary']);
  } finally {
    ca.close();
    cb.close();
    fresh?.close();
    a.server.forceShutdown();
    b.server.forceShutdown();
  }
});

// Least privilege, as Istio's ztunnel: istiod resolves workload selectors and sends a node proxy
// no pod labels, only a workload's telemetry names (canonical_name, canonical_revision,
// workload_name: istio/ztunnel proto/workload.proto Workload). A pod's labels go to its own node's
// agent, which selects its policies and PeerAuthentications and reads weft.dev/splice with them.
test('an agent of another node is sent none of a pod\'s labels, only its telemetry names; its own node\'s agent gets them all and selects its policies by them; a label change reaches only that agent', async () => {
  const base = (team: string, version = 'v2', owner = 'alice') => {
    const i = inputs([]);
    i.pods.push(pod('shop', 'web', { node: 'node-a', ip: '10.3.0.1', labels: { app: 'web', version, 'secret-team': team, owner } }));
    i.pods.push(pod('shop', 'api', { node: 'node-b', ip: '10.3.1.1' }));
    i.authorizationPolicies.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'for-team-x', namespace: 'shop' }, spec: { selector: { matchLabels: { 'secret-team': 'x' } } } });
    i.peerAuthentications.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'strict-team-x', namespace: 'shop' }, spec: { selector: { matchLabels: { 'secret-team': 'x' } }, mtls: { mode: 'STRICT' }, portLevelMtls: { '9090': { mode: 'PERMISSIVE' } } } });
    i.telemetries.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Telemetry', metadata: { name: 'team-collector', namespace: 'shop', creationTimestamp: '2026-01-01T00:00:00Z' }, spec: { selector: { matchLabels: { app: 'web' } }, accessLogging: { encoding: 'TEXT' } } });
    return i;
  };
  const configServer = new ConfigServer();
  configServer.publish(compile(base('x')).model);
  const sentA: DeltaConfigResponse[] = [];
  const sentB: DeltaConfigResponse[] = [];
  const a = await serveRecording(configServer, sentA);
  const b = await serveRecording(configServer, sentB);
  const client = (port: number, id: string) => new ConfigClient({ target: `127.0.0.1:${port}`, credentials: grpc.credentials.createInsecure(), kind: 'agent', id });
  const ca = client(a.port, 'node-a');
  const cb = client(b.port, 'node-b');
  const names = (sent: DeltaConfigResponse[]) => sent.flatMap((r) => r.resources.map((x) => `${r.type_url.split('.').pop()}:${x.name}`)).sort();
  const wire = (sent: DeltaConfigResponse[]) => sent.flatMap((r) => r.resources.map((x) => String(x.body))).join('\n');
  const web = (c: ConfigClient<'agent'>) => c.snapshot!.workloads.find((w) => w.name === 'web')!;
  try {
    ca.start();
    cb.start();
    await Promise.all([ca.ready(), cb.ready()]);
    // node-a: the pod's labels, the policy and the PeerAuthentication they select.
    assert.deepEqual(web(ca).labels, { app: 'web', version: 'v2', 'secret-team': 'x', owner: 'alice' });
    assert.deepEqual(ca.snapshot!.policies.map((p) => p.name), ['for-team-x']);
    assert.deepEqual(ca.snapshot!.peerAuthentications.map((p) => p.name), ['strict-team-x']);
    assert.equal(web(ca).mode, 'STRICT');
    // node-b: no label of web's on the wire; what its telemetry and dialling need is there.
    assert.deepEqual(web(cb).labels, {});
    assert.ok(!wire(sentB).includes('secret-team'), 'web\'s labels did not go to node-b');
    // Nor its per-port modes or its tenant's Telemetry settings: only its own node's agent judges
    // its ports and writes its access log.
    assert.deepEqual(web(ca).portModes, { 9090: 'PERMISSIVE' });
    assert.ok(web(ca).telemetry?.sources.includes('shop/team-collector'));
    assert.equal(web(cb).portModes, undefined);
    assert.equal(web(cb).telemetry, undefined);
    assert.ok(!wire(sentB).includes('team-collector'), 'web\'s Telemetry settings did not go to node-b');
    assert.deepEqual([web(cb).canonicalService, web(cb).canonicalRevision, web(cb).workloadName, web(cb).mode, web(cb).spiffeId], ['web', 'v2', 'web', 'STRICT', web(ca).spiffeId]);
    assert.deepEqual(cb.snapshot!.policies, []);
    assert.deepEqual(cb.snapshot!.workloads.find((w) => w.name === 'api')!.labels, { app: 'api' }, 'node-b\'s own pod keeps its labels');

    // A label only node-a reads changes: node-a's agent is sent the pod, node-b's nothing.
    sentA.length = 0;
    sentB.length = 0;
    const version = configServer.publish(compile(base('x', 'v2', 'bob')).model);
    await until('both agents acknowledged or were sent nothing', () => configServer.clients().every((c) => c.ackedVersion === version || c.synced), 5000);
    await until('node-a has the new label', () => web(ca).labels.owner === 'bob', 5000);
    assert.deepEqual(names(sentA), ['Workload:uid-shop-web']);
    assert.deepEqual(names(sentB), [], 'a label no other node reads pushes nothing to other nodes');

    // The selected label changes: node-a's agent drops the policy and the PeerAuthentication; the
    // mode they made goes to both (node-b is sent the pod again, still without labels).
    configServer.publish(compile(base('y', 'v2', 'bob')).model);
    await until('node-a no longer holds the policies', () => ca.snapshot!.policies.length === 0 && ca.snapshot!.peerAuthentications.length === 0, 5000);
    await until('node-b has the new mode', () => web(cb).mode === 'PERMISSIVE', 5000);
    assert.equal(web(ca).mode, 'PERMISSIVE');
    assert.deepEqual(web(cb).labels, {});

    // The version label is a telemetry name (canonical revision): node-b is sent the new one, on
    // the pod and on its Service's endpoint.
    sentB.length = 0;
    configServer.publish(compile(base('y', 'v3', 'bob')).model);
    await until('node-b has the new revision', () => web(cb).canonicalRevision === 'v3', 5000);
    assert.deepEqual(names(sentB), ['Service:shop/web', 'Workload:uid-shop-web']);
    assert.deepEqual(web(cb).labels, {});
    assert.ok(!wire(sentB).includes('secret-team'));
  } finally {
    ca.close();
    cb.close();
    a.server.forceShutdown();
    b.server.forceShutdown();
  }
});

test('a workload whose node changes under the same key (a config directory\'s pod without uid, written again) reaches its new node\'s agent with its labels and its old node\'s without', async () => {
  const on = (node: string) => {
    const i = inputs([]);
    const p = pod('shop', 'web', { node, ip: '10.3.0.1', hostIP: node === 'node-a' ? '192.168.0.1' : '192.168.0.2', labels: { app: 'web', 'secret-team': 'x' } });
    delete p.metadata.uid;
    i.pods.push(p);
    return i;
  };
  const configServer = new ConfigServer();
  configServer.publish(compile(on('node-a')).model);
  const { server, port } = await serveRecording(configServer, []);
  const clients = ['node-a', 'node-b'].map((id) => new ConfigClient({ target: `127.0.0.1:${port}`, credentials: grpc.credentials.createInsecure(), kind: 'agent', id }));
  const web = (c: ConfigClient<'agent'>) => c.snapshot!.workloads.find((w) => w.name === 'web')!;
  try {
    for (const c of clients) c.start();
    await Promise.all(clients.map((c) => c.ready()));
    const [a, b] = clients as [ConfigClient<'agent'>, ConfigClient<'agent'>];
    assert.equal(web(a).uid, web(b).uid, 'one key on both nodes');
    assert.deepEqual([web(a).labels['secret-team'], web(b).labels['secret-team']], ['x', undefined]);
    configServer.publish(compile(on('node-b')).model);
    await until('node-b holds the pod whole and node-a without labels', () => web(b).node === 'node-b' && web(b).labels['secret-team'] === 'x' && web(a).node === 'node-b', 5000);
    assert.deepEqual(web(a).labels, {});
  } finally {
    for (const c of clients) c.close();
    server.forceShutdown();
  }
});

/** A raw config stream over mTLS (key + chain) or TLS without a client certificate; resolves with what the first answer was. */
async function firstAnswer(port: number, roots: readonly string[], node: { kind: 'agent' | 'waypoint'; id: string; namespace?: string }, client?: { key: string; chain: readonly string[] }): Promise<string> {
  const { configStreamClientConstructor, TYPE_URLS } = await import('../../lib/xds/protocol.ts');
  const Ctor = configStreamClientConstructor();
  const creds = grpc.credentials.createSsl(Buffer.from(roots.join('')), client ? Buffer.from(client.key) : null, client ? Buffer.from(client.chain.join('')) : null, { checkServerIdentity: () => undefined });
  const raw = new Ctor(`127.0.0.1:${port}`, creds, { 'grpc.ssl_target_name_override': 'localhost' });
  const call = (raw as unknown as { DeltaConfig(): grpc.ClientDuplexStream<object, DeltaConfigResponse> }).DeltaConfig();
  try {
    return await new Promise<string>((resolve) => {
      call.on('data', (r: DeltaConfigResponse) => resolve(`received ${r.resources.length}`));
      call.on('error', (e: grpc.ServiceError) => resolve(`refused ${grpc.status[e.code]}`));
      call.write({ node: { id: node.id, kind: node.kind, namespace: node.namespace ?? '', user_agent: 'test' }, type_url: TYPE_URLS.Workload, resource_names_subscribe: [], resource_names_unsubscribe: [], initial_resource_versions: {}, response_nonce: '' });
    });
  } finally {
    call.cancel();
    raw.close();
  }
}

// Rules: DESIGN.md Config stream, "An agent receives only what its node needs"; node names are per
// cluster while clusters share the root and trust domain (docs/ARCHITECTURE.md Multi-cluster), so
// an agent's node certificate must come from this controller's CA. RELIABILITY.md impersonation:
// refused, counted (weft_xds_streams_refused_total{reason}) and logged with who.
test('another cluster\'s node certificate for node-a cannot open this cluster\'s config stream as node-a; the refusal is counted and logged with the claimed node and the peer, while this cluster\'s node-a and another cluster\'s waypoint certificate still read', async () => {
  const { Registry } = await import('prom-client');
  const { CertificateAuthority } = await import('../../lib/identity/ca.ts');
  const { createCsr, generateKeyPair, privateKeyToPem } = await import('../../lib/identity/csr.ts');
  const { createControllerCredentials } = await import('../../controller/src/ca/index.ts');
  const { spiffeStreamAuthorizer } = await import('../../controller/src/xds/authz.ts');
  const { addConfigStreamService } = await import('../../controller/src/xds/server.ts');
  const TD = 'cluster.local';
  const root = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const load = async (name: string) => {
    const i = await root.issueIntermediate(name);
    return CertificateAuthority.fromPem({ certPem: i.certPem, keyPem: i.keyPem, rootsPem: i.rootPem }, { trustDomain: TD });
  };
  const [ca1, ca2] = [await load('cluster1'), await load('cluster2')];
  const issue = async (ca: { signCsr(csr: string, id: string): { certChain: string[] } }, uri: string) => {
    const { privateKey } = await generateKeyPair();
    return { key: privateKeyToPem(privateKey), chain: ca.signCsr(createCsr(uri, privateKey), uri).certChain };
  };
  const registry = new Registry();
  const warnings: Array<[string, Record<string, unknown>]> = [];
  const logger = { debug() {}, info() {}, error() {}, warn: (m: string, f?: Record<string, unknown>) => void warnings.push([m, f ?? {}]) };
  const configServer = new ConfigServer({ registry, logger, authorize: spiffeStreamAuthorizer(TD, ca1) });
  configServer.publish(compile(inputs(['web'])).model);
  const creds = await createControllerCredentials(ca1, { identity: `spiffe://${TD}/ns/weft-system/sa/weft-controller`, ipAddresses: ['127.0.0.1'], dnsNames: ['localhost'] });
  const server = new grpc.Server();
  addConfigStreamService(server, { configServer });
  const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', creds.credentials, (e, p) => (e ? rej(e) : res(p))));
  const refused = async () => (await registry.getSingleMetricAsString('weft_xds_streams_refused_total')).split('\n').filter((l) => !l.startsWith('#')).join('\n');
  try {
    const nodeA = `spiffe://${TD}/node/node-a`;
    assert.equal(await firstAnswer(port, root.trustBundle(), { kind: 'agent', id: 'node-a' }, await issue(ca2, nodeA)), 'refused PERMISSION_DENIED');
    assert.equal(await refused(), 'weft_xds_streams_refused_total{reason="denied"} 1');
    const [msg, fields] = warnings.find(([m]) => m === 'config stream request refused')!;
    assert.ok(msg);
    assert.equal(fields['reason'], 'denied');
    assert.equal(fields['claimedKind'], 'agent');
    assert.equal(fields['claimedId'], 'node-a');
    assert.match(String(fields['peer']), /^127\.0\.0\.1:\d+$/);
    assert.match(String(fields['error']), /node certificate for spiffe:\/\/cluster\.local\/node\/node-a was not issued by this controller's CA/);
    // This cluster's node-a reads its config; a waypoint's workload certificate is mesh-wide and keeps working.
    assert.match(await firstAnswer(port, root.trustBundle(), { kind: 'agent', id: 'node-a' }, await issue(ca1, nodeA)), /^received \d+$/);
    assert.match(await firstAnswer(port, root.trustBundle(), { kind: 'waypoint', id: 'wp', namespace: 'shop' }, await issue(ca2, `spiffe://${TD}/ns/shop/sa/wp`)), /^received \d+$/);
    assert.equal(await refused(), 'weft_xds_streams_refused_total{reason="denied"} 1');
  } finally {
    creds.close();
    server.forceShutdown();
  }
});

// Rule: RELIABILITY.md impersonation row, "a server refuses clients outside the accepted identities
// and counts them"; the log line says who claimed what, from where.
test('a config stream refused for lack of a client certificate is counted by reason and logged with the node it claimed and its peer address', async () => {
  const { Registry } = await import('prom-client');
  const { CertificateAuthority } = await import('../../lib/identity/ca.ts');
  const { createControllerCredentials } = await import('../../controller/src/ca/index.ts');
  const { spiffeStreamAuthorizer } = await import('../../controller/src/xds/authz.ts');
  const { addConfigStreamService } = await import('../../controller/src/xds/server.ts');
  const ca = await CertificateAuthority.generateRoot({ trustDomain: 'cluster.local' });
  const registry = new Registry();
  const warnings: Array<[string, Record<string, unknown>]> = [];
  const logger = { debug() {}, info() {}, error() {}, warn: (m: string, f?: Record<string, unknown>) => void warnings.push([m, f ?? {}]) };
  const configServer = new ConfigServer({ registry, logger, authorize: spiffeStreamAuthorizer('cluster.local', ca) });
  configServer.publish(compile(inputs(['web'])).model);
  const creds = await createControllerCredentials(ca, { identity: 'spiffe://cluster.local/ns/weft-system/sa/weft-controller', ipAddresses: ['127.0.0.1'], dnsNames: ['localhost'] });
  const server = new grpc.Server();
  addConfigStreamService(server, { configServer });
  const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', creds.credentials, (e, p) => (e ? rej(e) : res(p))));
  try {
    assert.equal(await firstAnswer(port, ca.trustBundle(), { kind: 'agent', id: 'node-b' }), 'refused PERMISSION_DENIED');
    assert.equal(await firstAnswer(port, ca.trustBundle(), { kind: 'waypoint', id: 'wp', namespace: '' }), 'refused INVALID_ARGUMENT');
    const values = (await registry.getMetricsAsJSON()).find((m) => m.name === 'weft_xds_streams_refused_total')?.values ?? [];
    assert.deepEqual(values.map((v) => [v.labels['reason'], v.value]).sort(), [['bad_request', 1], ['denied', 1]]);
    const denied = warnings.find(([m, f]) => m === 'config stream request refused' && f['reason'] === 'denied')?.[1];
    assert.equal(denied?.['claimedId'], 'node-b');
    assert.equal(denied?.['claimedKind'], 'agent');
    assert.match(String(denied?.['peer']), /^127\.0\.0\.1:\d+$/);
    assert.match(String(denied?.['error']), /presented no client certificate/);
  } finally {
    creds.close();
    server.forceShutdown();
  }
});

// Rule: flow control (DEFAULT_MAX_UNACKED_BYTES's promise; Istio keeps one push in flight per
// connection and merges later pushes): a client that never reads costs one batch, not one per
// publish; the hold is named (clients().blocked) and counted (weft_xds_pushes_held_total{kind}).
test('a config stream that never reads (zero HTTP/2 window) is written one batch, not one per publish, while a reading client keeps getting every update; the hold is counted', { timeout: 30_000 }, async () => {
  const http2 = await import('node:http2');
  const { Registry } = await import('prom-client');
  const { TYPE_URLS } = await import('../../lib/xds/protocol.ts');
  const registry = new Registry();
  const configServer = new ConfigServer({ registry });
  const big = (gen: number) => {
    const i = inputs([]);
    for (let k = 0; k < 400; k++) i.pods.push(pod('shop', `p${k}`, { ip: `10.3.${k >> 8}.${k & 255}`, node: 'node-a', labels: { app: 'web', gen: String(gen) } }));
    return compile(i).model;
  };
  configServer.publish(big(0));
  const writes = new Map<string, number>();
  const server = new grpc.Server();
  server.addService(configStreamServiceDefinition(), {
    DeltaConfig: (call: ConfigStreamCall) => {
      let who = '';
      call.once('data', (req: { node?: { user_agent?: string } }) => { who = req.node?.user_agent === 'stuck' ? 'stuck' : 'reader'; });
      const write = call.write.bind(call);
      call.write = ((m: DeltaConfigResponse, cb?: (e?: Error | null) => void) => {
        writes.set(who, (writes.get(who) ?? 0) + 1);
        return write(m, cb);
      }) as typeof call.write;
      configServer.handle(call);
    },
  });
  const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  // The stuck client: a raw HTTP/2 session whose stream window is 0, so the server can send nothing.
  const session = http2.connect(`http://127.0.0.1:${port}`, { settings: { initialWindowSize: 0 } });
  session.on('error', () => undefined);
  const stream = session.request({ ':method': 'POST', ':path': '/weft.xds.v1.ConfigStream/DeltaConfig', 'content-type': 'application/grpc', te: 'trailers' }, { endStream: false });
  stream.on('error', () => undefined);
  const body = (configStreamServiceDefinition().DeltaConfig as grpc.MethodDefinition<object, unknown>).requestSerialize({ node: { id: 'node-a', kind: 'agent', namespace: '', user_agent: 'stuck' }, type_url: TYPE_URLS.Workload, resource_names_subscribe: [] });
  const header = Buffer.alloc(5);
  header.writeUInt32BE(body.length, 1);
  stream.write(Buffer.concat([header, body]));
  const reader = new ConfigClient({ target: `127.0.0.1:${port}`, credentials: grpc.credentials.createInsecure(), kind: 'agent', id: 'node-a' });
  try {
    reader.start();
    await reader.ready();
    await until('the stuck stream is held', () => configServer.clients().some((c) => c.blocked));
    for (let gen = 1; gen <= 30; gen++) {
      configServer.publish(big(gen));
      await until(`the reader at generation ${gen}`, () => reader.version === configServer.systemVersion);
    }
    assert.equal(reader.snapshot!.workloads.find((w) => w.name === 'p0')?.labels['gen'], '30');
    const stuck = configServer.clients().filter((c) => c.blocked);
    assert.equal(stuck.length, 1, 'the stuck stream, and only it, is blocked');
    assert.equal(stuck[0]!.synced, false);
    assert.ok((writes.get('reader') ?? 0) >= 31, 'the reader got a response per publish');
    const stuckWrites = writes.get('stuck') ?? 0;
    assert.ok(stuckWrites >= 1 && stuckWrites <= 2, `the stuck stream was written ${stuckWrites} responses over 30 publishes (its initial sync, then nothing until it reads)`);
    const held = (await registry.getMetricsAsJSON()).find((m) => m.name === 'weft_xds_pushes_held_total')?.values ?? [];
    assert.ok(held.some((v) => v.labels['kind'] === 'agent' && v.value >= 1), `held pushes not counted: ${JSON.stringify(held)}`);
  } finally {
    reader.close();
    session.destroy();
    server.forceShutdown();
  }
});

// Rule: RFC 9113 10.5 (an endpoint limits the state a peer can commit it to); DESIGN.md Config
// stream, "An agent receives only what its node needs": names nothing publishes serve no one.
test('a stream subscribing to more names of a type than max(10,000, published) is closed RESOURCE_EXHAUSTED, counted and logged; up to the limit it is served', async () => {
  const { Registry } = await import('prom-client');
  const { configStreamClientConstructor, TYPE_URLS } = await import('../../lib/xds/protocol.ts');
  const { MIN_SUBSCRIBED_NAMES_LIMIT } = await import('../../controller/src/xds/server.ts');
  const registry = new Registry();
  const warnings: Array<[string, Record<string, unknown>]> = [];
  const logger = { debug() {}, info() {}, error() {}, warn: (m: string, f?: Record<string, unknown>) => void warnings.push([m, f ?? {}]) };
  const configServer = new ConfigServer({ registry, logger });
  configServer.publish(compile(inputs(['web'])).model);
  const { server, port } = await serveRecording(configServer, []);
  const Ctor = configStreamClientConstructor();
  const raw = new Ctor(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), { 'grpc.max_send_message_length': 16 << 20 });
  const call = (raw as unknown as { DeltaConfig(): grpc.ClientDuplexStream<object, DeltaConfigResponse> }).DeltaConfig();
  const responses: DeltaConfigResponse[] = [];
  const closed = new Promise<grpc.ServiceError>((resolve) => call.on('error', resolve));
  call.on('data', (r: DeltaConfigResponse) => responses.push(r));
  const names = (from: number, n: number) => Array.from({ length: n }, (_, k) => `shop/made-up-${from + k}`);
  try {
    call.write({ node: { id: 'node-a', kind: 'agent', namespace: '', user_agent: 'test' }, type_url: TYPE_URLS.Service, resource_names_subscribe: ['shop/web', ...names(0, MIN_SUBSCRIBED_NAMES_LIMIT - 1)], resource_names_unsubscribe: [], initial_resource_versions: {}, response_nonce: '' });
    await until('served at the limit', () => responses.length === 1);
    assert.deepEqual(responses[0]!.resources.map((r) => r.name), ['shop/web']);
    call.write({ type_url: TYPE_URLS.Service, resource_names_subscribe: names(MIN_SUBSCRIBED_NAMES_LIMIT, 1), resource_names_unsubscribe: [], initial_resource_versions: {}, response_nonce: responses[0]!.nonce });
    const err = await Promise.race([closed, new Promise<undefined>((r) => setTimeout(() => r(undefined), 5000))]);
    assert.ok(err, 'the stream was not closed past the limit');
    assert.equal(err.code, grpc.status.RESOURCE_EXHAUSTED);
    assert.match(err.details, /subscribed to more than 10000 Service names/);
    const values = (await registry.getMetricsAsJSON()).find((m) => m.name === 'weft_xds_streams_refused_total')?.values ?? [];
    assert.deepEqual(values.map((v) => [v.labels['reason'], v.value]), [['resource_exhausted', 1]]);
    const line = warnings.find(([m]) => m === 'config stream request refused')?.[1];
    assert.equal(line?.['reason'], 'resource_exhausted');
    assert.equal(line?.['claimedId'], 'node-a');
    assert.deepEqual(configServer.clients(), []);
  } finally {
    call.cancel();
    raw.close();
    server.forceShutdown();
  }
});
