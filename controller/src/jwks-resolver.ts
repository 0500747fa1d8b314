// A RequestAuthentication's `jwksUri`, fetched by the controller as Istio's istiod fetches it
// (istio/istio pilot/pkg/model/jwks_resolver.go, the default PILOT_JWT_ENABLE_REMOTE_JWKS=istiod
// mode): each distinct URI is fetched, cached and refreshed every 20 minutes, and its document is
// handed to the compiled rule inline, so a waypoint receives `jwks` only and never fetches. A failed
// refresh keeps the last good keys (for up to 7 days, istiod's JwtPubKeyEvictionDuration) and is
// retried after a minute, doubling to an hour. Each wait is spread (a refresh ±10 %, a retry ±20 %,
// lib/backoff.ts), which istiod's single unjittered ticker is not: URIs one restart fetched together,
// and controllers started together, would refresh and retry in lockstep against the same identity
// providers, as Envoy's jittered JWKS fetch backoff avoids. Until a first fetch succeeds, the rule
// carries a JWKS that verifies nothing (istiod's CreateFakeJwks), so every token of its issuer is
// refused (401) while requests without a token pass.
//
// A tenant chooses the URL and the controller fetches it from inside the cluster, so each fetch is
// bounded (lib/bounded-get.ts, the GET the federation export read uses too): http or https only
// (istiod's ParseJwksURI), https checked against Node's default CAs, bundled and NODE_EXTRA_CA_CERTS
// (istiod: the system pool), and --jwks-ca's added to them (istiod's /cacerts/extra.pem), no redirect
// followed, a 5 s deadline for the whole exchange (istiod's jwksHTTPTimeOutInSec), at most 64 KiB
// read (MAX_JWKS_BYTES), at most 2 host name lookups at once (boundedLookup), at most DEFAULT_MAX_JWKS_URIS
// distinct URIs held; and what it answers must be a JWKS with a usable key (lib/policy/jwt.ts
// parseJwks). Fetches run beside the reconcile loop, never in it: a completed one that changes what
// a URI holds calls the listeners, and the controller compiles again.
import { createHash } from 'node:crypto';
import { lookup as dnsLookup } from 'node:dns';
import type { LookupFunction } from 'node:net';
import { Counter, type Registry } from 'prom-client';
import { backoffDelay, jittered } from '../../lib/backoff.ts';
import { BoundedGetError, boundedGet, withDefaultCas } from '../../lib/bounded-get.ts';
import { MAX_JWKS_BYTES, jwksUriProblem, parseJwks } from '../../lib/policy/jwt.ts';
import { silentLogger, type Logger } from './log.ts';

/** istiod's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL default: a fetched JWKS is fetched again this often. */
export const DEFAULT_JWKS_REFRESH_MS = 20 * 60_000;
/** istiod's JwtPubKeyRefreshIntervalOnFailure: the first retry after a failed fetch. */
export const DEFAULT_JWKS_RETRY_MS = 60_000;
/** istiod's JwtPubKeyRefreshIntervalOnFailureResetThreshold: retries double up to this. */
export const MAX_JWKS_RETRY_MS = 60 * 60_000;
/** istiod's jwksHTTPTimeOutInSec: the whole fetch (lookup, connect, TLS, headers, body). */
export const JWKS_FETCH_TIMEOUT_MS = 5_000;
/**
 * A refresh waits DEFAULT_JWKS_REFRESH_MS (refreshMs) spread by this fraction either way, so the URIs
 * a restart fetched together, and controllers started together, do not refresh in lockstep (istiod
 * refreshes every URI from one ticker, unjittered).
 */
export const JWKS_REFRESH_JITTER = 0.1;
/** istiod's JwtPubKeyEvictionDuration: the last good keys serve this long after the last success. */
export const JWKS_MAX_STALE_MS = 7 * 24 * 3600_000;
/** Distinct URIs fetched at once; a URI past it is refused (its tokens are refused, reported). */
export const DEFAULT_MAX_JWKS_URIS = 256;
/** Distinct URIs held for the RequestAuthentications of one namespace (a tenant cannot take them all). */
export const DEFAULT_MAX_JWKS_URIS_PER_NAMESPACE = 16;

/**
 * Host name lookups in flight at once, those a deadline gave up on included: getaddrinfo runs on
 * libuv's threads (4), which the controller's file and crypto work share, and a lookup goes on after
 * the fetch's deadline until the system resolver gives up; a tenant naming hosts of a slow DNS zone
 * must not take them all. A fetch past it is refused (`unreachable`) and retried later.
 */
