// The agent's command line: `node agent/src/main.ts --node <name> --node-ip <ip> --controller <host:port> ...`
// It starts as every part does (lib/main.ts): parseAgentArgs (flags → options, importable and
// table-tested) → runAgent → SIGTERM drains and stops.
import { readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Agent, DEFAULT_AGENT_PORTS, type AgentOptions, type AgentPorts } from './agent.ts';
import { DEFAULT_MAX_WORKLOAD_CERT_LIFETIME_MS } from '../../lib/identity/index.ts';
import { isLogLevel, type LogLevel } from '../../lib/log.ts';
import { countFlag, runMain, trustDomainFlags, UsageError, type Running } from '../../lib/main.ts';
import { DEFAULT_TRUST_DOMAIN } from '../../lib/model/mesh.ts';
import { PORTS } from '../../lib/defaults.ts';

export const USAGE = `usage: agent/src/main.ts --node <name> --node-ip <ip> --controller <host:port> --trust-bundle <pem file>
       (--token <token> | --token-file <file>) [options]
  --trust-domain <td>        default cluster.local
  --trust-domain-alias <td>  also admit workload identities of this trust domain on 15008 (repeatable)
  --cgroup <path>            cgroup v2 folder the programs attach to (default: the cgroup v2 root)
  --pin-root <path>          BPF pin folder (default: <bpffs>/weft)
  --bpf-objects <dir>        folder of redirect.bpf.o and inbound.bpf.o (default: build/bpf)
  --cni-socket <path>        serve the chained CNI plugin (agent/cni/weft-cni.c) on this unix socket:
                             pods are enrolled before their containers start
  --cni-wait <seconds>       how long a CNI ADD waits for the config to name the pod (default 10)
  --controller-namespace <ns>  namespace of the controller, whose SPIFFE ID the agent expects
                             (default weft-system)
  --exclude-port <port>      never redirect this destination port (repeatable; outbound only)
  --inbound-exclude-port <port>
                             let plaintext reach this pod port directly, even on STRICT pods
                             (repeatable; default none)
  --kubelet-cgroup <path>    cgroup v2 folder of the kubelet, whose probes are the one exemption
                             from inbound enforcement (repeatable; "none" for no exemption;
                             default: <cgroup>/system.slice/kubelet.service or the cgroup of a
                             process named kubelet running as root in the host's mount namespace;
                             a kubelet run in a container, as on Talos or RKE1, must be declared)
  --pod-netns-prefix <p>     find pod netns only among /var/run/netns/<p>* (local mode; default: every netns)
  --cert-lifetime <seconds>  requested lifetime of workload certificates, renewed at half-life
                             (default: the CA's, 24 h; at most the CA's maximum, 604800 = 7 days)
  --splice                   splice authorized same-node connections pod to pod in the kernel
                             (bpf/splice.bpf.c) instead of carrying them through the agent (default:
                             off, also as --no-splice or --splice=false). Pods that read with
                             splice(2) get their bytes by TCP; a pod that relies on FIONREAD gets
                             wrong answers on a same-node connection unless labelled
                             weft.dev/splice=disabled: docs/ARCHITECTURE.md, data path step 5
  --debug-endpoints          also serve the read-only admin paths (config_dump, certs, bpf, flows) as
                             /debug/<path> on the metrics port, for weftctl and the dashboard on a
                             cluster (default: off; whoever reaches the port can read them)
  --debug-token-file <path>  with --debug-endpoints: answer them only to requests carrying this
                             file's token in the weft-debug-token header (the install's Secret)
  --drain-timeout <seconds>  on SIGTERM, how long open connections may finish before they are cut
                             (default 20; new connections go to the successor at once)
  --ready-file <path>        create this file while ready, remove it when stopping (an exec
                             readiness probe only this process answers)
  --outbound-port/--hbone-port/--admin-port/--metrics-port/--ready-port <port>
                             each its own; none the gateway port (15009), which the east-west
                             gateway dials and has no flag
  --log-level debug|info|warn|error
       agent/src/main.ts --uninstall [--pin-root <path>] [--cgroup <path>] [--bpf-objects <dir>] [--ready-file <path>]
                             [--cni-conf-dir <dir> [--cni-bin-dir <dir>]]
  --uninstall                detach every Weft program and remove every pin of this node, then exit
                             (with --ready-file: create it and wait for SIGTERM, as a DaemonSet pod)
  --cni-conf-dir/--cni-bin-dir  with --uninstall: first take the chained plugin weft-cni out of every
                             *.conflist there and remove its binary (it would fail new pods closed)`;

/** --cert-lifetime's ceiling: the longest lifetime the CA grants (lib/identity/ca.ts). */
const MAX_CERT_LIFETIME_S = DEFAULT_MAX_WORKLOAD_CERT_LIFETIME_MS / 1000;

/** What the command line asks for: run the agent, or remove this node's datapath (`--uninstall`). */
export type AgentCommand =
  | { kind: 'agent'; options: AgentOptions }
  | { kind: 'uninstall'; cgroupPath?: string; pinRoot?: string; objectDir?: string; cniConfDir?: string; cniBinDir?: string; readyFile?: string };

