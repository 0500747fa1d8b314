// Who the client of an inbound HBONE tunnel is. The TCP peer of port 15008 is the source's agent
// (its node address) or a waypoint, never the application, so the source says which client it
// carries in `forwarded: for="ip:port"`. That is a claim, and policy (`ipBlocks`) and the server's
// accept() rest on it, so it is honoured only where the peer is entitled to make it:
//
//  - a waypoint that serves the destination (identity AND address of one of its replicas) speaks
//    for anyone: its clients reached it over HBONE of their own (Istio ztunnel honoured Forwarded
//    only from the destination's waypoint, `check_from_waypoint`, for the same reason);
//  - anyone else speaks only for itself: the address must belong to a workload whose identity is
//    the peer certificate's and whose node address is the TCP peer's (what its agent would send).
//
// Otherwise the claim is ignored, counted and logged, and the client is the TCP peer itself.
import type { ForwardedNode, HbonePeer } from '../../lib/hbone/index.ts';
import type { Waypoint, Workload } from '../../lib/model/mesh.ts';
import { unmapV4 } from './datapath/codecs.ts';

/** Why a `for=` was not honoured (stable strings: metric labels). */
export type ForwardedIgnoredReason =
  /** A forwarded header that names no address under RFC 7239 (or `unknown`, obfuscated). */
  | 'malformed'
  /** No workload or endpoint of the mesh has that address. */
  | 'unknown-address'
  /** The address belongs to a workload of another identity than the peer's. */
  | 'identity-mismatch'
  /** The peer's identity, but the workload runs on another node than the one the tunnel came from. */
  | 'node-mismatch';

export interface TunnelClient {
  ip: string;
  /** 0 when the peer did not say (the agent then lets the kernel report its own source port). */
  port: number;
  /** `forwarded`: the peer's `for=` was honoured; `peer`: the TCP peer itself. */
  source: 'forwarded' | 'peer';
  /** Set when a `for=` was present and not honoured. */
  ignored?: { reason: ForwardedIgnoredReason; claimed: string };
}

/** What the decision needs from the agent's view of the mesh (AgentState). */
export interface ForwardedView {
  addressOwner(ip: string): { spiffeId: string | undefined; nodeIp: string | undefined } | undefined;
  waypointsServing(w: Workload): Waypoint[];
}

/** Is the peer (identity and address) a replica of a waypoint that serves `dest`? */
export function isServingWaypoint(view: ForwardedView, dest: Workload, spiffeId: string | undefined, address: string): boolean {
  if (!spiffeId) return false;
  return view.waypointsServing(dest).some((wp) =>
    wp.spiffeId === spiffeId && (wp.address === address || (wp.addresses ?? []).includes(address)));
}

/** The client of a tunnel to `dest`, from the peer and its `for=` claim (see the top of this file). */
export function tunnelClient(
  view: ForwardedView,
  dest: Workload,
  req: { peer: Pick<HbonePeer, 'spiffeId' | 'address' | 'port'>; forwardedFor: ForwardedNode | undefined; headers: Record<string, string> },
): TunnelClient {
  const peerIp = unmapV4(req.peer.address);
  const peer: TunnelClient = { ip: peerIp, port: req.peer.port, source: 'peer' };
  const claim = req.forwardedFor;
  const raw = req.headers['forwarded'];
  if (!claim) {
    return raw === undefined ? peer : { ...peer, ignored: { reason: 'malformed', claimed: raw.slice(0, 200) } };
  }
  const honoured: TunnelClient = { ip: unmapV4(claim.ip), port: claim.port ?? 0, source: 'forwarded' };
  if (isServingWaypoint(view, dest, req.peer.spiffeId, peerIp)) return honoured;
  const claimed = claim.port ? `${claim.ip}:${claim.port}` : claim.ip;
  const owner = view.addressOwner(honoured.ip);
  if (!owner) return { ...peer, ignored: { reason: 'unknown-address', claimed } };
  if (owner.spiffeId === undefined || owner.spiffeId !== req.peer.spiffeId) return { ...peer, ignored: { reason: 'identity-mismatch', claimed } };
  if (owner.nodeIp === undefined || unmapV4(owner.nodeIp) !== peerIp) return { ...peer, ignored: { reason: 'node-mismatch', claimed } };
  return honoured;
}
