// The k8s tier: the rendered install, unedited, applied by the real `kubectl` (Debian's
// kubernetes-client, or whichever kubectl is on PATH) to the lab API server
// (cli/local/kube/fake-apiserver.ts, which stands in for a kube-apiserver), and the controller started
// from the Deployment kubectl created: its command line and environment read back from the API
// server, run the way the image's entrypoint runs it.
//
// The same install run by the lab's kubelets on two nodes, end to end: install-e2e.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { renderInstall, toYaml } from '../../cli/install/render.ts';
import { parseControllerArgs, runController } from '../../controller/src/main.ts';
import { GrpcCertificateSigner } from '../../agent/src/certs/index.ts';
import { createCsr, generateKeyPair } from '../../lib/identity/csr.ts';
import { silentLogger } from '../../controller/src/log.ts';
import { FakeApiServer } from '../../cli/local/kube/fake-apiserver.ts';

const run = promisify(execFile);
const KUBECTL = spawnSync('kubectl', ['version', '--client'], { encoding: 'utf8' });
const skip = KUBECTL.status !== 0 && 'kubectl is not installed (make deps installs Debian\'s kubernetes-client)';

interface Cluster {
  api: FakeApiServer;
  dir: string;
  kubectl(...args: string[]): Promise<string>;
}

