// BpfObject: one compiled .bpf.o, opened and loaded through libbpf. Maps declared with
// LIBBPF_PIN_BY_NAME are pinned under the pin root at load, or reused from there when a previous
// load (an earlier agent) pinned them.
import { mkdirSync } from 'node:fs';
import type { CLayout } from './codec.ts';
import { BpfError, ErrorCodes, guard } from './errors.ts';
import { BpfMap } from './map.ts';
import { native, type NativeObject } from './native.ts';
import { BpfProgram } from './program.ts';

export interface OpenOptions {
  /** Folder on bpffs where maps with LIBBPF_PIN_BY_NAME are pinned and reused; created if missing. */
  pinRoot?: string;
}

/** The BTF layout (size, member offsets) of a struct in an object file, without loading it. */
export function btfStruct(objectPath: string, name: string): CLayout {
  return guard(`cannot read BTF of struct ${name} from ${objectPath}`, { object: objectPath, path: objectPath },
    () => native().btfStruct(objectPath, name));
}

export class BpfObject {
  readonly path: string;
  readonly pinRoot: string | undefined;
  #native: NativeObject | undefined;
  #loaded = false;
  readonly #programs = new Map<string, BpfProgram>();
  readonly #maps = new Map<string, BpfMap>();

  private constructor(path: string, handle: NativeObject, pinRoot: string | undefined) {
    this.path = path;
    this.#native = handle;
    this.pinRoot = pinRoot;
  }

  /** Opens (parses) an object file; a missing file is BpfError code ENOENT naming the path. */
  static open(path: string, opts: OpenOptions = {}): BpfObject {
    const ctx = { object: path, path };
    const handle = guard(`cannot open BPF object ${path}`, ctx, () => {
      if (opts.pinRoot !== undefined) mkdirSync(opts.pinRoot, { recursive: true });
      const Ctor = native().BpfObject;
      return new Ctor(path, opts.pinRoot);
    });
    return new BpfObject(path, handle, opts.pinRoot);
  }

  get loaded(): boolean {
    return this.#loaded;
  }

  #handle(): NativeObject {
    if (!this.#native) throw new BpfError(`BPF object ${this.path} is closed`, { code: ErrorCodes.closed, errno: 9, object: this.path });
    return this.#native;
  }

  /**
   * Loads every program into the kernel and creates (or reuses pinned) maps. A program the
   * verifier rejects is BpfError code WEFT_VERIFIER with the tail of the verifier log. Loading
   * twice is a no-op. Without a pinRoot, libbpf pins LIBBPF_PIN_BY_NAME maps under /sys/fs/bpf.
   */
  load(): void {
    const h = this.#handle();
    if (this.#loaded) return; // libbpf refuses a second load; once is what callers mean
    guard(`cannot load BPF object ${this.path}`, { object: this.path }, () => h.load());
    this.#loaded = true;
  }

  programNames(): string[] {
    return this.#handle().programs().map((p) => p.name);
  }

  /** Names of the maps the object declares (libbpf's internal .bss/.data/.rodata maps left out). */
  mapNames(): string[] {
    return this.#handle().maps().filter((m) => !m.internal).map((m) => m.name);
  }

  #requireLoaded(kind: string, name: string): NativeObject {
    const h = this.#handle();
    if (!this.#loaded) {
      throw new BpfError(`cannot get ${kind} ${name} of ${this.path}: call load() first`,
        { code: ErrorCodes.notLoaded, object: this.path, [kind]: name });
    }
    return h;
  }

  /** A loaded program by name (the C function name); unknown names are BpfError ENOENT. */
  program(name: string): BpfProgram {
    const cached = this.#programs.get(name);
    if (cached && !cached.closed) return cached;
    const h = this.#requireLoaded('program', name);
    const desc = h.programs().find((p) => p.name === name);
    if (!desc) {
      throw new BpfError(`${this.path} has no program ${name} (it has ${h.programs().map((p) => p.name).join(', ') || 'none'})`,
        { code: 'ENOENT', errno: 2, object: this.path, program: name });
    }
    const fd = guard(`cannot get program ${name}`, { object: this.path, program: name }, () => h.programFd(name));
    const prog = new BpfProgram(fd, { ...desc, object: this.path });
    this.#programs.set(name, prog);
    return prog;
  }

  /** A map by name; unknown names are BpfError ENOENT. */
  map(name: string): BpfMap {
    const cached = this.#maps.get(name);
    if (cached && !cached.closed) return cached;
    const h = this.#requireLoaded('map', name);
    const desc = h.maps().find((m) => m.name === name);
    if (!desc) {
      throw new BpfError(`${this.path} has no map ${name} (it has ${this.mapNames().join(', ') || 'none'})`,
        { code: 'ENOENT', errno: 2, object: this.path, map: name });
    }
    const fd = guard(`cannot get map ${name}`, { object: this.path, map: name }, () => h.mapFd(name));
    const map = new BpfMap(fd, { ...desc, object: this.path });
    this.#maps.set(name, map);
    return map;
  }

  /** The BTF layout of a struct of this object (to check codecs against). */
  btfStruct(name: string): CLayout {
    return btfStruct(this.path, name);
  }

  /**
   * Releases the object and the programs and maps taken from it. Links stay attached while
   * pinned or held; pinned maps stay pinned. Idempotent; also done when collected.
   */
  close(): void {
    for (const p of this.#programs.values()) p.close();
    for (const m of this.#maps.values()) m.close();
    this.#programs.clear();
    this.#maps.clear();
    this.#native?.close();
    this.#native = undefined;
  }
}
