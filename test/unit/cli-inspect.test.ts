// Inspection on a cluster (the kube lab's in-process API server): workloads, services, policies,
// waypoints, routes and config-dump --computed give the per-agent and per-waypoint views the
// controller computes, with -n/-A, -o wide/json, --no-headers; certs/bpf/config-dump/proxy-status
// read the agents' and the controller's read-only /debug paths through the pod proxy;
// top reads the agents' and waypoints' metrics through the pod proxy and never writes escape
// codes into a pipe.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { inspectCommands } from '../../cli/commands/inspect.ts';
import { topCommand } from '../../cli/commands/top.ts';
import { describeCommand } from '../../cli/commands/describe.ts';
import { clientStatuses, proxyStatusCommand } from '../../cli/commands/proxy-status.ts';
import { tapCommand } from '../../cli/commands/tap.ts';
import { statusCommand } from '../../cli/commands/local.ts';
import { meshOf } from '../../cli/commands/inspect.ts';
import { chooseTarget } from '../../cli/commands/target.ts';
import { installCompileOptions } from '../../cli/mesh-view.ts';
import { KubeApiError, type KubeClient } from '../../cli/kube.ts';
import { MeshData } from '../../cli/dashboard/data.ts';
import { FakeApiServer } from '../../cli/local/kube/fake-apiserver.ts';
import { authz, ns, pod, svc, waypoint } from './controller-fixtures.ts';
import { runCommands } from './cli-harness.ts';

const dir = mkdtempSync(join(tmpdir(), 'weft-cli-inspect-'));
const api = new FakeApiServer();
let kubeconfig = '';
const metrics: Server[] = [];
let requests = 0;
const debugRequests: string[] = [];
const DEBUG_ANSWERS: Record<string, unknown> = {
  '/debug/certs': { trustBundle: 1, certificates: [{ identity: 'spiffe://cluster.local/ns/shop/sa/reviews-v1', serial: '0a1b2c3d4e5f60718293a4b5c6d7e8f9', issuer: 'O=weft, CN=weft root CA', notAfter: '2026-12-05T10:00:00.000Z', state: 'valid' }] },
  '/debug/bpf': {
    pinRoot: '/sys/fs/bpf/weft', programs: [{ name: 'weft_connect4', id: 41 }], links: [{ program: 'weft_connect4', pin: 'l', id: 7, progId: 41 }],
    pods: [{ netnsCookie: '4097', podIp: '10.1.0.11', mode: 'STRICT', agentIp: '192.168.0.1', agentPort: 15001 }], destinations: [{ ip: '10.96.1.10', port: 80 }],
    excludedPorts: [15000], counters: { connect_redirected: 3 }, podCounters: { '4097': { connect_redirected: 3 } }, pins: { weft_pods: '/sys/fs/bpf/weft/weft_pods', weft_dests: 'd', weft_counters: 'c', weft_spliced: '/sys/fs/bpf/weft/weft_spliced' },
    spliced: [{ client: '10.1.0.11:40000->192.168.0.1:15001', server: '10.1.0.12:8080->10.1.0.12:33000', clientPod: '10.1.0.11', clientNetnsCookie: '4097', bytesFromClient: '1048576', bytesFromServer: '512', passedFromClient: '65536', passedFromServer: '0', fallbacks: { fromClient: 1, fromServer: 0 }, reads: { client: ['recvmsg'], server: ['recvmsg', 'FIONREAD'] } }],
  },
  '/debug/config_dump': { node: 'node-a', version: '12', config: { node: 'node-a', workloads: [], services: [], policies: [], peerAuthentications: [], waypoints: [], trafficPolicies: [] }, enrolled: {} },
  '/debug/clients': { systemVersion: '9', clients: [{ id: 'node-a', kind: 'agent', namespace: '', ackedVersion: '9' }, { id: 'shop/waypoint-0', kind: 'waypoint', namespace: 'shop', ackedVersion: '8', nackedVersion: '9' }] },
};

