// Opening the agent's own TCP connections to pods and plain destinations.
import net from 'node:net';
import { once } from 'node:events';
import { pooledReads } from '../../lib/hbone/index.ts';

export class UpstreamConnectError extends Error {
  readonly code = 'WEFT_UPSTREAM_CONNECT';
  readonly target: string;
  constructor(target: string, cause: Error & { code?: string }) {
    super(`cannot connect to ${target}: ${cause.code ?? cause.message}`);
    this.name = 'UpstreamConnectError';
    this.target = target;
  }
}

/**
 * Refused before any attempt: the destination pod already has as many connections waiting for its
 * application to accept them as the agent allows (LocalDelivery's pending bound).
 */
export class OverloadedError extends Error {
  readonly code = 'WEFT_OVERLOADED';
  readonly target: string;
  constructor(target: string, message: string) {
    super(`cannot connect to ${target}: ${message}`);
    this.name = 'OverloadedError';
    this.target = target;
  }
}

export function splitHostPort(target: string): { host: string; port: number } {
  const i = target.lastIndexOf(':');
  const host = target.slice(0, i).replace(/^\[|\]$/g, '');
  return { host, port: Number(target.slice(i + 1)) };
}

/**
 * Connects to `target`, optionally from a socket the caller created and bound (`bound`: its fd,
 * which this takes over; e.g. one made inside a pod's netns whose source port the caller told the
 * datapath about), with a timeout.
 */
export async function connectTcp(
  target: string,
  opts: { sourceIp?: string; bound?: { fd: number }; timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<net.Socket> {
  const { host, port } = splitHostPort(target);
  // Every socket opened here is carried by the tunnel pipe: it reads through the read pool
  // (lib/hbone/read-pool.ts), no allocation per read.
  const onread = pooledReads(() => socket);
  let socket: net.Socket;
  if (opts.bound) {
    socket = new net.Socket({ fd: opts.bound.fd, readable: true, writable: true, onread });
    socket.connect(port, host);
  } else {
    socket = net.connect({ host, port, onread, ...(opts.sourceIp ? { localAddress: opts.sourceIp } : {}) });
  }
  socket.setNoDelay(true);
  const timer = setTimeout(() => socket.destroy(Object.assign(new Error('connect timed out'), { code: 'ETIMEDOUT' })), opts.timeoutMs ?? 5_000);
  // The one who asked went away (a CONNECT reset before its answer): the connect goes too.
  const abort = (): void => { socket.destroy(Object.assign(new Error('connect abandoned: the caller went away'), { code: 'ABORT_ERR' })); };
  if (opts.signal?.aborted) abort();
  else opts.signal?.addEventListener('abort', abort, { once: true });
  try {
    await once(socket, 'connect');
    return socket;
  } catch (err) {
    socket.destroy();
    throw new UpstreamConnectError(target, err as Error);
  } finally {
    clearTimeout(timer);
    opts.signal?.removeEventListener('abort', abort);
  }
}
