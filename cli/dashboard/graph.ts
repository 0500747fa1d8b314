// The dashboard's service graph, as a pure function of what the mesh reports: two scrapes of the
// agents' and waypoints' Istio metrics (the rates between them), the recent flows (denials and
// their reasons), and the configuration (which policies apply to each destination). The same shape
// comes out whether the metrics were scraped directly or asked of Prometheus (see data.ts).
import { delta, histogramQuantile, sumBy, type Sample } from '../local/prom.ts';
import { policySelectsWorkload, type AuthorizationPolicy, type Service, type Workload } from '../../lib/model/mesh.ts';
import type { Flow } from '../flows.ts';

export interface GraphNode {
  id: string;
  kind: 'workload' | 'service' | 'waypoint';
  namespace: string;
  name: string;
}

export interface EdgePolicy {
  name: string;
  action: string;
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
  /** The waypoint the traffic passed, `namespace/name`. */
  waypoint?: string;
  /** Denied flows in the window (newest first, at most 20 kept). */
  denied: number;
  denials: EdgeDenial[];
  policies: EdgePolicy[];
}

export interface MeshGraph {
  nodes: GraphNode[];
  edges: GraphEdge[];
  windowSeconds: number;
}

export interface GraphConfig {
  workloads: Workload[];
  services: Service[];
  policies: AuthorizationPolicy[];
}

export interface GraphInput {
  before: Sample[];
  after: Sample[];
  seconds: number;
  flows: Flow[];
  config: GraphConfig;
}

const SEP = '\u0000';
const SECURE = new Set(['mutual_tls', 'node_local']);

/** `echo.demo.svc.cluster.local` (or `echo.demo`) → `demo/echo`. */
export function serviceKeyOfHost(host: string | undefined): string | undefined {
  if (!host || host === 'unknown') return undefined;
  const parts = host.split('.');
  return parts.length >= 2 ? `${parts[1]}/${parts[0]}` : undefined;
}

