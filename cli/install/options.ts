// Options of `weftctl install`, their defaults, and the checks that run before anything renders.
import { InstallOptionError } from './errors.ts';
import { trustDomainFlags } from '../../lib/main.ts';
import type { InstallValues } from './values.ts';

/** How the agent learns which pods run on its node. */
export type CniMode = 'none';

/** The levels the controller's --log-level accepts (controller/src/log.ts). */
export type LogLevel = 'error' | 'warn' | 'info' | 'debug';

export interface InstallOptions {
  /** Container image with the agent, controller and waypoint (one image, chosen by command). Required. */
  image: string;
  /** SPIFFE trust domain of workload identities, e.g. `cluster.local`. Required. */
  trustDomain: string;
  /**
   * Other trust domains of the mesh (Istio's meshConfig.trustDomainAliases): agents, waypoints and
   * the east-west gateway admit their identities, and AuthorizationPolicy principals written in any
   * of them stand for the same service account in all (docs/SECURITY.md). Default none.
   */
  trustDomainAliases?: readonly string[];
  /** Namespace of the controller and agents. Default {@link DEFAULT_NAMESPACE}. */
  namespace?: string;
  /** Controller replicas. Default 1. */
  controllerReplicas?: number;
  /** Log level of agents and controller. Default `info`. */
  logLevel?: LogLevel | string;
  /**
   * `none` (the default and only mode so far): no CNI plugin; the agent finds pod network
   * namespaces by scanning /proc/<pid>/ns/net and the named netns under /var/run/netns.
   */
  cniMode?: CniMode | string;
  /**
   * A Secret in the install namespace holding the CA: kubernetes.io/tls (tls.crt, tls.key, and
   * ca.crt for an intermediate), or Istio's `cacerts` layout (ca-cert.pem, ca-key.pem,
   * root-cert.pem, cert-chain.pem). Without it the controller generates the cluster's root once and
   * keeps it in the Secret `weft-ca`, which every replica and restart then shares.
   */
  caSecret?: string;
  /** Folder of CRD YAML files. Default: `deploy/crds` of this repository. */
  crdDir?: string;
  /** Receives one line per thing the operator should know (e.g. built-in CRDs used). */
  warn?: (message: string) => void;
  /** Operator knobs from `-f values.yaml` (values.ts): resources, nodeSelector, tolerations, ... */
  values?: InstallValues;
  /** Also run `weftctl dashboard` in the cluster beside the controller (dashboard.ts). Default false. */
  dashboard?: boolean;
  /**
   * Agents, waypoints and the controller also serve their read-only admin paths on the metrics
   * port (weftctl certs/bpf/proxy-status/tap/status and the dashboard on a cluster read them there).
   * Default: on with the dashboard, off otherwise (whoever reaches 15020 could read config and flows).
   */
  debugEndpoints?: boolean;
  /**
   * Agents splice authorized same-node connections pod to pod in the kernel (docs/ARCHITECTURE.md,
   * data path step 5; agent --splice). Default false: they carry the bytes themselves.
   */
  splice?: boolean;
  /**
   * Multi-cluster (docs/ARCHITECTURE.md, "Multi-cluster"): this cluster's ID. The controller then
   * reads the remote clusters named by kubeconfig Secrets labelled weft.dev/multicluster=true in
   * its namespace (`weftctl create-remote-secret` writes them) and serves this cluster's export on
   * 15014 to its east-west gateway.
   */
  clusterId?: string;
  /** Multi-cluster: this cluster's network (default: the cluster ID); the install namespace is labelled with it. */
  network?: string;
  /** Multi-cluster: run the east-west gateway (eastwest.ts), the door into this network for the others. Needs clusterId. */
  eastwest?: boolean;
  /**
   * Multi-cluster: most Services and endpoints the controller imports from one remote cluster
   * (controller --remote-max-services, --remote-max-endpoints; past them the Services last by
   * namespace/name are left out, named). Default: the controller's, 5,000 and 50,000. Need clusterId.
   */
  remoteMaxServices?: number;
  remoteMaxEndpoints?: number;
  /** Multi-cluster: most VIPs x ports the controller imports from one remote cluster (controller --remote-max-destinations; default 16,384). Needs clusterId. */
  remoteMaxDestinations?: number;
}

