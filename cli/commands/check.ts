// `weftctl check`: machine preflight (kernel, BPF features, mounts, privileges, tools, ports) and,
// when a local mesh runs, its health (controller, agents, waypoints, certificates, BPF links) and,
// when it federates with other clusters, its east-west gateways and remote discovery; a local
// multi-cluster mesh (`weftctl up --clusters N`) is checked cluster by cluster.
//
// Exit codes: 0 every check passed (warnings allowed); 1 a check failed; 2 usage.
import { Command, Option } from 'commander';
import { checkMesh, runPreflight, type CheckResult, type MeshFacts, type PreflightSources } from '../check.ts';
import { checkFederation, type FederationFacts } from '../check-federation.ts';
import { isRunning, readState, type LocalState } from '../local/up.ts';
import { readLocalClusters } from '../local/multicluster-up.ts';
import { localMeshOptions } from './local-mesh.ts';
import { clusterPreflight } from '../check-cluster.ts';
import { KubeApiError, KubeClient, KubeConfigError, loadKubeConfig, type KubeFlags } from '../kube.ts';
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

export interface CheckCommandDeps {
  /** Facts about a running local mesh; default: read from it (cli/local/health.ts). */
  meshFacts?: (st: LocalState) => Promise<MeshFacts>;
  /** A mesh's federation status and gateway probes (undefined: no remote clusters); default: read from its controller. */
  federationFacts?: (st: LocalState) => Promise<FederationFacts | undefined>;
  /** Whether the local mesh with this prefix runs; default: its wire namespace exists. */
  isRunning?: (prefix: string) => boolean;
}

/** Every check of one running local mesh: its components, then (when it federates) gateways and remotes. */
async function checkRunningMesh(st: LocalState, deps: CheckCommandDeps): Promise<CheckResult[]> {
  const gather = deps.meshFacts ?? (async (s: LocalState) => (await import('../local/health.ts')).gatherMeshFacts(s));
  const gatherFederation = deps.federationFacts ?? (async (s: LocalState) => (await import('../local/health.ts')).gatherFederationFacts(s));
  const out = checkMesh(await gather(st));
  try {
    const fed = await gatherFederation(st);
    if (fed) out.push(...checkFederation(fed));
  } catch (e) {
    out.push({ id: 'mesh.federation', title: 'multi-cluster status', status: 'warn', detail: `the controller's /debug/federation did not answer: ${(e as Error).message}`, remedy: 'the controller\'s admin port (127.0.0.1:15000 where it runs) serves it; see controller.log' });
  }
  return out;
}

export function checkCommand(io: CommandIo = processIo, sources: Partial<PreflightSources> = {}, deps: CheckCommandDeps = {}): Command {
  const cmd = localMeshOptions(new Command('check'))
    .description('check that this machine can run the Weft agent (kernel, BPF features, mounts, privileges, tools, ports) and, when a local mesh runs, that its controller, agents, waypoints, certificates and BPF links are healthy')
    .option('--mesh', 'only the running local mesh (fails when none runs)')
    .option('--pre', 'before installing on a cluster: node kernels, OS and cgroup mode, Gateway API and Weft CRDs, read from the API (no local tools needed)')
    .option('--kubeconfig <file>', 'with --pre: kubeconfig of the cluster (default $KUBECONFIG, then ~/.kube/config)')
    .option('--context <name>', 'with --pre: kubeconfig context')
    .addOption(new Option('-o, --output <format>', 'output format').choices(['text', 'json']).default('text'))
    .action(async (flags: { output: 'text' | 'json'; prefix: string; stateDir: string; mesh?: boolean; pre?: boolean } & KubeFlags) => {
      if (flags.pre) {
        let results: CheckResult[];
        try {
          results = await clusterPreflight(new KubeClient(await loadKubeConfig(flags)));
        } catch (e) {
          if (!(e instanceof KubeConfigError || e instanceof KubeApiError)) throw e;
          io.err(`weftctl check --pre: ${e.message}\n`);
          io.setExitCode(EXIT_FAILED);
          return;
        }
        io.out(flags.output === 'json' ? JSON.stringify(results, null, 2) + '\n' : formatResults(results));
        io.setExitCode(results.some((r) => r.status === 'fail') ? EXIT_FAILED : EXIT_OK);
        return;
      }
      const results: CheckResult[] = flags.mesh ? [] : runPreflight(sources);
      const running = deps.isRunning ?? isRunning;
      const st = readState(flags.stateDir);
      const clusters = st ? undefined : readLocalClusters(flags.stateDir);
      const clusterStates = (clusters?.clusters ?? []).map((c) => ({ name: c.name, st: readState(c.stateDir) })).filter((c) => c.st && running(c.st.prefix));
      if (st && running(flags.prefix)) {
        results.push(...await checkRunningMesh(st, deps));
      } else if (clusterStates.length > 0) {
        // Each cluster's checks, named by cluster (ids `<cluster>.mesh.…`).
        for (const c of clusterStates) {
          for (const r of await checkRunningMesh(c.st!, deps)) results.push({ ...r, id: `${c.name}.${r.id}`, title: `${c.name}: ${r.title}` });
        }
      } else if (flags.mesh) {
        results.push({ id: 'mesh.running', title: 'local mesh running', status: 'fail', detail: `no local mesh "${flags.prefix}" runs (state folder ${flags.stateDir})`, remedy: 'start one with `weftctl up` (or set WEFT_LOCAL_PREFIX and WEFT_LOCAL_STATE_DIR to the ones it was started with)' });
      }
      io.out(flags.output === 'json' ? JSON.stringify(results, null, 2) + '\n' : formatResults(results));
      io.setExitCode(results.some((r) => r.status === 'fail') ? EXIT_FAILED : EXIT_OK);
    });
  return exitUsageOnCommanderError(cmd, io);
}
