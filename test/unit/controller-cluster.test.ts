// The controller in Kubernetes mode against the lab API server (cli/local/kube/fake-apiserver.ts, which
// checks projected tokens' audience and expiry like a real one): the defects of issue 17 that a
// real install hit, each from the side that used to fail.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { holds } from '../lab/wait.ts';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runController, type ControllerMainOptions, type RunningController } from '../../controller/src/main.ts';
import { NodeAuthenticationError } from '../../controller/src/ca/index.ts';
import { TokenReviewAuthenticator } from '../../controller/src/ca/token-review.ts';
import { kubeConfigForServer } from '../../controller/src/sources/kube.ts';
import { CertificateAuthority } from '../../lib/identity/ca.ts';
import { CaAuthenticationError, CertificateRefusedError } from '../../lib/identity/errors.ts';
import { createCsr, generateKeyPair } from '../../lib/identity/csr.ts';
import { CertManager, GrpcCertificateSigner } from '../../agent/src/certs/index.ts';
import { DEFAULT_RESOURCES, FakeApiServer, ISTIO_SECURITY_RESOURCES } from '../../cli/local/kube/fake-apiserver.ts';
import { ns, svc, waypoint } from './controller-fixtures.ts';
import { until } from './controller-harness.ts';
import { silentLogger } from '../../controller/src/log.ts';

const TD = 'cluster.local';
const AUDIENCE = 'weft-controller';

interface Lab {
  api: FakeApiServer;
  dir: string;
  kubeconfig: string;
  controllers: RunningController[];
  start(extra?: Partial<ControllerMainOptions>): Promise<RunningController>;
}

async function withLab(fn: (lab: Lab) => Promise<void>, apiOpts: ConstructorParameters<typeof FakeApiServer>[0] = {}): Promise<void> {
  const api = new FakeApiServer(apiOpts);
  await api.start();
  const dir = mkdtempSync(join(tmpdir(), 'weft-ctl-cluster-'));
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, api.kubeconfig('weft-controller'));
  const controllers: RunningController[] = [];
  let n = 0;
  const lab: Lab = {
    api, dir, kubeconfig, controllers,
    async start(extra = {}) {
      const c = await runController({
        kube: true, kubeconfig, listenAddress: '127.0.0.1', grpcPort: 0, metricsPort: 0, readyPort: 0, adminPort: 0,
        trustDomain: TD, rootNamespace: 'weft-system', instance: `controller-${n++}`, leaseRetryMs: 100, leaseDurationSeconds: 2,
        requireClientIdentity: true, logger: silentLogger, ...extra,
      });
      controllers.push(c);
      return c;
    },
  };
  try {
    await fn(lab);
  } finally {
    for (const c of controllers.reverse()) await c.stop().catch(() => {});
    await api.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function csrFor(identity: string): Promise<string> {
  return createCsr(identity, (await generateKeyPair()).privateKey);
}

const configMapRoots = (api: FakeApiServer, namespace: string): string | undefined =>
  (api.get('ConfigMap', namespace, 'weft-trust-bundle')?.['data'] as Record<string, string> | undefined)?.['root-cert.pem'];

// Istio's policies that cannot be read are not enforced: said by an alertable metric, not only a log line.
test('security.istio.io forbidden (403): the controller runs and weft_controller_source_unanswered{resource} is 1 for each Istio resource', () =>
  withLab(async (lab) => {
    lab.api.failing.set('/apis/security.istio.io/', 403);
    const c = await lab.start();
    const unanswered = async () => (await c.registry.getSingleMetric('weft_controller_source_unanswered')!.get()).values.filter((v) => v.value === 1).map((v) => v.labels.resource).sort();
    await until('the Istio resources counted as unanswered', async () => (await unanswered()).length === 3);
    assert.deepEqual(await unanswered(), ['AuthorizationPolicy.security.istio.io', 'PeerAuthentication.security.istio.io', 'RequestAuthentication.security.istio.io']);
  }, { resources: [...DEFAULT_RESOURCES, ...ISTIO_SECURITY_RESOURCES] }));

test('the agent\'s projected token (audience weft-controller) passes the controller\'s TokenReview; a token for the API server\'s audience does not (issue 17, defect 1)', async () => {
  const api = new FakeApiServer();
  await api.start();
  try {
    api.apply({ apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'weft-agent', namespace: 'weft-system' } });
    const auth = new TokenReviewAuthenticator({ kubeConfig: kubeConfigForServer(api.url) });
    const projected = api.issueToken({ namespace: 'weft-system', serviceAccount: 'weft-agent', audiences: [AUDIENCE], node: 'node-a' }).token;
    assert.deepEqual(await auth.authenticate(projected), { node: 'node-a', principal: 'system:serviceaccount:weft-system:weft-agent' });
    const reviewed = api.requests.find((r) => r.path.startsWith('/apis/authentication.k8s.io/v1/tokenreviews'));
    assert.deepEqual((reviewed?.body as { spec: { audiences: string[] } }).spec.audiences, [AUDIENCE], 'the review names the controller audience');

    // Attacker side: an API-server token (the default audience) stolen from any pod of the agent's ServiceAccount.
    const apiToken = api.issueToken({ namespace: 'weft-system', serviceAccount: 'weft-agent', audiences: [], node: 'node-a' }).token;
    await assert.rejects(auth.authenticate(apiToken), (e: Error) => e instanceof NodeAuthenticationError && /audiences .* is invalid for the target audiences \["weft-controller"\]/.test(e.message));
    // An expired projected token.
    const expired = api.issueToken({ namespace: 'weft-system', serviceAccount: 'weft-agent', audiences: [AUDIENCE], node: 'node-a', expirationSeconds: 60 }).token;
    const realNow = api.now;
    api.now = () => realNow() + 120;
    await assert.rejects(auth.authenticate(expired), (e: Error) => e instanceof NodeAuthenticationError && /has expired/.test(e.message));
  } finally {
    await api.stop();
  }
});

