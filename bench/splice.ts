/**
 * Same-node splice micro-benchmark (root: a lab netns, BPF). The agent's splice (agent/src/splice.ts,
 * bpf/splice.bpf.c) against the agent's pipe (what the agent runs without `--splice`), both through the agent
 * stand-in test/bpf/fixtures/splicer.ts in its own process inside a lab netns, one connection of
 * <mb> MiB per figure, client → server:
 *
 *   node bench/splice.ts [--mb 200] [--repeat 3]
 *
 *   keeps-up    a reader that keeps up: the sender writes 1 MiB at a time once the reader is
 *               within 2 MiB of it
 *   far-ahead   a sender far ahead of its reader: the sender writes as fast as its socket takes
 *               it (Node's backpressure only), the reader reads as it comes; a redirect has no
 *               backpressure of its own, so this is where the kernel hands the direction to the
 *               agent and takes it back (bpf/include/weft_splice.h)
 *   ping-pong   request/response: 5,000 round trips of 100 bytes, the server echoing each
 *
 * Each line: MB/s (first write to last byte read), the stand-in's CPU seconds per GB, and for
 * the splice how many times the direction went to the agent and the share of bytes it carried.
 * Medians of --repeat runs; every run goes to stdout as JSON at the end.
 */
import net from 'node:net';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import { Lab, type Netns } from '../test/lab/lab.ts';
import { until } from '../test/lab/wait.ts';
import { createBoundSocketInNetns, createSocketInNetns } from '../agent/libbpf/index.ts';
import { Datapath } from '../agent/src/datapath/index.ts';
import { parseProcStatCpuTicks } from './parse.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
const OBJECT_DIR = resolve(HERE, '..', 'build', 'bpf');
const SPLICER = resolve(HERE, '..', 'test', 'bpf', 'fixtures', 'splicer.ts');
const SERVER_PORT = 18080;
const PORTS = { splice: 15001, pipe: 15002 } as const;
const CHUNK = 1024 * 1024;
const CLOCK_TICKS = 100;

type Mode = keyof typeof PORTS;
type Shape = 'keeps-up' | 'far-ahead';
interface Figure { mode: Mode; shape: Shape; mbPerS: number; cpuSPerGb: number; handbacks?: number; agentShare?: number }

const { values } = parseArgs({ options: { mb: { type: 'string', default: '200' }, repeat: { type: 'string', default: '3' } } });
const MB = Number(values.mb);
const REPEAT = Number(values.repeat);
if (!Number.isInteger(MB) || MB < 1 || !Number.isInteger(REPEAT) || REPEAT < 1) throw new Error('--mb and --repeat take whole numbers ≥ 1');

interface Splicer { child: ChildProcess; lines: Array<Record<string, unknown>>; stderr: string }

function startSplicer(lab: Lab, node: Netns, mode: Mode): Splicer {
  const child = lab.spawn(process.execPath, [SPLICER, lab.pinRoot, lab.cgroupDir, OBJECT_DIR, String(PORTS[mode]), String(SERVER_PORT), mode], { netns: node });
  const s: Splicer = { child, lines: [], stderr: '' };
  let buf = '';
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) { s.lines.push(JSON.parse(buf.slice(0, i)) as Record<string, unknown>); buf = buf.slice(i + 1); }
  });
  child.stderr!.on('data', (d: Buffer) => { s.stderr += d.toString(); });
  return s;
}

