// What a module graph loads, asked of a fresh Node process (so that no module the calling test, or
// another test in the same process, already loaded counts). For the tests that keep a heavy module
// out of a mode or a process that does not need it (memory: docs/PERFORMANCE.md).
import { execFile } from 'node:child_process';

export interface FreshProcessOptions {
  /** Node flags before the script (e.g. the agent's AGENT_NODE_OPTIONS). */
  nodeArgs?: readonly string[];
  /** Environment added to the test's own. */
  env?: Readonly<Record<string, string>>;
  timeoutMs?: number;
}

/**
 * Runs `body` (the statements of an ES module, top-level await allowed) in a new Node process.
 * Before it, a resolve hook records in `seen` the importing module's URL (`parentURL`) of every
 * import whose specifier starts with one of `watched`. The body reports by printing one JSON line
 * last (`console.log(JSON.stringify(...))`, then `process.exit(0)`); that line is returned, parsed.
 * Fails with the child's stderr when it exits otherwise.
 */
export async function inFreshProcess<T>(body: string, watched: readonly string[], o: FreshProcessOptions = {}): Promise<T> {
  const script = `
    import { registerHooks } from 'node:module';
    const seen = [];
    const watched = ${JSON.stringify(watched)};
    registerHooks({ resolve(spec, ctx, next) { if (watched.some((w) => spec.startsWith(w))) seen.push(ctx.parentURL); return next(spec, ctx); } });
    ${body}
  `;
  const out = await new Promise<string>((resolve, reject) => execFile(
    process.execPath, [...(o.nodeArgs ?? []), '--input-type=module', '-e', script],
    { timeout: o.timeoutMs ?? 60_000, env: { ...process.env, ...o.env } },
    (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)),
  ));
  return JSON.parse(out.trim().split('\n').pop()!) as T;
}
