// Per-service upstream clusters: endpoint health (outlier detection), load balancing, circuit
// breaking (connection, pending and request limits), the retry budget, retry conditions, backoff and
// fault injection. Settings come from the service's TrafficPolicy; unset fields take Istio's
// defaults (no limits, 2 retries on connect failures, refused streams, gRPC unavailable and cancelled, and 503).
import type { Endpoint, LoadBalancerPolicy, TrafficPolicy } from '../../lib/model/mesh.ts';
import { createLoadBalancer, type LoadBalancer } from './loadbalancer.ts';
import { MAX_TIMER_MS } from '../../lib/model/validate.ts';

export const DEFAULT_RETRY_ATTEMPTS = 2;
/**
 * Istio's default retry conditions, for every route and for retries given without `retryOn`:
 * connect-failure, refused-stream, unavailable, cancelled, retriable-status-codes with 503
 * (istio pilot/pkg/networking/core/route/retry: DefaultPolicy). Never a 500: the backend may have
 * done the work.
 */
export const DEFAULT_RETRY_ON: readonly string[] = ['connect-failure', 'refused-stream', 'unavailable', 'cancelled', '503'];
/** Envoy's retry budget defaults. */
export const DEFAULT_RETRY_BUDGET_PERCENT = 20;
export const DEFAULT_MIN_RETRY_CONCURRENCY = 3;
export const RETRY_BACKOFF_BASE_MS = 25;
export const RETRY_BACKOFF_MAX_MS = 250;
export const DEFAULT_CONNECT_TIMEOUT_MS = 5000;
/** Envoy's cap on one ejection. */
export const MAX_EJECTION_TIME_MS = 300_000;

export interface OutlierSettings {
  consecutive5xx: number;
  intervalMs: number;
  baseEjectionTimeMs: number;
  maxEjectionPercent: number;
}

export interface ClusterSettings {
  loadBalancer: LoadBalancerPolicy;
  maxConnections: number;
  maxPendingRequests: number;
  maxRequests: number;
  outlier?: OutlierSettings;
  retries: { attempts: number; retryOn: readonly string[]; budgetPercent: number; minRetryConcurrency: number };
  timeouts: { requestMs?: number; perTryMs?: number; connectMs: number; idleMs?: number };
  fault?: TrafficPolicy['fault'];
  rateLimit?: TrafficPolicy['rateLimit'];
  /** Shared quota (counted in the waypoint's Redis quota store). */
  quota?: TrafficPolicy['quota'];
}

export function clusterSettings(tp: TrafficPolicy | undefined): ClusterSettings {
  const s: ClusterSettings = {
    loadBalancer: tp?.loadBalancer ?? 'ROUND_ROBIN',
    maxConnections: tp?.connectionLimits?.maxConnections ?? Infinity,
    maxPendingRequests: tp?.connectionLimits?.maxPendingRequests ?? Infinity,
    maxRequests: tp?.connectionLimits?.maxRequests ?? Infinity,
    retries: {
      attempts: tp?.retries?.attempts ?? DEFAULT_RETRY_ATTEMPTS,
      retryOn: tp?.retries && tp.retries.retryOn.length > 0 ? tp.retries.retryOn : DEFAULT_RETRY_ON,
      budgetPercent: tp?.retries?.budget?.percent ?? DEFAULT_RETRY_BUDGET_PERCENT,
      minRetryConcurrency: tp?.retries?.budget?.minRetryConcurrency ?? DEFAULT_MIN_RETRY_CONCURRENCY,
    },
    timeouts: { connectMs: tp?.timeouts.connectMs ?? DEFAULT_CONNECT_TIMEOUT_MS },
  };
  if (tp?.timeouts.requestMs !== undefined) s.timeouts.requestMs = tp.timeouts.requestMs;
  if (tp?.timeouts.perTryMs !== undefined) s.timeouts.perTryMs = tp.timeouts.perTryMs;
  if (tp?.timeouts.idleMs !== undefined) s.timeouts.idleMs = tp.timeouts.idleMs;
  if (tp?.outlierDetection) s.outlier = { ...tp.outlierDetection };
  if (tp?.fault) s.fault = tp.fault;
  if (tp?.rateLimit) s.rateLimit = tp.rateLimit;
  if (tp?.quota) s.quota = tp.quota;
  return s;
}

