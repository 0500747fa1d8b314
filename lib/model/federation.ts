// Multi-cluster discovery: what one cluster's controller tells the others (and its own east-west
// gateway) about itself. The export is the cluster's own Services with their own endpoints, its
// network and the gateway into that network. Importers merge it by namespace sameness: Service
// `echo` in namespace `demo` is one service whose endpoints span every cluster that has it, and a
// Service that only other clusters have is imported with their VIP, and, when it goes through a
// waypoint of its own cluster, with that waypoint, which callers elsewhere then reach as they reach
// that cluster's endpoints (through its network's gateway).
import { ipProblem, isServiceAddress } from './address.ts';
import { boundWaypoint, endpointTargetPort, waypointAddresses, waypointKey, waypointRefusalText, type Endpoint, type NetworkGateway, type Service, type ServicePort, type Waypoint, type WaypointRef, type Workload } from './mesh.ts';
import type { WorkloadMeta } from './workload-meta.ts';
import { LABEL_USE_WAYPOINT, LABEL_USE_WAYPOINT_NAMESPACE } from './objects.ts';

/** HTTPS (mutual TLS, the controllers' and gateways' identities) path of the export. */
export const FEDERATION_PATH = '/federation/v1/export';
/** Default port of the controller's federation listener. */
export const FEDERATION_PORT = 15014;
/** The east-west gateway's service account (its identity: spiffe://<td>/ns/<root ns>/sa/<this>). */
export const EASTWEST_SERVICE_ACCOUNT = 'weft-eastwest';
/** Name of the gateway's HBONE port on its Service (Istio's east-west gateway names 15008 so). */
export const EASTWEST_PORT_NAME = 'tls-hbone';
/** Label of a cluster's root namespace and gateway Service naming its network (Istio's). */
export const LABEL_NETWORK = 'topology.istio.io/network';
/** Label of a remote-cluster kubeconfig Secret (Istio: `istio/multiCluster: "true"`). */
export const LABEL_MULTICLUSTER = 'weft.dev/multicluster';
/** Annotation naming the cluster a remote Secret is for (Istio: `networking.istio.io/cluster`); informative, its data keys decide. */
export const ANNOTATION_CLUSTER = 'weft.dev/cluster';
/** Annotation of a remote Secret: the remote cluster's trust domain when it is not this one's (per-cluster trust domains). */
export const ANNOTATION_TRUST_DOMAIN = 'weft.dev/trust-domain';

/**
 * A pod's port of this cluster that callers from other networks reach only through a waypoint:
 * every Service here that lists the pod at that port goes through one (its own,
 * Endpoint.waypoint, where the Service is another namespace's). Istio's east-west gateway carries
 * callers to a Service, never to a pod of their choosing, and a Service behind a waypoint is
 * served by that waypoint, which applies its L7 policy: only the waypoint's identity (another
 * cluster's waypoint of the same namespace and name, namespace sameness) is carried there; anyone
 * else would step around that policy.
 */
export interface WaypointGuard {
  /** The Services (`<namespace>/<name>`) that list the pod at the port, each through a waypoint. */
  services: string[];
  /** Those waypoints (`<namespace>/<name>`). */
  waypoints: string[];
  /** The identities that may be carried there: the waypoints' that exist and may be used. */
  ids: Set<string>;
}

/**
 * What other networks' callers may be carried to in this cluster, keyed `<pod ip>:<target port>`
 * (podTarget): `exported`, every port of a pod that an exported Service sends to (a port no
 * Service names is not reachable, as Istio's gateway routes only to Service ports), and `guards`,
 * those reached only through a waypoint (WaypointGuard).
 */
export interface ExportedPods {
  exported: ReadonlySet<string>;
  guards: ReadonlyMap<string, WaypointGuard>;
}

/** The key of a pod's port in ExportedPods (the last colon splits it: a port has none). */
export function podTarget(ip: string, port: number): string {
  return `${ip}:${port}`;
}

/**
 * ExportedPods of this cluster's export as its readers take it (exportSelection; the export the
 * east-west gateway reads): the gateway judges the outer CONNECT by it, and the node agent every
 * CONNECT on its gateway port (PORTS.hboneGateway; one inner session reaches every pod of the node),
 * the agent from exportSelection of its own copy of the model, so both build it from the same list.
 * Each waypoint a Service names is looked up among the export's own waypoints only: one the export
 * leaves out, missing, invalid or whose binding is refused admits no one (fail closed). Endpoints of
 * other clusters (imported, or behind another network's gateway) are not this cluster's pods; a
 * port whose target the endpoint does not resolve is not exported.
 */
export function exportedPodsOf(exp: { services: Iterable<Service>; waypoints?: readonly ExportedWaypoint[] | undefined }): ExportedPods {
  const own = new Map((exp.waypoints ?? []).map((w) => [`${w.namespace}/${w.name}`, w]));
  const waypointId = (ref: WaypointRef): string | undefined => {
    const w = boundWaypoint(ref) ? own.get(`${ref.namespace}/${ref.name}`) : undefined;
    return w && !w.invalid ? w.spiffeId : undefined;
  };
  const direct = new Set<string>();
  const guards = new Map<string, WaypointGuard>();
  for (const s of exp.services) {
    if (s.cluster !== undefined) continue;
    for (const e of s.endpoints) {
      if (e.cluster !== undefined || e.gateway) continue;
      // A pod of another namespace than the Service's (a tenant's hand-written EndpointSlice naming
      // it) is that tenant's claim, not the owner's: only Services of the pod's own namespace open
      // its ports to other networks, or lift the guard of a waypoint one of them goes through.
      // (Endpoint.waypoint marks such a pod too, when it has a waypoint of its own.) An address no
      // pod of this cluster holds (a hand-written slice's) is no pod to open.
      if (e.waypoint || !e.workload || e.workload.namespace !== s.namespace) continue;
      const through = s.waypoint;
      for (const sp of s.ports) {
        const port = sp.protocol === 'TCP' ? endpointTargetPort(e, sp) : undefined;
        if (port === undefined) continue;
        const key = podTarget(e.ip, port);
        if (!through) {
          direct.add(key);
          continue;
        }
        const waypoint = `${through.namespace}/${through.name}`;
        const guard = guards.get(key) ?? { services: [], waypoints: [], ids: new Set<string>() };
        if (!guard.services.includes(`${s.namespace}/${s.name}`)) guard.services.push(`${s.namespace}/${s.name}`);
        if (!guard.waypoints.includes(waypoint)) guard.waypoints.push(waypoint);
        const wid = waypointId(through);
        if (wid) guard.ids.add(wid);
        guards.set(key, guard);
      }
    }
  }
  const exported = new Set([...direct, ...guards.keys()]);
  for (const key of direct) guards.delete(key);
  return { exported, guards };
}

