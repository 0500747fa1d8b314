// weftctl dashboard: the service graph as a pure function of metrics, flows and config, and the
// server's guarantees (read-only, loopback Host only, no secrets).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { buildGraph } from '../../cli/dashboard/graph.ts';
import { dashboardServer } from '../../cli/dashboard/server.ts';
import type { MeshData } from '../../cli/dashboard/data.ts';
import type { Sample } from '../../cli/local/prom.ts';
import { toFlow, type Flow } from '../../cli/flows.ts';
import type { AuthorizationPolicy, Service, Workload } from '../../lib/model/mesh.ts';

const wl = (ns: string, name: string, ip: string, services: string[], labels: Record<string, string> = { app: name }): Workload => ({
  uid: `${ns}/${name}`, name, namespace: ns, node: 'node1', ip, serviceAccount: name, spiffeId: `spiffe://cluster.local/ns/${ns}/sa/${name}`,
  labels, enrolled: true, mode: 'PERMISSIVE', services, workloadName: name, canonicalService: name, canonicalRevision: 'latest', cluster: 'Kubernetes',
});
const svc = (ns: string, name: string, vip: string, waypoint?: string): Service => ({
  name, namespace: ns, hostname: `${name}.${ns}.svc.cluster.local`, vips: [vip], ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP' }] as Service['ports'], endpoints: [],
  ...(waypoint ? { waypoint: { namespace: ns, name: waypoint } as Service['waypoint'] } : {}),
});
const tcp = (name: string, value: number, l: Record<string, string>): Sample => ({ name, value, labels: { reporter: 'source', source_workload_namespace: 'demo', source_workload: 'client', destination_service: 'echo.demo.svc.cluster.local', connection_security_policy: 'mutual_tls', ...l } });
const config = {
  workloads: [wl('demo', 'client', '10.77.1.3', []), wl('demo', 'echo', '10.77.2.1', ['demo/echo']), wl('shop', 'reviews-v1', '10.77.2.5', ['shop/reviews'])],
  services: [svc('demo', 'echo', '10.96.0.10'), svc('shop', 'reviews', '10.96.1.10', 'waypoint')],
  policies: [
    { name: 'allow-client', namespace: 'demo', action: 'ALLOW', scope: 'workload', selector: { app: 'echo' }, rules: [], layer: 'L4' },
    { name: 'other', namespace: 'demo', action: 'DENY', scope: 'workload', selector: { app: 'nothing' }, rules: [], layer: 'L4' },
  ] as AuthorizationPolicy[],
};

test('edges carry connection and byte rates, mTLS, the policies on the destination, and denials with their reason', () => {
  const before = [tcp('istio_tcp_connections_opened_total', 10, {}), tcp('istio_tcp_sent_bytes_total', 1000, {}), tcp('istio_tcp_received_bytes_total', 0, {})];
  const after = [tcp('istio_tcp_connections_opened_total', 40, {}), tcp('istio_tcp_sent_bytes_total', 4000, {}), tcp('istio_tcp_received_bytes_total', 3000, {})];
  const denial: Flow = { time: '2026-12-04T10:00:00.000Z', reporter: 'agent node2', kind: 'tcp', direction: 'inbound', source: { address: '10.77.1.3:41000', namespace: 'demo', workload: 'client' }, destination: { address: '10.77.2.1:8080', namespace: 'demo', workload: 'echo' }, verdict: 'denied', reason: 'denied by policy demo/deny', policy: 'demo/deny' };
  const g = buildGraph({ before, after, seconds: 10, flows: [denial], config });
  const e = g.edges.find((x) => x.id === 'workload:Kubernetes/demo/client->service:Kubernetes/demo/echo')!;
  assert.ok(e, JSON.stringify(g.edges));
  assert.equal(e.connectionRate, 3);
  assert.equal(e.bytesRate, 600);
  assert.equal(e.security, 'mutual_tls');
  assert.equal(e.denied, 1);
  assert.deepEqual(e.denials[0], { time: denial.time, reporter: 'agent node2', reason: 'denied by policy demo/deny', policy: 'demo/deny' });
  assert.deepEqual(e.policies, [{ name: 'demo/allow-client', action: 'ALLOW' }], 'only the policy that selects the service\'s pods');
  assert.deepEqual(g.nodes.map((n) => n.id), ['service:Kubernetes/demo/echo', 'workload:Kubernetes/demo/client']);
  assert.deepEqual(g.clusters, ['Kubernetes'], 'a single-cluster mesh: one cluster, named by its workloads');
});

