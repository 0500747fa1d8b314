// The controller: a Deployment and the Service agents and waypoints dial (config stream and
// certificate service on 15012). It needs no host access, so it runs as the image's non-root
// user with a read-only root filesystem and no capabilities. It is configured by command-line
// flags (controller/src/main.ts `parseControllerArgs`).
import type { IDeployment } from 'kubernetes-models/apps/v1/Deployment';
import type { IService } from 'kubernetes-models/v1/Service';
import type { IPodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import type { IVolume } from 'kubernetes-models/v1/Volume';
import type { IVolumeMount } from 'kubernetes-models/v1/VolumeMount';
import type { ResolvedInstallOptions } from './options.ts';
import {
  CONTROLLER_CA_DIR, CONTROLLER_NAME, CONTROLLER_NODE_OPTIONS, ENV, LIVENESS_PATH, PORTS, READINESS_PATH, labels, selectorLabels,
} from './names.ts';

import { IMAGE_NONROOT_UID } from '../../lib/defaults.ts';

export const CONTROLLER_RESOURCES = {
  requests: { cpu: '100m', memory: '128Mi' },
  limits: { cpu: '1', memory: '512Mi' },
};

import { controllerAddress } from '../../lib/defaults.ts';
import { trustDomainAliasArgs } from '../../lib/main.ts';
import { FEDERATION_PORT } from '../../lib/model/federation.ts';
export { controllerAddress };

/** The controller's command line after the image's `controller` part name. */
export function controllerArgs(o: ResolvedInstallOptions): string[] {
  return [
    '--kube',
    '--trust-domain', o.trustDomain,
    // Also handed on to the waypoints it deploys; principals are compiled for all of them.
    ...trustDomainAliasArgs(o.trustDomainAliases),
    // Its serving certificate's SPIFFE ID and DNS names (weft-controller.<ns>.svc) come from here.
    '--root-namespace', o.namespace,
    '--waypoint-image', o.image,
    '--controller-address', controllerAddress(o.namespace),
    '--log-level', o.logLevel,
    // Without it any pod that reaches 15012 could stream the whole mesh model: agents must present
    // their node certificate, waypoints a workload certificate of their namespace.
    '--require-client-identity',
    ...(o.debugEndpoints ? ['--debug-endpoints'] : []),
    // The whole Secret: tls.crt/tls.key[/ca.crt] or Istio's cacerts (ca-cert.pem, ca-key.pem,
    // root-cert.pem, cert-chain.pem). Without --ca-secret the controller keeps the cluster's CA in
    // the weft-ca Secret it creates once, shared by every replica.
    ...(o.caSecret ? ['--ca-dir', CONTROLLER_CA_DIR] : []),
    // Multi-cluster: remote clusters through kubeconfig Secrets (weft.dev/multicluster=true), and
    // this cluster's export on 15014 for its east-west gateway (mutual TLS, gateway identity only).
    ...(o.multicluster ? ['--cluster-id', o.multicluster.clusterId, '--network', o.multicluster.network, '--remote-secrets'] : []),
    ...(o.multicluster?.eastwest ? ['--federation-listen', `0.0.0.0:${FEDERATION_PORT}`] : []),
    // What one remote may add to this cluster's config (the controller's defaults otherwise).
    ...(o.multicluster?.remoteMaxServices !== undefined ? ['--remote-max-services', String(o.multicluster.remoteMaxServices)] : []),
    ...(o.multicluster?.remoteMaxEndpoints !== undefined ? ['--remote-max-endpoints', String(o.multicluster.remoteMaxEndpoints)] : []),
    ...(o.multicluster?.remoteMaxDestinations !== undefined ? ['--remote-max-destinations', String(o.multicluster.remoteMaxDestinations)] : []),
  ];
}

export function renderController(o: ResolvedInstallOptions): [IDeployment, IService, IPodDisruptionBudget] {
  const podLabels = { ...labels(CONTROLLER_NAME), 'weft.dev/dataplane-mode': 'none' };
  const volumes: IVolume[] = [{ name: 'tmp', emptyDir: { medium: 'Memory', sizeLimit: '64Mi' } }];
  // Scratch space: the root filesystem is read-only.
  const volumeMounts: IVolumeMount[] = [{ name: 'tmp', mountPath: '/tmp' }];
  if (o.caSecret) {
    volumes.push({ name: 'ca', secret: { secretName: o.caSecret, defaultMode: 0o440 } });
    volumeMounts.push({ name: 'ca', mountPath: CONTROLLER_CA_DIR, readOnly: true });
  }
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
            // The mounted CA key (mode 0440, group fsGroup) is readable by the controller through its group.
            fsGroup: IMAGE_NONROOT_UID,
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
            args: ['controller', ...controllerArgs(o)],
            ports: [
              { name: 'grpc-tls', containerPort: PORTS.xds, protocol: 'TCP' },
              { name: 'http-metrics', containerPort: PORTS.metrics, protocol: 'TCP' },
              { name: 'http-ready', containerPort: PORTS.readiness, protocol: 'TCP' },
              ...(o.multicluster?.eastwest ? [{ name: 'https-federation', containerPort: FEDERATION_PORT, protocol: 'TCP' as const }] : []),
            ],
            env: [
              { name: ENV.podName, valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
              { name: ENV.podNamespace, valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
              { name: 'NODE_OPTIONS', value: CONTROLLER_NODE_OPTIONS },
            ],
            readinessProbe: {
              httpGet: { path: READINESS_PATH, port: PORTS.readiness },
              periodSeconds: 5,
              failureThreshold: 3,
            },
            // Restarted when its event loop stops turning (not when it is merely not ready yet).
            livenessProbe: {
              httpGet: { path: LIVENESS_PATH, port: PORTS.readiness },
              initialDelaySeconds: 10,
              periodSeconds: 10,
              failureThreshold: 3,
            },
            resources: CONTROLLER_RESOURCES,
            securityContext: {
              allowPrivilegeEscalation: false,
              readOnlyRootFilesystem: true,
              capabilities: { drop: ['ALL'] },
            },
            volumeMounts,
          }],
          volumes,
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
        ...(o.multicluster?.eastwest ? [{ name: 'https-federation', port: FEDERATION_PORT, targetPort: FEDERATION_PORT, protocol: 'TCP' as const }] : []),
      ],
    },
  };
  // Voluntary disruptions (node drains) keep one replica serving when there are several, and
  // never block a drain of a single replica.
  const pdb: IPodDisruptionBudget = {
    apiVersion: 'policy/v1',
    kind: 'PodDisruptionBudget',
    metadata: { name: CONTROLLER_NAME, namespace: o.namespace, labels: labels(CONTROLLER_NAME) },
    spec: {
      selector: { matchLabels: selectorLabels(CONTROLLER_NAME) },
      ...(o.controllerReplicas > 1 ? { minAvailable: 1 } : { maxUnavailable: 1 }),
    },
  };
  return [deployment, service, pdb];
}
