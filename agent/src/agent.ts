// The node agent: one per node. It loads the datapath, follows the controller's config for this
// node, enrols the node's ambient pods into the datapath, holds their certificates, and runs the
// outbound (15001) and inbound HBONE (15008) proxies plus admin, metrics and readiness.
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { Gauge } from 'prom-client';
import { jsonLogger, type Logger, type LogLevel } from '../../lib/log.ts';
import { HbonePool } from '../../lib/hbone/index.ts';
import { agentConfigClient, type ConfigClient } from '../../lib/xds/index.ts';
import { spiffeIdOfCertificate, splitPemCertificates } from '../../lib/identity/index.ts';
import type { AgentConfig } from '../../lib/model/mesh.ts';
import { Datapath, MESH_PORTS } from './datapath/index.ts';
import { CertManager, GrpcCertificateSigner } from './certs/index.ts';
import { AgentState, validateAgentConfig } from './state.ts';
import { AgentMetrics, formatAccessLog, type AccessLogSink } from './metrics.ts';
import { Outbound } from './outbound.ts';
import { Inbound, InboundAuthorizer } from './inbound.ts';
import { PodNetnsResolver } from './pods.ts';
import { HttpStatusError, jsonServer, listen } from './admin.ts';
import { FlowTap } from '../../lib/tap.ts';
import { enableRequestMigration, isListening } from '../../lib/sys/listeners.ts';

