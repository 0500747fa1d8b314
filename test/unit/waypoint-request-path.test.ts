// The waypoint's request path from the attacker's side (issue 16): request bodies framed toward an
// HTTP/1.1 upstream (RFC 9112 section 6), linear-time route regexes (RE2, as Envoy), the Service
// chosen by the tunnel and never by Host alone, and Gateway API ReplacePrefixMatch with an empty
// replacement (HTTPPathModifier table).
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { RouteTable } from '../../waypoint/src/router.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import { validateObject } from '../../lib/model/validate.ts';
import {
  backend, config, echo, endpoint, h2request, match, metricSamples, request, route, service, startHttpBackend, startTunnelListener,
  type Backend, type Listener,
} from '../../waypoint/testing/harness.ts';

interface RawRequest { method: string; target: string; body: string }

/**
 * A backend that parses HTTP/1.1 as RFC 9112 section 6.3 says (Content-Length, chunked, else no
 * body) and answers every request it finds: what a smuggled request would reach.
 */
async function startRawBackend(): Promise<{ port: number; requests: RawRequest[]; close(): Promise<void> }> {
  const requests: RawRequest[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    let buf = Buffer.alloc(0);
    sock.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      for (;;) {
        const parsed = parseOne(buf);
        if (!parsed) return;
        buf = buf.subarray(parsed.used);
        requests.push(parsed.req);
        sock.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok');
      }
    });
    sock.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port, requests,
    close: () => new Promise((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  };
}

