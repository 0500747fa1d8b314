// The east-west gateway: the one door into a cluster's network from other networks (Istio's
// multi-network "east-west gateway", ambient double HBONE). It listens for HBONE on 15008 at the
// network's edge. A caller in another network opens an outer tunnel whose CONNECT authority names
// the endpoint it wants (`podIp:port`); the gateway checks that the endpoint is an enrolled
// workload of its own cluster at a port one of its exported Services sends to (Istio's gateway
// routes to Service ports only), connects to that workload's node agent on the agent's gateway
// port (15009, PORTS.hboneGateway) and pipes the
// bytes: they are the caller's inner HBONE session (TLS with the caller's own certificate), so the
// gateway never sees plaintext and the destination agent authenticates the caller and applies
// its own policy. Callers pool that inner session (lib/hbone/pool.ts): one outer tunnel carries
// every CONNECT of one caller identity to that agent and identity for as long as it is in use; the
// agent checks each inner CONNECT's target is one of its own enrolled workloads. A caller of a
// Service that goes through one of this cluster's waypoints names that waypoint's own HBONE address
// instead (`waypointIp:15008`, a ready replica's), and the gateway connects to it as it is: the
// inner session is then the caller's HBONE to the waypoint, which authenticates the caller and
// applies the Service's routes and L7 policy (Istio ambient multi-network). A pod whose every
// Service here goes through a waypoint is carried to only from that waypoint's identity (another
// cluster's waypoint of the same name, namespace sameness): anyone else would step around its L7
// policy (Istio's gateway carries callers to Services, never to a pod of their choosing). A pod of
// another namespace than a Service listing it that has a waypoint of its own (Endpoint.waypoint)
// is carried to only from that waypoint's identity, whatever that Service goes through
// (exportedPodsOf). The inner session reaches every pod of the agent's node, so the agent applies
// the same rules, from the same function over the same Services, to each CONNECT on its gateway
// port (agent/src/inbound.ts). Nothing
// else is reachable through it. It learns its cluster's endpoints and waypoints from its controller's
// federation export, and judges the tunnels open again at every new one (#rejudge).
import { createHash } from 'node:crypto';
import net from 'node:net';
import { Counter, Gauge, type Registry } from 'prom-client';
import { HboneServer, pooledReads, type HboneConnectDecision, type HboneConnectRequest, type HboneRefusal } from '../../lib/hbone/index.ts';
import { DEFAULT_MAX_CONNECTIONS_PER_SOURCE } from '../../lib/hbone/server.ts';
import { clip, LogBudget, type Logger, REFUSAL_LOG_PER_SECOND } from '../../lib/log.ts';
import { exportedPodsOf, parseClusterExport, podTarget, waypointGuardRefusal, type ExportedPods } from '../../lib/model/federation.ts';
import { readExport } from '../../lib/federation-read.ts';
import { waypointAddresses } from '../../lib/model/mesh.ts';
import { PORTS } from '../../lib/defaults.ts';
import { KeyedCount } from '../../lib/keyed-count.ts';
import { parseWorkloadId } from '../../lib/identity/spiffe.ts';

export interface EastWestOptions {
  /** The gateway's identity (leaf + chain), its key, and the trust bundle (the shared root); setTls() replaces it. */
  tls: GatewayTls;
  /** Trust domains whose workload identities may open tunnels (the mesh's, then its aliases). */
  trustDomains: readonly string[];
  /** `https://<ip>:<port>` of this cluster's controller federation listener. */
  controllerUrl: string;
  /** Which identity the controller must present. */
  controllerId: string;
  pollMs?: number;
  /** How long one read of the controller's export may take in all (DEFAULT_EXPORT_READ_DEADLINE_MS). */
  fetchDeadlineMs?: number;
  connectTimeoutMs?: number;
  /** Tunnels one caller (its identity from one address) may hold open or opening through the gateway (DEFAULT_MAX_TUNNELS_PER_CALLER). */
  maxTunnelsPerPeer?: number;
  /** Tunnels all callers may hold open or opening to one upstream, a node's agent or a waypoint replica (DEFAULT_MAX_TUNNELS_PER_UPSTREAM). */
  maxTunnelsPerUpstream?: number;
  /**
   * Tunnels to one upstream kept for the tenants under their fair share there, and of those, a
   * newcomer's part for a tenant not calling it yet (DEFAULT_UPSTREAM_RESERVE; see #admit).
   */
  upstreamReserve?: number;
  /** The node agents' port for the sessions the gateway carries; default PORTS.hboneGateway (tests move it). */
  agentPort?: number;
  log: Logger;
  registry?: Registry;
}

