// Request bodies that can be sent more than once (retries, mirrors). The body streams to the current
// attempt with backpressure while a copy is kept up to a limit; past the limit the copy is dropped
// and the request can no longer be retried (Envoy's buffer limit behaves the same way).
import { Readable } from 'node:stream';

/** Largest body kept for retries and mirrors. */
export const DEFAULT_RETRY_BUFFER_BYTES = 1 << 20;

export class ReplayableBody {
  private readonly source: Readable;
  private readonly limit: number;
  private chunks: Buffer[] = [];
  private buffered = 0;
  private reader: Readable | undefined;
  private endWaiters: Array<(complete: boolean) => void> = [];
  /** Bytes received from the client so far. */
  bytes = 0;
  ended = false;
  overflowed = false;
  error: Error | undefined;
  /** Readers opened so far. */
  opened = 0;

  constructor(source: Readable, limit = DEFAULT_RETRY_BUFFER_BYTES) {
    this.source = source;
    this.limit = limit;
    source.on('data', (chunk: Buffer) => {
      this.bytes += chunk.length;
      if (!this.overflowed) {
        this.chunks.push(chunk);
        this.buffered += chunk.length;
        if (this.buffered > this.limit) { this.overflowed = true; this.chunks = []; this.buffered = 0; }
      }
      const r = this.reader;
      if (r && !r.push(chunk)) source.pause();
    });
    source.on('end', () => {
      this.ended = true;
      this.reader?.push(null);
      this.settle();
    });
    const fail = (err: Error): void => {
      if (this.ended || this.error) return;
      this.error = err;
      this.reader?.destroy(err);
      this.settle();
    };
    source.on('error', fail);
    source.on('aborted', () => fail(new Error('client aborted the request body')));
    source.on('close', () => { if (!this.ended) fail(new Error('client closed the request before its body ended')); });
    source.pause();
  }

  private settle(): void {
    const complete = this.ended && !this.overflowed && !this.error;
    for (const w of this.endWaiters.splice(0)) w(complete);
  }

  /** Can a new attempt still get the whole body? */
  get replayable(): boolean {
    return !this.overflowed && !this.error && (this.opened === 0 || this.bytes === this.buffered);
  }

  /** A stream of the whole body for a new attempt; detaches the previous attempt's reader. */
  open(): Readable {
    const prev = this.reader;
    this.reader = undefined;
    prev?.destroy();
    this.opened++;
    const r: Readable = new Readable({
      read: () => { if (this.reader === r && !this.ended) this.source.resume(); },
    });
    // The body's failure (the client went away mid-body) is kept in `error` and ends the exchange
    // through the request's abort; the attempt that reads this stream may have stopped listening by
    // then, and an 'error' nobody listens to would end the process.
    r.on('error', noop);
    for (const c of this.chunks) r.push(c);
    if (this.ended) r.push(null);
    else if (this.error) r.destroy(this.error);
    this.reader = r;
    return r;
  }

  /** Resolves when the body has ended: true when it is complete and kept (so it can be mirrored). */
  whenComplete(): Promise<boolean> {
    if (this.ended || this.error) return Promise.resolve(this.ended && !this.overflowed && !this.error);
    return new Promise((resolve) => this.endWaiters.push(resolve));
  }

  /** An independent copy of a complete, kept body (for mirrors); undefined otherwise. */
  snapshot(): Readable | undefined {
    if (!this.ended || this.overflowed || this.error) return undefined;
    return Readable.from(this.chunks.slice(), { objectMode: false });
  }
}

function noop(): void {}