export const MAX_JWKS_LOOKUPS = 2;

/** The longest fetch error kept (it reaches the object's status). */
const MAX_ERROR_CHARS = 400;

/** How a fetch ended: stable strings, the label of weft_controller_jwks_fetch_total. */
export type JwksFetchResult = 'ok' | 'bad-uri' | 'unreachable' | 'timeout' | 'tls' | 'http-status' | 'redirect' | 'too-large' | 'not-jwks' | 'over-limit';

/**
 * What a RequestAuthentication's status says of a failed fetch: the kind only. The controller
 * fetches from inside the cluster a URL its tenant chose, so the error itself (an internal address
 * refusing, a status, a Location, the body's values) goes to the controller's log, not to status,
 * where it would map the cluster's network for the tenant (Istio logs these too).
 */
export const JWKS_RESULT_TEXT: Readonly<Record<Exclude<JwksFetchResult, 'ok'>, string>> = {
  'bad-uri': 'the URI cannot be fetched (http or https only)',
  unreachable: 'the host could not be reached',
  timeout: 'no whole answer within the deadline',
  tls: 'its TLS certificate is not trusted',
  'http-status': 'it answered with a status other than 2xx',
  redirect: 'it answered with a redirect, and redirects are not followed',
  'too-large': 'its answer is larger than the bound',
  'not-jwks': 'its answer is not a JWKS with a usable key',
  'over-limit': 'the controller holds as many jwksUris as it may (or this namespace as many as it may)',
};

export class JwksFetchError extends Error {
  readonly code: Exclude<JwksFetchResult, 'ok'>;
  constructor(code: Exclude<JwksFetchResult, 'ok'>, message: string) {
    super(message);
    this.code = code;
  }
}

/** What the controller holds for one jwksUri, as compile reads it (CompileOptions.jwks). */
export interface JwksState {
  /** The last document fetched that parsed: the rule's keys. */
  readonly jwks?: string;
  /** Why the last fetch failed (absent after a success, and while the first is under way). */
  readonly error?: string;
  readonly result?: Exclude<JwksFetchResult, 'ok'>;
  /** Moves whenever `jwks` or `error` does (compile's options key). */
  readonly version: number;
}

/**
 * The JWKS a rule carries while no keys were fetched from its URI: one Ed25519 public key derived
 * from the URI by SHA-256, whose private key nobody has, so it verifies nothing (a token with a kid
 * finds no key, one without fails its signature) yet parses at every waypoint as a JWKS, as
 * istiod's CreateFakeJwks does with an RSA modulus made of the URI.
 */
export function unfetchedJwks(uri: string): string {
  const x = createHash('sha256').update(`weft: no JWKS fetched from ${uri}`).digest('base64url');
  return JSON.stringify({ keys: [{ kty: 'OKP', crv: 'Ed25519', x, kid: 'weft-jwks-not-fetched', use: 'sig' }] });
}

export interface JwksFetchOptions {
  /** Default JWKS_FETCH_TIMEOUT_MS. */
  timeoutMs?: number;
  /** Default MAX_JWKS_BYTES. */
  maxBytes?: number;
  /** The CAs https is checked against, in place of Node's default ones (withDefaultCas adds to those); default Node's. */
  ca?: string[];
  /** Ends the fetch (the URI was forgotten, the controller stops). */
  signal?: AbortSignal;
  /** Host name lookup (the resolver's boundedLookup); default dns.lookup. */
  lookup?: LookupFunction;
}

/**
 * `lookup` with at most `max` lookups in flight (MAX_JWKS_LOOKUPS); one past it waits for a slot,
 * within its fetch's deadline (a fetch that times out meanwhile is named `timeout`). It failed at
 * once, so a restart naming more hosts than slots published the keys of two and refused the rest.
 */
export function boundedLookup(max: number, lookup: LookupFunction = dnsLookup as LookupFunction): LookupFunction {
  let inFlight = 0;
  const waiting: Array<() => void> = [];
  const start: LookupFunction = ((hostname, options, callback) => {
    inFlight++;
    lookup(hostname, options, ((...args: Parameters<typeof callback>) => {
      inFlight--;
      waiting.shift()?.();
      callback(...args);
    }) as typeof callback);
  }) as LookupFunction;
  return ((hostname, options, callback) => {
    if (inFlight >= max) waiting.push(() => start(hostname, options, callback));
    else start(hostname, options, callback);
  }) as LookupFunction;
}

