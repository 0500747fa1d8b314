// weftctl workloads | services | policies | waypoints | routes | certs | bpf | config-dump: what the
// mesh is doing. On the local mesh it is read from each node agent's and waypoint's admin endpoint
// (localhost:15000 inside the node or pod); on a cluster (kubeconfig) workloads, services, policies,
// waypoints and routes are the per-agent and per-waypoint views the controller computes from the
// API's objects (cli/mesh-view.ts), with the same rows. certs, bpf and config-dump read what each
// agent (or waypoint) holds from it (cli/components.ts: the admin port inside the local mesh, its
// read-only /debug/ paths through the API server's pod proxy on a cluster); `config-dump
// --computed` gives the controller's computed views instead. Tables by default, `-o wide|json|yaml`
// and `--no-headers`.
import { Command } from 'commander';
import { policyAction, type AgentConfig, type WaypointConfig } from '../../lib/model/mesh.ts';
import { components } from '../components.ts';
import { EXIT_FAILED, exitUsageOnCommanderError, processIo, type CommandIo } from './install.ts';
import { inNamespace, namespaceOptions, outputOptions, renderData, renderList, table, type NamespaceFlags, type OutputFlags, type OutputFormat } from './output.ts';
import { commandTarget, targetOptions, type Target, type TargetFlags } from './target.ts';
import { clusterViews, type AgentDump, type WaypointDump as ComputedWaypointDump } from '../mesh-view.ts';

interface Flags extends OutputFlags, NamespaceFlags, TargetFlags {
  node?: string;
  waypoints?: boolean;
  computed?: boolean;
}

/** Each node agent's answer to a read-only admin path (`--node`: that one's), by node name. */
async function perNode<T>(t: Target, path: string, only?: string): Promise<Array<{ node: string; data: T }>> {
  const agents = (await components(t)).filter((c) => c.role === 'agent').sort((a, b) => a.name.localeCompare(b.name));
  const picked = only ? agents.filter((c) => c.node === only) : agents;
  if (only && picked.length === 0) throw new Error(`no node named ${only} runs an agent (nodes: ${agents.map((c) => c.name).join(', ') || 'none'})`);
  return Promise.all(picked.map(async (c) => ({ node: c.name, data: await c.admin<T>(path) })));
}

/** The mesh a command inspects, on either transport. */
export interface Mesh {
  target: Target;
  /** Each node agent's config (local: what it holds; cluster: what the controller sends it). */
  agents(onlyNode?: string): Promise<AgentDump[]>;
  /** Each waypoint's config; `waypoint` is its Waypoint (`namespace/name`), `pod` the replica read. */
  waypoints(): Promise<Array<{ pod: string; waypoint: string; config: WaypointConfig }>>;
}

/** `warn` takes a line on what the views are computed with when it is not the install's (installCompileOptions). */
export function meshOf(target: Target, warn: (line: string) => void): Mesh {
  let views: Promise<Awaited<ReturnType<typeof clusterViews>>> | undefined;
  const cluster = () => {
    const t = target as Extract<Target, { kind: 'cluster' }>;
    return (views ??= clusterViews(t.kube, t.namespace, warn));
  };
  return {
    target,
    async agents(only) {
      if (target.kind === 'local') return (await perNode<ConfigDump>(target, '/config_dump', only)).map((d) => ({ node: d.node, config: d.data.config }));
      const all = (await cluster()).agents;
      const out = only ? all.filter((a) => a.node === only) : all;
      if (only && out.length === 0) throw new Error(`no node named ${only} runs mesh workloads (nodes: ${all.map((a) => a.node).join(', ')})`);
      return out;
    },
    async waypoints() {
      if (target.kind === 'local') return (await perWaypoint(target)).map((d) => ({ pod: d.pod, waypoint: d.waypoint, config: d.data.config }));
      return ((await cluster()).waypoints satisfies ComputedWaypointDump[]).map((d) => ({ ...d, waypoint: d.pod }));
    },
  };
}

