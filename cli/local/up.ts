// `weftctl up` / `down` / `status`: the local mesh with sample applications, on this machine.
//
// Two nodes; namespace `demo` (ambient: a load generator on node1 calling `echo` on node2 and
// `near` on node1) and namespace `shop` (ambient: `reviews` v1 on node1 and v2 on node2). Every
// part is a real process: the controller reads the config directory, one agent per node steers
// the pods' connections with eBPF into HBONE tunnels. Processes outlive the command; `down`
// removes namespaces, cgroups, pins and processes.
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { LocalMesh, REPO_ROOT } from './mesh.ts';
import { destroyLocalNetwork } from './network.ts';
import { listNetns } from '../../lib/sys/netns.ts';
import { collectOutput } from '../../lib/sys/exec.ts';
import { components } from '../components.ts';
import type { Target } from '../commands/target.ts';

export const DEFAULT_PREFIX = 'weft';
export const DEFAULT_STATE_DIR = '/var/lib/weft/local';

export interface UpOptions {
  prefix: string;
  stateDir: string;
  /** Progress lines go here. */
  say: (line: string) => void;
  /** IPv6 addresses too (not meshed). */
  dualStack?: boolean;
  /** Agents splice same-node connections in the kernel (agent --splice; default false). */
  splice?: boolean;
}

export interface LocalState {
  prefix: string;
  stateDir: string;
  startedAt: string;
  nodes: Array<{ name: string; ip: string; netns: string; pinRoot: string; cgroup: string }>;
  pods: Array<{ namespace: string; name: string; node: string; ip: string; netns: string }>;
  services: Array<{ namespace: string; name: string; vip: string; port: number }>;
}

export class LocalMeshError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'LocalMeshError';
    this.code = code;
  }
}

const stateFile = (stateDir: string) => join(stateDir, 'state.json');

export function readState(stateDir: string): LocalState | undefined {
  const f = stateFile(stateDir);
  return existsSync(f) ? (JSON.parse(readFileSync(f, 'utf8')) as LocalState) : undefined;
}

/** Rewrites state.json (weftctl waypoint apply/delete add and remove pods). */
export function writeState(st: LocalState): void {
  const tmp = `${stateFile(st.stateDir)}.tmp`;
  writeFileSync(tmp, JSON.stringify(st, null, 2));
  renameSync(tmp, stateFile(st.stateDir));
}

export function isRunning(prefix: string): boolean {
  return listNetns().includes(`${prefix}-wire`);
}

/** Root, and the BPF objects and native addon built. */
export function preflight(): void {
  if (process.getuid?.() !== 0) throw new LocalMeshError('WEFT_NOT_ROOT', 'weftctl up needs root (network namespaces, cgroups and eBPF): run it with sudo');
  for (const f of ['build/bpf/redirect.bpf.o', 'build/bpf/inbound.bpf.o', 'agent/native/build/Release/weft_bpf.node']) {
    if (!existsSync(join(REPO_ROOT, f))) throw new LocalMeshError('WEFT_NOT_BUILT', `${f} is missing: run \`make build\` first (or \`make up\`, which builds)`);
  }
}

const SERVICES: Array<{ namespace: string; name: string; vip: string; port: number; selector: Record<string, string>; show?: boolean }> = [
  { namespace: 'demo', name: 'echo', vip: '10.96.0.10', port: 80, selector: { app: 'echo' }, show: true },
  { namespace: 'demo', name: 'near', vip: '10.96.0.11', port: 80, selector: { app: 'near' }, show: true },
  { namespace: 'shop', name: 'reviews', vip: '10.96.1.10', port: 80, selector: { app: 'reviews' }, show: true },
  { namespace: 'shop', name: 'reviews-v1', vip: '10.96.1.11', port: 80, selector: { app: 'reviews', version: 'v1' } },
  { namespace: 'shop', name: 'reviews-v2', vip: '10.96.1.12', port: 80, selector: { app: 'reviews', version: 'v2' } },
];

