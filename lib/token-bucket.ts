// Token buckets, as Envoy's local rate limit fills them: a bucket holds `capacity` tokens and is
// filled back to `capacity` every `fillIntervalMs`; a take without a token is refused with the
// time until the next fill. One bucket per key in KeyedTokenBuckets (the waypoint's per-service and
// per-source limits, the certificate service's per-node and per-address limits).

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

/** Buckets kept per KeyedTokenBuckets before idle (full) ones are swept. */
export const MAX_BUCKETS = 10_000;

/**
 * One bucket per key, at most `maxBuckets` of them: at the cap, full buckets (keys idle for a fill
 * interval) are dropped first; if every bucket is in use, the oldest tenth goes, so that a stream of
 * new keys costs memory up to the cap and no further (a key dropped in use starts again full).
 */
export class KeyedTokenBuckets {
  readonly #buckets = new Map<string, TokenBucket>();
  readonly #max: number;

  constructor(maxBuckets = MAX_BUCKETS) {
    this.#max = maxBuckets;
  }

  get size(): number {
    return this.#buckets.size;
  }

  /** Takes a token from `key`'s bucket (made, or remade when its settings changed, full). */
  take(key: string, capacity: number, fillIntervalMs: number, now: number): RateLimitVerdict {
    let b = this.#buckets.get(key);
    if (!b || b.capacity !== capacity || b.fillIntervalMs !== fillIntervalMs) {
      if (!b && this.#buckets.size >= this.#max) this.#makeRoom(now);
      b = new TokenBucket(capacity, fillIntervalMs, now);
      this.#buckets.set(key, b);
    }
    return b.take(now);
  }

  /** Drops the buckets whose key `keep` refuses. */
  retain(keep: (key: string) => boolean): void {
    for (const key of this.#buckets.keys()) if (!keep(key)) this.#buckets.delete(key);
  }

  #makeRoom(now: number): void {
    for (const [k, b] of this.#buckets) if (b.isFull(now)) this.#buckets.delete(k);
    // Still at the cap: the oldest go (insertion order), a tenth at a time, so that this sweep
    // stays rare however many new keys keep coming.
    if (this.#buckets.size < this.#max) return;
    let drop = Math.ceil(this.#max / 10);
    for (const k of this.#buckets.keys()) {
      if (drop-- <= 0) break;
      this.#buckets.delete(k);
    }
  }
}

/** `retry-after` header value: whole seconds, at least 1. */
export function retryAfterSeconds(ms: number): string {
  return String(Math.max(1, Math.ceil(ms / 1000)));
}
