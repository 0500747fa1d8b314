// The trust-bundle ConfigMap (`weft-trust-bundle`, key `root-cert.pem`): the CA's public roots,
// which agents (install namespace) and waypoints (their own namespace) mount to verify the
// controller's serving certificate before they have a certificate of their own. The controller
// writes it in its namespace at start, in each namespace a waypoint runs in before the waypoint's
// Deployment, and rewrites every copy when the roots change (a root rotation adds the new root
// beside the old one, then drops the old one). Writes compare first, so replicas that share the CA
// and restarts cause no churn. An informer on the copies (by name) answers "is it current" without
// a read per Waypoint reconcile, and puts back a copy someone changed or deleted at once.
import { CoreV1Api, type KubeConfig, type V1ConfigMap } from '@kubernetes/client-node';
import { TRUST_BUNDLE_CONFIGMAP, TRUST_BUNDLE_KEY } from '../../../lib/defaults.ts';
import { silentLogger, type Logger } from '../log.ts';
import { KeptInformer } from '../sources/kube.ts';

export class TrustBundleWriteError extends Error {
  readonly code = 'WEFT_TRUST_BUNDLE_WRITE';
  constructor(namespace: string, cause: unknown) {
    super(`cannot publish ConfigMap ${namespace}/${TRUST_BUNDLE_CONFIGMAP} (${(cause as Error)?.message ?? String(cause)}); the controller needs RBAC get/create/update on configmaps`, { cause });
    this.name = 'TrustBundleWriteError';
  }
}

export interface TrustBundlePublisherOptions {
  kubeConfig: KubeConfig;
  /** Current roots (PEM, one certificate each). */
  roots: () => readonly string[];
  /** Calls back on every root change; returns an unsubscribe function. */
  onRootsChange: (listener: () => void) => () => void;
  logger?: Logger;
}

const code = (e: unknown): number | undefined => (e as { code?: number }).code;

export class TrustBundlePublisher {
  readonly #api: CoreV1Api;
  readonly #o: TrustBundlePublisherOptions;
  readonly #log: Logger;
  /** Namespaces that get a copy. */
  readonly #namespaces = new Set<string>();
  /** Every copy in the cluster, started with the first ensure (only a replica that writes follows them). */
  #copies: KeptInformer<V1ConfigMap> | undefined;
  #listed = false;
  readonly #off: () => void;
  #chain: Promise<void> = Promise.resolve();

  constructor(options: TrustBundlePublisherOptions) {
    this.#o = options;
    this.#api = options.kubeConfig.makeApiClient(CoreV1Api);
    this.#log = options.logger ?? silentLogger;
    this.#off = options.onRootsChange(() => {
      this.#chain = this.#chain.then(() => this.#publishAll()).catch((e: Error) => this.#log.error('trust bundle not updated after a root change; retrying at the next change', { error: e.message }));
    });
  }

  /** The PEM text every copy holds. */
  content(): string {
    return this.#o.roots().map((r) => (r.endsWith('\n') ? r : `${r}\n`)).join('');
  }

  /** Publishes (or confirms) the bundle in `namespace` and keeps it updated from now on. */
  async ensure(namespace: string): Promise<void> {
    this.#namespaces.add(namespace);
    this.#follow();
    if (this.#current(namespace)) return;
    await this.#write(namespace);
  }

  /** Whether the informer, once it has listed, holds `namespace`'s copy with the current roots. */
  #current(namespace: string): boolean {
    return this.#listed && this.#copies?.informer.get(TRUST_BUNDLE_CONFIGMAP, namespace)?.data?.[TRUST_BUNDLE_KEY] === this.content();
  }

  /** Starts the informer; until its first list works, ensure reads and compares as before it. */
  #follow(): void {
    if (this.#copies) return;
    const api = this.#api;
    const fieldSelector = `metadata.name=${TRUST_BUNDLE_CONFIGMAP}`;
    this.#copies = new KeptInformer<V1ConfigMap>({
      kubeConfig: this.#o.kubeConfig, path: '/api/v1/configmaps', fieldSelector, what: 'trust-bundle ConfigMaps', log: this.#log,
      list: () => api.listConfigMapForAllNamespaces({ fieldSelector }),
    });
    // A copy changed or deleted by someone else is put back (a namespace's tenant may edit its ConfigMaps).
    const repair = (cm: V1ConfigMap) => {
      const ns = cm.metadata?.namespace;
      if (!ns || !this.#namespaces.has(ns) || this.#current(ns)) return;
      this.#chain = this.#chain.then(() => (this.#namespaces.has(ns) && !this.#current(ns) ? this.#write(ns) : undefined))
        .catch((e: Error) => this.#log.error('trust bundle not put back', { namespace: ns, error: e.message }));
    };
    for (const ev of ['update', 'delete'] as const) this.#copies.informer.on(ev, repair);
    void this.#copies.synced.then(() => (this.#listed = true));
    void this.#copies.start();
  }

  /** Stops updating `namespace` (its waypoints are gone); the ConfigMap itself stays. */
  forget(namespace: string): void {
    this.#namespaces.delete(namespace);
  }

  namespaces(): string[] {
    return [...this.#namespaces].sort();
  }

  async close(): Promise<void> {
    this.#off();
    await this.#copies?.stop();
  }

  async #publishAll(): Promise<void> {
    const errors: Error[] = [];
    for (const ns of this.#namespaces) await this.#write(ns).catch((e: Error) => errors.push(e));
    if (errors.length) throw new AggregateError(errors, errors.map((e) => e.message).join('; '));
    this.#log.info('trust bundle republished after a root change', { namespaces: this.namespaces(), roots: this.#o.roots().length });
  }

  async #write(namespace: string): Promise<void> {
    const data = { [TRUST_BUNDLE_KEY]: this.content() };
    const body: V1ConfigMap = {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: TRUST_BUNDLE_CONFIGMAP, namespace, labels: { 'app.kubernetes.io/part-of': 'weft', 'app.kubernetes.io/managed-by': 'weft-controller' } },
      data,
    };
    try {
      let current: V1ConfigMap | undefined;
      try {
        current = await this.#api.readNamespacedConfigMap({ name: TRUST_BUNDLE_CONFIGMAP, namespace });
      } catch (e) {
        if (code(e) !== 404) throw e;
      }
      if (!current) {
        try {
          await this.#api.createNamespacedConfigMap({ namespace, body });
          this.#log.info('trust bundle published', { namespace });
          return;
        } catch (e) {
          if (code(e) !== 409) throw e;
          current = await this.#api.readNamespacedConfigMap({ name: TRUST_BUNDLE_CONFIGMAP, namespace });
        }
      }
      if (current.data?.[TRUST_BUNDLE_KEY] === data[TRUST_BUNDLE_KEY]) return;
      body.metadata!.resourceVersion = current.metadata?.resourceVersion;
      await this.#api.replaceNamespacedConfigMap({ name: TRUST_BUNDLE_CONFIGMAP, namespace, body });
      this.#log.info('trust bundle updated', { namespace });
    } catch (e) {
      throw new TrustBundleWriteError(namespace, e);
    }
  }
}
