// The certificate service (proto/weft/ca.proto) on the controller's gRPC port.
//
// Per request: authenticate the node (a node certificate this CA issued, over mTLS, else a
// bearer token through the NodeAuthenticator), authorise the identity (a node gets its own node
// identity and the identities of pods scheduled on it, per the PodDirectory), verify and sign the
// CSR.
// Requests are limited before any costly work: per node for a node certificate, per client
// address for a bearer token (each may cost a TokenReview at the API server), and at most
// MAX_TOKEN_REVIEWS_IN_FLIGHT token checks at once; a request over a limit is refused
// RESOURCE_EXHAUSTED (the agent's certificate manager retries it with backoff) and counted
// `rate_limited`.
// Refusals are logged as JSON lines naming the node and the identity, at most
// REFUSAL_LOG_PER_SECOND a second (every refusal is counted).
import * as grpc from '@grpc/grpc-js';
import type { CertificateAuthority } from '../../../lib/identity/ca.ts';
import {
  certificateServiceClient, type CreateCertificateRequest, type CreateCertificateResponse, type TrustBundleMessage,
  type WatchTrustBundleRequest,
} from '../../../lib/identity/ca-proto.ts';
import { CertificateLifetimeError, CsrIdentityMismatchError, CsrSignatureError, MalformedCsrError, SpiffeIdError } from '../../../lib/identity/errors.ts';
import { parseSpiffeId, type SpiffeId } from '../../../lib/identity/spiffe.ts';
import { spiffeIdOfCertificate } from '../../../lib/identity/tls.ts';
import { clip, LogBudget, REFUSAL_LOG_PER_SECOND } from '../../../lib/log.ts';
import { KeyedTokenBuckets } from '../../../lib/token-bucket.ts';
import { AuthenticatorUnavailableError, NodeAuthenticationError, type AuthenticatedNode, type NodeAuthenticator } from './authn.ts';

/** The controller's view of which workload identities run on which node. */
export interface PodDirectory {
  /**
   * SPIFFE IDs (URI form) of the pods currently scheduled on `node`; undefined while the pods are
   * not loaded yet (a controller just started), which refuses as unavailable, so the agent retries
   * instead of taking a denial for a pod that does run there.
   */
  identitiesOnNode(node: string): ReadonlySet<string> | undefined;
}

export type CaLogRecord = Record<string, unknown> & { level: 'info' | 'warn' | 'error'; msg: string };

export type CertificateOutcome = 'issued' | 'unauthenticated' | 'denied' | 'invalid' | 'unavailable' | 'rate_limited';

/** A request budget: `requests` per `intervalMs`, filled back whole each interval (Envoy's local rate limit). */
export interface RequestBudget {
  requests: number;
  intervalMs: number;
}

export interface CertificateLimits {
  /**
   * Per node, for callers with a node certificate. A node asks once per identity it runs (its pods'
   * ServiceAccounts, at most 110 pods a node by default) and again near expiry; a restarted agent
   * asks for all at once. Default 300 per 10 s.
   */
  perNode: RequestBudget;
  /**
   * Per client address, for callers with a bearer token (bootstrapping agents, waypoints, the
   * east-west gateway): each new token costs a TokenReview. Default 100 per 10 s.
   */
  perTokenAddress: RequestBudget;
  /** Token checks (TokenReviews) waited on at once, over every client. Default 64. */
  tokenChecksInFlight: number;
  /** Trust bundle watches held per client address (default 32) and in all (default 20,000). */
  watchesPerAddress: number;
  watches: number;
}

export const DEFAULT_CERTIFICATE_LIMITS: CertificateLimits = {
  perNode: { requests: 300, intervalMs: 10_000 },
  perTokenAddress: { requests: 100, intervalMs: 10_000 },
  tokenChecksInFlight: 64,
  watchesPerAddress: 32,
  watches: 20_000,
};

