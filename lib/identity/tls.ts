// TLS for HBONE (both directions) and any other Weft mTLS: TLS 1.3 only, ALPN "h2", client
// certificates required, chains verified by OpenSSL against the trust bundle (all roots, so a
// root rotation is just a longer `ca` list), and the peer's SPIFFE ID checked.
//
// Client side: the server's SPIFFE ID is checked inside the handshake by replacing
// checkServerIdentity, so a mismatch fails `connect` with PeerIdentityMismatchError.
// Server side: node:tls has no per-connection verify hook, so OpenSSL rejects untrusted and
// expired client chains in the handshake, and `guardHboneServer` rejects, right after the
// handshake, clients whose certificate carries no acceptable SPIFFE ID. Every refusal is
// reported to an optional hook (counters) as a typed IdentityError.
//
// Never pass a `session` to resume: Node skips checkServerIdentity on resumed sessions.
import { createSecureContext, type ConnectionOptions, type PeerCertificate, type SecureContext, type SecureContextOptions, type Server, type TLSSocket, type TlsOptions } from 'node:tls';
import {
  IdentityError, PeerCertificateExpiredError, PeerIdentityMismatchError, PeerIdentityMissingError, PeerUntrustedError,
  SpiffeIdError, TlsHandshakeError,
} from './errors.ts';
import { parseSpiffeId, type SpiffeId } from './spiffe.ts';
import { parseCertificate } from './x509.ts';

export const HBONE_ALPN = 'h2';

/** Key, chain and trust bundle of one local identity, PEM. */
export interface TlsCredentials {
  /** PKCS#8 private key. */
  key: string;
  /** Leaf first, then intermediates. */
  certChain: readonly string[];
  /** Root certificates to verify peers against (more than one during a root rotation). */
  trustBundle: readonly string[];
}

/**
 * Which peer is acceptable: an exact SPIFFE ID, or a predicate over the parsed ID (e.g. "any
 * workload in trust domain X"). A predicate may return false to refuse.
 */
export type PeerExpectation = string | ((id: SpiffeId) => boolean);

/** Called with the typed reason whenever a peer is refused; hook metrics here. */
export type VerificationFailureHook = (err: IdentityError, side: 'client' | 'server') => void;

export function secureContextOptions(creds: TlsCredentials): SecureContextOptions {
  return {
    key: creds.key,
    cert: creds.certChain.join(''),
    ca: [...creds.trustBundle],
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
  };
}

/**
 * The same material as plain node:tls values ({ key, cert, ca }), the shape lib/hbone's
 * ServerTlsMaterial and ClientTlsMaterial take.
 */
export function tlsMaterial(creds: TlsCredentials): { key: string; cert: string; ca: string[] } {
  return { key: creds.key, cert: creds.certChain.join(''), ca: [...creds.trustBundle] };
}

export function hboneSecureContext(creds: TlsCredentials): SecureContext {
  return createSecureContext(secureContextOptions(creds));
}

/**
 * Options for an HBONE server (tls.createServer / http2.createSecureServer). Pass
 * `credentials` for a single identity, or `SNICallback` to choose the identity per connection
 * (e.g. from a cert manager by the requested server name); both may be given, the first then
 * being the default.
 */
