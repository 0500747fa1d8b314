// Node's compile cache (NODE_COMPILE_CACHE), filled ahead of time: `make build` for the local mesh,
// the image's last build step for the DaemonSet and the other parts.
//
//   node cli/install/compile-cache.ts <dir> [part...]     (parts: agent controller waypoint eastwest weftctl; default agent)
//
// Weft runs its TypeScript sources directly. Without a cache, Node strips the types of each file at
// start with its own TypeScript parser (amaro: swc compiled to WebAssembly), and that parser stays
// loaded: about 20 MB of the agent's RSS (docs/PERFORMANCE.md, agent memory). With a warm cache
// Node reads the stripped source and the compiled code from the cache and never loads the parser.
// One code path: the sources still run as they are, imports and assets (import.meta.dirname) are
// untouched, and a missing or stale cache only costs what it costs without one (entries are keyed
// by file path and content; a changed file is stripped again).
//
// Node keeps one cache per V8 flag set (some flags, --expose-gc for one, change the compiled
// code's version tag), so each part is warmed with the flags it runs with.
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { AGENT_NODE_OPTIONS, CONTROLLER_NODE_OPTIONS, CONTROLLER_V8_FLAGS, WAYPOINT_NODE_OPTIONS } from './names.ts';

/** The cache folder under the repository (or image) root; build/ is not in git. */
export const COMPILE_CACHE_DIR = 'build/compile-cache';

/** Each part's entry module and the Node flags it runs with (cli/install/names.ts). */
export const COMPILE_CACHE_PARTS: Readonly<Record<string, { entry: string; nodeOptions: string }>> = {
  agent: { entry: 'agent/src/main.ts', nodeOptions: AGENT_NODE_OPTIONS },
  controller: { entry: 'controller/src/main.ts', nodeOptions: `${CONTROLLER_NODE_OPTIONS} ${CONTROLLER_V8_FLAGS}` },
  waypoint: { entry: 'waypoint/src/main.ts', nodeOptions: WAYPOINT_NODE_OPTIONS },
  eastwest: { entry: 'eastwest/src/main.ts', nodeOptions: '' },
  weftctl: { entry: 'cli/weftctl.ts', nodeOptions: '' },
};

const ROOT = resolve(import.meta.dirname, '..', '..');

/**
 * Loads each part's module graph (its entry imported, not run: the parts start only as the main
 * module) in a process with the part's flags and NODE_COMPILE_CACHE=`dir`, which Node writes out
 * at exit. Throws naming the part whose modules did not load.
 */
export function warmCompileCache(dir: string, parts: readonly string[]): void {
  for (const part of parts) {
    const p = COMPILE_CACHE_PARTS[part];
    if (!p) throw new Error(`unknown part "${part}"; parts are ${Object.keys(COMPILE_CACHE_PARTS).join(', ')}`);
    const entry = pathToFileURL(resolve(ROOT, p.entry)).href;
    const flags = p.nodeOptions.split(' ').filter(Boolean);
    const r = spawnSync(process.execPath, [...flags, '--input-type=module', '-e', `await import(${JSON.stringify(entry)});`], {
      env: { ...process.env, NODE_OPTIONS: '', NODE_COMPILE_CACHE: resolve(dir) },
      encoding: 'utf8',
      timeout: 120_000,
    });
    if (r.status !== 0) throw new Error(`compile cache: loading ${p.entry} (${part}) failed (${r.status ?? r.signal}): ${r.stderr}`);
  }
}

if (import.meta.main) {
  const [dir, ...parts] = process.argv.slice(2);
  if (!dir) {
    process.stderr.write('usage: node cli/install/compile-cache.ts <dir> [agent|controller|waypoint|eastwest|weftctl ...]\n');
    process.exit(2);
  }
  warmCompileCache(dir, parts.length > 0 ? parts : ['agent']);
}
