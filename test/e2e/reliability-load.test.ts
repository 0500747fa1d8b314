// Load through one agent, with the real agent in namespaces: 10,000 concurrent idle connections
// held open while ~1,000 new connections per second come and go for 30 s (WEFT_LOAD_CHURN_MS; the
// agent's RSS reaches its plateau within ~20 s and stays there, in 75 s runs too), all from one pod
// on node1 through its agent (HBONE) to an echo server on node2. The agent's memory stays bounded and its file descriptors return to the
// baseline once the connections close (no fd leak).
//
// Cross-node, not same-node: on one node the agent holds two descriptors per connection, and this
// machine's hard RLIMIT_NOFILE is 20,000 (the test cannot raise it). Environment for 10,000
// connections (test set-up, not agent changes): the pods raise their soft `ulimit -n` to the hard
// limit, and the client pod and node2 use the port range 1024-65000. The echo server listens with a
// backlog of 4,096 (Node's default is 511): it stands in for an application, which is not what
// this test measures, and with a CPU hog beside the suite its accept loop fell behind bursts, its full queue
// dropped SYNs, and each dropped SYN waits out a 1 s retransmission, which is the agents' CONNECT
// deadline creeping up, not anything they do.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { until } from '../lab/wait.ts';
import { localMeshSuite } from './mesh-suite.ts';
import { LocalMesh } from '../../cli/local/mesh.ts';

const suite = localMeshSuite();
let mesh: LocalMesh;
const VIP = '10.96.5.10';
const IDLE = Number(process.env.WEFT_LOAD_IDLE ?? 10_000);
const RATE = Number(process.env.WEFT_LOAD_RATE ?? 1_000);
const CHURN_MS = Number(process.env.WEFT_LOAD_CHURN_MS ?? 30_000);
const NOFILE = 20_000;
const fixture = (name: string) => join(import.meta.dirname, 'fixtures', name);

before(async () => {
  mesh = await suite.create();
  mesh.writeConfig('10-load.yaml', [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'load', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'sink', namespace: 'load' }, spec: { clusterIP: VIP, selector: { app: 'sink' }, ports: [{ name: 'tcp', port: 7000, targetPort: 7000 }] } },
  ]);
  mesh.addWorkload({
    node: 'node2', namespace: 'load', name: 'sink', labels: { app: 'sink' },
    command: ['sh', '-c', `ulimit -n ${NOFILE}; exec "${process.execPath}" "${fixture('line-echo.ts')}" --port 7000 --backlog 4096`],
  });
  mesh.addWorkload({ node: 'node1', namespace: 'load', name: 'client' });
  mesh.startController();
  await mesh.waitControllerReady();
  mesh.startAgents();
  await mesh.waitReady();
  await mesh.waitWorkloadsEnrolled(['load/client', 'load/sink']);
  for (const netns of [mesh.node('node2').netnsPath, mesh.workloads.get('load/client')!.pod.netnsPath]) {
    execFileSync('nsenter', [`--net=${netns}`, 'sysctl', '-qw', 'net.ipv4.ip_local_port_range=1024 65000']);
  }
});

function agentPid(node = 'node1'): number {
  const pid = mesh.agents.get(node)!.pid!;
  // The spawn chain execs (sh → nsenter → node): the child's pid is the agent's.
  assert.match(readFileSync(`/proc/${pid}/cmdline`, 'utf8'), /agent\/src\/main\.ts/);
  return pid;
}
const fds = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;
const rssMb = (pid: number) => Math.round(Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024);

