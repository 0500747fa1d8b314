// BpfMap: a BPF map held by its own fd, with raw Buffer keys and values; TypedMap puts codecs on
// top. Sizes are checked here, before the kernel reads user memory: a key or value of the wrong
// length is a BpfError WEFT_SIZE_MISMATCH naming the map, never a short read.
import { possibleCpus, type Codec } from './codec.ts';
import { BpfError, ErrorCodes, guard, type BpfErrorContext } from './errors.ts';
import { OwnedFd, pinFd, removePin } from './handle.ts';
import { BPF_F, mapTypeName, PERCPU_MAP_TYPES } from './kinds.ts';
import { native, type NativeBatch } from './native.ts';

export type UpdateFlag = 'any' | 'noexist' | 'exist';

export interface MapDesc {
  name: string;
  /** enum bpf_map_type */
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  /** Path of the object file it came from. */
  object?: string;
  /** Where libbpf pinned it (LIBBPF_PIN_BY_NAME under the pin root). */
  pinPath?: string;
}

export interface BatchOptions {
  /** Entries per kernel call (default 256). */
  batchSize?: number;
}

/** Batch size of lookupBatch when none is given. */
export const DEFAULT_BATCH_SIZE = 256;

const alignUp8 = (n: number): number => Math.ceil(n / 8) * 8;

export class BpfMap {
  readonly #fd: OwnedFd;
  readonly name: string;
  /** 'hash', 'array', 'percpu_array', 'sockhash', 'ringbuf', ... */
  readonly type: string;
  readonly keySize: number;
  /** value_size as declared; a percpu map's lookups return valueLength bytes. */
  readonly valueSize: number;
  readonly maxEntries: number;
  readonly id: number;
  readonly object: string | undefined;
  /** True for percpu maps: values hold one slot per possible CPU. */
  readonly percpu: boolean;
  /** Bytes of a value as user space reads and writes it (nCPU * roundup(valueSize, 8) for percpu). */
  readonly valueLength: number;
  #pinnedPath: string | undefined;