function cpuSeconds(pid: number): number {
  return parseProcStatCpuTicks(readFileSync(`/proc/${pid}/stat`, 'utf8'))! / CLOCK_TICKS;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench/splice.ts needs root (a netns, BPF)');
  const lab = new Lab();
  const node = lab.netns('node');
  const dp = Datapath.open({ pinRoot: lab.pinRoot, cgroupPath: lab.cgroupDir, objectDir: OBJECT_DIR });
  const accepted: net.Socket[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (s) => { s.on('error', () => {}); accepted.push(s); });
  await new Promise<void>((r) => server.listen({ fd: createSocketInNetns(node.path, { listen: { host: '127.0.0.1', port: SERVER_PORT } }) }, r));
  const splicers = { splice: startSplicer(lab, node, 'splice'), pipe: startSplicer(lab, node, 'pipe') };
  try {
    for (const s of Object.values(splicers)) {
      await until('the stand-in listens', () => s.lines.some((l) => l.event === 'listening'), 20_000, { explain: () => s.stderr });
    }
    const payload = randomBytes(MB * CHUNK);
    const runs: Figure[] = [];
    const pings: PingPong[] = [];
    for (let r = 0; r < REPEAT; r++) {
      for (const shape of ['keeps-up', 'far-ahead'] as const) {
        for (const mode of ['splice', 'pipe'] as const) {
          const f = await transfer(splicers[mode], mode, shape, payload, node, accepted, dp);
          runs.push(f);
          process.stderr.write(`[splice bench] run ${r + 1} ${shape} ${mode}: ${f.mbPerS.toFixed(0)} MB/s, ${f.cpuSPerGb.toFixed(2)} CPU s/GB${f.handbacks !== undefined ? `, handed to the agent ${f.handbacks} times, ${(f.agentShare! * 100).toFixed(1)} % of the bytes` : ''}\n`);
        }
      }
      for (const mode of ['splice', 'pipe'] as const) {
        const p = await pingPong(splicers[mode], mode, node, accepted);
        pings.push(p);
        process.stderr.write(`[splice bench] run ${r + 1} ping-pong ${mode}: ${p.roundTripsPerS.toFixed(0)} round trips/s, ${p.cpuUsPerRoundTrip.toFixed(1)} agent CPU µs each\n`);
      }
    }
    process.stdout.write(`same-node splice vs pipe, ${MB} MiB per run, medians of ${REPEAT}\n`);
    for (const shape of ['keeps-up', 'far-ahead'] as const) {
      for (const mode of ['splice', 'pipe'] as const) {
        const rs = runs.filter((f) => f.shape === shape && f.mode === mode);
        const rate = rs.map((f) => f.mbPerS);
        const extra = mode === 'splice' ? `  handed back ${median(rs.map((f) => f.handbacks!))}×, agent carried ${(median(rs.map((f) => f.agentShare!)) * 100).toFixed(1)} %` : '';
        process.stdout.write(`${shape.padEnd(10)} ${mode.padEnd(7)} ${median(rate).toFixed(0).padStart(5)} MB/s (${Math.min(...rate).toFixed(0)}–${Math.max(...rate).toFixed(0)})  ${median(rs.map((f) => f.cpuSPerGb)).toFixed(2)} agent CPU s/GB${extra}\n`);
      }
    }
    for (const mode of ['splice', 'pipe'] as const) {
      const ps = pings.filter((p) => p.mode === mode);
      const rate = ps.map((p) => p.roundTripsPerS);
      process.stdout.write(`${'ping-pong'.padEnd(10)} ${mode.padEnd(7)} ${median(rate).toFixed(0).padStart(5)} round trips/s (${Math.min(...rate).toFixed(0)}–${Math.max(...rate).toFixed(0)})  ${median(ps.map((p) => p.cpuUsPerRoundTrip)).toFixed(1)} agent CPU µs each\n`);
    }
    process.stdout.write(`${JSON.stringify({ mb: MB, repeat: REPEAT, runs, pings })}\n`);
  } finally {
    for (const s of accepted) s.destroy();
    server.close();
    dp.close();
    await lab.cleanup();
  }
}

interface Connection { client: net.Socket; srv: net.Socket; pair: { client: string } | null; closed: () => Promise<number> }

