// Multi-cluster in Kubernetes mode, from the install: two lab API servers are two clusters, each
// installed with `weftctl install --cluster-id <id> --network <net> --eastwest` through the real
// kubectl. `weftctl create-remote-secret` against cluster2 gives the Secret applied in cluster1
// (Istio's multi-primary, multi-network set-up: istioctl create-remote-secret); cluster1's
// controller, started from the applied Deployment's own command line, then imports cluster2's
// endpoints through cluster2's east-west gateway (its LoadBalancer address), and the gateway's own
// projected token (audience from the applied Deployment) obtains its certificate, which it uses to
// read its cluster's export from the controller (mutual TLS) and become ready.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parse as parseYaml } from 'yaml';
import { renderInstall, toYaml } from '../../cli/install/render.ts';
import { installedObjects } from '../../cli/install/uninstall.ts';
import { createRemoteSecretCommand } from '../../cli/commands/create-remote-secret.ts';
import { parseControllerArgs, runController, type RunningController } from '../../controller/src/main.ts';
import { ControllerSigner, IssuedIdentity } from '../../lib/identity/index.ts';
import { EastWestGateway } from '../../eastwest/src/gateway.ts';
import { silentLogger } from '../../controller/src/log.ts';
import { FakeApiServer } from '../../cli/local/kube/fake-apiserver.ts';
import { until } from '../lab/wait.ts';

const run = promisify(execFile);
const KUBECTL = spawnSync('kubectl', ['version', '--client'], { encoding: 'utf8' });
const skip = KUBECTL.status !== 0 && 'kubectl is not installed (make deps installs Debian\'s kubernetes-client)';
const IMAGE = 'ghcr.io/weft-mesh/weft:lab';
const TD = 'cluster.local';
const GATEWAY_IP = '192.168.77.2';

interface Cluster {
  api: FakeApiServer;
  kubeconfig: string;
  kubectl(...args: string[]): Promise<string>;
}

async function cluster(dir: string, name: string): Promise<Cluster> {
  const api = new FakeApiServer({ crdsFromApi: true });
  await api.start();
  const kubeconfig = join(dir, `${name}.kubeconfig`);
  writeFileSync(kubeconfig, api.kubeconfig());
  return {
    api, kubeconfig,
    async kubectl(...args: string[]) {
      try {
        return (await run('kubectl', ['--kubeconfig', kubeconfig, ...args], { env: { ...process.env, HOME: dir } })).stdout;
      } catch (e) {
        const err = e as { stderr?: string; stdout?: string; message: string };
        throw new Error(`kubectl ${args.join(' ')}: ${err.stderr || err.stdout || err.message}`);
      }
    },
  };
}

function demo(api: FakeApiServer, ipPrefix: string): void {
  api.apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'weft.dev/dataplane-mode': 'ambient' } } });
  api.apply({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'echo', namespace: 'demo' }, spec: { selector: { app: 'echo' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } });
  api.apply({
    apiVersion: 'v1', kind: 'Pod', metadata: { name: 'echo-0', namespace: 'demo', uid: `uid-${ipPrefix}`, labels: { app: 'echo' } },
    spec: { nodeName: 'node-a', serviceAccountName: 'echo', containers: [{ name: 'echo', ports: [{ containerPort: 8080 }] }] },
    status: { phase: 'Running', podIP: `${ipPrefix}.1.1`, hostIP: `${ipPrefix}.0.1` },
  });
}

const freePort = (): Promise<number> => new Promise((resolve) => {
  const s = createServer().listen(0, '127.0.0.1', () => {
    const { port } = s.address() as AddressInfo;
    s.close(() => resolve(port));
  });
});

type Container = { args: string[]; ports?: Array<{ name: string; containerPort: number }> };
type PodSpec = { containers: Container[]; volumes: Array<{ projected?: { sources: Array<{ serviceAccountToken?: { audience: string; expirationSeconds: number } }> } }> };

