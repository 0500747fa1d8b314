// The agent's view of the mesh (its node's AgentConfig from the controller) and the decisions made
// from it: which local pod owns an address, and where a captured connection should go.
import type { AgentConfig, Endpoint, LoadBalancerPolicy, LocalityPolicy, MtlsMode, NetworkGateway, Service, Waypoint, Workload, WorkloadMeta } from '../../lib/model/mesh.ts';
import { HBONE_PORT, boundWaypoint, endpointTargetPort, policySelectsWorkload, waypointAddresses, waypointKey, waypointRefusalText, type WaypointRef } from '../../lib/model/mesh.ts';
import { workloadMetaKey } from '../../lib/telemetry/labels.ts';
import { CompiledPolicies } from '../../lib/policy/authz.ts';
import { exportSelection, exportedPodsOf, podTarget, waypointGuardRefusal, type ExportedPods } from '../../lib/model/federation.ts';
import { ipProblem } from '../../lib/model/address.ts';

/** Where one captured connection goes. */
export type Upstream =
  /**
   * HBONE to a remote node's agent (or a waypoint), CONNECT to `target`; with `gateway`, that
   * tunnel runs inside an outer one to the endpoint's network gateway (double HBONE).
   */
  | { kind: 'hbone'; address: string; port: number; target: string; identity: string; endpoint?: Endpoint; waypoint?: Waypoint; service?: Service; gateway?: NetworkGateway }
  /** Destination pod on this node: policy applies, no TLS on the wire. */
  | { kind: 'local'; workload: Workload; target: string; endpoint?: Endpoint; service?: Service }
  /** Destination outside the mesh (not enrolled): plain TCP. */
  | { kind: 'passthrough'; target: string; endpoint?: Endpoint; service?: Service };

/**
 * Refuses a config the agent cannot act on safely (the config stream NACKs it and the last good
 * one keeps serving): every address the datapath would be given must parse.
 */
export function validateAgentConfig(config: AgentConfig): void {
  // ipProblem: what the controller refuses, a zone (fe80::1%eth0) too, which the BPF codec would drop.
  const bad = (what: string, v: string) => {
    throw new Error(`${what}: ${ipProblem(v) ?? `${JSON.stringify(v)} is not a valid address`}`);
  };
  const isAddress = (v: string): boolean => ipProblem(v) === undefined;
  const port = (what: string, v: unknown) => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 65535) throw new Error(`${what}: ${JSON.stringify(v)} is not a port`);
  };
  for (const w of config.workloads) {
    if (w.ip && !isAddress(w.ip)) bad(`workload ${w.namespace}/${w.name} ip`, w.ip);
    if (w.nodeIp && !isAddress(w.nodeIp)) bad(`workload ${w.namespace}/${w.name} nodeIp`, w.nodeIp);
  }
  for (const s of config.services) {
    for (const v of s.vips) if (!isAddress(v)) bad(`service ${s.namespace}/${s.name} vip`, v);
    for (const p of s.ports) port(`service ${s.namespace}/${s.name} port ${p.name}`, p.port);
    for (const e of s.endpoints) {
      if (!isAddress(e.ip)) bad(`service ${s.namespace}/${s.name} endpoint`, e.ip);
      // Dialled for HBONE (the waypoint's config check tests it too).
      if (e.nodeIp && !isAddress(e.nodeIp)) bad(`service ${s.namespace}/${s.name} endpoint ${e.ip} nodeIp`, e.nodeIp);
      if (e.gateway) {
        if (!isAddress(e.gateway.address)) bad(`service ${s.namespace}/${s.name} endpoint ${e.ip} gateway`, e.gateway.address);
        port(`service ${s.namespace}/${s.name} endpoint ${e.ip} gateway port`, e.gateway.port);
      }
    }
  }
  for (const w of config.waypoints) {
    if (w.address && !isAddress(w.address)) bad(`waypoint ${w.namespace}/${w.name} address`, w.address);
    for (const a of w.addresses ?? []) if (!isAddress(a)) bad(`waypoint ${w.namespace}/${w.name} addresses`, a);
    if (w.gateway) {
      if (!isAddress(w.gateway.address)) bad(`waypoint ${waypointKey(w)} gateway`, w.gateway.address);
      port(`waypoint ${waypointKey(w)} gateway port`, w.gateway.port);
    }
  }
}

