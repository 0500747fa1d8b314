// One address has many spellings: `FD00::10`, `fd00:0:0::0010` and `fd00::10` are one IPv6 address
// (RFC 4291 2.2; RFC 5952 4 gives its one text form, lower-case and compressed), and
// `::ffff:10.96.0.10` (`::ffff:a60:a`) is the IPv4 address 10.96.0.10 mapped (RFC 4291 2.5.5.2).
// The mesh compares addresses as strings (a Service's cluster IP held twice, a remote VIP in use
// here, an address's owner) while the agent's BPF codec writes every spelling of one to one map
// key: two Services at `fd00::10` and `FD00::10` got one VIP with no Conflicted finding, and a
// remote's `FD00::10` passed the "VIP in use here" check against a local `fd00::10`. Kubernetes
// refuses IPv4-mapped addresses (KEP-4858 StrictIPCIDRValidation,
// https://github.com/kubernetes/enhancements/tree/master/keps/sig-network/4858-ip-cidr-validation)
// and warns of non-canonical IPv6 ("should be in RFC 5952 canonical format"), writing the
// addresses it sets itself canonically. Tenant input must be in the one spelling (ipProblem), the
// refusal naming it, as a zone is refused (zoned-addresses.test.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { Registry } from 'prom-client';
import { isIP } from 'node:net';
import { validateObject } from '../../lib/model/validate.ts';
import { canonicalIp, ipProblem } from '../../lib/model/address.ts';
import { mergeRemoteServices, parseClusterExport } from '../../lib/model/federation.ts';
import { isCidr } from '../../lib/policy/keys.ts';
import { ipInBlocks } from '../../lib/policy/authz.ts';
import { compile, emptyInputs } from '../../controller/src/compile.ts';
import { ConfigDirSource } from '../../controller/src/sources/files.ts';
import { Federation } from '../../controller/src/federation.ts';
import { validateAgentConfig } from '../../agent/src/state.ts';
import { silentLogger } from '../../lib/log.ts';
import type { Service } from '../../lib/model/mesh.ts';
import { ns, pod, svc } from './controller-fixtures.ts';
import { startHarness, until } from './controller-harness.ts';

/** Spellings of an address other than its one, and that one. */
const ALIASES: Array<[string, string]> = [['FD00::10', 'fd00::10'], ['fd00:0:0::0010', 'fd00::10'], ['fd00:0:0:0:0:0:0:10', 'fd00::10'], ['::ffff:a60:a', '10.96.0.10'], ['::ffff:10.96.0.10', '10.96.0.10'], ['::FFFF:10.96.0.10', '10.96.0.10']];

test('ipProblem: an address spelt otherwise than its RFC 5952 form, or IPv4-mapped, is refused naming the spelling to write; canonicalIp still reads every spelling; a policy CIDR, matched by prefix, takes any', () => {
  for (const [alias, one] of ALIASES) {
    const why = ipProblem(alias) ?? '';
    assert.ok(why.includes(JSON.stringify(alias)) && why.endsWith(`write ${one.includes(':') ? '' : 'the IPv4 address '}${one}`), `${alias}: ${why}`);
    assert.equal(canonicalIp(alias), one);
    assert.equal(ipProblem(one), undefined);
  }
  assert.match(ipProblem('::ffff:a60:a')!, /IPv4-mapped IPv6 address \(RFC 4291 2\.5\.5\.2\)/);
  assert.match(ipProblem('FD00::10')!, /not in RFC 5952 canonical form/);
  assert.equal(ipProblem('fd00::10', 6), undefined);
  assert.equal(ipProblem('10.96.0.10', 6), '"10.96.0.10" is not an IPv6 address');
  // Istio's ipBlocks take any spelling netip parses; Weft matches them by prefix, so none aliases.
  assert.equal(isCidr('FD00::/8'), true);
  assert.equal(ipInBlocks(['FD00::/8'], 'fd00::10'), true);
});

