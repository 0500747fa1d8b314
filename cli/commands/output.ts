// Output of every listing command: `-o table|wide|json|yaml` and `--no-headers`, one renderer.
// `table` shows the columns a terminal has room for, `wide` adds the rest; json and yaml print the
// full objects (what a script should parse, not the table).
import { Option, type Command } from 'commander';
import { stringify } from 'yaml';
import type { CommandIo } from './install.ts';
import { CONTROL_CHARACTERS_BUT_TAB_LF, escapeControls } from '../../lib/log.ts';

/**
 * Text for a terminal: every control character but TAB and LF (C0, DEL, C1: ECMA-48 section 5)
 * written as `\u00XX`, so what others wrote (names and fields from manifests or the API, paths and
 * headers from live flows) shows as text and never acts (ANSI colours, OSC 52 writing the
 * clipboard, CR overwriting the line, U+009B as CSI): the class of CVE-2021-25743, which
 * kubernetes/kubernetes#112553 fixed in kubectl. Inside a JSON string or a YAML double-quoted
 * scalar, `\u00XX` is the same character, so JSON and YAML output keep their values; JSON.stringify
 * and the YAML writer leave DEL and C1 raw. Every weftctl command writes through it (processIo).
 */
export function terminalSafe(text: string): string {
  return escapeControls(text, CONTROL_CHARACTERS_BUT_TAB_LF);
}

/** terminalSafe, and TAB and LF escaped too: one cell of a table, or one line of a stream. */
export function oneLine(text: string): string {
  return escapeControls(text);
}

export const OUTPUT_FORMATS = ['table', 'wide', 'json', 'yaml'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

export interface OutputFlags {
  output: OutputFormat;
  /** false with --no-headers. */
  headers: boolean;
}

/** Adds -o/--output and --no-headers. */
export function outputOptions(cmd: Command, formats: readonly OutputFormat[] = OUTPUT_FORMATS): Command {
  return cmd
    .addOption(new Option('-o, --output <format>', 'output format').choices(formats).default(formats[0]!))
    .option('--no-headers', 'tables without their header line');
}

/** Columns of text, padded to the widest cell. */
export function table(header: readonly string[], rows: readonly string[][], headers = true): string {
  const all = (headers ? [header, ...rows] : rows).map((r) => r.map(oneLine));
  if (all.length === 0) return '';
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  const line = (r: readonly string[]) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return all.map(line).join('\n') + '\n';
}

export interface Column<T> {
  header: string;
  value: (row: T) => string;
  /** Only with -o wide. */
  wide?: boolean;
}

/** json/yaml of `data` (default: the rows), or the table of `rows` in the chosen columns. */
export function renderList<T>(io: CommandIo, f: OutputFlags, rows: readonly T[], columns: readonly Column<T>[], data: unknown = rows): void {
  if (f.output === 'json') io.out(JSON.stringify(data, null, 2) + '\n');
  else if (f.output === 'yaml') io.out(stringify(data));
  else {
    const cols = columns.filter((c) => f.output === 'wide' || !c.wide);
    io.out(table(cols.map((c) => c.header), rows.map((r) => cols.map((c) => c.value(r))), f.headers));
  }
}

/** json or yaml of `data`; false when the format is a table (the caller draws it). */
export function renderData(io: CommandIo, f: OutputFlags, data: unknown): boolean {
  if (f.output === 'json') io.out(JSON.stringify(data, null, 2) + '\n');
  else if (f.output === 'yaml') io.out(stringify(data));
  else return false;
  return true;
}

export interface NamespaceFlags {
  namespace?: string;
  allNamespaces?: boolean;
}

/** Adds -n/--namespace and -A/--all-namespaces (listings show every namespace without -n). */
export function namespaceOptions(cmd: Command): Command {
  return cmd
    .option('-n, --namespace <ns>', 'only this namespace')
    .option('-A, --all-namespaces', 'every namespace (the default without -n)');
}

/** Whether an object in `ns` passes the -n/-A filter. */
export function inNamespace(f: NamespaceFlags, ns: string): boolean {
  return f.allNamespaces || !f.namespace || f.namespace === ns;
}
