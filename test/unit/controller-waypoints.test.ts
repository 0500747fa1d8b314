import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import * as grpc from '@grpc/grpc-js';
import { Controller } from '../../controller/src/controller.ts';
import { ConfigDirSource } from '../../controller/src/sources/files.ts';
import { KubeSource, kubeConfigForServer } from '../../controller/src/sources/kube.ts';
import { LocalWaypointDriver, type LocalWaypointLauncher, type WaypointLaunchSpec } from '../../controller/src/waypoints.ts';
import { KubeWaypointDriver } from '../../controller/src/waypoints-kube.ts';
import { TrustBundlePublisher } from '../../controller/src/cluster/trust-bundle.ts';
import { ConfigServer, addConfigStreamService } from '../../controller/src/xds/server.ts';
import { ConfigClient } from '../../lib/xds/client.ts';
import { FakeApiServer } from '../../cli/local/kube/fake-apiserver.ts';
import { ns, pod, svc, waypoint } from './controller-fixtures.ts';
import { CompileCache, compile, emptyInputs } from '../../controller/src/compile.ts';
import { compileChanges } from '../../controller/src/compile-incremental.ts';
import { ObjectStore } from '../../controller/src/store.ts';
import { admitWaypoint, isOwnWaypointIdentity } from '../../controller/src/waypoint-admission.ts';
import { AgentState } from '../../agent/src/state.ts';
import type { Pod, Waypoint } from '../../lib/model/objects.ts';
import { captureLogger, until, type LogLine } from './controller-harness.ts';
import { Registry } from 'prom-client';

async function serve(configServer: ConfigServer): Promise<{ target: string; server: grpc.Server }> {
  const server = new grpc.Server();
  addConfigStreamService(server, { configServer });
  const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  return { target: `127.0.0.1:${port}`, server };
}

