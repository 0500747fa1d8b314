// Downstream timeouts at the waypoint: --header-timeout and --idle-timeout parsing, slow clients
// cut within the header timeout (HTTP/1.1: 408; HTTP/2: GOAWAY) over a TCP socket and over the
// duplexPair an HBONE tunnel is, idle connections closed, and healthy long requests, bodies,
// responses and streams left alone.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { join } from 'node:path';
import { duplexPair, type Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { H2_PREFACE, h2Frame } from '../lab/h2-frames.ts';
import { after, before, describe, it } from 'node:test';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { FlagError } from '../../waypoint/src/errors.ts';
import { parseFlags } from '../../waypoint/src/main.ts';
import { timeoutCheckIntervalMs } from '../../lib/listener-limits.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import {
  CALLER, config, echo, endpoint, h2request, metricSamples, service, startHttpBackend, startTunnelListener,
  type Backend, type Listener,
} from '../../waypoint/testing/harness.ts';

/** No test may hang: each fails after this long. */
const T = { timeout: 20_000 };
const BASE = ['--namespace', 'shop', '--name', 'waypoint', '--controller', 'c:1'];
const VIP = '10.96.0.10:80';

describe('waypoint timeout flags', () => {
  it('defaults to a 10 s header timeout and a 60 s idle timeout', () => {
    const o = parseFlags(BASE, {});
    assert.equal(o.headerTimeoutMs, 10_000);
    assert.equal(o.idleTimeoutMs, 60_000);
  });

  it('takes seconds, fractions included', () => {
    const o = parseFlags([...BASE, '--header-timeout', '2.5', '--idle-timeout', '90'], {});
    assert.equal(o.headerTimeoutMs, 2500);
    assert.equal(o.idleTimeoutMs, 90_000);
    assert.equal(parseFlags([...BASE, '--header-timeout=0.2'], {}).headerTimeoutMs, 200);
  });

  it('rejects zero, negative, non-numeric and huge values with an error naming the flag', () => {
    for (const flag of ['header-timeout', 'idle-timeout']) {
      for (const bad of ['0', '0.0', '-1', '-0.5', 'abc', '', '10s', '1e3', 'NaN', 'Infinity', '0x10', '100000']) {
        assert.throws(() => parseFlags([...BASE, `--${flag}=${bad}`], {}), (e: Error) => e instanceof FlagError && e.message.startsWith(`--${flag}: `), `--${flag}=${bad}`);
      }
      assert.throws(() => parseFlags([...BASE, `--${flag}=0.0001`], {}), /less than a millisecond/);
      // Without '=' a negative value reads as another option; parseArgs names the flag.
      assert.throws(() => parseFlags([...BASE, `--${flag}`, '-3'], {}), (e: Error) => e instanceof FlagError && e.message.includes(`--${flag}`));
      assert.throws(() => parseFlags([...BASE, `--${flag}`], {}), (e: Error) => e instanceof FlagError && e.message.includes(`--${flag}`));
    }
  });

  it('makes the waypoint exit with status 2 and the reason on stderr', () => {
    const main = join(import.meta.dirname, '..', '..', 'waypoint', 'src', 'main.ts');
    const r = spawnSync(process.execPath, [main, ...BASE, '--header-timeout', '0'], { encoding: 'utf8', timeout: 20_000 });
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /^waypoint: --header-timeout: "0" is not a positive number of seconds/);
  });

  it('checks for expired connections often enough to cut within the timeout plus at most 1 s', () => {
    assert.equal(timeoutCheckIntervalMs(10_000), 1000);
    assert.equal(timeoutCheckIntervalMs(2000), 500);
    assert.equal(timeoutCheckIntervalMs(2), 1);
  });

  it('refuses out-of-range engine options', () => {
    for (const bad of [{ requestHeadersTimeoutMs: 0 }, { idleTimeoutMs: -1 }, { requestHeadersTimeoutMs: 1.5 }, { idleTimeoutMs: 2 ** 31 }]) {
      assert.throws(() => new WaypointEngine({ namespace: 'shop', name: 'wp', upstream: new TcpUpstream(), telemetry: { accessLog: null }, ...bad }), RangeError);
    }
  });
});

