// weftctl dashboard: the service graph, policies and denials per edge, live flows and per-node BPF
// state in a browser, served on loopback (cli/dashboard/), for the local mesh or a cluster (from a
// laptop through kubeconfig, or in the cluster beside the controller with its ServiceAccount), or
// every cluster of a local multi-cluster mesh (`weftctl up --clusters N`) at once.
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { Command } from 'commander';
import { meshOf } from './inspect.ts';
import { commandTarget } from './target.ts';
import { targetOptions, type TargetFlags } from './target.ts';
import { EXIT_FAILED, exitUsageOnCommanderError, processIo, type CommandIo } from './install.ts';
import { MeshData, type ClusterMesh } from '../dashboard/data.ts';
import { dashboardServer } from '../dashboard/server.ts';
import { LogBudget, REFUSAL_LOG_PER_SECOND, clip } from '../../lib/log.ts';
import { DASHBOARD_PORT } from '../install/dashboard.ts';
import { readLocalClusters } from '../local/multicluster-up.ts';
import { isRunning, readState } from '../local/up.ts';

interface DashboardFlags extends TargetFlags {
  address: string;
  port: string;
  prometheus?: string;
  window: string;
  allowedHost: string[];
}

/**
 * The running clusters of a local multi-cluster mesh, when the state folder holds one and no
 * cluster (kubeconfig) was asked for; undefined otherwise.
 */
function localClusters(f: DashboardFlags, warn: (line: string) => void): ClusterMesh[] | undefined {
  if (f.kubeconfig !== undefined || f.context !== undefined || process.env.KUBECONFIG || readState(f.stateDir)) return undefined;
  const running = (readLocalClusters(f.stateDir)?.clusters ?? []).flatMap((c) => {
    const st = readState(c.stateDir);
    return st && isRunning(c.prefix) ? [{ name: c.name, mesh: meshOf({ kind: 'local', st }, warn) }] : [];
  });
  return running.length > 0 ? running : undefined;
}

export function dashboardCommand(io: CommandIo = processIo): Command {
  const cmd = targetOptions(exitUsageOnCommanderError(new Command('dashboard'), io))
    .description('serve a read-only web view of the mesh: service graph (by cluster and namespace), policies, denials, live flows, BPF state')
    .option('--address <ip>', 'address to listen on (loopback unless you mean otherwise)', '127.0.0.1')
    .option('-p, --port <port>', 'port to listen on (0: any free one)', String(DASHBOARD_PORT))
    .option('--prometheus <url>', 'read metrics from this Prometheus instead of the agents and waypoints')
    .option('--window <seconds>', 'rates are computed over this many seconds', '30')
    .option('--allowed-host <name>', 'a Host name browsers may use besides the address (a Service or Ingress name); repeatable', (v: string, all: string[]) => [...all, v], [] as string[]);
  return cmd.action(async () => {
    const f = cmd.opts<DashboardFlags>();
    const warn = (line: string) => io.err(`weftctl dashboard: ${line}\n`);
    let clusters = localClusters(f, warn);
    if (!clusters) {
      const target = await commandTarget(cmd, f, io);
      if (!target) return;
      clusters = [{ mesh: meshOf(target, warn) }];
    }
    try {
      await serve(clusters, f, io);
    } catch (err) {
      io.err(`weftctl dashboard: ${(err as Error).message}\n`);
      io.setExitCode(EXIT_FAILED);
    }
  });
}

async function serve(clusters: ClusterMesh[], f: DashboardFlags, io: CommandIo): Promise<void> {
  const data = new MeshData(clusters, { windowSeconds: Number(f.window) || 30, ...(f.prometheus ? { prometheus: f.prometheus } : {}) });
  // Refusals on stderr, at most REFUSAL_LOG_PER_SECOND lines a second (in a cluster, any pod can send them).
  const budget = new LogBudget(REFUSAL_LOG_PER_SECOND, (n) => io.err(`weftctl dashboard: ${n} more refused requests not logged (rate limit)\n`));
  const server = dashboardServer({
    data, allowedHosts: f.allowedHost,
    refused: (reason, req) => {
      if (budget.take()) io.err(`weftctl dashboard: refused ${req.method} ${JSON.stringify(clip(req.url))} from ${req.socket.remoteAddress}: ${reason}${reason === 'host' ? ` ${JSON.stringify(clip(req.headers.host ?? ''))}` : ''}\n`);
    },
  });
  server.listen(Number(f.port), f.address);
  await once(server, 'listening');
  data.start();
  const a = server.address() as AddressInfo;
  const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
  const of = clusters.length > 1 ? `, clusters ${clusters.map((c) => c.name).join(', ')}` : '';
  io.out(`weft dashboard on http://${host}:${a.port}/ (${f.prometheus ? `metrics from ${f.prometheus}` : 'metrics from the agents and waypoints'}${of}; Ctrl-C to stop)\n`);
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  data.stop();
  server.closeAllConnections();
  server.close();
}
