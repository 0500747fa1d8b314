// What one remote cluster may add to this cluster's config (each imported Service becomes VIPs and
// endpoints in every agent's config), attacker side: a per-remote import quota cut deterministically
// (a remote past it costs only itself, counted and named), and the other ways an export could
// amplify or take over: many ports, duplicates, cluster-local Services, very many waypoints,
// names Kubernetes would refuse. Istio has no import quota (it trusts a remote secret's cluster
// fully); where it defines a behaviour (cluster-local hosts) the test cites it.
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import assert from 'node:assert/strict';
import { Registry } from 'prom-client';
import { DEFAULT_IMPORT_QUOTA, MAX_EXPORT_BYTES, MAX_SERVICE_PORTS, exportSelection, mergeRemoteServices, parseClusterExport, type ClusterExport } from '../../lib/model/federation.ts';
import type { Endpoint, MeshModel, Service } from '../../lib/model/mesh.ts';
import { emptyMeshModel } from '../../lib/model/mesh.ts';
import { Federation, type FederationOptions } from '../../controller/src/federation.ts';
import { parseControllerArgs, UsageError } from '../../controller/src/main.ts';
import { controllerArgs } from '../../cli/install/controller.ts';
import { resolveInstallOptions } from '../../cli/install/options.ts';
import { InstallOptionError } from '../../cli/install/errors.ts';
import { silentLogger } from '../../lib/log.ts';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { ConfigDirSource } from '../../controller/src/sources/files.ts';
import { ns, svc as serviceObject } from './controller-fixtures.ts';
import { startHarness, until } from './controller-harness.ts';

