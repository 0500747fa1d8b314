// THIS IS NOT A KUBELET. In the kube lab it stands in for one node's kubelet and container runtime,
// as far as Weft depends on them (no kubelet or container runtime can run on these machines).
// Where it differs, the real kubelet is right. What it does, per Pod bound to its node:
//   - the sandbox: a network namespace and cgroup made by the local mesh's network
//     (cli/local/network.ts: a veth, a /32 address, routes), or the node's own for hostNetwork
//     pods; then the node's CNI chain as the runtime runs it: the node's first *.conflist, whose
//     first plugin stands for the main network plugin (the sandbox above) and whose chained plugins
//     run from the node's CNI bin folder with prevResult (cli/local/cni.ts), so the agent's chained
//     plugin, once its install-cni init container put it there, enrols the pod before any
//     container starts; ADD is retried while it fails, as a kubelet retries a sandbox;
//   - containers as processes: each in a mount namespace of its own whose root is a tmpfs holding
//     the host's /usr, /etc, /var, /proc, /sys, /dev (so, a "host image"), the pod's volumes at
//     their mountPaths, `/etc/hosts` naming the cluster's Services (the lab's DNS) and the node's
//     host paths where hostPath volumes point (`/sys/fs/bpf` → the node's pin folder,
//     `/sys/fs/cgroup` → the node's cgroup subtree, `/var/run/weft`, `/opt/cni/bin`,
//     `/etc/cni/net.d` → the node's folders); images map to local programs (`LabImage`): the Weft
//     image to the Dockerfile's own entrypoint script with the repository at /opt/weft and this
//     machine's Node at /opt/lab/node/bin (where an image has its Node; never its host path), sample
//     images to cli/local/apps/*; command/args/env with $(VAR) expansion, env from values,
//     fieldRef, configMapKeyRef and secretKeyRef; init containers in order;
//   - volumes as files: configMap, secret, emptyDir, hostPath, downwardAPI, projected
//     (serviceAccountToken with audience and expiry, bound to the pod and node, through the lab API
//     server's TokenRequest; configMap; secret; downwardAPI), and the ServiceAccount token volume at
//     /var/run/secrets/kubernetes.io/serviceaccount unless automountServiceAccountToken is false;
//     configMap and secret volumes follow their objects;
//   - probes: httpGet and tcpSocket from the node's kubelet cgroup (the prober cli/local/apps/
//     kubelet.ts, the one exemption Weft makes into enrolled pods), exec inside the container;
//     readiness sets the Ready condition, liveness restarts the container;
//   - restarts per restartPolicy with a backoff; status written back: phase, podIP, hostIP,
//     conditions (Initialized, ContainersReady, Ready), containerStatuses (ready, restartCount,
//     state, image);
//   - a deleted Pod: SIGTERM, terminationGracePeriodSeconds, SIGKILL, CNI DEL, sandbox removed.
// Lab deviation: liveness failures count only once a container was ready once (or after 2 min),
// since Node programs start many times slower on a loaded 2-core machine than on a node.
// Security contexts: the kubelet's runAsNonRoot check before a container starts (runAsNonRoot with
// no runAsUser and an image whose USER is root or a name is CreateContainerConfigError); otherwise
// not done (every container runs as root).
// Not done: resource limits, image pulls,
// token refresh (tests are shorter than a token's life), ephemeral containers, pod lifecycle hooks.
import { existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import type { FakeApiServer } from './fake-apiserver.ts';
import { API_SERVER_AUDIENCE } from './fake-apiserver.ts';
import type { LocalNetwork, LocalNode } from '../network.ts';
import { runCniPlugin, type CniRun } from '../cni.ts';
import { REPO_ROOT } from '../mesh.ts';
import { removeCgroupTree } from '../../../lib/sys/cgroup.ts';

type Obj = ReturnType<FakeApiServer['apply']>;

/** What the lab runs for an image: the image's ENTRYPOINT, CMD, WORKDIR and ENV. */
export interface LabImage {
  entrypoint: string[];
  cmd?: string[];
  workdir: string;
  env: Record<string, string>;
  /** Files the image carries that the host does not: container path → host file. */
  files?: Record<string, string>;
  /** The image's USER (a name or a uid); none: root. */
  user?: string;
}

/** The runtime stage's USER in the repository's Dockerfile (the last one), as the image has it. */
export function weftImageUser(dockerfile = join(REPO_ROOT, 'Dockerfile')): string | undefined {
  return [...readFileSync(dockerfile, 'utf8').matchAll(/^USER\s+(\S+)/gm)].at(-1)?.[1];
}

/** The security context fields the kubelet's runAsNonRoot check reads. */
export interface RunAsSecurityContext { runAsNonRoot?: boolean; runAsUser?: number }

/**
 * Why a real kubelet would refuse to start `container` (CreateContainerConfigError), by its
 * runAsNonRoot check (kubernetes pkg/kubelet/kuberuntime/security_context_others.go
 * verifyRunAsNonRoot): the container's fields win over the pod's; with runAsNonRoot and no
 * runAsUser the image's USER must be a numeric uid other than 0, since a user name cannot be
 * verified. Undefined when it would start.
 */
export function runAsNonRootProblem(pod: { securityContext?: RunAsSecurityContext }, container: { name: string; securityContext?: RunAsSecurityContext }, imageUser: string | undefined): string | undefined {
  const nonRoot = container.securityContext?.runAsNonRoot ?? pod.securityContext?.runAsNonRoot;
  if (!nonRoot) return undefined;
  const uid = container.securityContext?.runAsUser ?? pod.securityContext?.runAsUser;
  if (uid !== undefined) return uid === 0 ? `container's runAsUser breaks non-root policy (container: ${container.name})` : undefined;
  const user = (imageUser ?? '').split(':')[0]!;
  if (user === '' || user === '0' || user === 'root') return `container has runAsNonRoot and image will run as root (container: ${container.name})`;
  if (!/^\d+$/.test(user)) return `container has runAsNonRoot and image has non-numeric user (${user}), cannot verify user is non-root (container: ${container.name})`;
  return undefined;
}

/** The repository's Dockerfile entrypoint script (`/usr/local/bin/weft`), as the image has it. */
export function weftEntrypointScript(dockerfile = join(REPO_ROOT, 'Dockerfile')): string {
  const m = /<<'EOF_WEFT' \/usr\/local\/bin\/weft\n([\s\S]*?)\nEOF_WEFT/.exec(readFileSync(dockerfile, 'utf8'));
  if (!m) throw new Error(`no entrypoint heredoc (EOF_WEFT → /usr/local/bin/weft) in ${dockerfile}`);
  return `${m[1]}\n`;
}

const IMAGE_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** The lab's "image" root for the Weft image: the repository where the Dockerfile copies it. */
const WEFT_ROOT = '/opt/weft';
const LAB_BIN = '/opt/lab/bin';
/**
 * Where containers find this machine's Node, as an image has its own: a fixed path, not the host's.
 * At its host path it would vanish under a pod's emptyDir at /tmp whenever the repository (and its
 * .tools/node) is checked out under /tmp, as CI's fresh clones are: the container then ran the
 * system's older Node, which cannot load .ts files.
 */
const LAB_NODE_BIN = '/opt/lab/node/bin';

/**
 * The lab's images: the Weft image (any reference whose repository ends in `weft`) runs the
 * Dockerfile's entrypoint with the repository at /opt/weft; `lab/echo`, `lab/echo-grpc`,
 * `lab/loadgen` run the sample apps of cli/local/apps; `lab/sleep` sleeps (a client pod to exec in).
 */
export function labImages(stateDir: string): (image: string) => LabImage | undefined {
  const env = { PATH: `${LAB_NODE_BIN}:${IMAGE_PATH}`, NODE_ENV: 'production' };
  const entry = join(stateDir, 'weft-entrypoint');
  writeFileSync(entry, weftEntrypointScript(), { mode: 0o755 });
  const weftUser = weftImageUser();
  const app = (name: string): LabImage => ({ entrypoint: ['node', `${WEFT_ROOT}/cli/local/apps/${name}.ts`], workdir: WEFT_ROOT, env: { PATH: `${LAB_NODE_BIN}:${IMAGE_PATH}` } });
  return (image) => {
    const repo = image.replace(/@.*$/, '').replace(/:[^/:]*$/, '');
    if (/(^|\/)weft$/.test(repo)) return { entrypoint: [`${LAB_BIN}/weft`], cmd: ['weftctl', '--help'], workdir: WEFT_ROOT, env, files: { [`${LAB_BIN}/weft`]: entry }, ...(weftUser ? { user: weftUser } : {}) };
    if (repo === 'lab/echo' || repo === 'lab/echo-grpc' || repo === 'lab/loadgen') return app(repo.slice(4));
    if (repo === 'lab/sleep') return { entrypoint: ['sleep', 'infinity'], workdir: '/', env: { PATH: IMAGE_PATH } };
    return undefined;
  };
}

export interface LabKubeletOptions {
  api: FakeApiServer;
  net: LocalNetwork;
  node: string;
  /** Where this kubelet keeps pod volumes, container roots, logs and the node's host folders. */
  stateDir: string;
  images: (image: string) => LabImage | undefined;
  /** The file containers see as /etc/hosts (the lab's DNS, kept by its Service proxy). */
  hostsFile: string;
  /** The API server as pods reach it (KUBERNETES_SERVICE_HOST/PORT) and its CA (ca.crt). */
  apiServer: { host: string; port: number; caPem: string };
  /** Pass interval; default 200 ms. */
  intervalMs?: number;
  /** Cap on terminationGracePeriodSeconds (a test's patience); default 30 s. */
  maxGraceMs?: number;
}

interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: Array<{ name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string }; configMapKeyRef?: { name: string; key: string; optional?: boolean }; secretKeyRef?: { name: string; key: string; optional?: boolean } } }>;
  volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean; subPath?: string }>;
  ports?: Array<{ name?: string; containerPort: number }>;
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  workingDir?: string;
  securityContext?: RunAsSecurityContext;
}

