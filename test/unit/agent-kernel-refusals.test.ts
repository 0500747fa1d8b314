// Kernel refusals in weft_connections_denied_total{reporter="kernel"}: each ring-buffer event is
// counted with the refused pod's workload labels; what the node-wide BPF counters counted and no
// event accounted for (a full ring, refusals from before the agent started) is added one scrape
// later as `unknown`, so the total always catches up with the counters and nothing is counted twice.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { AgentMetrics } from '../../agent/src/metrics.ts';

async function denied(m: AgentMetrics): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const v of (await m.denied.get()).values) {
    if (v.labels['reporter'] !== 'kernel') continue;
    out[`${String(v.labels['reason'])}/${String(v.labels['destination_workload_namespace'])}/${String(v.labels['destination_workload'])}`] = v.value;
  }
  return out;
}

test('kernel refusals carry the destination workload from the ring buffer event; counter-only refusals are added as unknown one scrape late', async () => {
  const m = new AgentMetrics();
  const counters: Record<string, number> = { strict_denied: 5, fragment_dropped: 0 };
  m.watchKernelRefusals(() => ({ ...counters }));
  const scrape = () => denied(m); // every read of the counter is a scrape
  const total = (d: Record<string, number>) => Object.values(d).reduce((a, b) => a + b, 0);
  // First scrape: 5 refusals from before this agent started; none is added yet (one scrape late).
  assert.deepEqual(await scrape(), {});
  // Two events arrive for new refusals (the counter moves with them), one with no local workload.
  counters['strict_denied'] = 7;
  m.kernelRefusal('strict_denied', { name: 'echo', namespace: 'demo' });
  m.kernelRefusal('strict_denied', undefined);
  let d = await scrape();
  assert.equal(d['strict_denied/demo/echo'], 1, 'labelled from the event at once');
  assert.ok(total(d) <= 7, `never more than the counter: ${JSON.stringify(d)}`);
  // A refusal whose event was lost (full ring): the counter moves, no event ever comes.
  counters['strict_denied'] = 8;
  d = await scrape();
  assert.ok(total(d) <= 8);
  // Then an event that was still on its way when the counter was read: not counted twice.
  counters['strict_denied'] = 9;
  d = await scrape();
  m.kernelRefusal('strict_denied', { name: 'echo', namespace: 'demo' });
  d = await scrape();
  d = await scrape();
  assert.deepEqual(d, { 'strict_denied/demo/echo': 2, 'strict_denied/unknown/unknown': 7 }, 'labelled events + unknown == the counter, no more');
  d = await scrape();
  assert.equal(total(d), 9, 'stable once the counters are');
});

test('weft_splice_sockets_total follows the node\'s splice reader counters by event, at each scrape, never going back', async () => {
  const m = new AgentMetrics();
  const counters = { splice_reader_splice: 2, splice_stranded: 0, splice_reader_fionread: 1 };
  m.watchSpliceCounters(() => ({ ...counters }));
  const scrape = async (): Promise<Record<string, number>> => {
    const text = await m.registry.getSingleMetricAsString('weft_splice_sockets_total');
    return Object.fromEntries([...text.matchAll(/^weft_splice_sockets_total\{event="(\w+)"\} (\d+)$/gm)].map((x) => [x[1]!, Number(x[2])]));
  };
  assert.deepEqual(await scrape(), { splice_reader: 2, stranded: 0, fionread: 1 });
  counters.splice_stranded = 1;
  counters.splice_reader_splice = 3;
  assert.deepEqual(await scrape(), { splice_reader: 3, stranded: 1, fionread: 1 });
  assert.deepEqual(await scrape(), { splice_reader: 3, stranded: 1, fionread: 1 }, 'a scrape with nothing new adds nothing');
});
