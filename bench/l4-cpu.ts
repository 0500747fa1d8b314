/**
 * The L4 path's CPU per request, two trees side by side (issue 20: the L4 request rate):
 *
 *   node bench/l4-cpu.ts [--old DIR] [--new DIR] [--seconds 10] [--connections 16] [--repeat 5] [--warmup 5]
 *                        [--rate N]        (requests/s per tree, paced by hey, instead of wrk at saturation)
 *                        [--profile DIR]   (every proxy under node --cpu-prof; profiles land in DIR)
 *                        [--strace]        (once more, one tree at a time: both proxies' syscalls per request)
 *
 * For this tree (or the checkout given by `--new`) and, with `--old`, another checkout of the
 * repository (`git worktree add DIR <base>` with node_modules linked), it starts the loopback
 * version of the mesh's L4 path:
 *
 *   wrk -t1 → outbound proxy (accepted sockets adopted into the read pool, an HbonePool tunnel per
 *   connection, pipeBidirectional) → HBONE (TLS 1.3 mTLS, HTTP/2 CONNECT) → HboneServer (dials the
 *   target reading through the read pool) → nginx (one worker, keep-alive, a fixed 64-byte body)
 *
 * Each proxy is its own process that imports lib/hbone from its tree, as the agents do. Both trees
 * are loaded at the same time by their own wrk (keep-alive, `--connections` each) against one nginx,
 * so they share the machine's load, and each tree's figure is the CPU of its two proxies
 * (process.cpuUsage, user + system) divided by the requests its wrk completed. On a shared machine
 * the pair is the figure: runs minutes apart say nothing (docs/PERFORMANCE.md, Method). Without
 * `--old` the same tree runs twice (an A/A: the spread of the method itself).
 * Prints one JSON line per round and a summary with medians, min–max and the per-round ratio.
 */
