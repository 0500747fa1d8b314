// Outbound (port 15001): connections that cgroup/connect4 captured from enrolled pods. The agent
// reads where each was going from the datapath, resolves the destination (service → endpoint or
// waypoint) and carries it: over a pooled HBONE tunnel to the destination's agent, straight to a
// pod on this node after the same authorization an inbound tunnel gets, or in plaintext to a
// destination outside the mesh.
import net from 'node:net';
import type { Logger } from '../../lib/log.ts';
import { formatForwardedFor, HbonePool, pipeBidirectional, type PipeResult } from '../../lib/hbone/index.ts';
import { serverNameForIdentity } from '../../lib/hbone/sni.ts';
import { tlsMaterial } from '../../lib/identity/tls.ts';
import type { Workload } from '../../lib/model/mesh.ts';
import type { AgentState, Upstream } from './state.ts';
import type { AgentMetrics, TcpLabels } from './metrics.ts';
import type { LocalDelivery } from './delivery.ts';
import { connectTcp, splitHostPort } from './connect.ts';
import { unmapV4 } from './datapath/codecs.ts';

/** What outbound needs from the datapath (the real Datapath, or a test double in unit tests). */
export interface OriginalDestinationSource {
  /** Where a captured connection was going, and the network namespace (cookie) it came from. */
  originalDestination(socket: net.Socket): { ip: string; port: number; clientNetnsCookie: bigint } | undefined;
}

export interface CredentialSource {
  get(identity: string): Promise<{ key: string; certChain: readonly string[]; trustBundle: readonly string[] }>;
}

export interface OutboundOptions {
  node: string;
  /** Address the agent connects to local pods from (its address as pods see it). */
  nodeIp: string;
  state: AgentState;
  datapath: OriginalDestinationSource;
  /**
   * The pod IP the agent enrolled under a network-namespace cookie. The source of a captured
   * connection is the pod whose netns the kernel recorded at connect(), never whoever the source
   * address says: an address can be borrowed, a netns cookie cannot.
   */
  podIpOf: (netnsCookie: bigint) => string | undefined;
  certs: CredentialSource;
  pool: HbonePool;
  /** Same-node destinations: authorization and the connection into the pod. */
  authorizer: LocalDelivery;
  metrics: AgentMetrics;
  log: Logger;
  accessLog: (entry: Record<string, unknown>) => void;
  connectTimeoutMs?: number;
}

export class Outbound {
  readonly #o: OutboundOptions;
  readonly #server: net.Server;
  readonly #sockets = new Set<net.Socket>();

