// An HBONE client that presents no client certificate to a server that requires one. With TLS 1.3
// the client considers the handshake done before the server has looked at its certificate, so the
// server's refusal (alert 116 "certificate required") arrives after 'secureConnect'. The pool used
// to miss it and wait for its connect timeout; it must fail at once with a session error that says
// why, and keep its bookkeeping straight.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createSecureServer, type Http2SecureServer } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { HbonePool, HboneSessionError, type ClientTlsMaterial } from '../../lib/hbone/index.ts';
import { createTestCa, readAll, startHbone, tcpServer, CLIENT_ID, SERVER_ID } from './hbone-certs.ts';

const cleanups: Array<() => unknown> = [];
after(async () => { for (const c of cleanups.reverse()) await c(); });

const TIMEOUT_MS = 5_000;
/** Far below the connect timeout, far above a loopback handshake. */
const PROMPT_MS = 1_000;

async function echoTarget(): Promise<number> {
  const echo = await tcpServer((s) => s.pipe(s));
  cleanups.push(() => echo.server.close());
  return echo.port;
}

/**
 * A bare node:http2 TLS 1.3 server that requires client certificates from `ca` (no HboneServer
 * code involved) and answers every CONNECT with 200 and an echo.
 */
async function plainMtlsServer(): Promise<{ server: Http2SecureServer; port: number; ca: string; client: ClientTlsMaterial; clientErrors: string[] }> {
  const ca = createTestCa();
  const leaf = ca.issue(SERVER_ID);
  const clientLeaf = ca.issue(CLIENT_ID);
  const clientErrors: string[] = [];
  const server = createSecureServer({
    key: leaf.key, cert: leaf.cert, ca: ca.cert,
    requestCert: true, rejectUnauthorized: true,
    minVersion: 'TLSv1.3', ALPNProtocols: ['h2'],
  });
  server.on('tlsClientError', (err: Error & { code?: string }) => clientErrors.push(err.code ?? err.message));
  server.on('stream', (stream) => {
    stream.respond({ ':status': 200 });
    stream.pipe(stream);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise((r) => server.close(r)));
  return { server, port: (server.address() as AddressInfo).port, ca: ca.cert, client: clientLeaf, clientErrors };
}

async function timed<T>(p: Promise<T>): Promise<{ ms: number; value?: T; error?: unknown }> {
  const started = performance.now();
  try {
    const value = await p;
    return { ms: performance.now() - started, value };
  } catch (error) {
    return { ms: performance.now() - started, error };
  }
}

function assertRefusedForNoCertificate(r: { ms: number; error?: unknown }, what: string): void {
  assert.ok(r.error, `${what}: the connect must fail`);
  assert.ok(r.error instanceof HboneSessionError, `${what}: a session error, not ${(r.error as Error).name} ${(r.error as Error).message}`);
  assert.equal(r.error.code, 'WEFT_HBONE_SESSION_FAILED');
  assert.match(r.error.message, /refused the connection because we presented no client certificate/);
  assert.equal((r.error.cause as { code?: string } | undefined)?.code, 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED', `${what}: the cause is the server's alert`);
  assert.ok(r.ms < PROMPT_MS, `${what}: failed after ${r.ms.toFixed(0)} ms, not at the ${TIMEOUT_MS} ms connect timeout`);
}

async function waitFor(check: () => boolean, what: string, ms = 2_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('no client certificate against a plain node:http2 server requiring one: fails at once on the alert, the session is closed and counted as failed, a valid certificate then gets through', async () => {
  const target = await echoTarget();
  const srv = await plainMtlsServer();
  const pool = new HbonePool({ connectTimeoutMs: TIMEOUT_MS });
  cleanups.push(() => pool.close(100));
  const to = (sourceKey: string, tls: ClientTlsMaterial) => ({ sourceKey, tls, dest: { host: '127.0.0.1', port: srv.port }, target: `127.0.0.1:${target}`, expectPeer: SERVER_ID });

  const r = await timed(pool.connect(to('anonymous', { ca: srv.ca } as ClientTlsMaterial)));
  assertRefusedForNoCertificate(r, 'plain server');
  console.log(`# no client certificate refused after ${r.ms.toFixed(1)} ms (connect timeout ${TIMEOUT_MS} ms)`);
  assert.ok(srv.clientErrors.length >= 1, `the server did refuse the handshake (${srv.clientErrors.join(', ')})`);
  // The failed session must not linger in the pool (it used to stay half-destroyed, never 'close').
  await waitFor(() => pool.stats().sessionsActive === 0, 'the failed session is closed');
  assert.equal(pool.stats().sessionFailures, 1);
  assert.equal(pool.stats().sessionsOpened, 0);

  // Again: a fresh attempt, not a cached failure, and just as prompt.
  assertRefusedForNoCertificate(await timed(pool.connect(to('anonymous', { ca: srv.ca } as ClientTlsMaterial))), 'second attempt');
  await waitFor(() => pool.stats().sessionsActive === 0, 'the second failed session is closed');
  assert.equal(pool.stats().sessionFailures, 2);

  // The control: the same server and pool with a certificate from the server's CA.
  const ok = await pool.connect(to(CLIENT_ID, srv.client));
  const echoed = readAll(ok);
  ok.end('hello');
  assert.equal((await echoed).toString(), 'hello');
  assert.equal(pool.stats().sessionsOpened, 1);
  assert.equal(pool.stats().sessionFailures, 2);
});

test('no client certificate against the HBONE server: concurrent connects share the refused handshake and all fail at once; a valid client on the same pool is unaffected', async () => {
  const target = await echoTarget();
  const hb = await startHbone();
  cleanups.push(() => hb.close());
  const pool = new HbonePool({ connectTimeoutMs: TIMEOUT_MS });
  cleanups.push(() => pool.close(100));
  const anonymous = { ca: hb.ca.cert } as ClientTlsMaterial;

  const results = await Promise.all(Array.from({ length: 5 }, () => timed(pool.connect(hb.to(`127.0.0.1:${target}`, { sourceKey: 'anonymous', tls: anonymous })))));
  results.forEach((r, i) => assertRefusedForNoCertificate(r, `connect ${i}`));
  assert.equal(pool.stats().sessionFailures, 1, 'one handshake for the five connects');
  await waitFor(() => pool.stats().sessionsActive === 0, 'the failed session is closed');

  const ok = await pool.connect(hb.to(`127.0.0.1:${target}`));
  const echoed = readAll(ok);
  ok.end('still fine');
  assert.equal((await echoed).toString(), 'still fine');
  assert.equal(hb.server.stats().sessionsOpened, 1, 'the server opened a session only for the valid client');
});
