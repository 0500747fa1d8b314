// The agent's retry of a pod's plaintext listener that could not be opened (a pod process holds its
// address): only that pod's open is tried again, on its own timer, 1 s doubling to 30 s; before,
// every failure re-ran the whole reconcile every second (a /proc walk and a re-enrolment of every
// pod, which reset each pod's pending-connect count).
import { mock, test } from 'node:test';
import assert from 'node:assert/strict';
import { KeyedRetry } from '../../lib/backoff.ts';

test('a key that keeps failing is tried again alone, after 1 s, 2 s, 4 s ... up to 30 s; one that succeeds stops; others are never run', () => {
  mock.timers.enable({ apis: ['setTimeout'] });
  try {
    const retry = new KeyedRetry<string>({ initialMs: 1_000, maxMs: 30_000, jitter: 0 });
    const runs: string[] = [];
    const waits: number[] = [];
    // The squatted pod fails every time; the other pod's open succeeded at once and never failed.
    const squatted = () => { runs.push('squatted'); waits.push(retry.failed('10.0.0.1', squatted)); };
    waits.push(retry.failed('10.0.0.1', squatted));
    let elapsed = 0;
    for (const w of [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]) {
      mock.timers.tick(w);
      elapsed += w;
    }
    assert.deepEqual(waits, [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]);
    assert.deepEqual(runs, Array(7).fill('squatted'), 'only the failed key ran, once a wait');
    assert.deepEqual([...retry.keys()], ['10.0.0.1']);
    // It opens: no more tries, and a later failure starts again at 1 s.
    retry.succeeded('10.0.0.1');
    mock.timers.tick(60_000);
    assert.equal(runs.length, 7);
    assert.deepEqual([...retry.keys()], []);
    assert.equal(retry.failed('10.0.0.1', () => {}), 1_000);
    retry.clear();
    assert.deepEqual([...retry.keys()], []);
  } finally {
    mock.timers.reset();
  }
});