export class NoRouteError extends Error {
  readonly code = 'WEFT_NO_ROUTE';
  constructor(message: string) {
    super(message);
    this.name = 'NoRouteError';
  }
}

/**
 * What an endpoint's failure and load state is kept under: its address, or, on another network
 * (behind that network's gateway), the network and address, as networks may reuse each other's
 * addresses (ztunnel keys workloads by network and address).
 */
export function endpointKey(e: Pick<Endpoint, 'ip' | 'gateway'>): string {
  return e.gateway ? `${e.gateway.network}/${e.ip}` : e.ip;
}

/** How long an endpoint that refused a connection is skipped. */
export const ENDPOINT_BACKOFF_MS = 5_000;

/** An address (and port; 0 for a workload's address) the datapath redirects; a Service's names its namespace. */
export interface MeshDestination { ip: string; port: number; namespace?: string }

export class AgentState {
  readonly node: string;
  private config: AgentConfig;
  /** policiesFor's lists for this config (apply starts anew). */
  #policiesOf = new WeakMap<Workload, CompiledPolicies>();
  private workloadsByIp = new Map<string, Workload>();
  private workloadsByUid = new Map<string, Workload>();
  /**
   * Pod address → uid of the pod whose network namespace the agent enrolled there (podEnrolled).
   * Where it is set, the pod at that address is that one, whatever else the config lists there: a
   * config that still names a deleted pod at an address a new pod was given must not lend the new
   * pod the old one's identity, mode or policies (ztunnel keys its local pods by uid, not address).
   */
  private enrolledUids = new Map<string, string>();
  /** SPIFFE ID → the workloads the config knows for it (pods, and endpoints of other clusters), built on first use per config. */
  private metaByPrincipal: Map<string, WorkloadMeta[]> | undefined;
  /** What the east-west gateway carries other networks' callers to (exportedPodsOf), built on first use per config. */
  private exported: ExportedPods | undefined;
  private servicesByVip = new Map<string, Service>();
  private servicesByName = new Map<string, Service>();
  /**
   * This network's endpoints by address. Another network's (behind its gateway) are left out: their
   * addresses are that network's, reached only through their Service (Istio: ztunnel looks a
   * dialled address up in the caller's own network), so a remote cluster cannot claim an address
   * of this one.
   */
  private endpointsByIp = new Map<string, Endpoint>();
  private waypoints = new Map<string, Waypoint>();
  private rr = new Map<string, number>();
  private active = new Map<string, number>();
  private failedUntil = new Map<string, number>();
  private lb = new Map<string, LoadBalancerPolicy>();
  private locality = new Map<string, LocalityPolicy>();
  /** Bumped on every apply(): lets callers cache per-version results. */
  version = 0;

  constructor(node: string) {
    this.node = node;
    this.config = { node, workloads: [], services: [], policies: [], peerAuthentications: [], waypoints: [] };
  }

  get current(): AgentConfig {
    return this.config;
  }

  apply(config: AgentConfig): void {
    const byIp = new Map<string, Workload>();
    const byUid = new Map<string, Workload>();
    for (const w of config.workloads) {
      if (w.ip) byIp.set(w.ip, w);
      byUid.set(w.uid, w);
    }
    const byVip = new Map<string, Service>();
    const byName = new Map<string, Service>();
    const eps = new Map<string, Endpoint>();
    for (const s of config.services) {
      for (const vip of s.vips) byVip.set(vip, s);
      byName.set(`${s.namespace}/${s.name}`, s);
      for (const e of s.endpoints) if (!e.gateway && !eps.has(e.ip)) eps.set(e.ip, e);
    }
    const lb = new Map<string, LoadBalancerPolicy>();
    const locality = new Map<string, LocalityPolicy>();
    for (const tp of config.trafficPolicies ?? []) {
      lb.set(tp.service, tp.loadBalancer);
      if (tp.locality) locality.set(tp.service, tp.locality);
    }
    const wps = new Map<string, Waypoint>();
    for (const w of config.waypoints) wps.set(waypointKey(w), w);
    this.config = config;
    this.#policiesOf = new WeakMap();
    this.workloadsByIp = byIp;
    this.workloadsByUid = byUid;
    this.metaByPrincipal = undefined;
    this.exported = undefined;
    this.servicesByVip = byVip;
    this.servicesByName = byName;
    this.endpointsByIp = eps;
    this.waypoints = wps;
    this.lb = lb;
    this.locality = locality;
    this.version++;
  }

