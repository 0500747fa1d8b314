// What the telemetry of every part says about a workload, derived once, by the controller, from the
// pod: the controlling workload's name (owner references), canonical service and revision, and the
// cluster. Agents and waypoints read these from the compiled model and never guess them.
import type { Pod } from './objects.ts';

/** Istio's default cluster ID: what `*_cluster` labels say when the controller is given none. */
export const DEFAULT_CLUSTER_ID = 'Kubernetes';

/** Istio's canonical service labels, then Kubernetes' recommended labels, then `app`/`version`. */
export const LABEL_CANONICAL_NAME = 'service.istio.io/canonical-name';
export const LABEL_CANONICAL_REVISION = 'service.istio.io/canonical-revision';
const NAME_LABELS = [LABEL_CANONICAL_NAME, 'app.kubernetes.io/name', 'app'] as const;
const REVISION_LABELS = [LABEL_CANONICAL_REVISION, 'app.kubernetes.io/version', 'version'] as const;
/** Set by the Deployment controller on each ReplicaSet's pods; the ReplicaSet is `<deployment>-<hash>`. */
const LABEL_POD_TEMPLATE_HASH = 'pod-template-hash';

/** The telemetry identity of a workload (a pod), as Istio's standard metrics label it. */
export interface WorkloadMeta {
  /** The controlling workload: a Deployment's name for its pods, the pod's own name for a bare pod. */
  workloadName: string;
  namespace: string;
  canonicalService: string;
  canonicalRevision: string;
  /** Cluster ID (`Kubernetes` unless the controller is told another). */
  cluster: string;
}

export interface OwnerReference {
  apiVersion?: string;
  kind: string;
  name: string;
  uid?: string;
  controller?: boolean;
}

/**
 * The controlling workload's name, as Istio's telemetry names it (pkg/kube GetDeployMetaFromPod):
 * the controller owner reference's name; a ReplicaSet stands for its Deployment (the
 * `-<pod-template-hash>` suffix removed), a Job created by a CronJob for the CronJob (its
 * `-<schedule time>` suffix removed); a pod without a controller is its own workload.
 */
export function workloadNameOf(pod: Pick<Pod, 'metadata'>): string {
  const refs = pod.metadata.ownerReferences ?? [];
  const owner = refs.find((r) => r.controller) ?? (refs.length === 1 ? refs[0] : undefined);
  if (!owner) return pod.metadata.name;
  if (owner.kind === 'ReplicaSet') {
    const hash = pod.metadata.labels?.[LABEL_POD_TEMPLATE_HASH];
    if (hash && owner.name.endsWith(`-${hash}`)) return owner.name.slice(0, -hash.length - 1);
    return owner.name;
  }
  if (owner.kind === 'Job') {
    // CronJob jobs are `<cronjob>-<minutes since the epoch>`; Istio strips the numeric suffix.
    const m = /^(.+)-\d{8,}$/.exec(owner.name);
    return m ? m[1]! : owner.name;
  }
  return owner.name;
}

/** Canonical service and revision from the labels (Istio's precedence), else the workload name and `latest`. */
export function canonicalOf(labels: Record<string, string>, workloadName: string): { service: string; revision: string } {
  const pick = (keys: readonly string[]) => keys.map((k) => labels[k]).find((v) => v !== undefined && v !== '');
  return { service: pick(NAME_LABELS) ?? workloadName, revision: pick(REVISION_LABELS) ?? 'latest' };
}

export function workloadMetaOf(pod: Pick<Pod, 'metadata'>, cluster: string = DEFAULT_CLUSTER_ID): WorkloadMeta {
  const workloadName = workloadNameOf(pod);
  const c = canonicalOf(pod.metadata.labels ?? {}, workloadName);
  return { workloadName, namespace: pod.metadata.namespace ?? '', canonicalService: c.service, canonicalRevision: c.revision, cluster };
}
