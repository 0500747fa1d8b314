// gRPC client for the certificate service (proto/weft/ca.proto). Used by agents (and anything
// else that holds workload certificates) to get CSRs signed.
//
// The channel is TLS; the controller's certificate is verified against the trust bundle and
// its SPIFFE ID against `serverIdentity`. The caller authenticates with a bearer token (a
// per-node bootstrap token, or a Kubernetes ServiceAccount token) or with its node
// certificate (mTLS). Failures become typed errors: CaUnavailableError (retry),
// CaAuthenticationError, CertificateRefusedError.
import * as grpc from '@grpc/grpc-js';
import { CaAuthenticationError, CaUnavailableError, CertificateRefusedError, IdentityError } from './errors.ts';
import { certificateServiceClient, type CreateCertificateRequest, type CreateCertificateResponse, type TrustBundleMessage } from './ca-proto.ts';
import { spiffeIdOfCertificate, type PeerExpectation } from './tls.ts';
import type { SpiffeId } from './spiffe.ts';
import { RenewalBackoff, type RenewalBackoffOptions } from './renewal.ts';

/** Default deadline of one CreateCertificate call. */
export const DEFAULT_CA_CALL_DEADLINE_MS = 10_000;

/** TLS server name (SNI) the client sends to the certificate service. */
export const CA_TLS_SERVER_NAME = 'weft-controller';

export type CaClientCredentials =
  | { kind: 'token'; token: () => string | Promise<string> }
  | { kind: 'mtls'; key: string; certChain: readonly string[] };

export interface CaClientOptions {
  /** host:port of the controller's TLS gRPC port (15012). */
  address: string;
  /** Roots to verify the controller's certificate against. */
  trustBundle: readonly string[];
  /** The controller's expected SPIFFE ID, or a predicate. */
  serverIdentity: PeerExpectation;
  credentials: CaClientCredentials;
  /** Deadline per call (default 10 s). */
  deadlineMs?: number;
}

interface RawClient extends grpc.Client {
  createCertificate(req: CreateCertificateRequest, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: CreateCertificateResponse) => void): grpc.ClientUnaryCall;
  watchTrustBundle(req: Record<string, never>, md: grpc.Metadata): grpc.ClientReadableStream<TrustBundleMessage>;
}

export class CertificateServiceClient {
  readonly address: string;
  /** The gRPC client of the current channel; replaced after a call found no connection. */
  #client: RawClient | undefined;
  readonly #newClient: () => RawClient;
  readonly #deadlineMs: number;
  readonly #token: (() => string | Promise<string>) | undefined;
  #closed = false;

  constructor(opts: CaClientOptions) {
    this.address = opts.address;
    this.#deadlineMs = opts.deadlineMs ?? DEFAULT_CA_CALL_DEADLINE_MS;
    const expected = opts.serverIdentity;
    const verify: grpc.VerifyOptions = {
      checkServerIdentity: (_host, cert) => {
        try {
          const id: SpiffeId = spiffeIdOfCertificate(cert);
          const ok = typeof expected === 'string' ? id.uri === expected : expected(id);
          return ok ? undefined : new CaAuthenticationError(`certificate service at ${opts.address} presented ${id.uri}, not the expected controller identity`);
        } catch (err) {
          return err as Error;
        }
      },
    };
    const roots = Buffer.from(opts.trustBundle.join(''));
    const creds = opts.credentials;
    const channelCreds = creds.kind === 'mtls'
      ? grpc.credentials.createSsl(roots, Buffer.from(creds.key), Buffer.from(creds.certChain.join('')), verify)
      : grpc.credentials.createSsl(roots, null, null, verify);
    this.#token = creds.kind === 'token' ? creds.token : undefined;
    const Ctor = certificateServiceClient();
    // The controller is identified by its SPIFFE ID, not its host name, so the TLS server name is
    // a fixed label (an IP address there would be ignored with a warning, RFC 6066).
    const channelOpts = { 'grpc.use_local_subchannel_pool': 1, 'grpc.ssl_target_name_override': CA_TLS_SERVER_NAME };
    this.#newClient = () => new Ctor(opts.address, channelCreds, channelOpts) as unknown as RawClient;
  }

