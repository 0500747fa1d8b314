// The raw interface of the weft_bpf addon (agent/native/), and its loader. Nothing here is for use
// outside agent/libbpf: the typed classes on top own the fds and turn failures into BpfError.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface NativeProgramDesc {
  name: string;
  section: string;
  /** enum bpf_prog_type */
  type: number;
  /** enum bpf_attach_type libbpf derived from the SEC() name */
  expectedAttachType: number;
  /** The object's own fd (-1 before load); not ours to close. */
  fd: number;
}

export interface NativeMapDesc {
  name: string;
  /** enum bpf_map_type */
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  /** libbpf's internal maps (.bss, .data, .rodata, .kconfig) */
  internal: boolean;
  pinPath?: string;
  fd: number;
}

export interface NativeObject {
  load(): void;
  programs(): NativeProgramDesc[];
  maps(): NativeMapDesc[];
  /** A dup of the program's fd: the caller owns it. */
  programFd(name: string): number;
  /** A dup of the map's fd: the caller owns it. */
  mapFd(name: string): number;
  close(): void;
}

/** Owns one fd; closes it on close() or when collected. */
export interface NativeFd {
  readonly fd: number;
  close(): void;
}

export interface NativeProgInfo { id: number; type: number; name: string }
export interface NativeMapInfo { id: number; type: number; name: string; keySize: number; valueSize: number; maxEntries: number; flags: number }
export interface NativeLinkInfo {
  id: number;
  type: number;
  progId: number;
  cgroupId?: bigint;
  attachType?: number;
  ifindex?: number;
  netnsIno?: number;
  mapId?: number;
}

export interface NativeBatch { keys: Buffer; values: Buffer; count: number; next: Buffer; done: boolean }

export interface NativeRingBuffer {
  close(): void;
  ref(): void;
  unref(): void;
}

export interface NativeBtfMember { name: string; bitOffset: number; bitSize: number; size: number }
export interface NativeBtfStruct { name: string; size: number; members: NativeBtfMember[] }

export interface NativeTcpSocketOptions {
  netns?: string;
  family?: 4 | 6;
  host: string;
  port?: number;
  /** listen(2) with this backlog when >= 0 */
  backlog?: number;
  transparent?: boolean;
  reuseAddr?: boolean;
  reusePort?: boolean;
  /** With port 0: bind the first free port from `start` on, wrapping within [from, to]. */
  portSearch?: PortSearch;
}

export interface PortSearch {
  from: number;
  to: number;
  start: number;
  /** Ports never to take, as [lo, hi, lo, hi, ...] (ip_local_reserved_ports). */
  skip?: number[];
}

export interface NativeBinding {
  BpfObject: new (path: string, pinRoot?: string) => NativeObject;
  Fd: new (fd: number) => NativeFd;
  RingBuffer: new (mapFd: number, onRecords: (records: Buffer[]) => void) => NativeRingBuffer;
  progInfo(fd: number): NativeProgInfo;
  mapInfo(fd: number): NativeMapInfo;
  linkInfo(fd: number): NativeLinkInfo;
  /** dup() with close-on-exec; the caller owns the new fd. */
  dupFd(fd: number): number;
  objGet(path: string): number;
  objPin(fd: number, path: string): void;
  linkCreateCgroup(progFd: number, cgroupPath: string, attachType: number): number;
  linkCreateNetns(progFd: number, netnsPath: string, attachType: number): number;
  rawTracepointOpen(progFd: number, name: string): number;
  linkCreateTracepoint(progFd: number, tracepointId: number): number;
  linkCreateTcx(progFd: number, ifname: string, attachType: number, netnsPath?: string): number;
  linkUpdate(linkFd: number, progFd: number, oldProgFd?: number): void;
  linkDetach(linkFd: number): void;
  progAttach(progFd: number, targetFd: number, attachType: number, flags?: number): void;
  progDetach(progFd: number, targetFd: number, attachType: number): void;
  mapLookup(fd: number, key: Uint8Array, valueLen: number, flags?: number): Buffer | undefined;
  mapLookupAndDelete(fd: number, key: Uint8Array, valueLen: number): Buffer | undefined;
  mapUpdate(fd: number, key: Uint8Array, value: Uint8Array, flags?: number): void;
  mapDelete(fd: number, key: Uint8Array): boolean;
  mapNextKey(fd: number, key: Uint8Array | null, keyLen: number): Buffer | undefined;
  mapLookupBatch(fd: number, inBatch: Uint8Array | null, keyLen: number, valueLen: number, count: number, tokenLen: number, del?: boolean): NativeBatch;
  mapUpdateBatch(fd: number, keys: Uint8Array, values: Uint8Array, count: number, flags?: number): number;
  mapDeleteBatch(fd: number, keys: Uint8Array, count: number): number;
  possibleCpus(): number;
  netnsCookie(netnsPath: string): bigint;
  socketCookie(fd: number): bigint;
  createTcpSocket(opts: NativeTcpSocketOptions): { fd: number; port: number };
  localPortRange(netnsPath: string): { from: number; to: number; reserved: string };
  btfStruct(objectPath: string, name: string): NativeBtfStruct;
  /** glibc malloc_trim(0): free pages anywhere in the C heap go back to the kernel; true if any did. */
  mallocTrim(): boolean;
  /** glibc mallinfo2 over every arena. */
  mallocInfo(): NativeMallocInfo;
  /** MADV_DONTNEED on every read-only private file mapping without modified pages. */
  releaseFilePages(): { mappings: number; bytes: number };
}

export interface NativeMallocInfo { heapBytes: number; mmapBytes: number; inUseBytes: number; freeBytes: number }

/** Where the addon is looked for, in order: $WEFT_BPF_ADDON, then the node-gyp build folders. */
export function addonCandidates(): string[] {
  const here = dirname(fileURLToPath(import.meta.url));
  const nativeDir = resolve(here, '..', 'native');
  const out: string[] = [];
  if (process.env.WEFT_BPF_ADDON) out.push(resolve(process.env.WEFT_BPF_ADDON));
  out.push(join(nativeDir, 'build', 'Release', 'weft_bpf.node'), join(nativeDir, 'build', 'Debug', 'weft_bpf.node'));
  return out;
}

export class AddonNotFoundError extends Error {
  readonly code = 'WEFT_ADDON_NOT_FOUND';
  readonly tried: string[];
  constructor(tried: string[], cause?: unknown) {
    super(`the libbpf addon weft_bpf.node could not be loaded; tried ${tried.join(', ')}. ` +
      'Build it with `make addon` (needs libbpf-dev, libelf-dev, zlib1g-dev; `make deps` installs them)' +
      (cause instanceof Error ? `; last error: ${cause.message}` : ''), { cause });
    this.name = 'AddonNotFoundError';
    this.tried = tried;
  }
}

let loaded: NativeBinding | undefined;

/** The addon, loaded on first use. Throws AddonNotFoundError naming every path it tried. */
export function native(): NativeBinding {
  if (loaded) return loaded;
  const require = createRequire(import.meta.url);
  const tried = addonCandidates();
  let lastError: unknown;
  for (const path of tried) {
    if (!existsSync(path)) continue;
    try {
      loaded = require(path) as NativeBinding;
      return loaded;
    } catch (err) {
      lastError = err;
    }
  }
  throw new AddonNotFoundError(tried, lastError);
}
