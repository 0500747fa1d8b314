import { test } from 'node:test';
import assert from 'node:assert/strict';
import { delta, histogramQuantile, parseProm, sumBy } from '../../cli/local/prom.ts';

const text = `# HELP istio_requests_total x
istio_requests_total{destination_service="a",response_code="200"} 10
istio_requests_total{destination_service="a",response_code="503"} 2
istio_requests_total{destination_service="b",response_code="200",path="x\\"y"} 5
up 1
`;

test('parses samples with labels, escaped quotes and none', () => {
  const s = parseProm(text);
  assert.equal(s.length, 4);
  assert.deepEqual(s[2]!.labels, { destination_service: 'b', response_code: '200', path: 'x"y' });
  assert.deepEqual(s[3], { name: 'up', labels: {}, value: 1 });
});

test('sums by labels and takes deltas, counting a reset from zero', () => {
  const by = sumBy(parseProm(text), 'istio_requests_total', ['destination_service']);
  assert.equal(by.get('a'), 12);
  const d = delta(new Map([['a', 10], ['b', 9]]), by);
  assert.deepEqual([...d.entries()], [['a', 2], ['b', 5]]);
});

test('quantiles interpolate inside the bucket and are undefined without data', () => {
  const b = new Map([[1, 0], [5, 50], [10, 90], [Infinity, 100]]);
  assert.equal(histogramQuantile(0.5, b), 5);
  assert.equal(histogramQuantile(0.7, b), 7.5);
  assert.equal(histogramQuantile(0.99, b), 10);
  assert.equal(histogramQuantile(0.5, new Map([[1, 0], [Infinity, 0]])), undefined);
});
