// The node agent: one per node. It loads the datapath, follows the controller's config for this
// node, enrols the node's ambient pods into the datapath, holds their certificates, and runs the
// outbound (15001) and inbound HBONE (15008) proxies plus admin, metrics and readiness.
import { stdoutLines } from '../../lib/sys/line-batch.ts';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { Gauge } from 'prom-client';
import { jsonLogger, type Logger, type LogLevel } from '../../lib/log.ts';
import { HbonePool, readPoolStats } from '../../lib/hbone/index.ts';
import { PORTS } from '../../lib/defaults.ts';
import { splitPemCertificates } from '../../lib/identity/index.ts';
import type { AgentConfig } from '../../lib/model/mesh.ts';
import { Datapath, MAX_DESTS, MESH_PORTS, REFUSAL_COUNTERS } from './datapath/index.ts';
import { CertManager, GrpcCertificateSigner } from './certs/index.ts';
import { NodeConfigStream } from './config-stream.ts';
import { AgentState, validateAgentConfig, type MeshDestination } from './state.ts';
import { AgentMetrics, accessLogSink, type AccessLogSink } from './metrics.ts';
import { Outbound } from './outbound.ts';
import { StrandedResets } from './splice.ts';
import { spliceReaderNames } from './datapath/codecs.ts';
import { Inbound } from './inbound.ts';
import { LocalDelivery } from './delivery.ts';
import { PlaintextInbound } from './plaintext.ts';
import { KeyedRetry } from '../../lib/backoff.ts';
import { cgroupId, findKubeletCgroups, kubeletRefusalDetail } from '../../lib/sys/cgroup.ts';
import { findCgroup2Root } from '../../lib/sys/mounts.ts';
import { planEnrolment, PodNetnsResolver, type EnrolmentRefusal, type PodNetns } from './pods.ts';
import { CniError, CNI_ERROR, CniServer, type CniBackend, type CniPod } from './cni.ts';
import { netnsCookie } from '../libbpf/index.ts';
import { mallocInfo, startMemoryRelease, type MemoryRelease } from '../../lib/sys/memory.ts';
import type { Workload } from '../../lib/model/mesh.ts';
import { HttpStatusError, debugTokenRefused, jsonServer, limitSidePort, type OnSidePortRefusal } from './admin.ts';
import { listenHttp } from '../../lib/status-http.ts';
import { FlowTap } from '../../lib/tap.ts';
import { OtlpLogExporters, otlpLogMetrics } from '../../lib/telemetry/otlp-logs.ts';
import { debugThroughAdmin, debugTokenFile } from '../../lib/debug-http.ts';
import { registerHbonePoolMetrics } from '../../lib/telemetry/hbone-pool.ts';

import { enableRequestMigration, isListening } from '../../lib/sys/listeners.ts';

/** Admin paths also served, read-only, as /debug/<path> on the metrics port (lib/debug-http.ts). */
export const AGENT_DEBUG_PATHS = ['/config_dump', '/certs', '/bpf', '/flows'] as const;
/** How often the agent looks again for pods it knows of but could not find a netns for. */
export const ENROL_RETRY_MS = 1_000;
/** Waits between tries of a pod's plaintext listener that could not be opened: 1 s doubling to 30 s. */
export const LISTENER_RETRY = { initialMs: 1_000, maxMs: 30_000 } as const;
/** How long a CNI ADD waits for the controller's config to name a pod before failing (the kubelet retries). */
export const DEFAULT_CNI_WAIT_MS = 10_000;
/** How long a stopping agent lets its open connections finish (below the DaemonSet's 30 s grace). */
export const DEFAULT_DRAIN_TIMEOUT_MS = 20_000;

/**
 * The agent's ports a flag may move (agent/src/main.ts: --<name>-port), by default (PORTS,
 * lib/defaults.ts). Its gateway port is not one: PORTS.hboneGateway always (the east-west gateway
 * dials it, and the datapath leaves only it out of capture).
 */
export const DEFAULT_AGENT_PORTS = { outbound: PORTS.outbound, hbone: PORTS.hbone, admin: PORTS.admin, metrics: PORTS.metrics, ready: PORTS.readiness } as const;
export type AgentPorts = { -readonly [K in keyof typeof DEFAULT_AGENT_PORTS]: number };

export interface AgentOptions {
  node: string;
  /** The node address: listeners bind here and pods are redirected here. */
  nodeIp: string;
  /** Controller gRPC address, host:port (15012). */
  controller: string;
  /** PEM file with the mesh's root certificate(s). */
  trustBundleFile: string;
  /** Bootstrap token (local mode) or ServiceAccount token file (Kubernetes mode). */
  token: () => string;
  trustDomain: string;
  /** Other trust domains whose workload identities are admitted on 15008 (trust-domain aliases). */
  trustDomainAliases?: string[];
  /** Namespace the controller runs in (its SPIFFE ID). Default weft-system. */
  controllerNamespace?: string;
  cgroupPath?: string;
  pinRoot?: string;
  objectDir?: string;
  /** Look for pod namespaces only among named ones with this prefix (local mode); default: all. */
  podNetnsPrefix?: string;
  /**
   * Unix socket the chained CNI plugin (agent/cni/weft-cni.c) asks to enrol each new pod on,
   * before its containers start. Default: none (pods are found by scanning namespaces).
   */
  cniSocket?: string;
  /** How long a CNI ADD waits for the config to name the pod. Default 10 s. */
  cniWaitMs?: number;
  /** Extra destination ports the datapath never redirects (outbound only). */
  excludedPorts?: number[];
  /**
   * Pod ports inbound enforcement leaves alone (plaintext reaches the application directly, even
   * on STRICT pods). Default none; an explicit choice, shown by `weftctl bpf`.
   */
  inboundExcludedPorts?: number[];
  /**
   * cgroup v2 folders whose processes' connections to pods are kubelet probes, the one exemption
   * from inbound enforcement. Default: found at start (systemd's kubelet.service under the
   * agent's cgroup root, or the cgroup of a process named kubelet running as root in the host's mount
   * namespace: findKubeletCgroups). [] turns the exemption off.
   */
  kubeletCgroups?: string[];
  /** Requested lifetime of workload certificates (renewed at half-life); default the CA's (24 h). */
  certLifetimeSeconds?: number;
  /** Ports to listen on in place of DEFAULT_AGENT_PORTS (the gateway port is always PORTS.hboneGateway: the east-west gateway dials it). */
  ports?: Partial<AgentPorts>;
  /** How long stop() lets open connections finish before cutting them. Default 20 s. */
  drainTimeoutMs?: number;
  /** Splice authorized same-node connections pod to pod in the kernel (bpf/splice.bpf.c). Default false. */
  splice?: boolean;
  /**
   * Serve the read-only admin paths also as /debug/<path> on the metrics port (lib/debug-http.ts),
   * for weftctl and the dashboard on a cluster. Default false: they show the mesh's config and live
   * flows to whoever reaches the port.
   */
  debugEndpoints?: boolean;
  /**
   * With debugEndpoints: a file holding the token a /debug request must carry (DEBUG_TOKEN_HEADER),
   * read at each request; an unreadable or empty file refuses every one. Default: none asked.
   */
  debugTokenFile?: string;
  /**
   * A file that exists exactly while this process is ready (a readiness probe that cannot be
   * answered by another agent process sharing the ports during an upgrade).
   */
  readyFile?: string;
  logLevel?: LogLevel;
  logger?: Logger;
  /** Where access-log lines go; default stdout. */
  accessLog?: (line: string) => void;
}

