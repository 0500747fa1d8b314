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
  /** What checking the pattern is charged (RegexBudget): its estimate, or what it compiled to, when refused for its size. */
  readonly cost: number;
  constructor(message: string, cost = 0) {
    super(message);
    this.name = 'RegexError';
    this.cost = cost;
  }
}

const REPEAT = /^\{(\d+)(,(\d*))?\}/;

/**
 * The size of the program RE2 would compile `pattern` to, in instructions, from its syntax alone
 * (one pass, nothing compiled): Go's regexp/syntax calcSize, which RE2 and re2js apply at parse
 * time, over the text. A literal character, a class, `.`, `^`, `$` or an escape counts 1; a group
 * that captures 2 more; `x*` 2 more than x, `x+` and `x?` 1; `x{n,m}` m times x and m - n; `x{n,}`
 * n times x and 1; alternatives add up (an empty one 1), and 1 for each `|`, except that adjacent
 * alternatives of one character each (a literal, a class, `.`) are one class, as RE2 merges them
 * (Go regexp/syntax swapVerticalBar): `(?:a|b|-){9}` is 9. Counted repeats multiply, so
 * `(?:a{1000}){1000}` is a million. The program's 2 fixed instructions are added. It does not factor
 * alternatives (RE2 turns `ab|ac` to `a[bc]`), so it may exceed the compiled size there, never fall
 * short of it. A pattern that does not parse is estimated all the same; the compile says why.
 */
