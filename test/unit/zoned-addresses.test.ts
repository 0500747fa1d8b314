// An IPv6 address with a zone (`fe80::1%eth0`, `::1%lo`, RFC 4007 11.2) names an interface of one
// host, not an address another host can reach: the Kubernetes API server refuses one in every
// address field (netutils.ParseIPSloppy: a Pod's podIPs, a Service's clusterIPs, externalIPs and
// load-balancer ingress, an EndpointSlice's addresses, a Node's addresses), and so does Istio's
// AuthorizationPolicy ipBlocks (https://istio.io/latest/docs/reference/config/security/authorization-policy/#Source:
// "single IP (e.g. 203.0.113.4) or CIDR ranges"). net.isIP admits one, and every field Weft checked
// with it took it: a config directory (no API server) or a remote cluster's export carried
// `fd00::10%eth0` into the model, to every agent, whose BPF codec drops the zone, so it aliased
// `fd00::10` past every string comparison (a Service's cluster IP conflict, an address's owner).
// Every check of tenant input goes through one validator (lib/model/address.ts ipProblem).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { Registry } from 'prom-client';
import { validateObject } from '../../lib/model/validate.ts';
import { canonicalIp, ipProblem, isServiceAddress } from '../../lib/model/address.ts';
import { parseClusterExport } from '../../lib/model/federation.ts';
import { isCidr } from '../../lib/policy/keys.ts';
import { compile, emptyInputs } from '../../controller/src/compile.ts';
import { ConfigDirSource } from '../../controller/src/sources/files.ts';
import { validateAgentConfig } from '../../agent/src/state.ts';
import { buildSnapshot, emptyConfig } from '../../waypoint/src/config.ts';
import type { Service } from '../../lib/model/mesh.ts';
import { authz, ns, pod, svc } from './controller-fixtures.ts';
import { startHarness, until } from './controller-harness.ts';

const ZONED = ['fe80::1%eth0', '::1%lo', 'fd00::10%0', 'FE80::1%25eth0'];

test('ipProblem: an address with a zone is none (RFC 4007 11.2), named as written; canonicalIp and isServiceAddress agree with it, none throws', () => {
  for (const z of ZONED) {
    assert.match(ipProblem(z) ?? '', /has a zone/, z);
    assert.ok(ipProblem(z)!.includes(JSON.stringify(z)), 'named as written');
    assert.equal(canonicalIp(z), undefined);
    assert.equal(isServiceAddress(z), false);
    assert.equal(isCidr(z), false);
    assert.equal(isCidr(`${z}/64`), false);
  }
  assert.equal(ipProblem('fe80::1'), undefined);
  assert.equal(ipProblem('10.1.2.3'), undefined);
  assert.equal(ipProblem('10.1.2.3', 6), '"10.1.2.3" is not an IPv6 address');
  assert.equal(ipProblem('nope'), '"nope" is not an IP address');
});

/** Each field family of tenant input that holds an address, as an object with `z` at that field and the path it is named at. */
const FIELDS: Array<[string, (z: string) => unknown, string]> = [
  ['Pod status.podIP', (z) => ({ ...pod('shop', 'a'), status: { podIP: z } }), 'status.podIP'],
  ['Pod status.podIPs', (z) => ({ ...pod('shop', 'a'), status: { podIP: '10.1.0.9', podIPs: [{ ip: '10.1.0.9' }, { ip: z }] } }), 'status.podIPs[1].ip'],
  ['Pod status.hostIP', (z) => ({ ...pod('shop', 'a'), status: { podIP: '10.1.0.9', hostIP: z } }), 'status.hostIP'],
  ['Service spec.clusterIP', (z) => svc('shop', 'web', { app: 'web' }, z), 'spec.clusterIP'],
  ['Service spec.clusterIPs', (z) => { const s = svc('shop', 'web'); (s.spec as Record<string, unknown>).clusterIPs = ['10.96.0.10', z]; return s; }, 'spec.clusterIPs[1]'],
  ['Service spec.externalIPs', (z) => { const s = svc('shop', 'web'); (s.spec as Record<string, unknown>).externalIPs = [z]; return s; }, 'spec.externalIPs[0]'],
  ['Service status.loadBalancer.ingress', (z) => ({ ...svc('shop', 'web'), status: { loadBalancer: { ingress: [{ ip: z }] } } }), 'status.loadBalancer.ingress[0].ip'],
  ['EndpointSlice endpoints[].addresses', (z) => ({ apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: 'web-1', namespace: 'shop', labels: { 'kubernetes.io/service-name': 'web' } }, addressType: 'IPv6', endpoints: [{ addresses: [z] }], ports: [{ port: 8080 }] }), 'endpoints[0].addresses[0]'],
  ['Node status.addresses', (z) => ({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'node-a' }, status: { addresses: [{ type: 'InternalIP', address: z }] } }), 'status.addresses[0].address'],
  ['Waypoint status.addresses', (z) => ({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'shop' }, spec: {}, status: { addresses: [{ type: 'IPAddress', value: z }] } }), 'status.addresses[0].value'],
  ['AuthorizationPolicy ipBlocks', (z) => authz('shop', 'p', { rules: [{ from: [{ source: { ipBlocks: [z] } }] }] }), 'spec.rules[0].from[0].source.ipBlocks[0]'],
  ['AuthorizationPolicy remoteIpBlocks (CIDR)', (z) => authz('shop', 'p', { rules: [{ from: [{ source: { remoteIpBlocks: [`${z}/64`] } }] }] }), 'spec.rules[0].from[0].source.remoteIpBlocks[0]'],
  ['AuthorizationPolicy notIpBlocks', (z) => authz('shop', 'p', { rules: [{ from: [{ source: { notIpBlocks: [z] } }] }] }), 'spec.rules[0].from[0].source.notIpBlocks[0]'],
];

