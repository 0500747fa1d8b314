// One error class per identity failure kind. Each carries a stable `code` that metrics, logs and
// callers can switch on, and a message that says what was wrong and what to do about it.

export class IdentityError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** A string that is not a SPIFFE ID of the form Weft issues. */
export class SpiffeIdError extends IdentityError {
  constructor(message: string) {
    super('WEFT_SPIFFE_ID_INVALID', message);
  }
}

/** DER/PEM input that cannot be decoded (CSR, certificate or key). */
export class MalformedCsrError extends IdentityError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('WEFT_CSR_MALFORMED', message, options);
  }
}

/** A CSR whose self-signature does not verify with the public key it carries. */
export class CsrSignatureError extends IdentityError {
  constructor(message: string) {
    super('WEFT_CSR_BAD_SIGNATURE', message);
  }
}

/** A CSR asking for a different identity than the one the requester is authorised for. */
export class CsrIdentityMismatchError extends IdentityError {
  readonly requested: readonly string[];
  readonly authorised: string;
  constructor(requested: readonly string[], authorised: string) {
    super(
      'WEFT_CSR_IDENTITY_MISMATCH',
      `the CSR asks for URI SAN ${requested.length ? requested.join(', ') : '(none)'} but the request is authorised for ${authorised}; ` +
        'build the CSR with exactly one URI SAN equal to the requested SPIFFE ID',
    );
    this.requested = requested;
    this.authorised = authorised;
  }
}

/**
 * A certificate request asking for a longer lifetime than the CA grants. Refused rather than cut, as
 * Istio's CA refuses it (pkg/security/pkg/pki/ca: "requested TTL ... is greater than the max allowed
 * TTL"): the requester learns its setting is wrong instead of renewing on a schedule it did not ask for.
 */
export class CertificateLifetimeError extends IdentityError {
  constructor(message: string) {
    super('WEFT_CERT_LIFETIME', message);
  }
}

/** CA material (certificate, key, Secret data) that cannot be loaded or does not fit together. */
export class CaLoadError extends IdentityError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('WEFT_CA_LOAD', message, options);
  }
}

/** A peer certificate chain that does not lead to a root in the trust bundle. */
export class PeerUntrustedError extends IdentityError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('WEFT_TLS_PEER_UNTRUSTED', message, options);
  }
}

/** A peer certificate that is expired or not yet valid. */
export class PeerCertificateExpiredError extends IdentityError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('WEFT_TLS_PEER_EXPIRED', message, options);
  }
}

/** A peer that presented no certificate, or one without a usable SPIFFE ID. */
export class PeerIdentityMissingError extends IdentityError {
  constructor(message: string) {
    super('WEFT_TLS_PEER_NO_IDENTITY', message);
  }
}

/** A peer whose SPIFFE ID is valid and trusted but not the one expected. */
export class PeerIdentityMismatchError extends IdentityError {
  readonly actual: string;
  readonly expected: string;
  constructor(actual: string, expected: string) {
    super(
      'WEFT_TLS_PEER_ID_MISMATCH',
      `peer presented SPIFFE ID ${actual} but ${expected} was expected; check the service account the peer runs under and the mesh model's expectation for it`,
    );
    this.actual = actual;
    this.expected = expected;
  }
}

/** Any other TLS handshake failure (protocol version, ALPN, reset during the handshake). */
export class TlsHandshakeError extends IdentityError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('WEFT_TLS_HANDSHAKE', message, options);
  }
}

/** The certificate service could not be reached or did not answer in time (retry with backoff). */
export class CaUnavailableError extends IdentityError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('WEFT_CA_UNAVAILABLE', message, options);
  }
}

/** The certificate service did not accept the caller's credentials (bootstrap token, ServiceAccount token or node certificate). */
export class CaAuthenticationError extends IdentityError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('WEFT_CA_UNAUTHENTICATED', message, options);
  }
}

/** The certificate service refused the request (identity not allowed for this node, or a bad CSR). */
export class CertificateRefusedError extends IdentityError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('WEFT_CA_REFUSED', message, options);
  }
}
