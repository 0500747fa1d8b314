// `make bench` (root): Weft side by side with stunnel and HAProxy on one network-namespace
// topology, in one run, plus the micro-benchmarks (CA signing, controller push, loopback HBONE).
//
//   node bench/run.ts [--seconds 10] [--rate 1000] [--cases direct,weft-l4,...] [--no-micro]
//                     [--warmup 5]  (seconds of wrk at saturation before each case is measured, so that
//                                    V8 has compiled the hot path of a proxy that just started)
//                     [--no-bulk]   (no iperf3)
//                     [--profile]   (agents and waypoint under `node --cpu-prof`; prints where their time goes)
//                     [--repeat 3]  (every case N times on the same topology; the table shows medians and
//                                    spreads, the JSON keeps every run under `runs`)
//                     [--splice]    (agents run with --splice: same-node connections spliced in the
//                                    kernel instead of carried by the agent's pipe, for a before/after)
// Cases: direct, direct-same-node, weft-l4, weft-same-node, weft-same-node-splice, weft-l7, stunnel,
// haproxy, cross-network (all by default). weft-same-node-splice adds a third node whose agent runs
// with --splice (off by default), its own client and servers on it. cross-network runs after this topology is gone: bench/cross-network.ts builds
// two clusters (cli/local/multicluster.ts) and measures, from cluster1's client, the in-cluster L4
// path and the cross-network one (cluster2's east-west gateway, double HBONE); both become rows of
// the one table, the cross-network row's added latency measured against the in-cluster row.
//
// Topology (cli/local/mesh.ts): node1 and node2 on a bridge, pods as network namespaces.
//   namespace `bench` (ambient): client (node1), web = nginx (node2), near = nginx (node1),
//                                iperf (node2), near-iperf (node1), each behind a service VIP
//   namespace `l7` (ambient, uses a waypoint on node2 with one HTTPRoute and one L7 ALLOW policy):
//                                client (node1), web = nginx (node2)
//   namespace `plain` (not in the mesh): client (node1), web = nginx (node2), near = nginx (node1),
//                                iperf (node2), near-iperf (node1)
//   stunnel and HAProxy pairs: one end in node1's netns, the other in node2's, in front of plain/web
//   and plain/iperf.
// Every load tool runs inside a client pod (its netns and cgroup, so eBPF steers it when ambient).
// Everything carries one prefix (`wb` + 4 characters) and is removed at the end, on failure and on
// SIGINT/SIGTERM. Results: a table on stdout and bench/results/latest.json.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, copyFileSync, existsSync } from 'node:fs';
import { once } from 'node:events';
import { collectOutput } from '../lib/sys/exec.ts';
import { tmpdir, cpus, release, loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { LocalMesh, REPO_ROOT, type Workload } from '../cli/local/mesh.ts';
import type { LocalPod } from '../cli/local/network.ts';
import {
  parseHey, parseIperf3, parseWrk, parseProcStatCpuTicks, parseProcStatusKb, parseHboneBench, lastJsonLine, topSelfTime, promSample, selfTimeByOrigin,
  type HeyResult, type IperfResult, type WrkResult, type CpuProfile,
} from './parse.ts';
import {
  nginxConf, makePairCerts, stunnelClientConf, stunnelServerConf, haproxyClientConf, haproxyServerConf, type PairSpec,
} from './proxies.ts';
import { report, medianCases, crossNetworkRows, type CrossNetworkResult, type CaseResult, type BenchResults } from './report.ts';

const CLOCK_TICKS = 100; // USER_HZ on Linux
const NGINX_PORT = 8080;
const IPERF_PORT = 5201;
const VIP = { web: '10.96.0.10', near: '10.96.0.11', iperf: '10.96.0.12', nearIperf: '10.96.0.13', nearSplice: '10.96.0.14', nearSpliceIperf: '10.96.0.15', l7: '10.96.0.20' };
const WRK_THREADS = 2;
const WRK_CONNECTIONS = 16;
const HEY_WORKERS = 10;
const STUNNEL_PORTS = { frontHttp: 18081, frontTcp: 18082, backHttp: 18443, backTcp: 18444 };
const HAPROXY_PORTS = { frontHttp: 18091, frontTcp: 18092, backHttp: 18543, backTcp: 18544 };
const ALL_CASES = ['direct', 'direct-same-node', 'weft-l4', 'weft-same-node', 'weft-same-node-splice', 'weft-l7', 'stunnel', 'haproxy', 'cross-network'] as const;
type CaseName = typeof ALL_CASES[number];

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '10' },
    rate: { type: 'string', default: '1000' },
    warmup: { type: 'string', default: '5' },
    cases: { type: 'string', default: ALL_CASES.join(',') },
    'no-micro': { type: 'boolean', default: false },
    profile: { type: 'boolean', default: false },
    'no-bulk': { type: 'boolean', default: false },
    splice: { type: 'boolean', default: false },
    repeat: { type: 'string', default: '1' },
    out: { type: 'string', default: join(REPO_ROOT, 'bench', 'results', 'latest.json') },
  },
});
const SECONDS = Number(values.seconds);
const RATE = Number(values.rate);
const WARMUP_SECONDS = Number(values.warmup);
const PROFILE = values.profile;
const REPEAT = Number(values.repeat);
if (!Number.isInteger(REPEAT) || REPEAT < 1) throw new Error(`--repeat: expected a whole number ≥ 1, got "${values.repeat}"`);
if (!Number.isInteger(WARMUP_SECONDS) || WARMUP_SECONDS < 0) throw new Error(`--warmup: expected whole seconds ≥ 0, got "${values.warmup}"`);
const selected = new Set(values.cases.split(',').map((s) => s.trim()).filter(Boolean));
for (const c of selected) if (!(ALL_CASES as readonly string[]).includes(c)) throw new Error(`unknown case "${c}"; cases are ${ALL_CASES.join(', ')}`);

