// The agent's C heap after a burst (agent/native/memory.cc, agent/libbpf/memory.ts): what a bulk
// stream leaves behind, and what malloc_trim gives back. In a fresh process (test/lab/imports.ts),
// so that this file's own allocations do not count.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { inFreshProcess } from '../lab/imports.ts';

const LIBBPF = new URL('../../agent/libbpf/index.ts', import.meta.url).href;

test('64 MB of 64 KiB buffers, freed between live ones, stay resident until mallocTrim hands them back', async () => {
  // A bulk stream's pattern: many 64 KiB chunks (socket reads, TLS records) alive at once, a few
  // smaller long-lived allocations made meanwhile between them, then every chunk freed.
  const body = `
    import { readFileSync } from 'node:fs';
    const { mallocInfo, mallocTrim } = await import(${JSON.stringify(LIBBPF)});
    const anonMb = () => Number(/RssAnon:\\s+(\\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) / 1024;
    const settle = async () => { for (let i = 0; i < 3; i++) { globalThis.gc(); await new Promise((r) => setTimeout(r, 50)); } };
    await settle();
    const idle = anonMb();
    const keep = [];
    let chunks = [];
    for (let i = 0; i < 1024; i++) {
      chunks.push(Buffer.allocUnsafeSlow(64 * 1024).fill(1));
      if (i % 8 === 0) keep.push(Buffer.allocUnsafeSlow(32 * 1024).fill(2));
    }
    const loaded = anonMb();
    chunks = undefined;
    await settle();
    const freed = anonMb();
    const free = mallocInfo().freeBytes / 1048576;
    const trimmed = mallocTrim();
    const after = anonMb();
    console.log(JSON.stringify({ idle, loaded, freed, free, trimmed, after, keep: keep.length }));
    process.exit(0);
  `;
  const r = await inFreshProcess<{ idle: number; loaded: number; freed: number; free: number; trimmed: boolean; after: number }>(body, [], { nodeArgs: ['--expose-gc'], env: { MALLOC_ARENA_MAX: '2' } });
  const detail = JSON.stringify(r);
  assert.ok(r.loaded - r.idle >= 50, `the burst is resident: ${detail}`);
  // The control: free() alone gives back only the heap's top, and small live chunks sit above the freed ones.
  assert.ok(r.freed - r.idle >= 40, `freed chunks stay resident without a trim: ${detail}`);
  assert.ok(r.free >= 40, `malloc counts them as free: ${detail}`);
  assert.equal(r.trimmed, true, detail);
  assert.ok(r.freed - r.after >= 40, `mallocTrim gave them back: ${detail}`);
});
