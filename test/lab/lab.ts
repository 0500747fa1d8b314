// The test lab: network namespaces, veth pairs, cgroups, BPF pin folders and processes, all named
// with one per-run prefix (`wt` + 4 characters) and removed in teardown, on success, failure and
// interrupt. `make clean-lab` (test/lab/clean.ts) removes whatever a killed run left behind.
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { ensureBpffs, findCgroup2Root } from '../../lib/sys/mounts.ts';
import { run } from '../../lib/sys/exec.ts';
import { removeCgroupTree, removeCgroupTreeSync } from '../../lib/sys/cgroup.ts';
import { deleteNetns } from '../../lib/sys/netns.ts';

export { run, removeCgroupTree };

/** Every lab resource name starts with this tag; clean-lab removes anything that carries it. */
export const LAB_TAG = 'wt';
/** One lab's prefix: the tag and four letters or digits (`wt1a2b`), as a regular-expression source. */
export const LAB_PREFIX = `${LAB_TAG}[0-9a-z]{4}`;

/**
 * Whether a netns, cgroup or BPF pin folder name belongs to a lab (any, or the one `prefix` names):
 * the lab's own objects (`<prefix>-...`, `<prefix>`), and those of the clusters and the exchange a
 * multi-cluster lab adds under its prefix (`<prefix>c1-wire`, `<prefix>x-xchg`: cli/local/multicluster.ts).
 */
export function isLabObject(name: string, prefix?: string): boolean {
  return new RegExp(`^${prefix ?? LAB_PREFIX}(c[1-9]|x)?(-|$)`).test(name);
}

export interface Netns {
  /** Name as `ip netns` knows it. */
  name: string;
  /** Path of the netns file, for setns(2) and the binding's netns helpers. */
  path: string;
  /** Runs a command inside the namespace and returns its stdout. */
  exec(cmd: string, ...args: string[]): string;
}

export interface VethEnd {
  ns: Netns;
  /** Interface name (<= 15 characters); the lab prefixes it with its id. */
  name: string;
  /** Address with prefix length, e.g. 10.0.0.1/24. */
  addr?: string;
}

export interface SpawnInLab extends SpawnOptions {
  netns?: Netns;
  cgroup?: string;
}

const liveLabs = new Set<Lab>();
let hooksInstalled = false;
function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', () => { for (const lab of liveLabs) lab.cleanupSync(); });
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      for (const lab of liveLabs) lab.cleanupSync();
      process.kill(process.pid, sig);
    });
  }
}

export class Lab {
  readonly id: string;
  readonly cgroupRoot: string;
  readonly bpffs: string;
  /** This run's cgroup folder: every lab cgroup lives under it. */
  readonly cgroupDir: string;
  /** This run's BPF pin folder (stands in for /sys/fs/bpf/weft). */
  readonly pinRoot: string;
  private readonly namespaces: Netns[] = [];
  private readonly children = new Set<ChildProcess>();
  private cleaned = false;

  constructor() {
    this.id = LAB_TAG + randomBytes(3).toString('hex').slice(0, 4);
    this.cgroupRoot = findCgroup2Root();
    this.bpffs = ensureBpffs();
    this.cgroupDir = join(this.cgroupRoot, this.id);
    this.pinRoot = join(this.bpffs, this.id);
    mkdirSync(this.cgroupDir);
    liveLabs.add(this);
    installExitHooks();
  }

  netns(name: string): Netns {
    const full = `${this.id}-${name}`;
    run('ip', ['netns', 'add', full]);
    const ns: Netns = {
      name: full,
      path: `/var/run/netns/${full}`,
      exec: (cmd, ...args) => run('ip', ['netns', 'exec', full, cmd, ...args]),
    };
    this.namespaces.push(ns);
    ns.exec('ip', 'link', 'set', 'lo', 'up');
    return ns;
  }

  /** Interface name carrying this lab's id, within the kernel's 15-character limit. */
  ifname(short: string): string {
    const name = `${this.id}${short}`;
    if (name.length > 15) throw new Error(`interface name ${name} is longer than 15 characters`);
    return name;
  }

  /** A veth pair between two namespaces, both ends up, with optional addresses. */
  veth(a: VethEnd, b: VethEnd): { a: string; b: string } {
    const an = this.ifname(a.name);
    const bn = this.ifname(b.name);
    run('ip', ['link', 'add', an, 'netns', a.ns.name, 'type', 'veth', 'peer', 'name', bn, 'netns', b.ns.name]);
    for (const [end, name] of [[a, an], [b, bn]] as const) {
      if (end.addr) end.ns.exec('ip', 'addr', 'add', end.addr, 'dev', name);
      end.ns.exec('ip', 'link', 'set', name, 'up');
    }
    return { a: an, b: bn };
  }

  /** A cgroup under this run's folder; returns its path. */
  cgroup(name: string): string {
    const dir = join(this.cgroupDir, name);
    mkdirSync(dir, { recursive: true });
    return dir;
  }

  /**
   * Starts a process, optionally inside a netns and a cgroup. The process joins the cgroup before
   * it execs, so even its first connect() is seen by programs attached there.
   */
  spawn(cmd: string, args: string[], opts: SpawnInLab = {}): ChildProcess {
    const { netns, cgroup, ...rest } = opts;
    let argv = [cmd, ...args];
    // nsenter rather than `ip netns exec`, which remounts /sys and so hides bpffs and cgroups.
    if (netns) argv = ['nsenter', `--net=${netns.path}`, ...argv];
    if (cgroup) argv = ['sh', '-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup, ...argv];
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], ...rest });
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    return child;
  }

  async cleanup(): Promise<void> {
    if (this.cleaned) return;
    for (const child of this.children) child.kill('SIGKILL');
    await removeCgroupTree(this.cgroupDir);
    this.cleanupSync();
  }

  /** Synchronous teardown, also used from process exit hooks. Safe to call more than once. */
  cleanupSync(): void {
    if (this.cleaned) return;
    this.cleaned = true;
    liveLabs.delete(this);
    for (const child of this.children) child.kill('SIGKILL');
    for (const ns of this.namespaces) deleteNetns(ns.name);
    removeCgroupTreeSync(this.cgroupDir);
    rmSync(this.pinRoot, { recursive: true, force: true });
  }
}