const log = (msg: string) => process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);

// ---- processes ----

interface Output { code: number | null; stdout: string; stderr: string }

async function collect(child: ChildProcess, timeoutMs: number): Promise<Output> {
  const { code, stdout, stderr } = await collectOutput(child, timeoutMs);
  return { code, stdout, stderr };
}

function cpuTicks(pid: number): number | undefined {
  try { return parseProcStatCpuTicks(readFileSync(`/proc/${pid}/stat`, 'utf8')); } catch { return undefined; }
}

function statusKb(pid: number, field: 'VmHWM' | 'VmRSS' | 'RssAnon'): number | undefined {
  try { return parseProcStatusKb(readFileSync(`/proc/${pid}/status`, 'utf8'), field); } catch { return undefined; }
}

interface Proc { label: string; pid: number }

/** How long a case's processes sit without load before their RSS is sampled again ("settled"). */
const SETTLE_MS = 10_000;

/** VmRSS and RssAnon of each process now, MB. */
function rssNow(procs: Proc[]): [Record<string, number>, Record<string, number>] {
  const rss: Record<string, number> = {};
  const anon: Record<string, number> = {};
  for (const p of procs) {
    const kb = statusKb(p.pid, 'VmRSS');
    if (kb !== undefined) rss[p.label] = +(kb / 1024).toFixed(1);
    const a = statusKb(p.pid, 'RssAnon');
    if (a !== undefined) anon[p.label] = +(a / 1024).toFixed(1);
  }
  return [rss, anon];
}

/** CPU seconds each process spent while `fn` ran, and the highest RSS sampled meanwhile. */
async function measured<T>(procs: Proc[], fn: () => Promise<T>): Promise<{ value: T; cpuSeconds: Record<string, number>; maxRssMb: Record<string, number>; maxRssAnonMb: Record<string, number> }> {
  const before = procs.map((p) => cpuTicks(p.pid));
  const maxRss = new Map<string, number>();
  const maxAnon = new Map<string, number>();
  const sample = () => {
    for (const p of procs) {
      const kb = statusKb(p.pid, 'VmRSS');
      if (kb !== undefined) maxRss.set(p.label, Math.max(maxRss.get(p.label) ?? 0, kb));
      const anon = statusKb(p.pid, 'RssAnon');
      if (anon !== undefined) maxAnon.set(p.label, Math.max(maxAnon.get(p.label) ?? 0, anon));
    }
  };
  const timer = setInterval(sample, 250);
  sample();
  let value: T;
  try {
    value = await fn();
  } finally {
    clearInterval(timer);
  }
  sample();
  const cpuSeconds: Record<string, number> = {};
  const maxRssMb: Record<string, number> = {};
  const maxRssAnonMb: Record<string, number> = {};
  procs.forEach((p, i) => {
    const anon = maxAnon.get(p.label);
    if (anon !== undefined) maxRssAnonMb[p.label] = +(anon / 1024).toFixed(1);
    const a = before[i];
    const b = cpuTicks(p.pid);
    if (a !== undefined && b !== undefined) cpuSeconds[p.label] = +((b - a) / CLOCK_TICKS).toFixed(2);
    const kb = maxRss.get(p.label);
    if (kb !== undefined) maxRssMb[p.label] = +(kb / 1024).toFixed(1);
  });
  return { value, cpuSeconds, maxRssMb, maxRssAnonMb };
}

// ---- the topology ----

const prefix = `wb${randomBytes(4).toString('hex').replace(/[^a-z0-9]/g, '').slice(0, 4)}`;
const stateDir = mkdtempSync(join(tmpdir(), 'weft-bench-'));
let mesh: LocalMesh | undefined;
let destroyed = false;
/** Micro-benchmark children (outside the mesh's cgroups): killed on interrupt too. */
const microChildren = new Set<ChildProcess>();
/** bench/cross-network.ts, which removes its own two clusters on SIGINT. */
let crossNetworkChild: ChildProcess | undefined;

function cleanupSync(): void {
  if (crossNetworkChild?.exitCode === null) crossNetworkChild.kill('SIGINT');
  if (destroyed) return;
  destroyed = true;
  for (const c of microChildren) c.kill('SIGKILL');
  try { mesh?.net.destroySync(); } catch (err) { process.stderr.write(`bench cleanup: ${(err as Error).message}\n`); }
  rmSync(stateDir, { recursive: true, force: true });
}
process.on('exit', cleanupSync);
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    log(`${sig}: removing ${prefix}-* and exiting`);
    cleanupSync();
    process.exit(130);
  });
}

