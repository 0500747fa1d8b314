import { startChecking, stopChecking } from './session-buffer.ts';
import { FALLBACK_MEMORY_BUDGET, MEMORY_BUDGET_FRACTION, MEMORY_RESETS_PER_CHECK } from './tuning.ts';
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
  /** Its peer (identity and address): under pressure the peer holding the most loses tunnels first. */
  readonly peer: string;
}

/** Why a tunnel is reset, for its log line. */
export interface MemoryReset {
  held: number;
  peerHeld: number;
  peerTunnels: number;
  total: number;
  tunnels: number;
}

/** A peer's tunnels under pressure. */
interface PeerHeld<T> {
  held: number;
  tunnels: T[];
  /** Its tunnels are sorted, largest first, from the first time it is chosen. */
  sorted: boolean;
  /** Its next tunnel to reset. */
  next: number;
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
  /**
   * Resets `tunnel`: it holds `held` bytes; its peer `peerHeld` in `peerTunnels`, the most of any peer; all `tunnels` held `total` at this check.
   * The tunnel is marked reset before the call and not checked again, so the callback must close it
   * before anything that may throw (a notification): a throw after that leaves it closed, not open and uncounted.
   */
  reset: (tunnel: T, e: MemoryReset) => void;
}

/**
 * A server's tunnels against one memory budget, with the semantics of Envoy's overload action
 * envoy.overload_actions.reset_high_memory_stream: while what all tunnels hold (both directions:
 * stream and destination buffers, an in-memory pair's other end, the pipe's, and what CONNECTs not
 * yet answered carried) is over the budget, tunnels are reset until the total is below the target.
 * Which ones goes by peer first (identity and address): Envoy picks the largest streams, which lets
 * an attacker choose the victim (a legitimate upload holds its stream window and pipe, more than
 * any of many small zero-window tunnels). Here the peer holding the most loses its largest tunnels
 * until it holds no more than the next peer or its fair share (the budget over the peers holding
 * bytes), and again, so that whoever holds the most pays. None is exempt for moving: a tunnel that
 * moves a byte a second while holding megabytes holds them all the same. Under the budget nothing
 * is reset, however slowly a peer reads.
 *
 * Each check is one pass over the tunnels that allocates nothing: every tunnel's bytes are summed
 * into its session's tally (the session buffers' check, merged into this one so that the streams
 * are walked once a tick); only under pressure are the tunnels grouped by peer and sorted.
 */
export class TunnelMemory<T extends TrackedTunnel> {
  readonly #opts: TunnelMemoryOptions<T>;
  readonly #tunnels = new Set<T>();
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
    }
    this.heldBytes = total;
    const needed = this.#opts.afterPass();
    if (total > this.#opts.budget) this.#relieve(total, n);
    if (this.#tunnels.size === 0 && !needed) this.stop();
  }

  /**
   * Resets tunnels until `total` is below the target: the peer holding the most loses its largest
   * tunnels until it holds no more than the next peer or its fair share (at least one tunnel, so
   * that each round frees something), then the peers are ranked again; at most
   * MEMORY_RESETS_PER_CHECK, the next check goes on.
   */
  #relieve(total: number, n: number): void {
    const byPeer = new Map<string, PeerHeld<T>>();
    for (const t of this.#tunnels) {
      if (t.reset || t.held === 0) continue;
      let p = byPeer.get(t.peer);
      if (p === undefined) {
        p = { held: 0, tunnels: [], sorted: false, next: 0 };
        byPeer.set(t.peer, p);
      }
      p.held += t.held;
      p.tunnels.push(t);
    }
    const peers = [...byPeer.values()].sort((a, b) => b.held - a.held);
    const fair = this.#opts.budget / peers.length;
    const target = this.#opts.target;
    let left = MEMORY_RESETS_PER_CHECK;
    while (total > target && peers.length > 0 && left > 0) {
      const p = peers.shift()!;
      const floor = Math.max(peers[0]?.held ?? 0, fair);
      if (!p.sorted) {
        p.tunnels.sort((a, b) => b.held - a.held);
        p.sorted = true;
      }
      const peerHeld = p.held;
      const peerTunnels = p.tunnels.length - p.next;
      do {
        const t = p.tunnels[p.next++]!;
        t.reset = true;
        left--;
        this.#opts.reset(t, { held: t.held, peerHeld, peerTunnels, total, tunnels: n });
        p.held -= t.held;
        total -= t.held;
      } while (total > target && p.held > floor && p.next < p.tunnels.length && left > 0);
      if (p.next === p.tunnels.length) continue;
      // Back in its place among the others, largest first.
      let i = 0;
      while (i < peers.length && peers[i]!.held > p.held) i++;
      peers.splice(i, 0, p);
    }
  }
}
