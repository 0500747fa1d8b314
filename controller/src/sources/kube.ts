// Kubernetes source: one informer (@kubernetes/client-node's ListWatch, kept by `KeptInformer`) per
// resource. Handlers only enqueue `Kind/namespace/name` keys; one flush turns the queued keys into
// upserts and deletes by reading the informer caches. An informer that stops on an error (a reset
// connection, a failed list) is restarted with backoff and resumes its watch from the last
// resourceVersion it saw; a 410 Gone makes client-node relist by itself, and the relist's
// differences arrive as ordinary add/update/delete events. Status goes back through the status
// subresource with merge patches.
import { backoffDelay } from '../../../lib/backoff.ts';
import { isDeepStrictEqual } from 'node:util';
import {
  CoreV1Api,
  CustomObjectsApi,
  DiscoveryV1Api,
  KubeConfig,
  ListWatch,
  PatchStrategy,
  RequestContext,
  Watch,
  setHeaderOptions,
  type Informer,
  type KubernetesListObject,
  type KubernetesObject,
  type Cluster,
  type ObjectCache,
} from '@kubernetes/client-node';
import type { AgentOptions } from 'node:https';
import { ISTIO_SECURITY_GROUP, KINDS, groupOf, groupsOf, keyOf, type Condition, type MeshKind } from '../../../lib/model/objects.ts';
import { silentLogger, type Logger } from '../log.ts';
import type { ConfigSource, ObjectStatus, RawObject, SourceEvent, SourceHandler } from './source.ts';

/** The controller's name in Gateway API route status. */
export const CONTROLLER_NAME = 'weft.dev/controller';

/** Writing status through the API failed. */
export class StatusWriteError extends Error {
  readonly code = 'WEFT_STATUS_WRITE';
  constructor(object: string, cause: unknown) {
    super(`cannot write status of ${object}: ${(cause as Error)?.message ?? String(cause)} (check the controller's RBAC for the status subresource)`, { cause });
    this.name = 'StatusWriteError';
  }
}

export interface KubeSourceOptions {
  kubeConfig: KubeConfig;
  logger?: Logger;
  /** The kinds watched; default WATCHED_KINDS (a remote cluster's reader: its Namespaces, Pods, Services and EndpointSlices). */
  kinds?: readonly MeshKind[];
  /** Also watch Nodes for their InternalIP (needs RBAC on nodes); default false (pods' hostIP is used). */
  watchNodes?: boolean;
  /** First restart delay after an informer error; default 500 ms, doubling up to 30 s. */
  restartDelayMs?: number;
  /** Quiet time before queued keys are flushed; default 5 ms. */
  flushDelayMs?: number;
  /** How often kinds whose CRD is not installed are looked for again; default 30 s. */
  absentKindRetryMs?: number;
  /**
   * Called when the watches' health changes: `undefined` once every watched kind is listed and its
   * watch open, else the first failing kind's error (the API server unreachable, refusing, ...).
   */
  onHealth?: (problem: string | undefined) => void;
  /** See KeptInformerOptions.watchTimeoutMs. */
  watchTimeoutMs?: number;
}

export const WATCHED_KINDS: readonly MeshKind[] = ['Namespace', 'Pod', 'Service', 'EndpointSlice', 'Waypoint', 'AuthorizationPolicy', 'RequestAuthentication', 'PeerAuthentication', 'TrafficPolicy', 'Telemetry', 'HTTPRoute', 'GRPCRoute', 'ReferenceGrant'];

type AnyInformer<T extends KubernetesObject = KubernetesObject> = Informer<T> & ObjectCache<T>;

/**
 * A watch that says when the API server accepted it (client-node's 'connect' fires before it is
 * even asked) and when it could not be opened in time: client-node reconnects after a timeout on
 * its own without an error, so an API server that drops packets would otherwise never look down.
 */
class ObservedWatch extends Watch {
  readonly #onOpen: () => void;
  readonly #onTimeout: (err: unknown) => void;
  constructor(kubeConfig: KubeConfig, onOpen: () => void, onTimeout: (err: unknown) => void, timeoutMs?: number) {
    super(kubeConfig);
    this.#onOpen = onOpen;
    this.#onTimeout = onTimeout;
    // client-node's own field (connect timeout, then inactivity timeout of an open watch; 30 s).
    if (timeoutMs !== undefined) (this as unknown as { requestTimeoutMs: number }).requestTimeoutMs = timeoutMs;
  }

