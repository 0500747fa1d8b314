// The compiled mesh model: what agents and waypoints consume. controller/src/compile.ts builds it
// from the input objects (lib/model/objects.ts); the config stream carries each resource as JSON.
// Every type here is plain data (no classes, no Maps) so that it survives JSON round trips.
import type { JwtRule } from '../policy/jwt.ts';
import type { PolicyLayer } from '../policy/keys.ts';
import type { AuthorizationAction, LoadBalancerPolicy, MtlsMode, RateLimitScope } from './objects.ts';
import type { WorkloadMeta } from './workload-meta.ts';
import { PORTS } from '../defaults.ts';

export type { AuthorizationAction, JwtRule, LoadBalancerPolicy, MtlsMode, RateLimitScope, WorkloadMeta };

/** Default trust domain of SPIFFE identities. */
export const DEFAULT_TRUST_DOMAIN = 'cluster.local';
/** Suffix of service hostnames: `<name>.<namespace>.svc.<suffix>`. */
export const DEFAULT_CLUSTER_DOMAIN = 'cluster.local';
/** Namespace whose PeerAuthentications and AuthorizationPolicies apply mesh-wide. */
export const DEFAULT_ROOT_NAMESPACE = 'weft-system';
/** HBONE port on agents and waypoints. */
export const HBONE_PORT = PORTS.hbone;

export function spiffeIdOf(trustDomain: string, namespace: string, serviceAccount: string): string {
  return `spiffe://${trustDomain}/ns/${namespace}/sa/${serviceAccount}`;
}

/** `namespace/name`: how services, policies, routes and waypoints are named on the config stream. */
export function nsName(namespace: string, name: string): string {
  return `${namespace}/${name}`;
}

export interface WaypointRef {
  name: string;
  namespace: string;
  /** Multi-cluster: the waypoint runs in this other cluster (a Service imported with it); absent: this cluster's. */
  cluster?: string;
  /**
   * Why the object may not use this waypoint, a stable code (WaypointBindingRefusal): its traffic
   * fails closed, as for a waypoint that does not exist, and the waypoint neither serves it nor
   * speaks for its pods. The controller's finding on the object says it in words; agents, gateways
   * and importers word it themselves (waypointRefusalText). Absent: bound.
   */
  refused?: WaypointBindingRefusal;
}

/**
 * Why a binding is refused. `NamespaceNotAllowed`: the waypoint is another namespace's and its
 * spec.allowedNamespaces does not allow the object's namespace (Istio AttachmentDenied).
 */
export type WaypointBindingRefusal = 'NamespaceNotAllowed';

/** A refused binding of an object of namespace `objectNamespace`, in words (the controller's finding names the rule that refused it). */
export function waypointRefusalText(ref: WaypointRef, objectNamespace: string): string {
  return `Waypoint ${ref.namespace}/${ref.name} does not allow namespace ${objectNamespace} (its spec.allowedNamespaces)`;
}

/** The waypoint a Service or workload is bound to, if the binding was not refused (WaypointRef.refused). */
export function boundWaypoint(ref: WaypointRef | undefined): WaypointRef | undefined {
  return ref && ref.refused === undefined ? ref : undefined;
}

/**
 * The namespace of the waypoint of this cluster an object (a Service or a workload) is bound to
 * across namespaces (use-waypoint-namespace, the binding allowed): that namespace's waypoint serves
 * it. Undefined for an object bound within its namespace, to another cluster's waypoint, refused,
 * or not bound.
 */
export function foreignWaypointNamespace(o: { namespace: string; waypoint?: WaypointRef | undefined }): string | undefined {
  const wp = boundWaypoint(o.waypoint);
  return wp && wp.cluster === undefined && wp.namespace !== o.namespace ? wp.namespace : undefined;
}

/**
 * Does the waypoint of `namespace` serve Service `s` (take tunnels addressed to it, apply its routes
 * and policies)? A Service of its namespace, or one of another namespace bound to a waypoint of it
 * (foreignWaypointNamespace).
 */
