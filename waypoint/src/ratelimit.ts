// Local rate limiting: a token bucket per service (TrafficPolicy `rateLimit.per: route`) or per
// (service, source identity) (`per: source`). Like Envoy's local rate limit filter the bucket holds
// `tokens` and is refilled to `tokens` every `fillInterval`; a request without a token gets 429 and
// `retry-after` (whole seconds until the next fill).

/** Buckets kept before idle, full ones are swept (per-source limits see many identities). */
export const MAX_BUCKETS = 10_000;

export interface RateLimitSettings {
  tokens: number;
  fillIntervalMs: number;
  per: 'route' | 'source';
}

export type RateLimitVerdict = { allowed: true } | { allowed: false; retryAfterMs: number };

export class TokenBucket {
  private available: number;
  private nextFill: number;
  readonly capacity: number;
  readonly fillIntervalMs: number;

  constructor(capacity: number, fillIntervalMs: number, now: number) {
    this.capacity = capacity;
    this.fillIntervalMs = fillIntervalMs;
    this.available = capacity;
    this.nextFill = now + fillIntervalMs;
  }

  private refill(now: number): void {
    if (now < this.nextFill) return;
    this.available = this.capacity;
    const intervals = Math.floor((now - this.nextFill) / this.fillIntervalMs) + 1;
    this.nextFill += intervals * this.fillIntervalMs;
  }

  take(now: number): RateLimitVerdict {
    this.refill(now);
    if (this.available >= 1) {
      this.available -= 1;
      return { allowed: true };
    }
    return { allowed: false, retryAfterMs: this.nextFill - now };
  }

  isFull(now: number): boolean {
    this.refill(now);
    return this.available >= this.capacity;
  }
}

export class LocalRateLimiter {
  private readonly buckets = new Map<string, TokenBucket>();
  private readonly now: () => number;

  constructor(now: () => number = Date.now) {
    this.now = now;
  }

  /** Takes a token for `service` (and `source` when the limit is per source). */
  check(service: string, settings: RateLimitSettings, source: string | undefined): RateLimitVerdict {
    const key = settings.per === 'source' ? `${service}|${source ?? '-'}` : service;
    const now = this.now();
    let b = this.buckets.get(key);
    if (!b || b.capacity !== settings.tokens || b.fillIntervalMs !== settings.fillIntervalMs) {
      if (this.buckets.size >= MAX_BUCKETS) this.sweep(now);
      b = new TokenBucket(settings.tokens, settings.fillIntervalMs, now);
      this.buckets.set(key, b);
    }
    return b.take(now);
  }

  /** Drops buckets of services that no longer have a limit. */
  retain(services: ReadonlySet<string>): void {
    for (const key of this.buckets.keys()) {
      const svc = key.includes('|') ? key.slice(0, key.indexOf('|')) : key;
      if (!services.has(svc)) this.buckets.delete(key);
    }
  }

  private sweep(now: number): void {
    for (const [k, b] of this.buckets) if (b.isFull(now)) this.buckets.delete(k);
  }
}

/** `retry-after` header value: whole seconds, at least 1. */
export function retryAfterSeconds(ms: number): string {
  return String(Math.max(1, Math.ceil(ms / 1000)));
}