  /**
   * The workloads the config knows with identity `spiffeId` (every pod, the endpoints other
   * clusters export with their workload, and the waypoints), each described once: what a peer of that identity may
   * say it is (lib/telemetry/labels.ts verifiedPeerMeta).
   */
  workloadsOf(spiffeId: string): readonly WorkloadMeta[] {
    if (!this.metaByPrincipal) {
      const index = new Map<string, WorkloadMeta[]>();
      const seen = new Set<string>();
      const add = (id: string | undefined, m: WorkloadMeta | undefined): void => {
        if (!id || !m) return;
        const key = `${id}\u0000${workloadMetaKey(m)}`;
        if (seen.has(key)) return;
        seen.add(key);
        const list = index.get(id);
        if (list) list.push(m);
        else index.set(id, [m]);
      };
      for (const w of this.config.workloads) add(w.spiffeId, w);
      for (const svc of this.config.services) for (const e of svc.endpoints) add(e.spiffeId, e.workload);
      for (const wp of this.config.waypoints) add(wp.spiffeId, wp.workload);
      this.metaByPrincipal = index;
    }
    return this.metaByPrincipal.get(spiffeId) ?? [];
  }

  /**
   * A workload of this node, by pod IP: the pod enrolled at that address when the agent enrolled
   * one there, and only while the config gives it that address; undefined while the config still
   * names another pod there (staleAt), so its traffic is refused rather than judged as that pod's.
   */
  localWorkload(ip: string): Workload | undefined {
    const uid = this.enrolledUids.get(ip);
    const w = uid !== undefined ? this.workloadsByUid.get(uid) : this.workloadsByIp.get(ip);
    return w && w.node === this.node && w.ip === ip ? w : undefined;
  }

  /** The agent enrolled pod `uid`'s network namespace at address `ip`. */
  podEnrolled(ip: string, uid: string): void {
    this.enrolledUids.set(ip, uid);
  }

  /** The uid of the pod the agent enrolled at `ip`, if any. */
  enrolledUid(ip: string): string | undefined {
    return this.enrolledUids.get(ip);
  }

  /** The agent unenrolled the pod at `ip`. */
  podUnenrolled(ip: string): void {
    this.enrolledUids.delete(ip);
  }

  /**
   * An address whose enrolled pod the config does not (yet) know there: the uid enrolled and the
   * pod the config names at the address instead, if any. Its traffic is refused until they agree.
   */
  staleAt(ip: string): { enrolledUid: string; listed: Workload | undefined } | undefined {
    const uid = this.enrolledUids.get(ip);
    if (uid === undefined || this.localWorkload(ip)) return undefined;
    const listed = this.workloadsByIp.get(ip);
    return { enrolledUid: uid, listed: listed && listed.node === this.node ? listed : undefined };
  }

  /**
   * The pods' ports of this cluster the east-west gateway carries other networks' callers to, and
   * those it carries only a waypoint's identity to (exportedPodsOf the export's selection, each
   * waypoint looked up among the export's own, as the gateway reads it): the agent judges every
   * CONNECT on its gateway port by it.
   */
  exportedPods(): ExportedPods {
    return (this.exported ??= exportedPodsOf(exportSelection(this.config.services, this.config.waypoints)));
  }

  /**
   * Why the east-west gateway would not carry `principal` to port `port` of the pod at `ip`
   * (eastwest/src/gateway.ts), or undefined: another network's caller reaches only the ports the
   * Services this cluster exports send to, and one reached only through a waypoint only as that
   * waypoint (exportedPodsOf). The agent asks it of every CONNECT on its gateway port, and again of
   * each one open at every change of the config (LocalDelivery.reauthorize). `label`: the refusal's
   * reason in weft_connections_denied_total.
   */
  gatewayRefusal(ip: string, port: number, principal: string | undefined): { label: 'not_exported' | 'behind_waypoint'; reason: string } | undefined {
    const target = podTarget(ip, port);
    const pods = this.exportedPods();
    if (!pods.exported.has(target)) {
      return { label: 'not_exported', reason: `${target} is not an endpoint of a Service this cluster exports at that port; the east-west gateway carries other networks' callers to those only` };
    }
    const guard = pods.guards.get(target);
    if (guard && !guard.ids.has(principal ?? '')) return { label: 'behind_waypoint', reason: waypointGuardRefusal(ip, port, guard, 'the east-west gateway') };
    return undefined;
  }