  override async watch(path: string, query: Record<string, string | number | boolean | undefined>, callback: (phase: string, obj: unknown, watchObj?: unknown) => void, done: (err: unknown) => void): Promise<AbortController> {
    let opened = false;
    let ended = false;
    const controller = await super.watch(path, query, callback, (err: unknown) => {
      ended = true;
      if (!opened && (err as Error | null)?.name === 'TimeoutError') this.#onTimeout(err);
      done(err);
    });
    if (!ended) {
      opened = true;
      this.#onOpen();
    }
    return controller;
  }
}

export interface KeptInformerOptions<T extends KubernetesObject> {
  kubeConfig: KubeConfig;
  /** The collection's path (`/api/v1/pods`). */
  path: string;
  list: () => Promise<KubernetesListObject<T>>;
  labelSelector?: string;
  /** Only `metadata.name=...` and `metadata.namespace=...` (what RBAC's resourceNames can grant a list or watch). */
  fieldSelector?: string;
  /** Named in logs. */
  what: string;
  log: Logger;
  /** First restart delay after an error; default 500 ms, doubling up to 30 s. */
  restartDelayMs?: number;
  /** Called when `error` changes (an error, or the list or watch working again). */
  onHealth?: () => void;
  /** How long a watch may take to open (and stay quiet) before it is abandoned; default client-node's 30 s. */
  watchTimeoutMs?: number;
}

/**
 * One informer (list, then watch from the list's resourceVersion) kept running: after an error
 * it is started again with backoff (500 ms doubling to 30 s, reset once a list or watch works)
 * and resumes its watch from the last resourceVersion it saw, so nothing is listed again unless
 * the API server answers 410 Gone (history compacted), when client-node relists. Used for the
 * controller's own cluster (KubeSource), the remote clusters' readers and the remote Secrets.
 */
export class KeptInformer<T extends KubernetesObject = KubernetesObject> {
  readonly informer: AnyInformer<T>;
  /** Resolves at the first successful list. */
  readonly synced: Promise<void>;
  restarts = 0;
  /** The last error, until a list or watch works again. */
  error: string | undefined;
  #failures = 0;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  readonly #o: KeptInformerOptions<T>;

