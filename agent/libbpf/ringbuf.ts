// RingBuffer: records of a BPF_MAP_TYPE_RINGBUF delivered to JavaScript. The addon waits on the
// ring on a thread of its own and hands records over through a ThreadSafeFunction, so the event
// loop never blocks; records arrive in batches, in order, on the JavaScript thread.
import { BpfError, guard } from './errors.ts';
import type { BpfMap } from './map.ts';
import { native, type NativeRingBuffer } from './native.ts';

export interface RingBufferOptions {
  /** Keep the process alive while the ring buffer is open (default true), like a socket. */
  ref?: boolean;
}

export class RingBuffer {
  readonly map: string;
  #handle: NativeRingBuffer | undefined;

  /**
   * Starts consuming. `onRecord` gets each record's bytes (a copy it may keep); an exception it
   * throws is rethrown as an uncaught exception, the same as from an event listener.
   */
  constructor(map: BpfMap, onRecord: (data: Buffer) => void, opts: RingBufferOptions = {}) {
    this.map = map.name;
    if (map.type !== 'ringbuf') {
      throw new BpfError(`map ${map.name} is a ${map.type} map, not a ringbuf`, { code: 'EINVAL', errno: 22, map: map.name });
    }
    const deliver = (records: Buffer[]): void => {
      for (const r of records) {
        if (this.#handle === undefined) return; // closed: drop what was still queued
        try {
          onRecord(r);
        } catch (err) {
          process.nextTick(() => { throw err; });
        }
      }
    };
    const Ctor = native().RingBuffer;
    this.#handle = guard(`cannot consume ring buffer ${map.name}`, { map: map.name }, () => new Ctor(map.fd, deliver));
    if (opts.ref === false) this.#handle.unref();
  }

  get closed(): boolean {
    return this.#handle === undefined;
  }

  /** Lets the process exit while the ring buffer is open. */
  unref(): this {
    this.#handle?.unref();
    return this;
  }

  ref(): this {
    this.#handle?.ref();
    return this;
  }

  /** Stops the consumer thread and waits for it; records not yet delivered are dropped. Idempotent. */
  close(): void {
    const h = this.#handle;
    this.#handle = undefined;
    h?.close();
  }
}
