// Ports, names and paths that several parts agree on: the controller, the agent, waypoints, the
// rendered install (cli/install) and the waypoint Deployments the controller writes. One place, so
// a port or a mount path cannot drift between the process that listens and the manifest that
// points at it.

/** Ports of the parts (docs/ARCHITECTURE.md, "Ports"). */
export const PORTS = {
  /** agent, waypoint: loopback admin (config dump, certificates, BPF state). */
  admin: 15000,
  /** agent: captured outbound connections. */
  outbound: 15001,
  /** agent, inside each enrolled pod's netns (127.0.0.1): plaintext steered there by weft_lookup. */
  plaintext: 15006,
  /** agent, waypoint: HBONE (mTLS + HTTP/2 CONNECT). */
  hbone: 15008,
  /**
   * agent: HBONE the east-west gateway carries from other networks; admitted as on 15008, and every
   * CONNECT judged by the gateway's rules too (agent/src/inbound.ts). Not Istio's: its ztunnel
   * tells the gateway's sessions apart by the pod address they are dialled at.
   */
  hboneGateway: 15009,
  /** controller: config stream and certificate service (gRPC over TLS). */
  xds: 15012,
  /** every part: Prometheus /metrics. */
  metrics: 15020,
  /** every part: /healthz/ready. */
  readiness: 15021,
} as const;

export const READINESS_PATH = '/healthz/ready';
/** Liveness: answers while the process's event loop turns (every part serves it beside readiness). */
export const LIVENESS_PATH = '/healthz/live';

export const CONTROLLER_NAME = 'weft-controller';
export const AGENT_NAME = 'weft-agent';
/** Default install namespace (and so the controller's and the agents' namespace). */
export const DEFAULT_INSTALL_NAMESPACE = 'weft-system';

/** Audience of the projected ServiceAccount tokens agents and waypoints present to the certificate service. */
export const CONTROLLER_TOKEN_AUDIENCE = 'weft-controller';
/** Lifetime of those tokens; the kubelet refreshes them at 80 %. */
export const TOKEN_EXPIRATION_SECONDS = 3600;

/**
 * The Weft image's unprivileged user (`node` in the node:24 images, the Dockerfile's USER) by number:
 * the controller, waypoints, the east-west gateway and the dashboard run as it (a kubelet cannot
 * check runAsNonRoot against a user name).
 */
export const IMAGE_NONROOT_UID = 1000;

/** ConfigMap with the CA's public roots, in the install namespace and in every waypoint namespace. */
export const TRUST_BUNDLE_CONFIGMAP = 'weft-trust-bundle';
/** Its key, and so the file name where pods see it (Istio's name for the root bundle). */
export const TRUST_BUNDLE_KEY = 'root-cert.pem';
/** Secret in the install namespace holding the cluster's one CA when none is supplied. */
export const DEFAULT_CA_SECRET = 'weft-ca';
/** Lease the controller replicas elect their writer with. */
export const CONTROLLER_LEASE = 'weft-controller-leader';

/**
 * The waypoint's V8 young generation: 32 MB per semi-space. Node 24 lets it grow to 64 MB, two of
 * them, and keeps them once grown: a waypoint after 10 s at saturation held 225-246 MB RSS, 134 MB
 * of it new space. Measured with bench/run.ts (the L7 case, rounds alternating, docs/PERFORMANCE.md,
 * "the waypoint's young generation"): 32 MB peaks at 182-194 MB with the same CPU per request and
 * p99; 16 MB at 146-154 MB but costs about 5 % CPU at saturation and 1 ms of p99. The waypoint's
 * Deployment (the controller), the local mesh and the image's compile cache use it.
 */
export const WAYPOINT_NODE_OPTIONS = '--max-semi-space-size=32';

/** Where pods that talk to the controller (agents, waypoints) see their token and the roots. */
export const POD_PATHS = {
  token: '/var/run/secrets/weft/tokens',
  tokenFile: 'token',
  trustBundle: '/var/run/secrets/weft/trust',
} as const;

/** host:port of the controller Service, as agents and waypoints dial it. */
export function controllerAddress(namespace: string): string {
  return `${CONTROLLER_NAME}.${namespace}.svc:${PORTS.xds}`;
}

/** The controller's SPIFFE ID (its serving certificate), which agents and waypoints expect. */
export function controllerSpiffeId(trustDomain: string, namespace: string): string {
  return `spiffe://${trustDomain}/ns/${namespace}/sa/${CONTROLLER_NAME}`;
}

/** The TokenReview username of the agents' ServiceAccount. */
export function agentServiceAccountUser(namespace: string): string {
  return `system:serviceaccount:${namespace}:${AGENT_NAME}`;
}

/** The controller's admin path of every config-stream client's versions, also served read-only on its metrics port. */
export const CONTROLLER_DEBUG_CLIENTS_PATH = '/debug/clients';
/**
 * The controller's admin path that signs a waypoint's debug grant (`?waypoint=<namespace>/<name>&pod=<pod>`,
 * lib/identity/debug-grant.ts); on its metrics port only to holders of the install's debug token.
 */
export const CONTROLLER_DEBUG_GRANT_PATH = '/debug/waypoint-grant';
