// The whole Kubernetes path in the kube lab (issue 17): `weftctl install` rendered and applied
// unedited with the real kubectl; the lab's controllers and kubelets (cli/local/kube/kube-lab.ts) run the
// controller Deployment and the agent DaemonSet on two nodes from the image's own entrypoint
// (Dockerfile), with projected tokens, the published trust bundle and --require-client-identity;
// an ambient namespace's pods, started through the agent's chained CNI plugin, talk over HBONE
// across nodes; a Waypoint CR becomes a Deployment the lab runs and an L7 policy and an HTTPRoute
// (the Gateway API CRD from a lab fixture) take effect; a DaemonSet update rolls the agents with
// traffic flowing, agent to agent and then through the waypoint; a second controller replica waits
// on the Lease; `weftctl uninstall` leaves nothing of Weft's.
// One setup for the whole file (it is the expensive part).
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Lab } from '../lab/lab.ts';
import { KubeLab } from '../../cli/local/kube/kube-lab.ts';
import { until } from '../lab/wait.ts';
import { renderInstall, toYaml } from '../../cli/install/render.ts';
import { collectOutput } from '../../lib/sys/exec.ts';
import { requestInNetns } from '../../cli/local/netns-http.ts';
import { WAYPOINT_NODE_OPTIONS } from '../../lib/defaults.ts';

const run = promisify(execFile);
const skip = spawnSync('kubectl', ['version', '--client']).status !== 0 && 'kubectl is not installed';
const WEFTCTL = new URL('../../cli/weftctl.ts', import.meta.url).pathname;
const IMAGE = 'ghcr.io/weft-mesh/weft:lab';

const lab = new Lab();
let kube: KubeLab;
let stateDir: string;
after(async () => {
  await kube?.destroy();
  await lab.cleanup();
  if (stateDir) rmSync(stateDir, { recursive: true, force: true });
});

type Obj = ReturnType<KubeLab['api']['apply']>;
const statusOf = <T>(o: Obj | undefined) => (o?.['status'] ?? {}) as T;

async function kubectl(...args: string[]): Promise<string> {
  try {
    return (await run('kubectl', ['--kubeconfig', kube.kubeconfigFile, ...args], { env: { ...process.env, HOME: stateDir } })).stdout;
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`kubectl ${args.join(' ')}: ${err.stderr || err.message}`);
  }
}

function explain(): string {
  const out: string[] = [];
  for (const k of kube.kubelets.values()) {
    for (const [p, e] of k.errors) out.push(`${k.o.node} ${p}: ${e.split('\n')[0]}`);
    for (const rp of k.pods.values()) {
      for (const c of rp.containers.keys()) out.push(`--- ${rp.namespace}/${rp.name}/${c}:\n${k.logTail(rp.namespace, rp.name, c.replace(/^init:/, ''), 8)}`);
    }
  }
  for (const p of kube.api.list('Pod')) out.push(`${p.metadata.namespace}/${p.metadata.name} ${JSON.stringify(statusOf<{ conditions?: unknown; containerStatuses?: unknown }>(p).containerStatuses ?? '')}`);
  return out.join('\n');
}

/** Runs a node script inside a pod (its netns and cgroup, so the mesh's datapath sees it) and returns stdout. */
async function inPod(namespace: string, name: string, script: string, timeoutMs = 30_000): Promise<string> {
  const r = kube.running(namespace, name);
  if (!r) throw new Error(`pod ${namespace}/${name} is not running`);
  const child = kube.net.spawn({ netns: r.pod.netns!, cgroup: r.pod.cgroup }, process.execPath, ['--input-type=module', '-e', script]);
  const out = await collectOutput(child, timeoutMs);
  if (out.code !== 0) throw new Error(`script in ${namespace}/${name} exited ${out.code}: ${out.stderr}`);
  return out.stdout;
}

/** One GET per connection (node:http without keep-alive), so each request is a new captured connection. */
const GET = `const http = await import('node:http');
const get = (url) => new Promise((resolve) => {
  const req = http.get(url, { agent: false, timeout: 5000 }, (res) => { let body = ''; res.on('data', (c) => (body += c)); res.on('end', () => resolve({ status: res.statusCode, body })); });
  req.on('timeout', () => req.destroy(new Error('timeout')));
  req.on('error', (e) => resolve({ error: e.code ?? e.message }));
});`;

const getScript = (url: string) => `{ ${GET}\nconsole.log(JSON.stringify([await get(${JSON.stringify(url)})])); }`;

