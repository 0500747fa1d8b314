// Where the kernel's cgroup v2 hierarchy and the BPF filesystem are mounted on this host.
// Found at run time from /proc/self/mountinfo: distributions mount them in different places
// (/sys/fs/cgroup, /sys/fs/cgroup/unified, ...), and bpffs is not always mounted at all.
import { readFileSync, mkdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

export interface MountEntry {
  mountPoint: string;
  fsType: string;
  source: string;
}

/** Parses /proc/self/mountinfo (see proc(5)); octal escapes in paths are decoded. */
export function readMounts(mountinfo = '/proc/self/mountinfo'): MountEntry[] {
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
  const out: MountEntry[] = [];
  for (const line of readFileSync(mountinfo, 'utf8').split('\n')) {
    if (!line) continue;
    const [pre, post] = line.split(' - ');
    if (!pre || !post) continue;
    const fields = pre.split(' ');
    const [fsType, source] = post.split(' ');
    out.push({ mountPoint: unescape(fields[4] ?? ''), fsType: fsType ?? '', source: source ?? '' });
  }
  return out;
}

export class MountError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'MountError';
    this.code = code;
  }
}

/** The cgroup v2 mount point, e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified. */
export function findCgroup2Root(mounts: MountEntry[] = readMounts()): string {
  const m = mounts.find((e) => e.fsType === 'cgroup2');
  if (!m) {
    throw new MountError('WEFT_NO_CGROUP2', 'no cgroup v2 hierarchy is mounted; mount one with `mount -t cgroup2 none /sys/fs/cgroup` or boot with systemd.unified_cgroup_hierarchy=1');
  }
  return m.mountPoint;
}

/** The BPF filesystem mount point; mounts bpffs at /sys/fs/bpf when none is mounted. */
export function ensureBpffs(mounts: MountEntry[] = readMounts(), fallback = '/sys/fs/bpf'): string {
  return ensureMount('bpf', mounts, fallback, 'WEFT_NO_BPFFS', 'bpffs', 'the agent needs CAP_SYS_ADMIN or a host mount of /sys/fs/bpf');
}

/**
 * The tracing filesystem's mount point (tracepoint ids: events/<category>/<name>/id); mounts
 * tracefs at /sys/kernel/tracing when none is mounted.
 */
export function ensureTracefs(mounts: MountEntry[] = readMounts(), fallback = '/sys/kernel/tracing'): string {
  return ensureMount('tracefs', mounts, fallback, 'WEFT_NO_TRACEFS', 'tracefs', 'the agent needs CAP_SYS_ADMIN or a host mount of /sys/kernel/tracing');
}

function ensureMount(fsType: string, mounts: MountEntry[], fallback: string, code: string, what: string, hint: string): string {
  const m = mounts.find((e) => e.fsType === fsType);
  if (m) return m.mountPoint;
  mkdirSync(fallback, { recursive: true });
  try {
    execFileSync('mount', ['-t', fsType, fsType, fallback], { stdio: 'pipe' });
  } catch (err) {
    throw new MountError(code, `${what} is not mounted and mounting it at ${fallback} failed (${(err as Error).message.trim()}); ${hint}`);
  }
  return fallback;
}
