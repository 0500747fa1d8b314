// The set-up every local-mesh e2e file shares: a Lab (per-run name prefix, cleanup also on
// failure and on SIGINT/SIGTERM), a state folder, and one LocalMesh that is destroyed after the
// file's tests, whatever happened.
import { after } from 'node:test';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { Lab } from '../lab/lab.ts';
import { LocalMesh, type LocalMeshOptions } from '../../cli/local/mesh.ts';
import { collectOutput, type ChildOutput } from '../../lib/sys/exec.ts';

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
 * Starts a fixture in a workload's pod that runs until stop(): stop() sends SIGTERM (the fixtures
 * that take it finish their round and print their summary) and returns what the process printed,
 * killing it if it has not exited 20 s later. For load held across steps whose length a loaded
 * machine decides, instead of a fixed duration.
 */
export function holdInPod(mesh: LocalMesh, workload: string, cmd: string, args: string[]): { stop(): Promise<ChildOutput> } {
  const w = mesh.workloads.get(workload);
  if (!w) throw new Error(`no workload ${workload} in this mesh`);
  const child = mesh.net.spawn(w.pod, cmd, args);
  const output = collectOutput(child);
  return {
    async stop() {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      try {
        return await output;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

/** The agent's access-log lines (JSON on its stdout) that refused something. */
export function agentDeniedLines(mesh: LocalMesh, node: string): Array<Record<string, unknown>> {
  return readFileSync(join(mesh.logDir, `agent-${node}.log`), 'utf8').split('\n')
    .filter((l) => l.includes('"type":"access"') && l.includes('"denied"'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** The sum of weft_connections_denied_total over the series carrying every label of `labels`. */
export function deniedMetric(metrics: string, labels: Record<string, string>): number {
  let total = 0;
  for (const line of metrics.split('\n')) {
    if (!line.startsWith('weft_connections_denied_total{')) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) total += Number(line.split(' ').pop());
  }
  return total;
}

export { until } from '../lab/wait.ts';