// ipProblem decides most IPv6 addresses already in their one spelling without the URL parse (about
// half its cost, at every agent for every address of every config it is sent); what it decides
// must be what the parse gives. The oracle here is the WHATWG serializer itself (RFC 5952 4: lower
// case, no leading zeros, the first longest run of two or more zero groups compressed), an
// IPv4-mapped address never canonical.
test('ipProblem\'s verdict on an IPv6 address is the URL parser\'s spelling of it, for every spelling of addresses with zero groups, runs and ::ffff: (seeded, 20,000 cases)', () => {
  let seed = 42; // mulberry32
  const rand = (n: number) => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) % n;
  };
  const group = () => (rand(4) === 0 ? 0 : [1, 0xffff, 0x10, 0xa, 0xfd00, 0x100, rand(0x10000) || 1][rand(7)]!);
  const write = (g: number) => {
    const hex = g.toString(16).padStart(rand(4) === 0 ? 1 + rand(4) : 0, '0');
    return rand(8) === 0 ? hex.toUpperCase() : hex;
  };
  for (let n = 0; n < 20_000; n++) {
    const groups = Array.from({ length: 8 }, group);
    if (rand(6) === 0) groups.splice(0, 6, 0, 0, 0, 0, 0, 0xffff);
    let text = groups.map(write).join(':');
    // Compress some run of zero groups (any, not only the longest), or none.
    const runs = [...text.matchAll(/(?:^|:)(?:0+:)*0+(?=:|$)/g)];
    if (runs.length > 0 && rand(3) > 0) {
      const r = runs[rand(runs.length)]!;
      text = `${text.slice(0, r.index)}::${text.slice(r.index! + r[0].length).replace(/^:/, '')}`.replace(/^:::/, '::');
    }
    if (isIP(text) !== 6) continue;
    const url = new URL(`http://[${text}]/`).hostname.slice(1, -1);
    const canonical = url === text && !/^::ffff:[0-9a-f]{1,4}:[0-9a-f]{1,4}$/.test(text);
    assert.equal(ipProblem(text) === undefined, canonical, text);
    assert.equal(canonicalIp(text) === text, canonical, text);
  }
});

/** Fields of tenant objects holding an address compared as a string, as [object with `a` there, its path]. */
const FIELDS: Array<[string, (a: string) => unknown, string]> = [
  ['Pod status.podIPs', (a) => ({ ...pod('shop', 'a'), status: { podIP: '10.1.0.9', podIPs: [{ ip: '10.1.0.9' }, { ip: a }] } }), 'status.podIPs[1].ip'],
  ['Service spec.clusterIP', (a) => svc('shop', 'web', { app: 'web' }, a), 'spec.clusterIP'],
  ['EndpointSlice endpoints[].addresses', (a) => ({ apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: 'web-1', namespace: 'shop', labels: { 'kubernetes.io/service-name': 'web' } }, addressType: 'IPv6', endpoints: [{ addresses: [a] }], ports: [{ port: 8080 }] }), 'endpoints[0].addresses[0]'],
  ['Pod status.hostIP', (a) => ({ ...pod('shop', 'a'), status: { podIP: '10.1.0.9', hostIP: a } }), 'status.hostIP'],
];

for (const [what, make, path] of FIELDS) {
  test(`validation refuses an address spelt otherwise than its RFC 5952 form in ${what}, at ${path}, naming the spelling to write; that spelling passes`, () => {
    const issues = validateObject(make('FD00::10'));
    assert.ok(issues.some((i) => i.path === path && /write fd00::10$/.test(i.message)), JSON.stringify(issues));
    assert.deepEqual(validateObject(make('fd00::10')).filter((i) => i.path === path), []);
  });
}

