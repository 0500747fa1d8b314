// Leader election on a coordination.k8s.io/v1 Lease, the way client-go's leaderelection does it:
// a replica takes the Lease when it has no holder or the holder's renewTime is older than
// leaseDurationSeconds, renews it every renewInterval while it leads, and steps down when a renewal
// has failed for longer than the lease (another replica may have taken it). Every write is an
// update with the resourceVersion read just before, so two replicas racing for an expired Lease
// cannot both win: the API server refuses the second with 409 Conflict.
//
// Only the leader writes (status subresources, waypoint Deployments, Events); every replica serves
// the config stream and the certificate service, so agents may connect to any of them.
import { CoordinationV1Api, type KubeConfig, type V1Lease } from '@kubernetes/client-node';
import { CONTROLLER_LEASE } from '../../../lib/defaults.ts';
import type { Leadership } from '../controller.ts';
import { silentLogger, type Logger } from '../log.ts';

export interface LeaseElectorOptions {
  kubeConfig: KubeConfig;
  namespace: string;
  /** This replica's name (the pod name). */
  identity: string;
  /** Default `weft-controller-leader`. */
  leaseName?: string;
  /** How long a Lease not renewed stays the holder's; default 15 s (client-go's default). */
  leaseDurationSeconds?: number;
  /** How often the leader renews and a follower retries; default 2 s. */
  retryPeriodMs?: number;
  clock?: () => number;
  logger?: Logger;
}

const code = (e: unknown): number | undefined => (e as { code?: number }).code;

/** Microsecond timestamps as the API server writes them (metav1.MicroTime). */
const microTime = (ms: number): Date => new Date(ms);

export class LeaseElector implements Leadership {
  readonly #o: LeaseElectorOptions;
  readonly #api: CoordinationV1Api;
  readonly #log: Logger;
  readonly #listeners: Array<(leader: boolean) => void> = [];
  readonly #name: string;
  readonly #durationS: number;
  readonly #periodMs: number;
  readonly #clock: () => number;
  #leader = false;
  #lastRenew = 0;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;

  constructor(options: LeaseElectorOptions) {
    this.#o = options;
    this.#api = options.kubeConfig.makeApiClient(CoordinationV1Api);
    this.#log = options.logger ?? silentLogger;
    this.#name = options.leaseName ?? CONTROLLER_LEASE;
    this.#durationS = options.leaseDurationSeconds ?? 15;
    this.#periodMs = options.retryPeriodMs ?? 2000;
    this.#clock = options.clock ?? Date.now;
  }

  get isLeader(): boolean {
    return this.#leader;
  }

  get identity(): string {
    return this.#o.identity;
  }

  onChange(listener: (leader: boolean) => void): void {
    this.#listeners.push(listener);
  }

  /** Tries once at once, then every retry period; resolves after the first try. */
  async start(): Promise<void> {
    await this.#tick();
  }

  /** Stops renewing; a leader releases the Lease (holder cleared) so a successor need not wait. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    if (!this.#leader) return;
    try {
      const lease = await this.#api.readNamespacedLease({ name: this.#name, namespace: this.#o.namespace });
      if (lease.spec?.holderIdentity === this.#o.identity) {
        lease.spec.holderIdentity = '';
        await this.#api.replaceNamespacedLease({ name: this.#name, namespace: this.#o.namespace, body: lease });
      }
    } catch {
      // Best effort: the Lease expires on its own.
    }
    this.#set(false);
  }

  #set(leader: boolean): void {
    if (leader === this.#leader) return;
    this.#leader = leader;
    this.#log.info(leader ? 'became the leader: writing status and waypoint Deployments' : 'no longer the leader: only serving', { lease: `${this.#o.namespace}/${this.#name}`, identity: this.#o.identity });
    for (const l of this.#listeners) l(leader);
  }

  async #tick(): Promise<void> {
    if (this.#stopped) return;
    try {
      const won = await this.#tryAcquireOrRenew();
      if (won) this.#lastRenew = this.#clock();
      else if (this.#leader) this.#set(false);
      if (won) this.#set(true);
    } catch (e) {
      this.#log.warn('lease not renewed', { lease: `${this.#o.namespace}/${this.#name}`, error: (e as Error).message });
      // The lease is ours until it expires; after that another replica may hold it.
      if (this.#leader && this.#clock() - this.#lastRenew > this.#durationS * 1000) this.#set(false);
    }
    if (!this.#stopped) {
      this.#timer = setTimeout(() => void this.#tick(), this.#periodMs);
      this.#timer.unref();
    }
  }

  async #tryAcquireOrRenew(): Promise<boolean> {
    const ns = this.#o.namespace;
    const now = this.#clock();
    let lease: V1Lease | undefined;
    try {
      lease = await this.#api.readNamespacedLease({ name: this.#name, namespace: ns });
    } catch (e) {
      if (code(e) !== 404) throw e;
    }
    const spec = {
      holderIdentity: this.#o.identity,
      leaseDurationSeconds: this.#durationS,
      renewTime: microTime(now),
    };
    if (!lease) {
      try {
        await this.#api.createNamespacedLease({
          namespace: ns,
          body: { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name: this.#name, namespace: ns }, spec: { ...spec, acquireTime: microTime(now), leaseTransitions: 0 } },
        });
        return true;
      } catch (e) {
        if (code(e) === 409) return false;
        throw e;
      }
    }
    const holder = lease.spec?.holderIdentity ?? '';
    const renewed = lease.spec?.renewTime ? new Date(lease.spec.renewTime as unknown as string).getTime() : 0;
    const duration = (lease.spec?.leaseDurationSeconds ?? this.#durationS) * 1000;
    const mine = holder === this.#o.identity;
    if (!mine && holder !== '' && renewed + duration > now) return false;
    const transitions = lease.spec?.leaseTransitions ?? 0;
    lease.spec = {
      ...lease.spec,
      ...spec,
      ...(mine ? {} : { acquireTime: microTime(now), leaseTransitions: transitions + 1 }),
    };
    try {
      await this.#api.replaceNamespacedLease({ name: this.#name, namespace: ns, body: lease });
      return true;
    } catch (e) {
      if (code(e) === 409) return false;
      throw e;
    }
  }
}
