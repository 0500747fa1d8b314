// Who may open a config stream as whom. With mTLS, an agent must present its node certificate
// (spiffe://<td>/node/<node>) for the node it asks about, issued by this controller's own CA, and a
// waypoint a workload certificate of the namespace it serves; otherwise any client could read the
// whole mesh's configuration.
//
// Node names are per cluster: the clusters of one mesh share the root and the trust domain
// (docs/ARCHITECTURE.md Multi-cluster), so another cluster's node-a chains to the trust bundle
// as well as ours does. Only the certificate's issuer tells them apart. Workload certificates
// (waypoints) are not checked for issuer: those identities are mesh-wide by design. After this
// controller restarts on a new intermediate under the same root, its own agents' certificates are
// refused here too; the agent renews its certificate when refused (agent/src/config-stream.ts).
import type { PeerCertificate } from 'node:tls';
import { spiffeIdOfCertificate } from '../../../lib/identity/tls.ts';
import type { ClientKind } from '../../../lib/xds/protocol.ts';

export interface StreamClient {
  kind: ClientKind;
  id: string;
  namespace: string;
}

/** Returns undefined to allow, or the reason to refuse. */
export type StreamAuthorizer = (client: StreamClient, peerCertificate: PeerCertificate | undefined) => string | undefined;

/** This controller's CA, as far as telling its own node certificates apart (CertificateAuthority.issued). */
export interface NodeCertificateIssuer {
  issued(cert: Buffer): boolean;
}

export function spiffeStreamAuthorizer(trustDomain: string, issuer: NodeCertificateIssuer): StreamAuthorizer {
  return (client, cert) => {
    if (!cert || !cert.raw) return `${client.kind} ${client.id} presented no client certificate; the config stream requires mTLS`;
    let id;
    try {
      id = spiffeIdOfCertificate(cert);
    } catch (e) {
      return `client certificate has no usable SPIFFE ID: ${(e as Error).message}`;
    }
    if (id.trustDomain !== trustDomain) return `client identity ${id.uri} is not in trust domain ${trustDomain}`;
    if (client.kind === 'agent') {
      if (id.kind !== 'node' || id.node !== client.id) return `client identity ${id.uri} may not read the config of node ${client.id} (needs spiffe://${trustDomain}/node/${client.id})`;
      return issuer.issued(cert.raw) ? undefined : `node certificate for ${id.uri} was not issued by this controller's CA (another cluster's node of that name, or a retired signer); it may not read the config of this cluster's node ${client.id}`;
    }
    return id.kind === 'workload' && id.namespace === client.namespace ? undefined : `client identity ${id.uri} may not read the waypoint config of namespace ${client.namespace}`;
  };
}
