// Multi-cluster pieces without root: the plug-in CA (one root, an intermediate per cluster), the
// federation export (parsing hostile input, merging by namespace sameness), locality ordering,
// TrafficPolicy locality validation, and two controllers' federation on loopback (mutual TLS,
// who may read, the stale bound).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect as tlsConnect, createServer as tlsServer, type TLSSocket } from 'node:tls';
import type { AddressInfo } from 'node:net';
import { CertificateAuthority } from '../../lib/identity/ca.ts';
import { spiffeIdFromCert } from '../../lib/hbone/peer.ts';
import { mergeRemoteServices, parseClusterExport, FederationExportError, type ClusterExport } from '../../lib/model/federation.ts';
import type { Endpoint, MeshModel, Service } from '../../lib/model/mesh.ts';
import { emptyMeshModel } from '../../lib/model/mesh.ts';
import { orderByLocality } from '../../agent/src/state.ts';
import { validateObject } from '../../lib/model/validate.ts';
import { Federation } from '../../controller/src/federation.ts';
import { silentLogger } from '../../lib/log.ts';
import { until } from '../lab/wait.ts';
import { refusalLineBound } from '../lab/log-bound.ts';
import { Registry } from 'prom-client';

const TD = 'cluster.local';
const id = (ns: string, sa: string) => `spiffe://${TD}/ns/${ns}/sa/${sa}`;

async function plugIn(): Promise<{ root: CertificateAuthority; c1: CertificateAuthority; c2: CertificateAuthority }> {
  const root = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const load = async (name: string) => {
    const i = await root.issueIntermediate(name);
    return CertificateAuthority.fromPem({ certPem: i.certPem, keyPem: i.keyPem, rootsPem: i.rootPem }, { trustDomain: TD });
  };
  return { root, c1: await load('cluster1'), c2: await load('cluster2') };
}

async function creds(ca: CertificateAuthority, spiffe: string): Promise<{ key: string; cert: string; ca: string[] }> {
  const issued = await ca.issueServingCertificate({ uris: [spiffe] });
  return { key: issued.keyPem, cert: issued.certChain.join(''), ca: ca.trustBundle() };
}

