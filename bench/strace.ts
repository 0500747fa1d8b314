// Syscall counts of running processes over a window (`strace -c -f -p`), for figures per request or
// per MB (issue 20: fewer syscalls per byte). strace slows every syscall it sees, so a figure taken
// under it is a count, not a time.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** `strace -c` summary → calls per syscall (the `total` row left out). */
export function parseStraceSummary(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    // % time     seconds  usecs/call     calls    errors syscall
    const m = /^\s*[0-9.]+\s+[0-9.]+\s+[0-9]+\s+([0-9]+)\s+(?:[0-9]+\s+)?([a-z_0-9]+)\s*$/.exec(line);
    if (m && m[2] !== 'total') out[m[2]!] = Number(m[1]);
  }
  return out;
}

export interface StraceWindow {
  /** Stops counting; calls per syscall over every traced process. */
  stop(): Promise<Record<string, number>>;
}

/** Starts counting the syscalls of `pids` (and their threads); resolves once strace is attached. */
export async function straceCount(pids: number[]): Promise<StraceWindow> {
  const dir = mkdtempSync(join(tmpdir(), 'weft-strace-'));
  const file = join(dir, 'summary');
  const child = spawn('strace', ['-c', '-f', '-o', file, ...pids.flatMap((p) => ['-p', String(p)])], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (c: Buffer) => { err += c.toString(); });
  // strace says "Process N attached" on stderr once per process.
  const deadline = Date.now() + 5000;
  while ((err.match(/attached/g)?.length ?? 0) < pids.length && Date.now() < deadline && child.exitCode === null) {
    await new Promise((r) => setTimeout(r, 20));
  }
  if (child.exitCode !== null) throw new Error(`strace did not attach: ${err.trim()}`);
  return {
    stop: async () => {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGINT');
      await exited;
      try { return parseStraceSummary(readFileSync(file, 'utf8')); } finally { rmSync(dir, { recursive: true, force: true }); }
    },
  };
}

/** Calls per unit of work, largest first, rounded for printing. */
export function perUnit(calls: Record<string, number>, units: number, top = 8): Record<string, number> {
  const total = Object.values(calls).reduce((a, b) => a + b, 0);
  const rows = Object.entries(calls).sort((a, b) => b[1] - a[1]).slice(0, top);
  return Object.fromEntries([['total', total], ...rows].map(([k, v]) => [k, +(Number(v) / units).toFixed(2)]));
}
