// weftctl proxy-status: each agent's and waypoint's config stream against the controller, as
// `istioctl proxy-status` shows Envoy's: the system version the controller has published, the one
// each client acknowledged last, and the one it refused, if any. The controller pushes a version
// only to the clients whose view it changes, so an acknowledged version older than the
// controller's is normal (nothing of that client's changed since); a refusal newer than the last
// acknowledgement is not: that client runs older config than the controller means it to (NACKED). Read from each
// controller's /debug/clients (cli/components.ts: its loopback admin port in the local mesh's wire
// namespace; on a cluster the same path on its metrics port through the API server's pod proxy,
// every replica's clients).
import { Command } from 'commander';
import { components } from '../components.ts';
import { CONTROLLER_DEBUG_CLIENTS_PATH } from '../../lib/defaults.ts';
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
  /** ACKED: the client applied the last version sent to it; NACKED: it refused a newer one. */
  state: 'ACKED' | 'NACKED';
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
    // A refusal is news only until a later version is acknowledged.
    state: c.nackedVersion && versionAfter(c.nackedVersion, c.ackedVersion) ? 'NACKED' : 'ACKED',
  })).sort((a, b) => `${a.kind}/${a.id}`.localeCompare(`${b.kind}/${b.id}`));
}

/** Is system version `a` (a decimal count) later than `b` ('' or '-': none)? */
function versionAfter(a: string, b: string): boolean {
  const n = (v: string) => (/^\d+$/.test(v) ? BigInt(v) : -1n);
  return n(a) > n(b);
}

export function proxyStatusCommand(io: CommandIo = processIo): Command {
  return inspectCommand<TargetFlags & OutputFlags>('proxy-status', 'proxy-status', io, (cmd) => outputOptions(cmd
    .description('config version each agent and waypoint acknowledged or refused against the controller\'s; exit 1 when one refused its latest config (NACKED)')), async (m, f) => {
    const controllers = (await components(m.target)).filter((c) => c.role === 'controller');
    if (controllers.length === 0) throw new Error('no controller is running');
    const dumps = await Promise.all(controllers.map((c) => c.admin<DebugClients>(CONTROLLER_DEBUG_CLIENTS_PATH)));
    const rows = clientStatuses({ systemVersion: '', clients: [] });
    for (const d of dumps) rows.push(...clientStatuses(d));
    rows.sort((a, b) => `${a.kind}/${a.id}`.localeCompare(`${b.kind}/${b.id}`));
    renderList(io, f, rows, [
      { header: 'KIND', value: (r) => r.kind },
      { header: 'CLIENT', value: (r) => r.id },
      { header: 'NAMESPACE', value: (r) => r.namespace || '-', wide: true },
      { header: 'ACKED', value: (r) => r.ackedVersion },
      { header: 'NACKED', value: (r) => r.nackedVersion ?? '-' },
      { header: 'CONTROLLER', value: (r) => r.controllerVersion },
      { header: 'STATE', value: (r) => r.state },
    ]);
    if (rows.some((r) => r.state === 'NACKED')) io.setExitCode(EXIT_FAILED);
  });
}
