// Kubernetes mode of the Waypoint reconciler: each Waypoint becomes a ServiceAccount, a Deployment
// and a ClusterIP Service (port 15008, HBONE) created through the API; the waypoint is Ready when
// its Deployment has a ready replica. Only a controller started with --kube loads this module
// (through kube-mode.ts), and with it @kubernetes/client-node.
import {
  AppsV1Api,
  CoreV1Api,
  PolicyV1Api,
  type KubeConfig,
  type KubernetesObject,
  type V1Deployment,
  type V1Service,
  type V1PodDisruptionBudget,
  type V1PodSpec,
  type V1ServiceAccount,
  type Informer,
  type ObjectCache,
} from '@kubernetes/client-node';
import { createHash } from 'node:crypto';
import { Counter, type Registry } from 'prom-client';
import { DEFAULT_TRUST_DOMAIN, HBONE_PORT, nsName } from '../../lib/model/mesh.ts';
import {
  CONTROLLER_TOKEN_AUDIENCE, DEFAULT_INSTALL_NAMESPACE, IMAGE_NONROOT_UID, LIVENESS_PATH, POD_PATHS, PORTS, READINESS_PATH, TOKEN_EXPIRATION_SECONDS,
  TRUST_BUNDLE_CONFIGMAP, TRUST_BUNDLE_KEY, WAYPOINT_NODE_OPTIONS, controllerAddress, controllerSpiffeId,
} from '../../lib/defaults.ts';
import { LABEL_DATAPLANE_MODE, LABEL_WAYPOINT_FOR, madeForWaypoint, WAYPOINT_MANAGED_BY, WAYPOINT_OBJECTS_SELECTOR, type Waypoint } from '../../lib/model/objects.ts';
import { silentLogger, type Logger } from './log.ts';
import { KeptInformer } from './sources/kube.ts';
import { waypointSpecArgs } from '../../lib/model/waypoint-spec.ts';
import { trustDomainAliasArgs } from '../../lib/main.ts';
import { BaseDriver, WaypointReconcileError, launchSpec, type WaypointLaunchSpec } from './waypoints.ts';

export interface KubeWaypointDriverOptions {
  kubeConfig: KubeConfig;
  /** Waypoint container image (Waypoint spec.image overrides). */
  image: string;
  /** The controller's namespace (its Service and SPIFFE ID); default weft-system. */
  controllerNamespace?: string;
  /** Address waypoints dial for config and certificates; default `weft-controller.<controllerNamespace>.svc:15012`. */
  controllerAddress?: string;
  trustDomain?: string;
  /**
   * The controller's --trust-domain-alias: each waypoint gets them (`--trust-domain-alias`) and
   * admits their workload identities on HBONE, as the agents do. Default none.
   */
  trustDomainAliases?: readonly string[];
  /** Waypoints also serve their read-only admin paths on the metrics port (the controller's --debug-endpoints). */
  debugEndpoints?: boolean;
  /** Publishes the trust-bundle ConfigMap a waypoint mounts, in its namespace, before its Deployment. */
  trustBundle?: { ensure(namespace: string): Promise<void> };
  logger?: Logger;
  /** Registers weft_waypoint_name_conflicts_total. */
  registry?: Registry;
}

/** Requests and limits of a waypoint container (one Node.js process, L7 proxy). */
export const WAYPOINT_RESOURCES = {
  requests: { cpu: '100m', memory: '128Mi' },
  limits: { cpu: '2', memory: '1Gi' },
};

const WAYPOINT_TOKEN_VOLUME = 'weft-token';
const WAYPOINT_TRUST_VOLUME = 'trust-bundle';