/** Why a caller is not carried to port `port` of the pod at `ip` (WaypointGuard), in the words both its judges use. */
export function waypointGuardRefusal(ip: string, port: number, guard: WaypointGuard, carrier: string): string {
  return `${ip} is an endpoint of ${guard.services.join(', ')}, behind waypoint ${guard.waypoints.join(', ')} of this cluster, which enforces its L7 policy: ${carrier} carries only that waypoint's identity to its port ${port}; callers of the Service reach the waypoint`;
}

/**
 * What one remote cluster may add to this cluster's config (each imported Service becomes VIPs
 * and endpoints in every agent's config): at most `maxServices` Services, `maxEndpoints`
 * endpoints and `maxDestinations` VIPs x ports (each summed over them), entries of its export as
 * it sends them, invalid ones included. Past any bound the import is cut deterministically: the
 * Services are taken in `namespace/name` order, each that still fits every bound is kept, the rest
 * are refused (`quota`), so the same export always keeps the same Services, on every controller
 * replica.
 */
export interface ImportQuota {
  maxServices: number;
  maxEndpoints: number;
  /**
   * Each VIP and port of an imported Service is an entry of every agent's weft_dests
   * (WEFT_MAX_DESTS, 65,536) and an object of every agent's config: 5,000 Services of 8 VIPs x 100
   * ports were 4M of them, each push.
   */
  maxDestinations: number;
}

/**
 * Generous for a real cluster (the controller's flags --remote-max-services, --remote-max-endpoints,
 * --remote-max-destinations); the destinations bound is a quarter of an agent's weft_dests.
 */
export const DEFAULT_IMPORT_QUOTA: Readonly<ImportQuota> = { maxServices: 5_000, maxEndpoints: 50_000, maxDestinations: 16_384 };

/**
 * Most ports of one Service in an export: each VIP and port is a destination in every agent's
 * weft_dests (WEFT_MAX_DESTS entries in all), and an EndpointSlice carries at most 100 ports
 * (Kubernetes' discovery/v1 validation), so a Service with more has no endpoints in its own cluster.
 */
export const MAX_SERVICE_PORTS = 100;

/** Most VIPs of one Service in an export (a dual-stack Service has two; Kubernetes' clusterIPs at most two). */
export const MAX_SERVICE_VIPS = 8;

/** Distinct endpoint port records one export's parse shares (past it, records are kept apiece). */
const MAX_PORT_RECORDS = 1_024;

/** Services refused by the quota that `/debug/federation` names one by one; the rest are counted. */
export const QUOTA_NAMED = 100;

/** What the quota cut from one export (set by parseClusterExport, never sent). */
export interface QuotaCut {
  /** Services, endpoints and destinations (VIPs x ports) the export has, and the bounds. */
  services: number;
  endpoints: number;
  destinations: number;
  quota: ImportQuota;
  /** `namespace/name` of each Service not imported, in `namespace/name` order. */
  refused: string[];
  message: string;
}

/**
 * Services a cluster keeps to itself (Istio's default cluster-local hosts: every Service of
 * `kube-system`, and `kubernetes.default.svc`): not exported, and refused from a remote (a remote
 * adding endpoints to this cluster's DNS or API server Service would receive its pods' queries).
 */
export function isClusterLocal(namespace: string, name: string): boolean {
  return namespace === 'kube-system' || (namespace === 'default' && name === 'kubernetes');
}

/** Why an importer refuses a Service entry of `ports` ports whole (parseClusterExport), or undefined. */
export function servicePortsProblem(ports: number): string | undefined {
  return ports > MAX_SERVICE_PORTS ? `has ${ports} ports, more than the ${MAX_SERVICE_PORTS} a Service may have here (each VIP and port is a destination in every agent; an EndpointSlice carries at most 100)` : undefined;
}

/** Why an importer refuses a Service entry of `vips` VIPs whole (parseClusterExport), or undefined. */
export function serviceVipsProblem(vips: number): string | undefined {
  return vips > MAX_SERVICE_VIPS ? `must be a list of at most ${MAX_SERVICE_VIPS} addresses` : undefined;
}

/**
 * Why a cluster leaves one of its own Services out of its export, at which field: every importer
 * would refuse it whole (too many ports or VIPs); undefined when it exports it. Exported, such
 * Services (Kubernetes bounds neither) only made the export larger: one tenant's five Services of
 * 40,000 ports pushed it past what its readers take (MAX_EXPORT_BYTES), and every read of it failed.
 */
export function exportRefusal(s: Pick<Service, 'ports' | 'vips'>): { path: string; message: string } | undefined {
  const ports = servicePortsProblem(s.ports.length);
  if (ports) return { path: 'spec.ports', message: `ports: ${ports}` };
  const vips = serviceVipsProblem(s.vips.length);
  return vips ? { path: 'spec.clusterIPs', message: `vips: ${vips}` } : undefined;
}

/**
 * Most bytes of one export: what its readers take (lib/federation-read.ts, the remote controllers
 * and the cluster's own east-west gateway). Past it every read fails, and after the stale bound
 * every Service of the cluster is gone from every other one.
 */
export const MAX_EXPORT_BYTES = 16 * 1024 * 1024;

/**
 * What an export's top level (cluster, network, gateway, the lists' brackets) may take of
 * MAX_EXPORT_BYTES; the rest is the namespaces' (exportSelection). Its fields are the controller's
 * own flags, a few hundred bytes.
 */
export const EXPORT_ENVELOPE_BYTES = 64 * 1024;

/** A cluster's Service or waypoint left out of its export, and why (exportSelection). */
export interface ExportLeftOut {
  kind: 'Service' | 'Waypoint';
  namespace: string;
  name: string;
  /**
   * `invalid`: every importer refuses it whole (exportRefusal); `namespace-share`: its namespace's
   * entries are past the namespace's share of the export's bytes, and it is among the largest (a
   * waypoint only once none of its namespace's Services is left to leave out); `waypoint`: a
   * Service bound to a waypoint of this cluster left out (each importer would refuse it).
   */
  reason: 'invalid' | 'namespace-share' | 'waypoint';
  /** The field at fault (`spec.ports`, `spec.clusterIPs`; `metadata.namespace` for the share; the binding's label for `waypoint`). */
  path: string;
  /**
   * Why, in words that stay the same while the reason does (the controller counts, logs and writes
   * a finding when it changes, not at every change of the export's sizes).
   */
  message: string;
  /** The sizes behind a `namespace-share` cut, which change with every pod (`/debug/federation`). */
  bytes?: { entry: number; namespace: number; share: number };
}

/** What a cluster's export carries of its own Services and waypoints, and what it leaves out. */
export interface ExportSelection {
  services: Service[];
  waypoints: ExportedWaypoint[];
  left: ExportLeftOut[];
}

/**
 * UTF-8 bytes of an entry's JSON with its comma, by the model object it is made from (an unchanged
 * model object keeps its identity across compiles, and an agent's across config versions).
 */
