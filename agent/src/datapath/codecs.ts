// Byte layouts of the structs in bpf/include/weft.h, field by field. The header is the definition;
// each codec here names the C struct it mirrors and checks its size, so a layout change that is not
// made on both sides fails loudly (see test/bpf/datapath.test.ts, which also compares against BTF).
// Conventions from the header: IPv4 addresses in network byte order, ports and counters in host
// byte order.
import { endianness } from 'node:os';
import { isIPv4 } from 'node:net';

const LE = endianness() === 'LE';

export const MODE = { PERMISSIVE: 1, STRICT: 2 } as const;
export type Mode = keyof typeof MODE;
/** WEFT_MAX_DESTS: entries of weft_dests. */
export const MAX_DESTS = 65_536;
/** WEFT_MAX_PROBERS: entries of weft_probers. */
export const MAX_PROBERS = 16;

function u16(buf: Buffer, off: number, v: number): void {
  if (LE) buf.writeUInt16LE(v, off); else buf.writeUInt16BE(v, off);
}
function r16(buf: Buffer, off: number): number {
  return LE ? buf.readUInt16LE(off) : buf.readUInt16BE(off);
}
function u32(buf: Buffer, off: number, v: number): void {
  if (LE) buf.writeUInt32LE(v, off); else buf.writeUInt32BE(v, off);
}
function r32(buf: Buffer, off: number): number {
  return LE ? buf.readUInt32LE(off) : buf.readUInt32BE(off);
}
function u64(buf: Buffer, off: number, v: bigint): void {
  if (LE) buf.writeBigUInt64LE(v, off); else buf.writeBigUInt64BE(v, off);
}
function r64(buf: Buffer, off: number): bigint {
  return LE ? buf.readBigUInt64LE(off) : buf.readBigUInt64BE(off);
}

/** Writes a dotted-quad IPv4 address in network byte order. The caller has validated it. */
function ip(buf: Buffer, off: number, addr: string): void {
  const parts = addr.split('.').map(Number);
  for (let i = 0; i < 4; i++) buf[off + i] = parts[i]!;
}
function rip(buf: Buffer, off: number): string {
  return `${buf[off]}.${buf[off + 1]}.${buf[off + 2]}.${buf[off + 3]}`;
}

// One copy, beside the forwarded-client decision that needs it too.
export { unmapV4 } from '../../../lib/hbone/forwarded.ts';

export function isIpv4(addr: unknown): addr is string {
  return typeof addr === 'string' && isIPv4(addr);
}

// ---- keys -------------------------------------------------------------------------------------

/** __u64 network-namespace cookie (weft_pods, weft_pod_counters). */
export function cookieKey(cookie: bigint): Buffer {
  const b = Buffer.alloc(8);
  u64(b, 0, cookie);
  return b;
}
export function decodeCookieKey(b: Buffer): bigint {
  return r64(b, 0);
}

/** __be32 (weft_inbound_pods, weft_pod_listeners). */
export function ipKey(addr: string): Buffer {
  const b = Buffer.alloc(4);
  ip(b, 0, addr);
  return b;
}
export function decodeIpKey(b: Buffer): string {
  return rip(b, 0);
}

/** __u16 host-order port (weft_excluded_ports). */
export function portKey(port: number): Buffer {
  const b = Buffer.alloc(2);
  u16(b, 0, port);
  return b;
}
export function decodePortKey(b: Buffer): number {
  return r16(b, 0);
}

// ---- struct weft_pod (16 bytes) ----------------------------------------------------------------

export interface PodEntry {
  podIp: string;
  agentIp: string;
  agentPort: number;
  mode: Mode;
  flags: number;
  ifindex: number;
}
export const POD_SIZE = 16;
export function encodePod(v: PodEntry): Buffer {
  const b = Buffer.alloc(POD_SIZE);
  ip(b, 0, v.podIp);
  ip(b, 4, v.agentIp);
  u16(b, 8, v.agentPort);
  b[10] = MODE[v.mode];
  b[11] = v.flags;
  u32(b, 12, v.ifindex);
  return b;
}
export function decodePod(b: Buffer): PodEntry {
  return {
    podIp: rip(b, 0),
    agentIp: rip(b, 4),
    agentPort: r16(b, 8),
    mode: modeName(b[10]!),
    flags: b[11]!,
    ifindex: r32(b, 12),
  };
}

