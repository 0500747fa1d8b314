// Which resources each client may see. An agent gets every workload of its node (enrolled or not:
// the CNI plugin asks it about each pod it sets up) and every enrolled workload of the mesh (whose
// identity and node it checks a tunnel's forwarded client against, and which it may dial by pod
// address; other nodes' without their labels: remoteWorkload), every service (any local workload
// may dial any of them), the policies and peer authentications that select an enrolled local
// workload, and every waypoint. A waypoint gets the
// services it serves (its namespace's, and those of other namespaces bound to a waypoint of its
// namespace: use-waypoint-namespace, allowed by the Waypoint), their routes, traffic policies and
// targetRefs policies (plus the services its routes send to, but those refused for want of a ReferenceGrant), its namespace's waypoints, and the address-owner table (who holds each client address: any
// workload may call it, so every address), not the workloads themselves.
import { foreignWaypointNamespace, isConsumerRoute, policySelectsWorkload, waypointTargets, type AuthorizationPolicy, type MeshModel, type RequestAuthentication, type Route, type RouteBackend, type Service, type Workload } from '../../../lib/model/mesh.ts';
import type { ResourceType } from '../../../lib/xds/protocol.ts';
import type { AddressOwner } from '../../../lib/model/mesh.ts';
import { routeKey } from '../compile.ts';

/** A published resource: its version, its JSON body and the object it came from. */
export interface Published {
  version: string;
  body: string;
  /** The model object it was serialized from (identity: unchanged objects are not looked at again). */
  source: object;
  /** The body's UTF-8 length, once encoded (wire.ts). */
  bodyBytes?: number;
}

export type PublishedSet = Record<ResourceType, Map<string, Published>>;

export interface ViewIndex {
  model: MeshModel;
  /** Enrolled workloads by node. */
  workloadsByNode: Map<string, Workload[]>;
  /** Workloads that are not enrolled, by node. */
  plainByNode: Map<string, Workload[]>;
  /** Every enrolled workload's uid. */
  enrolled: string[];
  /** The address-owner table (address-owners.ts), published beside the model. */
  addressOwners: ReadonlyMap<string, AddressOwner>;
  /** Per namespace, the Services its routes send to (built when a waypoint first asks). */
  routeBackends?: Map<string, Set<string>>;
  /** Per namespace, the other Services its consumer routes send to (built when a waypoint first asks). */
  consumerBackends?: Map<string, Set<string>>;
  /** Per namespace, the other namespaces' Services bound to a waypoint of it (built when a waypoint first asks). */
  foreignServed?: Map<string, Set<string>>;
}

export function buildIndex(model: MeshModel, addressOwners: ReadonlyMap<string, AddressOwner> = new Map()): ViewIndex {
  const workloadsByNode = new Map<string, Workload[]>();
  const plainByNode = new Map<string, Workload[]>();
  const enrolled: string[] = [];
  for (const w of model.workloads.values()) {
    if (w.enrolled) enrolled.push(w.uid);
    const byNode = w.enrolled ? workloadsByNode : plainByNode;
    let list = byNode.get(w.node);
    if (!list) byNode.set(w.node, (list = []));
    list.push(w);
  }
  return { model, workloadsByNode, plainByNode, enrolled, addressOwners };
}

/**
 * What every client but the agent of a workload's own node is sent of it: the workload without its
 * labels, its per-port mTLS modes and its Telemetry settings. Only that agent reads them (the
 * policies and PeerAuthentications that select the pod, weft.dev/splice, the ports its tcx program
 * judges, its access-log settings as a source or destination); what others need of the labels is
 * resolved by the controller into the workload's other fields: its telemetry names (WorkloadMeta:
 * canonical service and revision, from the labels lib/model/workload-meta.ts reads, and the
 * workload name), its waypoint. So a pod's labels, which may name its tenant's teams and secrets,
 * and its tenant's telemetry endpoints reach no other node, as Istio's ztunnel is sent no pod
 * labels at all (proto/workload.proto Workload: canonical_name, canonical_revision,
 * workload_name), and a change to them pushes nothing to other nodes.
 */
