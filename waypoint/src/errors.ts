// One error class per waypoint failure kind. `code` is stable: logs, metrics and tests match on it;
// the message tells an operator what to look at.

export class WaypointError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** One problem found while validating a WaypointConfig, naming the object and the field. */
export interface ConfigIssue {
  /** `HTTPRoute`, `AuthorizationPolicy`, `TrafficPolicy`, `Service`, ... */
  kind: string;
  /** `namespace/name` of the object. */
  object: string;
  /** Field path inside the compiled object, e.g. `rules[0].matches[1].path.value`. */
  path: string;
  message: string;
}

export function formatConfigIssue(i: ConfigIssue): string {
  return `${i.kind} ${i.object}: ${i.path}: ${i.message}`;
}

/** A WaypointConfig was rejected; the previous configuration keeps serving. */
export class ConfigRejectedError extends WaypointError {
  readonly issues: ConfigIssue[];
  constructor(issues: ConfigIssue[]) {
    super('WEFT_WAYPOINT_CONFIG_REJECTED',
      `waypoint configuration rejected, the last good one keeps serving: ` +
      (issues.length === 1 ? formatConfigIssue(issues[0]!) : issues.map(formatConfigIssue).join('; ')));
    this.issues = issues;
  }
}

/** The waypoint could not open a connection (or HBONE tunnel) to an endpoint. */
export class UpstreamConnectError extends WaypointError {
  readonly endpoint: string;
  constructor(endpoint: string, detail: string, cause?: unknown) {
    super('WEFT_WAYPOINT_UPSTREAM_CONNECT',
      `connect to endpoint ${endpoint} failed: ${detail}; check that the pod is running and that its ` +
      `node agent accepts HBONE on port 15008`, { cause });
    this.endpoint = endpoint;
  }
}

/** The upstream did not answer within the per-try or request timeout. */
export class UpstreamTimeoutError extends WaypointError {
  readonly timeoutMs: number;
  constructor(what: 'per-try' | 'request' | 'connect', timeoutMs: number) {
    super('WEFT_WAYPOINT_UPSTREAM_TIMEOUT',
      `upstream ${what} timeout of ${timeoutMs} ms expired; raise the TrafficPolicy timeout or look at the backend's latency`);
    this.timeoutMs = timeoutMs;
  }
}

/** The upstream reset the stream or closed the connection before a complete response. */
export class UpstreamResetError extends WaypointError {
  constructor(endpoint: string, detail: string, cause?: unknown) {
    super('WEFT_WAYPOINT_UPSTREAM_RESET', `upstream ${endpoint} reset the request: ${detail}`, { cause });
  }
}

/** The shared quota store (Redis) could not be reached or answered with an error. */
export class QuotaBackendError extends WaypointError {
  constructor(detail: string, cause?: unknown) {
    super('WEFT_WAYPOINT_QUOTA_BACKEND',
      `quota store unavailable: ${detail}; check the Redis address given to the waypoint (--quota-redis)`, { cause });
  }
}

/** A command-line flag is missing or malformed. */
export class FlagError extends WaypointError {
  constructor(message: string) {
    super('WEFT_WAYPOINT_BAD_FLAG', message);
  }
}
