// TCP listening sockets of the calling process's network namespace, as the kernel lists them in
// /proc/net/tcp and /proc/net/tcp6, and the sysctl that lets a closing listener hand its queued
// connections to another listener of its SO_REUSEPORT group (net.ipv4.tcp_migrate_req, Linux 5.14).
//
// The agent uses both for an overlapping upgrade: the new process sees that its predecessor still
// listens on the node's ports, shares them with SO_REUSEPORT, and when the predecessor closes its
// listeners the kernel moves the connections waiting in their accept queues to the new ones
// instead of resetting them.
import { readFileSync, writeFileSync } from 'node:fs';
import { endianness } from 'node:os';
import { isIPv4 } from 'node:net';

const TCP_LISTEN = '0A';
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
