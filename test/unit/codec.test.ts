// Codecs of agent/libbpf: byte layouts that must match what clang lays out for the C structs.
// No kernel, no addon: the BTF comparison against real objects is in test/bpf/binding.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  array, be16, be32, bytes, checkLayout, CodecError, cstring, htonl, htons, i16, i32, i64, i8, ipv4, ipv4ToNumber, ipv6, layoutDiff,
  numberToIpv4, parseCpuList, percpu, struct, sumPercpu, u16, u32, u64, u8, isIpv4,
} from '../../agent/libbpf/codec.ts';
import { isIPv4 } from 'node:net';

test('integers are little-endian host order, addresses and be16 ports network order', () => {
  assert.deepEqual([...u32.encode(0x01020304)], [4, 3, 2, 1]);
  assert.deepEqual([...u16.encode(0x0102)], [2, 1]);
  assert.deepEqual([...u64.encode(0x0102030405060708n)], [8, 7, 6, 5, 4, 3, 2, 1]);
  assert.deepEqual([...be16.encode(8080)], [0x1f, 0x90]);
  assert.deepEqual([...ipv4.encode('10.0.0.1')], [10, 0, 0, 1]);
  assert.equal(ipv4.decode(Buffer.from([192, 168, 1, 2])), '192.168.1.2');
  assert.equal(i32.decode(i32.encode(-5)), -5);
  assert.equal(i16.decode(i16.encode(-300)), -300);
  assert.equal(i8.decode(i8.encode(-2)), -2);
  assert.equal(i64.decode(i64.encode(-2n)), -2n);
  assert.equal(u64.decode(u64.encode(2n ** 64n - 1n)), 2n ** 64n - 1n);
  assert.deepEqual([...be32.encode(0x0a000001)], [10, 0, 0, 1]);
  assert.equal(be32.decode(be32.encode(0xfffffffe)), 0xfffffffe);
});

test('network-order helpers agree with the codecs', () => {
  assert.equal(htons(8080), u16.decode(be16.encode(8080)));
  assert.equal(htonl(ipv4ToNumber('10.0.0.1')), u32.decode(ipv4.encode('10.0.0.1')));
  assert.equal(numberToIpv4(0x0a000001), '10.0.0.1');
});

test('IPv6 addresses round-trip, including v4-mapped ones', () => {
  const mapped = ipv6.encode('::ffff:10.1.2.3');
  assert.deepEqual([...mapped.subarray(10)], [0xff, 0xff, 10, 1, 2, 3]);
  assert.equal(ipv6.decode(mapped), '::ffff:10.1.2.3');
  assert.equal(ipv6.decode(ipv6.encode('fd00::1')), 'fd00::1');
  assert.equal(ipv6.decode(ipv6.encode('2001:db8:0:1:0:0:0:5')), '2001:db8:0:1::5');
});

// RFC 4007 11.2: a zone names an interface of one host; net.isIP admits it, and the parse dropped
// it, so fd00::10%x was encoded as fd00::10.
test('refuses an IPv6 address with a zone, which it encoded as the address without it', () => {
  assert.throws(() => ipv6.encode('fd00::10%eth0'), /has a zone/);
  assert.throws(() => ipv6.encode('fe80::1%1'), CodecError);
});

test('refuses values that do not fit instead of truncating them', () => {
  assert.throws(() => u8.encode(256), CodecError);
  assert.throws(() => u32.encode(-1), CodecError);
  assert.throws(() => u64.encode(-1n), CodecError);
  assert.throws(() => ipv4.encode('10.0.0.256'), /not an IPv4 address/);
  for (const bad of ['010.0.0.1', '10.0.0', '10.0.0.1.', '10..0.1', ' 10.0.0.1', '::1']) assert.throws(() => ipv4.encode(bad), /not an IPv4 address/, bad);
  assert.throws(() => cstring(4).encode('abcd'), /longer than 3 bytes/);
  assert.throws(() => u32.decode(Buffer.alloc(3)), (e: CodecError) => e.code === 'WEFT_CODEC_SIZE');
});

