// Input objects → compiled mesh model. Pure: the same objects give the same model. Objects reach
// this point already validated (controller/src/store.ts keeps the last valid version of each);
// what can only be judged with other objects at hand (a route whose parent Service does not exist)
// is reported as a status finding, not thrown.
import { parseDuration } from '../../lib/model/duration.ts';
import {
  LABEL_DATAPLANE_MODE,
  LABEL_SERVICE_NAME,
  LABEL_USE_WAYPOINT,
  LABEL_USE_WAYPOINT_NAMESPACE,
  LABEL_WAYPOINT_FOR,
  madeForWaypoint,
  type AuthorizationPolicy as AuthorizationPolicyObject,
  type EndpointSlice,
  type GRPCRoute,
  type HTTPRoute,
  type HTTPRouteFilter,
  type Namespace,
  type Node,
  type PeerAuthentication as PeerAuthenticationObject,
  type PeerAuthenticationMode,
  type PolicyTargetRef,
  type RequestAuthentication as RequestAuthenticationObject,
  type Pod,
  type Service as ServiceObject,
  type TrafficPolicy as TrafficPolicyObject,
  type Telemetry as TelemetryObject,
  type Waypoint as WaypointObject,
  type BackendRef,
  type ParentReference,
  type ReferenceGrant,
  isServiceParent,
  policyTargets,
  useWaypointOf,
  waypointAllowsNamespace,
  type UseWaypoint,
  type HeaderMatch,
  type HeaderModifier,
  type PathModifier,
  ANNOTATION_DRY_RUN,
  parseDryRun,
  groupOf,
  ISTIO_ROOT_NAMESPACE,
  ISTIO_SECURITY_GROUP,
} from '../../lib/model/objects.ts';
import {
  boundWaypoint,
  emptyMeshModel,
  DEFAULT_CLUSTER_DOMAIN,
  DEFAULT_ROOT_NAMESPACE,
  DEFAULT_TRUST_DOMAIN,
  HBONE_PORT,
  isConsumerRoute,
  labelsMatch,
  nsName,
  resolveMtls,
  waypointRefusalText,
  spiffeIdOf,
  DEFAULT_SAMPLING_PERCENTAGE,
  type AuthorizationPolicy,
  type CompiledRule,
  type CompiledSource,
  type Endpoint,
  type HeaderEdits,
  type MeshHttpSettings,
  type MeshModel,
  type MtlsMode,
  type PeerAuthentication,
  type RequestAuthentication,
  type TelemetrySettings,
  type Route,
  type RouteBackend,
  type RouteFilter,
  type RouteMatch,
  type StringMatch,
  type Service,
  type ServicePort,
  type TrafficPolicy,
  type Waypoint,
  type WaypointRef,
  type Workload,
} from '../../lib/model/mesh.ts';
import { DEFAULT_CLUSTER_ID, workloadMetaOf } from '../../lib/model/workload-meta.ts';
import { canonicalIp, ipProblem, isServiceAddress } from '../../lib/model/address.ts';
import { ruleL7Attributes, ruleLayer } from '../../lib/policy/authz.ts';
import { namespaceNeedsPattern } from '../../lib/policy/keys.ts';
import { expandTrustDomainAliases, expandTrustDomainList } from '../../lib/policy/trust-domains.ts';
import { escapeRegex, grpcMethodPattern } from '../../lib/regex.ts';
import { JWKS_RESULT_TEXT, unfetchedJwks, type JwksState } from './jwks-resolver.ts';
import { admitTelemetry, meshTelemetryEndpoints } from './telemetry-admission.ts';
import { admitWaypoint, waypointAccountShared, waypointServiceAccount, type WaypointAllowList, type WaypointRefusal } from './waypoint-admission.ts';

/** The accepted input objects, by kind. */
export interface MeshInputs {
  namespaces: Namespace[];
  nodes: Node[];
  pods: Pod[];
  services: ServiceObject[];
  endpointSlices: EndpointSlice[];
  waypoints: WaypointObject[];
  authorizationPolicies: AuthorizationPolicyObject[];
  requestAuthentications: RequestAuthenticationObject[];
  peerAuthentications: PeerAuthenticationObject[];
  trafficPolicies: TrafficPolicyObject[];
  telemetries: TelemetryObject[];
  httpRoutes: HTTPRoute[];
  grpcRoutes: GRPCRoute[];
  referenceGrants: ReferenceGrant[];
}

export function emptyInputs(): MeshInputs {
  return { namespaces: [], nodes: [], pods: [], services: [], endpointSlices: [], waypoints: [], authorizationPolicies: [], requestAuthentications: [], peerAuthentications: [], trafficPolicies: [], telemetries: [], httpRoutes: [], grpcRoutes: [], referenceGrants: [] };
}

/** Runtime facts about waypoints that the objects do not carry (the reconciler knows them). */
export interface WaypointRuntime {
  address?: string;
  /** Every ready replica's address when there are several (`address` is one of them). */
  addresses?: string[];
  ready: boolean;
  reason?: string;
  /** What the reason means for this waypoint, for its status (a name conflict names the object). */
  message?: string;
}

/**
 * Carries workload objects from one compilation to the next: a workload whose pod and inputs did
 * not change keeps its object identity, so the config server reuses its serialized form instead
 * of serializing 10,000 workloads on every change. A cache belongs to one trust domain and its
 * aliases (the controller's flags, fixed while it runs): a compile with another bundle takes a new
 * cache.
 */
export class CompileCache {
  workloads = new Map<string, WorkloadUnit>();
  /**
   * Each AuthorizationPolicy's compiled form, by the input object it was compiled from: an
   * unchanged policy whose targets did not change keeps its object, so the config server does not
   * serialize it again. Without it every full compile, whoever's change caused it, compiled and
   * serialized every policy again: a tenant's few policies of 20,000 rules (each within etcd's
   * 1.5 MiB) cost everyone's changes 0.5 s more. Their principals are expanded to the cache's
   * trust domains.
   */
  policies = new WeakMap<AuthorizationPolicyObject, AuthorizationPolicy>();
  /**
   * Each HTTPRoute's and GRPCRoute's matches, by the input object, and the Route compiled for each
   * parent Service with what it was compiled from: an unchanged route whose backends' grants and
   * parent did not change keeps its object, so the config server does not serialize it again.
   * Without it every full compile built and serialized every route again: a tenant's 200 routes of
   * 270 KB cost everyone's changes 1 s more.
   */
  routes = new WeakMap<HTTPRoute | GRPCRoute, { matches: RouteMatch[][]; byParent: Map<string, { key: string; route: Route }> }>();
  /** What the last full or incremental compilation knew (controller/src/compile-incremental.ts). */
  last: CompileState | undefined;
}

/** One pod's compiled workload: `base` without service memberships, `final` with them. */
export interface WorkloadUnit {
  pod: Pod;
  deps: string;
  base: Workload;
  final?: Workload;
  /** The pod's own labels name a waypoint that refuses its namespace (AttachmentDenied) or does not exist (WaypointNotFound). */
  finding?: CompileFinding;
}

/** One Service's compiled form and what it was compiled from. */
export interface ServiceUnit {
  service: Service;
  /** Workload uids among its endpoints. */
  members: string[];
  /** Workload uids and pod addresses its EndpointSlices looked up. */
  refs: string[];
  /** Its waypoint binding and where it comes from (its own labels or its namespace's), when it has one. */
  binding?: WaypointBinding;
}

/** What workloads and services are compiled against (the rest of the inputs, already compiled). */
export interface WorkloadEnv {
  namespaces: ReadonlyMap<string, Namespace>;
  nodeIps: ReadonlyMap<string, string>;
  peerAuths: readonly PeerAuthentication[];
  telemetries: readonly TelemetryObject[];
  rootNamespace: string;
  trustDomain: string;
  clusterDomain: string;
  clusterId: string;
  waypoints: ReadonlyMap<string, Waypoint>;
  /** The Waypoint objects by `namespace/name`: which namespaces each allows (spec.allowedNamespaces). */
  waypointObjects: ReadonlyMap<string, WaypointObject>;
  /** Cluster IP → key of the Service that holds it (vipOwnersOf), when Services claim one IP. */
  vipOwners: ReadonlyMap<string, string>;
  /**
   * Per namespace, the waypoint binding its own labels give (null: none), filled as asked: worked
   * out once per compile however many pods and Services inherit it (waypointBinding).
   */
  namespaceBindings: Map<string, WaypointBinding | null>;
}

/** Indexes over the base workloads that Services select from. */
export interface WorkloadIndex {
  /** Base workloads by uid. */
  byUid: Map<string, Workload>;
  /** Base workloads by each of their pod's addresses (podAddresses; the last pod listed wins, as in a full compile). */
  byIp: Map<string, Workload>;
  /**
   * Each indexed pod's addresses by its workload's uid (podAddresses, read once when it is
   * indexed): an EndpointSlice entry's targetRef is checked against them, where each entry
   * parsed its pod's status again (a URL parse per IPv6 address).
   */
  addresses: Map<string, readonly string[]>;
  /** How many workloads hold each address (an incremental compile steps aside on a shared one). */
  ipHolders: Map<string, number>;
  pods: Map<string, Pod>;
  /** Base workloads by `namespace\0label=value`, so a selector only looks at pods carrying one of its labels. */
  byLabel: Map<string, Workload[]>;
  slicesByService: Map<string, EndpointSlice[]>;
}

/** The state an incremental compilation continues from. */
export interface CompileState {
  /** The options that shaped it (a change of any means a full compile). */
  optionsKey: string;
  result: CompileResult;
  env: WorkloadEnv;
  waypointPodsKey: string;
  /** The Waypoints refused for a ServiceAccount other pods run as (sharedWaypointAccounts), as a string. */
  sharedAccountsKey: string;
  index: WorkloadIndex;
  /** Pod key (`Pod/ns/name`) → workload uid. */
  uidByPodKey: Map<string, string>;
  /** Workload uid → keys of the Services it is an endpoint of. */
  memberOf: Map<string, string[]>;
  services: Map<string, ServiceUnit>;
  /** Service objects by key, and the keys by namespace. */
  serviceObjects: Map<string, ServiceObject>;
  servicesByNamespace: Map<string, string[]>;
  /** Workload uid or pod address → Services whose EndpointSlices refer to it. */
  sliceRefs: Map<string, Set<string>>;
}

export interface CompileOptions {
  /** Reuse unchanged workload objects across compilations (the controller keeps one). */
  cache?: CompileCache;
  /** Default `cluster.local`. */
  trustDomain?: string;
  /**
   * The mesh's trust-domain aliases (`--trust-domain-alias`): an AuthorizationPolicy principal of
   * the trust domain, of an alias or of `cluster.local` is compiled as the same principal under
   * each of them (lib/policy/trust-domains.ts, Istio's trust-domain migration). Default none.
   */
  trustDomainAliases?: readonly string[];
  /** Default `cluster.local`. */
  clusterDomain?: string;
  /** Default `weft-system`. */
  rootNamespace?: string;
  /** Cluster ID in telemetry (`*_cluster` labels); default `Kubernetes`, Istio's default. */
  clusterId?: string;
  /** By `namespace/name`; overrides what the Waypoint's status says. */
  waypointRuntime?: ReadonlyMap<string, WaypointRuntime>;
  /** ServiceAccounts and images Waypoints may use (controller/src/waypoint-admission.ts). */
  waypointAllowList?: WaypointAllowList;
  /** Mesh-wide HTTP settings every waypoint gets (path normalization, trusted proxies). */
  meshHttp?: MeshHttpSettings;
  /**
   * Multi-cluster: `namespace/name` of the Services only other clusters have, imported by the
   * federation (controller/src/federation.ts) after this compile. A route's backendRef to one of
   * them resolves (the waypoint sends to that cluster's endpoints); default none.
   */
  importedServices?: ReadonlySet<string>;
  /**
   * What the controller fetched for each `jwksUri` (controller/src/jwks-resolver.ts), by URI; a
   * URI without keys here compiles to a JWKS that verifies nothing (unfetchedJwks) and is reported.
   */
  jwks?: ReadonlyMap<string, JwksState>;
}

/**
 * The URI a RequestAuthentication rule's keys are fetched from: its `jwksUri` when it has no inline
 * `jwks` (Istio uses inline keys when a rule has both: istiod fetches only for a rule without).
 */
export function fetchedJwksUri(rule: { jwks?: string; jwksUri?: string }): string | undefined {
  return rule.jwks === undefined ? rule.jwksUri : undefined;
}

/** Every URI the RequestAuthentications' rules fetch their keys from, with the namespace naming it (JwksResolver.want). */
export function jwksUrisOf(requestAuthentications: readonly RequestAuthenticationObject[]): Array<[uri: string, namespace: string]> {
  const out: Array<[string, string]> = [];
  for (const ra of requestAuthentications) {
    for (const r of ra.spec.jwtRules ?? []) {
      const uri = fetchedJwksUri(r);
      if (uri !== undefined) out.push([uri, ra.metadata.namespace!]);
    }
  }
  return out;
}

