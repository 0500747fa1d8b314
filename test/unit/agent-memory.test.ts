// What the agent process loads (issue 20: agent RSS; docs/PERFORMANCE.md, agent memory), and that
// the agent, the waypoint and the east-west gateway start from a warm compile cache without Node's
// TypeScript parser. Each check runs in a fresh Node process (test/lab/imports.ts), so that nothing
// this test file loaded counts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inFreshProcess } from '../lab/imports.ts';
import { COMPILE_CACHE_PARTS, warmCompileCache } from '../../cli/install/compile-cache.ts';
import { AGENT_NODE_OPTIONS } from '../../cli/install/names.ts';

const AGENT_MAIN = new URL('../../agent/src/main.ts', import.meta.url).href;
const AGENT_FLAGS = AGENT_NODE_OPTIONS.split(' ');

test('the agent never loads node-forge (its DER code encodes OIDs itself); a module that imports it is seen (the control)', async () => {
  const body = `
    await import(${JSON.stringify(AGENT_MAIN)});
    const agent = [...seen];
    await import(${JSON.stringify(new URL('./hbone-certs.ts', import.meta.url).href)});
    console.log(JSON.stringify({ agent, control: seen.length > agent.length }));
    process.exit(0);
  `;
  const r = await inFreshProcess<{ agent: string[]; control: boolean }>(body, ['node-forge'], { nodeArgs: AGENT_FLAGS });
  assert.deepEqual(r.agent, [], 'agent modules that imported node-forge');
  assert.equal(r.control, true, 'the hook sees node-forge when a test helper imports it');
});

// The agent, and the waypoint and east-west gateway that the local mesh now starts from the cache
// too, as the image starts every part (Dockerfile: ENV NODE_COMPILE_CACHE).
for (const part of ['agent', 'waypoint', 'eastwest']) {
  test(`with the compile cache warmed for the ${part} (cli/install/compile-cache.ts), its modules load without Node's TypeScript parser; without the cache they need it`, async () => {
    const { entry, nodeOptions } = COMPILE_CACHE_PARTS[part]!;
    const flags = nodeOptions.split(' ').filter(Boolean);
    const dir = mkdtempSync(join(tmpdir(), 'weft-compile-cache-'));
    // Node lists every internal module it loaded in process.moduleLoadList; amaro is the parser.
    const body = `
      await import(${JSON.stringify(new URL(`../../${entry}`, import.meta.url).href)});
      console.log(JSON.stringify({ parser: process.moduleLoadList.filter((m) => m.includes('amaro')) }));
      process.exit(0);
    `;
    try {
      warmCompileCache(dir, [part]);
      const warm = await inFreshProcess<{ parser: string[] }>(body, [], { nodeArgs: flags, env: { NODE_COMPILE_CACHE: dir } });
      assert.deepEqual(warm.parser, [], 'internal modules of the TypeScript parser loaded with a warm cache');
      const cold = await inFreshProcess<{ parser: string[] }>(body, [], { nodeArgs: flags, env: { NODE_DISABLE_COMPILE_CACHE: '1' } });
      assert.notDeepEqual(cold.parser, [], 'without a cache the sources are stripped by the parser (the control)');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
