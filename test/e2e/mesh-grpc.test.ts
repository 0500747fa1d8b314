// gRPC through a waypoint, end to end: namespace `rpc` declares a Waypoint and uses it; a Greeter
// client in a pod (test/e2e/fixtures/grpc-client.ts, @grpc/grpc-js) calls the `greeter` service,
// whose GRPCRoute sends Lookup and callers with `x-canary: 1` to v2 and everything else to v1. An L7
// DENY policy on the Admin method answers PERMISSION_DENIED; the backend answers NOT_FOUND on its
// own. The client sees the gRPC status codes, and the waypoint counts them in
// istio_requests_total{grpc_response_status}. Real kernel, eBPF, TLS and processes in namespaces.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { localMeshSuite } from './mesh-suite.ts';
import { LocalMesh } from '../../cli/local/mesh.ts';
import { requestInNetns } from '../../cli/local/netns-http.ts';

const suite = localMeshSuite();
let mesh: LocalMesh;
const VIP = '10.96.2.10';
const TARGET = `${VIP}:9000`;
const GRPC = { OK: 0, NOT_FOUND: 5, PERMISSION_DENIED: 7 } as const;

interface CallResult {
  code: number;
  details?: string;
  version?: string;
  message?: string;
}

/** `count` unary calls from the client pod; one result per call. */
async function calls(method: string, name: string, headers: string[] = [], count = 1): Promise<CallResult[]> {
  const r = await mesh.exec('rpc/client', process.execPath, [join(import.meta.dirname, 'fixtures/grpc-client.ts'), TARGET, method, name, ...headers, '--count', String(count)]);
  assert.equal(r.code, 0, `grpc-client exited ${r.code}: ${r.stderr}`);
  return r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as CallResult);
}

before(async () => {
  mesh = await suite.create();
  const svc = (name: string, vip: string, selector: Record<string, string>) => ({
    apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: 'rpc' },
    spec: { clusterIP: vip, selector, ports: [{ name: 'grpc', port: 9000, targetPort: 9000 }] },
  });
  mesh.writeConfig('10-rpc.yaml', [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'rpc', labels: { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'waypoint' } } },
    svc('greeter', VIP, { app: 'greeter' }),
    svc('greeter-v1', '10.96.2.11', { app: 'greeter', version: 'v1' }),
    svc('greeter-v2', '10.96.2.12', { app: 'greeter', version: 'v2' }),
    {
      apiVersion: 'gateway.networking.k8s.io/v1', kind: 'GRPCRoute', metadata: { name: 'greeter', namespace: 'rpc' },
      spec: {
        parentRefs: [{ group: '', kind: 'Service', name: 'greeter', port: 9000 }],
        rules: [
          { matches: [{ method: { service: 'weft.test.Greeter', method: 'Lookup' } }], backendRefs: [{ name: 'greeter-v2', port: 9000 }] },
          { matches: [{ headers: [{ name: 'x-canary', value: '1' }] }], backendRefs: [{ name: 'greeter-v2', port: 9000 }] },
          { backendRefs: [{ name: 'greeter-v1', port: 9000 }] },
        ],
      },
    },
    {
      apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'no-admin', namespace: 'rpc' },
      spec: { targetRefs: [{ kind: 'Service', group: '', name: 'greeter' }], action: 'DENY', rules: [{ to: [{ operation: { paths: ['/weft.test.Greeter/Admin'] } }] }] },
    },
  ]);
  const server = (version: string) => ['test/e2e/fixtures/grpc-server.ts', '--port', '9000', '--version', version];
  mesh.addWorkload({ node: 'node1', namespace: 'rpc', name: 'greeter-v1', serviceAccount: 'greeter', labels: { app: 'greeter', version: 'v1' }, command: server('v1') });
  mesh.addWorkload({ node: 'node2', namespace: 'rpc', name: 'greeter-v2', serviceAccount: 'greeter', labels: { app: 'greeter', version: 'v2' }, command: server('v2') });
  mesh.addWorkload({ node: 'node1', namespace: 'rpc', name: 'client' });
  mesh.startController();
  await mesh.waitControllerReady();
  mesh.startAgents();
  mesh.startWaypoint('node2', 'rpc');
  await mesh.waitReady(60_000);
  await mesh.waitWaypointReady('rpc');
  await mesh.waitWorkloadsEnrolled(['rpc/client', 'rpc/greeter-v1', 'rpc/greeter-v2']);
  // Config reaches the waypoint asynchronously: wait until the route is in force.
  for (let i = 0; i < 60; i++) {
    const [r] = await calls('Lookup', 'alice');
    if (r?.code === GRPC.OK && r.version === 'v2') return;
    await new Promise((res) => setTimeout(res, 250));
  }
  throw new Error(`the GRPCRoute did not come into force:\n${mesh.logTail('pod-rpc-waypoint-0.log')}`);
});

test('a GRPCRoute sends Hello to v1, Lookup to v2 by method, and a caller with x-canary: 1 to v2 by header', async () => {
  const hello = await calls('Hello', 'bob', [], 5);
  assert.deepEqual(hello.map((r) => [r.code, r.version, r.message]), Array(5).fill([GRPC.OK, 'v1', 'hello bob']));
  const lookup = await calls('Lookup', 'bob', [], 5);
  assert.deepEqual(lookup.map((r) => [r.code, r.version]), Array(5).fill([GRPC.OK, 'v2']));
  const canary = await calls('Hello', 'bob', ['x-canary=1'], 5);
  assert.deepEqual(canary.map((r) => [r.code, r.version]), Array(5).fill([GRPC.OK, 'v2']));
});

test('the backend NOT_FOUND reaches the client unchanged through the waypoint', async () => {
  const [r] = await calls('Lookup', 'missing');
  assert.equal(r?.code, GRPC.NOT_FOUND, `${JSON.stringify(r)}\n${mesh.logTail('pod-rpc-waypoint-0.log', 10)}`);
  assert.equal(r?.details, 'no entry named missing');
});

test('an L7 DENY policy on the Admin method answers PERMISSION_DENIED naming the policy, without reaching the backend', async () => {
  const [r] = await calls('Admin', 'bob');
  assert.equal(r?.code, GRPC.PERMISSION_DENIED, JSON.stringify(r));
  assert.match(r?.details ?? '', /rpc\/no-admin/);
  assert.equal(r?.message, undefined, 'no backend answer');
});

test('the waypoint counts gRPC calls by grpc_response_status 0, 5 and 7 with request_protocol grpc', async () => {
  const wp = mesh.workloads.get('rpc/waypoint-0')!;
  const m = (await requestInNetns(wp.pod.netnsPath, `http://${wp.pod.ip}:15020/metrics`)).body;
  const count = (status: number): number => {
    let n = 0;
    for (const line of m.split('\n')) {
      if (!line.startsWith('istio_requests_total{')) continue;
      if (!line.includes(`grpc_response_status="${status}"`) || !line.includes('request_protocol="grpc"')) continue;
      if (!line.includes('destination_service_namespace="rpc"')) continue;
      n += Number(line.split(' ').pop());
    }
    return n;
  };
  assert.ok(count(GRPC.OK) >= 15, `OK calls counted: ${count(GRPC.OK)}\n${m.split('\n').filter((l) => l.startsWith('istio_requests_total{')).join('\n')}`);
  assert.ok(count(GRPC.NOT_FOUND) >= 1, 'NOT_FOUND counted');
  assert.ok(count(GRPC.PERMISSION_DENIED) >= 1, 'PERMISSION_DENIED counted');
});
