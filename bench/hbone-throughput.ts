/**
 * Loopback HBONE micro-benchmark. The parent process is the client (HbonePool); a forked child is
 * the far side (HboneServer plus TCP sink and echo servers), so the two ends get their own CPU the
 * way two agents do. Prints one line per figure:
 *
 *   node bench/hbone-throughput.ts [--mb 512] [--seconds 5] [--concurrency 32]
 */
import { fork, type ChildProcess } from 'node:child_process';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createTestCa, type TestLeaf } from '../test/unit/hbone-certs.ts';
import { HbonePool, HboneServer } from '../lib/hbone/index.ts';

interface Ports { hbone: number; sink: number; source: number; echo: number }
interface ChildInit { leaf: TestLeaf }

const CHUNK = 64 * 1024;
const SERVER_ID = 'spiffe://bench.local/ns/bench/sa/server';
const CLIENT_ID = 'spiffe://bench.local/ns/bench/sa/client';

async function listen(server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

/** The far side: HBONE server that connects to local targets, a sink, a source and an echo server. */
async function runChild(): Promise<void> {
  const init = await new Promise<ChildInit>((resolve) => process.once('message', (m) => resolve(m as ChildInit)));
  // Sink: reads everything, answers the FIN with its own.
  const sink = createServer({ allowHalfOpen: true, noDelay: true }, (s) => {
    s.on('data', noop);
    s.on('end', () => s.end());
  });
  // Source: the first 8 bytes are a big-endian byte count to send back, then FIN.
  const source = createServer({ allowHalfOpen: true, noDelay: true }, (s) => {
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
    });
    s.on('data', noop);
  });
  const echo = createServer({ allowHalfOpen: true, noDelay: true }, (s) => s.pipe(s));
  const hbone = new HboneServer({
    tls: init.leaf,
    handler: async (req) => {
      const up = connect({ host: req.target.host, port: req.target.port, noDelay: true, allowHalfOpen: true });
      await new Promise<void>((resolve, reject) => { up.once('connect', resolve); up.once('error', reject); });
      return { upstream: up };
    },
  });
  const ports: Ports = {
    hbone: (await hbone.listen(0, '127.0.0.1')).port,
    sink: await listen(sink),
    source: await listen(source),
    echo: await listen(echo),
  };
  process.send?.(ports);
}

function noop(): void {}

/** Writes `bytes` into `s`, ends it, resolves when the far side's FIN arrives. */
function upload(s: NodeJS.ReadWriteStream & { destroy(): void }, bytes: number): Promise<void> {
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

/** Asks the source for `bytes`, resolves when all arrived and the FIN came. */
function download(s: NodeJS.ReadWriteStream, bytes: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let got = 0;
    s.on('data', (c: Buffer) => { got += c.length; });
    s.once('end', () => (got === bytes ? resolve() : reject(new Error(`short download: ${got} of ${bytes}`))));
    s.once('error', reject);
    const head = Buffer.alloc(8);
    head.writeBigUInt64BE(BigInt(bytes));
    s.write(head);
    s.end();
  });
}