// Fields whose writer is not the tenant, or that Kubernetes takes in any spelling, and that the
// compile compares only in canonicalIp's spelling: a Service's status.loadBalancer.ingress[].ip
// (written by the load-balancer controller; the tenant cannot fix it) and spec.externalIPs (the API
// server only warns, "should be in RFC 5952 canonical format"), a Node's InternalIP and ExternalIP
// (written by the kubelet). Refusing the whole object over their spelling cost a Service or a Node
// nothing made worse: only a zone is refused there (addressProblem, zoned-addresses.test.ts).
const RESPELT: Array<[string, (a: string) => unknown, string]> = [
  ['Service spec.externalIPs', (a) => { const s = svc('shop', 'web'); (s.spec as Record<string, unknown>).externalIPs = [a]; return s; }, 'spec.externalIPs[0]'],
  ['Service status.loadBalancer.ingress', (a) => ({ ...svc('shop', 'web'), status: { loadBalancer: { ingress: [{ ip: a }] } } }), 'status.loadBalancer.ingress[0].ip'],
  ['Node status.addresses (InternalIP)', (a) => ({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'node-a' }, status: { addresses: [{ type: 'InternalIP', address: a }] } }), 'status.addresses[0].address'],
  ['Node status.addresses (ExternalIP)', (a) => ({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'node-a' }, status: { addresses: [{ type: 'ExternalIP', address: a }] } }), 'status.addresses[0].address'],
];

for (const [what, make, path] of RESPELT) {
  test(`validation takes an address in any spelling in ${what} (the compile writes it in its one), refusing only a zone at ${path}`, () => {
    for (const [alias] of ALIASES) assert.deepEqual(validateObject(make(alias)), [], alias);
    assert.ok(validateObject(make('fd00::10%eth0')).some((i) => i.path === path && /has a zone/.test(i.message)));
  });
}

test('a compile compares the re-spelt fields in the one spelling: a Waypoint at a Service\'s load-balancer or external IP, or at a node\'s address, written otherwise there, is left out once with its finding; the node is dialled at its one spelling', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  const lb = svc('shop', 'lb');
  (lb.spec as Record<string, unknown>).externalIPs = ['FD00:0::20'];
  i.services.push({ ...lb, status: { loadBalancer: { ingress: [{ ip: 'FD00::21' }] } } } as never);
  i.nodes.push({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'node-a' }, status: { addresses: [{ type: 'InternalIP', address: 'FD00:0::3' }] } } as never);
  i.pods.push(pod('shop', 'web', { node: 'node-a' }));
  i.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'shop' }, spec: {}, status: { addresses: ['fd00::20', 'fd00::21', 'fd00::3', 'fd00::30'].map((value) => ({ type: 'IPAddress', value })), conditions: [{ type: 'Ready', status: 'True', reason: 'Ready', message: '' }] } } as never);
  for (const o of [...i.services, ...i.nodes]) assert.deepEqual(validateObject(o), [], 'served, not refused');
  const res = compile(i);
  assert.deepEqual(res.findings.map((f) => [f.kind, f.path, f.reason]), [
    ['Waypoint', 'status.addresses[0].value', 'ServiceAddress'],
    ['Waypoint', 'status.addresses[1].value', 'ServiceAddress'],
    ['Waypoint', 'status.addresses[2].value', 'NodeAddress'],
  ]);
  assert.equal(res.model.waypoints.get('shop/wp')!.address, 'fd00::30');
  assert.equal([...res.model.workloads.values()][0]!.nodeIp, 'fd00::3');
});

