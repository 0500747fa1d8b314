import { constants as h2, type Http2Session, type Http2Stream } from 'node:http2';
import { SESSION_BUFFER_CHECK_MS, SETTINGS_ACK_TIMEOUT_MS, THROTTLED_STREAM_WINDOW } from './tuning.ts';

export interface SessionBufferOptions {
  /** Bytes the session's watched streams may hold received and not yet read (DEFAULT_SESSION_BUFFER). */
  budget: number;
  /** The stream window to restore once the readers have caught up (SETTINGS_INITIAL_WINDOW_SIZE). */
  streamWindow: number;
  /** The session went over its budget: every stream's window is being shrunk. */
  onThrottled: (e: { heldBytes: number; tunnels: number }) => void;
  /** The peer did not acknowledge the shrunk window in time; the session is destroyed right after. */
  onSettingsTimeout: (reason: string) => void;
}

/**
 * The checks of every session with tunnels (and of every server's tunnel memory,
 * memory-pressure.ts), run by one timer every SESSION_BUFFER_CHECK_MS while there are any (a timer
 * per session was thousands of wake-ups a second on a busy node).
 */
const checks = new Set<() => void>();
let ticker: NodeJS.Timeout | undefined;

/** Runs `check` at every tick of the one timer until stopChecking. */
export function startChecking(check: () => void): void {
  checks.add(check);
  if (ticker) return;
  ticker = setInterval(() => {
    for (const c of checks) {
      // One check's fault (a callback it makes, onRefusal included) must neither stop the others
      // nor escape the timer, where it would end the process.
      try {
        c();
      } catch (err) {
        process.emitWarning(`an HBONE server check threw (the next tick runs it again): ${err instanceof Error ? err.stack ?? err.message : String(err)}`, { type: 'WeftCheckError' });
      }
    }
  }, SESSION_BUFFER_CHECK_MS);
  ticker.unref();
}

export function stopChecking(check: () => void): void {
  checks.delete(check);
  if (checks.size > 0 || !ticker) return;
  clearInterval(ticker);
  ticker = undefined;
}

/**
 * Bounds what one HTTP/2 session's tunnels hold received and not yet taken by whoever reads them,
 * on either end of HBONE (the server's destinations, the pool's pods). Node returns
 * connection-level window as data arrives, so only each stream's window bounds it: 2,000 streams
 * of 4 MiB whose readers do not read would be 8 GiB. Over the budget, every stream's window is
 * shrunk by SETTINGS_INITIAL_WINDOW_SIZE (RFC 9113 section 6.9.2: the change applies to every open
 * stream) to THROTTLED_STREAM_WINDOW until the readers have caught up to a quarter of it; a peer
 * that does not acknowledge the SETTINGS within SETTINGS_ACK_TIMEOUT_MS is cut off (section 6.5.3,
 * SETTINGS_TIMEOUT), as one that ignores a smaller window must not keep sending.
 */
export class SessionBuffer {
  readonly #session: Http2Session;
  readonly #opts: SessionBufferOptions;
  readonly #tunnels = new Set<Http2Stream>();
  /** This session's check while it is among the ticker's (startChecking). */
  readonly #check = (): void => this.#checkNow();
  #checking = false;
  /** Waiting for the peer's acknowledgement of our last SETTINGS. */
  #ackTimer: NodeJS.Timeout | undefined;
  #throttled = false;

  constructor(session: Http2Session, opts: SessionBufferOptions) {
    this.#session = session;
    this.#opts = opts;
    // A session that closes owes no acknowledgement (Node never calls back for it).
    session.once('close', () => {
      this.#stop();
      clearTimeout(this.#ackTimer);
    });
  }

  /** The streams' windows are shrunk (over the budget, not yet caught up). */
  get throttled(): boolean {
    return this.#throttled;
  }

  /**
   * Counts `stream` (an answered tunnel) against the budget until it closes, checked by this
   * buffer at every tick. (The HBONE server measures its sessions itself, in the one pass over its
   * tunnels that also counts them against its memory budget, and hands each session's sum to judge.)
   */
  watch(stream: Http2Stream): void {
    this.#tunnels.add(stream);
    stream.once('close', () => this.#tunnels.delete(stream));
    if (this.#checking) return;
    this.#checking = true;
    startChecking(this.#check);
  }

  #stop(): void {
    if (!this.#checking) return;
    this.#checking = false;
    stopChecking(this.#check);
  }

  #checkNow(): void {
    const session = this.#session;
    if (this.#tunnels.size === 0 || session.destroyed) {
      this.#stop();
      if (!this.#throttled || session.destroyed) return;
    }
    let held = 0;
    for (const t of this.#tunnels) held += t.readableLength;
    this.judge(held, this.#tunnels.size);
  }

  /**
   * Throttles or releases the session given what its `tunnels` answered streams hold received and
   * not yet read (`held` bytes): over the budget it throttles, under a quarter of it it releases.
   */
  judge(held: number, tunnels: number): void {
    const session = this.#session;
    if (session.destroyed) return;
    const { budget } = this.#opts;
    const throttle = !this.#throttled && held > budget;
    const release = this.#throttled && held < budget / 4;
    if (!throttle && !release) return;
    this.#throttled = throttle;
    if (throttle) this.#opts.onThrottled({ heldBytes: held, tunnels });
    const streamWindow = throttle ? THROTTLED_STREAM_WINDOW : this.#opts.streamWindow;
    clearTimeout(this.#ackTimer);
    const timer = setTimeout(() => {
      if (session.destroyed) return;
      this.#opts.onSettingsTimeout(`SETTINGS not acknowledged within ${SETTINGS_ACK_TIMEOUT_MS} ms`);
      session.goaway(h2.NGHTTP2_SETTINGS_TIMEOUT);
      session.destroy();
    }, SETTINGS_ACK_TIMEOUT_MS);
    timer.unref();
    this.#ackTimer = timer;
    try {
      session.settings({ initialWindowSize: streamWindow }, () => clearTimeout(timer));
    } catch {
      clearTimeout(timer);
    }
  }
}
