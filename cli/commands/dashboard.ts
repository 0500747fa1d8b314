// weftctl dashboard: the service graph, policies and denials per edge, live flows and per-node BPF
// state in a browser, served on loopback (cli/dashboard/), for the local mesh or a cluster (from a
// laptop through kubeconfig, or in the cluster beside the controller with its ServiceAccount).
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { inspectCommand } from './inspect.ts';
import type { TargetFlags } from './target.ts';
import { processIo, type CommandIo } from './install.ts';
import { MeshData } from '../dashboard/data.ts';
import { dashboardServer } from '../dashboard/server.ts';
import { DASHBOARD_PORT } from '../install/dashboard.ts';

interface DashboardFlags extends TargetFlags {
  address: string;
  port: string;
  prometheus?: string;
  window: string;
  allowedHost: string[];
}

export function dashboardCommand(io: CommandIo = processIo) {
  return inspectCommand<DashboardFlags>('dashboard', 'dashboard', io, (cmd) => cmd
    .description('serve a read-only web view of the mesh: service graph, policies, denials, live flows, BPF state')
    .option('--address <ip>', 'address to listen on (loopback unless you mean otherwise)', '127.0.0.1')
    .option('-p, --port <port>', 'port to listen on (0: any free one)', String(DASHBOARD_PORT))
    .option('--prometheus <url>', 'read metrics from this Prometheus instead of the agents and waypoints')
    .option('--window <seconds>', 'rates are computed over this many seconds', '30')
    .option('--allowed-host <name>', 'a Host name browsers may use besides the address (a Service or Ingress name); repeatable', (v: string, all: string[]) => [...all, v], [] as string[]), async (m, f) => {
      const data = new MeshData(m, { windowSeconds: Number(f.window) || 30, ...(f.prometheus ? { prometheus: f.prometheus } : {}) });
      const server = dashboardServer({ data, allowedHosts: f.allowedHost });
      server.listen(Number(f.port), f.address);
      await once(server, 'listening');
      data.start();
      const a = server.address() as AddressInfo;
      const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
      io.out(`weft dashboard on http://${host}:${a.port}/ (${f.prometheus ? `metrics from ${f.prometheus}` : 'metrics from the agents and waypoints'}; Ctrl-C to stop)\n`);
      await new Promise<void>((resolve) => {
        const stop = () => resolve();
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
      data.stop();
      server.closeAllConnections();
      server.close();
    });
}
