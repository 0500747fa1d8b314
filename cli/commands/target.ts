// Which mesh a command talks to: a cluster through a kubeconfig, or the local mesh (`weftctl up`).
//   --local, or WEFT_LOCAL_PREFIX/WEFT_LOCAL_STATE_DIR set      → the local mesh
//   --kubeconfig, --context, or $KUBECONFIG set                  → the cluster
//   otherwise: the local mesh when one runs, else the default kubeconfig (~/.kube/config)
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import { EXIT_FAILED, type CommandIo } from './install.ts';
import { isRunning, readState, type LocalState } from '../local/up.ts';
import { KubeClient, KubeConfigError, loadKubeConfig, type KubeFlags } from '../kube.ts';
import { ENV_LOCAL_PREFIX, ENV_LOCAL_STATE_DIR, localMeshOptions, type LocalMeshFlags } from './local-mesh.ts';
import { DEFAULT_INSTALL_NAMESPACE } from '../../lib/defaults.ts';

/** A cluster target reads its agents and controllers only in `namespace`, where Weft is installed. */
export type Target = { kind: 'local'; st: LocalState } | { kind: 'cluster'; kube: KubeClient; namespace: string };

export interface TargetFlags extends KubeFlags, LocalMeshFlags {
  local?: boolean;
  /** The namespace Weft is installed in (`weftctl install --namespace`). Default weft-system. */
  weftNamespace?: string;
}

export class NoTargetError extends Error {
  readonly code = 'WEFT_NO_TARGET';
  constructor(message: string) {
    super(message);
    this.name = 'NoTargetError';
  }
}

/** Adds --kubeconfig, --context and --local (and the hidden local-mesh flags). */
export function targetOptions(cmd: Command): Command {
  return localMeshOptions(cmd)
    .option('--kubeconfig <file>', 'kubeconfig of the cluster (default $KUBECONFIG, then ~/.kube/config)')
    .option('--context <name>', 'kubeconfig context (default: its current context)')
    .option('--local', 'the local mesh started with `weftctl up`, not a cluster')
    .option('--weft-namespace <ns>', `on a cluster, the namespace Weft is installed in: its agents and controller are read there only (a pod elsewhere that wears their labels is not one of them)`, DEFAULT_INSTALL_NAMESPACE);
}

/** The mesh the flags and environment point at; NoTargetError or KubeConfigError when none. */
export async function chooseTarget(f: TargetFlags, env: NodeJS.ProcessEnv = process.env): Promise<Target> {
  const local = (): Target | undefined => {
    const st = readState(f.stateDir);
    return st && isRunning(f.prefix) ? { kind: 'local', st } : undefined;
  };
  const wantsLocal = f.local || env[ENV_LOCAL_PREFIX] !== undefined || env[ENV_LOCAL_STATE_DIR] !== undefined;
  const wantsCluster = f.kubeconfig !== undefined || f.context !== undefined || !!env.KUBECONFIG;
  if (wantsLocal && !wantsCluster) {
    const t = local();
    if (!t) throw new NoTargetError(`no local mesh "${f.prefix}" is running; start one with \`weftctl up\``);
    return t;
  }
  if (!wantsCluster) {
    const t = local();
    if (t) return t;
    // In a pod (the dashboard beside the controller) the ServiceAccount is the credential.
    if (!existsSync(join(homedir(), '.kube', 'config')) && !env.KUBERNETES_SERVICE_HOST) {
      throw new NoTargetError(`no cluster and no local mesh: pass --kubeconfig (or set KUBECONFIG), or start a local mesh with \`weftctl up\``);
    }
  }
  return { kind: 'cluster', kube: new KubeClient(await loadKubeConfig(f)), namespace: f.weftNamespace ?? DEFAULT_INSTALL_NAMESPACE };
}

export { KubeConfigError };

/** The target a command's flags point at; undefined (one line, exit 1) when there is none. */
export async function commandTarget(cmd: Command, f: TargetFlags, io: CommandIo): Promise<Target | undefined> {
  // --prefix/--state-dir on the command line ask for the local mesh as --local does.
  const explicitLocal = cmd.getOptionValueSource('prefix') === 'cli' || cmd.getOptionValueSource('stateDir') === 'cli';
  try {
    return await chooseTarget({ ...f, local: f.local || explicitLocal });
  } catch (err) {
    if (!(err instanceof NoTargetError || err instanceof KubeConfigError)) throw err;
    io.err(`weftctl: ${err.message}\n`);
    io.setExitCode(EXIT_FAILED);
    return undefined;
  }
}
