// Same-node splice: a connection between two pods on this node, once authorized, is carried by the
// kernel (bpf/include/weft_splice.h) instead of through this process. The agent keeps both sockets
// and stays in charge of what the kernel does not carry:
//
//  - EOF. The verdict program consumes a FIN without passing it on, but the socket that received
//    it still reports end-of-stream, and Node still reads it (a spliced socket stays in reading
//    mode: the kernel redirects every byte, so reads only ever find the EOF). The pipe then ends
//    the other socket, but only once that socket's send queue has taken every byte the kernel
//    redirected into it (the redirect is queued to a kernel worker; a shutdown before it ran
//    would cut the tail of the stream). That is `beforeEnd` below.
//  - Errors and resets: a socket error reaches Node as it does unspliced, and the pipe resets the
//    other side (RFC 9293 semantics as the unspliced path has them).
//  - Counting: the kernel counts the bytes per socket (weft_splice_conns); they are added to what
//    the pipe counted (nothing, unless bytes were already in Node's buffers) when the pair closes.
//
// Backpressure is the kernel's: a peer with a full send buffer keeps the redirected skbs queued
// until it has room, and the receiving socket's window closes meanwhile.
import type net from 'node:net';
import { fdOf, tcpBytesWritten } from '../libbpf/index.ts';
import { pipeBidirectional, type PipeResult } from '../../lib/hbone/index.ts';
import type { SplicedPair } from './datapath/index.ts';

/** What splicing needs from the datapath (the real Datapath, or a test double). */
export interface SpliceDatapath {
  splice(client: number, server: number, clientNetnsCookie: bigint): SplicedPair;
  splicedBytes(pair: SplicedPair): { fromClient: bigint; fromServer: bigint };
  unsplice(pair: SplicedPair): { fromClient: bigint; fromServer: bigint };
}

/** First and longest pause while waiting for a peer's send queue to take the redirected bytes. */
const DRAIN_POLL_FIRST_MS = 1;
const DRAIN_POLL_MAX_MS = 50;

export interface SpliceResult extends PipeResult {
  /** Whether the kernel carried the connection (false: the pipe did, e.g. splicing failed). */
  spliced: boolean;
  /** Why it was not spliced, when it was not. */
  notSpliced?: string;
}

export interface SpliceOptions {
  datapath: SpliceDatapath;
  /** The client pod's network namespace (shown by `weftctl bpf`). */
  clientNetnsCookie: bigint;
  /** Called once the pair is in the kernel's hands (tests, flows). */
  onSpliced?: (pair: SplicedPair) => void;
}

/**
 * Carries `client` ↔ `server` like pipeBidirectional, with the bytes moved by the kernel. Both
 * sockets must not have been read by Node yet (the client accepted with pauseOnConnect, the
 * server paused before it connected), so that no byte can overtake one still in a Node buffer;
 * otherwise, or when the kernel refuses, the pipe carries the connection as before.
 */
export async function spliceBidirectional(client: net.Socket, server: net.Socket, opts: SpliceOptions): Promise<SpliceResult> {
  let reason: string | undefined;
  let pair: SplicedPair | undefined;
  if (client.readableLength > 0 || server.readableLength > 0) reason = 'bytes already read by the agent';
  else if (client.destroyed || server.destroyed) reason = 'a socket is already closed';
  else {
    try {
      pair = opts.datapath.splice(fdOf(client), fdOf(server), opts.clientNetnsCookie);
    } catch (err) {
      reason = (err as Error).message;
    }
  }
  if (!pair) {
    const piped = pipeBidirectional(client, server);
    client.resume();
    server.resume();
    return { ...(await piped), spliced: false, notSpliced: reason };
  }
  const spliced = pair;
  opts.onSpliced?.(spliced);
  // While the pair is spliced the verdict redirects every byte, so Node reads none and writes
  // none: the peer's send queue has taken everything once it counts what the kernel carried.
  // Both sockets keep reading: a paused one would never see the EOF the kernel leaves it.
  const toServer = (): Promise<void> => drained(server, () => opts.datapath.splicedBytes(spliced).fromClient);
  const toClient = (): Promise<void> => drained(client, () => opts.datapath.splicedBytes(spliced).fromServer);
  // A byte that reaches Node while spliced means the kernel handed that direction back (the peer
  // fell behind, WEFT_SPLICE_F_PASSING): it is written once the peer has taken the kernel's bytes.
  const handedBack = { a: false, b: false };
  const piped = pipeBidirectional(client, server, {
    beforeEnd: (side) => (side === 'a' ? toServer() : toClient()),
    holdWrites: (side) => {
      if (handedBack[side]) return undefined;
      handedBack[side] = true;
      return side === 'a' ? toServer() : toClient();
    },
  });
  client.resume();
  server.resume();
  let result: PipeResult;
  let kernel = { fromClient: 0n, fromServer: 0n };
  try {
    result = await piped;
  } finally {
    kernel = opts.datapath.unsplice(spliced);
  }
  return { ...result, bytesAtoB: result.bytesAtoB + Number(kernel.fromClient), bytesBtoA: result.bytesBtoA + Number(kernel.fromServer), spliced: true };
}

/**
 * Resolves once `to`'s send queue has taken at least `carried()` bytes (or `to` is gone: then
 * there is nothing left to protect, and the pipe tears down as it does for a closed side).
 */
function drained(to: net.Socket, carried: () => bigint): Promise<void> {
  return new Promise((resolve) => {
    let wait = DRAIN_POLL_FIRST_MS;
    const check = (): void => {
      if (to.destroyed) { resolve(); return; }
      let written: bigint;
      try {
        written = tcpBytesWritten(to);
      } catch {
        resolve();
        return;
      }
            if (written >= carried()) { resolve(); return; }
      setTimeout(check, wait);
      wait = Math.min(wait * 2, DRAIN_POLL_MAX_MS);
    };
    check();
  });
}
