// What the agent hands back of the memory it holds and does not use (agent/native/memory.cc,
// agent/libbpf/memory.ts): the C heap after a burst (what a bulk stream leaves behind, and what
// malloc_trim gives back), and the node executable's pages it mapped and no longer touches. In a
// fresh process each (test/lab/imports.ts), so that this file's own allocations do not count.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { inFreshProcess } from '../lab/imports.ts';

const MEMORY = new URL('../../lib/sys/memory.ts', import.meta.url).href;

test('64 MB of 64 KiB buffers, freed between live ones, stay resident until mallocTrim hands them back', async () => {
  // A bulk stream's pattern: many 64 KiB chunks (socket reads, TLS records) alive at once, a few
  // smaller long-lived allocations made meanwhile between them, then every chunk freed.
  const body = `
    import { readFileSync } from 'node:fs';
    const { mallocInfo, mallocTrim } = await import(${JSON.stringify(MEMORY)});
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

test('releaseFilePages unmaps the executable pages the process does not use; the pages it uses come back, modified (relocated) mappings are left as they are, and the process works on', async () => {
  const body = `
    import { readFileSync, statSync } from 'node:fs';
    import { createHash, generateKeyPairSync, sign, verify } from 'node:crypto';
    import { gzipSync, gunzipSync } from 'node:zlib';
    const { releaseFilePages } = await import(${JSON.stringify(MEMORY)});
    const exe = statSync('/proc/self/exe');
    // The executable's mappings from smaps: resident kB, and the read-only ones that hold modified
    // (copy-on-write) pages, such as the relocated data made read-only after start (RELRO).
    const mappings = () => {
      const out = [];
      let cur;
      for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\\n')) {
        const h = /^([0-9a-f]+)-([0-9a-f]+) (\\S+) \\S+ \\S+ (\\d+)/.exec(line);
        if (h) { cur = { range: h[1] + '-' + h[2], perms: h[3], inode: Number(h[4]), rss: 0, anon: 0 }; out.push(cur); continue; }
        const f = /^(Rss|Anonymous):\\s+(\\d+) kB/.exec(line);
        if (f && cur) cur[f[1] === 'Rss' ? 'rss' : 'anon'] = Number(f[2]);
      }
      return out.filter((m) => m.inode === exe.ino);
    };
    const rssKb = () => mappings().reduce((n, m) => n + m.rss, 0);
    const modified = () => mappings().filter((m) => m.perms[1] === '-' && m.anon > 0).map((m) => m.range + ':' + m.anon);
    // Work that runs code start-up did not: key generation, signing, compression, hashing.
    const work = () => {
      const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const data = gzipSync(Buffer.alloc(1 << 20, 7));
      const ok = verify(null, data, publicKey, sign(null, data, privateKey));
      return ok && gunzipSync(data).length === 1 << 20 ? createHash('sha256').update(data).digest('hex').slice(0, 8) : 'failed';
    };
    const first = work();
    const before = rssKb();
    const modifiedBefore = modified();
    const released = releaseFilePages();
    const after = rssKb();
    const again = work();
    const afterWork = rssKb();
    console.log(JSON.stringify({ before, after, afterWork, released, modifiedBefore, modifiedAfter: modified(), first, again }));
    process.exit(0);
  `;
  const r = await inFreshProcess<{ before: number; after: number; afterWork: number; released: { mappings: number; bytes: number }; modifiedBefore: string[]; modifiedAfter: string[]; first: string; again: string }>(body, []);
  const detail = JSON.stringify(r);
  assert.ok(r.before >= 20 * 1024, `the executable maps tens of MB after start: ${detail}`);
  assert.ok(r.released.mappings >= 1 && r.released.bytes >= r.before * 1024 * 0.5, `released: ${detail}`);
  assert.ok(r.after <= r.before / 2, `the executable's pages left the process (reading smaps itself faults some back): ${detail}`);
  assert.ok(r.afterWork > r.after, `the pages the work uses came back (minor faults): ${detail}`);
  assert.equal(r.again, r.first, 'the process computes as before');
  // Dropping a modified private page would bring back the file's (unrelocated) contents.
  assert.ok(r.modifiedBefore.length >= 1, `node has a relocated read-only mapping (RELRO) to leave alone: ${detail}`);
  assert.deepEqual(r.modifiedAfter, r.modifiedBefore, 'modified read-only mappings were not released');
});
