// weftctl's reads of a waypoint's debug paths on a cluster (`weftctl install --debug-endpoints`):
// the rendered install applied unedited by the real kubectl to the lab API server, the controller
// run from its Deployment's command line in Kubernetes mode (it makes the install's debug token
// Secret and holds it), a real waypoint in an application namespace. weftctl asks the controller,
// through the API server's pod proxy and with the install's token, for a grant for that one pod of
// that waypoint (lib/identity/debug-grant.ts), and reads the waypoint through the pod proxy with
// it. The waypoint holds no secret; a tenant's pod wearing a waypoint's label (in the waypoint's
// namespace or its own) is sent a grant for itself, which opens no other pod (RFC 7519 4.1.3 aud).
// Istio scopes what a namespace's credential reads of its debug endpoints to the proxies of that
// namespace (https://istio.io/latest/docs/ops/integrations/integration-guide/debug-endpoints/).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { renderInstall, toYaml } from '../../cli/install/render.ts';
import { parseControllerArgs, runController } from '../../controller/src/main.ts';
import { silentLogger } from '../../controller/src/log.ts';
import { FakeApiServer } from '../../cli/local/kube/fake-apiserver.ts';
import { inspectCommands } from '../../cli/commands/inspect.ts';
import { DEBUG_TOKEN_SECRET } from '../../lib/debug-http.ts';
import { DEBUG_GRANT_HEADER } from '../../lib/identity/debug-grant.ts';
import { createCsr, generateKeyPair, privateKeyToPem } from '../../lib/identity/index.ts';
import { parseFlags, runWaypoint, type RunningWaypoint } from '../../waypoint/src/main.ts';
import { runCommands } from '../unit/cli-harness.ts';

const run = promisify(execFile);
const KUBECTL = spawnSync('kubectl', ['version', '--client'], { encoding: 'utf8' });
const skip = KUBECTL.status !== 0 && 'kubectl is not installed (make deps installs Debian\'s kubernetes-client)';

