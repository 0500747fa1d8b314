// The structs of bpf/include/weft.h as struct() codecs of agent/libbpf/codec.ts. The header is the
// definition: each codec is named after the C struct it mirrors and its fields after the C members,
// and test/bpf/datapath.test.ts compares every codec in STRUCTS with the struct clang laid out in
// the objects' BTF (size, and each member's offset and size). The functions below are what the
// agent calls: they translate between the C members and the agent's own names. Those on a
// per-connection path (decodeOrig, decodeTuple4, decodeRefusal, decodeSpliced, decodePeer) read
// the members they need with the struct codec's `get` into the agent's object, as fast as by hand.
// Conventions from the header: IPv4 addresses in network byte order, ports and counters in host
// byte order (little-endian, as codec.ts assumes).
import { i32, ipv4, percpu, struct, sumPercpu, u16, u32, u64, u8, type Codec, type StructCodec } from '../../libbpf/codec.ts';

export const MODE = { PERMISSIVE: 1, STRICT: 2 } as const;
export type Mode = keyof typeof MODE;
/** WEFT_MAX_DESTS: entries of weft_dests. */
export const MAX_DESTS = 65_536;
/** WEFT_MAX_PROBERS: entries of weft_probers. */
export const MAX_PROBERS = 16;

// One copy, beside the forwarded-client decision that needs it too.
export { unmapV4 } from '../../../lib/hbone/forwarded.ts';
// The rule the ipv4 codec encodes by: an address checked with it is one the codecs below take.
export { isIpv4 } from '../../libbpf/codec.ts';

// ---- the C structs ------------------------------------------------------------------------------

export const WEFT_POD = struct([
  ['pod_ip', ipv4], ['agent_ip', ipv4], ['agent_port', u16], ['mode', u8], ['flags', u8], ['ifindex', u32],
], { name: 'struct weft_pod' });
export const WEFT_POD_IN = struct([['netns_cookie', u64], ['mode', u8], ['flags', u8]], { name: 'struct weft_pod_in' });
export const WEFT_POD_PORT = struct([['pod_ip', ipv4], ['port', u16]], { name: 'struct weft_pod_port' });
export const WEFT_PORT_MODE = struct([['mode', u8]], { name: 'struct weft_port_mode', size: 4 });
export const WEFT_SK_TAG = struct([['kind', u32]], { name: 'struct weft_sk_tag' });
export const WEFT_DEST_KEY = struct([['ip', ipv4], ['port', u16]], { name: 'struct weft_dest_key' });
export const WEFT_DEST = struct([['flags', u32]], { name: 'struct weft_dest' });
export const WEFT_EXCLUDED = struct([['present', u8]], { name: 'struct weft_excluded' });
export const WEFT_TUPLE4 = struct([
  ['src_ip', ipv4], ['dst_ip', ipv4], ['src_port', u16], ['dst_port', u16],
], { name: 'struct weft_tuple4' });
export const WEFT_ORIG = struct([['orig_ip', ipv4], ['orig_port', u16], ['netns_cookie', u64]], { name: 'struct weft_orig' });
export const WEFT_PEER_KEY = struct([
  ['local_ip', ipv4], ['remote_ip', ipv4], ['local_port', u16], ['remote_port', u16],
], { name: 'struct weft_peer_key' });
export const WEFT_PEER = struct([['client_ip', ipv4], ['client_port', u16]], { name: 'struct weft_peer' });
export const WEFT_SPLICED = struct([
  ['peer', WEFT_TUPLE4], ['flags', u32], ['sk', u64], ['snd_base', u32], ['rcv_base', u32], ['netns_cookie', u64],
  ['bytes', u64], ['msgs', u64], ['passed', u64], ['fallbacks', u32],
], { name: 'struct weft_spliced' });
export const WEFT_SPLICE_EXPECT_KEY = struct([['ip', ipv4], ['port', u16]], { name: 'struct weft_splice_expect_key' });
export const WEFT_REFUSAL = struct([
  ['netns_cookie', u64], ['saddr', ipv4], ['daddr', ipv4], ['sport', u16], ['dport', u16], ['reason', u16],
], { name: 'struct weft_refusal' });

// ---- keys -------------------------------------------------------------------------------------