export function remoteWorkload(w: Workload): Workload {
  const { labels: _labels, portModes: _portModes, telemetry: _telemetry, ...rest } = w;
  return { ...rest, labels: {} };
}

/**
 * Whether a client is sent resource `source` of `type` as it is: every resource but a workload, and
 * a workload only to the agent of its own node (`agentNode`; undefined for a waypoint). Every other
 * client is sent the workload's remoteWorkload. The one answer for the controller's pushes
 * (server.ts, its published forms) and weftctl's computed views of a cluster (cli/mesh-view.ts).
 */
export function sentWhole(type: ResourceType, source: unknown, agentNode: string | undefined): boolean {
  return type !== 'Workload' || (agentNode !== undefined && (source as Workload).node === agentNode);
}

/** Model resource `value` of `type` in the form the agent of `node` is sent it (sentWhole). */
export function agentForm<T>(node: string, type: ResourceType, value: T): T {
  return sentWhole(type, value, node) ? value : (remoteWorkload(value as Workload) as T);
}

/** Resource names of `type` that the client may see; undefined means every published one. */
export function agentView(ix: ViewIndex, node: string, type: ResourceType): Iterable<string> | undefined {
  switch (type) {
    case 'Workload':
      return [...ix.enrolled, ...(ix.plainByNode.get(node) ?? []).map((w) => w.uid)];
    case 'Service':
    case 'Waypoint':
      return undefined;
    case 'AuthorizationPolicy':
    case 'PeerAuthentication': {
      const out: string[] = [];
      for (const k of modelResources(ix.model)[type].keys()) if (agentHolds(ix, node, type, k)) out.push(k);
      return out;
    }
    case 'TrafficPolicy':
      // Agents see every Service, so every policy of one (load balancing, locality).
      return undefined;
    case 'Route':
    case 'AddressOwner':
    case 'RequestAuthentication':
      return [];
  }
}

/**
 * Whether the agent of `node` may see resource `name` of `type`: the same answer as agentView, one
 * name at a time, so that a push after a small change looks only at the names it touched.
 */
export function agentHolds(ix: ViewIndex, node: string, type: ResourceType, name: string): boolean {
  const m = ix.model;
  switch (type) {
    case 'Workload': {
      const w = m.workloads.get(name);
      return w !== undefined && (w.enrolled || w.node === node);
    }
    case 'Service':
      return m.services.has(name);
    case 'Waypoint':
      return m.waypoints.has(name);
    case 'AuthorizationPolicy': {
      const p = m.policies.get(name);
      return p !== undefined && p.scope !== 'service' && (ix.workloadsByNode.get(node) ?? []).some((w) => policySelectsWorkload(p, w));
    }
    case 'PeerAuthentication': {
      const p = m.peerAuthentications.get(name);
      return p !== undefined && (ix.workloadsByNode.get(node) ?? []).some((w) => policySelectsWorkload(p, w));
    }
    case 'TrafficPolicy':
      // As agentView: every Service's policy (load balancing, locality).
      return m.trafficPolicies.has(name);
    case 'Route':
    case 'AddressOwner':
    case 'RequestAuthentication':
      return false;
  }
}

/**
 * Agent view types whose membership of a name depends on more than that resource: the policies
 * and peer authentications an agent sees follow its node's workloads, so a workload change on a
 * node re-evaluates them all for that node's agent.
 */
export const AGENT_TYPES_FOLLOWING_LOCAL_WORKLOADS: readonly ResourceType[] = ['AuthorizationPolicy', 'PeerAuthentication'];

