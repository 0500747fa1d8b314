// `weftctl check`: can this machine run a Weft agent (and the local mesh)? Each check says what
// it found, and each one that fails or warns says in one line what to do.
//
// Everything is read from files (/proc, /sys) and the PATH, so the checks are synchronous, need
// no root, and take their inputs from PreflightSources so the pure parts are testable.
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { release } from 'node:os';
import { delimiter, join } from 'node:path';
import { readMounts, type MountEntry } from '../lib/sys/mounts.ts';

export type CheckResult =
  | { id: string; title: string; status: 'pass'; detail: string }
  | { id: string; title: string; status: 'warn' | 'fail'; detail: string; /** One line: what to do. */ remedy: string };

export interface KernelVersion {
  major: number;
  minor: number;
  patch: number;
}

/**
 * A kernel feature Weft uses, the upstream release that brought it, and how to see it directly
 * (distribution kernels backport BPF features, so the version is only the fallback).
 */
export interface KernelFeature {
  id: string;
  title: string;
  since: KernelVersion;
  /** An enumerator (bpf_attach_type, bpf_map_type, bpf_func_id) in the kernel's BTF exactly when the feature exists. */
  btfName?: string;
  /** A capability number the kernel knows exactly when the feature exists (/proc/sys/kernel/cap_last_cap). */
  capability?: number;
}

const v = (major: number, minor: number): KernelVersion => ({ major, minor, patch: 0 });

export const KERNEL_FEATURES: readonly KernelFeature[] = [
  { id: 'kernel.sockops', title: 'cgroup sockops programs', since: v(4, 13), btfName: 'BPF_CGROUP_SOCK_OPS' },
  { id: 'kernel.cgroup-sock-addr', title: 'cgroup connect4/connect6 hooks', since: v(4, 17), btfName: 'BPF_CGROUP_INET4_CONNECT' },
  { id: 'kernel.sk-storage', title: 'socket-local storage (BPF_MAP_TYPE_SK_STORAGE)', since: v(5, 2), btfName: 'BPF_MAP_TYPE_SK_STORAGE' },
  { id: 'kernel.netns-cookie', title: 'bpf_get_netns_cookie() in cgroup sock_addr programs', since: v(5, 7), btfName: 'BPF_FUNC_get_netns_cookie' },
  { id: 'kernel.getpeername-hooks', title: 'cgroup getpeername4/getpeername6 hooks', since: v(5, 8), btfName: 'BPF_CGROUP_INET4_GETPEERNAME' },
  { id: 'kernel.cap-bpf', title: 'CAP_BPF', since: v(5, 8), capability: 39 },
  { id: 'kernel.tcx', title: 'tcx links (BPF_TCX_INGRESS)', since: v(6, 6), btfName: 'BPF_TCX_INGRESS' },
  { id: 'kernel.sk-lookup', title: 'sk_lookup programs (steer plaintext into the agent)', since: v(5, 9), btfName: 'BPF_SK_LOOKUP' },
];

/** Oldest upstream kernel with every feature above. */
export const MIN_KERNEL: KernelVersion = KERNEL_FEATURES.reduce((a, f) => (compareKernel(f.since, a) > 0 ? f.since : a), v(0, 0));

/** What the kernel says about itself beyond its version. */
export interface KernelProbes {
  /** Contents of /sys/kernel/btf/vmlinux. */
  btf?: Uint8Array;
  /** /proc/sys/kernel/cap_last_cap. */
  capLastCap?: number;
}

const BTF_MAGIC = 0xeb9f;

/**
 * Whether `name` is a string of the BTF blob (see the kernel's btf.rst: a header, then type and
 * string sections; strings are NUL-terminated and the first is empty). Undefined when `btf` is
 * not BTF.
 */
export function btfHasName(btf: Uint8Array, name: string): boolean | undefined {
  if (btf.length < 24) return undefined;
  const view = new DataView(btf.buffer, btf.byteOffset, btf.byteLength);
  const le = view.getUint16(0, true) === BTF_MAGIC;
  if (!le && view.getUint16(0, false) !== BTF_MAGIC) return undefined;
  const hdrLen = view.getUint32(4, le);
  const strOff = view.getUint32(16, le);
  const strLen = view.getUint32(20, le);
  const start = hdrLen + strOff;
  if (start + strLen > btf.length) return undefined;
  const strings = Buffer.from(btf.buffer, btf.byteOffset + start, strLen);
  return strings.indexOf(`\0${name}\0`, 0, 'latin1') >= 0;
}