function fail(msg: string): never {
  throw new UsageError(`${msg}\n${USAGE}`);
}

function port(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) fail(`--${name} ${v} is not a port`);
  return n;
}

const AGENT_FLAGS = {
  node: { type: 'string' },
  'node-ip': { type: 'string' },
  controller: { type: 'string' },
  'trust-bundle': { type: 'string' },
  token: { type: 'string' },
  'token-file': { type: 'string' },
  'trust-domain': { type: 'string', default: DEFAULT_TRUST_DOMAIN },
  'trust-domain-alias': { type: 'string', multiple: true },
  'controller-namespace': { type: 'string' },
  cgroup: { type: 'string' },
  'pin-root': { type: 'string' },
  'bpf-objects': { type: 'string' },
  'exclude-port': { type: 'string', multiple: true },
  'cni-socket': { type: 'string' },
  'cni-wait': { type: 'string' },
  'inbound-exclude-port': { type: 'string', multiple: true },
  'kubelet-cgroup': { type: 'string', multiple: true },
  'pod-netns-prefix': { type: 'string' },
  'outbound-port': { type: 'string' },
  'hbone-port': { type: 'string' },
  'admin-port': { type: 'string' },
  'metrics-port': { type: 'string' },
  'ready-port': { type: 'string' },
  'cert-lifetime': { type: 'string' },
  'drain-timeout': { type: 'string' },
  splice: { type: 'boolean' },
  'debug-endpoints': { type: 'boolean' },
  'debug-token-file': { type: 'string' },
  'ready-file': { type: 'string' },
  'log-level': { type: 'string', default: 'info' },
  uninstall: { type: 'boolean' },
  'cni-conf-dir': { type: 'string' },
  'cni-bin-dir': { type: 'string' },
} as const;

/** Flags → options; a UsageError names the flag that is wrong. */
export function parseAgentArgs(argv: string[]): AgentCommand {
  const parse = () => {
    try {
      // allowNegative: --no-splice says the default out loud; --splice=false says the same.
      const args = argv.map((a) => (a === '--splice=false' ? '--no-splice' : a === '--splice=true' ? '--splice' : a));
      return parseArgs({ args, options: AGENT_FLAGS, allowNegative: true });
    } catch (e) {
      return fail((e as Error).message);
    }
  };
  const { values } = parse();
  if (values.uninstall) {
    if (values['cni-bin-dir'] && !values['cni-conf-dir']) fail('--cni-bin-dir goes with --cni-conf-dir');
    return {
      kind: 'uninstall',
      ...(values.cgroup ? { cgroupPath: values.cgroup } : {}),
      ...(values['pin-root'] ? { pinRoot: values['pin-root'] } : {}),
      ...(values['bpf-objects'] ? { objectDir: values['bpf-objects'] } : {}),
      ...(values['cni-conf-dir'] ? { cniConfDir: values['cni-conf-dir'] } : {}),
      ...(values['cni-bin-dir'] ? { cniBinDir: values['cni-bin-dir'] } : {}),
      ...(values['ready-file'] ? { readyFile: values['ready-file'] } : {}),
    };
  }
  for (const f of ['node', 'node-ip', 'controller', 'trust-bundle'] as const) if (!values[f]) fail(`--${f} is required`);
  if (!values.token && !values['token-file']) fail('one of --token or --token-file is required');
  const level = values['log-level'] as LogLevel;
  if (!isLogLevel(level)) fail(`--log-level ${level} is not one of debug, info, warn, error`);
  // Whole seconds up to what the CA grants: it refuses a longer lifetime (INVALID_ARGUMENT), and a
  // refused workload certificate fails the connection that asked for it.
  const certLifetime = values['cert-lifetime'] === undefined ? undefined : countFlag('cert-lifetime', values['cert-lifetime'], 'seconds', 1, MAX_CERT_LIFETIME_S, (m) => new UsageError(`${m} (the CA's maximum)\n${USAGE}`));
  const drainTimeout = values['drain-timeout'] === undefined ? undefined : Number(values['drain-timeout']);
  if (drainTimeout !== undefined && !(Number.isFinite(drainTimeout) && drainTimeout >= 0)) fail(`--drain-timeout ${values['drain-timeout']} is not a number of seconds (0 or more)`);
  trustDomainFlags(values['trust-domain'], values['trust-domain-alias']);
  const cniWait = values['cni-wait'] === undefined ? undefined : Number(values['cni-wait']);
  if (cniWait !== undefined && !(Number.isFinite(cniWait) && cniWait >= 0)) fail(`--cni-wait ${values['cni-wait']} is not a number of seconds (0 or more)`);
  const tokenFile = values['token-file'];
  const portFlags = (Object.keys(DEFAULT_AGENT_PORTS) as Array<keyof AgentPorts>)
    .map((k) => [k, `${k}-port` as const, port(`${k}-port`, values[`${k}-port`]), DEFAULT_AGENT_PORTS[k]] as const);
  // Two listeners on one port (reusePort) would split its connections between them.
  const taken = new Map<number, string>([[PORTS.hboneGateway, 'the agent\'s gateway port']]);
  for (const [, flag, given, byDefault] of portFlags) {
    const p = given ?? byDefault;
    const other = taken.get(p);
    if (other !== undefined) fail(other.startsWith('--') ? `${other} and --${flag} are both ${p}` : `--${flag} ${p} is also ${other} (${p})`);
    taken.set(p, `--${flag}`);
  }
  const ports = Object.fromEntries(portFlags.filter(([, , v]) => v !== undefined).map(([k, , v]) => [k, v] as const));
  const options: AgentOptions = {
    node: values.node!,
    nodeIp: values['node-ip']!,
    controller: values.controller!,
    trustBundleFile: values['trust-bundle']!,
    // A token file is re-read on every use: Kubernetes rotates projected ServiceAccount tokens.
    token: tokenFile ? () => readFileSync(tokenFile, 'utf8').trim() : () => values.token!,
    trustDomain: values['trust-domain']!,
    ...(values['trust-domain-alias'] ? { trustDomainAliases: values['trust-domain-alias'] } : {}),
    ...(values['controller-namespace'] ? { controllerNamespace: values['controller-namespace'] } : {}),
    ...(values.cgroup ? { cgroupPath: values.cgroup } : {}),
    ...(values['pin-root'] ? { pinRoot: values['pin-root'] } : {}),
    ...(values['bpf-objects'] ? { objectDir: values['bpf-objects'] } : {}),
    excludedPorts: (values['exclude-port'] ?? []).map((p) => port('exclude-port', p)!),
    ...(values['cni-socket'] ? { cniSocket: values['cni-socket'] } : {}),
    ...(cniWait !== undefined ? { cniWaitMs: cniWait * 1000 } : {}),
    inboundExcludedPorts: (values['inbound-exclude-port'] ?? []).map((p) => port('inbound-exclude-port', p)!),
    ...(values['kubelet-cgroup'] ? { kubeletCgroups: values['kubelet-cgroup'].filter((c) => c !== 'none') } : {}),
    ...(values['pod-netns-prefix'] !== undefined ? { podNetnsPrefix: values['pod-netns-prefix'] } : {}),
    ports,
    ...(certLifetime !== undefined ? { certLifetimeSeconds: certLifetime } : {}),
    ...(drainTimeout !== undefined ? { drainTimeoutMs: drainTimeout * 1000 } : {}),
    ...(values.splice ? { splice: true } : {}),
    ...(values['debug-endpoints'] ? { debugEndpoints: true } : {}),
    ...(values['debug-token-file'] ? { debugTokenFile: values['debug-token-file'] } : {}),
    ...(values['ready-file'] ? { readyFile: values['ready-file'] } : {}),
    logLevel: level,
  };
  return { kind: 'agent', options };
}