export interface GatewayTls { key: string; cert: string; ca: readonly string[] }

/**
 * Tunnels one caller (a workload identity from one address: one node's agent or waypoint) may hold
 * through the gateway at once. Callers pool their inner sessions (one outer tunnel per destination
 * agent or waypoint and identity), so a caller needs about one per destination node; without a
 * bound, one workload holding any mesh certificate could open 1,000 streams on each of 1,024
 * sessions and have the gateway hold an upstream socket for each, for every other caller's cost.
 * Past it a CONNECT is refused at once (503, `too-many-tunnels`).
 */
export const DEFAULT_MAX_TUNNELS_PER_CALLER = 4096;

/**
 * Tunnels all callers may hold open or opening to one upstream (a node's agent, at its gateway
 * port, or a waypoint replica, at its HBONE port), each its own connection there. Every such
 * connection comes from the gateway's address, which the upstream lets hold what any source holds
 * (the HBONE server's DEFAULT_MAX_CONNECTIONS_PER_SOURCE, 1,024: the agent's gateway port is open
 * to anyone who reaches the node, and neither knows an address of the gateway's to lift it for):
 * three quarters of it, so that the gateway refuses, counts and names the caller past it, and the
 * upstream never refuses the gateway's address before TLS. Past it a CONNECT is refused at once
 * (503, `too-many-to-upstream`). A connect waiting for the upstream to answer holds its place too,
 * so this also bounds the sockets callers can pile up behind an upstream that does not answer
 * (as the agent bounds connects to a pod, agent/src/delivery.ts; Envoy's circuit breaker
 * max_pending_requests), each refused at once instead of held for the connect timeout.
 */
export const DEFAULT_MAX_TUNNELS_PER_UPSTREAM = (DEFAULT_MAX_CONNECTIONS_PER_SOURCE * 3) / 4;

/**
 * Tunnels to one upstream that a tenant at its fair share there may not take: kept for the tenants
 * under theirs, and a part of it for one not calling it yet (#admit). A sixteenth of
 * DEFAULT_MAX_TUNNELS_PER_UPSTREAM (48).
 */
const DEFAULT_UPSTREAM_RESERVE = DEFAULT_MAX_TUNNELS_PER_UPSTREAM / 16;

/**
 * The tenant a caller's tunnels count against at an upstream (#admit): its identity's trust domain
 * and namespace. A tenant mints identities at will (a ServiceAccount is a namespace's to create)
 * and its pods call from as many addresses as it has nodes, so neither is a unit it cannot
 * multiply; a namespace is what a cluster's operator grants, and the unit of Istio's multi-cluster
 * namespace sameness. An identity that is no workload's (the server admits none) is its own.
 */
function tenantOf(spiffeId: string | undefined): string {
  if (spiffeId === undefined) return '';
  try {
    const id = parseWorkloadId(spiffeId);
    return `${id.trustDomain}/ns/${id.namespace}`;
  } catch {
    return spiffeId;
  }
}

/** Why a tunnel was refused; stable strings (metric labels). */
export type EastWestRefusal = 'unknown-endpoint' | 'not-enrolled' | 'not-service-port' | 'behind-waypoint' | 'not-hbone-port' | 'no-config' | 'upstream-unreachable' | 'too-many-to-upstream' | 'over-fair-share';

