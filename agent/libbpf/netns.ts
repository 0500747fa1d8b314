// Network-namespace helpers: the cookie the kernel gives a namespace (what
// bpf_get_netns_cookie() returns inside it, the key the datapath enrols pods by), socket cookies,
// and TCP sockets created inside another namespace and handed to Node by fd.
import type { Server, Socket } from 'node:net';
import { BpfError, guard } from './errors.ts';
import { native, type PortSearch } from './native.ts';

export type { PortSearch } from './native.ts';

function nsPath(netnsPathOrPid: string | number): string {
  return typeof netnsPathOrPid === 'number' ? `/proc/${netnsPathOrPid}/ns/net` : netnsPathOrPid;
}

/**
 * The netns cookie of a namespace file (/var/run/netns/x, /proc/<pid>/ns/net) or of a process's
 * namespace: SO_NETNS_COOKIE of a socket made inside it. Stable for the namespace's lifetime.
 */
export function netnsCookie(netnsPathOrPid: string | number): bigint {
  const path = nsPath(netnsPathOrPid);
  return guard(`cannot get the netns cookie of ${path}`, { path }, () => native().netnsCookie(path));
}

/** The socket's cookie (SO_COOKIE), as bpf_get_socket_cookie() sees it. */
export function socketCookie(fdOrSocket: number | Socket | Server): bigint {
  const fd = typeof fdOrSocket === 'number' ? fdOrSocket : fdOf(fdOrSocket);
  return guard(`cannot get the cookie of socket fd ${fd}`, {}, () => native().socketCookie(fd));
}

export interface HostPort {
  host: string;
  port: number;
}

export interface SocketInNetnsOptions {
  /** 4 (default) or 6. */
  family?: 4 | 6;
  /** Bind and listen: hand the fd to `net.createServer().listen({ fd })`. */
  listen?: HostPort & { backlog?: number };
  /** Bind only: hand the fd to `new net.Socket({ fd }).connect(...)` to connect from inside. */
  bind?: HostPort;
  /** SO_REUSEPORT: several processes may listen on the same address (an agent and its successor). */
  reusePort?: boolean;
  /**
   * With `bind` on port 0: take the first free port from `start` on, wrapping within [from, to],
   * instead of the kernel's pick (see PortCursor).
   */
  portSearch?: PortSearch;
}

/** Default listen(2) backlog of createSocketInNetns. */
export const DEFAULT_BACKLOG = 511;

/**
 * A TCP socket created inside another network namespace (the calling thread enters it with
 * setns(2) and always returns), bound and optionally listening. Returns the fd (nonblocking,
 * close-on-exec); the caller owns it. Without listen or bind it is bound to 0.0.0.0:0.
 */
export function createSocketInNetns(netnsPath: string, opts: SocketInNetnsOptions = {}): number {
  return createBoundSocketInNetns(netnsPath, opts).fd;
}

/** createSocketInNetns, also returning the port the socket is bound to (the kernel's pick for 0). */
export function createBoundSocketInNetns(netnsPath: string, opts: SocketInNetnsOptions = {}): { fd: number; port: number } {
  const family = opts.family ?? 4;
  const addr = opts.listen ?? opts.bind ?? { host: family === 6 ? '::' : '0.0.0.0', port: 0 };
  const backlog = opts.listen ? (opts.listen.backlog ?? DEFAULT_BACKLOG) : -1;
  const where = `${addr.host}:${addr.port} in ${netnsPath}`;
  const search = opts.portSearch ? ` with a free port of ${opts.portSearch.from}-${opts.portSearch.to}` : '';
  return guard(`cannot create a ${opts.listen ? 'listening ' : ''}socket on ${where}${search}`, { path: netnsPath },
    // SO_REUSEADDR only for listeners (a restarted one rebinds past TIME_WAIT); a socket bound to
    // connect gets a port of its own, so its 4-tuple can never collide with another's.
    () => native().createTcpSocket({
      netns: netnsPath, family, host: addr.host, port: addr.port, backlog, reuseAddr: opts.listen !== undefined, reusePort: opts.reusePort ?? false,
      ...(opts.portSearch ? { portSearch: opts.portSearch } : {}),
    }));
}

