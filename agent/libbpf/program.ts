// BpfProgram: a loaded program, held by its own fd (a dup of the object's), and the ways to attach
// it: cgroup hooks and tcx through bpf_link, sockmap verdicts through bpf_prog_attach.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { BpfError, guard } from './errors.ts';
import { OwnedFd, pinFd } from './handle.ts';
import { attachTypeName, attachTypeNumber, progTypeName } from './kinds.ts';
import { BpfLink, SockmapAttachment } from './link.ts';
import { native } from './native.ts';

/** The cgroup hooks; the default of attachCgroup is the one the program's SEC() names. */
export type CgroupAttachType =
  | 'connect4' | 'connect6' | 'getpeername4' | 'getpeername6' | 'sendmsg4' | 'sendmsg6'
  | 'recvmsg4' | 'recvmsg6' | 'sockops' | 'ingress' | 'egress' | 'sock_create';

export type TcxDirection = 'ingress' | 'egress';
export type SockmapAttachKind = 'sk_msg' | 'sk_skb_verdict' | 'sk_skb_parser';

export interface TcxOptions {
  /** Path of a network namespace file (e.g. /var/run/netns/x): the interface is looked up, and
   *  the link created, inside it. Default: the agent's own namespace. */
  netns?: string;
}

/** What attachSockmap needs of a map. */
export interface MapRef {
  readonly name: string;
  readonly fd: number;
}

export interface ProgramDesc {
  name: string;
  /** enum bpf_prog_type */
  type: number;
  section?: string;
  /** enum bpf_attach_type from the SEC() name */
  expectedAttachType?: number;
  /** Path of the object file it came from. */
  object?: string;
}

const TCX = { ingress: 46, egress: 47 } as const;
const SOCKMAP_KINDS: Record<SockmapAttachKind, readonly number[]> = {
  sk_msg: [7], // BPF_SK_MSG_VERDICT
  sk_skb_verdict: [5, 38], // BPF_SK_SKB_STREAM_VERDICT, BPF_SK_SKB_VERDICT
  sk_skb_parser: [4], // BPF_SK_SKB_STREAM_PARSER
};

export class BpfProgram {
  readonly #fd: OwnedFd;
  readonly #expectedAttachType: number | undefined;
  readonly name: string;
  /** 'cgroup_sock_addr', 'sched_cls', 'sock_ops', 'sk_msg', ... */
  readonly type: string;
  /** The ELF section (SEC name), when it came from an object. */
  readonly section: string | undefined;
  readonly object: string | undefined;
  readonly id: number;

  /** @internal Takes ownership of a program fd; use BpfObject#program or openPinned. */
  constructor(fd: number, desc: ProgramDesc) {
    this.#fd = new OwnedFd(fd, 'program', desc.name);
    this.name = desc.name;
    this.type = progTypeName(desc.type);
    this.section = desc.section;
    this.object = desc.object;
    this.#expectedAttachType = desc.expectedAttachType;
    this.id = guard(`cannot read info of program ${desc.name}`, this.#ctx(), () => native().progInfo(fd)).id;
  }

  /** Opens a pinned program. */
  static openPinned(path: string): BpfProgram {
    const fd = guard(`cannot open pinned program ${path}`, { path }, () => native().objGet(path));
    const info = guard(`cannot read info of program ${path}`, { path }, () => native().progInfo(fd));
    return new BpfProgram(fd, { name: info.name, type: info.type });
  }

  get fd(): number {
    return this.#fd.get(this.#ctx());
  }

  /** The attach type libbpf derived from SEC() ('connect4', 'sockops', ...), if any. */
  get expectedAttachType(): string | undefined {
    return this.#expectedAttachType === undefined ? undefined : attachTypeName(this.#expectedAttachType);
  }

  #ctx(): { program: string; object?: string } {
    return this.object === undefined ? { program: this.name } : { program: this.name, object: this.object };
  }

