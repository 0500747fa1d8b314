// Protection of the waypoint itself against more downstream work than it can carry: a ceiling on
// the requests in progress at once (all clients, all services), Envoy's overload manager
// `envoy.resource_monitors.downstream_connections` idea applied to requests. A request over the
// ceiling is answered 503 at once by the waypoint (gRPC: UNAVAILABLE) and never sent upstream;
// per-service circuit breaking (upstream overflow, UO) is separate and still applies below it.

/** Default --max-requests. */
export const DEFAULT_MAX_REQUESTS = 10_000;
/** The largest --max-requests accepted. */
export const MAX_REQUESTS_CEILING = 1_000_000;
/**
 * Default ceiling on RequestMirror copies in flight in the waypoint (Envoy's default circuit breaker
 * max_requests): a copy holds its body and a connection for up to 30 s, apart from the request
 * it copies (which may be long answered), so it needs a bound of its own. Past it, copies are
 * dropped; requests are never refused for a mirror.
 */
export const DEFAULT_MAX_MIRRORS = 1024;
/** Response header naming the waypoint and the ceiling on an overload answer. */
export const OVERLOADED_HEADER = 'x-weft-overloaded';

/** Counts requests in progress and admits new ones while under the ceiling. */
export class RequestAdmission {
  readonly max: number;
  #active = 0;

  /** `what` names the setting in the error. */
  constructor(max: number, what = 'maxRequests') {
    if (!Number.isInteger(max) || max < 1 || max > MAX_REQUESTS_CEILING) {
      throw new RangeError(`${what} must be a whole number from 1 to ${MAX_REQUESTS_CEILING}, not ${max}`);
    }
    this.max = max;
  }

  /** Requests admitted and not finished. */
  get active(): number {
    return this.#active;
  }

  /** Admits a request (the caller must release() it exactly once when it ends), or refuses it. */
  tryAdmit(): boolean {
    if (this.#active >= this.max) return false;
    this.#active++;
    return true;
  }

  release(): void {
    if (this.#active > 0) this.#active--;
  }
}
