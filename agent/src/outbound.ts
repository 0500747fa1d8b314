// Outbound (port 15001): connections that cgroup/connect4 captured from enrolled pods. The agent
// reads where each was going from the datapath, resolves the destination (service → endpoint or
// waypoint) and carries it: over a pooled HBONE tunnel to the destination's agent, straight to a
// pod on this node after the same authorization an inbound tunnel gets, or in plaintext to a
// destination outside the mesh.
import net from 'node:net';
import { LogBudget, type Logger, REFUSAL_LOG_PER_SECOND } from '../../lib/log.ts';
import { adoptWithPooledReads, formatAuthority, formatForwardedFor, HbonePool, pipeBidirectional, type PipeResult } from '../../lib/hbone/index.ts';
import { serverNameForIdentity } from '../../lib/hbone/sni.ts';
import { tlsMaterial } from '../../lib/identity/tls.ts';
import type { Workload } from '../../lib/model/mesh.ts';
import { endpointKey, type AgentState, type Upstream } from './state.ts';
import { ConnectionRecord, type AccessLogSink, type AgentMetrics, type ConnectionOpen } from './metrics.ts';
import { encodeBaggage, FLAG_CONNECT, FLAG_DENY } from '../../lib/telemetry/labels.ts';
import { DeniedError, type LocalDelivery } from './delivery.ts';
import { dryRunLogFields, type DryRunResult } from '../../lib/policy/authz.ts';
import { connectTcp, splitHostPort } from './connect.ts';
import { unmapV4 } from './datapath/codecs.ts';
import { formatTuple } from './datapath/index.ts';
import { peerSocketOf, forget, spliceAllowed, spliceBidirectional, type SpliceDatapath, type StrandedResets } from './splice.ts';

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
  accessLog: AccessLogSink;
  connectTimeoutMs?: number;
  /**
   * Same-node connections are spliced in the kernel once authorized (agent/src/splice.ts):
   * the payload never enters this process. Default: not spliced (the pipe carries them).
   */
  splice?: SpliceDatapath;
  /** With `splice`: resets a spliced connection whose pod strands redirected bytes (splice.ts). */
  spliceStranded?: StrandedResets;
}

/** What #open opened: the stream, and a same-node delivery's dry-run results. */
interface Opened {
  upstream: import('node:stream').Duplex;
  dryRun?: DryRunResult[] | undefined;
}

export class Outbound {
  readonly #o: OutboundOptions;
  readonly #server: net.Server;
  readonly #sockets = new Set<net.Socket>();
  /** Refusal lines a second: the port is on the node's address, any host can knock (each is counted). */
  readonly #refusalLog: LogBudget;

  constructor(opts: OutboundOptions) {
    this.#o = opts;
    this.#refusalLog = new LogBudget(REFUSAL_LOG_PER_SECOND, (count) =>
      opts.log.warn('outbound refusals not logged (rate limit; every one is counted)', { count, perSecond: REFUSAL_LOG_PER_SECOND }));
    this.#server = net.createServer({ noDelay: true, pauseOnConnect: true }, (accepted) => {
      // The pipe (or the splice) carries it: reads through the read pool from here on.
      const socket = adoptWithPooledReads(accepted);
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
      // A pod enrolled at an address the config still gives another (deleted) pod: never that pod's identity.
      const stale = podIp !== undefined ? this.#o.state.staleAt(podIp) : undefined;
      const reason = !orig
        ? 'no original destination recorded for this connection'
        : stale
          ? `the connection came from pod uid ${stale.enrolledUid} at ${podIp}, which the config does not give that address yet${stale.listed ? ` (it still names ${stale.listed.namespace}/${stale.listed.name} there)` : ''}`
          : `the connection came from network namespace ${orig.clientNetnsCookie}, which is not an enrolled pod on node ${this.#o.node}`;
      this.#o.metrics.failed.inc({ reporter: 'source', reason: !orig ? 'no_original_destination' : stale ? 'stale_source' : 'unknown_source' });
      if (this.#refusalLog.take()) this.#o.log.warn('outbound connection refused', { reason, source: `${srcIp}:${socket.remotePort}` });
      socket.destroy();
      return;
    }
    if (source.ip !== srcIp) {
      // A process in one pod using another pod's address (added to its own interface): the
      // kernel says which pod it really is, and that pod does not own the address.
      this.#o.metrics.denied.inc({ reporter: 'source', reason: 'source-mismatch', destination_workload: 'unknown', destination_workload_namespace: 'unknown' });
      if (this.#refusalLog.take()) this.#o.log.warn('outbound connection refused: its source address is not its pod\'s', {
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
      this.#o.accessLog({ msg: 'connection failed', 'src.addr': `${srcIp}:${socket.remotePort}`, 'src.workload': source.name, 'src.namespace': source.namespace, 'dst.addr': dest, direction: 'outbound', error: (err as Error).message });
      socket.destroy();
      return;
    }
    let lastError: Error | undefined;
    for (const up of candidates) {
      let opened: Opened;
      try {
        opened = await this.#open(source, up, socket);
      } catch (err) {
        lastError = err as Error;
        if (up.endpoint) this.#o.state.endpointFailed(endpointKey(up.endpoint));
        if ((err as { code?: string }).code === 'WEFT_DENIED') break;
        continue;
      }
      this.#o.state.endpointSucceeded(up.endpoint ? endpointKey(up.endpoint) : splitIp(up.target));
      const record = this.#record(source, up, socket, dest, started);
      record.annotate(dryRunLogFields(opened.dryRun));
      await this.#proxy(socket, opened.upstream, up, source, record);
      return;
    }
    // Traffic that must pass a waypoint fails closed when no replica answers: say so, by name.
    const wp = candidates[0]?.kind === 'hbone' ? candidates[0].waypoint : undefined;
    const via = wp ? `waypoint ${wp.namespace}/${wp.name}` : undefined;
    const reason = `${via ? `${via} unreachable (${candidates.length} ${candidates.length === 1 ? 'replica' : 'replicas'} tried; failing closed): ` : ''}${lastError?.message ?? 'no upstream'}`;
    const code = (lastError as { code?: string } | undefined)?.code;
    this.#o.metrics.failed.inc({ reporter: 'source', reason: code ?? 'connect' });
    const first = candidates[0];
    if (first) {
      // Denied here (same node) or by the destination's agent (its 403 on the CONNECT).
      const denied = code === 'WEFT_DENIED' || (lastError as { status?: number } | undefined)?.status === 403;
      const record = this.#record(source, first, socket, dest, started);
      if (lastError instanceof DeniedError) record.annotate(dryRunLogFields(lastError.dryRun));
      record.close({ bytesToDestination: 0, bytesToSource: 0, flags: denied ? FLAG_DENY : FLAG_CONNECT, error: reason });
    } else {
      this.#o.accessLog({ msg: 'connection failed', 'src.addr': `${srcIp}:${socket.remotePort}`, 'src.workload': source.name, 'src.namespace': source.namespace, 'dst.addr': dest, direction: 'outbound', error: reason });
    }
    socket.destroy();
  }

