// The Gateway API mesh conformance tier's harness: one local mesh for the whole tier (the GAMMA
// test topology, in Weft's local-mesh config), manifests applied one test at a time, long-lived
// clients inside mesh pods, and the comparison of what a client got with what a case expects.
//
// Topology (the upstream suite's shape, our own objects):
//   namespace `gamma` (ambient, waypoint `waypoint` on node2): Deployments echo-v1 (node1) and
//     echo-v2 (node2) of the echo app (cli/local/apps/echo.ts: HTTP on 8080, gRPC on 7070);
//     Services echo (both), echo-v1, echo-v2, each with ports 80→8080 (http), 8080 (http-alt) and
//     7070 (grpc).
//     A third backend, backend-v3 (node2), outside `echo`.
//   namespace `gamma-consumer` (ambient, no waypoint): echo-v1, a client for consumer routes, and
//     Service web-backend selecting it (cross-namespace backendRefs).
// Clients run in the echo pods themselves, as the upstream suite execs into them.
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { stringify } from 'yaml';
import type { ChildProcess } from 'node:child_process';
import { LocalMesh, REPO_ROOT } from '../../cli/local/mesh.ts';
import { getJsonInNetns } from '../../cli/local/netns-http.ts';
import type { MeshSuite } from '../e2e/mesh-suite.ts';
import { until } from '../lab/wait.ts';
import type { ClientRequest, ClientResponse, WireRequest, WireResult } from './client-protocol.ts';
import { DEFAULT_NAMESPACE, mismatches, type Expected } from './expect.ts';

export type { Expected };

export const NS = DEFAULT_NAMESPACE;
export const CONSUMER_NS = 'gamma-consumer';
/** Services by `namespace/name` and their cluster IPs. */
export const SERVICES: Array<{ namespace: string; name: string; vip: string; selector: Record<string, string> }> = [
  { namespace: NS, name: 'echo', vip: '10.96.7.10', selector: { app: 'echo' } },
  { namespace: NS, name: 'echo-v1', vip: '10.96.7.11', selector: { app: 'echo', version: 'v1' } },
  { namespace: NS, name: 'echo-v2', vip: '10.96.7.12', selector: { app: 'echo', version: 'v2' } },
  // A third backend outside `echo`, for the core tests that tell three backends apart.
  { namespace: NS, name: 'backend-v3', vip: '10.96.7.13', selector: { app: 'backend-v3' } },
  // A Service in another namespace, for cross-namespace backendRefs and ReferenceGrant.
  { namespace: CONSUMER_NS, name: 'web-backend', vip: '10.96.7.14', selector: { app: 'echo' } },
  { namespace: CONSUMER_NS, name: 'web-backend-v2', vip: '10.96.7.15', selector: { app: 'echo' } },
];
const PORTS = [
  { name: 'http', port: 80, targetPort: 8080 },
  { name: 'http-alt', port: 8080 },
  { name: 'grpc', port: 7070 },
  // The echo app's 8080 speaks h2c prior knowledge too.
  { name: 'h2c', port: 8081, targetPort: 8080, appProtocol: 'kubernetes.io/h2c' },
  // ...and accepts WebSocket handshakes.
  { name: 'ws', port: 8082, targetPort: 8080, appProtocol: 'kubernetes.io/ws' },
];

/** A client process inside a pod, speaking fixtures/client.ts's line protocol. */
export class PodClient {
  readonly pod: string;
  private readonly child: ChildProcess;
  private readonly waiting = new Map<number, (r: WireResult) => void>();
  private nextId = 1;
  private ready!: Promise<void>;

  constructor(pod: string, child: ChildProcess) {
    this.pod = pod;
    this.child = child;
    const lines = createInterface({ input: child.stdout! });
    let stderr = '';
    child.stderr!.on('data', (c: Buffer) => { stderr = (stderr + c.toString()).slice(-2000); });
    this.ready = new Promise((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`client in ${pod} exited (${code}): ${stderr}`)));
      lines.on('line', (line) => {
        const msg = JSON.parse(line) as WireResult | { ready: true };
        if ('ready' in msg) { resolve(); return; }
        this.waiting.get(msg.id)?.(msg);
        this.waiting.delete(msg.id);
      });
    });
    this.ready.catch(() => undefined);
  }

  whenReady(): Promise<void> {
    return this.ready;
  }

  /** Sends `request` `count` times (up to 8 at once); one response per request. */
  async send(request: ClientRequest, count = 1): Promise<ClientResponse[]> {
    await this.ready;
    const id = this.nextId++;
    const wire: WireRequest = { id, request, count };
    const result = new Promise<WireResult>((resolve) => this.waiting.set(id, resolve));
    this.child.stdin!.write(JSON.stringify(wire) + '\n');
    return (await result).responses;
  }

  close(): void {
    this.child.stdin!.end();
  }
}

