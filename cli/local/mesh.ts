// A whole mesh on one Linux machine: the local network (cli/local/network.ts), a CA and bootstrap
// tokens, the controller on a config directory (in the wire namespace, 10.77.0.254:15012), one
// agent per node, and workloads as pods. `weftctl up` and the e2e tests both build on this.
import { mkdirSync, writeFileSync, rmSync, existsSync, readFileSync, renameSync } from 'node:fs';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { collectOutput, stopProcess } from '../../lib/sys/exec.ts';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ChildProcess } from 'node:child_process';
import { parse, stringify } from 'yaml';
import { CertificateAuthority } from '../../lib/identity/index.ts';
import { LocalNetwork, LOCAL_NET, type LocalNode, type LocalPod } from './network.ts';
import { requestInNetns, getJsonInNetns } from './netns-http.ts';
import { explainBusyPort } from './ports.ts';
import { runCniPlugin, type CniRun } from './cni.ts';
import { AGENT_ENV, AGENT_NODE_OPTIONS, CONTROLLER_NODE_OPTIONS, CONTROLLER_V8_FLAGS, WAYPOINT_NODE_OPTIONS } from '../install/names.ts';
import { COMPILE_CACHE_DIR } from '../install/compile-cache.ts';
import { assertValid } from '../../lib/model/validate.ts';
import { waypointSpecArgs } from '../../lib/model/waypoint-spec.ts';
import type { WaypointAllowedNamespaces } from '../../lib/model/objects.ts';
import { PORTS } from '../../lib/defaults.ts';
import { trustDomainAliasArgs } from '../../lib/main.ts';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
/**
 * Node's compile cache for the local mesh's agents, waypoints and east-west gateways, filled by
 * `make build` (cli/install/compile-cache.ts) as the image's last step fills its own: they start
 * without stripping types and without Node's TypeScript parser in memory.
 */
export const LOCAL_COMPILE_CACHE = join(REPO_ROOT, COMPILE_CACHE_DIR);
export const CONTROLLER_IP = `${LOCAL_NET}.0.254`;
export const CONTROLLER_PORT = PORTS.xds;
/** The chained CNI plugin (agent/cni/weft-cni.c, built by `make build`), run as a container runtime runs it. */
export const CNI_PLUGIN = join(REPO_ROOT, 'build', 'cni', 'weft-cni');
/** How long a pod waits for its network (the CNI plugin retried, as the kubelet retries a sandbox). */
export const POD_NETWORK_DEADLINE_MS = 120_000;
const CNI_RETRY_MS = 250;

export interface LocalMeshOptions {
  prefix: string;
  /** Config directory, CA, tokens and logs live here. */
  stateDir: string;
  nodes: string[];
  trustDomain?: string;
  /** Processes outlive this one (weftctl up); tests keep them attached. */
  detached?: boolean;
  /** Pods and nodes get IPv6 addresses too (not meshed: Weft refuses IPv6 into enrolled pods). */
  dualStack?: boolean;
  logLevel?: string;
  /** First two octets of the mesh's addresses (default 10.77); a second cluster takes another. */
  base?: string;
  /**
   * Plug-in CA (Istio's cacerts model): this mesh's controller signs with an intermediate that a
   * shared root issued; `caFile` then holds the root, the bundle every part trusts. Default: a root
   * of its own.
   */
  intermediate?: { certPem: string; keyPem: string; rootPem: string };
  /** The controller's cluster ID (`--cluster-id`) and network (`--network`); multi-cluster only. */
  clusterId?: string;
  network?: string;
  /** Other trust domains admitted as this mesh's own (per-cluster trust domains): agents and controller. */
  trustDomainAliases?: string[];
  /** Added to every agent's command line, before startAgent's own extraArgs (e.g. --splice). */
  agentArgs?: string[];
}

/** The pod-template-hash of local "Deployments" (WorkloadSpec.deployment). */
const LOCAL_TEMPLATE_HASH = '5c9d7f6b8';

export interface WorkloadSpec {
  node: string;
  namespace: string;
  name: string;
  serviceAccount?: string;
  labels?: Record<string, string>;
  /**
   * The pod belongs to this Deployment, as Kubernetes would record it: a ReplicaSet
   * `<deployment>-<hash>` as controlling owner and the `pod-template-hash` label (telemetry names
   * the workload after the Deployment).
   */
  deployment?: string;
  /** Command to run in the pod (argv); node scripts are run with this Node. */
  command?: string[];
  /** The node's kubelet probes this port (HTTP GET /), as a readiness probe would. */
  probePort?: number;
  env?: Record<string, string>;
}

