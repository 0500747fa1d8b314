import type { PeerCertificate } from 'node:tls';

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
