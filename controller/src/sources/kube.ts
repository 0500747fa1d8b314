// Kubernetes source: one informer (@kubernetes/client-node makeInformer) per resource. Handlers
// only enqueue `Kind/namespace/name` keys; one flush turns the queued keys into upserts and deletes
// by reading the informer caches. An informer that stops on an error (a reset connection, a failed
// list) is restarted with backoff; a 410 Gone makes client-node relist by itself, and the relist's
// differences arrive as ordinary add/update/delete events. Status goes back through the status
// subresource with merge patches.
import { isDeepStrictEqual } from 'node:util';
import {
  CoreV1Api,
  CustomObjectsApi,
  DiscoveryV1Api,
  KubeConfig,
  PatchStrategy,
  makeInformer,
  setHeaderOptions,
  type Informer,
  type KubernetesListObject,
  type KubernetesObject,
  type ObjectCache,
} from '@kubernetes/client-node';
import { KINDS, keyOf, type Condition, type MeshKind } from '../../../lib/model/objects.ts';
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
}

export const WATCHED_KINDS: readonly MeshKind[] = ['Namespace', 'Pod', 'Service', 'EndpointSlice', 'Waypoint', 'AuthorizationPolicy', 'PeerAuthentication', 'TrafficPolicy', 'Telemetry', 'HTTPRoute', 'GRPCRoute', 'ReferenceGrant'];

type AnyInformer = Informer<KubernetesObject> & ObjectCache<KubernetesObject>;

interface Watched {
  kind: MeshKind;
  informer: AnyInformer;
  failures: number;
  restartTimer?: NodeJS.Timeout;
  restarts: number;
}

export class KubeSource implements ConfigSource {
  readonly name = 'kubernetes';
  readonly #o: KubeSourceOptions;
  readonly #log: Logger;
  readonly #core: CoreV1Api;
  readonly #discovery: DiscoveryV1Api;
  readonly #custom: CustomObjectsApi;
  readonly #watched = new Map<MeshKind, Watched>();
  readonly #queue = new Set<string>();
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