export interface CertificateServiceDeps {
  ca: CertificateAuthority;
  /** Bearer-token authentication (bootstrap tokens or TokenReview). */
  authenticator: NodeAuthenticator;
  pods: PodDirectory;
  /** Structured log sink; default: one JSON line per record on stderr. */
  log?: (record: CaLogRecord) => void;
  /** Counter hook, called once per CreateCertificate with its outcome. */
  onOutcome?: (outcome: CertificateOutcome) => void;
  /** Counter hook, called once per trust bundle watch refused over a limit. */
  onWatchRefused?: () => void;
  /** Request limits; default DEFAULT_CERTIFICATE_LIMITS. */
  limits?: Partial<CertificateLimits>;
  clock?: () => number;
}

/** Longest CSR accepted, in characters of PEM. */
export const MAX_CSR_LENGTH = 16 * 1024;

/** The address of a gRPC peer (`1.2.3.4:5678`, `[::1]:5678`, `ipv4:…`), without its port. */
export function addressOfPeer(peer: string): string {
  const p = peer.replace(/^ipv[46]:/, '');
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(p);
  if (bracketed) return bracketed[1]!;
  const colon = p.lastIndexOf(':');
  return colon > 0 && p.indexOf(':') === colon ? p.slice(0, colon) : p;
}