const entryBytesOf = new WeakMap<object, number>();

/**
 * The one measure of an export entry's size: the bytes its JSON takes in the export (with the
 * comma after it), `entry` being what the export carries of model object `from`. The exporter cuts
 * by it, and an agent judging its gateway port by the same selection (agent/src/state.ts) gets the
 * same answer from its copy of the same objects.
 */
export function exportEntryBytes(from: object, entry: object): number {
  let n = entryBytesOf.get(from);
  if (n === undefined) {
    n = Buffer.byteLength(JSON.stringify(entry)) + 1;
    entryBytesOf.set(from, n);
  }
  return n;
}

/** A cluster's own Service as its export carries it: its own endpoints only (an agent's copy has other clusters' merged in). */
function ownService(s: Service): Service {
  return s.endpoints.some((e) => e.cluster !== undefined) ? { ...s, endpoints: s.endpoints.filter((e) => e.cluster === undefined) } : s;
}

/**
 * Max-min fair shares of `total` among namespaces asking `demands`: taken smallest first (then by
 * name), each is given what it asks, at most an even split of what the ones before it left. A
 * namespace asking no more than `total / demands.size` gets all it asks, whatever the others ask;
 * what a smaller one does not use goes to the larger ones. Deterministic. The export's bytes
 * (exportSelection) and an importer's quota (parseClusterExport) are shared so.
 */
export function fairShares(demands: ReadonlyMap<string, number>, total: number): Map<string, number> {
  const order = [...demands].sort(([a, x], [b, y]) => x - y || (a < b ? -1 : a > b ? 1 : 0));
  const out = new Map<string, number>();
  let remaining = Math.max(0, total);
  order.forEach(([ns, demand], i) => {
    const share = Math.min(demand, Math.floor(remaining / (order.length - i)));
    out.set(ns, share);
    remaining -= share;
  });
  return out;
}

/**
 * What a cluster's export carries, from its model's Services and waypoints (this cluster's own:
 * imported ones are skipped): the cluster-local Services stay home, those no importer takes
 * (exportRefusal) are left out, and the rest must fit in `maxBytes` (MAX_EXPORT_BYTES, what its
 * readers take) with a fair share per namespace. Kubernetes bounds neither a namespace's Services
 * nor their endpoints, so one tenant's namespace could push the export past what its readers take
 * and take every namespace's Services out of every other cluster. Each namespace's entries
 * (Services and waypoints, measured by exportEntryBytes) are given an even share of what the
 * envelope leaves, what a smaller namespace does not use going to the larger ones (max-min
 * fairness): a namespace within its share keeps everything, whatever the others do; one past it
 * loses its own largest Services first (then by name), its waypoints only once none of its
 * Services is left, until the rest fits; a Service bound to a waypoint left out is left out too
 * (`waypoint`: every importer would refuse it). Deterministic, so the
 * controller that serves the export, its east-west gateway that reads it and every agent that
 * judges its gateway port by it (exportedPodsOf) agree on what is exported.
 */
