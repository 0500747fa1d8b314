// The agent's handle on the eBPF L4 datapath (bpf/redirect.bpf.c, bpf/inbound.bpf.c,
// bpf/splice.bpf.c): loads the
// objects with their maps pinned under the pin root, attaches (or adopts) the cgroup programs,
// enrols pods, reconciles the mesh destinations and reads the bookkeeping maps.
//
// Everything the kernel needs to keep working lives in bpffs, not in this process:
//   <pinRoot>/weft_*               maps (LIBBPF_PIN_BY_NAME)
//   <pinRoot>/links/<program>      the cgroup links (one per program)
//   <pinRoot>/links/pods/<cookie>  each enrolled pod's tcx link
//   <pinRoot>/links/lookup/<cookie> each enrolled pod's sk_lookup link
// so a killed agent leaves redirection and enforcement running, and a restarted one adopts the
// pinned links with an atomic program update instead of attaching a second time.
//
// That only holds if the agent sees the host's bpffs. `ip netns exec` remounts /sys in a private
// mount namespace, hiding /sys/fs/bpf and the cgroup tree: start an agent in a node netns with
// `nsenter --net=<netns file>` instead (open() refuses to mount a private bpffs, see
// PrivateBpffsError).
import { existsSync, mkdirSync, readdirSync, readlinkSync, rmdirSync, statSync, unlinkSync } from 'node:fs';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isIPv6, type Socket } from 'node:net';
import {
  BpfError,
  BpfLink,
  BpfMap,
  BpfObject,
  RingBuffer,
  netnsCookie,
  possibleCpus,
  type BpfProgram,
  type SockmapAttachment,
} from '../../libbpf/index.ts';
import { ensureBpffs, ensureTracefs, findCgroup2Root, readMounts } from '../../../lib/sys/mounts.ts';
import * as c from './codecs.ts';
import {
  BadAddressError,
  BadEnrolmentError,
  BadModeError,
  BadPortError,
  CgroupNotFoundError,
  DatapathClosedError,
  InterfaceError,
  NetnsNotFoundError,
  ObjectNotFoundError,
  PrivateBpffsError,
} from './errors.ts';
import { PORTS } from '../../../lib/defaults.ts';

/** Folder under the bpffs mount that holds Weft's pins unless DatapathOptions.pinRoot says otherwise. */
export const DEFAULT_PIN_DIR = 'weft';
/** Ports the mesh itself listens on; connections to them are never captured. */
export const MESH_PORTS = [PORTS.outbound, PORTS.hbone, PORTS.hboneGateway, PORTS.metrics, PORTS.readiness] as const;
export const DEFAULT_AGENT_PORT = PORTS.outbound;

export const REDIRECT_OBJECT = 'redirect.bpf.o';
export const INBOUND_OBJECT = 'inbound.bpf.o';
export const SPLICE_OBJECT = 'splice.bpf.o';
export const SPLICE_PROGRAM = 'weft_splice_verdict';
/** Tracepoint programs of splice.bpf.o: how each filed pod socket is read (weft_splice_reader). */
export const SPLICE_TRACE_PROGRAMS = ['weft_splice_recvmsg', 'weft_splice_read', 'weft_splice_sendfile', 'weft_splice_uring', 'weft_splice_zerocopy', 'weft_splice_ioctl'] as const;
/** Cgroup programs of redirect.bpf.o, in attach order. connect* go last so that, on a fresh node,
 * nothing is captured before sockops and getpeername are in place to serve it. */
export const CGROUP_PROGRAMS = ['weft_sockops', 'weft_getpeer4', 'weft_getpeer6', 'weft_connect4', 'weft_connect6'] as const;
export const INBOUND_PROGRAM = 'weft_inbound';
export const LOOKUP_PROGRAM = 'weft_lookup';
/** Pins of maps earlier versions used and this one does not (removed by open()). */
// weft_splice_socks and weft_splice_conns: the sk_skb splice of the agent's own sockets, replaced
// by the sk_msg splice of the pods' sockets (weft_splice_sk, weft_spliced).
const RETIRED_MAPS = ['weft_pods_by_ip', 'weft_splice_socks', 'weft_splice_conns'];

const MAPS = {
  pods: 'weft_pods',
  inboundPods: 'weft_inbound_pods',
  portModes: 'weft_port_modes',
  dests: 'weft_dests',
  excluded: 'weft_excluded_ports',
  inboundExcluded: 'weft_inbound_excluded',
  podListeners: 'weft_pod_listeners',
  skTag: 'weft_sk_tag',
  probers: 'weft_probers',
  probeTuples: 'weft_probe_tuples',
  refusals: 'weft_refusals',
  origByTuple: 'weft_orig_by_tuple',
  peerOverride: 'weft_peer_override',
  counters: 'weft_counters',
  podCounters: 'weft_pod_counters',
  spliceSk: 'weft_splice_sk',
  spliced: 'weft_spliced',
  spliceExpect: 'weft_splice_expect',
  spliceOn: 'weft_splice_on',
  spliceReader: 'weft_splice_reader',
  spliceStranded: 'weft_splice_stranded',
} as const;

/** A socket's own 4-tuple: src is its local address, dst its peer's. */
export interface SocketTuple {
  src: c.Endpoint;
  dst: c.Endpoint;
}

/** A spliced pair, as splice() returns it: the two pod sockets, each by its own tuple. */
export interface SplicedPair {
  /** The client pod's socket (connected to this agent). */
  client: SocketTuple;
  /** The server pod's socket (accepted from this agent's delivery socket). */
  server: SocketTuple;
}

/** One spliced connection (`weftctl bpf`). */
export interface SplicedConnection {
  /** The client pod's socket, "ip:port->ip:port". */
  client: string;
  /** The server pod's socket, "ip:port->ip:port". */
  server: string;
  clientNetnsCookie: bigint;
  /** Bytes the kernel carried pod to pod, each way. */
  bytesFromClient: bigint;
  bytesFromServer: bigint;
  /** Bytes each side sent by TCP (through the agent) while paired: before the pair was made, or while its peer held too much. */
  passedFromClient: bigint;
  passedFromServer: bigint;
  /** Times each direction gave way to TCP. */
  fallbacks: { fromClient: number; fromServer: number };
  /** How each pod socket has been read (SPLICE_R bits; weft_splice_reader). */
  reads: { client: number; server: number };
}

