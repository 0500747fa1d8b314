// Inbound (port 15008): HBONE tunnels from other nodes' agents and from waypoints. The peer's
// chain and SPIFFE ID are verified in the TLS handshake (the server presents the identity the
// client asked for in the SNI); each CONNECT must name an enrolled pod on this node (the agent is
// not an open proxy) and pass that pod's L4 AuthorizationPolicies. The pod then sees the real
// client address (the datapath's getpeername hook), not the agent's.
import type { Duplex } from 'node:stream';
import { HboneServer, type HboneConnectRequest, type HboneConnectDecision, type HboneRefusal, type HboneTunnelClosed } from '../../lib/hbone/index.ts';
import { identityForServerName } from '../../lib/hbone/sni.ts';
import { evaluate, type ConnectionAttributes } from '../../lib/policy/authz.ts';
import type { Workload } from '../../lib/model/mesh.ts';
import type { Logger } from '../../lib/log.ts';
import { parseWorkloadId } from '../../lib/identity/spiffe.ts';
import type { AgentState } from './state.ts';
import { ConnectionRecord, inboundService, type AccessLogSink, type AgentMetrics } from './metrics.ts';
import { FLAG_CONNECT, FLAG_DENY, peerFromBaggage } from '../../lib/telemetry/labels.ts';
import type { OriginalDestinationSource } from './outbound.ts';
import { connectTcp } from './connect.ts';

export class DeniedError extends Error {
  readonly code = 'WEFT_DENIED';
  readonly status: number;
  readonly policy: string | undefined;
  constructor(message: string, status = 403, policy?: string) {
    super(message);
    this.name = 'DeniedError';
    this.status = status;
    this.policy = policy;
  }
}

/** Authorization and pod connections, shared by inbound tunnels and same-node outbound. */
export class InboundAuthorizer {
  readonly #state: AgentState;
  readonly #datapath: OriginalDestinationSource;
  readonly #nodeIp: string;
  readonly #metrics: AgentMetrics;
  readonly #log: Logger;

  constructor(opts: { state: AgentState; datapath: OriginalDestinationSource; nodeIp: string; metrics: AgentMetrics; log: Logger }) {
    this.#state = opts.state;
    this.#datapath = opts.datapath;
    this.#nodeIp = opts.nodeIp;
    this.#metrics = opts.metrics;
    this.#log = opts.log;
  }

