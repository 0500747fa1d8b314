// The figures of `make bench` as a table and as the issue's targets (targets, not assertions).
import { medianOf, spreadOf } from './stats.ts';
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
  /** RSS of each proxy process when the case starts, and its anonymous part (RssAnon). */
  rssMbIdle?: Record<string, number>;
  rssAnonMbIdle?: Record<string, number>;
  /** RSS and RssAnon 10 s after the case's last run (the bulk stream, where there is one). */
  rssMbSettled?: Record<string, number>;
  rssAnonMbSettled?: Record<string, number>;
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
  /** Every run of every case (`--repeat`); `cases` holds their field-by-field medians. */
  runs?: CaseResult[][];
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

  // The issue's targets, each computed per run; with several runs the median and the spread.
  const runs = r.runs?.length ? r.runs : [r.cases];
  const perRun = runs.map((cases) => targetFigures(cases, r));
  const pushFigures = targetPushFigures(r);
  const tRows: string[][] = [['figure', 'measured', runs.length > 1 ? `min–max of ${runs.length}` : '', 'target', '']];
  for (let i = 0; i < perRun[0]!.length; i++) {
    const t = perRun[0]![i]!;
    const s = spreadOf(perRun.map((p) => p[i]!.value));
    tRows.push([t.figure, f(s?.median, t.digits ?? 2), runs.length > 1 && s ? `${f(s.min, t.digits ?? 2)}–${f(s.max, t.digits ?? 2)}` : '', t.target ?? '', t.check ? verdict(s === undefined ? undefined : t.check(s.median)) : '']);
  }
  for (const t of pushFigures) tRows.push([t.figure, f(t.value, t.digits ?? 2), '', t.target ?? '', t.check ? verdict(t.value === undefined ? undefined : t.check(t.value)) : '']);
  out += '\nTargets (issue 20; reported, not asserted)\n\n' + table(tRows);
  if (runs.length > 1) out += spreadTable(r.cases, runs);

  if (r.micro) {
    out += '\nMicro-benchmarks\n\n';
    const ca = r.micro.caSign;
    if (ca) out += `  CA signing (bench/ca-sign.ts): ${'error' in ca ? `failed: ${String(ca.error)}` : `in-process ${String(ca.signInProcessPerSecond)} CSRs/s, gRPC over mTLS ${String(ca.signGrpcPerSecond)} CSRs/s, agent keygen+CSR ${String(ca.keygenAndCsrPerSecond)}/s`}\n`;
    const push = r.micro.controllerPush as { error?: string; pushToAllAckedMs?: { p50: number; p90: number; max: number }; controllerPeakRssMb?: number; initialSyncMs?: number } | undefined;
    if (push) out += `  Controller push (bench/controller-push.ts, 1,000 services, 10,000 workloads, 50 agents, 10 waypoints): ${push.error ? `failed: ${push.error}` : `change→all ACKed p50 ${push.pushToAllAckedMs?.p50} ms, p90 ${push.pushToAllAckedMs?.p90} ms, max ${push.pushToAllAckedMs?.max} ms; initial sync ${push.initialSyncMs} ms; controller peak RSS ${push.controllerPeakRssMb} MB`}\n`;
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

const verdict = (ok: boolean | undefined): string => (ok === undefined ? 'n/a' : ok ? 'met' : 'NOT met');
const ratio = (a: number | undefined, b: number | undefined): number | undefined => (a === undefined || b === undefined || b === 0 ? undefined : a / b);

/** One case of bench/cross-network.ts (its `--json` line). */
export interface CrossNetworkResult {
  name: string;
  url: string;
  wrk?: WrkResult;
  hey?: HeyResult;
  /** The same load with a new connection per request (wrk `Connection: close`, hey -disable-keepalive). */
  newConnection?: { wrk?: WrkResult; hey?: HeyResult };
  errors: string[];
}

/**
 * Named rows from bench/cross-network.ts's results: its in-cluster case is the baseline of the
 * cross-network one.
 */
export function crossNetworkRows(raw: readonly CrossNetworkResult[]): CaseResult[] {
  const titles: Record<string, { name: string; title: string }> = {
    'l4-cross-node': { name: 'mc-l4', title: 'two clusters: Weft L4 within cluster1' },
    'cross-network': { name: 'cross-network', title: 'two clusters: cross-network (east-west gateway, double HBONE)' },
  };
  const known = raw.filter((x) => titles[x.name]);
  const kept = known.map((x): CaseResult => ({
    name: titles[x.name]!.name, title: titles[x.name]!.title, baseline: 'mc-l4', proxies: [],
    ...(x.wrk ? { wrk: x.wrk } : {}), ...(x.hey ? { hey: x.hey } : {}), errors: x.errors,
  }));
  // A new connection per request: the in-cluster one is the baseline of the cross-network one, so
  // the added latency is what the tunnels through the gateway cost to set up.
  const fresh = known.filter((x) => x.newConnection).map((x): CaseResult => ({
    name: `${titles[x.name]!.name}-new`, title: `${titles[x.name]!.title}, new connection per request`, baseline: 'mc-l4-new', proxies: [],
    ...(x.newConnection!.wrk ? { wrk: x.newConnection!.wrk } : {}), ...(x.newConnection!.hey ? { hey: x.newConnection!.hey } : {}), errors: [],
  }));
  return [...kept, ...fresh];
}

/** Per case, the field-by-field median of its runs (a case missing from a run does not count there). */
export function medianCases(runs: CaseResult[][]): CaseResult[] {
  const names = [...new Set(runs.flatMap((run) => run.map((c) => c.name)))];
  return names.map((name) => {
    const of = runs.flatMap((run) => run.filter((c) => c.name === name));
    const m = medianOf(of);
    m.errors = of.flatMap((c, i) => c.errors.map((e) => (of.length > 1 ? `run ${i + 1}: ${e}` : e)));
    return m;
  });
}

/** CPU µs per request of the listed processes (all when `only` is not given) in the saturation run. */
export function cpuUsPerRequestSaturation(c: CaseResult | undefined, only?: string): number | undefined {
  if (!c?.wrk?.requests || !c.cpuSecondsSaturation) return undefined;
  const cpu = only ? c.cpuSecondsSaturation[only] : sum(c.cpuSecondsSaturation);
  return cpu === undefined ? undefined : (cpu * 1e6) / c.wrk.requests;
}

/** CPU µs per request in the fixed-rate run (hey: requests = rate × seconds measured). */
export function cpuUsPerRequestAtRate(c: CaseResult | undefined, seconds: number, only?: string): number | undefined {
  if (!c?.hey?.requestsPerSec || !c.cpuSecondsAtRate) return undefined;
  const cpu = only ? c.cpuSecondsAtRate[only] : sum(c.cpuSecondsAtRate);
  return cpu === undefined ? undefined : (cpu * 1e6) / (c.hey.requestsPerSec * seconds);
}

interface TargetFigure {
  figure: string;
  value: number | undefined;
  target?: string;
  check?: (v: number) => boolean;
  digits?: number;
}

/** The figures of issue 20's table (and the references beside them) from one run's cases. */
export function targetFigures(cases: CaseResult[], r: Pick<BenchResults, 'settings'>): TargetFigure[] {
  const by = new Map(cases.map((c) => [c.name, c]));
  const l4 = by.get('weft-l4');
  const ha = by.get('haproxy');
  const st = by.get('stunnel');
  const same = by.get('weft-same-node');
  const spliced = by.get('weft-same-node-splice');
  const dsame = by.get('direct-same-node');
  const direct = by.get('direct');
  const l7 = by.get('weft-l7');
  const rate = r.settings.rate;
  const seconds = Number(r.settings.seconds);
  const agentRssAfterBulk = l4?.agentMemoryMb ? Math.max(...Object.values(l4.agentMemoryMb).map((m) => m.rss)) : undefined;
  return [
    { figure: 'Weft same-node req/s ÷ direct same-node req/s', value: ratio(same?.wrk?.requestsPerSec, dsame?.wrk?.requestsPerSec), target: '≥ 0.80', check: (v) => v >= 0.8 },
    { figure: 'Weft same-node single stream ÷ direct same-node', value: ratio(gbps(same?.iperf), gbps(dsame?.iperf)), target: '≥ 0.70', check: (v) => v >= 0.7 },
    { figure: '  (same-node req/s ÷ direct, agent with --splice: node3)', value: ratio(spliced?.wrk?.requestsPerSec, dsame?.wrk?.requestsPerSec) },
    { figure: '  (same-node single stream ÷ direct, agent with --splice: node3)', value: ratio(gbps(spliced?.iperf), gbps(dsame?.iperf)) },
    { figure: 'Weft L4 single stream ÷ stunnel pair', value: ratio(gbps(l4?.iperf), gbps(st?.iperf)), target: '≥ 1.00', check: (v) => v >= 1 },
    { figure: '  (Weft L4 single stream ÷ HAProxy pair TCP mode)', value: ratio(gbps(l4?.iperf), gbps(ha?.iperf)) },
    { figure: 'Weft L4 req/s ÷ HAProxy pair req/s', value: ratio(l4?.wrk?.requestsPerSec, ha?.wrk?.requestsPerSec), target: '≥ 1.30', check: (v) => v >= 1.3 },
    { figure: 'Weft L7 (waypoint) req/s ÷ HAProxy pair req/s', value: ratio(l7?.wrk?.requestsPerSec, ha?.wrk?.requestsPerSec), target: '≥ 0.60', check: (v) => v >= 0.6 },
    { figure: `Waypoint CPU µs per request at ${rate} req/s`, value: cpuUsPerRequestAtRate(l7, seconds, 'waypoint'), target: '≤ 150', check: (v) => v <= 150, digits: 0 },
    { figure: '  (waypoint CPU µs per request at saturation)', value: cpuUsPerRequestSaturation(l7, 'waypoint'), digits: 0 },
    { figure: `Agent RSS at ${rate} req/s, larger of two (MB)`, value: max(l4?.rssMbAtRate), target: '≤ 80', check: (v) => v <= 80, digits: 1 },
    { figure: '  (of which anonymous, RssAnon; the rest is the shared node binary)', value: max(l4?.rssAnonMbAtRate), digits: 1 },
    { figure: '  (agent RSS right after the L4 case with its bulk stream, larger of two, MB)', value: agentRssAfterBulk, digits: 1 },
    { figure: '  (agent RSS 10 s after that bulk stream, larger of two, MB)', value: max(l4?.rssMbSettled), digits: 1 },
    { figure: '  (agent RSS idle before the L4 case, larger of two, MB)', value: max(l4?.rssMbIdle), digits: 1 },
    { figure: '  (agent RssAnon 10 s after that bulk stream, larger of two, MB)', value: max(l4?.rssAnonMbSettled), digits: 1 },
    { figure: '  (agent RssAnon idle before the L4 case, larger of two, MB)', value: max(l4?.rssAnonMbIdle), digits: 1 },
    { figure: 'Weft L4 p99 ÷ HAProxy pair p99 (saturation)', value: ratio(l4?.wrk?.latencyMs['99'], ha?.wrk?.latencyMs['99']) },
    { figure: `Weft L4 added p99 at ${rate} req/s (ms; HAProxy pair beside it below)`, value: l4 ? addedLatency(l4, direct, '99') : undefined },
    { figure: `  (HAProxy pair added p99 at ${rate} req/s, ms)`, value: ha ? addedLatency(ha, direct, '99') : undefined },
    { figure: 'CPU µs per request at saturation, Weft L4 (both agents)', value: cpuUsPerRequestSaturation(l4), digits: 1 },
    { figure: '  (HAProxy pair, both ends)', value: cpuUsPerRequestSaturation(ha), digits: 1 },
  ];
}

/** The controller-push targets (one micro-benchmark run). */
function targetPushFigures(r: BenchResults): TargetFigure[] {
  const push = r.micro?.controllerPush as { pushToAllAckedMs?: { p90?: number }; controllerPeakRssMb?: number } | undefined;
  if (!push || 'error' in push) return [];
  return [
    { figure: 'Controller push, 10k workloads → 50 agents, p90 (ms)', value: push.pushToAllAckedMs?.p90, target: '≤ 100', check: (v) => v <= 100, digits: 0 },
    { figure: 'Controller peak RSS during the push benchmark (MB)', value: push.controllerPeakRssMb, target: '≤ 250', check: (v) => v <= 250, digits: 0 },
  ];
}

/** Per case: median and min–max of the figures that decide the targets, over every run. */
function spreadTable(cases: CaseResult[], runs: CaseResult[][]): string {
  const rows: string[][] = [['case (median, min–max over runs)', 'req/s', 'p99 ms', 'iperf3 Gbit/s', 'CPU µs/req sat.']];
  const cell = (vals: Array<number | undefined>, digits: number): string => {
    const s = spreadOf(vals);
    return s ? `${f(s.median, digits)} (${f(s.min, digits)}–${f(s.max, digits)})` : '-';
  };
  for (const c of cases) {
    const of = runs.map((run) => run.find((x) => x.name === c.name));
    rows.push([
      c.title,
      cell(of.map((x) => x?.wrk?.requestsPerSec), 0),
      cell(of.map((x) => x?.wrk?.latencyMs['99']), 2),
      cell(of.map((x) => gbps(x?.iperf)), 2),
      c.proxies.length ? cell(of.map((x) => cpuUsPerRequestSaturation(x)), 1) : '-',
    ]);
  }
  return `\nSpread over ${runs.length} runs (every figure above is the median of its runs)\n\n` + table(rows);
}
