// The waypoint's public surface: the engine, its options and the pieces other parts may embed.
export {
  WaypointEngine, detectProtocol, DEFAULT_SERVER_FIRST_TIMEOUT_MS, DEFAULT_MAX_HEADER_BYTES,
  DEFAULT_REQUEST_HEADERS_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_MS,
} from './engine.ts';
export type { AppliedConfig, TunnelInfo, WaypointEngineOptions } from './engine.ts';
export { TcpUpstream, UpstreamPool } from './upstream.ts';
export type { Upstream, UpstreamConnectOptions, UpstreamEndpoint } from './upstream.ts';
export { HboneUpstream, tunnelHandler } from './hbone.ts';
export type { HboneUpstreamOptions } from './hbone.ts';
export { ConfigRejectedError, QuotaBackendError, UpstreamConnectError, UpstreamResetError, UpstreamTimeoutError, WaypointError, FlagError } from './errors.ts';
export type { ConfigIssue } from './errors.ts';
export type { QuotaOptions, QuotaRule, QuotaFailureMode } from './quota.ts';
export type { TelemetryOptions, TracingOptions } from './telemetry.ts';
export { registerRouteFilter } from './filters.ts';
export { registerLoadBalancer } from './loadbalancer.ts';
export { runWaypoint, parseFlags } from './main.ts';
export type { RunningWaypoint, WaypointMainOptions } from './main.ts';