function parseOne(buf: Buffer): { req: RawRequest; used: number } | undefined {
  const end = buf.indexOf('\r\n\r\n');
  if (end < 0) return undefined;
  const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
  const [method = '', target = ''] = lines[0]!.split(' ');
  const headers = new Map(lines.slice(1).map((l) => [l.slice(0, l.indexOf(':')).trim().toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
  let pos = end + 4;
  let body = '';
  if (headers.has('transfer-encoding')) {
    for (;;) {
      const eol = buf.indexOf('\r\n', pos);
      if (eol < 0) return undefined;
      const size = parseInt(buf.subarray(pos, eol).toString('latin1'), 16);
      if (buf.length < eol + 2 + size + 2) return undefined;
      body += buf.subarray(eol + 2, eol + 2 + size).toString('latin1');
      pos = eol + 2 + size + 2;
      if (size === 0) break;
    }
  } else if (headers.has('content-length')) {
    const n = Number(headers.get('content-length'));
    if (buf.length < pos + n) return undefined;
    body = buf.subarray(pos, pos + n).toString('latin1');
    pos += n;
  }
  return { req: { method, target, body }, used: pos };
}

/** Sends raw bytes on a fresh connection and resolves with everything read until the peer is done. */
function raw(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    let out = '';
    s.on('data', (c: Buffer) => { out += c.toString('latin1'); });
    s.on('close', () => resolve(out));
    s.on('error', reject);
    s.write(text);
  });
}

const SMUGGLED = 'GET /smuggled HTTP/1.1\r\nHost: reviews.shop\r\n\r\n';

describe('upstream framing (RFC 9112 section 6: a body without framing is a smuggling path)', () => {
  let b: Awaited<ReturnType<typeof startRawBackend>>;
  let engine: WaypointEngine;
  let listener: Listener;

  before(async () => {
    b = await startRawBackend();
    engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    engine.applyConfig(config({ services: [service('reviews', '10.96.0.10', [endpoint(b.port)])] }));
    listener = await startTunnelListener(engine, '10.96.0.10:80');
  });

  after(async () => {
    await listener.close();
    await engine.close();
    await b.close();
  });

  it('frames a chunked HTTP/1.1 GET, DELETE and OPTIONS body: the raw backend sees one request each', async () => {
    const before = b.requests.length;
    for (const method of ['GET', 'DELETE', 'OPTIONS']) {
      const chunk = Buffer.byteLength(SMUGGLED).toString(16);
      const reply = await raw(listener.port, `${method} /a HTTP/1.1\r\nHost: reviews.shop\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${chunk}\r\n${SMUGGLED}\r\n0\r\n\r\n`);
      assert.match(reply, /^HTTP\/1\.1 200 /, method);
    }
    const seen = b.requests.slice(before);
    assert.deepEqual(seen.map((r) => `${r.method} ${r.target}`), ['GET /a', 'DELETE /a', 'OPTIONS /a']);
    assert.ok(seen.every((r) => r.body === SMUGGLED), 'each body arrives whole, as a body');
  });

  // RFC 9112 section 11.2 (request smuggling): framing two parsers may read two ways. Each is
  // refused 400 (flag DPE, counted) before anything reaches the endpoint, so no second request rides
  // in a body: Transfer-Encoding with Content-Length (section 6.1: "ought to be handled as an error"),
  // chunked not last (6.3), identity, two Content-Lengths or one with a sign (8.6 of RFC 9110), bare
  // LF line ends and obs-fold (section 2.2, 5.2: a server may refuse them; llhttp's strict mode does).
  it('refuses ambiguous HTTP/1.1 framing with 400, counted, and sends the endpoint nothing', async () => {
    const before = b.requests.length;
    const cases: Array<[string, string]> = [
      ['Transfer-Encoding and Content-Length', `POST /a HTTP/1.1\r\nHost: reviews.shop\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`],
      ['chunked, identity', `POST /a HTTP/1.1\r\nHost: reviews.shop\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n${SMUGGLED}`],
      ['identity with Content-Length', `POST /a HTTP/1.1\r\nHost: reviews.shop\r\nTransfer-Encoding: identity\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`],
      ['two Content-Lengths', `POST /a HTTP/1.1\r\nHost: reviews.shop\r\nContent-Length: 0\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`],
      ['Content-Length with a sign', `POST /a HTTP/1.1\r\nHost: reviews.shop\r\nContent-Length: +${SMUGGLED.length}\r\n\r\n${SMUGGLED}`],
      ['bare LF line ends', `POST /a HTTP/1.1\nHost: reviews.shop\nContent-Length: ${SMUGGLED.length}\n\n${SMUGGLED}`],
      ['obs-fold', `POST /a HTTP/1.1\r\nHost: reviews.shop\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`],
    ];
    const dpe = async (): Promise<number> => (await metricSamples(engine, 'istio_requests_total')).filter((m) => m.labels['response_code'] === '400' && m.labels['response_flags'] === 'DPE').reduce((n, m) => n + m.value, 0);
    const refusedBefore = await dpe();
    for (const [name, text] of cases) assert.match(await raw(listener.port, text), /^HTTP\/1\.1 400 /, name);
    assert.deepEqual(b.requests.slice(before), [], 'the endpoint saw none of them');
    assert.equal(await dpe() - refusedBefore, cases.length);
  });

  it('frames an HTTP/2 GET with DATA and no content-length: one request upstream per client request', async () => {
    const before = b.requests.length;
    const session = http2.connect(`http://127.0.0.1:${listener.port}`);
    try {
      for (let i = 0; i < 3; i++) {
        const r = await h2request(session, { ':method': 'GET', ':path': `/h2/${i}`, ':authority': 'reviews.shop' }, SMUGGLED);
        assert.equal(r.status, 200);
      }
      const r = await h2request(session, { ':method': 'GET', ':path': '/h2/nobody', ':authority': 'reviews.shop' });
      assert.equal(r.status, 200);
    } finally {
      session.close();
    }
    const seen = b.requests.slice(before);
    assert.deepEqual(seen.map((r) => r.target), ['/h2/0', '/h2/1', '/h2/2', '/h2/nobody']);
    assert.ok(!b.requests.some((r) => r.target === '/smuggled'));
  });

  it('keeps Content-Length framing when the client sent one', async () => {
    const before = b.requests.length;
    const reply = await raw(listener.port, `GET /cl HTTP/1.1\r\nHost: reviews.shop\r\nContent-Length: ${Buffer.byteLength(SMUGGLED)}\r\nConnection: close\r\n\r\n${SMUGGLED}`);
    assert.match(reply, /^HTTP\/1\.1 200 /);
    assert.deepEqual(b.requests.slice(before), [{ method: 'GET', target: '/cl', body: SMUGGLED }]);
  });
});

describe('route regular expressions are RE2 (linear time, as Envoy safe_regex)', () => {
  let b: Backend;
  let engine: WaypointEngine;
  let listener: Listener;

  before(async () => {
    b = await startHttpBackend(echo('reviews'));
    engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    engine.applyConfig(config({
      services: [service('reviews', '10.96.0.10', [endpoint(b.port)])],
      routes: [route('redos', 'reviews', [
        { matches: [match({ path: { type: 'RegularExpression', value: '^/(a+)+$' } })], backends: [backend('reviews')] },
        { matches: [match({ path: { type: 'PathPrefix', value: '/h' }, headers: [{ type: 'RegularExpression', name: 'x-id', value: '(x+x+)+y' }] })], backends: [backend('reviews')] },
      ])],
    }));
    listener = await startTunnelListener(engine, '10.96.0.10:80');
  });

  after(async () => {
    await listener.close();
    await engine.close();
    await b.close();
  });

  it('answers a catastrophic ^/(a+)+$ against a long aaaa…! path within a second', async () => {
    // V8's backtracking engine needs about 2^n steps here; n = 40 alone would take hours.
    const started = performance.now();
    const r = await request(listener.port, { path: `/${'a'.repeat(8000)}!` });
    const ms = performance.now() - started;
    assert.equal(r.status, 404);
    assert.ok(ms < 1000, `${ms.toFixed(0)} ms`);
    assert.equal((await request(listener.port, { path: '/aaaa' })).status, 200);
  });

  it('answers a catastrophic header regex within a second', async () => {
    const started = performance.now();
    const r = await request(listener.port, { path: '/h', headers: { 'x-id': `${'x'.repeat(8000)}z` } });
    assert.equal(r.status, 404);
    assert.ok(performance.now() - started < 1000);
    assert.equal((await request(listener.port, { path: '/h', headers: { 'x-id': 'xxy' } })).status, 200);
  });

  it('rejects patterns RE2 cannot compile, naming the field (route table and validation)', () => {
    const issues: Array<{ path: string; message: string }> = [];
    new RouteTable([route('bad', 'reviews', [
      { matches: [match({ path: { type: 'RegularExpression', value: '/(?=admin)' } })], backends: [backend('reviews')] },
      { matches: [match({ headers: [{ type: 'RegularExpression', name: 'x', value: '(a)\\1' }] })], backends: [backend('reviews')] },
      { matches: [match({ path: { type: 'RegularExpression', value: `/${'a'.repeat(2000)}` } })], backends: [backend('reviews')] },
    ])], new Set(['shop/reviews']), issues as never);
    assert.deepEqual(issues.map((i) => i.path), ['rules[0].matches[0].path.value', 'rules[1].matches[0].headers[0].value', 'rules[2].matches[0].path.value']);
    assert.match(issues[0]!.message, /not an RE2 regular expression/);
    assert.match(issues[2]!.message, /limit is 1024/);

    const problems = validateObject({
      apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'r', namespace: 'shop' },
      spec: { parentRefs: [{ kind: 'Service', name: 'reviews' }], rules: [{ matches: [{ path: { type: 'RegularExpression', value: '/(?!x)' } }] }] },
    });
    assert.ok(problems.some((p) => p.path === 'spec.rules[0].matches[0].path.value' && /RE2/.test(p.message)), JSON.stringify(problems));
  });
});