import { execFile, fork, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net, { createServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { createTestCa, type TestLeaf } from '../test/unit/hbone-certs.ts';
import { parseHey, parseWrk } from './parse.ts';
import { nginxConf } from './proxies.ts';
import { spreadOf } from './stats.ts';
import { perUnit, straceCount } from './strace.ts';

const SERVER_ID = 'spiffe://bench.local/ns/bench/sa/inbound';
const CLIENT_ID = 'spiffe://bench.local/ns/bench/sa/outbound';
const SELF = fileURLToPath(import.meta.url);
const THIS_TREE = resolve(SELF, '../..');

type Msg =
  | { kind: 'inbound'; leaf: TestLeaf }
  | { kind: 'outbound'; leaf: TestLeaf; hbonePort: number; target: number }
  | { kind: 'cpu' };

function noop(): void {}

/** A proxy process: imports lib/hbone from the tree given after --tree. */
async function child(tree: string): Promise<void> {
  const hbone = await import(pathToFileURL(join(tree, 'lib/hbone/index.ts')).href) as typeof import('../lib/hbone/index.ts');
  process.on('disconnect', () => process.exit(0));
  process.on('message', async (m: Msg) => {
    if (m.kind === 'cpu') {
      const u = process.cpuUsage();
      process.send!({ cpuMicros: u.user + u.system });
      return;
    }
    if (m.kind === 'inbound') {
      // As the agent's inbound: the pod-side socket reads through the read pool.
      const server = new hbone.HboneServer({
        tls: m.leaf,
        handler: async (req) => {
          const up: Socket = net.connect({ host: req.target.host, port: req.target.port, noDelay: true, allowHalfOpen: true, onread: hbone.pooledReads(() => up) });
          await new Promise<void>((ok, fail) => { up.once('connect', ok); up.once('error', fail); });
          return { upstream: up };
        },
      });
      process.send!({ port: (await server.listen(0, '127.0.0.1')).port });
      return;
    }
    // As the agent's outbound: accepted paused, adopted into the read pool, one tunnel each.
    const pool = new hbone.HbonePool();
    const target = `127.0.0.1:${m.target}`;
    const l = net.createServer({ allowHalfOpen: true, noDelay: true, pauseOnConnect: true }, (accepted) => {
      const app = hbone.adoptWithPooledReads(accepted);
      app.on('error', noop);
      pool.connect({ sourceKey: CLIENT_ID, tls: m.leaf, dest: { host: '127.0.0.1', port: m.hbonePort }, target, expectPeer: SERVER_ID })
        .then((tunnel) => { const piped = hbone.pipeBidirectional(app, tunnel); app.resume(); return piped; }, () => app.resetAndDestroy());
    });
    await new Promise<void>((ok) => l.listen(0, '127.0.0.1', ok));
    process.send!({ port: (l.address() as AddressInfo).port });
  });
}

function ask<T>(c: ChildProcess, m: Msg): Promise<T> {
  return new Promise((ok) => { c.once('message', (r) => ok(r as T)); c.send(m); });
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((ok) => s.listen(0, '127.0.0.1', ok));
  const port = (s.address() as AddressInfo).port;
  await new Promise((ok) => s.close(ok));
  return port;
}

interface Pair { label: string; outbound: ChildProcess; inbound: ChildProcess; port: number }

async function startPair(label: string, tree: string, nginxPort: number, profile: string | undefined): Promise<Pair> {
  const ca = createTestCa('Weft bench CA');
  const spawnRole = (role: string): ChildProcess => fork(SELF, ['--child', '--tree', tree], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    execArgv: [...process.execArgv, ...(profile ? ['--cpu-prof', `--cpu-prof-dir=${profile}`, `--cpu-prof-name=${label}-${role}.cpuprofile`] : [])],
  });
  const inbound = spawnRole('inbound');
  const outbound = spawnRole('outbound');
  const { port: hbonePort } = await ask<{ port: number }>(inbound, { kind: 'inbound', leaf: ca.issue(SERVER_ID) });
  const { port } = await ask<{ port: number }>(outbound, { kind: 'outbound', leaf: ca.issue(CLIENT_ID), hbonePort, target: nginxPort });
  return { label, outbound, inbound, port };
}

async function cpuOf(p: Pair): Promise<number> {
  const [a, b] = await Promise.all([ask<{ cpuMicros: number }>(p.outbound, { kind: 'cpu' }), ask<{ cpuMicros: number }>(p.inbound, { kind: 'cpu' })]);
  return a.cpuMicros + b.cpuMicros;
}

function wrk(port: number, connections: number, seconds: number): Promise<number> {
  return new Promise((ok, fail) => execFile('wrk', ['-t1', `-c${connections}`, `-d${seconds}s`, '--latency', `http://127.0.0.1:${port}/`], (err, stdout) => {
    if (err) { fail(err); return; }
    const r = parseWrk(stdout);
    if (r.socketErrors || r.non2xx) { fail(new Error(`wrk: ${r.socketErrors} socket errors, ${r.non2xx} non-2xx`)); return; }
    ok(r.requests);
  }));
}

/**
 * hey at `rate` requests/s in total over `connections` keep-alive connections: a tree that costs less
 * per request does not get more requests (and larger batches per event-loop turn) than the other.
 */
function hey(port: number, connections: number, seconds: number, rate: number): Promise<number> {
  return new Promise((ok, fail) => execFile('hey', ['-z', `${seconds}s`, '-c', String(connections), '-q', String(rate / connections), `http://127.0.0.1:${port}/`], (err, stdout) => {
    if (err) { fail(err); return; }
    const r = parseHey(stdout);
    const other = Object.entries(r.statusCodes).filter(([code]) => code !== '200').reduce((n, [, v]) => n + v, 0);
    if (r.errors || other) { fail(new Error(`hey: ${r.errors} errors, ${other} non-200`)); return; }
    ok(r.statusCodes['200'] ?? 0);
  }));
}

/** Both pairs under load at once; CPU µs per request and requests/s of each. */
async function round(pairs: Pair[], connections: number, seconds: number, rate: number | undefined): Promise<Array<{ us: number; rps: number }>> {
  const c0 = await Promise.all(pairs.map(cpuOf));
  const reqs = await Promise.all(pairs.map((p) => rate ? hey(p.port, connections, seconds, rate) : wrk(p.port, connections, seconds)));
  const c1 = await Promise.all(pairs.map(cpuOf));
  return pairs.map((_, i) => ({ us: (c1[i]! - c0[i]!) / reqs[i]!, rps: Math.round(reqs[i]! / seconds) }));
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      old: { type: 'string' },
      new: { type: 'string' },
      seconds: { type: 'string', default: '10' },
      connections: { type: 'string', default: '16' },
      repeat: { type: 'string', default: '5' },
      warmup: { type: 'string', default: '5' },
      rate: { type: 'string' },
      profile: { type: 'string' },
      strace: { type: 'boolean', default: false },
    },
  });
  const seconds = Number(values.seconds);
  const connections = Number(values.connections);
  const rate = values.rate === undefined ? undefined : Number(values.rate);
  if (rate !== undefined && !(rate > 0)) throw new Error(`--rate: expected requests per second > 0, got "${values.rate}"`);
  const profile = values.profile ? resolve(values.profile) : undefined;
  if (profile) mkdirSync(profile, { recursive: true });
  const dir = mkdtempSync(join(tmpdir(), 'weft-l4-cpu-'));
  const nginxPort = await freePort();
  writeFileSync(join(dir, 'nginx.conf'), nginxConf(dir, nginxPort));
  const nginx = spawn('nginx', ['-c', join(dir, 'nginx.conf'), '-p', dir], { stdio: 'ignore' });
  const pairs: Pair[] = [];
  try {
    for (let i = 0; i < 50; i++) {
      const up = await new Promise<boolean>((ok) => { const s = createServer(); s.once('error', () => ok(true)); s.listen(nginxPort, '127.0.0.1', () => s.close(() => ok(false))); });
      if (up) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const tree = values.new ? resolve(values.new) : THIS_TREE;
    const old = values.old ? resolve(values.old) : tree;
    pairs.push(await startPair('new', tree, nginxPort, profile), await startPair(values.old ? 'old' : 'same', old, nginxPort, profile));
    console.log(JSON.stringify({ new: tree, old, seconds, connections, load: rate ? `hey, ${rate} req/s per tree` : 'wrk, saturation' }));
    await Promise.all(pairs.map((p) => wrk(p.port, connections, Number(values.warmup))));
    const perReq: number[][] = pairs.map(() => []);
    const ratios: number[] = [];
    for (let r = 0; r < Number(values.repeat); r++) {
      const res = await round(pairs, connections, seconds, rate);
      const us = res.map((x) => x.us);
      us.forEach((v, i) => perReq[i]!.push(v));
      ratios.push(us[0]! / us[1]!);
      console.log(JSON.stringify({
        round: r + 1,
        ...Object.fromEntries(pairs.flatMap((p, i) => [[`${p.label}UsPerRequest`, +us[i]!.toFixed(2)], [`${p.label}ReqPerSec`, res[i]!.rps]])),
        ratio: +(us[0]! / us[1]!).toFixed(3),
      }));
    }
    const fmt = (v: number[]): string => { const s = spreadOf(v)!; return `${s.median.toFixed(2)} (${s.min.toFixed(2)}–${s.max.toFixed(2)})`; };
    const rs = spreadOf(ratios)!;
    console.log(`l4-cpu: µs of both proxies' CPU per request, median (min–max) of ${ratios.length}: ${pairs.map((p, i) => `${p.label} ${fmt(perReq[i]!)}`).join(', ')}; new ÷ ${pairs[1]!.label} per round ${rs.median.toFixed(3)} (${rs.min.toFixed(3)}–${rs.max.toFixed(3)})`);
    if (values.strace) {
      for (const p of pairs) {
        const w = await straceCount([p.outbound.pid!, p.inbound.pid!]);
        const n = await wrk(p.port, connections, seconds);
        console.log(JSON.stringify({ tree: p.label, syscallsPerRequest: perUnit(await w.stop(), n) }));
      }
    }
  } finally {
    // Disconnecting lets a proxy exit by itself, which is when V8 writes a --cpu-prof profile.
    await Promise.all(pairs.flatMap((p) => [p.outbound, p.inbound]).map((c) => {
      const exited = new Promise((r) => c.once('exit', r));
      c.disconnect();
      return Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]).then(() => c.kill());
    }));
    nginx.kill('SIGQUIT');
    await new Promise((r) => setTimeout(r, 200));
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv.includes('--child')) await child(process.argv[process.argv.indexOf('--tree') + 1]!);
else await main();
