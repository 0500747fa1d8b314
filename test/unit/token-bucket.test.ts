// lib/token-bucket.ts: the buckets behind the waypoint's local rate limits and the certificate
// service's request budgets.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KeyedTokenBuckets } from '../../lib/token-bucket.ts';

test('a stream of new keys holds at most the cap of buckets: idle (full) ones go first, then the oldest tenth', () => {
  const b = new KeyedTokenBuckets(100);
  for (let i = 0; i < 10_000; i++) assert.equal(b.take(`caller-${i}`, 5, 60_000, 0).allowed, true);
  assert.ok(b.size <= 100, `${b.size} buckets held`);
  // At the cap an idle key's bucket (full again) goes before one still in use, which keeps its count.
  const busy = new KeyedTokenBuckets(3);
  busy.take('idle', 5, 1_000, 0);
  for (let i = 0; i < 5; i++) busy.take('busy', 5, 1_000, 900);
  busy.take('x', 5, 1_000, 950);
  busy.take('new', 5, 1_000, 1_001);
  assert.equal(busy.size, 3);
  assert.equal(busy.take('busy', 5, 1_000, 1_002).allowed, false);
});

test('a bucket whose settings change is remade full', () => {
  const b = new KeyedTokenBuckets();
  assert.equal(b.take('k', 1, 1_000, 0).allowed, true);
  assert.equal(b.take('k', 1, 1_000, 1).allowed, false);
  assert.equal(b.take('k', 2, 1_000, 2).allowed, true);
});
