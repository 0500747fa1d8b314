// Pure parsers for what the load tools and /proc print, so `bench/run.ts` only runs things and the
// parsing is unit-tested (test/unit/bench-parse.test.ts). Times are in milliseconds throughout.

export class BenchParseError extends Error {
  readonly code = 'WEFT_BENCH_PARSE';
  constructor(tool: string, what: string, text: string) {
    super(`could not read ${what} from ${tool} output; is the tool the Debian version the bench expects? Output began: ${JSON.stringify(text.slice(0, 300))}`);
    this.name = 'BenchParseError';
  }
}

export interface WrkResult {
  requestsPerSec: number;
  requests: number;
  /** Percentile (50, 75, 90, 99) → latency in ms. */
  latencyMs: Record<string, number>;
  /** connect + read + write + timeout socket errors. */
  socketErrors: number;
  non2xx: number;
}

const TIME_UNITS_MS: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** `207.94us`, `1.20ms`, `2.00s` → ms. */
export function wrkTimeToMs(text: string): number {
  const m = /^([0-9.]+)(us|ms|s|m|h)$/.exec(text.trim());
  if (!m) throw new BenchParseError('wrk', `a time ("${text}")`, text);
  // Rounded to nanoseconds: 820.00us is 0.82 ms, not 0.8200000000000001.
  return +(Number(m[1]) * TIME_UNITS_MS[m[2]!]!).toFixed(6);
}

/** Parses `wrk --latency` text output. */
export function parseWrk(text: string): WrkResult {
  const rps = /^Requests\/sec:\s+([0-9.]+)/m.exec(text);
  if (!rps) throw new BenchParseError('wrk', 'Requests/sec', text);
  const total = /^\s*(\d+) requests in /m.exec(text);
  const latencyMs: Record<string, number> = {};
  const dist = text.split(/Latency Distribution/)[1];
  if (!dist) throw new BenchParseError('wrk', 'the latency distribution (run with --latency)', text);
  for (const m of dist.matchAll(/^\s+(\d+(?:\.\d+)?)%\s+([0-9.]+(?:us|ms|s|m|h))\s*$/gm)) {
    latencyMs[String(Number(m[1]))] = wrkTimeToMs(m[2]!);
  }
  if (latencyMs['50'] === undefined || latencyMs['99'] === undefined) throw new BenchParseError('wrk', 'p50 and p99', text);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text);
  const socketErrors = sock ? sock.slice(1).reduce((a, b) => a + Number(b), 0) : 0;
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(text)?.[1] ?? 0);
  return { requestsPerSec: Number(rps[1]), requests: Number(total?.[1] ?? 0), latencyMs, socketErrors, non2xx };
}

export interface HeyResult {
  requestsPerSec: number;
  /** Percentile (10, 25, 50, 75, 90, 95, 99) → latency in ms (hey prints 0.1 ms resolution). */
  latencyMs: Record<string, number>;
  /** Status code → responses. */
  statusCodes: Record<string, number>;
  /** Requests that got no response (dial or read errors). */
  errors: number;
}

/** Parses hey's default summary output. */
export function parseHey(text: string): HeyResult {
  const rps = /Requests\/sec:\s+([0-9.]+)/.exec(text);
  if (!rps) throw new BenchParseError('hey', 'Requests/sec', text);
  const latencyMs: Record<string, number> = {};
  for (const m of text.matchAll(/^\s+(\d+(?:\.\d+)?)%\s+in\s+([0-9.]+)\s+secs/gm)) {
    latencyMs[String(Number(m[1]))] = +(Number(m[2]) * 1000).toFixed(6);
  }
  if (latencyMs['50'] === undefined || latencyMs['99'] === undefined) throw new BenchParseError('hey', 'the latency distribution', text);
  const statusCodes: Record<string, number> = {};
  const codes = text.split(/Status code distribution:/)[1]?.split(/Error distribution:/)[0] ?? '';
  for (const m of codes.matchAll(/\[(\d+)\]\s+(\d+)\s+responses/g)) statusCodes[m[1]!] = Number(m[2]);
  let errors = 0;
  const errs = text.split(/Error distribution:/)[1] ?? '';
  for (const m of errs.matchAll(/^\s+\[(\d+)\]\s/gm)) errors += Number(m[1]);
  return { requestsPerSec: Number(rps[1]), latencyMs, statusCodes, errors };
}

export interface IperfResult {
  /** Receiver-side goodput, bits/s. */
  receivedBitsPerSec: number;
  sentBitsPerSec: number;
  retransmits: number;
  seconds: number;
}

/** Parses `iperf3 -J` output (client side). */
export function parseIperf3(text: string): IperfResult {
  let doc: {
    error?: string;
    end?: { sum_sent?: { bits_per_second?: number; retransmits?: number; seconds?: number }; sum_received?: { bits_per_second?: number; seconds?: number } };
  };
  try {
    doc = JSON.parse(text) as typeof doc;
  } catch {
    throw new BenchParseError('iperf3', 'JSON (run with -J)', text);
  }
  if (doc.error) throw new BenchParseError('iperf3', `a result (iperf3 said: ${doc.error})`, text);
  const recv = doc.end?.sum_received?.bits_per_second;
  const sent = doc.end?.sum_sent?.bits_per_second;
  if (recv === undefined || sent === undefined) throw new BenchParseError('iperf3', 'end.sum_received / end.sum_sent', text);
  return { receivedBitsPerSec: recv, sentBitsPerSec: sent, retransmits: doc.end?.sum_sent?.retransmits ?? 0, seconds: doc.end?.sum_received?.seconds ?? 0 };
}