test('two clusters installed with --cluster-id --network --eastwest: create-remote-secret against cluster2, applied in cluster1, makes cluster1\'s controller import cluster2\'s endpoints through cluster2\'s gateway; the gateway\'s own token obtains its certificate and it reads its cluster\'s export', { skip }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-k8s-mc-'));
  const c1 = await cluster(dir, 'cluster1');
  const c2 = await cluster(dir, 'cluster2');
  let controller: RunningController | undefined;
  let gateway: EastWestGateway | undefined;
  let identity: IssuedIdentity | undefined;
  try {
    for (const [c, id, net] of [[c1, 'cluster1', 'network1'], [c2, 'cluster2', 'network2']] as const) {
      const file = join(dir, `${id}.yaml`);
      writeFileSync(file, toYaml(renderInstall({ image: IMAGE, trustDomain: TD, clusterId: id, network: net, eastwest: true, warn: () => {} })));
      const out = await c.kubectl('apply', '--server-side', '-f', file);
      for (const line of ['deployment.apps/weft-eastwest serverside-applied', 'service/weft-eastwest serverside-applied', 'serviceaccount/weft-reader serverside-applied']) assert.ok(out.includes(line), `${line}\n${out}`);
    }
    // As Istio's east-west gateway: a LoadBalancer Service labelled with its network, HBONE on 15008 named tls-hbone.
    const svc = JSON.parse(await c2.kubectl('get', 'service', '-n', 'weft-system', 'weft-eastwest', '-o', 'json')) as { metadata: { labels: Record<string, string> }; spec: { type: string; ports: Array<{ name: string; port: number }> } };
    assert.equal(svc.spec.type, 'LoadBalancer');
    assert.deepEqual(svc.spec.ports.map((p) => [p.name, p.port]), [['tls-hbone', 15008]]);
    assert.equal(svc.metadata.labels['topology.istio.io/network'], 'network2');
    assert.match(await c2.kubectl('get', 'namespace', 'weft-system', '-o', 'jsonpath={.metadata.labels.topology\\.istio\\.io/network}'), /^network2$/);
    // The cloud's load balancer gives the Service its address.
    c2.api.apply({ ...c2.api.get('Service', 'weft-system', 'weft-eastwest')!, status: { loadBalancer: { ingress: [{ ip: GATEWAY_IP }] } } });
    demo(c1.api, '10.77');
    demo(c2.api, '10.78');

    // weftctl create-remote-secret --name cluster2, against cluster2; applied in cluster1.
    let secretYaml = '';
    let errors = '';
    await createRemoteSecretCommand({ out: (t) => (secretYaml += t), err: (t) => (errors += t), exit: (c) => { throw new Error(`exit ${c}`); }, setExitCode: () => {} })
      .parseAsync(['--kubeconfig', c2.kubeconfig, '--name', 'cluster2', '--allow-insecure'], { from: 'user' });
    assert.equal(errors, '');
    const secret = parseYaml(secretYaml) as { metadata: { name: string; labels: Record<string, string> }; data: Record<string, string> };
    assert.equal(secret.metadata.labels['weft.dev/multicluster'], 'true');
    const kc = parseYaml(Buffer.from(secret.data['cluster2']!, 'base64').toString()) as { users: Array<{ user: Record<string, unknown> }>; clusters: Array<{ cluster: { server: string } }> };
    assert.deepEqual(Object.keys(kc.users[0]!.user), ['token'], 'an inline token of weft-reader, nothing the controller would run or read');
    assert.equal(kc.clusters[0]!.cluster.server, c2.api.url);
    writeFileSync(join(dir, 'secret.yaml'), secretYaml);
    await c1.kubectl('apply', '-f', join(dir, 'secret.yaml'));

    // cluster1's controller, from the applied Deployment's command line.
    const deploy = JSON.parse(await c1.kubectl('get', 'deployment', '-n', 'weft-system', 'weft-controller', '-o', 'json')) as { spec: { template: { spec: PodSpec } } };
    const [, ...args] = deploy.spec.template.spec.containers[0]!.args;
    const o = parseControllerArgs(args);
    assert.equal(o.clusterId, 'cluster1');
    assert.equal(o.network, 'network1');
    assert.equal(o.remoteSecrets, true);
    assert.deepEqual(o.federationListen, { host: '0.0.0.0', port: 15014 });
    const fedPort = await freePort();
    // The lab's API servers speak plain HTTP, which a remote secret may name only so.
    controller = await runController({
      ...o, remoteSecretsAllowInsecure: true, kubeconfig: c1.kubeconfig, namespace: 'weft-system', instance: 'weft-controller-0', listenAddress: '127.0.0.1',
      grpcPort: 0, metricsPort: 0, readyPort: 0, adminPort: 0, federationListen: { host: '127.0.0.1', port: fedPort }, logger: silentLogger,
    });
    const running = controller;
    const echo = () => running.controller.model?.services.get('demo/echo');
    await until('cluster2\'s echo endpoint imported through the remote secret', () => echo()?.endpoints.some((e) => e.cluster === 'cluster2') ?? false, 15_000);
    const remote = echo()!.endpoints.find((e) => e.cluster === 'cluster2')!;
    assert.equal(remote.ip, '10.78.1.1');
    assert.deepEqual(remote.gateway, { network: 'network2', address: GATEWAY_IP, port: 15008, spiffeId: `spiffe://${TD}/ns/weft-system/sa/weft-eastwest` });

    // cluster1's gateway: the image runs `eastwest`, its projected token gets its certificate by TokenReview.
    assert.match(readFileSync(new URL('../../Dockerfile', import.meta.url), 'utf8'), /eastwest\)\s+exec node eastwest\/src\/main\.ts "\$@"/);
    const gw = JSON.parse(await c1.kubectl('get', 'deployment', '-n', 'weft-system', 'weft-eastwest', '-o', 'json')) as { spec: { template: { spec: PodSpec & { serviceAccountName: string } } } };
    const gwSpec = gw.spec.template.spec;
    assert.equal(gwSpec.serviceAccountName, 'weft-eastwest');
    const [part, ...gwArgs] = gwSpec.containers[0]!.args;
    assert.equal(part, 'eastwest');
    const flag = (f: string) => gwArgs[gwArgs.indexOf(f) + 1]!;
    assert.equal(flag('--controller'), 'https://weft-controller.weft-system.svc:15014');
    assert.equal(flag('--controller-id'), `spiffe://${TD}/ns/weft-system/sa/weft-controller`);
    const projected = gwSpec.volumes.find((v) => v.projected)!.projected!.sources[0]!.serviceAccountToken!;
    const token = c1.api.issueToken({ namespace: 'weft-system', serviceAccount: 'weft-eastwest', audiences: [projected.audience], expirationSeconds: projected.expirationSeconds }).token;
    const roots = running.ca!.trustBundle();
    const signer = new ControllerSigner({ address: `127.0.0.1:${running.grpcPort}`, trustBundle: roots, serverIdentity: flag('--controller-id'), token: () => token, log: silentLogger });
    identity = new IssuedIdentity({ spiffeId: `spiffe://${TD}/ns/weft-system/sa/weft-eastwest`, signer, trustBundle: roots });
    await identity.start();
    const c = identity.current();
    gateway = new EastWestGateway({
      tls: { key: c.key, cert: c.certChain.join(''), ca: [...c.trustBundle] }, trustDomains: [TD],
      controllerUrl: `https://127.0.0.1:${fedPort}`, controllerId: flag('--controller-id'), log: silentLogger, pollMs: 200,
    });
    await gateway.listen(0, '127.0.0.1');
    const g = gateway;
    await until('the gateway read its cluster\'s export (ready)', () => g.endpoints > 0, 10_000);
  } finally {
    await gateway?.close();
    identity?.close();
    await controller?.stop().catch(() => {});
    await c1.api.stop();
    await c2.api.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('install options for multi-cluster: --eastwest or --network without --cluster-id, and a bad cluster ID, are refused naming the flag', () => {
  assert.throws(() => renderInstall({ image: IMAGE, trustDomain: TD, eastwest: true }), /--eastwest is for a multi-cluster mesh: give this cluster's --cluster-id too/);
  assert.throws(() => renderInstall({ image: IMAGE, trustDomain: TD, network: 'n1' }), /--network is for a multi-cluster mesh/);
  assert.throws(() => renderInstall({ image: IMAGE, trustDomain: TD, clusterId: 'bad id' }), /--cluster-id "bad id" is not a cluster ID/);
  const single = renderInstall({ image: IMAGE, trustDomain: TD, warn: () => {} });
  assert.ok(!single.some((x) => x.metadata?.name === 'weft-eastwest' || x.metadata?.name === 'weft-reader'), 'a single-cluster install renders no gateway and no reader');
  const role = single.find((x) => x.kind === 'Role') as { rules: Array<{ resources?: string[]; verbs?: string[] }> };
  assert.ok(!role.rules.some((r) => r.resources?.includes('secrets') && r.verbs?.includes('list')), 'nor may its controller list Secrets');
});

test('weftctl uninstall removes the multi-cluster objects too: the gateway, and the cluster-wide weft-reader ClusterRole and binding the namespace\'s deletion would leave behind', () => {
  const names = installedObjects('weft-system', IMAGE).map((x) => `${x.kind}/${x.metadata?.name}`);
  for (const n of ['ClusterRole/weft-reader', 'ClusterRoleBinding/weft-reader', 'ServiceAccount/weft-reader', 'Deployment/weft-eastwest', 'Service/weft-eastwest', 'ServiceAccount/weft-eastwest']) assert.ok(names.includes(n), n);
});
