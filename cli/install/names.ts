// Names, labels, ports and paths that the rendered objects share. The agent and the controller
// get theirs as command-line flags (agent.ts `agentArgs`, controller.ts `controllerArgs`).

export const PART_OF = 'weft';
export {
  AGENT_NAME, CONTROLLER_NAME, CONTROLLER_TOKEN_AUDIENCE, LIVENESS_PATH, PORTS, READINESS_PATH, TOKEN_EXPIRATION_SECONDS,
  TRUST_BUNDLE_CONFIGMAP, TRUST_BUNDLE_KEY, WAYPOINT_NODE_OPTIONS,
} from '../../lib/defaults.ts';
import { POD_PATHS } from '../../lib/defaults.ts';

/** Where the controller container sees the CA Secret (tls.crt/tls.key/ca.crt, or Istio's cacerts names). */
export const CONTROLLER_CA_DIR = '/etc/weft/ca';

/** Where the agent's container sees host paths. */
export const AGENT_PATHS = {
  bpffs: '/sys/fs/bpf',
  cgroupRoot: '/sys/fs/cgroup',
  hostProc: '/host/proc',
  netns: '/var/run/netns',
  token: POD_PATHS.token,
  trustBundle: POD_PATHS.trustBundle,
  /** In the pod's own /tmp: only this container's agent process can make it exist. */
  readyFile: '/tmp/weft-agent.ready',
  /** The unix socket the chained CNI plugin asks the agent on (a host path: the runtime runs the plugin on the host). */
  cniSocket: '/var/run/weft/cni.sock',
  /** Where the install-cni init container sees the host's CNI folders. */
  hostCniBin: '/host/opt/cni/bin',
  hostCniConf: '/host/etc/cni/net.d',
} as const;

/** Seconds a stopping agent lets open connections finish; below terminationGracePeriodSeconds. */
export const AGENT_DRAIN_SECONDS = 20;

/**
 * The agent's V8 old-space cap, half its 1 GiB memory limit. Measured (docs/RELIABILITY.md, load):
 * with 10,000 open connections and 1,000 new ones per second the live heap stays near 100 MB, but
 * uncapped V8 collects lazily and RSS kept climbing for the whole minute; with this cap it levels
 * off (~360 MB). The local mesh runs its agents with the same flag.
 */
export const AGENT_NODE_OPTIONS = '--max-old-space-size=512';
// No --max-semi-space-size: the agent ran with 1 MB from 2026-12-04 to 2026-12-05 (the HBONE path
// allocates a short-lived buffer per chunk, and a large young generation holds them until a
// scavenge). Measured on 2026-12-05 with make bench's warm-up (docs/PERFORMANCE.md, issue 15's
// check): the 1 MB young generation cost the L4 bulk path 35 % more agent CPU per GB (5.5-8.3 s/GB
// over nine runs against 4.5-4.9 over six with V8's default) for 7 MB less RSS at 1,000 req/s
// (92 against 99 MB); AGENT_ENV and the agent's periodic malloc_trim keep memory returning after a
// bulk stream either way.

/**
 * The controller's V8 young generation, 8 MB per semi-space (Node 24's default lets it grow to 64 MB,
 * two of them, reserved and mostly resident after a compile or a sync). Measured with
 * bench/controller-push.ts (10,000 workloads, 60 clients; docs/PERFORMANCE.md, controller): peak
 * RSS about 100 MB lower, CPU over the initial sync lower; CPU per change the same in one run and
 * 10-18 ms higher in two (a loaded machine; not settled). The Deployment, the local mesh and the
 * bench run the controller with it.
 */
export const CONTROLLER_NODE_OPTIONS = '--max-semi-space-size=8';

/**
 * V8 flags the controller runs with that Node refuses in NODE_OPTIONS, so they go on its command
 * line (the image's `weft controller`, the local mesh, the bench). --heap-growing-percent=20: the
 * old generation's limit grows by 20 % after a full GC instead of V8's much larger default step,
 * so the response buffers of an initial sync (grpc-js's framed copies, promoted before the client
 * has read them) are collected sooner. bench/controller-push.ts, same code, three pairs: peak RSS
 * 266, 261, 264 → 220, 213, 217 MB, CPU per change unchanged, the initial sync's CPU +0.6 s
 * (docs/PERFORMANCE.md, issue 20, controller memory, second pass).
 */
export const CONTROLLER_V8_FLAGS = '--heap-growing-percent=20';

/**
 * Environment of the agent process, in the DaemonSet and the local mesh alike. MALLOC_ARENA_MAX=2:
 * glibc's per-thread malloc arenas (up to 8 per core) each keep freed memory; the agent's
 * allocations come from the main thread and libuv's few workers.
 */
export const AGENT_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: '2' };

/** Environment variables of the rendered pods (Downward API; the parts take command-line flags). */
export const ENV = {
  nodeName: 'NODE_NAME',
  nodeIp: 'NODE_IP',
  podName: 'POD_NAME',
  podNamespace: 'POD_NAMESPACE',
} as const;

export function labels(component: string): Record<string, string> {
  return {
    'app.kubernetes.io/name': component,
    'app.kubernetes.io/part-of': PART_OF,
    'app.kubernetes.io/component': component.replace(/^weft-/, ''),
  };
}

/** The labels a selector matches on (a subset of {@link labels} that never changes across upgrades). */
export function selectorLabels(component: string): Record<string, string> {
  return { 'app.kubernetes.io/name': component, 'app.kubernetes.io/part-of': PART_OF };
}