test('in Kubernetes mode a Waypoint becomes a Deployment and a Service, and turns Ready with the Service address', async () => {
  const api = new FakeApiServer();
  await api.start();
  const kubeConfig = kubeConfigForServer(api.url);
  const configServer = new ConfigServer();
  const { target, server } = await serve(configServer);
  const controller = new Controller({
    source: new KubeSource({ kubeConfig, restartDelayMs: 20 }),
    configServer,
    waypoints: new KubeWaypointDriver({ kubeConfig, image: 'weft/waypoint:test', controllerAddress: 'ctl:15012' }),
    debounceMs: 5,
  });
  const agent = new ConfigClient({ target, credentials: grpc.credentials.createInsecure(), kind: 'agent', id: 'node-a' });
  try {
    api.apply(ns('shop', { 'weft.dev/use-waypoint': 'wp' }));
    api.apply(svc('shop', 'web'));
    api.apply(waypoint('shop', 'wp'));
    await controller.start();
    agent.start();
    await until('deployment created', () => api.get('Deployment', 'shop', 'wp') !== undefined);
    const d = api.get('Deployment', 'shop', 'wp') as unknown as { spec: { template: { spec: { serviceAccountName: string; containers: Array<{ image: string }> }; metadata: { labels: Record<string, string> } } }; metadata: { ownerReferences: Array<{ kind: string }> } };
    assert.equal(d.spec.template.spec.containers[0]!.image, 'weft/waypoint:test');
    assert.equal(d.spec.template.spec.serviceAccountName, 'wp');
    assert.equal(d.spec.template.metadata.labels['weft.dev/dataplane-mode'], 'none');
    assert.equal(d.metadata.ownerReferences[0]!.kind, 'Waypoint');
    await until('service created', () => api.get('Service', 'shop', 'wp') !== undefined);
    assert.ok(api.get('ServiceAccount', 'shop', 'wp'));
    const clusterIP = (api.get('Service', 'shop', 'wp')!.spec as { clusterIP: string }).clusterIP;

    await until('agent sees the waypoint not ready', () => agent.snapshot?.waypoints.some((w) => w.name === 'wp' && !w.ready) ?? false);
    await until('status NotReady', () => ((api.get('Waypoint', 'shop', 'wp')?.status as { conditions?: Array<{ status: string }> })?.conditions?.[0]?.status) === 'False');

    // The Deployment controller would do this:
    api.apply({ ...api.get('Deployment', 'shop', 'wp')!, status: { readyReplicas: 1, replicas: 1 } });
    await until('agent sees the waypoint ready', () => agent.snapshot?.waypoints.some((w) => w.ready && w.address === clusterIP) ?? false);
    const st = api.get('Waypoint', 'shop', 'wp')!.status as { conditions: Array<{ type: string; status: string }>; addresses: Array<{ value: string }> };
    await until('status Ready', () => ((api.get('Waypoint', 'shop', 'wp')?.status as typeof st)?.conditions?.[0]?.status) === 'True');
    assert.equal((api.get('Waypoint', 'shop', 'wp')!.status as typeof st).addresses[0]!.value, clusterIP);
    assert.deepEqual(agent.snapshot!.services.find((s) => s.name === 'web')?.waypoint, { name: 'wp', namespace: 'shop' });

    // spec.maxRequests reaches every replica's command line (the Deployment is updated in place).
    api.apply({ ...waypoint('shop', 'wp'), spec: { maxRequests: 500 } });
    const args = () => (api.get('Deployment', 'shop', 'wp')?.spec as { template: { spec: { containers: Array<{ args: string[] }> } } } | undefined)?.template.spec.containers[0]!.args ?? [];
    await until('the Deployment passes --max-requests 500', () => args().join(' ').endsWith('--max-requests 500'));
    // The image's entrypoint takes the part name first (Dockerfile: `weft waypoint ...`); the
    // waypoint gets its controller, the controller's identity, its trust domain, the mounted roots
    // and its projected token (issue 17, defect 3).
    assert.deepEqual(args(), [
      'waypoint', '--namespace', 'shop', '--name', 'wp', '--controller', 'ctl:15012',
      '--controller-identity', 'spiffe://cluster.local/ns/weft-system/sa/weft-controller', '--trust-domain', 'cluster.local',
      '--spiffe-id', 'spiffe://cluster.local/ns/shop/sa/wp', '--ca-bundle', '/var/run/secrets/weft/trust/root-cert.pem',
      '--token-file', '/var/run/secrets/weft/tokens/token', '--max-requests', '500',
    ]);

    // One replica: no PodDisruptionBudget (it would block every drain). Two: one that keeps one
    // serving; back to one: removed.
    assert.equal(api.get('PodDisruptionBudget', 'shop', 'wp'), undefined);
    api.apply({ ...waypoint('shop', 'wp'), spec: { maxRequests: 500, replicas: 2 } });
    await until('PodDisruptionBudget for 2 replicas', () => api.get('PodDisruptionBudget', 'shop', 'wp') !== undefined);
    assert.deepEqual(api.get('PodDisruptionBudget', 'shop', 'wp')!['spec'], { minAvailable: 1, selector: { matchLabels: { 'weft.dev/waypoint': 'wp' } } });
    api.apply({ ...waypoint('shop', 'wp'), spec: { maxRequests: 500, replicas: 1 } });
    await until('PodDisruptionBudget removed at 1 replica', () => api.get('PodDisruptionBudget', 'shop', 'wp') === undefined);
    api.apply({ ...waypoint('shop', 'wp'), spec: { replicas: 3 } });
    await until('PodDisruptionBudget for 3 replicas', () => api.get('PodDisruptionBudget', 'shop', 'wp') !== undefined);

    api.remove('Waypoint', 'shop', 'wp');
    await until('deployment removed', () => api.get('Deployment', 'shop', 'wp') === undefined && api.get('Service', 'shop', 'wp') === undefined);
    await until('PodDisruptionBudget removed with the Waypoint', () => api.get('PodDisruptionBudget', 'shop', 'wp') === undefined);
  } finally {
    agent.close();
    await controller.stop();
    server.forceShutdown();
    await api.stop();
  }
});

class FakeLauncher implements LocalWaypointLauncher {
  running = new Map<string, WaypointLaunchSpec>();
  async ensure(spec: WaypointLaunchSpec): Promise<{ address: string }> {
    this.running.set(`${spec.namespace}/${spec.name}`, spec);
    return { address: '10.250.0.9' };
  }
  async remove(namespace: string, name: string): Promise<void> {
    this.running.delete(`${namespace}/${name}`);
  }
}