/** One filed pod socket as the kernel counts it. */
export interface SplicedSocket extends c.SplicedEntry {
  self: SocketTuple;
  /** How it has been read so far (SPLICE_R bits). */
  reads: number;
}

export function formatTuple(t: SocketTuple): string {
  return `${t.src.ip}:${t.src.port}->${t.dst.ip}:${t.dst.port}`;
}

export interface DatapathOptions {
  /** Where maps and links are pinned. Default: `<bpffs>/weft` (bpffs is mounted if missing). */
  pinRoot?: string;
  /** cgroup v2 folder the cgroup programs attach to. Default: the cgroup v2 root. */
  cgroupPath?: string;
  /** Folder holding redirect.bpf.o and inbound.bpf.o. Default: `<repo>/build/bpf`. */
  objectDir?: string;
}

export interface EnrollOptions {
  /** The pod's network-namespace file (/var/run/netns/x, /proc/<pid>/ns/net). */
  netnsPath: string;
  /** The pod's IPv4 address (its side of the veth). */
  podIp: string;
  mode: c.Mode;
  /** Where the pod's captured connections go: the node-side veth address, as seen from the pod. */
  agentIp: string;
  /** Default 15001. */
  agentPort?: number;
  /** PeerAuthentication portLevelMtls: ports whose mode differs from `mode`. */
  portModes?: Record<number, c.Mode>;
  /** The pod-side interface inside the pod netns; the inbound program attaches to its ingress. */
  ifname: string;
}

export interface EnrolledPod extends c.PodEntry {
  netnsCookie: bigint;
  /** Ports with their own mode (portLevelMtls). */
  portModes: Record<number, c.Mode>;
}

export interface PeerRegistration {
  /** The server socket's own address (pod IP and the port it listens on). */
  local: c.Endpoint;
  /** The address the server sees as its peer (the agent's source address and port). */
  remote: c.Endpoint;
  /** What the server should see instead: the real client. */
  client: c.Endpoint;
}

export interface LinkState {
  program: string;
  pin: string;
  id: number;
  progId: number;
}

function cookieOf(netnsPath: string): bigint {
  if (typeof netnsPath !== 'string' || netnsPath === '' || !existsSync(netnsPath)) throw new NetnsNotFoundError(String(netnsPath));
  try {
    return netnsCookie(netnsPath);
  } catch (err) {
    throw new NetnsNotFoundError(netnsPath, err);
  }
}

function checkIp(field: string, v: unknown): string {
  if (!c.isIpv4(v)) throw new BadAddressError(field, v);
  return v;
}

function checkPort(field: string, v: unknown, allowZero = false): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < (allowZero ? 0 : 1) || v > 65535) throw new BadPortError(field, v, allowZero);
  return v;
}

function isEnoent(err: unknown): boolean {
  return (err as { code?: string }).code === 'ENOENT';
}

/**
 * Detaches a link, unpins it and drops this fd. Detaching is best effort: a defunct link (its
 * cgroup, interface or netns gone) is already detached, and tracepoint links cannot be detached at
 * all, their pin and fd being their last holders.
 */
function release(link: BpfLink): void {
  try { link.detach(); } catch { /* defunct, or a link type without detach */ }
  link.unpin();
  link.close();
}

/** Releases the link pinned at `pin` (see release); false when nothing is pinned there. */
function releasePinned(pin: string): boolean {
  try {
    release(BpfLink.openPinned(pin));
    return true;
  } catch (err) {
    if (isEnoent(err)) return false;
    throw err;
  }
}

/**
 * Mounting a fresh bpffs is right on a host that has none, but in a private mount namespace (e.g.
 * under `ip netns exec`) it would pin everything where no restarted agent can find it.
 */
function refusePrivateBpffs(): void {
  if (readMounts().some((m) => m.fsType === 'bpf')) return;
  const mntns = (pid: string): string | undefined => {
    try { return readlinkSync(`/proc/${pid}/ns/mnt`); } catch { return undefined; }
  };
  const own = mntns('self');
  // PID 1's namespace when we may read it, else our parent's (what `ip netns exec` left behind).
  const reference = mntns('1') ?? mntns(String(process.ppid));
  if (own && reference && own !== reference) throw new PrivateBpffsError();
}

function defaultObjectDir(): string {
  return resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'build', 'bpf');
}

export class Datapath {
  readonly pinRoot: string;
  readonly cgroupPath: string;
  readonly objectDir: string;
  private readonly redirect: BpfObject;
  private readonly inbound: BpfObject;
  private readonly splicer: BpfObject;
  private spliceAttachment: SockmapAttachment | undefined;
  private readonly links = new Map<string, BpfLink>();
  private readonly traceLinks = new Map<string, BpfLink>();
  /** weft_counters' value on this machine's possible CPUs. */
  private readonly counterSlots = c.percpuCounters(possibleCpus());
  private closed = false;

  private constructor(opts: Required<DatapathOptions>, redirect: BpfObject, inbound: BpfObject, splicer: BpfObject) {
    this.pinRoot = opts.pinRoot;
    this.cgroupPath = opts.cgroupPath;
    this.objectDir = opts.objectDir;
    this.redirect = redirect;
    this.inbound = inbound;
    this.splicer = splicer;
  }

