/**
 * Socket reads without an allocation per read: what the tunnel pipe (pipe.ts) reads from a plain
 * TCP socket lands in one buffer shared by every such socket of the process, and is copied out
 * into a chunk that the pipe hands back once the far side has written it.
 *
 * Why. Node reads a TCP socket into a fresh 64 KiB ArrayBuffer per read (shrunk to the bytes read
 * with a realloc). A bulk stream makes tens of thousands of them a second, each counted by V8 as
 * external memory; they are freed only by a garbage collection, and a process that allocates few
 * JavaScript objects (a relay) runs almost no young-generation collections, so they go by V8's
 * external-memory limit instead: a full mark-compact every 64 MB or so (measured: 25 to 28 per 2 GB
 * relayed, and about 1,200 in one run of bench/hbone-throughput.ts). Reading into a buffer the
 * socket is given (Node's `onread` option) and reusing the chunks took a plain relay from 1,030-1,170
 * to 660-750 CPU ms per GB, with no mark-compact, and its RSS from 136 to 63 MB
 * (docs/PERFORMANCE.md, "reads into pooled chunks").
 *
 * Safety. One read buffer serves every socket because Node hands each read to its callback
 * synchronously and the callback copies the bytes out before returning; no socket holds a buffer
 * while idle (a chunk per socket would cost 64 KiB per open connection). A copied-out chunk goes
 * back to the pool only through `releaseChunk`, which the pipe calls from the write callback of
 * the one write it made of it: Node calls that once the destination no longer reads the bytes (the
 * kernel took them, or TLS or HTTP/2 copied them, or the write was cancelled). A chunk that any
 * other consumer receives is simply never released, so it is never reused. Chunks come in three
 * sizes (64, 128, 256 KiB) and reads under 32 KiB are copied into a buffer of their own size, so
 * what a slow peer makes the pipe buffer costs at most twice its bytes.
 */
import net from 'node:net';

/**
 * Bytes one read may return. Node asks libuv for 64 KiB; a bigger buffer costs nothing per socket
 * here (there is one), and when a bulk sender runs ahead a read takes up to this much at once:
 * a quarter less relay CPU per GB than 64 KiB reads (docs/PERFORMANCE.md).
 */
export const READ_SIZE = 256 * 1024;
/** The smallest pooled chunk; a read under half of it is copied into a buffer of its own size. */
const MIN_CHUNK = 64 * 1024;
/** Chunk sizes: 64, 128 and 256 KiB, so that a chunk is never more than twice the bytes it holds. */
const CLASSES = [MIN_CHUNK, 2 * MIN_CHUNK, READ_SIZE] as const;
/** Bytes of free chunks kept for reuse; chunks freed beyond it are left to the GC. */
const MAX_FREE_BYTES = 4 * 1024 * 1024;

const shared = Buffer.allocUnsafeSlow(READ_SIZE);
/** Free chunks per size class (CLASSES). */
const free: ArrayBuffer[][] = CLASSES.map(() => []);
let freeBytes = 0;
/** Chunks handed out and not yet released (a release of anything else is ignored). */
const lent = new WeakSet<ArrayBuffer>();
const stats = { reads: 0, pooled: 0, allocated: 0, reused: 0, released: 0 };

/** Copies the `n` bytes read into `shared` out into a buffer the caller may keep. */
function copyOut(n: number): Buffer {
  stats.reads++;
  if (n < MIN_CHUNK / 2) {
    const own = Buffer.allocUnsafe(n);
    shared.copy(own, 0, 0, n);
    return own;
  }
  stats.pooled++;
  const c = n <= CLASSES[0] ? 0 : n <= CLASSES[1] ? 1 : 2;
  let ab = free[c]!.pop();
  if (ab) {
    stats.reused++;
    freeBytes -= ab.byteLength;
  } else {
    ab = new ArrayBuffer(CLASSES[c]);
    stats.allocated++;
  }
  lent.add(ab);
  const chunk = Buffer.from(ab, 0, n);
  shared.copy(chunk, 0, 0, n);
  return chunk;
}

