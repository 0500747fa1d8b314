// make test's reporter: the slow-test list printed before the closing summary.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { failedTestLines, slowTestLines } from '../lab/reporter.ts';

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
