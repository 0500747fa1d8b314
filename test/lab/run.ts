// make test's runner: Node's own test runner (node:test's run(), what `node --test` calls), in
// phases, with one report and one closing summary.
//
//   node test/lab/run.ts [--parallel] <glob>... [--serial] <glob>...
//
// Globs after --parallel run as many files at a time as the machine has cores (two at least): the
// unit tier, whose files need no lab and share nothing. Globs after --serial (the default) run one
// file at a time: the lab tiers, whose files set up netns, BPF programs and processes, and time what
// they see. The phases run one after the other, in the order given. On two cores this takes the
// unit tier from 169 s to 99 s of a 15-minute budget; `node --test` has one concurrency for all.
//
// Every test file is its own process, started with this process's Node flags (the Makefile's
// report-channel preload and JIT flags), the per-test timeout, and --test-force-exit. The force
// exit is given to the files and not to run(): run() would force-exit this process itself when its
// first phase ends.
import { run } from 'node:test';
import { globSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import reporter, { isClosingTotal, type TestEvent } from './reporter.ts';

/** A test that hangs fails after this; the slowest takes under 90 s. */
const TEST_TIMEOUT_MS = 300_000;

export interface Phase {
  concurrency: number;
  patterns: string[];
}

/** The phases of a command line: `--parallel` and `--serial` switch the phase for the globs after them. */
export function parsePhases(args: string[], cores = availableParallelism()): Phase[] {
  const phases: Phase[] = [];
  let concurrency = 1;
  for (const a of args) {
    if (a === '--parallel' || a === '--serial') {
      concurrency = a === '--parallel' ? Math.max(2, cores) : 1;
      continue;
    }
    if (a.startsWith('-')) throw new Error(`test/lab/run.ts: unknown option ${a} (expected --parallel or --serial before globs)`);
    const last = phases.at(-1);
    if (last && last.concurrency === concurrency) last.patterns.push(a);
    else phases.push({ concurrency, patterns: [a] });
  }
  return phases;
}

interface RunEvent {
  type: string;
  data: { nesting: number; message?: string; level?: string; file?: string; success?: boolean };
}

/**
 * The events of every phase in turn, each phase's closing totals (tests, pass, fail, ...) summed
 * into one set at the end, as if one run had run every file. A phase whose root summary is not a
 * success sets the exit code, as `node --test` does.
 */
export async function* phaseEvents(phases: Phase[], runPhase: (files: string[], concurrency: number) => AsyncIterable<RunEvent>): AsyncGenerator<RunEvent> {
  const started = performance.now();
  const totals = new Map<string, { n: number; level: string }>();
  for (const { patterns, concurrency } of phases) {
    const files = [...new Set(patterns.flatMap((p) => globSync(p, { exclude: (n) => n === 'node_modules' })))].sort();
    if (files.length === 0) throw new Error(`test/lab/run.ts: no test file matches ${patterns.join(' ')} (from ${process.cwd()})`);
    for await (const event of runPhase(files, concurrency)) {
      if (event.type === 'test:summary' && event.data.file === undefined && event.data.success === false) process.exitCode = 1;
      if (isClosingTotal(event)) {
        const [key, value] = event.data.message!.split(' ');
        const t = totals.get(key) ?? { n: 0, level: 'info' };
        t.n += Number(value);
        if (event.data.level && event.data.level !== 'info') t.level = event.data.level;
        totals.set(key, t);
        continue;
      }
      yield event;
    }
  }
  totals.set('duration_ms', { n: performance.now() - started, level: 'info' });
  for (const [key, { n, level }] of totals) yield { type: 'test:diagnostic', data: { nesting: 0, message: `${key} ${n}`, level } };
}

function runPhase(files: string[], concurrency: number): AsyncIterable<RunEvent> {
  return run({
    files,
    concurrency,
    timeout: TEST_TIMEOUT_MS,
    execArgv: ['--test-force-exit'],
  }) as unknown as AsyncIterable<RunEvent>;
}

if (import.meta.main) {
  try {
    const phases = parsePhases(process.argv.slice(2));
    // The runner's events are the reporter's, as `node --test` hands them to a --test-reporter.
    const events = phaseEvents(phases, runPhase) as AsyncIterable<RunEvent> as AsyncIterable<TestEvent>;
    await pipeline(Readable.from(reporter(events)), process.stdout, { end: false });
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n`);
    process.exitCode = 2;
  }
}
