// Inbound (port 15008): HBONE tunnels from other nodes' agents and from waypoints. The peer's
// chain and SPIFFE ID are verified in the TLS handshake (the server presents the identity the
// client asked for in the SNI); each CONNECT must name an enrolled pod on this node (the agent is
// not an open proxy) and pass that pod's L4 AuthorizationPolicies. The east-west gateway carries
// other networks' callers to the gateway port (PORTS.hboneGateway) instead, with the same
// admission, where each CONNECT must also name what the gateway carries such callers to
// (AgentState.gatewayRefusal), at the CONNECT, again when tracked if a push came during its pod
// connect (LocalDelivery.track), and at every change of the Services or waypoints while it is open
// (LocalDelivery.reauthorize): the gateway judges the outer CONNECT only, and the caller's inner session
// reaches every pod of this node. The listener a session came by, not the peer's address, says it
// came through the gateway: an address is rewritten on its way (SNAT) and learnt late. One server
// listens on both ports, so that its limits (tunnels per peer, session buffers, the connection
// total) hold over both; the gateway port takes at most half of that total, and an eighth of it is
// kept for the gateway port.
// The pod then sees the real client address (the datapath's getpeername hook), not the agent's.
import { Socket } from 'node:net';
import { HboneServer, type HboneConnectRequest, type HboneConnectDecision, type HboneRefusal, type HboneTunnelClosed } from '../../lib/hbone/index.ts';
import { identityForServerName } from '../../lib/hbone/sni.ts';
import { LogBudget, clip, type Logger, REFUSAL_LOG_PER_SECOND } from '../../lib/log.ts';
import { parseWorkloadId } from '../../lib/identity/spiffe.ts';
import type { AgentState } from './state.ts';
import type { WorkloadMeta } from '../../lib/model/mesh.ts';
import { ConnectionRecord, inboundService, type AccessLogSink, type AgentMetrics } from './metrics.ts';
import { dryRunLogFields } from '../../lib/policy/authz.ts';
import { FLAG_CONNECT, FLAG_DENY, FLAG_OVERFLOW, UnverifiedClaims, verifiedPeerMeta } from '../../lib/telemetry/labels.ts';
import { OverloadedError } from './connect.ts';
import { DeniedError, type LocalDelivery } from './delivery.ts';
import { CALLER_HEADER, callerOf, tunnelClient } from '../../lib/hbone/index.ts';

/**
 * The label of a refusal Delivery counted and logged already (authorize: `reason="policy"`,
 * "connection denied"; track: a push while the pod connect was in flight): neither again.
 */
const COUNTED = 'policy';

export interface InboundOptions {
  node: string;
  trustDomain: string;
  /** More trust domains whose workload identities this node admits on 15008 (aliases). Default none. */
  trustDomainAliases?: readonly string[];
  state: AgentState;
  delivery: LocalDelivery;
  /** TLS options choosing the served identity per SNI (CertManager#serverOptions). */
  serverTls: import('node:tls').TlsOptions;
  /** Current trust bundle: client chains verify against it (re-read on trustBundleChanged). */
  trustBundle: () => readonly string[];
  metrics: AgentMetrics;
  log: Logger;
  accessLog: AccessLogSink;
  connectTimeoutMs?: number;
  /** Tunnels one peer (identity and address) may hold open or opening (HboneServer; default DEFAULT_MAX_TUNNELS_PER_PEER). */
  maxTunnelsPerPeer?: number;
  /** Bytes all tunnels may hold together before the largest are reset (HboneServer; default half the cgroup memory limit, defaultMemoryBudget). */
  memoryBudget?: number;
}

/**
 * The server's name for the agent's HBONE port (HboneServer.listen's `listener`): a CONNECT by any
 * other listener of the server (the gateway port, or one listened on without a name) is judged by
 * the gateway's rules too, so a port the agent did not name as 15008 fails closed.
 */
const HBONE_LISTENER = 'hbone';

/**
 * The part of the HBONE server's connection total (maxConnections, over both ports) the gateway
 * port (15009) may hold: half, so that 15009's sources cannot take 15008's, which may use the rest,
 * and more while 15009 is idle.
 */
const GATEWAY_PORT_SHARE = 1 / 2;