  /** @internal Takes ownership of a map fd; use BpfObject#map or openPinned. */
  constructor(fd: number, desc: MapDesc, pinnedPath?: string) {
    this.#fd = new OwnedFd(fd, 'map', desc.name);
    this.name = desc.name;
    this.type = mapTypeName(desc.type);
    this.keySize = desc.keySize;
    this.valueSize = desc.valueSize;
    this.maxEntries = desc.maxEntries;
    this.object = desc.object;
    this.percpu = PERCPU_MAP_TYPES.has(this.type);
    this.valueLength = this.percpu ? possibleCpus() * alignUp8(desc.valueSize) : desc.valueSize;
    this.#pinnedPath = pinnedPath ?? desc.pinPath;
    this.id = guard(`cannot read info of map ${desc.name}`, this.#ctx(), () => native().mapInfo(fd)).id;
  }

  /** Opens a pinned map; BpfError ENOENT naming the path when nothing is pinned there. */
  static openPinned(path: string): BpfMap {
    const fd = guard(`cannot open pinned map ${path}`, { path }, () => native().objGet(path));
    const info = guard(`cannot read info of map ${path}`, { path }, () => native().mapInfo(fd));
    return new BpfMap(fd, info, path);
  }

  get fd(): number {
    return this.#fd.get(this.#ctx());
  }

  get closed(): boolean {
    return this.#fd.closed;
  }

  get pinnedPath(): string | undefined {
    return this.#pinnedPath;
  }

  #ctx(): BpfErrorContext {
    const ctx: BpfErrorContext = { map: this.name };
    if (this.object !== undefined) ctx.object = this.object;
    if (this.#pinnedPath !== undefined) ctx.path = this.#pinnedPath;
    return ctx;
  }

  #check(what: string, buf: Uint8Array, want: number): void {
    if (buf.length !== want) {
      throw new BpfError(`map ${this.name}: ${what} has ${buf.length} bytes, the map wants ${want}`,
        { code: ErrorCodes.size, ...this.#ctx() });
    }
  }

  /** The value for a key, or undefined when absent. */
  lookup(key: Uint8Array): Buffer | undefined {
    this.#check('key', key, this.keySize);
    return guard(`cannot look up in map ${this.name}`, this.#ctx(), () => native().mapLookup(this.fd, key, this.valueLength, 0));
  }

  /**
   * Reads and deletes a key in one step (BPF_MAP_LOOKUP_AND_DELETE_ELEM): of two readers only one
   * gets the entry. Undefined when absent. Hash-like maps, queues and stacks (key of size 0).
   */
  lookupAndDelete(key: Uint8Array): Buffer | undefined {
    this.#check('key', key, this.keySize);
    return guard(`cannot take from map ${this.name}`, this.#ctx(),
      () => native().mapLookupAndDelete(this.fd, key, this.valueLength));
  }

  /** Inserts or replaces; 'noexist' fails with EEXIST on an existing key, 'exist' with ENOENT on a missing one. */
  update(key: Uint8Array, value: Uint8Array, flags: UpdateFlag = 'any'): void {
    this.#check('key', key, this.keySize);
    this.#check('value', value, this.valueLength);
    guard(`cannot update map ${this.name} (${flags})`, this.#ctx(), () => native().mapUpdate(this.fd, key, value, BPF_F[flags]));
  }

  /** Deletes a key; false when it was absent. */
  delete(key: Uint8Array): boolean {
    this.#check('key', key, this.keySize);
    return guard(`cannot delete from map ${this.name}`, this.#ctx(), () => native().mapDelete(this.fd, key));
  }

  /** Keys in the kernel's iteration order (bpf_map_get_next_key). */
  *keys(): Generator<Buffer> {
    let key: Buffer | undefined = undefined;
    for (;;) {
      const prev: Buffer | null = key ?? null;
      key = guard(`cannot iterate map ${this.name}`, this.#ctx(), () => native().mapNextKey(this.fd, prev, this.keySize));
      if (key === undefined) return;
      yield key;
    }
  }

  /** [key, value] pairs; keys deleted while iterating are skipped. */
  *entries(): Generator<[Buffer, Buffer]> {
    for (const key of this.keys()) {
      const value = this.lookup(key);
      if (value !== undefined) yield [key, value];
    }
  }

  /** Deletes every key (hash-like maps); returns how many. */
  clear(): number {
    let n = 0;
    for (const key of [...this.keys()]) if (this.delete(key)) n++;
    return n;
  }

  /**
   * Every entry through BPF_MAP_LOOKUP_BATCH (one syscall per batchSize entries). Maps and
   * kernels without batch support fail with BpfError EINVAL or ENOTSUPP (code 'E524').
   */
  lookupBatch(opts: BatchOptions = {}): [Buffer, Buffer][] {
    const count = opts.batchSize ?? DEFAULT_BATCH_SIZE;
    const token = Math.max(this.keySize, 8);
    const out: [Buffer, Buffer][] = [];
    let inBatch: Buffer | null = null;
    for (;;) {
      const prev: Buffer | null = inBatch;
      const r: NativeBatch = guard(`cannot batch-read map ${this.name}`, this.#ctx(),
        () => native().mapLookupBatch(this.fd, prev, this.keySize, this.valueLength, count, token, false));
      for (let i = 0; i < r.count; i++) {
        out.push([
          Buffer.from(r.keys.subarray(i * this.keySize, (i + 1) * this.keySize)),
          Buffer.from(r.values.subarray(i * this.valueLength, (i + 1) * this.valueLength)),
        ]);
      }
      if (r.done) return out;
      inBatch = r.next;
    }
  }

  /** Writes many entries in one BPF_MAP_UPDATE_BATCH call; returns how many were written. */
  updateBatch(entries: readonly (readonly [Uint8Array, Uint8Array])[], flags: UpdateFlag = 'any'): number {
    if (entries.length === 0) return 0;
    const keys = Buffer.alloc(entries.length * this.keySize);
    const values = Buffer.alloc(entries.length * this.valueLength);
    entries.forEach(([k, v], i) => {
      this.#check('key', k, this.keySize);
      this.#check('value', v, this.valueLength);
      keys.set(k, i * this.keySize);
      values.set(v, i * this.valueLength);
    });
    return guard(`cannot batch-update map ${this.name}`, this.#ctx(),
      () => native().mapUpdateBatch(this.fd, keys, values, entries.length, BPF_F[flags]));
  }

  /** Deletes many keys in one BPF_MAP_DELETE_BATCH call; returns how many were deleted. */
  deleteBatch(keyList: readonly Uint8Array[]): number {
    if (keyList.length === 0) return 0;
    const keys = Buffer.alloc(keyList.length * this.keySize);
    keyList.forEach((k, i) => {
      this.#check('key', k, this.keySize);
      keys.set(k, i * this.keySize);
    });
    return guard(`cannot batch-delete from map ${this.name}`, this.#ctx(),
      () => native().mapDeleteBatch(this.fd, keys, keyList.length));
  }

  /** Pins the map at a bpffs path (parent folders created). */
  pin(path: string): void {
    guard(`cannot pin map ${this.name} at ${path}`, { ...this.#ctx(), path }, () => pinFd(this.fd, path));
    this.#pinnedPath = path;
  }

  /** Removes the map's pin, if it has one. */
  unpin(): void {
    const path = this.#pinnedPath;
    if (path === undefined) return;
    guard(`cannot unpin map ${this.name} at ${path}`, { ...this.#ctx(), path }, () => removePin(path));
    this.#pinnedPath = undefined;
  }

  /** Drops this fd (the map lives on while pinned or used by a loaded program). */
  close(): void {
    this.#fd.close();
  }
}

/** A BpfMap seen through a key and a value codec; the codec sizes are checked against the map. */
export class TypedMap<K, V> {
  readonly map: BpfMap;
  readonly key: Codec<K>;
  readonly value: Codec<V>;

  constructor(map: BpfMap, key: Codec<K>, value: Codec<V>) {
    if (key.size !== map.keySize || value.size !== map.valueLength) {
      throw new BpfError(
        `map ${map.name}: codecs ${key.name} (${key.size} bytes) -> ${value.name} (${value.size} bytes) do not fit ` +
        `its key of ${map.keySize} and value of ${map.valueLength} bytes; the C struct and its codec differ`,
        { code: ErrorCodes.size, map: map.name });
    }
    this.map = map;
    this.key = key;
    this.value = value;
  }

  get(k: K): V | undefined {
    const v = this.map.lookup(this.key.encode(k));
    return v === undefined ? undefined : this.value.decode(v);
  }

  has(k: K): boolean {
    return this.map.lookup(this.key.encode(k)) !== undefined;
  }

  set(k: K, v: V, flags: UpdateFlag = 'any'): void {
    this.map.update(this.key.encode(k), this.value.encode(v), flags);
  }

  delete(k: K): boolean {
    return this.map.delete(this.key.encode(k));
  }

  /** get() and delete() in one kernel step. */
  take(k: K): V | undefined {
    const v = this.map.lookupAndDelete(this.key.encode(k));
    return v === undefined ? undefined : this.value.decode(v);
  }

  *keys(): Generator<K> {
    for (const k of this.map.keys()) yield this.key.decode(k);
  }

  *entries(): Generator<[K, V]> {
    for (const [k, v] of this.map.entries()) yield [this.key.decode(k), this.value.decode(v)];
  }

  [Symbol.iterator](): Generator<[K, V]> {
    return this.entries();
  }
}
