// The dashboard in a cluster, beside the controller (`weftctl install --dashboard`): the same
// `weftctl dashboard` as on a laptop, run by the image's weftctl with a ServiceAccount that may
// read the mesh's objects, list pods and nodes, and GET through the API server's pod proxy
// (pods/proxy) the agents' and waypoints' metrics and read-only /debug paths (flows, BPF state,
// config). It writes nothing. It listens on its pod's loopback only: what it shows (every node's
// config, live flows with peer identities) is the operator's, reached with
// `kubectl -n weft-system port-forward svc/weft-dashboard 15900` (the runtime connects inside the
// pod) and http://localhost:15900/, never by another pod (a Host header is anyone's to send).
import type { IDeployment } from 'kubernetes-models/apps/v1/Deployment';
import type { IService } from 'kubernetes-models/v1/Service';
import type { IServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import type { IClusterRole } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole';
import type { IClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding';
import type { IPolicyRule } from 'kubernetes-models/rbac.authorization.k8s.io/v1/PolicyRule';
import type { ResolvedInstallOptions } from './options.ts';
import { WATCHED, clusterRoleAccount } from './rbac.ts';
import { IMAGE_NONROOT_UID } from '../../lib/defaults.ts';
import { labels, selectorLabels } from './names.ts';
import { DEBUG_TOKEN_DIR, DEBUG_TOKEN_FILE, debugTokenVolume } from './agent.ts';
import { DEBUG_TOKEN_FILE_ENV } from '../../lib/debug-http.ts';

export const DASHBOARD_NAME = 'weft-dashboard';
/** The port `weftctl dashboard` serves on (its --port default). */
export const DASHBOARD_PORT = 15900;

const READ = ['get', 'list', 'watch'];

/** What the dashboard may do, each with the reason; nothing writes. */
export const DASHBOARD_RULES: readonly { why: string; rule: IPolicyRule }[] = [
  ...[...new Set(WATCHED.map((k) => k.group))].map((group) => ({
    why: `mesh objects (${group || 'core'}): the graph's services, workloads and policies, compiled as the controller does`,
    rule: { apiGroups: [group], resources: WATCHED.filter((k) => k.group === group).map((k) => k.plural), verbs: READ },
  })),
  { why: 'nodes: one agent view per node', rule: { apiGroups: [''], resources: ['nodes'], verbs: READ } },
  { why: 'the agents\' and waypoints\' metrics, flows and BPF state on :15020 through the API server\'s pod proxy', rule: { apiGroups: [''], resources: ['pods/proxy'], verbs: ['get'] } },
];

export function renderDashboard(o: ResolvedInstallOptions): [IServiceAccount, IClusterRole, IClusterRoleBinding, IDeployment, IService] {
  const meta = { name: DASHBOARD_NAME, namespace: o.namespace, labels: labels(DASHBOARD_NAME) };
  return [
    ...clusterRoleAccount(DASHBOARD_NAME, o.namespace, DASHBOARD_RULES),
    {
      apiVersion: 'apps/v1', kind: 'Deployment', metadata: meta,
      spec: {
        replicas: 1,
        selector: { matchLabels: selectorLabels(DASHBOARD_NAME) },
        template: {
          metadata: { labels: { ...labels(DASHBOARD_NAME), 'weft.dev/dataplane-mode': 'none' } },
          spec: {
            serviceAccountName: DASHBOARD_NAME,
            securityContext: { runAsNonRoot: true, runAsUser: IMAGE_NONROOT_UID, runAsGroup: IMAGE_NONROOT_UID, seccompProfile: { type: 'RuntimeDefault' } },
            containers: [{
              name: 'dashboard',
              image: o.image,
              // The pod's loopback only: port-forward reaches it there, no other pod does (the
              // Service is there for `port-forward svc/...`; nothing listens at the pod's address, so
              // neither the kubelet's tcpSocket probe nor another pod can connect).
              args: ['weftctl', 'dashboard', '--address', '127.0.0.1', '--port', String(DASHBOARD_PORT), '--weft-namespace', o.namespace],
              ports: [{ name: 'http', containerPort: DASHBOARD_PORT, protocol: 'TCP' }],
              // The token the agents' debug paths want (lib/debug-http.ts), sent with each read.
              ...(o.debugEndpoints ? {
                env: [{ name: DEBUG_TOKEN_FILE_ENV, value: DEBUG_TOKEN_FILE }],
                volumeMounts: [{ name: 'debug-token', mountPath: DEBUG_TOKEN_DIR, readOnly: true }],
              } : {}),
              resources: { requests: { cpu: '20m', memory: '96Mi' }, limits: { memory: '256Mi' } },
              securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } },
            }],
            // Readable by the image's user (the pod sets no fsGroup); only this container mounts it.
            ...(o.debugEndpoints ? { volumes: [debugTokenVolume(0o444)] } : {}),
          },
        },
      },
    },
    {
      apiVersion: 'v1', kind: 'Service', metadata: meta,
      spec: { type: 'ClusterIP', selector: selectorLabels(DASHBOARD_NAME), ports: [{ name: 'http', port: DASHBOARD_PORT, targetPort: DASHBOARD_PORT, protocol: 'TCP' }] },
    },
  ];
}