test('plug-in CA: identities issued by two clusters\' intermediates verify each other in mutual TLS against the one root; a foreign root does not', async (t) => {
  const { root, c1, c2 } = await plugIn();
  assert.deepEqual(c1.trustBundle(), root.trustBundle(), 'each cluster trusts the shared root');
  const server = await creds(c2, id('demo', 'echo'));
  const srv = tlsServer({ ...server, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' }, (s) => s.end(spiffeIdFromCert(s.getPeerCertificate())?.uri ?? 'none'));
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  t.after(() => srv.close());
  const port = (srv.address() as AddressInfo).port;
  const client = await creds(c1, id('demo', 'client'));
  const seen = await new Promise<string>((resolve, reject) => {
    const s: TLSSocket = tlsConnect({ ...client, host: '127.0.0.1', port, checkServerIdentity: () => undefined }, () => {
      assert.equal(spiffeIdFromCert(s.getPeerCertificate())?.uri, id('demo', 'echo'));
    });
    let out = '';
    s.on('data', (c: Buffer) => (out += c));
    s.on('end', () => resolve(out));
    s.on('error', reject);
  });
  assert.equal(seen, id('demo', 'client'), 'cluster2 saw the caller\'s own identity from cluster1');
  // A CA of another root is refused.
  const stranger = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const bad = await creds(stranger, id('demo', 'client'));
  await assert.rejects(new Promise<void>((resolve, reject) => {
    const s = tlsConnect({ ...bad, ca: client.ca, host: '127.0.0.1', port, checkServerIdentity: () => undefined });
    s.on('data', () => resolve());
    s.on('end', () => reject(new Error('closed without an answer')));
    s.on('error', reject);
  }));
});

const ep = (ip: string, extra: Partial<Endpoint> = {}): Endpoint => ({ workloadUid: ip, ip, node: 'node1', nodeIp: '10.78.0.1', ports: { '80': 8080 }, enrolled: true, spiffeId: id('demo', 'echo'), ready: true, ...extra });
const svc = (name: string, endpoints: Endpoint[], extra: Partial<Service> = {}): Service => ({ name, namespace: 'demo', hostname: `${name}.demo.svc.cluster.local`, vips: ['10.96.0.10'], ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP', appProtocol: 'http' }], endpoints, ...extra });
const GW = { network: 'network2', address: '192.168.77.2', port: 15008, spiffeId: id('weft-system', 'weft-eastwest') };

test('namespace sameness: a remote cluster\'s endpoints join the local Service of the same namespace/name; another network goes through its gateway, the same network directly', () => {
  const local = [svc('echo', [ep('10.77.1.1', { nodeIp: '10.77.0.1' })]), svc('near', [])];
  const remote: ClusterExport = { cluster: 'cluster2', network: 'network2', gateway: GW, services: [svc('echo', [ep('10.78.1.1')])] };
  const merged = mergeRemoteServices({ services: local }, { network: 'network1' }, [remote]).services;
  const echo = merged.get('demo/echo')!;
  assert.deepEqual(echo.endpoints.map((e) => [e.ip, e.cluster, e.gateway?.address]), [['10.77.1.1', undefined, undefined], ['10.78.1.1', 'cluster2', '192.168.77.2']]);
  assert.deepEqual(echo.vips, ['10.96.0.10'], 'callers here use their own cluster\'s VIP');
  assert.equal(local[0]!.endpoints.length, 1, 'the compiled model is not changed');
  const same = mergeRemoteServices({ services: local }, { network: 'network2' }, [remote]).services.get('demo/echo')!;
  assert.equal(same.endpoints[1]!.gateway, undefined, 'same network: dialled directly');
  const { gateway: _gw, ...noGateway } = remote;
  assert.equal(mergeRemoteServices({ services: local }, { network: 'network1' }, [noGateway]).services.get('demo/echo')!.endpoints.length, 1, 'another network without a gateway cannot be reached');
});

// Istio: a Service deployed in one cluster only is reachable from the others by its name; with
// Istio's DNS proxy `svc1.ns1.svc.cluster.local` resolves there to the remote Service's ClusterIP
// (Cloud Service Mesh / Istio "DNS proxying" for multi-cluster; Istio's GetAddressForProxy falls
// back to the Service's address in the cluster that has it).
test('namespace sameness, remote-only Services (Istio): a Service only cluster2 has is imported with cluster2\'s ClusterIP, ports and hostname and its endpoints through the gateway; one that clusters 2 and 3 have takes the VIP of the first by cluster ID and the endpoints of both; it leaves once its cluster does', () => {
  const local = { services: [svc('echo', [ep('10.77.1.1', { nodeIp: '10.77.0.1' })])], workloads: [{ ip: '10.77.1.1', nodeIp: '10.77.0.1' }] };
  const onlyThere = svc('only-there', [ep('10.78.1.2')], { vips: ['10.97.0.11'], ports: [{ name: 'grpc', port: 9090, targetPort: 'grpc', protocol: 'TCP', appProtocol: 'grpc' }] });
  const c2: ClusterExport = { cluster: 'cluster2', network: 'network2', gateway: GW, services: [svc('echo', [ep('10.78.1.1')]), onlyThere] };
  const GW3 = { ...GW, network: 'network3', address: '192.168.77.3' };
  const c3: ClusterExport = { cluster: 'cluster3', network: 'network3', gateway: GW3, services: [svc('only-there', [ep('10.79.1.1', { nodeIp: '10.79.0.1' })], { vips: ['10.98.0.11'] })] };
  const { services, refused } = mergeRemoteServices(local, { network: 'network1' }, [c3, c2]);
  assert.deepEqual(refused, []);
  const imported = services.get('demo/only-there')!;
  assert.deepEqual(imported.vips, ['10.97.0.11'], 'cluster2\'s ClusterIP (cluster2 < cluster3), not cluster3\'s');
  assert.deepEqual(imported.ports, onlyThere.ports);
  assert.equal(imported.hostname, 'only-there.demo.svc.cluster.local');
  assert.deepEqual(imported.endpoints.map((e) => [e.ip, e.cluster, e.gateway?.address]), [['10.78.1.2', 'cluster2', '192.168.77.2'], ['10.79.1.1', 'cluster3', '192.168.77.3']]);
  assert.equal(mergeRemoteServices(local, { network: 'network1' }, [c3]).services.get('demo/only-there')!.vips[0], '10.98.0.11', 'without cluster2: cluster3\'s');
  assert.equal(mergeRemoteServices(local, { network: 'network1' }, []).services.has('demo/only-there'), false, 'no remote has it: gone');
  // Another network without a gateway: nothing of it is imported, remote-only Services neither.
  const { gateway: _gw, ...noGateway } = c2;
  assert.equal(mergeRemoteServices(local, { network: 'network1' }, [noGateway]).services.has('demo/only-there'), false);
});

test('remote-only Services, attacker side: a remote cannot take over an address this cluster uses (a local Service\'s VIP, a local pod\'s or node\'s address, another import\'s VIP), nor bypass its own waypoint; each refusal is named and costs only that Service', () => {
  const localEcho = svc('echo', [ep('10.77.1.1', { nodeIp: '10.77.0.1' })]);
  const local = { services: [localEcho], workloads: [{ ip: '10.77.1.1', nodeIp: '10.77.0.1' }, { ip: '10.77.1.9', nodeIp: '10.77.0.2' }] };
  const c2: ClusterExport = {
    cluster: 'cluster2', network: 'network2', gateway: GW, services: [
      svc('hijack-vip', [ep('10.78.6.6')], { vips: ['10.96.0.10'] }),
      svc('hijack-pod', [ep('10.78.6.6')], { vips: ['10.77.1.9'] }),
      svc('hijack-node', [ep('10.78.6.6')], { vips: ['10.77.0.2'] }),
      svc('behind-waypoint', [ep('10.78.6.6')], { vips: ['10.97.0.20'], waypoint: { namespace: 'demo', name: 'waypoint' } }),
      svc('headless', [ep('10.78.6.6')], { vips: [] }),
      svc('fine', [ep('10.78.1.5')], { vips: ['10.97.0.30'] }),
    ],
  };
  const c3: ClusterExport = { cluster: 'cluster3', network: 'network3', gateway: { ...GW, network: 'network3', address: '192.168.77.3' }, services: [svc('other', [ep('10.79.6.6')], { vips: ['10.97.0.30'] })] };
  const { services, refused } = mergeRemoteServices(local, { network: 'network1' }, [c2, c3]);
  const why = Object.fromEntries(refused.map((r) => [`${r.cluster}/${r.service}`, `${r.reason}: ${r.message}`]));
  assert.match(why['cluster2/demo/hijack-vip']!, /^vip-in-use: Service demo\/hijack-vip of cluster cluster2 not imported: its VIP 10\.96\.0\.10 is already local Service demo\/echo$/);
  assert.match(why['cluster2/demo/hijack-pod']!, /^vip-in-use: .*10\.77\.1\.9 is already local workload/);
  assert.match(why['cluster2/demo/hijack-node']!, /^vip-in-use: .*10\.77\.0\.2 is already local node/);
  assert.match(why['cluster2/demo/behind-waypoint']!, /^waypoint: .*goes through waypoint demo\/waypoint of cluster cluster2, which enforces its L7 policy and is not in its export/);
  assert.match(why['cluster2/demo/headless']!, /^headless: /);
  assert.match(why['cluster3/demo/other']!, /^vip-in-use: .*10\.97\.0\.30 is already Service demo\/fine imported from cluster2/);
  assert.equal(refused.length, 6);
  assert.deepEqual([...services.keys()].sort(), ['demo/echo', 'demo/fine'], 'only the harmless one is imported');
  assert.deepEqual(services.get('demo/echo'), localEcho, 'the local Service is untouched');
});

test('a federation export from another cluster is checked field by field before use: what makes the whole export unreadable throws, a wrong field of one Service marks only that entry invalid, named by its path', () => {
  const good = { cluster: 'cluster2', network: 'network2', gateway: GW, services: [svc('echo', [ep('10.78.1.1')])] };
  assert.equal(parseClusterExport(JSON.parse(JSON.stringify(good))).services[0]!.endpoints.length, 1);
  const whole: Array<[unknown, RegExp]> = [
    [null, /\$: must be an object/],
    [{ ...good, cluster: '' }, /cluster: must be a non-empty string/],
    [{ ...good, gateway: { ...GW, address: 'evil.example' } }, /gateway\.address: "evil\.example" is not an IP address/],
    [{ ...good, gateway: { ...GW, port: 70000 } }, /gateway\.port/],
    [{ ...good, services: {} }, /services: must be a list/],
    // Without its name an entry cannot be told apart.
    [{ ...good, services: ['x'] }, /services\[0\]: must be an object/],
    [{ ...good, services: [{ ...svc('echo', []), name: '' }] }, /services\[0\]\.name: must be a non-empty string/],
  ];
  for (const [input, msg] of whole) assert.throws(() => parseClusterExport(input), (e: Error) => e instanceof FederationExportError && msg.test(e.message), JSON.stringify(input)?.slice(0, 80));
  const cases: Array<[Service, RegExp]> = [
    [{ ...svc('echo', []), endpoints: [{ ...ep('10.78.1.1'), ip: '1.2.3' }] }, /services\[0\]\.endpoints\[0\]\.ip/],
    [{ ...svc('echo', []), endpoints: [{ ...ep('10.78.1.1'), spiffeId: undefined }] }, /services\[0\]\.endpoints\[0\]\.spiffeId/],
    [{ ...svc('echo', []), endpoints: [{ ...ep('10.78.1.1'), ports: { '80': 0 } }] }, /services\[0\]\.endpoints\[0\]\.ports\["80"\]: 0 is not a port/],
    [{ ...svc('echo', []), endpoints: [{ ...ep('10.78.1.1'), ports: { http: 8080 } }] }, /services\[0\]\.endpoints\[0\]\.ports: "http" is not a Service port/],
    [{ ...svc('echo', []), endpoints: [{ ...ep('10.78.1.1'), workload: { workloadName: 'echo' } as unknown as Endpoint['workload'] }] }, /services\[0\]\.endpoints\[0\]\.workload\.namespace: must be a string/],
    [{ ...svc('echo', []), ports: [{ name: 'http', port: 0, targetPort: 8080, protocol: 'TCP', appProtocol: 'http' }] }, /services\[0\]\.ports\[0\]\.port/],
    // What an importer of a remote-only Service acts on: its addresses, ports and name.
    [svc('echo', [], { vips: ['127.0.0.1'] }), /services\[0\]\.vips\[0\]: 127\.0\.0\.1 cannot be a Service address/],
    [svc('echo', [], { vips: ['169.254.169.254'] }), /services\[0\]\.vips\[0\]: 169\.254\.169\.254 cannot be a Service address/],
    [svc('echo', [], { vips: ['nowhere'] }), /services\[0\]\.vips\[0\]: "nowhere" is not an IP address/],
    [svc('echo', [], { vips: undefined as unknown as string[] }), /services\[0\]\.vips: must be a list/],
    [svc('echo', [], { hostname: 'kubernetes.default.svc.cluster.local' }), /services\[0\]\.hostname: .* is not echo\.demo\.svc\.<domain>/],
    [{ ...svc('echo', []), ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP', appProtocol: 'smtp' as 'http' }] }, /services\[0\]\.ports\[0\]\.appProtocol: must be one of/],
    [{ ...svc('echo', []), ports: [{ name: 'http', port: 80, targetPort: 0, protocol: 'TCP', appProtocol: 'http' }] }, /services\[0\]\.ports\[0\]\.targetPort/],
    [svc('echo', [], { waypoint: { name: 7 } as unknown as Service['waypoint'] }), /services\[0\]\.waypoint\.name/],
  ];
  for (const [bad, msg] of cases) {
    const parsed = parseClusterExport(JSON.parse(JSON.stringify({ ...good, services: [bad, svc('other', [ep('10.78.1.2')], { vips: ['10.97.0.40'] })] })));
    assert.match(parsed.services[0]!.invalid ?? '', msg, JSON.stringify(bad).slice(0, 80));
    assert.deepEqual([parsed.services[0]!.name, parsed.services[0]!.endpoints, parsed.services[0]!.vips], ['echo', [], []], 'nothing of the bad entry is kept');
    assert.equal(parsed.services[1]!.invalid, undefined, 'the next entry is unaffected');
  }
});

test('locality: prefer-local keeps the caller\'s cluster first and fails over to others while its endpoints fail; local-only never leaves it; weighted draws by weight', () => {
  const c = (ip: string, cluster?: string) => ({ endpoint: ep(ip, cluster ? { cluster } : {}) });
  const l1 = c('10.77.1.1'), l2 = c('10.77.1.2'), r1 = c('10.78.1.1', 'cluster2');
  const ips = (xs: Array<{ endpoint: Endpoint }>) => xs.map((x) => x.endpoint.ip);
  assert.deepEqual(ips(orderByLocality({ mode: 'prefer-local' }, 'cluster1', [r1, l1, l2], [])), ['10.77.1.1', '10.77.1.2', '10.78.1.1']);
  assert.deepEqual(ips(orderByLocality({ mode: 'prefer-local' }, 'cluster1', [r1], [l1])), ['10.78.1.1', '10.77.1.1'], 'a failing local endpoint goes after healthy remote ones');
  assert.deepEqual(ips(orderByLocality({ mode: 'local-only' }, 'cluster1', [r1], [l1])), ['10.77.1.1']);
  assert.deepEqual(ips(orderByLocality({ mode: 'local-only' }, 'cluster1', [r1], [])), []);
  const w = { mode: 'weighted' as const, weights: { cluster1: 1, cluster2: 3 } };
  assert.equal(ips(orderByLocality(w, 'cluster1', [l1, r1], [], () => 0.1))[0], '10.77.1.1');
  assert.equal(ips(orderByLocality(w, 'cluster1', [l1, r1], [], () => 0.5))[0], '10.78.1.1');
  assert.equal(ips(orderByLocality({ mode: 'weighted', weights: { cluster2: 1 } }, 'cluster1', [l1, r1], [], () => 0.99))[0], '10.78.1.1');
});

test('TrafficPolicy locality is validated with the field named', () => {
  const tp = (locality: unknown) => ({ apiVersion: 'weft.dev/v1alpha1', kind: 'TrafficPolicy', metadata: { name: 'x', namespace: 'demo' }, spec: { targetRef: { kind: 'Service', name: 'echo' }, locality } });
  assert.deepEqual(validateObject(tp({ mode: 'PreferLocal' })), []);
  assert.deepEqual(validateObject(tp({ mode: 'Weighted', weights: [{ cluster: 'cluster1', weight: 80 }, { cluster: 'cluster2', weight: 20 }] })), []);
  const msgs = (l: unknown) => validateObject(tp(l)).map((i) => `${i.path}: ${i.message}`).join('\n');
  assert.match(msgs({ mode: 'Nearest' }), /spec\.locality\.mode/);
  assert.match(msgs({ mode: 'Weighted' }), /spec\.locality\.weights: mode Weighted needs/);
  assert.match(msgs({ mode: 'Weighted', weights: [{ cluster: 'c', weight: -1 }] }), /spec\.locality\.weights\[0\]\.weight/);
  assert.match(msgs({ mode: 'LocalOnly', extra: 1 }), /spec\.locality/);
});

function model(services: Service[]): MeshModel {
  return { ...emptyMeshModel(), services: new Map(services.map((s) => [`${s.namespace}/${s.name}`, s])) };
}

test('federation: controllers read each other\'s export over mutual TLS; a reader that is not a peer gets 403; an unreachable remote keeps its endpoints for the stale bound, then loses them', async (t) => {
  const { c1, c2 } = await plugIn();
  const ctrl = id('weft-system', 'weft-controller');
  const a = new Federation({
    cluster: 'cluster2', network: 'network2', gateway: GW, listen: { host: '127.0.0.1', port: 0 }, remotes: [],
    tls: () => tlsA, mayRead: (x) => x === ctrl, isController: (x) => x === ctrl, log: silentLogger,
  });
  const tlsA = await creds(c2, ctrl);
  a.merge(model([svc('echo', [ep('10.78.1.1')])]));
  await a.start();
  t.after(() => a.stop());
  const port = a.port!;
  const tlsB = await creds(c1, ctrl);
  const b = new Federation({
    cluster: 'cluster1', network: 'network1', remotes: [{ name: 'cluster2', url: `https://127.0.0.1:${port}` }],
    tls: () => tlsB, mayRead: () => true, isController: (x) => x === ctrl, pollMs: 50, staleAfterMs: 400, log: silentLogger,
  });
  let changes = 0;
  b.onChange(() => changes++);
  const local = model([svc('echo', [ep('10.77.1.1')])]);
  await b.start();
  t.after(() => b.stop());
  await until('cluster1 imports cluster2\'s endpoint', () => b.merge(local).services.get('demo/echo')!.endpoints.length === 2, 5_000);
  assert.ok(changes >= 1);
  assert.equal(b.merge(local).services.get('demo/echo')!.endpoints[1]!.gateway?.address, '192.168.77.2');
  // /debug/federation (read by `weftctl check`) names the remote's network and gateway.
  assert.deepEqual([b.status()[0]!.network, b.status()[0]!.gateway?.address, b.status()[0]!.up], ['network2', '192.168.77.2', true]);
  // A workload identity (not a controller or gateway) may not read the export.
  const intruder = await creds(c1, id('demo', 'client'));
  const status = await new Promise<number>((resolve, reject) => {
    import('node:https').then(({ request }) => {
      const req = request({ host: '127.0.0.1', port, path: '/federation/v1/export', ...intruder, checkServerIdentity: () => undefined, agent: false }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      req.end();
    }, reject);
  });
  assert.equal(status, 403);
  // cluster2's controller goes away: its endpoints stay for the bound, then go.
  await a.stop();
  const stoppedAt = Date.now();
  await until('cluster2\'s endpoints are dropped', () => b.merge(local).services.get('demo/echo')!.endpoints.length === 1, 5_000);
  assert.ok(Date.now() - stoppedAt >= 300, 'kept for (about) the stale bound first');
  assert.equal(b.status()[0]!.up, false);
});

// A polled remote's export is read each second and may be 16 MiB: the reader sends back the ETag
// it was served with (If-None-Match) and a 304 (RFC 9110 15.4.5) is the export it holds, read
// again in time (its stale bound restarts) without a transfer or a parse; a changed one is read.
test('federation: a polled remote answers an unchanged export with 304 to the ETag of the one held, counted (reads_total{result="unchanged"}); the remote stays up; a changed export is transferred and imported', async (t) => {
  const { c1, c2 } = await plugIn();
  const ctrl = id('weft-system', 'weft-controller');
  const registry = new Registry();
  const tlsA = await creds(c2, ctrl);
  const a = new Federation({ cluster: 'cluster2', network: 'network2', gateway: GW, listen: { host: '127.0.0.1', port: 0 }, remotes: [], tls: () => tlsA, mayRead: (x) => x === ctrl, isController: (x) => x === ctrl, log: silentLogger, registry });
  a.merge(model([svc('echo', [ep('10.78.1.1')])]));
  await a.start();
  t.after(() => a.stop());
  const tlsB = await creds(c1, ctrl);
  const b = new Federation({ cluster: 'cluster1', network: 'network1', remotes: [{ name: 'cluster2', url: `https://127.0.0.1:${a.port!}` }], tls: () => tlsB, mayRead: () => true, isController: (x) => x === ctrl, pollMs: 50, staleAfterMs: 400, log: silentLogger });
  await b.start();
  t.after(() => b.stop());
  const reads = async (result: string) => Number(new RegExp(`^weft_federation_export_reads_total\\{result="${result}"\\} (\\d+)$`, 'm').exec(await registry.metrics())?.[1] ?? 0);
  const local = model([svc('echo', [ep('10.77.1.1')])]);
  await until('answered 304 past the stale bound', async () => (await reads('unchanged')) >= 12, 10_000);
  assert.equal(await reads('ok'), 1);
  assert.equal(b.status()[0]!.up, true, 'a 304 is a good read: not stale');
  assert.equal(b.merge(local).services.get('demo/echo')!.endpoints.length, 2);
  a.merge(model([svc('echo', [ep('10.78.1.1'), ep('10.78.1.2')])]));
  await until('the changed export is imported', () => b.merge(local).services.get('demo/echo')!.endpoints.length === 3, 5_000);
  assert.equal(await reads('ok'), 2);
});

/** A federation that takes cluster2's export as pushed (as the remote-secret watches do), with its log lines and metrics. */
function pushedFederation(t: { after(fn: () => unknown): void }) {
  const lines: Array<{ msg: string; fields: Record<string, unknown> }> = [];
  const registry = new Registry();
  const fed = new Federation({
    cluster: 'cluster1', network: 'network1', remotes: [{ name: 'cluster2', url: 'https://cluster2.example:6443 (Secret weft-system/remote-cluster2)', pushed: true }],
    tls: () => ({ key: '', cert: '', ca: [] }), mayRead: () => false, isController: () => false, staleAfterMs: 100, registry,
    log: { ...silentLogger, warn: (msg: string, fields?: Record<string, unknown>) => lines.push({ msg, fields: fields ?? {} }) },
  });
  t.after(() => fed.stop());
  return { fed, lines, metrics: () => registry.metrics() };
}

// Istio ambient reaches another network only by double HBONE through its east-west gateway, and
// leaves out a remote network's endpoints that cannot take it (pilot/pkg/xds/endpoints
// EndpointsByNetworkFilter: "Cross-network traffic relies on double-HBONE in ambient mode ... if
// mTLS is not enabled for the target endpoint on a remote network we skip it altogether"); an
// endpoint address Kubernetes itself refuses (loopback, link-local: EndpointSlice validation) is
// never one a remote may hand this cluster's agents.
test('a hostile remote cannot make callers here dial an address of its choosing: an endpoint or node at a loopback, link-local or unspecified address, a gateway field of its own on an endpoint, a gateway at such an address, and an endpoint of another network outside the mesh are left out, each named and counted; the Service\'s good endpoints are imported', async (t) => {
  const { fed, lines, metrics } = pushedFederation(t);
  const local = model([svc('echo', [ep('10.77.1.1', { nodeIp: '10.77.0.1' })])]);
  const exp = {
    cluster: 'cluster2', network: 'network2', gateway: GW, services: [
      svc('echo', [
        ep('10.78.1.1'),
        ep('127.0.0.1', { enrolled: false, spiffeId: undefined, ports: { '80': 15000 } }),
        ep('10.78.1.3', { nodeIp: '169.254.169.254' }),
        ep('0.0.0.0'),
        ep('10.78.1.9', { enrolled: false, spiffeId: undefined }),
      ]),
      svc('only-there', [ep('10.78.2.1'), { ...ep('10.78.2.2'), gateway: { ...GW, address: '127.0.0.1', port: 15000 } } as Endpoint], { vips: ['10.97.0.50'] }),
    ],
  };
  fed.report('cluster2', { export: JSON.stringify(exp) });
  const merged = fed.merge(local);
  const echo = merged.services.get('demo/echo')!;
  assert.deepEqual(echo.endpoints.map((e) => [e.ip, e.cluster, e.gateway?.address]), [['10.77.1.1', undefined, undefined], ['10.78.1.1', 'cluster2', '192.168.77.2']], 'only the enrolled endpoint at a usable address joins, through cluster2\'s gateway');
  const only = merged.services.get('demo/only-there')!;
  assert.deepEqual(only.endpoints.map((e) => e.gateway?.address), ['192.168.77.2', '192.168.77.2'], 'an endpoint\'s own gateway field is not the remote\'s to set: its network\'s gateway is used');
  const refused = fed.status()[0]!.refusedServices ?? {};
  assert.match(refused['demo/echo']!, /^Service demo\/echo of cluster cluster2: 4 of its 5 endpoints not imported: 127\.0\.0\.1: 127\.0\.0\.1 cannot be an endpoint's address \(loopback, unspecified, link-local or multicast\); 10\.78\.1\.3: 169\.254\.169\.254 cannot be an endpoint's address .*; 0\.0\.0\.0: 0\.0\.0\.0 cannot .*; 10\.78\.1\.9: not in the mesh, and network network2 is reached only by HBONE through its east-west gateway$/);
  assert.equal(refused['demo/only-there'], undefined);
  assert.match(await metrics(), /^weft_federation_import_refused_total\{cluster="cluster2",reason="endpoints"\} 1$/m);
  assert.ok(lines.some((l) => l.fields.service === 'demo/echo' && l.fields.reason === 'endpoints' && /10\.78\.1\.9: not in the mesh/.test(String(l.fields.error))), 'logged with the Service and the addresses');
  // The same network: an endpoint outside the mesh is dialled directly (Istio too), but never at a loopback address.
  const same = new Federation({ cluster: 'cluster1', network: 'network2', remotes: [{ name: 'cluster2', url: 'x', pushed: true }], tls: () => ({ key: '', cert: '', ca: [] }), mayRead: () => false, isController: () => false, log: silentLogger });
  t.after(() => same.stop());
  same.report('cluster2', { export: JSON.stringify(exp) });
  const sameMerged = same.merge(local);
  assert.deepEqual(sameMerged.services.get('demo/echo')!.endpoints.map((e) => e.ip), ['10.77.1.1', '10.78.1.1', '10.78.1.9']);
  assert.deepEqual(sameMerged.services.get('demo/only-there')!.endpoints.map((e) => e.gateway), [undefined, undefined], 'same network: no gateway, not even one the entry names');
  // A gateway at an address no gateway may have: nothing of that network can be reached.
  const { fed: fed2 } = pushedFederation(t);
  fed2.report('cluster2', { export: JSON.stringify({ ...exp, gateway: { ...GW, address: '127.0.0.1' } }) });
  const cut = fed2.merge(local);
  assert.deepEqual(cut.services.get('demo/echo')!.endpoints.map((e) => e.ip), ['10.77.1.1']);
  assert.equal(cut.services.has('demo/only-there'), false);
  assert.match(fed2.status()[0]!.refusedServices!['demo/only-there']!, /whose east-west gateway has the address 127\.0\.0\.1, which no gateway may have/);
});

test('one malformed Service in a remote\'s export costs only itself: the others stay imported and the remote up, the bad one is refused (invalid) with its field path, counted and logged; fixed, it is imported', async (t) => {
  const { fed, lines, metrics } = pushedFederation(t);
  const local = model([]);
  const good = svc('fine', [ep('10.78.1.1')], { vips: ['10.97.0.60'] });
  const bad = { ...svc('broken', [ep('10.78.1.2')], { vips: ['10.97.0.61'] }), ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP', appProtocol: 'smtp' }] };
  fed.report('cluster2', { export: JSON.stringify({ cluster: 'cluster2', network: 'network2', gateway: GW, services: [good, bad] }) });
  assert.deepEqual([...fed.merge(local).services.keys()], ['demo/fine']);
  assert.match(fed.status()[0]!.refusedServices!['demo/broken']!, /^Service demo\/broken of cluster cluster2 not imported: its entry is malformed \(federation export: services\[1\]\.ports\[0\]\.appProtocol: must be one of/);
  assert.match(await metrics(), /^weft_federation_import_refused_total\{cluster="cluster2",reason="invalid"\} 1$/m);
  assert.ok(lines.some((l) => l.fields.service === 'demo/broken' && l.fields.reason === 'invalid' && /services\[1\]\.ports\[0\]\.appProtocol/.test(String(l.fields.error))));
  // The remote is up and its read did not fail, so no stale bound runs against its other Services.
  assert.equal(fed.status()[0]!.up, true);
  assert.equal(fed.status()[0]!.lastError, undefined);
  assert.doesNotMatch(await metrics(), /^weft_federation_fetch_failures_total\{cluster="cluster2"\}/m);
  fed.report('cluster2', { export: JSON.stringify({ cluster: 'cluster2', network: 'network2', gateway: GW, services: [good, { ...bad, ports: good.ports }] }) });
  assert.deepEqual([...fed.merge(local).services.keys()].sort(), ['demo/broken', 'demo/fine']);
  assert.equal(fed.status()[0]!.refusedServices, undefined);
});

// The export is the body of a 200 answer (GET /federation/v1/export answers 200 or 403). Another
// 2xx is not an export: a 204 has no body (RFC 9110 section 15.3.5) and was read as '' and refused
// as malformed JSON ("Unexpected end of JSON input"), and a 203 was taken as the export.
test('a remote export answered with a 2xx other than 200 (204 No Content, 203) is refused by its status, counted and named once in status and log; the last good export keeps serving', async (t) => {
  const { c1, c2 } = await plugIn();
  const ctrl = id('weft-system', 'weft-controller');
  const good = JSON.stringify({ cluster: 'cluster2', network: 'network2', gateway: GW, services: [svc('echo', [ep('10.78.1.1')])] });
  let answer = 200;
  const { createServer } = await import('node:https');
  const remote = createServer({ ...(await creds(c2, ctrl)), requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' }, (_req, res) => {
    if (answer === 204) res.writeHead(204).end();
    else res.writeHead(answer, { 'content-type': 'application/json' }).end(good);
  });
  await new Promise<void>((r) => remote.listen(0, '127.0.0.1', () => r()));
  t.after(() => {
    remote.closeAllConnections();
    remote.close();
  });
  const registry = new Registry();
  const lines: Array<{ msg: string; fields: Record<string, unknown> }> = [];
  const tlsB = await creds(c1, ctrl);
  const b = new Federation({
    cluster: 'cluster1', network: 'network1', tls: () => tlsB, mayRead: () => true, isController: (x) => x === ctrl, pollMs: 50, staleAfterMs: 60_000, registry,
    log: { ...silentLogger, warn: (msg: string, fields?: Record<string, unknown>) => lines.push({ msg, fields: fields ?? {} }) },
    remotes: [{ name: 'cluster2', url: `https://127.0.0.1:${(remote.address() as AddressInfo).port}` }],
  });
  const local = model([svc('echo', [ep('10.77.1.1')])]);
  await b.start();
  t.after(() => b.stop());
  await until('cluster2\'s export is imported', () => b.merge(local).services.get('demo/echo')!.endpoints.length === 2, 5_000);
  const failures = async (): Promise<number> => Number(/^weft_federation_fetch_failures_total\{cluster="cluster2"\} (\d+)$/m.exec(await registry.metrics())?.[1] ?? 0);
  for (const status of [204, 203]) {
    answer = status;
    const before = await failures();
    await until(`a ${status} is refused by its status`, () => new RegExp(`^answered HTTP ${status}\\b`).test(b.status()[0]?.lastError ?? ''), 5_000);
    assert.ok(await failures() > before, `${status}: counted`);
    await until(`${status}: read again`, async () => await failures() >= before + 3, 5_000);
    assert.equal(lines.filter((l) => l.msg === 'remote cluster export not read' && new RegExp(`^answered HTTP ${status}\\b`).test(String(l.fields.error))).length, 1, `${status}: logged once, with its status`);
    assert.equal(b.merge(local).services.get('demo/echo')!.endpoints.length, 2, `${status}: the last good export keeps serving`);
  }
  assert.ok(!lines.some((l) => /JSON/.test(String(l.fields.error))), 'not named as malformed JSON');
  answer = 200;
  await until('a 200 is read again', () => b.status()[0]?.lastError === undefined, 5_000);
});

// One bad remote must cost only itself: a remote controller that answers its export a byte at a
// time (each within the socket's idle timeout) held every other remote's read, as a round waited
// for all of them, and, its read never failing, kept its own last endpoints past the stale bound.
test('a remote that drips its export cannot freeze the federation: the other remotes are read and their changes imported meanwhile; the slow one fails at the read deadline, counted and named, and its endpoints leave at the stale bound', async (t) => {
  const { c1, c2 } = await plugIn();
  const ctrl = id('weft-system', 'weft-controller');
  const tlsA = await creds(c2, ctrl);
  const a = new Federation({ cluster: 'cluster2', network: 'network2', gateway: GW, listen: { host: '127.0.0.1', port: 0 }, remotes: [], tls: () => tlsA, mayRead: (x) => x === ctrl, isController: (x) => x === ctrl, log: silentLogger });
  a.merge(model([svc('echo', [ep('10.78.1.1')])]));
  await a.start();
  t.after(() => a.stop());
  // cluster3's "controller": a real controller identity; its first answer is a good export, then it
  // answers with a well-formed start and a byte every 100 ms.
  const { createServer } = await import('node:https');
  const dripping = new Set<NodeJS.Timeout>();
  let answered = 0;
  const GW3 = { ...GW, network: 'network3', address: '192.168.77.3' };
  const slow = createServer({ ...(await creds(c2, ctrl)), requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' }, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    if (answered++ === 0) {
      res.end(JSON.stringify({ cluster: 'cluster3', network: 'network3', gateway: GW3, services: [svc('only-c3', [ep('10.79.1.1')], { vips: ['10.98.0.9'] })] }));
      return;
    }
    res.write('{"cluster":"cluster3","network":"network3","services":[');
    const timer = setInterval(() => res.write(' '), 100);
    dripping.add(timer);
    res.on('close', () => { clearInterval(timer); dripping.delete(timer); });
  });
  await new Promise<void>((r) => slow.listen(0, '127.0.0.1', () => r()));
  t.after(() => {
    for (const d of dripping) clearInterval(d);
    slow.closeAllConnections();
    slow.close();
  });
  const registry = new Registry();
  const tlsB = await creds(c1, ctrl);
  const b = new Federation({
    cluster: 'cluster1', network: 'network1', tls: () => tlsB, mayRead: () => true, isController: (x) => x === ctrl, pollMs: 50, staleAfterMs: 1_500, fetchDeadlineMs: 1_000, registry, log: silentLogger,
    remotes: [{ name: 'cluster3', url: `https://127.0.0.1:${(slow.address() as import('node:net').AddressInfo).port}` }, { name: 'cluster2', url: `https://127.0.0.1:${a.port}` }],
  });
  const local = model([svc('echo', [ep('10.77.1.1')])]);
  await b.start();
  t.after(() => b.stop());
  await until('cluster3\'s first export is imported', () => b.merge(local).services.has('demo/only-c3'), 5_000);
  await until('cluster1 imports cluster2\'s endpoint while cluster3 drips', () => b.merge(local).services.get('demo/echo')!.endpoints.length === 2, 900);
  a.merge(model([svc('echo', [ep('10.78.1.1'), ep('10.78.1.2')])]));
  await until('and cluster2\'s change', () => b.merge(local).services.get('demo/echo')!.endpoints.length === 3, 900);
  await until('cluster3\'s read fails at the deadline, named', () => /no complete export within 1000 ms/.test(b.status().find((s) => s.cluster === 'cluster3')?.lastError ?? ''), 5_000);
  assert.match(await registry.metrics(), /^weft_federation_fetch_failures_total\{cluster="cluster3"\} [1-9]/m);
  await until('cluster3\'s endpoints leave at the stale bound', () => !b.merge(local).services.has('demo/only-c3'), 5_000);
  assert.equal(b.status().find((s) => s.cluster === 'cluster3')?.up, false);
  assert.equal(b.merge(local).services.get('demo/echo')!.endpoints.length, 3, 'cluster2 is unaffected');
});

// A remote's export is the remote's to write: a Service entry each refusal of which is a log line
// would let a hostile remote write this controller's log (and change every message at each read,
// so that each is "new"). Every refusal is counted and named in /debug/federation; the lines are
// rate limited as every part's refusals are (REFUSAL_LOG_PER_SECOND).
test('a hostile remote cannot turn refused imports into log volume: thousands of malformed Services, renamed at every push, are each counted and named, with at most REFUSAL_LOG_PER_SECOND lines a second and a count of the rest', async (t) => {
  const { fed, lines, metrics } = pushedFederation(t);
  const local = model([]);
  const N = 2_000;
  const started = Date.now();
  const push = (round: number, n = N) => {
    // The hostname named in each refusal: a new one makes each refusal new.
    const services = Array.from({ length: n }, (_, i) => svc(`bad-${i}`, [ep('10.78.1.2')], { vips: ['10.97.0.61'], hostname: `round-${round}.example` }));
    fed.report('cluster2', { export: JSON.stringify({ cluster: 'cluster2', network: 'network2', gateway: GW, services }) });
    fed.merge(local);
  };
  for (let round = 0; round < 3; round++) push(round);
  assert.equal(Object.keys(fed.status()[0]!.refusedServices ?? {}).length, N, 'each named');
  assert.match(await metrics(), new RegExp(`^weft_federation_import_refused_total\\{cluster="cluster2",reason="invalid"\\} ${3 * N}$`, 'm'));
  const refusedLines = lines.filter((l) => l.msg.startsWith('remote service (or some of its endpoints) not imported')).length;
  const bound = refusalLineBound(started);
  assert.ok(refusedLines <= bound, `${refusedLines} lines for ${3 * N} refusals (at most ${bound})`);
  let round = 3;
  // The count of the lines left out is written with the next line of a later second.
  await until('the rest are counted in a line', () => {
    push(round++, 1);
    return lines.some((l) => /not logged/.test(l.msg));
  }, 3_000, { intervalMs: 100 });
});
