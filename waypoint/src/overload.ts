// Protection of the waypoint itself against more downstream work than it can carry: a ceiling on
// the requests in progress at once (all clients, all services), Envoy's overload manager
// `envoy.resource_monitors.downstream_connections` idea applied to requests. A request over the
// ceiling is answered 503 at once by the waypoint (gRPC: UNAVAILABLE) and never sent upstream;
// per-service circuit breaking (upstream overflow, UO) is separate and still applies below it.

/** Default --max-requests. */
export const DEFAULT_MAX_REQUESTS = 10_000;
/** The largest --max-requests accepted. */
export const MAX_REQUESTS_CEILING = 1_000_000;
/** Response header naming the waypoint and the ceiling on an overload answer. */
export const OVERLOADED_HEADER = 'x-weft-overloaded';

/** Counts requests in progress and admits new ones while under the ceiling. */
export class RequestAdmission {
  readonly max: number;
  #active = 0;

  constructor(max: number) {
    if (!Number.isInteger(max) || max < 1 || max > MAX_REQUESTS_CEILING) {
      throw new RangeError(`maxRequests must be a whole number from 1 to ${MAX_REQUESTS_CEILING}, not ${max}`);
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