/**
 * A command that inspects the mesh on either transport: `run` does the work; a missing mesh or
 * kubeconfig is one line and exit 1, as is any error while reading it.
 */
export function inspectCommand<F extends TargetFlags>(name: string, label: string, io: CommandIo, configure: (cmd: Command) => Command, run: (m: Mesh, f: F) => Promise<void>): Command {
  const cmd = configure(targetOptions(exitUsageOnCommanderError(new Command(name), io)));
  return cmd.action(async () => {
    const f = cmd.opts<F>();
    const target = await commandTarget(cmd, f, io);
    if (!target) return;
    try {
      await run(meshOf(target, (line) => io.err(`weftctl ${label}: ${line}\n`)), f);
    } catch (err) {
      io.err(`weftctl ${label}: ${(err as Error).message}\n`);
      io.setExitCode(EXIT_FAILED);
    }
  });
}

function command(name: string, description: string, io: CommandIo, run: (m: Mesh, f: Flags) => Promise<void>, opts: { namespaced?: boolean; formats?: OutputFormat[] } = {}): Command {
  return inspectCommand<Flags>(name, name, io, (cmd) => {
    cmd.description(description).option('--node <name>', 'only this node');
    if (opts.namespaced !== false) namespaceOptions(cmd);
    return outputOptions(cmd, opts.formats);
  }, run);
}

