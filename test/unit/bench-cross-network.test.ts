// `make bench` carries the cross-network case (issue 18, "How it is checked"): bench/cross-network.ts's
// two results become rows of the one table, the cross-network row measured against the in-cluster one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crossNetworkRows, report, type BenchResults, type CrossNetworkResult } from '../../bench/report.ts';

const wrk = (rps: number, p50: number) => ({ requestsPerSec: rps, requests: rps * 2, latencyMs: { '50': p50, '99': p50 * 3 }, socketErrors: 0, non2xx: 0 });
const hey = (p50: number) => ({ requestsPerSec: 200, latencyMs: { '50': p50, '90': p50 * 2, '99': p50 * 4 }, statusCodes: { '200': 400 }, errors: 0 });

test('cross-network rows: the in-cluster case is the baseline, the cross-network one adds its latency over it; unknown cases are left out', () => {
  const raw: CrossNetworkResult[] = [
    { name: 'l4-cross-node', url: 'http://10.77.1.2:8080/', wrk: wrk(3000, 1.5), hey: hey(1.0), errors: [] },
    { name: 'cross-network', url: 'http://10.78.1.2:8080/', wrk: wrk(1500, 3.0), hey: hey(2.5), errors: ['hey: x'] },
    { name: 'something-else', url: 'http://x/', errors: [] },
  ];
  const rows = crossNetworkRows(raw);
  assert.deepEqual(rows.map((r) => [r.name, r.baseline, r.errors.length]), [['mc-l4', 'mc-l4', 0], ['cross-network', 'mc-l4', 1]]);
  const results: BenchResults = {
    startedAt: '2026-12-04T20:00:00Z', host: { cpus: 2, kernel: '6.18', node: 'v24', loadavgAtStart: 1 },
    settings: { seconds: 2, rate: 200, wrk: '-t2', hey: '-z 2s', iperf3: '-' }, cases: rows, notes: [],
  };
  const text = report(results);
  const line = text.split('\n').find((l) => l.includes('two clusters: cross-network (east-west gateway, double HBONE)'));
  assert.ok(line, text);
  assert.match(line, /1500/);
  assert.match(line, /1\.5\/3\.0\/6\.0/, 'added p50/p90/p99 over the in-cluster row');
  assert.match(text.split('\n').find((l) => l.includes('two clusters: Weft L4 within cluster1'))!, /\(baseline\)/);
});

test('cross-network rows with a new connection per request: two more rows, the in-cluster one their baseline, so the added latency is the set-up through the gateway', () => {
  const raw: CrossNetworkResult[] = [
    { name: 'l4-cross-node', url: 'http://10.77.1.2:8080/', wrk: wrk(3000, 1.5), hey: hey(1.0), newConnection: { wrk: wrk(900, 9), hey: hey(2.0) }, errors: [] },
    { name: 'cross-network', url: 'http://10.78.1.2:8080/', wrk: wrk(1500, 3.0), hey: hey(2.5), newConnection: { wrk: wrk(400, 20), hey: hey(5.0) }, errors: [] },
  ];
  const rows = crossNetworkRows(raw);
  assert.deepEqual(rows.map((r) => [r.name, r.baseline]), [['mc-l4', 'mc-l4'], ['cross-network', 'mc-l4'], ['mc-l4-new', 'mc-l4-new'], ['cross-network-new', 'mc-l4-new']]);
  const results: BenchResults = {
    startedAt: '2026-12-05T06:00:00Z', host: { cpus: 2, kernel: '6.18', node: 'v24', loadavgAtStart: 1 },
    settings: { seconds: 2, rate: 200, wrk: '-t2', hey: '-z 2s', iperf3: '-' }, cases: rows, notes: [],
  };
  const line = report(results).split('\n').find((l) => l.includes('cross-network (east-west gateway, double HBONE), new connection per request'));
  assert.ok(line);
  assert.match(line, /400/);
  assert.match(line, /3\.0\/6\.0\/12\.0/, 'added p50/p90/p99 over the in-cluster row with new connections');
});
