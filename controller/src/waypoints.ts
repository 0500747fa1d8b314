// The Waypoint reconciler. In local mode an injected LocalWaypointLauncher (the local mesh runner)
// starts a waypoint process per Waypoint. Kubernetes mode (a ServiceAccount, Deployment and Service
// per Waypoint, through the API) is KubeWaypointDriver in waypoints-kube.ts, a module of its own so
// that only a controller started with --kube loads @kubernetes/client-node.
import { DEFAULT_TRUST_DOMAIN, nsName, spiffeIdOf } from '../../lib/model/mesh.ts';
import type { Waypoint } from '../../lib/model/objects.ts';
import type { WaypointRuntime } from './compile.ts';
import type { WaypointDriver } from './controller.ts';
import { silentLogger, type Logger } from './log.ts';

/** What a launcher needs to run one waypoint. */
export interface WaypointLaunchSpec {
  name: string;
  namespace: string;
  serviceAccount: string;
  spiffeId: string;
  replicas: number;
  image?: string;
  /** The waypoint's --max-requests; unset: its default. */
  maxRequests?: number;
  /** The waypoint's --quota-redis and --quota-failure-mode (Waypoint spec.quotaStore). */
  quotaStore?: { redis: string; failureMode?: 'open' | 'closed' };
}

/** Runs waypoints outside Kubernetes (the local mesh runner implements it). */
export interface LocalWaypointLauncher {
  /** Starts the waypoint, or updates a running one; resolves with the address agents dial (port 15008). */
  ensure(spec: WaypointLaunchSpec): Promise<{ address: string }>;
  /** Stops and removes it; resolves when gone. Must succeed for an unknown waypoint. */
  remove(namespace: string, name: string): Promise<void>;
  /** Optional: tells the reconciler when a launched waypoint dies or comes back. */
  onExit?(listener: (namespace: string, name: string, reason: string) => void): void;
}

/** A waypoint could not be launched or its Kubernetes objects could not be written. */
export class WaypointReconcileError extends Error {
  readonly code = 'WEFT_WAYPOINT_RECONCILE';
  constructor(waypoint: string, cause: unknown) {
    super(`waypoint ${waypoint}: ${(cause as Error)?.message ?? String(cause)}`, { cause });
    this.name = 'WaypointReconcileError';
  }
}

export function launchSpec(wp: Waypoint, trustDomain: string): WaypointLaunchSpec {
  const sa = wp.spec?.serviceAccountName ?? wp.metadata.name;
  return {
    name: wp.metadata.name,
    namespace: wp.metadata.namespace!,
    serviceAccount: sa,
    spiffeId: spiffeIdOf(trustDomain, wp.metadata.namespace!, sa),
    replicas: wp.spec?.replicas ?? 1,
    ...(wp.spec?.image ? { image: wp.spec.image } : {}),
    ...(wp.spec?.maxRequests !== undefined ? { maxRequests: wp.spec.maxRequests } : {}),
    ...(wp.spec?.quotaStore ? { quotaStore: { ...wp.spec.quotaStore } } : {}),
  };
}

export abstract class BaseDriver implements WaypointDriver {
  protected readonly runtimeMap = new Map<string, WaypointRuntime>();
  readonly #listeners: Array<() => void> = [];
  runtime(): ReadonlyMap<string, WaypointRuntime> {
    return this.runtimeMap;
  }
  onChange(listener: () => void): void {
    this.#listeners.push(listener);
  }
  protected changed(): void {
    for (const l of this.#listeners) l();
  }
  protected setRuntime(key: string, rt: WaypointRuntime | undefined): void {
    const prev = this.runtimeMap.get(key);
    if (JSON.stringify(prev) === JSON.stringify(rt)) return;
    if (rt) this.runtimeMap.set(key, rt);
    else this.runtimeMap.delete(key);
    this.changed();
  }
  abstract reconcile(waypoints: readonly Waypoint[]): Promise<void>;
  async observe(_waypoints: readonly Waypoint[]): Promise<void> {}
  abstract stop(): Promise<void>;
}

export interface LocalWaypointDriverOptions {
  launcher: LocalWaypointLauncher;
  trustDomain?: string;
  logger?: Logger;
}

/** Local mode: one launched waypoint per Waypoint object. */
export class LocalWaypointDriver extends BaseDriver {
  readonly #o: LocalWaypointDriverOptions;
  readonly #log: Logger;
  readonly #launched = new Map<string, string>();

  constructor(options: LocalWaypointDriverOptions) {
    super();
    this.#o = options;
    this.#log = options.logger ?? silentLogger;
    options.launcher.onExit?.((namespace, name, reason) => {
      const key = nsName(namespace, name);
      this.#launched.delete(key);
      this.setRuntime(key, { ready: false, reason: `Exited: ${reason}` });
    });
  }

  async reconcile(waypoints: readonly Waypoint[]): Promise<void> {
    const want = new Map(waypoints.map((w) => [nsName(w.metadata.namespace!, w.metadata.name), w]));
    const errors: Error[] = [];
    for (const key of [...this.#launched.keys()]) {
      if (want.has(key)) continue;
      const [ns, name] = key.split('/') as [string, string];
      try {
        await this.#o.launcher.remove(ns, name);
        this.#launched.delete(key);
        this.setRuntime(key, undefined);
      } catch (e) {
        errors.push(new WaypointReconcileError(key, e));
      }
    }
    for (const [key, wp] of want) {
      const spec = launchSpec(wp, this.#o.trustDomain ?? DEFAULT_TRUST_DOMAIN);
      const fp = JSON.stringify(spec);
      if (this.#launched.get(key) === fp && this.runtimeMap.get(key)?.ready) continue;
      try {
        const { address } = await this.#o.launcher.ensure(spec);
        this.#launched.set(key, fp);
        this.setRuntime(key, { address, ready: true });
        this.#log.info('waypoint running', { waypoint: key, address });
      } catch (e) {
        const err = new WaypointReconcileError(key, e);
        this.setRuntime(key, { ready: false, reason: `LaunchFailed: ${(e as Error).message}` });
        errors.push(err);
      }
    }
    if (errors.length > 0) throw new AggregateError(errors, errors.map((e) => e.message).join('; '));
  }

  async stop(): Promise<void> {}
}