before(async () => {
  await api.start();
  kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, stringify({ apiVersion: 'v1', kind: 'Config', clusters: [{ name: 'lab', cluster: { server: api.url, 'insecure-skip-tls-verify': true } }], users: [{ name: 'u', user: {} }], contexts: [{ name: 'lab', context: { cluster: 'lab', user: 'u' } }], 'current-context': 'lab' }));
  const wp = { ...waypoint('shop', 'waypoint'), status: { addresses: [{ type: 'IPAddress' as const, value: '10.96.9.9' }], conditions: [{ type: 'Ready', status: 'True' as const, reason: 'Ready', message: '', lastTransitionTime: '2026-01-01T00:00:00Z' }] } };
  for (const o of [
    ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'waypoint' }), ns('web', { 'weft.dev/dataplane-mode': 'ambient' }), wp,
    pod('shop', 'reviews-v1', { labels: { app: 'reviews' }, node: 'node-a', ip: '10.1.0.11' }), pod('shop', 'ratings', { node: 'node-b', ip: '10.1.0.12' }), pod('web', 'front', { node: 'node-b', ip: '10.1.0.13' }),
    svc('shop', 'reviews', { app: 'reviews' }, '10.96.1.10'), svc('web', 'front', { app: 'front' }, '10.96.2.10'),
    authz('shop', 'allow-web', { selector: { matchLabels: { app: 'ratings' } }, rules: [{ from: [{ source: { namespaces: ['web'] } }] }] }),
    authz('shop', 'reviews-get', { targetRefs: [{ group: '', kind: 'Service', name: 'reviews' }], rules: [{ to: [{ operation: { methods: ['GET'] } }] }] }),
    { apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'strict', namespace: 'shop' }, spec: { mtls: { mode: 'STRICT' } } },
    { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'reviews', namespace: 'shop' }, spec: { parentRefs: [{ group: '', kind: 'Service', name: 'reviews' }], rules: [{ backendRefs: [{ name: 'reviews', port: 80 }] }] } },
  ]) api.apply(o);
  // An agent and a waypoint pod whose metrics the pod proxy reaches; each scrape counts 10 more requests.
  const s = createServer((_req, res) => {
    requests += 10;
    res.writeHead(200, { 'content-type': 'text/plain' }).end(`istio_requests_total{destination_service="reviews.shop.svc.cluster.local",destination_workload="reviews-v1",response_code="200"} ${requests}\n`);
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  metrics.push(s);
  api.apply({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'waypoint-0', namespace: 'shop', labels: { 'weft.dev/waypoint': 'waypoint', 'weft.dev/dataplane-mode': 'none' } }, spec: { nodeName: 'node-a' }, status: { phase: 'Running', podIP: '10.1.0.99' } });
  // An agent (host network: its pod address is the node's) and a controller, answering their
  // read-only /debug paths on the metrics port as lib/debug-http.ts serves them.
  const debug = createServer((req, res) => {
    debugRequests.push(req.url ?? '');
    if (req.url?.startsWith('/debug/flows')) {
      // The agent's live flows (NDJSON), kept open as the real stream is.
      res.writeHead(200, { 'content-type': 'application/x-ndjson' });
      res.write(JSON.stringify({ type: 'hello', reporter: 'agent' }) + '\n');
      for (const [i, flags] of [[1, undefined], [2, 'DENY']] as const) {
        res.write(JSON.stringify({ time: '2026-12-04T18:00:0' + i + '.000Z', type: 'access', node: 'node-a', msg: 'connection complete', 'src.addr': `10.1.0.13:4000${i}`, 'src.workload': 'front', 'src.namespace': 'web', 'dst.addr': '10.96.1.10:80', 'dst.service': 'reviews.shop.svc.cluster.local', direction: 'outbound', connection_security_policy: 'mutual_tls', bytes_sent: 10 * i, bytes_recv: 20, duration: '3ms', ...(flags ? { response_flags: flags, error: 'denied: policy shop/allow-web' } : {}) }) + '\n');
      }
      return;
    }
    const body = DEBUG_ANSWERS[req.url ?? ''];
    if (req.url === '/healthz/ready') res.writeHead(200, { 'content-type': 'text/plain' }).end('ready\n');
    else if (!body) res.writeHead(req.url === '/metrics' ? 200 : 404).end();
    else res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  });
  await new Promise<void>((r) => debug.listen(0, '127.0.0.1', r));
  metrics.push(debug);
  const parts = { 'app.kubernetes.io/part-of': 'weft' };
  api.apply({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'weft-agent-x1', namespace: 'weft-system', labels: { ...parts, 'app.kubernetes.io/name': 'weft-agent' } }, spec: { nodeName: 'node-a', hostNetwork: true }, status: { phase: 'Running', podIP: '192.168.0.1' } });
  api.apply({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'weft-controller-y2', namespace: 'weft-system', labels: { ...parts, 'app.kubernetes.io/name': 'weft-controller' } }, spec: { nodeName: 'node-b' }, status: { phase: 'Running', podIP: '10.1.0.50' } });
  // A tenant's pod wearing the agent's and the controller's labels in its own namespace, answering
  // with flows, certificates and client lists of its choosing: not a component of the mesh. (Host
  // network, as the agent's, so that it is no workload either and the listings above stay as they are.)
  const spoof = createServer((req, res) => {
    debugRequests.push(`spoof ${req.url ?? ''}`);
    if (req.url?.startsWith('/debug/flows')) {
      res.writeHead(200, { 'content-type': 'application/x-ndjson' });
      res.write(JSON.stringify({ time: '2026-12-04T18:00:09.000Z', type: 'access', node: 'node-evil', msg: 'connection complete', 'src.addr': '10.1.0.66:1', 'src.workload': 'SPOOFED', 'src.namespace': 'web', 'dst.addr': '10.96.1.10:80', 'dst.service': 'reviews.shop.svc.cluster.local', direction: 'outbound' }) + '\n');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ trustBundle: 1, certificates: [{ identity: 'spiffe://cluster.local/ns/shop/sa/SPOOFED', serial: '1', issuer: 'x', notAfter: '2026-12-05T10:00:00.000Z', state: 'valid' }], systemVersion: '1', clients: [{ id: 'SPOOFED', kind: 'agent', namespace: '', ackedVersion: '1' }] }));
  });
  await new Promise<void>((r) => spoof.listen(0, '127.0.0.1', r));
  metrics.push(spoof);
  for (const app of ['weft-agent', 'weft-controller']) {
    api.apply({ apiVersion: 'v1', kind: 'Pod', metadata: { name: `tenant-${app}`, namespace: 'shop', labels: { ...parts, 'app.kubernetes.io/name': app } }, spec: { nodeName: 'node-evil', hostNetwork: true }, status: { phase: 'Running', podIP: '10.1.0.66' } });
  }
  const at = (srv: Server) => ({ host: '127.0.0.1', port: (srv.address() as { port: number }).port });
  api.podProxyTarget = (_ns, p, port) => p.startsWith('tenant-') ? at(spoof) : (port === 15021 && p.startsWith('weft-') ? at(debug) : port !== 15020 ? undefined : p === 'waypoint-0' ? at(s) : p.startsWith('weft-') ? at(debug) : undefined);
});
after(async () => {
  await api.stop();
  for (const s of metrics) s.close();
  rmSync(dir, { recursive: true, force: true });
});

