import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { compile, emptyInputs } from '../../controller/src/compile.ts';
import { ConfigServer, addConfigStreamService } from '../../controller/src/xds/server.ts';
import { ConfigClient } from '../../lib/xds/client.ts';
import { EncodedResponse, encodeResourceEntry, responseSerializer, type EncodableResource } from '../../controller/src/xds/wire.ts';
import { configStreamClientConstructor, configStreamServiceDefinition, type DeltaConfigRequest, type DeltaConfigResponse } from '../../lib/xds/protocol.ts';
import { ns, pod } from './controller-fixtures.ts';
import { until } from './controller-harness.ts';

const method = configStreamServiceDefinition().DeltaConfig as grpc.MethodDefinition<DeltaConfigRequest, DeltaConfigResponse>;

/** An EncodedResponse of [name, resource] pairs. */
function encoded(fields: ConstructorParameters<typeof EncodedResponse>[0], upserts: ReadonlyArray<readonly [string, EncodableResource]>): EncodedResponse {
  return new EncodedResponse(fields, upserts.map(([n]) => n), upserts.map(([, r]) => r));
}

function plain(r: DeltaConfigResponse): DeltaConfigResponse {
  return { system_version_info: r.system_version_info, type_url: r.type_url, resources: r.resources.map((x) => ({ ...x })), removed_resources: [...r.removed_resources], nonce: r.nonce };
}

test('an encoded response is byte for byte what protobufjs writes for the same message', () => {
  const long = JSON.stringify({ note: 'x'.repeat(70_000), unicode: 'żółw ☃ 𝄞' });
  const cases: Array<[string, Array<[string, EncodableResource]>, string[]]> = [
    ['no resources, no removals', [], []],
    ['one small resource', [['uid-a', { version: 'e1.1', body: '{"a":1}' }]], []],
    ['multi-byte UTF-8 and a body longer than one- and two-byte varints', [['ns/ü', { version: 'e1.2', body: long }], ['b', { version: '', body: '' }]], ['gone-1', '', 'gone-ß']],
  ];
  for (const [what, upserts, removed] of cases) {
    const r = encoded({ system_version_info: '42', type_url: 'type.weft.dev/weft.model.Workload', removed_resources: removed, nonce: 'abcdef' }, upserts);
    assert.deepEqual(r.encode(), method.responseSerialize(plain(r)), what);
    // And it decodes to the same message.
    assert.deepEqual(method.responseDeserialize(r.encode()), plain(r), what);
  }
});

test('a resource carried by several responses is written into each, its body\'s UTF-8 length measured once', () => {
  const shared: EncodableResource = { version: 'e1.7', body: '{"uid":"ü"}' };
  const a = encoded({ system_version_info: '7', type_url: 't', removed_resources: [], nonce: 'n1' }, [['u', shared]]);
  const b = encoded({ system_version_info: '7', type_url: 't', removed_resources: ['x'], nonce: 'n2' }, [['u', shared]]);
  const first = a.encode();
  assert.equal(shared.bodyBytes, Buffer.byteLength(shared.body), 'cached on the entry');
  const entry = encodeResourceEntry('u', 'e1.7', '{"uid":"ü"}');
  assert.ok(first.includes(entry), 'the entry is the one encodeResourceEntry writes');
  assert.ok(b.encode().includes(entry));
  // Each client gets its own header fields (nonce, removals) around the same entry.
  assert.equal(method.responseDeserialize(a.encode()).nonce, 'n1');
  assert.deepEqual(method.responseDeserialize(b.encode()), { system_version_info: '7', type_url: 't', resources: [{ name: 'u', version: 'e1.7', body: '{"uid":"ü"}' }], removed_resources: ['x'], nonce: 'n2' });
});

test('the server serializer encodes EncodedResponses itself and leaves plain messages to protobufjs', () => {
  let fallbacks = 0;
  const serialize = responseSerializer((v) => (fallbacks++, method.responseSerialize(v)));
  const message: DeltaConfigResponse = { system_version_info: '1', type_url: 't', resources: [{ name: 'n', version: 'v', body: 'b' }], removed_resources: [], nonce: 'x' };
  const one = encoded({ system_version_info: '1', type_url: 't', removed_resources: [], nonce: 'x' }, [['n', { version: 'v', body: 'b' }]]);
  assert.deepEqual(serialize(one), serialize(message));
  assert.equal(fallbacks, 1);
  // EncodedResponses are written into one buffer, reused: grpc-js copies each before the next.
  const other = encoded({ system_version_info: '2', type_url: 't', removed_resources: [], nonce: 'y' }, [['n', { version: 'v', body: 'b' }]]);
  assert.equal(serialize(one).buffer, serialize(other).buffer);
});

