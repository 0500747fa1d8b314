/**
 * Loopback HBONE micro-benchmark. Prints one line per figure (`make bench` runs it):
 *
 *   node bench/hbone-throughput.ts [--mb 512] [--seconds 5] [--concurrency 32] [--repeat 3]
 *                                  [--no-stunnel] [--throughput-only]
 *                                  [--node-reads] (the agent pair's sockets read as Node does by
 *                                                default, a fresh buffer per read, instead of through
 *                                                the read pool as the agents read: an A/B of
 *                                                lib/hbone/read-pool.ts)
 *                                  [--strace]   (agent-pair figures once more with both proxies' syscalls
 *                                                counted: per MB and per request; counts, not speed)
 *
 * Processes, so that each proxy gets its own event loop the way agents do:
 *   main      the application side: load generator plus the targets (sink, source, echo)
 *   inbound   HboneServer that dials the targets (the destination agent)
 *   outbound  TCP listeners that tunnel through an HbonePool (the source agent's captured outbound)
 *
 * Paths measured, each against plain TCP to the same target:
 *   pool        main speaks HBONE itself through an HbonePool → inbound → target (one proxy hop)
 *   agent-pair  main → outbound → HBONE → inbound → target (the mesh's L4 path)
 *   stunnel     main → stunnel client → mTLS → stunnel server → target (when stunnel is installed)
 */
import { execFileSync, fork, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createTestCa, type TestLeaf } from '../test/unit/hbone-certs.ts';
import { adoptWithPooledReads, HbonePool, HboneServer, pipeBidirectional, pooledReads } from '../lib/hbone/index.ts';
import { perUnit, straceCount } from './strace.ts';

const CHUNK = 64 * 1024;
const SERVER_ID = 'spiffe://bench.local/ns/bench/sa/inbound';
const CLIENT_ID = 'spiffe://bench.local/ns/bench/sa/outbound';

interface Targets { sink: number; source: number; echo: number }
type Msg =
  | { kind: 'inbound'; leaf: TestLeaf; pooled: boolean }
  | { kind: 'outbound'; leaf: TestLeaf; hbonePort: number; targets: Targets; pooled: boolean }
  | { kind: 'cpu' };
type Reply = { ports: Targets | { hbone: number } } | { cpuMicros: number };

function noop(): void {}

async function listen(server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

function cpuMicros(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

// ---- child roles ----

async function runChild(): Promise<void> {
  process.on('disconnect', () => process.exit(0));
  process.on('message', async (m: Msg) => {
    if (m.kind === 'cpu') { process.send?.({ cpuMicros: cpuMicros() } satisfies Reply); return; }
    if (m.kind === 'inbound') {
      const server = new HboneServer({
        tls: m.leaf,
        handler: async (req) => {
          // As the agent's connectTcp: the pod-side socket reads through the read pool.
          const up: Socket = connect({ host: req.target.host, port: req.target.port, noDelay: true, allowHalfOpen: true, ...(m.pooled ? { onread: pooledReads(() => up) } : {}) });
          await new Promise<void>((resolve, reject) => { up.once('connect', resolve); up.once('error', reject); });
          return { upstream: up };
        },
      });
      process.send?.({ ports: { hbone: (await server.listen(0, '127.0.0.1')).port } } satisfies Reply);
      return;
    }
    const pool = new HbonePool();
    // As the agent's outbound listener: accepted paused, adopted into the read pool.
    const listenFor = (targetPort: number): Promise<number> => listen(createServer({ allowHalfOpen: true, noDelay: true, pauseOnConnect: true }, (accepted) => {
      const app = m.pooled ? adoptWithPooledReads(accepted) : accepted;
      app.on('error', noop);
      pool.connect({
        sourceKey: CLIENT_ID,
        tls: m.leaf,
        dest: { host: '127.0.0.1', port: m.hbonePort },
        target: `127.0.0.1:${targetPort}`,
        expectPeer: SERVER_ID,
      }).then((tunnel) => { const piped = pipeBidirectional(app, tunnel); app.resume(); return piped; }, () => app.resetAndDestroy());
    }));
    const ports: Targets = {
      sink: await listenFor(m.targets.sink),
      source: await listenFor(m.targets.source),
      echo: await listenFor(m.targets.echo),
    };
    process.send?.({ ports } satisfies Reply);
  });
}

// ---- targets and load (main process) ----

async function startTargets(): Promise<Targets> {
  // Sink: reads everything, answers the FIN with its own.
  const sink = createServer({ allowHalfOpen: true, noDelay: true }, (s) => {
    s.on('data', noop);
    s.on('end', () => s.end());
    s.on('error', noop);
  });
  // Source: the first 8 bytes are a big-endian byte count to send back, then FIN.
  const source = createServer({ allowHalfOpen: true, noDelay: true }, (s) => {
    s.on('error', noop);
    s.once('readable', () => {
      const head = s.read(8) as Buffer | null;
      if (!head) { s.destroy(); return; }
      let left = Number(head.readBigUInt64BE());
      const block = Buffer.alloc(CHUNK, 0x61);
      const pump = (): void => {
        while (left > 0) {
          const n = Math.min(left, CHUNK);
          left -= n;
          if (!s.write(n === CHUNK ? block : block.subarray(0, n))) { s.once('drain', pump); return; }
        }
        s.end();
      };
      pump();
      s.on('data', noop);
    });
  });
  const echo = createServer({ allowHalfOpen: true, noDelay: true }, (s) => { s.on('error', noop); s.pipe(s); });
  return { sink: await listen(sink), source: await listen(source), echo: await listen(echo) };
}

/** Writes `bytes`, ends, resolves when the far side's FIN arrives. */
function upload(s: Duplex, bytes: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const block = Buffer.alloc(CHUNK, 0x62);
    let left = bytes;
    s.on('data', noop);
    s.once('end', () => resolve());
    s.once('error', reject);
    const pump = (): void => {
      while (left > 0) {
        const n = Math.min(left, CHUNK);
        left -= n;
        if (!s.write(n === CHUNK ? block : block.subarray(0, n))) { s.once('drain', pump); return; }
      }
      s.end();
    };
    pump();
  });
}

