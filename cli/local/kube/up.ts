// `weftctl up --kube` / `down`: the kube lab on this machine, with Weft installed the way a user
// installs it on a cluster. A supervisor process (supervisor.ts, detached: it outlives the command)
// holds the lab's stand-ins for the API server, the controllers and a kubelet on each of two nodes;
// this module then applies `weftctl install`'s rendered manifests with the real kubectl, waits for
// the controller Deployment and the agent DaemonSet, deploys the same sample applications as
// `weftctl up` (namespace demo: a load generator on node1 calling echo on node2 and near on node1;
// namespace shop: reviews v1 on node1 and v2 on node2 behind a Waypoint) as Deployments and
// Services, and shows who answered the client. `downKube` stops the supervisor and removes what is
// left (processes, network namespaces, cgroups, BPF pins).
// Differences from `weftctl up`: the install ships no Gateway API CRDs, so the shop waypoint
// balances reviews over v1 and v2 without the 90/10 canary HTTPRoute.
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO_ROOT } from '../mesh.ts';
import { LocalNetwork, destroyLocalNetwork } from '../network.ts';
import { LocalMeshError, inPodHttp, isRunning, preflight, type LocalState } from '../up.ts';
import { renderInstall, toYaml } from '../../install/render.ts';
import { KUBE_LAB_DIR, KUBE_STATE_FILE, type KubeLabState } from './supervisor.ts';
import { kubectl } from './kubectl.ts';
import { installClusters, linkClusters } from './multicluster.ts';
import { destroyExchange, exchangeNetnsOf } from '../exchange.ts';

export { kubectl };

/** The Weft image the install names; the lab kubelet runs any `…/weft` image from this checkout. */
export const KUBE_LAB_IMAGE = 'ghcr.io/weft-mesh/weft:lab';
/** Written by `up` as soon as the supervisor is spawned: `down` finds it even before the lab is ready. */
export const KUBE_PID_FILE = 'kube.pid';
const SUPERVISOR = join(REPO_ROOT, 'cli/local/kube/supervisor.ts');
const NODES = ['node1', 'node2'];

export interface KubeUpOptions {
  /** Several clusters (2 to 9), one node each, on their own networks (multicluster.ts). */
  clusters?: number;
  prefix: string;
  stateDir: string;
  say: (line: string) => void;
  /** For each wait (the lab, the install, the apps); default 180 s. */
  timeoutMs?: number;
}

/** The services `up --kube` shows traffic to, from demo/client. */
const SHOWN: Array<{ namespace: string; name: string }> = [
  { namespace: 'demo', name: 'echo' },
  { namespace: 'demo', name: 'near' },
  { namespace: 'shop', name: 'reviews' },
];

function deployment(o: { namespace: string; name: string; node: string; labels: Record<string, string>; image: string; args: string[]; serviceAccount?: string; probe?: boolean; env?: Record<string, string> }): object {
  const env = [
    { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
    { name: 'POD_NAMESPACE', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
    ...Object.entries(o.env ?? {}).map(([name, value]) => ({ name, value })),
  ];
  return {
    apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: o.name, namespace: o.namespace, labels: o.labels },
    spec: {
      replicas: 1,
      selector: { matchLabels: o.labels },
      template: {
        metadata: { labels: o.labels },
        spec: {
          ...(o.serviceAccount ? { serviceAccountName: o.serviceAccount } : {}),
          nodeSelector: { 'kubernetes.io/hostname': o.node },
          containers: [{
            name: o.labels['app'], image: o.image, args: o.args, env,
            ...(o.probe ? { ports: [{ name: 'http', containerPort: 8080 }], readinessProbe: { httpGet: { path: '/', port: 'http' }, periodSeconds: 1 } } : {}),
          }],
        },
      },
    },
  };
}

const service = (namespace: string, name: string, selector: Record<string, string>): object => ({
  apiVersion: 'v1', kind: 'Service', metadata: { name, namespace }, spec: { selector, ports: [{ name: 'http', port: 80, targetPort: 'http' }] },
});

/** The sample applications of `weftctl up`, as Kubernetes objects. */
export function sampleApps(): object[] {
  const echo = (version = 'v1') => ['--port', '8080', '--version', version];
  const url = (ns: string, svc: string) => `http://${svc}.${ns}.svc.cluster.local/`;
  return [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'shop', labels: { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'waypoint' } } },
    { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'default', namespace: 'demo' } },
    { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'default', namespace: 'shop' } },
    { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'reviews', namespace: 'shop' } },
    { apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'waypoint', namespace: 'shop' }, spec: {} },
    deployment({ namespace: 'demo', name: 'echo', node: 'node2', labels: { app: 'echo' }, image: 'lab/echo', args: echo(), probe: true }),
    deployment({ namespace: 'demo', name: 'near', node: 'node1', labels: { app: 'near' }, image: 'lab/echo', args: echo(), probe: true }),
    deployment({ namespace: 'shop', name: 'reviews-v1', node: 'node1', labels: { app: 'reviews', version: 'v1' }, image: 'lab/echo', args: echo('v1'), serviceAccount: 'reviews', probe: true }),
    deployment({ namespace: 'shop', name: 'reviews-v2', node: 'node2', labels: { app: 'reviews', version: 'v2' }, image: 'lab/echo', args: echo('v2'), serviceAccount: 'reviews', probe: true }),
    service('demo', 'echo', { app: 'echo' }),
    service('demo', 'near', { app: 'near' }),
    service('shop', 'reviews', { app: 'reviews' }),
    {
      apiVersion: 'v1', kind: 'Pod', metadata: { name: 'client', namespace: 'demo', labels: { app: 'client' } },
      spec: { nodeName: 'node1', containers: [{ name: 'loadgen', image: 'lab/loadgen', args: ['--rate', '4', url('demo', 'echo'), url('demo', 'near'), url('shop', 'reviews')] }] },
    },
  ];
}

