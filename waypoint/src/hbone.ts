// The waypoint on HBONE: tunnels accepted by lib/hbone's HboneServer become engine tunnels, and
// requests leave through an HbonePool tunnel to the endpoint's node agent with the waypoint's own
// identity (plain TCP for endpoints outside the mesh).
import { duplexPair, type Duplex } from 'node:stream';
import type { HboneConnectHandler, HbonePool } from '../../lib/hbone/index.ts';
import { CALLER_HEADER, HBONE_PORT, formatAuthority, formatCaller, formatForwardedFor } from '../../lib/hbone/index.ts';
import { serverNameForIdentity } from '../../lib/hbone/sni.ts';
import { tlsMaterial, type TlsCredentials } from '../../lib/identity/index.ts';
import { peerFromBaggage, UnverifiedClaims } from '../../lib/telemetry/labels.ts';
import { UpstreamConnectError } from './errors.ts';
import type { TunnelInfo, WaypointEngine } from './engine.ts';
import { TcpUpstream, addr, type Upstream, type UpstreamConnectOptions, type UpstreamEndpoint } from './upstream.ts';

/**
 * After the engine closes its end of a tunnel, the HBONE side gets end-of-stream at once (and passes
 * it on); if the peer has not closed its direction within this long, the tunnel is torn down.
 */
export const TUNNEL_CLOSE_GRACE_MS = 5000;

/**
 * An HboneServer handler that hands every CONNECT to the engine. HboneServer pipes the CONNECT
 * stream to the Duplex it is given, so the engine gets the other end of an in-memory pair.
 */
export function tunnelHandler(
  engine: Pick<WaypointEngine, 'handleTunnel' | 'tunnelClient'>,
  onForwardedIgnored?: (fields: Record<string, unknown>) => void,
): HboneConnectHandler {
  // The waypoint has no list of every caller's workload to check baggage against: the claims are
  // bounded per identity instead, so that a peer cannot mint metric series.
  const claims = new UnverifiedClaims();
  return async (req) => {
    const [ours, theirs] = duplexPair();
    const info: TunnelInfo = { target: req.authority };
    if (req.peer.spiffeId) info.peerSpiffeId = req.peer.spiffeId;
    const claimed = peerFromBaggage(req.headers['baggage'], req.peer.spiffeId);
    const peerMeta = claimed && req.peer.spiffeId ? claims.take(req.peer.spiffeId, claimed) : undefined;
    if (peerMeta) info.peerMeta = peerMeta;
    const client = engine.tunnelClient(req);
    if (client.ignored) onForwardedIgnored?.({ reason: client.ignored.reason, claimed: client.ignored.claimed, peer: req.peer.spiffeId, peerAddress: client.ip });
    if (client.ip) info.clientAddress = client.ip;
    if (client.source === 'forwarded' && client.port) info.clientPort = client.port;
    ours.once('close', () => {
      setTimeout(() => { if (!theirs.destroyed) theirs.destroy(); }, TUNNEL_CLOSE_GRACE_MS).unref();
    });
    // The server tears `theirs` down when the tunnel is reset (its peer's RST_STREAM, memory
    // pressure): a pair passes that on to `ours` as a clean end at most, and the engine would
    // send the endpoint a FIN and keep writing into a pair nobody reads. A close before both
    // directions finished is a reset: `ours` goes with an error, so the engine resets the endpoint
    // (RFC 9113 8.5: a stream error becomes a TCP RST).
    theirs.once('close', () => {
      if (ours.destroyed || (theirs.readableEnded && theirs.writableFinished)) return;
      ours.destroy(theirs.errored ?? new Error('HBONE tunnel reset'));
    });
    // The engine listens for errors on `ours` once it takes it; one before that costs only the tunnel.
    ours.on('error', () => {});
    engine.handleTunnel(ours, info);
    // What the pair holds on the engine's side counts against the server's memory budget too.
    return { upstream: theirs, inner: ours };
  };
}

export interface HboneUpstreamOptions {
  pool: HbonePool;
  /** The waypoint's current credentials (they rotate). */
  credentials: () => TlsCredentials;
  /** The waypoint's SPIFFE ID: the pool's source key. */
  spiffeId: string;
  /** Port of the agents' HBONE servers. Default 15008. */
  hbonePort?: number;
  /** For endpoints outside the mesh. Default plain TCP. */
  direct?: Upstream;
  /** The waypoint's own workload as W3C baggage, sent on each CONNECT (the agent labels its source with it). */
  baggage?: () => string | undefined;
}

export class HboneUpstream implements Upstream {
  private readonly o: HboneUpstreamOptions;
  private readonly direct: Upstream;

  constructor(o: HboneUpstreamOptions) {
    this.o = o;
    this.direct = o.direct ?? new TcpUpstream();
  }

  async connect(ep: UpstreamEndpoint, opts: UpstreamConnectOptions): Promise<Duplex> {
    if (!ep.node || !ep.spiffeId) return this.direct.connect(ep, opts);
    const servername = serverNameForIdentity(ep.spiffeId);
    const baggage = this.o.baggage?.();
    const gw = ep.gateway;
    const headers: Record<string, string> = {
      ...(baggage ? { baggage } : {}),
      // No `forwarded` claim through another network's gateway: the destination's TCP peer is the
      // gateway, so it could not be honoured there (as agents, agent/src/outbound.ts).
      ...(opts.forwardedFor && !gw ? { forwarded: formatForwardedFor(opts.forwardedFor.ip, opts.forwardedFor.port || undefined) } : {}),
      // The caller by identity, through a gateway too: the destination's DENY policies judge it.
      ...this.#caller(opts),
    };
    const agent = `${ep.node}:${this.o.hbonePort ?? HBONE_PORT}`;
    try {
      return await this.o.pool.connect({
        sourceKey: this.o.spiffeId,
        tls: { ...tlsMaterial(this.o.credentials()), ...(servername ? { servername } : {}) },
        dest: { host: ep.node, port: this.o.hbonePort ?? HBONE_PORT },
        target: formatAuthority(ep.ip, ep.port),
        expectPeer: ep.spiffeId,
        timeoutMs: opts.timeoutMs,
        ...(Object.keys(headers).length > 0 ? { headers } : {}),
        // An endpoint on another network (multi-cluster): through that network's east-west gateway,
        // double HBONE as agents do it (lib/hbone/pool.ts); the gateway sees only ciphertext and the
        // destination agent authenticates the waypoint itself.
        ...(gw ? { gateway: { host: gw.address, port: gw.port, expectPeer: gw.spiffeId } } : {}),
        // GOAWAY (the agent or the gateway drains) or rotation: the tunnel finishes what it carries, takes no new work.
        ...(opts.onDraining ? { onRetired: opts.onDraining } : {}),
      });
    } catch (err) {
      throw new UpstreamConnectError(addr(ep), gw
        ? `double HBONE via gateway ${gw.address}:${gw.port} (${gw.network}) to ${agent}: ${(err as Error).message}`
        : `HBONE via ${ep.node}: ${(err as Error).message}`, err);
    }
  }

  /** The caller by identity (lib/hbone/forwarded.ts CALLER_HEADER): the destination's DENY policies judge it too. */
  #caller(opts: UpstreamConnectOptions): Record<string, string> {
    return opts.caller ? { [CALLER_HEADER]: formatCaller(this.o.spiffeId, opts.caller) } : {};
  }
}
