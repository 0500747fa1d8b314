// The dashboard in a cluster beside the controller (`weftctl install --dashboard`): the rendered
// ServiceAccount, ClusterRole, Deployment and Service applied unedited by the real kubectl to the
// kube lab's API server, then `weftctl dashboard` run with the command line kubectl stored in the
// Deployment (as the image's entrypoint runs it), reading the mesh through the API server: its
// nodes' BPF state through the pod proxy, to the operator's port-forward only: it listens on the
// pod's loopback, so another pod (at the pod's address, with the Service's name as Host) gets
// nothing. What it shows (every node's config and BPF state, live flows with peer identities) is
// what Istio keeps on its components' loopback admin ports
// (https://istio.io/latest/docs/ops/deployment/application-requirements/#ports-used-by-istio).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { renderInstall, toYaml } from '../../cli/install/render.ts';
import { DASHBOARD_RULES } from '../../cli/install/dashboard.ts';
import { DEBUG_TOKEN_FILE_ENV, DEBUG_TOKEN_SECRET, debugThroughAdmin } from '../../lib/debug-http.ts';
import { FakeApiServer } from '../../cli/local/kube/fake-apiserver.ts';
import { KubeConfig } from '@kubernetes/client-node';
import { clusterDebugToken } from '../../controller/src/cluster/ca-secret.ts';
import { REPO_ROOT } from '../../cli/local/mesh.ts';

const run = promisify(execFile);
const KUBECTL = spawnSync('kubectl', ['version', '--client'], { encoding: 'utf8' });
const skip = KUBECTL.status !== 0 && 'kubectl is not installed (make deps installs Debian\'s kubernetes-client)';

