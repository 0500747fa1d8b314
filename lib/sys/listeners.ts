// TCP listening sockets of the calling process's network namespace, as the kernel lists them in
// /proc/net/tcp and /proc/net/tcp6, the owner of a connected socket there (its uid), and the sysctl that lets a closing listener hand its queued
// connections to another listener of its SO_REUSEPORT group (net.ipv4.tcp_migrate_req, Linux 5.14).
//
// The agent uses both for an overlapping upgrade: the new process sees that its predecessor still
// listens on the node's ports, shares them with SO_REUSEPORT, and when the predecessor closes its
// listeners the kernel moves the connections waiting in their accept queues to the new ones
// instead of resetting them.
//
// The owner of a connection's client socket is how the agent's admin port, which listens on the
// node's loopback (the agent runs in the host network), tells root from any other process of the
// node: SO_PEERCRED exists only for Unix sockets, but the kernel records the uid of every TCP
// socket when it is made and lists it beside the socket's two ends.
import { readFileSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { endianness } from 'node:os';
import { isIPv4 } from 'node:net';

const TCP_LISTEN = '0A';
/** A closed connection's remnant: the kernel lists it with uid 0, whoever made the socket. */
const TCP_TIME_WAIT = '06';
export const TCP_MIGRATE_REQ = '/proc/sys/net/ipv4/tcp_migrate_req';

/** One row of /proc/net/tcp{,6} in LISTEN state. */
export interface Listener {
  /** Dotted IPv4, or the IPv6 address as the kernel prints it (32 hex digits). */
  address: string;
  port: number;
}

/** Decodes /proc/net/tcp's hex address (the kernel prints the __be32 as a host-order u32). */
export function decodeProcIPv4(hex: string, littleEndian = endianness() === 'LE'): string {
  const n = Number.parseInt(hex, 16);
  const b = [(n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff];
  return (littleEndian ? b.reverse() : b).join('.');
}

/** Parses the text of /proc/net/tcp or /proc/net/tcp6 into its listening sockets. */
export function parseProcNetTcp(text: string, family: 4 | 6, littleEndian = endianness() === 'LE'): Listener[] {
  const out: Listener[] = [];
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 4 || f[3] !== TCP_LISTEN) continue;
    const [addr, port] = f[1]!.split(':') as [string, string];
    out.push({ address: family === 4 ? decodeProcIPv4(addr, littleEndian) : addr.toLowerCase(), port: Number.parseInt(port, 16) });
  }
  return out;
}

/** One end of a TCP connection. */
export interface Endpoint {
  address: string;
  port: number;
}

/**
 * An address as /proc/net/tcp{,6} prints it: each 32-bit word of the address in host order, in
 * upper-case hex. IPv4 in tcp6 is the IPv4-mapped address (a dual-stack socket connected to an
 * IPv4 listener).
 */
export function encodeProcAddress(ip: string, family: 4 | 6, littleEndian = endianness() === 'LE'): string | undefined {
  if (!isIPv4(ip)) return undefined;
  const v4 = ip.split('.').map(Number);
  const bytes = family === 4 ? v4 : [...new Array<number>(10).fill(0), 0xff, 0xff, ...v4];
  let out = '';
  for (let i = 0; i < bytes.length; i += 4) {
    const word = bytes.slice(i, i + 4);
    for (const b of littleEndian ? word.reverse() : word) out += b.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

/**
 * The uid owning the socket whose own end is `local` and whose peer is `remote`, from the text of
 * /proc/net/tcp or tcp6 (IPv4 ends only); undefined when no live socket has those ends (a socket in
 * TIME_WAIT is listed with uid 0 whoever made it, and is no live connection).
 */
export function socketOwnerIn(text: string, family: 4 | 6, local: Endpoint, remote: Endpoint, littleEndian = endianness() === 'LE'): number | undefined {
  const at = (e: Endpoint) => `${encodeProcAddress(e.address, family, littleEndian)}:${e.port.toString(16).toUpperCase().padStart(4, '0')}`;
  // One search through the text, not a split of every row: a busy node lists many thousands.
  const key = ` ${at(local)} ${at(remote)} `;
  for (let i = text.indexOf(key); i >= 0; i = text.indexOf(key, i + 1)) {
    const end = text.indexOf('\n', i);
    const f = text.slice(i, end < 0 ? undefined : end).trim().split(/\s+/);
    if (f[2] !== TCP_TIME_WAIT && f[6] !== undefined) return Number.parseInt(f[6], 10);
  }
  return undefined;
}

/** Per table (tcp, tcp6): a read that has not started (connections accepted meanwhile share it), and the one running. */
const tableReads = new Map<string, { next?: Promise<string>; running: Promise<unknown> }>();

/**
 * One table, read after this call. Reads of a table run one at a time, and every caller that
 * arrives while one runs shares the next: a flood of connections costs one read at a time, not one each.
 */
function readTcpTable(procNet: string, file: 'tcp' | 'tcp6'): Promise<string> {
  const key = `${procNet}/${file}`;
  let r = tableReads.get(key);
  if (!r) tableReads.set(key, (r = { running: Promise.resolve() }));
  if (r.next) return r.next;
  const state = r;
  const p = state.running.then(() => {
    state.next = undefined;
    return readFile(key, 'utf8').catch(() => '');
  });
  state.next = p;
  state.running = p.catch(() => undefined);
  return p;
}

/**
 * The uid owning the client socket of a connection this process accepted (the client's end is the
 * accepted socket's remote, and the other way round), when the client runs in this process's
 * network namespace; undefined when it does not, or is gone. An IPv4 client is in /proc/net/tcp,
 * an IPv6 one (an IPv4-mapped address on a dual-stack listener too) in tcp6: one table is read.
 */
export async function peerSocketOwner(accepted: { local: Endpoint; remote: Endpoint }, procNet = '/proc/self/net'): Promise<number | undefined> {
  const v6 = accepted.remote.address.includes(':');
  return socketOwnerIn(await readTcpTable(procNet, v6 ? 'tcp6' : 'tcp'), v6 ? 6 : 4, accepted.remote, accepted.local);
}

/** Every TCP listener of this network namespace. */
export function tcpListeners(procNet = '/proc/net'): Listener[] {
  const read = (f: string): string => {
    try {
      return readFileSync(`${procNet}/${f}`, 'utf8');
    } catch {
      return '';
    }
  };
  return [...parseProcNetTcp(read('tcp'), 4), ...parseProcNetTcp(read('tcp6'), 6)];
}

const V6_ANY = '0'.repeat(32);

/** Whether some socket in this namespace listens on ip:port (directly or on the wildcard address). */
export function isListening(ip: string, port: number, listeners: Listener[] = tcpListeners()): boolean {
  return listeners.some((l) => l.port === port && (l.address === ip || l.address === '0.0.0.0' || (isIPv4(ip) && l.address === V6_ANY)));
}

/**
 * Turns on net.ipv4.tcp_migrate_req in this network namespace (it covers IPv6 too). Returns what
 * happened, never throws: without it an upgrade still works, but connections queued on the old
 * process's listeners when it closes them are reset.
 */
export function enableRequestMigration(path = TCP_MIGRATE_REQ): { enabled: boolean; changed: boolean; error?: string } {
  try {
    if (readFileSync(path, 'utf8').trim() === '1') return { enabled: true, changed: false };
    writeFileSync(path, '1\n');
    return { enabled: true, changed: true };
  } catch (err) {
    return { enabled: false, changed: false, error: (err as Error).message };
  }
}