/** A problem found while compiling that belongs in an object's status. */
export interface CompileFinding {
  kind: string;
  namespace: string;
  name: string;
  path: string;
  reason: string;
  message: string;
  /** The object's apiVersion when not its kind's own (an Istio security.istio.io object), for its Event. */
  apiVersion?: string;
}

/** One Gateway API condition as the controller decided it. */
export interface RouteCondition {
  type: 'Accepted' | 'ResolvedRefs';
  status: boolean;
  reason: string;
  message: string;
}

/** Status of a route for one of its Service parents (status.parents[] in the Gateway API). */
export interface RouteParentResult {
  parentRef: ParentReference;
  conditions: RouteCondition[];
}

export interface CompileResult {
  model: MeshModel;
  findings: CompileFinding[];
  /**
   * By `Kind/namespace/name` of each HTTPRoute and GRPCRoute: one entry per Service parentRef
   * (parents of other kinds are other controllers' and get none).
   */
  routeParents: Map<string, RouteParentResult[]>;
}


/** Keys fetched from jwksUris that one namespace's RequestAuthentication rules may carry inlined (16 URIs of 64 KiB). */
export const MAX_FETCHED_JWKS_BYTES_PER_NAMESPACE = 1024 * 1024;

/**
 * Istio's security objects in Istio's default root namespace while Weft's is another: there Istio
 * applies a policy without selector or targetRefs to the whole mesh, Weft to that namespace alone
 * (its own root namespace is `rootNamespace`, `--root-namespace`). Said at metadata.namespace, so
 * a platform moving from Istio does not believe a mesh-wide policy in force that is not.
 */
function istioRootNamespaceFindings(inputs: MeshInputs, rootNamespace: string): CompileFinding[] {
  if (rootNamespace === ISTIO_ROOT_NAMESPACE) return [];
  const out: CompileFinding[] = [];
  for (const o of [...inputs.authorizationPolicies, ...inputs.peerAuthentications, ...inputs.requestAuthentications]) {
    if (o.metadata.namespace !== ISTIO_ROOT_NAMESPACE || groupOf(o.apiVersion) !== ISTIO_SECURITY_GROUP) continue;
    out.push({
      kind: o.kind, namespace: ISTIO_ROOT_NAMESPACE, name: o.metadata.name, path: 'metadata.namespace', reason: 'NotRootNamespace',
      message: `${ISTIO_ROOT_NAMESPACE} is Istio's root namespace, where a ${o.kind} without selector or targetRefs applies to the whole mesh; Weft's root namespace is ${rootNamespace} (--root-namespace), so here it applies to ${ISTIO_ROOT_NAMESPACE} alone`,
    });
  }
  return out;
}