// ---------------------------------------------------------------------------------------------

/** The client end of a connection to the engine: a TCP socket to a listener, or a duplexPair end. */
type Conn = net.Socket | Duplex;

const engineEnds = new WeakMap<Duplex, Duplex>();

/** A tunnel shaped like the HBONE one (waypoint/src/hbone.ts): one end of an in-memory pair. */
function pairTunnel(engine: WaypointEngine): Duplex {
  const [ours, theirs] = duplexPair();
  engineEnds.set(theirs, ours);
  engine.handleTunnel(ours, { target: VIP, peerSpiffeId: CALLER, clientAddress: '10.0.0.9' });
  return theirs;
}

/** Closes a client connection, both ends of a pair (the HBONE server tears down both). */
function hangUp(c: Conn): void {
  c.destroy();
  engineEnds.get(c)?.destroy();
}

function tcp(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
}

/** How long a test waits for the waypoint to cut a connection before calling it never. */
const GIVE_UP_MS = 6000;

/**
 * Resolves when the waypoint ends the connection (end or close), with everything it sent; atMs is
 * Infinity if it was still open after GIVE_UP_MS.
 */
function whenCut(c: Conn): Promise<{ atMs: number; reply: string }> {
  const started = Date.now();
  let reply = '';
  c.on('data', (d: Buffer) => { reply += d.toString('latin1'); });
  c.on('error', () => {});
  return new Promise((resolve) => {
    const giveUp = setTimeout(() => resolve({ atMs: Infinity, reply }), GIVE_UP_MS);
    const done = (): void => { clearTimeout(giveUp); resolve({ atMs: Date.now() - started, reply }); };
    c.once('end', done);
    c.once('close', done);
  });
}

/** Sends a request line, then one header line every `everyMs`, never the blank line. */
function trickle(c: Conn, everyMs: number, path = '/slow'): () => void {
  c.write(`GET ${path} HTTP/1.1\r\nhost: reviews\r\n`);
  let i = 0;
  const t = setInterval(() => { if (c.writable) c.write(`x-trickle-${i++}: ${Date.now()}\r\n`); }, everyMs);
  return () => clearInterval(t);
}

