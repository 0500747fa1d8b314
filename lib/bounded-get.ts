// One GET of a URL whose server the caller does not trust to answer well: a tenant's jwksUri read
// by the controller (controller/src/jwks-resolver.ts), a cluster's federation export read by the
// other clusters' controllers and by its east-west gateway (lib/federation-read.ts). Bounded,
// whoever answers: http or https only, no redirect followed (the Location is named, not fetched),
// the whole exchange (lookup, connect, TLS, headers, body) within `deadlineMs`, at most `idleMs` of
// silence at a time if set, at most `maxBytes` of body (a larger declared length refused unread, a
// longer body cut), no keep-alive agent, no compressed answer asked for. A failure is a
// BoundedGetError whose `code` says its kind (stable strings: callers count and report by it) and
// whose message never quotes the body unless the caller asks for it (`errorBodyChars`).
import { request as httpRequest, type ClientRequest, type IncomingHttpHeaders, type IncomingMessage, type RequestOptions } from 'node:http';
import { request as httpsRequest, type RequestOptions as HttpsRequestOptions } from 'node:https';
import type { LookupFunction } from 'node:net';
import { getCACertificates } from 'node:tls';

/** How a bounded GET failed: stable strings. */
export type BoundedGetFailure = 'bad-url' | 'unreachable' | 'timeout' | 'tls' | 'http-status' | 'redirect' | 'too-large';

export class BoundedGetError extends Error {
  readonly code: BoundedGetFailure;
  constructor(code: BoundedGetFailure, message: string) {
    super(message);
    this.name = 'BoundedGetError';
    this.code = code;
  }
}

export interface BoundedGetOptions {
  /** The whole exchange, from the lookup to the body's end. */
  deadlineMs: number;
  /** The most body read; a larger declared Content-Length is refused unread. */
  maxBytes: number;
  /** What the body is, in messages ("export", "JWKS"). */
  what: string;
  /** The server may stay silent at most this long at a time; default: only the deadline bounds it. */
  idleMs?: number;
  /** Request headers besides `accept-encoding: identity`. */
  headers?: Readonly<Record<string, string>>;
  /**
   * https: the TLS options (`ca` replaces Node's default CAs: see withDefaultCas; `key`/`cert`: a
   * client certificate; `checkServerIdentity`: a refusal is a `tls` failure with its message).
   */
  tls?: Pick<HttpsRequestOptions, 'ca' | 'key' | 'cert' | 'minVersion' | 'checkServerIdentity'>;
  /** Host name lookup; default dns.lookup. */
  lookup?: LookupFunction;
  /** Ends the GET (its caller no longer wants it). */
  signal?: AbortSignal;
  /** The statuses whose body is the answer; default any 2xx. Another status is an `http-status` failure. */
  okStatuses?: readonly number[];
  /** An error answer's body is read (within the bounds) and its first this many characters quoted; default 0: not read, not quoted. */
  errorBodyChars?: number;
}

/**
 * The CAs Node trusts by default and `extra` after them: a `ca` option replaces Node's list, so
 * `extra` alone would drop it. The default list is tls.getCACertificates('default') (Node 22.15+):
 * the bundled Mozilla roots, NODE_EXTRA_CA_CERTS, and the system store under --use-system-ca, where
 * tls.rootCertificates is the bundled roots only (an operator's NODE_EXTRA_CA_CERTS stopped applying
 * the moment an extra CA was named).
 */
export function withDefaultCas(extra: readonly string[]): string[] {
  return [...getCACertificates('default'), ...extra];
}

/** Node's TLS verification failures (X509_V_ERR_* names and Node's own), a `tls` failure. */
const TLS_ERROR = /^(ERR_TLS_|ERR_SSL_|CERT_|UNABLE_TO_|DEPTH_ZERO_|SELF_SIGNED_|HOSTNAME_MISMATCH)/;

/** The failure an error of the request or response is. */
function failureOf(e: NodeJS.ErrnoException): BoundedGetError {
  if (e instanceof BoundedGetError) return e;
  const code = e.code ?? '';
  if (TLS_ERROR.test(code)) return new BoundedGetError('tls', `TLS: ${e.message}`);
  return new BoundedGetError('unreachable', e.message || code || 'the connection failed');
}

