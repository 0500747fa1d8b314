// weftctl workloads | services | policies | certs | bpf | config-dump: what the running mesh is
// doing, read from each node agent's admin endpoint (localhost:15000 inside the node). Tables by
// default, `-o json|yaml` for machines.
import { Command } from 'commander';
import type { AgentConfig, WaypointConfig } from '../../lib/model/mesh.ts';
import type { LocalState } from '../local/up.ts';
import { localMeshCommand } from './local-mesh.ts';
import { getJsonInNetns } from '../local/netns-http.ts';
import { processIo, type CommandIo } from './install.ts';
import { inNamespace, namespaceOptions, outputOptions, renderData, renderList, table, type NamespaceFlags, type OutputFlags, type OutputFormat } from './output.ts';

interface Flags extends OutputFlags, NamespaceFlags {
  prefix: string;
  stateDir: string;
  node?: string;
  waypoints?: boolean;
}

async function perNode<T>(st: LocalState, path: string, only?: string): Promise<Array<{ node: string; data: T }>> {
  const out: Array<{ node: string; data: T }> = [];
  for (const n of st.nodes) {
    if (only && n.name !== only) continue;
    out.push({ node: n.name, data: await getJsonInNetns<T>(`/var/run/netns/${n.netns}`, `http://127.0.0.1:15000${path}`) });
  }
  if (only && out.length === 0) throw new Error(`no node named ${only} (nodes: ${st.nodes.map((n) => n.name).join(', ')})`);
  return out;
}