test('one CA per cluster: the first replica stores its root in Secret weft-ca, a second replica signs with the same root, and both publish it as the trust bundle (issue 17, defect 2)', () =>
  withLab(async (lab) => {
    const a = await lab.start();
    const secret = lab.api.get('Secret', 'weft-system', 'weft-ca');
    assert.ok(secret, 'Secret weft-system/weft-ca created');
    assert.equal(secret['type'], 'kubernetes.io/tls');
    assert.equal(configMapRoots(lab.api, 'weft-system'), a.ca!.trustBundle().join(''));

    const b = await lab.start();
    assert.deepEqual(b.ca!.trustBundle(), a.ca!.trustBundle(), 'the second replica uses the first one\'s root');
    assert.equal(b.ca!.signingCertificate(), a.ca!.signingCertificate());

    // A root rotation republishes the bundle with both roots.
    const next = await CertificateAuthority.generateRoot({ trustDomain: TD });
    a.ca!.rotateTo(next);
    await until('trust bundle carries both roots', () => configMapRoots(lab.api, 'weft-system') === a.ca!.trustBundle().join('') && a.ca!.trustBundle().length === 2);
  }));

test('a Waypoint gets the trust bundle in its namespace, and its own projected token obtains its own identity and nothing else (issue 17, defect 3)', () =>
  withLab(async (lab) => {
    const c = await lab.start();
    lab.api.apply(ns('shop', { 'weft.dev/use-waypoint': 'wp' }));
    lab.api.apply(svc('shop', 'web'));
    lab.api.apply(waypoint('shop', 'wp'));
    await until('waypoint Deployment', () => lab.api.get('Deployment', 'shop', 'wp') !== undefined);
    assert.equal(configMapRoots(lab.api, 'shop'), c.ca!.trustBundle().join(''), 'roots published where the waypoint mounts them');
    const tpl = lab.api.get('Deployment', 'shop', 'wp')!['spec'] as { template: { metadata: { annotations: Record<string, string> }; spec: { volumes: Array<{ name: string; configMap?: { name: string }; projected?: { sources: Array<{ serviceAccountToken?: { audience: string } }> } }>; containers: Array<{ args: string[]; resources: { requests: object } }> } } };
    assert.equal(tpl.template.spec.containers[0]!.args[0], 'waypoint');
    assert.ok(tpl.template.spec.containers[0]!.resources.requests);
    assert.equal(tpl.template.metadata.annotations['prometheus.io/scrape'], 'true');
    assert.equal(tpl.template.spec.volumes.find((v) => v.configMap)?.configMap?.name, 'weft-trust-bundle');
    assert.equal(tpl.template.spec.volumes.find((v) => v.projected)?.projected?.sources[0]?.serviceAccountToken?.audience, AUDIENCE);

    // The kubelet would mount this token for the waypoint's pod.
    const token = lab.api.issueToken({ namespace: 'shop', serviceAccount: 'wp', audiences: [AUDIENCE], node: 'node-a' }).token;
    const signer = new GrpcCertificateSigner({
      address: `127.0.0.1:${c.grpcPort}`, trustBundle: c.ca!.trustBundle(), serverIdentity: `spiffe://${TD}/ns/weft-system/sa/weft-controller`,
      token: () => token, trustDomain: TD, nodeName: 'node-a', useNodeCertificate: false,
    });
    const m = new CertManager({ signer, trustBundle: c.ca!.trustBundle() });
    try {
      const got = await m.get(`spiffe://${TD}/ns/shop/sa/wp`);
      assert.ok(got.certChain.length >= 1);
      // Attacker side: the waypoint's token asks for another identity in its namespace, and for a node identity.
      await assert.rejects(m.get(`spiffe://${TD}/ns/shop/sa/web`), (e: Error) => e instanceof CertificateRefusedError && /obtains only its own identity/.test(e.message));
    } finally {
      m.close();
    }
    // A token of a ServiceAccount that is no waypoint's gets nothing.
    lab.api.apply({ apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'web', namespace: 'shop' } });
    const webToken = lab.api.issueToken({ namespace: 'shop', serviceAccount: 'web', audiences: [AUDIENCE], node: 'node-a' }).token;
    const web = new GrpcCertificateSigner({ address: `127.0.0.1:${c.grpcPort}`, trustBundle: c.ca!.trustBundle(), serverIdentity: `spiffe://${TD}/ns/weft-system/sa/weft-controller`, token: () => webToken, trustDomain: TD, nodeName: 'node-a', useNodeCertificate: false });
    await assert.rejects(web.sign(`spiffe://${TD}/ns/shop/sa/web`, await csrFor(`spiffe://${TD}/ns/shop/sa/web`), 0), (e: Error) => e instanceof CaAuthenticationError && /not a Weft agent ServiceAccount .* nor a waypoint's/.test(e.message));
  }));