  /**
   * Who owns an address anywhere in the mesh, as far as this agent's config says: the workload
   * (any node) or a service endpoint, with its identity and its node's address.
   */
  addressOwner(ip: string): { spiffeId: string | undefined; nodeIp: string | undefined } | undefined {
    const w = this.workloadsByIp.get(ip);
    if (w) return { spiffeId: w.enrolled ? w.spiffeId : undefined, nodeIp: w.nodeIp };
    const e = this.endpointsByIp.get(ip);
    return e ? { spiffeId: e.enrolled ? e.spiffeId : undefined, nodeIp: e.nodeIp } : undefined;
  }

  /**
   * The waypoints traffic to a workload passes: its own (`use-waypoint`) and those of its
   * namespace's services. A Service of another namespace that lists the pod (a hand-written
   * EndpointSlice) does not make its waypoint one that speaks for the pod: that namespace's tenant
   * may run the waypoint's replicas, and connections through it pass the pod's own waypoint
   * (foreignWaypoint).
   */
  waypointsServing(w: Workload): Waypoint[] {
    const out = new Set<Waypoint>();
    const own = this.waypointFor(w.waypoint);
    if (own) out.add(own);
    for (const key of w.services) {
      if (!key.startsWith(`${w.namespace}/`)) continue;
      const wp = this.waypointFor(this.servicesByName.get(key)?.waypoint);
      if (wp) out.add(wp);
    }
    return [...out];
  }

  localWorkloads(): Workload[] {
    return this.config.workloads.filter((w) => w.node === this.node);
  }

  service(vip: string): Service | undefined {
    return this.servicesByVip.get(vip);
  }

  /**
   * Every address the datapath must redirect: service VIPs (per port) and workload IPs (this
   * network's, as endpointsByIp). This cluster's own first (its workloads, then its Services' VIPs
   * and endpoints), then what other clusters add (the VIPs of Services only they have, their
   * endpoints), so that past the map's capacity (Datapath.setDestinations) what a remote cluster
   * exported is left out, never this cluster's own. This cluster's Services are listed a namespace
   * at a time in turn (round-robin over namespaces by name), so that past the capacity a namespace
   * whose Services claim more than their share (Kubernetes bounds neither a Service's ports nor a
   * namespace's Services) loses its own tail, never another namespace's VIPs: listed by name, two
   * Services of 40,000 ports pushed every later namespace out. Each Service destination names its
   * namespace, for the overflow's log line.
   */
  meshDestinations(): MeshDestination[] {
    const out: MeshDestination[] = [];
    const imported: MeshDestination[] = [];
    const byNamespace = new Map<string, MeshDestination[]>();
    for (const w of this.config.workloads) if (w.enrolled && w.ip) out.push({ ip: w.ip, port: 0 });
    for (const s of this.config.services) {
      // A Service only other clusters have (marked so by mergeRemoteServices, whatever its
      // endpoints: an import with none at all still takes its VIPs x ports).
      const remote = s.cluster !== undefined;
      let own = byNamespace.get(s.namespace);
      if (!own) byNamespace.set(s.namespace, (own = []));
      const namespace = s.namespace;
      for (const vip of s.vips) for (const p of s.ports) (remote ? imported : own).push({ ip: vip, port: p.port, namespace });
      for (const e of s.endpoints) if (e.enrolled && !e.gateway) (e.cluster !== undefined ? imported : own).push({ ip: e.ip, port: 0, namespace });
    }
    const lists = [...byNamespace.keys()].sort().map((ns) => byNamespace.get(ns)!);
    for (let i = 0, longest = Math.max(0, ...lists.map((l) => l.length)); i < longest; i++) {
      for (const l of lists) if (i < l.length) out.push(l[i]!);
    }
    for (const d of imported) out.push(d);
    const seen = new Set<string>();
    return out.filter((d) => {
      const k = `${d.ip}:${d.port}`;
      if (seen.has(k)) return false;
      seen.add(k);
      return true;
    });
  }

  /**
   * Policies that apply to a local workload as a destination, compiled (lib/policy/authz.ts
   * CompiledPolicies): listed once per workload object per config, not per connection.
   */
  policiesFor(workload: Workload): CompiledPolicies {
    let list = this.#policiesOf.get(workload);
    if (!list) {
      list = new CompiledPolicies(this.config.policies.filter((p) => policySelectsWorkload(p, workload)));
      this.#policiesOf.set(workload, list);
    }
    return list;
  }

