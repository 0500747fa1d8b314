// Builders of input objects for the controller tests.
import type { AuthorizationPolicy, Namespace, Pod, Service, Waypoint } from '../../lib/model/objects.ts';

export function ns(name: string, labels: Record<string, string> = {}): Namespace {
  return { apiVersion: 'v1', kind: 'Namespace', metadata: { name, labels } };
}

let ipSeq = 10;
export function pod(namespace: string, name: string, opts: { node?: string; labels?: Record<string, string>; ip?: string; sa?: string; hostIP?: string } = {}): Pod {
  const n = ipSeq++;
  const node = opts.node ?? 'node-a';
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace, uid: `uid-${namespace}-${name}`, labels: opts.labels ?? { app: name } },
    spec: { nodeName: node, serviceAccountName: opts.sa ?? name, containers: [{ name: 'app', ports: [{ name: 'http', containerPort: 8080 }] }] },
    status: { phase: 'Running', podIP: opts.ip ?? `10.1.${Math.floor(n / 250)}.${n % 250}`, hostIP: opts.hostIP ?? (node === 'node-a' ? '192.168.0.1' : '192.168.0.2') },
  };
}

export function svc(namespace: string, name: string, selector: Record<string, string> = { app: name }, clusterIP = '10.96.0.10'): Service {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name, namespace },
    spec: { selector, clusterIP, ports: [{ name: 'http', port: 80, targetPort: 'http' }] },
  };
}

export function waypoint(namespace: string, name: string): Waypoint {
  return { apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name, namespace }, spec: {} };
}

export function authz(namespace: string, name: string, spec: AuthorizationPolicy['spec']): AuthorizationPolicy {
  return { apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name, namespace, generation: 1 }, spec };
}