export function exportSelection(services: Iterable<Service>, waypoints: Iterable<Waypoint>, maxBytes = MAX_EXPORT_BYTES): ExportSelection {
  const left: ExportLeftOut[] = [];
  type Entry = { kind: ExportLeftOut['kind']; namespace: string; name: string; bytes: number; out?: boolean };
  const byNs = new Map<string, { entries: Entry[]; bytes: number }>();
  const add = (e: Entry) => {
    let ns = byNs.get(e.namespace);
    if (!ns) byNs.set(e.namespace, (ns = { entries: [], bytes: 0 }));
    ns.entries.push(e);
    ns.bytes += e.bytes;
  };
  const svcs: Array<[Service, Entry]> = [];
  for (const s of services) {
    if (s.cluster !== undefined || isClusterLocal(s.namespace, s.name)) continue;
    const why = exportRefusal(s);
    if (why !== undefined) {
      left.push({ kind: 'Service', namespace: s.namespace, name: s.name, reason: 'invalid', path: why.path, message: `not exported to other clusters: every importer would refuse it (${why.message})` });
      continue;
    }
    const own = ownService(s);
    const e: Entry = { kind: 'Service', namespace: s.namespace, name: s.name, bytes: exportEntryBytes(s, own) };
    svcs.push([own, e]);
    add(e);
  }
  const wps: Array<[ExportedWaypoint, Entry]> = [];
  for (const w of waypoints) {
    if (w.cluster !== undefined) continue;
    const x = exportWaypoint(w);
    const e: Entry = { kind: 'Waypoint', namespace: w.namespace, name: w.name, bytes: exportEntryBytes(w, x) };
    wps.push([x, e]);
    add(e);
  }
  const shares = fairShares(new Map([...byNs].map(([namespace, ns]) => [namespace, ns.bytes])), maxBytes - EXPORT_ENVELOPE_BYTES);
  const cutWaypoints = new Set<string>();
  for (const [namespace, ns] of byNs) {
    const share = shares.get(namespace)!;
    if (ns.bytes <= share) continue;
    // Its largest Services out first (then by name), until the rest fits its share; its waypoints
    // only once no Service of it is left: a waypoint left out takes every Service bound to it
    // (of any namespace) out of every importer, where a Service left out costs only itself.
    const largest = [...ns.entries].sort((a, b) => (a.kind === 'Waypoint' ? 1 : 0) - (b.kind === 'Waypoint' ? 1 : 0) || b.bytes - a.bytes || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    let bytes = ns.bytes;
    for (const e of largest) {
      if (bytes <= share) break;
      e.out = true;
      bytes -= e.bytes;
      if (e.kind === 'Waypoint') cutWaypoints.add(`${namespace}/${e.name}`);
      left.push({
        kind: e.kind, namespace, name: e.name, reason: 'namespace-share', path: 'metadata.namespace',
        message: `not exported to other clusters: namespace ${namespace}'s Services and waypoints are past its share of the export's bytes (its readers take ${maxBytes} bytes, shared evenly by the namespaces that export, what one does not use going to the others); its largest Services are left out first, its waypoints last (sizes: /debug/federation)`,
        bytes: { entry: e.bytes, namespace: ns.bytes, share },
      });
    }
  }
  // A Service bound to a waypoint left out: every importer would refuse it (its waypoint is not in
  // the export); left out here too, and named, so its owner sees why.
  for (const [s, e] of svcs) {
    const w = s.waypoint;
    if (e.out || !w || w.cluster !== undefined || !cutWaypoints.has(`${w.namespace}/${w.name}`)) continue;
    e.out = true;
    left.push({
      kind: 'Service', namespace: s.namespace, name: s.name, reason: 'waypoint', path: `metadata.labels["${w.namespace !== s.namespace ? LABEL_USE_WAYPOINT_NAMESPACE : LABEL_USE_WAYPOINT}"]`,
      message: `not exported to other clusters: it goes through waypoint ${w.namespace}/${w.name}, which is left out of the export (namespace ${w.namespace} is past its share of the export's bytes), and no cluster reaches it around that waypoint`,
    });
  }
  return { services: svcs.filter(([, e]) => !e.out).map(([s]) => s), waypoints: wps.filter(([, e]) => !e.out).map(([w]) => w), left };
}

export interface ClusterExport {
  cluster: string;
  network: string;
  /** The door into `network` from other networks; absent: reachable only from the same network. */
  gateway?: NetworkGateway;
  /** Own services with own endpoints only (never what this cluster imported). */
  services: ExportedService[];
  /** Own waypoints (never imported ones): where other clusters' callers reach the Services behind them. Absent in an older release's export. */
  waypoints?: ExportedWaypoint[];
  /** Set by parseClusterExport, never sent: the Services the importer's quota left out. */
  quota?: QuotaCut;
}

/** One of a cluster's own Services in its export. */
export interface ExportedService extends Service {
  /**
   * Set by parseClusterExport, never sent: what is wrong with this entry, its field named by path.
   * It costs only this Service (refused at import, `invalid`), not the export.
   */
  invalid?: string;
}

/** One of a cluster's own waypoints in its export: the model's Waypoint fields a caller needs. */
export interface ExportedWaypoint extends Pick<Waypoint, 'name' | 'namespace' | 'address' | 'addresses' | 'port' | 'spiffeId' | 'ready' | 'reason'> {
  /**
   * Set by parseClusterExport, never sent: what is wrong with this entry, its field named by path.
   * It costs only the Services behind this waypoint (refused at import), not the export.
   */
  invalid?: string;
}

/** A local waypoint as the export carries it. */
export function exportWaypoint(w: Waypoint): ExportedWaypoint {
  return {
    name: w.name, namespace: w.namespace, ...(w.address ? { address: w.address } : {}), ...(w.addresses ? { addresses: w.addresses } : {}),
    port: w.port, spiffeId: w.spiffeId, ready: w.ready, ...(w.reason ? { reason: w.reason } : {}),
  };
}

/** One remote cluster as a controller's `/debug/federation` reports it (read by `weftctl check`). */
export interface RemoteStatus {
  cluster: string;
  url: string;
  /** Its export was read within the stale bound (its endpoints are imported). */
  up: boolean;
  endpoints: number;
  /** Last successful read (the start time until the first). */
  lastOk: string;
  lastError?: string;
  network?: string;
  gateway?: NetworkGateway;
  /** Its Services that exist only there and were not imported: `namespace/name` → why. */
  refusedServices?: Record<string, string>;
  /** Its export is past this cluster's import quota: how many Services were left out, and why (the first QUOTA_NAMED also in refusedServices). */
  quota?: { refused: number; message: string };
}

export class FederationExportError extends Error {
  readonly code = 'WEFT_FEDERATION_EXPORT';
  constructor(field: string, detail: string) {
    super(`federation export: ${field}: ${detail}`);
    this.name = 'FederationExportError';
  }
}

/**
 * Checks an export read from another cluster before anything of it is used: every field an agent
 * or a gateway would act on must be there and well formed, named by its path when it is not. A
 * Service or waypoint entry with a wrong field is kept marked `invalid` (it costs only itself); an
 * export whose top level, or an entry's name, is wrong is unreadable as a whole.
 */
const PROTOCOLS: readonly ServicePort['protocol'][] = ['TCP', 'UDP', 'SCTP'];
const APP_PROTOCOLS: readonly ServicePort['appProtocol'][] = ['http', 'http2', 'grpc', 'tcp'];

/** A Kubernetes name of a Service or namespace (an RFC 1123 label; Kubernetes refuses any other). */
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

/** An export's Service entry as first read: where it is and its name. */
interface ServiceEntry { i: number; s: Record<string, unknown>; name: string; namespace: string; key: string; dupOf?: number }

/** An import quota as its messages name it, with the flags that raise it. */
export function quotaText(quota: ImportQuota): string {
  return `${quota.maxServices} Services, ${quota.maxEndpoints} endpoints and ${quota.maxDestinations} destinations (VIPs x ports) per remote cluster (--remote-max-services, --remote-max-endpoints, --remote-max-destinations)`;
}

/**
 * The entries an import quota keeps, undefined when all fit. Each of the remote's namespaces is
 * given a fair share of each bound (fairShares: a namespace asking no more than an even split keeps
 * all its Services, whatever another asks), its Services taken in name order (export order among
 * equal keys), each that still fits its namespace's shares; then what the shares left unused goes
 * to the Services still out, in `namespace/name` order, each that still fits every bound. One
 * namespace of a remote exporting 5,000 Services took the whole default quota in `namespace/name`
 * order, and every namespace after it was refused.
 */
function quotaCut(cluster: string, entries: readonly ServiceEntry[], quota: ImportQuota): { kept: Set<ServiceEntry>; cut: QuotaCut } | undefined {
  const order = [...entries].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : a.i - b.i));
  const kept = new Set<ServiceEntry>();
  const refused: string[] = [];
  const length = (x: unknown) => (Array.isArray(x) ? x.length : 0);
  // What each entry takes of each bound: a Service, its endpoints, its VIPs x ports (at most what
  // a valid entry has, MAX_SERVICE_VIPS x MAX_SERVICE_PORTS: one with more is refused invalid).
  const need = new Map(order.map((e) => [e, [1, e.dupOf === undefined ? length(e.s.endpoints) : 0, e.dupOf === undefined ? Math.min(length(e.s.vips), MAX_SERVICE_VIPS) * Math.min(length(e.s.ports), MAX_SERVICE_PORTS) : 0] as const]));
  const bounds = [quota.maxServices, quota.maxEndpoints, quota.maxDestinations];
  const total = [0, 0, 0];
  const asked = new Map<string, number[]>();
  for (const e of order) {
    const n = need.get(e)!;
    const a = asked.get(e.namespace) ?? [0, 0, 0];
    asked.set(e.namespace, a.map((x, d) => x + n[d]!));
    n.forEach((x, d) => { total[d]! += x; });
  }
  if (total.every((x, d) => x <= bounds[d]!)) return undefined;
  const shares = bounds.map((bound, d) => fairShares(new Map([...asked].map(([ns, a]) => [ns, a[d]!])), bound));
  const used = [0, 0, 0];
  const usedBy = new Map<string, number[]>();
  const take = (e: ServiceEntry) => {
    const n = need.get(e)!;
    const u = usedBy.get(e.namespace) ?? [0, 0, 0];
    n.forEach((x, d) => { u[d]! += x; used[d]! += x; });
    usedBy.set(e.namespace, u);
    kept.add(e);
  };
  for (const e of order) {
    const n = need.get(e)!;
    const u = usedBy.get(e.namespace) ?? [0, 0, 0];
    if (n.every((x, d) => u[d]! + x <= shares[d]!.get(e.namespace)!)) take(e);
  }
  for (const e of order) {
    if (kept.has(e)) continue;
    const n = need.get(e)!;
    if (n.every((x, d) => used[d]! + x <= bounds[d]!)) take(e);
    else refused.push(e.key);
  }
  const [, endpoints, destinations] = total as [number, number, number];
  const shown = refused.slice(0, 8).join(', ') + (refused.length > 8 ? `, and ${refused.length - 8} more` : '');
  const message = `cluster ${cluster} exports ${entries.length} Services with ${endpoints} endpoints and ${destinations} destinations (VIPs x ports), past this cluster's import quota of ${quotaText(quota)}; each namespace is given a fair share of each bound, its Services taken in name order, then what is left in namespace/name order; the ${refused.length} that did not fit are not imported: ${shown}`;
  return { kept, cut: { services: entries.length, endpoints, destinations, quota: { ...quota }, refused, message } };
}

