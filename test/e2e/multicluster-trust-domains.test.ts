// Two clusters on two networks, each with a trust domain of its own (`weftctl up --clusters 2
// --trust-domains per-cluster`: cluster1.local, cluster2.local, each admitting the other's as an
// alias). A caller of cluster1 carried through cluster2's east-west gateway to a Service behind
// cluster2's waypoint presents its own identity, of cluster1.local, to that waypoint: the waypoint
// admits it as cluster2's agents and gateway do, as Istio's proxies all take the mesh's
// trustDomainAliases (https://istio.io/latest/docs/reference/config/istio.mesh.v1alpha1/).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { Lab } from '../lab/lab.ts';
import { until } from '../lab/wait.ts';
import { LocalMultiCluster, type LocalCluster } from '../../cli/local/multicluster.ts';
import { requestInNetns } from '../../cli/local/netns-http.ts';

const lab = new Lab();
const stateDir = mkdtempSync(join(tmpdir(), 'weft-mc-td-'));
let mc: LocalMultiCluster;
/** demo/echo-wp: a Service only cluster2 has, behind cluster2's waypoint. */
const WP_VIP = '10.96.0.22';
const CLIENT = 'spiffe://cluster1.local/ns/demo/sa/client';

after(async () => {
  await mc?.destroy();
  await lab.cleanup();
  rmSync(stateDir, { recursive: true, force: true });
});