async function withCluster(fn: (c: Cluster) => Promise<void>): Promise<void> {
  const api = new FakeApiServer({ crdsFromApi: true });
  await api.start();
  const dir = mkdtempSync(join(tmpdir(), 'weft-k8s-'));
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, api.kubeconfig());
  const kubectl = async (...args: string[]) => {
    try {
      return (await run('kubectl', ['--kubeconfig', kubeconfig, ...args], { env: { ...process.env, HOME: dir } })).stdout;
    } catch (e) {
      const err = e as { stderr?: string; stdout?: string; message: string };
      throw new Error(`kubectl ${args.join(' ')}: ${err.stderr || err.stdout || err.message}`);
    }
  };
  try {
    await fn({ api, dir, kubectl });
  } finally {
    await api.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

const IMAGE = 'ghcr.io/weft-mesh/weft:lab';

test('kubectl apply --server-side takes the rendered install unedited; get and delete work; CRs are validated and pruned by the shipped CRD schemas', { skip }, () =>
  withCluster(async ({ api, dir, kubectl }) => {
    const file = join(dir, 'install.yaml');
    writeFileSync(file, toYaml(renderInstall({ image: IMAGE, trustDomain: 'cluster.local' })));
    const out = await kubectl('apply', '--server-side', '-f', file);
    for (const line of ['namespace/weft-system serverside-applied', 'customresourcedefinition.apiextensions.k8s.io/waypoints.weft.dev serverside-applied', 'deployment.apps/weft-controller serverside-applied', 'daemonset.apps/weft-agent serverside-applied']) {
      assert.ok(out.includes(line), `${line}\n${out}`);
    }
    assert.match(await kubectl('get', 'deployments', '-n', 'weft-system'), /weft-controller/);
    assert.match(await kubectl('get', 'crd'), /waypoints\.weft\.dev/);
    // Applying the same file again changes nothing.
    const rv = api.resourceVersion;
    await kubectl('apply', '--server-side', '-f', file);
    assert.equal(api.resourceVersion, rv, 'a second apply of the same objects writes nothing');

    // A Waypoint with a wrong type is refused with the field named; an unknown field is pruned.
    const wp = join(dir, 'wp.yaml');
    writeFileSync(wp, 'apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: weft.dev/v1alpha1\nkind: Waypoint\nmetadata: {name: wp, namespace: shop}\nspec: {replicas: "two"}\n');
    await assert.rejects(kubectl('apply', '--server-side', '-f', wp), /The Waypoint "wp" is invalid: spec\.replicas: Invalid value: "string": spec\.replicas in body must be of type integer/);
    writeFileSync(wp, 'apiVersion: weft.dev/v1alpha1\nkind: Waypoint\nmetadata: {name: wp, namespace: shop}\nspec: {replicas: 2, maxRequests: 100, color: blue}\n');
    await kubectl('apply', '--server-side', '-f', wp);
    assert.deepEqual(api.get('Waypoint', 'shop', 'wp')?.['spec'], { replicas: 2, maxRequests: 100 }, 'spec.color pruned');
    // Server-side apply: a field the manager no longer applies is removed.
    writeFileSync(wp, 'apiVersion: weft.dev/v1alpha1\nkind: Waypoint\nmetadata: {name: wp, namespace: shop}\nspec: {replicas: 2}\n');
    await kubectl('apply', '--server-side', '-f', wp);
    assert.deepEqual(api.get('Waypoint', 'shop', 'wp')?.['spec'], { replicas: 2 });
    assert.match(await kubectl('get', 'waypoints', '-n', 'shop', 'wp', '-o', 'jsonpath={.spec.replicas}'), /^2$/);

    await kubectl('delete', '-f', wp);
    assert.equal(api.get('Waypoint', 'shop', 'wp'), undefined);
    // The lab removes a Namespace's objects with it at once (the real namespace controller takes a
    // moment), so the objects listed after the Namespace are already gone.
    await kubectl('delete', '--ignore-not-found', '-f', file, '--wait=false');
    assert.equal(api.get('DaemonSet', 'weft-system', 'weft-agent'), undefined);
    assert.equal(api.list('CustomResourceDefinition').length, 0);
  }));

test('the controller started from the Deployment kubectl applied bootstraps an agent by TokenReview, publishes the trust bundle and requires client identities on the config stream', { skip }, () =>
  withCluster(async ({ api, dir, kubectl }) => {
    const file = join(dir, 'install.yaml');
    writeFileSync(file, toYaml(renderInstall({ image: IMAGE, trustDomain: 'cluster.local', namespace: 'mesh' })));
    await kubectl('apply', '--server-side', '-f', file);
    // What the kubelet would run: the container's args (after the entrypoint's part name) and env.
    const deploy = JSON.parse(await kubectl('get', 'deployment', '-n', 'mesh', 'weft-controller', '-o', 'json')) as { spec: { template: { spec: { containers: Array<{ args: string[] }> } } } };
    const [part, ...args] = deploy.spec.template.spec.containers[0]!.args;
    assert.equal(part, 'controller', 'the image entrypoint chooses the program by its first argument');
    assert.match(readFileSync(new URL('../../Dockerfile', import.meta.url), 'utf8'), /controller\) exec node (--[\w-]+=\d+ )*controller\/src\/main\.ts "\$@"/);
    const o = parseControllerArgs(args);
    assert.equal(o.requireClientIdentity, true);
    const kubeconfig = join(dir, 'kubeconfig');
    const c = await runController({ ...o, kubeconfig, namespace: 'mesh', instance: 'weft-controller-0', listenAddress: '127.0.0.1', grpcPort: 0, metricsPort: 0, readyPort: 0, adminPort: 0, logger: silentLogger });
    try {
      // Trust bundle published where the agents' DaemonSet mounts it from.
      const cm = JSON.parse(await kubectl('get', 'configmap', '-n', 'mesh', 'weft-trust-bundle', '-o', 'json')) as { data: Record<string, string> };
      assert.equal(cm.data['root-cert.pem'], c.ca!.trustBundle().join(''));
      assert.match(await kubectl('get', 'secret', '-n', 'mesh'), /weft-ca/);
      assert.match(await kubectl('get', 'lease', '-n', 'mesh', 'weft-controller-leader', '-o', 'jsonpath={.spec.holderIdentity}'), /weft-controller-0/);

      // The agent pod's projected token (audience and expiry from the applied DaemonSet) gets the node certificate.
      const ds = JSON.parse(await kubectl('get', 'daemonset', '-n', 'mesh', 'weft-agent', '-o', 'json')) as { spec: { template: { spec: { volumes: Array<{ projected?: { sources: Array<{ serviceAccountToken?: { audience: string; expirationSeconds: number } }> } }> } } } };
      const projected = ds.spec.template.spec.volumes.find((v) => v.projected)!.projected!.sources[0]!.serviceAccountToken!;
      const token = api.issueToken({ namespace: 'mesh', serviceAccount: 'weft-agent', audiences: [projected.audience], expirationSeconds: projected.expirationSeconds, node: 'node-a' }).token;
      const signer = new GrpcCertificateSigner({
        address: `127.0.0.1:${c.grpcPort}`, trustBundle: cm.data['root-cert.pem']!.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----\n?/g)!,
        serverIdentity: 'spiffe://cluster.local/ns/mesh/sa/weft-controller', token: () => token, trustDomain: 'cluster.local', nodeName: 'node-a', useNodeCertificate: false,
      });
      const node = 'spiffe://cluster.local/node/node-a';
      const issued = await signer.sign(node, createCsr(node, (await generateKeyPair()).privateKey), 0);
      assert.ok(issued.certChain.length >= 1, 'node certificate issued through TokenReview');
    } finally {
      await c.stop();
    }
  }));