export function waypointView(ix: ViewIndex, namespace: string, type: ResourceType): Iterable<string> | undefined {
  const m = ix.model;
  const inNs = <T extends { namespace: string }>(map: Map<string, T>): string[] => {
    const out: string[] = [];
    for (const [k, v] of map) if (v.namespace === namespace) out.push(k);
    return out;
  };
  switch (type) {
    case 'Workload':
    // A waypoint of the previous release (LEGACY_CLIENT_TYPES) judges for= from every workload;
    // current ones subscribe to AddressOwner instead.
    case 'AddressOwner':
      // Any workload of the mesh may call the waypoint's services.
      return undefined;
    case 'Service': {
      const names = new Set(inNs(m.services));
      for (const s of foreignServedOf(ix, namespace)) names.add(s);
      for (const b of routeBackendsOf(ix, namespace)) names.add(b);
      return [...names].filter((n) => m.services.has(n));
    }
    case 'Route': {
      const out: string[] = [];
      for (const r of m.routes.values()) if (serves(ix, namespace, r.service)) out.push(routeKey(r.kind, r.namespace, r.name, r.service));
      return out;
    }
    case 'TrafficPolicy': {
      const out: string[] = [];
      for (const [k, tp] of m.trafficPolicies) if (tp.namespace === namespace || foreignServedOf(ix, namespace).has(tp.service)) out.push(k);
      return out;
    }
    case 'AuthorizationPolicy': {
      const out: string[] = [];
      for (const [k, p] of m.policies) if (waypointJudgesWith(ix, p, namespace)) out.push(k);
      return out;
    }
    case 'RequestAuthentication': {
      const out: string[] = [];
      for (const [k, ra] of m.requestAuthentications) if (waypointApplies(ix, ra, namespace)) out.push(k);
      return out;
    }
    case 'PeerAuthentication':
      return inNs(m.peerAuthentications);
    case 'Waypoint':
      // Its own namespace's waypoints of this cluster: another cluster's of the same namespace/name
      // (imported for callers here) is not itself.
      return inNs(m.waypoints).filter((k) => m.waypoints.get(k)!.cluster === undefined);
  }
}

/**
 * The policies the waypoint of `namespace` applies: those attached by targetRefs to a Service it
 * serves (a root-namespace GatewayClass target among them; a policy lives in its Service's
 * namespace, so a Service bound across namespaces brings its own). Namespace-wide, mesh-wide and
 * selector policies are the agents' (lib/policy/authz.ts appliesToService). The same rule for
 * RequestAuthentications.
 */
function waypointApplies(ix: ViewIndex, p: AuthorizationPolicy | RequestAuthentication, namespace: string): boolean {
  return waypointTargets(p).some((s) => serves(ix, namespace, s));
}

/**
 * The AuthorizationPolicies the waypoint of `namespace` judges with: those it applies
 * (waypointApplies), and those attached by targetRefs to a Service its consumer routes send to that
 * it does not serve (consumerBackendsOf): a request a consumer route matched is judged as sent, by
 * the policies of where it goes, and without them it found none there and was allowed. Not a
 * producer route's backends: that request is judged as addressed (waypoint proxy.ts authorize), and
 * another namespace's policies are nothing for this one to read unless it evaluates them.
 */
function waypointJudgesWith(ix: ViewIndex, p: AuthorizationPolicy, namespace: string): boolean {
  return waypointApplies(ix, p, namespace) || waypointTargets(p).some((s) => consumerBackendsOf(ix, namespace).has(s));
}

/** Does a waypoint of `namespace` serve Service `svcKey`: one of its namespace, or another's bound to it. */
function serves(ix: ViewIndex, namespace: string, svcKey: string): boolean {
  return svcKey.startsWith(`${namespace}/`) || foreignServedOf(ix, namespace).has(svcKey);
}

/**
 * The waypoint namespaces whose served Services a publish changed by a binding (a Service, or a pod
 * of some Services, that came to be, or stopped being, bound to a waypoint of another namespace,
 * or such a pod whose Services changed): their views of Routes, TrafficPolicies and
 * AuthorizationPolicies follow those Services, so they are recomputed whole.
 */