/** A Waypoint's name is taken by an object the controller did not make; it is not launched. */
export class WaypointNameConflictError extends Error {
  readonly code = 'WEFT_WAYPOINT_NAME_CONFLICT';
  readonly kind: string;
  constructor(kind: string, namespace: string, name: string) {
    super(`metadata.name: ${kind} ${namespace}/${name} exists and was not made by Weft (no labels ${LABEL_WAYPOINT_FOR}=${name}, ${WAYPOINT_MANAGED_BY.label}=${WAYPOINT_MANAGED_BY.value}); it is left alone and the waypoint is not launched: rename the Waypoint`);
    this.name = 'WaypointNameConflictError';
    this.kind = kind;
  }
}

/** What a waypoint's command line takes from the controller (its own flags, where it is reached). */
export interface WaypointArgsOptions {
  trustDomain: string;
  trustDomainAliases?: readonly string[];
  controllerNamespace: string;
  controllerAddress: string;
  debugEndpoints?: boolean;
}

/**
 * The waypoint container's arguments: the image's entrypoint takes the part name first (the
 * Dockerfile's `weft waypoint ...`), then waypoint/src/main.ts flags.
 */
export function waypointContainerArgs(spec: WaypointLaunchSpec, o: WaypointArgsOptions): string[] {
  return [
    'waypoint',
    '--namespace', spec.namespace,
    '--name', spec.name,
    '--controller', o.controllerAddress,
    '--controller-identity', controllerSpiffeId(o.trustDomain, o.controllerNamespace),
    '--trust-domain', o.trustDomain,
    ...trustDomainAliasArgs(o.trustDomainAliases),
    '--spiffe-id', spec.spiffeId,
    '--ca-bundle', `${POD_PATHS.trustBundle}/${TRUST_BUNDLE_KEY}`,
    '--token-file', `${POD_PATHS.token}/${POD_PATHS.tokenFile}`,
    ...waypointSpecArgs(spec),
    ...(o.debugEndpoints ? ['--debug-endpoints'] : []),
  ];
}

/**
 * The pod of a waypoint's Deployment: the Waypoint's own ServiceAccount with no API token (its
 * projected controller-audience token proves it), unprivileged, read-only root.
 */
export function waypointPodSpec(spec: WaypointLaunchSpec, o: WaypointArgsOptions & { image: string }): V1PodSpec {
  return {
    serviceAccountName: spec.serviceAccount,
    // The image's user by number: a kubelet cannot verify runAsNonRoot against its USER name (`node`)
    // and would refuse to start the container; RuntimeDefault seccomp with the rest meets the
    // restricted Pod Security Standard, so a waypoint runs in a namespace that enforces it.
    securityContext: { runAsNonRoot: true, runAsUser: IMAGE_NONROOT_UID, runAsGroup: IMAGE_NONROOT_UID, seccompProfile: { type: 'RuntimeDefault' } },
    // No API token: the waypoint proves itself with the projected controller-audience token.
    automountServiceAccountToken: false,
    containers: [{
      name: 'waypoint',
      image: spec.image ?? o.image,
      args: waypointContainerArgs(spec, o),
      env: [
        { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
        { name: 'NODE_OPTIONS', value: WAYPOINT_NODE_OPTIONS },
      ],
      ports: [
        { name: 'tcp-hbone', containerPort: HBONE_PORT, protocol: 'TCP' },
        { name: 'http-metrics', containerPort: PORTS.metrics, protocol: 'TCP' },
        { name: 'http-ready', containerPort: PORTS.readiness, protocol: 'TCP' },
      ],
      readinessProbe: { httpGet: { path: READINESS_PATH, port: PORTS.readiness }, periodSeconds: 2 },
      livenessProbe: { httpGet: { path: LIVENESS_PATH, port: PORTS.readiness }, periodSeconds: 10, failureThreshold: 3 },
      resources: WAYPOINT_RESOURCES,
      securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } },
      volumeMounts: [
        { name: WAYPOINT_TOKEN_VOLUME, mountPath: POD_PATHS.token, readOnly: true },
        { name: WAYPOINT_TRUST_VOLUME, mountPath: POD_PATHS.trustBundle, readOnly: true },
      ],
    }],
    volumes: [
      {
        name: WAYPOINT_TOKEN_VOLUME,
        projected: { sources: [{ serviceAccountToken: { audience: CONTROLLER_TOKEN_AUDIENCE, expirationSeconds: TOKEN_EXPIRATION_SECONDS, path: POD_PATHS.tokenFile } }] },
      },
      { name: WAYPOINT_TRUST_VOLUME, configMap: { name: TRUST_BUNDLE_CONFIGMAP } },
    ],
  };
}