  /**
   * Loads the programs (maps reused from pins), then attaches each cgroup program, or, when a link
   * is already pinned for it, swaps the new program into that link atomically. Idempotent: opening
   * twice or after a restart never attaches anything twice.
   */
  static open(opts: DatapathOptions = {}): Datapath {
    refusePrivateBpffs();
    const bpffs = ensureBpffs();
    const cgroupPath = resolve(opts.cgroupPath ?? findCgroup2Root());
    if (!existsSync(cgroupPath) || !statSync(cgroupPath).isDirectory()) throw new CgroupNotFoundError(cgroupPath);
    const objectDir = resolve(opts.objectDir ?? defaultObjectDir());
    const pinRoot = resolve(opts.pinRoot ?? join(bpffs, DEFAULT_PIN_DIR));
    for (const name of [REDIRECT_OBJECT, INBOUND_OBJECT, SPLICE_OBJECT]) {
      if (!existsSync(join(objectDir, name))) throw new ObjectNotFoundError(join(objectDir, name));
    }
    mkdirSync(join(pinRoot, 'links', 'pods'), { recursive: true });
    mkdirSync(join(pinRoot, 'links', 'lookup'), { recursive: true });
    migratePins(pinRoot);

    const objects: BpfObject[] = [];
    try {
      for (const name of [REDIRECT_OBJECT, INBOUND_OBJECT, SPLICE_OBJECT]) {
        const obj = BpfObject.open(join(objectDir, name), { pinRoot });
        objects.push(obj);
        obj.load();
      }
      const dp = new Datapath({ pinRoot, cgroupPath, objectDir }, objects[0]!, objects[1]!, objects[2]!);
      try {
        dp.attachSplice();
        dp.attachCgroupPrograms();
        dp.ensureExcludedDefaults();
      } catch (err) {
        // Links attached so far stay pinned (the next open adopts them); only our fds go.
        dp.close();
        throw err;
      }
      return dp;
    } catch (err) {
      for (const o of objects) o.close();
      throw err;
    }
  }

  // ---- attachment -----------------------------------------------------------------------------

  private linkPin(program: string): string {
    return join(this.pinRoot, 'links', program);
  }

  private podLinkPin(cookie: bigint): string {
    return join(this.pinRoot, 'links', 'pods', cookie.toString());
  }

  private lookupLinkPin(cookie: bigint): string {
    return join(this.pinRoot, 'links', 'lookup', cookie.toString());
  }

  private attachCgroupPrograms(): void {
    const cgroupId = statSync(this.cgroupPath, { bigint: true }).ino;
    for (const name of CGROUP_PROGRAMS) {
      const prog = this.redirect.program(name);
      const pin = this.linkPin(name);
      const adopted = this.adopt(pin, prog, (info) => info.cgroupId === cgroupId);
      if (adopted) {
        this.links.set(name, adopted);
        continue;
      }
      const link = prog.attachCgroup(this.cgroupPath);
      link.pin(pin);
      this.links.set(name, link);
    }
  }

  /**
   * Opens the link pinned at `pin` and moves it to `prog`. A pin whose link no longer fits (another
   * cgroup, a vanished interface) is detached and removed; returns undefined then, or when nothing
   * is pinned, so the caller attaches afresh.
   */
  private adopt(pin: string, prog: BpfProgram, fits: (info: ReturnType<BpfLink['info']>) => boolean): BpfLink | undefined {
    let link: BpfLink;
    try {
      link = BpfLink.openPinned(pin);
    } catch (err) {
      if (isEnoent(err)) return undefined;
      throw err;
    }
    try {
      if (fits(link.info())) {
        if (link.info().progId !== prog.id) link.update(prog);
        return link;
      }
    } catch (err) {
      if (!(err instanceof BpfError)) throw err;
      // A defunct link (its cgroup or interface is gone) cannot be updated: replace it below.
    }
    release(link);
    return undefined;
  }

  /**
   * The splice verdict program on weft_splice_socks. The attachment lives on the pinned map, so a
   * restarted agent replaces it (sockets already in the map keep the program they were added with).
   */
  private attachSplice(): void {
    this.spliceAttachment = this.splicer.program(SPLICE_PROGRAM).attachSockmap(this.splicer.map(MAPS.spliceSk), 'sk_msg');
  }

  /**
   * The tracepoint programs that learn how filed pod sockets read. Their links cannot be moved to
   * another program, so the new one is attached before the pinned one of a previous agent goes
   * (both mark the same map meanwhile; no read goes unmarked).
   */
  private attachSpliceTraces(): void {
    let tracefs: string | undefined;
    for (const name of SPLICE_TRACE_PROGRAMS) {
      if (this.traceLinks.has(name)) continue;
      const prog = this.splicer.program(name);
      const link = prog.section?.startsWith('raw_tracepoint/') ? prog.attachRawTracepoint() : prog.attachTracepoint(tracefs ??= ensureTracefs());
      try {
        releasePinned(this.linkPin(name));
        link.pin(this.linkPin(name));
      } catch (err) {
        link.close();
        throw err;
      }
      this.traceLinks.set(name, link);
    }
  }

  /** Detaches the readers' tracepoint programs, this process's and any a previous agent pinned. */
  private detachSpliceTraces(): void {
    for (const name of SPLICE_TRACE_PROGRAMS) {
      this.traceLinks.get(name)?.close();
      this.traceLinks.delete(name);
      releasePinned(this.linkPin(name));
    }
  }

  private ensureExcludedDefaults(): void {
    const m = this.map(MAPS.excluded);
    for (const p of MESH_PORTS) m.update(c.portKey(p), c.EXCLUDED_PRESENT, 'any');
  }

  private map(name: string): BpfMap {
    if (this.closed) throw new DatapathClosedError();
    return this.redirect.map(name);
  }

  /** This process's loaded programs (ids change with every load; a pinned link follows update()). */
  programs(): { name: string; id: number }[] {
    if (this.closed) throw new DatapathClosedError();
    const splice: readonly string[] = [SPLICE_PROGRAM, ...SPLICE_TRACE_PROGRAMS];
    return [...CGROUP_PROGRAMS, INBOUND_PROGRAM, LOOKUP_PROGRAM, ...splice].map((name) =>
      ({ name, id: (name === INBOUND_PROGRAM || name === LOOKUP_PROGRAM ? this.inbound : splice.includes(name) ? this.splicer : this.redirect).program(name).id }));
  }

