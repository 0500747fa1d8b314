// The figures of `make bench` as a table and as the issue's targets (targets, not assertions).
import type { HeyResult, IperfResult, WrkResult, HboneBenchFigure, ProfileEntry } from './parse.ts';

export interface CaseResult {
  name: string;
  title: string;
  /** The case whose latency "added" latency is measured against. */
  baseline: string;
  proxies: string[];
  wrk?: WrkResult;
  hey?: HeyResult;
  iperf?: IperfResult;
  /** CPU seconds per proxy process during the saturation run, the fixed-rate run and the bulk stream. */
  cpuSecondsSaturation?: Record<string, number>;
  cpuSecondsAtRate?: Record<string, number>;
  cpuSecondsBulk?: Record<string, number>;
  /** RSS of each proxy process when the case starts. */
  rssMbIdle?: Record<string, number>;
  /** Highest RSS sampled (every 250 ms) during the fixed-rate run. */
  rssMbAtRate?: Record<string, number>;
  /** Weft cases: the agents' heap and RSS from their own metrics after the case, MB. */
  agentMemoryMb?: Record<string, { rss: number; heapUsed: number; heapTotal: number; external: number }>;
  /** The anonymous part of that RSS (RssAnon: without the shared pages of the executable and libraries). */
  rssAnonMbAtRate?: Record<string, number>;
  /** VmHWM at the end of the case (the agents serve several cases: cumulative for them). */
  peakRssMb?: Record<string, number>;
  errors: string[];
}

export interface BenchResults {
  startedAt: string;
  durationSeconds?: number;
  /** 1-minute load averages: other work on the machine shows up here (the bench's own load is about 2). */
  host: { cpus: number; kernel: string; node: string; loadavgAtStart: number; loadavgAtEnd?: number };
  settings: Record<string, string | number>;
  cases: CaseResult[];
  micro?: {
    caSign?: Record<string, unknown>;
    controllerPush?: Record<string, unknown>;
    hbone?: { figures: HboneBenchFigure[]; cpuLines: string[] } | { error: string };
  };
  profile?: Record<string, { top: ProfileEntry[]; byOrigin: Record<string, number> }>;
  notes: string[];
}