/** utime + stime (clock ticks) from the text of /proc/<pid>/stat; the comm field may hold spaces and parentheses. */
export function parseProcStatCpuTicks(text: string): number {
  const close = text.lastIndexOf(')');
  if (close < 0) throw new BenchParseError('/proc/<pid>/stat', 'the comm field', text);
  // After ") ": field 3 (state) is index 0, so utime (14) is index 11 and stime (15) index 12.
  const f = text.slice(close + 2).trim().split(/\s+/);
  const utime = Number(f[11]);
  const stime = Number(f[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) throw new BenchParseError('/proc/<pid>/stat', 'utime and stime', text);
  return utime + stime;
}

/**
 * A `Vm...:   1234 kB` line of /proc/<pid>/status, in kB (VmHWM = peak RSS, VmRSS = current,
 * RssAnon = the anonymous part of VmRSS: what the process itself allocated, without shared file pages).
 */
export function parseProcStatusKb(text: string, field: 'VmHWM' | 'VmRSS' | 'RssAnon'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text);
  if (!m) throw new BenchParseError('/proc/<pid>/status', field, text);
  return Number(m[1]);
}

export interface CpuProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

export interface CpuProfile {
  nodes: CpuProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
}

export interface ProfileEntry {
  /** `name (file:line)`; `(program)`, `(garbage collector)` and `(idle)` as V8 names them. */
  frame: string;
  selfMs: number;
  /** Share of the non-idle samples. */
  selfPercent: number;
}

/** Top functions by self time of a `.cpuprofile` (V8's format, written by `node --cpu-prof`). */
export function topSelfTime(profile: CpuProfile, top = 15, repoRoot = ''): ProfileEntry[] {
  const totalHits = profile.nodes.reduce((a, n) => a + (n.hitCount ?? 0), 0);
  if (totalHits === 0) return [];
  const msPerHit = (profile.endTime - profile.startTime) / 1000 / totalHits;
  const byFrame = new Map<string, number>();
  let idle = 0;
  for (const n of profile.nodes) {
    const hits = n.hitCount ?? 0;
    if (hits === 0) continue;
    const { functionName, url, lineNumber } = n.callFrame;
    if (functionName === '(idle)') { idle += hits; continue; }
    let file = url.replace(/^file:\/\//, '');
    if (repoRoot && file.startsWith(repoRoot)) file = file.slice(repoRoot.length).replace(/^\//, '');
    const frame = file ? `${functionName || '(anonymous)'} (${file}:${lineNumber + 1})` : functionName || '(anonymous)';
    byFrame.set(frame, (byFrame.get(frame) ?? 0) + hits);
  }
  const busy = totalHits - idle;
  return [...byFrame.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([frame, hits]) => ({ frame, selfMs: +(hits * msPerHit).toFixed(1), selfPercent: +(100 * hits / Math.max(1, busy)).toFixed(1) }));
}

export interface HboneBenchFigure {
  figure: string;
  path: string;
  value: number;
  unit: string;
}

/** The `hbone-bench <figure> <path>: <value> <unit>` lines of bench/hbone-throughput.ts. */
export function parseHboneBench(text: string): HboneBenchFigure[] {
  const out: HboneBenchFigure[] = [];
  for (const m of text.matchAll(/^hbone-bench (.+) ([a-z][a-z-]*): ([0-9.]+) (MB\/s|req\/s)/gm)) {
    out.push({ figure: m[1]!, path: m[2]!, value: Number(m[3]), unit: m[4]! });
  }
  return out;
}

/** The last line of a tool's output that parses as a JSON object (bench/ca-sign.ts --json, bench/controller-push.ts). */
export function lastJsonLine(text: string): Record<string, unknown> | undefined {
  const lines = text.trim().split('\n').reverse();
  for (const line of lines) {
    const t = line.trim();
    if (!t.startsWith('{')) continue;
    try {
      return JSON.parse(t) as Record<string, unknown>;
    } catch {
      /* not JSON after all */
    }
  }
  return undefined;
}

/** The value of an unlabelled sample in Prometheus text exposition (`name 123`), or undefined. */
export function promSample(text: string, name: string): number | undefined {
  const m = new RegExp(`^${name.replace(/[^a-zA-Z0-9_:]/g, '')}(?:\\{\\})? ([0-9.eE+-]+)`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

/** Self time of a `.cpuprofile` by where the code lives, in % of the non-idle samples. */
export function selfTimeByOrigin(profile: CpuProfile, repoRoot: string): Record<string, number> {
  const hits: Record<string, number> = {};
  let busy = 0;
  for (const n of profile.nodes) {
    const h = n.hitCount ?? 0;
    const { functionName, url } = n.callFrame;
    if (h === 0 || functionName === '(idle)') continue;
    busy += h;
    let origin: string;
    if (functionName === '(program)') origin = 'native, outside JS calls (libuv, TLS reads, HTTP/2 parsing)';
    else if (functionName === '(garbage collector)') origin = 'garbage collector';
    else if (!url) origin = 'native calls from JS (socket and TLS writes: writeBuffer, writev)';
    else if (url.startsWith('node:')) origin = 'Node internals (streams, net, http2, tls)';
    else if (url.includes('/node_modules/')) origin = 'dependencies (node_modules)';
    else if (url.replace(/^file:\/\//, '').startsWith(repoRoot)) origin = 'Weft code (lib/, agent/)';
    else origin = 'other';
    hits[origin] = (hits[origin] ?? 0) + h;
  }
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(hits).sort((a, b) => b[1] - a[1])) out[k] = +(100 * v / Math.max(1, busy)).toFixed(1);
  return out;
}