/** __u64 network-namespace cookie (weft_pods, weft_pod_counters). */
export function cookieKey(cookie: bigint): Buffer {
  return u64.encode(cookie);
}
export function decodeCookieKey(b: Buffer): bigint {
  return u64.decode(b);
}

/** __be32 (weft_inbound_pods, weft_pod_listeners). */
export function ipKey(addr: string): Buffer {
  return ipv4.encode(addr);
}
export function decodeIpKey(b: Buffer): string {
  return ipv4.decode(b);
}

/** __u16 host-order port (weft_excluded_ports). */
export function portKey(port: number): Buffer {
  return u16.encode(port);
}
export function decodePortKey(b: Buffer): number {
  return u16.decode(b);
}

// ---- struct weft_pod ---------------------------------------------------------------------------

export interface PodEntry {
  podIp: string;
  agentIp: string;
  agentPort: number;
  mode: Mode;
  flags: number;
  ifindex: number;
}
export const POD_SIZE = WEFT_POD.size;
export function encodePod(v: PodEntry): Buffer {
  return WEFT_POD.encode({ pod_ip: v.podIp, agent_ip: v.agentIp, agent_port: v.agentPort, mode: MODE[v.mode], flags: v.flags, ifindex: v.ifindex });
}
export function decodePod(b: Buffer): PodEntry {
  const v = WEFT_POD.decode(b);
  return { podIp: v.pod_ip, agentIp: v.agent_ip, agentPort: v.agent_port, mode: modeName(v.mode), flags: v.flags, ifindex: v.ifindex };
}

function modeName(n: number): Mode {
  return n === MODE.STRICT ? 'STRICT' : 'PERMISSIVE';
}

// ---- struct weft_pod_in ------------------------------------------------------------------------

/** weft_pod_in.flags */
export const POD_F = { PORT_MODES: 0x01, STRICT_PORT: 0x02 } as const;

export interface PodInbound {
  netnsCookie: bigint;
  mode: Mode;
  flags: number;
}
export const POD_IN_SIZE = WEFT_POD_IN.size;
export function encodePodIn(v: PodInbound): Buffer {
  return WEFT_POD_IN.encode({ netns_cookie: v.netnsCookie, mode: MODE[v.mode], flags: v.flags });
}
export function decodePodIn(b: Buffer): PodInbound {
  const v = WEFT_POD_IN.decode(b);
  return { netnsCookie: v.netns_cookie, mode: modeName(v.mode), flags: v.flags };
}

// ---- struct weft_pod_port / weft_port_mode -----------------------------------------------------

export function encodePodPort(podIp: string, port: number): Buffer {
  return WEFT_POD_PORT.encode({ pod_ip: podIp, port });
}
export function decodePodPort(b: Buffer): Endpoint {
  const v = WEFT_POD_PORT.decode(b);
  return { ip: v.pod_ip, port: v.port };
}
export function encodePortMode(mode: Mode): Buffer {
  return WEFT_PORT_MODE.encode({ mode: MODE[mode] });
}
export function decodePortMode(b: Buffer): Mode {
  return modeName(WEFT_PORT_MODE.decode(b).mode);
}

// ---- struct weft_sk_tag, socket fds, cgroup ids ------------------------------------------------

/** weft_sk_tag.kind */
export const SK_TAG = { AGENT: 1, PROBE: 2 } as const;
export function encodeSkTag(kind: number): Buffer {
  return WEFT_SK_TAG.encode({ kind });
}
/** An int socket fd: the key user space gives a socket-local storage map. */
export function fdKey(fd: number): Buffer {
  return i32.encode(fd);
}
/** A __u64 socket fd: the value user space gives a SOCKHASH (lookups return the socket cookie). */
export function fdValue(fd: number): Buffer {
  return u64.encode(BigInt(fd));
}

// ---- struct weft_dest_key / weft_dest ----------------------------------------------------------

export interface Destination {
  ip: string;
  /** 0 or absent: every port of this address. */
  port?: number;
}
export function encodeDestKey(d: Destination): Buffer {
  return WEFT_DEST_KEY.encode({ ip: d.ip, port: d.port ?? 0 });
}
export function decodeDestKey(b: Buffer): Required<Destination> {
  const v = WEFT_DEST_KEY.decode(b);
  return { ip: v.ip, port: v.port };
}
export function encodeDest(flags = 0): Buffer {
  return WEFT_DEST.encode({ flags });
}