export class EastWestGateway {
  readonly #o: EastWestOptions;
  readonly #server: HboneServer;
  #tls: GatewayTls;
  /** Enrolled pod IP → its node agent's address, from the controller's export. */
  #nodeOf = new Map<string, string>();
  #notEnrolled = new Set<string>();
  /**
   * The pods' ports the exported Services send to, and those reached only through a waypoint
   * (exportedPodsOf): only those waypoints' identities are carried there (anyone else would step
   * around their L7 policy); callers of their Services go to the waypoint instead.
   */
  #pods: ExportedPods = { exported: new Set(), guards: new Map() };
  /** A ready waypoint replica's address → its HBONE port, from the controller's export. */
  #waypointPort = new Map<string, number>();
  /**
   * `host:port` of an upstream → the tunnels all callers hold open or opening there, and each
   * tenant's (tenantOf) of them; an upstream is gone once none is held there (#admit).
   */
  readonly #atUpstream = new Map<string, { all: number; byTenant: KeyedCount }>();
  /** Each tunnel open, by its upstream socket: the CONNECT that opened it (#rejudge). */
  readonly #open = new Map<net.Socket, HboneConnectRequest>();
  #configured = false;
  /**
   * The export applied last (#refresh), so that the same export is not applied again: its ETag
   * (`etag`), which the next read sends back (If-None-Match: a 304 transfers, hashes and parses
   * nothing), or, from a controller that sends none (an older one), its text's SHA-256 (`digest`).
   */
  #lastExport: { etag: string } | { digest: string } | undefined;
  /** Bumped at each export applied (#refresh): a tunnel judged by an older one is judged again once connected (#connect). */
  #generation = 0;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  readonly #m?: { tunnels: Counter; refused: Counter; bytes: Counter; endpoints: Gauge };
  readonly #refusalLog: LogBudget;