export function servesService(namespace: string, s: Pick<Service, 'namespace' | 'waypoint'>): boolean {
  return s.namespace === namespace || foreignWaypointNamespace(s) === namespace;
}

/**
 * The pod port `e` serves Service port `sp` on: the endpoint's own (its EndpointSlice's, which
 * resolves a named targetPort), its one port, or the Service's numeric targetPort; undefined when
 * none says.
 */
export function endpointTargetPort(e: Pick<Endpoint, 'ports' | 'port'>, sp: Pick<ServicePort, 'port' | 'targetPort'>): number | undefined {
  return e.ports[String(sp.port)] ?? e.port ?? (typeof sp.targetPort === 'number' ? sp.targetPort : undefined);
}

/**
 * The model's key of a waypoint: `namespace/name`, or `cluster/namespace/name` for one of another
 * cluster (namespace sameness makes `demo/waypoint` a name every cluster may have).
 */
export function waypointKey(ref: WaypointRef): string {
  return ref.cluster === undefined ? nsName(ref.namespace, ref.name) : `${ref.cluster}/${ref.namespace}/${ref.name}`;
}

/** A pod, with its telemetry identity (WorkloadMeta: controlling workload, canonical service, cluster). */
export interface Workload extends WorkloadMeta {
  /** Pod UID (or `namespace/name` when the source gave none). */
  uid: string;
  /** The pod's name (`workloadName` is its controlling workload's). */
  name: string;
  namespace: string;
  node: string;
  /** Address of the node's agent, where HBONE for this workload goes (port 15008). */
  nodeIp?: string;
  /**
   * The pod's IPv4 address; '' while a scheduled pod has none yet (its network is being set up:
   * the CNI plugin enrols it with the address the network plugin gave it).
   */
  ip: string;
  serviceAccount: string;
  spiffeId: string;
  labels: Record<string, string>;
  /** Captured by the mesh (dataplane-mode ambient, not opted out, not host network). */
  enrolled: boolean;
  /** mTLS mode from PeerAuthentication (workload > namespace > root namespace > PERMISSIVE). */
  mode: MtlsMode;
  /** Per-port overrides from a workload-selecting PeerAuthentication, keyed by port number. */
  portModes?: Record<string, MtlsMode>;
  /** Waypoint for traffic addressed to this workload directly (Pod, else Namespace `use-waypoint`). */
  waypoint?: WaypointRef;
  /** `namespace/name` of every Service that selects this workload. */
  services: string[];
  /** From Telemetry objects (workload > namespace > root namespace); absent: the defaults. */
  telemetry?: TelemetrySettings;
}

/** Default percentage of new traces sampled when a Telemetry names a tracing provider (Istio's 1 %). */
export const DEFAULT_SAMPLING_PERCENTAGE = 1;

/** What Telemetry objects resolve to for one workload or waypoint. */
export interface TelemetrySettings {
  /** `namespace/name` of the Telemetry objects that contributed, most specific first. */
  sources: string[];
  /** Absent: no tracing provider (trace context is still propagated). */
  tracing?: { otlpEndpoint?: string; samplingPercentage: number; disabled: boolean };
  accessLogging: { disabled: boolean; encoding: 'JSON' | 'TEXT'; otlpEndpoint?: string };
}

export interface ServicePort {
  name: string;
  port: number;
  /** Numeric target port when the Service gives one; a named one is resolved per endpoint. */
  targetPort: number | string;
  protocol: 'TCP' | 'UDP' | 'SCTP';
  /** From appProtocol, or inferred from the port name prefix (http-, grpc-, tcp-); `tcp` otherwise. */
  appProtocol: 'http' | 'http2' | 'grpc' | 'tcp';
}

