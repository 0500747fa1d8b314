// The local mesh's network: nodes and pods as network namespaces on one Linux machine.
//
//   wire netns (bridge br0, 10.77.0.254/24)
//     ├─ node i netns: eth0 10.77.0.i/24, IP forwarding, a /32 route per local pod,
//     │                a /24 route to every other node's pod range via that node
//     │    └─ pod netns: eth0 10.77.i.j/32, default route via 169.254.1.1 (a local address of
//     │                  the node, so the node answers the pod's ARP, as Calico does), its processes in a cgroup of its own
//
// Dual stack (LocalNetwork.create(prefix, { dualStack: true })): nodes also get fd77::i/64 on the
// wire and forward IPv6, each pod fd77:0:i:j::2/64 on a link of its own (fd77:0:i:j::1 on the
// node's end), with routes between nodes' fd77:0:i::/48 ranges. Weft meshes IPv4 only: the IPv6
// addresses are there so tests can check that IPv6 into an enrolled pod is refused.
//
// Every name carries one prefix: netns `<prefix>-<name>`, cgroups under `<cgroup2>/<prefix>/`,
// BPF pins under `<bpffs>/<prefix>/<node>`. Each node has its own cgroup subtree and pin root,
// so each node's agent attaches to its own "host" exactly as it would on a real machine.
import { mkdirSync, openSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { run, runIn } from '../../lib/sys/exec.ts';
import { deleteNetns, listNetns } from '../../lib/sys/netns.ts';
import { removeCgroupTree, removeCgroupTreeSync } from '../../lib/sys/cgroup.ts';
import { ensureBpffs, findCgroup2Root } from '../../lib/sys/mounts.ts';

/** First two octets of every local-mesh address. */
export const LOCAL_NET = '10.77';
/** The link-local gateway pods route through (a local address of every node). */
const POD_GATEWAY = '169.254.1.1';
/** First groups of every local-mesh IPv6 address (dual stack only). */
export const LOCAL_NET6 = 'fd77';
/** Where systemd runs the kubelet, under a node's cgroup root (the agent looks there). */
export const KUBELET_CGROUP = 'system.slice/kubelet.service';

export interface LocalNode {
  name: string;
  index: number;
  /** Address on the inter-node wire; the agent listens here. */
  ip: string;
  netns: string;
  netnsPath: string;
  /** The cgroup subtree standing in for this node's cgroup root; the agent attaches here. */
  cgroup: string;
  /** Where this node's agent pins BPF state (stands in for /sys/fs/bpf/weft). */
  pinRoot: string;
  /** Pod addresses on this node are 10.77.<index>.x */
  podCidr: string;
  /** The node's kubelet cgroup (`<cgroup>/system.slice/kubelet.service`). */
  kubeletCgroup: string;
  /** Dual stack: the node's IPv6 address on the wire. */
  ip6?: string;
  pods: LocalPod[];
}

export interface LocalPod {
  name: string;
  namespace: string;
  node: string;
  ip: string;
  netns: string;
  netnsPath: string;
  cgroup: string;
  /** The node-side end of the pod's veth. */
  hostIf: string;
  /** Dual stack: the pod's IPv6 address (not meshed). */
  ip6?: string;
}

export interface NetworkState {
  prefix: string;
  cgroupDir: string;
  pinDir: string;
  wireNetns: string;
  nodes: LocalNode[];
}

export interface SpawnIn extends SpawnOptions {
  /** Log file for stdout and stderr (appended); default: inherit nothing. */
  logFile?: string;
}

export class LocalNetwork {
  readonly prefix: string;
  readonly cgroupDir: string;
  readonly pinDir: string;
  readonly wireNetns: string;
  readonly nodes: LocalNode[] = [];
  readonly dualStack: boolean;
  /** First two octets of this network's addresses (LOCAL_NET unless a second cluster asks for another). */
  readonly base: string;
  private readonly children = new Set<ChildProcess>();

  private constructor(prefix: string, cgroupDir: string, pinDir: string, dualStack = false, base = LOCAL_NET) {
    this.dualStack = dualStack;
    this.base = base;
    this.prefix = prefix;
    this.cgroupDir = cgroupDir;
    this.pinDir = pinDir;
    this.wireNetns = wireNetnsName(prefix);
  }

  /** Creates the wire (bridge) namespace; nodes and pods are added afterwards. `dualStack`: IPv6 too (not meshed). */
  static create(prefix: string, opts: { dualStack?: boolean; base?: string } = {}): LocalNetwork {
    if (!/^[a-z][a-z0-9]{1,11}$/.test(prefix)) {
      throw new Error(`local mesh prefix "${prefix}" must be 2-12 lowercase letters or digits, starting with a letter`);
    }
    const cgroupDir = join(findCgroup2Root(), prefix);
    const pinDir = join(ensureBpffs(), prefix);
    if (opts.base !== undefined && !/^10\.\d{1,3}$/.test(opts.base)) throw new Error(`local network base "${opts.base}" must be like 10.77`);
    const net = new LocalNetwork(prefix, cgroupDir, pinDir, opts.dualStack ?? false, opts.base ?? LOCAL_NET);
    mkdirSync(cgroupDir, { recursive: true });
    mkdirSync(join(cgroupDir, 'system'), { recursive: true });
    run('ip', ['netns', 'add', net.wireNetns]);
    runIn(net.wireNetns, 'ip', ['link', 'set', 'lo', 'up']);
    runIn(net.wireNetns, 'ip', ['link', 'add', 'br0', 'type', 'bridge']);
    runIn(net.wireNetns, 'ip', ['addr', 'add', `${net.base}.0.254/24`, 'dev', 'br0']);
    runIn(net.wireNetns, 'ip', ['link', 'set', 'br0', 'up']);
    if (net.dualStack) runIn(net.wireNetns, 'ip', ['-6', 'addr', 'add', `${LOCAL_NET6}::fe/64`, 'dev', 'br0', 'nodad']);
    return net;
  }

  /**
   * The network of a local mesh that runs already (created by another process, e.g. `weftctl up`):
   * nodes and pods as that process recorded them. Nothing is created; processes this object
   * spawns are added to it.
   */
  static adopt(prefix: string, nodes: Array<{ name: string; ip: string }>, pods: Array<{ namespace: string; name: string; node: string; ip: string }>): LocalNetwork {
    const base = nodes[0] ? nodes[0].ip.split('.').slice(0, 2).join('.') : LOCAL_NET;
    const net = new LocalNetwork(prefix, join(findCgroup2Root(), prefix), join(ensureBpffs(), prefix), false, base);
    if (!listNetns().includes(net.wireNetns)) throw new Error(`no local mesh "${prefix}" is running (no network namespace ${net.wireNetns})`);
    for (const n of nodes) {
      const index = Number(n.ip.split('.')[3]);
      const netns = `${prefix}-${n.name}`;
      net.nodes.push({
        name: n.name, index, ip: n.ip, netns, netnsPath: `/var/run/netns/${netns}`, cgroup: join(net.cgroupDir, n.name),
        pinRoot: join(net.pinDir, n.name), podCidr: `${base}.${index}.0/24`, kubeletCgroup: join(net.cgroupDir, n.name, KUBELET_CGROUP), pods: [],
      });
    }
    for (const p of pods) {
      const node = net.node(p.node);
      const netns = `${prefix}-${p.namespace}-${p.name}`;
      node.pods.push({
        name: p.name, namespace: p.namespace, node: p.node, ip: p.ip, netns, netnsPath: `/var/run/netns/${netns}`,
        cgroup: join(node.cgroup, 'pods', `${p.namespace}_${p.name}`), hostIf: `p${p.ip.split('.')[3]}`,
      });
    }
    return net;
  }

  node(name: string): LocalNode {
    const n = this.nodes.find((x) => x.name === name);
    if (!n) throw new Error(`no local node named ${name}`);
    return n;
  }

  pod(namespace: string, name: string): LocalPod {
    for (const n of this.nodes) {
      const p = n.pods.find((x) => x.namespace === namespace && x.name === name);
      if (p) return p;
    }
    throw new Error(`no local pod ${namespace}/${name}`);
  }

  addNode(name: string): LocalNode {
    if (!/^[a-z0-9][a-z0-9-]{0,15}$/.test(name)) throw new Error(`node name "${name}" must be a short DNS label`);
    const index = this.nodes.length + 1;
    if (index > 250) throw new Error('the local mesh supports at most 250 nodes');
    const netns = `${this.prefix}-${name}`;
    const node: LocalNode = {
      name,
      index,
      ip: `${this.base}.0.${index}`,
      netns,
      netnsPath: `/var/run/netns/${netns}`,
      cgroup: join(this.cgroupDir, name),
      pinRoot: join(this.pinDir, name),
      podCidr: `${this.base}.${index}.0/24`,
      kubeletCgroup: join(this.cgroupDir, name, KUBELET_CGROUP),
      ...(this.dualStack ? { ip6: `${LOCAL_NET6}::${index}` } : {}),
      pods: [],
    };
    run('ip', ['netns', 'add', netns]);
    runIn(netns, 'ip', ['link', 'set', 'lo', 'up']);
    run('ip', ['link', 'add', 'eth0', 'netns', netns, 'type', 'veth', 'peer', 'name', `n${index}`, 'netns', this.wireNetns]);
    runIn(this.wireNetns, 'ip', ['link', 'set', `n${index}`, 'master', 'br0', 'up']);
    runIn(netns, 'ip', ['addr', 'add', `${node.ip}/24`, 'dev', 'eth0']);
    runIn(netns, 'ip', ['link', 'set', 'eth0', 'up']);
    runIn(netns, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
    // Pods' gateway: a local address of the node, so the node answers their ARP for it.
    runIn(netns, 'ip', ['addr', 'add', `${POD_GATEWAY}/32`, 'dev', 'lo']);
    mkdirSync(node.kubeletCgroup, { recursive: true });
    // The wire (where the controller listens) reaches pods through their node: waypoint pods
    // talk to the controller from their own address.
    runIn(this.wireNetns, 'ip', ['route', 'add', node.podCidr, 'via', node.ip]);
    // Routes between every pair of nodes' pod ranges.
    for (const other of this.nodes) {
      runIn(netns, 'ip', ['route', 'add', other.podCidr, 'via', other.ip]);
      runIn(other.netns, 'ip', ['route', 'add', node.podCidr, 'via', node.ip]);
    }
    if (this.dualStack) {
      runIn(netns, 'sysctl', ['-qw', 'net.ipv6.conf.all.forwarding=1']);
      runIn(netns, 'ip', ['-6', 'addr', 'add', `${node.ip6}/64`, 'dev', 'eth0', 'nodad']);
      runIn(this.wireNetns, 'ip', ['-6', 'route', 'add', `${LOCAL_NET6}:0:${index}::/48`, 'via', node.ip6!]);
      for (const other of this.nodes) {
        runIn(netns, 'ip', ['-6', 'route', 'add', `${LOCAL_NET6}:0:${other.index}::/48`, 'via', other.ip6!]);
        runIn(other.netns, 'ip', ['-6', 'route', 'add', `${LOCAL_NET6}:0:${index}::/48`, 'via', node.ip6!]);
      }
    }
    this.nodes.push(node);
    return node;
  }

  addPod(nodeName: string, namespace: string, name: string): LocalPod {
    const node = this.node(nodeName);
    // The smallest free index: a pod removed (weftctl waypoint delete) frees its address.
    const used = new Set(node.pods.map((p) => Number(p.ip.split('.')[3])));
    let j = 1;
    while (used.has(j)) j++;
    if (j > 250) throw new Error(`node ${nodeName} already has 250 pods`);
    const netns = `${this.prefix}-${namespace}-${name}`;
    const hostIf = `p${j}`;
    const pod: LocalPod = {
      name,
      namespace,
      node: nodeName,
      ip: `${this.base}.${node.index}.${j}`,
      netns,
      netnsPath: `/var/run/netns/${netns}`,
      cgroup: join(node.cgroup, 'pods', `${namespace}_${name}`),
      hostIf,
      ...(this.dualStack ? { ip6: `${LOCAL_NET6}:0:${node.index}:${j}::2` } : {}),
    };
    run('ip', ['netns', 'add', netns]);
    runIn(netns, 'ip', ['link', 'set', 'lo', 'up']);
    run('ip', ['link', 'add', 'eth0', 'netns', netns, 'type', 'veth', 'peer', 'name', hostIf, 'netns', node.netns]);
    runIn(node.netns, 'ip', ['link', 'set', hostIf, 'up']);
    // The node talks to its pods from its own address (no pass into an enrolled pod: only the
    // kubelet's cgroup is, see docs/SECURITY.md).
    runIn(node.netns, 'ip', ['route', 'add', `${pod.ip}/32`, 'dev', hostIf, 'src', node.ip]);
    runIn(netns, 'ip', ['addr', 'add', `${pod.ip}/32`, 'dev', 'eth0']);
    runIn(netns, 'ip', ['link', 'set', 'eth0', 'up']);
    runIn(netns, 'ip', ['route', 'add', POD_GATEWAY, 'dev', 'eth0', 'scope', 'link']);
    runIn(netns, 'ip', ['route', 'add', 'default', 'via', POD_GATEWAY, 'dev', 'eth0', 'onlink']);
    if (pod.ip6) {
      const link = `${LOCAL_NET6}:0:${node.index}:${j}::`;
      runIn(node.netns, 'ip', ['-6', 'addr', 'add', `${link}1/64`, 'dev', hostIf, 'nodad']);
      runIn(netns, 'ip', ['-6', 'addr', 'add', `${pod.ip6}/64`, 'dev', 'eth0', 'nodad']);
      runIn(netns, 'ip', ['-6', 'route', 'add', 'default', 'via', `${link}1`]);
    }
    mkdirSync(pod.cgroup, { recursive: true });
    node.pods.push(pod);
    return pod;
  }

  /** Kills a pod's processes and removes its veth, its namespace (the route goes with it) and its cgroup. */
  async removePod(namespace: string, name: string): Promise<void> {
    const pod = this.pod(namespace, name);
    await removeCgroupTree(pod.cgroup);
    const node = this.node(pod.node);
    // The veth first, by its node end: the kernel tears a deleted namespace down later, on a
    // workqueue, and until then the node keeps `p<j>`, the name the next pod at this address takes
    // ("RTNETLINK answers: File exists" when a test deletes a pod and adds it again at once).
    // Deleting one end of a veth removes both before the command returns.
    runIn(node.netns, 'ip', ['link', 'del', pod.hostIf], { allowFail: true });
    deleteNetns(pod.netns);
    node.pods.splice(node.pods.indexOf(pod), 1);
  }

  /**
   * Starts a process in a node's or pod's network namespace, inside a cgroup (a pod's own, or a
   * folder under `<prefix>/system` for node daemons). The process joins the cgroup before exec.
   */
  spawn(where: LocalNode | LocalPod | { netns: string; cgroup?: string }, cmd: string, args: string[], opts: SpawnIn = {}): ChildProcess {
    const { logFile, ...rest } = opts;
    const cgroup = where.cgroup ?? join(this.cgroupDir, 'system');
    // $0 = cgroup, $1 = netns, the rest is the command: join the cgroup, then enter the netns.
    // nsenter, not `ip netns exec`: the latter remounts /sys privately, which hides bpffs and the
    // cgroup tree from the process (an agent would pin into a bpffs nobody else sees).
    const script = 'echo $$ > "$0/cgroup.procs" && ns="$1" && shift && exec nsenter --net="/var/run/netns/$ns" "$@"';
    let stdio: SpawnOptions['stdio'] = ['ignore', 'pipe', 'pipe'];
    if (logFile) {
      const fd = openSync(logFile, 'a');
      stdio = ['ignore', fd, fd];
    }
    const child = spawn('sh', ['-c', script, cgroup, where.netns, cmd, ...args], { stdio, ...rest });
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    return child;
  }

  state(): NetworkState {
    return { prefix: this.prefix, cgroupDir: this.cgroupDir, pinDir: this.pinDir, wireNetns: this.wireNetns, nodes: this.nodes };
  }

  /** Kills every process, removes every namespace, cgroup and pin of this network. */
  async destroy(): Promise<void> {
    for (const c of this.children) c.kill('SIGKILL');
    await destroyLocalNetwork(this.prefix);
  }

  destroySync(): void {
    for (const c of this.children) c.kill('SIGKILL');
    destroyLocalNetworkSync(this.prefix);
  }
}

function prefixed(prefix: string): string[] {
  return listNetns().filter((n) => n.startsWith(`${prefix}-`));
}

/** Removes everything a local network with this prefix created, whether or not it is running. */
export async function destroyLocalNetwork(prefix: string): Promise<void> {
  // cgroup first: it kills every process of the mesh (agents, controller, apps) in one step.
  await removeCgroupTree(join(findCgroup2Root(), prefix));
  for (const ns of prefixed(prefix)) deleteNetns(ns);
  rmSync(join(ensureBpffs(), prefix), { recursive: true, force: true });
}

export function destroyLocalNetworkSync(prefix: string): void {
  removeCgroupTreeSync(join(findCgroup2Root(), prefix));
  for (const ns of prefixed(prefix)) deleteNetns(ns);
  rmSync(join(ensureBpffs(), prefix), { recursive: true, force: true });
}

/** The wire (bridge) namespace of the local mesh `prefix`, where the controller runs. */
export function wireNetnsName(prefix: string): string {
  return `${prefix}-wire`;
}
