// The libbpf binding against the real kernel: objects from test/bpf/fixtures (built by `make bpf`)
// are loaded, attached to a private lab cgroup, tcx hooks in lab network namespaces and a
// sockhash, and the tests look at what processes and sockets experience. Needs root.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, existsSync, readFileSync, readlinkSync } from 'node:fs';
import { createServer, Socket, type Server } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Lab, run, type Netns } from '../lab/lab.ts';
import { collectOutput } from '../../lib/sys/exec.ts';
import {
  AddonNotFoundError, addonCandidates, be16, BpfError, BpfLink, BpfMap, BpfObject, btfStruct, checkLayout, createBoundSocketInNetns, createSocketInNetns, cstring, fdOf, ipv4,
  localPortRange, netnsCookie, parseReservedPorts, PortCursor, percpu, possibleCpus, RingBuffer, socketCookie, struct, sumPercpu, TypedMap, u16, u32, u64, u8,
} from '../../agent/libbpf/index.ts';

const OBJECTS = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'build', 'bpf');
const obj = (name: string): string => join(OBJECTS, `${name}.bpf.o`);

// Mirrors of test/bpf/fixtures/weft_test.h, checked against BTF below.
const tupleCodec = struct([['addr', ipv4], ['port', be16], ['proto', u8], ['flags', u8], ['netns_cookie', u64]],
  { name: 'struct weft_test_tuple' });
const eventCodec = struct([
  ['netns_cookie', u64], ['pid', u32], ['daddr', ipv4], ['dport', be16], ['family', u16], ['comm', cstring(16)], ['pad', 4],
], { name: 'struct weft_test_event' });
const COUNTER = { redirected: 0, passed: 1, passProg: 2, spare: 3 } as const;

/** A TCP server in a lab netns (socket made there by createSocketInNetns) that greets with `name`. */
interface Greeter {
  server: Server;
  port: number;
  accepted: number;
}

async function greeter(ns: Netns, name: string, host = '127.0.0.1'): Promise<Greeter> {
  const fd = createSocketInNetns(ns.path, { listen: { host, port: 0 } });
  const g: Greeter = { server: createServer((s) => { g.accepted++; s.end(name); }), port: 0, accepted: 0 };
  await new Promise<void>((r) => g.server.listen({ fd }, r));
  g.port = (g.server.address() as { port: number }).port;
  return g;
}

/**
 * Runs a client process (optionally in a cgroup) in the lab netns that connects `times` times, one
 * after the other; resolves to what it read (one line per connection).
 */
function clientIn(lab: Lab, ns: Netns, port: number, cgroup?: string, times = 1): Promise<{ pid: number; out: string }> {
  const script = "const net=require('net');const [host,port,times]=process.argv.slice(1);" +
    "const once=(n)=>{if(n===0)return;const s=net.connect(+port,host);let d='';" +
    "s.on('data',c=>d+=c);s.on('end',()=>{console.log(d);once(n-1)});s.on('error',e=>console.log('ERR '+e.code))};once(+times);";
  const child = lab.spawn(process.execPath, ['-e', script, '127.0.0.1', String(port), String(times)],
    cgroup === undefined ? { netns: ns } : { netns: ns, cgroup });
  return collectOutput(child).then(({ code, stdout, stderr }) => {
    if (code !== 0) throw new Error(`client exited ${code}: ${stderr}`);
    return { pid: child.pid!, out: stdout.trim() };
  });
}

/** Connects from inside a netns (socket made there, bound to `from`) and resolves to what it read. */
function connectFromNetns(ns: Netns, from: string, to: string, port: number): Promise<{ socket: Socket; data: string }> {
  const fd = createSocketInNetns(ns.path, { bind: { host: from, port: 0 } });
  const socket = new Socket({ fd, readable: true, writable: true });
  return new Promise((resolvePromise, reject) => {
    let data = '';
    socket.on('data', (c) => { data += c.toString(); });
    socket.on('end', () => resolvePromise({ socket, data }));
    socket.on('error', reject);
    socket.connect(port, to);
  });
}

const counter = (o: BpfObject, idx: number): bigint =>
  sumPercpu(percpu(u64).decode(o.map('weft_test_counts').lookup(u32.encode(idx))!));

/** A broken binding must fail the run, not hang it (a lost record or packet would wait forever). */
const SUITE_TIMEOUT_MS = 120_000;