/**
 * With `quota` (an importer's, ImportQuota), the Service entries past it are not parsed at all,
 * only named (`quota` of the result), and of the waypoints only those its kept Services name.
 */
export function parseClusterExport(v: unknown, opts: { quota?: ImportQuota } = {}): ClusterExport {
  const obj = (x: unknown, path: string): Record<string, unknown> => {
    if (typeof x !== 'object' || x === null || Array.isArray(x)) throw new FederationExportError(path, 'must be an object');
    return x as Record<string, unknown>;
  };
  const str = (x: unknown, path: string): string => {
    if (typeof x !== 'string' || x === '' || x.length > 253) throw new FederationExportError(path, 'must be a non-empty string');
    return x;
  };
  /** A string that may be empty (a name the remote need not have). */
  const text = (x: unknown, path: string): string => {
    if (typeof x !== 'string' || x.length > 253) throw new FederationExportError(path, 'must be a string');
    return x;
  };
  const ip = (x: unknown, path: string): string => {
    const s = str(x, path);
    const why = ipProblem(s);
    if (why) throw new FederationExportError(path, why);
    return s;
  };
  const port = (x: unknown, path: string): number => {
    if (typeof x !== 'number' || !Number.isInteger(x) || x < 1 || x > 65535) throw new FederationExportError(path, `${JSON.stringify(x)} is not a port`);
    return x;
  };
  /** A Service entry's fields but its name; what an importer keeps is rebuilt field by field, nothing else a remote adds. */
  const service = (s: Record<string, unknown>, p: string, name: string, namespace: string): Omit<Service, 'name' | 'namespace'> => {
    if (!Array.isArray(s.ports)) throw new FederationExportError(`${p}.ports`, 'must be a list');
    const tooMany = servicePortsProblem(s.ports.length);
    if (tooMany) throw new FederationExportError(`${p}.ports`, tooMany);
    if (!Array.isArray(s.endpoints)) throw new FederationExportError(`${p}.endpoints`, 'must be a list');
    const endpoints = s.endpoints.map((ev, j) => endpoint(ev, `${p}.endpoints[${j}]`));
    // What an importer acts on for a Service it has no copy of (its addresses, ports and name), so
    // checked as strictly as the endpoints.
    const ports = (s.ports as unknown[]).map((pv, j): ServicePort => {
      const pp = `${p}.ports[${j}]`;
      const po = obj(pv, pp);
      const target = po.targetPort;
      if (!(typeof target === 'string' && target !== '' && target.length <= 63) && !(typeof target === 'number' && Number.isInteger(target) && target >= 1 && target <= 65535)) throw new FederationExportError(`${pp}.targetPort`, `${JSON.stringify(target)} is neither a port nor a port name`);
      if (!PROTOCOLS.includes(po.protocol as ServicePort['protocol'])) throw new FederationExportError(`${pp}.protocol`, `must be one of ${PROTOCOLS.join(', ')}`);
      if (!APP_PROTOCOLS.includes(po.appProtocol as ServicePort['appProtocol'])) throw new FederationExportError(`${pp}.appProtocol`, `must be one of ${APP_PROTOCOLS.join(', ')}`);
      if (typeof po.name !== 'string' || po.name.length > 63) throw new FederationExportError(`${pp}.name`, 'must be a string');
      return { name: po.name, port: port(po.port, `${pp}.port`), targetPort: target, protocol: po.protocol as ServicePort['protocol'], appProtocol: po.appProtocol as ServicePort['appProtocol'] };
    });
    if (!Array.isArray(s.vips)) throw new FederationExportError(`${p}.vips`, 'must be a list of IP addresses');
    const tooManyVips = serviceVipsProblem(s.vips.length);
    if (tooManyVips) throw new FederationExportError(`${p}.vips`, tooManyVips);
    const vips = s.vips.map((v, j) => {
      const a = ip(v, `${p}.vips[${j}]`);
      if (!isServiceAddress(a)) throw new FederationExportError(`${p}.vips[${j}]`, `${a} cannot be a Service address (loopback, unspecified, link-local or multicast)`);
      return a;
    });
    const hostname = str(s.hostname, `${p}.hostname`);
    if (!hostname.startsWith(`${name}.${namespace}.svc.`)) throw new FederationExportError(`${p}.hostname`, `${JSON.stringify(hostname)} is not ${name}.${namespace}.svc.<domain>`);
    const waypoint = s.waypoint === undefined ? undefined : waypointRef(s.waypoint, `${p}.waypoint`);
    return { hostname, vips, ports, endpoints, ...(waypoint ? { waypoint } : {}) };
  };
  /**
   * A waypoint binding; a refused one (another namespace's waypoint that does not allow the
   * object's) stays refused here, whatever its code says (an older release sent a sentence).
   */
  const waypointRef = (x: unknown, path: string): WaypointRef => {
    const w = obj(x, path);
    if (w.refused !== undefined) str(w.refused, `${path}.refused`);
    return { name: str(w.name, `${path}.name`), namespace: str(w.namespace, `${path}.namespace`), ...(w.refused !== undefined ? { refused: 'NamespaceNotAllowed' as const } : {}) };
  };
  /**
   * Endpoints' port records by content, shared as the compile shares them (compileService), and
   * each one built by JSON.parse of its text: a record keyed by port numbers and filled key by key
   * is an array in V8 as long as its largest port below a few thousand (12 KB for {"1000": …}),
   * where JSON.parse keeps it a small dictionary (about 200 bytes, whatever its ports), so 50,000
   * endpoints of distinct mappings, past what is shared, cost 10 MB, not 145.
   */
  const portRecords = new Map<string, Record<string, number>>();
  const sharedPorts = (r: Record<string, number>): Record<string, number> => {
    const key = JSON.stringify(r);
    const shared = portRecords.get(key);
    if (shared) return shared;
    const compact = JSON.parse(key) as Record<string, number>;
    if (portRecords.size < MAX_PORT_RECORDS) portRecords.set(key, compact);
    return compact;
  };
  /**
   * An endpoint as an importer may use it: the fields its own cluster sets, each checked. Where it
   * runs (cluster, network, gateway) is the importer's to set (mergeRemoteServices), never the
   * entry's: a remote naming a `gateway` of its own would have callers dial any address.
   */
  const endpoint = (ev: unknown, ep: string): Endpoint => {
    const e = obj(ev, ep);
    if (typeof e.ready !== 'boolean' || typeof e.enrolled !== 'boolean') throw new FederationExportError(`${ep}`, 'ready and enrolled must be booleans');
    const ports = obj(e.ports, `${ep}.ports`);
    if (Object.keys(ports).length > MAX_SERVICE_PORTS) throw new FederationExportError(`${ep}.ports`, `maps more than the ${MAX_SERVICE_PORTS} ports a Service may have here`);
    const portMap: Record<string, number> = {};
    for (const [k, v] of Object.entries(ports)) {
      if (!/^[0-9]{1,5}$/.test(k)) throw new FederationExportError(`${ep}.ports`, `${JSON.stringify(k)} is not a Service port`);
      portMap[String(port(Number(k), `${ep}.ports`))] = port(v, `${ep}.ports[${JSON.stringify(k)}]`);
    }
    let workload: WorkloadMeta | undefined;
    if (e.workload !== undefined) {
      const m = obj(e.workload, `${ep}.workload`);
      const f = (k: keyof WorkloadMeta) => text(m[k], `${ep}.workload.${k}`);
      workload = { workloadName: f('workloadName'), namespace: f('namespace'), canonicalService: f('canonicalService'), canonicalRevision: f('canonicalRevision'), cluster: f('cluster') };
    }
    return {
      workloadUid: e.workloadUid === undefined ? '' : text(e.workloadUid, `${ep}.workloadUid`),
      ip: ip(e.ip, `${ep}.ip`),
      node: e.node === undefined ? '' : text(e.node, `${ep}.node`),
      ...(e.nodeIp !== undefined ? { nodeIp: ip(e.nodeIp, `${ep}.nodeIp`) } : {}),
      ...(e.port !== undefined ? { port: port(e.port, `${ep}.port`) } : {}),
      ports: sharedPorts(portMap),
      enrolled: e.enrolled,
      ...(e.enrolled ? { spiffeId: str(e.spiffeId, `${ep}.spiffeId`) } : {}),
      ready: e.ready,
      ...(workload ? { workload } : {}),
      // A pod of another namespace behind its own waypoint: the gateway carries only that waypoint to it.
      ...(e.waypoint !== undefined ? { waypoint: waypointRef(e.waypoint, `${ep}.waypoint`) } : {}),
    };
  };
  const root = obj(v, '$');
  const cluster = str(root.cluster, 'cluster');
  const network = str(root.network, 'network');
  let gateway: NetworkGateway | undefined;
  if (root.gateway !== undefined) {
    const g = obj(root.gateway, 'gateway');
    gateway = { network: str(g.network, 'gateway.network'), address: ip(g.address, 'gateway.address'), port: port(g.port, 'gateway.port'), spiffeId: str(g.spiffeId, 'gateway.spiffeId') };
  }
  if (!Array.isArray(root.services)) throw new FederationExportError('services', 'must be a list');
  // Without its name an entry cannot be told apart: the export is malformed. Anything else wrong
  // (a name Kubernetes would refuse, the same Service listed twice) costs only that entry.
  const firstOf = new Map<string, number>();
  const entries = root.services.map((sv, i): ServiceEntry => {
    const p = `services[${i}]`;
    const s = obj(sv, p);
    const name = str(s.name, `${p}.name`);
    const namespace = str(s.namespace, `${p}.namespace`);
    const key = `${namespace}/${name}`;
    const dupOf = firstOf.get(key);
    if (dupOf === undefined) firstOf.set(key, i);
    return { i, s, name, namespace, key, ...(dupOf !== undefined ? { dupOf } : {}) };
  });
  const cut = opts.quota ? quotaCut(cluster, entries, opts.quota) : undefined;
  const services = (cut ? entries.filter((e) => cut.kept.has(e)) : entries).map(({ i, s, name, namespace, dupOf }): ExportedService => {
    const p = `services[${i}]`;
    try {
      // A second entry would add its endpoints again (a larger share of the traffic for nothing).
      if (dupOf !== undefined) throw new FederationExportError(p, `${namespace}/${name} is listed already (services[${dupOf}])`);
      if (!DNS_LABEL.test(name)) throw new FederationExportError(`${p}.name`, `${JSON.stringify(name.slice(0, 80))} is not a Kubernetes name (at most 63 lower-case letters, digits and '-')`);
      if (!DNS_LABEL.test(namespace)) throw new FederationExportError(`${p}.namespace`, `${JSON.stringify(namespace.slice(0, 80))} is not a Kubernetes namespace (at most 63 lower-case letters, digits and '-')`);
      return { name, namespace, ...service(s, p, name, namespace) };
    } catch (e) {
      if (!(e instanceof FederationExportError)) throw e;
      return { name, namespace, hostname: '', vips: [], ports: [], endpoints: [], invalid: e.message };
    }
  });
  if (root.waypoints !== undefined && !Array.isArray(root.waypoints)) throw new FederationExportError('waypoints', 'must be a list');
  // An importer looks only at the waypoints its kept Services go through (the first entry of each name).
  const named = opts.quota ? new Set(services.flatMap((x) => (x.waypoint ? [`${x.waypoint.namespace}/${x.waypoint.name}`] : []))) : undefined;
  const rawWaypoints = ((root.waypoints ?? []) as unknown[]).map((wv, i) => {
    const p = `waypoints[${i}]`;
    const w = obj(wv, p);
    // Without its name the entry cannot be told apart: the export is malformed. Anything else
    // wrong costs only the Services behind it.
    return { p, w, name: str(w.name, `${p}.name`), namespace: str(w.namespace, `${p}.namespace`) };
  }).filter((x) => !named || named.delete(`${x.namespace}/${x.name}`));
  const waypoints = rawWaypoints.map(({ p, w, name, namespace }): ExportedWaypoint => {
    try {
      // Addresses are only checked to be addresses: whether an importer may dial one is its own
      // judgement (mergeRemoteServices), the cluster's own gateway dials them as they are.
      if (typeof w.ready !== 'boolean') throw new FederationExportError(`${p}.ready`, 'must be a boolean');
      if (w.addresses !== undefined && (!Array.isArray(w.addresses) || w.addresses.length > 64)) throw new FederationExportError(`${p}.addresses`, 'must be a list of at most 64 addresses');
      if (w.reason !== undefined && typeof w.reason !== 'string') throw new FederationExportError(`${p}.reason`, 'must be a string');
      return {
        name, namespace,
        ...(w.address !== undefined ? { address: ip(w.address, `${p}.address`) } : {}),
        ...(w.addresses !== undefined ? { addresses: (w.addresses as unknown[]).map((a, j) => ip(a, `${p}.addresses[${j}]`)) } : {}),
        port: port(w.port, `${p}.port`), spiffeId: str(w.spiffeId, `${p}.spiffeId`), ready: w.ready,
        ...(w.reason ? { reason: (w.reason as string).slice(0, 1024) } : {}),
      };
    } catch (e) {
      if (!(e instanceof FederationExportError)) throw e;
      return { name, namespace, port: 0, spiffeId: '', ready: false, invalid: e.message };
    }
  });
  return { cluster, network, ...(gateway ? { gateway } : {}), services, waypoints, ...(cut ? { quota: cut.cut } : {}) };
}