  /**
   * Attaches to a cgroup v2 folder with a bpf_link (BPF_LINK_CREATE); the hook is the one the
   * program's SEC() names unless `type` says otherwise. Other links on the cgroup stay.
   */
  attachCgroup(cgroupPath: string, type?: CgroupAttachType): BpfLink {
    const attach = type === undefined ? this.#expectedAttachType : attachTypeNumber(type);
    if (attach === undefined) {
      throw new BpfError(`cannot attach ${this.name} to cgroup ${cgroupPath}: no attach type given and none known from its section`,
        { code: 'EINVAL', errno: 22, ...this.#ctx(), path: cgroupPath });
    }
    const what = `cannot attach ${this.name} (${attachTypeName(attach)}) to cgroup ${cgroupPath}`;
    const fd = guard(what, { ...this.#ctx(), path: cgroupPath }, () => {
      try {
        return native().linkCreateCgroup(this.fd, cgroupPath, attach);
      } catch (err) {
        // The kernel says EBADF when the folder is not in the cgroup v2 hierarchy.
        if ((err as { code?: string }).code === 'EBADF') Object.assign(err as object, { reason: 'not a cgroup v2 folder (see lib/sys/mounts.ts findCgroup2Root)' });
        throw err;
      }
    });
    return new BpfLink(fd, `${this.name} -> cgroup ${cgroupPath} (${attachTypeName(attach)})`);
  }

  /** Attaches a tc (SEC("tc")) program as a tcx link on an interface, optionally in another netns. */
  attachTcx(ifname: string, direction: TcxDirection, opts: TcxOptions = {}): BpfLink {
    const where = `${ifname} ${direction}${opts.netns ? ` in ${opts.netns}` : ''}`;
    const ctx = opts.netns === undefined ? this.#ctx() : { ...this.#ctx(), path: opts.netns };
    const fd = guard(`cannot attach ${this.name} as tcx on ${where}`, ctx,
      () => native().linkCreateTcx(this.fd, ifname, TCX[direction], opts.netns));
    return new BpfLink(fd, `${this.name} -> tcx ${where}`);
  }

  /**
   * Attaches an sk_lookup program to a network namespace (its file, e.g. /var/run/netns/x) with a
   * bpf_link: the link lives as long as it is held or pinned, or until the namespace goes.
   */
  attachNetns(netnsPath: string): BpfLink {
    const attach = this.#expectedAttachType ?? attachTypeNumber('sk_lookup');
    const ctx = { ...this.#ctx(), path: netnsPath };
    const fd = guard(`cannot attach ${this.name} (${attachTypeName(attach)}) to network namespace ${netnsPath}`, ctx,
      () => native().linkCreateNetns(this.fd, netnsPath, attach));
    return new BpfLink(fd, `${this.name} -> netns ${netnsPath} (${attachTypeName(attach)})`);
  }

  /**
   * Attaches a raw_tracepoint program (SEC("raw_tracepoint/<name>")) to the kernel tracepoint
   * its section names, on every CPU, with a bpf_link.
   */
  attachRawTracepoint(): BpfLink {
    const name = /^raw_(?:tp|tracepoint)\/(.+)$/.exec(this.section ?? '')?.[1];
    if (!name) throw new BpfError(`cannot attach ${this.name} as a raw tracepoint: its section "${this.section}" names none`, { code: 'EINVAL', errno: 22, ...this.#ctx() });
    const fd = guard(`cannot attach ${this.name} to raw tracepoint ${name}`, this.#ctx(), () => native().rawTracepointOpen(this.fd, name));
    return new BpfLink(fd, `${this.name} -> raw tracepoint ${name}`);
  }

  /**
   * Attaches a tracepoint program (SEC("tracepoint/<category>/<name>")) to that tracepoint with a
   * bpf_link, finding its id in tracefs (mounted at `tracefs`).
   */
  attachTracepoint(tracefs: string): BpfLink {
    const tp = /^(?:tracepoint|tp)\/([^/]+)\/([^/]+)$/.exec(this.section ?? '');
    if (!tp) throw new BpfError(`cannot attach ${this.name} as a tracepoint: its section "${this.section}" names none`, { code: 'EINVAL', errno: 22, ...this.#ctx() });
    const idFile = join(tracefs, 'events', tp[1]!, tp[2]!, 'id');
    let id: number;
    try {
      id = Number(readFileSync(idFile, 'utf8').trim());
    } catch (err) {
      throw new BpfError(`cannot attach ${this.name}: tracepoint ${tp[1]}/${tp[2]} not found (${idFile}: ${(err as Error).message})`,
        { code: 'ENOENT', errno: 2, ...this.#ctx(), path: idFile });
    }
    const fd = guard(`cannot attach ${this.name} to tracepoint ${tp[1]}/${tp[2]}`, this.#ctx(), () => native().linkCreateTracepoint(this.fd, id));
    return new BpfLink(fd, `${this.name} -> tracepoint ${tp[1]}/${tp[2]}`);
  }

  /**
   * Attaches an sk_msg or sk_skb program to a sockmap/sockhash (bpf_prog_attach on the map).
   * The attachment holds its own fds, so it can be detached after the object is closed.
   */
  attachSockmap(map: MapRef, kind: SockmapAttachKind): SockmapAttachment {
    const allowed = SOCKMAP_KINDS[kind];
    const attach = this.#expectedAttachType !== undefined && allowed.includes(this.#expectedAttachType)
      ? this.#expectedAttachType : allowed[0]!;
    const ctx = { ...this.#ctx(), map: map.name };
    return guard(`cannot attach ${this.name} to map ${map.name} as ${kind}`, ctx, () => {
      const n = native();
      n.progAttach(this.fd, map.fd, attach, 0);
      return new SockmapAttachment(n.dupFd(this.fd), n.dupFd(map.fd), attach, this.name, map.name);
    });
  }

  /** Pins the program at a bpffs path (parent folders created). */
  pin(path: string): void {
    guard(`cannot pin program ${this.name} at ${path}`, { ...this.#ctx(), path }, () => pinFd(this.fd, path));
  }

  get closed(): boolean {
    return this.#fd.closed;
  }

  /** Drops this fd; links made from the program keep it loaded. */
  close(): void {
    this.#fd.close();
  }
}