  /** Throws DeniedError (and counts it) unless the destination's policies allow the connection. */
  authorize(dest: Workload, port: number, src: Omit<ConnectionAttributes, 'destinationPort'>): void {
    const decision = evaluate(this.#state.policiesFor(dest), { ...src, destinationIp: dest.ip, destinationPort: port });
    if (decision.allowed) return;
    this.#metrics.denied.inc({ reporter: 'destination', reason: 'policy', destination_workload: dest.workloadName, destination_workload_namespace: dest.namespace });
    this.#log.info('connection denied', { reason: decision.reason, policy: decision.policy, source: src.sourcePrincipal ?? src.sourceIp, destination: `${dest.namespace}/${dest.name}:${port}` });
    throw new DeniedError(decision.reason, 403, decision.policy);
  }

  /** Connects to a local pod so that the pod sees `client` as its peer. */
  async connectToPod(dest: Workload, port: number, client: { ip: string; port: number }, timeoutMs: number): Promise<Duplex> {
    let reg: { local: { ip: string; port: number }; remote: { ip: string; port: number } } | undefined;
    const socket = await connectTcp(`${dest.ip}:${port}`, {
      sourceIp: this.#nodeIp,
      timeoutMs,
      beforeConnect: (localPort) => {
        reg = { local: { ip: dest.ip, port }, remote: { ip: this.#nodeIp, port: localPort } };
        try {
          this.#datapath.registerPeer({ ...reg, client: { ip: client.ip, port: client.port || localPort } });
        } catch (err) {
          reg = undefined;
          this.#log.warn('cannot register the client address for the pod', { error: (err as Error).message });
        }
      },
    }).catch((err: Error) => {
      if (reg) this.#datapath.unregisterPeer(reg);
      throw err;
    });
    if (reg) {
      const r = reg;
      socket.once('close', () => this.#datapath.unregisterPeer(r));
    }
    return socket;
  }
}

export interface InboundOptions {
  node: string;
  trustDomain: string;
  state: AgentState;
  authorizer: InboundAuthorizer;
  /** TLS options choosing the served identity per SNI (CertManager#serverOptions). */
  serverTls: import('node:tls').TlsOptions;
  /** Current trust bundle: client chains verify against it (re-read on trustBundleChanged). */
  trustBundle: () => readonly string[];
  metrics: AgentMetrics;
  log: Logger;
  accessLog: AccessLogSink;
  connectTimeoutMs?: number;
}

export class Inbound {
  readonly #o: InboundOptions;
  readonly server: HboneServer;
  /** The record of each tunnel carried, until the server reports it closed. */
  readonly #records = new WeakMap<HboneConnectRequest, ConnectionRecord>();

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
    const service = inboundService(this.#o.state.current.services, dest, port);
    const record = new ConnectionRecord(this.#o.metrics, {
      reporter: 'destination',
      // The peer's agent (or waypoint) describes its workload in `baggage`; believed only for the
      // namespace the peer's certificate proves.
      source: { meta: peerFromBaggage(req.headers['baggage'], principal), principal },
      destination: { meta: dest, principal: dest.spiffeId },
      service: service ? { hostname: service.hostname, name: service.name, namespace: service.namespace } : undefined,
      security: 'mutual_tls',
      srcAddr: `${client.ip}:${client.port}`,
      dstAddr: `${host}:${port}`,
      hboneAddr: req.authority,
      dstPod: dest.name,
      logging: dest.telemetry?.accessLogging,
    }, this.#o.accessLog);
    try {
      this.#o.authorizer.authorize(dest, port, {
        ...(principal ? { sourcePrincipal: principal } : {}),
        ...(sourceNamespace ? { sourceNamespace } : {}),
        sourceIp: client.ip,
      });
    } catch (err) {
      if (err instanceof DeniedError) {
        record.close({ bytesToDestination: 0, bytesToSource: 0, flags: FLAG_DENY, error: `denied: ${err.message}${err.policy ? ` (policy ${err.policy})` : ''}` });
        return { status: err.status, reason: err.message };
      }
      throw err;
    }
    try {
      const upstream = await this.#o.authorizer.connectToPod(dest, port, client, this.#o.connectTimeoutMs ?? 5_000);
      this.#records.set(req, record);
      return { upstream };
    } catch (err) {
      record.close({ bytesToDestination: 0, bytesToSource: 0, flags: FLAG_CONNECT, error: (err as Error).message });
      return { status: 503, reason: (err as Error).message };
    }
  }

  #refused(r: HboneRefusal): void {
    this.#o.metrics.denied.inc({ reporter: 'destination', reason: r.kind, destination_workload: 'unknown', destination_workload_namespace: 'unknown' });
    this.#o.log.info('HBONE refused', { kind: r.kind, status: r.status, reason: r.reason, peer: r.peer?.spiffeId, address: r.peer?.address, authority: r.authority });
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

/** `1.2.3.4:5678`, `"1.2.3.4:5678"` or `1.2.3.4` from a Forwarded `for=` value. */
function parseForwarded(v: string | undefined): { ip: string; port: number } | undefined {
  if (!v) return undefined;
  const s = v.replace(/^"|"$/g, '');
  const m = /^\[?([0-9a-fA-F.:]+?)\]?(?::(\d+))?$/.exec(s);
  if (!m || !m[1]) return undefined;
  return { ip: m[1], port: m[2] ? Number(m[2]) : 0 };
}