export interface WaypointOptions {
  /** Pods `<name>-0` … `<name>-<replicas-1>`; default 1. */
  replicas?: number;
  /** Nodes to spread the replicas over, round robin; default the node given to startWaypoint. */
  nodes?: string[];
  /** More waypoint/src/main.ts flags for every replica (`--quota`, `--quota-redis`, ...). */
  extraArgs?: string[];
  /** The Waypoint's spec.maxRequests, passed to each replica as --max-requests. */
  maxRequests?: number;
  /**
   * The Waypoint's spec.quotaStore (a Redis shared by the replicas), passed to each replica as
   * --quota-redis / --quota-failure-mode, as the controller's Deployment does.
   */
  quotaStore?: { redis: string; failureMode?: 'open' | 'closed' };
  /** Extra environment of every replica's process (bench/run.ts profiles the waypoint with NODE_OPTIONS). */
  env?: Record<string, string>;
  /** The Waypoint's spec.allowedNamespaces: which other namespaces may use it (default Same). */
  allowedNamespaces?: WaypointAllowedNamespaces;
}

/** The argv (script first) of a local waypoint pod; weftctl waypoint apply uses it too. */
export function waypointCommand(o: { namespace: string; name: string; id: string; trustDomain: string; trustDomainAliases?: readonly string[]; tokenFile: string; caFile: string; controllerIp?: string }): string[] {
  return [
    'waypoint/src/main.ts', '--namespace', o.namespace, '--name', o.name, '--id', o.id,
    '--controller', `${o.controllerIp ?? CONTROLLER_IP}:${CONTROLLER_PORT}`, '--trust-domain', o.trustDomain,
    // A cluster of a per-cluster-trust-domain lab admits the others' callers, as its agents do.
    ...trustDomainAliasArgs(o.trustDomainAliases),
    '--token-file', o.tokenFile, '--ca-bundle', o.caFile,
    // The local mesh is one machine's lab: its read-only admin paths are open on the metrics port,
    // as `weftctl install --debug-endpoints` opens them on a cluster.
    '--debug-endpoints',
  ];
}

export interface Workload {
  spec: WorkloadSpec;
  pod: LocalPod;
  process?: ChildProcess;
  /**
   * Settles once the pod's network is set up (the CNI plugin's ADD succeeded, when the node's
   * agent runs) and its command was started; rejects when ADD kept failing past the deadline.
   */
  started: Promise<void>;
}

export type { CniRun };

export class LocalMesh {
  readonly o: LocalMeshOptions;
  readonly net: LocalNetwork;
  readonly trustDomain: string;
  readonly configDir: string;
  readonly logDir: string;
  readonly caFile: string;
  readonly tokens = new Map<string, string>();
  readonly workloads = new Map<string, Workload>();
  controller?: ChildProcess;
  readonly agents = new Map<string, ChildProcess>();
  readonly kubelets = new Map<string, ChildProcess>();
  /** Where the controller listens (`<base>.0.254`, on the wire bridge). */
  readonly controllerIp: string;
  /** More controller flags (multi-cluster: federation and the network's gateway). */
  controllerArgs: string[] = [];

  private constructor(o: LocalMeshOptions, net: LocalNetwork) {
    this.o = o;
    this.net = net;
    this.controllerIp = `${net.base}.0.254`;
    this.trustDomain = o.trustDomain ?? 'cluster.local';
    this.configDir = join(o.stateDir, 'config');
    this.logDir = join(o.stateDir, 'logs');
    this.caFile = join(o.stateDir, 'ca.crt');
  }

