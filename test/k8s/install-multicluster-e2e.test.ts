// Multi-cluster in Kubernetes mode, end to end (issue 18, item 8), translated from Istio's
// multi-primary, multi-network set-up: two kube-lab clusters with kubelets, each on its own
// network (own node, pod and Service ranges), meeting only at the exchange
// (cli/local/kube/multicluster.ts). Each is installed unedited with the real kubectl from
// `weftctl install --cluster-id clusterN --network networkN --eastwest --ca-secret cacerts` (one
// root, an intermediate per cluster); the east-west gateway runs as the installed Deployment, its
// LoadBalancer address is the cluster's edge; `weftctl create-remote-secret` from each cluster is
// applied in the other. The same demo/echo runs in both, a client in cluster1. One set-up shared
// by the tests, in order.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab } from '../lab/lab.ts';
import { until } from '../lab/wait.ts';
import { KubeMultiCluster, type KubeCluster } from '../../cli/local/kube/multicluster.ts';
import { collectOutput } from '../../lib/sys/exec.ts';
import { requestInNetns } from '../../cli/local/netns-http.ts';

const skip = spawnSync('kubectl', ['version', '--client']).status !== 0 && 'kubectl is not installed (make deps installs Debian\'s kubernetes-client)';
const IMAGE = 'ghcr.io/weft-mesh/weft:lab';
const CLIENT = 'spiffe://cluster.local/ns/demo/sa/client';

const lab = new Lab();
let mc: KubeMultiCluster;
let stateDir: string;
let c1: KubeCluster;
let c2: KubeCluster;

after(async () => {
  await mc?.destroy();
  await lab.cleanup();
  if (stateDir) rmSync(stateDir, { recursive: true, force: true });
});

type Obj = NonNullable<ReturnType<KubeCluster['lab']['api']['get']>>;
const statusOf = <T>(o: Obj | undefined) => (o?.['status'] ?? {}) as T;
const ready = (c: KubeCluster, ns: string, deploy: string, n = 1) => statusOf<{ readyReplicas?: number }>(c.lab.api.get('Deployment', ns, deploy)).readyReplicas === n;

function explain(): string {
  const out: string[] = [];
  for (const c of mc.clusters) {
    for (const k of c.lab.kubelets.values()) {
      for (const [p, e] of k.errors) out.push(`${c.name} ${k.o.node} ${p}: ${e.split('\n')[0]}`);
      for (const rp of k.pods.values()) {
        for (const name of rp.containers.keys()) out.push(`--- ${c.name} ${rp.namespace}/${rp.name}/${name}:\n${k.logTail(rp.namespace, rp.name, name.replace(/^init:/, ''), 8)}`);
      }
    }
  }
  return out.join('\n');
}

/** The demo app of both clusters: echo (answering with its cluster's name), and in cluster1 a client. */
function apps(c: KubeCluster): string {
  return `
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: echo, namespace: demo}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: demo}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      serviceAccountName: echo
      containers:
      - name: echo
        image: lab/echo:v1
        args: [--port, "8080", --name, $(POD_NAME)]
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}, {name: WEFT_CLUSTER, value: ${c.name}}]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
${c === c1 ? `---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo, labels: {app: client}}
spec:
  serviceAccountName: client
  nodeName: node1
  containers: [{name: sleep, image: lab/sleep}]
` : ''}`;
}

async function applyYaml(c: KubeCluster, name: string, yaml: string): Promise<void> {
  const file = join(stateDir, `${c.name}-${name}.yaml`);
  writeFileSync(file, yaml);
  await mc.kubectl(c, 'apply', '--server-side', '-f', file);
}

type Answer = { cluster?: string; pod?: string; error?: string | number; ms?: number };

/**
 * From cluster1's client pod (its netns and cgroup, so its agent captures it): `count` GETs to
 * echo's cluster IP one after the other, one connection each, or until `stopFile` exists; each
 * answer also appended to `progressFile` as it comes.
 */
