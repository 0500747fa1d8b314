// How long to wait before trying a remote call again: exponential backoff with jitter, one
// formula for every reconnecting client (the config stream, certificate renewal, the agent's node
// certificate, Kubernetes watches, waypoint reconciles, the controller's jwksUri refreshes and
// retries). Without the jitter, every agent of a cluster retries in lockstep after the
// controller comes back, as grpc-js's BackoffTimeout and Envoy's backoff both avoid.
//
// (A waypoint's retries of a request follow Envoy's route retry policy instead, full jitter from
// zero: waypoint/src/resilience.ts retryBackoffMs.)

export interface BackoffOptions {
  /** First wait; default 250 ms. */
  initialMs?: number;
  /** Longest wait; default 30 s. */
  maxMs?: number;
  /** Growth per failed attempt; default 2. */
  multiplier?: number;
  /** Random spread, a fraction of the wait either way; default 0.2. */
  jitter?: number;
}

export const DEFAULT_BACKOFF: Readonly<Required<BackoffOptions>> = { initialMs: 250, maxMs: 30_000, multiplier: 2, jitter: 0.2 };

/** `baseMs` spread by `jitter` either way: baseMs × (1 ± jitter), uniformly. */
export function jittered(baseMs: number, jitter: number, random: () => number = Math.random): number {
  return baseMs * (1 + jitter * (2 * random() - 1));
}

/** The wait before attempt `attempt + 1` (0-based: the wait after the first failure is attempt 0), whole milliseconds. */
export function backoffDelay(attempt: number, o: BackoffOptions = {}, random: () => number = Math.random): number {
  const b = { ...DEFAULT_BACKOFF, ...o };
  const base = Math.min(b.maxMs, b.initialMs * b.multiplier ** attempt);
  return Math.max(0, Math.round(jittered(base, b.jitter, random)));
}

/**
 * Tries again what failed, each key on its own timer with backoff: the first wait `initialMs`,
 * growing per failure of that key to `maxMs`. Nothing but the failed key's own action runs again
 * (the agent's plaintext listener of one pod, not every pod's enrolment). The timers do not hold
 * the process open.
 */
export class KeyedRetry<K> {
  readonly #waiting = new Map<K, { attempt: number; timer: NodeJS.Timeout }>();
  readonly #o: BackoffOptions;
  readonly #random: () => number;

  constructor(o: BackoffOptions = {}, random: () => number = Math.random) {
    this.#o = o;
    this.#random = random;
  }

  /** `key` failed (again): `again` runs after the next wait, which is returned (ms). */
  failed(key: K, again: () => void): number {
    const prev = this.#waiting.get(key);
    clearTimeout(prev?.timer);
    const attempt = prev ? prev.attempt + 1 : 0;
    const ms = backoffDelay(attempt, this.#o, this.#random);
    this.#waiting.set(key, { attempt, timer: setTimeout(again, ms).unref() });
    return ms;
  }

  /** `key` succeeded or is gone: no more tries, and its next failure waits the first wait again. */
  succeeded(key: K): void {
    clearTimeout(this.#waiting.get(key)?.timer);
    this.#waiting.delete(key);
  }

  /** The keys waiting to be tried again. */
  keys(): IterableIterator<K> {
    return this.#waiting.keys();
  }

  clear(): void {
    for (const { timer } of this.#waiting.values()) clearTimeout(timer);
    this.#waiting.clear();
  }
}