export function reboundWaypointNamespaces(
  before: ReadonlyMap<string, Service> | undefined, after: ReadonlyMap<string, Service>, changed: readonly string[],
  workloadsBefore?: ReadonlyMap<string, Workload>, workloadsAfter?: ReadonlyMap<string, Workload>, changedWorkloads: readonly string[] = [],
): Set<string> {
  const out = new Set<string>();
  for (const name of changed) {
    const was = before?.get(name);
    const is = after.get(name);
    const a = was && foreignWaypointNamespace(was);
    const b = is && foreignWaypointNamespace(is);
    if (a === b) continue;
    if (a) out.add(a);
    if (b) out.add(b);
  }
  for (const uid of changedWorkloads) {
    const was = workloadsBefore?.get(uid);
    const is = workloadsAfter?.get(uid);
    const a = was && foreignWaypointNamespace(was);
    const b = is && foreignWaypointNamespace(is);
    if (a === b && (!a || was!.services.join() === is!.services.join())) continue;
    if (a) out.add(a);
    if (b) out.add(b);
  }
  return out;
}

/** The waypoint view types that follow the Services bound across namespaces (reboundWaypointNamespaces). */
export const WAYPOINT_TYPES_FOLLOWING_BINDINGS: readonly ResourceType[] = ['Service', 'Route', 'TrafficPolicy', 'AuthorizationPolicy', 'RequestAuthentication'];

/**
 * Whether the waypoint of `namespace` may see resource `name` of `type`: the same answer as
 * waypointView, one name at a time (delta pushes look only at the names a publish touched).
 */
export function waypointHolds(ix: ViewIndex, namespace: string, type: ResourceType, name: string): boolean {
  const m = ix.model;
  switch (type) {
    case 'Workload':
      return m.workloads.has(name);
    case 'AddressOwner':
      return ix.addressOwners.has(name);
    case 'Service': {
      const s = m.services.get(name);
      return s !== undefined && (s.namespace === namespace || foreignServedOf(ix, namespace).has(name) || routeBackendsOf(ix, namespace).has(name));
    }
    case 'Route': {
      // The model keys routes by routeKey, the names waypointView lists.
      const r = m.routes.get(name);
      return r !== undefined && serves(ix, namespace, r.service);
    }
    case 'TrafficPolicy': {
      const tp = m.trafficPolicies.get(name);
      return tp !== undefined && (tp.namespace === namespace || foreignServedOf(ix, namespace).has(tp.service));
    }
    case 'AuthorizationPolicy': {
      const p = m.policies.get(name);
      return p !== undefined && waypointJudgesWith(ix, p, namespace);
    }
    case 'RequestAuthentication': {
      const ra = m.requestAuthentications.get(name);
      return ra !== undefined && waypointApplies(ix, ra, namespace);
    }
    case 'PeerAuthentication':
      return m.peerAuthentications.get(name)?.namespace === namespace;
    case 'Waypoint': {
      const w = m.waypoints.get(name);
      return w?.namespace === namespace && w.cluster === undefined;
    }
  }
}

/**
 * Waypoint view types whose membership of a name depends on other types: the Services a waypoint
 * sees include its routes' backends, and its AuthorizationPolicies those backends' (waypointJudgesWith),
 * so a Route change re-evaluates its Service and AuthorizationPolicy views whole. Every
 * other type's membership follows from the resource itself, or from the Services bound across
 * namespaces (WAYPOINT_TYPES_FOLLOWING_BINDINGS, for the namespaces a publish rebound).
 */
export const WAYPOINT_VIEW_DEPENDS_ON: Readonly<Partial<Record<ResourceType, readonly ResourceType[]>>> = { Service: ['Route'], AuthorizationPolicy: ['Route'] };

const NONE: ReadonlySet<string> = new Set();

