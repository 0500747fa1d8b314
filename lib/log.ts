// JSON-lines logger shared by every part. Tests pass their own Logger to capture lines.
export type LogFields = Record<string, unknown>;

export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
}

const LEVELS = { debug: 10, info: 20, warn: 30, error: 40 } as const;
export type LogLevel = keyof typeof LEVELS;

/** Is `value` a log level? (every part's `--log-level` flag) */
export function isLogLevel(value: string): value is LogLevel {
  return Object.hasOwn(LEVELS, value);
}

export function jsonLogger(component: string, level: LogLevel = 'info', write: (line: string) => void = (l) => process.stderr.write(l + '\n')): Logger {
  const min = LEVELS[level];
  const log = (lvl: LogLevel) => (msg: string, fields?: LogFields) => {
    if (LEVELS[lvl] < min) return;
    write(JSON.stringify({ time: new Date().toISOString(), level: lvl, component, msg, ...fields }));
  };
  return { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') };
}

export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/**
 * Refusal log lines a second, at most, for every part's refusals (HBONE, plaintext, kernel, the CA,
 * the config stream, side ports): a refusal's reason and authority are often the peer's to choose
 * and cost it a byte (HPACK), and a flood must not become log volume. Every refusal is still counted.
 */
export const REFUSAL_LOG_PER_SECOND = 50;

/**
 * At most `perSecond` lines a second for one kind of event a peer can cause at will (refusals):
 * `take()` says whether to write this one; the others are counted, and `onSuppressed` is told how
 * many were left out once the next second's first event comes. Counters stay exact; only lines are
 * dropped, so that a peer cannot make the log cost more than its own traffic.
 */
export class LogBudget {
  #second = 0;
  #lines = 0;
  #suppressed = 0;

  readonly perSecond: number;
  readonly #onSuppressed: (count: number) => void;

  constructor(perSecond: number, onSuppressed: (count: number) => void) {
    this.perSecond = perSecond;
    this.#onSuppressed = onSuppressed;
  }

  take(now = Date.now()): boolean {
    const second = Math.floor(now / 1000);
    if (second !== this.#second) {
      if (this.#suppressed > 0) this.#onSuppressed(this.#suppressed);
      this.#second = second;
      this.#lines = 0;
      this.#suppressed = 0;
    }
    if (this.#lines >= this.perSecond) {
      this.#suppressed++;
      return false;
    }
    this.#lines++;
    return true;
  }
}

/** Control characters (C0, DEL, C1: ECMA-48 section 5): what a value a peer chose must not bring into a log line or a terminal. */
export const CONTROL_CHARACTERS = /[\x00-\x1f\x7f-\x9f]/g;
/** The same, but TAB and LF: text that keeps its own lines. */
export const CONTROL_CHARACTERS_BUT_TAB_LF = /[\x00-\x08\x0b-\x1f\x7f-\x9f]/g;

/**
 * Each character `which` matches (a global pattern; default every control) as `\u00XX`: visible
 * text in a line, and the same character inside a JSON string or a YAML double-quoted scalar.
 */
export function escapeControls(text: string, which: RegExp = CONTROL_CHARACTERS): string {
  return text.replace(which, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** A value a peer chose, cut to `max` characters for a log line (with how much was cut). */
export function clip(value: string | undefined, max = 256): string | undefined {
  if (value === undefined || value.length <= max) return value;
  return `${value.slice(0, max)}... (${value.length - max} more characters)`;
}