/** `shared`: sharedWaypointAccounts(inputs), when the caller has read it already (compileChanges). */
export function compile(inputs: MeshInputs, options: CompileOptions = {}, shared: Map<string, WaypointRefusal> = sharedWaypointAccounts(inputs)): CompileResult {
  const trustDomain = options.trustDomain ?? DEFAULT_TRUST_DOMAIN;
  const clusterDomain = options.clusterDomain ?? DEFAULT_CLUSTER_DOMAIN;
  const rootNamespace = options.rootNamespace ?? DEFAULT_ROOT_NAMESPACE;
  const clusterId = options.clusterId ?? DEFAULT_CLUSTER_ID;
  const findings: CompileFinding[] = [];
  const model = emptyMeshModel();

  const namespaces = new Map(inputs.namespaces.map((n) => [n.metadata.name, n]));
  const nodeIps = nodeIpsOf(inputs);
  findings.push(...nodeAddressFindings(inputs.nodes));
  findings.push(...istioRootNamespaceFindings(inputs, rootNamespace));

  // Peer authentication first: workloads carry their resolved mode.
  // Istio: a selector without labels is no selector, so the policy is namespace-wide (mesh-wide in
  // the root namespace) and takes no port-level modes (pilot ambient
  // convertedSelectorPeerAuthentications; validation refuses portLevelMtls there).
  for (const pa of sortByAge(inputs.peerAuthentications)) {
    const ns = pa.metadata.namespace!;
    const paSpec = pa.spec ?? {};
    const labels = paSpec.selector?.matchLabels ?? {};
    const hasSelector = Object.keys(labels).length > 0;
    const mode = paSpec.mtls ? ambientMtlsMode(paSpec.mtls.mode) : undefined;
    const ports = hasSelector && paSpec.portLevelMtls
      ? Object.entries(paSpec.portLevelMtls).flatMap(([p, v]) => {
        const m = ambientMtlsMode(v.mode);
        return m ? [[p, m] as const] : [];
      })
      : [];
    const compiled: PeerAuthentication = {
      name: pa.metadata.name,
      namespace: ns,
      scope: hasSelector ? 'workload' : ns === rootNamespace ? 'mesh' : 'namespace',
      ...(hasSelector ? { selector: { ...labels } } : {}),
      ...(mode ? { mode } : {}),
      ...(ports.length > 0 ? { portLevelMtls: Object.fromEntries(ports) } : {}),
    };
    model.peerAuthentications.set(nsName(ns, pa.metadata.name), compiled);
  }
  const peerAuths = [...model.peerAuthentications.values()];
  // At the mesh and namespace levels only the oldest policy counts (resolveMtls): the others say so,
  // rather than look in force (a STRICT added beside an older PERMISSIVE changes nothing).
  const levelHolder = new Map<string, string>();
  for (const pa of peerAuths) {
    if (pa.scope === 'workload') continue;
    const holder = levelHolder.get(pa.namespace);
    if (holder === undefined) levelHolder.set(pa.namespace, pa.name);
    else findings.push({ kind: 'PeerAuthentication', namespace: pa.namespace, name: pa.name, path: 'spec', reason: 'Conflicted', message: `PeerAuthentication ${pa.namespace}/${holder} is older and decides ${pa.scope === 'mesh' ? 'the mesh-wide' : `namespace ${pa.namespace}'s`} mode (the oldest applies, as in Istio); this one is not in force` });
  }

  // Telemetry: resolved per workload and per waypoint, most specific object first; one outside the
  // root namespace naming an endpoint the mesh does not is refused (telemetry-admission.ts).
  const meshEndpoints = meshTelemetryEndpoints(inputs.telemetries, rootNamespace);
  const telemetries = sortByAge(inputs.telemetries).filter((t) => {
    const refusal = admitTelemetry(t, rootNamespace, meshEndpoints);
    if (refusal) findings.push({ kind: 'Telemetry', namespace: t.metadata.namespace!, name: t.metadata.name, ...refusal });
    return !refusal;
  });
  const telemetryFor = (namespace: string, labels: Record<string, string>): TelemetrySettings | undefined =>
    resolveTelemetry(telemetries, rootNamespace, namespace, labels);

  // Waypoints. Facts come from the reconciler when there is one; otherwise (a local mesh whose
  // runner starts waypoint processes itself) from a running pod labelled weft.dev/waypoint=<name>.
  const waypointPods = waypointPodsOf(inputs.pods);
  // Built at the first waypoint address checked (none without Waypoints): a parse per IPv6 address.
  let taken: { nodes: Set<string>; services: Set<string> } | undefined;
  const takenAddresses = () => (taken ??= {
    nodes: nodeAddressesOf(inputs),
    services: new Set(inputs.services.flatMap(forwardedAddresses)),
  });
  for (const wp of inputs.waypoints) {
    const ns = wp.metadata.namespace!;
    const key = nsName(ns, wp.metadata.name);
    const refusal = admitWaypoint(wp, options.waypointAllowList) ?? shared.get(key);
    if (refusal) {
      // Not trusted, so never ready: the Services that use it fail closed. Its identity names no
      // ServiceAccount, so no pod counts as this waypoint and no token obtains its certificate
      // (its own name may be the account at fault: `default`, or one other pods run as).
      findings.push({ kind: 'Waypoint', namespace: ns, name: wp.metadata.name, ...refusal });
      model.waypoints.set(key, { name: wp.metadata.name, namespace: ns, port: HBONE_PORT, spiffeId: refusedWaypointIdentity(trustDomain, ns), ready: false, reason: refusal.reason });
      continue;
    }
    const rt = waypointFacts(options.waypointRuntime?.get(key), waypointPods.get(key));
    const readyCond = wp.status?.conditions?.find((c) => c.type === 'Ready');
    // Validation refuses an address that is not an IP; should one get here, it is dropped, as every
    // agent would refuse the whole config holding it.
    // Where the east-west gateway and agents dial the waypoint (its HBONE port), in one spelling
    // (canonicalIp: `::ffff:<node IPv4>` is the node's address). A node's address is its agent's
    // HBONE port, which applies no gateway rule: the gateway dialling it for the waypoint would
    // carry a remote caller to any pod of that node; a cluster IP (an external or load-balancer IP
    // too) is DNATed by kube-proxy onto its Service's endpoints, which may be such a port (only the reconciler's own Service for this
    // waypoint is dialled so, until its pods are seen); no waypoint listens at an unspecified,
    // loopback, link-local or multicast address (isServiceAddress, as an import refuses them).
    // The reconciler's own Service is the one named after the Waypoint and made for it: its cluster
    // IP is the one the reconciler reports and writes to status.addresses, so a restarted controller
    // dials it before the reconciler reports again.
    const reconciledAt = options.waypointRuntime?.get(key)?.address;
    const isOwnClusterIp = (a: string): boolean => (reconciledAt !== undefined && a === canonicalIp(reconciledAt))
      || inputs.services.some((s) => s.metadata.namespace === ns && s.metadata.name === wp.metadata.name && madeForWaypoint(s, wp.metadata.name) && serviceVips(s).includes(a));
    const usable = (raw: string, path: string): string | undefined => {
      const a = canonicalIp(raw);
      const [reason, why] = a === undefined ? ['InvalidAddress', 'is not an IP address (an IPv6 zone names no peer\'s address)']
        : !isServiceAddress(a) ? ['InvalidAddress', 'is unspecified, loopback, link-local or multicast: no waypoint listens there']
        : takenAddresses().nodes.has(a) ? ['NodeAddress', 'is the address of a node (its agent\'s HBONE port), never a waypoint\'s']
        : takenAddresses().services.has(a) && !isOwnClusterIp(a) ? ['ServiceAddress', 'is a Service\'s cluster IP, external IP or load-balancer IP, which kube-proxy carries to that Service\'s endpoints, never a waypoint\'s own address']
        : [];
      if (!reason) return a;
      findings.push({ kind: 'Waypoint', namespace: ns, name: wp.metadata.name, path, reason, message: `${raw} ${why}; left out` });
      return undefined;
    };
    const statusAddresses: string[] = [];
    wp.status?.addresses?.forEach((a, i) => {
      const path = `status.addresses[${i}].value`;
      const ok = usable(a.value, path);
      if (ok !== undefined) statusAddresses.push(ok);
    });
    // The running pods labelled for it (or the reconciler's cluster IP).
    const rtAddresses = rt?.address !== undefined ? (rt.addresses ?? [rt.address]).flatMap((a) => usable(a, 'addresses') ?? []) : undefined;
    const address = rtAddresses ? rtAddresses[0] : statusAddresses[0];
    const addresses = rtAddresses ?? statusAddresses;
    const ready = rt ? rt.ready : readyCond?.status === 'True';
    const reason = rt ? rt.reason : readyCond?.status === 'True' ? undefined : (readyCond?.reason ?? 'NotReconciled');
    const compiled: Waypoint = {
      name: wp.metadata.name,
      namespace: ns,
      port: HBONE_PORT,
      spiffeId: spiffeIdOf(trustDomain, ns, wp.spec?.serviceAccountName ?? wp.metadata.name),
      ready: ready && address !== undefined,
      ...(address !== undefined ? { address } : {}),
      ...(address !== undefined && addresses && addresses.length > 1 ? { addresses } : {}),
      ...(ready && address !== undefined ? {} : { reason: reason ?? 'NoAddress' }),
      // The reconciler's Deployment is named after the Waypoint, its pods labelled app.kubernetes.io/name=<name>.
      workload: { workloadName: wp.metadata.name, namespace: ns, canonicalService: wp.metadata.name, canonicalRevision: 'latest', cluster: clusterId },
    };
    const wpTelemetry = telemetryFor(ns, { [LABEL_WAYPOINT_FOR]: wp.metadata.name, 'app.kubernetes.io/name': wp.metadata.name });
    if (wpTelemetry) compiled.telemetry = wpTelemetry;
    if (options.meshHttp && Object.keys(options.meshHttp).length > 0) compiled.http = options.meshHttp;
    model.waypoints.set(key, compiled);
  }

  // Workloads. `services` stays empty on these base objects; memberships are added at the end.
  const vipOwners = vipOwnersOf(inputs.services);
  const waypointObjects = new Map(inputs.waypoints.map((w) => [nsName(w.metadata.namespace!, w.metadata.name), w]));
  const env: WorkloadEnv = { namespaces, nodeIps, peerAuths, telemetries, rootNamespace, trustDomain, clusterDomain, clusterId, waypoints: model.waypoints, waypointObjects, vipOwners, namespaceBindings: new Map() };
  const nextCache: CompileCache['workloads'] = new Map();
  const index: WorkloadIndex = { byUid: new Map(), byIp: new Map(), addresses: new Map(), ipHolders: new Map(), pods: new Map(), byLabel: new Map(), slicesByService: new Map() };
  const uidByPodKey = new Map<string, string>();
  for (const pod of inputs.pods) {
    const unit = workloadOf(pod, env, options.cache?.workloads);
    if (!unit) continue;
    if (unit.finding) findings.push(unit.finding);
    nextCache.set(unit.base.uid, unit);
    uidByPodKey.set(podKey(pod), unit.base.uid);
    indexWorkload(index, unit.base, pod);
  }

  // Services and endpoints.
  for (const s of inputs.endpointSlices) {
    const key = sliceServiceKey(s);
    let list = index.slicesByService.get(key);
    if (!list) index.slicesByService.set(key, (list = []));
    list.push(s);
  }
  const memberOf = new Map<string, string[]>();
  const serviceUnits = new Map<string, ServiceUnit>();
  const serviceObjects = new Map<string, ServiceObject>();
  const servicesByNamespace = new Map<string, string[]>();
  const sliceRefs = new Map<string, Set<string>>();
  for (const svc of inputs.services) {
    if (svc.spec.type === 'ExternalName') continue;
    const key = nsName(svc.metadata.namespace!, svc.metadata.name);
    const unit = compileService(svc, env, index);
    serviceObjects.set(key, svc);
    let inNs = servicesByNamespace.get(svc.metadata.namespace!);
    if (!inNs) servicesByNamespace.set(svc.metadata.namespace!, (inNs = []));
    inNs.push(key);
    serviceUnits.set(key, unit);
    for (const uid of unit.members) {
      let list = memberOf.get(uid);
      if (!list) memberOf.set(uid, (list = []));
      if (!list.includes(key)) list.push(key);
    }
    for (const r of unit.refs) {
      let set = sliceRefs.get(r);
      if (!set) sliceRefs.set(r, (set = new Set()));
      set.add(key);
    }
    const finding = serviceFinding(svc, unit);
    if (finding) findings.push(finding);
    findings.push(...vipFindings(svc, key, vipOwners));
    model.services.set(key, unit.service);
  }
  findings.push(...namespaceFindings(env));
  for (const uid of nextCache.keys()) model.workloads.set(uid, finalWorkload(nextCache.get(uid)!, memberOf.get(uid)));
  if (options.cache) options.cache.workloads = nextCache;

  // Authorization policies. The Services of each waypoint of this cluster, sorted, read on the
  // first policy that targets a waypoint (not every Service again per such policy).
  let byWaypoint: Map<string, string[]> | undefined;
  const servicesByWaypoint = (): Map<string, string[]> => {
    if (!byWaypoint) {
      byWaypoint = new Map();
      for (const svc of model.services.values()) {
        const bound = boundWaypoint(svc.waypoint);
        if (!bound || bound.cluster !== undefined) continue;
        const wp = nsName(bound.namespace, bound.name);
        const list = byWaypoint.get(wp);
        if (list) list.push(nsName(svc.namespace, svc.name));
        else byWaypoint.set(wp, [nsName(svc.namespace, svc.name)]);
      }
      for (const list of byWaypoint.values()) list.sort();
    }
    return byWaypoint;
  };
  const servicesOfWaypoint = (waypoint: string): string[] => servicesByWaypoint().get(waypoint) ?? [];
  // The Services a policy attached by targetRefs applies at (AuthorizationPolicy and
  // RequestAuthentication alike), each target that attaches to nothing reported; undefined when it
  // names no target (a selector or namespace policy).
  const attach = (kind: 'AuthorizationPolicy' | 'RequestAuthentication', ns: string, name: string, refs: Array<{ ref: PolicyTargetRef; path: string }>): string[] | undefined => {
    if (refs.length === 0) return undefined;
    return [...new Set(refs.flatMap(({ ref, path }) => {
      const target = nsName(ns, ref.name);
      // Every waypoint of the mesh (Istio: a root-namespace policy targeting GatewayClass
      // istio-waypoint); elsewhere such a target attaches to nothing, as in Istio, and says so.
      if (ref.kind === 'GatewayClass') {
        if (ns !== rootNamespace) {
          findings.push({ kind, namespace: ns, name, path: `${path}.name`, reason: 'TargetNotFound', message: `a GatewayClass target applies only to a policy in the root namespace (${rootNamespace}); this policy applies nowhere` });
          return [];
        }
        return [...servicesByWaypoint().values()].flat().sort();
      }
      if (ref.kind === 'Service') {
        const svc = model.services.get(target);
        if (!svc) findings.push({ kind, namespace: ns, name, path: `${path}.name`, reason: 'TargetNotFound', message: `Service ${target} does not exist` });
        // Istio's WaypointAccepted reason AncestorNotBound: only a waypoint enforces such a policy.
        else if (!svc.waypoint) findings.push({ kind, namespace: ns, name, path: `${path}.name`, reason: 'AncestorNotBound', message: `Service ${target} is not bound to a waypoint (label weft.dev/use-waypoint on the Service or its namespace); a policy attached with targetRefs is enforced only by a waypoint, so nothing enforces it for this Service` });
        else if (svc.waypoint.refused !== undefined) findings.push({ kind, namespace: ns, name, path: `${path}.name`, reason: 'AncestorNotBound', message: `Service ${target} is not bound to a waypoint: ${waypointRefusalText(svc.waypoint, svc.namespace)}; its traffic fails closed` });
        return [target];
      }
      // The whole waypoint (Istio: a Gateway target, "all traffic enrolled to use it"): every
      // Service that uses it; none while it does not exist, never the namespace.
      if (!model.waypoints.has(target)) findings.push({ kind, namespace: ns, name, path: `${path}.name`, reason: 'TargetNotFound', message: `Waypoint ${target} does not exist` });
      return servicesOfWaypoint(target);
    }))];
  };
  // Principals are compiled for the mesh's trust domain and its aliases (Istio's trust-domain
  // bundle), the cache's (CompileCache).
  const trustDomains = [trustDomain, ...(options.trustDomainAliases ?? [])];
  for (const ap of inputs.authorizationPolicies) {
    const ns = ap.metadata.namespace!;
    const key = nsName(ns, ap.metadata.name);
    const apSpec = ap.spec ?? {};
    const cached = options.cache?.policies.get(ap);
    // A rule's `from: []` or `to: []` is refused by validation and the CRD (Istio
    // ValidateAuthorizationPolicy); one reaching here past them matches nothing, where its compiled
    // empty list would read as any source (operation) and turn an ALLOW into allow-all.
    const written = apSpec.rules ?? [];
    // Where each compiled rule was written (findings name it there).
    const writtenAt: number[] = [];
    for (const [i, r] of written.entries()) {
      const empty = emptyRuleList(r);
      if (empty) findings.push({ kind: 'AuthorizationPolicy', namespace: ns, name: ap.metadata.name, path: `spec.rules[${i}].${empty}`, reason: 'Invalid', message: `must not be an empty list (Istio refuses it): the rule matches nothing` });
      else writtenAt.push(i);
    }
    // Compiled rules depend on the rules, the namespace and the trust domains only (compileRule).
    const rules = cached?.rules ?? writtenAt.map((i) => compileRule(written[i]!, ns, trustDomains));
    const targets = attach('AuthorizationPolicy', ns, ap.metadata.name, policyTargets(apSpec));
    // Istio (pilot authz builder, testdata custom-bad-*): a CUSTOM policy whose provider is not
    // among the mesh's extensionProviders is a DENY of what its rules match. Weft has none.
    if (apSpec.action === 'CUSTOM') findings.push({ kind: 'AuthorizationPolicy', namespace: ns, name: ap.metadata.name, path: 'spec.provider.name', reason: 'UnsupportedValue', message: `Weft has no extension authorization provider ${JSON.stringify(apSpec.provider?.name ?? '')} (Istio's MeshConfig extensionProviders); as Istio does with a CUSTOM policy whose provider it cannot find, this policy denies the requests its rules match` });
    const action = apSpec.action === 'CUSTOM' ? 'DENY' : apSpec.action ?? 'ALLOW';
    // Istio's istio.io/dry-run (validation refused a value it does not read, and the annotation
    // on AUDIT): judged in shadow by agents and waypoints, never enforced. Sent as AUDIT naming the
    // action it shadows, so a data plane older than `dryRun` logs its matches and enforces nothing.
    const dryRun = action !== 'AUDIT' && dryRunAnnotated(ap) ? action : undefined;
    const fresh: AuthorizationPolicy = {
      name: ap.metadata.name,
      namespace: ns,
      action: dryRun ? 'AUDIT' : action,
      // Istio: a root-namespace policy applies in every namespace, with a selector to the matching
      // workloads of every namespace.
      scope: targets ? 'service' : ns === rootNamespace ? 'mesh' : apSpec.selector ? 'workload' : 'namespace',
      ...(apSpec.selector && !targets ? { selector: { ...apSpec.selector.matchLabels } } : {}),
      ...(targets ? { targetServices: targets } : {}),
      rules,
      layer: rules.some((r) => r.layer === 'L7') ? 'L7' : 'L4',
      ...(dryRun ? { dryRun } : {}),
    };
    const compiled = cached && samePolicy(cached, fresh) ? cached : fresh;
    options.cache?.policies.set(ap, compiled);
    model.policies.set(key, compiled);
    // Enforced by agents, which see no HTTP (Istio's ztunnel reports the same, UnsupportedValue):
    // an ALLOW rule with L7 attributes never matches there; a DENY rule denies by its L4 parts.
    if (!targets) {
      const first = rules.findIndex((r) => r.layer === 'L7');
      const found = [...new Set(rules.filter((r) => r.layer === 'L7').flatMap(ruleL7Attributes))].sort();
      if (first >= 0) findings.push({ kind: 'AuthorizationPolicy', namespace: ns, name: ap.metadata.name, path: `spec.rules[${writtenAt[first]}]`, reason: 'UnsupportedValue', message: `agents enforce a policy without targetRefs and see no HTTP (found: ${found.join(', ')}): ${compiled.dryRun ? `in dry run (${ANNOTATION_DRY_RUN}) it is judged in shadow without them, as it would be enforced: ` : ''}${action === 'DENY' ? 'this DENY is enforced without its HTTP attributes, which denies more than written' : action === 'ALLOW' ? 'its rules with HTTP attributes never match, which allows less than written' : 'its rules are judged without their HTTP attributes'}; to judge HTTP, attach it to a waypoint with targetRefs (a waypoint applies only such policies, as in Istio)` });
    }
  }

  // Request authentications: the JWT rules a waypoint applies to the Services they target
  // (validation requires targetRefs: only a waypoint sees a request's token). Fetched keys are
  // inlined into each rule naming their URI, so a namespace's rules carry at most
  // MAX_FETCHED_JWKS_BYTES_PER_NAMESPACE of them: one 64 KiB document named by thousands of rules
  // made a config body of hundreds of MB (and past V8's string limit, a compile that threw).
  const inlinedJwks = new Map<string, number>();
  for (const ra of inputs.requestAuthentications) {
    const ns = ra.metadata.namespace!;
    const targets = attach('RequestAuthentication', ns, ra.metadata.name, policyTargets(ra.spec)) ?? [];
    // A jwksUri's keys as fetched; until a fetch succeeds (or past the controller's bound), a JWKS
    // that verifies nothing, as istiod's fake JWKS: the issuer's tokens are refused, the rest pass.
    const keysOf = (r: NonNullable<typeof ra.spec.jwtRules>[number], i: number): string => {
      const uri = fetchedJwksUri(r);
      if (uri === undefined) return r.jwks ?? '';
      // Without options.jwks nothing was fetched for anyone (weftctl analyze compiles objects
      // offline): the rule verifies nothing, and that is no finding of the object's.
      if (!options.jwks) return unfetchedJwks(uri);
      const state = options.jwks.get(uri);
      if (state?.jwks !== undefined) {
        const used = (inlinedJwks.get(ns) ?? 0) + state.jwks.length;
        if (used <= MAX_FETCHED_JWKS_BYTES_PER_NAMESPACE) {
          inlinedJwks.set(ns, used);
          return state.jwks;
        }
        findings.push({
          kind: 'RequestAuthentication', namespace: ns, name: ra.metadata.name, path: `spec.jwtRules[${i}].jwksUri`, reason: 'JwksBudgetExceeded',
          message: `the keys fetched from ${uri} would take namespace ${ns}'s rules past ${MAX_FETCHED_JWKS_BYTES_PER_NAMESPACE} bytes of inlined keys (each rule naming a jwksUri carries its keys); tokens of issuer ${r.issuer} are refused (401) under this rule, requests without a token pass`,
        });
        return unfetchedJwks(uri);
      }
      const why = state === undefined ? 'the controller holds no keys for it' : state.error !== undefined ? `the last fetch failed: ${state.result !== undefined ? JWKS_RESULT_TEXT[state.result] : 'see the controller\'s log'}` : 'the first fetch is under way';
      findings.push({
        kind: 'RequestAuthentication', namespace: ns, name: ra.metadata.name, path: `spec.jwtRules[${i}].jwksUri`,
        reason: state !== undefined && state.error === undefined ? 'JwksPending' : 'JwksFetchFailed',
        message: `no keys fetched from ${uri}: ${why}; tokens of issuer ${r.issuer} are refused (401) until a fetch succeeds, requests without a token pass`,
      });
      return unfetchedJwks(uri);
    };
    model.requestAuthentications.set(nsName(ns, ra.metadata.name), {
      name: ra.metadata.name, namespace: ns, targetServices: targets,
      jwtRules: (ra.spec.jwtRules ?? []).map((r, i) => clean({
        issuer: r.issuer,
        audiences: nonEmpty(r.audiences),
        jwks: keysOf(r, i),
        fromHeaders: nonEmpty(r.fromHeaders?.map((h) => clean({ name: h.name, prefix: h.prefix }))),
        fromParams: nonEmpty(r.fromParams),
        fromCookies: nonEmpty(r.fromCookies),
        forwardOriginalToken: r.forwardOriginalToken || undefined,
        outputPayloadToHeader: r.outputPayloadToHeader,
        outputClaimToHeaders: nonEmpty(r.outputClaimToHeaders?.map((h) => ({ header: h.header, claim: h.claim }))),
        spaceDelimitedClaims: nonEmpty(r.spaceDelimitedClaims),
      })),
    } satisfies RequestAuthentication);
  }

  // Traffic policies: one per service; with several, the oldest wins (Gateway API policy
  // attachment) and the others are reported Conflicted.
  const trafficPolicyOf = new Map<string, string>();
  for (const tp of sortByAge(inputs.trafficPolicies)) {
    const ns = tp.metadata.namespace!;
    const svcKey = nsName(ns, tp.spec.targetRef.name);
    const winner = trafficPolicyOf.get(svcKey);
    if (winner) {
      findings.push({ kind: 'TrafficPolicy', namespace: ns, name: tp.metadata.name, path: 'spec.targetRef', reason: 'Conflicted', message: `Service ${svcKey} already has TrafficPolicy ${winner} (the oldest one applies)` });
      continue;
    }
    trafficPolicyOf.set(svcKey, nsName(ns, tp.metadata.name));
    if (!model.services.has(svcKey) && !options.importedServices?.has(svcKey)) findings.push({ kind: 'TrafficPolicy', namespace: ns, name: tp.metadata.name, path: 'spec.targetRef.name', reason: 'TargetNotFound', message: `Service ${svcKey} does not exist` });
    model.trafficPolicies.set(nsName(ns, tp.metadata.name), compileTrafficPolicy(tp, svcKey));
  }

  // Routes.
  const grants = new ReferenceGrants(inputs.referenceGrants);
  const routeParents = new Map<string, RouteParentResult[]>();
  const grpcParents = grpcParentsOf(inputs.grpcRoutes, model);
  for (const r of [...inputs.httpRoutes, ...inputs.grpcRoutes]) {
    routeParents.set(`${r.kind}/${r.metadata.namespace}/${r.metadata.name}`, compileRoute(r, model, clusterDomain, grants, options.importedServices, findings, grpcParents, options.cache));
  }

  const result = { model, findings, routeParents };
  if (options.cache) {
    options.cache.last = {
      optionsKey: optionsKeyOf(options),
      result,
      env,
      waypointPodsKey: JSON.stringify([...waypointPods]),
      sharedAccountsKey: JSON.stringify([...shared]),
      index,
      uidByPodKey,
      memberOf,
      services: serviceUnits,
      serviceObjects,
      servicesByNamespace,
      sliceRefs,
    };
  }
  return result;
}

/** The options that shape a compilation, as a string: equal strings, equal compilations of equal inputs. */
export function optionsKeyOf(options: CompileOptions): string {
  return JSON.stringify([
    options.trustDomain, options.trustDomainAliases ?? [], options.clusterDomain, options.rootNamespace, options.clusterId,
    options.waypointRuntime ? [...options.waypointRuntime] : null, options.waypointAllowList ?? null,
    options.importedServices ? [...options.importedServices].sort() : null,
    options.jwks ? [...options.jwks].map(([uri, s]) => [uri, s.version]) : null,
  ]);
}

/** The identity of a refused Waypoint: in its namespace, of no ServiceAccount (no pod and no token has it). */
export function refusedWaypointIdentity(trustDomain: string, namespace: string): string {
  return spiffeIdOf(trustDomain, namespace, '');
}

/**
 * By `namespace/name`: the Waypoints whose ServiceAccount (spec.serviceAccountName, else their
 * name) other pods of their namespace run as (controller/src/waypoint-admission.ts
 * waypointAccountShared). Every pod that may hold a token counts (not a finished or deleted one),
 * an enrolled workload or not; a Waypoint's own replicas do not.
 */
export function sharedWaypointAccounts(inputs: Pick<MeshInputs, 'pods' | 'waypoints'>): Map<string, WaypointRefusal> {
  const out = new Map<string, WaypointRefusal>();
  if (inputs.waypoints.length === 0) return out;
  // The Waypoints on each account of each namespace: their replicas are never one another's sharers.
  const namesByAccount = new Map<string, Set<string>>();
  for (const w of inputs.waypoints) {
    const key = `${w.metadata.namespace}\0${waypointServiceAccount(w)}`;
    const names = namesByAccount.get(key) ?? new Set<string>();
    names.add(w.metadata.name);
    namesByAccount.set(key, names);
  }
  const users: Array<{ namespace: string; serviceAccount: string; name: string; waypointFor: string | undefined }> = [];
  for (const pod of inputs.pods) {
    if (pod.metadata.deletionTimestamp || pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed') continue;
    const sa = pod.spec.serviceAccountName ?? 'default';
    if (!namesByAccount.has(`${pod.metadata.namespace}\0${sa}`)) continue;
    users.push({ namespace: pod.metadata.namespace!, serviceAccount: sa, name: pod.metadata.name, waypointFor: pod.metadata.labels?.[LABEL_WAYPOINT_FOR] });
  }
  if (users.length === 0) return out;
  users.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const wp of inputs.waypoints) {
    const account = `${wp.metadata.namespace}\0${waypointServiceAccount(wp)}`;
    const refusal = waypointAccountShared(wp, users, namesByAccount.get(account));
    if (refusal) out.set(nsName(wp.metadata.namespace!, wp.metadata.name), refusal);
  }
  return out;
}

/**
 * Node addresses: a Node object's InternalIP (else ExternalIP), in canonicalIp's spelling (as every
 * agent's config check requires; validation takes a Node's addresses in any), else the hostIP of
 * the first pod listed on it (asValidated).
 */
export function nodeIpsOf(inputs: Pick<MeshInputs, 'pods' | 'nodes'>): Map<string, string> {
  const nodeIps = new Map<string, string>();
  for (const pod of inputs.pods) {
    const node = pod.spec.nodeName;
    const at = node && pod.status?.hostIP && !nodeIps.has(node) ? asValidated(pod.status.hostIP) : undefined;
    if (at !== undefined) nodeIps.set(node!, at);
  }
  for (const n of inputs.nodes) {
    const addr = nodeAddressOf(n);
    const at = addr !== undefined ? canonicalIp(addr) : undefined;
    if (at !== undefined) nodeIps.set(n.metadata.name, at);
  }
  return nodeIps;
}

/** Every address of a node: each IP a Node object lists, each pod's hostIP (nodeIpsOf's are among them). */
function nodeAddressesOf(inputs: Pick<MeshInputs, 'pods' | 'nodes'>): Set<string> {
  return new Set([
    ...inputs.nodes.flatMap((n) => (n.status?.addresses ?? []).flatMap((a) => canonicalIp(a.address) ?? [])),
    ...inputs.pods.flatMap((p) => (p.status?.hostIP ? (asValidated(p.status.hostIP) ?? []) : [])),
  ]);
}

/** Where agents tunnel to on a node: the index of its InternalIP, else of its ExternalIP (Hostname and DNS addresses are names), or -1. */
function nodeAddressIndex(n: Node): number {
  const addrs = n.status?.addresses ?? [];
  const internal = addrs.findIndex((a) => a.type === 'InternalIP');
  return internal >= 0 ? internal : addrs.findIndex((a) => a.type === 'ExternalIP');
}

function nodeAddressOf(n: Node): string | undefined {
  return n.status?.addresses?.[nodeAddressIndex(n)]?.address;
}

/** A Node whose address (nodeAddressOf) is not an IP: left out of nodeIpsOf, as every agent would refuse the whole config holding it. */
function nodeAddressFindings(nodes: readonly Node[]): CompileFinding[] {
  const out: CompileFinding[] = [];
  for (const n of nodes) {
    const i = nodeAddressIndex(n);
    const addr = n.status?.addresses?.[i]?.address;
    if (addr !== undefined && canonicalIp(addr) === undefined) out.push({ kind: 'Node', namespace: '', name: n.metadata.name, path: `status.addresses[${i}].address`, reason: 'InvalidAddress', message: `"${addr}" is not an IP address; the node's pods' hostIP is used instead` });
  }
  return out;
}

/**
 * A waypoint's facts: the reconciler's (Kubernetes: ready replicas, the Service's cluster IP), with
 * the addresses of its running pods in place of the cluster IP once there are some. Agents dial a
 * pod, as ztunnel does (kube-proxy would SNAT a node's connection to a cluster IP, and the waypoint
 * could not check its `for=` against the caller's node), and a destination agent knows the
 * waypoint's tunnels by their source, which is a pod address, never the cluster IP. Without a
 * reconciler (a local mesh), the pods alone.
 */
export function waypointFacts(reconciled: WaypointRuntime | undefined, pods: WaypointRuntime | undefined): WaypointRuntime | undefined {
  if (!reconciled) return pods;
  if (!reconciled.ready || !pods?.ready || pods.address === undefined) return reconciled;
  return { ...reconciled, address: pods.address, ...(pods.addresses ? { addresses: pods.addresses } : {}) };
}

/** Waypoint facts from running pods labelled weft.dev/waypoint=<name> (a local mesh without a reconciler). */
export function waypointPodsOf(pods: readonly Pod[]): Map<string, WaypointRuntime> {
  const waypointPods = new Map<string, WaypointRuntime>();
  for (const pod of pods) {
    const name = pod.metadata.labels?.[LABEL_WAYPOINT_FOR];
    const ip = pod.status?.podIP ?? pod.status?.podIPs?.[0]?.ip;
    if (!name || pod.metadata.deletionTimestamp) continue;
    const key = nsName(pod.metadata.namespace!, name);
    const running = pod.status?.phase === 'Running' && !!ip;
    const seen = waypointPods.get(key);
    if (running) {
      // Replicas: every running pod's address, sorted so that compilations agree.
      const addresses = [...(seen?.addresses ?? []), ip].sort();
      waypointPods.set(key, { address: addresses[0]!, addresses, ready: true });
    } else if (!seen) waypointPods.set(key, { ready: false, reason: 'PodNotRunning' });
  }
  return waypointPods;
}

export function podKey(pod: Pod): string {
  return `Pod/${pod.metadata.namespace}/${pod.metadata.name}`;
}

export function sliceServiceKey(s: EndpointSlice): string {
  return nsName(s.metadata.namespace!, s.metadata.labels?.[LABEL_SERVICE_NAME] ?? '');
}

/**
 * A pod's workload (without service memberships), or undefined for a pod the mesh does not list.
 * `cache` holds the previous compilation's units: an unchanged pod with unchanged inputs keeps its
 * object, so the config server reuses its serialized form.
 */
export function workloadOf(pod: Pod, env: WorkloadEnv, cache: ReadonlyMap<string, WorkloadUnit> | undefined): WorkloadUnit | undefined {
  if (pod.metadata.deletionTimestamp) return undefined;
  const phase = pod.status?.phase;
  if (phase === 'Succeeded' || phase === 'Failed') return undefined;
  // A scheduled pod without an address yet is published too (ip ''): its node's agent must know
  // whether it is ambient when the CNI plugin asks to enrol it, before the kubelet records the
  // address the network plugin gave it.
  const ip = pod.status?.podIP ?? pod.status?.podIPs?.[0]?.ip ?? '';
  if ((!ip && !pod.spec.nodeName) || pod.spec.hostNetwork) return undefined;
  const { trustDomain, clusterId } = env;
  const ns = pod.metadata.namespace!;
  const labels = { ...pod.metadata.labels };
  const nsObj = env.namespaces.get(ns);
  const mode = labels[LABEL_DATAPLANE_MODE] ?? nsObj?.metadata.labels?.[LABEL_DATAPLANE_MODE];
  const sa = pod.spec.serviceAccountName ?? 'default';
  const node = pod.spec.nodeName ?? '';
  const nodeIp = env.nodeIps.get(node) ?? pod.status?.hostIP;
  const { mode: mtls, portModes } = resolveMtls(env.peerAuths, { namespace: ns, labels });
  const binding = waypointBinding(labels, ns, env);
  const nsWaypoint = binding?.ref;
  // The pod's own labels are its findings' (one inherited is its Namespace's): whether the Waypoint
  // they name exists is part of its key, so the unit (and its finding) follows the Waypoint's coming.
  const own = binding?.use.labelledOn === 'object' ? binding : undefined;
  const uid = pod.metadata.uid ?? nsName(ns, pod.metadata.name);
  const telemetry = resolveTelemetry(env.telemetries, env.rootNamespace, ns, labels);
  const telemetryKey = telemetry ? JSON.stringify(telemetry) : '';
  const deps = `${mode}|${mtls}|${portModes ? JSON.stringify(portModes) : ''}|${nodeIp ?? ''}|${nsWaypoint ? JSON.stringify(nsWaypoint) : ''}${own?.notFound ? '!' : ''}|${binding?.refusal ?? ''}|${trustDomain}|${clusterId}|${telemetryKey}`;
  const cached = cache?.get(uid);
  if (cached && cached.pod === pod && cached.deps === deps) return cached;
  const w: Workload = {
    uid,
    name: pod.metadata.name,
    ...workloadMetaOf(pod, clusterId),
    namespace: ns,
    node,
    ...(nodeIp ? { nodeIp } : {}),
    ip,
    serviceAccount: sa,
    spiffeId: spiffeIdOf(trustDomain, ns, sa),
    labels,
    enrolled: mode === 'ambient',
    mode: mtls,
    ...(portModes ? { portModes } : {}),
    ...(nsWaypoint ? { waypoint: nsWaypoint } : {}),
    services: [],
    ...(telemetry ? { telemetry } : {}),
  };
  const at = { kind: 'Pod', namespace: ns, name: pod.metadata.name };
  const finding = own?.refusal !== undefined
    ? { ...at, path: bindingLabelPath(own.use, ns), reason: 'AttachmentDenied', message: `${own.refusal}: the waypoint does not take traffic addressed to this pod, which fails closed until the Waypoint allows the namespace or the label changes` }
    : own?.notFound ? { ...at, path: `metadata.labels["${LABEL_USE_WAYPOINT}"]`, reason: 'WaypointNotFound', message: `Waypoint ${own.ref.namespace}/${own.ref.name} does not exist; traffic addressed to this pod fails closed until it does` }
    : undefined;
  return { pod, deps, base: w, ...(finding ? { finding } : {}) };
}

/** Adds a base workload to the indexes Services select from. */
export function indexWorkload(index: WorkloadIndex, w: Workload, pod: Pod): void {
  index.byUid.set(w.uid, w);
  index.pods.set(w.uid, pod);
  const addresses = podAddresses(pod);
  index.addresses.set(w.uid, addresses);
  for (const ip of addresses) {
    index.byIp.set(ip, w);
    index.ipHolders.set(ip, (index.ipHolders.get(ip) ?? 0) + 1);
  }
  for (const [k, v] of Object.entries(w.labels)) {
    const key = `${w.namespace}\0${k}=${v}`;
    let list = index.byLabel.get(key);
    if (!list) index.byLabel.set(key, (list = []));
    list.push(w);
  }
}

/** Removes a base workload from the indexes (the inverse of indexWorkload). */
export function unindexWorkload(index: WorkloadIndex, w: Workload): void {
  const addresses = index.addresses.get(w.uid) ?? [];
  index.byUid.delete(w.uid);
  index.pods.delete(w.uid);
  index.addresses.delete(w.uid);
  for (const ip of addresses) {
    if (index.byIp.get(ip) === w) index.byIp.delete(ip);
    const n = (index.ipHolders.get(ip) ?? 1) - 1;
    if (n > 0) index.ipHolders.set(ip, n);
    else index.ipHolders.delete(ip);
  }
  for (const [k, v] of Object.entries(w.labels)) {
    const key = `${w.namespace}\0${k}=${v}`;
    const list = index.byLabel.get(key);
    if (!list) continue;
    const rest = list.filter((x) => x !== w);
    if (rest.length > 0) index.byLabel.set(key, rest);
    else index.byLabel.delete(key);
  }
}

function selectWorkloads(index: WorkloadIndex, namespace: string, selector: Record<string, string>): Workload[] {
  let smallest: Workload[] | undefined;
  for (const [k, v] of Object.entries(selector)) {
    const list = index.byLabel.get(`${namespace}\0${k}=${v}`) ?? [];
    if (!smallest || list.length < smallest.length) smallest = list;
  }
  return (smallest ?? []).filter((w) => labelsMatch(selector, w.labels));
}

/** A Service with its endpoints: from its EndpointSlices when it has some, else from its selector. */
export function compileService(svc: ServiceObject, env: WorkloadEnv, index: WorkloadIndex): ServiceUnit {
  const ns = svc.metadata.namespace!;
  const key = nsName(ns, svc.metadata.name);
  const ports: ServicePort[] = (svc.spec.ports ?? []).map((p) => ({
    name: p.name ?? '',
    port: p.port,
    targetPort: p.targetPort ?? p.port,
    protocol: p.protocol ?? 'TCP',
    appProtocol: appProtocolOf(p.appProtocol, p.name),
  }));
  const vips = serviceVips(svc).filter((ip) => (env.vipOwners.get(ip) ?? key) === key);
  const endpoints: Endpoint[] = [];
  const refs: string[] = [];
  // The endpoints of a Service nearly always map its ports the same way, so they share one record
  // of each mapping (nothing changes a compiled record). A record's keys are port numbers, which V8
  // keeps as array indices: {"80": …} holds an 81-slot array (1.2 KB), {"443": …} a 444-slot one,
  // and one record per endpoint was 10.6 MB of the controller's heap at 10,000 endpoints.
  const portRecords: Array<Record<string, number>> = [];
  const sharedPorts = (r: Record<string, number>): Record<string, number> => {
    const keys = Object.keys(r);
    for (const q of portRecords) {
      const qk = Object.keys(q);
      if (qk.length === keys.length && qk.every((k, i) => k === keys[i] && q[k] === r[k])) return q;
    }
    portRecords.push(r);
    return r;
  };
  const slices = index.slicesByService.get(key);
  if (slices && slices.length > 0) {
    for (const slice of slices) {
      if (slice.addressType === 'FQDN') continue;
      for (const ep of slice.endpoints) {
        for (const ip of ep.addresses) {
          if (ep.targetRef?.uid) refs.push(ep.targetRef.uid);
          // An address a pod holds is one (byIp's keys are); else as validation holds it (asValidated).
          const at = index.byIp.has(ip) ? ip : asValidated(ip);
          refs.push(ip);
          if (at === undefined) continue;
          // The pod holding the address: targetRef picks among pods sharing one (host network) only
          // when its pod holds it. A slice is any tenant's to write, and an entry naming a victim's
          // address with the writer's own pod would carry the writer's identity and namespace
          // (exportedPodsOf' same-namespace check, Endpoint.waypoint) for the victim's address.
          const named = ep.targetRef?.uid ? index.byUid.get(ep.targetRef.uid) : undefined;
          const w = named && index.addresses.get(named.uid)?.includes(at) ? named : index.byIp.get(at);
          const epPorts: Record<string, number> = {};
          for (const sp of ports) {
            const match = slice.ports?.find((p) => (p.name ?? '') === sp.name) ?? (slice.ports?.length === 1 ? slice.ports[0] : undefined);
            const target = match?.port ?? (typeof sp.targetPort === 'number' ? sp.targetPort : undefined);
            if (target !== undefined) epPorts[String(sp.port)] = target;
          }
          endpoints.push(endpointOf(w, at, ep.nodeName ?? w?.node ?? '', env.nodeIps, sharedPorts(epPorts), ports, ep.conditions?.ready !== false, ns));
        }
      }
    }
  } else if (svc.spec.selector && Object.keys(svc.spec.selector).length > 0) {
    for (const w of selectWorkloads(index, ns, svc.spec.selector)) {
      const pod = index.pods.get(w.uid)!;
      const epPorts: Record<string, number> = {};
      for (const sp of ports) {
        const target = typeof sp.targetPort === 'number' ? sp.targetPort : namedPort(pod, sp.targetPort);
        if (target !== undefined) epPorts[String(sp.port)] = target;
      }
      const ready = pod.status?.conditions ? pod.status.conditions.some((c) => c.type === 'Ready' && c.status === 'True') : pod.status?.phase !== 'Pending';
      endpoints.push(endpointOf(w, w.ip, w.node, env.nodeIps, sharedPorts(epPorts), ports, ready, ns));
    }
  }
  const members: string[] = [];
  for (const e of endpoints) if (e.workloadUid && index.byUid.has(e.workloadUid) && !members.includes(e.workloadUid)) members.push(e.workloadUid);
  // By address, then workload: the same order however the workloads were listed.
  endpoints.sort((a, b) => (a.ip < b.ip ? -1 : a.ip > b.ip ? 1 : a.workloadUid < b.workloadUid ? -1 : a.workloadUid > b.workloadUid ? 1 : 0));
  const binding = waypointBinding(svc.metadata.labels, ns, env);
  const waypoint = binding?.ref;
  return {
    service: {
      name: svc.metadata.name,
      namespace: ns,
      hostname: `${svc.metadata.name}.${ns}.svc.${env.clusterDomain}`,
      vips,
      ports,
      endpoints,
      ...(waypoint ? { waypoint } : {}),
    },
    members,
    refs,
    ...(binding ? { binding } : {}),
  };
}

/** Every address of a pod (status.podIP, each of status.podIPs: a dual-stack pod's IPv6 one too), as validated (asValidated). */
export function podAddresses(pod: Pod | undefined): string[] {
  const raw = [pod?.status?.podIP, ...(pod?.status?.podIPs ?? []).map((a) => a.ip)];
  return [...new Set(raw.flatMap((ip) => (ip ? (asValidated(ip) ?? []) : [])))];
}

/**
 * An address of a field validation holds to its one spelling (ipProblem: a pod's addresses and
 * hostIP, a Service's cluster IPs, an EndpointSlice's addresses), as written: the compile compares
 * it as a string and never re-spells it. None for one that got here past validation (a compile
 * handed it directly), as every agent would refuse the whole config holding it. Fields validation
 * takes in any spelling (a Node's addresses, a Service's external and load-balancer IPs) are read
 * through canonicalIp instead.
 */
function asValidated(ip: string): string | undefined {
  return ipProblem(ip) === undefined ? ip : undefined;
}

/** A Service's cluster IPs as its object states them. */
function serviceVips(svc: ServiceObject): string[] {
  return [...new Set([...(svc.spec.clusterIPs ?? []), ...(svc.spec.clusterIP ? [svc.spec.clusterIP] : [])])].filter((ip) => ip !== 'None' && asValidated(ip) !== undefined);
}

/**
 * Every address kube-proxy carries to a Service's endpoints: its cluster IPs, spec.externalIPs and
 * status.loadBalancer.ingress[].ip (any Service writer may set an external IP: CVE-2020-8554), the
 * last two in canonicalIp's spelling (validation takes them in any).
 */
function forwardedAddresses(svc: ServiceObject): string[] {
  // Read as given: a source without the API server's schema (a config directory) may hold anything
  // there, and one Service must not fail every compile.
  const external: unknown = svc.spec.externalIPs;
  const ingress: unknown = svc.status?.loadBalancer?.ingress;
  const written = [
    ...(Array.isArray(external) ? external.filter((a): a is string => typeof a === 'string') : []),
    ...(Array.isArray(ingress) ? ingress.flatMap((i: unknown) => (typeof (i as { ip?: unknown } | null)?.ip === 'string' ? [(i as { ip: string }).ip] : [])) : []),
  ];
  return [...serviceVips(svc), ...written.flatMap((a) => canonicalIp(a) ?? [])];
}

/**
 * Cluster IPs that more than one Service claims (the API server allocates them uniquely; a config
 * directory or another source need not), each with the Service that keeps it: the oldest, by
 * creationTimestamp then namespace/name, as for TrafficPolicies. Agents index Services by VIP, so
 * two holders would hand one Service's traffic to the other's endpoints.
 */
function vipOwnersOf(services: readonly ServiceObject[]): Map<string, string> {
  const owners = new Map<string, string>();
  const claimed = new Set<string>();
  for (const svc of sortByAge(services.filter((s) => s.spec.type !== 'ExternalName'))) {
    const key = nsName(svc.metadata.namespace!, svc.metadata.name);
    for (const ip of serviceVips(svc)) {
      if (!owners.has(ip)) owners.set(ip, key);
      else if (owners.get(ip) !== key) claimed.add(ip);
    }
  }
  for (const ip of [...owners.keys()]) if (!claimed.has(ip)) owners.delete(ip);
  return owners;
}

/** A Service's findings for the cluster IPs an older Service holds (Conflicted; it keeps the rest). */
function vipFindings(svc: ServiceObject, key: string, vipOwners: ReadonlyMap<string, string>): CompileFinding[] {
  const out: CompileFinding[] = [];
  for (const ip of serviceVips(svc)) {
    const owner = vipOwners.get(ip);
    if (owner === undefined || owner === key) continue;
    const i = svc.spec.clusterIPs?.indexOf(ip) ?? -1;
    const path = svc.spec.clusterIP === ip || i < 0 ? 'spec.clusterIP' : `spec.clusterIPs[${i}]`;
    out.push({ kind: 'Service', namespace: svc.metadata.namespace!, name: svc.metadata.name, path, reason: 'Conflicted', message: `cluster IP ${ip} is already Service ${owner}'s (the oldest keeps it); this Service is not reachable at it` });
  }
  return out;
}

/**
 * The waypoint an object (its own labels `own`) of namespace `ns` uses (useWaypointOf), and
 * whether it may: a Waypoint must allow the object's namespace (spec.allowedNamespaces, default
 * Same), as Istio's waypoint Gateway must by its listener's allowedRoutes (pilot ambient
 * fetchWaypointForTarget, AttachmentDenied). A refused binding keeps the waypoint's name with the
 * refusal (WaypointRef.refused): Istio then treats the object as using no waypoint, which would
 * send its traffic around the L7 policy its owner attached for a waypoint to apply; Weft fails it
 * closed, as it does for a waypoint that does not exist. A Waypoint that does not exist is named
 * as it is (WaypointNotFound).
 */
export function waypointBinding(own: Readonly<Record<string, string>> | undefined, ns: string, env: Pick<WorkloadEnv, 'namespaces' | 'waypointObjects'> & Partial<Pick<WorkloadEnv, 'namespaceBindings'>>): WaypointBinding | undefined {
  // Inherited from the namespace (the object has no use-waypoint of its own): the same for every
  // object of it, worked out once (a Selector copies the namespace's labels and evaluates).
  if (own?.[LABEL_USE_WAYPOINT] === undefined && env.namespaceBindings) {
    let b = env.namespaceBindings.get(ns);
    if (b === undefined) env.namespaceBindings.set(ns, (b = bindingOf(undefined, ns, env) ?? null));
    return b ?? undefined;
  }
  return bindingOf(own, ns, env);
}

/**
 * A binding and where it comes from; refused (WaypointRef.refused) when the Waypoint does not
 * allow the object's namespace, `refusal` then saying which rule refused it, for the findings;
 * `notFound` when no such Waypoint exists (its traffic fails closed too: WaypointNotFound).
 */
export interface WaypointBinding { ref: WaypointRef; use: UseWaypoint; refusal?: string; notFound?: true }

function bindingOf(own: Readonly<Record<string, string>> | undefined, ns: string, env: Pick<WorkloadEnv, 'namespaces' | 'waypointObjects'>): WaypointBinding | undefined {
  const nsLabels = env.namespaces.get(ns)?.metadata.labels;
  const use = useWaypointOf(own, nsLabels, ns);
  if (!use) return undefined;
  const ref: WaypointRef = { name: use.name, namespace: use.namespace };
  const wp = env.waypointObjects.get(nsName(use.namespace, use.name));
  if (!wp) return { ref, use, notFound: true };
  if (waypointAllowsNamespace(wp, ns, nsLabels)) return { ref, use };
  const allowed = wp.spec?.allowedNamespaces;
  const says = allowed?.from === 'Selector' ? 'spec.allowedNamespaces.selector does not match its labels' : `spec.allowedNamespaces.from is ${allowed?.from ?? 'Same (the default)'}`;
  return { ref: { ...ref, refused: 'NamespaceNotAllowed' }, use, refusal: `Waypoint ${use.namespace}/${use.name} does not allow namespace ${ns} (${says})` };
}

/** Where a binding's labels are, as a finding's path on the object that carries them. */
function bindingLabelPath(use: UseWaypoint, ns: string): string {
  return `metadata.labels["${use.namespace !== ns ? LABEL_USE_WAYPOINT_NAMESPACE : LABEL_USE_WAYPOINT}"]`;
}

/** A Service's own finding: the waypoint it names does not exist, or does not allow its namespace. */
function serviceFinding(svc: ServiceObject, unit: ServiceUnit): CompileFinding | undefined {
  const compiled = unit.service;
  const wp = compiled.waypoint;
  const b = unit.binding;
  if (!wp || !b) return undefined;
  const at = { kind: 'Service', namespace: compiled.namespace, name: svc.metadata.name };
  const use = b.use;
  // Inherited from the Namespace: the Service has no such label; its namespace is what binds it.
  const own = use.labelledOn === 'object';
  const from = own ? '' : ` (its Namespace's labels ${LABEL_USE_WAYPOINT}=${use.name}, ${LABEL_USE_WAYPOINT_NAMESPACE}=${use.namespace})`;
  if (b.refusal !== undefined) {
    return { ...at, path: own ? bindingLabelPath(use, compiled.namespace) : 'metadata.namespace', reason: 'AttachmentDenied', message: `${b.refusal}${from}: the waypoint does not serve this service, and its traffic fails closed until the Waypoint allows the namespace or the label changes` };
  }
  if (!b.notFound) return undefined;
  return { ...at, path: own ? `metadata.labels["${LABEL_USE_WAYPOINT}"]` : 'metadata.namespace', reason: 'WaypointNotFound', message: `Waypoint ${wp.namespace}/${wp.name} does not exist${from}; traffic to this service fails closed until it does` };
}

/**
 * A Namespace's finding: the waypoint its labels name does not allow it (AttachmentDenied), at the
 * label that names the waypoint, or does not exist (WaypointNotFound, at its use-waypoint label).
 */
function namespaceFindings(env: Pick<WorkloadEnv, 'namespaces' | 'waypointObjects'>): CompileFinding[] {
  const out: CompileFinding[] = [];
  for (const [name, n] of env.namespaces) {
    const b = waypointBinding(undefined, name, env);
    const at = { kind: 'Namespace', namespace: '', name: n.metadata.name };
    if (b?.refusal !== undefined) out.push({ ...at, path: bindingLabelPath(b.use, name), reason: 'AttachmentDenied', message: `${b.refusal}: the waypoint serves none of the namespace's services and pods, and their traffic fails closed until the Waypoint allows the namespace or the label changes` });
    else if (b?.notFound) out.push({ ...at, path: `metadata.labels["${LABEL_USE_WAYPOINT}"]`, reason: 'WaypointNotFound', message: `Waypoint ${b.ref.namespace}/${b.ref.name} does not exist; traffic to the namespace's services and pods fails closed until it does` });
  }
  return out;
}

/** The workload with its service memberships (sorted); the previous object when they did not change. */
export function finalWorkload(unit: WorkloadUnit, memberships: readonly string[] | undefined): Workload {
  const base = unit.base;
  const services = [...(memberships ?? [])].sort();
  if (services.length === 0) {
    unit.final = base;
    return base;
  }
  const prev = unit.final;
  const final = prev && prev !== base && prev.services.length === services.length && prev.services.every((s, i) => s === services[i]) ? prev : { ...base, services };
  unit.final = final;
  return final;
}

/**
 * The Telemetry settings of a workload (namespace + labels): for each field, the value of the most
 * specific object that sets it: a selecting object in its namespace, else the namespace-wide one,
 * else the root namespace's mesh-wide one (the oldest at each level). Undefined when none applies.
 */
export function resolveTelemetry(telemetries: readonly TelemetryObject[], rootNamespace: string, namespace: string, labels: Record<string, string>): TelemetrySettings | undefined {
  const pick = (level: (t: TelemetryObject) => boolean) => telemetries.find(level);
  const levels = [
    pick((t) => t.metadata.namespace === namespace && t.spec?.selector !== undefined && labelsMatch(t.spec.selector.matchLabels ?? {}, labels)),
    pick((t) => t.metadata.namespace === namespace && t.spec?.selector === undefined && namespace !== rootNamespace),
    pick((t) => t.metadata.namespace === rootNamespace && t.spec?.selector === undefined),
  ].filter((t): t is TelemetryObject => t !== undefined);
  if (levels.length === 0) return undefined;
  const first = <T>(get: (t: TelemetryObject) => T | undefined): T | undefined => {
    for (const t of levels) {
      const v = get(t);
      if (v !== undefined) return v;
    }
    return undefined;
  };
  const endpoint = first((t) => t.spec?.tracing?.otlp?.endpoint);
  const tracingSet = levels.some((t) => t.spec?.tracing !== undefined);
  const logEndpoint = first((t) => t.spec?.accessLogging?.otlp?.endpoint);
  return {
    sources: levels.map((t) => nsName(t.metadata.namespace!, t.metadata.name)),
    ...(tracingSet ? {
      tracing: {
        ...(endpoint ? { otlpEndpoint: endpoint } : {}),
        samplingPercentage: first((t) => t.spec?.tracing?.randomSamplingPercentage) ?? DEFAULT_SAMPLING_PERCENTAGE,
        disabled: first((t) => t.spec?.tracing?.disableSpanReporting) ?? false,
      },
    } : {}),
    accessLogging: {
      disabled: first((t) => t.spec?.accessLogging?.disabled) ?? false,
      encoding: first((t) => t.spec?.accessLogging?.encoding) ?? 'JSON',
      ...(logEndpoint ? { otlpEndpoint: logEndpoint } : {}),
    },
  };
}

function sortByAge<T extends { metadata: { name: string; namespace?: string; creationTimestamp?: string } }>(list: T[]): T[] {
  const k = (o: T) => `${o.metadata.creationTimestamp ?? ''}\u0000${o.metadata.namespace ?? ''}/${o.metadata.name}`;
  return [...list].sort((a, b) => (k(a) < k(b) ? -1 : k(a) > k(b) ? 1 : 0));
}

/**
 * A written mode as an ambient data plane enforces it: UNSET inherits (undefined), DISABLE is
 * PERMISSIVE (ztunnel enforces only STRICT: pilot ambient convertPeerAuthentication treats
 * PERMISSIVE and DISABLE alike).
 */
function ambientMtlsMode(mode: PeerAuthenticationMode): MtlsMode | undefined {
  return mode === 'UNSET' ? undefined : mode === 'DISABLE' ? 'PERMISSIVE' : mode;
}

function appProtocolOf(appProtocol: string | undefined, name: string | undefined): ServicePort['appProtocol'] {
  const p = (appProtocol ?? name?.split('-')[0] ?? '').toLowerCase();
  // kubernetes.io/ws (KEP-3726): WebSocket over cleartext, an HTTP/1.1 Upgrade (RFC 6455), so HTTP.
  if (p === 'http' || p === 'http1' || p === 'kubernetes.io/http' || p === 'kubernetes.io/ws') return 'http';
  if (p === 'http2' || p === 'h2c' || p === 'kubernetes.io/h2c') return 'http2';
  if (p === 'grpc' || p === 'grpc-web') return 'grpc';
  return 'tcp';
}

function namedPort(pod: Pod, name: string): number | undefined {
  for (const c of pod.spec.containers ?? []) for (const p of c.ports ?? []) if (p.name === name) return p.containerPort;
  return undefined;
}

/**
 * A Service's endpoint. A pod of another namespace (a hand-written EndpointSlice) that has a
 * waypoint of its own carries it (Endpoint.waypoint): traffic to it passes that waypoint.
 */
function endpointOf(w: Workload | undefined, ip: string, node: string, nodeIps: ReadonlyMap<string, string>, ports: Record<string, number>, svcPorts: ServicePort[], ready: boolean, serviceNamespace: string): Endpoint {
  const nodeIp = nodeIps.get(node) ?? w?.nodeIp;
  const only = svcPorts.length === 1 ? ports[String(svcPorts[0]!.port)] : undefined;
  return {
    workloadUid: w?.uid ?? '',
    ip,
    node,
    ...(nodeIp ? { nodeIp } : {}),
    ...(only !== undefined ? { port: only } : {}),
    ports,
    enrolled: w?.enrolled ?? false,
    ...(w?.enrolled ? { spiffeId: w.spiffeId } : {}),
    ready,
    ...(w ? { workload: { workloadName: w.workloadName, namespace: w.namespace, canonicalService: w.canonicalService, canonicalRevision: w.canonicalRevision, cluster: w.cluster } } : {}),
    ...(w && w.namespace !== serviceNamespace && w.waypoint ? { waypoint: w.waypoint } : {}),
  };
}

function nonEmpty<T>(list: T[] | undefined): T[] | undefined {
  return list && list.length > 0 ? list : undefined;
}

function stripScheme(list: string[] | undefined): string[] | undefined {
  return nonEmpty(list?.map((s) => (s.startsWith('spiffe://') ? s.slice('spiffe://'.length) : s)));
}

/** Istio's `serviceAccounts` values as `<namespace>/<name>`: a bare name is in the policy's namespace. */
function inNamespace(list: string[] | undefined, ns: string): string[] | undefined {
  return nonEmpty(list?.map((v) => (v.includes('/') ? v : `${ns}/${v}`)));
}

/** Principals without `spiffe://`, expanded to the mesh's trust domains (expandTrustDomainAliases). */
function principalsFor(list: string[] | undefined, trustDomains: readonly string[]): string[] | undefined {
  const bare = stripScheme(list);
  return bare && expandTrustDomainAliases(bare, trustDomains);
}

/** `trustDomains`-like lists expanded to the mesh's trust domains (expandTrustDomainList). */
function trustDomainsFor(list: string[] | undefined, trustDomains: readonly string[]): string[] | undefined {
  const given = nonEmpty(list);
  return given && expandTrustDomainList(given, trustDomains);
}

/**
 * A `namespaces` / `notNamespaces` list as sent: under `namespacePatterns` / `notNamespacePatterns`
 * when a value is one an older data plane misreads (keys.ts COMPILED_SOURCE_FIELDS), the whole list
 * (its values are OR'ed; two fields would be AND'ed), so that data plane fails closed.
 */
function namespacesAs(field: 'namespaces' | 'notNamespaces', list: string[] | undefined): CompiledSource {
  const given = nonEmpty(list);
  if (!given) return {};
  return { [given.some(namespaceNeedsPattern) ? (field === 'namespaces' ? 'namespacePatterns' : 'notNamespacePatterns') : field]: given };
}

type WrittenRule = NonNullable<NonNullable<AuthorizationPolicyObject['spec']>['rules']>[number];

/** A rule's `from` or `to` written as an empty list, which matches nothing (Istio refuses it). */
function emptyRuleList(rule: WrittenRule): 'from' | 'to' | undefined {
  return rule.from?.length === 0 ? 'from' : rule.to?.length === 0 ? 'to' : undefined;
}

function compileRule(rule: WrittenRule, ns: string, trustDomains: readonly string[]): CompiledRule {
  const from = (rule.from ?? []).map(({ source: s }) => clean({
    principals: principalsFor(s.principals, trustDomains),
    notPrincipals: principalsFor(s.notPrincipals, trustDomains),
    ...namespacesAs('namespaces', s.namespaces),
    ...namespacesAs('notNamespaces', s.notNamespaces),
    trustDomains: trustDomainsFor(s.trustDomains, trustDomains),
    notTrustDomains: trustDomainsFor(s.notTrustDomains, trustDomains),
    serviceAccounts: inNamespace(s.serviceAccounts, ns),
    notServiceAccounts: inNamespace(s.notServiceAccounts, ns),
    ipBlocks: nonEmpty(s.ipBlocks),
    notIpBlocks: nonEmpty(s.notIpBlocks),
    remoteIpBlocks: nonEmpty(s.remoteIpBlocks),
    notRemoteIpBlocks: nonEmpty(s.notRemoteIpBlocks),
    requestPrincipals: nonEmpty(s.requestPrincipals),
    notRequestPrincipals: nonEmpty(s.notRequestPrincipals),
  }));
  const to = (rule.to ?? []).map(({ operation: o }) => clean({
    ports: nonEmpty(o.ports?.map(Number)),
    notPorts: nonEmpty(o.notPorts?.map(Number)),
    methods: nonEmpty(o.methods),
    notMethods: nonEmpty(o.notMethods),
    paths: nonEmpty(o.paths),
    notPaths: nonEmpty(o.notPaths),
    hosts: nonEmpty(o.hosts),
    notHosts: nonEmpty(o.notHosts),
  }));
  // `source.principal` as Istio's MigrateTrustDomain rewrites it, with `principals`; `source.trustDomain` with `trustDomains`.
  const when = (rule.when ?? []).map((c) => (c.key === 'source.namespace' && [...c.values ?? [], ...c.notValues ?? []].some(namespaceNeedsPattern)
    ? clean({ key: 'source.namespacePattern', values: nonEmpty(c.values), notValues: nonEmpty(c.notValues) })
    : c.key === 'source.serviceAccount'
    ? clean({ key: c.key, values: inNamespace(c.values, ns), notValues: inNamespace(c.notValues, ns) })
    : c.key === 'source.principal'
      ? clean({ key: c.key, values: principalsFor(c.values, trustDomains), notValues: principalsFor(c.notValues, trustDomains) })
      : c.key === 'source.trustDomain'
        ? clean({ key: c.key, values: trustDomainsFor(c.values, trustDomains), notValues: trustDomainsFor(c.notValues, trustDomains) })
        : clean({ key: c.key, values: nonEmpty(c.values), notValues: nonEmpty(c.notValues) })));
  return { from, to, when, layer: ruleLayer({ from, to, when }) };
}

/** Whether an AuthorizationPolicy carries Istio's dry-run annotation read true (parseDryRun). */
function dryRunAnnotated(ap: { metadata: { annotations?: Record<string, string> } }): boolean {
  const v = ap.metadata.annotations?.[ANNOTATION_DRY_RUN];
  return v !== undefined && parseDryRun(v) === true;
}

/** Whether two compilations of one policy object are alike (their rules are the same array: compiled once). */
function samePolicy(a: AuthorizationPolicy, b: AuthorizationPolicy): boolean {
  return a.rules === b.rules && JSON.stringify({ ...a, rules: 0 }) === JSON.stringify({ ...b, rules: 0 });
}

/** Drops undefined fields so the JSON form is stable. */
function clean<T extends object>(o: T): T {
  for (const k of Object.keys(o) as Array<keyof T>) if (o[k] === undefined) delete o[k];
  return o;
}

function ms(v: string | undefined): number | undefined {
  return v === undefined ? undefined : parseDuration(v);
}

function compileTrafficPolicy(tp: TrafficPolicyObject, service: string): TrafficPolicy {
  const s = tp.spec;
  return clean({
    name: tp.metadata.name,
    namespace: tp.metadata.namespace!,
    service,
    timeouts: clean({ requestMs: ms(s.timeouts?.request), perTryMs: ms(s.timeouts?.perTry), idleMs: ms(s.timeouts?.idle), connectMs: ms(s.timeouts?.connect) }),
    retries: s.retries
      ? clean({
          attempts: s.retries.attempts,
          // None given: the waypoint's default, Istio's (waypoint/src/resilience.ts DEFAULT_RETRY_ON).
          retryOn: s.retries.retryOn ?? [],
          budget: s.retries.budget ? { percent: s.retries.budget.percent, minRetryConcurrency: s.retries.budget.minRetryConcurrency ?? 3 } : undefined,
        })
      : undefined,
    connectionLimits: s.connectionLimits ? clean({ ...s.connectionLimits }) : undefined,
    outlierDetection: s.outlierDetection
      ? {
          consecutive5xx: s.outlierDetection.consecutive5xx ?? 5,
          intervalMs: ms(s.outlierDetection.interval) ?? 10_000,
          baseEjectionTimeMs: ms(s.outlierDetection.baseEjectionTime) ?? 30_000,
          maxEjectionPercent: s.outlierDetection.maxEjectionPercent ?? 10,
        }
      : undefined,
    loadBalancer: s.loadBalancer?.policy ?? 'ROUND_ROBIN',
    locality: s.locality
      ? clean({
          mode: s.locality.mode === 'LocalOnly' ? 'local-only' : s.locality.mode === 'Weighted' ? 'weighted' : 'prefer-local',
          weights: s.locality.weights ? Object.fromEntries(s.locality.weights.map((w) => [w.cluster, w.weight])) : undefined,
        })
      : undefined,
    rateLimit: s.rateLimit ? { tokens: s.rateLimit.tokens, fillIntervalMs: parseDuration(s.rateLimit.fillInterval), per: s.rateLimit.per ?? 'route' } : undefined,
    quota: s.quota ? { limit: s.quota.requests, windowMs: parseDuration(s.quota.window), per: s.quota.per ?? 'service' } : undefined,
    fault: s.fault
      ? clean({
          delay: s.fault.delay ? { fixedDelayMs: parseDuration(s.fault.delay.fixedDelay), percentage: s.fault.delay.percentage ?? 100 } : undefined,
          abort: s.fault.abort ? { httpStatus: s.fault.abort.httpStatus, percentage: s.fault.abort.percentage ?? 100 } : undefined,
        })
      : undefined,
  }) as TrafficPolicy;
}

function headerEdits(m: HeaderModifier): HeaderEdits {
  return { set: m.set ?? [], add: m.add ?? [], remove: m.remove ?? [] };
}

function pathRewrite(p: PathModifier | undefined): { path?: { type: PathModifier['type']; value: string } } {
  if (!p) return {};
  return { path: { type: p.type, value: (p.type === 'ReplaceFullPath' ? p.replaceFullPath : p.replacePrefixMatch) ?? '/' } };
}

/** The share of requests a RequestMirror copies, in percent: `percent`, else `fraction` (denominator default 100), else all. */
function mirrorPercent(m: { percent?: number; fraction?: { numerator: number; denominator?: number } }): number {
  if (m.percent !== undefined) return m.percent;
  if (m.fraction !== undefined) return (100 * m.fraction.numerator) / (m.fraction.denominator ?? 100);
  return 100;
}

/** ReferenceGrants by the namespace they grant access into. */
class ReferenceGrants {
  readonly #byNamespace = new Map<string, ReferenceGrant[]>();
  constructor(grants: readonly ReferenceGrant[]) {
    for (const g of grants) {
      const ns = g.metadata.namespace!;
      this.#byNamespace.set(ns, [...(this.#byNamespace.get(ns) ?? []), g]);
    }
  }

  /**
   * May a `fromKind` (gateway.networking.k8s.io) in `fromNs` refer to Service `toNs/name`? Always
   * within a namespace; across namespaces only with a ReferenceGrant in `toNs` (Gateway API).
   */
  permits(fromKind: string, fromNs: string, toNs: string, name: string): boolean {
    if (fromNs === toNs) return true;
    return (this.#byNamespace.get(toNs) ?? []).some((g) =>
      g.spec.from.some((f) => f.group === 'gateway.networking.k8s.io' && f.kind === fromKind && f.namespace === fromNs) &&
      g.spec.to.some((t) => t.group === '' && t.kind === 'Service' && (t.name === undefined || t.name === name)));
  }
}

/** A route's Service parentRef resolved against the model: the Service and port, or why not. */
type ParentTarget = { svcKey: string; svc: Service; port: number | undefined } | { refused: string };

function resolveParent(parent: ParentReference, routeNs: string, model: MeshModel): ParentTarget {
  const svcKey = nsName(parent.namespace ?? routeNs, parent.name);
  const svc = model.services.get(svcKey);
  if (!svc) return { refused: `Service ${svcKey} does not exist` };
  let port = parent.port;
  if (parent.sectionName !== undefined) {
    const named = svc.ports.find((sp) => sp.name === parent.sectionName);
    if (!named || (port !== undefined && named.port !== port)) return { refused: `Service ${svcKey} has no port named ${parent.sectionName}${port !== undefined ? ` with port ${port}` : ''}` };
    port = named.port;
  } else if (port !== undefined && !svc.ports.some((sp) => sp.port === port)) {
    return { refused: `Service ${svcKey} has no port ${port}` };
  }
  return { svcKey, svc, port };
}

/**
 * The GRPCRoutes attached to each Service, by `service|route namespace` (the routes a waypoint
 * merges: a Service's producer routes, or one namespace's consumer routes of it), with their port
 * (undefined: every port). A parentRef that does not attach is left out: it costs only its route.
 */
type GrpcParents = ReadonlyMap<string, ReadonlyArray<{ route: string; port: number | undefined }>>;

function grpcParentsOf(routes: GRPCRoute[], model: MeshModel): GrpcParents {
  const out = new Map<string, Array<{ route: string; port: number | undefined }>>();
  for (const r of sortByAge(routes)) {
    const ns = r.metadata.namespace!;
    for (const parent of r.spec.parentRefs ?? []) {
      if (!isServiceParent(parent)) continue;
      const t = resolveParent(parent, ns, model);
      if ('refused' in t) continue;
      const key = `${t.svcKey}|${ns}`;
      out.set(key, [...(out.get(key) ?? []), { route: nsName(ns, r.metadata.name), port: t.port }]);
    }
  }
  return out;
}

function compileRoute(r: HTTPRoute | GRPCRoute, model: MeshModel, clusterDomain: string, grants: ReferenceGrants, imported: ReadonlySet<string> | undefined, findings: CompileFinding[], grpcParents: GrpcParents, cache: CompileCache | undefined): RouteParentResult[] {
  const ns = r.metadata.namespace!;
  const finding = (path: string, reason: string, message: string) => findings.push({ kind: r.kind, namespace: ns, name: r.metadata.name, path, reason, message });
  // ResolvedRefs is one verdict for the whole route: the first reference that did not resolve.
  let unresolved: { reason: string; message: string } | undefined;
  // A consumer route may send to the Service it is attached to without a ReferenceGrant: that only
  // lets the route's own namespace's callers reach what they addressed anyway (GAMMA consumer
  // routes; Gateway API conformance MeshConsumerRoute routes to its producer parent without a grant).
  const isOwnParent = (bns: string, name: string): boolean =>
    (r.spec.parentRefs ?? []).some((p) => isServiceParent(p) && (p.namespace ?? ns) === bns && p.name === name);
  const backend = (b: BackendRef, path: string, filters: HTTPRouteFilter[] | undefined): RouteBackend => {
    const bns = b.namespace ?? ns;
    const key = nsName(bns, b.name);
    let refused: string | undefined;
    if ((b.group ?? '') !== '' || (b.kind ?? 'Service') !== 'Service') {
      // Gateway API HTTPRouteInvalidBackendRefUnknownKind: the route is accepted, ResolvedRefs
      // False (InvalidKind), and only the requests routed to this backend get 500.
      refused = `${path}: ${b.group ? `${b.group}/` : ''}${b.kind ?? 'Service'} is not a kind Weft sends to (only core Service); requests routed to it get 500`;
      finding(path, 'InvalidKind', refused);
      unresolved ??= { reason: 'InvalidKind', message: refused };
    } else if (!grants.permits(r.kind, ns, bns, b.name) && !isOwnParent(bns, b.name)) {
      refused = `${r.kind} ${ns}/${r.metadata.name} may not send to Service ${key}: no ReferenceGrant in namespace ${bns} allows it; requests routed to it get 500`;
      finding(path, 'RefNotPermitted', refused);
      unresolved ??= { reason: 'RefNotPermitted', message: `${path}: ${refused}` };
    } else if (!model.services.has(key) && !imported?.has(key)) {
      // A Service only another cluster has is imported after this compile (namespace sameness):
      // a backendRef to it resolves, and sends that share to that cluster's endpoints.
      const message = `Service ${key} does not exist${imported ? ' in any cluster' : ''}; requests routed to it get 500`;
      finding(path, 'BackendNotFound', message);
      unresolved ??= { reason: 'BackendNotFound', message: `${path}: ${message}` };
    }
    return {
      service: key,
      hostname: `${b.name}.${bns}.svc.${clusterDomain}`,
      ...(b.port !== undefined ? { port: b.port } : {}),
      weight: b.weight ?? 1,
      filters: (filters ?? []).map((f, i) => filter(f, `${path}.filters[${i}]`)),
      ...(refused !== undefined ? { refused } : {}),
    };
  };
  const filter = (f: HTTPRouteFilter, path: string): RouteFilter => {
    switch (f.type) {
      case 'RequestHeaderModifier':
        return { type: f.type, headers: headerEdits(f.requestHeaderModifier) };
      case 'ResponseHeaderModifier':
        return { type: f.type, headers: headerEdits(f.responseHeaderModifier) };
      case 'URLRewrite':
        return clean({ type: f.type, hostname: f.urlRewrite.hostname, ...pathRewrite(f.urlRewrite.path) });
      case 'RequestRedirect':
        return clean({
          type: f.type,
          scheme: f.requestRedirect.scheme,
          hostname: f.requestRedirect.hostname,
          ...pathRewrite(f.requestRedirect.path),
          port: f.requestRedirect.port,
          statusCode: f.requestRedirect.statusCode ?? 302,
        });
      case 'RequestMirror':
        return { type: f.type, backend: backend(f.requestMirror.backendRef, `${path}.requestMirror.backendRef`, undefined), percent: mirrorPercent(f.requestMirror) };
      case 'CORS':
        // HTTPCORSFilter defaults: no origin, methods or headers allowed; maxAge 5 seconds.
        return {
          type: f.type, allowOrigins: f.cors.allowOrigins ?? [], allowCredentials: f.cors.allowCredentials ?? false,
          allowMethods: f.cors.allowMethods ?? [], allowHeaders: f.cors.allowHeaders ?? [], exposeHeaders: f.cors.exposeHeaders ?? [], maxAge: f.cors.maxAge ?? 5,
        };
    }
  };
  // A route's matches depend on its spec alone (they are most of a large route): built once per
  // object with a cache. The rest (backends, which grants decide; filters) is built every compile,
  // and the compiled Route kept when all of it came out the same (below).
  const cached = cache?.routes.get(r);
  const matchesOf = cached?.matches ?? (r.spec.rules ?? []).map((rule) => routeMatches(r.kind, rule));
  const entry = cached ?? { matches: matchesOf, byParent: new Map<string, { key: string; route: Route }>() };
  if (!cached) cache?.routes.set(r, entry);
  const rules = (r.spec.rules ?? []).map((rule, i) => {
    const p = `spec.rules[${i}]`;
    const timeouts = r.kind === 'HTTPRoute' ? (rule as NonNullable<HTTPRoute['spec']['rules']>[number]).timeouts : undefined;
    const retry = r.kind === 'HTTPRoute' ? (rule as NonNullable<HTTPRoute['spec']['rules']>[number]).retry : undefined;
    return clean({
      name: rule.name,
      matches: matchesOf[i]!,
      filters: (rule.filters ?? []).map((f, j) => filter(f as HTTPRouteFilter, `${p}.filters[${j}]`)),
      backends: (rule.backendRefs ?? []).map((b, j) => backend(b, `${p}.backendRefs[${j}]`, b.filters as HTTPRouteFilter[] | undefined)),
      timeouts: clean({ requestMs: ms(timeouts?.request), backendRequestMs: ms(timeouts?.backendRequest) }),
      retry: retry ? clean({ codes: retry.codes ?? [], attempts: retry.attempts, backoffMs: ms(retry.backoff) }) : undefined,
    });
  });
  const rulesKey = JSON.stringify(rules.map(({ matches: _matches, ...rest }) => rest));
  const resolved: RouteCondition = unresolved
    ? { type: 'ResolvedRefs', status: false, ...unresolved }
    : { type: 'ResolvedRefs', status: true, reason: 'ResolvedRefs', message: 'every backendRef resolved' };
  const order = `${r.metadata.creationTimestamp ?? ''}/${ns}/${r.metadata.name}`;
  const parents: RouteParentResult[] = [];
  (r.spec.parentRefs ?? []).forEach((parent, i) => {
    // Parents of other kinds (an ingress Gateway) are other controllers': no route, no status.
    if (!isServiceParent(parent)) return;
    const accepted = (status: boolean, reason: string, message: string): void => {
      if (!status) finding(`spec.parentRefs[${i}]`, reason, message);
      parents.push({ parentRef: parent, conditions: [{ type: 'Accepted', status, reason, message }, resolved] });
    };
    const target = resolveParent(parent, ns, model);
    if ('refused' in target) { accepted(false, 'NoMatchingParent', target.refused); return; }
    const { svcKey, svc, port } = target;
    if (r.kind === 'HTTPRoute') {
      // GEP-1294 "Route types": routes of different types on one Service port are not merged
      // (grpcroute_types.go: "Merging MUST not be done between GRPCRoutes and HTTPRoutes"); the
      // GRPCRoute applies and the HTTPRoute is Conflicted there.
      const rival = grpcParents.get(`${svcKey}|${ns}`)?.find((g) => g.port === undefined || port === undefined || g.port === port);
      if (rival) {
        const where = port !== undefined ? `port ${port} of Service ${svcKey}` : rival.port !== undefined ? `port ${rival.port} of Service ${svcKey}` : `Service ${svcKey}`;
        const hint = port === undefined && rival.port !== undefined ? ' (attach it to the Service\'s other ports by parentRef port or sectionName to apply it there)' : '';
        accepted(false, 'Conflicted', `GRPCRoute ${rival.route} is attached to ${where}: HTTPRoutes and GRPCRoutes on one Service port are not merged and the GRPCRoute applies (GEP-1294); this route is not applied to Service ${svcKey}${hint}`);
        return;
      }
    }
    const route: Route = {
      name: r.metadata.name,
      namespace: ns,
      kind: r.kind,
      service: svcKey,
      ...(port !== undefined ? { port } : {}),
      hostnames: r.spec.hostnames ?? [],
      rules,
      order,
    };
    // The same as the last compile made for this parent: that object, which the config server
    // then neither compares nor serializes again.
    const key = JSON.stringify([port, route.hostnames, order]) + rulesKey;
    const prior = entry.byParent.get(svcKey);
    const kept = prior !== undefined && prior.key === key ? prior.route : route;
    entry.byParent.set(svcKey, { key, route: kept });
    model.routes.set(routeKey(r.kind, ns, r.metadata.name, svcKey), kept);
    const scope = isConsumerRoute(route) ? `a consumer route: it applies to clients in namespace ${ns} only` : 'a producer route: it applies to every client';
    if (svc.waypoint?.refused !== undefined) {
      accepted(false, 'NoWaypoint', `Service ${svcKey} is not bound to a waypoint: ${waypointRefusalText(svc.waypoint, svc.namespace)}; nothing applies this route (the Service's traffic fails closed)`);
    } else if (!svc.waypoint) {
      // Only a waypoint applies routes: say so rather than let the route look in force.
      accepted(false, 'NoWaypoint', `Service ${svcKey} has no waypoint (label weft.dev/use-waypoint on the Service or its namespace); nothing enforces this route`);
    } else if (!model.waypoints.has(nsName(svc.waypoint.namespace, svc.waypoint.name))) {
      accepted(false, 'NoWaypoint', `Service ${svcKey} uses waypoint ${svc.waypoint.namespace}/${svc.waypoint.name}, which does not exist; nothing enforces this route`);
    } else {
      accepted(true, 'Accepted', `enforced by waypoint ${svc.waypoint.namespace}/${svc.waypoint.name} as ${scope}`);
    }
  });
  return parents;
}

/** A route rule's matches as the waypoint reads them (none written: every request). */
function routeMatches(kind: 'HTTPRoute' | 'GRPCRoute', rule: NonNullable<(HTTPRoute | GRPCRoute)['spec']['rules']>[number]): RouteMatch[] {
  let matches: RouteMatch[];
  if (kind === 'HTTPRoute') {
    const hr = rule as NonNullable<HTTPRoute['spec']['rules']>[number];
    matches = (hr.matches ?? []).map((m) => clean({
      path: { type: m.path?.type ?? 'PathPrefix', value: m.path?.value ?? '/' },
      headers: headerMatches(m.headers),
      queryParams: firstPerName((m.queryParams ?? []).map((h) => ({ type: h.type ?? 'Exact', name: h.name, value: h.value }))),
      method: m.method,
    }));
  } else {
    const gr = rule as NonNullable<GRPCRoute['spec']['rules']>[number];
    matches = (gr.matches ?? []).map((m) => ({
      ...(m.method ? { path: grpcPath(m.method) } : { path: { type: 'PathPrefix' as const, value: '/' } }),
      headers: headerMatches(m.headers),
      queryParams: [],
      method: 'POST',
      grpc: { serviceChars: m.method?.service?.length ?? 0, methodChars: m.method?.method?.length ?? 0 },
    }));
  }
  if (matches.length === 0) {
    matches = [{ path: { type: 'PathPrefix', value: '/' }, headers: [], queryParams: [], ...(kind === 'GRPCRoute' ? { grpc: { serviceChars: 0, methodChars: 0 } } : {}) }];
  }
  return matches;
}

/**
 * Gateway API HTTPHeaderMatch.Name, GRPCHeaderMatch.Name, HTTPQueryParamMatch.Name: "only the first
 * entry with an equivalent name MUST be considered for a match. Subsequent entries with an
 * equivalent ... name MUST be ignored". Names are compared as given: lower-case them first for
 * headers (case-insensitive); query param names are case-sensitive.
 */
function firstPerName<T extends { name: string }>(list: T[]): T[] {
  const seen = new Set<string>();
  return list.filter((m) => !seen.has(m.name) && seen.add(m.name));
}

/** A route match's header matches, names lower-cased, the first of equivalent names only. */
function headerMatches(list: HeaderMatch[] | undefined): StringMatch[] {
  return firstPerName((list ?? []).map((h) => ({ type: h.type ?? 'Exact', name: h.name.toLowerCase(), value: h.value })));
}

export function routeKey(kind: string, namespace: string, name: string, service: string): string {
  return `${namespace}/${name}/${kind}/${service}`;
}

/**
 * A GRPCMethodMatch as a path match on `/service/method`. Its precedence among GRPCRoute rules is
 * not the path's type but the match's `grpc` character counts (router.ts). A RegularExpression
 * service or method is a group of its own, so that an alternation (`Get|List`) stays inside its
 * part of the path.
 */
function grpcPath(m: { type?: 'Exact' | 'RegularExpression'; service?: string; method?: string }): RouteMatch['path'] {
  if ((m.type ?? 'Exact') === 'Exact') {
    if (m.service && m.method) return { type: 'Exact', value: `/${m.service}/${m.method}` };
    if (m.service) return { type: 'PathPrefix', value: `/${m.service}` };
    return { type: 'RegularExpression', value: `^/[^/]+/${escapeRegex(m.method ?? '')}$` };
  }
  return { type: 'RegularExpression', value: grpcMethodPattern(m.service, m.method) };
}
