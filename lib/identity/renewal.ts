// When to try again after a failed attempt to get a certificate signed.
//
// Exponential backoff with jitter, as for any remote call (lib/backoff.ts), with one rule of its own: while a
// certificate is still held, no wait may outlast half of what is left of its validity, so a CA that
// comes back before the certificate expires is found before it does. Such a shortened wait does not
// grow the backoff: once the certificate has expired the schedule continues from where it was,
// not from its cap.

import { jittered, type BackoffOptions } from '../backoff.ts';

export interface RenewalBackoffOptions extends BackoffOptions {
  /** Shortest wait near expiry; default 250 ms. */
  minMs?: number;
}

export const RENEWAL_BACKOFF_DEFAULTS: Readonly<Required<RenewalBackoffOptions>> = {
  initialMs: 500, maxMs: 30_000, multiplier: 2, jitter: 0.2, minMs: 250,
};

/** The retry schedule of one renewal: call next() after each failure, reset() after a success. */
export class RenewalBackoff {
  readonly #o: Required<RenewalBackoffOptions>;
  readonly #random: () => number;
  #stepMs: number;

  constructor(options: RenewalBackoffOptions = {}, random: () => number = Math.random) {
    const o = { ...RENEWAL_BACKOFF_DEFAULTS, ...options };
    if (!(o.initialMs > 0) || !(o.maxMs >= o.initialMs) || !(o.multiplier >= 1) || !(o.jitter >= 0 && o.jitter < 1) || !(o.minMs >= 0)) {
      throw new RangeError(`renewal backoff: need 0 < initialMs <= maxMs, multiplier >= 1, 0 <= jitter < 1, minMs >= 0 (got ${JSON.stringify(o)})`);
    }
    this.#o = o;
    this.#random = random;
    this.#stepMs = o.initialMs;
  }

  /** The un-jittered wait the next failure gets (unless the held certificate shortens it). */
  get stepMs(): number {
    return this.#stepMs;
  }

  /**
   * The wait after a failure. `validForMs`: how long the certificate still held stays valid (0,
   * negative or undefined when there is none or it has expired).
   */
  next(validForMs?: number): number {
    const wait = jittered(this.#stepMs, this.#o.jitter, this.#random);
    if (validForMs !== undefined && validForMs > 0) {
      const cap = Math.max(validForMs / 2, this.#o.minMs);
      if (wait > cap) return Math.min(cap, wait);
    }
    this.#stepMs = Math.min(this.#stepMs * this.#o.multiplier, this.#o.maxMs);
    return wait;
  }

  reset(): void {
    this.#stepMs = this.#o.initialMs;
  }
}
