// The dashboard's service graph, as a pure function of what the mesh reports: two scrapes of the
// agents' and waypoints' Istio metrics (the rates between them), the recent flows (denials and
// their reasons), and the configuration (which policies apply to each destination). The same shape
// comes out whether the metrics were scraped directly or asked of Prometheus (see data.ts).
import { delta, histogramQuantile, sumBy, type Sample } from '../local/prom.ts';
import { boundWaypoint, policyAction, policySelectsWorkload, type AuthorizationPolicy, type Service, type Workload } from '../../lib/model/mesh.ts';
import { parseWorkloadId } from '../../lib/identity/spiffe.ts';
import type { Flow } from '../flows.ts';

export interface GraphNode {
  /** `<kind>:<cluster>/<namespace>/<name>`: the same service in two clusters is two nodes. */
  id: string;
  /** `gateway`: a network's east-west gateway, on the path of traffic into its cluster. */
  kind: 'workload' | 'service' | 'waypoint' | 'gateway';
  /** Cluster ID (`Kubernetes` unless the controller was given another); `unknown` when no one said. */
  cluster: string;
  namespace: string;
  name: string;
}

export interface EdgePolicy {
  name: string;
  action: string;
  /** Istio's istio.io/dry-run: judged in shadow, never enforced. */
  dryRun?: true;
}

export interface EdgeDenial {
  time: string;
  reporter: string;
  reason?: string;
  policy?: string;
}

export interface GraphEdge {
  id: string;
  source: string;
  target: string;
  protocol: 'http' | 'tcp';
  /** HTTP: requests per second, share of 5xx (and 0), p99 in ms; from the waypoint. */
  requestRate?: number;
  errorRate?: number;
  p99Ms?: number;
  /** TCP: connections per second and bytes per second (both directions), from the source agent. */
  connectionRate?: number;
  bytesRate?: number;
  /** `mutual_tls` when every connection was authenticated, `none` when any was plaintext. */
  security?: string;
  /** Source and target are in different clusters. */
  crossCluster: boolean;
  /**
   * The nodes the traffic passes between source and target, in order: the waypoint (node id) and,
   * into another network, that network's east-west gateway.
   */
  via: string[];
  /** Denied flows in the window (newest first, at most 20 kept). */
  denied: number;
  denials: EdgeDenial[];
  policies: EdgePolicy[];
}

export interface MeshGraph {
  nodes: GraphNode[];
  edges: GraphEdge[];
  /** Every cluster with a node, sorted. */
  clusters: string[];
  windowSeconds: number;
}

/**
 * Multi-cluster: a service or policy as one cluster's components hold it. Absent: the only cluster
 * (a single-cluster mesh). Workloads carry their own `cluster`.
 */
export type InCluster<T> = T & { cluster?: string };

export interface GraphConfig {
  workloads: Workload[];
  services: Array<InCluster<Service>>;
  policies: Array<InCluster<AuthorizationPolicy>>;
}

export interface GraphInput {
  before: Sample[];
  after: Sample[];
  seconds: number;
  /** Flows; `cluster` is the reporter's (absent: the only cluster). */
  flows: Array<InCluster<Flow>>;
  config: GraphConfig;
}

const SEP = '\u0000';
const SECURE = new Set(['mutual_tls', 'node_local']);
const UNKNOWN = 'unknown';

/** `echo.demo.svc.cluster.local` (or `echo.demo`) → `demo/echo`. */
export function serviceKeyOfHost(host: string | undefined): string | undefined {
  if (!host || host === UNKNOWN) return undefined;
  const parts = host.split('.');
  return parts.length >= 2 ? `${parts[1]}/${parts[0]}` : undefined;
}

/** A graph node's id. */
export function nodeId(kind: GraphNode['kind'], cluster: string, namespace: string, name: string): string {
  return `${kind}:${cluster}/${namespace}/${name}`;
}

