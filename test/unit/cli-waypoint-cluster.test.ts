// weftctl waypoint apply | list | status | delete on a cluster, through the lab API server
// (cli/local/kube/fake-apiserver.ts): the Waypoint object by server-side apply (field manager weftctl),
// the namespace label for enrolment, and readiness read the way it is read on the local mesh: the
// waypoint pods' readiness port and each node agent's config dump, here through the API server's
// pod proxy. The test plays the controller (it makes the waypoint's pod and tells the agents) and
// plays the components (small HTTP servers the pod proxy reaches).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waypointCommand } from '../../cli/commands/waypoint.ts';
import { FakeApiServer } from '../../cli/local/kube/fake-apiserver.ts';
import { READINESS_PATH } from '../../lib/defaults.ts';
import { DEBUG_TOKEN_HEADER, DEBUG_TOKEN_SECRET } from '../../lib/debug-http.ts';
import { DEBUG_GRANT_HEADER } from '../../lib/identity/debug-grant.ts';
import { runCommands } from './cli-harness.ts';

const dir = mkdtempSync(join(tmpdir(), 'weft-cli-wp-'));
const api = new FakeApiServer();
let kubeconfig = '';
const servers: http.Server[] = [];
/** What each agent holds (its config dump's waypoints); `debug: false` answers 404 as an agent installed without --debug-endpoints. */
const agents = new Map<string, { waypoints: unknown[]; debug: boolean }>([['node-a', { waypoints: [], debug: true }], ['node-b', { waypoints: [], debug: true }]]);
const targets = new Map<string, { host: string; port: number }>();

async function serve(handler: (path: string, headers: http.IncomingHttpHeaders) => { status: number; body: string }): Promise<{ host: string; port: number }> {
  const s = http.createServer((req, res) => {
    const r = handler(req.url ?? '/', req.headers);
    res.writeHead(r.status, { 'content-type': 'application/json' }).end(r.body);
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  servers.push(s);
  return { host: '127.0.0.1', port: (s.address() as AddressInfo).port };
}

const part = { 'app.kubernetes.io/part-of': 'weft', 'app.kubernetes.io/name': 'weft-agent' };
const WP = { namespace: 'shop', name: 'waypoint', port: 15008, spiffeId: 'spiffe://cluster.local/ns/shop/sa/waypoint' };

before(async () => {
  await api.start();
  kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, api.kubeconfig());
  for (const [node, state] of agents) {
    api.apply({ apiVersion: 'v1', kind: 'Node', metadata: { name: node } });
    api.apply({ apiVersion: 'v1', kind: 'Pod', metadata: { name: `weft-agent-${node}`, namespace: 'weft-system', labels: part }, spec: { nodeName: node, hostNetwork: true }, status: { phase: 'Running', podIP: node === 'node-a' ? '10.0.0.1' : '10.0.0.2' } });
    targets.set(`weft-system/weft-agent-${node}:15020`, await serve((path) => {
      if (!state.debug) return { status: 404, body: '404 page not found' };
      return path === '/debug/config_dump' ? { status: 200, body: JSON.stringify({ node, version: '3', config: { node, workloads: [], services: [], policies: [], peerAuthentications: [], trafficPolicies: [], waypoints: state.waypoints }, enrolled: {} }) } : { status: 404, body: 'no' };
    }));
  }
  // The controller signs a waypoint pod's debug grant for whoever holds the install's token
  // (controller/src/main.ts /debug/waypoint-grant); the waypoint's /debug paths want that grant.
  api.apply({ apiVersion: 'v1', kind: 'Secret', metadata: { name: DEBUG_TOKEN_SECRET, namespace: 'weft-system' }, data: { token: Buffer.from('install-token').toString('base64') } });
  api.apply({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'weft-controller-0', namespace: 'weft-system', labels: { ...part, 'app.kubernetes.io/name': 'weft-controller' } }, spec: { nodeName: 'node-a' }, status: { phase: 'Running', podIP: '10.0.0.9' } });
  targets.set('weft-system/weft-controller-0:15020', await serve((path, headers) => {
    const u = new URL(path, 'http://controller');
    if (u.pathname !== '/debug/waypoint-grant' || headers[DEBUG_TOKEN_HEADER] !== 'install-token') return { status: 403, body: '' };
    return { status: 200, body: JSON.stringify({ grant: `grant-for-${u.searchParams.get('waypoint')}/${u.searchParams.get('pod')}`, expires: new Date(Date.now() + 300_000).toISOString() }) };
  }));
  // The waypoint replica: its readiness port and its own config dump (version 7), to its own grant only.
  targets.set('shop/waypoint-5d8f-x2:15021', await serve((path) => (path === READINESS_PATH ? { status: 200, body: 'ready' } : { status: 404, body: '' })));
  targets.set('shop/waypoint-5d8f-x2:15020', await serve((path, headers) => {
    if (headers[DEBUG_GRANT_HEADER] !== 'grant-for-shop/waypoint/waypoint-5d8f-x2') return { status: 403, body: '' };
    return path === '/debug/config_dump' ? { status: 200, body: JSON.stringify({ version: 7, config: {} }) } : { status: 404, body: '' };
  }));
  api.podProxyTarget = (ns, pod, port) => targets.get(`${ns}/${pod}:${port}`);
});