test('plaintext marks an edge open; HTTP through a waypoint gives request rate, error share, p99 and the waypoint on the path', () => {
  const plain = buildGraph({ before: [], after: [tcp('istio_tcp_connections_opened_total', 5, { connection_security_policy: 'none' })], seconds: 5, flows: [], config });
  assert.equal(plain.edges[0]!.security, 'none');
  const r = (code: string, v: number): Sample => ({ name: 'istio_requests_total', value: v, labels: { reporter: 'waypoint', source_workload_namespace: 'shop', source_workload: 'client', destination_service: 'reviews.shop.svc.cluster.local', response_code: code } });
  const b = (le: string, v: number): Sample => ({ name: 'istio_request_duration_milliseconds_bucket', value: v, labels: { reporter: 'waypoint', source_workload_namespace: 'shop', source_workload: 'client', destination_service: 'reviews.shop.svc.cluster.local', le } });
  const g = buildGraph({ before: [r('200', 0), r('503', 0)], after: [r('200', 90), r('503', 10), b('5', 50), b('10', 99), b('50', 100), b('+Inf', 100)], seconds: 10, flows: [], config });
  const e = g.edges.find((x) => x.target === 'service:Kubernetes/shop/reviews')!;
  assert.equal(e.protocol, 'http');
  assert.equal(e.requestRate, 10);
  assert.equal(e.errorRate, 0.1);
  assert.ok(e.p99Ms! > 5 && e.p99Ms! <= 10, `p99 ${e.p99Ms}`);
  assert.deepEqual(e.via, ['waypoint:Kubernetes/shop/waypoint'], 'the waypoint is on the path, drawn as a node');
  assert.equal(e.crossCluster, false);
  assert.ok(g.nodes.some((n) => n.id === 'waypoint:Kubernetes/shop/waypoint' && n.kind === 'waypoint'));
});