for (const [what, make, path] of FIELDS) {
  test(`validation refuses an IPv6 address with a zone in ${what}, at ${path}; the same address without its zone passes`, () => {
    for (const z of ZONED.slice(0, 2)) {
      const issues = validateObject(make(z));
      assert.ok(issues.some((i) => i.path === path), `${z}: ${JSON.stringify(issues)}`);
    }
    assert.deepEqual(validateObject(make('fe80::1')).filter((i) => i.path === path), []);
  });
}

test('a compile handed zoned addresses past validation throws not and takes none of them: no VIP, endpoint or workload address with a zone reaches the model', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  const s = svc('shop', 'web', { app: 'web' }, 'fd00::10%eth0');
  (s.spec as Record<string, unknown>).clusterIPs = ['fd00::10%eth0'];
  i.services.push(s);
  i.pods.push({ ...pod('shop', 'web-1', { labels: { app: 'web' } }), status: { phase: 'Running', podIP: '10.1.9.9', podIPs: [{ ip: '10.1.9.9' }, { ip: 'fd00::5%eth0' }], hostIP: '192.168.0.1' } } as never);
  i.endpointSlices.push({ apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: 'web-6', namespace: 'shop', labels: { 'kubernetes.io/service-name': 'web' } }, addressType: 'IPv6', endpoints: [{ addresses: ['fd00::5%eth0'] }], ports: [{ port: 8080 }] } as never);
  const res = compile(i);
  const addresses = [...res.model.services.values()].flatMap((x) => [...x.vips, ...x.endpoints.map((e) => e.ip)]);
  assert.deepEqual(addresses.filter((a) => a.includes('%')), []);
  assert.deepEqual([...res.model.workloads.values()].flatMap((w) => [w.ip, w.nodeIp ?? '']).filter((a) => a.includes('%')), []);
  assert.deepEqual(res.model.services.get('shop/web')!.vips, [], 'the zoned cluster IP is no VIP');
});