/** GETs `url`; resolves with the body of an answer of `okStatuses` (any 2xx) as text, rejects with a BoundedGetError. */
export async function boundedGet(url: string | URL, o: BoundedGetOptions): Promise<string> {
  return (await boundedGetAnswer(url, o)).text;
}

/** An answer of `okStatuses`: its status, headers and body. */
export interface BoundedGetAnswer {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
}

/** boundedGet, resolving with the answer's status and headers too (a conditional GET's 304, an ETag). */
export function boundedGetAnswer(url: string | URL, o: BoundedGetOptions): Promise<BoundedGetAnswer> {
  return new Promise<BoundedGetAnswer>((resolve, reject) => {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      reject(new BoundedGetError('bad-url', 'not a URL'));
      return;
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') {
      reject(new BoundedGetError('bad-url', `scheme ${u.protocol.slice(0, -1)} is not fetched (http or https only)`));
      return;
    }
    const https = u.protocol === 'https:';
    const check = o.tls?.checkServerIdentity;
    const options: RequestOptions & HttpsRequestOptions = {
      method: 'GET',
      agent: false,
      headers: { ...o.headers, 'accept-encoding': 'identity' },
      ...(o.signal ? { signal: o.signal } : {}),
      ...(o.lookup ? { lookup: o.lookup } : {}),
      ...(o.idleMs !== undefined ? { timeout: o.idleMs } : {}),
      ...(https && o.tls ? { ...o.tls } : {}),
      ...(https && check ? {
        checkServerIdentity: (host: string, cert: Parameters<typeof check>[1]) => {
          const refused = check(host, cert);
          return refused && new BoundedGetError('tls', refused.message);
        },
      } : {}),
    };
    let done = false;
    const finish = (err: BoundedGetError | undefined, answer?: BoundedGetAnswer): void => {
      if (done) return;
      done = true;
      clearTimeout(deadline);
      req.destroy();
      if (err) reject(err);
      else resolve(answer!);
    };
    const onResponse = (res: IncomingMessage): void => {
      const status = res.statusCode ?? 0;
      const ok = o.okStatuses ? o.okStatuses.includes(status) : status >= 200 && status < 300;
      // A 3xx asked for (a conditional GET's 304 Not Modified) is an answer, not a redirect.
      if (status >= 300 && status < 400 && !ok) {
        const location = String(res.headers.location ?? '(no Location)').slice(0, 200);
        finish(new BoundedGetError('redirect', `answered ${status} redirecting to ${location}; redirects are not followed, name the ${o.what}'s own URL`));
        return;
      }
      const quote = o.errorBodyChars ?? 0;
      const declared = Number(res.headers['content-length']);
      if (!ok && (quote <= 0 || declared > o.maxBytes)) {
        finish(new BoundedGetError('http-status', `answered HTTP ${status}`));
        return;
      }
      if (Number.isFinite(declared) && declared > o.maxBytes) {
        finish(new BoundedGetError('too-large', `declares a body of ${declared} bytes; the ${o.what} is read up to ${o.maxBytes} bytes`));
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > o.maxBytes) finish(new BoundedGetError('too-large', `${o.what} larger than ${o.maxBytes} bytes`));
        else chunks.push(chunk);
      });
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        if (ok) finish(undefined, { status, headers: res.headers, text });
        else {
          const reason = text.trim().slice(0, quote);
          finish(new BoundedGetError('http-status', `answered HTTP ${status}${reason ? `: ${reason}` : ''}`));
        }
      });
      res.on('error', (e) => finish(failureOf(e)));
      res.on('close', () => finish(new BoundedGetError('unreachable', 'the connection closed before the whole body')));
    };
    const req: ClientRequest = (https ? httpsRequest : httpRequest)(u, options, onResponse);
    const deadline = setTimeout(() => finish(new BoundedGetError('timeout', `no complete ${o.what} within ${o.deadlineMs} ms`)), o.deadlineMs);
    req.on('timeout', () => finish(new BoundedGetError('timeout', `no answer within ${o.idleMs} ms`)));
    req.on('error', (e) => finish(failureOf(e)));
    req.end();
  });
}