type Inf<T extends KubernetesObject> = Informer<T> & ObjectCache<T>;

/** Kubernetes mode: a ServiceAccount, Deployment and Service per Waypoint, through the API. */
export class KubeWaypointDriver extends BaseDriver {
  readonly #o: KubeWaypointDriverOptions;
  readonly #log: Logger;
  readonly #apps: AppsV1Api;
  readonly #core: CoreV1Api;
  readonly #policy: PolicyV1Api;
  #deployments: Inf<V1Deployment> | undefined;
  #services: Inf<V1Service> | undefined;
  #budgets: Inf<V1PodDisruptionBudget> | undefined;
  #accounts: Inf<V1ServiceAccount> | undefined;
  #kept: Array<{ stop(): Promise<void> }> = [];
  #known = new Set<string>();
  /** Waypoints whose name another object holds, by `namespace/name`: why. */
  readonly #conflicts = new Map<string, WaypointNameConflictError>();
  readonly #conflictsCounter: Counter | undefined;

  constructor(options: KubeWaypointDriverOptions) {
    super();
    this.#o = options;
    this.#log = options.logger ?? silentLogger;
    this.#apps = options.kubeConfig.makeApiClient(AppsV1Api);
    this.#core = options.kubeConfig.makeApiClient(CoreV1Api);
    this.#policy = options.kubeConfig.makeApiClient(PolicyV1Api);
    this.#conflictsCounter = options.registry
      ? new Counter({ name: 'weft_waypoint_name_conflicts_total', help: 'Waypoints not launched because an object the controller did not make holds their name, by that object\'s kind', labelNames: ['kind'], registers: [options.registry] })
      : undefined;
  }

