// The agent DaemonSet. Every host privilege it holds is listed here with the reason, and the
// same reasons are rendered as pod annotations (`capabilities.weft.dev/<CAP>`,
// `volumes.weft.dev/<volume>`, `host.weft.dev/<field>`) so `kubectl describe` says why.
//
// Not privileged: the agent container gets exactly the capabilities below. The one privileged
// piece is the `mount-bpffs` init container, because Kubernetes allows Bidirectional mount
// propagation only in privileged containers, and only Bidirectional lets a mount made in the
// pod (bpffs at /sys/fs/bpf, when the host has none) reach the host, where pins outlive the pod.
// It runs `mount` once and exits.
import type { IDaemonSet } from 'kubernetes-models/apps/v1/DaemonSet';
import type { IContainer } from 'kubernetes-models/v1/Container';
import type { IVolume } from 'kubernetes-models/v1/Volume';
import type { IVolumeMount } from 'kubernetes-models/v1/VolumeMount';
import { DEBUG_TOKEN_SECRET } from '../../lib/debug-http.ts';
import type { ResolvedInstallOptions } from './options.ts';
import { controllerAddress } from './controller.ts';
import { trustDomainAliasArgs } from '../../lib/main.ts';
import {
  AGENT_DRAIN_SECONDS, AGENT_ENV, AGENT_NAME, AGENT_NODE_OPTIONS, AGENT_PATHS, CONTROLLER_TOKEN_AUDIENCE, ENV, LIVENESS_PATH, PORTS, TOKEN_EXPIRATION_SECONDS,
  TRUST_BUNDLE_CONFIGMAP, TRUST_BUNDLE_KEY, labels, selectorLabels,
} from './names.ts';

export interface Capability {
  name: 'BPF' | 'NET_ADMIN' | 'SYS_ADMIN' | 'SYS_PTRACE';
  why: string;
}

/**
 * Capabilities added to the agent (all others dropped). Not added, on purpose: NET_RAW (no raw or
 * packet sockets; IP_TRANSPARENT is allowed by NET_ADMIN), PERFMON (implied by SYS_ADMIN, which the
 * splice verdict needs it for: bpf_probe_read_kernel and a socket's address kept in a map; no
 * tracing programs), DAC_OVERRIDE (every host path it touches is root-owned and it runs as uid 0).
 */
export const AGENT_CAPABILITIES: readonly Capability[] = [
  {
    name: 'BPF',
    why: 'bpf(2): load the redirect and inbound programs, create maps and pin them under /sys/fs/bpf/weft (kernel >= 5.8)',
  },
  {
    name: 'NET_ADMIN',
    why: 'attach cgroup connect/getpeername/sockops programs and tcx links on pod veths; IP_TRANSPARENT sockets so servers see the real client address',
  },
  {
    name: 'SYS_ADMIN',
    why: 'setns(2) into pod network namespaces (tcx attach, inbound listeners); re-open pinned programs and links by id after a restart; CAP_PERFMON for the same-node splice (--splice): its verdict reads the peer socket (bpf_probe_read_kernel), and it mounts tracefs and opens the tracepoint perf events that tell how pods read their sockets',
  },
  {
    name: 'SYS_PTRACE',
    why: 'open /proc/<pid>/ns/net of pod processes that run as other users or with other capabilities (the kernel checks ptrace access on namespace files)',
  },
];

export interface HostVolume {
  volume: IVolume;
  mount: IVolumeMount;
  why: string;
}

