// Istio's standard metric labels (https://istio.io/latest/docs/reference/config/metrics/), built in
// one place for every reporter: the agent's two directions and the waypoint. The label names and
// their order follow ztunnel's CommonTrafficLabels; request metrics add response_code and
// grpc_response_status. A value nobody knows is `unknown`, as in Istio.
import type { WorkloadMeta } from '../model/workload-meta.ts';
import { parseWorkloadId } from '../identity/spiffe.ts';

export const TRAFFIC_LABELS = [
  'reporter',
  'source_workload', 'source_canonical_service', 'source_canonical_revision', 'source_workload_namespace',
  'source_principal', 'source_app', 'source_version', 'source_cluster',
  'destination_service', 'destination_service_namespace', 'destination_service_name',
  'destination_workload', 'destination_canonical_service', 'destination_canonical_revision', 'destination_workload_namespace',
  'destination_principal', 'destination_app', 'destination_version', 'destination_cluster',
  'request_protocol', 'response_flags', 'connection_security_policy',
] as const;
export type TrafficLabel = (typeof TRAFFIC_LABELS)[number];

export const REQUEST_LABELS = [...TRAFFIC_LABELS, 'response_code', 'grpc_response_status'] as const;
export type RequestLabel = (typeof REQUEST_LABELS)[number];

/** Who reports: the source's agent, the destination's agent, or the waypoint between them. */
export type Reporter = 'source' | 'destination' | 'waypoint';

/** `mutual_tls` when the hop was authenticated by mTLS (HBONE, or same node after the same check); else `none`. */
export type SecurityPolicy = 'mutual_tls' | 'none';

/**
 * One side of a connection: the model's WorkloadMeta when the reporter knows the workload, plus
 * the principal the handshake proved (or the model says the workload runs as).
 */
export interface Peer {
  meta?: WorkloadMeta | undefined;
  principal?: string | undefined;
}

export interface ServiceRef {
  hostname: string;
  name: string;
  namespace: string;
}

/** response_flags values (Envoy's short names; `-` for none). */
export const FLAG_NONE = '-';
/** Refused by authorization policy (ztunnel: AuthorizationPolicyDenied). */
export const FLAG_DENY = 'DENY';
/** No upstream connection could be established (ztunnel: ConnectionFailure). */
export const FLAG_CONNECT = 'CONNECT';
/** Refused at once because the destination already has too many connections waiting (Envoy: UO, upstream overflow). */
export const FLAG_OVERFLOW = 'UO';

export interface TrafficLabelInput {
  reporter: Reporter;
  source: Peer;
  destination: Peer;
  service?: ServiceRef | undefined;
  protocol: 'tcp' | 'http' | 'grpc';
  flags?: string;
  security: SecurityPolicy;
}

const U = 'unknown';

/**
 * The label set of one connection or request. Workload labels come only from the model (via
 * WorkloadMeta); without it, namespace comes from the principal and the rest is `unknown`.
 * `*_app` / `*_version` carry the canonical service and revision, as ztunnel reports them.
 */
export function trafficLabels(i: TrafficLabelInput): Record<TrafficLabel, string> {
  const s = i.source.meta;
  const d = i.destination.meta;
  const sNs = s?.namespace || namespaceOf(i.source.principal) || U;
  const dNs = d?.namespace || namespaceOf(i.destination.principal) || U;
  return {
    reporter: i.reporter,
    source_workload: s?.workloadName || U,
    source_canonical_service: s?.canonicalService || U,
    source_canonical_revision: s?.canonicalRevision || U,
    source_workload_namespace: sNs,
    source_principal: i.source.principal || U,
    source_app: s?.canonicalService || U,
    source_version: s?.canonicalRevision || U,
    source_cluster: s?.cluster || U,
    destination_service: i.service?.hostname || U,
    destination_service_namespace: i.service?.namespace || U,
    destination_service_name: i.service?.name || U,
    destination_workload: d?.workloadName || U,
    destination_canonical_service: d?.canonicalService || U,
    destination_canonical_revision: d?.canonicalRevision || U,
    destination_workload_namespace: dNs,
    destination_principal: i.destination.principal || U,
    destination_app: d?.canonicalService || U,
    destination_version: d?.canonicalRevision || U,
    destination_cluster: d?.cluster || U,
    request_protocol: i.protocol,
    response_flags: i.flags ?? FLAG_NONE,
    connection_security_policy: i.security,
  };
}