/**
 * The part of the total kept for the gateway port (listen's `reserved`): an eighth (2,048 of the
 * default 16,384, two sources' full share, the tunnels of two east-west gateway replicas at their
 * bound to this node), so that sixteen sources holding 1,024 each on 15008, anyone who reaches the
 * node before TLS, cannot refuse every other network's caller on 15009.
 */
const GATEWAY_PORT_RESERVED = 1 / 8;

export class Inbound {
  readonly #o: InboundOptions;
  /** The HBONE server of both ports (listen). */
  readonly server: HboneServer;
  /** The record of each tunnel carried, until the server reports it closed. */
  readonly #records = new WeakMap<HboneConnectRequest, ConnectionRecord>();
  /** The workload descriptions taken from baggage unverified (see #sourceMeta). */
  readonly #unverified = new UnverifiedClaims();
  /** Refusal log lines a second (each refusal is counted all the same). */
  readonly #refusalLog: LogBudget;

  constructor(opts: InboundOptions) {
    this.#o = opts;
    this.#refusalLog = new LogBudget(REFUSAL_LOG_PER_SECOND, (count) =>
      opts.log.warn('HBONE refusals not logged (rate limit)', { count, perSecond: REFUSAL_LOG_PER_SECOND }));
    this.server = new HboneServer({
      tls: { SNICallback: opts.serverTls.SNICallback!, ca: [...opts.trustBundle()] },
      // Workload identities of this mesh only: an agent's node certificate or another mesh's
      // workload is refused before it can open a tunnel.
      trustDomains: [opts.trustDomain, ...(opts.trustDomainAliases ?? [])],
      ...(opts.maxTunnelsPerPeer !== undefined ? { maxTunnelsPerPeer: opts.maxTunnelsPerPeer } : {}),
      ...(opts.memoryBudget !== undefined ? { memoryBudget: opts.memoryBudget } : {}),
      handler: (req) => this.#handle(req, req.listener !== HBONE_LISTENER),
      onRefusal: (r) => this.#refused(r),
      onTunnelClosed: (c) => this.#closed(c),
      onSessionThrottled: (e) => this.#o.log.warn('HBONE session holds more than its buffer for destinations that do not read: its stream windows shrink until they catch up', {
        peer: e.peer.spiffeId, address: e.peer.address, heldBytes: e.heldBytes, tunnels: e.tunnels,
      }),
      onSessionError: (e) => this.#o.log.warn('HBONE session ended on an error, with every tunnel on it', {
        peer: e.peer.spiffeId, address: e.peer.address, error: e.error, code: e.code, tunnels: e.streams,
      }),
    });
    // Tunnels are reset past this, before the container's memory limit is reached (tuning.ts).
    opts.log.info('HBONE memory budget', { ...this.server.memoryBudget });
  }

  /**
   * Listens on the HBONE port and the gateway port (`reusePort`: an upgrade's old and new agent
   * side by side); resolves with the ports bound. The server's connection total holds over both;
   * 15009 takes at most GATEWAY_PORT_SHARE of it, so that its sources, anyone who reaches the node,
   * cannot fill it and refuse node-to-node tunnels, while 15008 uses whatever is free but
   * GATEWAY_PORT_RESERVED of it, so that 15008's sources cannot refuse every caller on 15009 either;
   * a source holds the server's 1,024 on each (the agent knows no address of the gateway's: SNAT, a
   * host-network gateway), and the gateway holds all its callers' tunnels to a node below that,
   * shared among their tenants (DEFAULT_MAX_TUNNELS_PER_UPSTREAM, eastwest/src/gateway.ts).
   */
  async listen(ports: { hbone: number; gateway: number }, host: string, opts: { reusePort?: boolean } = {}): Promise<{ hbone: number; gateway: number }> {
    const hbone = (await this.server.listen(ports.hbone, host, { ...opts, listener: HBONE_LISTENER })).port;
    const total = this.server.maxConnections;
    const gateway = (await this.server.listen(ports.gateway, host, { ...opts, listener: 'gateway', maxConnections: Math.floor(total * GATEWAY_PORT_SHARE), reserved: Math.floor(total * GATEWAY_PORT_RESERVED) })).port;
    return { hbone, gateway };
  }

  /** New roots: client certificates verify against the new bundle from the next handshake on. */
  trustBundleChanged(): void {
    this.server.setTls({ ca: [...this.#o.trustBundle()] });
  }

  /** Which local identity serves a TLS server name (SNI). */
  static selectIdentity(state: AgentState, trustDomain: string, servername: string | undefined): string | undefined {
    const wanted = identityForServerName(servername, trustDomain);
    if (!wanted) return undefined;
    return state.localWorkloads().some((w) => w.enrolled && w.spiffeId === wanted) ? wanted : undefined;
  }

  /** `throughGateway`: the CONNECT came on the gateway port, judged by the gateway's rules too (AgentState.gatewayRefusal). */
  async #handle(req: HboneConnectRequest, throughGateway: boolean): Promise<HboneConnectDecision> {
    const { host, port } = req.target;
    const dest = this.#o.state.localWorkload(host);
    if (!dest || !dest.enrolled) {
      // A tunnel naming an address the config still gives a deleted pod reaches neither that pod
      // (gone) nor, under its policies, the pod enrolled there now.
      const stale = this.#o.state.staleAt(host);
      return {
        status: 403,
        reason: stale
          ? `${host}:${port} is pod uid ${stale.enrolledUid}'s address now${stale.listed ? `, not ${stale.listed.namespace}/${stale.listed.name}'s as the config still says` : ', which the config does not give it yet'}`
          : `${host}:${port} is not an enrolled pod on node ${this.#o.node}`,
      };
    }
    const principal = req.peer.spiffeId;
    const sourceNamespace = workloadOf(principal)?.namespace;
    const client = tunnelClient(this.#o.state, dest, req);
    if (client.ignored) {
      this.#o.metrics.forwardedIgnored.inc({ reason: client.ignored.reason });
      this.#o.log.warn('forwarded client address not honoured: the peer may not speak for it', {
        reason: client.ignored.reason, claimed: client.ignored.claimed, peer: principal, address: req.peer.address,
        using: `${client.ip}:${client.port}`, destination: `${dest.namespace}/${dest.name}:${port}`,
      });
    }
    const service = inboundService(this.#o.state.current.services, dest, port);
    const record = new ConnectionRecord(this.#o.metrics, {
      reporter: 'destination',
      // The peer's agent (or waypoint) describes its workload in `baggage`; believed only where the
      // config knows a workload of the identity the peer's certificate proves by that name.
      source: { meta: this.#sourceMeta(req.headers['baggage'], principal), principal },
      destination: { meta: dest, principal: dest.spiffeId },
      service: service ? { hostname: service.hostname, name: service.name, namespace: service.namespace } : undefined,
      security: 'mutual_tls',
      srcAddr: `${client.ip}:${client.port}`,
      dstAddr: `${host}:${port}`,
      hboneAddr: req.authority,
      dstPod: dest.name,
      logging: [dest.telemetry?.accessLogging],
    }, this.#o.accessLog);
    const source = {
      ...(principal ? { sourcePrincipal: principal } : {}),
      ...(sourceNamespace ? { sourceNamespace } : {}),
      sourceIp: client.ip,
    };
    const caller = callerOf(req.headers[CALLER_HEADER]);
    // What the judgement below reads: a push while the pod connect is in flight is judged at track.
    const judgedAt = this.#o.state.version;
    // A session the east-west gateway carries: the gateway admitted the pod its outer CONNECT named,
    // but the caller's inner session reaches every pod of this node, so its rules hold here too.
    // Logged and counted (by #refused, once, under its label) as a policy's no.
    const notCarried = throughGateway ? this.#o.state.gatewayRefusal(host, port, principal) : undefined;
    if (notCarried) {
      record.close({ bytesToDestination: 0, bytesToSource: 0, flags: FLAG_DENY, error: `denied: ${notCarried.reason}` });
      return { status: 403, reason: notCarried.reason, label: notCarried.label };
    }
    try {
      record.annotate(dryRunLogFields(this.#o.delivery.authorize(dest, port, source, caller)));
    } catch (err) {
      if (err instanceof DeniedError) {
        record.annotate(dryRunLogFields(err.dryRun));
        record.close({ bytesToDestination: 0, bytesToSource: 0, flags: FLAG_DENY, error: `denied: ${err.message}${err.policy ? ` (policy ${err.policy})` : ''}` });
        // Counted (`policy`) and logged by Delivery.authorize, where the policy decided.
        return { status: err.status, reason: err.message, label: COUNTED };
      }
      throw err;
    }
    try {
      const upstream = await this.#o.delivery.connectToPod(dest, port, client, this.#o.connectTimeoutMs ?? 5_000, { signal: req.signal });
      // A push while it connected judges it again now (counted and logged there, as at a push).
      const closed = this.#o.delivery.track({ dest, port, source, caller, upstream, judgedAt, ...(throughGateway ? { throughGateway } : {}) });
      if (closed !== undefined) {
        record.close({ bytesToDestination: 0, bytesToSource: 0, flags: FLAG_DENY, error: `denied: ${closed}` });
        return { status: 403, reason: closed, label: COUNTED };
      }
      this.#records.set(req, record);
      if (upstream instanceof Socket) record.countWhileOpen(upstream, 'destination');
      return { upstream };
    } catch (err) {
      if (req.signal.aborted) {
        // The peer reset the CONNECT while the pod connect was in flight: not the pod's failure.
        record.close({ bytesToDestination: 0, bytesToSource: 0, error: 'the peer reset the CONNECT before it was answered' });
        return { status: 503, reason: 'the peer reset the CONNECT before it was answered' };
      }
      const overloaded = err instanceof OverloadedError;
      this.#o.metrics.failed.inc({ reporter: 'destination', reason: overloaded ? 'overloaded' : 'connect' });
      record.close({ bytesToDestination: 0, bytesToSource: 0, flags: overloaded ? FLAG_OVERFLOW : FLAG_CONNECT, error: (err as Error).message });
      return { status: 503, reason: (err as Error).message, kind: overloaded ? 'overloaded' : 'upstream-failed' };
    }
  }

  /**
   * The caller's workload for the labels (verifiedPeerMeta). For an identity the config knows no
   * workload of in the claimed cluster (another cluster's caller), the claims are bounded per
   * identity (UnverifiedClaims), so that a peer cannot mint series.
   */
  #sourceMeta(baggage: string | undefined, principal: string | undefined): WorkloadMeta | undefined {
    const { meta, verified } = verifiedPeerMeta(baggage, principal, (p) => this.#o.state.workloadsOf(p));
    return verified || !meta || !principal ? meta : this.#unverified.take(principal, meta);
  }

  #refused(r: HboneRefusal): void {
    // A policy's no was counted and logged where it was decided (Delivery.authorize).
    if (r.label === COUNTED) return;
    // A pod that cannot be reached is a failure (weft_connections_failed_total, counted where it
    // happened), not a refusal of the peer. Under the pod the CONNECT named, when it is one of
    // this node's (as a policy's no is counted).
    if (r.kind !== 'upstream-failed' && r.kind !== 'overloaded') {
      const dest = r.target ? this.#o.state.localWorkload(r.target.host) : undefined;
      this.#o.metrics.denied.inc({ reporter: 'destination', reason: r.label ?? r.kind, destination_workload: dest?.workloadName ?? 'unknown', destination_workload_namespace: dest?.namespace ?? 'unknown' });
    }
    // The authority and the reason quoting it are the peer's to choose (HPACK sends a long one once
    // and then a byte per request): cut, and at most REFUSAL_LOG_PER_SECOND lines a second.
    if (!this.#refusalLog.take()) return;
    this.#o.log.info('HBONE refused', { kind: r.kind, ...(r.label !== undefined ? { label: r.label } : {}), status: r.status, reason: clip(r.reason), peer: r.peer?.spiffeId, address: r.peer?.address, authority: clip(r.authority) });
  }

  #closed(c: HboneTunnelClosed): void {
    const record = this.#records.get(c.request);
    if (!record) return;
    this.#records.delete(c.request);
    // From the destination's point of view: bytes from the tunnel (a) go to the pod.
    record.close({ bytesToDestination: c.bytesAtoB, bytesToSource: c.bytesBtoA, error: c.error?.message });
  }
}

/** The workload identity of a peer, or undefined for a node identity or none. */
function workloadOf(principal: string | undefined): { namespace: string; serviceAccount: string } | undefined {
  if (!principal) return undefined;
  try {
    return parseWorkloadId(principal);
  } catch {
    return undefined;
  }
}


