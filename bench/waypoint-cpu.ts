/**
 * The waypoint's CPU per request, without the mesh around it (issue 20 item 3):
 *
 *   node bench/waypoint-cpu.ts [--seconds 5] [--concurrency 16] [--repeat 3] [--warmup 5000] [--access-log]
 *                              [--rate 1000]     (requests/s in total, paced, as make bench's fixed-rate run; default: as fast as it goes)
 *                              [--profile DIR]   (the engine under node --cpu-prof; the profile lands in DIR)
 *                              [--strace]        (one more run with the engine's syscalls counted, per request)
 *
 * A child process runs a WaypointEngine (one HTTPRoute, one L7 ALLOW policy, as the bench's L7 case)
 * behind a loopback tunnel listener, sending upstream over plain TCP to a keep-alive HTTP/1.1
 * backend (64-byte body) in a second child. The main process drives keep-alive GETs. The figure is
 * the engine process's own CPU (process.cpuUsage) divided by the requests it served: on a shared
 * machine that is steadier than requests/s, which moves with everyone else's load.
 * Prints one JSON line per run and a summary line with the median and spread.
 */
import { fork } from 'node:child_process';
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { WaypointEngine } from '../waypoint/src/engine.ts';
import { TcpUpstream } from '../waypoint/src/upstream.ts';
import { CALLER, backend, config, endpoint, route, service, startHttpBackend, startTunnelListener } from '../waypoint/testing/harness.ts';
import { spreadOf } from './stats.ts';
import { perUnit, straceCount } from './strace.ts';

type Msg = { kind: 'backend' } | { kind: 'engine'; backendPort: number; accessLog: boolean } | { kind: 'cpu' };

async function child(): Promise<void> {
  process.on('disconnect', () => process.exit(0));
  process.on('message', async (m: Msg) => {
    if (m.kind === 'cpu') {
      const u = process.cpuUsage();
      process.send!({ cpuMicros: u.user + u.system, systemMicros: u.system });
      return;
    }
    if (m.kind === 'backend') {
      const body = Buffer.alloc(64, 0x61);
      const b = await startHttpBackend((_req, res) => { res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length }); res.end(body); });
      process.send!({ port: b.port });
      return;
    }
    const engine = new WaypointEngine({
      namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(),
      // The access log as in production: the engine's own stdout writer, into a pipe.
      telemetry: m.accessLog ? {} : { accessLog: null },
    });
    engine.applyConfig(config({
      services: [service('web', '10.96.0.20', [endpoint(m.backendPort)])],
      routes: [route('web', 'web', [{ backends: [backend('web')] }])],
      policies: [{
        name: 'client-get', namespace: 'shop', action: 'ALLOW', scope: 'service', targetServices: ['shop/web'], layer: 'L7',
        rules: [{ from: [{ principals: [CALLER.replace('spiffe://', '')] }], to: [{ methods: ['GET'] }], when: [], layer: 'L7' }],
      }],
    }));
    const l = await startTunnelListener(engine, '10.96.0.20:80');
    process.send!({ port: l.port });
  });
}

function ask<T>(c: ReturnType<typeof fork>, m: Msg): Promise<T> {
  return new Promise((resolve) => { c.once('message', (r) => resolve(r as T)); c.send(m); });
}

/**
 * Keep-alive GETs on `concurrency` connections until `requests` were sent or `seconds` passed,
 * whichever comes first; the count of 200s. With `rate` (requests/s in total), request n leaves no
 * earlier than n / rate seconds after the start.
 */
async function load(port: number, concurrency: number, seconds: number, requests = Infinity, rate = Infinity): Promise<{ ok: number; other: number }> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const start = performance.now();
  const until = start + seconds * 1000;
  let sent = 0;
  let ok = 0;
  let other = 0;
  const one = (): Promise<void> => new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/', agent, headers: { host: 'web.shop.svc.cluster.local' } }, (res) => {
      res.resume();
      res.on('end', () => { if (res.statusCode === 200) ok++; else other++; resolve(); });
    });
    req.on('error', () => { other++; resolve(); });
  });
  const paced = async (): Promise<void> => {
    const due = start + (sent / rate) * 1000;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  };
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (performance.now() < until && sent < requests) {
      if (rate !== Infinity) await paced();
      sent++;
      await one();
    }
  }));
  agent.destroy();
  return { ok, other };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '5' },
      concurrency: { type: 'string', default: '16' },
      repeat: { type: 'string', default: '3' },
      warmup: { type: 'string', default: '5000' },
      rate: { type: 'string' },
      'access-log': { type: 'boolean', default: false },
      profile: { type: 'string' },
      strace: { type: 'boolean', default: false },
    },
  });
  const rate = values.rate === undefined ? Infinity : Number(values.rate);
  if (!(rate > 0)) throw new Error(`--rate: expected requests per second > 0, got "${values.rate}"`);
  const self = fileURLToPath(import.meta.url);
  const be = fork(self, ['--child'], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const wp = fork(self, ['--child'], {
    stdio: ['ignore', 'pipe', 'inherit', 'ipc'],
    execArgv: [...process.execArgv, ...(values.profile ? ['--cpu-prof', `--cpu-prof-dir=${values.profile}`] : [])],
  });
  wp.stdout!.resume();
  try {
    const { port: backendPort } = await ask<{ port: number }>(be, { kind: 'backend' });
    const { port } = await ask<{ port: number }>(wp, { kind: 'engine', backendPort, accessLog: values['access-log'] });
    // Warm-up by count, not time: on a loaded machine a few seconds may serve too few requests for
    // V8 to optimise the hot path, and the figure would be the interpreter's.
    await load(port, Number(values.concurrency), 60, Number(values.warmup));
    const perReq: number[] = [];
    for (let i = 0; i < Number(values.repeat); i++) {
      const c0 = await ask<{ cpuMicros: number; systemMicros: number }>(wp, { kind: 'cpu' });
      const t0 = performance.now();
      const r = await load(port, Number(values.concurrency), Number(values.seconds), Infinity, rate);
      const secs = (performance.now() - t0) / 1000;
      const c1 = await ask<{ cpuMicros: number; systemMicros: number }>(wp, { kind: 'cpu' });
      const us = (c1.cpuMicros - c0.cpuMicros) / r.ok;
      const kernelUs = (c1.systemMicros - c0.systemMicros) / r.ok;
      perReq.push(us);
      console.log(JSON.stringify({ run: i + 1, requests: r.ok, errors: r.other, reqPerSec: Math.round(r.ok / secs), waypointCpuUsPerRequest: +us.toFixed(1), ofWhichKernel: +kernelUs.toFixed(1) }));
    }
    if (values.strace) {
      const w = await straceCount([wp.pid!]);
      const r = await load(port, Number(values.concurrency), Number(values.seconds));
      console.log(JSON.stringify({ syscallsPerRequest: perUnit(await w.stop(), r.ok) }));
    }
    const s = spreadOf(perReq)!;
    console.log(`waypoint-cpu: ${s.median.toFixed(1)} µs of waypoint CPU per request (median of ${s.n}; ${s.min.toFixed(1)}–${s.max.toFixed(1)})${values['access-log'] ? ', access log on' : ''}`);
  } finally {
    be.kill();
    // Disconnecting lets the engine exit by itself, which is when V8 writes a --cpu-prof profile.
    const exited = new Promise((r) => wp.once('exit', r));
    wp.disconnect();
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    wp.kill();
  }
}

if (process.argv.includes('--child')) await child();
else await main();