  /** The cgroup links this process holds (after open(): exactly one per cgroup program). */
  cgroupLinks(): LinkState[] {
    if (this.closed) throw new DatapathClosedError();
    return [...this.links].map(([program, link]) => {
      const info = link.info();
      return { program, pin: this.linkPin(program), id: info.id, progId: info.progId };
    });
  }

  // ---- enrolment ------------------------------------------------------------------------------

  /**
   * Enrols a pod: its connections to mesh destinations are captured, and every connection into it
   * from outside its netns is judged: by `mode` (and `portModes`) at its interface (tcx), then
   * steered into the agent's listener in its netns (sk_lookup; see setPodListener). Everything is
   * validated before anything changes; on error no map changes. Enrolling the same netns again
   * updates it in place.
   */
  enroll(opts: EnrollOptions): EnrolledPod {
    if (this.closed) throw new DatapathClosedError();
    const podIp = checkIp('podIp', opts.podIp);
    const agentIp = checkIp('agentIp', opts.agentIp);
    const agentPort = checkPort('agentPort', opts.agentPort ?? DEFAULT_AGENT_PORT);
    if (opts.mode !== 'STRICT' && opts.mode !== 'PERMISSIVE') throw new BadModeError(opts.mode);
    const portModes: Record<number, c.Mode> = {};
    for (const [p, m] of Object.entries(opts.portModes ?? {})) {
      const port = checkPort(`portModes[${JSON.stringify(p)}]`, Number(p));
      if (m !== 'STRICT' && m !== 'PERMISSIVE') throw new BadModeError(m, `portModes[${port}]`);
      if (m !== opts.mode) portModes[port] = m;
    }
    if (typeof opts.ifname !== 'string' || opts.ifname === '' || opts.ifname.length > 15) {
      throw new BadEnrolmentError(`ifname ${JSON.stringify(opts.ifname)} is not an interface name (1-15 characters)`);
    }
    const cookie = cookieOf(opts.netnsPath);

    // The links first: the tcx link resolves the interface inside the pod netns (and so its
    // ifindex) and fails on a wrong name before any map has changed.
    const attached: Array<{ link: BpfLink; pin: string; created: boolean }> = [];
    const undo: (() => void)[] = [];
    try {
      const tcxProg = this.inbound.program(INBOUND_PROGRAM);
      const tcxPin = this.podLinkPin(cookie);
      let tcx = this.adopt(tcxPin, tcxProg, (info) => (info.ifindex ?? 0) !== 0);
      if (tcx) attached.push({ link: tcx, pin: tcxPin, created: false });
      else {
        try {
          tcx = tcxProg.attachTcx(opts.ifname, 'ingress', { netns: opts.netnsPath });
        } catch (err) {
          throw new InterfaceError(opts.ifname, opts.netnsPath, err);
        }
        attached.push({ link: tcx, pin: tcxPin, created: true });
      }
      const lookupProg = this.inbound.program(LOOKUP_PROGRAM);
      const lookupPin = this.lookupLinkPin(cookie);
      const lookup = this.adopt(lookupPin, lookupProg, (info) => (info.netnsIno ?? 0) !== 0);
      attached.push(lookup ? { link: lookup, pin: lookupPin, created: false } : { link: lookupProg.attachNetns(opts.netnsPath), pin: lookupPin, created: true });

      const ifindex = tcx.info().ifindex ?? 0;
      for (const a of attached) if (a.created) a.link.pin(a.pin);
      const key = c.cookieKey(cookie);
      const pods = this.map(MAPS.pods);
      const inbound = this.map(MAPS.inboundPods);
      const counters = this.map(MAPS.podCounters);
      const previous = pods.lookup(key);
      const previousIn = inbound.lookup(c.ipKey(podIp));
      if (!counters.lookup(key)) {
        counters.update(key, c.zeroPodCounters(), 'noexist');
        undo.push(() => counters.delete(key));
      }
      // Never a moment looser than both the old and the new modes: the new port modes are added
      // before the pod entry that tells the programs to look them up, and the old ones removed
      // only after it (a STRICT port of a PERMISSIVE pod turning into a STRICT pod must not pass
      // through PERMISSIVE).
      const previousPorts = this.portModesOf(podIp);
      undo.push(() => this.writePortModes(podIp, previousPorts));
      this.addPortModes(podIp, portModes);
      const ports = Object.values(portModes);
      const flags = (ports.length > 0 ? c.POD_F.PORT_MODES : 0) | (ports.includes('STRICT') ? c.POD_F.STRICT_PORT : 0);
      inbound.update(c.ipKey(podIp), c.encodePodIn({ netnsCookie: cookie, mode: opts.mode, flags }), 'any');
      undo.push(() => (previousIn ? inbound.update(c.ipKey(podIp), previousIn, 'any') : inbound.delete(c.ipKey(podIp))));
      this.removePortModesBut(podIp, portModes);
      pods.update(key, c.encodePod({ podIp, agentIp, agentPort, mode: opts.mode, flags: 0, ifindex }), 'any');
      undo.push(() => (previous ? pods.update(key, previous, 'any') : pods.delete(key)));
      if (previous) {
        const old = c.decodePod(previous);
        if (old.podIp !== podIp) this.deleteInboundIfOwned(old.podIp, cookie);
      }
      return { netnsCookie: cookie, podIp, agentIp, agentPort, mode: opts.mode, flags: 0, ifindex, portModes };
    } catch (err) {
      for (const step of undo.reverse()) {
        try { step(); } catch { /* keep undoing */ }
      }
      for (const a of attached) {
        if (!a.created) continue;
        try { a.link.detach(); } catch { /* best effort */ }
        try { a.link.unpin(); } catch { /* not pinned yet */ }
      }
      throw err;
    } finally {
      for (const a of attached) a.link.close();
    }
  }

  /** The portLevelMtls entries of a pod, from weft_port_modes. */
  private portModesOf(podIp: string): Record<number, c.Mode> {
    const out: Record<number, c.Mode> = {};
    for (const [k, v] of this.map(MAPS.portModes).entries()) {
      const pp = c.decodePodPort(k);
      if (pp.ip === podIp) out[pp.port] = c.decodePortMode(v);
    }
    return out;
  }

