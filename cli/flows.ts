// Live flows for `weftctl tap` and `weftctl dashboard`: the agents' and waypoints' access-log
// entries, read from each one's admin `/flows` stream (lib/tap.ts) on either transport
// (cli/components.ts), turned into one shape, and filtered by namespace, workload and verdict.
import type { Component } from './components.ts';
import type { AgentConfig, Service, Workload } from '../lib/model/mesh.ts';

export type Verdict = 'allowed' | 'denied' | 'error';

/** One connection (agent) or request (waypoint), whoever reported it. */
export interface Flow {
  time: string;
  /** `agent node1` or `waypoint demo/waypoint`. */
  reporter: string;
  kind: 'tcp' | 'http';
  direction: string;
  /** `cluster`: the end's cluster, when the reporter knows it (multi-cluster). */
  source: { address?: string; namespace?: string; workload?: string; principal?: string; cluster?: string };
  destination: { address?: string; namespace?: string; workload?: string; service?: string; cluster?: string };
  verdict: Verdict;
  /** Why a flow was denied or failed (the policy, the refusal reason, the error). */
  reason?: string;
  policy?: string;
  security?: string;
  /** HTTP only. */
  method?: string;
  path?: string;
  status?: number;
  bytesSent?: number;
  bytesReceived?: number;
  durationMs?: number;
}

/** Where a flow stream comes from: a component's admin `/flows`, on either transport. */
export type FlowSource = Pick<Component, 'reporter' | 'stream'>;

/** The components that report flows: every agent and waypoint. */
export function flowSources(components: readonly Component[]): FlowSource[] {
  return components.filter((c) => c.role === 'agent' || c.role === 'waypoint');
}

type Entry = Record<string, unknown>;
const str = (e: Entry, ...keys: string[]): string | undefined => {
  for (const k of keys) {
    const v = e[k];
    if (typeof v === 'string' && v !== '' && v !== '-' && v !== 'unknown') return v;
  }
  return undefined;
};
const num = (e: Entry, ...keys: string[]): number | undefined => {
  for (const k of keys) {
    const v = e[k];
    if (typeof v === 'number' && Number.isFinite(v)) return v;
    if (typeof v === 'string' && v !== '' && Number.isFinite(Number(v))) return Number(v);
  }
  return undefined;
};

/** `spiffe://td/ns/<ns>/sa/<sa>` → its namespace and service account. */
function principalParts(p: string | undefined): { namespace?: string; serviceAccount?: string } {
  const m = p ? /\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(p) : null;
  return m ? { namespace: m[1]!, serviceAccount: m[2]! } : {};
}

/**
 * One access-log entry as a Flow; undefined for the stream's own lines (`hello`, `dropped`, `closed`) and
 * anything that is not an access entry. Reads the agent's keys (flat `src_workload` or ztunnel's
 * `src.workload`) and the waypoint's (Istio-style `response_code`, `source_principal`).
 */
export function toFlow(reporter: string, e: Entry): Flow | undefined {
  if (e.type === 'hello' || e.type === 'dropped' || e.type === 'closed') return undefined;
  const isWaypoint = reporter.startsWith('waypoint');
  const time = str(e, 'time', 'start_time', 'timestamp') ?? new Date().toISOString();
  if (isWaypoint) {
    const principal = str(e, 'source_principal', 'downstream_peer_principal');
    const pp = principalParts(principal);
    const status = num(e, 'response_code') ?? 0;
    const http = e.protocol !== 'TCP';
    const detail = str(e, 'detail', 'response_code_details');
    const denied = status === 403 || /denied|rbac/i.test(detail ?? '');
    const service = str(e, 'destination_service', 'authority');
    const flow: Flow = {
      time, reporter, kind: http ? 'http' : 'tcp', direction: 'waypoint',
      source: { address: str(e, 'source_address', 'downstream_remote_address'), namespace: pp.namespace, workload: str(e, 'source_workload') ?? pp.serviceAccount, principal },
      destination: { address: str(e, 'upstream_host'), service },
      verdict: denied ? 'denied' : (http ? status >= 500 || status === 0 : Boolean(detail)) ? 'error' : 'allowed',
      security: 'mutual_tls',
      bytesSent: num(e, 'bytes_sent'), bytesReceived: num(e, 'bytes_received'), durationMs: num(e, 'duration_ms', 'duration'),
    };
    if (http) Object.assign(flow, { method: str(e, 'method'), path: str(e, 'path'), status });
    if (detail && flow.verdict !== 'allowed') flow.reason = detail;
    const policy = str(e, 'policy') ?? /policy ([\w.-]+\/[\w.-]+)/.exec(detail ?? '')?.[1];
    if (policy) flow.policy = policy;
    return flow;
  }
  if (e.type !== undefined && e.type !== 'access') return undefined;
  const principal = str(e, 'src_principal', 'src.identity');
  const pp = principalParts(principal);
  const denied = str(e, 'denied');
  const error = str(e, 'error', 'reason');
  const flow: Flow = {
    time, reporter, kind: 'tcp', direction: str(e, 'direction') ?? 'unknown',
    source: {
      address: str(e, 'src', 'src.addr'),
      namespace: str(e, 'src_namespace', 'src.namespace') ?? pp.namespace,
      workload: str(e, 'src_workload', 'src.workload') ?? pp.serviceAccount,
      principal,
      cluster: str(e, 'src.cluster'),
    },
    destination: {
      address: str(e, 'dst', 'dst.addr'),
      namespace: str(e, 'dst_namespace', 'dst.namespace'),
      workload: str(e, 'dst_workload', 'dst.workload'),
      service: str(e, 'dst_service', 'dst.service'),
      cluster: str(e, 'dst.cluster'),
    },
    verdict: denied || str(e, 'response_flags') === 'DENY' || /denied|WEFT_DENIED|refused by policy|not allowed/i.test(error ?? '') ? 'denied' : error ? 'error' : 'allowed',
    security: str(e, 'security', 'connection_security_policy'),
    bytesSent: num(e, 'bytes_sent'), bytesReceived: num(e, 'bytes_received', 'bytes_recv'),
    durationMs: num(e, 'duration_ms') ?? (/^(\d+)ms$/.exec(str(e, 'duration') ?? '') ? Number(str(e, 'duration')!.slice(0, -2)) : undefined),
  };
  const reason = denied ?? error;
  if (reason) flow.reason = reason;
  const policy = str(e, 'policy') ?? /policy ([\w.-]+\/[\w.-]+)/.exec(reason ?? '')?.[1];
  if (policy) flow.policy = policy;
  return flow;
}

