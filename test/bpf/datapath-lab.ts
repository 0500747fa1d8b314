// A one-node lab for the datapath tests: a node netns (where the agent runs) and pod netns joined
// to it by veths, each pod in its own cgroup under the lab's cgroup folder, plus tiny Node programs
// that stand in for applications (a client that reports what getpeername() says, a server that
// reports whom accept() gave it).
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { collectOutput } from '../../lib/sys/exec.ts';
import { Lab, run, type Netns } from '../lab/lab.ts';

export const NODE_BIN = process.execPath;

export interface LabPod {
  name: string;
  ns: Netns;
  cgroup: string;
  ip: string;
  /** Node-side veth address: the pod's gateway and its agent address. */
  gateway: string;
  /** Pod-side interface name inside the pod netns. */
  ifname: string;
}

/** Builds node + pods; pod i gets 10.77.<i>.2/24 with gateway 10.77.<i>.1. */
export function buildNode(lab: Lab, podNames: string[]): { node: Netns; pods: Record<string, LabPod> } {
  const node = lab.netns('node');
  node.exec('sysctl', '-qw', 'net.ipv4.ip_forward=1');
  const pods: Record<string, LabPod> = {};
  podNames.forEach((name, i) => {
    const ns = lab.netns(name);
    const gateway = `10.77.${i + 1}.1`;
    const ip = `10.77.${i + 1}.2`;
    const { b } = lab.veth({ ns: node, name: `n${i}`, addr: `${gateway}/24` }, { ns, name: `p${i}`, addr: `${ip}/24` });
    ns.exec('ip', 'route', 'add', 'default', 'via', gateway);
    pods[name] = { name, ns, cgroup: lab.cgroup(name), ip, gateway, ifname: b };
  });
  return { node, pods };
}

/**
 * A second node joined to `node` by a veth (10.78.0.1 <-> 10.78.0.2), with one pod of its own at
 * 10.77.99.2 (gateway 10.77.99.1 on node 2), routed both ways, for cross-node traffic.
 */
export function addRemoteNode(lab: Lab, node: Netns, podName: string): { node2: Netns; pod: LabPod } {
  const node2 = lab.netns('node2');
  node2.exec('sysctl', '-qw', 'net.ipv4.ip_forward=1');
  lab.veth({ ns: node, name: 'x1', addr: '10.78.0.1/30' }, { ns: node2, name: 'x2', addr: '10.78.0.2/30' });
  const ns = lab.netns(podName);
  const { b } = lab.veth({ ns: node2, name: 'r0', addr: '10.77.99.1/24' }, { ns, name: 'q0', addr: '10.77.99.2/24' });
  ns.exec('ip', 'route', 'add', 'default', 'via', '10.77.99.1');
  node.exec('ip', 'route', 'add', '10.77.99.0/24', 'via', '10.78.0.2');
  node2.exec('ip', 'route', 'add', 'default', 'via', '10.78.0.1');
  return { node2, pod: { name: podName, ns, cgroup: lab.cgroup(podName), ip: '10.77.99.2', gateway: '10.77.99.1', ifname: b } };
}

/** What the client program prints. */
export interface ClientResult {
  ok: boolean;
  code?: string;
  /** getpeername() of the connected socket. */
  remoteAddress?: string;
  remotePort?: number;
  localAddress?: string;
  localPort?: number;
  /** The whole reply the server sent (JSON from the server programs). */
  reply?: string;
  ms?: number;
}

const CLIENT_JS = `
const net = require('node:net');
const [host, port, bindHost, bindPort] = process.argv.slice(1);
const t0 = Date.now();
const out = (o) => { process.stdout.write(JSON.stringify({ ...o, ms: Date.now() - t0 }) + '\\n'); process.exit(0); };
const opts = { host, port: Number(port) };
if (bindHost) { opts.localAddress = bindHost; opts.localPort = Number(bindPort); }
const s = net.connect(opts);
let reply = '';
let seen = {};
s.setTimeout(4000, () => out({ ok: false, code: 'TIMEOUT' }));
s.on('connect', () => { seen = { remoteAddress: s.remoteAddress, remotePort: s.remotePort, localAddress: s.localAddress, localPort: s.localPort }; });
s.on('data', (d) => { reply += d; });
s.on('end', () => out({ ok: true, ...seen, reply }));
s.on('error', (e) => out({ ok: false, code: e.code }));
`;