export const MESH_PORTS: readonly { port: number; what: string }[] = [
  { port: 15000, what: 'agent admin' },
  { port: 15001, what: 'agent captured outbound' },
  { port: 15008, what: 'HBONE' },
  { port: 15009, what: 'HBONE the east-west gateway carries' },
  { port: 15012, what: 'controller config stream and certificate service' },
  { port: 15020, what: 'metrics' },
  { port: 15021, what: 'readiness' },
];

/** Capability bit numbers (linux/capability.h). */
export const CAP = { NET_ADMIN: 12, NET_RAW: 13, SYS_PTRACE: 19, SYS_ADMIN: 21, PERFMON: 38, BPF: 39 } as const;
export type CapName = keyof typeof CAP;

/** Parses `uname -r` output such as `6.8.0-45-generic` or `5.15.153.1-microsoft-standard-WSL2`. */
export function parseKernelRelease(rel: string): KernelVersion | undefined {
  const m = /^(\d+)\.(\d+)(?:\.(\d+))?/.exec(rel.trim());
  if (!m) return undefined;
  return { major: Number(m[1]), minor: Number(m[2]), patch: Number(m[3] ?? 0) };
}

export function compareKernel(a: KernelVersion, b: KernelVersion): number {
  return a.major - b.major || a.minor - b.minor || a.patch - b.patch;
}

const fmt = (k: KernelVersion) => `${k.major}.${k.minor}`;

/** Decodes the CapEff hex mask of /proc/<pid>/status into the capabilities Weft cares about. */
export function decodeCapEff(status: string): Set<CapName> {
  const m = /^CapEff:\s*([0-9a-fA-F]+)\s*$/m.exec(status);
  const mask = m ? BigInt(`0x${m[1]}`) : 0n;
  const out = new Set<CapName>();
  for (const [name, bit] of Object.entries(CAP) as [CapName, number][]) {
    if (mask & (1n << BigInt(bit))) out.add(name);
  }
  return out;
}

/** TCP ports in LISTEN state in /proc/net/tcp or /proc/net/tcp6 text. */
export function listeningPorts(procNetTcp: string): Set<number> {
  const out = new Set<number>();
  for (const line of procNetTcp.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    // sl local_address rem_address st ...; st 0A is TCP_LISTEN.
    if (f.length < 4 || f[3] !== '0A') continue;
    const port = parseInt(f[1]?.split(':')[1] ?? '', 16);
    if (Number.isInteger(port)) out.add(port);
  }
  return out;
}

// ---- checks ----------------------------------------------------------------------------------

type Presence = { present: boolean | undefined; how: string };

function featurePresence(f: KernelFeature, k: KernelVersion | undefined, probes: KernelProbes): Presence {
  if (f.btfName && probes.btf) {
    const has = btfHasName(probes.btf, f.btfName);
    if (has !== undefined) return { present: has, how: has ? `${f.btfName} in kernel BTF` : `kernel BTF has no ${f.btfName}` };
  }
  if (f.capability !== undefined && probes.capLastCap !== undefined) {
    const has = f.capability <= probes.capLastCap;
    return { present: has, how: `cap_last_cap is ${probes.capLastCap}` };
  }
  if (!k) return { present: undefined, how: 'unknown kernel version and no BTF' };
  const has = compareKernel(k, f.since) >= 0;
  return { present: has, how: has ? `Linux ${fmt(f.since)}+` : `needs Linux ${fmt(f.since)}, running ${fmt(k)}` };
}

