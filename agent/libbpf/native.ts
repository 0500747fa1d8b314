// The raw BPF interface of the weft_bpf addon (agent/native/). Nothing here is for use outside
// agent/libbpf: the typed classes on top own the fds and turn failures into BpfError. The addon's
// loader, which the memory functions (lib/sys/memory.ts) share, is lib/sys/addon.ts.
import { loadAddon } from '../../lib/sys/addon.ts';

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
}

export { AddonNotFoundError, addonCandidates } from '../../lib/sys/addon.ts';

/** The addon, loaded on first use. Throws AddonNotFoundError naming every path it tried. */
export function native(): NativeBinding {
  return loadAddon() as NativeBinding;
}