function modeName(n: number): Mode {
  return n === MODE.STRICT ? 'STRICT' : 'PERMISSIVE';
}

// ---- struct weft_pod_in (16 bytes) -------------------------------------------------------------

/** weft_pod_in.flags */
export const POD_F = { PORT_MODES: 0x01, STRICT_PORT: 0x02 } as const;

export interface PodInbound {
  netnsCookie: bigint;
  mode: Mode;
  flags: number;
}
export const POD_IN_SIZE = 16;
export function encodePodIn(v: PodInbound): Buffer {
  const b = Buffer.alloc(POD_IN_SIZE);
  u64(b, 0, v.netnsCookie);
  b[8] = MODE[v.mode];
  b[9] = v.flags;
  return b;
}
export function decodePodIn(b: Buffer): PodInbound {
  return { netnsCookie: r64(b, 0), mode: modeName(b[8]!), flags: b[9]! };
}

// ---- struct weft_pod_port (8) / weft_port_mode (4) ---------------------------------------------

export function encodePodPort(podIp: string, port: number): Buffer {
  const b = Buffer.alloc(8);
  ip(b, 0, podIp);
  u16(b, 4, port);
  return b;
}
export function decodePodPort(b: Buffer): Endpoint {
  return { ip: rip(b, 0), port: r16(b, 4) };
}
export function encodePortMode(mode: Mode): Buffer {
  const b = Buffer.alloc(4);
  b[0] = MODE[mode];
  return b;
}
export function decodePortMode(b: Buffer): Mode {
  return modeName(b[0]!);
}

// ---- struct weft_sk_tag (4), socket fds, cgroup ids --------------------------------------------

/** weft_sk_tag.kind */
export const SK_TAG = { AGENT: 1, PROBE: 2 } as const;
export function encodeSkTag(kind: number): Buffer {
  const b = Buffer.alloc(4);
  u32(b, 0, kind);
  return b;
}
/** An int socket fd: the key user space gives a socket-local storage map. */
export function fdKey(fd: number): Buffer {
  const b = Buffer.alloc(4);
  if (LE) b.writeInt32LE(fd, 0); else b.writeInt32BE(fd, 0);
  return b;
}
/** A __u64 socket fd: the value user space gives a SOCKHASH (lookups return the socket cookie). */
export function fdValue(fd: number): Buffer {
  const b = Buffer.alloc(8);
  u64(b, 0, BigInt(fd));
  return b;
}

// ---- struct weft_dest_key (8) / weft_dest (4) --------------------------------------------------

export interface Destination {
  ip: string;
  /** 0 or absent: every port of this address. */
  port?: number;
}
export function encodeDestKey(d: Destination): Buffer {
  const b = Buffer.alloc(8);
  ip(b, 0, d.ip);
  u16(b, 4, d.port ?? 0);
  return b;
}
export function decodeDestKey(b: Buffer): Required<Destination> {
  return { ip: rip(b, 0), port: r16(b, 4) };
}
export function encodeDest(flags = 0): Buffer {
  const b = Buffer.alloc(4);
  u32(b, 0, flags);
  return b;
}

/** struct weft_excluded (1 byte). */
export const EXCLUDED_PRESENT = Buffer.from([1]);

// ---- struct weft_tuple4 (12) / weft_orig (16) --------------------------------------------------

export interface Endpoint {
  ip: string;
  port: number;
}
export function encodeTuple4(src: Endpoint, dst: Endpoint): Buffer {
  const b = Buffer.alloc(12);
  ip(b, 0, src.ip);
  ip(b, 4, dst.ip);
  u16(b, 8, src.port);
  u16(b, 10, dst.port);
  return b;
}
export function decodeTuple4(b: Buffer): { src: Endpoint; dst: Endpoint } {
  return { src: { ip: rip(b, 0), port: r16(b, 8) }, dst: { ip: rip(b, 4), port: r16(b, 10) } };
}

export interface OriginalDestination {
  ip: string;
  port: number;
  /** Network-namespace cookie of the client pod that dialled it. */
  clientNetnsCookie: bigint;
}
export function decodeOrig(b: Buffer): OriginalDestination {
  return { ip: rip(b, 0), port: r16(b, 4), clientNetnsCookie: r64(b, 8) };
}