test('attack: two Services of a config directory whose cluster IPs differ only in spelling (fd00::10, FD00::10) do not share one VIP: the second is refused at spec.clusterIP naming fd00::10, counted and logged once; the first keeps it', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-spelling-'));
  const registry = new Registry();
  const h = await startHarness(new ConfigDirSource({ dir, debounceMs: 10 }), undefined, { registry });
  try {
    const objects = [ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), pod('shop', 'web', { ip: '10.1.77.7' }), svc('shop', 'web', { app: 'web' }, 'fd00::10'), svc('evil', 'steal', { app: 'web' }, 'FD00::10')];
    writeFileSync(join(dir, 'mesh.yaml'), objects.map((o) => stringify(o)).join('---\n'));
    const a = h.agent('node-a');
    await until('the valid Service is served', () => a.snapshot?.services.some((x: Service) => x.name === 'web' && x.vips.includes('fd00::10')) === true);
    assert.deepEqual(a.snapshot!.services.filter((x: Service) => x.vips.some((v) => canonicalIp(v) === 'fd00::10')).map((x) => `${x.namespace}/${x.name}`), ['shop/web'], 'one Service at the address');
    assert.match(await registry.metrics(), /^weft_controller_rejected_objects_total\{kind="Service"\} 1$/m);
    const refused = h.logs.filter((l) => l.msg.startsWith('invalid object refused'));
    assert.equal(refused.length, 1);
    assert.match(JSON.stringify(refused[0]!.fields), /evil.*spec\.clusterIP.*not in RFC 5952 canonical form: write fd00::10/);
  } finally {
    await h.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

// The compile takes a field validation holds to one spelling as written (asValidated), never
// re-spelling it: one handed past validation in another spelling is left out, as every agent would
// refuse the whole config holding it.
test('a compile handed spellings past validation: two Services at fd00::10 and FD00::10 never share a VIP, and an EndpointSlice endpoint in another spelling is none', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  i.services.push(svc('shop', 'web', { app: 'web' }, 'fd00::10'), svc('shop', 'alias', undefined, 'FD00::10'));
  i.endpointSlices.push({ apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: 'alias-1', namespace: 'shop', labels: { 'kubernetes.io/service-name': 'alias' } }, addressType: 'IPv6', endpoints: [{ addresses: ['FD00:0::5'] }], ports: [{ port: 8080 }] } as never);
  const res = compile(i);
  const vips = [...res.model.services.values()].flatMap((s) => s.vips.map((v) => canonicalIp(v)));
  assert.equal(vips.filter((v) => v === 'fd00::10').length, 1, JSON.stringify(vips));
  assert.deepEqual(res.model.services.get('shop/alias')!.endpoints.map((e) => e.ip), []);
});

const entry = (vip: string) => ({
  name: 'x', namespace: 'd', hostname: 'x.d.svc.cluster.local', vips: [vip], ports: [{ name: 'p', port: 80, targetPort: 80, protocol: 'TCP', appProtocol: 'tcp' }],
  endpoints: [{ workloadUid: '', ip: '10.79.1.1', node: 'n', nodeIp: '10.79.0.1', ports: { '80': 80 }, enrolled: true, spiffeId: 'spiffe://cluster.local/ns/d/sa/x', ready: true }],
});

test('attack: a remote\'s VIP spelt otherwise than a local Service\'s (FD00::10 for fd00::10, ::ffff:a60:a for 10.96.0.10) is refused, its field named, counted and logged once; it never reaches the model beside the local one', async () => {
  for (const [alias, one] of [['FD00::10', 'fd00::10'], ['::ffff:a60:a', '10.96.0.10']]) {
    const exp = parseClusterExport({ cluster: 'cluster2', network: 'network1', services: [entry(alias!)] });
    assert.match(exp.services[0]!.invalid ?? '', new RegExp(`services\\[0\\]\\.vips\\[0\\]: .*write (the IPv4 address )?${one!.replace(/\./g, '\\.')}$`));
    const local: Service = { name: 'web', namespace: 'shop', hostname: 'web.shop.svc.cluster.local', vips: [one!], ports: [], endpoints: [] };
    const merged = mergeRemoteServices({ services: [local] }, { network: 'network1' }, [exp]);
    assert.equal(merged.services.has('d/x'), false);
    assert.deepEqual(merged.refused.map((r) => r.reason), ['invalid']);
  }
  const registry = new Registry();
  const lines: Array<{ msg: string; fields: Record<string, unknown> }> = [];
  const fed = new Federation({
    cluster: 'cluster1', network: 'network1', remotes: [{ name: 'cluster2', url: 'https://cluster2.example', pushed: true }],
    tls: () => ({ key: '', cert: '', ca: [] }), mayRead: () => false, isController: () => false, registry,
    log: { ...silentLogger, warn: (msg: string, fields?: Record<string, unknown>) => lines.push({ msg, fields: fields ?? {} }) },
  });
  try {
    const local = { ...compile(emptyInputs()).model };
    local.services = new Map([['shop/web', { name: 'web', namespace: 'shop', hostname: 'web.shop.svc.cluster.local', vips: ['fd00::10'], ports: [], endpoints: [] }]]);
    fed.report('cluster2', { export: JSON.stringify({ cluster: 'cluster2', network: 'network1', services: [entry('FD00::10')] }) });
    fed.merge(local);
    fed.merge(local);
    assert.match(await registry.metrics(), /^weft_federation_import_refused_total\{cluster="cluster2",reason="invalid"\} 1$/m);
    const logged = lines.filter((l) => l.fields.reason === 'invalid');
    assert.equal(logged.length, 1);
    assert.match(String(logged[0]!.fields.error), /vips\[0\]: "FD00::10" is not in RFC 5952 canonical form: write fd00::10/);
  } finally {
    await fed.stop();
  }
});

