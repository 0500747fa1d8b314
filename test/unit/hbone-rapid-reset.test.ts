// The rapid-reset rule both HTTP/2 servers share (lib/hbone/rapid-reset.ts): the HBONE server's
// CONNECTs and the waypoint's requests. CVE-2023-44487; Envoy's premature resets
// (premature_reset_min_stream_lifetime_seconds, overload.premature_reset_total_stream_count).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RapidResetGuard } from '../../lib/hbone/rapid-reset.ts';

describe('rapid-reset guard', () => {
  it('cuts once, past `max` resets inside the interval, each within the minimum lifetime', () => {
    const g = new RapidResetGuard({ max: 3, intervalMs: 1000, minLifetimeMs: 500 });
    const reasons = [0, 1, 2, 3, 4].map((i) => { g.opened(); return g.reset(10, 100 + i); });
    assert.deepEqual(reasons.map((r) => r !== undefined), [false, false, false, true, false], 'the fourth cuts, later ones do not cut again');
    assert.match(reasons[3]!, /more than 3 streams before they were answered within 1000 ms/);
    assert.equal(g.cut, true);
  });

  it('counts nothing for a stream reset after its minimum lifetime (a client that waited and gave up)', () => {
    const g = new RapidResetGuard({ max: 3, intervalMs: 1000, minLifetimeMs: 500 });
    for (let i = 0; i < 1000; i++) { g.opened(); assert.equal(g.reset(500, 100 + i), undefined); }
    assert.equal(g.premature, 0);
  });

  it('starts the burst count anew each interval', () => {
    const g = new RapidResetGuard({ max: 3, intervalMs: 1000, minLifetimeMs: 500, totalStreams: 1_000_000 });
    for (let second = 0; second < 10; second++) {
      for (let i = 0; i < 3; i++) { g.opened(); assert.equal(g.reset(10, 1 + second * 1001 + i), undefined); }
    }
  });

  it('cuts a peer staying under the burst limit once more than half of its streams, after totalStreams, were reset early', () => {
    const g = new RapidResetGuard({ max: 100, intervalMs: 1000, minLifetimeMs: 500, totalStreams: 20 });
    let reason: string | undefined;
    let now = 0;
    // Three of every five streams reset early, one a second: never a burst.
    for (let i = 0; i < 100 && !reason; i++) {
      g.opened();
      now += 1001;
      if (i % 5 < 3) reason = g.reset(10, now);
    }
    assert.match(reason ?? '', /reset 13 of its 21 streams before they were answered \(more than half, after 20\)/);
  });

  it('defaults to the HBONE server\'s limits: 100 in 1 s, 1 s lifetime, ratio after 500 streams', () => {
    const g = new RapidResetGuard();
    assert.deepEqual([g.max, g.intervalMs, g.minLifetimeMs, g.totalStreams], [100, 1000, 1000, 500]);
  });
});