  /** The mTLS mode for a port of a local workload (port-level overrides first). */
  modeFor(workload: Workload, port: number): MtlsMode {
    return workload.portModes?.[String(port)] ?? workload.mode;
  }

  /** The waypoint a binding names; none for a refused binding (WaypointRef.refused), which no waypoint serves. */
  waypointFor(ref: WaypointRef | undefined): Waypoint | undefined {
    const bound = boundWaypoint(ref);
    return bound ? this.waypoints.get(waypointKey(bound)) : undefined;
  }

  /**
   * Candidate upstreams for a connection from `source` to ip:port, best first: a caller tries them
   * in order and reports failures with endpointFailed() so the next pick skips that endpoint.
   */
  resolve(source: Workload, ip: string, port: number): Upstream[] {
    const svc = this.servicesByVip.get(ip);
    if (svc) {
      const wp = this.waypointFor(svc.waypoint);
      if (svc.waypoint && !wp) throw missingWaypoint(svc.waypoint, `service ${svc.namespace}/${svc.name}`, svc.namespace);
      if (wp && !isWaypointItself(source, wp)) return this.viaWaypoint(wp, `${ip}:${port}`, svc);
      const sp = svc.ports.find((p) => p.port === port);
      if (!sp) throw new NoRouteError(`service ${svc.namespace}/${svc.name} has no port ${port}`);
      const eps = this.pick(svc, port, source);
      if (eps.length === 0) {
        const stale = svc.endpoints.filter((e) => this.isStaleLocal(e)).map((e) => e.ip);
        throw new NoRouteError(`service ${svc.namespace}/${svc.name} has no ready endpoint for port ${port}${this.locality.get(`${svc.namespace}/${svc.name}`)?.mode === 'local-only' ? ` in cluster ${source.cluster} (locality local-only)` : ''}${stale.length > 0 ? ` (${stale.join(', ')} enrolled for another pod than the config names there, skipped until it catches up)` : ''}`);
      }
      return eps.flatMap(({ endpoint, targetPort }) => {
        const wp = this.foreignWaypoint(svc, endpoint, source);
        return wp ? this.viaWaypoint(wp, `${endpoint.ip}:${targetPort}`) : [this.toEndpoint(endpoint, targetPort, svc)];
      });
    }
    const wl = this.workloadsByIp.get(ip);
    if (wl) {
      const wp = this.waypointFor(wl.waypoint);
      if (wl.waypoint && !wp) throw missingWaypoint(wl.waypoint, `workload ${wl.namespace}/${wl.name}`, wl.namespace);
      if (wp && !isWaypointItself(source, wp)) return this.viaWaypoint(wp, `${ip}:${port}`);
      if (wl.node === this.node) {
        const local = this.localWorkload(ip);
        if (!local) throw new NoRouteError(`${ip} is enrolled for another pod than ${wl.namespace}/${wl.name}, which the config still names there (an address reused before the config caught up); refused until it does`);
        return [{ kind: 'local', workload: local, target: `${ip}:${port}` }];
      }
      if (!wl.enrolled || !wl.nodeIp) return [{ kind: 'passthrough', target: `${ip}:${port}` }];
      return [{ kind: 'hbone', address: wl.nodeIp, port: HBONE_PORT, target: `${ip}:${port}`, identity: wl.spiffeId }];
    }
    const ep = this.endpointByIp(ip);
    if (ep && this.isStaleLocal(ep)) throw new NoRouteError(`${ip} is enrolled for another pod than the endpoint the config still lists there (an address reused before the config caught up); refused until it does`);
    if (ep) return [this.toEndpoint(ep, port)];
    throw new NoRouteError(`${ip}:${port} is not a service or workload the mesh knows`);
  }