/** One HTTP/1.1 request on an open connection; resolves with the status and body. */
function requestOn(c: Conn, path = '/'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ createConnection: () => c as net.Socket, path, headers: { host: 'reviews', connection: 'keep-alive' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function counter(engine: WaypointEngine, protocol: string, timeout: string): Promise<number> {
  return (await metricSamples(engine, 'weft_waypoint_downstream_timeouts_total'))
    .filter((s) => s.labels['protocol'] === protocol && s.labels['timeout'] === timeout)
    .reduce((n, s) => n + s.value, 0);
}

/** Backend: `/stream?n=N&every=MS` writes N chunks MS apart; everything else echoes. */
function streamingBackend(): Promise<Backend> {
  const e = echo('reviews');
  return startHttpBackend((req, res) => {
    const u = new URL(req.url ?? '/', 'http://x');
    if (u.pathname !== '/stream') { e(req, res); return; }
    const n = Number(u.searchParams.get('n'));
    const every = Number(u.searchParams.get('every'));
    res.writeHead(200, { 'content-type': 'text/plain' });
    let i = 0;
    const t = setInterval(() => {
      res.write(`chunk ${i}\n`);
      if (++i === n) { clearInterval(t); res.end(); }
    }, every);
    res.on('close', () => clearInterval(t));
  });
}

const HEADER_MS = 500;
const IDLE_MS = 600;
const INTERVAL_MS = timeoutCheckIntervalMs(HEADER_MS);
/** Scheduling slack on a loaded test machine. */
const SLACK_MS = 400;

/**
 * For one describe block: a waypoint engine with the short test timeouts, listening for tunnels to
 * VIP, in front of a streaming backend; built before the block's tests, closed after them.
 */
function engineUnderTest(): { b: Backend; engine: WaypointEngine; l: Listener } {
  const f = {} as { b: Backend; engine: WaypointEngine; l: Listener };
  before(async () => {
    f.b = await streamingBackend();
    f.engine = new WaypointEngine({
      namespace: 'shop', name: 'wp', upstream: new TcpUpstream(), telemetry: { accessLog: null },
      requestHeadersTimeoutMs: HEADER_MS, idleTimeoutMs: IDLE_MS,
    });
    f.engine.applyConfig(config({ services: [service('reviews', '10.96.0.10', [endpoint(f.b.port)])] }));
    f.l = await startTunnelListener(f.engine, VIP);
  });
  after(async () => {
    await f.l.close();
    await f.engine.close();
    await f.b.close();
  });
  return f;
}

describe('waypoint HTTP/1.1 timeouts', () => {
  const f = engineUnderTest();

  for (const via of ['TCP', 'an HBONE-shaped duplexPair'] as const) {
    it(`cuts a client trickling headers with 408 within the header timeout, over ${via}, while another connection is served`, T, async () => {
      const before408 = await counter(f.engine, 'HTTP/1.1', 'request_headers');
      const c: Conn = via === 'TCP' ? await tcp(f.l.port) : pairTunnel(f.engine);
      const cut = whenCut(c);
      const stop = trickle(c, 50);
      try {
        await sleep(HEADER_MS / 2);
        // A normal request on another connection while the slow one is mid-headers.
        const other: Conn = via === 'TCP' ? await tcp(f.l.port) : pairTunnel(f.engine);
        const ok = await requestOn(other, '/normal');
        assert.equal(ok.status, 200);
        assert.equal(JSON.parse(ok.body).url, '/normal');
        hangUp(other);
        const { atMs, reply } = await cut;
        assert.match(reply, /^HTTP\/1\.1 408 Request Timeout\r\n/);
        assert.match(reply, /\r\nconnection: close\r\n/i);
        assert.ok(atMs >= HEADER_MS - 50, `not cut before the timeout (${atMs} ms)`);
        assert.ok(atMs <= HEADER_MS + INTERVAL_MS + SLACK_MS, `cut within the timeout plus one check interval (${atMs} ms)`);
      } finally {
        stop();
        hangUp(c);
      }
      assert.equal(await counter(f.engine, 'HTTP/1.1', 'request_headers'), before408 + 1);
      const samples = await metricSamples(f.engine, 'istio_requests_total');
      assert.ok(samples.some((s) => s.labels['response_code'] === '408'), 'the 408 is in istio_requests_total');
    });
  }

  it('times the headers of each request on a keep-alive connection anew', T, async () => {
    const c = await tcp(f.l.port);
    const first = await requestOn(c, '/first');
    assert.equal(first.status, 200);
    // Well past the header timeout since the connection opened, the next request is still welcome.
    await sleep(HEADER_MS + 2 * INTERVAL_MS);
    assert.equal((await requestOn(c, '/second')).status, 200);
    const cut = whenCut(c);
    const stop = trickle(c, 50, '/third');
    try {
      const { atMs, reply } = await cut;
      assert.match(reply, /^HTTP\/1\.1 408 /);
      assert.ok(atMs <= HEADER_MS + INTERVAL_MS + SLACK_MS, `third request cut in ${atMs} ms`);
    } finally {
      stop();
      hangUp(c);
    }
  });

  it('does not cut a request whose body arrives slowly after complete headers', T, async () => {
    const c = await tcp(f.l.port);
    const got = new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = http.request({ createConnection: () => c, method: 'POST', path: '/upload', headers: { host: 'reviews', 'content-length': '30' } }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => { body += d; });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      });
      req.on('error', reject);
      req.flushHeaders();
      void (async () => {
        // 3 bytes every 200 ms: 2 s in all, four times the header timeout.
        for (let i = 0; i < 10; i++) { await sleep(200); req.write('abc'); }
        req.end();
      })();
    });
    const r = await got;
    assert.equal(r.status, 200);
    assert.equal(JSON.parse(r.body).body, 'abc'.repeat(10));
    hangUp(c);
  });

  it('does not cut a response that streams for longer than either timeout', T, async () => {
    for (const via of ['TCP', 'duplexPair'] as const) {
      const c: Conn = via === 'TCP' ? await tcp(f.l.port) : pairTunnel(f.engine);
      const started = Date.now();
      const r = await requestOn(c, '/stream?n=12&every=150');
      assert.equal(r.status, 200);
      assert.equal(r.body.split('\n').filter(Boolean).length, 12, `${via}: all 12 chunks`);
      assert.ok(Date.now() - started >= 1500, 'the response outlasted both timeouts');
      hangUp(c);
    }
  });

  for (const via of ['TCP', 'an HBONE-shaped duplexPair'] as const) {
    it(`closes a keep-alive connection idle between requests, over ${via}`, T, async () => {
      const idleBefore = await counter(f.engine, 'HTTP/1.1', 'idle');
      const c: Conn = via === 'TCP' ? await tcp(f.l.port) : pairTunnel(f.engine);
      assert.equal((await requestOn(c, '/one')).status, 200);
      const cut = whenCut(c);
      const { atMs, reply } = await cut;
      assert.ok(atMs !== Infinity, 'closed at all');
      assert.equal(reply, '', 'closed without a response');
      // node closes idle keep-alive connections keepAliveTimeoutBuffer (1 s) after the advertised timeout.
      assert.ok(atMs >= IDLE_MS - 50 && atMs <= IDLE_MS + 1000 + SLACK_MS, `idle connection closed after ${atMs} ms`);
      assert.equal(await counter(f.engine, 'HTTP/1.1', 'idle'), idleBefore + 1);
      hangUp(c);
    });
  }
});

