/**
 * HBONE: TCP tunnelled through HTTP/2 CONNECT over mutual TLS 1.3. The agent (outbound and inbound)
 * and the waypoint use this package; nothing else in lib/hbone is public.
 */
export { HboneServer } from './server.ts';
export type {
  HboneConnectDecision,
  HboneConnectHandler,
  HboneConnectRequest,
  HbonePeer,
  HboneRefusal,
  HboneRefusalKind,
  HboneServerOptions,
  HboneServerStats,
  HboneTunnelClosed,
  ServerTlsMaterial,
} from './server.ts';
export { CALLER_HEADER, callerOf, formatCaller, formatForwardedFor, forwardedFor, isServingWaypoint, parseForwarded, parseForwardedNode, tunnelClient, unmapV4 } from './forwarded.ts';
export type { ForwardedIgnoredReason, ForwardedNode, ForwardedView, TunnelClient } from './forwarded.ts';
export { HbonePool, streamHeadroom } from './pool.ts';
export type { ClientTlsMaterial, HboneConnectOptions, HboneGateway, HbonePoolOptions, HbonePoolStats } from './pool.ts';
export { DEFAULT_PIPE_BUFFER, pipeBidirectional } from './pipe.ts';
export type { PipeOptions, PipeResult } from './pipe.ts';
export { adoptWithPooledReads, pooledReads, readPoolStats } from './read-pool.ts';
export type { ReadPoolStats } from './read-pool.ts';
export { formatAuthority, parseAuthority } from './authority.ts';
export type { TunnelTarget } from './authority.ts';
export { admitWorkloadPeer, checkPeer, spiffeIdFromCert } from './peer.ts';
export type { ExpectedPeer, PeerAdmissionKind, PeerCheck } from './peer.ts';
export {
  HboneAuthorityError,
  HboneConnectTimeoutError,
  HboneError,
  HbonePeerIdentityError,
  HbonePoolClosedError,
  HboneRefusedError,
  HboneSessionError,
  HboneStreamError,
} from './errors.ts';
export {
  DEFAULT_CONNECTION_WINDOW,
  DEFAULT_MAX_CONCURRENT_STREAMS,
  DEFAULT_STREAM_WINDOW,
  HBONE_PORT,
  HBONE_REASON_HEADER,
} from './tuning.ts';
