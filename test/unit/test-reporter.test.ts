// make test's reporter: the slow-test list printed before the closing summary.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import reporter, { failedTestLines, slowFileLines, slowTestLines, unfinishedTestLines } from '../lab/reporter.ts';

test('the slow-test list names each test over the threshold with its file, slowest first', () => {
  assert.deepEqual(slowTestLines([
    { name: 'a', file: 'test/e2e/a.test.ts', ms: 12_300 },
    { name: 'b', file: 'test/e2e/b.test.ts', ms: 45_000 },
  ], 10_000), [
    'tests over 10 s (2), slowest first:',
    '    45.0 s  test/e2e/b.test.ts  b',
    '    12.3 s  test/e2e/a.test.ts  a',
  ]);
  assert.deepEqual(slowTestLines([], 10_000), ['tests over 10 s: none']);
});

test('the failed-test list names each failure with its file and the first line of its error, after the slow list', () => {
  assert.deepEqual(failedTestLines([
    { name: 'a', file: 'test/e2e/a.test.ts', error: 'expected 200, got 503' },
    { name: 'b', file: 'test/k8s/b.test.ts', error: '' },
  ]), [
    'failed tests (2):',
    '  ✖ test/e2e/a.test.ts  a\n      expected 200, got 503',
    '  ✖ test/k8s/b.test.ts  b',
  ]);
  assert.deepEqual(failedTestLines([]), []);
});

test('the slow-file list names each file over the threshold, slowest first, with the time in all files', () => {
  assert.deepEqual(slowFileLines([
    { name: '/r/test/e2e/a.test.ts', file: 'test/e2e/a.test.ts', ms: 31_000 },
    { name: '/r/test/e2e/b.test.ts', file: 'test/e2e/b.test.ts', ms: 95_500 },
  ], 840_000, 30_000), [
    'test files over 30 s (2; 14.0 min in test files), slowest first:',
    '    95.5 s  test/e2e/b.test.ts',
    '    31.0 s  test/e2e/a.test.ts',
  ]);
  assert.deepEqual(slowFileLines([], 60_000, 30_000), ['test files over 30 s: none (1.0 min in test files)']);
});

test('the reporter times each file from the runner\'s own events (hooks included), and ends with the summary', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-reporter-'));
  try {
    const body = "import { test, before } from 'node:test';\nbefore(() => new Promise((r) => setTimeout(r, 200)));\ntest('t', () => {});\n";
    writeFileSync(join(dir, 'one.test.mjs'), body);
    writeFileSync(join(dir, 'two.test.mjs'), body);
    const { stdout } = await promisify(execFile)(process.execPath, [
      '--test', `--test-reporter=${resolve(import.meta.dirname, '../lab/reporter.ts')}`, 'one.test.mjs', 'two.test.mjs',
    ], { cwd: dir, env: { ...process.env, NODE_TEST_CONTEXT: undefined, WEFT_SLOW_FILE_MS: '150' } });
    const lines = stdout.split('\n');
    const head = lines.findIndex((l) => l.startsWith('test files over 0.15 s (2;'));
    assert.ok(head >= 0, stdout);
    // Each file took its 200 ms hook at least; the runner's figure includes the process's start.
    for (const l of lines.slice(head + 1, head + 3)) assert.match(l, /^ +\d+\.\d s {2}(one|two)\.test\.mjs$/);
    assert.match(lines.filter((l) => l.trim() !== '').at(-1)!, /duration_ms/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a test that started and never reported a result is named, and fails the run (a file\'s lost tail, nodejs/node#64833)', async () => {
  const at = { file: '/r/test/unit/a.test.ts', line: 3, column: 1, nesting: 0 };
  async function* events() {
    yield { type: 'test:start', data: { ...at, name: 'one' } };
    yield { type: 'test:pass', data: { ...at, name: 'one', details: { duration_ms: 1 } } };
    yield { type: 'test:start', data: { ...at, line: 4, name: 'two' } };
  }
  const before = process.exitCode;
  let out = '';
  try {
    for await (const chunk of reporter(events())) out += chunk;
    assert.equal(process.exitCode, 1);
  } finally {
    process.exitCode = before;
  }
  assert.match(out, /tests that started and never reported a result \(1;/);
  assert.match(out, /^ {2}\? \S*a\.test\.ts {2}two$/m);
  assert.doesNotMatch(out, /\? \S+ {2}one$/m);
  assert.deepEqual(unfinishedTestLines([]), []);
});

// The runner's own report is read here through a pipe by a busy process, as CI reads make test's:
// the preload must keep the runner's output as well as each file's (it lost the summary in 1 run in
// 5 while it was an --import preload, which the runner's process never loads).
test('with the report channel preloaded, --test-force-exit loses no result of many files run at once, nor the runner\'s summary (nodejs/node#64833)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-reporter-'));
  try {
    const files: string[] = [];
    for (let f = 0; f < 16; f++) {
      const name = `f${f}.test.mjs`;
      files.push(name);
      writeFileSync(join(dir, name), ["import { test } from 'node:test';", ...Array.from({ length: 60 }, (_, t) =>
        `test('file ${f} test ${t}, a name long enough to fill the result pipe sooner', () => {});`)].join('\n'));
    }
    const { stdout } = await promisify(execFile)(process.execPath, [
      '--require', resolve(import.meta.dirname, '../lab/report-channel.ts'),
      '--test', '--test-force-exit', '--test-concurrency=8', '--test-reporter=tap', ...files,
    ], { cwd: dir, env: { ...process.env, NODE_TEST_CONTEXT: undefined }, maxBuffer: 64 << 20 });
    // Without the preload this machine counted 994 to 1,401 of 2,400 such results (40 files).
    assert.match(stdout, /^# tests 960$/m);
    assert.match(stdout, /^# pass 960$/m);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
