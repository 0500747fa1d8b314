// The east-west gateway of a multi-cluster install (`weftctl install --cluster-id <id> --eastwest`):
// the door into this cluster's network for callers in other networks (eastwest/src/, docs/
// ARCHITECTURE.md "Multi-cluster"). As Istio's east-west gateway: a Deployment, and a Service of
// type LoadBalancer labelled with the network (topology.istio.io/network) whose port 15008 is named
// tls-hbone; other clusters' controllers find its address in that Service's status through their
// remote secret (controller/src/sources/remote-secrets.ts).
//
// Its certificate (spiffe://<td>/ns/<ns>/sa/weft-eastwest) is issued and renewed by this cluster's
// controller CA: the pod presents its own projected ServiceAccount token (audience
// weft-controller), which the controller's TokenReview admits for that identity only. It reads this
// cluster's export from the controller on 15014 (mutual TLS) to know which endpoints it may admit.
// It needs no Kubernetes API rights: its ServiceAccount has no role and no API token is mounted.
import type { IDeployment } from 'kubernetes-models/apps/v1/Deployment';
import type { IService } from 'kubernetes-models/v1/Service';
import type { IServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import { controllerSpiffeId, POD_PATHS } from '../../lib/defaults.ts';
import { EASTWEST_PORT_NAME, EASTWEST_SERVICE_ACCOUNT, FEDERATION_PORT, LABEL_NETWORK } from '../../lib/model/federation.ts';
import type { ResolvedInstallOptions } from './options.ts';
import { trustDomainAliasArgs } from '../../lib/main.ts';
import { CONTROLLER_NAME, CONTROLLER_TOKEN_AUDIENCE, LIVENESS_PATH, PORTS, READINESS_PATH, TOKEN_EXPIRATION_SECONDS, TRUST_BUNDLE_CONFIGMAP, TRUST_BUNDLE_KEY, labels, selectorLabels } from './names.ts';
import { IMAGE_NONROOT_UID } from '../../lib/defaults.ts';

/** Its Deployment, Service and ServiceAccount share the ServiceAccount's (the identity's) name. */
const EASTWEST_NAME = EASTWEST_SERVICE_ACCOUNT;

export const EASTWEST_RESOURCES = {
  requests: { cpu: '100m', memory: '128Mi' },
  limits: { cpu: '2', memory: '512Mi' },
};

/** The gateway's command line after the image's `eastwest` part name. */
export function eastwestArgs(o: ResolvedInstallOptions): string[] {
  return [
    // The pod's own address (Kubernetes expands $(POD_IP) in args): HBONE, metrics and readiness there.
    '--listen', `$(POD_IP):${PORTS.hbone}`,
    '--ca-address', `${CONTROLLER_NAME}.${o.namespace}.svc:${PORTS.xds}`,
    '--token-file', `${POD_PATHS.token}/token`,
    '--trust-bundle', `${POD_PATHS.trustBundle}/${TRUST_BUNDLE_KEY}`,
    '--controller', `https://${CONTROLLER_NAME}.${o.namespace}.svc:${FEDERATION_PORT}`,
    '--controller-id', controllerSpiffeId(o.trustDomain, o.namespace),
    '--trust-domain', o.trustDomain,
    ...trustDomainAliasArgs(o.trustDomainAliases),
    '--log-level', o.logLevel,
  ];
}

export function renderEastwest(o: ResolvedInstallOptions): [IServiceAccount, IDeployment, IService] {
  const mc = o.multicluster!;
  const sa: IServiceAccount = {
    apiVersion: 'v1',
    kind: 'ServiceAccount',
    metadata: {
      name: EASTWEST_NAME, namespace: o.namespace, labels: labels(EASTWEST_NAME),
      annotations: { 'weft.dev/rules': `none: the gateway reads nothing from the Kubernetes API; its projected token (audience ${CONTROLLER_TOKEN_AUDIENCE}) obtains its own certificate from the controller, nothing else` },
    },
    automountServiceAccountToken: false,
  };
  const deployment: IDeployment = {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name: EASTWEST_NAME, namespace: o.namespace, labels: { ...labels(EASTWEST_NAME), [LABEL_NETWORK]: mc.network } },
    spec: {
      replicas: 1,
      selector: { matchLabels: selectorLabels(EASTWEST_NAME) },
      template: {
        metadata: {
          labels: { ...labels(EASTWEST_NAME), [LABEL_NETWORK]: mc.network, 'weft.dev/dataplane-mode': 'none' },
          annotations: { 'prometheus.io/scrape': 'true', 'prometheus.io/port': String(PORTS.metrics), 'prometheus.io/path': '/metrics' },
        },
        spec: {
          serviceAccountName: EASTWEST_NAME,
          automountServiceAccountToken: false,
          securityContext: { runAsNonRoot: true, runAsUser: IMAGE_NONROOT_UID, runAsGroup: IMAGE_NONROOT_UID, seccompProfile: { type: 'RuntimeDefault' } },
          containers: [{
            name: 'eastwest',
            image: o.image,
            args: ['eastwest', ...eastwestArgs(o)],
            env: [{ name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } }],
            ports: [
              { name: EASTWEST_PORT_NAME, containerPort: PORTS.hbone, protocol: 'TCP' },
              { name: 'http-metrics', containerPort: PORTS.metrics, protocol: 'TCP' },
              { name: 'http-ready', containerPort: PORTS.readiness, protocol: 'TCP' },
            ],
            // Ready once it knows this cluster's endpoints (it admits nothing before).
            readinessProbe: { httpGet: { path: READINESS_PATH, port: PORTS.readiness }, periodSeconds: 5, failureThreshold: 3 },
            // Restarted when its event loop stops turning, as the controller and waypoints are.
            livenessProbe: { httpGet: { path: LIVENESS_PATH, port: PORTS.readiness }, periodSeconds: 10, failureThreshold: 3 },
            resources: EASTWEST_RESOURCES,
            securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } },
            volumeMounts: [
              { name: 'weft-token', mountPath: POD_PATHS.token, readOnly: true },
              { name: 'trust-bundle', mountPath: POD_PATHS.trustBundle, readOnly: true },
            ],
          }],
          volumes: [
            { name: 'weft-token', projected: { sources: [{ serviceAccountToken: { audience: CONTROLLER_TOKEN_AUDIENCE, expirationSeconds: TOKEN_EXPIRATION_SECONDS, path: 'token' } }] } },
            // Optional: the controller creates it on first start.
            { name: 'trust-bundle', configMap: { name: TRUST_BUNDLE_CONFIGMAP, optional: true } },
          ],
        },
      },
    },
  };
  const service: IService = {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: EASTWEST_NAME, namespace: o.namespace, labels: { ...labels(EASTWEST_NAME), [LABEL_NETWORK]: mc.network } },
    spec: {
      // Reachable from the other networks: its status.loadBalancer.ingress is the address their controllers use.
      type: 'LoadBalancer',
      selector: selectorLabels(EASTWEST_NAME),
      ports: [{ name: EASTWEST_PORT_NAME, port: PORTS.hbone, targetPort: PORTS.hbone, protocol: 'TCP' }],
    },
  };
  return [sa, deployment, service];
}