const f = (v: number | undefined, digits = 2): string => (v === undefined || !Number.isFinite(v) ? '-' : v.toFixed(digits));
const sum = (r: Record<string, number> | undefined): number | undefined => (r && Object.keys(r).length ? Object.values(r).reduce((a, b) => a + b, 0) : undefined);
const max = (r: Record<string, number> | undefined): number | undefined => (r && Object.keys(r).length ? Math.max(...Object.values(r)) : undefined);
const gbps = (i: IperfResult | undefined): number | undefined => (i ? i.receivedBitsPerSec / 1e9 : undefined);

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => `| ${r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  const sep = `|${widths.map((w, i) => (i === 0 ? ':' : '-') + '-'.repeat(w) + (i === 0 ? '-' : ':')).join('|')}|`;
  return [line(rows[0]!), sep, ...rows.slice(1).map(line)].join('\n') + '\n';
}

/** Added latency at the fixed rate over the case's baseline (ms), per percentile. */
export function addedLatency(c: CaseResult, base: CaseResult | undefined, pct: string): number | undefined {
  const a = c.hey?.latencyMs[pct];
  const b = base?.hey?.latencyMs[pct];
  return a === undefined || b === undefined ? undefined : a - b;
}

export function report(r: BenchResults): string {
  const by = new Map(r.cases.map((c) => [c.name, c]));
  let out = `\nWeft bench, ${r.startedAt} (${r.host.cpus} CPUs, kernel ${r.host.kernel}, Node ${r.host.node}); ` +
    `wrk ${r.settings.wrk}; hey ${r.settings.hey}; iperf3 ${r.settings.iperf3}; ` +
    `load average ${f(r.host.loadavgAtStart)} at start, ${f(r.host.loadavgAtEnd)} at end\n\n`;
  const rows: string[][] = [[
    'case', 'req/s', 'p50 ms', 'p99 ms', `@${r.settings.rate}/s p50/p90/p99 ms`, 'added p50/p90/p99 ms',
    'iperf3 Gbit/s', 'CPU s sat.', `CPU s @${r.settings.rate}/s`, 'CPU s bulk', 'RSS MB idle', `RSS MB @${r.settings.rate}/s`, 'peak RSS MB',
  ]];
  for (const c of r.cases) {
    const base = by.get(c.baseline);
    const isBase = c.baseline === c.name;
    const h = c.hey?.latencyMs;
    rows.push([
      c.title,
      f(c.wrk?.requestsPerSec, 0),
      f(c.wrk?.latencyMs['50']),
      f(c.wrk?.latencyMs['99']),
      h ? `${f(h['50'], 1)}/${f(h['90'], 1)}/${f(h['99'], 1)}` : '-',
      isBase ? '(baseline)' : ['50', '90', '99'].map((p) => f(addedLatency(c, base, p), 1)).join('/'),
      f(gbps(c.iperf)),
      c.proxies.length ? f(sum(c.cpuSecondsSaturation)) : '-',
      c.proxies.length ? f(sum(c.cpuSecondsAtRate)) : '-',
      c.proxies.length ? f(sum(c.cpuSecondsBulk)) : '-',
      c.proxies.length ? Object.values(c.rssMbIdle ?? {}).map((v) => f(v, 0)).join('+') || '-' : '-',
      c.proxies.length ? Object.values(c.rssMbAtRate ?? {}).map((v) => f(v, 0)).join('+') || '-' : '-',
      c.proxies.length ? Object.values(c.peakRssMb ?? {}).map((v) => f(v, 0)).join('+') || '-' : '-',
    ]);
  }
  out += table(rows);
  out += '\nCPU s: both proxy processes together (utime+stime from /proc); RSS: client-side + server-side process.\n';
  for (const c of r.cases) {
    for (const [who, m] of Object.entries(c.agentMemoryMb ?? {})) {
      out += `${c.name}: ${who} after the case: RSS ${f(m.rss, 0)} MB, V8 heap used ${f(m.heapUsed, 0)} of ${f(m.heapTotal, 0)} MB, external ${f(m.external, 0)} MB\n`;
    }
  }
  out += 'Errors seen by the load tools: ' + (r.cases.map((c) => {
    const e = (c.wrk?.socketErrors ?? 0) + (c.wrk?.non2xx ?? 0) + (c.hey?.errors ?? 0);
    return e ? `${c.name} ${e}` : '';
  }).filter(Boolean).join(', ') || 'none') + '\n';

  // Ratios against the reference tools, with the issue's targets beside them.
  const l4 = by.get('weft-l4');
  const ha = by.get('haproxy');
  const st = by.get('stunnel');
  const same = by.get('weft-same-node');
  const dsame = by.get('direct-same-node');
  const direct = by.get('direct');
  const l7 = by.get('weft-l7');
  const ratio = (a: number | undefined, b: number | undefined) => (a === undefined || b === undefined || b === 0 ? undefined : a / b);
  const verdict = (ok: boolean | undefined) => (ok === undefined ? 'n/a' : ok ? 'met' : 'NOT met');
  const tRows: string[][] = [['figure', 'measured', 'target', '']];
  const rpsRatio = ratio(l4?.wrk?.requestsPerSec, ha?.wrk?.requestsPerSec);
  tRows.push(['Weft L4 req/s ÷ HAProxy pair req/s', f(rpsRatio), '≥ 1.00', verdict(rpsRatio === undefined ? undefined : rpsRatio >= 1)]);
  const p99Ratio = ratio(l4?.wrk?.latencyMs['99'], ha?.wrk?.latencyMs['99']);
  tRows.push(['Weft L4 p99 ÷ HAProxy pair p99 (saturation)', f(p99Ratio), '≤ 1.00', verdict(p99Ratio === undefined ? undefined : p99Ratio <= 1)]);
  const added = l4 ? addedLatency(l4, direct, '99') : undefined;
  tRows.push([`Weft L4 added p99 at ${r.settings.rate} req/s (ms)`, f(added, 2), '≤ 0.25', verdict(added === undefined ? undefined : added <= 0.25)]);
  const addedHa = ha ? addedLatency(ha, direct, '99') : undefined;
  const addedSt = st ? addedLatency(st, direct, '99') : undefined;
  tRows.push([`  (HAProxy pair / stunnel pair added p99, ms)`, `${f(addedHa, 2)} / ${f(addedSt, 2)}`, '', '']);
  const tput = ratio(gbps(l4?.iperf), gbps(st?.iperf));
  tRows.push(['Weft L4 single stream ÷ stunnel pair', f(tput), '≥ 1.00', verdict(tput === undefined ? undefined : tput >= 1)]);
  const tputHa = ratio(gbps(l4?.iperf), gbps(ha?.iperf));
  tRows.push(['  (Weft L4 single stream ÷ HAProxy pair TCP mode)', f(tputHa), '', '']);
  const sameRatio = ratio(same?.wrk?.requestsPerSec, dsame?.wrk?.requestsPerSec);
  tRows.push(['Weft same-node req/s ÷ direct same-node req/s', f(sameRatio), '≥ 0.80', verdict(sameRatio === undefined ? undefined : sameRatio >= 0.8)]);
  const sameT = ratio(gbps(same?.iperf), gbps(dsame?.iperf));
  tRows.push(['  (Weft same-node single stream ÷ direct same-node)', f(sameT), '', '']);
  const wpRatio = ratio(l7?.wrk?.requestsPerSec, ha?.wrk?.requestsPerSec);
  tRows.push(['Weft L7 (waypoint) req/s ÷ HAProxy pair req/s', l7 ? f(wpRatio) : 'not measured', '≥ 0.50', verdict(wpRatio === undefined ? undefined : wpRatio >= 0.5)]);
  const rss = max(l4?.rssMbAtRate);
  tRows.push([`Agent RSS at ${r.settings.rate} req/s, larger of two (MB)`, f(rss, 1), '< 60', verdict(rss === undefined ? undefined : rss < 60)]);
  tRows.push([`  (of which anonymous, RssAnon; the rest is the shared node binary)`, f(max(l4?.rssAnonMbAtRate), 1), '', '']);
  const cpuL4 = sum(l4?.cpuSecondsSaturation);
  const cpuHa = sum(ha?.cpuSecondsSaturation);
  const perReq = (cpu: number | undefined, c: CaseResult | undefined) =>
    cpu === undefined || !c?.wrk ? undefined : (cpu * 1e6) / (c.wrk.requests || 1);
  tRows.push(['CPU µs per request at saturation, Weft L4 / HAProxy pair', `${f(perReq(cpuL4, l4), 1)} / ${f(perReq(cpuHa, ha), 1)}`, '', '']);
  out += '\nTargets (from the issue; reported, not asserted)\n\n' + table(tRows);

  if (r.micro) {
    out += '\nMicro-benchmarks\n\n';
    const ca = r.micro.caSign;
    if (ca) out += `  CA signing (bench/ca-sign.ts): ${'error' in ca ? `failed: ${String(ca.error)}` : `in-process ${String(ca.signInProcessPerSecond)} CSRs/s, gRPC over mTLS ${String(ca.signGrpcPerSecond)} CSRs/s, agent keygen+CSR ${String(ca.keygenAndCsrPerSecond)}/s`}\n`;
    const push = r.micro.controllerPush as { error?: string; pushToAllAckedMs?: { p50: number; p90: number; max: number }; controllerPeakRssMb?: number; initialSyncMs?: number } | undefined;
    if (push) out += `  Controller push (bench/controller-push.ts, 1,000 services, 10,000 workloads, 50 clients): ${push.error ? `failed: ${push.error}` : `change→all ACKed p50 ${push.pushToAllAckedMs?.p50} ms, p90 ${push.pushToAllAckedMs?.p90} ms, max ${push.pushToAllAckedMs?.max} ms; initial sync ${push.initialSyncMs} ms; controller peak RSS ${push.controllerPeakRssMb} MB`}\n`;
    const hb = r.micro.hbone;
    if (hb) {
      if ('error' in hb) out += `  Loopback HBONE (bench/hbone-throughput.ts): failed: ${hb.error}\n`;
      else {
        out += '  Loopback HBONE (bench/hbone-throughput.ts --mb 256 --repeat 1):\n';
        for (const x of hb.figures) out += `    ${x.figure} ${x.path}: ${x.value} ${x.unit}\n`;
      }
    }
  }
  if (r.profile) {
    for (const [who, { top, byOrigin }] of Object.entries(r.profile)) {
      out += `\nWhere ${who}'s CPU goes (node --cpu-prof, self time, % of non-idle samples)\n\n`;
      out += table([['origin', '%'], ...Object.entries(byOrigin).map(([k, v]) => [k, f(v, 1)])]);
      out += '\n' + table([['top functions (file:line)', 'self ms', '% of busy'], ...top.map((e) => [e.frame, f(e.selfMs, 0), f(e.selfPercent, 1)])]);
    }
  }
  for (const c of r.cases) for (const e of c.errors) out += `\nnote: ${c.name}: ${e}`;
  for (const n of r.notes) out += `\nnote: ${n}`;
  return out + '\n';
}
