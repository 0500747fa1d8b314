// Plaintext inbound: the connections the kernel steers to the agent. weft_lookup (an sk_lookup
// program on each enrolled pod's network namespace) hands every TCP connection that enters the pod
// from outside its namespace, and is not a kubelet probe or an explicitly excluded port, to the
// agent's listener inside that namespace. They come from anywhere but the mesh: another node, a pod
// outside the mesh, a process on the node. The accepted socket's local address is the pod's
// address and port the client dialled; its peer is the real client.
//
// Judged with no principal (there is no identity without mTLS), exactly as Istio's ztunnel judges
// plaintext on its inbound passthrough:
//   - STRICT (the pod's mode, or the port's portLevelMtls) refuses it;
//   - PERMISSIVE delivers it only where the pod's AuthorizationPolicies allow a caller without an
//     identity (an ALLOW that names principals or namespaces refuses it), and counts it as
//     plaintext (connection_security_policy="none").
import net from 'node:net';
import { closeSync } from 'node:fs';
import { LogBudget, type Logger, REFUSAL_LOG_PER_SECOND } from '../../lib/log.ts';
import { adoptWithPooledReads, pipeBidirectional } from '../../lib/hbone/index.ts';
import { createSocketInNetns } from '../libbpf/index.ts';
import type { AgentState } from './state.ts';
import { ConnectionRecord, inboundService, type AccessLogSink, type AgentMetrics } from './metrics.ts';
import { DeniedError, type LocalDelivery } from './delivery.ts';
import { dryRunLogFields } from '../../lib/policy/authz.ts';
import { unmapV4, type Refusal } from './datapath/codecs.ts';
import { PORTS } from '../../lib/defaults.ts';

const KERNEL_REASONS: Record<string, { denied: string; policy?: string }> = {
  strict_denied: { denied: 'plaintext to a STRICT pod or port: RST in the kernel', policy: 'mtls:STRICT' },
  fragment_dropped: { denied: 'IPv4 fragment to a STRICT pod: dropped in the kernel', policy: 'mtls:STRICT' },
  header_unreadable: { denied: 'TCP header cannot be read: dropped in the kernel' },
  ipv6_refused: { denied: 'IPv6 is not meshed: refused in the kernel' },
  vlan_dropped: { denied: 'frame with stacked 802.1Q/802.1ad tags: dropped in the kernel' },
  martian: { denied: 'martian on the pod\'s interface (a loopback address, or its destination as its source): dropped in the kernel' },
  lookup_ipv6_refused: { denied: 'IPv6 is not meshed: refused in the kernel' },
  lookup_no_agent: { denied: 'no agent listener in the pod (agent down or restarting): refused in the kernel' },
};

/** The agent's listener in each pod's netns (Istio's inbound plaintext port). Bound to the pod's
 * loopback: weft_lookup selects it whatever address was dialled, and nothing outside the pod can
 * dial it directly. */
export const PLAINTEXT_PORT = PORTS.plaintext;
export const PLAINTEXT_HOST = '127.0.0.1';

/** What the plaintext listeners need from the datapath. */
export interface PlaintextDatapath {
  setPodListener(podIp: string, fd: number): void;
  removePodListener(podIp: string): boolean;
}

export interface PlaintextInboundOptions {
  node: string;
  state: AgentState;
  datapath: PlaintextDatapath;
  delivery: LocalDelivery;
  metrics: AgentMetrics;
  log: Logger;
  accessLog: AccessLogSink;
  connectTimeoutMs?: number;
}

export class PlaintextInbound {
  readonly #o: PlaintextInboundOptions;
  /** pod IP → its listener and the netns it lives in. */
  readonly #listeners = new Map<string, { server: net.Server; netns: string }>();
  readonly #sockets = new Set<net.Socket>();
  readonly #kernelLogBudget: LogBudget;
  readonly #refusalLogBudget: LogBudget;

