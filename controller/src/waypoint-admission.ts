// Which ServiceAccount and image a Waypoint may run with. A waypoint's identity is trusted by
// agents (its SPIFFE ID marks traffic as "already through the waypoint") and its image runs with
// that identity, so neither is the Waypoint author's free choice:
//   - serviceAccountName: the Waypoint's own name (the default) or one the operator allows
//     (--waypoint-service-accounts); `default` never, since every pod of the namespace runs as it
//     and would then count as the waypoint itself;
//   - image: the controller's waypoint image (the default) or one the operator allows
//     (--waypoint-images; `prefix*` allows a repository).
// A Waypoint refused here is not launched, stays NotReady with the field at fault in its status,
// and the Services that use it fail closed.
import type { Waypoint } from '../../lib/model/objects.ts';
import type { Waypoint as MeshWaypoint } from '../../lib/model/mesh.ts';

export interface WaypointAllowList {
  /** ServiceAccount names a Waypoint may name besides its own name. */
  serviceAccounts?: readonly string[];
  /** Images a Waypoint may name (exact, or `prefix*`). */
  images?: readonly string[];
}

export interface WaypointRefusal {
  path: string;
  reason: 'ServiceAccountNotAllowed' | 'ImageNotAllowed';
  message: string;
}

/** The ServiceAccount no Waypoint may use. */
export const FORBIDDEN_WAYPOINT_SERVICE_ACCOUNT = 'default';

export function admitWaypoint(wp: Pick<Waypoint, 'metadata' | 'spec'>, allow: WaypointAllowList = {}): WaypointRefusal | undefined {
  const sa = wp.spec?.serviceAccountName;
  if (sa !== undefined && sa !== wp.metadata.name) {
    if (sa === FORBIDDEN_WAYPOINT_SERVICE_ACCOUNT || !(allow.serviceAccounts ?? []).includes(sa)) {
      return {
        path: 'spec.serviceAccountName',
        reason: 'ServiceAccountNotAllowed',
        message: sa === FORBIDDEN_WAYPOINT_SERVICE_ACCOUNT
          ? 'ServiceAccount "default" is never allowed: every pod of the namespace runs as it and would count as the waypoint'
          : `ServiceAccount "${sa}" is not allowed for waypoints (allowed: the Waypoint's own name${allow.serviceAccounts?.length ? `, ${allow.serviceAccounts.join(', ')}` : ''}; controller flag --waypoint-service-accounts)`,
      };
    }
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
 * Whether a ServiceAccount token may obtain a waypoint's certificate: `id` (the SPIFFE ID of
 * namespace `ns` and that ServiceAccount) is the identity of one of this cluster's own waypoints
 * in `ns`. Another cluster's waypoints are in the model too (imported with their remote-only
 * Services), under the same names; a local pod must never get one of their identities.
 */
export function isOwnWaypointIdentity(waypoints: Iterable<Pick<MeshWaypoint, 'namespace' | 'spiffeId' | 'cluster'>>, ns: string, id: string): boolean {
  for (const w of waypoints) if (w.namespace === ns && w.spiffeId === id && w.cluster === undefined) return true;
  return false;
}
