// The kube lab's supervisor: the process that holds a kube lab (kube-lab.ts: the API server
// stand-in, the lab controllers, a lab kubelet per node and the Service network) for as long as
// `weftctl up --kube` left it running. Those stand-ins live in one process, so this one outlives
// the `up` command (started detached, like the local mesh's own processes) and `weftctl down`
// stops it (cli/local/kube/up.ts).
//   node cli/local/kube/supervisor.ts --prefix <name> --state-dir <dir> [--nodes node1,node2] [--clusters <n>]
// With --clusters, it holds n labs on their own networks joined at the exchange (multicluster.ts);
// kube.json then lists them, its top-level fields naming cluster1.
// When the lab runs, it writes <state-dir>/kube.json (KubeLabState, written last: its presence
// means ready); on SIGTERM or SIGINT it removes everything the lab made (pods' processes, network
// namespaces, cgroups, BPF pins, the API server) and exits 0; on a fatal error it does the same and
// exits 1. Its log is wherever the caller sends stdout and stderr (<state-dir>/supervisor.log).
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { KubeLab } from './kube-lab.ts';
import { KubeMultiCluster, type KubeClusterAccess } from './multicluster.ts';

/** What `weftctl up --kube` and `down` read of a running kube lab. */
export interface KubeLabState {
  prefix: string;
  stateDir: string;
  /** The supervisor's process id (`down` signals it). */
  pid: number;
  startedAt: string;
  /** kubectl and `weftctl --kubeconfig` reach the lab API server with this file. */
  kubeconfig: string;
  apiServer: string;
  nodes: Array<{ name: string; ip: string; netns: string; pinRoot: string; cgroup: string }>;
  /** `up --kube --clusters n`: every cluster (the top-level fields are cluster1's). */
  clusters?: Array<KubeClusterAccess & { prefix: string; nodes: KubeLabState['nodes'] }>;
}

export const KUBE_STATE_FILE = 'kube.json';
/** The lab's own folder inside the state folder (node folders, pod volumes and logs, kubeconfig). */
export const KUBE_LAB_DIR = 'lab';

function log(msg: string): void {
  console.log(`${new Date().toISOString()} ${msg}`);
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { prefix: { type: 'string' }, 'state-dir': { type: 'string' }, nodes: { type: 'string', default: 'node1,node2' }, clusters: { type: 'string' } } });
  const prefix = values.prefix;
  const stateDir = values['state-dir'];
  if (!prefix || !stateDir) throw new Error('usage: supervisor.ts --prefix <name> --state-dir <dir> [--nodes a,b]');
  const nodes = values.nodes.split(',').filter(Boolean);
  const clusters = values.clusters !== undefined ? Number(values.clusters) : undefined;
  log(`creating the kube lab "${prefix}" (${clusters ? `${clusters} clusters, ` : ''}nodes ${nodes.join(', ')})`);
  const mc = clusters ? await KubeMultiCluster.create({ prefix, stateDir: join(stateDir, KUBE_LAB_DIR), clusters, nodes }) : undefined;
  const lab = mc ? mc.clusters[0]!.lab : await KubeLab.create({ prefix, stateDir: join(stateDir, KUBE_LAB_DIR), nodes });
  let stopping: Promise<void> | undefined;
  const stop = (why: string, code: number) => {
    stopping ??= (async () => {
      log(`stopping (${why}): pods, namespaces, cgroups, pins, API server`);
      try {
        await (mc ? mc.destroy() : lab.destroy());
      } finally {
        rmSync(join(stateDir, KUBE_STATE_FILE), { force: true });
        log('stopped');
        process.exit(code);
      }
    })();
  };
  process.on('SIGTERM', () => stop('SIGTERM', 0));
  process.on('SIGINT', () => stop('SIGINT', 0));
  process.on('uncaughtException', (e) => {
    log(`fatal: ${e.stack ?? e.message}`);
    stop('fatal error', 1);
  });
  if (mc) mc.start();
  else lab.start();
  const nodesOf = (l: KubeLab) => l.net.nodes.map((n) => ({ name: n.name, ip: n.ip, netns: n.netns, pinRoot: n.pinRoot, cgroup: n.cgroup }));
  const st: KubeLabState = {
    prefix, stateDir, pid: process.pid, startedAt: new Date().toISOString(), kubeconfig: lab.kubeconfigFile, apiServer: lab.api.url,
    nodes: nodesOf(lab),
    ...(mc ? { clusters: mc.clusters.map(({ lab: l, index: _i, ...access }) => ({ ...access, prefix: l.o.prefix, nodes: nodesOf(l) })) } : {}),
  };
  const file = join(stateDir, KUBE_STATE_FILE);
  writeFileSync(`${file}.tmp`, JSON.stringify(st, null, 2));
  renameSync(`${file}.tmp`, file);
  log(`running: API server ${lab.api.url}, kubeconfig ${lab.kubeconfigFile}`);
}

if (import.meta.main) {
  main().catch((e: Error) => {
    log(`fatal: ${e.stack ?? e.message}`);
    process.exit(1);
  });
}
