// lib/bounded-get.ts: the one GET of a URL whose server is not trusted to answer well, behind both
// the controller's jwksUri fetch (controller-jwks-uri.test.ts) and the federation export read
// (multicluster.test.ts, eastwest.test.ts). One table of hostile answers, each refused with its
// stable kind within its bound, and the body never quoted unless the caller asks. Served on 127.0.0.1.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { getCACertificates } from 'node:tls';
import { BoundedGetError, boundedGet, withDefaultCas, type BoundedGetFailure, type BoundedGetOptions } from '../../lib/bounded-get.ts';
import { createTestCa } from './hbone-certs.ts';

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

async function serve(handler: Handler, tls?: { key: string; cert: string }): Promise<{ url: string; close: () => Promise<void> }> {
  const open = new Set<ServerResponse>();
  const server = tls ? createHttpsServer(tls, (req, res) => { open.add(res); res.on('close', () => open.delete(res)); handler(req, res); })
    : createServer((req, res) => { open.add(res); res.on('close', () => open.delete(res)); handler(req, res); });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `${tls ? 'https' : 'http'}://127.0.0.1:${(server.address() as AddressInfo).port}/doc`,
    async close() {
      for (const r of open) r.destroy();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

// A generous deadline: on a loaded machine a redirect or a status must not fail as a timeout. The
// slow body and the silence cases set the short bounds they test.
const BOUNDS: BoundedGetOptions = { what: 'document', deadlineMs: 10_000, maxBytes: 1024 };

test('a hostile answer is refused by its kind within its bound, the body unquoted: redirect, error status, declared or sent past maxBytes, slow body, silence past idleMs, a scheme other than http(s)', async () => {
  const cases: Array<{ name: string; handler: Handler; o?: Partial<BoundedGetOptions>; code: BoundedGetFailure; message: RegExp; url?: string }> = [
    { name: 'redirect', handler: (_q, r) => r.writeHead(302, { location: 'http://169.254.169.254/' }).end('secret'), code: 'redirect', message: /^answered 302 redirecting to http:\/\/169\.254\.169\.254\/; redirects are not followed/ },
    { name: 'status', handler: (_q, r) => r.writeHead(500).end('secret'), code: 'http-status', message: /^answered HTTP 500$/ },
    { name: 'declared too large', handler: (_q, r) => r.writeHead(200, { 'content-length': 4096 }).end('x'.repeat(4096)), code: 'too-large', message: /^declares a body of 4096 bytes; the document is read up to 1024 bytes$/ },
    { name: 'sent too large', handler: (_q, r) => { r.writeHead(200); r.end('x'.repeat(4096)); }, code: 'too-large', message: /^document larger than 1024 bytes$/ },
    { name: 'slow body', handler: (_q, r) => { r.writeHead(200); const t = setInterval(() => r.write(' '), 50); r.on('close', () => clearInterval(t)); }, o: { deadlineMs: 400 }, code: 'timeout', message: /^no complete document within 400 ms$/ },
    { name: 'silent', handler: () => {}, o: { idleMs: 100, deadlineMs: 5_000 }, code: 'timeout', message: /^no answer within 100 ms$/ },
    { name: 'scheme', handler: () => {}, url: 'file:///etc/passwd', code: 'bad-url', message: /scheme file is not fetched/ },
  ];
  for (const c of cases) {
    const s = await serve(c.handler);
    const started = Date.now();
    try {
      await assert.rejects(boundedGet(c.url ?? s.url, { ...BOUNDS, ...c.o }), (e: Error) => {
        assert.ok(e instanceof BoundedGetError, c.name);
        assert.equal(e.code, c.code, c.name);
        assert.match(e.message, c.message, c.name);
        assert.doesNotMatch(e.message, /secret/, `${c.name}: the body is not quoted`);
        return true;
      });
      assert.ok(Date.now() - started < 2_000, `${c.name}: within its bound`);
    } finally {
      await s.close();
    }
  }
});

test('a 2xx answer within the bounds is the body; errorBodyChars quotes the start of an error answer\'s body (a trusted peer\'s reason)', async () => {
  const s = await serve((req, r) => (req.headers['x-fail'] ? r.writeHead(403).end(`${'why '.repeat(100)}`) : r.writeHead(200).end('{"ok":true}')));
  try {
    assert.equal(await boundedGet(s.url, BOUNDS), '{"ok":true}');
    await assert.rejects(boundedGet(s.url, { ...BOUNDS, headers: { 'x-fail': '1' }, errorBodyChars: 12 }), (e: Error) => e instanceof BoundedGetError && e.code === 'http-status' && e.message === 'answered HTTP 403: why why why ');
  } finally {
    await s.close();
  }
});

test('okStatuses: an answer of another status, a 2xx included, is an http-status failure named by its status (a 204 has no body to quote)', async () => {
  const s = await serve((req, r) => (req.headers['x-status'] === '204' ? r.writeHead(204).end() : r.writeHead(Number(req.headers['x-status'] ?? 200)).end('{"ok":true}')));
  try {
    const get = (status: number) => boundedGet(s.url, { ...BOUNDS, headers: { 'x-status': String(status) }, okStatuses: [200], errorBodyChars: 200 });
    assert.equal(await get(200), '{"ok":true}');
    await assert.rejects(get(204), (e: Error) => e instanceof BoundedGetError && e.code === 'http-status' && e.message === 'answered HTTP 204');
    await assert.rejects(get(203), (e: Error) => e instanceof BoundedGetError && e.code === 'http-status' && e.message === 'answered HTTP 203: {"ok":true}');
    assert.equal(await boundedGet(s.url, { ...BOUNDS, headers: { 'x-status': '203' } }), '{"ok":true}', 'by default any 2xx');
  } finally {
    await s.close();
  }
});

test('https: a CA outside `ca` is refused tls; a refusal of checkServerIdentity is a tls failure carrying its message', async () => {
  const ca = createTestCa('bounded-get CA');
  const s = await serve((_q, r) => r.writeHead(200).end('{}'), ca.issue(undefined, ['127.0.0.1']));
  try {
    await assert.rejects(boundedGet(s.url, { ...BOUNDS, tls: { ca: withDefaultCas([]) } }), (e: Error) => e instanceof BoundedGetError && e.code === 'tls' && /^TLS: /.test(e.message));
    assert.equal(await boundedGet(s.url, { ...BOUNDS, tls: { ca: withDefaultCas([ca.cert]) } }), '{}');
    await assert.rejects(boundedGet(s.url, { ...BOUNDS, tls: { ca: [ca.cert], checkServerIdentity: () => new Error('not the peer expected') } }), (e: Error) => e instanceof BoundedGetError && e.code === 'tls' && e.message === 'not the peer expected');
  } finally {
    await s.close();
  }
});

test('withDefaultCas keeps Node\'s default CAs (tls.getCACertificates(\'default\'): bundled roots and NODE_EXTRA_CA_CERTS) and adds the extra ones after them', () => {
  const extra = createTestCa('an extra CA').cert;
  const list = withDefaultCas([extra]);
  assert.deepEqual(list, [...getCACertificates('default'), extra]);
  for (const pem of getCACertificates('extra')) assert.ok(list.includes(pem), 'a CA of NODE_EXTRA_CA_CERTS is kept');
});
