// Where the dashboard's data comes from: the mesh's own components (agents' and waypoints' metrics,
// config, BPF state and flow streams, on either transport: inside the local mesh's network
// namespaces, or through the API server's pod proxy on a cluster, cli/components.ts), or
// Prometheus for the metrics when one is given. Several clusters (a local multi-cluster mesh,
// `weftctl up --clusters N`) are read side by side, each one's services, policies and flows tagged
// with its cluster; the metrics name their clusters themselves (source_cluster,
// destination_cluster). Read-only: nothing here writes to the mesh.
import { parseProm, type Sample } from '../local/prom.ts';
import { components, type Component } from '../components.ts';
import { FlowEnricher, flowSources, watchFlows, type Flow } from '../flows.ts';
import { buildGraph, type GraphConfig, type InCluster, type MeshGraph } from './graph.ts';
import type { Mesh } from '../commands/inspect.ts';

/** The metrics the graph reads. */
export const GRAPH_METRICS = [
  'istio_tcp_connections_opened_total', 'istio_tcp_sent_bytes_total', 'istio_tcp_received_bytes_total',
  'istio_requests_total', 'istio_request_duration_milliseconds_bucket',
];
/** Flows kept for the denials view and the flows page's back-fill. */
const FLOWS_KEPT = 2_000;

interface Scrape { at: number; samples: Sample[] }

export interface DashboardSourceOptions {
  /** Prometheus base URL (e.g. http://127.0.0.1:9090): metrics come from it instead of the components. */
  prometheus?: string;
  /** Seconds the rates are computed over. Default 30. */
  windowSeconds?: number;
  /** How often the components are scraped when there is no Prometheus, ms. Default 2,000. */
  scrapeIntervalMs?: number;
}

/** How long the list of components (pods on a cluster) is reused before it is read again. */
const COMPONENTS_TTL_MS = 10_000;

/** One cluster of the mesh the dashboard shows; `name`, its cluster ID, is needed when there are several. */
export interface ClusterMesh {
  name?: string;
  mesh: Mesh;
}

/** A flow, with the cluster of its reporter when there are several. */
export type DashboardFlow = InCluster<Flow>;

/** What is kept per cluster: how to read it, its components, names for its flows' addresses. */
interface ClusterSource extends ClusterMesh {
  names: FlowEnricher;
  components?: { at: number; list: Promise<Component[]> };
}

export class MeshData {
  readonly #clusters: ClusterSource[];
  readonly #o: Required<Omit<DashboardSourceOptions, 'prometheus'>> & { prometheus?: string };
  readonly #scrapes: Scrape[] = [];
  readonly #flows: DashboardFlow[] = [];
  readonly #listeners = new Set<(f: DashboardFlow) => void>();
  readonly #ac = new AbortController();
  #timer: NodeJS.Timeout | undefined;

  /** One mesh, or the clusters of a multi-cluster one (each named). */
  constructor(meshes: Mesh | ClusterMesh[], opts: DashboardSourceOptions = {}) {
    const list = Array.isArray(meshes) ? meshes : [{ mesh: meshes }];
    if (list.length === 0) throw new Error('the dashboard needs a mesh to show');
    if (list.length > 1 && list.some((c) => !c.name)) throw new Error('each cluster of a multi-cluster mesh needs its name');
    this.#clusters = list.map((c) => ({ ...c, names: new FlowEnricher() }));
    this.#o = { windowSeconds: opts.windowSeconds ?? 30, scrapeIntervalMs: opts.scrapeIntervalMs ?? 2_000, ...(opts.prometheus ? { prometheus: opts.prometheus.replace(/\/$/, '') } : {}) };
  }