/** Runs one connection from inside `ns` (and `cgroup`, when given) and returns what it saw. */
export async function connectFrom(lab: Lab, where: { ns: Netns; cgroup?: string }, host: string, port: number,
  bind?: { host: string; port: number }): Promise<ClientResult> {
  const args = ['-e', CLIENT_JS, host, String(port)];
  if (bind) args.push(bind.host, String(bind.port));
  const child = lab.spawn(NODE_BIN, args, where.cgroup ? { netns: where.ns, cgroup: where.cgroup } : { netns: where.ns });
  const { stdout, stderr } = await collectOutput(child);
  const line = stdout.trim().split('\n').pop();
  if (!line) throw new Error(`client in ${where.ns.name} printed nothing; stderr: ${stderr}`);
  return JSON.parse(line) as ClientResult;
}

const SERVER_JS = `
const net = require('node:net');
const [name, ...listen] = process.argv.slice(1);
let pending = listen.length;
for (const hp of listen) {
  const i = hp.lastIndexOf(':');
  const host = hp.slice(0, i), port = Number(hp.slice(i + 1));
  net.createServer((s) => {
    s.end(JSON.stringify({ server: name, remoteAddress: s.remoteAddress, remotePort: s.remotePort, localAddress: s.localAddress, localPort: s.localPort }));
  }).listen({ host, port, ipv6Only: false }, () => { if (--pending === 0) process.stdout.write('ready\\n'); });
}
`;

/** Starts a server program in a pod (netns + cgroup) listening on each host:port; resolves when ready. */
export async function startServer(lab: Lab, pod: { ns: Netns; cgroup: string }, name: string, listen: string[]): Promise<ChildProcess> {
  const child = lab.spawn(NODE_BIN, ['-e', SERVER_JS, name, ...listen], { netns: pod.ns, cgroup: pod.cgroup });
  let out = '';
  let err = '';
  child.stderr!.on('data', (d) => { err += d; });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d) => {
      out += d;
      if (out.includes('ready')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`server ${name} exited (${code}): ${err}`)));
  });
  return child;
}

/**
 * Kills processes and waits until each is reaped: a cgroup still counts a dying task for a moment
 * after cgroup.procs stops listing it, and the lab's rmdir of a busy cgroup fails.
 */
export async function stopAll(children: Iterable<ChildProcess>): Promise<void> {
  await Promise.all([...children].map(async (child) => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill('SIGKILL');
    await exited;
  }));
}

// Sends one SYN from a raw socket (so the kernel leaves the TCP checksum as written: complete, not
// CHECKSUM_PARTIAL as veth traffic from a TCP socket is) with 12 bytes of options, then waits for
// the answer on a raw socket and checks both of its checksums in software.
const RAW_SYN_PY = `
import socket, struct, sys, json, time
src, dst, dport = sys.argv[1], sys.argv[2], int(sys.argv[3])
def fold(b):
    if len(b) % 2: b += b'\\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return s
def csum(b): return ~fold(b) & 0xffff
opts = struct.pack('!BBH', 2, 4, 1460) + bytes([1, 3, 3, 7, 4, 2, 1, 1])
sport, seq = 40555, 123456789
hdr = struct.pack('!HHIIHHHH', sport, dport, seq, 0, ((20 + len(opts)) // 4 << 12) | 0x02, 64240, 0, 0) + opts
pseudo = lambda s_, d_, n: socket.inet_aton(s_) + socket.inet_aton(d_) + struct.pack('!BBH', 0, 6, n)
c = csum(pseudo(src, dst, len(hdr)) + hdr)
hdr = hdr[:16] + struct.pack('!H', c) + hdr[18:]
rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
rx.settimeout(3)
tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
tx.sendto(hdr, (dst, 0))
deadline = time.time() + 3
while time.time() < deadline:
    pkt = rx.recv(2048)
    ihl = (pkt[0] & 15) * 4
    tcp = pkt[ihl:struct.unpack('!H', pkt[2:4])[0]]
    sp, dp_, sq, ack, word = struct.unpack('!HHIIH', tcp[:14])
    if sp != dport or dp_ != sport: continue
    print(json.dumps({ 'flags': word & 0x3f, 'doff': word >> 12, 'seq': sq, 'ack': ack, 'sentSeq': seq,
        'ipChecksumOk': fold(pkt[:ihl]) == 0xffff,
        'tcpChecksumOk': fold(pseudo(socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20]), len(tcp)) + tcp) == 0xffff,
        'len': len(pkt) }))
    sys.exit(0)
print(json.dumps({ 'timeout': True }))
`;

export interface RawSynAnswer {
  timeout?: boolean;
  flags: number;
  doff: number;
  seq: number;
  ack: number;
  sentSeq: number;
  ipChecksumOk: boolean;
  tcpChecksumOk: boolean;
  len: number;
}

