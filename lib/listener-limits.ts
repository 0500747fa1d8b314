// Bounds of a listener against slow or many connections. Connections one source address may hold
// open: a peer (or anyone who reaches the port) that opens connections and leaves them silent holds
// a socket, a TLS handshake's state and a timer each until its timeout; without a cap one source
// could hold them all. Counted at accept, before TLS: a connection past the cap costs its source a
// TCP handshake and the listener nothing more. Used by the HBONE server (lib/hbone/server.ts) and the
// controller's federation listener; the check interval of node:http's timeouts by the waypoint's
// HTTP listener and the federation listener.
import type { Server, Socket } from 'node:net';

export interface ConnectionCap {
  /** Whether this TCP socket was closed for a cap (its TLS handshake then fails too; count it once). */
  refused(socket: Socket): boolean;
}

/**
 * Caps the connections each source address holds on `server` at `perSource` and, when given, all of
 * them together at `total` (many sources, each under its own share, cannot take the process's
 * descriptors and memory); `onRefused` hears of each connection closed at accept, and which cap.
 */
export function capConnectionsPerSource(
  server: Server,
  max: number | { perSource: number; total?: number },
  onRefused: (address: string, max: number, cap: 'per-source' | 'total') => void,
): ConnectionCap {
  const { perSource, total = Infinity } = typeof max === 'number' ? { perSource: max } : max;
  const open = new Map<string, number>();
  let all = 0;
  const refused = new WeakSet<Socket>();
  server.on('connection', (socket: Socket) => {
    const from = socket.remoteAddress ?? '';
    const n = (open.get(from) ?? 0) + 1;
    const over = n > perSource ? 'per-source' : all >= total ? 'total' : undefined;
    if (over) {
      refused.add(socket);
      onRefused(from, over === 'per-source' ? perSource : total, over);
      socket.destroy();
      return;
    }
    open.set(from, n);
    all++;
    socket.once('close', () => {
      all--;
      const left = (open.get(from) ?? 1) - 1;
      if (left <= 0) open.delete(from);
      else open.set(from, left);
    });
  });
  return { refused: (socket) => refused.has(socket) };
}

/**
 * How often node:http looks for connections past their headers or request timeout
 * (`connectionsCheckingInterval`, 30 s by default): often enough that a client is cut within about
 * `headersTimeoutMs` + 1 s, never more than once a millisecond.
 */
export function timeoutCheckIntervalMs(headersTimeoutMs: number): number {
  return Math.max(1, Math.min(1000, Math.floor(headersTimeoutMs / 4)));
}