/** Objects seen by several agents, once each (by namespace/name), filtered by -n. */
function unique<T extends { namespace: string; name: string }>(lists: T[][], f: NamespaceFlags): T[] {
  const seen = new Map<string, T>();
  for (const l of lists) for (const x of l) if (inNamespace(f, x.namespace)) seen.set(`${x.namespace}/${x.name}`, x);
  return [...seen.values()].sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`));
}

interface ConfigDump { node: string; version: string; config: AgentConfig; enrolled: Record<string, string> }
interface CertsDump { certificates: Array<{ identity: string; serial: string; issuer: string; notAfter: string; state: string }> }
interface BpfDump {
  pinRoot: string;
  programs: Array<{ name: string; id: number }>;
  links: Array<{ program: string; pin: string; id: number; progId: number }>;
  pods: Array<{ netnsCookie: string; podIp: string; mode: string; agentIp: string; agentPort: number; portModes?: Record<string, string> }>;
  destinations: Array<{ ip: string; port: number }>;
  excludedPorts: number[];
  inboundExcludedPorts?: number[];
  kubeletCgroups?: string[];
  refusals?: Record<string, number>;
  counters: Record<string, number>;
  podCounters: Record<string, Record<string, number>>;
  spliced?: Array<{ client: string; server: string; clientPod: string; bytesFromClient: string; bytesFromServer: string; passedFromClient?: string; passedFromServer?: string; fallbacks?: { fromClient: number; fromServer: number }; reads?: { client: string[]; server: string[] } }>;
  pins: Record<string, string>;
}

interface WaypointDump { version: number; config: WaypointConfig; identity?: unknown }

/** Each waypoint pod's admin /config_dump. */
async function perWaypoint(t: Target): Promise<Array<{ pod: string; waypoint: string; data: WaypointDump }>> {
  const wps = (await components(t)).filter((c) => c.role === 'waypoint');
  return Promise.all(wps.map(async (c) => ({ pod: c.name, waypoint: c.reporter.replace(/^waypoint /, ''), data: await c.admin<WaypointDump>('/config_dump') })));
}

export function inspectCommands(io: CommandIo = processIo): Command[] {
  type W = AgentConfig['waypoints'][number];
  type Wl = AgentConfig['workloads'][number];
  type Svc = AgentConfig['services'][number];
  type Pol = AgentConfig['policies'][number];
  return [
    command('waypoints', 'waypoints, their addresses, identities and readiness as the agents see them', io, async (m, f) => {
      const wps = unique((await m.agents(f.node)).map((d) => d.config.waypoints), f);
      renderList<W>(io, f, wps, [
        { header: 'NAMESPACE', value: (w) => w.namespace },
        { header: 'NAME', value: (w) => w.name },
        { header: 'ADDRESS', value: (w) => (w.address ? `${w.address}:${w.port}` : '-') },
        { header: 'READY', value: (w) => (w.ready ? 'True' : `False (${w.reason ?? 'unknown'})`) },
        { header: 'IDENTITY', value: (w) => w.spiffeId },
      ]);
    }),
    command('routes', 'HTTP and gRPC routes in force at each waypoint, with their backends and weights', io, async (m, f) => {
      const dumps = await m.waypoints();
      // The Waypoint enforcing it (each replica holds the same routes: listed once).
      const seen = new Set<string>();
      const routes = dumps.flatMap((d) => d.config.routes.filter((r) => inNamespace(f, r.namespace)).map((r) => ({ waypoint: d.waypoint, ...r })))
        .filter((r) => !seen.has(`${r.waypoint}|${r.namespace}/${r.name}`) && !!seen.add(`${r.waypoint}|${r.namespace}/${r.name}`))
        .sort((a, b) => a.waypoint.localeCompare(b.waypoint) || a.namespace.localeCompare(b.namespace) || a.name.localeCompare(b.name));
      renderList(io, f, routes, [
        { header: 'NAMESPACE', value: (r) => r.namespace },
        { header: 'NAME', value: (r) => r.name },
        { header: 'KIND', value: (r) => r.kind },
        { header: 'SERVICE', value: (r) => r.service },
        { header: 'WAYPOINT', value: (r) => r.waypoint, wide: true },
        { header: 'RULES', value: (r) => String(r.rules.length) },
        { header: 'BACKENDS', value: (r) => r.rules.map((rule) => rule.backends.map((b) => `${b.service.split('/').pop()}:${b.weight}`).join('+')).join(' | ') },
      ]);
    }),
    command('workloads', 'pods the agents know, their identities, mTLS mode and enrolment', io, async (m, f) => {
      const dumps = await m.agents(f.node);
      // Ordered by node, namespace and name, whichever order the agent (or the compile) listed them in.
      const wls = dumps.flatMap((d) => d.config.workloads.filter((w) => w.node === d.node && inNamespace(f, w.namespace)))
        .sort((a, b) => a.node.localeCompare(b.node) || a.namespace.localeCompare(b.namespace) || a.name.localeCompare(b.name));
      renderList<Wl>(io, f, wls, [
        { header: 'NAMESPACE', value: (w) => w.namespace },
        { header: 'NAME', value: (w) => w.name },
        { header: 'CLUSTER', value: (w) => w.cluster },
        { header: 'NODE', value: (w) => w.node },
        { header: 'IP', value: (w) => w.ip },
        { header: 'MODE', value: (w) => w.mode },
        { header: 'ENROLLED', value: (w) => (w.enrolled ? 'yes' : 'no') },
        { header: 'SERVICES', value: (w) => w.services.join(',') || '-', wide: true },
        { header: 'IDENTITY', value: (w) => w.spiffeId },
      ]);
    }),
    command('services', 'services, their addresses, endpoints and waypoints', io, async (m, f) => {
      const svcs = unique((await m.agents(f.node)).map((d) => d.config.services), f);
      renderList<Svc>(io, f, svcs, [
        { header: 'NAMESPACE', value: (s) => s.namespace },
        { header: 'NAME', value: (s) => s.name },
        { header: 'VIPS', value: (s) => s.vips.join(',') },
        { header: 'PORTS', value: (s) => s.ports.map((p) => `${p.port}/${p.appProtocol}`).join(',') },
        // Multi-cluster: endpoints of other clusters carry their cluster, and `via <gateway>` on another network.
        { header: 'CLUSTERS', value: (s) => [...new Set(s.endpoints.map((e) => e.cluster ?? e.workload?.cluster ?? '-'))].join(',') || '-' },
        { header: 'ENDPOINTS', value: (s) => s.endpoints.map((e) => `${e.ip}${e.enrolled ? '' : '(plain)'}${e.cluster ? `@${e.cluster}` : ''}`).join(',') },
        { header: 'WAYPOINT', value: (s) => (s.waypoint ? `${s.waypoint.namespace}/${s.waypoint.name}` : '-') },
        { header: 'HOSTNAME', value: (s) => s.hostname, wide: true },
      ]);
    }),
    command('policies', 'authorization and peer authentication policies in force on the nodes', io, async (m, f) => {
      const pols = unique((await m.agents(f.node)).map((d) => d.config.policies), f);
      renderList<Pol>(io, f, pols, [
        { header: 'NAMESPACE', value: (p) => p.namespace },
        { header: 'NAME', value: (p) => p.name },
        // A dry-run policy (istio.io/dry-run) is judged in shadow, never enforced.
        { header: 'ACTION', value: (p) => (p.dryRun ? `${policyAction(p)}(dry-run)` : p.action) },
        { header: 'SCOPE', value: (p) => p.scope },
        { header: 'LAYER', value: (p) => p.layer },
        { header: 'RULES', value: (p) => String(p.rules.length) },
        { header: 'SELECTS', value: (p) => (p.targetServices?.join(',') ?? (p.selector ? Object.entries(p.selector).map(([k, v]) => `${k}=${v}`).join(',') : '-')), wide: true },
      ]);
    }),
    command('certs', 'workload certificates held by each node agent', io, async (m, f) => {
      const dumps = await perNode<CertsDump>(m.target, '/certs', f.node);
      const rows = dumps.flatMap((d) => d.data.certificates.filter((c) => inNamespace(f, namespaceOfSpiffe(c.identity))).map((c) => ({ node: d.node, ...c })));
      // The issuer's subject tells the roots apart during a root rotation.
      renderList(io, f, rows, [
        { header: 'NODE', value: (c) => c.node },
        { header: 'IDENTITY', value: (c) => c.identity },
        { header: 'SERIAL', value: (c) => (f.output === 'wide' ? c.serial : c.serial.slice(0, 16)) },
        { header: 'EXPIRES', value: (c) => c.notAfter },
        { header: 'STATE', value: (c) => c.state },
        { header: 'ISSUER', value: (c) => c.issuer },
      ]);
    }),
    command('bpf', 'eBPF programs, links, enrolled pods, maps and counters on each node, with the bpftool command for each', io, async (m, f) => {
      const dumps = await perNode<BpfDump>(m.target, '/bpf', f.node);
      if (renderData(io, f, dumps)) return;
      const h = f.headers;
      for (const { node, data } of dumps) {
        io.out(`node ${node}  (pins under ${data.pinRoot})\n\n`);
        io.out(table(['PROGRAM', 'ID', 'LINK', 'BPFTOOL'], data.programs.map((p) => {
          const link = data.links.find((l) => l.program === p.name);
          return [p.name, String(p.id), link ? String(link.id) : '-', `bpftool prog show id ${p.id}`];
        }), h));
        io.out('\n');
        io.out(table(['ENROLLED POD', 'MODE', 'PORT MODES', 'NETNS COOKIE', 'REDIRECTED', 'STEERED', 'STRICT DENIED'], data.pods.map((p) => {
          const c = data.podCounters[p.netnsCookie] ?? {};
          const ports = Object.entries(p.portModes ?? {}).map(([port, m]) => `${port}=${m}`).join(',') || '-';
          return [p.podIp, p.mode, ports, p.netnsCookie, String(c.connect_redirected ?? 0), String(c.steered ?? 0), String(c.strict_denied ?? 0)];
        }), h));
        io.out(`  bpftool map dump pinned ${data.pins.weft_pods}\n\n`);
        // Inbound and outbound exclusions are separate: an outbound one never opens a pod port.
        io.out(table(['INBOUND ENFORCEMENT', 'VALUE'], [
          ['outbound-excluded ports (never captured)', data.excludedPorts.join(',') || '-'],
          ['inbound-excluded ports (plaintext reaches every pod)', (data.inboundExcludedPorts ?? []).join(',') || 'none'],
          ['kubelet cgroups (probes exempt)', (data.kubeletCgroups ?? []).join(',') || 'none: probes are judged like any client'],
          ...Object.entries(data.refusals ?? {}).map(([k, v]) => [`refused: ${k}`, String(v)]),
        ], h));
        if (data.pins.weft_inbound_excluded) io.out(`  bpftool map dump pinned ${data.pins.weft_inbound_excluded}\n\n`);
        io.out(table(['MESH DESTINATION'], data.destinations.map((d) => [`${d.ip}:${d.port === 0 ? '*' : d.port}`]), h));
        io.out(`  bpftool map dump pinned ${data.pins.weft_dests}\n\n`);
        // Same-node connections the kernel carries pod to pod (bpf/splice.bpf.c), bytes as the kernel
        // counted them. BY TCP: what each side sent through the agent instead (before the pair was
        // made, or while its reader held too much), and how often a direction gave way to TCP.
        // READ WITH: how each pod has read its socket (recvmsg, splice(2), FIONREAD, stranded); the
        // kernel redirects only to a recvmsg reader that never used splice(2).
        const reads = (r: string[] | undefined): string => (r && r.length > 0 ? r.join('+') : '-');
        io.out(table(['SPLICED FROM POD', 'CLIENT SOCKET', 'SERVER SOCKET', 'BYTES FROM CLIENT', 'BYTES FROM SERVER', 'BY TCP (CLIENT/SERVER)', 'READ WITH (CLIENT/SERVER)'], (data.spliced ?? []).map((s) =>
          [s.clientPod || '-', s.client, s.server, String(s.bytesFromClient), String(s.bytesFromServer),
            `${s.passedFromClient ?? 0}/${s.passedFromServer ?? 0}${s.fallbacks ? ` (${s.fallbacks.fromClient}/${s.fallbacks.fromServer} times)` : ''}`,
            `${reads(s.reads?.client)}/${reads(s.reads?.server)}`]), h));
        if (data.pins.weft_spliced) io.out(`  bpftool map dump pinned ${data.pins.weft_spliced}\n\n`);
        io.out(table(['COUNTER', 'VALUE'], Object.entries(data.counters).map(([k, v]) => [k, String(v)]), h));
        io.out(`  bpftool map dump pinned ${data.pins.weft_counters}\n\n`);
      }
    }, { namespaced: false }),
    command('config-dump', 'the full config each agent (or, with --waypoints, each waypoint replica) holds, read from it on either transport', io, async (m, f) => {
      if (f.computed) {
        if (m.target.kind === 'local') throw new Error('--computed is for a cluster: the local mesh\'s agents answer themselves');
        renderData(io, f, f.waypoints ? await m.waypoints() : await m.agents(f.node));
        return;
      }
      renderData(io, f, f.waypoints ? await perWaypoint(m.target) : await perNode<ConfigDump>(m.target, '/config_dump', f.node));
    }, { namespaced: false, formats: ['json', 'yaml'] })
      .option('--waypoints', 'the waypoints\' config instead of the agents\'')
      .option('--computed', 'cluster: what the controller sends each agent (or waypoint), computed from the API\'s objects; needs no --debug-endpoints'),
  ];
}

/** `spiffe://td/ns/<ns>/sa/<sa>` → `<ns>` (empty when it is not a workload identity). */
function namespaceOfSpiffe(id: string): string {
  return /\/ns\/([^/]+)\/sa\//.exec(id)?.[1] ?? '';
}
