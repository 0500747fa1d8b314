// The kube lab's stand-in controllers (cli/local/kube/kube-controllers.ts): Deployments, ReplicaSets,
// DaemonSets, the scheduler, EndpointSlices and garbage collection, driven pass by pass with a
// fake kubelet that marks pods ready. Rolling-update rules follow the Kubernetes documentation
// (Deployment "Rolling Update Deployment", DaemonSet "Perform a Rolling Update on a DaemonSet").
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeApiServer } from '../../cli/local/kube/fake-apiserver.ts';
import { LabControllers, intOrPercent, podReady } from '../../cli/local/kube/kube-controllers.ts';

type Obj = ReturnType<FakeApiServer['apply']>;

function lab(nodes = ['node-a', 'node-b']): { api: FakeApiServer; c: LabControllers; pods: (ns?: string) => Obj[]; ready: (filter?: (p: Obj) => boolean) => void } {
  const api = new FakeApiServer();
  for (const n of nodes) api.apply({ apiVersion: 'v1', kind: 'Node', metadata: { name: n } });
  api.apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'shop' } });
  const c = new LabControllers(api);
  const pods = (ns = 'shop') => api.list('Pod').filter((p) => p.metadata.namespace === ns);
  // What the kubelet would write once a pod's containers run and its probe passes.
  const ready = (filter: (p: Obj) => boolean = () => true) => {
    for (const p of api.list('Pod')) {
      if (!filter(p) || podReady(p)) continue;
      const i = api.list('Pod').indexOf(p);
      api.apply({ ...p, status: { phase: 'Running', podIP: `10.77.9.${i + 1 + Math.floor(Math.random() * 200)}`, conditions: [{ type: 'Ready', status: 'True' }] } });
    }
  };
  return { api, c, pods, ready };
}

const deployment = (image: string, replicas = 2, strategy?: object) => ({
  apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'web', namespace: 'shop' },
  spec: {
    replicas, selector: { matchLabels: { app: 'web' } }, ...(strategy ? { strategy } : {}),
    template: { metadata: { labels: { app: 'web' } }, spec: { containers: [{ name: 'web', image, ports: [{ name: 'http', containerPort: 8080 }] }] } },
  },
});

test('intOrPercent rounds surge up and unavailability down, as Kubernetes does', () => {
  assert.equal(intOrPercent('25%', 3, '25%', true), 1);
  assert.equal(intOrPercent('25%', 3, '25%', false), 0);
  assert.equal(intOrPercent(undefined, 4, '25%', false), 1);
  assert.equal(intOrPercent(2, 10, '25%', true), 2);
});

test('a Deployment becomes a ReplicaSet and scheduled pods; a template change rolls them within maxSurge 1 / maxUnavailable 0', () => {
  const { api, c, pods, ready } = lab();
  api.apply(deployment('lab/echo:v1', 2, { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } }));
  c.reconcile();
  c.reconcile();
  assert.equal(api.list('ReplicaSet').length, 1);
  assert.equal(pods().length, 2);
  assert.deepEqual(pods().map((p) => (p['spec'] as { nodeName: string }).nodeName).sort(), ['node-a', 'node-b'], 'spread over the nodes');
  assert.match(pods()[0]!.metadata.labels!['pod-template-hash']!, /^[0-9a-f]{10}$/);
  ready();
  c.reconcile();
  c.reconcile();
  assert.equal((api.get('Deployment', 'shop', 'web')!['status'] as { readyReplicas: number }).readyReplicas, 2);

  api.apply(deployment('lab/echo:v2', 2, { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } }));
  const image = (p: Obj) => (p['spec'] as { containers: Array<{ image: string }> }).containers[0]!.image;
  let maxPods = 0;
  for (let round = 0; round < 20 && !(pods().length === 2 && pods().every((p) => image(p) === 'lab/echo:v2') && pods().every(podReady)); round++) {
    c.reconcile();
    maxPods = Math.max(maxPods, pods().length);
    // Never fewer than 2 ready pods (maxUnavailable 0), never more than 3 (maxSurge 1).
    assert.ok(pods().filter(podReady).length >= 2, `round ${round}: ${pods().filter(podReady).length} ready`);
    assert.ok(pods().length <= 3, `round ${round}: ${pods().length} pods`);
    ready();
  }
  assert.ok(pods().every((p) => image(p) === 'lab/echo:v2'), 'rolled to v2');
  assert.equal(maxPods, 3, 'one surge pod at a time');
  c.reconcile();
  assert.equal(api.list('ReplicaSet').length, 1, 'the old ReplicaSet is gone once scaled to zero');

  // Deleting the Deployment takes its ReplicaSet and pods (garbage collection by ownerReferences).
  api.remove('Deployment', 'shop', 'web');
  c.reconcile();
  c.reconcile();
  assert.equal(api.list('ReplicaSet').length, 0);
  assert.equal(pods().length, 0);
});

