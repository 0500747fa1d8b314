// `weftctl check`: machine preflight (kernel, BPF features, mounts, privileges, tools, ports).
//
// Exit codes: 0 every check passed (warnings allowed); 1 a check failed; 2 usage.
import { Command, Option } from 'commander';
import { runPreflight, type CheckResult, type PreflightSources } from '../check.ts';
import { EXIT_FAILED, EXIT_OK, exitUsageOnCommanderError, processIo, type CommandIo } from './install.ts';

const MARK = { pass: 'ok  ', warn: 'WARN', fail: 'FAIL' } as const;

/** One line per check; failures and warnings get a second line with what to do. */
export function formatResults(results: readonly CheckResult[]): string {
  const width = Math.max(...results.map((r) => r.title.length));
  const lines: string[] = [];
  for (const r of results) {
    lines.push(`${MARK[r.status]}  ${r.title.padEnd(width)}  ${r.detail}`);
    if (r.status !== 'pass') lines.push(`      ${''.padEnd(width)}  -> ${r.remedy}`);
  }
  const failed = results.filter((r) => r.status === 'fail').length;
  const warned = results.filter((r) => r.status === 'warn').length;
  lines.push('', failed ? `${failed} check(s) failed, ${warned} warning(s)` : `all checks passed, ${warned} warning(s)`);
  return lines.join('\n') + '\n';
}

export function checkCommand(io: CommandIo = processIo, sources: Partial<PreflightSources> = {}): Command {
  const cmd = new Command('check')
    .description('check that this machine can run the Weft agent: kernel, BPF features, mounts, privileges, tools, ports')
    .addOption(new Option('-o, --output <format>', 'output format').choices(['text', 'json']).default('text'))
    .action((flags: { output: 'text' | 'json' }) => {
      const results = runPreflight(sources);
      io.out(flags.output === 'json' ? JSON.stringify(results, null, 2) + '\n' : formatResults(results));
      io.setExitCode(results.some((r) => r.status === 'fail') ? EXIT_FAILED : EXIT_OK);
    });
  return exitUsageOnCommanderError(cmd, io);
}