  constructor(o: EastWestOptions) {
    this.#o = o;
    this.#tls = o.tls;
    this.#refusalLog = new LogBudget(REFUSAL_LOG_PER_SECOND, (count) =>
      o.log.warn('tunnel refusals not logged (rate limit; every one is counted in weft_eastwest_refused_total)', { count, perSecond: REFUSAL_LOG_PER_SECOND }));
    if (o.registry) {
      const registers = [o.registry];
      this.#m = {
        tunnels: new Counter({ name: 'weft_eastwest_tunnels_total', help: 'Outer tunnels piped to a node agent or a waypoint', registers }),
        refused: new Counter({ name: 'weft_eastwest_refused_total', help: 'Outer tunnels and sessions refused, by reason', labelNames: ['reason'], registers }),
        bytes: new Counter({ name: 'weft_eastwest_bytes_total', help: 'Bytes piped (ciphertext of inner tunnels), by direction', labelNames: ['direction'], registers }),
        endpoints: new Gauge({ name: 'weft_eastwest_endpoints', help: 'Enrolled endpoints of this cluster the gateway can reach', registers }),
      };
    }
    this.#server = new HboneServer({
      tls: { key: o.tls.key, cert: o.tls.cert, ca: [...o.tls.ca] },
      trustDomains: o.trustDomains,
      // Counted by the server over the caller's every session (`too-many-tunnels`, 503 at once).
      maxTunnelsPerPeer: o.maxTunnelsPerPeer ?? DEFAULT_MAX_TUNNELS_PER_CALLER,
      handler: (req) => this.#connect(req),
      // A refusal the handler decided (#refuse) was counted and logged there, by its own reason.
      onRefusal: (r: HboneRefusal) => {
        if (r.kind !== 'denied' && r.kind !== 'upstream-failed' && r.kind !== 'overloaded') this.#refused(r.kind, r.reason, r.peer?.spiffeId, r.peer?.address, r.authority);
      },
      onTunnelClosed: (c) => {
        this.#m?.bytes.inc({ direction: 'inbound' }, c.bytesAtoB);
        this.#m?.bytes.inc({ direction: 'outbound' }, c.bytesBtoA);
      },
      onSessionError: (e) => this.#o.log.warn('HBONE session ended on an error, with every tunnel on it', {
        peer: e.peer.spiffeId, address: e.peer.address, error: e.error, code: e.code, tunnels: e.streams,
      }),
    });
    this.#o.log.info('HBONE memory budget', { ...this.#server.memoryBudget });
  }

  /** A renewed certificate or new roots: new sessions and the next export read use them; open ones carry on. */
  setTls(tls: GatewayTls): void {
    this.#tls = tls;
    this.#server.setTls({ key: tls.key, cert: tls.cert, ca: [...tls.ca] });
  }

  get endpoints(): number {
    return this.#nodeOf.size;
  }

  /** Resolves with the bound port. */
  async listen(port: number, host: string): Promise<number> {
    await this.#refresh().catch((e: Error) => this.#o.log.warn('controller export not read yet', { error: e.message }));
    this.#schedule();
    return (await this.#server.listen(port, host)).port;
  }

  async close(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    await this.#server.close(1_000);
  }

  #refuse(reason: EastWestRefusal, req: HboneConnectRequest, status: number, detail: string): HboneConnectDecision {
    this.#refused(reason, detail, req.peer.spiffeId, req.peer.address, req.authority);
    return { status, reason: detail, kind: reason === 'upstream-unreachable' ? 'upstream-failed' : reason === 'too-many-to-upstream' || reason === 'over-fair-share' ? 'overloaded' : 'denied' };
  }

  /** Counts every refusal; logs it, cut, within the budget. */
  #refused(reason: string, detail: string, peer: string | undefined, address: string | undefined, authority: string | undefined): void {
    this.#m?.refused.inc({ reason });
    if (!this.#refusalLog.take()) return;
    this.#o.log.warn('tunnel refused', { reason, detail: clip(detail), peer, address, authority: clip(authority) });
  }

  /**
   * Where the gateway carries `peer` to port `port` of `ip` by the export it read last: the
   * upstream, or why not. Asked of each CONNECT, and of each tunnel open at every new export
   * (#rejudge).
   */
  #route(ip: string, port: number, peer: string | undefined): { refused: EastWestRefusal; status: number; detail: string } | { host: string; port: number; what: string } {
    const node = this.#nodeOf.get(ip);
    const wpPort = node ? undefined : this.#waypointPort.get(ip);
    if (!node && wpPort === undefined) {
      // Not an open proxy: only enrolled workloads of this cluster, through their own agent, and
      // its waypoints' HBONE ports.
      if (this.#notEnrolled.has(ip)) return { refused: 'not-enrolled', status: 403, detail: `${ip} is not enrolled in the mesh; the gateway carries only mesh (HBONE) traffic` };
      return { refused: 'unknown-endpoint', status: 403, detail: `${ip} is neither an endpoint nor a waypoint of this cluster` };
    }
    const target = podTarget(ip, port);
    if (node && !this.#pods.exported.has(target)) {
      return { refused: 'not-service-port', status: 403, detail: `${target}: no Service of this cluster sends to port ${port} of ${ip}; the gateway carries callers to Service ports only` };
    }
    const via = node ? this.#pods.guards.get(target) : undefined;
    if (via && !via.ids.has(peer ?? '')) return { refused: 'behind-waypoint', status: 403, detail: waypointGuardRefusal(ip, port, via, 'the gateway') };
    if (wpPort !== undefined && port !== wpPort) return { refused: 'not-hbone-port', status: 403, detail: `${ip} is a waypoint of this cluster; the gateway carries only HBONE to its port ${wpPort}, not ${port}` };
    return node ? { host: node, port: this.#o.agentPort ?? PORTS.hboneGateway, what: `the node agent of ${ip}` } : { host: ip, port: wpPort!, what: 'the waypoint' };
  }

  async #connect(req: HboneConnectRequest): Promise<HboneConnectDecision> {
    if (!this.#configured) return this.#refuse('no-config', req, 503, 'the gateway has not read its cluster\'s endpoints yet');
    const route = this.#route(req.target.host, req.target.port, req.peer.spiffeId);
    if ('refused' in route) return this.#refuse(route.refused, req, route.status, route.detail);
    const { host, port, what } = route;
    const key = `${host}:${port}`;
    const tenant = tenantOf(req.peer.spiffeId);
    const at = this.#atUpstream.get(key) ?? { all: 0, byTenant: new KeyedCount() };
    const refusal = this.#admit(tenant, at, `${what} (${key})`);
    if (refusal) return this.#refuse(refusal.reason, req, 503, refusal.detail);
    this.#atUpstream.set(key, at);
    at.all++;
    at.byTenant.take(tenant);
    const release = (): void => {
      at.byTenant.release(tenant);
      if (--at.all === 0) this.#atUpstream.delete(key);
    };
    const judgedBy = this.#generation;
    try {
      const upstream = await connectTcp(host, port, this.#o.connectTimeoutMs ?? 5_000, req.signal);
      // A new export came while it connected: #rejudge did not see it, so it is judged here.
      const now = judgedBy === this.#generation ? route : this.#route(req.target.host, req.target.port, req.peer.spiffeId);
      if ('refused' in now) {
        upstream.destroy();
        release();
        return this.#refuse(now.refused, req, now.status, now.detail);
      }
      this.#m?.tunnels.inc();
      this.#open.set(upstream, req);
      upstream.once('close', () => {
        release();
        this.#open.delete(upstream);
      });
      return { upstream };
    } catch (e) {
      release();
      return this.#refuse('upstream-unreachable', req, 503, `${what} (${host}:${port}) did not answer: ${(e as Error).message}`);
    }
  }

  /**
   * Whether one more tunnel of `tenant` (tenantOf) to the upstream whose tunnels `at` counts fits,
   * or why not. All callers together hold at most maxTunnelsPerUpstream there
   * (`too-many-to-upstream`: the upstream's per-source cap is the gateway's whole share of it).
   * Within that any tenant takes what is free while more than the reserve (upstreamReserve, at
   * most its fair share: the bound split evenly among the tenants there and one more, the next to
   * come) is left. Of the reserve, a tenant with no tunnel there yet takes any place free (the
   * newcomer it is kept for); one under its share takes more only while more than a newcomer's part
   * of it (the reserve split among the tenants there and one more, at least one) is left, and one at
   * or above its share nothing (`over-fair-share`). So a tenant alone may take nearly all of it, a
   * second under its share never the last of the reserve, and one that comes later is admitted
   * while those there are refused, until the tunnels
   * closing bring each to its share. Open tunnels are never closed for it: Envoy's circuit breakers
   * refuse new connections and requests past their bound and leave established ones be
   * (https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/circuit_breaking),
   * and a caller's tunnel carries its pooled session's every connection.
   */
  #admit(tenant: string, at: { all: number; byTenant: KeyedCount }, what: string): { reason: EastWestRefusal; detail: string } | undefined {
    const { all } = at;
    const max = this.#o.maxTunnelsPerUpstream ?? DEFAULT_MAX_TUNNELS_PER_UPSTREAM;
    if (all >= max) {
      return { reason: 'too-many-to-upstream', detail: `the gateway holds ${all} tunnels to ${what} from all callers (it allows at most ${max} to one upstream, below its ${DEFAULT_MAX_CONNECTIONS_PER_SOURCE} from one source)` };
    }
    const held = at.byTenant.get(tenant);
    const tenants = at.byTenant.size + (held === 0 ? 1 : 0);
    const share = Math.max(1, Math.floor(max / (tenants + 1)));
    const reserve = Math.min(share, this.#o.upstreamReserve ?? DEFAULT_UPSTREAM_RESERVE);
    const left = max - all;
    // Outside the reserve, or the tenant's first tunnel there: the newcomer the reserve is kept for.
    if (left > reserve || held === 0) return undefined;
    if (held >= share) {
      return { reason: 'over-fair-share', detail: `${tenant} holds ${held} tunnels to ${what}, at or above its fair share there (${share}: ${max} among the ${tenants} tenants calling it and one more), and the ${left} left are kept for tenants under theirs` };
    }
    const newcomers = Math.max(1, Math.floor(reserve / (tenants + 1)));
    if (left <= newcomers) {
      return { reason: 'over-fair-share', detail: `${tenant} holds ${held} tunnels to ${what}, under its fair share there (${share}), and the ${left} left are kept for a tenant not calling it yet (a newcomer's part of the reserve of ${reserve}: ${reserve} among the ${tenants} tenants calling it and one more)` };
    }
    return undefined;
  }

  #schedule(): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      void this.#refresh().catch((e: Error) => this.#o.log.warn('controller export not read; keeping the last one', { error: e.message })).finally(() => this.#schedule());
    }, this.#o.pollMs ?? 1_000);
    this.#timer.unref();
  }

  async #refresh(): Promise<void> {
    const asked = this.#configured && this.#lastExport && 'etag' in this.#lastExport ? this.#lastExport.etag : undefined;
    const read = await readExport(this.#o.controllerUrl, {
      tls: this.#tls,
      checkPeer: (id) => (id === this.#o.controllerId ? undefined : new Error(`${this.#o.controllerUrl} is not the controller ${this.#o.controllerId}`)),
      ...(this.#o.fetchDeadlineMs !== undefined ? { deadlineMs: this.#o.fetchDeadlineMs } : {}),
      ...(asked !== undefined ? { ifNoneMatch: asked } : {}),
    });
    // The same export as last time: nothing to apply, no tunnel to judge again.
    if (read === 'unchanged') return;
    const { text } = read;
    const seen = read.etag !== undefined ? { etag: read.etag } : { digest: createHash('sha256').update(text).digest('base64') };
    const last = this.#lastExport;
    const same = last !== undefined && ('etag' in seen ? 'etag' in last && last.etag === seen.etag : 'digest' in last && last.digest === seen.digest);
    if (this.#configured && same) return;
    const exp = parseClusterExport(JSON.parse(text));
    const nodeOf = new Map<string, string>();
    const notEnrolled = new Set<string>();
    for (const s of exp.services) {
      for (const e of s.endpoints) {
        if (e.enrolled && e.nodeIp) nodeOf.set(e.ip, e.nodeIp);
        else notEnrolled.add(e.ip);
      }
    }
    // A waypoint missing from the export or invalid, or one the object may not use, admits no one:
    // fail closed (the same lookup as the agent's gateway port, exportedPodsOf).
    const pods = exportedPodsOf(exp);
    const waypointPort = new Map<string, number>();
    for (const w of exp.waypoints ?? []) {
      if (!w.ready || w.invalid) continue;
      for (const a of waypointAddresses(w)) waypointPort.set(a, w.port);
    }
    this.#nodeOf = nodeOf;
    this.#notEnrolled = notEnrolled;
    this.#pods = pods;
    this.#waypointPort = waypointPort;
    this.#configured = true;
    this.#lastExport = seen;
    this.#generation++;
    this.#m?.endpoints.set(nodeOf.size);
    this.#rejudge();
  }

  /**
   * Every tunnel open is judged again by the export just read, as at its CONNECT (#route): one the
   * gateway would no longer carry (its Service no longer exported or no longer sending to that
   * port, its pod now behind a waypoint, its endpoint or waypoint gone) is closed, counted in
   * weft_eastwest_refused_total under the reason a CONNECT would be refused for, and logged, as
   * Istio's ztunnel closes the connections a policy change no longer allows
   * (src/proxy/connection_manager.rs) and the agent its deliveries (LocalDelivery.reauthorize, which
   * judges the inner CONNECTs this tunnel carries, at the agent's gateway port, by the same rules).
   * Returns how many were closed.
   */
  #rejudge(): number {
    let closed = 0;
    for (const [upstream, req] of this.#open) {
      const route = this.#route(req.target.host, req.target.port, req.peer.spiffeId);
      if (!('refused' in route)) continue;
      this.#open.delete(upstream);
      closed++;
      this.#m?.refused.inc({ reason: route.refused });
      if (this.#refusalLog.take()) {
        this.#o.log.warn('open tunnel closed: the gateway no longer carries it', { reason: route.refused, detail: clip(route.detail), peer: req.peer.spiffeId, address: req.peer.address, authority: clip(req.authority) });
      }
      upstream.destroy();
    }
    return closed;
  }
}

function connectTcp(host: string, port: number, timeoutMs: number, signal: AbortSignal): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    // Carried by the tunnel pipe: reads through the read pool (lib/hbone/read-pool.ts).
    const s: net.Socket = net.connect({ host, port, noDelay: true, onread: pooledReads(() => s) });
    const timer = setTimeout(() => s.destroy(new Error(`no connection within ${timeoutMs} ms`)), timeoutMs);
    const onAbort = () => s.destroy(new Error('the caller went away'));
    signal.addEventListener('abort', onAbort, { once: true });
    s.once('connect', () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      resolve(s);
    });
    s.once('error', (e) => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      reject(e);
    });
  });
}