/** The waypoint refused a test's config: no point waiting for it. */
export class ConfigRejected extends Error {
  readonly code = 'CONFIG_REJECTED';
}

export interface ConformanceMesh {
  mesh: LocalMesh;
  /** Clients by `namespace/pod`. */
  clients: Map<string, PodClient>;
  client(pod: string): PodClient;
  /** Replaces the previous test's manifests with `objects` and waits until the waypoint holds exactly their routes. */
  apply(test: string, objects: object[]): Promise<void>;
  /** The requests a pod's echo app logged (--log-requests), oldest first. */
  requestsSeen(key: string): Array<{ method: string; path: string; headers: Record<string, string | string[]> }>;
  /** The pod IP of a workload (`namespace/name`). */
  podIp(key: string): string;
  waypointLog(lines?: number): string;
}


/** Builds the tier's mesh (call from `before`); torn down by the suite's `after` (localMeshSuite). */
export async function startConformanceMesh(suite: MeshSuite): Promise<ConformanceMesh> {
  const mesh = await suite.create(['node1', 'node2']);
  const ambient = (name: string, waypoint?: string) => ({
    apiVersion: 'v1', kind: 'Namespace',
    metadata: { name, labels: { 'weft.dev/dataplane-mode': 'ambient', ...(waypoint ? { 'weft.dev/use-waypoint': waypoint } : {}) } },
  });
  mesh.writeConfig('10-gamma.yaml', [
    ambient(NS, 'waypoint'),
    ambient(CONSUMER_NS),
    ...SERVICES.map((x) => ({
      apiVersion: 'v1', kind: 'Service', metadata: { name: x.name, namespace: x.namespace },
      spec: { clusterIP: x.vip, selector: x.selector, ports: PORTS },
    })),
  ]);
  const echo = (name: string, ns: string, version: string) => ['cli/local/apps/echo.ts', '--port', '8080', '--grpc-port', '7070', '--name', name, '--namespace', ns, '--version', version, '--log-requests'];
  const pods: Array<{ node: string; namespace: string; name: string; version: string; app?: string }> = [
    { node: 'node1', namespace: NS, name: 'echo-v1', version: 'v1' },
    { node: 'node2', namespace: NS, name: 'echo-v2', version: 'v2' },
    { node: 'node1', namespace: CONSUMER_NS, name: 'echo-v1', version: 'v1' },
    { node: 'node2', namespace: NS, name: 'backend-v3', version: 'v3', app: 'backend-v3' },
  ];
  for (const p of pods) {
    mesh.addWorkload({ node: p.node, namespace: p.namespace, name: p.name, serviceAccount: 'echo', labels: { app: p.app ?? 'echo', version: p.version }, command: echo(p.name, p.namespace, p.version) });
  }
  mesh.startController();
  await mesh.waitControllerReady();
  mesh.startAgents();
  mesh.startWaypoint('node2', NS);
  await mesh.waitReady(60_000);
  await mesh.waitWaypointReady(NS);
  const keys = pods.map((p) => `${p.namespace}/${p.name}`);
  await mesh.waitWorkloadsEnrolled(keys);

  // The hosts table plays cluster DNS: short names in gamma, `<svc>.<ns>` and the FQDN anywhere.
  const hosts: Record<string, string> = {};
  for (const x of SERVICES) {
    if (x.namespace === NS) hosts[x.name] = x.vip;
    hosts[`${x.name}.${x.namespace}`] = x.vip;
    hosts[`${x.name}.${x.namespace}.svc.cluster.local`] = x.vip;
  }
  const clients = new Map<string, PodClient>();
  for (const key of keys.filter((k) => k.includes('/echo-'))) {
    const w = mesh.workloads.get(key)!;
    const child = mesh.net.spawn(w.pod, process.execPath, [join(REPO_ROOT, 'test/conformance/fixtures/client.ts'), '--hosts', JSON.stringify(hosts)], { stdio: ['pipe', 'pipe', 'pipe'] });
    clients.set(key, new PodClient(key, child));
  }
  for (const c of clients.values()) await c.whenReady();

  const waypoint = mesh.workloads.get(`${NS}/waypoint-0`)!;
  const admin = <T>(path: string) => getJsonInNetns<T>(waypoint.pod.netnsPath, `http://127.0.0.1:15000${path}`);
  const cm: ConformanceMesh = {
    mesh,
    clients,
    client(pod) {
      const c = clients.get(pod);
      if (!c) throw new Error(`no client in ${pod}`);
      return c;
    },
    requestsSeen(key) {
      const [ns, name] = key.split('/');
      return mesh.logEntries(`pod-${ns}-${name}.log`, 'request') as unknown as Array<{ method: string; path: string; headers: Record<string, string | string[]> }>;
    },
    podIp(key) {
      return mesh.workloads.get(key)!.pod.ip;
    },
    waypointLog(lines = 20) {
      return mesh.logTail(`pod-${NS}-waypoint-0.log`, lines);
    },
    async apply(test, objects) {
      mesh.writeConfig('50-test.yaml', objects.length > 0 ? objects.map((o) => stringify(o)).join('---\n') : '');
      const want = new Set(objects.filter((o) => /Route$/.test((o as { kind: string }).kind)).map((o) => {
        const { kind, metadata } = o as { kind: string; metadata: { name: string; namespace: string } };
        return `${kind}/${metadata.namespace}/${metadata.name}`;
      }));
      let last = '';
      let refusal: string | undefined;
      // Route names are unique per test: a rejection that names one of them is this test's.
      const names = [...want].map((k) => k.split('/').slice(1).join('/'));
      await until(`${test}: the waypoint holds exactly this test's routes`, async () => {
        const dump = await admin<{ config: { routes: Array<{ kind: string; namespace: string; name: string }> } }>('/config_dump');
        const have = new Set(dump.config.routes.map((r) => `${r.kind}/${r.namespace}/${r.name}`));
        last = [...have].sort().join(', ') || '(none)';
        if (have.size === want.size && [...want].every((k) => have.has(k))) return true;
        // The waypoint NACKs a config it cannot apply and logs why (its /rejection holds only
        // failures at apply time, not at validation).
        const rejected = mesh.logEntries(`pod-${NS}-waypoint-0.log`, 'config rejected').map((e) => String(e['error'] ?? ''));
        refusal = rejected.find((m) => names.some((n) => m.includes(`${n}:`)));
        // The controller refuses an object it cannot accept (its status says why; it never reaches a waypoint).
        // (`object` is `Kind/name` or `Kind/namespace/name`.)
        const refused = mesh.logEntries('controller.log', 'invalid object refused; its previous version stays in force').find((e) => [...want].some((k) => {
          const [kind, ns, name] = k.split('/');
          return e['object'] === k || (e['object'] === `${kind}/${name}` && String(e['issues']).includes(`${ns}/${name}`));
        }));
        if (refused) refusal ??= `the controller refused ${String(refused['object'])}: ${JSON.stringify(refused['issues'])}`;
        return refusal !== undefined;
      }, 15_000, {
        explain: () => `routes held: ${last}; want: ${[...want].sort().join(', ') || '(none)'}\ncontroller:\n${mesh.logTail('controller.log', 5)}`,
      });
      if (refusal !== undefined) throw new ConfigRejected(`${test}: this test's routes never took effect: ${refusal}`);
    },
  };
  return cm;
}

/** Sends each case's request `times` times; returns one line per response that did not conform. */
export async function runCases(client: PodClient, cases: Array<{ name: string; request: ClientRequest; expect: Expected }>, times = 3): Promise<string[]> {
  const failures = await Promise.all(cases.map(async (c) => {
    const responses = await client.send(c.request, times);
    const bad = responses.map((r) => mismatches(c.request, r, c.expect)).filter((m) => m.length > 0);
    return bad.length === 0 ? undefined : `${c.name} [${describe(c.request)}]: ${bad[0]!.join('; ')}${bad.length > 1 ? ` (${bad.length}/${responses.length} responses)` : ''}`;
  }));
  return failures.filter((f): f is string => f !== undefined);
}

export function describe(r: ClientRequest): string {
  const h = Object.entries(r.headers ?? {}).map(([k, v]) => `${k}: ${v}`).join(', ');
  if (r.protocol === 'grpc') return `gRPC ${r.host} ${r.grpcMethod ?? 'Echo'}${h ? ` {${h}}` : ''}`;
  return `${r.method ?? 'GET'} http://${r.host}${r.path ?? '/'}${h ? ` {${h}}` : ''}`;
}
