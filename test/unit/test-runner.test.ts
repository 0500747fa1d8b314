// make test's runner (test/lab/run.ts): the unit tier's files several at a time, the lab tiers' one
// at a time, and one closing summary for both, as `node --test` prints it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { parsePhases, phaseEvents } from '../lab/run.ts';

test('--parallel and --serial switch the phase for the globs after them; serial is the default', () => {
  assert.deepEqual(parsePhases(['a', '--parallel', 'u1', 'u2', '--serial', 'b', 'c'], 2), [
    { concurrency: 1, patterns: ['a'] },
    { concurrency: 2, patterns: ['u1', 'u2'] },
    { concurrency: 1, patterns: ['b', 'c'] },
  ]);
  assert.deepEqual(parsePhases(['--parallel', 'u'], 1), [{ concurrency: 2, patterns: ['u'] }], 'two at least: the unit files wait on timers too');
  assert.throws(() => parsePhases(['--test-only', 'x']), /unknown option --test-only/);
});

test('the phases run one after the other, and their closing totals are summed into one summary at the end', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-runner-'));
  try {
    for (const f of ['u1.test.mjs', 'u2.test.mjs', 'lab.test.mjs']) writeFileSync(join(dir, f), '');
    const totals = (tests: number, fail: number) => ['tests', 'suites', 'pass', 'fail', 'cancelled', 'skipped', 'todo', 'duration_ms']
      .map((k) => ({ type: 'test:diagnostic', data: { nesting: 0, level: k === 'fail' && fail ? 'error' : 'info',
        message: `${k} ${{ tests, suites: 1, pass: tests - fail, fail, cancelled: 0, skipped: 0, todo: 0, duration_ms: 5 }[k]}` } }));
    const calls: Array<[string[], number]> = [];
    const before = process.exitCode;
    const events = [];
    try {
      for await (const e of phaseEvents(parsePhases(['--parallel', join(dir, 'u*.test.mjs'), '--serial', join(dir, 'lab.test.mjs')], 2), async function* (files, concurrency) {
        calls.push([files.map((f) => f.slice(dir.length + 1)), concurrency]);
        yield { type: 'test:pass', data: { nesting: 0, file: files[0] } };
        const fail = concurrency === 1 ? 1 : 0;
        yield* totals(concurrency === 2 ? 30 : 4, fail);
        yield { type: 'test:summary', data: { nesting: 0, success: fail === 0 } };
      })) events.push(e);
      assert.equal(process.exitCode, 1, 'a phase that failed fails the run');
    } finally {
      process.exitCode = before;
    }
    assert.deepEqual(calls, [[['u1.test.mjs', 'u2.test.mjs'], 2], [['lab.test.mjs'], 1]]);
    const messages = events.filter((e) => e.type === 'test:diagnostic').map((e) => e.data.message!.replace(/^duration_ms .*/, 'duration_ms'));
    assert.deepEqual(messages, ['tests 34', 'suites 2', 'pass 33', 'fail 1', 'cancelled 0', 'skipped 0', 'todo 0', 'duration_ms']);
    assert.equal(events.find((e) => e.data.message === 'fail 1')!.data.level, 'error');
    assert.equal(events.filter((e) => e.type === 'test:pass').length, 2);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('real files: a parallel phase and a serial one print one report whose summary counts both, and a failure fails the run', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-runner-'));
  try {
    const file = (name: string, body: string) => writeFileSync(join(dir, name), `import { test } from 'node:test';\n${body}\n`);
    // The two parallel files meet at a rendezvous: each waits for the other's marker, so they pass
    // only if they run at the same time.
    for (const [me, other] of [['p1', 'p2'], ['p2', 'p1']]) {
      file(`${me}.test.mjs`, `import { writeFileSync, existsSync } from 'node:fs';
test('${me} meets ${other}', async () => {
  writeFileSync(${JSON.stringify(join(dir, me))}, '');
  for (let i = 0; i < 600 && !existsSync(${JSON.stringify(join(dir, other))}); i++) await new Promise((r) => setTimeout(r, 50));
  if (!existsSync(${JSON.stringify(join(dir, other))})) throw new Error('ran alone');
});`);
    }
    file('s1.test.mjs', "test('serial passes', () => {});");
    file('s2.test.mjs', "test('serial fails', () => { throw new Error('boom'); });");
    const err = await promisify(execFile)(process.execPath, [
      '--require', resolve(import.meta.dirname, '../lab/report-channel.ts'), resolve(import.meta.dirname, '../lab/run.ts'),
      '--parallel', 'p*.test.mjs', '--serial', 's*.test.mjs',
    ], { cwd: dir, env: { ...process.env, NODE_TEST_CONTEXT: undefined } }).then(() => assert.fail('the run should fail'), (e) => e);
    assert.equal(err.code, 1);
    const out: string = err.stdout;
    assert.match(out, /✔ p1 meets p2/);
    assert.match(out, /✔ p2 meets p1/);
    assert.match(out, /failed tests \(1\):\n {2}✖ \S*s2\.test\.mjs {2}serial fails\n {6}boom/);
    assert.equal(out.match(/^ℹ tests \d+$/mg)?.join(), 'ℹ tests 4', 'one summary, for all four tests');
    assert.match(out, /^ℹ pass 3\nℹ fail 1\n/m);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
