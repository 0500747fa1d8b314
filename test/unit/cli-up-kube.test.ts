// `weftctl up --kube [--clusters n]` options and the kube lab's sample applications (cli/local/kube/up.ts), without
// starting anything: the flags it refuses and the objects it applies.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runCommands } from './cli-harness.ts';
import { upCommand } from '../../cli/commands/local.ts';
import { clusterApps, sampleApps } from '../../cli/local/kube/up.ts';

test('weftctl up --kube refuses --dual-stack and a bad --clusters (exit 2, naming them) before starting anything', async () => {
  for (const [extra, message] of [[['--dual-stack'], /--kube does not take --dual-stack/], [['--clusters', '1'], /--clusters must be a whole number from 2 to 9, not "1"/], [['--clusters', 'x'], /--clusters must be a whole number from 2 to 9, not "x"/]] as const) {
    const r = await runCommands((io) => [upCommand(io)], ['up', '--kube', ...extra, '--prefix', 'wtnone', '--state-dir', '/nonexistent/weft']);
    assert.equal(r.code, 2, extra.join(' '));
    assert.match(r.stderr, message);
  }
});

test('up --kube --clusters: echo in every cluster answering with its cluster\'s name, the client in cluster1 only', () => {
  type O = { kind: string; metadata: { name: string }; spec?: { template?: { spec: { containers: Array<{ env?: Array<{ name: string; value?: string }> }> } } } };
  const c1 = clusterApps('cluster1', true) as O[];
  const c2 = clusterApps('cluster2', false) as O[];
  const env = (objs: O[]) => objs.find((o) => o.kind === 'Deployment' && o.metadata.name === 'echo')?.spec?.template?.spec.containers[0]?.env?.find((e) => e.name === 'WEFT_CLUSTER')?.value;
  assert.deepEqual([env(c1), env(c2)], ['cluster1', 'cluster2']);
  assert.ok(c1.some((o) => o.kind === 'Pod' && o.metadata.name === 'client'));
  assert.ok(!c2.some((o) => o.kind === 'Pod'));
});

test('the kube lab\'s sample applications are weftctl up\'s: demo (client, echo, near) and shop (reviews v1/v2) ambient, shop through a Waypoint', () => {
  const objs = sampleApps() as Array<{ kind: string; metadata: { name: string; namespace?: string; labels?: Record<string, string> }; spec?: { template?: { spec: { nodeSelector?: Record<string, string> } }; nodeName?: string } }>;
  const ns = (n: string) => objs.find((o) => o.kind === 'Namespace' && o.metadata.name === n)!;
  assert.equal(ns('demo').metadata.labels?.['weft.dev/dataplane-mode'], 'ambient');
  assert.equal(ns('shop').metadata.labels?.['weft.dev/use-waypoint'], 'waypoint');
  assert.ok(objs.some((o) => o.kind === 'Waypoint' && o.metadata.namespace === 'shop' && o.metadata.name === 'waypoint'));
  const node = (name: string) => objs.find((o) => o.kind === 'Deployment' && o.metadata.name === name)?.spec?.template?.spec.nodeSelector?.['kubernetes.io/hostname'];
  assert.deepEqual([node('echo'), node('near'), node('reviews-v1'), node('reviews-v2')], ['node2', 'node1', 'node1', 'node2']);
  assert.equal(objs.find((o) => o.kind === 'Pod' && o.metadata.name === 'client')?.spec?.nodeName, 'node1');
  assert.deepEqual(objs.filter((o) => o.kind === 'Service').map((o) => `${o.metadata.namespace}/${o.metadata.name}`), ['demo/echo', 'demo/near', 'shop/reviews']);
});
