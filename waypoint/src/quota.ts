// A quota shared by every replica of a waypoint: a fixed window counter per (service[, source]) in
// Redis. One Lua script does INCR and, on the window's first request, PEXPIRE, atomically; the window
// starts with that first request, so replicas need no synchronised clocks. Over the limit: 429 with
// `retry-after` = the key's remaining TTL.
//
// Redis unreachable or failing: the default is FAIL-OPEN (the request passes), as Envoy's global rate
// limit filter does (`failure_mode_deny: false`): a quota protects a budget, and an outage of the
// quota store should not become an outage of every service behind the waypoint. Set
// `failureMode: 'closed'` where exceeding the quota is worse than refusing traffic (paid upstream
// APIs). Either way the failure is counted (`weft_waypoint_quota_backend_errors_total`) and flagged
// `RLSE` on the request.
import { Redis } from 'ioredis';
import { QuotaBackendError } from './errors.ts';

export interface QuotaRule {
  /** `namespace/name` of the service the quota guards. */
  service: string;
  /** Requests allowed per window, summed over all replicas. */
  limit: number;
  windowMs: number;
  /** One counter for the service, or one per caller identity. Default `service`. */
  per?: 'service' | 'source';
}

export type QuotaFailureMode = 'open' | 'closed';

export interface QuotaOptions {
  /** An ioredis client, or a `redis://host:port` URL the waypoint connects to itself. */
  redis: Redis | string;
  rules: QuotaRule[];
  /** What to do when Redis fails. Default `open` (see the module comment). */
  failureMode?: QuotaFailureMode;
  /** Key prefix; replicas of one waypoint must share it. Default `weft:quota`. */
  keyPrefix?: string;
  /** Longest wait for Redis per request. Default 250 ms. */
  timeoutMs?: number;
}

export const DEFAULT_QUOTA_TIMEOUT_MS = 250;

export type QuotaVerdict =
  | { allowed: true; count?: number; backendError?: QuotaBackendError }
  | { allowed: false; retryAfterMs: number; count?: number; backendError?: QuotaBackendError };

const SCRIPT = `
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {n, ttl}
`;

export class RedisQuota {
  private readonly redis: Redis;
  private readonly ownsClient: boolean;
  private readonly rules = new Map<string, QuotaRule>();
  readonly failureMode: QuotaFailureMode;
  private readonly prefix: string;
  private readonly timeoutMs: number;

  constructor(opts: QuotaOptions) {
    this.failureMode = opts.failureMode ?? 'open';
    this.prefix = opts.keyPrefix ?? 'weft:quota';
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_QUOTA_TIMEOUT_MS;
    if (typeof opts.redis === 'string') {
      this.redis = new Redis(opts.redis, {
        // Commands wait for the connection (bounded by timeoutMs) so the first requests after start
        // are counted too; with no retries per request a refused connection fails them at once.
        enableOfflineQueue: true,
        maxRetriesPerRequest: 0,
        commandTimeout: this.timeoutMs,
        retryStrategy: (times) => Math.min(times * 200, 2000),
        // ioredis waits this long for a socket to close on disconnect, holding the process open.
        disconnectTimeout: 100,
      });
      // Connection errors surface per command; without a listener ioredis would log each one.
      this.redis.on('error', () => {});
      this.ownsClient = true;
    } else {
      this.redis = opts.redis;
      this.ownsClient = false;
    }
    this.setRules(opts.rules);
  }

  setRules(rules: readonly QuotaRule[]): void {
    this.rules.clear();
    for (const r of rules) {
      if (!Number.isInteger(r.limit) || r.limit < 0) throw new RangeError(`quota for ${r.service}: limit ${r.limit} must be a non-negative integer`);
      if (!Number.isFinite(r.windowMs) || r.windowMs < 1) throw new RangeError(`quota for ${r.service}: windowMs ${r.windowMs} must be positive`);
      this.rules.set(r.service, r);
    }
  }

  hasRule(service: string): boolean {
    return this.rules.has(service);
  }

  /** Counts one request against the service's quota. Never rejects. */
  async check(service: string, source: string | undefined): Promise<QuotaVerdict> {
    const rule = this.rules.get(service);
    if (!rule) return { allowed: true };
    const key = rule.per === 'source' ? `${this.prefix}:${service}|${source ?? '-'}` : `${this.prefix}:${service}`;
    try {
      const [count, ttl] = await this.eval(key, rule.windowMs);
      if (count > rule.limit) return { allowed: false, retryAfterMs: Math.max(ttl, 1), count };
      return { allowed: true, count };
    } catch (e) {
      const err = e instanceof QuotaBackendError ? e : new QuotaBackendError((e as Error).message, e);
      return this.failureMode === 'open'
        ? { allowed: true, backendError: err }
        : { allowed: false, retryAfterMs: 1000, backendError: err };
    }
  }

  private eval(key: string, windowMs: number): Promise<[number, number]> {
    return new Promise<[number, number]>((resolve, reject) => {
      const timer = setTimeout(() => reject(new QuotaBackendError(`no answer within ${this.timeoutMs} ms`)), this.timeoutMs);
      (this.redis.eval(SCRIPT, 1, key, String(windowMs)) as Promise<unknown>).then((res) => {
        clearTimeout(timer);
        if (!Array.isArray(res) || res.length !== 2) { reject(new QuotaBackendError(`unexpected script reply ${JSON.stringify(res)}`)); return; }
        resolve([Number(res[0]), Number(res[1])]);
      }, (err: unknown) => { clearTimeout(timer); reject(err); });
    });
  }

  async close(): Promise<void> {
    if (!this.ownsClient) return;
    if (this.redis.status !== 'ready') { this.redis.disconnect(); return; }
    try { await this.redis.quit(); } catch { this.redis.disconnect(); }
  }
}
