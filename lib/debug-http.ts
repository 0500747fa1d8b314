// Read-only debug paths on the metrics port. The admin port (15000) listens on loopback only, which
// the API server's pod proxy cannot reach (agents run on the host network: their pod address is
// the node's), so `weftctl` on a cluster and an in-cluster dashboard read a component's state as
// `GET :15020/debug/<path>` through /api/v1/namespaces/NS/pods/POD:15020/proxy/debug/<path>.
// Only the paths a component lists are served there, each by its own admin handler, GET only;
// nothing that writes (log level) and nothing secret (certificates are listed, keys never are).
//
// The pod proxy cannot be told from any other client of the port (every pod reaches a node's
// 15020), so a component given a token answers only requests that carry it in DEBUG_TOKEN_HEADER:
// the install's Secret, mounted into the agents and the dashboard, held by the controller that
// made it, read by weftctl through the API (the API server passes the header on; it drops
// Authorization once it has authenticated). A waypoint, in its application's namespace, holds no
// token: it answers only requests carrying a grant for it (DEBUG_GRANT_HEADER,
// lib/identity/debug-grant.ts), which the controller signs for holders of the token. A grant opens
// a stream (the waypoint's /flows) only until it expires, as it would a request: then the stream
// ends, saying why, counted and logged as a refusal of an expired grant.
import type http from 'node:http';
import { createHash, timingSafeEqual, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { DEBUG_GRANT_HEADER, DebugGrantError, verifyDebugGrant, type DebugGrantRefusal } from './identity/debug-grant.ts';

/** Prefix of the admin paths the metrics port also answers. */
export const DEBUG_PATH_PREFIX = '/debug';
/** The request header carrying the install's debug token. */
export const DEBUG_TOKEN_HEADER = 'weft-debug-token';
/** The Secret (in the install namespace) holding the token under `token`. */
export const DEBUG_TOKEN_SECRET = 'weft-debug-token';
/** Names a file holding the token, for a weftctl without the rights to read the Secret (the in-cluster dashboard). */
export const DEBUG_TOKEN_FILE_ENV = 'WEFT_DEBUG_TOKEN_FILE';

/** Why a request was refused its install token: none sent, another one, or none to compare with. */
export type DebugTokenRefusal = 'missing' | 'wrong' | 'unset';

interface DebugRefusals {
  /** Told of each request refused: why (a DebugTokenRefusal or a DebugGrantRefusal) and what was wrong. */
  refused: (req: http.IncomingMessage, why: DebugTokenRefusal | DebugGrantRefusal, detail: string) => void;
}

/** Who may read the debug paths: those who hold the token (the agents, the controller). */
export interface DebugTokenAccess extends DebugRefusals {
  /** The token, read at each request (a mounted Secret changes under the process); undefined refuses every request. */
  token: () => string | undefined;
}

/** Who may read the debug paths: those who hold a grant for this component (a waypoint). */
export interface DebugGrantAccess extends DebugRefusals {
  /** The grants' audience: this pod of this waypoint (debugGrantAudience). */
  audience: string;
  /** The keys a grant must be signed with: the CA that issued this waypoint's certificate (debugGrantSigners), read at each request (it rotates). */
  signers: () => readonly KeyObject[];
  /** The clock grants are judged by (epoch ms): whether one opens a request, and how long until it lapses. Default Date.now (tests set it). */
  now?: () => number;
}

export type DebugAccess = DebugTokenAccess | DebugGrantAccess;

/** How long a token read from its file is used before the file is read again (the kubelet rewrites a mounted Secret). */
const DEBUG_TOKEN_FILE_TTL_MS = 5_000;

/** The token in the debug token Secret's `data` (base64, as the API returns it); undefined when it holds none. */
export function debugTokenOfSecret(data: { token?: string } | undefined): string | undefined {
  return data?.token ? Buffer.from(data.token, 'base64').toString('utf8').trim() || undefined : undefined;
}

/**
 * `read()`'s answer, kept until the time `until(answer, now)` gives (an answer without one, or a
 * failed read, is read again at the next call); calls meanwhile share one read. weftctl's cache of
 * the debug token Secret and of each waypoint's grant.
 */
export function cachedRead<T>(read: () => Promise<T>, until: (answer: T, now: number) => number): () => Promise<T> {
  let held: { until: number; answer: Promise<T> } | undefined;
  return () => {
    if (!held || Date.now() >= held.until) {
      const entry: { until: number; answer: Promise<T> } = { until: Infinity, answer: read() };
      entry.answer.then((a) => { entry.until = until(a, Date.now()); }, () => { if (held === entry) held = undefined; });
      held = entry;
    }
    return held.answer;
  };
}

/**
 * The token in `file` (a mounted Secret), read again at most every DEBUG_TOKEN_FILE_TTL_MS, not at
 * every request; undefined while the file cannot be read or is empty. The agents' and the in-cluster
 * dashboard's one reader.
 */
export function debugTokenFile(file: string, now: () => number = Date.now): () => string | undefined {
  let cached: { at: number; token: string | undefined } | undefined;
  return () => {
    const t = now();
    if (cached && t - cached.at < DEBUG_TOKEN_FILE_TTL_MS) return cached.token;
    let token: string | undefined;
    try {
      token = readFileSync(file, 'utf8').trim() || undefined;
    } catch {
      token = undefined;
    }
    cached = { at: t, token };
    return token;
  };
}

/** Whether `got` is `want`, in time that does not depend on where they differ. */
function sameToken(got: string, want: string): boolean {
  const digest = (v: string) => createHash('sha256').update(v).digest();
  return timingSafeEqual(digest(got), digest(want));
}

/** A request admitted: by a grant, with its expiry (`exp`) and when it stops opening anything (epoch ms, verifyDebugGrant); by the token, no grant. */
export interface DebugAdmission {
  grant?: { expires: Date; until: number };
}

/**
 * Whether `req` may read the debug path `path` under `access`: the one check for every component.
 * When it may not, the refusal is reported to `access.refused` and answered 403 here, naming what
 * the path wants.
 */
export function admitDebugRequest(access: DebugAccess, req: http.IncomingMessage, res: http.ServerResponse, path: string): DebugAdmission | false {
  let error: string;
  if ('token' in access) {
    const want = access.token();
    const got = req.headers[DEBUG_TOKEN_HEADER];
    const why = !want ? 'unset' : typeof got !== 'string' || got === '' ? 'missing' : sameToken(got, want) ? undefined : 'wrong';
    if (!why) return {};
    error = `${path} wants the install's debug token in the ${DEBUG_TOKEN_HEADER} header (Secret ${DEBUG_TOKEN_SECRET} in the install namespace; weftctl sends it)`;
    access.refused(req, why, error);
  } else {
    const got = req.headers[DEBUG_GRANT_HEADER];
    try {
      return { grant: verifyDebugGrant(typeof got === 'string' ? got : undefined, access.audience, access.signers(), (access.now ?? Date.now)()) };
    } catch (e) {
      // Any other error (a key or input node:crypto chokes on) is a grant that opens nothing, refused
      // as malformed: thrown out of the request handler, it would end the process.
      const [why, detail] = e instanceof DebugGrantError ? [e.reason, e.message] : ['malformed' as const, `the grant could not be checked: ${(e as Error).message}`];
      error = `${path} wants a debug grant for ${access.audience} in the ${DEBUG_GRANT_HEADER} header (the controller signs one for holders of the install's debug token; weftctl asks for it): ${detail}`;
      access.refused(req, why, detail);
    }
  }
  res.writeHead(403, { 'content-type': 'application/json' }).end(JSON.stringify({ error }) + '\n');
  return false;
}

/** The signal of each request a grant admitted (debugAccessSignal). */
const grantSignals = new WeakMap<http.IncomingMessage, AbortSignal>();

/**
 * Aborted, with a DebugGrantError saying why, when the grant that admitted `req` stops opening
 * anything; undefined for a request no grant admitted (the loopback admin port, the install's
 * token). A handler that streams (lib/tap.ts FlowTap.serve) ends its response there with a last
 * line saying why; a response still open after the abort is ended.
 */
export function debugAccessSignal(req: http.IncomingMessage): AbortSignal | undefined {
  return grantSignals.get(req);
}

/** Ends `res` when the grant that admitted `req` lapses (`grant.until`), counted and logged by `access.refused` as an expired grant. */
function endAtExpiry(access: DebugAccess, grant: { expires: Date; until: number }, req: http.IncomingMessage, res: http.ServerResponse): void {
  const lapse = new AbortController();
  grantSignals.set(req, lapse.signal);
  const timer = setTimeout(() => {
    if (res.writableEnded || res.destroyed) return;
    const detail = `the stream is closed: the grant that opened it expired at ${grant.expires.toISOString()}`;
    access.refused(req, 'expired', detail);
    lapse.abort(new DebugGrantError('expired', detail));
    if (!res.writableEnded) res.end();
  }, Math.max(0, grant.until - ('now' in access && access.now ? access.now() : Date.now())));
  timer.unref();
  res.on('close', () => clearTimeout(timer));
}

/**
 * Serves `GET <prefix><path>` for each of `paths` on `metrics` by handing the request to
 * `admin`'s handler with the prefix taken off; every other request goes to `fallback`. With
 * `access`, only to requests it admits (403 otherwise, before the admin handler), and one a grant
 * admitted only until the grant lapses (debugAccessSignal).
 */
export function debugThroughAdmin(admin: http.Server, paths: readonly string[], fallback: (req: http.IncomingMessage, res: http.ServerResponse) => void, access?: DebugAccess): (req: http.IncomingMessage, res: http.ServerResponse) => void {
  const allowed = new Set(paths);
  return (req, res) => {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    if (!path.startsWith(`${DEBUG_PATH_PREFIX}/`)) return fallback(req, res);
    const inner = path.slice(DEBUG_PATH_PREFIX.length);
    if (!allowed.has(inner)) {
      res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: `no ${path}`, paths: [...allowed].map((p) => DEBUG_PATH_PREFIX + p) }) + '\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    const admitted = access ? admitDebugRequest(access, req, res, path) : {};
    if (!admitted) return;
    req.url = inner + (q < 0 ? '' : url.slice(q));
    if (access && admitted.grant) endAtExpiry(access, admitted.grant, req, res);
    admin.emit('request', req, res);
  };
}
