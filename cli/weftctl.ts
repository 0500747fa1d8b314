#!/usr/bin/env node
// weftctl: the Weft command line. Local mesh (up/down/status), inspection, install, preflight.
import { Command } from 'commander';
import { installCommand } from './commands/install.ts';
import { uninstallCommand } from './commands/uninstall.ts';
import { checkCommand } from './commands/check.ts';
import { downCommand, statusCommand, upCommand } from './commands/local.ts';
import { inspectCommands } from './commands/inspect.ts';
import { applyCommand, deleteCommand } from './commands/apply.ts';
import { topCommand } from './commands/top.ts';
import { waypointCommand } from './commands/waypoint.ts';
import { tapCommand } from './commands/tap.ts';
import { dashboardCommand } from './commands/dashboard.ts';
import { analyzeCommand } from './commands/analyze.ts';

const program = new Command('weftctl')
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
  .addCommand(checkCommand());
for (const c of inspectCommands()) program.addCommand(c);

await program.parseAsync(process.argv);
