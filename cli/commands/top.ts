// weftctl top: live per-service traffic of the local mesh, refreshed in the terminal. L7 rows
// (services behind a waypoint) show requests/s per destination workload (the canary split), error
// rate and latency percentiles from the waypoints' istio_request_* metrics; L4 rows show new
// connections/s and how they were secured, from the agents' istio_tcp_* metrics.
import { Command } from 'commander';
import { setTimeout as sleep } from 'node:timers/promises';
import type { LocalState } from '../local/up.ts';
import { localMeshCommand, type LocalMeshFlags } from './local-mesh.ts';
import { requestInNetns } from '../local/netns-http.ts';
import { delta, histogramQuantile, parseProm, sumBy, type Sample } from '../local/prom.ts';
import { table } from './inspect.ts';
import { processIo, type CommandIo } from './install.ts';

interface Scrape {
  at: number;
  samples: Sample[];
}

/** Every agent's and waypoint's /metrics, concatenated (labels keep them apart). */
async function scrape(st: LocalState): Promise<Scrape> {
  const targets = [
    ...st.nodes.map((n) => ({ netns: n.netns, url: `http://${n.ip}:15020/metrics` })),
    ...st.pods.filter((p) => p.name.startsWith('waypoint')).map((p) => ({ netns: p.netns, url: `http://${p.ip}:15020/metrics` })),
  ];
  const samples: Sample[] = [];
  await Promise.all(targets.map(async (t) => {
    try {
      samples.push(...parseProm((await requestInNetns(`/var/run/netns/${t.netns}`, t.url, { timeoutMs: 2_000 })).body));
    } catch {
      /* a component that does not answer shows no rows */
    }
  }));
  return { at: Date.now(), samples };
}

const SEP = '\u0000';
const fmt = (v: number | undefined, digits = 1) => (v === undefined ? '-' : v.toFixed(digits));

/** The table for the interval between two scrapes. */
export function topTable(a: Scrape, b: Scrape): string {
  const secs = Math.max((b.at - a.at) / 1000, 0.001);
  const rows: string[][] = [];
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
    rows.push([svc, `L7 → ${wl}`, fmt(n / secs), `${fmt(share, 0)}%`, `${fmt((100 * (errs.get(k) ?? 0)) / n)}%`,
      fmt(histogramQuantile(0.5, hist)), fmt(histogramQuantile(0.9, hist)), fmt(histogramQuantile(0.99, hist)), 'mutual_tls']);
  }
  // L4: connections opened by the source agents, by service and how they were carried.
  const tcpBy = ['destination_service', 'connection_security_policy'];
  const src = (l: Record<string, string>) => l.reporter === 'source';
  const conns = delta(sumBy(a.samples, 'istio_tcp_connections_opened_total', tcpBy, src), sumBy(b.samples, 'istio_tcp_connections_opened_total', tcpBy, src));
  for (const [k, n] of [...conns.entries()].sort()) {
    if (n === 0) continue;
    const [svc, sec] = k.split(SEP) as [string, string];
    rows.push([svc, 'L4 connections', fmt(n / secs), '-', '-', '-', '-', '-', sec]);
  }
  return table(['SERVICE', 'PATH', 'RATE/S', 'SHARE', 'ERRORS', 'P50 MS', 'P90 MS', 'P99 MS', 'SECURITY'], rows);
}

export function topCommand(io: CommandIo = processIo): Command {
  return localMeshCommand<LocalMeshFlags & { interval: string; once?: boolean }>('top', 'top', io, (cmd) => cmd
    .description('live per-service requests/s, error rate, latency percentiles and mTLS status of the local mesh')
    .option('-i, --interval <seconds>', 'refresh interval', '2')
    .option('--once', 'print one table after one interval and exit'), async (st, f) => {
      const interval = Math.max(Number(f.interval) || 2, 0.5) * 1000;
      let prev = await scrape(st);
      for (;;) {
        await sleep(interval);
        const next = await scrape(st);
        const text = topTable(prev, next);
        prev = next;
        if (f.once) {
          io.out(text);
          return;
        }
        // Clear the screen and home the cursor, then draw: a refreshing view like top(1).
        io.out(`\x1b[2J\x1b[H weft top: ${st.prefix}, every ${interval / 1000} s (Ctrl-C to quit)\n\n${text}`);
      }
    });
}