  #current(): RawClient {
    this.#client ??= this.#newClient();
    return this.#client;
  }

  /**
   * A call on `used` found no connection (UNAVAILABLE): drop that channel, so that the next call
   * connects at once. Left alone, the channel would stay in gRPC's own reconnect backoff (1 s,
   * growing 1.6× up to 120 s) and fail every call without trying until it ends, on top of the
   * caller's retry schedule: a CA that is back would be seen late.
   */
  #dropIfUnavailable(used: RawClient, err: grpc.ServiceError): void {
    if (err.code !== grpc.status.UNAVAILABLE || this.#client !== used) return;
    this.#client = undefined;
    used.close();
  }

  async #metadata(): Promise<grpc.Metadata> {
    const md = new grpc.Metadata();
    if (this.#token) md.set('authorization', `Bearer ${await this.#token()}`);
    return md;
  }

  /** Asks the CA to sign `csr` (PEM) for `identity`. */
  async createCertificate(identity: string, csr: string, validitySeconds = 0): Promise<CreateCertificateResponse> {
    const md = await this.#metadata();
    if (this.#closed) throw new CaUnavailableError(`certificate service client for ${this.address} is closed`);
    const client = this.#current();
    return new Promise((resolve, reject) => {
      client.createCertificate(
        { identity, csr, validitySeconds },
        md,
        { deadline: Date.now() + this.#deadlineMs },
        (err, res) => {
          if (err) {
            this.#dropIfUnavailable(client, err);
            reject(toIdentityError(err, this.address, identity));
          } else if (!res || res.certChain.length === 0) reject(new CaUnavailableError(`certificate service at ${this.address} answered without a certificate for ${identity}`));
          else resolve(res);
        },
      );
    });
  }

  /**
   * Streams the trust bundle: `onBundle` gets the current roots and the CA's signing certificate
   * (undefined from a controller that does not say), then every change. Returns a
   * cancel function. `onEnd` is called once when the stream fails or ends (reconnect there).
   */
  async watchTrustBundle(onBundle: (roots: string[], signer?: string) => void, onEnd: (err: IdentityError) => void): Promise<() => void> {
    const md = await this.#metadata();
    if (this.#closed) throw new CaUnavailableError(`certificate service client for ${this.address} is closed`);
    const client = this.#current();
    const call = client.watchTrustBundle({}, md);
    let cancelled = false;
    call.on('data', (m: TrustBundleMessage) => onBundle(m.roots, m.signer || undefined));
    // A refused stream emits 'end' and 'error' both; its status says which it was, once.
    call.on('error', (err: grpc.ServiceError) => {
      if (cancelled) return;
      cancelled = true;
      this.#dropIfUnavailable(client, err);
      onEnd(toIdentityError(err, this.address, 'trust bundle'));
    });
    call.on('status', (status: grpc.StatusObject) => {
      if (cancelled || status.code !== grpc.status.OK) return;
      cancelled = true;
      onEnd(new CaUnavailableError(`trust bundle stream from ${this.address} ended; reconnect`));
    });
    return () => {
      cancelled = true;
      call.cancel();
    };
  }

  close(): void {
    this.#closed = true;
    this.#client?.close();
    this.#client = undefined;
  }
}

/**
 * Follows the CA's published roots for as long as the caller wants them: opens the trust bundle
 * stream on the client `client()` returns at that moment (a caller may swap channels, e.g. after
 * new roots), and when the stream ends or cannot be opened, opens it again after a backoff that a
 * received bundle resets. Returns the function that stops it.
 */
export function followTrustBundle(
  client: () => Pick<CertificateServiceClient, 'watchTrustBundle'>,
  onBundle: (roots: string[], signer?: string) => void,
  opts: { backoff?: RenewalBackoffOptions; onRetry?: (err: Error, retryInMs: number) => void; stopped?: () => boolean } = {},
): () => void {
  let stopped = false;
  let cancel: (() => void) | undefined;
  let timer: NodeJS.Timeout | undefined;
  const backoff = new RenewalBackoff(opts.backoff);
  const gone = (): boolean => stopped || (opts.stopped?.() ?? false);
  const again = (err: Error): void => {
    cancel = undefined;
    if (gone()) return;
    const wait = backoff.next();
    opts.onRetry?.(err, wait);
    timer = setTimeout(open, wait);
    timer.unref();
  };
  function open(): void {
    if (gone()) return;
    client().watchTrustBundle((roots, signer) => {
      backoff.reset();
      onBundle(roots, signer);
    }, again).then((c) => {
      if (stopped) c();
      else cancel = c;
    }, (err: Error) => again(err));
  }
  open();
  return () => {
    stopped = true;
    clearTimeout(timer);
    cancel?.();
  };
}

export function toIdentityError(err: grpc.ServiceError, address: string, what: string): IdentityError {
  const detail = `${grpc.status[err.code] ?? err.code}: ${err.details || err.message}`;
  switch (err.code) {
    case grpc.status.UNAUTHENTICATED:
      return new CaAuthenticationError(`certificate service at ${address} did not accept this node's credentials (${detail}); check the bootstrap token or ServiceAccount token`, { cause: err });
    case grpc.status.PERMISSION_DENIED:
    case grpc.status.INVALID_ARGUMENT:
    case grpc.status.FAILED_PRECONDITION:
      return new CertificateRefusedError(`certificate service at ${address} refused ${what} (${detail})`, { cause: err });
    default:
      return new CaUnavailableError(`certificate service at ${address} is unavailable for ${what} (${detail}); will retry`, { cause: err });
  }
}
