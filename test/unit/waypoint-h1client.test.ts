// The waypoint's HTTP/1.1 upstream client (waypoint/src/h1client.ts) replaced http.request +
// http.Agent. On the wire a request must look as http.request wrote it, response headers must merge
// as IncomingMessage merged them, and a backend (or whatever answers in its place) must not get a
// response past it that Node's client would have refused: llhttp decides, strictly (RFC 9112).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { once } from 'node:events';
import { Readable } from 'node:stream';
import { H1Pool, mergeHeaderLines, requestHead, type H1ProtocolError } from '../../waypoint/src/h1client.ts';
import { UpstreamResetError } from '../../waypoint/src/errors.ts';
import type { HeaderMap } from '../../waypoint/src/headers.ts';
import type { UpstreamRequest, UpstreamResponse } from '../../waypoint/src/upstream.ts';
import { until } from '../lab/wait.ts';

const closers: Array<() => void> = [];
after(() => { for (const c of closers) c(); });

/**
 * A raw TCP backend: `answer` gets each connection's bytes so far and returns what to write (or
 * nothing yet). Keeps what every connection received.
 */
async function rawBackend(answer: (received: string, conn: net.Socket, index: number) => string | undefined | 'close'): Promise<{ port: number; received: string[]; connections: () => number }> {
  const received: string[] = [];
  const server = net.createServer((s) => {
    const i = received.push('') - 1;
    s.on('data', (d: Buffer) => {
      received[i] += d.toString('latin1');
      const out = answer(received[i]!, s, i);
      if (out === 'close') s.destroy();
      else if (out !== undefined) s.write(out, 'latin1');
    });
    s.on('error', () => {});
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  closers.push(() => server.close());
  return { port: (server.address() as AddressInfo).port, received, connections: () => received.length };
}

function poolTo(port: number, idleMs = 60_000, onEmpty: () => void = () => {}, onProtocolError: (reason: H1ProtocolError, detail: string) => void = () => {}): H1Pool {
  const pool = new H1Pool(`127.0.0.1:${port}`, () => new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  }), idleMs, onEmpty, (reason, _endpoint, detail) => onProtocolError(reason, detail));
  closers.push(() => pool.destroy());
  return pool;
}

function req(method: string, headers: HeaderMap, body: string | null = null, signal = new AbortController().signal): UpstreamRequest {
  return { method, path: '/p', authority: 'a', headers, body: body === null ? null : Readable.from([Buffer.from(body)]), signal };
}

async function bodyOf(r: UpstreamResponse): Promise<string> {
  let s = '';
  for await (const c of r.body) s += (c as Buffer).toString('latin1');
  return s;
}

/** One complete request per connection: the backend answers 200 once it has the whole request (`done`). */
const OK = 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok';

test('a request is written byte for byte as http.request wrote it (header order, arrays, Cookie, Connection, framing)', async () => {
  const cases: Array<{ method: string; headers: HeaderMap; body?: string }> = [
    { method: 'GET', headers: { host: 'a', 'x-m': ['1', '2'], cookie: ['a=1', 'b=2'], 'x-obs': 'caf\u00e9' } },
    { method: 'POST', headers: { host: 'a' } },
    { method: 'DELETE', headers: { host: 'a' } },
    { method: 'PUT', headers: { host: 'a', 'content-length': '0' } },
    { method: 'POST', headers: { host: 'a', 'content-length': '3' }, body: 'abc' },
    { method: 'POST', headers: { host: 'a', 'transfer-encoding': 'chunked' }, body: 'abc' },
    { method: 'GET', headers: { host: 'a', connection: 'close' } },
  ];
  const requests = (s: string) => s.split(/(?=(?:GET|POST|DELETE|PUT) \/p HTTP\/1\.1)/);
  // The last request on the connection, once whole (Node's agent sends them all on one).
  const complete = (all: string) => {
    const s = requests(all).at(-1)!;
    return /\r\n\r\n/.test(s) && (!/content-length: 3/i.test(s) || s.endsWith('abc')) && (!/chunked/i.test(s) || s.endsWith('0\r\n\r\n'));
  };
  const ours = await rawBackend((s) => (complete(s) ? OK : undefined));
  const node = await rawBackend((s) => (complete(s) ? OK : undefined));
  const agent = new http.Agent({ keepAlive: true });
  closers.push(() => agent.destroy());
  for (const c of cases) {
    const pool = poolTo(ours.port);
    const r = await pool.request(req(c.method, c.headers, c.body ?? null));
    await bodyOf(r);
    pool.destroy();
    await new Promise<void>((resolve, reject) => {
      const q = http.request({ port: node.port, host: '127.0.0.1', agent, method: c.method, path: '/p', headers: c.headers as http.OutgoingHttpHeaders, setHost: false });
      q.on('response', (res) => { res.resume(); res.on('end', resolve); });
      q.on('error', reject);
      q.end(c.body);
    });
  }
  // Each case went on its own connection here, and on one keep-alive connection in Node's agent.
  assert.deepEqual(ours.received, requests(node.received.join('')));
});

