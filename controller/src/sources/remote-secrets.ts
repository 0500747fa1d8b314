// Multi-cluster discovery in Kubernetes mode, as Istio's remote secrets do it: Secrets in the
// controller's namespace labelled `weft.dev/multicluster: "true"` hold one kubeconfig per remote
// cluster (the data key is the cluster ID, Istio's layout; `weftctl create-remote-secret` writes
// them). For each, the controller list-watches that cluster's API server (Namespaces, Pods,
// Services, EndpointSlices) with the same informers as its own cluster (KubeSource: restarts with
// backoff, resumes from its resourceVersion, relists on 410 Gone), compiles its Services and
// endpoints as the remote's own controller would and pushes them to the federation
// (controller/src/federation.ts) as that cluster's export at every change: the same checks,
// namespace sameness, gateways and stale bound as an export read over 15014. A remote whose
// watches fail is reported failing (its last export stays until the stale bound); nothing is
// polled.
//
// The remote's network is the `topology.istio.io/network` label of its root namespace (Istio's
// label; absent: the cluster ID), its gateway the LoadBalancer address of its `weft-eastwest`
// Service there (port 15008, `tls-hbone`). A Secret removed drops its clusters at once. A bad
// kubeconfig (unparseable, no server, or one that would make the controller run a command or read
// its own files: exec and auth-provider plugins, file paths, which Istio refuses too) is reported
// with the Secret's name and key and costs only itself. So is one that would read the remote over a
// path anyone on the network can answer (a plain-HTTP server, `insecure-skip-tls-verify`): what the
// remote answers becomes endpoints and identities callers here trust, and `istioctl
// create-remote-secret` writes an https server with its CA; the controller's
// --remote-secret-allow-insecure lifts that, warned at start.
import { CoreV1Api, KubeConfig, type V1Secret } from '@kubernetes/client-node';
import { parse as parseYaml } from 'yaml';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { Logger } from '../log.ts';
import type { MeshKind } from '../../../lib/model/objects.ts';
import type { NetworkGateway } from '../../../lib/model/mesh.ts';
import { ANNOTATION_TRUST_DOMAIN, DEFAULT_IMPORT_QUOTA, EASTWEST_PORT_NAME, EASTWEST_SERVICE_ACCOUNT, exportSelection, LABEL_MULTICLUSTER, LABEL_NETWORK, type ClusterExport, type ImportQuota } from '../../../lib/model/federation.ts';

export { LABEL_MULTICLUSTER, LABEL_NETWORK };
import { PORTS } from '../../../lib/defaults.ts';
import { canonicalIp } from '../../../lib/model/address.ts';
import { compile } from '../compile.ts';
import { ObjectStore } from '../store.ts';
import { boundedKubeConfig, KeptInformer, KubeSource, type ResponseRefusedError } from './kube.ts';
import type { RawObject, SourceEvent } from './source.ts';
import type { RemoteCluster, RemoteReport } from '../federation.ts';

/** What a remote cluster's reader watches. */
export const REMOTE_KINDS: readonly MeshKind[] = ['Namespace', 'Pod', 'Service', 'EndpointSlice', 'Waypoint'];

/**
 * Most objects a remote cluster's reader holds (of REMOTE_KINDS together): 4 x the import quota's
 * Services and endpoints (220,000 by default; a remote's pods outside its Services, its slices and
 * namespaces come on top of what it may export). Each list and watch event is bounded in bytes,
 * but a watch may add objects without end, each held by the informers and compiled at every change.
 */
export function remoteMaxObjects(quota: ImportQuota = DEFAULT_IMPORT_QUOTA): number {
  return 4 * (quota.maxServices + quota.maxEndpoints);
}

/** After a remote held too many objects, its watches are tried again after this, doubling to REMOTE_OVERFLOW_RETRY_MAX_MS. */
export const REMOTE_OVERFLOW_RETRY_MS = 30_000;
export const REMOTE_OVERFLOW_RETRY_MAX_MS = 600_000;

export class RemoteSecretError extends Error {
  readonly code = 'WEFT_REMOTE_SECRET';
  readonly secret: string;
  readonly key: string;
  /** `insecure`: the remote would be read over a path that is not verified; `kubeconfig`: anything else wrong. */
  readonly reason: 'kubeconfig' | 'insecure';
  constructor(secret: string, key: string, detail: string, reason: 'kubeconfig' | 'insecure' = 'kubeconfig') {
    super(`remote secret ${secret}, key ${JSON.stringify(key)}: ${detail}`);
    this.name = 'RemoteSecretError';
    this.secret = secret;
    this.key = key;
    this.reason = reason;
  }
}