interface Probe {
  httpGet?: { path?: string; port: number | string };
  tcpSocket?: { port: number | string };
  exec?: { command: string[] };
  initialDelaySeconds?: number;
  periodSeconds?: number;
  failureThreshold?: number;
  successThreshold?: number;
}

interface Volume {
  name: string;
  configMap?: { name: string; optional?: boolean; items?: Array<{ key: string; path: string }> };
  secret?: { secretName: string; optional?: boolean; items?: Array<{ key: string; path: string }> };
  emptyDir?: object;
  hostPath?: { path: string };
  downwardAPI?: { items: Array<{ path: string; fieldRef?: { fieldPath: string } }> };
  projected?: { sources: Array<{
    serviceAccountToken?: { audience?: string; expirationSeconds?: number; path: string };
    configMap?: { name: string; optional?: boolean; items?: Array<{ key: string; path: string }> };
    secret?: { name: string; optional?: boolean; items?: Array<{ key: string; path: string }> };
    downwardAPI?: { items: Array<{ path: string; fieldRef?: { fieldPath: string } }> };
  }> };
}

interface PodSpec {
  nodeName?: string;
  hostNetwork?: boolean;
  securityContext?: RunAsSecurityContext;
  serviceAccountName?: string;
  automountServiceAccountToken?: boolean;
  restartPolicy?: string;
  terminationGracePeriodSeconds?: number;
  initContainers?: Container[];
  containers: Container[];
  volumes?: Volume[];
}