/**
 * Fetches one JWKS document (lib/bounded-get.ts): GET, no redirect followed, a 2xx answer of at most
 * `maxBytes` within `timeoutMs` from the request to the body's end, that parses as a JWKS with a
 * usable key. Resolves to the document as received; rejects with a JwksFetchError whose message
 * never quotes the body (the URL may be a cluster-internal service the tenant cannot read otherwise).
 */
export async function fetchJwks(uri: string, o: JwksFetchOptions = {}): Promise<string> {
  const problem = jwksUriProblem(uri);
  if (problem !== undefined) throw new JwksFetchError('bad-uri', problem);
  let text: string;
  try {
    text = await boundedGet(uri, {
      what: 'JWKS',
      deadlineMs: o.timeoutMs ?? JWKS_FETCH_TIMEOUT_MS,
      maxBytes: o.maxBytes ?? MAX_JWKS_BYTES,
      headers: { accept: 'application/json' },
      ...(o.ca ? { tls: { ca: o.ca } } : {}),
      ...(o.signal ? { signal: o.signal } : {}),
      ...(o.lookup ? { lookup: o.lookup } : {}),
    });
  } catch (e) {
    throw asJwksFetchError(e);
  }
  // JSON.parse's message quotes the text: say only that it is not JSON.
  try {
    JSON.parse(text);
  } catch {
    throw new JwksFetchError('not-jwks', 'answered a body that is not JSON; a JWKS is a JSON object with a "keys" list');
  }
  try {
    parseJwks(text);
  } catch (e) {
    throw new JwksFetchError('not-jwks', `answered a document that ${(e as Error).message}`);
  }
  return text;
}

/**
 * A fetch's failure as a JwksFetchError: the GET's kinds keep their names (`bad-url` is `bad-uri`);
 * anything else (a `fetch` of the options that throws its own errors) is `unreachable`.
 */
function asJwksFetchError(e: unknown): JwksFetchError {
  if (e instanceof JwksFetchError) return e;
  if (e instanceof BoundedGetError) return new JwksFetchError(e.code === 'bad-url' ? 'bad-uri' : e.code, e.message);
  return new JwksFetchError('unreachable', e instanceof Error ? e.message : String(e));
}

export interface JwksResolverOptions extends Omit<JwksFetchOptions, 'ca' | 'signal'> {
  /** CAs trusted for https besides Node's default ones (withDefaultCas; istiod's /cacerts/extra.pem beside the system pool); default none. */
  extraCas?: readonly string[];
  /** Default DEFAULT_JWKS_REFRESH_MS, spread by JWKS_REFRESH_JITTER either way. */
  refreshMs?: number;
  /** First retry after a failure, doubling per failure up to `maxRetryMs`, each spread as every backoff of the mesh (lib/backoff.ts DEFAULT_BACKOFF: ±20 %); default DEFAULT_JWKS_RETRY_MS. */
  retryMs?: number;
  /** Default MAX_JWKS_RETRY_MS. */
  maxRetryMs?: number;
  /** How long the last good keys outlive failed refreshes; default JWKS_MAX_STALE_MS. */
  maxStaleMs?: number;
  /** Default DEFAULT_MAX_JWKS_URIS. */
  maxUris?: number;
  /** Default DEFAULT_MAX_JWKS_URIS_PER_NAMESPACE. */
  maxUrisPerNamespace?: number;
  /** Default MAX_JWKS_LOOKUPS. */
  maxLookups?: number;
  logger?: Logger;
  registry?: Registry;
  /** The jitter's random source, in [0, 1) (tests); default Math.random. */
  random?: () => number;
  /** The fetch (tests); default fetchJwks. */
  fetch?: (uri: string, o: JwksFetchOptions) => Promise<string>;
}

interface Entry {
  uri: string;
  state: JwksState;
  /** When the keys in `state.jwks` were last fetched. */
  fetchedAt?: number;
  failures: number;
  timer?: NodeJS.Timeout;
  /** The fetch under way. */
  fetching?: AbortController;
}

/**
 * Holds the documents of the jwksUris the accepted RequestAuthentications name: `want` says which
 * (new ones are fetched at once, dropped ones forgotten), `snapshot` is what compile reads, and
 * `onChange` hears when a fetch changed what a URI holds.
 */