/** How to make a remote secret read its API server over a verified path (named in the refusal). */
const VERIFIED_REMOTE = 'write an https server and its CA in certificate-authority-data (as `weftctl create-remote-secret` and `istioctl create-remote-secret` do), or start the controller with --remote-secret-allow-insecure';

/**
 * A kubeconfig from a remote Secret, checked before client-node sees it. Only inline credentials
 * and an https server whose certificate is verified are allowed: exec and auth-provider plugins
 * would run commands or call out from the controller, file paths would read its own files (its
 * token, its CA key), and a plain-HTTP server or `insecure-skip-tls-verify` would let anyone on the
 * path answer for the remote (`allowInsecure` lifts only that).
 */
export function parseRemoteKubeconfig(text: string, secret: string, key: string, opts: { allowInsecure?: boolean } = {}): KubeConfig {
  const fail = (detail: string, reason?: 'insecure'): never => {
    throw new RemoteSecretError(secret, key, detail, reason);
  };
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (e) {
    fail(`not a kubeconfig: ${(e as Error).message.split('\n')[0]}`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) fail('not a kubeconfig: not a YAML map');
  const d = doc as Record<string, unknown>;
  const list = (field: string): Array<Record<string, unknown>> => {
    const v = d[field];
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v)) return fail(`${field}: must be a list`);
    return v.map((x, i) => (typeof x === 'object' && x !== null ? (x as Record<string, unknown>) : fail(`${field}[${i}]: must be a map`)));
  };
  list('users').forEach((u, i) => {
    const user = (u.user ?? {}) as Record<string, unknown>;
    for (const f of ['exec', 'auth-provider']) if (user[f] !== undefined) fail(`users[${i}].user.${f}: plugins are not allowed in a remote secret (the controller would run them); use a token or a client certificate inline`);
    for (const f of ['tokenFile', 'token-file', 'client-certificate', 'client-key']) {
      if (user[f] !== undefined) fail(`users[${i}].user.${f}: a path on the controller's file system is not allowed in a remote secret; put the credential inline (token, client-certificate-data, client-key-data)`);
    }
  });
  list('clusters').forEach((c, i) => {
    const cluster = (c.cluster ?? {}) as Record<string, unknown>;
    if (cluster['certificate-authority'] !== undefined) fail(`clusters[${i}].cluster.certificate-authority: a path on the controller's file system is not allowed; use certificate-authority-data`);
    const server = cluster.server;
    if (typeof server !== 'string' || !/^https?:\/\/[^/]/.test(server)) fail(`clusters[${i}].cluster.server: must be an http(s) URL`);
    if (opts.allowInsecure) return;
    if ((server as string).startsWith('http:')) fail(`clusters[${i}].cluster.server: ${server} is plain HTTP: anyone on the path could answer for the remote cluster (its endpoints and identities); ${VERIFIED_REMOTE}`, 'insecure');
    const skip = cluster['insecure-skip-tls-verify'];
    if (skip !== undefined && skip !== false && skip !== 'false') fail(`clusters[${i}].cluster.insecure-skip-tls-verify: the API server's certificate would not be verified: anyone on the path could answer for the remote cluster (its endpoints and identities); ${VERIFIED_REMOTE}`, 'insecure');
  });
  const kc = new KubeConfig();
  try {
    kc.loadFromString(text);
  } catch (e) {
    fail(`not a kubeconfig: ${(e as Error).message}`);
  }
  if (!kc.getCurrentCluster()) fail('current-context names no cluster');
  if (!kc.getCurrentUser()) fail('current-context names no user');
  return kc;
}