const apps = `
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: echo, namespace: shop}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      serviceAccountName: echo
      nodeSelector: {kubernetes.io/hostname: node-b}
      containers:
      - name: echo
        image: lab/echo:v1
        args: [--port, "8080", --name, $(POD_NAME)]
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  serviceAccountName: client
  nodeName: node-a
  containers: [{name: sleep, image: lab/sleep}]
`;

/**
 * Patches the agent DaemonSet's template (env WEFT_LAB_ROLL=`roll`) and waits until both nodes run a
 * new ready agent, while the client pod sends requests to the echo Service (`loops` in parallel, each
 * waiting `gapMs` between two): every request must be answered.
 */
async function rollAgents(t: { diagnostic(msg: string): void }, roll: string, stopFile: string, traffic: { loops: number; gapMs: number }): Promise<void> {
  const clusterIP = (kube.api.get('Service', 'shop', 'echo')!['spec'] as { clusterIP: string }).clusterIP;
  const isAgent = (p: { metadata: { namespace?: string; name: string } }) => p.metadata.namespace === 'weft-system' && p.metadata.name.startsWith('weft-agent-');
  const before = new Set(kube.api.list('Pod').filter(isAgent).map((p) => p.metadata.name));
  const stop = join(stateDir, stopFile);
  const sending = inPod('shop', 'client', `${GET}
const out = { ok: 0, failed: [] };
const stop = Date.now() + 120000;
const loop = async () => {
  while (Date.now() < stop) {
    const r = await get(${JSON.stringify(`http://${clusterIP}/`)});
    if (r.status === 200) out.ok++; else out.failed.push(r.status ?? r.error);
    try { (await import('node:fs')).accessSync(${JSON.stringify(stop)}); break; } catch {}
    await new Promise((r) => setTimeout(r, ${traffic.gapMs}));
  }
};
await Promise.all(Array.from({ length: ${traffic.loops} }, loop));
console.log(JSON.stringify(out));`, 150_000);
  await kubectl('patch', 'daemonset', '-n', 'weft-system', 'weft-agent', '--type=json', '-p', JSON.stringify([{ op: 'add', path: '/spec/template/spec/containers/0/env/-', value: { name: 'WEFT_LAB_ROLL', value: roll } }]));
  await until('both nodes run a new, ready agent and the old ones are gone', () => {
    const agents = kube.api.list('Pod').filter(isAgent);
    return agents.length === 2 && agents.every((p) => !before.has(p.metadata.name) && statusOf<{ conditions?: Array<{ type: string; status: string }> }>(p).conditions?.some((c) => c.type === 'Ready' && c.status === 'True'));
  }, 150_000, { explain });
  // The API drops a deleted pod at once; its process drains for --drain-timeout before it exits, and
  // the deadline that cuts what is left must fall while the traffic still flows.
  await until('the old agents\' processes have exited', () => [...kube.kubelets.values()].every((k) => [...k.pods.values()].every((p) => !before.has(p.name))), 60_000, { explain });
  writeFileSync(stop, '');
  const result = JSON.parse(await sending) as { ok: number; failed: unknown[] };
  t.diagnostic(`requests during the roll: ${result.ok} answered, ${result.failed.length} failed`);
  assert.ok(result.ok > 10, `requests answered during the roll: ${result.ok}`);
  assert.deepEqual(result.failed, [], 'no request failed during the roll');
}

before(async () => {
  if (skip) return;
  stateDir = mkdtempSync(join(tmpdir(), 'weft-k8s-e2e-'));
  kube = await KubeLab.create({ prefix: lab.id, stateDir: join(stateDir, 'lab'), nodes: ['node-a', 'node-b'] });
  kube.start();
});

test('the rendered install runs in the kube lab: controller and agents on two nodes ready, HBONE between nodes, a waypoint with an L7 policy, an agent roll with traffic flowing agent to agent and through the waypoint, and uninstall leaves nothing', { skip, timeout: 600_000 }, async (t) => {
  const file = join(stateDir, 'install.yaml');
  writeFileSync(file, toYaml(renderInstall({ image: IMAGE, trustDomain: 'cluster.local', warn: () => {} })));
  // The cluster has the Gateway API's HTTPRoute (users install it from upstream; Weft does not ship it).
  await kubectl('apply', '--server-side', '-f', join(import.meta.dirname, 'fixtures', 'gateway-api-routes-crd.yaml'));
  await kubectl('apply', '--server-side', '-f', file);

  await t.test('the controller and the agents on both nodes become ready (TokenReview, trust bundle, client identity)', async () => {
    await until('the controller Deployment is ready', () => statusOf<{ readyReplicas?: number }>(kube.api.get('Deployment', 'weft-system', 'weft-controller')).readyReplicas === 1, 90_000, { explain });
    assert.ok(kube.api.get('ConfigMap', 'weft-system', 'weft-trust-bundle'), 'trust bundle published');
    await until('the agent DaemonSet is ready on both nodes', () => {
      const st = statusOf<{ numberReady?: number; desiredNumberScheduled?: number }>(kube.api.get('DaemonSet', 'weft-system', 'weft-agent'));
      return st.desiredNumberScheduled === 2 && st.numberReady === 2;
    }, 120_000, { explain });
    // The install-cni init container chained the plugin into each node's CNI configuration.
    for (const k of kube.kubelets.values()) assert.ok(existsSync(join(k.hostPath('/opt/cni/bin'), 'weft-cni')), `weft-cni installed on ${k.o.node}`);
  });

  await t.test('an ambient namespace gets traffic over HBONE between nodes; the server sees the client and its agent its SPIFFE identity', async () => {
    writeFileSync(join(stateDir, 'apps.yaml'), apps);
    await kubectl('apply', '--server-side', '-f', join(stateDir, 'apps.yaml'));
    await until('echo and client run', () => statusOf<{ readyReplicas?: number }>(kube.api.get('Deployment', 'shop', 'echo')).readyReplicas === 1
      && statusOf<{ phase?: string }>(kube.api.get('Pod', 'shop', 'client')).phase === 'Running', 60_000, { explain });
    const clusterIP = (kube.api.get('Service', 'shop', 'echo')!['spec'] as { clusterIP: string }).clusterIP;
    const clientIp = statusOf<{ podIP: string }>(kube.api.get('Pod', 'shop', 'client')).podIP;
    let last = '';
    await until('the client reaches echo through the mesh', async () => {
      last = await inPod('shop', 'client', getScript(`http://${clusterIP}/`));
      const [r] = JSON.parse(last) as Array<{ status?: number; body?: string }>;
      return r?.status === 200 && (JSON.parse(r.body!) as { peer: string }).peer.endsWith(clientIp);
    }, 60_000, { explain: () => `${last}\n${explain()}` });
    // The destination agent (node-b) counted the connection with the client's SPIFFE identity.
    const nodeB = kube.net.node('node-b');
    await until('node-b\'s agent saw spiffe://cluster.local/ns/shop/sa/client over mTLS', async () => {
      const m = (await requestInNetns(nodeB.netnsPath, `http://${nodeB.ip}:15020/metrics`, { timeoutMs: 3_000 })).body;
      return m.split('\n').some((l) => l.startsWith('istio_tcp_connections_opened_total{') && l.includes('reporter="destination"')
        && l.includes('source_principal="spiffe://cluster.local/ns/shop/sa/client"') && l.includes('connection_security_policy="mutual_tls"'));
    }, 20_000);
  });

  await t.test('a DaemonSet update rolls the agents node by node while the client\'s requests keep succeeding (agent to agent)', async () => {
    // L4 (agent to agent): the roll runs before the Service uses a waypoint.
    await rollAgents(t, '2', 'stop-traffic-l4', { loops: 1, gapMs: 100 });
  });

  await t.test('a Waypoint CR becomes a Deployment the lab runs, and an L7 policy and an HTTPRoute take effect through it', async () => {
    const wp = `
apiVersion: weft.dev/v1alpha1
kind: Waypoint
metadata: {name: wp, namespace: shop}
spec: {}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop, labels: {weft.dev/use-waypoint: wp}}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: echo}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
`;
    writeFileSync(join(stateDir, 'wp.yaml'), wp);
    await kubectl('apply', '--server-side', '-f', join(stateDir, 'wp.yaml'));
    await until('the waypoint Deployment is ready', () => statusOf<{ readyReplicas?: number }>(kube.api.get('Deployment', 'shop', 'wp')).readyReplicas === 1, 90_000, { explain });
    // Its container runs with the waypoint's capped young generation (lib/defaults.ts; without it a
    // waypoint kept 134 MB of new space after a burst).
    const container = (kube.api.get('Deployment', 'shop', 'wp')!['spec'] as { template: { spec: { containers: Array<{ env?: Array<{ name: string; value?: string }> }> } } }).template.spec.containers[0]!;
    assert.equal(container.env?.find((e) => e.name === 'NODE_OPTIONS')?.value, WAYPOINT_NODE_OPTIONS);
    const clusterIP = (kube.api.get('Service', 'shop', 'echo')!['spec'] as { clusterIP: string }).clusterIP;
    let last = '';
    await until('/admin is refused by the waypoint (403) and / still answers', async () => {
      last = await inPod('shop', 'client', `${getScript(`http://${clusterIP}/admin`)}\n${getScript(`http://${clusterIP}/`)}`);
      const [[admin], [root]] = last.trim().split('\n').map((l) => JSON.parse(l) as Array<{ status?: number }>);
      return admin?.status === 403 && root?.status === 200;
    }, 60_000, { explain: () => `${last}\n${explain()}` });

    // An HTTPRoute (GAMMA: a Service parent) through the waypoint: /routed gets a request header
    // added, everything else goes to echo unchanged; the controller accepts it in the route's status.
    const route = `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-routes, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /routed}}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-weft-route, value: lab}]}}]
    backendRefs: [{name: echo, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: echo, port: 80}]
`;
    writeFileSync(join(stateDir, 'route.yaml'), route);
    await kubectl('apply', '--server-side', '-f', join(stateDir, 'route.yaml'));
    await until('the route takes effect through the waypoint: /routed carries x-weft-route, / and the DENY on /admin are as before', async () => {
      last = await inPod('shop', 'client', `${getScript(`http://${clusterIP}/routed/x`)}\n${getScript(`http://${clusterIP}/`)}\n${getScript(`http://${clusterIP}/admin`)}`);
      const [[routed], [root], [admin]] = last.trim().split('\n').map((l) => JSON.parse(l) as Array<{ status?: number; body?: string }>);
      return routed?.status === 200 && (JSON.parse(routed.body!) as { headers: Record<string, string> }).headers['x-weft-route'] === 'lab'
        && root?.status === 200 && admin?.status === 403;
    }, 60_000, { explain: () => `${last}\n${explain()}` });
    // Through the waypoint the server still sees the client's own address (issue 15, item 7): the
    // client's agent dials a waypoint pod from its node address, so the waypoint honours its for=;
    // the destination agent knows the waypoint's tunnel by that pod's address, so it honours the
    // waypoint's for=. Neither refuses a claim (weft_hbone_forwarded_ignored_total stays 0).
    const clientIp = statusOf<{ podIP: string }>(kube.api.get('Pod', 'shop', 'client')).podIP;
    last = await inPod('shop', 'client', getScript(`http://${clusterIP}/`));
    const [viaWaypoint] = JSON.parse(last) as Array<{ status?: number; body?: string }>;
    assert.ok(viaWaypoint?.status === 200 && (JSON.parse(viaWaypoint.body!) as { peer: string }).peer.endsWith(clientIp), `echo saw the client ${clientIp} through the waypoint: ${last}`);
    for (const node of ['node-a', 'node-b']) {
      const n = kube.net.node(node);
      const m = (await requestInNetns(n.netnsPath, `http://${n.ip}:15020/metrics`, { timeoutMs: 3_000 })).body;
      assert.doesNotMatch(m, /^weft_hbone_forwarded_ignored_total\{[^}]*\} [1-9]/m, `${node}'s agent honoured every for= claim`);
    }
    const parents = statusOf<{ parents?: Array<{ controllerName: string; conditions: Array<{ type: string; status: string }> }> }>(kube.api.get('HTTPRoute', 'shop', 'echo-routes')).parents ?? [];
    assert.ok(parents.some((p) => p.controllerName.startsWith('weft.dev/') && p.conditions.some((c) => c.type === 'Accepted' && c.status === 'True')), `route accepted in its status: ${JSON.stringify(parents)}`);
  });

  await t.test('a DaemonSet update rolls the agents while the client\'s requests go through the waypoint', async () => {
    // The waypoint pools keep-alive HTTP connections in HBONE tunnels to the destination's agent:
    // when that agent drains (GOAWAY) they must take no new request, or its drain deadline cuts them.
    // Back-to-back requests on two loops, so that some are in flight whenever a drain deadline falls.
    await rollAgents(t, '3', 'stop-traffic-waypoint', { loops: 2, gapMs: 0 });
  });

  // What ran in the lab, printed with the results.
  const ran = [
    ...kube.api.list('Deployment').map((d) => `Deployment ${d.metadata.namespace}/${d.metadata.name} ${statusOf<{ readyReplicas?: number }>(d).readyReplicas ?? 0}/${(d['spec'] as { replicas?: number }).replicas ?? 1} ready`),
    ...kube.api.list('DaemonSet').map((d) => `DaemonSet ${d.metadata.namespace}/${d.metadata.name} ${statusOf<{ numberReady?: number }>(d).numberReady ?? 0}/${statusOf<{ desiredNumberScheduled?: number }>(d).desiredNumberScheduled ?? 0} ready`),
  ];
  t.diagnostic(`ran in the kube lab: ${ran.join('; ')}`);

  await t.test('a second controller replica serves but waits on the Lease: only the first writes', async () => {
    const isController = (p: { metadata: { namespace?: string; name: string } }) => p.metadata.namespace === 'weft-system' && p.metadata.name.startsWith('weft-controller-');
    const lease = () => (kube.api.get('Lease', 'weft-system', 'weft-controller-leader')?.['spec'] ?? {}) as { holderIdentity?: string };
    const leader = lease().holderIdentity;
    assert.ok(leader && kube.api.list('Pod').some((p) => isController(p) && p.metadata.name === leader), `the running controller holds the Lease (${leader})`);
    await kubectl('patch', 'deployment', '-n', 'weft-system', 'weft-controller', '--type=merge', '-p', JSON.stringify({ spec: { replicas: 2 } }));
    await until('two controller replicas are ready', () => statusOf<{ readyReplicas?: number }>(kube.api.get('Deployment', 'weft-system', 'weft-controller')).readyReplicas === 2, 90_000, { explain });
    const second = kube.api.list('Pod').find((p) => isController(p) && p.metadata.name !== leader)!;
    // The follower retries every 2 s; three rounds in which it must not take a Lease renewed by the leader.
    const renewals = new Set<string>();
    await until('the leader renews the Lease three times while the second replica runs', () => {
      const spec = (kube.api.get('Lease', 'weft-system', 'weft-controller-leader')?.['spec'] ?? {}) as { renewTime?: string };
      if (spec.renewTime) renewals.add(spec.renewTime);
      return renewals.size >= 4;
    }, 30_000, { intervalMs: 200 });
    assert.equal(lease().holderIdentity, leader, 'the first replica still holds the Lease');
    const log = kube.kubelets.get((second['spec'] as { nodeName: string }).nodeName)?.logTail('weft-system', second.metadata.name, 'controller', 400) ?? '';
    assert.doesNotMatch(log, /became the leader/, 'the second replica did not become the leader');
    await kubectl('patch', 'deployment', '-n', 'weft-system', 'weft-controller', '--type=merge', '-p', JSON.stringify({ spec: { replicas: 1 } }));
  });

  await t.test('weftctl uninstall removes everything, pins included, and pods are no longer redirected', async () => {
    const r = await run(process.execPath, [WEFTCTL, 'uninstall', '--kubeconfig', kube.kubeconfigFile, '--timeout', '90'], { env: { ...process.env, HOME: stateDir } })
      .catch((e: Error) => { throw new Error(`${e.message}\n${explain()}`); });
    assert.match(r.stdout, /BPF programs detached and pins removed on every node/);
    assert.equal(kube.api.get('Namespace', undefined, 'weft-system'), undefined);
    // Weft's CRDs are gone; the Gateway API's, which the install did not bring, stay.
    assert.deepEqual(kube.api.list('CustomResourceDefinition').map((c) => c.metadata.name), ['httproutes.gateway.networking.k8s.io']);
    await until('no Weft pod runs on any node', () => [...kube.kubelets.values()].every((k) => [...k.pods.values()].every((p) => p.namespace !== 'weft-system' && !(p.namespace === 'shop' && p.name.startsWith('wp-')))), 60_000, { explain });
    for (const k of kube.kubelets.values()) {
      assert.equal(existsSync(join(k.node.pinRoot, 'weft')), false, `pins removed on ${k.o.node}`);
      // The chained plugin left the node's CNI configuration (new pods no longer wait for an agent).
      assert.doesNotMatch(readFileSync(join(k.hostPath('/etc/cni/net.d'), '10-lab.conflist'), 'utf8'), /weft-cni/, `weft-cni unchained on ${k.o.node}`);
    }
    // Straight to the echo pod: no agent, no redirection; it answers the client itself.
    const echoIp = statusOf<{ podIP: string }>(kube.api.list('Pod').find((p) => p.metadata.namespace === 'shop' && p.metadata.name.startsWith('echo-'))).podIP;
    const [res] = JSON.parse(await inPod('shop', 'client', getScript(`http://${echoIp}:8080/`))) as Array<{ status?: number }>;
    assert.equal(res?.status, 200);
  });
});
