// BpfError: the one error every failure of the binding surfaces as. `code` is the errno name
// ('ENOENT', 'EPERM', ...) for kernel and libbpf failures, or a WEFT_* code for failures found on
// this side (a verifier rejection, a codec that does not fit its map, a closed handle).
export const ErrorCodes = {
  /** The kernel's verifier rejected a program; `verifierLog` holds the tail of its log. */
  verifier: 'WEFT_VERIFIER',
  /** A key or value whose size does not match the map (or a codec that does not fit it). */
  size: 'WEFT_SIZE_MISMATCH',
  /** A program or map was asked for before BpfObject#load(). */
  notLoaded: 'WEFT_NOT_LOADED',
  /** The handle was closed. */
  closed: 'WEFT_CLOSED',
} as const;

/** How many lines of the verifier log BpfError#verifierLog keeps, and how many the message shows. */
export const VERIFIER_LOG_TAIL_LINES = 60;
export const VERIFIER_MESSAGE_LINES = 12;
/** How many of libbpf's warning lines a (non-verifier) failure's message quotes. */
export const LIBBPF_MESSAGE_LINES = 3;

export interface BpfErrorContext {
  /** Path of the object file involved. */
  object?: string;
  program?: string;
  map?: string;
  /** Filesystem path involved: a pin, a cgroup, a netns file, the object file. */
  path?: string;
}

export interface BpfErrorFields extends BpfErrorContext {
  code: string;
  errno?: number;
  syscall?: string;
  verifierLog?: string;
  libbpfLog?: string;
  cause?: unknown;
}

export class BpfError extends Error {
  readonly code: string;
  /** Positive errno, or 0 when the failure did not come from the kernel or libbpf. */
  readonly errno: number;
  readonly syscall?: string;
  readonly object?: string;
  readonly program?: string;
  readonly map?: string;
  readonly path?: string;
  /** For WEFT_VERIFIER: the last VERIFIER_LOG_TAIL_LINES lines of the kernel's verifier log. */
  readonly verifierLog?: string;
  /** What libbpf printed during the failed call (warnings only). */
  readonly libbpfLog?: string;

  constructor(message: string, fields: BpfErrorFields) {
    super(message, fields.cause === undefined ? undefined : { cause: fields.cause });
    this.name = 'BpfError';
    this.code = fields.code;
    this.errno = fields.errno ?? 0;
    if (fields.syscall !== undefined) this.syscall = fields.syscall;
    if (fields.object !== undefined) this.object = fields.object;
    if (fields.program !== undefined) this.program = fields.program;
    if (fields.map !== undefined) this.map = fields.map;
    if (fields.path !== undefined) this.path = fields.path;
    if (fields.verifierLog !== undefined) this.verifierLog = fields.verifierLog;
    if (fields.libbpfLog !== undefined) this.libbpfLog = fields.libbpfLog;
  }
}

/** The last `lines` non-empty lines of a log. */
export function logTail(log: string, lines: number): string {
  const all = log.split('\n').filter((l) => l.trim() !== '');
  return all.slice(-lines).join('\n');
}

const HINTS: Record<string, string> = {
  EPERM: 'run as root or with CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN',
  EACCES: 'run as root or with CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN',
  ENOENT: 'check that the path exists',
  EEXIST: 'something is already there',
};
/** Hints for map element operations, where ENOENT and EEXIST are about keys. */
const MAP_HINTS: Record<string, string> = {
  ENOENT: 'the key is not in the map',
  EEXIST: 'the key is already in the map',
  E2BIG: 'the map is full (max_entries)',
};

interface NativeErrorShape {
  message?: string;
  errno?: number;
  code?: string;
  syscall?: string;
  reason?: string;
  path?: string;
  program?: string;
  map?: string;
  verifierLog?: string;
  libbpfLog?: string;
}

/**
 * Turns an error thrown by the addon into a BpfError that says what was being done (`what`, e.g.
 * "cannot attach weft_connect4 to cgroup /sys/fs/cgroup/x") and carries the context's names.
 */
export function toBpfError(err: unknown, what: string, ctx: BpfErrorContext = {}): BpfError {
  if (err instanceof BpfError) return err;
  const e = (err ?? {}) as NativeErrorShape;
  if (e.errno === undefined || e.code === undefined) {
    // A TypeError from argument checking, or something unexpected: keep it as the cause.
    return new BpfError(`${what}: ${e.message ?? String(err)}`, { code: 'EINVAL', errno: 22, cause: err, ...ctx });
  }
  const fields: BpfErrorFields = {
    code: e.code,
    errno: Math.abs(e.errno), // Node's fs errors carry it negative
    cause: err,
    ...ctx,
  };
  if (e.syscall !== undefined) fields.syscall = e.syscall;
  if (ctx.path === undefined && e.path) fields.path = e.path;
  if (ctx.program === undefined && e.program) fields.program = e.program;
  if (ctx.map === undefined && e.map) fields.map = e.map;
  if (e.libbpfLog) fields.libbpfLog = e.libbpfLog;
  if (e.verifierLog !== undefined) {
    fields.code = ErrorCodes.verifier;
    fields.verifierLog = logTail(e.verifierLog, VERIFIER_LOG_TAIL_LINES);
    const prog = fields.program ? `program ${fields.program}` : 'a program';
    return new BpfError(
      `the kernel verifier rejected ${prog}${ctx.object ? ` of ${ctx.object}` : ''} (${e.code}); its log ends:\n` +
        logTail(e.verifierLog, VERIFIER_MESSAGE_LINES),
      fields,
    );
  }
  const hint = (e.syscall?.startsWith('bpf_map_') ? MAP_HINTS : HINTS)[e.code];
  const detail = e.reason ? `${e.reason} (${e.code} from ${e.syscall ?? 'libbpf'})` : (e.message ?? e.code);
  // libbpf's first warnings name the cause ("couldn't reuse pinned map at '...': parameter mismatch").
  const said = (e.libbpfLog ?? '').split('\n').map((l) => l.replace(/^libbpf: /, '').trim()).filter(Boolean);
  const cause = said.length ? `\nlibbpf said: ${said.slice(0, LIBBPF_MESSAGE_LINES).join('; ')}` : '';
  return new BpfError(`${what}: ${detail}${hint ? `; ${hint}` : ''}${cause}`, fields);
}

/** Runs a native call, converting whatever it throws with toBpfError. */
export function guard<T>(what: string, ctx: BpfErrorContext, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw toBpfError(err, what, ctx);
  }
}

export function closedError(kind: string, name: string, ctx: BpfErrorContext = {}): BpfError {
  return new BpfError(`${kind} ${name} is closed`, { code: ErrorCodes.closed, errno: 9, ...ctx });
}