/** A remote Service (or, for one this cluster has too, its endpoints) not imported, and why (each costs only itself). */
export interface ImportRefusal {
  cluster: string;
  /** `namespace/name`. */
  service: string;
  /**
   * `vip-in-use`: one of its VIPs is an address this cluster already uses; `waypoint`: its traffic
   * goes through a waypoint of its own cluster that callers here cannot use (not in the export,
   * invalid, not ready, no address); `headless`: no VIP to reach it by; `no-gateway`: its cluster is
   * on another network without an east-west gateway (or one at an address no gateway may have);
   * `invalid`: its entry in the export is malformed (the field named); `endpoints`: the Service is
   * imported, but some of its endpoints are left out (an address no endpoint may have, or, on
   * another network, not in the mesh: only HBONE crosses the gateway, or listed twice);
   * `cluster-local`: a Service each cluster keeps to itself (isClusterLocal); `quota`: past this
   * cluster's import quota for that remote (QuotaCut: the first QUOTA_NAMED it left out, each named
   * here; the others only counted in the cut's message).
   */
  reason: 'vip-in-use' | 'waypoint' | 'headless' | 'no-gateway' | 'invalid' | 'endpoints' | 'cluster-local' | 'quota';
  message: string;
}

/**
 * The local services with every other cluster's endpoints of the same namespace/name added
 * (namespace sameness). Endpoints on another network are reached through that network's gateway;
 * another network without a gateway cannot be reached and its endpoints are left out.
 *
 * A Service that exists only in other clusters is imported (Istio: a Service deployed in one
 * cluster is reachable from the others by its name, which Istio's DNS proxy answers with the
 * remote Service's ClusterIP, as no local one exists). Its VIPs, ports and hostname are those of
 * the first cluster by cluster ID that has it; the others' endpoints join it. Refused, each
 * costing only itself: one whose VIP this cluster already uses (a local Service's VIP, a local
 * workload's or node's address, or an earlier import's), so a remote can never take over local
 * traffic; a headless one; one of a cluster on another network without a gateway (or with one at
 * an address no gateway may have); one whose entry is malformed. Endpoints are left out, each
 * costing only itself (named together per Service, `endpoints`), at an address no endpoint may
 * have, or, on another network, outside the mesh.
 *
 * A remote-only Service that goes through a waypoint of its own cluster (Service or Namespace
 * `use-waypoint` there) is imported with that waypoint and without its endpoints: callers here
 * send its traffic to that waypoint, which applies its routes and L7 policy, as Istio ambient's
 * multi-network mode does (through the network's east-west gateway, double HBONE, so the waypoint
 * sees the caller's own identity). Skipping the waypoint would bypass that policy, so such a
 * Service is refused when its waypoint is not in the export, is invalid, not ready or has no
 * address. The waypoints it returns are the imported ones, keyed by waypointKey (cluster-qualified).
 * Each remote-only Service it imports is marked with its cluster (Service.cluster), with endpoints
 * or without any: agents list its VIPs after this cluster's own destinations.
 * Returns new objects; the inputs are not changed.
 */
