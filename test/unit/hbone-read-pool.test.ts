// The read pool (lib/hbone/read-pool.ts): sockets the tunnel pipe carries read into one shared
// buffer and pooled chunks. What must hold: every byte arrives, in order, on its own connection
// only, while chunks are reused between connections; the pipe's half-close, reset and
// backpressure behave as on any socket; and a socket that was read already is left alone.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { once } from 'node:events';
import { adoptWithPooledReads, pipeBidirectional, pooledReads, readPoolStats, type PipeResult } from '../../lib/hbone/index.ts';
import { isPooledChunk, releaseChunk } from '../../lib/hbone/read-pool.ts';
import { until } from '../lab/wait.ts';

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const cleanups: Array<() => unknown> = [];
after(async () => { for (const c of cleanups.reverse()) await c(); });

async function listen(server: net.Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise((resolve) => server.close(resolve)));
  return (server.address() as net.AddressInfo).port;
}

/**
 * A relay like the agent's: accepts paused, adopts the socket into the pool, connects to `target`
 * through the pool, and pipes the two. Resolves each connection's pipe result in `results`.
 */
async function relay(target: number): Promise<{ port: number; results: Promise<PipeResult>[]; adopted: net.Socket[]; server: net.Server }> {
  const results: Promise<PipeResult>[] = [];
  const adopted: net.Socket[] = [];
  const server = net.createServer({ pauseOnConnect: true }, (accepted) => {
    const a = adoptWithPooledReads(accepted);
    adopted.push(a);
    const b: net.Socket = net.connect({ port: target, host: '127.0.0.1', onread: pooledReads(() => b) });
    results.push(pipeBidirectional(a, b));
    a.resume();
  });
  return { port: await listen(server), results, adopted, server };
}

/** Reads a socket to its end; `slow` pauses it now and then so the relay has to hold back. */
async function readAll(s: net.Socket, slow = false): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  s.on('data', (c: Buffer) => {
    parts.push(c);
    n++;
    if (slow && n % 8 === 0) { s.pause(); setTimeout(() => s.resume(), 2); }
  });
  await once(s, 'end');
  return Buffer.concat(parts);
}

test('many connections at once through pooled reads each get exactly their own bytes back, while chunks are reused between them', async () => {
  const echo = await listen(net.createServer((s) => s.pipe(s)));
  const r = await relay(echo);
  const before = readPoolStats();
  const payloads = Array.from({ length: 8 }, () => randomBytes(6 * 1024 * 1024));
  const got = await Promise.all(payloads.map(async (p, i) => {
    const c = net.connect(r.port, '127.0.0.1');
    await once(c, 'connect');
    const back = readAll(c, i % 2 === 0);
    // Writes of varied sizes: whole reads, half reads and small ones all pass the copy-out.
    for (let off = 0; off < p.length;) {
      const len = [65536, 1000, 40000, 7][off % 4] ?? 65536;
      c.write(p.subarray(off, off + len));
      off += len;
    }
    c.end();
    const b = await back;
    c.destroy();
    return b;
  }));
  for (const [i, p] of payloads.entries()) {
    assert.equal(got[i]!.length, p.length, `connection ${i}: length`);
    assert.equal(sha256(got[i]!), sha256(p), `connection ${i}: bytes`);
  }
  const results = await Promise.all(r.results);
  for (const res of results) {
    assert.equal(res.error, undefined);
    assert.equal(res.bytesAtoB, res.bytesBtoA);
  }
  const after_ = readPoolStats();
  assert.ok(after_.pooled > before.pooled, 'large reads went into pooled chunks');
  assert.ok(after_.reused > before.reused, 'released chunks were reused');
  // Every chunk the pipes wrote came back: none is still lent once the connections are closed.
  assert.equal(after_.pooled - before.pooled, after_.released - before.released);
});

test('pooled reads carry a half-close each way, and a reset as a reset (as pipeBidirectional does for any socket)', async () => {
  // The target answers after the client's FIN and then closes: the reply must still pass.
  const target = await listen(net.createServer((s) => {
    s.allowHalfOpen = true;
    const got: Buffer[] = [];
    s.on('data', (c: Buffer) => got.push(c));
    s.on('end', () => s.end(Buffer.concat([Buffer.from('got:'), ...got])));
  }));
  const r = await relay(target);
  const c = net.connect({ port: r.port, host: '127.0.0.1', allowHalfOpen: true });
  await once(c, 'connect');
  const reply = readAll(c);
  c.end('hello');
  assert.equal((await reply).toString(), 'got:hello');
  c.destroy();
  const res = await r.results[0]!;
  assert.equal(res.error, undefined);
  assert.equal(res.bytesAtoB, 5);

  // A reset of the target reaches the client as a reset, not as an orderly end.
  const resetter = await listen(net.createServer((s) => { s.once('data', () => s.resetAndDestroy()); }));
  const r2 = await relay(resetter);
  const c2 = net.connect(r2.port, '127.0.0.1');
  c2.write('x');
  const [err] = await once(c2, 'error') as [NodeJS.ErrnoException];
  assert.equal(err.code, 'ECONNRESET');
  const res2 = await r2.results[0]!;
  assert.equal(res2.abortedBy, 'b');
});

