// SPIFFE IDs as Weft uses them.
//
//   workload: spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>
//   node:     spiffe://<trust-domain>/node/<node-name>
//
// Workload IDs are what HBONE peers present. Node IDs are issued only to agents: an agent
// exchanges its bootstrap credential for a node certificate and then authenticates to the
// certificate service with it (mTLS). A node ID is never accepted as a workload peer on HBONE.
//
// Validation follows the SPIFFE ID spec (lower-case trust domain of [a-z0-9.-_], path segments
// of [A-Za-z0-9.-_], no empty, "." or ".." segments, no query or fragment) plus Weft's shape.
import { SpiffeIdError } from './errors.ts';

export type SpiffeId = WorkloadId | NodeId;

export interface WorkloadId {
  readonly kind: 'workload';
  readonly trustDomain: string;
  readonly namespace: string;
  readonly serviceAccount: string;
  /** The canonical URI form. */
  readonly uri: string;
}

export interface NodeId {
  readonly kind: 'node';
  readonly trustDomain: string;
  readonly node: string;
  readonly uri: string;
}

/** Longest SPIFFE ID accepted (the SPIFFE spec recommends 2048 bytes for URIs). */
export const MAX_SPIFFE_ID_LENGTH = 2048;

const TRUST_DOMAIN = /^[a-z0-9._-]{1,255}$/;
const SEGMENT = /^[A-Za-z0-9._-]+$/;

export function validateTrustDomain(td: string): string {
  if (!TRUST_DOMAIN.test(td)) {
    throw new SpiffeIdError(`trust domain "${td}" is invalid: use 1-255 lower-case letters, digits, '.', '-' or '_' (e.g. cluster.local)`);
  }
  return td;
}

function checkSegment(what: string, value: string, id: string): void {
  if (!SEGMENT.test(value) || value === '.' || value === '..') {
    throw new SpiffeIdError(`${what} "${value}" in SPIFFE ID ${id} is invalid: path segments may hold only letters, digits, '.', '-' and '_'`);
  }
}

export function workloadId(trustDomain: string, namespace: string, serviceAccount: string): WorkloadId {
  validateTrustDomain(trustDomain);
  const uri = `spiffe://${trustDomain}/ns/${namespace}/sa/${serviceAccount}`;
  checkSegment('namespace', namespace, uri);
  checkSegment('service account', serviceAccount, uri);
  return { kind: 'workload', trustDomain, namespace, serviceAccount, uri };
}

export function nodeId(trustDomain: string, node: string): NodeId {
  validateTrustDomain(trustDomain);
  const uri = `spiffe://${trustDomain}/node/${node}`;
  checkSegment('node name', node, uri);
  return { kind: 'node', trustDomain, node, uri };
}

/** Parses a Weft SPIFFE ID (workload or node form); throws SpiffeIdError naming the problem. */
export function parseSpiffeId(text: string): SpiffeId {
  if (text.length > MAX_SPIFFE_ID_LENGTH) {
    throw new SpiffeIdError(`SPIFFE ID is ${text.length} characters long; at most ${MAX_SPIFFE_ID_LENGTH} are allowed`);
  }
  if (!text.startsWith('spiffe://')) {
    throw new SpiffeIdError(`"${text}" is not a SPIFFE ID: it must start with spiffe://`);
  }
  if (/[?#%]/.test(text)) {
    throw new SpiffeIdError(`SPIFFE ID "${text}" must not contain a query, fragment or percent-encoding`);
  }
  const rest = text.slice('spiffe://'.length);
  const slash = rest.indexOf('/');
  if (slash < 0) {
    throw new SpiffeIdError(`SPIFFE ID "${text}" has no path; expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account> or spiffe://<trust-domain>/node/<node>`);
  }
  const trustDomain = rest.slice(0, slash);
  validateTrustDomain(trustDomain);
  const segments = rest.slice(slash + 1).split('/');
  if (segments.length === 4 && segments[0] === 'ns' && segments[2] === 'sa') {
    return workloadId(trustDomain, segments[1]!, segments[3]!);
  }
  if (segments.length === 2 && segments[0] === 'node') {
    return nodeId(trustDomain, segments[1]!);
  }
  throw new SpiffeIdError(`SPIFFE ID "${text}" has path /${segments.join('/')}; Weft issues only /ns/<namespace>/sa/<service-account> and /node/<node>`);
}

export function parseWorkloadId(text: string): WorkloadId {
  const id = parseSpiffeId(text);
  if (id.kind !== 'workload') {
    throw new SpiffeIdError(`"${text}" is a node identity; a workload identity spiffe://<trust-domain>/ns/<namespace>/sa/<service-account> is required here`);
  }
  return id;
}

export function isSpiffeId(text: string): boolean {
  try {
    parseSpiffeId(text);
    return true;
  } catch {
    return false;
  }
}

export function formatSpiffeId(id: SpiffeId): string {
  return id.kind === 'workload' ? workloadId(id.trustDomain, id.namespace, id.serviceAccount).uri : nodeId(id.trustDomain, id.node).uri;
}
