/**
 * What receiving one HBONE stream costs, with Node's http2 and with a minimal HTTP/2 framing of
 * our own over the TLS socket's reads. A measurement for docs/PERFORMANCE.md ("what own HTTP/2
 * framing would save"), not a client: the framing half handles exactly one CONNECT stream from a
 * well-behaved Node server (no HPACK decoding, no error handling) and is not used by any part.
 *
 *   node bench/h2-receive.ts [--mb 2048] [--repeat 3] [--discard]
 *
 * Processes (one event loop each, as between two agents):
 *   sender    an http2 server that answers a CONNECT with 200 and sends --mb MiB on it
 *   sink      a TCP server that reads and drops (through the read pool)
 *   receiver  one per run, alternating the two ways, its CPU measured with process.cpuUsage():
 *     node    http2.connect, the CONNECT stream piped into a TCP connection to the sink with
 *             pipeBidirectional (the pool's client side on a download)
 *     framing tls.connect with an `onread` buffer; DATA payloads are cut out of the decrypted bytes
 *             (copied once into reused 256 KiB chunks) and written to the sink, corked per
 *             event-loop turn; WINDOW_UPDATE once the sink has taken 1 MiB
 * --discard drops the payload in the receiver instead of writing it to the sink.
 */
import { fork, type ChildProcess } from 'node:child_process';
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createTestCa, type TestLeaf } from '../test/unit/hbone-certs.ts';
import { adoptWithPooledReads, pipeBidirectional, pooledReads } from '../lib/hbone/index.ts';
import { isPooledChunk, releaseChunk } from '../lib/hbone/read-pool.ts';

interface Setup { leaf: TestLeaf; mb: number; discard: boolean; port?: number; sink?: number }
interface Result { cpuMicros: number; wallMs: number; bytes: number }

const WINDOW = 4 * 1024 * 1024;
const CONNECTION_WINDOW = 64 * 1024 * 1024;
const ACK_EVERY = 1024 * 1024;

function cpuMicros(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port)));
}

function sender(s: Setup): Promise<number> {
  const server = http2.createSecureServer({ key: s.leaf.key, cert: s.leaf.cert, ca: s.leaf.ca, settings: { initialWindowSize: WINDOW } });
  const block = Buffer.alloc(64 * 1024, 7);
  server.on('stream', (stream) => {
    stream.respond({ ':status': 200 });
    let left = s.mb * 16;
    const pump = (): void => {
      while (left > 0) {
        left--;
        if (!stream.write(block)) { stream.once('drain', pump); return; }
      }
      stream.end();
    };
    pump();
  });
  return listen(server);
}

function sink(): Promise<number> {
  const server = net.createServer({ pauseOnConnect: true }, (accepted) => {
    const socket = adoptWithPooledReads(accepted);
    socket.on('data', (c: Buffer) => { if (isPooledChunk(c)) releaseChunk(c); });
    socket.on('end', () => socket.end());
    socket.resume();
  });
  return listen(server);
}

function receiveNode(s: Setup): Promise<Result> {
  const c0 = cpuMicros();
  const t0 = performance.now();
  const session = http2.connect(`https://127.0.0.1:${s.port}`, {
    key: s.leaf.key, cert: s.leaf.cert, ca: s.leaf.ca, checkServerIdentity: () => undefined,
    settings: { initialWindowSize: WINDOW },
  });
  session.on('connect', () => session.setLocalWindowSize(CONNECTION_WINDOW));
  const stream = session.request({ ':method': 'CONNECT', ':authority': 'sink:80' });
  const done = (bytes: number): Result => {
    session.close();
    return { cpuMicros: cpuMicros() - c0, wallMs: performance.now() - t0, bytes };
  };
  if (s.discard) {
    let bytes = 0;
    stream.on('data', (c: Buffer) => { bytes += c.length; });
    return new Promise((resolve) => stream.on('end', () => resolve(done(bytes))));
  }
  const out: net.Socket = net.connect({ host: '127.0.0.1', port: s.sink!, onread: pooledReads(() => out) });
  return pipeBidirectional(stream, out).then((r) => done(r.bytesAtoB));
}