  /** Makes the pod's entries in weft_port_modes exactly `modes` (adds first, then removes). */
  private writePortModes(podIp: string, modes: Record<number, c.Mode>): void {
    this.addPortModes(podIp, modes);
    this.removePortModesBut(podIp, modes);
  }

  private addPortModes(podIp: string, modes: Record<number, c.Mode>): void {
    const m = this.map(MAPS.portModes);
    for (const [port, mode] of Object.entries(modes)) m.update(c.encodePodPort(podIp, Number(port)), c.encodePortMode(mode), 'any');
  }

  /** Removes the pod's entries in weft_port_modes for ports `modes` does not name. */
  private removePortModesBut(podIp: string, modes: Record<number, c.Mode>): void {
    const m = this.map(MAPS.portModes);
    for (const k of [...m.keys()]) {
      const pp = c.decodePodPort(k);
      if (pp.ip === podIp && modes[pp.port] === undefined) m.delete(k);
    }
  }

  private deleteInboundIfOwned(podIp: string, cookie: bigint): void {
    const inbound = this.map(MAPS.inboundPods);
    const cur = inbound.lookup(c.ipKey(podIp));
    if (cur && c.decodePodIn(cur).netnsCookie === cookie) {
      inbound.delete(c.ipKey(podIp));
      this.writePortModes(podIp, {});
      this.map(MAPS.podListeners).delete(c.ipKey(podIp));
    }
  }

  /**
   * Reverses enroll(): the pod's map entries, counters and links go. Takes the netns path, or
   * the cookie when the netns is already gone. Returns false when the pod was not enrolled.
   */
  unenroll(pod: string | bigint): boolean {
    if (this.closed) throw new DatapathClosedError();
    const cookie = typeof pod === 'bigint' ? pod : cookieOf(pod);
    const pods = this.map(MAPS.pods);
    const cur = pods.lookup(c.cookieKey(cookie));
    let found = false;
    if (cur) {
      found = true;
      // Inbound first, so the pod is never left enforced without being known.
      this.deleteInboundIfOwned(c.decodePod(cur).podIp, cookie);
      pods.delete(c.cookieKey(cookie));
    }
    this.map(MAPS.podCounters).delete(c.cookieKey(cookie));
    for (const pin of [this.podLinkPin(cookie), this.lookupLinkPin(cookie)]) {
      if (releasePinned(pin)) found = true;
    }
    return found;
  }

  /**
   * For a restarted agent's reconcile: unenrols every pod (map entry or pinned pod link) whose
   * cookie is not in `keep`, e.g. pods deleted while the agent was down. Returns the cookies removed.
   */
  prune(keep: Iterable<bigint>): bigint[] {
    const live = new Set(keep);
    const known = new Set<bigint>(this.pods().map((p) => p.netnsCookie));
    for (const dir of ['pods', 'lookup']) {
      const podDir = join(this.pinRoot, 'links', dir);
      for (const name of existsSync(podDir) ? readdirSync(podDir) : []) {
        if (/^\d+$/.test(name)) known.add(BigInt(name));
      }
    }
    const removed: bigint[] = [];
    for (const cookie of known) {
      if (!live.has(cookie) && this.unenroll(cookie)) removed.push(cookie);
    }
    return removed;
  }

  /** Every enrolled pod, from the maps (so a restarted agent sees what its predecessor enrolled). */
  pods(): EnrolledPod[] {
    const out: EnrolledPod[] = [];
    for (const [k, v] of this.map(MAPS.pods).entries()) {
      const pod = c.decodePod(v);
      out.push({ netnsCookie: c.decodeCookieKey(k), ...pod, portModes: this.portModesOf(pod.podIp) });
    }
    return out;
  }

  // ---- mesh destinations ----------------------------------------------------------------------

  /**
   * Makes weft_dests exactly `list`: deletes what is no longer listed, then adds what is missing
   * (every value is the same, encodeDest(0): a key already there is left as it is, so a config
   * that changes a few destinations costs a few updates, not one per destination), so a
   * destination present before and after is never missing and what left makes room. Validates
   * the list before changing anything. IPv6 destinations are valid but not meshed by the kernel
   * programs yet: they are returned as `skipped` rather than failing the whole list. Past the map's
   * capacity (c.MAX_DESTS) the list's tail is left out, counted in `overflow` and not even read
   * (callers list what matters most first, and each other destination, without duplicates), rather
   * than the kernel refusing an insert halfway.
   */
  setDestinations(list: c.Destination[]): { applied: number; skipped: c.Destination[]; overflow: number } {
    const wanted = new Map<string, Buffer>();
    const skipped: c.Destination[] = [];
    let overflow = 0;
    for (let i = 0; i < list.length; i++) {
      if (wanted.size >= c.MAX_DESTS) {
        overflow = list.length - i;
        break;
      }
      const d = list[i]!;
      checkPort(`destinations[${i}].port`, d?.port ?? 0, true);
      if (typeof d.ip === 'string' && isIPv6(d.ip) && !c.isIpv4(c.unmapV4(d.ip))) {
        skipped.push(d);
        continue;
      }
      const ip = checkIp(`destinations[${i}].ip`, typeof d.ip === 'string' ? c.unmapV4(d.ip) : d.ip);
      const key = c.encodeDestKey({ ip, port: d.port ?? 0 });
      wanted.set(key.toString('hex'), key);
    }
    const m = this.map(MAPS.dests);
    const present = new Set<string>();
    for (const key of [...m.keys()]) {
      const hex = key.toString('hex');
      if (wanted.has(hex)) present.add(hex);
      else m.delete(key);
    }
    const value = c.encodeDest(0);
    for (const [hex, key] of wanted) if (!present.has(hex)) m.update(key, value, 'any');
    return { applied: wanted.size, skipped, overflow };
  }

