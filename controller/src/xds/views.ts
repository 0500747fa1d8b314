// Which resources each client may see. An agent gets its node's enrolled workloads, every service
// (any local workload may dial any of them), the policies and peer authentications that select a
// local workload, and every waypoint. A waypoint gets its namespace's services, routes, traffic
// policies and policies (plus the services its routes send to), and its namespace's waypoints.
import { policySelectsWorkload, type MeshModel, type Workload } from '../../../lib/model/mesh.ts';
import type { ResourceType } from '../../../lib/xds/protocol.ts';
import { routeKey } from '../compile.ts';

/** A published resource: its version, its JSON body and the object it came from. */
export interface Published {
  version: string;
  body: string;
}

export type PublishedSet = Record<ResourceType, Map<string, Published>>;

export interface ViewIndex {
  model: MeshModel;
  /** Enrolled workloads by node. */
  workloadsByNode: Map<string, Workload[]>;
}

export function buildIndex(model: MeshModel): ViewIndex {
  const workloadsByNode = new Map<string, Workload[]>();
  for (const w of model.workloads.values()) {
    if (!w.enrolled) continue;
    let list = workloadsByNode.get(w.node);
    if (!list) workloadsByNode.set(w.node, (list = []));
    list.push(w);
  }
  return { model, workloadsByNode };
}

/** Resource names of `type` that the client may see; undefined means every published one. */
export function agentView(ix: ViewIndex, node: string, type: ResourceType): Iterable<string> | undefined {
  const local = ix.workloadsByNode.get(node) ?? [];
  switch (type) {
    case 'Workload':
      return local.map((w) => w.uid);
    case 'Service':
    case 'Waypoint':
      return undefined;
    case 'AuthorizationPolicy': {
      const out: string[] = [];
      for (const [k, p] of ix.model.policies) if (p.scope !== 'service' && local.some((w) => policySelectsWorkload(p, w))) out.push(k);
      return out;
    }
    case 'PeerAuthentication': {
      const out: string[] = [];
      for (const [k, p] of ix.model.peerAuthentications) if (local.some((w) => policySelectsWorkload(p, w))) out.push(k);
      return out;
    }
    case 'TrafficPolicy':
    case 'Route':
      return [];
  }
}

export function waypointView(ix: ViewIndex, namespace: string, type: ResourceType): Iterable<string> | undefined {
  const m = ix.model;
  const inNs = <T extends { namespace: string }>(map: Map<string, T>): string[] => {
    const out: string[] = [];
    for (const [k, v] of map) if (v.namespace === namespace) out.push(k);
    return out;
  };
  switch (type) {
    case 'Workload':
      return [];
    case 'Service': {
      const names = new Set(inNs(m.services));
      for (const r of m.routes.values()) {
        if (!r.service.startsWith(`${namespace}/`)) continue;
        for (const rule of r.rules) {
          for (const b of rule.backends) {
            names.add(b.service);
            for (const f of b.filters) if (f.type === 'RequestMirror') names.add(f.backend.service);
          }
          for (const f of rule.filters) if (f.type === 'RequestMirror') names.add(f.backend.service);
        }
      }
      return [...names].filter((n) => m.services.has(n));
    }
    case 'Route': {
      const out: string[] = [];
      for (const r of m.routes.values()) if (r.service.startsWith(`${namespace}/`)) out.push(routeKey(r.kind, r.namespace, r.name, r.service));
      return out;
    }
    case 'TrafficPolicy':
      return inNs(m.trafficPolicies);
    case 'AuthorizationPolicy': {
      const out: string[] = [];
      for (const [k, p] of m.policies) if (p.namespace === namespace || p.scope === 'mesh') out.push(k);
      return out;
    }
    case 'PeerAuthentication':
      return inNs(m.peerAuthentications);
    case 'Waypoint':
      return inNs(m.waypoints);
  }
}

/** Every resource of the model, by type and name. */
export function modelResources(model: MeshModel): Record<ResourceType, Map<string, unknown>> {
  return {
    Workload: model.workloads,
    Service: model.services,
    AuthorizationPolicy: model.policies,
    PeerAuthentication: model.peerAuthentications,
    Waypoint: model.waypoints,
    TrafficPolicy: model.trafficPolicies,
    Route: model.routes,
  };
}