export class JwksResolver {
  readonly #o: JwksResolverOptions;
  readonly #log: Logger;
  readonly #entries = new Map<string, Entry>();
  /** URIs past `maxUris`, each refused once until it is no longer wanted. */
  readonly #refused = new Map<string, JwksState>();
  readonly #listeners: Array<() => void> = [];
  readonly #fetches?: Counter;
  readonly #lookup: LookupFunction;
  readonly #random: () => number;
  /** Node's default CAs and `extraCas`, built once (absent: Node's defaults). */
  readonly #ca: string[] | undefined;
  readonly #inFlight = new Set<Promise<void>>();
  #version = 0;
  #snapshot: ReadonlyMap<string, JwksState> | undefined;
  #stopped = false;

  constructor(options: JwksResolverOptions = {}) {
    this.#o = options;
    this.#log = options.logger ?? silentLogger;
    this.#lookup = boundedLookup(options.maxLookups ?? MAX_JWKS_LOOKUPS, options.lookup);
    this.#random = options.random ?? Math.random;
    this.#ca = options.extraCas && options.extraCas.length > 0 ? withDefaultCas(options.extraCas) : undefined;
    if (options.registry) {
      this.#fetches = new Counter({
        name: 'weft_controller_jwks_fetch_total',
        help: 'Fetches of RequestAuthentication jwksUri documents by result (ok, bad-uri, unreachable, timeout, tls, http-status, redirect, too-large, not-jwks), and URIs refused past the controller\'s bound (over-limit)',
        labelNames: ['result'],
        registers: [options.registry],
      });
    }
  }

  onChange(listener: () => void): void {
    this.#listeners.push(listener);
  }

  /**
   * The URIs in use now, each with a namespace naming it (a pair per namespace): new ones are
   * fetched, those no longer named are forgotten (timers cleared, a fetch under way ended). A new
   * URI is held while fewer than `maxUris` are, and one of the namespaces naming it names fewer
   * than `maxUrisPerNamespace` held ones, so one namespace cannot take every slot from the others.
   */
  want(named: Iterable<readonly [uri: string, namespace: string]>): void {
    if (this.#stopped) return;
    const wanted = new Map<string, Set<string>>();
    for (const [uri, ns] of named) {
      const set = wanted.get(uri);
      if (set) set.add(ns);
      else wanted.set(uri, new Set([ns]));
    }
    let changed = false;
    for (const [uri, e] of this.#entries) {
      if (wanted.has(uri)) continue;
      clearTimeout(e.timer);
      e.fetching?.abort();
      this.#entries.delete(uri);
      changed = true;
    }
    for (const uri of this.#refused.keys()) {
      if (!wanted.has(uri)) {
        this.#refused.delete(uri);
        changed = true;
      }
    }
    const max = this.#o.maxUris ?? DEFAULT_MAX_JWKS_URIS;
    const perNamespace = this.#o.maxUrisPerNamespace ?? DEFAULT_MAX_JWKS_URIS_PER_NAMESPACE;
    // Held URIs each namespace names.
    const held = new Map<string, number>();
    const hold = (namespaces: Iterable<string>): void => { for (const ns of namespaces) held.set(ns, (held.get(ns) ?? 0) + 1); };
    for (const uri of this.#entries.keys()) hold(wanted.get(uri)!);
    for (const [uri, namespaces] of [...wanted].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      if (this.#entries.has(uri)) continue;
      const room = [...namespaces].some((ns) => (held.get(ns) ?? 0) < perNamespace);
      if (this.#entries.size >= max || !room) {
        if (this.#refused.has(uri)) continue;
        const error = this.#entries.size >= max
          ? `the controller fetches at most ${max} distinct jwksUri and holds as many; put this issuer's keys inline in jwks, or remove URIs no longer used`
          : `namespace ${[...namespaces].sort().join(', ')} names ${perNamespace} or more held jwksUri already, the most the controller fetches for one namespace; put this issuer's keys inline in jwks, or remove URIs no longer used`;
        this.#refused.set(uri, { error, result: 'over-limit', version: ++this.#version });
        this.#fetches?.inc({ result: 'over-limit' });
        this.#log.warn('jwksUri refused: past the bound of distinct URIs', { uri, namespaces: [...namespaces].sort(), max, perNamespace });
        changed = true;
        continue;
      }
      hold(namespaces);
      this.#refused.delete(uri);
      const e: Entry = { uri, state: { version: ++this.#version }, failures: 0 };
      this.#entries.set(uri, e);
      changed = true;
      this.#fetch(e);
    }
    if (changed) this.#snapshot = undefined;
  }

  /**
   * Resolves when no fetch is under way (each ends within its deadline): the controller's first
   * compile waits for it, so a restarted controller's first publish carries the keys it fetched,
   * not a JWKS that refuses every token, as istiod fetches within its first push.
   */
  async settled(): Promise<void> {
    while (this.#inFlight.size > 0) await Promise.allSettled([...this.#inFlight]);
  }

  /** What each wanted URI holds (an immutable map, a new one after every change). */
  snapshot(): ReadonlyMap<string, JwksState> {
    if (!this.#snapshot) {
      const m = new Map<string, JwksState>();
      for (const [uri, e] of this.#entries) m.set(uri, e.state);
      for (const [uri, s] of this.#refused) m.set(uri, s);
      this.#snapshot = m;
    }
    return this.#snapshot;
  }

  stop(): void {
    this.#stopped = true;
    for (const e of this.#entries.values()) {
      clearTimeout(e.timer);
      e.fetching?.abort();
    }
    this.#entries.clear();
  }

  #fetch(e: Entry): void {
    if (e.fetching || this.#stopped) return;
    const ac = new AbortController();
    e.fetching = ac;
    const fetch = this.#o.fetch ?? fetchJwks;
    const { timeoutMs, maxBytes } = this.#o;
    const ca = this.#ca;
    const p = fetch(e.uri, { ...(timeoutMs !== undefined ? { timeoutMs } : {}), ...(maxBytes !== undefined ? { maxBytes } : {}), ...(ca ? { ca } : {}), signal: ac.signal, lookup: this.#lookup }).then(
      (text) => this.#done(e, text, undefined),
      (err: unknown) => this.#done(e, undefined, asJwksFetchError(err)),
    ).finally(() => this.#inFlight.delete(p));
    this.#inFlight.add(p);
  }

  #done(e: Entry, text: string | undefined, err: JwksFetchError | undefined): void {
    e.fetching = undefined;
    // Forgotten (or stopped) while it ran: its answer belongs to nobody.
    if (this.#stopped || this.#entries.get(e.uri) !== e) return;
    const before = e.state;
    let next: JwksState;
    let waitMs: number;
    if (text !== undefined) {
      this.#fetches?.inc({ result: 'ok' });
      if (before.error !== undefined || before.jwks === undefined) this.#log.info('JWKS fetched', { uri: e.uri, ...(e.failures > 0 ? { afterFailures: e.failures } : {}) });
      e.failures = 0;
      e.fetchedAt = Date.now();
      next = before.jwks === text && before.error === undefined ? before : { jwks: text, version: ++this.#version };
      const refreshMs = this.#o.refreshMs ?? DEFAULT_JWKS_REFRESH_MS;
      waitMs = Math.round(jittered(refreshMs, JWKS_REFRESH_JITTER, this.#random));
    } else {
      this.#fetches?.inc({ result: err!.code });
      let jwks = before.jwks;
      const staleMs = e.fetchedAt === undefined ? 0 : Date.now() - e.fetchedAt;
      if (jwks !== undefined && staleMs >= (this.#o.maxStaleMs ?? JWKS_MAX_STALE_MS)) jwks = undefined;
      waitMs = backoffDelay(e.failures++, { initialMs: this.#o.retryMs ?? DEFAULT_JWKS_RETRY_MS, maxMs: this.#o.maxRetryMs ?? MAX_JWKS_RETRY_MS }, this.#random);
      this.#log.warn(jwks !== undefined ? 'JWKS refresh failed; the keys fetched before keep serving' : 'JWKS fetch failed; tokens of the issuers that name it are refused until a fetch succeeds', {
        uri: e.uri, result: err!.code, error: err!.message, retryInMs: waitMs,
        ...(before.jwks !== undefined ? { keysAgeMs: staleMs } : {}),
      });
      // Bounded: a status message, and parts of it (a key's kty or alg) are the server's words.
      const error = err!.message.slice(0, MAX_ERROR_CHARS);
      next = before.jwks === jwks && before.error === error ? before : { ...(jwks !== undefined ? { jwks } : {}), error, result: err!.code, version: ++this.#version };
    }
    e.timer = setTimeout(() => this.#fetch(e), waitMs).unref();
    if (next !== before) {
      e.state = next;
      this.#snapshot = undefined;
      for (const l of this.#listeners) l();
    }
  }
}