interface RunningContainer {
  spec: Container;
  process?: ChildProcess;
  restarts: number;
  ready: boolean;
  started?: string;
  lastExit?: { code: number | null; signal: string | null; at: string };
  /** Why it is not running (ErrImagePull, CrashLoopBackOff, ...). */
  waiting?: string;
  liveFailures: number;
  /** Ready at least once since it started. */
  everReady?: boolean;
  /** When the liveness result last counted was taken (ms). */
  lastLiveAt?: number;
  nextStart: number;
  stopping: boolean;
}

interface RunningPod {
  uid: string;
  namespace: string;
  name: string;
  spec: PodSpec;
  ip?: string;
  netns?: string;
  netnsPath?: string;
  cgroup: string;
  dir: string;
  sandboxReady: boolean;
  sandboxError?: string;
  initDone: boolean;
  containers: Map<string, RunningContainer>;
  gone: boolean;
  lastStatus?: string;
  volumeVersions: Map<string, string>;
}

/** The CNI network every lab node starts with: the main plugin is the lab's own sandbox. */
const MAIN_CONFLIST = { cniVersion: '1.0.0', name: 'lab', plugins: [{ type: 'lab-veth' }] };
const MAIN_PLUGIN = 'lab-veth';
const SA_MOUNT = '/var/run/secrets/kubernetes.io/serviceaccount';
const CNI_RETRY_MS = 250;
/** Liveness failures of a container that was never ready count only after this long. */
const LIVENESS_GRACE_MS = 120_000;

/** Kubelet backoff: 1 s doubling to 10 s here (the real one caps at 5 min). */
function backoffMs(restarts: number): number {
  return Math.min(10_000, 1000 * 2 ** Math.max(0, restarts - 1));
}

function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** /var/run is a symlink to /run on the host: a mount below it goes to the real path in the root. */
function inRoot(path: string): string {
  return path.replace(/^\/var\/run(\/|$)/, '/run$1');
}

export class LabKubelet {
  readonly o: LabKubeletOptions;
  readonly node: LocalNode;
  readonly pods = new Map<string, RunningPod>();
  /** The node's host folders (CNI bin and conf, /var/run/weft, other hostPaths). */
  readonly hostDir: string;
  prober?: ChildProcess;
  #timer: NodeJS.Timeout | undefined;
  #busy = false;
  #stopped = false;
  /** Last problem per pod (tests' explain). */
  readonly errors = new Map<string, string>();

  constructor(o: LabKubeletOptions) {
    this.o = o;
    this.node = o.net.node(o.node);
    this.hostDir = join(o.stateDir, 'host');
    for (const d of ['opt/cni/bin', 'etc/cni/net.d', 'run/weft', 'pods', 'logs']) mkdirSync(join(this.hostDir, d), { recursive: true });
    writeFileSync(join(this.hostDir, 'etc/cni/net.d/10-lab.conflist'), JSON.stringify(MAIN_CONFLIST, null, 2));
    mkdirSync(this.node.pinRoot, { recursive: true });
  }

  /** Where a host path of this node really is. */
  hostPath(path: string): string {
    const p = inRoot(path.replace(/\/+$/, '') || '/');
    if (p === '/sys/fs/bpf') return this.node.pinRoot;
    if (p === '/sys/fs/cgroup') return this.node.cgroup;
    if (p === '/proc' || p === '/run/netns' || p === '/dev') return p;
    return join(this.hostDir, p);
  }

