// Incremental compilation: a change to pods or EndpointSlices (what churns: 10,000 workloads move
// while Services, policies and routes stay put) recompiles only the workloads it names and the
// Services they are or were endpoints of, continuing from the state the last compilation left in
// the CompileCache. Anything else (a Namespace, a policy, a Service, a node address, a waypoint
// pod, different options) is compiled in full. The result equals a full compile of the same
// inputs (test/unit/controller-compile-incremental.test.ts checks that after random changes).
import { labelsMatch, type MeshModel, type Workload } from '../../lib/model/mesh.ts';
import type { EndpointSlice, Pod } from '../../lib/model/objects.ts';
import {
  compile,
  compileService,
  finalWorkload,
  indexWorkload,
  podAddresses,
  nodeIpsOf,
  optionsKeyOf,
  podKey,
  sharedWaypointAccounts,
  sliceServiceKey,
  unindexWorkload,
  waypointPodsOf,
  workloadOf,
  type CompileOptions,
  type CompileResult,
  type CompileState,
  type MeshInputs,
  type WorkloadUnit,
} from './compile.ts';
import { recordDelta } from './model-delta.ts';
import type { WaypointRefusal } from './waypoint-admission.ts';

/** Compiles `inputs`, of which only the objects keyed (`Kind/namespace/name`) in `changed` differ from the last compilation with the same cache. */
export function compileChanges(inputs: MeshInputs, options: CompileOptions, changed: ReadonlySet<string>): CompileResult {
  // Which Waypoints share their ServiceAccount is read from every pod: once for the incremental
  // check and, when that falls back, the full compile.
  let shared: Map<string, WaypointRefusal> | undefined;
  const sharedOnce = (): Map<string, WaypointRefusal> => (shared ??= sharedWaypointAccounts(inputs));
  return compileIncrementally(inputs, options, changed, sharedOnce) ?? compile(inputs, options, sharedOnce());
}

interface PodChange {
  key: string;
  before: WorkloadUnit | undefined;
  after: WorkloadUnit | undefined;
}

