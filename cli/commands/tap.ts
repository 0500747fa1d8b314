// weftctl tap: the mesh's live flows in the terminal (like `linkerd viz tap` and `hubble observe`),
// from every agent's and waypoint's admin /flows stream (the local mesh, or a cluster through the
// API server's pod proxy), filtered by namespace, workload and verdict.
import { Option } from 'commander';
import { FlowEnricher, flowMatches, flowSources, watchFlows, type Flow, type FlowFilter, type Verdict } from '../flows.ts';
import { components } from '../components.ts';
import { inspectCommand } from './inspect.ts';
import type { TargetFlags } from './target.ts';
import { processIo, type CommandIo } from './install.ts';
import { oneLine } from './output.ts';

interface TapFlags extends TargetFlags {
  namespace?: string;
  workload?: string;
  verdict?: Verdict;
  output: 'line' | 'json';
  recent?: boolean;
  count?: string;
  duration?: string;
}

const endpoint = (x: Flow['source'] | Flow['destination']) => {
  const name = ('service' in x && x.service) || (x.namespace && x.workload ? `${x.namespace}/${x.workload}` : x.workload);
  return name ? `${name}${x.address ? ` (${x.address})` : ''}` : (x.address ?? '?');
};

/** One flow as one line of text. */
export function flowLine(f: Flow): string {
  const what = f.kind === 'http' ? `${f.method ?? ''} ${f.path ?? ''} ${f.status ?? ''}`.trim() : `${f.bytesSent ?? 0}B out ${f.bytesReceived ?? 0}B in`;
  const why = f.verdict === 'allowed' ? (f.security ?? '') : `${f.policy ? `policy ${f.policy}: ` : ''}${f.reason ?? ''}`;
  // Every field came from a reporter's entry (a path, a header, a reason): one line, controls escaped.
  return oneLine(`${f.time.slice(11, 23)}  ${f.reporter.padEnd(22)}  ${f.verdict.toUpperCase().padEnd(7)}  ${endpoint(f.source)} → ${endpoint(f.destination)}  ${what}  ${why}`.trimEnd());
}

export function tapCommand(io: CommandIo = processIo) {
  return inspectCommand<TapFlags>('tap', 'tap', io, (cmd) => cmd
    .description('stream live flows (connections and requests) from every agent and waypoint')
    .option('-n, --namespace <ns>', 'only flows from or to this namespace')
    .option('--workload <name>', 'only flows from or to this workload (or service)')
    .addOption(new Option('--verdict <v>', 'only flows with this verdict').choices(['allowed', 'denied', 'error']))
    .addOption(new Option('-o, --output <format>', 'one line per flow, or one JSON object per line').choices(['line', 'json']).default('line'))
    .option('--recent', 'start with the flows each component remembers')
    .option('--count <n>', 'stop after this many flows')
    .option('--duration <seconds>', 'stop after this long'), async (m, f) => {
      const filter: FlowFilter = { ...(f.namespace ? { namespace: f.namespace } : {}), ...(f.workload ? { workload: f.workload } : {}), ...(f.verdict ? { verdict: f.verdict } : {}) };
      const max = f.count ? Number(f.count) : Infinity;
      if (!(max > 0)) throw new Error(`--count must be a positive number, not ${f.count}`);
      const ac = new AbortController();
      const stop = () => ac.abort();
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      const timer = f.duration ? setTimeout(stop, Number(f.duration) * 1000) : undefined;
      let seen = 0;
      // Names for the addresses reporters give (a service VIP, a pod IP), refreshed now and then.
      const names = new FlowEnricher();
      const sources = flowSources(await components(m.target));
      await names.load(() => m.agents());
      const refresh = setInterval(() => void names.load(() => m.agents()), 10_000);
      try {
        await watchFlows(sources, (raw) => {
          const flow = names.enrich(raw);
          if (ac.signal.aborted || !flowMatches(flow, filter)) return;
          io.out(f.output === 'json' ? JSON.stringify(flow) + '\n' : flowLine(flow) + '\n');
          if (++seen >= max) ac.abort();
        }, ac.signal, {
          recent: f.recent === true,
          onDropped: (who, n) => io.err(`weftctl tap: ${who} dropped ${n} flows while this terminal was slow\n`),
          onError: (who, e) => io.err(`weftctl tap: ${who}: ${e.message} (retrying)\n`),
        });
      } finally {
        clearInterval(refresh);
        clearTimeout(timer);
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
      }
    });
}