test('two clusters: the same demo/echo is one node per cluster, each edge in its clusters, a cross-cluster edge through the east-west gateway with the callee cluster\'s policies', () => {
  const GW = (n: number) => ({ network: `network${n}`, address: `192.168.77.${n}`, port: 15008, spiffeId: 'spiffe://cluster.local/ns/weft-system/sa/weft-eastwest' });
  const inC = (w: Workload, cluster: string): Workload => ({ ...w, uid: `${cluster}/${w.uid}`, cluster });
  const ep = (w: Workload, remote?: number) => ({
    workloadUid: w.uid, ip: w.ip, node: w.node, ports: { 80: 8080 }, enrolled: true, ready: true,
    workload: { workloadName: w.name, namespace: w.namespace, canonicalService: w.name, canonicalRevision: 'latest', cluster: w.cluster },
    ...(remote ? { cluster: w.cluster, network: `network${remote}`, gateway: GW(remote) } : {}),
  });
  const c1 = { client: inC(wl('demo', 'client', '10.77.1.3', []), 'cluster1'), echo: inC(wl('demo', 'echo', '10.77.2.1', ['demo/echo']), 'cluster1') };
  const c2 = { client: inC(wl('demo', 'client', '10.78.1.3', []), 'cluster2'), echo: inC(wl('demo', 'echo', '10.78.2.1', ['demo/echo']), 'cluster2') };
  // Each cluster's components hold the service with its own endpoint and the other's behind that network's gateway.
  const echoIn = (cluster: string, local: Workload, remote: Workload, remoteNet: number) => ({ ...svc('demo', 'echo', '10.96.0.10'), endpoints: [ep(local), ep(remote, remoteNet)] as Service['endpoints'], cluster });
  const cfg = {
    workloads: [c1.client, c1.echo, c2.client, c2.echo],
    services: [echoIn('cluster1', c1.echo, c2.echo, 2), echoIn('cluster2', c2.echo, c1.echo, 1)],
    policies: [
      { ...config.policies[0]!, cluster: 'cluster1' },
      { name: 'deny-remote', namespace: 'demo', action: 'DENY', scope: 'workload', selector: { app: 'echo' }, rules: [], layer: 'L4', cluster: 'cluster2' },
    ] as Array<AuthorizationPolicy & { cluster: string }>,
  };
  const opened = (v: number, sc: string, dc: string) => tcp('istio_tcp_connections_opened_total', v, { source_cluster: sc, destination_cluster: dc });
  const before = [opened(0, 'cluster1', 'cluster1'), opened(0, 'cluster1', 'cluster2'), opened(0, 'cluster2', 'cluster2')];
  // cluster2's client before its first endpoint was picked: no destination cluster, its own cluster's service.
  const after = [opened(10, 'cluster1', 'cluster1'), opened(20, 'cluster1', 'cluster2'), opened(5, 'cluster2', 'cluster2'), opened(5, 'cluster2', 'unknown')];
  // cluster2's agent refuses cluster1's client: the connection comes from cluster2's network edge
  // (the gateway's address, no pod's), the caller's cluster is in the entry (from its baggage), and
  // a client by the same name runs in cluster2 too.
  const denial = { ...toFlow('agent node2', {
    time: '2026-12-04T10:00:00.000Z', msg: 'connection complete', 'src.addr': '10.78.0.254:56052', 'src.workload': 'client', 'src.namespace': 'demo',
    'src.identity': 'spiffe://cluster.local/ns/demo/sa/client', 'src.cluster': 'cluster1', 'dst.addr': '10.78.2.1:8080', 'dst.service': 'echo.demo.svc.cluster.local',
    'dst.workload': 'echo', 'dst.namespace': 'demo', 'dst.cluster': 'cluster2', direction: 'inbound', error: 'denied: denied by demo/deny-remote: matched a DENY rule (policy demo/deny-remote)',
  })!, cluster: 'cluster2' };
  assert.deepEqual([denial.verdict, denial.source.cluster, denial.destination.cluster], ['denied', 'cluster1', 'cluster2'], 'the access log names both ends\' clusters');
  const g = buildGraph({ before, after, seconds: 10, flows: [denial], config: cfg });

  assert.deepEqual(g.clusters, ['cluster1', 'cluster2']);
  assert.deepEqual(g.nodes.filter((n) => n.kind === 'service').map((n) => [n.cluster, n.namespace, n.name]), [['cluster1', 'demo', 'echo'], ['cluster2', 'demo', 'echo']], 'demo/echo twice, not merged');
  assert.deepEqual(g.nodes.filter((n) => n.kind === 'workload').map((n) => n.id), ['workload:cluster1/demo/client', 'workload:cluster2/demo/client']);
  const byId = (id: string) => { const e = g.edges.find((x) => x.id === id); assert.ok(e, `${id} in ${g.edges.map((x) => x.id).join(', ')}`); return e; };

  const local1 = byId('workload:cluster1/demo/client->service:cluster1/demo/echo');
  assert.equal(local1.connectionRate, 1);
  assert.equal(local1.crossCluster, false);
  assert.deepEqual(local1.via, []);
  assert.deepEqual(local1.policies, [{ name: 'demo/allow-client', action: 'ALLOW' }], 'cluster1\'s policies only');
  assert.equal(local1.denied, 0);

  const cross = byId('workload:cluster1/demo/client->service:cluster2/demo/echo');
  assert.equal(cross.connectionRate, 2);
  assert.equal(cross.crossCluster, true);
  assert.deepEqual(cross.via, ['gateway:cluster2/weft-system/weft-eastwest'], 'into network2 through its east-west gateway');
  assert.deepEqual(cross.policies, [{ name: 'demo/deny-remote', action: 'DENY' }], 'the callee cluster\'s policies, not the caller\'s');
  assert.equal(cross.denied, 1, 'the denial lands on the cross-cluster edge');
  assert.equal(cross.denials[0]!.reporter, 'agent node2 in cluster2');
  const gw = g.nodes.find((n) => n.kind === 'gateway')!;
  assert.deepEqual([gw.cluster, gw.namespace, gw.name], ['cluster2', 'weft-system', 'weft-eastwest'], 'the gateway is drawn in the cluster it leads into');

  const local2 = byId('workload:cluster2/demo/client->service:cluster2/demo/echo');
  assert.equal(local2.connectionRate, 1, 'an unknown destination cluster is the caller\'s');
  assert.equal(local2.crossCluster, false);
  assert.equal(g.edges.length, 3);

  // One cluster's components read alone (a dashboard on one of the clusters): the other cluster's
  // echo is still its own node, but this cluster's policies are not listed for it.
  const untag = <T extends { cluster?: string }>({ cluster: _, ...x }: T) => x;
  const one = { workloads: [c1.client, c1.echo], services: [untag(cfg.services[0]!)], policies: [untag(cfg.policies[0]!)] };
  const alone = buildGraph({ before: [], after: [opened(20, 'cluster1', 'cluster2'), opened(10, 'cluster1', 'cluster1')], seconds: 10, flows: [], config: one });
  assert.deepEqual(alone.clusters, ['cluster1', 'cluster2']);
  const far = alone.edges.find((x) => x.id === 'workload:cluster1/demo/client->service:cluster2/demo/echo')!;
  assert.deepEqual([far.crossCluster, far.via, far.policies], [true, ['gateway:cluster2/weft-system/weft-eastwest'], []]);
  assert.deepEqual(alone.edges.find((x) => x.id === 'workload:cluster1/demo/client->service:cluster1/demo/echo')!.policies, [{ name: 'demo/allow-client', action: 'ALLOW' }]);
});