/** The incremental compile, or undefined when the change needs a full one. Checks everything before it changes any state. */
export function compileIncrementally(
  inputs: MeshInputs, options: CompileOptions, changed: ReadonlySet<string>,
  sharedAccounts: () => Map<string, WaypointRefusal> = () => sharedWaypointAccounts(inputs),
): CompileResult | undefined {
  const cache = options.cache;
  const last = cache?.last;
  if (!cache || !last || optionsKeyOf(options) !== last.optionsKey) return undefined;
  // Two pods with one uid (never in Kubernetes): the full compile's last-listed-wins decides.
  if (last.uidByPodKey.size !== cache.workloads.size) return undefined;
  const podNames = new Set<string>();
  let slicesChanged = false;
  for (const k of changed) {
    if (k.startsWith('Pod/')) podNames.add(k.slice(k.lastIndexOf('/') + 1));
    else if (k.startsWith('EndpointSlice/')) slicesChanged = true;
    else return undefined;
  }
  if (changed.size === 0) return last.result;
  // Node addresses and waypoint facts are read from every pod: when they move, compile in full.
  if (!sameMap(nodeIpsOf(inputs), last.env.nodeIps)) return undefined;
  if (JSON.stringify([...waypointPodsOf(inputs.pods)]) !== last.waypointPodsKey) return undefined;
  // A pod taking up (or giving up) a waypoint's ServiceAccount refuses (or admits) that waypoint.
  if (JSON.stringify([...sharedAccounts()]) !== last.sharedAccountsKey) return undefined;

  const podsByKey = new Map<string, Pod>();
  for (const pod of inputs.pods) if (podNames.has(pod.metadata.name)) {
    const key = podKey(pod);
    if (changed.has(key)) podsByKey.set(key, pod);
  }
  const changes: PodChange[] = [];
  const claimedUids = new Set<string>();
  const claimedIps = new Set<string>();
  for (const key of changed) {
    if (!key.startsWith('Pod/')) continue;
    const oldUid = last.uidByPodKey.get(key);
    const before = oldUid !== undefined ? cache.workloads.get(oldUid) : undefined;
    const pod = podsByKey.get(key);
    const after = pod ? workloadOf(pod, last.env, cache.workloads) : undefined;
    if (before === after) continue;
    if (after) {
      // A uid another pod holds, or an address shared with another workload: the full compile decides.
      const uid = after.base.uid;
      if ((uid !== oldUid && cache.workloads.has(uid)) || claimedUids.has(uid)) return undefined;
      claimedUids.add(uid);
      const held = new Set(before ? last.index.addresses.get(before.base.uid) : []);
      for (const ip of podAddresses(after.pod)) {
        if (!held.has(ip) && last.index.ipHolders.has(ip)) return undefined;
        // Two pods of this change taking one address: the full compile's last-listed-wins decides.
        if (claimedIps.has(ip)) return undefined;
        claimedIps.add(ip);
      }
    }
    if (before && last.index.addresses.get(before.base.uid)?.some((ip) => (last.index.ipHolders.get(ip) ?? 0) > 1)) return undefined;
    changes.push({ key, before, after });
  }

  // From here on the state moves to the new inputs.
  const { index, memberOf, env } = last;
  const prev = last.result.model;
  const model: MeshModel = { ...prev, workloads: new Map(prev.workloads), services: new Map(prev.services) };
  const touched = new Set<string>();
  /** Workload uids deleted from the model (publish looks at these and `touched` only). */
  const deleted = new Set<string>();
  const affected = new Set<string>();
  /** The Services whose endpoints `w` (indexed) may be among: by selector, or a slice naming its uid or one of its addresses. */
  const affects = (w: Workload) => {
    for (const key of last.servicesByNamespace.get(w.namespace) ?? []) {
      const selector = last.serviceObjects.get(key)!.spec.selector;
      if (selector && Object.keys(selector).length > 0 && labelsMatch(selector, w.labels)) affected.add(key);
    }
    for (const ref of [w.uid, ...(index.addresses.get(w.uid) ?? [])]) for (const key of last.sliceRefs.get(ref) ?? []) affected.add(key);
  };
  for (const { key, before, after } of changes) {
    if (before) {
      affects(before.base);
      unindexWorkload(index, before.base);
      cache.workloads.delete(before.base.uid);
      last.uidByPodKey.delete(key);
      if (before.base.uid !== after?.base.uid) {
        model.workloads.delete(before.base.uid);
        deleted.add(before.base.uid);
        memberOf.delete(before.base.uid);
      }
    }
    if (after) {
      cache.workloads.set(after.base.uid, after);
      indexWorkload(index, after.base, after.pod);
      last.uidByPodKey.set(key, after.base.uid);
      affects(after.base);
      touched.add(after.base.uid);
    }
  }
  if (slicesChanged) {
    const slicesByService = new Map<string, EndpointSlice[]>();
    for (const s of inputs.endpointSlices) {
      const key = sliceServiceKey(s);
      let list = slicesByService.get(key);
      if (!list) slicesByService.set(key, (list = []));
      list.push(s);
    }
    for (const key of new Set([...slicesByService.keys(), ...index.slicesByService.keys()])) {
      const a = slicesByService.get(key) ?? [];
      const b = index.slicesByService.get(key) ?? [];
      if (a.length !== b.length || a.some((s, i) => s !== b[i])) affected.add(key);
    }
    index.slicesByService = slicesByService;
  }

  for (const key of affected) {
    const svc = last.serviceObjects.get(key);
    if (!svc) continue;
    const old = last.services.get(key)!;
    const unit = compileService(svc, env, index);
    for (const uid of old.members) {
      const list = memberOf.get(uid);
      if (list) {
        const rest = list.filter((k) => k !== key);
        if (rest.length > 0) memberOf.set(uid, rest);
        else memberOf.delete(uid);
      }
      touched.add(uid);
    }
    for (const uid of unit.members) {
      const list = memberOf.get(uid);
      if (!list) memberOf.set(uid, [key]);
      else if (!list.includes(key)) list.push(key);
      touched.add(uid);
    }
    // An emptied set goes with its entry, as a full compile holds only live refs: endpoint churn
    // (every new pod a new uid and address) would otherwise grow this map without bound.
    for (const ref of old.refs) {
      const set = last.sliceRefs.get(ref);
      if (set?.delete(key) && set.size === 0) last.sliceRefs.delete(ref);
    }
    for (const ref of unit.refs) {
      let set = last.sliceRefs.get(ref);
      if (!set) last.sliceRefs.set(ref, (set = new Set()));
      set.add(key);
    }
    last.services.set(key, unit);
    model.services.set(key, unit.service);
  }
  for (const uid of touched) {
    const unit = cache.workloads.get(uid);
    if (unit) model.workloads.set(uid, finalWorkload(unit, memberOf.get(uid)));
  }
  recordDelta(model.workloads, prev.workloads, new Set([...touched, ...deleted]));
  recordDelta(model.services, prev.services, affected);
  // Findings and route verdicts depend on which Services exist, their ports and waypoints, and on
  // waypoints: none of which a pod or an EndpointSlice changes; but a pod's own (its labels naming
  // a waypoint that refuses it), which goes and comes with the pod's unit.
  const gone = new Set(changes.map((c) => c.before?.finding).filter((f) => f !== undefined));
  const come = changes.map((c) => c.after?.finding).filter((f) => f !== undefined);
  const findings = gone.size === 0 && come.length === 0 ? last.result.findings : [...last.result.findings.filter((f) => !gone.has(f)), ...come];
  const result: CompileResult = { model, findings, routeParents: last.result.routeParents };
  const next: CompileState = { ...last, result };
  cache.last = next;
  return result;
}

function sameMap<K, V>(a: ReadonlyMap<K, V>, b: ReadonlyMap<K, V>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (b.get(k) !== v) return false;
  return true;
}