test('in local mode a Waypoint is launched through the injected launcher and removed with its object', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-wp-'));
  const launcher = new FakeLauncher();
  const source = new ConfigDirSource({ dir, debounceMs: 10 });
  const controller = new Controller({ source, configServer: new ConfigServer(), waypoints: new LocalWaypointDriver({ launcher }), debounceMs: 5 });
  try {
    writeFileSync(join(dir, 'wp.yaml'), stringify(waypoint('shop', 'wp')));
    await controller.start();
    await until('launched', () => launcher.running.has('shop/wp'));
    assert.equal(launcher.running.get('shop/wp')!.spiffeId, 'spiffe://cluster.local/ns/shop/sa/wp');
    await until('model has a ready waypoint', () => controller.model?.waypoints.get('shop/wp')?.ready === true);
    assert.equal(controller.model!.waypoints.get('shop/wp')!.address, '10.250.0.9');
    await until('status Ready', () => source.statuses().get('Waypoint/shop/wp')?.ok === true);
    writeFileSync(join(dir, 'wp.yaml'), '');
    await until('removed', () => !launcher.running.has('shop/wp'));
  } finally {
    await controller.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

// A refused Waypoint must not run: its pods would hold an identity other pods of the namespace
// also hold. The refusal follows the pods: one taking the account stops the waypoint, its leaving
// lets it start.
test('in local mode a Waypoint whose ServiceAccount an application pod runs as is not launched (ServiceAccountShared), is launched once that pod is gone, and stopped when one takes the account again', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-wp-shared-'));
  const launcher = new FakeLauncher();
  const source = new ConfigDirSource({ dir, debounceMs: 10 });
  const controller = new Controller({ source, configServer: new ConfigServer(), waypoints: new LocalWaypointDriver({ launcher }), debounceMs: 5 });
  const app = pod('shop', 'app-1', { labels: { app: 'app' }, sa: 'wp' });
  try {
    writeFileSync(join(dir, 'wp.yaml'), stringify(waypoint('shop', 'wp')));
    writeFileSync(join(dir, 'app.yaml'), stringify(app));
    await controller.start();
    await until('refused in the model', () => controller.model?.waypoints.get('shop/wp')?.reason === 'ServiceAccountShared');
    await controller.settled();
    assert.equal(launcher.running.has('shop/wp'), false, 'a refused Waypoint is not launched');
    writeFileSync(join(dir, 'app.yaml'), '');
    await until('launched once the pod is gone', () => launcher.running.has('shop/wp'));
    writeFileSync(join(dir, 'app.yaml'), stringify(app));
    await until('stopped when a pod takes its account again', () => !launcher.running.has('shop/wp'));
  } finally {
    await controller.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a Waypoint naming a ServiceAccount or image outside the allow-list is not launched and says why; an allowed one is', async () => {
  const api = new FakeApiServer();
  await api.start();
  const kubeConfig = kubeConfigForServer(api.url);
  const controller = new Controller({
    source: new KubeSource({ kubeConfig, restartDelayMs: 20 }),
    configServer: new ConfigServer(),
    waypoints: new KubeWaypointDriver({ kubeConfig, image: 'weft/waypoint:test', controllerAddress: 'ctl:15012' }),
    compile: { waypointAllowList: { serviceAccounts: ['mesh-proxy'], images: ['registry.example/weft/*'] } },
    debounceMs: 5,
  });
  type St = { conditions?: Array<{ status: string; reason: string; message: string }> };
  const cond = (name: string) => (api.get('Waypoint', 'shop', name)?.status as St | undefined)?.conditions?.[0];
  try {
    api.apply(ns('shop'));
    // The attack: name a ServiceAccount that application pods run as (here: an app's own SA).
    api.apply({ ...waypoint('shop', 'borrowed'), spec: { serviceAccountName: 'payments' } });
    api.apply({ ...waypoint('shop', 'own-image'), spec: { image: 'evil.example/waypoint:1' } });
    api.apply({ ...waypoint('shop', 'allowed'), spec: { serviceAccountName: 'mesh-proxy', image: 'registry.example/weft/waypoint:2' } });
    await controller.start();
    await until('allowed waypoint launched', () => api.get('Deployment', 'shop', 'allowed') !== undefined);
    const d = api.get('Deployment', 'shop', 'allowed')!.spec as { template: { spec: { serviceAccountName: string; containers: Array<{ image: string }> } } };
    assert.equal(d.template.spec.serviceAccountName, 'mesh-proxy');
    assert.equal(d.template.spec.containers[0]!.image, 'registry.example/weft/waypoint:2');
    await until('refusals in status', () => cond('borrowed')?.reason === 'ServiceAccountNotAllowed' && cond('own-image')?.reason === 'ImageNotAllowed');
    assert.match(cond('borrowed')!.message, /ServiceAccount "payments" is not allowed.*--waypoint-service-accounts/);
    assert.match(cond('own-image')!.message, /image "evil\.example\/waypoint:1" is not allowed/);
    assert.equal(api.get('Deployment', 'shop', 'borrowed'), undefined);
    assert.equal(api.get('Deployment', 'shop', 'own-image'), undefined);
    assert.equal(controller.model!.waypoints.get('shop/borrowed')!.ready, false, 'Services using it fail closed');
    assert.equal(controller.model!.waypoints.get('shop/borrowed')!.spiffeId, 'spiffe://cluster.local/ns/shop/sa/', 'the refused SA (nor any other) never becomes a trusted waypoint identity');
  } finally {
    await controller.stop();
    await api.stop();
  }
});

// controller/src/waypoint-admission.ts: "`default` never, since every pod of the namespace runs as
// it and would then count as the waypoint itself" (agent/src/state.ts isWaypointItself compares
// SPIFFE IDs). A Waypoint without spec.serviceAccountName runs as its own name, so the rule is about
// the account it runs as, named or implied.
function meshOf(objs: { waypoints?: Waypoint[]; pods?: Pod[] }) {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': objs.waypoints?.[0]?.metadata.name ?? 'wp' }));
  i.services.push(svc('shop', 'reviews'));
  i.pods.push(...(objs.pods ?? []));
  i.waypoints.push(...(objs.waypoints ?? []));
  return i;
}

test('a Waypoint named "default" with no spec.serviceAccountName runs as ServiceAccount default: refused at metadata.name, and default pods do not count as the waypoint (waypoint-admission.ts "default never")', () => {
  const named = waypoint('shop', 'default');
  assert.deepEqual(admitWaypoint(named) && [admitWaypoint(named)!.path, admitWaypoint(named)!.reason], ['metadata.name', 'ServiceAccountNotAllowed']);
  assert.equal(admitWaypoint({ ...named, spec: { serviceAccountName: 'mesh-proxy' } }, { serviceAccounts: ['mesh-proxy'] }), undefined, 'named default, running as an allowed account of its own');
  const app = { ...pod('shop', 'app', { labels: { app: 'reviews' } }), spec: { nodeName: 'node-a' } } as Pod; // no serviceAccountName: runs as default
  const res = compile(meshOf({ waypoints: [named], pods: [app] }));
  const wp = res.model.waypoints.get('shop/default')!;
  assert.equal(wp.ready, false);
  assert.notEqual(wp.spiffeId, 'spiffe://cluster.local/ns/shop/sa/default', 'the refused account never becomes a trusted waypoint identity');
  assert.equal(isOwnWaypointIdentity(res.model.waypoints.values(), 'shop', 'spiffe://cluster.local/ns/shop/sa/default'), false, 'a default token obtains no waypoint certificate');
  assert.deepEqual(res.findings.filter((f) => f.kind === 'Waypoint').map((f) => [f.name, f.path, f.reason]), [['default', 'metadata.name', 'ServiceAccountNotAllowed']]);
  // The pod running as default does not skip the waypoint: its traffic to the Service fails closed.
  const st = new AgentState('node-a');
  st.apply({ node: 'node-a', workloads: [...res.model.workloads.values()], services: [...res.model.services.values()], policies: [], peerAuthentications: [], waypoints: [...res.model.waypoints.values()] });
  const source = [...res.model.workloads.values()].find((w) => w.name === 'app')!;
  assert.throws(() => st.resolve(source, '10.96.0.10', 80), /waypoint shop\/default is not ready/);
});

test('a Waypoint whose ServiceAccount other pods of its namespace run as is refused at the field that sets it (ServiceAccountShared); its own replicas do not count (waypoint-admission.ts "would count as the waypoint itself")', () => {
  // Named after the ServiceAccount the reviews pods run as.
  const borrowed = waypoint('shop', 'reviews');
  const replica = pod('shop', 'reviews-wp-0', { labels: { 'weft.dev/waypoint': 'reviews' }, sa: 'reviews' });
  const own = compile(meshOf({ waypoints: [borrowed], pods: [replica] }));
  assert.deepEqual(own.findings.filter((f) => f.kind === 'Waypoint'), [], 'its own replica shares its account');
  assert.equal(own.model.waypoints.get('shop/reviews')!.ready, true);
  const app = pod('shop', 'reviews-1', { labels: { app: 'reviews' }, sa: 'reviews' });
  const res = compile(meshOf({ waypoints: [borrowed], pods: [replica, app] }));
  assert.deepEqual(res.findings.filter((f) => f.kind === 'Waypoint').map((f) => [f.path, f.reason]), [['metadata.name', 'ServiceAccountShared']]);
  assert.match(res.findings.find((f) => f.kind === 'Waypoint')!.message, /pod shop\/reviews-1/);
  assert.equal(res.model.waypoints.get('shop/reviews')!.ready, false);
  assert.notEqual(res.model.waypoints.get('shop/reviews')!.spiffeId, [...res.model.workloads.values()].find((w) => w.name === 'reviews-1')!.spiffeId);
  // Named explicitly: reported at spec.serviceAccountName.
  const explicit = compile(meshOf({ waypoints: [{ ...waypoint('shop', 'wp'), spec: { serviceAccountName: 'reviews' } }], pods: [app] }), { waypointAllowList: { serviceAccounts: ['reviews'] } });
  assert.deepEqual(explicit.findings.filter((f) => f.kind === 'Waypoint').map((f) => [f.path, f.reason]), [['spec.serviceAccountName', 'ServiceAccountShared']]);
});

test('two Waypoints on one allowed ServiceAccount do not refuse each other for their replicas (each would stop the other in turn), while an application pod on it refuses both', () => {
  const a = { ...waypoint('shop', 'wp-a'), spec: { serviceAccountName: 'mesh-proxy' } };
  const b = { ...waypoint('shop', 'wp-b'), spec: { serviceAccountName: 'mesh-proxy' } };
  const replicas = [pod('shop', 'wp-a-0', { labels: { 'weft.dev/waypoint': 'wp-a' }, sa: 'mesh-proxy' }), pod('shop', 'wp-b-0', { labels: { 'weft.dev/waypoint': 'wp-b' }, sa: 'mesh-proxy' })];
  const allow = { waypointAllowList: { serviceAccounts: ['mesh-proxy'] } };
  const both = compile(meshOf({ waypoints: [a, b], pods: replicas }), allow);
  assert.deepEqual(both.findings.filter((f) => f.kind === 'Waypoint'), []);
  const app = pod('shop', 'app-1', { labels: { app: 'app' }, sa: 'mesh-proxy' });
  const shared = compile(meshOf({ waypoints: [a, b], pods: [...replicas, app] }), allow);
  assert.deepEqual(shared.findings.filter((f) => f.kind === 'Waypoint').map((f) => [f.name, f.reason]), [['wp-a', 'ServiceAccountShared'], ['wp-b', 'ServiceAccountShared']]);
});

test('a pod taking up a waypoint\'s ServiceAccount refuses the waypoint in an incremental compile too (equal to a full compile)', () => {
  const store = new ObjectStore();
  store.apply([{ type: 'snapshot', kinds: ['Namespace', 'Pod', 'Service', 'Waypoint'], objects: [...Object.values(meshOf({ waypoints: [waypoint('shop', 'wp')] })).flat()] as never, resourceVersion: '1' }]);
  const cache = new CompileCache();
  compileChanges(store.inputs(), { cache }, store.takeChanges());
  store.apply([{ type: 'upsert', object: pod('shop', 'sneaky', { labels: { app: 'reviews' }, sa: 'wp' }) as never, resourceVersion: '2' }]);
  const got = compileChanges(store.inputs(), { cache }, store.takeChanges());
  assert.equal(got.model.waypoints.get('shop/wp')!.ready, false);
  assert.deepEqual(got.findings.filter((f) => f.kind === 'Waypoint').map((f) => f.reason), ['ServiceAccountShared']);
  assert.deepEqual(got.model.waypoints.get('shop/wp'), compile(store.inputs()).model.waypoints.get('shop/wp'));
});

// The attack: whoever may write Waypoints (but not Deployments or Services) names a Waypoint after
// an application's Deployment and Service; the controller, with its own rights, would replace the
// application by a waypoint and, once the Waypoint is deleted, delete both. Istio's deployment
// controller refuses the same (pilot/pkg/config/kube/gateway/deploymentcontroller.go canManage:
// "If the resource already exists but does not have the ManagedGatewayLabel, we won't overwrite
// it"); so does Weft, and says so at the Waypoint's metadata.name, counted and logged.
test('a Waypoint named after a Deployment, Service or PodDisruptionBudget the controller did not make leaves them alone: not replaced, not deleted, refused at metadata.name, counted and logged (Istio deploymentcontroller canManage)', async () => {
  const api = new FakeApiServer();
  await api.start();
  const kubeConfig = kubeConfigForServer(api.url);
  const registry = new Registry();
  const logs: LogLine[] = [];
  const controller = new Controller({
    source: new KubeSource({ kubeConfig, restartDelayMs: 20 }),
    configServer: new ConfigServer(),
    waypoints: new KubeWaypointDriver({ kubeConfig, image: 'weft/waypoint:test', controllerAddress: 'ctl:15012', registry, logger: captureLogger(logs) }),
    debounceMs: 5,
  });
  const appDeployment = { apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'frontend', namespace: 'shop', labels: { app: 'frontend' } }, spec: { replicas: 3, selector: { matchLabels: { app: 'frontend' } }, template: { metadata: { labels: { app: 'frontend' } }, spec: { containers: [{ name: 'app', image: 'shop/frontend:7' }] } } } };
  const appPdb = { apiVersion: 'policy/v1', kind: 'PodDisruptionBudget', metadata: { name: 'frontend', namespace: 'shop' }, spec: { maxUnavailable: 1, selector: { matchLabels: { app: 'frontend' } } } };
  type St = { conditions?: Array<{ status: string; reason: string; message: string }> };
  const cond = (name: string) => (api.get('Waypoint', 'shop', name)?.status as St | undefined)?.conditions?.[0];
  const image = () => (api.get('Deployment', 'shop', 'frontend')?.spec as typeof appDeployment.spec | undefined)?.template.spec.containers[0]?.image;
  try {
    api.apply(ns('shop'));
    api.apply(appDeployment);
    api.apply(svc('shop', 'frontend'));
    api.apply(appPdb);
    await controller.start();
    api.apply({ ...waypoint('shop', 'frontend'), spec: { replicas: 2 } });
    api.apply(waypoint('shop', 'wp')); // a control: a name nobody uses is launched
    await until('the control waypoint is launched', () => api.get('Deployment', 'shop', 'wp') !== undefined);
    await until('the refusal in status', () => cond('frontend')?.reason === 'NameConflict');
    assert.match(cond('frontend')!.message, /metadata\.name: Deployment shop\/frontend exists and was not made by Weft/);
    assert.equal(image(), 'shop/frontend:7', 'the application Deployment is not replaced');
    assert.equal(api.get('Deployment', 'shop', 'frontend')!.metadata.labels?.['weft.dev/waypoint'], undefined);
    assert.deepEqual(api.get('PodDisruptionBudget', 'shop', 'frontend')!['spec'], appPdb.spec, 'nor its disruption budget');
    assert.equal(controller.model!.waypoints.get('shop/frontend')!.ready, false, 'Services using it fail closed');
    const counted = (await registry.getSingleMetric('weft_waypoint_name_conflicts_total')!.get()).values;
    assert.ok(counted.some((v) => v.labels['kind'] === 'Deployment' && v.value >= 1), JSON.stringify(counted));
    assert.ok(logs.some((l) => l.level === 'warn' && /not made by Weft/.test(l.msg) && l.fields['waypoint'] === 'shop/frontend' && l.fields['path'] === 'metadata.name'), JSON.stringify(logs.map((l) => l.msg)));

    // Deleting the Waypoint deletes nothing of the application's.
    api.remove('Waypoint', 'shop', 'frontend');
    api.remove('Waypoint', 'shop', 'wp');
    await until('the control waypoint is removed', () => api.get('Deployment', 'shop', 'wp') === undefined);
    await controller.settled();
    assert.equal(image(), 'shop/frontend:7', 'the application Deployment stays');
    assert.ok(api.get('Service', 'shop', 'frontend'), 'the application Service stays');
    assert.ok(api.get('PodDisruptionBudget', 'shop', 'frontend'), 'its disruption budget stays');
  } finally {
    await controller.stop();
    await api.stop();
  }
});

test('a replica that is not the leader does not take another\'s Deployment and Service for a waypoint\'s, even labelled weft.dev/waypoint (only what the reconciler made counts)', async () => {
  const api = new FakeApiServer();
  await api.start();
  const kubeConfig = kubeConfigForServer(api.url);
  const driver = new KubeWaypointDriver({ kubeConfig, image: 'weft/waypoint:test', controllerAddress: 'ctl:15012' });
  try {
    api.apply(ns('shop'));
    const labels = { 'weft.dev/waypoint': 'wp' };
    api.apply({ apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'wp', namespace: 'shop', labels }, spec: { replicas: 1 }, status: { readyReplicas: 1 } });
    api.apply({ ...svc('shop', 'wp', {}, '10.96.7.7'), metadata: { name: 'wp', namespace: 'shop', labels } });
    await driver.observe([waypoint('shop', 'wp')]);
    await until('the runtime is known', () => driver.runtime().has('shop/wp'));
    assert.deepEqual(driver.runtime().get('shop/wp'), { ready: false, reason: 'DeploymentMissing' });
    // The same objects, made by the reconciler: ready at the Service's address.
    api.apply({ ...api.get('Deployment', 'shop', 'wp')!, metadata: { name: 'wp', namespace: 'shop', labels: { ...labels, 'app.kubernetes.io/managed-by': 'weft' } } });
    api.apply({ ...api.get('Service', 'shop', 'wp')!, metadata: { name: 'wp', namespace: 'shop', labels: { ...labels, 'app.kubernetes.io/managed-by': 'weft' } } });
    await until('ready once they are the reconciler\'s', () => driver.runtime().get('shop/wp')?.ready === true);
    assert.equal(driver.runtime().get('shop/wp')!.address, '10.96.7.7');
  } finally {
    await driver.stop();
    await api.stop();
  }
});