const run = (args: string[], terminal = false) => runCommands((io) => [...inspectCommands(io), topCommand(io), describeCommand(io)], [...args, '--kubeconfig', kubeconfig], { terminal });

test('workloads on a cluster: each node agent\'s enrolled pods, filtered by -n, wide and without headers', async () => {
  const r = await run(['workloads']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, [
    'NAMESPACE    NAME                CLUSTER     NODE    IP         MODE        ENROLLED  IDENTITY',
    'shop         reviews-v1          Kubernetes  node-a  10.1.0.11  STRICT      yes       spiffe://cluster.local/ns/shop/sa/reviews-v1',
    // Agents also know the pods they do not capture (the waypoint's, dataplane-mode none; the
    // controller's); a host-network pod (the agent) is not a workload.
    'shop         waypoint-0          Kubernetes  node-a  10.1.0.99  STRICT      no        spiffe://cluster.local/ns/shop/sa/default',
    'shop         ratings             Kubernetes  node-b  10.1.0.12  STRICT      yes       spiffe://cluster.local/ns/shop/sa/ratings',
    'web          front               Kubernetes  node-b  10.1.0.13  PERMISSIVE  yes       spiffe://cluster.local/ns/web/sa/front',
    'weft-system  weft-controller-y2  Kubernetes  node-b  10.1.0.50  PERMISSIVE  no        spiffe://cluster.local/ns/weft-system/sa/default',
    ''].join('\n'));
  const web = await run(['workloads', '-n', 'web', '--no-headers', '-o', 'wide']);
  assert.equal(web.stdout, 'web  front  Kubernetes  node-b  10.1.0.13  PERMISSIVE  yes  web/front  spiffe://cluster.local/ns/web/sa/front\n');
  const one = await run(['workloads', '--node', 'node-a', '-o', 'json']);
  assert.deepEqual(JSON.parse(one.stdout).map((w: { name: string; cluster: string }) => [w.name, w.cluster]), [['reviews-v1', 'Kubernetes'], ['waypoint-0', 'Kubernetes']]);
});

