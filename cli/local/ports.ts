// When an agent or the controller of the local mesh exits because a port is taken, say which port
// and which process holds it, instead of leaving the operator with a log tail.
import { spawnSync } from 'node:child_process';

/** The `host:port` a log says could not be bound (Node: `listen EADDRINUSE: address already in use h:p`). */
export function busyAddressInLog(log: string): { host: string; port: number } | undefined {
  const m = /EADDRINUSE[^\n]*?address already in use (\S+):(\d+)/.exec(log);
  return m ? { host: m[1]!, port: Number(m[2]) } : undefined;
}

/** Processes holding a listening socket in `ss -ltnpH` output: `python3 (pid 8614)`. */
export function holdersFromSs(ss: string): string[] {
  const out = new Set<string>();
  for (const m of ss.matchAll(/\("([^"]+)",pid=(\d+)/g)) out.add(`${m[1]} (pid ${m[2]})`);
  return [...out];
}

/**
 * One sentence naming the busy port and what holds it in `netns`, or undefined when the log shows
 * no bind failure.
 */
export function explainBusyPort(netns: string, log: string): string | undefined {
  const busy = busyAddressInLog(log);
  if (!busy) return undefined;
  const ss = spawnSync('ip', ['netns', 'exec', netns, 'ss', '-ltnpH', `sport = :${busy.port}`], { encoding: 'utf8' });
  const holders = ss.status === 0 ? holdersFromSs(ss.stdout) : [];
  const who = holders.length ? `held by ${holders.join(', ')}` : 'held by a process that has exited or that ss cannot see';
  return `port ${busy.port} on ${busy.host} is already in use (${who} in network namespace ${netns}); stop it, or run \`weftctl down\` if it is left from an earlier local mesh`;
}