/**
 * `up --kube --clusters n`: demo/echo in every cluster (answering with its cluster's name) and, in
 * cluster1, demo/client; namespace sameness makes the echoes one service.
 */
export function clusterApps(cluster: string, withClient: boolean): object[] {
  return [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'default', namespace: 'demo' } },
    deployment({ namespace: 'demo', name: 'echo', node: 'node1', labels: { app: 'echo' }, image: 'lab/echo', args: ['--port', '8080'], probe: true, env: { WEFT_CLUSTER: cluster } }),
    service('demo', 'echo', { app: 'echo' }),
    ...(withClient ? [{ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'client', namespace: 'demo', labels: { app: 'client' } }, spec: { nodeName: 'node1', containers: [{ name: 'sleep', image: 'lab/sleep' }] } }] : []),
  ];
}

export function readKubeState(stateDir: string): KubeLabState | undefined {
  const f = join(stateDir, KUBE_STATE_FILE);
  return existsSync(f) ? (JSON.parse(readFileSync(f, 'utf8')) as KubeLabState) : undefined;
}

/** Whether a kube lab was started in this state folder (its supervisor's pid file is there). */
export function isKubeLab(stateDir: string): boolean {
  return existsSync(join(stateDir, KUBE_PID_FILE));
}

/** The supervisor's pid if that process still runs (and is the supervisor, not a reused pid). */
function supervisorPid(stateDir: string): number | undefined {
  const f = join(stateDir, KUBE_PID_FILE);
  if (!existsSync(f)) return undefined;
  const pid = Number(readFileSync(f, 'utf8').trim());
  try {
    return Number.isInteger(pid) && pid > 0 && readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(SUPERVISOR) ? pid : undefined;
  } catch {
    return undefined;
  }
}

function logTail(file: string, lines = 20): string {
  return existsSync(file) ? readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n') : '(no log)';
}

interface KubeItem { kind?: string; metadata: { name: string; namespace?: string; ownerReferences?: unknown[] }; spec?: Record<string, unknown>; status?: Record<string, unknown> }
const list = async (st: { kubeconfig: string }, what: string, ns?: string): Promise<KubeItem[]> =>
  (JSON.parse(await kubectl(st, ['get', what, ...(ns ? ['-n', ns] : ['-A']), '-o', 'json'])) as { items: KubeItem[] }).items;

/** Polls `check` until it returns `undefined` (done) or the deadline; its last answer (what it still waits for) explains a timeout. */
async function waitFor(what: string, timeoutMs: number, check: () => Promise<string | undefined>, fatal: () => Error | undefined = () => undefined): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    const f = fatal();
    if (f) throw f;
    try {
      const r = await check();
      if (r === undefined) return;
      last = r;
    } catch (e) {
      last = (e as Error).message;
    }
    if (Date.now() > deadline) throw new LocalMeshError('WEFT_KUBE_LAB_TIMEOUT', `${what}: not after ${Math.round(timeoutMs / 1000)} s (${last})`);
    await sleep(1_000);
  }
}

