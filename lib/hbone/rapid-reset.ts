// The rapid-reset rule (CVE-2023-44487), one for every HTTP/2 server that takes streams from a peer:
// the HBONE server's CONNECTs (server.ts) and the waypoint's requests inside its tunnels
// (waypoint/src/engine.ts). As Envoy's: a reset is premature when the stream had no answer yet and
// lived less than minLifetimeMs (premature_reset_min_stream_lifetime_seconds); more than `max` of
// them inside `intervalMs`, or, once the session opened `totalStreams`, more than half of its
// streams (overload.premature_reset_total_stream_count), and the session is cut. A client that gives
// up on a request after waiting for it (a deadline against a slow server) is no attack: what the
// attack needs is streams that cost the server work and the client nothing, so it resets them at once.
import {
  DEFAULT_RAPID_RESET_INTERVAL_MS,
  DEFAULT_RAPID_RESET_MAX,
  DEFAULT_RAPID_RESET_MIN_LIFETIME_MS,
  DEFAULT_RAPID_RESET_TOTAL_STREAMS,
} from './tuning.ts';

/** Each field defaults to lib/hbone/tuning.ts: 100 resets / 1 s, 1 s lifetime, ratio after 500 streams. */
export interface RapidResetLimits {
  max: number;
  intervalMs: number;
  minLifetimeMs?: number;
  totalStreams?: number;
}

/** One session's count. */
export class RapidResetGuard {
  readonly max: number;
  readonly intervalMs: number;
  readonly minLifetimeMs: number;
  readonly totalStreams: number;
  #windowStart = 0;
  #inWindow = 0;
  /** Streams opened, and of them reset early, over the session's life (the ratio guard). */
  streams = 0;
  premature = 0;
  /** The session was cut: no later reset cuts it again. */
  cut = false;

  constructor(limits?: RapidResetLimits) {
    this.max = limits?.max ?? DEFAULT_RAPID_RESET_MAX;
    this.intervalMs = limits?.intervalMs ?? DEFAULT_RAPID_RESET_INTERVAL_MS;
    this.minLifetimeMs = limits?.minLifetimeMs ?? DEFAULT_RAPID_RESET_MIN_LIFETIME_MS;
    this.totalStreams = limits?.totalStreams ?? DEFAULT_RAPID_RESET_TOTAL_STREAMS;
  }

  /** A stream opened. */
  opened(): void {
    this.streams++;
  }

  /**
   * The peer reset a stream before its answer, `lifetimeMs` after it opened. Returns why the session
   * is to be cut, the one time it is; undefined otherwise (a reset after the minimum lifetime counts
   * for nothing).
   */
  reset(lifetimeMs: number, now = performance.now()): string | undefined {
    if (lifetimeMs >= this.minLifetimeMs) return undefined;
    if (now - this.#windowStart > this.intervalMs) {
      this.#windowStart = now;
      this.#inWindow = 0;
    }
    this.premature++;
    const burst = ++this.#inWindow > this.max;
    const ratio = this.streams >= this.totalStreams && this.premature * 2 > this.streams;
    if (this.cut || (!burst && !ratio)) return undefined;
    this.cut = true;
    return burst
      ? `peer reset more than ${this.max} streams before they were answered within ${this.intervalMs} ms`
      : `peer reset ${this.premature} of its ${this.streams} streams before they were answered (more than half, after ${this.totalStreams})`;
  }
}