// The attack: a tenant makes its own Waypoint fail for good (here the trust-bundle ConfigMap cannot
// be written in its namespace, as when it filled its ConfigMap quota). The controller retried the
// whole reconcile, every Waypoint of the cluster with five reads each, every second for ever; now
// the retries back off (doubling to 30 s, as the informers' restarts), so one tenant's broken
// Waypoint costs the API server little, and the log says when the next try is.
test('a Waypoint that keeps failing is retried with backoff, not every second for ever (one tenant\'s failure costs the API server little)', async () => {
  const api = new FakeApiServer();
  await api.start();
  const kubeConfig = kubeConfigForServer(api.url);
  const logs: LogLine[] = [];
  const tries: number[] = [];
  const trustBundle = { ensure: async (namespace: string) => { if (namespace === 'quota') { tries.push(Date.now()); throw new Error('configmaps "weft-trust-bundle" is forbidden: exceeded quota'); } } };
  const controller = new Controller({
    source: new KubeSource({ kubeConfig, restartDelayMs: 20 }),
    configServer: new ConfigServer(),
    waypoints: new KubeWaypointDriver({ kubeConfig, image: 'weft/waypoint:test', controllerAddress: 'ctl:15012', trustBundle }),
    waypointRetryMs: 20,
    logger: captureLogger(logs),
    debounceMs: 5,
  });
  try {
    api.apply(ns('quota'));
    api.apply(ns('shop'));
    api.apply(waypoint('quota', 'wp'));
    api.apply(waypoint('shop', 'wp'));
    await controller.start();
    await until('the other tenant\'s waypoint is launched', () => api.get('Deployment', 'shop', 'wp') !== undefined);
    await until('six tries', () => tries.length >= 6, 10_000);
    // 20, 40, 80, 160, 320 ms apart, each ±20 % (lib/backoff.ts): over 490 ms for six tries (a fixed 20 ms retry: about 100 ms).
    assert.ok(tries[5]! - tries[0]! >= 490, `tries ${tries.map((t) => t - tries[0]!).join(', ')} ms`);
    const failed = logs.filter((l) => l.msg.startsWith('waypoint reconcile failed'));
    assert.ok(failed.length >= 5 && failed.every((l) => typeof l.fields['retryInMs'] === 'number'), JSON.stringify(failed.map((l) => l.fields)));
    const waits = failed.slice(0, 4).map((l) => Number(l.fields['retryInMs']));
    [20, 40, 80, 160].forEach((base, i) => assert.ok(waits[i]! >= base * 0.8 && waits[i]! <= base * 1.2, `retry ${i} within 20 % of ${base} ms: ${waits.join(', ')}`));
    assert.match(String(failed[0]!.fields['error']), /quota\/wp: .*exceeded quota/);
  } finally {
    await controller.stop();
    await api.stop();
  }
});

