// Running a CNI plugin the way a container runtime does (the CNI spec's execution protocol:
// CNI_* variables, the network configuration on stdin, the result on stdout). The local mesh
// (cli/local/mesh.ts) and the kube lab's kubelet (cli/local/kube/kubelet.ts) start pods through it, so
// the agent's chained plugin (agent/cni/weft-cni.c) runs exactly as a kubelet's runtime runs it.
import { spawn } from 'node:child_process';
import { dirname } from 'node:path';

/** What one run of a CNI plugin printed and exited with. */
export interface CniRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface CniInvocation {
  /** The plugin binary. */
  plugin: string;
  command: 'ADD' | 'DEL' | 'CHECK';
  /** The pod's network namespace (a path) and its address, as the main plugin set them up. */
  netnsPath: string;
  podIp: string;
  namespace: string;
  name: string;
  uid: string;
  containerId: string;
  /** The plugin's own entry of the network configuration (type, name, its settings), without prevResult. */
  netconf: Record<string, unknown>;
  /**
   * Runs the plugin through this argv prefix (e.g. a chroot into the node's file system view);
   * default: directly.
   */
  wrap?: string[];
}

/** Runs the plugin once, with the main plugin's result as prevResult. */
export function runCniPlugin(c: CniInvocation): Promise<CniRun> {
  const netconf = {
    cniVersion: '1.0.0',
    ...c.netconf,
    prevResult: {
      cniVersion: '1.0.0',
      interfaces: [{ name: 'eth0', sandbox: c.netnsPath }],
      ips: [{ address: `${c.podIp}/32`, interface: 0 }],
    },
  };
  const argv = [...(c.wrap ?? []), c.plugin];
  const child = spawn(argv[0]!, argv.slice(1), {
    env: {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      CNI_COMMAND: c.command,
      CNI_CONTAINERID: c.containerId,
      CNI_NETNS: c.netnsPath,
      CNI_IFNAME: 'eth0',
      CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${c.namespace};K8S_POD_NAME=${c.name};K8S_POD_UID=${c.uid}`,
      CNI_PATH: dirname(c.plugin),
    },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b));
  child.stderr.on('data', (b: Buffer) => (stderr += b));
  child.stdin.end(JSON.stringify(netconf));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}