/** The kernel version and each BPF feature, seen in BTF where possible and by version otherwise. */
export function checkKernel(rel: string, probes: KernelProbes = {}): CheckResult[] {
  const k = parseKernelRelease(rel);
  const features: CheckResult[] = KERNEL_FEATURES.map((f) => {
    const p = featurePresence(f, k, probes);
    if (p.present === true) return { id: f.id, title: f.title, status: 'pass', detail: p.how };
    const remedy = `upgrade the kernel to Linux ${fmt(f.since)} or newer${f.btfName ? ` (or a distribution kernel whose BTF lists ${f.btfName})` : ''}`;
    return { id: f.id, title: f.title, status: p.present === false ? 'fail' : 'warn', detail: p.how, remedy };
  });
  const allPresent = features.every((r) => r.status === 'pass');
  let version: CheckResult;
  if (!k) {
    version = { id: 'kernel.version', title: 'kernel version', status: 'warn', detail: `cannot parse kernel release "${rel}"`, remedy: `make sure the kernel is Linux ${fmt(MIN_KERNEL)} or newer (\`uname -r\`)` };
  } else if (compareKernel(k, MIN_KERNEL) >= 0) {
    version = { id: 'kernel.version', title: 'kernel version', status: 'pass', detail: rel };
  } else if (allPresent) {
    version = { id: 'kernel.version', title: 'kernel version', status: 'warn', detail: `${rel} is older than ${fmt(MIN_KERNEL)}, but every feature is there (backported)`, remedy: `prefer Linux ${fmt(MIN_KERNEL)} or newer; backports are not what the tests run on` };
  } else {
    version = { id: 'kernel.version', title: 'kernel version', status: 'fail', detail: `${rel} is older than ${fmt(MIN_KERNEL)}`, remedy: `upgrade to Linux ${fmt(MIN_KERNEL)} or newer (e.g. Debian 13, Ubuntu 24.04 HWE)` };
  }
  return [version, ...features];
}

export function checkBtf(vmlinuxBtf: string): CheckResult {
  return existsSync(vmlinuxBtf)
    ? { id: 'kernel.btf', title: 'kernel BTF', status: 'pass', detail: vmlinuxBtf }
    : { id: 'kernel.btf', title: 'kernel BTF', status: 'fail', detail: `${vmlinuxBtf} is missing`, remedy: 'use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels are)' };
}

export function checkBpffs(mounts: readonly MountEntry[]): CheckResult {
  const m = mounts.find((e) => e.fsType === 'bpf');
  return m
    ? { id: 'fs.bpffs', title: 'BPF filesystem', status: 'pass', detail: `mounted at ${m.mountPoint}` }
    : { id: 'fs.bpffs', title: 'BPF filesystem', status: 'fail', detail: 'no bpffs mount', remedy: 'mount it: `mount -t bpf bpf /sys/fs/bpf` (the agent also mounts it when it has CAP_SYS_ADMIN)' };
}

export function checkCgroup2(mounts: readonly MountEntry[]): CheckResult {
  const m = mounts.find((e) => e.fsType === 'cgroup2');
  return m
    ? { id: 'fs.cgroup2', title: 'cgroup v2', status: 'pass', detail: `mounted at ${m.mountPoint}` }
    : { id: 'fs.cgroup2', title: 'cgroup v2', status: 'fail', detail: 'no cgroup2 mount', remedy: 'mount one with `mount -t cgroup2 none /sys/fs/cgroup` or boot with systemd.unified_cgroup_hierarchy=1' };
}

/** CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN (CAP_BPF is implied by CAP_SYS_ADMIN before 5.8). */
export function checkCapabilities(procStatus: string): CheckResult {
  const caps = decodeCapEff(procStatus);
  const uid = /^Uid:\s*(\d+)/m.exec(procStatus)?.[1];
  const needed: CapName[] = ['BPF', 'NET_ADMIN', 'SYS_ADMIN'];
  const missing = needed.filter((c) => !caps.has(c));
  const who = uid === '0' ? 'root' : `uid ${uid ?? '?'}`;
  if (!missing.length) {
    return { id: 'privileges', title: 'privileges', status: 'pass', detail: `${who} with CAP_${needed.join(', CAP_')}` };
  }
  return {
    id: 'privileges', title: 'privileges', status: 'fail',
    detail: `${who} lacks CAP_${missing.join(', CAP_')}`,
    remedy: 'run as root (sudo weftctl ...), or grant CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN to the process',
  };
}

