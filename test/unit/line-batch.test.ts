// Access-log lines leave the hot path: one write per event-loop turn, in order, nothing lost on exit.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { LINE_BATCH_MAX_BYTES, lineBatch } from '../../lib/sys/line-batch.ts';

test('lines of one turn become one write, in order, after the turn', async () => {
  const writes: string[] = [];
  const log = lineBatch((c) => writes.push(c));
  for (let i = 0; i < 100; i++) log(`line ${i}`);
  assert.equal(writes.length, 0, 'nothing is written inside the turn');
  await new Promise((r) => setImmediate(r));
  assert.equal(writes.length, 1);
  assert.deepEqual(writes[0]!.split('\n'), [...Array.from({ length: 100 }, (_, i) => `line ${i}`), '']);
  log('next turn');
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(writes, [writes[0], 'next turn\n']);
});

test('a burst above the byte cap is written at once rather than held in memory', () => {
  const writes: string[] = [];
  const log = lineBatch((c) => writes.push(c));
  const line = 'x'.repeat(1023);
  for (let i = 0; i < LINE_BATCH_MAX_BYTES / 1024; i++) log(line);
  assert.equal(writes.length, 1);
  assert.equal(writes[0]!.length, LINE_BATCH_MAX_BYTES);
});

test('lines queued when the process exits are still written', () => {
  const code = `import { stdoutLines } from './lib/sys/line-batch.ts'; const log = stdoutLines(); log('a'); log('b'); process.exit(0);`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { cwd: new URL('../..', import.meta.url).pathname, encoding: 'utf8' });
  assert.equal(r.stdout, 'a\nb\n', r.stderr);
});