export interface Endpoint {
  /** Workload UID; empty for an address with no pod behind it (e.g. a hand-written EndpointSlice). */
  workloadUid: string;
  ip: string;
  node: string;
  /** Address of the endpoint's node agent (HBONE target). */
  nodeIp?: string;
  /** Target port when the service has exactly one port. */
  port?: number;
  /** Service port → endpoint port, keyed by service port number. */
  ports: Record<string, number>;
  /** The endpoint is in the mesh: reach it over HBONE and expect `spiffeId`. */
  enrolled: boolean;
  spiffeId?: string;
  ready: boolean;
  /** Telemetry identity of the pod behind the address; absent when there is none. */
  workload?: WorkloadMeta;
  /**
   * A pod of another namespace than the Service's (a hand-written EndpointSlice) that has a
   * waypoint of its own (use-waypoint on the pod or its namespace): traffic to it must pass that
   * waypoint, so another waypoint does not send there (waypoint/src/config.ts), and an agent sends
   * there through it (agent/src/state.ts foreignWaypoint). Absent otherwise.
   */
  waypoint?: WaypointRef;
  /** Multi-cluster: the cluster the endpoint runs in (set on endpoints learnt from another cluster). */
  cluster?: string;
  /** Multi-cluster: the endpoint's network; absent: the caller's own network. */
  network?: string;
  /**
   * Multi-cluster: the endpoint is on another network, reachable only through that network's
   * east-west gateway (double HBONE: an outer tunnel to the gateway carries the inner one to
   * `nodeIp`). Absent: dial `nodeIp` directly.
   */
  gateway?: NetworkGateway;
}

/** An east-west gateway: the one door into a network (port 15008, HBONE). */
export interface NetworkGateway {
  network: string;
  address: string;
  port: number;
  /** The gateway's identity (the outer tunnel's peer). */
  spiffeId: string;
}

/** Multi-cluster: which clusters a caller prefers for a service (TrafficPolicy `spec.locality`). */
export interface LocalityPolicy {
  /**
   * `prefer-local`: the caller's own cluster while it has a ready endpoint, others after (failover);
   * `local-only`: never another cluster; `weighted`: clusters picked by `weights`.
   */
  mode: 'prefer-local' | 'local-only' | 'weighted';
  /** `weighted`: cluster → relative weight (clusters not named get 0). */
  weights?: Record<string, number>;
}

export interface Service {
  name: string;
  namespace: string;
  /** `<name>.<namespace>.svc.cluster.local`. */
  hostname: string;
  vips: string[];
  ports: ServicePort[];
  endpoints: Endpoint[];
  /** Service traffic goes through this waypoint (Service or Namespace `use-waypoint`). */
  waypoint?: WaypointRef;
  /**
   * Set on a Service only other clusters have (mergeRemoteServices): the cluster it was imported
   * from. Absent: this cluster's own. An agent lists its VIPs after this cluster's own destinations
   * (AgentState.meshDestinations), so past weft_dests' capacity an import is left out, never its own.
   */
  cluster?: string;
}

/** Istio MeshConfig `pathNormalization` modes (waypoint/src/normalize.ts says what each does). */
export const PATH_NORMALIZATIONS = ['NONE', 'BASE', 'MERGE_SLASHES', 'DECODE_AND_MERGE_SLASHES'] as const;
export type PathNormalization = (typeof PATH_NORMALIZATIONS)[number];

/**
 * Visible characters RFC 3986 does not allow unencoded in a path, which Envoy's path normalization
 * (its copy of Chromium's URL canonicalizer, url_canon_path.cc) percent-encodes: `"`, `<`, `>`,
 * `^`, the backtick, `{`, `|`, `}` (`\` is read as `/` instead; `[`, `]` and `'` pass, as there).
 */