/** A client in the lab netns connected through the stand-in, and the server's end of it. */
async function connectThrough(sp: Splicer, mode: Mode, node: Netns, accepted: net.Socket[]): Promise<Connection> {
  const closedBefore = sp.lines.filter((l) => l.event === 'closed').length;
  const splicedBefore = sp.lines.filter((l) => l.event === 'spliced').length;
  const acceptedBefore = accepted.length;
  const bound = createBoundSocketInNetns(node.path, { bind: { host: '127.0.0.1', port: 0 } });
  const client = new net.Socket({ fd: bound.fd, readable: true, writable: true, allowHalfOpen: true });
  client.on('error', () => {});
  client.connect(PORTS[mode], '127.0.0.1');
  await once(client, 'connect');
  await until('the stand-in took the connection', () => sp.lines.filter((l) => l.event === 'spliced').length > splicedBefore && accepted.length > acceptedBefore, 10_000, { explain: () => sp.stderr });
  return {
    client, srv: accepted[acceptedBefore]!,
    pair: sp.lines.filter((l) => l.event === 'spliced')[splicedBefore]!.pair as { client: string } | null,
    closed: () => until('the stand-in closed the connection', () => sp.lines.filter((l) => l.event === 'closed').length > closedBefore, 10_000),
  };
}

interface PingPong { mode: Mode; roundTripsPerS: number; cpuUsPerRoundTrip: number }
const ROUND_TRIPS = 5000;

async function pingPong(sp: Splicer, mode: Mode, node: Netns, accepted: net.Socket[]): Promise<PingPong> {
  const { client, srv, closed } = await connectThrough(sp, mode, node, accepted);
  srv.on('data', (d: Buffer) => { srv.write(d); });
  let back = 0;
  let waiter: { at: number; resolve: () => void } | undefined;
  client.on('data', (d: Buffer) => {
    back += d.length;
    if (waiter && back >= waiter.at) { waiter.resolve(); waiter = undefined; }
  });
  const request = Buffer.alloc(100, 1);
  const cpu0 = cpuSeconds(sp.child.pid!);
  const t0 = process.hrtime.bigint();
  for (let i = 1; i <= ROUND_TRIPS; i++) {
    const answered = new Promise<void>((r) => { waiter = { at: i * request.length, resolve: r }; });
    client.write(request);
    await answered;
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = cpuSeconds(sp.child.pid!) - cpu0;
  client.end();
  srv.end();
  await closed();
  srv.destroy();
  client.destroy();
  return { mode, roundTripsPerS: ROUND_TRIPS / seconds, cpuUsPerRoundTrip: (cpu * 1e6) / ROUND_TRIPS };
}

async function transfer(sp: Splicer, mode: Mode, shape: Shape, payload: Buffer, node: Netns, accepted: net.Socket[], dp: Datapath): Promise<Figure> {
  const { client, srv, pair, closed } = await connectThrough(sp, mode, node, accepted);
  // Event-driven, not polled: a poll interval would pace the sender, not the reader.
  let got = 0;
  let waiter: { at: number; resolve: () => void } | undefined;
  srv.on('data', (d: Buffer) => {
    got += d.length;
    if (waiter && got >= waiter.at) { waiter.resolve(); waiter = undefined; }
  });
  const reached = (at: number): Promise<void> | undefined => (got >= at ? undefined : new Promise((r) => { waiter = { at, resolve: r }; }));
  const cpu0 = cpuSeconds(sp.child.pid!);
  const t0 = process.hrtime.bigint();
  for (let off = 0; off < payload.length; off += CHUNK) {
    if (shape === 'keeps-up') await reached(off - 2 * CHUNK);
    if (!client.write(payload.subarray(off, off + CHUNK))) await once(client, 'drain');
  }
  await Promise.race([reached(payload.length), new Promise((_r, reject) => setTimeout(() => reject(new Error(`${mode} ${shape}: ${got} of ${payload.length} bytes in 120 s`)), 120_000).unref())]);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = cpuSeconds(sp.child.pid!) - cpu0;
  const entry = pair ? dp.splicedSockets().find((e) => e.cookie.toString() === pair.client) : undefined;
  client.end();
  srv.end();
  await closed();
  srv.destroy();
  client.destroy();
  return {
    mode, shape,
    mbPerS: payload.length / 1e6 / seconds,
    cpuSPerGb: cpu / (payload.length / 1e9),
    ...(entry ? { handbacks: entry.handbacks, agentShare: Number(entry.passed) / payload.length } : {}),
  };
}

await main();