/** Asks the source for `bytes`; resolves when all arrived with the FIN. */
function download(s: Duplex, bytes: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let got = 0;
    s.on('data', (c: Buffer) => { got += c.length; });
    s.once('end', () => (got === bytes ? resolve() : reject(new Error(`short download: ${got} of ${bytes}`))));
    s.once('error', reject);
    const head = Buffer.alloc(8);
    head.writeBigUInt64BE(BigInt(bytes));
    s.end(head);
  });
}

function tcp(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port, noDelay: true, allowHalfOpen: true });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

type Open = (target: keyof Targets) => Promise<Duplex>;

async function mbPerSec(open: Open, dir: 'upload' | 'download', bytes: number): Promise<number> {
  const s = await open(dir === 'upload' ? 'sink' : 'source');
  const t0 = performance.now();
  if (dir === 'upload') await upload(s, bytes);
  else await download(s, bytes);
  return bytes / 1e6 / ((performance.now() - t0) / 1000);
}

/** 64-byte request, 64-byte echo, over `concurrency` connections held open (wrk keep-alive style). */
async function persistentRps(open: Open, concurrency: number, seconds: number): Promise<number> {
  const conns = await Promise.all(Array.from({ length: concurrency }, () => open('echo')));
  const msg = Buffer.alloc(64, 0x63);
  let done = 0;
  const until = performance.now() + seconds * 1000;
  await Promise.all(conns.map((s) => new Promise<void>((resolve) => {
    let got = 0;
    s.on('error', noop);
    s.on('data', (c: Buffer) => {
      got += c.length;
      while (got >= 64) {
        got -= 64;
        done++;
        if (performance.now() < until) s.write(msg);
        else { s.destroy(); resolve(); return; }
      }
    });
    s.write(msg);
  })));
  return done / seconds;
}

/** A new connection per 64-byte request/response. */
async function perConnectionRps(open: Open, concurrency: number, seconds: number): Promise<number> {
  let done = 0;
  const until = performance.now() + seconds * 1000;
  const msg = Buffer.alloc(64, 0x64);
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (performance.now() < until) {
      const s = await open('echo');
      // Request, whole response, then close.
      await new Promise<void>((resolve, reject) => {
        let got = 0;
        s.on('data', (c: Buffer) => {
          got += c.length;
          if (got >= msg.length) s.end();
        });
        s.once('end', () => resolve());
        s.once('error', reject);
        s.write(msg);
      });
      done++;
    }
  }));
  return done / seconds;
}

function forkRole(): ChildProcess {
  return fork(fileURLToPath(import.meta.url), ['--child'], { stdio: 'inherit' });
}

