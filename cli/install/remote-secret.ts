// Multi-cluster in Kubernetes mode: what lets one cluster's controller read another's API server.
// As Istio's `istioctl create-remote-secret`: a multi-cluster install (`--cluster-id`) renders a
// read-only ServiceAccount `weft-reader` (Namespaces, Pods, Services, EndpointSlices, Waypoints: what
// controller/src/sources/remote-secrets.ts watches, nothing else); `weftctl create-remote-secret`
// run against that cluster asks for a token of it (TokenRequest) and prints a Secret holding a
// kubeconfig with that token, the API server's address and CA, labelled weft.dev/multicluster=true
// and keyed by the cluster ID, to be applied in the other clusters' install namespace.
import { readFileSync } from 'node:fs';
import type { KubeConfig } from '@kubernetes/client-node';
import type { IClusterRole } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole';
import type { IClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding';
import type { IServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import type { ISecret } from 'kubernetes-models/v1/Secret';
import { stringify } from 'yaml';
import { ANNOTATION_CLUSTER, ANNOTATION_TRUST_DOMAIN, LABEL_MULTICLUSTER } from '../../lib/model/federation.ts';
import { clusterRoleAccount } from './rbac.ts';
import { clientNode } from '../kube.ts';

/** The ServiceAccount other clusters' controllers read this cluster as (Istio: istio-reader-service-account). */
export const READER_NAME = 'weft-reader';
/** Default lifetime of the token in a remote secret (a year; the API server may cap it). */
export const DEFAULT_REMOTE_TOKEN_SECONDS = 365 * 24 * 3600;

export const READER_RULES: readonly { why: string; rule: { apiGroups: string[]; resources: string[]; verbs: string[] } }[] = [
  { why: 'other clusters\' controllers import this cluster\'s Services and endpoints (namespace sameness) and its network (the root namespace\'s label)', rule: { apiGroups: [''], resources: ['namespaces', 'pods', 'services'], verbs: ['get', 'list', 'watch'] } },
  { why: 'and the EndpointSlices the endpoints come from', rule: { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: ['get', 'list', 'watch'] } },
  { why: 'and the Waypoints its remote-only Services go through (callers elsewhere are sent to them)', rule: { apiGroups: ['weft.dev'], resources: ['waypoints'], verbs: ['get', 'list', 'watch'] } },
];

export function renderReader(namespace: string): [IServiceAccount, IClusterRole, IClusterRoleBinding] {
  return clusterRoleAccount(READER_NAME, namespace, READER_RULES, { automountServiceAccountToken: false });
}

export class RemoteSecretCommandError extends Error {
  readonly code = 'WEFT_CREATE_REMOTE_SECRET';
  constructor(message: string) {
    super(message);
    this.name = 'RemoteSecretCommandError';
  }
}

export interface CreateRemoteSecretOptions {
  /** The cluster read (its kubeconfig's current context). */
  kubeConfig: KubeConfig;
  /** Its cluster ID (the data key; must match its controller's --cluster-id). */
  clusterId: string;
  /** Install namespace: where weft-reader lives here and where the Secret goes in the other clusters. */
  namespace: string;
  /** API server address as the other clusters' controllers reach it; default the kubeconfig's. */
  server?: string;
  /** This cluster's trust domain, when the others' differ (per-cluster trust domains). */
  trustDomain?: string;
  tokenSeconds?: number;
  /**
   * Write a plain-HTTP server or `insecure-skip-tls-verify` (when the kubeconfig has no CA) as it is;
   * the other clusters' controllers read such a secret only with --remote-secret-allow-insecure.
   */
  allowInsecure?: boolean;
}

/** The remote secret for `clusterId`, as an object (print it with {@link remoteSecretYaml}). */
export async function createRemoteSecret(o: CreateRemoteSecretOptions): Promise<ISecret> {
  if (!/^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/.test(o.clusterId)) throw new RemoteSecretCommandError(`--name "${o.clusterId}" is not a cluster ID: use at most 63 letters, digits, '-', '_' and '.'`);
  const cluster = o.kubeConfig.getCurrentCluster();
  if (!cluster) throw new RemoteSecretCommandError('the kubeconfig names no cluster for its current context');
  const server = o.server ?? cluster.server;
  if (!/^https?:\/\/[^/]/.test(server)) throw new RemoteSecretCommandError(`--server "${server}" is not an http(s) URL`);
  // What the other clusters' controllers refuse (controller/src/sources/remote-secrets.ts), said
  // here rather than in their logs.
  const insecure = !o.allowInsecure && (server.startsWith('http:')
    ? `--server ${server} is plain HTTP`
    : !cluster.caData && !cluster.caFile && cluster.skipTLSVerify ? 'the kubeconfig skips TLS verification (insecure-skip-tls-verify) and names no CA' : undefined);
  if (insecure) throw new RemoteSecretCommandError(`${insecure}: the other clusters' controllers refuse a remote secret that does not verify the API server (anyone on the path could answer for this cluster); give an https --server and a kubeconfig with the API server's CA, or --allow-insecure (their controllers then need --remote-secret-allow-insecure)`);
  let token: string;
  try {
    const { CoreV1Api } = await clientNode();
    const review = await o.kubeConfig.makeApiClient(CoreV1Api).createNamespacedServiceAccountToken({
      name: READER_NAME, namespace: o.namespace,
      body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenRequest', spec: { audiences: [], expirationSeconds: o.tokenSeconds ?? DEFAULT_REMOTE_TOKEN_SECONDS } },
    });
    token = review.status?.token ?? '';
  } catch (e) {
    const code = (e as { code?: number }).code;
    throw new RemoteSecretCommandError(code === 404
      ? `no ServiceAccount ${o.namespace}/${READER_NAME} in this cluster: install it with \`weftctl install --cluster-id ${o.clusterId}\``
      : `cannot get a token of ${o.namespace}/${READER_NAME}: ${(e as Error).message}`);
  }
  if (!token) throw new RemoteSecretCommandError(`the API server returned no token for ${o.namespace}/${READER_NAME}`);
  // The CA inline: a remote secret may not name files on the controller (remote-secrets.ts refuses them).
  let caData = cluster.caData;
  if (!caData && cluster.caFile) caData = readFileSync(cluster.caFile).toString('base64');
  const kubeconfig = {
    apiVersion: 'v1', kind: 'Config', 'current-context': o.clusterId,
    clusters: [{ name: o.clusterId, cluster: { server, ...(caData ? { 'certificate-authority-data': caData } : cluster.skipTLSVerify ? { 'insecure-skip-tls-verify': true } : {}) } }],
    users: [{ name: READER_NAME, user: { token } }],
    contexts: [{ name: o.clusterId, context: { cluster: o.clusterId, user: READER_NAME } }],
  };
  return {
    apiVersion: 'v1', kind: 'Secret', type: 'Opaque',
    metadata: {
      name: `weft-remote-secret-${o.clusterId.toLowerCase().replace(/[^a-z0-9.-]/g, '-')}`, namespace: o.namespace,
      labels: { [LABEL_MULTICLUSTER]: 'true' },
      annotations: { [ANNOTATION_CLUSTER]: o.clusterId, ...(o.trustDomain ? { [ANNOTATION_TRUST_DOMAIN]: o.trustDomain } : {}) },
    },
    // data, not stringData: the same bytes whether or not the API server folds stringData in.
    data: { [o.clusterId]: Buffer.from(stringify(kubeconfig)).toString('base64') },
  };
}

export function remoteSecretYaml(s: ISecret): string {
  return `# Weft remote secret for cluster ${Object.keys(s.data ?? {})[0]}: apply it in the other clusters' install namespace.\n${stringify(s)}`;
}
