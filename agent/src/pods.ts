// Finding a pod's network namespace from its IP address. The agent learns pods from the controller
// (name, IP, node) but enrolment needs the netns: it scans the named namespaces (/var/run/netns, as
// CNI plugins and the local mesh create them) and the namespaces of running processes
// (/proc/<pid>/ns/net, which needs the host PID namespace in Kubernetes), and asks each one which
// addresses it holds. Results are cached by namespace inode, so a rescan only enters new ones.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../../lib/sys/exec.ts';

export interface NetnsCandidate {
  path: string;
  inode: number;
}

export class PodNetnsResolver {
  private readonly procRoot: string;
  private readonly netnsDir: string;
  private addrsByInode = new Map<number, { path: string; addrs: string[] }>();

  constructor(opts: { procRoot?: string; netnsDir?: string } = {}) {
    this.procRoot = opts.procRoot ?? '/proc';
    this.netnsDir = opts.netnsDir ?? '/var/run/netns';
  }

  private candidates(): NetnsCandidate[] {
    const out: NetnsCandidate[] = [];
    const seen = new Set<number>();
    const add = (path: string) => {
      try {
        const st = statSync(path);
        if (seen.has(st.ino)) return;
        seen.add(st.ino);
        out.push({ path, inode: st.ino });
      } catch {
        /* the process or namespace went away while we looked */
      }
    };
    try {
      for (const name of readdirSync(this.netnsDir)) add(join(this.netnsDir, name));
    } catch {
      /* no named namespaces on this host */
    }
    for (const pid of readdirSync(this.procRoot)) {
      if (/^\d+$/.test(pid)) add(join(this.procRoot, pid, 'ns', 'net'));
    }
    return out;
  }

  private addressesOf(path: string): string[] {
    const out = run('nsenter', [`--net=${path}`, 'ip', '-o', 'addr', 'show'], { allowFail: true });
    const addrs: string[] = [];
    for (const line of out.split('\n')) {
      const m = /\sinet6?\s([0-9a-f.:]+)\//.exec(line);
      if (m && m[1]) addrs.push(m[1]);
    }
    return addrs;
  }

  /** Rescans and returns a map of pod IP → netns path for the wanted addresses. */
  resolve(ips: Iterable<string>): Map<string, string> {
    const wanted = new Set(ips);
    const found = new Map<string, string>();
    const live = new Set<number>();
    for (const c of this.candidates()) {
      live.add(c.inode);
      let entry = this.addrsByInode.get(c.inode);
      if (!entry) {
        entry = { path: c.path, addrs: this.addressesOf(c.path) };
        // A namespace with only loopback may be a pod whose address is not assigned yet: look
        // again next time instead of caching the empty answer.
        if (entry.addrs.some((a) => a !== '127.0.0.1' && a !== '::1')) this.addrsByInode.set(c.inode, entry);
      }
      for (const a of entry.addrs) if (wanted.has(a) && !found.has(a)) found.set(a, entry.path);
    }
    for (const inode of this.addrsByInode.keys()) if (!live.has(inode)) this.addrsByInode.delete(inode);
    return found;
  }

  /** Forget cached addresses (a namespace's addresses changed, e.g. a pod IP was assigned late). */
  invalidate(): void {
    this.addrsByInode.clear();
  }
}
