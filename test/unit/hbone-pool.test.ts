import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { HboneConnectTimeoutError, HbonePool, HboneSessionError } from '../../lib/hbone/index.ts';
import { dialTarget, readAll, startHbone, tcpServer } from './hbone-certs.ts';

const cleanups: Array<() => unknown> = [];
after(async () => { for (const c of cleanups.reverse()) await c(); });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function echoTarget(): Promise<number> {
  const echo = await tcpServer((s) => s.pipe(s));
  cleanups.push(() => echo.server.close());
  return echo.port;
}

async function roundTrip(stream: import('node:stream').Duplex, text: string): Promise<string> {
  const got = readAll(stream);
  stream.end(text);
  return (await got).toString();
}

test('200 concurrent CONNECTs from one source share one TLS session', async () => {
  const echo = await echoTarget();
  const hb = await startHbone();
  cleanups.push(() => hb.close());
  let handshakes = 0;
  const pool = new HbonePool({ onSession: () => { handshakes++; } });
  cleanups.push(() => pool.close(100));
  const streams = await Promise.all(Array.from({ length: 200 }, () => pool.connect(hb.to(`127.0.0.1:${echo}`))));
  const replies = await Promise.all(streams.map((s, i) => roundTrip(s, `msg-${i}`)));
  replies.forEach((r, i) => assert.equal(r, `msg-${i}`));
  assert.equal(handshakes, 1);
  assert.equal(hb.server.stats().sessionsOpened, 1);
  assert.equal(hb.server.stats().tunnelsOpened, 200);
  assert.equal(pool.stats().streamsOpened, 200);
});

test('a different source identity gets its own session', async () => {
  const echo = await echoTarget();
  const hb = await startHbone();
  cleanups.push(() => hb.close());
  const pool = new HbonePool();
  cleanups.push(() => pool.close(100));
  const other = hb.ca.issue('spiffe://test.local/ns/src/sa/other');
  const a = await pool.connect(hb.to(`127.0.0.1:${echo}`));
  const b = await pool.connect(hb.to(`127.0.0.1:${echo}`, { sourceKey: other.spiffeId!, tls: other }));
  const c = await pool.connect(hb.to(`127.0.0.1:${echo}`));
  assert.deepEqual(await Promise.all([roundTrip(a, 'a'), roundTrip(b, 'b'), roundTrip(c, 'c')]), ['a', 'b', 'c']);
  assert.equal(hb.server.stats().sessionsOpened, 2);
  assert.equal(pool.stats().sessionsOpened, 2);
});

test('sessions leave from the pool\'s localAddress (an agent\'s node address, what a for= claim is checked against), for destinations of its family only', async () => {
  const echo = await echoTarget();
  const peers: string[] = [];
  const dial = dialTarget();
  const hb = await startHbone({ handler: (req) => { peers.push(req.peer.address); return dial(req); } });
  cleanups.push(() => hb.close());
  const pool = new HbonePool({ localAddress: '127.0.0.7' });
  cleanups.push(() => pool.close(100));
  assert.equal(await roundTrip(await pool.connect(hb.to(`127.0.0.1:${echo}`)), 'x'), 'x');
  assert.deepEqual(peers.map((a) => a.replace(/^::ffff:/, '')), ['127.0.0.7']);
  // An IPv6 local address is not used towards an IPv4 destination (the kernel would refuse the bind).
  const v6 = new HbonePool({ localAddress: '::1' });
  cleanups.push(() => v6.close(100));
  assert.equal(await roundTrip(await v6.connect(hb.to(`127.0.0.1:${echo}`)), 'y'), 'y');
  assert.equal(peers[1]?.replace(/^::ffff:/, ''), '127.0.0.1');
});

test('a session the server kills is replaced for new streams', async () => {
  const echo = await echoTarget();
  const hb = await startHbone();
  cleanups.push(() => hb.close());
  const pool = new HbonePool();
  cleanups.push(() => pool.close(100));
  assert.equal(await roundTrip(await pool.connect(hb.to(`127.0.0.1:${echo}`)), 'one'), 'one');
  assert.equal(hb.server.dropSessions(undefined, true), 1);
  // No waiting for the client to notice: the pool must cope whether or not it has seen the close.
  assert.equal(await roundTrip(await pool.connect(hb.to(`127.0.0.1:${echo}`)), 'two'), 'two');
  assert.equal(hb.server.stats().sessionsOpened, 2);
});