test('response fields merge as IncomingMessage merges them: Set-Cookie an array, Cookie joined with "; ", first of Content-Type kept, others joined', async () => {
  const lines = ['Set-Cookie', 'a=1', 'Content-Type', 'text/plain', 'X-A', '1', 'set-cookie', 'b=2', 'content-type', 'text/html', 'x-a', '2', 'Cookie', 'c=1', 'cookie', 'd=2', 'ETag', '"1"', 'ETag', '"2"'];
  const raw = `HTTP/1.1 200 OK\r\n${lines.map((l, i) => (i % 2 === 0 ? `${l}: ` : `${l}\r\n`)).join('')}Content-Length: 0\r\n\r\n`;
  const b = await rawBackend((s) => (s.endsWith('\r\n\r\n') ? raw : undefined));
  const viaNode = await new Promise<http.IncomingHttpHeaders>((resolve) => http.get({ port: b.port, host: '127.0.0.1', agent: false }, (res) => { res.resume(); resolve(res.headers); }));
  const r = await poolTo(b.port).request(req('GET', { host: 'a' }));
  await bodyOf(r);
  const expected = { ...viaNode } as HeaderMap;
  delete expected['connection'];
  delete expected['content-length'];
  const got = { ...r.headers };
  delete got['content-length'];
  assert.deepEqual(got, expected);
  assert.deepEqual(mergeHeaderLines(lines)['set-cookie'], ['a=1', 'b=2']);
});

test('keep-alive: the next request reuses the connection; Connection: close and a body read until close end it', async () => {
  let n = 0;
  const b = await rawBackend((s, _c, i) => {
    if (!s.endsWith('\r\n\r\n') || s.split('\r\n\r\n').length - 1 <= (i === 0 ? n : 0)) return undefined;
    n++;
    if (i === 0 && n <= 2) return OK;
    if (i === 0 && n === 3) return 'HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok';
    // A response without a length on the second connection: its body runs until the backend closes.
    setImmediate(() => _c.end());
    return 'HTTP/1.1 200 OK\r\n\r\nuntil close';
  });
  const pool = poolTo(b.port);
  for (let i = 0; i < 3; i++) assert.equal(await bodyOf(await pool.request(req('GET', { host: 'a' }))), 'ok');
  assert.equal(b.connections(), 1, 'three requests, one connection');
  assert.equal(await bodyOf(await pool.request(req('GET', { host: 'a' }))), 'until close');
  assert.equal(b.connections(), 2, 'Connection: close was honoured');
});