/** Host paths the agent mounts. */
export const AGENT_HOST_VOLUMES: readonly HostVolume[] = [
  {
    volume: { name: 'bpffs', hostPath: { path: '/sys/fs/bpf', type: 'DirectoryOrCreate' } },
    // HostToContainer: the agent sees the host's bpffs (mounted by the init container when
    // missing), so its pins live in the host's bpffs and survive agent restarts.
    mount: { name: 'bpffs', mountPath: AGENT_PATHS.bpffs, mountPropagation: 'HostToContainer' },
    why: 'pin maps and links under /sys/fs/bpf/weft so redirection and enforcement survive an agent restart',
  },
  {
    volume: { name: 'cgroup', hostPath: { path: '/sys/fs/cgroup', type: 'Directory' } },
    // Mounted over the container's own (namespaced) cgroup view, so /proc/self/mountinfo
    // shows the host's cgroup v2 root at the usual place (lib/sys/mounts.ts finds it there).
    mount: { name: 'cgroup', mountPath: AGENT_PATHS.cgroupRoot, readOnly: true },
    why: 'the host cgroup v2 root that the connect/getpeername/sockops programs attach to (read-only: attaching needs only a directory fd)',
  },
  {
    volume: { name: 'host-proc', hostPath: { path: '/proc', type: 'Directory' } },
    mount: { name: 'host-proc', mountPath: AGENT_PATHS.hostProc, readOnly: true },
    why: 'host processes\' /proc/<pid>/ns/net without the host PID namespace: the same view as /proc under hostPID; once the agent takes a proc root (its PodDirectory has one) hostPID can go',
  },
  {
    volume: { name: 'weft-run', hostPath: { path: '/var/run/weft', type: 'DirectoryOrCreate' } },
    mount: { name: 'weft-run', mountPath: '/var/run/weft' },
    why: 'the unix socket on which the chained CNI plugin (run by the container runtime on the host) asks the agent to enrol each new pod before it starts',
  },
  {
    volume: { name: 'netns', hostPath: { path: '/var/run/netns', type: 'DirectoryOrCreate' } },
    // HostToContainer: namespaces that runtimes create after the agent started appear in it.
    mount: { name: 'netns', mountPath: AGENT_PATHS.netns, mountPropagation: 'HostToContainer', readOnly: true },
    why: 'named pod network namespaces that container runtimes (and the local mesh) bind-mount here',
  },
];

/** Host CNI folders only the install-cni init container mounts. */
export const CNI_HOST_VOLUMES: readonly HostVolume[] = [
  {
    volume: { name: 'cni-bin', hostPath: { path: '/opt/cni/bin', type: 'DirectoryOrCreate' } },
    mount: { name: 'cni-bin', mountPath: AGENT_PATHS.hostCniBin },
    why: 'install-cni copies the chained plugin weft-cni here, where the container runtime finds CNI plugins',
  },
  {
    volume: { name: 'cni-conf', hostPath: { path: '/etc/cni/net.d', type: 'DirectoryOrCreate' } },
    mount: { name: 'cni-conf', mountPath: AGENT_PATHS.hostCniConf },
    why: 'install-cni appends weft-cni to the node\'s network configuration list, so every new pod is enrolled before it starts',
  },
];

/** Pod-level host access, with reasons. */
export const AGENT_HOST_ACCESS = {
  hostNetwork: 'listen on 15001 (captured outbound), 15008 (HBONE) and 15009 (HBONE the east-west gateway carries) in the node network namespace, where redirected connections and peers arrive',
  hostPID: 'the agent scans /proc/<pid>/ns/net to find pod network namespaces; in the host PID namespace its own /proc lists pod processes',
  dnsPolicy: 'ClusterFirstWithHostNet: resolve the controller Service name from the host network',
  seccompProfile: 'RuntimeDefault: allows bpf(2) and setns(2) to a container holding CAP_BPF/CAP_SYS_ADMIN',
  appArmorProfile: 'Unconfined: the runtime default AppArmor profile denies creating files under /sys/fs/*, which is how BPF pins are made',
  seLinux: 'spc_t: SELinux denies bpf(2) and setns(2) to container_t',
  runAsUser: '0: the host paths (bpffs, cgroup root, /proc/<pid>/ns) are root-owned, and added capabilities are effective only for uid 0',
} as const;

export const AGENT_RESOURCES = {
  requests: { cpu: '100m', memory: '128Mi' },
  limits: { cpu: '2', memory: '1Gi' },
};

const TOKEN_FILE = 'token';
/** Where the agents and the dashboard see the debug token Secret (its key `token`). */
export const DEBUG_TOKEN_DIR = '/etc/weft/debug-token';
export const DEBUG_TOKEN_FILE = `${DEBUG_TOKEN_DIR}/token`;

/**
 * The debug token Secret as a volume, for a container running as `uid 0` (0400) or another (0444).
 * The controller makes the Secret once (controller/src/cluster/ca-secret.ts clusterDebugToken), so
 * it is optional: a pod starts before it exists and the kubelet fills the volume in when it does.
 */
export function debugTokenVolume(mode: number): IVolume {
  return { name: 'debug-token', secret: { secretName: DEBUG_TOKEN_SECRET, defaultMode: mode, optional: true } };
}
const BPF_FS_MAGIC = 'cafe4a11';
/** Key of the trust-bundle ConfigMap (and so the file name) holding the PEM roots. */
export const TRUST_BUNDLE_FILE = TRUST_BUNDLE_KEY;