/** What is not ready yet among the Deployments, DaemonSets and Pods of these namespaces (one kubectl call). */
async function notReady(st: { kubeconfig: string }, namespaces: string[]): Promise<string[]> {
  const items = (await list(st, 'deployments,daemonsets,pods')).filter((o) => namespaces.includes(o.metadata.namespace ?? ''));
  const waiting: string[] = [];
  const num = (o: KubeItem, f: string) => (o.status?.[f] as number | undefined) ?? 0;
  for (const o of items) {
    const name = `${o.metadata.namespace}/${o.metadata.name}`;
    if (o.kind === 'Deployment') {
      const want = (o.spec?.['replicas'] as number | undefined) ?? 1;
      if (num(o, 'readyReplicas') < want) waiting.push(`deployment ${name} ${num(o, 'readyReplicas')}/${want} ready`);
    } else if (o.kind === 'DaemonSet') {
      const want = num(o, 'desiredNumberScheduled');
      if (want === 0 || num(o, 'numberReady') < want) waiting.push(`daemonset ${name} ${num(o, 'numberReady')}/${want} ready`);
    } else if (o.kind === 'Pod' && !(o.metadata.ownerReferences ?? []).length && o.status?.['phase'] !== 'Running') {
      waiting.push(`pod ${name} ${(o.status?.['phase'] as string | undefined) ?? 'Pending'}`);
    }
  }
  return waiting;
}

/** Says each milestone once as it is reached; returns what is still waited for (undefined: nothing). */
function milestones(say: (l: string) => void): (waiting: string[], namespaces: string[]) => string | undefined {
  const shown = new Set<string>();
  const all: Array<[string, string, RegExp]> = [
    ['the controller is ready (Deployment weft-system/weft-controller)', 'weft-system', /weft-system\/weft-controller/],
    ['the agents are ready on both nodes (DaemonSet weft-system/weft-agent)', 'weft-system', /weft-system\/weft-agent/],
    ['the sample applications are ready', 'demo', / (demo|shop)\/(?!waypoint)/],
  ];
  return (waiting, namespaces) => {
    for (const [what, ns, re] of all) {
      if (!shown.has(what) && namespaces.includes(ns) && !waiting.some((w) => re.test(w))) {
        shown.add(what);
        say(`  ${what}`);
      }
    }
    return waiting.length ? waiting.join(', ') : undefined;
  };
}

/**
 * The running lab seen as a local mesh's state, for showTraffic and inPodHttp: nodes from the
 * supervisor, pods and Service addresses from the API (pod sandboxes are the lab network's).
 */
export async function kubeTrafficState(st: KubeLabState, shown = SHOWN): Promise<LocalState> {
  const pods = (await list(st, 'pods')).filter((p) => p.status?.['podIP'] && p.spec?.['nodeName'] && !p.spec?.['hostNetwork'])
    .map((p) => ({ namespace: p.metadata.namespace!, name: p.metadata.name, node: p.spec!['nodeName'] as string, ip: p.status!['podIP'] as string }));
  const net = LocalNetwork.adopt(st.prefix, st.nodes, pods);
  const services = await list(st, 'services');
  return {
    prefix: st.prefix, stateDir: st.stateDir, startedAt: st.startedAt, nodes: st.nodes,
    pods: pods.map((p) => ({ ...p, netns: net.pod(p.namespace, p.name).netns })),
    services: shown.map((s) => {
      const svc = services.find((x) => x.metadata.namespace === s.namespace && x.metadata.name === s.name);
      return { ...s, vip: (svc?.spec?.['clusterIP'] as string | undefined) ?? '', port: 80 };
    }),
  };
}

