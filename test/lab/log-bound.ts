// The most refusal log lines a LogBudget (lib/log.ts) can write between `startedAt` and now: one
// budget per calendar second the interval touches. A flood test asserts against this rather than
// against a fixed number of seconds, which holds only if the machine is fast enough.
import { REFUSAL_LOG_PER_SECOND } from '../../lib/log.ts';

export function refusalLineBound(startedAt: number, now = Date.now()): number {
  return (Math.floor(now / 1000) - Math.floor(startedAt / 1000) + 1) * REFUSAL_LOG_PER_SECOND;
}
