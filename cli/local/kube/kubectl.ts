// The real kubectl against a kube lab (or one cluster of several), with its kubeconfig: what
// `weftctl up --kube` and the multi-cluster lab drive the lab with.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { LocalMeshError } from '../up.ts';

const execFileP = promisify(execFile);

/** kubectl against the lab (or one cluster of several), with its kubeconfig. */
export async function kubectl(st: { kubeconfig: string }, args: string[]): Promise<string> {
  try {
    return (await execFileP('kubectl', ['--kubeconfig', st.kubeconfig, ...args], { maxBuffer: 64 << 20 })).stdout;
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new LocalMeshError('WEFT_KUBECTL_FAILED', `kubectl ${args.join(' ')}: ${(err.stderr || err.message).trim()}`);
  }
}