/** The namespaces (at most 10, by name) of the Services whose destinations are the `overflow` left out of `list`'s tail. */
export function overflowNamespaces(list: readonly MeshDestination[], overflow: number): string[] {
  const names = new Set<string>();
  for (let i = Math.max(0, list.length - overflow); i < list.length; i++) if (list[i]!.namespace !== undefined) names.add(list[i]!.namespace!);
  return [...names].sort().slice(0, 10);
}

/**
 * What a change of weft_dests' overflow (destinations left out, from `before` to `after` at a
 * config) is worth a log line for: its start and its end. How many are left out meanwhile is the
 * gauge's (weft_destinations_overflow): a remote's every change would otherwise be a warning.
 */
export function overflowChange(before: number, after: number): 'started' | 'ended' | undefined {
  if (before === 0 && after > 0) return 'started';
  if (before > 0 && after === 0) return 'ended';
  return undefined;
}

export class Agent {
  readonly o: AgentOptions;
  readonly log: Logger;
  readonly metrics = new AgentMetrics();
  /** Live access-log entries for `weftctl tap` and the dashboard (admin `/flows`). */
  readonly flows = new FlowTap();
  readonly state: AgentState;
  readonly resolver: PodNetnsResolver;
  datapath!: Datapath;
  certs!: CertManager;
  /** The config stream, once start() has opened it. */
  configStream: NodeConfigStream | undefined;
  pool!: HbonePool;
  outbound!: Outbound;
  inbound!: Inbound;
  delivery!: LocalDelivery;
  plaintext!: PlaintextInbound;
  #refusals: { close(): void } | undefined;
  #spliceStranded: StrandedResets | undefined;
  #servers: import('node:http').Server[] = [];
  /** pod IP → netns cookie of what this agent enrolled. */
  #enrolled = new Map<string, bigint>();
  /** netns cookie → pod IP: who a captured connection really came from. */
  #podIpByCookie = new Map<bigint, string>();
  /** pod IP → the netns and interface the CNI plugin named for it (no scan needed), and the pod's UID. */
  #cniNetns = new Map<string, PodNetns & { uid: string }>();
  /**
   * Uids of pods whose network the CNI plugin removed (DEL) while the config still lists them:
   * never enrolled again by address (planEnrolment), until a new ADD for the same pod.
   */
  #cniRemoved = new Set<string>();
  /** Uid → why that listed pod is not enrolled (planEnrolment), so each refusal is counted and logged once. */
  #enrolRefused = new Map<string, EnrolmentRefusal>();
  /** Pod IP → why the agent's plaintext listener cannot be opened in that pod (logged once per reason). */
  #listenerFailed = new Map<string, string>();
  /** Those pods' listeners, each tried again on its own timer (nothing else is redone). */
  readonly #listenerRetry = new KeyedRetry<string>(LISTENER_RETRY);
  /** Uid → why that pod's enrolment (or its update) failed, and whether an older enrolment of it stands (logged once per reason). */
  #enrolFailed = new Map<string, { reason: string; stale: boolean }>();
  /** Those pods' enrolments, each tried again on its own timer. */
  readonly #enrolRetry = new KeyedRetry<string>(LISTENER_RETRY);
  #cni: CniServer | undefined;
  /** Called after every config is applied (CNI ADDs waiting for their pod). */
  #configWaiters = new Set<() => void>();
  #retry: NodeJS.Timeout | undefined;
  #configured = false;
  #certsReady = false;
  #accessLog: AccessLogSink;
  /** Access logs to the OTLP collectors the workloads' Telemetry names. */
  #otlpLogs: OtlpLogExporters;
  /** The C heap's free pages and the file pages the agent maps without using them go back (lib/sys/memory.ts). */
  #memory: MemoryRelease | undefined;
  #stopped = false;
  #serveStarted = false;
  /** DEFAULT_AGENT_PORTS, each as AgentOptions.ports may replace it (from start()). */
  #ports: AgentPorts = { ...DEFAULT_AGENT_PORTS };
  #listening = false;
  /** Mesh destinations left out of weft_dests at the last config (past its capacity). */
  #destinationsOverflow = 0;
  #serving: { promise: Promise<void>; resolve: () => void; reject: (err: Error) => void } = Promise.withResolvers<void>();

