// weftctl up / down / status: the local mesh (cli/local/up.ts).
import { Command } from 'commander';
import { DEFAULT_PREFIX, DEFAULT_STATE_DIR, down, showTraffic, status, up } from '../local/up.ts';
import { downClusters, showClusterTraffic, upClusters } from '../local/multicluster-up.ts';
import { clusterAnswers, downKube, isKubeLab, upKube } from '../local/kube/up.ts';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { localMeshOptions as localOptions, type LocalMeshFlags as LocalFlags } from './local-mesh.ts';
import { inspectCommand } from './inspect.ts';
import type { TargetFlags } from './target.ts';
import { processIo, exitUsageOnCommanderError, EXIT_FAILED, type CommandIo } from './install.ts';

function fail(io: CommandIo, err: unknown): void {
  const e = err as Error & { code?: string };
  io.err(`weftctl: ${e.message}\n`);
  io.setExitCode(EXIT_FAILED);
}

export function upCommand(io: CommandIo = processIo): Command {
  return exitUsageOnCommanderError(localOptions(new Command('up'), true), io)
    .description('start a local two-node mesh with sample applications and show traffic flowing')
    .option('--dual-stack', 'give nodes and pods IPv6 addresses too (not meshed: IPv6 into enrolled pods is refused)')
    .option('--splice', 'agents splice same-node connections in the kernel instead of carrying them themselves (default: off)')
    .option('--clusters <n>', 'several clusters, each on its own network, joined by east-west gateways (multi-cluster)')
    .option('--trust-domains <mode>', 'with --clusters: shared (one trust domain) or per-cluster (cluster<i>.local, the others as aliases)', 'shared')
    .option('--kube', 'the kube lab instead: stand-ins for a Kubernetes API server and kubelets on two nodes, Weft installed with kubectl from `weftctl install`\'s manifests; prints a kubeconfig for kubectl and weftctl (with --clusters: that many one-node clusters, multi-network)')
    .action(async (f: LocalFlags & { dualStack?: boolean; splice?: boolean; clusters?: string; trustDomains: string; kube?: boolean }) => {
      const started = Date.now();
      const say = (l: string) => io.out(`${l}\n`);
      if (f.kube) {
        const clusters = f.clusters !== undefined ? Number(f.clusters) : undefined;
        if (f.dualStack || (clusters !== undefined && (!Number.isInteger(clusters) || clusters < 2 || clusters > 9))) {
          io.err(f.dualStack ? 'weftctl up: --kube does not take --dual-stack\n' : `weftctl up: --clusters must be a whole number from 2 to 9, not "${f.clusters}"\n`);
          io.setExitCode(2);
          return;
        }
        try {
          const { st, traffic } = await upKube({ prefix: f.prefix, stateDir: f.stateDir, say, ...(clusters ? { clusters } : {}) });
          if (st.clusters) {
            say(`kube lab ready in ${((Date.now() - started) / 1000).toFixed(1)} s: ${st.clusters.length} clusters on their own networks, joined at their east-west gateways; traffic from cluster1's demo/client:`);
            const answers = await clusterAnswers(traffic);
            for (const [cluster, pods] of answers) say(`  ${cluster}: ${[...pods].map(([pod, n]) => `${n}× ${pod}`).join(', ')}`);
            say('');
            for (const c of st.clusters) say(`${c.name}: network ${c.network}, edge ${c.edgeIp} (API server :6443, east-west gateway :15008), kubeconfig ${c.kubeconfig}`);
            say(`remove:     weftctl down${f.prefix === DEFAULT_PREFIX && f.stateDir === DEFAULT_STATE_DIR ? '' : ` --prefix ${f.prefix} --state-dir ${f.stateDir}`}`);
            if (answers.has('error')) io.setExitCode(EXIT_FAILED);
            return;
          }
          say(`kube lab ready in ${((Date.now() - started) / 1000).toFixed(1)} s; traffic from demo/client (node1):`);
          const ok = await showTraffic(traffic, say);
          say('');
          say(`nodes:      ${st.nodes.map((n) => `${n.name} ${n.ip}`).join(', ')}`);
          say(`kubeconfig: ${st.kubeconfig}`);
          say(`try:        kubectl --kubeconfig ${st.kubeconfig} get pods -A`);
          say(`            weftctl workloads --kubeconfig ${st.kubeconfig}   (also services, waypoints, status, check, top)`);
          say(`logs:       ${st.stateDir}/supervisor.log, pods' in ${st.stateDir}/lab/nodes/<node>/host/logs`);
          say(`remove:     weftctl down${f.prefix === DEFAULT_PREFIX && f.stateDir === DEFAULT_STATE_DIR ? '' : ` --prefix ${f.prefix} --state-dir ${f.stateDir}`}`);
          if (!ok) io.setExitCode(EXIT_FAILED);
        } catch (err) {
          fail(io, err);
        }
        return;
      }
      if (isKubeLab(f.stateDir)) {
        io.err(`weftctl up: a kube lab "${f.prefix}" was started in ${f.stateDir} (weftctl up --kube); remove it first with \`weftctl down\`\n`);
        io.setExitCode(EXIT_FAILED);
        return;
      }
      if (f.clusters !== undefined) {
        const n = Number(f.clusters);
        if (!Number.isInteger(n) || n < 2 || n > 9) {
          io.err(`weftctl up: --clusters must be a whole number from 2 to 9, not "${f.clusters}"\n`);
          io.setExitCode(2);
          return;
        }
        if (f.trustDomains !== 'shared' && f.trustDomains !== 'per-cluster') {
          io.err(`weftctl up: --trust-domains must be shared or per-cluster, not "${f.trustDomains}"\n`);
          io.setExitCode(2);
          return;
        }
        try {
          const { state, mc } = await upClusters({ prefix: f.prefix, stateDir: f.stateDir, clusters: n, trustDomains: f.trustDomains, say });
          say(`mesh ready in ${((Date.now() - started) / 1000).toFixed(1)} s; traffic from ${state.clusters[0]!.name}'s demo/client:`);
          const ok = await showClusterTraffic(mc, say);
          say('');
          for (const c of state.clusters) say(`${c.name}: network ${c.network}, gateway ${c.edgeIp}:15008; inspect with WEFT_LOCAL_PREFIX=${c.prefix} WEFT_LOCAL_STATE_DIR=${c.stateDir} weftctl workloads | services`);
          say(`remove:   weftctl down --prefix ${f.prefix} --state-dir ${f.stateDir}`);
          if (!ok) io.setExitCode(EXIT_FAILED);
        } catch (err) {
          fail(io, err);
        }
        return;
      }
      try {
        const st = await up({ prefix: f.prefix, stateDir: f.stateDir, say, dualStack: f.dualStack ?? false, ...(f.splice ? { splice: true } : {}) });
        say(`mesh ready in ${((Date.now() - started) / 1000).toFixed(1)} s; traffic from demo/client (node1):`);
        const ok = await showTraffic(st, say);
        say('');
        say(`nodes:    ${st.nodes.map((n) => `${n.name} ${n.ip}`).join(', ')}`);
        say(`pods:     ${st.pods.map((p) => `${p.namespace}/${p.name}@${p.node}`).join(', ')}`);
        say(`config:   ${st.stateDir}/config (the controller watches it; weftctl apply -f adds to it)`);
        say(`logs:     ${st.stateDir}/logs`);
        say('inspect:  weftctl status | workloads | services | waypoints | routes | policies | certs | bpf | top | config-dump');
        say('remove:   weftctl down');
        if (!ok) io.setExitCode(EXIT_FAILED);
      } catch (err) {
        fail(io, err);
      }
    });
}

export function downCommand(io: CommandIo = processIo): Command {
  return exitUsageOnCommanderError(localOptions(new Command('down'), true), io)
    .description('remove the local mesh (or the kube lab of up --kube): processes, namespaces, cgroups and BPF pins')
    .action(async (f: LocalFlags) => {
      try {
        if (existsSync(join(f.stateDir, 'clusters.json'))) await downClusters(f.prefix, f.stateDir, (l) => io.out(`${l}\n`));
        else if (isKubeLab(f.stateDir)) await downKube(f.prefix, f.stateDir, (l) => io.out(`${l}\n`));
        else await down(f.prefix, f.stateDir, (l) => io.out(`${l}\n`));
      } catch (err) {
        fail(io, err);
      }
    });
}

export function statusCommand(io: CommandIo = processIo): Command {
  return inspectCommand<TargetFlags>('status', 'status', io, (cmd) => cmd.description('readiness of each node agent (local mesh, or a cluster through the pod proxy)'), async (m) => {
    const rows = await status(m.target);
    for (const r of rows) io.out(`${r.node.padEnd(8)} ${r.ready ? 'ready' : `not ready: ${r.reason}`}\n`);
    if (rows.some((r) => !r.ready)) io.setExitCode(EXIT_FAILED);
  });
}
