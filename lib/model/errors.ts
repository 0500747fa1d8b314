// Error classes of the model layer. Each failure kind has a stable `code`.
import { clip } from '../log.ts';

export interface ValidationIssue {
  kind: string;
  namespace: string;
  name: string;
  /** Field path in the object, e.g. `spec.rules[0].from[0].source.ipBlocks[1]`. */
  path: string;
  message: string;
}

export function formatIssue(i: ValidationIssue): string {
  const who = i.namespace ? `${i.kind} ${i.namespace}/${i.name}` : `${i.kind} ${i.name}`;
  return `${who}: ${i.path}: ${i.message}`;
}

/** Issues of one refused object that its status and log line name; the rest are counted. */
export const MAX_ISSUES_NAMED = 10;
/** Longest text of one issue there (an issue quotes the value at fault, which may be a megabyte). */
export const MAX_ISSUE_CHARS = 1024;

/**
 * What a refused object's status or log line says of its issues: the first MAX_ISSUES_NAMED, each
 * cut to MAX_ISSUE_CHARS, then how many more. A condition's message holds at most 32,768
 * characters (metav1.Condition), and 50,000 issues in full made one of 6 MB: the status write
 * failed and was tried again every second, and each refusal logged its megabytes.
 */
export function summarizeIssues(issues: readonly ValidationIssue[]): string[] {
  const out = issues.slice(0, MAX_ISSUES_NAMED).map((i) => clip(formatIssue(i), MAX_ISSUE_CHARS)!);
  const more = issues.length - MAX_ISSUES_NAMED;
  if (more > 0) out.push(`and ${more.toLocaleString('en-US')} more issues`);
  return out;
}

/** An object failed validation; `issues` lists every field at fault. */
export class ValidationError extends Error {
  readonly code = 'WEFT_INVALID_OBJECT';
  readonly issues: ValidationIssue[];
  constructor(issues: ValidationIssue[]) {
    super(issues.length === 1 ? formatIssue(issues[0]!) : `${issues.length} problems:\n  ${issues.map(formatIssue).join('\n  ')}`);
    this.name = 'ValidationError';
    this.issues = issues;
  }
}

/** A duration string is not a Gateway API duration (`1h`, `30s`, `250ms`, `1m30s`). */
export class DurationError extends Error {
  readonly code = 'WEFT_BAD_DURATION';
  constructor(value: string) {
    super(`"${value}" is not a duration: write digits followed by h, m, s or ms, e.g. 30s or 1m30s`);
    this.name = 'DurationError';
  }
}
