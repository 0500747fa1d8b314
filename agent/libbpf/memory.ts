// The C heap of this process (agent/native/memory.cc): glibc's statistics, and malloc_trim.
import { native, type NativeMallocInfo } from './native.ts';

export type MallocInfo = NativeMallocInfo;

/**
 * Returns every whole free page of the C heap to the kernel (glibc malloc_trim(0)), wherever it
 * lies, not only at the heap's top as free() does; true if any page went back.
 */
export function mallocTrim(): boolean {
  return native().mallocTrim();
}

/** glibc mallinfo2 summed over every arena: bytes in the heaps, in mmapped chunks, in use, and free. */
export function mallocInfo(): MallocInfo {
  return native().mallocInfo();
}
