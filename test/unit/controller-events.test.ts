// The leader records each compile's new findings as Kubernetes Events (controller/src/cluster/events.ts),
// one API write each, before its next compile. A tenant labelling its own pods with a Waypoint that
// does not exist makes a finding per pod: the writes of one compile are bounded (the rest wait for the
// next), as client-go's EventCorrelator rate-limits a source's Events
// (k8s.io/client-go/tools/record/events_cache.go: a token bucket per object, an LRU of 4096
// aggregations), so other tenants' config is not held up behind them; and what the recorder keeps to
// bump an Event's count is bounded too, while pods with findings come and go.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KubeConfig } from '@kubernetes/client-node';
import { FakeApiServer } from '../../cli/local/kube/fake-apiserver.ts';
import { EventRecorder, MAX_EVENT_WRITES_PER_RECORD, MAX_TRACKED_EVENTS } from '../../controller/src/cluster/events.ts';
import type { CompileFinding } from '../../controller/src/compile.ts';
import { captureLogger, until, type LogLine } from './controller-harness.ts';
import { Controller } from '../../controller/src/controller.ts';
import { MemorySource } from '../../controller/src/sources/memory.ts';
import { ConfigServer } from '../../controller/src/xds/server.ts';
import { ns } from './controller-fixtures.ts';

const podFindings = (gen: number, n: number): CompileFinding[] => Array.from({ length: n }, (_, i) => ({
  kind: 'Pod', namespace: 'shop', name: `web-${gen}-${i}`, path: 'metadata.labels["weft.dev/use-waypoint"]', reason: 'WaypointNotFound', message: 'Waypoint shop/gone does not exist; traffic addressed to this pod fails closed until it does',
}));

test('a compile\'s findings become at most MAX_EVENT_WRITES_PER_RECORD Event writes, the rest at the next call (counted in a log line); a finding still present is not written again; what is kept to bump counts stays within MAX_TRACKED_EVENTS as pods with findings come and go', async () => {
  const api = new FakeApiServer({});
  await api.start();
  try {
    const kubeConfig = new KubeConfig();
    kubeConfig.loadFromString(api.kubeconfig());
    const logs: LogLine[] = [];
    const rec = new EventRecorder({ kubeConfig, instance: 'weft-controller-0', logger: captureLogger(logs) });
    const many = podFindings(0, MAX_EVENT_WRITES_PER_RECORD * 2 + 10);
    const events = () => api.list('Event').length;
    await rec.record(many);
    assert.equal(events(), MAX_EVENT_WRITES_PER_RECORD, 'one call writes at most its bound');
    const deferred = logs.find((l) => l.msg.startsWith('events deferred'));
    assert.equal(deferred?.fields['deferred'], MAX_EVENT_WRITES_PER_RECORD + 10, JSON.stringify(logs));
    await rec.record(many);
    assert.equal(events(), MAX_EVENT_WRITES_PER_RECORD * 2, 'the next call writes the next ones, not the first again');
    await rec.record(many);
    assert.equal(events(), many.length);
    await rec.record(many);
    assert.equal(events(), many.length, 'findings still present are not written again');
    // Pods with findings come and go (rollouts): the recorder keeps a bounded number of them.
    for (let gen = 1; gen <= Math.ceil(MAX_TRACKED_EVENTS / MAX_EVENT_WRITES_PER_RECORD) + 1; gen++) {
      await rec.record(podFindings(gen, MAX_EVENT_WRITES_PER_RECORD));
      assert.ok(rec.tracked <= MAX_TRACKED_EVENTS, `tracked ${rec.tracked} at generation ${gen}`);
    }
    assert.equal(rec.tracked, MAX_TRACKED_EVENTS);
  } finally {
    await api.stop();
  }
});

// An Event the API server expired (its TTL, an hour by default) is written again when its finding
// comes back, not patched with 404 at every compile (which spent the bound on writes that fail).
test('a finding whose Event the API server expired gets a new Event, not a patch refused at every compile; its count is bumped only by a patch that took', async () => {
  const api = new FakeApiServer({});
  await api.start();
  try {
    const kubeConfig = new KubeConfig();
    kubeConfig.loadFromString(api.kubeconfig());
    const rec = new EventRecorder({ kubeConfig, instance: 'weft-controller-0' });
    const one = podFindings(9, 1);
    await rec.record(one);
    await rec.record([]);
    await rec.record(one);
    const [ev] = api.list('Event') as Array<{ metadata: { name: string; namespace: string }; count?: number }>;
    assert.equal(ev?.count, 2, 'come back: its count bumped');
    api.remove('Event', ev!.metadata.namespace, ev!.metadata.name);
    await rec.record([]);
    const patches = () => api.requests.filter((r) => r.method === 'PATCH').length;
    const before = patches();
    await rec.record(one);
    assert.equal(api.list('Event').length, 1, 'written anew');
    await rec.record([]);
    await rec.record(one);
    assert.equal((api.list('Event')[0] as { count?: number }).count, 2, 'and bumped again');
    assert.equal(patches() - before, 2, 'one patch refused (404), one that took');
  } finally {
    await api.stop();
  }
});

// The recorder holds back what its bound does not write; the controller schedules the next round
// itself, so the rest reach the API server in a quiet cluster too, not at some unrelated change.
test('findings the recorder held back are recorded at a round the controller schedules itself, with no other change', async () => {
  const calls: number[] = [];
  const controller = new Controller({
    source: new MemorySource([ns('shop', { 'weft.dev/use-waypoint': 'gone' })] as never),
    configServer: new ConfigServer(),
    onFindings: async (f) => { calls.push(f.length); return calls.length < 3; },
    debounceMs: 5,
  });
  try {
    await controller.start();
    await until('three rounds of recording', () => calls.length >= 3, 5_000);
    await controller.settled();
    assert.equal(calls.length, 3, 'and no more once nothing is held back');
    assert.ok(calls.every((n) => n >= 1));
  } finally {
    await controller.stop();
  }
});
