// The shape every command that works on a running local mesh shares: --prefix and --state-dir,
// a clear "start one with `weftctl up`" when none runs, and errors as one line with exit 1.
import { Command } from 'commander';
import { DEFAULT_PREFIX, DEFAULT_STATE_DIR, isRunning, readState, type LocalState } from '../local/up.ts';
import { exitUsageOnCommanderError, EXIT_FAILED, type CommandIo } from './install.ts';

export interface LocalMeshFlags {
  prefix: string;
  stateDir: string;
}

/** Adds the local-mesh options to `cmd`. */
export function localMeshOptions(cmd: Command): Command {
  return cmd
    .option('--prefix <name>', 'local mesh prefix', DEFAULT_PREFIX)
    .option('--state-dir <dir>', 'local mesh state folder', DEFAULT_STATE_DIR);
}

/** The running mesh's state, or undefined after telling the user how to start one. */
export function runningMesh(io: CommandIo, f: LocalMeshFlags): LocalState | undefined {
  const st = readState(f.stateDir);
  if (st && isRunning(f.prefix)) return st;
  io.err(`weftctl: no local mesh "${f.prefix}" is running; start one with \`weftctl up\`\n`);
  io.setExitCode(EXIT_FAILED);
  return undefined;
}

/**
 * A command that needs a running local mesh: `configure` adds its own options, `run` does the
 * work; a thrown error becomes `weftctl <label>: <message>` and exit code 1.
 */
export function localMeshCommand<F extends LocalMeshFlags>(
  name: string,
  label: string,
  io: CommandIo,
  configure: (cmd: Command) => Command,
  run: (st: LocalState, f: F) => Promise<void>,
): Command {
  return configure(localMeshOptions(exitUsageOnCommanderError(new Command(name), io))).action(async (f: F) => {
    const st = runningMesh(io, f);
    if (!st) return;
    try {
      await run(st, f);
    } catch (err) {
      io.err(`weftctl ${label}: ${(err as Error).message}\n`);
      io.setExitCode(EXIT_FAILED);
    }
  });
}
