// Which identity an HBONE server should present. A node agent holds a certificate for every local
// workload and the TLS handshake happens before the CONNECT names the target, so the client says in
// the SNI which workload identity it expects: `<sa>.<ns>.sa.weft` (both are DNS labels in
// Kubernetes, so the name is a valid host name; the trust domain is the mesh's own).
import { isIP } from 'node:net';

export const SNI_SUFFIX = '.sa.weft';

export function serverNameForIdentity(spiffeId: string): string | undefined {
  const m = /^spiffe:\/\/[^/]+\/ns\/([a-z0-9]([-a-z0-9]*[a-z0-9])?)\/sa\/([a-z0-9]([-a-z0-9.]*[a-z0-9])?)$/.exec(spiffeId);
  if (!m) return undefined;
  const name = `${m[3]}.${m[1]}${SNI_SUFFIX}`;
  return isIP(name) ? undefined : name;
}

/** The SPIFFE ID a server name asks for, in the server's trust domain; undefined if not ours. */
export function identityForServerName(servername: string | undefined, trustDomain: string): string | undefined {
  if (!servername || !servername.endsWith(SNI_SUFFIX)) return undefined;
  const rest = servername.slice(0, -SNI_SUFFIX.length);
  const dot = rest.lastIndexOf('.');
  if (dot <= 0) return undefined;
  return `spiffe://${trustDomain}/ns/${rest.slice(dot + 1)}/sa/${rest.slice(0, dot)}`;
}
