// `weftctl install`: prints the Kubernetes objects of a Weft installation for `kubectl apply -f -`.
//
// Exit codes: 0 rendered; 1 a CRD file under the CRD folder is broken; 2 usage (unknown or
// missing option, or a value that cannot render).
import { Command, InvalidArgumentError, Option } from 'commander';
import { renderInstall, toJson, toKustomizeBase, toYaml } from '../install/render.ts';
import { CrdLoadError, InstallOptionError } from '../install/errors.ts';
import {
  CNI_MODES, DEFAULT_CONTROLLER_REPLICAS, DEFAULT_LOG_LEVEL, DEFAULT_NAMESPACE, DEFAULT_TRUST_DOMAIN, LOG_LEVELS,
} from '../install/options.ts';
import { DEFAULT_CRD_DIR } from '../install/crds.ts';
import { terminalSafe } from './output.ts';
import { parseValues } from '../install/values.ts';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

function readValuesFile(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    throw new InstallOptionError('values', `-f ${file}: ${(e as Error).message}`);
  }
}

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;

/** Where a command writes and how it exits; tests replace it. */
export interface CommandIo {
  out(text: string): void;
  err(text: string): void;
  /** Ends the process for usage errors found by commander itself. */
  exit(code: number): never;
  /** Sets the exit code of a command that ran to the end. */
  setExitCode(code: number): void;
  /** Whether standard output is a terminal (screen-redrawing output only then); default no. */
  isTerminal?(): boolean;
  /** Clears a terminal screen (`weftctl top`): the one control sequence weftctl writes itself. */
  clearScreen?(): void;
}

/** Standard output and error, through terminalSafe: no control character that weftctl relays reaches the terminal. */
export const processIo: CommandIo = {
  out: (text) => void process.stdout.write(terminalSafe(text)),
  err: (text) => void process.stderr.write(terminalSafe(text)),
  clearScreen: () => void process.stdout.write('\x1b[2J\x1b[H'),
  exit: (code) => process.exit(code),
  setExitCode: (code) => {
    process.exitCode = code;
  },
  isTerminal: () => process.stdout.isTTY === true,
};

/** Commander's own errors (unknown option, missing value, bad choice) exit with {@link EXIT_USAGE}. */
export function exitUsageOnCommanderError(cmd: Command, io: CommandIo): Command {
  return cmd
    .configureOutput({ writeOut: io.out, writeErr: io.err })
    .exitOverride((err) => io.exit(err.exitCode === 0 ? EXIT_OK : EXIT_USAGE));
}

function parseWholeNumber(value: string): number {
  if (!/^\d+$/.test(value)) throw new InvalidArgumentError('give a whole number, e.g. 2.');
  return Number(value);
}

interface InstallFlags {
  image?: string;
  values?: string;
  kustomize?: string;
  trustDomain: string;
  trustDomainAlias?: string[];
  namespace: string;
  controllerReplicas: number;
  logLevel: string;
  cniMode: string;
  caSecret?: string;
  crdDir: string;
  output: 'yaml' | 'json';
  dashboard?: boolean;
  debugEndpoints?: boolean;
  splice?: boolean;
  clusterId?: string;
  network?: string;
  eastwest?: boolean;
  remoteMaxServices?: number;
  remoteMaxEndpoints?: number;
  remoteMaxDestinations?: number;
}

