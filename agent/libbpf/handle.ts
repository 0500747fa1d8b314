// OwnedFd: the one owner of a kernel fd on the TypeScript side. The native Fd object closes the
// fd when close() is called or, failing that, when it is garbage-collected.
import { mkdirSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { closedError, type BpfErrorContext } from './errors.ts';
import { native, type NativeFd } from './native.ts';

export class OwnedFd {
  #fd: NativeFd | undefined;
  readonly kind: string;
  readonly label: string;

  constructor(fd: number, kind: string, label: string) {
    this.#fd = new (native().Fd)(fd);
    this.kind = kind;
    this.label = label;
  }

  get closed(): boolean {
    return this.#fd === undefined;
  }

  /** The fd number; throws WEFT_CLOSED after close(). */
  get(ctx: BpfErrorContext = {}): number {
    if (!this.#fd) throw closedError(this.kind, this.label, ctx);
    return this.#fd.fd;
  }

  close(): void {
    this.#fd?.close();
    this.#fd = undefined;
  }
}

/** Pins a link, map or program fd at a bpffs path, creating missing parent folders. */
export function pinFd(fd: number, path: string): void {
  mkdirSync(dirname(path), { recursive: true });
  native().objPin(fd, path);
}

/** Removes a pin; one that is already gone is fine. */
export function removePin(path: string): void {
  try {
    unlinkSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}