test('weftctl config-dump --waypoints reads a waypoint through the pod proxy with a grant the controller signed for it; a tenant\'s pod wearing a waypoint\'s label gets a grant that opens no other pod', { skip }, async () => {
  const api = new FakeApiServer({ crdsFromApi: true });
  await api.start();
  const dir = mkdtempSync(join(tmpdir(), 'weft-k8s-wp-debug-'));
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, api.kubeconfig());
  let controller: Awaited<ReturnType<typeof runController>> | undefined;
  let wp: RunningWaypoint | undefined;
  // Tenants' pods wearing a waypoint's label, one in the waypoint's namespace and one in its own:
  // they answer with a dump of their choosing and keep what they were sent.
  const stolen: string[] = [];
  const impostor = createServer((req, res) => {
    const g = req.headers[DEBUG_GRANT_HEADER];
    if (typeof g === 'string') stolen.push(g);
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ version: 1, config: { routes: [] }, identity: 'spiffe://cluster.local/ns/bank/sa/IMPOSTOR' }));
  });
  await new Promise<void>((r) => impostor.listen(0, '127.0.0.1', r));
  try {
    const file = join(dir, 'install.yaml');
    writeFileSync(file, toYaml(renderInstall({ image: 'ghcr.io/weft-mesh/weft:lab', trustDomain: 'cluster.local', debugEndpoints: true })));
    await run('kubectl', ['--kubeconfig', kubeconfig, 'apply', '--server-side', '-f', file], { env: { ...process.env, HOME: dir } });
    const deploy = api.get('Deployment', 'weft-system', 'weft-controller') as unknown as { spec: { template: { spec: { containers: Array<{ args: string[] }> } } } };
    const [, ...args] = deploy.spec.template.spec.containers[0]!.args;
    const o = parseControllerArgs(args);
    assert.equal(o.debugEndpoints, true);
    controller = await runController({ ...o, kubeconfig, namespace: 'weft-system', instance: 'weft-controller-0', listenAddress: '127.0.0.1', grpcPort: 0, metricsPort: 0, readyPort: 0, adminPort: 0, logger: silentLogger });
    assert.ok(api.get('Secret', 'weft-system', DEBUG_TOKEN_SECRET), 'the controller made the install\'s debug token');

    // The waypoint of namespace shop, its identity from the cluster's CA (as the certificate service would issue it).
    const id = 'spiffe://cluster.local/ns/shop/sa/waypoint';
    const { privateKey } = await generateKeyPair();
    writeFileSync(join(dir, 'tls.crt'), controller.ca!.signCsr(createCsr(id, privateKey), id).certChain.join(''));
    writeFileSync(join(dir, 'tls.key'), privateKeyToPem(privateKey));
    writeFileSync(join(dir, 'ca.crt'), controller.ca!.trustBundle().join(''));
    wp = await runWaypoint(parseFlags([
      '--namespace', 'shop', '--name', 'waypoint', '--controller', '127.0.0.1:9', '--insecure-xds', '--id', 'waypoint-abc',
      '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--metrics', '127.0.0.1:0', '--ready', '127.0.0.1:0', '--access-log', 'off',
      '--cert-file', join(dir, 'tls.crt'), '--key-file', join(dir, 'tls.key'), '--ca-file', join(dir, 'ca.crt'), '--debug-endpoints',
    ], {}), silentLogger);

    const parts = { 'app.kubernetes.io/part-of': 'weft' };
    api.apply({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'weft-controller-0', namespace: 'weft-system', labels: { ...parts, 'app.kubernetes.io/name': 'weft-controller' } }, spec: { nodeName: 'node-a' }, status: { phase: 'Running', podIP: '10.1.0.50' } });
    api.apply({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'waypoint-abc', namespace: 'shop', labels: { 'weft.dev/waypoint': 'waypoint' } }, spec: { nodeName: 'node-a' }, status: { phase: 'Running', podIP: '10.1.0.99' } });
    for (const ns of ['shop', 'bank']) api.apply({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'waypoint-evil', namespace: ns, labels: { 'weft.dev/waypoint': 'waypoint' } }, spec: { nodeName: 'node-a' }, status: { phase: 'Running', podIP: '10.1.0.66' } });
    const port = (s: { address(): unknown }) => (s.address() as { port: number }).port;
    api.podProxyTarget = (_ns, pod, p) => p !== 15020 ? undefined
      : pod === 'weft-controller-0' ? { host: '127.0.0.1', port: controller!.metricsPort }
        : pod === 'waypoint-abc' ? { host: '127.0.0.1', port: wp!.metrics.port }
          : pod === 'waypoint-evil' ? { host: '127.0.0.1', port: port(impostor) } : undefined;

    const r = await runCommands((io) => inspectCommands(io), ['config-dump', '--waypoints', '-o', 'json', '--kubeconfig', kubeconfig]);
    assert.equal(r.code, 0, r.stderr);
    const dumps = JSON.parse(r.stdout) as Array<{ pod: string; data: { identity?: string } }>;
    assert.equal(dumps.find((d) => d.pod === 'shop/waypoint-abc')?.data.identity, id, 'the real waypoint answered weftctl');
    assert.equal(dumps.length, 3, 'and the two pods wearing its label, which answer for themselves only');
    const metrics = async () => (await (await fetch(`http://127.0.0.1:${wp!.metrics.port}/metrics`)).text());
    assert.doesNotMatch(await metrics(), /weft_waypoint_listener_refused_total\{listener="metrics",reason="debug-grant-/, 'weftctl\'s read was not refused');

    // What the tenants' pods were sent: a grant for themselves each, no token.
    const auds = stolen.map((g) => (JSON.parse(Buffer.from(g.split('.')[1]!, 'base64url').toString()) as { aud: string }).aud).sort();
    assert.deepEqual(auds, ['waypoint-debug:bank/waypoint/waypoint-evil', 'waypoint-debug:shop/waypoint/waypoint-evil']);
    // Replayed at shop's waypoint (every pod reaches its 15020): refused, counted, and nothing of the dump.
    for (const g of stolen) {
      const replay = await fetch(`http://127.0.0.1:${wp.metrics.port}/debug/config_dump`, { headers: { [DEBUG_GRANT_HEADER]: g } });
      assert.equal(replay.status, 403);
      assert.doesNotMatch(await replay.text(), /"config"/);
    }
    assert.match(await metrics(), /^weft_waypoint_listener_refused_total\{listener="metrics",reason="debug-grant-audience"\} 2$/m);
    // Nor does a tenant get a grant of its choosing from the controller's 15020 without the token.
    const ask = await fetch(`http://127.0.0.1:${controller.metricsPort}/debug/waypoint-grant?waypoint=shop%2Fwaypoint&pod=waypoint-abc`);
    assert.equal(ask.status, 403);
    assert.match(await (await fetch(`http://127.0.0.1:${controller.metricsPort}/metrics`)).text(), /^weft_controller_listener_refused_total\{listener="metrics",reason="debug-token-missing"\} 1$/m);
  } finally {
    await wp?.close();
    await controller?.stop();
    impostor.close();
    await api.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