function frame(type: number, flags: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(stream, 5);
  return Buffer.concat([h, payload]);
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

function receiveFraming(s: Setup): Promise<Result> {
  const c0 = cpuMicros();
  const t0 = performance.now();
  const out = s.discard ? undefined : net.connect({ host: '127.0.0.1', port: s.sink! });
  let resolveDone!: (r: Result) => void;
  const finished = new Promise<Result>((r) => { resolveDone = r; });
  let bytes = 0;
  let taken = 0; // payload bytes handed to the sink, not yet returned as window
  let ended = false;
  let corked = false;

  // Decrypted bytes are copied once, into reused 256 KiB chunks, several reads to a chunk; a chunk
  // is reused when every write of its payload has completed.
  const free: Buffer[] = [];
  const refs = new Map<Buffer, number>();
  let cur: Buffer | undefined;
  let curOff = 0;
  const unref = (b: Buffer): void => {
    const r = refs.get(b)! - 1;
    if (r > 0) { refs.set(b, r); return; }
    refs.delete(b);
    if (free.length < 64) free.push(b);
  };
  const giveWindow = (n: number): void => {
    taken += n;
    if (taken < ACK_EVERY) return;
    tlsSocket.write(Buffer.concat([frame(8, 0, 0, u32(taken)), frame(8, 0, 1, u32(taken))]));
    taken = 0;
  };

  // Frame parser state.
  const head = Buffer.alloc(9);
  let headHave = 0;
  let left = 0;
  let type = 0;
  let flags = 0;
  let streamId = 0;
  let control: Buffer[] = [];
  const endFrame = (): void => {
    headHave = 0;
    if (type === 4 && !(flags & 1)) tlsSocket.write(frame(4, 1, 0));
    if (type === 6 && !(flags & 1)) tlsSocket.write(frame(6, 1, 0, Buffer.concat(control)));
    const streamEnd = ((type === 0 || type === 1) && (flags & 1)) || type === 3;
    if (!streamEnd || streamId !== 1 || ended) return;
    ended = true;
    const report = (): void => {
      tlsSocket.destroy();
      resolveDone({ cpuMicros: cpuMicros() - c0, wallMs: performance.now() - t0, bytes });
    };
    if (out) out.end(report);
    else report();
  };

  const onRead = (shared: Buffer, n: number): void => {
    if (!cur || curOff + n > cur.length) {
      if (cur) unref(cur);
      cur = free.pop() ?? Buffer.from(new ArrayBuffer(256 * 1024));
      curOff = 0;
      refs.set(cur, 1);
    }
    const base = cur;
    const c = cur.subarray(curOff, curOff + n);
    shared.copy(c, 0, 0, n);
    curOff += n;
    const payload: Buffer[] = [];
    let payloadBytes = 0;
    let off = 0;
    while (off < n) {
      if (left === 0 && headHave < 9) {
        const k = Math.min(9 - headHave, n - off);
        c.copy(head, headHave, off, off + k);
        headHave += k;
        off += k;
        if (headHave < 9) break;
        left = head.readUIntBE(0, 3);
        type = head[3]!;
        flags = head[4]!;
        streamId = head.readUInt32BE(5) & 0x7fffffff;
        control = [];
        if (left === 0) { endFrame(); continue; }
      }
      const k = Math.min(left, n - off);
      if (type === 0) { payload.push(c.subarray(off, off + k)); payloadBytes += k; }
      else control.push(c.subarray(off, off + k));
      off += k;
      left -= k;
      if (left === 0) endFrame();
    }
    bytes += payloadBytes;
    if (payloadBytes === 0) return;
    if (!out) { giveWindow(payloadBytes); return; }
    if (!corked) {
      corked = true;
      out.cork();
      setImmediate(() => { corked = false; out.uncork(); });
    }
    for (let i = 0; i < payload.length - 1; i++) out.write(payload[i]!);
    refs.set(base, refs.get(base)! + 1);
    out.write(payload[payload.length - 1]!, () => { unref(base); giveWindow(payloadBytes); });
  };

  const settings = Buffer.alloc(6);
  settings.writeUInt16BE(4, 0); // SETTINGS_INITIAL_WINDOW_SIZE
  settings.writeUInt32BE(WINDOW, 2);
  const authority = Buffer.from('sink:80');
  // HPACK, literal without indexing, indexed names: :method (2) CONNECT, :authority (1).
  const headers = Buffer.concat([Buffer.from([0x02, 7]), Buffer.from('CONNECT'), Buffer.from([0x01, authority.length]), authority]);
  const tlsSocket = tls.connect({
    host: '127.0.0.1', port: s.port!, key: s.leaf.key, cert: s.leaf.cert, ca: s.leaf.ca, ALPNProtocols: ['h2'],
    checkServerIdentity: () => undefined,
    onread: { buffer: Buffer.allocUnsafe(256 * 1024), callback: (n: number, buf: Buffer) => { onRead(buf, n); } },
  } as tls.ConnectionOptions);
  tlsSocket.on('secureConnect', () => {
    tlsSocket.write(Buffer.concat([
      Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'),
      frame(4, 0, 0, settings),
      frame(8, 0, 0, u32(CONNECTION_WINDOW - 65535)),
      frame(1, 4, 1, headers),
    ]));
  });
  return finished;
}

async function child(role: string): Promise<void> {
  const s = JSON.parse(process.env.H2_RECEIVE_SETUP!) as Setup;
  if (role === 'sender') process.send!({ port: await sender(s) });
  else if (role === 'sink') process.send!({ port: await sink() });
  else process.send!(await (role === 'node' ? receiveNode(s) : receiveFraming(s)));
}

function start(role: string, setup: Setup): Promise<[ChildProcess, unknown]> {
  return new Promise((resolve, reject) => {
    const c = fork(fileURLToPath(import.meta.url), ['--role', role], { env: { ...process.env, H2_RECEIVE_SETUP: JSON.stringify(setup) } });
    c.once('message', (m) => resolve([c, m]));
    c.once('exit', (code) => reject(new Error(`${role} exited with ${code}`)));
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { role: { type: 'string' }, mb: { type: 'string', default: '2048' }, repeat: { type: 'string', default: '3' }, discard: { type: 'boolean', default: false } } });
  if (values.role) { await child(values.role); return; }
  const leaf = createTestCa().issue('spiffe://bench.local/ns/bench/sa/h2');
  const setup: Setup = { leaf, mb: Number(values.mb), discard: values.discard };
  const [snd, sent] = await start('sender', setup);
  const [snk, sunk] = await start('sink', setup);
  const runSetup = { ...setup, port: (sent as { port: number }).port, sink: (sunk as { port: number }).port };
  try {
    console.log(`receiving ${setup.mb} MiB on one HBONE stream${setup.discard ? ', payload dropped' : ', written to a TCP sink'}; receiver CPU per GB and MB/s`);
    for (let i = 0; i < Number(values.repeat); i++) {
      for (const way of ['node', 'framing']) {
        const [c, r] = await start(way, runSetup);
        c.kill();
        const { cpuMicros: cpu, wallMs, bytes } = r as Result;
        const gb = bytes / 2 ** 30;
        console.log(`${way.padEnd(8)} ${(cpu / 1000 / gb).toFixed(0).padStart(5)} ms/GB ${(bytes / 2 ** 20 / (wallMs / 1000)).toFixed(0).padStart(5)} MB/s`);
      }
    }
  } finally {
    snd.kill();
    snk.kill();
  }
}

await main();