function tcp(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port, noDelay: true, allowHalfOpen: true });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      mb: { type: 'string', default: '512' },
      seconds: { type: 'string', default: '5' },
      concurrency: { type: 'string', default: '32' },
    },
  });
  const mb = Number(values.mb);
  const seconds = Number(values.seconds);
  const concurrency = Number(values.concurrency);
  const bytes = mb * 1024 * 1024;

  const ca = createTestCa('Weft bench CA');
  const serverLeaf = ca.issue(SERVER_ID);
  const clientLeaf = ca.issue(CLIENT_ID);
  const child: ChildProcess = fork(fileURLToPath(import.meta.url), ['--child'], { stdio: 'inherit' });
  const ports = await new Promise<Ports>((resolve) => {
    child.once('message', (m) => resolve(m as Ports));
    child.send({ leaf: serverLeaf } satisfies ChildInit);
  });
  const pool = new HbonePool();
  const tunnel = (port: number) => pool.connect({
    sourceKey: CLIENT_ID,
    tls: clientLeaf,
    dest: { host: '127.0.0.1', port: ports.hbone },
    target: `127.0.0.1:${port}`,
    expectPeer: SERVER_ID,
  });
  // Warm the session (handshake) and the JIT.
  await upload(await tunnel(ports.sink), 16 * 1024 * 1024);
  await upload(await tcp(ports.sink), 16 * 1024 * 1024);

  const rate = async (open: () => Promise<NodeJS.ReadWriteStream & { destroy(): void }>, dir: 'up' | 'down'): Promise<number> => {
    const s = await open();
    const t0 = performance.now();
    if (dir === 'up') await upload(s, bytes);
    else await download(s, bytes);
    return bytes / 1024 / 1024 / ((performance.now() - t0) / 1000);
  };
  const line = (what: string, value: number, unit: string, base?: number): void => {
    const ratio = base ? ` (${(value / base).toFixed(2)}x plain TCP)` : '';
    console.log(`hbone-bench ${what}: ${value.toFixed(unit === 'MB/s' ? 1 : 0)} ${unit}${ratio}`);
  };

  for (const dir of ['up', 'down'] as const) {
    const port = dir === 'up' ? ports.sink : ports.source;
    const plain = await rate(() => tcp(port), dir);
    const hb = await rate(() => tunnel(port), dir);
    line(`single-stream ${dir === 'up' ? 'upload' : 'download'} ${mb} MiB plain-tcp`, plain, 'MB/s');
    line(`single-stream ${dir === 'up' ? 'upload' : 'download'} ${mb} MiB hbone`, hb, 'MB/s', plain);
  }

  // Request/response: 64-byte request, 64-byte echo, over connections held open (wrk keep-alive style).
  const persistent = async (open: () => Promise<NodeJS.ReadWriteStream & { destroy(): void }>): Promise<number> => {
    const conns = await Promise.all(Array.from({ length: concurrency }, () => open()));
    const msg = Buffer.alloc(64, 0x63);
    let done = 0;
    const until = performance.now() + seconds * 1000;
    await Promise.all(conns.map((s) => new Promise<void>((resolve) => {
      let got = 0;
      s.on('data', (c: Buffer) => {
        got += c.length;
        if (got < 64) return;
        got -= 64;
        done++;
        if (performance.now() < until) s.write(msg);
        else { s.destroy(); resolve(); }
      });
      s.on('error', noop);
      s.write(msg);
    })));
    return done / seconds;
  };
  const plainRr = await persistent(() => tcp(ports.echo));
  const hbRr = await persistent(() => tunnel(ports.echo));
  line(`req/s 64B echo on ${concurrency} open connections plain-tcp`, plainRr, 'req/s');
  line(`req/s 64B echo on ${concurrency} open connections hbone`, hbRr, 'req/s', plainRr);

  // A new connection (CONNECT stream on the pooled session) per request.
  const perRequest = async (open: () => Promise<NodeJS.ReadWriteStream & { destroy(): void }>): Promise<number> => {
    let done = 0;
    const until = performance.now() + seconds * 1000;
    const msg = Buffer.alloc(64, 0x64);
    await Promise.all(Array.from({ length: concurrency }, async () => {
      while (performance.now() < until) {
        const s = await open();
        await new Promise<void>((resolve, reject) => {
          s.on('data', noop);
          s.once('end', () => resolve());
          s.once('error', reject);
          s.end(msg);
        });
        done++;
      }
    }));
    return done / seconds;
  };
  const plainNew = await perRequest(() => tcp(ports.echo));
  const hbNew = await perRequest(() => tunnel(ports.echo));
  line(`req/s 64B echo, new connection per request, c=${concurrency}, plain-tcp`, plainNew, 'req/s');
  line(`req/s 64B echo, new connection per request, c=${concurrency}, hbone`, hbNew, 'req/s', plainNew);

  await pool.close(100);
  child.kill();
}

if (process.argv.includes('--child')) await runChild();
else await main();