  /**
   * The waypoint of an endpoint that is another namespace's pod (a selectorless Service whose
   * EndpointSlice lists it): that pod's own waypoint, which traffic addressed to the pod passes.
   * Within one namespace a Service addressed without a waypoint goes straight to its endpoints, as
   * in ztunnel (a Service-addressed connection never takes a workload's waypoint); but a Service of
   * namespace A must not be a way around namespace B's waypoint, which A's owner cannot opt out of.
   * The controller marks such an endpoint with the pod's waypoint (Endpoint.waypoint); another
   * cluster's endpoint is never marked (an importer leaves a marked one out).
   */
  private foreignWaypoint(svc: Service, e: Endpoint, source: Workload): Waypoint | undefined {
    if (e.cluster !== undefined || !e.waypoint) return undefined;
    const wp = this.waypointFor(e.waypoint);
    if (!wp) throw missingWaypoint(e.waypoint, `workload ${e.workload ? `${e.workload.namespace}/${e.workload.workloadName}` : e.ip} (an endpoint of service ${svc.namespace}/${svc.name})`, e.workload?.namespace ?? '(unknown)');
    return isWaypointItself(source, wp) ? undefined : wp;
  }

  /**
   * One candidate per waypoint replica, starting round robin per connection so load spreads
   * (state such as a shared quota lives in Redis, not in one replica); a caller that cannot open
   * the first tries the next replica. Another network's waypoint (a remote-only Service's, imported
   * with it) is reached through that network's gateway, never directly.
   */
  private viaWaypoint(wp: Waypoint, target: string, service?: Service): Upstream[] {
    if (!wp.address || !wp.ready) {
      throw new NoRouteError(`waypoint ${wp.namespace}/${wp.name} is not ready${wp.reason ? ` (${wp.reason})` : ''}; traffic that must pass it fails closed`);
    }
    const addresses = waypointAddresses(wp);
    const key = `waypoint ${waypointKey(wp)}`;
    const start = (this.rr.get(key) ?? 0) % addresses.length;
    this.rr.set(key, start + 1);
    const rotated = [...addresses.slice(start), ...addresses.slice(0, start)];
    return rotated.map((address) => ({ kind: 'hbone', address, port: wp.port || HBONE_PORT, target, identity: wp.spiffeId, waypoint: wp, ...(service ? { service } : {}), ...(wp.gateway ? { gateway: wp.gateway } : {}) }));
  }

  private toEndpoint(e: Endpoint, port: number, service?: Service): Upstream {
    const target = `${e.ip}:${port}`;
    const extra = { endpoint: e, ...(service ? { service } : {}) };
    const local = e.node === this.node && e.cluster === undefined ? this.localWorkload(e.ip) : undefined;
    if (local && local.enrolled) return { kind: 'local', workload: local, target, ...extra };
    if (!e.enrolled || !e.nodeIp || !e.spiffeId) return { kind: 'passthrough', target, ...extra };
    return { kind: 'hbone', address: e.nodeIp, port: HBONE_PORT, target, identity: e.spiffeId, ...extra, ...(e.gateway ? { gateway: e.gateway } : {}) };
  }

  /**
   * An endpoint of this node at an address this agent enrolled for another pod than the one the
   * config still lists there (staleAt): not the endpoint the Service means, and none to reach
   * through this node's inbound (which refuses it); pick() skips it for the Service's others.
   */
  private isStaleLocal(e: Endpoint): boolean {
    return e.node === this.node && e.cluster === undefined && !e.gateway && this.staleAt(e.ip) !== undefined;
  }

  private endpointByIp(ip: string): Endpoint | undefined {
    return this.endpointsByIp.get(ip);
  }

  /**
   * Ready endpoints ordered by the service's load-balancing choice, failing ones last; with a
   * locality policy, the caller's own cluster first (prefer-local), only (local-only), or the
   * cluster a weighted draw picked first.
   */
  private pick(svc: Service, port: number, source?: Workload): Array<{ endpoint: Endpoint; targetPort: number }> {
    const sp = svc.ports.find((p) => p.port === port)!;
    const now = Date.now();
    const candidates: Array<{ endpoint: Endpoint; targetPort: number }> = [];
    for (const e of svc.endpoints) {
      if (!e.ready || this.isStaleLocal(e)) continue;
      const tp = endpointTargetPort(e, sp);
      if (tp === undefined) continue;
      candidates.push({ endpoint: e, targetPort: tp });
    }
    if (candidates.length === 0) return [];
    const key = `${svc.namespace}/${svc.name}:${port}`;
    const policy = this.lb.get(`${svc.namespace}/${svc.name}`);
    let start: number;
    if (policy === 'RANDOM') {
      // Envoy's RANDOM: a uniform draw per connection (the rest in order, for retries).
      start = Math.floor(Math.random() * candidates.length);
    } else {
      start = (this.rr.get(key) ?? 0) % candidates.length;
      this.rr.set(key, start + 1);
    }
    let rotated = [...candidates.slice(start), ...candidates.slice(0, start)];
    if (policy === 'LEAST_REQUEST') {
      // Stable sort: ties keep the round-robin order, so equal loads still rotate.
      const load = (c: { endpoint: Endpoint }) => this.active.get(endpointKey(c.endpoint)) ?? 0;
      rotated = rotated.sort((a, b) => load(a) - load(b));
    }
    const healthy = rotated.filter((c) => (this.failedUntil.get(endpointKey(c.endpoint)) ?? 0) <= now);
    const failing = rotated.filter((c) => (this.failedUntil.get(endpointKey(c.endpoint)) ?? 0) > now);
    const locality = this.locality.get(`${svc.namespace}/${svc.name}`);
    if (!locality || !source) return [...healthy, ...failing];
    return orderByLocality(locality, source.cluster, healthy, failing);
  }