export interface RemoteClusterReaderOptions {
  cluster: string;
  /** `namespace/name` of the Secret it came from (named in status and logs). */
  secret: string;
  kubeConfig: KubeConfig;
  /** Trust domain of the remote's identities. */
  trustDomain: string;
  rootNamespace: string;
  log: Logger;
  /** Where its export goes at every change, and its failures (`Federation.report`). */
  report: (r: RemoteReport) => void;
  /** First restart delay of a failed watch (default KubeSource's). */
  restartDelayMs?: number;
  /** How long a watch may take to open (default client-node's 30 s). */
  watchTimeoutMs?: number;
  /** Most bytes of one response (a list) or one watch event from its API server (DEFAULT_MAX_RESPONSE_BYTES). */
  maxResponseBytes?: number;
  /** A list from its API server must be complete within this (DEFAULT_LIST_DEADLINE_MS). */
  listDeadlineMs?: number;
  /** A response from its API server was refused (past the bound, or compressed), or it held too many objects: counted by the caller; logged here. */
  onResponseRefused?: (reason: ResponseRefusedError['reason'] | 'too-many-objects') => void;
  /** Most objects it holds (remoteMaxObjects()); past it its watches are stopped, tried again after overflowRetryMs. */
  maxObjects?: number;
  /** First wait before watching again a remote that held too many objects (REMOTE_OVERFLOW_RETRY_MS). */
  overflowRetryMs?: number;
}

/** One remote cluster's API server, watched into an export. */
export class RemoteClusterReader {
  readonly #o: RemoteClusterReaderOptions;
  readonly #makeSource: () => KubeSource;
  #source: KubeSource;
  #store = new ObjectStore();
  /** Waiting to watch again after holding too many objects, and the next wait. */
  #overflowTimer: NodeJS.Timeout | undefined;
  #overflowRetryMs: number;
  #synced = false;
  #stopped = false;
  #dirty = true;
  #text = '';
  /** Why its watches fail now, if they do. */
  #problem: string | undefined;
  #gatewayService: RawObject | undefined;
  /** Most objects it holds (o.maxObjects, or remoteMaxObjects() of the default quota). */
  readonly #maxObjects: number;

