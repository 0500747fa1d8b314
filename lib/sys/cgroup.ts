// cgroup v2 folders: create, move a process in, and tear down a subtree with everything in it.
import { existsSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

function procsOf(dir: string): string[] {
  try {
    return readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean);
  } catch {
    return [];
  }
}

function killAll(dir: string): void {
  try {
    writeFileSync(join(dir, 'cgroup.kill'), '1');
  } catch {
    /* kernels before 5.14 have no cgroup.kill: signal each process */
    for (const pid of procsOf(dir)) {
      try { process.kill(Number(pid), 'SIGKILL'); } catch { /* already gone */ }
    }
  }
}

/** Kills every process in a cgroup subtree and removes its folders bottom-up. */
export async function removeCgroupTree(dir: string): Promise<void> {
  if (!existsSync(dir)) return;
  for (const ent of readdirSync(dir, { withFileTypes: true })) {
    if (ent.isDirectory()) await removeCgroupTree(join(dir, ent.name));
  }
  // A killed process leaves cgroup.procs only once its parent reaps it: until then rmdir says
  // EBUSY, so keep killing and retrying for a while (5 s) before giving up.
  for (let i = 0; ; i++) {
    if (procsOf(dir).length > 0) killAll(dir);
    try {
      rmdirSync(dir);
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      if (code !== 'EBUSY' || i >= 250) throw err;
    }
    await sleep(20);
  }
}

/** The same, synchronously, for process exit hooks where the event loop no longer runs. */
export function removeCgroupTreeSync(dir: string): void {
  if (!existsSync(dir)) return;
  for (const ent of readdirSync(dir, { withFileTypes: true })) {
    if (ent.isDirectory()) removeCgroupTreeSync(join(dir, ent.name));
  }
  for (let i = 0; i < 250; i++) {
    killAll(dir);
    try {
      rmdirSync(dir);
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      if (code !== 'EBUSY') throw err;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
    }
  }
}