test('after a GOAWAY open tunnels finish on the old session and new ones use a fresh session', async () => {
  const echo = await echoTarget();
  const hb = await startHbone();
  cleanups.push(() => hb.close());
  const pool = new HbonePool();
  cleanups.push(() => pool.close(100));
  const old = await pool.connect(hb.to(`127.0.0.1:${echo}`));
  old.write('before ');
  const goaway = new Promise((resolve) => old.session?.once('goaway', resolve));
  hb.server.dropSessions();
  await goaway;
  const fresh = await pool.connect(hb.to(`127.0.0.1:${echo}`));
  assert.notEqual(fresh.session, old.session);
  assert.equal(await roundTrip(old, 'after'), 'before after');
  assert.equal(await roundTrip(fresh, 'new'), 'new');
  assert.equal(hb.server.stats().sessionsOpened, 2);
});

test('a tunnel hears once that its session left the pool (GOAWAY, rotation), so keep-alive users move new work', async () => {
  const echo = await echoTarget();
  const hb = await startHbone();
  cleanups.push(() => hb.close());
  const pool = new HbonePool();
  cleanups.push(() => pool.close(100));
  const heard: string[] = [];
  const a = await pool.connect({ ...hb.to(`127.0.0.1:${echo}`), onRetired: () => heard.push('a') });
  const b = await pool.connect({ ...hb.to(`127.0.0.1:${echo}`), onRetired: () => heard.push('b') });
  assert.equal(await roundTrip(b, 'b'), 'b');
  await new Promise<void>((resolve) => { if (b.closed) resolve(); else b.once('close', () => resolve()); });
  const goaway = new Promise((resolve) => a.session?.once('goaway', resolve));
  hb.server.dropSessions();
  await goaway;
  assert.deepEqual(heard, ['a'], 'only the open tunnel is told, once; a closed one is forgotten');
  assert.equal(await roundTrip(a, 'still'), 'still', 'the tunnel itself goes on');
  // A certificate rotation retires sessions the same way.
  const c = await pool.connect({ ...hb.to(`127.0.0.1:${echo}`), onRetired: () => heard.push('c') });
  pool.retire();
  assert.deepEqual(heard, ['a', 'c']);
  assert.equal(await roundTrip(c, 'c'), 'c');
});

test('an idle pooled session is closed after the idle timeout', async () => {
  const echo = await echoTarget();
  const hb = await startHbone();
  cleanups.push(() => hb.close());
  const pool = new HbonePool({ idleTimeoutMs: 250 });
  cleanups.push(() => pool.close(100));
  const s = await pool.connect(hb.to(`127.0.0.1:${echo}`));
  await roundTrip(s, 'x');
  assert.equal(pool.stats().sessionsActive, 1, 'the session outlives the stream until it has been idle');
  for (let i = 0; i < 100 && pool.stats().sessionsActive > 0; i++) await sleep(10);
  assert.equal(pool.stats().sessionsActive, 0);
  for (let i = 0; i < 100 && hb.server.stats().sessionsActive > 0; i++) await sleep(10);
  assert.equal(hb.server.stats().sessionsActive, 0);
});

test('the server closes a session that has had no streams for its idle timeout', async () => {
  const echo = await echoTarget();
  const hb = await startHbone({ idleTimeoutMs: 50 });
  cleanups.push(() => hb.close());
  const pool = new HbonePool();
  cleanups.push(() => pool.close(100));
  await roundTrip(await pool.connect(hb.to(`127.0.0.1:${echo}`)), 'x');
  for (let i = 0; i < 100 && pool.stats().sessionsActive > 0; i++) await sleep(10);
  assert.equal(pool.stats().sessionsActive, 0);
  // And the next connect simply builds a new session.
  assert.equal(await roundTrip(await pool.connect(hb.to(`127.0.0.1:${echo}`)), 'y'), 'y');
});

