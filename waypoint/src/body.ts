// Request bodies that can be sent more than once (retries, mirrors). The body streams to the current
// attempt with backpressure while a copy is kept up to a limit; past the limit the copy is dropped
// and the request can no longer be retried (Envoy's buffer limit behaves the same way).
import { Readable } from 'node:stream';

/** Largest body kept for retries and mirrors. */
export const DEFAULT_RETRY_BUFFER_BYTES = 1 << 20;
/**
 * Bytes all the bodies of a waypoint may keep for replay at once. Each request may keep up to
 * DEFAULT_RETRY_BUFFER_BYTES; without a shared bound, clients sending many large bodies to a slow
 * endpoint would make the waypoint hold requests x 1 MiB. Past it a body streams as usual but is
 * not kept (not retried or mirrored), as one over the per-request limit.
 */
export const DEFAULT_REPLAY_BUDGET_BYTES = 128 << 20;

/** The bytes every replayable body of one waypoint keeps, bounded together. */
export class ReplayBudget {
  readonly max: number;
  #used = 0;
  /** Bodies that stopped being kept because the budget was spent. */
  refused = 0;

  constructor(max: number = DEFAULT_REPLAY_BUDGET_BYTES) {
    if (!Number.isInteger(max) || max < 0) throw new RangeError(`replay budget must be a whole number of bytes, not ${max}`);
    this.max = max;
  }

  get used(): number {
    return this.#used;
  }

  take(n: number): boolean {
    if (this.#used + n > this.max) return false;
    this.#used += n;
    return true;
  }

  give(n: number): void {
    this.#used = Math.max(0, this.#used - n);
  }
}

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
  /** Mirror copies (snapshot()) not yet closed, and whether the exchange itself is over. */
  private holds = 0;
  private released = false;

  private readonly budget: ReplayBudget | undefined;

  /** `budget`: shared with the waypoint's other bodies; a chunk it cannot take ends the keeping. */
  constructor(source: Readable, limit = DEFAULT_RETRY_BUFFER_BYTES, budget?: ReplayBudget) {
    this.source = source;
    this.limit = limit;
    this.budget = budget;
    source.on('data', (chunk: Buffer) => {
      this.bytes += chunk.length;
      if (!this.overflowed) {
        if (this.buffered + chunk.length > this.limit) this.drop();
        else if (this.budget && !this.budget.take(chunk.length)) { this.budget.refused++; this.drop(); }
        else { this.chunks.push(chunk); this.buffered += chunk.length; }
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

  /** Stops keeping the body (too large, or the budget is spent): no retry or mirror can have it now. */
  private drop(): void {
    this.overflowed = true;
    this.budget?.give(this.buffered);
    this.chunks = [];
    this.buffered = 0;
  }

  /**
   * The exchange is over: what was kept goes back to the budget, once the mirror copies reading it
   * (snapshot()) have ended too: until then their bytes stay counted.
   */
  release(): void {
    this.released = true;
    if (this.holds === 0 && !this.overflowed) this.drop();
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

  /**
   * An independent copy of a complete, kept body (for mirrors); undefined otherwise. The body's
   * bytes stay in the replay budget until the copy closes (its reader destroys it when done).
   */
  snapshot(): Readable | undefined {
    if (!this.ended || this.overflowed || this.error) return undefined;
    const copy = Readable.from(this.chunks.slice(), { objectMode: false });
    this.holds++;
    copy.once('close', () => {
      this.holds--;
      if (this.holds === 0 && this.released && !this.overflowed) this.drop();
    });
    return copy;
  }
}

function noop(): void {}
