// Which ServiceAccount and image a Waypoint may run with. A waypoint's identity is trusted by
// agents (its SPIFFE ID marks traffic as "already through the waypoint") and its image runs with
// that identity, so neither is the Waypoint author's free choice:
//   - serviceAccountName: the Waypoint's own name (the default) or one the operator allows
//     (--waypoint-service-accounts); `default` never, since every pod of the namespace runs as it
//     and would then count as the waypoint itself. That holds for the account the Waypoint runs
//     as, named or implied: a Waypoint named `default` without spec.serviceAccountName is refused
//     too (at metadata.name). An account other pods of the namespace already run as is refused
//     by the compile, which has the pods at hand (waypointAccountShared);
//   - image: the controller's waypoint image (the default) or one the operator allows
//     (--waypoint-images; `prefix*` allows a repository).
//   - name: not `none`, which the use-waypoint label reserves for "no waypoint".
// A Waypoint refused here is not launched, stays NotReady with the field at fault in its status,
// and the Services that use it fail closed.
import { LABEL_USE_WAYPOINT, USE_WAYPOINT_NONE, type Waypoint } from '../../lib/model/objects.ts';
import type { Waypoint as MeshWaypoint } from '../../lib/model/mesh.ts';

export interface WaypointAllowList {
  /** ServiceAccount names a Waypoint may name besides its own name. */
  serviceAccounts?: readonly string[];
  /** Images a Waypoint may name (exact, or `prefix*`). */
  images?: readonly string[];
}

export interface WaypointRefusal {
  path: string;
  reason: 'NameReserved' | 'ServiceAccountNotAllowed' | 'ServiceAccountShared' | 'ImageNotAllowed';
  message: string;
}

/** The ServiceAccount no Waypoint may use. */
export const FORBIDDEN_WAYPOINT_SERVICE_ACCOUNT = 'default';

/** The ServiceAccount a Waypoint runs as: spec.serviceAccountName, else its own name. */
export function waypointServiceAccount(wp: Pick<Waypoint, 'metadata' | 'spec'>): string {
  return wp.spec?.serviceAccountName ?? wp.metadata.name;
}

/** The field that sets a Waypoint's ServiceAccount: spec.serviceAccountName, or metadata.name when implied. */
export function waypointServiceAccountPath(wp: Pick<Waypoint, 'spec'>): string {
  return wp.spec?.serviceAccountName !== undefined ? 'spec.serviceAccountName' : 'metadata.name';
}

export function admitWaypoint(wp: Pick<Waypoint, 'metadata' | 'spec'>, allow: WaypointAllowList = {}): WaypointRefusal | undefined {
  if (wp.metadata.name === USE_WAYPOINT_NONE) {
    return {
      path: 'metadata.name',
      reason: 'NameReserved',
      message: `the name "${USE_WAYPOINT_NONE}" is reserved: ${LABEL_USE_WAYPOINT}=${USE_WAYPOINT_NONE} means no waypoint (as in Istio), so nothing could use this one; rename it`,
    };
  }
  const sa = waypointServiceAccount(wp);
  if (sa === FORBIDDEN_WAYPOINT_SERVICE_ACCOUNT) {
    const implied = wp.spec?.serviceAccountName === undefined;
    return {
      path: waypointServiceAccountPath(wp),
      reason: 'ServiceAccountNotAllowed',
      message: `ServiceAccount "default" is never allowed${implied ? ' (a Waypoint without spec.serviceAccountName runs as its own name; rename it)' : ''}: every pod of the namespace runs as it and would count as the waypoint`,
    };
  }
  if (sa !== wp.metadata.name && !(allow.serviceAccounts ?? []).includes(sa)) {
    return {
      path: 'spec.serviceAccountName',
      reason: 'ServiceAccountNotAllowed',
      message: `ServiceAccount "${sa}" is not allowed for waypoints (allowed: the Waypoint's own name${allow.serviceAccounts?.length ? `, ${allow.serviceAccounts.join(', ')}` : ''}; controller flag --waypoint-service-accounts)`,
    };
  }
  const image = wp.spec?.image;
  if (image !== undefined && !(allow.images ?? []).some((p) => (p.endsWith('*') ? image.startsWith(p.slice(0, -1)) : image === p))) {
    return {
      path: 'spec.image',
      reason: 'ImageNotAllowed',
      message: `image "${image}" is not allowed for waypoints (leave spec.image out for the controller's image, or allow it with the controller flag --waypoint-images)`,
    };
  }
  return undefined;
}

/**
 * The refusal of a Waypoint whose ServiceAccount other pods of its namespace run as (`pods`: each
 * pod's namespace, ServiceAccount, and the Waypoint it belongs to, if any, by its
 * weft.dev/waypoint label): agents would let those pods skip the waypoint as "the waypoint itself",
 * and their tokens would obtain its certificate. Waypoint replicas do not count: its own, and
 * those of `peers` (the other Waypoints of its namespace on the same, allowed, account; each would
 * otherwise refuse the other once both run, and both would be stopped and started in turn).
 * Replicas are known by their label, which whoever creates a pod sets: this catches an account
 * shared by mistake, not a tenant who may create pods as that account (Kubernetes lets any pod of
 * a namespace run as any of its ServiceAccounts, and so obtain that account's identity).
 */
export function waypointAccountShared(
  wp: Pick<Waypoint, 'metadata' | 'spec'>,
  pods: Iterable<{ namespace: string; serviceAccount: string; name: string; waypointFor: string | undefined }>,
  peers: ReadonlySet<string> = new Set(),
): WaypointRefusal | undefined {
  const sa = waypointServiceAccount(wp);
  const ns = wp.metadata.namespace;
  for (const p of pods) {
    if (p.namespace !== ns || p.serviceAccount !== sa || p.waypointFor === wp.metadata.name || (p.waypointFor !== undefined && peers.has(p.waypointFor))) continue;
    return {
      path: waypointServiceAccountPath(wp),
      reason: 'ServiceAccountShared',
      message: `ServiceAccount "${sa}" is used by pod ${ns}/${p.name}, which would count as the waypoint itself; give the waypoint an account of its own${wp.spec?.serviceAccountName === undefined ? ' (it runs as its own name: rename it or set spec.serviceAccountName)' : ''}`,
    };
  }
  return undefined;
}

/**
 * Whether a ServiceAccount token may obtain a waypoint's certificate: `id` (the SPIFFE ID of
 * namespace `ns` and that ServiceAccount) is the identity of one of this cluster's own waypoints
 * in `ns`. Another cluster's waypoints are in the model too (imported with their remote-only
 * Services), under the same names; a local pod must never get one of their identities.
 */
export function isOwnWaypointIdentity(waypoints: Iterable<Pick<MeshWaypoint, 'namespace' | 'spiffeId' | 'cluster'>>, ns: string, id: string): boolean {
  for (const w of waypoints) if (w.namespace === ns && w.spiffeId === id && w.cluster === undefined) return true;
  return false;
}