export function buildGraph(inp: GraphInput): MeshGraph {
  const secs = Math.max(inp.seconds, 0.001);
  const nodes = new Map<string, GraphNode>();
  const edges = new Map<string, GraphEdge>();
  const svcByVip = new Map<string, Service>();
  for (const s of inp.config.services) for (const v of s.vips) svcByVip.set(v, s);
  const wlByIp = new Map(inp.config.workloads.map((w) => [w.ip, w]));

  const node = (kind: GraphNode['kind'], namespace: string, name: string): string => {
    const id = `${kind}:${namespace}/${name}`;
    if (!nodes.has(id)) nodes.set(id, { id, kind, namespace, name });
    return id;
  };
  const edge = (src: string, dst: string): GraphEdge => {
    const id = `${src}->${dst}`;
    let e = edges.get(id);
    if (!e) {
      e = { id, source: src, target: dst, protocol: 'tcp', denied: 0, denials: [], policies: [] };
      edges.set(id, e);
    }
    return e;
  };
  const target = (svcKey: string | undefined, workloadNs?: string, workloadName?: string): string | undefined => {
    if (svcKey) {
      const [ns, name] = svcKey.split('/') as [string, string];
      return node('service', ns, name);
    }
    return workloadNs && workloadName ? node('workload', workloadNs, workloadName) : undefined;
  };

  // TCP, as the source agents saw it.
  const tcpBy = ['source_workload_namespace', 'source_workload', 'destination_service', 'connection_security_policy'];
  const src = (l: Record<string, string>) => l.reporter === 'source';
  const opened = delta(sumBy(inp.before, 'istio_tcp_connections_opened_total', tcpBy, src), sumBy(inp.after, 'istio_tcp_connections_opened_total', tcpBy, src));
  const bytes = new Map<string, number>();
  for (const name of ['istio_tcp_sent_bytes_total', 'istio_tcp_received_bytes_total']) {
    for (const [k, v] of delta(sumBy(inp.before, name, tcpBy, src), sumBy(inp.after, name, tcpBy, src))) bytes.set(k, (bytes.get(k) ?? 0) + v);
  }
  // Any series seen (even with no new connection in the window) keeps its edge on the graph.
  for (const k of new Set([...sumBy(inp.after, 'istio_tcp_connections_opened_total', tcpBy, src).keys()])) {
    const [ns, wl, host, sec] = k.split(SEP) as [string, string, string, string];
    const dst = target(serviceKeyOfHost(host));
    if (!ns || !wl || ns === 'unknown' || !dst) continue;
    const e = edge(node('workload', ns, wl), dst);
    e.connectionRate = (e.connectionRate ?? 0) + (opened.get(k) ?? 0) / secs;
    e.bytesRate = (e.bytesRate ?? 0) + (bytes.get(k) ?? 0) / secs;
    if ((opened.get(k) ?? 0) > 0 || e.security === undefined) e.security = e.security === 'none' ? 'none' : SECURE.has(sec) ? 'mutual_tls' : 'none';
  }

  // HTTP, as the waypoints saw it.
  const reqBy = ['source_workload_namespace', 'source_workload', 'destination_service'];
  const reqs = delta(sumBy(inp.before, 'istio_requests_total', reqBy), sumBy(inp.after, 'istio_requests_total', reqBy));
  const isErr = (l: Record<string, string>) => Number(l.response_code) >= 500 || l.response_code === '0';
  const errs = delta(sumBy(inp.before, 'istio_requests_total', reqBy, isErr), sumBy(inp.after, 'istio_requests_total', reqBy, isErr));
  const bucketBy = [...reqBy, 'le'];
  const buckets = delta(sumBy(inp.before, 'istio_request_duration_milliseconds_bucket', bucketBy), sumBy(inp.after, 'istio_request_duration_milliseconds_bucket', bucketBy));
  const waypointOf = new Map<string, string>();
  for (const s of inp.config.services) if (s.waypoint) waypointOf.set(`${s.namespace}/${s.name}`, `${s.waypoint.namespace}/${s.waypoint.name}`);
  for (const k of sumBy(inp.after, 'istio_requests_total', reqBy).keys()) {
    const [ns, wl, host] = k.split(SEP) as [string, string, string];
    const svcKey = serviceKeyOfHost(host);
    const dst = target(svcKey);
    if (!ns || !wl || ns === 'unknown' || !dst) continue;
    const e = edge(node('workload', ns, wl), dst);
    e.protocol = 'http';
    const n = reqs.get(k) ?? 0;
    e.requestRate = (e.requestRate ?? 0) + n / secs;
    e.errorRate = n > 0 ? (errs.get(k) ?? 0) / n : 0;
    const hist = new Map<number, number>();
    for (const [bk, c] of buckets) {
      const parts = bk.split(SEP);
      if (parts.slice(0, 3).join(SEP) === k) hist.set(parts[3] === '+Inf' ? Infinity : Number(parts[3]), c);
    }
    const p99 = histogramQuantile(0.99, hist);
    if (p99 !== undefined) e.p99Ms = p99;
    e.security ??= 'mutual_tls';
    const wp = svcKey ? waypointOf.get(svcKey) : undefined;
    if (wp) e.waypoint = wp;
  }

  // Denials, from the flows: the source agent names the address dialled, the destination agent
  // the workload and the caller's identity, the waypoint the service.
  for (const f of inp.flows) {
    if (f.verdict !== 'denied') continue;
    const srcWl = f.source.address ? wlByIp.get(f.source.address.replace(/:\d+$/, '')) : undefined;
    const sNs = srcWl?.namespace ?? f.source.namespace;
    // Metrics name the controlling workload (a Deployment), logs the pod: nodes use the former.
    const sName = (srcWl?.workloadName || srcWl?.name) ?? f.source.workload;
    if (!sNs || !sName) continue;
    const dIp = f.destination.address?.replace(/:\d+$/, '');
    const viaVip = dIp ? svcByVip.get(dIp) : undefined;
    const dWl = f.destination.workload && f.destination.namespace
      ? inp.config.workloads.find((w) => (w.name === f.destination.workload || w.workloadName === f.destination.workload) && w.namespace === f.destination.namespace)
      : dIp ? wlByIp.get(dIp) : undefined;
    const svcKey = serviceKeyOfHost(f.destination.service) ?? (viaVip ? `${viaVip.namespace}/${viaVip.name}` : dWl?.services[0]);
    const dst = target(svcKey, dWl?.namespace ?? f.destination.namespace, (dWl?.workloadName || dWl?.name) ?? f.destination.workload);
    if (!dst) continue;
    const e = edge(node('workload', sNs, sName), dst);
    e.denied++;
    e.denials.unshift({ time: f.time, reporter: f.reporter, ...(f.reason ? { reason: f.reason } : {}), ...(f.policy ? { policy: f.policy } : {}) });
    if (e.denials.length > 20) e.denials.length = 20;
  }

  // Waypoints as nodes of their own, and the policies that apply to each destination.
  for (const e of edges.values()) {
    if (e.waypoint) {
      const [ns, name] = e.waypoint.split('/') as [string, string];
      node('waypoint', ns, name);
    }
    const t = nodes.get(e.target)!;
    const svcKey = t.kind === 'service' ? `${t.namespace}/${t.name}` : undefined;
    const backends = inp.config.workloads.filter((w) => (svcKey ? w.services.includes(svcKey) : w.namespace === t.namespace && (w.workloadName || w.name) === t.name));
    const seen = new Set<string>();
    for (const p of inp.config.policies) {
      const key = `${p.namespace}/${p.name}`;
      if (seen.has(key)) continue;
      const applies = p.scope === 'service' ? Boolean(svcKey && p.targetServices?.includes(svcKey)) : backends.some((w) => policySelectsWorkload(p, w));
      if (!applies) continue;
      seen.add(key);
      e.policies.push({ name: key, action: p.action });
    }
  }
  return {
    nodes: [...nodes.values()].sort((a, b) => a.id.localeCompare(b.id)),
    edges: [...edges.values()].sort((a, b) => a.id.localeCompare(b.id)),
    windowSeconds: inp.seconds,
  };
}