after(async () => {
  for (const s of servers) s.close();
  await api.stop();
  rmSync(dir, { recursive: true, force: true });
});

const run = (args: string[]) => runCommands((io) => [waypointCommand(io)], ['waypoint', ...args, '--kubeconfig', kubeconfig]);

/** The controller's part: once the Waypoint object exists, its pod runs and the agents learn it is ready. */
async function playController(): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!api.get('Waypoint', 'shop', 'waypoint')) {
    if (Date.now() > deadline) throw new Error('the Waypoint object was never written');
    await new Promise((r) => setTimeout(r, 20));
  }
  api.apply({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'waypoint-5d8f-x2', namespace: 'shop', labels: { 'weft.dev/waypoint': 'waypoint' } }, spec: { nodeName: 'node-b' }, status: { phase: 'Running', podIP: '10.244.1.9' } });
  for (const a of agents.values()) a.waypoints = [{ ...WP, address: '10.96.5.5', ready: true }];
}

test('waypoint apply on a cluster writes the Waypoint by server-side apply, labels the namespace, and waits until the pod and every agent say ready', async () => {
  const bad = await run(['apply', '-n', 'shop', '--max-requests', '0']);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /--max-requests 0: give a whole number of requests from 1 to 1000000/);
  const node = await run(['apply', '-n', 'shop', '--node', 'node-a']);
  assert.equal(node.code, 1);
  assert.match(node.stderr, /^weftctl waypoint apply: --node places the pod on the local mesh; on a cluster the scheduler places the waypoint's pods$/m);
  const mode = await run(['apply', '-n', 'shop', '--quota-redis', 'redis://10.0.0.7:6379', '--quota-failure-mode', 'maybe']);
  assert.equal(mode.code, 1);
  assert.match(mode.stderr, /^weftctl waypoint apply: Waypoint shop\/waypoint: spec\.quotaStore\.failureMode: "maybe" is not one of open, closed$/m);
  assert.equal(api.get('Waypoint', 'shop', 'waypoint'), undefined, 'a refused apply writes nothing');
  assert.ok(!api.requests.some((q) => q.method !== 'GET'), 'nor sends any write');

  const [r] = await Promise.all([run(['apply', '-n', 'shop', '--enroll-namespace', '--max-requests', '300', '--timeout', '20']), playController()]);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.equal(r.stdout, [
    'waypoint shop/waypoint created: the controller starts its Deployment and Service',
    'namespace shop labelled weft.dev/use-waypoint=waypoint: its services now use the waypoint',
    'waypoint shop/waypoint ready at 10.96.5.5, identity spiffe://cluster.local/ns/shop/sa/waypoint',
    '',
  ].join('\n'));
  const wp = api.get('Waypoint', 'shop', 'waypoint') as { spec?: { maxRequests?: number }; metadata: { managedFields?: Array<{ manager: string }> } };
  assert.equal(wp.spec?.maxRequests, 300);
  assert.ok(wp.metadata.managedFields?.some((m) => m.manager === 'weftctl'), 'owned by field manager weftctl');
  const ns = api.get('Namespace', undefined, 'shop') as { metadata: { labels?: Record<string, string> } };
  assert.equal(ns.metadata.labels?.['weft.dev/use-waypoint'], 'waypoint');

  const again = await run(['apply', '-n', 'shop', '--enroll-namespace', '--max-requests', '300']);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, /^waypoint shop\/waypoint already exists; unchanged$/m);
  assert.match(again.stdout, /^namespace shop already uses waypoint waypoint$/m);
});