/** struct weft_excluded with present = 1. */
export const EXCLUDED_PRESENT = WEFT_EXCLUDED.encode({ present: 1 });

// ---- struct weft_tuple4 / weft_orig ------------------------------------------------------------

export interface Endpoint {
  ip: string;
  port: number;
}
function tuple4(src: Endpoint, dst: Endpoint): { src_ip: string; dst_ip: string; src_port: number; dst_port: number } {
  return { src_ip: src.ip, dst_ip: dst.ip, src_port: src.port, dst_port: dst.port };
}
/** struct weft_tuple4 at `o` of a buffer already checked to hold it. */
function endpointsAt(b: Buffer, o: number): { src: Endpoint; dst: Endpoint } {
  const g = WEFT_TUPLE4.get;
  return { src: { ip: g.src_ip(b, o), port: g.src_port(b, o) }, dst: { ip: g.dst_ip(b, o), port: g.dst_port(b, o) } };
}
export function encodeTuple4(src: Endpoint, dst: Endpoint): Buffer {
  return WEFT_TUPLE4.encode(tuple4(src, dst));
}
export function decodeTuple4(b: Buffer): { src: Endpoint; dst: Endpoint } {
  WEFT_TUPLE4.checkSize(b);
  return endpointsAt(b, 0);
}

export interface OriginalDestination {
  ip: string;
  port: number;
  /** Network-namespace cookie of the client pod that dialled it. */
  clientNetnsCookie: bigint;
}
export function decodeOrig(b: Buffer): OriginalDestination {
  const g = WEFT_ORIG.get;
  WEFT_ORIG.checkSize(b);
  return { ip: g.orig_ip(b), port: g.orig_port(b), clientNetnsCookie: g.netns_cookie(b) };
}

// ---- struct weft_peer_key / weft_peer ----------------------------------------------------------

export function encodePeerKey(local: Endpoint, remote: Endpoint): Buffer {
  return WEFT_PEER_KEY.encode({ local_ip: local.ip, remote_ip: remote.ip, local_port: local.port, remote_port: remote.port });
}
export function encodePeer(client: Endpoint): Buffer {
  return WEFT_PEER.encode({ client_ip: client.ip, client_port: client.port });
}
export function decodePeer(b: Buffer): Endpoint {
  WEFT_PEER.checkSize(b);
  return { ip: WEFT_PEER.get.client_ip(b), port: WEFT_PEER.get.client_port(b) };
}

// ---- struct weft_spliced / weft_splice_expect_key ----------------------------------------------

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
export const SPLICED_SIZE = WEFT_SPLICED.size;
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
  return WEFT_SPLICED.encode({
    peer: tuple4(v.peer.src, v.peer.dst), flags: v.flags >>> 0, sk: v.sk, snd_base: v.sndBase >>> 0, rcv_base: v.rcvBase >>> 0,
    netns_cookie: v.netnsCookie, bytes: v.bytes, msgs: v.msgs, passed: v.passed, fallbacks: v.fallbacks >>> 0,
  });
}
const SPLICED_PEER = WEFT_SPLICED.fields.find((f) => f.name === 'peer')!.offset;
export function decodeSpliced(b: Buffer): SplicedEntry {
  const g = WEFT_SPLICED.get;
  WEFT_SPLICED.checkSize(b);
  return {
    peer: endpointsAt(b, SPLICED_PEER), flags: g.flags(b), sk: g.sk(b), sndBase: g.snd_base(b), rcvBase: g.rcv_base(b),
    netnsCookie: g.netns_cookie(b), bytes: g.bytes(b), msgs: g.msgs(b), passed: g.passed(b), fallbacks: g.fallbacks(b),
  };
}
export function encodeSpliceExpect(e: Endpoint): Buffer {
  return WEFT_SPLICE_EXPECT_KEY.encode({ ip: e.ip, port: e.port });
}

// ---- counters ----------------------------------------------------------------------------------

