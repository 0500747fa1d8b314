// weftctl proxy-status: each agent's and waypoint's config stream against the controller, as
// `istioctl proxy-status` shows Envoy's: the system version the controller has published, the one
// each client acknowledged last, and SYNCED / STALE / NACKED. Read from the controller's admin
// /debug/clients (loopback only: in the local mesh's wire namespace). On a cluster that port is
// reachable with `kubectl -n weft-system port-forward deploy/weft-controller 15000`.
import { Command } from 'commander';
import { getJsonInNetns } from '../local/netns-http.ts';
import { wireNetnsName } from '../local/network.ts';
import { inspectCommand } from './inspect.ts';
import { outputOptions, renderList, type OutputFlags } from './output.ts';
import { EXIT_FAILED, processIo, type CommandIo } from './install.ts';
import type { TargetFlags } from './target.ts';

export interface ClientStatus {
  kind: string;
  id: string;
  namespace: string;
  ackedVersion: string;
  nackedVersion?: string;
  controllerVersion: string;
  state: 'SYNCED' | 'STALE' | 'NACKED';
}

interface DebugClients {
  systemVersion: string;
  clients: Array<{ id: string; kind?: string; namespace: string; ackedVersion: string; nackedVersion?: string }>;
}

/** Each client's state against the controller's published version. */
export function clientStatuses(d: DebugClients): ClientStatus[] {
  return d.clients.map((c): ClientStatus => ({
    kind: c.kind ?? 'unknown',
    id: c.id,
    namespace: c.namespace,
    ackedVersion: c.ackedVersion || '-',
    ...(c.nackedVersion ? { nackedVersion: c.nackedVersion } : {}),
    controllerVersion: d.systemVersion,
    // A NACK of the current version is the newest news; an older NACK was since superseded by an ACK.
    state: c.nackedVersion && c.nackedVersion === d.systemVersion ? 'NACKED' : c.ackedVersion === d.systemVersion ? 'SYNCED' : 'STALE',
  })).sort((a, b) => `${a.kind}/${a.id}`.localeCompare(`${b.kind}/${b.id}`));
}

export function proxyStatusCommand(io: CommandIo = processIo): Command {
  return inspectCommand<TargetFlags & OutputFlags>('proxy-status', 'proxy-status', io, (cmd) => outputOptions(cmd
    .description('config version each agent and waypoint acknowledged (ACK/NACK) against the controller\'s; exit 1 unless every one is SYNCED')), async (m, f) => {
    if (m.target.kind === 'cluster') {
      throw new Error('reads the controller\'s admin port (loopback only), which the API server cannot reach; run `kubectl -n weft-system port-forward deploy/weft-controller 15000` and GET localhost:15000/debug/clients');
    }
    const d = await getJsonInNetns<DebugClients>(`/var/run/netns/${wireNetnsName(m.target.st.prefix)}`, 'http://127.0.0.1:15000/debug/clients');
    const rows = clientStatuses(d);
    renderList(io, f, rows, [
      { header: 'KIND', value: (r) => r.kind },
      { header: 'CLIENT', value: (r) => r.id },
      { header: 'NAMESPACE', value: (r) => r.namespace || '-', wide: true },
      { header: 'ACKED', value: (r) => r.ackedVersion },
      { header: 'NACKED', value: (r) => r.nackedVersion ?? '-' },
      { header: 'CONTROLLER', value: (r) => r.controllerVersion },
      { header: 'STATE', value: (r) => r.state },
    ]);
    if (rows.some((r) => r.state !== 'SYNCED')) io.setExitCode(EXIT_FAILED);
  });
}
