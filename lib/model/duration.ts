import { DurationError } from './errors.ts';

/** Gateway API duration (GEP-2257): up to four `<digits><unit>` parts, units h, m, s, ms. */
const DURATION_RE = /^(?:[0-9]{1,5}(?:h|ms|m|s)){1,4}$/;
const PART_RE = /([0-9]{1,5})(h|ms|m|s)/g;
const UNIT_MS: Record<string, number> = { h: 3_600_000, m: 60_000, s: 1000, ms: 1 };

export function isDuration(value: string): boolean {
  return DURATION_RE.test(value);
}

/** Milliseconds of a Gateway API duration; throws DurationError. */
export function parseDuration(value: string): number {
  if (!DURATION_RE.test(value)) throw new DurationError(value);
  let ms = 0;
  for (const m of value.matchAll(PART_RE)) ms += Number(m[1]) * UNIT_MS[m[2]!]!;
  return ms;
}