// ---- struct weft_peer_key (12) / weft_peer (8) -------------------------------------------------

export function encodePeerKey(local: Endpoint, remote: Endpoint): Buffer {
  const b = Buffer.alloc(12);
  ip(b, 0, local.ip);
  ip(b, 4, remote.ip);
  u16(b, 8, local.port);
  u16(b, 10, remote.port);
  return b;
}
export function encodePeer(client: Endpoint): Buffer {
  const b = Buffer.alloc(8);
  ip(b, 0, client.ip);
  u16(b, 4, client.port);
  return b;
}
export function decodePeer(b: Buffer): Endpoint {
  return { ip: rip(b, 0), port: r16(b, 4) };
}

// ---- struct weft_spliced (72) / weft_splice_expect_key (8) -------------------------------------

/** One pod socket the same-node splice may carry (weft_spliced value, keyed by its own tuple). */
export interface SplicedEntry {
  /** The paired socket's own tuple (valid with SPLICE_F.PAIRED). */
  peer: { src: Endpoint; dst: Endpoint };
  /** SPLICE_F bits. */
  flags: number;
  /** The socket's kernel address (kernel-set; the peer's verdict reads its state through it). */
  sk: bigint;
  sndBase: number;
  rcvBase: number;
  /** The socket's network namespace. */
  netnsCookie: bigint;
  /** Bytes this socket sent that the kernel put straight into its peer's receive queue. */
  bytes: bigint;
  msgs: bigint;
  /** Bytes this socket sent by TCP, through the agent, while paired. */
  passed: bigint;
  /** Times a redirect gave way to TCP. */
  fallbacks: number;
}
/**
 * weft_spliced.flags: PAIRED = the agent paired it (redirects may start); CLIENT = the client pod's
 * socket; CLOSED = the socket closed; REDIRECTING = its last message was redirected.
 */
export const SPLICE_F = { PAIRED: 0x1, CLIENT: 0x2, CLOSED: 0x4, REDIRECTING: 0x8 } as const;
export const SPLICED_SIZE = 72;
/**
 * weft_splice_reader bits, set by the kernel as a filed socket is read (sticky): RECVMSG = read
 * with recvmsg/read (takes redirected bytes); SPLICE = read with splice(2) (never sees them, so
 * nothing is redirected to it); STRANDED = it began splice(2) reads with redirected bytes unread;
 * FIONREAD = it asked FIONREAD (which counts only redirected bytes on such a socket).
 */
export const SPLICE_R = { RECVMSG: 0x1, SPLICE: 0x2, STRANDED: 0x4, FIONREAD: 0x8 } as const;
/** How a filed socket has been read, by name (`weftctl bpf`). */
export function spliceReaderNames(bits: number): string[] {
  const out: string[] = [];
  if (bits & SPLICE_R.RECVMSG) out.push('recvmsg');
  if (bits & SPLICE_R.SPLICE) out.push('splice(2)');
  if (bits & SPLICE_R.STRANDED) out.push('stranded');
  if (bits & SPLICE_R.FIONREAD) out.push('FIONREAD');
  return out;
}
export function encodeSpliced(v: SplicedEntry): Buffer {
  const b = Buffer.alloc(SPLICED_SIZE);
  encodeTuple4(v.peer.src, v.peer.dst).copy(b, 0);
  u32(b, 12, v.flags >>> 0);
  u64(b, 16, v.sk);
  u32(b, 24, v.sndBase >>> 0);
  u32(b, 28, v.rcvBase >>> 0);
  u64(b, 32, v.netnsCookie);
  u64(b, 40, v.bytes);
  u64(b, 48, v.msgs);
  u64(b, 56, v.passed);
  u32(b, 64, v.fallbacks >>> 0);
  return b;
}
export function decodeSpliced(b: Buffer): SplicedEntry {
  return {
    peer: decodeTuple4(b.subarray(0, 12)), flags: r32(b, 12), sk: r64(b, 16), sndBase: r32(b, 24), rcvBase: r32(b, 28),
    netnsCookie: r64(b, 32), bytes: r64(b, 40), msgs: r64(b, 48), passed: r64(b, 56), fallbacks: r32(b, 64),
  };
}
export function encodeSpliceExpect(e: Endpoint): Buffer {
  const b = Buffer.alloc(8);
  ip(b, 0, e.ip);
  u16(b, 4, e.port);
  return b;
}

