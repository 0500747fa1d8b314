// BpfLink: a kernel bpf_link (cgroup, tcx, ...) held by fd. A link outlives its fd only when it
// is pinned; pin it under the pin root so the datapath survives an agent restart, re-open it with
// openPinned, swap its program atomically with update(), and end it with detach().
import { guard } from './errors.ts';
import { OwnedFd, pinFd, removePin } from './handle.ts';
import { attachTypeName, linkTypeName } from './kinds.ts';
import { native } from './native.ts';

/** What update() and the attach calls need of a program. */
export interface ProgramRef {
  readonly name: string;
  readonly fd: number;
}

export interface LinkInfo {
  id: number;
  progId: number;
  /** 'cgroup', 'tcx', 'netns', 'xdp', 'sockmap', ... */
  type: string;
  cgroupId?: bigint;
  ifindex?: number;
  /** 'connect4', 'tcx_ingress', ... */
  attachType?: string;
  netnsIno?: number;
  mapId?: number;
}

export class BpfLink {
  readonly #fd: OwnedFd;
  /** What the link attaches, for messages: "weft_connect4 -> cgroup /sys/fs/cgroup/x". */
  readonly description: string;
  readonly id: number;
  #pinnedPath: string | undefined;

  /** @internal Takes ownership of a link fd; use the attach methods or openPinned. */
  constructor(fd: number, description: string, pinnedPath?: string) {
    this.#fd = new OwnedFd(fd, 'link', description);
    this.description = description;
    this.#pinnedPath = pinnedPath;
    this.id = this.info().id;
  }

  /** Opens a pinned link; BpfError code ENOENT when nothing is pinned there. */
  static openPinned(path: string): BpfLink {
    const fd = guard(`cannot open pinned link ${path}`, { path }, () => native().objGet(path));
    return new BpfLink(fd, `pinned link ${path}`, path);
  }

  get fd(): number {
    return this.#fd.get();
  }

  /** The path this link is pinned at by pin() or was opened from, if any. */
  get pinnedPath(): string | undefined {
    return this.#pinnedPath;
  }

  get closed(): boolean {
    return this.#fd.closed;
  }

  info(): LinkInfo {
    const raw = guard(`cannot read info of link ${this.description}`, {}, () => native().linkInfo(this.fd));
    const out: LinkInfo = { id: raw.id, progId: raw.progId, type: linkTypeName(raw.type) };
    if (raw.cgroupId !== undefined) out.cgroupId = raw.cgroupId;
    if (raw.ifindex !== undefined) out.ifindex = raw.ifindex;
    if (raw.attachType !== undefined) out.attachType = attachTypeName(raw.attachType);
    if (raw.netnsIno !== undefined) out.netnsIno = raw.netnsIno;
    if (raw.mapId !== undefined) out.mapId = raw.mapId;
    return out;
  }

  /** Pins the link at `path` (a bpffs path; missing parent folders are created). */
  pin(path: string): void {
    guard(`cannot pin link ${this.description} at ${path}`, { path }, () => pinFd(this.fd, path));
    this.#pinnedPath = path;
  }

  /** Removes the pin (the link lives on while an fd holds it). No-op when not pinned. */
  unpin(): void {
    const path = this.#pinnedPath;
    if (path === undefined) return;
    guard(`cannot unpin link ${this.description} at ${path}`, { path }, () => removePin(path));
    this.#pinnedPath = undefined;
  }

  /** Replaces the link's program atomically (bpf_link_update): no moment without a program. */
  update(prog: ProgramRef): void {
    guard(`cannot update link ${this.description} to program ${prog.name}`, { program: prog.name, path: this.#pinnedPath },
      () => native().linkUpdate(this.fd, prog.fd));
  }

  /** Detaches the link from its hook now, even if pinned or held elsewhere (bpf_link_detach). */
  detach(): void {
    guard(`cannot detach link ${this.description}`, { path: this.#pinnedPath }, () => native().linkDetach(this.fd));
  }

  /** Drops this fd. A pinned link stays attached; an unpinned one is detached by the kernel. */
  close(): void {
    this.#fd.close();
  }
}

/** A program attached to a sockmap/sockhash with bpf_prog_attach; detach() undoes it. */
export class SockmapAttachment {
  readonly #prog: OwnedFd;
  readonly #map: OwnedFd;
  readonly #attachType: number;
  readonly program: string;
  readonly map: string;
  /** 'sk_msg_verdict', 'sk_skb_stream_verdict', 'sk_skb_verdict' or 'sk_skb_stream_parser'. */
  readonly attachType: string;
  #attached = true;

  /** @internal Takes ownership of the two fds (dups of the program's and map's). */
  constructor(progFd: number, mapFd: number, attachType: number, program: string, map: string) {
    this.#prog = new OwnedFd(progFd, 'program', program);
    this.#map = new OwnedFd(mapFd, 'map', map);
    this.#attachType = attachType;
    this.program = program;
    this.map = map;
    this.attachType = attachTypeName(attachType);
  }

  get attached(): boolean {
    return this.#attached;
  }

  /** Detaches the program from the map (idempotent) and drops the fds. */
  detach(): void {
    if (!this.#attached) return;
    guard(`cannot detach ${this.program} from map ${this.map}`, { program: this.program, map: this.map },
      () => native().progDetach(this.#prog.get(), this.#map.get(), this.#attachType));
    this.#attached = false;
    this.#prog.close();
    this.#map.close();
  }
}
