// make clean-lab (test/lab/clean.ts) removes what a killed test run left behind, and only that: a
// multi-cluster lab's clusters and exchange too (a run killed during a multi-cluster file left
// `<prefix>c1-wire` and `<prefix>x-xchg` namespaces that clean-lab did not see).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isLabObject } from '../lab/lab.ts';

test('clean-lab takes a lab\'s own objects and its clusters\' and exchange\'s, and nothing else', () => {
  for (const name of ['wt3fbe', 'wt3fbe-node1', 'wt3fbe-load-sink', 'wt3fbec1-wire', 'wt3fbec2-node1', 'wt3fbex-xchg']) {
    assert.equal(isLabObject(name), true, name);
    assert.equal(isLabObject(name, 'wt3fbe'), true, `${name} with its prefix`);
  }
  for (const name of ['wt3fbec1-wire', 'wt3fbe-node1']) assert.equal(isLabObject(name, 'wt9zzz'), false, `${name} is not wt9zzz's`);
  for (const name of ['weft-system', 'wt3f-node1', 'wt3fbeyy-node1', 'wt3fbec10-wire', 'cni0', 'xwt3fbe-a']) {
    assert.equal(isLabObject(name), false, name);
  }
});
