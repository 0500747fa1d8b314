// Same-node splice against a real kernel (bpf/include/weft_splice.h, agent/src/splice.ts): a
// captured client pod's socket and the server pod's socket are filed by sockops, the agent pairs
// them once it has authorized the connection, and the sk_msg verdict moves each pod's bytes
// straight into the other's receive queue. Client and server are processes in lab pods (netns +
// cgroup, so the cgroup programs see their sockets), driven from here (fixtures/sock-ctl.ts); the
// agent stand-in (fixtures/splicer.ts) runs in its own process in the node netns so that it can be
// stopped: a spliced connection keeps moving data while the agent is SIGSTOPped, and FIN, byte
// counts and teardown still come out right once it runs again.
import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ChildProcess } from 'node:child_process';
import { Lab, type Netns } from '../lab/lab.ts';
import { until } from '../lab/wait.ts';
import { BpfMap } from '../../agent/libbpf/index.ts';
import { Datapath, formatTuple, type SplicedConnection, type SplicedSocket } from '../../agent/src/datapath/index.ts';
import { SPLICE_TRACE_PROGRAMS } from '../../agent/src/datapath/datapath.ts';
import { SPLICED_SIZE, SPLICE_F, SPLICE_R } from '../../agent/src/datapath/codecs.ts';
import { bpftoolJson, buildNode, NODE_BIN, type LabPod } from './datapath-lab.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
const OBJECT_DIR = resolve(HERE, '..', '..', 'build', 'bpf');
const SPLICER = join(HERE, 'fixtures', 'splicer.ts');
const SOCK_CTL = join(HERE, 'fixtures', 'sock-ctl.ts');
const SPLICE_READER = join(HERE, 'fixtures', 'splice-reader.py');
const URING_READER_SRC = join(HERE, 'fixtures', 'uring-splice-reader.c');
const AGENT_PORT = 15001;
const APP_PORT = 8080;
const MIB = 1024 * 1024;
/** What warmUp sends (by TCP) before a test's own bytes. */
const WARM_UP = 1024;
/** WEFT_SPLICE_MAX_QUEUED in bpf/include/weft_splice.h. */
const MAX_QUEUED = 4 * MIB;
/**
 * The bound is checked before a message is redirected, so the queue may pass it by one message:
 * tcp_bpf_sendmsg gathers at most MAX_SKB_FRAGS (17) page fragments of up to 32 KiB into one.
 */
const ONE_MESSAGE = 17 * 32 * 1024;

interface Event { event: string; [k: string]: unknown }

/** A child that prints one JSON event per line (and, for sock-ctl, takes commands on stdin). */
class Proc {
  readonly events: Event[] = [];
  stderr = '';
  readonly child: ChildProcess;
  constructor(child: ChildProcess) {
    this.child = child;
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        this.events.push(JSON.parse(buf.slice(0, i)) as Event);
        buf = buf.slice(i + 1);
      }
    });
    child.stderr!.on('data', (d: Buffer) => { this.stderr += d.toString(); });
  }
  count(kind: string): number {
    return this.events.filter((e) => e.event === kind).length;
  }
  last(kind: string): Event | undefined {
    return this.events.filter((e) => e.event === kind).at(-1);
  }
  /** Waits for the n-th (0-based) event of a kind. */
  async nth(kind: string, n = 0, timeoutMs = 20_000): Promise<Event> {
    await until(`${kind} #${n + 1}`, () => this.count(kind) > n, timeoutMs, { explain: () => `${JSON.stringify(this.events.slice(-5))}\n${this.stderr}` });
    return this.events.filter((e) => e.event === kind)[n]!;
  }
  /** Waits for the first event of a kind that `match` accepts. */
  async find(kind: string, match: (e: Event) => boolean, timeoutMs = 20_000): Promise<Event> {
    const pick = (): Event | undefined => this.events.find((e) => e.event === kind && match(e));
    await until(`${kind} (matching)`, () => pick() !== undefined, timeoutMs, { explain: () => `${JSON.stringify(this.events.slice(-5))}\n${this.stderr}` });
    return pick()!;
  }
  send(cmd: Record<string, unknown>): void {
    this.child.stdin!.write(`${JSON.stringify(cmd)}\n`);
  }
  /** One plain line on stdin (the C fixture's commands). */
  line(text: string): void {
    this.child.stdin!.write(`${text}\n`);
  }
  /** Asks for a stat and returns it. */
  async stat(): Promise<Event> {
    const n = this.count('stat');
    this.send({ op: 'stat' });
    return this.nth('stat', n);
  }
}

