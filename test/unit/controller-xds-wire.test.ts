import { test } from 'node:test';
import assert from 'node:assert/strict';
import type * as grpc from '@grpc/grpc-js';
import { EncodedResponse, encodeResourceEntry, responseSerializer, type EncodableResource } from '../../controller/src/xds/wire.ts';
import { configStreamServiceDefinition, type DeltaConfigRequest, type DeltaConfigResponse } from '../../lib/xds/protocol.ts';

const method = configStreamServiceDefinition().DeltaConfig as grpc.MethodDefinition<DeltaConfigRequest, DeltaConfigResponse>;

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
    const r = new EncodedResponse({ system_version_info: '42', type_url: 'type.weft.dev/weft.model.Workload', removed_resources: removed, nonce: 'abcdef' }, upserts);
    assert.deepEqual(r.encode(), method.responseSerialize(plain(r)), what);
    // And it decodes to the same message.
    assert.deepEqual(method.responseDeserialize(r.encode()), plain(r), what);
  }
});

test('a resource is encoded once and its bytes shared by every response that carries it', () => {
  const shared: EncodableResource = { version: 'e1.7', body: '{"uid":"u"}' };
  const a = new EncodedResponse({ system_version_info: '7', type_url: 't', removed_resources: [], nonce: 'n1' }, [['u', shared]]);
  const b = new EncodedResponse({ system_version_info: '7', type_url: 't', removed_resources: ['x'], nonce: 'n2' }, [['u', shared]]);
  a.encode();
  const cached = shared.wire!.bytes;
  b.encode();
  assert.equal(shared.wire!.bytes, cached, 'the second response reuses the first encoding');
  assert.deepEqual(cached, encodeResourceEntry('u', 'e1.7', '{"u' + 'id":"u"}'));
  // Each client still gets its own header fields (nonce, removals) around the shared bytes.
  assert.equal(method.responseDeserialize(a.encode()).nonce, 'n1');
  assert.deepEqual(method.responseDeserialize(b.encode()), { system_version_info: '7', type_url: 't', resources: [{ name: 'u', version: 'e1.7', body: '{"uid":"u"}' }], removed_resources: ['x'], nonce: 'n2' });
});

test('the server serializer encodes EncodedResponses itself and leaves plain messages to protobufjs', () => {
  let fallbacks = 0;
  const serialize = responseSerializer((v) => (fallbacks++, method.responseSerialize(v)));
  const message: DeltaConfigResponse = { system_version_info: '1', type_url: 't', resources: [{ name: 'n', version: 'v', body: 'b' }], removed_resources: [], nonce: 'x' };
  const encoded = new EncodedResponse({ system_version_info: '1', type_url: 't', removed_resources: [], nonce: 'x' }, [['n', { version: 'v', body: 'b' }]]);
  assert.deepEqual(serialize(encoded), serialize(message));
  assert.equal(fallbacks, 1);
});
