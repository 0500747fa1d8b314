// The C heap of this process (agent/native/memory.cc): glibc's statistics, and malloc_trim.
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

/** The binding, if it is recent enough to have `fn` (a build from before memory.cc does not). */
function current(fn: 'mallocTrim' | 'mallocInfo'): NativeBinding {
  const n = native();
  if (typeof n[fn] !== 'function') {
    throw Object.assign(new Error(`the libbpf addon weft_bpf.node has no ${fn}: it was built from older sources; rebuild it with \`make addon\``), { code: 'WEFT_ADDON_OUTDATED' });
  }
  return n;
}
