// Controller push benchmark: with 1,000 services and 10,000 workloads (50 nodes × 200 pods) in the
// model, 50 agents and 10 waypoints (one each in namespaces ns-0..ns-9 of the 20) subscribed over
// gRPC on loopback, how long from a change to every client having acknowledged it (or having been
// sent nothing: its view did not change), and the controller's peak RSS. The clients run in a
// child process so the RSS is the controller's own. Each waypoint applies what it receives to a
// real WaypointEngine, so the clients' CPU includes the waypoints' config handling.
//
//   node bench/controller-push.ts [--services 1000] [--workloads 10000] [--clients 50] [--waypoints 10] [--changes 20]
//
// Prints one summary line (and a JSON line with the numbers). The controller's part runs with the
// Node flags the controller is deployed with (CONTROLLER_NODE_OPTIONS).
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { Controller } from '../controller/src/controller.ts';
import { MemorySource } from '../controller/src/sources/memory.ts';
import { ConfigServer, addConfigStreamService } from '../controller/src/xds/server.ts';
import { CONTROLLER_NODE_OPTIONS, CONTROLLER_V8_FLAGS } from '../cli/install/names.ts';
import { tryMemoryRelease } from '../lib/sys/memory.ts';
import { jsonLogger } from '../lib/log.ts';
// The clients' modules (config client, waypoint engine) are imported by the child only: loaded in
// the controller's process they were 20 MB of its RSS that no controller carries.
import type { ConfigClient } from '../lib/xds/client.ts';
import type { WaypointEngine } from '../waypoint/src/engine.ts';

const { values } = parseArgs({
  options: {
    services: { type: 'string', default: '1000' },
    workloads: { type: 'string', default: '10000' },
    clients: { type: 'string', default: '50' },
    waypoints: { type: 'string', default: '10' },
    changes: { type: 'string', default: '20' },
    'clients-only': { type: 'string' },
  },
});
const SERVICES = Number(values.services);
const WORKLOADS = Number(values.workloads);
const CLIENTS = Number(values.clients);
const WAYPOINTS = Number(values.waypoints);
const CHANGES = Number(values.changes);

const nodeName = (i: number) => `node-${i}`;