async function fromClient(o: { count?: number; stopFile?: string; gapMs?: number; progressFile?: string; url?: string }): Promise<Answer[]> {
  const r = c1.lab.running('demo', 'client');
  if (!r) throw new Error('demo/client does not run in cluster1');
  const vip = (c1.lab.api.get('Service', 'demo', 'echo')!['spec'] as { clusterIP: string }).clusterIP;
  const script = `const http = await import('node:http');
const fs = await import('node:fs');
const get = () => new Promise((resolve) => {
  const req = http.get(${JSON.stringify(o.url ?? `http://${vip}/`)}, { agent: false, timeout: 5000 }, (res) => {
    let body = ''; res.on('data', (c) => (body += c));
    res.on('end', () => { if (res.statusCode !== 200) return resolve({ error: res.statusCode }); try { const b = JSON.parse(body); resolve({ cluster: b.cluster, pod: b.pod }); } catch { resolve({ error: 'bad body' }); } });
  });
  req.on('timeout', () => req.destroy(new Error('timeout')));
  req.on('error', (e) => resolve({ error: e.code ?? e.message }));
});
const out = [];
const end = Date.now() + 120000;
for (let i = 0; i < ${o.count ?? 1e9} && Date.now() < end; i++) {
  const t0 = Date.now();
  out.push({ ...(await get()), ms: Date.now() - t0 });
  ${o.progressFile ? `fs.appendFileSync(${JSON.stringify(o.progressFile)}, JSON.stringify(out.at(-1)) + '\\n');` : ''}
  ${o.stopFile ? `if (fs.existsSync(${JSON.stringify(o.stopFile)})) break;` : ''}
  ${o.gapMs ? `await new Promise((r) => setTimeout(r, ${o.gapMs}));` : ''}
}
console.log(JSON.stringify(out));`;
  const child = c1.lab.net.spawn({ netns: r.pod.netns!, cgroup: r.pod.cgroup }, process.execPath, ['--input-type=module', '-e', script]);
  const out = await collectOutput(child, 150_000);
  if (out.code !== 0) throw new Error(`client script exited ${out.code}: ${out.stderr}`);
  return JSON.parse(out.stdout) as Answer[];
}

async function metrics(c: KubeCluster, ip?: string): Promise<string> {
  const node = c.lab.net.node('node1');
  return (await requestInNetns(node.netnsPath, `http://${ip ?? node.ip}:15020/metrics`, { timeoutMs: 3_000 })).body;
}

const gatewayIp = (c: KubeCluster) => statusOf<{ podIP?: string }>(c.lab.api.list('Pod').find((p) => p.metadata.namespace === 'weft-system' && p.metadata.name.startsWith('weft-eastwest-'))).podIP;

const sum = (text: string, name: string, match: (line: string) => boolean) =>
  text.split('\n').filter((l) => l.startsWith(`${name}{`) && match(l)).reduce((n, l) => n + Number(l.split(' ').pop()), 0);

/** How long each step of the set-up took (printed with the first test). */
const phases: string[] = [];
let phaseStart = Date.now();
const phase = (what: string) => {
  phases.push(`${what} ${((Date.now() - phaseStart) / 1000).toFixed(1)} s`);
  phaseStart = Date.now();
};

before(async () => {
  if (skip) return;
  phaseStart = Date.now();
  stateDir = mkdtempSync(join(tmpdir(), 'weft-k8s-mc-e2e-'));
  mc = await KubeMultiCluster.create({ prefix: lab.id, stateDir: join(stateDir, 'labs'), clusters: 2 });
  [c1, c2] = mc.clusters as [KubeCluster, KubeCluster];
  mc.start();
  phase('labs');
  await mc.install({ image: IMAGE });
  phase('install');
  await mc.linkClusters();
  phase('remote secrets');
  for (const c of mc.clusters) {
    await until(`${c.name}: the controller and the agent are ready`, () => ready(c, 'weft-system', 'weft-controller') && statusOf<{ numberReady?: number }>(c.lab.api.get('DaemonSet', 'weft-system', 'weft-agent')).numberReady === 1, 120_000, { explain });
  }
  phase('controllers and agents ready');
  for (const c of mc.clusters) await applyYaml(c, 'apps', apps(c));
  for (const c of mc.clusters) {
    await until(`${c.name}: echo and the east-west gateway are ready`, () => ready(c, 'demo', 'echo') && ready(c, 'weft-system', 'weft-eastwest'), 90_000, { explain });
  }
  await until('cluster1\'s client runs', () => statusOf<{ phase?: string }>(c1.lab.api.get('Pod', 'demo', 'client')).phase === 'Running', 60_000, { explain });
  phase('apps and gateways ready');
});

