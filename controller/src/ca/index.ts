// The controller's certificate authority service: mount it with addCertificateService on the
// TLS gRPC server (15012) created with createControllerCredentials.
export { addCertificateService, type CertificateService, type CertificateServiceDeps, type PodDirectory, type CaLogRecord, type CertificateOutcome, MAX_CSR_LENGTH } from './service.ts';
export { createControllerCredentials, type ControllerCredentials, type ControllerCredentialsOptions } from './credentials.ts';
export {
  type NodeAuthenticator, type AuthenticatedNode, StaticTokenAuthenticator, TokenReviewAuthenticator, type TokenReviewAuthenticatorOptions,
  NodeAuthenticationError, AuthenticatorUnavailableError, NODE_NAME_EXTRA, DEFAULT_AGENT_SERVICE_ACCOUNTS,
} from './authn.ts';