  /** Restarts per kind (after errors), for tests and metrics. */
  restarts(): Record<string, number> {
    return Object.fromEntries([...this.#watched].map(([k, w]) => [k, w.restarts]));
  }

  /** Kinds whose resource the API server does not serve (CRD not installed): their objects are absent. */
  absentKinds(): MeshKind[] {
    return [...this.#absent];
  }

  readonly #absent = new Set<MeshKind>();
  #absentTimer: NodeJS.Timeout | undefined;

  /**
   * Whether the API server serves `kind`. Core kinds always; a custom resource only when its CRD is
   * installed (the Gateway API CRDs are optional: without GRPCRoute the mesh simply has none).
   */
  async #served(kind: MeshKind): Promise<boolean> {
    const k = KINDS[kind];
    if (!k.group || k.group === 'discovery.k8s.io') return true;
    // A kind accepted in several versions (ReferenceGrant v1 and v1beta1) is watched in the
    // newest one the API server serves.
    for (const apiVersion of k.apiVersions) {
      const version = apiVersion.slice(apiVersion.indexOf('/') + 1);
      try {
        await this.#custom.listClusterCustomObject({ group: k.group, version, plural: k.plural, limit: 1 });
        this.#versions.set(kind, version);
        return true;
      } catch (e) {
        if ((e as { code?: number }).code !== 404) return true; // another failure: let the informer retry it like any list
      }
    }
    return false;
  }

  /** The version each custom kind is watched in, when not its default (`#served` found it). */
  readonly #versions = new Map<MeshKind, string>();
  #version(kind: MeshKind): string {
    return this.#versions.get(kind) ?? KINDS[kind].version;
  }

  async start(handler: SourceHandler): Promise<void> {
    this.#handler = handler;
    const base = this.#o.kinds ?? WATCHED_KINDS;
    const all = this.#o.watchNodes ? [...base, 'Node' as const] : base;
    const served = await Promise.all(all.map((k) => this.#served(k)));
    const kinds = all.filter((_, i) => served[i]);
    for (const kind of all.filter((_, i) => !served[i])) {
      this.#absent.add(kind);
      this.#log.info('resource not served (CRD not installed): objects of this kind are absent until it is', { kind, resource: this.#path(kind) });
    }
    const synced = this.#startInformers(kinds);
    await Promise.all([...this.#watched.values()].map((w) => w.informer.start().catch((e: unknown) => this.#restart(w, e))));
    await Promise.all(synced);
    if (this.#stopped) return;
    const objects: RawObject[] = [];
    for (const w of this.#watched.values()) for (const o of w.informer.list()) objects.push(normalize(w.kind, o));
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
      for (const kind of [...this.#absent]) {
        if (this.#stopped || !(await this.#served(kind))) continue;
        this.#absent.delete(kind);
        this.#log.info('resource now served: watching it', { kind });
        this.#startInformers([kind]);
        const w = this.#watched.get(kind)!;
        w.informer.start().catch((e: unknown) => this.#restart(w, e));
      }
      this.#lookForAbsentKinds();
    }, this.#o.absentKindRetryMs ?? 30_000);
    this.#absentTimer.unref();
  }

  #startInformers(kinds: readonly MeshKind[]): Array<Promise<void>> {
    const synced: Array<Promise<void>> = [];
    for (const kind of kinds) {
      // The first successful list marks the informer synced (its items are in the cache right
      // after the list resolves). Until every informer is synced there is no snapshot: an API
      // server that is down at start must not look like a mesh without objects.
      let markSynced!: () => void;
      synced.push(new Promise<void>((resolve) => (markSynced = resolve)));
      const list = this.#lister(kind);
      const lister = async () => {
        const result = await list();
        setImmediate(markSynced);
        return result;
      };
      const informer = makeInformer(this.#o.kubeConfig, this.#path(kind), lister) as AnyInformer;
      const w: Watched = { kind, informer, failures: 0, restarts: 0 };
      const enqueue = (obj: KubernetesObject) => this.#enqueue(kind, obj);
      informer.on('add', enqueue);
      informer.on('update', enqueue);
      informer.on('delete', enqueue);
      informer.on('connect', () => {
        w.failures = 0;
      });
      informer.on('error', (err: unknown) => this.#restart(w, err));
      this.#watched.set(kind, w);
    }
    return synced;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#flushTimer);
    clearTimeout(this.#absentTimer);
    for (const w of this.#watched.values()) {
      clearTimeout(w.restartTimer);
      await w.informer.stop();
    }
    this.#handler = undefined;
  }

  #path(kind: MeshKind): string {
    const k = KINDS[kind];
    return k.group ? `/apis/${k.group}/${this.#version(kind)}/${k.plural}` : `/api/${k.version}/${k.plural}`;
  }

  #lister(kind: MeshKind): () => Promise<KubernetesListObject<KubernetesObject>> {
    const k = KINDS[kind];
    switch (kind) {
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
        return async () => (await this.#custom.listClusterCustomObject({ group: k.group, version: this.#version(kind), plural: k.plural })) as KubernetesListObject<KubernetesObject>;
    }
  }

  #restart(w: Watched, err: unknown): void {
    if (this.#stopped) return;
    const delay = Math.min(30_000, (this.#o.restartDelayMs ?? 500) * 2 ** w.failures);
    w.failures++;
    this.#log.warn('informer stopped; restarting', { kind: w.kind, error: (err as Error)?.message ?? String(err), inMs: delay });
    clearTimeout(w.restartTimer);
    w.restartTimer = setTimeout(() => {
      if (this.#stopped) return;
      w.restarts++;
      w.informer.start().catch((e: unknown) => this.#restart(w, e));
    }, delay);
  }

  #enqueue(kind: MeshKind, obj: KubernetesObject): void {
    const name = obj.metadata?.name;
    if (!name) return;
    this.#queue.add(keyOf(kind, KINDS[kind].namespaced ? obj.metadata?.namespace : undefined, name));
    if (!this.#started || this.#flushTimer) return;
    this.#flushTimer = setTimeout(() => this.#flush(), this.#o.flushDelayMs ?? 5);
  }

  #flush(): void {
    this.#flushTimer = undefined;
    if (!this.#handler) return;
    const events: SourceEvent[] = [];
    const rv = this.#resourceVersion();
    for (const key of this.#queue) {
      const parts = key.split('/');
      const kind = parts[0] as MeshKind;
      const namespaced = KINDS[kind].namespaced;
      const namespace = namespaced ? parts[1]! : '';
      const name = parts[namespaced ? 2 : 1]!;
      const w = this.#watched.get(kind);
      const obj = w?.informer.get(name, namespaced ? namespace : undefined);
      if (obj) events.push({ type: 'upsert', object: normalize(kind, obj), resourceVersion: obj.metadata?.resourceVersion ?? rv });
      else events.push({ type: 'delete', kind, namespace, name, resourceVersion: rv });
    }
    this.#queue.clear();
    if (events.length > 0) this.#handler(events);
  }

  #resourceVersion(): string {
    let max = '';
    for (const w of this.#watched.values()) {
      const rv = (w.informer as unknown as { latestResourceVersion?(): string }).latestResourceVersion?.() ?? '';
      if (rv.length > max.length || (rv.length === max.length && rv > max)) max = rv;
    }
    return max;
  }

  async writeStatus(st: ObjectStatus): Promise<void> {
    const k = KINDS[st.kind];
    if (!k.hasStatus) return;
    const who = `${st.kind} ${st.namespace}/${st.name}`;
    const now = new Date().toISOString();
    const current = this.#watched.get(st.kind)?.informer.get(st.name, st.namespace) as { status?: { conditions?: Condition[]; parents?: Array<{ controllerName: string; conditions?: Condition[] }> }; spec?: { parentRefs?: unknown[] } } | undefined;
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

/** Plain JSON with kind and apiVersion set (list items carry neither; typed lists carry Dates). */
function normalize(kind: MeshKind, obj: KubernetesObject): RawObject {
  const plain = JSON.parse(JSON.stringify(obj)) as RawObject;
  plain.kind = kind;
  plain.apiVersion = KINDS[kind].apiVersion;
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