describe('same-node splice (sk_msg verdict on weft_splice_sk, pod sockets filed by sockops)', () => {
  let lab: Lab;
  let dp: Datapath;
  let pa: LabPod; // client pod (enrolled: its connections to the server are captured)
  let pb: LabPod; // server pod
  let node: Netns;
  let splicer: Proc;
  let tearingDown = false;
  const apps: Proc[] = [];

  before(async () => {
    assert.ok(existsSync(join(OBJECT_DIR, 'splice.bpf.o')), 'run `make bpf` first');
    lab = new Lab();
    const built = buildNode(lab, ['pa', 'pb']);
    pa = built.pods.pa!;
    pb = built.pods.pb!;
    node = built.node;
    dp = Datapath.open({ pinRoot: lab.pinRoot, cgroupPath: lab.cgroupDir, objectDir: OBJECT_DIR });
    dp.enroll({ netnsPath: pa.ns.path, podIp: pa.ip, mode: 'PERMISSIVE', agentIp: pa.gateway, agentPort: AGENT_PORT, ifname: pa.ifname });
    dp.setDestinations([{ ip: pb.ip, port: APP_PORT }]);
    dp.setSplicing(true);
    splicer = startSplicer('splice');
    await splicer.nth('listening');
  });

  // Every test's client and server go when it ends, passed or not (the next one listens again).
  afterEach(async () => {
    splicer?.child.kill('SIGCONT');
    await Promise.all(apps.splice(0).map(async (p) => {
      if (p.child.exitCode !== null || p.child.signalCode !== null) return;
      const exited = new Promise((r) => p.child.once('exit', r));
      p.child.kill('SIGKILL');
      await exited;
    }));
  });

  after(async () => {
    tearingDown = true;
    for (const p of [splicer, ...apps]) if (p && p.child.exitCode === null) { p.child.kill('SIGCONT'); p.child.kill('SIGKILL'); }
    try { dp?.teardown(); } catch { /* the lab removes the pins anyway */ }
    await lab?.cleanup();
  });

  function startSplicer(mode: 'splice' | 'pipe', listenPort = AGENT_PORT): Proc {
    const p = new Proc(lab.spawn(NODE_BIN, [SPLICER, lab.pinRoot, lab.cgroupDir, OBJECT_DIR, `${pa.gateway}:${listenPort}`, pb.ns.path, `${pb.ip}:${APP_PORT}`, mode], { netns: node }));
    // It ends only in after(); an earlier exit is a crash, and what it printed says why.
    p.child.once('exit', (code, signal) => { if (!tearingDown) console.error(`# the splicer exited (${code ?? signal}) mid-test:\n${p.stderr}`); });
    return p;
  }

  function app(pod: LabPod, args: string[]): Proc {
    const p = new Proc(lab.spawn(NODE_BIN, [SOCK_CTL, ...args], { netns: pod.ns, cgroup: pod.cgroup, stdio: ['pipe', 'pipe', 'pipe'] }));
    apps.push(p);
    return p;
  }

  /** A server in pod B and a client in pod A connected to it through the splicer. */
  function connectPair(serverFlags: string[] = []): Promise<{ client: Proc; server: Proc; spliced: Event }> {
    return connectTo(app(pb, ['server', '0.0.0.0', String(APP_PORT), ...serverFlags]));
  }

  /** A client in pod A connected through the splicer to `server`, just started in pod B. */
  async function connectTo(server: Proc): Promise<{ client: Proc; server: Proc; spliced: Event }> {
    await server.nth('listening');
    const n = splicer.count('spliced');
    const client = app(pa, ['client', pb.ip, String(APP_PORT)]);
    await client.nth('connected');
    await server.nth('accepted');
    return { client, server, spliced: await splicer.nth('spliced', n) };
  }

  /** Another server program in pod B (not sock-ctl), driven over stdin. */
  function serverProgram(cmd: string, args: string[]): Proc {
    const p = new Proc(lab.spawn(cmd, args, { netns: pb.ns, cgroup: pb.cgroup, stdio: ['pipe', 'pipe', 'pipe'] }));
    apps.push(p);
    return p;
  }

  /** The splicer's report of the connection's end. */
  function closedOf(spliced: Event, timeoutMs = 20_000): Promise<Event> {
    return splicer.find('closed', (e) => e.client === spliced.client, timeoutMs);
  }

  /** Bytes in the server pod's socket's TCP receive queue (ss's Recv-Q); -1 when not found. */
  function serverRecvQueue(): number {
    const out = spawnSync('nsenter', [`--net=${pb.ns.path}`, 'ss', '-tnH', 'state', 'established', `( sport = :${APP_PORT} )`], { encoding: 'utf8' }).stdout.trim();
    const fields = out.split(/\s+/);
    return out.split('\n').length === 1 && /^\d+$/.test(fields[0] ?? '') ? Number(fields[0]) : -1;
  }

  function connection(spliced: Event): SplicedConnection | undefined {
    return dp.splicedConnections().find((c) => c.client === spliced.client);
  }

  function filed(tuple: string): SplicedSocket | undefined {
    return dp.splicedSockets().find((s) => formatTuple(s.self) === tuple);
  }

  /**
   * One small exchange by TCP, through the agent, so that each pod has read its socket once with
   * recvmsg: the kernel redirects only to a socket it has seen read so (weft_splice_reader).
   * With an echo server both sides read; without, the server does.
   */
  async function warmUp(client: Proc, server: Proc, echo: boolean): Promise<void> {
    const sent = Number((await client.stat()).sent);
    client.send({ op: 'write', kib: WARM_UP / 1024 });
    await until('the warm-up arrived', async () => Number((echo ? await client.stat() : await server.stat()).received) >= sent + WARM_UP, 20_000);
  }

  /** The client half-closes; the server got `bytes` (or all the client sent), the client's stream in order. */
  async function endAndCheck(client: Proc, server: Proc, bytes: number | 'all', timeoutMs: number, order = 'in order'): Promise<void> {
    client.send({ op: 'end' });
    const end = await server.nth('end', 0, timeoutMs);
    const st = await client.stat();
    assert.equal(end.received, bytes === 'all' ? st.sent : bytes);
    assert.equal(end.receivedSha, st.sentSha, order);
  }

  async function closePair(client: Proc, server: Proc): Promise<void> {
    for (const p of [client, server]) {
      p.child.kill('SIGKILL');
      if (p.child.exitCode === null && p.child.signalCode === null) await new Promise((r) => p.child.once('exit', r));
    }
  }

  test('pairs only the two pod sockets of an authorized connection: the client\'s, filed when it connected to its agent, and the server\'s, filed because the agent announced its delivery address', async () => {
    const { client, server, spliced } = await connectPair();
    const conn = connection(spliced);
    assert.ok(conn, `listed: ${JSON.stringify(dp.splicedConnections(), (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}`);
    assert.match(conn.client, new RegExp(`^${pa.ip.replaceAll('.', '\\.')}:\\d+->${pa.gateway.replaceAll('.', '\\.')}:${AGENT_PORT}$`), 'the client pod\'s own socket, to its agent');
    assert.match(conn.server, new RegExp(`^${pb.ip.replaceAll('.', '\\.')}:${APP_PORT}->${pb.ip.replaceAll('.', '\\.')}:\\d+$`), 'the server pod\'s own socket, from the agent\'s delivery address');
    assert.equal(conn.clientNetnsCookie > 0n, true);
    const c = filed(conn.client)!;
    assert.equal(c.flags & (SPLICE_F.PAIRED | SPLICE_F.CLIENT), SPLICE_F.PAIRED | SPLICE_F.CLIENT);
    assert.equal(filed(conn.server)!.flags & SPLICE_F.PAIRED, SPLICE_F.PAIRED);
    // Nothing else in either pod, nor the agent's own sockets, was filed.
    assert.deepEqual(dp.splicedSockets().map((s) => formatTuple(s.self)).sort(), [conn.client, conn.server].sort());
    await closePair(client, server);
    await until('the pair leaves weft_spliced once the connection is over', () => !filed(conn.client) && !filed(conn.server), 10_000);
  });

  test('moves data both ways while the agent is stopped (SIGSTOP), then carries FIN and counts once it runs again (SIGCONT)', async () => {
    const { client, server, spliced } = await connectPair(['--echo']);
    await warmUp(client, server, true);
    splicer.child.kill('SIGSTOP');
    try {
      client.send({ op: 'write', mib: 24, keepUp: true });
      await client.nth('written', 1, 60_000);
      await until('the echo of 24 MiB came back with the agent stopped', async () => (await client.stat()).received === 24 * MIB + WARM_UP, 60_000,
        { explain: () => JSON.stringify(client.last('stat')) });
      const st = await client.stat();
      assert.equal(st.receivedSha, st.sentSha, 'the echo is the stream, in order');
      const conn = connection(spliced)!;
      assert.equal(conn.bytesFromClient, BigInt(24 * MIB), 'the kernel carried every byte from the client');
      assert.equal(conn.bytesFromServer, BigInt(24 * MIB), 'and every byte from the server');
      assert.equal(conn.passedFromClient + conn.passedFromServer, BigInt(2 * WARM_UP), 'only the warm-up went by TCP');
      assert.equal(conn.reads.client & conn.reads.server & SPLICE_R.RECVMSG, SPLICE_R.RECVMSG, 'both pods were seen reading with recvmsg');
      // A half-close goes by TCP through the agent: not while it is stopped.
      client.send({ op: 'end' });
      const ended = await Promise.race([server.nth('end', 0, 60_000).then(() => 'end'), new Promise((r) => setTimeout(r, 300, 'waiting'))]);
      assert.equal(ended, 'waiting', 'the FIN waits for the agent');
      splicer.child.kill('SIGCONT');
      const end = await server.nth('end', 0);
      assert.equal(end.received, 24 * MIB + WARM_UP, 'every byte before the FIN');
      const back = await client.nth('end', 0);
      assert.equal(back.received, 24 * MIB + WARM_UP);
      const closed = await closedOf(spliced);
      assert.equal(closed.spliced, true);
      assert.equal(closed.bytesAtoB, 24 * MIB + WARM_UP, 'bytes to the destination, from the kernel and the agent');
      assert.equal(closed.bytesBtoA, 24 * MIB + WARM_UP, 'bytes to the source, from the kernel and the agent');
      assert.equal(closed.error, undefined);
      await until('weft_spliced forgets the pair', () => !filed(String(spliced.client)), 10_000);
    } finally {
      splicer.child.kill('SIGCONT');
      await closePair(client, server);
    }
  });

  test('bytes the client sent before the pair was made arrive first: the kernel redirects only once the server has read every byte that came by TCP (the order rule)', async () => {
    // The server reads nothing at first, and the agent accepts only after the client has written.
    const server = app(pb, ['server', '0.0.0.0', String(APP_PORT), '--paused']);
    await server.nth('listening');
    splicer.child.kill('SIGSTOP');
    const n = splicer.count('spliced');
    const client = app(pa, ['client', pb.ip, String(APP_PORT)]);
    await client.nth('connected');
    // What the connection holds before anyone reads it: the client's send buffer and the agent's
    // receive buffer, both at their starting sizes.
    client.send({ op: 'write', kib: 64 });
    await client.nth('written');
    splicer.child.kill('SIGCONT');
    const spliced = await splicer.nth('spliced', n);
    await server.nth('accepted');
    await until('the agent delivered the first 64 KiB to the server\'s TCP receive queue', () => serverRecvQueue() === 64 * 1024, 10_000,
      { explain: () => `Recv-Q ${serverRecvQueue()}` });
    // Paired now, and the server has not read what came by TCP: these go by TCP too, behind it.
    client.send({ op: 'write', mib: 6 });
    await until('the client\'s bytes went by TCP while the server had not read the first ones', () => (connection(spliced)?.passedFromClient ?? 0n) > 0n, 10_000);
    server.send({ op: 'resume' });
    await client.nth('written', 1, 60_000);
    await until('the server read everything sent so far', async () => (await server.stat()).received === (await client.stat()).sent, 60_000);
    // The server caught up: what the client sends now, the kernel carries.
    const kernelBefore = connection(spliced)!.bytesFromClient;
    client.send({ op: 'write', mib: 2, keepUp: false });
    await client.nth('written', 2, 60_000);
    await endAndCheck(client, server, 8 * MIB + 64 * 1024, 60_000, 'in order: what came by TCP first, then the kernel\'s');
    const conn = connection(spliced)!;
    assert.ok(conn.bytesFromClient > kernelBefore, `the kernel carried the stream once the server caught up (${conn.bytesFromClient} bytes)`);
    server.send({ op: 'end' });
    const closed = await closedOf(spliced);
    assert.equal(closed.bytesAtoB, 8 * MIB + 64 * 1024, 'the kernel\'s count and the agent\'s add up to the stream');
  });

  test('backpressure: a server that does not read stalls the client with at most 4 MiB queued for it by the kernel; once it reads again the kernel carries the direction again; twice, every byte in order', async () => {
    const { client, server, spliced } = await connectPair();
    await warmUp(client, server, false);
    server.send({ op: 'pause' });
    await server.nth('paused', 0);
    let writes = 1;
    for (const round of [1, 2]) {
      const before = connection(spliced)!;
      const receivedBefore = Number((await server.stat()).received);
      // Far more than the kernel, TCP and the agent hold for a reader that reads nothing.
      client.send({ op: 'write', mib: 256 });
      writes++;
      let sentLast = -1;
      await until(`round ${round}: the client stalls`, async () => {
        const st = await client.stat();
        const stalled = Number(st.writableLength) > 0 && st.sent === sentLast;
        sentLast = Number(st.sent);
        return stalled;
      }, 30_000, { intervalMs: 300 });
      const conn = connection(spliced)!;
      const redirected = conn.bytesFromClient - before.bytesFromClient;
      const st = await client.stat();
      const taken = Number(st.sent) - Number(st.writableLength) - receivedBefore;
      assert.ok(taken < 128 * MIB, `round ${round}: the kernel, TCP and the agent took ${taken} bytes for a server that reads nothing`);
      assert.ok(redirected <= BigInt(MAX_QUEUED + ONE_MESSAGE), `round ${round}: the kernel queued ${redirected} bytes for the server (bound ${MAX_QUEUED} plus one message)`);
      assert.ok(conn.passedFromClient > before.passedFromClient, `round ${round}: past the bound the stream went by TCP, through the agent`);
      assert.ok(conn.fallbacks.fromClient >= round, `round ${round}: ${conn.fallbacks.fromClient} fallback(s) so far`);
      assert.equal(Number((await server.stat()).received), receivedBefore, 'the server read nothing meanwhile');
      server.send({ op: 'resume' });
      await until(`round ${round}: the server read everything written`, async () => (await server.stat()).received === (await client.stat()).sent, 60_000);
      await client.nth('written', writes - 1, 60_000);
      // A writer that keeps up with its reader goes back to the kernel.
      const kernelBefore = connection(spliced)!.bytesFromClient;
      client.send({ op: 'write', mib: 8, keepUp: false });
      writes++;
      await client.nth('written', writes - 1, 60_000);
      await until(`round ${round}: the kernel carries the direction again`, () => connection(spliced)!.bytesFromClient > kernelBefore, 30_000,
        { explain: () => JSON.stringify(connection(spliced), (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)) });
      await until('the server read the rest', async () => (await server.stat()).received === (await client.stat()).sent, 60_000);
      server.send({ op: 'pause' });
      await server.nth('paused', round);
    }
    server.send({ op: 'resume' });
    await endAndCheck(client, server, 'all', 60_000, 'in order: the agent\'s bytes and the kernel\'s interleave as sent');
    await closePair(client, server);
  });

  test('bytes the kernel queued for a reader that has not read them yet survive the connection\'s end: the agent forgets the pair, the socket keeps its queue', async () => {
    const server = app(pb, ['server', '0.0.0.0', String(APP_PORT), '--echo']);
    await server.nth('listening');
    const n = splicer.count('spliced');
    const client = app(pa, ['client', pb.ip, String(APP_PORT)]);
    await client.nth('connected');
    const spliced = await splicer.nth('spliced', n);
    await warmUp(client, server, true);
    // The client reads nothing more until the agent is done with the connection.
    client.send({ op: 'pause' });
    await client.nth('paused');
    client.send({ op: 'write', mib: 1 });
    await client.nth('written', 1);
    client.send({ op: 'end' });
    await server.nth('end');
    // The echo went into the client's queue; the server's FIN went through the agent, which ended
    // both sides and forgot the pair.
    const closed = await closedOf(spliced);
    assert.equal(closed.bytesBtoA, MIB + WARM_UP);
    await until('the pair left weft_spliced', () => !filed(String(spliced.client)), 10_000);
    client.send({ op: 'resume' });
    const end = await client.nth('end', 0, 20_000);
    const st = await client.stat();
    assert.equal(end.received, MIB + WARM_UP, 'the whole echo, read after the agent let go');
    assert.equal(end.receivedSha, st.sentSha);
  });

  test('a sender far ahead of its reader: 100 MiB arrive unchanged (sha256) whichever of the kernel and the agent carries each part', async () => {
    const { client, server, spliced } = await connectPair();
    client.send({ op: 'write', mib: 100 });
    await client.nth('written', 0, 120_000);
    await endAndCheck(client, server, 100 * MIB, 120_000);
    server.send({ op: 'end' });
    const closed = await closedOf(spliced);
    assert.equal(closed.spliced, true);
    assert.equal(closed.bytesAtoB, 100 * MIB, 'the kernel\'s count and the agent\'s add up to the stream');
    await closePair(client, server);
  });

  test('a reset on one side resets the other, and the pair leaves the maps', async () => {
    const { client, server, spliced } = await connectPair();
    client.send({ op: 'write', mib: 1 });
    await until('the server got the first MiB', async () => (await server.stat()).received === MIB, 20_000);
    client.send({ op: 'reset' });
    const closeEvent = await server.nth('close', 0);
    assert.equal(closeEvent.hadError, true, 'the server side was reset too (closed with an error)');
    await closedOf(spliced);
    await until('the pair left weft_spliced', () => !filed(String(spliced.client)) && !filed(String(spliced.server)), 10_000);
    await closePair(client, server);
  });

  /** A server pod that reads with splice(2) (fixtures/splice-reader.py), and a client through the splicer. */
  function connectSpliceReader(): Promise<{ client: Proc; server: Proc; spliced: Event }> {
    return connectTo(serverProgram('python3', [SPLICE_READER, '0.0.0.0', String(APP_PORT)]));
  }

  // Readers: redirected bytes land on the psock queue, which splice(2) (tcp_splice_read) never
  // reads. Go's io.Copy between two TCP connections and HAProxy's splicing read so.
  test('readers: a server that reads with splice(2) from its first byte gets the whole stream by TCP, also what came before its first read; the kernel never redirects to it, and counts it (splice_reader_splice)', async () => {
    const counted = dp.counters().splice_reader_splice;
    const { client, server, spliced } = await connectSpliceReader();
    // Sent before the server reads at all: a socket not yet seen reading with recvmsg gets
    // nothing redirected (it might be a splice(2) reader, as this one is).
    client.send({ op: 'write', mib: 8 });
    await until('the first bytes went by TCP', () => (connection(spliced)?.passedFromClient ?? 0n) > 0n, 20_000);
    server.send({ op: 'splice' });
    await client.nth('written', 0, 60_000);
    await endAndCheck(client, server, 8 * MIB, 60_000);
    const conn = connection(spliced)!;
    assert.equal(conn.bytesFromClient, 0n, 'nothing was redirected to a splice(2) reader');
    assert.equal(conn.reads.server & (SPLICE_R.SPLICE | SPLICE_R.RECVMSG), SPLICE_R.SPLICE, 'seen reading with splice(2), never with recvmsg');
    assert.equal(dp.counters().splice_reader_splice, counted + 1, 'counted once');
    server.child.kill(); // its socket closes: the agent ends the connection
    const closed = await closedOf(spliced);
    assert.equal(closed.bytesAtoB, 8 * MIB, 'the agent carried it');
    assert.equal(closed.stranded, false);
  });

  test('readers: a server that reads with recv(2), then turns to splice(2) before more comes, gets the rest by TCP (without the splice(2) mark the kernel would redirect to it)', async () => {
    const { client, server, spliced } = await connectSpliceReader();
    const fionread = dp.counters().splice_reader_fionread;
    client.send({ op: 'write', kib: WARM_UP / 1024 });
    server.send({ op: 'recv', bytes: WARM_UP });
    await server.nth('recv');
    // FIONREAD on a socket in the sockhash counts only redirected bytes (tcp_bpf_ioctl): the kernel
    // marks and counts the socket that asks, for the operator (weftctl bpf).
    server.send({ op: 'fionread' });
    await server.nth('fionread');
    assert.ok((filed(String(spliced.server))!.reads & SPLICE_R.FIONREAD) !== 0, 'marked as asking FIONREAD');
    assert.equal(dp.counters().splice_reader_fionread, fionread + 1, 'counted once');
    server.send({ op: 'splice' });
    const serverSocket = String(spliced.server);
    await until('the kernel saw the server read with splice(2)', () => ((filed(serverSocket)?.reads ?? 0) & SPLICE_R.SPLICE) !== 0, 20_000);
    assert.ok((filed(serverSocket)!.reads & SPLICE_R.RECVMSG) !== 0, 'and with recv(2) before');
    client.send({ op: 'write', mib: 8 });
    await client.nth('written', 1, 60_000);
    await endAndCheck(client, server, 8 * MIB + WARM_UP, 60_000);
    assert.equal(connection(spliced)!.bytesFromClient, 0n, 'nothing was redirected to it');
  });

  test('readers: a server that reads with recv(2), then with io_uring\'s IORING_OP_SPLICE (no splice(2) syscall), gets the rest by TCP', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'weft-uring-'));
    try {
      const bin = join(dir, 'uring-splice-reader');
      const cc = spawnSync('cc', ['-O2', '-Wall', '-Werror', '-o', bin, URING_READER_SRC], { encoding: 'utf8' });
      assert.equal(cc.status, 0, `cc: ${cc.stderr}`);
      const received = join(dir, 'received');
      const { client, server, spliced } = await connectTo(serverProgram(bin, ['0.0.0.0', String(APP_PORT), received]));
      client.send({ op: 'write', kib: WARM_UP / 1024 });
      server.line(`recv ${WARM_UP}`);
      await server.nth('recv');
      server.line('splice');
      await until('the kernel saw the server read with io_uring\'s splice', () => ((filed(String(spliced.server))?.reads ?? 0) & SPLICE_R.SPLICE) !== 0, 20_000);
      client.send({ op: 'write', mib: 8 });
      await client.nth('written', 1, 60_000);
      client.send({ op: 'end' });
      const end = await server.nth('end', 0, 60_000);
      assert.equal(end.received, 8 * MIB + WARM_UP);
      assert.equal(createHash('sha256').update(readFileSync(received)).digest('hex'), (await client.stat()).sentSha, 'the stream, in order');
      assert.equal(connection(spliced)!.bytesFromClient, 0n, 'nothing was redirected to it');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('readers: a server that turns to splice(2) while redirected bytes wait unread for it is reset, with its client, rather than left waiting (splice_stranded)', async () => {
    const counted = dp.counters().splice_stranded;
    const { client, server, spliced } = await connectSpliceReader();
    client.send({ op: 'write', kib: WARM_UP / 1024 });
    server.send({ op: 'recv', bytes: WARM_UP });
    await server.nth('recv');
    // The server has read with recv(2) and everything sent by TCP: the kernel redirects now.
    client.send({ op: 'write', kib: 64 });
    await until('the kernel queued the next 64 KiB for the server', () => (connection(spliced)?.bytesFromClient ?? 0n) === 64n * 1024n, 20_000,
      { explain: () => JSON.stringify(connection(spliced), (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)) });
    server.send({ op: 'splice' });
    const err = await server.nth('error', 0, 20_000);
    assert.equal(err.code, 'ECONNRESET', 'the server\'s splice(2) fails instead of waiting');
    assert.equal(err.received, WARM_UP);
    const closed = await closedOf(spliced);
    assert.equal(closed.stranded, true, 'the agent reset it because the kernel reported it');
    await client.find('error', (e) => e.code === 'ECONNRESET' || e.code === 'EPIPE');
    assert.equal(dp.counters().splice_stranded, counted + 1, 'counted once');
  });

  test('a restarted agent moves the readers\' tracepoints to its own programs: one link each, none left on the programs of the agent that exited', () => {
    const links = (): Array<{ prog_id: number }> => bpftoolJson<Array<{ prog_id: number }>>('link', 'show');
    const own = (d: Datapath): Map<string, number> => new Map(d.programs().filter((p) => (SPLICE_TRACE_PROGRAMS as readonly string[]).includes(p.name)).map((p) => [p.name, p.id]));
    // An agent that spliced and exited: its links live on in their pins only.
    const exited = Datapath.open({ pinRoot: lab.pinRoot, cgroupPath: lab.cgroupDir, objectDir: OBJECT_DIR });
    exited.setSplicing(true);
    const before = own(exited);
    exited.close();
    const next = Datapath.open({ pinRoot: lab.pinRoot, cgroupPath: lab.cgroupDir, objectDir: OBJECT_DIR });
    try {
      next.setSplicing(true);
      const after = own(next);
      const ids = links().map((l) => l.prog_id);
      for (const name of SPLICE_TRACE_PROGRAMS) {
        assert.equal(ids.filter((id) => id === after.get(name)).length, 1, `${name}: one link, on the new agent's program`);
        assert.equal(ids.filter((id) => id === before.get(name)).length, 0, `${name}: none left on the exited agent's`);
      }
    } finally {
      next.close(); // its links stay pinned, as a running agent's do
    }
  });

  test('a connection the agent does not splice goes back to plain TCP (its client socket leaves the maps), and with splicing off nothing is filed at all', async () => {
    const pipeSplicer = startSplicer('pipe', AGENT_PORT + 1);
    try {
      await pipeSplicer.nth('listening');
      dp.enroll({ netnsPath: pa.ns.path, podIp: pa.ip, mode: 'PERMISSIVE', agentIp: pa.gateway, agentPort: AGENT_PORT + 1, ifname: pa.ifname });
      const server = app(pb, ['server', '0.0.0.0', String(APP_PORT)]);
      await server.nth('listening');
      const client = app(pa, ['client', pb.ip, String(APP_PORT)]);
      const piped = await pipeSplicer.nth('piped');
      assert.equal(filed(String(piped.client)), undefined, 'the client socket was returned to TCP');
      client.send({ op: 'write', mib: 4 });
      await client.nth('written');
      client.send({ op: 'end' });
      const end = await server.nth('end', 0, 30_000);
      assert.equal(end.received, 4 * MIB);
      assert.equal(dp.splicedSockets().length, 0, 'no pod socket is filed');
      await closePair(client, server);

      const tracePins = SPLICE_TRACE_PROGRAMS.map((p) => join(lab.pinRoot, 'links', p));
      assert.deepEqual(tracePins.filter((p) => !existsSync(p)), [], 'splicing on: the readers\' tracepoint programs are attached (pinned)');
      dp.setSplicing(false);
      assert.deepEqual(tracePins.filter((p) => existsSync(p)), [], 'splicing off: and gone, they ran on every recvmsg of the node');
      const server2 = app(pb, ['server', '0.0.0.0', String(APP_PORT)]);
      await server2.nth('listening');
      const client2 = app(pa, ['client', pb.ip, String(APP_PORT)]);
      await client2.nth('connected');
      await server2.nth('accepted');
      assert.equal(dp.splicedSockets().length, 0, 'splicing off: sockops filed nothing');
      await closePair(client2, server2);
    } finally {
      dp.setSplicing(true);
      dp.enroll({ netnsPath: pa.ns.path, podIp: pa.ip, mode: 'PERMISSIVE', agentIp: pa.gateway, agentPort: AGENT_PORT, ifname: pa.ifname });
      pipeSplicer.child.kill('SIGKILL');
    }
  });
});