test('the dashboard server is read-only, answers only to its own address, and serves the UI and the API', async () => {
  const fake = {
    graph: async () => ({ nodes: [], edges: [], clusters: [], windowSeconds: 30 }),
    nodes: async () => [{ node: 'node1', ip: '10.77.0.1', bpf: { programs: [] } }],
    recentFlows: () => [],
    onFlow: () => () => {},
  } as unknown as MeshData;
  const refused: string[] = [];
  const server = dashboardServer({ data: fake, refused: (reason) => refused.push(reason) });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  after(() => { server.closeAllConnections(); server.close(); });
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const page = await fetch(`${base}/`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get('content-security-policy') ?? '', /default-src 'self'/);
  assert.match(await page.text(), /<title>Weft mesh<\/title>/);
  assert.equal((await fetch(`${base}/vendor/cytoscape.min.js`)).status, 200, 'the graph library is served locally, no CDN');
  assert.deepEqual(await (await fetch(`${base}/api/graph`)).json(), { nodes: [], edges: [], clusters: [], windowSeconds: 30 });
  for (const method of ['POST', 'PUT', 'DELETE', 'PATCH']) assert.equal((await fetch(`${base}/api/graph`, { method })).status, 405, `${method} is refused`);
  // DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own Host.
  const rebound = await new Promise<number>((resolve, reject) => {
    import('node:http').then(({ request }) => request(`${base}/api/graph`, { headers: { host: 'evil.example' } }, (res) => { res.resume(); resolve(res.statusCode ?? 0); }).on('error', reject).end());
  });
  assert.equal(rebound, 403);
  assert.equal((await fetch(`${base}/etc/passwd`)).status, 404);
  assert.equal((await fetch(`${base}/../../lib/identity/ca.ts`)).status, 404, 'only the listed files are served');
  // RFC 9112 3.2: a request target that is neither origin-form nor absolute-form (`http://[`) had
  // thrown out of the handler and ended the dashboard (in a cluster, any pod can send it).
  const { connect } = await import('node:net');
  const status = await new Promise<string>((resolve, reject) => {
    const c = connect((server.address() as AddressInfo).port, '127.0.0.1', () => c.end('GET http://[/api/graph HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n'));
    let out = '';
    c.on('data', (d) => (out += String(d)));
    c.on('close', () => resolve(out.split('\r\n')[0] ?? ''));
    c.on('error', reject);
  });
  assert.match(status, /^HTTP\/1\.1 400 /);
  assert.equal((await fetch(`${base}/api/graph`)).status, 200, 'the dashboard still serves');
  assert.deepEqual(refused, ['method', 'method', 'method', 'method', 'host', 'bad_target'], 'each refusal is told, with its reason');
});

