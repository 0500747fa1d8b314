// What the node agents and waypoints hold, on either transport. On the local mesh it is read from
// each agent's and waypoint's admin /config_dump; on a cluster it is computed the way the
// controller computes it (controller/src/store.ts validation, compile.ts, and the per-client views
// of controller/src/xds/views.ts) from the objects read through the API, so both give the same rows.
import { ObjectStore } from '../controller/src/store.ts';
import { compile, type CompileOptions, type CompileResult } from '../controller/src/compile.ts';
import { agentForm, agentView, buildIndex, modelResources, waypointView, type ModelResourceType } from '../controller/src/xds/views.ts';
import { CONTROLLER_NAME } from '../lib/defaults.ts';
import type { RawObject } from '../controller/src/sources/source.ts';
import { KINDS, type MeshKind } from '../lib/model/objects.ts';
import { DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN, type AgentConfig, type WaypointConfig } from '../lib/model/mesh.ts';
import type { ValidationIssue } from '../lib/model/errors.ts';
import { KubeApiError, type KubeClient } from './kube.ts';

const ALL_KINDS = Object.keys(KINDS) as MeshKind[];

export interface Compiled extends CompileResult {
  /** Objects refused by validation, by key, with their issues. */
  rejections: Array<{ key: string; issues: ValidationIssue[] }>;
  inputs: ReturnType<ObjectStore['inputs']>;
}

/**
 * Objects → the controller's model, through its own store (validation) and compiler, with the
 * install's compile options (its trust domain and aliases: installCompileOptions).
 */
export function compileObjects(objects: readonly RawObject[], options: CompileOptions = {}): Compiled {
  const store = new ObjectStore();
  const applied = store.apply([{ type: 'snapshot', kinds: ALL_KINDS, objects: [...objects], resourceVersion: '1' }]);
  const inputs = store.inputs();
  return { ...compile(inputs, options), rejections: applied.rejections, inputs };
}

interface DeploymentLite {
  spec?: { template?: { spec?: { containers?: Array<{ name?: string; args?: string[] }> } } };
}

/**
 * What the controller installed in `namespace` compiles with (its trust domain and aliases, root
 * namespace, cluster ID: controller/src/main.ts compileOptionsOfArgs), read from its Deployment's
 * command line (`controller` and the flags cli/install/controller.ts gives it), passing over flags
 * this weftctl does not know (a controller of another version). The defaults when there is no such
 * Deployment; also, with a line to `warn` naming them and why, when it may not be read (a user
 * with rights in some namespaces only: 403) or its compile flags do not parse.
 */
export async function installCompileOptions(kube: KubeClient, namespace: string, warn: (line: string) => void): Promise<CompileOptions> {
  const path = `/apis/apps/v1/namespaces/${encodeURIComponent(namespace)}/deployments/${CONTROLLER_NAME}`;
  const defaults = (why: string): CompileOptions => {
    warn(`compiled with the controller's defaults (trust domain ${DEFAULT_TRUST_DOMAIN}, no aliases, root namespace ${DEFAULT_ROOT_NAMESPACE}): ${why}`);
    return {};
  };
  let deployment: DeploymentLite;
  try {
    deployment = await kube.get<DeploymentLite>(path);
  } catch (e) {
    if (e instanceof KubeApiError && e.status === 404) return {};
    if (e instanceof KubeApiError && e.status === 403) return defaults(`Deployment ${namespace}/${CONTROLLER_NAME} may not be read (${e.detail || e.message})`);
    throw e;
  }
  const args = deployment.spec?.template?.spec?.containers?.find((c) => c.name === 'controller')?.args ?? [];
  // Loaded only here: the controller's flags and what they bring.
  const { compileOptionsOfArgs } = await import('../controller/src/main.ts');
  try {
    return compileOptionsOfArgs(args[0] === 'controller' ? args.slice(1) : args);
  } catch (e) {
    return defaults(`the command line of Deployment ${namespace}/${CONTROLLER_NAME} does not parse: ${(e as Error).message}`);
  }
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
    // Each in the form that agent is sent it (views.ts agentForm: other nodes' pods without labels).
    const get = <T>(t: ModelResourceType) => pick<T>(res[t], agentView(ix, node, t)).map((v) => agentForm(node, t, v));
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

/** A cluster's views: its objects read through the API, compiled as the controller installed in `namespace` does. */
export async function clusterViews(kube: KubeClient, namespace: string, warn: (line: string) => void): Promise<{ agents: AgentDump[]; waypoints: WaypointDump[] }> {
  const [objects, nodes, options] = await Promise.all([kube.meshObjects(), kube.list<{ metadata: { name: string } }>('v1', 'nodes'), installCompileOptions(kube, namespace, warn)]);
  return viewsOf(compileObjects(objects as RawObject[], options), nodes.map((n) => n.metadata.name));
}