describe('libbpf binding', { timeout: SUITE_TIMEOUT_MS }, () => {
  let lab: Lab;
  const closers: (() => void)[] = [];
  const servers: Server[] = [];

  before(() => {
    for (const name of ['weft_test_connect', 'weft_test_reject', 'weft_test_ringbuf', 'weft_test_tc', 'weft_test_sockmap']) {
      assert.ok(existsSync(obj(name)), `${obj(name)} is missing: run \`make bpf\` first`);
    }
    lab = new Lab();
  });

  after(async () => {
    for (const close of closers.reverse()) {
      try { close(); } catch { /* teardown goes on */ }
    }
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
    await lab?.cleanup();
  });

  /** Opens and loads an object whose maps pin under a pin root of the test's own. */
  function load(name: string, pinDir = name): BpfObject {
    const o = BpfObject.open(obj(name), { pinRoot: join(lab.pinRoot, pinDir) });
    closers.push(() => o.close());
    o.load();
    return o;
  }

  async function serve(ns: Netns, name: string, host?: string): Promise<Greeter> {
    const g = await greeter(ns, name, host);
    servers.push(g.server);
    return g;
  }

  test('the addon loader says which paths it tried', () => {
    const saved = process.env.WEFT_BPF_ADDON;
    process.env.WEFT_BPF_ADDON = '/nonexistent/weft_bpf.node';
    try {
      const tried = addonCandidates();
      assert.equal(tried[0], '/nonexistent/weft_bpf.node');
      assert.ok(tried.some((p) => p.endsWith(join('agent', 'native', 'build', 'Release', 'weft_bpf.node'))));
      const err = new AddonNotFoundError(tried);
      assert.equal(err.code, 'WEFT_ADDON_NOT_FOUND');
      for (const p of tried) assert.ok(err.message.includes(p), `${p} named in: ${err.message}`);
      assert.match(err.message, /make addon/);
    } finally {
      if (saved === undefined) delete process.env.WEFT_BPF_ADDON;
      else process.env.WEFT_BPF_ADDON = saved;
    }
  });

  test('opening a missing object file fails with ENOENT and names the path', () => {
    const path = join(OBJECTS, 'no_such_object.bpf.o');
    assert.throws(() => BpfObject.open(path), (err: BpfError) => {
      assert.ok(err instanceof BpfError);
      assert.equal(err.code, 'ENOENT');
      assert.equal(err.errno, 2);
      assert.equal(err.path, path);
      assert.match(err.message, /no_such_object\.bpf\.o/);
      return true;
    });
  });

  test('a file that is not an ELF object fails with libbpf\'s format error and the path', () => {
    const path = resolve(OBJECTS, '..', '..', 'package.json');
    assert.throws(() => BpfObject.open(path), (err: BpfError) =>
      err.code === 'LIBBPF_ERRNO__FORMAT' && err.path === path && /not a proper ELF object/.test(err.message));
  });

  test('a program the verifier rejects fails to load with the verifier\'s reason', () => {
    const o = BpfObject.open(obj('weft_test_reject'));
    closers.push(() => o.close());
    assert.throws(() => o.load(), (err: BpfError) => {
      assert.equal(err.code, 'WEFT_VERIFIER');
      assert.equal(err.errno, 13, 'EACCES from BPF_PROG_LOAD is kept');
      assert.equal(err.program, 'weft_test_oob');
      assert.equal(err.object, obj('weft_test_reject'));
      assert.match(err.message, /invalid access to map value, value_size=8 off=64 size=8/);
      assert.match(err.verifierLog ?? '', /invalid access to map value/);
      return true;
    });
    assert.equal(o.loaded, false);
  });

  test('asking for a program or map the object does not have names it', () => {
    const o = load('weft_test_connect', 'names');
    assert.deepEqual(o.programNames().sort(), ['weft_test_c4', 'weft_test_c4_pass']);
    assert.deepEqual(o.mapNames().sort(), ['weft_test_counts', 'weft_test_ports', 'weft_test_tuples']);
    assert.throws(() => o.program('weft_nope'), (e: BpfError) => e.code === 'ENOENT' && e.program === 'weft_nope' && /weft_nope/.test(e.message));
    assert.throws(() => o.map('weft_nope'), (e: BpfError) => e.code === 'ENOENT' && e.map === 'weft_nope');
    const p = o.program('weft_test_c4');
    assert.equal(p.type, 'cgroup_sock_addr');
    assert.equal(p.expectedAttachType, 'connect4');
    assert.ok(p.id > 0);
    assert.match(run('bpftool', ['prog', 'show', 'id', String(p.id)]), /name weft_test_c4/);
    o.close();
    o.close(); // idempotent
    assert.throws(() => p.fd, (e: BpfError) => e.code === 'WEFT_CLOSED');
  });

  test('load with a pin root pins maps by name and a second load reuses them', () => {
    const first = load('weft_test_connect', 'reuse');
    const pinned = join(lab.pinRoot, 'reuse', 'weft_test_ports');
    assert.ok(existsSync(pinned), `${pinned} pinned`);
    const ports = first.map('weft_test_ports');
    assert.equal(ports.pinnedPath, pinned);
    ports.update(u32.encode(8080), u32.encode(9090));

    const second = load('weft_test_connect', 'reuse');
    const again = second.map('weft_test_ports');
    assert.equal(again.id, ports.id, 'same kernel map');
    assert.equal(u32.decode(again.lookup(u32.encode(8080))!), 9090);
    // Unpinned maps are per load.
    assert.notEqual(second.map('weft_test_counts').id, first.map('weft_test_counts').id);

    // A map pinned under that name with another layout is refused, and the message says why.
    const other = load('weft_test_tc', 'mismatch-src');
    other.map('weft_test_tc_counts').pin(join(lab.pinRoot, 'mismatch', 'weft_test_ports'));
    const clash = BpfObject.open(obj('weft_test_connect'), { pinRoot: join(lab.pinRoot, 'mismatch') });
    closers.push(() => clash.close());
    assert.throws(() => clash.load(), (e: BpfError) =>
      e.code === 'EINVAL' && e.object === obj('weft_test_connect') && /couldn't reuse pinned map .*weft_test_ports.*parameter mismatch/.test(e.message));

    const byPin = BpfMap.openPinned(pinned);
    closers.push(() => byPin.close());
    assert.equal(byPin.id, ports.id);
    assert.equal(byPin.type, 'hash');
    assert.throws(() => BpfMap.openPinned(join(lab.pinRoot, 'reuse', 'missing')), (e: BpfError) => e.code === 'ENOENT');
  });

  describe('cgroup connect4', () => {
    let ns: Netns;
    let a: Greeter; // the destination clients ask for
    let b: Greeter; // where weft_test_c4 sends them
    let o: BpfObject;
    let cg: string;

    before(async () => {
      ns = lab.netns('c4');
      a = await serve(ns, 'A');
      b = await serve(ns, 'B');
      o = load('weft_test_connect', 'c4');
      o.map('weft_test_ports').update(u32.encode(a.port), u32.encode(b.port));
      cg = lab.cgroup('c4');
    });

    test('redirects connect() of a process in the cgroup, and only there', async () => {
      const link = o.program('weft_test_c4').attachCgroup(cg);
      closers.push(() => link.close());
      const inside = await clientIn(lab, ns, a.port, cg);
      assert.equal(inside.out, 'B', 'the process in the cgroup reached the redirect target');
      const outside = await clientIn(lab, ns, a.port);
      assert.equal(outside.out, 'A', 'a process outside the cgroup is unaffected');
      assert.equal(counter(o, COUNTER.redirected), 1n);

      // What the program recorded, keyed as the C struct lays it out.
      const tuples = new TypedMap(o.map('weft_test_tuples'), tupleCodec, eventCodec);
      const key = { addr: '127.0.0.1', port: a.port, proto: 6, flags: 0, netns_cookie: netnsCookie(ns.path) };
      const ev = tuples.get(key);
      assert.ok(ev, 'the program saw the same netns cookie as netnsCookie()');
      assert.equal(ev.pid, inside.pid);
      assert.ok(ev.comm.length > 0, 'comm decoded from char[16]');
      assert.equal(ev.dport, a.port);
      link.detach();
      link.close();
      assert.equal((await clientIn(lab, ns, a.port, cg)).out, 'A', 'detached: no redirect');
    });

    test('links pin, reopen, switch program atomically and detach', async () => {
      const c4 = o.program('weft_test_c4');
      const pass = o.program('weft_test_c4_pass');
      const pin = join(lab.pinRoot, 'c4', 'links', 'connect4');
      const link = c4.attachCgroup(cg);
      link.pin(pin);
      link.close(); // the pin keeps it attached
      assert.equal((await clientIn(lab, ns, a.port, cg)).out, 'B');

      const pinned = BpfLink.openPinned(pin);
      closers.push(() => pinned.close());
      const info = pinned.info();
      assert.equal(info.type, 'cgroup');
      assert.equal(info.attachType, 'connect4');
      assert.equal(info.progId, c4.id);
      assert.equal(info.id, pinned.id);
      assert.ok((info.cgroupId ?? 0n) > 0n);

      const passedBefore = counter(o, COUNTER.passProg);
      pinned.update(pass);
      assert.equal(pinned.info().progId, pass.id);
      assert.equal((await clientIn(lab, ns, a.port, cg)).out, 'A', 'the pass-through program runs now');
      assert.equal(counter(o, COUNTER.passProg), passedBefore + 1n);

      pinned.update(c4);
      assert.equal((await clientIn(lab, ns, a.port, cg)).out, 'B', 'and back');

      pinned.detach();
      const redirected = counter(o, COUNTER.redirected);
      assert.equal((await clientIn(lab, ns, a.port, cg)).out, 'A', 'detached link redirects nothing');
      assert.equal(counter(o, COUNTER.redirected), redirected);
      pinned.unpin();
      assert.equal(existsSync(pin), false);
      assert.throws(() => BpfLink.openPinned(pin), (e: BpfError) => e.code === 'ENOENT' && e.path === pin);
    });
  });

  test('map updates honour noexist/exist, and delete, iteration and batches work', () => {
    const o = load('weft_test_connect', 'mapops');
    const m = o.map('weft_test_ports');
    const k = (n: number) => u32.encode(n);
    m.update(k(1), k(10));
    assert.throws(() => m.update(k(1), k(11), 'noexist'), (e: BpfError) => e.code === 'EEXIST' && e.errno === 17 && e.map === 'weft_test_ports');
    assert.throws(() => m.update(k(2), k(20), 'exist'), (e: BpfError) => e.code === 'ENOENT');
    m.update(k(1), k(12), 'exist');
    assert.equal(u32.decode(m.lookup(k(1))!), 12);
    assert.equal(u32.decode(m.lookupAndDelete(k(1))!), 12);
    assert.equal(m.lookupAndDelete(k(1)), undefined);
    m.update(k(1), k(12));
    assert.equal(m.delete(k(1)), true);
    assert.equal(m.delete(k(1)), false);
    assert.equal(m.lookup(k(1)), undefined);

    for (let i = 1; i <= 5; i++) m.update(k(i), k(i * 100));
    assert.deepEqual([...m.keys()].map((b) => u32.decode(b)).sort((x, y) => x - y), [1, 2, 3, 4, 5]);
    assert.deepEqual(new Map([...m.entries()].map(([kb, vb]) => [u32.decode(kb), u32.decode(vb)])).get(3), 300);

    const batch = m.lookupBatch({ batchSize: 2 });
    assert.deepEqual(batch.map(([kb, vb]) => [u32.decode(kb), u32.decode(vb)]).sort((x, y) => x[0]! - y[0]!),
      [[1, 100], [2, 200], [3, 300], [4, 400], [5, 500]]);
    assert.equal(m.updateBatch([[k(6), k(600)], [k(7), k(700)]]), 2);
    assert.equal(m.deleteBatch([k(1), k(2), k(6)]), 3);
    assert.deepEqual([...m.keys()].map((b) => u32.decode(b)).sort((x, y) => x - y), [3, 4, 5, 7]);
    assert.equal(m.clear(), 4);

    assert.throws(() => m.update(Buffer.alloc(2), k(1)), (e: BpfError) => e.code === 'WEFT_SIZE_MISMATCH' && e.map === 'weft_test_ports');
    assert.throws(() => new TypedMap(m, u64, u32), (e: BpfError) => e.code === 'WEFT_SIZE_MISMATCH' && /weft_test_ports/.test(e.message));
    const typed = new TypedMap(m, u32, u32);
    typed.set(42, 4242);
    assert.deepEqual([...typed.entries()], [[42, 4242]]);
  });

  test('percpu map values hold one slot per possible CPU', () => {
    const o = load('weft_test_connect', 'percpu');
    const m = o.map('weft_test_counts');
    const cpus = possibleCpus();
    assert.equal(m.percpu, true);
    assert.equal(m.valueLength, cpus * 8);
    const values = Array.from({ length: cpus }, (_, i) => BigInt(i + 1) * 1000n);
    m.update(u32.encode(COUNTER.spare), percpu(u64).encode(values));
    const raw = m.lookup(u32.encode(COUNTER.spare))!;
    assert.equal(raw.length, cpus * 8);
    assert.deepEqual(percpu(u64).decode(raw), values);
    const typed = new TypedMap(m, u32, percpu(u64));
    assert.equal(sumPercpu(typed.get(COUNTER.spare)!), values.reduce((x, y) => x + y, 0n));
  });

  test('ring buffer records arrive in JavaScript', async () => {
    const ns = lab.netns('rb');
    const g = await serve(ns, 'R');
    const o = load('weft_test_ringbuf');
    const cg = lab.cgroup('rb');
    const link = o.program('weft_test_rb').attachCgroup(cg);
    closers.push(() => link.close());
    const events: ReturnType<typeof eventCodec.decode>[] = [];
    let wake: (() => void) | undefined;
    const rb = new RingBuffer(o.map('weft_test_events'), (data) => {
      events.push(eventCodec.decode(data));
      wake?.();
    });
    closers.push(() => rb.close());
    const got = new Promise<void>((r) => { wake = r; });
    const client = await clientIn(lab, ns, g.port, cg);
    assert.equal(client.out, 'R');
    await got;
    const ev = events.find((e) => e.pid === client.pid);
    assert.ok(ev, `an event from pid ${client.pid} among ${JSON.stringify(events, (_k, v) => typeof v === 'bigint' ? String(v) : v)}`);
    assert.equal(ev.dport, g.port);
    assert.equal(ev.daddr, '127.0.0.1');
    assert.ok(ev.comm.length > 0);
    assert.equal(ev.netns_cookie, netnsCookie(ns.path));
    rb.close();
    rb.close();
    assert.equal(rb.closed, true);
    const notRing = load('weft_test_connect', 'rb-wrong').map('weft_test_ports');
    assert.throws(() => new RingBuffer(notRing, () => {}), (e: BpfError) => e.code === 'EINVAL' && /not a ringbuf/.test(e.message));
  });

  test('ring buffer delivers every record, and none after close()', async () => {
    const ns = lab.netns('rb2');
    const g = await serve(ns, 'S');
    const o = load('weft_test_ringbuf', 'rb2');
    const cg = lab.cgroup('rb2');
    const link = o.program('weft_test_rb').attachCgroup(cg);
    closers.push(() => link.close());
    const times = 20;
    let seen = 0;
    let done: (() => void) | undefined;
    const all = new Promise<void>((r) => { done = r; });
    const rb = new RingBuffer(o.map('weft_test_events'), (data) => {
      if (eventCodec.decode(data).dport === g.port && ++seen === times) done?.();
    });
    closers.push(() => rb.close());
    const client = await clientIn(lab, ns, g.port, cg, times);
    assert.equal(client.out.split('\n').length, times);
    await all;
    rb.close();
    // A second consumer gets the next record; the closed one must not.
    let next: (() => void) | undefined;
    const arrived = new Promise<void>((r) => { next = r; });
    const rb2 = new RingBuffer(o.map('weft_test_events'), () => next?.());
    closers.push(() => rb2.close());
    await clientIn(lab, ns, g.port, cg);
    await arrived;
    rb2.close();
    assert.equal(seen, times, 'nothing is delivered after close()');
  });

  test('netnsCookie differs between namespaces and is stable', () => {
    const ns = lab.netns('cookie');
    const host = netnsCookie('/proc/self/ns/net');
    const lab1 = netnsCookie(ns.path);
    assert.notEqual(lab1, host);
    assert.equal(netnsCookie(ns.path), lab1);
    assert.equal(netnsCookie(process.pid), host);
    assert.throws(() => netnsCookie('/var/run/netns/wt-no-such-netns'),
      (e: BpfError) => e.code === 'ENOENT' && e.path === '/var/run/netns/wt-no-such-netns');
  });

  test('createSocketInNetns gives a listening socket that accepts connections inside that netns only', async () => {
    const ns = lab.netns('listen');
    const g = await serve(ns, 'L');
    const { data, socket } = await connectFromNetns(ns, '127.0.0.1', '127.0.0.1', g.port);
    assert.equal(data, 'L');
    assert.ok(socketCookie(fdOf(g.server)) > 0n);
    socket.destroy();
    // The host's loopback is another namespace: nothing listens there on that port.
    const refused = await new Promise<string>((r) => {
      const s = new Socket();
      s.on('error', (e: NodeJS.ErrnoException) => r(e.code ?? 'error'));
      s.on('connect', () => { s.destroy(); r('connected'); });
      s.connect(g.port, '127.0.0.1');
    });
    assert.equal(refused, 'ECONNREFUSED');
    assert.equal(g.accepted, 1);
  });

  test('localPortRange reads the namespace\'s own range and reserved ports, and a port search binds free ports in turn, skipping taken and reserved ones and naming the range when all are', () => {
    const ns = lab.netns('ports');
    ns.exec('sysctl', '-qw', 'net.ipv4.ip_local_port_range=41000 41008');
    ns.exec('sysctl', '-qw', 'net.ipv4.ip_local_reserved_ports=41008,50000-50010');
    const ports = localPortRange(ns.path);
    assert.deepEqual(ports, { from: 41000, to: 41008, reserved: [[41008, 41008], [50000, 50010]] });
    const [from, to] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    assert.deepEqual({ from: localPortRange('/proc/self/ns/net').from, to: localPortRange('/proc/self/ns/net').to }, { from, to }, 'each namespace has its own');
    assert.deepEqual(parseReservedPorts('80, 9000-9002,x,5-3\n'), [[80, 80], [9000, 9002]]);
    const fds: number[] = [];
    try {
      // Someone else holds 41002 (a listener, as an application would).
      const other = createSocketInNetns(ns.path, { listen: { host: '127.0.0.1', port: 41002 } });
      fds.push(other);
      const cursor = new PortCursor(ports);
      cursor.used(41000); // start at 41001, deterministically
      const got: number[] = [];
      for (let i = 0; i < 7; i++) {
        const b = createBoundSocketInNetns(ns.path, { bind: { host: '127.0.0.1', port: 0 }, portSearch: cursor.next });
        fds.push(b.fd);
        cursor.used(b.port);
        got.push(b.port);
      }
      // In turn from the cursor, past the taken port and the reserved one, wrapping at the end of the range.
      assert.deepEqual(got, [41001, 41003, 41004, 41005, 41006, 41007, 41000]);
      assert.throws(() => createBoundSocketInNetns(ns.path, { bind: { host: '127.0.0.1', port: 0 }, portSearch: cursor.next }),
        (e: BpfError) => e.code === 'EADDRNOTAVAIL' && /with a free port of 41000-41008: .*EADDRNOTAVAIL/.test(e.message));
      // A port freed is found again (fds[3] holds got[2], 41004).
      closeSync(fds.splice(3, 1)[0]!);
      const again = createBoundSocketInNetns(ns.path, { bind: { host: '127.0.0.1', port: 0 }, portSearch: cursor.next });
      fds.push(again.fd);
      assert.equal(again.port, 41004);
    } finally {
      for (const fd of fds) closeSync(fd);
    }
  });

  describe('tcx', () => {
    let x: Netns;
    let y: Netns;
    let ifY: string;

    before(() => {
      x = lab.netns('tx');
      y = lab.netns('ty');
      ({ b: ifY } = lab.veth({ ns: x, name: 'tx', addr: '10.231.0.1/24' }, { ns: y, name: 'ty', addr: '10.231.0.2/24' }));
    });

    test('a tc program attaches as a tcx link inside a lab netns and sees its traffic', async () => {
      const o = load('weft_test_tc');
      const g = await serve(y, 'T', '10.231.0.2');
      const link = o.program('weft_test_tc').attachTcx(ifY, 'ingress', { netns: y.path });
      closers.push(() => link.close());
      const info = link.info();
      assert.equal(info.type, 'tcx');
      assert.equal(info.attachType, 'tcx_ingress');
      const ifindex = (JSON.parse(y.exec('ip', '-j', 'link', 'show', ifY)) as { ifindex: number }[])[0]!.ifindex;
      assert.equal(info.ifindex, ifindex);

      const counts = new TypedMap(o.map('weft_test_tc_counts'), u32, u64);
      const first = await connectFromNetns(x, '10.231.0.1', '10.231.0.2', g.port);
      first.socket.destroy();
      assert.equal(first.data, 'T');
      const tcp = counts.get(1)!;
      assert.ok(tcp >= 3n, `the handshake and data passed the program (${tcp} TCP packets)`);

      link.detach();
      const second = await connectFromNetns(x, '10.231.0.1', '10.231.0.2', g.port);
      second.socket.destroy();
      assert.equal(second.data, 'T');
      assert.equal(counts.get(1), tcp, 'a detached link sees nothing');
    });

    test('a failed attach in another netns names the interface and leaves the thread in its own netns', () => {
      const o = load('weft_test_tc', 'tc-fail');
      const before = readlinkSync('/proc/thread-self/ns/net');
      assert.throws(() => o.program('weft_test_tc').attachTcx('wtnosuchif0', 'egress', { netns: y.path }),
        (e: BpfError) => e.code === 'ENODEV' && /wtnosuchif0/.test(e.message) && e.path === y.path);
      assert.throws(() => o.program('weft_test_tc').attachTcx(ifY, 'egress', { netns: '/var/run/netns/wt-missing' }),
        (e: BpfError) => e.code === 'ENOENT' && e.path === '/var/run/netns/wt-missing');
      assert.equal(readlinkSync('/proc/thread-self/ns/net'), before);
    });
  });

  test('an sk_msg program attached to a sockhash sees messages until detached', async () => {
    const ns = lab.netns('skmsg');
    const received: string[] = [];
    const fd = createSocketInNetns(ns.path, { listen: { host: '127.0.0.1', port: 0 } });
    const server = createServer((s) => s.on('data', (c) => received.push(c.toString())));
    servers.push(server);
    await new Promise<void>((r) => server.listen({ fd }, r));
    const port = (server.address() as { port: number }).port;

    const o = load('weft_test_sockmap');
    const hash = o.map('weft_test_sockhash');
    const count = new TypedMap(o.map('weft_test_msg_count'), u32, u64);
    const attachment = o.program('weft_test_skmsg').attachSockmap(hash, 'sk_msg');
    closers.push(() => attachment.detach());
    assert.equal(attachment.attachType, 'sk_msg_verdict');

    const open = async (): Promise<Socket> => {
      const cfd = createSocketInNetns(ns.path, { bind: { host: '127.0.0.1', port: 0 } });
      const s = new Socket({ fd: cfd, readable: true, writable: true });
      closers.push(() => s.destroy());
      await new Promise<void>((r, j) => { s.once('connect', r); s.once('error', j); s.connect(port, '127.0.0.1'); });
      return s;
    };
    const send = (s: Socket, text: string, total: number): Promise<void> => new Promise((r) => {
      s.write(text);
      const poll = (): void => { if (received.join('').length >= total) r(); else setImmediate(poll); };
      poll();
    });

    const c1 = await open();
    hash.update(u32.encode(1), u64.encode(BigInt(fdOf(c1))));
    assert.equal(u64.decode(hash.lookup(u32.encode(1))!), socketCookie(fdOf(c1)), 'a sockhash lookup returns the socket cookie');
    await send(c1, 'hello', 5);
    assert.equal(received.join(''), 'hello', 'SK_PASS delivers the data');
    const seen = count.get(0)!;
    assert.ok(seen >= 1n, 'the verdict program ran');

    attachment.detach();
    assert.equal(attachment.attached, false);
    attachment.detach(); // idempotent
    const c2 = await open();
    hash.update(u32.encode(2), u64.encode(BigInt(fdOf(c2))));
    await send(c2, 'world', 10);
    assert.equal(count.get(0), seen, 'a socket added after detach is not seen by the program');
    assert.equal(hash.delete(u32.encode(1)), true);
    assert.equal(hash.delete(u32.encode(2)), true);
  });

  test('the codecs match the BTF layout clang emitted for the C structs', () => {
    checkLayout(tupleCodec, btfStruct(obj('weft_test_connect'), 'weft_test_tuple'));
    const event = btfStruct(obj('weft_test_connect'), 'weft_test_event');
    checkLayout(eventCodec, event);
    assert.equal(event.size, eventCodec.size);
    assert.throws(() => btfStruct(obj('weft_test_connect'), 'weft_no_such_struct'), (e: BpfError) => e.code === 'ENOENT');
  });
});