// ---- counters ----------------------------------------------------------------------------------

/**
 * Counters that record a refusal, by the reason `weftctl bpf` and the docs name them (every exit
 * of the inbound programs that keeps a connection from the pod).
 */
export const REFUSAL_COUNTERS = [
  'strict_denied', 'fragment_dropped', 'header_unreadable', 'ipv6_refused', 'lookup_no_agent', 'lookup_ipv6_refused',
] as const;

/** Field order of struct weft_counters (== enum weft_counter). */
export const COUNTER_FIELDS = [
  'connect4_redirected',
  'connect4_passed',
  'connect6_redirected',
  'connect6_passed',
  'connect6_native_skipped',
  'sockops_rekeyed',
  'sockops_rekey_failed',
  'getpeername_rewritten',
  'getpeername_peer_override',
  'strict_denied',
  'strict_rst_sent',
  'permissive_plaintext',
  'probe_allowed',
  'inbound_excluded',
  'connect_agent_skipped',
  'probe_tagged',
  'fragment_dropped',
  'header_unreadable',
  'ipv6_refused',
  'lookup_steered',
  'lookup_probe_allowed',
  'lookup_excluded',
  'lookup_no_agent',
  'lookup_ipv6_refused',
  'splice_reader_splice',
  'splice_stranded',
  'splice_reader_fionread',
] as const;
export type CounterName = (typeof COUNTER_FIELDS)[number];
export type Counters = Record<CounterName, number>;
export const COUNTERS_SIZE = COUNTER_FIELDS.length * 8;

/** Sums a PERCPU_ARRAY value (nCPU slots of roundup(size, 8) bytes) into one set of counters. */
export function decodePercpuCounters(b: Buffer, cpus: number): Counters {
  const out = Object.fromEntries(COUNTER_FIELDS.map((f) => [f, 0])) as Counters;
  const stride = Math.ceil(COUNTERS_SIZE / 8) * 8;
  for (let cpu = 0; cpu < cpus; cpu++) {
    COUNTER_FIELDS.forEach((f, i) => {
      out[f] += Number(r64(b, cpu * stride + i * 8));
    });
  }
  return out;
}

// ---- struct weft_refusal (24 bytes) ------------------------------------------------------------

export interface Refusal {
  /** The pod's netns cookie; 0n when the kernel did not know the pod (IPv6 at the interface). */
  netnsCookie: bigint;
  /** IPv4 addresses; '0.0.0.0' for IPv6. */
  src: Endpoint;
  dst: Endpoint;
  /** The counter that counted it (a REFUSAL_COUNTERS name). */
  reason: CounterName;
}
export const REFUSAL_SIZE = 24;
export function decodeRefusal(b: Buffer): Refusal {
  return {
    netnsCookie: r64(b, 0),
    src: { ip: rip(b, 8), port: r16(b, 16) },
    dst: { ip: rip(b, 12), port: r16(b, 18) },
    reason: COUNTER_FIELDS[r16(b, 20)] ?? 'strict_denied',
  };
}

/** Field order of struct weft_pod_counters (== enum weft_pod_counter). */
export const POD_COUNTER_FIELDS = [
  'connect_redirected',
  'connect_passed',
  'getpeername_rewritten',
  'peer_override',
  'strict_denied',
  'permissive_plaintext',
  'probe_allowed',
  'fragment_dropped',
  'steered',
  'no_agent',
] as const;
export type PodCounterName = (typeof POD_COUNTER_FIELDS)[number];
export type PodCounters = Record<PodCounterName, number>;
export const POD_COUNTERS_SIZE = POD_COUNTER_FIELDS.length * 8;

export function decodePodCounters(b: Buffer): PodCounters {
  return Object.fromEntries(POD_COUNTER_FIELDS.map((f, i) => [f, Number(r64(b, i * 8))])) as PodCounters;
}
export function zeroPodCounters(): Buffer {
  return Buffer.alloc(POD_COUNTERS_SIZE);
}