test('services, policies, waypoints and routes on a cluster', async () => {
  const s = await run(['services', '-A']);
  assert.match(s.stdout, /^shop\s+reviews\s+10\.96\.1\.10\s+80\/http\s+Kubernetes\s+10\.1\.0\.11\s+shop\/waypoint$/m);
  assert.match(s.stdout, /^web\s+front\s+10\.96\.2\.10\s+80\/http\s+Kubernetes\s+10\.1\.0\.13\s+-$/m);
  const p = await run(['policies', '-o', 'wide']);
  assert.match(p.stdout, /^shop\s+allow-web\s+ALLOW\s+workload\s+L4\s+1\s+app=ratings$/m);
  assert.doesNotMatch(p.stdout, /reviews-get/, 'a targetRefs policy is the waypoint\'s, not the agents\'');
  const w = await run(['waypoints']);
  // A running waypoint pod's address wins over the status (compile.ts), as the controller decides.
  assert.match(w.stdout, /^shop\s+waypoint\s+10\.1\.0\.99:15008\s+True\s+spiffe:\/\/cluster\.local\/ns\/shop\/sa\/waypoint$/m);
  const rt = await run(['routes', '-o', 'wide']);
  assert.match(rt.stdout, /^shop\s+reviews\s+HTTPRoute\s+shop\/reviews\s+shop\/waypoint\s+1\s+reviews:1$/m);
  // --computed: what the controller sends each, from the API's objects (no --debug-endpoints needed).
  const dump = await run(['config-dump', '--waypoints', '--computed']);
  assert.deepEqual(JSON.parse(dump.stdout).map((d: { pod: string; config: { routes: unknown[] } }) => [d.pod, d.config.routes.length]), [['shop/waypoint', 1]]);
});

test('config-dump on a cluster: what each agent holds, read from it through the pod proxy as on the local mesh', async () => {
  const r = await run(['config-dump', '--node', 'node-a']);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), [{ node: 'node-a', data: DEBUG_ANSWERS['/debug/config_dump'] }]);
  assert.ok(debugRequests.includes('/debug/config_dump'));
  const y = await run(['config-dump', '-o', 'yaml']);
  assert.match(y.stdout, /^- node: node-a\n  data:\n    node: node-a\n    version: "12"$/m);
});

