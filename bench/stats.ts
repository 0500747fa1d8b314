// Repeated runs of `make bench` (`--repeat N`): every run is kept, and the table shows per figure
// the median of its runs with the spread (min and max) beside it. Pure functions, unit-tested in
// test/unit/bench-stats.test.ts.

/** Median of a non-empty list (the mean of the middle two for an even count). */
export function median(values: readonly number[]): number {
  if (values.length === 0) throw new Error('median of no values');
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** One figure over several runs. `spread` is (max − min) ÷ median (0 for one run). */
export interface Spread {
  median: number;
  min: number;
  max: number;
  spread: number;
  n: number;
}

/** The spread of the finite values in `values` (undefined when none is). */
export function spreadOf(values: ReadonlyArray<number | undefined>): Spread | undefined {
  const v = values.filter((x): x is number => x !== undefined && Number.isFinite(x));
  if (v.length === 0) return undefined;
  const med = median(v);
  const min = Math.min(...v);
  const max = Math.max(...v);
  return { median: med, min, max, spread: med === 0 ? 0 : (max - min) / Math.abs(med), n: v.length };
}

type Json = number | string | boolean | null | undefined | Json[] | { [k: string]: Json };

/**
 * Field by field median of the same-shaped results of several runs: every number becomes the median
 * of the numbers found at its path (runs where the path is missing do not count), anything else is
 * taken from the first run that has it. Each figure is the median of its own runs, so a row may mix
 * runs (the median req/s and the median p99 need not come from the same run).
 */
export function medianOf<T>(runs: readonly T[]): T {
  if (runs.length === 0) throw new Error('medianOf no runs');
  return merge(runs as unknown as Json[]) as unknown as T;
}

function merge(values: Json[]): Json {
  const present = values.filter((v) => v !== undefined);
  if (present.length === 0) return undefined;
  if (present.every((v) => typeof v === 'number')) return median(present as number[]);
  const first = present[0]!;
  if (first === null || typeof first !== 'object' || Array.isArray(first)) return first;
  const objects = present.filter((v): v is { [k: string]: Json } => v !== null && typeof v === 'object' && !Array.isArray(v));
  const keys = new Set(objects.flatMap((o) => Object.keys(o)));
  const out: { [k: string]: Json } = {};
  for (const k of keys) {
    const m = merge(objects.map((o) => o[k]));
    if (m !== undefined) out[k] = m;
  }
  return out;
}