describe('the Service is chosen by the tunnel, never by Host alone (issue 16)', () => {
  let reviews: Backend;
  let payments: Backend;
  let engine: WaypointEngine;
  const listeners: Listener[] = [];

  before(async () => {
    reviews = await startHttpBackend(echo('reviews'));
    payments = await startHttpBackend(echo('payments'));
    engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    engine.applyConfig(config({
      services: [
        service('reviews', '10.96.0.10', [endpoint(reviews.port)]),
        service('payments', '10.96.0.30', [endpoint(payments.port)], { namespace: 'bank' }),
      ],
    }));
  });

  after(async () => {
    for (const l of listeners) await l.close();
    await engine.close();
    await reviews.close();
    await payments.close();
  });

  const listen = async (target: string): Promise<Listener> => {
    const l = await startTunnelListener(engine, target);
    listeners.push(l);
    return l;
  };

  it('a tunnel to a VIP reaches that Service whatever Host says', async () => {
    const l = await listen('10.96.0.10:80');
    const r = await request(l.port, { host: 'payments.bank.svc.cluster.local' });
    assert.equal(JSON.parse(r.body).backend, 'reviews');
    assert.equal(payments.hits, 0);
  });

  it('a tunnel to a workload address reaches a Service of that workload, not the one Host names', async () => {
    const l = await listen(`127.0.0.1:${reviews.port}`);
    const r = await request(l.port, { host: 'payments.bank.svc.cluster.local' });
    assert.equal(r.status, 200);
    assert.equal(JSON.parse(r.body).backend, 'reviews');
    assert.equal(payments.hits, 0);
  });

  it('a tunnel to an address no Service has gets 404, even with a valid Host', async () => {
    const l = await listen('10.1.2.3:80');
    const r = await request(l.port, { host: 'payments.bank.svc.cluster.local' });
    assert.equal(r.status, 404);
    assert.equal(payments.hits, 0);
  });
});