  constructor(opts: PlaintextInboundOptions) {
    this.#o = opts;
    this.#kernelLogBudget = new LogBudget(REFUSAL_LOG_PER_SECOND, (count) =>
      opts.log.warn('kernel refusals not access-logged (rate limit)', { count, perSecond: REFUSAL_LOG_PER_SECOND }));
    this.#refusalLogBudget = new LogBudget(REFUSAL_LOG_PER_SECOND, (count) =>
      opts.log.warn('plaintext refusals not access-logged (rate limit)', { count, perSecond: REFUSAL_LOG_PER_SECOND }));
  }

  /**
   * Opens (or keeps) the listener in a pod's netns and registers it with the datapath, which then
   * steers the pod's plaintext to it. SO_REUSEPORT: an upgraded agent opens its own beside the
   * running one's, and the registration moves to the newest.
   */
  open(podIp: string, netnsPath: string): void {
    const cur = this.#listeners.get(podIp);
    if (cur?.netns === netnsPath) return;
    if (cur) this.close(podIp);
    const fd = createSocketInNetns(netnsPath, { listen: { host: PLAINTEXT_HOST, port: PLAINTEXT_PORT, backlog: 1024 }, reusePort: true });
    const server = net.createServer({ noDelay: true, pauseOnConnect: true }, (accepted) => {
      // The pipe carries it: reads through the read pool from here on.
      const socket = adoptWithPooledReads(accepted);
      this.#sockets.add(socket);
      socket.once('close', () => this.#sockets.delete(socket));
      socket.on('error', () => {});
      this.#handle(socket, podIp).catch((err: Error) => {
        this.#o.log.error('plaintext connection failed unexpectedly', { error: err.message });
        socket.destroy();
      });
    });
    server.on('error', (err) => this.#o.log.warn('plaintext listener failed', { pod: podIp, error: err.message }));
    try {
      this.#o.datapath.setPodListener(podIp, fd);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    server.listen({ fd });
    this.#listeners.set(podIp, { server, netns: netnsPath });
  }

  /** Closes a pod's listener (the pod was unenrolled); the kernel drops its map entry with it. */
  close(podIp: string): void {
    const cur = this.#listeners.get(podIp);
    if (!cur) return;
    this.#listeners.delete(podIp);
    cur.server.close();
  }

  /** Pods with a listener. */
  pods(): string[] {
    return [...this.#listeners.keys()];
  }

  /** Stops every listener and cuts the connections it delivered. */
  closeAll(): void {
    for (const ip of [...this.#listeners.keys()]) this.close(ip);
    for (const s of this.#sockets) s.destroy();
  }

  /**
   * A connection the kernel refused before it reached any listener (weft_refusals): one access-log
   * line, like the agent's own refusals, at most REFUSAL_LOG_PER_SECOND a second (the
   * counters and weft_connections_denied_total{reporter="kernel"} count every one).
   */
  kernelRefused(r: Refusal): void {
    const dest = r.dst.ip !== '0.0.0.0' ? this.#o.state.localWorkload(r.dst.ip) : undefined;
    // Every one is counted, with the refused pod's workload labels; only the log line is rate limited.
    this.#o.metrics.kernelRefusal(r.reason, dest ? { name: dest.workloadName, namespace: dest.namespace } : undefined);
    if (!this.#kernelLogBudget.take()) return;
    const what = KERNEL_REASONS[r.reason] ?? { denied: `refused in the kernel (${r.reason})` };
    this.#o.accessLog({
      direction: 'inbound', reporter: 'kernel', src: `${r.src.ip}:${r.src.port}`, dst: `${r.dst.ip}:${r.dst.port}`,
      ...(dest ? { dst_workload: dest.name, dst_namespace: dest.namespace } : {}),
      security: 'none', denied: what.denied, reason: r.reason, ...(what.policy ? { policy: what.policy } : {}),
    });
  }

  async #handle(socket: net.Socket, podIp: string): Promise<void> {
    const started = Date.now();
    const o = this.#o;
    const dst = { ip: unmapV4(socket.localAddress ?? ''), port: socket.localPort ?? 0 };
    const client = { ip: unmapV4(socket.remoteAddress ?? ''), port: socket.remotePort ?? 0 };
    const dest = o.state.localWorkload(dst.ip);
    const log = { direction: 'inbound', src: `${client.ip}:${client.port}`, dst: `${dst.ip}:${dst.port}`, security: 'none' };
    // Only what weft_lookup steered has the pod's address as its local address; a process inside
    // the pod dialling the listener's own loopback address gets nothing.
    if (dst.ip !== podIp || !dest || !dest.enrolled) {
      o.metrics.denied.inc({ reporter: 'destination', reason: 'not_steered', destination_workload: 'unknown', destination_workload_namespace: 'unknown' });
      o.accessLog({ ...log, denied: `${dst.ip}:${dst.port} is not an enrolled pod's address`, reason: 'not_steered' });
      socket.resetAndDestroy();
      return;
    }
    const where = { dst_workload: dest.name, dst_namespace: dest.namespace };
    let dryRun;
    // What the judgement reads: a push while the pod connect is in flight is judged at track.
    const judgedAt = o.state.version;
    try {
      dryRun = o.delivery.authorizePlaintext(dest, dst.port, client.ip);
    } catch (err) {
      if (!(err instanceof DeniedError)) throw err;
      // Anyone who can route to the pod can cause these: at most a budget of lines a second.
      if (this.#refusalLogBudget.take()) o.accessLog({ ...log, ...where, denied: err.message, reason: err.reason, policy: err.policy, ...dryRunLogFields(err.dryRun) });
      socket.resetAndDestroy();
      return;
    }
    let upstream: import('node:stream').Duplex;
    try {
      upstream = await o.delivery.connectToPod(dest, dst.port, client, o.connectTimeoutMs ?? 5_000);
    } catch (err) {
      o.metrics.failed.inc({ reporter: 'destination', reason: 'connect' });
      o.accessLog({ ...log, ...where, error: (err as Error).message });
      socket.resetAndDestroy();
      return;
    }
    // A push while it connected judges it again now (counted and logged there, as at a push).
    const closed = o.delivery.track({ dest, port: dst.port, source: { sourceIp: client.ip }, upstream, plaintext: true, judgedAt });
    if (closed !== undefined) {
      if (this.#refusalLogBudget.take()) o.accessLog({ ...log, ...where, denied: closed });
      socket.resetAndDestroy();
      return;
    }
    // One connection record: metrics at the open and the close, and the access-log line (no
    // identity: plaintext has none; connection_security_policy="none").
    const service = inboundService(o.state.current.services, dest, dst.port);
    const record = new ConnectionRecord(o.metrics, {
      reporter: 'destination',
      source: {},
      destination: { meta: dest, principal: dest.spiffeId },
      service: service ? { hostname: service.hostname, name: service.name, namespace: service.namespace } : undefined,
      security: 'none',
      srcAddr: `${client.ip}:${client.port}`,
      dstAddr: `${dst.ip}:${dst.port}`,
      dstPod: dest.name,
      logging: [dest.telemetry?.accessLogging],
    }, o.accessLog, started);
    record.annotate(dryRunLogFields(dryRun));
    const m = o.metrics;
    m.active.inc({ direction: 'inbound' });
    record.countWhileOpen(socket, 'source');
    socket.resume();
    let result;
    try {
      result = await pipeBidirectional(socket, upstream);
    } finally {
      m.active.dec({ direction: 'inbound' });
    }
    record.close({ bytesToDestination: result.bytesAtoB, bytesToSource: result.bytesBtoA, error: result.error?.message });
  }
}