  constructor(opts: OutboundOptions) {
    this.#o = opts;
    this.#server = net.createServer({ noDelay: true, pauseOnConnect: true }, (socket) => {
      this.#sockets.add(socket);
      socket.once('close', () => this.#sockets.delete(socket));
      this.#handle(socket).catch((err: Error) => {
        this.#o.log.error('outbound connection failed unexpectedly', { error: err.message });
        socket.destroy();
      });
    });
  }

  /**
   * Listens with SO_REUSEPORT: during an upgrade the old and the new agent share the port, and when
   * the old one closes its listener the kernel moves its queued connections to the new one
   * (net.ipv4.tcp_migrate_req).
   */
  listen(port: number, host: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen({ port, host, backlog: 4096, reusePort: true }, () => {
        this.#server.off('error', reject);
        resolve();
      });
    });
  }

  get server(): net.Server {
    return this.#server;
  }

  /** Connections accepted and not yet closed. */
  get active(): number {
    return this.#sockets.size;
  }

  /**
   * Stops accepting and lets the open connections finish for up to `graceMs`, then destroys what
   * is left (their tunnels end with them). Resolves with how many had to be destroyed.
   */
  async close(graceMs = 0): Promise<number> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    let cut = 0;
    const timer = setTimeout(() => {
      for (const s of this.#sockets) {
        cut++;
        s.destroy();
      }
    }, graceMs);
    timer.unref();
    await closed;
    clearTimeout(timer);
    return cut;
  }

  async #handle(socket: net.Socket): Promise<void> {
    const started = Date.now();
    socket.on('error', () => {});
    const orig = this.#o.datapath.originalDestination(socket);
    const srcIp = unmapV4(socket.remoteAddress ?? '');
    const podIp = orig ? this.#o.podIpOf(orig.clientNetnsCookie) : undefined;
    const source = podIp !== undefined ? this.#o.state.localWorkload(podIp) : undefined;
    if (!orig || !source) {
      const reason = !orig
        ? 'no original destination recorded for this connection'
        : `the connection came from network namespace ${orig.clientNetnsCookie}, which is not an enrolled pod on node ${this.#o.node}`;
      this.#o.metrics.failed.inc({ reporter: 'source', reason: !orig ? 'no_original_destination' : 'unknown_source' });
      this.#o.log.warn('outbound connection refused', { reason, source: `${srcIp}:${socket.remotePort}` });
      socket.destroy();
      return;
    }
    if (source.ip !== srcIp) {
      // A process in one pod using another pod's address (added to its own interface): the
      // kernel says which pod it really is, and that pod does not own the address.
      this.#o.metrics.denied.inc({ reporter: 'source', reason: 'source-mismatch', destination_workload: 'unknown', destination_workload_namespace: 'unknown' });
      this.#o.log.warn('outbound connection refused: its source address is not its pod\'s', {
        reason: 'source-mismatch', pod: `${source.namespace}/${source.name}`, podIp: source.ip, source: `${srcIp}:${socket.remotePort}`,
        netnsCookie: orig.clientNetnsCookie.toString(), destination: `${orig.ip}:${orig.port}`,
      });
      socket.destroy();
      return;
    }
    const dest = `${orig.ip}:${orig.port}`;
    let candidates: Upstream[];
    try {
      candidates = this.#o.state.resolve(source, orig.ip, orig.port);
    } catch (err) {
      this.#o.metrics.failed.inc({ reporter: 'source', reason: 'no_route' });
      this.#o.accessLog({ direction: 'outbound', src: `${srcIp}:${socket.remotePort}`, src_workload: source.name, src_namespace: source.namespace, dst: dest, error: (err as Error).message });
      socket.destroy();
      return;
    }
    let lastError: Error | undefined;
    for (const up of candidates) {
      let upstream: import('node:stream').Duplex;
      try {
        upstream = await this.#open(source, up, socket);
      } catch (err) {
        lastError = err as Error;
        const ep = up.endpoint?.ip;
        if (ep) this.#o.state.endpointFailed(ep);
        if ((err as { code?: string }).code === 'WEFT_DENIED') break;
        continue;
      }
      const epIp = up.endpoint?.ip ?? splitIp(up.target);
      this.#o.state.endpointSucceeded(epIp);
      await this.#proxy(socket, upstream, source, up, dest, started);
      return;
    }
    // Traffic that must pass a waypoint fails closed when no replica answers: say so, by name.
    const wp = candidates[0]?.kind === 'hbone' ? candidates[0].waypoint : undefined;
    const via = wp ? `waypoint ${wp.namespace}/${wp.name}` : undefined;
    const reason = `${via ? `${via} unreachable (${candidates.length} ${candidates.length === 1 ? 'replica' : 'replicas'} tried; failing closed): ` : ''}${lastError?.message ?? 'no upstream'}`;
    this.#o.metrics.failed.inc({ reporter: 'source', reason: (lastError as { code?: string } | undefined)?.code ?? 'connect' });
    this.#o.accessLog({
      direction: 'outbound', src: `${srcIp}:${socket.remotePort}`, src_workload: source.name, src_namespace: source.namespace, dst: dest,
      ...(via ? { via } : {}), error: reason, duration_ms: Date.now() - started,
    });
    socket.destroy();
  }

  async #open(source: Workload, up: Upstream, client: net.Socket): Promise<import('node:stream').Duplex> {
    const timeoutMs = this.#o.connectTimeoutMs ?? 5_000;
    switch (up.kind) {
      case 'hbone': {
        const creds = await this.#o.certs.get(source.spiffeId);
        const servername = up.waypoint ? undefined : serverNameForIdentity(up.identity);
        return this.#o.pool.connect({
          sourceKey: source.spiffeId,
          tls: { ...tlsMaterial(creds), ...(servername ? { servername } : {}) },
          dest: { host: up.address, port: up.port },
          target: up.target,
          expectPeer: up.identity,
          headers: { forwarded: formatForwardedFor(source.ip, client.remotePort) },
          timeoutMs,
        });
      }
      case 'local': {
        // Same node: no TLS on the wire, but the destination's policy applies exactly as it would
        // to an inbound tunnel from the source's identity.
        const { port } = splitHostPort(up.target);
        this.#o.authorizer.authorize(up.workload, port, {
          sourcePrincipal: source.spiffeId,
          sourceNamespace: source.namespace,
          sourceIp: source.ip,
        });
        const client_ = { ip: source.ip, port: client.remotePort ?? 0 };
        return this.#o.authorizer.connectToPod(up.workload, port, client_, timeoutMs);
      }
      case 'passthrough':
        return connectTcp(up.target, { timeoutMs });
    }
  }

  async #proxy(socket: net.Socket, upstream: import('node:stream').Duplex, source: Workload, up: Upstream, dest: string, started: number): Promise<void> {
    const labels: TcpLabels = {
      reporter: 'source',
      source_workload: source.name,
      source_workload_namespace: source.namespace,
      source_principal: source.spiffeId,
      destination_workload: up.kind === 'local' ? up.workload.name : (up.endpoint?.workloadUid.split('/').pop() ?? 'unknown'),
      destination_workload_namespace: up.kind === 'local' ? up.workload.namespace : (up.service?.namespace ?? 'unknown'),
      destination_principal: up.kind === 'hbone' ? up.identity : up.kind === 'local' ? up.workload.spiffeId : 'unknown',
      destination_service: up.service?.hostname ?? 'unknown',
      connection_security_policy: up.kind === 'hbone' ? 'mutual_tls' : up.kind === 'local' ? 'node_local' : 'none',
    };
    const m = this.#o.metrics;
    m.opened.inc(labels);
    m.active.inc({ direction: 'outbound' });
    const epIp = up.endpoint?.ip ?? splitIp(up.target);
    this.#o.state.connectionOpened(epIp);
    socket.resume();
    let result: PipeResult;
    try {
      result = await pipeBidirectional(socket, upstream);
    } finally {
      this.#o.state.connectionClosed(epIp);
      m.active.dec({ direction: 'outbound' });
    }
    m.closed.inc(labels);
    m.sent.inc(labels, result.bytesAtoB);
    m.received.inc(labels, result.bytesBtoA);
    this.#o.accessLog({
      direction: 'outbound',
      src: `${source.ip}:${socket.remotePort}`,
      src_workload: source.name,
      src_namespace: source.namespace,
      src_principal: source.spiffeId,
      dst: dest,
      upstream: up.kind === 'hbone' ? `${up.address}:${up.port}` : up.target,
      target: up.target,
      via: up.kind === 'hbone' && up.waypoint ? `waypoint ${up.waypoint.namespace}/${up.waypoint.name}` : up.kind,
      security: labels.connection_security_policy,
      bytes_sent: result.bytesAtoB,
      bytes_received: result.bytesBtoA,
      duration_ms: Date.now() - started,
      ...(result.error ? { error: result.error.message } : {}),
    });
  }
}

function splitIp(target: string): string {
  return splitHostPort(target).host;
}