  constructor(o: RemoteClusterReaderOptions) {
    this.#o = o;
    this.#maxObjects = o.maxObjects ?? remoteMaxObjects();
    // Its responses are bounded: a hostile or broken API server costs only this remote (the failed
    // list or watch is restarted with backoff and reported; its last export stays until the stale bound).
    const kubeConfig = boundedKubeConfig(o.kubeConfig, {
      ...(o.maxResponseBytes !== undefined ? { maxBytes: o.maxResponseBytes } : {}),
      ...(o.listDeadlineMs !== undefined ? { listDeadlineMs: o.listDeadlineMs } : {}),
      onRefused: (e, path) => {
        o.onResponseRefused?.(e.reason);
        o.log.warn('remote API server response refused; its last export stays until the stale bound', { cluster: o.cluster, secret: o.secret, server: o.kubeConfig.getCurrentCluster()?.server, path: path.split('?')[0], reason: e.reason, error: e.message });
      },
    });
    this.#makeSource = () => {
      const source: KubeSource = new KubeSource({
        kubeConfig, kinds: REMOTE_KINDS, logger: o.log, onHealth: (problem) => source === this.#source && this.#health(problem),
        ...(o.restartDelayMs !== undefined ? { restartDelayMs: o.restartDelayMs } : {}),
        ...(o.watchTimeoutMs !== undefined ? { watchTimeoutMs: o.watchTimeoutMs } : {}),
      });
      return source;
    };
    this.#source = this.#makeSource();
    this.#overflowRetryMs = o.overflowRetryMs ?? REMOTE_OVERFLOW_RETRY_MS;
  }

  /** Starts watching; never waits for the remote (an unreachable one is reported failing). */
  start(): void {
    const source = this.#source;
    source.start((events) => source === this.#source && this.#onEvents(events)).then(() => {
      if (source !== this.#source) return;
      this.#synced = true;
      // Read whole within the bound: a later overflow waits the first wait again.
      this.#overflowRetryMs = this.#o.overflowRetryMs ?? REMOTE_OVERFLOW_RETRY_MS;
      this.#push();
    }, (e: Error) => this.#o.log.warn('remote cluster reader stopped', { cluster: this.#o.cluster, error: e.message }));
  }

  /** Stops its watches at once; it reports nothing more. */
  stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#overflowTimer);
    return this.#source.stop();
  }

  #health(problem: string | undefined): void {
    this.#problem = problem;
    this.#push();
  }

  /**
   * It holds more objects than one remote may: its watches are stopped and what they held
   * dropped, it is reported failing (its last export stays until the stale bound), and it is
   * watched again later (the wait doubling while it stays past the bound).
   */
  #tooManyObjects(held: number): void {
    const max = this.#maxObjects;
    const wait = this.#overflowRetryMs;
    this.#overflowRetryMs = Math.min(wait * 2, REMOTE_OVERFLOW_RETRY_MAX_MS);
    const old = this.#source;
    this.#source = this.#makeSource();
    this.#store = new ObjectStore();
    this.#synced = false;
    this.#dirty = true;
    void old.stop();
    this.#o.onResponseRefused?.('too-many-objects');
    const problem = `it holds ${held} objects (Namespaces, Pods, Services, EndpointSlices, Waypoints), past the ${max} one remote cluster may (4 x the import quota's Services and endpoints: --remote-max-services, --remote-max-endpoints); its watches are stopped and tried again in ${Math.round(wait / 1000)} s`;
    this.#o.log.warn('remote API server holds too many objects; its last export stays until the stale bound', { cluster: this.#o.cluster, secret: this.#o.secret, reason: 'too-many-objects', held, max, retryMs: wait });
    this.#problem = problem;
    this.#push();
    this.#overflowTimer = setTimeout(() => {
      this.#overflowTimer = undefined;
      if (this.#stopped) return;
      this.#problem = undefined;
      this.start();
    }, wait);
    this.#overflowTimer.unref();
  }

  /** Tells the federation the export as it is now, or why the remote cannot be read. */
  #push(): void {
    if (this.#stopped) return;
    if (this.#problem !== undefined) {
      this.#o.report({ error: `API server ${this.#o.kubeConfig.getCurrentCluster()?.server}: ${this.#problem}` });
      return;
    }
    if (!this.#synced) return;
    if (this.#dirty) {
      this.#dirty = false;
      this.#text = JSON.stringify(this.#export());
    }
    this.#o.report({ export: this.#text });
  }

  #onEvents(events: SourceEvent[]): void {
    this.#store.apply(events);
    if (this.#store.size > this.#maxObjects) return this.#tooManyObjects(this.#store.size);
    const isGateway = (ns: unknown, name: unknown) => ns === this.#o.rootNamespace && name === EASTWEST_SERVICE_ACCOUNT; // the gateway's Service has its ServiceAccount's name
    for (const e of events) {
      if (e.type === 'snapshot' && e.kinds.includes('Service')) this.#gatewayService = e.objects.find((o) => o.kind === 'Service' && isGateway(o.metadata?.namespace, o.metadata?.name));
      else if (e.type === 'upsert' && e.object.kind === 'Service' && isGateway(e.object.metadata?.namespace, e.object.metadata?.name)) this.#gatewayService = e.object;
      else if (e.type === 'delete' && e.kind === 'Service' && isGateway(e.namespace, e.name)) this.#gatewayService = undefined;
    }
    this.#dirty = true;
    // Events are the watches' own (KubeSource batches them): they also prove the remote answers.
    if (this.#problem === undefined) this.#push();
  }

  #export(): ClusterExport {
    const { cluster, rootNamespace, trustDomain } = this.#o;
    const inputs = this.#store.inputs();
    const model = compile(inputs, { trustDomain, rootNamespace, clusterId: cluster }).model;
    const root = inputs.namespaces.find((n) => n.metadata.name === rootNamespace);
    const network = root?.metadata.labels?.[LABEL_NETWORK] || cluster;
    const gateway = gatewayOf(this.#gatewayService, network, `spiffe://${trustDomain}/ns/${rootNamespace}/sa/${EASTWEST_SERVICE_ACCOUNT}`);
    // Its waypoints as its own controller would export them: addresses from their running pods, or
    // the Waypoint's status that controller writes (compile.ts waypointFacts).
    const { services, waypoints } = exportSelection(model.services.values(), model.waypoints.values());
    return { cluster, network, ...(gateway ? { gateway } : {}), services, waypoints };
  }
}

/** The gateway a `weft-eastwest` Service offers: its load balancer's (or external) address and HBONE port. */
export function gatewayOf(svc: RawObject | undefined, network: string, spiffeId: string): NetworkGateway | undefined {
  if (!svc) return undefined;
  const spec = (svc.spec ?? {}) as { externalIPs?: string[]; ports?: Array<{ name?: string; port?: number }> };
  const status = (svc.status ?? {}) as { loadBalancer?: { ingress?: Array<{ ip?: string }> } };
  // Both fields take any spelling Kubernetes accepts; the import compares addresses in their one
  // spelling. The first usable one, so a zoned or malformed entry does not hide a later good one.
  const candidates = [...(status.loadBalancer?.ingress ?? []).flatMap((i) => (i.ip ? [i.ip] : [])), ...(spec.externalIPs ?? [])];
  const address = candidates.map(canonicalIp).find((a) => a !== undefined);
  const port = (spec.ports ?? []).find((p) => p.name === EASTWEST_PORT_NAME)?.port ?? (spec.ports ?? []).find((p) => p.port === PORTS.hbone)?.port;
  if (!address || !port) return undefined;
  return { network, address, port, spiffeId };
}

export interface RemoteSecretsOptions {
  kubeConfig: KubeConfig;
  /** The controller's namespace: the Secrets are read there only. */
  namespace: string;
  /** This cluster's ID: a Secret key naming it is refused (a cluster is not its own remote). */
  cluster: string;
  trustDomain: string;
  rootNamespace: string;
  federation: { addRemote(r: RemoteCluster): void; removeRemote(name: string): void; report(name: string, r: RemoteReport): void };
  log: Logger;
  registry?: Registry;
  /** First restart delay of a failed watch (default KubeSource's). */
  restartDelayMs?: number;
  /** Remote API servers may be read over plain HTTP or without verifying their certificate (--remote-secret-allow-insecure). */
  allowInsecure?: boolean;
  /** Most bytes of one response or watch event from a remote API server (DEFAULT_MAX_RESPONSE_BYTES). */
  maxResponseBytes?: number;
  /** Most objects one remote's reader holds (remoteMaxObjects() of the import quota). */
  maxObjects?: number;
}

interface Active {
  secret: string;
  text: string;
  reader: RemoteClusterReader;
}

/** Watches the remote Secrets and keeps one reader per remote cluster they name. */
export class RemoteSecrets {
  readonly #o: RemoteSecretsOptions;
  readonly #active = new Map<string, Active>();
  /** Refused keys by `secret/key`: the reason. */
  readonly #refused = new Map<string, string>();
  #secrets: KeptInformer<V1Secret> | undefined;
  #stopped = false;
  /** Syncs run one after the other (each may stop readers). */
  #syncing: Promise<void> = Promise.resolve();
  readonly #metrics?: { refused: Counter; clusters: Gauge; responses: Counter };

  constructor(o: RemoteSecretsOptions) {
    this.#o = o;
    if (o.registry) {
      const registers = [o.registry];
      this.#metrics = {
        refused: new Counter({ name: 'weft_federation_remote_secret_refused_total', help: 'Remote-cluster Secret entries refused, by Secret and reason', labelNames: ['secret', 'reason'], registers }),
        clusters: new Gauge({ name: 'weft_federation_remote_secret_clusters', help: 'Remote clusters read through kubeconfig Secrets', registers }),
        responses: new Counter({ name: 'weft_federation_remote_response_refused_total', help: 'Responses from a remote cluster\'s API server refused, by cluster and reason (too-large: a list or a watch event past the bound; encoding: compressed though not asked for; redirect; too-slow: a list not complete within its deadline; too-many-objects: its reader held more objects than a remote may, its watches stopped)', labelNames: ['cluster', 'reason'], registers }),
      };
    }
  }

  /** Entries refused now, by `namespace/secret/key`, with the reason (`/debug/federation`). */
  refused(): Record<string, string> {
    return Object.fromEntries(this.#refused);
  }

  async start(): Promise<void> {
    const core = this.#o.kubeConfig.makeApiClient(CoreV1Api);
    const selector = `${LABEL_MULTICLUSTER}=true`;
    const secrets = new KeptInformer<V1Secret>({
      kubeConfig: this.#o.kubeConfig, path: `/api/v1/namespaces/${this.#o.namespace}/secrets`, labelSelector: selector,
      list: () => core.listNamespacedSecret({ namespace: this.#o.namespace, labelSelector: selector }),
      what: 'remote Secrets', log: this.#o.log, ...(this.#o.restartDelayMs !== undefined ? { restartDelayMs: this.#o.restartDelayMs } : {}),
    });
    this.#secrets = secrets;
    let timer: NodeJS.Timeout | undefined;
    const changed = () => {
      if (timer) return;
      timer = setTimeout(() => {
        timer = undefined;
        this.#syncing = this.#syncing.then(() => this.#sync());
      }, 5);
    };
    for (const ev of ['add', 'update', 'delete'] as const) secrets.informer.on(ev, changed);
    // Resolves after the first list (or its failure, then retried with backoff).
    await secrets.start();
    this.#syncing = this.#syncing.then(() => this.#sync());
    await this.#syncing;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#secrets?.stop();
    await this.#syncing;
    await Promise.all([...this.#active.values()].map((a) => a.reader.stop()));
    this.#active.clear();
  }

  #refuse(secret: string, key: string, reason: string, message: string): void {
    const id = `${secret}/${key}`;
    if (this.#refused.get(id) !== message) {
      this.#metrics?.refused.inc({ secret, reason });
      this.#o.log.warn('remote secret entry refused; the other clusters are unaffected', { secret, key, reason, error: message });
    }
    this.#refused.set(id, message);
  }

  async #sync(): Promise<void> {
    if (this.#stopped || !this.#secrets) return;
    const secrets = [...this.#secrets.informer.list()]
      .filter((s) => s.metadata?.labels?.[LABEL_MULTICLUSTER] === 'true')
      .sort((a, b) => (a.metadata?.name ?? '').localeCompare(b.metadata?.name ?? ''));
    const wanted = new Map<string, { secret: string; text: string; trustDomain: string }>();
    const refusedNow = new Set<string>();
    for (const s of secrets) {
      const secret = `${s.metadata?.namespace ?? this.#o.namespace}/${s.metadata?.name}`;
      const trustDomain = s.metadata?.annotations?.[ANNOTATION_TRUST_DOMAIN] || this.#o.trustDomain;
      for (const [key, b64] of Object.entries(s.data ?? {})) {
        const refuse = (reason: string, message: string) => {
          refusedNow.add(`${secret}/${key}`);
          this.#refuse(secret, key, reason, message);
        };
        if (key === this.#o.cluster) {
          refuse('own-cluster', `remote secret ${secret}, key ${JSON.stringify(key)}: names this cluster itself; ignored`);
          continue;
        }
        if (!/^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/.test(key)) {
          refuse('cluster-id', `remote secret ${secret}, key ${JSON.stringify(key)}: not a cluster ID`);
          continue;
        }
        const other = wanted.get(key);
        if (other) {
          refuse('duplicate', `remote secret ${secret}, key ${JSON.stringify(key)}: cluster already read through ${other.secret}; ignored`);
          continue;
        }
        const text = Buffer.from(b64, 'base64').toString('utf8');
        const prev = this.#active.get(key);
        if (prev && prev.secret === secret && prev.text === text) {
          wanted.set(key, { secret, text, trustDomain });
          continue;
        }
        try {
          parseRemoteKubeconfig(text, secret, key, { allowInsecure: this.#o.allowInsecure });
        } catch (e) {
          refuse(e instanceof RemoteSecretError ? e.reason : 'kubeconfig', (e as Error).message);
          continue;
        }
        wanted.set(key, { secret, text, trustDomain });
      }
    }
    for (const id of [...this.#refused.keys()]) if (!refusedNow.has(id)) this.#refused.delete(id);
    for (const [cluster, a] of [...this.#active]) {
      const w = wanted.get(cluster);
      if (w && w.secret === a.secret && w.text === a.text) continue;
      this.#active.delete(cluster);
      await a.reader.stop();
      if (!w) {
        this.#o.federation.removeRemote(cluster);
        this.#o.log.info('remote cluster removed with its secret; its endpoints are gone', { cluster, secret: a.secret });
      }
    }
    for (const [cluster, w] of wanted) {
      if (this.#active.has(cluster)) continue;
      const kubeConfig = parseRemoteKubeconfig(w.text, w.secret, cluster, { allowInsecure: this.#o.allowInsecure });
      const reader = new RemoteClusterReader({
        cluster, secret: w.secret, kubeConfig, trustDomain: w.trustDomain, rootNamespace: this.#o.rootNamespace, log: this.#o.log,
        report: (r) => this.#o.federation.report(cluster, r), ...(this.#o.restartDelayMs !== undefined ? { restartDelayMs: this.#o.restartDelayMs } : {}),
        ...(this.#o.maxResponseBytes !== undefined ? { maxResponseBytes: this.#o.maxResponseBytes } : {}),
        ...(this.#o.maxObjects !== undefined ? { maxObjects: this.#o.maxObjects } : {}),
        onResponseRefused: (reason) => this.#metrics?.responses.inc({ cluster, reason }),
      });
      this.#active.set(cluster, { secret: w.secret, text: w.text, reader });
      this.#o.federation.addRemote({ name: cluster, url: `${kubeConfig.getCurrentCluster()!.server} (secret ${w.secret})`, pushed: true });
      reader.start();
      this.#o.log.info('remote cluster read through its secret', { cluster, secret: w.secret, server: kubeConfig.getCurrentCluster()!.server });
    }
    this.#metrics?.clusters.set(this.#active.size);
  }
}
