// `weftctl check --pre` against a cluster: what can be known from the API before installing Weft,
// with no tool on the user's machine (no clang, no bpftool): each node's kernel and OS from its
// status.nodeInfo, the Gateway API CRDs Weft reads routes from, and whether Weft's own CRDs are
// there yet. Kernel features are judged by version here (distribution kernels backport BPF
// features; the agent probes BTF on the node itself when it starts).
//
// The node's cgroup mode has no field in the Node object. Since Kubernetes 1.31 the kubelet
// publishes it as the gauge `kubelet_cgroup_version` (1 or 2; KEP-4569, "cgroup v1 maintenance
// mode"), which the API server's node proxy reaches (GET /api/v1/nodes/<node>/proxy/metrics, RBAC
// `get` on nodes/proxy). An older kubelet, or a user without that right, leaves it unknown: a
// warning that says how to look on the node, and the agent checks it again when it starts.
import { compareKernel, parseKernelRelease, MIN_KERNEL, type CheckResult } from './check.ts';
import { KINDS, WEFT_GROUP, GATEWAY_GROUP, type MeshKind } from '../lib/model/objects.ts';
import { KubeApiError, type KubeClient } from './kube.ts';

interface NodeLite {
  metadata: { name: string };
  status?: { nodeInfo?: { kernelVersion?: string; operatingSystem?: string; osImage?: string; architecture?: string; kubeletVersion?: string } };
}

/** Nodes whose kubelet metrics are read at once. */
const CGROUP_READS_AT_ONCE = 8;

/** The kubelet_cgroup_version gauge in a kubelet's metrics text (1, 2; 0 off Linux), or undefined. */
export function kubeletCgroupVersion(metrics: string): number | undefined {
  const m = /^kubelet_cgroup_version(?:\{[^}]*\})?\s+(\S+)/m.exec(metrics);
  const v = m ? Number(m[1]) : NaN;
  return Number.isFinite(v) ? v : undefined;
}

const LOOK_ON_NODE = 'on the node, `stat -fc %T /sys/fs/cgroup` prints cgroup2fs on cgroup v2 (the agent checks it too when it starts)';

/** A node's cgroup mode from its kubelet's metrics through the API server's node proxy. */
async function cgroupCheck(kube: KubeClient, n: NodeLite): Promise<CheckResult> {
  const id = 'cluster.node.cgroup';
  const title = `node ${n.metadata.name} cgroup`;
  let text: string;
  try {
    text = await kube.getText(`/api/v1/nodes/${encodeURIComponent(n.metadata.name)}/proxy/metrics`);
  } catch (e) {
    const why = e instanceof KubeApiError && e.status === 403
      ? 'reading the kubelet\'s metrics needs `get` on nodes/proxy'
      : `the kubelet's metrics did not answer through the node proxy (${e instanceof KubeApiError ? e.detail || e.message : (e as Error).message})`;
    return { id, title, status: 'warn', detail: `cgroup mode unknown: ${why}`, remedy: LOOK_ON_NODE };
  }
  const v = kubeletCgroupVersion(text);
  if (v === 2) return { id, title, status: 'pass', detail: 'cgroup v2 (kubelet_cgroup_version 2)' };
  if (v === 1) return { id, title, status: 'fail', detail: 'cgroup v1 (kubelet_cgroup_version 1): the agent attaches its programs to the cgroup v2 hierarchy', remedy: 'boot the node with systemd.unified_cgroup_hierarchy=1, or use a distribution that runs cgroup v2' };
  const kubelet = n.status?.nodeInfo?.kubeletVersion;
  return { id, title, status: 'warn', detail: `cgroup mode unknown: the kubelet${kubelet ? ` (${kubelet})` : ''} does not publish kubelet_cgroup_version${v !== undefined ? ` as 1 or 2 (it says ${v})` : ' (Kubernetes 1.31 and later do)'}`, remedy: LOOK_ON_NODE };
}

/** `fn` over `items`, at most `limit` at once, results in order. */
async function mapLimited<T, R>(items: readonly T[], limit: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  }));
  return out;
}

interface CrdLite {
  spec?: { versions?: Array<{ name: string; served?: boolean }> };
}

