// Response flags, Envoy's short names where Envoy has one, so dashboards built for Istio read them.
// They appear in the `x-weft-flags` response header of local replies, in access logs and in the
// `response_flags` metric label (`-` when none).

export const FLAG_NO_ROUTE = 'NR';
export const FLAG_NO_HEALTHY_UPSTREAM = 'UH';
export const FLAG_UPSTREAM_OVERFLOW = 'UO';
export const FLAG_UPSTREAM_CONNECT_FAILURE = 'UF';
export const FLAG_UPSTREAM_RESET = 'UR';
export const FLAG_UPSTREAM_TIMEOUT = 'UT';
export const FLAG_RETRY_LIMIT_EXCEEDED = 'URX';
export const FLAG_RATE_LIMITED = 'RL';
export const FLAG_RATE_LIMIT_SERVICE_ERROR = 'RLSE';
export const FLAG_DELAY_INJECTED = 'DI';
export const FLAG_FAULT_INJECTED = 'FI';
export const FLAG_DOWNSTREAM_TERMINATED = 'DC';
/** Nothing moved for the idle timeout, and the waypoint closed the connection (Envoy: SI). */
export const FLAG_STREAM_IDLE_TIMEOUT = 'SI';
/** The waypoint was at --max-requests and refused the request (Envoy: overload manager). */
export const FLAG_OVERLOADED = 'OM';
/** A malformed request: a parse error, or a request target normalization refused (Envoy: DPE). */
export const FLAG_DOWNSTREAM_PROTOCOL_ERROR = 'DPE';
/** Weft-specific: an AuthorizationPolicy denied the request (Envoy records this only in details). */
export const FLAG_POLICY_DENIED = 'RBAC';

export const FLAGS_HEADER = 'x-weft-flags';

/** Flags of one request, in the order they were raised. */
export class ResponseFlags {
  private readonly set = new Set<string>();
  add(flag: string): void {
    this.set.add(flag);
  }
  has(flag: string): boolean {
    return this.set.has(flag);
  }
  get empty(): boolean {
    return this.set.size === 0;
  }
  toString(): string {
    return this.set.size === 0 ? '-' : [...this.set].join(',');
  }
}