/** Sends a raw SYN from `from` to dst:port and returns the answer as python3 decoded it. */
export function rawSyn(from: { ns: Netns }, src: string, dst: string, port: number): RawSynAnswer {
  return JSON.parse(from.ns.exec('python3', '-c', RAW_SYN_PY, src, dst, String(port)).trim().split('\n').pop()!) as RawSynAnswer;
}

/** `bpftool -j ...` parsed. */
export function bpftoolJson<T = unknown>(...args: string[]): T {
  return JSON.parse(run('bpftool', ['-j', ...args])) as T;
}

/** A pinned map's contents as bpftool prints them (key/value byte arrays), for before/after diffs. */
export function mapSnapshot(pin: string): string {
  const entries = bpftoolJson<Array<{ key: string[]; value?: string[]; values?: unknown[] }>>('map', 'dump', 'pinned', pin);
  return JSON.stringify(entries.map((e) => [e.key, e.value ?? e.values]));
}

// Crafted SYNs an attacker would try past a header check, sent with IP_HDRINCL (IPPROTO_RAW) so
// the kernel sends the IP header as written:
//   fragments: the SYN split in two IPv4 fragments, the first with only 8 bytes of TCP header
//              (ports and sequence number; no flags), the second with the other 12;
//   short:     one unfragmented packet whose TCP header is cut after 8 bytes.
// Then listens for any TCP answer from dst:port for 2 s.
const CRAFTED_SYN_PY = `
import socket, struct, sys, json, time
src, dst, dport, kind = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def fold(b):
    if len(b) % 2: b += b'\\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return s
sport, seq = 40777, 987654321
tcp = struct.pack('!HHIIHHHH', sport, dport, seq, 0, (5 << 12) | 0x02, 64240, 0, 0)
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack('!BBH', 0, 6, len(tcp))
c = ~fold(pseudo + tcp) & 0xffff
tcp = tcp[:16] + struct.pack('!H', c) + tcp[18:]
def ip(payload, frag):
    h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(payload), 4242, frag, 64, 6, 0, socket.inet_aton(src), socket.inet_aton(dst))
    h = h[:10] + struct.pack('!H', ~fold(h) & 0xffff) + h[12:]
    return h + payload
if kind == 'fragments':
    packets = [ip(tcp[:8], 0x2000), ip(tcp[8:], 1)]
else:
    packets = [ip(tcp[:8], 0)]
rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
rx.settimeout(0.5)
tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for p in packets: tx.sendto(p, (dst, 0))
deadline = time.time() + 2
while time.time() < deadline:
    try: pkt = rx.recv(2048)
    except socket.timeout: continue
    ihl = (pkt[0] & 15) * 4
    sp, dp_ = struct.unpack('!HH', pkt[ihl:ihl + 4])
    if sp != dport or dp_ != sport: continue
    word = struct.unpack('!H', pkt[ihl + 12:ihl + 14])[0]
    print(json.dumps({ 'answered': True, 'flags': word & 0x3f }))
    sys.exit(0)
print(json.dumps({ 'answered': False }))
`;

export type CraftedSyn = 'fragments' | 'short';

/** Sends a crafted SYN (see CRAFTED_SYN_PY) from `from` and reports whether dst:port answered. */
export function craftedSyn(from: { ns: Netns }, kind: CraftedSyn, src: string, dst: string, port: number): { answered: boolean; flags?: number } {
  return JSON.parse(from.ns.exec('python3', '-c', CRAFTED_SYN_PY, src, dst, String(port), kind).trim().split('\n').pop()!) as { answered: boolean; flags?: number };
}

