// The waypoint's request metrics (lib/telemetry/series.ts) replace prom-client's Counter and
// Histogram on the per-request path: what Prometheus scrapes, and what getSingleMetric().get()
// gives, must be what prom-client gave for the same observations, byte for byte.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Counter, Histogram, Registry } from 'prom-client';
import { SeriesTable } from '../../lib/telemetry/series.ts';

const LABELS = ['reporter', 'source_workload', 'response_code'] as const;
const BUCKETS = [0.5, 1, 5, 10, 25, 1000];

function both() {
  const ours = new Registry();
  const table = new SeriesTable(ours, LABELS, [
    { name: 'x_requests_total', help: 'Requests' },
    { name: 'x_duration_milliseconds', help: 'Duration (ms)', buckets: BUCKETS },
  ]);
  const theirs = new Registry();
  const counter = new Counter({ name: 'x_requests_total', help: 'Requests', labelNames: LABELS, registers: [theirs] });
  const histogram = new Histogram({ name: 'x_duration_milliseconds', help: 'Duration (ms)', labelNames: LABELS, buckets: BUCKETS, registers: [theirs] });
  const record = (values: [string, string, string], ms: number) => {
    const s = table.get(values);
    s.inc(0);
    s.observe(1, ms);
    const labels = { reporter: values[0], source_workload: values[1], response_code: values[2] };
    counter.inc(labels);
    histogram.observe(labels, ms);
  };
  return { ours, theirs, table, record };
}

test('the exposition text and get() are prom-client\'s for the same observations (bounds, +Inf, sums, several label sets)', async () => {
  const { ours, theirs, record } = both();
  // On a bound, between bounds, below the first, above the last (only +Inf), fractional sums.
  for (const ms of [0.5, 0.7, 3, 10, 24.9, 0.01, 5000, 2.25]) record(['waypoint', 'web', '200'], ms);
  record(['waypoint', 'web', '503'], 12);
  record(['waypoint', 'say "hi"\\\n', '200'], 1); // label values prom-client escapes
  assert.equal(await ours.metrics(), await theirs.metrics());
  for (const name of ['x_requests_total', 'x_duration_milliseconds']) {
    assert.deepEqual(await ours.getSingleMetric(name)!.get(), await theirs.getSingleMetric(name)!.get(), name);
  }
  assert.deepEqual(await ours.getMetricsAsJSON(), await theirs.getMetricsAsJSON());
});

test('resetMetrics() forgets every label set, as prom-client does; counting starts again', async () => {
  const { ours, theirs, record } = both();
  record(['waypoint', 'web', '200'], 1);
  ours.resetMetrics();
  theirs.resetMetrics();
  assert.equal(await ours.metrics(), await theirs.metrics());
  record(['waypoint', 'api', '200'], 7);
  assert.equal(await ours.metrics(), await theirs.metrics());
});

test('label values that join alike stay two series (a value holding the separator cannot merge into another label set)', async () => {
  const { ours, table } = both();
  // Joined with the separator both are "waypoint\0a\0b\0200"-like; they must not share numbers.
  const a = table.get(['waypoint', 'a\0b', '200']);
  const b = table.get(['waypoint\0a', 'b', '200']);
  assert.notEqual(a, b);
  a.inc(0, 2);
  b.inc(0, 5);
  assert.equal(table.get(['waypoint', 'a\0b', '200']), a, 'found again');
  assert.equal(table.get(['waypoint\0a', 'b', '200']), b, 'found again');
  const values = (await ours.getSingleMetric('x_requests_total')!.get()).values.map((v) => [v.labels['source_workload'], v.value]);
  assert.deepEqual(values.sort(), [['a\0b', 2], ['b', 5]]);
});

test('a value that is not a finite number is left out, not thrown on the request path; a counter never goes down', async () => {
  const { ours, table } = both();
  const s = table.get(['waypoint', 'web', '200']);
  s.observe(1, Number.NaN);
  s.observe(1, Number.POSITIVE_INFINITY);
  s.inc(0, -3);
  s.observe(1, 2);
  const text = await ours.metrics();
  assert.match(text, /x_duration_milliseconds_count\{reporter="waypoint",source_workload="web",response_code="200"\} 1\n/);
  assert.match(text, /x_duration_milliseconds_sum\{[^}]*\} 2\n/);
  assert.match(text, /x_requests_total\{[^}]*\} 0\n/);
});

test('buckets that do not ascend are refused when the table is built', () => {
  assert.throws(() => new SeriesTable(new Registry(), LABELS, [{ name: 'bad', help: 'h', buckets: [1, 5, 5] }]), /bad: buckets must ascend/);
});
