// weftctl analyze: a table of bad inputs, each with the finding it must print (severity, code,
// object, field path); a clean mesh passes; hostile input is exit 2; a cluster's objects are read
// from the API (the in-process API server of the kube lab).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { analyze, formatFinding } from '../../cli/analyze.ts';
import { analyzeCommand } from '../../cli/commands/analyze.ts';
import { FakeApiServer, DEFAULT_RESOURCES, ISTIO_SECURITY_RESOURCES } from '../../cli/local/kube/fake-apiserver.ts';
import { authz, ns, pod, svc, waypoint } from './controller-fixtures.ts';
import { aliasBomb, runCommands } from './cli-harness.ts';

const dir = mkdtempSync(join(tmpdir(), 'weft-cli-analyze-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const AMBIENT = { 'weft.dev/dataplane-mode': 'ambient' };
const WITH_WAYPOINT = { ...AMBIENT, 'weft.dev/use-waypoint': 'waypoint' };
/** A clean base: namespace shop with a waypoint, Services reviews (v1, v2) and ratings. */
function shop(): object[] {
  return [
    ns('shop', WITH_WAYPOINT), waypoint('shop', 'waypoint'),
    pod('shop', 'reviews-v1', { labels: { app: 'reviews', version: 'v1' } }), pod('shop', 'reviews-v2', { labels: { app: 'reviews', version: 'v2' } }),
    svc('shop', 'reviews', { app: 'reviews' }, '10.96.1.10'), svc('shop', 'reviews-v1', { app: 'reviews', version: 'v1' }, '10.96.1.11'),
    pod('shop', 'ratings'), svc('shop', 'ratings', { app: 'ratings' }, '10.96.1.12'),
  ];
}
function route(namespace: string, name: string, parent: { name: string; namespace?: string }, backends: Array<{ name: string; namespace?: string }>, path = '/'): object {
  return {
    apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name, namespace, creationTimestamp: `2026-01-01T00:00:0${name.length % 10}Z` },
    spec: { parentRefs: [{ group: '', kind: 'Service', ...parent }], rules: [{ matches: [{ path: { type: 'PathPrefix', value: path } }], backendRefs: backends.map((b) => ({ ...b, port: 80 })) }] },
  };
}

// Each case: the objects added to (or replacing) the clean base, and the line(s) analyze must print.
const CASES: Array<{ name: string; objects: () => object[]; findings: RegExp[] }> = [
  {
    // https://istio.io/latest/docs/reference/config/security/authorization-policy/ (its DENY sample, security.istio.io/v1)
    name: 'Istio\'s security.istio.io/v1 AuthorizationPolicy is read as the controller reads it: no finding',
    objects: () => [...shop(), { apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', metadata: { name: 'httpbin', namespace: 'shop' }, spec: { action: 'DENY', rules: [{ from: [{ source: { notNamespaces: ['shop'] } }] }] } }],
    findings: [],
  },
  {
    // Two objects for Kubernetes, both enforced as Istio enforces two policies (store.ts): no refusal, no later definition.
    name: 'the same AuthorizationPolicy name in weft.dev and security.istio.io is two objects, both accepted, not a later definition',
    objects: () => [...shop(), authz('shop', 'httpbin', { action: 'DENY', rules: [{}] }), { apiVersion: 'security.istio.io/v1beta1', kind: 'AuthorizationPolicy', metadata: { name: 'httpbin', namespace: 'shop' }, spec: { rules: [{}] } }],
    findings: [],
  },
  {
    // Two objects (store.ts), two refusals: each named as the controller names it (nameIn), none merged into the other.
    name: 'the same AuthorizationPolicy name refused in weft.dev and in security.istio.io at one field is two findings, each named with its group',
    objects: () => [...shop(), authz('shop', 'bad', { action: 'DENY', rules: [{ from: [{ source: { ipBlocks: ['10.0.0.0/33'] } }] }] }),
      { apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', metadata: { name: 'bad', namespace: 'shop' }, spec: { action: 'DENY', rules: [{ from: [{ source: { ipBlocks: ['10.0.0.0/33'] } }] }] } }],
    findings: [/^Error \[Invalid\] AuthorizationPolicy shop\/bad spec\.rules\[0\]\.from\[0\]\.source\.ipBlocks\[0\] \(.*in\.yaml\): /,
      /^Error \[Invalid\] AuthorizationPolicy shop\/bad@security\.istio\.io spec\.rules\[0\]\.from\[0\]\.source\.ipBlocks\[0\] \(.*in\.yaml\): /],
  },
  {
    // A compile finding on an Istio-group object is found in its file too.
    name: 'a finding on a security.istio.io object names its file',
    objects: () => [...shop(), { ...authz('shop', 'istio-typo', { selector: { matchLabels: { app: 'nothing' } }, rules: [{}] }), apiVersion: 'security.istio.io/v1' }],
    findings: [/^Warning \[SelectsNothing\] AuthorizationPolicy shop\/istio-typo@security\.istio\.io spec\.selector \(.*in\.yaml\): /],
  },
  {
    name: 'an invalid field is named with its path (Error)',
    objects: () => [...shop(), authz('shop', 'bad-cidr', { action: 'DENY', rules: [{ from: [{ source: { ipBlocks: ['10.0.0.0/33'] } }] }] })],
    findings: [/^Error \[Invalid\] AuthorizationPolicy shop\/bad-cidr spec\.rules\[0\]\.from\[0\]\.source\.ipBlocks\[0\] \(.*in\.yaml\): /],
  },
  {
    name: 'a Service using a waypoint that does not exist fails closed',
    objects: () => [ns('web', { ...AMBIENT, 'weft.dev/use-waypoint': 'gone' }), pod('web', 'front'), svc('web', 'front', { app: 'front' }, '10.96.2.10')],
    findings: [/^Warning \[WaypointNotFound\] Namespace web metadata\.labels\["weft\.dev\/use-waypoint"\] .*Waypoint web\/gone does not exist/,
      /^Warning \[WaypointNotFound\] Service web\/front metadata\.namespace .*fails closed/],
  },
  {
    // https://istio.io/latest/docs/ambient/usage/use-waypoint/#use-a-waypoint-in-a-different-namespace (Istio: AttachmentDenied)
    name: 'a namespace using another namespace\'s waypoint that does not allow it is refused and fails closed',
    objects: () => [...shop(), ns('web', { ...AMBIENT, 'weft.dev/use-waypoint': 'waypoint', 'weft.dev/use-waypoint-namespace': 'shop' }), pod('web', 'front'), svc('web', 'front', { app: 'front' }, '10.96.2.10')],
    findings: [/^Warning \[AttachmentDenied\] Namespace web metadata\.labels\["weft\.dev\/use-waypoint-namespace"\] .*Waypoint shop\/waypoint does not allow namespace web/,
      /^Warning \[AttachmentDenied\] Service web\/front metadata\.namespace .*fails closed/],
  },
  {
    name: 'a route on a Service without waypoint is enforced by nothing',
    objects: () => [ns('plain', AMBIENT), pod('plain', 'api'), svc('plain', 'api', { app: 'api' }, '10.96.3.10'), route('plain', 'api-split', { name: 'api' }, [{ name: 'api' }])],
    findings: [/^Warning \[NoWaypoint\] HTTPRoute plain\/api-split spec\.parentRefs\[0\] .*Service plain\/api has no waypoint.*nothing enforces this route/],
  },
  {
    name: 'two routes claiming the same match conflict; the older wins',
    objects: () => [...shop(), route('shop', 'a', { name: 'reviews' }, [{ name: 'reviews-v1' }]), route('shop', 'bb', { name: 'reviews' }, [{ name: 'reviews' }])],
    findings: [/^Warning \[RouteConflict\] HTTPRoute shop\/bb spec\.rules\[0\]\.matches .*HTTPRoute shop\/a already routes the same match \(PathPrefix \/\) on Service shop\/reviews; the older route wins/],
  },
  {
    name: 'a route to a backend that does not exist (Error, 500s)',
    objects: () => [...shop(), route('shop', 'to-nowhere', { name: 'reviews' }, [{ name: 'nowhere' }])],
    findings: [/^Error \[BackendNotFound\] HTTPRoute shop\/to-nowhere spec\.rules\[0\]\.backendRefs\[0\] .*Service shop\/nowhere does not exist/],
  },
  {
    name: 'a route whose parent Service does not exist',
    objects: () => [...shop(), route('shop', 'orphan', { name: 'missing' }, [{ name: 'reviews' }])],
    findings: [/^Warning \[NoMatchingParent\] HTTPRoute shop\/orphan spec\.parentRefs\[0\] .*Service shop\/missing does not exist/],
  },
  {
    name: 'a policy whose selector selects no workload',
    objects: () => [...shop(), authz('shop', 'typo', { selector: { matchLabels: { app: 'reveiws' } }, rules: [{ from: [{ source: { namespaces: ['shop'] } }] }] })],
    findings: [/^Warning \[SelectsNothing\] AuthorizationPolicy shop\/typo spec\.selector .*selector app=reveiws matches no workload in namespace shop/],
  },
  {
    name: 'a PeerAuthentication whose selector selects no workload',
    objects: () => [...shop(), { apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'strict-db', namespace: 'shop' }, spec: { selector: { matchLabels: { app: 'db' } }, mtls: { mode: 'STRICT' } } }],
    findings: [/^Warning \[SelectsNothing\] PeerAuthentication shop\/strict-db spec\.selector /],
  },
  {
    name: 'a Deployment\'s pod template counts as a workload (no finding)',
    objects: () => [...shop(), { apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'db', namespace: 'shop' }, spec: { template: { metadata: { labels: { app: 'db' } } } } },
      { apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'strict-db', namespace: 'shop' }, spec: { selector: { matchLabels: { app: 'db' } }, mtls: { mode: 'STRICT' } } }],
    findings: [],
  },
  {
    name: 'L7 rules in a workload-selector policy fail closed at the node agents (Istio ZtunnelAccepted UnsupportedValue)',
    objects: () => [...shop(), authz('shop', 'get-only', { selector: { matchLabels: { app: 'ratings' } }, action: 'ALLOW', rules: [{ to: [{ operation: { methods: ['GET'] } }] }] })],
    findings: [/^Warning \[UnsupportedValue\] AuthorizationPolicy shop\/get-only spec\.rules\[0\] .*found: methods.*never match, which allows less than written/],
  },
  {
    name: 'a targetRefs policy on a Service without waypoint is enforced by nothing',
    objects: () => [ns('plain', AMBIENT), pod('plain', 'api'), svc('plain', 'api', { app: 'api' }, '10.96.3.10'),
      authz('plain', 'api-get', { targetRefs: [{ group: '', kind: 'Service', name: 'api' }], rules: [{ to: [{ operation: { methods: ['GET'] } }] }] })],
    findings: [/^Warning \[AncestorNotBound\] AuthorizationPolicy plain\/api-get spec\.targetRefs\[0\]\.name .*Service plain\/api is not bound to a waypoint/],
  },
  {
    name: 'the same with Istio\'s singular targetRef: the finding names that field',
    objects: () => [ns('plain', AMBIENT), pod('plain', 'api'), svc('plain', 'api', { app: 'api' }, '10.96.3.10'),
      authz('plain', 'api-get', { targetRef: { group: '', kind: 'Service', name: 'api' }, rules: [{ to: [{ operation: { methods: ['GET'] } }] }] })],
    findings: [/^Warning \[AncestorNotBound\] AuthorizationPolicy plain\/api-get spec\.targetRef\.name .*Service plain\/api is not bound to a waypoint/],
  },
  {
    name: 'a policy targeting a Service that does not exist',
    objects: () => [...shop(), authz('shop', 'ghost', { targetRefs: [{ group: '', kind: 'Service', name: 'ghost' }], rules: [{}] })],
    findings: [/^Warning \[TargetNotFound\] AuthorizationPolicy shop\/ghost spec\.targetRefs\[0\]\.name .*Service shop\/ghost does not exist/],
  },
  {
    name: 'a route in another namespace than its parent is a consumer route (Info; exit 0)',
    objects: () => [...shop(), ns('client', AMBIENT), route('client', 'my-view', { name: 'reviews', namespace: 'shop' }, [{ name: 'reviews-v1', namespace: 'shop' }])],
    findings: [/^Info \[ConsumerRoute\] HTTPRoute client\/my-view spec\.parentRefs\[0\] .*applies only to requests from namespace client to Service shop\/reviews/,
      /^Warning \[RefNotPermitted\] HTTPRoute client\/my-view spec\.rules\[0\]\.backendRefs\[0\] .*no ReferenceGrant in namespace shop allows it/],
  },
  {
    name: 'a ReferenceGrant in the backend namespace permits the cross-namespace backend',
    objects: () => [...shop(), ns('client', AMBIENT), route('client', 'my-view', { name: 'reviews', namespace: 'shop' }, [{ name: 'reviews-v1', namespace: 'shop' }]),
      { apiVersion: 'gateway.networking.k8s.io/v1beta1', kind: 'ReferenceGrant', metadata: { name: 'from-client', namespace: 'shop' }, spec: { from: [{ group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', namespace: 'client' }], to: [{ group: '', kind: 'Service' }] } }],
    findings: [/^Info \[ConsumerRoute\] HTTPRoute client\/my-view/],
  },
  {
    name: 'two TrafficPolicies on one Service conflict',
    objects: () => [...shop(),
      { apiVersion: 'weft.dev/v1alpha1', kind: 'TrafficPolicy', metadata: { name: 'a', namespace: 'shop', creationTimestamp: '2026-01-01T00:00:00Z' }, spec: { targetRef: { group: '', kind: 'Service', name: 'reviews' }, timeouts: { request: '1s' } } },
      { apiVersion: 'weft.dev/v1alpha1', kind: 'TrafficPolicy', metadata: { name: 'b', namespace: 'shop', creationTimestamp: '2026-01-02T00:00:00Z' }, spec: { targetRef: { group: '', kind: 'Service', name: 'reviews' }, timeouts: { request: '2s' } } }],
    findings: [/^Warning \[Conflicted\] TrafficPolicy shop\/b spec\.targetRef .*already has TrafficPolicy shop\/a/],
  },
  {
    name: 'an object defined twice',
    objects: () => [...shop(), waypoint('shop', 'waypoint')],
    findings: [/^Warning \[Duplicate\] Waypoint shop\/waypoint .*defined again/],
  },
];

function write(name: string, objects: object[]): string {
  const p = join(dir, name);
  writeFileSync(p, objects.map((o) => stringify(o)).join('---\n'));
  return p;
}
const run = (args: string[], stdin = '') => runCommands((io) => [analyzeCommand(io, () => Buffer.from(stdin))], ['analyze', ...args]);

test('a clean mesh has no finding and exit code 0', async () => {
  const r = await run(['-f', write('clean.yaml', [...shop(), route('shop', 'split', { name: 'reviews' }, [{ name: 'reviews-v1' }])])]);
  assert.equal(r.stdout, 'no problems found in 9 object(s) from 1 file(s)\n');
  assert.equal(r.code, 0, r.stderr);
});

CASES.forEach((c, i) => {
  test(`analyze: ${c.name}`, async () => {
    const r = await run(['-f', write(`case${i}-in.yaml`, c.objects())]);
    const lines = r.stdout.trim().split('\n').slice(0, -1);
    for (const re of c.findings) assert.ok(lines.some((l) => re.test(l)), `expected ${re}\ngot:\n${r.stdout}`);
    assert.equal(lines.length, c.findings.length, `exactly the expected findings:\n${r.stdout}`);
    assert.equal(r.code, c.findings.some((re) => !re.source.startsWith('^Info')) ? 1 : 0, r.stderr);
  });
});

test('analyze -o json gives each finding with its code, object and path', () => {
  const f = analyze([...shop(), authz('shop', 'typo', { selector: { matchLabels: { app: 'x' } }, rules: [{}] })].map((object) => ({ object, source: 'm.yaml' })));
  assert.deepEqual(f.map((x) => [x.severity, x.code, x.kind, x.namespace, x.name, x.path, x.source]), [['Warning', 'SelectsNothing', 'AuthorizationPolicy', 'shop', 'typo', 'spec.selector', 'm.yaml']]);
  assert.match(formatFinding(f[0]!), /^Warning \[SelectsNothing\] AuthorizationPolicy shop\/typo spec\.selector \(m\.yaml\): /);
});

test('analyze reads stdin and directories; hostile input is one line and exit 2', async () => {
  const ok = await run(['-f', '-'], shop().map((o) => stringify(o)).join('---\n'));
  assert.equal(ok.code, 0, ok.stdout + ok.stderr);
  const bomb = await run(['-f', '-'], aliasBomb());
  assert.equal(bomb.code, 2);
  assert.match(bomb.stderr, /^weftctl analyze: -: document 1 cannot be read: .*alias/im);
  const missing = await run(['-f', join(dir, 'nope')]);
  assert.equal(missing.code, 2);
  assert.equal(missing.stderr, `weftctl analyze: ${join(dir, 'nope')}: no such file or directory\n`);
});

test('on a cluster, analyze reads the objects from the API server (-n filters)', async () => {
  const api = new FakeApiServer({ resources: [...DEFAULT_RESOURCES, { group: 'gateway.networking.k8s.io', version: 'v1beta1', kind: 'ReferenceGrant', plural: 'referencegrants', namespaced: true }, ...ISTIO_SECURITY_RESOURCES] });
  await api.start();
  const kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, stringify({ apiVersion: 'v1', kind: 'Config', clusters: [{ name: 'lab', cluster: { server: api.url, 'insecure-skip-tls-verify': true } }], users: [{ name: 'u', user: {} }], contexts: [{ name: 'lab', context: { cluster: 'lab', user: 'u' } }], 'current-context': 'lab' }));
  try {
    for (const o of [...shop(), ns('plain', AMBIENT), pod('plain', 'api'), svc('plain', 'api', { app: 'api' }, '10.96.3.10'), authz('shop', 'typo', { selector: { matchLabels: { app: 'nothing' } }, rules: [{}] }),
      authz('plain', 'none', { selector: { matchLabels: { app: 'nothing' } }, rules: [{}] }),
      // Istio's group is read as the controller reads it.
      { ...authz('shop', 'istio-typo', { selector: { matchLabels: { app: 'nothing' } }, rules: [{}] }), apiVersion: 'security.istio.io/v1' }]) api.apply(o as never);
    const all = await run(['--kubeconfig', kubeconfig, '-A']);
    assert.equal(all.code, 1, all.stderr);
    assert.match(all.stdout, /^Warning \[SelectsNothing\] AuthorizationPolicy shop\/typo spec\.selector: /m);
    assert.match(all.stdout, /^Warning \[SelectsNothing\] AuthorizationPolicy plain\/none spec\.selector: /m);
    // An object of Istio's group is named name@security.istio.io (objects.ts nameIn).
    assert.match(all.stdout, /^Warning \[SelectsNothing\] AuthorizationPolicy shop\/istio-typo@security\.istio\.io spec\.selector: /m);
    assert.match(all.stdout, /from cluster http:\/\/127\.0\.0\.1:\d+\n$/);
    const one = await run(['--kubeconfig', kubeconfig, '-n', 'shop', '-o', 'json']);
    assert.deepEqual(JSON.parse(one.stdout).map((x: { name: string }) => x.name), ['istio-typo@security.istio.io', 'typo']);
    assert.ok(api.requests.some((r) => r.path === '/apis/weft.dev/v1alpha1/namespaces/shop/authorizationpolicies'), 'listed in the namespace only');
    // Compiled as the install's controller compiles (its Deployment's command line in the install
    // namespace, --weft-namespace): installed in mesh-root, a policy there is root-namespace-wide
    // (Istio: "the selector applies to workloads in all namespaces") and selects plain/api.
    api.apply({ apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'weft-controller', namespace: 'mesh-root' }, spec: { selector: { matchLabels: { app: 'c' } }, template: { metadata: { labels: { app: 'c' } }, spec: { containers: [{ name: 'controller', image: 'weft:test', args: ['controller', '--kube', '--root-namespace', 'mesh-root'] }] } } } } as never);
    api.apply(ns('mesh-root') as never);
    api.apply(authz('mesh-root', 'apis', { selector: { matchLabels: { app: 'api' } }, rules: [{}] }) as never);
    const rooted = await run(['--kubeconfig', kubeconfig, '-A', '--weft-namespace', 'mesh-root', '-o', 'json']);
    assert.deepEqual(JSON.parse(rooted.stdout).filter((x: { namespace: string }) => x.namespace === 'mesh-root'), []);
    // A user who may not read Istio's group: analyze runs without it (as the controller does
    // without RBAC there) and says so on stderr, where it failed whole.
    api.failing.set('/apis/security.istio.io/', 403);
    const forbidden = await run(['--kubeconfig', kubeconfig, '-n', 'shop', '-o', 'json']);
    api.failing.clear();
    assert.deepEqual(JSON.parse(forbidden.stdout).map((x: { name: string }) => x.name), ['typo'], forbidden.stderr);
    assert.match(forbidden.stderr, /^weftctl analyze: authorizationpolicies\.security\.istio\.io skipped: you may not list them \(403\)/m);
    const noCtx = await run(['--kubeconfig', kubeconfig, '--context', 'other']);
    assert.equal(noCtx.code, 2);
    assert.match(noCtx.stderr, /no context "other" in the kubeconfig \(contexts: lab\)/);
  } finally {
    await api.stop();
  }
});