  destinations(): Required<c.Destination>[] {
    return [...this.map(MAPS.dests).keys()].map(c.decodeDestKey);
  }

  /**
   * Destination ports outbound capture leaves alone: the mesh's own (15001/15008/15009/15020/15021) plus
   * `ports`. Outbound only: an excluded port is still judged inbound (setInboundExcludedPorts).
   */
  setExcludedPorts(ports: number[]): void {
    ports.forEach((p, i) => checkPort(`ports[${i}]`, p));
    const wanted = new Set<number>([...MESH_PORTS, ...ports]);
    const m = this.map(MAPS.excluded);
    for (const p of wanted) m.update(c.portKey(p), c.EXCLUDED_PRESENT, 'any');
    for (const key of [...m.keys()]) if (!wanted.has(c.decodePortKey(key))) m.delete(key);
  }

  excludedPorts(): number[] {
    return [...this.map(MAPS.excluded).keys()].map(c.decodePortKey).sort((a, b) => a - b);
  }

  /**
   * Pod ports that inbound enforcement leaves alone (plaintext reaches the application directly,
   * in every mode): exactly `ports`, nothing by default. An explicit operator choice, shown by
   * `weftctl bpf`.
   */
  setInboundExcludedPorts(ports: number[]): void {
    ports.forEach((p, i) => checkPort(`inboundExcludedPorts[${i}]`, p));
    const wanted = new Set(ports);
    const m = this.map(MAPS.inboundExcluded);
    for (const p of wanted) m.update(c.portKey(p), c.EXCLUDED_PRESENT, 'any');
    for (const key of [...m.keys()]) if (!wanted.has(c.decodePortKey(key))) m.delete(key);
  }

  inboundExcludedPorts(): number[] {
    return [...this.map(MAPS.inboundExcluded).keys()].map(c.decodePortKey).sort((a, b) => a - b);
  }

  /**
   * The cgroups whose connections to pods are kubelet probes (exempt from inbound enforcement):
   * exactly these cgroup v2 ids (a cgroup folder's inode number, see cgroupId()).
   */
  setProberCgroups(ids: bigint[]): void {
    if (ids.length > c.MAX_PROBERS) throw new BadEnrolmentError(`at most ${c.MAX_PROBERS} prober cgroups, got ${ids.length}`);
    const wanted = new Set(ids);
    const m = this.map(MAPS.probers);
    for (const id of wanted) m.update(c.cookieKey(id), c.EXCLUDED_PRESENT, 'any');
    for (const key of [...m.keys()]) if (!wanted.has(c.decodeCookieKey(key))) m.delete(key);
  }

  proberCgroups(): bigint[] {
    return [...this.map(MAPS.probers).keys()].map(c.decodeCookieKey);
  }

  // ---- the agent's sockets --------------------------------------------------------------------

  /**
   * Registers the agent's listening socket inside a pod's netns (`fd`, listening): weft_lookup
   * hands it every connection that reaches the pod from outside its netns. Replaces an earlier
   * one (a restarted or upgraded agent). The entry leaves the map by itself when the socket closes.
   */
  setPodListener(podIp: string, fd: number): void {
    checkIp('podIp', podIp);
    this.map(MAPS.podListeners).update(c.ipKey(podIp), c.fdValue(fd), 'any');
  }

  /** Whether a pod has an agent listener registered (the kernel steers its plaintext there). */
  hasPodListener(podIp: string): boolean {
    if (!c.isIpv4(podIp)) return false;
    return this.map(MAPS.podListeners).lookup(c.ipKey(podIp)) !== undefined;
  }

  removePodListener(podIp: string): boolean {
    if (!c.isIpv4(podIp)) return false;
    return this.map(MAPS.podListeners).delete(c.ipKey(podIp));
  }

  /**
   * Marks a socket of the agent's (an fd this process holds) so connect4 never captures it: the
   * agent delivering into a pod connects from inside the pod's netns, to the pod's own address.
   * Call before connect(). The mark lives and dies with the socket.
   */
  tagAgentSocket(fd: number): void {
    this.map(MAPS.skTag).update(c.fdKey(fd), c.encodeSkTag(c.SK_TAG.AGENT), 'any');
  }

  // ---- connection bookkeeping -----------------------------------------------------------------

  /**
   * The destination a captured connection was dialled to, for a socket the agent accepted on its
   * capture port. Reads and deletes the entry (each connection is looked up once). undefined when
   * the connection was not captured (or its entry aged out of the LRU).
   */
  originalDestination(socket: Socket): c.OriginalDestination | undefined {
    const { remoteAddress, remotePort, localAddress, localPort } = socket;
    if (!remoteAddress || !localAddress || remotePort === undefined || localPort === undefined) return undefined;
    return this.takeOriginal({ ip: c.unmapV4(remoteAddress), port: remotePort }, { ip: c.unmapV4(localAddress), port: localPort });
  }

  /** originalDestination() by tuple: `client` is the pod's source address, `agent` the listener's. */
  takeOriginal(client: c.Endpoint, agent: c.Endpoint): c.OriginalDestination | undefined {
    if (!c.isIpv4(client.ip) || !c.isIpv4(agent.ip)) return undefined;
    const m = this.map(MAPS.origByTuple);
    const key = c.encodeTuple4(client, agent);
    const v = m.lookup(key);
    if (!v) return undefined;
    m.delete(key);
    return c.decodeOrig(v);
  }

  /**
   * Before the agent connects to a local pod on behalf of a remote client: makes the pod's server
   * socket report `client` from accept()/getpeername(). `local`/`remote` are the connection as the
   * server sees it (so the agent binds its source port first, e.g. with the binding's bindSocket).
   */
  registerPeer(reg: PeerRegistration): void {
    checkIp('local.ip', reg.local?.ip); checkPort('local.port', reg.local.port);
    checkIp('remote.ip', reg.remote?.ip); checkPort('remote.port', reg.remote.port);
    checkIp('client.ip', reg.client?.ip); checkPort('client.port', reg.client.port);
    this.map(MAPS.peerOverride).update(c.encodePeerKey(reg.local, reg.remote), c.encodePeer(reg.client), 'any');
  }