test('attack: a config directory\'s objects with zoned addresses are each refused at their field, counted and named; the others are served and the compile runs', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-zone-'));
  const registry = new Registry();
  const h = await startHarness(new ConfigDirSource({ dir, debounceMs: 10 }), undefined, { registry });
  try {
    const hostile = FIELDS.filter(([, , path]) => !path.startsWith('status.addresses')).map(([, make]) => make('fe80::1%eth0') as { metadata: { name: string } });
    // Distinct names, so that each is its own object.
    hostile.forEach((o, n) => { o.metadata = { ...o.metadata, name: `${o.metadata.name}-z${n}` }; });
    const good = [ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), pod('shop', 'web', { ip: '10.1.77.7' }), svc('shop', 'web', { app: 'web' }, '10.96.77.7')];
    writeFileSync(join(dir, 'mesh.yaml'), [...good, ...hostile].map((o) => stringify(o)).join('---\n'));
    const a = h.agent('node-a');
    await until('the valid objects are served', () => a.snapshot?.services.some((x: Service) => x.vips.includes('10.96.77.7')) === true && a.snapshot.workloads.some((w) => w.ip === '10.1.77.7'));
    const all = JSON.stringify(a.snapshot!);
    assert.ok(!all.includes('%eth0'), 'no zoned address reached the agent');
    const metrics = await registry.metrics();
    for (const kind of ['Pod', 'Service', 'EndpointSlice', 'AuthorizationPolicy']) {
      assert.match(metrics, new RegExp(`^weft_controller_rejected_objects_total\\{kind="${kind}"\\} [1-9]`, 'm'), kind);
    }
    const refused = h.logs.filter((l) => l.msg.startsWith('invalid object refused'));
    assert.equal(refused.length, hostile.length);
    assert.ok(refused.every((l) => /has a zone \(%eth0\)/.test(JSON.stringify(l.fields.issues))), JSON.stringify(refused.map((l) => l.fields)));
    const statuses = [...h.controller.statuses().values()].filter((st) => !st.ok && st.reason === 'Invalid');
    assert.ok(statuses.some((st) => st.kind === 'AuthorizationPolicy' && /ipBlocks\[0\]/.test(`${st.path ?? ''} ${st.message}`)), JSON.stringify(statuses));
  } finally {
    await h.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('attack: a remote cluster\'s export with a zoned VIP, endpoint, node or gateway address costs only that entry (invalid, the field named) or the export\'s gateway', () => {
  const entry = (vip: string, ip: string, nodeIp: string) => ({
    name: 'x', namespace: 'd', hostname: 'x.d.svc.cluster.local', vips: [vip], ports: [{ name: 'p', port: 80, targetPort: 80, protocol: 'TCP', appProtocol: 'tcp' }],
    endpoints: [{ workloadUid: '', ip, node: 'n', nodeIp, ports: { '80': 80 }, enrolled: true, spiffeId: 'spiffe://cluster.local/ns/d/sa/x', ready: true }],
  });
  for (const [vip, ip, nodeIp, field] of [
    ['fd00::20%eth0', 'fd00::21', 'fd00::22', 'services[0].vips[0]'],
    ['fd00::20', 'fd00::21%eth0', 'fd00::22', 'services[0].endpoints[0].ip'],
    ['fd00::20', 'fd00::21', 'fd00::22%lo', 'services[0].endpoints[0].nodeIp'],
  ] as const) {
    const exp = parseClusterExport({ cluster: 'c2', network: 'n1', services: [entry(vip, ip, nodeIp), { ...entry('fd00::30', 'fd00::31', 'fd00::22'), name: 'ok', hostname: 'ok.d.svc.cluster.local' }] });
    assert.match(exp.services[0]!.invalid ?? '', new RegExp(`${field.replace(/[[\]]/g, '\\$&')}: .*has a zone`), field);
    assert.equal(exp.services[1]!.invalid, undefined, 'the other entry is imported');
  }
  assert.throws(() => parseClusterExport({ cluster: 'c2', network: 'n2', gateway: { network: 'n2', address: 'fd00::1%eth0', port: 15008, spiffeId: 'spiffe://cluster.local/ns/weft-system/sa/weft-eastwest' }, services: [] }), /gateway\.address: .*has a zone/);
});

test('an agent or a waypoint sent a zoned address refuses the config, naming the field, and keeps the last good one', () => {
  const service = (vip: string, ip: string): Service => ({ name: 'web', namespace: 'shop', hostname: 'web.shop.svc.cluster.local', vips: [vip], ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP', appProtocol: 'http' }], endpoints: [{ workloadUid: 'u', ip, node: 'node-a', nodeIp: '192.168.0.1', ports: { '80': 8080 }, enrolled: true, spiffeId: 'spiffe://cluster.local/ns/shop/sa/web', ready: true }] });
  const agent = (s: Service) => validateAgentConfig({ node: 'node-a', workloads: [], services: [s], policies: [], peerAuthentications: [], waypoints: [] });
  assert.throws(() => agent(service('fd00::10%eth0', '10.1.0.1')), /service shop\/web vip: "fd00::10%eth0" .*has a zone/);
  assert.throws(() => agent(service('10.96.0.1', 'fd00::5%eth0')), /service shop\/web endpoint: "fd00::5%eth0" .*has a zone/);
  agent(service('10.96.0.1', '10.1.0.1'));
  // A waypoint leaves out the Service whose address does not parse, naming the field; the others serve.
  const snap = buildSnapshot({ ...emptyConfig('shop'), services: [service('fd00::10%eth0', '10.1.0.1'), { ...service('10.96.0.2', '10.1.0.2'), name: 'api', hostname: 'api.shop.svc.cluster.local' }] }, 1);
  assert.deepEqual([...snap.services.keys()], ['shop/api']);
  assert.ok(snap.issues.some((i) => i.object === 'shop/web' && i.path === 'vips[0]' && /has a zone/.test(i.message)), JSON.stringify(snap.issues));
});
