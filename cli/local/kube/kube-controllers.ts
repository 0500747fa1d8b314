// THIS IS NOT kube-controller-manager OR kube-scheduler. In the kube lab it stands in for the
// controllers a cluster runs and that Weft depends on: Deployments → ReplicaSets → Pods,
// DaemonSets → one Pod per Node, the scheduler (a node for each Pod without one), EndpointSlices
// from Services' selectors and their Pods' readiness, and garbage collection by ownerReferences.
// Where it differs, the real controllers are right. What it follows of them:
//   - Deployment: one ReplicaSet per pod template (`<name>-<hash>`, label pod-template-hash), rolling
//     update per spec.strategy.rollingUpdate (maxSurge, maxUnavailable; ints or percentages, the
//     defaults 25 %), old ReplicaSets scaled down only as new Pods become ready; status replicas,
//     updatedReplicas, readyReplicas, availableReplicas, observedGeneration;
//   - DaemonSet: one Pod per Node (label controller-revision-hash), RollingUpdate one node at a
//     time: with maxSurge > 0 the new Pod starts beside the old one, which is deleted once the new
//     one is ready; otherwise the old one goes first; status desiredNumberScheduled, numberReady,
//     updatedNumberScheduled, numberAvailable, observedGeneration;
//   - ReplicaSet: creates and deletes Pods (`<rs>-<5 chars>`) to spec.replicas, not-ready ones first;
//   - EndpointSlice (discovery.k8s.io/v1, label kubernetes.io/service-name): the addresses of Pods
//     the Service selects that have an IP, each with conditions.ready, ports resolved by number or
//     by container port name;
//   - deleting an owner deletes what it controls (foreground cascading, at once).
// It runs in the test's process and works on the FakeApiServer directly (each reconcile reads and
// writes synchronously, so its writes never race with each other); a pass every `intervalMs`.
import { createHash, randomBytes } from 'node:crypto';
import type { FakeApiServer } from './fake-apiserver.ts';

type Obj = ReturnType<FakeApiServer['apply']>;
interface OwnerRef { apiVersion: string; kind: string; name: string; uid: string; controller?: boolean; blockOwnerDeletion?: boolean }
interface PodTemplate { metadata?: { labels?: Record<string, string>; annotations?: Record<string, string> }; spec: Record<string, unknown> }
interface ContainerPort { name?: string; containerPort: number; protocol?: string }

export interface LabControllersOptions {
  /** Pass interval; default 100 ms. */
  intervalMs?: number;
}

/** The hash Kubernetes would put in pod-template-hash / controller-revision-hash (ours: sha256 of the template). */
export function templateHash(template: unknown): string {
  return createHash('sha256').update(JSON.stringify(template)).digest('hex').slice(0, 10);
}

const meta = (o: Obj) => o.metadata;
const spec = <T>(o: Obj) => (o['spec'] ?? {}) as T;
const statusOf = <T>(o: Obj) => (o['status'] ?? {}) as T;

export function podReady(p: Obj): boolean {
  const conds = statusOf<{ conditions?: Array<{ type: string; status: string }> }>(p).conditions ?? [];
  return conds.some((c) => c.type === 'Ready' && c.status === 'True');
}

function controllerOf(o: Obj): OwnerRef | undefined {
  return ((meta(o)['ownerReferences'] ?? []) as OwnerRef[]).find((r) => r.controller);
}

function ownedBy(o: Obj, owner: Obj): boolean {
  return controllerOf(o)?.uid === meta(owner).uid;
}

function ownerRef(owner: Obj): OwnerRef {
  return { apiVersion: owner.apiVersion!, kind: owner.kind!, name: meta(owner).name, uid: meta(owner).uid!, controller: true, blockOwnerDeletion: true };
}