test('installed in another namespace, the controller names it in its identity and accepts that namespace\'s agents, not weft-system\'s (issue 17, defect 4)', () =>
  withLab(async (lab) => {
    const c = await lab.start({ rootNamespace: 'mesh', namespace: 'mesh' });
    assert.ok(lab.api.get('Secret', 'mesh', 'weft-ca'));
    assert.ok(configMapRoots(lab.api, 'mesh'));
    for (const n of ['mesh', 'weft-system']) lab.api.apply({ apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'weft-agent', namespace: n } });
    const signerFor = (saNs: string) => new GrpcCertificateSigner({
      address: `127.0.0.1:${c.grpcPort}`, trustBundle: c.ca!.trustBundle(), serverIdentity: `spiffe://${TD}/ns/mesh/sa/weft-controller`,
      token: () => lab.api.issueToken({ namespace: saNs, serviceAccount: 'weft-agent', audiences: [AUDIENCE], node: 'node-a' }).token,
      trustDomain: TD, nodeName: 'node-a', useNodeCertificate: false,
    });
    const node = `spiffe://${TD}/node/node-a`;
    assert.ok((await signerFor('mesh').sign(node, await csrFor(node), 0)).certChain.length >= 1);
    await assert.rejects(signerFor('weft-system').sign(node, await csrFor(node), 0), (e: Error) => e instanceof CaAuthenticationError && /not a Weft agent ServiceAccount \(system:serviceaccount:mesh:weft-agent\)/.test(e.message));
  }));

test('a CA Secret in Istio\'s cacerts layout, mounted as files, is what the controller signs with (issue 17, defect 5)', () =>
  withLab(async (lab) => {
    const ca = await CertificateAuthority.generateRoot({ trustDomain: TD });
    const pem = ca.exportPem();
    const caDir = join(lab.dir, 'cacerts');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(caDir);
    writeFileSync(join(caDir, 'ca-cert.pem'), pem.certPem);
    writeFileSync(join(caDir, 'ca-key.pem'), pem.keyPem);
    writeFileSync(join(caDir, 'root-cert.pem'), pem.rootsPem);
    writeFileSync(join(caDir, 'cert-chain.pem'), pem.certPem);
    const c = await lab.start({ caDir });
    assert.deepEqual(c.ca!.trustBundle(), ca.trustBundle());
    assert.equal(lab.api.get('Secret', 'weft-system', 'weft-ca'), undefined, 'a given CA is used, none generated');
  }));

test('without the GRPCRoute CRD the controller becomes ready and GRPCRoutes are simply absent (issue 17, defect 6)', () =>
  withLab(async (lab) => {
    const started = Date.now();
    const c = await lab.start();
    assert.ok(c.controller.ready);
    assert.ok(Date.now() - started < 20_000);
    lab.api.apply(ns('shop'));
    lab.api.apply({ apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'r', namespace: 'shop' }, spec: { parentRefs: [{ group: '', kind: 'Service', name: 'web' }] } });
    await until('HTTPRoutes still flow', () => c.controller.store.objects('HTTPRoute').length === 1);
  }, { resources: DEFAULT_RESOURCES.filter((r) => r.kind !== 'GRPCRoute') }));