test('RFC 9112 section 6.3: a response with two different Content-Lengths is refused as malformed, never read either way', async () => {
  const b = await rawBackend((s) => (s.endsWith('\r\n\r\n') ? 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 30\r\n\r\nok' : undefined));
  await assert.rejects(poolTo(b.port).request(req('GET', { host: 'a' })), (err: Error) => err instanceof UpstreamResetError && /malformed response: .*Content-Length/.test(err.message));
});

test('a bad chunk size mid-body fails the body (the client sees a reset), and the connection is not used again', async () => {
  const b = await rawBackend((s) => (s.endsWith('\r\n\r\n') ? 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n' : undefined));
  const pool = poolTo(b.port);
  const r = await pool.request(req('GET', { host: 'a' }));
  // In one read with the head: the body fails before anyone reads it, and a reader sees it cut.
  await assert.rejects(bodyOf(r), (err: NodeJS.ErrnoException) => /malformed response/.test(err.message) || err.code === 'ERR_STREAM_PREMATURE_CLOSE');
  assert.equal(r.body.readableEnded, false);
  const second = await pool.request(req('GET', { host: 'a' }));
  second.body.on('error', () => {}).resume();
  assert.equal(b.connections(), 2, 'the second request went on a new connection');
});

test('a second response smuggled behind the first is not handed to the next request: the connection is closed', async () => {
  const smuggled = 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 302 Found\r\nLocation: http://evil/\r\nContent-Length: 0\r\n\r\n';
  const b = await rawBackend((s, _c, i) => (s.endsWith('\r\n\r\n') ? (i === 0 ? smuggled : OK) : undefined));
  const pool = poolTo(b.port);
  assert.equal(await bodyOf(await pool.request(req('GET', { host: 'a' }))), 'ok');
  const second = await pool.request(req('GET', { host: 'a' }));
  assert.equal(second.status, 200, 'the 302 never reaches anyone');
  assert.equal(b.connections(), 2);
});

/**
 * A backend whose first answer is followed, in the same write, by the start of a second response
 * nobody asked for (`stray`), and which sends the rest of that head only once a second request
 * arrives on the same connection. Every other connection answers OK.
 */
async function strayBackend(first: string, stray: string): Promise<Awaited<ReturnType<typeof rawBackend>>> {
  return rawBackend((s, _c, i) => {
    if (i > 0) return s.endsWith('\r\n\r\n') ? OK : undefined;
    const heads = s.split('\r\n\r\n').length - 1;
    if (heads === 1) return first + stray;
    return heads === 2 ? 'Content-Length: 0\r\n\r\n' : undefined;
  });
}

// RFC 9112 section 9.3 (no pipelining here: a response begun when none is outstanding answers
// nothing) and section 6.3 (a 204, a 304 or the answer to HEAD ends at its head): the bytes after
// such an answer are the start of another response. Kept in the parser, they became the head of
// the answer to whichever request went next on the pooled connection.
for (const [name, method, first] of [
  ['a partial head behind a complete response', 'GET', 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'],
  ['the "body" of a 204', 'GET', 'HTTP/1.1 204 No Content\r\n\r\n'],
  ['the "body" of the answer to HEAD', 'HEAD', 'HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n'],
] as const) {
  test(`RFC 9112 section 9.3: ${name}, starting an unsolicited 302, is not kept for the next request on the connection: it closes, counted unsolicited_response`, async () => {
    const b = await strayBackend(first, 'HTTP/1.1 302 Found\r\nLocation: http://evil/\r\n');
    const errors: string[] = [];
    const pool = poolTo(b.port, 60_000, () => {}, (reason, detail) => errors.push(`${reason}: ${detail}`));
    await bodyOf(await pool.request(req(method, { host: 'a' })));
    const second = await pool.request(req('GET', { host: 'a' }));
    assert.equal(second.status, 200, 'the 302 reaches nobody');
    assert.equal(await bodyOf(second), 'ok');
    assert.equal(b.connections(), 2, 'the second request went on a new connection');
    assert.deepEqual(errors, ['unsolicited_response: a response began with no request waiting for one']);
  });
}

test('bytes on an idle connection, and a response llhttp refuses, are counted (unsolicited_response, malformed_response); a 408 closing an idle connection is not', async () => {
  let timing: net.Socket | undefined;
  const timedOut = await rawBackend((s, c) => {
    if (!s.endsWith('\r\n\r\n')) return undefined;
    timing = c;
    return OK;
  });
  const quiet: string[] = [];
  let closed = 0;
  const idle = poolTo(timedOut.port, 60_000, () => closed++, (reason) => quiet.push(reason));
  await bodyOf(await idle.request(req('GET', { host: 'a' })));
  // The answer is read and the connection idle in the pool: the server times it out.
  timing!.end('HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
  await until('the idle connection closed', () => closed === 1, 5_000);
  assert.deepEqual(quiet, [], 'RFC 9110 section 15.5.9: a server may answer 408 on an idle connection it closes');
  let late: net.Socket | undefined;
  const b = await rawBackend((s, c, i) => {
    if (i === 0 && s.endsWith('\r\n\r\n')) { late = c; return OK; }
    if (i === 1) return s.endsWith('\r\n\r\n') ? 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok' : undefined;
    return undefined;
  });
  const errors: string[] = [];
  const pool = poolTo(b.port, 60_000, () => {}, (reason) => errors.push(reason));
  await bodyOf(await pool.request(req('GET', { host: 'a' })));
  late!.write('HTTP/1.1 200 OK\r\n');
  await until('the stray bytes are counted', () => errors.length === 1, 5_000);
  await assert.rejects(pool.request(req('GET', { host: 'a' })), /malformed response/);
  assert.deepEqual(errors, ['unsolicited_response', 'malformed_response']);
});

// RFC 9110 section 15.5.9: a server may send 408 on an idle connection it closes. Envoy tells it by
// the parsed status (a premature 408, no request outstanding, is not upstream_cx_protocol_error), so
// the waypoint does too: a 408 after the empty line a server may send first is its idle close, and
// a head that only starts like one and is not a valid response is an unsolicited one.
for (const [name, sent, expected] of [
  ['a 408 after an empty line is not counted', '\r\nHTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n', []],
  ['a malformed head that starts as a 408 is counted unsolicited_response', 'HTTP/1.1 408 Request Timeout\r\nBad Header\r\n\r\n', ['unsolicited_response']],
  ['a 408 of HTTP/1.0 is not counted', 'HTTP/1.0 408 Request Timeout\r\n\r\n', []],
] as const) {
  test(`RFC 9110 section 15.5.9: on an idle connection, ${name}; the connection closes either way`, async () => {
    let conn: net.Socket | undefined;
    const b = await rawBackend((s, c) => {
      if (!s.endsWith('\r\n\r\n')) return undefined;
      conn = c;
      return OK;
    });
    const errors: string[] = [];
    let closed = 0;
    const pool = poolTo(b.port, 60_000, () => closed++, (reason) => errors.push(reason));
    await bodyOf(await pool.request(req('GET', { host: 'a' })));
    conn!.end(sent);
    await until('the idle connection closed', () => closed === 1, 5_000);
    assert.deepEqual(errors, expected);
  });
}

test('RFC 9110 section 15: a status below 100 is malformed, counted, not an informational answer passed over for the response behind it', async () => {
  const b = await rawBackend((s) => (s.endsWith('\r\n\r\n') ? 'HTTP/1.1 099 X\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n' : undefined));
  const errors: string[] = [];
  await assert.rejects(poolTo(b.port, 60_000, () => {}, (reason, detail) => errors.push(`${reason}: ${detail}`)).request(req('GET', { host: 'a' })), /malformed response: status 99/);
  assert.deepEqual(errors, ['malformed_response: malformed response: status 99 is not of 100 to 599 (RFC 9110 section 15)']);
});

for (const status of ['600', '999']) {
  test(`RFC 9110 section 15: a status of ${status} (three digits, but past 599) is malformed, counted once, and its request failed`, async () => {
    const b = await rawBackend((s) => (s.endsWith('\r\n\r\n') ? `HTTP/1.1 ${status} X\r\nContent-Length: 2\r\n\r\nok` : undefined));
    const errors: string[] = [];
    await assert.rejects(poolTo(b.port, 60_000, () => {}, (reason, detail) => errors.push(`${reason}: ${detail}`)).request(req('GET', { host: 'a' })), new RegExp(`malformed response: status ${status}`));
    assert.deepEqual(errors, [`malformed_response: malformed response: status ${status} is not of 100 to 599 (RFC 9110 section 15)`]);
  });
}

// RFC 9110 section 8.6: no Content-Length in a 1xx or a 204; section 6.1 of RFC 9112: no
// Transfer-Encoding there either. Framing a 204 cannot have only misleads whoever reads it next: the
// waypoint relayed `204` with `content-length: 5` to its client, whose parser may read 5 bytes of
// the next response as its body. Envoy's codec refuses both (strict_1xx_and_204_headers) and drops
// a `Content-Length: 0`.
for (const [name, response] of [
  ['a 204 with Content-Length: 5', 'HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n'],
  ['a 204 with Transfer-Encoding: chunked', 'HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'],
  ['a 103 with Content-Length: 5', 'HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n'],
] as const) {
  test(`RFC 9110 section 8.6: ${name} is malformed, counted malformed_response, and its connection closed`, async () => {
    const b = await rawBackend((s) => (s.endsWith('\r\n\r\n') ? response : undefined));
    const errors: string[] = [];
    await assert.rejects(poolTo(b.port, 60_000, () => {}, (reason, detail) => errors.push(`${reason}: ${detail}`)).request(req('GET', { host: 'a' })), /malformed response: (Content-Length|Transfer-Encoding) in a 1xx or 204/);
    assert.equal(errors.length, 1);
    assert.match(errors[0]!, /^malformed_response: /);
  });
}

test('RFC 9110 section 8.6: a 204 with Content-Length: 0 is taken, without the field, as Envoy papers over it', async () => {
  const b = await rawBackend((s) => (s.endsWith('\r\n\r\n') ? 'HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n' : undefined));
  const r = await poolTo(b.port).request(req('GET', { host: 'a' }));
  assert.equal(r.status, 204);
  assert.deepEqual(r.headers, { 'x-a': '1' });
  assert.equal(await bodyOf(r), '');
});

test('headers that would split the request are refused before any byte is sent, naming the field', async () => {
  assert.throws(() => requestHead('GET', '/', { 'x-a': 'v\r\nX-Injected: 1' }, false), /invalid character in header content \["x-a"\]/);
  assert.throws(() => requestHead('GET', '/', { 'x a': 'v' }, false), /header name must be a valid HTTP token \["x a"\]/);
  assert.throws(() => requestHead('GET', '/a b', {}, false), /request path contains unescaped characters/);
  assert.throws(() => requestHead('GE T', '/', {}, false), /method must be a valid HTTP token/);
  const b = await rawBackend(() => OK);
  await assert.rejects(poolTo(b.port).request(req('GET', { host: 'a', 'x-a': 'v\nX-Injected: 1' })), TypeError);
  assert.equal(b.connections(), 0, 'no connection was even opened');
});

test('a request body longer than its Content-Length is cut at the length: nothing past it reaches the backend', async () => {
  const b = await rawBackend(() => undefined);
  const pool = poolTo(b.port);
  const r: UpstreamRequest = { ...req('POST', { host: 'a', 'content-length': '3' }), body: Readable.from([Buffer.from('abc'), Buffer.from('GET /admin HTTP/1.1\r\n\r\n')]) };
  await assert.rejects(pool.request(r), /request body longer than its Content-Length/);
  await until('the connection is closed', () => b.received[0] !== undefined, 5_000);
  assert.ok(!b.received[0]!.includes('/admin'), b.received[0]);
});

test('HEAD: the response has no body whatever its Content-Length says, and the connection carries the next request', async () => {
  const b = await rawBackend((s) => (s.endsWith('\r\n\r\n') ? 'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n' : undefined));
  const pool = poolTo(b.port);
  const r = await pool.request(req('HEAD', { host: 'a' }));
  assert.equal(r.headers['content-length'], '1000');
  assert.equal(await bodyOf(r), '');
  await bodyOf(await pool.request(req('HEAD', { host: 'a' })));
  assert.equal(b.connections(), 1);
});

test('1xx answers (100 Continue, 103 Early Hints) are passed over; the final response is the one returned, with its trailers', async () => {
  const b = await rawBackend((s) => (s.endsWith('\r\n\r\n')
    ? 'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status\r\n\r\n2\r\nok\r\n0\r\ngrpc-status: 0\r\n\r\n'
    : undefined));
  const r = await poolTo(b.port).request(req('GET', { host: 'a' }));
  assert.equal(r.status, 200);
  assert.equal(r.headers['link'], undefined);
  assert.equal(await bodyOf(r), 'ok');
  assert.deepEqual(r.trailers(), { 'grpc-status': '0' });
});

test('an answer before the request body is all sent (an early 413) is returned, and that connection is closed', async () => {
  const b = await rawBackend((s) => (s.includes('\r\n\r\n') ? 'HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n' : undefined));
  const pool = poolTo(b.port);
  const endless = new Readable({ read() { this.push(Buffer.alloc(16_384)); } });
  const r = await pool.request({ ...req('POST', { host: 'a', 'transfer-encoding': 'chunked' }), body: endless });
  assert.equal(r.status, 413);
  await bodyOf(r);
  await bodyOf(await pool.request(req('GET', { host: 'a' })));
  assert.equal(b.connections(), 2, 'the 413\'s connection was not reused');
});

test('cancelled before the answer: rejected as cancelled, and the connection closed', async () => {
  const b = await rawBackend(() => undefined);
  const ac = new AbortController();
  const p = poolTo(b.port).request(req('GET', { host: 'a' }, null, ac.signal));
  await until('the request reached the backend', () => (b.received[0] ?? '').endsWith('\r\n\r\n'), 5_000);
  ac.abort();
  await assert.rejects(p, /cancelled/);
});

test('an idle connection closes after the idle timeout, and the pool says it is empty', async () => {
  const b = await rawBackend((s) => (s.endsWith('\r\n\r\n') ? OK : undefined));
  let empty = 0;
  const pool = poolTo(b.port, 100, () => empty++);
  await bodyOf(await pool.request(req('GET', { host: 'a' })));
  await until('the idle connection closed', () => empty === 1, 5_000);
});

test('a connection that could not be made leaves the pool empty, so its owner forgets it (pools are per caller)', async () => {
  const s = net.createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as AddressInfo).port;
  s.close();
  await once(s, 'close');
  let empty = 0;
  await assert.rejects(poolTo(port, 60_000, () => empty++).request(req('GET', { host: 'a' })), /ECONNREFUSED/);
  assert.equal(empty, 1);
});

test('a response with more fields than the parser hands over at once (50) arrives whole, trailers apart', async () => {
  const fields = Array.from({ length: 50 }, (_, i) => `X-F${i}: v${i}\r\n`).join('');
  const b = await rawBackend((s) => (s.endsWith('\r\n\r\n') ? `HTTP/1.1 200 OK\r\n${fields}Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: t\r\n\r\n` : undefined));
  const r = await poolTo(b.port).request(req('GET', { host: 'a' }));
  for (let i = 0; i < 50; i++) assert.equal(r.headers[`x-f${i}`], `v${i}`);
  assert.equal(r.headers['x-t'], undefined);
  assert.equal(await bodyOf(r), 'ok');
  assert.deepEqual(r.trailers(), { 'x-t': 't' });
});

test('RFC 9110 section 7.8: a 101 to a request that asked to upgrade hands the connection over with the bytes that followed the head', async () => {
  const b = await rawBackend((s, conn) => {
    if (s.endsWith('\r\n\r\n')) return 'HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nfirst-frame';
    if (s.endsWith('ping')) conn.write('pong');
    return undefined;
  });
  const r = await poolTo(b.port).request(req('GET', { host: 'a', connection: 'Upgrade', upgrade: 'websocket' }), true);
  assert.equal(r.status, 101);
  assert.equal(r.headers['upgrade'], 'websocket');
  assert.equal(r.upgraded?.head.toString(), 'first-frame');
  const sock = r.upgraded!.socket;
  let got = '';
  sock.on('data', (c: Buffer) => { got += c.toString(); });
  sock.resume();
  sock.write('ping');
  await until('the upgraded connection carries the new protocol both ways', () => got === 'pong', 5_000);
  sock.destroy();
});

test('an upgrade answered as an ordinary request is a response like any other, and its connection is closed after it, never pooled', async () => {
  const b = await rawBackend((s) => (s.endsWith('\r\n\r\n') ? OK : undefined));
  const pool = poolTo(b.port);
  const r = await pool.request(req('GET', { host: 'a', connection: 'Upgrade', upgrade: 'websocket' }), true);
  assert.equal(r.status, 200);
  assert.equal(r.upgraded, undefined);
  assert.equal(await bodyOf(r), 'ok');
  await bodyOf(await pool.request(req('GET', { host: 'a' })));
  assert.equal(b.connections(), 2);
});

test('a 101 to a request that asked for no upgrade is refused, counted unexpected_upgrade: a backend cannot turn a pooled connection into a raw pipe', async () => {
  const b = await rawBackend((s) => (s.endsWith('\r\n\r\n') ? 'HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n' : undefined));
  const errors: string[] = [];
  await assert.rejects(poolTo(b.port, 60_000, () => {}, (reason) => errors.push(reason)).request(req('GET', { host: 'a' })), /unexpected 101 to a request that asked for no upgrade/);
  assert.deepEqual(errors, ['unexpected_upgrade']);
});

test('Expect: 100-continue through the waypoint (RFC 9110 section 10.1.1): the client gets one 100, the body reaches the backend, then the final answer', async () => {
  const { WaypointEngine } = await import('../../waypoint/src/engine.ts');
  const { TcpUpstream } = await import('../../waypoint/src/upstream.ts');
  const h = await import('../../waypoint/testing/harness.ts');
  let seen = '';
  const backendServer = await h.startHttpBackend((rq, rs) => {
    let body = '';
    rq.on('data', (c: Buffer) => { body += c.toString(); });
    rq.on('end', () => { seen = `${rq.headers['expect']}|${body}`; rs.writeHead(201, { 'content-length': 4 }); rs.end('made'); });
  });
  closers.push(() => backendServer.close());
  const engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
  engine.applyConfig(h.config({ services: [h.service('web', '10.96.0.20', [h.endpoint(backendServer.port)])], routes: [h.route('web', 'web', [{ backends: [h.backend('web')] }])] }));
  const l = await h.startTunnelListener(engine, '10.96.0.20:80');
  closers.push(() => { void l.close(); });
  const sock = net.connect(l.port, '127.0.0.1');
  let got = '';
  sock.on('data', (c: Buffer) => {
    got += c.toString('latin1');
    if (got.startsWith('HTTP/1.1 100') && !got.includes('sent')) { got += '[sent]'; sock.write('hello'); }
  });
  sock.write('POST / HTTP/1.1\r\nhost: web\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n');
  await until('the final answer arrives', () => got.includes('made'), 5_000, { explain: () => got });
  sock.destroy();
  assert.equal(got.match(/HTTP\/1\.1 100/g)?.length, 1, got);
  assert.match(got, /HTTP\/1\.1 201/);
  assert.equal(seen, '100-continue|hello');
});

test('through the waypoint: a backend that starts an unsolicited response behind a 204 gets it to no client; the connection is closed, counted in weft_waypoint_upstream_protocol_errors_total{reason="unsolicited_response"} and logged with the endpoint (RFC 9112 section 9.3)', async () => {
  const { WaypointEngine } = await import('../../waypoint/src/engine.ts');
  const { TcpUpstream } = await import('../../waypoint/src/upstream.ts');
  const h = await import('../../waypoint/testing/harness.ts');
  const b = await strayBackend('HTTP/1.1 204 No Content\r\n\r\n', 'HTTP/1.1 302 Found\r\nLocation: http://evil/\r\n');
  const warnings: Array<{ msg: string; fields: Record<string, unknown> }> = [];
  const engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null, warn: (msg, fields) => warnings.push({ msg, fields }) } });
  closers.push(() => { void engine.close(); });
  engine.applyConfig(h.config({ services: [h.service('web', '10.96.0.20', [h.endpoint(b.port)])], routes: [h.route('web', 'web', [{ backends: [h.backend('web')] }])] }));
  const l = await h.startTunnelListener(engine, '10.96.0.20:80');
  closers.push(() => { void l.close(); });
  const agent = new http.Agent({ keepAlive: true });
  closers.push(() => agent.destroy());
  assert.equal((await h.request(l.port, { host: 'web', agent })).status, 204);
  const second = await h.request(l.port, { host: 'web', agent });
  assert.equal(second.status, 200, 'the 302 reaches no client');
  assert.equal(second.body, 'ok');
  assert.equal(b.connections(), 2);
  const counted = await h.metricSamples(engine, 'weft_waypoint_upstream_protocol_errors_total');
  assert.deepEqual(counted.map((s) => [s.labels['reason'], s.value]), [['unsolicited_response', 1]]);
  const line = warnings.find((w) => w.fields['reason'] === 'unsolicited_response');
  assert.ok(line, JSON.stringify(warnings));
  assert.equal(line.fields['endpoint'], `127.0.0.1:${b.port}`);
});