// ---------------------------------------------------------------------------------------------
// HTTP/2, raw frames for the slow client.

const frame = h2Frame;
const PREFACE = H2_PREFACE;
const SETTINGS = frame(0x4, 0, 0, Buffer.alloc(0));
const SETTINGS_ACK = frame(0x4, 0x1, 0, Buffer.alloc(0));
/** HPACK: GET (0x82), / (0x84), http (0x86), then a literal :authority. */
const REQUEST_BLOCK = Buffer.concat([Buffer.from([0x82, 0x84, 0x86, 0x01, 7]), Buffer.from('reviews')]);
const END_STREAM = 0x1;
const END_HEADERS = 0x4;

/** A raw HTTP/2 client: records GOAWAY and when the waypoint ends the connection. */
function rawH2(c: Conn): { goaway: () => number | undefined; responses: () => number[]; cut: Promise<number> } {
  const started = Date.now();
  let goaway: number | undefined;
  const responses: number[] = [];
  let buf = Buffer.alloc(0);
  c.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 9) {
      const len = buf.readUIntBE(0, 3);
      if (buf.length < 9 + len) break;
      if (buf[3] === 0x7 && goaway === undefined) goaway = buf.readUInt32BE(9 + 4);
      if (buf[3] === 0x1) responses.push(buf.readUInt32BE(5) & 0x7fffffff);
      if (buf[3] === 0x4 && (buf[4]! & 0x1) === 0) c.write(SETTINGS_ACK);
      buf = buf.subarray(9 + len);
    }
  });
  c.on('error', () => {});
  const cut = new Promise<number>((resolve) => {
    const giveUp = setTimeout(() => resolve(Infinity), GIVE_UP_MS);
    const done = (): void => { clearTimeout(giveUp); resolve(Date.now() - started); };
    c.once('end', done);
    c.once('close', done);
  });
  c.write(Buffer.concat([PREFACE, SETTINGS]));
  return { goaway: () => goaway, responses: () => responses, cut };
}

