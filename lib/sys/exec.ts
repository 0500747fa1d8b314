// Running the host's networking tools (ip, sysctl, tc) with errors that say which command failed,
// and collecting a spawned child's output.
import { execFileSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';

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

export interface ChildOutput {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Collects a child's stdout and stderr until it has exited AND its pipes are drained ('close',
 * not 'exit': 'exit' can come before the last output is read, so a loaded machine would sometimes
 * see a child that printed its answer as having printed nothing). After `timeoutMs` (when given)
 * the child is SIGKILLed and what it printed so far is returned. Call it right after spawning.
 */
export async function collectOutput(child: ChildProcess, timeoutMs?: number): Promise<ChildOutput> {
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (c: Buffer) => (stdout += c));
  child.stderr?.on('data', (c: Buffer) => (stderr += c));
  const timer = timeoutMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  try {
    const [code, signal] = (await once(child, 'close')) as [number | null, NodeJS.Signals | null];
    return { code, signal, stdout, stderr };
  } finally {
    clearTimeout(timer);
  }
}

export interface Stopped {
  /** How it ended: an exit code or the signal that ended it. */
  code: number | null;
  signal: NodeJS.Signals | null;
  /** It had ended before this was asked (a crash the caller should hear about). */
  alreadyExited: boolean;
  /** It did not end on `signal` within `graceMs` and was SIGKILLed. */
  killed: boolean;
  /** From the signal to the exit. */
  ms: number;
}

/**
 * Stops a child and waits for its exit, with a deadline: `signal` (SIGTERM unless told), then
 * SIGKILL after `graceMs`. Never waits forever: a child that had already exited (whose 'exit' has
 * been emitted and will not come again) returns at once with `alreadyExited`.
 */
export async function stopProcess(child: ChildProcess, opts: { signal?: NodeJS.Signals; graceMs?: number } = {}): Promise<Stopped> {
  const ended = () => child.exitCode !== null || child.signalCode !== null;
  if (ended()) return { code: child.exitCode, signal: child.signalCode, alreadyExited: true, killed: false, ms: 0 };
  const started = Date.now();
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
  let killed = false;
  child.kill(opts.signal ?? 'SIGTERM');
  const timer = setTimeout(() => {
    killed = true;
    child.kill('SIGKILL');
  }, opts.graceMs ?? 10_000);
  try {
    const [code, signal] = await exited;
    return { code, signal, alreadyExited: false, killed, ms: Date.now() - started };
  } finally {
    clearTimeout(timer);
  }
}
