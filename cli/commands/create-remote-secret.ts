// `weftctl create-remote-secret`: prints the Secret that lets the other clusters' controllers read
// this cluster (Istio's `istioctl create-remote-secret`; cli/install/remote-secret.ts says how).
//   weftctl create-remote-secret --context cluster2 --name cluster2 | kubectl --context cluster1 apply -f -
import { Command } from 'commander';
import { loadKubeConfig } from '../kube.ts';
import { createRemoteSecret, remoteSecretYaml } from '../install/remote-secret.ts';
import { DEFAULT_NAMESPACE } from '../install/options.ts';
import { EXIT_FAILED, EXIT_OK, processIo, type CommandIo } from './install.ts';

export function createRemoteSecretCommand(io: CommandIo = processIo): Command {
  return new Command('create-remote-secret')
    .description('print a Secret (kubeconfig of the weft-reader ServiceAccount) that lets other clusters\' controllers read this cluster; apply it in their install namespace')
    .requiredOption('--name <cluster-id>', 'this cluster\'s ID (its controller\'s --cluster-id)')
    .option('--kubeconfig <file>', 'kubeconfig of this cluster (default $KUBECONFIG, ~/.kube/config)')
    .option('--context <name>', 'kubeconfig context of this cluster')
    .option('--namespace <name>', 'install namespace (where weft-reader lives, and where the Secret goes)', DEFAULT_NAMESPACE)
    .option('--server <url>', 'API server address as the other clusters reach it (default: the kubeconfig\'s)')
    .option('--trust-domain <td>', 'this cluster\'s trust domain, when the other clusters\' differ')
    .option('--token-seconds <n>', 'lifetime of the token requested for weft-reader', String(365 * 24 * 3600))
    .option('--allow-insecure', 'write a plain-HTTP server, or skip TLS verification when the kubeconfig has no CA (the other controllers need --remote-secret-allow-insecure)')
    .action(async (flags: { name: string; kubeconfig?: string; context?: string; namespace: string; server?: string; trustDomain?: string; tokenSeconds: string; allowInsecure?: boolean }) => {
      try {
        const secret = await createRemoteSecret({
          kubeConfig: await loadKubeConfig(flags), clusterId: flags.name, namespace: flags.namespace, tokenSeconds: Number(flags.tokenSeconds),
          ...(flags.server ? { server: flags.server } : {}), ...(flags.trustDomain ? { trustDomain: flags.trustDomain } : {}),
          ...(flags.allowInsecure ? { allowInsecure: true } : {}),
        });
        io.out(remoteSecretYaml(secret));
        io.setExitCode(EXIT_OK);
      } catch (e) {
        io.err(`weftctl create-remote-secret: ${(e as Error).message}\n`);
        io.setExitCode(EXIT_FAILED);
      }
    });
}
