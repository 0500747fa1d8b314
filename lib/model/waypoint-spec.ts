// The waypoint/src/main.ts flags a Waypoint's spec sets: one mapping for the controller's
// Deployment (controller/src/waypoints-kube.ts) and the local mesh's waypoint pods (cli/local/mesh.ts).
import type { Waypoint } from './objects.ts';

export type WaypointSpecFlags = Pick<NonNullable<Waypoint['spec']>, 'maxRequests' | 'quotaStore'>;

export function waypointSpecArgs(spec: WaypointSpecFlags): string[] {
  return [
    ...(spec.maxRequests !== undefined ? ['--max-requests', String(spec.maxRequests)] : []),
    ...(spec.quotaStore ? ['--quota-redis', spec.quotaStore.redis, ...(spec.quotaStore.failureMode ? ['--quota-failure-mode', spec.quotaStore.failureMode] : [])] : []),
  ];
}
