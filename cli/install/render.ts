// `weftctl install`: every Kubernetes object of a Weft installation, in apply order (Namespace,
// CRDs, RBAC, controller, agent), and their YAML/JSON form.
import { Document, isMap, isScalar, isSeq, type Node } from 'yaml';
import type { INamespace } from 'kubernetes-models/v1/Namespace';
import type { ICustomResourceDefinition } from 'kubernetes-models/apiextensions.k8s.io/v1/CustomResourceDefinition';
import type { IDeployment } from 'kubernetes-models/apps/v1/Deployment';
import type { IDaemonSet } from 'kubernetes-models/apps/v1/DaemonSet';
import type { IService } from 'kubernetes-models/v1/Service';
import type { IServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import type { ISecret } from 'kubernetes-models/v1/Secret';
import type { IPodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { resolveInstallOptions, type InstallOptions } from './options.ts';
import { loadCrds, DEFAULT_CRD_DIR } from './crds.ts';
import { renderRbac, type RbacObject } from './rbac.ts';
import { renderController } from './controller.ts';
import { renderAgent } from './agent.ts';
import { renderDashboard } from './dashboard.ts';
import { renderEastwest } from './eastwest.ts';
import { renderReader } from './remote-secret.ts';
import { LABEL_NETWORK } from '../../lib/model/federation.ts';
import { PART_OF } from './names.ts';
import { applyValues } from './values.ts';

export type { InstallOptions } from './options.ts';

export type KubeObject = INamespace | ICustomResourceDefinition | RbacObject | IDeployment | IService | IDaemonSet | IPodDisruptionBudget | IServiceAccount | ISecret;

/** Renders the installation; throws InstallOptionError for a bad option and CrdLoadError for a bad CRD file. */
export function renderInstall(opts: InstallOptions): KubeObject[] {
  const o = resolveInstallOptions({ ...opts, ...(opts.controllerReplicas === undefined && opts.values?.controller?.replicas !== undefined ? { controllerReplicas: opts.values.controller.replicas } : {}) });
  const namespace: INamespace = {
    apiVersion: 'v1',
    kind: 'Namespace',
    metadata: {
      name: o.namespace,
      labels: {
        'app.kubernetes.io/part-of': PART_OF,
        // The agent needs host network, host paths and capabilities: the restricted and baseline
        // Pod Security levels would reject it.
        'pod-security.kubernetes.io/enforce': 'privileged',
        // The mesh's own pods are never enrolled in the mesh.
        'weft.dev/dataplane-mode': 'none',
        // Multi-cluster: the network other clusters' controllers read here (Istio's label).
        ...(o.multicluster ? { [LABEL_NETWORK]: o.multicluster.network } : {}),
      },
    },
  };
  if (!o.caSecret) {
    opts.warn?.(`no --ca-secret: the controller generates the cluster's CA root once and keeps it in the Secret ${o.namespace}/weft-ca; to use your own PKI (for example Istio's cacerts layout with an intermediate), create a Secret and pass --ca-secret`);
  }
  const objects: KubeObject[] = [
    namespace,
    ...loadCrds(opts.crdDir ?? DEFAULT_CRD_DIR, opts.warn),
    ...renderRbac(o),
    ...renderController(o),
    renderAgent(o),
    ...(o.dashboard ? renderDashboard(o) : []),
    ...(o.multicluster ? renderReader(o.namespace) : []),
    ...(o.multicluster?.eastwest ? renderEastwest(o) : []),
  ];
  return opts.values ? applyValues(objects, opts.values, o.namespace) as KubeObject[] : objects;
}

/**
 * Multi-document YAML, one document per object, for `kubectl apply -f -`. The reasons a pod
 * template gives in its `capabilities.weft.dev/*` and `volumes.weft.dev/*` annotations are also
 * written as comments beside the capability and the volume they explain.
 */
export function toYaml(objects: readonly object[]): string {
  return objects
    .map((obj, i) => {
      // No anchors/aliases for shared arrays: plain YAML for every consumer.
      const doc = new Document(obj, { aliasDuplicateObjects: false });
      if (i === 0) doc.commentBefore = ' Weft installation, rendered by `weftctl install`.';
      commentPodTemplate(doc);
      return doc.toString({ lineWidth: 0 });
    })
    .join('---\n');
}

function commentPodTemplate(doc: Document): void {
  const annotations = doc.getIn(['spec', 'template', 'metadata', 'annotations']) as unknown;
  const pod = doc.getIn(['spec', 'template', 'spec'], true) as Node | undefined;
  if (!isMap(annotations) || !isMap(pod)) return;
  const why = (prefix: string, name: unknown): string | undefined => {
    const v = annotations.get(`${prefix}/${String(name)}`);
    return typeof v === 'string' ? ` ${v}` : undefined;
  };
  for (const list of ['initContainers', 'containers']) {
    const containers = pod.get(list, true);
    if (!isSeq(containers)) continue;
    for (const c of containers.items) {
      const add = isMap(c) ? c.getIn(['securityContext', 'capabilities', 'add'], true) : undefined;
      if (!isSeq(add)) continue;
      for (const cap of add.items) if (isScalar(cap)) cap.comment = why('capabilities.weft.dev', cap.value);
    }
  }
  const volumes = pod.get('volumes', true);
  if (isSeq(volumes)) {
    for (const v of volumes.items) if (isMap(v)) v.commentBefore = why('volumes.weft.dev', v.get('name'));
  }
}

/** A v1 List, for `kubectl apply -f -` or jq. */
export function toJson(objects: readonly object[]): string {
  return JSON.stringify({ apiVersion: 'v1', kind: 'List', items: objects }, null, 2) + '\n';
}

/**
 * A kustomize base: one file per object (`<kind>-<name>.yaml`, in apply order) and a
 * kustomization.yaml listing them, from the same renderer, so overlays can patch what values.yaml
 * does not cover. `kubectl kustomize <dir>` gives back exactly the rendered objects (in kustomize's
 * own kind order, which also puts Namespace and CRDs first). Written for kustomize v2 as well (the
 * one in Debian's kubectl 1.20): no fields newer than that.
 */
export function toKustomizeBase(objects: readonly KubeObject[]): Map<string, string> {
  const files = new Map<string, string>();
  const names: string[] = [];
  objects.forEach((obj, i) => {
    const o = obj as { kind: string; metadata?: { name?: string } };
    const file = `${String(i).padStart(2, '0')}-${o.kind.toLowerCase()}-${(o.metadata?.name ?? 'unnamed').replace(/[^a-z0-9.-]/g, '-')}.yaml`;
    files.set(file, toYaml([obj]));
    names.push(file);
  });
  files.set('kustomization.yaml', toYaml([{
    apiVersion: 'kustomize.config.k8s.io/v1beta1',
    kind: 'Kustomization',
    resources: names,
  }]).replace(/^# Weft installation, rendered by `weftctl install`.\n/, '# Weft kustomize base, rendered by `weftctl install --kustomize`.\n'));
  return files;
}
