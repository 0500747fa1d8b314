// `make bench-cross-network`: the multi-cluster data path beside the single-cluster L4 one, on one
// topology (cli/local/multicluster.ts, two clusters of two nodes):
//   l4-cross-node   cluster1 client (node1) → cluster1 echo (node2): one HBONE tunnel
//   cross-network   cluster1 client (node1) → cluster2 echo (node2), through cluster2's east-west
//                   gateway: HBONE inside HBONE
// Each case: wrk (closed loop, throughput and latency) then hey at a fixed rate (latency
// percentiles), both on kept-alive connections; then the same two with a new connection per
// request (`wrk -H 'Connection: close'`, `hey -disable-keepalive`): what a connection's set-up
// costs (for cross-network, the tunnels through the gateway, pooled or not). Results:
// build/bench/cross-network.json and a table on stdout.
//   node bench/cross-network.ts [--seconds 10] [--rate 200] [--json]
// --json: also the results as one JSON line at the end of stdout (bench/run.ts reads it for `make bench`).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';
import { LocalMultiCluster } from '../cli/local/multicluster.ts';
import { REPO_ROOT } from '../cli/local/mesh.ts';
import { parseHey, parseWrk } from './parse.ts';
import type { CrossNetworkResult } from './report.ts';

const { values } = parseArgs({ options: { seconds: { type: 'string', default: '10' }, rate: { type: 'string', default: '200' }, json: { type: 'boolean', default: false } } });
const SECONDS = Number(values.seconds);
const RATE = Number(values.rate);
const log = (l: string) => process.stdout.write(`${l}\n`);
const ONLY_HERE_VIP: Record<string, string> = { cluster1: '10.96.0.11', cluster2: '10.96.0.12' };

const prefix = `wb${randomBytes(2).toString('hex')}`;
const stateDir = mkdtempSync(join(tmpdir(), 'weft-bench-mc-'));
const mc = await LocalMultiCluster.create({ prefix, stateDir, clusters: 2, nodes: ['node1', 'node2'] });
const cleanup = async () => {
  await mc.destroy();
  rmSync(stateDir, { recursive: true, force: true });
};
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => void cleanup().then(() => process.exit(130)));

