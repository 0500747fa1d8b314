// The most refusal log lines a LogBudget (lib/log.ts) can write between `startedAt` and now: one
// budget per calendar second the interval touches. A flood test asserts against this rather than
// against a fixed number of seconds, which holds only if the machine is fast enough.
import { REFUSAL_LOG_PER_SECOND } from '../../lib/log.ts';

export function refusalLineBound(startedAt: number, now = Date.now()): number {
  return (Math.floor(now / 1000) - Math.floor(startedAt / 1000) + 1) * REFUSAL_LOG_PER_SECOND;
}

/**
 * The most bytes of refusal log lines cut at `maxLine` can take between `startedAt` and now: the
 * lines refusalLineBound allows, plus one a second saying how many were left out. What the log
 * costs is bounded by time, not by what a hostile peer sends (a fixed ratio to the peer's bytes
 * held only when a flood fit in one calendar second).
 */
export function refusalLogBytesBound(startedAt: number, maxLine: number, now = Date.now()): number {
  const lines = refusalLineBound(startedAt, now);
  return (lines + lines / REFUSAL_LOG_PER_SECOND) * maxLine;
}