export const DEFAULT_NAMESPACE = 'weft-system';
export const DEFAULT_TRUST_DOMAIN = 'cluster.local';
export const DEFAULT_CONTROLLER_REPLICAS = 1;
export const MAX_CONTROLLER_REPLICAS = 9;
export const DEFAULT_LOG_LEVEL: LogLevel = 'info';
export const LOG_LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug'];
export const CNI_MODES: readonly CniMode[] = ['none'];
/** Namespaces Kubernetes makes for itself and its workloads; never Weft's. */
export const KUBERNETES_NAMESPACES = ['default', 'kube-system', 'kube-public', 'kube-node-lease'] as const;

/** Options after defaults and validation. */
export interface ResolvedInstallOptions {
  image: string;
  trustDomain: string;
  /** Distinct, none of them the trust domain itself. */
  trustDomainAliases: string[];
  namespace: string;
  controllerReplicas: number;
  logLevel: LogLevel;
  cniMode: CniMode;
  caSecret: string | undefined;
  dashboard: boolean;
  debugEndpoints: boolean;
  splice: boolean;
  /** Multi-cluster settings; absent for a single cluster. */
  multicluster?: { clusterId: string; network: string; eastwest: boolean; remoteMaxServices?: number; remoteMaxEndpoints?: number; remoteMaxDestinations?: number };
}

// Docker/OCI reference grammar (distribution/reference): [domain[:port]/]path[:tag][@digest].
const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const DOMAIN = `(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[0-9a-fA-F:]+\\])(?::[0-9]+)?`;
const PATH_COMPONENT = '[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*';
const TAG = '[\\w][\\w.-]{0,127}';
const DIGEST = '[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}';
const IMAGE_REFERENCE = new RegExp(
  `^(?:${DOMAIN}/)?${PATH_COMPONENT}(?:/${PATH_COMPONENT})*(?::${TAG})?(?:@${DIGEST})?$`,
);
const MAX_IMAGE_LENGTH = 255 + 128 + 100;

