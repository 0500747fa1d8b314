// `agent --uninstall`: removes the node's Weft datapath, so that pods are no longer redirected once
// the agents are gone. Without it the pins under /sys/fs/bpf/weft outlive the DaemonSet (that is
// what makes an agent restart seamless), and every enrolled pod's connect() to a mesh address keeps
// landing on port 15001 where nobody listens any more. It adopts the pinned links, detaches every
// cgroup and pod program, and removes every pin under the pin root. `weftctl uninstall` runs it on
// every node (a cleanup DaemonSet) after the agent DaemonSet is gone. Given the host's CNI folders,
// it first takes the chained plugin out of the chain (agent/cni/install.ts removeWeftCni).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Datapath, DEFAULT_PIN_DIR, type DatapathOptions } from './datapath/index.ts';

export interface UninstallResult {
  pinRoot: string;
  /** Cgroup links and enrolled pods that were detached. */
  cgroupLinks: number;
  pods: number;
}

/** Detaches and unpins everything under the pin root; a node with nothing pinned is left as it is. */
export function uninstallDatapath(opts: DatapathOptions & { bpffs?: string } = {}): UninstallResult | undefined {
  const pinRoot = opts.pinRoot ?? join(opts.bpffs ?? '/sys/fs/bpf', DEFAULT_PIN_DIR);
  if (!existsSync(pinRoot)) return undefined;
  const dp = Datapath.open({ ...opts, pinRoot });
  const result = { pinRoot: dp.pinRoot, cgroupLinks: dp.cgroupLinks().length, pods: dp.pods().length };
  dp.teardown();
  return result;
}
