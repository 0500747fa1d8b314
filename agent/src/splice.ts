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
//    the pipe counted (what the kernel passed to this process) when the pair closes.
//
// Backpressure: the kernel hands a direction whose peer lags to this process and takes it back
// once the peer has caught up (bpf/include/weft_splice.h says why, from the kernel's source). A
// chunk read from a spliced socket is therefore one the kernel passed: it is written once the peer
// has taken every byte the kernel carried before it (`holdWrites` below), and the pipe's own
// backpressure paces the sender meanwhile.
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
  // What each socket's send queue had taken before the splice: tcpBytesWritten counts from the
  // handshake, and an actively opened socket's count starts at one (the kernel counts its SYN).
  const sentBefore = { a: 0n, b: 0n };
  if (client.readableLength > 0 || server.readableLength > 0) reason = 'bytes already read by the agent';
  else if (client.destroyed || server.destroyed) reason = 'a socket is already closed';
  else {
    try {
      sentBefore.a = tcpBytesWritten(server);
      sentBefore.b = tcpBytesWritten(client);
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
  // While the kernel carries a direction Node reads none of it and writes nothing: the peer's
  // send queue has taken everything once it counts what the kernel carried and the pipe read.
  // Both sockets keep reading: a paused one would never see the EOF the kernel leaves it.
  const kernelBytes = (side: 'a' | 'b'): bigint => {
    const k = opts.datapath.splicedBytes(spliced);
    return side === 'a' ? k.fromClient : k.fromServer;
  };
  const peerOf = (side: 'a' | 'b'): net.Socket => (side === 'a' ? server : client);
  // What the kernel had carried when the peer was last seen to have taken it all, per direction.
  const drainedKernel = { a: 0n, b: 0n };
  const piped = pipeBidirectional(client, server, {
    beforeEnd: (side, bytesRead) => drained(peerOf(side), sentBefore[side], () => kernelBytes(side) + BigInt(bytesRead)),
    // A chunk that reaches Node was passed by the kernel (its peer lagged). The kernel cannot take
    // the direction back while it is unwritten (it waits for the peer's write_seq to cover it), so
    // what it counts now is all it carried before this chunk; when that grew since the peer was
    // last drained, the chunk waits until the peer's send queue holds those bytes and ours before.
    holdWrites: (side, bytesBefore) => {
      const k = kernelBytes(side);
      if (k === drainedKernel[side]) return undefined;
      return drained(peerOf(side), sentBefore[side], () => k + BigInt(bytesBefore)).then(() => { drainedKernel[side] = k; });
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
 * Resolves once `to`'s send queue has taken at least `carried()` bytes since the splice (it had
 * taken `before` then), or `to` is gone: then there is nothing left to protect, and the pipe
 * tears down as it does for a closed side.
 */
function drained(to: net.Socket, before: bigint, carried: () => bigint): Promise<void> {
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
      if (written - before >= carried()) { resolve(); return; }
      setTimeout(check, wait);
      wait = Math.min(wait * 2, DRAIN_POLL_MAX_MS);
    };
    check();
  });
}