test('install --dashboard: kubectl applies it unedited, and the Deployment\'s weftctl dashboard serves the cluster\'s nodes through the pod proxy, read-only, on the pod\'s loopback only (port-forward), never to another pod', { skip }, async () => {
  const api = new FakeApiServer({ crdsFromApi: true });
  await api.start();
  const dir = mkdtempSync(join(tmpdir(), 'weft-k8s-dash-'));
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, api.kubeconfig());
  // An agent (host network) answering its read-only /debug/bpf on :15020 through lib/debug-http.ts,
  // to requests carrying the install's token only (the rendered Secret's, as its mount holds it).
  let installToken: string | undefined;
  const refusedTokens: string[] = [];
  const agentAdmin = createServer((req, res) => {
    if (req.url === '/bpf') res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ programs: [{ name: 'weft_connect4', id: 3 }], pods: [], counters: {} }));
    else res.writeHead(404).end();
  });
  const agent = createServer(debugThroughAdmin(agentAdmin, ['/bpf'], (req, res) => {
    if (req.url === '/metrics') res.writeHead(200).end('');
    else res.writeHead(404).end();
  }, { token: () => installToken, refused: (_req, why) => refusedTokens.push(why) }));
  await new Promise<void>((r) => agent.listen(0, '127.0.0.1', r));
  let child: ReturnType<typeof spawn> | undefined;
  try {
    const file = join(dir, 'install.yaml');
    writeFileSync(file, toYaml(renderInstall({ image: 'ghcr.io/weft-mesh/weft:lab', trustDomain: 'cluster.local', dashboard: true })));
    await run('kubectl', ['--kubeconfig', kubeconfig, 'apply', '--server-side', '-f', file], { env: { ...process.env, HOME: dir } });
    const dep = api.get('Deployment', 'weft-system', 'weft-dashboard') as { spec: { template: { spec: { serviceAccountName: string; containers: Array<{ args: string[]; env?: Array<{ name: string; value: string }> }> } } } } | undefined;
    assert.ok(dep, 'the dashboard Deployment exists');
    assert.equal(dep.spec.template.spec.serviceAccountName, 'weft-dashboard');
    assert.ok(api.get('Service', 'weft-system', 'weft-dashboard'));
    const role = api.get('ClusterRole', undefined, 'weft-dashboard') as { rules: Array<{ resources: string[]; verbs: string[] }> } | undefined;
    assert.ok(role?.rules.some((r) => r.resources.includes('pods/proxy') && r.verbs.join() === 'get'), 'it may GET through the pod proxy');
    assert.ok(role!.rules.every((r) => r.verbs.every((v) => ['get', 'list', 'watch'].includes(v))), 'and write nothing');
    assert.equal(role!.rules.length, DASHBOARD_RULES.length);

    api.apply({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'node-a' } });
    api.apply({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'weft-agent-q', namespace: 'weft-system', labels: { 'app.kubernetes.io/name': 'weft-agent', 'app.kubernetes.io/part-of': 'weft' } }, spec: { nodeName: 'node-a', hostNetwork: true }, status: { phase: 'Running', podIP: '192.168.7.1' } });
    api.podProxyTarget = (_ns, pod, port) => (pod === 'weft-agent-q' && port === 15020 ? { host: '127.0.0.1', port: (agent.address() as { port: number }).port } : undefined);

    // The container's command line (the image's entrypoint drops the leading `weftctl`); port 0 so
    // parallel runs do not collide, and the kubeconfig standing in for the in-cluster ServiceAccount.
    const [first, ...args] = dep.spec.template.spec.containers[0]!.args;
    assert.equal(first, 'weftctl');
    // The install's debug token: not rendered (a rendered install holds no secret, and applying
    // it again changes nothing), made once by the controller, mounted where the Deployment's env says.
    assert.equal(api.get('Secret', 'weft-system', DEBUG_TOKEN_SECRET), undefined, 'the rendered install holds no debug token');
    const kc = new KubeConfig();
    kc.loadFromFile(kubeconfig);
    assert.equal((await clusterDebugToken({ kubeConfig: kc, namespace: 'weft-system' })).created, true);
    const readToken = () => {
      const secret = api.get('Secret', 'weft-system', DEBUG_TOKEN_SECRET) as { data?: { token?: string } } | undefined;
      return secret?.data?.token ? Buffer.from(secret.data.token, 'base64').toString() : undefined;
    };
    installToken = readToken();
    assert.ok(installToken && installToken.length >= 32, 'the controller made a debug token');
    assert.equal((await clusterDebugToken({ kubeConfig: kc, namespace: 'weft-system' })).created, false, 'another replica, or a restart, keeps it');
    await run('kubectl', ['--kubeconfig', kubeconfig, 'apply', '--server-side', '-f', file], { env: { ...process.env, HOME: dir } });
    assert.equal(readToken(), installToken, 'applying the install again keeps the token');
    const tokenEnv = dep.spec.template.spec.containers[0]!.env?.find((e) => e.name === DEBUG_TOKEN_FILE_ENV);
    assert.ok(tokenEnv, 'the dashboard is told where its token is mounted');
    const mounted = join(dir, 'debug-token');
    writeFileSync(mounted, `${installToken}\n`);
    child = spawn(process.execPath, [join(REPO_ROOT, 'cli/weftctl.ts'), ...args, '--port', '0', '--kubeconfig', kubeconfig], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, HOME: dir, [DEBUG_TOKEN_FILE_ENV]: mounted } });
    let out = '';
    child.stdout!.on('data', (b: Buffer) => { out += b.toString(); });
    child.stderr!.on('data', (b: Buffer) => { out += b.toString(); });
    const deadline = Date.now() + 90_000; // a loaded 2-core machine takes its time to start weftctl
    while (!/on http:\/\/127\.0\.0\.1:(\d+)\//.test(out) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const port = Number(/on http:\/\/127\.0\.0\.1:(\d+)\//.exec(out)?.[1]);
    assert.ok(port > 0, `the dashboard started on the loopback: ${out}`);
    const get = (path: string, host: string, address = '127.0.0.1') => new Promise<{ status: number; body: string }>((resolve, reject) => {
      import('node:http').then(({ request }) => {
        const req = request({ host: address, port, path, headers: { host } }, (res) => {
          let body = '';
          res.on('data', (c: Buffer) => { body += c.toString(); });
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        });
        req.on('error', reject);
        req.end();
      }, reject);
    });
    const nodes = await get('/api/nodes', 'localhost:15900');
    assert.equal(nodes.status, 200, `kubectl port-forward's Host: ${nodes.body}`);
    assert.deepEqual(JSON.parse(nodes.body).map((n: { node: string; ip: string; bpf: { programs: Array<{ name: string }> } }) => [n.node, n.ip, n.bpf.programs[0]!.name]), [['node-a', '192.168.7.1', 'weft_connect4']]);
    assert.equal((await get('/api/nodes', 'evil.example')).status, 403, 'another Host (DNS rebinding) is refused');
    // Another pod at the agent's 15020: without the install's token, nothing (counted by the agent,
    // test/unit/agent-side-ports.test.ts); the dashboard's reads above carried it through the proxy.
    assert.deepEqual(refusedTokens, [], 'the dashboard\'s reads carried the token');
    const agentPort = (agent.address() as { port: number }).port;
    const direct = await fetch(`http://127.0.0.1:${agentPort}/debug/bpf`);
    assert.equal(direct.status, 403);
    assert.deepEqual(refusedTokens, ['missing']);
    // Another pod: at the pod's address (here another address of this host) nothing listens; and
    // the Service's names are no Host it admits, refused and logged by name.
    await assert.rejects(get('/api/nodes', 'weft-dashboard.weft-system.svc:15900', '127.0.0.2'), /ECONNREFUSED/, 'nothing answers at another address of the pod');
    const viaService = await get('/api/nodes', 'weft-dashboard.weft-system.svc:15900');
    assert.equal(viaService.status, 403, viaService.body);
    const deadlineLog = Date.now() + 10_000;
    while (!/refused GET "\/api\/nodes" from [^:]+: host "weft-dashboard\.weft-system\.svc:15900"/.test(out) && Date.now() < deadlineLog) await new Promise((r) => setTimeout(r, 25));
    assert.match(out, /refused GET "\/api\/nodes" from [^:]+: host "weft-dashboard\.weft-system\.svc:15900"/);
  } finally {
    child?.kill('SIGTERM');
    agent.close();
    agentAdmin.close();
    await api.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
