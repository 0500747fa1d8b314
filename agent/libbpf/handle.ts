// OwnedFd: the one owner of a kernel fd on the TypeScript side. The native Fd object closes the
// fd when close() is called or, failing that, when it is garbage-collected.
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
