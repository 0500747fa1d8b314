import { startChecking, stopChecking } from './session-buffer.ts';
import { FALLBACK_MEMORY_BUDGET, MEMORY_BUDGET_FRACTION } from './tuning.ts';
import { ownMemoryLimit } from '../sys/cgroup.ts';
import { findCgroup2Root } from '../sys/mounts.ts';

/** A server's memory budget and where it came from (logged at start by each component). */
export interface MemoryBudget {
  bytes: number;
  /** The cgroup memory limit it is a fraction of, or undefined: none (`max`) or unreadable. */
  limit: number | undefined;
  /** How it was chosen, for the start-up log line. */
  from: string;
}

/**
 * The default memory budget: MEMORY_BUDGET_FRACTION of this process's cgroup v2 memory limit
 * (lib/sys/cgroup.ts ownMemoryLimit; the cgroup v2 mount found in /proc/self/mountinfo), or
 * FALLBACK_MEMORY_BUDGET when there is none or it cannot be read. `limit` is for tests.
 */
export function defaultMemoryBudget(limit: () => number | undefined = readOwnLimit): MemoryBudget {
  const l = limit();
  if (l === undefined) return { bytes: FALLBACK_MEMORY_BUDGET, limit: undefined, from: 'no cgroup memory limit (max or unreadable): the fallback' };
  return { bytes: Math.floor(l * MEMORY_BUDGET_FRACTION), limit: l, from: `${MEMORY_BUDGET_FRACTION} of the cgroup memory limit` };
}

function readOwnLimit(): number | undefined {
  try {
    return ownMemoryLimit(findCgroup2Root());
  } catch {
    return undefined;
  }
}

/** Where a tunnel's bytes wait: a stream's or socket's buffers, read at every check. */
export interface Buffered {
  readonly readableLength: number;
  readonly writableLength: number;
}

/** What a session's answered tunnels hold received and not yet read, summed at every check (session-buffer.ts judges it). */
export interface SessionTally {
  unread: number;
  answered: number;
}

/** One tunnel, or a CONNECT not yet answered, in a server's count. */
export interface TrackedTunnel {
  /** The HTTP/2 stream: what it received and nobody read yet, what it was given to send and has not. */
  readonly stream: Buffered;
  /** The destination once the CONNECT is answered: what it sent and the pipe has not read, what the pipe wrote to it and it has not taken. */
  upstream: Buffered | undefined;
  /** The other end of the upstream when it is an in-memory pair (HboneConnectDecision's `inner`). */
  inner: Buffered | undefined;
  /** Bytes received before the answer, held aside until the tunnel opens (server.ts, maxEarlyData). */
  early: number;
  /** Bytes held at the last check. */
  held: number;
  /** Reset by a check: its bytes are being freed and count no more. */
  reset: boolean;
  /** Its session's tally. */
  readonly session: SessionTally;
}

export interface TunnelMemoryOptions<T extends TrackedTunnel> {
  /** Bytes all tunnels may hold together (defaultMemoryBudget). */
  budget: number;
  /** Resets stop once the total is below this (a fraction of the budget, MEMORY_RESET_TARGET). */
  target: number;
  /**
   * After each pass, with every session's tally summed: judges them (and zeroes them). Returns
   * whether checks are still needed while no tunnel is left (a throttled session to release).
   */
  afterPass: () => boolean;
  /** Resets `tunnel`: it holds `held` bytes, the `tunnels` held `total` together at this check. */
  reset: (tunnel: T, e: { held: number; total: number; tunnels: number }) => void;
}

/**
 * Classes of held bytes: four per power of two (a class's tunnels hold within a fifth of each
 * other), 2^31 and more in the last one. Envoy's reset_high_memory_stream uses eight power-of-two
 * classes from 256 KiB (source/common/buffer/watermark_buffer.cc); finer classes cost nothing here.
 */
const CLASSES = 128;