  constructor(o: AgentOptions) {
    this.o = o;
    this.log = o.logger ?? jsonLogger('agent', o.logLevel ?? 'info');
    // Readiness does not depend on the controller (the last good config keeps serving); this says
    // whether the config stream is up right now.
    const agent = this;
    new Gauge({
      name: 'weft_controller_connected', help: '1 while the config stream to the controller is up, 0 while reconnecting',
      registers: [this.metrics.registry],
      collect() {
        this.set(agent.configStream?.connected ? 1 : 0);
      },
    });
    new Gauge({
      name: 'weft_destinations_overflow', help: 'Mesh destinations (a service VIP and port, a workload address) left out of weft_dests at the last config, past its capacity; other clusters\' are left out first',
      registers: [this.metrics.registry],
      collect() {
        this.set(agent.#destinationsOverflow);
      },
    });
    // Observed by main.ts (a port that cannot be bound is fatal); never an unhandled rejection.
    this.#serving.promise.catch(() => undefined);
    this.state = new AgentState(o.node);
    this.resolver = new PodNetnsResolver(o.podNetnsPrefix !== undefined ? { namePrefix: o.podNetnsPrefix } : {});
    // One write per event-loop turn, not per connection (lib/sys/line-batch.ts).
    const write = o.accessLog ?? stdoutLines();
    const otlp = (this.#otlpLogs = new OtlpLogExporters({ serviceName: 'weft-agent', resource: { 'k8s.node.name': o.node }, ...otlpLogMetrics(this.metrics.registry, (m, f) => this.log.warn(m, f)) }));
    // Every entry reaches /flows (weftctl tap, the dashboard); stdout, and the OTLP collector, as the workload's Telemetry says.
    this.#accessLog = accessLogSink({ node: o.node, write, otlp: (endpoint, text, fields) => otlp.get(endpoint).emit(text, fields), publish: (line, json) => this.flows.publish(line, json) });
  }

  /** Config, certificates and datapath in place, and the data ports listening. */
  get ready(): boolean {
    return this.#prepared && this.#listening;
  }

  get #prepared(): boolean {
    return this.#configured && this.#certsReady && this.datapath !== undefined;
  }

  /**
   * Settles when the data ports (outbound, HBONE) listen, which is once the agent is ready to
   * serve what arrives on them; rejects if they cannot be bound (a fatal error).
   */
  get serving(): Promise<void> {
    return this.#serving.promise;
  }

  async start(): Promise<void> {
    const o = this.o;
    // Left behind by a crashed predecessor in the same container: not ours to claim.
    if (o.readyFile) rmSync(o.readyFile, { force: true });
    const ports = { ...this.#ports, ...o.ports };
    this.#ports = ports;

    // 1. The datapath first: pinned programs keep redirecting while the rest comes up.
    this.datapath = Datapath.open({
      ...(o.pinRoot ? { pinRoot: o.pinRoot } : {}),
      ...(o.cgroupPath ? { cgroupPath: o.cgroupPath } : {}),
      ...(o.objectDir ? { objectDir: o.objectDir } : {}),
    });
    // A round now, so that an addon built before memory.cc fails the start, not a timer later.
    this.#memory = startMemoryRelease();
    this.datapath.setExcludedPorts([...MESH_PORTS, ports.admin, ...(o.excludedPorts ?? [])]);
    this.datapath.setInboundExcludedPorts(o.inboundExcludedPorts ?? []);
    // Sockops files captured clients' sockets for the same-node splice only while it is on. It
    // needs the tracepoints that tell how each pod reads its socket (a splice(2) reader must get
    // nothing redirected): without them the agent carries same-node connections itself.
    let splice = o.splice === true;
    try {
      this.datapath.setSplicing(splice);
    } catch (err) {
      if (!splice) throw err;
      this.log.error('--splice: cannot attach the tracepoints that tell how pods read their sockets; same-node connections are not spliced', { error: (err as Error).message });
      this.datapath.setSplicing(false);
      splice = false;
    }
    if (splice) {
      this.metrics.watchSpliceCounters(() => this.datapath.counters());
      this.#spliceStranded = new StrandedResets((cb) => this.datapath.watchSpliceStranded(cb));
    }
    // Pairs whose sockets closed while a previous agent had them (it died before it removed them).
    const swept = this.datapath.sweepClosedSplices();
    if (swept > 0) this.log.info('removed the splice entries a previous agent left', { entries: swept });
    const kubelet = o.kubeletCgroups ?? findKubeletCgroups(this.datapath.cgroupPath, findCgroup2Root(), '/proc', (p) =>
      this.log.warn('a process named kubelet is not taken for the kubelet: its cgroup gets no probe exemption', { ...p, detail: kubeletRefusalDetail(p.reason) }));
    this.datapath.setProberCgroups(kubelet.map((dir) => cgroupId(dir)));
    if (kubelet.length === 0) this.log.warn('no kubelet cgroup found: kubelet probes into enrolled pods are judged like any other plaintext (set --kubelet-cgroup)');
    this.log.info('datapath loaded', {
      programs: this.datapath.programs().map((p) => p.name), adoptedPods: this.datapath.pods().length,
      kubeletCgroups: kubelet, inboundExcludedPorts: o.inboundExcludedPorts ?? [],
    });
    this.metrics.watchKernelRefusals(() => {
      const counters = this.datapath.counters();
      return Object.fromEntries(REFUSAL_COUNTERS.map((r) => [r, counters[r]]));
    });
    if (o.cniSocket) {
      // Right after the datapath: a pod being created can be enrolled as soon as the config names it.
      this.#cni = new CniServer(this.#cniBackend(), this.log);
      await this.#cni.listen(o.cniSocket);
      this.log.info('CNI socket listening', { path: o.cniSocket });
    }

    // 2. Certificates and the config stream, both from the controller.
    const trustBundle = splitPemCertificates(readFileSync(o.trustBundleFile, 'utf8'));
    if (trustBundle.length === 0) throw new Error(`no certificate in trust bundle file ${o.trustBundleFile}`);
    const controllerId = `spiffe://${o.trustDomain}/ns/${o.controllerNamespace ?? 'weft-system'}/sa/weft-controller`;
    const signer = new GrpcCertificateSigner({
      address: o.controller, trustBundle, serverIdentity: controllerId, token: o.token, trustDomain: o.trustDomain, nodeName: o.node,
      // A new intermediate under the same root: the controller takes node certificates of its own CA only.
      onNodeCertificateDue: () => this.configStream?.renew('signer-changed'),
    });
    this.certs = new CertManager({ signer, trustBundle, ...(o.certLifetimeSeconds ? { lifetimeSeconds: o.certLifetimeSeconds } : {}) });
    this.metrics.watchCertificates(this.certs);
    this.certs.on('renewalFailed', (id, err, retry) => this.log.warn('certificate renewal failed', {
      identity: id, error: err.message, failures: retry.failures,
      retryInMs: retry.retryInMs === undefined ? undefined : Math.round(retry.retryInMs), expiresAt: retry.expiresAt?.toISOString(),
    }));
    this.certs.on('rotated', (info) => this.log.info('certificate issued', { identity: info.identity, serial: info.serial, notAfter: info.notAfter.toISOString() }));

    // Sessions leave from the node address, what receivers check a `for=` claim against.
    this.pool = new HbonePool({
      localAddress: o.nodeIp,
      onSessionThrottled: (e) => this.log.warn('outbound HBONE session holds more than its buffer for pods that do not read: its stream windows shrink until they catch up', {
        source: e.sourceKey, destination: e.dest, heldBytes: e.heldBytes, tunnels: e.tunnels,
      }),
    });
    registerHbonePoolMetrics(this.metrics.registry, () => this.pool.stats());
    this.delivery = new LocalDelivery({ state: this.state, datapath: this.datapath, metrics: this.metrics, log: this.log });
    this.plaintext = new PlaintextInbound({
      node: o.node, state: this.state, datapath: this.datapath, delivery: this.delivery, metrics: this.metrics, log: this.log, accessLog: this.#accessLog,
    });
    this.#refusals = this.datapath.watchRefusals((r) => this.plaintext.kernelRefused(r));
    this.outbound = new Outbound({
      node: o.node, nodeIp: o.nodeIp, state: this.state, datapath: this.datapath, certs: this.certs, pool: this.pool,
      podIpOf: (cookie) => this.#podIpByCookie.get(cookie),
      authorizer: this.delivery, metrics: this.metrics, log: this.log, accessLog: this.#accessLog,
      ...(this.#spliceStranded ? { splice: this.datapath, spliceStranded: this.#spliceStranded } : {}),
    });
    this.inbound = new Inbound({
      node: o.node, trustDomain: o.trustDomain, ...(o.trustDomainAliases ? { trustDomainAliases: o.trustDomainAliases } : {}), state: this.state, delivery: this.delivery, metrics: this.metrics, log: this.log, accessLog: this.#accessLog,
      serverTls: this.certs.serverOptions((sni) => Inbound.selectIdentity(this.state, o.trustDomain, sni)),
      trustBundle: () => this.certs.trustBundle(),
    });
    this.certs.on('trustBundleChanged', () => {
      this.inbound.trustBundleChanged();
      // Root rotation: the config stream verifies the controller with the roots it was opened
      // with and presents a node certificate from the old root; reopen it with the new roots and
      // a node certificate the controller will still accept once the old root is retired.
      if (this.configStream && !this.#stopped) this.configStream.renew('roots-changed');
    });

    this.configStream = new NodeConfigStream({
      node: o.node, controller: o.controller, controllerId, signer, trustBundle: () => this.certs.trustBundle(),
      validate: (config) => validateAgentConfig(config), onConfig: (config, version) => this.#onConfig(config, version), log: this.log,
      renewals: this.metrics.nodeCertificateRenewals,
    });

    // 3. Listeners, all with SO_REUSEPORT: an upgraded agent starts beside the running one and
    // shares its ports. The side doors now; the data ports once this process can serve them
    // (#serveWhenReady): until then the kernel keeps sending connections to the predecessor, or
    // refuses them at once when there is none (a crash), which fails fast rather than leaking.
    const predecessor = isListening(o.nodeIp, ports.outbound);
    const migration = enableRequestMigration();
    if (!migration.enabled) {
      this.log.warn('cannot enable net.ipv4.tcp_migrate_req; connections queued on a stopping agent\'s listeners will be reset', { error: migration.error });
    }
    if (predecessor) {
      this.log.info('another agent listens on this node\'s ports: sharing them until it drains (upgrade)', { outbound: `${o.nodeIp}:${ports.outbound}`, migrateQueuedConnections: migration.enabled });
    }
    const adminRefused = this.metrics.sidePortRefusals('admin', this.log);
    const admin = this.#adminServer(adminRefused);
    // Loopback here is the node's (host network): every process of the node can connect, so only
    // root's sockets (weftctl on the node, kubectl exec and port-forward, which the runtime opens as
    // root) and the agent's own user's are answered. Istio's ztunnel, in a pod network of its own,
    // serves its admin port on that pod's loopback.
    limitSidePort(admin, { refused: adminRefused, ownerUids: [...new Set([0, process.getuid?.() ?? 0])] });
    this.#servers.push(admin);
    await listenHttp(admin, ports.admin, '127.0.0.1', { reusePort: true });
    const metricsRefused = this.metrics.sidePortRefusals('metrics', this.log);
    const prom = jsonServer({}, {
      text: { '/metrics': async () => ({ type: this.metrics.registry.contentType, body: await this.metrics.registry.metrics() }) },
      refused: metricsRefused,
    });
    // The admin port's read-only paths, for weftctl and the dashboard through the API server's pod
    // proxy; with a token file, only for requests that carry the install's token.
    const tokenFile = o.debugTokenFile;
    const access = tokenFile ? {
      token: debugTokenFile(tokenFile),
      refused: debugTokenRefused(metricsRefused),
    } : undefined;
    const metrics = o.debugEndpoints ? createServer(debugThroughAdmin(admin, AGENT_DEBUG_PATHS, (req, res) => prom.emit('request', req, res), access)) : prom;
    limitSidePort(metrics, { refused: metricsRefused });
    this.#servers.push(metrics);
    await listenHttp(metrics, ports.metrics, '0.0.0.0', { reusePort: true });
    const readyRefused = this.metrics.sidePortRefusals('ready', this.log);
    const ready = jsonServer({
      '/healthz/ready': () => {
        if (!this.ready) throw new HttpStatusError(503, this.#notReadyReason());
        return { ready: true };
      },
      '/healthz/live': () => ({ live: true }),
    }, { refused: readyRefused });
    limitSidePort(ready, { refused: readyRefused });
    this.#servers.push(ready);
    await listenHttp(ready, ports.ready, '0.0.0.0', { reusePort: true });
    this.configStream.open();
    this.log.info('agent started', { node: o.node, nodeIp: o.nodeIp, controller: o.controller, ports });
  }

  #notReadyReason(): string {
    if (this.#stopped) return 'stopping';
    if (!this.#configured) return 'no config from the controller yet';
    if (!this.#certsReady) return 'certificates for local workloads not issued yet';
    if (!this.#listening) return 'opening the data ports';
    return 'starting';
  }

  /** Opens the data ports the first time the agent is prepared; then it is ready. */
  #serveWhenReady(): void {
    if (!this.#prepared || this.#listening || this.#stopped || this.#serveStarted) return;
    this.#serveStarted = true;
    const { outbound, hbone } = this.#ports;
    const hboneGateway = PORTS.hboneGateway;
    Promise.all([
      this.outbound.listen(outbound, this.o.nodeIp),
      this.inbound.listen({ hbone, gateway: hboneGateway }, this.o.nodeIp, { reusePort: true }),
    ]).then(
      () => {
        this.#listening = true;
        if (this.o.readyFile) writeFileSync(this.o.readyFile, `${process.pid}\n`);
        this.log.info('agent ready', { outbound: `${this.o.nodeIp}:${outbound}`, hbone: `${this.o.nodeIp}:${hbone}`, hboneGateway: `${this.o.nodeIp}:${hboneGateway}`, pid: process.pid });
        // What start-up alone touched (module loading, the startup snapshot, TLS set-up) goes now.
        this.#memory?.releaseNow();
        this.#serving.resolve();
      },
      (err: Error & { code?: string }) => {
        this.log.error('cannot listen on the data ports', { error: err.message, code: err.code });
        this.#serving.reject(new Error(`cannot listen on ${this.o.nodeIp}:${outbound}, :${hbone} and :${hboneGateway}: ${err.message}`));
      },
    );
  }

  #onConfig(config: AgentConfig, version: string): void {
    this.state.apply(config);
    // What changed judges the open deliveries again (LocalDelivery.configApplied).
    this.delivery.configApplied(config);
    this.#configured = true;
    const destinations = this.state.meshDestinations();
    const { overflow } = this.datapath.setDestinations(destinations);
    const change = overflowChange(this.#destinationsOverflow, overflow);
    if (change === 'started') {
      this.log.warn('mesh destinations past the capacity of weft_dests: the last listed (other clusters\' first, then of the namespaces whose Services claim the most) are not redirected, counted in weft_destinations_overflow; lower the remote clusters\' import quota (controller --remote-max-services, --remote-max-endpoints, --remote-max-destinations), or the Services or ports of the namespaces named', { overflow, capacity: MAX_DESTS, namespaces: overflowNamespaces(destinations, overflow) });
    } else if (change === 'ended') {
      this.log.info('mesh destinations fit in weft_dests again: every one is redirected', { capacity: MAX_DESTS });
    }
    this.#destinationsOverflow = overflow;
    this.#reconcilePods();
    for (const wake of [...this.#configWaiters]) wake();
    const local = this.state.localWorkloads().filter((w) => w.enrolled);
    const ids = new Set(local.map((w) => w.spiffeId));
    for (const info of this.certs.list()) if (!ids.has(info.identity)) this.certs.forget(info.identity);
    Promise.all([...ids].map((id) => this.certs.get(id))).then(
      () => {
        this.#certsReady = true;
        this.#serveWhenReady();
      },
      (err: Error) => this.log.warn('cannot get certificates for local workloads yet', { error: err.message }),
    );
    this.log.info('config applied', { version, workloads: config.workloads.length, services: config.services.length, policies: config.policies.length, enrolled: this.#enrolled.size });
  }

  /** Enrols every local ambient pod whose netns is found; unenrols the rest; retries the missing. */
  #reconcilePods(): void {
    clearTimeout(this.#retry);
    const ambient = this.state.localWorkloads().filter((w) => w.enrolled);
    const wanted = ambient.filter((w) => w.ip);
    const wantedIps = new Set(wanted.map((w) => w.ip));
    // Pods the CNI plugin enrolled before the config has their address stay enrolled.
    const pendingUids = new Set(ambient.filter((w) => !w.ip).map((w) => w.uid));
    const keep = new Set<bigint>();
    for (const [ip, ns] of this.#cniNetns) {
      if (wantedIps.has(ip)) continue;
      const cookie = this.#enrolled.get(ip);
      if (pendingUids.has(ns.uid) && cookie !== undefined) keep.add(cookie);
      else this.#cniNetns.delete(ip);
    }
    // A pod whose network the CNI plugin removed is gone for good once the config drops it too.
    const localUids = new Set(this.state.localWorkloads().map((w) => w.uid));
    for (const uid of this.#cniRemoved) if (!localUids.has(uid)) this.#cniRemoved.delete(uid);
    for (const uid of this.#enrolRefused.keys()) if (!localUids.has(uid)) this.#enrolRefused.delete(uid);
    const wantedUids = new Set(wanted.map((w) => w.uid));
    for (const uid of [...this.#enrolFailed.keys()]) if (!wantedUids.has(uid)) this.#enrolSucceeded(uid);
    const plan = planEnrolment(wanted, this.#cniNetns, (ips) => this.resolver.resolve(ips), this.#cniRemoved);
    for (const w of plan.missing) {
      const cookie = this.#enrolled.get(w.ip);
      if (cookie !== undefined) keep.add(cookie);
    }
    for (const { workload: w, ns } of plan.enrol) {
      this.#enrolRefused.delete(w.uid);
      const cookie = this.#enrolOne(w, ns);
      if (cookie !== undefined) keep.add(cookie);
    }
    for (const { workload: w, reason, holder } of plan.refused) {
      // The address's namespace stays with the pod the CNI plugin enrolled there, if any.
      const cookie = reason === 'address_reused' && this.#cniNetns.get(w.ip)?.uid === holder ? this.#enrolled.get(w.ip) : undefined;
      if (cookie !== undefined) keep.add(cookie);
      if (this.#enrolRefused.get(w.uid) === reason) continue;
      this.#enrolRefused.set(w.uid, reason);
      this.metrics.enrolmentRefused.inc({ reason });
      this.log.warn('pod not enrolled at its address: the config names a pod that no longer holds it', {
        pod: `${w.namespace}/${w.name}`, uid: w.uid, ip: w.ip, reason, ...(holder ? { holderUid: holder } : {}),
        detail: reason === 'address_reused' ? 'the address is another pod\'s (the CNI plugin set it up for that pod, or the processes holding it run in its cgroup); the config is older than that pod' : 'the CNI plugin removed this pod\'s network; its address may be another pod\'s now',
      });
    }
    const missing = plan.missing.length;
    for (const ip of this.#listenerFailed.keys()) {
      if (wantedIps.has(ip)) continue;
      this.#listenerFailed.delete(ip);
      this.#listenerRetry.succeeded(ip);
    }
    for (const cookie of this.datapath.prune(keep)) this.#unenrolled(cookie);
    if (missing > 0) this.#retryEnrolment();
  }

  #retryEnrolment(): void {
    clearTimeout(this.#retry);
    this.#retry = setTimeout(() => this.#reconcilePods(), ENROL_RETRY_MS).unref();
  }

  /**
   * Opens (or keeps) the agent's plaintext listener in an enrolled pod. One that cannot be opened
   * (its address taken inside the pod while no agent held it) leaves the pod enrolled, its
   * plaintext refused in the kernel (lookup_no_agent; a STRICT pod's SYNs RST first), and is tried
   * again alone, on its own timer (LISTENER_RETRY): failing the enrolment instead took the pod out
   * of the mesh, open to plaintext from anyone, and a full reconcile every second walked /proc and
   * re-enrolled every pod for one squatter.
   */
  #openPlaintext(w: Workload, ns: PodNetns): void {
    try {
      this.plaintext.open(w.ip, ns.path);
    } catch (err) {
      const reason = (err as { code?: string }).code ?? 'error';
      this.metrics.plaintextListenerFailures.inc({ reason });
      if (this.#listenerFailed.get(w.ip) !== reason) {
        this.log.warn('cannot open the plaintext listener in a pod', {
          pod: `${w.namespace}/${w.name}`, ip: w.ip, reason, error: (err as Error).message,
          detail: 'the pod stays enrolled and its plaintext is refused until the listener opens; tried again after 1 s, doubling to 30 s',
        });
      }
      this.#listenerFailed.set(w.ip, reason);
      this.#listenerRetry.failed(w.ip, () => { if (!this.#stopped) this.#openPlaintext(w, ns); });
      return;
    }
    this.#listenerRetry.succeeded(w.ip);
    if (this.#listenerFailed.delete(w.ip)) this.log.info('plaintext listener opened in a pod', { pod: `${w.namespace}/${w.name}`, ip: w.ip });
  }

  /**
   * Enrols (or updates) one pod; returns the cookie of the enrolment it has afterwards, if any.
   * An update that throws (weft_port_modes full, say) leaves the enrolment the pod's netns already
   * has, found by its netns cookie among the pinned enrolments (a restarted agent's predecessor
   * made it, or this agent; never by address, which may be a deleted pod's): unenrolling it would
   * leave the pod's plaintext unjudged. The failure is counted, logged once per pod and reason,
   * counted in weft_pods_enrolment_stale while an old enrolment stands, and this pod alone is
   * tried again on its own timer (ENROL_FAILED_RETRY).
   */
  #enrolOne(w: Workload, ns: PodNetns): bigint | undefined {
    try {
      const cookie = this.#enrollPod(w, ns);
      this.#enrolSucceeded(w.uid, w);
      return cookie;
    } catch (err) {
      const reason = (err as { code?: string }).code ?? 'error';
      this.metrics.enrolmentFailures.inc({ reason });
      let own: bigint | undefined;
      try {
        own = netnsCookie(ns.path);
      } catch {
        /* the pod's namespace is gone: nothing of it to keep */
      }
      const held = own !== undefined && this.datapath.pods().some((p) => p.netnsCookie === own) ? own : undefined;
      if (held !== undefined) this.#adoptEnrolment(w, ns, held);
      const before = this.#enrolFailed.get(w.uid);
      if (before?.reason !== reason || before.stale !== (held !== undefined)) {
        const fields = { pod: `${w.namespace}/${w.name}`, ip: w.ip, reason, error: (err as Error).message, detail: 'tried again after 1 s, doubling to 30 s' };
        if (held !== undefined) this.log.warn('cannot enrol pod again; its enrolment stays as it was', { ...fields, netnsCookie: held.toString() });
        else this.log.warn('cannot enrol pod', fields);
      }
      this.#enrolFailed.set(w.uid, { reason, stale: held !== undefined });
      this.#setStaleGauge();
      this.#enrolRetry.failed(w.uid, () => {
        if (this.#stopped) return;
        const now = this.state.localWorkloads().find((l) => l.uid === w.uid && l.enrolled && l.ip === w.ip);
        if (now) this.#enrolOne(now, ns);
        else this.#enrolSucceeded(w.uid);
      });
      return held;
    }
  }

  /** `uid` is enrolled as its config says, or no longer wanted: no more retries, not stale. */
  #enrolSucceeded(uid: string, w?: Workload): void {
    this.#enrolRetry.succeeded(uid);
    if (!this.#enrolFailed.delete(uid)) return;
    this.#setStaleGauge();
    if (w) this.log.info('pod enrolled again as its config says', { pod: `${w.namespace}/${w.name}`, ip: w.ip });
  }

  #setStaleGauge(): void {
    this.metrics.podsEnrolmentStale.set([...this.#enrolFailed.values()].filter((f) => f.stale).length);
  }

  /** The agent takes on enrolment `cookie`, which the datapath holds for pod `w` in `ns`: it serves the pod from now on. */
  #adoptEnrolment(w: Workload, ns: PodNetns, cookie: bigint): void {
    this.state.podEnrolled(w.ip, w.uid);
    this.delivery.podEnrolled(w.ip, ns.path);
    // Plaintext into the pod is steered here from now on; without a listener it is refused.
    this.#openPlaintext(w, ns);
    this.#recordEnrolled(w.ip, cookie);
  }

  /** Enrols one local workload in the netns given; returns its netns cookie. Throws what enroll() throws. */
  #enrollPod(w: Workload, ns: PodNetns): bigint {
    const portModes = Object.fromEntries(Object.entries(w.portModes ?? {}).map(([p, m]) => [Number(p), m]));
    const pod = this.datapath.enroll({ netnsPath: ns.path, podIp: w.ip, mode: w.mode, portModes, agentIp: this.o.nodeIp, agentPort: this.#ports.outbound, ifname: ns.ifname });
    if (this.#enrolled.get(w.ip) !== pod.netnsCookie) this.log.info('pod enrolled', { pod: `${w.namespace}/${w.name}`, ip: w.ip, mode: w.mode, portModes, netns: ns.path });
    this.#adoptEnrolment(w, ns, pod.netnsCookie);
    return pod.netnsCookie;
  }

  /** The local workload a CNI call names: by pod UID when the runtime passes one, else by name. */
  #cniWorkload(pod: Pick<CniPod, 'namespace' | 'name' | 'uid'>): Workload | undefined {
    return this.state.localWorkloads().find((w) =>
      pod.uid !== undefined ? w.uid === pod.uid : w.namespace === pod.namespace && w.name === pod.name);
  }

  /** Resolves with the workload once a config names it, or undefined after `ms`. */
  #awaitCniWorkload(pod: CniPod, ms: number): Promise<Workload | undefined> {
    const now = this.#configured ? this.#cniWorkload(pod) : undefined;
    if (now) return Promise.resolve(now);
    return new Promise((resolve) => {
      const done = (w: Workload | undefined) => {
        clearTimeout(timer);
        this.#configWaiters.delete(wake);
        resolve(w);
      };
      const wake = () => {
        const w = this.#cniWorkload(pod);
        if (w) done(w);
      };
      const timer = setTimeout(() => done(undefined), ms);
      this.#configWaiters.add(wake);
    });
  }

  #cniBackend(): CniBackend {
    return {
      add: async (pod) => {
        const waitMs = this.o.cniWaitMs ?? DEFAULT_CNI_WAIT_MS;
        const w = await this.#awaitCniWorkload(pod, waitMs);
        if (!w) {
          throw new CniError(CNI_ERROR.tryAgainLater,
            `pod ${pod.namespace}/${pod.name} is not in node ${this.o.node}'s mesh config after ${waitMs} ms (is the controller up and does it see the pod?); the kubelet retries`,
            this.#configured ? `config ${this.configStream?.version ?? ''}` : 'no config from the controller yet');
        }
        if (!w.enrolled) return { enrolled: false };
        // The config has no address for a pod whose network is being set up right now (Kubernetes
        // records it after this call); the network plugin's result says which it got.
        const ip = w.ip || pod.ips[0];
        if (!ip) throw new CniError(CNI_ERROR.invalidConfig, `pod ${pod.namespace}/${pod.name}: prevResult has no IPv4 address and the mesh config none either`);
        if (pod.ips.length > 0 && !pod.ips.includes(ip)) {
          throw new CniError(CNI_ERROR.enrolmentFailed, `pod ${pod.namespace}/${pod.name} was given ${pod.ips.join(', ')} but the mesh config says ${ip}`);
        }
        const ns: PodNetns = { path: pod.netns, ifname: pod.ifname };
        try {
          this.#enrollPod({ ...w, ip }, ns);
        } catch (err) {
          throw new CniError(CNI_ERROR.enrolmentFailed, `cannot enrol pod ${pod.namespace}/${pod.name}: ${(err as Error).message}`, (err as { code?: string }).code);
        }
        this.#cniNetns.set(ip, { ...ns, uid: w.uid });
        this.#cniRemoved.delete(w.uid);
        return { enrolled: true, mode: w.mode };
      },
      del: async (pod) => {
        // The pod's enrolment: the one the plugin reported in this namespace, else (a pod a scan
        // enrolled: it ran before this agent) the one under its uid; its network is gone all the
        // same, and so is its claim to its address. Only by uid: a name may already be a
        // re-created pod's.
        const reported: Array<{ ip: string; uid: string }> = [];
        for (const [ip, ns] of this.#cniNetns) {
          if (ns.path !== pod.netns) continue;
          this.#cniNetns.delete(ip);
          reported.push({ ip, uid: ns.uid });
        }
        const w = reported.length === 0 && pod.uid !== undefined ? this.state.localWorkloads().find((l) => l.uid === pod.uid) : undefined;
        const removed = w?.enrolled ? [{ ip: w.ip, uid: w.uid }] : reported;
        let gone: bigint | undefined;
        try {
          if (removed.length > 0) gone = netnsCookie(pod.netns);
        } catch {
          /* the runtime removed the namespace already: the next reconcile unenrols the address */
        }
        for (const { ip, uid } of removed) {
          this.#cniRemoved.add(uid);
          const cookie = ip ? this.#enrolled.get(ip) : undefined;
          // Only the pod's own enrolment: a DEL repeated late (runtimes call it again when they
          // remove a sandbox) must not unenrol the next pod given the address.
          const own = cookie !== undefined && this.state.enrolledUid(ip) === uid && (gone === undefined || gone === cookie);
          if (own && this.datapath.unenroll(cookie)) this.#unenrolled(cookie, { pod: w ? `${w.namespace}/${w.name}` : `${pod.namespace ?? '?'}/${pod.name ?? '?'}`, ip });
        }
      },
      check: async (pod) => {
        const w = this.#cniWorkload(pod);
        if (!w || !w.enrolled) return;
        let cookie: bigint;
        try {
          cookie = netnsCookie(pod.netns);
        } catch (err) {
          throw new CniError(CNI_ERROR.notEnrolled, `pod ${pod.namespace}/${pod.name}: cannot read its network namespace ${pod.netns}`, (err as Error).message);
        }
        if (this.#enrolled.get(w.ip) !== cookie) {
          throw new CniError(CNI_ERROR.notEnrolled, `ambient pod ${pod.namespace}/${pod.name} is not enrolled in the datapath`);
        }
      },
    };
  }

  #recordEnrolled(ip: string, cookie: bigint): void {
    const previous = this.#enrolled.get(ip);
    if (previous !== undefined && previous !== cookie) this.#podIpByCookie.delete(previous);
    this.#enrolled.set(ip, cookie);
    this.#podIpByCookie.set(cookie, ip);
  }

  /** The datapath no longer holds enrolment `cookie` (a CNI DEL, or pruned): the agent forgets it and says so. */
  #unenrolled(cookie: bigint, pod: { pod?: string; ip?: string } = {}): void {
    const ip = this.#podIpByCookie.get(cookie);
    this.#podIpByCookie.delete(cookie);
    if (ip !== undefined && this.#enrolled.get(ip) === cookie) {
      this.#enrolled.delete(ip);
      this.state.podUnenrolled(ip);
      this.delivery.podRemoved(ip);
      this.plaintext.close(ip);
      this.#listenerFailed.delete(ip);
      this.#listenerRetry.succeeded(ip);
    }
    this.log.info('pod unenrolled', { ...pod, netnsCookie: cookie.toString() });
  }

  #adminServer(refused: OnSidePortRefusal): import('node:http').Server {
    return jsonServer({
      '/': () => ({ node: this.o.node, paths: ['/config_dump', '/certs', '/bpf', '/stats', '/logging', '/flows'] }),
      '/config_dump': () => ({ node: this.o.node, version: this.configStream?.version ?? '', controllerConnected: this.configStream?.connected ?? false, config: this.state.current, enrolled: Object.fromEntries(this.#enrolled) }),
      '/certs': () => ({ trustBundle: this.certs.trustBundle().length, certificates: this.certs.list() }),
      '/bpf': () => ({
        pinRoot: this.datapath.pinRoot,
        programs: this.datapath.programs(),
        links: this.datapath.cgroupLinks(),
        pods: this.datapath.pods(),
        destinations: this.datapath.destinations(),
        excludedPorts: this.datapath.excludedPorts(),
        inboundExcludedPorts: this.datapath.inboundExcludedPorts(),
        kubeletCgroups: this.datapath.proberCgroups().map(String),
        plaintextListeners: this.plaintext.pods().map((ip) => ({ podIp: ip, registered: this.datapath.hasPodListener(ip) })),
        counters: this.datapath.counters(),
        refusals: Object.fromEntries(REFUSAL_COUNTERS.map((r) => [r, this.datapath.counters()[r]])),
        podCounters: this.datapath.podCounters(),
        spliced: this.datapath.splicedConnections().map((s) => ({
          ...s, clientPod: this.#podIpByCookie.get(s.clientNetnsCookie) ?? '',
          reads: { client: spliceReaderNames(s.reads.client), server: spliceReaderNames(s.reads.server) },
        })),
        pins: Object.fromEntries(['weft_pods', 'weft_inbound_pods', 'weft_dests', 'weft_inbound_excluded', 'weft_probers', 'weft_counters', 'weft_pod_counters', 'weft_spliced', 'weft_splice_sk', 'weft_splice_reader'].map((m) => [m, this.datapath.mapPin(m)])),
      }),
      '/stats': () => ({ hbonePool: this.pool.stats(), hboneServer: this.inbound.server.stats(), outboundConnections: this.outbound.active, flows: this.flows.stats(), memory: process.memoryUsage(), malloc: mallocInfo(), filePagesReleased: this.#memory?.last ?? null, readPool: readPoolStats() }),
    }, { raw: { '/flows': (req, res) => this.flows.serve(req, res) }, refused });
  }

  /**
   * Stops accepting at once (a successor sharing the ports gets every new connection, and the
   * kernel moves those queued on ours to it), lets open connections and tunnels finish for up to
   * `drainMs` (default the agent's drain timeout), then cuts what is left. The datapath stays
   * pinned: enrolled pods stay redirected.
   */
  async stop(drainMs = this.o.drainTimeoutMs ?? DEFAULT_DRAIN_TIMEOUT_MS): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#retry);
    this.#listenerRetry.clear();
    this.#enrolRetry.clear();
    this.#memory?.stop();
    this.configStream?.close();
    void this.#cni?.close();
    if (this.o.readyFile) rmSync(this.o.readyFile, { force: true });
    for (const s of this.#servers) {
      s.close();
      s.closeAllConnections();
    }
    const started = Date.now();
    const hboneSessions = this.inbound?.server.stats().sessionsActive ?? 0;
    this.log.info('draining', { outboundConnections: this.outbound?.active ?? 0, hboneSessions, drainTimeoutMs: drainMs });
    const [outboundCut, hboneCut] = await Promise.all([this.outbound?.close(drainMs) ?? 0, this.inbound?.server.close(drainMs) ?? 0]);
    this.log.info('drained', { ms: Date.now() - started, outboundConnectionsCut: outboundCut, hboneSessionsCut: hboneCut });
    this.#refusals?.close();
    this.#spliceStranded?.close();
    await this.#otlpLogs.shutdown();
    this.plaintext?.closeAll();
    this.pool?.close();
    this.certs?.close();
    this.datapath?.close();
  }
}
