// `make bench --repeat N`: medians and spreads over runs, every run kept (issue 20 item 6).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { median, medianOf, spreadOf } from '../../bench/stats.ts';
import { medianCases, report, targetFigures, type BenchResults, type CaseResult } from '../../bench/report.ts';
import { parseStraceSummary, perUnit } from '../../bench/strace.ts';

test('median of odd and even counts, unsorted input left alone', () => {
  const v = [5, 1, 3];
  assert.equal(median(v), 3);
  assert.deepEqual(v, [5, 1, 3]);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.throws(() => median([]), /no values/);
});

test('spread: min, max and (max − min) ÷ median over the finite values only', () => {
  assert.deepEqual(spreadOf([10, undefined, 8, 12, Number.NaN]), { median: 10, min: 8, max: 12, spread: 0.4, n: 3 });
  assert.equal(spreadOf([undefined]), undefined);
  assert.equal(spreadOf([7])!.spread, 0);
});

test('medianOf takes each number at its own path, strings from the first run, and skips missing paths', () => {
  const m = medianOf([
    { name: 'a', wrk: { rps: 100, lat: { '99': 3 } }, cpu: { x: 1 } },
    { name: 'a', wrk: { rps: 300, lat: { '99': 1 } } },
    { name: 'a', wrk: { rps: 200, lat: { '99': 2 } }, cpu: { x: 3 } },
  ]);
  assert.deepEqual(m, { name: 'a', wrk: { rps: 200, lat: { '99': 2 } }, cpu: { x: 2 } });
});

function run(rps: number, haRps: number, wpCpu: number): CaseResult[] {
  return [
    { name: 'weft-l7', title: 'Weft L7', baseline: 'direct', proxies: ['waypoint'], errors: rps === 1000 ? ['wrk: slow'] : [],
      wrk: { requestsPerSec: rps, requests: rps * 10, latencyMs: { '99': 5 }, socketErrors: 0, non2xx: 0 },
      hey: { requestsPerSec: 1000, latencyMs: { '50': 1 }, statusCodes: {}, errors: 0 },
      cpuSecondsSaturation: { waypoint: 5 }, cpuSecondsAtRate: { waypoint: wpCpu } },
    { name: 'haproxy', title: 'HAProxy pair', baseline: 'direct', proxies: ['h1', 'h2'], errors: [],
      wrk: { requestsPerSec: haRps, requests: haRps * 10, latencyMs: { '99': 4 }, socketErrors: 0, non2xx: 0 } },
  ];
}

test('a repeated bench keeps every run, reports medians, the per-run spread of each target, and labels errors by run', () => {
  const runs = [run(1000, 2000, 2), run(1500, 2000, 1.5), run(1200, 3000, 3)];
  const cases = medianCases(runs);
  assert.equal(cases.find((c) => c.name === 'weft-l7')!.wrk!.requestsPerSec, 1200);
  assert.deepEqual(cases.find((c) => c.name === 'weft-l7')!.errors, ['run 1: wrk: slow']);
  const settings = { seconds: 10, rate: 1000 };
  const t = targetFigures(runs[1]!, { settings });
  const wp = t.find((x) => x.figure.startsWith('Waypoint CPU µs per request'))!;
  assert.equal(wp.value, 150); // 1.5 CPU s over 1,000 req/s × 10 s
  assert.equal(wp.check!(wp.value!), true);
  const results: BenchResults = { startedAt: 'now', host: { cpus: 2, kernel: 'k', node: 'v', loadavgAtStart: 1 }, settings, cases, runs, notes: [] };
  const text = report(results);
  // L7 ÷ HAProxy per run: 0.5, 0.75, 0.4 → median 0.50, spread 0.40–0.75.
  assert.match(text, /Weft L7 \(waypoint\) req\/s ÷ HAProxy pair req\/s\s*\|\s*0\.50 \|\s*0\.40–0\.75 \|\s*≥ 0\.60 \| NOT met/);
  assert.match(text, /Spread over 3 runs/);
  assert.match(text, /Weft L7\s*\|\s*1200 \(1000–1500\)/);
});

test('reads the counts of strace -c and divides them per unit of work', () => {
  const text = `% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 41.20    0.012000           3      4000           writev
 30.00    0.009000           1      8000       120 read
  1.00    0.000300           0       100           epoll_pwait
------ ----------- ----------- --------- --------- ----------------
100.00    0.021300                 12100       120 total
`;
  const calls = parseStraceSummary(text);
  assert.deepEqual(calls, { writev: 4000, read: 8000, epoll_pwait: 100 });
  assert.deepEqual(perUnit(calls, 4000, 2), { total: 3.02, read: 2, writev: 1 });
});