test('only a socket nothing has read is adopted, and its server keeps counting the connection until it closes', async () => {
  const server = net.createServer({ pauseOnConnect: true });
  const port = await listen(server);
  const accepted: net.Socket[] = [];
  server.on('connection', (s) => accepted.push(s));
  const c1 = net.connect(port, '127.0.0.1');
  cleanups.push(() => c1.destroy());
  await until('the first connection accepted', () => accepted.length === 1, 5_000);
  const a = adoptWithPooledReads(accepted[0]!);
  assert.notEqual(a, accepted[0], 'a paused, unread socket is adopted');
  assert.ok(accepted[0]!.destroyed, 'the accepted object is retired');
  // The connection itself lives on in the adopted socket.
  a.resume();
  c1.write('ping');
  const [chunk] = await once(a, 'data') as [Buffer];
  assert.equal(chunk.toString(), 'ping');
  assert.equal(isPooledChunk(chunk), false, 'a small read is copied into a buffer of its own');
  a.write('pong');
  const [back] = await once(c1, 'data') as [Buffer];
  assert.equal(back.toString(), 'pong');

  // Flowing (it has been read): left as it is.
  const c2 = net.connect(port, '127.0.0.1');
  cleanups.push(() => c2.destroy());
  await until('the second connection accepted', () => accepted.length === 2, 5_000);
  const flowing = accepted[1]!;
  flowing.resume();
  assert.equal(adoptWithPooledReads(flowing), flowing);
  flowing.destroy();
  await once(flowing, 'close');
  // The server still counts the adopted connection: close() waits for it (an agent's drain relies
  // on that), and getConnections() sees it until it closes.
  const count = (): Promise<number> => new Promise((resolve, reject) => server.getConnections((err, n) => (err ? reject(err) : resolve(n))));
  assert.equal(await count(), 1, 'the adopted connection, not the retired object, is counted');
  let serverClosed = false;
  const closing = new Promise<void>((resolve) => server.close(() => { serverClosed = true; resolve(); }));
  a.write('still here');
  const [again] = await once(c1, 'data') as [Buffer];
  assert.equal(again.toString(), 'still here');
  assert.equal(serverClosed, false, 'the server waits for the adopted connection');
  a.destroy();
  await closing;
  assert.equal(await count(), 0);
});

test('a read is never held in a chunk more than twice its size, so a slow peer cannot make the pipe hold more than twice what it buffers', async () => {
  const server = net.createServer({ pauseOnConnect: true });
  const port = await listen(server);
  const [accepted] = await Promise.all([
    once(server, 'connection') as Promise<[net.Socket]>,
    (async () => {
      const c = net.connect(port, '127.0.0.1');
      cleanups.push(() => c.destroy());
      await once(c, 'connect');
      // Let the receive queue fill before the first read, then keep it full: reads of every size.
      c.write(randomBytes(4 * 1024 * 1024));
      for (const n of [100, 20_000, 40_000, 70_000, 150_000, 300_000]) c.write(randomBytes(n));
      c.end();
    })(),
  ]);
  const a = adoptWithPooledReads(accepted[0]);
  const sizes: Array<[number, number, boolean]> = [];
  a.on('data', (chunk: Buffer) => {
    const pooled = isPooledChunk(chunk);
    sizes.push([chunk.length, chunk.buffer.byteLength, pooled]);
    if (pooled) releaseChunk(chunk);
  });
  a.resume();
  await once(a, 'end');
  a.destroy();
  assert.ok(sizes.some(([, , pooled]) => pooled), 'some reads went into pooled chunks');
  for (const [n, cap, pooled] of sizes) {
    if (pooled) assert.ok(cap <= 2 * n, `a read of ${n} bytes sits in a chunk of ${cap}`);
    else assert.ok(n < 32 * 1024, `a read of ${n} bytes was copied into its own buffer`);
    assert.ok(n <= 256 * 1024, `no read is larger than the shared buffer (${n})`);
  }
});

test('a chunk goes back to the pool once, and only a chunk the pool lent', () => {
  const own = Buffer.alloc(READ_SIZE);
  releaseChunk(own);
  assert.equal(isPooledChunk(own), false);
  const before = readPoolStats();
  releaseChunk(own);
  assert.deepEqual(readPoolStats(), before, 'releasing a buffer the pool never lent changes nothing');
});

const READ_SIZE = 64 * 1024;