// STYLE.md (one reconcile loop that reads the informer caches): a reconcile of a Waypoint whose
// Deployment, Service, PodDisruptionBudget and ServiceAccount the reconciler's informers hold as
// wanted reads none of them again from the API server, nor the trust bundle it confirmed; a
// Deployment to be replaced is read afresh (its current resourceVersion), and an object the
// informers do not hold (absent, or not the reconciler's) is read, so conflicts still hold.
test('a reconcile reads from the API server only what its informers do not hold as wanted', async () => {
  const api = new FakeApiServer();
  await api.start();
  const kubeConfig = kubeConfigForServer(api.url);
  let roots = ['-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n'];
  let rootsChanged = () => {};
  const trustBundle = new TrustBundlePublisher({ kubeConfig, roots: () => roots, onRootsChange: (f) => { rootsChanged = f; return () => {}; } });
  const driver = new KubeWaypointDriver({ kubeConfig, image: 'weft/waypoint:test', controllerAddress: 'ctl:15012', trustBundle });
  const reads = (plural: string, name = 'wp') => api.requests.filter((r) => r.method === 'GET' && r.path.endsWith(`/namespaces/shop/${plural}/${name}`)).length;
  const writes = () => api.requests.filter((r) => r.method !== 'GET' && r.path.includes('/namespaces/shop/')).length;
  const twoReplicas = { ...waypoint('shop', 'wp'), spec: { replicas: 2 } };
  try {
    api.apply(ns('shop'));
    await driver.reconcile([twoReplicas]);
    assert.ok(api.get('PodDisruptionBudget', 'shop', 'wp') && api.get('ServiceAccount', 'shop', 'wp') && api.get('ConfigMap', 'shop', 'weft-trust-bundle'));
    // The Deployment controller would do this; ready with an address once the informers hold both.
    api.apply({ ...api.get('Deployment', 'shop', 'wp')!, status: { readyReplicas: 1, replicas: 1 } });
    await until('the informers hold the Deployment and Service', () => driver.runtime().get('shop/wp')?.ready === true);
    await until('the informers hold the budget and the account', async () => {
      api.requests.length = 0;
      await driver.reconcile([twoReplicas]);
      return reads('poddisruptionbudgets') + reads('serviceaccounts') === 0;
    });
    api.requests.length = 0;
    await driver.reconcile([twoReplicas]);
    assert.deepEqual([reads('deployments'), reads('services'), reads('poddisruptionbudgets'), reads('serviceaccounts'), reads('configmaps', 'weft-trust-bundle'), writes()], [0, 0, 0, 0, 0, 0]);
    // New roots: the copy is read and replaced at once, not at the next reconcile.
    roots = [...roots, '-----BEGIN CERTIFICATE-----\nBB==\n-----END CERTIFICATE-----\n'];
    api.requests.length = 0;
    rootsChanged();
    await until('the trust bundle holds both roots', () => String((api.get('ConfigMap', 'shop', 'weft-trust-bundle')?.['data'] as Record<string, string> | undefined)?.['root-cert.pem'] ?? '').includes('BB=='));
    // A tenant may edit or delete ConfigMaps in its namespace: the copy is put back at once.
    api.remove('ConfigMap', 'shop', 'weft-trust-bundle');
    await until('the deleted copy put back', () => String((api.get('ConfigMap', 'shop', 'weft-trust-bundle')?.['data'] as Record<string, string> | undefined)?.['root-cert.pem'] ?? '').includes('BB=='));
    api.apply({ ...api.get('ConfigMap', 'shop', 'weft-trust-bundle')!, data: { 'root-cert.pem': '-----BEGIN CERTIFICATE-----\nEVIL\n-----END CERTIFICATE-----\n' } });
    await until('the changed copy put back', () => String((api.get('ConfigMap', 'shop', 'weft-trust-bundle')?.['data'] as Record<string, string> | undefined)?.['root-cert.pem'] ?? '').includes('BB=='));
    // Back to one replica: the budget the informer holds is deleted, without reading it first.
    api.requests.length = 0;
    await driver.reconcile([waypoint('shop', 'wp')]);
    assert.equal(api.get('PodDisruptionBudget', 'shop', 'wp'), undefined);
    assert.equal(reads('poddisruptionbudgets'), 0);
    // A changed spec: the Deployment is read for its resourceVersion and replaced.
    api.requests.length = 0;
    await driver.reconcile([{ ...waypoint('shop', 'wp'), spec: { maxRequests: 500 } }]);
    assert.equal(reads('deployments'), 1);
    await until('the Deployment passes --max-requests 500', () => JSON.stringify(api.get('Deployment', 'shop', 'wp')?.spec ?? {}).includes('"500"'));
  } finally {
    await trustBundle.close();
    await driver.stop();
    await api.stop();
  }
});