// One SYN written as a whole Ethernet frame on a packet socket (AF_PACKET) bound to `ifname`, so
// the frame can carry what an IP socket never sends: 802.1Q/802.1ad tags between the Ethernet
// header and the IP packet (each a 4-byte TPID + TCI, here always TCI 0: a priority-tagged frame,
// whose VID is the null VID 0, IEEE 802.1Q-2018 9.6 and Table 9-2), an IP destination the
// sender's own routes would keep, IP options, or data in the SYN. Then listens on the same socket
// for any TCP answer to the SYN for 2 s.
const FRAMED_SYN_PY = `
import socket, struct, sys, json, time
ifname, dmac, src, dst, dport, tags = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
ipopts, tcpopts, data = bytes.fromhex(sys.argv[7]), bytes.fromhex(sys.argv[8]), bytes.fromhex(sys.argv[9])
def fold(b):
    if len(b) % 2: b += b'\\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return s
sport, seq = 40999, 192837465
tcp = struct.pack('!HHIIHHHH', sport, dport, seq, 0, ((20 + len(tcpopts)) // 4 << 12) | 0x02, 64240, 0, 0) + tcpopts + data
if ':' in dst:
    # IPv6; ipopts are the options of a Destination Options header (RFC 8200 4.6) before the TCP header.
    s6, d6 = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    tcp = tcp[:16] + struct.pack('!H', ~fold(s6 + d6 + struct.pack('!IxxxB', len(tcp), 6) + tcp) & 0xffff) + tcp[18:]
    ext = bytes([6, (len(ipopts) + 2) // 8 - 1]) + ipopts if ipopts else b''
    ip = struct.pack('!IHBB', 6 << 28, len(ext) + len(tcp), 60 if ext else 6, 64) + s6 + d6 + ext
    ethertype = b'\\x86\\xdd'
else:
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack('!BBH', 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack('!H', ~fold(pseudo + tcp) & 0xffff) + tcp[18:]
    ip = struct.pack('!BBHHHBBH4s4s', 0x40 | (20 + len(ipopts)) // 4, 0, 20 + len(ipopts) + len(tcp), 4243, 0, 64, 6, 0, socket.inet_aton(src), socket.inet_aton(dst)) + ipopts
    ip = ip[:10] + struct.pack('!H', ~fold(ip) & 0xffff) + ip[12:]
    ethertype = b'\\x08\\x00'
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((ifname, 0))
vlan = b''.join(struct.pack('!HH', int(t, 16), 0) for t in tags.split(',') if t)
s.send(bytes.fromhex(dmac.replace(':', '')) + s.getsockname()[4] + vlan + ethertype + ip + tcp)
s.settimeout(0.5)
deadline = time.time() + 2
while time.time() < deadline:
    try: f = s.recv(2048)
    except socket.timeout: continue
    if f[12:14] != b'\\x08\\x00' or f[23] != 6: continue
    ihl = (f[14] & 15) * 4
    sp, dp_ = struct.unpack('!HH', f[14 + ihl:18 + ihl])
    if sp != dport or dp_ != sport: continue
    ack = struct.unpack('!I', f[14 + ihl + 8:14 + ihl + 12])[0]
    print(json.dumps({ 'answered': True, 'flags': f[14 + ihl + 13] & 0x3f, 'from': socket.inet_ntoa(f[26:30]), 'acked': (ack - seq - 1) % 2**32 }))
    sys.exit(0)
print(json.dumps({ 'answered': False }))
`;

/** The MAC address of `ifname` inside `ns`. */
export function macOf(ns: Netns, ifname: string): string {
  return (JSON.parse(ns.exec('ip', '-j', 'link', 'show', 'dev', ifname)) as Array<{ address: string }>)[0]!.address;
}

export interface SynFrame {
  ifname: string;
  dmac: string;
  src: string;
  dst: string;
  port: number;
  /** One priority tag (VID 0) per TPID (0x8100, 0x88a8), outermost first. */
  vlanTags?: number[];
  /** IPv4 options (a multiple of 4 bytes: the IHL grows by one per 4); for an IPv6 `dst`, the
   * options of a Destination Options header put before the TCP header (6 bytes, then 14, ...). */
  ipOptions?: Buffer;
  /** TCP options (a multiple of 4 bytes). */
  tcpOptions?: Buffer;
  /** Data carried by the SYN itself (TCP Fast Open). */
  data?: Buffer;
}

/**
 * Sends a SYN from `from` as one Ethernet frame on its interface `ifname` to the MAC `dmac` (see
 * FRAMED_SYN_PY), and reports whether dst:port answered: the answer's flags, source address, and
 * how many bytes after the SYN it acknowledged (data taken with a Fast Open SYN).
 */
export function framedSyn(from: { ns: Netns }, frame: SynFrame): { answered: boolean; flags?: number; from?: string; acked?: number } {
  const tags = (frame.vlanTags ?? []).map((t) => t.toString(16)).join(',');
  const hex = (b?: Buffer) => (b ?? Buffer.alloc(0)).toString('hex');
  return JSON.parse(from.ns.exec('python3', '-c', FRAMED_SYN_PY, frame.ifname, frame.dmac, frame.src, frame.dst, String(frame.port), tags,
    hex(frame.ipOptions), hex(frame.tcpOptions), hex(frame.data)).trim().split('\n').pop()!) as { answered: boolean; flags?: number; from?: string; acked?: number };
}