function apps(c: LocalCluster): void {
  // The same apps in both clusters (a gateway is ready once it knows endpoints of its own cluster).
  c.mesh.writeConfig('10-demo.yaml', [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'echo', namespace: 'demo' }, spec: { clusterIP: '10.96.0.10', selector: { app: 'echo' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
  ]);
  c.mesh.addWorkload({ node: 'node1', namespace: 'demo', name: 'client', labels: { app: 'client' } });
  c.mesh.addWorkload({
    node: 'node1', namespace: 'demo', name: 'echo', labels: { app: 'echo' }, deployment: 'echo',
    command: ['cli/local/apps/echo.ts', '--port', '8080', '--name', 'echo'], env: { WEFT_CLUSTER: c.name },
  });
  if (c.name === 'cluster2') {
    c.mesh.writeConfig('20-echo-wp.yaml', [
      { apiVersion: 'v1', kind: 'Service', metadata: { name: 'echo-wp', namespace: 'demo', labels: { 'weft.dev/use-waypoint': 'waypoint' } }, spec: { clusterIP: WP_VIP, selector: { app: 'echo' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
    ]);
  }
}

async function ask(url: string): Promise<{ status: number; cluster?: string; detail: string }> {
  const r = await mc.cluster('cluster1').mesh.exec('demo/client', 'curl', ['-sS', '--max-time', '5', '-w', '\n%{http_code}', url]);
  const lines = r.stdout.trimEnd().split('\n');
  const status = Number(lines.pop() ?? 0);
  const body = lines.join('\n');
  if (r.code !== 0 || status !== 200) return { status, detail: `${r.stderr.trim()} ${body.slice(0, 200)}`.trim() };
  return { status, cluster: (JSON.parse(body) as { cluster: string }).cluster, detail: '' };
}

before(async () => {
  mc = await LocalMultiCluster.create({ prefix: lab.id, stateDir, clusters: 2, trustDomains: 'per-cluster' });
  for (const c of mc.clusters) apps(c);
  mc.startControllers();
  for (const c of mc.clusters) await c.mesh.waitControllerReady();
  for (const c of mc.clusters) c.mesh.startAgents();
  for (const c of mc.clusters) {
    await c.mesh.waitReady(90_000);
    await c.mesh.waitWorkloadsEnrolled(['demo/client', 'demo/echo']);
  }
  mc.startGateways();
  await mc.waitGatewaysReady();
  mc.cluster('cluster2').mesh.startWaypoint('node1', 'demo', 'waypoint');
  await mc.cluster('cluster2').mesh.waitWaypointReady('demo', 'waypoint', 90_000);
});

test('with a trust domain per cluster, cluster1\'s client is served through cluster2\'s waypoint (double HBONE via cluster2\'s gateway): the waypoint admits cluster1.local as an alias and counts the request under the caller\'s own identity', async () => {
  const c2 = mc.cluster('cluster2');
  const seen: string[] = [];
  await until('cluster1\'s client is served through cluster2\'s waypoint', async () => {
    const r = await ask(`http://${WP_VIP}/`);
    seen.push(r.cluster ?? `status ${r.status}: ${r.detail}`);
    return r.cluster === 'cluster2';
  }, 45_000).catch((e: Error) => {
    throw new Error(`${e.message}; answers: ${seen.slice(-5).join(' | ')}\nwaypoint2: ${c2.mesh.logTail('pod-demo-waypoint-0.log', 8)}`);
  });
  const wpPod = c2.mesh.workloads.get('demo/waypoint-0')!.pod;
  const m = (await requestInNetns(wpPod.netnsPath, `http://${wpPod.ip}:15020/metrics`)).body;
  assert.match(m, new RegExp(`istio_requests_total\\{[^}]*source_principal="${CLIENT.replaceAll('/', '\\/').replaceAll('.', '\\.')}"[^}]*response_code="200"[^}]*\\} [1-9]`), 'cluster2\'s waypoint counts cluster1\'s client under its own identity, of cluster1.local');
  assert.doesNotMatch(m, /weft_waypoint_hbone_refused_total\{kind="peer-trust-domain"\} [1-9]/, 'no caller was refused for its trust domain');
});

// Istio's trust-domain migration (https://istio.io/latest/docs/tasks/security/authorization/authz-td-migration/,
// pilot trustdomain.Bundle.ReplaceTrustDomainAliases): the mesh's trust domain and its aliases are
// one bundle, so a DENY at cluster2's waypoint written with cluster2's spelling of the client's
// principal also refuses cluster1's client (cluster1.local, an alias there). Matched literally, it
// let that client through.
test('with a trust domain per cluster, a DENY at cluster2\'s waypoint naming cluster2.local/ns/demo/sa/client refuses cluster1\'s client (an alias), counted RBAC', async () => {
  const c2 = mc.cluster('cluster2');
  c2.mesh.writeConfig('30-deny-client.yaml', [{
    apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'deny-client', namespace: 'demo' },
    spec: { targetRefs: [{ group: '', kind: 'Service', name: 'echo-wp' }], action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster2.local/ns/demo/sa/client'] } }] }] },
  }]);
  try {
    const seen: string[] = [];
    await until('cluster2\'s waypoint refuses cluster1\'s client', async () => {
      const r = await ask(`http://${WP_VIP}/`);
      seen.push(r.cluster ?? `status ${r.status}`);
      return r.status === 403;
    }, 45_000).catch((e: Error) => { throw new Error(`${e.message}; answers: ${seen.slice(-5).join(' | ')}`); });
    const wpPod = c2.mesh.workloads.get('demo/waypoint-0')!.pod;
    const m = (await requestInNetns(wpPod.netnsPath, `http://${wpPod.ip}:15020/metrics`)).body;
    const refused = m.split('\n').filter((l) => l.startsWith('istio_requests_total{') && l.includes('response_code="403"') && l.includes('response_flags="RBAC"') && l.includes(`source_principal="${CLIENT}"`));
    assert.ok(refused.some((l) => Number(l.split(' ').pop()) >= 1), `refused under the caller's own identity, counted RBAC:\n${m.split('\n').filter((l) => l.startsWith('istio_requests_total{')).join('\n')}`);
  } finally {
    c2.mesh.removeConfig('30-deny-client.yaml');
  }
});

// The other way: a waypoint of cluster1 (cluster1.local) sends to cluster2's endpoints through
// cluster2's gateway, whose agent admits cluster1.local as an alias and sees the waypoint's identity.
test('with a trust domain per cluster, a waypoint in cluster1 serving demo/echo forwards to cluster2\'s endpoints too, and cluster2\'s agent sees the waypoint\'s cluster1.local identity', async () => {
  const c1 = mc.cluster('cluster1');
  c1.mesh.writeConfig('10-demo.yaml', [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'waypoint' } } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'echo', namespace: 'demo' }, spec: { clusterIP: '10.96.0.10', selector: { app: 'echo' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
  ]);
  c1.mesh.startWaypoint('node1', 'demo', 'waypoint');
  await c1.mesh.waitWaypointReady('demo', 'waypoint', 90_000);
  const seen = new Set<string>();
  const answers: string[] = [];
  await until('answers through cluster1\'s waypoint come from both clusters', async () => {
    const r = await ask('http://10.96.0.10/');
    answers.push(r.cluster ?? `status ${r.status}: ${r.detail}`);
    if (r.cluster) seen.add(r.cluster);
    return seen.size === 2;
  }, 45_000).catch((e: Error) => {
    throw new Error(`${e.message}; answers: ${answers.slice(-8).join(' | ')}\nwaypoint1: ${c1.mesh.logTail('pod-demo-waypoint-0.log', 10)}`);
  });
  const metrics = await mc.cluster('cluster2').mesh.agentMetrics('node1');
  assert.ok(metrics.split('\n').some((l) => l.startsWith('istio_tcp_connections_opened_total{') && l.includes('reporter="destination"') && l.includes('source_principal="spiffe://cluster1.local/ns/demo/sa/waypoint"')),
    `cluster2's agent saw no connection from cluster1's waypoint:\n${metrics.split('\n').filter((l) => l.startsWith('istio_tcp_connections_opened_total')).join('\n')}`);
});