  unregisterPeer(reg: Pick<PeerRegistration, 'local' | 'remote'>): boolean {
    if (!c.isIpv4(reg.local?.ip) || !c.isIpv4(reg.remote?.ip)) return false;
    return this.map(MAPS.peerOverride).delete(c.encodePeerKey(reg.local, reg.remote));
  }

  // ---- same-node splice (bpf/include/weft_splice.h) -------------------------------------------

  /**
   * Whether sockops files captured clients' sockets for splicing (weft_splice_on). Off, nothing new
   * is filed; pairs already made keep going.
   */
  setSplicing(on: boolean): void {
    const v = Buffer.alloc(4);
    v.writeUInt32LE(on ? 1 : 0);
    // The readers' tracepoints run only while something can be filed: they fire on every
    // recvmsg (and splice, sendfile, ioctl, getsockopt) on the node.
    if (on) this.attachSpliceTraces();
    else this.detachSpliceTraces();
    this.map(MAPS.spliceOn).update(Buffer.alloc(4), v, 'any');
  }

  /**
   * Announces the address a delivery socket is bound to, before it connects to a pod for a
   * splice: sockops files the pod's socket that accepts it. Undo with unexpectSplice once connected.
   */
  expectSplice(bound: c.Endpoint): void {
    this.map(MAPS.spliceExpect).update(c.encodeSpliceExpect(bound), Buffer.alloc(4), 'any');
  }

  unexpectSplice(bound: c.Endpoint): void {
    this.map(MAPS.spliceExpect).delete(c.encodeSpliceExpect(bound));
  }

  /**
   * Pairs two filed pod sockets: from now on each one's messages go straight into the other's
   * receive queue once every byte it sent by TCP has been read (weft_splice.h). Throws (and pairs
   * nothing) when either socket was not filed or already closed.
   */
  splice(client: SocketTuple, server: SocketTuple): SplicedPair {
    const m = this.map(MAPS.spliced);
    const kc = c.encodeTuple4(client.src, client.dst);
    const ks = c.encodeTuple4(server.src, server.dst);
    const vc = m.lookup(kc);
    const vs = m.lookup(ks);
    if (!vc) throw new Error(`the client's socket ${formatTuple(client)} was not filed for splicing`);
    if (!vs) throw new Error(`the server's socket ${formatTuple(server)} was not filed for splicing`);
    const ec = c.decodeSpliced(vc);
    const es = c.decodeSpliced(vs);
    if ((ec.flags | es.flags) & c.SPLICE_F.CLOSED) throw new Error('a socket of the pair already closed');
    // Neither side redirects before both are paired (the verdict checks the peer's PAIRED too), so
    // undoing a half-made pair leaves nothing queued on either socket.
    m.update(ks, c.encodeSpliced({ ...es, peer: client, flags: es.flags | c.SPLICE_F.PAIRED }), 'exist');
    try {
      m.update(kc, c.encodeSpliced({ ...ec, peer: server, flags: ec.flags | c.SPLICE_F.PAIRED }), 'exist');
    } catch (err) {
      m.delete(ks);
      throw err;
    }
    return { client, server };
  }

  /** Bytes the kernel has carried so far from each side of a spliced pair. */
  splicedBytes(pair: SplicedPair): { fromClient: bigint; fromServer: bigint } {
    const m = this.map(MAPS.spliced);
    const read = (t: SocketTuple): bigint => {
      const v = m.lookup(c.encodeTuple4(t.src, t.dst));
      return v ? c.decodeSpliced(v).bytes : 0n;
    };
    return { fromClient: read(pair.client), fromServer: read(pair.server) };
  }

  /**
   * Ends a pair once its connection is over: returns the bytes the kernel carried and forgets both
   * sockets' weft_spliced entries (their verdicts pass from now on). The sockets stay in
   * weft_splice_sk until they close: taking one out drops its psock, and with it the bytes the
   * kernel queued for it that its pod has not read yet.
   */
  unsplice(pair: SplicedPair): { fromClient: bigint; fromServer: bigint } {
    const bytes = this.splicedBytes(pair);
    const m = this.map(MAPS.spliced);
    m.delete(c.encodeTuple4(pair.client.src, pair.client.dst));
    m.delete(c.encodeTuple4(pair.server.src, pair.server.dst));
    return bytes;
  }

  /**
   * Returns a filed socket that will not be spliced (its connection leaves the node, or needs the
   * agent) to plain TCP: it leaves weft_splice_sk, which gives it back the kernel's own TCP calls.
   * Only for a socket never paired: nothing was redirected to it, so its psock holds nothing.
   */
  forgetSpliceSocket(t: SocketTuple): void {
    const k = c.encodeTuple4(t.src, t.dst);
    this.map(MAPS.spliced).delete(k);
    this.map(MAPS.spliceSk).delete(k);
    this.map(MAPS.spliceReader).delete(k);
  }

  /**
   * Forgets the entries of sockets that closed while paired by an agent that is gone (an agent
   * removes its own pairs when their connections end). Returns how many went.
   */
  sweepClosedSplices(): number {
    const m = this.map(MAPS.spliced);
    let n = 0;
    for (const [k, v] of [...m.entries()]) {
      if (c.decodeSpliced(v).flags & c.SPLICE_F.CLOSED) { m.delete(k); n++; }
    }
    // Reader marks of sockets no longer filed (a pair that ended before its sockets closed, under
    // an agent that is gone): nothing redirects to a socket without an entry, so they are moot.
    const reader = this.map(MAPS.spliceReader);
    for (const k of [...reader.keys()]) {
      if (!m.lookup(k)) { reader.delete(k); n++; }
    }
    return n;
  }

  /** Every filed pod socket on this node right now (paired or not), from the kernel. */
  splicedSockets(): SplicedSocket[] {
    const reader = this.map(MAPS.spliceReader);
    return [...this.map(MAPS.spliced).entries()].map(([k, v]) => {
      const r = reader.lookup(k);
      return { self: c.decodeTuple4(k), ...c.decodeSpliced(v), reads: r ? Number(r.readBigUInt64LE(0)) : 0 };
    });
  }