  /** Builds the network and nodes and writes the CA and tokens; nothing runs yet. */
  static async create(o: LocalMeshOptions): Promise<LocalMesh> {
    mkdirSync(join(o.stateDir, 'config'), { recursive: true });
    mkdirSync(join(o.stateDir, 'logs'), { recursive: true });
    const net = LocalNetwork.create(o.prefix, { dualStack: o.dualStack ?? false, ...(o.base ? { base: o.base } : {}) });
    const mesh = new LocalMesh(o, net);
    try {
      for (const n of o.nodes) net.addNode(n);
      if (o.intermediate) {
        // Plug-in CA: the controller signs with the intermediate (its chain in ca-chain.crt), every
        // part trusts the shared root (ca.crt).
        writeFileSync(mesh.caFile, o.intermediate.rootPem);
        writeFileSync(join(o.stateDir, 'ca-chain.crt'), o.intermediate.certPem);
        writeFileSync(join(o.stateDir, 'ca.key'), o.intermediate.keyPem, { mode: 0o600 });
      } else {
        const ca = await CertificateAuthority.generateRoot({ trustDomain: mesh.trustDomain });
        const pem = ca.exportPem();
        writeFileSync(mesh.caFile, pem.certPem);
        writeFileSync(join(o.stateDir, 'ca.key'), pem.keyPem, { mode: 0o600 });
      }
      for (const n of o.nodes) mesh.tokens.set(n, randomBytes(24).toString('base64url'));
      writeFileSync(join(o.stateDir, 'tokens.yaml'), stringify(Object.fromEntries(mesh.tokens)), { mode: 0o600 });
      writeFileSync(join(mesh.configDir, '00-nodes.yaml'), o.nodes.map((n) => stringify({
        apiVersion: 'v1', kind: 'Node', metadata: { name: n },
        status: { addresses: [{ type: 'InternalIP', address: net.node(n).ip }] },
      })).join('---\n'));
    } catch (err) {
      await net.destroy();
      throw err;
    }
    return mesh;
  }

  /**
   * A LocalMesh over a mesh another process started and left running (`weftctl up` runs detached):
   * the adopted network, the tokens and CA from the state folder. Processes it starts are detached.
   */
  static attach(o: LocalMeshOptions, net: LocalNetwork): LocalMesh {
    const mesh = new LocalMesh({ ...o, detached: true }, net);
    const tokens = parse(readFileSync(join(o.stateDir, 'tokens.yaml'), 'utf8')) as Record<string, string>;
    for (const [node, token] of Object.entries(tokens)) mesh.tokens.set(node, token);
    return mesh;
  }

  node(name: string): LocalNode {
    return this.net.node(name);
  }

  private spawnNode(where: Parameters<LocalNetwork['spawn']>[0], script: string, args: string[], log: string, env?: Record<string, string>, nodeFlags: string[] = []): ChildProcess {
    const child = this.net.spawn(where, process.execPath, [...nodeFlags, join(REPO_ROOT, script), ...args], {
      logFile: join(this.logDir, log),
      detached: this.o.detached ?? false,
      env: { ...process.env, ...env },
    });
    if (this.o.detached) child.unref();
    return child;
  }

  /**
   * The controller on the config directory, listening on the wire (10.77.0.254), with the mesh's
   * CA files, or others (`ca`: a root rotation restarts it with a new signing CA and root bundle).
   */
  startController(ca: { certFile: string; keyFile: string; rootsFile?: string } = this.#caFiles()): ChildProcess {
    const wire = { netns: this.net.wireNetns, cgroup: join(this.net.cgroupDir, 'system') };
    this.controller = this.spawnNode(wire, 'controller/src/main.ts', [
      '--config-dir', this.configDir,
      '--debug-endpoints',
      '--listen-address', this.controllerIp,
      '--ip-address', this.controllerIp,
      ...(this.o.clusterId ? ['--cluster-id', this.o.clusterId] : []),
      ...(this.o.network ? ['--network', this.o.network] : []),
      ...trustDomainAliasArgs(this.o.trustDomainAliases),
      ...this.controllerArgs,
      '--trust-domain', this.trustDomain,
      '--ca-cert', ca.certFile,
      '--ca-key', ca.keyFile,
      ...(ca.rootsFile ? ['--ca-roots', ca.rootsFile] : []),
      '--bootstrap-tokens', join(this.o.stateDir, 'tokens.yaml'),
      // Agents and waypoints present their node / workload certificates on the config stream.
      '--require-client-identity',
      '--log-level', this.o.logLevel ?? 'info',
    ], 'controller.log', { NODE_OPTIONS: [process.env.NODE_OPTIONS, CONTROLLER_NODE_OPTIONS].filter(Boolean).join(' ') }, CONTROLLER_V8_FLAGS.split(' '));
    return this.controller;
  }

