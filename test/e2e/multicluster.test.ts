// Two clusters on two networks, one mesh (Istio ambient multi-network, translated): each cluster
// its own controller, CA intermediate (one shared root), node and agent, the same sample apps in
// both; the networks meet only at the exchange, through each cluster's east-west gateway (double
// HBONE). One set-up is shared by every test here, in order.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { randomBytes } from 'node:crypto';
import { Lab } from '../lab/lab.ts';
import { until } from '../lab/wait.ts';
import { LocalMultiCluster, type LocalCluster } from '../../cli/local/multicluster.ts';
import { getJsonInNetns, requestInNetns } from '../../cli/local/netns-http.ts';
import { gatherFederationFacts } from '../../cli/local/health.ts';
import { checkFederation } from '../../cli/check-federation.ts';
import { collectOutput } from '../../lib/sys/exec.ts';
import type { AgentConfig } from '../../lib/model/mesh.ts';

const lab = new Lab();
const stateDir = mkdtempSync(join(tmpdir(), 'weft-mc-'));
let mc: LocalMultiCluster;
const VIP = '10.96.0.10';
/** demo/echo-c2: a Service only cluster2 has (over cluster2's echo pods). */
const ONLY_C2_VIP = '10.96.0.20';
const CLIENT = 'spiffe://cluster.local/ns/demo/sa/client';

after(async () => {
  await mc?.destroy();
  await lab.cleanup();
  rmSync(stateDir, { recursive: true, force: true });
});