  /** Every spliced connection on this node, one row per pair, with the kernel's byte counts. */
  splicedConnections(): SplicedConnection[] {
    const all = this.splicedSockets();
    const byTuple = new Map(all.map((s) => [formatTuple(s.self), s]));
    return all.filter((s) => (s.flags & c.SPLICE_F.CLIENT) && (s.flags & c.SPLICE_F.PAIRED)).map((s) => {
      const peer = byTuple.get(formatTuple(s.peer));
      return {
        client: formatTuple(s.self), server: formatTuple(s.peer), clientNetnsCookie: s.netnsCookie,
        bytesFromClient: s.bytes, bytesFromServer: peer?.bytes ?? 0n,
        passedFromClient: s.passed, passedFromServer: peer?.passed ?? 0n,
        fallbacks: { fromClient: s.fallbacks, fromServer: peer?.fallbacks ?? 0 },
        reads: { client: s.reads, server: peer?.reads ?? 0 },
      };
    });
  }

  // ---- counters -------------------------------------------------------------------------------

  /**
   * Each connection the kernel refuses (weft_refusals ring buffer), as it happens; the ring is
   * shared by every consumer on the node (an agent and its successor each get some). Close the
   * returned ring buffer to stop. A full ring drops records; the counters still count them.
   */
  watchRefusals(onRefusal: (r: c.Refusal) => void): RingBuffer {
    return new RingBuffer(this.map(MAPS.refusals), (data) => {
      if (data.length >= c.REFUSAL_SIZE) onRefusal(c.decodeRefusal(data));
    }, { ref: false });
  }

  /**
   * Each filed pod socket that began reading with splice(2) while bytes the kernel had redirected
   * to it were still unread (weft_splice_stranded): it will never read them, so its connection
   * must be reset. Close the returned ring buffer to stop.
   */
  watchSpliceStranded(onStranded: (t: SocketTuple) => void): RingBuffer {
    return new RingBuffer(this.map(MAPS.spliceStranded), (data) => {
      if (data.length >= 12) onStranded(c.decodeTuple4(data.subarray(0, 12)));
    }, { ref: false });
  }

  /** Node-wide counters, summed over CPUs. */
  counters(): c.Counters {
    const v = this.map(MAPS.counters).lookup(Buffer.alloc(4));
    if (!v) throw new BpfError('weft_counters has no slot 0', { code: 'ENOENT', errno: 2, map: MAPS.counters });
    return c.decodePercpuCounters(v, this.counterSlots);
  }

  /** Per-pod counters by network-namespace cookie. */
  podCounters(): Map<bigint, c.PodCounters> {
    const out = new Map<bigint, c.PodCounters>();
    for (const [k, v] of this.map(MAPS.podCounters).entries()) out.set(c.decodeCookieKey(k), c.decodePodCounters(v));
    return out;
  }

  /** Where a map is pinned (for `bpftool map dump pinned <path>`). */
  mapPin(name: string): string {
    return join(this.pinRoot, name);
  }

  // ---- lifetime -------------------------------------------------------------------------------

  /** Drops this process's fds. Pins and links stay: the datapath keeps running without the agent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const link of [...this.links.values(), ...this.traceLinks.values()]) link.close();
    this.links.clear();
    this.traceLinks.clear();
    this.redirect.close();
    this.inbound.close();
    this.splicer.close();
  }

  /** Detaches every program (cgroup and pod links) and removes every pin under the pin root. */
  teardown(): void {
    if (this.closed) throw new DatapathClosedError();
    for (const dir of ['pods', 'lookup']) {
      const podDir = join(this.pinRoot, 'links', dir);
      for (const name of existsSync(podDir) ? readdirSync(podDir) : []) {
        try { this.unenroll(BigInt(name)); } catch { /* keep tearing down */ }
      }
    }
    for (const links of [this.links, this.traceLinks]) {
      for (const [name, link] of links) {
        try { link.detach(); } catch { /* already gone, or a tracing link: released with its pin */ }
        try { link.unpin(); } catch { /* not pinned */ }
        link.close();
        links.delete(name);
      }
    }
    try { this.spliceAttachment?.detach(); } catch { /* the map goes with its pin below */ }
    this.close();
    Datapath.removePins(this.pinRoot);
  }

  private static removePins(pinRoot: string): void {
    // bpffs pins are unlinked like files; folders go bottom-up.
    const walk = (dir: string): void => {
      if (!existsSync(dir)) return;
      for (const ent of readdirSync(dir, { withFileTypes: true })) {
        const p = join(dir, ent.name);
        if (ent.isDirectory()) walk(p);
        else unlinkPin(p);
      }
      rmdirSync(dir);
    };
    walk(pinRoot);
  }
}

/**
 * The explicit migrations the rule in bpf/include/weft_maps.h asks for, before the objects load:
 * counters whose struct grew are re-created (the counts restart; links of the previous programs
 * keep their old map until they are moved to the new programs), so is weft_spliced (its entries
 * belong to sockets filed under the old layout), and retired maps' pins go.
 */
function migratePins(pinRoot: string): void {
  const sizes: Record<string, number> = { [MAPS.counters]: c.COUNTERS_SIZE, [MAPS.podCounters]: c.POD_COUNTERS_SIZE, [MAPS.spliced]: c.SPLICED_SIZE };
  for (const [name, size] of Object.entries(sizes)) {
    const pin = join(pinRoot, name);
    if (!existsSync(pin)) continue;
    const m = BpfMap.openPinned(pin);
    const stale = m.valueSize !== size;
    m.close();
    if (stale) unlinkPin(pin);
  }
  for (const name of RETIRED_MAPS) unlinkPin(join(pinRoot, name));
}

function unlinkPin(path: string): void {
  try { unlinkSync(path); } catch (err) { if (!isEnoent(err)) throw err; }
}