test(`${IDLE} idle connections and ${RATE} new connections per second through one agent: every one served, memory bounded, file descriptors back to the baseline afterwards`, async () => {
  const pid = agentPid();
  const pid2 = agentPid('node2');
  // Warm up (first connection, certificates, pools) before taking the baseline.
  const warm = await mesh.exec('load/client', process.execPath, [fixture('load-conns.ts'), '--host', VIP, '--port', '7000', '--idle', '10', '--rate', '100', '--churn-ms', '500', '--hold-ms', '0']);
  assert.equal(JSON.parse(warm.stdout.trim()).idleOpen, 10, `warm-up works: ${warm.stdout} ${warm.stderr}`);
  // The warm-up's connections close asynchronously: the baseline is taken once both agents' file
  // descriptor counts have stopped moving.
  let last = '';
  await until('the agents settle after the warm-up', () => { const now = `${fds(pid)}/${fds(pid2)}`; const same = now === last; last = now; return same; }, 15_000, { intervalMs: 300 });
  const base = { fds: fds(pid), rss: rssMb(pid) };
  const base2 = { fds: fds(pid2), rss: rssMb(pid2) };

  let peak = { fds: 0, rss: 0 };
  let peak2 = { fds: 0, rss: 0 };
  let sampling = true;
  const started = Date.now();
  const series: string[] = [];
  let lastSeries = 0;
  const sampler = (async () => {
    while (sampling) {
      if (Date.now() - lastSeries > 5_000) {
        lastSeries = Date.now();
        const st = await mesh.agentAdmin<{ memory: NodeJS.MemoryUsage; outboundConnections: number }>('node1', '/stats');
        series.push(`${Math.round((Date.now() - started) / 1000)}s rss=${rssMb(pid)} heap=${Math.round(st.memory.heapUsed / 1048576)}/${Math.round(st.memory.heapTotal / 1048576)} ext=${Math.round(st.memory.external / 1048576)} ab=${Math.round(st.memory.arrayBuffers / 1048576)} conns=${st.outboundConnections}`);
      }
      peak = { fds: Math.max(peak.fds, fds(pid)), rss: Math.max(peak.rss, rssMb(pid)) };
      peak2 = { fds: Math.max(peak2.fds, fds(pid2)), rss: Math.max(peak2.rss, rssMb(pid2)) };
      await sleep(250);
    }
  })();
  const r = await mesh.exec('load/client', 'sh', ['-c', `ulimit -n ${NOFILE}; exec "${process.execPath}" "${fixture('load-conns.ts')}" --host ${VIP} --port 7000 --idle ${IDLE} --rate ${RATE} --churn-ms ${CHURN_MS} --hold-ms 2000`], CHURN_MS + 180_000);
  sampling = false;
  await sampler;
  assert.ok(r.stdout.trim(), `load-conns printed nothing (exit ${r.code}): ${r.stderr}`);
  const res = JSON.parse(r.stdout.trim().split('\n').pop()!) as { idleOpen: number; idleMs: number; idleDropped: number; stillOpen: number; churnOk: number; churnFailed: number; churnPerSecond: number; notOffered: number; errors: Record<string, number> };

  const closedAt = Date.now();
  let after = fds(pid);
  while (after > base.fds + 20 && Date.now() - closedAt < 30_000) {
    await sleep(250);
    after = fds(pid);
  }
  const fdsBackMs = Date.now() - closedAt;
  const rssAfter = rssMb(pid);
  console.log(`# node1 agent over time: ${series.join('; ')}`);
  console.log(`# load: ${res.idleOpen} idle connections opened in ${res.idleMs} ms, ${res.churnOk} new connections (${res.churnPerSecond}/s, ${res.churnFailed} failed ${JSON.stringify(res.errors)}; ${res.notOffered} not offered, at most ${RATE} waiting at once) in ${Math.round((Date.now() - started) / 1000)} s`);
  console.log(`# node2 agent (server side) fds: baseline ${base2.fds}, peak ${peak2.fds}, ${fds(pid2)} after; RSS MB: baseline ${base2.rss}, peak ${peak2.rss}, after ${rssMb(pid2)}`);
  console.log(`# node1 agent fds: baseline ${base.fds}, peak ${peak.fds}, ${after} ${fdsBackMs} ms after the close; agent RSS MB: baseline ${base.rss}, peak ${peak.rss}, after ${rssAfter}`);

  // What the agents saw, for the record (and to explain failures).
  const stats1 = await mesh.agentAdmin<{ hbonePool: unknown }>('node1', '/stats');
  const stats2 = await mesh.agentAdmin<{ hboneServer: { refusals: Record<string, number>; sessionErrors: number } }>('node2', '/stats');
  const failed = (await mesh.agentMetrics('node1')).split('\n').filter((l) => l.startsWith('weft_connections_failed_total'));
  // Why connections failed, by message (numbers and addresses blanked), from node1's access log.
  const reasons = new Map<string, number>();
  for (const line of mesh.logTail('agent-node1.log', 1_000_000).split('\n')) {
    if (!line.includes('"direction":"outbound"') || !line.includes('"error"')) continue;
    const error = String((JSON.parse(line) as { error?: unknown }).error).replace(/\d+(\.\d+)*/g, 'N');
    if (/ECONNRESET|reset by the client/i.test(error) && !/HBONE/.test(error)) continue; // the churn's own resets
    reasons.set(error, (reasons.get(error) ?? 0) + 1);
  }
  if (reasons.size > 0) console.log(`# node1 failures by reason: ${JSON.stringify(Object.fromEntries(reasons))}`);
  console.log(`# node1 pool ${JSON.stringify(stats1.hbonePool)}; node2 refusals ${JSON.stringify(Object.fromEntries(Object.entries(stats2.hboneServer.refusals).filter(([, v]) => v > 0)))}, sessions ended on an error ${stats2.hboneServer.sessionErrors}; node1 ${failed.join(' ') || 'no failed connections'}`);

  assert.equal(res.idleOpen, IDLE, `every idle connection was established end to end (${JSON.stringify(res.errors)})`);
  assert.equal(res.idleDropped, 0, 'none of the idle connections was dropped while the churn ran');
  // A session that ends on an error takes every tunnel on it (lib/hbone/server.ts, maxSessionRejectedStreams).
  assert.equal(stats2.hboneServer.sessionErrors, 0, 'no HBONE session ended on an error');
  assert.equal(res.stillOpen, IDLE);
  // 0 in every run since the pool retries streams refused as over the limit; before, 119 and 224 of
  // ~58,000 failed in two of five runs. A few stray failures would not be a bug of this kind.
  assert.ok(res.churnFailed <= res.churnOk / 1000, `at most 0.1% of the new connections failed (${res.churnFailed} of ${res.churnOk + res.churnFailed}: ${JSON.stringify(res.errors)})`);
  // The rate the machine carried. Alone on 2 cores it is the asked rate; beside a CPU hog 730-999/s
  // (the echo server and the generator, Node processes on the same cores, fall behind first, and
  // the generator offers no more than a second's worth at once: `notOffered`). The collapse this
  // test caught (a kernel port-search cliff in the agent, docs/RELIABILITY.md) ran at
  // 83-454/s and kept falling; half the asked rate tells the two apart with the margin a loaded
  // 2-core machine needs. The speed itself is make bench's.
  assert.ok(res.churnPerSecond >= RATE * 0.5, `the churn ran at no less than half the asked rate (${res.churnPerSecond}/s; ${res.notOffered} not offered)`);
  assert.ok(peak.fds >= base.fds + IDLE, `the agent really held the idle connections (peak ${peak.fds} fds)`);
  assert.ok(after <= base.fds + 20, `file descriptors return to the baseline (${after} vs ${base.fds})`);
  assert.ok(peak.rss < 1_024, `agent RSS stays bounded (peak ${peak.rss} MB)`);
  // The agent is still fine.
  assert.equal((await mesh.agentReady('node1')).ready, true);
});