  /** `key`: endpointKey() of the endpoint (its address for anything else). */
  endpointFailed(key: string): void {
    this.failedUntil.set(key, Date.now() + ENDPOINT_BACKOFF_MS);
  }

  endpointSucceeded(key: string): void {
    this.failedUntil.delete(key);
  }

  connectionOpened(key: string): void {
    this.active.set(key, (this.active.get(key) ?? 0) + 1);
  }

  connectionClosed(key: string): void {
    const n = (this.active.get(key) ?? 1) - 1;
    if (n <= 0) this.active.delete(key);
    else this.active.set(key, n);
  }
}

/** The cluster an endpoint runs in: the one it was learnt from, else its pod's (the caller's own). */
function clusterOf(e: Endpoint, own: string): string {
  return e.cluster ?? e.workload?.cluster ?? own;
}

/**
 * Applies a service's locality policy to endpoints already in load-balancing order (healthy, then
 * failing): prefer-local puts the caller's cluster first while it has a healthy endpoint, so an
 * endpoint that just failed falls over to another cluster at once and comes back once healthy;
 * local-only drops other clusters; weighted draws a cluster by weight and tries it first.
 */
export function orderByLocality<T extends { endpoint: Endpoint }>(policy: LocalityPolicy, own: string, healthy: T[], failing: T[], random: () => number = Math.random): T[] {
  const isLocal = (c: T) => clusterOf(c.endpoint, own) === own;
  switch (policy.mode) {
    case 'local-only':
      return [...healthy.filter(isLocal), ...failing.filter(isLocal)];
    case 'prefer-local':
      return [...healthy.filter(isLocal), ...healthy.filter((c) => !isLocal(c)), ...failing.filter(isLocal), ...failing.filter((c) => !isLocal(c))];
    case 'weighted': {
      const weights = policy.weights ?? {};
      const clusters = [...new Set(healthy.map((c) => clusterOf(c.endpoint, own)))].filter((c) => (weights[c] ?? 0) > 0);
      const total = clusters.reduce((n, c) => n + weights[c]!, 0);
      if (total === 0) return [...healthy, ...failing];
      let draw = random() * total;
      let chosen = clusters[clusters.length - 1]!;
      for (const c of clusters) {
        draw -= weights[c]!;
        if (draw < 0) { chosen = c; break; }
      }
      const inChosen = (c: T) => clusterOf(c.endpoint, own) === chosen;
      return [...healthy.filter(inChosen), ...healthy.filter((c) => !inChosen(c)), ...failing];
    }
  }
}

/**
 * A destination that must pass a waypoint that does not exist fails closed: its L7 policies hold
 * only there, so going around it would skip them.
 */
function missingWaypoint(ref: WaypointRef, what: string, namespace: string): NoRouteError {
  if (ref.refused !== undefined) return new NoRouteError(`${what} may not use waypoint ${ref.namespace}/${ref.name}: ${waypointRefusalText(ref, namespace)}; traffic that must pass a waypoint fails closed`);
  return new NoRouteError(`${what} uses waypoint ${ref.namespace}/${ref.name}, which does not exist; traffic that must pass it fails closed`);
}

/** A waypoint's own connections must not loop back into itself. */
function isWaypointItself(source: Workload, wp: Waypoint): boolean {
  return wp.cluster === undefined && source.spiffeId === wp.spiffeId && source.namespace === wp.namespace;
}
