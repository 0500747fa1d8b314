// The agent's workload certificates: CertManager (keys, CSRs, caching, renewal, TLS options)
// over a CertificateSigner (the controller's certificate service).
export { CertManager, type CertManagerOptions, type CertificateInfo, type CertManagerEvents, type BackoffOptions, type RenewalRetry, DEFAULT_RENEW_FRACTION, DEFAULT_BACKOFF_INITIAL_MS, DEFAULT_BACKOFF_MAX_MS, MIN_RETRY_MS, nextRetry } from './manager.ts';
export { GrpcCertificateSigner, type GrpcSignerOptions, type CertificateSigner, type SignResult } from './signer.ts';
