// The test reporter `make test` uses: Node's spec reporter, with the tests that took longer than
// SLOW_TEST_MS listed just before the closing summary, slowest first, so the next slow or
// timing-bound test is seen before it blocks a submission, and then the tests that failed, each
// with the first line of its error: a CI that keeps only the end of the output still names them.
// The summary lines (tests, pass, fail, ...) stay the last ones a CI reads, as with the plain spec
// reporter.
import { spec as SpecReporter } from 'node:test/reporters';
import { relative, resolve } from 'node:path';
import type { Transform } from 'node:stream';
import { finished } from 'node:stream/promises';

/** A test (not a suite) slower than this is listed. */
export const SLOW_TEST_MS = Number(process.env.WEFT_SLOW_TEST_MS) || 10_000;
/** A test file slower than this (start to end, its hooks and lab included) is listed. */
export const SLOW_FILE_MS = Number(process.env.WEFT_SLOW_FILE_MS) || 30_000;

interface TestEventData {
  name: string;
  nesting: number;
  file?: string;
  line?: number;
  column?: number;
  message?: string;
  todo?: string | boolean;
  details?: { duration_ms?: number; type?: string; error?: { message?: string; failureType?: string; cause?: { message?: string } } };
}
export interface TestEvent {
  type: string;
  data: TestEventData;
}

export interface SlowTest {
  name: string;
  file: string;
  ms: number;
}

/** The lines the reporter prints for `slow` (already filtered), slowest first. */
export function slowTestLines(slow: SlowTest[], thresholdMs = SLOW_TEST_MS): string[] {
  if (slow.length === 0) return [`tests over ${thresholdMs / 1000} s: none`];
  const sorted = [...slow].sort((a, b) => b.ms - a.ms);
  return [
    `tests over ${thresholdMs / 1000} s (${sorted.length}), slowest first:`,
    ...sorted.map((t) => `  ${(t.ms / 1000).toFixed(1).padStart(6)} s  ${t.file}  ${t.name}`),
  ];
}

/**
 * The lines for the slow test files (already filtered), slowest first, with the time summed over
 * all files: the suite's 15-minute budget is spent per file (each file is a process, and the lab
 * tiers' files run one at a time), so this is the list to trim from.
 */
export function slowFileLines(files: SlowTest[], totalMs: number, thresholdMs = SLOW_FILE_MS): string[] {
  const total = `${(totalMs / 60_000).toFixed(1)} min in test files`;
  if (files.length === 0) return [`test files over ${thresholdMs / 1000} s: none (${total})`];
  const sorted = [...files].sort((a, b) => b.ms - a.ms);
  return [
    `test files over ${thresholdMs / 1000} s (${sorted.length}; ${total}), slowest first:`,
    ...sorted.map((t) => `  ${(t.ms / 1000).toFixed(1).padStart(6)} s  ${t.file}`),
  ];
}

/**
 * The lines for tests that started and never reported a result: their file's process ended with
 * its results cut off (a lost tail, nodejs/node#64833). The runner counts such a file as passed, so
 * the reporter names them and fails the run.
 */
export function unfinishedTestLines(unfinished: Array<{ name: string; file: string }>): string[] {
  if (unfinished.length === 0) return [];
  return [
    `tests that started and never reported a result (${unfinished.length}; the rest of their file's results were lost):`,
    ...unfinished.map((t) => `  ? ${t.file}  ${t.name}`),
  ];
}

export interface FailedTest {
  name: string;
  file: string;
  error: string;
}

/** The lines the reporter prints for the failed tests (todo ones are not failures), in run order. */
export function failedTestLines(failed: FailedTest[]): string[] {
  if (failed.length === 0) return [];
  return [
    `failed tests (${failed.length}):`,
    ...failed.map((t) => `  ✖ ${t.file}  ${t.name}${t.error ? `\n      ${t.error}` : ''}`),
  ];
}

/**
 * The first lines of a failure's error (at most six, each shortened): the cause when the runner
 * wrapped it. CI shows only the output's tail, so what failed must be readable there.
 */
function firstErrorLines(e: TestEventData): string {
  const err = e.details?.error;
  const msg = err?.cause?.message ?? err?.message ?? '';
  return msg.split('\n').filter((l) => l.trim() !== '').slice(0, 6)
    .map((l) => (l.length > 300 ? `${l.slice(0, 300)}…` : l)).join('\n      ');
}

/** The run's closing totals ("tests 21", "pass 21", ...): held back until the slow list is out. */
export const isClosingTotal = (e: { type: string; data: { nesting: number; message?: string } }) =>
  e.type === 'test:diagnostic' && e.data.nesting === 0 &&
  /^(tests|suites|pass|fail|cancelled|skipped|todo|duration_ms) /.test(e.data.message ?? '');

export default async function* slowTestsReporter(source: AsyncIterable<TestEvent>): AsyncGenerator<string> {
  const spec = new SpecReporter() as unknown as Transform;
  const out: string[] = [];
  spec.on('data', (chunk: Buffer | string) => out.push(chunk.toString()));
  const slow: SlowTest[] = [];
  const slowFiles: SlowTest[] = [];
  let fileMs = 0;
  /** Tests started and not yet passed or failed, by file, line, column and name. */
  const open = new Map<string, { name: string; file: string }>();
  const key = (d: TestEventData) => `${d.file}:${d.line}:${d.column}:${d.nesting}:${d.name}`;
  const fileOf = (d: TestEventData) => (d.file ? relative(process.cwd(), d.file) : '');
  const failed: FailedTest[] = [];
  const held: TestEvent[] = [];
  const drain = function* () { while (out.length) yield out.shift()!; };
  for await (const event of source) {
    // A file's own completion: at nesting 0, named by the path the runner was given.
    if (event.type === 'test:complete' && event.data.nesting === 0 && event.data.file !== undefined && resolve(event.data.name) === event.data.file) {
      const ms = event.data.details?.duration_ms ?? 0;
      fileMs += ms;
      if (ms > SLOW_FILE_MS) slowFiles.push({ name: event.data.name, file: fileOf(event.data), ms });
    }
    if (event.type === 'test:start') open.set(key(event.data), { name: event.data.name, file: fileOf(event.data) });
    if (event.type === 'test:pass' || event.type === 'test:fail') open.delete(key(event.data));
    if ((event.type === 'test:pass' || event.type === 'test:fail') && event.data.details?.type !== 'suite') {
      const ms = event.data.details?.duration_ms ?? 0;
      if (ms > SLOW_TEST_MS) slow.push({ name: event.data.name, file: fileOf(event.data), ms });
    }
    // Every failure but todo ones and a parent's "N subtests failed" (its subtests are listed).
    if (event.type === 'test:fail' && event.data.todo === undefined && event.data.details?.error?.failureType !== 'subtestsFailed') {
      failed.push({ name: event.data.name, file: fileOf(event.data), error: firstErrorLines(event.data) });
    }
    if (isClosingTotal(event)) held.push(event);
    else spec.write(event);
    yield* drain();
  }
  const unfinished = [...open.values()];
  if (unfinished.length > 0) process.exitCode = 1;
  yield `\n${[...slowFileLines(slowFiles, fileMs), ...slowTestLines(slow), ...failedTestLines(failed), ...unfinishedTestLines(unfinished)].join('\n')}\n\n`;
  for (const event of held) spec.write(event);
  spec.end();
  await finished(spec);
  yield* drain();
}