function ask(child: ChildProcess, msg: Msg): Promise<Reply> {
  return new Promise((resolve) => {
    child.once('message', (m) => resolve(m as Reply));
    child.send(msg);
  });
}

async function cpuOf(child: ChildProcess): Promise<number> {
  return ((await ask(child, { kind: 'cpu' })) as { cpuMicros: number }).cpuMicros;
}

/** A stunnel client/server pair with the same kind of certificates, or undefined without stunnel. */
/** Polls until something accepts on the port (5 s). */
async function waitFor(port: number): Promise<boolean> {
  for (let i = 0; i < 100; i++) {
    if (await tcp(port).then((s) => { s.destroy(); return true; }, () => false)) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}

interface Stunnel { ports: Targets; cpuMicros(): [number, number]; stop(): void }

/** utime + stime of a process in microseconds, from /proc (USER_HZ is 100 on Linux). */
function procCpuMicros(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10_000;
  } catch {
    return 0;
  }
}

async function startStunnel(targets: Targets, ca: string, server: TestLeaf, client: TestLeaf): Promise<Stunnel | undefined> {
  try { execFileSync('stunnel', ['-version'], { stdio: 'ignore' }); } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
  }
  const dir = mkdtempSync(join(tmpdir(), 'weft-bench-stunnel-'));
  const file = (name: string, text: string): string => { writeFileSync(join(dir, name), text); return join(dir, name); };
  const caFile = file('ca.pem', ca);
  const free = async (): Promise<number> => {
    const s = createServer();
    const port = await listen(s);
    await new Promise((r) => s.close(r));
    return port;
  };
  const sections = { server: '', client: '' };
  const ports = { sink: 0, source: 0, echo: 0 } as Targets;
  for (const name of ['sink', 'source', 'echo'] as const) {
    const mid = await free();
    ports[name] = await free();
    sections.server += `[${name}]\naccept = 127.0.0.1:${mid}\nconnect = 127.0.0.1:${targets[name]}\n` +
      `cert = ${file('s.pem', server.cert)}\nkey = ${file('s.key', server.key)}\nCAfile = ${caFile}\nverifyChain = yes\nsslVersionMin = TLSv1.3\n`;
    sections.client += `[${name}]\nclient = yes\naccept = 127.0.0.1:${ports[name]}\nconnect = 127.0.0.1:${mid}\n` +
      `cert = ${file('c.pem', client.cert)}\nkey = ${file('c.key', client.key)}\nCAfile = ${caFile}\nverifyChain = yes\nsslVersionMin = TLSv1.3\n`;
  }
  const head = 'foreground = yes\npid =\ndebug = 3\n';
  const procs = ['server', 'client'].map((which) =>
    spawn('stunnel', [file(`${which}.conf`, head + sections[which as 'server' | 'client'])], { stdio: 'ignore' }));
  const stop = (): void => {
    for (const p of procs) p.kill();
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('exit', stop);
  if (!(await waitFor(ports.echo))) {
    stop();
    console.log(`hbone-bench ${procs[0]?.spawnfile}-pair: did not start, skipped (run it in the foreground on the generated config to see why)`);
    return undefined;
  }
  return { ports, cpuMicros: () => [procCpuMicros(procs[1]?.pid), procCpuMicros(procs[0]?.pid)], stop };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      mb: { type: 'string', default: '512' },
      seconds: { type: 'string', default: '5' },
      concurrency: { type: 'string', default: '32' },
      'no-stunnel': { type: 'boolean', default: false },
      repeat: { type: 'string', default: '3' },
      'throughput-only': { type: 'boolean', default: false },
      'node-reads': { type: 'boolean', default: false },
      strace: { type: 'boolean', default: false },
    },
  });
  const bytes = Number(values.mb) * 1e6;
  const seconds = Number(values.seconds);
  const concurrency = Number(values.concurrency);
  const repeat = Number(values.repeat);

  const ca = createTestCa('Weft bench CA');
  const inboundLeaf = ca.issue(SERVER_ID);
  const outboundLeaf = ca.issue(CLIENT_ID);
  const targets = await startTargets();
  const inbound = forkRole();
  const outbound = forkRole();
  const hbonePort = ((await ask(inbound, { kind: 'inbound', leaf: inboundLeaf, pooled: !values['node-reads'] })) as { ports: { hbone: number } }).ports.hbone;
  const agentPorts = ((await ask(outbound, { kind: 'outbound', leaf: outboundLeaf, hbonePort, targets, pooled: !values['node-reads'] })) as { ports: Targets }).ports;
  const stunnel = values['no-stunnel'] ? undefined : await startStunnel(targets, ca.cert, inboundLeaf, outboundLeaf);

  const pool = new HbonePool();
  const paths: Array<[string, Open]> = [
    ['plain-tcp', (t) => tcp(targets[t])],
    ['hbone-pool', (t) => pool.connect({
      sourceKey: CLIENT_ID,
      tls: outboundLeaf,
      dest: { host: '127.0.0.1', port: hbonePort },
      target: `127.0.0.1:${targets[t]}`,
      expectPeer: SERVER_ID,
    })],
    ['hbone-agent-pair', (t) => tcp(agentPorts[t])],
  ];
  if (stunnel) paths.push(['stunnel-pair', (t) => tcp(stunnel.ports[t])]);

  const print = (figure: string, path: string, value: number, unit: string, base: number | undefined): void => {
    const ratio = base !== undefined && path !== 'plain-tcp' ? `  (${(value / base).toFixed(2)}x plain-tcp)` : '';
    console.log(`hbone-bench ${figure} ${path}: ${value.toFixed(unit === 'MB/s' ? 1 : 0)} ${unit}${ratio}`);
  };

  // Warm up every path (handshakes, JIT).
  for (const [, open] of paths) await upload(await open('sink'), 32e6);

  // Best of `repeat` runs: loopback figures on a shared machine only ever err on the low side.
  for (const dir of ['upload', 'download'] as const) {
    let base: number | undefined;
    for (const [name, open] of paths) {
      let best = 0;
      let cpuOut = Infinity;
      let cpuIn = Infinity;
      for (let r = 0; r < repeat; r++) {
        // CPU of the two proxies (client side, server side) around the transfer.
        const cpu = async (): Promise<[number, number] | undefined> => {
          if (name === 'hbone-agent-pair') return [await cpuOf(outbound), await cpuOf(inbound)];
          if (name === 'stunnel-pair' && stunnel) return stunnel.cpuMicros();
          return undefined;
        };
        const c0 = await cpu();
        best = Math.max(best, await mbPerSec(open, dir, bytes));
        const c1 = await cpu();
        if (c0 && c1) {
          cpuOut = Math.min(cpuOut, (c1[0] - c0[0]) / 1000 / (bytes / 1e9));
          cpuIn = Math.min(cpuIn, (c1[1] - c0[1]) / 1000 / (bytes / 1e9));
        }
      }
      base ??= best;
      print(`single-stream ${dir} ${values.mb} MB`, name, best, 'MB/s', base);
      if (cpuOut !== Infinity) {
        console.log(`hbone-bench single-stream ${dir} cpu ms per GB ${name}: client-side proxy ${cpuOut.toFixed(0)}, server-side proxy ${cpuIn.toFixed(0)}`);
      }
    }
  }
  if (values['throughput-only']) paths.length = 0;
  for (const [figure, fn] of [
    [`req/s 64B echo on ${concurrency} open connections`, persistentRps],
    [`req/s 64B echo with a new connection per request, ${concurrency} concurrent`, perConnectionRps],
  ] as const) {
    let base: number | undefined;
    for (const [name, open] of paths) {
      const v = await fn(open, concurrency, seconds);
      base ??= v;
      print(figure, name, v, 'req/s', base);
    }
  }

  if (values.strace) {
    // Syscalls of both proxies (outbound + inbound) per unit of work on the agent-pair path.
    const open: Open = (t) => tcp(agentPorts[t]);
    const pids = [outbound.pid!, inbound.pid!];
    for (const dir of ['upload', 'download'] as const) {
      const w = await straceCount(pids);
      await mbPerSec(open, dir, bytes);
      console.log(`hbone-bench syscalls per MB ${dir} hbone-agent-pair: ${JSON.stringify(perUnit(await w.stop(), bytes / 1e6))}`);
    }
    const w = await straceCount(pids);
    const rps = await persistentRps(open, concurrency, seconds);
    console.log(`hbone-bench syscalls per request 64B echo on ${concurrency} open connections hbone-agent-pair: ${JSON.stringify(perUnit(await w.stop(), rps * seconds))}`);
  }

  await pool.close(100);
  stunnel?.stop();
  inbound.kill();
  outbound.kill();
  process.exit(0);
}

// Helpers (stunnel) are stopped from 'exit' handlers; make signals go through them.
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(1));

if (process.argv.includes('--child')) await runChild();
else await main();
