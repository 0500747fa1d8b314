// A real Prometheus (Debian's `prometheus` package) for the observability tests: started inside a
// node's network namespace with a config the test writes, scraping the local mesh's agents,
// waypoints and controller every second; queried over its HTTP API from the same namespace.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import type { LocalMesh } from '../../cli/local/mesh.ts';
import { requestInNetns } from '../../cli/local/netns-http.ts';
import { until } from './mesh-suite.ts';

export const PROMETHEUS_BIN = '/usr/bin/prometheus';
const PORT = 19090;

export interface PromSeries {
  metric: Record<string, string>;
  value: [number, string];
}

export interface ScrapeTargets {
  /** Job name → `host:port` targets (metrics at /metrics). */
  [job: string]: string[];
}

export class TestPrometheus {
  readonly #mesh: LocalMesh;
  readonly #netnsPath: string;
  readonly #url: string;
  readonly #process: ChildProcess;
  readonly logFile: string;

  private constructor(mesh: LocalMesh, netnsPath: string, url: string, process: ChildProcess, logFile: string) {
    this.#mesh = mesh;
    this.#netnsPath = netnsPath;
    this.#url = url;
    this.#process = process;
    this.logFile = logFile;
  }

  /** Starts Prometheus in `node`'s namespace (node addresses and every pod are routed from there). */
  static async start(mesh: LocalMesh, node: string, targets: ScrapeTargets, dir: string): Promise<TestPrometheus> {
    const n = mesh.node(node);
    mkdirSync(join(dir, 'data'), { recursive: true });
    const config = [
      'global:',
      '  scrape_interval: 1s',
      '  scrape_timeout: 1s',
      '  evaluation_interval: 1s',
      'scrape_configs:',
      ...Object.entries(targets).flatMap(([job, list]) => [
        `  - job_name: ${job}`,
        '    static_configs:',
        `      - targets: [${list.map((t) => `'${t}'`).join(', ')}]`,
      ]),
    ].join('\n');
    const configFile = join(dir, 'prometheus.yml');
    writeFileSync(configFile, config + '\n');
    const logFile = join(mesh.logDir, 'prometheus.log');
    const child = mesh.net.spawn(n, PROMETHEUS_BIN, [
      `--config.file=${configFile}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
      `--web.listen-address=${n.ip}:${PORT}`,
      '--storage.tsdb.retention.time=1h',
      '--log.level=warn',
    ], { logFile });
    const p = new TestPrometheus(mesh, n.netnsPath, `http://${n.ip}:${PORT}`, child, logFile);
    await until('prometheus ready', async () => (await requestInNetns(n.netnsPath, `${p.#url}/-/ready`, { timeoutMs: 2_000 })).status === 200, 60_000, { explain: () => mesh.logTail('prometheus.log') });
    return p;
  }

  /** Instant query; throws on a query error (bad PromQL names the query). */
  async query(expr: string): Promise<PromSeries[]> {
    const r = await requestInNetns(this.#netnsPath, `${this.#url}/api/v1/query?query=${encodeURIComponent(expr)}`, { timeoutMs: 10_000 });
    const body = JSON.parse(r.body) as { status: string; error?: string; data?: { resultType: string; result: PromSeries[] | [number, string] } };
    if (body.status !== 'success') throw new Error(`query ${expr}: ${body.error ?? r.body}`);
    const result = body.data!.result;
    if (body.data!.resultType === 'scalar') return [{ metric: {}, value: result as [number, string] }];
    return result as PromSeries[];
  }

  /** Scrape targets and their health. */
  async targets(): Promise<Array<{ job: string; instance: string; health: string; lastError: string }>> {
    const r = await requestInNetns(this.#netnsPath, `${this.#url}/api/v1/targets`, { timeoutMs: 5_000 });
    const body = JSON.parse(r.body) as { data: { activeTargets: Array<{ labels: Record<string, string>; health: string; lastError: string }> } };
    return body.data.activeTargets.map((t) => ({ job: t.labels['job']!, instance: t.labels['instance']!, health: t.health, lastError: t.lastError }));
  }

  stop(): void {
    this.#process.kill('SIGKILL');
  }

  get mesh(): LocalMesh {
    return this.#mesh;
  }
}

/** The PromQL of every panel (rows' panels included) of a Grafana dashboard, with its title. */
export function dashboardQueries(dashboard: unknown): Array<{ panel: string; expr: string }> {
  const out: Array<{ panel: string; expr: string }> = [];
  const walk = (panels: unknown): void => {
    if (!Array.isArray(panels)) return;
    for (const p of panels as Array<{ title?: string; targets?: Array<{ expr?: string }>; panels?: unknown }>) {
      for (const t of p.targets ?? []) if (t.expr) out.push({ panel: p.title ?? '(untitled)', expr: t.expr });
      walk(p.panels);
    }
  };
  walk((dashboard as { panels?: unknown }).panels);
  return out;
}

/** Grafana's variables as a dashboard's first load would set them (every value, 1m rate windows). */
export function expandGrafanaVariables(expr: string): string {
  return expr
    .replace(/\$__rate_interval|\$\{__rate_interval\}|\$__interval|\$\{__interval\}|\$__range|\$\{__range\}/g, '1m')
    .replace(/\$\{?[a-z_]+\}?/gi, '.*');
}
