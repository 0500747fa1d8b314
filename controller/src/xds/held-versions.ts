// What a config stream client holds of one resource type: name → version, once every response
// sent to it is applied (server.ts, Subscriber.sent). Most clients hold the same thing: every agent
// of a mesh whose pods are all enrolled holds every workload, every service, every waypoint at
// the same versions, and every waypoint holds the whole address-owner table. A Map of its own per
// client was 50 × 10,000 entries (27 MB at the bench's size, most of the controller's heap growth
// during an initial sync), so a HeldVersions keeps a frozen base Map that clients share and only
// its own changes over it.
//
// It behaves as a Map<string, string> for the operations the server uses, down to the order of
// keys(): a name replaced in place keeps its position, a deleted one that comes back goes last
// (test/unit/controller-xds-held-versions.test.ts checks it against a Map).

/** A shared base: never changed once built (clients change their own overlays instead). */
type Base = ReadonlyMap<string, string>;

const EMPTY: Base = new Map();

/** Entries at which a base is worth sharing; smaller views are not looked for in SharedBases. */
export const MIN_SHARED = 512;

export class HeldVersions {
  #base: Base;
  /** Names of the base that changed: their version now, or null when deleted. */
  readonly #inPlace = new Map<string, string | null>();
  /**
   * Names after the base in key order: ones the base does not have, and ones of the base that were
   * deleted and set again (a Map moves those to the end).
   */
  readonly #added = new Map<string, string>();
  /** How many names of the base are deleted (null in #inPlace). */
  #gone = 0;
  /** Overlay size at which the server rebuilds this over a (shared) base: SharedBases.compact. */
  #limit = 0;

  constructor(entries?: Iterable<readonly [string, string]>) {
    this.#base = EMPTY;
    if (entries) {
      const all = [...entries];
      this.#reset(EMPTY, { length: all.length, name: (i) => all[i]![0], version: (i) => all[i]![1] }, 0);
      // Versions a reconnecting client reports: rebuilt (and shared if it can be) at its first
      // change, when the server has seen what the other clients hold.
      this.#limit = 0;
    }
  }

  get size(): number {
    return this.#base.size - this.#gone + this.#added.size;
  }

  /** Entries in the overlay: what this client holds that the shared base does not say. */
  get overlaySize(): number {
    return this.#inPlace.size + this.#added.size;
  }

  /** Whether the overlay grew enough since the last rebuild to rebuild again. */
  get overLimit(): boolean {
    return this.overlaySize > this.#limit;
  }

  /** The base, for tests: clients that share one hold the same object. */
  get base(): ReadonlyMap<string, string> {
    return this.#base;
  }

  get(name: string): string | undefined {
    const a = this.#added.get(name);
    if (a !== undefined) return a;
    const o = this.#inPlace.get(name);
    if (o !== undefined) return o === null ? undefined : o;
    return this.#base.get(name);
  }

  has(name: string): boolean {
    return this.get(name) !== undefined;
  }

  set(name: string, version: string): void {
    if (this.#added.has(name)) {
      this.#added.set(name, version);
      return;
    }
    const b = this.#base.get(name);
    if (b === undefined) {
      this.#added.set(name, version);
      return;
    }
    const o = this.#inPlace.get(name);
    if (o === null) {
      // Deleted and set again: a Map would put it last, so does #added; its base slot stays gone.
      this.#added.set(name, version);
    } else if (b === version) {
      this.#inPlace.delete(name);
    } else {
      this.#inPlace.set(name, version);
    }
  }

  delete(name: string): boolean {
    if (this.#added.delete(name)) return true;
    if (!this.#base.has(name) || this.#inPlace.get(name) === null) return false;
    this.#inPlace.set(name, null);
    this.#gone++;
    return true;
  }

  *entries(): Generator<[string, string]> {
    if (this.#inPlace.size === 0) yield* this.#base;
    else {
      for (const [n, v] of this.#base) {
        const o = this.#inPlace.get(n);
        if (o === undefined) yield [n, v];
        else if (o !== null) yield [n, o];
      }
    }
    yield* this.#added;
  }

  *keys(): Generator<string> {
    if (this.#inPlace.size === 0) yield* this.#base.keys();
    else for (const n of this.#base.keys()) if (this.#inPlace.get(n) !== null) yield n;
    yield* this.#added.keys();
  }

  /**
   * Holds `base` followed by entries `from`.. of `rest` (which must not name anything of `base`),
   * with an empty overlay besides those. The next rebuild is due once the overlay grew by an eighth
   * of the base (64 entries at least): often enough that a long-lived client's churn does not pile
   * up in its own overlay, seldom enough that a rebuild's pass over the whole view is amortised.
   */
  #reset(base: Base, rest: Entries, from: number): void {
    this.#base = base;
    this.#inPlace.clear();
    this.#added.clear();
    this.#gone = 0;
    for (let i = from; i < rest.length; i++) this.#added.set(rest.name(i), rest.version(i));
    this.#limit = this.#added.size + Math.max(64, base.size >> 3);
  }

  /** For SharedBases: replace the representation (same entries, same order). */
  static reset(held: HeldVersions, base: Base, rest: Entries, from: number): void {
    held.#reset(base, rest, from);
  }
}

/** A list of (name, version) read by index, over whatever array the caller has. */
interface Entries {
  readonly length: number;
  name(i: number): string;
  version(i: number): string;
}

/**
 * The base most recently built per key (client kind and resource type): a client whose entries
 * begin with it shares it. Clients with the same view ask for the same entries in the same order
 * (the view's order), so the first of them builds the base and the others find it.
 */
export class SharedBases {
  readonly #latest = new Map<string, Base>();

  /**
   * Rebuilds `held` over a base: the latest one of `key` if `held`'s entries begin with all of
   * it, else a new one of the entries they share with it (when that is at least half of them) or
   * of all of them, which becomes the latest. Entries and their order do not change.
   */
  compact(key: string, held: HeldVersions): void {
    const all = [...held.entries()];
    this.#rebuild(key, held, { length: all.length, name: (i) => all[i]![0], version: (i) => all[i]![1] });
  }

  /**
   * `held` is empty and is to hold `names` at `versions` (parallel arrays, in that order): the
   * same as setting each and compacting, without building a Map of its own first (an initial sync).
   */
  adopt(key: string, held: HeldVersions, names: readonly string[], versions: readonly string[]): void {
    if (held.size !== 0) throw new Error('SharedBases.adopt: the client already holds entries');
    this.#rebuild(key, held, { length: names.length, name: (i) => names[i]!, version: (i) => versions[i]! });
  }

  #rebuild(key: string, held: HeldVersions, entries: Entries): void {
    if (entries.length < MIN_SHARED) {
      HeldVersions.reset(held, EMPTY, entries, 0);
      return;
    }
    const latest = this.#latest.get(key);
    let k = 0;
    if (latest) {
      for (const [n, v] of latest) {
        if (k >= entries.length || entries.name(k) !== n || entries.version(k) !== v) break;
        k++;
      }
      if (k === latest.size) {
        HeldVersions.reset(held, latest, entries, k);
        return;
      }
    }
    // Not all of the latest: a new base of the part in common when most of the entries are in it
    // (agents that differ only in their own node's unenrolled pods, which their view lists last),
    // else of all of them.
    if (k < MIN_SHARED || k * 2 < entries.length) k = entries.length;
    const base = new Map<string, string>();
    for (let i = 0; i < k; i++) base.set(entries.name(i), entries.version(i));
    this.#latest.set(key, base);
    HeldVersions.reset(held, base, entries, k);
  }
}