// A Kubernetes namespace is an RFC 1123 label.
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
// Secret names are RFC 1123 subdomains.
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/** Applies defaults and rejects values that cannot render; throws {@link InstallOptionError}. */
export function resolveInstallOptions(opts: InstallOptions): ResolvedInstallOptions {
  const image = (opts.image ?? '').trim();
  if (!image) {
    throw new InstallOptionError('image', '--image is empty: give the Weft container image, e.g. --image ghcr.io/acme/weft:0.1.0');
  }
  if (image.length > MAX_IMAGE_LENGTH || !IMAGE_REFERENCE.test(image)) {
    throw new InstallOptionError('image', `--image "${image}" is not a container image reference: use [registry/]repository[:tag][@sha256:digest] in lower case, e.g. ghcr.io/acme/weft:0.1.0`);
  }

  // The flags' checks as every part makes them (lib/main.ts trustDomainFlags, validateTrustDomain).
  const trustDomain = opts.trustDomain ?? '';
  trustDomainFlags(trustDomain, undefined, (m) => new InstallOptionError('trustDomain', m));
  const trustDomainAliases: string[] = [];
  for (const alias of trustDomainFlags(undefined, opts.trustDomainAliases, (m) => new InstallOptionError('trustDomainAliases', m))) {
    if (alias === trustDomain) throw new InstallOptionError('trustDomainAliases', `--trust-domain-alias "${alias}" is the trust domain itself`);
    if (!trustDomainAliases.includes(alias)) trustDomainAliases.push(alias);
  }

  const namespace = opts.namespace ?? DEFAULT_NAMESPACE;
  if (namespace.length > 63 || !DNS_LABEL.test(namespace)) {
    throw new InstallOptionError('namespace', `--namespace "${namespace}" is not a Kubernetes namespace name: use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit`);
  }

  if ((KUBERNETES_NAMESPACES as readonly string[]).includes(namespace)) {
    throw new InstallOptionError('namespace', `--namespace "${namespace}" is Kubernetes' own: Weft labels its namespace privileged (pod-security.kubernetes.io/enforce, for the agent) and out of the mesh (weft.dev/dataplane-mode: none), and uninstall deletes it; give Weft a namespace of its own, e.g. ${DEFAULT_NAMESPACE}`);
  }

  const controllerReplicas = opts.controllerReplicas ?? DEFAULT_CONTROLLER_REPLICAS;
  if (!Number.isInteger(controllerReplicas) || controllerReplicas < 1 || controllerReplicas > MAX_CONTROLLER_REPLICAS) {
    throw new InstallOptionError('controllerReplicas', `--controller-replicas ${String(controllerReplicas)} is out of range: give a whole number from 1 to ${MAX_CONTROLLER_REPLICAS}`);
  }

  const logLevel = opts.logLevel ?? DEFAULT_LOG_LEVEL;
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) {
    throw new InstallOptionError('logLevel', `--log-level "${logLevel}" is unknown: use one of ${LOG_LEVELS.join(', ')}`);
  }

  const cniMode = opts.cniMode ?? 'none';
  if (!(CNI_MODES as readonly string[]).includes(cniMode)) {
    throw new InstallOptionError('cniMode', `--cni-mode "${cniMode}" is not supported: use ${CNI_MODES.join(', ')} (the agent finds pod network namespaces through /proc; there is no Weft CNI plugin yet)`);
  }

  const caSecret = opts.caSecret;
  if (caSecret !== undefined && (caSecret.length > 253 || !DNS_SUBDOMAIN.test(caSecret))) {
    throw new InstallOptionError('caSecret', `--ca-secret "${caSecret}" is not a Secret name: use lower-case letters, digits, '-' and '.', e.g. weft-ca`);
  }

  // A cluster ID and a network are label values (topology.istio.io/network) and Secret data keys.
  const LABEL_VALUE = /^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
  if (opts.clusterId !== undefined && !LABEL_VALUE.test(opts.clusterId)) {
    throw new InstallOptionError('clusterId', `--cluster-id "${opts.clusterId}" is not a cluster ID: use at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit`);
  }
  if (opts.network !== undefined && !LABEL_VALUE.test(opts.network)) {
    throw new InstallOptionError('network', `--network "${opts.network}" is not a network name: use at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit`);
  }
  if ((opts.network !== undefined || opts.eastwest) && opts.clusterId === undefined) {
    throw new InstallOptionError('clusterId', `${opts.eastwest ? '--eastwest' : '--network'} is for a multi-cluster mesh: give this cluster's --cluster-id too`);
  }
  const quota: { remoteMaxServices?: number; remoteMaxEndpoints?: number; remoteMaxDestinations?: number } = {};
  for (const [k, flag] of [['remoteMaxServices', '--remote-max-services'], ['remoteMaxEndpoints', '--remote-max-endpoints'], ['remoteMaxDestinations', '--remote-max-destinations']] as const) {
    const n = opts[k];
    if (n === undefined) continue;
    if (!Number.isSafeInteger(n) || n < 1) throw new InstallOptionError(k, `${flag} ${String(n)} is not a whole number of at least 1`);
    if (opts.clusterId === undefined) throw new InstallOptionError('clusterId', `${flag} is for a multi-cluster mesh: give this cluster's --cluster-id too`);
    quota[k] = n;
  }
  const multicluster = opts.clusterId !== undefined ? { clusterId: opts.clusterId, network: opts.network ?? opts.clusterId, eastwest: opts.eastwest === true, ...quota } : undefined;

  return {
    image, trustDomain, trustDomainAliases, namespace, controllerReplicas, logLevel: logLevel as LogLevel, cniMode: cniMode as CniMode, caSecret, dashboard: opts.dashboard === true, debugEndpoints: opts.debugEndpoints ?? opts.dashboard === true, splice: opts.splice === true,
    ...(multicluster ? { multicluster } : {}),
  };
}
