// weftctl version: this client's version, and each running component's, read from its
// `weft_build_info{component,version,node_version}` metric (the controller, every node agent and
// every waypoint), on the local mesh or a cluster. `--client` needs no mesh.
import { Command } from 'commander';
import pkg from '../../package.json' with { type: 'json' };
import { components, scrapeComponent, type Role } from '../components.ts';
import { chooseTarget, targetOptions, type TargetFlags } from './target.ts';
import { outputOptions, renderList, type OutputFlags } from './output.ts';
import { EXIT_FAILED, exitUsageOnCommanderError, processIo, type CommandIo } from './install.ts';

/** This client's version (package.json, inlined into the bundle). */
export const CLIENT_VERSION: string = (pkg as { version: string }).version;

export interface VersionRow {
  role: 'client' | Role;
  name: string;
  version: string;
  nodeVersion: string;
  /** Why no version could be read. */
  error?: string;
}

interface Flags extends TargetFlags, OutputFlags {
  client?: boolean;
}

export function versionCommand(io: CommandIo = processIo): Command {
  const cmd = new Command('version')
    .description('versions of this client, the controller, the node agents and the waypoints (from their weft_build_info metric)')
    .option('--client', 'only this client (no mesh needed)');
  targetOptions(outputOptions(cmd));
  return exitUsageOnCommanderError(cmd, io).action(async (f: Flags) => {
    const rows: VersionRow[] = [{ role: 'client', name: 'weftctl', version: CLIENT_VERSION, nodeVersion: process.versions.node }];
    if (!f.client) {
      try {
        const comps = await components(await chooseTarget(f));
        rows.push(...await Promise.all(comps.map(async (c): Promise<VersionRow> => {
          const r = await scrapeComponent(c);
          if ('error' in r) return { role: c.role, name: c.name, version: 'unknown', nodeVersion: '-', error: r.error };
          const info = r.samples.find((s) => s.name === 'weft_build_info');
          if (!info) return { role: c.role, name: c.name, version: 'unknown', nodeVersion: '-', error: 'no weft_build_info metric (a build older than the metric)' };
          return { role: c.role, name: c.name, version: info.labels.version ?? 'unknown', nodeVersion: info.labels.node_version ?? '-' };
        })));
      } catch (e) {
        io.err(`weftctl version: ${(e as Error).message}\n`);
        io.setExitCode(EXIT_FAILED);
      }
    }
    renderList(io, f, rows, [
      { header: 'COMPONENT', value: (r) => r.role },
      { header: 'NAME', value: (r) => r.name },
      { header: 'VERSION', value: (r) => r.version },
      { header: 'NODE.JS', value: (r) => r.nodeVersion, wide: true },
      { header: 'NOTE', value: (r) => r.error ?? '' },
    ]);
  });
}
