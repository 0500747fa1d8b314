// Runs a weftctl command in-process with captured output and exit code (no child process).
import { Command } from 'commander';
import type { CommandIo } from '../../cli/commands/install.ts';

class Exit extends Error {
  readonly exitCode: number;
  constructor(code: number) {
    super(`exit ${code}`);
    this.exitCode = code;
  }
}

export interface CapturedIo extends CommandIo {
  stdout: string;
  stderr: string;
  code: number | undefined;
}

export function captureIo(opts: { terminal?: boolean } = {}): CapturedIo {
  const s: CapturedIo = {
    stdout: '', stderr: '', code: undefined,
    out(text: string) { s.stdout += text; },
    err(text: string) { s.stderr += text; },
    exit(code: number): never { s.code = code; throw new Exit(code); },
    setExitCode(code: number) { s.code = code; },
    isTerminal: () => opts.terminal ?? false,
    clearScreen() { s.stdout += '\x1b[2J\x1b[H'; },
  };
  return s;
}

/** `weftctl <args>` with the commands `make` builds; exit code 0 when none was set. */
export async function runCommands(make: (io: CommandIo) => Command[], args: string[], opts: { terminal?: boolean } = {}): Promise<CapturedIo> {
  const out = captureIo(opts);
  const program = new Command('weftctl').exitOverride();
  for (const c of make(out)) program.addCommand(c);
  try {
    await program.parseAsync(args, { from: 'user' });
  } catch (err) {
    if (!(err instanceof Exit)) throw err;
  }
  out.code ??= 0;
  return out;
}

/** Nine levels of nine aliases each: 9^10 leaves once expanded. */
export function aliasBomb(): string {
  const lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]'];
  for (let i = 1; i <= 9; i++) lines.push(`${String.fromCharCode(97 + i)}: &${String.fromCharCode(97 + i)} [${Array(9).fill(`*${String.fromCharCode(96 + i)}`).join(',')}]`);
  return lines.join('\n') + '\n';
}

