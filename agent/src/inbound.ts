// Inbound (port 15008): HBONE tunnels from other nodes' agents and from waypoints. The peer's
// chain and SPIFFE ID are verified in the TLS handshake (the server presents the identity the
// client asked for in the SNI); each CONNECT must name an enrolled pod on this node (the agent is
// not an open proxy) and pass that pod's L4 AuthorizationPolicies. The pod then sees the real
// client address (the datapath's getpeername hook), not the agent's.
import { HboneServer, type HboneConnectRequest, type HboneConnectDecision, type HboneRefusal, type HboneTunnelClosed } from '../../lib/hbone/index.ts';
import { identityForServerName } from '../../lib/hbone/sni.ts';
import type { Logger } from '../../lib/log.ts';
import { parseWorkloadId } from '../../lib/identity/spiffe.ts';
import type { AgentState } from './state.ts';
import type { AgentMetrics } from './metrics.ts';
import { DeniedError, type LocalDelivery } from './delivery.ts';
import { tunnelClient, type TunnelClient } from './forwarded.ts';

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
  accessLog: (entry: Record<string, unknown>) => void;
  connectTimeoutMs?: number;
}

export class Inbound {
  readonly #o: InboundOptions;
  readonly server: HboneServer;
  /** The client each accepted tunnel carries, as decided when it was opened (for its access log). */
  readonly #clients = new WeakMap<HboneConnectRequest, TunnelClient>();

  constructor(opts: InboundOptions) {
    this.#o = opts;
    this.server = new HboneServer({
      tls: { SNICallback: opts.serverTls.SNICallback!, ca: [...opts.trustBundle()] },
      // Workload identities of this mesh only: an agent's node certificate or another mesh's
      // workload is refused before it can open a tunnel.
      trustDomains: [opts.trustDomain, ...(opts.trustDomainAliases ?? [])],
      handler: (req) => this.#handle(req),
      onRefusal: (r) => this.#refused(r),
      onTunnelClosed: (c) => this.#closed(c),
    });
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

  async #handle(req: HboneConnectRequest): Promise<HboneConnectDecision> {
    const { host, port } = req.target;
    const dest = this.#o.state.localWorkload(host);
    if (!dest || !dest.enrolled) {
      return { status: 403, reason: `${host}:${port} is not an enrolled pod on node ${this.#o.node}` };
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
    try {
      this.#o.delivery.authorize(dest, port, {
        ...(principal ? { sourcePrincipal: principal } : {}),
        ...(sourceNamespace ? { sourceNamespace } : {}),
        sourceIp: client.ip,
      });
    } catch (err) {
      if (err instanceof DeniedError) {
        this.#o.accessLog({ direction: 'inbound', src: `${client.ip}:${client.port}`, src_principal: principal, dst: `${host}:${port}`, dst_workload: dest.name, dst_namespace: dest.namespace, denied: err.message, policy: err.policy });
        return { status: err.status, reason: err.message };
      }
      throw err;
    }
    try {
      const upstream = await this.#o.delivery.connectToPod(dest, port, client, this.#o.connectTimeoutMs ?? 5_000);
      this.#clients.set(req, client);
      return { upstream };
    } catch (err) {
      return { status: 503, reason: (err as Error).message };
    }
  }

  #refused(r: HboneRefusal): void {
    this.#o.metrics.denied.inc({ reporter: 'destination', reason: r.kind, destination_workload: 'unknown', destination_workload_namespace: 'unknown' });
    this.#o.log.info('HBONE refused', { kind: r.kind, status: r.status, reason: r.reason, peer: r.peer?.spiffeId, address: r.peer?.address, authority: r.authority });
  }

  #closed(c: HboneTunnelClosed): void {
    const dest = this.#o.state.localWorkload(c.request.target.host);
    const principal = c.request.peer.spiffeId;
    const src = workloadOf(principal);
    const labels = {
      reporter: 'destination',
      source_workload: src?.serviceAccount ?? 'unknown',
      source_workload_namespace: src?.namespace ?? 'unknown',
      source_principal: principal ?? 'unknown',
      destination_workload: dest?.name ?? 'unknown',
      destination_workload_namespace: dest?.namespace ?? 'unknown',
      destination_principal: dest?.spiffeId ?? 'unknown',
      destination_service: 'unknown',
      connection_security_policy: 'mutual_tls',
    };
    const m = this.#o.metrics;
    m.opened.inc(labels);
    m.closed.inc(labels);
    // From the destination's point of view: bytes from the tunnel (a) are received by the pod.
    m.received.inc(labels, c.bytesAtoB);
    m.sent.inc(labels, c.bytesBtoA);
    this.#o.accessLog({
      direction: 'inbound',
      src: clientAddress(this.#clients.get(c.request)) ?? c.request.peer.address,
      peer: `${c.request.peer.address}:${c.request.peer.port}`,
      src_principal: principal,
      dst: c.request.authority,
      dst_workload: dest?.name,
      dst_namespace: dest?.namespace,
      security: 'mutual_tls',
      bytes_in: c.bytesAtoB,
      bytes_out: c.bytesBtoA,
      duration_ms: Math.round(c.durationMs),
      ...(c.error ? { error: c.error.message } : {}),
    });
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

function clientAddress(c: TunnelClient | undefined): string | undefined {
  return c ? `${c.ip}:${c.port}` : undefined;
}