/**
 * Counters that record a refusal, by the reason `weftctl bpf` and the docs name them (every exit
 * of the inbound programs that keeps a connection from the pod).
 */
export const REFUSAL_COUNTERS = [
  'strict_denied', 'fragment_dropped', 'header_unreadable', 'ipv6_refused', 'vlan_dropped', 'martian', 'lookup_no_agent', 'lookup_ipv6_refused',
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
  'vlan_dropped',
  'martian',
] as const;
export type CounterName = (typeof COUNTER_FIELDS)[number];
export type Counters = Record<CounterName, number>;
/** struct weft_counters: a __u64 for each counter, in COUNTER_FIELDS order. */
export const WEFT_COUNTERS = struct(COUNTER_FIELDS.map((f) => [f, u64] as const), { name: 'struct weft_counters' }) as StructCodec<Record<CounterName, bigint>>;
export const COUNTERS_SIZE = WEFT_COUNTERS.size;

/** The value of weft_counters, a PERCPU_ARRAY: `cpus` slots of roundup(size, 8) bytes. Built once per Datapath. */
export type PercpuCounters = Codec<Record<CounterName, bigint>[]>;
export function percpuCounters(cpus: number): PercpuCounters {
  return percpu(WEFT_COUNTERS, cpus);
}
/** Sums a weft_counters value (read as `slots`, from percpuCounters) into one set of counters. */
export function decodePercpuCounters(b: Buffer, slots: PercpuCounters): Counters {
  return toNumbers(sumPercpu(slots.decode(b)));
}

/** A struct of __u64 counters as JS numbers (exact up to 2^53), in place. */
function toNumbers<K extends string>(v: Record<K, bigint>): Record<K, number> {
  const out = v as Record<K, unknown>;
  for (const k in out) out[k] = Number(out[k]);
  return out as Record<K, number>;
}

// ---- struct weft_refusal ----------------------------------------------------------------------

export interface Refusal {
  /** The pod's netns cookie; 0n when the kernel did not know the pod (IPv6 at the interface). */
  netnsCookie: bigint;
  /** IPv4 addresses; '0.0.0.0' for IPv6. */
  src: Endpoint;
  dst: Endpoint;
  /** The counter that counted it (a REFUSAL_COUNTERS name). */
  reason: CounterName;
}
export const REFUSAL_SIZE = WEFT_REFUSAL.size;
export function decodeRefusal(b: Buffer): Refusal {
  const g = WEFT_REFUSAL.get;
  WEFT_REFUSAL.checkSize(b);
  return {
    netnsCookie: g.netns_cookie(b),
    src: { ip: g.saddr(b), port: g.sport(b) },
    dst: { ip: g.daddr(b), port: g.dport(b) },
    reason: COUNTER_FIELDS[g.reason(b)] ?? 'strict_denied',
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
/** struct weft_pod_counters: a __u64 for each counter, in POD_COUNTER_FIELDS order. */
export const WEFT_POD_COUNTERS = struct(POD_COUNTER_FIELDS.map((f) => [f, u64] as const), { name: 'struct weft_pod_counters' }) as StructCodec<Record<PodCounterName, bigint>>;
export const POD_COUNTERS_SIZE = WEFT_POD_COUNTERS.size;

export function decodePodCounters(b: Buffer): PodCounters {
  return toNumbers(WEFT_POD_COUNTERS.decode(b));
}
export function zeroPodCounters(): Buffer {
  return Buffer.alloc(POD_COUNTERS_SIZE);
}

/**
 * Every struct of bpf/include/weft.h the agent reads or writes, each named after its C struct:
 * test/bpf/datapath.test.ts compares each with the objects' BTF.
 */
export const STRUCTS: readonly StructCodec<unknown>[] = [
  WEFT_POD, WEFT_POD_IN, WEFT_POD_PORT, WEFT_PORT_MODE, WEFT_SK_TAG, WEFT_DEST_KEY, WEFT_DEST, WEFT_EXCLUDED, WEFT_TUPLE4,
  WEFT_ORIG, WEFT_PEER_KEY, WEFT_PEER, WEFT_SPLICED, WEFT_SPLICE_EXPECT_KEY, WEFT_REFUSAL, WEFT_COUNTERS, WEFT_POD_COUNTERS,
];
