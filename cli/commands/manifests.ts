// `-f FILE|DIR|-` for apply, delete and analyze: several files, directories (every *.yaml, *.yml
// and *.json below them, hidden entries skipped, as the controller's config directory reads them)
// and standard input. Input that cannot be used (missing, unreadable, too large, binary, YAML that
// does not parse or expands into an alias bomb) is a ManifestInputError naming the source, never a
// stack trace.
import { readdirSync, statSync, openSync, readSync, closeSync } from 'node:fs';
import { join, relative, sep } from 'node:path';
import { parseManifest, formatManifestProblem, type ManifestObject } from '../../lib/model/manifest.ts';

/** Largest manifest read from one file or stdin (Kubernetes itself caps an object at 1.5 MiB). */
export const MAX_MANIFEST_BYTES = 8 * 1024 * 1024;
const EXTENSIONS = /\.(ya?ml|json)$/;

/** One source's text: a file, a file found in a directory, or `-` (stdin). */
export interface ManifestText {
  /** As the user named it (a file under a directory: the directory joined with its path). */
  source: string;
  text: string;
}

export interface ManifestFile extends ManifestText {
  objects: ManifestObject[];
  /** Documents skipped (not Kubernetes objects), one line each. */
  warnings: string[];
}

export class ManifestInputError extends Error {
  readonly code = 'WEFT_MANIFEST_INPUT';
  readonly source: string;
  constructor(source: string, message: string) {
    super(`${source}: ${message}`);
    this.name = 'ManifestInputError';
    this.source = source;
  }
}

/** Reads stdin (fd 0) up to the limit; replaced in tests. */
export type StdinReader = () => Buffer;

export function readStdin(limit = MAX_MANIFEST_BYTES): Buffer {
  const chunks: Buffer[] = [];
  let total = 0;
  const buf = Buffer.alloc(64 * 1024);
  for (;;) {
    let n: number;
    try {
      n = readSync(0, buf, 0, buf.length, null);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN') continue;
      if (code === 'EOF') break;
      throw e;
    }
    if (n === 0) break;
    total += n;
    if (total > limit) throw new ManifestInputError('-', `standard input is larger than ${limit} bytes`);
    chunks.push(Buffer.from(buf.subarray(0, n)));
  }
  return Buffer.concat(chunks);
}

function readLimited(path: string, source: string, limit: number): Buffer {
  const tooLarge = () => new ManifestInputError(source, `is larger than the ${limit} bytes a manifest may have`);
  if (statSync(path).size > limit) throw tooLarge();
  const fd = openSync(path, 'r');
  try {
    // Bounded even when the size lies (a file that grows while read, a FIFO, /dev/zero).
    let buf = Buffer.alloc(Math.min(64 * 1024, limit + 1));
    let got = 0;
    for (;;) {
      if (got === buf.length) {
        if (got > limit) throw tooLarge();
        const bigger = Buffer.alloc(Math.min(buf.length * 2, limit + 1));
        buf.copy(bigger);
        buf = bigger;
      }
      const n = readSync(fd, buf, got, buf.length - got, null);
      if (n === 0) return buf.subarray(0, got);
      got += n;
      if (got > limit) throw tooLarge();
    }
  } finally {
    closeSync(fd);
  }
}

/** UTF-8 text, or an error for binary input (NUL bytes or invalid UTF-8). */
export function decodeText(bytes: Buffer, source: string): string {
  if (bytes.includes(0)) throw new ManifestInputError(source, 'is binary (it holds NUL bytes), not YAML or JSON');
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new ManifestInputError(source, 'is not UTF-8 text, not YAML or JSON');
  }
}

function describeFsError(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  switch (err.code) {
    case 'ENOENT': return 'no such file or directory';
    case 'EACCES': case 'EPERM': return 'permission denied';
    case 'ELOOP': return 'too many levels of symbolic links';
    case 'ENOTDIR': return 'a path component is not a directory';
    default: return err.message;
  }
}

/** The text of every source, in order; directories expand to their manifest files, sorted. */
export function readManifestTexts(sources: readonly string[], stdin: StdinReader = readStdin, limit = MAX_MANIFEST_BYTES): ManifestText[] {
  if (sources.length === 0) throw new ManifestInputError('-f', 'give at least one file, directory or - (standard input)');
  const out: ManifestText[] = [];
  let stdinRead = false;
  for (const source of sources) {
    if (source === '-') {
      if (stdinRead) throw new ManifestInputError('-', 'standard input can be read only once');
      stdinRead = true;
      out.push({ source: '-', text: decodeText(stdin(), '-') });
      continue;
    }
    let isDir: boolean;
    try {
      isDir = statSync(source).isDirectory();
    } catch (e) {
      throw new ManifestInputError(source, describeFsError(e));
    }
    const files = isDir ? manifestFilesUnder(source) : [source];
    if (isDir && files.length === 0) throw new ManifestInputError(source, 'holds no *.yaml, *.yml or *.json file');
    for (const f of files) {
      let bytes: Buffer;
      try {
        bytes = readLimited(f, f, limit);
      } catch (e) {
        if (e instanceof ManifestInputError) throw e;
        throw new ManifestInputError(f, describeFsError(e));
      }
      out.push({ source: f, text: decodeText(bytes, f) });
    }
  }
  return out;
}

function manifestFilesUnder(dir: string): string[] {
  let entries;
  try {
    entries = readdirSync(dir, { recursive: true, withFileTypes: true });
  } catch (e) {
    throw new ManifestInputError(dir, describeFsError(e));
  }
  const out: string[] = [];
  for (const e of entries) {
    const full = join(e.parentPath, e.name);
    const rel = relative(dir, full);
    if (!EXTENSIONS.test(e.name) || rel.split(sep).some((seg) => seg.startsWith('.'))) continue;
    let file = e.isFile();
    if (!file && e.isSymbolicLink()) {
      try {
        file = statSync(full).isFile();
      } catch {
        file = false;
      }
    }
    if (file) out.push(full);
  }
  return out.sort();
}

/** Parses one source's text; a file that does not parse is a ManifestInputError. */
export function parseManifestText(t: ManifestText): ManifestFile {
  const parsed = parseManifest(t.text);
  const warnings: string[] = [];
  for (const p of parsed.problems) {
    if (p.fatal) throw new ManifestInputError(t.source, formatManifestProblem(p));
    warnings.push(`${t.source}: ${formatManifestProblem(p)}`);
  }
  return { ...t, objects: parsed.objects, warnings };
}

/** Reads and parses every source. */
export function readManifests(sources: readonly string[], stdin: StdinReader = readStdin, limit = MAX_MANIFEST_BYTES): ManifestFile[] {
  return readManifestTexts(sources, stdin, limit).map(parseManifestText);
}
