// The certificate service (proto/weft/ca.proto) on the controller's gRPC port.
//
// Per request: authenticate the node (a node certificate this CA issued, over mTLS, else a
// bearer token through the NodeAuthenticator), authorise the identity (a node gets its own node
// identity and the identities of pods scheduled on it, per the PodDirectory), verify and sign the
// CSR.
// Refusals are logged as JSON lines naming the node and the identity.
import * as grpc from '@grpc/grpc-js';
import type { CertificateAuthority } from '../../../lib/identity/ca.ts';
import {
  certificateServiceClient, type CreateCertificateRequest, type CreateCertificateResponse, type TrustBundleMessage,
  type WatchTrustBundleRequest,
} from '../../../lib/identity/ca-proto.ts';
import { CsrIdentityMismatchError, CsrSignatureError, MalformedCsrError, SpiffeIdError } from '../../../lib/identity/errors.ts';
import { parseSpiffeId, type SpiffeId } from '../../../lib/identity/spiffe.ts';
import { spiffeIdOfCertificate } from '../../../lib/identity/tls.ts';
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

export type CertificateOutcome = 'issued' | 'unauthenticated' | 'denied' | 'invalid' | 'unavailable';

export interface CertificateServiceDeps {
  ca: CertificateAuthority;
  /** Bearer-token authentication (bootstrap tokens or TokenReview). */
  authenticator: NodeAuthenticator;
  pods: PodDirectory;
  /** Structured log sink; default: one JSON line per record on stderr. */
  log?: (record: CaLogRecord) => void;
  /** Counter hook, called once per CreateCertificate with its outcome. */
  onOutcome?: (outcome: CertificateOutcome) => void;
}

/** Longest CSR accepted, in characters of PEM. */
export const MAX_CSR_LENGTH = 16 * 1024;

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
    try {
      return { ...(await authenticator.authenticate(match[1]!)), via: 'token' };
    } catch (err) {
      if (err instanceof NodeAuthenticationError) throw new RpcFailure(grpc.status.UNAUTHENTICATED, 'unauthenticated', err.message);
      if (err instanceof AuthenticatorUnavailableError) throw new RpcFailure(grpc.status.UNAVAILABLE, 'unavailable', err.message);
      throw err;
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
      if (!req.csr || req.csr.length > MAX_CSR_LENGTH) {
        throw new RpcFailure(grpc.status.INVALID_ARGUMENT, 'invalid', `CSR for ${req.identity || '(no identity)'} from node ${node} is ${req.csr ? 'longer than ' + MAX_CSR_LENGTH + ' characters' : 'empty'}; send one PEM PKCS#10 request`);
      }
      authorise(who, req.identity);
      let issued;
      try {
        const opts = req.validitySeconds > 0 ? { lifetimeMs: req.validitySeconds * 1000 } : {};
        issued = ca.signCsr(req.csr, req.identity, opts);
      } catch (err) {
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
        log({ level: failure.grpcCode === grpc.status.INTERNAL ? 'error' : 'warn', msg: 'certificate refused', node: node ?? null, identity: req.identity, code: grpc.status[failure.grpcCode], reason: failure.message, peer });
        deps.onOutcome?.(failure.outcome);
        callback({ code: failure.grpcCode, details: failure.message });
      },
    );
  };

  const watching = new Set<grpc.ServerWritableStream<WatchTrustBundleRequest, TrustBundleMessage>>();
  const watchTrustBundle: grpc.handleServerStreamingCall<WatchTrustBundleRequest, TrustBundleMessage> = (call) => {
    // Roots are public; no authentication needed to read them.
    call.write({ roots: ca.trustBundle() });
    const off = ca.onTrustBundleChange((roots) => call.write({ roots: [...roots] }));
    watching.add(call);
    const stop = () => {
      off();
      watching.delete(call);
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
    },
  };
}