function sampleApps(c: LocalCluster): void {
  c.mesh.writeConfig('10-demo.yaml', [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'echo', namespace: 'demo' }, spec: { clusterIP: VIP, selector: { app: 'echo' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
  ]);
  c.mesh.addWorkload({ node: 'node1', namespace: 'demo', name: 'client', labels: { app: 'client' } });
  addEcho(c);
}

function addEcho(c: LocalCluster): void {
  c.mesh.addWorkload({
    node: 'node1', namespace: 'demo', name: 'echo', labels: { app: 'echo' }, deployment: 'echo',
    command: ['cli/local/apps/echo.ts', '--port', '8080', '--name', 'echo'], env: { WEFT_CLUSTER: c.name },
  });
}

/** One request from a cluster's client pod; the answering cluster, or the curl error. */
async function ask(from: string, url = `http://${VIP}/`, extra: string[] = []): Promise<{ ok: true; cluster: string; peer: string } | { ok: false; error: string }> {
  const r = await mc.cluster(from).mesh.exec('demo/client', 'curl', ['-sS', '--max-time', '5', ...extra, url]);
  if (r.code !== 0) return { ok: false, error: r.stderr.trim() || `curl exited ${r.code}` };
  const body = JSON.parse(r.stdout) as { cluster: string; peer: string };
  return { ok: true, cluster: body.cluster, peer: body.peer };
}

async function echoEndpoints(c: string): Promise<Array<{ ip: string; cluster?: string }>> {
  const dump = await getJsonInNetns<{ config: AgentConfig }>(mc.cluster(c).mesh.node('node1').netnsPath, 'http://127.0.0.1:15000/config_dump');
  return dump.config.services.find((s) => s.namespace === 'demo' && s.name === 'echo')?.endpoints ?? [];
}

before(async () => {
  mc = await LocalMultiCluster.create({ prefix: lab.id, stateDir, clusters: 2, remoteStaleAfter: '3s' });
  for (const c of mc.clusters) sampleApps(c);
  mc.cluster('cluster2').mesh.writeConfig('20-only-here.yaml', [
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'echo-c2', namespace: 'demo' }, spec: { clusterIP: ONLY_C2_VIP, selector: { app: 'echo' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
  ]);
  mc.startControllers();
  for (const c of mc.clusters) await c.mesh.waitControllerReady();
  for (const c of mc.clusters) c.mesh.startAgents();
  for (const c of mc.clusters) {
    await c.mesh.waitReady(90_000);
    await c.mesh.waitWorkloadsEnrolled(['demo/client', 'demo/echo']);
  }
  mc.startGateways();
  await mc.waitGatewaysReady();
  for (const c of ['cluster1', 'cluster2']) {
    await until(`${c}'s agent knows echo's endpoints in both clusters`, async () => (await echoEndpoints(c).catch(() => [])).length === 2, 30_000);
  }
});

test('namespace sameness: demo/echo is one service; a request from cluster1 is served by pods of both clusters (Istio multi-network, double HBONE through the east-west gateway)', async () => {
  const seen = new Map<string, number>();
  for (let i = 0; i < 30 && seen.size < 2; i++) {
    const r = await ask('cluster1');
    assert.ok(r.ok, `request ${i} failed: ${!r.ok ? r.error : ''}\n${mc.cluster('cluster1').mesh.logTail('agent-node1.log', 10)}\n${mc.cluster('cluster2').mesh.logTail('eastwest.log', 10)}`);
    seen.set(r.cluster, (seen.get(r.cluster) ?? 0) + 1);
  }
  assert.deepEqual([...seen.keys()].sort(), ['cluster1', 'cluster2'], `answers: ${JSON.stringify([...seen])}`);
  // The gateway piped tunnels: it carried the remote answers.
  assert.match(await mc.gatewayMetrics('cluster2'), /^weft_eastwest_tunnels_total [1-9]/m);
});

// Istio: a Service deployed in one cluster only is reachable from the others, by the remote
// Service's ClusterIP (what Istio's DNS proxy answers for its name there).
test('a Service only cluster2 has (demo/echo-c2) is imported into cluster1 with cluster2\'s VIP: cluster1\'s client reaches it by that VIP, served by cluster2 through its east-west gateway', async () => {
  const dump = async () => (await getJsonInNetns<{ config: AgentConfig }>(mc.cluster('cluster1').mesh.node('node1').netnsPath, 'http://127.0.0.1:15000/config_dump')).config.services.find((s) => s.namespace === 'demo' && s.name === 'echo-c2');
  await until('cluster1\'s agent knows the remote-only Service', async () => ((await dump().catch(() => undefined))?.endpoints.length ?? 0) === 1, 30_000);
  const imported = (await dump())!;
  assert.deepEqual(imported.vips, [ONLY_C2_VIP]);
  assert.equal(imported.endpoints[0]!.cluster, 'cluster2');
  assert.equal(imported.endpoints[0]!.gateway?.network, 'network2');
  for (let i = 0; i < 3; i++) {
    const r = await ask('cluster1', `http://${ONLY_C2_VIP}/`);
    assert.ok(r.ok, `request ${i} failed: ${!r.ok ? r.error : ''}\n${mc.cluster('cluster1').mesh.logTail('agent-node1.log', 10)}`);
    assert.equal(r.cluster, 'cluster2');
  }
});

test('each east-west gateway\'s certificate is issued by its own cluster\'s controller CA (workload token of weft-system/weft-eastwest), renewed like a waypoint\'s', () => {
  for (const c of mc.clusters) {
    const issued = c.mesh.logEntries('controller.log', 'certificate issued').filter((r) => r.identity === 'spiffe://cluster.local/ns/weft-system/sa/weft-eastwest');
    assert.equal(issued.length >= 1, true, `${c.name}'s controller issued no gateway certificate:\n${c.mesh.logTail('controller.log', 10)}`);
    assert.equal(issued[0]!.principal, 'system:serviceaccount:weft-system:weft-eastwest');
    const [g] = c.mesh.logEntries('eastwest.log', 'gateway certificate issued');
    assert.ok(g, c.mesh.logTail('eastwest.log', 10));
    assert.match(String(g.issuer), new RegExp(c.name), 'signed by this cluster\'s intermediate');
  }
});

test('the destination agent in cluster2 sees the caller\'s own SPIFFE identity from cluster1 (one root, one intermediate per cluster), with source_cluster and destination_cluster', async () => {
  const metrics = await mc.cluster('cluster2').mesh.agentMetrics('node1');
  const line = metrics.split('\n').find((l) => l.startsWith('istio_tcp_connections_opened_total{') && l.includes('reporter="destination"')
    && l.includes(`source_principal="${CLIENT}"`) && l.includes('source_cluster="cluster1"') && l.includes('destination_cluster="cluster2"'));
  assert.ok(line, `no destination-side connection from cluster1's client in cluster2's metrics:\n${metrics.split('\n').filter((l) => l.startsWith('istio_tcp_connections_opened_total')).join('\n')}`);
  const c1 = await mc.cluster('cluster1').mesh.agentMetrics('node1');
  assert.ok(c1.split('\n').some((l) => l.startsWith('istio_tcp_connections_opened_total{') && l.includes('reporter="source"') && l.includes('source_cluster="cluster1"') && l.includes('destination_cluster="cluster2"')), 'the source side names the destination cluster');
  // Through a gateway the caller makes no address claim the destination would have to ignore.
  assert.equal(mc.cluster('cluster2').mesh.logEntries('agent-node1.log', 'forwarded client address not honoured').length, 0);
});

test('the exchange link carries only TLS to the gateway (15008) and the federation port: no plaintext of the inner tunnel', async () => {
  const marker = `weft-mc-secret-${randomBytes(6).toString('hex')}`;
  const pcap = join(stateDir, 'exchange.pcap');
  const wire = mc.cluster('cluster1').mesh.net.wireNetns;
  const dump = spawn('nsenter', [`--net=/var/run/netns/${wire}`, 'tcpdump', '-Z', 'root', '--immediate-mode', '-i', 'ew0', '-U', '-w', pcap, 'tcp'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let dumpErr = '';
  dump.stderr!.on('data', (c: Buffer) => (dumpErr += c));
  await until('tcpdump listens', () => dumpErr.includes('listening on'), 10_000, { intervalMs: 50 });
  // Requests with the marker until cluster2 answered a few of them (through the exchange).
  let remote = 0;
  for (let i = 0; i < 40 && remote < 3; i++) {
    const r = await ask('cluster1', `http://${VIP}/${marker}`, ['-H', `x-marker: ${marker}`]);
    assert.ok(r.ok, !r.ok ? r.error : '');
    if (r.cluster === 'cluster2') remote++;
  }
  assert.ok(remote >= 3, 'cluster2 answered some of the marked requests');
  const before = readFileSync(pcap).length;
  await until('the capture is flushed', () => readFileSync(pcap).length >= before, 2_000, { intervalMs: 50 });
  dump.kill('SIGINT');
  await once(dump, 'exit');
  const bytes = readFileSync(pcap);
  assert.ok(bytes.length > 2_000, `the capture saw the tunnels (${bytes.length} bytes)`);
  assert.equal(bytes.includes(Buffer.from(marker)), false, 'the marker never crosses the exchange in plaintext');
  const ports = new Set<number>();
  const text = await new Promise<string>((resolve) => {
    const rd = spawn('tcpdump', ['-nn', '-r', pcap], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    rd.stdout.on('data', (c: Buffer) => (out += c));
    rd.once('close', () => resolve(out));
  });
  for (const m of text.matchAll(/ > [\d.]+\.(\d+):/g)) ports.add(Number(m[1]));
  for (const m of text.matchAll(/ ([\d.]+)\.(\d+) > /g)) ports.add(Number(m[2]));
  const serverPorts = [...ports].filter((p) => p === 15008 || p === 15014);
  assert.ok(serverPorts.includes(15008), `tunnels went to the gateway's 15008 (ports seen: ${[...ports].join(',')})`);
  // Every packet has 15008 or 15014 at one end.
  for (const line of text.split('\n').filter((l) => l.includes(' > '))) {
    assert.match(line, /\.(15008|15014)[ :]/, `a packet to neither the gateway nor the federation port crossed: ${line}`);
  }
});

test('a DENY in cluster2 naming cluster1\'s client refuses it at cluster2\'s agent (policy applies at the destination), and the refusal is counted', async () => {
  const c2 = mc.cluster('cluster2');
  // Control: cluster1's client reaches cluster2's pod through demo/echo-c2 (only cluster2's pods),
  // through the gateway. The pod's own address is another network's: not carried from cluster1
  // (Istio's ztunnel looks a dialled address up in the caller's own network).
  const echo2 = `http://${ONLY_C2_VIP}/`;
  const ok = await ask('cluster1', echo2);
  assert.ok(ok.ok && ok.cluster === 'cluster2', `control request to ${echo2}: ${JSON.stringify(ok)}`);
  const byAddress = await ask('cluster1', `http://${c2.mesh.workloads.get('demo/echo')!.pod.ip}:8080/`);
  assert.equal(byAddress.ok, false, 'another network\'s pod address is not a mesh destination here');
  const deniedBefore = deniedCount(await c2.mesh.agentMetrics('node1'));
  c2.mesh.writeConfig('50-deny.yaml', [{
    apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'deny-cluster1-client', namespace: 'demo' },
    spec: { selector: { matchLabels: { app: 'echo' } }, action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster.local/ns/demo/sa/client'] } }] }] },
  }]);
  try {
    await until('cluster2 refuses cluster1\'s client', async () => !(await ask('cluster1', echo2)).ok, 20_000);
    const after_ = await c2.mesh.agentMetrics('node1');
    assert.ok(deniedCount(after_) > deniedBefore, 'weft_connections_denied_total{reason="policy"} went up at cluster2');
    const log = c2.mesh.logEntries('agent-node1.log', 'connection denied');
    assert.ok(log.some((l) => l.policy === 'demo/deny-cluster1-client' && l.source === CLIENT), 'the refusal names the policy and the caller from cluster1');
  } finally {
    c2.mesh.removeConfig('50-deny.yaml');
  }
  await until('cluster1\'s client is served by cluster2 again', async () => (await ask('cluster1', echo2)).ok, 20_000);
});

function deniedCount(metrics: string): number {
  let n = 0;
  for (const l of metrics.split('\n')) {
    if (l.startsWith('weft_connections_denied_total{') && l.includes('reason="policy"')) n += Number(l.split(' ').pop());
  }
  return n;
}

test('locality PreferLocal: answers stay in cluster1; deleting cluster1\'s echo pod moves them to cluster2 with no failed request, and they come back', async () => {
  const c1 = mc.cluster('cluster1');
  c1.mesh.writeConfig('40-locality.yaml', [{
    apiVersion: 'weft.dev/v1alpha1', kind: 'TrafficPolicy', metadata: { name: 'echo', namespace: 'demo' },
    spec: { targetRef: { kind: 'Service', name: 'echo' }, locality: { mode: 'PreferLocal' } },
  }]);
  await until('cluster1 prefers its own echo', async () => {
    for (let i = 0; i < 6; i++) {
      const r = await ask('cluster1');
      if (!r.ok || r.cluster !== 'cluster1') return false;
    }
    return true;
  }, 20_000);
  // Delete the pod; keep asking the whole time.
  const answers: string[] = [];
  let stop = false;
  const loop = (async () => {
    while (!stop) {
      const r = await ask('cluster1');
      answers.push(r.ok ? r.cluster : `error: ${r.error}`);
    }
  })();
  const tail = () => `answers so far (${answers.length}): ${answers.slice(-12).join(', ')}\n${c1.mesh.logTail('agent-node1.log', 6)}`;
  try {
    await until('some requests before the deletion', () => answers.length >= 3, 10_000, { explain: tail });
    await c1.mesh.net.removePod('demo', 'echo');
    c1.mesh.removeConfig('pod-demo-echo.yaml');
    c1.mesh.workloads.delete('demo/echo');
    const deletedAt = answers.length;
    await until('answers come from cluster2', () => answers.slice(deletedAt).filter((a) => a === 'cluster2').length >= 5, 30_000, { explain: tail });
    // Bring it back.
    addEcho(c1);
    await c1.mesh.workloads.get('demo/echo')!.started;
    const backAt = answers.length;
    await until('answers come back to cluster1', () => answers.slice(backAt).filter((a) => a === 'cluster1').length >= 3, 30_000, { explain: tail });
  } finally {
    // Also on failure: the loop must not keep asking through the next tests.
    stop = true;
    await loop;
  }
  const failed = answers.filter((a) => a.startsWith('error'));
  // A request in flight at the very moment the pod died may fail; nothing after it.
  assert.ok(failed.length <= 1, `failed requests: ${failed.length} of ${answers.length}: ${failed.join('; ')}`);
});

/** `weftctl check`'s multi-cluster verdicts for one cluster, as `id:status`. */
async function federationVerdicts(c: string): Promise<string[]> {
  const facts = await gatherFederationFacts(mc.cluster(c).mesh.o);
  assert.ok(facts, `${c}'s controller reports no federation`);
  return checkFederation(facts).map((r) => `${r.id}:${r.status}${r.status === 'pass' ? '' : ` (${r.detail})`}`);
}

test('cutting the exchange link: cluster1 drops cluster2\'s endpoints after the stale bound, local traffic keeps flowing, and they return with the link; weftctl check sees it', async () => {
  const healthy = ['mesh.eastwest:pass', 'mesh.remote.cluster2:pass', 'mesh.remote-gateway.cluster2:pass'];
  assert.deepEqual(await federationVerdicts('cluster1'), healthy);
  const answers: string[] = [];
  mc.setLink('cluster1', false);
  try {
    await until('cluster1\'s agent no longer lists cluster2\'s endpoints', async () => (await echoEndpoints('cluster1')).every((e) => e.cluster === undefined), 20_000);
    for (let i = 0; i < 5; i++) {
      const r = await ask('cluster1');
      answers.push(r.ok ? r.cluster : `error: ${r.error}`);
    }
    assert.deepEqual(answers, Array(5).fill('cluster1'), 'local traffic is served while the other network is cut off');
    const m = await getJsonInNetns<{ remotes: Array<{ cluster: string; up: boolean }> }>(`/var/run/netns/${mc.cluster('cluster1').mesh.net.wireNetns}`, 'http://127.0.0.1:15000/debug/federation');
    assert.deepEqual(m.remotes.map((r) => [r.cluster, r.up]), [['cluster2', false]]);
    // weftctl check: the remote's discovery and its gateway fail; this cluster's own gateway is fine.
    const cut = await federationVerdicts('cluster1');
    assert.equal(cut[0], 'mesh.eastwest:pass');
    assert.match(cut[1]!, /^mesh\.remote\.cluster2:fail/);
    assert.match(cut[2]!, /^mesh\.remote-gateway\.cluster2:fail \(192\.168\.77\.2:15008: HBONE port not reachable/);
  } finally {
    mc.setLink('cluster1', true);
  }
  await until('cluster2\'s endpoints are back in cluster1', async () => (await echoEndpoints('cluster1')).some((e) => e.cluster === 'cluster2'), 20_000);
  assert.deepEqual(await federationVerdicts('cluster1'), healthy);
});

test('a waypoint in cluster1 serving demo/echo forwards to both clusters\' endpoints; to cluster2\'s through its east-west gateway (double HBONE), where cluster2\'s agent sees the waypoint\'s identity (issue 18 item 6)', async () => {
  const c1 = mc.cluster('cluster1');
  c1.mesh.removeConfig('40-locality.yaml');
  c1.mesh.writeConfig('10-demo.yaml', [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'waypoint' } } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'echo', namespace: 'demo' }, spec: { clusterIP: VIP, selector: { app: 'echo' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
  ]);
  c1.mesh.startWaypoint('node1', 'demo', 'waypoint');
  await c1.mesh.waitWaypointReady('demo', 'waypoint', 90_000);
  const tunnelsBefore = Number(/^weft_eastwest_tunnels_total (\d+)$/m.exec(await mc.gatewayMetrics('cluster2'))?.[1] ?? 0);
  const seen = new Set<string>();
  const answers: string[] = [];
  await until('answers through the waypoint come from both clusters', async () => {
    const r = await ask('cluster1').catch((e: Error) => ({ ok: false as const, error: e.message }));
    answers.push(r.ok ? r.cluster : r.error);
    if (r.ok) seen.add(r.cluster);
    return seen.size === 2;
  }, 30_000).catch((e: Error) => {
    throw new Error(`${e.message}; answers: ${answers.slice(-8).join(' | ')}\nwaypoint: ${c1.mesh.logTail('pod-demo-waypoint-0.log', 15)}\ngateway2: ${mc.cluster('cluster2').mesh.logTail('eastwest.log', 8)}`);
  });
  const waypointId = 'spiffe://cluster.local/ns/demo/sa/waypoint';
  const metrics = await mc.cluster('cluster2').mesh.agentMetrics('node1');
  assert.ok(metrics.split('\n').some((l) => l.startsWith('istio_tcp_connections_opened_total{') && l.includes('reporter="destination"') && l.includes(`source_principal="${waypointId}"`)),
    `cluster2's agent saw no connection from cluster1's waypoint:\n${metrics.split('\n').filter((l) => l.startsWith('istio_tcp_connections_opened_total')).join('\n')}`);
  assert.ok(Number(/^weft_eastwest_tunnels_total (\d+)$/m.exec(await mc.gatewayMetrics('cluster2'))?.[1] ?? 0) > tunnelsBefore, 'through cluster2\'s gateway');
});

/** One request from cluster1's client: the HTTP status and, for a 200, the answering cluster. */
async function askStatus(url = `http://${VIP}/`): Promise<{ status: number; cluster?: string; detail: string }> {
  const r = await mc.cluster('cluster1').mesh.exec('demo/client', 'curl', ['-sS', '--max-time', '5', '-w', '\n%{http_code}', url]);
  const lines = r.stdout.trimEnd().split('\n');
  const status = Number(lines.pop() ?? 0);
  const body = lines.join('\n');
  if (r.code !== 0 || status !== 200) return { status, detail: `${r.stderr.trim()} ${body.slice(0, 200)}`.trim() };
  return { status, cluster: (JSON.parse(body) as { cluster: string }).cluster, detail: '' };
}

/** Asks `n` times; the answering clusters (or `status <code>`), in order. */
async function answers(n: number): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const r = await askStatus();
    out.push(r.cluster ?? `status ${r.status}: ${r.detail}`);
  }
  return out;
}

// Gateway API: a route's backendRefs split traffic by weight (HTTPRoute weighted backends, a
// weight of 0 gets none). Istio sends a share to one cluster with a per-cluster host (a subset by
// topology.istio.io/cluster); in the Gateway API form that is a Service only that cluster has,
// here demo/echo-c2 (imported by namespace sameness) beside cluster1's own demo/echo-c1.
test('a waypoint\'s HTTPRoute sends a chosen weight to the other cluster\'s endpoints (backendRef to demo/echo-c2, a Service only cluster2 has): 0/100, 100/0, then 50/50 within a band that cannot flake; cluster2 sees the caller, and its DENY naming cluster1\'s client refuses it through the route (issue 18 item 6)', async () => {
  const c1 = mc.cluster('cluster1');
  const c2 = mc.cluster('cluster2');
  const split = (toC1: number, toC2: number) => [
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'echo-c1', namespace: 'demo' }, spec: { clusterIP: '10.96.0.21', selector: { app: 'echo' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
    {
      apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'echo-split', namespace: 'demo' },
      spec: { parentRefs: [{ group: '', kind: 'Service', name: 'echo', port: 80 }], rules: [{ backendRefs: [{ name: 'echo-c1', port: 80, weight: toC1 }, { name: 'echo-c2', port: 80, weight: toC2 }] }] },
    },
  ];
  /** Until `k` answers in a row are all from `cluster` (the new weights are in force), then `n` more. */
  const settle = async (cluster: string, k: number, n: number): Promise<string[]> => {
    let streak = 0;
    const seen: string[] = [];
    await until(`${k} answers in a row from ${cluster}`, async () => {
      const r = await askStatus();
      seen.push(r.cluster ?? `status ${r.status}: ${r.detail}`);
      streak = r.cluster === cluster ? streak + 1 : 0;
      return streak >= k;
    }, 30_000).catch((e: Error) => {
      throw new Error(`${e.message}; answers: ${seen.slice(-6).join(' | ')}\nwaypoint: ${c1.mesh.logTail('pod-demo-waypoint-0.log', 10)}`);
    });
    return answers(n);
  };
  try {
    c1.mesh.writeConfig('60-split.yaml', split(0, 100));
    assert.deepEqual(await settle('cluster2', 4, 10), Array(10).fill('cluster2'), 'weight 0 to echo-c1: every answer from cluster2');
    c1.mesh.writeConfig('60-split.yaml', split(100, 0));
    assert.deepEqual(await settle('cluster1', 4, 10), Array(10).fill('cluster1'), 'weight 0 to echo-c2: every answer from cluster1');
    c1.mesh.writeConfig('60-split.yaml', split(50, 50));
    await until('cluster2 answers again (50/50 in force)', async () => (await askStatus()).cluster === 'cluster2', 30_000);
    const half = await answers(40);
    const fromC2 = half.filter((a) => a === 'cluster2').length;
    assert.equal(half.filter((a) => a === 'cluster1').length + fromC2, 40, `every request answered: ${half.join(' | ')}`);
    // Binomial(40, 1/2) falls outside 8..32 with probability about 2e-5.
    assert.ok(fromC2 >= 8 && fromC2 <= 32, `50/50: ${fromC2} of 40 from cluster2`);
    process.stdout.write(`# 50/50 split through cluster1's waypoint: ${fromC2} of 40 answers from cluster2\n`);

    // Attacker side: the route must not carry cluster1's client around a DENY that cluster2 enforces.
    // The waypoint keeps its connection to cluster2's echo pooled (HTTP/1.1 keep-alive, per caller):
    // the DENY must close it too, not only refuse new tunnels.
    c1.mesh.writeConfig('60-split.yaml', split(0, 100));
    await settle('cluster2', 4, 0);
    const closedBefore = c2.mesh.logEntries('agent-node1.log', 'open connection closed: the policies no longer allow it').length;
    const deniedBefore = deniedCount(await c2.mesh.agentMetrics('node1'));
    c2.mesh.writeConfig('50-deny.yaml', [{
      apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'deny-cluster1-client', namespace: 'demo' },
      spec: { selector: { matchLabels: { app: 'echo' } }, action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster.local/ns/demo/sa/client'] } }] }] },
    }]);
    try {
      await until('cluster2 refuses cluster1\'s client through cluster1\'s waypoint', async () => (await askStatus()).status !== 200, 20_000);
      const refused = await answers(5);
      assert.ok(refused.every((a) => a.startsWith('status ')), `no answer through the route while the DENY stands: ${refused.join(' | ')}`);
      assert.ok(deniedCount(await c2.mesh.agentMetrics('node1')) > deniedBefore, 'weft_connections_denied_total{reason="policy"} went up at cluster2');
      const log = c2.mesh.logEntries('agent-node1.log', 'connection denied');
      assert.ok(log.some((l) => l.policy === 'demo/deny-cluster1-client' && l.source === 'spiffe://cluster.local/ns/demo/sa/waypoint' && l.caller === CLIENT),
        `cluster2's agent names the policy, the waypoint and the caller it carried:\n${c2.mesh.logTail('agent-node1.log', 5)}`);
      const closed = c2.mesh.logEntries('agent-node1.log', 'open connection closed: the policies no longer allow it').slice(closedBefore);
      assert.ok(closed.some((l) => l.caller === CLIENT && l.policy === 'demo/deny-cluster1-client'), `the waypoint's pooled tunnel carrying the client was closed by the new DENY:\n${c2.mesh.logTail('agent-node1.log', 8)}`);
    } finally {
      c2.mesh.removeConfig('50-deny.yaml');
    }
    await until('cluster1\'s client is served by cluster2 through the route again', async () => (await askStatus()).cluster === 'cluster2', 20_000);
  } finally {
    c1.mesh.removeConfig('60-split.yaml');
  }
});

// Istio ambient multi-network: a Service in one cluster behind that cluster's own waypoint is
// served to callers of other clusters through that waypoint, reached through the cluster's
// east-west gateway by double HBONE, so its routes and L7 policy hold whatever cluster the caller
// is in, judged on the caller's own identity.
test('a Service only cluster2 has, behind cluster2\'s own waypoint: refused at import (named) until that waypoint runs, then cluster1\'s client is served through it by double HBONE via cluster2\'s gateway, and an L7 DENY on /admin configured in cluster2 answers it 403, counted at the waypoint with the caller\'s identity (issue 18 item 6)', async () => {
  const c1 = mc.cluster('cluster1');
  const c2 = mc.cluster('cluster2');
  const WP_VIP = '10.96.0.22';
  const federation = () => getJsonInNetns<{ remotes: Array<{ cluster: string; refusedServices?: Record<string, string> }> }>(`/var/run/netns/${c1.mesh.net.wireNetns}`, 'http://127.0.0.1:15000/debug/federation');
  const imported = async () => (await getJsonInNetns<{ config: AgentConfig }>(c1.mesh.node('node1').netnsPath, 'http://127.0.0.1:15000/config_dump')).config;
  c2.mesh.writeConfig('70-behind-waypoint.yaml', [
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'echo-wp', namespace: 'demo', labels: { 'weft.dev/use-waypoint': 'waypoint' } }, spec: { clusterIP: WP_VIP, selector: { app: 'echo' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
  ]);
  try {
    // Its waypoint does not run yet: going around it would bypass its policy, so it is refused, by name.
    let why = '';
    await until('cluster1 refuses demo/echo-wp while its waypoint is missing', async () => {
      why = (await federation()).remotes.find((r) => r.cluster === 'cluster2')?.refusedServices?.['demo/echo-wp'] ?? '';
      return why !== '';
    }, 20_000);
    assert.match(why, /goes through waypoint demo\/waypoint of cluster cluster2, which enforces its L7 policy and is not in its export/);
    c2.mesh.startWaypoint('node1', 'demo', 'waypoint');
    await c2.mesh.waitWaypointReady('demo', 'waypoint', 90_000);
    const tunnels = async () => Number(/^weft_eastwest_tunnels_total (\d+)$/m.exec(await mc.gatewayMetrics('cluster2'))?.[1] ?? 0);
    const tunnelsBefore = await tunnels();
    const seen: string[] = [];
    await until('cluster1\'s client is served through cluster2\'s waypoint', async () => {
      const r = await askStatus(`http://${WP_VIP}/`);
      seen.push(r.cluster ?? `status ${r.status}: ${r.detail}`);
      return r.cluster === 'cluster2';
    }, 30_000).catch((e: Error) => {
      throw new Error(`${e.message}; answers: ${seen.slice(-5).join(' | ')}\nagent1: ${c1.mesh.logTail('agent-node1.log', 6)}\ngateway2: ${c2.mesh.logTail('eastwest.log', 6)}\nwaypoint2: ${c2.mesh.logTail('pod-demo-waypoint-0.log', 6)}`);
    });
    assert.ok(await tunnels() > tunnelsBefore, 'through cluster2\'s gateway');
    // cluster1 knows the Service by cluster2's waypoint only: no endpoint to go around it by.
    const cfg = await imported();
    const svc = cfg.services.find((s) => s.namespace === 'demo' && s.name === 'echo-wp')!;
    assert.deepEqual([svc.waypoint, svc.endpoints.length], [{ name: 'waypoint', namespace: 'demo', cluster: 'cluster2' }, 0]);
    const wp = cfg.waypoints.find((w) => w.cluster === 'cluster2')!;
    assert.deepEqual([wp.network, wp.gateway?.network, wp.address], ['network2', 'network2', c2.mesh.workloads.get('demo/waypoint-0')!.pod.ip]);

    c2.mesh.writeConfig('71-deny-admin.yaml', [{
      apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'deny-admin', namespace: 'demo' },
      spec: { targetRefs: [{ kind: 'Service', group: '', name: 'echo-wp' }], action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster.local/ns/demo/sa/client'] } }], to: [{ operation: { paths: ['/admin*'] } }] }] },
    }]);
    let denied: Awaited<ReturnType<typeof askStatus>> | undefined;
    await until('cluster2\'s waypoint refuses /admin to cluster1\'s client', async () => (denied = await askStatus(`http://${WP_VIP}/admin/users`)).status === 403, 20_000);
    assert.match(denied!.detail, /demo\/deny-admin/, 'the 403 names the policy');
    const ok = await askStatus(`http://${WP_VIP}/`);
    assert.equal(ok.cluster, 'cluster2', `the rest still passes: ${JSON.stringify(ok)}`);
    const wpPod = c2.mesh.workloads.get('demo/waypoint-0')!.pod;
    const m = (await requestInNetns(wpPod.netnsPath, `http://${wpPod.ip}:15020/metrics`)).body;
    for (const code of ['200', '403']) {
      assert.match(m, new RegExp(`istio_requests_total\\{[^}]*source_principal="${CLIENT.replaceAll('/', '\\/').replaceAll('.', '\\.')}"[^}]*response_code="${code}"[^}]*\\} [1-9]`), `cluster2's waypoint counts cluster1's client's ${code}s under its own identity`);
    }
  } finally {
    c2.mesh.removeConfig('71-deny-admin.yaml');
    c2.mesh.removeConfig('70-behind-waypoint.yaml');
  }
});

// The gateway admits the outer CONNECT only (the caller's inner session is TLS it cannot read), and
// the inner session reaches every pod of the node agent it was carried to. Istio's east-west gateway
// carries callers to a Service, never to a pod of their choosing, and its destination ztunnel
// refuses an inner CONNECT naming another address than the pod dialled (ztunnel
// src/proxy/inbound.rs validate_destination). So cluster2's agent judges what the gateway carries
// by the gateway's rules (agent/src/inbound.ts #throughGateway).
test('a caller of cluster1 carried by cluster2\'s gateway to echo cannot name, in its inner CONNECT, a pod of the same node no exported Service lists: cluster2\'s agent refuses it (403), counts it not_exported and logs it; naming echo is served', async () => {
  const c1 = mc.cluster('cluster1');
  const c2 = mc.cluster('cluster2');
  c2.mesh.addWorkload({ node: 'node1', namespace: 'demo', name: 'lone', labels: { app: 'lone' }, command: ['cli/local/apps/echo.ts', '--port', '8080', '--name', 'lone'] });
  await c2.mesh.waitWorkloadsEnrolled(['demo/lone']);
  const echoIp = c2.mesh.workloads.get('demo/echo')!.pod.ip;
  const loneIp = c2.mesh.workloads.get('demo/lone')!.pod.ip;
  const probe = async (target: string, expect: string): Promise<Record<string, unknown>> => {
    const child = c1.mesh.net.spawn(c1.mesh.node('node1'), process.execPath, [join(import.meta.dirname, 'fixtures', 'hbone-probe.ts'),
      '--dest', `${c2.mesh.node('node1').ip}:15008`, '--target', target, '--expect', expect, '--identity', CLIENT,
      '--ca-cert', join(stateDir, 'cluster1', 'ca-chain.crt'), '--ca-key', join(stateDir, 'cluster1', 'ca.key'), '--ca-roots', c1.mesh.caFile,
      '--gateway', `${c2.edgeIp}:15008`, '--gateway-id', 'spiffe://cluster.local/ns/weft-system/sa/weft-eastwest', '--outer', `${echoIp}:8080`,
    ]);
    const { stdout, stderr } = await collectOutput(child);
    assert.ok(stdout.trim(), `the probe printed nothing: ${stderr}`);
    return JSON.parse(stdout.trim().split('\n').pop()!) as Record<string, unknown>;
  };
  const served = await probe(`${echoIp}:8080`, 'spiffe://cluster.local/ns/demo/sa/echo');
  assert.equal(served.ok, true, JSON.stringify(served));
  const refused = await probe(`${loneIp}:8080`, 'spiffe://cluster.local/ns/demo/sa/lone');
  assert.equal(refused.ok, false, JSON.stringify(refused));
  assert.equal(refused.status, 403);
  assert.match(String(refused.message), /not an endpoint of a Service this cluster exports/);
  const metrics = await c2.mesh.agentMetrics('node1');
  assert.match(metrics, /^weft_connections_denied_total\{[^}]*reason="not_exported"[^}]*\} 1$/m);
  const line = c2.mesh.logEntries('agent-node1.log', 'HBONE refused').find((l) => l['authority'] === `${loneIp}:8080`);
  assert.ok(line && line['peer'] === CLIENT, JSON.stringify(line));
});