/** Gateway API CRDs Weft needs (routes) and may use (ReferenceGrant for cross-namespace backends). */
const GATEWAY_CRDS = [
  { name: `httproutes.${GATEWAY_GROUP}`, version: 'v1', required: true },
  { name: `grpcroutes.${GATEWAY_GROUP}`, version: 'v1', required: true },
  { name: `referencegrants.${GATEWAY_GROUP}`, version: 'v1beta1', required: false },
];

export async function clusterPreflight(kube: KubeClient): Promise<CheckResult[]> {
  const out: CheckResult[] = [];
  const min = `${MIN_KERNEL.major}.${MIN_KERNEL.minor}`;
  const nodes = await kube.list<NodeLite>('v1', 'nodes', undefined, { missingOk: false });
  if (nodes.length === 0) out.push({ id: 'cluster.nodes', title: 'nodes', status: 'fail', detail: 'the API lists no node', remedy: 'check the kubeconfig points at the cluster (and may list nodes)' });
  const linux = nodes.filter((n) => (n.status?.nodeInfo?.operatingSystem ?? 'linux') === 'linux');
  const cgroups = new Map((await mapLimited(linux, CGROUP_READS_AT_ONCE, async (n) => [n.metadata.name, await cgroupCheck(kube, n)] as const)));
  for (const n of nodes) {
    const info = n.status?.nodeInfo ?? {};
    const title = `node ${n.metadata.name}`;
    if (info.operatingSystem && info.operatingSystem !== 'linux') {
      out.push({ id: 'cluster.node.os', title, status: 'fail', detail: `runs ${info.operatingSystem}; the agent needs Linux`, remedy: 'keep Weft\'s agent DaemonSet off this node (nodeSelector kubernetes.io/os=linux)' });
      continue;
    }
    const k = info.kernelVersion ? parseKernelRelease(info.kernelVersion) : undefined;
    if (!k) out.push({ id: 'cluster.node.kernel', title, status: 'warn', detail: `kernel version unknown (${info.kernelVersion ?? 'not reported'})`, remedy: 'run `weftctl check` on the node to probe its BPF features' });
    else if (compareKernel(k, MIN_KERNEL) < 0) out.push({ id: 'cluster.node.kernel', title, status: 'warn', detail: `kernel ${info.kernelVersion} is older than ${min}, the first upstream release with every BPF feature Weft uses`, remedy: 'upgrade the node\'s kernel, or run `weftctl check` on it: distribution kernels may have the features backported' });
    else out.push({ id: 'cluster.node.kernel', title, status: 'pass', detail: `kernel ${info.kernelVersion} (>= ${min}), ${info.osImage ?? 'linux'} ${info.architecture ?? ''}`.trimEnd() });
    const cg = cgroups.get(n.metadata.name);
    if (cg) out.push(cg);
  }
  const crd = async (name: string): Promise<CrdLite | undefined> => {
    try {
      return await kube.get<CrdLite>(`/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${name}`);
    } catch (e) {
      if (e instanceof KubeApiError && e.status === 404) return undefined;
      throw e;
    }
  };
  for (const g of GATEWAY_CRDS) {
    const c = await crd(g.name);
    const served = c?.spec?.versions?.filter((v) => v.served !== false).map((v) => v.name) ?? [];
    if (c && served.includes(g.version)) out.push({ id: 'cluster.crd.gateway', title: `CRD ${g.name}`, status: 'pass', detail: `serves ${served.join(', ')}` });
    else {
      const detail = c ? `serves ${served.join(', ') || 'no version'}, not ${g.version}` : 'not installed';
      const remedy = 'install the Gateway API standard channel: kubectl apply -f https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.3.0/standard-install.yaml';
      out.push({ id: 'cluster.crd.gateway', title: `CRD ${g.name}`, status: g.required ? 'fail' : 'warn', detail: g.required ? detail : `${detail} (needed only for backendRefs to other namespaces)`, remedy });
    }
  }
  for (const k of Object.keys(KINDS) as MeshKind[]) {
    const info = KINDS[k];
    if (info.group !== WEFT_GROUP) continue;
    const name = `${info.plural}.${info.group}`;
    const c = await crd(name);
    out.push(c
      ? { id: 'cluster.crd.weft', title: `CRD ${name}`, status: 'pass', detail: `installed (serves ${c.spec?.versions?.map((v) => v.name).join(', ') ?? '?'})` }
      : { id: 'cluster.crd.weft', title: `CRD ${name}`, status: 'pass', detail: 'not installed yet; `weftctl install | kubectl apply -f -` creates it' });
  }
  return out;
}