test('waypoint list and status on a cluster read the replicas through the pod proxy and each agent\'s view', async () => {
  const l = await run(['list', '-o', 'wide']);
  assert.equal(l.code, 0, l.stderr);
  assert.match(l.stdout, /^NAMESPACE\s+NAME\s+ADDRESSES\s+READY\s+PODS\s+IDENTITY$/m);
  assert.match(l.stdout, /^shop\s+waypoint\s+10\.96\.5\.5\s+True\s+waypoint-5d8f-x2@node-b\s+spiffe:\/\/cluster\.local\/ns\/shop\/sa\/waypoint$/m);
  const s = await run(['status', '-n', 'shop']);
  assert.equal(s.code, 0, s.stderr);
  assert.match(s.stdout, /^waypoint shop\/waypoint: ready$/m);
  assert.match(s.stdout, /^waypoint-5d8f-x2\s+node-b\s+10\.244\.1\.9\s+True\s+7\s+ready$/m);
  assert.match(s.stdout, /^node-a\s+True\s+sends to 10\.96\.5\.5$/m);
  assert.match(s.stdout, /^node-b\s+True\s+sends to 10\.96\.5\.5$/m);
  const j = await run(['status', '-n', 'shop', '-o', 'json']);
  assert.equal(JSON.parse(j.stdout).pods[0].configVersion, 7);

  // An agent whose read-only paths are off: not counted ready, and the detail says how to open them.
  agents.get('node-b')!.debug = false;
  try {
    const off = await run(['status', '-n', 'shop']);
    assert.equal(off.code, 1);
    assert.match(off.stdout, /^waypoint shop\/waypoint: NOT READY: agent node-b: agent admin unreachable: agent node-b does not serve \/debug\/config_dump on its metrics port: install with `weftctl install --debug-endpoints`/m);
  } finally {
    agents.get('node-b')!.debug = true;
  }
  const missing = await run(['status', '-n', 'shop', '--name', 'nope']);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /no waypoint shop\/nope \(`weftctl waypoint apply -n shop --name nope` creates one\)/);
});

test('waypoint apply on a cluster gives up at --timeout naming what is not ready', async () => {
  const r = await run(['apply', '-n', 'shop', '--name', 'lonely', '--timeout', '1']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^weftctl waypoint apply: waypoint shop\/lonely is not ready at every agent \(no waypoint pod runs\); see `kubectl -n shop describe deployment lonely`/m);
  // The controller's Ready condition on the object, when it wrote one, says why no pod runs.
  const obj = api.get('Waypoint', 'shop', 'lonely')!;
  api.apply({ ...obj, status: { conditions: [{ type: 'Ready', status: 'False', reason: 'NotAllowed', message: 'waypoint is not ready: serviceAccountName lonely is not in the allow list' }] } });
  const s = await run(['status', '-n', 'shop', '--name', 'lonely']);
  assert.equal(s.code, 1);
  assert.match(s.stdout, /^waypoint shop\/lonely: NOT READY: no waypoint pod runs \(Waypoint status: NotAllowed: waypoint is not ready: serviceAccountName lonely is not in the allow list\)$/m);
  const bad = await run(['apply', '-n', 'shop', '--timeout', 'soon']);
  assert.match(bad.stderr, /--timeout soon: give a whole number of seconds/);
  api.remove('Waypoint', 'shop', 'lonely');
});

test('waypoint delete on a cluster removes the Waypoint object and warns that the namespace still fails closed', async () => {
  const d = await run(['delete', '-n', 'shop']);
  assert.equal(d.code, 0, d.stderr);
  assert.equal(d.stdout, [
    'waypoint shop/waypoint deleted (the controller removes its Deployment, Service and pods waypoint-5d8f-x2)',
    'namespace shop still has weft.dev/use-waypoint=waypoint: its services fail closed until the waypoint is applied again or the label is removed',
    '',
  ].join('\n'));
  assert.equal(api.get('Waypoint', 'shop', 'waypoint'), undefined);
  const again = await run(['delete', '-n', 'shop']);
  assert.equal(again.code, 1);
  assert.equal(again.stdout, 'no waypoint shop/waypoint in this cluster\n');
});
