// Kubernetes-shaped input objects: the subset of core/v1, discovery.k8s.io/v1,
// gateway.networking.k8s.io/v1 and weft.dev/v1alpha1 that the controller reads. The same shapes
// arrive from the Kubernetes API (informers) and from a local config directory (YAML documents).
// Everything read from outside is `unknown` until lib/model/validate.ts has checked it.
import type { JwtRule } from '../policy/jwt.ts';

export interface ObjectMeta {
  name: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  /** Read for pods: the controlling owner names the workload in telemetry (lib/model/workload-meta.ts). */
  ownerReferences?: Array<{ apiVersion?: string; kind: string; name: string; uid?: string; controller?: boolean }>;
}

export interface Condition {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  reason: string;
  message: string;
  lastTransitionTime?: string;
  observedGeneration?: number;
}

export interface LabelSelector {
  matchLabels?: Record<string, string>;
}

/** A Kubernetes metav1.LabelSelector requirement. */
export interface LabelSelectorRequirement {
  key: string;
  operator: 'In' | 'NotIn' | 'Exists' | 'DoesNotExist';
  /** In and NotIn: at least one; Exists and DoesNotExist: none. */
  values?: string[];
}

/** A whole metav1.LabelSelector (namespace selectors): labels and expressions, all of them must hold. */
export interface FullLabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: LabelSelectorRequirement[];
}

/**
 * Kubernetes label selector semantics (apimachinery LabelSelectorAsSelector): every matchLabels
 * pair and every expression must hold; an empty selector selects everything.
 */
