// The controller's certificate authority service: mount it with addCertificateService on the
// TLS gRPC server (15012) created with createControllerCredentials.
export { addCertificateService, type CertificateService, type CertificateServiceDeps, type PodDirectory, type CaLogRecord, type CertificateOutcome, MAX_CSR_LENGTH } from './service.ts';
export { createControllerCredentials, type ControllerCredentials, type ControllerCredentialsOptions } from './credentials.ts';
export {
  type NodeAuthenticator, type AuthenticatedNode, StaticTokenAuthenticator, NodeAuthenticationError, AuthenticatorUnavailableError,
} from './authn.ts';
// TokenReviewAuthenticator (Kubernetes mode) is in token-review.ts, not re-exported here: it loads
// @kubernetes/client-node, which a controller in config-directory mode does not need.