/** shop/reviews through the shop waypoint: 90% to v1, 10% to v2 (a canary), testers to v2. */
const CANARY_ROUTE = {
  apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'reviews-canary', namespace: 'shop' },
  spec: {
    parentRefs: [{ group: '', kind: 'Service', name: 'reviews', port: 80 }],
    rules: [
      { matches: [{ headers: [{ name: 'x-user', value: 'tester' }] }], backendRefs: [{ name: 'reviews-v2', port: 80 }] },
      { backendRefs: [{ name: 'reviews-v1', port: 80, weight: 90 }, { name: 'reviews-v2', port: 80, weight: 10 }] },
    ],
  },
};

export async function up(o: UpOptions): Promise<LocalState> {
  preflight();
  if (isRunning(o.prefix)) {
    const st = readState(o.stateDir);
    if (st) {
      o.say(`the local mesh "${o.prefix}" is already running (since ${st.startedAt}); \`weftctl down\` removes it`);
      return st;
    }
    o.say(`leftovers of a local mesh "${o.prefix}" found without state; removing them first`);
    await destroyLocalNetwork(o.prefix);
  }
  rmSync(o.stateDir, { recursive: true, force: true });
  o.say('creating nodes node1, node2 (network namespaces, veths, cgroups)');
  const mesh = await LocalMesh.create({ prefix: o.prefix, stateDir: o.stateDir, nodes: ['node1', 'node2'], detached: true, dualStack: o.dualStack ?? false, ...(o.splice ? { agentArgs: ['--splice'] } : {}) });
  try {
    mesh.writeConfig('10-namespaces.yaml', [
      { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
      { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'shop', labels: { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'waypoint' } } },
    ]);
    mesh.writeConfig('20-services.yaml', SERVICES.map((s) => ({
      apiVersion: 'v1', kind: 'Service', metadata: { name: s.name, namespace: s.namespace },
      spec: { clusterIP: s.vip, selector: s.selector, ports: [{ name: 'http', port: s.port, targetPort: 8080 }] },
    })));
    mesh.writeConfig('30-routes.yaml', [CANARY_ROUTE]);
    o.say('starting the controller (config directory ' + mesh.configDir + ')');
    mesh.startController();
    await mesh.waitControllerReady();
    o.say('starting sample applications');
    const echo = (name: string, version = 'v1') => ['cli/local/apps/echo.ts', '--port', '8080', '--name', name, '--version', version];
    // probePort: each node's kubelet probes them, the one exemption from inbound enforcement.
    mesh.addWorkload({ node: 'node2', namespace: 'demo', name: 'echo', labels: { app: 'echo' }, command: echo('echo'), probePort: 8080 });
    mesh.addWorkload({ node: 'node1', namespace: 'demo', name: 'near', labels: { app: 'near' }, command: echo('near'), probePort: 8080 });
    mesh.addWorkload({ node: 'node1', namespace: 'shop', name: 'reviews-v1', serviceAccount: 'reviews', labels: { app: 'reviews', version: 'v1' }, command: echo('reviews-v1', 'v1'), probePort: 8080 });
    mesh.addWorkload({ node: 'node2', namespace: 'shop', name: 'reviews-v2', serviceAccount: 'reviews', labels: { app: 'reviews', version: 'v2' }, command: echo('reviews-v2', 'v2'), probePort: 8080 });
    o.say('starting one agent per node (loads eBPF, enrols pods, gets certificates)');
    mesh.startAgents();
    await mesh.waitReady(90_000);
    o.say('starting the shop waypoint (L7 routing: reviews 90% v1 / 10% v2)');
    mesh.startWaypoint('node2', 'shop');
    await mesh.waitWaypointReady('shop');
    await mesh.startWorkload({
      node: 'node1', namespace: 'demo', name: 'client', labels: { app: 'client' },
      command: ['cli/local/apps/loadgen.ts', '--rate', '4', 'http://10.96.0.10/', 'http://10.96.0.11/', 'http://10.96.1.10/'],
    });
    const state: LocalState = {
      prefix: o.prefix,
      stateDir: o.stateDir,
      startedAt: new Date().toISOString(),
      nodes: mesh.net.nodes.map((n) => ({ name: n.name, ip: n.ip, netns: n.netns, pinRoot: n.pinRoot, cgroup: n.cgroup })),
      pods: mesh.net.nodes.flatMap((n) => n.pods.map((p) => ({ namespace: p.namespace, name: p.name, node: n.name, ip: p.ip, netns: p.netns }))),
      services: SERVICES.filter((x) => x.show).map(({ namespace, name, vip, port }) => ({ namespace, name, vip, port })),
    };
    writeFileSync(stateFile(o.stateDir), JSON.stringify(state, null, 2));
    return state;
  } catch (err) {
    o.say(`start failed; logs in ${mesh.logDir}`);
    await mesh.destroy();
    throw err;
  }
}

