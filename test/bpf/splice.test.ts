// Same-node splice against a real kernel (bpf/splice.bpf.c, agent/src/splice.ts): the agent's two
// sockets of a connection go into weft_splice_socks and the kernel moves the bytes. The agent
// stand-in (fixtures/splicer.ts) runs in its own process inside a lab netns so that it can be
// stopped: a spliced connection keeps moving data while the agent is SIGSTOPped, and FIN, byte
// counts and teardown still come out right once it runs again.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, mkdirSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ChildProcess } from 'node:child_process';
import { Lab, type Netns } from '../lab/lab.ts';
import { until } from '../lab/wait.ts';
import { BpfMap, createBoundSocketInNetns, createSocketInNetns } from '../../agent/libbpf/index.ts';
import { Datapath } from '../../agent/src/datapath/index.ts';
import { SPLICE_SIZE } from '../../agent/src/datapath/codecs.ts';
import { NODE_BIN } from './datapath-lab.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
const OBJECT_DIR = resolve(HERE, '..', '..', 'build', 'bpf');
const SPLICER = join(HERE, 'fixtures', 'splicer.ts');
const AGENT_PORT = 15001;
const SERVER_PORT = 18080;

interface SplicerEvent { event: string; [k: string]: unknown }

/** The splicer's JSON lines, as they come. */
class Events {
  readonly list: SplicerEvent[] = [];
  constructor(child: ChildProcess) {
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        this.list.push(JSON.parse(buf.slice(0, i)) as SplicerEvent);
        buf = buf.slice(i + 1);
      }
    });
  }
  count(kind: string): number {
    return this.list.filter((e) => e.event === kind).length;
  }
  nth(kind: string, n: number): SplicerEvent {
    return this.list.filter((e) => e.event === kind)[n]!;
  }
}

/** Reads a socket to its end: bytes, sha256, and when the end came. */
function drain(s: net.Socket): Promise<{ bytes: number; sha: string }> {
  const h = createHash('sha256');
  let bytes = 0;
  s.on('data', (d: Buffer) => { bytes += d.length; h.update(d); });
  return once(s, 'end').then(() => ({ bytes, sha: h.digest('hex') }));
}

/** Bytes in the kernel receive queue of `s`, a socket of this process in `ns` (ss's Recv-Q). */
function recvQueue(ns: Netns, s: net.Socket): bigint {
  const out = ns.exec('ss', '-tnH', 'state', 'established', `( sport = :${s.localPort} and dport = :${s.remotePort} )`).trim();
  const fields = out.split(/\s+/);
  assert.ok(out.split('\n').length === 1 && /^\d+$/.test(fields[0] ?? ''), `ss found one socket: ${out}`);
  return BigInt(fields[0]!);
}

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

