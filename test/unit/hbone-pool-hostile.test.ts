// A hostile or broken HBONE destination (a compromised node agent, waypoint or east-west gateway)
// against the pool that carries the caller's tunnels: whatever it does, the caller gets a clean,
// named failure within its connect timeout, the pool counts it, and the pool's sessions stay
// bounded by the connects in flight (none left behind for a destination that takes no streams).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createSecureServer, constants as h2, type SecureServerOptions } from 'node:http2';
import { createServer as createTlsServer } from 'node:tls';
import type { AddressInfo } from 'node:net';
import { HbonePool, type HboneConnectOptions } from '../../lib/hbone/index.ts';
import { createTestCa, CLIENT_ID, SERVER_ID } from './hbone-certs.ts';

const cleanups: Array<() => unknown> = [];
after(async () => { for (const c of cleanups.reverse()) await c(); });

const ca = createTestCa();
const serverLeaf = ca.issue(SERVER_ID);
const clientLeaf = ca.issue(CLIENT_ID);
const serverTls = { key: serverLeaf.key, cert: serverLeaf.cert, ca: ca.cert, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' as const };

function connectOpts(port: number, timeoutMs = 2_000): HboneConnectOptions {
  return { sourceKey: CLIENT_ID, tls: clientLeaf, dest: { host: '127.0.0.1', port }, target: '10.0.0.1:80', expectPeer: SERVER_ID, timeoutMs };
}

/** Polls `cond` until it holds or `ms` pass. */
async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
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
  await until(() => pool.stats().sessionsActive === 0, 3_000, 'the stuck session to leave the pool');
  assert.equal(pool.stats().sessionsSetupTimedOut, 1);
  assert.equal(pool.stats().sessionFailures, 1);
  await until(() => open === 0, 3_000, 'the server to see the connection closed');
  // The next connect dials afresh instead of waiting on the same dead session.
  await assert.rejects(pool.connect(connectOpts(port, 300)), { code: 'WEFT_HBONE_CONNECT_TIMEOUT' });
  assert.equal(conns, 2);
  await until(() => pool.stats().sessionsActive === 0, 3_000, 'the second stuck session to leave the pool');
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
  await until(() => pool.stats().sessionsActive === 0 && srv.open() === 0, 3_000, 'the refusing sessions to close');
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
  await until(() => pool.stats().sessionsActive === 0 && srv.open() === 0, 3_000, 'the refusing sessions to close');
  assert.equal(pool.stats().sessionsRetiredNoStreams, 15);
});
