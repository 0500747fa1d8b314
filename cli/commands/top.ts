// weftctl top: live per-service traffic of the local mesh, refreshed in the terminal. L7 rows
// (services behind a waypoint) show requests/s per destination workload (the canary split), error
// rate and latency percentiles from the waypoints' istio_request_* metrics; L4 rows show new
// connections/s and how they were secured, from the agents' istio_tcp_* metrics. On a terminal the
// view is redrawn in place; into a pipe each interval's table follows the last (no escape codes);
// `-o json` prints one JSON object per interval (one line each).
import { Command, Option } from 'commander';
import { setTimeout as sleep } from 'node:timers/promises';
import { delta, histogramQuantile, sumBy, type Sample } from '../local/prom.ts';
import { components, scrapeComponent } from '../components.ts';
import { inspectCommand } from './inspect.ts';
import type { Target, TargetFlags } from './target.ts';
import { table } from './output.ts';
import { processIo, type CommandIo } from './install.ts';

interface Scrape {
  at: number;
  samples: Sample[];
}

/** Every agent's and waypoint's /metrics, concatenated (labels keep them apart). */
async function scrape(t: Target): Promise<Scrape> {
  const comps = (await components(t)).filter((c) => c.role !== 'controller');
  const samples: Sample[] = [];
  // A component that does not answer shows no rows.
  for (const r of await Promise.all(comps.map(scrapeComponent))) if ('samples' in r) samples.push(...r.samples);
  return { at: Date.now(), samples };
}

const SEP = '\u0000';
const fmt = (v: number | undefined, digits = 1) => (v === undefined ? '-' : v.toFixed(digits));

/** One row of `weftctl top`: a service's L7 traffic to one workload, or its L4 connections. */
export interface TopRow {
  service: string;
  layer: 'L7' | 'L4';
  /** L7: the destination workload; L4: absent. */
  workload?: string;
  /** Requests/s (L7) or new connections/s (L4). */
  rate: number;
  /** L7: percentage of the service's requests that went to this workload. */
  sharePercent?: number;
  errorPercent?: number;
  p50Ms?: number;
  p90Ms?: number;
  p99Ms?: number;
  security: string;
}

/** The rows for the interval between two scrapes. */
export function topRows(a: Scrape, b: Scrape): TopRow[] {
  const secs = Math.max((b.at - a.at) / 1000, 0.001);
  const rows: TopRow[] = [];
  // L7: requests by service and destination workload.
  const reqBy = ['destination_service', 'destination_workload'];
  const reqs = delta(sumBy(a.samples, 'istio_requests_total', reqBy), sumBy(b.samples, 'istio_requests_total', reqBy));
  const errs = delta(
    sumBy(a.samples, 'istio_requests_total', reqBy, (l) => Number(l.response_code) >= 500 || l.response_code === '0'),
    sumBy(b.samples, 'istio_requests_total', reqBy, (l) => Number(l.response_code) >= 500 || l.response_code === '0'),
  );
  const perService = new Map<string, number>();
  for (const [k, n] of reqs) perService.set(k.split(SEP)[0]!, (perService.get(k.split(SEP)[0]!) ?? 0) + n);
  const bucketBy = [...reqBy, 'le'];
  const buckets = delta(
    sumBy(a.samples, 'istio_request_duration_milliseconds_bucket', bucketBy),
    sumBy(b.samples, 'istio_request_duration_milliseconds_bucket', bucketBy),
  );
  for (const [k, n] of [...reqs.entries()].sort()) {
    if (n === 0) continue;
    const [svc, wl] = k.split(SEP) as [string, string];
    const hist = new Map<number, number>();
    for (const [bk, c] of buckets) {
      const [s2, w2, le] = bk.split(SEP);
      if (s2 === svc && w2 === wl) hist.set(le === '+Inf' ? Infinity : Number(le), c);
    }
    const share = (100 * n) / (perService.get(svc) || 1);
    rows.push(clean({
      service: svc, layer: 'L7', workload: wl, rate: n / secs, sharePercent: share, errorPercent: (100 * (errs.get(k) ?? 0)) / n,
      p50Ms: histogramQuantile(0.5, hist), p90Ms: histogramQuantile(0.9, hist), p99Ms: histogramQuantile(0.99, hist), security: 'mutual_tls',
    }));
  }
  // L4: connections opened by the source agents, by service and how they were carried.
  const tcpBy = ['destination_service', 'connection_security_policy'];
  const src = (l: Record<string, string>) => l.reporter === 'source';
  const conns = delta(sumBy(a.samples, 'istio_tcp_connections_opened_total', tcpBy, src), sumBy(b.samples, 'istio_tcp_connections_opened_total', tcpBy, src));
  for (const [k, n] of [...conns.entries()].sort()) {
    if (n === 0) continue;
    const [svc, sec] = k.split(SEP) as [string, string];
    rows.push({ service: svc, layer: 'L4', rate: n / secs, security: sec });
  }
  return rows;
}