describe('same-node splice (sk_skb stream verdict on weft_splice_socks)', () => {
  let lab: Lab;
  let node: Netns;
  let dp: Datapath;
  let splicer: ChildProcess;
  let events: Events;
  let server: net.Server;
  const accepted: net.Socket[] = [];
  let stderr = '';
  let tearingDown = false;

  before(async () => {
    assert.ok(existsSync(join(OBJECT_DIR, 'splice.bpf.o')), 'run `make bpf` first');
    lab = new Lab();
    node = lab.netns('node');
    dp = Datapath.open({ pinRoot: lab.pinRoot, cgroupPath: lab.cgroupDir, objectDir: OBJECT_DIR });
    const fd = createSocketInNetns(node.path, { listen: { host: '127.0.0.1', port: SERVER_PORT } });
    server = net.createServer({ allowHalfOpen: true }, (s) => { s.on('error', () => {}); accepted.push(s); });
    await new Promise<void>((r) => server.listen({ fd }, r));
    splicer = lab.spawn(NODE_BIN, [SPLICER, lab.pinRoot, lab.cgroupDir, OBJECT_DIR, String(AGENT_PORT), String(SERVER_PORT)], { netns: node });
    splicer.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
    // The splicer ends only in after(); an earlier exit is a crash, and what it printed says why.
    splicer.once('exit', (code, signal) => { if (!tearingDown) console.error(`# the splicer exited (${code ?? signal}) mid-test:\n${stderr}`); });
    events = new Events(splicer);
    await until('the splicer listens', () => events.count('listening') === 1, 20_000, { explain: () => stderr });
  });

  after(async () => {
    tearingDown = true;
    for (const s of accepted) s.destroy();
    server?.close();
    if (splicer && splicer.exitCode === null) { splicer.kill('SIGCONT'); splicer.kill('SIGKILL'); }
    try { dp?.teardown(); } catch { /* the lab removes the pins anyway */ }
    await lab?.cleanup();
  });

  /** A client socket in the node netns, connected through the splicer; resolves with both ends. */
  async function connectPair(): Promise<{ client: net.Socket; server: net.Socket; n: number }> {
    const n = events.count('spliced');
    const before = accepted.length;
    const bound = createBoundSocketInNetns(node.path, { bind: { host: '127.0.0.1', port: 0 } });
    const client = new net.Socket({ fd: bound.fd, readable: true, writable: true, allowHalfOpen: true });
    client.on('error', () => {});
    client.connect(AGENT_PORT, '127.0.0.1');
    await once(client, 'connect');
    await until('the splicer spliced the connection', () => events.count('spliced') > n && accepted.length > before, 10_000, { explain: () => stderr });
    return { client, server: accepted[before]!, n };
  }

  test('moves data both ways while the agent is stopped (SIGSTOP), then carries FIN and counts once it runs again (SIGCONT)', async () => {
    const { client, server: srv, n } = await connectPair();
    const pair = events.nth('spliced', n).pair as { client: string; server: string };
    const listed = dp.splicedSockets().map((s) => s.cookie.toString());
    assert.ok(listed.includes(pair.client) && listed.includes(pair.server), `weft_splice_conns lists both sockets: ${listed.join(',')}`);

    splicer.kill('SIGSTOP');
    try {
      const up = randomBytes(24 * 1024 * 1024);
      const down = randomBytes(8 * 1024 * 1024);
      const h = createHash('sha256');
      let got = 0;
      srv.on('data', (d: Buffer) => { got += d.length; h.update(d); });
      const hd = createHash('sha256');
      let gotDown = 0;
      client.on('data', (d: Buffer) => { gotDown += d.length; hd.update(d); });
      // A reader that keeps up: each side writes 1 MiB at a time once the other side has read
      // what came before (a writer far ahead of its reader is handed to the agent, below).
      const pump = async (from: net.Socket, data: Buffer, progress: () => number): Promise<void> => {
        for (let off = 0; off < data.length; off += 1024 * 1024) {
          await until('the reader keeps up', () => progress() >= off - 2 * 1024 * 1024, 30_000);
          from.write(data.subarray(off, off + 1024 * 1024));
        }
      };
      await Promise.all([pump(client, up, () => got), pump(srv, down, () => gotDown)]);
      await until('24 MiB reached the server and 8 MiB the client with the agent stopped', () => got === up.length && gotDown === down.length, 60_000,
        { explain: () => `server got ${got}, client got ${gotDown}` });
      assert.equal(h.copy().digest('hex'), sha(up));
      assert.equal(hd.copy().digest('hex'), sha(down));
      const counted = dp.splicedBytes({ client: BigInt(pair.client), server: BigInt(pair.server) });
      assert.equal(counted.fromClient, BigInt(up.length), 'the kernel counted every byte from the client');
      assert.equal(counted.fromServer, BigInt(down.length), 'and every byte from the server');
      // Half-close while stopped: the FIN waits for the agent, the data did not.
      client.end();
      const srvEnd = once(srv, 'end');
      const raced = await Promise.race([srvEnd.then(() => 'end'), new Promise((r) => setTimeout(r, 300, 'waiting'))]);
      assert.equal(raced, 'waiting', 'a FIN is passed on by the agent, so not while it is stopped');
      splicer.kill('SIGCONT');
      await srvEnd;
      // The other direction still flows after the half-close.
      const tail = randomBytes(1024 * 1024);
      const clientEnd = once(client, 'end');
      srv.end(tail);
      await clientEnd;
      assert.equal(gotDown, down.length + tail.length);
      await until('the splicer reports the connection closed', () => events.count('closed') > n, 10_000, { explain: () => stderr });
      const closed = events.nth('closed', n);
      assert.equal(closed.spliced, true);
      assert.equal(closed.bytesAtoB, up.length, 'bytes to the destination, from the kernel');
      assert.equal(closed.bytesBtoA, down.length + tail.length, 'bytes to the source, from the kernel');
      assert.equal(closed.error, undefined);
      await until('weft_splice_conns forgets the pair', () => !dp.splicedSockets().some((s) => s.cookie.toString() === pair.client), 5_000);
    } finally {
      splicer.kill('SIGCONT');
    }
  });

  test('a FIN right behind a bulk write arrives after the last byte (the agent waits for the peer to take what the kernel carried)', async () => {
    for (let i = 0; i < 3; i++) {
      const { client, server: srv } = await connectPair();
      const payload = randomBytes(16 * 1024 * 1024);
      const got = drain(srv);
      client.end(payload);
      const r = await got;
      assert.equal(r.bytes, payload.length, `round ${i}: every byte before the FIN`);
      assert.equal(r.sha, sha(payload));
      srv.end('done');
      const back = await drain(client);
      assert.equal(back.bytes, 4);
    }
  });

  test('backpressure: a server that does not read stalls the client (the kernel holds at most 8 MiB for it, then hands the direction to the agent), and once it reads again the kernel takes the direction back; twice, every byte in order', async () => {
    const { client, server: srv, n } = await connectPair();
    const pair = events.nth('spliced', n).pair as { client: string };
    const entry = () => dp.splicedSockets().find((e) => e.cookie.toString() === pair.client)!;
    const sent = createHash('sha256');
    const h = createHash('sha256');
    let got = 0;
    srv.on('data', (d: Buffer) => { got += d.length; h.update(d); });
    const write = (chunk: Buffer): boolean => { sent.update(chunk); return client.write(chunk); };
    let kernelBefore = 0n;
    let gotBefore = 0;
    for (const round of [1, 2]) {
      gotBefore = got;
      srv.pause();
      let stalled = false;
      const start = client.bytesWritten;
      for (let i = 0; i < 512 && !stalled; i++) {
        if (!write(randomBytes(1024 * 1024))) {
          await Promise.race([once(client, 'drain'), new Promise((r) => setTimeout(r, 1_000))]);
          stalled = client.writableLength > 0;
        }
      }
      const taken = client.bytesWritten - client.writableLength - start;
      assert.ok(stalled, `round ${round}: the client stalled`);
      assert.ok(taken < 128 * 1024 * 1024, `round ${round}: the kernel and the agent took ${taken} bytes for a server that reads nothing`);
      const e = entry();
      assert.equal(e.flags & 1, 1, `round ${round}: the client direction went to the agent (WEFT_SPLICE_F_PASSING)`);
      assert.ok(e.handbacks >= round, `round ${round}: handed to the agent ${e.handbacks} time(s) so far`);
      // The kernel's bound is on what the server has not acknowledged (WEFT_SPLICE_MAX_INFLIGHT);
      // what it acknowledged sits in its receive queue, which autotuning grows up to tcp_rmem[2]
      // (32 MiB on kernel 6.18), or was read before the pause. One 256 KiB of slack for the skb
      // that crossed the line.
      const acked = BigInt(got - gotBefore) + recvQueue(node, srv);
      const inflight = e.bytes - kernelBefore - acked;
      assert.ok(inflight <= 8n * 1024n * 1024n + 256n * 1024n,
        `round ${round}: the kernel held ${inflight} bytes the server had not acknowledged (redirected ${e.bytes - kernelBefore}, acknowledged ${acked})`);
      // The server reads again; a sender that keeps up with it goes back to the kernel.
      srv.resume();
      await until(`round ${round}: the server read everything written`, () => client.writableLength === 0 && got === client.bytesWritten, 30_000,
        { explain: () => `got ${got} of ${client.bytesWritten}, ${client.writableLength} buffered` });
      const redirected = e.bytes;
      for (let i = 0; i < 16; i++) {
        await until('the reader keeps up', () => got >= client.bytesWritten - 2 * 1024 * 1024, 30_000);
        write(randomBytes(1024 * 1024));
      }
      await until(`round ${round}: the kernel took the direction back and carries it`, () => (entry().flags & 1) === 0 && entry().bytes > redirected, 30_000,
        { explain: () => JSON.stringify(entry(), (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)) });
      kernelBefore = entry().bytes;
    }
    const last = entry();
    assert.ok(last.passed > 0n, 'the agent carried part of the stream');
    const total = client.bytesWritten;
    const done = once(srv, 'end');
    client.end();
    await done;
    assert.equal(got, total, 'every byte arrived');
    assert.equal(h.digest('hex'), sent.digest('hex'), 'in order: the agent\'s bytes and the kernel\'s interleave as sent');
    srv.end();
    await drain(client);
    await until('the splicer reports the connection closed', () => events.count('closed') > n, 10_000, { explain: () => stderr });
    assert.equal(events.nth('closed', n).bytesAtoB, total, 'bytes to the destination: the kernel\'s and the agent\'s');
  });

  test('a sender far ahead of its reader: 100 MiB arrive unchanged (sha256) whichever of the kernel and the agent carries each part', async () => {
    const { client, server: srv, n } = await connectPair();
    const pair = events.nth('spliced', n).pair as { client: string };
    const payload = randomBytes(100 * 1024 * 1024);
    const chunks: Buffer[] = [];
    srv.on('data', (d: Buffer) => chunks.push(d));
    const got = drain(srv);
    client.end(payload);
    const r = await got;
    if (r.sha !== sha(payload)) {
      // Say where the stream went wrong and what the kernel had done by then, so that a rare
      // failure explains itself.
      const recv = Buffer.concat(chunks);
      let at = 0;
      while (at < recv.length && at < payload.length && recv[at] === payload[at]) at++;
      const extra = recv.length - payload.length;
      const repeats = extra > 0 && recv.subarray(at, at + extra).equals(payload.subarray(at - extra, at));
      const e = dp.splicedSockets().find((x) => x.cookie.toString() === pair.client);
      assert.fail(`received ${recv.length} bytes for ${payload.length}: first difference at ${at}` +
        `${repeats ? `, where the ${extra} bytes before it come again` : ''}; kernel entry ${JSON.stringify(e, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}`);
    }
    assert.equal(r.bytes, payload.length);
    srv.end();
    await drain(client);
    await until('the splicer reports the connection closed', () => events.count('closed') > n, 10_000, { explain: () => stderr });
    const closed = events.nth('closed', n);
    assert.equal(closed.spliced, true);
    assert.equal(closed.bytesAtoB, payload.length, 'the kernel\'s count and the agent\'s add up to the stream');
  });

  test('a reset on one side resets the other, and the pair leaves the maps', async () => {
    const { client, server: srv, n } = await connectPair();
    const closed = events.count('closed');
    const srvClose = new Promise<boolean>((r) => srv.once('close', r));
    client.resetAndDestroy();
    assert.equal(await srvClose, true, 'the server side was reset too (closed with an error)');
    await until('the splicer reports the connection closed', () => events.count('closed') > closed, 10_000);
    const pair = events.nth('spliced', n).pair as { client: string };
    assert.ok(!dp.splicedSockets().some((s) => s.cookie.toString() === pair.client));
  });
});

test('a weft_splice_conns pin of the old 40-byte layout is re-created at the new size when the agent opens its datapath (the rule in weft_maps.h)', async () => {
  const lab = new Lab();
  try {
    mkdirSync(lab.pinRoot, { recursive: true });
    const pin = join(lab.pinRoot, 'weft_splice_conns');
    const made = spawnSync('bpftool', ['map', 'create', pin, 'type', 'hash', 'key', '8', 'value', '40', 'entries', '32768', 'name', 'weft_splice_conns'], { encoding: 'utf8' });
    assert.equal(made.status, 0, made.stderr);
    const dp = Datapath.open({ pinRoot: lab.pinRoot, cgroupPath: lab.cgroupDir, objectDir: OBJECT_DIR });
    try {
      const m = BpfMap.openPinned(pin);
      assert.equal(m.valueSize, SPLICE_SIZE);
      m.close();
      assert.deepEqual(dp.splicedSockets(), []);
    } finally {
      dp.teardown();
    }
  } finally {
    await lab.cleanup();
  }
});
