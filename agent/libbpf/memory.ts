// The memory of this process (agent/native/memory.cc): glibc's statistics and malloc_trim for the C
// heap, and the release of the file pages it maps but does not use.
import { native, type NativeBinding, type NativeMallocInfo } from './native.ts';

export type MallocInfo = NativeMallocInfo;

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
export function releaseFilePages(): { mappings: number; bytes: number } {
  return current('releaseFilePages').releaseFilePages();
}

/** The binding, if it is recent enough to have `fn` (a build from before memory.cc does not). */
function current(fn: 'mallocTrim' | 'mallocInfo' | 'releaseFilePages'): NativeBinding {
  const n = native();
  if (typeof n[fn] !== 'function') {
    throw Object.assign(new Error(`the libbpf addon weft_bpf.node has no ${fn}: it was built from older sources; rebuild it with \`make addon\``), { code: 'WEFT_ADDON_OUTDATED' });
  }
  return n;
}