const TD = 'cluster.local';
const id = (ns: string, sa: string) => `spiffe://${TD}/ns/${ns}/sa/${sa}`;
const ep = (ip: string, extra: Partial<Endpoint> = {}): Endpoint => ({ workloadUid: ip, ip, node: 'node1', nodeIp: '10.78.0.1', ports: { '80': 8080 }, enrolled: true, spiffeId: id('demo', 'echo'), ready: true, ...extra });
const svc = (name: string, endpoints: Endpoint[], extra: Partial<Service> = {}): Service => {
  const namespace = extra.namespace ?? 'demo';
  return { name, namespace, hostname: `${name}.${namespace}.svc.cluster.local`, vips: ['10.96.0.10'], ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP', appProtocol: 'http' }], endpoints, ...extra };
};
const gw = (n: number) => ({ network: `network${n}`, address: `192.168.77.${n}`, port: 15008, spiffeId: id('weft-system', 'weft-eastwest') });
/** The n-th address of a /16 starting at `base` (e.g. 10.97). */
const addr = (base: string, n: number) => `${base}.${(n >> 8) & 255}.${n & 255}`;

function model(services: Service[]): MeshModel {
  return { ...emptyMeshModel(), services: new Map(services.map((s) => [`${s.namespace}/${s.name}`, s])) };
}

/** A federation taking cluster2's and cluster3's exports as pushed (as the remote-secret watches do), with its log lines and metrics. */
function pushed(t: { after(fn: () => unknown): void }, extra: Partial<FederationOptions> = {}) {
  const lines: Array<{ msg: string; fields: Record<string, unknown> }> = [];
  const registry = new Registry();
  const fed = new Federation({
    cluster: 'cluster1', network: 'network1',
    remotes: [2, 3].map((n) => ({ name: `cluster${n}`, url: `https://cluster${n}.example:6443 (Secret weft-system/remote-cluster${n})`, pushed: true })),
    tls: () => ({ key: '', cert: '', ca: [] }), mayRead: () => false, isController: () => false, staleAfterMs: 60_000, registry,
    log: { ...silentLogger, warn: (msg: string, fields?: Record<string, unknown>) => lines.push({ msg, fields: fields ?? {} }) },
    ...extra,
  });
  t.after(() => fed.stop());
  const push = (n: number, services: Service[], more: Partial<ClusterExport> = {}) => fed.report(`cluster${n}`, { export: JSON.stringify({ cluster: `cluster${n}`, network: `network${n}`, gateway: gw(n), services, ...more }) });
  const status = (n: number) => fed.status().find((s) => s.cluster === `cluster${n}`)!;
  return { fed, lines, push, status, metrics: () => registry.metrics() };
}

test('a remote past its import quota costs only itself: the Services that fit in namespace/name order are imported, the rest refused, each counted (reason quota) and named in /debug/federation and the log; the other remote\'s Services all import; the cut import stays through a failed read', async (t) => {
  const { fed, lines, push, status, metrics } = pushed(t, { importQuota: { ...DEFAULT_IMPORT_QUOTA, maxServices: 3, maxEndpoints: 4 } });
  const local = model([svc('echo', [ep('10.77.1.1', { nodeIp: '10.77.0.1' })])]);
  // cluster2: six Services in scrambled order; `a-big` (3 endpoints) would pass the endpoint bound
  // after `a-0` and `a-1`, so it is left out and the next that fits is taken.
  const names = ['e', 'a-1', 'd', 'a-big', 'a-0', 'c'];
  const c2 = names.map((name, i) => svc(name, name === 'a-big' ? [ep('10.78.9.1'), ep('10.78.9.2'), ep('10.78.9.3')] : [ep(addr('10.78', i + 1))], { vips: [addr('10.97', i + 1)] }));
  push(2, c2);
  push(3, [svc('echo', [ep('10.79.1.1', { nodeIp: '10.79.0.1' })]), svc('only-c3', [ep('10.79.1.2', { nodeIp: '10.79.0.1' })], { vips: ['10.98.0.2'] })]);
  const merged = fed.merge(local);
  const from = (c: string) => [...merged.services.values()].filter((s) => s.endpoints.some((e) => e.cluster === c)).map((s) => s.name).sort();
  assert.deepEqual(from('cluster2'), ['a-0', 'a-1', 'c'], 'in namespace/name order: a-0, a-1, (a-big does not fit the endpoints), c; then the Service bound is reached');
  assert.deepEqual(from('cluster3'), ['echo', 'only-c3'], 'the other remote is unaffected');
  assert.deepEqual(merged.services.get('demo/echo')!.endpoints.map((e) => e.ip), ['10.77.1.1', '10.79.1.1'], 'the local Service keeps its endpoints and takes cluster3\'s');
  // Named: each refused Service, why, and the totals.
  const s2 = status(2);
  assert.deepEqual(Object.keys(s2.refusedServices ?? {}).sort(), ['demo/a-big', 'demo/d', 'demo/e']);
  assert.match(s2.refusedServices!['demo/d']!, /^Service demo\/d of cluster cluster2 not imported: past this cluster's import quota of 3 Services, 4 endpoints and 16384 destinations \(VIPs x ports\) per remote cluster \(--remote-max-services, --remote-max-endpoints, --remote-max-destinations\); each of the remote's namespaces is given a fair share of each bound, its Services taken in name order, and it did not fit/);
  assert.equal(s2.quota?.refused, 3);
  assert.match(s2.quota!.message, /^cluster cluster2 exports 6 Services with 8 endpoints and 6 destinations \(VIPs x ports\), past this cluster's import quota of .*; each namespace is given a fair share of each bound, its Services taken in name order, then what is left in namespace\/name order; the 3 that did not fit are not imported: demo\/a-big, demo\/d, demo\/e$/);
  assert.equal(s2.up, true, 'the remote stays up');
  assert.equal(s2.lastError, undefined, 'its read did not fail');
  assert.equal(s2.endpoints, 3, 'what is imported');
  assert.equal(status(3).refusedServices, undefined);
  assert.equal(status(3).quota, undefined);
  // Counted, each Service once per cut.
  assert.match(await metrics(), /^weft_federation_import_refused_total\{cluster="cluster2",reason="quota"\} 3$/m);
  assert.doesNotMatch(await metrics(), /weft_federation_import_refused_total\{cluster="cluster3"/);
  assert.match(await metrics(), /^weft_federation_remote_endpoints\{cluster="cluster2"\} 3$/m);
  const logged = lines.filter((l) => l.fields.reason === 'quota');
  assert.deepEqual(logged.map((l) => [l.fields.cluster, l.fields.service]), [['cluster2', 'demo/a-big'], ['cluster2', 'demo/d'], ['cluster2', 'demo/e']], 'each named in the log');
  // The same export again is not a new refusal, nor is a change of its endpoints that leaves the
  // same Services out (each was counted again at every change of the export's totals).
  push(2, c2);
  fed.merge(local);
  push(2, c2.map((x) => (x.name === 'e' ? { ...x, endpoints: [...x.endpoints, ep('10.78.8.8')] } : x)));
  fed.merge(local);
  assert.equal(status(2).quota?.refused, 3);
  assert.match(await metrics(), /^weft_federation_import_refused_total\{cluster="cluster2",reason="quota"\} 3$/m, 'counted when first refused, once');
  assert.equal(lines.filter((l) => l.fields.reason === 'quota').length, 3, 'and logged once');
  push(2, c2);
  fed.merge(local);
  // A failed read keeps the last import (cut as it was) until the stale bound.
  fed.report('cluster2', { error: 'watch failed' });
  assert.deepEqual([...fed.merge(local).services.keys()].filter((k) => /^demo\/(a-.*|c|d|e)$/.test(k)).sort(), ['demo/a-0', 'demo/a-1', 'demo/c']);
  // Back within the quota: everything imports, nothing is named.
  push(2, c2.slice(0, 3).filter((s) => s.name !== 'a-big'));
  assert.ok(fed.merge(local).services.has('demo/e'));
  assert.equal(status(2).refusedServices, undefined);
  assert.equal(status(2).quota, undefined);
});

// Istio has no import quota; Weft's is per remote, and was cut in namespace/name order, so one
// namespace of a remote (a tenant there) exporting 5,000 small Services took all of the default
// quota and every namespace after it was refused here.
test('attack: one namespace of a remote exporting 5,000 Services cannot take the whole import quota: another namespace\'s Service is still imported, the hostile namespace loses its own (quota, counted and named)', async (t) => {
  const { fed, push, status, metrics } = pushed(t);
  const hostile = Array.from({ length: 5_000 }, (_, i) => svc(`s${String(i).padStart(4, '0')}`, [ep(addr('10.78', i))], { namespace: 'aaa', vips: [addr('10.97', i)] }));
  push(2, [...hostile, svc('echo', [ep('10.78.200.1')], { vips: ['10.98.0.1'] })]);
  const merged = fed.merge(model([]));
  assert.deepEqual(merged.services.get('demo/echo')?.endpoints.map((e) => e.ip), ['10.78.200.1'], 'the other namespace is imported');
  assert.equal([...merged.services.keys()].filter((k) => k.startsWith('aaa/')).length, 4_999);
  assert.deepEqual(Object.keys(status(2).refusedServices ?? {}), ['aaa/s4999'], 'the hostile namespace loses its own last Service');
  assert.equal(status(2).quota?.refused, 1);
  assert.match(await metrics(), /^weft_federation_import_refused_total\{cluster="cluster2",reason="quota"\} 1$/m);
});

test('the default import quota is generous for a real cluster and holds against a remote exporting many more: 5,000 Services of 6,000, the work done only for those', (t) => {
  assert.deepEqual(DEFAULT_IMPORT_QUOTA, { maxServices: 5_000, maxEndpoints: 50_000, maxDestinations: 16_384 });
  const { fed, push, status } = pushed(t);
  const N = 6_000;
  push(2, Array.from({ length: N }, (_, i) => svc(`s-${String(i).padStart(5, '0')}`, [ep(addr('10.78', i))], { vips: [addr('10.97', i)] })));
  const merged = fed.merge(model([]));
  assert.equal(merged.services.size, 5_000);
  assert.ok(merged.services.has('demo/s-04999') && !merged.services.has('demo/s-05000'));
  assert.equal(status(2).quota?.refused, 1_000);
  assert.equal(Object.keys(status(2).refusedServices!).length, 100, 'the first 100 named one by one, all counted in the message');
  assert.match(status(2).quota!.message, /the 1000 that did not fit are not imported: demo\/s-05000, .*, and 992 more$/);
});

// The Service and endpoint bounds left VIPs x ports unbounded: 5,000 Services of 8 VIPs x 100 ports
// (one endpoint each, within both) were 4M destinations from one remote, built as objects by every
// agent at every push and encoded for weft_dests past its 65,536 entries.
test('attack: a remote exporting 5,000 Services of 8 VIPs x 100 ports imports only the destinations (VIPs x ports) its quota allows (16,384 by default, --remote-max-destinations), the rest refused (quota), counted and named', async (t) => {
  assert.equal(DEFAULT_IMPORT_QUOTA.maxDestinations, 16_384);
  const { fed, push, status, metrics } = pushed(t);
  const ports = Array.from({ length: 100 }, (_, i) => ({ name: `p${i}`, port: i + 1, targetPort: i + 1, protocol: 'TCP' as const, appProtocol: 'tcp' as const }));
  const N = 5_000;
  push(2, Array.from({ length: N }, (_, i) => svc(`s-${String(i).padStart(5, '0')}`, [ep(addr('10.78', i), { ports: { '1': 1 } })], { ports, vips: Array.from({ length: 8 }, (_, j) => `10.${100 + j}.${(i >> 8) & 255}.${i & 255}`) })));
  const merged = fed.merge(model([]));
  const destinations = [...merged.services.values()].reduce((n, x) => n + x.vips.length * x.ports.length, 0);
  assert.equal(merged.services.size, 20, 'the first 20 in namespace/name order (20 x 800 = 16,000)');
  assert.ok(destinations <= DEFAULT_IMPORT_QUOTA.maxDestinations, `${destinations} destinations imported`);
  const s2 = status(2);
  assert.equal(s2.quota?.refused, N - 20);
  assert.match(s2.quota!.message, /exports 5000 Services with 5000 endpoints and 4000000 destinations \(VIPs x ports\), past this cluster's import quota of 5000 Services, 50000 endpoints and 16384 destinations \(VIPs x ports\) per remote cluster \(--remote-max-services, --remote-max-endpoints, --remote-max-destinations\)/);
  assert.match(s2.refusedServices!['demo/s-00020']!, /not imported: past this cluster's import quota of .* 16384 destinations/);
  assert.match(await metrics(), /^weft_federation_import_refused_total\{cluster="cluster2",reason="quota"\} 100$/m, 'the first 100 named are counted, each once');
});

// A polled remote is read every second: its export was parsed, sorted and checked whole at every
// read before it was found to be the text already imported.
test('an export read again unchanged is not parsed again: only its read time and health are updated', (t) => {
  const { fed, push, status } = pushed(t);
  const services = Array.from({ length: 50 }, (_, i) => svc(`s${i}`, [ep(addr('10.78', i))], { vips: [addr('10.97', i)] }));
  push(2, services);
  fed.report('cluster2', { error: 'watch failed' });
  assert.equal(status(2).lastError, 'watch failed');
  const parse = t.mock.method(JSON, 'parse');
  let changes = 0;
  fed.onChange(() => changes++);
  push(2, services);
  assert.equal(parse.mock.callCount(), 0, 'the same text is not parsed again');
  assert.equal(changes, 0, 'nor is anything republished');
  assert.deepEqual([status(2).up, status(2).lastError, status(2).endpoints], [true, undefined, 50], 'the remote is read, healthy again');
  push(2, services.slice(1));
  assert.ok(parse.mock.callCount() > 0, 'a changed export is');
  assert.equal(changes, 1);
});

// Every VIP and port of an imported Service is a destination in every agent's weft_dests (65,536
// entries in all, WEFT_MAX_DESTS), and Kubernetes' EndpointSlices carry at most 100 ports.
test('a remote Service with more than 100 ports, or an endpoint mapping more, is refused (invalid, the field path named) and costs only itself: one Service of 8 VIPs x 10,000 ports would have filled every agent\'s destination map', async (t) => {
  const { fed, push, status, metrics } = pushed(t);
  const many = Array.from({ length: 10_000 }, (_, i) => ({ name: `p${i}`, port: i + 1, targetPort: i + 1, protocol: 'TCP' as const, appProtocol: 'tcp' as const }));
  const vips = Array.from({ length: 8 }, (_, i) => `10.97.1.${i + 1}`);
  push(2, [
    svc('many-ports', [ep('10.78.1.1')], { vips, ports: many }),
    svc('many-endpoint-ports', [ep('10.78.1.2', { ports: Object.fromEntries(many.map((p) => [String(p.port), p.port])) })], { vips: ['10.97.2.1'] }),
    svc('fine', [ep('10.78.1.3')], { vips: ['10.97.3.1'], ports: many.slice(0, MAX_SERVICE_PORTS) }),
  ]);
  const merged = fed.merge(model([]));
  assert.deepEqual([...merged.services.keys()], ['demo/fine']);
  assert.equal(merged.services.get('demo/fine')!.ports.length, 100, 'a Service of 100 ports is imported');
  const refused = status(2).refusedServices!;
  assert.match(refused['demo/many-ports']!, /services\[0\]\.ports: has 10000 ports, more than the 100 a Service may have here/);
  assert.match(refused['demo/many-endpoint-ports']!, /services\[1\]\.endpoints\[0\]\.ports: maps more than the 100 ports/);
  assert.match(await metrics(), /^weft_federation_import_refused_total\{cluster="cluster2",reason="invalid"\} 2$/m);
});

// Istio: the hosts of kube-system and kubernetes.default.svc are cluster-local by default
// (pilot/pkg/model cluster_local.go defaultClusterLocalNamespaces / defaultClusterLocalServices;
// https://istio.io/latest/docs/ops/configuration/traffic-management/multicluster/ "Keeping traffic
// in-cluster"): a remote must not add endpoints to this cluster's DNS or API server.
test('a remote cannot add endpoints to this cluster\'s kube-system Services or default/kubernetes (Istio\'s default cluster-local hosts): refused (cluster-local), counted and named; the local Services are untouched; they are not exported', async (t) => {
  const { fed, lines, push, status, metrics } = pushed(t);
  const dns = svc('kube-dns', [ep('10.77.0.53', { enrolled: false, spiffeId: undefined })], { namespace: 'kube-system', vips: ['10.96.0.53'] });
  const api = svc('kubernetes', [ep('10.77.0.2', { enrolled: false, spiffeId: undefined, nodeIp: '10.77.0.2' })], { namespace: 'default', vips: ['10.96.0.1'] });
  const local = model([dns, api, svc('echo', [ep('10.77.1.1')])]);
  push(2, [
    svc('kube-dns', [ep('10.78.6.6')], { namespace: 'kube-system', vips: ['10.97.0.53'] }),
    svc('kubernetes', [ep('10.78.6.7')], { namespace: 'default', vips: ['10.97.0.1'] }),
    svc('metrics-server', [ep('10.78.6.8')], { namespace: 'kube-system', vips: ['10.97.0.54'] }),
    svc('echo', [ep('10.78.1.1')]),
  ]);
  const merged = fed.merge(local);
  assert.deepEqual(merged.services.get('kube-system/kube-dns'), dns);
  assert.deepEqual(merged.services.get('default/kubernetes'), api);
  assert.equal(merged.services.has('kube-system/metrics-server'), false);
  assert.equal(merged.services.get('demo/echo')!.endpoints.length, 2, 'the rest of the export is imported');
  const refused = status(2).refusedServices!;
  assert.deepEqual(Object.keys(refused).sort(), ['default/kubernetes', 'kube-system/kube-dns', 'kube-system/metrics-server']);
  assert.match(refused['kube-system/kube-dns']!, /not imported: it is cluster-local/);
  assert.match(await metrics(), /^weft_federation_import_refused_total\{cluster="cluster2",reason="cluster-local"\} 3$/m);
  assert.ok(lines.some((l) => l.fields.service === 'default/kubernetes' && l.fields.reason === 'cluster-local'));
  // This cluster does not export them either (its gateway then admits no kube-system pod).
  assert.deepEqual(exportSelection(local.services.values(), []).services.map((s) => s.name), ['echo']);
  assert.deepEqual(fed.export().services.map((s) => s.name), ['echo']);
});

test('a remote cannot list a Service or an endpoint twice to take a larger share of a Service\'s traffic: a repeated endpoint address is left out (endpoints, named), the second entry of a Service refused (invalid, both places named)', async (t) => {
  const { fed, push, status, metrics } = pushed(t);
  const local = model([svc('echo', [ep('10.77.1.1', { nodeIp: '10.77.0.1' })])]);
  push(2, [svc('echo', [ep('10.78.1.1'), ep('10.78.1.1'), ep('10.78.1.1'), ep('10.78.1.2')])]);
  const echo = fed.merge(local).services.get('demo/echo')!;
  assert.deepEqual(echo.endpoints.map((e) => `${e.ip}@${e.cluster ?? 'here'}`), ['10.77.1.1@here', '10.78.1.1@cluster2', '10.78.1.2@cluster2']);
  assert.match(status(2).refusedServices!['demo/echo']!, /2 of its 4 endpoints not imported: 10\.78\.1\.1: listed more than once; 10\.78\.1\.1: listed more than once$/);
  assert.match(await metrics(), /^weft_federation_import_refused_total\{cluster="cluster2",reason="endpoints"\} 1$/m);
  // The same Service twice: the first entry is imported, the second adds nothing.
  push(3, [svc('echo', [ep('10.79.1.1', { nodeIp: '10.79.0.1' })]), svc('echo', [ep('10.79.1.1', { nodeIp: '10.79.0.1' }), ep('10.79.1.2', { nodeIp: '10.79.0.1' })])]);
  assert.deepEqual(fed.merge(local).services.get('demo/echo')!.endpoints.map((e) => `${e.ip}@${e.cluster ?? 'here'}`), ['10.77.1.1@here', '10.78.1.1@cluster2', '10.78.1.2@cluster2', '10.79.1.1@cluster3']);
  assert.match(status(3).refusedServices!['demo/echo']!, /not imported: its entry is malformed \(federation export: services\[1\]: demo\/echo is listed already \(services\[0\]\)\)$/);
  assert.match(await metrics(), /^weft_federation_import_refused_total\{cluster="cluster3",reason="invalid"\} 1$/m);
});

test('a remote Service or namespace name Kubernetes would refuse (too long, a slash) costs only that entry (invalid, the field named)', () => {
  const long = 'a'.repeat(200);
  const parsed = parseClusterExport(JSON.parse(JSON.stringify({
    cluster: 'cluster2', network: 'network2', services: [
      svc(long, [ep('10.78.1.1')], { vips: ['10.97.0.1'] }),
      { ...svc('x', [ep('10.78.1.2')], { vips: ['10.97.0.2'] }), namespace: 'demo/echo', hostname: 'x.demo/echo.svc.cluster.local' },
      svc('fine', [ep('10.78.1.3')], { vips: ['10.97.0.3'] }),
    ],
  })));
  assert.match(parsed.services[0]!.invalid ?? '', /services\[0\]\.name: "a{80}" is not a Kubernetes name/);
  assert.match(parsed.services[1]!.invalid ?? '', /services\[1\]\.namespace: "demo\/echo" is not a Kubernetes namespace/);
  assert.equal(parsed.services[2]!.invalid, undefined);
  const { services } = mergeRemoteServices({ services: [] }, { network: 'network2' }, [parsed]);
  assert.deepEqual([...services.keys()], ['demo/fine']);
});

// A remote's waypoints were looked up by a scan of its list for each Service behind one, at every
// compile: 5,000 Services and 20,000 waypoints took 2.3 s of the controller's one thread.
test('an importer keeps of a remote\'s waypoints only those its imported Services go through (the first entry of each name), and looks each up by name', () => {
  const W = 20_000;
  const waypoints = Array.from({ length: W }, (_, i) => ({ name: `w${i}`, namespace: 'demo', address: addr('10.90', i), port: 15008, spiffeId: id('demo', 'w'), ready: true }));
  const services = Array.from({ length: 50 }, (_, i) => svc(`s${i}`, [], { vips: [addr('10.97', i)], waypoint: { name: `w${W - 1 - (i % 2)}`, namespace: 'demo' } }));
  const text = JSON.stringify({ cluster: 'cluster2', network: 'network2', gateway: gw(2), services, waypoints: [...waypoints, { ...waypoints[W - 1]!, address: '10.91.0.1' }] });
  const parsed = parseClusterExport(JSON.parse(text), { quota: DEFAULT_IMPORT_QUOTA });
  assert.equal(parsed.waypoints!.length, 2, 'the two its Services name');
  assert.deepEqual(parsed.waypoints!.map((w) => [w.name, w.address]), [[`w${W - 2}`, addr('10.90', W - 2)], [`w${W - 1}`, addr('10.90', W - 1)]]);
  const { services: merged, waypoints: imported } = mergeRemoteServices({ services: [] }, { network: 'network1' }, [parsed]);
  assert.equal(merged.size, 50);
  assert.deepEqual([...imported.keys()].sort(), [`cluster2/demo/w${W - 2}`, `cluster2/demo/w${W - 1}`]);
  // Without a quota (a cluster's own gateway reading its controller's export) every entry is kept.
  assert.equal(parseClusterExport(JSON.parse(text)).waypoints!.length, W + 1);
});

test('the import quota is set by the controller\'s flags and the install options beside the other multi-cluster ones', () => {
  assert.deepEqual(
    [parseControllerArgs(['--kube', '--remote-max-services', '200', '--remote-max-endpoints', '3000']).remoteMaxServices, parseControllerArgs(['--kube', '--remote-max-endpoints', '3000']).remoteMaxEndpoints, parseControllerArgs(['--kube', '--remote-max-destinations', '4000']).remoteMaxDestinations],
    [200, 3000, 4000],
  );
  for (const bad of ['0', '1.5', 'many', '1e3']) assert.throws(() => parseControllerArgs(['--kube', '--remote-max-services', bad]), (e: Error) => e instanceof UsageError && /--remote-max-services: .* is not a whole number of Services from 1 up/.test(e.message));
  const OK = { image: 'ghcr.io/acme/weft:0.1.0', trustDomain: 'cluster.local', clusterId: 'c1' };
  const parsed = parseControllerArgs(controllerArgs(resolveInstallOptions({ ...OK, remoteMaxServices: 200, remoteMaxEndpoints: 3000, remoteMaxDestinations: 4000 })));
  assert.deepEqual([parsed.remoteMaxServices, parsed.remoteMaxEndpoints, parsed.remoteMaxDestinations, parsed.remoteSecrets], [200, 3000, 4000, true]);
  const defaults = parseControllerArgs(controllerArgs(resolveInstallOptions(OK)));
  assert.deepEqual([defaults.remoteMaxServices, defaults.remoteMaxEndpoints, defaults.remoteMaxDestinations], [undefined, undefined, undefined], 'the controller\'s defaults');
  assert.throws(() => resolveInstallOptions({ ...OK, remoteMaxServices: 0 }), (e: Error) => e instanceof InstallOptionError && /--remote-max-services 0 is not a whole number/.test(e.message));
  assert.throws(() => resolveInstallOptions({ image: OK.image, trustDomain: OK.trustDomain, remoteMaxEndpoints: 10 }), (e: Error) => e instanceof InstallOptionError && /--remote-max-endpoints is for a multi-cluster mesh/.test(e.message));
});

// A port record keyed by port numbers is an array in V8 as long as its largest port below 1024:
// 50,000 endpoints of {"1000": …} each held 2.5 KB (150 MB for one remote within its quota), where
// the compile shares one record per mapping (compileService).
test('a remote\'s endpoints that map their ports alike share one port record, as the compile\'s do', () => {
  const eps = Array.from({ length: 2_000 }, (_, i) => ep(addr('10.78', i), { ports: { '1000': 8080 } }));
  const parsed = parseClusterExport(JSON.parse(JSON.stringify({ cluster: 'cluster2', network: 'network2', gateway: gw(2), services: [svc('big', eps, { vips: ['10.97.0.1'], ports: [{ name: 'p', port: 1000, targetPort: 8080, protocol: 'TCP', appProtocol: 'tcp' }] }), svc('other', [ep('10.78.99.1', { ports: { '1000': 8080 } }), ep('10.78.99.2', { ports: { '1000': 9090 } })], { vips: ['10.97.0.2'] })] })), { quota: DEFAULT_IMPORT_QUOTA });
  const records = new Set(parsed.services.flatMap((s) => s.endpoints.map((e) => e.ports)));
  assert.equal(records.size, 2, 'one record per mapping');
  assert.deepEqual([...records], [{ '1000': 8080 }, { '1000': 9090 }]);
  const merged = mergeRemoteServices({ services: [] }, { network: 'network1' }, [parsed]).services.get('demo/big')!;
  assert.equal(merged.endpoints[0]!.ports, merged.endpoints[1_999]!.ports, 'still shared once imported');
});

// Sharing covers mappings alike; a remote whose 50,000 endpoints (within its quota) each map a port
// differently ({"1000": i}) had each record filled key by key, an array in V8 as long as its port
// (12 KB each): 145 MB of the controller's heap for one remote's export (about 21 MB now, what
// endpoints of port 8080 cost).
test('attack: 50,000 remote endpoints with distinct port mappings ({"1000": i}) cost the importer about what endpoints of one shared mapping do', () => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const exportOf = (ports: (i: number) => Record<string, number>) => JSON.stringify({
    cluster: 'cluster2', network: 'network2', gateway: gw(2),
    services: Array.from({ length: 10 }, (_, k) => svc(`s${k}`, Array.from({ length: 5_000 }, (_, j) => ep(addr('10.78', k * 5_000 + j), { ports: ports(k * 5_000 + j) })), { vips: [addr('10.97', k)], ports: [{ name: 'p', port: 1000, targetPort: 8080, protocol: 'TCP', appProtocol: 'tcp' }] })),
  });
  const heldBy = (text: string) => {
    gc();
    const before = process.memoryUsage().heapUsed;
    const parsed = parseClusterExport(JSON.parse(text), { quota: DEFAULT_IMPORT_QUOTA });
    gc();
    const held = process.memoryUsage().heapUsed - before;
    assert.equal(parsed.services.reduce((n, x) => n + x.endpoints.length, 0), 50_000);
    return held;
  };
  const distinct = heldBy(exportOf((i) => ({ '1000': (i % 60_000) + 1 })));
  const alike = heldBy(exportOf(() => ({ '8080': 8080 })));
  assert.ok(distinct < 2 * alike + 10e6, `distinct mappings held ${(distinct / 1e6).toFixed(1)} MB, shared ones ${(alike / 1e6).toFixed(1)} MB`);
});

// Kubernetes bounds neither a Service's ports (kubernetes/kubernetes#99382) nor a namespace's
// Services, and every importer refuses a Service of more than 100 ports whole. This cluster still
// exported them, and its readers (remote controllers, its own east-west gateway) take an export of
// at most 16 MiB: five Services of 40,000 ports of one tenant (about 1 MB each in etcd) made the
// export 20 MB, every read of it failed, and after the stale bound every other tenant's Service
// was gone from the other clusters.
test('a Service no importer takes (more than 100 ports) is left out of this cluster\'s export, counted and logged once, so one tenant\'s Services cannot push the export past its readers\' bound', async (t) => {
  const { fed, lines, metrics } = pushed(t);
  const many = Array.from({ length: 40_000 }, (_, i) => ({ name: `p${i}`, port: i + 1, targetPort: i + 1, protocol: 'TCP' as const, appProtocol: 'tcp' as const }));
  const hogs = Array.from({ length: 5 }, (_, i) => svc(`hog${i}`, [], { namespace: 'aaa', vips: [addr('10.96', 100 + i)], ports: many }));
  const local = model([...hogs, svc('echo', [ep('10.77.1.1', { nodeIp: '10.77.0.1' })])]);
  fed.merge(local);
  fed.merge(local);
  const text = JSON.stringify(fed.export());
  assert.ok(text.length <= MAX_EXPORT_BYTES, `the export is ${text.length} bytes, past the readers' ${MAX_EXPORT_BYTES}`);
  assert.deepEqual(fed.export().services.map((s) => `${s.namespace}/${s.name}`), ['demo/echo']);
  assert.match(await metrics(), /^weft_federation_export_refused_total\{reason="invalid"\} 5$/m);
  const logged = lines.filter((l) => /not exported/.test(l.msg));
  assert.deepEqual(logged.map((l) => l.fields.service).sort(), ['aaa/hog0', 'aaa/hog1', 'aaa/hog2', 'aaa/hog3', 'aaa/hog4']);
  assert.match(String(logged[0]!.fields.error), /has 40000 ports, more than the 100 a Service may have/);
});

// The export's readers (remote controllers, this cluster's east-west gateway: lib/federation-read.ts)
// take at most MAX_EXPORT_BYTES, and Kubernetes bounds neither a namespace's Services nor their
// endpoints: one tenant's 2,000 Services of 100 ports (each importer takes them) made the export
// 17 MB, every read of it failed, and after the stale bound every namespace's Services were gone
// from every other cluster. Istio has no such bound to match (istiod reads a remote's API server);
// each namespace now has a fair share of the export's bytes.
test('attack: one namespace\'s Services past the export\'s 16 MiB cost only that namespace: its largest are left out (counted namespace-share, logged, named at metadata.namespace), the export stays readable, and the other namespaces\' Services, a large one included, are still imported on the other side', async (t) => {
  const exporter = pushed(t, { cluster: 'cluster2' });
  const importer = pushed(t);
  const ports = Array.from({ length: MAX_SERVICE_PORTS }, (_, i) => ({ name: `port-${i}`, port: 1000 + i, targetPort: 1000 + i, protocol: 'TCP' as const, appProtocol: 'tcp' as const }));
  const hogs = Array.from({ length: 2_000 }, (_, i) => svc(`hog${i}`, [ep(addr('10.70', i), { workloadUid: `hog-${i}` })], { namespace: 'aaa', vips: [addr('10.96', 1_000 + i)], ports }));
  // Another tenant's large Service (10,000 endpoints, about 3 MB), within its share: kept whole.
  const big = svc('big', Array.from({ length: 10_000 }, (_, i) => ep(addr('10.71', i))), { namespace: 'big', vips: ['10.96.0.20'] });
  const echo = svc('echo', [ep('10.77.1.1', { nodeIp: '10.77.0.1' })]);
  const local = model([...hogs, big, echo]);
  exporter.fed.merge(local);
  exporter.fed.merge(local);
  const text = JSON.stringify(exporter.fed.export());
  assert.ok(Buffer.byteLength(text) <= MAX_EXPORT_BYTES, `the export is ${Buffer.byteLength(text)} bytes, past the readers' ${MAX_EXPORT_BYTES}`);
  const exported = new Set(exporter.fed.export().services.map((s) => `${s.namespace}/${s.name}`));
  assert.ok(exported.has('demo/echo') && exported.has('big/big'), 'the other namespaces are exported whole');
  // What is left out is the hostile namespace's own, counted once each, logged and named.
  const left = exporter.fed.leftOut();
  assert.ok(left.length > 0 && left.every((x) => x.namespace === 'aaa' && x.reason === 'namespace-share' && x.path === 'metadata.namespace'));
  assert.equal(left.length + [...exported].filter((k) => k.startsWith('aaa/')).length, 2_000);
  assert.match(left[0]!.message, /namespace aaa's Services and waypoints are past its share of the export's bytes/);
  // The sizes, which move with every pod, are beside the message (/debug/federation), not in it.
  assert.ok(left[0]!.bytes && left[0]!.bytes.namespace > left[0]!.bytes.share && left[0]!.bytes.entry > 0, JSON.stringify(left[0]!.bytes));
  for (const n of Object.values(left[0]!.bytes!)) assert.ok(!left[0]!.message.includes(String(n)), `${n} in ${left[0]!.message}`);
  assert.match(await exporter.metrics(), new RegExp(`^weft_federation_export_refused_total\\{reason="namespace-share"\\} ${left.length}$`, 'm'));
  assert.ok(exporter.lines.some((l) => /not exported/.test(l.msg) && l.fields.reason === 'namespace-share' && String(l.fields.service).startsWith('aaa/')));
  // Pods churn and the shares move: the namespace's bytes change, and what was left out stays left
  // out for the same reason. It is not counted, logged or rewritten again (it was: the message named
  // the sizes, and a changed message was a new refusal).
  const logged = exporter.lines.filter((l) => /not exported/.test(l.msg)).length;
  const churned = model([...local.services.values()].map((s) => (s.namespace === 'aaa' ? { ...s, endpoints: [...s.endpoints, ep('10.72.0.1', { workloadUid: 'new' })] } : s)));
  exporter.fed.merge(churned);
  const again = exporter.fed.leftOut().filter((x) => x.namespace === 'aaa');
  assert.ok(again.length >= left.length && again.some((x) => x.bytes!.namespace !== left[0]!.bytes!.namespace), 'the sizes moved');
  const grew = again.length - left.filter((x) => again.some((y) => y.name === x.name)).length;
  assert.match(await exporter.metrics(), new RegExp(`^weft_federation_export_refused_total\\{reason="namespace-share"\\} ${left.length + grew}$`, 'm'), 'only entries newly left out are counted');
  const before = new Set(left.map((x) => `aaa/${x.name}`));
  assert.deepEqual(exporter.lines.filter((l) => /not exported/.test(l.msg)).slice(logged).filter((l) => before.has(String(l.fields.service))), [], 'only entries newly left out are logged');
  assert.deepEqual(new Set(again.map((x) => x.message)).size, 1, 'one stable message for the namespace');
  // An agent of the cluster judges its gateway port by the same selection from its own copy of the
  // model, which has other clusters' endpoints merged in and their Services beside.
  const asAnAgentHasThem = [...local.services.values()].map((s) => ({ ...s, endpoints: [...s.endpoints, ep('10.79.0.1', { cluster: 'cluster3' })] }));
  asAnAgentHasThem.push(svc('remote-only', [ep('10.79.0.2', { cluster: 'cluster3' })], { namespace: 'zzz', vips: ['10.99.0.1'], cluster: 'cluster3' }));
  assert.deepEqual(exportSelection(asAnAgentHasThem, local.waypoints.values()).services.map((s) => `${s.namespace}/${s.name}`).sort(), [...exported].sort());
  // The importing side reads it and imports the other namespaces' Services.
  importer.fed.report('cluster2', { export: text });
  const merged = importer.fed.merge(model([]));
  assert.equal(importer.status(2).lastError, undefined);
  assert.deepEqual(merged.services.get('demo/echo')?.endpoints.map((e) => e.ip), ['10.77.1.1']);
  assert.equal(merged.services.get('big/big')?.endpoints.length, 10_000);
});

// One LogBudget a kind of refusal: a remote writes its export, and with it as many import refusals
// as it likes; they must not silence this cluster's own export refusals (its operator's to fix).
test('export refusals are logged on their own budget: a remote\'s import refusals past the import log budget do not silence this cluster\'s Service left out of its export (counted and logged, named)', async (t) => {
  const { fed, lines, push, metrics } = pushed(t);
  // 200 refused imports (cluster-local), past the 50 lines a second of the import log.
  push(2, Array.from({ length: 200 }, (_, i) => svc(`k${i}`, [ep(addr('10.78', i))], { namespace: 'kube-system', vips: [addr('10.97', i)] })));
  const many = Array.from({ length: 101 }, (_, i) => ({ name: `p${i}`, port: i + 1, targetPort: i + 1, protocol: 'TCP' as const, appProtocol: 'tcp' as const }));
  const echo = svc('echo', [ep('10.77.1.1', { nodeIp: '10.77.0.1' })]);
  fed.merge(model([echo]));
  // Then, within the same second, a Service of this cluster's no importer takes.
  fed.merge(model([svc('hog', [], { namespace: 'zzz', vips: ['10.96.9.9'], ports: many }), echo]));
  assert.match(await metrics(), /^weft_federation_import_refused_total\{cluster="cluster2",reason="cluster-local"\} 200$/m);
  assert.match(await metrics(), /^weft_federation_export_refused_total\{reason="invalid"\} 1$/m);
  const logged = lines.filter((l) => /not exported/.test(l.msg));
  assert.deepEqual(logged.map((l) => l.fields.service), ['zzz/hog']);
});

test('a remote Service whose vips is not a list is refused with its own message, naming the field (not a count it never had); one of more than 8 VIPs names the bound', async (t) => {
  const { fed, push, status } = pushed(t);
  push(2, [svc('not-a-list', [ep('10.78.1.1')], { vips: '10.97.0.1' as never }), svc('nine', [ep('10.78.1.2')], { vips: Array.from({ length: 9 }, (_, i) => `10.97.1.${i + 1}`) }), svc('fine', [ep('10.78.1.3')], { vips: ['10.97.2.1'] })]);
  assert.deepEqual([...fed.merge(model([])).services.keys()], ['demo/fine']);
  const refused = status(2).refusedServices!;
  assert.match(refused['demo/not-a-list']!, /services\[0\]\.vips: must be a list of IP addresses\)$/);
  assert.match(refused['demo/nine']!, /services\[1\]\.vips: must be a list of at most 8 addresses/);
});

test('a Service left out of this cluster\'s export is a finding of that Service, at its field (NotExported, weft_controller_findings)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-export-'));
  const registry = new Registry();
  const fed = new Federation({ cluster: 'cluster1', network: 'network1', remotes: [], tls: () => ({ key: '', cert: '', ca: [] }), mayRead: () => false, isController: () => false, log: silentLogger });
  const h = await startHarness(new ConfigDirSource({ dir, debounceMs: 10 }), undefined, { registry, federation: fed });
  t.after(async () => {
    await h.close();
    await fed.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const wide = serviceObject('shop', 'wide');
  wide.spec.ports = Array.from({ length: MAX_SERVICE_PORTS + 1 }, (_, i) => ({ name: `p${i}`, port: 1000 + i }));
  writeFileSync(join(dir, 'mesh.yaml'), [ns('shop'), wide, serviceObject('shop', 'web', { app: 'web' }, '10.96.0.11')].map((o) => stringify(o)).join('---\n'));
  await until('the finding is counted', async () => /^weft_controller_findings\{kind="Service",reason="NotExported"\} 1$/m.test(await registry.metrics()));
  assert.deepEqual(fed.leftOut().map((x) => [x.namespace, x.name, x.path, x.reason]), [['shop', 'wide', 'spec.ports', 'invalid']]);
  assert.deepEqual(fed.export().services.map((s) => s.name), ['web']);
});
