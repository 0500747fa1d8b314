// HTTP/1.1 to one endpoint over pooled keep-alive connections (RFC 9112): the waypoint's upstream
// client for endpoints that speak HTTP/1.1, and for protocol upgrades (WebSocket), where a 101 hands
// the connection over to the caller (UpstreamPool.upgrade).
//
// It replaces http.request + http.Agent, whose per-request objects (ClientRequest, the Agent's
// queues, IncomingMessage) were the largest share of the waypoint's CPU per request after its own
// telemetry (docs/PERFORMANCE.md, "the waypoint's upstream client"). A request here is one string
// written for its head, the body streamed with backpressure, and the response parsed by the same
// parser http.request uses (Node's llhttp binding, strict: no lenient flags), so what the backend
// may send is exactly what it could send before: a duplicate or conflicting Content-Length, a bad
// chunk size or a malformed status line is a reset, never a guess.
//
// On the wire a request looks as http.request wrote it (test/unit/waypoint-h1client.test.ts holds
// the two side by side): the caller's header order, `Connection: keep-alive` unless the caller sent
// a Connection field, `Content-Length: 0` for a body-less request of a method that defines a body,
// arrays as repeated fields (Cookie joined with `; `). Response headers are merged as Node's
// IncomingMessage merges them (message.headers in Node's documentation).
import { createRequire } from 'node:module';
import { Readable, type Duplex } from 'node:stream';
import { FIELD_BYTES_BAD } from '../../lib/field-bytes.ts';
import { UpstreamResetError } from './errors.ts';
import { isToken, type HeaderMap } from './headers.ts';
import type { UpstreamRequest, UpstreamResponse } from './upstream.ts';

/** Node's llhttp binding, as `_http_common` exports it to http.request and http.Server. */
interface HttpParser {
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
  execute(chunk: Buffer): number | ParseError;
  finish(): ParseError | undefined;
  close(): void;
  [callback: number]: unknown;
}
interface ParseError extends Error {
  code?: string;
  reason?: string;
}
interface HttpParserClass {
  new (): HttpParser;
  RESPONSE: number;
  kOnMessageBegin: number;
  kOnHeaders: number;
  kOnHeadersComplete: number;
  kOnBody: number;
  kOnMessageComplete: number;
}
const { HTTPParser } = createRequire(import.meta.url)('_http_common') as { HTTPParser: HttpParserClass };

/**
 * Why a connection was given up for what its endpoint sent (weft_waypoint_upstream_protocol_errors_total,
 * as Envoy's upstream_cx_protocol_error): a response llhttp refuses; a response begun when none was
 * asked for (RFC 9112 section 9.3: bytes after a complete response, the "body" of a 204 or of the
 * answer to HEAD, or on an idle connection); a 101 to a request that asked for no upgrade.
 */
export type H1ProtocolError = 'malformed_response' | 'unsolicited_response' | 'unexpected_upgrade';

/** The detail of an unsolicited_response. */
const UNSOLICITED = 'a response began with no request waiting for one';

/** Header pairs kept from one response, as http.request's default maxHeadersCount. */
const MAX_HEADER_PAIRS = 2000;

/** Fields of which Node keeps the first and drops repeats (message.headers). */
const FIRST_ONLY = new Set([
  'age', 'authorization', 'content-length', 'content-type', 'etag', 'expires', 'from', 'host', 'if-modified-since',
  'if-unmodified-since', 'last-modified', 'location', 'max-forwards', 'proxy-authorization', 'referer', 'retry-after',
  'server', 'user-agent',
]);

/** Methods http.request sends without framing when there is no body; every other one gets `Content-Length: 0`. */
const NO_BODY_BY_DEFAULT = new Set(['GET', 'HEAD', 'DELETE', 'OPTIONS', 'TRACE', 'CONNECT']);

/** A request target: no spaces, controls or characters beyond Latin-1 (as http.request refuses). */
const BAD_PATH = /[^\u0021-\u00ff]/;

/**
 * The framing field of raw `[name, value, ...]` pairs that a 1xx or a 204, having no body, must not
 * carry (RFC 9110 section 8.6, RFC 9112 section 6.1): Transfer-Encoding, or a Content-Length but 0.
 */
