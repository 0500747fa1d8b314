// Least privilege, checked against use: the controller's Kubernetes-mode parts (its informers and
// status writer, the waypoint reconciler, the trust-bundle publisher, the Event recorder) run a
// waypoint's whole life against the lab API server, which records every request; each request must
// be one the rendered ClusterRole grants, and each verb it grants on the objects the controller
// writes must be one of those requests. The lab API server does not enforce RBAC
// (cli/local/kube/fake-apiserver.ts), so this is where a missing or a spare grant shows.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { IClusterRole } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole';
import { Controller } from '../../controller/src/controller.ts';
import { KubeSource, kubeConfigForServer } from '../../controller/src/sources/kube.ts';
import { KubeWaypointDriver } from '../../controller/src/waypoints-kube.ts';
import { TrustBundlePublisher } from '../../controller/src/cluster/trust-bundle.ts';
import { EventRecorder } from '../../controller/src/cluster/events.ts';
import { ConfigServer } from '../../controller/src/xds/server.ts';
import { FakeApiServer } from '../../cli/local/kube/fake-apiserver.ts';
import { renderInstall } from '../../cli/install/render.ts';
import { ns, svc, waypoint } from './controller-fixtures.ts';
import { until } from './controller-harness.ts';

/** `group/resource verb` of an API request, as the RBAC authorizer sees it. */
export function rbacRequest(method: string, path: string): string | undefined {
  const url = new URL(path, 'http://x');
  const parts = url.pathname.split('/').filter(Boolean);
  let group: string;
  let rest: string[];
  if (parts[0] === 'api') { group = ''; rest = parts.slice(2); } else if (parts[0] === 'apis') { group = parts[1]!; rest = parts.slice(3); } else return undefined;
  if (rest[0] === 'namespaces' && rest.length >= 3) rest = rest.slice(2);
  const [resource, name, sub] = rest;
  if (!resource) return undefined;
  const res = sub ? `${resource}/${sub}` : resource;
  const verb = method === 'GET' ? (url.searchParams.get('watch') === 'true' ? 'watch' : name ? 'get' : 'list')
    : method === 'POST' ? 'create' : method === 'PUT' ? 'update' : method === 'PATCH' ? 'patch' : method === 'DELETE' ? 'delete' : method.toLowerCase();
  return `${group}/${res} ${verb}`;
}

test('the controller uses every verb its ClusterRole grants on what it writes (Deployments, Services, ServiceAccounts, PodDisruptionBudgets, ConfigMaps, Events), and nothing it is not granted', async () => {
  const api = new FakeApiServer();
  await api.start();
  const kubeConfig = kubeConfigForServer(api.url);
  const trustBundle = new TrustBundlePublisher({ kubeConfig, roots: () => ['-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n'], onRootsChange: () => () => {} });
  const events = new EventRecorder({ kubeConfig, instance: 'test' });
  const controller = new Controller({
    source: new KubeSource({ kubeConfig, restartDelayMs: 20 }),
    configServer: new ConfigServer(),
    waypoints: new KubeWaypointDriver({ kubeConfig, image: 'weft/waypoint:test', controllerAddress: 'ctl:15012', trustBundle }),
    onFindings: (f) => events.record(f),
    debounceMs: 5,
  });
  const spec = () => api.get('Deployment', 'shop', 'wp')?.spec as { replicas: number; template: { spec: { containers: Array<{ args: string[] }> } } } | undefined;
  try {
    api.apply(ns('shop'));
    // A Service naming a Waypoint that is not there: an Event; again after it went away: the Event's count.
    api.apply({ ...svc('shop', 'web'), metadata: { name: 'web', namespace: 'shop', labels: { 'weft.dev/use-waypoint': 'ghost' } } });
    await controller.start();
    await until('an Event', () => api.list('Event').length === 1);
    api.apply(svc('shop', 'web'));
    await until('the finding gone', () => [...(controller.model?.services.values() ?? [])].some((x) => x.name === 'web' && !x.waypoint));
    await controller.settled();
    api.apply({ ...svc('shop', 'web'), metadata: { name: 'web', namespace: 'shop', labels: { 'weft.dev/use-waypoint': 'ghost' } } });
    await until('the Event counted again', () => (api.list('Event')[0] as { count?: number }).count === 2);
    // A waypoint's life: created, replaced, two replicas (a budget) and back, deleted.
    api.apply(waypoint('shop', 'wp'));
    await until('launched', () => spec() !== undefined && api.get('Service', 'shop', 'wp') !== undefined);
    api.apply({ ...waypoint('shop', 'wp'), spec: { replicas: 2, maxRequests: 5 } });
    await until('two replicas and a budget', () => spec()?.replicas === 2 && api.get('PodDisruptionBudget', 'shop', 'wp') !== undefined);
    api.apply({ ...waypoint('shop', 'wp'), spec: { replicas: 1 } });
    await until('one replica, no budget', () => spec()?.replicas === 1 && api.get('PodDisruptionBudget', 'shop', 'wp') === undefined);
    api.apply({ ...api.get('ConfigMap', 'shop', 'weft-trust-bundle')!, data: { 'root-cert.pem': 'stale' } });
    await until('the stale copy put back', () => (api.get('ConfigMap', 'shop', 'weft-trust-bundle')?.['data'] as Record<string, string>)['root-cert.pem'] !== 'stale');
    api.remove('Waypoint', 'shop', 'wp');
    await until('removed', () => spec() === undefined && api.get('Service', 'shop', 'wp') === undefined);
    await controller.settled();
  } finally {
    await controller.stop();
    await trustBundle.close();
    await api.stop();
  }
  const used = new Set(api.requests.map((r) => rbacRequest(r.method, r.path)).filter((x): x is string => x !== undefined));
  const role = renderInstall({ image: 'weft:x', trustDomain: 'cluster.local', warn: () => {} }).find((o) => o.kind === 'ClusterRole' && o.metadata?.name === 'weft-controller') as IClusterRole;
  const granted = new Set((role.rules ?? []).flatMap((r) => (r.apiGroups ?? []).flatMap((g) => (r.resources ?? []).flatMap((res) => r.verbs.map((v) => `${g}/${res} ${v}`)))));
  for (const u of used) assert.ok(granted.has(u), `the controller does ${u}, which its ClusterRole does not grant`);
  const written = ['apps/deployments', 'policy/poddisruptionbudgets', '/services', '/serviceaccounts', '/configmaps', '/events'];
  const spare = [...granted].filter((g) => written.includes(g.split(' ')[0]!) && !used.has(g)).sort();
  assert.deepEqual(spare, [], 'granted, never used');
});
