/**
 * One error class per HBONE failure kind. `code` is stable (logs, metrics labels and tests match on
 * it); the message says what an operator should look at.
 */

/** Base class so callers can `instanceof HboneError` and then switch on `code`. */
export class HboneError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** The CONNECT (TLS handshake, HTTP/2 session and the 200) did not finish in time. */
export class HboneConnectTimeoutError extends HboneError {
  readonly dest: string;
  readonly timeoutMs: number;
  constructor(dest: string, target: string, timeoutMs: number) {
    super('WEFT_HBONE_CONNECT_TIMEOUT',
      `HBONE connect to ${dest} (target ${target}) timed out after ${timeoutMs} ms; ` +
      `is port ${portOf(dest)} blocked between nodes (firewall, NetworkPolicy, security group)?`);
    this.dest = dest;
    this.timeoutMs = timeoutMs;
  }
}

/** TCP or TLS to the HBONE port failed (refused, reset, handshake alert). */
export class HboneSessionError extends HboneError {
  readonly dest: string;
  constructor(dest: string, detail: string, cause?: unknown) {
    super('WEFT_HBONE_SESSION_FAILED',
      `HBONE session to ${dest} failed: ${detail}; check that the agent or waypoint listens on ` +
      `${dest} and that both sides trust the same mesh CA (weftctl certs)`, { cause });
    this.dest = dest;
  }
}

/** The server's certificate verified, but its SPIFFE ID is not the one this connection expects. */
export class HbonePeerIdentityError extends HboneError {
  readonly dest: string;
  readonly peerSpiffeId: string | undefined;
  readonly reason: string;
  constructor(dest: string, peerSpiffeId: string | undefined, reason: string) {
    super('WEFT_HBONE_PEER_IDENTITY',
      `HBONE peer at ${dest} presented ${peerSpiffeId ?? 'no SPIFFE ID'}: ${reason}; ` +
      `the destination's endpoint or identity in the mesh model may be stale, or something else ` +
      `answers on that address`);
    this.dest = dest;
    this.peerSpiffeId = peerSpiffeId;
    this.reason = reason;
  }
}

/** The server answered the CONNECT with a non-200 status (policy denial, no such target, overload). */
export class HboneRefusedError extends HboneError {
  readonly status: number;
  readonly reason: string;
  readonly target: string;
  constructor(dest: string, target: string, status: number, reason: string) {
    super('WEFT_HBONE_REFUSED',
      `HBONE CONNECT to ${target} via ${dest} refused with ${status}: ${reason || 'no reason given'}` +
      (status === 403 ? '; check the AuthorizationPolicies that select the destination' : ''));
    this.status = status;
    this.reason = reason;
    this.target = target;
  }
}

/** The stream was reset or the session went away before the CONNECT was answered. */
export class HboneStreamError extends HboneError {
  readonly http2Code: number | undefined;
  constructor(dest: string, target: string, detail: string, http2Code?: number, cause?: unknown) {
    super('WEFT_HBONE_STREAM_FAILED',
      `HBONE CONNECT to ${target} via ${dest} failed before a response: ${detail}`, { cause });
    this.http2Code = http2Code;
  }
}

/** A CONNECT target that is not an IP literal with a port. */
export class HboneAuthorityError extends HboneError {
  readonly authority: string;
  constructor(authority: string, detail: string) {
    super('WEFT_HBONE_BAD_AUTHORITY',
      `HBONE CONNECT target ${JSON.stringify(authority)} is invalid: ${detail}; ` +
      `targets are ip:port or [ipv6]:port, never host names`);
    this.authority = authority;
  }
}

/** The pool was closed while a connect was in flight or after. */
export class HbonePoolClosedError extends HboneError {
  constructor() {
    super('WEFT_HBONE_POOL_CLOSED', 'HBONE pool is closed (the process is shutting down)');
  }
}

function portOf(dest: string): string {
  const i = dest.lastIndexOf(':');
  return i >= 0 ? dest.slice(i + 1) : dest;
}