function framingOf(raw: readonly string[]): string | undefined {
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    if (name === 'transfer-encoding') return 'Transfer-Encoding';
    if (name === 'content-length' && raw[i + 1]!.trim() !== '0') return 'Content-Length';
  }
  return undefined;
}

/** Merges raw `[name, value, ...]` pairs into `into` as Node's IncomingMessage does. */
export function mergeHeaderLines(raw: readonly string[], into: HeaderMap = {}): HeaderMap {
  const n = Math.min(raw.length, MAX_HEADER_PAIRS * 2);
  for (let i = 0; i + 1 < n; i += 2) {
    const name = raw[i]!.toLowerCase();
    const value = raw[i + 1]!;
    const prev = into[name];
    if (prev === undefined) into[name] = name === 'set-cookie' ? [value] : value;
    else if (name === 'set-cookie') (prev as string[]).push(value);
    else if (FIRST_ONLY.has(name)) continue;
    else into[name] = `${prev as string}${name === 'cookie' ? '; ' : ', '}${value}`;
  }
  return into;
}

/**
 * The request line and fields, as http.request writes them, or a TypeError naming the field that
 * cannot be sent (a name that is not a token, a value with a control character).
 */
export function requestHead(method: string, path: string, headers: HeaderMap, hasBody: boolean): { head: string; close: boolean } {
  if (!isToken(method)) throw new TypeError(`method must be a valid HTTP token ["${method}"]`);
  if (BAD_PATH.test(path)) throw new TypeError('request path contains unescaped characters');
  let head = `${method} ${path} HTTP/1.1\r\n`;
  let connection = false;
  let close = false;
  let framed = false;
  for (const name in headers) {
    const v = headers[name];
    if (v === undefined) continue;
    if (!isToken(name)) throw new TypeError(`header name must be a valid HTTP token ["${name}"]`);
    const lower = name.toLowerCase();
    if (lower === 'connection') { connection = true; close ||= /(?:^|,)\s*close\s*(?:,|$)/i.test(Array.isArray(v) ? v.join(',') : v); }
    else if (lower === 'content-length' || lower === 'transfer-encoding') framed = true;
    const values = Array.isArray(v) ? (v.length > 1 && lower === 'cookie' ? [v.join('; ')] : v) : [v];
    for (const one of values) {
      const s = String(one);
      if (FIELD_BYTES_BAD.test(s)) throw new TypeError(`invalid character in header content ["${name}"]`);
      head += `${name}: ${s}\r\n`;
    }
  }
  if (!connection) head += 'Connection: keep-alive\r\n';
  if (!hasBody && !framed && !NO_BODY_BY_DEFAULT.has(method)) head += 'Content-Length: 0\r\n';
  return { head: head + '\r\n', close };
}

/** One request and its response on a connection. */
class Exchange {
  readonly addr: string;
  readonly head: boolean;
  /** The request asked to switch protocols (RFC 9110 section 7.8): a 101 hands over the connection. */
  upgrade = false;
  /** 'waiting' for the response head; 'body' streaming it; 'done' either way. */
  state: 'waiting' | 'body' | 'done' = 'waiting';
  requestDone = false;
  responseDone = false;
  keepAlive = false;
  readonly resolve: (r: UpstreamResponse) => void;
  readonly reject: (err: Error) => void;
  body: ResponseBody | undefined;
  trailers: HeaderMap | undefined;
  /** Raw header lines before the head completed (many fields), then the trailer lines. */
  lines: string[] = [];
  readonly #signal: AbortSignal;
  #onAbort: (() => void) | undefined;
  /** Detaches from the request body, while it is being sent. */
  bodyStop: (() => void) | undefined;

  constructor(addr: string, method: string, signal: AbortSignal, resolve: (r: UpstreamResponse) => void, reject: (err: Error) => void) {
    this.addr = addr;
    this.head = method === 'HEAD';
    this.#signal = signal;
    this.resolve = resolve;
    this.reject = reject;
  }

