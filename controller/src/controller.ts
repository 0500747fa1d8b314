// The controller's reconcile loop: source events → object store (last valid version of each
// object) → compile → publish on the config stream → status back to the source. One loop, fed by a
// dirty flag; sources only enqueue.
import { backoffDelay } from '../../lib/backoff.ts';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { summarizeIssues } from '../../lib/model/errors.ts';
import { KINDS, inOtherGroup, isMeshKind, keyOfNamed, type MeshKind } from '../../lib/model/objects.ts';
import type { MeshModel } from '../../lib/model/mesh.ts';
import type { ExportLeftOut } from '../../lib/model/federation.ts';
import { CompileCache, jwksUrisOf, sharedWaypointAccounts, type CompileFinding, type CompileOptions, type CompileResult, type WaypointRuntime } from './compile.ts';
import { JwksResolver, type JwksResolverOptions } from './jwks-resolver.ts';
import { compileChanges } from './compile-incremental.ts';
import { silentLogger, type Logger } from './log.ts';
import { admitWaypoint } from './waypoint-admission.ts';
import type { ConfigSource, ObjectStatus, SourceEvent } from './sources/source.ts';
import { ObjectStore, invalidStatus } from './store.ts';
import type { ConfigServer } from './xds/server.ts';

/** Keeps waypoints running; reports their addresses and readiness. */
/** What the controller asks: "may I write?" and "tell me when that changes". */
export interface Leadership {
  readonly isLeader: boolean;
  onChange(listener: (leader: boolean) => void): void;
}

/** A single controller (local mode, tests): always the leader. Kubernetes mode: cluster/leader.ts's LeaseElector. */
export const ALWAYS_LEADER: Leadership = { isLeader: true, onChange: () => {} };

export interface WaypointDriver {
  /** Makes the running waypoints match `waypoints` (the accepted Waypoint objects). */
  reconcile(waypoints: ReadonlyArray<import('../../lib/model/objects.ts').Waypoint>): Promise<void>;
  /** Current facts by `namespace/name`. */
  runtime(): ReadonlyMap<string, WaypointRuntime>;
  /** Called by the driver when a waypoint's facts change. */
  onChange(listener: () => void): void;
  /**
   * Follows the waypoints' facts without writing anything (a replica that is not the leader);
   * drivers without it report nothing until they reconcile.
   */
  observe?(waypoints: ReadonlyArray<import('../../lib/model/objects.ts').Waypoint>): Promise<void>;
  stop(): Promise<void>;
}

export interface ControllerOptions {
  source: ConfigSource;
  configServer: ConfigServer;
  waypoints?: WaypointDriver;
  compile?: Omit<CompileOptions, 'waypointRuntime'>;
  logger?: Logger;
  registry?: Registry;
  /** Quiet time after a change before recompiling; default 10 ms. */
  debounceMs?: number;
  /**
   * Whether this replica may write (status, waypoint Deployments, findings); default: always.
   * Every replica compiles and serves; only the leader writes.
   */
  leadership?: Leadership;
  /** The leader hands each compilation's findings here (Kubernetes Events). */
  /** Records findings (as Events); true when some were held back for the next round, which is then scheduled. */
  onFindings?: (findings: readonly CompileFinding[]) => Promise<boolean | void>;
  /**
   * Multi-cluster (controller/src/federation.ts): merges other clusters' endpoints into each
   * compiled model before it is published, and asks for a new round when they change. What the
   * merge left out of this cluster's export (leftOut) is a finding of the object left out.
   */
  federation?: { merge(local: MeshModel): MeshModel; onChange(listener: () => void): void; leftOut?(): readonly ExportLeftOut[] };
  /** First retry of a failed waypoint reconcile, doubling per failure up to {@link MAX_WAYPOINT_RETRY_MS}; default 1000 ms. */
  waypointRetryMs?: number;
  /**
   * How RequestAuthentication jwksUris are fetched (controller/src/jwks-resolver.ts: refresh and
   * retry intervals, bounds, extra CAs); its defaults are istiod's. Its logger and registry are the
   * controller's.
   */
  jwks?: Omit<JwksResolverOptions, 'logger' | 'registry'>;
}