/** Runs the command: the agent until stopped, or the uninstall (then waits for SIGTERM with a ready file). */
export async function runAgent(c: AgentCommand): Promise<Running | undefined> {
  if (c.kind === 'uninstall') {
    const { uninstallDatapath } = await import('./uninstall.ts');
    if (c.cniConfDir) {
      // The plugin first: from here on, new pods start without asking an agent.
      const { removeWeftCni } = await import('../cni/install.ts');
      const cni = removeWeftCni({ confDir: c.cniConfDir, ...(c.cniBinDir ? { binDir: c.cniBinDir } : {}) });
      process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), level: cni.unreadable.length > 0 ? 'warn' : 'info', msg: cni.conflists.length > 0 || cni.binary ? 'chained CNI plugin removed: new pods no longer ask an agent' : 'no chained CNI plugin on this node', ...cni })}\n`);
    }
    const removed = uninstallDatapath({
      ...(c.cgroupPath ? { cgroupPath: c.cgroupPath } : {}),
      ...(c.pinRoot ? { pinRoot: c.pinRoot } : {}),
      ...(c.objectDir ? { objectDir: c.objectDir } : {}),
    });
    process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), level: 'info', msg: removed ? 'datapath removed: pods are no longer redirected' : 'no Weft datapath pinned on this node', ...removed })}\n`);
    if (!c.readyFile) return undefined;
    writeFileSync(c.readyFile, 'uninstalled\n');
    // Nothing else holds the event loop: without this timer the process would exit here, and the
    // cleanup DaemonSet's pod would restart over and over instead of staying ready until deleted.
    const waiting = setInterval(() => {}, 1 << 30);
    return { stop: async () => clearInterval(waiting) };
  }
  const agent = new Agent(c.options);
  await agent.start();
  return {
    failed: agent.serving,
    stop: async (signal) => {
      agent.log.info('stopping: draining open connections; the datapath stays pinned', { signal });
      await agent.stop();
    },
  };
}

if (import.meta.main) await runMain('agent', () => parseAgentArgs(process.argv.slice(2)), runAgent);
