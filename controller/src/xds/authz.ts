// Who may open a config stream as whom. With mTLS, an agent must present its node certificate
// (spiffe://<td>/node/<node>) for the node it asks about, and a waypoint a workload certificate of
// the namespace it serves; otherwise any client could read the whole mesh's configuration.
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

export function spiffeStreamAuthorizer(trustDomain: string): StreamAuthorizer {
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
      return id.kind === 'node' && id.node === client.id ? undefined : `client identity ${id.uri} may not read the config of node ${client.id} (needs spiffe://${trustDomain}/node/${client.id})`;
    }
    return id.kind === 'workload' && id.namespace === client.namespace ? undefined : `client identity ${id.uri} may not read the waypoint config of namespace ${client.namespace}`;
  };
}