  /** The stream to `up`, and for a same-node delivery the destination's dry-run results (its judgement is here). */
  async #open(source: Workload, up: Upstream, client: net.Socket): Promise<Opened> {
    const timeoutMs = this.#o.connectTimeoutMs ?? 5_000;
    switch (up.kind) {
      case 'hbone': {
        const creds = await this.#o.certs.get(source.spiffeId);
        const servername = up.waypoint ? undefined : serverNameForIdentity(up.identity);
        return { upstream: await this.#o.pool.connect({
          sourceKey: source.spiffeId,
          tls: { ...tlsMaterial(creds), ...(servername ? { servername } : {}) },
          dest: { host: up.address, port: up.port },
          target: up.target,
          expectPeer: up.identity,
          // Another network: the tunnel to the endpoint's agent runs inside HBONE to that network's
          // east-west gateway (double HBONE, pooled like any other session), so the gateway sees
          // only ciphertext. No `forwarded` through it: the destination's TCP peer is the gateway,
          // so no claim about the caller's address could be honoured there
          // (lib/hbone/forwarded.ts); the caller's identity is in the inner TLS, its telemetry in
          // the baggage. Another network's waypoint: the outer CONNECT names the waypoint's own
          // HBONE address (the gateway admits its cluster's waypoints there), the inner one the
          // Service VIP:port, as to a waypoint of this network.
          ...(up.gateway
            ? {
              gateway: { host: up.gateway.address, port: up.gateway.port, expectPeer: up.gateway.spiffeId, ...(up.waypoint ? { target: formatAuthority(up.address, up.port) } : {}) },
              headers: { baggage: encodeBaggage(source) },
            }
            : { headers: { forwarded: formatForwardedFor(source.ip, client.remotePort), baggage: encodeBaggage(source) } }),
          timeoutMs,
        }) };
      }
      case 'local': {
        // Same node: no TLS on the wire, but the destination's policy applies exactly as it would
        // to an inbound tunnel from the source's identity.
        const { port } = splitHostPort(up.target);
        const attrs = { sourcePrincipal: source.spiffeId, sourceNamespace: source.namespace, sourceIp: source.ip };
        const judgedAt = this.#o.state.version;
        const dryRun = this.#o.authorizer.authorize(up.workload, port, attrs);
        const client_ = { ip: source.ip, port: client.remotePort ?? 0 };
        const splice = this.#o.splice !== undefined && spliceAllowed(source, up.workload);
        const upstream = await this.#o.authorizer.connectToPod(up.workload, port, client_, timeoutMs, { splice });
        // A push while it connected judges it again now (counted and logged there, as at a push).
        const closed = this.#o.authorizer.track({ dest: up.workload, port, source: attrs, upstream, judgedAt });
        if (closed !== undefined) throw new DeniedError(closed);
        return { upstream, dryRun };
      }
      case 'passthrough':
        return { upstream: await connectTcp(up.target, { timeoutMs }) };
    }
  }

  /** The connection record (counted as opened) for carrying `socket` to `up`. */
  #record(source: Workload, up: Upstream, socket: net.Socket, dest: string, started?: number): ConnectionRecord {
    const svc = up.service;
    const open: ConnectionOpen = {
      reporter: 'source',
      source: { meta: source, principal: source.spiffeId },
      destination:
        up.kind === 'hbone' ? { meta: up.waypoint ? up.waypoint.workload : up.endpoint?.workload, principal: up.identity }
        : up.kind === 'local' ? { meta: up.workload, principal: up.workload.spiffeId }
        : { meta: up.endpoint?.workload },
      service: svc ? { hostname: svc.hostname, name: svc.name, namespace: svc.namespace } : undefined,
      // Same node: the agent itself established both identities and applied the destination's
      // policy, as an mTLS hop would; nothing crosses the wire.
      security: up.kind === 'passthrough' ? 'none' : 'mutual_tls',
      srcAddr: `${source.ip}:${socket.remotePort}`,
      srcPod: source.name,
      dstAddr: up.kind === 'hbone' ? `${up.address}:${up.port}` : up.target,
      hboneAddr: up.kind === 'hbone' ? up.target : undefined,
      dstPod: up.kind === 'local' ? up.workload.name : undefined,
      // Same node: this line is the destination's inbound line as well (no other agent sees the
      // connection), so the destination's settings count beside the source's, each its own.
      logging: up.kind === 'local' ? [source.telemetry?.accessLogging, up.workload.telemetry?.accessLogging] : [source.telemetry?.accessLogging],
      extra: { 'dst.original': dest, via: viaOf(up) },
      // The destination's copy is its inbound line: what the client dialled and its path are the client's.
      ...(up.kind === 'local' ? { clientOnly: ['dst.original', 'via'] } : {}),
    };
    return new ConnectionRecord(this.#o.metrics, open, this.#o.accessLog, started);
  }

  async #proxy(socket: net.Socket, upstream: import('node:stream').Duplex, up: Upstream, source: Workload, record: ConnectionRecord): Promise<void> {
    const m = this.#o.metrics;
    m.active.inc({ direction: 'outbound' });
    const epKey = up.endpoint ? endpointKey(up.endpoint) : splitIp(up.target);
    this.#o.state.connectionOpened(epKey);
    record.countWhileOpen(socket, 'source');
    let result: PipeResult;
    try {
      // Same node, no waypoint (that is a 'hbone' upstream), authorized: the kernel carries it.
      // The policy was judged at connect, and a policy change judges it again (LocalDelivery.reauthorize
      // closes the agent's socket to the pod, which ends a spliced pair as a piped one). Unless
      // either pod opted out (weft.dev/splice: disabled).
      if (up.kind === 'local' && this.#o.splice && upstream instanceof net.Socket && spliceAllowed(source, up.workload)) {
        const r = await spliceBidirectional(socket, upstream, { datapath: this.#o.splice, ...(this.#o.spliceStranded ? { stranded: this.#o.spliceStranded } : {}) });
        if (r.notSpliced) this.#o.log.debug('same-node connection not spliced', { reason: r.notSpliced });
        if (r.stranded) {
          this.#o.log.warn('reset a spliced connection: a pod began reading it with splice(2) while bytes the kernel had redirected to it were unread (counted as splice_stranded)', {
            client: formatTuple(peerSocketOf(socket)), server: formatTuple(peerSocketOf(upstream)),
          });
        }
        result = r;
      } else {
        // Sockops filed the client's socket when it connected (--splice); this connection is not
        // spliced, so it goes back to plain TCP.
        if (this.#o.splice) forget(this.#o.splice, peerSocketOf(socket));
        socket.resume();
        result = await pipeBidirectional(socket, upstream);
      }
    } finally {
      this.#o.state.connectionClosed(epKey);
      m.active.dec({ direction: 'outbound' });
    }
    record.close({ bytesToDestination: result.bytesAtoB, bytesToSource: result.bytesBtoA, error: result.error?.message });
  }
}

/** The access log's `via`: the waypoint (and its cluster), the gateway, or the kind of hop. */
function viaOf(up: Upstream): string {
  if (up.kind !== 'hbone') return up.kind;
  const gw = up.gateway ? `gateway ${up.gateway.network} ${up.gateway.address}:${up.gateway.port}` : undefined;
  if (!up.waypoint) return gw ?? up.kind;
  const wp = `waypoint ${up.waypoint.namespace}/${up.waypoint.name}${up.waypoint.cluster ? ` of ${up.waypoint.cluster}` : ''}`;
  return gw ? `${wp} through ${gw}` : wp;
}

function splitIp(target: string): string {
  return splitHostPort(target).host;
}
