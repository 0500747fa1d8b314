import assert from 'node:assert/strict';
import http2 from 'node:http2';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import {
  config, echo, endpoint, h2request, metricSamples, request, service, startHttpBackend, startTunnelListener,
  type Backend, type Listener,
} from '../../waypoint/testing/harness.ts';
import { H2, H2_PREFACE, h2Frame, hpackLiteral, parseH2Frames } from '../lab/h2-frames.ts';
import { until } from '../lab/wait.ts';

/** Writes raw bytes on a fresh connection and returns everything the waypoint answers until it closes. */
function raw(port: number, data: string | Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1', () => sock.write(data));
    const chunks: Buffer[] = [];
    sock.on('data', (c: Buffer) => chunks.push(c));
    sock.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
    sock.on('error', reject);
    sock.setTimeout(5000, () => sock.destroy());
  });
}

/**
 * How long the backend takes to answer `/slow...`: well past a premature reset's lifetime (1 s)
 * after the last of a burst of such requests has arrived, however slowly a loaded machine opens them.
 */
const SLOW_MS = 5000;

describe('waypoint bad input', () => {
  let b: Backend;
  let engine: WaypointEngine;
  let listener: Listener;
  let stray: Listener;
  const warnings: Array<{ msg: string; fields: Record<string, unknown> }> = [];
  /** Every path the backend was asked for. */
  const served: string[] = [];

  before(async () => {
    const answer = echo('reviews');
    b = await startHttpBackend((req, res) => {
      served.push(req.url ?? '');
      if (req.url?.startsWith('/slow')) setTimeout(() => answer(req, res), SLOW_MS);
      else answer(req, res);
    });
    engine = new WaypointEngine({
      namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(),
      telemetry: { accessLog: null, warn: (msg, fields) => warnings.push({ msg, fields }) },
    });
    engine.applyConfig(config({ services: [service('reviews', '10.96.0.10', [endpoint(b.port)])] }));
    listener = await startTunnelListener(engine, '10.96.0.10:80');
    stray = await startTunnelListener(engine, '10.96.9.9:80');
  });

  after(async () => {
    await listener.close();
    await stray.close();
    await engine.close();
    await b.close();
  });

  it('answers a malformed HTTP/1.1 request with 400 and keeps serving', async () => {
    const reply = await raw(listener.port, 'GET / HTTP/1.1\r\nHost: reviews\r\nBad Header Without Colon\r\n\r\n');
    assert.match(reply, /^HTTP\/1\.1 400 /);
    const garbage = await raw(listener.port, 'HELLO?\r\n\r\n');
    assert.match(garbage, /^HTTP\/1\.1 400 /);
    assert.equal((await request(listener.port)).status, 200);
    const samples = await metricSamples(engine, 'istio_requests_total');
    assert.ok(samples.some((s) => s.labels['response_code'] === '400' && s.labels['response_flags'] === 'DPE'));
  });

  // A client that goes away mid-body ends its own request only (RFC 9112 section 8: an incomplete
  // message; Envoy counts it with flag DC and keeps serving). It used to end the whole waypoint: the
  // body's reader failed with no listener once the upstream exchange had been cancelled.
  for (const [name, bytes] of [
    ['a Content-Length body', 'POST /upload HTTP/1.1\r\nHost: reviews\r\nContent-Length: 10\r\n\r\nab'],
    ['a chunked body', 'POST /upload HTTP/1.1\r\nHost: reviews\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab'],
    ['a chunked body with a malformed chunk size', 'POST /upload HTTP/1.1\r\nHost: reviews\r\nTransfer-Encoding: chunked\r\n\r\n4 \r\nabcd\r\n'],
  ] as const) {
    it(`survives a client that closes in the middle of ${name}, and counts it`, async () => {
      const dc = async (): Promise<number> => (await metricSamples(engine, 'istio_requests_total'))
        .filter((x) => String(x.labels['response_flags']).includes('DC') || x.labels['response_flags'] === 'DPE').reduce((n, x) => n + x.value, 0);
      const before = await dc();
      const hits = b.hits;
      const sock = net.connect(listener.port, '127.0.0.1');
      sock.on('error', () => {});
      await new Promise<void>((resolve) => sock.write(bytes, () => resolve()));
      // The request reached the backend and its body is streaming when the client goes.
      // (A malformed chunk may be refused before the request goes anywhere: then no hit comes.)
      await until('the request is under way', () => b.hits > hits, 2000).catch(() => 0);
      sock.destroy();
      await until('the cut request is counted', async () => (await dc()) > before, 5000);
      assert.equal((await request(listener.port)).status, 200, 'the waypoint still serves');
    });
  }

  const countOf = async (code: string, flags: string): Promise<number> => (await metricSamples(engine, 'istio_requests_total'))
    .filter((x) => x.labels['response_code'] === code && x.labels['response_flags'] === flags).reduce((n, x) => n + x.value, 0);

  // RFC 9112 section 3.2: "A server MUST respond with a 400 (Bad Request) status code to any HTTP/1.1
  // request message that lacks a Host header field and to any request message that contains more than
  // one Host header field line". Node keeps the first of several Host lines; the policy and the
  // upstream then saw that one, a backend behind another parser might see the other.
  it('refuses a missing or repeated Host with 400, counted, and forwards neither', async () => {
    const hits = b.hits;
    const before = await countOf('400', 'DPE');
    assert.match(await raw(listener.port, 'GET /a HTTP/1.1\r\nHost: reviews\r\nHost: payments.bank\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 400 [^]*Host header fields/);
    assert.match(await raw(listener.port, 'GET /a HTTP/1.1\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 400 [^]*no Host header field/);
    assert.equal(b.hits, hits, 'the backend saw neither');
    assert.equal(await countOf('400', 'DPE'), before + 2);
    // HTTP/1.0 has no Host requirement.
    assert.match(await raw(listener.port, 'GET /a HTTP/1.0\r\n\r\n'), /^HTTP\/1\.1 200 /);
  });

  // RFC 9112 section 3.2: the same MUST covers "a Host header field with an invalid field value";
  // Host is uri-host [ ":" port ] (RFC 9110 section 7.2). Weft checks that grammar (normalize.ts),
  // stricter than Envoy's character check, which lets userinfo through over HTTP/1.1: one with a
  // space, a slash or userinfo was judged by `hosts` as written and forwarded for the backend's own
  // parser to read some other way.
  for (const host of ['reviews evil', 'reviews/admin', 'admin@reviews', 'reviews:80:81', 'reviews:8o', '[::1']) {
    it(`refuses Host ${JSON.stringify(host)} with 400, counted, named invalid Host in the answer, and forwards nothing`, async () => {
      const hits = b.hits;
      const before = await countOf('400', 'DPE');
      assert.match(await raw(listener.port, `GET /a HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`), /^HTTP\/1\.1 400 [^]*invalid Host/);
      assert.equal(b.hits, hits, 'the backend saw nothing');
      assert.equal(await countOf('400', 'DPE'), before + 1);
    });
  }

  // RFC 9113 section 8.3.1: :authority is the authority component of the target URI (no userinfo);
  // RFC 9110 section 7.2: uri-host [ ":" port ]. nghttp2 checks :authority by characters only: it
  // lets a second `:` and `[`/`]` through (`@` too, before 1.5x), so the same check holds over
  // HTTP/2. Such an :authority was matched by policy `hosts` as written (past a DENY on `reviews`)
  // and sent to an HTTP/1.1 backend as its Host.
  for (const authority of ['reviews:80:81', '[::1', 'reviews]']) {
    it(`refuses an HTTP/2 :authority ${JSON.stringify(authority)} with 400, counted, named invalid Host in the answer, and forwards nothing`, async () => {
      const hits = b.hits;
      const before = await countOf('400', 'DPE');
      const session = http2.connect(`http://127.0.0.1:${listener.port}`);
      try {
        const reply = await h2request(session, { ':path': '/a', ':authority': authority });
        assert.equal(reply.status, 400, reply.body);
        assert.match(reply.body, /invalid Host/);
      } finally {
        session.destroy();
      }
      assert.equal(b.hits, hits, 'the backend saw nothing');
      await until('the refusal is counted', async () => (await countOf('400', 'DPE')) === before + 1, 5000);
    });
  }

  it('takes a Host of a name, an IPv4 or IPv6 literal, with or without a port, or empty (RFC 9110 section 7.2)', async () => {
    for (const host of ['reviews', 'reviews.shop.svc.cluster.local:80', '10.96.0.10', '[fd00::1]:80', 'Reviews%2Dx', '']) {
      assert.match(await raw(listener.port, `GET /a HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`), /^HTTP\/1\.1 200 /, host);
    }
  });

  it('answers a CONNECT (HTTP/1.1 and HTTP/2) with 405 and counts it, instead of node closing or answering unseen', async () => {
    const before = await countOf('405', '-');
    assert.match(await raw(listener.port, 'CONNECT reviews:80 HTTP/1.1\r\nHost: reviews:80\r\n\r\n'), /^HTTP\/1\.1 405 /);
    const session = http2.connect(`http://127.0.0.1:${listener.port}`);
    try {
      const status = await new Promise<number>((resolve, reject) => {
        const st = session.request({ ':method': 'CONNECT', ':authority': 'reviews:80' });
        st.on('response', (h) => resolve(Number(h[':status'])));
        st.on('error', reject);
      });
      assert.equal(status, 405);
    } finally {
      session.destroy();
    }
    await until('both CONNECTs are counted', async () => (await countOf('405', '-')) === before + 2, 5000);
  });

  // Envoy's HTTP/1 codec dispatches one request at a time (conn_manager_impl.cc onData): a CONNECT
  // pipelined behind a GET is read after the GET is answered, and answered as it would be alone. node
  // hands it over at once, and the waypoint used to crash (ERR_HTTP_SOCKET_ASSIGNED) taking the socket
  // still owed to the GET.
  it('answers a CONNECT pipelined behind a GET after the GET, with 405, and stays up', async () => {
    const before = await countOf('405', '-');
    const reply = await raw(listener.port, 'GET /first HTTP/1.1\r\nHost: reviews\r\n\r\nCONNECT reviews:80 HTTP/1.1\r\nHost: reviews:80\r\n\r\n');
    assert.match(reply, /^HTTP\/1\.1 200 [^]*HTTP\/1\.1 405 /, JSON.stringify(reply.slice(0, 80)));
    await until('the CONNECT is counted', async () => (await countOf('405', '-')) === before + 1, 5000);
    // RFC 9112 section 9.6: behind a request with Connection: close, nothing more is read.
    const closed = await raw(listener.port, 'GET /close-me HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\nCONNECT reviews:80 HTTP/1.1\r\nHost: reviews:80\r\n\r\n');
    assert.match(closed, /^HTTP\/1\.1 200 /);
    assert.doesNotMatch(closed, /HTTP\/1\.1 405 /);
    assert.match(await raw(listener.port, 'GET /after HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 200 /);
  });

  // RFC 9112 section 9.3.2: responses to pipelined requests go in request order; section 9.6: after a
  // request with "Connection: close" nothing more is processed.
  it('answers a malformed pipelined request after the response before it, and not at all after Connection: close', async () => {
    const hits = b.hits;
    const inOrder = await raw(listener.port, 'GET /first HTTP/1.1\r\nHost: reviews\r\n\r\nGET /second HTTP/1.1\r\nHost: reviews\r\nBad Header\r\n\r\n');
    assert.match(inOrder, /^HTTP\/1\.1 200 [^]*HTTP\/1\.1 400 /, JSON.stringify(inOrder.slice(0, 60)));
    const closed = await raw(listener.port, 'GET /close-me HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\nGET /next HTTP/1.1\r\nHost: reviews\r\nBad Header\r\n\r\n');
    assert.match(closed, /^HTTP\/1\.1 200 /);
    assert.doesNotMatch(closed, /HTTP\/1\.1 400 /);
    assert.equal(b.hits, hits + 2, 'the backend ran /first and /close-me only');
  });

  it('answers oversized HTTP/1.1 headers with 431', async () => {
    const reply = await raw(listener.port, `GET / HTTP/1.1\r\nHost: reviews\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
    assert.match(reply, /^HTTP\/1\.1 431 /);
  });

  it('answers oversized HTTP/2 headers with 431', async () => {
    // The Node client refuses to send a compressed header block over 64 KiB unless told otherwise.
    const session = http2.connect(`http://127.0.0.1:${listener.port}`, { maxSendHeaderBlockLength: 1 << 20 });
    try {
      const one = await h2request(session, { ':path': '/', ':authority': 'reviews', 'x-big': 'a'.repeat(20_000) });
      assert.equal(one.status, 431);
      // 100 KB of headers, past HTTP/2's 64 KiB defaults, still gets a 431 rather than a reset.
      const many: http2.OutgoingHttpHeaders = { ':path': '/', ':authority': 'reviews' };
      for (let i = 0; i < 5; i++) many[`x-big-${i}`] = 'a'.repeat(20_000);
      assert.equal((await h2request(session, many)).status, 431);
      const ok = await h2request(session, { ':path': '/', ':authority': 'reviews' });
      assert.equal(ok.status, 200);
    } finally {
      session.close();
    }
  });

  it('answers an unknown host with 404 naming the host and path', async () => {
    const r = await request(stray.port, { host: 'nowhere.example.com', path: '/some/where?x=1' });
    assert.equal(r.status, 404);
    assert.match(r.body, /nowhere\.example\.com/);
    assert.match(r.body, /\/some\/where/);
    assert.equal(r.headers['x-weft-flags'], 'NR');
  });

  it('cuts a rapid-reset flood off with GOAWAY while another client keeps working', async () => {
    const good = http2.connect(`http://127.0.0.1:${listener.port}`);
    const bad = http2.connect(`http://127.0.0.1:${listener.port}`);
    bad.on('error', () => {});
    const goaway = new Promise<number>((resolve) => {
      bad.on('goaway', (code) => resolve(code));
      bad.on('close', () => resolve(-1));
    });
    let goodOk = 0;
    let stop = false;
    const goodLoop = (async () => {
      while (!stop) {
        const r = await h2request(good, { ':path': '/', ':authority': 'reviews' });
        assert.equal(r.status, 200);
        goodOk++;
      }
    })();
    let sent = 0;
    for (let round = 0; round < 50 && !bad.closed && !bad.destroyed; round++) {
      for (let i = 0; i < 100; i++) {
        if (bad.closed || bad.destroyed) break;
        try {
          const s = bad.request({ ':path': '/', ':authority': 'reviews' });
          s.on('error', () => {});
          s.close(http2.constants.NGHTTP2_CANCEL);
          sent++;
        } catch {
          break;
        }
      }
      await new Promise((r) => setImmediate(r));
    }
    const code = await goaway;
    stop = true;
    await goodLoop;
    assert.equal(code, http2.constants.NGHTTP2_ENHANCE_YOUR_CALM, `session ended with ${code} after ${sent} resets`);
    assert.ok(goodOk > 0, 'the other client kept getting answers');
    const r = await h2request(good, { ':path': '/', ':authority': 'reviews' });
    assert.equal(r.status, 200);
    good.close();
    const cut = await metricSamples(engine, 'weft_waypoint_rapid_reset_goaways_total');
    assert.equal(cut[0]?.value, 1);
    assert.ok(warnings.some((w) => w.fields['reason'] === 'rapid_reset' && w.fields['target'] === '10.96.0.10:80'), 'the cut is logged with its reason');
  });

  // Envoy counts a reset as premature only within premature_reset_min_stream_lifetime_seconds (1 s)
  // of its stream's start, as the HBONE server does (lib/hbone/rapid-reset.ts): a client that gives
  // up on requests it waited for (gRPC deadlines against a slow backend) is no attack. The waypoint
  // had counted every reset before the answer, cut such a client's session after 200 of them in
  // 10 s and destroyed it 100 ms later, with its other requests in flight.
  it('does not take cancelled requests that waited past 1 s for a rapid reset, nor cut the requests in flight', async () => {
    const goaways = async (): Promise<number> => (await metricSamples(engine, 'weft_waypoint_rapid_reset_goaways_total'))[0]?.value ?? 0;
    const cutBefore = await goaways();
    const session = http2.connect(`http://127.0.0.1:${listener.port}`);
    session.on('error', () => {});
    let goaway: number | undefined;
    session.on('goaway', (code) => { goaway = code; });
    try {
      const kept = h2request(session, { ':path': '/slow/kept', ':authority': 'reviews' });
      const given: http2.ClientHttp2Stream[] = [];
      for (let i = 0; i < 240; i++) {
        const st = session.request({ ':path': `/slow/given-up/${i}`, ':authority': 'reviews' });
        st.on('error', () => {});
        st.on('response', () => {});
        given.push(st);
      }
      // Each stream was open at the waypoint before its request reached the backend: once all have,
      // a little over the lifetime later every reset is a late one.
      await until('every given-up request reached the backend', () => served.filter((u) => u.startsWith('/slow/given-up/')).length === 240, 10_000);
      const arrived = performance.now();
      await until('the requests have waited past a premature reset\'s lifetime', () => performance.now() - arrived > 1100, 5000);
      for (const st of given) st.close(http2.constants.NGHTTP2_CANCEL);
      const r = await kept;
      assert.equal(r.status, 200, 'the request in flight is answered');
      assert.equal(goaway, undefined, 'no GOAWAY');
      assert.equal(await goaways(), cutBefore, 'no rapid-reset cut counted');
      assert.equal((await h2request(session, { ':path': '/', ':authority': 'reviews' })).status, 200, 'the session still takes requests');
    } finally {
      session.destroy();
    }
  });

  // A client that breaks HTTP/2 for the whole connection is cut off by nghttp2 (GOAWAY) before any of
  // its requests is forwarded. Each such end is counted by reason and logged, as Envoy counts
  // http2.rx_messaging_error and the floods (CVE-2019-9512, -9515, CVE-2024-27316); before, they went
  // unseen: the session's 'error' was swallowed.
  const sessionErrors = async (reason: string): Promise<number> => (await metricSamples(engine, 'weft_waypoint_h2_session_errors_total'))
    .filter((x) => x.labels['reason'] === reason).reduce((n, x) => n + x.value, 0);
  const headerBlock = (fields: Array<[string, string]>): Buffer => Buffer.concat(fields.map(([n, v]) => hpackLiteral(n, v)));
  const get = headerBlock([[':method', 'GET'], [':scheme', 'http'], [':path', '/flood'], [':authority', 'reviews']]);
  const many = (n: number, frame: (i: number) => Buffer): Buffer => Buffer.concat(Array.from({ length: n }, (_, i) => frame(i)));
  for (const [name, reason, frames] of [
    // RFC 9113 section 6.7 / CVE-2019-9512: PINGs sent faster than their acknowledgements are read.
    ['PING frames without end', 'flood', () => many(20_000, () => h2Frame(0x6, 0, 0, Buffer.alloc(8)))],
    // CVE-2019-9515: SETTINGS likewise.
    ['SETTINGS frames without end', 'flood', () => many(20_000, () => h2Frame(H2.SETTINGS, 0, 0, Buffer.alloc(0)))],
    // CVE-2024-27316: a header block that never ends (RFC 9113 section 6.10).
    ['CONTINUATION frames without END_HEADERS', 'continuation_flood', () => Buffer.concat([h2Frame(H2.HEADERS, 0, 1, get), many(20_000, () => h2Frame(H2.CONTINUATION, 0, 1, hpackLiteral('x-a', 'b')))])],
    // RFC 9113 section 8.2.2: a connection-specific field makes a request malformed (each stream is
    // reset, PROTOCOL_ERROR); past maxSessionInvalidFrames the session goes.
    ['requests carrying Connection (malformed, RFC 9113 section 8.2.2), one after another', 'invalid_frames',
      () => many(300, (i) => h2Frame(H2.HEADERS, H2.END_HEADERS | H2.END_STREAM, 2 * i + 1, headerBlock([[':method', 'GET'], [':scheme', 'http'], [':path', '/smuggle'], [':authority', 'reviews'], ['connection', 'keep-alive']])))],
    // RFC 9113 section 8.1.1: DATA beyond the request's content-length is malformed; what follows the
    // announced length would be a second request to an HTTP/1.1 backend.
    ['a body longer than its content-length (RFC 9113 section 8.1.1)', 'protocol_error', () => Buffer.concat([
      h2Frame(H2.HEADERS, H2.END_HEADERS, 1, headerBlock([[':method', 'POST'], [':scheme', 'http'], [':path', '/overrun'], [':authority', 'reviews'], ['content-length', '3']])),
      h2Frame(H2.DATA, H2.END_STREAM, 1, Buffer.from('abcGET /smuggled HTTP/1.1\r\nHost: reviews\r\n\r\n')),
    ])],
  ] as const) {
    it(`ends an HTTP/2 session sending ${name}, counted (${reason}) and logged, and forwards nothing`, async () => {
      const before = await sessionErrors(reason);
      const logged = warnings.length;
      const sock = net.connect(listener.port, '127.0.0.1');
      sock.on('error', () => {});
      const received: Buffer[] = [];
      sock.on('data', (c: Buffer) => received.push(c));
      const closed = new Promise<void>((resolve) => sock.once('close', () => resolve()));
      try {
        sock.write(Buffer.concat([H2_PREFACE, h2Frame(H2.SETTINGS, 0, 0, Buffer.alloc(0)), frames()]));
        await until(`the session sending ${name} is ended`, async () => (await sessionErrors(reason)) === before + 1, 10_000);
        await Promise.race([closed, until('the waypoint closes the tunnel', () => sock.destroyed, 10_000)]);
      } finally {
        sock.destroy();
      }
      const goaway = parseH2Frames(Buffer.concat(received)).find((f) => f.type === H2.GOAWAY);
      assert.ok(goaway && goaway.payload.readUInt32BE(4) !== 0, 'the waypoint said GOAWAY with an error code');
      assert.deepEqual(served.filter((p) => ['/flood', '/smuggle', '/overrun', '/smuggled'].includes(p)), [], 'the backend saw none of it');
      const line = warnings.slice(logged).find((w) => w.fields['reason'] === reason);
      assert.ok(line, `a warning names ${reason}`);
      assert.equal(line.fields['target'], '10.96.0.10:80');
      assert.match(String(line.fields['error']), /./);
      const session = http2.connect(`http://127.0.0.1:${listener.port}`);
      try {
        assert.equal((await h2request(session, { ':path': '/', ':authority': 'reviews' })).status, 200, 'the waypoint still serves');
      } finally {
        session.close();
      }
    });
  }

  // RFC 9113 section 8.1.1: a malformed request is a stream error (PROTOCOL_ERROR) and MUST NOT be
  // forwarded. nghttp2 resets each of these before node hands the waypoint a request, so none can
  // become a second request on the HTTP/1.1 connection to the backend; the session carries on.
  const attack = (extra: Array<[string, string]>, path = '/smuggle', method = 'POST'): Buffer =>
    headerBlock([[':method', method], [':scheme', 'http'], [':path', path], [':authority', 'reviews'], ...extra]);
  for (const [name, frames] of [
    // RFC 9113 section 8.2.2: connection-specific fields.
    ['Transfer-Encoding', () => [h2Frame(H2.HEADERS, H2.END_HEADERS, 1, attack([['transfer-encoding', 'chunked']])), h2Frame(H2.DATA, H2.END_STREAM, 1, Buffer.from('0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: reviews\r\n\r\n'))]],
    ['Connection', () => [h2Frame(H2.HEADERS, H2.END_HEADERS | H2.END_STREAM, 1, attack([['connection', 'close']]))]],
    ['Keep-Alive', () => [h2Frame(H2.HEADERS, H2.END_HEADERS | H2.END_STREAM, 1, attack([['keep-alive', 'timeout=5']]))]],
    ['Upgrade', () => [h2Frame(H2.HEADERS, H2.END_HEADERS | H2.END_STREAM, 1, attack([['upgrade', 'websocket']]))]],
    ['TE other than trailers', () => [h2Frame(H2.HEADERS, H2.END_HEADERS | H2.END_STREAM, 1, attack([['te', 'gzip']]))]],
    // RFC 9113 section 8.1.1: content-length against the DATA.
    // (Its head may reach the backend before the DATA ends short, hence /cut: the body then never
    // ends there, the connection is closed, RFC 9112 section 8.)
    ['a content-length longer than its DATA', () => [h2Frame(H2.HEADERS, H2.END_HEADERS, 1, attack([['content-length', '50']], '/cut')), h2Frame(H2.DATA, H2.END_STREAM, 1, Buffer.from('short'))]],
    ['two content-length fields', () => [h2Frame(H2.HEADERS, H2.END_HEADERS, 1, attack([['content-length', '5'], ['content-length', '50']])), h2Frame(H2.DATA, H2.END_STREAM, 1, Buffer.from('short'))]],
    // RFC 9113 section 8.1: no pseudo-header in trailers.
    ['a pseudo-header in its trailers', () => [h2Frame(H2.HEADERS, H2.END_HEADERS, 1, attack([], '/cut')), h2Frame(H2.DATA, 0, 1, Buffer.from('x')), h2Frame(H2.HEADERS, H2.END_HEADERS | H2.END_STREAM, 1, headerBlock([[':path', '/smuggled']]))]],
    // RFC 9113 section 8.3.1: :path is origin-form (or * for OPTIONS), never empty.
    ['an absolute-form :path', () => [h2Frame(H2.HEADERS, H2.END_HEADERS | H2.END_STREAM, 1, attack([], 'http://reviews/smuggle', 'GET'))]],
    ['a :path with a space', () => [h2Frame(H2.HEADERS, H2.END_HEADERS | H2.END_STREAM, 1, attack([], '/smuggle HTTP/1.1', 'GET'))]],
    ['* as the :path of a GET', () => [h2Frame(H2.HEADERS, H2.END_HEADERS | H2.END_STREAM, 1, attack([], '*', 'GET'))]],
    // RFC 8441: the waypoint does not offer SETTINGS_ENABLE_CONNECT_PROTOCOL, so a WebSocket over
    // HTTP/2 (extended CONNECT) is malformed; WebSockets go through it over HTTP/1.1, judged by policy.
    ['an extended CONNECT (RFC 8441 WebSocket)', () => [h2Frame(H2.HEADERS, H2.END_HEADERS, 1, headerBlock([[':method', 'CONNECT'], [':protocol', 'websocket'], [':scheme', 'http'], [':path', '/smuggle'], [':authority', 'reviews']]))]],
  ] as const) {
    it(`resets an HTTP/2 request with ${name} (PROTOCOL_ERROR) and forwards nothing; the session goes on`, async () => {
      const sock = net.connect(listener.port, '127.0.0.1');
      sock.on('error', () => {});
      let received = Buffer.alloc(0);
      sock.on('data', (c: Buffer) => { received = Buffer.concat([received, c]); });
      try {
        const good = headerBlock([[':method', 'GET'], [':scheme', 'http'], [':path', '/after'], [':authority', 'reviews']]);
        sock.write(Buffer.concat([H2_PREFACE, h2Frame(H2.SETTINGS, 0, 0, Buffer.alloc(0)), ...frames(), h2Frame(H2.HEADERS, H2.END_HEADERS | H2.END_STREAM, 3, good)]));
        await until('the request after it is answered', () => parseH2Frames(received).some((f) => f.type === H2.HEADERS && f.stream === 3), 10_000);
      } finally {
        sock.destroy();
      }
      const reset = parseH2Frames(received).find((f) => f.type === H2.RST_STREAM && f.stream === 1);
      assert.equal(reset?.payload.readUInt32BE(0), http2.constants.NGHTTP2_PROTOCOL_ERROR, 'stream 1 is reset with PROTOCOL_ERROR');
      assert.deepEqual(served.filter((p) => p.includes('smuggle')), [], 'the backend saw none of it');
    });
  }
});
