// ServiceAccounts, roles and bindings, least privilege.
//
// The agent gets a ServiceAccount and no Kubernetes API rights at all: it learns everything from
// the controller's config stream, and proves which node it runs on with a projected token
// (audience weft-controller) that the controller checks with a TokenReview.
//
// The controller reads the objects the mesh model is compiled from, writes their status, turns
// Waypoints into Deployments/Services/ServiceAccounts, reviews agent tokens, and keeps the CA
// Secret, the trust-bundle ConfigMap and its leader Lease in its own namespace only.
import type { IServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import type { IClusterRole } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole';
import type { IClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding';
import type { IRole } from 'kubernetes-models/rbac.authorization.k8s.io/v1/Role';
import type { IRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding';
import type { IPolicyRule } from 'kubernetes-models/rbac.authorization.k8s.io/v1/PolicyRule';
import type { ResolvedInstallOptions } from './options.ts';
import {
  AGENT_NAME, CA_SECRET_NAME, CONTROLLER_LEASE_NAME, CONTROLLER_NAME, TRUST_BUNDLE_CONFIGMAP, labels,
} from './names.ts';

/** The weft.dev resources (plural names) the controller watches; the CRDs define the same set. */
export const WEFT_RESOURCES = ['waypoints', 'authorizationpolicies', 'peerauthentications', 'trafficpolicies'] as const;
export const GATEWAY_ROUTE_RESOURCES = ['httproutes', 'grpcroutes'] as const;

const READ = ['get', 'list', 'watch'];
const WRITE_STATUS = ['get', 'update', 'patch'];
const MANAGE = ['get', 'list', 'watch', 'create', 'update', 'patch', 'delete'];

/** Cluster-wide rules of the controller, each with the reason it exists. */
export const CONTROLLER_CLUSTER_RULES: readonly { why: string; rule: IPolicyRule }[] = [
  {
    why: 'enrolment labels on namespaces; pod IPs, nodes and service accounts for workload identity and the node check of certificate requests',
    rule: { apiGroups: [''], resources: ['namespaces', 'pods'], verbs: READ },
  },
  {
    why: 'services and their endpoints for the mesh model; waypoint Services are created and updated by the controller',
    rule: { apiGroups: [''], resources: ['services'], verbs: MANAGE },
  },
  {
    why: 'endpoints of services',
    rule: { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: READ },
  },
  {
    why: 'the Weft API',
    rule: { apiGroups: ['weft.dev'], resources: [...WEFT_RESOURCES], verbs: READ },
  },
  {
    why: 'accepted/rejected conditions on the Weft API objects',
    rule: { apiGroups: ['weft.dev'], resources: WEFT_RESOURCES.map((r) => `${r}/status`), verbs: WRITE_STATUS },
  },
  {
    why: 'Gateway API routes with a Service parent (mesh profile)',
    rule: { apiGroups: ['gateway.networking.k8s.io'], resources: [...GATEWAY_ROUTE_RESOURCES], verbs: READ },
  },
  {
    why: 'route status (parent accepted / resolved refs)',
    rule: { apiGroups: ['gateway.networking.k8s.io'], resources: GATEWAY_ROUTE_RESOURCES.map((r) => `${r}/status`), verbs: WRITE_STATUS },
  },
  {
    why: 'validate the projected tokens agents and waypoints present to the certificate service',
    rule: { apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] },
  },
  {
    why: 'one Deployment per Waypoint, in the Waypoint\'s namespace',
    rule: { apiGroups: ['apps'], resources: ['deployments'], verbs: MANAGE },
  },
  {
    why: 'one ServiceAccount per Waypoint, so a waypoint has an identity of its own and not the namespace default',
    rule: { apiGroups: [''], resources: ['serviceaccounts'], verbs: MANAGE },
  },
];

/** Rules of the controller in its own namespace only. */
export const CONTROLLER_NAMESPACE_RULES: readonly { why: string; rule: IPolicyRule }[] = [
  {
    why: 'read and rotate the CA Secret',
    rule: { apiGroups: [''], resources: ['secrets'], resourceNames: [CA_SECRET_NAME], verbs: ['get', 'watch', 'update', 'patch'] },
  },
  {
    why: 'publish the CA roots that agents mount to trust the controller',
    rule: { apiGroups: [''], resources: ['configmaps'], resourceNames: [TRUST_BUNDLE_CONFIGMAP], verbs: ['get', 'watch', 'update', 'patch'] },
  },
  {
    // RBAC cannot restrict create by name: the controller may create Secrets and ConfigMaps in
    // its own namespace, and read/update only the two above.
    why: 'create the CA Secret and the trust-bundle ConfigMap on first start',
    rule: { apiGroups: [''], resources: ['secrets', 'configmaps'], verbs: ['create'] },
  },
  {
    why: 'leader election between controller replicas',
    rule: { apiGroups: ['coordination.k8s.io'], resources: ['leases'], resourceNames: [CONTROLLER_LEASE_NAME], verbs: ['get', 'watch', 'update', 'patch'] },
  },
  {
    why: 'create the leader Lease on first start',
    rule: { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['create'] },
  },
];

export type RbacObject = IServiceAccount | IClusterRole | IClusterRoleBinding | IRole | IRoleBinding;

function whyAnnotations(rules: readonly { why: string }[]): Record<string, string> {
  return { 'weft.dev/rules': rules.map((r, i) => `${i}: ${r.why}`).join('\n') };
}

export function renderRbac(o: ResolvedInstallOptions): RbacObject[] {
  const ns = o.namespace;
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
    metadata: { name: CONTROLLER_NAME, namespace: ns, labels: labels(CONTROLLER_NAME), annotations: whyAnnotations(CONTROLLER_NAMESPACE_RULES) },
    rules: CONTROLLER_NAMESPACE_RULES.map((r) => r.rule),
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