test('responses written back to back over the service each arrive whole, though the serializer reuses its buffer', async () => {
  const sizes = [200_000, 10, 90_000, 300_000];
  const responses = sizes.map((n, i) => encoded({ system_version_info: String(i), type_url: 't', removed_resources: [`gone-${i}`], nonce: `n${i}` },
    [[`r${i}`, { version: `v${i}`, body: String.fromCharCode(97 + i).repeat(n) }]]));
  const server = new grpc.Server();
  const definition = configStreamServiceDefinition();
  server.addService({ ...definition, DeltaConfig: { ...method, responseSerialize: responseSerializer(method.responseSerialize) } }, {
    // Written without waiting: the later ones queue in the stream while the first is being sent.
    DeltaConfig: (call: grpc.ServerDuplexStream<DeltaConfigRequest, DeltaConfigResponse>) => {
      for (const r of responses) call.write(r);
      call.end();
    },
  });
  const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  const Client = configStreamClientConstructor();
  const client = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  try {
    const got: DeltaConfigResponse[] = [];
    await new Promise<void>((resolve, reject) => {
      const call = client.DeltaConfig() as grpc.ClientDuplexStream<DeltaConfigRequest, DeltaConfigResponse>;
      call.on('data', (r: DeltaConfigResponse) => got.push(r));
      call.on('end', resolve);
      call.on('error', reject);
      call.end();
    });
    assert.deepEqual(got, responses.map(plain));
  } finally {
    client.close();
    server.forceShutdown();
  }
});

test('over the config server\'s own service, agents whose views differ each get their own view, and the shared entries decode the same for both', async () => {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), ns('plain'));
  i.pods.push(pod('shop', 'web', { node: 'node-a', ip: '10.8.0.1' }), pod('shop', 'api', { node: 'node-b', ip: '10.8.0.2' }));
  // Plain pods go to their own node's agent only.
  i.pods.push(pod('plain', 'near-a', { node: 'node-a', ip: '10.8.0.3' }), pod('plain', 'near-b', { node: 'node-b', ip: '10.8.0.4' }));
  const configServer = new ConfigServer();
  configServer.publish(compile(i).model);
  const server = new grpc.Server();
  addConfigStreamService(server, { configServer });
  const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  const clients = ['node-a', 'node-b'].map((id) => new ConfigClient({ target: `127.0.0.1:${port}`, credentials: grpc.credentials.createInsecure(), kind: 'agent', id }));
  try {
    for (const c of clients) c.start();
    const [a, b] = await Promise.all(clients.map((c) => c.ready()));
    assert.deepEqual(a!.workloads.map((w) => w.name).sort(), ['api', 'near-a', 'web']);
    assert.deepEqual(b!.workloads.map((w) => w.name).sort(), ['api', 'near-b', 'web']);
    const web = (cfg: typeof a) => cfg!.workloads.find((w) => w.name === 'web');
    // The same but for its labels, which only its own node's agent is sent (views.ts remoteWorkload).
    assert.deepEqual({ ...web(a)!, labels: {} }, web(b));
    assert.deepEqual(web(a)!.labels, { app: 'web' });
    // A later change reaches each as its own delta over the shared entries.
    i.pods.push(pod('plain', 'late-b', { node: 'node-b', ip: '10.8.0.5' }));
    configServer.publish(compile(i).model);
    await until('node-b got its new plain pod', () => clients[1]!.snapshot!.workloads.some((w) => w.name === 'late-b'));
    assert.ok(!clients[0]!.snapshot!.workloads.some((w) => w.name === 'late-b'), 'node-a was not sent node-b\'s plain pod');
  } finally {
    for (const c of clients) c.close();
    configServer.closeAll();
    server.forceShutdown();
  }
});
