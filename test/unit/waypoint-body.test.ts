// waypoint/src/body.ts: a request body kept for retries and mirror copies, against the waypoint's
// one replay budget (weft_waypoint_replay_buffer_bytes).
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import { ReplayableBody, ReplayBudget } from '../../waypoint/src/body.ts';

// A mirror copy of a slow mirror backend may outlive its request by up to its timeout: the bytes it
// holds must stay counted until it ends, or 1,024 copies of 1 MiB would sit outside a 128 MiB budget.
test('a mirror copy keeps the body\'s bytes in the replay budget after the exchange is over, until the copy closes', async () => {
  const budget = new ReplayBudget(10_000);
  const source = new PassThrough();
  const body = new ReplayableBody(source, 5_000, budget);
  body.open().resume();
  source.end(Buffer.alloc(3_000));
  assert.equal(await body.whenComplete(), true);
  assert.equal(budget.used, 3_000);
  const copy = body.snapshot()!;
  body.release();
  assert.equal(budget.used, 3_000, 'held by the copy still in flight');
  copy.destroy();
  await once(copy, 'close');
  assert.equal(budget.used, 0, 'given back once the copy is over');
  // Without a copy, the exchange's end gives the bytes back at once.
  const other = new ReplayableBody(new PassThrough().end(Buffer.alloc(1_000)), 5_000, budget);
  other.open().resume();
  await other.whenComplete();
  assert.equal(budget.used, 1_000);
  other.release();
  assert.equal(budget.used, 0);
});
