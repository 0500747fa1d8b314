// YAML/JSON manifests → Kubernetes-shaped objects: one parser for every reader of files (the
// controller's config directory, weftctl apply/delete/analyze). Hostile text costs only itself:
// parse errors, alias bombs (the yaml library refuses more than 100 alias expansions per
// document), nesting deep enough to overflow the stack (refused before parsing: the parser spends
// ~40 µs per level before it gives up, minutes for a few megabytes of `[`), and documents that are
// not objects all come back as problems naming the document and line, never as a thrown exception.
import { parseAllDocuments } from 'yaml';

/** An object as read from a manifest, before validation. */
export interface ManifestObject {
  apiVersion: string;
  kind: string;
  metadata?: { name?: unknown; namespace?: unknown; [k: string]: unknown };
  [k: string]: unknown;
}

export interface ManifestProblem {
  /** 1-based document number in the file. */
  document: number;
  line?: number;
  message: string;
  /**
   * The file as a whole cannot be trusted (a document does not parse, cannot be expanded or is
   * not an object); otherwise only this document was skipped (not a Kubernetes object).
   */
  fatal: boolean;
}

export interface ParsedManifest {
  objects: ManifestObject[];
  problems: ManifestProblem[];
}

/**
 * Every object in `text`: YAML documents separated by `---` (JSON is YAML), a `kind: List`
 * expanded into its items. Parsing stops at the first fatal problem.
 */
export function parseManifest(text: string): ParsedManifest {
  const objects: ManifestObject[] = [];
  const problems: ManifestProblem[] = [];
  const deep = tooDeep(text);
  if (deep) return { objects, problems: [{ document: deep.document, line: deep.line, message: `nests deeper than ${MAX_NESTING} levels; refused without parsing`, fatal: true }] };
  let docs: ReturnType<typeof parseAllDocuments>;
  try {
    docs = parseAllDocuments(text, { prettyErrors: true });
  } catch (e) {
    // Deep nesting can overflow the parser's stack.
    return { objects, problems: [{ document: 1, message: `does not parse: ${firstLine(e)}`, fatal: true }] };
  }
  const list = Array.isArray(docs) ? docs : [docs];
  for (const [i, doc] of list.entries()) {
    const document = i + 1;
    if (doc.errors.length > 0) {
      const err = doc.errors[0]!;
      const line = err.linePos?.[0]?.line;
      problems.push({ document, ...(line ? { line } : {}), message: `does not parse: ${firstLine(err)}`, fatal: true });
      return { objects, problems };
    }
    let value: unknown;
    try {
      // toJS expands aliases: a file of nested aliases (a "billion laughs" bomb) throws here.
      value = doc.toJS();
    } catch (e) {
      problems.push({ document, message: `cannot be read: ${firstLine(e)}`, fatal: true });
      return { objects, problems };
    }
    if (value === null || value === undefined) continue;
    if (typeof value !== 'object' || Array.isArray(value)) {
      problems.push({ document, message: 'is not an object', fatal: true });
      return { objects, problems };
    }
    const o = value as Record<string, unknown>;
    if (typeof o.kind !== 'string' || typeof o.apiVersion !== 'string') {
      problems.push({ document, message: 'is not a Kubernetes object (no apiVersion/kind); skipped', fatal: false });
      continue;
    }
    if (o.kind === 'List' && Array.isArray(o.items)) {
      for (const [j, item] of (o.items as unknown[]).entries()) {
        if (item && typeof item === 'object' && !Array.isArray(item) && typeof (item as ManifestObject).kind === 'string' && typeof (item as ManifestObject).apiVersion === 'string') {
          objects.push(item as ManifestObject);
        } else problems.push({ document, message: `items[${j}] is not a Kubernetes object (no apiVersion/kind); skipped`, fatal: false });
      }
    } else objects.push(o as ManifestObject);
  }
  return { objects, problems };
}

/** Deepest nesting a manifest may have (Kubernetes objects, CRD schemas included, stay far below). */
export const MAX_NESTING = 100;

/**
 * The first place where flow collections (`[`, `{`) or block indentation (two columns a level)
 * nest deeper than {@link MAX_NESTING}: a linear scan that skips quoted text and comments on each
 * line. It may undercount in odd plain scalars; it never parses.
 */
function tooDeep(text: string): { document: number; line: number } | undefined {
  let depth = 0;
  let line = 1;
  let document = 1;
  let lineStart = true;
  let indent = 0;
  let quote = '';
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 10) {
      line++;
      lineStart = true;
      indent = 0;
      quote = '';
      continue;
    }
    if (lineStart) {
      if (c === 32) {
        if (++indent > 2 * MAX_NESTING) return { document, line };
        continue;
      }
      lineStart = false;
      if (indent === 0 && text.startsWith('---', i)) document++;
    }
    if (quote) {
      if (c === 92 && quote === '"') i++;
      else if (String.fromCharCode(c) === quote) quote = '';
      continue;
    }
    if (c === 34 || c === 39) quote = String.fromCharCode(c);
    else if (c === 35 && (i === 0 || text.charCodeAt(i - 1) === 32 || text.charCodeAt(i - 1) === 9)) {
      const nl = text.indexOf('\n', i);
      i = (nl < 0 ? text.length : nl) - 1;
    } else if (c === 91 || c === 123) {
      if (++depth > MAX_NESTING) return { document, line };
    } else if ((c === 93 || c === 125) && depth > 0) depth--;
  }
  return undefined;
}

/** `document 2 (line 7) does not parse: …` */
export function formatManifestProblem(p: ManifestProblem): string {
  return `document ${p.document}${p.line ? ` (line ${p.line})` : ''} ${p.message}`;
}

function firstLine(e: unknown): string {
  return String((e as Error)?.message ?? e).split('\n')[0]!;
}
