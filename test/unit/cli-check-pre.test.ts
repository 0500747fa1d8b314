// weftctl check --pre against a cluster: node kernels and OS and the Gateway API / Weft CRDs, read
// from the API alone (no clang or bpftool on the user's machine).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { checkCommand } from '../../cli/commands/check.ts';
import { FakeApiServer } from '../lab/fake-apiserver.ts';
import { runCommands } from './cli-harness.ts';

const dir = mkdtempSync(join(tmpdir(), 'weft-cli-pre-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const node = (name: string, kernelVersion: string, operatingSystem = 'linux') => ({ apiVersion: 'v1', kind: 'Node', metadata: { name }, status: { nodeInfo: { kernelVersion, operatingSystem, osImage: 'Debian GNU/Linux 12', architecture: 'amd64' } } });
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
    assert.ok(!api.requests.some((q) => q.path.includes('proxy')), 'nothing but the API is read');

    api.apply(crd('grpcroutes.gateway.networking.k8s.io', ['v1']));
    api.remove('Node', undefined, 'win');
    const ok = await run(['-o', 'json']);
    assert.equal(ok.code, 0, ok.stdout);
    assert.equal(JSON.parse(ok.stdout).filter((c: { status: string }) => c.status === 'fail').length, 0);
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