function command(name: string, description: string, io: CommandIo, run: (st: LocalState, f: Flags) => Promise<void>, opts: { namespaced?: boolean; formats?: OutputFormat[] } = {}): Command {
  return localMeshCommand<Flags>(name, name, io, (cmd) => {
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
  pins: Record<string, string>;
}

interface WaypointDump { version: number; config: WaypointConfig; identity?: unknown }

/** Each local waypoint pod's admin /config_dump (localhost:15000 inside the pod). */
async function perWaypoint(st: LocalState): Promise<Array<{ pod: string; data: WaypointDump }>> {
  const out: Array<{ pod: string; data: WaypointDump }> = [];
  for (const p of st.pods.filter((x) => x.name.startsWith('waypoint'))) {
    out.push({ pod: `${p.namespace}/${p.name}`, data: await getJsonInNetns<WaypointDump>(`/var/run/netns/${p.netns}`, 'http://127.0.0.1:15000/config_dump') });
  }
  return out;
}

export function inspectCommands(io: CommandIo = processIo): Command[] {
  type W = AgentConfig['waypoints'][number];
  type Wl = AgentConfig['workloads'][number];
  type Svc = AgentConfig['services'][number];
  type Pol = AgentConfig['policies'][number];
  return [
    command('waypoints', 'waypoints, their addresses, identities and readiness as the agents see them', io, async (st, f) => {
      const dumps = await perNode<ConfigDump>(st, '/config_dump', f.node);
      const wps = unique(dumps.map((d) => d.data.config.waypoints), f);
      renderList<W>(io, f, wps, [
        { header: 'NAMESPACE', value: (w) => w.namespace },
        { header: 'NAME', value: (w) => w.name },
        { header: 'ADDRESS', value: (w) => (w.address ? `${w.address}:${w.port}` : '-') },
        { header: 'READY', value: (w) => (w.ready ? 'True' : `False (${w.reason ?? 'unknown'})`) },
        { header: 'IDENTITY', value: (w) => w.spiffeId },
      ]);
    }),
    command('routes', 'HTTP and gRPC routes in force at each waypoint, with their backends and weights', io, async (st, f) => {
      const dumps = await perWaypoint(st);
      const routes = dumps.flatMap((d) => d.data.config.routes.filter((r) => inNamespace(f, r.namespace)).map((r) => ({ waypoint: d.pod, ...r })));
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
    command('workloads', 'pods the agents know, their identities, mTLS mode and enrolment', io, async (st, f) => {
      const dumps = await perNode<ConfigDump>(st, '/config_dump', f.node);
      const wls = dumps.flatMap((d) => d.data.config.workloads.filter((w) => w.node === d.node && inNamespace(f, w.namespace)));
      renderList<Wl>(io, f, wls, [
        { header: 'NAMESPACE', value: (w) => w.namespace },
        { header: 'NAME', value: (w) => w.name },
        { header: 'NODE', value: (w) => w.node },
        { header: 'IP', value: (w) => w.ip },
        { header: 'MODE', value: (w) => w.mode },
        { header: 'ENROLLED', value: (w) => (w.enrolled ? 'yes' : 'no') },
        { header: 'SERVICES', value: (w) => w.services.join(',') || '-', wide: true },
        { header: 'IDENTITY', value: (w) => w.spiffeId },
      ]);
    }),
    command('services', 'services, their addresses, endpoints and waypoints', io, async (st, f) => {
      const dumps = await perNode<ConfigDump>(st, '/config_dump', f.node);
      const svcs = unique(dumps.map((d) => d.data.config.services), f);
      renderList<Svc>(io, f, svcs, [
        { header: 'NAMESPACE', value: (s) => s.namespace },
        { header: 'NAME', value: (s) => s.name },
        { header: 'VIPS', value: (s) => s.vips.join(',') },
        { header: 'PORTS', value: (s) => s.ports.map((p) => `${p.port}/${p.appProtocol}`).join(',') },
        { header: 'ENDPOINTS', value: (s) => s.endpoints.map((e) => `${e.ip}${e.enrolled ? '' : '(plain)'}`).join(',') },
        { header: 'WAYPOINT', value: (s) => (s.waypoint ? `${s.waypoint.namespace}/${s.waypoint.name}` : '-') },
        { header: 'HOSTNAME', value: (s) => s.hostname, wide: true },
      ]);
    }),
    command('policies', 'authorization and peer authentication policies in force on the nodes', io, async (st, f) => {
      const dumps = await perNode<ConfigDump>(st, '/config_dump', f.node);
      const pols = unique(dumps.map((d) => d.data.config.policies), f);
      renderList<Pol>(io, f, pols, [
        { header: 'NAMESPACE', value: (p) => p.namespace },
        { header: 'NAME', value: (p) => p.name },
        { header: 'ACTION', value: (p) => p.action },
        { header: 'SCOPE', value: (p) => p.scope },
        { header: 'LAYER', value: (p) => p.layer },
        { header: 'RULES', value: (p) => String(p.rules.length) },
        { header: 'SELECTS', value: (p) => (p.targetServices?.join(',') ?? (p.selector ? Object.entries(p.selector).map(([k, v]) => `${k}=${v}`).join(',') : '-')), wide: true },
      ]);
    }),
    command('certs', 'workload certificates held by each node agent', io, async (st, f) => {
      const dumps = await perNode<CertsDump>(st, '/certs', f.node);
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
    command('bpf', 'eBPF programs, links, enrolled pods, maps and counters on each node (with the bpftool command for each)', io, async (st, f) => {
      const dumps = await perNode<BpfDump>(st, '/bpf', f.node);
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
        io.out(table(['COUNTER', 'VALUE'], Object.entries(data.counters).map(([k, v]) => [k, String(v)]), h));
        io.out(`  bpftool map dump pinned ${data.pins.weft_counters}\n\n`);
      }
    }, { namespaced: false }),
    command('config-dump', 'the full config each agent (or, with --waypoints, each waypoint) holds', io, async (st, f) => {
      renderData(io, f, f.waypoints ? await perWaypoint(st) : await perNode<ConfigDump>(st, '/config_dump', f.node));
    }, { namespaced: false, formats: ['json', 'yaml'] }).option('--waypoints', 'the waypoints\' config instead of the agents\''),
  ];
}

/** `spiffe://td/ns/<ns>/sa/<sa>` → `<ns>` (empty when it is not a workload identity). */
function namespaceOfSpiffe(id: string): string {
  return /\/ns\/([^/]+)\/sa\//.exec(id)?.[1] ?? '';
}
