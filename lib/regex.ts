// Regular expressions from configuration (route path/header/query matches) run on RE2 semantics, as
// Envoy's safe_regex does: matching takes time linear in the input, so a pattern such as `^/(a+)+$`
// cannot stall the event loop on an attacker's path (V8's RegExp backtracks). re2js is RE2 ported to
// JavaScript: no native build, and no look-around or backreferences (RE2 rejects them; so do we,
// with the reason, at validation time).
import { RE2JS } from 're2js';

/** Longest pattern accepted (characters). */
export const MAX_REGEX_LENGTH = 1024;
/**
 * Largest compiled program accepted (RE2 instructions; Envoy's limit is `max_program_size`). Repeats
 * such as `[a-z]{1,1000}` grow the program, and matching time is proportional to it.
 */
export const MAX_REGEX_PROGRAM_SIZE = 2000;
/** Longest input matched (characters); a longer value does not match. */
export const MAX_REGEX_INPUT_LENGTH = 16 * 1024;
/**
 * What checking one object's patterns may compile, in RE2 instructions (RegexBudget): 8 patterns at
 * MAX_REGEX_PROGRAM_SIZE, or 1,000 small ones (MIN_REGEX_COST each). The controller validates every
 * object a tenant writes in its one thread, and re2js takes 2 to 5 us an instruction (6 ms for
 * `x[a-z]{1,900}`, 1,802 instructions) and 50 us a small pattern: unbounded, one HTTPRoute within
 * the Gateway API CRDs' bounds (128 matches of a path and 16 headers, about 100 KB) took 12 s of it
 * at each write, and a policy of 20,000 namespace patterns 1.1 s; within it about 50 ms. Neither
 * Istio nor the Gateway API bounds patterns per object; Envoy bounds each one (max_program_size).
 */
export const MAX_OBJECT_REGEX_COST = 16_000;
/** The least one compiled pattern is charged (its compile's fixed cost, as RE2 instructions). */
export const MIN_REGEX_COST = 16;

export class RegexError extends Error {
  readonly code = 'WEFT_REGEX_INVALID';
  constructor(message: string) {
    super(message);
    this.name = 'RegexError';
  }
}

/** A compiled full-string matcher (RE2 anchoring, as Envoy applies route regexes). */
export type FullMatch = (input: string) => boolean;

/**
 * Compiles `pattern` to a full-string matcher; throws RegexError saying why RE2 cannot take it.
 * An input longer than `maxInput` (default MAX_REGEX_INPUT_LENGTH) does not match: right for a
 * route, which then is not taken; a policy's pattern, where not matching a DENY would let the
 * input through, passes Infinity (RE2 is linear in the input either way).
 */
export function compileFullMatch(pattern: string, maxInput = MAX_REGEX_INPUT_LENGTH): FullMatch {
  const { re } = compileProgram(pattern);
  return (input) => input.length <= maxInput && re.matches(input);
}

/** `pattern` compiled, with its size in RE2 instructions; throws RegexError saying why RE2 cannot take it. */
function compileProgram(pattern: string): { re: RE2JS; size: number } {
  if (typeof pattern !== 'string') throw new RegexError('is not a string');
  if (pattern.length > MAX_REGEX_LENGTH) throw new RegexError(`is ${pattern.length} characters long; the limit is ${MAX_REGEX_LENGTH}`);
  let re: RE2JS;
  try {
    re = RE2JS.compile(pattern);
  } catch (e) {
    throw new RegexError(`is not an RE2 regular expression: ${(e as Error).message}`);
  }
  const size = Number(re.re2().numberOfInstructions());
  if (size > MAX_REGEX_PROGRAM_SIZE) throw new RegexError(`compiles to ${size} RE2 instructions; the limit is ${MAX_REGEX_PROGRAM_SIZE}`);
  return { re, size };
}

/**
 * Compiled route patterns kept from one build of a configuration to the next (the waypoint's
 * snapshots): a rebuild for a change elsewhere (a Service's endpoints) compiles only the patterns it
 * has not seen, where it compiled every route's again, another namespace's consumer routes
 * included (about 6 ms each near MAX_REGEX_PROGRAM_SIZE in re2js). Holds the patterns of the last
 * build only: `sweep()` at the end of each forgets the others.
 */
export class RegexCache {
  #kept = new Map<string, FullMatch>();
  #used = new Map<string, FullMatch>();
  #compiled = 0;

  /** `pattern` as compileFullMatch compiles it (throws its RegexError), from this build or the last when seen there. */
  compile(pattern: string): FullMatch {
    let m = this.#used.get(pattern);
    if (m) return m;
    m = this.#kept.get(pattern);
    if (!m) {
      m = compileFullMatch(pattern);
      this.#compiled++;
    }
    this.#used.set(pattern, m);
    return m;
  }

  /** Ends a build: what it did not use is forgotten. */
  sweep(): void {
    this.#kept = this.#used;
    this.#used = new Map();
  }

  /** Patterns compiled so far (not taken from a build before). */
  get compiled(): number {
    return this.#compiled;
  }

  /** Patterns held (those of the last build, after its sweep). */
  get size(): number {
    return this.#kept.size + this.#used.size;
  }
}

/**
 * What checking one object's patterns may still compile (MAX_OBJECT_REGEX_COST): each pattern
 * checked is charged its size, at least MIN_REGEX_COST; once spent, the object's later patterns are
 * refused without being compiled.
 */
export class RegexBudget {
  #left: number;
  constructor(cost = MAX_OBJECT_REGEX_COST) {
    this.#left = cost;
  }

  /** Charges a compiled pattern of `size` instructions. */
  charge(size: number): void {
    this.#left -= Math.max(size, MIN_REGEX_COST);
  }

  get spent(): boolean {
    return this.#left <= 0;
  }
}

/** `s` as a pattern matching exactly itself (RE2 and JavaScript alike). */
export function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Why `pattern` cannot be used, or undefined (for validators); `budget`: the object's (RegexBudget). */
export function regexProblem(pattern: string, budget?: RegexBudget): string | undefined {
  if (budget?.spent) return `is past the budget of ${MAX_OBJECT_REGEX_COST} RE2 instructions that one object's patterns may compile to (at least ${MIN_REGEX_COST} a pattern), reached by the patterns before it; it is not compiled`;
  try {
    budget?.charge(compileProgram(pattern).size);
    return undefined;
  } catch (e) {
    budget?.charge(0);
    return (e as Error).message;
  }
}

/**
 * The path pattern of a GRPCMethodMatch of type RegularExpression (`/service/method`): each part a
 * group of its own, so that an alternation (`Get|List`) stays inside its part; a part left out
 * matches any name. The controller compiles the match to it and validation checks it whole, since
 * two parts each within the limits can exceed them together.
 */
export function grpcMethodPattern(service: string | undefined, method: string | undefined): string {
  return `^/(?:${service ?? '[^/]+'})/(?:${method ?? '[^/]+'})$`;
}