export function estimateProgramSize(pattern: string): number {
  // A frame per open group: its finished alternatives, the one being read, its last atom (what a
  // repeat applies to), and whether it captures.
  // `char`: whether the alternative being read is one character (of those RE2 merges into a class).
  type Frame = { alts: { n: number; char: boolean }[]; cur: number; atoms: number; char: boolean; last: number; capture: boolean };
  const frame = (capture: boolean): Frame => ({ alts: [], cur: 0, atoms: 0, char: false, last: 0, capture });
  const size = (f: Frame): number => {
    let total = 0;
    let parts = 0;
    let prevChar = false;
    for (const a of [...f.alts, { n: f.cur, char: f.char }]) {
      if (a.char && prevChar) continue; // merged into the class before it
      total += Math.max(1, a.n);
      parts++;
      prevChar = a.char;
    }
    return total + parts - 1;
  };
  const stack: Frame[] = [frame(false)];
  const atom = (n: number, char = false): void => {
    const f = stack.at(-1)!;
    f.cur += n;
    f.last = n;
    f.char = f.atoms === 0 && char;
    f.atoms++;
  };
  const repeat = (of: (s: number) => number): void => {
    const f = stack.at(-1)!;
    const n = Math.max(1, of(f.last));
    f.cur += n - f.last;
    f.last = n;
    f.char = false;
  };
  let i = 0;
  while (i < pattern.length) {
    const c = pattern[i]!;
    if (c === '\\') {
      const e = pattern[i + 1];
      if (e === 'Q') {
        const end = pattern.indexOf('\\E', i + 2);
        const text = end < 0 ? pattern.slice(i + 2) : pattern.slice(i + 2, end);
        for (const _ of text) atom(1, true);
        i = end < 0 ? pattern.length : end + 2;
        continue;
      }
      // \p{Greek}, \x{10FFFF}: one atom to the brace's end; any other escape, its next character.
      const brace = (e === 'p' || e === 'P' || e === 'x') && pattern[i + 2] === '{' ? pattern.indexOf('}', i + 3) : -1;
      i = brace >= 0 ? brace + 1 : i + 2 + (e === 'p' || e === 'P' ? 1 : e === 'x' ? 2 : 0);
      atom(1, e !== undefined && !'bBAzC'.includes(e)); // \b \B \A \z match no character; \C is refused
      continue;
    }
    if (c === '[') {
      // To the class's closing `]`: one after the first (or after `^`) is literal; `[:alpha:]` and escapes inside.
      let j = i + 1;
      if (pattern[j] === '^') j++;
      if (pattern[j] === ']') j++;
      while (j < pattern.length && pattern[j] !== ']') {
        if (pattern[j] === '\\') j += 2;
        else if (pattern[j] === '[' && pattern[j + 1] === ':') {
          const end = pattern.indexOf(':]', j + 2);
          j = end < 0 ? j + 1 : end + 2;
        } else j++;
      }
      i = j + 1;
      atom(1, true);
      continue;
    }
    if (c === '(') {
      let capture = true;
      if (pattern[i + 1] === '?') {
        // (?flags) sets flags and is no group; (?flags: (?: (?<= (?<! do not capture; (?P<n> (?<n> do.
        const m = /^\(\?([a-zA-Z-]*)([:)])/.exec(pattern.slice(i, i + 16));
        if (m?.[2] === ')') { i += m[0].length; continue; }
        const named = /^\(\?P?<(?![=!])/.test(pattern.slice(i, i + 4));
        if (m) {
          capture = false;
          i += m[0].length;
        } else if (named) {
          const end = pattern.indexOf('>', i);
          i = end < 0 ? pattern.length : end + 1;
        } else i += pattern[i + 2] === '<' ? 4 : 3; // a look-around: 2 more, as a capture (re2js's PLB, NLB)
      } else i++;
      stack.push(frame(capture));
      continue;
    }
    if (c === ')') {
      i++;
      if (stack.length === 1) continue;
      const f = stack.pop()!;
      atom(size(f) + (f.capture ? 2 : 0));
      continue;
    }
    if (c === '|') {
      const f = stack.at(-1)!;
      f.alts.push({ n: f.cur, char: f.char });
      f.cur = 0;
      f.atoms = 0;
      f.char = false;
      f.last = 0;
      i++;
      continue;
    }
    if (c === '*' || c === '+' || c === '?') {
      repeat((s) => s + (c === '*' ? 2 : 1));
      i += pattern[i + 1] === '?' ? 2 : 1;
      continue;
    }
    if (c === '{') {
      const m = REPEAT.exec(pattern.slice(i, i + 24));
      if (m) {
        const min = Number(m[1]);
        const max = m[2] === undefined ? min : m[3] === '' ? -1 : Number(m[3]);
        repeat((s) => (max === -1 ? (min === 0 ? 2 + s : 1 + min * s) : max * s + Math.max(0, max - min)));
        i += m[0].length + (pattern[i + m[0].length] === '?' ? 1 : 0);
        continue;
      }
    }
    // A literal, `.`, `^`, `$` (a surrogate pair is one character).
    i += c.codePointAt(0)! > 0xffff ? 2 : 1;
    atom(1, c !== '^' && c !== '$');
  }
  while (stack.length > 1) {
    const f = stack.pop()!;
    atom(size(f) + (f.capture ? 2 : 0));
  }
  return size(stack[0]!) + 2;
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

/** What this process compiled (patterns, RE2 instructions): what a test counts a check by, not its time. */
export const regexCompiled = { patterns: 0, instructions: 0 };

/**
 * An estimate past this many times MAX_REGEX_PROGRAM_SIZE is refused uncompiled; one below it is
 * compiled and judged by its compiled size (the estimate is an upper bound, loose where RE2 factors
 * alternatives), at a cost bounded by the estimate.
 */
const ESTIMATE_SLACK = 4;

/**
 * `pattern` compiled, with its size in RE2 instructions and what checking it is charged (the larger
 * of its estimate and its compiled size); throws RegexError saying why RE2 cannot take it, with
 * what it was charged.
 */
function compileProgram(pattern: string): { re: RE2JS; size: number; cost: number } {
  if (typeof pattern !== 'string') throw new RegexError('is not a string');
  if (pattern.length > MAX_REGEX_LENGTH) throw new RegexError(`is ${pattern.length} characters long; the limit is ${MAX_REGEX_LENGTH}`);
  // Refused before the compile, which costs what the program holds (about 0.6 us an instruction:
  // 57 ms for `[a-z]{1000}` x 92), where this estimate costs one pass over the characters.
  const estimate = estimateProgramSize(pattern);
  if (estimate > ESTIMATE_SLACK * MAX_REGEX_PROGRAM_SIZE) throw new RegexError(`is estimated at ${estimate} RE2 instructions; the limit is ${MAX_REGEX_PROGRAM_SIZE}`, estimate);
  let re: RE2JS;
  try {
    re = RE2JS.compile(pattern);
  } catch (e) {
    throw new RegexError(`is not an RE2 regular expression: ${(e as Error).message}`);
  }
  const size = Number(re.re2().numberOfInstructions());
  regexCompiled.patterns++;
  regexCompiled.instructions += size;
  const cost = Math.max(estimate, size);
  if (size > MAX_REGEX_PROGRAM_SIZE) throw new RegexError(`compiles to ${size} RE2 instructions; the limit is ${MAX_REGEX_PROGRAM_SIZE}`, cost);
  return { re, size, cost };
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

  /** Charges a pattern of `size` instructions (the larger of its estimate and what it compiled to). */
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
    const { cost } = compileProgram(pattern); // not in `budget?.charge(...)`, which skips it without a budget
    budget?.charge(cost);
    return undefined;
  } catch (e) {
    budget?.charge(e instanceof RegexError ? e.cost : 0);
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
