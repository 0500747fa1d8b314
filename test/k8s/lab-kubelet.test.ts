// The kube lab's kubelet (cli/local/kube/kubelet.ts) and Service network (cli/local/kube/kube-lab.ts), with
// the real kubectl: a Deployment applied with kubectl becomes pods running as processes in node
// network namespaces, with their volumes as files, env from the downward API and ConfigMaps,
// probes run, status and EndpointSlices written back, Service traffic, a liveness restart and a
// rolling update. Behaviour per the Kubernetes documentation (Pod lifecycle, Configure Liveness,
// Readiness Probes, Projected Volumes, Deployments' rolling update).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Lab } from '../lab/lab.ts';
import { KubeLab } from '../../cli/local/kube/kube-lab.ts';
import { until } from '../lab/wait.ts';
import { requestInNetns } from '../../cli/local/netns-http.ts';
import { collectOutput } from '../../lib/sys/exec.ts';

const run = promisify(execFile);
const skip = spawnSync('kubectl', ['version', '--client']).status !== 0 && 'kubectl is not installed';

const lab = new Lab();
let kube: KubeLab | undefined;
after(async () => {
  await kube?.destroy();
  await lab.cleanup();
});

const manifest = (version: string) => `
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: shop}
data: {greeting: hello, mode: lab}
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: shop}
data: {password: ${Buffer.from('s3cret').toString('base64')}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: echo, namespace: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: shop}
spec:
  replicas: 2
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo, tier: web}}
    spec:
      serviceAccountName: echo
      containers:
      - name: echo
        image: lab/echo:${version}
        args: [--port, "8080", --name, $(POD_NAME), --version, ${version}]
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
        - {name: GREETING, valueFrom: {configMapKeyRef: {name: settings, key: greeting}}}
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
        volumeMounts:
        - {name: settings, mountPath: /etc/settings}
        - {name: creds, mountPath: /etc/creds, readOnly: true}
        - {name: identity, mountPath: /var/run/identity}
      volumes:
      - {name: settings, configMap: {name: settings}}
      - {name: creds, secret: {secretName: creds}}
      - name: identity
        projected:
          sources:
          - serviceAccountToken: {audience: lab-audience, expirationSeconds: 600, path: token}
          - downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
`;

