// weftctl waypoint apply | list | status | delete, as `istioctl waypoint` does them for Istio
// ambient, on either transport: on the local mesh the pod is started from the state folder
// (cli/local/waypoints.ts); on a cluster the Waypoint object is applied through the API and the
// controller makes its Deployment. Listing, status and the wait for readiness are one code path
// for both (cli/waypoints.ts).
import { Command } from 'commander';
import { applyWaypoint, deleteWaypoint } from '../local/waypoints.ts';
import { applyWaypointObject, deleteWaypointObject, waitWaypointReady, waypointStatuses } from '../waypoints.ts';
import { inspectCommand, type Mesh } from './inspect.ts';
import type { TargetFlags } from './target.ts';
import { outputOptions, renderData, renderList, table, type OutputFlags } from './output.ts';
import { processIo, exitUsageOnCommanderError, EXIT_FAILED, type CommandIo } from './install.ts';

interface Flags extends OutputFlags, TargetFlags {
  namespace?: string;
  name: string;
  node?: string;
  enrollNamespace?: boolean;
  maxRequests?: string;
  quotaRedis?: string;
  quotaFailureMode?: string;
  allNamespaces?: boolean;
  timeout: string;
}

function sub(name: string, description: string, io: CommandIo, run: (m: Mesh, f: Flags) => Promise<void>): Command {
  return inspectCommand<Flags>(name, `waypoint ${name}`, io, (cmd) => cmd
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

/** --timeout in seconds. */
function timeoutFlag(v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < 1 || n > 3600) throw new Error(`--timeout ${v}: give a whole number of seconds from 1 to 3600`);
  return n * 1000;
}

export function waypointCommand(io: CommandIo = processIo): Command {
  const say = (l: string) => io.out(`${l}\n`);
  return exitUsageOnCommanderError(new Command('waypoint'), io)
    .description('waypoints of the mesh (local or cluster): apply, list, status, delete')
    .addCommand(sub('apply', 'create a namespace\'s waypoint (the Waypoint object; its pod locally, the controller\'s Deployment on a cluster) and wait until every agent sees it ready', io, async (m, f) => {
      const namespace = needNamespace(f);
      const timeoutMs = timeoutFlag(f.timeout);
      const spec = {
        ...(f.maxRequests !== undefined ? { maxRequests: maxRequestsFlag(f.maxRequests) } : {}),
        ...(f.quotaRedis !== undefined ? { quotaStore: { redis: f.quotaRedis, ...(f.quotaFailureMode ? { failureMode: f.quotaFailureMode as 'open' | 'closed' } : {}) } } : {}),
      };
      let hint: string;
      if (m.target.kind === 'local') {
        await applyWaypoint(m.target.st, { namespace, name: f.name, ...(f.node ? { node: f.node } : {}), enrollNamespace: f.enrollNamespace ?? false, say, timeoutMs, ...spec });
        hint = `see ${m.target.st.stateDir}/logs`;
      } else {
        if (f.node) throw new Error('--node places the pod on the local mesh; on a cluster the scheduler places the waypoint\'s pods');
        await applyWaypointObject(m.target.kube, { namespace, name: f.name, enrollNamespace: f.enrollNamespace ?? false, say, ...spec });
        hint = `see \`kubectl -n ${namespace} describe deployment ${f.name}\` and the Waypoint's status`;
      }
      await waitWaypointReady(m.target, namespace, f.name, { timeoutMs, say, hint });
    })
      .option('--node <node>', 'local mesh: node for the waypoint pod (default: the node with the fewest pods)')
      .option('--max-requests <n>', 'requests in progress at once in the waypoint (spec.maxRequests); beyond it 503 at once (default 10000)')
      .option('--quota-redis <url>', 'Redis the replicas share for TrafficPolicy quotas (spec.quotaStore.redis, redis://host:port)')
      .option('--quota-failure-mode <open|closed>', 'when Redis is unreachable: admit (open, default) or refuse (closed) (spec.quotaStore.failureMode)')
      .option('--timeout <seconds>', 'how long to wait for every agent to see it ready', '60')
      .option('--enroll-namespace', 'label the namespace weft.dev/use-waypoint=<name> so its services use the waypoint'))
    .addCommand(outputOptions(sub('list', 'waypoints, their addresses and readiness as the agents see them', io, async (m, f) => {
      const ws = await waypointStatuses(m.target, f.allNamespaces || !f.namespace ? {} : { namespace: f.namespace });
      renderList(io, f, ws, [
        { header: 'NAMESPACE', value: (w) => w.namespace },
        { header: 'NAME', value: (w) => w.name },
        { header: 'ADDRESSES', value: (w) => w.addresses.join(',') || '-' },
        { header: 'READY', value: (w) => (w.ready ? 'True' : `False (${w.reason ?? 'unknown'})`) },
        { header: 'PODS', value: (w) => w.pods.map((p) => `${p.name}@${p.node}`).join(',') || '-' },
        { header: 'IDENTITY', value: (w) => w.identity ?? '-', wide: true },
      ]);
    }).option('-A, --all-namespaces', 'every namespace (the default without -n)')))
    .addCommand(outputOptions(sub('status', 'a waypoint\'s pods (readiness, config version) and what each agent sees; exit 1 unless ready', io, async (m, f) => {
      const ns = needNamespace(f);
      const [w] = await waypointStatuses(m.target, { namespace: ns, name: f.name });
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
    .addCommand(sub('delete', 'remove a waypoint: its Waypoint object and pods (on a cluster the controller removes its Deployment)', io, async (m, f) => {
      const ns = needNamespace(f);
      const ok = m.target.kind === 'local' ? await deleteWaypoint(m.target.st, ns, f.name, say) : await deleteWaypointObject(m.target.kube, ns, f.name, say);
      if (!ok) io.setExitCode(EXIT_FAILED);
    }));
}
