// A server that refuses CONNECT streams as over its stream limit (Node answers RST_STREAM
// ENHANCE_YOUR_CALM when it still holds streams the client already closed; nghttp2 REFUSED_STREAM).
// Such a stream was not processed: the pool retries it on another session, keeps the full one
// (it is fine, only full for now) and fails with the server's reason only if every try is refused.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createSecureServer, constants as h2 } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { HbonePool, streamHeadroom } from '../../lib/hbone/index.ts';
import { createTestCa, readAll, tcpServer, CLIENT_ID, SERVER_ID } from './hbone-certs.ts';

const cleanups: Array<() => unknown> = [];
after(async () => { for (const c of cleanups.reverse()) await c(); });

/** A bare node:http2 mTLS server: refuses the next `refuse.n` streams with `code`, then echoes. */
async function refusingServer(code: number): Promise<{ port: number; refuse: { n: number }; sessions: () => number; client: ReturnType<ReturnType<typeof createTestCa>['issue']> }> {
  const ca = createTestCa();
  const leaf = ca.issue(SERVER_ID);
  const refuse = { n: 0 };
  let sessions = 0;
  const server = createSecureServer({ key: leaf.key, cert: leaf.cert, ca: ca.cert, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' });
  server.on('session', () => sessions++);
  server.on('stream', (stream) => {
    stream.on('error', () => {}); // closing with an error code emits it here too
    if (refuse.n > 0) {
      refuse.n--;
      stream.close(code);
      return;
    }
    stream.respond({ ':status': 200 });
    stream.pipe(stream);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise((r) => { server.close(r); }));
  return { port: (server.address() as AddressInfo).port, refuse, sessions: () => sessions, client: ca.issue(CLIENT_ID) };
}

for (const [name, code] of [['ENHANCE_YOUR_CALM', h2.NGHTTP2_ENHANCE_YOUR_CALM], ['REFUSED_STREAM', h2.NGHTTP2_REFUSED_STREAM]] as const) {
  test(`a stream refused with ${name} is retried on another session, and the full session stays in the pool`, async () => {
    const echo = await tcpServer((s) => s.pipe(s));
    cleanups.push(() => echo.server.close());
    const srv = await refusingServer(code);
    const pool = new HbonePool();
    cleanups.push(() => pool.close(100));
    const opts = { sourceKey: CLIENT_ID, tls: srv.client, dest: { host: '127.0.0.1', port: srv.port }, target: `127.0.0.1:${echo.port}`, expectPeer: SERVER_ID, timeoutMs: 3_000 };
    // A first tunnel, held open, so the session is in use when the refusal comes.
    const held = await pool.connect(opts);
    srv.refuse.n = 1;
    const t = await pool.connect(opts);
    const got = readAll(t);
    t.end('retried');
    assert.equal((await got).toString(), 'retried');
    assert.equal(srv.sessions(), 2, 'the retry went to a second session');
    assert.equal(pool.stats().sessionsActive, 2, 'the full session was not retired: it still carries the held tunnel');
    // Once a stream of the first session closes, it takes new streams again.
    const heldBack = readAll(held);
    held.end('held');
    assert.equal((await heldBack).toString(), 'held');
    const again = await pool.connect(opts);
    again.end();
    await readAll(again);
    assert.equal(srv.sessions(), 2, 'no third session');
  });
}

test('a server that refuses every try fails the connect with its reason, promptly', async () => {
  const echo = await tcpServer((s) => s.pipe(s));
  cleanups.push(() => echo.server.close());
  const srv = await refusingServer(h2.NGHTTP2_ENHANCE_YOUR_CALM);
  srv.refuse.n = 1_000;
  const pool = new HbonePool();
  cleanups.push(() => pool.close(100));
  const started = Date.now();
  await assert.rejects(
    pool.connect({ sourceKey: CLIENT_ID, tls: srv.client, dest: { host: '127.0.0.1', port: srv.port }, target: `127.0.0.1:${echo.port}`, expectPeer: SERVER_ID, timeoutMs: 3_000 }),
    /ENHANCE_YOUR_CALM/,
  );
  assert.ok(Date.now() - started < 2_000, 'not the connect timeout');
});

test('sessions keep headroom below large server stream limits', () => {
  assert.equal(streamHeadroom(1_000), 32);
  assert.equal(streamHeadroom(64), 2);
  assert.equal(streamHeadroom(20), 0, 'small limits are used to the last stream');
});