test('a second replica waits on the Lease: only the leader writes status; when it stops the other takes over; findings become Events (issue 17, defect 9)', () =>
  withLab(async (lab) => {
    const a = await lab.start();
    await until('a leads', () => a.elector!.isLeader);
    // The liveness probe the install renders answers while the process turns.
    assert.equal((await fetch(`http://127.0.0.1:${a.readyPort}/healthz/live`)).status, 200);
    const b = await lab.start();
    await holds('b follows while a renews', () => !b.elector!.isLeader, 500);
    const lease = lab.api.get('Lease', 'weft-system', 'weft-controller-leader')!;
    assert.equal((lease['spec'] as { holderIdentity: string }).holderIdentity, a.elector!.identity);

    // A Service naming a Waypoint that does not exist: one Warning Event, by the leader.
    lab.api.apply(ns('shop'));
    lab.api.apply({ ...svc('shop', 'web'), metadata: { name: 'web', namespace: 'shop', labels: { 'weft.dev/use-waypoint': 'missing' } } });
    await until('event recorded', () => lab.api.list('Event').some((e) => e['reason'] === 'WaypointNotFound'));
    const events = lab.api.list('Event').filter((e) => e['reason'] === 'WaypointNotFound');
    assert.equal(events.length, 1, 'one Event, not one per replica');
    assert.equal((events[0]!['involvedObject'] as { kind: string; name: string }).name, 'web');
    assert.equal(events[0]!['reportingInstance'], a.elector!.identity);
    // A route on a Service without a waypoint: nothing enforces it, and an Event says so on the route.
    lab.api.apply(svc('shop', 'plain'));
    lab.api.apply({ apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'unenforced', namespace: 'shop' }, spec: { parentRefs: [{ group: '', kind: 'Service', name: 'plain' }], rules: [{ backendRefs: [{ name: 'plain', port: 80 }] }] } });
    await until('NoWaypoint event on the route', () => lab.api.list('Event').some((e) => e['reason'] === 'NoWaypoint'));
    const noWaypoint = lab.api.list('Event').find((e) => e['reason'] === 'NoWaypoint')!;
    assert.deepEqual([(noWaypoint['involvedObject'] as { kind: string; name: string }).kind, (noWaypoint['involvedObject'] as { name: string }).name, noWaypoint['type']], ['HTTPRoute', 'unenforced', 'Warning']);
    assert.match(String(noWaypoint['message']), /nothing enforces this route/);

    await a.stop();
    lab.controllers.splice(lab.controllers.indexOf(a), 1);
    await until('b takes over', () => b.elector!.isLeader);
    // The new leader writes status for objects that arrive now.
    lab.api.apply({ apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'strict', namespace: 'shop' }, spec: { mtls: { mode: 'STRICT' } } });
    await until('status written by the new leader', () => lab.api.get('PeerAuthentication', 'shop', 'strict')?.['status'] !== undefined);
  }));

// Istio reports a refused cross-namespace binding on the object (AttachmentDenied); Weft records
// it as an Event on the Namespace and the Service. A Namespace is cluster-scoped: its Events go to
// namespace `default`, as Kubernetes records events of cluster-scoped objects (a Node's too).
test('a namespace using another namespace\'s waypoint that does not allow it: AttachmentDenied Events on the Namespace (recorded in default) and on its Service, naming the field', () =>
  withLab(async (lab) => {
    const c = await lab.start();
    await until('leads', () => c.elector!.isLeader);
    lab.api.apply(ns('shop'));
    lab.api.apply(waypoint('shop', 'wp'));
    lab.api.apply(ns('web', { 'weft.dev/use-waypoint': 'wp', 'weft.dev/use-waypoint-namespace': 'shop' }));
    lab.api.apply(svc('web', 'front'));
    await until('both Events recorded', () => lab.api.list('Event').filter((e) => e['reason'] === 'AttachmentDenied').length === 2, 10_000);
    const by = (kind: string) => lab.api.list('Event').find((e) => e['reason'] === 'AttachmentDenied' && (e['involvedObject'] as { kind: string }).kind === kind)!;
    const onNs = by('Namespace');
    assert.equal((onNs['metadata'] as { namespace: string }).namespace, 'default');
    assert.deepEqual([(onNs['involvedObject'] as { name: string }).name, (onNs['involvedObject'] as { fieldPath: string }).fieldPath], ['web', 'metadata.labels["weft.dev/use-waypoint-namespace"]']);
    assert.match(String(onNs['message']), /Waypoint shop\/wp does not allow namespace web/);
    const onSvc = by('Service');
    assert.deepEqual([(onSvc['metadata'] as { namespace: string }).namespace, (onSvc['involvedObject'] as { name: string }).name], ['web', 'front']);
  }));