/** Problems with a TrafficPolicy the waypoint cannot apply (field path, message). */
export function validateTrafficPolicy(tp: TrafficPolicy): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  const nonNeg = (path: string, v: number | undefined): void => {
    if (v !== undefined && (!Number.isFinite(v) || v < 0)) out.push([path, `${v} must be a non-negative number`]);
  };
  for (const [k, v] of Object.entries(tp.timeouts)) {
    nonNeg(`timeouts.${k}`, v);
    // Node.js fires a longer timer after 1 ms (the controller refuses these; a version skew must not arm one).
    if (v !== undefined && v > MAX_TIMER_MS) out.push([`timeouts.${k}`, `${v} ms is longer than ${MAX_TIMER_MS} ms`]);
  }
  if (tp.retries) {
    if (!Number.isInteger(tp.retries.attempts) || tp.retries.attempts < 0 || tp.retries.attempts > 100) {
      out.push(['retries.attempts', `${tp.retries.attempts} must be an integer in 0-100`]);
    }
    tp.retries.retryOn.forEach((c, i) => {
      if (!RETRY_CONDITIONS.has(c) && !/^[1-5][0-9][0-9]$/.test(c)) out.push([`retries.retryOn[${i}]`, `unknown retry condition ${JSON.stringify(c)}`]);
    });
    if (tp.retries.budget && (tp.retries.budget.percent < 0 || tp.retries.budget.percent > 100)) {
      out.push(['retries.budget.percent', `${tp.retries.budget.percent} is outside 0-100`]);
    }
  }
  for (const [k, v] of Object.entries(tp.connectionLimits ?? {})) {
    if (v !== undefined && (!Number.isInteger(v) || v < 0)) out.push([`connectionLimits.${k}`, `${v} must be a non-negative integer`]);
  }
  const od = tp.outlierDetection;
  if (od) {
    if (!Number.isInteger(od.consecutive5xx) || od.consecutive5xx < 1) out.push(['outlierDetection.consecutive5xx', `${od.consecutive5xx} must be at least 1`]);
    nonNeg('outlierDetection.baseEjectionTimeMs', od.baseEjectionTimeMs);
    nonNeg('outlierDetection.intervalMs', od.intervalMs);
    if (od.maxEjectionPercent < 0 || od.maxEjectionPercent > 100) out.push(['outlierDetection.maxEjectionPercent', `${od.maxEjectionPercent} is outside 0-100`]);
  }
  if (tp.quota) {
    if (!Number.isInteger(tp.quota.limit) || tp.quota.limit < 0) out.push(['quota.limit', `${tp.quota.limit} must be a non-negative integer`]);
    if (!(tp.quota.windowMs >= 1)) out.push(['quota.windowMs', 'must be positive']);
    if (tp.quota.per !== 'service' && tp.quota.per !== 'source') out.push(['quota.per', `${JSON.stringify(tp.quota.per)} is not service or source`]);
  }
  if (tp.rateLimit) {
    if (!Number.isInteger(tp.rateLimit.tokens) || tp.rateLimit.tokens < 1) out.push(['rateLimit.tokens', `${tp.rateLimit.tokens} must be a positive integer`]);
    if (!(tp.rateLimit.fillIntervalMs > 0)) out.push(['rateLimit.fillIntervalMs', 'must be positive']);
  }
  const f = tp.fault;
  if (f?.abort && (f.abort.httpStatus < 200 || f.abort.httpStatus > 599)) out.push(['fault.abort.httpStatus', `${f.abort.httpStatus} is not an HTTP status`]);
  for (const [path, pct] of [['fault.delay.percentage', f?.delay?.percentage], ['fault.abort.percentage', f?.abort?.percentage]] as const) {
    if (pct !== undefined && (pct < 0 || pct > 100)) out.push([path, `${pct} is outside 0-100`]);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Retry conditions

/** How one upstream attempt ended. */
export type AttemptOutcome =
  | { kind: 'response'; status: number; grpcStatus?: number }
  | { kind: 'connect-failure' }
  | { kind: 'reset' }
  | { kind: 'refused-stream' }
  | { kind: 'timeout' };

const GRPC_CONDITIONS: Record<string, number> = {
  cancelled: 1, 'deadline-exceeded': 4, 'resource-exhausted': 8, internal: 13, unavailable: 14,
};

type RetryCondition = (o: AttemptOutcome) => boolean;

const RETRY_CONDITIONS = new Map<string, RetryCondition>([
  // Envoy: 5xx includes connect failures, resets and per-try timeouts.
  ['5xx', (o) => o.kind !== 'response' || o.status >= 500],
  ['gateway-error', (o) => o.kind === 'connect-failure' || o.kind === 'timeout' || (o.kind === 'response' && [502, 503, 504].includes(o.status))],
  ['reset', (o) => o.kind === 'reset' || o.kind === 'timeout'],
  ['connect-failure', (o) => o.kind === 'connect-failure'],
  ['refused-stream', (o) => o.kind === 'refused-stream'],
  ['retriable-4xx', (o) => o.kind === 'response' && o.status === 409],
  ...Object.entries(GRPC_CONDITIONS).map(([name, code]): [string, RetryCondition] =>
    [name, (o) => o.kind === 'response' && o.grpcStatus === code]),
]);

export function isRetriable(retryOn: readonly string[], outcome: AttemptOutcome): boolean {
  for (const c of retryOn) {
    const cond = RETRY_CONDITIONS.get(c);
    if (cond ? cond(outcome) : outcome.kind === 'response' && String(outcome.status) === c) return true;
  }
  return false;
}

/** Exponential backoff with full jitter (Envoy's): random in [0, min(max, base * 2^n)). */
export function retryBackoffMs(retryNumber: number, random: () => number): number {
  return Math.floor(random() * Math.min(RETRY_BACKOFF_MAX_MS, RETRY_BACKOFF_BASE_MS * 2 ** retryNumber));
}

/** Counts toward outlier detection: 5xx responses and locally originated failures. */
function isFailure(o: AttemptOutcome): boolean {
  return o.kind !== 'response' || o.status >= 500;
}

// ---------------------------------------------------------------------------------------------
// Fault injection

export interface FaultDecision {
  delayMs?: number;
  abortStatus?: number;
}

export function decideFault(fault: ClusterSettings['fault'], random: () => number): FaultDecision {
  const d: FaultDecision = {};
  if (!fault) return d;
  if (fault.delay && random() * 100 < fault.delay.percentage) d.delayMs = fault.delay.fixedDelayMs;
  if (fault.abort && random() * 100 < fault.abort.percentage) d.abortStatus = fault.abort.httpStatus;
  return d;
}

// ---------------------------------------------------------------------------------------------
// Clusters

export class EndpointState {
  readonly key: string;
  readonly ip: string;
  readonly port: number;
  endpoint: Endpoint;
  active = 0;
  consecutiveFailures = 0;
  ejectedUntil = 0;
  timesEjected = 0;
  /** When the last ejection ended (for decaying `timesEjected`). */
  returnedAt = 0;
  requests = 0;

  constructor(endpoint: Endpoint, port: number) {
    this.endpoint = endpoint;
    this.ip = endpoint.ip;
    this.port = port;
    this.key = endpoint.ip.includes(':') ? `[${endpoint.ip}]:${port}` : `${endpoint.ip}:${port}`;
  }

  isEjected(now: number): boolean {
    return this.ejectedUntil > now;
  }
}

export interface ClusterStats {
  service: string;
  activeRequests: number;
  pendingRequests: number;
  activeConnections: number;
  activeRetries: number;
  overflows: number;
  ejections: number;
  retries: number;
  retryBudgetExhausted: number;
  endpoints: Array<{ address: string; active: number; ejected: boolean; ejectedUntil: number; timesEjected: number; requests: number }>;
}

/** Thrown (as a value) when a circuit breaker limit is reached. */
export const OVERFLOW = Symbol('overflow');

interface Waiter {
  grant: (release: () => void) => void;
}

/** One destination service port: its endpoints and the state that resilience needs. */
export class Cluster {
  readonly name: string;
  settings: ClusterSettings;
  private endpoints: EndpointState[] = [];
  private lb: LoadBalancer;
  private lbPolicy: LoadBalancerPolicy;
  private readonly now: () => number;
  activeRequests = 0;
  activeConnections = 0;
  activeRetries = 0;
  /** Requests waiting for a connection slot, oldest first; an abandoned wait leaves at once. */
  private readonly waiters = new Set<Waiter>();
  overflows = 0;
  ejections = 0;
  retries = 0;
  retryBudgetExhausted = 0;

  constructor(name: string, settings: ClusterSettings, now: () => number = Date.now) {
    this.name = name;
    this.settings = settings;
    this.lbPolicy = settings.loadBalancer;
    this.lb = createLoadBalancer(settings.loadBalancer);
    this.now = now;
  }

  /** Replaces settings and endpoints, keeping the health state of endpoints that remain. */
  update(settings: ClusterSettings, endpoints: ReadonlyArray<{ endpoint: Endpoint; port: number }>): void {
    this.settings = settings;
    if (settings.loadBalancer !== this.lbPolicy) {
      this.lbPolicy = settings.loadBalancer;
      this.lb = createLoadBalancer(settings.loadBalancer);
    }
    const old = new Map(this.endpoints.map((e) => [e.key, e]));
    this.endpoints = endpoints.map(({ endpoint, port }) => {
      const fresh = new EndpointState(endpoint, port);
      const prev = old.get(fresh.key);
      if (!prev) return fresh;
      prev.endpoint = endpoint;
      return prev;
    });
    this.pump();
  }

  get size(): number {
    return this.endpoints.length;
  }

  /**
   * Chooses an endpoint that is not ejected, preferring ones not in `exclude` (endpoints already
   * tried by this request). When every endpoint is ejected, all are candidates again (Envoy's panic
   * mode) rather than failing the request.
   */
  pick(random: () => number, exclude?: ReadonlySet<string>): EndpointState | undefined {
    if (this.endpoints.length === 0) return undefined;
    const now = this.now();
    for (const e of this.endpoints) {
      if (e.ejectedUntil !== 0 && e.ejectedUntil <= now) { e.ejectedUntil = 0; e.returnedAt = now; }
    }
    let candidates = this.endpoints.filter((e) => !e.isEjected(now));
    if (candidates.length === 0) candidates = this.endpoints;
    if (exclude && exclude.size > 0) {
      const fresh = candidates.filter((e) => !exclude.has(e.key));
      if (fresh.length > 0) candidates = fresh;
    }
    return this.lb.pick(candidates, random);
  }

  /** The endpoint at `ip` (a request addressed to one pod), ejected or not: the caller chose it. */
  endpointAt(ip: string): EndpointState | undefined {
    return this.endpoints.find((e) => e.ip === ip);
  }

  /**
   * maxRequests: admit a request or report overflow (counted: it is answered 503 UO). Pair with
   * endRequest(). `counted: false` for a mirror copy, which is dropped, not answered, and counted
   * where it is dropped.
   */
  beginRequest(counted = true): boolean {
    if (this.activeRequests >= this.settings.maxRequests) {
      if (counted) this.overflows++;
      return false;
    }
    this.activeRequests++;
    return true;
  }

  endRequest(): void {
    this.activeRequests--;
  }

  /**
   * maxConnections / maxPendingRequests: an upstream attempt holds a connection slot; without a free
   * one it waits (pending) if the pending queue has room, else overflows. Resolves to a release
   * function; OVERFLOW when the limits are hit. `signal` cancels a pending wait.
   */
  acquireConnection(signal?: AbortSignal): Promise<(() => void) | typeof OVERFLOW> {
    if (this.activeConnections < this.settings.maxConnections) {
      this.activeConnections++;
      return Promise.resolve(this.releaser());
    }
    if (this.waiters.size >= this.settings.maxPendingRequests) {
      this.overflows++;
      return Promise.resolve(OVERFLOW);
    }
    return new Promise((resolve) => {
      const w: Waiter = { grant: resolve };
      this.waiters.add(w);
      signal?.addEventListener('abort', () => { if (this.waiters.delete(w)) resolve(OVERFLOW); }, { once: true });
    });
  }

  get pendingRequests(): number {
    return this.waiters.size;
  }

  private releaser(): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.activeConnections--;
      this.pump();
    };
  }

  private pump(): void {
    for (const w of this.waiters) {
      if (this.activeConnections >= this.settings.maxConnections) break;
      this.waiters.delete(w);
      this.activeConnections++;
      w.grant(this.releaser());
    }
  }

  /** Retry budget: retries in flight may be at most budgetPercent of active requests, but minRetryConcurrency always. */
  tryBeginRetry(): boolean {
    const r = this.settings.retries;
    const allowed = Math.max(r.minRetryConcurrency, Math.floor((this.activeRequests * r.budgetPercent) / 100));
    if (this.activeRetries >= allowed) { this.retryBudgetExhausted++; return false; }
    this.activeRetries++;
    this.retries++;
    return true;
  }

  endRetry(): void {
    this.activeRetries--;
  }

  /** Outlier detection bookkeeping after one attempt to `ep`. */
  report(ep: EndpointState, outcome: AttemptOutcome): void {
    const od = this.settings.outlier;
    if (!isFailure(outcome)) { ep.consecutiveFailures = 0; return; }
    ep.consecutiveFailures++;
    if (!od || ep.consecutiveFailures < od.consecutive5xx) return;
    const now = this.now();
    if (ep.isEjected(now)) return;
    const ejectedNow = this.endpoints.filter((e) => e.isEjected(now)).length;
    // Envoy (DetectorImpl::ejectHost): a host is ejected while the share already ejected is below
    // maxEjectionPercent, so the first always is (when it is above 0) and the last may pass it.
    if ((100 * ejectedNow) / this.endpoints.length >= od.maxEjectionPercent) return;
    // The multiplier decays by one per interval the endpoint stayed healthy since it returned.
    if (ep.returnedAt > 0 && od.intervalMs > 0) {
      ep.timesEjected = Math.max(0, ep.timesEjected - Math.floor((now - ep.returnedAt) / od.intervalMs));
    }
    ep.timesEjected++;
    ep.ejectedUntil = now + Math.min(Math.max(od.baseEjectionTimeMs, MAX_EJECTION_TIME_MS), od.baseEjectionTimeMs * ep.timesEjected);
    ep.consecutiveFailures = 0;
    this.ejections++;
  }

  stats(): ClusterStats {
    const now = this.now();
    return {
      service: this.name,
      activeRequests: this.activeRequests,
      pendingRequests: this.pendingRequests,
      activeConnections: this.activeConnections,
      activeRetries: this.activeRetries,
      overflows: this.overflows,
      ejections: this.ejections,
      retries: this.retries,
      retryBudgetExhausted: this.retryBudgetExhausted,
      endpoints: this.endpoints.map((e) => ({
        address: e.key, active: e.active, ejected: e.isEjected(now), ejectedUntil: e.ejectedUntil,
        timesEjected: e.timesEjected, requests: e.requests,
      })),
    };
  }
}