const defaultLog = (record: CaLogRecord): void => {
  process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), component: 'ca', ...record })}\n`);
};

class RpcFailure extends Error {
  readonly grpcCode: grpc.status;
  readonly outcome: CertificateOutcome;
  constructor(grpcCode: grpc.status, outcome: CertificateOutcome, message: string) {
    super(message);
    this.grpcCode = grpcCode;
    this.outcome = outcome;
  }
}

/** Mounts the certificate service on `server` (the controller's TLS server on 15012). */
/** What a stopping controller ends: the trust bundle watches (long-lived; a client reconnects to the next controller). */
export interface CertificateService {
  closeStreams(): void;
}

export function addCertificateService(server: grpc.Server, deps: CertificateServiceDeps): CertificateService {
  const log = deps.log ?? defaultLog;
  const { ca, authenticator, pods } = deps;
  const limits: CertificateLimits = { ...DEFAULT_CERTIFICATE_LIMITS, ...deps.limits };
  const clock = deps.clock ?? Date.now;
  const buckets = new KeyedTokenBuckets();
  let tokenChecks = 0;
  const refusalLog = new LogBudget(REFUSAL_LOG_PER_SECOND, (count) => log({ level: 'warn', msg: 'certificate refusals not logged', count, reason: `more than ${REFUSAL_LOG_PER_SECOND} in a second; every refusal is counted in weft_ca_certificate_requests_total` }));

  function limit(key: string, budget: RequestBudget, who: string): void {
    const verdict = buckets.take(key, budget.requests, budget.intervalMs, clock());
    if (!verdict.allowed) {
      throw new RpcFailure(grpc.status.RESOURCE_EXHAUSTED, 'rate_limited', `${who} sent more than ${budget.requests} certificate requests in ${budget.intervalMs / 1000} s; retry in ${Math.ceil(verdict.retryAfterMs / 1000)} s`);
    }
  }

  async function authenticate(call: grpc.ServerUnaryCall<unknown, unknown>): Promise<AuthenticatedNode & { via: 'mtls' | 'token' }> {
    // grpc-js exposes the client certificate only when it verified against the server's `ca`
    // (the trust bundle), so a present certificate here chains to a trusted root; whether it is
    // this cluster's node certificate is checked against this CA's own signer below.
    const peerCert = call.getAuthContext().sslPeerCertificate;
    if (peerCert) {
      let id: SpiffeId;
      try {
        id = spiffeIdOfCertificate(peerCert);
      } catch (err) {
        throw new RpcFailure(grpc.status.UNAUTHENTICATED, 'unauthenticated', `client certificate carries no usable SPIFFE ID (${(err as Error).message})`);
      }
      if (id.kind !== 'node' || id.trustDomain !== ca.trustDomain) {
        throw new RpcFailure(grpc.status.UNAUTHENTICATED, 'unauthenticated', `client certificate identity ${id.uri} is not a node identity of trust domain ${ca.trustDomain}; authenticate with the node certificate or a bearer token`);
      }
      // Another cluster's controller may have issued it: the clusters share the root and the
      // trust domain, and node names repeat across clusters. Its node of this name is not ours.
      if (!ca.issued(peerCert.raw)) {
        throw new RpcFailure(grpc.status.UNAUTHENTICATED, 'unauthenticated', `node certificate for ${id.uri} was not issued by this controller's CA (another cluster's node, or a retired signer); authenticate with a bearer token to obtain this cluster's node certificate`);
      }
      return { node: id.node, principal: 'node-certificate', via: 'mtls' };
    }
    const header = call.metadata.get('authorization')[0];
    const match = typeof header === 'string' ? /^Bearer\s+(\S+)$/i.exec(header) : null;
    if (!match) {
      throw new RpcFailure(grpc.status.UNAUTHENTICATED, 'unauthenticated', 'no credentials: send "authorization: Bearer <token>" metadata or connect with the node certificate');
    }
    const address = addressOfPeer(call.getPeer());
    limit(`address:${address}`, limits.perTokenAddress, `client ${address} (bearer token)`);
    if (tokenChecks >= limits.tokenChecksInFlight) {
      throw new RpcFailure(grpc.status.RESOURCE_EXHAUSTED, 'rate_limited', `${tokenChecks} token checks are already in progress; retry`);
    }
    tokenChecks++;
    try {
      return { ...(await authenticator.authenticate(match[1]!)), via: 'token' };
    } catch (err) {
      if (err instanceof NodeAuthenticationError) throw new RpcFailure(grpc.status.UNAUTHENTICATED, 'unauthenticated', err.message);
      if (err instanceof AuthenticatorUnavailableError) throw new RpcFailure(grpc.status.UNAVAILABLE, 'unavailable', err.message);
      throw err;
    } finally {
      tokenChecks--;
    }
  }

  function authorise(who: AuthenticatedNode, identity: string): void {
    const node = who.node;
    let id: SpiffeId;
    try {
      id = parseSpiffeId(identity);
    } catch (err) {
      throw new RpcFailure(grpc.status.INVALID_ARGUMENT, 'invalid', `requested identity is invalid: ${(err as SpiffeIdError).message}`);
    }
    if (id.trustDomain !== ca.trustDomain) {
      throw new RpcFailure(grpc.status.PERMISSION_DENIED, 'denied', `node ${node} may not obtain identity ${identity}: this CA signs only trust domain ${ca.trustDomain}`);
    }
    if (who.workload) {
      // A workload's own token (a waypoint's): its own ServiceAccount identity, nothing else.
      const own = `spiffe://${ca.trustDomain}/ns/${who.workload.namespace}/sa/${who.workload.serviceAccount}`;
      if (id.uri !== own) throw new RpcFailure(grpc.status.PERMISSION_DENIED, 'denied', `${who.principal} may not obtain identity ${identity}: a workload token obtains only its own identity ${own}`);
      return;
    }
    if (id.kind === 'node') {
      if (id.node !== node) throw new RpcFailure(grpc.status.PERMISSION_DENIED, 'denied', `node ${node} may not obtain identity ${identity}: a node may obtain only its own node identity`);
      return;
    }
    const onNode = pods.identitiesOnNode(node);
    if (!onNode) throw new RpcFailure(grpc.status.UNAVAILABLE, 'unavailable', `cannot yet tell whether a pod on node ${node} runs as ${identity}: the controller has not loaded its pods; retry`);
    if (!onNode.has(id.uri)) {
      throw new RpcFailure(grpc.status.PERMISSION_DENIED, 'denied', `node ${node} may not obtain identity ${identity}: no pod scheduled on node ${node} runs as ${identity}`);
    }
  }

  const createCertificate: grpc.handleUnaryCall<CreateCertificateRequest, CreateCertificateResponse> = (call, callback) => {
    const req = call.request;
    const peer = call.getPeer();
    let node: string | undefined;
    (async () => {
      const who = await authenticate(call as grpc.ServerUnaryCall<unknown, unknown>);
      node = who.node;
      if (who.via === 'mtls') limit(`node:${who.node}`, limits.perNode, `node ${who.node}`);
      if (!req.csr || req.csr.length > MAX_CSR_LENGTH) {
        throw new RpcFailure(grpc.status.INVALID_ARGUMENT, 'invalid', `CSR for ${req.identity || '(no identity)'} from node ${node} is ${req.csr ? 'longer than ' + MAX_CSR_LENGTH + ' characters' : 'empty'}; send one PEM PKCS#10 request`);
      }
      authorise(who, req.identity);
      let issued;
      try {
        const opts = req.validitySeconds > 0 ? { lifetimeMs: req.validitySeconds * 1000 } : {};
        issued = ca.signCsr(req.csr, req.identity, opts);
      } catch (err) {
        if (err instanceof CertificateLifetimeError) {
          throw new RpcFailure(grpc.status.INVALID_ARGUMENT, 'invalid', `validitySeconds ${req.validitySeconds} for ${req.identity} from node ${node} rejected: ${err.message}`);
        }
        if (err instanceof MalformedCsrError || err instanceof CsrSignatureError || err instanceof CsrIdentityMismatchError || err instanceof SpiffeIdError) {
          throw new RpcFailure(grpc.status.INVALID_ARGUMENT, 'invalid', `CSR for ${req.identity} from node ${node} rejected: ${err.message}`);
        }
        throw err;
      }
      log({ level: 'info', msg: 'certificate issued', node: who.node, identity: req.identity, serial: issued.serial, notAfter: issued.notAfter.toISOString(), via: who.via, principal: who.principal });
      deps.onOutcome?.('issued');
      return { certChain: issued.certChain, trustBundle: ca.trustBundle() };
    })().then(
      (res) => callback(null, res),
      (err: unknown) => {
        const failure = err instanceof RpcFailure ? err : new RpcFailure(grpc.status.INTERNAL, 'unavailable', `internal error signing ${req.identity}: ${(err as Error).message}`);
        deps.onOutcome?.(failure.outcome);
        if (failure.grpcCode === grpc.status.INTERNAL || refusalLog.take(clock())) {
          log({ level: failure.grpcCode === grpc.status.INTERNAL ? 'error' : 'warn', msg: 'certificate refused', node: node ?? null, identity: clip(req.identity), code: grpc.status[failure.grpcCode], reason: failure.message, peer });
        }
        callback({ code: failure.grpcCode, details: failure.message });
      },
    );
  };

  const watching = new Set<grpc.ServerWritableStream<WatchTrustBundleRequest, TrustBundleMessage>>();
  const watchersOf = new Map<string, number>();
  const watchTrustBundle: grpc.handleServerStreamingCall<WatchTrustBundleRequest, TrustBundleMessage> = (call) => {
    // Roots are public; no authentication needed to read them. Watches are held without end, so
    // they are bounded per client address and in all (an agent, a waypoint or a gateway holds one).
    const address = addressOfPeer(call.getPeer());
    const held = watchersOf.get(address) ?? 0;
    if (held >= limits.watchesPerAddress || watching.size >= limits.watches) {
      const reason = held >= limits.watchesPerAddress ? `client ${address} already holds ${held} trust bundle watches` : `${watching.size} trust bundle watches are open`;
      deps.onWatchRefused?.();
      if (refusalLog.take(clock())) log({ level: 'warn', msg: 'trust bundle watch refused', reason, peer: call.getPeer() });
      call.emit('error', { code: grpc.status.RESOURCE_EXHAUSTED, details: `${reason}; close one before opening another` });
      return;
    }
    watchersOf.set(address, held + 1);
    // With the roots, the certificate the CA signs with: a rotation of the intermediate under the
    // same root leaves the roots as they were, and the holders renew by this (IssuedIdentity).
    call.write({ roots: ca.trustBundle(), signer: ca.signingCertificate() });
    const off = ca.onTrustBundleChange((roots) => call.write({ roots: [...roots], signer: ca.signingCertificate() }));
    watching.add(call);
    const stop = () => {
      off();
      if (!watching.delete(call)) return;
      const left = (watchersOf.get(address) ?? 1) - 1;
      if (left > 0) watchersOf.set(address, left);
      else watchersOf.delete(address);
    };
    call.on('cancelled', stop);
    call.on('close', stop);
    call.on('error', stop);
  };

  server.addService(certificateServiceClient().service, { createCertificate, watchTrustBundle } as grpc.UntypedServiceImplementation);
  return {
    closeStreams() {
      for (const call of [...watching]) call.end();
      watching.clear();
      watchersOf.clear();
    },
  };
}