test('certs and bpf on a cluster: each agent\'s read-only /debug path on its metrics port, through the API server\'s pod proxy', async () => {
  const r = await run(['certs']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, [
    'NODE    IDENTITY                                      SERIAL            EXPIRES                   STATE  ISSUER',
    'node-a  spiffe://cluster.local/ns/shop/sa/reviews-v1  0a1b2c3d4e5f6071  2026-12-05T10:00:00.000Z  valid  O=weft, CN=weft root CA',
    ''].join('\n'));
  const b = await run(['bpf', '--node', 'node-a']);
  assert.equal(b.code, 0, b.stderr);
  assert.match(b.stdout, /^weft_connect4\s+41\s+7\s+bpftool prog show id 41$/m);
  assert.match(b.stdout, /^10\.1\.0\.11\s+STRICT\s+-\s+4097\s+3\s+0\s+0$/m);
  // A same-node connection spliced pod to pod: its two pod sockets, the kernel's bytes each way,
  // and what each side sent by TCP through the agent instead.
  // and how each pod was seen reading its socket.
  assert.match(b.stdout, /^SPLICED FROM POD\s+CLIENT SOCKET\s+SERVER SOCKET\s+BYTES FROM CLIENT\s+BYTES FROM SERVER\s+BY TCP \(CLIENT\/SERVER\)\s+READ WITH \(CLIENT\/SERVER\)$/m);
  assert.match(b.stdout, /^10\.1\.0\.11\s+10\.1\.0\.11:40000->192\.168\.0\.1:15001\s+10\.1\.0\.12:8080->10\.1\.0\.12:33000\s+1048576\s+512\s+65536\/0 \(1\/0 times\)\s+recvmsg\/recvmsg\+FIONREAD$/m);
  assert.match(b.stdout, /^ {2}bpftool map dump pinned \/sys\/fs\/bpf\/weft\/weft_spliced$/m);
  assert.ok(debugRequests.includes('/debug/certs') && debugRequests.includes('/debug/bpf'), 'read through the pod proxy at :15020/debug/');
  const none = await run(['bpf', '--node', 'node-z']);
  assert.equal(none.code, 1);
  assert.match(none.stderr, /no node named node-z runs an agent \(nodes: node-a\)/);
});

