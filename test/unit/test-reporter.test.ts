// make test's reporter: the slow-test list printed before the closing summary.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { slowTestLines } from '../lab/reporter.ts';

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
