// A hostile or broken HBONE destination (a compromised node agent, waypoint or east-west gateway)
// against the pool that carries the caller's tunnels: whatever it does, the caller gets a clean,
// named failure within its connect timeout, the pool counts it, and the pool's sessions stay
// bounded by the connects in flight (none left behind for a destination that takes no streams).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createSecureServer, constants as h2, type SecureServerOptions } from 'node:http2';
import { createServer as createTlsServer } from 'node:tls';
import { connect as netConnect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { HbonePool, type HboneConnectOptions } from '../../lib/hbone/index.ts';
import { createTestCa, CLIENT_ID, SERVER_ID } from './hbone-certs.ts';
import { holds, until } from '../lab/wait.ts';

const cleanups: Array<() => unknown> = [];
after(async () => { for (const c of cleanups.reverse()) await c(); });

const ca = createTestCa();
const serverLeaf = ca.issue(SERVER_ID);
const clientLeaf = ca.issue(CLIENT_ID);
const serverTls = { key: serverLeaf.key, cert: serverLeaf.cert, ca: ca.cert, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' as const };

function connectOpts(port: number, timeoutMs = 2_000): HboneConnectOptions {
  return { sourceKey: CLIENT_ID, tls: clientLeaf, dest: { host: '127.0.0.1', port }, target: '10.0.0.1:80', expectPeer: SERVER_ID, timeoutMs };
}

/** A node:http2 mTLS server with `settings` and `onStream`; counts its sessions. */
async function h2Server(settings: SecureServerOptions['settings'], onStream: (s: import('node:http2').ServerHttp2Stream) => void): Promise<{ port: number; sessions: () => number; open: () => number }> {
  let sessions = 0;
  let open = 0;
  const server = createSecureServer({ ...serverTls, ...(settings ? { settings } : {}) });
  server.on('session', (s) => { sessions++; open++; s.once('close', () => open--); });
  server.on('stream', (s) => { s.on('error', () => {}); onStream(s); });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise((r) => { server.close(r); }));
  return { port: (server.address() as AddressInfo).port, sessions: () => sessions, open: () => open };
}

test('a destination that completes TLS and never sends HTTP/2 SETTINGS loses its session at the connect timeout (RFC 9113 section 3.4: the server preface is SETTINGS)', async () => {
  let conns = 0;
  let open = 0;
  const server = createTlsServer({ ...serverTls, ALPNProtocols: ['h2'] }, (s) => {
    conns++; open++;
    s.on('error', () => {});
    s.resume(); // reads (and drops) what the client sends, so that it sees the client's close
    s.once('close', () => open--);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise((r) => { server.close(r); }));
  const port = (server.address() as AddressInfo).port;
  const pool = new HbonePool();
  cleanups.push(() => pool.close(10));

  await assert.rejects(pool.connect(connectOpts(port, 300)), { code: 'WEFT_HBONE_CONNECT_TIMEOUT' });
  // The dead handshake does not stay in the pool: it is torn down, counted, and the socket closed.
  await until('the stuck session to leave the pool', () => pool.stats().sessionsActive === 0, 3_000);
  assert.equal(pool.stats().sessionsSetupTimedOut, 1);
  assert.equal(pool.stats().sessionFailures, 1);
  await until('the server to see the connection closed', () => open === 0, 3_000);
  // The next connect dials afresh instead of waiting on the same dead session.
  await assert.rejects(pool.connect(connectOpts(port, 300)), { code: 'WEFT_HBONE_CONNECT_TIMEOUT' });
  assert.equal(conns, 2);
  await until('the second stuck session to leave the pool', () => pool.stats().sessionsActive === 0, 3_000);
});

test('a destination advertising SETTINGS_MAX_CONCURRENT_STREAMS 0 gets no session left open per connect (RFC 9113 section 6.5.2: 0 prevents new streams)', async () => {
  const srv = await h2Server({ maxConcurrentStreams: 0 }, (s) => s.respond({ ':status': 200 }));
  const pool = new HbonePool();
  cleanups.push(() => pool.close(10));
  for (let i = 0; i < 10; i++) {
    await assert.rejects(pool.connect(connectOpts(srv.port)), (err: Error & { code?: string }) =>
      err.code === 'WEFT_HBONE_SESSION_FAILED' && /SETTINGS_MAX_CONCURRENT_STREAMS 0/.test(err.message));
  }
  // Each refusing session is retired and closed at once, not kept until the idle timeout (60 s):
  // a destination that takes no streams cannot make the pool hold a session per connect.
  await until('the refusing sessions to close', () => pool.stats().sessionsActive === 0 && srv.open() === 0, 3_000);
  assert.equal(pool.stats().sessionsRetiredNoStreams, 10);
});

test('a destination that refuses every CONNECT as over its limit while none of ours is open gets no session left open per try', async () => {
  const srv = await h2Server(undefined, (s) => s.close(h2.NGHTTP2_REFUSED_STREAM));
  const pool = new HbonePool();
  cleanups.push(() => pool.close(10));
  for (let i = 0; i < 5; i++) {
    await assert.rejects(pool.connect(connectOpts(srv.port)), (err: Error & { code?: string }) =>
      err.code === 'WEFT_HBONE_STREAM_FAILED' && /refused/i.test(err.message));
  }
  // Three tries per connect, each on a session the server had refused with none of ours open:
  // retired and closed, not kept "full" until the idle timeout.
  assert.equal(pool.stats().streamsRefusedOverLimit, 15);
  await until('the refusing sessions to close', () => pool.stats().sessionsActive === 0 && srv.open() === 0, 3_000);
  assert.equal(pool.stats().sessionsRetiredNoStreams, 15);
});

test('tunnels whose callers read slowly cannot make the pool hold more than its session buffer: the server is held to shrunk windows, which come back once they read (RFC 9113 section 6.9.2)', async () => {
  // A destination that sends as long as its windows let it: 64 KiB per tunnel every 10 ms.
  const chunk = Buffer.alloc(64 * 1024);
  const srv = await h2Server(undefined, (s) => {
    s.respond({ ':status': 200 });
    const timer = setInterval(() => { if (s.writableLength < 256 * 1024) s.write(chunk); }, 10);
    s.once('close', () => clearInterval(timer));
  });
  const throttled: number[] = [];
  const budget = 4 * 1024 * 1024;
  const pool = new HbonePool({ sessionBuffer: budget, onSessionThrottled: (e) => throttled.push(e.heldBytes) });
  cleanups.push(() => pool.close(10));
  const tunnels = await Promise.all(Array.from({ length: 8 }, () => pool.connect(connectOpts(srv.port))));
  // The callers do not read (a pod slower than its destination).
  for (const t of tunnels) t.pause();
  const held = (): number => tunnels.reduce((n, t) => n + t.readableLength, 0);
  await until('the session goes over its buffer', () => throttled.length > 0, 15_000);
  assert.ok(throttled[0]! > budget);
  assert.equal(pool.stats().sessionsThrottled, 1);
  // Without the guard each tunnel would fill its 4 MiB window (32 MiB); now the server may send
  // each only the shrunk window past what it had in flight.
  const atThrottle = held();
  await holds('the pool takes no more than the shrunk windows', () => held() <= atThrottle + 8 * 64 * 1024 + 256 * 1024, 1_000, { intervalMs: 50 });
  assert.ok(held() < 8 * 4 * 1024 * 1024 * 3 / 4, `held ${held()} bytes, unguarded it would be 32 MiB`);
  // The callers read again: the windows come back and every tunnel flows.
  const got = tunnels.map(() => 0);
  tunnels.forEach((t, i) => { t.on('data', (c: Buffer) => { got[i]! += c.length; }); t.resume(); });
  await until('every tunnel receives past its old backlog', () => got.every((n) => n > 2 * 1024 * 1024), 30_000);
  for (const t of tunnels) t.destroy();
});

test('after a root rotation a destination verified against the removed root gets no new tunnel on its pooled session; a rotated client certificate takes a fresh session too', async () => {
  const srv = await h2Server(undefined, (s) => { s.respond({ ':status': 200 }); s.pipe(s); });
  const pool = new HbonePool();
  cleanups.push(() => pool.close(10));
  // A tunnel held open on the session, and told when the session leaves the pool.
  let told = 0;
  const held = await pool.connect({ ...connectOpts(srv.port), onRetired: () => { told++; } });
  cleanups.push(() => held.destroy());
  // The same certificate reissued (rotation at half-life): a new session with it, the old one retired.
  const reissued = ca.issue(CLIENT_ID);
  const t = await pool.connect({ ...connectOpts(srv.port), tls: reissued });
  t.destroy();
  assert.equal(srv.sessions(), 2, 'the rotated certificate got a session of its own');
  await until('the tunnel on the old session hears it left the pool', () => told === 1, 2_000);
  // The old root is removed from the bundle (it signed the destination's certificate, say it leaked):
  // the pooled session verified against it takes no new tunnel, a new handshake is refused.
  const newRoot = createTestCa('Weft Test CA 2');
  await assert.rejects(pool.connect({ ...connectOpts(srv.port), tls: { ...reissued, ca: newRoot.cert } }), (err: Error & { code?: string }) =>
    err.code === 'WEFT_HBONE_SESSION_FAILED' && /TLS handshake failed|certificate/i.test(err.message));
  assert.equal(pool.stats().sessionFailures, 1, 'the refused handshake is counted');
  // The first tunnel goes on: retirement takes no new work from a session, it cuts nothing.
  held.write('still here');
  const echoed = await new Promise<string>((resolve) => held.once('data', (c: Buffer) => resolve(c.toString())));
  assert.equal(echoed, 'still here');
});

test('a destination that goes silent (node lost, path dropped: no FIN, no RST) loses its session to the PING timeout: its tunnels end with an error instead of hanging, and the next connect dials afresh (ztunnel src/proxy/h2.rs do_ping_pong)', async () => {
  const srv = await h2Server(undefined, (s) => { s.respond({ ':status': 200 }); s.pipe(s); });
  // A TCP relay in front of it that can go silent: bytes in either direction are dropped, nothing is closed.
  let silent = false;
  const relayed = new Set<Socket>();
  const relay = createNetServer((down) => {
    const up = netConnect({ host: '127.0.0.1', port: srv.port });
    relayed.add(down); relayed.add(up);
    down.on('error', () => {}); up.on('error', () => {});
    down.on('data', (c: Buffer) => { if (!silent) up.write(c); });
    up.on('data', (c: Buffer) => { if (!silent) down.write(c); });
    down.once('close', () => up.destroy());
    up.once('close', () => down.destroy());
  });
  await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise((r) => { for (const c of relayed) c.destroy(); relay.close(r); }));
  const port = (relay.address() as AddressInfo).port;
  const pool = new HbonePool({ ping: { intervalMs: 100, timeoutMs: 400 } });
  cleanups.push(() => pool.close(10));
  const t = await pool.connect(connectOpts(port));
  let failed: Error | undefined;
  let closed = false;
  t.on('error', (err) => { failed = err; });
  t.once('close', () => { closed = true; });
  // Answered PINGs keep an idle-looking session alive.
  await holds('the session lives while PINGs are answered', () => !closed, 600, { intervalMs: 50 });
  silent = true;
  await until('the tunnel on the silent session ends', () => closed, 5_000);
  assert.match(failed?.message ?? '', /no answer to a PING/, 'the tunnel ended with the session\'s error (its pod gets a reset, not a clean FIN)');
  assert.equal(pool.stats().sessionsPingTimedOut, 1);
  await until('the dead session leaves the pool', () => pool.stats().sessionsActive === 0, 2_000);
  // The destination is back (a new path): the next connect gets a new session, not the dead one.
  silent = false;
  const again = await pool.connect(connectOpts(port));
  again.destroy();
  assert.equal(srv.sessions(), 2);
});

test('a destination\'s refusal reason reaches the caller cut to 256 characters: it cannot make each refused connection a 16 KiB access-log line', async () => {
  const srv = await h2Server(undefined, (s) => s.respond({ ':status': 403, 'weft-reason': 'x'.repeat(15_000) }, { endStream: true }));
  const pool = new HbonePool();
  cleanups.push(() => pool.close(10));
  await assert.rejects(pool.connect(connectOpts(srv.port)), (err: Error & { code?: string; status?: number; reason?: string }) => {
    assert.equal(err.code, 'WEFT_HBONE_REFUSED');
    assert.equal(err.status, 403);
    assert.match(err.reason ?? '', /^x{256}\.\.\. \(14744 more characters\)$/);
    assert.ok(err.message.length < 600, `message of ${err.message.length} characters`);
    return true;
  });
});
