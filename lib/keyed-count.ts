// How many of something each key holds (tunnels a peer holds, connects waiting for an upstream,
// tunnels a caller or all callers hold to one upstream), a key gone once it holds none: the map holds
// what is held now, never what was once seen.

export class KeyedCount<K = string> {
  readonly #counts = new Map<K, number>();

  /** How many `key` holds (0 for a key never taken or all released). */
  get(key: K): number {
    return this.#counts.get(key) ?? 0;
  }

  /** How many keys hold one or more. */
  get size(): number {
    return this.#counts.size;
  }

  /** One more for `key`. */
  take(key: K): void {
    this.#counts.set(key, this.get(key) + 1);
  }

  /** One fewer for `key`; the key is gone at zero. */
  release(key: K): void {
    const n = this.get(key) - 1;
    if (n > 0) this.#counts.set(key, n);
    else this.#counts.delete(key);
  }
}
