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

export interface InboundOptions {
  node: string;
  trustDomain: string;
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

  constructor(opts: InboundOptions) {
    this.#o = opts;
    this.server = new HboneServer({
      tls: { SNICallback: opts.serverTls.SNICallback!, ca: [...opts.trustBundle()] },
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
    const client = parseForwarded(req.forwardedFor) ?? { ip: req.peer.address.replace(/^::ffff:/, ''), port: 0 };
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
      src: c.request.forwardedFor ?? c.request.peer.address,
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

/** `1.2.3.4:5678`, `"1.2.3.4:5678"` or `1.2.3.4` from a Forwarded `for=` value. */
function parseForwarded(v: string | undefined): { ip: string; port: number } | undefined {
  if (!v) return undefined;
  const s = v.replace(/^"|"$/g, '');
  const m = /^\[?([0-9a-fA-F.:]+?)\]?(?::(\d+))?$/.exec(s);
  if (!m || !m[1]) return undefined;
  return { ip: m[1], port: m[2] ? Number(m[2]) : 0 };
}