// struct weft_test_tuple and struct weft_test_event of test/bpf/fixtures/weft_test.h.
const tuple = struct([['addr', ipv4], ['port', be16], ['proto', u8], ['flags', u8], ['netns_cookie', u64]], { name: 'struct weft_test_tuple' });
const event = struct([
  ['netns_cookie', u64], ['pid', u32], ['daddr', ipv4], ['dport', be16], ['family', u16], ['comm', cstring(16)], ['pad', 4],
], { name: 'struct weft_test_event' });

test('struct lays fields out with C alignment and pads the end to the largest alignment', () => {
  assert.equal(tuple.size, 16);
  assert.deepEqual(tuple.fields.map((f) => [f.name, f.offset]), [['addr', 0], ['port', 4], ['proto', 6], ['flags', 7], ['netns_cookie', 8]]);
  assert.equal(event.size, 40);
  // Alignment inserted: a u8 followed by a u32 lands at offset 4, like C.
  const gap = struct([['a', u8], ['b', u32]]);
  assert.deepEqual(gap.fields.map((f) => f.offset), [0, 4]);
  assert.equal(gap.size, 8);
});

test('struct encodes, zeroes padding and decodes back to the same object', () => {
  const v = { addr: '10.96.0.10', port: 80, proto: 6, flags: 0, netns_cookie: 4096n };
  const buf = tuple.encode(v);
  assert.deepEqual([...buf], [10, 96, 0, 10, 0, 80, 6, 0, 0, 16, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual(tuple.decode(buf), v);
  const e = { netns_cookie: 7n, pid: 42, daddr: '127.0.0.1', dport: 9090, family: 2, comm: 'node' };
  const eb = Buffer.alloc(40, 0xff);
  event.encode(e, eb);
  assert.deepEqual(event.decode(eb), e);
  assert.equal(eb.readUInt32LE(36), 0, 'explicit padding is written as zero');
});

test('get reads one field at its offset, at the struct\'s offset in the buffer, as decode() does', () => {
  const v = { addr: '10.0.0.7', port: 8080, proto: 6, flags: 1, netns_cookie: 2n ** 40n + 3n };
  const b = Buffer.concat([Buffer.alloc(8, 0xff), tuple.encode(v)]);
  assert.deepEqual(Object.fromEntries(Object.entries(tuple.get).map(([k, get]) => [k, get(b, 8)])), v);
  assert.equal(tuple.get.port(tuple.encode(v)), 8080, 'offset 0 by default');
  assert.deepEqual(Object.keys(tuple.get), tuple.fields.map((f) => f.name));
});

test('struct codecs generate no code: they build and decode under node --disallow-code-generation-from-strings', () => {
  const url = new URL('../../agent/src/datapath/codecs.ts', import.meta.url).href;
  const script = `const c = await import(${JSON.stringify(url)});
    const b = c.WEFT_REFUSAL.encode({ netns_cookie: 9n, saddr: '10.0.0.1', daddr: '10.0.0.2', sport: 1, dport: 2, reason: 0 });
    const v = c.WEFT_REFUSAL.decode(b);
    process.stdout.write(v.daddr + ' ' + c.decodeRefusal(b).dst.ip + ' ' + c.decodePod(c.encodePod({ podIp: '10.0.0.3', agentIp: '10.0.0.4', agentPort: 1, mode: 'STRICT', flags: 0, ifindex: 1 })).podIp);`;
  const out = execFileSync(process.execPath, ['--disallow-code-generation-from-strings', '--input-type=module', '-e', script], { encoding: 'utf8' });
  assert.equal(out, '10.0.0.2 10.0.0.2 10.0.0.3');
});

test('one IPv4 rule: isIpv4 answers as net.isIPv4, and the ipv4 codec takes exactly the addresses it accepts', () => {
  const spellings = [
    '10.0.0.1', '0.0.0.0', '255.255.255.255', '1.2.3.4', '010.0.0.1', '10.0.0.01', '00.0.0.0', '10.0.0', '10.0.0.1.', '.10.0.0.1', '10..0.1',
    ' 10.0.0.1', '10.0.0.1 ', '10.0.0.256', '1000.0.0.1', '10.0.0.1a', '0x0a.0.0.1', '127.1', '::1', '::ffff:10.0.0.1', '', '١٠.0.0.1',
  ];
  for (const a of spellings) {
    assert.equal(isIpv4(a), isIPv4(a), a);
    if (isIpv4(a)) assert.equal(ipv4.decode(ipv4.encode(a)), a, a);
    else assert.throws(() => ipv4.encode(a), /not an IPv4 address/, a);
  }
  for (const notText of [undefined, null, 167772161, ['10.0.0.1']]) assert.equal(isIpv4(notText), false, String(notText));
});

test('struct names the field that is missing or out of range', () => {
  assert.throws(() => tuple.encode({ addr: '10.0.0.1', port: 70000, proto: 6, flags: 0, netns_cookie: 0n }),
    /struct weft_test_tuple\.port/);
  assert.throws(() => tuple.encode({ addr: '10.0.0.1', port: 1, proto: 6, flags: 0 } as never), /field netns_cookie is missing/);
});

test('struct refuses overlapping or misaligned explicit offsets and a size smaller than its fields', () => {
  assert.throws(() => struct([['a', u32], ['b', u32, 2]]), /overlaps/);
  assert.throws(() => struct([['a', u8], ['b', u32, 1]]), /not aligned/);
  assert.throws(() => struct([['a', u64]], { size: 4 }), /smaller than its fields/);
  assert.equal(struct([['a', u32]], { size: 16 }).size, 16);
});

test('layoutDiff reports every size and offset that differs from the C layout', () => {
  const c = {
    name: 'weft_test_tuple', size: 16,
    members: [
      { name: 'addr', bitOffset: 0, size: 4 }, { name: 'port', bitOffset: 32, size: 2 },
      { name: 'proto', bitOffset: 48, size: 1 }, { name: 'flags', bitOffset: 56, size: 1 },
      { name: 'netns_cookie', bitOffset: 64, size: 8 },
    ],
  };
  assert.deepEqual(layoutDiff(tuple, c), []);
  checkLayout(tuple, c);
  const drifted = struct([['addr', ipv4], ['port', u32], ['proto', u8], ['flags', u8], ['netns_cookie', u64]]);
  const diff = layoutDiff(drifted, c);
  assert.ok(diff.some((d) => /port: size 4, C has 2/.test(d)), diff.join('\n'));
  assert.ok(diff.some((d) => /proto: offset 8, C has 6/.test(d)), diff.join('\n'));
  assert.throws(() => checkLayout(drifted, c), (e: CodecError) => e.code === 'WEFT_CODEC_LAYOUT');
});

test('percpu values have one slot per CPU, each rounded up to 8 bytes', () => {
  const pc = percpu(u32, 3);
  assert.equal(pc.size, 24);
  const buf = pc.encode([1, 2, 3]);
  assert.equal(buf.readUInt32LE(8), 2);
  assert.deepEqual(pc.decode(buf), [1, 2, 3]);
  assert.equal(sumPercpu(percpu(u64, 2).decode(percpu(u64, 2).encode([5n, 6n]))), 11n);
  assert.deepEqual(sumPercpu([{ a: 1, b: 2n }, { a: 3, b: 4n }]), { a: 4, b: 6n });
  assert.throws(() => pc.encode([1, 2]), /got 2 values for 3 CPUs/);
});

test('parses the kernel CPU list format', () => {
  assert.equal(parseCpuList('0-3\n'), 4);
  assert.equal(parseCpuList('0'), 1);
  assert.equal(parseCpuList('0,2-5'), 6);
});

test('arrays and raw bytes', () => {
  const a = array(u16, 3);
  assert.equal(a.size, 6);
  assert.deepEqual(a.decode(a.encode([1, 2, 3])), [1, 2, 3]);
  const b = bytes(6);
  assert.deepEqual([...b.encode(Buffer.from([1, 2]))], [1, 2, 0, 0, 0, 0]);
});