test('two networks with their own ranges, meeting only at their edges; each east-west gateway Service\'s LoadBalancer address is its cluster\'s edge, and a second LoadBalancer Service on its port stays pending', { skip }, async (t) => {
  t.diagnostic(`set-up: ${phases.join(', ')}`);
  for (const c of mc.clusters) {
    const svc = c.lab.api.get('Service', 'weft-system', 'weft-eastwest');
    assert.deepEqual(statusOf<{ loadBalancer?: unknown }>(svc).loadBalancer, { ingress: [{ ip: c.edgeIp }] });
  }
  // Own ranges: nothing of one cluster's addresses is in the other's.
  const vip = (c: KubeCluster) => (c.lab.api.get('Service', 'demo', 'echo')!['spec'] as { clusterIP: string }).clusterIP;
  assert.notEqual(vip(c1).split('.').slice(0, 2).join('.'), vip(c2).split('.').slice(0, 2).join('.'));
  assert.notEqual(c1.lab.net.base, c2.lab.net.base);
  // The networks meet only at the edges: from cluster1's node, cluster2's echo pod and node are
  // unreachable directly; cluster2's edge answers.
  const node1 = c1.lab.net.node('node1');
  const echo2 = statusOf<{ podIP: string }>(c2.lab.api.list('Pod').find((p) => p.metadata.namespace === 'demo' && p.metadata.name.startsWith('echo-'))).podIP;
  for (const target of [`http://${echo2}:8080/`, `http://${c2.lab.net.node('node1').ip}:15020/metrics`]) {
    await assert.rejects(requestInNetns(node1.netnsPath, target, { timeoutMs: 2_000 }), `${target} is not reachable from cluster1's node`);
  }
  // One address per lab, as a cloud without quota: a second LoadBalancer Service asking for the
  // gateway's port stays pending, one on a free port gets the edge (the barrier: it comes later).
  for (const [name, port] of [['taken', 15008], ['free', 8443]] as const) {
    c1.lab.api.apply({ apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: 'default' }, spec: { type: 'LoadBalancer', selector: { app: name }, ports: [{ name: 'tcp', port }] } });
  }
  await until('the Service on a free port gets the edge', () => statusOf<{ loadBalancer?: { ingress?: unknown[] } }>(c1.lab.api.get('Service', 'default', 'free')).loadBalancer?.ingress?.length === 1, 10_000);
  assert.equal(statusOf<{ loadBalancer?: { ingress?: unknown[] } }>(c1.lab.api.get('Service', 'default', 'taken')).loadBalancer?.ingress?.length ?? 0, 0, 'the Service asking for a port already offered has no address');
  assert.deepEqual(statusOf<{ loadBalancer?: unknown }>(c1.lab.api.get('Service', 'weft-system', 'weft-eastwest')).loadBalancer, { ingress: [{ ip: c1.edgeIp }] });
  for (const name of ['taken', 'free']) c1.lab.api.remove('Service', 'default', name);
});

