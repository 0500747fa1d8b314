// The agent's workload certificates: CertManager (keys, CSRs, caching, renewal, TLS options)
// over a CertificateSigner (the controller's certificate service).
export { CertManager, type CertManagerOptions, type CertificateInfo, type CertManagerEvents, type RenewalRetry } from './manager.ts';
export { GrpcCertificateSigner, type GrpcSignerOptions, type CertificateSigner, type SignResult } from './signer.ts';