  constructor(o: KeptInformerOptions<T>) {
    this.#o = o;
    let markSynced!: () => void;
    this.synced = new Promise<void>((resolve) => (markSynced = resolve));
    const lister = async () => {
      const result = await o.list();
      this.#working();
      // The list's items are in the cache right after this resolves.
      setImmediate(markSynced);
      return result;
    };
    const watch = new ObservedWatch(o.kubeConfig, () => this.#working(), (err) => this.#failing(err), o.watchTimeoutMs);
    this.informer = new ListWatch<T>(o.path, watch, lister, false, o.labelSelector, o.fieldSelector);
    this.informer.on('error', (err: unknown) => this.#restart(err));
  }

  /** Starts it (an error restarts it; never rejects). */
  start(): Promise<void> {
    this.#stopped = false;
    return this.informer.start().catch((e: unknown) => this.#restart(e));
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.informer.stop();
  }

  #working(): void {
    this.#failures = 0;
    if (this.error === undefined) return;
    this.error = undefined;
    this.#o.onHealth?.();
  }

  /** Records an error; returns its message. */
  #failing(err: unknown): string {
    const e = err as { message?: string; code?: number; statusCode?: number; cause?: { message?: string } } | undefined;
    // An HTTP status (client-node's ApiException `code`, a watch's `statusCode`); a DOMException's `code` is not one.
    const status = [e?.statusCode, e?.code].find((c) => typeof c === 'number' && c >= 100 && c <= 599);
    const message = status !== undefined ? `HTTP ${status}` : (e?.cause?.message ?? e?.message ?? String(err));
    if (this.#stopped) return message;
    const changed = this.error !== message;
    this.error = message;
    if (changed) this.#o.onHealth?.();
    return message;
  }

  #restart(err: unknown): void {
    if (this.#stopped) return;
    const delay = backoffDelay(this.#failures, { initialMs: this.#o.restartDelayMs ?? 500 });
    this.#failures++;
    const message = this.#failing(err);
    this.#o.log.warn('watch stopped; restarting', { what: this.#o.what, error: message, inMs: delay });
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      if (this.#stopped) return;
      this.restarts++;
      this.informer.start().catch((e: unknown) => this.#restart(e));
    }, delay);
  }
}

interface Watched {
  kind: MeshKind;
  /** The API group it is read from: the kind's own, or another it is accepted in (Istio's security.istio.io). */
  group: string;
  kept: KeptInformer;
}

/**
 * One resource watched: a kind in one of its API groups. Istio's security kinds are read in
 * weft.dev and, when its CRDs are installed, in security.istio.io: two resources, two informers.
 */
interface Resource {
  kind: MeshKind;
  group: string;
}

/** The resource's name in maps and logs: its kind in its own group, `Kind.group` in another. */
function resourceId(r: Resource): string {
  return r.group === KINDS[r.kind].group ? r.kind : `${r.kind}.${r.group}`;
}

/** A kind's resources: its own group first, then the other groups it is accepted in. */
function resourcesOf(kind: MeshKind): Resource[] {
  return groupsOf(kind).map((group) => ({ kind, group }));
}

export class KubeSource implements ConfigSource {
  readonly name = 'kubernetes';
  readonly #o: KubeSourceOptions;
  readonly #log: Logger;
  readonly #core: CoreV1Api;
  readonly #discovery: DiscoveryV1Api;
  readonly #custom: CustomObjectsApi;
  /** By resourceId. */
  readonly #watched = new Map<string, Watched>();
  /** Objects to read again from their informer cache at the next flush, by resource and key. */
  readonly #queue = new Map<string, { w: Watched; namespace: string; name: string }>();
  #flushTimer: NodeJS.Timeout | undefined;
  #handler: SourceHandler | undefined;
  #started = false;
  #stopped = false;

  constructor(options: KubeSourceOptions) {
    this.#o = options;
    this.#log = options.logger ?? silentLogger;
    this.#core = options.kubeConfig.makeApiClient(CoreV1Api);
    this.#discovery = options.kubeConfig.makeApiClient(DiscoveryV1Api);
    this.#custom = options.kubeConfig.makeApiClient(CustomObjectsApi);
  }

  /** Restarts per resource (its kind, `Kind.group` in another group) after errors, for tests and metrics. */
  restarts(): Record<string, number> {
    return Object.fromEntries([...this.#watched].map(([k, w]) => [k, w.kept.restarts]));
  }

  /** Kinds whose resource the API server does not serve (CRD not installed): their objects are absent. */
  absentKinds(): MeshKind[] {
    return [...this.#absent.values()].filter((r) => r.group === KINDS[r.kind].group).map((r) => r.kind);
  }

  /** Every resource not served, as `resourceId` (Istio's security.istio.io ones when Istio's CRDs are not installed). */
  absentResources(): string[] {
    return [...this.#absent.keys()];
  }

  readonly #absent = new Map<string, Resource>();
  #absentTimer: NodeJS.Timeout | undefined;

  /**
   * Whether the API server serves `r`. Core kinds always; a custom resource only when its CRD is
   * installed (the Gateway API CRDs are optional: without GRPCRoute the mesh simply has none;
   * Istio's security CRDs likewise).
   */
  async #served(r: Resource): Promise<boolean> {
    if (!r.group || r.group === 'discovery.k8s.io') return true;
    const id = resourceId(r);
    for (let failures = 0; ; failures++) {
      try {
        const served = await this.#probe(r);
        if (this.#unanswered.delete(id)) this.#healthChanged();
        return served;
      } catch (e) {
        // The kind's own group: its informer retries the list and reports the failure (health).
        if (r.group === KINDS[r.kind].group) return true;
        // Another group (Istio's) that cannot be read: its objects would not be enforced, and that
        // is said (a warning, health()). Forbidden (an install whose RBAC predates reading it) is an
        // answer that lasts: the controller starts without it and asks again with the absent
        // resources (#lookForAbsentKinds), watching it once it answers. Failing (5xx, unreachable)
        // is not: a snapshot without its objects would say an operator's Istio DENYs are gone, so it
        // is asked again on the restart backoff, the start (and so the first snapshot) held back as
        // for any kind whose list fails.
        const forbidden = (e as { code?: number }).code === 403;
        const what = r.group === ISTIO_SECURITY_GROUP ? 'Istio security objects' : `${id} objects`;
        const error = forbidden ? `${what} are not being read: RBAC forbids listing ${this.#path(r)} (403); grant the controller's ClusterRole get, list and watch there` : `${what} are not being read yet: ${(e as Error).message}`;
        const was = this.#unanswered.get(id);
        const attempts = (was?.attempts ?? 0) + 1;
        // What kind of failure it is: the HTTP status, or the socket error's code; the message only
        // when there is neither. A message can differ between attempts of one failure (a body, a
        // timing), which must not warn again.
        const code = (e as { code?: unknown }).code;
        const kind = typeof code === 'number' || typeof code === 'string' ? String(code) : error;
        this.#unanswered.set(id, { error, kind, attempts });
        // Warned once, and again when the kind of failure changes; every attempt after at debug level.
        const level = was?.kind === kind ? 'debug' : 'warn';
        this.#log[level](forbidden ? `${what} are not being read: RBAC` : `${what} are not being read: cannot tell whether the resource is served; asking again before starting`, { resource: id, attempts, error: (e as Error).message });
        this.#healthChanged();
        if (forbidden || this.#stopped) return false;
        await new Promise((resolve) => setTimeout(resolve, backoffDelay(failures, { initialMs: this.#o.restartDelayMs ?? 500 })).unref());
        if (this.#stopped) return false;
      }
    }
  }

  /** Resources of another API group than their kind's own not being read (forbidden, failing), by resourceId: their objects are not enforced. */
  unanswered(): string[] {
    return [...this.#unanswered.keys()];
  }

  /** Resources of another API group than their kind's own the API server failed to answer about (forbidden, failing), by resourceId: asked again with the absent ones. */
  readonly #unanswered = new Map<string, { error: string; kind: string; attempts: number }>();

  /** Whether the API server serves `r` (404: not), in the newest of its versions it serves; throws on any other failure. */
  async #probe(r: Resource): Promise<boolean> {
    const k = KINDS[r.kind];
    // A kind accepted in several versions (ReferenceGrant v1 and v1beta1, security.istio.io v1
    // and v1beta1) is watched in the newest one the API server serves.
    for (const apiVersion of k.apiVersions) {
      if (groupOf(apiVersion) !== r.group) continue;
      const version = apiVersion.slice(apiVersion.indexOf('/') + 1);
      try {
        await this.#custom.listClusterCustomObject({ group: r.group, version, plural: k.plural, limit: 1 });
        this.#versions.set(resourceId(r), version);
        return true;
      } catch (e) {
        if ((e as { code?: number }).code !== 404) throw e;
      }
    }
    return false;
  }

  /** The version each custom resource is watched in (`#served` found it), by resourceId. */
  readonly #versions = new Map<string, string>();
  #version(r: Resource): string {
    return this.#versions.get(resourceId(r)) ?? KINDS[r.kind].version;
  }

  async start(handler: SourceHandler): Promise<void> {
    this.#handler = handler;
    const base = this.#o.kinds ?? WATCHED_KINDS;
    const all = this.#o.watchNodes ? [...base, 'Node' as const] : base;
    const resources = all.flatMap(resourcesOf);
    const served = await Promise.all(resources.map((r) => this.#served(r)));
    if (this.#stopped) return;
    for (const r of resources.filter((_, i) => !served[i])) {
      this.#absent.set(resourceId(r), r);
      if (!this.#unanswered.has(resourceId(r))) this.#log.info('resource not served (CRD not installed): objects of this kind are absent until it is', { kind: r.kind, resource: this.#path(r) });
    }
    this.#startInformers(resources.filter((_, i) => served[i]));
    await Promise.all([...this.#watched.values()].map((w) => w.kept.start()));
    // Until every informer has listed there is no snapshot: an API server that is down at start
    // must not look like a mesh without objects.
    await Promise.all([...this.#watched.values()].map((w) => w.kept.synced));
    if (this.#stopped) return;
    const objects: RawObject[] = [];
    for (const w of this.#watched.values()) for (const o of w.kept.informer.list()) objects.push(normalize(w.kind, o, this.#apiVersion(w)));
    this.#queue.clear();
    this.#started = true;
    // Every watched kind, absent ones included: the snapshot says there are none of them.
    handler([{ type: 'snapshot', kinds: [...all], objects, resourceVersion: this.#resourceVersion() }]);
    this.#lookForAbsentKinds();
  }

  /** A CRD installed later is picked up: its informer starts and its objects arrive as upserts. */
  #lookForAbsentKinds(): void {
    if (this.#absent.size === 0 || this.#stopped) return;
    this.#absentTimer = setTimeout(async () => {
      for (const [id, r] of [...this.#absent]) {
        if (this.#stopped || !(await this.#served(r)) || this.#stopped) continue;
        this.#absent.delete(id);
        this.#log.info('resource now served: watching it', { kind: r.kind, resource: this.#path(r) });
        this.#startInformers([r]);
        void this.#watched.get(id)!.kept.start();
      }
      this.#lookForAbsentKinds();
    }, this.#o.absentKindRetryMs ?? 30_000);
    this.#absentTimer.unref();
  }

  #startInformers(resources: readonly Resource[]): void {
    for (const r of resources) {
      const id = resourceId(r);
      const kept = new KeptInformer({
        kubeConfig: this.#o.kubeConfig, path: this.#path(r), list: this.#lister(r), what: id, log: this.#log,
        ...(this.#o.restartDelayMs !== undefined ? { restartDelayMs: this.#o.restartDelayMs } : {}),
        ...(this.#o.watchTimeoutMs !== undefined ? { watchTimeoutMs: this.#o.watchTimeoutMs } : {}),
        onHealth: () => this.#healthChanged(),
      });
      const w: Watched = { kind: r.kind, group: r.group, kept };
      const enqueue = (obj: KubernetesObject) => this.#enqueue(w, obj);
      kept.informer.on('add', enqueue);
      kept.informer.on('update', enqueue);
      kept.informer.on('delete', enqueue);
      this.#watched.set(id, w);
    }
  }

  #health: string | undefined;

  /** The first failing kind's error (or an optional group's that cannot be read), or undefined when every watch works. */
  health(): string | undefined {
    for (const [id, w] of this.#watched) if (w.kept.error !== undefined) return `${id}: ${w.kept.error}`;
    for (const [id, u] of this.#unanswered) return `${id}: ${u.error}`;
    return undefined;
  }

  #healthChanged(): void {
    const now = this.health();
    if (now === this.#health || this.#stopped) return;
    this.#health = now;
    this.#o.onHealth?.(now);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#flushTimer);
    clearTimeout(this.#absentTimer);
    for (const w of this.#watched.values()) await w.kept.stop();
    this.#handler = undefined;
  }

  #path(r: Resource): string {
    const k = KINDS[r.kind];
    return r.group ? `/apis/${r.group}/${this.#version(r)}/${k.plural}` : `/api/${k.version}/${k.plural}`;
  }

  /** The apiVersion objects of a watched resource are read in. */
  #apiVersion(w: Watched): string {
    return w.group ? `${w.group}/${this.#version(w)}` : KINDS[w.kind].version;
  }

  #lister(r: Resource): () => Promise<KubernetesListObject<KubernetesObject>> {
    const k = KINDS[r.kind];
    switch (r.kind) {
      case 'Namespace':
        return () => this.#core.listNamespace();
      case 'Node':
        return () => this.#core.listNode();
      case 'Pod':
        return () => this.#core.listPodForAllNamespaces();
      case 'Service':
        return () => this.#core.listServiceForAllNamespaces();
      case 'EndpointSlice':
        return () => this.#discovery.listEndpointSliceForAllNamespaces();
      default:
        return async () => (await this.#custom.listClusterCustomObject({ group: r.group, version: this.#version(r), plural: k.plural })) as KubernetesListObject<KubernetesObject>;
    }
  }

  #enqueue(w: Watched, obj: KubernetesObject): void {
    const name = obj.metadata?.name;
    if (!name) return;
    const namespace = KINDS[w.kind].namespaced ? (obj.metadata?.namespace ?? '') : '';
    this.#queue.set(`${resourceId(w)} ${keyOf(w.kind, namespace || undefined, name)}`, { w, namespace, name });
    if (!this.#started || this.#flushTimer) return;
    this.#flushTimer = setTimeout(() => this.#flush(), this.#o.flushDelayMs ?? 5);
  }

  #flush(): void {
    this.#flushTimer = undefined;
    if (!this.#handler) return;
    const events: SourceEvent[] = [];
    const upserts: SourceEvent[] = [];
    const rv = this.#resourceVersion();
    for (const { w, namespace, name } of this.#queue.values()) {
      const obj = w.kept.informer.get(name, KINDS[w.kind].namespaced ? namespace : undefined);
      if (obj) upserts.push({ type: 'upsert', object: normalize(w.kind, obj, this.#apiVersion(w)), resourceVersion: obj.metadata?.resourceVersion ?? rv });
      else events.push({ type: 'delete', kind: w.kind, namespace, name, group: w.group, resourceVersion: rv });
    }
    this.#queue.clear();
    // Deletes first: an object replaced by one of its name in the other API group (deleted from
    // weft.dev, created in security.istio.io) is not taken for a second object beside it.
    events.push(...upserts);
    if (events.length > 0) this.#handler(events);
  }

  #resourceVersion(): string {
    let max = '';
    for (const w of this.#watched.values()) {
      const rv = (w.kept.informer as unknown as { latestResourceVersion?(): string }).latestResourceVersion?.() ?? '';
      if (rv.length > max.length || (rv.length === max.length && rv > max)) max = rv;
    }
    return max;
  }

  async writeStatus(st: ObjectStatus): Promise<void> {
    const k = KINDS[st.kind];
    if (!k.hasStatus) return;
    const who = `${st.kind} ${st.namespace}/${st.name}`;
    const now = new Date().toISOString();
    // Only the kind's own group carries Weft's status. An object of Istio's security.istio.io is
    // left as it is (istiod may own its status): its findings are Events (cluster/events.ts).
    if (st.apiVersion !== undefined) return;
    const current = this.#watched.get(st.kind)?.kept.informer.get(st.name, st.namespace) as { status?: { conditions?: Condition[]; parents?: Array<{ controllerName: string; conditions?: Condition[] }> }; spec?: { parentRefs?: unknown[] } } | undefined;
    const condition = (type: string, prevList: Condition[] | undefined): Condition => {
      const status = st.ok ? 'True' : 'False';
      const prev = prevList?.find((c) => c.type === type);
      return {
        type,
        status,
        reason: st.reason,
        message: st.message,
        lastTransitionTime: prev && prev.status === status ? (prev.lastTransitionTime ?? now) : now,
        ...(st.generation !== undefined ? { observedGeneration: st.generation } : {}),
      };
    };
    const parentCondition = (c: { type: string; status: boolean; reason: string; message: string }, prevList: Condition[] | undefined): Condition => {
      const status = c.status ? 'True' : 'False';
      const prev = prevList?.find((p) => p.type === c.type);
      return {
        type: c.type, status, reason: c.reason, message: c.message,
        lastTransitionTime: prev && prev.status === status ? (prev.lastTransitionTime ?? now) : now,
        ...(st.generation !== undefined ? { observedGeneration: st.generation } : {}),
      };
    };
    let status: Record<string, unknown>;
    if (st.kind === 'HTTPRoute' || st.kind === 'GRPCRoute') {
      // Only Service parents are Weft's; other controllers' entries (an ingress Gateway's) stay.
      type ParentStatus = { parentRef: Record<string, unknown>; controllerName: string; conditions?: Condition[] };
      const existing = (current?.status?.parents ?? []) as ParentStatus[];
      const others = existing.filter((p) => p.controllerName !== CONTROLLER_NAME);
      const prevOf = (ref: unknown) => existing.find((p) => p.controllerName === CONTROLLER_NAME && isDeepStrictEqual(p.parentRef, ref))?.conditions;
      const ours = st.parents ?? ((current?.spec?.parentRefs ?? []) as Array<{ group?: string; kind?: string; name: string }>)
        .filter((r) => (r.group ?? '') === '' && r.kind === 'Service')
        .map((parentRef) => ({ parentRef, conditions: [{ type: 'Accepted', status: st.ok, reason: st.reason, message: st.message }] }));
      const parents = [...others, ...ours.map((p) => ({
        parentRef: p.parentRef,
        controllerName: CONTROLLER_NAME,
        conditions: p.conditions.map((c) => parentCondition(c, prevOf(p.parentRef))),
      }))];
      status = { parents };
    } else if (st.kind === 'Waypoint') {
      status = {
        conditions: [condition('Ready', current?.status?.conditions)],
        ...(st.address ? { addresses: [{ type: 'IPAddress', value: st.address }] } : {}),
        ...(st.generation !== undefined ? { observedGeneration: st.generation } : {}),
      };
    } else {
      status = {
        conditions: [condition('Accepted', current?.status?.conditions)],
        ...(st.generation !== undefined ? { observedGeneration: st.generation } : {}),
      };
    }
    // Already so (a restarted controller, or our own write seen back): no write.
    if (isDeepStrictEqual(current?.status ?? {}, status)) return;
    const body = { status: st.kind === 'Waypoint' && !st.address ? { ...status, addresses: null } : status };
    try {
      await this.#custom.patchNamespacedCustomObjectStatus(
        { group: k.group, version: k.version, namespace: st.namespace, plural: k.plural, name: st.name, body },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );
    } catch (e) {
      if ((e as { code?: number }).code === 404) return; // deleted meanwhile
      throw new StatusWriteError(who, e);
    }
  }
}

/**
 * Plain JSON with kind and apiVersion set (list items carry neither; typed lists carry Dates). An
 * object nested too deep for JSON.stringify's stack (a field that preserves unknown fields holds
 * what a tenant sends, up to the API server's 10,000 levels) is taken as it is, a custom object
 * being plain JSON already: validation refuses it (tooDeep), where the throw stopped the controller.
 */
export function normalize(kind: MeshKind, obj: KubernetesObject, apiVersion: string = KINDS[kind].apiVersion): RawObject {
  let plain: RawObject;
  try {
    plain = JSON.parse(JSON.stringify(obj)) as RawObject;
  } catch (e) {
    if (!(e instanceof RangeError)) throw e;
    plain = { ...obj } as RawObject;
  }
  plain.kind = kind;
  plain.apiVersion = apiVersion;
  return plain;
}

/** A KubeConfig for a plain-HTTP API server (tests, `kubectl proxy`). */
export function kubeConfigForServer(server: string): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: 'weft', server, skipTLSVerify: true }],
    users: [{ name: 'weft' }],
    contexts: [{ name: 'weft', cluster: 'weft', user: 'weft' }],
    currentContext: 'weft',
  });
  return kc;
}

/**
 * Most bytes of one response from a remote cluster's API server: a list's whole body, or one event
 * of a watch (one line; the watch itself runs for as long as it stands). A list of every Pod of a
 * large cluster stays well under it; a hostile or broken API server that sends more is cut there.
 */
export const DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024;

/**
 * A list (not a watch, which stands for as long as it stands) must be answered whole within this:
 * undici only bounds the silence between two chunks (300 s), so an API server that answers a list a
 * byte at a time would hold that informer's relist, unreported, forever.
 */
export const DEFAULT_LIST_DEADLINE_MS = 120_000;

/**
 * A response cut by {@link boundedKubeConfig}: `too-large` past the bound, `encoding` a body
 * compressed though none was asked for, `redirect` a redirect (fetch would follow it elsewhere),
 * `too-slow` a list not complete within its deadline.
 */
export class ResponseRefusedError extends Error {
  readonly code = 'WEFT_KUBE_RESPONSE_REFUSED';
  readonly reason: 'too-large' | 'encoding' | 'redirect' | 'too-slow';
  constructor(reason: 'too-large' | 'encoding' | 'redirect' | 'too-slow', message: string) {
    super(message);
    this.name = 'ResponseRefusedError';
    this.reason = reason;
  }
}

export interface ResponseBound {
  /** Most bytes of a response body, or of one watch event (DEFAULT_MAX_RESPONSE_BYTES). */
  maxBytes?: number;
  /** A list must be answered whole within this (DEFAULT_LIST_DEADLINE_MS). */
  listDeadlineMs?: number;
  /** A response was cut (the request then fails with the same error, as any failed list or watch). */
  onRefused?: (e: ResponseRefusedError, path: string) => void;
}

type Dispatcher = NonNullable<ReturnType<RequestContext['getDispatcher']>>;
type Interceptor = Parameters<Dispatcher['compose']>[0] extends infer I ? (I extends readonly unknown[] ? I[number] : I) : never;

/**
 * The same kubeconfig, with every response its clients read bounded (a remote cluster's API server
 * may be hostile or broken; client-node reads a list's body whole and a watch's events line by
 * line, without a bound). Bodies are asked for uncompressed (`accept-encoding: identity`) and one
 * compressed anyway is refused: the bound counts bytes as they arrive, and a compressed body could
 * grow past it when it is inflated. So is a redirect, which fetch would follow to any address the
 * server names, over plain HTTP too (an API server's lists and watches do not redirect), and a list
 * not answered whole within its deadline (DEFAULT_LIST_DEADLINE_MS). A cut
 * response fails its request (named, `onRefused`): the informer restarts with backoff as after any
 * failed list or watch.
 */
export function boundedKubeConfig(kc: KubeConfig, bound: ResponseBound = {}): KubeConfig {
  const b = new BoundedKubeConfig(bound);
  b.loadFromOptions({ clusters: kc.clusters, users: kc.users, contexts: kc.contexts, currentContext: kc.currentContext });
  return b;
}

class BoundedKubeConfig extends KubeConfig {
  readonly #bound: ResponseBound;
  constructor(bound: ResponseBound) {
    super();
    this.#bound = bound;
  }

  /** Always a dispatcher of its own (client-node leaves TLS without options to the global one), so each can be bounded. */
  override createDispatcherOptions(cluster: Cluster | null, agentOptions: AgentOptions): ReturnType<KubeConfig['createDispatcherOptions']> {
    const o = super.createDispatcherOptions(cluster, agentOptions);
    return o.type === 'none' ? { type: 'agent', connect: { keepAlive: true, keepAliveInitialDelay: 30_000 } } : o;
  }

  override async applySecurityAuthentication(context: RequestContext): Promise<void> {
    await super.applySecurityAuthentication(context);
    context.setHeaderParam('Accept-Encoding', 'identity');
    const d = context.getDispatcher();
    if (d) context.setDispatcher(d.compose(boundResponses(this.#bound)));
  }
}

/** The interceptor: counts a response's bytes (a watch's since its last newline) and aborts past the bound. */
function boundResponses(bound: ResponseBound): Interceptor {
  const max = bound.maxBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
  return (dispatch) => (opts, handler) => {
    const path = String(opts.path ?? '');
    const watch = /[?&]watch=(true|1)(&|$)/.test(path);
    let held = 0;
    let refused = false;
    let deadline: NodeJS.Timeout | undefined;
    const refuse = (controller: { abort(reason: Error): void }, e: ResponseRefusedError) => {
      refused = true;
      clearTimeout(deadline);
      bound.onRefused?.(e, path);
      controller.abort(e);
    };
    type Handler = Record<string, unknown> & { [k in 'onRequestStart' | 'onResponseStart' | 'onResponseData' | 'onResponseEnd' | 'onResponseError']?: (...a: unknown[]) => unknown };
    const h = handler as Handler;
    const wrapped = new Proxy(h, {
      get(target, prop, receiver) {
        if (prop === 'onRequestStart' && !watch && typeof target.onRequestStart === 'function') {
          return (controller: { abort(reason: Error): void }, ...rest: unknown[]) => {
            const ms = bound.listDeadlineMs ?? DEFAULT_LIST_DEADLINE_MS;
            deadline = setTimeout(() => refuse(controller, new ResponseRefusedError('too-slow', `response to ${path.split('?')[0]} not complete within ${ms} ms: refused`)), ms);
            deadline.unref();
            return target.onRequestStart!.call(target, controller, ...rest);
          };
        }
        if ((prop === 'onResponseEnd' || prop === 'onResponseError') && typeof target[prop] === 'function') {
          return (...a: unknown[]) => {
            clearTimeout(deadline);
            return target[prop]!.call(target, ...a);
          };
        }
        if (prop === 'onResponseStart' && typeof target.onResponseStart === 'function') {
          return (controller: { abort(reason: Error): void }, status: number, headers: Record<string, string | string[] | undefined>, ...rest: unknown[]) => {
            if (status >= 300 && status < 400) {
              const location = headers.location;
              refuse(controller, new ResponseRefusedError('redirect', `response to ${path.split('?')[0]} redirects (HTTP ${status}${location ? ` to ${String(location).slice(0, 256)}` : ''}): refused, an API server's lists and watches are answered where they are asked`));
              return;
            }
            const enc = headers['content-encoding'];
            const encoding = (Array.isArray(enc) ? enc.join(',') : enc ?? '').trim().toLowerCase();
            if (encoding !== '' && encoding !== 'identity') {
              refuse(controller, new ResponseRefusedError('encoding', `response to ${path.split('?')[0]} is compressed (content-encoding ${encoding.slice(0, 64)}) though an uncompressed one was asked for: refused (it could grow past the ${max}-byte bound once inflated)`));
              return;
            }
            return target.onResponseStart!.call(target, controller, status, headers, ...rest);
          };
        }
        if (prop === 'onResponseData' && typeof target.onResponseData === 'function') {
          return (controller: { abort(reason: Error): void }, chunk: Buffer) => {
            if (refused) return;
            const nl = watch ? chunk.lastIndexOf(0x0a) : -1;
            // A watch: the event this chunk ends (up to its first newline), then the one it begins.
            const over = nl < 0 ? (held += chunk.length) > max : held + chunk.indexOf(0x0a) > max || (held = chunk.length - nl - 1) > max;
            if (over) {
              refuse(controller, new ResponseRefusedError('too-large', watch
                ? `watch ${path.split('?')[0]}: one event larger than ${max} bytes: refused`
                : `response to ${path.split('?')[0]} larger than ${max} bytes: refused`));
              return;
            }
            return target.onResponseData!.call(target, controller, chunk);
          };
        }
        return Reflect.get(target, prop, receiver);
      },
    });
    return dispatch(opts, wrapped as typeof handler);
  };
}
