// Multi-cluster in Kubernetes mode without root: two lab API servers are two clusters. The
// controller of cluster1 reads cluster2's API server through a kubeconfig Secret labelled
// weft.dev/multicluster=true (Istio's remote secret: label istio/multiCluster=true, one kubeconfig
// per data key named by the cluster ID), and cluster2's Services and endpoints join cluster1's by
// namespace sameness, through cluster2's east-west gateway. From the attacker's side: kubeconfigs
// that would make the controller run a command or read its own files are refused, named and
// counted, and cost only their own entry.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runController, type ControllerMainOptions, type RunningController } from '../../controller/src/main.ts';
import { gatewayOf, LABEL_MULTICLUSTER, LABEL_NETWORK, parseRemoteKubeconfig, REMOTE_KINDS, RemoteClusterReader, RemoteSecretError } from '../../controller/src/sources/remote-secrets.ts';
import { kubeConfigForServer } from '../../controller/src/sources/kube.ts';
import { createServer as createHttpServer, request as httpRequest, type ServerResponse } from 'node:http';
import { gzipSync } from 'node:zlib';
import { Federation, type RemoteReport } from '../../controller/src/federation.ts';
import { connect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { CertificateAuthority } from '../../lib/identity/ca.ts';
import { FakeApiServer } from '../../cli/local/kube/fake-apiserver.ts';
import { ns, pod, svc } from './controller-fixtures.ts';
import { holds, until } from '../lab/wait.ts';
import { silentLogger, type Logger } from '../../controller/src/log.ts';
import { GrpcCertificateSigner } from '../../agent/src/certs/index.ts';
import { createCsr, generateKeyPair } from '../../lib/identity/csr.ts';
import { X509Certificate } from 'node:crypto';
import { CaAuthenticationError, CertificateRefusedError } from '../../lib/identity/errors.ts';
import type { MeshModel, Service } from '../../lib/model/mesh.ts';
import { emptyMeshModel } from '../../lib/model/mesh.ts';
import { LABEL_USE_WAYPOINT, LABEL_WAYPOINT_FOR } from '../../lib/model/objects.ts';

const TD = 'cluster.local';
const GATEWAY_IP = '192.168.77.2';

/** cluster2: demo/echo with one pod, its root namespace on network2, its gateway's LoadBalancer address. */
function seedRemote(api: FakeApiServer): void {
  api.apply(ns('demo', { 'weft.dev/dataplane-mode': 'ambient' }));
  api.apply(ns('weft-system', { [LABEL_NETWORK]: 'network2' }));
  api.apply(svc('demo', 'echo', { app: 'echo' }, '10.97.0.10'));
  api.apply(pod('demo', 'echo-c2', { labels: { app: 'echo' }, ip: '10.78.1.1', hostIP: '10.78.0.1', sa: 'echo' }));
  api.apply({
    apiVersion: 'v1', kind: 'Service', metadata: { name: 'weft-eastwest', namespace: 'weft-system', labels: { [LABEL_NETWORK]: 'network2' } },
    spec: { type: 'LoadBalancer', selector: { app: 'weft-eastwest' }, ports: [{ name: 'tls-hbone', port: 15008 }, { name: 'federation', port: 15014 }] },
    status: { loadBalancer: { ingress: [{ ip: GATEWAY_IP }] } },
  });
}

function remoteSecret(name: string, data: Record<string, string>, labelled = true, annotations: Record<string, string> = {}): object {
  return {
    apiVersion: 'v1', kind: 'Secret', type: 'Opaque',
    metadata: { name, namespace: 'weft-system', annotations, ...(labelled ? { labels: { [LABEL_MULTICLUSTER]: 'true' } } : {}) },
    data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v).toString('base64')])),
  };
}

interface TwoClusters {
  c1: FakeApiServer;
  c2: FakeApiServer;
  controller: RunningController;
  echo(): Service | undefined;
  federation(): Promise<{ remotes: Array<{ cluster: string; up: boolean; url: string; lastError?: string; refusedServices?: Record<string, string> }>; refusedSecrets?: Record<string, string> }>;
}

/**
 * The lab API servers speak plain HTTP (their kubeconfigs say `insecure-skip-tls-verify`): the
 * controllers here allow that (--remote-secret-allow-insecure) unless a test says otherwise.
 */
