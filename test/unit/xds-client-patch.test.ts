// The config client patches the previous values array for a small change instead of rebuilding it
// from its maps; the patched array must be exactly the rebuilt one (same values, same order), for
// any mix of replacements, additions and removals.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { patchValues, type Overlay, type Stored } from '../../lib/xds/client.ts';

/** The rebuild the client does without a patch (ConfigClient #arraysWith). */
function rebuild(stored: Stored, overlay: Overlay): unknown[] {
  const values: unknown[] = [];
  for (const [n, r] of stored) {
    const o = overlay.get(n);
    if (o === undefined) values.push(r.body);
    else if (o) values.push(o.body);
  }
  for (const [n, o] of overlay) if (o && !stored.has(n)) values.push(o.body);
  return values;
}

test('a patched values array equals the rebuilt one over random batches of changes', () => {
  let seed = 7;
  const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
  const stored: Stored = new Map();
  for (let i = 0; i < 200; i++) stored.set(`r${i}`, { version: '1', body: { i } });
  let values = rebuild(stored, new Map());
  let next = 200;
  let patched = 0;
  for (let round = 0; round < 500; round++) {
    const overlay: Overlay = new Map();
    const size = 1 + rand(round % 10 === 0 ? 40 : 6);
    for (let k = 0; k < size; k++) {
      const op = rand(3);
      const names = [...stored.keys()];
      if (op === 0 && names.length > 0) overlay.set(names[rand(names.length)]!, { version: String(round), body: { round, k } });
      else if (op === 1 && names.length > 0) overlay.set(names[rand(names.length)]!, null);
      else overlay.set(`r${next++}`, { version: String(round), body: { round, k, added: true } });
    }
    const expected = rebuild(stored, overlay);
    const got = patchValues(values, stored, overlay);
    if (got) {
      patched++;
      assert.deepEqual(got, expected, `round ${round}`);
      for (let i = 0; i < got.length; i++) assert.equal(got[i], expected[i], `round ${round}: the same objects`);
    } else assert.ok(overlay.size > 16, `round ${round}: only a large overlay rebuilds`);
    // The client applies an accepted batch to its maps as here.
    for (const [n, o] of overlay) {
      if (o) stored.set(n, o);
      else stored.delete(n);
    }
    values = got ?? expected;
  }
  assert.ok(patched > 400, `most batches were patched (${patched})`);
});

test('the previous array is left as it was (snapshots share it)', () => {
  const stored: Stored = new Map([['a', { version: '1', body: { a: 1 } }], ['b', { version: '1', body: { b: 1 } }]]);
  const before = [stored.get('a')!.body, stored.get('b')!.body];
  const copy = [...before];
  const got = patchValues(before, stored, new Map([['a', null], ['c', { version: '2', body: { c: 1 } }]]));
  assert.deepEqual(got, [{ b: 1 }, { c: 1 }]);
  assert.deepEqual(before, copy);
});
