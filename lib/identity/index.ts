// Identity for Weft: SPIFFE IDs, keys and CSRs, the CA, the certificate-service client, a proxy's
// own identity (issued.ts, on the lifecycle renewal.ts it shares with the agent's CertManager, with
// that lifecycle's options and retry schedule) and the TLS options HBONE uses. This file is the public surface; import
// from here.
export {
  IdentityError, SpiffeIdError, MalformedCsrError, CsrSignatureError, CsrIdentityMismatchError, CaLoadError,
  PeerUntrustedError, PeerCertificateExpiredError, PeerIdentityMissingError, PeerIdentityMismatchError, TlsHandshakeError,
  CaUnavailableError, CaAuthenticationError, CertificateRefusedError,
} from './errors.ts';
export {
  type SpiffeId, type WorkloadId, type NodeId, parseSpiffeId, parseWorkloadId, isSpiffeId, formatSpiffeId, workloadId, nodeId,
  validateTrustDomain,
} from './spiffe.ts';
export { type KeyPair, generateKeyPair, createCsr, parseCsr, privateKeyToPem, type ParsedCsr } from './csr.ts';
export {
  CertificateAuthority, type CaOptions, type GenerateRootOptions, type IssueOptions, type IssuedCertificate, type TrustBundleListener,
  DEFAULT_WORKLOAD_CERT_LIFETIME_MS, DEFAULT_MAX_WORKLOAD_CERT_LIFETIME_MS, newSerial,
} from './ca.ts';
export { parseCertificate, splitPemCertificates, type CertificateDetails, type AltNames } from './x509.ts';
export {
  HBONE_ALPN, type TlsCredentials, type PeerExpectation, type VerificationFailureHook, type GuardOptions, secureContextOptions,
  hboneSecureContext, tlsMaterial, hboneServerOptions, hboneClientOptions, peerIdentity, verifyPeer, spiffeIdOfCertificate, workloadInTrustDomain,
  classifyTlsError, guardHboneServer,
} from './tls.ts';
export { CertificateServiceClient, followTrustBundle, type CaClientOptions, type CaClientCredentials, DEFAULT_CA_CALL_DEADLINE_MS } from './ca-client.ts';
export { RenewalBackoff, RENEWAL_BACKOFF_DEFAULTS, type RenewalBackoffOptions, type RenewalOptions, type RenewalFailure } from './renewal.ts';
export { type CertificateSigner, type SignResult, type HeldCertificate, type CertificateState } from './signing.ts';
export { CA_PROTO_PATH, CERTIFICATE_SERVICE_NAME } from './ca-proto.ts';
export {
  IssuedIdentity, ControllerSigner, staticIdentity, CertificateFileIdentityError, type ProxyIdentity, type IssuedIdentityOptions,
  type ControllerSignerOptions, type CertificateView, type RenewalRetry, type IdentityEvents,
} from './issued.ts';