if (values['clients-only']) {
  // Child: CLIENTS agents, one per node, and WAYPOINTS waypoints; reports when all have a first snapshot.
  const { ConfigClient } = await import('../lib/xds/client.ts');
  const { WaypointEngine } = await import('../waypoint/src/engine.ts');
  const { TcpUpstream } = await import('../waypoint/src/upstream.ts');
  const target = values['clients-only'];
  let ready = 0;
  const clients: Array<ConfigClient<'agent'> | ConfigClient<'waypoint'>> = [];
  const engines: WaypointEngine[] = [];
  const onFirst = () => {
    if (++ready === CLIENTS + WAYPOINTS) process.stdout.write('ready\n');
  };
  for (let i = 0; i < CLIENTS; i++) {
    const c = new ConfigClient({ target, credentials: grpc.credentials.createInsecure(), kind: 'agent', id: nodeName(i) });
    c.once('snapshot', onFirst);
    c.start();
    clients.push(c);
  }
  // Waypoint config handling: snapshots applied and the time spent applying them.
  let wpSnapshots = 0;
  let wpApplyMs = 0;
  for (let i = 0; i < WAYPOINTS; i++) {
    const namespace = `ns-${i}`;
    const engine = new WaypointEngine({ namespace, name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
    engines.push(engine);
    const c = new ConfigClient({ target, credentials: grpc.credentials.createInsecure(), kind: 'waypoint', id: `waypoint-${i}`, namespace,
      validate: (cfg) => engine.validateConfig(cfg) });
    c.on('snapshot', (cfg) => {
      const t = performance.now();
      engine.applyConfig(cfg);
      wpApplyMs += performance.now() - t;
      wpSnapshots++;
    });
    c.once('snapshot', onFirst);
    c.start();
    clients.push(c);
  }
  process.stdin.on('data', (d: Buffer) => {
    // "cpu\n": report this process's CPU time so far (the clients' share of a push) and the
    // waypoints' snapshot count and apply time.
    if (d.toString().includes('cpu')) {
      const u = process.cpuUsage();
      process.stdout.write(`cpu ${(u.user + u.system) / 1000} ${wpSnapshots} ${wpApplyMs}\n`);
    }
  });
  process.stdin.on('end', async () => {
    for (const c of clients) c.close();
    for (const e of engines) await e.close();
    process.exit(0);
  });
  process.stdin.resume();
} else if (![...CONTROLLER_NODE_OPTIONS.split(' '), ...CONTROLLER_V8_FLAGS.split(' ')].every((f) => process.execArgv.includes(f))) {
  // The controller's part runs with the V8 flags it is deployed with (cli/install/names.ts): the
  // bench runs itself again with them (the clients' process is started without them).
  const r = spawnSync(process.execPath, [...CONTROLLER_NODE_OPTIONS.split(' '), ...CONTROLLER_V8_FLAGS.split(' '), ...process.execArgv, fileURLToPath(import.meta.url), ...process.argv.slice(2)], { stdio: 'inherit' });
  process.exitCode = r.status ?? 1;
} else {
  await main();
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? 0;
}

function objects(): object[] {
  const out: object[] = [];
  const namespaces = 20;
  for (let n = 0; n < namespaces; n++) out.push({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: `ns-${n}`, labels: { 'weft.dev/dataplane-mode': 'ambient' } } });
  for (let s = 0; s < SERVICES; s++) {
    out.push({
      apiVersion: 'v1', kind: 'Service',
      metadata: { name: `svc-${s}`, namespace: `ns-${s % namespaces}` },
      spec: { selector: { app: `svc-${s}` }, clusterIP: `10.96.${s >> 8}.${s & 255}`, ports: [{ name: 'http', port: 80, targetPort: 8080 }] },
    });
  }
  for (let w = 0; w < WORKLOADS; w++) out.push(podObject(w, `svc-${w % SERVICES}`));
  return out;
}

function podObject(w: number, app: string): object {
  const s = w % SERVICES;
  return {
    apiVersion: 'v1', kind: 'Pod',
    metadata: { name: `pod-${w}`, namespace: `ns-${s % 20}`, uid: `uid-${w}`, labels: { app } },
    spec: { nodeName: nodeName(w % CLIENTS), serviceAccountName: app },
    status: { phase: 'Running', podIP: `10.${64 + (w >> 16)}.${(w >> 8) & 255}.${w & 255}`, hostIP: `192.168.${(w % CLIENTS) >> 8}.${(w % CLIENTS) & 255}` },
  };
}

async function main(): Promise<void> {
  // As the controller's main: memory it does not use goes back at start, once started, and every 10 s.
  const memory = tryMemoryRelease(jsonLogger('controller'));
  const source = new MemorySource(objects());
  const configServer = new ConfigServer();
  const controller = new Controller({ source, configServer, debounceMs: 1 });
  const server = new grpc.Server({ 'grpc.max_send_message_length': 256 * 1024 * 1024 });
  addConfigStreamService(server, { configServer });
  const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  const t0 = performance.now();
  await controller.start();
  const initialCompileMs = performance.now() - t0;
  memory?.releaseNow();
  const rssBeforeClientsMb = process.resourceUsage().maxRSS / 1024;

  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), '--clients-only', `127.0.0.1:${port}`, '--clients', String(CLIENTS), '--waypoints', String(WAYPOINTS), '--services', String(SERVICES)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const t1 = performance.now();
  const syncCpu0 = process.cpuUsage();
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
    child.on('exit', (code) => reject(new Error(`clients exited with ${code}`)));
  });
  const initialMs = performance.now() - t1;
  const syncCpu = process.cpuUsage(syncCpu0);

  // CPU time of both processes across the changes: load on a shared machine stretches the wall
  // clock figures, much less these.
  const childCpu = () => new Promise<{ cpuMs: number; wpSnapshots: number; wpApplyMs: number }>((resolve) => {
    const on = (d: Buffer) => {
      const m = /cpu ([\d.]+) (\d+) ([\d.]+)/.exec(d.toString());
      if (!m) return;
      child.stdout.off('data', on);
      resolve({ cpuMs: Number(m[1]), wpSnapshots: Number(m[2]), wpApplyMs: Number(m[3]) });
    };
    child.stdout.on('data', on);
    child.stdin.write('cpu\n');
  });
  const pushedBytes = () => configServer.pushedBytes;
  const cpuMs = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1000; };
  const controllerCpu0 = cpuMs();
  const clientsCpu0 = await childCpu();
  const bytes0 = pushedBytes();
  // Each change adds a pod to a service (in ns-<i % 20>): every agent gets the service's new
  // endpoint; a waypoint of that namespace gets the Service, the others only what their for=
  // decision needs.
  const samples: number[] = [];
  const compileMs: number[] = [];
  const publishMs: number[] = [];
  for (let i = 0; i < CHANGES; i++) {
    const start = performance.now();
    let target = '';
    // Done when every client acknowledged the new version or was sent nothing for it.
    const allDone = () => configServer.clients().every((c) => Number(c.ackedVersion) >= Number(target) || c.synced);
    let wake: () => void = () => {};
    const off = configServer.onAck(() => { if (target && allDone()) wake(); });
    source.upsert(podObject(WORKLOADS + i, `svc-${i}`));
    await controller.settled();
    compileMs.push(controller.lastCompileMs);
    publishMs.push(configServer.lastPublishMs);
    target = configServer.systemVersion;
    // The pushes go out on the next turn (setImmediate): only then is "sent nothing" known.
    await new Promise((r) => setImmediate(r));
    if (!allDone()) await new Promise<void>((resolve) => { wake = resolve; });
    off();
    samples.push(performance.now() - start);
  }
  const controllerCpuPerChangeMs = (cpuMs() - controllerCpu0) / CHANGES;
  const clientsCpu1 = await childCpu();
  const clientsCpuPerChangeMs = (clientsCpu1.cpuMs - clientsCpu0.cpuMs) / CHANGES;
  const wpSnapshotsPerChange = (clientsCpu1.wpSnapshots - clientsCpu0.wpSnapshots) / CHANGES;
  const wpApplyMsPerChange = (clientsCpu1.wpApplyMs - clientsCpu0.wpApplyMs) / CHANGES;
  const bytes1 = pushedBytes();
  const bytesPerChange = { agents: Math.round((bytes1.agent - bytes0.agent) / CHANGES), waypoints: Math.round((bytes1.waypoint - bytes0.waypoint) / CHANGES) };
  samples.sort((a, b) => a - b);
  const p = (q: number) => samples[Math.min(samples.length - 1, Math.floor(q * samples.length))]!;
  const peakRssMb = process.resourceUsage().maxRSS / 1024;
  global.gc?.();
  const steadyRssMb = process.memoryUsage().rss / 1024 / 1024;
  const heapUsedMb = process.memoryUsage().heapUsed / 1024 / 1024;
  const result = {
    services: SERVICES, workloads: WORKLOADS, clients: CLIENTS, waypoints: WAYPOINTS, changes: CHANGES,
    initialCompileMs: Math.round(initialCompileMs), initialSyncMs: Math.round(initialMs), controllerCpuInitialSyncMs: Math.round((syncCpu.user + syncCpu.system) / 1000),
    compileMsMedian: +median(compileMs).toFixed(1),
    publishMsMedian: +median(publishMs).toFixed(1),
    pushToAllAckedMs: { p50: +p(0.5).toFixed(1), p90: +p(0.9).toFixed(1), max: +samples.at(-1)!.toFixed(1) },
    controllerPeakRssMb: Math.round(peakRssMb),
    controllerPeakRssBeforeClientsMb: Math.round(rssBeforeClientsMb),
    controllerRssAfterMb: Math.round(steadyRssMb),
    controllerHeapUsedMb: Math.round(heapUsedMb),
    controllerCpuPerChangeMs: +controllerCpuPerChangeMs.toFixed(1),
    clientsCpuPerChangeMs: +clientsCpuPerChangeMs.toFixed(1),
    waypointSnapshotsPerChange: +wpSnapshotsPerChange.toFixed(2),
    waypointApplyMsPerChange: +wpApplyMsPerChange.toFixed(2),
    pushedBytesPerChange: bytesPerChange,
    loadAverage: +(await import('node:os')).loadavg()[0]!.toFixed(1),
  };
  console.log(`controller-push: ${SERVICES} services, ${WORKLOADS} workloads, ${CLIENTS} agents, ${WAYPOINTS} waypoints: change→all ACKed p50 ${result.pushToAllAckedMs.p50} ms, p90 ${result.pushToAllAckedMs.p90} ms, max ${result.pushToAllAckedMs.max} ms; (compile ${result.compileMsMedian} ms, publish ${result.publishMsMedian} ms; CPU per change: controller ${result.controllerCpuPerChangeMs} ms, clients ${result.clientsCpuPerChangeMs} ms; waypoints: ${result.waypointSnapshotsPerChange} snapshots, ${result.waypointApplyMsPerChange} ms applying, ${bytesPerChange.waypoints} B per change (agents ${bytesPerChange.agents} B); load ${result.loadAverage}); initial sync ${result.initialSyncMs} ms (controller CPU ${result.controllerCpuInitialSyncMs} ms); controller peak RSS ${result.controllerPeakRssMb} MB (${result.controllerRssAfterMb} MB after)`);
  console.log(JSON.stringify(result));
  child.stdin.end();
  await new Promise((r) => child.once('exit', r));
  await controller.stop();
  configServer.closeAll();
  server.forceShutdown();
}
