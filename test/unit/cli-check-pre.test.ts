// weftctl check --pre against a cluster: node kernels and OS, each node's cgroup mode (the
// kubelet's kubelet_cgroup_version gauge, KEP-4569, through the API server's node proxy) and the
// Gateway API / Weft CRDs, read from the API alone (no clang or bpftool on the user's machine).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { kubeletCgroupVersion } from '../../cli/check-cluster.ts';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { checkCommand } from '../../cli/commands/check.ts';
import { FakeApiServer } from '../../cli/local/kube/fake-apiserver.ts';
import { runCommands } from './cli-harness.ts';

const dir = mkdtempSync(join(tmpdir(), 'weft-cli-pre-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const node = (name: string, kernelVersion: string, operatingSystem = 'linux') => ({ apiVersion: 'v1', kind: 'Node', metadata: { name }, status: { nodeInfo: { kernelVersion, operatingSystem, osImage: 'Debian GNU/Linux 12', architecture: 'amd64', kubeletVersion: 'v1.30.4' } } });

const kubeletServers: http.Server[] = [];
after(() => { for (const s of kubeletServers) s.close(); });

/** A node's kubelet as the node proxy reaches it: its /metrics answer. */
async function kubelet(status: number, body: string): Promise<{ host: string; port: number }> {
  const server = http.createServer((req, res) => {
    const ok = req.url === '/metrics';
    res.writeHead(ok ? status : 404, { 'content-type': 'text/plain' }).end(ok ? body : '');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  kubeletServers.push(server);
  return { host: '127.0.0.1', port: (server.address() as AddressInfo).port };
}

const METRICS = (v: number) => `# HELP kubelet_cgroup_version [ALPHA] cgroup version on the hosts.\n# TYPE kubelet_cgroup_version gauge\nkubelet_cgroup_version ${v}\n# TYPE kubelet_running_pods gauge\nkubelet_running_pods 12\n`;
const crd = (name: string, versions: string[]) => {
  const [plural, ...group] = name.split('.');
  const kind = { httproutes: 'HTTPRoute', grpcroutes: 'GRPCRoute', waypoints: 'Waypoint' }[plural!] ?? 'Thing';
  return { apiVersion: 'apiextensions.k8s.io/v1', kind: 'CustomResourceDefinition', metadata: { name }, spec: { group: group.join('.'), names: { kind, plural }, scope: 'Namespaced', versions: versions.map((v, i) => ({ name: v, served: true, storage: i === 0 })) } };
};

test('check --pre reads node kernels and CRDs from the API; a missing Gateway API CRD or an old kernel is named with what to do', async () => {
  const api = new FakeApiServer();
  await api.start();
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, stringify({ apiVersion: 'v1', kind: 'Config', clusters: [{ name: 'lab', cluster: { server: api.url, 'insecure-skip-tls-verify': true } }], users: [{ name: 'u', user: {} }], contexts: [{ name: 'lab', context: { cluster: 'lab', user: 'u' } }], 'current-context': 'lab' }));
  const run = (args: string[]) => runCommands((io) => [checkCommand(io)], ['check', '--pre', '--kubeconfig', kubeconfig, ...args]);
  try {
    api.apply(node('node-a', '6.8.0-45-generic'));
    api.apply(node('node-b', '5.10.0-28-amd64'));
    api.apply(node('win', '10.0.20348', 'windows'));
    api.apply(crd('httproutes.gateway.networking.k8s.io', ['v1', 'v1beta1']));
    api.apply(crd('waypoints.weft.dev', ['v1alpha1']));
    const r = await run([]);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stdout, /^ok  +node node-a +kernel 6\.8\.0-45-generic \(>= 6\.6\), Debian GNU\/Linux 12 amd64$/m);
    assert.match(r.stdout, /^WARN +node node-b +kernel 5\.10\.0-28-amd64 is older than 6\.6/m);
    assert.match(r.stdout, /^FAIL +node win +runs windows; the agent needs Linux$/m);
    assert.match(r.stdout, /^ok  +CRD httproutes\.gateway\.networking\.k8s\.io +serves v1, v1beta1$/m);
    assert.match(r.stdout, /^FAIL +CRD grpcroutes\.gateway\.networking\.k8s\.io +not installed\n +-> install the Gateway API standard channel/m);
    assert.match(r.stdout, /^WARN +CRD referencegrants\.gateway\.networking\.k8s\.io +not installed \(needed only for backendRefs to other namespaces\)/m);
    assert.match(r.stdout, /^ok  +CRD waypoints\.weft\.dev +installed \(serves v1alpha1\)$/m);
    assert.match(r.stdout, /^ok  +CRD authorizationpolicies\.weft\.dev +not installed yet; `weftctl install \| kubectl apply -f -` creates it$/m);
    // No kubelet reachable through the node proxy: the cgroup mode is unknown, said as a warning.
    assert.match(r.stdout, /^WARN +node node-a cgroup +cgroup mode unknown: the kubelet's metrics did not answer through the node proxy \(no kubelet endpoint for node node-a\)\n +-> on the node, `stat -fc %T \/sys\/fs\/cgroup` prints cgroup2fs/m);
    assert.ok(api.requests.every((q) => !q.path.includes('/proxy') || /^\/api\/v1\/nodes\/node-[ab]\/proxy\/metrics$/.test(q.path)), 'the API, and only the Linux nodes\' kubelet metrics through the node proxy');

    api.apply(crd('grpcroutes.gateway.networking.k8s.io', ['v1']));
    api.remove('Node', undefined, 'win');
    const ok = await run(['-o', 'json']);
    assert.equal(ok.code, 0, ok.stdout);
    assert.equal(JSON.parse(ok.stdout).filter((c: { status: string }) => c.status === 'fail').length, 0);
  } finally {
    await api.stop();
  }
});

test('check --pre reads each node\'s cgroup mode from its kubelet\'s kubelet_cgroup_version (KEP-4569) through the node proxy', async () => {
  assert.equal(kubeletCgroupVersion(METRICS(2)), 2);
  assert.equal(kubeletCgroupVersion('kubelet_cgroup_version{} 1\n'), 1);
  assert.equal(kubeletCgroupVersion('kubelet_cgroup_versions 2\nkubelet_running_pods 3\n'), undefined, 'a longer name is another metric');
  const api = new FakeApiServer();
  await api.start();
  const kubeconfig = join(dir, 'kubeconfig-cg');
  writeFileSync(kubeconfig, api.kubeconfig());
  try {
    for (const n of ['v2', 'v1', 'old', 'forbidden']) api.apply(node(n, '6.8.0'));
    api.apply(crd('httproutes.gateway.networking.k8s.io', ['v1']));
    api.apply(crd('grpcroutes.gateway.networking.k8s.io', ['v1']));
    const targets = new Map([
      ['v2', await kubelet(200, METRICS(2))],
      ['v1', await kubelet(200, METRICS(1))],
      ['old', await kubelet(200, '# TYPE kubelet_running_pods gauge\nkubelet_running_pods 3\n')],
      ['forbidden', await kubelet(403, 'Forbidden (user=alice, verb=get, resource=nodes, subresource=proxy)')],
    ]);
    api.nodeProxyTarget = (n) => targets.get(n);
    const r = await runCommands((io) => [checkCommand(io)], ['check', '--pre', '--kubeconfig', kubeconfig]);
    assert.equal(r.code, 1, 'a cgroup v1 node fails the check');
    assert.match(r.stdout, /^ok  +node v2 cgroup +cgroup v2 \(kubelet_cgroup_version 2\)$/m);
    assert.match(r.stdout, /^FAIL +node v1 cgroup +cgroup v1 \(kubelet_cgroup_version 1\): the agent attaches its programs to the cgroup v2 hierarchy\n +-> boot the node with systemd\.unified_cgroup_hierarchy=1/m);
    assert.match(r.stdout, /^WARN +node old cgroup +cgroup mode unknown: the kubelet \(v1\.30\.4\) does not publish kubelet_cgroup_version \(Kubernetes 1\.31 and later do\)$/m);
    assert.match(r.stdout, /^WARN +node forbidden cgroup +cgroup mode unknown: reading the kubelet's metrics needs `get` on nodes\/proxy$/m);
    const j = JSON.parse((await runCommands((io) => [checkCommand(io)], ['check', '--pre', '--kubeconfig', kubeconfig, '-o', 'json'])).stdout) as Array<{ id: string; title: string; status: string }>;
    assert.deepEqual(j.filter((c) => c.id === 'cluster.node.cgroup').map((c) => [c.title, c.status]), [['node v2 cgroup', 'pass'], ['node v1 cgroup', 'fail'], ['node old cgroup', 'warn'], ['node forbidden cgroup', 'warn']]);
  } finally {
    await api.stop();
  }
});

test('check --pre with no reachable API server is one line and exit 1', async () => {
  const kubeconfig = join(dir, 'dead');
  writeFileSync(kubeconfig, stringify({ apiVersion: 'v1', kind: 'Config', clusters: [{ name: 'x', cluster: { server: 'http://127.0.0.1:1', 'insecure-skip-tls-verify': true } }], users: [{ name: 'u', user: {} }], contexts: [{ name: 'x', context: { cluster: 'x', user: 'u' } }], 'current-context': 'x' }));
  const r = await runCommands((io) => [checkCommand(io)], ['check', '--pre', '--kubeconfig', kubeconfig]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^weftctl check --pre: GET \/api\/v1\/nodes: cannot reach the API server http:\/\/127\.0\.0\.1:1: /);
});