const ENCODED_IN_PATHS = /["<>^`{|}]/g;

/** `path` with the characters above percent-encoded (upper-case hex), as every mode but NONE judges it. */
export function encodeRawPathChars(path: string): string {
  return path.replace(ENCODED_IN_PATHS, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** What happens to `%2F`/`%5C` outside DECODE_AND_MERGE_SLASHES (Envoy's names). */
export const ESCAPED_SLASHES_ACTIONS = ['KEEP_UNCHANGED', 'REJECT_REQUEST'] as const;
export type EscapedSlashesAction = (typeof ESCAPED_SLASHES_ACTIONS)[number];

/** A sanity ceiling on numTrustedProxies (X-Forwarded-For hops in front of a waypoint). */
export const MAX_TRUSTED_PROXIES = 32;

/**
 * Mesh-wide HTTP settings the controller gives every waypoint (its flags, as Istio's MeshConfig);
 * an unset field leaves the waypoint's own flag or default in force.
 */
export interface MeshHttpSettings {
  /** Istio MeshConfig pathNormalization. Waypoint default BASE. */
  pathNormalization?: PathNormalization;
  /** Waypoint default KEEP_UNCHANGED. */
  escapedSlashes?: EscapedSlashesAction;
  /**
   * Istio gatewayTopology.numTrustedProxies (Envoy xff_num_trusted_hops): how many proxies in front
   * of the waypoint append to X-Forwarded-For; `remote.ip` is the entry that many places from the
   * right. Waypoint default 0 (the last entry).
   */
  numTrustedProxies?: number;
}

export interface Waypoint {
  name: string;
  namespace: string;
  /** Where agents send HBONE for services behind this waypoint; absent until it runs. */
  address?: string;
  /**
   * Every ready replica's address, sorted, when there is more than one (`address` is the first).
   * Agents spread connections over them, round robin, and try the next one when one fails.
   */
  addresses?: string[];
  port: number;
  spiffeId: string;
  ready: boolean;
  /** Why it is not ready. */
  reason?: string;
  /** Telemetry identity of its pods (the Deployment the reconciler names after the Waypoint). */
  workload?: WorkloadMeta;
  /** Telemetry settings for its pods (selectors see the reconciler's pod labels). */
  telemetry?: TelemetrySettings;
  /** Mesh-wide HTTP settings (controller flags). */
  http?: MeshHttpSettings;
  /**
   * Multi-cluster: a waypoint of another cluster, imported with the remote-only Service it serves
   * (lib/model/federation.ts); callers reach it as they reach that cluster's endpoints: directly on
   * the same network, else through `gateway` (double HBONE). Absent: this cluster's own.
   */
  cluster?: string;
  network?: string;
  gateway?: NetworkGateway;
}

/** Every replica address of a waypoint: `addresses` when it has several, else `address` (none before it runs). */
export function waypointAddresses(w: Pick<Waypoint, 'address' | 'addresses'>): string[] {
  if (w.addresses && w.addresses.length > 0) return w.addresses;
  return w.address ? [w.address] : [];
}

// ---------------------------------------------------------------------------------------------
// Authorization

export interface CompiledSource {
  principals?: string[];
  notPrincipals?: string[];
  namespaces?: string[];
  notNamespaces?: string[];
  /** `namespaces` with a value an older data plane misreads (lib/policy/keys.ts COMPILED_SOURCE_FIELDS): it refuses this field. */
  namespacePatterns?: string[];
  notNamespacePatterns?: string[];
  /** The peer's SPIFFE trust domain (Istio `trustDomains`): exact, one `*` at either end, or `*`. */
  trustDomains?: string[];
  notTrustDomains?: string[];
  /** `<namespace>/<name>`: the controller writes in the policy's namespace where it was left out. */
  serviceAccounts?: string[];
  notServiceAccounts?: string[];
  /** CIDRs (a bare address becomes /32 or /128). */
  ipBlocks?: string[];
  notIpBlocks?: string[];
  /** CIDRs matched against the X-Forwarded-For client address (L7). */
  remoteIpBlocks?: string[];
  notRemoteIpBlocks?: string[];
  /** `<iss>/<sub>` of the request's verified JWT (L7; RequestAuthentication). */
  requestPrincipals?: string[];
  notRequestPrincipals?: string[];
}

export interface CompiledOperation {
  ports?: number[];
  notPorts?: number[];
  methods?: string[];
  notMethods?: string[];
  paths?: string[];
  notPaths?: string[];
  hosts?: string[];
  notHosts?: string[];
}

export interface CompiledCondition {
  key: string;
  values?: string[];
  notValues?: string[];
}

/** L4 rules use only addresses, identities, namespaces and ports; anything else needs a waypoint. */
export type { PolicyLayer };

export interface CompiledRule {
  /** OR of sources; empty = any source. */
  from: CompiledSource[];
  /** OR of operations; empty = any operation. */
  to: CompiledOperation[];
  /** AND of conditions. */
  when: CompiledCondition[];
  layer: PolicyLayer;
}

export type PolicyScope =
  /**
   * In the root namespace: every workload in the mesh, or with `selector` every matching workload
   * in every namespace (Istio's root-namespace rule). Enforced by agents.
   */
  | 'mesh'
  /** No selector: every workload in its namespace. Enforced by agents. */
  | 'namespace'
  /** selector.matchLabels: matching workloads in its namespace. Enforced by agents. */
  | 'workload'
  /** targetRefs: the named Services (or a waypoint's, or every waypoint's), enforced by their waypoint only. */
  | 'service';

export interface AuthorizationPolicy {
  name: string;
  namespace: string;
  action: AuthorizationAction;
  scope: PolicyScope;
  /** For scope `workload`, and `mesh` with a selector. */
  selector?: Record<string, string>;
  /** For scope `service`: `namespace/name` of each targeted Service. */
  targetServices?: string[];
  /** No rules: ALLOW matches nothing (deny all), DENY matches nothing. Istio semantics. */
  rules: CompiledRule[];
  /** `L7` when any rule is L7 (lib/policy/authz.ts ruleLayer): agents see only their L4 parts. */
  layer: PolicyLayer;
  /**
   * Istio's `istio.io/dry-run` annotation (ANNOTATION_DRY_RUN) read true: the action the policy was
   * written with, which it is judged with in shadow (lib/policy/authz.ts dryRunOf), its would-be
   * verdict counted and logged, never enforced. Such a policy is sent with `action` AUDIT, so a data
   * plane older than this field only logs its matches and never enforces it (policyAction).
   */
  dryRun?: 'ALLOW' | 'DENY';
}

/** The action a policy was written with: a dry-run policy's (sent as AUDIT) is the one it shadows. */
export function policyAction(p: Pick<AuthorizationPolicy, 'action' | 'dryRun'>): AuthorizationAction {
  return p.dryRun ?? p.action;
}

export interface PeerAuthentication {
  name: string;
  namespace: string;
  /** `workload` only for a selector with labels; one without is namespace-wide (Istio). */
  scope: 'mesh' | 'namespace' | 'workload';
  selector?: Record<string, string>;
  /** Absent (no mode, or UNSET): inherit from the wider scope. DISABLE is compiled PERMISSIVE. */
  mode?: MtlsMode;
  /** Only for scope `workload`; a port written UNSET is left out (it inherits the workload's mode). */
  portLevelMtls?: Record<string, MtlsMode>;
}

/**
 * A RequestAuthentication (Istio's, attached by targetRefs): the JWT rules a waypoint applies to the
 * requests for its target Services (lib/policy/jwt.ts). Only a waypoint sees a request's token, so
 * scope is always `service`; waypointTargets lists the Services.
 */
export interface RequestAuthentication {
  name: string;
  namespace: string;
  /** `namespace/name` of each targeted Service (always by targetRefs: enforced by their waypoints only). */
  targetServices: string[];
  jwtRules: JwtRule[];
}

// ---------------------------------------------------------------------------------------------
// Traffic policy (per service; enforced by the waypoint, connection limits also by agents)

export interface TrafficPolicy {
  name: string;
  namespace: string;
  /** `namespace/name` of the Service. */
  service: string;
  timeouts: { requestMs?: number; perTryMs?: number; idleMs?: number; connectMs?: number };
  retries?: {
    attempts: number;
    retryOn: string[];
    budget?: { percent: number; minRetryConcurrency: number };
  };
  connectionLimits?: { maxConnections?: number; maxPendingRequests?: number; maxRequests?: number };
  outlierDetection?: {
    consecutive5xx: number;
    intervalMs: number;
    baseEjectionTimeMs: number;
    maxEjectionPercent: number;
  };
  loadBalancer: LoadBalancerPolicy;
  /** Multi-cluster: cluster preference; absent: endpoints of every cluster alike (Istio's default). */
  locality?: LocalityPolicy;
  rateLimit?: { tokens: number; fillIntervalMs: number; per: RateLimitScope };
  /** Shared quota: `limit` requests per `windowMs`, counted in the waypoint's quota store. */
  quota?: { limit: number; windowMs: number; per: 'service' | 'source' };
  fault?: {
    delay?: { fixedDelayMs: number; percentage: number };
    abort?: { httpStatus: number; percentage: number };
  };
}

// ---------------------------------------------------------------------------------------------
// Routes (HTTPRoute and GRPCRoute compiled to one shape; gRPC methods become path matches)

export interface StringMatch {
  type: 'Exact' | 'RegularExpression';
  name: string;
  value: string;
}

export interface RouteMatch {
  path?: { type: 'Exact' | 'PathPrefix' | 'RegularExpression'; value: string };
  headers: StringMatch[];
  queryParams: StringMatch[];
  method?: string;
  /**
   * GRPCRoute only: the characters of the match's service and method as written (0 when left
   * out), which rank GRPCRoute rules before header matches in place of the path's type
   * (grpcroute_types.go GRPCRouteRule.Matches).
   */
  grpc?: GrpcMatchRank;
}

export interface GrpcMatchRank {
  serviceChars: number;
  methodChars: number;
}

export interface HeaderEdits {
  set: Array<{ name: string; value: string }>;
  add: Array<{ name: string; value: string }>;
  remove: string[];
}

export interface PathRewrite {
  type: 'ReplaceFullPath' | 'ReplacePrefixMatch';
  value: string;
}

export interface RouteBackend {
  /** `namespace/name` of the Service. */
  service: string;
  hostname: string;
  port?: number;
  weight: number;
  filters: RouteFilter[];
  /**
   * Why the controller refused the reference (a cross-namespace backendRef without a
   * ReferenceGrant): requests routed here get 500, as for a Service that does not exist.
   */
  refused?: string;
}

export type RouteFilter =
  | { type: 'RequestHeaderModifier'; headers: HeaderEdits }
  | { type: 'ResponseHeaderModifier'; headers: HeaderEdits }
  | { type: 'URLRewrite'; hostname?: string; path?: PathRewrite }
  | {
      type: 'RequestRedirect';
      scheme?: 'http' | 'https';
      hostname?: string;
      path?: PathRewrite;
      port?: number;
      statusCode: number;
    }
  | { type: 'RequestMirror'; backend: RouteBackend; percent: number }
  | {
      /** Gateway API HTTPCORSFilter (GEP-1767); `*` entries are wildcards, maxAge in seconds. */
      type: 'CORS';
      allowOrigins: string[];
      allowCredentials: boolean;
      allowMethods: string[];
      allowHeaders: string[];
      exposeHeaders: string[];
      maxAge: number;
    };

export interface RouteRule {
  name?: string;
  /** OR of matches; a rule without matches gets one `PathPrefix /` match. */
  matches: RouteMatch[];
  filters: RouteFilter[];
  backends: RouteBackend[];
  timeouts: { requestMs?: number; backendRequestMs?: number };
  /**
   * The rule's retries (Gateway API HTTPRouteRetry, GEP-1731), in place of its backend's
   * TrafficPolicy retries: the status codes retried (connection failures, resets and per-try
   * timeouts always are), the most retries (`attempts`, unset: the backend's), and the least wait
   * before each (`backoffMs`, unset: the default backoff).
   */
  retry?: { codes: number[]; attempts?: number; backoffMs?: number };
}

export interface Route {
  name: string;
  namespace: string;
  kind: 'HTTPRoute' | 'GRPCRoute';
  /**
   * `namespace/name` of the parent Service. When its namespace is not the route's, the route is a
   * GAMMA consumer route: it applies only to clients in the route's namespace (isConsumerRoute).
   */
  service: string;
  /** Parent port, if the parentRef names one; otherwise every port of the service. */
  port?: number;
  hostnames: string[];
  rules: RouteRule[];
  /** Creation time then name: the Gateway API's precedence tie-break between routes. */
  order: string;
}

/**
 * GAMMA (GEP-1294): a route in the parent Service's namespace is a producer route and applies to
 * every client; one in another namespace is a consumer route and applies only to clients in its own
 * namespace, where it takes the place of the Service's producer routes.
 */
export function isConsumerRoute(r: Pick<Route, 'namespace' | 'service'>): boolean {
  return !r.service.startsWith(`${r.namespace}/`);
}

// ---------------------------------------------------------------------------------------------
// Per-consumer views

/** What one node's agent needs. */
export interface AgentConfig {
  node: string;
  /**
   * Every workload scheduled on this node (enrolled or not) and every enrolled workload of the mesh
   * (its identity and node vouch for a tunnel's forwarded client; pods are dialled by address).
   */
  workloads: Workload[];
  /** Every service a local workload may reach, with endpoints and their node addresses. */
  services: Service[];
  /** Policies that select a local workload (mesh, namespace or workload scope). */
  policies: AuthorizationPolicy[];
  peerAuthentications: PeerAuthentication[];
  waypoints: Waypoint[];
  /** Traffic policies of the services above (agents use loadBalancer and connection limits). */
  trafficPolicies?: TrafficPolicy[];
}

/** What one namespace's waypoint needs. */
export interface WaypointConfig {
  namespace: string;
  /** Services of the namespace (and backends its routes name in other namespaces). */
  services: Service[];
  routes: Route[];
  trafficPolicies: TrafficPolicy[];
  /** Policies enforced at the waypoint: service-targeted ones and L7 ones of its namespace. */
  policies: AuthorizationPolicy[];
  /** RequestAuthentications attached to its Services (absent from a controller that predates them). */
  requestAuthentications?: RequestAuthentication[];
  /** This namespace's waypoints (for its own identity and address). */
  waypoints: Waypoint[];
  /**
   * Who holds each workload address of the mesh (identity and node), and nothing else of the
   * workloads: a caller's `forwarded: for=` is honoured only as the agents honour it
   * (lib/hbone/forwarded.ts). Sent as deltas: a pod change elsewhere costs one entry, a label or
   * Service membership change nothing.
   */
  addressOwners?: AddressOwner[];
}

/**
 * Who holds a workload address, as far as the `for=` decision cares (lib/hbone/forwarded.ts
 * ForwardedView.addressOwner): the identity of the workload at `ip` and the address of its node.
 */
export interface AddressOwner {
  ip: string;
  /**
   * The workload's identity. Absent when it is not enrolled (its address vouches for nobody), and
   * when workloads of different identities or nodes hold the address at once (no claim on it is
   * believed until one of them lets it go).
   */
  spiffeId?: string;
  nodeIp?: string;
  /**
   * The namespace of the waypoint of this cluster the workload is bound to across namespaces by
   * its own or its namespace's labels (foreignWaypointNamespace): that waypoint takes tunnels
   * addressed to this address, for the workload's Services (waypoint/src/proxy.ts resolveService).
   * Absent otherwise, and when its holders disagree.
   */
  waypointNamespace?: string;
}

/** The whole compiled mesh, indexed for the config server. */
export interface MeshModel {
  workloads: Map<string, Workload>;
  services: Map<string, Service>;
  policies: Map<string, AuthorizationPolicy>;
  requestAuthentications: Map<string, RequestAuthentication>;
  peerAuthentications: Map<string, PeerAuthentication>;
  trafficPolicies: Map<string, TrafficPolicy>;
  routes: Map<string, Route>;
  waypoints: Map<string, Waypoint>;
}

/** A model with nothing in it (the compile's start; tests fill in what they need). */
export function emptyMeshModel(): MeshModel {
  return { workloads: new Map(), services: new Map(), policies: new Map(), requestAuthentications: new Map(), peerAuthentications: new Map(), trafficPolicies: new Map(), routes: new Map(), waypoints: new Map() };
}

/**
 * The Services at whose waypoint a policy applies: only a policy attached by targetRefs (scope
 * `service`); every other is the agents' (Istio pilot policyattachment.go: "waypoints never use
 * selector"). The one rule for what a waypoint is sent (controller/src/xds/views.ts) and what it
 * enforces (lib/policy/authz.ts).
 */
export function waypointTargets(policy: Pick<AuthorizationPolicy, 'scope' | 'targetServices'> | Pick<RequestAuthentication, 'targetServices'>): readonly string[] {
  // A RequestAuthentication is attached by targetRefs only; an AuthorizationPolicy by its scope.
  return 'scope' in policy && policy.scope !== 'service' ? [] : policy.targetServices ?? [];
}

/** Does an authorization policy of scope mesh/namespace/workload apply to the workload? */
export function policySelectsWorkload(
  policy: Pick<AuthorizationPolicy, 'scope' | 'namespace' | 'selector'> | Pick<PeerAuthentication, 'scope' | 'namespace' | 'selector'>,
  workload: Pick<Workload, 'namespace' | 'labels'>,
): boolean {
  switch (policy.scope) {
    case 'mesh':
      return labelsMatch(policy.selector ?? {}, workload.labels);
    case 'namespace':
      return policy.namespace === workload.namespace;
    case 'workload':
      return policy.namespace === workload.namespace && labelsMatch(policy.selector ?? {}, workload.labels);
    case 'service':
      return false;
  }
}

/** A workload's mTLS mode and the PeerAuthentication that set it (none: the PERMISSIVE default). */
export interface ResolvedMtls {
  mode: MtlsMode;
  portModes?: Record<string, MtlsMode>;
  setBy?: PeerAuthentication;
}

/**
 * Istio's PeerAuthentication precedence (istio/istio pilot/pkg/serviceregistry/kube/controller/
 * ambient/policies.go convertedSelectorPeerAuthentications): at each level, mesh (root namespace),
 * namespace and workload (a selector with labels), only the oldest policy counts, whatever its
 * mode; the most specific level with a mode decides, a level whose policy has none (or UNSET)
 * inherits from the one above, not from a younger policy of its own level. Port-level modes come
 * from the workload policy only. `peerAuths` must be oldest first (creationTimestamp, then
 * namespace/name), as compile() lists them.
 */
export function resolveMtls(peerAuths: Iterable<PeerAuthentication>, workload: Pick<Workload, 'namespace' | 'labels'>): ResolvedMtls {
  let mesh: PeerAuthentication | undefined;
  let ns: PeerAuthentication | undefined;
  let wl: PeerAuthentication | undefined;
  for (const pa of peerAuths) {
    if (pa.scope === 'mesh') mesh ??= pa;
    else if (pa.scope === 'namespace' && pa.namespace === workload.namespace) ns ??= pa;
    else if (pa.scope === 'workload' && policySelectsWorkload(pa, workload)) wl ??= pa;
  }
  const setBy = [wl, ns, mesh].find((pa) => pa?.mode !== undefined);
  const mode = setBy?.mode ?? 'PERMISSIVE';
  return {
    mode,
    ...(wl?.portLevelMtls && Object.keys(wl.portLevelMtls).length > 0 ? { portModes: { ...wl.portLevelMtls } } : {}),
    ...(setBy ? { setBy } : {}),
  };
}

export function labelsMatch(selector: Record<string, string>, labels: Record<string, string>): boolean {
  for (const [k, v] of Object.entries(selector)) if (labels[k] !== v) return false;
  return true;
}