  /**
   * Stops the controller and waits for its exit, never forever: SIGTERM (a graceful stop, which must
   * end within `graceMs`) or SIGKILL (a crash). A controller that had already exited, or that did not
   * stop on SIGTERM in time, is an error naming it, with its log.
   */
  async stopController(signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM', graceMs = 10_000): Promise<number> {
    const c = this.controller;
    if (!c) throw new Error('no controller was started');
    const r = await stopProcess(c, { signal, graceMs });
    if (r.alreadyExited) throw new Error(`the controller had exited (${r.code ?? r.signal}) before it was stopped:\n${this.logTail('controller.log', 40)}`);
    if (r.killed) throw new Error(`the controller did not stop within ${graceMs} ms of ${signal} and was killed:\n${this.logTail('controller.log', 40)}`);
    return r.ms;
  }

  /** The CA files the controller signs with: the mesh's own root, or the plug-in intermediate and its root. */
  #caFiles(): { certFile: string; keyFile: string; rootsFile?: string } {
    const keyFile = join(this.o.stateDir, 'ca.key');
    return this.o.intermediate ? { certFile: join(this.o.stateDir, 'ca-chain.crt'), keyFile, rootsFile: this.caFile } : { certFile: this.caFile, keyFile };
  }

  /** Waits for the controller's readiness (config loaded, listening), so agents find it at once. */
  async waitControllerReady(timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const c = this.controller;
      if (c && (c.exitCode !== null || c.signalCode !== null)) {
        const hint = explainBusyPort(this.net.wireNetns, this.logTail('controller.log', 200));
        throw new Error(`the controller exited (${c.exitCode ?? c.signalCode})${hint ? `: ${hint}` : ''}:\n${this.logTail('controller.log')}`);
      }
      try {
        const r = await requestInNetns(`/var/run/netns/${this.net.wireNetns}`, `http://${this.controllerIp}:15021/healthz/ready`, { timeoutMs: 2_000 });
        if (r.status === 200) return;
      } catch {
        /* not listening yet */
      }
      if (Date.now() > deadline) throw new Error(`the controller is not ready after ${timeoutMs} ms:\n${this.logTail('controller.log')}`);
      await sleep(100);
    }
  }

  /**
   * One agent per node, in the node's netns, attached to the node's cgroup subtree. `extraArgs` are
   * appended to the command line; `instance` names a second process for the same node (an upgrade
   * that overlaps the running one): its own cgroup and log file, and it does not replace the
   * registered agent in `agents` (the caller swaps them when the old one is gone).
   */
  startAgent(nodeName: string, opts: { extraArgs?: string[]; instance?: string; env?: Record<string, string> } = {}): ChildProcess {
    const n = this.node(nodeName);
    const suffix = opts.instance ? `-${opts.instance}` : '';
    const cgroup = join(this.net.cgroupDir, 'system', `agent-${nodeName}${suffix}`);
    mkdirSync(cgroup, { recursive: true });
    const child = this.spawnNode({ netns: n.netns, cgroup }, 'agent/src/main.ts', [
      '--node', nodeName,
      '--node-ip', n.ip,
      '--controller', `${this.controllerIp}:${CONTROLLER_PORT}`,
      '--trust-bundle', this.caFile,
      // One argument: a base64url token may start with '-', which parseArgs would take for an option.
      `--token=${this.tokens.get(nodeName)!}`,
      '--trust-domain', this.trustDomain,
      '--cgroup', n.cgroup,
      '--pin-root', n.pinRoot,
      '--pod-netns-prefix', `${this.o.prefix}-`,
      // The CNI plugin asks the agent to enrol each pod created from now on before it starts.
      '--cni-socket', this.cniSocket(nodeName),
      '--log-level', this.o.logLevel ?? 'info',
      '--debug-endpoints',
      ...trustDomainAliasArgs(this.o.trustDomainAliases),
      ...(this.o.agentArgs ?? []),
      ...(opts.extraArgs ?? []),
    ], `agent-${nodeName}${suffix}.log`, {
      // Added to what the caller runs with (make bench --profile puts --cpu-prof there).
      NODE_OPTIONS: [process.env.NODE_OPTIONS, AGENT_NODE_OPTIONS].filter(Boolean).join(' '),
      ...AGENT_ENV,
      NODE_COMPILE_CACHE: LOCAL_COMPILE_CACHE,
      ...opts.env,
    });
    if (!opts.instance) this.agents.set(nodeName, child);
    return child;
  }

  /**
   * Each node's kubelet, then its agent (which finds the kubelet's cgroup when it starts);
   * `extraArgs` by node name are added to that node's agent (e.g. --splice on one node).
   */
  startAgents(extraArgs: Record<string, string[]> = {}): void {
    for (const n of this.o.nodes) {
      if (!this.kubelets.has(n)) this.startKubelet(n);
      this.startAgent(n, extraArgs[n] ? { extraArgs: extraArgs[n] } : {});
    }
  }

  /**
   * The node's "kubelet" (cli/local/apps/kubelet.ts): in the node's netns and its
   * system.slice/kubelet.service cgroup, probing every workload with a probePort. Weft's only
   * exemption from inbound enforcement, so every run of the local mesh exercises it.
   */
  startKubelet(nodeName: string): ChildProcess {
    const n = this.node(nodeName);
    this.#writeProbeTargets(nodeName);
    const child = this.spawnNode({ netns: n.netns, cgroup: n.kubeletCgroup }, 'cli/local/apps/kubelet.ts', [
      '--targets', this.#probeFile(nodeName, 'targets'), '--status', this.#probeFile(nodeName, 'status'), '--interval-ms', '1000',
    ], `kubelet-${nodeName}.log`);
    this.kubelets.set(nodeName, child);
    return child;
  }

  #probeFile(nodeName: string, what: 'targets' | 'status'): string {
    return join(this.o.stateDir, `kubelet-${nodeName}-${what}.json`);
  }

  #writeProbeTargets(nodeName: string): void {
    const targets = [...this.workloads.values()]
      .filter((w) => w.spec.node === nodeName && w.spec.probePort)
      .map((w) => ({ pod: `${w.spec.namespace}/${w.spec.name}`, ip: w.pod.ip, port: w.spec.probePort! }));
    const file = this.#probeFile(nodeName, 'targets');
    writeFileSync(`${file}.tmp`, JSON.stringify(targets));
    renameSync(`${file}.tmp`, file);
  }

  /** What a node's kubelet last saw of each probed pod (`namespace/name` → result). */
  kubeletStatus(nodeName: string): Record<string, { ok: boolean; status?: number; error?: string; at: string; okCount: number; failCount: number }> {
    try {
      return JSON.parse(readFileSync(this.#probeFile(nodeName, 'status'), 'utf8')) as ReturnType<LocalMesh['kubeletStatus']>;
    } catch {
      return {};
    }
  }

  /**
   * A waypoint for a namespace: the Waypoint object, and pods `<name>-0` … `<name>-<replicas-1>`
   * (labelled `weft.dev/waypoint`, not captured themselves) running waypoint/src/main.ts. Replica i
   * runs on `opts.nodes[i % nodes.length]` (default: `nodeName` only). Each gets its certificate
   * from the controller with its node's bootstrap token, as a pod of that node. Returns the first
   * replica; `waypointReplicas()` lists them all.
   */
  startWaypoint(nodeName: string, namespace: string, name = 'waypoint', opts: WaypointOptions = {}): Workload {
    const replicas = opts.replicas ?? 1;
    if (!Number.isInteger(replicas) || replicas < 1) throw new Error(`waypoint ${namespace}/${name}: replicas must be a positive integer, not ${replicas}`);
    const nodes = opts.nodes && opts.nodes.length > 0 ? opts.nodes : [nodeName];
    const spec = {
      ...(opts.maxRequests !== undefined ? { maxRequests: opts.maxRequests } : {}),
      ...(opts.quotaStore ? { quotaStore: opts.quotaStore } : {}),
      ...(opts.allowedNamespaces ? { allowedNamespaces: opts.allowedNamespaces } : {}),
    };
    const object = { apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name, namespace }, ...(Object.keys(spec).length > 0 ? { spec } : {}) };
    // The object the controller will read, checked as it will be (a bad value named by field path).
    assertValid(object);
    this.writeConfig(`waypoint-${namespace}-${name}.yaml`, [object]);
    const limit = waypointSpecArgs(spec);
    const started: Workload[] = [];
    for (let i = 0; i < replicas; i++) {
      const node = nodes[i % nodes.length]!;
      const tokenFile = join(this.o.stateDir, `token-${node}`);
      writeFileSync(tokenFile, this.tokens.get(node)!, { mode: 0o600 });
      started.push(this.addWorkload({
        node, namespace, name: `${name}-${i}`, serviceAccount: name,
        labels: { 'weft.dev/waypoint': name, 'weft.dev/dataplane-mode': 'none' },
        command: [...waypointCommand({ namespace, name, id: `${name}-${i}`, trustDomain: this.trustDomain, ...(this.o.trustDomainAliases ? { trustDomainAliases: this.o.trustDomainAliases } : {}), tokenFile, caFile: this.caFile, controllerIp: this.controllerIp }), ...limit, ...(opts.extraArgs ?? [])],
        // As in the image (its ENV NODE_COMPILE_CACHE): the waypoint starts from the cache, with the
        // Deployment's NODE_OPTIONS, and the caller's added (bench/run.ts --profile).
        env: {
          NODE_COMPILE_CACHE: LOCAL_COMPILE_CACHE,
          ...opts.env,
          NODE_OPTIONS: [process.env.NODE_OPTIONS, WAYPOINT_NODE_OPTIONS, opts.env?.['NODE_OPTIONS']].filter(Boolean).join(' '),
        },
      }));
    }
    return started[0]!;
  }

  /** The running replicas of a waypoint, `<name>-0` first. */
  waypointReplicas(namespace: string, name = 'waypoint'): Workload[] {
    const out: Workload[] = [];
    for (let i = 0; this.workloads.has(`${namespace}/${name}-${i}`); i++) out.push(this.workloads.get(`${namespace}/${name}-${i}`)!);
    return out;
  }

  /** Waits until every replica of a waypoint answers ready on 15021. */
  async waitWaypointReady(namespace: string, name = 'waypoint', timeoutMs = 60_000): Promise<void> {
    const replicas = this.waypointReplicas(namespace, name);
    if (replicas.length === 0) throw new Error(`no waypoint ${namespace}/${name} was started`);
    const deadline = Date.now() + timeoutMs;
    for (const w of replicas) {
      const id = w.spec.name;
      for (;;) {
        try {
          const r = await requestInNetns(w.pod.netnsPath, `http://${w.pod.ip}:15021/healthz/ready`, { timeoutMs: 2_000 });
          if (r.status === 200) break;
        } catch {
          /* not listening yet */
        }
        if (w.process && (w.process.exitCode !== null || w.process.signalCode !== null)) {
          throw new Error(`waypoint ${namespace}/${id} exited:\n${this.logTail(`pod-${namespace}-${id}.log`)}`);
        }
        // Its network could not be set up (the CNI plugin kept failing): say so rather than time out.
        await Promise.race([w.started, sleep(0)]);
        if (Date.now() > deadline) throw new Error(`waypoint ${namespace}/${id} not ready after ${timeoutMs} ms:\n${this.logTail(`pod-${namespace}-${id}.log`)}`);
        await sleep(200);
      }
    }
  }

  /** Kills a node's agent (SIGKILL: no goodbye), as a crash would (an upgrade: startAgent with an instance, then SIGTERM). */
  async killAgent(nodeName: string): Promise<void> {
    const a = this.agents.get(nodeName);
    if (!a) return;
    await stopProcess(a, { signal: 'SIGKILL' });
    this.agents.delete(nodeName);
  }

  /** addWorkload, resolving once the pod's network is set up and its command started. */
  async startWorkload(spec: WorkloadSpec): Promise<Workload> {
    const w = this.addWorkload(spec);
    await w.started;
    return w;
  }

  /** The unix socket a node's agent serves the CNI plugin on. */
  cniSocket(nodeName: string): string {
    return join(this.o.stateDir, 'run', nodeName, 'cni.sock');
  }

  /**
   * Runs the CNI plugin for a pod as a container runtime would: CNI_* variables, the network
   * configuration on stdin with the main plugin's result as prevResult (the local network set the
   * pod's veth and address up already, which is the main plugin's job).
   */
  runCni(command: 'ADD' | 'DEL' | 'CHECK', w: Pick<Workload, 'spec' | 'pod'>, opts: { socket?: string; excludeNamespaces?: string[] } = {}): Promise<CniRun> {
    const { pod } = w;
    return runCniPlugin({
      plugin: CNI_PLUGIN, command, netnsPath: pod.netnsPath, podIp: pod.ip, namespace: pod.namespace, name: pod.name,
      uid: podUid(w.spec), containerId: `${pod.namespace}-${pod.name}`,
      netconf: {
        name: 'weft-local', type: 'weft-cni',
        agentSocket: opts.socket ?? this.cniSocket(pod.node),
        ...(opts.excludeNamespaces ? { excludeNamespaces: opts.excludeNamespaces } : {}),
      },
    });
  }

  /**
   * The kubelet's part: the pod's network first (the CNI plugin, retried while it fails, as the
   * kubelet retries a pod sandbox), then the command, at once.
   */
  private async setUpPod(w: Workload, command: string[] | undefined): Promise<void> {
    const deadline = Date.now() + POD_NETWORK_DEADLINE_MS;
    for (;;) {
      const r = await this.runCni('ADD', w);
      if (r.code === 0) break;
      if (Date.now() > deadline) {
        throw new Error(`pod ${w.spec.namespace}/${w.spec.name}: CNI ADD kept failing for ${POD_NETWORK_DEADLINE_MS} ms: ${r.stdout.trim() || r.stderr.trim()}`);
      }
      await sleep(CNI_RETRY_MS);
    }
    if (command && command.length > 0) this.startCommand(w, command);
  }

  /**
   * Is the CNI plugin "installed" on a node: has an agent served its socket there? From then on
   * every new pod's network goes through the plugin, whether the agent is up or not (a crashed
   * agent leaves the socket file, and the plugin fails until one answers again).
   */
  private agentServesCni(nodeName: string): boolean {
    return existsSync(this.cniSocket(nodeName));
  }

  /** waitEnrolled for each workload, by `namespace/name`, on its own node. */
  async waitWorkloadsEnrolled(keys: string[], timeoutMs = 30_000): Promise<void> {
    for (const key of keys) {
      const w = this.workloads.get(key);
      if (!w) throw new Error(`no workload ${key} in this mesh (known: ${[...this.workloads.keys()].join(', ')})`);
      await this.waitEnrolled(w.spec.node, w.pod.ip, timeoutMs);
    }
  }

  /** Waits until the node's agent lists the pod IP among its enrolled pods. */
  async waitEnrolled(nodeName: string, podIp: string, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const bpf = await this.agentAdmin<{ pods: Array<{ podIp: string }> }>(nodeName, '/bpf');
        if (bpf.pods.some((p) => p.podIp === podIp)) return;
      } catch {
        /* the agent may be restarting */
      }
      if (Date.now() > deadline) throw new Error(`pod ${podIp} was not enrolled by the agent on ${nodeName} within ${timeoutMs} ms\n${this.logTail(`agent-${nodeName}.log`)}`);
      await sleep(100);
    }
  }

  /** Creates a pod, declares it to the controller (a Pod object in the config dir), starts its command. */
  addWorkload(spec: WorkloadSpec): Workload {
    const pod = this.net.addPod(spec.node, spec.namespace, spec.name);
    const obj = {
      apiVersion: 'v1', kind: 'Pod',
      metadata: {
        name: spec.name, namespace: spec.namespace, uid: podUid(spec),
        labels: { ...(spec.labels ?? { app: spec.name }), ...(spec.deployment ? { 'pod-template-hash': LOCAL_TEMPLATE_HASH } : {}) },
        ...(spec.deployment ? { ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: `${spec.deployment}-${LOCAL_TEMPLATE_HASH}`, controller: true }] } : {}),
      },
      spec: { nodeName: spec.node, serviceAccountName: spec.serviceAccount ?? spec.name },
      status: { phase: 'Running', podIP: pod.ip, hostIP: this.node(spec.node).ip, conditions: [{ type: 'Ready', status: 'True' }] },
    };
    this.writeConfig(`pod-${spec.namespace}-${spec.name}.yaml`, [obj]);
    const w: Workload = { spec, pod, started: Promise.resolve() };
    if (this.agentServesCni(spec.node)) {
      // Created on a node whose agent runs: through the CNI plugin, like a kubelet's pod.
      w.started = this.setUpPod(w, spec.command);
      w.started.catch(() => undefined);
    } else if (spec.command && spec.command.length > 0) {
      // The node has no agent yet: the pod predates it (as pods that ran before Weft was
      // installed), and the agent enrols it when it finds its network namespace.
      this.startCommand(w, spec.command);
    }
    this.workloads.set(`${spec.namespace}/${spec.name}`, w);
    if (spec.probePort) this.#writeProbeTargets(spec.node);
    return w;
  }

  private startCommand(w: Workload, command: string[]): void {
    const [cmd, ...args] = command;
    const isScript = cmd!.endsWith('.ts') || cmd!.endsWith('.js');
    const { spec, pod } = w;
    w.process = this.net.spawn(pod, isScript ? process.execPath : cmd!, isScript ? [join(REPO_ROOT, cmd!), ...args] : args, {
      logFile: join(this.logDir, `pod-${spec.namespace}-${spec.name}.log`),
      detached: this.o.detached ?? false,
      env: { ...process.env, POD_NAME: spec.name, POD_NAMESPACE: spec.namespace, ...spec.env },
    });
    if (this.o.detached) w.process.unref();
  }

  /**
   * Runs a command inside a workload's pod (its cgroup and netns, so the datapath sees it) and
   * collects its output; killed after `timeoutMs`.
   */
  async exec(workload: string, cmd: string, args: string[], timeoutMs = 60_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const w = this.workloads.get(workload);
    if (!w) throw new Error(`no workload ${workload} in this mesh`);
    const { code, stdout, stderr } = await collectOutput(this.net.spawn(w.pod, cmd, args), timeoutMs);
    return { code, stdout, stderr };
  }

  /** Writes objects (or YAML text) into the config directory; the controller picks it up. */
  writeConfig(file: string, objects: object[] | string): void {
    const text = typeof objects === 'string' ? objects : objects.map((o) => stringify(o)).join('---\n');
    const tmp = join(this.configDir, `.${file}.tmp`);
    writeFileSync(tmp, text);
    // rename is atomic: the controller never reads half a file.
    writeFileSync(join(this.configDir, file), readFileSync(tmp));
    rmSync(tmp);
  }

  removeConfig(file: string): void {
    rmSync(join(this.configDir, file), { force: true });
  }

  /** GET on a node agent's admin port (localhost:15000 inside the node's netns). */
  agentAdmin<T>(nodeName: string, path: string): Promise<T> {
    return getJsonInNetns<T>(this.node(nodeName).netnsPath, `http://127.0.0.1:15000${path}`);
  }

  async agentMetrics(nodeName: string): Promise<string> {
    const n = this.node(nodeName);
    return (await requestInNetns(n.netnsPath, `http://${n.ip}:15020/metrics`)).body;
  }

  async agentReady(nodeName: string): Promise<{ ready: boolean; reason: string }> {
    const n = this.node(nodeName);
    try {
      const r = await requestInNetns(n.netnsPath, `http://${n.ip}:15021/healthz/ready`, { timeoutMs: 2_000 });
      return { ready: r.status === 200, reason: r.body.trim() };
    } catch (err) {
      return { ready: false, reason: (err as Error).message };
    }
  }

  /** Waits until every agent reports ready (certificates, config and BPF in place). */
  async waitReady(timeoutMs = 60_000, agents: string[] = [...this.agents.keys()]): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    if (this.controller) await this.waitControllerReady(timeoutMs);
    for (const name of agents) {
      for (;;) {
        const a = this.agents.get(name);
        if (a && (a.exitCode !== null || a.signalCode !== null)) {
          const hint = explainBusyPort(this.node(name).netns, this.logTail(`agent-${name}.log`, 200));
          throw new Error(`agent on ${name} exited (${a.exitCode ?? a.signalCode})${hint ? `: ${hint}` : ''}; see ${join(this.logDir, `agent-${name}.log`)}:\n${this.logTail(`agent-${name}.log`)}`);
        }
        const r = await this.agentReady(name);
        if (r.ready) break;
        if (Date.now() > deadline) {
          throw new Error(`agent on ${name} not ready after ${timeoutMs} ms: ${r.reason}\n${this.logTail(`agent-${name}.log`, 10)}\ncontroller:\n${this.logTail('controller.log', 20)}`);
        }
        await sleep(200);
      }
    }
  }

  /** The JSON lines of a log file in logDir whose `msg` is `msg`, parsed, oldest first. */
  logEntries(file: string, msg: string): Array<Record<string, unknown>> {
    const p = join(this.logDir, file);
    if (!existsSync(p)) return [];
    const needle = `"msg":${JSON.stringify(msg)}`;
    return readFileSync(p, 'utf8').split('\n').filter((l) => l.includes(needle)).map((l) => JSON.parse(l) as Record<string, unknown>);
  }

  logTail(file: string, lines = 30): string {
    const p = join(this.logDir, file);
    if (!existsSync(p)) return '(no log)';
    return readFileSync(p, 'utf8').split('\n').slice(-lines).join('\n');
  }

  /** Kills every process and removes every namespace, cgroup and pin of this mesh. */
  async destroy(): Promise<void> {
    await this.net.destroy();
  }
}

/** The pod's UID in the config directory (and K8S_POD_UID for the CNI plugin). */
function podUid(spec: Pick<WorkloadSpec, 'namespace' | 'name'>): string {
  return `${spec.namespace}-${spec.name}`;
}