/** An int-or-percent of `of` (percent rounded up for surge, down for unavailability, as Kubernetes does). */
export function intOrPercent(v: number | string | undefined, of: number, fallback: string, roundUp: boolean): number {
  const x = v ?? fallback;
  if (typeof x === 'number') return x;
  const m = /^(\d+)%$/.exec(x);
  if (!m) return Number(x) || 0;
  const f = (Number(m[1]) * of) / 100;
  return roundUp ? Math.ceil(f) : Math.floor(f);
}

function selects(selector: Record<string, string> | undefined, labels: Record<string, string> | undefined): boolean {
  if (!selector || Object.keys(selector).length === 0) return false;
  return Object.entries(selector).every(([k, v]) => labels?.[k] === v);
}

export class LabControllers {
  readonly #api: FakeApiServer;
  readonly #intervalMs: number;
  #timer: NodeJS.Timeout | undefined;
  /** What a pass threw last (a test's explain). */
  lastError: Error | undefined;

  constructor(api: FakeApiServer, o: LabControllersOptions = {}) {
    this.#api = api;
    this.#intervalMs = o.intervalMs ?? 100;
  }

  start(): void {
    const tick = () => {
      try {
        this.reconcile();
      } catch (e) {
        this.lastError = e as Error;
      }
      this.#timer = setTimeout(tick, this.#intervalMs);
    };
    tick();
  }

  stop(): void {
    clearTimeout(this.#timer);
  }

  /** One pass of every controller. */
  reconcile(): void {
    this.#garbageCollect();
    for (const d of this.#api.list('Deployment')) this.#deployment(d);
    for (const rs of this.#api.list('ReplicaSet')) this.#replicaSet(rs);
    for (const ds of this.#api.list('DaemonSet')) this.#daemonSet(ds);
    this.#schedule();
    for (const svc of this.#api.list('Service')) this.#endpointSlice(svc);
  }

  #garbageCollect(): void {
    const uids = new Set<string>();
    for (const kind of ['Deployment', 'ReplicaSet', 'DaemonSet', 'Service', 'Waypoint']) {
      try {
        for (const o of this.#api.list(kind)) uids.add(meta(o).uid!);
      } catch {
        /* kind not served (a CRD not created yet) */
      }
    }
    for (const kind of ['ReplicaSet', 'Pod', 'EndpointSlice', 'Deployment', 'Service', 'PodDisruptionBudget']) {
      for (const o of this.#api.list(kind)) {
        const owner = controllerOf(o);
        if (owner && ['Deployment', 'ReplicaSet', 'DaemonSet', 'Service', 'Waypoint'].includes(owner.kind) && !uids.has(owner.uid)) {
          this.#api.remove(kind, meta(o).namespace, meta(o).name);
        }
      }
    }
  }

  #nodes(): string[] {
    return this.#api.list('Node').map((n) => meta(n).name).sort();
  }

  #pods(ns: string): Obj[] {
    return this.#api.list('Pod').filter((p) => meta(p).namespace === ns);
  }

  #newPod(owner: Obj, template: PodTemplate, name: string, extraLabels: Record<string, string>, nodeName?: string): void {
    const t = structuredClone(template);
    this.#api.apply({
      apiVersion: 'v1', kind: 'Pod',
      metadata: {
        name, namespace: meta(owner).namespace,
        labels: { ...(t.metadata?.labels ?? {}), ...extraLabels },
        ...(t.metadata?.annotations ? { annotations: t.metadata.annotations } : {}),
        ownerReferences: [ownerRef(owner)],
      },
      spec: { ...t.spec, ...(nodeName ? { nodeName } : {}) },
      status: { phase: 'Pending' },
    });
  }