export const DEFAULT_DEBOUNCE_MS = 10;
export const DEFAULT_WAYPOINT_RETRY_MS = 1000;
/** The longest wait between retries of a waypoint reconcile that keeps failing (the informers' bound too). */
export const MAX_WAYPOINT_RETRY_MS = 30_000;
/** Status writes in flight at once (startup writes one per policy, route and waypoint). */
export const STATUS_WRITE_CONCURRENCY = 8;

export class Controller {
  readonly store = new ObjectStore();
  readonly #o: ControllerOptions;
  /** Services only other clusters have, as the last merge imported them (`namespace/name`). */
  #imported: ReadonlySet<string> = new Set();
  readonly #log: Logger;
  #model: MeshModel | undefined;
  #dirty = true;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #stopped = false;
  #ready = false;
  /** Waypoint reconciles failed in a row, and the timer of the next try. */
  #waypointFailures = 0;
  #waypointRetry: NodeJS.Timeout | undefined;
  #waypointsRetryAt = 0;
  #statuses = new Map<string, ObjectStatus>();
  #written = new Map<string, string>();
  #waypointsDirty = true;
  /** The Waypoints refused for a shared ServiceAccount at the last compile (CompileState.sharedAccountsKey). */
  #sharedAccountsKey: string | undefined;
  readonly #metrics?: { compiles: Counter; compileErrors: Counter; rejected: Counter; objects: Gauge; findings: Gauge; compileSeconds: Histogram };