function podAnnotations(o: ResolvedInstallOptions): Record<string, string> {
  const out: Record<string, string> = {
    'prometheus.io/scrape': 'true',
    'prometheus.io/port': String(PORTS.metrics),
    'prometheus.io/path': '/metrics',
    // Clusters before 1.30 read AppArmor from this annotation; later ones from securityContext (kept equal).
    'container.apparmor.security.beta.kubernetes.io/agent': 'unconfined',
    'container.apparmor.security.beta.kubernetes.io/mount-bpffs': 'unconfined',
  };
  for (const c of AGENT_CAPABILITIES) out[`capabilities.weft.dev/${c.name}`] = c.why;
  for (const v of [...AGENT_HOST_VOLUMES, ...CNI_HOST_VOLUMES]) out[`volumes.weft.dev/${v.volume.name}`] = v.why;
  out['volumes.weft.dev/weft-token'] = `projected ServiceAccount token, audience ${CONTROLLER_TOKEN_AUDIENCE}: proves the agent's pod and node to the certificate service`;
  out['volumes.weft.dev/trust-bundle'] = 'CA roots the controller publishes; the agent verifies the controller\'s TLS certificate with them';
  out['volumes.weft.dev/tmp'] = 'scratch space: the root filesystem is read-only';
  if (o.debugEndpoints) out['volumes.weft.dev/debug-token'] = `the token the debug paths on ${PORTS.metrics} want (Secret ${DEBUG_TOKEN_SECRET}): every pod reaches that port`;
  for (const [k, why] of Object.entries(AGENT_HOST_ACCESS)) out[`host.weft.dev/${k}`] = why;
  out['ports.weft.dev/admin'] = `${PORTS.admin} on 127.0.0.1 only, answering root's sockets only (config dump, certificates, BPF state, flows): kubectl exec or port-forward; not a container port`;
  return out;
}

function mountBpffsContainer(o: ResolvedInstallOptions): IContainer {
  return {
    name: 'mount-bpffs',
    image: o.image,
    // The hostPath is always a (bind) mount point, so test the file system type instead:
    // BPF_FS_MAGIC is 0xcafe4a11.
    command: ['/bin/sh', '-c', `[ "$(stat -f -c %t ${AGENT_PATHS.bpffs})" = ${BPF_FS_MAGIC} ] || mount -t bpf bpf ${AGENT_PATHS.bpffs}`],
    // Privileged only because Bidirectional propagation requires it; see the file comment.
    securityContext: { privileged: true, runAsUser: 0, appArmorProfile: { type: 'Unconfined' } },
    volumeMounts: [{ name: 'bpffs', mountPath: AGENT_PATHS.bpffs, mountPropagation: 'Bidirectional' }],
    resources: { requests: { cpu: '10m', memory: '16Mi' }, limits: { cpu: '100m', memory: '64Mi' } },
  };
}

/**
 * Installs the chained CNI plugin on the host (agent/cni/install.ts) before the agent starts; its
 * pods' namespace and kube-system are passed through without asking an agent (the control plane
 * must start before any agent has a config).
 */
