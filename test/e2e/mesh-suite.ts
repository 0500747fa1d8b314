// The set-up every local-mesh e2e file shares: a Lab (per-run name prefix, cleanup also on
// failure and on SIGINT/SIGTERM), a state folder, and one LocalMesh that is destroyed after the
// file's tests, whatever happened.
import { after } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
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

export { until } from '../lab/wait.ts';