describe('waypoint HTTP/2 timeouts', () => {
  const f = engineUnderTest();

  for (const via of ['TCP', 'an HBONE-shaped duplexPair'] as const) {
    it(`ends a session whose HEADERS never reach END_HEADERS within the header timeout, over ${via}, while another session is served`, T, async () => {
      const before = await counter(f.engine, 'HTTP/2', 'request_headers');
      const c: Conn = via === 'TCP' ? await tcp(f.l.port) : pairTunnel(f.engine);
      const h = rawH2(c);
      // One complete request first: the session is in use, then a header block that never ends.
      c.write(frame(0x1, END_HEADERS | END_STREAM, 1, REQUEST_BLOCK));
      for (let i = 0; i < 40 && !h.responses().includes(1); i++) await sleep(25);
      assert.ok(h.responses().includes(1), 'the complete request was answered');
      const stalledAt = Date.now();
      c.write(frame(0x1, END_STREAM, 3, REQUEST_BLOCK.subarray(0, 3)));

      const session = http2.connect(`http://127.0.0.1:${f.l.port}`);
      try {
        assert.equal((await h2request(session, { ':path': '/normal', ':authority': 'reviews' })).status, 200);
      } finally {
        session.close();
      }
      const cutAt = await h.cut;
      const atMs = cutAt === Infinity ? Infinity : Date.now() - stalledAt;
      assert.equal(h.goaway(), 0, 'GOAWAY NO_ERROR before the close');
      assert.ok(atMs >= HEADER_MS - 50, `not cut before the timeout (${atMs} ms)`);
      assert.ok(atMs <= HEADER_MS + 2 * INTERVAL_MS + SLACK_MS, `cut within the timeout plus the check interval (${atMs} ms)`);
      assert.equal(await counter(f.engine, 'HTTP/2', 'request_headers'), before + 1);
      hangUp(c);
    });
  }

  it('ends a session that sends only PINGs once it has been idle for the idle timeout', T, async () => {
    const before = await counter(f.engine, 'HTTP/2', 'idle');
    const c = await tcp(f.l.port);
    const h = rawH2(c);
    const pings = setInterval(() => { if (c.writable) c.write(frame(0x6, 0, 0, Buffer.alloc(8))); }, 50);
    try {
      const atMs = await h.cut;
      assert.equal(h.goaway(), 0);
      assert.ok(atMs >= IDLE_MS - 50 && atMs <= IDLE_MS + INTERVAL_MS + 1000 + SLACK_MS, `idle session ended after ${atMs} ms`);
    } finally {
      clearInterval(pings);
      hangUp(c);
    }
    assert.equal(await counter(f.engine, 'HTTP/2', 'idle'), before + 1);
  });

  it('keeps a session with a stream open longer than both timeouts, and closes it once idle', T, async () => {
    const session = http2.connect(`http://127.0.0.1:${f.l.port}`);
    let goaway = false;
    session.on('goaway', () => { goaway = true; });
    const closed = new Promise<number>((r) => session.once('close', () => r(Date.now())));
    try {
      const started = Date.now();
      // A response streaming for 1.8 s, and a request body trickling for 1.2 s on another stream.
      const [streamed, uploaded] = await Promise.all([
        h2request(session, { ':path': '/stream?n=12&every=150', ':authority': 'reviews' }),
        new Promise<{ status: number; body: string }>((resolve, reject) => {
          const s = session.request({ ':path': '/upload', ':method': 'POST', ':authority': 'reviews' });
          let status = 0;
          let body = '';
          s.on('response', (h) => { status = Number(h[':status']); });
          s.setEncoding('utf8');
          s.on('data', (d: string) => { body += d; });
          s.on('end', () => resolve({ status, body }));
          s.on('error', reject);
          void (async () => {
            for (let i = 0; i < 6; i++) { await sleep(200); s.write('xyz'); }
            s.end();
          })();
        }),
      ]);
      assert.equal(streamed.status, 200);
      assert.equal(streamed.body.split('\n').filter(Boolean).length, 12);
      assert.equal(uploaded.status, 200);
      assert.equal(JSON.parse(uploaded.body).body, 'xyz'.repeat(6));
      assert.ok(Date.now() - started >= 1500, 'the streams outlasted both timeouts');
      assert.equal(goaway, false, 'no GOAWAY while streams were open');
      const endedAt = Date.now();
      const closedAt = await Promise.race([closed, sleep(GIVE_UP_MS).then(() => Infinity)]);
      assert.ok(goaway, 'GOAWAY once idle');
      assert.ok(closedAt - endedAt <= IDLE_MS + INTERVAL_MS + SLACK_MS, `closed ${closedAt - endedAt} ms after the last stream`);
    } finally {
      session.destroy();
    }
  });
});