function installCniContainer(o: ResolvedInstallOptions): IContainer {
  return {
    name: 'install-cni',
    image: o.image,
    command: ['node', '/opt/weft/agent/cni/install.ts', '--bin-dir', AGENT_PATHS.hostCniBin, '--conf-dir', AGENT_PATHS.hostCniConf,
      '--socket', AGENT_PATHS.cniSocket, '--exclude-namespace', 'kube-system', '--exclude-namespace', o.namespace],
    securityContext: { runAsUser: 0, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'], add: ['DAC_OVERRIDE'] } },
    volumeMounts: CNI_HOST_VOLUMES.map((v) => v.mount),
    resources: { requests: { cpu: '10m', memory: '32Mi' }, limits: { cpu: '200m', memory: '128Mi' } },
  };
}

/** The agent's command line after the image's `agent` part name (agent/src/main.ts). */
export function agentArgs(o: ResolvedInstallOptions): string[] {
  return [
    '--node', `$(${ENV.nodeName})`,
    '--node-ip', `$(${ENV.nodeIp})`,
    '--controller', controllerAddress(o.namespace),
    '--trust-bundle', `${AGENT_PATHS.trustBundle}/${TRUST_BUNDLE_FILE}`,
    // Re-read on every use: the kubelet rotates the projected token.
    '--token-file', `${AGENT_PATHS.token}/${TOKEN_FILE}`,
    '--trust-domain', o.trustDomain,
    ...trustDomainAliasArgs(o.trustDomainAliases),
    // The controller's SPIFFE ID names its namespace: spiffe://<td>/ns/<namespace>/sa/weft-controller.
    '--controller-namespace', o.namespace,
    '--cgroup', AGENT_PATHS.cgroupRoot,
    '--drain-timeout', String(AGENT_DRAIN_SECONDS),
    '--ready-file', AGENT_PATHS.readyFile,
    '--cni-socket', AGENT_PATHS.cniSocket,
    '--log-level', o.logLevel,
    ...(o.debugEndpoints ? ['--debug-endpoints', '--debug-token-file', DEBUG_TOKEN_FILE] : []),
    ...(o.splice ? ['--splice'] : []),
  ];
}

function agentContainer(o: ResolvedInstallOptions): IContainer {
  return {
    name: 'agent',
    image: o.image,
    args: ['agent', ...agentArgs(o)],
    ports: [
      { name: 'tcp-outbound', containerPort: PORTS.outbound, protocol: 'TCP' },
      { name: 'tcp-hbone', containerPort: PORTS.hbone, protocol: 'TCP' },
      { name: 'tcp-hbone-gw', containerPort: PORTS.hboneGateway, protocol: 'TCP' },
      { name: 'http-metrics', containerPort: PORTS.metrics, protocol: 'TCP' },
      { name: 'http-ready', containerPort: PORTS.readiness, protocol: 'TCP' },
    ],
    // Downward API values the command line refers to as $(NAME).
    env: [
      { name: ENV.nodeName, valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } },
      { name: ENV.nodeIp, valueFrom: { fieldRef: { fieldPath: 'status.hostIP' } } },
      { name: ENV.podName, valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
      { name: ENV.podNamespace, valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
      { name: 'NODE_OPTIONS', value: AGENT_NODE_OPTIONS },
      ...Object.entries(AGENT_ENV).map(([name, value]) => ({ name, value })),
    ],
    // Not an HTTP probe on 15021: during an upgrade the old and the new agent share the host's
    // ports (SO_REUSEPORT), so either could answer. The ready file lives in this pod's /tmp and
    // exists exactly while this container's agent is ready (`/healthz/ready` on 15021 stays for
    // people and `weftctl check`).
    readinessProbe: {
      exec: { command: ['test', '-f', AGENT_PATHS.readyFile] },
      periodSeconds: 2,
      failureThreshold: 3,
    },
    // Liveness on the shared readiness port: during a surge either agent may answer, so this only
    // catches an agent whose node has no live agent at all; it never restarts one for being unready.
    livenessProbe: {
      httpGet: { path: LIVENESS_PATH, port: PORTS.readiness },
      initialDelaySeconds: 15,
      periodSeconds: 10,
      failureThreshold: 6,
    },
    resources: AGENT_RESOURCES,
    securityContext: {
      privileged: false,
      // allowPrivilegeEscalation stays unset: the API server rejects `false` together with SYS_ADMIN.
      runAsUser: 0,
      runAsNonRoot: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ['ALL'], add: AGENT_CAPABILITIES.map((c) => c.name) },
      seccompProfile: { type: 'RuntimeDefault' },
      appArmorProfile: { type: 'Unconfined' },
      seLinuxOptions: { type: 'spc_t', level: 's0' },
    },
    volumeMounts: [
      ...AGENT_HOST_VOLUMES.map((v) => v.mount),
      { name: 'weft-token', mountPath: AGENT_PATHS.token, readOnly: true },
      { name: 'trust-bundle', mountPath: AGENT_PATHS.trustBundle, readOnly: true },
      { name: 'tmp', mountPath: '/tmp' },
      ...(o.debugEndpoints ? [{ name: 'debug-token', mountPath: DEBUG_TOKEN_DIR, readOnly: true }] : []),
    ],
  };
}

export function renderAgent(o: ResolvedInstallOptions): IDaemonSet {
  return {
    apiVersion: 'apps/v1',
    kind: 'DaemonSet',
    metadata: { name: AGENT_NAME, namespace: o.namespace, labels: labels(AGENT_NAME) },
    spec: {
      selector: { matchLabels: selectorLabels(AGENT_NAME) },
      // Surge: the new agent starts beside the old one on each node and shares its ports; the old
      // one is stopped (and drains) only once the new one is ready, so no connection is refused.
      updateStrategy: { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } },
      template: {
        metadata: {
          labels: { ...labels(AGENT_NAME), 'weft.dev/dataplane-mode': 'none' },
          annotations: podAnnotations(o),
        },
        spec: {
          serviceAccountName: AGENT_NAME,
          automountServiceAccountToken: false,
          hostNetwork: true,
          hostPID: true,
          dnsPolicy: 'ClusterFirstWithHostNet',
          priorityClassName: 'system-node-critical',
          // Every node, whatever its taints: a node without an agent has no mesh.
          tolerations: [{ operator: 'Exists' }],
          terminationGracePeriodSeconds: 30,
          initContainers: [mountBpffsContainer(o), installCniContainer(o)],
          containers: [agentContainer(o)],
          volumes: [
            ...AGENT_HOST_VOLUMES.map((v) => v.volume),
            ...CNI_HOST_VOLUMES.map((v) => v.volume),
            {
              name: 'weft-token',
              projected: {
                sources: [{
                  serviceAccountToken: { audience: CONTROLLER_TOKEN_AUDIENCE, expirationSeconds: TOKEN_EXPIRATION_SECONDS, path: TOKEN_FILE },
                }],
              },
            },
            {
              name: 'trust-bundle',
              // Optional: the controller creates it on first start; the kubelet fills it in later.
              configMap: { name: TRUST_BUNDLE_CONFIGMAP, optional: true },
            },
            { name: 'tmp', emptyDir: { medium: 'Memory', sizeLimit: '64Mi' } },
            ...(o.debugEndpoints ? [debugTokenVolume(0o400)] : []),
          ],
        },
      },
    },
  };
}