async function withTwoClusters(fn: (t: TwoClusters) => Promise<void>, seedLocal: (c1: FakeApiServer, c2: FakeApiServer) => void | Promise<void>, multicluster = true, logger: Logger = silentLogger, options: Partial<ControllerMainOptions> = { remoteSecretsAllowInsecure: true }): Promise<void> {
  const c1 = new FakeApiServer();
  const c2 = new FakeApiServer();
  await c1.start();
  await c2.start();
  const dir = mkdtempSync(join(tmpdir(), 'weft-mc-kube-'));
  let controller: RunningController | undefined;
  try {
    const kubeconfig = join(dir, 'kubeconfig');
    writeFileSync(kubeconfig, c1.kubeconfig('weft-controller'));
    c1.apply(ns('demo', { 'weft.dev/dataplane-mode': 'ambient' }));
    c1.apply(ns('weft-system', { [LABEL_NETWORK]: 'network1' }));
    c1.apply(svc('demo', 'echo', { app: 'echo' }, '10.96.0.10'));
    c1.apply(pod('demo', 'echo-c1', { labels: { app: 'echo' }, ip: '10.77.1.1', hostIP: '10.77.0.1', sa: 'echo' }));
    seedRemote(c2);
    await seedLocal(c1, c2);
    controller = await runController({
      kube: true, kubeconfig, listenAddress: '127.0.0.1', grpcPort: 0, metricsPort: 0, readyPort: 0, adminPort: 0,
      trustDomain: TD, rootNamespace: 'weft-system', namespace: 'weft-system', instance: 'controller-0', leaseRetryMs: 100, leaseDurationSeconds: 2,
      clusterId: 'cluster1', network: 'network1', ...(multicluster ? { remoteSecrets: true, remoteStaleAfterMs: 1_500, ...options } : {}), logger,
    });
    const running = controller;
    await fn({
      c1, c2, controller: running,
      echo: () => running.controller.model?.services.get('demo/echo'),
      federation: async () => (await (await fetch(`http://127.0.0.1:${running.adminPort}/debug/federation`)).json()) as Awaited<ReturnType<TwoClusters['federation']>>,
    });
  } finally {
    await controller?.stop().catch(() => {});
    await c1.stop();
    await c2.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

test('remote secret (Istio\'s istio/multiCluster Secret, weft.dev/multicluster here): cluster2\'s API server is read; demo/echo spans both clusters, cluster2\'s endpoint through network2\'s gateway; its changes follow live; a Service only cluster2 has is imported with its ClusterIP, one claiming a local VIP is refused and counted; a rewritten Secret moves the reader to its new API server; the Secret deleted drops them at once', async (t) => {
  await withTwoClusters(async ({ c1, c2, controller, echo, federation }) => {
    const importMs = await until('cluster2\'s echo endpoint imported', () => (echo()?.endpoints.length ?? 0) === 2, 15_000);
    t.diagnostic(`cluster2's endpoints in cluster1's model ${importMs} ms after the controller was ready`);
    const remote = echo()!.endpoints.find((e) => e.cluster === 'cluster2')!;
    assert.equal(remote.ip, '10.78.1.1');
    assert.equal(remote.network, 'network2', 'the network is the remote root namespace\'s topology.istio.io/network label');
    assert.equal(remote.spiffeId, `spiffe://${TD}/ns/demo/sa/echo`);
    assert.deepEqual(remote.gateway, { network: 'network2', address: GATEWAY_IP, port: 15008, spiffeId: `spiffe://${TD}/ns/weft-system/sa/weft-eastwest` }, 'another network: through its weft-eastwest Service\'s LoadBalancer address');
    assert.equal(echo()!.endpoints.find((e) => e.ip === '10.77.1.1')?.gateway, undefined, 'local endpoints are dialled directly');
    const st = await federation();
    assert.deepEqual(st.remotes.map((r) => [r.cluster, r.up]), [['cluster2', true]]);
    assert.match(st.remotes[0]!.url, /secret weft-system\/remote-cluster2/);

    // A pod added in cluster2 follows through its watch.
    c2.apply(pod('demo', 'echo-c2b', { labels: { app: 'echo' }, ip: '10.78.1.2', hostIP: '10.78.0.1', sa: 'echo' }));
    const podMs = await until('a new remote pod imported', () => echo()!.endpoints.some((e) => e.ip === '10.78.1.2' && e.cluster === 'cluster2'), 10_000);
    t.diagnostic(`a pod added in cluster2 reached cluster1's model in ${podMs} ms (through the watch)`);
    // A Service that exists only in cluster2 is imported with cluster2's ClusterIP (Istio: a remote-only
    // Service resolves to the remote's ClusterIP), its endpoints through network2's gateway.
    c2.apply(svc('demo', 'only-there', { app: 'echo' }, '10.97.0.11'));
    c2.apply(pod('demo', 'echo-c2c', { labels: { app: 'echo' }, ip: '10.78.1.3', hostIP: '10.78.0.1', sa: 'echo' }));
    await until('third remote pod', () => echo()!.endpoints.some((e) => e.ip === '10.78.1.3'), 10_000);
    const onlyThere = () => controller.controller.model?.services.get('demo/only-there');
    await until('the remote-only Service imported', () => onlyThere()?.endpoints.length === 3, 10_000);
    assert.deepEqual(onlyThere()!.vips, ['10.97.0.11']);
    assert.ok(onlyThere()!.endpoints.every((e) => e.cluster === 'cluster2' && e.gateway?.address === GATEWAY_IP));
    // Attacker side: a cluster2 Service claiming cluster1's echo VIP is refused, named and counted; echo is untouched.
    c2.apply(svc('demo', 'hijack', { app: 'echo' }, '10.96.0.10'));
    await until('the hijack is refused', async () => (await federation()).remotes[0]?.refusedServices?.['demo/hijack'] !== undefined, 10_000);
    assert.match((await federation()).remotes[0]!.refusedServices!['demo/hijack']!, /its VIP 10\.96\.0\.10 is already local Service demo\/echo/);
    assert.equal(controller.controller.model?.services.has('demo/hijack'), false);
    assert.deepEqual(echo()!.vips, ['10.96.0.10']);
    assert.match(await controller.registry.metrics(), /weft_federation_import_refused_total\{cluster="cluster2",reason="vip-in-use"\} 1\n/);
    c2.remove('Service', 'demo', 'hijack');
    await until('a refusal that no longer applies is no longer listed', async () => (await federation()).remotes[0]?.refusedServices === undefined, 10_000);

    // The Secret rewritten in place (a new token, another API server address): the cluster is read through the new one.
    const c2b = new FakeApiServer();
    await c2b.start();
    try {
      seedRemote(c2b);
      c2b.apply(pod('demo', 'echo-moved', { labels: { app: 'echo' }, ip: '10.78.9.9', hostIP: '10.78.0.1', sa: 'echo' }));
      c1.apply(remoteSecret('remote-cluster2', { cluster2: c2b.kubeconfig('weft-reader-2') }));
      await until('the rewritten Secret\'s API server is read', () => echo()!.endpoints.some((e) => e.ip === '10.78.9.9'), 10_000);
      assert.ok(!echo()!.endpoints.some((e) => e.ip === '10.78.1.2'), 'what only the old API server had is gone');
      assert.equal(controller.controller.model?.services.has('demo/only-there'), false, 'so is the Service only the old one had');
      assert.match((await federation()).remotes[0]!.url, new RegExp(`${c2b.url.replace(/[.]/g, '\\.')} \\(secret`));
      await until('the old API server\'s watches are closed', () => c2.watchCount === 0, 5_000);
      assert.equal(c2b.watchCount, REMOTE_KINDS.length, 'the new one is watched, one watch per kind');
      c1.remove('Secret', 'weft-system', 'remote-cluster2');
      const dropMs = await until('the Secret deleted drops cluster2', () => echo()!.endpoints.every((e) => e.cluster !== 'cluster2'), 5_000);
      t.diagnostic(`the Secret deleted: cluster2's endpoints gone in ${dropMs} ms`);
      await until('the Secret deleted closes its watches', () => c2b.watchCount === 0, 5_000);
    } finally {
      c1.remove('Secret', 'weft-system', 'remote-cluster2');
      await c2b.stop();
    }
    assert.deepEqual((await federation()).remotes, [], 'no remote left');
  }, (c1, c2) => {
    c1.apply(remoteSecret('remote-cluster2', { cluster2: c2.kubeconfig('weft-reader') }));
  });
});

test('remote secret: a remote API server that stops answering keeps its endpoints for the stale bound, then they are dropped; its watches are restarted with backoff and they return with it', async () => {
  const restarts: Array<{ what: unknown; inMs: unknown }> = [];
  const logger: Logger = { ...silentLogger, warn: (msg, f) => void (msg === 'watch stopped; restarting' && restarts.push({ what: f?.what, inMs: f?.inMs })) };
  await withTwoClusters(async ({ c2, echo, federation }) => {
    await until('cluster2 imported', () => (echo()?.endpoints.length ?? 0) === 2, 15_000);
    const port = c2.port;
    await c2.stop();
    const down = Date.now();
    await until('the failed read is reported', async () => (await federation()).remotes[0]?.lastError !== undefined, 5_000);
    assert.equal(echo()!.endpoints.length, 2, 'within the stale bound the last known endpoints stay');
    await until('dropped past the stale bound', () => echo()!.endpoints.length === 1, 10_000);
    assert.ok(Date.now() - down >= 1_400, 'not before the bound');
    const st = (await federation()).remotes[0]!;
    assert.equal(st.up, false);
    assert.match(st.lastError!, /API server http:\/\/127\.0\.0\.1:\d+: \w+: .*ECONNREFUSED/);
    // Backoff: each kind's watch is retried after 500 ms, then 1 s, 2 s, ... (not in a tight loop).
    const podDelays = restarts.filter((r) => r.what === 'Pod').map((r) => r.inMs);
    // Each ±20 % (lib/backoff.ts), so that a cluster's informers do not all come back at once.
    [500, 1_000].forEach((base, i) => assert.ok(Number(podDelays[i]) >= base * 0.8 && Number(podDelays[i]) <= base * 1.2, `the Pod watch's restart delays double: ${podDelays.join(', ')}`));
    await c2.startOn(port);
    await until('back with its API server', () => echo()!.endpoints.length === 2, 15_000);
    assert.equal((await federation()).remotes[0]!.lastError, undefined, 'its watches stand again');
  }, (c1, c2) => {
    c1.apply(remoteSecret('remote-cluster2', { cluster2: c2.kubeconfig('weft-reader') }));
  }, true, logger);
});

test('remote clusters are watched, not polled (as Istio\'s remote-cluster informers): a pod added in cluster2 arrives through the watch and cluster2 is not listed again; its API server restarted, the watches resume from their resourceVersion without a list; after 410 Gone (history compacted) they relist', async (t) => {
  await withTwoClusters(async ({ c2, echo }) => {
    const has = (ip: string) => echo()?.endpoints.some((e) => e.ip === ip && e.cluster === 'cluster2') ?? false;
    await until('cluster2 imported', () => has('10.78.1.1'), 15_000);
    await until('cluster2 watched, one watch per kind', () => c2.watchCount === REMOTE_KINDS.length, 5_000);
    const lists = () => c2.requests.filter((r) => r.method === 'GET' && !r.path.includes('watch=true')).length;
    const listed = lists();
    c2.apply(pod('demo', 'echo-w1', { labels: { app: 'echo' }, ip: '10.78.2.1', hostIP: '10.78.0.1', sa: 'echo' }));
    const ms = await until('a pod added in cluster2 imported', () => has('10.78.2.1'), 2_000, { intervalMs: 5 });
    t.diagnostic(`a pod added in cluster2 reached cluster1's model in ${ms} ms`);
    // Polling asked cluster2's API server every second; a watch asks nothing while it stands.
    await holds('cluster2 is not listed while its watches stand', () => lists() === listed, 2_500, { intervalMs: 50 });
    assert.equal(c2.watchCount, REMOTE_KINDS.length);

    // Its API server restarted (a change made meanwhile): the watches resume from their resourceVersion.
    const port = c2.port;
    await c2.stop();
    c2.apply(pod('demo', 'echo-w2', { labels: { app: 'echo' }, ip: '10.78.2.2', hostIP: '10.78.0.1', sa: 'echo' }));
    await c2.startOn(port);
    await until('the change made while its API server was down imported', () => has('10.78.2.2'), 10_000);
    await until('watches open again', () => c2.watchCount === REMOTE_KINDS.length, 10_000);
    assert.equal(lists(), listed, 'resumed from the last resourceVersion: nothing listed again');
    const resumed = c2.requests.filter((r) => r.path.startsWith('/api/v1/pods?') && r.path.includes('watch=true')).at(-1)!.path;
    assert.match(resumed, /resourceVersion=\d+/, 'the Pod watch asked for changes after the last resourceVersion it saw');

    // Restarted again after its history was compacted: 410 Gone, the informers relist and converge.
    await c2.stop();
    c2.remove('Pod', 'demo', 'echo-w1');
    c2.compact();
    await c2.startOn(port);
    await until('the pod deleted meanwhile leaves after the relist', () => !has('10.78.2.1') && has('10.78.2.2'), 10_000);
    const podLists = c2.requests.filter((r) => r.method === 'GET' && r.path.split('?')[0] === '/api/v1/pods' && !r.path.includes('watch=true')).length;
    assert.equal(podLists, 2, 'the Pod informer listed again after 410 Gone (once at start, once now)');
  }, (c1, c2) => {
    c1.apply(remoteSecret('remote-cluster2', { cluster2: c2.kubeconfig('weft-reader') }));
  });
});

test('remote secret, attacker side: an exec plugin, a token file or CA path on the controller, garbage, this cluster\'s own ID, a cluster already read through another Secret and an unlabelled Secret are refused or ignored, each named by Secret and key and counted; the good entry beside them still works', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-mc-kube-evil-'));
  const marker = join(dir, 'exec-ran');
  try {
    await withTwoClusters(async ({ controller, echo, federation }) => {
      await until('the good entry is read', () => (echo()?.endpoints.length ?? 0) === 2, 15_000);
      await until('every bad entry is reported', async () => Object.keys((await federation()).refusedSecrets ?? {}).length === 6, 5_000);
      const refused = (await federation()).refusedSecrets!;
      assert.match(refused['weft-system/evil/cluster3']!, /remote secret weft-system\/evil, key "cluster3": users\[0\]\.user\.exec: plugins are not allowed/);
      assert.match(refused['weft-system/evil/cluster4']!, /users\[0\]\.user\.tokenFile: a path on the controller's file system/);
      assert.match(refused['weft-system/evil/cluster5']!, /clusters\[0\]\.cluster\.certificate-authority: a path/);
      assert.match(refused['weft-system/garbage/cluster6']!, /remote secret weft-system\/garbage, key "cluster6": not a kubeconfig/);
      assert.match(refused['weft-system/remote-cluster2/cluster1']!, /names this cluster itself/);
      assert.match(refused['weft-system/remote-cluster2-copy/cluster2']!, /cluster already read through weft-system\/remote-cluster2; ignored/);
      assert.equal(existsSync(marker), false, 'the exec plugin never ran');
      const remotes = (await federation()).remotes.map((r) => r.cluster);
      assert.deepEqual(remotes, ['cluster2'], 'the unlabelled Secret\'s cluster7 is not read');
      const metrics = await controller.registry.metrics();
      assert.match(metrics, /weft_federation_remote_secret_refused_total\{secret="weft-system\/evil",reason="kubeconfig"\} 3/);
      assert.match(metrics, /weft_federation_remote_secret_refused_total\{secret="weft-system\/garbage",reason="kubeconfig"\} 1/);
      assert.match(metrics, /weft_federation_remote_secret_refused_total\{secret="weft-system\/remote-cluster2",reason="own-cluster"\} 1/);
      assert.match(metrics, /weft_federation_remote_secret_refused_total\{secret="weft-system\/remote-cluster2-copy",reason="duplicate"\} 1/);
    }, (c1, c2) => {
      const good = c2.kubeconfig('weft-reader');
      c1.apply(remoteSecret('remote-cluster2', { cluster2: good, cluster1: good }));
      const withUser = (user: string) => good.replace(/ {4}token: lab-weft-reader/, user);
      c1.apply(remoteSecret('evil', {
        cluster3: withUser(`    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/sh\n      args: ["-c", "touch ${marker}"]`),
        cluster4: withUser('    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token'),
        cluster5: good.replace('insecure-skip-tls-verify: true', 'certificate-authority: /etc/weft/ca/tls.key'),
      }));
      c1.apply(remoteSecret('garbage', { cluster6: 'clusters: [' }));
      c1.apply(remoteSecret('unlabelled', { cluster7: good }, false));
      c1.apply(remoteSecret('remote-cluster2-copy', { cluster2: good }));
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('parseRemoteKubeconfig names the field at fault', () => {
  const base = 'apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: c\n  cluster:\n    server: https://10.0.0.1:6443\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n';
  assert.equal(parseRemoteKubeconfig(base, 'ns/s', 'k').getCurrentCluster()?.server, 'https://10.0.0.1:6443');
  const err = (text: string) => {
    try {
      parseRemoteKubeconfig(text, 'ns/s', 'k');
    } catch (e) {
      assert.ok(e instanceof RemoteSecretError);
      assert.equal(e.code, 'WEFT_REMOTE_SECRET');
      return e.message;
    }
    assert.fail('accepted');
  };
  assert.match(err(base.replace('https://10.0.0.1:6443', 'file:///etc/passwd')), /clusters\[0\]\.cluster\.server: must be an http\(s\) URL/);
  assert.match(err(base.replace('    token: t', '    auth-provider:\n      name: gcp')), /users\[0\]\.user\.auth-provider/);
  assert.match(err(base.replace('    token: t', '    client-key: /etc/weft/ca/tls.key')), /users\[0\]\.user\.client-key/);
  assert.match(err(base.replace('current-context: c', 'current-context: nowhere')), /current-context names no cluster/);
  assert.match(err('- a list'), /not a YAML map/);
});

/**
 * A TLS front for a lab API server (which speaks plain HTTP), with a certificate for 127.0.0.1 from
 * a CA of its own: `kubeconfig()` names it as `istioctl create-remote-secret` writes a remote secret
 * (an https server and its CA in certificate-authority-data).
 */
async function tlsFront(api: FakeApiServer): Promise<{ url: string; kubeconfig(user: string): string; close(): void }> {
  const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
  const serving = await ca.issueServingCertificate({ ipAddresses: ['127.0.0.1'] });
  const sockets = new Set<Socket>();
  const front = createTlsServer({ key: serving.keyPem, cert: serving.certChain.join('') }, (s) => {
    const back = connect(api.port, '127.0.0.1');
    sockets.add(s).add(back);
    s.pipe(back).pipe(s);
    for (const x of [s, back]) x.on('error', () => { s.destroy(); back.destroy(); });
    s.on('close', () => back.destroy());
    back.on('close', () => s.destroy());
  });
  await new Promise<void>((r) => front.listen(0, '127.0.0.1', () => r()));
  const url = `https://127.0.0.1:${(front.address() as AddressInfo).port}`;
  return {
    url,
    kubeconfig: (user) => api.kubeconfig(user).replace(`server: ${api.url}`, `server: ${url}`)
      .replace('insecure-skip-tls-verify: true', `certificate-authority-data: ${Buffer.from(ca.trustBundle().join('')).toString('base64')}`),
    close: () => {
      for (const s of sockets) s.destroy();
      front.close();
    },
  };
}

// Istio's remote secrets are written by `istioctl create-remote-secret` with the API server's CA
// (certificate-authority-data) and an https server
// (https://istio.io/latest/docs/setup/install/multicluster/multi-primary_multi-network/#enable-endpoint-discovery):
// a remote read over plain HTTP, or over TLS without verifying the server, is a path anyone on the
// network can answer, and what it answers becomes the endpoints and identities callers here trust.
test('remote secret, attacker side: an http:// API server or insecure-skip-tls-verify is refused unless the controller allows it (--remote-secret-allow-insecure), named by its field, counted (reason insecure) and logged; the verified remote beside them keeps serving', async () => {
  const warnings: Array<{ msg: string; f: Record<string, unknown> | undefined }> = [];
  const logger: Logger = { ...silentLogger, warn: (msg, f) => void warnings.push({ msg, f }) };
  let front: Awaited<ReturnType<typeof tlsFront>> | undefined;
  try {
    await withTwoClusters(async ({ controller, echo, federation }) => {
      await until('the verified remote is read', () => (echo()?.endpoints.length ?? 0) === 2, 15_000);
      await until('both unverified entries are reported', async () => Object.keys((await federation()).refusedSecrets ?? {}).length === 2, 5_000);
      const refused = (await federation()).refusedSecrets!;
      assert.match(refused['weft-system/unverified/cluster3']!, /remote secret weft-system\/unverified, key "cluster3": clusters\[0\]\.cluster\.server: http:\/\/127\.0\.0\.1:\d+ is plain HTTP/);
      assert.match(refused['weft-system/unverified/cluster4']!, /key "cluster4": clusters\[0\]\.cluster\.insecure-skip-tls-verify: the API server's certificate would not be verified/);
      assert.deepEqual((await federation()).remotes.map((r) => [r.cluster, r.up]), [['cluster2', true]], 'only the verified remote is read');
      assert.match(await controller.registry.metrics(), /weft_federation_remote_secret_refused_total\{secret="weft-system\/unverified",reason="insecure"\} 2\n/);
      const logged = warnings.filter((w) => w.msg.startsWith('remote secret entry refused') && w.f?.reason === 'insecure').map((w) => String(w.f?.error));
      assert.equal(logged.length, 2, 'each refusal logged once');
      assert.ok(logged.some((e) => e.includes('clusters[0].cluster.server')) && logged.some((e) => e.includes('clusters[0].cluster.insecure-skip-tls-verify')));
    }, async (c1, c2) => {
      front = await tlsFront(c2);
      c1.apply(remoteSecret('remote-cluster2', { cluster2: front.kubeconfig('weft-reader') }));
      c1.apply(remoteSecret('unverified', {
        cluster3: c2.kubeconfig('weft-reader'),
        cluster4: front.kubeconfig('weft-reader').replace(/certificate-authority-data: \S+/, 'insecure-skip-tls-verify: true'),
      }));
    }, true, logger, {});
  } finally {
    front?.close();
  }
});

test('a controller allowed to read remotes without verification says so at start, once', async () => {
  const warnings: string[] = [];
  const logger: Logger = { ...silentLogger, warn: (msg) => void warnings.push(msg) };
  await withTwoClusters(async ({ echo }) => {
    await until('the remote over plain HTTP is read', () => (echo()?.endpoints.length ?? 0) === 2, 15_000);
    assert.equal(warnings.filter((m) => /remote secrets may name plain-HTTP API servers or skip TLS verification/.test(m)).length, 1);
  }, (c1, c2) => {
    c1.apply(remoteSecret('remote-cluster2', { cluster2: c2.kubeconfig('weft-reader') }));
  }, true, logger);
});

/**
 * A hostile (or broken) API server in front of a lab one: passes everything through until told to
 * `flood` (every Pod list, and every Pod watch open or opened later, gets a body without end, 1 MiB
 * at a time up to `cap`, no newline), to answer Pod lists `gzip`-compressed though they were not
 * asked so, or to `redirect` them to `redirectTo` (and, for those two, Pod watches 410 Gone, so that
 * the client lists), or to `drip` Pod lists a byte every 50 ms. Records each flooded response's bytes once it ended, and the accept-encoding asked.
 */
type FrontMode = 'pass' | 'flood' | 'gzip' | 'redirect' | 'drip';
async function hostileFront(api: FakeApiServer, cap: number): Promise<{ url: string; mode: FrontMode; redirectTo: string; flooded: number[]; encodings: Set<string>; close(): void }> {
  const watches = new Set<ServerResponse>();
  const chunk = Buffer.alloc(1 << 20, 'a');
  const flood = (res: ServerResponse) => {
    let sent = 0;
    const more = () => {
      while (sent < cap && !res.destroyed) {
        sent += chunk.length;
        if (!res.write(chunk)) return void res.once('drain', more);
      }
      res.end();
    };
    res.once('close', () => front.flooded.push(sent));
    more();
  };
  const server = createHttpServer((req, res) => {
    front.encodings.add(String(req.headers['accept-encoding']));
    const pods = req.url!.startsWith('/api/v1/pods');
    const watch = req.url!.includes('watch=true');
    if (pods && front.mode === 'flood') {
      res.writeHead(200, { 'content-type': 'application/json' });
      return flood(res);
    }
    if (pods && watch && (front.mode === 'gzip' || front.mode === 'redirect')) {
      // 410 Gone: the client lists again, and gets the compressed list.
      res.writeHead(200, { 'content-type': 'application/json' });
      return void res.end(`${JSON.stringify({ type: 'ERROR', object: { kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'Expired', code: 410 } })}\n`);
    }
    if (pods && !watch && front.mode === 'drip') {
      res.writeHead(200, { 'content-type': 'application/json' }).flushHeaders();
      const timer = setInterval(() => res.write(' '), 50);
      return void res.once('close', () => clearInterval(timer));
    }
    if (pods && !watch && front.mode === 'redirect') return void res.writeHead(302, { location: `${front.redirectTo}${req.url}` }).end();
    if (pods && !watch && front.mode === 'gzip') {
      res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
      return void res.end(gzipSync(JSON.stringify({ kind: 'PodList', apiVersion: 'v1', metadata: { resourceVersion: api.resourceVersion }, items: [] })));
    }
    const up = httpRequest({ host: '127.0.0.1', port: api.port, method: req.method, path: req.url, headers: req.headers }, (ur) => {
      res.writeHead(ur.statusCode!, ur.headers).flushHeaders();
      if (pods && watch) {
        watches.add(res);
        res.once('close', () => watches.delete(res));
      }
      ur.on('data', (c: Buffer) => !res.destroyed && !front.flooding.has(res) && res.write(c));
      ur.on('end', () => !front.flooding.has(res) && res.end());
    });
    up.on('error', () => res.destroy());
    res.once('close', () => up.destroy());
    req.pipe(up);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const front = {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    flooding: new Set<ServerResponse>(),
    flooded: [] as number[],
    redirectTo: '',
    encodings: new Set<string>(),
    get mode() { return mode; },
    set mode(m: FrontMode) {
      mode = m;
      if (m === 'flood') for (const w of watches) {
        front.flooding.add(w);
        flood(w);
      }
    },
    close: () => {
      server.closeAllConnections();
      server.close();
    },
  };
  let mode: FrontMode = 'pass';
  return front;
}

// client-node reads a list's body whole and a watch's events line by line, without a bound; a
// remote cluster's API server is outside this cluster's control (Istio's remote secrets: a reader
// ServiceAccount of another cluster). Bounded here: a list or one watch event past the bound, or a
// body compressed though it was asked for uncompressed (which could inflate past it), fails that
// read as a failed list or watch does.
test('remote secret, attacker side: a remote API server that sends a list or a watch event past the bound, a compressed body, or a redirect (to any address, plain HTTP too) has the read cut there (its bytes unread, the redirect not followed), named, counted (weft_federation_remote_response_refused_total) and logged; it costs only itself: its last export stays, the other remote is untouched', async () => {
  const LIMIT = 1 << 20;
  const warnings: Array<{ msg: string; f: Record<string, unknown> | undefined }> = [];
  const logger: Logger = { ...silentLogger, warn: (msg, f) => void warnings.push({ msg, f }) };
  const c3 = new FakeApiServer();
  await c3.start();
  const front = await hostileFront(c3, 16 * LIMIT);
  c3.apply(ns('demo', { 'weft.dev/dataplane-mode': 'ambient' }));
  c3.apply(ns('weft-system', { [LABEL_NETWORK]: 'network1' }));
  c3.apply(svc('demo', 'only-c3', { app: 'c3' }, '10.97.3.10'));
  c3.apply(pod('demo', 'c3-pod', { labels: { app: 'c3' }, ip: '10.77.3.1', hostIP: '10.77.0.3', sa: 'c3' }));
  try {
    await withTwoClusters(async ({ controller, echo, federation }) => {
      const onlyC3 = () => controller.controller.model?.services.get('demo/only-c3');
      await until('cluster3 read through the hostile front', () => onlyC3()?.endpoints.length === 1, 15_000);
      await until('cluster2 read', () => (echo()?.endpoints.length ?? 0) === 2, 15_000);
      assert.deepEqual([...front.encodings], ['identity'], 'bodies are asked for uncompressed');
      const c3Status = async () => (await federation()).remotes.find((r) => r.cluster === 'cluster3');

      front.mode = 'flood';
      await until('the flooded read is reported', async () => /larger than 1048576 bytes: refused/.test((await c3Status())?.lastError ?? ''), 10_000);
      await until('a flooded response was cut', () => front.flooded.length > 0, 5_000);
      assert.ok(front.flooded.every((n) => n < 8 * LIMIT), `each flooded response cut near the bound, not read to its end (${front.flooded.join(', ')} bytes sent)`);
      assert.equal(onlyC3()?.endpoints.length, 1, 'its last export stays (within the stale bound)');
      assert.equal(echo()!.endpoints.length, 2, 'the other remote is untouched');
      assert.equal((await federation()).remotes.find((r) => r.cluster === 'cluster2')?.up, true);
      assert.match(await controller.registry.metrics(), /weft_federation_remote_response_refused_total\{cluster="cluster3",reason="too-large"\} [1-9]/);
      const logged = warnings.find((w) => w.msg.startsWith('remote API server response refused') && w.f?.cluster === 'cluster3');
      assert.ok(logged, 'logged');
      assert.equal(logged.f?.path, '/api/v1/pods');
      assert.equal(logged.f?.reason, 'too-large');

      front.mode = 'gzip';
      await until('a compressed list is refused', async () => /weft_federation_remote_response_refused_total\{cluster="cluster3",reason="encoding"\} [1-9]/.test(await controller.registry.metrics()), 20_000);
      assert.match((await c3Status())?.lastError ?? '', /compressed \(content-encoding gzip\)/);
      assert.equal(onlyC3()?.endpoints.length, 1, 'its last export still stays');

      // A redirect elsewhere (here to plain HTTP on another address) is not followed.
      const asked: string[] = [];
      const elsewhere = createHttpServer((req, res) => {
        asked.push(req.url!);
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ kind: 'PodList', apiVersion: 'v1', metadata: { resourceVersion: '1' }, items: [] }));
      });
      await new Promise<void>((r) => elsewhere.listen(0, '127.0.0.2', () => r()));
      try {
        front.redirectTo = `http://127.0.0.2:${(elsewhere.address() as AddressInfo).port}`;
        front.mode = 'redirect';
        await until('a redirect is refused', async () => /weft_federation_remote_response_refused_total\{cluster="cluster3",reason="redirect"\} [1-9]/.test(await controller.registry.metrics()), 20_000);
        assert.match((await c3Status())?.lastError ?? '', /redirects \(HTTP 302 to http:\/\/127\.0\.0\.2:\d+\/api\/v1\/pods/);
        assert.deepEqual(asked, [], 'the redirect was not followed');
        assert.equal(onlyC3()?.endpoints.length, 1, 'its last export still stays');
      } finally {
        elsewhere.closeAllConnections();
        elsewhere.close();
      }
    }, (c1, c2) => {
      c1.apply(remoteSecret('remote-cluster2', { cluster2: c2.kubeconfig('weft-reader') }));
      c1.apply(remoteSecret('remote-cluster3', { cluster3: c3.kubeconfig('weft-reader').replace(c3.url, front.url) }));
    }, true, logger, { remoteSecretsAllowInsecure: true, remoteMaxResponseBytes: LIMIT, remoteStaleAfterMs: 60_000 });
  } finally {
    front.close();
    await c3.stop();
  }
});

// undici bounds only the silence between two chunks of a body (300 s): a list answered a byte at a
// time would hold that informer's list, unreported, for as long as the remote likes.
test('remote API server, attacker side: a list answered a byte at a time fails at the list deadline, named and counted (too-slow); watches, which stand for as long as they stand, are not cut by it', async () => {
  const c3 = new FakeApiServer();
  await c3.start();
  const front = await hostileFront(c3, 0);
  c3.apply(ns('demo', { 'weft.dev/dataplane-mode': 'ambient' }));
  c3.apply(pod('demo', 'p', { labels: { app: 'p' }, ip: '10.79.1.1', hostIP: '10.79.0.1', sa: 'p' }));
  const reports: RemoteReport[] = [];
  const refusals: string[] = [];
  front.mode = 'drip';
  const reader = new RemoteClusterReader({
    cluster: 'cluster3', secret: 'weft-system/s', kubeConfig: kubeConfigForServer(front.url), trustDomain: TD, rootNamespace: 'weft-system', log: silentLogger,
    report: (r) => reports.push(r), restartDelayMs: 50, listDeadlineMs: 400, onResponseRefused: (reason) => refusals.push(reason),
  });
  try {
    reader.start();
    await until('the dripped list fails at its deadline', () => reports.some((r) => 'error' in r && /Pod: response to \/api\/v1\/pods not complete within 400 ms: refused/.test(r.error)), 5_000);
    assert.ok(refusals.includes('too-slow'));
    front.mode = 'pass';
    await until('read once the list is answered', () => 'export' in (reports.at(-1) ?? {}), 10_000);
    const errors = reports.filter((r) => 'error' in r).length;
    await holds('the standing watches outlive the list deadline', () => reports.filter((r) => 'error' in r).length === errors, 1_500, { intervalMs: 50 });
  } finally {
    await reader.stop();
    front.close();
    await c3.stop();
  }
});

const EASTWEST_ID = `spiffe://${TD}/ns/weft-system/sa/weft-eastwest`;

/**
 * Asks the controller's certificate service for `identity` with a projected token (audience
 * weft-controller) of `namespace/sa`, as the kubelet mounts it in the pod; one request, no retries.
 */
async function signWithToken(api: FakeApiServer, c: RunningController, namespace: string, sa: string, identity: string): Promise<string[]> {
  api.apply({ apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: sa, namespace } });
  const token = api.issueToken({ namespace, serviceAccount: sa, audiences: ['weft-controller'], node: 'node-a' }).token;
  const signer = new GrpcCertificateSigner({
    address: `127.0.0.1:${c.grpcPort}`, trustBundle: c.ca!.trustBundle(), serverIdentity: `spiffe://${TD}/ns/weft-system/sa/weft-controller`,
    token: () => token, trustDomain: TD, nodeName: 'node-a', useNodeCertificate: false,
  });
  try {
    return (await signer.sign(identity, createCsr(identity, (await generateKeyPair()).privateKey), 0)).certChain;
  } finally {
    signer.close();
  }
}

test('the east-west gateway\'s ServiceAccount token (weft-system/weft-eastwest, TokenReview) obtains its own identity from a multi-cluster controller and nothing else; the same name elsewhere and other identities are refused and counted', async () => {
  await withTwoClusters(async ({ c1, controller }) => {
    const chain = await signWithToken(c1, controller, 'weft-system', 'weft-eastwest', EASTWEST_ID);
    assert.ok(chain.length >= 1);
    assert.equal(new X509Certificate(chain[0]!).subjectAltName, `URI:${EASTWEST_ID}`);
    // Attacker side: the gateway's token asks for the controller's identity; a ServiceAccount of the same name in another namespace asks for the gateway's.
    await assert.rejects(signWithToken(c1, controller, 'weft-system', 'weft-eastwest', `spiffe://${TD}/ns/weft-system/sa/weft-controller`), (e: Error) => e instanceof CertificateRefusedError && /obtains only its own identity/.test(e.message));
    await assert.rejects(signWithToken(c1, controller, 'demo', 'weft-eastwest', `spiffe://${TD}/ns/demo/sa/weft-eastwest`), (e: Error) => e instanceof CaAuthenticationError && /system:serviceaccount:demo:weft-eastwest, which is not a Weft agent ServiceAccount/.test(e.message));
    await assert.rejects(signWithToken(c1, controller, 'demo', 'weft-eastwest', EASTWEST_ID), (e: Error) => e instanceof CaAuthenticationError);
    const metrics = await controller.registry.metrics();
    assert.match(metrics, /weft_ca_certificate_requests_total\{outcome="issued"\} 1\n/);
    assert.match(metrics, /weft_ca_certificate_requests_total\{outcome="denied"\} 1\n/);
    assert.match(metrics, /weft_ca_certificate_requests_total\{outcome="unauthenticated"\} 2\n/);
  }, () => {});
});

test('a controller that is not part of a multi-cluster mesh refuses the weft-eastwest token (no gateway, no identity for it)', async () => {
  await withTwoClusters(async ({ c1, controller }) => {
    await assert.rejects(signWithToken(c1, controller, 'weft-system', 'weft-eastwest', EASTWEST_ID), (e: Error) => e instanceof CaAuthenticationError && /weft-system:weft-eastwest, which is not/.test(e.message));
    assert.match(await controller.registry.metrics(), /weft_ca_certificate_requests_total\{outcome="unauthenticated"\} 1\n/);
  }, () => {}, false);
});

test('the remote gateway from its weft-eastwest Service: the LoadBalancer address, else an external IP; the tls-hbone port, else 15008; none without an address (that network\'s endpoints are then left out)', () => {
  const id = `spiffe://${TD}/ns/weft-system/sa/weft-eastwest`;
  const s = (spec: object, status: object = {}) => ({ kind: 'Service', spec, status });
  assert.deepEqual(gatewayOf(s({ ports: [{ name: 'tls-hbone', port: 443 }] }, { loadBalancer: { ingress: [{ hostname: 'lb.example' }, { ip: '203.0.113.9' }] } }), 'n2', id), { network: 'n2', address: '203.0.113.9', port: 443, spiffeId: id });
  assert.deepEqual(gatewayOf(s({ externalIPs: ['198.51.100.7'], ports: [{ name: 'other', port: 15008 }] }), 'n2', id)?.address, '198.51.100.7');
  // A load-balancer address in another spelling (Kubernetes accepts it) is the gateway's address in its one spelling; a zoned one is none.
  assert.equal(gatewayOf(s({ ports: [{ name: 'tls-hbone', port: 443 }] }, { loadBalancer: { ingress: [{ ip: 'FD00:0:0::0010' }] } }), 'n2', id)?.address, 'fd00::10');
  assert.equal(gatewayOf(s({ ports: [{ name: 'tls-hbone', port: 443 }] }, { loadBalancer: { ingress: [{ ip: 'fe80::1%eth0' }] } }), 'n2', id), undefined);
  assert.equal(gatewayOf(s({ externalIPs: ['198.51.100.8'], ports: [{ name: 'tls-hbone', port: 443 }] }, { loadBalancer: { ingress: [{ ip: 'fe80::1%eth0' }, { ip: 'not-an-ip' }] } }), 'n2', id)?.address, '198.51.100.8', 'a bad entry does not hide a usable one');
  assert.equal(gatewayOf(s({ ports: [{ name: 'tls-hbone', port: 15008 }] }, { loadBalancer: {} }), 'n2', id), undefined, 'load balancer not provisioned yet');
  assert.equal(gatewayOf(s({ externalIPs: ['198.51.100.7'], ports: [{ name: 'http', port: 80 }] }), 'n2', id), undefined, 'no HBONE port');
  assert.equal(gatewayOf(undefined, 'n2', id), undefined);
});

test('remote secret with the weft.dev/trust-domain annotation (per-cluster trust domains): the remote\'s endpoints and gateway carry identities of its own trust domain', async () => {
  await withTwoClusters(async ({ echo }) => {
    await until('cluster2 imported', () => echo()?.endpoints.some((e) => e.cluster === 'cluster2') ?? false, 15_000);
    const remote = echo()!.endpoints.find((e) => e.cluster === 'cluster2')!;
    assert.equal(remote.spiffeId, 'spiffe://cluster2.local/ns/demo/sa/echo');
    assert.equal(remote.gateway?.spiffeId, 'spiffe://cluster2.local/ns/weft-system/sa/weft-eastwest');
    assert.equal(echo()!.endpoints.find((e) => e.cluster !== 'cluster2')!.spiffeId, `spiffe://${TD}/ns/demo/sa/echo`, 'local identities keep this cluster\'s');
  }, (c1, c2) => {
    c1.apply(remoteSecret('remote-cluster2', { cluster2: c2.kubeconfig('weft-reader') }, true, { 'weft.dev/trust-domain': 'cluster2.local' }));
  });
});

test('a remote API server that goes silent (a partition that drops packets: no reset, no error) is reported failing once a watch cannot be opened within its timeout, and its endpoints leave after the stale bound; they return when it answers again', async (t) => {
  const c2 = new FakeApiServer();
  await c2.start();
  seedRemote(c2);
  // Between the reader and cluster2's API server: a TCP relay that can turn into a black hole.
  let silent = false;
  const pairs: Array<[Socket, Socket]> = [];
  const held: Socket[] = [];
  const relay = createNetServer((client) => {
    client.on('error', () => {});
    if (silent) return void held.push(client);
    const up = connect(c2.port, '127.0.0.1');
    up.on('error', () => client.destroy());
    client.pipe(up);
    up.pipe(client);
    pairs.push([client, up]);
  });
  await new Promise<void>((r) => relay.listen(0, '127.0.0.1', () => r()));
  const relayUrl = `http://127.0.0.1:${(relay.address() as AddressInfo).port}`;
  const federation = new Federation({
    cluster: 'cluster1', network: 'network1', remotes: [{ name: 'cluster2', url: relayUrl, pushed: true }],
    tls: () => assert.fail('a pushed remote is not fetched'), mayRead: () => false, isController: () => false, staleAfterMs: 1_000, log: silentLogger,
  });
  const reader = new RemoteClusterReader({
    cluster: 'cluster2', secret: 'weft-system/remote-cluster2', kubeConfig: kubeConfigForServer(relayUrl), trustDomain: TD, rootNamespace: 'weft-system',
    log: silentLogger, report: (r) => federation.report('cluster2', r), watchTimeoutMs: 1_000,
  });
  const local: MeshModel = emptyMeshModel();
  const imported = () => federation.merge(local).services.get('demo/echo')?.endpoints.length ?? 0;
  try {
    await federation.start();
    reader.start();
    await until('cluster2\'s echo imported', () => imported() === 1, 10_000);
    silent = true;
    for (const [a, b] of pairs) {
      a.unpipe(b);
      b.unpipe(a);
    }
    const cut = Date.now();
    await until('the silent API server is reported failing', () => /timeout/i.test(federation.status()[0]?.lastError ?? ''), 10_000);
    t.diagnostic(`reported failing ${Date.now() - cut} ms after it went silent: ${federation.status()[0]!.lastError}`);
    await until('its endpoints leave after the stale bound', () => imported() === 0, 10_000);
    assert.equal(federation.status()[0]!.up, false);
    silent = false;
    await until('it answers again: its endpoints return', () => imported() === 1, 15_000);
    assert.equal(federation.status()[0]!.lastError, undefined);
  } finally {
    await reader.stop();
    await federation.stop();
    for (const s of [...held, ...pairs.flat()]) s.destroy();
    await new Promise<void>((r) => relay.close(() => r()));
    await c2.stop();
  }
});

// Istio ambient multi-network: a Service only cluster2 has, behind cluster2's own waypoint, is sent
// to that waypoint (through cluster2's gateway); read here through cluster2's API server, the
// Waypoint and its running pod as cluster2's own controller would export them.
test('remote secret: a Service only cluster2 has behind cluster2\'s waypoint is imported with that waypoint (its running pod\'s address, network2\'s gateway) and no endpoints; with the waypoint\'s pod gone it is refused, named and counted', async () => {
  await withTwoClusters(async ({ c1, c2, controller, federation }) => {
    c1.apply(remoteSecret('remote-cluster2', { cluster2: c2.kubeconfig('weft-reader') }));
    const model = () => controller.controller.model;
    await until('demo/echo-wp imported with cluster2\'s waypoint', () => model()?.services.get('demo/echo-wp')?.waypoint?.cluster === 'cluster2', 15_000).catch(async (e: Error) => {
      throw new Error(`${e.message}: ${JSON.stringify(await federation())}`);
    });
    const s = model()!.services.get('demo/echo-wp')!;
    assert.deepEqual([s.vips, s.endpoints.length], [['10.97.0.22'], 0]);
    const wp = model()!.waypoints.get('cluster2/demo/waypoint')!;
    assert.deepEqual([wp.address, wp.ready, wp.spiffeId, wp.network, wp.gateway?.address], ['10.78.1.7', true, `spiffe://${TD}/ns/demo/sa/waypoint`, 'network2', GATEWAY_IP]);
    c2.remove('Pod', 'demo', 'waypoint-c2');
    await until('refused while its waypoint has no running pod', async () => (await federation()).remotes[0]?.refusedServices?.['demo/echo-wp'] !== undefined, 10_000);
    assert.match((await federation()).remotes[0]!.refusedServices!['demo/echo-wp']!, /goes through waypoint demo\/waypoint of cluster cluster2, which enforces its L7 policy and is not ready/);
    assert.equal(model()!.services.has('demo/echo-wp'), false);
    assert.match(await controller.registry.metrics(), /weft_federation_import_refused_total\{cluster="cluster2",reason="waypoint"\} 1\n/);
  }, (_c1, c2) => {
    c2.apply({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'waypoint', namespace: 'demo' } });
    c2.apply(pod('demo', 'waypoint-c2', { labels: { [LABEL_WAYPOINT_FOR]: 'waypoint' }, ip: '10.78.1.7', hostIP: '10.78.0.1', sa: 'waypoint' }));
    const behind = svc('demo', 'echo-wp', { app: 'echo' }, '10.97.0.22');
    c2.apply({ ...behind, metadata: { ...behind.metadata, labels: { [LABEL_USE_WAYPOINT]: 'waypoint' } } });
  });
});

test('weftctl create-remote-secret refuses to write what the controllers refuse: an http:// server, or a kubeconfig that skips TLS verification without a CA, each named with the way out; --allow-insecure writes it as it is', async () => {
  const { createRemoteSecretCommand } = await import('../../cli/commands/create-remote-secret.ts');
  const { parse: parseYaml } = await import('yaml');
  const api = new FakeApiServer();
  await api.start();
  const dir = mkdtempSync(join(tmpdir(), 'weft-crs-'));
  try {
    api.apply({ apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'weft-reader', namespace: 'weft-system' } });
    const run = async (kubeconfig: string, ...args: string[]) => {
      const file = join(dir, `kc-${Math.random().toString(36).slice(2)}`);
      writeFileSync(file, kubeconfig);
      let out = '';
      let err = '';
      let code = -1;
      await createRemoteSecretCommand({ out: (t) => (out += t), err: (t) => (err += t), exit: (c) => { throw new Error(`exit ${c}`); }, setExitCode: (c) => (code = c) })
        .parseAsync(['--kubeconfig', file, '--name', 'cluster2', ...args], { from: 'user' });
      return { out, err, code };
    };
    const plain = await run(api.kubeconfig());
    assert.notEqual(plain.code, 0);
    assert.equal(plain.out, '');
    assert.match(plain.err, /--server http:\/\/127\.0\.0\.1:\d+ is plain HTTP: the other clusters' controllers refuse .*--allow-insecure \(their controllers then need --remote-secret-allow-insecure\)/);
    const skipping = await run(api.kubeconfig(), '--server', 'https://10.0.0.1:6443');
    assert.match(skipping.err, /the kubeconfig skips TLS verification \(insecure-skip-tls-verify\) and names no CA/);
    const allowed = await run(api.kubeconfig(), '--allow-insecure');
    assert.equal(allowed.code, 0, allowed.err);
    const secret = parseYaml(allowed.out) as { data: Record<string, string> };
    const kc = parseYaml(Buffer.from(secret.data['cluster2']!, 'base64').toString()) as { clusters: Array<{ cluster: Record<string, unknown> }> };
    assert.deepEqual(kc.clusters[0]!.cluster, { server: api.url, 'insecure-skip-tls-verify': true });
  } finally {
    await api.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

// Each list and watch event from a remote API server is bounded in bytes, but a watch may add
// objects without end, each held by the reader's informers and compiled at every change: a hostile
// or broken remote grew the controller's memory (and every compile) past any import quota.
test('remote API server, attacker side: one that holds more objects than a remote may (4 x the import quota) has its watches stopped and what they held dropped, named, counted (too-many-objects) and logged; its last export stays until the stale bound; back under the bound it is read again', async () => {
  const c2 = new FakeApiServer();
  await c2.start();
  seedRemote(c2);
  const federation = new Federation({
    cluster: 'cluster1', network: 'network1', remotes: [{ name: 'cluster2', url: c2.url, pushed: true }],
    tls: () => assert.fail('a pushed remote is not fetched'), mayRead: () => false, isController: () => false, staleAfterMs: 60_000, log: silentLogger,
  });
  const refused: string[] = [];
  const lines: Array<Record<string, unknown>> = [];
  const reader = new RemoteClusterReader({
    cluster: 'cluster2', secret: 'weft-system/remote-cluster2', kubeConfig: kubeConfigForServer(c2.url), trustDomain: TD, rootNamespace: 'weft-system',
    log: { ...silentLogger, warn: (msg: string, fields?: Record<string, unknown>) => lines.push({ msg, ...fields }) },
    report: (r) => federation.report('cluster2', r), maxObjects: 30, overflowRetryMs: 300, onResponseRefused: (reason) => refused.push(reason),
  });
  const local: MeshModel = emptyMeshModel();
  const endpoints = () => federation.merge(local).services.get('demo/echo')?.endpoints.length ?? 0;
  try {
    await federation.start();
    reader.start();
    await until('cluster2\'s echo imported', () => endpoints() === 1, 10_000);
    // The remote adds pods through its watch, past the bound.
    for (let i = 0; i < 40; i++) c2.apply(pod('demo', `flood-${i}`, { labels: { app: 'flood' }, ip: `10.78.9.${i + 1}`, hostIP: '10.78.0.1', sa: 'flood' }));
    await until('the reader is reported failing, named', () => /it holds \d+ objects .*past the 30 one remote cluster may/.test(federation.status()[0]?.lastError ?? ''), 10_000);
    assert.ok(refused.includes('too-many-objects'), 'counted');
    assert.ok(lines.some((l) => l.reason === 'too-many-objects' && l.cluster === 'cluster2' && l.max === 30), 'logged');
    assert.equal(endpoints(), 1, 'its last export stays until the stale bound');
    assert.equal(federation.status()[0]!.up, true);
    // Back under the bound: read again (the wait doubling meanwhile), the error cleared.
    for (let i = 0; i < 40; i++) c2.remove('Pod', 'demo', `flood-${i}`);
    c2.apply(pod('demo', 'echo-c2b', { labels: { app: 'echo' }, ip: '10.78.1.2', hostIP: '10.78.0.1', sa: 'echo' }));
    await until('read again once under the bound', () => endpoints() === 2 && federation.status()[0]!.lastError === undefined, 15_000);
  } finally {
    await reader.stop();
    await federation.stop();
    await c2.stop();
  }
});
