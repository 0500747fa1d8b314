// The controller: a Deployment and the Service agents and waypoints dial (config stream and
// certificate service on 15012). It needs no host access, so it runs as the image's non-root
// user with a read-only root filesystem and no capabilities.
import type { IDeployment } from 'kubernetes-models/apps/v1/Deployment';
import type { IService } from 'kubernetes-models/v1/Service';
import type { ResolvedInstallOptions } from './options.ts';
import {
  AGENT_NAME, CONTROLLER_TOKEN_AUDIENCE, CA_SECRET_NAME, CONTROLLER_LEASE_NAME, CONTROLLER_NAME, ENV, PORTS, READINESS_PATH,
  TRUST_BUNDLE_CONFIGMAP, labels, selectorLabels,
} from './names.ts';

/** The image's unprivileged user (`node` in the node:24 images). */
export const IMAGE_NONROOT_UID = 1000;

export const CONTROLLER_RESOURCES = {
  requests: { cpu: '100m', memory: '128Mi' },
  limits: { cpu: '1', memory: '512Mi' },
};

/** host:port of the controller's config stream and certificate service, as agents dial it. */
export function controllerAddress(namespace: string): string {
  return `${CONTROLLER_NAME}.${namespace}.svc:${PORTS.xds}`;
}

export function renderController(o: ResolvedInstallOptions): [IDeployment, IService] {
  const podLabels = { ...labels(CONTROLLER_NAME), 'weft.dev/dataplane-mode': 'none' };
  const deployment: IDeployment = {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name: CONTROLLER_NAME, namespace: o.namespace, labels: labels(CONTROLLER_NAME) },
    spec: {
      replicas: o.controllerReplicas,
      selector: { matchLabels: selectorLabels(CONTROLLER_NAME) },
      template: {
        metadata: {
          labels: podLabels,
          annotations: {
            'prometheus.io/scrape': 'true',
            'prometheus.io/port': String(PORTS.metrics),
            'prometheus.io/path': '/metrics',
          },
        },
        spec: {
          serviceAccountName: CONTROLLER_NAME,
          priorityClassName: 'system-cluster-critical',
          securityContext: {
            runAsNonRoot: true,
            runAsUser: IMAGE_NONROOT_UID,
            runAsGroup: IMAGE_NONROOT_UID,
            seccompProfile: { type: 'RuntimeDefault' },
          },
          ...(o.controllerReplicas > 1
            ? {
                affinity: {
                  podAntiAffinity: {
                    preferredDuringSchedulingIgnoredDuringExecution: [{
                      weight: 100,
                      podAffinityTerm: { topologyKey: 'kubernetes.io/hostname', labelSelector: { matchLabels: selectorLabels(CONTROLLER_NAME) } },
                    }],
                  },
                },
              }
            : {}),
          containers: [{
            name: 'controller',
            image: o.image,
            args: ['controller'],
            ports: [
              { name: 'grpc-tls', containerPort: PORTS.xds, protocol: 'TCP' },
              { name: 'http-metrics', containerPort: PORTS.metrics, protocol: 'TCP' },
              { name: 'http-ready', containerPort: PORTS.readiness, protocol: 'TCP' },
            ],
            env: [
              { name: ENV.podName, valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
              { name: ENV.podNamespace, valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
              { name: ENV.trustDomain, value: o.trustDomain },
              { name: ENV.logLevel, value: o.logLevel },
              { name: ENV.caSecret, value: CA_SECRET_NAME },
              { name: ENV.trustBundleConfigMap, value: TRUST_BUNDLE_CONFIGMAP },
              { name: ENV.leaderLease, value: CONTROLLER_LEASE_NAME },
              { name: ENV.waypointImage, value: o.image },
              // The certificate service's TokenReview: the audience agents' tokens carry, and the
              // ServiceAccount (user name) a token must belong to for its node to be trusted.
              { name: ENV.tokenAudience, value: CONTROLLER_TOKEN_AUDIENCE },
              { name: ENV.agentServiceAccounts, value: `system:serviceaccount:${o.namespace}:${AGENT_NAME}` },
            ],
            readinessProbe: {
              httpGet: { path: READINESS_PATH, port: PORTS.readiness },
              periodSeconds: 5,
              failureThreshold: 3,
            },
            resources: CONTROLLER_RESOURCES,
            securityContext: {
              allowPrivilegeEscalation: false,
              readOnlyRootFilesystem: true,
              capabilities: { drop: ['ALL'] },
            },
            // Scratch space: the root filesystem is read-only.
            volumeMounts: [{ name: 'tmp', mountPath: '/tmp' }],
          }],
          volumes: [{ name: 'tmp', emptyDir: { medium: 'Memory', sizeLimit: '64Mi' } }],
        },
      },
    },
  };
  const service: IService = {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: CONTROLLER_NAME, namespace: o.namespace, labels: labels(CONTROLLER_NAME) },
    spec: {
      type: 'ClusterIP',
      selector: selectorLabels(CONTROLLER_NAME),
      ports: [
        { name: 'grpc-tls', port: PORTS.xds, targetPort: PORTS.xds, protocol: 'TCP' },
        { name: 'http-metrics', port: PORTS.metrics, targetPort: PORTS.metrics, protocol: 'TCP' },
      ],
    },
  };
  return [deployment, service];
}