// Multi-cluster with a trust domain per cluster: the controller runs with the other clusters' as
// --trust-domain-alias, and its waypoints must admit their callers too (waypoint/src/main.ts), as
// Istio's proxies all take the mesh's trustDomainAliases
// (https://istio.io/latest/docs/reference/config/istio.mesh.v1alpha1/, trustDomainAliases).
test('the waypoint Deployment carries the controller\'s trust domain and each of its --trust-domain-alias', async () => {
  const api = new FakeApiServer();
  await api.start();
  const kubeConfig = kubeConfigForServer(api.url);
  const driver = new KubeWaypointDriver({ kubeConfig, image: 'weft/waypoint:test', controllerAddress: 'ctl:15012', trustDomain: 'cluster1.local', trustDomainAliases: ['cluster2.local', 'cluster3.local'] });
  try {
    api.apply(ns('shop'));
    await driver.reconcile([waypoint('shop', 'wp')]);
    const args = (api.get('Deployment', 'shop', 'wp')?.spec as { template: { spec: { containers: Array<{ args: string[] }> } } } | undefined)?.template.spec.containers[0]!.args ?? [];
    const flag = (name: string) => args.flatMap((a, i) => (a === name ? [args[i + 1]] : []));
    assert.deepEqual(flag('--trust-domain'), ['cluster1.local']);
    assert.deepEqual(flag('--trust-domain-alias'), ['cluster2.local', 'cluster3.local']);
    assert.deepEqual(flag('--spiffe-id'), ['spiffe://cluster1.local/ns/shop/sa/wp']);
  } finally {
    await driver.stop();
    await api.stop();
  }
});

