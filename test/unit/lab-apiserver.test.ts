// The lab API server (cli/local/kube/fake-apiserver.ts) where it stands in for kube-apiserver behaviour
// the rest of the suite relies on: bookmarks and 410 on watches, server-side apply ownership, CRD
// pruning and validation, and tokens bound to a pod that die with it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { FakeApiServer } from '../../cli/local/kube/fake-apiserver.ts';

const execFileP = promisify(execFile);
const CRD = parse(readFileSync(new URL('../../deploy/crds/weft.dev_waypoints.yaml', import.meta.url), 'utf8')) as object;

async function withApi(fn: (api: FakeApiServer) => Promise<void>): Promise<void> {
  const api = new FakeApiServer({ crdsFromApi: true });
  await api.start();
  try {
    await fn(api);
  } finally {
    await api.stop();
  }
}

async function readLines(res: Response, n: number): Promise<Array<{ type: string; object: { metadata: { resourceVersion?: string; name?: string }; code?: number } }>> {
  const reader = res.body!.getReader();
  let text = '';
  const lines = () => text.split('\n').filter(Boolean);
  while (lines().length < n) {
    const { value, done } = await reader.read();
    if (done) break;
    text += Buffer.from(value).toString();
  }
  await reader.cancel();
  return lines().map((l) => JSON.parse(l));
}

test('a watch from a resourceVersion replays later changes, sends BOOKMARKs when asked, and a compacted one gets 410 Expired', () =>
  withApi(async (api) => {
    api.apply({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'a', namespace: 'default' }, data: {} });
    const rv = api.resourceVersion;
    api.apply({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'b', namespace: 'default' }, data: {} });
    const res = await fetch(`${api.url}/api/v1/configmaps?watch=true&resourceVersion=${rv}&allowWatchBookmarks=true`);
    const evs = await readLines(res, 2);
    assert.deepEqual(evs.map((e) => [e.type, e.object.metadata.name]), [['ADDED', 'b'], ['BOOKMARK', undefined]]);
    assert.equal(evs[1]!.object.metadata.resourceVersion, api.resourceVersion);
    api.compact();
    const gone = await readLines(await fetch(`${api.url}/api/v1/configmaps?watch=true&resourceVersion=${rv}`), 1);
    assert.equal(gone[0]!.type, 'ERROR');
    assert.equal(gone[0]!.object.code, 410);
  }));

test('server-side apply: a manager\'s dropped field is removed, another manager\'s field stays; CRD objects are pruned and validated', () =>
  withApi(async (api) => {
    api.apply(CRD);
    api.apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'shop' } });
    const url = `${api.url}/apis/weft.dev/v1alpha1/namespaces/shop/waypoints/wp`;
    const ssa = (manager: string, body: string) => fetch(`${url}?fieldManager=${manager}`, { method: 'PATCH', headers: { 'content-type': 'application/apply-patch+yaml' }, body });
    assert.equal((await ssa('alice', 'apiVersion: weft.dev/v1alpha1\nkind: Waypoint\nmetadata: {name: wp, namespace: shop}\nspec: {replicas: 2, maxRequests: 10, color: blue}\n')).status, 201);
    assert.deepEqual(api.get('Waypoint', 'shop', 'wp')!['spec'], { replicas: 2, maxRequests: 10 }, 'unknown field pruned');
    assert.equal((await ssa('bob', 'apiVersion: weft.dev/v1alpha1\nkind: Waypoint\nmetadata: {name: wp, namespace: shop}\nspec: {image: "registry.example/w:1"}\n')).status, 200);
    assert.equal((await ssa('alice', 'apiVersion: weft.dev/v1alpha1\nkind: Waypoint\nmetadata: {name: wp, namespace: shop}\nspec: {replicas: 3}\n')).status, 200);
    assert.deepEqual(api.get('Waypoint', 'shop', 'wp')!['spec'], { replicas: 3, image: 'registry.example/w:1' });
    const bad = await ssa('alice', 'apiVersion: weft.dev/v1alpha1\nkind: Waypoint\nmetadata: {name: wp, namespace: shop}\nspec: {replicas: many}\n');
    assert.equal(bad.status, 422);
    const st = await bad.json() as { reason: string; details: { causes: Array<{ field: string }> } };
    assert.equal(st.reason, 'Invalid');
    assert.equal(st.details.causes[0]!.field, 'spec.replicas');
  }));

