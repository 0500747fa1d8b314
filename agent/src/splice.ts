// Same-node splice: a connection between two pods on this node, once authorized, is carried by the
// kernel pod to pod (bpf/include/weft_splice.h): each pod's sendmsg puts its bytes straight into
// the other pod's receive queue, so they reach neither this process nor TCP. Sockops filed both
// pod sockets (the client's when it connected to this agent; the server's when it accepted from
// our delivery socket, announced by connectToPod's `splice`); pairing them is what starts it.
//
// The agent keeps its own two sockets and its pipe between them, unchanged, and that pipe carries
// everything the kernel does not:
//  - the bytes the client sent before the pair was made (the kernel redirects a message only once
//    every byte its sender sent by TCP has been read by the peer, so nothing is overtaken);
//  - a direction whose reader holds more than the kernel's bound unread (it goes by TCP, through
//    this pipe, whose backpressure then holds the sender; it returns to the kernel once the reader
//    has read everything);
//  - FIN and resets: a pod's shutdown or close goes by TCP to this agent, after every byte it
//    redirected before (those calls completed first), and the pipe ends or resets the other side
//    as it does unspliced; the reader takes its redirected bytes before the FIN.
// Readers: the kernel redirects to a pod socket only once it has seen it read with recvmsg, and
// never after it has read with splice(2), which does not see redirected bytes. A reader that turns
// to splice(2) while redirected bytes are still queued for it would wait for them forever: the
// kernel reports it (weft_splice_stranded) and StrandedResets resets that connection.
// Counting: what the pipe carried plus what the kernel counted per direction (weft_spliced), read
// when the connection ends.
import type net from 'node:net';
import { pipeBidirectional, type PipeResult } from '../../lib/hbone/index.ts';
import { formatTuple, type SocketTuple, type SplicedPair } from './datapath/index.ts';
import { unmapV4 } from './datapath/codecs.ts';

/**
 * Pod label that keeps a workload's same-node connections off the splice on a node that splices
 * (`weft.dev/splice: disabled`): for an application that relies on FIONREAD, which a socket in the
 * splice's sockhash answers from the redirect queue only. Only `enabled` (or no label) allows it;
 * any other value keeps the pod's connections on the agent's pipe.
 */
export const SPLICE_LABEL = 'weft.dev/splice';

/** Whether a same-node connection between these workloads may be spliced: none opted out. */
export function spliceAllowed(...workloads: Array<{ labels: Record<string, string> }>): boolean {
  return workloads.every((w) => (w.labels[SPLICE_LABEL] ?? 'enabled') === 'enabled');
}

/** What splicing needs from the datapath (the real Datapath, or a test double). */
export interface SpliceDatapath {
  splice(client: SocketTuple, server: SocketTuple): SplicedPair;
  unsplice(pair: SplicedPair): { fromClient: bigint; fromServer: bigint };
  forgetSpliceSocket(t: SocketTuple): void;
}

export interface SpliceResult extends PipeResult {
  /** Whether the kernel was given the connection (false: the pipe alone carried it). */
  spliced: boolean;
  /** Why it was not spliced, when it was not. */
  notSpliced?: string;
  /** Reset because a pod turned to splice(2) reads with redirected bytes unread (StrandedResets). */
  stranded?: true;
}

export interface SpliceOptions {
  datapath: SpliceDatapath;
  /** Resets the connection if one of its pods strands redirected bytes (see StrandedResets). */
  stranded?: StrandedResets;
  /** Called once the pair is in the kernel's hands (tests, flows). */
  onSpliced?: (pair: SplicedPair) => void;
}

/**
 * Resets the spliced connections one of whose pods began reading with splice(2) while bytes the
 * kernel had redirected to it were still unread: splice(2) reads only the TCP queue, so that pod
 * would wait for them forever. Both of the agent's sockets are reset, so both pods see the
 * connection fail (ECONNRESET) instead of hang. One per agent, fed by the kernel's ring buffer.
 */
export class StrandedResets {
  readonly #live = new Map<string, () => void>();
  readonly #ring: { close(): void };

  /** `watch` subscribes to the kernel's reports (Datapath.watchSpliceStranded). */
  constructor(watch: (onStranded: (t: SocketTuple) => void) => { close(): void }) {
    this.#ring = watch((t) => this.#live.get(formatTuple(t))?.());
  }

  /** Calls `reset` if either socket of the pair strands bytes; returns the way to stop. */
  track(pair: SplicedPair, reset: () => void): () => void {
    const keys = [formatTuple(pair.client), formatTuple(pair.server)];
    for (const k of keys) this.#live.set(k, reset);
    return () => { for (const k of keys) if (this.#live.get(k) === reset) this.#live.delete(k); };
  }

  close(): void {
    this.#ring.close();
    this.#live.clear();
  }
}

/**
 * The pod socket at the other end of one of this agent's sockets, by its own 4-tuple (our remote
 * is its local address): the client pod's socket from the one accepted from it, the server pod's
 * from the delivery socket. IPv4 peers of dual-stack sockets are unmapped (the kernel files them
 * by their IPv4 addresses).
 */
export function peerSocketOf(ours: net.Socket): SocketTuple {
  return {
    src: { ip: unmapV4(ours.remoteAddress ?? ''), port: ours.remotePort ?? 0 },
    dst: { ip: unmapV4(ours.localAddress ?? ''), port: ours.localPort ?? 0 },
  };
}

/**
 * Carries `client` ↔ `server` (this agent's two sockets) with the pipe, and pairs the two pod
 * sockets behind them so that the kernel carries what it can. When the pods' sockets cannot be
 * paired (not filed, already closed), the pipe carries everything, as unspliced.
 */
export async function spliceBidirectional(client: net.Socket, server: net.Socket, opts: SpliceOptions): Promise<SpliceResult> {
  let pair: SplicedPair | undefined;
  let reason: string | undefined;
  const pods = { client: peerSocketOf(client), server: peerSocketOf(server) };
  try {
    pair = opts.datapath.splice(pods.client, pods.server);
  } catch (err) {
    reason = (err as Error).message;
    forget(opts.datapath, pods.client);
    forget(opts.datapath, pods.server);
  }
  const piped = pipeBidirectional(client, server);
  client.resume();
  server.resume();
  let stranded = false;
  const untrack = pair && opts.stranded?.track(pair, () => {
    stranded = true;
    client.resetAndDestroy();
    server.resetAndDestroy();
  });
  if (pair) opts.onSpliced?.(pair);
  let result: PipeResult;
  let kernel = { fromClient: 0n, fromServer: 0n };
  try {
    result = await piped;
  } finally {
    untrack?.();
    if (pair) kernel = opts.datapath.unsplice(pair);
  }
  return {
    ...result, bytesAtoB: result.bytesAtoB + Number(kernel.fromClient), bytesBtoA: result.bytesBtoA + Number(kernel.fromServer),
    spliced: pair !== undefined, ...(reason ? { notSpliced: reason } : {}), ...(stranded ? { stranded: true as const } : {}),
  };
}

/** Returns a filed pod socket that will not be spliced to plain TCP (a no-op when it was not filed). */
export function forget(datapath: SpliceDatapath, t: SocketTuple): void {
  try {
    datapath.forgetSpliceSocket(t);
  } catch { /* not filed, or already gone: nothing to return */ }
}