// A controller upgraded past the driver's `trustDomainAliases ?? []` must not roll every waypoint:
// no aliases and an empty list write the same Deployment, under the same weft.dev/spec-hash.
test('a controller without --trust-domain-alias writes the waypoint Deployment it wrote before (same args, same spec hash)', async () => {
  const deployment = async (aliases: readonly string[] | undefined) => {
    const api = new FakeApiServer();
    await api.start();
    const driver = new KubeWaypointDriver({ kubeConfig: kubeConfigForServer(api.url), image: 'weft/waypoint:test', controllerAddress: 'ctl:15012', trustDomain: 'cluster.local', ...(aliases ? { trustDomainAliases: aliases } : {}) });
    try {
      api.apply(ns('shop'));
      await driver.reconcile([waypoint('shop', 'wp')]);
      const d = api.get('Deployment', 'shop', 'wp');
      return { hash: (d?.metadata?.annotations as Record<string, string> | undefined)?.['weft.dev/spec-hash'], spec: d?.spec };
    } finally {
      await driver.stop();
      await api.stop();
    }
  };
  const none = await deployment(undefined);
  assert.ok(none.hash, 'the Deployment carries its spec hash');
  assert.deepEqual(await deployment([]), none);
  assert.ok(!JSON.stringify(none.spec).includes('--trust-domain-alias'));
});
