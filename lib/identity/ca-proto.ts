// The certificate service definition (proto/weft/ca.proto), loaded once with
// @grpc/proto-loader, and the message shapes both ends use.
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

export const CA_PROTO_PATH = join(import.meta.dirname, '..', '..', 'proto', 'weft', 'ca.proto');
export const CERTIFICATE_SERVICE_NAME = 'weft.ca.v1.CertificateService';

export interface CreateCertificateRequest {
  identity: string;
  csr: string;
  validitySeconds: number;
}

export interface CreateCertificateResponse {
  certChain: string[];
  trustBundle: string[];
}

export type WatchTrustBundleRequest = Record<string, never>;

export interface TrustBundleMessage {
  roots: string[];
  /** PEM of the CA's signing certificate ('' from a controller that does not say). */
  signer: string;
}

let cached: grpc.ServiceClientConstructor | undefined;

/** The generated client constructor; `.service` is the service definition for servers. */
export function certificateServiceClient(): grpc.ServiceClientConstructor {
  if (!cached) {
    const def = protoLoader.loadSync(CA_PROTO_PATH, { keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true });
    const pkg = grpc.loadPackageDefinition(def) as unknown as { weft: { ca: { v1: { CertificateService: grpc.ServiceClientConstructor } } } };
    cached = pkg.weft.ca.v1.CertificateService;
  }
  return cached;
}
