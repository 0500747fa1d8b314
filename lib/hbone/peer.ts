import type { PeerCertificate } from 'node:tls';
import { parseSpiffeId } from '../identity/spiffe.ts';

/**
 * Decides whether a verified peer certificate is acceptable: true, or false / a string saying why not.
 * The chain has already been verified against the CA bundle when this runs.
 */
export type PeerCheck = (peerSpiffeId: string | undefined, cert: PeerCertificate) => boolean | string;

/** What a connect expects of the server: one SPIFFE ID, any of several, or a custom check. */
export type ExpectedPeer = string | readonly string[] | PeerCheck;

/**
 * The SPIFFE ID in a certificate's URI SANs (`URI:spiffe://td/ns/a/sa/b`), or undefined when there
 * is none or more than one (an X.509-SVID carries exactly one).
 */
export function spiffeIdFromCert(cert: PeerCertificate | undefined): string | undefined {
  const san = cert?.subjectaltname;
  if (!san) return undefined;
  let found: string | undefined;
  for (const entry of splitSan(san)) {
    if (!entry.startsWith('URI:')) continue;
    let value = entry.slice(4);
    // Node quotes values that contain separators or non-printables as JSON strings.
    if (value.startsWith('"')) {
      try { value = JSON.parse(value) as string; } catch { return undefined; }
    }
    if (!value.startsWith('spiffe://')) continue;
    if (found !== undefined) return undefined;
    found = value;
  }
  return found;
}

/** Splits Node's `subjectaltname` ("DNS:a, URI:\"x, y\"") on top-level ", " separators. */
function splitSan(san: string): string[] {
  const out: string[] = [];
  let start = 0;
  let quoted = false;
  for (let i = 0; i < san.length; i++) {
    const c = san[i];
    if (c === '\\' && quoted) { i++; continue; }
    if (c === '"') quoted = !quoted;
    else if (c === ',' && !quoted && san[i + 1] === ' ') {
      out.push(san.slice(start, i));
      start = i + 2;
      i++;
    }
  }
  out.push(san.slice(start));
  return out;
}

/** Runs an expectation against a peer; returns undefined when accepted, else the reason. */
export function checkPeer(expect: ExpectedPeer, cert: PeerCertificate): string | undefined {
  const id = spiffeIdFromCert(cert);
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
 * trust domain is another mesh. Returns undefined when admitted, else the kind and a reason.
 */
export function admitWorkloadPeer(spiffeId: string | undefined, trustDomains: readonly string[]): { kind: PeerAdmissionKind; reason: string } | undefined {
  if (spiffeId === undefined) return { kind: 'peer-identity', reason: 'client certificate has no SPIFFE ID (or more than one)' };
  let id;
  try {
    id = parseSpiffeId(spiffeId);
  } catch (err) {
    return { kind: 'peer-identity', reason: (err as Error).message };
  }
  if (!trustDomains.includes(id.trustDomain)) {
    return { kind: 'peer-trust-domain', reason: `${spiffeId} is of trust domain ${id.trustDomain}; this port admits ${trustDomains.join(', ')}` };
  }
  if (id.kind !== 'workload') {
    return { kind: 'peer-not-workload', reason: `${spiffeId} is a node identity; only workload identities (spiffe://<td>/ns/<ns>/sa/<sa>) may open tunnels` };
  }
  return undefined;
}
