// The set-up every local-mesh e2e file shares: a Lab (per-run name prefix, cleanup also on
// failure and on SIGINT/SIGTERM), a state folder, and one LocalMesh that is destroyed after the
// file's tests, whatever happened.
import { after } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { Lab } from '../lab/lab.ts';
import { LocalMesh, type LocalMeshOptions } from '../../cli/local/mesh.ts';

export interface MeshSuite {
  readonly lab: Lab;
  readonly stateDir: string;
  /** Builds the mesh's network and nodes (nothing runs yet; see LocalMesh.create). */
  create(nodes?: string[], opts?: Partial<Omit<LocalMeshOptions, 'prefix' | 'stateDir' | 'nodes'>>): Promise<LocalMesh>;
}

/** Call at the top of an e2e file; registers the clean-up with node:test's `after`. */
export function localMeshSuite(): MeshSuite {
  const lab = new Lab();
  const stateDir = mkdtempSync(join(tmpdir(), 'weft-e2e-'));
  let mesh: LocalMesh | undefined;
  after(async () => {
    await mesh?.destroy();
    await lab.cleanup();
    rmSync(stateDir, { recursive: true, force: true });
  });
  return {
    lab,
    stateDir,
    async create(nodes = ['node1', 'node2'], opts = {}) {
      mesh = await LocalMesh.create({ ...opts, prefix: lab.id, stateDir, nodes });
      return mesh;
    },
  };
}

/**
 * Polls `check` until it is true and returns how long that took; after `timeoutMs` fails naming
 * `what`, the last error `check` threw (a throw counts as "not yet": a process may be restarting)
 * and `explain()` (log tails).
 */
export async function until(what: string, check: () => Promise<boolean> | boolean, timeoutMs: number, opts: { intervalMs?: number; explain?: () => string } = {}): Promise<number> {
  const started = Date.now();
  let lastError: unknown;
  for (;;) {
    try {
      if (await check()) return Date.now() - started;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() - started > timeoutMs) {
      const last = lastError ? ` (last error: ${(lastError as Error).message})` : '';
      throw new Error(`${what}: not within ${timeoutMs} ms${last}${opts.explain ? `\n${opts.explain()}` : ''}`);
    }
    await sleep(opts.intervalMs ?? 100);
  }
}