test('a Deployment applied with kubectl runs as pods on two lab nodes: volumes, env, probes, status, EndpointSlices, Service traffic, liveness restarts and a rolling update', { skip, timeout: 180_000 }, async () => {
  const stateDir = mkdtempSync(join(tmpdir(), 'weft-kubelet-'));
  kube = await KubeLab.create({ prefix: lab.id, stateDir, nodes: ['node-a', 'node-b'] });
  kube.start();
  const kubectl = async (...args: string[]) => (await run('kubectl', ['--kubeconfig', kube!.kubeconfigFile, ...args], { env: { ...process.env, HOME: stateDir } })).stdout;
  const explain = () => [...kube!.kubelets.values()].map((k) => `${k.o.node}: ${[...k.errors].map(([p, e]) => `${p}: ${e}`).join('\n')}`).join('\n')
    + `\n${kube!.api.list('Pod').map((p) => `${p.metadata.namespace}/${p.metadata.name} ${JSON.stringify(p['status'])}`).join('\n')}`;
  const file = join(stateDir, 'app.yaml');
  writeFileSync(file, manifest('v1'));
  await kubectl('apply', '--server-side', '-f', file);

  await until('the Deployment has 2 ready replicas', () => (kube!.api.get('Deployment', 'shop', 'echo')?.['status'] as { readyReplicas?: number } | undefined)?.readyReplicas === 2, 60_000, { explain });
  const pods = kube.api.list('Pod').filter((p) => p.metadata.namespace === 'shop');
  assert.equal(pods.length, 2);
  assert.deepEqual(pods.map((p) => (p['spec'] as { nodeName: string }).nodeName).sort(), ['node-a', 'node-b'], 'one pod per node');
  for (const p of pods) {
    const st = p['status'] as { phase: string; podIP: string; hostIP: string; conditions: Array<{ type: string; status: string }>; containerStatuses: Array<{ ready: boolean; restartCount: number }> };
    assert.equal(st.phase, 'Running');
    assert.match(st.podIP, new RegExp(`^${kube.net.base.replace('.', '\\.')}\\.[12]\\.\\d+$`));
    assert.ok(st.conditions.some((c) => c.type === 'Ready' && c.status === 'True'));
    assert.equal(st.containerStatuses[0]!.ready, true);
  }
  // kubectl reads what the kubelet wrote.
  assert.match(await kubectl('get', 'pods', '-n', 'shop', '-o', 'jsonpath={.items[*].status.phase}'), /^Running Running$/);

  // Volumes as files, env from the downward API and a ConfigMap, seen from inside the container.
  const first = kube.running('shop', pods[0]!.metadata.name)!;
  const pid = first.pod.containers.get('echo')!.process!.pid!;
  const inContainer = async (...argv: string[]) => (await collectOutput(spawn('nsenter', ['-t', String(pid), '-m', '-r', '-w', ...argv], { stdio: ['ignore', 'pipe', 'pipe'] }), 10_000)).stdout;
  assert.equal(await inContainer('cat', '/etc/settings/greeting'), 'hello');
  assert.equal(await inContainer('cat', '/etc/creds/password'), 's3cret');
  assert.match(await inContainer('cat', '/var/run/identity/labels'), /app="echo"\ntier="web"/);
  const environ = await inContainer('cat', `/proc/${pid}/environ`);
  assert.ok(environ.split('\0').includes(`POD_NAME=${pods[0]!.metadata.name}`), environ);
  assert.ok(environ.split('\0').includes('GREETING=hello'));
  assert.ok(environ.split('\0').includes(`NODE=${(pods[0]!['spec'] as { nodeName: string }).nodeName}`));
  // The projected token: audience, pod and node bound, accepted by TokenReview for that audience only.
  const token = await inContainer('cat', '/var/run/identity/token');
  const review = kube.api.reviewToken(token, ['lab-audience']) as { authenticated: boolean; user: { username: string; extra: Record<string, string[]> } };
  assert.equal(review.authenticated, true);
  assert.equal(review.user.username, 'system:serviceaccount:shop:echo');
  assert.equal((kube.api.reviewToken(token) as { authenticated: boolean }).authenticated, false, 'not valid for the API server\'s own audience');
  // The ServiceAccount token volume the API server's admission adds.
  assert.equal(await inContainer('cat', '/var/run/secrets/kubernetes.io/serviceaccount/namespace'), 'shop');
  assert.match(await inContainer('cat', '/var/run/secrets/kubernetes.io/serviceaccount/ca.crt'), /BEGIN CERTIFICATE/);

  // The EndpointSlice lists both pods ready, port resolved by name; the Service answers from a node.
  await until('EndpointSlice with 2 ready endpoints', () => ((kube!.api.get('EndpointSlice', 'shop', 'echo-lab')?.['endpoints'] ?? []) as Array<{ conditions: { ready: boolean } }>).filter((e) => e.conditions.ready).length === 2, 10_000);
  assert.deepEqual(kube.api.get('EndpointSlice', 'shop', 'echo-lab')!['ports'], [{ name: 'http', port: 8080, protocol: 'TCP' }]);
  const clusterIP = (kube.api.get('Service', 'shop', 'echo')!['spec'] as { clusterIP: string }).clusterIP;
  const node = kube.net.node('node-a');
  const seen = new Set<string>();
  await until('both pods answer through the Service', async () => {
    const r = await requestInNetns(node.netnsPath, `http://${clusterIP}:80/`, { timeoutMs: 2_000 });
    seen.add((JSON.parse(r.body) as { pod: string }).pod);
    return seen.size === 2;
  }, 20_000);

  // A ConfigMap change reaches the mounted file.
  kube.api.apply({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'settings', namespace: 'shop' }, data: { greeting: 'bonjour', mode: 'lab' } });
  await until('the mounted ConfigMap follows its object', async () => (await inContainer('cat', '/etc/settings/greeting')) === 'bonjour', 10_000);

  // Rolling update: a new template rolls pod by pod; v2 answers, never fewer than 2 ready pods.
  writeFileSync(file, manifest('v2'));
  await kubectl('apply', '--server-side', '-f', file);
  let minReady = 2;
  await until('every pod runs v2', async () => {
    const ps = kube!.api.list('Pod').filter((p) => p.metadata.namespace === 'shop');
    minReady = Math.min(minReady, ps.filter((p) => ((p['status'] as { conditions?: Array<{ type: string; status: string }> })?.conditions ?? []).some((c) => c.type === 'Ready' && c.status === 'True')).length);
    return ps.length === 2 && ps.every((p) => (p['spec'] as { containers: Array<{ image: string }> }).containers[0]!.image === 'lab/echo:v2')
      && (kube!.api.get('Deployment', 'shop', 'echo')?.['status'] as { readyReplicas?: number; updatedReplicas?: number })?.readyReplicas === 2;
  }, 60_000, { explain });
  assert.ok(minReady >= 2, `never fewer than 2 ready pods during the roll (saw ${minReady})`);
  await until('the Service answers v2', async () => {
    const r = await requestInNetns(node.netnsPath, `http://${clusterIP}:80/`, { timeoutMs: 2_000 });
    return (JSON.parse(r.body) as { version: string }).version === 'v2';
  }, 20_000);
  assert.equal(kube.api.list('ReplicaSet').filter((r) => r.metadata.namespace === 'shop').length, 1, 'the old ReplicaSet is gone');

  // Liveness: a container whose probe fails is restarted (restartCount moves).
  kube.api.apply({
    apiVersion: 'v1', kind: 'Pod', metadata: { name: 'unhealthy', namespace: 'shop' },
    spec: { nodeName: 'node-b', containers: [{ name: 'app', image: 'lab/echo:v1', args: ['--port', '8080'], livenessProbe: { tcpSocket: { port: 9999 }, periodSeconds: 1, failureThreshold: 2 } }] },
  });
  await until('the unhealthy container was restarted', () => ((kube!.api.get('Pod', 'shop', 'unhealthy')?.['status'] as { containerStatuses?: Array<{ restartCount: number }> })?.containerStatuses?.[0]?.restartCount ?? 0) >= 1, 30_000, { explain });

  // Deleting the Deployment removes its pods, their processes and network namespaces.
  const netns = kube.api.list('Pod').filter((p) => p.metadata.namespace === 'shop' && p.metadata.name.startsWith('echo-')).map((p) => `/var/run/netns/${lab.id}-shop-${p.metadata.name}`);
  await kubectl('delete', 'deployment', '-n', 'shop', 'echo', '--wait=false');
  await until('the pods and their namespaces are gone', () => kube!.api.list('Pod').every((p) => !p.metadata.name.startsWith('echo-')) && netns.every((n) => !existsSync(n)), 40_000, { explain });
});