export async function upKube(o: KubeUpOptions): Promise<{ st: KubeLabState; traffic: LocalState }> {
  preflight();
  if (spawnSync('kubectl', ['version', '--client'], { stdio: 'ignore' }).status !== 0) {
    throw new LocalMeshError('WEFT_NO_KUBECTL', 'weftctl up --kube drives the lab with kubectl, which is not installed: apt-get install kubernetes-client (or any kubectl)');
  }
  const timeoutMs = o.timeoutMs ?? 180_000;
  const running = readKubeState(o.stateDir);
  if (running && supervisorPid(o.stateDir) !== undefined) {
    o.say(`the kube lab "${o.prefix}" is already running (since ${running.startedAt}); \`weftctl down\` removes it`);
    return { st: running, traffic: await kubeTrafficState(running) };
  }
  if (isKubeLab(o.stateDir) || isRunning(o.prefix)) {
    o.say(`leftovers of a mesh "${o.prefix}" found; removing them first`);
    await downKube(o.prefix, o.stateDir, () => {});
  }
  rmSync(o.stateDir, { recursive: true, force: true });
  mkdirSync(o.stateDir, { recursive: true });
  o.say(`starting the kube lab: ${o.clusters ? `${o.clusters} clusters, each with its API server, controllers and a kubelet on node1, on networks that meet only at their edges` : `API server, controllers and a kubelet on ${NODES.join(' and ')}`} (stand-ins; supervisor log ${join(o.stateDir, 'supervisor.log')})`);
  const logFile = join(o.stateDir, 'supervisor.log');
  const fd = openSync(logFile, 'a');
  const child = spawn(process.execPath, [SUPERVISOR, '--prefix', o.prefix, '--state-dir', o.stateDir, ...(o.clusters ? ['--nodes', 'node1', '--clusters', String(o.clusters)] : ['--nodes', NODES.join(',')])], { detached: true, stdio: ['ignore', fd, fd] });
  closeSync(fd);
  writeFileSync(join(o.stateDir, KUBE_PID_FILE), `${child.pid}\n`);
  let exited: string | undefined;
  child.once('exit', (code, signal) => (exited = `${code ?? signal}`));
  child.unref();
  try {
    // Every wait ends at once when the supervisor (the lab itself) exits.
    const gone = () => (exited === undefined ? undefined : new LocalMeshError('WEFT_KUBE_LAB_FAILED', `the kube lab supervisor exited (${exited}):\n${logTail(logFile)}`));
    let st: KubeLabState | undefined;
    await waitFor('the kube lab starts', timeoutMs, async () => {
      st = readKubeState(o.stateDir);
      return st ? undefined : 'the supervisor has not written kube.json';
    }, gone);
    const lab = st!;
    if (lab.clusters) return await upClusters(o, lab, timeoutMs, gone);
    o.say('installing Weft with kubectl apply --server-side (the manifests of `weftctl install`)');
    const install = join(o.stateDir, 'install.yaml');
    writeFileSync(install, toYaml(renderInstall({ image: KUBE_LAB_IMAGE, trustDomain: 'cluster.local', debugEndpoints: true, warn: () => {} })));
    await kubectl(lab, ['apply', '--server-side', '-f', install]);
    const progress = milestones(o.say);
    await waitFor('the controller and the agents are ready', timeoutMs, async () => progress(await notReady(lab, ['weft-system']), ['weft-system']), gone);
    // After the agents, as a user would: each pod is then enrolled by the agent's CNI plugin before it starts.
    o.say('deploying the sample applications with kubectl (namespaces demo and shop, a Waypoint for shop)');
    const apps = join(o.stateDir, 'apps.yaml');
    writeFileSync(apps, toYaml(sampleApps()));
    await kubectl(lab, ['apply', '--server-side', '-f', apps]);
    await waitFor('the sample applications and the shop waypoint are ready', timeoutMs, async () => {
      const waiting = progress(await notReady(lab, ['demo', 'shop']), ['demo', 'shop']);
      if (waiting) return waiting;
      const shop = await list(lab, 'deployments', 'shop');
      if (!shop.some((d) => d.metadata.name === 'waypoint')) return 'the controller has not created the shop waypoint Deployment yet';
      o.say('  the shop waypoint is ready (Deployment shop/waypoint, made by the controller from the Waypoint)');
      return undefined;
    }, gone);
    // The controller must have pushed the new pods to the agents before the first request.
    let traffic: LocalState | undefined;
    await waitFor('demo/client reaches every sample service through the mesh', timeoutMs, async () => {
      const t = (traffic = await kubeTrafficState(lab));
      const client = t.pods.find((p) => p.namespace === 'demo' && p.name === 'client');
      if (!client) return 'no demo/client pod';
      for (const s of t.services) {
        try {
          await inPodHttp(t, client.netns, `http://${s.vip}:${s.port}/`);
        } catch (e) {
          return `${s.namespace}/${s.name}: ${(e as Error).message}`;
        }
      }
      return undefined;
    }, gone);
    return { st: lab, traffic: traffic! };
  } catch (err) {
    o.say(`start failed; logs in ${o.stateDir} (supervisor.log, ${KUBE_LAB_DIR}/nodes/*/host/logs); removing the lab`);
    await downKube(o.prefix, o.stateDir, () => {});
    throw err;
  }
}

/**
 * The rest of `up --kube --clusters`: Weft installed in every cluster (multicluster.ts), the
 * clusters linked by remote secrets, the demo apps, until cluster1's client is answered by every
 * cluster. The traffic state returned is cluster1's.
 */