export function buildGraph(inp: GraphInput): MeshGraph {
  const secs = Math.max(inp.seconds, 0.001);
  const nodes = new Map<string, GraphNode>();
  const edges = new Map<string, GraphEdge>();
  const { workloads, services, policies } = inp.config;
  const known = new Set([...workloads.map((w) => w.cluster), ...services.flatMap((s) => (s.cluster ? [s.cluster] : []))].filter((c) => c && c !== UNKNOWN));
  const only = known.size === 1 ? [...known][0]! : undefined;
  // Untagged services and policies are the one cluster's the components were read from (metrics
  // may still name other clusters' services: those get no policies or gateway from here).
  const inCluster = (x: { cluster?: string }, c: string) => (x.cluster ?? only ?? c) === c;
  const label = (v: string | undefined) => (v && v !== UNKNOWN ? v : undefined);
  const controller = (w: Workload) => w.workloadName || w.name;
  /** A workload's cluster: the one cluster that runs a workload by this name, else `hint`. */
  const clusterOfWorkload = (ns: string, name: string, hint?: string): string => {
    const found = new Set(workloads.filter((w) => w.namespace === ns && (controller(w) === name || w.name === name)).map((w) => w.cluster));
    return found.size === 1 ? [...found][0]! : hint ?? only ?? UNKNOWN;
  };
  /** The workload at an address, the reporter's cluster first (pod ranges may repeat across networks). */
  const workloadAt = (ip: string | undefined, c: string): Workload | undefined => {
    if (!ip) return undefined;
    const at = workloads.filter((w) => w.ip === ip);
    return at.find((w) => w.cluster === c) ?? at[0];
  };
  const serviceIn = (c: string, key: string) => services.find((s) => `${s.namespace}/${s.name}` === key && inCluster(s, c));

  const node = (kind: GraphNode['kind'], cluster: string, namespace: string, name: string): string => {
    const id = nodeId(kind, cluster, namespace, name);
    if (!nodes.has(id)) nodes.set(id, { id, kind, cluster, namespace, name });
    return id;
  };
  const edge = (src: string, dst: string): GraphEdge => {
    const id = `${src}->${dst}`;
    let e = edges.get(id);
    if (!e) {
      e = { id, source: src, target: dst, protocol: 'tcp', crossCluster: false, via: [], denied: 0, denials: [], policies: [] };
      edges.set(id, e);
    }
    return e;
  };
  const target = (cluster: string, svcKey: string | undefined, workloadNs?: string, workloadName?: string): string | undefined => {
    if (svcKey) {
      const [ns, name] = svcKey.split('/') as [string, string];
      return node('service', cluster, ns, name);
    }
    return workloadNs && workloadName ? node('workload', cluster, workloadNs, workloadName) : undefined;
  };
  /** The caller's node and the called service's, each in its cluster (as the labels name them). */
  const ends = (l: { ns: string; wl: string; host: string; sc: string; dc: string }) => {
    if (!l.ns || !l.wl || l.ns === UNKNOWN || l.wl === UNKNOWN) return undefined;
    const sCluster = label(l.sc) ?? clusterOfWorkload(l.ns, l.wl);
    // A service not yet resolved to an endpoint (no destination cluster): the caller's view of it.
    const dst = target(label(l.dc) ?? sCluster, serviceKeyOfHost(l.host));
    return dst ? { src: node('workload', sCluster, l.ns, l.wl), dst, sCluster } : undefined;
  };

  // TCP, as the source agents saw it.
  const tcpBy = ['source_workload_namespace', 'source_workload', 'destination_service', 'source_cluster', 'destination_cluster', 'connection_security_policy'];
  const src = (l: Record<string, string>) => l.reporter === 'source';
  const opened = delta(sumBy(inp.before, 'istio_tcp_connections_opened_total', tcpBy, src), sumBy(inp.after, 'istio_tcp_connections_opened_total', tcpBy, src));
  const bytes = new Map<string, number>();
  for (const name of ['istio_tcp_sent_bytes_total', 'istio_tcp_received_bytes_total']) {
    for (const [k, v] of delta(sumBy(inp.before, name, tcpBy, src), sumBy(inp.after, name, tcpBy, src))) bytes.set(k, (bytes.get(k) ?? 0) + v);
  }
  // Any series seen (even with no new connection in the window) keeps its edge on the graph.
  for (const k of new Set([...sumBy(inp.after, 'istio_tcp_connections_opened_total', tcpBy, src).keys()])) {
    const [ns, wl, host, sc, dc, sec] = k.split(SEP) as [string, string, string, string, string, string];
    const at = ends({ ns, wl, host, sc, dc });
    if (!at) continue;
    const e = edge(at.src, at.dst);
    e.connectionRate = (e.connectionRate ?? 0) + (opened.get(k) ?? 0) / secs;
    e.bytesRate = (e.bytesRate ?? 0) + (bytes.get(k) ?? 0) / secs;
    if ((opened.get(k) ?? 0) > 0 || e.security === undefined) e.security = e.security === 'none' ? 'none' : SECURE.has(sec) ? 'mutual_tls' : 'none';
  }

  // HTTP, as the waypoints saw it.
  const reqBy = ['source_workload_namespace', 'source_workload', 'destination_service', 'source_cluster', 'destination_cluster'];
  const reqs = delta(sumBy(inp.before, 'istio_requests_total', reqBy), sumBy(inp.after, 'istio_requests_total', reqBy));
  const isErr = (l: Record<string, string>) => Number(l.response_code) >= 500 || l.response_code === '0';
  const errs = delta(sumBy(inp.before, 'istio_requests_total', reqBy, isErr), sumBy(inp.after, 'istio_requests_total', reqBy, isErr));
  const bucketBy = [...reqBy, 'le'];
  const buckets = delta(sumBy(inp.before, 'istio_request_duration_milliseconds_bucket', bucketBy), sumBy(inp.after, 'istio_request_duration_milliseconds_bucket', bucketBy));
  /** Edge id → the waypoint node the requests passed. */
  const waypointOf = new Map<string, string>();
  for (const k of sumBy(inp.after, 'istio_requests_total', reqBy).keys()) {
    const [ns, wl, host, sc, dc] = k.split(SEP) as [string, string, string, string, string];
    const at = ends({ ns, wl, host, sc, dc });
    if (!at) continue;
    const e = edge(at.src, at.dst);
    e.protocol = 'http';
    const n = reqs.get(k) ?? 0;
    e.requestRate = (e.requestRate ?? 0) + n / secs;
    e.errorRate = n > 0 ? (errs.get(k) ?? 0) / n : 0;
    const hist = new Map<number, number>();
    for (const [bk, c] of buckets) {
      const parts = bk.split(SEP);
      if (parts.slice(0, reqBy.length).join(SEP) === k) hist.set(parts[reqBy.length] === '+Inf' ? Infinity : Number(parts[reqBy.length]), c);
    }
    const p99 = histogramQuantile(0.99, hist);
    if (p99 !== undefined) e.p99Ms = p99;
    e.security ??= 'mutual_tls';
    // The caller's cluster's waypoint for the service (its agent sends there), else the callee's.
    const t = nodes.get(at.dst)!;
    const svcKey = `${t.namespace}/${t.name}`;
    for (const c of [at.sCluster, t.cluster]) {
      const wp = boundWaypoint(serviceIn(c, svcKey)?.waypoint);
      if (wp) {
        waypointOf.set(e.id, node('waypoint', c, wp.namespace, wp.name));
        break;
      }
    }
  }

  // Denials, from the flows: the source agent names the address dialled, the destination agent
  // the workload and the caller's identity, the waypoint the service.
  for (const f of inp.flows) {
    if (f.verdict !== 'denied') continue;
    const rc = f.cluster ?? only ?? UNKNOWN;
    const srcWl = workloadAt(f.source.address?.replace(/:\d+$/, ''), rc);
    const sNs = srcWl?.namespace ?? f.source.namespace;
    // Metrics name the controlling workload (a Deployment), logs the pod: nodes use the former.
    const sName = (srcWl ? controller(srcWl) : undefined) ?? f.source.workload;
    if (!sNs || !sName) continue;
    // The reporter's word on the caller's cluster first: behind a gateway the address is the gateway's.
    const sCluster = label(f.source.cluster) ?? srcWl?.cluster ?? clusterOfWorkload(sNs, sName, rc);
    const dIp = f.destination.address?.replace(/:\d+$/, '');
    const viaVip = dIp ? services.find((s) => s.vips.includes(dIp) && inCluster(s, rc)) : undefined;
    const named = f.destination.workload && f.destination.namespace
      ? workloads.filter((w) => (w.name === f.destination.workload || w.workloadName === f.destination.workload) && w.namespace === f.destination.namespace)
      : undefined;
    const dWl = named ? named.find((w) => w.cluster === rc) ?? named[0] : workloadAt(dIp, rc);
    const svcKey = serviceKeyOfHost(f.destination.service) ?? (viaVip ? `${viaVip.namespace}/${viaVip.name}` : dWl?.services[0]);
    const dst = target(label(f.destination.cluster) ?? dWl?.cluster ?? rc, svcKey, dWl?.namespace ?? f.destination.namespace, (dWl ? controller(dWl) : undefined) ?? f.destination.workload);
    if (!dst) continue;
    const e = edge(node('workload', sCluster, sNs, sName), dst);
    e.denied++;
    const reporter = f.cluster ? `${f.reporter} in ${f.cluster}` : f.reporter;
    e.denials.unshift({ time: f.time, reporter, ...(f.reason ? { reason: f.reason } : {}), ...(f.policy ? { policy: f.policy } : {}) });
    if (e.denials.length > 20) e.denials.length = 20;
  }

  // What lies on each path (waypoint, east-west gateway), and the policies of the destination's cluster.
  for (const e of edges.values()) {
    const s = nodes.get(e.source)!;
    const t = nodes.get(e.target)!;
    const svcKey = t.kind === 'service' ? `${t.namespace}/${t.name}` : undefined;
    e.crossCluster = s.cluster !== t.cluster && s.cluster !== UNKNOWN && t.cluster !== UNKNOWN;
    const gw = e.crossCluster ? gatewayInto(s.cluster, t.cluster, svcKey) : undefined;
    const gwNode = gw ? node('gateway', t.cluster, gw.namespace, gw.name) : undefined;
    const wp = waypointOf.get(e.id);
    const wpFirst = wp !== undefined && nodes.get(wp)!.cluster === s.cluster;
    e.via = [...(wpFirst ? [wp] : []), ...(gwNode ? [gwNode] : []), ...(wp && !wpFirst ? [wp] : [])];
    const backends = workloads.filter((w) => w.cluster === t.cluster && (svcKey ? w.services.includes(svcKey) : w.namespace === t.namespace && controller(w) === t.name));
    const seen = new Set<string>();
    for (const p of policies) {
      const key = `${p.namespace}/${p.name}`;
      if (seen.has(key) || !inCluster(p, t.cluster)) continue;
      const applies = p.scope === 'service' ? Boolean(svcKey && p.targetServices?.includes(svcKey)) : backends.some((w) => policySelectsWorkload(p, w));
      if (!applies) continue;
      seen.add(key);
      e.policies.push({ name: key, action: policyAction(p), ...(p.dryRun ? { dryRun: true as const } : {}) });
    }
  }

  /**
   * The east-west gateway a caller in `from` reaches `to` through: what `from`'s components hold
   * for the service's endpoints in `to` (absent: the clusters share a network, no gateway).
   */
  function gatewayInto(from: string, to: string, svcKey: string | undefined): { namespace: string; name: string } | undefined {
    for (const s of services) {
      if (!inCluster(s, from) || (svcKey && `${s.namespace}/${s.name}` !== svcKey)) continue;
      const ep = s.endpoints.find((x) => (x.cluster ?? x.workload?.cluster) === to && x.gateway);
      if (!ep?.gateway) continue;
      try {
        const id = parseWorkloadId(ep.gateway.spiffeId);
        return { namespace: id.namespace, name: id.serviceAccount };
      } catch {
        return { namespace: UNKNOWN, name: `${ep.gateway.network} gateway` };
      }
    }
    return undefined;
  }

  const all = [...nodes.values()].sort((a, b) => a.id.localeCompare(b.id));
  return {
    nodes: all,
    edges: [...edges.values()].sort((a, b) => a.id.localeCompare(b.id)),
    clusters: [...new Set(all.map((n) => n.cluster))].sort(),
    windowSeconds: inp.seconds,
  };
}