describe('URLRewrite ReplacePrefixMatch with an empty replacement (Gateway API HTTPPathModifier table)', () => {
  let b: Backend;
  let engine: WaypointEngine;
  let listener: Listener;

  before(async () => {
    b = await startHttpBackend(echo('reviews'));
    engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    engine.applyConfig(config({
      services: [service('reviews', '10.96.0.10', [endpoint(b.port)])],
      routes: [route('strip', 'reviews', [
        { matches: [match({ path: { type: 'PathPrefix', value: '/foo' } })], filters: [{ type: 'URLRewrite', path: { type: 'ReplacePrefixMatch', value: '' } }], backends: [backend('reviews')] },
        { matches: [match({ path: { type: 'PathPrefix', value: '/bar/' } })], filters: [{ type: 'URLRewrite', path: { type: 'ReplacePrefixMatch', value: '' } }], backends: [backend('reviews')] },
      ])],
    }));
    listener = await startTunnelListener(engine, '10.96.0.10:80');
  });

  after(async () => {
    await listener.close();
    await engine.close();
    await b.close();
  });

  it('rewrites /foo/bar to /bar, /foo/ and /foo to /', async () => {
    const url = async (path: string): Promise<string> => JSON.parse((await request(listener.port, { path })).body).url;
    assert.equal(await url('/foo/bar'), '/bar');
    assert.equal(await url('/foo/'), '/');
    assert.equal(await url('/foo'), '/');
    assert.equal(await url('/bar/baz?q=1'), '/baz?q=1');
  });

  it('is accepted by validation', () => {
    const problems = validateObject({
      apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'r', namespace: 'shop' },
      spec: {
        parentRefs: [{ kind: 'Service', name: 'reviews' }],
        rules: [{ matches: [{ path: { type: 'PathPrefix', value: '/foo' } }], filters: [{ type: 'URLRewrite', urlRewrite: { path: { type: 'ReplacePrefixMatch', replacePrefixMatch: '' } } }] }],
      },
    });
    assert.deepEqual(problems, []);
  });
});

describe('remote.ip is the last X-Forwarded-For address at the waypoint (Istio remoteIpBlocks)', () => {
  let b: Backend;
  let engine: WaypointEngine;
  let listener: Listener;

  before(async () => {
    b = await startHttpBackend(echo('reviews'));
    engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    engine.applyConfig(config({
      services: [service('reviews', '10.96.0.10', [endpoint(b.port)])],
      policies: [{
        name: 'no-doc-net', namespace: 'shop', scope: 'service', targetServices: ['shop/reviews'], action: 'DENY', layer: 'L7',
        rules: [{ from: [], to: [], when: [{ key: 'remote.ip', values: ['203.0.113.0/24'] }], layer: 'L7' }],
      }],
    }));
    listener = await startTunnelListener(engine, '10.96.0.10:80');
  });

  after(async () => {
    await listener.close();
    await engine.close();
    await b.close();
  });

  it('denies by the last X-Forwarded-For entry, not an earlier one, and ignores an entry that is not an address', async () => {
    assert.equal((await request(listener.port, { headers: { 'x-forwarded-for': '10.0.0.1, 203.0.113.7' } })).status, 403);
    assert.equal((await request(listener.port, { headers: { 'x-forwarded-for': '203.0.113.7, 10.0.0.1' } })).status, 200);
    assert.equal((await request(listener.port, { headers: { 'x-forwarded-for': 'not-an-address' } })).status, 200);
    const r = await request(listener.port);
    assert.equal(r.status, 200);
    // The tunnel's source is appended for the backend (it is not what remote.ip read).
    assert.equal(JSON.parse(r.body).headers['x-forwarded-for'], '127.0.0.1');
  });
});