export interface FlowFilter {
  namespace?: string;
  workload?: string;
  verdict?: Verdict;
}

/** A flow matches when its source or destination is in the namespace / is the workload, and its verdict is the one asked. */
export function flowMatches(f: Flow, filter: FlowFilter): boolean {
  if (filter.verdict && f.verdict !== filter.verdict) return false;
  const ends = [f.source, f.destination];
  if (filter.namespace && !ends.some((x) => x.namespace === filter.namespace || ('service' in x && typeof x.service === 'string' && x.service.split('.')[1] === filter.namespace))) return false;
  if (filter.workload && !ends.some((x) => x.workload === filter.workload || ('service' in x && typeof x.service === 'string' && x.service.split('.')[0] === filter.workload))) return false;
  return true;
}

/**
 * Follows every source's `/flows` until `signal` aborts, reconnecting (a component that restarts
 * comes back), and hands each flow to `onFlow`. `onDropped` hears of entries a source could not
 * send because this side read too slowly.
 */
export async function watchFlows(sources: FlowSource[], onFlow: (f: Flow) => void, signal: AbortSignal, opts: { recent?: boolean; onDropped?: (reporter: string, n: number) => void; onError?: (reporter: string, e: Error) => void } = {}): Promise<void> {
  await Promise.all(sources.map(async (s) => {
    let first = true;
    while (!signal.aborted) {
      try {
        await s.stream(`/flows${opts.recent && first ? '?recent=1' : ''}`, (line) => {
          let e: Entry;
          try {
            e = JSON.parse(line) as Entry;
          } catch {
            return;
          }
          if (e.type === 'dropped') opts.onDropped?.(s.reporter, Number(e.count) || 0);
          const f = toFlow(s.reporter, e);
          if (f) onFlow(f);
        }, signal);
      } catch (err) {
        if (!signal.aborted) opts.onError?.(s.reporter, err as Error);
      }
      first = false;
      if (!signal.aborted) await new Promise((r) => setTimeout(r, 1_000).unref());
    }
  }));
}

/**
 * Fills in what a reporter did not name from the mesh's configuration: the service behind a VIP
 * the source agent saw dialled, the workload and namespace behind a pod address.
 */
export class FlowEnricher {
  #byVip = new Map<string, Service>();
  #byIp = new Map<string, Workload>();

  update(services: Service[], workloads: Workload[]): void {
    this.#byVip = new Map(services.flatMap((s) => s.vips.map((v) => [v, s] as const)));
    this.#byIp = new Map(workloads.map((w) => [w.ip, w]));
  }

  enrich(f: Flow): Flow {
    const ip = (a: string | undefined) => a?.replace(/^\[|\]?:\d+$/g, '').replace(/^::ffff:/, '');
    const svc = this.#byVip.get(ip(f.destination.address) ?? '');
    if (svc && !f.destination.service) f.destination.service = svc.hostname;
    if (svc && !f.destination.namespace) f.destination.namespace = svc.namespace;
    const dw = this.#byIp.get(ip(f.destination.address) ?? '');
    if (dw) {
      f.destination.namespace ??= dw.namespace;
      f.destination.workload ??= dw.name;
      if (!f.destination.service && dw.services[0]) {
        const [ns, name] = dw.services[0].split('/');
        f.destination.service = `${name}.${ns}.svc.cluster.local`;
      }
    }
    const sw = this.#byIp.get(ip(f.source.address) ?? '');
    if (sw) {
      f.source.namespace ??= sw.namespace;
      f.source.workload ??= sw.name;
    }
    return f;
  }

  /** Loads services and workloads from the agents' configs (`agents` failing leaves the names as they were). */
  async load(agents: () => Promise<Array<{ config: AgentConfig | null }>>): Promise<void> {
    const services = new Map<string, Service>();
    const workloads = new Map<string, Workload>();
    let dumps: Array<{ config: AgentConfig | null }>;
    try {
      dumps = await agents();
    } catch {
      return;
    }
    for (const d of dumps) {
      for (const s of d.config?.services ?? []) services.set(`${s.namespace}/${s.name}`, s);
      for (const w of d.config?.workloads ?? []) workloads.set(w.uid, w);
    }
    this.update([...services.values()], [...workloads.values()]);
  }
}
