// cgroup v2 folders: create, move a process in, and tear down a subtree with everything in it.
import { existsSync, readdirSync, readFileSync, readlinkSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import { join, relative, isAbsolute } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

function procsOf(dir: string): string[] {
  try {
    return readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean);
  } catch {
    return [];
  }
}

function killAll(dir: string): void {
  try {
    writeFileSync(join(dir, 'cgroup.kill'), '1');
  } catch {
    /* kernels before 5.14 have no cgroup.kill: signal each process */
    for (const pid of procsOf(dir)) {
      try { process.kill(Number(pid), 'SIGKILL'); } catch { /* already gone */ }
    }
  }
}

/** Kills every process in a cgroup subtree and removes its folders bottom-up. */
export async function removeCgroupTree(dir: string): Promise<void> {
  if (!existsSync(dir)) return;
  for (const ent of readdirSync(dir, { withFileTypes: true })) {
    if (ent.isDirectory()) await removeCgroupTree(join(dir, ent.name));
  }
  // A killed process leaves cgroup.procs only once its parent reaps it: until then rmdir says
  // EBUSY, so keep killing and retrying for a while (5 s) before giving up.
  for (let i = 0; ; i++) {
    if (procsOf(dir).length > 0) killAll(dir);
    try {
      rmdirSync(dir);
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      if (code !== 'EBUSY' || i >= 250) throw err;
    }
    await sleep(20);
  }
}

/** The same, synchronously, for process exit hooks where the event loop no longer runs. */
export function removeCgroupTreeSync(dir: string): void {
  if (!existsSync(dir)) return;
  for (const ent of readdirSync(dir, { withFileTypes: true })) {
    if (ent.isDirectory()) removeCgroupTreeSync(join(dir, ent.name));
  }
  for (let i = 0; i < 250; i++) {
    killAll(dir);
    try {
      rmdirSync(dir);
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      if (code !== 'EBUSY') throw err;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
    }
  }
}

/** The cgroup v2 id of a folder: what bpf_get_current_cgroup_id() returns for its processes. */
export function cgroupId(dir: string): bigint {
  return statSync(dir, { bigint: true }).ino;
}

/** Where systemd runs a kubelet, relative to a (node's) cgroup v2 root. */
export const SYSTEMD_KUBELET_CGROUP = 'system.slice/kubelet.service';

/** Why a process named kubelet was not taken for the kubelet, and what to do when it is the real one. */
export function kubeletRefusalDetail(reason: 'uid' | 'mount_namespace'): string {
  return reason === 'uid'
    ? 'it does not run as root'
    : 'it runs in a mount namespace other than the host\'s (a container); a kubelet run in a container (Talos, RKE1) is declared with --kubelet-cgroup <its cgroup folder>';
}

/**
 * The kubelet's cgroups under `root` (the cgroup v2 folder the agent attaches to): systemd's
 * kubelet.service when it exists, and the cgroup of every process named `kubelet` below `root`
 * (`mount` is the cgroup v2 mount point, which /proc/<pid>/cgroup paths are relative to) that runs
 * as root in the host's mount namespace (PID 1's), as a kubelet does. A name is anyone's (an
 * executable's file name, prctl PR_SET_NAME): an unprivileged user's process, or a pod's (root in
 * a mount namespace of its own), named kubelet would otherwise have its cgroup exempt from inbound
 * enforcement. Root in the host's namespace could join the kubelet's cgroup anyway. `refused` hears of
 * each process below `root` named kubelet that was not taken, and why: `uid` (not root) or
 * `mount_namespace` (not the host's: a container's, which a containerised kubelet, Talos's or RKE1's,
 * is too: the operator declares that one with --kubelet-cgroup).
 */
export function findKubeletCgroups(root: string, mount: string, procRoot = '/proc',
  refused?: (p: { pid: number; cgroup: string; reason: 'uid' | 'mount_namespace' }) => void): string[] {
  const found = new Set<string>();
  const systemd = join(root, SYSTEMD_KUBELET_CGROUP);
  if (existsSync(systemd)) found.add(systemd);
  let pids: string[] = [];
  try { pids = readdirSync(procRoot).filter((p) => /^\d+$/.test(p)); } catch { /* no /proc */ }
  let hostMnt: string | undefined;
  try { hostMnt = readlinkSync(join(procRoot, '1', 'ns', 'mnt')); } catch { return [...found]; }
  for (const pid of pids) {
    try {
      if (readFileSync(join(procRoot, pid, 'comm'), 'utf8').trim() !== 'kubelet') continue;
      const line = readFileSync(join(procRoot, pid, 'cgroup'), 'utf8').split('\n').find((l) => l.startsWith('0::'));
      if (!line) continue;
      const dir = join(mount, line.slice(3));
      const rel = relative(root, dir);
      if (rel.startsWith('..') || isAbsolute(rel)) continue;
      const uids = /^Uid:\s+(\d+)\s+(\d+)/m.exec(readFileSync(join(procRoot, pid, 'status'), 'utf8'));
      if (!uids || uids[1] !== '0' || uids[2] !== '0') {
        refused?.({ pid: Number(pid), cgroup: dir, reason: 'uid' });
        continue;
      }
      if (readlinkSync(join(procRoot, pid, 'ns', 'mnt')) !== hostMnt) {
        refused?.({ pid: Number(pid), cgroup: dir, reason: 'mount_namespace' });
        continue;
      }
      found.add(dir);
    } catch {
      /* the process went away */
    }
  }
  return [...found];
}

/**
 * The memory limit of this process's cgroup v2: the lowest memory.max from its own cgroup (the
 * `0::` line of /proc/self/cgroup, relative to the cgroup v2 mount `mount`) up to that mount's
 * root, so a pod's limit counts as well as its container's. undefined when every level says `max`
 * (unlimited) or none can be read (no cgroup v2, no memory controller): the caller picks its own.
 */
export function ownMemoryLimit(mount: string, procSelfCgroup = '/proc/self/cgroup'): number | undefined {
  let line: string | undefined;
  try {
    line = readFileSync(procSelfCgroup, 'utf8').split('\n').find((l) => l.startsWith('0::'));
  } catch {
    return undefined;
  }
  if (line === undefined) return undefined;
  let dir = join(mount, line.slice(3));
  let lowest: number | undefined;
  for (;;) {
    const rel = relative(mount, dir);
    if (rel.startsWith('..') || isAbsolute(rel)) break;
    try {
      const v = readFileSync(join(dir, 'memory.max'), 'utf8').trim();
      const n = Number(v);
      if (v !== 'max' && Number.isSafeInteger(n) && n > 0 && (lowest === undefined || n < lowest)) lowest = n;
    } catch {
      /* no memory controller at this level (the root has no memory.max) */
    }
    if (rel === '') break;
    dir = join(dir, '..');
  }
  return lowest;
}