// Fetch Metadata (https://www.w3.org/TR/fetch-metadata/, the Resource Isolation Policy of
// https://web.dev/articles/fetch-metadata): a page on another origin, even another port of
// localhost (same-site), can make the operator's browser send GETs to the dashboard (an <img>, a
// no-cors fetch, an EventSource); it cannot read the answers, but each /api/graph reads every
// agent's config dump (on a cluster, through the API server with the operator's credentials) and
// each /api/flows holds a stream. Such requests are refused before any work; the dashboard's own
// page (same-origin), a typed URL (none) and a followed link (a navigation to a document) are not.
test('the dashboard refuses cross-origin requests (Sec-Fetch-Site, Origin) before any work, and serves its own page, typed URLs and followed links', async () => {
  let graphs = 0;
  const fake = {
    graph: async () => { graphs++; return { nodes: [], edges: [], clusters: [], windowSeconds: 30 }; },
    nodes: async () => [], recentFlows: () => [], onFlow: () => () => {},
  } as unknown as MeshData;
  const refused: string[] = [];
  const server = dashboardServer({ data: fake, refused: (reason) => refused.push(reason) });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  after(() => { server.closeAllConnections(); server.close(); });
  const port = (server.address() as AddressInfo).port;
  const base = `http://127.0.0.1:${port}`;
  // node:http, not fetch: fetch sets Sec-Fetch-Mode itself.
  const { request } = await import('node:http');
  const get = (path: string, headers: Record<string, string>) => new Promise<number>((resolve, reject) => {
    request(`${base}${path}`, { headers }, (res) => { resolve(res.statusCode ?? 0); res.destroy(); }).on('error', reject).end();
  });
  for (const site of ['cross-site', 'same-site']) {
    assert.equal(await get('/api/graph', { 'sec-fetch-site': site, 'sec-fetch-mode': 'no-cors', 'sec-fetch-dest': 'image' }), 403, `${site} <img>`);
    assert.equal(await get('/api/flows', { 'sec-fetch-site': site, 'sec-fetch-mode': 'cors', 'sec-fetch-dest': 'empty' }), 403, `${site} EventSource`);
  }
  assert.equal(await get('/api/graph', { origin: 'http://localhost:8080' }), 403, 'an Origin that is not this dashboard (a browser without Fetch Metadata)');
  assert.equal(graphs, 0, 'no work for a refused request');
  assert.deepEqual(refused, ['cross_site', 'cross_site', 'cross_site', 'cross_site', 'cross_site']);
  assert.equal(await get('/api/graph', { 'sec-fetch-site': 'same-origin', 'sec-fetch-mode': 'cors', 'sec-fetch-dest': 'empty', origin: base }), 200, 'the page\'s own fetch');
  assert.equal(await get('/', { 'sec-fetch-site': 'none', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document' }), 200, 'a typed URL');
  assert.equal(await get('/', { 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document' }), 200, 'a followed link');
  assert.equal(await get('/api/graph', {}), 200, 'a client that is not a browser (curl, weftctl) sends no Fetch Metadata');
  assert.equal(graphs, 2);
});

test('live flow streams are bounded (maxStreams): one more gets 503 and is told as `streams`; a closed stream frees its place', async () => {
  const fake = { graph: async () => ({}), nodes: async () => [], recentFlows: () => [], onFlow: () => () => {} } as unknown as MeshData;
  const refused: string[] = [];
  const server = dashboardServer({ data: fake, maxStreams: 2, refused: (reason) => refused.push(reason) });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  after(() => { server.closeAllConnections(); server.close(); });
  const { request } = await import('node:http');
  const { until } = await import('../lab/wait.ts');
  const open = () => new Promise<import('node:http').IncomingMessage>((resolve, reject) => {
    request(`http://127.0.0.1:${(server.address() as AddressInfo).port}/api/flows`, (res) => resolve(res)).on('error', reject).end();
  });
  const a = await open();
  const b = await open();
  assert.deepEqual([a.statusCode, b.statusCode], [200, 200]);
  const c = await open();
  assert.equal(c.statusCode, 503);
  c.resume();
  assert.deepEqual(refused, ['streams']);
  a.destroy();
  await until('a closed stream frees its place', async () => {
    const d = await open();
    d.destroy();
    return d.statusCode === 200;
  }, 5_000, { intervalMs: 50 });
  b.destroy();
});