/** The class of `bytes` (0 for 0 bytes). */
export function classOf(bytes: number): number {
  if (bytes >= 0x80000000) return CLASSES - 1;
  if (bytes < 4) return bytes;
  const e = 31 - Math.clz32(bytes);
  return (e << 2) | ((bytes >>> (e - 2)) & 3);
}

/**
 * A server's tunnels against one memory budget, with the semantics of Envoy's overload action
 * envoy.overload_actions.reset_high_memory_stream: while what all tunnels hold (both directions:
 * stream and destination buffers, an in-memory pair's other end, the pipe's, and what CONNECTs not yet answered carried) is over
 * the budget, the tunnels holding the most are reset, largest class first, until the total is below
 * the target. None is exempt for moving: a tunnel that moves a byte a second while holding megabytes
 * holds them all the same. Under the budget nothing is reset, however slowly a peer reads.
 *
 * Each check is one pass over the tunnels that allocates nothing: every tunnel's bytes are summed
 * into its class and its session's tally (the session buffers' check, merged into this one so that
 * the streams are walked once a tick); only under pressure a second pass resets the classes from
 * the top, no sort.
 */
export class TunnelMemory<T extends TrackedTunnel> {
  readonly #opts: TunnelMemoryOptions<T>;
  readonly #tunnels = new Set<T>();
  readonly #bytes = new Float64Array(CLASSES);
  readonly #check = (): void => this.check();
  #checking = false;
  /** Bytes all tunnels held at the last check. */
  heldBytes = 0;

  constructor(opts: TunnelMemoryOptions<T>) {
    if (!(opts.budget > 0)) throw new RangeError(`memoryBudget must be a positive number of bytes, not ${opts.budget}`);
    this.#opts = opts;
  }

  get tunnels(): number {
    return this.#tunnels.size;
  }

  /** Counts `tunnel` from the next check until delete. */
  add(tunnel: T): void {
    this.#tunnels.add(tunnel);
    if (this.#checking) return;
    this.#checking = true;
    startChecking(this.#check);
  }

  delete(tunnel: T): void {
    this.#tunnels.delete(tunnel);
  }

  /** Stops checking (the server closed). */
  stop(): void {
    if (!this.#checking) return;
    this.#checking = false;
    stopChecking(this.#check);
  }

  /** One check: measures every tunnel, then resets the largest while over the budget. */
  check(): void {
    const bytes = this.#bytes;
    bytes.fill(0);
    let total = 0;
    let n = 0;
    for (const t of this.#tunnels) {
      if (t.reset) continue;
      const s = t.stream;
      const unread = s.readableLength;
      let held = unread + s.writableLength + t.early;
      const u = t.upstream;
      if (u !== undefined) {
        held += u.readableLength + u.writableLength;
        const i = t.inner;
        if (i !== undefined) held += i.readableLength + i.writableLength;
        t.session.unread += unread;
        t.session.answered++;
      }
      t.held = held;
      total += held;
      n++;
      bytes[classOf(held)]! += held;
    }
    this.heldBytes = total;
    const needed = this.#opts.afterPass();
    if (total > this.#opts.budget) this.#relieve(total, n);
    if (this.#tunnels.size === 0 && !needed) this.stop();
  }

  /** Resets the tunnels of the largest classes until `total` is below the target. */
  #relieve(total: number, n: number): void {
    const bytes = this.#bytes;
    let toFree = total - this.#opts.target;
    // Classes above `last` are reset whole; in `last`, tunnels until enough is freed.
    let last = CLASSES - 1;
    for (; last > 1; last--) {
      if (bytes[last]! >= toFree) break;
      toFree -= bytes[last]!;
    }
    for (const t of this.#tunnels) {
      const held = t.held;
      if (t.reset || held === 0) continue;
      const c = classOf(held);
      if (c < last) continue;
      if (c === last) {
        if (toFree <= 0) continue;
        toFree -= held;
      }
      t.reset = true;
      this.#opts.reset(t, { held, total, tunnels: n });
    }
  }
}