  /** The cluster's name to tag its objects with: only when there are several. */
  #tag(c: ClusterSource): { cluster?: string } {
    return this.#clusters.length > 1 && c.name ? { cluster: c.name } : {};
  }

  /** Starts following flows (and scraping, without Prometheus). */
  start(): void {
    for (const c of this.#clusters) {
      void c.names.load(() => c.mesh.agents());
      void this.#components_(c).then((list) => watchFlows(flowSources(list), (raw) => {
        const f: DashboardFlow = { ...c.names.enrich(raw), ...this.#tag(c) };
        this.#flows.push(f);
        if (this.#flows.length > FLOWS_KEPT) this.#flows.splice(0, this.#flows.length - FLOWS_KEPT);
        for (const l of this.#listeners) l(f);
      }, this.#ac.signal, { recent: true }), () => undefined);
    }
    if (!this.#o.prometheus) {
      const tick = async () => {
        this.#scrapes.push(await this.#scrapeComponents());
        const keepFrom = Date.now() - (this.#o.windowSeconds + 10) * 1000;
        while (this.#scrapes.length > 2 && this.#scrapes[0]!.at < keepFrom) this.#scrapes.shift();
        if (!this.#ac.signal.aborted) this.#timer = setTimeout(tick, this.#o.scrapeIntervalMs);
      };
      void tick();
    }
  }

  stop(): void {
    this.#ac.abort();
    clearTimeout(this.#timer);
  }

  /** Calls `fn` for every new flow until the returned function is called. */
  onFlow(fn: (f: DashboardFlow) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  recentFlows(): DashboardFlow[] {
    return [...this.#flows];
  }

  async graph(): Promise<MeshGraph> {
    const [pair, config] = await Promise.all([this.#metricsPair(), this.config()]);
    for (const c of this.#clusters) {
      const mine = <T extends { cluster?: string }>(x: T) => x.cluster === undefined || x.cluster === c.name;
      c.names.update(config.services.filter(mine), this.#clusters.length > 1 ? config.workloads.filter((w) => w.cluster === c.name) : config.workloads);
    }
    const since = Date.now() - this.#o.windowSeconds * 1000;
    return buildGraph({ ...pair, flows: this.#flows.filter((f) => Date.parse(f.time) >= since), config });
  }

  /**
   * Workloads, services and policies, from every agent's and waypoint's config dump; with several
   * clusters each cluster's own (the same `demo/echo` once per cluster, tagged with it).
   */
  async config(): Promise<GraphConfig> {
    const workloads = new Map<string, GraphConfig['workloads'][number]>();
    const services = new Map<string, GraphConfig['services'][number]>();
    const policies = new Map<string, GraphConfig['policies'][number]>();
    await Promise.all(this.#clusters.map(async (c) => {
      const tag = this.#tag(c);
      const key = (x: { namespace: string; name: string }) => `${tag.cluster ?? ''}/${x.namespace}/${x.name}`;
      const [agents, waypoints] = await Promise.all([c.mesh.agents().catch(() => []), c.mesh.waypoints().catch(() => [])]);
      for (const { config } of agents) {
        // Only its own cluster's pods (pod UIDs of a local mesh may repeat in another cluster).
        for (const w of config?.workloads ?? []) workloads.set(`${w.cluster}/${w.uid}`, w);
        for (const s of config?.services ?? []) services.set(key(s), { ...s, ...tag });
        for (const p of config?.policies ?? []) policies.set(key(p), { ...p, ...tag });
      }
      for (const { config } of waypoints) {
        for (const s of config?.services ?? []) if (!services.has(key(s))) services.set(key(s), { ...s, ...tag });
        for (const p of config?.policies ?? []) policies.set(key(p), { ...p, ...tag });
      }
    }));
    return { workloads: [...workloads.values()], services: [...services.values()], policies: [...policies.values()] };
  }

  /** What `weftctl bpf` shows, per node (`<cluster>/<node>` with several clusters): programs, links, enrolled pods, counters. */
  async nodes(): Promise<Array<{ node: string; ip: string; cluster?: string; bpf: unknown }>> {
    const per = await Promise.all(this.#clusters.map(async (cl) => {
      const agents = (await this.#components_(cl)).filter((c) => c.role === 'agent').sort((a, b) => a.name.localeCompare(b.name));
      const tag = this.#tag(cl);
      return Promise.all(agents.map(async (c) => ({
        node: tag.cluster ? `${tag.cluster}/${c.name}` : c.name, ip: c.address ?? '-', ...tag,
        bpf: await c.admin<unknown>('/bpf').catch((e: Error) => ({ error: e.message })),
      })));
    }));
    return per.flat();
  }

  /** A cluster's agents and waypoints (read again every COMPONENTS_TTL_MS: pods come and go on a cluster). */
  #components_(c: ClusterSource): Promise<Component[]> {
    if (!c.components || Date.now() - c.components.at > COMPONENTS_TTL_MS) {
      const list = components(c.mesh.target).then((l) => l.filter((x) => x.role !== 'controller'));
      list.catch(() => { c.components = undefined; });
      c.components = { at: Date.now(), list };
    }
    return c.components.list;
  }

  async #scrapeComponents(): Promise<Scrape> {
    const samples: Sample[] = [];
    const list = (await Promise.all(this.#clusters.map((c) => this.#components_(c).catch(() => [])))).flat();
    await Promise.all(list.map(async (c) => {
      try {
        samples.push(...parseProm(await c.metrics()).filter((s) => GRAPH_METRICS.includes(s.name)));
      } catch {
        /* a component that does not answer adds nothing this time */
      }
    }));
    return { at: Date.now(), samples };
  }

  async #metricsPair(): Promise<{ before: Sample[]; after: Sample[]; seconds: number }> {
    if (this.#o.prometheus) {
      const now = Date.now() / 1000;
      const [before, after] = await Promise.all([this.#promAt(now - this.#o.windowSeconds), this.#promAt(now)]);
      return { before, after, seconds: this.#o.windowSeconds };
    }
    const last = this.#scrapes.at(-1);
    if (!last) return { before: [], after: [], seconds: 1 };
    const from = last.at - this.#o.windowSeconds * 1000;
    const first = this.#scrapes.find((s) => s.at >= from) ?? this.#scrapes[0]!;
    return { before: first === last ? [] : first.samples, after: last.samples, seconds: first === last ? 1 : (last.at - first.at) / 1000 };
  }

  async #promAt(time: number): Promise<Sample[]> {
    const q = `{__name__=~"${GRAPH_METRICS.join('|')}"}`;
    const res = await fetch(`${this.#o.prometheus}/api/v1/query?query=${encodeURIComponent(q)}&time=${time}`);
    if (!res.ok) throw new Error(`Prometheus ${this.#o.prometheus} answered ${res.status}`);
    const body = (await res.json()) as { data?: { result?: Array<{ metric: Record<string, string>; value: [number, string] }> } };
    return (body.data?.result ?? []).map((r) => {
      const { __name__: name, ...labels } = r.metric;
      return { name: name ?? '', labels, value: Number(r.value[1]) };
    });
  }
}
