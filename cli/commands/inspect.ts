// weftctl workloads | services | policies | certs | bpf | config-dump: what the running mesh is
// doing, read from each node agent's admin endpoint (localhost:15000 inside the node). Tables by
// default, `-o json|yaml` for machines.
import { Command, Option } from 'commander';
import { stringify } from 'yaml';
import type { AgentConfig, WaypointConfig } from '../../lib/model/mesh.ts';
import type { LocalState } from '../local/up.ts';
import { localMeshCommand } from './local-mesh.ts';
import { getJsonInNetns } from '../local/netns-http.ts';
import { processIo, type CommandIo } from './install.ts';

type Output = 'table' | 'json' | 'yaml';
interface Flags {
  prefix: string;
  stateDir: string;
  output: Output;
  node?: string;
  waypoints?: boolean;
}

/** Columns of text, padded to the widest cell. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n') + '\n';
}

function render(io: CommandIo, output: Output, data: unknown, header: string[], rows: string[][]): void {
  if (output === 'json') io.out(JSON.stringify(data, null, 2) + '\n');
  else if (output === 'yaml') io.out(stringify(data));
  else io.out(table(header, rows));
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

function command(name: string, description: string, io: CommandIo, run: (st: LocalState, f: Flags) => Promise<void>): Command {
  return localMeshCommand<Flags>(name, name, io, (cmd) => cmd
    .description(description)
    .option('--node <name>', 'only this node')
    .option('--waypoints', 'config-dump: the waypoints\' config instead of the agents\'')
    .addOption(new Option('-o, --output <format>', 'output format').choices(['table', 'json', 'yaml']).default('table')), run);
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
  return [
    command('waypoints', 'waypoints, their addresses, identities and readiness as the agents see them', io, async (st, f) => {
      const dumps = await perNode<ConfigDump>(st, '/config_dump', f.node);
      const seen = new Map<string, AgentConfig['waypoints'][number]>();
      for (const d of dumps) for (const w of d.data.config.waypoints) seen.set(`${w.namespace}/${w.name}`, w);
      const wps = [...seen.values()];
      render(io, f.output, wps, ['NAMESPACE', 'NAME', 'ADDRESS', 'READY', 'IDENTITY'],
        wps.map((w) => [w.namespace, w.name, w.address ? `${w.address}:${w.port}` : '-', w.ready ? 'True' : `False (${w.reason ?? 'unknown'})`, w.spiffeId]));
    }),
    command('routes', 'HTTP and gRPC routes in force at each waypoint, with their backends and weights', io, async (st, f) => {
      const dumps = await perWaypoint(st);
      const routes = dumps.flatMap((d) => d.data.config.routes.map((r) => ({ waypoint: d.pod, ...r })));
      render(io, f.output, routes, ['NAMESPACE', 'NAME', 'KIND', 'SERVICE', 'RULES', 'BACKENDS'],
        routes.map((r) => [r.namespace, r.name, r.kind, r.service, String(r.rules.length),
          r.rules.map((rule) => rule.backends.map((b) => `${b.service.split('/').pop()}:${b.weight}`).join('+')).join(' | ')]));
    }),
    command('workloads', 'pods the agents know, their identities, mTLS mode and enrolment', io, async (st, f) => {
      const dumps = await perNode<ConfigDump>(st, '/config_dump', f.node);
      const wls = dumps.flatMap((d) => d.data.config.workloads.filter((w) => w.node === d.node));
      render(io, f.output, wls, ['NAMESPACE', 'NAME', 'NODE', 'IP', 'MODE', 'ENROLLED', 'IDENTITY'],
        wls.map((w) => [w.namespace, w.name, w.node, w.ip, w.mode, w.enrolled ? 'yes' : 'no', w.spiffeId]));
    }),
    command('services', 'services, their addresses, endpoints and waypoints', io, async (st, f) => {
      const dumps = await perNode<ConfigDump>(st, '/config_dump', f.node);
      const seen = new Map<string, AgentConfig['services'][number]>();
      for (const d of dumps) for (const s of d.data.config.services) seen.set(`${s.namespace}/${s.name}`, s);
      const svcs = [...seen.values()];
      render(io, f.output, svcs, ['NAMESPACE', 'NAME', 'VIPS', 'PORTS', 'ENDPOINTS', 'WAYPOINT'],
        svcs.map((s) => [s.namespace, s.name, s.vips.join(','), s.ports.map((p) => `${p.port}/${p.appProtocol}`).join(','),
          s.endpoints.map((e) => `${e.ip}${e.enrolled ? '' : '(plain)'}`).join(','), s.waypoint ? `${s.waypoint.namespace}/${s.waypoint.name}` : '-']));
    }),
    command('policies', 'authorization and peer authentication policies in force on the nodes', io, async (st, f) => {
      const dumps = await perNode<ConfigDump>(st, '/config_dump', f.node);
      const seen = new Map<string, AgentConfig['policies'][number]>();
      for (const d of dumps) for (const p of d.data.config.policies) seen.set(`${p.namespace}/${p.name}`, p);
      const pols = [...seen.values()];
      render(io, f.output, pols, ['NAMESPACE', 'NAME', 'ACTION', 'SCOPE', 'LAYER', 'RULES'],
        pols.map((p) => [p.namespace, p.name, p.action, p.scope, p.layer, String(p.rules.length)]));
    }),
    command('certs', 'workload certificates held by each node agent', io, async (st, f) => {
      const dumps = await perNode<CertsDump>(st, '/certs', f.node);
      const rows = dumps.flatMap((d) => d.data.certificates.map((c) => ({ node: d.node, ...c })));
      // The issuer's subject tells the roots apart during a root rotation.
      render(io, f.output, rows, ['NODE', 'IDENTITY', 'SERIAL', 'EXPIRES', 'STATE', 'ISSUER'],
        rows.map((c) => [c.node, c.identity, c.serial.slice(0, 16), c.notAfter, c.state, c.issuer]));
    }),
    command('bpf', 'eBPF programs, links, enrolled pods, maps and counters on each node (with the bpftool command for each)', io, async (st, f) => {
      const dumps = await perNode<BpfDump>(st, '/bpf', f.node);
      if (f.output !== 'table') {
        render(io, f.output, dumps, [], []);
        return;
      }
      for (const { node, data } of dumps) {
        io.out(`node ${node}  (pins under ${data.pinRoot})\n\n`);
        io.out(table(['PROGRAM', 'ID', 'LINK', 'BPFTOOL'], data.programs.map((p) => {
          const link = data.links.find((l) => l.program === p.name);
          return [p.name, String(p.id), link ? String(link.id) : '-', `bpftool prog show id ${p.id}`];
        })));
        io.out('\n');
        io.out(table(['ENROLLED POD', 'MODE', 'PORT MODES', 'NETNS COOKIE', 'REDIRECTED', 'STEERED', 'STRICT DENIED'], data.pods.map((p) => {
          const c = data.podCounters[p.netnsCookie] ?? {};
          const ports = Object.entries(p.portModes ?? {}).map(([port, m]) => `${port}=${m}`).join(',') || '-';
          return [p.podIp, p.mode, ports, p.netnsCookie, String(c.connect_redirected ?? 0), String(c.steered ?? 0), String(c.strict_denied ?? 0)];
        })));
        io.out(`  bpftool map dump pinned ${data.pins.weft_pods}\n\n`);
        // Inbound and outbound exclusions are separate: an outbound one never opens a pod port.
        io.out(table(['INBOUND ENFORCEMENT', 'VALUE'], [
          ['outbound-excluded ports (never captured)', data.excludedPorts.join(',') || '-'],
          ['inbound-excluded ports (plaintext reaches every pod)', (data.inboundExcludedPorts ?? []).join(',') || 'none'],
          ['kubelet cgroups (probes exempt)', (data.kubeletCgroups ?? []).join(',') || 'none: probes are judged like any client'],
          ...Object.entries(data.refusals ?? {}).map(([k, v]) => [`refused: ${k}`, String(v)]),
        ]));
        if (data.pins.weft_inbound_excluded) io.out(`  bpftool map dump pinned ${data.pins.weft_inbound_excluded}\n\n`);
        io.out(table(['MESH DESTINATION'], data.destinations.map((d) => [`${d.ip}:${d.port === 0 ? '*' : d.port}`])));
        io.out(`  bpftool map dump pinned ${data.pins.weft_dests}\n\n`);
        io.out(table(['COUNTER', 'VALUE'], Object.entries(data.counters).map(([k, v]) => [k, String(v)])));
        io.out(`  bpftool map dump pinned ${data.pins.weft_counters}\n\n`);
      }
    }),
    command('config-dump', 'the full config each agent (or, with --waypoints, each waypoint) holds', io, async (st, f) => {
      const dumps = f.waypoints ? await perWaypoint(st) : await perNode<ConfigDump>(st, '/config_dump', f.node);
      io.out(f.output === 'yaml' ? stringify(dumps) : JSON.stringify(dumps, null, 2) + '\n');
    }),
  ];
}