export function hboneServerOptions(source: { credentials?: TlsCredentials; SNICallback?: TlsOptions['SNICallback'] }): TlsOptions {
  const base: TlsOptions = source.credentials ? secureContextOptions(source.credentials) : { minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3' };
  const opts: TlsOptions = {
    ...base,
    requestCert: true,
    rejectUnauthorized: true,
    ALPNProtocols: [HBONE_ALPN],
  };
  if (source.SNICallback) opts.SNICallback = source.SNICallback;
  return opts;
}

/**
 * Options for an HBONE client connection (tls.connect / http2.connect). The server must
 * present a chain to a root in the bundle and a SPIFFE ID matching `expected`.
 */
export function hboneClientOptions(creds: TlsCredentials, expected: PeerExpectation, hook?: VerificationFailureHook): ConnectionOptions {
  return {
    ...secureContextOptions(creds),
    ALPNProtocols: [HBONE_ALPN],
    rejectUnauthorized: true,
    checkServerIdentity: (_host: string, cert: PeerCertificate): Error | undefined => {
      try {
        checkPeer(spiffeIdOfCertificate(cert), expected);
        return undefined;
      } catch (err) {
        if (err instanceof IdentityError) hook?.(err, 'client');
        return err as Error;
      }
    },
  };
}

/** The SPIFFE ID in a peer certificate (exactly one URI SAN, which must be a Weft SPIFFE ID). */
export function spiffeIdOfCertificate(cert: PeerCertificate | Buffer): SpiffeId {
  const raw = Buffer.isBuffer(cert) ? cert : cert.raw;
  if (!raw || raw.length === 0) throw new PeerIdentityMissingError('peer presented no certificate; HBONE peers must present a workload certificate');
  let uris: string[];
  try {
    uris = parseCertificate(raw).uris;
  } catch (err) {
    throw new PeerIdentityMissingError(`peer certificate could not be decoded (${(err as Error).message})`);
  }
  if (uris.length !== 1) {
    throw new PeerIdentityMissingError(`peer certificate has ${uris.length} URI SANs (${uris.join(', ')}); a SPIFFE certificate carries exactly one`);
  }
  try {
    return parseSpiffeId(uris[0]!);
  } catch (err) {
    throw new PeerIdentityMissingError(`peer certificate URI SAN is not a SPIFFE ID Weft accepts: ${(err as SpiffeIdError).message}`);
  }
}

function checkPeer(id: SpiffeId, expected: PeerExpectation): SpiffeId {
  if (typeof expected === 'string') {
    if (id.uri !== expected) throw new PeerIdentityMismatchError(id.uri, expected);
  } else if (!expected(id)) {
    throw new PeerIdentityMismatchError(id.uri, 'an identity the local policy accepts');
  }
  return id;
}

/**
 * The SPIFFE ID of the peer of an established TLS socket (either side). Throws
 * PeerUntrustedError if the chain did not verify and PeerIdentityMissingError if there is
 * no usable SPIFFE ID.
 */
export function peerIdentity(socket: TLSSocket): SpiffeId {
  if (!socket.authorized) {
    throw new PeerUntrustedError(`peer certificate was not verified (${String(socket.authorizationError ?? 'no certificate')}); HBONE requires a certificate from a root in the trust bundle`);
  }
  return spiffeIdOfCertificate(socket.getPeerCertificate());
}

/** peerIdentity plus a check against `expected`; throws PeerIdentityMismatchError. */
export function verifyPeer(socket: TLSSocket, expected: PeerExpectation): SpiffeId {
  return checkPeer(peerIdentity(socket), expected);
}

/** A predicate accepting any workload (not node) identity in one of the given trust domains. */
export function workloadInTrustDomain(...trustDomains: string[]): (id: SpiffeId) => boolean {
  return (id) => id.kind === 'workload' && trustDomains.includes(id.trustDomain);
}

const EXPIRED = new Set(['CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID', 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED', 'ERR_SSL_TLSV1_ALERT_CERTIFICATE_EXPIRED']);
const UNTRUSTED = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT', 'CERT_SIGNATURE_FAILURE', 'CERT_UNTRUSTED', 'CERT_REJECTED', 'INVALID_CA',
  'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA', 'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE', 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED',
  'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE', 'ERR_SSL_CERTIFICATE_VERIFY_FAILED',
]);

/** Maps a node:tls/OpenSSL handshake error to Weft's typed identity errors. */
export function classifyTlsError(err: unknown): IdentityError {
  if (err instanceof IdentityError) return err;
  const e = err as (Error & { code?: string; reason?: string }) | undefined;
  const code = e?.code ?? '';
  const text = `${code} ${e?.message ?? String(err)}`;
  if (EXPIRED.has(code) || /certificate (has )?expired|not yet valid/i.test(text)) {
    return new PeerCertificateExpiredError(`peer certificate is expired or not yet valid (${text.trim()}); the peer's certificate manager must renew it, or clocks differ`, { cause: err });
  }
  if (UNTRUSTED.has(code) || /unknown ca|verify failed|self.signed|unable to get|certificate required|did not return a certificate/i.test(text)) {
    return new PeerUntrustedError(`peer certificate does not chain to a root in the trust bundle (${text.trim()}); check that both sides use the same Weft CA`, { cause: err });
  }
  return new TlsHandshakeError(`TLS handshake failed (${text.trim()})`, { cause: err });
}

export interface GuardOptions {
  /** Which client identities the server accepts (default: any workload identity in any trust domain the bundle verifies). */
  accept?: PeerExpectation;
  onFailure?: VerificationFailureHook;
}

/**
 * Rejects, on an HBONE server, handshakes OpenSSL refused (reported through the hook) and
 * connections whose client certificate has no acceptable SPIFFE ID (destroyed with the typed
 * error right after the handshake). Works for tls.Server and http2 secure servers.
 */
export function guardHboneServer(server: Server, opts: GuardOptions = {}): void {
  const accept: PeerExpectation = opts.accept ?? ((id: SpiffeId) => id.kind === 'workload');
  server.on('tlsClientError', (err: Error, socket: TLSSocket) => {
    // Node verifies the client chain itself after OpenSSL's handshake and, with
    // rejectUnauthorized, destroys the socket without an alert; the reason is only left in
    // socket.authorizationError (e.g. CERT_HAS_EXPIRED), so classify that first.
    const reason = socket?.authorizationError;
    const typed = reason
      ? classifyTlsError(Object.assign(new Error(`client certificate rejected: ${String(reason)}`), { code: String(reason) }))
      : classifyTlsError(err);
    opts.onFailure?.(typed, 'server');
  });
  server.prependListener('secureConnection', (socket: TLSSocket) => {
    try {
      verifyPeer(socket, accept);
    } catch (err) {
      const typed = classifyTlsError(err);
      opts.onFailure?.(typed, 'server');
      socket.destroy(typed);
    }
  });
}
