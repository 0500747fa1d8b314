// Where the dashboard's data comes from: the mesh's own components (agents' and waypoints' metrics,
// config, BPF state and flow streams, on either transport: inside the local mesh's network
// namespaces, or through the API server's pod proxy on a cluster, cli/components.ts), or
// Prometheus for the metrics when one is given. Read-only: nothing here writes to the mesh.
import { parseProm, type Sample } from '../local/prom.ts';
import { components, type Component } from '../components.ts';
import { FlowEnricher, flowSources, watchFlows, type Flow } from '../flows.ts';
import { buildGraph, type GraphConfig, type MeshGraph } from './graph.ts';
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

export class MeshData {
  readonly mesh: Mesh;
  readonly #o: Required<Omit<DashboardSourceOptions, 'prometheus'>> & { prometheus?: string };
  readonly #scrapes: Scrape[] = [];
  readonly #flows: Flow[] = [];
  readonly #listeners = new Set<(f: Flow) => void>();
  readonly #ac = new AbortController();
  readonly #names = new FlowEnricher();
  #timer: NodeJS.Timeout | undefined;
  #components: { at: number; list: Promise<Component[]> } | undefined;

  constructor(mesh: Mesh, opts: DashboardSourceOptions = {}) {
    this.mesh = mesh;
    this.#o = { windowSeconds: opts.windowSeconds ?? 30, scrapeIntervalMs: opts.scrapeIntervalMs ?? 2_000, ...(opts.prometheus ? { prometheus: opts.prometheus.replace(/\/$/, '') } : {}) };
  }

  /** Starts following flows (and scraping, without Prometheus). */
  start(): void {
    void this.#names.load(() => this.mesh.agents());
    void this.#components_().then((list) => watchFlows(flowSources(list), (raw) => {
      const f = this.#names.enrich(raw);
      this.#flows.push(f);
      if (this.#flows.length > FLOWS_KEPT) this.#flows.splice(0, this.#flows.length - FLOWS_KEPT);
      for (const l of this.#listeners) l(f);
    }, this.#ac.signal, { recent: true }), () => undefined);
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
  onFlow(fn: (f: Flow) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  recentFlows(): Flow[] {
    return [...this.#flows];
  }

  async graph(): Promise<MeshGraph> {
    const [pair, config] = await Promise.all([this.#metricsPair(), this.config()]);
    this.#names.update(config.services, config.workloads);
    const since = Date.now() - this.#o.windowSeconds * 1000;
    return buildGraph({ ...pair, flows: this.#flows.filter((f) => Date.parse(f.time) >= since), config });
  }

  /** Workloads, services and policies, from every agent's and waypoint's config dump. */
  async config(): Promise<GraphConfig> {
    const workloads = new Map<string, GraphConfig['workloads'][number]>();
    const services = new Map<string, GraphConfig['services'][number]>();
    const policies = new Map<string, GraphConfig['policies'][number]>();
    const agents = await this.mesh.agents().catch(() => []);
    for (const { config } of agents) {
      for (const w of config?.workloads ?? []) workloads.set(w.uid, w);
      for (const s of config?.services ?? []) services.set(`${s.namespace}/${s.name}`, s);
      for (const p of config?.policies ?? []) policies.set(`${p.namespace}/${p.name}`, p);
    }
    const waypoints = await this.mesh.waypoints().catch(() => []);
    for (const { config } of waypoints) {
      for (const s of config?.services ?? []) if (!services.has(`${s.namespace}/${s.name}`)) services.set(`${s.namespace}/${s.name}`, s);
      for (const p of config?.policies ?? []) policies.set(`${p.namespace}/${p.name}`, p);
    }
    return { workloads: [...workloads.values()], services: [...services.values()], policies: [...policies.values()] };
  }

  /** What `weftctl bpf` shows, per node: programs, links, enrolled pods, counters. */
  async nodes(): Promise<Array<{ node: string; ip: string; bpf: unknown }>> {
    const agents = (await this.#components_()).filter((c) => c.role === 'agent').sort((a, b) => a.name.localeCompare(b.name));
    return Promise.all(agents.map(async (c) => ({
      node: c.name, ip: c.address ?? '-',
      bpf: await c.admin<unknown>('/bpf').catch((e: Error) => ({ error: e.message })),
    })));
  }

  /** The agents and waypoints (read again every COMPONENTS_TTL_MS: pods come and go on a cluster). */
  #components_(): Promise<Component[]> {
    if (!this.#components || Date.now() - this.#components.at > COMPONENTS_TTL_MS) {
      const list = components(this.mesh.target).then((l) => l.filter((c) => c.role !== 'controller'));
      list.catch(() => { this.#components = undefined; });
      this.#components = { at: Date.now(), list };
    }
    return this.#components.list;
  }

  async #scrapeComponents(): Promise<Scrape> {
    const samples: Sample[] = [];
    const list = await this.#components_().catch(() => []);
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
