// Local rate limiting: a token bucket per service (TrafficPolicy `rateLimit.per: route`) or per
// (service, source identity) (`per: source`). Like Envoy's local rate limit filter the bucket holds
// `tokens` and is refilled to `tokens` every `fillInterval`; a request without a token gets 429 and
// `retry-after` (whole seconds until the next fill).

import { KeyedTokenBuckets, type RateLimitVerdict } from '../../lib/token-bucket.ts';

export { retryAfterSeconds, type RateLimitVerdict } from '../../lib/token-bucket.ts';

export interface RateLimitSettings {
  tokens: number;
  fillIntervalMs: number;
  per: 'route' | 'source';
}

export class LocalRateLimiter {
  private readonly buckets = new KeyedTokenBuckets();
  private readonly now: () => number;

  constructor(now: () => number = Date.now) {
    this.now = now;
  }

  /** Takes a token for `service` (and `source` when the limit is per source). */
  check(service: string, settings: RateLimitSettings, source: string | undefined): RateLimitVerdict {
    const key = settings.per === 'source' ? `${service}|${source ?? '-'}` : service;
    return this.buckets.take(key, settings.tokens, settings.fillIntervalMs, this.now());
  }

  /** Buckets held (at most MAX_BUCKETS, lib/token-bucket.ts). */
  get size(): number {
    return this.buckets.size;
  }

  /** Drops buckets of services that no longer have a limit. */
  retain(services: ReadonlySet<string>): void {
    this.buckets.retain((key) => services.has(key.includes('|') ? key.slice(0, key.indexOf('|')) : key));
  }
}
