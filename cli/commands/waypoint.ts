// weftctl waypoint apply | list | status | delete: waypoints of the local mesh, as `istioctl
// waypoint` does them for Istio ambient (cli/local/waypoints.ts does the work).
import { Command } from 'commander';
import type { LocalState } from '../local/up.ts';
import { localMeshCommand } from './local-mesh.ts';
import { applyWaypoint, deleteWaypoint, waypointStatuses } from '../local/waypoints.ts';
import { outputOptions, renderData, renderList, table, type OutputFlags } from './output.ts';
import { processIo, exitUsageOnCommanderError, EXIT_FAILED, type CommandIo } from './install.ts';

interface Flags extends OutputFlags {
  prefix: string;
  stateDir: string;
  namespace?: string;
  name: string;
  node?: string;
  enrollNamespace?: boolean;
  maxRequests?: string;
  quotaRedis?: string;
  quotaFailureMode?: string;
  allNamespaces?: boolean;
}

function sub(name: string, description: string, io: CommandIo, run: (st: LocalState, f: Flags) => Promise<void>): Command {
  return localMeshCommand<Flags>(name, `waypoint ${name}`, io, (cmd) => cmd
    .description(description)
    .option('-n, --namespace <ns>', 'namespace of the waypoint')
    .option('--name <name>', 'waypoint name', 'waypoint'), run);
}

function needNamespace(f: Flags): string {
  if (!f.namespace) throw new Error('which namespace? pass -n <namespace>');
  return f.namespace;
}

/** --max-requests, checked as the Waypoint's spec.maxRequests is. */
function maxRequestsFlag(v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < 1 || n > 1_000_000) throw new Error(`--max-requests ${v}: give a whole number of requests from 1 to 1000000`);
  return n;
}

export function waypointCommand(io: CommandIo = processIo): Command {
  const say = (l: string) => io.out(`${l}\n`);
  return exitUsageOnCommanderError(new Command('waypoint'), io)
    .description('waypoints of the local mesh: apply, list, status, delete')
    .addCommand(sub('apply', 'create a namespace\'s waypoint (the Waypoint object and its pod) and wait until every agent sees it ready', io, async (st, f) => {
      await applyWaypoint(st, {
        namespace: needNamespace(f), name: f.name, ...(f.node ? { node: f.node } : {}), enrollNamespace: f.enrollNamespace ?? false, say,
        ...(f.maxRequests !== undefined ? { maxRequests: maxRequestsFlag(f.maxRequests) } : {}),
        ...(f.quotaRedis !== undefined ? { quotaStore: { redis: f.quotaRedis, ...(f.quotaFailureMode ? { failureMode: f.quotaFailureMode as 'open' | 'closed' } : {}) } } : {}),
      });
    })
      .option('--node <node>', 'node for the waypoint pod (default: the node with the fewest pods)')
      .option('--max-requests <n>', 'requests in progress at once in the waypoint (spec.maxRequests); beyond it 503 at once (default 10000)')
      .option('--quota-redis <url>', 'Redis the replicas share for TrafficPolicy quotas (spec.quotaStore.redis, redis://host:port)')
      .option('--quota-failure-mode <open|closed>', 'when Redis is unreachable: admit (open, default) or refuse (closed) (spec.quotaStore.failureMode)')
      .option('--enroll-namespace', 'label the namespace weft.dev/use-waypoint=<name> so its services use the waypoint'))
    .addCommand(outputOptions(sub('list', 'waypoints, their addresses and readiness as the agents see them', io, async (st, f) => {
      const ws = await waypointStatuses(st, f.allNamespaces || !f.namespace ? {} : { namespace: f.namespace });
      renderList(io, f, ws, [
        { header: 'NAMESPACE', value: (w) => w.namespace },
        { header: 'NAME', value: (w) => w.name },
        { header: 'ADDRESSES', value: (w) => w.addresses.join(',') || '-' },
        { header: 'READY', value: (w) => (w.ready ? 'True' : `False (${w.reason ?? 'unknown'})`) },
        { header: 'PODS', value: (w) => w.pods.map((p) => `${p.name}@${p.node}`).join(',') || '-' },
        { header: 'IDENTITY', value: (w) => w.identity ?? '-', wide: true },
      ]);
    }).option('-A, --all-namespaces', 'every namespace (the default without -n)')))
    .addCommand(outputOptions(sub('status', 'a waypoint\'s pods (readiness, config version) and what each agent sees; exit 1 unless ready', io, async (st, f) => {
      const ns = needNamespace(f);
      const [w] = await waypointStatuses(st, { namespace: ns, name: f.name });
      if (!w) throw new Error(`no waypoint ${ns}/${f.name} (\`weftctl waypoint apply -n ${ns}${f.name === 'waypoint' ? '' : ` --name ${f.name}`}\` creates one)`);
      if (!renderData(io, f, w)) {
        say(`waypoint ${w.namespace}/${w.name}: ${w.ready ? 'ready' : `NOT READY: ${w.reason}`}`);
        say(`identity  ${w.identity ?? '-'}`);
        say(`addresses ${w.addresses.join(', ') || '-'}`);
        say('');
        io.out(table(['POD', 'NODE', 'IP', 'READY', 'CONFIG VERSION', 'DETAIL'], w.pods.map((p) => [p.name, p.node, p.ip, p.ready ? 'True' : 'False', p.configVersion !== undefined ? String(p.configVersion) : '-', p.detail]), f.headers));
        say('');
        io.out(table(['AGENT', 'SEES IT READY', 'DETAIL'], w.agents.map((a) => [a.node, a.ready ? 'True' : 'False', a.detail]), f.headers));
      }
      if (!w.ready) io.setExitCode(EXIT_FAILED);
    })))
    .addCommand(sub('delete', 'stop and remove a waypoint\'s pods and its Waypoint object', io, async (st, f) => {
      const ns = needNamespace(f);
      if (!(await deleteWaypoint(st, ns, f.name, say))) io.setExitCode(EXIT_FAILED);
    }));
}
