// lib/identity/renewal.ts: the schedule of a failing certificate renewal, shared by the agent's
// CertManager and the waypoint.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RenewalBackoff, RENEWAL_BACKOFF_DEFAULTS } from '../../lib/identity/renewal.ts';
import { holds } from '../lab/wait.ts';

test('retry waits near expiry: at most half of the validity left (not below 250 ms), without advancing the backoff, which resumes after expiry where it was', () => {
  const b = new RenewalBackoff({}, () => 0.5);
  // A 6 s certificate renewed at half-life; every attempt fails at once. Time 0 = first failure.
  const expiresAt = 3_000;
  let t = 0;
  const waits: number[] = [];
  while (t < 40_000) {
    const w = b.next(expiresAt - t);
    waits.push(Math.round(w));
    t += w;
  }
  assert.equal(RENEWAL_BACKOFF_DEFAULTS.minMs, 250);
  // 500 and 1000: the backoff; 750, 375: half of what is left; 250, 250: the floor (the second
  // lands after expiry); then 2000, 4000, ... from the step reached before, up to the 30 s cap.
  assert.deepEqual(waits, [500, 1000, 750, 375, 250, 250, 2000, 4000, 8000, 16000, 30000]);
  // The floor never makes a wait longer than the backoff's own.
  const short = new RenewalBackoff({ initialMs: 100 }, () => 0.5);
  assert.equal(short.next(150), 100);
});

test('followTrustBundle reopens the stream after it fails to open or ends, until stopped', async () => {
  const { followTrustBundle } = await import('../../lib/identity/ca-client.ts');
  let opens = 0;
  const seen: string[][] = [];
  const client = {
    async watchTrustBundle(onBundle: (roots: string[]) => void, onEnd: (err: Error) => void): Promise<() => void> {
      opens++;
      if (opens === 1) throw new Error('no connection');
      onBundle([`root-${opens}`]);
      if (opens === 2) setImmediate(() => onEnd(new Error('stream ended')));
      return () => undefined;
    },
  };
  const retries: string[] = [];
  const stop = followTrustBundle(() => client as never, (r) => seen.push(r), { backoff: { initialMs: 5, maxMs: 10 }, onRetry: (e) => retries.push(e.message) });
  const deadline = Date.now() + 2_000;
  while (seen.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  stop();
  assert.deepEqual(seen, [['root-2'], ['root-3']]);
  assert.deepEqual(retries, ['no connection', 'stream ended']);
  // Several retry intervals (5-10 ms) long: a watch still running would have opened again.
  await holds('nothing opened after stop', () => opens === 3, 50);
});
