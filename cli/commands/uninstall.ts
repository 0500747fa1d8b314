// `weftctl uninstall`: removes Weft from the cluster of the current kubeconfig context, including
// the BPF programs and pins on every node (cli/install/uninstall.ts says in which order and why).
import { Command } from 'commander';
import { loadKubeConfig } from '../kube.ts';
import { uninstall } from '../install/uninstall.ts';
import { DEFAULT_NAMESPACE } from '../install/options.ts';
import { EXIT_FAILED, processIo, type CommandIo } from './install.ts';

export function uninstallCommand(io: CommandIo = processIo): Command {
  return new Command('uninstall')
    .description('remove Weft from the cluster: agents, BPF programs and pins on every node, controller, waypoints, RBAC, namespace and CRDs')
    .option('--kubeconfig <file>', 'kubeconfig (default $KUBECONFIG, ~/.kube/config, or in-cluster)')
    .option('--namespace <name>', 'namespace Weft was installed in', DEFAULT_NAMESPACE)
    .option('--image <ref>', 'image for the node cleanup (default: the installed agent DaemonSet\'s)')
    .option('--keep-crds', 'keep the CustomResourceDefinitions, and so the Waypoints and policies')
    .option('--timeout <seconds>', 'longest wait for each step', '180')
    .action(async (flags: { kubeconfig?: string; namespace: string; image?: string; keepCrds?: boolean; timeout: string }) => {
      try {
        const { deleted } = await uninstall({
          kubeConfig: await loadKubeConfig(flags), namespace: flags.namespace, keepCrds: !!flags.keepCrds, timeoutMs: Number(flags.timeout) * 1000,
          ...(flags.image ? { image: flags.image } : {}), say: (l) => io.out(`${l}\n`),
        });
        io.out(`removed ${deleted.length} objects\n`);
      } catch (e) {
        io.err(`uninstall: ${(e as Error).message}\n`);
        io.setExitCode(EXIT_FAILED);
      }
    });
}
