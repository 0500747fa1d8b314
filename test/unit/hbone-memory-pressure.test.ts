import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultMemoryBudget, TunnelMemory, type SessionTally, type TrackedTunnel } from '../../lib/hbone/memory-pressure.ts';
import { FALLBACK_MEMORY_BUDGET, MEMORY_RESETS_PER_CHECK } from '../../lib/hbone/tuning.ts';
import { HboneServer } from '../../lib/hbone/server.ts';
import { ownMemoryLimit } from '../../lib/sys/cgroup.ts';
import { startChecking, stopChecking } from '../../lib/hbone/session-buffer.ts';
import { until } from '../lab/wait.ts';
import { AGENT_RESOURCES } from '../../cli/install/agent.ts';
import { EASTWEST_RESOURCES } from '../../cli/install/eastwest.ts';
import { WAYPOINT_RESOURCES } from '../../controller/src/waypoints-kube.ts';

// Tunnels as the check sees them: buffers with lengths (a stream's and its destination's).
function tunnel(session: SessionTally, bytes: { unread?: number; toPeer?: number; early?: number; answered?: boolean }, peer = 'p'): TrackedTunnel {
  return {
    stream: { readableLength: bytes.unread ?? 0, writableLength: bytes.toPeer ?? 0 },
    upstream: bytes.answered === false ? undefined : { readableLength: 0, writableLength: 0 },
    inner: undefined,
    early: bytes.early ?? 0,
    held: 0,
    reset: false,
    session,
    peer,
  };
}

function memory(budget: number, target = budget * 0.75): { m: TunnelMemory<TrackedTunnel>; reset: TrackedTunnel[] } {
  const reset: TrackedTunnel[] = [];
  const m = new TunnelMemory<TrackedTunnel>({ budget, target, afterPass: () => false, reset: (t) => reset.push(t) });
  return { m, reset };
}

test('TunnelMemory: under the budget nothing is reset, and each session is tallied its answered streams\' unread bytes', () => {
  const { m, reset } = memory(1000);
  const a: SessionTally = { unread: 0, answered: 0 };
  const b: SessionTally = { unread: 0, answered: 0 };
  const ts = [tunnel(a, { unread: 100, toPeer: 50 }), tunnel(a, { unread: 200 }), tunnel(b, { early: 300, answered: false })];
  for (const t of ts) m.add(t);
  m.check();
  m.stop();
  assert.equal(m.heldBytes, 650);
  assert.deepEqual(reset, []);
  assert.deepEqual(a, { unread: 300, answered: 2 });
  // A CONNECT not yet answered counts against the budget, not against its session's buffer.
  assert.deepEqual(b, { unread: 0, answered: 0 });
});

// Envoy's reset_high_memory_stream resets the largest streams first; here the largest of the peer
// holding the most, until the total is below the target (3/4 of the budget).
test('TunnelMemory: over the budget one peer\'s largest are reset first, until the total is below the target, whatever direction holds the bytes', () => {
  const { m, reset } = memory(10_000, 7_500);
  const s: SessionTally = { unread: 0, answered: 0 };
  const small = Array.from({ length: 20 }, () => tunnel(s, { unread: 100 }));
  const large = [tunnel(s, { toPeer: 3_000 }), tunnel(s, { unread: 2_000 }), tunnel(s, { early: 2_500, answered: false })];
  for (const t of [...small.slice(0, 10), ...large, ...small.slice(10)]) m.add(t);
  m.check(); // 2,000 + 7,500 = 9,500: under the budget
  assert.deepEqual(reset, []);
  (large[0]!.stream as { writableLength: number }).writableLength = 4_000; // now 10,500: 3,000 to free
  m.check();
  m.stop();
  assert.deepEqual(reset, [large[0]], 'the largest alone frees enough');
  const { m: m2, reset: reset2 } = memory(1_000, 750);
  const many = Array.from({ length: 40 }, (_, i) => tunnel(s, { unread: i < 30 ? 10 : 100 }));
  for (const t of many) m2.add(t);
  m2.check(); // 300 + 1,000 = 1,300: 550 to free, six of the 100-byte tunnels
  m2.check(); // those reset count no more
  m2.stop();
  assert.equal(reset2.length, 6);
  assert.ok(reset2.every((t) => t.held === 100));
});

