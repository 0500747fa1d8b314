// The shape every command that works on a running local mesh shares: which mesh (the lab's
// prefix and state folder, from WEFT_LOCAL_PREFIX / WEFT_LOCAL_STATE_DIR or the hidden --prefix /
// --state-dir flags, visible only on `up` and `down`), a clear "start one with `weftctl up`" when
// none runs, and errors as one line with exit 1.
import { Command, Option } from 'commander';
import { DEFAULT_PREFIX, DEFAULT_STATE_DIR, isRunning, readState, type LocalState } from '../local/up.ts';
import { exitUsageOnCommanderError, EXIT_FAILED, type CommandIo } from './install.ts';

/** Environment variables that pick the local mesh (everyday commands do not show the flags). */
export const ENV_LOCAL_PREFIX = 'WEFT_LOCAL_PREFIX';
export const ENV_LOCAL_STATE_DIR = 'WEFT_LOCAL_STATE_DIR';

export interface LocalMeshFlags {
  prefix: string;
  stateDir: string;
}

/** Adds the local-mesh options to `cmd`; hidden from its help unless `visible` (up, down). */
export function localMeshOptions(cmd: Command, visible = false): Command {
  const prefix = new Option('--prefix <name>', `local mesh prefix (env ${ENV_LOCAL_PREFIX})`).default(process.env[ENV_LOCAL_PREFIX] || DEFAULT_PREFIX);
  const stateDir = new Option('--state-dir <dir>', `local mesh state folder (env ${ENV_LOCAL_STATE_DIR})`).default(process.env[ENV_LOCAL_STATE_DIR] || DEFAULT_STATE_DIR);
  if (!visible) {
    prefix.hideHelp();
    stateDir.hideHelp();
  }
  return cmd.addOption(prefix).addOption(stateDir);
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
