// Runs the real weftctl as a user would, as a child process, and collects its output.
import { spawn } from 'node:child_process';
import { collectOutput } from '../../lib/sys/exec.ts';
import { join } from 'node:path';
import { REPO_ROOT } from '../../cli/local/mesh.ts';

export async function weftctl(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  const child = spawn(process.execPath, [join(REPO_ROOT, 'cli/weftctl.ts'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const { code, stdout: out, stderr: err } = await collectOutput(child);
  return { code, out, err };
}