// Largest first alone let an attacker choose the victim: one legitimate upload (its 4 MiB stream
// window and 256 KiB pipe) was reset before any of 48 zero-window tunnels of 320 KiB.
test('TunnelMemory: by peer: the peer holding the most loses its largest tunnels until it holds no more than the next peer or its fair share; a single large tunnel of another peer stays', () => {
  const KiB = 1024;
  const { m, reset } = memory(16_384 * KiB, 12_288 * KiB);
  const s: SessionTally = { unread: 0, answered: 0 };
  const upload = tunnel(s, { unread: 4_096 * KiB, toPeer: 256 * KiB }, 'victim');
  const attack = Array.from({ length: 48 }, (_, i) => tunnel(s, { toPeer: (320 - (i % 3)) * KiB }, 'attacker'));
  for (const t of [upload, ...attack]) m.add(t);
  m.check();
  m.stop();
  assert.ok(reset.length > 0 && reset.every((t) => t.peer === 'attacker'), reset.map((t) => t.peer).join());
  assert.ok(!upload.reset);
  assert.ok(m.heldBytes - reset.reduce((n, t) => n + t.held, 0) <= 12_288 * KiB);
  // Its largest first.
  assert.ok(attack.every((t) => t.reset || t.held <= Math.min(...reset.map((r) => r.held))));
  // Three peers: the largest gives way down to the next one, then both down to their fair share.
  const { m: m2, reset: r2 } = memory(900, 600);
  const big = Array.from({ length: 10 }, () => tunnel(s, { unread: 60 }, 'big'));
  const mid = Array.from({ length: 5 }, () => tunnel(s, { unread: 60 }, 'mid'));
  const small = Array.from({ length: 3 }, () => tunnel(s, { unread: 50 }, 'small'));
  for (const t of [...big, ...mid, ...small]) m2.add(t); // 600 + 300 + 150 = 1,050: 450 to free
  m2.check();
  m2.stop();
  const lost = (ts: TrackedTunnel[]): number => ts.filter((t) => t.reset).length;
  // big: 600 down to 300 (mid's), then each in turn until the total is at most 600.
  assert.deepEqual([lost(big), lost(mid), lost(small)], [6, 2, 0], JSON.stringify(r2.map((t) => t.peer)));
});

// The waypoint answers with one end of an in-memory pair: bytes in the other end (the engine's)
// are the tunnel's too. Before, they were not counted and such a tunnel held 9 MiB unseen.
test('TunnelMemory: what an in-memory pair holds on the far end (inner) counts', () => {
  const { m, reset } = memory(10_000, 7_500);
  const s: SessionTally = { unread: 0, answered: 0 };
  const t = tunnel(s, { unread: 100 });
  t.inner = { readableLength: 6_000, writableLength: 5_000 };
  m.add(t);
  m.check();
  m.stop();
  assert.equal(t.held, 11_100);
  assert.deepEqual(reset, [t]);
});

// The cost the brief bounds: one pass over 100,000 tunnels, no allocation, no sort. Printed, not
// asserted (a loaded 2-core machine is slower than any figure).
test('TunnelMemory: one check over 100,000 tunnels (printed)', () => {
  const sessions = Array.from({ length: 1_000 }, (): SessionTally => ({ unread: 0, answered: 0 }));
  const { m, reset } = memory(2 ** 40);
  for (let i = 0; i < 100_000; i++) m.add(tunnel(sessions[i % 1_000]!, { unread: (i * 7919) % 300_000, toPeer: (i * 104_729) % 262_144 }, `peer ${i % 1_000}`));
  for (let i = 0; i < 5; i++) m.check(); // warm up
  const passes = 20;
  let started = performance.now();
  for (let i = 0; i < passes; i++) m.check();
  const under = (performance.now() - started) / passes;
  // Under pressure: the same pass, then the resets, the peers holding the most first (a quarter of the total to free).
  const total = m.heldBytes;
  const { m: over, reset: overReset } = memory(total - 1, total * 0.75);
  const all = Array.from({ length: 100_000 }, (_, i) => tunnel(sessions[i % 1_000]!, { unread: (i * 7919) % 300_000, toPeer: (i * 104_729) % 262_144 }, `peer ${i % 1_000}`));
  for (const tn of all) over.add(tn);
  started = performance.now();
  over.check();
  const pressure = performance.now() - started;
  // At most MEMORY_RESETS_PER_CHECK a check (Envoy: 50 streams an invocation); the next checks go on.
  assert.equal(overReset.length, MEMORY_RESETS_PER_CHECK);
  m.stop();
  over.stop();
  assert.equal(reset.length, 0);
  // The peers holding the most first: each peer that lost a tunnel held at least as much as every peer that lost none.
  const heldBy = new Map<string, { held: number; lost: boolean }>();
  for (const tn of all) {
    const p = heldBy.get(tn.peer) ?? { held: 0, lost: false };
    p.held += tn.held;
    p.lost ||= tn.reset;
    heldBy.set(tn.peer, p);
  }
  const peers = [...heldBy.values()];
  const spared = Math.max(0, ...peers.filter((p) => !p.lost).map((p) => p.held));
  assert.ok(peers.every((p) => !p.lost || p.held >= spared), 'a peer holding less lost tunnels before one holding more');
  console.log(`TunnelMemory: one check over 100,000 tunnels: ${under.toFixed(2)} ms under the budget, ${pressure.toFixed(2)} ms over it (${MEMORY_RESETS_PER_CHECK} reset)`);
});

test('TunnelMemory: a budget that is not a positive number of bytes is refused, naming the option', () => {
  for (const bad of [0, -1, Number.NaN]) assert.throws(() => memory(bad), new RegExp(`memoryBudget must be a positive number of bytes, not ${bad}`));
});

