// Finding a pod's network namespace from its IP address. The agent learns pods from the controller
// (name, IP, node) but enrolment needs the netns: it scans the named namespaces (/var/run/netns, as
// CNI plugins and the local mesh create them) and the namespaces of running processes
// (/proc/<pid>/ns/net, which needs the host PID namespace in Kubernetes), and asks each one which
// addresses it holds. Results are cached by namespace inode, so a rescan only enters new ones.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../../lib/sys/exec.ts';

export interface NetnsCandidate {
  path: string;
  inode: number;
}

/** What a scan of the node's namespaces found: the candidates, and the pod uids seen in each (by inode). */
interface Candidates {
  list: NetnsCandidate[];
  podUids: Map<number, Set<string>>;
}

export interface PodNetns {
  /** The namespace file, for setns(2) and the datapath. */
  path: string;
  /** The interface inside the namespace that holds the pod address. */
  ifname: string;
  /**
   * Uids of the Kubernetes pods whose processes run in the namespace, read from their cgroups
   * (podUidOfCgroup); empty or absent where no process names one (a named namespace alone, a lab).
   */
  podUids?: string[];
}

/**
 * The pod uid a process's cgroup (/proc/<pid>/cgroup) names, as the kubelet lays cgroups out:
 * `/kubepods/besteffort/pod<uid>/…` (cgroupfs driver) or
 * `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid with _>.slice/…` (systemd).
 * Istio's CNI agent finds a pod's namespace the same way (istio/istio cni/pkg/nodeagent/podcgroupns.go).
 */
export function podUidOfCgroup(cgroup: string): string | undefined {
  const m = /(?:^|[/-])pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?(?:\/|$)/im.exec(cgroup);
  return m?.[1]?.replace(/_/g, '-').toLowerCase();
}

/** An address a pod can be known by: not loopback, not link-local (fe80::/10, 169.254.0.0/16). */
export function isPodAddress(a: { ip: string; ifname: string }): boolean {
  if (a.ifname === 'lo') return false;
  const ip = a.ip.toLowerCase();
  return !(ip.startsWith('169.254.') || /^fe[89ab][0-9a-f]:/.test(ip) || ip === '::1' || ip.startsWith('127.'));
}

export class PodNetnsResolver {
  private readonly procRoot: string;
  private readonly netnsDir: string;
  private readonly namePrefix: string | undefined;
  private addrsByInode = new Map<number, { path: string; addrs: Array<{ ip: string; ifname: string }> }>();

  /**
   * `namePrefix`: only named namespaces whose name starts with it, and no process scan. Several
   * local meshes on one machine reuse the same pod addresses, so each agent must look only at its
   * own mesh's namespaces; on a Kubernetes node pod addresses are unique and everything is scanned.
   */
  constructor(opts: { procRoot?: string; netnsDir?: string; namePrefix?: string } = {}) {
    this.procRoot = opts.procRoot ?? '/proc';
    this.netnsDir = opts.netnsDir ?? '/var/run/netns';
    this.namePrefix = opts.namePrefix;
  }

  private candidates(): Candidates {
    const out: NetnsCandidate[] = [];
    const podUids = new Map<number, Set<string>>();
    const seen = new Set<number>();
    const add = (path: string): number | undefined => {
      try {
        const st = statSync(path);
        if (seen.has(st.ino)) return st.ino;
        seen.add(st.ino);
        out.push({ path, inode: st.ino });
        return st.ino;
      } catch {
        /* the process or namespace went away while we looked */
        return undefined;
      }
    };
    try {
      for (const name of readdirSync(this.netnsDir)) {
        if (this.namePrefix === undefined || name.startsWith(this.namePrefix)) add(join(this.netnsDir, name));
      }
    } catch {
      /* no named namespaces on this host */
    }
    if (this.namePrefix !== undefined) return { list: out, podUids };
    for (const pid of readdirSync(this.procRoot)) {
      if (!/^\d+$/.test(pid)) continue;
      const inode = add(join(this.procRoot, pid, 'ns', 'net'));
      if (inode === undefined) continue;
      let uid: string | undefined;
      try {
        uid = podUidOfCgroup(readFileSync(join(this.procRoot, pid, 'cgroup'), 'utf8'));
      } catch {
        /* gone */
      }
      if (uid === undefined) continue;
      const set = podUids.get(inode);
      if (set) set.add(uid);
      else podUids.set(inode, new Set([uid]));
    }
    return { list: out, podUids };
  }

  private addressesOf(path: string): Array<{ ip: string; ifname: string }> {
    const out = run('nsenter', [`--net=${path}`, 'ip', '-o', 'addr', 'show'], { allowFail: true });
    const addrs: Array<{ ip: string; ifname: string }> = [];
    for (const line of out.split('\n')) {
      // "2: eth0    inet 10.77.1.1/32 scope global eth0 ..."
      const m = /^\d+:\s+([^\s@]+)\s+inet6?\s([0-9a-f.:]+)\//.exec(line);
      if (m && m[1] && m[2]) addrs.push({ ip: m[2], ifname: m[1] });
    }
    return addrs;
  }

