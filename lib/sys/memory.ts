// The memory a Weft process holds and does not use, handed back (agent/native/memory.cc, through
// the addon's loader, lib/sys/addon.ts):
// - the C heap: glibc keeps the freed chunks of a bulk stream's buffers (socket reads, TLS records,
//   HTTP/2 frames) in its free lists between live allocations, where free() cannot return them;
//   malloc_trim(0) hands every whole free page back (docs/PERFORMANCE.md, agent memory);
// - the file pages it maps: the node executable is about 100 MB of code and read-only data, and
//   start-up leaves about 50 MB of it mapped, though a running process uses about half of it.
//   releaseFilePages() unmaps the read-only private file mappings the process has not modified;
//   the pages stay in the page cache, and those in use come back at their next touch as minor
//   faults (docs/PERFORMANCE.md, "the executable's pages").
// The agent, the waypoint, the controller and the east-west gateway run a round at start and every
// MEMORY_RELEASE_INTERVAL_MS.
import { loadAddon } from './addon.ts';
import type { Logger } from '../log.ts';

export interface MallocInfo { heapBytes: number; mmapBytes: number; inUseBytes: number; freeBytes: number }
export interface FilePagesReleased { mappings: number; bytes: number }

interface MemoryBinding {
  /** glibc malloc_trim(0): free pages anywhere in the C heap go back to the kernel; true if any did. */
  mallocTrim(): boolean;
  /** glibc mallinfo2 over every arena. */
  mallocInfo(): MallocInfo;
  /** MADV_DONTNEED on every read-only private file mapping without modified pages. */
  releaseFilePages(): FilePagesReleased;
}

/**
 * How often a process hands memory back. One round costs about 2 ms of CPU (0.02 % of a core),
 * the refaults of the pages in use included.
 */
export const MEMORY_RELEASE_INTERVAL_MS = 10_000;

/**
 * Returns every whole free page of the C heap to the kernel (glibc malloc_trim(0)), wherever it
 * lies, not only at the heap's top as free() does; true if any page went back.
 */
export function mallocTrim(): boolean {
  return current('mallocTrim').mallocTrim();
}

/** glibc mallinfo2 summed over every arena: bytes in the heaps, in mmapped chunks, in use, and free. */
export function mallocInfo(): MallocInfo {
  return current('mallocInfo').mallocInfo();
}

/**
 * Unmaps the resident pages of every read-only private file mapping this process has not modified
 * (the node executable's code and read-only data above all; MADV_DONTNEED). They stay in the page
 * cache, clean and shared; the ones in use come back at their next touch as minor faults, so what
 * stays mapped, and counted in RSS, is what the process uses. Returns how many mappings were
 * released and the bytes they had resident.
 */
export function releaseFilePages(): FilePagesReleased {
  return current('releaseFilePages').releaseFilePages();
}

export interface MemoryRelease {
  /** The file pages of the last round, and when it ran. */
  readonly last: (FilePagesReleased & { at: string }) | undefined;
  /** A round now (after start-up work that touched pages once: the agent when it is ready). */
  releaseNow(): void;
  stop(): void;
}

/**
 * Runs a round now and then every `intervalMs`. Throws when the addon is missing, or was built
 * from sources older than memory.cc (WEFT_ADDON_OUTDATED): at start, not from a timer.
 */
export function startMemoryRelease(intervalMs = MEMORY_RELEASE_INTERVAL_MS): MemoryRelease {
  let last: (FilePagesReleased & { at: string }) | undefined;
  const round = (): void => {
    mallocTrim();
    last = { ...releaseFilePages(), at: new Date().toISOString() };
  };
  round();
  const timer = setInterval(round, intervalMs).unref();
  return { get last() { return last; }, releaseNow: round, stop: () => clearInterval(timer) };
}

/** The binding, if it is recent enough to have `fn` (a build from before memory.cc does not). */
function current<K extends keyof MemoryBinding>(fn: K): MemoryBinding {
  const n = loadAddon() as Partial<MemoryBinding>;
  if (typeof n[fn] !== 'function') {
    throw Object.assign(new Error(`the libbpf addon weft_bpf.node has no ${fn}: it was built from older sources; rebuild it with \`make addon\``), { code: 'WEFT_ADDON_OUTDATED' });
  }
  return n as MemoryBinding;
}

/**
 * For a part whose memory release is a saving, not a duty (the waypoint, the controller, the
 * east-west gateway): starts it, or logs once why it cannot run (no addon in this environment).
 * Its timer never keeps the process alive.
 */
export function tryMemoryRelease(log: Pick<Logger, 'warn'>): MemoryRelease | undefined {
  try {
    return startMemoryRelease();
  } catch (err) {
    log.warn('memory it does not use is not handed back (the weft_bpf addon is needed)', { error: (err as Error).message });
    return undefined;
  }
}

/**
 * A part's main (the waypoint, the controller, the east-west gateway) with its memory rounds: one
 * before `start` (lib/main.ts runMain), one once it has started (what start-up alone touched goes),
 * then every MEMORY_RELEASE_INTERVAL_MS. The agent runs its own (it requires the addon, and shows
 * the last round in /stats).
 */
export async function withMemoryRelease(log: Pick<Logger, 'warn'>, start: () => Promise<void>): Promise<void> {
  const memory = tryMemoryRelease(log);
  await start();
  memory?.releaseNow();
}