// The default budget must reset tunnels before the kernel kills the container: before, it was a
// fixed 1 GiB, at or above every component's memory limit (agent and waypoint 1Gi, east-west 512Mi).
test('the default memory budget is half the cgroup v2 memory.max, the lowest from the process cgroup up to the mount; the fallback when unlimited or unreadable', () => {
  const root = mkdtempSync(join(tmpdir(), 'weft-cg-'));
  try {
    const mount = join(root, 'cgroup');
    const ctr = join(mount, 'kubepods', 'pod1', 'ctr');
    mkdirSync(ctr, { recursive: true });
    const self = join(root, 'self-cgroup');
    writeFileSync(self, '0::/kubepods/pod1/ctr\n');
    writeFileSync(join(mount, 'kubepods', 'memory.max'), 'max\n');
    writeFileSync(join(mount, 'kubepods', 'pod1', 'memory.max'), `${512 * 1024 * 1024}\n`);
    writeFileSync(join(ctr, 'memory.max'), 'max\n');
    // The pod's limit, two levels up, binds the container.
    assert.equal(ownMemoryLimit(mount, self), 512 * 1024 * 1024);
    writeFileSync(join(ctr, 'memory.max'), `${256 * 1024 * 1024}\n`);
    assert.equal(ownMemoryLimit(mount, self), 256 * 1024 * 1024);
    // A cgroup namespace: the process's cgroup is the mount's root, whose memory.max is its limit.
    writeFileSync(join(root, 'ns-cgroup'), '0::/\n');
    writeFileSync(join(ctr, 'memory.max'), `${1024 * 1024 * 1024}\n`);
    assert.equal(ownMemoryLimit(ctr, join(root, 'ns-cgroup')), 1024 * 1024 * 1024);
    // Unlimited everywhere, garbage, no such file: no limit.
    writeFileSync(join(mount, 'kubepods', 'pod1', 'memory.max'), 'max\n');
    writeFileSync(join(ctr, 'memory.max'), 'lots\n');
    assert.equal(ownMemoryLimit(mount, self), undefined);
    assert.equal(ownMemoryLimit(mount, join(root, 'missing')), undefined);
    writeFileSync(join(root, 'v1-only'), '4:memory:/x\n');
    assert.equal(ownMemoryLimit(mount, join(root, 'v1-only')), undefined);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  const mi = 1024 * 1024;
  const limits = { agent: AGENT_RESOURCES.limits.memory, waypoint: WAYPOINT_RESOURCES.limits.memory, 'east-west gateway': EASTWEST_RESOURCES.limits.memory };
  for (const [component, q] of Object.entries(limits)) {
    const m = /^(\d+)(Mi|Gi)$/.exec(q);
    assert.ok(m, `${component}'s limit ${q}`);
    const bytes = Number(m[1]) * (m[2] === 'Gi' ? 1024 : 1) * mi;
    const b = defaultMemoryBudget(() => bytes);
    assert.equal(b.bytes, bytes / 2, component);
    assert.equal(b.limit, bytes);
    // The fallback fits every container Weft ships, should the limit be unreadable.
    assert.ok(FALLBACK_MEMORY_BUDGET <= bytes / 2, `${component}: the fallback ${FALLBACK_MEMORY_BUDGET} fits under ${q}`);
  }
  const none = defaultMemoryBudget(() => undefined);
  assert.equal(none.bytes, FALLBACK_MEMORY_BUDGET);
  assert.match(none.from, /fallback/);
  // A server with no memoryBudget takes the default and says where it came from.
  const s = new HboneServer({ tls: { ca: [] }, handler: async () => { throw new Error('unused'); } });
  assert.deepEqual(s.memoryBudget, defaultMemoryBudget());
  assert.equal(new HboneServer({ tls: { ca: [] }, memoryBudget: 1234, handler: async () => { throw new Error('unused'); } }).memoryBudget.bytes, 1234);
});

// An exception from a check (a callback it makes: onRefusal, onSessionThrottled) escaped the
// timer's callback and ended the process; the other checks did not run that tick.
test('a check that throws is reported as a warning and the other checks go on, tick after tick', async () => {
  const warnings: Error[] = [];
  const onWarning = (w: Error): void => { if (w.name === 'WeftCheckError') warnings.push(w); };
  process.on('warning', onWarning);
  let ran = 0;
  const bad = (): void => { throw new Error('onRefusal failed'); };
  const good = (): void => { ran++; };
  startChecking(bad);
  startChecking(good);
  try {
    await until('two ticks of the good check', () => ran >= 2 && warnings.length >= 2, 5_000, { explain: () => `${ran} runs, ${warnings.length} warnings` });
    assert.match(warnings[0]!.message, /onRefusal failed/);
  } finally {
    stopChecking(bad);
    stopChecking(good);
    process.off('warning', onWarning);
  }
});
