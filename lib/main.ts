// How every Weft process starts (controller, agent, waypoint): parse the command line into typed
// options (a pure function, importable and table-tested, that throws naming the flag), run with
// those options (returns what is running), stop on SIGTERM or SIGINT. One place for the exit codes
// and the shape of a startup error, so the parts cannot drift:
//   2  the command line was wrong: `<part>: <message>` on stderr (the message names the flag);
//   1  the part failed to start, or failed later: `<part>: <code>: <message>` on stderr;
//   0  stopped by a signal (a second signal exits at once), or a one-shot command finished.
import { validateTrustDomain } from './identity/spiffe.ts';

/** The command line was wrong; the message says which flag. */
export class UsageError extends Error {
  readonly code = 'WEFT_USAGE';
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** A part's own kind of usage error, made from its message (default UsageError). */
export type FlagErrorOf = (message: string) => Error;

const usageError: FlagErrorOf = (message) => new UsageError(message);

/**
 * `--trust-domain` (when given) and each `--trust-domain-alias`, as every part takes them: the
 * aliases (none when absent), or a UsageError (or `error`'s) naming the flag and the value that is
 * not a trust domain (validateTrustDomain).
 */
export function trustDomainFlags(trustDomain: string | undefined, aliases: readonly string[] | undefined, error: FlagErrorOf = usageError): string[] {
  const check = (flag: string, td: string): void => {
    try { validateTrustDomain(td); } catch (err) { throw error(`--${flag}: ${(err as Error).message}`); }
  };
  if (trustDomain !== undefined) check('trust-domain', trustDomain);
  for (const td of aliases ?? []) check('trust-domain-alias', td);
  return [...(aliases ?? [])];
}

/** The command line that hands `aliases` on to a part (trustDomainFlags reads it back). */
export function trustDomainAliasArgs(aliases: readonly string[] | undefined): string[] {
  return (aliases ?? []).flatMap((td) => ['--trust-domain-alias', td]);
}

/**
 * The value of --`flag`, `v`, as a whole number of `what` from `min` to `max` (no bound: from `min`
 * up); else a UsageError (or `error`'s, a part's own kind) naming the flag and the range.
 */
export function countFlag(flag: string, v: string, what: string, min: number, max = Infinity, error: FlagErrorOf = usageError): number {
  const n = /^\s*[0-9]+\s*$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw error(`--${flag}: "${v}" is not a whole number of ${what} from ${min} ${max === Infinity ? 'up' : `to ${max}`}`);
  return n;
}

/** The value of --`flag`, `v`, when it is one of `allowed`; else a UsageError (or `error`'s) naming the flag and the values. */
export function oneOfFlag<T extends string>(flag: string, v: string, allowed: readonly T[], error: FlagErrorOf = usageError): T {
  if (!(allowed as readonly string[]).includes(v)) throw error(`--${flag}: "${v}" is not one of ${allowed.join(', ')}`);
  return v as T;
}

/** What a part's run step returns: something to stop, or nothing when the command is done. */
export interface Running {
  stop(signal: NodeJS.Signals): Promise<void>;
  /** Rejects if the part fails after it started (exit 1, as a failed start). */
  failed?: Promise<unknown>;
}

export interface MainIo {
  err: (line: string) => void;
  exit: (code: number) => void;
  onSignal: (sig: NodeJS.Signals, handler: () => void) => void;
}

const processIo: MainIo = {
  err: (line) => process.stderr.write(`${line}\n`),
  exit: (code) => process.exit(code),
  onSignal: (sig, handler) => process.once(sig, handler),
};

/** parse → options → run, with the exit codes above. */
export async function runMain<O>(part: string, parse: () => O, run: (o: O) => Promise<Running | undefined>, io: MainIo = processIo): Promise<void> {
  let options: O;
  try {
    options = parse();
  } catch (e) {
    io.err(`${part}: ${(e as Error).message}`);
    io.exit(2);
    return;
  }
  const fatal = (e: unknown) => {
    const err = e as Error & { code?: string };
    io.err(`${part}: ${err.code ? `${err.code}: ` : ''}${err.message}`);
    io.exit(1);
  };
  let running: Running | undefined;
  try {
    running = await run(options);
  } catch (e) {
    fatal(e);
    return;
  }
  running?.failed?.catch(fatal);
  if (!running) {
    io.exit(0);
    return;
  }
  const r = running;
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    io.onSignal(sig, () => {
      r.stop(sig).then(() => io.exit(0), (e: Error) => {
        io.err(`${part}: stopping failed: ${e.message}`);
        io.exit(1);
      });
      io.onSignal(sig, () => io.exit(0));
    });
  }
}