/** Absolute path of an executable on `pathEnv`, or undefined. */
export function findExecutable(name: string, pathEnv: string): string | undefined {
  for (const dir of pathEnv.split(delimiter)) {
    if (!dir) continue;
    const file = join(dir, name);
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      // not here
    }
  }
  return undefined;
}

const TOOLS: readonly { name: string; why: string; install: string }[] = [
  { name: 'clang', why: 'compiles bpf/*.bpf.c', install: 'apt-get install clang llvm (or `make deps`)' },
  { name: 'bpftool', why: 'inspects loaded programs and maps', install: 'apt-get install bpftool (Ubuntu: linux-tools-common)' },
];

export function checkTools(pathEnv: string): CheckResult[] {
  return TOOLS.map((t) => {
    const at = findExecutable(t.name, pathEnv);
    return at
      ? { id: `tool.${t.name}`, title: t.name, status: 'pass', detail: at }
      : { id: `tool.${t.name}`, title: t.name, status: 'fail', detail: `not on PATH (${t.why})`, remedy: t.install };
  });
}

export function checkPorts(listening: ReadonlySet<number>, ports: readonly { port: number; what: string }[] = MESH_PORTS): CheckResult[] {
  return ports.map(({ port, what }) => listening.has(port)
    ? { id: `port.${port}`, title: `port ${port} (${what})`, status: 'fail', detail: 'already in use', remedy: `stop what listens on ${port} (\`ss -ltnp 'sport = :${port}'\` shows it) or run \`weftctl down\` if it is an old local mesh` }
    : { id: `port.${port}`, title: `port ${port} (${what})`, status: 'pass', detail: 'free' });
}

// ---- the whole preflight ---------------------------------------------------------------------

export interface PreflightSources {
  /** `uname -r`. */
  kernelRelease: string;
  /** Path of the kernel's BTF. */
  vmlinuxBtf: string;
  /** Contents of /proc/sys/kernel/cap_last_cap. */
  capLastCap: string;
  mounts: readonly MountEntry[];
  /** Text of /proc/self/status. */
  procStatus: string;
  /** Concatenated text of /proc/net/tcp and /proc/net/tcp6. */
  procNetTcp: string;
  pathEnv: string;
  ports: readonly { port: number; what: string }[];
  /** /proc/sys/net/ipv6/conf/all/disable_ipv6 ('' when IPv6 is not built in). */
  disableIpv6: string;
}

function readOr(file: string, fallback: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return fallback;
  }
}

/** What the preflight reads on this machine. */
export function hostSources(): PreflightSources {
  return {
    kernelRelease: release(),
    vmlinuxBtf: '/sys/kernel/btf/vmlinux',
    capLastCap: readOr('/proc/sys/kernel/cap_last_cap', ''),
    mounts: (() => {
      try {
        return readMounts();
      } catch {
        return [];
      }
    })(),
    procStatus: readOr('/proc/self/status', ''),
    procNetTcp: readOr('/proc/net/tcp', '') + readOr('/proc/net/tcp6', ''),
    pathEnv: process.env.PATH ?? '',
    ports: MESH_PORTS,
    disableIpv6: readOr('/proc/sys/net/ipv6/conf/all/disable_ipv6', ''),
  };
}

/**
 * IPv6 is not meshed: Weft refuses IPv6 TCP into enrolled pods in the kernel (weft_inbound and
 * weft_lookup count it as ipv6_refused) so that it cannot go around mTLS and policy. On a host
 * with IPv6 that is worth knowing before a dual-stack client is refused.
 */
export function checkIpv6(disableIpv6: string): CheckResult {
  const title = 'IPv6 (not meshed)';
  if (disableIpv6.trim() !== '0') return { id: 'net.ipv6', title, status: 'pass', detail: 'IPv6 is off on this host' };
  return {
    id: 'net.ipv6', title, status: 'warn',
    detail: 'IPv6 is on: Weft meshes IPv4 only and refuses IPv6 TCP into enrolled pods (counter ipv6_refused)',
    remedy: 'reach meshed pods over IPv4 (a dual-stack Service\'s IPv4 address); `weftctl bpf` shows the IPv6 refusals per node',
  };
}

