// Named network namespaces (ip netns): list, remove with the processes inside.
import { run } from './exec.ts';

export function listNetns(): string[] {
  return run('ip', ['netns', 'list'], { allowFail: true })
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter(Boolean);
}

/** Kills the processes whose network namespace is the named one. */
export function killNetnsProcesses(name: string): void {
  for (const pid of run('ip', ['netns', 'pids', name], { allowFail: true }).split('\n').filter(Boolean)) {
    try { process.kill(Number(pid), 'SIGKILL'); } catch { /* already gone */ }
  }
}

/** Removes a namespace and kills whatever still runs in it. Missing namespaces are fine. */
export function deleteNetns(name: string): void {
  killNetnsProcesses(name);
  run('ip', ['netns', 'del', name], { allowFail: true });
}
