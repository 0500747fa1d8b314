// Error classes of the model layer. Each failure kind has a stable `code`.

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