interface Case {
  name: CaseName;
  title: string;
  client: LocalPod;
  url: string;
  iperf?: { host: string; port: number };
  procs: () => Proc[];
  /** The case whose latency is subtracted for "added" latency. */
  baseline: CaseName;
}

function inPod(pod: LocalPod, cmd: string, args: string[], timeoutMs: number): Promise<Output> {
  return collect(mesh!.net.spawn(pod, cmd, args), timeoutMs);
}

async function waitHttp(pod: LocalPod, url: string, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: Output | undefined;
  while (Date.now() < deadline) {
    last = await inPod(pod, 'curl', ['-sS', '--max-time', '3', '-o', '/dev/null', '-w', '%{http_code}', url], 5_000);
    if (last.code === 0 && last.stdout.trim() === '200') return;
    await sleep(250);
  }
  throw new Error(`${what}: ${url} did not answer 200 from ${pod.namespace}/${pod.name} within ${timeoutMs} ms (curl: ${last?.stderr.trim() || last?.stdout})`);
}

async function waitTcp(pod: LocalPod, host: string, port: number, what: string, timeoutMs = 20_000): Promise<void> {
  // An iperf3 server takes one test at a time, so probe with a tiny test rather than a bare connect.
  const deadline = Date.now() + timeoutMs;
  let last: Output | undefined;
  while (Date.now() < deadline) {
    last = await inPod(pod, 'iperf3', ['-c', host, '-p', String(port), '-n', '64K', '-J'], 10_000);
    if (last.code === 0) return;
    await sleep(500);
  }
  throw new Error(`${what}: iperf3 to ${host}:${port} failed from ${pod.namespace}/${pod.name}: ${last?.stdout.slice(0, 300)}${last?.stderr}`);
}

function nginxCommand(name: string): string[] {
  const dir = join(stateDir, `nginx-${name}`);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'nginx.conf'), nginxConf(dir, NGINX_PORT));
  return ['/usr/sbin/nginx', '-c', join(dir, 'nginx.conf'), '-p', dir];
}

/** A daemon in a node's network namespace, in a cgroup of its own under the mesh's `system` folder. */
function startOnNode(node: string, name: string, cmd: string, args: string[]): ChildProcess {
  const m = mesh!;
  const cgroup = join(m.net.cgroupDir, 'system', name);
  mkdirSync(cgroup, { recursive: true });
  return m.net.spawn({ netns: m.node(node).netns, cgroup }, cmd, args, { logFile: join(m.logDir, `${name}.log`) });
}

// ---- measurements ----