/** The waypoints a Via header names (their pseudonyms `<name>.<namespace>`, waypoint/src/proxy.ts), in order. */
export function viaWaypoints(via: string | undefined): Array<{ name: string; namespace: string }> {
  if (!via) return [];
  return via.split(',').flatMap((hop) => {
    const m = /^\s*\S+\s+([a-z0-9-]+)\.([a-z0-9-]+)\s*$/.exec(hop);
    return m ? [{ name: m[1]!, namespace: m[2]! }] : [];
  });
}

/** Sends a few requests from the client pod and reports who answered (the README's proof). */
export async function showTraffic(st: LocalState, say: (l: string) => void, requests = 20): Promise<boolean> {
  const client = st.pods.find((p) => p.namespace === 'demo' && p.name === 'client');
  if (!client) return false;
  let allOk = true;
  for (const s of st.services) {
    const seen = new Map<string, number>();
    for (let i = 0; i < requests; i++) {
      try {
        const r = await inPodHttp(st, client.netns, `http://${s.vip}:${s.port}/`);
        const body = JSON.parse(r) as { pod: string; peer: string; headers?: Record<string, string> };
        const peer = body.peer.replace(/^::ffff:/, '');
        // A waypoint names itself in Via (`1.1 <name>.<namespace>`); the server sees the client either way.
        const waypoint = viaWaypoints(body.headers?.['via'])[0];
        const key = waypoint ? `${body.pod} (via the ${waypoint.namespace} waypoint ${waypoint.name}, server saw client ${peer})` : `${body.pod} (server saw client ${peer})`;
        seen.set(key, (seen.get(key) ?? 0) + 1);
      } catch (err) {
        allOk = false;
        const key = `error: ${(err as Error).message}`;
        seen.set(key, (seen.get(key) ?? 0) + 1);
      }
    }
    say(`  demo/client → ${s.name}.${s.namespace} (${s.vip}:${s.port}): ${[...seen.entries()].map(([k, n]) => `${n}× ${k}`).join(', ')}`);
  }
  return allOk;
}

/**
 * An HTTP request from inside a pod: run in the pod's cgroup and netns (so eBPF steers it) with
 * curl, exactly as an application there would connect.
 */
export async function inPodHttp(st: LocalState, netns: string, url: string): Promise<string> {
  const { spawn } = await import('node:child_process');
  const pod = st.pods.find((p) => p.netns === netns)!;
  const node = st.nodes.find((n) => n.name === pod.node)!;
  const cgroup = join(node.cgroup, 'pods', `${pod.namespace}_${pod.name}`);
  const child = spawn('sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec nsenter --net="/var/run/netns/$1" curl -sS --max-time 5 "$2"', cgroup, netns, url]);
  const { code, stdout, stderr } = await collectOutput(child);
  if (code !== 0) throw new Error(stderr.trim() || `curl exited ${code}`);
  return stdout;
}

export async function down(prefix: string, stateDir: string, say: (l: string) => void): Promise<void> {
  const running = isRunning(prefix);
  await destroyLocalNetwork(prefix);
  rmSync(stateFile(stateDir), { force: true });
  say(running ? `local mesh "${prefix}" removed (namespaces, cgroups, BPF pins, processes)` : `no local mesh "${prefix}" was running; leftovers (if any) removed`);
}

export interface NodeStatus {
  node: string;
  ready: boolean;
  reason: string;
}

/** Each node agent's readiness, on either transport (cli/components.ts). */
export async function status(t: Target): Promise<NodeStatus[]> {
  const agents = (await components(t)).filter((c) => c.role === 'agent').sort((a, b) => a.name.localeCompare(b.name));
  return Promise.all(agents.map(async (c) => ({ node: c.name, ...(await c.ready()) })));
}