  /** Rescans and returns, for each wanted address found, its netns path and interface. */
  resolve(ips: Iterable<string>): Map<string, PodNetns> {
    const wanted = new Set(ips);
    const found = new Map<string, PodNetns>();
    // Nothing to look for (every pod enrolled through the CNI plugin): no walk of /proc.
    if (wanted.size === 0) return found;
    const live = new Set<number>();
    const { list, podUids } = this.candidates();
    for (const c of list) {
      live.add(c.inode);
      let entry = this.addrsByInode.get(c.inode);
      if (!entry) {
        entry = { path: c.path, addrs: this.addressesOf(c.path) };
        // A namespace with no routable address may be a pod whose address is not assigned yet: look
        // again next time instead of caching the answer. Link-local addresses do not count: the
        // kernel gives an interface fe80::/64 as soon as its link is up, often before the CNI (or
        // the lab) assigns the pod's address.
        if (entry.addrs.some(isPodAddress)) this.addrsByInode.set(c.inode, entry);
      }
      const uids = podUids.get(c.inode);
      for (const a of entry.addrs) if (wanted.has(a.ip) && !found.has(a.ip)) found.set(a.ip, { path: entry.path, ifname: a.ifname, ...(uids ? { podUids: [...uids] } : {}) });
    }
    for (const inode of this.addrsByInode.keys()) if (!live.has(inode)) this.addrsByInode.delete(inode);
    return found;
  }

  /** Forget cached addresses (a namespace's addresses changed, e.g. a pod IP was assigned late). */
  invalidate(): void {
    this.addrsByInode.clear();
  }
}

/** Why a pod the config lists on this node is not enrolled in the namespace found at its address. */
export type EnrolmentRefusal =
  /**
   * The address is another pod's (uid): the CNI plugin set it up for that pod, or the processes of
   * the namespace that holds it run in that pod's cgroup. The config still names a deleted pod there.
   */
  | 'address_reused'
  /** The CNI plugin tore this pod's network down (DEL): whatever holds its address now is another pod. */
  | 'network_removed';

export interface EnrolmentPlan<W> {
  enrol: Array<{ workload: W; ns: PodNetns }>;
  /** Not found yet: looked for again later. */
  missing: W[];
  refused: Array<{ workload: W; reason: EnrolmentRefusal; holder?: string }>;
}

/**
 * Which namespace each wanted pod (ambient, on this node, with an address) is enrolled in. An
 * address names a pod only for as long as it runs: once its network is gone (CNI DEL) the address
 * may be given to a new pod, of any namespace and ServiceAccount, while the config still names the
 * old one there. So a namespace the CNI plugin reported is taken only for the pod it reported it for
 * (by uid), and a pod whose network the plugin removed is never enrolled again by a scan for its
 * address, which would find the new pod's namespace and lend it the old pod's identity, mode and
 * policies (Istio's CNI agent, too, finds a pod's namespace by its uid, never its address). `scan`
 * is asked once, for the addresses of the pods left to find by address (none: an empty list).
 */
export function planEnrolment<W extends { uid: string; ip: string }>(
  wanted: readonly W[],
  cni: ReadonlyMap<string, PodNetns & { uid: string }>,
  scan: (ips: string[]) => ReadonlyMap<string, PodNetns>,
  removedUids: ReadonlySet<string>,
): EnrolmentPlan<W> {
  const plan: EnrolmentPlan<W> = { enrol: [], missing: [], refused: [] };
  const byAddress: W[] = [];
  for (const w of wanted) {
    const fromCni = cni.get(w.ip);
    if (fromCni && fromCni.uid !== w.uid) plan.refused.push({ workload: w, reason: 'address_reused', holder: fromCni.uid });
    else if (fromCni) plan.enrol.push({ workload: w, ns: { path: fromCni.path, ifname: fromCni.ifname } });
    else if (removedUids.has(w.uid)) plan.refused.push({ workload: w, reason: 'network_removed' });
    else byAddress.push(w);
  }
  const scanned = scan(byAddress.map((w) => w.ip));
  for (const w of byAddress) {
    const ns = scanned.get(w.ip);
    // A namespace whose processes belong to other pods (their cgroups say which) is theirs,
    // whatever address it holds: the listed pod is gone and its address given to another.
    const others = ns?.podUids?.length && !ns.podUids.includes(w.uid.toLowerCase()) ? ns.podUids : undefined;
    if (others) plan.refused.push({ workload: w, reason: 'address_reused', holder: others.join(',') });
    else if (ns) plan.enrol.push({ workload: w, ns });
    else plan.missing.push(w);
  }
  return plan;
}