async function upClusters(o: KubeUpOptions, lab: KubeLabState, timeoutMs: number, gone: () => Error | undefined): Promise<{ st: KubeLabState; traffic: LocalState }> {
  const cs = lab.clusters!;
  o.say(`installing Weft in ${cs.length} clusters with kubectl: a cacerts Secret each (one root, an intermediate per cluster), then \`weftctl install --cluster-id cluster<i> --network network<i> --eastwest --ca-secret cacerts\``);
  await installClusters(cs, { image: KUBE_LAB_IMAGE, debugEndpoints: true });
  o.say('linking the clusters: `weftctl create-remote-secret` of each (its API server at its edge, :6443), applied in the others');
  await linkClusters(cs);
  for (const c of cs) {
    await waitFor(`${c.name}: the controller and the agent are ready`, timeoutMs, async () => {
      const w = (await notReady(c, ['weft-system'])).filter((x) => !x.includes('weft-eastwest'));
      return w.length ? w.join(', ') : undefined;
    }, gone);
  }
  o.say('deploying demo/echo in every cluster and demo/client in cluster1 with kubectl');
  for (const [i, c] of cs.entries()) {
    const file = join(c.dir, 'install', 'apps.yaml');
    writeFileSync(file, toYaml(clusterApps(c.name, i === 0)));
    await kubectl(c, ['apply', '--server-side', '-f', file]);
  }
  for (const c of cs) {
    await waitFor(`${c.name}: echo and the east-west gateway are ready`, timeoutMs, async () => {
      const w = await notReady(c, ['weft-system', 'demo']);
      return w.length ? w.join(', ') : undefined;
    }, gone);
  }
  const c1 = cs[0]!;
  const c1State: KubeLabState = { ...lab, prefix: c1.prefix, nodes: c1.nodes, kubeconfig: c1.kubeconfig };
  let traffic: LocalState | undefined;
  await waitFor('demo/client in cluster1 is answered by every cluster', timeoutMs, async () => {
    const t = (traffic = await kubeTrafficState(c1State, [{ namespace: 'demo', name: 'echo' }]));
    const seen = await clusterAnswers(t, 10);
    const missing = cs.filter((c) => !seen.has(c.name)).map((c) => c.name);
    return missing.length ? `no answer from ${missing.join(', ')} yet (${[...seen.keys()].join(', ')})` : undefined;
  }, gone);
  return { st: lab, traffic: traffic! };
}

/** `requests` GETs from demo/client to demo/echo: how many each answering pod and cluster (or error) gave. */
export async function clusterAnswers(t: LocalState, requests = 20): Promise<Map<string, Map<string, number>>> {
  const client = t.pods.find((p) => p.namespace === 'demo' && p.name === 'client')!;
  const echo = t.services.find((s) => s.namespace === 'demo' && s.name === 'echo')!;
  const seen = new Map<string, Map<string, number>>();
  for (let i = 0; i < requests; i++) {
    let cluster: string;
    let who: string;
    try {
      const b = JSON.parse(await inPodHttp(t, client.netns, `http://${echo.vip}:${echo.port}/`)) as { pod: string; cluster?: string };
      cluster = b.cluster ?? '?';
      who = b.pod;
    } catch (e) {
      cluster = 'error';
      who = (e as Error).message;
    }
    const m = seen.get(cluster) ?? new Map<string, number>();
    m.set(who, (m.get(who) ?? 0) + 1);
    seen.set(cluster, m);
  }
  return seen;
}

/** Stops the supervisor (it removes the lab), then removes whatever is left of the prefix. */
export async function downKube(prefix: string, stateDir: string, say: (l: string) => void): Promise<void> {
  const pid = supervisorPid(stateDir);
  if (pid !== undefined) {
    process.kill(pid, 'SIGTERM');
    const deadline = Date.now() + 60_000;
    while (supervisorPid(stateDir) !== undefined && Date.now() < deadline) await sleep(100);
    if (supervisorPid(stateDir) !== undefined) process.kill(pid, 'SIGKILL');
  }
  // Whatever the supervisor could not remove (it was killed, or crashed): processes, netns, cgroups, pins.
  await destroyLocalNetwork(prefix);
  // up --kube --clusters: each cluster's lab, and the exchange.
  for (let i = 1; i <= 9; i++) if (isRunning(`${prefix}c${i}`)) await destroyLocalNetwork(`${prefix}c${i}`);
  destroyExchange(exchangeNetnsOf(prefix));
  for (const f of [KUBE_STATE_FILE, KUBE_PID_FILE, KUBE_LAB_DIR]) rmSync(join(stateDir, f), { recursive: true, force: true });
  say(pid !== undefined ? `kube lab "${prefix}" removed (API server, pods, namespaces, cgroups, BPF pins, processes)` : `no kube lab "${prefix}" was running; leftovers (if any) removed`);
}
