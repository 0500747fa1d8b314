// Waiting in tests: on a condition with a deadline, never a fixed sleep (a loaded 2-core CI machine
// is slower than any sleep someone tuned on an idle one).
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Polls `check` until it is true and returns how long that took; after `timeoutMs` fails naming
 * `what`, the last error `check` threw (a throw counts as "not yet": a process may be restarting)
 * and `explain()` (log tails).
 */
export async function until(what: string, check: () => Promise<boolean> | boolean, timeoutMs: number, opts: { intervalMs?: number; explain?: () => string } = {}): Promise<number> {
  const started = Date.now();
  let lastError: unknown;
  for (;;) {
    try {
      if (await check()) return Date.now() - started;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() - started > timeoutMs) {
      const last = lastError ? ` (last error: ${(lastError as Error).message})` : '';
      throw new Error(`${what}: not within ${timeoutMs} ms${last}${opts.explain ? `\n${opts.explain()}` : ''}`);
    }
    await sleep(opts.intervalMs ?? 100);
  }
}

/**
 * For a test that asserts that something does NOT happen: checks `check` every `intervalMs` for
 * `forMs` and fails naming `what` the first time it is false. The window is the test's stated
 * timing dependency; prefer a barrier (a later event that must come after) where one exists.
 */
export async function holds(what: string, check: () => Promise<boolean> | boolean, forMs: number, opts: { intervalMs?: number } = {}): Promise<void> {
  const end = Date.now() + forMs;
  for (;;) {
    if (!(await check())) throw new Error(`${what}: stopped holding after ${forMs - (end - Date.now())} ms of ${forMs} ms`);
    if (Date.now() >= end) return;
    await sleep(Math.min(opts.intervalMs ?? 10, Math.max(1, end - Date.now())));
  }
}
