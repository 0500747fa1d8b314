import type { PeerCertificate } from 'node:tls';
import type { SpiffeId } from '../identity/spiffe.ts';
import { spiffeIdOfCertificate } from '../identity/tls.ts';

/**
 * Decides whether a verified peer certificate is acceptable: true, or false / a string saying why not.
 * The chain has already been verified against the CA bundle when this runs.
 */
export type PeerCheck = (peerSpiffeId: string | undefined, cert: PeerCertificate) => boolean | string;

/** What a connect expects of the server: one SPIFFE ID, any of several, or a custom check. */
export type ExpectedPeer = string | readonly string[] | PeerCheck;

/**
 * The SPIFFE ID of a peer certificate, parsed, or undefined when it has none, more than one URI SAN
 * (an X.509-SVID carries exactly one), or one Weft does not accept. The one reader of identities
 * from certificates is lib/identity/tls.ts spiffeIdOfCertificate (the certificate's DER, not Node's
 * `subjectaltname` text); this is its face for callers that want a value rather than an error. Read
 * once per handshake: checkPeer and admitWorkloadPeer take what it returned.
 */
export function spiffeIdFromCert(cert: PeerCertificate | undefined): SpiffeId | undefined {
  if (!cert?.raw?.length) return undefined;
  try {
    return spiffeIdOfCertificate(cert);
  } catch {
    return undefined;
  }
}

/** Runs an expectation against a peer whose certificate `cert` carries `id` (spiffeIdFromCert); returns undefined when accepted, else the reason. */
export function checkPeer(expect: ExpectedPeer, id: string | undefined, cert: PeerCertificate): string | undefined {
  if (typeof expect === 'function') {
    const verdict = expect(id, cert);
    if (verdict === true) return undefined;
    return typeof verdict === 'string' ? verdict : 'rejected by the identity check';
  }
  const allowed: readonly string[] = typeof expect === 'string' ? [expect] : expect;
  if (id !== undefined && allowed.includes(id)) return undefined;
  return `expected ${allowed.length === 1 ? allowed[0] : `one of ${allowed.join(', ')}`}`;
}

const checkIds = new WeakMap<PeerCheck, number>();
let nextCheckId = 1;

/** A stable string for an expectation, so sessions verified against different peers are not shared. */
export function expectedPeerKey(expect: ExpectedPeer): string {
  if (typeof expect === 'string') return expect;
  if (typeof expect === 'function') {
    let id = checkIds.get(expect);
    if (id === undefined) { id = nextCheckId++; checkIds.set(expect, id); }
    return `check#${id}`;
  }
  return [...expect].sort().join(',');
}

/** Why a data port turned a peer away (stable strings: they are metric labels). */
export type PeerAdmissionKind = 'peer-identity' | 'peer-trust-domain' | 'peer-not-workload';

/**
 * Admission on a data port (15008): only workload identities
 * `spiffe://<td>/ns/<namespace>/sa/<service-account>` whose trust domain is one of `trustDomains`
 * (the mesh's own, then its configured aliases). A node identity (`spiffe://<td>/node/<name>`,
 * which every agent holds to talk to the controller) never speaks for a workload, and another
 * trust domain is another mesh. `id` is the certificate's (spiffeIdFromCert: undefined when it has
 * no SPIFFE ID Weft accepts). Returns undefined when admitted, else the kind and a reason.
 */
export function admitWorkloadPeer(id: SpiffeId | undefined, trustDomains: readonly string[]): { kind: PeerAdmissionKind; reason: string } | undefined {
  if (id === undefined) return { kind: 'peer-identity', reason: 'client certificate has no SPIFFE ID (or more than one)' };
  if (!trustDomains.includes(id.trustDomain)) {
    return { kind: 'peer-trust-domain', reason: `${id.uri} is of trust domain ${id.trustDomain}; this port admits ${trustDomains.join(', ')}` };
  }
  if (id.kind !== 'workload') {
    return { kind: 'peer-not-workload', reason: `${id.uri} is a node identity; only workload identities (spiffe://<td>/ns/<ns>/sa/<sa>) may open tunnels` };
  }
  return undefined;
}