const results: CrossNetworkResult[] = [];
try {
  for (const c of mc.clusters) {
    c.mesh.writeConfig('10-demo.yaml', [
      { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
      // One Service only this cluster has (its own VIP), so that each case reaches one cluster's pod.
      { apiVersion: 'v1', kind: 'Service', metadata: { name: `echo-${c.name}`, namespace: 'demo' }, spec: { clusterIP: ONLY_HERE_VIP[c.name], selector: { app: 'echo' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
    ]);
    c.mesh.addWorkload({ node: 'node1', namespace: 'demo', name: 'client', labels: { app: 'client' } });
    c.mesh.addWorkload({ node: 'node2', namespace: 'demo', name: 'echo', labels: { app: 'echo' }, command: ['cli/local/apps/echo.ts', '--port', '8080', '--name', 'echo'], env: { WEFT_CLUSTER: c.name } });
  }
  log(`building two clusters (${prefix})`);
  mc.startControllers();
  for (const c of mc.clusters) await c.mesh.waitControllerReady();
  for (const c of mc.clusters) c.mesh.startAgents();
  for (const c of mc.clusters) await c.mesh.waitReady(120_000);
  mc.startGateways();
  await mc.waitGatewaysReady(120_000);
  const c1 = mc.cluster('cluster1');
  // Both cases dial a Service VIP: another network's pod address is no mesh destination (as Istio's
  // ztunnel, which looks a dialled address up in the caller's own network), so the remote pod is
  // reached through the Service only cluster2 has, imported into cluster1 with its VIP.
  const cases = [
    { name: 'l4-cross-node', url: `http://${ONLY_HERE_VIP.cluster1}/` },
    { name: 'cross-network', url: `http://${ONLY_HERE_VIP.cluster2}/` },
  ];
  // The remote Service is known once the first federation poll is merged and pushed.
  for (let i = 0; i < 60; i++) {
    const r = await c1.mesh.exec('demo/client', 'curl', ['-sS', '--max-time', '3', cases[1]!.url], 10_000);
    if (r.code === 0 && r.stdout.includes('"cluster":"cluster2"')) break;
    if (i === 59) throw new Error(`the cross-network case never answered: ${r.stderr}`);
    await new Promise((res) => setTimeout(res, 1_000));
  }
  for (const c of cases) {
    const res: CrossNetworkResult = { ...c, errors: [] };
    log(`${c.name}: wrk ${SECONDS}s, then hey at ${RATE} req/s`);
    const w = await c1.mesh.exec('demo/client', 'wrk', ['-t2', '-c16', `-d${SECONDS}s`, '--latency', c.url], (SECONDS + 60) * 1000);
    try { res.wrk = parseWrk(w.stdout); } catch (e) { res.errors.push(`wrk: ${(e as Error).message}`); }
    const h = await c1.mesh.exec('demo/client', 'hey', ['-z', `${SECONDS}s`, '-q', String(RATE / 8), '-c', '8', c.url], (SECONDS + 60) * 1000);
    try { res.hey = parseHey(h.stdout); } catch (e) { res.errors.push(`hey: ${(e as Error).message}`); }
    log(`${c.name}: the same with a new connection per request`);
    res.newConnection = {};
    const wn = await c1.mesh.exec('demo/client', 'wrk', ['-t2', '-c16', `-d${SECONDS}s`, '--latency', '-H', 'Connection: close', c.url], (SECONDS + 60) * 1000);
    try { res.newConnection.wrk = parseWrk(wn.stdout); } catch (e) { res.errors.push(`wrk (new connections): ${(e as Error).message}`); }
    const hn = await c1.mesh.exec('demo/client', 'hey', ['-z', `${SECONDS}s`, '-q', String(RATE / 8), '-c', '8', '-disable-keepalive', c.url], (SECONDS + 60) * 1000);
    try { res.newConnection.hey = parseHey(hn.stdout); } catch (e) { res.errors.push(`hey (new connections): ${(e as Error).message}`); }
    results.push(res);
  }
  const out = join(REPO_ROOT, 'build', 'bench');
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'cross-network.json'), JSON.stringify({ at: new Date().toISOString(), seconds: SECONDS, rate: RATE, results }, null, 2));
  log('');
  log('case                wrk req/s   wrk p50 ms  wrk p99 ms  hey p50 ms  hey p99 ms  errors');
  const f = (n: number | undefined) => (n === undefined ? '-' : n.toFixed(2)).padStart(10);
  for (const r of results) {
    for (const [name, m] of [[r.name, r], [`${r.name} new`, r.newConnection ?? {}]] as const) {
      log(`${name.padEnd(19)} ${f(m.wrk?.requestsPerSec)}  ${f(m.wrk?.latencyMs['50'])}  ${f(m.wrk?.latencyMs['99'])}  ${f(m.hey?.latencyMs['50'])}  ${f(m.hey?.latencyMs['99'])}  ${(m === r ? r.errors.length : 0) + (m.wrk?.socketErrors ?? 0) + (m.hey?.errors ?? 0)}`);
    }
  }
  const [local, remote] = [results.find((r) => r.name === 'l4-cross-node'), results.find((r) => r.name === 'cross-network')];
  const added = (a?: number, b?: number) => (a === undefined || b === undefined ? '-' : (b - a).toFixed(2));
  log(`cross-network over l4-cross-node, hey p50, new connection per request: +${added(local?.newConnection?.hey?.latencyMs['50'], remote?.newConnection?.hey?.latencyMs['50'])} ms; kept-alive: +${added(local?.hey?.latencyMs['50'], remote?.hey?.latencyMs['50'])} ms`);
  log(`\nwritten to build/bench/cross-network.json`);
  if (values.json) log(JSON.stringify({ seconds: SECONDS, rate: RATE, results }));
} finally {
  await cleanup();
}