export interface LocalPorts {
  from: number;
  to: number;
  /** net.ipv4.ip_local_reserved_ports: ports the kernel's own pick never takes, nor does PortCursor. */
  reserved?: Array<[number, number]>;
}

/** net.ipv4.ip_local_port_range and ip_local_reserved_ports inside a namespace. */
export function localPortRange(netnsPath: string): LocalPorts {
  const r = guard(`cannot read the local port range of ${netnsPath}`, { path: netnsPath }, () => native().localPortRange(netnsPath));
  return { from: r.from, to: r.to, reserved: parseReservedPorts(r.reserved) };
}

/** "8080,9000-9010" (the sysctl's format) → [[8080, 8080], [9000, 9010]]; what does not parse is ignored. */
export function parseReservedPorts(text: string): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const part of text.split(',')) {
    const m = /^\s*(\d+)(?:-(\d+))?\s*$/.exec(part);
    if (!m) continue;
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    if (lo >= 1 && hi <= 65535 && lo <= hi) out.push([lo, hi]);
  }
  return out;
}

/**
 * Source ports for the sockets an agent opens inside one namespace, handed out in turn over the
 * namespace's ephemeral range. The kernel's own pick (bind to port 0) scans the whole odd half of
 * the range once more than half of it is taken, with its lock held: 2.3 ms a socket at 15,000
 * bound, against 45 µs below half (measured on kernel 6.18), which is a node agent's CPU gone at
 * a thousand deliveries a second into a pod with ten thousand connections open. A port handed out
 * long ago is likely free again, so the search from the cursor ends in a few refused binds.
 */
export class PortCursor {
  readonly from: number;
  readonly to: number;
  readonly #skip: number[] | undefined;
  #next: number;

  constructor(range: LocalPorts) {
    this.from = range.from;
    this.to = range.to;
    const skip = (range.reserved ?? []).filter(([lo, hi]) => hi >= range.from && lo <= range.to).flat();
    this.#skip = skip.length > 0 ? skip : undefined;
    this.#next = range.from + Math.floor(Math.random() * (range.to - range.from + 1));
  }

  /** Where the next search starts. */
  get next(): PortSearch {
    return { from: this.from, to: this.to, start: this.#next, ...(this.#skip ? { skip: this.#skip } : {}) };
  }

  /** `port` was taken: the next search starts after it. */
  used(port: number): void {
    this.#next = port >= this.to ? this.from : port + 1;
  }
}

export interface BindSocketOptions {
  family?: 4 | 6;
  host: string;
  /** 0 or absent: the kernel picks one (returned). */
  port?: number;
  /** IP_TRANSPARENT, to bind an address this host does not own (needs CAP_NET_ADMIN). */
  transparent?: boolean;
}

/**
 * A bound, unconnected TCP socket in the current namespace, for
 * `new net.Socket({ fd }).connect(...)` when the caller must know the source port beforehand.
 */
export function bindSocket(opts: BindSocketOptions): { fd: number; port: number } {
  const port = opts.port ?? 0;
  return guard(`cannot bind a socket to ${opts.host}:${port}`, {}, () =>
    native().createTcpSocket({ family: opts.family ?? 4, host: opts.host, port, backlog: -1, transparent: opts.transparent ?? false }));
}

/** The fd under a connected net.Socket or a listening net.Server (Node's _handle.fd). */
export function fdOf(socket: Socket | Server): number {
  const handle = (socket as unknown as { _handle?: { fd?: number } | null })._handle;
  const fd = handle?.fd;
  if (typeof fd !== 'number' || fd < 0) {
    throw new BpfError('the socket has no fd (not connected or listening yet, or not a TCP socket)', { code: 'EBADF', errno: 9 });
  }
  return fd;
}