export const ADMIN_PORT = 15000;
export const OUTBOUND_PORT = 15001;
export const HBONE_PORT = 15008;
export const METRICS_PORT = 15020;
export const READY_PORT = 15021;
/** How often the agent looks again for pods it knows of but could not find a netns for. */
export const ENROL_RETRY_MS = 1_000;
/** How long a stopping agent lets its open connections finish (below the DaemonSet's 30 s grace). */
export const DEFAULT_DRAIN_TIMEOUT_MS = 20_000;

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
  /** Namespace the controller runs in (its SPIFFE ID). Default weft-system. */
  controllerNamespace?: string;
  cgroupPath?: string;
  pinRoot?: string;
  objectDir?: string;
  /** Look for pod namespaces only among named ones with this prefix (local mode); default: all. */
  podNetnsPrefix?: string;
  /** Extra destination ports the datapath never redirects. */
  excludedPorts?: number[];
  /** Requested lifetime of workload certificates (renewed at half-life); default the CA's (24 h). */
  certLifetimeSeconds?: number;
  ports?: Partial<{ outbound: number; hbone: number; admin: number; metrics: number; ready: number }>;
  /** How long stop() lets open connections finish before cutting them. Default 20 s. */
  drainTimeoutMs?: number;
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
  xds: ConfigClient<'agent'> | undefined;
  pool!: HbonePool;
  outbound!: Outbound;
  inbound!: Inbound;
  #servers: import('node:http').Server[] = [];
  /** pod IP → netns cookie of what this agent enrolled. */
  #enrolled = new Map<string, bigint>();
  #retry: NodeJS.Timeout | undefined;
  #configured = false;
  #certsReady = false;
  #accessLog: AccessLogSink;
  #signer!: GrpcCertificateSigner;
  #controllerId = '';
  #xdsTimer: NodeJS.Timeout | undefined;
  #stopped = false;
  #serveStarted = false;
  #ports = { outbound: OUTBOUND_PORT, hbone: HBONE_PORT, admin: ADMIN_PORT, metrics: METRICS_PORT, ready: READY_PORT };
  #listening = false;
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
        this.set(agent.xds?.connected ? 1 : 0);
      },
    });
    // Observed by main.ts (a port that cannot be bound is fatal); never an unhandled rejection.
    this.#serving.promise.catch(() => undefined);
    this.state = new AgentState(o.node);
    this.resolver = new PodNetnsResolver(o.podNetnsPrefix !== undefined ? { namePrefix: o.podNetnsPrefix } : {});
    const write = o.accessLog ?? ((l: string) => process.stdout.write(l + '\n'));
    // Every entry reaches /flows (weftctl tap, the dashboard); stdout as the workload's Telemetry says.
    this.#accessLog = (entry, logging) => {
      const line = { time: new Date().toISOString(), type: 'access', node: o.node, ...entry };
      if (!logging?.disabled) write(formatAccessLog(line, logging?.encoding));
      this.flows.publish(line);
    };
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
    this.datapath.setExcludedPorts([...MESH_PORTS, ports.admin, ...(o.excludedPorts ?? [])]);
    this.log.info('datapath loaded', { programs: this.datapath.programs().map((p) => p.name), adoptedPods: this.datapath.pods().length });

    // 2. Certificates and the config stream, both from the controller.
    const trustBundle = splitPemCertificates(readFileSync(o.trustBundleFile, 'utf8'));
    if (trustBundle.length === 0) throw new Error(`no certificate in trust bundle file ${o.trustBundleFile}`);
    const controllerId = `spiffe://${o.trustDomain}/ns/${o.controllerNamespace ?? 'weft-system'}/sa/weft-controller`;
    const signer = new GrpcCertificateSigner({ address: o.controller, trustBundle, serverIdentity: controllerId, token: o.token, trustDomain: o.trustDomain, nodeName: o.node });
    this.certs = new CertManager({ signer, trustBundle, ...(o.certLifetimeSeconds ? { lifetimeSeconds: o.certLifetimeSeconds } : {}) });
    this.metrics.watchCertificates(this.certs);
    this.certs.on('renewalFailed', (id, err, retry) => this.log.warn('certificate renewal failed', {
      identity: id, error: err.message, failures: retry.failures,
      retryInMs: retry.retryInMs === undefined ? undefined : Math.round(retry.retryInMs), expiresAt: retry.expiresAt?.toISOString(),
    }));
    this.certs.on('rotated', (info) => this.log.info('certificate issued', { identity: info.identity, serial: info.serial, notAfter: info.notAfter.toISOString() }));

    this.pool = new HbonePool();
    const authorizer = new InboundAuthorizer({ state: this.state, datapath: this.datapath, nodeIp: o.nodeIp, metrics: this.metrics, log: this.log });
    this.outbound = new Outbound({
      node: o.node, nodeIp: o.nodeIp, state: this.state, datapath: this.datapath, certs: this.certs, pool: this.pool,
      authorizer, metrics: this.metrics, log: this.log, accessLog: this.#accessLog,
    });
    this.inbound = new Inbound({
      node: o.node, trustDomain: o.trustDomain, state: this.state, authorizer, metrics: this.metrics, log: this.log, accessLog: this.#accessLog,
      serverTls: this.certs.serverOptions((sni) => Inbound.selectIdentity(this.state, o.trustDomain, sni)),
      trustBundle: () => this.certs.trustBundle(),
    });
    this.certs.on('trustBundleChanged', () => {
      this.inbound.trustBundleChanged();
      // Root rotation: the config stream verifies the controller with the roots it was opened
      // with and presents a node certificate from the old root; reopen it with the new roots and
      // a node certificate the controller will still accept once the old root is retired.
      if (this.xds && !this.#stopped) {
        this.log.info('trust bundle changed: reopening the config stream with the new roots', { roots: this.certs.trustBundle().length });
        this.#connectConfig(0);
      }
    });

    this.#signer = signer;
    this.#controllerId = controllerId;

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
    this.#servers.push(this.#adminServer());
    await listen(this.#servers[0]!, ports.admin, '127.0.0.1');
    const metrics = jsonServer({}, { text: { '/metrics': async () => ({ type: this.metrics.registry.contentType, body: await this.metrics.registry.metrics() }) } });
    this.#servers.push(metrics);
    await listen(metrics, ports.metrics, '0.0.0.0');
    const ready = jsonServer({
      '/healthz/ready': () => {
        if (!this.ready) throw new HttpStatusError(503, this.#notReadyReason());
        return { ready: true };
      },
      '/healthz/live': () => ({ live: true }),
    });
    this.#servers.push(ready);
    await listen(ready, ports.ready, '0.0.0.0');
    this.#connectConfig(0);
    this.log.info('agent started', { node: o.node, nodeIp: o.nodeIp, controller: o.controller, ports });
  }

  /**
   * (Re)opens the config stream with this node's certificate, so the controller can tell which
   * node is asking; again whenever that certificate is renewed. Until the first stream is up the
   * agent keeps retrying with backoff; an open stream keeps serving the last good config.
   */
  #connectConfig(attempt: number): void {
    const o = this.o;
    this.#signer.nodeCredentials().then(
      (node) => {
        if (this.#stopped) return;
        const controllerId = this.#controllerId;
        const verify: grpc.VerifyOptions = {
          checkServerIdentity: (_host, cert) => {
            try {
              const id = spiffeIdOfCertificate(cert);
              return id.uri === controllerId ? undefined : new Error(`controller at ${o.controller} presented ${id.uri}, expected ${controllerId}`);
            } catch (err) {
              return err as Error;
            }
          },
        };
        const roots = Buffer.from(this.certs.trustBundle().join(''));
        const client = agentConfigClient({
          target: o.controller,
          credentials: grpc.credentials.createSsl(roots, Buffer.from(node.keyPem), Buffer.from(node.certChain.join('')), verify),
          channelOptions: { 'grpc.ssl_target_name_override': 'weft-controller' },
          id: o.node,
          validate: (config) => validateAgentConfig(config),
        });
        client.on('snapshot', (config, version) => this.#onConfig(config, version));
        client.on('rejected', (err) => this.log.warn('config rejected, keeping the last good one', { error: err.message }));
        client.on('disconnected', (err) => this.log.warn('config stream disconnected; serving the last good config', { error: err?.message }));
        client.start();
        const previous = this.xds;
        this.xds = client;
        previous?.close();
        clearTimeout(this.#xdsTimer);
        this.#xdsTimer = setTimeout(() => this.#connectConfig(0), Math.max(node.renewAt - Date.now(), 1_000) + 1_000).unref();
      },
      (err: Error) => {
        if (this.#stopped) return;
        const delay = Math.min(250 * 2 ** attempt, 30_000);
        this.log.warn('cannot get the node certificate for the config stream; retrying', { error: err.message, retryInMs: delay });
        clearTimeout(this.#xdsTimer);
        this.#xdsTimer = setTimeout(() => this.#connectConfig(attempt + 1), delay).unref();
      },
    );
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
    Promise.all([
      this.outbound.listen(outbound, this.o.nodeIp),
      this.inbound.server.listen(hbone, this.o.nodeIp, { reusePort: true }),
    ]).then(
      () => {
        this.#listening = true;
        if (this.o.readyFile) writeFileSync(this.o.readyFile, `${process.pid}\n`);
        this.log.info('agent ready', { outbound: `${this.o.nodeIp}:${outbound}`, hbone: `${this.o.nodeIp}:${hbone}`, pid: process.pid });
        this.#serving.resolve();
      },
      (err: Error & { code?: string }) => {
        this.log.error('cannot listen on the data ports', { error: err.message, code: err.code });
        this.#serving.reject(new Error(`cannot listen on ${this.o.nodeIp}:${outbound} and :${hbone}: ${err.message}`));
      },
    );
  }

  #onConfig(config: AgentConfig, version: string): void {
    this.state.apply(config);
    this.#configured = true;
    this.datapath.setDestinations(this.state.meshDestinations());
    this.#reconcilePods();
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
    const wanted = this.state.localWorkloads().filter((w) => w.enrolled && w.ip);
    const found = this.resolver.resolve(wanted.map((w) => w.ip));
    const keep = new Set<bigint>();
    let missing = 0;
    for (const w of wanted) {
      const ns = found.get(w.ip);
      if (!ns) {
        missing++;
        const cookie = this.#enrolled.get(w.ip);
        if (cookie !== undefined) keep.add(cookie);
        continue;
      }
      try {
        const pod = this.datapath.enroll({ netnsPath: ns.path, podIp: w.ip, mode: w.mode, agentIp: this.o.nodeIp, agentPort: this.o.ports?.outbound ?? OUTBOUND_PORT, nodeIps: [this.o.nodeIp], ifname: ns.ifname });
        if (!this.#enrolled.has(w.ip)) this.log.info('pod enrolled', { pod: `${w.namespace}/${w.name}`, ip: w.ip, mode: w.mode, netns: ns.path });
        this.#enrolled.set(w.ip, pod.netnsCookie);
        keep.add(pod.netnsCookie);
      } catch (err) {
        this.log.warn('cannot enrol pod', { pod: `${w.namespace}/${w.name}`, ip: w.ip, error: (err as Error).message });
      }
    }
    for (const cookie of this.datapath.prune(keep)) {
      for (const [ip, c] of this.#enrolled) if (c === cookie) this.#enrolled.delete(ip);
      this.log.info('pod unenrolled', { netnsCookie: cookie.toString() });
    }
    if (missing > 0) this.#retry = setTimeout(() => this.#reconcilePods(), ENROL_RETRY_MS).unref();
  }

  #adminServer(): import('node:http').Server {
    return jsonServer({
      '/': () => ({ node: this.o.node, paths: ['/config_dump', '/certs', '/bpf', '/stats', '/logging', '/flows'] }),
      '/config_dump': () => ({ node: this.o.node, version: this.xds?.version ?? '', controllerConnected: this.xds?.connected ?? false, config: this.state.current, enrolled: Object.fromEntries(this.#enrolled) }),
      '/certs': () => ({ trustBundle: this.certs.trustBundle().length, certificates: this.certs.list() }),
      '/bpf': () => ({
        pinRoot: this.datapath.pinRoot,
        programs: this.datapath.programs(),
        links: this.datapath.cgroupLinks(),
        pods: this.datapath.pods(),
        destinations: this.datapath.destinations(),
        excludedPorts: this.datapath.excludedPorts(),
        counters: this.datapath.counters(),
        podCounters: this.datapath.podCounters(),
        pins: Object.fromEntries(['weft_pods', 'weft_dests', 'weft_counters', 'weft_pod_counters'].map((m) => [m, this.datapath.mapPin(m)])),
      }),
      '/stats': () => ({ hbonePool: this.pool.stats(), hboneServer: this.inbound.server.stats(), outboundConnections: this.outbound.active, flows: this.flows.stats(), memory: process.memoryUsage() }),
    }, { raw: { '/flows': (req, res) => this.flows.serve(req, res) } });
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
    clearTimeout(this.#xdsTimer);
    this.xds?.close();
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
    this.pool?.close();
    this.certs?.close();
    this.datapath?.close();
  }
}