function kernelProbes(s: PreflightSources): KernelProbes {
  const probes: KernelProbes = {};
  try {
    probes.btf = readFileSync(s.vmlinuxBtf);
  } catch {
    // no BTF: versions only (checkBtf reports it)
  }
  const cap = Number.parseInt(s.capLastCap, 10);
  if (Number.isInteger(cap)) probes.capLastCap = cap;
  return probes;
}

/** Runs every machine check; `sources` overrides what is read from the host. */
export function runPreflight(sources: Partial<PreflightSources> = {}): CheckResult[] {
  const s: PreflightSources = { ...hostSources(), ...sources };
  return [
    ...checkKernel(s.kernelRelease, kernelProbes(s)),
    checkBtf(s.vmlinuxBtf),
    checkBpffs(s.mounts),
    checkCgroup2(s.mounts),
    checkCapabilities(s.procStatus),
    ...checkTools(s.pathEnv),
    ...checkPorts(listeningPorts(s.procNetTcp), s.ports),
    checkIpv6(s.disableIpv6),
  ];
}

// ---- a running local mesh ----------------------------------------------------------------------

/** Cgroup programs every agent attaches (agent/src/datapath/datapath.ts CGROUP_PROGRAMS). */
export const AGENT_CGROUP_PROGRAMS: readonly string[] = ['weft_sockops', 'weft_getpeer4', 'weft_getpeer6', 'weft_connect4', 'weft_connect6'];
/**
 * Workload certificates live 24 h by default and agents renew them at half-life, so a healthy one
 * has more than 12 h left; under this much, renewal has been failing.
 */
export const CERT_EXPIRY_WARN_MS = 2 * 3600_000;

/** What `weftctl check` reads from a running local mesh; gathered by cli/local/health.ts. */
export interface MeshFacts {
  now: number;
  logDir: string;
  controller: { ready: boolean; detail: string };
  agents: Array<{
    node: string;
    ready: boolean;
    detail: string;
    /** Undefined when the admin endpoint did not answer. */
    certificates?: Array<{ identity: string; notAfter: string }>;
    links?: Array<{ program: string; id: number }>;
    /** The agent's inbound enforcement (admin /bpf); undefined when it did not answer. */
    inbound?: { ipv6Refused: number; kubeletCgroups: number; inboundExcludedPorts: number[] };
  }>;
  waypoints: Array<{ namespace: string; name: string; ready: boolean; reason?: string }>;
}

/** An agent's inbound enforcement: IPv6 refusals, the kubelet exemption, inbound exclusions. */
function checkInbound(node: string, i: NonNullable<MeshFacts['agents'][number]['inbound']>): CheckResult[] {
  const out: CheckResult[] = [];
  const ipv6 = { id: `mesh.ipv6.${node}`, title: `IPv6 into enrolled pods on ${node}` };
  out.push(i.ipv6Refused > 0
    ? { ...ipv6, status: 'warn', detail: `${i.ipv6Refused} IPv6 connection attempts refused: Weft meshes IPv4 only`, remedy: 'clients must reach meshed pods over IPv4; IPv6 is refused so that it cannot bypass mTLS and policy (docs/SECURITY.md)' }
    : { ...ipv6, status: 'pass', detail: 'refused in the kernel (none tried)' });
  const inbound = { id: `mesh.inbound.${node}`, title: `inbound exemptions on ${node}` };
  const open = i.inboundExcludedPorts;
  if (open.length > 0) {
    out.push({ ...inbound, status: 'warn', detail: `ports ${open.join(', ')} take plaintext on every enrolled pod, past mTLS and policy`, remedy: `drop --inbound-exclude-port from the agent on ${node} unless that is meant` });
  } else if (i.kubeletCgroups === 0) {
    out.push({ ...inbound, status: 'warn', detail: 'no kubelet cgroup: kubelet probes are judged like any plaintext client (refused by STRICT pods)', remedy: 'start the agent with --kubelet-cgroup <the kubelet\'s cgroup v2 folder>' });
  } else {
    out.push({ ...inbound, status: 'pass', detail: `only the kubelet (${i.kubeletCgroups} cgroup${i.kubeletCgroups === 1 ? '' : 's'}) is exempt; no inbound-excluded port` });
  }
  return out;
}

