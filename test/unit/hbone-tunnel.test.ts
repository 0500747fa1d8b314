import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { HbonePool, pipeBidirectional, type HboneConnectRequest, type HboneTunnelClosed } from '../../lib/hbone/index.ts';
import { CLIENT_ID, dialTarget, readAll, startHbone, tcpServer } from './hbone-certs.ts';
import { holds, until } from '../lab/wait.ts';

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const cleanups: Array<() => unknown> = [];
after(async () => { for (const c of cleanups.reverse()) await c(); });

/** Two ends of one loopback TCP connection (the client end half-open capable). */
async function pair(): Promise<[Socket, Socket]> {
  let accepted!: (s: Socket) => void;
  const got = new Promise<Socket>((resolve) => { accepted = resolve; });
  const srv = await tcpServer((s) => accepted(s));
  cleanups.push(() => srv.server.close());
  const c = connect({ host: '127.0.0.1', port: srv.port, allowHalfOpen: true });
  return [c, await got];
}

test('20 MB each way arrive byte-exact, and the server still replies after the client half-closes', async () => {
  const upload = randomBytes(20 * 1024 * 1024);
  const reply = randomBytes(20 * 1024 * 1024);
  let targetSaw = '';
  // The target reads until the client's FIN, then sends its reply and closes.
  const target = await tcpServer((s) => {
    const hash = createHash('sha256');
    s.on('data', (c: Buffer) => hash.update(c));
    s.on('end', () => {
      targetSaw = hash.digest('hex');
      s.end(reply);
    });
  });
  cleanups.push(() => target.server.close());
  const closed: HboneTunnelClosed[] = [];
  const hb = await startHbone({ onTunnelClosed: (c) => closed.push(c) });
  cleanups.push(() => hb.close());
  const pool = new HbonePool();
  cleanups.push(() => pool.close(100));

  const stream = await pool.connect(hb.to(`127.0.0.1:${target.port}`));
  const received = readAll(stream);
  stream.end(upload);
  const got = await received;
  assert.equal(got.length, reply.length);
  assert.equal(sha256(got), sha256(reply));
  assert.equal(targetSaw, sha256(upload));
  await new Promise((resolve) => stream.once('close', resolve));
  // The server's accounting saw both directions in full.
  for (let i = 0; i < 100 && closed.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(closed.length, 1);
  assert.equal(closed[0]?.bytesAtoB, upload.length);
  assert.equal(closed[0]?.bytesBtoA, reply.length);
  assert.equal(closed[0]?.error, undefined);
});

test('the target may half-close first while the client keeps sending', async () => {
  const target = await tcpServer((s) => {
    const chunks: Buffer[] = [];
    s.end('banner\n');
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('end', () => { lastGot = Buffer.concat(chunks).toString(); });
  });
  let lastGot = '';
  cleanups.push(() => target.server.close());
  const hb = await startHbone();
  cleanups.push(() => hb.close());
  const pool = new HbonePool();
  cleanups.push(() => pool.close(100));
  const stream = await pool.connect(hb.to(`127.0.0.1:${target.port}`));
  const banner = await readAll(stream);
  assert.equal(banner.toString(), 'banner\n');
  stream.end('still talking after your FIN');
  await new Promise((resolve) => stream.once('close', resolve));
  for (let i = 0; i < 100 && lastGot === ''; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(lastGot, 'still talking after your FIN');
});

test('the handler sees the client identity, target and forwarded headers', async () => {
  let seen: HboneConnectRequest | undefined;
  const target = await tcpServer((s) => s.end());
  cleanups.push(() => target.server.close());
  const dial = dialTarget();
  const hb = await startHbone({ handler: (req) => { seen = req; return dial(req); } });
  cleanups.push(() => hb.close());
  const pool = new HbonePool();
  cleanups.push(() => pool.close(100));
  const stream = await pool.connect(hb.to(`127.0.0.1:${target.port}`, {
    headers: { forwarded: 'for="[fd00::7]:5555"', baggage: 'k=v', 'x-not-forwarded': '1' },
  }));
  stream.end();
  await readAll(stream);
  assert.equal(seen?.peer.spiffeId, CLIENT_ID);
  assert.deepEqual(seen?.target, { host: '127.0.0.1', port: target.port, family: 4 });
  assert.deepEqual(seen?.forwardedFor, { ip: 'fd00::7', port: 5555 });
  assert.deepEqual(seen?.headers, { forwarded: 'for="[fd00::7]:5555"', baggage: 'k=v' });
});

test('a reset of the target connection resets the tunnel stream at the client', async () => {
  const target = await tcpServer((s) => { s.once('data', () => s.resetAndDestroy()); });
  cleanups.push(() => target.server.close());
  const closed: HboneTunnelClosed[] = [];
  const hb = await startHbone({ onTunnelClosed: (c) => closed.push(c) });
  cleanups.push(() => hb.close());
  const pool = new HbonePool();
  cleanups.push(() => pool.close(100));
  const stream = await pool.connect(hb.to(`127.0.0.1:${target.port}`));
  stream.on('error', () => {});
  stream.write('boom');
  await new Promise((resolve) => stream.once('close', resolve));
  // RST_STREAM, not END_STREAM: CONNECT_ERROR when our side had already ended, else INTERNAL_ERROR.
  assert.ok(stream.rstCode === 0xa || stream.rstCode === 0x2, `rstCode ${stream.rstCode}`);
  for (let i = 0; i < 100 && closed.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(closed[0]?.abortedBy, 'b');
});

test('a client that resets its stream makes the target see a TCP reset, not a FIN', async () => {
  let targetClosed!: (how: string) => void;
  const targetGone = new Promise<string>((resolve) => { targetClosed = resolve; });
  const target = await tcpServer((s) => {
    s.on('error', (err: Error & { code?: string }) => targetClosed(err.code ?? err.message));
    s.on('end', () => targetClosed('FIN'));
  });
  cleanups.push(() => target.server.close());
  const hb = await startHbone();
  cleanups.push(() => hb.close());
  const pool = new HbonePool();
  cleanups.push(() => pool.close(100));
  const stream = await pool.connect(hb.to(`127.0.0.1:${target.port}`));
  stream.write('hello');
  stream.on('error', () => {});
  stream.destroy(new Error('application crashed'));
  // RFC 9113 8.5: a reset stream becomes a TCP RST, not a FIN the target could mistake for EOF.
  assert.equal(await targetGone, 'ECONNRESET');
});

test('pipeBidirectional counts bytes, carries half-close both ways and resolves after both close', async () => {
  // a1 <-> a2 and b1 <-> b2 are socket pairs; pipe a2 <-> b1 and talk between a1 and b2.
  const [a1, a2] = await pair();
  const [b1, b2] = await pair();
  const done = pipeBidirectional(a2, b1);
  const atB = readAll(b2);
  a1.end('ping');
  assert.equal((await atB).toString(), 'ping');
  // b2 saw a FIN but can still answer, and a1 still reads it.
  const atA = readAll(a1);
  b2.end('pong');
  assert.equal((await atA).toString(), 'pong');
  const result = await done;
  assert.deepEqual(result, { bytesAtoB: 4, bytesBtoA: 4 });
});

test('a reader that stops reading pushes back to the writer instead of filling the proxy memory', async () => {
  const [a1, a2] = await pair();
  const [b1, b2] = await pair();
  const done = pipeBidirectional(a2, b1, { maxBuffered: 128 * 1024 });
  b2.pause();
  const total = 64 * 1024 * 1024;
  const block = Buffer.alloc(1024 * 1024, 7);
  for (let i = 0; i < total / block.length; i++) a1.write(block);
  // Steady state: the proxy has filled its buffer towards the paused reader and stopped reading.
  await until('the proxy has filled its buffer', () => b1.writableLength >= 128 * 1024, 10_000, { intervalMs: 20 });
  await holds('the proxy buffers no more than its limit plus one read', () => b1.writableLength <= 128 * 1024 + 64 * 1024, 200, { intervalMs: 20 });
  // The proxy holds at most its buffer plus one read; the rest waits in the sender and the kernel.
  assert.ok(b1.writableLength <= 128 * 1024 + 64 * 1024, `proxy buffered ${b1.writableLength}`);
  assert.ok(a1.writableLength > 16 * 1024 * 1024, `sender buffered only ${a1.writableLength}`);
  const received = new Promise<number>((resolve) => {
    let n = 0;
    b2.on('data', (c: Buffer) => { n += c.length; });
    b2.on('end', () => resolve(n));
  });
  b2.resume();
  a1.end();
  assert.equal(await received, total);
  b2.end();
  a1.resume();
  assert.equal((await done).bytesAtoB, total);
});

// Envoy's tcp_proxy idle_timeout: a connection with no bytes either way for the timeout is closed
// by the proxy, which says so (not a reset by either peer); bytes either way keep it open.
test('pipeBidirectional with idleTimeoutMs closes both sides after that long without bytes either way, naming no side', async () => {
  const [a1, a2] = await pair();
  const [b1, b2] = await pair();
  cleanups.push(() => { a1.destroy(); b2.destroy(); });
  // The timeout is 15 times the pacing below, so that a loaded machine's stall between two writes
  // cannot pass for idleness.
  const done = pipeBidirectional(a2, b1, { idleTimeoutMs: 1_500 });
  b2.on('data', () => {});
  a1.on('data', () => {});
  a1.on('error', () => {});
  b2.on('error', () => {});
  // Bytes one way, then the other, for longer than the timeout: kept open.
  let lastWrite = 0;
  for (let i = 0; i < 4; i++) {
    (i % 2 === 0 ? a1 : b2).write('x');
    lastWrite = Date.now();
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  let deadline: NodeJS.Timeout | undefined;
  const result = await Promise.race([done, new Promise<never>((_, reject) => { deadline = setTimeout(() => reject(new Error('the idle pipe was not closed within 10 s')), 10_000); })])
    .finally(() => clearTimeout(deadline));
  assert.equal(result.idledOut, true);
  assert.equal(result.abortedBy, undefined);
  assert.deepEqual([result.bytesAtoB, result.bytesBtoA], [2, 2]);
  // Not before the timeout after the last byte (a few ms of clock granularity aside).
  assert.ok(Date.now() - lastWrite >= 1_490, `closed ${Date.now() - lastWrite} ms after the last byte`);
});