/** The namespace of a workload SPIFFE ID, or undefined. */
export function namespaceOf(principal: string | undefined): string | undefined {
  if (!principal) return undefined;
  try {
    return parseWorkloadId(principal).namespace;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Peer metadata on the HBONE CONNECT (W3C `baggage`, the keys ztunnel sends: OpenTelemetry's
// resource attribute names). The sender describes the workload it tunnels for; the receiver
// believes it only when its namespace is the one the peer's certificate proves, so a peer can at
// most mislabel its own namespace's traffic.

const BAGGAGE_KEYS = {
  cluster: 'k8s.cluster.name',
  namespace: 'k8s.namespace.name',
  workload: 'k8s.workload.name',
  service: 'service.name',
  revision: 'service.version',
} as const;

export function encodeBaggage(m: WorkloadMeta): string {
  const kv = (k: string, v: string) => `${k}=${encodeURIComponent(v)}`;
  return [
    kv(BAGGAGE_KEYS.cluster, m.cluster), kv(BAGGAGE_KEYS.namespace, m.namespace), kv(BAGGAGE_KEYS.workload, m.workloadName),
    kv(BAGGAGE_KEYS.service, m.canonicalService), kv(BAGGAGE_KEYS.revision, m.canonicalRevision),
  ].join(',');
}

/**
 * The caller's workload for telemetry labels, as a destination reports it: what the peer's baggage
 * claims, believed only when the mesh's own config knows a workload of the peer's identity by that
 * name (`known`: the config's workloads, endpoints and waypoints of that identity), and then the
 * config's description of it; else the one workload the config knows for the identity, if it knows
 * exactly one; else none (its labels `unknown`, the namespace from the principal). A peer's claim
 * can thus pick among real workloads of its own identity but never mint label values: each would be
 * a metric series for the life of the process. For an identity the config knows nothing of in the
 * claimed cluster, the claim is returned `verified: false`, for the caller to bound.
 */
export function verifiedPeerMeta(baggage: string | undefined, principal: string | undefined, known: (principal: string) => readonly WorkloadMeta[]): { meta: WorkloadMeta | undefined; verified: boolean } {
  if (!principal) return { meta: undefined, verified: true };
  const list = known(principal);
  const claimed = peerFromBaggage(baggage, principal);
  // An identity the config knows no workload of (a caller of another cluster, whose pods this
  // config does not list): the claim is all there is, and the caller bounds how many it takes.
  if (list.length === 0) return { meta: claimed, verified: false };
  const match = claimed && list.find((w) => w.workloadName === claimed.workloadName && w.namespace === claimed.namespace && w.cluster === claimed.cluster);
  if (match) return { meta: match, verified: true };
  // A claim from a cluster of which the config knows no workload of this identity (the same
  // service account runs in both clusters; this one's pods are listed, the caller's are not).
  if (claimed && !list.some((w) => w.cluster === claimed.cluster)) return { meta: claimed, verified: false };
  const first = workloadMetaKey(list[0]!);
  return { meta: list.every((w) => workloadMetaKey(w) === first) ? list[0] : undefined, verified: true };
}

/** One string per distinct workload description (the fields its labels show). */
export function workloadMetaKey(m: WorkloadMeta): string {
  return `${m.cluster}\u0000${m.namespace}\u0000${m.workloadName}\u0000${m.canonicalService}\u0000${m.canonicalRevision}`;
}

/** Distinct unverified workload descriptions taken from one identity's baggage (UnverifiedClaims). */
export const MAX_UNVERIFIED_WORKLOADS = 8;

/**
 * The bound on what an identity's baggage may name when nothing can check it (an identity the
 * reporter's config lists no workload of in the claimed cluster; at a waypoint, every caller): the
 * first MAX_UNVERIFIED_WORKLOADS distinct descriptions per identity are taken, later new ones are
 * labelled `unknown`. Identities are the mesh CA's, so the table is bounded by the mesh's.
 */
export class UnverifiedClaims {
  readonly #byIdentity = new Map<string, Set<string>>();

  take(principal: string, meta: WorkloadMeta): WorkloadMeta | undefined {
    const key = workloadMetaKey(meta);
    let claims = this.#byIdentity.get(principal);
    if (!claims) { claims = new Set(); this.#byIdentity.set(principal, claims); }
    if (claims.has(key)) return meta;
    if (claims.size >= MAX_UNVERIFIED_WORKLOADS) return undefined;
    claims.add(key);
    return meta;
  }
}

/** A baggage value taken as a label value: no longer than a Kubernetes name, no control characters. */
const LABEL_VALUE = /^[^\x00-\x1f\x7f]{0,253}$/;

/**
 * WorkloadMeta from a baggage header, if it is complete and its namespace is the one
 * `principal` proves; undefined otherwise (then the reporter labels the peer by its principal).
 * Other members (an application's own baggage) are ignored; `k8s.<kind>.name` of any workload kind
 * is read as the workload name, as ztunnel writes `k8s.deployment.name` and the like.
 */

export function peerFromBaggage(header: string | undefined, principal: string | undefined): WorkloadMeta | undefined {
  if (!header || header.length > 8192) return undefined;
  const got = new Map<string, string>();
  for (const member of header.split(',')) {
    const eq = member.indexOf('=');
    if (eq <= 0) continue;
    const key = member.slice(0, eq).trim();
    let value: string;
    try {
      value = decodeURIComponent(member.slice(eq + 1).split(';')[0]!.trim());
    } catch {
      continue;
    }
    if (/^k8s\.[a-z]+\.name$/.test(key) && key !== BAGGAGE_KEYS.cluster && key !== BAGGAGE_KEYS.namespace && key !== 'k8s.pod.name') got.set(BAGGAGE_KEYS.workload, value);
    else got.set(key, value);
  }
  const namespace = got.get(BAGGAGE_KEYS.namespace);
  const workloadName = got.get(BAGGAGE_KEYS.workload);
  if (!namespace || !workloadName || namespace !== namespaceOf(principal)) return undefined;
  // No value longer than a Kubernetes name, and no control characters.
  for (const k of [BAGGAGE_KEYS.workload, BAGGAGE_KEYS.service, BAGGAGE_KEYS.revision, BAGGAGE_KEYS.cluster]) {
    const v = got.get(k);
    if (v !== undefined && !LABEL_VALUE.test(v)) return undefined;
  }
  return {
    workloadName,
    namespace,
    canonicalService: got.get(BAGGAGE_KEYS.service) || workloadName,
    canonicalRevision: got.get(BAGGAGE_KEYS.revision) || 'latest',
    cluster: got.get(BAGGAGE_KEYS.cluster) || U,
  };
}