  onAbort(f: () => void): void {
    this.#onAbort = f;
    this.#signal.addEventListener('abort', f, { once: true });
  }

  /** The exchange is over: no more request body, no more cancellation. */
  stop(): void {
    if (this.#onAbort) { this.#signal.removeEventListener('abort', this.#onAbort); this.#onAbort = undefined; }
    const b = this.bodyStop;
    this.bodyStop = undefined;
    b?.();
  }
}

/** A response body: pauses the connection while its reader is behind. */
class ResponseBody extends Readable {
  readonly #conn: H1Connection;
  readonly #ex: Exchange;
  constructor(conn: H1Connection, ex: Exchange) {
    super();
    this.#conn = conn;
    this.#ex = ex;
  }
  override _read(): void {
    this.#conn.resumeReading();
  }
  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    // Left before its end (a discarded response, a client gone): the rest can only be cut.
    if (!this.#ex.responseDone) this.#conn.destroy();
    // As IncomingMessage: the error is emitted only to a listener. A reader that comes later (the
    // body failed in the same read as its head) sees the body closed before its end.
    cb(this.listenerCount('error') > 0 ? err : null);
  }
}

export class H1Connection {
  readonly duplex: Duplex;
  readonly #parser: HttpParser;
  readonly #pool: H1Pool;
  #ex: Exchange | undefined;
  /** A 1xx response is being parsed: its completion is not the response's. */
  #informational = false;
  /** No new request goes on it (draining carrier, `Connection: close`, an error). */
  retired = false;
  closed = false;
  /** Given up for what the endpoint sent (#refuse): counted once, whatever follows. */
  #refused = false;
  /**
   * A response began with none outstanding (#beginUnsolicited): the connection closes, and is counted
   * once the response's status is known (#onHead) or, if its head never completes, at close.
   */
  #unsolicited = false;