test('a token bound to a pod passes TokenReview for its audience until the pod is deleted; TokenRequest binds the node', () =>
  withApi(async (api) => {
    api.apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'weft-system' } });
    api.apply({ apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'weft-agent', namespace: 'weft-system' } });
    api.apply({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'agent-1', namespace: 'weft-system' }, spec: { nodeName: 'node-a', serviceAccountName: 'weft-agent' } });
    const tr = await fetch(`${api.url}/api/v1/namespaces/weft-system/serviceaccounts/weft-agent/token`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ apiVersion: 'authentication.k8s.io/v1', kind: 'TokenRequest', spec: { audiences: ['weft-controller'], expirationSeconds: 600, boundObjectRef: { kind: 'Pod', apiVersion: 'v1', name: 'agent-1' } } }),
    });
    assert.equal(tr.status, 201);
    const token = ((await tr.json()) as { status: { token: string } }).status.token;
    const review = async (audiences: string[]) => ((await (await fetch(`${api.url}/apis/authentication.k8s.io/v1/tokenreviews`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, audiences } }) })).json()) as { status: { authenticated: boolean; error?: string; user?: { username: string; extra: Record<string, string[]> } } }).status;
    const ok = await review(['weft-controller']);
    assert.equal(ok.authenticated, true);
    assert.equal(ok.user!.username, 'system:serviceaccount:weft-system:weft-agent');
    assert.deepEqual(ok.user!.extra['authentication.kubernetes.io/node-name'], ['node-a']);
    assert.equal((await review([])).authenticated, false, 'not valid for the API server\'s own audience');
    const forged = token.slice(0, -4) + (token.endsWith('AAAA') ? 'BBBB' : 'AAAA');
    assert.equal(api.reviewToken(forged, ['weft-controller'])['authenticated'], false, 'a tampered signature is refused');
    api.remove('Pod', 'weft-system', 'agent-1');
    const dead = await review(['weft-controller']);
    assert.equal(dead.authenticated, false);
    assert.match(dead.error!, /pod weft-system\/agent-1 has been deleted/);
  }));

test('kubectl get prints the real server\'s columns from a meta.k8s.io/v1 Table (Pods, Deployments; Name and Age otherwise)', { skip: spawnSync('kubectl', ['version', '--client']).status !== 0 && 'kubectl is not installed' }, async () => {
  await withApi(async (api) => {
    const dir = mkdtempSync(join(tmpdir(), 'weft-table-'));
    try {
      const kubeconfig = join(dir, 'kubeconfig');
      writeFileSync(kubeconfig, api.kubeconfig());
      api.apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'shop' } });
      api.apply({
        apiVersion: 'v1', kind: 'Pod', metadata: { name: 'web', namespace: 'shop' }, spec: { nodeName: 'node1', containers: [{ name: 'a', image: 'x' }, { name: 'b', image: 'x' }] },
        status: { phase: 'Running', podIP: '10.1.1.5', containerStatuses: [{ name: 'a', ready: true, restartCount: 2 }, { name: 'b', ready: false, restartCount: 1, state: { waiting: { reason: 'CrashLoopBackOff' } } }] },
      });
      api.apply({ apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'web', namespace: 'shop' }, spec: { replicas: 3 }, status: { readyReplicas: 2, updatedReplicas: 3, availableReplicas: 2 } });
      // Asynchronous: the API server answers from this process.
      const get = async (...args: string[]) => (await execFileP('kubectl', ['--kubeconfig', kubeconfig, 'get', ...args], { env: { ...process.env, HOME: dir } })).stdout;
      const pods = await get('pods', '-n', 'shop', '-o', 'wide');
      const [head, row] = pods.trim().split('\n').map((l) => l.trim().split(/\s+/));
      assert.deepEqual(head, ['NAME', 'READY', 'STATUS', 'RESTARTS', 'AGE', 'IP', 'NODE']);
      assert.deepEqual([row![0], row![1], row![2], row![3], row![5], row![6]], ['web', '1/2', 'CrashLoopBackOff', '3', '10.1.1.5', 'node1']);
      const deploy = await get('deployments', '-A');
      assert.match(deploy, /^NAMESPACE\s+NAME\s+READY\s+UP-TO-DATE\s+AVAILABLE\s+AGE\nshop\s+web\s+2\/3\s+3\s+2\s+\d+s$/m);
      assert.match(await get('namespaces'), /^NAME\s+AGE\nshop\s+\d+s$/m);
      // JSON output is not a table.
      assert.equal((JSON.parse(await get('pods', '-n', 'shop', '-o', 'json')) as { kind: string }).kind, 'List');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