export function mergeRemoteServices(
  local: { services: Iterable<Service>; workloads?: Iterable<Pick<Workload, 'ip' | 'nodeIp'>> },
  own: { network: string },
  remotes: readonly ClusterExport[],
): { services: Map<string, Service>; waypoints: Map<string, Waypoint>; refused: ImportRefusal[] } {
  const out = new Map<string, Service>();
  const waypoints = new Map<string, Waypoint>();
  const refused: ImportRefusal[] = [];
  /** Addresses in use here: VIP → who has it. */
  const used = new Map<string, string>();
  for (const s of local.services) {
    out.set(`${s.namespace}/${s.name}`, s);
    for (const v of s.vips) used.set(v, `local Service ${s.namespace}/${s.name}`);
    for (const e of s.endpoints) {
      if (!used.has(e.ip)) used.set(e.ip, `local endpoint ${e.ip}`);
      if (e.nodeIp && !used.has(e.nodeIp)) used.set(e.nodeIp, `local node ${e.nodeIp}`);
    }
  }
  for (const w of local.workloads ?? []) {
    if (!used.has(w.ip)) used.set(w.ip, `local workload ${w.ip}`);
    if (w.nodeIp && !used.has(w.nodeIp)) used.set(w.nodeIp, `local node ${w.nodeIp}`);
  }
  const localKeys = new Set(out.keys());
  const ordered = [...remotes].sort((a, b) => (a.cluster < b.cluster ? -1 : a.cluster > b.cluster ? 1 : 0));
  for (const r of ordered) {
    const sameNetwork = r.network === own.network;
    const refuse = (key: string, reason: ImportRefusal['reason'], why: string) => refused.push({ cluster: r.cluster, service: key, reason, message: `Service ${key} of cluster ${r.cluster} not imported: ${why}` });
    // Past the quota: the first QUOTA_NAMED left out, each by a message that stays the same while
    // the quota does (so a refusal is counted once, not again at each change of the export).
    if (r.quota) {
      const why = `past this cluster's import quota of ${quotaText(r.quota.quota)}; each of the remote's namespaces is given a fair share of each bound, its Services taken in name order, and it did not fit (how many were left out: /debug/federation quota)`;
      for (const key of r.quota.refused.slice(0, QUOTA_NAMED)) refuse(key, 'quota', why);
    }
    const badGateway = !sameNetwork && r.gateway && !isServiceAddress(r.gateway.address) ? r.gateway.address : undefined;
    if (!sameNetwork && (!r.gateway || badGateway)) {
      // Nothing of it can be reached: its endpoints are left out, its remote-only Services named.
      const why = badGateway
        ? `cluster ${r.cluster} is on network ${r.network}, whose east-west gateway has the address ${badGateway}, which no gateway may have (loopback, unspecified, link-local or multicast), and this cluster is on ${own.network}`
        : `cluster ${r.cluster} is on network ${r.network}, which has no east-west gateway, and this cluster is on ${own.network}`;
      for (const rs of r.services) {
        const key = `${rs.namespace}/${rs.name}`;
        if (!out.has(key)) refuse(key, 'no-gateway', why);
      }
      continue;
    }
    // Its waypoints by name, the first entry of each (a lookup per Service; a list scan per Service
    // was Services x waypoints at every compile).
    const remoteWaypoints = new Map<string, ExportedWaypoint>();
    for (const w of r.waypoints ?? []) if (!remoteWaypoints.has(`${w.namespace}/${w.name}`)) remoteWaypoints.set(`${w.namespace}/${w.name}`, w);
    for (const rs of r.services) {
      const key = `${rs.namespace}/${rs.name}`;
      if (rs.invalid) {
        refuse(key, 'invalid', `its entry is malformed (${rs.invalid})`);
        continue;
      }
      if (isClusterLocal(rs.namespace, rs.name)) {
        refuse(key, 'cluster-local', 'it is cluster-local (every Service of kube-system, and default/kubernetes, as Istio\'s default cluster-local hosts): only its own cluster\'s endpoints serve it there, and this cluster\'s here');
        continue;
      }
      // Each endpoint a caller here could be sent to: one at an address no endpoint may have would
      // have the caller's agent dial its own loopback or the node's link-local services; one on
      // another network outside the mesh would be dialled directly in plaintext, around the gateway,
      // at an address of that network (Istio ambient reaches another network only by double HBONE
      // through its gateway and leaves such endpoints out). Each left out costs only itself.
      const left: string[] = [];
      const imported: Endpoint[] = [];
      const seen = new Set<string>();
      for (const e of rs.endpoints) {
        const unusable = [e.ip, ...(e.nodeIp ? [e.nodeIp] : [])].find((a) => !isServiceAddress(a));
        // An address listed again would take a larger share of the Service's traffic for nothing.
        if (seen.has(e.ip)) {
          left.push(`${e.ip}: listed more than once`);
          continue;
        }
        seen.add(e.ip);
        if (unusable) left.push(`${e.ip}: ${unusable} cannot be an endpoint's address (loopback, unspecified, link-local or multicast)`);
        else if (!sameNetwork && !(e.enrolled && e.nodeIp && e.spiffeId)) left.push(`${e.ip}: not in the mesh, and network ${r.network} is reached only by HBONE through its east-west gateway`);
        // A pod of another namespace than the Service's behind a waypoint of its own (Endpoint.waypoint):
        // its cluster's agents reach it only through that waypoint, and its gateway carries only that
        // waypoint to it; a caller here would be sent straight to it, around the waypoint's L7 policy.
        else if (e.waypoint) left.push(`${e.ip}: a pod of namespace ${e.workload?.namespace || '(unknown)'} behind its own waypoint ${e.waypoint.namespace}/${e.waypoint.name} of cluster ${r.cluster}, which this Service does not go through; reaching it directly would bypass that waypoint's L7 policy`);
        else {
          imported.push({
            ...e,
            ...(e.workload ? { workload: { ...e.workload, cluster: r.cluster } } : {}),
            cluster: r.cluster,
            network: r.network,
            ...(sameNetwork ? {} : { gateway: r.gateway! }),
          });
        }
      }
      const leftOut = () => {
        if (left.length > 0) refused.push({ cluster: r.cluster, service: key, reason: 'endpoints', message: `Service ${key} of cluster ${r.cluster}: ${left.length} of its ${rs.endpoints.length} endpoints not imported: ${left.slice(0, 8).join('; ')}${left.length > 8 ? `; and ${left.length - 8} more` : ''}` });
      };
      const mine = out.get(key);
      if (mine) {
        // One imported with its cluster's waypoint is reached only through that waypoint.
        if (mine.waypoint?.cluster !== undefined) continue;
        // Endpoints behind their own cluster's waypoint join a copy that has a waypoint of its own
        // (which applies the same policies: Istio's namespace sameness); joined to one without
        // any they would be reached directly, bypassing that waypoint's L7 policy. Fail closed.
        if (rs.waypoint && !mine.waypoint) {
          refuse(key, 'waypoint', `its endpoints there go through waypoint ${rs.waypoint.namespace}/${rs.waypoint.name} of cluster ${r.cluster}, which enforces its L7 policy, and the Service here has no waypoint to apply it; reaching them directly would bypass that policy`);
          continue;
        }
        out.set(key, { ...mine, endpoints: [...mine.endpoints, ...imported] });
        leftOut();
        continue;
      }
      if (localKeys.has(key)) continue;
      let remoteWaypoint: Waypoint | undefined;
      if (rs.waypoint) {
        const w = rs.waypoint;
        const named = `waypoint ${w.namespace}/${w.name} of cluster ${r.cluster}`;
        const found = remoteWaypoints.get(`${w.namespace}/${w.name}`);
        const unusable = found && [...(found.address ? [found.address] : []), ...waypointAddresses(found)].find((a) => !isServiceAddress(a));
        const problem = w.refused !== undefined ? `may not be used by it (${waypointRefusalText(w, rs.namespace)})`
          : !found ? 'is not in its export'
          : found.invalid ? `is invalid (${found.invalid})`
          : !found.ready ? `is not ready${found.reason ? ` (${found.reason})` : ''}`
          : !found.address ? 'has no address'
          : unusable ? `has the address ${unusable}, which no waypoint may have (loopback, unspecified, link-local or multicast)` : undefined;
        if (problem || !found) {
          refuse(key, 'waypoint', `its traffic goes through ${named}, which enforces its L7 policy and ${problem}; going around it would bypass that policy`);
          continue;
        }
        remoteWaypoint = {
          name: found.name, namespace: found.namespace, address: found.address!, ...(found.addresses ? { addresses: found.addresses } : {}),
          port: found.port, spiffeId: found.spiffeId, ready: true,
          cluster: r.cluster, network: r.network, ...(sameNetwork ? {} : { gateway: r.gateway! }),
        };
      }
      if (rs.vips.length === 0) {
        refuse(key, 'headless', 'it has no VIP (headless)');
        continue;
      }
      const taken = rs.vips.find((v) => used.has(v));
      if (taken) {
        refuse(key, 'vip-in-use', `its VIP ${taken} is already ${used.get(taken)}`);
        continue;
      }
      for (const v of rs.vips) used.set(v, `Service ${key} imported from ${r.cluster}`);
      const { waypoint: _none, invalid: _valid, ...plain } = rs;
      if (!remoteWaypoint) {
        out.set(key, { ...plain, endpoints: imported, cluster: r.cluster });
        leftOut();
        continue;
      }
      const ref: WaypointRef = { name: remoteWaypoint.name, namespace: remoteWaypoint.namespace, cluster: r.cluster };
      waypoints.set(waypointKey(ref), remoteWaypoint);
      out.set(key, { ...plain, endpoints: [], waypoint: ref, cluster: r.cluster });
    }
  }
  return { services: out, waypoints, refused };
}