async function runWrk(c: Case, seconds: number): Promise<WrkResult> {
  const args = [`-t${WRK_THREADS}`, `-c${WRK_CONNECTIONS}`, `-d${seconds}s`, '--latency', c.url];
  const r = await inPod(c.client, 'wrk', args, (seconds + 30) * 1000);
  if (r.code !== 0) throw new Error(`wrk ${args.join(' ')} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return parseWrk(r.stdout);
}

async function runHey(c: Case, seconds: number): Promise<HeyResult> {
  const perWorker = RATE / HEY_WORKERS;
  const args = ['-z', `${seconds}s`, '-q', String(perWorker), '-c', String(HEY_WORKERS), c.url];
  const r = await inPod(c.client, 'hey', args, (seconds + 30) * 1000);
  if (r.code !== 0) throw new Error(`hey ${args.join(' ')} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return parseHey(r.stdout);
}

async function runIperf(c: Case): Promise<IperfResult> {
  const { host, port } = c.iperf!;
  const args = ['-c', host, '-p', String(port), '-t', String(SECONDS), '-J'];
  const r = await inPod(c.client, 'iperf3', args, (SECONDS + 30) * 1000);
  if (r.code !== 0) throw new Error(`iperf3 ${args.join(' ')} failed (${r.code}): ${r.stdout.slice(0, 500)}${r.stderr}`);
  return parseIperf3(r.stdout);
}

async function runCase(c: Case): Promise<CaseResult> {
  const procs = c.procs();
  const res: CaseResult = { name: c.name, title: c.title, baseline: c.baseline, proxies: procs.map((p) => p.label), errors: [] };
  [res.rssMbIdle, res.rssAnonMbIdle] = rssNow(procs);
  // Fixed rate first, so the RSS at that rate is not the high-water mark of the saturation run.
  log(`${c.title}: warm-up (wrk ${WARMUP_SECONDS} s, hey 2 s), then hey at ${RATE} req/s`);
  try {
    // A proxy that just started (the waypoint starts for its case) runs its first tens of thousands
    // of requests partly in V8's interpreter and baseline tiers, with its optimising compilers busy
    // on other threads: bench/waypoint-cpu.ts measured 338 µs per request in its first 10 s at
    // 1,000 req/s after 5,000 requests, and 195-258 µs in the 70 s after (docs/PERFORMANCE.md).
    // The figures are for a proxy in service, so each case first runs at saturation.
    if (WARMUP_SECONDS > 0) await runWrk(c, WARMUP_SECONDS);
    await runHey(c, 2);
    const h = await measured(procs, () => runHey(c, SECONDS));
    res.hey = h.value;
    res.cpuSecondsAtRate = h.cpuSeconds;
    res.rssMbAtRate = h.maxRssMb;
    res.rssAnonMbAtRate = h.maxRssAnonMb;
  } catch (err) { res.errors.push(`hey: ${(err as Error).message}`); }
  log(`${c.title}: wrk -t${WRK_THREADS} -c${WRK_CONNECTIONS} -d${SECONDS}s`);
  try {
    const w = await measured(procs, () => runWrk(c, SECONDS));
    res.wrk = w.value;
    res.cpuSecondsSaturation = w.cpuSeconds;
  } catch (err) { res.errors.push(`wrk: ${(err as Error).message}`); }
  if (c.iperf && !values['no-bulk']) {
    log(`${c.title}: iperf3 single stream`);
    try {
      const i = await measured(procs, () => runIperf(c));
      res.iperf = i.value;
      res.cpuSecondsBulk = i.cpuSeconds;
    } catch (err) { res.errors.push(`iperf3: ${(err as Error).message}`); }
  }
  if (procs.length > 0) {
    // Whether memory comes back once the load is gone (issue 20: "back near idle after a bulk stream").
    await sleep(SETTLE_MS);
    [res.rssMbSettled, res.rssAnonMbSettled] = rssNow(procs);
  }
  if (c.name.startsWith('weft-')) {
    // The agents' own view of their memory (prom-client default metrics) after the case.
    res.agentMemoryMb = {};
    for (const node of procs.filter((p) => p.label.startsWith('agent-')).map((p) => p.label.slice('agent-'.length))) {
      try {
        const text = await mesh!.agentMetrics(node);
        const mb = (name: string) => { const v = promSample(text, name); return v === undefined ? -1 : +(v / 1048576).toFixed(1); };
        res.agentMemoryMb[`agent-${node}`] = {
          rss: mb('process_resident_memory_bytes'), heapUsed: mb('nodejs_heap_size_used_bytes'),
          heapTotal: mb('nodejs_heap_size_total_bytes'), external: mb('nodejs_external_memory_bytes'),
        };
      } catch (err) { res.errors.push(`agent metrics on ${node}: ${(err as Error).message}`); }
    }
  }
  res.peakRssMb = {};
  for (const p of procs) {
    const kb = statusKb(p.pid, 'VmHWM');
    if (kb !== undefined) res.peakRssMb[p.label] = +(kb / 1024).toFixed(1);
  }
  for (const e of res.errors) log(`${c.title}: ${e}`);
  return res;
}

// ---- micro-benchmarks (child processes, run before the topology exists) ----

/** Runs bench/<script> as a child; `track` sees it while it runs (to be stopped on interrupt). */
async function benchScript(script: string, args: string[], timeoutMs: number, track: (child: ChildProcess | undefined) => void): Promise<Output> {
  const child = spawn(process.execPath, [join(REPO_ROOT, 'bench', script), ...args], { cwd: REPO_ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
  track(child);
  const r = await collect(child, timeoutMs);
  track(undefined);
  if (r.code !== 0 && !r.stderr.trim()) r.stderr = `exited with ${r.code ?? 'a signal'} (killed after ${timeoutMs / 1000} s?)`;
  return r;
}

async function micro(): Promise<BenchResults['micro']> {
  const node = (script: string, args: string[], timeoutMs: number): Promise<Output> => {
    let mine: ChildProcess | undefined;
    return benchScript(script, args, timeoutMs, (c) => {
      if (c) microChildren.add((mine = c));
      else if (mine) microChildren.delete(mine);
    });
  };
  const out: BenchResults['micro'] = {};
  log('micro: bench/ca-sign.ts --json');
  const ca = await node('ca-sign.ts', ['--json', '--seconds', '3'], 60_000);
  out.caSign = ca.code === 0 ? lastJsonLine(ca.stdout) : { error: ca.stderr.slice(-500) };
  log('micro: bench/controller-push.ts');
  const push = await node('controller-push.ts', [], 180_000);
  out.controllerPush = push.code === 0 ? lastJsonLine(push.stdout) : { error: push.stderr.slice(-500) };
  log('micro: bench/hbone-throughput.ts --mb 256 --repeat 1 --seconds 3');
  const hb = await node('hbone-throughput.ts', ['--mb', '256', '--repeat', '1', '--seconds', '3'], 180_000);
  out.hbone = hb.code === 0 ? { figures: parseHboneBench(hb.stdout), cpuLines: hb.stdout.split('\n').filter((l) => l.includes('cpu ms per GB')) } : { error: hb.stderr.slice(-500) };
  return out;
}

// ---- main ----

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('make bench needs root (network namespaces, cgroups, eBPF); run it with sudo');
  const started = Date.now();
  const results: BenchResults = {
    startedAt: new Date().toISOString(),
    host: { cpus: cpus().length, kernel: release(), node: process.version, loadavgAtStart: loadavg()[0]! },
    settings: { seconds: SECONDS, rate: RATE, repeat: REPEAT, wrk: `-t${WRK_THREADS} -c${WRK_CONNECTIONS} -d${SECONDS}s --latency`, hey: `-z ${SECONDS}s -q ${RATE / HEY_WORKERS} -c ${HEY_WORKERS}`, iperf3: `-t ${SECONDS} (one stream)` },
    cases: [],
    notes: [],
  };
  if (!values['no-micro'] && !PROFILE) results.micro = await micro();

  if ([...selected].some((c) => c !== 'cross-network')) await singleCluster(results);

  if (selected.has('cross-network')) await crossNetwork(results);
  results.durationSeconds = Math.round((Date.now() - started) / 1000);
  results.host.loadavgAtEnd = loadavg()[0]!;
  log(`measured in ${results.durationSeconds} s`);

  mkdirSync(join(values.out, '..'), { recursive: true });
  writeFileSync(values.out, JSON.stringify(results, null, 2) + '\n');
  process.stdout.write(report(results));
  process.stdout.write(`\nJSON: ${values.out}\n`);
}

/** Every selected case of the single-cluster topology (two nodes, stunnel and HAProxy pairs), built and removed here. */
async function singleCluster(results: BenchResults): Promise<void> {
  // weft-same-node-splice: a third node whose agent runs with --splice (off by default), so that
  // one run shows the same-node path both ways. With --splice every agent splices: no third node.
  const spliceNode = selected.has('weft-same-node-splice') && !values.splice;
  if (values.splice) selected.delete('weft-same-node-splice');
  const nodes = ['node1', 'node2', ...(spliceNode ? ['node3'] : [])];
  log(`topology ${prefix}: ${nodes.length} nodes, controller, ${nodes.length} agents${spliceNode ? ' (node3\'s with --splice)' : ''}${PROFILE ? ' (under --cpu-prof)' : ''}`);
  mesh = await LocalMesh.create({ prefix, stateDir, nodes, logLevel: 'warn', ...(values.splice ? { agentArgs: ['--splice'] } : {}) });
  if (values.splice) results.notes.push('agents ran with --splice: same-node connections spliced in the kernel, not carried by the agent\'s pipe');
  if (spliceNode) results.notes.push('weft-same-node-splice: a third node (node3) whose agent runs with --splice, its client and servers on it; the default install does not splice');
  const m = mesh;
  m.writeConfig('10-bench.yaml', [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'bench', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'plain' } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: 'bench' }, spec: { clusterIP: VIP.web, selector: { app: 'web' }, ports: [{ name: 'http', port: 80, targetPort: NGINX_PORT }] } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'near', namespace: 'bench' }, spec: { clusterIP: VIP.near, selector: { app: 'near' }, ports: [{ name: 'http', port: 80, targetPort: NGINX_PORT }] } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'iperf', namespace: 'bench' }, spec: { clusterIP: VIP.iperf, selector: { app: 'iperf' }, ports: [{ name: 'tcp', port: IPERF_PORT, targetPort: IPERF_PORT }] } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'near-iperf', namespace: 'bench' }, spec: { clusterIP: VIP.nearIperf, selector: { app: 'near-iperf' }, ports: [{ name: 'tcp', port: IPERF_PORT, targetPort: IPERF_PORT }] } },
    ...(spliceNode ? [
      { apiVersion: 'v1', kind: 'Service', metadata: { name: 'near-splice', namespace: 'bench' }, spec: { clusterIP: VIP.nearSplice, selector: { app: 'near-splice' }, ports: [{ name: 'http', port: 80, targetPort: NGINX_PORT }] } },
      { apiVersion: 'v1', kind: 'Service', metadata: { name: 'near-splice-iperf', namespace: 'bench' }, spec: { clusterIP: VIP.nearSpliceIperf, selector: { app: 'near-splice-iperf' }, ports: [{ name: 'tcp', port: IPERF_PORT, targetPort: IPERF_PORT }] } },
    ] : []),
  ]);
  m.startController();
  await m.waitControllerReady();
  const profDir = join(stateDir, 'cpu-prof');
  withProfile(PROFILE, profDir, () => m.startAgents(spliceNode ? { node3: ['--splice'] } : {}));
  await m.waitReady(60_000);

  // L7: namespace `l7` uses a waypoint (on node2) with one HTTPRoute and one L7 ALLOW policy.
  let l7Note: string | undefined;
  if (selected.has('weft-l7')) {
    m.writeConfig('20-l7.yaml', [
      { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'l7', labels: { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'waypoint' } } },
      { apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: 'l7' }, spec: { clusterIP: VIP.l7, selector: { app: 'web' }, ports: [{ name: 'http', port: 80, targetPort: NGINX_PORT }] } },
      {
        apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'web', namespace: 'l7' },
        spec: { parentRefs: [{ group: '', kind: 'Service', name: 'web', port: 80 }], rules: [{ matches: [{ path: { type: 'PathPrefix', value: '/' } }], backendRefs: [{ name: 'web', port: 80 }] }] },
      },
      {
        apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'client-get', namespace: 'l7' },
        spec: { targetRefs: [{ kind: 'Service', group: '', name: 'web' }], action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/l7/sa/client'] } }], to: [{ operation: { methods: ['GET'] } }] }] },
      },
    ]);
    try {
      // No per-request access log, like the HAProxy pair (which logs nothing).
      // Its pod starts through the CNI plugin after this returns, so the profile flags go in its own env.
      m.startWaypoint('node2', 'l7', 'waypoint', { extraArgs: ['--access-log', 'off'], ...(PROFILE ? { env: { NODE_OPTIONS: profileNodeOptions(profDir) } } : {}) });
      await m.waitWaypointReady('l7');
    } catch (err) {
      l7Note = `weft-l7: not measured — the waypoint did not start: ${(err as Error).message.split('\n')[0]}`;
    }
  }

  const iperfServer = ['/usr/bin/iperf3', '-s', '-p', String(IPERF_PORT)];
  const w: Record<string, Workload> = {};
  w.client = await m.startWorkload({ node: 'node1', namespace: 'bench', name: 'client' });
  w.web = await m.startWorkload({ node: 'node2', namespace: 'bench', name: 'web', labels: { app: 'web' }, command: nginxCommand('bench-web') });
  w.near = await m.startWorkload({ node: 'node1', namespace: 'bench', name: 'near', labels: { app: 'near' }, command: nginxCommand('bench-near') });
  w.iperf = await m.startWorkload({ node: 'node2', namespace: 'bench', name: 'iperf', labels: { app: 'iperf' }, command: iperfServer });
  w.nearIperf = await m.startWorkload({ node: 'node1', namespace: 'bench', name: 'near-iperf', labels: { app: 'near-iperf' }, command: iperfServer });
  if (spliceNode) {
    w.client3 = await m.startWorkload({ node: 'node3', namespace: 'bench', name: 'client3' });
    w.nearSplice = await m.startWorkload({ node: 'node3', namespace: 'bench', name: 'near-splice', labels: { app: 'near-splice' }, command: nginxCommand('bench-near-splice') });
    w.nearSpliceIperf = await m.startWorkload({ node: 'node3', namespace: 'bench', name: 'near-splice-iperf', labels: { app: 'near-splice-iperf' }, command: iperfServer });
  }
  if (selected.has('weft-l7') && !l7Note) {
    w.l7client = await m.startWorkload({ node: 'node1', namespace: 'l7', name: 'client' });
    w.l7web = await m.startWorkload({ node: 'node2', namespace: 'l7', name: 'web', labels: { app: 'web' }, command: nginxCommand('l7-web') });
  }
  w.pclient = m.addWorkload({ node: 'node1', namespace: 'plain', name: 'client' });
  w.pweb = m.addWorkload({ node: 'node2', namespace: 'plain', name: 'web', labels: { app: 'pweb' }, command: nginxCommand('plain-web') });
  w.pnear = m.addWorkload({ node: 'node1', namespace: 'plain', name: 'near', labels: { app: 'pnear' }, command: nginxCommand('plain-near') });
  w.piperf = m.addWorkload({ node: 'node2', namespace: 'plain', name: 'iperf', labels: { app: 'piperf' }, command: iperfServer });
  w.pnearIperf = m.addWorkload({ node: 'node1', namespace: 'plain', name: 'near-iperf', labels: { app: 'pnear-iperf' }, command: iperfServer });

  const n1 = m.node('node1').ip;
  const n2 = m.node('node2').ip;
  const pair = (ports: PairSpec['ports'], certs: PairSpec['certs']): PairSpec => ({
    ports, clientNodeIp: n1, serverNodeIp: n2, certs,
    httpTarget: `${w.pweb!.pod.ip}:${NGINX_PORT}`, tcpTarget: `${w.piperf!.pod.ip}:${IPERF_PORT}`,
  });
  const procsOf = new Map<string, Proc[]>();
  const agentProcs = (): Proc[] => ['node1', 'node2'].map((n) => ({ label: `agent-${n}`, pid: m.agents.get(n)!.pid! }));
  if (selected.has('stunnel') || selected.has('haproxy')) {
    const certDir = join(stateDir, 'certs');
    mkdirSync(certDir, { recursive: true });
    const certs = makePairCerts(certDir);
    if (selected.has('stunnel')) {
      const spec = pair(STUNNEL_PORTS, certs);
      writeFileSync(join(stateDir, 'stunnel-server.conf'), stunnelServerConf(spec));
      writeFileSync(join(stateDir, 'stunnel-client.conf'), stunnelClientConf(spec));
      const s = startOnNode('node2', 'stunnel-node2', 'stunnel', [join(stateDir, 'stunnel-server.conf')]);
      const c = startOnNode('node1', 'stunnel-node1', 'stunnel', [join(stateDir, 'stunnel-client.conf')]);
      procsOf.set('stunnel', [{ label: 'stunnel-node1', pid: c.pid! }, { label: 'stunnel-node2', pid: s.pid! }]);
    }
    if (selected.has('haproxy')) {
      const spec = pair(HAPROXY_PORTS, certs);
      writeFileSync(join(stateDir, 'haproxy-server.cfg'), haproxyServerConf(spec));
      writeFileSync(join(stateDir, 'haproxy-client.cfg'), haproxyClientConf(spec));
      const s = startOnNode('node2', 'haproxy-node2', 'haproxy', ['-db', '-f', join(stateDir, 'haproxy-server.cfg')]);
      const c = startOnNode('node1', 'haproxy-node1', 'haproxy', ['-db', '-f', join(stateDir, 'haproxy-client.cfg')]);
      procsOf.set('haproxy', [{ label: 'haproxy-node1', pid: c.pid! }, { label: 'haproxy-node2', pid: s.pid! }]);
    }
  }

  const cases: Case[] = [
    { name: 'direct', title: 'direct (no proxy)', client: w.pclient!.pod, url: `http://${w.pweb!.pod.ip}:${NGINX_PORT}/`, iperf: { host: w.piperf!.pod.ip, port: IPERF_PORT }, procs: () => [], baseline: 'direct' },
    { name: 'direct-same-node', title: 'direct, same node', client: w.pclient!.pod, url: `http://${w.pnear!.pod.ip}:${NGINX_PORT}/`, iperf: { host: w.pnearIperf!.pod.ip, port: IPERF_PORT }, procs: () => [], baseline: 'direct-same-node' },
    { name: 'weft-l4', title: 'Weft L4 (two agents, HBONE)', client: w.client!.pod, url: `http://${VIP.web}/`, iperf: { host: VIP.iperf, port: IPERF_PORT }, procs: agentProcs, baseline: 'direct' },
    { name: 'weft-same-node', title: 'Weft same node', client: w.client!.pod, url: `http://${VIP.near}/`, iperf: { host: VIP.nearIperf, port: IPERF_PORT }, procs: agentProcs, baseline: 'direct-same-node' },
    ...(spliceNode ? [{
      name: 'weft-same-node-splice', title: 'Weft same node, agent with --splice (node3)', client: w.client3!.pod, url: `http://${VIP.nearSplice}/`,
      iperf: { host: VIP.nearSpliceIperf, port: IPERF_PORT }, procs: () => [{ label: 'agent-node3', pid: m.agents.get('node3')!.pid! }], baseline: 'direct-same-node',
    } satisfies Case] : []),
    { name: 'stunnel', title: 'stunnel pair (mTLS, TCP)', client: w.pclient!.pod, url: `http://${n1}:${STUNNEL_PORTS.frontHttp}/`, iperf: { host: n1, port: STUNNEL_PORTS.frontTcp }, procs: () => procsOf.get('stunnel') ?? [], baseline: 'direct' },
    { name: 'haproxy', title: 'HAProxy pair (mTLS, HTTP mode)', client: w.pclient!.pod, url: `http://${n1}:${HAPROXY_PORTS.frontHttp}/`, iperf: { host: n1, port: HAPROXY_PORTS.frontTcp }, procs: () => procsOf.get('haproxy') ?? [], baseline: 'direct' },
  ];
  if (w.l7client) {
    const waypoint = m.workloads.get('l7/waypoint-0')!;
    cases.splice(4, 0, {
      name: 'weft-l7', title: 'Weft L7 (waypoint: route + L7 policy)', client: w.l7client.pod, url: `http://${VIP.l7}/`, baseline: 'direct',
      procs: () => [...agentProcs().slice(0, 1), { label: 'waypoint', pid: waypoint.process!.pid! }, ...agentProcs().slice(1)],
    });
    results.notes.push('weft-l7: iperf3 not run through the waypoint (an HTTP route; the bulk figure is the L4 path\'s); the waypoint runs with --access-log off, as the HAProxy pair logs nothing');
  } else if (l7Note) {
    results.notes.push(l7Note);
    selected.delete('weft-l7');
  }

  // Every path answers before anything is measured.
  for (const c of cases) {
    if (!selected.has(c.name)) continue;
    await waitHttp(c.client, c.url, c.title);
    if (c.iperf) await waitTcp(c.client, c.iperf.host, c.iperf.port, c.title);
  }

  if (w.l7client) {
    // The route and the policy are in force at the waypoint: a POST (not allowed) is refused.
    const deadline = Date.now() + 20_000;
    let code = '';
    while (Date.now() < deadline && code !== '403') {
      code = (await inPod(w.l7client.pod, 'curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '-X', 'POST', '--max-time', '3', `http://${VIP.l7}/`], 5_000)).stdout.trim();
      if (code !== '403') await sleep(250);
    }
    if (code !== '403') results.notes.push(`weft-l7: the L7 policy did not refuse a POST within 20 s (got ${code}); measured anyway`);
  }
  await sleep(3000); // let start-up work (JIT, config pushes, certificate fetches) finish before the first figure

  // Rounds of every selected case, so that slow drifts of the machine's load spread over all cases.
  results.runs = [];
  for (let round = 0; round < REPEAT; round++) {
    if (REPEAT > 1) log(`round ${round + 1} of ${REPEAT}`);
    const run: CaseResult[] = [];
    for (const c of cases) {
      if (!selected.has(c.name)) continue;
      run.push(await runCase(c));
      await sleep(1000); // let TIME_WAIT and GC settle between cases
    }
    results.runs.push(run);
  }
  results.cases = medianCases(results.runs);

  if (PROFILE) results.profile = await stopAndProfile(m, profDir);
  log(`single-cluster cases measured; removing ${prefix}-*`);
  await m.destroy();
  destroyed = true;
  rmSync(stateDir, { recursive: true, force: true });
}

/**
 * The cross-network case (issue 18): bench/cross-network.ts on its own two-cluster topology, once
 * (not repeated), with the same duration and rate; its two results become two rows of the table.
 */
async function crossNetwork(results: BenchResults): Promise<void> {
  log(`cross-network: bench/cross-network.ts --seconds ${SECONDS} --rate ${RATE} (two clusters)`);
  const r = await benchScript('cross-network.ts', ['--seconds', String(SECONDS), '--rate', String(RATE), '--json'], (4 * SECONDS + 600) * 1000, (c) => { crossNetworkChild = c; });
  const out = r.code === 0 ? lastJsonLine(r.stdout) as { results?: CrossNetworkResult[] } | undefined : undefined;
  if (!out?.results) {
    results.notes.push(`cross-network: not measured — bench/cross-network.ts failed: ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' / ')}`);
    return;
  }
  const rows = crossNetworkRows(out.results);
  results.cases.push(...rows);
  results.runs?.[0]?.push(...rows);
  results.notes.push('cross-network: its own topology (two clusters of two nodes, one run even with --repeat); added latency of the cross-network row is over that topology\'s in-cluster L4 row; no CPU or memory figures (the gateway and both clusters\' agents share the machine)');
}

/**
 * Runs `start` with `--cpu-prof` in NODE_OPTIONS when profiling: LocalMesh passes process.env to the
 * processes it starts, so only those started inside (the agents, the waypoint) are profiled.
 */
function withProfile<T>(on: boolean, dir: string, start: () => T): T {
  if (!on) return start();
  const saved = process.env.NODE_OPTIONS;
  process.env.NODE_OPTIONS = profileNodeOptions(dir);
  try {
    return start();
  } finally {
    if (saved === undefined) delete process.env.NODE_OPTIONS; else process.env.NODE_OPTIONS = saved;
  }
}

/** NODE_OPTIONS that make a Node process write a CPU profile into `dir` when it exits (the directory is created). */
function profileNodeOptions(dir: string): string {
  mkdirSync(dir, { recursive: true });
  return `${process.env.NODE_OPTIONS ?? ''} --cpu-prof --cpu-prof-dir=${dir}`.trim();
}

/** SIGTERM to the agents and the waypoint (they exit cleanly, so V8 writes the profiles), then where each one's time went. */
async function stopAndProfile(m: LocalMesh, dir: string): Promise<NonNullable<BenchResults['profile']>> {
  const out: NonNullable<BenchResults['profile']> = {};
  const keep = join(REPO_ROOT, 'bench', 'results');
  mkdirSync(keep, { recursive: true });
  const targets: Array<[string, ChildProcess]> = [...m.agents].map(([node, child]) => [`agent-${node}`, child]);
  const waypoint = m.workloads.get('l7/waypoint-0')?.process;
  if (waypoint) targets.push(['waypoint', waypoint]);
  // All at once: an agent drains open tunnels (the waypoint's keep-alive upstreams) for up to its
  // --drain-timeout (20 s) before it exits and V8 writes the profile.
  const before = new Set(existsSync(dir) ? readdirSync(dir) : []);
  const exited = new Map(targets.map(([who, child]) => [who, child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : once(child, 'exit').then(() => undefined)]));
  for (const [, child] of targets) if (child.exitCode === null) child.kill('SIGTERM');
  await Promise.race([Promise.all(exited.values()), sleep(30_000)]);
  const written = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile') && !before.has(f));
  for (const [who, child] of targets) {
    // V8 names a profile CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile.
    const file = written.find((f) => f.split('.')[3] === String(child.pid));
    if (!file) { log(`profile: ${who} wrote no profile`); continue; }
    copyFileSync(join(dir, file), join(keep, `${who}.cpuprofile`));
    const profile = JSON.parse(readFileSync(join(dir, file), 'utf8')) as CpuProfile;
    out[who] = { top: topSelfTime(profile, 20, REPO_ROOT), byOrigin: selfTimeByOrigin(profile, REPO_ROOT) };
  }
  return out;
}

try {
  await main();
  process.exit(0);
} catch (err) {
  log(`failed: ${(err as Error).stack ?? err}`);
  if (mesh) {
    for (const f of existsSync(mesh.logDir) ? readdirSync(mesh.logDir) : []) log(`${f}:\n${mesh.logTail(f, 8)}`);
  }
  cleanupSync();
  process.exit(1);
}
