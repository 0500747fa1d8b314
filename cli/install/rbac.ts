// ServiceAccounts, roles and bindings, least privilege.
//
// The agent gets a ServiceAccount and no Kubernetes API rights at all: it learns everything from
// the controller's config stream, and proves which node it runs on with a projected token
// (audience weft-controller) that the controller checks with a TokenReview.
//
// The controller reads the objects the mesh model is compiled from, writes their status, turns
// Waypoints into Deployments/Services/ServiceAccounts, reviews agent and waypoint tokens, records
// Events, and publishes the trust-bundle ConfigMap in its own namespace and in each waypoint's.
// In its own namespace it elects a leader on a Lease and keeps the cluster CA in the Secret
// weft-ca (created once when no --ca-secret is given; a given one is mounted into its pod).
import type { IServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import type { IClusterRole } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole';
import type { IClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding';
import type { IRole } from 'kubernetes-models/rbac.authorization.k8s.io/v1/Role';
import type { IRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding';
import type { IPolicyRule } from 'kubernetes-models/rbac.authorization.k8s.io/v1/PolicyRule';
import { KINDS, groupsOf, type KindInfo } from '../../lib/model/objects.ts';
import type { ResolvedInstallOptions } from './options.ts';
import {
  AGENT_NAME, CONTROLLER_NAME, TRUST_BUNDLE_CONFIGMAP, labels,
} from './names.ts';
import { CONTROLLER_LEASE, DEFAULT_CA_SECRET } from '../../lib/defaults.ts';
import { DEBUG_TOKEN_SECRET } from '../../lib/debug-http.ts';
import { LABEL_MULTICLUSTER } from '../../lib/model/federation.ts';

/**
 * The kinds the controller's Kubernetes source watches: every kind of the model except Node
 * (read only with the source's `watchNodes`, which the controller does not set).
 */
export const WATCHED: readonly KindInfo[] = Object.values(KINDS).filter((k) => k.kind !== 'Node');

const READ = ['get', 'list', 'watch'];
const WRITE_STATUS = ['get', 'update', 'patch'];
// The waypoint reconciler's verbs, as controller/src/waypoints-kube.ts calls them (and
// test/unit/controller-rbac.test.ts holds them to it): it reads and creates each object, replaces a
// Deployment whose spec changed (update; never patch), deletes what it made, and follows its
// Deployments and Services with informers; ServiceAccounts it only reads and creates.
const INFORM_REPLACE = ['get', 'list', 'watch', 'create', 'update', 'delete'];

function byGroup(kinds: readonly KindInfo[], resource: (k: KindInfo) => string): [string, string[]][] {
  const groups = new Map<string, string[]>();
  for (const k of kinds) groups.set(k.group, [...(groups.get(k.group) ?? []), resource(k)]);
  return [...groups];
}

/**
 * A kind once per API group it is read in: Istio's security kinds also in security.istio.io, when
 * its CRDs are installed (read only: Weft writes no status there, its findings are Events).
 */
function inEveryGroup(k: KindInfo): KindInfo[] {
  return groupsOf(k.kind).map((group) => ({ ...k, group }));
}

/** Cluster-wide rules of the controller, each with the reason it exists. */
export const CONTROLLER_CLUSTER_RULES: readonly { why: string; rule: IPolicyRule }[] = [
  ...byGroup(WATCHED.flatMap(inEveryGroup), (k) => k.plural).map(([group, resources]) => ({
    why: `mesh inputs (${group || 'core'}): informers on ${resources.join(', ')}`,
    rule: { apiGroups: [group], resources, verbs: READ },
  })),
  ...byGroup(WATCHED.filter((k) => k.hasStatus), (k) => `${k.plural}/status`).map(([group, resources]) => ({
    why: `accepted/invalid/ready conditions on ${group} objects`,
    rule: { apiGroups: [group], resources, verbs: WRITE_STATUS },
  })),
  {
    why: 'validate the projected tokens agents present to the certificate service',
    rule: { apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] },
  },
  {
    why: 'one Deployment per Waypoint, in the Waypoint\'s namespace',
    rule: { apiGroups: ['apps'], resources: ['deployments'], verbs: INFORM_REPLACE },
  },
  {
    why: 'a PodDisruptionBudget per Waypoint with more than one replica (one stays serving through node drains), followed by an informer',
    rule: { apiGroups: ['policy'], resources: ['poddisruptionbudgets'], verbs: ['get', 'list', 'watch', 'create', 'delete'] },
  },
  {
    why: 'one Service per Waypoint, followed by an informer',
    rule: { apiGroups: [''], resources: ['services'], verbs: ['get', 'list', 'watch', 'create', 'delete'] },
  },
  {
    why: 'one ServiceAccount per Waypoint, created when missing (a waypoint has an identity of its own, not the namespace default), followed by an informer; never changed or deleted',
    rule: { apiGroups: [''], resources: ['serviceaccounts'], verbs: ['get', 'list', 'watch', 'create'] },
  },
  {
    why: 'keep the CA roots current in each namespace a waypoint runs in (waypoints mount them to trust the controller), followed by an informer selecting that name, so a copy changed or deleted is put back',
    rule: { apiGroups: [''], resources: ['configmaps'], resourceNames: [TRUST_BUNDLE_CONFIGMAP], verbs: ['get', 'list', 'watch', 'update'] },
  },
  {
    // RBAC cannot restrict create by name.
    why: 'create the trust-bundle ConfigMap in the install namespace and in waypoint namespaces',
    rule: { apiGroups: [''], resources: ['configmaps'], verbs: ['create'] },
  },
  {
    why: 'Events on the objects a finding concerns (a Service naming a missing Waypoint, a route to a missing backend)',
    rule: { apiGroups: [''], resources: ['events'], verbs: ['create', 'patch'] },
  },
];

/** Rules of the controller in its own namespace only. */
export const CONTROLLER_NAMESPACE_RULES: readonly { why: string; rule: IPolicyRule }[] = [
  {
    why: `elect the one replica that writes status and waypoint Deployments (Lease ${CONTROLLER_LEASE})`,
    rule: { apiGroups: ['coordination.k8s.io'], resources: ['leases'], resourceNames: [CONTROLLER_LEASE], verbs: ['get', 'update'] },
  },
  {
    why: 'create that Lease on first start',
    rule: { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['create'] },
  },
  {
    why: `read the cluster CA (Secret ${DEFAULT_CA_SECRET}) every replica signs with`,
    rule: { apiGroups: [''], resources: ['secrets'], resourceNames: [DEFAULT_CA_SECRET], verbs: ['get'] },
  },
  {
    why: `create Secret ${DEFAULT_CA_SECRET} with a new root once, when the cluster has none and no --ca-secret is given (and, with the debug paths open, Secret ${DEBUG_TOKEN_SECRET} once)`,
    rule: { apiGroups: [''], resources: ['secrets'], verbs: ['create'] },
  },
];

/** With the debug paths open (--debug-endpoints, --dashboard): the controller reads the token it made once (the create rule above). */
export const CONTROLLER_DEBUG_RULES: readonly { why: string; rule: IPolicyRule }[] = [
  {
    why: `read Secret ${DEBUG_TOKEN_SECRET}, the debug paths' token it creates once with a random value when there is none`,
    rule: { apiGroups: [''], resources: ['secrets'], resourceNames: [DEBUG_TOKEN_SECRET], verbs: ['get'] },
  },
];

/** Multi-cluster only: the controller's extra rule in its own namespace. */
export const CONTROLLER_MULTICLUSTER_RULES: readonly { why: string; rule: IPolicyRule }[] = [
  {
    // RBAC cannot restrict list/watch by label: every Secret of the namespace is readable.
    why: `read the remote clusters' kubeconfig Secrets (label ${LABEL_MULTICLUSTER}=true) as they come and go`,
    rule: { apiGroups: [''], resources: ['secrets'], verbs: ['list', 'watch'] },
  },
];

export type RbacObject = IServiceAccount | IClusterRole | IClusterRoleBinding | IRole | IRoleBinding;

function whyAnnotations(rules: readonly { why: string }[]): Record<string, string> {
  return { 'weft.dev/rules': rules.map((r, i) => `${i}: ${r.why}`).join('\n') };
}

/**
 * A ServiceAccount bound to a ClusterRole of its own, all three under one name; the ClusterRole
 * carries why each rule is there (`weft.dev/rules`). `account` adds fields to the ServiceAccount.
 */
export function clusterRoleAccount(name: string, namespace: string, rules: readonly { why: string; rule: IPolicyRule }[], account: Partial<IServiceAccount> = {}): [IServiceAccount, IClusterRole, IClusterRoleBinding] {
  return [
    { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name, namespace, labels: labels(name) }, ...account },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRole',
      metadata: { name, labels: labels(name), annotations: whyAnnotations(rules) },
      rules: rules.map((r) => r.rule),
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRoleBinding',
      metadata: { name, labels: labels(name) },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name },
      subjects: [{ kind: 'ServiceAccount', name, namespace }],
    },
  ];
}