test('top on a cluster reads metrics through the pod proxy; -o json is one object a line; no escape codes into a pipe', async () => {
  const j = await run(['top', '--once', '-i', '0.5', '-o', 'json']);
  assert.equal(j.code, 0, j.stderr);
  const o = JSON.parse(j.stdout.trim());
  assert.deepEqual(o.rows.map((r: { service: string; layer: string; workload: string; sharePercent: number }) => [r.service, r.layer, r.workload, r.sharePercent]), [['reviews.shop.svc.cluster.local', 'L7', 'reviews-v1', 100]]);
  const pipe = await run(['top', '--count', '2', '-i', '0.5']);
  assert.equal(pipe.code, 0, pipe.stderr);
  assert.doesNotMatch(pipe.stdout, /\x1b/, 'no escape codes into a pipe');
  assert.equal(pipe.stdout.match(/^SERVICE\s+PATH/gm)?.length, 2, 'one table per refresh');
  const tty = await run(['top', '--count', '1', '-i', '0.5'], true);
  assert.match(tty.stdout, /^\x1b\[2J\x1b\[H weft top: http:\/\/127\.0\.0\.1:\d+, every 0\.5 s/);
});

test('describe pod on a cluster: each decision with the object that made it', async () => {
  const r = await run(['describe', 'pod', 'reviews-v1', '-n', 'shop']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, [
    'Pod:        shop/reviews-v1',
    'Node:       node-a',
    'IP:         10.1.0.11',
    'Identity:   spiffe://cluster.local/ns/shop/sa/reviews-v1',
    'Enrolled:   yes (Namespace shop label weft.dev/dataplane-mode=ambient)',
    'Mode:       x',
  ].join('\n').replace('Mode:       x', 'mTLS mode:  STRICT (PeerAuthentication shop/strict (namespace scope))') + '\n' + [
    'Waypoint:   shop/waypoint for traffic addressed to the pod (Namespace shop label weft.dev/use-waypoint)',
    'Services:   ',
    '  shop/reviews via waypoint shop/waypoint',
    'Policies:   ',
    '  shop/reviews-get: ALLOW L7, enforced by waypoint shop/waypoint (Service shop/reviews): allows requests to shop/reviews matching 1 rule(s)',
    ''].join('\n'));
  const j = await run(['describe', 'pod', 'ratings', '-n', 'shop', '-o', 'json']);
  assert.deepEqual(JSON.parse(j.stdout).policies.map((p: { name: string; enforcedBy: string }) => [p.name, p.enforcedBy]), [['shop/allow-web', 'node agent (workload scope)']]);
  const none = await run(['describe', 'pod', 'nope', '-n', 'shop']);
  assert.equal(none.code, 1);
  assert.match(none.stderr, /^weftctl describe pod: no pod shop\/nope$/m);
});

test('proxy-status: NACKED when a client refused a version newer than its last acknowledged one, else ACKED (an older ACK is normal: the controller pushes only changed views)', async () => {
  const rows = clientStatuses({ systemVersion: '7', clients: [
    { id: 'node-b', kind: 'agent', namespace: '', ackedVersion: '7' },
    { id: 'node-a', kind: 'agent', namespace: '', ackedVersion: '6' },
    { id: 'shop/waypoint-0', kind: 'waypoint', namespace: 'shop', ackedVersion: '6', nackedVersion: '7' },
    { id: 'web/waypoint-0', kind: 'waypoint', namespace: 'web', ackedVersion: '7', nackedVersion: '5' },
    { id: 'node-c', kind: 'agent', namespace: '', ackedVersion: '10', nackedVersion: '9' },
  ] });
  assert.deepEqual(rows.map((r) => [r.kind, r.id, r.state]), [['agent', 'node-a', 'ACKED'], ['agent', 'node-b', 'ACKED'], ['agent', 'node-c', 'ACKED'], ['waypoint', 'shop/waypoint-0', 'NACKED'], ['waypoint', 'web/waypoint-0', 'ACKED']]);
  // On a cluster: the controller's /debug/clients through the pod proxy; a NACK exits 1.
  const r = await runCommands((io) => [proxyStatusCommand(io)], ['proxy-status', '--kubeconfig', kubeconfig]);
  assert.equal(r.code, 1, r.stderr);
  assert.equal(r.stdout, [
    'KIND      CLIENT           ACKED  NACKED  CONTROLLER  STATE',
    'agent     node-a           9      -       9           ACKED',
    'waypoint  shop/waypoint-0  8      9       9           NACKED',
    ''].join('\n'));
});

test('tap on a cluster: each agent\'s /flows stream through the pod proxy, filtered, -o json', async () => {
  const all = await runCommands((io) => [tapCommand(io)], ['tap', '--kubeconfig', kubeconfig, '--count', '2', '-o', 'json']);
  assert.equal(all.code, 0, all.stderr);
  const flows = all.stdout.trim().split('\n').map((l) => JSON.parse(l) as { reporter: string; verdict: string; source: { workload: string }; destination: { service: string } });
  assert.deepEqual(flows.map((f) => [f.reporter, f.source.workload, f.destination.service, f.verdict]), [
    ['agent node-a', 'front', 'reviews.shop.svc.cluster.local', 'allowed'],
    ['agent node-a', 'front', 'reviews.shop.svc.cluster.local', 'denied']]);
  const denied = await runCommands((io) => [tapCommand(io)], ['tap', '--kubeconfig', kubeconfig, '--count', '1', '--verdict', 'denied']);
  assert.match(denied.stdout, /^18:00:02\.000\s+agent node-a\s+DENIED\s+web\/front \(10\.1\.0\.13:40002\) → reviews\.shop\.svc\.cluster\.local \(10\.96\.1\.10:80\)\s+20B out 20B in\s+policy shop\/allow-web/m);
  assert.ok(debugRequests.some((u) => u.startsWith('/debug/flows')));
});

test('the dashboard\'s data on a cluster: graph config from the API\'s objects, BPF state and flows from the agents through the pod proxy', async () => {
  const data = new MeshData(meshOf(await chooseTarget({ kubeconfig, prefix: 'weft', stateDir: '/nonexistent' }), (line) => assert.fail(line)), { scrapeIntervalMs: 100, windowSeconds: 5 });
  data.start();
  try {
    const config = await data.config();
    assert.ok(config.services.some((s) => s.name === 'reviews' && s.namespace === 'shop'));
    assert.ok(config.policies.some((p) => p.name === 'reviews-get'), 'the waypoint\'s policies too');
    const nodes = await data.nodes();
    assert.deepEqual(nodes.map((n) => [n.node, n.ip, (n.bpf as { programs: Array<{ name: string }> }).programs[0]!.name]), [['node-a', '192.168.0.1', 'weft_connect4']]);
    const deadline = Date.now() + 10_000;
    while (data.recentFlows().length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(data.recentFlows().map((f) => f.verdict), ['allowed', 'denied']);
    // Metrics are scraped from the components through the pod proxy too (the graph from them is
    // dashboard.test.ts's subject).
    const scraped = requests;
    const until = Date.now() + 10_000;
    while (requests === scraped && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    assert.ok(requests > scraped, 'the waypoint\'s metrics were read through the pod proxy');
    assert.ok(Array.isArray((await data.graph()).edges));
  } finally {
    data.stop();
  }
});

test('status on a cluster: each agent\'s readiness through the pod proxy (:15021/healthz/ready)', async () => {
  const r = await runCommands((io) => [statusCommand(io)], ['status', '--kubeconfig', kubeconfig]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, 'node-a   ready\n');
});

test('a pod outside the install namespace wearing the agent\'s or controller\'s labels is not read: a tenant cannot feed weftctl flows, certificates or client states; --weft-namespace names where Weft runs', async () => {
  const spoofed = () => debugRequests.filter((u) => u.startsWith('spoof '));
  for (const args of [['certs'], ['bpf']]) {
    const r = await run(args);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /SPOOFED|node-evil/, args.join(' '));
  }
  const ps = await runCommands((io) => [proxyStatusCommand(io)], ['proxy-status', '--kubeconfig', kubeconfig]);
  assert.doesNotMatch(ps.stdout, /SPOOFED/);
  const tap = await runCommands((io) => [tapCommand(io)], ['tap', '--kubeconfig', kubeconfig, '--recent', '--duration', '1', '-o', 'json']);
  assert.doesNotMatch(tap.stdout, /SPOOFED|node-evil/);
  assert.deepEqual(spoofed(), [], 'the tenant\'s pods were never asked');
  // Where Weft is installed elsewhere, --weft-namespace says so (here: the tenant's namespace).
  const there = await run(['certs', '--weft-namespace', 'shop']);
  assert.match(there.stdout, /^node-evil\s+spiffe:\/\/cluster\.local\/ns\/shop\/sa\/SPOOFED/m);
});

// What the computed views show is what the controller sends each agent: a pod's labels, per-port
// mTLS modes and Telemetry settings go to its own node's agent only (controller/src/xds/views.ts
// remoteWorkload, agentForm), and principals are compiled for the install's trust domain and its
// aliases (Istio's trust-domain migration,
// https://istio.io/latest/docs/tasks/security/authorization/authz-td-migration/), which weftctl
// reads from the controller Deployment's command line in the install namespace.
test('the computed views of a cluster are what each agent holds: another node\'s pod without its labels, principals and identities under the install\'s trust domain and aliases', async () => {
  const controller = { apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'weft-controller', namespace: 'weft-system' }, spec: { selector: { matchLabels: { app: 'c' } }, template: { metadata: { labels: { app: 'c' } }, spec: { containers: [{ name: 'controller', image: 'weft:test', args: ['controller', '--kube', '--trust-domain', 'example.org', '--trust-domain-alias', 'old.example', '--root-namespace', 'weft-system'] }] } } } };
  api.apply(controller);
  api.apply(authz('shop', 'by-principal', { selector: { matchLabels: { app: 'reviews' } }, rules: [{ from: [{ source: { principals: ['cluster.local/ns/web/sa/front'] } }] }] }));
  try {
    const agents = await meshOf(await chooseTarget({ kubeconfig, prefix: 'weft', stateDir: '/nonexistent' }), (line) => assert.fail(line)).agents();
    const at = (node: string) => agents.find((a) => a.node === node)!.config;
    const reviews = (node: string) => at(node).workloads.find((w) => w.name === 'reviews-v1')!;
    assert.deepEqual(reviews('node-a').labels, { app: 'reviews' }, 'its own node\'s agent holds its labels');
    assert.deepEqual(reviews('node-b').labels, {}, 'another node\'s agent is sent it without labels');
    assert.equal('telemetry' in reviews('node-b') || 'portModes' in reviews('node-b'), false);
    assert.equal(reviews('node-a').spiffeId, 'spiffe://example.org/ns/shop/sa/reviews-v1');
    assert.deepEqual(at('node-a').policies.find((p) => p.name === 'by-principal')?.rules[0]?.from[0]?.principals, ['example.org/ns/web/sa/front', 'old.example/ns/web/sa/front']);
    const d = await run(['describe', 'pod', 'reviews-v1', '-n', 'shop']);
    assert.match(d.stdout, /^Identity: +spiffe:\/\/example\.org\/ns\/shop\/sa\/reviews-v1$/m);
  } finally {
    api.remove('Deployment', 'weft-system', 'weft-controller');
    api.remove('AuthorizationPolicy', 'shop', 'by-principal');
  }
});

// weftctl may be of another version than the installed controller, and its user may read some
// namespaces only: the install's compile options are read from the four flags the compile takes
// (controller/src/main.ts compileOptionsOfArgs), flags it does not know passed over; a Deployment
// that may not be read (403) or whose compile flags do not parse gives the controller's defaults,
// with one line saying so and why, where the whole command failed.
test('the install\'s compile options: a controller flag weftctl does not know is passed over; a Deployment it may not read (403) or whose compile flags do not parse gives the defaults, with one warning naming why', async () => {
  const deployment = (args: string[]) => ({ spec: { template: { spec: { containers: [{ name: 'controller', args }] } } } });
  const kubeOf = (get: (path: string) => unknown): KubeClient => ({ get: async (path: string) => get(path) }) as unknown as KubeClient;
  const warnings: string[] = [];
  const warn = (line: string) => warnings.push(line);
  const newer = await installCompileOptions(kubeOf(() => deployment(['controller', '--kube', '--flag-of-a-later-version', 'x', '--trust-domain', 'example.org', '--another-new-one', '--trust-domain-alias', 'old.example', '--root-namespace', 'mesh-root', '--cluster-id', 'east'])), 'weft-system', warn);
  assert.deepEqual(newer, { trustDomain: 'example.org', trustDomainAliases: ['old.example'], rootNamespace: 'mesh-root', clusterId: 'east' });
  assert.deepEqual(warnings, []);
  const forbidden = await installCompileOptions(kubeOf((path) => { throw new KubeApiError(path, 403, 'deployments.apps "weft-controller" is forbidden: User "dev" cannot get resource "deployments"'); }), 'weft-system', warn);
  assert.deepEqual(forbidden, {});
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, /^compiled with the controller's defaults \(trust domain cluster\.local, no aliases, root namespace weft-system\): Deployment weft-system\/weft-controller may not be read \(.*forbidden/);
  warnings.length = 0;
  for (const args of [['controller', '--kube', '--trust-domain'], ['controller', '--trust-domain', 'Not A Domain!']]) {
    assert.deepEqual(await installCompileOptions(kubeOf(() => deployment(args)), 'weft-system', warn), {}, args.join(' '));
    assert.equal(warnings.length, 1, args.join(' '));
    assert.match(warnings[0]!, /^compiled with the controller's defaults .*: the command line of Deployment weft-system\/weft-controller does not parse: .*--trust-domain/, args.join(' '));
    warnings.length = 0;
  }
  // Other errors still fail the command (the API server down, a 500).
  await assert.rejects(installCompileOptions(kubeOf((path) => { throw new KubeApiError(path, 500, 'boom'); }), 'weft-system', warn), /500 boom/);
  assert.deepEqual(warnings, []);
});