export const AGENT_CLEANUP_NAME = `${AGENT_NAME}-cleanup`;
const UNINSTALLED_FILE = '/tmp/weft-uninstalled';

/**
 * `weftctl uninstall`'s cleanup DaemonSet: on every node, after the agents are gone, the same image
 * runs `agent --uninstall`, which takes the chained CNI plugin out of the node's conflist (it would
 * fail every new pod closed with no agent to answer), detaches the programs and removes the pins
 * under /sys/fs/bpf/weft (agent/src/uninstall.ts), then reports ready and waits to be deleted.
 */
export function renderAgentCleanup(o: ResolvedInstallOptions): IDaemonSet {
  const agent = agentContainer(o);
  const volumes = [...AGENT_HOST_VOLUMES.filter((v) => v.volume.name === 'bpffs' || v.volume.name === 'cgroup'), ...CNI_HOST_VOLUMES];
  return {
    apiVersion: 'apps/v1',
    kind: 'DaemonSet',
    metadata: { name: AGENT_CLEANUP_NAME, namespace: o.namespace, labels: labels(AGENT_CLEANUP_NAME) },
    spec: {
      selector: { matchLabels: selectorLabels(AGENT_CLEANUP_NAME) },
      template: {
        metadata: { labels: { ...labels(AGENT_CLEANUP_NAME), 'weft.dev/dataplane-mode': 'none' } },
        spec: {
          serviceAccountName: AGENT_NAME,
          automountServiceAccountToken: false,
          hostNetwork: true,
          priorityClassName: 'system-node-critical',
          tolerations: [{ operator: 'Exists' }],
          terminationGracePeriodSeconds: 5,
          containers: [{
            name: 'uninstall',
            image: o.image,
            args: ['agent', '--uninstall', '--cgroup', AGENT_PATHS.cgroupRoot, '--cni-conf-dir', AGENT_PATHS.hostCniConf, '--cni-bin-dir', AGENT_PATHS.hostCniBin, '--ready-file', UNINSTALLED_FILE],
            readinessProbe: { exec: { command: ['test', '-f', UNINSTALLED_FILE] }, periodSeconds: 1 },
            resources: { requests: { cpu: '10m', memory: '64Mi' }, limits: { cpu: '500m', memory: '256Mi' } },
            // The agent's, plus what install-cni has to rewrite the host's conflist.
            securityContext: { ...agent.securityContext!, capabilities: { drop: ['ALL'], add: [...AGENT_CAPABILITIES.map((c) => c.name), 'DAC_OVERRIDE'] } },
            volumeMounts: [...volumes.map((v) => v.mount), { name: 'tmp', mountPath: '/tmp' }],
          }],
          volumes: [...volumes.map((v) => v.volume), { name: 'tmp', emptyDir: { medium: 'Memory', sizeLimit: '16Mi' } }],
        },
      },
    },
  };
}