export function renderRbac(o: ResolvedInstallOptions): RbacObject[] {
  const ns = o.namespace;
  const namespaceRules = [...CONTROLLER_NAMESPACE_RULES, ...(o.debugEndpoints ? CONTROLLER_DEBUG_RULES : []), ...(o.multicluster ? CONTROLLER_MULTICLUSTER_RULES : [])];
  const controllerSa: IServiceAccount = {
    apiVersion: 'v1',
    kind: 'ServiceAccount',
    metadata: { name: CONTROLLER_NAME, namespace: ns, labels: labels(CONTROLLER_NAME) },
  };
  const agentSa: IServiceAccount = {
    apiVersion: 'v1',
    kind: 'ServiceAccount',
    metadata: {
      name: AGENT_NAME,
      namespace: ns,
      labels: labels(AGENT_NAME),
      annotations: {
        'weft.dev/rules': 'none: the agent reads nothing from the Kubernetes API; its projected token (audience weft-controller) only proves its pod and node to the controller',
      },
    },
    // No API token in the agent's pod; the projected token with the controller audience is mounted explicitly.
    automountServiceAccountToken: false,
  };
  const clusterRole: IClusterRole = {
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'ClusterRole',
    metadata: { name: CONTROLLER_NAME, labels: labels(CONTROLLER_NAME), annotations: whyAnnotations(CONTROLLER_CLUSTER_RULES) },
    rules: CONTROLLER_CLUSTER_RULES.map((r) => r.rule),
  };
  const clusterRoleBinding: IClusterRoleBinding = {
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'ClusterRoleBinding',
    metadata: { name: CONTROLLER_NAME, labels: labels(CONTROLLER_NAME) },
    roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: CONTROLLER_NAME },
    subjects: [{ kind: 'ServiceAccount', name: CONTROLLER_NAME, namespace: ns }],
  };
  const role: IRole = {
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'Role',
    metadata: { name: CONTROLLER_NAME, namespace: ns, labels: labels(CONTROLLER_NAME), annotations: whyAnnotations(namespaceRules) },
    rules: namespaceRules.map((r) => r.rule),
  };
  const roleBinding: IRoleBinding = {
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'RoleBinding',
    metadata: { name: CONTROLLER_NAME, namespace: ns, labels: labels(CONTROLLER_NAME) },
    roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: CONTROLLER_NAME },
    subjects: [{ kind: 'ServiceAccount', name: CONTROLLER_NAME, namespace: ns }],
  };
  return [controllerSa, agentSa, clusterRole, clusterRoleBinding, role, roleBinding];
}
