// A quota shared by two waypoint replicas, end to end and set only by objects: namespace `quota` has
// a Waypoint with two replicas on different nodes whose spec.quotaStore names one Redis
// (redis-server in a pod of its own, outside the mesh, failureMode closed), and a TrafficPolicy
// quota of 20 requests a minute on Service `api`. The client's agent spreads
// connections over the replicas; the total admitted across both is the quota, and each replica
// both admitted and refused some, so the count was shared, not per replica.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { localMeshSuite } from './mesh-suite.ts';
import { LocalMesh, type Workload } from '../../cli/local/mesh.ts';
import { requestInNetns } from '../../cli/local/netns-http.ts';

const suite = localMeshSuite();
let mesh: LocalMesh;
const LIMIT = 20;

/** n sequential requests (one connection each) from the client pod; one status per request. */
async function statuses(n: number, vip: string): Promise<number[]> {
  const script = `for i in $(seq ${n}); do curl -s -o /dev/null -w '%{http_code}\\n' --max-time 5 http://${vip}/; done`;
  const r = await mesh.exec('quota/client', 'sh', ['-c', script]);
  return r.stdout.trim().split('\n').filter(Boolean).map(Number);
}

/** istio_requests_total for service `api` on one replica, by response code. */
async function countsOn(wp: Workload): Promise<Map<string, number>> {
  const body = (await requestInNetns(wp.pod.netnsPath, `http://${wp.pod.ip}:15020/metrics`)).body;
  const out = new Map<string, number>();
  for (const line of body.split('\n')) {
    if (!line.startsWith('istio_requests_total{') || !line.includes('destination_service_name="api"')) continue;
    const code = /response_code="(\d+)"/.exec(line)?.[1] ?? '?';
    out.set(code, (out.get(code) ?? 0) + Number(line.split(' ').pop()));
  }
  return out;
}

before(async () => {
  mesh = await suite.create();
  const svc = (name: string, vip: string) => ({
    apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: 'quota' },
    spec: { clusterIP: vip, selector: { app: name }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] },
  });
  mesh.writeConfig('10-quota.yaml', [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'quota', labels: { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'waypoint' } } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'infra', labels: { 'weft.dev/dataplane-mode': 'none' } } },
    svc('api', '10.96.3.10'),
    svc('warm', '10.96.3.11'),
    { apiVersion: 'weft.dev/v1alpha1', kind: 'TrafficPolicy', metadata: { name: 'api-quota', namespace: 'quota' }, spec: { targetRef: { kind: 'Service', name: 'api' }, quota: { requests: LIMIT, window: '1m' } } },
  ]);
  const redis = mesh.addWorkload({
    node: 'node1', namespace: 'infra', name: 'redis', labels: { app: 'redis' },
    command: ['redis-server', '--port', '6379', '--bind', '0.0.0.0', '--save', '', '--appendonly', 'no', '--protected-mode', 'no'],
  });
  const echo = (name: string) => ['cli/local/apps/echo.ts', '--port', '8080', '--name', name, '--version', 'v1'];
  mesh.addWorkload({ node: 'node2', namespace: 'quota', name: 'api', labels: { app: 'api' }, command: echo('api') });
  mesh.addWorkload({ node: 'node2', namespace: 'quota', name: 'warm', labels: { app: 'warm' }, command: echo('warm') });
  mesh.addWorkload({ node: 'node1', namespace: 'quota', name: 'client' });
  mesh.startController();
  await mesh.waitControllerReady();
  mesh.startAgents();
  mesh.startWaypoint('node1', 'quota', 'waypoint', {
    replicas: 2, nodes: ['node1', 'node2'],
    quotaStore: { redis: `redis://${redis.pod.ip}:6379`, failureMode: 'closed' },
  });
  await mesh.waitReady(60_000);
  await mesh.waitWaypointReady('quota');
  await mesh.waitWorkloadsEnrolled(['quota/client', 'quota/api', 'quota/warm']);
  // Both replicas have the namespace's config once `warm` (no quota) answers through each; the
  // agent alternates replicas per connection, so 8 good answers in a row cover both.
  for (let i = 0; i < 40; i++) {
    const r = await statuses(8, '10.96.3.11');
    if (r.length === 8 && r.every((s) => s === 200)) return;
    await new Promise((res) => setTimeout(res, 250));
  }
  throw new Error(`the waypoint replicas did not both serve:\n${mesh.logTail('pod-quota-waypoint-0.log', 10)}\n${mesh.logTail('pod-quota-waypoint-1.log', 10)}`);
});

test('the client node agent holds the addresses of both replicas, one per node', async () => {
  const cfg = await mesh.agentAdmin<{ config: { waypoints: Array<{ name: string; namespace: string; addresses?: string[] }> } }>('node1', '/config_dump');
  const replicas = mesh.waypointReplicas('quota');
  assert.deepEqual(replicas.map((w) => w.spec.node), ['node1', 'node2']);
  const wp = cfg.config.waypoints.find((w) => w.namespace === 'quota' && w.name === 'waypoint');
  assert.deepEqual(wp?.addresses, replicas.map((w) => w.pod.ip).sort(), JSON.stringify(cfg.config.waypoints));
});

test('two replicas sharing a Redis quota of 20 per minute admit 20 of 40 requests in total, each replica admitting and refusing some', async () => {
  const r = await statuses(2 * LIMIT, '10.96.3.10');
  assert.equal(r.length, 2 * LIMIT);
  assert.equal(r.filter((s) => s === 200).length, LIMIT, `admitted: ${JSON.stringify(r)}`);
  assert.equal(r.filter((s) => s === 429).length, LIMIT, `refused: ${JSON.stringify(r)}`);
  const [a, b] = await Promise.all(mesh.waypointReplicas('quota').map(countsOn));
  assert.equal((a!.get('200') ?? 0) + (b!.get('200') ?? 0), LIMIT, 'the replicas admitted the quota between them');
  for (const [i, c] of [a!, b!].entries()) {
    assert.ok((c.get('200') ?? 0) > 0 && (c.get('429') ?? 0) > 0, `replica ${i} admitted and refused: ${JSON.stringify([...c])}`);
  }
});