  start(): void {
    mkdirSync(this.node.kubeletCgroup, { recursive: true });
    this.prober = this.o.net.spawn({ netns: this.node.netns, cgroup: this.node.kubeletCgroup }, process.execPath, [
      join(REPO_ROOT, 'cli/local/apps/kubelet.ts'), '--targets', this.#probeFile('targets'), '--status', this.#probeFile('status'), '--interval-ms', '500',
    ], { logFile: join(this.o.stateDir, 'prober.log') });
    const tick = async () => {
      if (this.#stopped) return;
      if (!this.#busy) {
        this.#busy = true;
        try {
          await this.sync();
        } catch (e) {
          this.errors.set('sync', (e as Error).stack ?? String(e));
        } finally {
          this.#busy = false;
        }
      }
      this.#timer = setTimeout(() => void tick(), this.o.intervalMs ?? 200);
    };
    void tick();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await Promise.all([...this.pods.values()].map((p) => this.#killPod(p, 0)));
    this.prober?.kill('SIGKILL');
  }

  logFile(namespace: string, pod: string, container: string): string {
    return join(this.hostDir, 'logs', `${namespace}_${pod}_${container}.log`);
  }

  logTail(namespace: string, pod: string, container: string, lines = 30): string {
    const f = this.logFile(namespace, pod, container);
    return existsSync(f) ? readFileSync(f, 'utf8').split('\n').slice(-lines).join('\n') : '(no log)';
  }

  /** The running pod (its netns, IP, processes) by namespace/name. */
  pod(namespace: string, name: string): RunningPod | undefined {
    return [...this.pods.values()].find((p) => p.namespace === namespace && p.name === name && !p.gone);
  }

  /** One pass: start new pods, stop deleted ones, run containers, write status. */
  async sync(): Promise<void> {
    const mine = this.o.api.list('Pod').filter((p) => (p['spec'] as PodSpec).nodeName === this.o.node);
    const live = new Set(mine.map((p) => p.metadata.uid!));
    for (const [uid, rp] of this.pods) {
      if (!live.has(uid) && !rp.gone) {
        rp.gone = true;
        void this.#killPod(rp, Math.min(this.o.maxGraceMs ?? 30_000, (rp.spec.terminationGracePeriodSeconds ?? 30) * 1000)).finally(() => this.pods.delete(uid));
      }
    }
    const probe = this.#readProbes();
    for (const p of mine) {
      let rp = this.pods.get(p.metadata.uid!);
      if (!rp) {
        rp = this.#admit(p);
        this.pods.set(rp.uid, rp);
        void this.#setUpSandbox(rp, p);
      }
      if (rp.gone || !rp.sandboxReady) {
        this.#writeStatus(rp);
        continue;
      }
      this.#refreshVolumes(rp, p);
      await this.#runContainers(rp, p, probe);
      this.#writeStatus(rp);
    }
    this.#writeProbeTargets();
  }

  #admit(p: Obj): RunningPod {
    const spec = p['spec'] as PodSpec;
    const uid = p.metadata.uid!;
    const dir = join(this.hostDir, 'pods', uid);
    mkdirSync(dir, { recursive: true });
    return {
      uid, namespace: p.metadata.namespace!, name: p.metadata.name, spec, dir,
      cgroup: join(this.node.cgroup, 'pods', `${p.metadata.namespace}_${p.metadata.name}`),
      sandboxReady: false, initDone: (spec.initContainers ?? []).length === 0, containers: new Map(), gone: false, volumeVersions: new Map(),
    };
  }

  async #setUpSandbox(rp: RunningPod, p: Obj): Promise<void> {
    try {
      if (rp.spec.hostNetwork) {
        mkdirSync(rp.cgroup, { recursive: true });
        rp.ip = this.node.ip;
        rp.netns = this.node.netns;
        rp.netnsPath = this.node.netnsPath;
      } else {
        const pod = this.o.net.addPod(this.o.node, rp.namespace, rp.name);
        rp.ip = pod.ip;
        rp.netns = pod.netns;
        rp.netnsPath = pod.netnsPath;
        rp.cgroup = pod.cgroup;
        // The runtime runs the node's chained plugins after the main one, retrying while one fails.
        for (;;) {
          if (rp.gone) return;
          const failed = await this.#cni('ADD', rp);
          if (!failed) break;
          rp.sandboxError = failed;
          this.errors.set(`${rp.namespace}/${rp.name}`, `CNI ADD: ${failed}`);
          await sleep(CNI_RETRY_MS);
        }
        rp.sandboxError = undefined;
      }
      this.#materializeVolumes(rp, p);
      rp.sandboxReady = true;
    } catch (e) {
      rp.sandboxError = (e as Error).message;
      this.errors.set(`${rp.namespace}/${rp.name}`, (e as Error).stack ?? String(e));
    }
  }

  /** The node's chained CNI plugins (after the main one) for a pod; returns why one failed, or undefined. */
  async #cni(command: 'ADD' | 'DEL', rp: RunningPod): Promise<string | undefined> {
    const confDir = this.hostPath('/etc/cni/net.d');
    const first = readdirSync(confDir).filter((f) => f.endsWith('.conflist')).sort()[0];
    if (!first) return undefined;
    const list = JSON.parse(readFileSync(join(confDir, first), 'utf8')) as { name?: string; cniVersion?: string; plugins: Array<Record<string, unknown>> };
    const chained = list.plugins.filter((pl) => pl['type'] !== MAIN_PLUGIN);
    for (const plugin of command === 'DEL' ? [...chained].reverse() : chained) {
      const bin = `/opt/cni/bin/${String(plugin['type'])}`;
      if (!existsSync(join(this.hostPath('/opt/cni/bin'), String(plugin['type'])))) return `plugin ${plugin['type']} not found in /opt/cni/bin`;
      let r: CniRun;
      try {
        r = await runCniPlugin({
          plugin: bin, command, netnsPath: rp.netnsPath!, podIp: rp.ip!, namespace: rp.namespace, name: rp.name, uid: rp.uid,
          containerId: rp.uid, netconf: { cniVersion: list.cniVersion ?? '1.0.0', name: list.name ?? 'lab', ...plugin },
          // On the node's file system: the plugin finds the agent's socket at /var/run/weft.
          wrap: this.#chrootArgv(join(rp.dir, 'cni-root'), this.#nodeMounts(), undefined, '/'),
        });
      } catch (e) {
        return (e as Error).message;
      }
      if (r.code !== 0 && command === 'ADD') return `${plugin['type']} exited ${r.code}: ${r.stdout.trim() || r.stderr.trim()}`;
    }
    return undefined;
  }