test('a DaemonSet runs one pod per node and rolls node by node: with maxSurge the new pod is ready before the old one goes', () => {
  const { api, c, pods, ready } = lab(['node-a', 'node-b', 'node-c']);
  const ds = (arg: string) => ({
    apiVersion: 'apps/v1', kind: 'DaemonSet', metadata: { name: 'agent', namespace: 'shop' },
    spec: {
      selector: { matchLabels: { app: 'agent' } }, updateStrategy: { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } },
      template: { metadata: { labels: { app: 'agent' } }, spec: { hostNetwork: true, containers: [{ name: 'agent', image: 'weft', args: ['agent', arg] }] } },
    },
  });
  api.apply(ds('--v1'));
  c.reconcile();
  assert.deepEqual(pods().map((p) => (p['spec'] as { nodeName: string }).nodeName).sort(), ['node-a', 'node-b', 'node-c']);
  ready();
  c.reconcile();
  assert.equal((api.get('DaemonSet', 'shop', 'agent')!['status'] as { numberReady: number }).numberReady, 3);

  api.apply(ds('--v2'));
  const arg = (p: Obj) => (p['spec'] as { containers: Array<{ args: string[] }> }).containers[0]!.args[1];
  for (let round = 0; round < 30 && !(pods().length === 3 && pods().every((p) => arg(p) === '--v2' && podReady(p))); round++) {
    c.reconcile();
    assert.ok(pods().length <= 4, `round ${round}: at most one node surges (${pods().length} pods)`);
    // Each node keeps a ready agent through the roll.
    for (const node of ['node-a', 'node-b', 'node-c']) assert.ok(pods().some((p) => (p['spec'] as { nodeName: string }).nodeName === node && podReady(p)), `round ${round}: ${node} keeps a ready agent`);
    ready();
  }
  assert.ok(pods().every((p) => arg(p) === '--v2'), 'every node rolled');
  assert.equal(pods().length, 3);
});

test('EndpointSlices list the pods a Service selects, with readiness and named target ports resolved', () => {
  const { api, c, pods, ready } = lab();
  api.apply(deployment('lab/echo:v1', 2));
  api.apply({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: 'shop' }, spec: { selector: { app: 'web' }, ports: [{ name: 'http', port: 80, targetPort: 'http' }] } });
  c.reconcile();
  c.reconcile();
  assert.deepEqual(api.get('EndpointSlice', 'shop', 'web-lab')!['endpoints'], [], 'no pod has an address yet: an empty slice');
  ready((p) => p === pods()[0] || p.metadata.name === pods()[0]!.metadata.name);
  c.reconcile();
  const slice = api.get('EndpointSlice', 'shop', 'web-lab')!;
  assert.equal(slice.metadata.labels!['kubernetes.io/service-name'], 'web');
  assert.deepEqual(slice['ports'], [{ name: 'http', port: 8080, protocol: 'TCP' }]);
  const eps = slice['endpoints'] as Array<{ conditions: { ready: boolean } }>;
  assert.equal(eps.length, 1);
  assert.equal(eps[0]!.conditions.ready, true);
  ready();
  c.reconcile();
  assert.equal((api.get('EndpointSlice', 'shop', 'web-lab')!['endpoints'] as unknown[]).length, 2);
  api.remove('Service', 'shop', 'web');
  c.reconcile();
  assert.equal(api.get('EndpointSlice', 'shop', 'web-lab'), undefined, 'the slice goes with its Service');
});
