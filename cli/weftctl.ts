#!/usr/bin/env node
// weftctl: the Weft command line. Local mesh (up/down/status), inspection, analysis, install,
// preflight. `program()` builds the command tree (completion scripts are generated from it).
import { Command } from 'commander';
import { installCommand } from './commands/install.ts';
import { uninstallCommand } from './commands/uninstall.ts';
import { createRemoteSecretCommand } from './commands/create-remote-secret.ts';
import { checkCommand } from './commands/check.ts';
import { downCommand, statusCommand, upCommand } from './commands/local.ts';
import { inspectCommands } from './commands/inspect.ts';
import { applyCommand, deleteCommand } from './commands/apply.ts';
import { topCommand } from './commands/top.ts';
import { waypointCommand } from './commands/waypoint.ts';
import { tapCommand } from './commands/tap.ts';
import { dashboardCommand } from './commands/dashboard.ts';
import { analyzeCommand } from './commands/analyze.ts';
import { versionCommand } from './commands/version.ts';
import { completionCommand } from './commands/completion.ts';
import { describeCommand } from './commands/describe.ts';
import { proxyStatusCommand } from './commands/proxy-status.ts';

export function program(): Command {
  const p = new Command('weftctl')
    .description('Weft: a sidecarless, eBPF-assisted ambient service mesh')
    .showHelpAfterError()
    .addCommand(upCommand())
    .addCommand(downCommand())
    .addCommand(statusCommand())
    .addCommand(applyCommand())
    .addCommand(deleteCommand())
    .addCommand(analyzeCommand())
    .addCommand(topCommand())
    .addCommand(tapCommand())
    .addCommand(dashboardCommand())
    .addCommand(waypointCommand())
    .addCommand(installCommand())
    .addCommand(uninstallCommand())
    .addCommand(createRemoteSecretCommand())
    .addCommand(checkCommand())
    .addCommand(describeCommand())
    .addCommand(proxyStatusCommand())
    .addCommand(versionCommand())
    .addCommand(completionCommand(program));
  for (const c of inspectCommands()) p.addCommand(c);
  return p;
}

if (import.meta.main) await program().parseAsync(process.argv);