  #deployment(d: Obj): void {
    const s = spec<{ replicas?: number; template: PodTemplate; strategy?: { type?: string; rollingUpdate?: { maxSurge?: number | string; maxUnavailable?: number | string } } }>(d);
    const desired = s.replicas ?? 1;
    const hash = templateHash(s.template);
    const ns = meta(d).namespace!;
    const rsName = `${meta(d).name}-${hash}`;
    const owned = this.#api.list('ReplicaSet').filter((rs) => meta(rs).namespace === ns && ownedBy(rs, d));
    let current = owned.find((rs) => meta(rs).name === rsName);
    const old = owned.filter((rs) => rs !== current);
    const replicasOf = (rs: Obj) => spec<{ replicas?: number }>(rs).replicas ?? 0;
    const readyOf = (rs: Obj) => statusOf<{ readyReplicas?: number }>(rs).readyReplicas ?? 0;
    if (!current) {
      current = this.#api.apply({
        apiVersion: 'apps/v1', kind: 'ReplicaSet',
        metadata: { name: rsName, namespace: ns, labels: { ...(s.template.metadata?.labels ?? {}), 'pod-template-hash': hash }, ownerReferences: [ownerRef(d)] },
        spec: {
          replicas: old.length === 0 ? desired : 0,
          selector: { matchLabels: { ...((spec<{ selector?: { matchLabels?: Record<string, string> } }>(d).selector?.matchLabels) ?? {}), 'pod-template-hash': hash } },
          template: { ...s.template, metadata: { ...(s.template.metadata ?? {}), labels: { ...(s.template.metadata?.labels ?? {}), 'pod-template-hash': hash } } },
        },
      });
    }
    const recreate = s.strategy?.type === 'Recreate';
    const surge = recreate ? 0 : intOrPercent(s.strategy?.rollingUpdate?.maxSurge, desired, '25%', true);
    let unavailable = recreate ? desired : intOrPercent(s.strategy?.rollingUpdate?.maxUnavailable, desired, '25%', false);
    if (surge === 0 && unavailable === 0) unavailable = 1;
    const sets = owned.includes(current) ? owned : [...owned, current];
    const total = sets.reduce((n, rs) => n + replicasOf(rs), 0);
    const ready = sets.reduce((n, rs) => n + readyOf(rs), 0);
    // Scale the new ReplicaSet up within the surge; the old ones down as far as availability allows.
    if (replicasOf(current) < desired && total < desired + surge) {
      this.#scale(current, Math.min(desired, replicasOf(current) + (desired + surge - total)));
    } else if (replicasOf(current) > desired) {
      this.#scale(current, desired);
    }
    let canRemove = ready - (desired - unavailable);
    for (const rs of old) {
      const n = replicasOf(rs);
      if (n === 0) continue;
      // Old Pods that are not ready cost no availability.
      const notReady = n - readyOf(rs);
      const cut = Math.min(n, notReady + Math.max(0, canRemove));
      if (cut > 0) {
        this.#scale(rs, n - cut);
        canRemove -= Math.max(0, cut - notReady);
      }
    }
    for (const rs of old) if (replicasOf(rs) === 0 && (statusOf<{ replicas?: number }>(rs).replicas ?? 0) === 0) this.#api.remove('ReplicaSet', ns, meta(rs).name);
    const all = this.#api.list('ReplicaSet').filter((rs) => meta(rs).namespace === ns && ownedBy(rs, d));
    const cur = all.find((rs) => meta(rs).name === rsName)!;
    const st = {
      observedGeneration: meta(d).generation,
      replicas: all.reduce((n, rs) => n + (statusOf<{ replicas?: number }>(rs).replicas ?? 0), 0),
      updatedReplicas: statusOf<{ replicas?: number }>(cur).replicas ?? 0,
      readyReplicas: all.reduce((n, rs) => n + readyOf(rs), 0),
      availableReplicas: all.reduce((n, rs) => n + readyOf(rs), 0),
    };
    this.#writeStatus(d, st);
  }

  #scale(rs: Obj, replicas: number): void {
    const fresh = this.#api.get('ReplicaSet', meta(rs).namespace, meta(rs).name)!;
    this.#api.apply({ ...fresh, spec: { ...spec<object>(fresh), replicas } });
  }

  #writeStatus(o: Obj, st: Record<string, unknown>): void {
    const fresh = this.#api.get(o.kind!, meta(o).namespace, meta(o).name);
    if (!fresh) return;
    const prev = (fresh['status'] ?? {}) as Record<string, unknown>;
    if (Object.entries(st).every(([k, v]) => prev[k] === v)) return;
    this.#api.apply({ ...fresh, status: { ...prev, ...st } });
  }

  #replicaSet(rs: Obj): void {
    const s = spec<{ replicas?: number; template: PodTemplate }>(rs);
    const ns = meta(rs).namespace!;
    const pods = this.#pods(ns).filter((p) => ownedBy(p, rs));
    const want = s.replicas ?? 1;
    for (let i = pods.length; i < want; i++) this.#newPod(rs, s.template, `${meta(rs).name}-${randomBytes(3).toString('hex').slice(0, 5)}`, {});
    if (pods.length > want) {
      const order = [...pods].sort((a, b) => Number(podReady(a)) - Number(podReady(b)));
      for (const p of order.slice(0, pods.length - want)) this.#api.remove('Pod', ns, meta(p).name);
    }
    const now = this.#pods(ns).filter((p) => ownedBy(p, rs));
    this.#writeStatus(rs, { observedGeneration: meta(rs).generation, replicas: now.length, readyReplicas: now.filter(podReady).length, availableReplicas: now.filter(podReady).length });
  }

  #daemonSet(ds: Obj): void {
    const s = spec<{ template: PodTemplate; updateStrategy?: { type?: string; rollingUpdate?: { maxSurge?: number | string; maxUnavailable?: number | string } } }>(ds);
    const ns = meta(ds).namespace!;
    const hash = templateHash(s.template);
    const nodes = this.#nodes();
    const pods = this.#pods(ns).filter((p) => ownedBy(p, ds));
    const isNew = (p: Obj) => meta(p).labels?.['controller-revision-hash'] === hash;
    const onDelete = s.updateStrategy?.type === 'OnDelete';
    const surge = intOrPercent(s.updateStrategy?.rollingUpdate?.maxSurge, nodes.length, '0', true);
    let budget = Math.max(1, surge > 0 ? surge : intOrPercent(s.updateStrategy?.rollingUpdate?.maxUnavailable, nodes.length, '1', false));
    // A node that is mid-roll (two pods, or an old one not yet replaced and a new one not ready) uses the budget.
    for (const node of nodes) {
      const here = pods.filter((p) => spec<{ nodeName?: string }>(p).nodeName === node);
      const fresh = here.filter(isNew);
      const stale = here.filter((p) => !isNew(p));
      if (fresh.length > 0 && stale.length > 0) budget--;
    }
    for (const node of nodes) {
      const here = pods.filter((p) => spec<{ nodeName?: string }>(p).nodeName === node);
      const fresh = here.filter(isNew);
      const stale = here.filter((p) => !isNew(p));
      const create = () => this.#newPod(ds, s.template, `${meta(ds).name}-${randomBytes(3).toString('hex').slice(0, 5)}`, { 'controller-revision-hash': hash }, node);
      if (here.length === 0) {
        create();
        continue;
      }
      if (stale.length === 0 || onDelete) continue;
      if (fresh.length > 0) {
        // Surge in progress on this node: the old pod goes once the new one is ready.
        if (fresh.some(podReady)) for (const p of stale) this.#api.remove('Pod', ns, meta(p).name);
        continue;
      }
      if (budget <= 0) continue;
      budget--;
      if (surge > 0) create();
      else {
        for (const p of stale) this.#api.remove('Pod', ns, meta(p).name);
        create();
      }
    }
    const now = this.#pods(ns).filter((p) => ownedBy(p, ds));
    this.#writeStatus(ds, {
      observedGeneration: meta(ds).generation,
      desiredNumberScheduled: nodes.length,
      currentNumberScheduled: new Set(now.map((p) => spec<{ nodeName?: string }>(p).nodeName)).size,
      numberReady: now.filter(podReady).length,
      numberAvailable: now.filter(podReady).length,
      updatedNumberScheduled: now.filter(isNew).length,
      numberMisscheduled: 0,
    });
  }

  /** The scheduler: a node for each Pod without one, the node with the fewest Pods (name order breaks ties). */
  #schedule(): void {
    const nodes = this.#nodes();
    if (nodes.length === 0) return;
    const pods = this.#api.list('Pod');
    const count = new Map(nodes.map((n) => [n, 0]));
    for (const p of pods) {
      const n = spec<{ nodeName?: string }>(p).nodeName;
      if (n && count.has(n)) count.set(n, count.get(n)! + 1);
    }
    for (const p of pods) {
      const ps = spec<{ nodeName?: string; nodeSelector?: Record<string, string> }>(p);
      if (ps.nodeName) continue;
      const fits = nodes.filter((n) => !ps.nodeSelector || selects(ps.nodeSelector, meta(this.#api.get('Node', undefined, n)!).labels));
      if (fits.length === 0) continue;
      const node = fits.reduce((a, b) => (count.get(b)! < count.get(a)! ? b : a));
      count.set(node, count.get(node)! + 1);
      this.#api.apply({ ...p, spec: { ...ps, nodeName: node } });
    }
  }

  #endpointSlice(svc: Obj): void {
    const s = spec<{ selector?: Record<string, string>; ports?: Array<{ name?: string; port: number; targetPort?: number | string; protocol?: string }> }>(svc);
    const ns = meta(svc).namespace!;
    const name = `${meta(svc).name}-lab`;
    if (!s.selector || Object.keys(s.selector).length === 0) return;
    const pods = this.#pods(ns).filter((p) => selects(s.selector, meta(p).labels) && statusOf<{ podIP?: string }>(p).podIP);
    const containerPorts = (p: Obj): ContainerPort[] =>
      ((spec<{ containers?: Array<{ ports?: ContainerPort[] }> }>(p).containers ?? []).flatMap((c) => c.ports ?? []));
    const ports = (s.ports ?? []).map((sp) => {
      let port = typeof sp.targetPort === 'number' ? sp.targetPort : sp.port;
      if (typeof sp.targetPort === 'string') {
        const found = pods.flatMap(containerPorts).find((cp) => cp.name === sp.targetPort);
        port = found?.containerPort ?? sp.port;
      }
      return { ...(sp.name ? { name: sp.name } : {}), port, protocol: sp.protocol ?? 'TCP' };
    });
    const endpoints = pods.sort((a, b) => meta(a).name.localeCompare(meta(b).name)).map((p) => ({
      addresses: [statusOf<{ podIP: string }>(p).podIP],
      conditions: { ready: podReady(p), serving: podReady(p), terminating: false },
      ...(spec<{ nodeName?: string }>(p).nodeName ? { nodeName: spec<{ nodeName: string }>(p).nodeName } : {}),
      targetRef: { kind: 'Pod', name: meta(p).name, namespace: ns, uid: meta(p).uid },
    }));
    const want = { addressType: 'IPv4', endpoints, ports };
    const prev = this.#api.get('EndpointSlice', ns, name);
    if (prev && JSON.stringify({ addressType: prev['addressType'], endpoints: prev['endpoints'], ports: prev['ports'] }) === JSON.stringify(want)) return;
    this.#api.apply({
      apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice',
      metadata: { name, namespace: ns, labels: { 'kubernetes.io/service-name': meta(svc).name, 'endpointslice.kubernetes.io/managed-by': 'endpointslice-controller.k8s.io' }, ownerReferences: [ownerRef(svc)] },
      ...want,
    });
  }
}
