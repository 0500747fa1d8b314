// `weftctl uninstall` (issue 17, defect 8) against the kube lab: the install applied by kubectl,
// the objects the controller makes at run time beside it, then the real weftctl command. This test
// plays the node side itself (fast, no namespaces): it removes the agent pod once its DaemonSet is
// deleted and reports the cleanup DaemonSet ready; install-e2e.test.ts runs it with the lab's kubelets. What the cleanup pod itself does on
// a node (detach programs, remove pins) is test/bpf/agent-uninstall.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { renderInstall, toYaml } from '../../cli/install/render.ts';
import { FakeApiServer } from '../../cli/local/kube/fake-apiserver.ts';
import { installedObjects } from '../../cli/install/uninstall.ts';

const run = promisify(execFile);
const skip = spawnSync('kubectl', ['version', '--client']).status !== 0 && 'kubectl is not installed';
const WEFTCTL = new URL('../../cli/weftctl.ts', import.meta.url).pathname;

test('weftctl uninstall stops the agents, runs the node cleanup DaemonSet to completion, then removes everything install and the controller made', { skip }, async () => {
  const api = new FakeApiServer({ crdsFromApi: true });
  await api.start();
  const dir = mkdtempSync(join(tmpdir(), 'weft-k8s-uninstall-'));
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, api.kubeconfig());
  const file = join(dir, 'install.yaml');
  writeFileSync(file, toYaml(renderInstall({ image: 'ghcr.io/weft-mesh/weft:lab', trustDomain: 'cluster.local', dashboard: true, warn: () => {} })));
  let nodeSide: NodeJS.Timeout | undefined;
  try {
    await run('kubectl', ['--kubeconfig', kubeconfig, 'apply', '--server-side', '-f', file], { env: { ...process.env, HOME: dir } });
    // What the controller and the kubelet made at run time.
    api.apply({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'weft-agent-x1', namespace: 'weft-system', labels: { 'app.kubernetes.io/name': 'weft-agent' } }, spec: { nodeName: 'node-a' } });
    api.apply({ apiVersion: 'v1', kind: 'Secret', metadata: { name: 'weft-ca', namespace: 'weft-system', labels: { 'app.kubernetes.io/managed-by': 'weft-controller' } }, data: {} });
    api.apply({ apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name: 'weft-controller-leader', namespace: 'weft-system' }, spec: {} });
    api.apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'shop' } });
    api.apply({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'weft-trust-bundle', namespace: 'shop', labels: { 'app.kubernetes.io/managed-by': 'weft-controller' } }, data: {} });
    const made = { 'weft.dev/waypoint': 'wp', 'app.kubernetes.io/managed-by': 'weft' };
    api.apply({ apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'wp', namespace: 'shop', labels: made }, spec: {} });
    api.apply({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'wp', namespace: 'shop', labels: made }, spec: {} });
    api.apply({ apiVersion: 'policy/v1', kind: 'PodDisruptionBudget', metadata: { name: 'wp', namespace: 'shop', labels: made }, spec: {} });
    // Someone else's, labelled as a waypoint's but not made by Weft: the controller never wrote it, so uninstall leaves it.
    api.apply({ apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'proxy', namespace: 'shop', labels: { 'weft.dev/waypoint': 'proxy' } }, spec: {} });
    api.apply({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: 'shop' }, spec: {} });

    // The node side: agent pods go with their DaemonSet; the cleanup pods become ready on 2 nodes.
    let cleanupSeenWhileAgentRan = false;
    nodeSide = setInterval(() => {
      if (!api.get('DaemonSet', 'weft-system', 'weft-agent') && api.get('Pod', 'weft-system', 'weft-agent-x1')) api.remove('Pod', 'weft-system', 'weft-agent-x1');
      const ds = api.get('DaemonSet', 'weft-system', 'weft-agent-cleanup');
      if (ds && api.get('Pod', 'weft-system', 'weft-agent-x1')) cleanupSeenWhileAgentRan = true;
      if (ds && !ds['status']) api.apply({ ...ds, status: { desiredNumberScheduled: 2, numberReady: 2, observedGeneration: ds.metadata.generation } });
    }, 50);

    const r = await run(process.execPath, [WEFTCTL, 'uninstall', '--kubeconfig', kubeconfig, '--timeout', '30'], { env: { ...process.env, HOME: dir } });
    assert.match(r.stdout, /BPF programs detached and pins removed on every node/);
    assert.equal(cleanupSeenWhileAgentRan, false, 'the cleanup ran only after the agents were gone');
    const cleanupDs = api.requests.find((q) => q.method === 'POST' && q.path.includes('/daemonsets'));
    const cleanupArgs = ((cleanupDs?.body as { spec: { template: { spec: { containers: Array<{ args: string[] }> } } } }).spec.template.spec.containers[0]!.args);
    assert.deepEqual(cleanupArgs.slice(0, 2), ['agent', '--uninstall'], 'the same image, the agent in uninstall mode');
    assert.ok(api.requests.some((q) => q.method === 'DELETE' && q.path.endsWith('/daemonsets/weft-agent-cleanup')));

    for (const [kind, ns, name] of [['DaemonSet', 'weft-system', 'weft-agent'], ['Deployment', 'weft-system', 'weft-controller'], ['Namespace', undefined, 'weft-system'],
      ['Deployment', 'shop', 'wp'], ['Service', 'shop', 'wp'], ['ConfigMap', 'shop', 'weft-trust-bundle'], ['ClusterRole', undefined, 'weft-controller'],
      // The dashboard's cluster-wide pods/proxy grant: deleting the namespace leaves it, bound to a
      // ServiceAccount whoever recreates weft-system/weft-dashboard would hold.
      ['ClusterRole', undefined, 'weft-dashboard'], ['ClusterRoleBinding', undefined, 'weft-dashboard']] as const) {
      assert.equal(api.get(kind, ns, name), undefined, `${kind} ${ns ?? ''}/${name} removed`);
    }
    assert.equal(api.list('CustomResourceDefinition').length, 0);
    assert.ok(api.get('Service', 'shop', 'web'), 'users\' objects stay');
    assert.equal(api.get('PodDisruptionBudget', 'shop', 'wp'), undefined, 'the waypoint\'s disruption budget goes too');
    assert.ok(api.get('Deployment', 'shop', 'proxy'), 'a Deployment merely labelled weft.dev/waypoint stays');
  } finally {
    clearInterval(nodeSide);
    await api.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('weftctl uninstall knows every cluster-scoped object an install renders, whatever its options (the namespace\'s deletion leaves those behind)', () => {
  const removed = new Set(installedObjects('weft-system', 'weft:x').map((x) => `${x.kind}/${x.metadata?.name}`));
  const variants = [{}, { dashboard: true }, { clusterId: 'c1' }, { clusterId: 'c1', eastwest: true }, { dashboard: true, clusterId: 'c1', eastwest: true, debugEndpoints: true, splice: true }];
  for (const v of variants) {
    for (const x of renderInstall({ image: 'weft:x', trustDomain: 'cluster.local', warn: () => {}, ...v })) {
      if (x.metadata && 'namespace' in x.metadata && x.metadata.namespace) continue;
      assert.ok(removed.has(`${x.kind}/${x.metadata?.name}`), `${x.kind}/${x.metadata?.name} (install ${JSON.stringify(v)}) is left behind by uninstall`);
    }
  }
});

// Istio's uninstall leaves the control-plane namespace to the operator
// (https://istio.io/latest/docs/ambient/getting-started/cleanup/: `istioctl uninstall --purge`, then
// `kubectl delete namespace istio-system`). Weft deletes its namespace itself, but only when nothing
// of anyone else's is left in it: installed into a namespace that also runs an application, the
// application and its namespace stay, and uninstall says what kept it.
test('weftctl uninstall keeps a namespace that holds objects Weft did not make (deleting it would take the application with it), names them, and removes Weft\'s own', { skip }, async () => {
  const api = new FakeApiServer({ crdsFromApi: true });
  await api.start();
  const dir = mkdtempSync(join(tmpdir(), 'weft-k8s-uninstall-'));
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, api.kubeconfig());
  const file = join(dir, 'install.yaml');
  writeFileSync(file, toYaml(renderInstall({ image: 'ghcr.io/weft-mesh/weft:lab', trustDomain: 'cluster.local', namespace: 'apps', warn: () => {} })));
  let nodeSide: NodeJS.Timeout | undefined;
  try {
    api.apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'apps' } });
    api.apply({ apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'web', namespace: 'apps', labels: { app: 'web' } }, spec: {} });
    api.apply({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'kube-root-ca.crt', namespace: 'apps' }, data: {} });
    await run('kubectl', ['--kubeconfig', kubeconfig, 'apply', '--server-side', '-f', file], { env: { ...process.env, HOME: dir } });
    api.apply({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'weft-controller-x1', namespace: 'apps', labels: { 'app.kubernetes.io/name': 'weft-controller', 'app.kubernetes.io/part-of': 'weft' } }, spec: { nodeName: 'node-a' } });
    nodeSide = setInterval(() => {
      const ds = api.get('DaemonSet', 'apps', 'weft-agent-cleanup');
      if (ds && !ds['status']) api.apply({ ...ds, status: { desiredNumberScheduled: 1, numberReady: 1, observedGeneration: ds.metadata.generation } });
    }, 50);
    const r = await run(process.execPath, [WEFTCTL, 'uninstall', '--kubeconfig', kubeconfig, '--namespace', 'apps', '--timeout', '30'], { env: { ...process.env, HOME: dir } });
    assert.ok(api.get('Namespace', undefined, 'apps'), 'the namespace stays');
    assert.ok(api.get('Deployment', 'apps', 'web'), 'the application stays');
    assert.match(r.stdout, /kept namespace apps: it holds objects Weft did not make \(Deployment apps\/web\)/);
    for (const [kind, name] of [['DaemonSet', 'weft-agent'], ['Deployment', 'weft-controller'], ['ServiceAccount', 'weft-controller'], ['Role', 'weft-controller']] as const) {
      assert.equal(api.get(kind, 'apps', name), undefined, `${kind} apps/${name} removed`);
    }
    assert.equal(api.get('ClusterRole', undefined, 'weft-controller'), undefined);
  } finally {
    clearInterval(nodeSide);
    await api.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
