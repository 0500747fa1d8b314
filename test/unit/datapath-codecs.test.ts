// The datapath's struct codecs (agent/src/datapath/codecs.ts) without a kernel: the bytes they
// write for the structs of bpf/include/weft.h, and that each decoder reads back what its encoder
// wrote. The comparison with the layout clang emitted (BTF) is test/bpf/datapath.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as c from '../../agent/src/datapath/codecs.ts';

const client = { ip: '10.0.1.5', port: 43210 };
const vip = { ip: '10.96.0.10', port: 80 };
const spliced: c.SplicedEntry = {
  peer: { src: client, dst: vip }, flags: 3, sk: 0xffff888812345678n, sndBase: 1, rcvBase: 2, netnsCookie: 77n,
  bytes: 100n, msgs: 2n, passed: 5n, fallbacks: 1,
};

// The bytes the hand-written encoders wrote before the codecs were struct() definitions.
const golden: [string, Buffer, string][] = [
  ['struct weft_pod', c.encodePod({ podIp: '10.0.1.5', agentIp: '10.0.1.1', agentPort: 15001, mode: 'STRICT', flags: 0, ifindex: 3 }), '0a0001050a000101993a020003000000'],
  ['struct weft_pod_in', c.encodePodIn({ netnsCookie: 4097n, mode: 'PERMISSIVE', flags: 3 }), '01100000000000000103000000000000'],
  ['struct weft_tuple4', c.encodeTuple4(client, vip), '0a0001050a60000acaa85000'],
  ['struct weft_peer_key', c.encodePeerKey(client, vip), '0a0001050a60000acaa85000'],
  ['struct weft_peer', c.encodePeer(client), '0a000105caa80000'],
  ['struct weft_spliced', c.encodeSpliced(spliced),
    '0a0001050a60000acaa8500003000000785634128888ffff01000000020000004d000000000000006400000000000000020000000000000005000000000000000100000000000000'],
];

test('the datapath codecs write the bytes of the C structs (addresses network order, the rest host order)', () => {
  for (const [name, bytes, hex] of golden) assert.equal(bytes.toString('hex'), hex, name);
});

test('each datapath decoder reads back what its encoder wrote', () => {
  const pod: c.PodEntry = { podIp: '10.0.1.5', agentIp: '10.0.1.1', agentPort: 15001, mode: 'STRICT', flags: 0, ifindex: 3 };
  assert.deepEqual(c.decodePod(c.encodePod(pod)), pod);
  const podIn: c.PodInbound = { netnsCookie: 4097n, mode: 'PERMISSIVE', flags: c.POD_F.PORT_MODES };
  assert.deepEqual(c.decodePodIn(c.encodePodIn(podIn)), podIn);
  assert.deepEqual(c.decodePodPort(c.encodePodPort(client.ip, client.port)), client);
  assert.equal(c.decodePortMode(c.encodePortMode('STRICT')), 'STRICT');
  assert.deepEqual(c.decodeDestKey(c.encodeDestKey({ ip: vip.ip })), { ip: vip.ip, port: 0 });
  assert.deepEqual(c.decodeTuple4(c.encodeTuple4(client, vip)), { src: client, dst: vip });
  assert.deepEqual(c.decodePeer(c.encodePeer(client)), client);
  assert.deepEqual(c.decodeSpliced(c.encodeSpliced(spliced)), spliced);
  assert.equal(c.decodeCookieKey(c.cookieKey(2n ** 63n)), 2n ** 63n);
  assert.equal(c.decodeIpKey(c.ipKey(vip.ip)), vip.ip);
  assert.equal(c.decodePortKey(c.portKey(15006)), 15006);
});

test('the kernel-written records decode by their C members', () => {
  const orig = c.WEFT_ORIG.encode({ orig_ip: vip.ip, orig_port: vip.port, netns_cookie: 4097n });
  assert.deepEqual(c.decodeOrig(orig), { ip: vip.ip, port: vip.port, clientNetnsCookie: 4097n });
  const reason = c.COUNTER_FIELDS.indexOf('strict_denied');
  const refusal = c.WEFT_REFUSAL.encode({ netns_cookie: 9n, saddr: client.ip, daddr: vip.ip, sport: client.port, dport: vip.port, reason });
  assert.equal(refusal.length, c.REFUSAL_SIZE);
  assert.deepEqual(c.decodeRefusal(refusal), { netnsCookie: 9n, src: client, dst: vip, reason: 'strict_denied' });
  // Two CPUs' slots of struct weft_counters, summed.
  const counters = Buffer.alloc(c.COUNTERS_SIZE * 2);
  counters.writeBigUInt64LE(2n, 0);
  counters.writeBigUInt64LE(3n, c.COUNTERS_SIZE);
  counters.writeBigUInt64LE(7n, c.COUNTERS_SIZE + 8 * reason);
  const sum = c.decodePercpuCounters(counters, c.percpuCounters(2));
  assert.equal(sum.connect4_redirected, 5);
  assert.equal(sum.strict_denied, 7);
  assert.deepEqual(Object.keys(sum), [...c.COUNTER_FIELDS]);
  const pod = c.WEFT_POD_COUNTERS.encode(Object.fromEntries(c.POD_COUNTER_FIELDS.map((f, i) => [f, BigInt(i)])) as Record<c.PodCounterName, bigint>);
  assert.deepEqual(c.decodePodCounters(pod), Object.fromEntries(c.POD_COUNTER_FIELDS.map((f, i) => [f, i])));
});

test('a record shorter than its struct is refused (WEFT_CODEC_SIZE), naming the struct, by every decoder', () => {
  const short = Buffer.alloc(3);
  for (const [name, decode] of [
    ['struct weft_orig', c.decodeOrig], ['struct weft_refusal', c.decodeRefusal], ['struct weft_tuple4', c.decodeTuple4],
    ['struct weft_spliced', c.decodeSpliced], ['struct weft_peer', c.decodePeer], ['struct weft_pod', c.decodePod],
  ] as const) {
    assert.throws(() => decode(short), (e: Error & { code?: string }) => e.code === 'WEFT_CODEC_SIZE' && e.message.startsWith(`${name}:`), name);
  }
});

test('an address or port that does not fit is refused, naming the struct member', () => {
  assert.throws(() => c.encodeTuple4({ ip: '10.0.1.256', port: 1 }, vip), /struct weft_tuple4\.src_ip/);
  assert.throws(() => c.encodePeer({ ip: client.ip, port: 70_000 }), /struct weft_peer\.client_port/);
});