/**
 * The Services of other namespaces bound to a waypoint of `namespace`, and those of pods of other
 * namespaces bound to one (use-waypoint-namespace on the Pod or its namespace: the waypoint takes
 * tunnels addressed to the pod, for its Services, with their policies), cached on the index.
 */
function foreignServedOf(ix: ViewIndex, namespace: string): ReadonlySet<string> {
  if (!ix.foreignServed) {
    const out = (ix.foreignServed = new Map<string, Set<string>>());
    const add = (ns: string, key: string) => {
      let set = out.get(ns);
      if (!set) out.set(ns, (set = new Set()));
      set.add(key);
    };
    for (const [key, svc] of ix.model.services) {
      const ns = foreignWaypointNamespace(svc);
      if (ns !== undefined) add(ns, key);
    }
    // Only the pod's own namespace's Services: another namespace's listing it (a hand-written
    // EndpointSlice) marks it with the pod's waypoint (Endpoint.waypoint), and every waypoint
    // leaves it out, so that Service and its policies are nothing for this one to hold.
    for (const w of ix.model.workloads.values()) {
      const ns = foreignWaypointNamespace(w);
      if (ns !== undefined) for (const key of w.services) if (key.startsWith(`${w.namespace}/`) && ix.model.services.has(key)) add(ns, key);
    }
  }
  return ix.foreignServed.get(namespace) ?? NONE;
}

/**
 * The Services the routes a waypoint of `namespace` applies send to (backends and mirrors), cached
 * on the index. Not a backend the controller refused (no ReferenceGrant, GEP-709): the waypoint
 * answers its requests 500 without looking it up, and its namespace did not consent to be named
 * there, so its Service (addresses, endpoints, identities) is no business of this waypoint's.
 */
function routeBackendsOf(ix: ViewIndex, namespace: string): ReadonlySet<string> {
  ix.routeBackends ??= new Map();
  return backendsOf(ix, ix.routeBackends, namespace, () => true);
}

/** Of routeBackendsOf, those of consumer routes (isConsumerRoute), less the Services the waypoint serves. */
function consumerBackendsOf(ix: ViewIndex, namespace: string): ReadonlySet<string> {
  ix.consumerBackends ??= new Map();
  const cached = ix.consumerBackends.get(namespace);
  if (cached) return cached;
  const names = backendsOf(ix, ix.consumerBackends, namespace, isConsumerRoute);
  for (const s of names) if (serves(ix, namespace, s)) names.delete(s);
  return names;
}

/** The Services that the routes `pick` chooses of those a waypoint of `namespace` applies send to, cached in `cache`. */
function backendsOf(ix: ViewIndex, cache: Map<string, Set<string>>, namespace: string, pick: (r: Route) => boolean): Set<string> {
  let names = cache.get(namespace);
  if (names) return names;
  names = new Set();
  const add = (b: RouteBackend): void => {
    if (b.refused === undefined) names!.add(b.service);
  };
  for (const r of ix.model.routes.values()) {
    if (!serves(ix, namespace, r.service) || !pick(r)) continue;
    for (const rule of r.rules) {
      for (const b of rule.backends) {
        add(b);
        for (const f of b.filters) if (f.type === 'RequestMirror') add(f.backend);
      }
      for (const f of rule.filters) if (f.type === 'RequestMirror') add(f.backend);
    }
  }
  cache.set(namespace, names);
  return names;
}

/** The resource types compiled into the model (the others are derived from it: AddressOwner). */
export type ModelResourceType = Exclude<ResourceType, 'AddressOwner'>;

/** Every resource of the model, by type and name. */
export function modelResources(model: MeshModel): Record<ModelResourceType, Map<string, unknown>> {
  return {
    Workload: model.workloads,
    Service: model.services,
    AuthorizationPolicy: model.policies,
    RequestAuthentication: model.requestAuthentications,
    PeerAuthentication: model.peerAuthentications,
    Waypoint: model.waypoints,
    TrafficPolicy: model.trafficPolicies,
    Route: model.routes,
  };
}