/** Whether `chunk` came from the pool and is still lent: a write of it should release it. */
export function isPooledChunk(chunk: Buffer): boolean {
  return lent.has(chunk.buffer as ArrayBuffer);
}

/**
 * Hands a chunk back once nothing reads it any more (the write callback of its only write). A
 * chunk that is not lent from the pool, or was released already, is left alone.
 */
export function releaseChunk(chunk: Buffer): void {
  const ab = chunk.buffer as ArrayBuffer;
  if (!lent.delete(ab)) return;
  stats.released++;
  if (freeBytes + ab.byteLength > MAX_FREE_BYTES) return;
  free[CLASSES.indexOf(ab.byteLength as (typeof CLASSES)[number])]!.push(ab);
  freeBytes += ab.byteLength;
}

/** Counters of the pool since the process started (the agent's /stats shows them). */
export interface ReadPoolStats {
  /** Reads copied out. */
  reads: number;
  /** Of them, into a pooled chunk. */
  pooled: number;
  /** Chunks allocated because none was free. */
  allocated: number;
  /** Chunks taken from the free list. */
  reused: number;
  /** Chunks handed back. */
  released: number;
  /** Chunks handed out and not back yet (in a write queue, or held by a consumer that is not the pipe). */
  lent: number;
  /** Chunks on the free lists. */
  free: number;
  /** Their bytes (at most 4 MiB). */
  freeBytes: number;
}

export function readPoolStats(): ReadPoolStats {
  return { ...stats, lent: stats.pooled - stats.released, free: free.reduce((n, l) => n + l.length, 0), freeBytes };
}

/**
 * The `onread` option that makes a socket read through the pool. `socket` returns the socket the
 * option was given to (it exists by the time the first read arrives). Each read is pushed into the
 * socket's readable side as Node's own read path does, so 'data', pause/resume, backpressure and
 * the end of the stream behave exactly as on any socket.
 */
export function pooledReads(socket: () => net.Socket): net.OnReadOpts {
  return {
    buffer: shared,
    callback: (n: number) => socket().push(copyOut(n)),
  };
}

/**
 * A socket that reads through the pool in place of `socket`, one a net.Server accepted (its
 * `connection` event offers no read option). The new socket takes over the connection's handle
 * and the server's count of it: the server still waits for it in close() and counts it in
 * getConnections() until it closes. The accepted object is retired without closing anything. Only
 * a socket that nothing has read is adopted (accepted with `pauseOnConnect`, nothing buffered);
 * any other, or one that is not a TCP socket, is returned as it is.
 *
 * Node internals, read in its lib/net.js: the handle is passed with net.Socket's `handle` option
 * (net.Server passes every accepted handle that way; it is not in Node's typings), and a socket
 * whose `_server` is set takes itself off that server's count when it is destroyed.
 */
export function adoptWithPooledReads(socket: net.Socket): net.Socket {
  const retired = socket as net.Socket & { _handle?: { fd?: number } | null; _server?: net.Server | null };
  const handle = retired._handle;
  if (!handle || typeof handle.fd !== 'number' || handle.fd < 0 || socket.destroyed || socket.connecting || !socket.isPaused() || socket.readableLength > 0) return socket;
  const adopted: net.Socket & { _server?: net.Server | null; server?: net.Server | null } = new net.Socket({
    handle,
    allowHalfOpen: socket.allowHalfOpen,
    readable: true,
    writable: true,
    pauseOnCreate: true,
    onread: pooledReads(() => adopted),
  } as unknown as net.SocketConstructorOpts);
  const server = retired._server ?? null;
  retired._handle = null;
  retired._server = null;
  socket.destroy();
  adopted._server = server;
  adopted.server = server;
  return adopted;
}