  constructor(options: ControllerOptions) {
    this.#o = options;
    this.#log = options.logger ?? silentLogger;
    if (options.registry) {
      const registers = [options.registry];
      this.#metrics = {
        compiles: new Counter({ name: 'weft_controller_compiles_total', help: 'Model compilations', registers }),
        compileErrors: new Counter({ name: 'weft_controller_compile_errors_total', help: 'Compilations that failed (the last good model kept serving)', registers }),
        rejected: new Counter({ name: 'weft_controller_rejected_objects_total', help: 'Object updates refused as invalid', labelNames: ['kind'], registers }),
        objects: new Gauge({ name: 'weft_controller_objects', help: 'Accepted input objects', registers }),
        findings: new Gauge({ name: 'weft_controller_findings', help: 'What the last compilation refused or left out (a refused Waypoint or Telemetry, a route\'s missing backend, ...), by object kind and reason; each is in its object\'s status', labelNames: ['kind', 'reason'], registers }),
        compileSeconds: new Histogram({ name: 'weft_controller_compile_seconds', help: 'Time to compile the model from the accepted objects', buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5], registers }),
      };
    }
    options.waypoints?.onChange(() => this.#markDirty());
    options.federation?.onChange(() => this.#markDirty());
    // A fetch that changed what a jwksUri holds (keys, or why there are none) is compiled in.
    this.#jwks = new JwksResolver({ ...options.jwks, logger: this.#log, ...(options.registry ? { registry: options.registry } : {}) });
    this.#jwks.onChange(() => this.#markDirty());
    this.#leadership = options.leadership ?? ALWAYS_LEADER;
    this.#leadership.onChange((leader) => {
      if (!leader) return;
      // A new leader writes what it computes, whatever an earlier leader left behind.
      this.#written.clear();
      this.#findingsDirty = true;
      this.#waypointsDirty = true;
      this.#markDirty(false);
    });
  }

  readonly #leadership: Leadership;
  readonly #jwks: JwksResolver;
  #findingsDirty = true;

  /** Whether this replica writes status and waypoint Deployments. */
  get leader(): boolean {
    return this.#leadership.isLeader;
  }

  /** True once the first snapshot is compiled and published. */
  get ready(): boolean {
    return this.#ready;
  }

  get model(): MeshModel | undefined {
    return this.#model;
  }

  /** Current status of every status-bearing object, by key (`Kind/namespace/name`). */
  statuses(): ReadonlyMap<string, ObjectStatus> {
    return this.#statuses;
  }

  async start(): Promise<void> {
    await this.#o.source.start((events) => this.#onEvents(events));
    // The first publish carries the jwksUris' keys (each fetch ends within its 5 s deadline), as
    // istiod fetches within its first push: a restarted controller does not refuse every token of
    // those issuers until its fetches come back.
    this.#jwks.want(jwksUrisOf(this.store.inputs().requestAuthentications));
    await this.#jwks.settled();
    await this.#reconcile();
    this.#ready = true;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    clearTimeout(this.#waypointRetry);
    this.#jwks.stop();
    await this.#o.source.stop();
    await this.#running;
    await this.#o.waypoints?.stop();
  }

  /** Resolves when no reconcile is pending or running. */
  async settled(): Promise<void> {
    for (;;) {
      if (this.#running) await this.#running;
      else if (this.#timer) await new Promise((r) => setTimeout(r, this.#o.debounceMs ?? DEFAULT_DEBOUNCE_MS));
      else return;
    }
  }

  #onEvents(events: SourceEvent[]): void {
    const r = this.store.apply(events);
    for (const rej of r.rejections) {
      const kind = rej.key.slice(0, rej.key.indexOf('/'));
      this.#metrics?.rejected.inc({ kind });
      this.#log.warn('invalid object refused; its previous version stays in force', {
        object: rej.key,
        ...(rej.origin ? { file: rej.origin } : {}),
        issues: summarizeIssues(rej.issues),
      });
    }
    // A status-only or no-op update: ours seen back, or someone else's that replaced ours. Forget
    // what was written: the next pass compares with the live status and restores ours if it is gone.
    for (const key of r.restated) this.#written.delete(key);
    // A refused object of another API group has its verdict as an Event only (#eventFindings).
    if (r.rejections.length > 0) this.#findingsDirty = true;
    if (r.changed || r.rejections.length > 0 || r.touched.length > 0 || r.restated.length > 0) {
      if (events.some((e) => (e.type === 'upsert' && e.object.kind === 'Waypoint') || (e.type === 'delete' && e.kind === 'Waypoint') || e.type === 'snapshot')) this.#waypointsDirty = true;
      // A Waypoint itself changed: reconcile now, whatever the backoff of earlier failures. Not its
      // status (we write it: another Waypoint's new address must not bring a failing one's retry forward).
      if (events.map((e) => this.#waypointSpecChanged(e)).includes(true)) this.#waypointsRetryAt = 0;
      this.#markDirty(r.changed);
    }
  }

  /** What each Waypoint was last seen asking for (labels, annotations, spec), by namespace/name. */
  readonly #waypointSpecs = new Map<string, string>();

  /** Whether an event adds, removes or changes what a Waypoint asks for (its status aside). */
  #waypointSpecChanged(e: SourceEvent): boolean {
    if (e.type === 'delete') return e.kind === 'Waypoint' && this.#waypointSpecs.delete(`${e.namespace}/${e.name}`);
    const snapshot = e.type === 'snapshot' && e.kinds.includes('Waypoint');
    const objects = e.type === 'upsert' ? [e.object] : snapshot ? e.objects : [];
    let changed = false;
    const seen = new Set<string>();
    for (const o of objects) {
      if (o.kind !== 'Waypoint') continue;
      const m = (o.metadata ?? {}) as { namespace?: string; name?: string; labels?: unknown; annotations?: unknown };
      const key = `${m.namespace}/${m.name}`;
      const asked = JSON.stringify([m.labels, m.annotations, (o as { spec?: unknown }).spec]);
      if (this.#waypointSpecs.get(key) !== asked) changed = true;
      this.#waypointSpecs.set(key, asked);
      seen.add(key);
    }
    // A relist replaces them all: one it no longer holds was deleted.
    if (snapshot) {
      for (const key of this.#waypointSpecs.keys()) {
        if (!seen.has(key)) {
          this.#waypointSpecs.delete(key);
          changed = true;
        }
      }
    }
    return changed;
  }

  #markDirty(recompile = true): void {
    if (recompile) this.#dirty = true;
    if (this.#stopped || this.#timer) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (this.#running) {
        this.#running.then(() => this.#markDirty(false));
        return;
      }
      this.#running = this.#reconcile().finally(() => (this.#running = undefined));
    }, this.#o.debounceMs ?? DEFAULT_DEBOUNCE_MS);
  }

  async #reconcile(): Promise<void> {
    if (this.#stopped) return;
    const leader = this.#leadership.isLeader;
    if (this.#waypointsDirty && this.#o.waypoints && !leader) {
      this.#waypointsDirty = false;
      await this.#o.waypoints.observe?.(this.store.objects('Waypoint') as Array<import('../../lib/model/objects.ts').Waypoint>).catch((e: Error) => {
        this.#log.warn('waypoint observe failed; will retry', { error: e.message });
        this.#waypointsDirty = true;
      });
    }
    // After failures, other changes (pods, status writes, the reconciler's own informers) do not
    // bring the retry forward: only its timer or a Waypoint's change does.
    if (this.#waypointsDirty && this.#o.waypoints && leader && Date.now() >= this.#waypointsRetryAt) {
      this.#waypointsDirty = false;
      try {
        // A Waypoint whose ServiceAccount or image is not allowed, or whose ServiceAccount other pods
        // of its namespace run as (they would count as the waypoint), is never launched.
        const shared = sharedWaypointAccounts(this.store.inputs());
        const admitted = (this.store.objects('Waypoint') as Array<import('../../lib/model/objects.ts').Waypoint>)
          .filter((w) => admitWaypoint(w, this.#o.compile?.waypointAllowList) === undefined && !shared.has(`${w.metadata.namespace}/${w.metadata.name}`));
        await this.#o.waypoints.reconcile(admitted);
        this.#waypointFailures = 0;
        this.#waypointsRetryAt = 0;
      } catch (e) {
        // Backoff: a Waypoint that fails for good (its namespace's quota, say) must not have every
        // Waypoint of the cluster reconciled again every second for ever.
        const retryInMs = backoffDelay(this.#waypointFailures++, { initialMs: this.#o.waypointRetryMs ?? DEFAULT_WAYPOINT_RETRY_MS, maxMs: MAX_WAYPOINT_RETRY_MS });
        this.#log.error('waypoint reconcile failed; will retry', { error: (e as Error).message, retryInMs });
        this.#waypointsDirty = true;
        this.#waypointsRetryAt = Date.now() + retryInMs;
        clearTimeout(this.#waypointRetry);
        this.#waypointRetry = setTimeout(() => {
          this.#waypointsRetryAt = 0;
          this.#markDirty(false);
        }, retryInMs).unref();
      }
    }
    let findings: CompileFinding[] = [];
    const runtime = this.#o.waypoints?.runtime();
    if (this.#dirty || !this.#model) {
      this.#dirty = false;
      const started = performance.now();
      let result: CompileResult;
      try {
        const inputs = this.store.inputs();
        // The jwksUris named now: new ones start fetching (off this loop), and compile reads what each holds.
        this.#jwks.want(jwksUrisOf(inputs.requestAuthentications));
        // Only what changed since the last compilation is recompiled (pods and EndpointSlices; anything else in full).
        result = compileChanges(inputs, {
          ...this.#o.compile, cache: this.#cache, ...(runtime ? { waypointRuntime: runtime } : {}),
          ...(this.#o.federation ? { importedServices: this.#imported } : {}),
          jwks: this.#jwks.snapshot(),
        }, this.store.takeChanges());
      } catch (e) {
        // The next compilation starts afresh: the changes this one consumed are not lost.
        this.#cache.last = undefined;
        // A compiler bug must not take the mesh down: keep serving the last good model.
        this.#log.error('compile failed; the last good config keeps serving', { error: (e as Error).message, stack: (e as Error).stack });
        this.#metrics?.compileErrors.inc();
        return;
      }
      this.#lastCompileMs = performance.now() - started;
      this.#metrics?.compileSeconds.observe(this.#lastCompileMs / 1000);
      const model = this.#o.federation ? this.#o.federation.merge(result.model) : result.model;
      this.#model = model;
      // A pod taking up (or leaving) a Waypoint's ServiceAccount changes which Waypoints may run.
      const sharedKey = this.#cache.last?.sharedAccountsKey;
      if (sharedKey !== undefined && sharedKey !== this.#sharedAccountsKey) {
        if (this.#sharedAccountsKey !== undefined) {
          this.#waypointsDirty = true;
          this.#waypointsRetryAt = 0;
          this.#markDirty(false);
        }
        this.#sharedAccountsKey = sharedKey;
      }
      if (this.#o.federation) {
        // Routes resolve backendRefs to what other clusters alone have (compile.ts
        // importedServices); when that set moved, one more round gets their status right.
        const imported = new Set([...model.services.keys()].filter((k) => !result.model.services.has(k)));
        if (imported.size !== this.#imported.size || [...imported].some((k) => !this.#imported.has(k))) {
          this.#imported = imported;
          this.#markDirty();
        }
      }
      // A Service this cluster's export leaves out says why, at its field (a Waypoint's status says
      // whether it serves; one left out is counted and logged by the federation).
      const leftOut = (this.#o.federation?.leftOut?.() ?? []).filter((x) => x.kind === 'Service');
      findings = leftOut.length === 0 ? result.findings : [...result.findings, ...leftOut.map((x): CompileFinding => ({ kind: x.kind, namespace: x.namespace, name: x.name, path: x.path, reason: 'NotExported', message: x.message }))];
      this.#findingsDirty = true;
      this.#lastFindings = findings;
      this.#lastRouteParents = result.routeParents;
      this.#metrics?.compiles.inc();
      this.#metrics?.objects.set(this.store.objects().length);
      if (this.#metrics) {
        const counts = new Map<string, { kind: string; reason: string; n: number }>();
        for (const f of findings) {
          const k = `${f.kind}\u0000${f.reason}`;
          counts.set(k, { kind: f.kind, reason: f.reason, n: (counts.get(k)?.n ?? 0) + 1 });
        }
        this.#metrics.findings.reset();
        for (const c of counts.values()) this.#metrics.findings.set({ kind: c.kind, reason: c.reason }, c.n);
      }
      const version = this.#o.configServer.publish(model);
      this.#log.debug('model published', { version, workloads: model.workloads.size, services: model.services.size });
    } else {
      findings = this.#lastFindings;
    }
    await this.#writeStatuses(findings, runtime);
    if (leader && this.#findingsDirty && this.#o.onFindings) {
      this.#findingsDirty = false;
      const more = await this.#o.onFindings(this.#eventFindings(findings)).catch((e: Error) => this.#log.warn('findings not recorded', { error: e.message }));
      // Events held back by the recorder's bound are written at the next round, in a quiet cluster too.
      if (more === true) {
        this.#findingsDirty = true;
        this.#markDirty(false);
      }
    }
  }

  /**
   * The findings to record as Events. An object of another API group than its kind's own (Istio's
   * security.istio.io, whose status istiod may own) gets no Weft status: its findings name its
   * apiVersion, and its refusal (Invalid at its field) is an Event too.
   */
  #eventFindings(findings: readonly CompileFinding[]): CompileFinding[] {
    // Compiled, such an object is named `name@group` (nameIn): its Event names its own name and apiVersion.
    const out = findings.map((f) => {
      const obj = this.store.get(keyOfNamed(f.kind, f.namespace || undefined, f.name));
      return obj && inOtherGroup(f.kind, obj.apiVersion) ? { ...f, name: obj.metadata.name, apiVersion: obj.apiVersion } : f;
    });
    for (const key of this.store.statusKeys()) {
      const verdict = this.store.invalid(key);
      const kind = key.slice(0, key.indexOf('/'));
      if (!verdict || !inOtherGroup(kind, verdict.apiVersion)) continue;
      const st = invalidStatus(key, verdict.issues);
      out.push({ kind, namespace: st.namespace, name: st.name, path: st.path ?? '', reason: st.reason, message: st.message, apiVersion: verdict.apiVersion! });
    }
    return out;
  }

  #lastFindings: CompileFinding[] = [];
  #lastRouteParents: CompileResult['routeParents'] = new Map();
  #lastCompileMs = 0;
  readonly #cache = new CompileCache();

  /** Duration of the most recent compilation. */
  get lastCompileMs(): number {
    return this.#lastCompileMs;
  }

  async #writeStatuses(findings: CompileFinding[], runtime: ReadonlyMap<string, WaypointRuntime> | undefined): Promise<void> {
    // An object of another API group than its kind's own says so (a source keeps it apart, Kubernetes writes no Weft status into it).
    const otherGroup = (kind: string, apiVersion: string | undefined): { apiVersion?: string } => (inOtherGroup(kind, apiVersion) ? { apiVersion: apiVersion! } : {});
    const byKey = new Map<string, CompileFinding>();
    for (const f of findings) {
      const key = `${f.kind}/${f.namespace}/${f.name}`;
      if (!byKey.has(key)) byKey.set(key, f);
    }
    const next = new Map<string, ObjectStatus>();
    for (const key of this.store.statusKeys()) {
      const invalid = this.store.invalid(key);
      if (invalid) {
        if (isMeshKind(key.slice(0, key.indexOf('/')))) next.set(key, { ...invalidStatus(key, invalid.issues, invalid.generation), ...otherGroup(key.slice(0, key.indexOf('/')), invalid.apiVersion) });
        continue;
      }
      const obj = this.store.get(key)!;
      const base = { kind: obj.kind as MeshKind, namespace: obj.metadata.namespace ?? '', name: obj.metadata.name, ...otherGroup(obj.kind, obj.apiVersion), ...(obj.metadata.generation !== undefined ? { generation: obj.metadata.generation } : {}) };
      if (obj.kind === 'Waypoint') {
        const wp = this.#model?.waypoints.get(`${base.namespace}/${base.name}`);
        const rt = runtime?.get(`${base.namespace}/${base.name}`);
        const refused = byKey.get(key);
        next.set(key, {
          ...base,
          ok: wp?.ready ?? false,
          ...(refused ? { path: refused.path } : {}),
          reason: wp?.ready ? 'Ready' : (refused?.reason ?? rt?.reason ?? wp?.reason ?? 'Pending'),
          message: wp?.ready ? `serving at ${wp.address}:${wp.port}` : `waypoint is not ready: ${refused?.message ?? rt?.message ?? rt?.reason ?? wp?.reason ?? 'not reconciled yet'}`,
          ...(wp?.address ? { address: wp.address } : {}),
        });
        continue;
      }
      if (!KINDS[obj.kind].hasStatus) continue;
      const f = byKey.get(key);
      if (obj.kind === 'HTTPRoute' || obj.kind === 'GRPCRoute') {
        // Gateway API: a verdict per Service parent; the flat fields summarize the first failure.
        const parents = this.#lastRouteParents.get(key) ?? [];
        const failed = parents.flatMap((p) => p.conditions).find((c) => !c.status);
        next.set(key, {
          ...base,
          ok: failed === undefined,
          reason: failed?.reason ?? (parents.length > 0 ? 'Accepted' : 'NoServiceParent'),
          message: failed?.message ?? (parents.length > 0 ? 'accepted and in force' : 'no Service parent: left to the controllers of its other parents'),
          ...(failed && f ? { path: f.path } : {}),
          parents,
        });
        continue;
      }
      next.set(key, f
        ? { ...base, ok: false, reason: f.reason, message: f.message, path: f.path }
        : { ...base, ok: true, reason: 'Accepted', message: 'accepted and in force' });
    }
    this.#statuses = next;
    // Followers compute status (admin /debug/status) but leave writing it to the leader.
    if (!this.#leadership.isLeader) return;
    for (const key of this.#written.keys()) if (!next.has(key)) this.#written.delete(key);
    const todo: Array<[string, ObjectStatus, string]> = [];
    for (const [key, st] of next) {
      const fp = JSON.stringify(st);
      if (this.#written.get(key) !== fp) todo.push([key, st, fp]);
    }
    let retry = false;
    const worker = async () => {
      for (let item = todo.shift(); item; item = todo.shift()) {
        const [key, st, fp] = item;
        try {
          await this.#o.source.writeStatus(st);
          this.#written.set(key, fp);
        } catch (e) {
          this.#log.warn('status write failed; will retry', { object: key, error: (e as Error).message });
          retry = true;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(STATUS_WRITE_CONCURRENCY, todo.length) }, worker));
    if (retry) setTimeout(() => this.#markDirty(false), 1000).unref();
  }
}