  async #startInformers(): Promise<void> {
    if (this.#deployments) return;
    // What the reconciler made only: others' objects labelled weft.dev/waypoint are not even cached.
    const selector = WAYPOINT_OBJECTS_SELECTOR;
    // Kept like the controller's own informers (restarted with backoff, resumed from their resourceVersion).
    const deployments = new KeptInformer<V1Deployment>({
      kubeConfig: this.#o.kubeConfig, path: '/apis/apps/v1/deployments', labelSelector: selector, what: 'waypoint Deployments', log: this.#log,
      list: () => this.#apps.listDeploymentForAllNamespaces({ labelSelector: selector }),
    });
    const services = new KeptInformer<V1Service>({
      kubeConfig: this.#o.kubeConfig, path: '/api/v1/services', labelSelector: selector, what: 'waypoint Services', log: this.#log,
      list: () => this.#core.listServiceForAllNamespaces({ labelSelector: selector }),
    });
    // The budgets and accounts it made, so that a reconcile of an unchanged Waypoint reads nothing
    // from the API server (it read each one per Waypoint per reconcile).
    const budgets = new KeptInformer<V1PodDisruptionBudget>({
      kubeConfig: this.#o.kubeConfig, path: '/apis/policy/v1/poddisruptionbudgets', labelSelector: selector, what: 'waypoint PodDisruptionBudgets', log: this.#log,
      list: () => this.#policy.listPodDisruptionBudgetForAllNamespaces({ labelSelector: selector }),
    });
    const accounts = new KeptInformer<V1ServiceAccount>({
      kubeConfig: this.#o.kubeConfig, path: '/api/v1/serviceaccounts', labelSelector: selector, what: 'waypoint ServiceAccounts', log: this.#log,
      list: () => this.#core.listServiceAccountForAllNamespaces({ labelSelector: selector }),
    });
    this.#kept = [deployments, services, budgets, accounts];
    this.#deployments = deployments.informer;
    this.#services = services.informer;
    this.#budgets = budgets.informer;
    this.#accounts = accounts.informer;
    for (const inf of [this.#deployments, this.#services] as Array<Inf<KubernetesObject>>) inf.on('change', () => this.#refresh());
    await Promise.all([deployments.start(), services.start(), budgets.start(), accounts.start()]);
  }

  #refresh(): void {
    for (const key of this.#known) {
      const [ns, name] = key.split('/') as [string, string];
      const conflict = this.#conflicts.get(key);
      if (conflict) {
        this.setRuntime(key, { ready: false, reason: 'NameConflict', message: conflict.message });
        continue;
      }
      // Only what the reconciler made counts (a replica that is not the leader knows no conflicts).
      const made = <T extends KubernetesObject>(o: T | undefined): T | undefined => (madeForWaypoint(o, name) ? o : undefined);
      const d = made(this.#deployments?.get(name, ns));
      const s = made(this.#services?.get(name, ns));
      const address = s?.spec?.clusterIP && s.spec.clusterIP !== 'None' ? s.spec.clusterIP : undefined;
      const ready = (d?.status?.readyReplicas ?? 0) > 0;
      const reason = !d ? 'DeploymentMissing' : !ready ? 'NoReadyReplicas' : !address ? 'NoServiceAddress' : undefined;
      this.setRuntime(key, { ...(address ? { address } : {}), ready: ready && !!address, ...(reason ? { reason } : {}) });
    }
  }

  /** Follows the waypoints' Deployments and Services without writing (a replica that is not the leader). */
  override async observe(waypoints: readonly Waypoint[]): Promise<void> {
    await this.#startInformers();
    this.#known = new Set(waypoints.map((wp) => nsName(wp.metadata.namespace!, wp.metadata.name)));
    for (const key of [...this.runtimeMap.keys()]) if (!this.#known.has(key)) this.setRuntime(key, undefined);
    this.#refresh();
  }

  async reconcile(waypoints: readonly Waypoint[]): Promise<void> {
    await this.#startInformers();
    const want = new Set<string>();
    const errors: Error[] = [];
    for (const wp of waypoints) {
      const key = nsName(wp.metadata.namespace!, wp.metadata.name);
      want.add(key);
      this.#known.add(key);
      try {
        await this.#ensure(wp);
        this.#conflicts.delete(key);
      } catch (e) {
        if (e instanceof WaypointNameConflictError) this.#conflict(key, e);
        else errors.push(new WaypointReconcileError(key, e));
      }
    }
    for (const key of [...this.#known]) {
      if (want.has(key)) continue;
      const [namespace, name] = key.split('/') as [string, string];
      try {
        // Only what this reconciler made: an object that merely has the name stays.
        if (madeForWaypoint(await readOrUndefined(this.#apps.readNamespacedDeployment({ name, namespace })), name)) await ignore404(this.#apps.deleteNamespacedDeployment({ name, namespace }));
        if (madeForWaypoint(await readOrUndefined(this.#core.readNamespacedService({ name, namespace })), name)) await ignore404(this.#core.deleteNamespacedService({ name, namespace }));
        if (madeForWaypoint(await readOrUndefined(this.#policy.readNamespacedPodDisruptionBudget({ name, namespace })), name)) await ignore404(this.#policy.deleteNamespacedPodDisruptionBudget({ name, namespace }));
        this.#conflicts.delete(key);
        this.#known.delete(key);
        this.setRuntime(key, undefined);
      } catch (e) {
        errors.push(new WaypointReconcileError(key, e));
      }
    }
    this.#refresh();
    if (errors.length > 0) throw new AggregateError(errors, errors.map((e) => e.message).join('; '));
  }

  /** Counts and logs a name conflict once, then keeps the Waypoint not ready with the reason. */
  #conflict(key: string, e: WaypointNameConflictError): void {
    if (this.#conflicts.get(key)?.message !== e.message) {
      this.#conflictsCounter?.inc({ kind: e.kind });
      this.#log.warn('waypoint not launched: its name is held by an object not made by Weft', { waypoint: key, path: 'metadata.name', kind: e.kind, error: e.message });
    }
    this.#conflicts.set(key, e);
  }

  async #ensure(wp: Waypoint): Promise<void> {
    const spec = launchSpec(wp, this.#o.trustDomain ?? DEFAULT_TRUST_DOMAIN);
    const { name, namespace } = spec;
    const labels = { [LABEL_WAYPOINT_FOR]: name, 'app.kubernetes.io/name': name, [WAYPOINT_MANAGED_BY.label]: WAYPOINT_MANAGED_BY.value };
    const owner = wp.metadata.uid
      ? [{ apiVersion: wp.apiVersion, kind: 'Waypoint', name, uid: wp.metadata.uid, controller: true, blockOwnerDeletion: true }]
      : undefined;
    const meta = (extra: Record<string, string> = {}) => ({ name, namespace, labels, annotations: extra, ...(owner ? { ownerReferences: owner } : {}) });
    const trustDomain = this.#o.trustDomain ?? DEFAULT_TRUST_DOMAIN;
    const controllerNamespace = this.#o.controllerNamespace ?? DEFAULT_INSTALL_NAMESPACE;
    const deployment: V1Deployment = {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: meta(),
      spec: {
        replicas: spec.replicas,
        selector: { matchLabels: { [LABEL_WAYPOINT_FOR]: name } },
        // Surge: a new waypoint replica is ready before an old one stops.
        strategy: { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } },
        template: {
          // The waypoint terminates HBONE itself: it is never captured by the agent.
          metadata: {
            labels: { ...labels, [LABEL_DATAPLANE_MODE]: 'none' },
            annotations: { 'prometheus.io/scrape': 'true', 'prometheus.io/port': String(PORTS.metrics), 'prometheus.io/path': '/metrics' },
          },
          spec: waypointPodSpec(spec, { image: this.#o.image, trustDomain, trustDomainAliases: this.#o.trustDomainAliases ?? [], controllerNamespace, controllerAddress: this.#o.controllerAddress ?? controllerAddress(controllerNamespace), ...(this.#o.debugEndpoints ? { debugEndpoints: true } : {}) }),
        },
      },
    };
    const hash = createHash('sha256').update(JSON.stringify(deployment.spec)).digest('hex').slice(0, 16);
    deployment.metadata!.annotations = { 'weft.dev/spec-hash': hash };

    // Nothing is written while another object holds the name (checked before the first write).
    // The informers hold what this reconciler made, and only that: a Deployment of ours there as
    // wanted, or a Service of ours, is no conflict and needs no read; anything else (absent, not
    // ours, to be replaced with a current resourceVersion) is read afresh.
    const cached = this.#deployments?.get(name, namespace);
    const current = madeForWaypoint(cached, name) && cached?.metadata?.annotations?.['weft.dev/spec-hash'] === hash
      ? cached : await readOrUndefined(this.#apps.readNamespacedDeployment({ name, namespace }));
    const cachedSvc = this.#services?.get(name, namespace);
    const currentSvc = madeForWaypoint(cachedSvc, name) ? cachedSvc : await readOrUndefined(this.#core.readNamespacedService({ name, namespace }));
    // A budget is written only for several replicas, so only then can another's budget of the name
    // be in the way; one of ours (to remove at one replica) is in the informer.
    const cachedPdb = this.#budgets?.get(name, namespace);
    const currentPdb = madeForWaypoint(cachedPdb, name) ? cachedPdb
      : spec.replicas > 1 ? await readOrUndefined(this.#policy.readNamespacedPodDisruptionBudget({ name, namespace })) : undefined;
    for (const [kind, obj] of [['Deployment', current], ['Service', currentSvc], ['PodDisruptionBudget', currentPdb]] as const) {
      if (obj && !madeForWaypoint(obj, name)) throw new WaypointNameConflictError(kind, namespace, name);
    }

    if (!this.#accounts?.get(spec.serviceAccount, namespace) && !(await exists(this.#core.readNamespacedServiceAccount({ name: spec.serviceAccount, namespace })))) {
      await ignore409(this.#core.createNamespacedServiceAccount({ namespace, body: { metadata: { name: spec.serviceAccount, namespace, labels } } }));
    }

    // The waypoint verifies the controller with the published roots, mounted from its namespace.
    await this.#o.trustBundle?.ensure(namespace);
    if (!current) {
      await this.#apps.createNamespacedDeployment({ namespace, body: deployment });
      this.#log.info('waypoint deployment created', { waypoint: `${namespace}/${name}` });
    } else if (current.metadata?.annotations?.['weft.dev/spec-hash'] !== hash) {
      deployment.metadata!.resourceVersion = current.metadata?.resourceVersion;
      await this.#apps.replaceNamespacedDeployment({ name, namespace, body: deployment });
      this.#log.info('waypoint deployment updated', { waypoint: `${namespace}/${name}` });
    }

    const service: V1Service = {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: meta(),
      spec: { type: 'ClusterIP', selector: { [LABEL_WAYPOINT_FOR]: name }, ports: [{ name: 'tcp-hbone', port: HBONE_PORT, targetPort: HBONE_PORT, protocol: 'TCP' }] },
    };
    if (!currentSvc) await this.#core.createNamespacedService({ namespace, body: service });
    await this.#ensurePdb(spec.replicas, currentPdb, meta(), { [LABEL_WAYPOINT_FOR]: name });
  }

  /**
   * With several replicas, a PodDisruptionBudget keeps one serving through voluntary disruptions
   * (node drains), as Istio does for its gateways; a single replica gets none, so it never blocks
   * a drain. Removed when the Waypoint goes back to one replica.
   */
  async #ensurePdb(replicas: number, current: V1PodDisruptionBudget | undefined, metadata: V1PodDisruptionBudget['metadata'] & { name: string; namespace: string }, selector: Record<string, string>): Promise<void> {
    const { name, namespace } = metadata;
    if (replicas <= 1) {
      if (current) await ignore404(this.#policy.deleteNamespacedPodDisruptionBudget({ name, namespace }));
      return;
    }
    if (current) return;
    const pdb: V1PodDisruptionBudget = {
      apiVersion: 'policy/v1',
      kind: 'PodDisruptionBudget',
      metadata,
      spec: { minAvailable: 1, selector: { matchLabels: selector } },
    };
    await ignore409(this.#policy.createNamespacedPodDisruptionBudget({ namespace, body: pdb }));
    this.#log.info('waypoint disruption budget created', { waypoint: `${namespace}/${name}` });
  }

  async stop(): Promise<void> {
    for (const k of this.#kept) await k.stop();
  }
}

function statusOf(e: unknown): number | undefined {
  return (e as { code?: number }).code;
}

async function readOrUndefined<T>(p: Promise<T>): Promise<T | undefined> {
  try {
    return await p;
  } catch (e) {
    if (statusOf(e) === 404) return undefined;
    throw e;
  }
}

async function exists(p: Promise<unknown>): Promise<boolean> {
  return (await readOrUndefined(p)) !== undefined;
}

async function ignore404(p: Promise<unknown>): Promise<void> {
  await readOrUndefined(p);
}

async function ignore409(p: Promise<unknown>): Promise<void> {
  try {
    await p;
  } catch (e) {
    if (statusOf(e) !== 409) throw e;
  }
}