/** One result per component of a running mesh; each failure says what to do. */
export function checkMesh(f: MeshFacts): CheckResult[] {
  const out: CheckResult[] = [];
  const logs = (file: string) => `see ${f.logDir}/${file}`;
  out.push(f.controller.ready
    ? { id: 'mesh.controller', title: 'controller ready', status: 'pass', detail: f.controller.detail }
    : { id: 'mesh.controller', title: 'controller ready', status: 'fail', detail: f.controller.detail, remedy: `${logs('controller.log')}; an invalid object in the config folder is named there (\`weftctl down && weftctl up\` starts over)` });
  for (const a of f.agents) {
    out.push(a.ready
      ? { id: `mesh.agent.${a.node}`, title: `agent ${a.node} ready`, status: 'pass', detail: a.detail }
      : { id: `mesh.agent.${a.node}`, title: `agent ${a.node} ready`, status: 'fail', detail: a.detail, remedy: `${logs(`agent-${a.node}.log`)}: readiness waits for certificates, config and BPF; a controller that is down keeps agents unready` });
    if (a.links) {
      const have = new Set(a.links.map((l) => l.program));
      const missing = AGENT_CGROUP_PROGRAMS.filter((p) => !have.has(p));
      out.push(missing.length === 0
        ? { id: `mesh.bpf.${a.node}`, title: `BPF programs on ${a.node}`, status: 'pass', detail: `${AGENT_CGROUP_PROGRAMS.length} cgroup links attached` }
        : { id: `mesh.bpf.${a.node}`, title: `BPF programs on ${a.node}`, status: 'fail', detail: `no link for ${missing.join(', ')}: pods' connections are not captured`, remedy: `restart the agent (it re-attaches and adopts pinned links); ${logs(`agent-${a.node}.log`)}; \`weftctl bpf --node ${a.node}\` lists links` });
    }
    if (a.inbound) out.push(...checkInbound(a.node, a.inbound));
    if (a.certificates) {
      const soon = a.certificates
        .map((c) => ({ ...c, left: Date.parse(c.notAfter) - f.now }))
        .filter((c) => !(c.left > CERT_EXPIRY_WARN_MS))
        .sort((x, y) => x.left - y.left);
      const expired = soon.filter((c) => !(c.left > 0));
      if (soon.length === 0) {
        out.push({ id: `mesh.certs.${a.node}`, title: `certificates on ${a.node}`, status: 'pass', detail: `${a.certificates.length} valid for more than ${CERT_EXPIRY_WARN_MS / 3600_000} h` });
      } else {
        const first = soon[0]!;
        const when = expired.length ? `expired at ${first.notAfter}` : `expires in ${Math.round(first.left / 60_000)} min (${first.notAfter})`;
        out.push({
          id: `mesh.certs.${a.node}`, title: `certificates on ${a.node}`, status: expired.length ? 'fail' : 'warn',
          detail: `${soon.length} near expiry; ${first.identity} ${when}`,
          remedy: `renewal at half-life is failing: check that the agent reaches the controller (${logs(`agent-${a.node}.log`)}); \`weftctl certs --node ${a.node}\` lists them`,
        });
      }
    }
  }
  for (const w of f.waypoints) {
    const id = `mesh.waypoint.${w.namespace}.${w.name}`;
    out.push(w.ready
      ? { id, title: `waypoint ${w.namespace}/${w.name} ready`, status: 'pass', detail: 'ready at every agent' }
      : { id, title: `waypoint ${w.namespace}/${w.name} ready`, status: 'fail', detail: w.reason ?? 'not ready', remedy: `traffic through it fails closed; \`weftctl waypoint status -n ${w.namespace} --name ${w.name}\`, ${logs(`pod-${w.namespace}-${w.name}-0.log`)}; \`weftctl waypoint apply -n ${w.namespace} --name ${w.name}\` starts it if it is gone` });
  }
  return out;
}
