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
import { captureLogger, type LogLine } from './controller-harness.ts';

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