export function installCommand(io: CommandIo = processIo): Command {
  const cmd = new Command('install')
    .description('print the Kubernetes manifests of a Weft installation (pipe into `kubectl apply -f -`)')
    .option('--image <ref>', 'Weft container image, e.g. ghcr.io/acme/weft:0.1.0 (required, here or in -f)')
    .option('-f, --values <file>', 'YAML values: image, trustDomain, trustDomainAliases, namespace, caSecret, logLevel, controller/agent resources, nodeSelector, tolerations, imagePullSecrets, podLabels, podAnnotations, podMonitor (flags win)')
    .option('--trust-domain <domain>', 'SPIFFE trust domain of workload identities', DEFAULT_TRUST_DOMAIN)
    .option('--trust-domain-alias <domain>', 'another trust domain of the mesh (repeatable; Istio\'s meshConfig.trustDomainAliases): its identities are admitted, and policy principals written in any of them stand for the same service account in all', (td: string, all: string[] = []) => [...all, td])
    .option('--namespace <name>', 'namespace of the controller and agents', DEFAULT_NAMESPACE)
    .option('--controller-replicas <n>', 'controller replicas', parseWholeNumber, DEFAULT_CONTROLLER_REPLICAS)
    .addOption(new Option('--log-level <level>', 'log level of agents and controller').choices(LOG_LEVELS).default(DEFAULT_LOG_LEVEL))
    .addOption(new Option('--cni-mode <mode>', 'how the agent finds pod network namespaces').choices(CNI_MODES).default('none'))
    .option('--ca-secret <name>', 'kubernetes.io/tls Secret in the install namespace with the CA (tls.crt, tls.key); needed for more than one controller replica')
    .option('--crd-dir <dir>', 'folder of CRD YAML files', DEFAULT_CRD_DIR)
    .option('--dashboard', 'also run `weftctl dashboard` in the cluster beside the controller (read-only; Service weft-dashboard, port 15900)')
    .option('--debug-endpoints', 'agents, waypoints and the controller also serve their read-only admin paths on the metrics port, for weftctl certs/bpf/proxy-status/tap/status on a cluster (on with --dashboard; otherwise off: whoever reaches port 15020 could read config and flows)')
    .option('--splice', 'agents splice same-node connections in the kernel instead of carrying them themselves (default: off; docs/ARCHITECTURE.md data path step 5)')
    .option('--cluster-id <id>', 'multi-cluster: this cluster\'s ID; the controller reads the remote clusters named by kubeconfig Secrets labelled weft.dev/multicluster=true (weftctl create-remote-secret)')
    .option('--network <name>', 'multi-cluster: this cluster\'s network (default: the cluster ID)')
    .option('--eastwest', 'multi-cluster: run the east-west gateway (Service weft-eastwest, type LoadBalancer, port 15008), the door into this network for the others')
    .option('--remote-max-services <n>', 'multi-cluster: most Services the controller imports from one remote cluster; past it the Services last by namespace/name are left out, named (default 5000)', parseWholeNumber)
    .option('--remote-max-endpoints <n>', 'multi-cluster: most endpoints the controller imports from one remote cluster (default 50000)', parseWholeNumber)
    .option('--remote-max-destinations <n>', 'multi-cluster: most VIPs x ports the controller imports from one remote cluster, each an entry of every agent\'s weft_dests (default 16384)', parseWholeNumber)
    .addOption(new Option('-o, --output <format>', 'output format').choices(['yaml', 'json']).default('yaml'))
    .option('--kustomize <dir>', 'write a kustomize base (one file per object and kustomization.yaml) into <dir> instead of printing')
    .addHelpText('after', `
Before installing:
  - Gateway API v1 CRDs (HTTPRoute, GRPCRoute) in the cluster; Weft does not ship them.
  - Nodes with Linux 6.6+ and BTF: run \`weftctl check\` on one.
  - A CA: kubectl -n weft-system create secret tls weft-ca --cert ca.crt --key ca.key
    and its root for the agents (until the controller publishes it):
    kubectl -n weft-system create configmap weft-trust-bundle --from-file=root-cert.pem=ca.crt

Then:
  weftctl install --image <ref> --ca-secret weft-ca | kubectl apply --server-side -f -`)
    .action((flags: InstallFlags) => {
      try {
        const values = flags.values ? parseValues(readValuesFile(flags.values), flags.values) : undefined;
        // A flag given on the command line wins over the values file, which wins over the flag's default.
        const pick = <K extends 'trustDomain' | 'namespace' | 'logLevel'>(k: K): string =>
          (cmd.getOptionValueSource(k) === 'cli' ? flags[k] : values?.[k] ?? flags[k]);
        const caSecret = flags.caSecret ?? values?.caSecret;
        const objects = renderInstall({
          image: flags.image ?? values?.image ?? '',
          trustDomain: pick('trustDomain'),
          trustDomainAliases: flags.trustDomainAlias ?? values?.trustDomainAliases ?? [],
          namespace: pick('namespace'),
          ...(cmd.getOptionValueSource('controllerReplicas') === 'cli' || values?.controller?.replicas === undefined ? { controllerReplicas: flags.controllerReplicas } : {}),
          logLevel: pick('logLevel'),
          cniMode: flags.cniMode,
          crdDir: flags.crdDir,
          ...(caSecret !== undefined ? { caSecret } : {}),
          ...(values ? { values } : {}),
          ...(flags.dashboard ? { dashboard: true } : {}),
          ...(flags.debugEndpoints ? { debugEndpoints: true } : {}),
          ...(flags.splice ? { splice: true } : {}),
          ...(flags.clusterId !== undefined ? { clusterId: flags.clusterId } : {}),
          ...(flags.network !== undefined ? { network: flags.network } : {}),
          ...(flags.eastwest ? { eastwest: true } : {}),
          ...(flags.remoteMaxServices !== undefined ? { remoteMaxServices: flags.remoteMaxServices } : {}),
          ...(flags.remoteMaxEndpoints !== undefined ? { remoteMaxEndpoints: flags.remoteMaxEndpoints } : {}),
          ...(flags.remoteMaxDestinations !== undefined ? { remoteMaxDestinations: flags.remoteMaxDestinations } : {}),
          warn: (message) => io.err(`weftctl install: warning: ${message}\n`),
        });
        if (flags.kustomize) {
          mkdirSync(flags.kustomize, { recursive: true });
          const files = toKustomizeBase(objects);
          for (const [name, text] of files) writeFileSync(join(flags.kustomize, name), text);
          io.out(`wrote a kustomize base of ${files.size - 1} objects to ${flags.kustomize} (check it with \`kubectl kustomize ${flags.kustomize}\`)\n`);
        } else io.out(flags.output === 'json' ? toJson(objects) : toYaml(objects));
        io.setExitCode(EXIT_OK);
      } catch (err) {
        if (err instanceof InstallOptionError) {
          io.err(`weftctl install: ${err.message}\n`);
          io.setExitCode(EXIT_USAGE);
        } else if (err instanceof CrdLoadError) {
          io.err(`weftctl install: ${err.message}\n`);
          io.setExitCode(EXIT_FAILED);
        } else {
          throw err;
        }
      }
    });
  return exitUsageOnCommanderError(cmd, io);
}
