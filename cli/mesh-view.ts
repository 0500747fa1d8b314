// What the node agents and waypoints hold, on either transport. On the local mesh it is read from
// each agent's and waypoint's admin /config_dump; on a cluster it is computed the way the
// controller computes it (controller/src/store.ts validation, compile.ts, and the per-client views
// of controller/src/xds/views.ts) from the objects read through the API, so both give the same rows.
import { ObjectStore } from '../controller/src/store.ts';
import { compile, type CompileResult } from '../controller/src/compile.ts';
import { agentView, buildIndex, modelResources, waypointView, type ModelResourceType } from '../controller/src/xds/views.ts';
import type { RawObject } from '../controller/src/sources/source.ts';
import { KINDS, type MeshKind } from '../lib/model/objects.ts';
import type { AgentConfig, WaypointConfig } from '../lib/model/mesh.ts';
import type { ValidationIssue } from '../lib/model/errors.ts';
import type { KubeClient } from './kube.ts';

const ALL_KINDS = Object.keys(KINDS) as MeshKind[];

export interface Compiled extends CompileResult {
  /** Objects refused by validation, by key, with their issues. */
  rejections: Array<{ key: string; issues: ValidationIssue[] }>;
  inputs: ReturnType<ObjectStore['inputs']>;
}

/** Objects → the controller's model, through its own store (validation) and compiler. */
export function compileObjects(objects: readonly RawObject[]): Compiled {
  const store = new ObjectStore();
  const applied = store.apply([{ type: 'snapshot', kinds: ALL_KINDS, objects: [...objects], resourceVersion: '1' }]);
  const inputs = store.inputs();
  return { ...compile(inputs), rejections: applied.rejections, inputs };
}

export interface AgentDump {
  node: string;
  config: AgentConfig;
}

export interface WaypointDump {
  /** `namespace/pod` (local mesh) or `namespace/waypoint` (computed). */
  pod: string;
  config: WaypointConfig;
}

function pick<T>(all: Map<string, unknown>, names: Iterable<string> | undefined): T[] {
  if (names === undefined) return [...all.values()] as T[];
  const out: T[] = [];
  for (const n of names) {
    const v = all.get(n);
    if (v !== undefined) out.push(v as T);
  }
  return out;
}

/** Each node's agent config and each namespace's waypoint config, as the controller sends them. */
export function viewsOf(c: CompileResult, nodes: readonly string[] = []): { agents: AgentDump[]; waypoints: WaypointDump[] } {
  const ix = buildIndex(c.model);
  const res = modelResources(c.model);
  const all = [...new Set([...nodes, ...ix.workloadsByNode.keys()])].sort();
  const agent = (node: string): AgentConfig => {
    const get = <T>(t: ModelResourceType) => pick<T>(res[t], agentView(ix, node, t));
    return { node, workloads: get('Workload'), services: get('Service'), policies: get('AuthorizationPolicy'), peerAuthentications: get('PeerAuthentication'), waypoints: get('Waypoint'), trafficPolicies: get('TrafficPolicy') };
  };
  const namespaces = [...new Set([...c.model.waypoints.values()].map((w) => w.namespace))].sort();
  const waypoint = (namespace: string): WaypointConfig => {
    const get = <T>(t: ModelResourceType) => pick<T>(res[t], waypointView(ix, namespace, t));
    return { namespace, services: get('Service'), routes: get('Route'), trafficPolicies: get('TrafficPolicy'), policies: get('AuthorizationPolicy'), requestAuthentications: get('RequestAuthentication'), waypoints: get('Waypoint') };
  };
  return {
    agents: all.map((node) => ({ node, config: agent(node) })),
    waypoints: namespaces.flatMap((ns) => [...c.model.waypoints.values()].filter((w) => w.namespace === ns).map((w) => ({ pod: `${ns}/${w.name}`, config: waypoint(ns) }))),
  };
}

/** A cluster's views: its objects read through the API, compiled as the controller does. */
export async function clusterViews(kube: KubeClient): Promise<{ agents: AgentDump[]; waypoints: WaypointDump[] }> {
  const [objects, nodes] = await Promise.all([kube.meshObjects(), kube.list<{ metadata: { name: string } }>('v1', 'nodes')]);
  return viewsOf(compileObjects(objects as RawObject[]), nodes.map((n) => n.metadata.name));
}