export function labelSelectorMatches(sel: FullLabelSelector, labels: Readonly<Record<string, string>>): boolean {
  for (const [k, v] of Object.entries(sel.matchLabels ?? {})) if (labels[k] !== v) return false;
  for (const e of sel.matchExpressions ?? []) {
    const has = Object.hasOwn(labels, e.key);
    switch (e.operator) {
      case 'In': if (!has || !(e.values ?? []).includes(labels[e.key]!)) return false; break;
      case 'NotIn': if (has && (e.values ?? []).includes(labels[e.key]!)) return false; break;
      case 'Exists': if (!has) return false; break;
      case 'DoesNotExist': if (has) return false; break;
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Labels and well-known names

/** `ambient` enrols pods; `none` opts a pod (or a whole namespace) out. Pod overrides namespace. */
export const LABEL_DATAPLANE_MODE = 'weft.dev/dataplane-mode';
/**
 * Name of a Waypoint, on a Namespace or a Service (or a Pod, for traffic to its IP); `none`
 * (USE_WAYPOINT_NONE) opts the object out of its namespace's waypoint. The Waypoint is in the
 * object's namespace unless LABEL_USE_WAYPOINT_NAMESPACE beside it names another.
 */
export const LABEL_USE_WAYPOINT = 'weft.dev/use-waypoint';
/**
 * Namespace of the Waypoint that LABEL_USE_WAYPOINT on the same object names (Istio's
 * `istio.io/use-waypoint-namespace`); read only beside it. The Waypoint must allow the object's
 * namespace (its spec.allowedNamespaces, default Same).
 */
export const LABEL_USE_WAYPOINT_NAMESPACE = 'weft.dev/use-waypoint-namespace';
/** The `use-waypoint` value that means "no waypoint", reserved as in Istio: no Waypoint may be named so. */
export const USE_WAYPOINT_NONE = 'none';

/**
 * Istio's annotation (https://istio.io/latest/docs/reference/config/annotations/#IstioDryRun): an
 * AuthorizationPolicy of action ALLOW or DENY with it read true is not enforced, only judged in
 * shadow (https://istio.io/latest/docs/tasks/security/authorization/authz-dry-run/).
 */
export const ANNOTATION_DRY_RUN = 'istio.io/dry-run';

/**
 * The annotation's value as Istio reads it (Go's strconv.ParseBool, in pilot's authz builder and
 * its validation webhook): `1 t T TRUE true True` are true, `0 f F FALSE false False` false;
 * anything else is no boolean (undefined), which Istio's validation refuses.
 */
export function parseDryRun(value: string): boolean | undefined {
  if (['1', 't', 'T', 'TRUE', 'true', 'True'].includes(value)) return true;
  if (['0', 'f', 'F', 'FALSE', 'false', 'False'].includes(value)) return false;
  return undefined;
}

/** The waypoint an object asks for, and whose labels asked (its own or its namespace's). */
export interface UseWaypoint {
  name: string;
  namespace: string;
  /** `object`: the object's own labels; `namespace`: its Namespace's. */
  labelledOn: 'object' | 'namespace';
}

/**
 * The waypoint an object (Service, Pod) of namespace `objectNamespace` uses: its own `use-waypoint`
 * label, else its namespace's; `none` on the one that decides means none; the waypoint's namespace
 * is `use-waypoint-namespace` on the same object as that `use-waypoint`, else the object's
 * namespace (Istio pilot ambient getUseWaypoint: the object's label wins over its namespace's,
 * "none" opts out, and the namespace label is read beside the name label only).
 */
export function useWaypointOf(own: Readonly<Record<string, string>> | undefined, namespace: Readonly<Record<string, string>> | undefined, objectNamespace: string): UseWaypoint | undefined {
  const on = own?.[LABEL_USE_WAYPOINT] !== undefined ? own : namespace?.[LABEL_USE_WAYPOINT] !== undefined ? namespace : undefined;
  const name = on?.[LABEL_USE_WAYPOINT];
  if (!on || name === undefined || name === USE_WAYPOINT_NONE) return undefined;
  return { name, namespace: on[LABEL_USE_WAYPOINT_NAMESPACE] ?? objectNamespace, labelledOn: on === own ? 'object' : 'namespace' };
}
/** EndpointSlice label that names its Service. */
export const LABEL_SERVICE_NAME = 'kubernetes.io/service-name';
/** Set by the waypoint reconciler on the Deployment, Service and pods it owns. */
export const LABEL_WAYPOINT_FOR = 'weft.dev/waypoint';
/** With LABEL_WAYPOINT_FOR, marks what the waypoint reconciler made (it replaces and deletes nothing else). */
export const WAYPOINT_MANAGED_BY = { label: 'app.kubernetes.io/managed-by', value: 'weft' } as const;
/** The label selector of everything the waypoint reconciler made. */
export const WAYPOINT_OBJECTS_SELECTOR = `${LABEL_WAYPOINT_FOR},${WAYPOINT_MANAGED_BY.label}=${WAYPOINT_MANAGED_BY.value}`;

/**
 * Whether `obj` (a Deployment, Service or PodDisruptionBudget named after the Waypoint) was made by
 * this reconciler for that Waypoint, so that it may replace or delete it. Anything else of that name
 * (an application's Deployment or Service) is left alone, as Istio's deployment controller leaves a
 * resource without its managed label (pilot/pkg/config/kube/gateway/deploymentcontroller.go canManage).
 */
export function madeForWaypoint(obj: { metadata?: { labels?: Readonly<Record<string, string>> } } | undefined, waypoint: string): boolean {
  const l = obj?.metadata?.labels ?? {};
  return l[LABEL_WAYPOINT_FOR] === waypoint && l[WAYPOINT_MANAGED_BY.label] === WAYPOINT_MANAGED_BY.value;
}

export type DataplaneMode = 'ambient' | 'none';

export const WEFT_GROUP = 'weft.dev';
export const WEFT_VERSION = 'v1alpha1';
export const WEFT_API_VERSION = 'weft.dev/v1alpha1';
export const GATEWAY_GROUP = 'gateway.networking.k8s.io';
export const GATEWAY_API_VERSION = 'gateway.networking.k8s.io/v1';
/**
 * Istio's security API: AuthorizationPolicy, PeerAuthentication and RequestAuthentication are read
 * in it too (newest first), their specs being Istio's, so manifests written for Istio are enforced
 * as they are. The same name in both groups is two objects, both enforced (nameIn).
 */
export const ISTIO_SECURITY_GROUP = 'security.istio.io';
/** Istio's default root namespace (meshConfig.rootNamespace), where its policies apply mesh-wide. */
export const ISTIO_ROOT_NAMESPACE = 'istio-system';
export const ISTIO_SECURITY_API_VERSIONS = ['security.istio.io/v1', 'security.istio.io/v1beta1'] as const;
export type SecurityApiVersion = typeof WEFT_API_VERSION | (typeof ISTIO_SECURITY_API_VERSIONS)[number];

/** The group of an apiVersion (`''` for core `v1`). */
export function groupOf(apiVersion: string): string {
  const slash = apiVersion.indexOf('/');
  return slash < 0 ? '' : apiVersion.slice(0, slash);
}

// ---------------------------------------------------------------------------------------------
// core/v1 and discovery.k8s.io/v1

export interface Namespace {
  apiVersion: 'v1';
  kind: 'Namespace';
  metadata: ObjectMeta;
}

export interface Node {
  apiVersion: 'v1';
  kind: 'Node';
  metadata: ObjectMeta;
  status?: { addresses?: Array<{ type: string; address: string }> };
}

export interface ContainerPort {
  name?: string;
  containerPort: number;
  protocol?: 'TCP' | 'UDP' | 'SCTP';
}

export interface Pod {
  apiVersion: 'v1';
  kind: 'Pod';
  metadata: ObjectMeta;
  spec: {
    nodeName?: string;
    serviceAccountName?: string;
    hostNetwork?: boolean;
    containers?: Array<{ name: string; image?: string; ports?: ContainerPort[] }>;
  };
  status?: {
    phase?: 'Pending' | 'Running' | 'Succeeded' | 'Failed' | 'Unknown';
    podIP?: string;
    podIPs?: Array<{ ip: string }>;
    hostIP?: string;
    conditions?: Array<{ type: string; status: string }>;
  };
}

export interface ServicePort {
  name?: string;
  port: number;
  targetPort?: number | string;
  protocol?: 'TCP' | 'UDP' | 'SCTP';
  appProtocol?: string;
}

export interface Service {
  apiVersion: 'v1';
  kind: 'Service';
  metadata: ObjectMeta;
  spec: {
    type?: 'ClusterIP' | 'NodePort' | 'LoadBalancer' | 'ExternalName';
    selector?: Record<string, string>;
    clusterIP?: string;
    clusterIPs?: string[];
    /** Addresses kube-proxy also carries to the endpoints (read only to keep waypoints off them). */
    externalIPs?: string[];
    ports?: ServicePort[];
  };
  status?: { loadBalancer?: { ingress?: Array<{ ip?: string; hostname?: string }> } };
}

export interface EndpointSlice {
  apiVersion: 'discovery.k8s.io/v1';
  kind: 'EndpointSlice';
  metadata: ObjectMeta;
  addressType: 'IPv4' | 'IPv6' | 'FQDN';
  endpoints: Array<{
    addresses: string[];
    conditions?: { ready?: boolean; serving?: boolean; terminating?: boolean };
    nodeName?: string;
    targetRef?: { kind?: string; name?: string; namespace?: string; uid?: string };
  }>;
  ports?: Array<{ name?: string; port?: number; protocol?: string; appProtocol?: string }>;
}

// ---------------------------------------------------------------------------------------------
// weft.dev/v1alpha1

export interface Waypoint {
  apiVersion: 'weft.dev/v1alpha1';
  kind: 'Waypoint';
  metadata: ObjectMeta;
  /** Optional: a Waypoint with no spec takes every default. */
  spec?: {
    /** Identity the waypoint runs as; default `<name>` (the reconciler creates it). */
    serviceAccountName?: string;
    /** Deployment replicas in Kubernetes mode; default 1. */
    replicas?: number;
    /** Container image in Kubernetes mode; default the controller's `--waypoint-image`. */
    image?: string;
    /**
     * Requests in progress at once per waypoint replica (its `--max-requests`); beyond it a request
     * gets 503 at once. Default the waypoint's (10,000).
     */
    maxRequests?: number;
    /**
     * The Redis that TrafficPolicy `quota`s of this waypoint's Services count in, shared by its
     * replicas (`--quota-redis`, `--quota-failure-mode`). Without it such quotas are not enforced.
     */
    quotaStore?: { redis: string; failureMode?: 'open' | 'closed' };
    /**
     * The namespaces whose Services, Pods and Namespaces may use this waypoint (`use-waypoint` with
     * `use-waypoint-namespace`), as a Gateway listener's `allowedRoutes.namespaces` says which may
     * attach (Istio reads its waypoint Gateway's HBONE listener so). Default `from: Same`.
     */
    allowedNamespaces?: WaypointAllowedNamespaces;
  };
  status?: {
    conditions?: Condition[];
    /** Address agents tunnel to (the waypoint Service's cluster IP, or the local pod IP). */
    addresses?: Array<{ type?: 'IPAddress'; value: string }>;
    observedGeneration?: number;
  };
}

/** The label the API server sets on every Namespace to its name (immutable; Kubernetes 1.21+). */
export const NAMESPACE_NAME_LABEL = 'kubernetes.io/metadata.name';

/** Gateway API RouteNamespaces, for a Waypoint: which namespaces may use it. */
export interface WaypointAllowedNamespaces {
  /** `Same` (default): its own only; `All`: every namespace; `Selector`: those `selector` matches. */
  from?: 'Same' | 'All' | 'Selector';
  /** Only with `from: Selector`, and required there; an empty selector matches every namespace. */
  selector?: FullLabelSelector;
}

/**
 * Does the Waypoint allow objects of `namespace` (with `namespaceLabels`) to use it? Gateway API
 * AllowedRoutes.namespaces, as Istio applies it to waypoints (pilot ambient waypoints.go
 * AllowsAttachmentFromNamespace): Same, All, or the selector against the Namespace's labels (a
 * namespace that does not exist has none).
 */
export function waypointAllowsNamespace(wp: Pick<Waypoint, 'metadata' | 'spec'>, namespace: string, namespaceLabels: Readonly<Record<string, string>> | undefined): boolean {
  const allowed = wp.spec?.allowedNamespaces;
  switch (allowed?.from ?? 'Same') {
    case 'All':
      return true;
    case 'Selector':
      // As in Istio and the Gateway API, the selector alone decides, the Waypoint's own namespace
      // included. The API server labels every Namespace with its name (NAMESPACE_NAME_LABEL), the
      // usual way to allow one by name; a config directory's Namespace gets it here, as it would there.
      return allowed?.selector !== undefined && labelSelectorMatches(allowed.selector, { ...namespaceLabels, [NAMESPACE_NAME_LABEL]: namespace });
    case 'Same':
      return namespace === wp.metadata.namespace;
  }
}

/** AUDIT policies never decide: matches are logged (Istio's AUDIT without a logging provider). */
export type AuthorizationAction = 'ALLOW' | 'DENY' | 'AUDIT';

/** A Service (group ""), or a whole waypoint: a Waypoint (weft.dev) or, as Istio names it, a Gateway (gateway.networking.k8s.io). */
export interface PolicyTargetRef {
  group?: string;
  kind: string;
  name: string;
}

/**
 * GatewayClass names an AuthorizationPolicy in the root namespace may target to apply at every
 * waypoint of the mesh: Weft's, and Istio's spelling (pilot/pkg/model/policyattachment.go: a
 * root-namespace policy targeting GatewayClass `istio-waypoint`), so that such a policy means here
 * what it means in Istio.
 */
export const WAYPOINT_GATEWAY_CLASSES: readonly string[] = ['weft-waypoint', 'istio-waypoint'];

/**
 * An AuthorizationPolicy's targets with the field path of each (Istio model.GetTargetRefs):
 * `targetRefs` when it lists something, else the singular `targetRef`; none means a selector or
 * namespace policy.
 */
export function policyTargets(spec: { targetRefs?: PolicyTargetRef[]; targetRef?: PolicyTargetRef } | undefined): Array<{ ref: PolicyTargetRef; path: string }> {
  if (spec?.targetRefs && spec.targetRefs.length > 0) return spec.targetRefs.map((ref, i) => ({ ref, path: `spec.targetRefs[${i}]` }));
  return spec?.targetRef ? [{ ref: spec.targetRef, path: 'spec.targetRef' }] : [];
}

export interface AuthorizationSource {
  principals?: string[];
  notPrincipals?: string[];
  namespaces?: string[];
  notNamespaces?: string[];
  /** `<name>` (the policy's namespace) or `<namespace>/<name>` (Istio; not with principals or namespaces). */
  serviceAccounts?: string[];
  notServiceAccounts?: string[];
  ipBlocks?: string[];
  notIpBlocks?: string[];
  /** The client address from X-Forwarded-For (a waypoint sees it; L7). */
  remoteIpBlocks?: string[];
  notRemoteIpBlocks?: string[];
  /** `<iss>/<sub>` of the request's JWT, as a RequestAuthentication verified it (a waypoint sees it; L7). */
  requestPrincipals?: string[];
  notRequestPrincipals?: string[];
  trustDomains?: string[];
  notTrustDomains?: string[];
}

export interface AuthorizationOperation {
  /** Istio writes ports as strings; numbers are accepted too. */
  ports?: Array<string | number>;
  notPorts?: Array<string | number>;
  methods?: string[];
  notMethods?: string[];
  paths?: string[];
  notPaths?: string[];
  hosts?: string[];
  notHosts?: string[];
}

export interface AuthorizationCondition {
  key: string;
  values?: string[];
  notValues?: string[];
}

export interface AuthorizationRule {
  from?: Array<{ source: AuthorizationSource }>;
  to?: Array<{ operation: AuthorizationOperation }>;
  when?: AuthorizationCondition[];
}

export interface PolicyStatus {
  conditions?: Condition[];
  observedGeneration?: number;
}

export interface AuthorizationPolicy {
  apiVersion: SecurityApiVersion;
  kind: 'AuthorizationPolicy';
  metadata: ObjectMeta;
  /** Optional, as in Istio: no spec is an ALLOW policy with no rules (allows nothing in scope). */
  spec?: {
    selector?: LabelSelector;
    /** Empty: as if absent (Istio counts targetRefs only when it lists something). */
    targetRefs?: PolicyTargetRef[];
    /** Istio's deprecated single target: one of targetRefs. */
    targetRef?: PolicyTargetRef;
    /**
     * Default ALLOW. CUSTOM (Istio's external authorization) needs `provider`; Weft has no
     * extension providers, so it is enforced as Istio enforces a CUSTOM policy whose provider is
     * unknown: a DENY of what its rules match.
     */
    action?: AuthorizationAction | 'CUSTOM';
    /** Istio's extension provider of a CUSTOM policy (MeshConfig extensionProviders). */
    provider?: { name?: string };
    rules?: AuthorizationRule[];
  };
  status?: PolicyStatus;
}

/**
 * RequestAuthentication (Istio's security.istio.io one, https://istio.io/latest/docs/reference/config/security/request_authentication/),
 * attached by targetRefs as an AuthorizationPolicy is: the JWTs a waypoint verifies on requests to
 * the target. A request with an invalid token is refused; one without a token passes with no
 * request principal (an AuthorizationPolicy with `requestPrincipals` requires one).
 */
export interface RequestAuthentication {
  apiVersion: SecurityApiVersion;
  kind: 'RequestAuthentication';
  metadata: ObjectMeta;
  spec: {
    targetRefs?: PolicyTargetRef[];
    targetRef?: PolicyTargetRef;
    /**
     * As compiled (lib/policy/jwt.ts JwtRule), but `jwks` may be missing here for `jwksUri`, which
     * the controller fetches and compiles inline (controller/src/jwks-resolver.ts); with both,
     * `jwks` is used, as in Istio.
     */
    jwtRules?: Array<Omit<JwtRule, 'jwks'> & { jwks?: string; jwksUri?: string }>;
  };
  status?: PolicyStatus;
}

export type MtlsMode = 'STRICT' | 'PERMISSIVE';

/**
 * A PeerAuthentication's mode as written (Istio's PeerAuthentication.MutualTLS.Mode): `UNSET`
 * inherits from the wider scope (as no mode does) and `DISABLE` is `PERMISSIVE` to an ambient
 * data plane, which enforces only STRICT (istio/istio pilot ambient convertPeerAuthentication).
 */
export type PeerAuthenticationMode = MtlsMode | 'UNSET' | 'DISABLE';

export interface PeerAuthentication {
  apiVersion: SecurityApiVersion;
  kind: 'PeerAuthentication';
  metadata: ObjectMeta;
  /** Optional: no spec inherits the mode from above (namespace, then mesh). */
  spec?: {
    /** Without labels (absent, `{}`, `matchLabels: {}`) the policy is namespace-wide (mesh-wide in the root namespace), as in Istio. */
    selector?: LabelSelector;
    mtls?: { mode: PeerAuthenticationMode };
    /** Keyed by container port number; only with a selector that has labels (as in Istio). */
    portLevelMtls?: Record<string, { mode: PeerAuthenticationMode }>;
  };
  status?: PolicyStatus;
}

export type LoadBalancerPolicy = 'ROUND_ROBIN' | 'LEAST_REQUEST' | 'RANDOM';
export type RateLimitScope = 'route' | 'source';

/** Durations are Gateway API durations: `1h`, `30s`, `250ms`, or combinations like `1m30s`. */
export interface TrafficPolicy {
  apiVersion: 'weft.dev/v1alpha1';
  kind: 'TrafficPolicy';
  metadata: ObjectMeta;
  spec: {
    /** The Service (same namespace) this policy applies to. */
    targetRef: { group?: ''; kind: 'Service'; name: string };
    timeouts?: { request?: string; perTry?: string; idle?: string; connect?: string };
    retries?: {
      attempts: number;
      /** Conditions: 5xx, gateway-error, reset, connect-failure, retriable-4xx, refused-stream, or status codes. */
      retryOn?: string[];
      /** At most `percent` of active requests may be retries, but always allow `minRetryConcurrency`. */
      budget?: { percent: number; minRetryConcurrency?: number };
    };
    connectionLimits?: { maxConnections?: number; maxPendingRequests?: number; maxRequests?: number };
    outlierDetection?: {
      consecutive5xx?: number;
      interval?: string;
      baseEjectionTime?: string;
      maxEjectionPercent?: number;
    };
    loadBalancer?: { policy: LoadBalancerPolicy };
    /**
     * Multi-cluster: which clusters callers prefer (absent: every cluster's endpoints alike).
     * PreferLocal fails over to other clusters while the caller's own has no ready endpoint;
     * LocalOnly never leaves it; Weighted splits connections by `weights`.
     */
    locality?: { mode: 'PreferLocal' | 'LocalOnly' | 'Weighted'; weights?: Array<{ cluster: string; weight: number }> };
    rateLimit?: { tokens: number; fillInterval: string; per?: RateLimitScope };
    /** A quota shared by every replica of the waypoint (Redis, the Waypoint's spec.quotaStore). */
    quota?: { requests: number; window: string; per?: 'service' | 'source' };
    fault?: {
      delay?: { fixedDelay: string; percentage?: number };
      abort?: { httpStatus: number; percentage?: number };
    };
  };
  status?: PolicyStatus;
}

// ---------------------------------------------------------------------------------------------
// gateway.networking.k8s.io/v1 (mesh profile: a Service as parent)

export interface ParentReference {
  /** '' (core) for a Service parent; `gateway.networking.k8s.io` for a Gateway (not Weft's). */
  group?: string;
  /** Service for the mesh profile; other kinds belong to other controllers and are left alone. */
  kind?: string;
  name: string;
  namespace?: string;
  port?: number;
  sectionName?: string;
}

/** Is a parentRef a Service (the mesh profile, GEP-1426), i.e. Weft's to implement and report? */
export function isServiceParent(p: Pick<ParentReference, 'group' | 'kind'>): boolean {
  return (p.group ?? '') === '' && p.kind === 'Service';
}

export interface BackendRef {
  group?: string;
  kind?: string;
  name: string;
  namespace?: string;
  port?: number;
  weight?: number;
}

export interface HeaderMatch {
  type?: 'Exact' | 'RegularExpression';
  name: string;
  value: string;
}

export type PathMatchType = 'Exact' | 'PathPrefix' | 'RegularExpression';

export interface HTTPRouteMatch {
  path?: { type?: PathMatchType; value?: string };
  headers?: HeaderMatch[];
  queryParams?: HeaderMatch[];
  method?: string;
}

export interface HeaderModifier {
  set?: Array<{ name: string; value: string }>;
  add?: Array<{ name: string; value: string }>;
  remove?: string[];
}

export interface PathModifier {
  type: 'ReplaceFullPath' | 'ReplacePrefixMatch';
  replaceFullPath?: string;
  replacePrefixMatch?: string;
}

export type HTTPRouteFilter =
  | { type: 'RequestHeaderModifier'; requestHeaderModifier: HeaderModifier }
  | { type: 'ResponseHeaderModifier'; responseHeaderModifier: HeaderModifier }
  | { type: 'URLRewrite'; urlRewrite: { hostname?: string; path?: PathModifier } }
  | {
      type: 'RequestRedirect';
      requestRedirect: {
        scheme?: 'http' | 'https';
        hostname?: string;
        path?: PathModifier;
        port?: number;
        statusCode?: 301 | 302 | 303 | 307 | 308;
      };
    }
  | {
      type: 'RequestMirror';
      requestMirror: { backendRef: BackendRef; percent?: number; fraction?: { numerator: number; denominator?: number } };
    }
  | {
      /** Gateway API HTTPCORSFilter (GEP-1767, HTTPRouteCORS). */
      type: 'CORS';
      cors: { allowOrigins?: string[]; allowCredentials?: boolean; allowMethods?: string[]; allowHeaders?: string[]; exposeHeaders?: string[]; maxAge?: number };
    };

export interface RouteParentStatus {
  parentRef: ParentReference;
  controllerName: string;
  conditions: Condition[];
}

export interface RouteStatus {
  parents?: RouteParentStatus[];
}

export interface HTTPRoute {
  apiVersion: 'gateway.networking.k8s.io/v1';
  kind: 'HTTPRoute';
  metadata: ObjectMeta;
  spec: {
    parentRefs?: ParentReference[];
    hostnames?: string[];
    rules?: Array<{
      name?: string;
      matches?: HTTPRouteMatch[];
      filters?: HTTPRouteFilter[];
      backendRefs?: Array<BackendRef & { filters?: HTTPRouteFilter[] }>;
      timeouts?: { request?: string; backendRequest?: string };
      /** Gateway API HTTPRouteRetry (GEP-1731, experimental channel). */
      retry?: { codes?: number[]; attempts?: number; backoff?: string };
    }>;
  };
  status?: RouteStatus;
}

export interface GRPCMethodMatch {
  type?: 'Exact' | 'RegularExpression';
  service?: string;
  method?: string;
}

export type GRPCRouteFilter = Extract<
  HTTPRouteFilter,
  { type: 'RequestHeaderModifier' | 'ResponseHeaderModifier' | 'RequestMirror' }
>;

export interface GRPCRoute {
  apiVersion: 'gateway.networking.k8s.io/v1';
  kind: 'GRPCRoute';
  metadata: ObjectMeta;
  spec: {
    parentRefs?: ParentReference[];
    hostnames?: string[];
    rules?: Array<{
      name?: string;
      matches?: Array<{ method?: GRPCMethodMatch; headers?: HeaderMatch[] }>;
      filters?: GRPCRouteFilter[];
      backendRefs?: Array<BackendRef & { filters?: GRPCRouteFilter[] }>;
    }>;
  };
  status?: RouteStatus;
}

/**
 * Telemetry (Istio's Telemetry, simplified: providers inline): tracing, sampling and access logs
 * for the mesh (in the root namespace, no selector), a namespace (no selector) or the workloads a
 * selector picks. The most specific object sets each field; the others fill what it leaves out.
 */
export interface Telemetry {
  apiVersion: 'weft.dev/v1alpha1';
  kind: 'Telemetry';
  metadata: ObjectMeta;
  spec?: {
    selector?: LabelSelector;
    tracing?: {
      /** OTLP/HTTP traces endpoint, e.g. `http://otel-collector.observability:4318/v1/traces`. */
      otlp?: { endpoint: string };
      /** Percentage of new traces sampled (a caller's sampled flag is honoured); default 1. */
      randomSamplingPercentage?: number;
      /** No spans at all from the selected workloads. */
      disableSpanReporting?: boolean;
    };
    accessLogging?: {
      /** No access log lines for the selected workloads. */
      disabled?: boolean;
      /** `json` (default) or `text`. */
      encoding?: 'JSON' | 'TEXT';
      /** Also export each line as an OTLP/HTTP log record (agents). */
      otlp?: { endpoint: string };
    };
  };
  status?: PolicyStatus;
}

/**
 * Gateway API ReferenceGrant (v1beta1, or v1 from Gateway API v1.5): lets objects of `from` in other namespaces refer to objects
 * of `to` in this one. A cross-namespace backendRef needs one in the backend's namespace.
 */
export interface ReferenceGrant {
  apiVersion: 'gateway.networking.k8s.io/v1beta1' | 'gateway.networking.k8s.io/v1';
  kind: 'ReferenceGrant';
  metadata: ObjectMeta;
  spec: {
    from: Array<{ group: string; kind: string; namespace: string }>;
    to: Array<{ group: string; kind: string; name?: string }>;
  };
}

// ---------------------------------------------------------------------------------------------

export type MeshObject =
  | Namespace
  | Node
  | Pod
  | Service
  | EndpointSlice
  | Waypoint
  | AuthorizationPolicy
  | RequestAuthentication
  | PeerAuthentication
  | TrafficPolicy
  | Telemetry
  | HTTPRoute
  | GRPCRoute
  | ReferenceGrant;

export type MeshKind = MeshObject['kind'];

export interface KindInfo {
  kind: MeshKind;
  apiVersion: string;
  group: string;
  version: string;
  plural: string;
  namespaced: boolean;
  /** Objects of this kind carry a status the controller writes (Accepted/Invalid, Ready). */
  hasStatus: boolean;
  /**
   * Every apiVersion accepted for this kind, newest first (`apiVersion` is the one Weft writes and
   * watches by default); Istio's security kinds also accept ISTIO_SECURITY_API_VERSIONS, another group.
   */
  apiVersions: readonly string[];
}

function kindInfo(kind: MeshKind, apiVersion: string, plural: string, namespaced: boolean, hasStatus: boolean, alsoAccepted: readonly string[] = []): KindInfo {
  const group = groupOf(apiVersion);
  const version = apiVersion.slice(apiVersion.indexOf('/') + 1);
  return { kind, apiVersion, group, version, plural, namespaced, hasStatus, apiVersions: [...alsoAccepted, apiVersion] };
}

/** Every kind the controller reads, with its API coordinates. */
export const KINDS: Readonly<Record<MeshKind, KindInfo>> = {
  Namespace: kindInfo('Namespace', 'v1', 'namespaces', false, false),
  Node: kindInfo('Node', 'v1', 'nodes', false, false),
  Pod: kindInfo('Pod', 'v1', 'pods', true, false),
  Service: kindInfo('Service', 'v1', 'services', true, false),
  EndpointSlice: kindInfo('EndpointSlice', 'discovery.k8s.io/v1', 'endpointslices', true, false),
  Waypoint: kindInfo('Waypoint', WEFT_API_VERSION, 'waypoints', true, true),
  AuthorizationPolicy: kindInfo('AuthorizationPolicy', WEFT_API_VERSION, 'authorizationpolicies', true, true, ISTIO_SECURITY_API_VERSIONS),
  RequestAuthentication: kindInfo('RequestAuthentication', WEFT_API_VERSION, 'requestauthentications', true, true, ISTIO_SECURITY_API_VERSIONS),
  PeerAuthentication: kindInfo('PeerAuthentication', WEFT_API_VERSION, 'peerauthentications', true, true, ISTIO_SECURITY_API_VERSIONS),
  TrafficPolicy: kindInfo('TrafficPolicy', WEFT_API_VERSION, 'trafficpolicies', true, true),
  Telemetry: kindInfo('Telemetry', WEFT_API_VERSION, 'telemetries', true, true),
  HTTPRoute: kindInfo('HTTPRoute', GATEWAY_API_VERSION, 'httproutes', true, true),
  GRPCRoute: kindInfo('GRPCRoute', GATEWAY_API_VERSION, 'grpcroutes', true, true),
  ReferenceGrant: kindInfo('ReferenceGrant', 'gateway.networking.k8s.io/v1beta1', 'referencegrants', true, false, ['gateway.networking.k8s.io/v1']),
};

export function isMeshKind(kind: unknown): kind is MeshKind {
  return typeof kind === 'string' && Object.hasOwn(KINDS, kind);
}

/** The API groups `kind` is read in, its own first (Istio's security kinds: weft.dev, security.istio.io). */
export function groupsOf(kind: MeshKind): string[] {
  return [...new Set([KINDS[kind].group, ...KINDS[kind].apiVersions.map(groupOf)])];
}

/** Whether an object of `kind` in `apiVersion` is of another API group than its kind's own (Istio's security.istio.io). */
export function inOtherGroup(kind: string, apiVersion: string | undefined): boolean {
  return apiVersion !== undefined && isMeshKind(kind) && groupOf(apiVersion) !== KINDS[kind].group;
}

/**
 * The name an object goes by in Weft (its key, its compiled policy's id `namespace/name`, logs,
 * metrics, statuses): metadata.name, followed by `@group` for an object of another API group than
 * its kind's own (`httpbin@security.istio.io`). Kubernetes keeps a weft.dev and a security.istio.io
 * object of one name as two objects, and so does Weft: both are enforced, as Istio enforces two
 * policies of different names (docs/SECURITY.md). Any other group (one the kind is not accepted in,
 * refused by validation) and a name that itself holds '@' (refused too; read from a config
 * directory, keyed before validation) take the suffix as well, the kind's own group for the latter,
 * so that no object takes another's name: a weft.dev `x@security.istio.io` is
 * `x@security.istio.io@weft.dev`, not the Istio object `x`.
 */
export function nameIn(kind: string, name: string, group: string | undefined): string {
  if (!isMeshKind(kind)) return name;
  const own = KINDS[kind].group;
  return (group === undefined || group === own) && !name.includes('@') ? name : `${name}@${group ?? own}`;
}

/**
 * `Kind/namespace/name` (or `Kind/name` for cluster-scoped kinds), the name as nameIn gives it: the
 * identity of an input object, as read (any field missing or of another type taken as empty: it is
 * keyed before validation refuses it), or of the object a status is about (its apiVersion given
 * for another group than its kind's own).
 */
export function objectKey(o: { apiVersion?: unknown; kind?: unknown; metadata?: { name?: unknown; namespace?: unknown } } | { kind: string; namespace: string; name: string; apiVersion?: string }): string {
  const str = (v: unknown) => (typeof v === 'string' ? v : '');
  const [kind, namespace, name] = 'name' in o ? [o.kind, o.namespace, o.name] : [str(o.kind), str(o.metadata?.namespace), str(o.metadata?.name)];
  const apiVersion = typeof o.apiVersion === 'string' ? o.apiVersion : undefined;
  return keyOf(kind, isMeshKind(kind) && KINDS[kind].namespaced && namespace ? namespace : undefined, name, apiVersion === undefined ? undefined : groupOf(apiVersion));
}

/** An object's key (objectKey); `group`: its API group, absent for the kind's own. */
export function keyOf(kind: string, namespace: string | undefined, name: string, group?: string): string {
  return keyOfNamed(kind, namespace, nameIn(kind, name, group));
}

/** The key of the object Weft names `weftName` (nameIn's: a compiled policy's, a finding's). */
export function keyOfNamed(kind: string, namespace: string | undefined, weftName: string): string {
  return namespace ? `${kind}/${namespace}/${weftName}` : `${kind}/${weftName}`;
}
