// Running the host's networking tools (ip, sysctl, tc) with errors that say which command failed.
import { execFileSync } from 'node:child_process';

export class CommandError extends Error {
  readonly code = 'WEFT_COMMAND_FAILED';
  readonly command: string;
  constructor(command: string, detail: string) {
    super(`${command}: ${detail}`);
    this.name = 'CommandError';
    this.command = command;
  }
}

export interface RunOptions {
  input?: string;
  /** Return '' instead of throwing when the command fails (cleanup paths). */
  allowFail?: boolean;
}

/** Runs a command synchronously and returns its stdout. */
export function run(cmd: string, args: string[], opts: RunOptions = {}): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'], input: opts.input });
  } catch (err) {
    if (opts.allowFail) return '';
    const e = err as { stderr?: string; message: string };
    throw new CommandError(`${cmd} ${args.join(' ')}`, (e.stderr || e.message).trim());
  }
}

/** Runs a command inside a named network namespace (ip netns exec). */
export function runIn(netns: string, cmd: string, args: string[], opts: RunOptions = {}): string {
  return run('ip', ['netns', 'exec', netns, cmd, ...args], opts);
}