test('a destination that accepts TCP but never answers TLS times out with a typed error', async () => {
  const held: Socket[] = [];
  const blackhole = createServer((s) => { held.push(s); });
  await new Promise<void>((resolve) => blackhole.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => { held.forEach((s) => s.destroy()); blackhole.close(); });
  const port = (blackhole.address() as AddressInfo).port;
  const hb = await startHbone();
  cleanups.push(() => hb.close());
  const pool = new HbonePool({ connectTimeoutMs: 200 });
  cleanups.push(() => pool.close(100));
  await assert.rejects(pool.connect(hb.to('127.0.0.1:80', { dest: { host: '127.0.0.1', port } })), (err: unknown) => {
    assert.ok(err instanceof HboneConnectTimeoutError);
    assert.equal(err.code, 'WEFT_HBONE_CONNECT_TIMEOUT');
    assert.match(err.message, new RegExp(`127\\.0\\.0\\.1:${port} .*timed out after 200 ms; is port ${port} blocked`));
    return true;
  });
});

test('a destination where nothing listens fails fast with a session error', async () => {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const port = (probe.address() as AddressInfo).port;
  await new Promise((resolve) => probe.close(resolve));
  const hb = await startHbone();
  cleanups.push(() => hb.close());
  const pool = new HbonePool();
  cleanups.push(() => pool.close(100));
  await assert.rejects(pool.connect(hb.to('127.0.0.1:80', { dest: { host: '127.0.0.1', port } })), (err: unknown) =>
    err instanceof HboneSessionError && err.code === 'WEFT_HBONE_SESSION_FAILED' && /connection refused/.test(err.message));
});

test('a CONNECT the server does not answer in time is cancelled, and the handler sees the abort', async () => {
  let aborted!: () => void;
  const sawAbort = new Promise<void>((resolve) => { aborted = resolve; });
  const hb = await startHbone({
    handler: (req) => new Promise((_resolve, reject) => {
      req.signal.addEventListener('abort', () => { aborted(); reject(new Error('cancelled')); });
    }),
  });
  cleanups.push(() => hb.close());
  const pool = new HbonePool();
  cleanups.push(() => pool.close(100));
  await assert.rejects(pool.connect(hb.to('10.0.0.1:80', { timeoutMs: 300 })), HboneConnectTimeoutError);
  await sawAbort;
  // The session survives a timed-out stream.
  assert.equal(pool.stats().sessionsActive, 1);
});

test('IPv6 targets are tunnelled', async (t) => {
  const v6 = createServer({ allowHalfOpen: true }, (s) => s.pipe(s));
  const ok = await new Promise<boolean>((resolve) => {
    v6.once('error', () => resolve(false));
    v6.listen(0, '::1', () => resolve(true));
  });
  if (!ok) { t.skip('no IPv6 loopback here'); return; }
  cleanups.push(() => v6.close());
  const hb = await startHbone();
  cleanups.push(() => hb.close());
  const pool = new HbonePool();
  cleanups.push(() => pool.close(100));
  const s = await pool.connect(hb.to(`[::1]:${(v6.address() as AddressInfo).port}`));
  assert.equal(await roundTrip(s, 'six'), 'six');
});

test('connects beyond the server stream limit go to a second session instead of waiting', async () => {
  const echo = await echoTarget();
  const hb = await startHbone({ maxConcurrentStreams: 10 });
  cleanups.push(() => hb.close());
  const pool = new HbonePool({ connectTimeoutMs: 3000 });
  cleanups.push(() => pool.close(100));
  const streams = await Promise.all(Array.from({ length: 25 }, () => pool.connect(hb.to(`127.0.0.1:${echo}`))));
  assert.equal(hb.server.stats().sessionsOpened, 3);
  const replies = await Promise.all(streams.map((s, i) => roundTrip(s, `m${i}`)));
  replies.forEach((r, i) => assert.equal(r, `m${i}`));
  // Once tunnels end, new connects reuse the sessions that exist.
  await roundTrip(await pool.connect(hb.to(`127.0.0.1:${echo}`)), 'again');
  assert.equal(hb.server.stats().sessionsOpened, 3);
});