  /** The host paths every node process sees at their usual place (the node's own, not this machine's). */
  #nodeMounts(): Array<{ src: string; dst: string }> {
    return ['/opt/cni/bin', '/etc/cni/net.d', '/run/weft'].map((d) => ({ src: this.hostPath(d), dst: d }));
  }

  // ---------------------------------------------------------------------------------------------
  // Volumes

  #fieldValue(p: Obj, path: string): string {
    const m = p.metadata;
    const spec = p['spec'] as PodSpec & Record<string, unknown>;
    const status = (p['status'] ?? {}) as Record<string, unknown>;
    const label = /^metadata\.(labels|annotations)\['([^']+)'\]$/.exec(path);
    if (label) return String(((m[label[1]!] ?? {}) as Record<string, string>)[label[2]!] ?? '');
    switch (path) {
      case 'metadata.name': return m.name;
      case 'metadata.namespace': return m.namespace ?? '';
      case 'metadata.uid': return m.uid ?? '';
      case 'metadata.labels': return Object.entries(m.labels ?? {}).map(([k, v]) => `${k}="${v}"`).join('\n');
      case 'metadata.annotations': return Object.entries((m['annotations'] ?? {}) as Record<string, string>).map(([k, v]) => `${k}="${v}"`).join('\n');
      case 'spec.nodeName': return spec.nodeName ?? '';
      case 'spec.serviceAccountName': return spec.serviceAccountName ?? 'default';
      case 'status.hostIP': return this.node.ip;
      case 'status.podIP': return String(status['podIP'] ?? '');
      default: throw new Error(`fieldRef ${path} is not supported by the lab kubelet`);
    }
  }

  #keyed(kind: 'ConfigMap' | 'Secret', ns: string, name: string, optional: boolean | undefined, items: Array<{ key: string; path: string }> | undefined): Map<string, Buffer> | undefined {
    const o = this.o.api.get(kind, ns, name);
    if (!o) {
      if (optional) return new Map();
      return undefined;
    }
    const data = (o['data'] ?? {}) as Record<string, string>;
    const decode = (v: string) => (kind === 'Secret' ? Buffer.from(v, 'base64') : Buffer.from(v));
    const all = new Map<string, Buffer>(Object.entries(data).map(([k, v]) => [k, decode(v)]));
    if (kind === 'Secret') for (const [k, v] of Object.entries((o['stringData'] ?? {}) as Record<string, string>)) all.set(k, Buffer.from(v));
    if (!items) return all;
    return new Map(items.filter((i) => all.has(i.key)).map((i) => [i.path, all.get(i.key)!]));
  }

  /** The files of one volume (path → content), or undefined while an object it needs is missing. */
  #volumeFiles(rp: RunningPod, p: Obj, v: Volume): Map<string, Buffer> | undefined {
    if (v.configMap) return this.#keyed('ConfigMap', rp.namespace, v.configMap.name, v.configMap.optional, v.configMap.items);
    if (v.secret) return this.#keyed('Secret', rp.namespace, v.secret.secretName, v.secret.optional, v.secret.items);
    if (v.downwardAPI) return new Map(v.downwardAPI.items.filter((i) => i.fieldRef).map((i) => [i.path, Buffer.from(this.#fieldValue(p, i.fieldRef!.fieldPath))]));
    if (v.projected) {
      const out = new Map<string, Buffer>();
      for (const s of v.projected.sources) {
        let part: Map<string, Buffer> | undefined;
        if (s.serviceAccountToken) {
          const prev = rp.volumeVersions.get(`${v.name}/token/${s.serviceAccountToken.path}`);
          const token = prev ?? this.o.api.issueToken({
            namespace: rp.namespace, serviceAccount: rp.spec.serviceAccountName ?? 'default',
            audiences: [s.serviceAccountToken.audience ?? API_SERVER_AUDIENCE],
            expirationSeconds: s.serviceAccountToken.expirationSeconds ?? 3600,
            pod: { name: rp.name, uid: rp.uid }, node: this.o.node,
          }).token;
          rp.volumeVersions.set(`${v.name}/token/${s.serviceAccountToken.path}`, token);
          part = new Map([[s.serviceAccountToken.path, Buffer.from(token)]]);
        } else if (s.configMap) part = this.#keyed('ConfigMap', rp.namespace, s.configMap.name, s.configMap.optional, s.configMap.items);
        else if (s.secret) part = this.#keyed('Secret', rp.namespace, s.secret.name, s.secret.optional, s.secret.items);
        else if (s.downwardAPI) part = new Map(s.downwardAPI.items.filter((i) => i.fieldRef).map((i) => [i.path, Buffer.from(this.#fieldValue(p, i.fieldRef!.fieldPath))]));
        if (!part) return undefined;
        for (const [k, b] of part) out.set(k, b);
      }
      return out;
    }
    return new Map();
  }

  /** Volumes of the pod, including the ServiceAccount token volume the API server's admission adds. */
  #volumes(rp: RunningPod): Volume[] {
    const vols = [...(rp.spec.volumes ?? [])];
    if (this.#automount(rp)) {
      vols.push({
        name: 'kube-api-access', projected: { sources: [
          { serviceAccountToken: { path: 'token', expirationSeconds: 3607 } },
          { downwardAPI: { items: [{ path: 'namespace', fieldRef: { fieldPath: 'metadata.namespace' } }] } },
        ] },
      });
    }
    return vols;
  }

  #automount(rp: RunningPod): boolean {
    if (rp.spec.automountServiceAccountToken !== undefined) return rp.spec.automountServiceAccountToken;
    const sa = this.o.api.get('ServiceAccount', rp.namespace, rp.spec.serviceAccountName ?? 'default');
    return (sa?.['automountServiceAccountToken'] as boolean | undefined) ?? true;
  }

  #volumeDir(rp: RunningPod, name: string): string {
    return join(rp.dir, 'volumes', name);
  }

  #writeVolume(rp: RunningPod, name: string, files: Map<string, Buffer>, extra?: Map<string, Buffer>): void {
    const dir = this.#volumeDir(rp, name);
    const all = new Map([...files, ...(extra ?? [])]);
    const fingerprint = JSON.stringify([...all].map(([k, b]) => [k, b.toString('base64')]));
    if (rp.volumeVersions.get(name) === fingerprint) return;
    // Written beside, then swapped in file by file (a reader sees the old or the new file whole).
    mkdirSync(dir, { recursive: true });
    for (const [path, content] of all) {
      const file = join(dir, path);
      mkdirSync(dirname(file), { recursive: true });
      writeFileSync(`${file}.tmp`, content);
      renameSync(`${file}.tmp`, file);
    }
    rp.volumeVersions.set(name, fingerprint);
  }

  #materializeVolumes(rp: RunningPod, p: Obj): void {
    for (const v of this.#volumes(rp)) {
      if (v.hostPath) {
        mkdirSync(this.hostPath(v.hostPath.path), { recursive: true });
        continue;
      }
      const files = this.#volumeFiles(rp, p, v);
      if (!files) throw new Error(`volume ${v.name}: ${v.configMap ? `configmap "${v.configMap.name}"` : v.secret ? `secret "${v.secret.secretName}"` : 'a source'} not found`);
      this.#writeVolume(rp, v.name, files, v.name === 'kube-api-access' ? new Map([['ca.crt', Buffer.from(this.o.apiServer.caPem)]]) : undefined);
    }
  }

  /** ConfigMap and Secret volumes follow their objects (the kubelet's periodic sync). */
  #refreshVolumes(rp: RunningPod, p: Obj): void {
    for (const v of this.#volumes(rp)) {
      if (v.hostPath || v.emptyDir || v.name === 'kube-api-access') continue;
      const files = this.#volumeFiles(rp, p, v);
      if (files) this.#writeVolume(rp, v.name, files);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Containers

  /**
   * argv that runs `cmd` in a fresh mount namespace chrooted into `root` (a tmpfs holding the host's
   * system folders, then `mounts` in order), with exactly `env`, in `workdir`.
   */
  #chrootArgv(root: string, mounts: Array<{ src: string; dst: string; ro?: boolean }>, env: Record<string, string> | undefined, workdir: string): string[] {
    mkdirSync(root, { recursive: true });
    const lines = [
      'set -e',
      `R=${shq(root)}`,
      'mount -t tmpfs lab-root "$R"',
      'for d in usr etc var proc sys dev; do mkdir -p "$R/$d"; mount --rbind "/$d" "$R/$d"; done',
      'for l in bin sbin lib lib32 lib64 libx32; do if [ -L "/$l" ]; then ln -s "$(readlink "/$l")" "$R/$l"; elif [ -d "/$l" ]; then mkdir -p "$R/$l"; mount --rbind "/$l" "$R/$l"; fi; done',
      'mkdir -p "$R/run" "$R/tmp" "$R/opt" "$R/root"',
      'chmod 1777 "$R/tmp"',
    ];
    // Node where the image has it (LAB_NODE_BIN), and the repository also at its own path (absolute
    // symlinks keep working), both before the pod's volumes.
    const nodeDir = realpathSync(dirname(process.execPath));
    lines.push(`mkdir -p "$R"${shq(LAB_NODE_BIN)} && mount --rbind ${shq(nodeDir)} "$R"${shq(LAB_NODE_BIN)}`);
    lines.push(`mkdir -p "$R"${shq(REPO_ROOT)} && mount --rbind ${shq(REPO_ROOT)} "$R"${shq(REPO_ROOT)}`);
    for (const m of mounts) {
      const dst = inRoot(m.dst);
      const isFile = existsSync(m.src) && statSync(m.src).isFile();
      lines.push(isFile
        ? `mkdir -p "$(dirname "$R"${shq(dst)})" && { [ -e "$R"${shq(dst)} ] || : > "$R"${shq(dst)}; } && mount --bind ${shq(m.src)} "$R"${shq(dst)}`
        : `mkdir -p "$R"${shq(dst)} && mount --rbind ${shq(m.src)} "$R"${shq(dst)}`);
      if (m.ro) lines.push(`mount -o remount,bind,ro "$R"${shq(dst)} 2>/dev/null || true`);
    }
    // Exactly the container's environment; without one (a CNI plugin) the caller's.
    const envArgs = env ? ['-i', ...Object.entries(env).map(([k, v]) => `${k}=${v}`)] : [];
    lines.push(`cd "$R"; exec chroot "$R" /usr/bin/env ${envArgs.map(shq).join(' ')} /bin/sh -c 'cd "$0" && exec "$@"' ${shq(workdir)} "$@"`);
    return ['unshare', '--mount', '--propagation', 'slave', 'sh', '-c', lines.join('\n'), 'lab-container'];
  }

  #env(rp: RunningPod, p: Obj, c: Container, image: LabImage): Record<string, string> {
    const env: Record<string, string> = {
      ...image.env,
      HOSTNAME: rp.spec.hostNetwork ? this.node.name : rp.name,
      KUBERNETES_SERVICE_HOST: this.o.apiServer.host,
      KUBERNETES_SERVICE_PORT: String(this.o.apiServer.port),
      KUBERNETES_SERVICE_PORT_HTTPS: String(this.o.apiServer.port),
      HOME: '/root',
    };
    for (const e of c.env ?? []) {
      if (e.value !== undefined) env[e.name] = expand(e.value, env);
      else if (e.valueFrom?.fieldRef) env[e.name] = this.#fieldValue(p, e.valueFrom.fieldRef.fieldPath);
      else if (e.valueFrom?.configMapKeyRef || e.valueFrom?.secretKeyRef) {
        const ref = (e.valueFrom.configMapKeyRef ?? e.valueFrom.secretKeyRef)!;
        const kind = e.valueFrom.configMapKeyRef ? 'ConfigMap' : 'Secret';
        const data = this.#keyed(kind, rp.namespace, ref.name, ref.optional, undefined);
        const v = data?.get(ref.key);
        if (v === undefined && !ref.optional) throw new Error(`env ${e.name}: ${kind.toLowerCase()} "${ref.name}" key "${ref.key}" not found`);
        if (v !== undefined) env[e.name] = v.toString();
      }
    }
    return env;
  }

  #startContainer(rp: RunningPod, p: Obj, rc: RunningContainer): void {
    const c = rc.spec;
    const image = this.o.images(c.image);
    if (!image) {
      rc.waiting = 'ErrImagePull';
      this.errors.set(`${rp.namespace}/${rp.name}/${c.name}`, `image ${c.image} is not one the lab knows`);
      return;
    }
    const nonRoot = runAsNonRootProblem(rp.spec, c, image.user);
    if (nonRoot) {
      rc.waiting = 'CreateContainerConfigError';
      this.errors.set(`${rp.namespace}/${rp.name}/${c.name}`, nonRoot);
      return;
    }
    let env: Record<string, string>;
    try {
      env = this.#env(rp, p, c, image);
    } catch (e) {
      rc.waiting = 'CreateContainerConfigError';
      this.errors.set(`${rp.namespace}/${rp.name}/${c.name}`, (e as Error).message);
      return;
    }
    const argv = [...(c.command ?? image.entrypoint), ...(c.args ?? (c.command ? [] : image.cmd ?? []))].map((a) => expand(a, env));
    const vols = new Map(this.#volumes(rp).map((v) => [v.name, v]));
    const mounts: Array<{ src: string; dst: string; ro?: boolean }> = [{ src: REPO_ROOT, dst: WEFT_ROOT }];
    for (const [dst, src] of Object.entries(image.files ?? {})) mounts.push({ src, dst });
    mounts.push({ src: this.o.hostsFile, dst: '/etc/hosts' });
    const vms = [...(c.volumeMounts ?? [])];
    if (this.#automount(rp) && !vms.some((m) => m.mountPath === SA_MOUNT)) vms.push({ name: 'kube-api-access', mountPath: SA_MOUNT, readOnly: true });
    for (const m of vms) {
      const v = vols.get(m.name);
      if (!v) {
        rc.waiting = 'CreateContainerConfigError';
        this.errors.set(`${rp.namespace}/${rp.name}/${c.name}`, `volumeMount ${m.name}: no such volume`);
        return;
      }
      const src = v.hostPath ? this.hostPath(v.hostPath.path) : this.#volumeDir(rp, v.name);
      mkdirSync(src, { recursive: true });
      mounts.push({ src: m.subPath ? join(src, m.subPath) : src, dst: m.mountPath, ...(m.readOnly ? { ro: true } : {}) });
    }
    const root = join(rp.dir, 'roots', c.name);
    const wrap = this.#chrootArgv(root, mounts, env, c.workingDir ?? image.workdir);
    rc.process = this.o.net.spawn({ netns: rp.netns!, cgroup: rp.cgroup }, wrap[0]!, [...wrap.slice(1), ...argv], { logFile: this.logFile(rp.namespace, rp.name, c.name) });
    rc.started = new Date().toISOString();
    rc.waiting = undefined;
    rc.ready = false;
    rc.liveFailures = 0;
    rc.everReady = false;
    const proc = rc.process;
    proc.once('exit', (code, signal) => {
      if (rc.process !== proc) return;
      rc.process = undefined;
      rc.ready = false;
      rc.lastExit = { code, signal, at: new Date().toISOString() };
      if (!rc.stopping) rc.nextStart = Date.now() + backoffMs(rc.restarts + 1);
    });
  }

  async #runContainers(rp: RunningPod, p: Obj, probe: Record<string, ProbeResult>): Promise<void> {
    const policy = rp.spec.restartPolicy ?? 'Always';
    // Init containers one at a time, each to a successful exit.
    if (!rp.initDone) {
      for (const c of rp.spec.initContainers ?? []) {
        let rc = rp.containers.get(`init:${c.name}`);
        if (!rc) {
          rc = { spec: c, restarts: 0, ready: false, liveFailures: 0, nextStart: 0, stopping: false };
          rp.containers.set(`init:${c.name}`, rc);
        }
        if (rc.lastExit?.code === 0 && !rc.process) continue;
        if (!rc.process && Date.now() >= rc.nextStart) {
          if (rc.lastExit) rc.restarts++;
          this.#startContainer(rp, p, rc);
        }
        return;
      }
      rp.initDone = true;
    }
    for (const c of rp.spec.containers) {
      let rc = rp.containers.get(c.name);
      if (!rc) {
        rc = { spec: c, restarts: 0, ready: false, liveFailures: 0, nextStart: 0, stopping: false };
        rp.containers.set(c.name, rc);
      }
      if (!rc.process) {
        const done = rc.lastExit && (policy === 'Never' || (policy === 'OnFailure' && rc.lastExit.code === 0));
        if (!done && Date.now() >= rc.nextStart) {
          if (rc.lastExit) rc.restarts++;
          this.#startContainer(rp, p, rc);
        } else if (!done && rc.lastExit) rc.waiting = 'CrashLoopBackOff';
        continue;
      }
      // Probes.
      const started = Date.parse(rc.started ?? '') || 0;
      const key = (kind: string) => `${rp.uid}/${c.name}/${kind}`;
      const r = c.readinessProbe;
      if (!r) rc.ready = true;
      else if (Date.now() - started >= (r.initialDelaySeconds ?? 0) * 1000) {
        const res = r.exec ? await this.#execProbe(rc, r, key('readiness')) : probe[key('readiness')];
        if (res && Date.parse(res.at) >= started) rc.ready = res.ok;
      }
      if (rc.ready) rc.everReady = true;
      const l = c.livenessProbe;
      // Liveness counts once the container was ready once, or after LIVENESS_GRACE_MS: Node programs
      // start many times slower on a loaded 2-core lab machine than on a node (a startupProbe's job).
      if (l && Date.now() - started >= (l.initialDelaySeconds ?? 0) * 1000 && (rc.everReady || Date.now() - started >= LIVENESS_GRACE_MS)) {
        const res = l.exec ? await this.#execProbe(rc, l, key('liveness')) : probe[key('liveness')];
        // One result per periodSeconds counts (the prober runs more often than that).
        const period = (l.periodSeconds ?? 10) * 1000;
        if (res && Date.parse(res.at) >= started && Date.parse(res.at) - (rc.lastLiveAt ?? 0) >= period) {
          rc.lastLiveAt = Date.parse(res.at);
          rc.liveFailures = res.ok ? 0 : rc.liveFailures + 1;
          if (rc.liveFailures >= (l.failureThreshold ?? 3) && rc.process) {
            this.errors.set(`${rp.namespace}/${rp.name}/${c.name}`, `liveness probe failed ${rc.liveFailures} times: restarting`);
            rc.process.kill('SIGKILL');
          }
        }
      }
    }
  }

  readonly #execResults = new Map<string, ProbeResult & { running?: boolean }>();

  /** An exec probe: the command inside the container's mount and network namespaces, every periodSeconds. */
  async #execProbe(rc: RunningContainer, probe: Probe, key: string): Promise<ProbeResult | undefined> {
    const prev = this.#execResults.get(key);
    const period = (probe.periodSeconds ?? 10) * 1000;
    if (prev?.running || (prev && Date.now() - Date.parse(prev.at) < period) || !rc.process?.pid) return prev;
    this.#execResults.set(key, { ...(prev ?? { ok: false, at: new Date(0).toISOString() }), running: true });
    const child = spawn('nsenter', ['-t', String(rc.process.pid), '-m', '-n', '-r', '-w', ...probe.exec!.command], { stdio: 'ignore' });
    const timer = setTimeout(() => child.kill('SIGKILL'), 1_000);
    const [code] = (await once(child, 'exit')) as [number | null];
    clearTimeout(timer);
    const r = { ok: code === 0, at: new Date().toISOString() };
    this.#execResults.set(key, r);
    return r;
  }

  #probeFile(what: 'targets' | 'status'): string {
    return join(this.o.stateDir, `probes-${what}.json`);
  }

  #readProbes(): Record<string, ProbeResult> {
    try {
      return JSON.parse(readFileSync(this.#probeFile('status'), 'utf8')) as Record<string, ProbeResult>;
    } catch {
      return {};
    }
  }

  #writeProbeTargets(): void {
    const targets: Array<{ pod: string; ip: string; port: number; path?: string; tcp?: boolean }> = [];
    for (const rp of this.pods.values()) {
      if (rp.gone || !rp.ip) continue;
      for (const c of rp.spec.containers) {
        for (const [kind, pr] of [['readiness', c.readinessProbe], ['liveness', c.livenessProbe]] as const) {
          if (!pr || pr.exec) continue;
          const portRef = (pr.httpGet ?? pr.tcpSocket)!.port;
          const port = typeof portRef === 'number' ? portRef : c.ports?.find((cp) => cp.name === portRef)?.containerPort ?? Number(portRef);
          targets.push({ pod: `${rp.uid}/${c.name}/${kind}`, ip: rp.ip, port, ...(pr.httpGet ? { path: pr.httpGet.path ?? '/' } : { tcp: true }) });
        }
      }
    }
    const file = this.#probeFile('targets');
    const text = JSON.stringify(targets);
    if (existsSync(file) && readFileSync(file, 'utf8') === text) return;
    writeFileSync(`${file}.tmp`, text);
    renameSync(`${file}.tmp`, file);
  }

  #writeStatus(rp: RunningPod): void {
    if (rp.gone) return;
    const containers = rp.spec.containers.map((c) => rp.containers.get(c.name));
    const allReady = containers.every((rc) => rc?.process && rc.ready);
    const running = containers.some((rc) => rc?.process);
    const now = new Date().toISOString();
    const cond = (type: string, ok: boolean) => ({ type, status: ok ? 'True' : 'False' });
    const status = {
      phase: running ? 'Running' : 'Pending',
      hostIP: this.node.ip,
      ...(rp.ip ? { podIP: rp.ip, podIPs: [{ ip: rp.ip }] } : {}),
      conditions: [cond('PodScheduled', true), cond('Initialized', rp.initDone), cond('ContainersReady', allReady), cond('Ready', allReady)],
      ...(rp.sandboxError ? { message: rp.sandboxError, reason: 'FailedCreatePodSandBox' } : {}),
      containerStatuses: rp.spec.containers.map((c) => {
        const rc = rp.containers.get(c.name);
        return {
          name: c.name, image: c.image, ready: !!(rc?.process && rc.ready), restartCount: rc?.restarts ?? 0, started: !!rc?.process,
          state: rc?.process ? { running: { startedAt: rc.started } } : { waiting: { reason: rc?.waiting ?? 'ContainerCreating' } },
          ...(rc?.lastExit ? { lastState: { terminated: { exitCode: rc.lastExit.code ?? 137, finishedAt: rc.lastExit.at, ...(rc.lastExit.signal ? { signal: rc.lastExit.signal } : {}) } } } : {}),
        };
      }),
    };
    const text = JSON.stringify(status);
    if (text === rp.lastStatus) return;
    const fresh = this.o.api.get('Pod', rp.namespace, rp.name);
    if (!fresh || fresh.metadata.uid !== rp.uid) return;
    const prev = (fresh['status'] ?? {}) as Record<string, unknown>;
    this.o.api.apply({ ...fresh, status: { ...prev, ...status, startTime: prev['startTime'] ?? now } });
    rp.lastStatus = text;
  }

  async #killPod(rp: RunningPod, graceMs: number): Promise<void> {
    const procs = [...rp.containers.values()].filter((rc) => rc.process);
    for (const rc of procs) {
      rc.stopping = true;
      rc.process!.kill('SIGTERM');
    }
    await Promise.all(procs.map(async (rc) => {
      const proc = rc.process;
      if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
      const timer = setTimeout(() => proc.kill('SIGKILL'), graceMs);
      await once(proc, 'exit');
      clearTimeout(timer);
    }));
    if (!rp.spec.hostNetwork && rp.netnsPath) {
      await this.#cni('DEL', rp).catch(() => undefined);
      await this.o.net.removePod(rp.namespace, rp.name).catch(() => undefined);
    } else {
      await removeCgroupTree(rp.cgroup).catch(() => undefined);
    }
    rmSync(rp.dir, { recursive: true, force: true });
  }
}

interface ProbeResult { ok: boolean; at: string; status?: number; error?: string }

/** Kubernetes' $(VAR) expansion in command, args and env values; $$ escapes. */
export function expand(s: string, env: Record<string, string>): string {
  return s.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, name: string | undefined) => (m === '$$' ? '$' : name !== undefined && name in env ? env[name]! : m));
}