function clean(r: TopRow): TopRow {
  return Object.fromEntries(Object.entries(r).filter(([, v]) => v !== undefined && !Number.isNaN(v))) as unknown as TopRow;
}

/** The table of {@link topRows}. */
export function topTable(a: Scrape, b: Scrape, headers = true): string {
  const pct = (v: number | undefined, digits = 1) => (v === undefined ? '-' : `${fmt(v, digits)}%`);
  return table(['SERVICE', 'PATH', 'RATE/S', 'SHARE', 'ERRORS', 'P50 MS', 'P90 MS', 'P99 MS', 'SECURITY'], topRows(a, b).map((r) => [
    r.service, r.layer === 'L7' ? `L7 → ${r.workload}` : 'L4 connections', fmt(r.rate), pct(r.sharePercent, 0), pct(r.errorPercent),
    fmt(r.p50Ms), fmt(r.p90Ms), fmt(r.p99Ms), r.security,
  ]), headers);
}

interface TopFlags extends TargetFlags {
  interval: string;
  once?: boolean;
  count?: string;
  output: 'table' | 'json';
  headers: boolean;
}

export function topCommand(io: CommandIo = processIo): Command {
  return inspectCommand<TopFlags>('top', 'top', io, (cmd) => cmd
    .description('live per-service requests/s, error rate, latency percentiles and mTLS status (agents\' and waypoints\' metrics; on a cluster through the API server\'s pod proxy)')
    .option('-i, --interval <seconds>', 'refresh interval', '2')
    .option('--once', 'print one table after one interval and exit (--count 1)')
    .option('--count <n>', 'exit after n refreshes')
    .addOption(new Option('-o, --output <format>', 'table, or json: one object per interval, one line each').choices(['table', 'json']).default('table'))
    .option('--no-headers', 'tables without their header line'), async (m, f) => {
      const interval = Math.max(Number(f.interval) || 2, 0.5) * 1000;
      const terminal = io.isTerminal?.() ?? false;
      const count = f.once ? 1 : f.count !== undefined ? Math.max(1, Math.floor(Number(f.count)) || 1) : Infinity;
      const label = m.target.kind === 'local' ? m.target.st.prefix : m.target.kube.server.origin;
      let prev = await scrape(m.target);
      for (let i = 1; ; i++) {
        await sleep(interval);
        const next = await scrape(m.target);
        if (f.output === 'json') io.out(JSON.stringify({ at: new Date(next.at).toISOString(), intervalSeconds: (next.at - prev.at) / 1000, rows: topRows(prev, next) }) + '\n');
        else {
          const text = topTable(prev, next, f.headers);
          // A terminal gets a view redrawn in place like top(1); a pipe or file gets each table after
          // the last, with a timestamp line, and no escape codes.
          if (f.once) io.out(text);
          else if (terminal) {
            io.clearScreen?.();
            io.out(` weft top: ${label}, every ${interval / 1000} s (Ctrl-C to quit)\n\n${text}`);
          }
          else io.out(`# ${new Date(next.at).toISOString()}\n${text}\n`);
        }
        prev = next;
        if (i >= count) return;
      }
    });
}