test('namespace sameness: cluster1\'s client is answered by echo pods of both clusters, cluster2\'s through its east-west gateway pod (double HBONE)', { skip, timeout: 120_000 }, async (t) => {
  const seen = new Set<string>();
  let last: Answer[] = [];
  await until('answers from both clusters', async () => {
    last = await fromClient({ count: 10 });
    for (const a of last) if (a.cluster) seen.add(a.cluster);
    return seen.size === 2;
  }, 60_000, { explain: () => `${JSON.stringify(last)}\n${explain()}` });
  // Once both answer, every request is answered.
  const answers = await fromClient({ count: 20 });
  t.diagnostic(`20 requests: ${answers.filter((a) => a.cluster === 'cluster1').length} from cluster1, ${answers.filter((a) => a.cluster === 'cluster2').length} from cluster2; ms each: ${answers.map((a) => `${a.ms}${a.cluster === 'cluster2' ? '*' : ''}`).join(' ')} (* cluster2)`);
  assert.deepEqual(answers.filter((a) => a.error), [], 'no request failed');
  assert.deepEqual(new Set(answers.map((a) => a.cluster)), new Set(['cluster1', 'cluster2']));
  // cluster2's gateway pod piped the tunnels.
  assert.match(await metrics(c2, gatewayIp(c2)), /^weft_eastwest_tunnels_total [1-9]/m, 'cluster2\'s gateway pod counted the tunnels');
});

test('the cross-cluster request carries cluster1\'s client SPIFFE identity to cluster2\'s destination agent', { skip }, async () => {
  const m = await metrics(c2);
  const line = m.split('\n').find((l) => l.startsWith('istio_tcp_connections_opened_total{') && l.includes('reporter="destination"')
    && l.includes(`source_principal="${CLIENT}"`) && l.includes('connection_security_policy="mutual_tls"'));
  assert.ok(line, `no destination-side connection from cluster1's client in cluster2's agent metrics:\n${m.split('\n').filter((l) => l.startsWith('istio_tcp_connections_opened_total')).join('\n')}`);
  assert.match(line, /source_cluster="cluster1"/);
  assert.match(line, /destination_cluster="cluster2"/);
});

test('failover: with cluster1\'s echo scaled to 0, every answer comes from cluster2, with no failure beyond the requests in flight', { skip, timeout: 150_000 }, async (t) => {
  const stop = join(stateDir, 'stop-failover');
  const progress = join(stateDir, 'failover-progress');
  writeFileSync(progress, '');
  const sofar = () => readFileSync(progress, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Answer);
  const sending = fromClient({ stopFile: stop, gapMs: 50, progressFile: progress });
  await until('the client is sending', () => sofar().length > 0, 20_000);
  await mc.kubectl(c1, 'patch', 'deployment', '-n', 'demo', 'echo', '--type=merge', '-p', JSON.stringify({ spec: { replicas: 0 } }));
  await until('cluster1\'s echo pod is gone', () => ![...c1.lab.kubelets.values()].some((k) => [...k.pods.values()].some((p) => p.namespace === 'demo' && p.name.startsWith('echo-'))), 60_000, { explain });
  // The traffic runs on, on cluster2 alone, for five more answers.
  const gone = sofar().length;
  await until('five answers after the pod is gone', () => sofar().slice(gone).filter((a) => a.cluster === 'cluster2').length >= 5, 30_000);
  writeFileSync(stop, '');
  const answers = await sending;
  const failed = answers.filter((a) => a.error);
  const after_ = answers.slice(answers.map((a) => a.cluster).lastIndexOf('cluster1') + 1);
  t.diagnostic(`${answers.length} requests during the scale-down: ${answers.filter((a) => a.cluster === 'cluster1').length} from cluster1, ${answers.filter((a) => a.cluster === 'cluster2').length} from cluster2, ${failed.length} failed (${JSON.stringify(failed)}); ms each: ${answers.map((a) => `${a.ms}${a.cluster === 'cluster2' ? '*' : ''}`).join(' ')} (* cluster2)`);
  assert.ok(after_.filter((a) => a.cluster === 'cluster2').length >= 5, `answers from cluster2 after cluster1's last: ${after_.length}`);
  assert.ok(failed.length <= 1, `failed requests (at most the one in flight): ${JSON.stringify(failed)}`);
  if (answers.some((a) => (a.ms ?? 0) > 1_000)) {
    // What cluster1's agent said while a request was slow (helps tell a stale endpoint from load).
    const agent = c1.lab.api.list('Pod').find((p) => p.metadata.namespace === 'weft-system' && p.metadata.name.startsWith('weft-agent-'))!;
    const lines = c1.lab.kubelet('node1').logTail('weft-system', agent.metadata.name, 'agent', 200).split('\n').filter((l) => l.includes('"time"')).slice(-25);
    t.diagnostic(`a request took over 1 s; cluster1's agent's last lines:\n${lines.join('\n')}`);
  }
  const more = await fromClient({ count: 10 });
  assert.deepEqual(more.map((a) => a.cluster ?? a.error), Array(10).fill('cluster2'));
});