test('an agent sent an address in another spelling (a VIP, an endpoint, an endpoint\'s node) refuses the config naming the field and the spelling to write', () => {
  const service = (vip: string, ip: string, nodeIp: string): Service => ({ name: 'web', namespace: 'shop', hostname: 'web.shop.svc.cluster.local', vips: [vip], ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP', appProtocol: 'http' }], endpoints: [{ workloadUid: 'u', ip, node: 'node-a', nodeIp, ports: { '80': 8080 }, enrolled: true, spiffeId: 'spiffe://cluster.local/ns/shop/sa/web', ready: true }] });
  const agent = (s: Service) => validateAgentConfig({ node: 'node-a', workloads: [], services: [s], policies: [], peerAuthentications: [], waypoints: [] });
  assert.throws(() => agent(service('FD00::10', '10.1.0.1', '192.168.0.1')), /service shop\/web vip: "FD00::10" is not in RFC 5952 canonical form: write fd00::10/);
  assert.throws(() => agent(service('10.96.0.1', '::ffff:10.1.0.1', '192.168.0.1')), /service shop\/web endpoint: "::ffff:10\.1\.0\.1" is an IPv4-mapped/);
  agent(service('fd00::10', '10.1.0.1', '192.168.0.1'));
});

// The agent dials an endpoint's nodeIp for HBONE (the waypoint's config check tests it too): one
// that is no address, or one in another spelling, is refused as the endpoint's own address is.
test('an agent sent an endpoint whose nodeIp is not an address (a zone, another spelling, no address) refuses the config naming the field', () => {
  const service = (nodeIp: string): Service => ({ name: 'web', namespace: 'shop', hostname: 'web.shop.svc.cluster.local', vips: ['10.96.0.1'], ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP', appProtocol: 'http' }], endpoints: [{ workloadUid: 'u', ip: '10.1.0.1', node: 'node-a', nodeIp, ports: { '80': 8080 }, enrolled: true, spiffeId: 'spiffe://cluster.local/ns/shop/sa/web', ready: true }] });
  const agent = (s: Service) => validateAgentConfig({ node: 'node-a', workloads: [], services: [s], policies: [], peerAuthentications: [], waypoints: [] });
  assert.throws(() => agent(service('fd00::1%eth0')), /service shop\/web endpoint 10\.1\.0\.1 nodeIp: "fd00::1%eth0" .*has a zone/);
  assert.throws(() => agent(service('FD00::1')), /service shop\/web endpoint 10\.1\.0\.1 nodeIp: "FD00::1" is not in RFC 5952 canonical form: write fd00::1/);
  assert.throws(() => agent(service('node-a')), /service shop\/web endpoint 10\.1\.0\.1 nodeIp: "node-a" is not an IP address/);
  agent(service('fd00::1'));
});