test('a weft_spliced pin of another layout is re-created when the agent opens its datapath, and the retired sk_skb splice maps are removed (the rule in weft_maps.h)', async () => {
  const lab = new Lab();
  try {
    mkdirSync(lab.pinRoot, { recursive: true });
    const pin = join(lab.pinRoot, 'weft_spliced');
    const old = join(lab.pinRoot, 'weft_splice_conns');
    for (const [path, name] of [[pin, 'weft_spliced'], [old, 'weft_splice_conns']]) {
      const made = spawnSync('bpftool', ['map', 'create', path!, 'type', 'hash', 'key', '12', 'value', '56', 'entries', '32768', 'name', name!], { encoding: 'utf8' });
      assert.equal(made.status, 0, made.stderr);
    }
    const dp = Datapath.open({ pinRoot: lab.pinRoot, cgroupPath: lab.cgroupDir, objectDir: OBJECT_DIR });
    try {
      const m = BpfMap.openPinned(pin);
      assert.equal(m.valueSize, SPLICED_SIZE);
      m.close();
      assert.equal(existsSync(old), false, 'the retired map\'s pin is gone');
      assert.deepEqual(dp.splicedSockets(), []);
    } finally {
      dp.teardown();
    }
  } finally {
    await lab.cleanup();
  }
});