// Istio ambient multi-network: a Service in one cluster behind that cluster's own waypoint is
// served to other clusters' callers through that waypoint (double HBONE via the east-west gateway).
test('a Service only cluster2 has, behind cluster2\'s own waypoint: cluster1\'s client is served through that waypoint via cluster2\'s gateway pod, and its L7 DENY on /admin answers 403 (issue 18 item 6)', { skip, timeout: 150_000 }, async () => {
  await applyYaml(c2, 'behind-waypoint', `
apiVersion: weft.dev/v1alpha1
kind: Waypoint
metadata: {name: wp, namespace: demo}
spec: {}
---
apiVersion: v1
kind: Service
metadata: {name: echo-wp, namespace: demo, labels: {weft.dev/use-waypoint: wp}}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: demo}
spec:
  targetRefs: [{group: "", kind: Service, name: echo-wp}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
`);
  await until('cluster2\'s waypoint Deployment is ready', () => statusOf<{ readyReplicas?: number }>(c2.lab.api.get('Deployment', 'demo', 'wp')).readyReplicas === 1, 90_000, { explain });
  const vip = (c2.lab.api.get('Service', 'demo', 'echo-wp')!['spec'] as { clusterIP: string }).clusterIP;
  const tunnels = async () => Number(/^weft_eastwest_tunnels_total (\d+)$/m.exec(await metrics(c2, gatewayIp(c2)))?.[1] ?? 0);
  const before_ = await tunnels();
  let last: Answer[] = [];
  await until('cluster1\'s client is served through cluster2\'s waypoint', async () => (last = await fromClient({ count: 1, url: `http://${vip}/` }))[0]?.cluster === 'cluster2', 60_000, { explain: () => `${JSON.stringify(last)}\n${explain()}` });
  assert.ok(await tunnels() > before_, 'through cluster2\'s gateway pod');
  assert.deepEqual((await fromClient({ count: 1, url: `http://${vip}/admin` })).map((a) => a.error), [403], 'cluster2\'s waypoint refuses /admin to cluster1\'s client');
});

test('a DENY in cluster2 naming cluster1\'s client refuses it at cluster2\'s agent (policy at the destination), and the refusal is counted', { skip, timeout: 90_000 }, async () => {
  const denied = async () => sum(await metrics(c2), 'weft_connections_denied_total', (l) => l.includes('reason="policy"'));
  const before_ = await denied();
  await applyYaml(c2, 'deny', `
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-cluster1-client, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/demo/sa/client"]}}]}]
`);
  let last: Answer[] = [];
  await until('cluster2 refuses cluster1\'s client', async () => {
    last = await fromClient({ count: 1 });
    return last[0]?.error !== undefined;
  }, 30_000, { explain: () => JSON.stringify(last) });
  assert.ok(await denied() > before_, 'weft_connections_denied_total{reason="policy"} went up at cluster2\'s agent');
  const agent = c2.lab.api.list('Pod').find((p) => p.metadata.namespace === 'weft-system' && p.metadata.name.startsWith('weft-agent-'))!;
  const log = c2.lab.kubelet('node1').logTail('weft-system', agent.metadata.name, 'agent', 400).split('\n');
  const refusals = log.filter((l) => l.includes('connection denied')).map((l) => { try { return JSON.parse(l) as Record<string, unknown>; } catch { return {}; } });
  assert.ok(refusals.some((r) => r['policy'] === 'demo/deny-cluster1-client' && r['source'] === CLIENT), `the refusal names the policy and the caller from cluster1:\n${log.filter((l) => l.includes('denied')).join('\n')}`);
});