  constructor(duplex: Duplex, pool: H1Pool) {
    this.duplex = duplex;
    this.#pool = pool;
    const p = (this.#parser = new HTTPParser());
    p.initialize(HTTPParser.RESPONSE, {}, 0, 0);
    // A response starts (its first byte, CR/LF between messages aside) only while a request waits for
    // one: anything else closes the connection, before the parser keeps any of it. Bytes kept from
    // behind a complete response (a 204's "body", a partial head) would be the start of the next
    // request's answer. This callback (one call into JavaScript a response, about 0.1 µs) is the only
    // place Node's parser binding says where a message begins: its other callbacks give no position,
    // the one at a message's end cannot stop the parser there (as Envoy's codec pauses), and it has no
    // state to ask, so bytes after a complete response in the same read could not be told apart.
    p[HTTPParser.kOnMessageBegin] = () => { if (this.#ex?.state !== 'waiting') this.#beginUnsolicited(); };
    p[HTTPParser.kOnHeaders] = (lines: string[]) => { const ex = this.#ex; if (ex) for (const l of lines) ex.lines.push(l); };
    p[HTTPParser.kOnHeadersComplete] = (_maj: number, _min: number, lines: string[] | undefined, _m: unknown, _u: unknown, status: number, _msg: string, upgrade: boolean, keepAlive: boolean) =>
      this.#onHead(lines, status, upgrade, keepAlive);
    p[HTTPParser.kOnBody] = (chunk: Buffer) => {
      const body = this.#ex?.body;
      if (body && !body.destroyed && !body.push(chunk)) this.duplex.pause();
    };
    p[HTTPParser.kOnMessageComplete] = () => this.#onComplete();
    duplex.on('data', this.#listeners.data);
    duplex.on('end', this.#listeners.end);
    duplex.on('error', this.#listeners.error);
    duplex.on('close', this.#listeners.close);
  }

  readonly #listeners = {
    data: (chunk: Buffer): void => this.#onData(chunk),
    end: (): void => this.#onEnd(),
    error: (err: Error): void => this.#fail(new UpstreamResetError(this.#ex?.addr ?? this.#pool.addr, err.message, err)),
    close: (): void => this.#onClose(),
  };

  /** A 101 to an upgrade, parsed: handed over once the parser says where the new protocol starts. */
  #switching: { ex: Exchange; status: number; headers: HeaderMap } | undefined;

  /** Sends `r` (its head already made); resolves with the response head, its body streaming. */
  send(r: UpstreamRequest, head: string, close: boolean, upgrade = false): Promise<UpstreamResponse> {
    this.duplex.resume();
    // After an upgrade request the connection belongs to that exchange: switched, or closed after the answer.
    if (close || upgrade) this.retired = true;
    return new Promise<UpstreamResponse>((resolve, reject) => {
      const ex = new Exchange(this.#pool.addr, r.method, r.signal, resolve, reject);
      ex.upgrade = upgrade;
      this.#ex = ex;
      if (r.signal.aborted) { this.#cancel(ex); return; }
      ex.onAbort(() => this.#cancel(ex));
      this.duplex.write(head, 'latin1');
      if (!r.body) { ex.requestDone = true; this.#settle(ex); return; }
      this.#sendBody(ex, r.body, r.headers);
    });
  }

  #cancel(ex: Exchange): void {
    if (this.#ex !== ex) return;
    this.#fail(new UpstreamResetError(ex.addr, 'cancelled'));
    this.destroy();
  }

  /** Streams the request body, framed by the caller's Content-Length or chunked, with backpressure. */
  #sendBody(ex: Exchange, body: Readable, headers: HeaderMap): void {
    const cl = headers['content-length'];
    const declared = cl === undefined ? undefined : Number(Array.isArray(cl) ? cl[0] : cl);
    const chunked = declared === undefined;
    let sent = 0;
    const d = this.duplex;
    const onDrain = (): void => { body.resume(); };
    const onData = (c: Buffer): void => {
      if (ex.state === 'done') return;
      sent += c.length;
      // Never more than the length the head announced: the rest would be read as another request.
      if (declared !== undefined && sent > declared) { this.#fail(new UpstreamResetError(ex.addr, 'request body longer than its Content-Length')); this.destroy(); return; }
      let ok: boolean;
      if (chunked) {
        if (c.length === 0) return;
        d.cork();
        d.write(`${c.length.toString(16)}\r\n`, 'latin1');
        d.write(c);
        ok = d.write('\r\n', 'latin1');
        d.uncork();
      } else {
        ok = d.write(c);
      }
      if (!ok) { body.pause(); d.once('drain', onDrain); }
    };
    const onEnd = (): void => {
      stop();
      if (ex.state === 'done' && ex.responseDone === false) return;
      if (declared !== undefined && sent < declared) { this.#fail(new UpstreamResetError(ex.addr, 'request body shorter than its Content-Length')); this.destroy(); return; }
      if (chunked) d.write('0\r\n\r\n', 'latin1');
      ex.requestDone = true;
      this.#settle(ex);
    };
    const onError = (err: Error): void => {
      stop();
      this.#fail(new UpstreamResetError(ex.addr, `request body: ${err.message}`, err));
      this.destroy();
    };
    const stop = (): void => {
      body.off('data', onData);
      body.off('end', onEnd);
      body.off('error', onError);
      d.off('drain', onDrain);
    };
    ex.bodyStop = stop;
    body.on('data', onData);
    body.once('end', onEnd);
    body.once('error', onError);
    body.resume();
  }

  #onHead(lines: string[] | undefined, status: number, upgrade: boolean, keepAlive: boolean): number {
    const ex = this.#ex;
    if (!ex || ex.state !== 'waiting') {
      // A response nobody asked for (kOnMessageBegin has retired the connection). A 408 is its server
      // closing it (RFC 9110 section 15.5.9): let go uncounted, as Envoy lets a premature 408 through
      // when no request is outstanding; anything else is counted.
      if (status === 408) this.#refused = true;
      else this.#refuse('unsolicited_response', UNSOLICITED);
      return 0;
    }
    const raw = lines && lines.length > 0 ? (ex.lines.length > 0 ? ex.lines.concat(lines) : lines) : ex.lines;
    ex.lines = [];
    if (status < 100 || status > 599) {
      // Three digits, 100 to 599 (RFC 9110 section 15); llhttp takes any three. Not informational,
      // nor a final answer of a class nobody defines.
      return this.#refuseResponse(ex, 'malformed_response', `malformed response: status ${status} is not of 100 to 599 (RFC 9110 section 15)`);
    }
    const bodiless = (status < 200 && status !== 101) || status === 204;
    const framing = bodiless ? framingOf(raw) : undefined;
    if (framing) {
      // No body, and no framing that says otherwise to whoever reads it next (our client, relayed).
      return this.#refuseResponse(ex, 'malformed_response', `malformed response: ${framing} in a 1xx or 204 (RFC 9110 section 8.6, RFC 9112 section 6.1)`);
    }
    if (status < 200 && status !== 101) {
      // 100 Continue, 103 Early Hints: not the response (http.request's 'information'); wait on.
      this.#informational = true;
      return 0;
    }
    if (upgrade || status === 101) {
      if (ex.upgrade && status === 101) {
        // Switching protocols: no body; the bytes after the head are the new protocol's (#onData).
        this.#switching = { ex, status, headers: mergeHeaderLines(raw) };
        return 2;
      }
      return this.#refuseResponse(ex, 'unexpected_upgrade', `unexpected ${status} to a request that asked for no upgrade`);
    }
    ex.state = 'body';
    ex.keepAlive = keepAlive;
    const body = (ex.body = new ResponseBody(this, ex));
    const headers = mergeHeaderLines(raw);
    // A 204's `Content-Length: 0` (framingOf lets only that one through) is not relayed: a server
    // MUST NOT send the field in a 204 (RFC 9110 section 8.6). Envoy drops it the same way.
    if (bodiless) delete headers['content-length'];
    ex.resolve({
      status,
      headers,
      body,
      endStreamOnHeaders: false,
      trailers: () => ex.trailers,
      discard: () => { body.destroy(); },
    });
    // The response to HEAD has no content whatever its fields say (RFC 9110 section 9.3.2).
    return ex.head ? 1 : 0;
  }

  #onComplete(): void {
    if (this.#informational) { this.#informational = false; return; }
    const ex = this.#ex;
    if (!ex || ex.state !== 'body') return;
    if (ex.lines.length > 0) { ex.trailers = mergeHeaderLines(ex.lines); ex.lines = []; }
    ex.responseDone = true;
    ex.state = 'done';
    ex.body!.push(null);
    this.#settle(ex);
  }

  /** Both halves over: the connection goes back to the pool, or closes. */
  #settle(ex: Exchange): void {
    if (!ex.responseDone) return;
    if (!ex.requestDone) {
      // Answered before the request was all sent (an early 413, say): what is left cannot follow.
      ex.stop();
      this.destroy();
      return;
    }
    ex.stop();
    if (this.#ex === ex) this.#ex = undefined;
    if (!ex.keepAlive || this.retired || this.closed) { this.destroy(); return; }
    this.#pool.idle(this);
  }

  #onData(chunk: Buffer): void {
    // Bytes on an idle connection are parsed too: what begins a response there closes the connection
    // (kOnMessageBegin), and its status decides whether it is counted (#onHead).
    const r = this.#parser.execute(chunk);
    const sw = this.#switching;
    if (sw && typeof r === 'number') { this.#handOver(sw, chunk.subarray(r)); return; }
    if (typeof r !== 'number') {
      const detail = `malformed response: ${r.reason ?? r.message}${r.code ? ` (${r.code})` : ''}`;
      // A response nobody asked for is counted as that (at close), however it was written.
      if (!this.#unsolicited) this.#refuse('malformed_response', detail);
      this.#fail(new UpstreamResetError(this.#ex?.addr ?? this.#pool.addr, detail, r));
      this.destroy();
    }
  }

  /**
   * The 101's connection leaves the pool with its bytes after the head: the caller joins it to the
   * client's (RFC 9110 section 7.8). Nothing here reads or closes it any more.
   */
  #handOver(sw: { ex: Exchange; status: number; headers: HeaderMap }, rest: Buffer): void {
    this.#switching = undefined;
    const { ex } = sw;
    const d = this.duplex;
    d.off('data', this.#listeners.data);
    d.off('end', this.#listeners.end);
    d.off('error', this.#listeners.error);
    d.off('close', this.#listeners.close);
    d.pause();
    ex.state = 'done';
    ex.responseDone = true;
    ex.stop();
    this.#ex = undefined;
    this.#release();
    const body = Readable.from([]);
    ex.resolve({
      status: sw.status, headers: sw.headers, body, endStreamOnHeaders: false,
      trailers: () => undefined, discard: () => { d.destroy(); },
      upgraded: { socket: d, head: rest },
    });
  }

  /**
   * The endpoint broke the protocol: no request goes on this connection again, and it is counted
   * once (what follows, such as the rest of an unsolicited response, is part of the same fault).
   */
  #refuse(reason: H1ProtocolError, detail: string): void {
    this.retired = true;
    if (this.#refused) return;
    this.#refused = true;
    this.#pool.onProtocolError(reason, this.#pool.addr, detail);
  }

  /** The response head in hand breaks the protocol: its request fails with `detail`; the connection closes once the parser has returned. */
  #refuseResponse(ex: Exchange, reason: H1ProtocolError, detail: string): 0 {
    this.#refuse(reason, detail);
    this.#fail(new UpstreamResetError(ex.addr, detail));
    setImmediate(() => this.destroy());
    return 0;
  }

  /** The endpoint began a response with none outstanding: no request goes on the connection again, and it closes (not inside the parser's callback). */
  #beginUnsolicited(): void {
    this.retired = true;
    if (this.#unsolicited) return;
    this.#unsolicited = true;
    setImmediate(() => this.destroy());
  }

  #onEnd(): void {
    // The peer's FIN ends a response that runs until close; any other unfinished one was cut.
    const r = this.#ex ? this.#parser.finish() : undefined;
    if (r) this.#fail(new UpstreamResetError(this.#ex?.addr ?? this.#pool.addr, `malformed response: ${r.reason ?? r.message}`, r));
    this.#fail(new UpstreamResetError(this.#pool.addr, 'connection closed before the response ended'));
    this.destroy();
  }

  #onClose(): void {
    this.#fail(new UpstreamResetError(this.#pool.addr, 'socket hang up'));
    this.destroy();
  }

  /** Ends the exchange in progress with `err`: before the response head a rejection, after it the body's error. */
  #fail(err: Error): void {
    const ex = this.#ex;
    if (!ex || ex.state === 'done') return;
    const state = ex.state;
    ex.state = 'done';
    ex.stop();
    this.#ex = undefined;
    if (state === 'waiting') ex.reject(err);
    else ex.body!.destroy(err);
  }

  resumeReading(): void {
    if (!this.closed) this.duplex.resume();
  }

  /** Idle in the pool since then (Date.now()); the pool closes it once idle too long. */
  park(): void {
    // Reading while idle, paused or not by the last body: a close or stray bytes are seen at once.
    this.duplex.resume();
    this.idleSince = Date.now();
  }

  idleSince = 0;

  get busy(): boolean {
    return this.#ex !== undefined;
  }

  destroy(): void {
    if (this.closed) return;
    // Closed first: failing the exchange may destroy its body, which comes back here.
    this.closed = true;
    // An unsolicited response whose head never completed (#onHead did not see it) is counted now.
    if (this.#unsolicited) this.#refuse('unsolicited_response', UNSOLICITED);
    this.#fail(new UpstreamResetError(this.#pool.addr, 'connection closed'));
    this.duplex.destroy();
    this.#release();
  }

  /** The connection leaves the pool (closed, or handed over after a 101): its parser goes too. */
  #release(): void {
    this.closed = true;
    this.retired = true;
    // Not from inside the parser's own callback (this may run in one): on the next turn.
    const parser = this.#parser;
    setImmediate(() => parser.close());
    this.#pool.forget(this);
  }
}

/**
 * Keep-alive connections to one endpoint for one caller: the most recently used idle one first
 * (LIFO, as the Agent ran with `scheduling: 'lifo'`), a new one when none is idle, no limit of its
 * own (circuit breaking limits requests before they get here).
 */
export class H1Pool {
  readonly addr: string;
  readonly #open: (onDraining: () => void) => Promise<Duplex>;
  readonly #idleMs: number;
  readonly #onEmpty: () => void;
  /** One of its connections to `endpoint` (its addr) was given up for what the endpoint sent. */
  readonly onProtocolError: (reason: H1ProtocolError, endpoint: string, detail: string) => void;
  readonly #idle: H1Connection[] = [];
  readonly #all = new Set<H1Connection>();
  #connecting = 0;
  #destroyed = false;
  #sweep: NodeJS.Timeout | undefined;

  /**
   * `onEmpty`: its last connection closed (the owner forgets it: pools are per caller, and callers
   * come and go). `onProtocolError`: a connection was given up for what the endpoint sent.
   */
  constructor(addr: string, open: (onDraining: () => void) => Promise<Duplex>, idleMs: number, onEmpty: () => void, onProtocolError: (reason: H1ProtocolError, endpoint: string, detail: string) => void) {
    this.addr = addr;
    this.#open = open;
    this.#idleMs = idleMs;
    this.#onEmpty = onEmpty;
    this.onProtocolError = onProtocolError;
  }

  /** `upgrade`: the request asks to switch protocols; a 101 resolves with `upgraded` (the connection, handed over). */
  async request(r: UpstreamRequest, upgrade = false): Promise<UpstreamResponse> {
    const { head, close } = requestHead(r.method, r.path, r.headers, r.body !== null);
    let conn: H1Connection | undefined;
    while ((conn = this.#idle.pop()) && (conn.closed || conn.retired)) conn.destroy();
    if (!conn) conn = await this.#connect(r.signal);
    return conn.send(r, head, close, upgrade);
  }

  async #connect(signal: AbortSignal): Promise<H1Connection> {
    this.#connecting++;
    let conn: H1Connection | undefined;
    let draining = false;
    try {
      const duplex = await this.#open(() => {
        draining = true;
        if (!conn) return;
        conn.retired = true;
        if (!conn.busy) conn.destroy();
      });
      conn = new H1Connection(duplex, this);
      this.#all.add(conn);
      if (draining || this.#destroyed) conn.retired = true;
    } finally {
      this.#connecting--;
      // A connection that could not be made leaves nothing behind: the owner forgets an empty pool.
      if (!conn && this.#all.size === 0 && this.#connecting === 0) this.#onEmpty();
    }
    if (signal.aborted) {
      // Cancelled while connecting: the connection is sound, and waits for the next request.
      this.idle(conn);
      throw new UpstreamResetError(this.addr, 'cancelled');
    }
    return conn;
  }

  /** `conn` finished an exchange and may carry another. */
  idle(conn: H1Connection): void {
    if (conn.closed || conn.retired) { conn.destroy(); return; }
    conn.park();
    this.#idle.push(conn);
    // One timer for the pool, not one per idle spell: a request costs no timer at all.
    if (!this.#sweep) this.#sweepIn(this.#idleMs);
  }

  #sweepIn(ms: number): void {
    this.#sweep = setTimeout(() => {
      this.#sweep = undefined;
      const now = Date.now();
      let next = Infinity;
      // The least recently used are at the bottom of the LIFO stack.
      for (const c of [...this.#idle]) {
        const left = c.idleSince + this.#idleMs - now;
        if (left <= 0) c.destroy();
        else next = Math.min(next, left);
      }
      if (next !== Infinity) this.#sweepIn(next);
    }, Math.max(1, ms));
    this.#sweep.unref();
  }

  /** `conn` closed. */
  forget(conn: H1Connection): void {
    this.#all.delete(conn);
    const i = this.#idle.indexOf(conn);
    if (i >= 0) this.#idle.splice(i, 1);
    if (this.#all.size === 0 && this.#connecting === 0) this.#onEmpty();
  }

  /** Every connection closes; requests in flight are cut. */
  destroy(): void {
    this.#destroyed = true;
    clearTimeout(this.#sweep);
    for (const c of [...this.#all]) c.destroy();
  }
}
