import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compile, emptyInputs } from '../../controller/src/compile.ts';
import { authz, ns, pod, svc, waypoint } from './controller-fixtures.ts';
import { isConsumerRoute, policySelectsWorkload, type Route, type RouteRule } from '../../lib/model/mesh.ts';
import type { ConfigIssue } from '../../waypoint/src/errors.ts';
import { RouteTable } from '../../waypoint/src/router.ts';
import { splitTarget } from '../../waypoint/src/normalize.ts';
import { CompiledPolicies, appliesToService, evaluate } from '../../lib/policy/authz.ts';
import { waypointContainerArgs } from '../../controller/src/waypoints-kube.ts';
import { AgentState, validateAgentConfig } from '../../agent/src/state.ts';
import { CompileCache } from '../../controller/src/compile.ts';
import { exportWaypoint, exportedPodsOf } from '../../lib/model/federation.ts';
import { compileIncrementally } from '../../controller/src/compile-incremental.ts';

test('enrols pods of an ambient namespace and leaves out pods labelled none', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), ns('plain'));
  i.pods.push(pod('shop', 'web'), pod('shop', 'legacy', { labels: { app: 'legacy', 'weft.dev/dataplane-mode': 'none' } }), pod('plain', 'db'));
  const { model } = compile(i);
  const byName = new Map([...model.workloads.values()].map((w) => [w.name, w]));
  assert.equal(byName.get('web')?.enrolled, true);
  assert.equal(byName.get('web')?.spiffeId, 'spiffe://cluster.local/ns/shop/sa/web');
  assert.equal(byName.get('legacy')?.enrolled, false);
  assert.equal(byName.get('db')?.enrolled, false);
});

test('a pod label ambient enrols it even when its namespace is not', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('plain'));
  i.pods.push(pod('plain', 'one', { labels: { app: 'one', 'weft.dev/dataplane-mode': 'ambient' } }));
  assert.equal([...compile(i).model.workloads.values()][0]?.enrolled, true);
});

test('builds service endpoints from pod selectors with named target ports and node addresses', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  i.pods.push(pod('shop', 'web', { node: 'node-b', ip: '10.1.0.7' }));
  i.services.push(svc('shop', 'web'));
  const s = compile(i).model.services.get('shop/web')!;
  assert.equal(s.hostname, 'web.shop.svc.cluster.local');
  assert.deepEqual(s.vips, ['10.96.0.10']);
  assert.equal(s.ports[0]?.appProtocol, 'http');
  assert.deepEqual(s.endpoints, [{
    workloadUid: 'uid-shop-web', ip: '10.1.0.7', node: 'node-b', nodeIp: '192.168.0.2', port: 8080, ports: { '80': 8080 },
    enrolled: true, spiffeId: 'spiffe://cluster.local/ns/shop/sa/web', ready: true,
    workload: { workloadName: 'web', namespace: 'shop', canonicalService: 'web', canonicalRevision: 'latest', cluster: 'Kubernetes' },
  }]);
});

test('reads a port\'s appProtocol as Istio and the Gateway API do: kubernetes.io/h2c is HTTP/2, kubernetes.io/ws (WebSocket, KEP-3726) is HTTP/1.1, unknown is TCP', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  const s = svc('shop', 'web');
  s.spec!.ports = [
    { name: 'a', port: 80, appProtocol: 'kubernetes.io/h2c' }, { name: 'b', port: 81, appProtocol: 'kubernetes.io/ws' },
    { name: 'c', port: 82, appProtocol: 'kubernetes.io/wss' }, { name: 'grpc-web', port: 83 }, { name: 'd', port: 84, appProtocol: 'mysql' },
  ];
  i.services.push(s);
  assert.deepEqual(compile(i).model.services.get('shop/web')!.ports.map((p) => [p.port, p.appProtocol]), [[80, 'http2'], [81, 'http'], [82, 'tcp'], [83, 'grpc'], [84, 'tcp']]);
});

test('endpoints that map a service\'s ports the same way share one ports record; one that differs keeps its own', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  i.pods.push(pod('shop', 'a', { ip: '10.1.0.1', labels: { app: 'web' } }), pod('shop', 'b', { ip: '10.1.0.2', labels: { app: 'web' } }));
  // Its named target port is another number.
  const odd = pod('shop', 'c', { ip: '10.1.0.3', labels: { app: 'web' } });
  odd.spec.containers![0]!.ports![0]!.containerPort = 9000;
  i.pods.push(odd);
  i.services.push(svc('shop', 'web'));
  const eps = compile(i).model.services.get('shop/web')!.endpoints;
  assert.deepEqual(eps.map((e) => [e.ip, e.ports]), [['10.1.0.1', { '80': 8080 }], ['10.1.0.2', { '80': 8080 }], ['10.1.0.3', { '80': 9000 }]]);
  assert.equal(eps[0]!.ports, eps[1]!.ports);
  assert.notEqual(eps[0]!.ports, eps[2]!.ports);
});

test('prefers EndpointSlices over selectors when the service has any', () => {
  const i = emptyInputs();
  i.pods.push(pod('shop', 'web', { ip: '10.1.0.8' }));
  i.services.push(svc('shop', 'web'));
  i.endpointSlices.push({
    apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', addressType: 'IPv4',
    metadata: { name: 'web-abc', namespace: 'shop', labels: { 'kubernetes.io/service-name': 'web' } },
    endpoints: [{ addresses: ['10.1.0.8'], nodeName: 'node-a', conditions: { ready: true }, targetRef: { kind: 'Pod', uid: 'uid-shop-web' } }, { addresses: ['10.9.9.9'], conditions: { ready: false } }],
    ports: [{ name: 'http', port: 9090 }],
  });
  const eps = compile(i).model.services.get('shop/web')!.endpoints;
  assert.deepEqual(eps.map((e) => [e.ip, e.workloadUid, e.port, e.ready]), [['10.1.0.8', 'uid-shop-web', 9090, true], ['10.9.9.9', '', 9090, false]]);
});

test('resolves mTLS mode: workload selector over namespace over mesh root', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('a', { 'weft.dev/dataplane-mode': 'ambient' }));
  i.pods.push(pod('a', 'x'), pod('a', 'y'));
  i.peerAuthentications.push(
    { apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'mesh', namespace: 'weft-system' }, spec: { mtls: { mode: 'STRICT' } } },
    { apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'y', namespace: 'a' }, spec: { selector: { matchLabels: { app: 'y' } }, mtls: { mode: 'PERMISSIVE' }, portLevelMtls: { '9000': { mode: 'STRICT' } } } },
  );
  const w = new Map([...compile(i).model.workloads.values()].map((x) => [x.name, x]));
  assert.equal(w.get('x')?.mode, 'STRICT');
  assert.equal(w.get('y')?.mode, 'PERMISSIVE');
  assert.deepEqual(w.get('y')?.portModes, { '9000': 'STRICT' });
});

test('classifies policy rules as L4 or L7 and normalises ports and principals', () => {
  const i = emptyInputs();
  i.authorizationPolicies.push(authz('a', 'p', {
    selector: { matchLabels: { app: 'x' } },
    rules: [
      { from: [{ source: { principals: ['spiffe://cluster.local/ns/a/sa/b'] } }], to: [{ operation: { ports: ['8080'] } }] },
      { to: [{ operation: { methods: ['GET'] } }] },
    ],
  }));
  const p = compile(i).model.policies.get('a/p')!;
  assert.equal(p.scope, 'workload');
  assert.equal(p.action, 'ALLOW');
  assert.equal(p.layer, 'L7');
  assert.deepEqual(p.rules.map((r) => r.layer), ['L4', 'L7']);
  assert.deepEqual(p.rules[0]?.from, [{ principals: ['cluster.local/ns/a/sa/b'] }]);
  assert.deepEqual(p.rules[0]?.to, [{ ports: [8080] }]);
});

test('compiles GRPCRoute methods to path matches and reports missing backends', () => {
  const i = emptyInputs();
  i.services.push(svc('a', 'greeter'));
  i.grpcRoutes.push({
    apiVersion: 'gateway.networking.k8s.io/v1', kind: 'GRPCRoute', metadata: { name: 'g', namespace: 'a' },
    spec: { parentRefs: [{ group: '', kind: 'Service', name: 'greeter' }], rules: [{ matches: [{ method: { service: 'hello.Greeter', method: 'SayHello' } }], backendRefs: [{ name: 'greeter-v2', port: 80 }] }] },
  });
  const { model, findings } = compile(i);
  const r = [...model.routes.values()][0]!;
  assert.equal(r.service, 'a/greeter');
  assert.deepEqual(r.rules[0]?.matches[0]?.path, { type: 'Exact', value: '/hello.Greeter/SayHello' });
  assert.deepEqual(findings.map((f) => [f.path, f.reason]), [['spec.rules[0].backendRefs[0]', 'BackendNotFound'], ['spec.parentRefs[0]', 'NoWaypoint']]);
});

/**
 * GRPCRoutes `routes` (name, rules, creation time) on Service a/greeter, compiled, sent as the
 * config stream sends a Route (JSON), and built into the waypoint's RouteTable.
 */
function grpcTable(routes: Array<[string, unknown[], string?]>): { table: RouteTable; issues: ConfigIssue[]; pick: (path: string, headers?: Record<string, string>) => string | undefined } {
  const i = emptyInputs();
  i.services.push(svc('a', 'greeter'));
  for (const [name, rules, ts] of routes) {
    i.grpcRoutes.push({
      apiVersion: 'gateway.networking.k8s.io/v1', kind: 'GRPCRoute', metadata: { name, namespace: 'a', creationTimestamp: ts ?? '2026-01-01T00:00:00Z' },
      spec: { parentRefs: [{ group: '', kind: 'Service', name: 'greeter' }], rules: rules as never },
    });
  }
  const wire = JSON.parse(JSON.stringify([...compile(i).model.routes.values()])) as Route[];
  const issues: ConfigIssue[] = [];
  const table = new RouteTable(wire, new Set(['a/greeter']), issues);
  const pick = (path: string, headers: Record<string, string> = {}) => {
    const d = table.match('a/greeter', 80, { method: 'POST', ...splitTarget(path), headers: { 'content-type': 'application/grpc', ...headers } });
    return d && `${d.route.name}/${d.rule.name ?? d.ruleIndex}`;
  };
  return { table, issues, pick };
}

// grpcroute_types.go (v1.6.1) GRPCRouteRule.Matches: "Precedence MUST be given to the rule with the
// largest number of: ... Characters in a matching service. Characters in a matching method. Header
// matches." then the oldest Route, then {namespace}/{name}, then rule order. The compiled path's type
// (a method-only match is a regular expression, a service-only one a prefix) must not decide.
test('GRPCRoute precedence (grpcroute_types.go GRPCRouteRule.Matches): service characters, then method characters, then header matches, then the older route', () => {
  const to = [{ name: 'greeter', port: 80 }];
  const { issues, pick } = grpcTable([
    ['new', [{ name: 'same-as-old', matches: [{ method: { service: 'hello.Greeter', method: 'Other' } }], backendRefs: to }], '2026-02-01T00:00:00Z'],
    ['g', [
      { name: 'by-method', matches: [{ method: { method: 'SayHello' } }], backendRefs: to },
      { name: 'by-service', matches: [{ method: { service: 'hello.Greeter' } }], backendRefs: to },
      { name: 'by-service-header', matches: [{ method: { service: 'hello.Greeter' }, headers: [{ name: 'x-canary', value: '1' }] }], backendRefs: to },
      { name: 'both', matches: [{ method: { service: 'hello.Greeter', method: 'SayHello' } }], backendRefs: to },
      { name: 'by-regex', matches: [{ method: { type: 'RegularExpression', service: 'h.*', method: 'Say.*' } }], backendRefs: to },
    ]],
    ['old', [{ name: 'same-as-new', matches: [{ method: { service: 'hello.Greeter', method: 'Other' } }], backendRefs: to }], '2025-01-01T00:00:00Z'],
  ]);
  assert.deepEqual(issues, []);
  assert.equal(pick('/hello.Greeter/SayHello'), 'g/both');
  assert.equal(pick('/hello.Greeter/Hi', { 'x-canary': '1' }), 'g/by-service-header');
  // 13 characters of service beat 0 (the method-only match, compiled to a regular expression path).
  assert.equal(pick('/hello.Greeter/Hi'), 'g/by-service');
  assert.equal(pick('/x.Greeter/SayHello'), 'g/by-method');
  // A regular expression counts the characters written: `h.*` (3) beats a left-out service (0).
  assert.equal(pick('/hi.Greeter/SayHello'), 'g/by-regex');
  assert.equal(pick('/hello.Greeter/Other'), 'old/same-as-new');
});

// grpcroute_types.go GRPCMethodMatch RegularExpression: "Matches if the method or service matches
// the given regular expression"; in RE2 `Get|List` is one alternation of the method, not of the path.
test('GRPCRoute RegularExpression service and method with alternations match each alternative and nothing else (grpcroute_types.go GRPCMethodMatch)', () => {
  const { issues, pick } = grpcTable([['g', [
    { name: 'methods', matches: [{ method: { type: 'RegularExpression', service: 'hello\\.Greeter', method: 'Get|List' } }], backendRefs: [{ name: 'greeter', port: 80 }] },
    { name: 'services', matches: [{ method: { type: 'RegularExpression', service: 'a\\.One|a\\.Two' } }], backendRefs: [{ name: 'greeter', port: 80 }] },
  ]]]);
  assert.deepEqual(issues, []);
  assert.equal(pick('/hello.Greeter/Get'), 'g/methods');
  assert.equal(pick('/hello.Greeter/List'), 'g/methods');
  assert.equal(pick('/hello.Greeter/Put'), undefined);
  assert.equal(pick('/other.Svc/List'), undefined);
  assert.equal(pick('/a.One/M'), 'g/services');
  assert.equal(pick('/a.Two/M'), 'g/services');
  assert.equal(pick('/a.Three/M'), undefined);
});

// GEP-1294 (v1.6.1, "Route types"): "If multiple routes with different types both bind to the same
// Service and Port pair, only a single route type should be applied. The rejected routes should be
// ignored and have the RouteConditionAccepted status set to the (new) reason RouteReasonConflicted",
// GRPCRoute first; grpcroute_types.go GRPCRouteRule.Matches: "Merging MUST not be done between
// GRPCRoutes and HTTPRoutes."
test('an HTTPRoute and a GRPCRoute on one Service port: the GRPCRoute applies, the HTTPRoute is Accepted False Conflicted (GEP-1294 route types)', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('a'), ns('client'));
  i.services.push(svc('a', 'greeter'), svc('a', 'backend', { app: 'backend' }, '10.96.0.11'));
  const twoPorts = svc('a', 'multi', { app: 'multi' }, '10.96.0.12');
  twoPorts.spec!.ports = [{ name: 'grpc', port: 80, targetPort: 'http' }, { name: 'web', port: 8080, targetPort: 'http' }];
  i.services.push(twoPorts);
  const parent = (name: string, extra: Record<string, unknown> = {}) => [{ group: '', kind: 'Service', name, ...extra }];
  const http = (name: string, parentRefs: unknown[], namespace = 'a') => ({
    apiVersion: 'gateway.networking.k8s.io/v1' as const, kind: 'HTTPRoute' as const, metadata: { name, namespace, creationTimestamp: '2025-01-01T00:00:00Z' },
    spec: { parentRefs: parentRefs as never, rules: [{ matches: [{ path: { type: 'Exact' as const, value: '/hello.Greeter/SayHello' } }], backendRefs: [{ name: 'backend', namespace: 'a', port: 80 }] }] },
  });
  const grpc = (name: string, parentRefs: unknown[]) => ({
    apiVersion: 'gateway.networking.k8s.io/v1' as const, kind: 'GRPCRoute' as const, metadata: { name, namespace: 'a', creationTimestamp: '2026-01-01T00:00:00Z' },
    spec: { parentRefs: parentRefs as never, rules: [{ matches: [{ method: { service: 'hello.Greeter' } }], backendRefs: [{ name: 'greeter', port: 80 }] }] },
  });
  i.httpRoutes.push(
    http('h', parent('greeter')),
    // Another port of a Service whose port 80 has a GRPCRoute: applied; the same port: Conflicted.
    http('h-web', parent('multi', { port: 8080 })), http('h-grpc', parent('multi', { sectionName: 'grpc' })),
    // Every port of it, port 80 included: Conflicted.
    http('h-all', parent('multi')),
    // A consumer route in another namespace is never merged with the Service's producer routes.
    http('consumer', parent('greeter', { namespace: 'a' }), 'client'),
    // A GRPCRoute that does not attach (no port 9999) costs only itself.
    http('h-backend', parent('backend')),
  );
  i.grpcRoutes.push(grpc('g', parent('greeter')), grpc('g-multi', parent('multi', { port: 80 })), grpc('g-nowhere', parent('backend', { port: 9999 })));
  const r = compile(i);
  const accepted = (key: string) => r.routeParents.get(key)![0]!.conditions[0]!;
  assert.deepEqual([...r.model.routes.keys()].sort(), [
    'a/g-multi/GRPCRoute/a/multi', 'a/g/GRPCRoute/a/greeter', 'a/h-backend/HTTPRoute/a/backend', 'a/h-web/HTTPRoute/a/multi', 'client/consumer/HTTPRoute/a/greeter',
  ]);
  for (const name of ['h', 'h-grpc', 'h-all']) {
    const c = accepted(`HTTPRoute/a/${name}`);
    assert.deepEqual([c.status, c.reason], [false, 'Conflicted'], name);
    assert.ok(r.findings.some((f) => f.kind === 'HTTPRoute' && f.name === name && f.reason === 'Conflicted' && f.path === 'spec.parentRefs[0]'), name);
  }
  assert.match(accepted('HTTPRoute/a/h').message, /GRPCRoute a\/g is attached to Service a\/greeter/);
  assert.match(accepted('HTTPRoute/a/h-all').message, /port 80 of Service a\/multi.*other ports/);
  for (const key of ['HTTPRoute/a/h-web', 'HTTPRoute/client/consumer', 'HTTPRoute/a/h-backend']) assert.notEqual(accepted(key).reason, 'Conflicted', key);
  assert.equal(accepted('GRPCRoute/a/g-nowhere').reason, 'NoMatchingParent');

  // At the waypoint a gRPC call the HTTPRoute would have matched goes by the GRPCRoute.
  const table = new RouteTable([...r.model.routes.values()].filter((x) => !isConsumerRoute(x)), new Set(['a/greeter', 'a/backend', 'a/multi']), []);
  const d = table.match('a/greeter', 80, { method: 'POST', ...splitTarget('/hello.Greeter/SayHello'), headers: { 'content-type': 'application/grpc' } });
  assert.deepEqual([d?.route.kind, d?.route.name], ['GRPCRoute', 'g']);
});

/** The reconciler's Deployment for Waypoint a/wp is named wp and labelled app.kubernetes.io/name=wp. */
const WP_META = { workloadName: 'wp', namespace: 'a', canonicalService: 'wp', canonicalRevision: 'latest', cluster: 'Kubernetes' };

test('uses the namespace waypoint for services unless the service names its own', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('a', { 'weft.dev/use-waypoint': 'wp' }));
  const own = svc('a', 'own', { app: 'own' }, '10.96.0.11');
  own.metadata.labels = { 'weft.dev/use-waypoint': 'special' };
  i.services.push(svc('a', 'plain'), own);
  i.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'a' }, spec: {}, status: { addresses: [{ value: '10.2.0.1' }], conditions: [{ type: 'Ready', status: 'True', reason: 'Running', message: '' }] } });
  const { model, findings } = compile(i);
  assert.deepEqual(model.services.get('a/plain')?.waypoint, { name: 'wp', namespace: 'a' });
  assert.deepEqual(model.services.get('a/own')?.waypoint, { name: 'special', namespace: 'a' });
  assert.deepEqual(model.waypoints.get('a/wp'), { name: 'wp', namespace: 'a', address: '10.2.0.1', port: 15008, spiffeId: 'spiffe://cluster.local/ns/a/sa/wp', ready: true, workload: WP_META });
  assert.equal(findings[0]?.reason, 'WaypointNotFound');
});

// What one tenant can make everyone pay: every full compile (any change but a pod's or an
// EndpointSlice's) compiled each AuthorizationPolicy again, and the config server serialized it
// again as a new object; a tenant's three policies of 20,000 rules (each within etcd's 1.5 MiB)
// added about 0.5 s to every other tenant's changes. An unchanged policy is now compiled once.
test('with a compile cache, an unchanged AuthorizationPolicy keeps its compiled object across compiles (another tenant\'s change does not compile or serialize it again); a change of it or of its targets makes a new one', () => {
  const cache = new CompileCache();
  const i = emptyInputs();
  i.namespaces.push(ns('big', { 'weft.dev/dataplane-mode': 'ambient' }), ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'wp' }));
  i.pods.push(pod('shop', 'reviews'));
  i.services.push(svc('shop', 'reviews'));
  const hog = authz('big', 'hog', { action: 'DENY', rules: Array.from({ length: 20_000 }, (_, j) => ({ from: [{ source: { principals: [`cluster.local/ns/x/sa/s${j}`] } }] })) });
  i.waypoints.push(waypoint('shop', 'wp'));
  // A whole waypoint: its targets are the Services that use it.
  const targeted = authz('shop', 'targeted', { targetRefs: [{ group: 'weft.dev', kind: 'Waypoint', name: 'wp' }], action: 'DENY', rules: [{ to: [{ operation: { paths: ['/admin'] } }] }] });
  i.authorizationPolicies.push(hog, targeted);
  const first = compile(i, { cache }).model;
  // Another tenant's change: a full compile.
  i.authorizationPolicies.push(authz('shop', 'other', { action: 'ALLOW', rules: [{}] }));
  const second = compile(i, { cache }).model;
  assert.equal(second.policies.get('big/hog'), first.policies.get('big/hog'), 'the unchanged policy is the same object');
  assert.equal(second.policies.get('shop/targeted'), first.policies.get('shop/targeted'));
  assert.deepEqual(second.policies.get('shop/targeted')!.targetServices, ['shop/reviews']);
  // Its targets change (the Service that uses the waypoint goes): a new object, the target gone.
  i.services = [];
  const third = compile(i, { cache }).model;
  assert.notEqual(third.policies.get('shop/targeted'), second.policies.get('shop/targeted'));
  assert.deepEqual(third.policies.get('shop/targeted')!.targetServices, []);
  // The policy itself changes: compiled anew.
  const changed = authz('big', 'hog', { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['shop'] } }] }] });
  i.authorizationPolicies[0] = changed;
  const fourth = compile(i, { cache }).model;
  assert.deepEqual(fourth.policies.get('big/hog')!.rules.map((r) => r.from), [[{ namespaces: ['shop'] }]]);
});

// The attack: a tenant's large routes (200 consumer routes of 270 KB, 54 MB in etcd) were compiled
// anew at every full compile, whoever's change caused it, and the config server serialized every
// new route object again: 1 s more for every other tenant's change. As for policies above.
test('with a compile cache, an unchanged HTTPRoute keeps its compiled object across compiles (another tenant\'s change does not compile or serialize it again); a change of it, of a grant it needs or of its parent makes a new one', () => {
  const cache = new CompileCache();
  const i = emptyInputs();
  i.namespaces.push(ns('evil'), ns('web'), ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'wp' }));
  i.pods.push(pod('shop', 'reviews'));
  i.services.push(svc('shop', 'reviews'), svc('web', 'cache', { app: 'cache' }, '10.96.0.30'));
  i.waypoints.push(waypoint('shop', 'wp'));
  const matches = Array.from({ length: 64 }, (_, j) => ({ path: { type: 'PathPrefix' as const, value: `/p${j}` }, headers: [{ name: 'X-Team', value: 'a' }] }));
  const big = {
    apiVersion: 'gateway.networking.k8s.io/v1' as const, kind: 'HTTPRoute' as const, metadata: { name: 'big', namespace: 'evil' },
    spec: { parentRefs: [{ group: '', kind: 'Service', name: 'reviews', namespace: 'shop' }], rules: [{ matches, backendRefs: [{ name: 'cache', namespace: 'web', port: 80 }, { name: 'reviews', namespace: 'shop', port: 80 }] }] },
  };
  i.httpRoutes.push(big);
  const key = 'evil/big/HTTPRoute/shop/reviews';
  const first = compile(i, { cache });
  assert.match(first.model.routes.get(key)!.rules[0]!.backends[0]!.refused ?? '', /no ReferenceGrant in namespace web/);
  // Another tenant's change: a full compile; the route is the same object, its findings still said.
  i.authorizationPolicies.push(authz('shop', 'other', { action: 'ALLOW', rules: [{}] }));
  const second = compile(i, { cache });
  assert.equal(second.model.routes.get(key), first.model.routes.get(key), 'the unchanged route is the same object');
  assert.deepEqual(second.findings.filter((f) => f.name === 'big').map((f) => `${f.path} ${f.reason}`), ['spec.rules[0].backendRefs[0] RefNotPermitted']);
  assert.deepEqual(second.routeParents.get('HTTPRoute/evil/big'), first.routeParents.get('HTTPRoute/evil/big'));
  // web grants it: a new object, the backend no longer refused.
  i.referenceGrants.push({ apiVersion: 'gateway.networking.k8s.io/v1beta1', kind: 'ReferenceGrant', metadata: { name: 'g', namespace: 'web' }, spec: { from: [{ group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', namespace: 'evil' }], to: [{ group: '', kind: 'Service' }] } });
  const third = compile(i, { cache });
  assert.notEqual(third.model.routes.get(key), second.model.routes.get(key));
  assert.equal(third.model.routes.get(key)!.rules[0]!.backends[0]!.refused, undefined);
  assert.equal(third.model.routes.get(key)!.rules[0]!.matches, second.model.routes.get(key)!.rules[0]!.matches, 'its matches, which only its spec decides, are not built again');
  // The route itself changes: compiled anew.
  i.httpRoutes[0] = { ...big, spec: { ...big.spec, rules: [{ matches: matches.slice(0, 1), backendRefs: [{ name: 'reviews', namespace: 'shop', port: 80 }] }] } };
  const fourth = compile(i, { cache });
  assert.equal(fourth.model.routes.get(key)!.rules[0]!.matches.length, 1);
  // Same results as a compile without a cache, throughout.
  assert.deepEqual(JSON.parse(JSON.stringify([...fourth.model.routes])), JSON.parse(JSON.stringify([...compile(i).model.routes])));
});

test('with a compile cache, unchanged workloads keep their object identity and changed ones do not', async () => {
  const { CompileCache } = await import('../../controller/src/compile.ts');
  const cache = new CompileCache();
  const i = emptyInputs();
  i.namespaces.push(ns('a', { 'weft.dev/dataplane-mode': 'ambient' }));
  const x = pod('a', 'x');
  const y = pod('a', 'y');
  i.pods.push(x, y);
  i.services.push(svc('a', 'x'));
  const first = compile(i, { cache }).model;
  const second = compile(i, { cache }).model;
  assert.equal(second.workloads.get('uid-a-x'), first.workloads.get('uid-a-x'));
  assert.equal(second.workloads.get('uid-a-y'), first.workloads.get('uid-a-y'));
  assert.deepEqual(second.workloads.get('uid-a-x')!.services, ['a/x']);

  // y joins service x: a new object for y, x untouched.
  i.services[0] = svc('a', 'x', { tier: 'web' });
  x.metadata.labels = { app: 'x', tier: 'web' };
  const x2 = structuredClone(x);
  const y2 = structuredClone(y);
  y2.metadata.labels = { app: 'y', tier: 'web' };
  i.pods = [x2, y2];
  const third = compile(i, { cache }).model;
  assert.notEqual(third.workloads.get('uid-a-y'), second.workloads.get('uid-a-y'));
  assert.deepEqual(third.workloads.get('uid-a-y')!.services, ['a/x']);
  // Namespace label change invalidates every workload of the namespace.
  i.namespaces[0] = ns('a');
  const fourth = compile(i, { cache }).model;
  assert.equal(fourth.workloads.get('uid-a-x')!.enrolled, false);
  assert.notEqual(fourth.workloads.get('uid-a-x'), third.workloads.get('uid-a-x'));
});

test('without a reconciler, a running pod labelled weft.dev/waypoint makes its Waypoint ready at the pod address', () => {
  const i = emptyInputs();
  i.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'a' }, spec: {} });
  let { model } = compile(i);
  assert.deepEqual([model.waypoints.get('a/wp')!.ready, model.waypoints.get('a/wp')!.reason], [false, 'NotReconciled']);
  i.pods.push(pod('a', 'wp-0', { ip: '10.4.0.2', labels: { 'weft.dev/waypoint': 'wp', 'weft.dev/dataplane-mode': 'none' } }));
  ({ model } = compile(i));
  assert.equal(model.waypoints.get('a/wp')!.ready, true);
  assert.equal(model.waypoints.get('a/wp')!.address, '10.4.0.2');
});

test('without a reconciler, two running replicas of a waypoint give it both addresses, sorted, and one that stops running drops out', () => {
  const i = emptyInputs();
  i.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'a' }, spec: {} });
  const labels = { 'weft.dev/waypoint': 'wp', 'weft.dev/dataplane-mode': 'none' };
  i.pods.push(pod('a', 'wp-0', { ip: '10.4.0.7', labels }), pod('a', 'wp-1', { ip: '10.3.0.2', labels }));
  let { model } = compile(i);
  assert.deepEqual(model.waypoints.get('a/wp'), { name: 'wp', namespace: 'a', port: 15008, spiffeId: 'spiffe://cluster.local/ns/a/sa/wp', ready: true, address: '10.3.0.2', addresses: ['10.3.0.2', '10.4.0.7'], workload: WP_META });
  i.pods[1]!.status!.phase = 'Pending';
  ({ model } = compile(i));
  assert.equal(model.waypoints.get('a/wp')!.address, '10.4.0.7');
  assert.equal(model.waypoints.get('a/wp')!.addresses, undefined, 'one replica: address alone, as before');
});

test('with a reconciler (Kubernetes), a ready waypoint is dialled at its running pods, not its Service\'s cluster IP: kube-proxy would hide the caller\'s node, and its tunnels come from the pods (issue 15, item 7)', () => {
  const i = emptyInputs();
  i.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'a' }, spec: {} });
  const waypointRuntime = new Map([['a/wp', { address: '10.96.0.9', ready: true }]]);
  // No pod seen yet: the cluster IP, as before.
  assert.equal(compile(i, { waypointRuntime }).model.waypoints.get('a/wp')!.address, '10.96.0.9');
  const labels = { 'weft.dev/waypoint': 'wp', 'weft.dev/dataplane-mode': 'none' };
  i.pods.push(pod('a', 'wp-0', { ip: '10.4.0.7', labels }), pod('a', 'wp-1', { ip: '10.3.0.2', labels }));
  const wp = compile(i, { waypointRuntime }).model.waypoints.get('a/wp')!;
  assert.deepEqual([wp.ready, wp.address, wp.addresses], [true, '10.3.0.2', ['10.3.0.2', '10.4.0.7']]);
  // The reconciler decides readiness: a Deployment without ready replicas is not made ready by pods.
  const down = compile(i, { waypointRuntime: new Map([['a/wp', { address: '10.96.0.9', ready: false, reason: 'NoReadyReplicas' }]]) }).model.waypoints.get('a/wp')!;
  assert.deepEqual([down.ready, down.reason], [false, 'NoReadyReplicas']);
  // A pod of that label in another namespace is not this waypoint's.
  const other = emptyInputs();
  other.waypoints.push(i.waypoints[0]!);
  other.pods.push(pod('b', 'wp-0', { ip: '10.5.0.1', labels }));
  assert.equal(compile(other, { waypointRuntime }).model.waypoints.get('a/wp')!.address, '10.96.0.9');
});

test('two TrafficPolicies for one Service: the oldest applies, the other is Conflicted', () => {
  const i = emptyInputs();
  i.services.push(svc('a', 'web'));
  const tp = (name: string, created: string, request: string) => ({
    apiVersion: 'weft.dev/v1alpha1' as const, kind: 'TrafficPolicy' as const,
    metadata: { name, namespace: 'a', creationTimestamp: created },
    spec: { targetRef: { kind: 'Service' as const, name: 'web' }, timeouts: { request } },
  });
  i.trafficPolicies.push(tp('newer', '2026-02-01T00:00:00Z', '5s'), tp('older', '2026-01-01T00:00:00Z', '1s'));
  const { model, findings } = compile(i);
  assert.deepEqual([...model.trafficPolicies.values()].map((t) => [t.name, t.timeouts.requestMs]), [['older', 1000]]);
  assert.deepEqual(findings.map((f) => [f.name, f.reason, f.path]), [['newer', 'Conflicted', 'spec.targetRef']]);
});

test('an AuthorizationPolicy or PeerAuthentication without a spec compiles (allow-nothing; inherit the mode) instead of failing the whole compile', () => {
  const inputs = emptyInputs();
  inputs.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  inputs.pods.push(pod('shop', 'web'));
  inputs.authorizationPolicies.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'nothing', namespace: 'shop' } });
  inputs.peerAuthentications.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'empty', namespace: 'shop' } });
  const { model } = compile(inputs);
  const p = model.policies.get('shop/nothing')!;
  assert.equal(p.action, 'ALLOW');
  assert.equal(p.scope, 'namespace');
  assert.deepEqual(p.rules, []);
  assert.ok(model.peerAuthentications.has('shop/empty'));
});

// Istio AuthorizationPolicy reference: "If the policy is in the root namespace, the selector applies
// to workloads in all namespaces" (with no selector: every workload).
test('a root-namespace policy with a selector applies to matching workloads of every namespace', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('weft-system'), ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  i.pods.push(pod('shop', 'db', { labels: { app: 'db' } }), pod('shop', 'web', { labels: { app: 'web' } }));
  i.authorizationPolicies.push(authz('weft-system', 'no-db', { selector: { matchLabels: { app: 'db' } }, action: 'DENY', rules: [{}] }));
  const { model } = compile(i);
  const p = model.policies.get('weft-system/no-db')!;
  assert.equal(p.scope, 'mesh');
  const byName = new Map([...model.workloads.values()].map((w) => [w.name, w]));
  assert.equal(policySelectsWorkload(p, byName.get('db')!), true);
  assert.equal(policySelectsWorkload(p, byName.get('web')!), false);
  assert.equal(appliesToService(p, 'shop/db'), false, 'a selector policy is the agents\', not the waypoint\'s');
});

test('AUDIT and remoteIpBlocks compile; remoteIpBlocks make a rule L7', () => {
  const i = emptyInputs();
  i.authorizationPolicies.push(authz('shop', 'audit', { action: 'AUDIT', rules: [{ from: [{ source: { remoteIpBlocks: ['192.0.2.0/24'] } }] }] }));
  const p = compile(i).model.policies.get('shop/audit')!;
  assert.equal(p.action, 'AUDIT');
  assert.deepEqual(p.rules[0]!.from, [{ remoteIpBlocks: ['192.0.2.0/24'] }]);
  assert.equal(p.layer, 'L7');
});

// GEP-1294 (GAMMA): a route in the parent Service's namespace is a producer route; one in another
// namespace is a consumer route. Gateway API: a backendRef into another namespace needs a
// ReferenceGrant there (ResolvedRefs=False, RefNotPermitted otherwise).
test('consumer and producer routes, and ReferenceGrant for cross-namespace backendRefs', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/use-waypoint': 'wp' }), ns('evil'), ns('web'));
  i.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'shop' }, spec: {} });
  i.services.push(svc('shop', 'payments'), svc('evil', 'sink', { app: 'sink' }, '10.96.0.20'), svc('web', 'cache', { app: 'cache' }, '10.96.0.30'));
  const route = (namespace: string, name: string, backend: { name: string; namespace?: string }) => ({
    apiVersion: 'gateway.networking.k8s.io/v1' as const, kind: 'HTTPRoute' as const, metadata: { name, namespace },
    spec: { parentRefs: [{ group: '', kind: 'Service', name: 'payments', namespace: 'shop' }], rules: [{ backendRefs: [{ ...backend, port: 80 }] }] },
  });
  i.httpRoutes.push(route('evil', 'steal', { name: 'sink' }), route('shop', 'canary', { name: 'cache', namespace: 'web' }));
  let r = compile(i);
  const steal = r.model.routes.get('evil/steal/HTTPRoute/shop/payments')!;
  assert.equal(isConsumerRoute(steal), true);
  assert.match(r.routeParents.get('HTTPRoute/evil/steal')![0]!.conditions[0]!.message, /consumer route: it applies to clients in namespace evil only/);
  const canary = r.model.routes.get('shop/canary/HTTPRoute/shop/payments')!;
  assert.equal(isConsumerRoute(canary), false);
  assert.match(canary.rules[0]!.backends[0]!.refused ?? '', /no ReferenceGrant in namespace web/);
  const resolved = r.routeParents.get('HTTPRoute/shop/canary')![0]!.conditions.find((c) => c.type === 'ResolvedRefs')!;
  assert.deepEqual([resolved.status, resolved.reason], [false, 'RefNotPermitted']);
  assert.ok(r.findings.some((f) => f.name === 'canary' && f.reason === 'RefNotPermitted' && f.path === 'spec.rules[0].backendRefs[0]'));

  // A grant for another kind or another Service does not help; the right one does.
  const grant = (to: { group: string; kind: string; name?: string }) => ({
    apiVersion: 'gateway.networking.k8s.io/v1beta1' as const, kind: 'ReferenceGrant' as const, metadata: { name: 'g', namespace: 'web' },
    spec: { from: [{ group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', namespace: 'shop' }], to: [to] },
  });
  i.referenceGrants = [grant({ group: '', kind: 'Service', name: 'other' })];
  assert.ok(compile(i).model.routes.get('shop/canary/HTTPRoute/shop/payments')!.rules[0]!.backends[0]!.refused);
  // GEP-709: a grant lives in the namespace it opens; the route's own namespace writing one opens nothing elsewhere.
  i.referenceGrants = [{ ...grant({ group: '', kind: 'Service', name: 'cache' }), metadata: { name: 'g', namespace: 'shop' } }];
  assert.match(compile(i).model.routes.get('shop/canary/HTTPRoute/shop/payments')!.rules[0]!.backends[0]!.refused ?? '', /no ReferenceGrant in namespace web/);
  i.referenceGrants = [grant({ group: '', kind: 'Service', name: 'cache' })];
  r = compile(i);
  assert.equal(r.model.routes.get('shop/canary/HTTPRoute/shop/payments')!.rules[0]!.backends[0]!.refused, undefined);
  assert.equal(r.routeParents.get('HTTPRoute/shop/canary')![0]!.conditions.every((c) => c.status), true);
});

// Gateway API conformance MeshConsumerRoute: a consumer route sends to its own parent Service in the
// producer namespace without a ReferenceGrant; any other Service there still needs one (the
// attacker's consumer route cannot reach a Service its namespace did not address).
// HTTPRouteInvalidBackendRefUnknownKind: Accepted, ResolvedRefs False InvalidKind, 500 for that backend.
// HTTPRouteRequestPercentageMirror: `fraction` is a share like `percent`.
test('a consumer route reaches its own parent without a grant; unknown backend kinds are InvalidKind; mirror fractions', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/use-waypoint': 'wp' }), ns('evil'));
  i.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'shop' }, spec: {} });
  i.services.push(svc('shop', 'payments'), svc('shop', 'ledger', { app: 'ledger' }, '10.96.0.40'));
  const parentRefs = [{ group: '', kind: 'Service', name: 'payments', namespace: 'shop' }];
  i.httpRoutes.push(
    { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'own', namespace: 'evil' }, spec: { parentRefs, rules: [{ backendRefs: [{ name: 'payments', namespace: 'shop', port: 80 }] }] } },
    { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'other', namespace: 'evil' }, spec: { parentRefs, rules: [{ backendRefs: [{ name: 'ledger', namespace: 'shop', port: 80 }] }] } },
    {
      apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'kinds', namespace: 'shop' },
      spec: {
        parentRefs,
        rules: [{
          filters: [{ type: 'RequestMirror', requestMirror: { backendRef: { name: 'ledger', port: 80 }, fraction: { numerator: 25, denominator: 50 } } }],
          backendRefs: [{ group: 'unknownkind.example.com', kind: 'NonExistent', name: 'payments', port: 80 }],
        }],
      },
    },
  );
  const r = compile(i);
  const backendOf = (key: string) => r.model.routes.get(key)!.rules[0]!.backends[0]!;
  assert.equal(backendOf('evil/own/HTTPRoute/shop/payments').refused, undefined);
  assert.match(backendOf('evil/other/HTTPRoute/shop/payments').refused ?? '', /no ReferenceGrant in namespace shop/);
  assert.match(backendOf('shop/kinds/HTTPRoute/shop/payments').refused ?? '', /unknownkind\.example\.com\/NonExistent is not a kind Weft sends to/);
  const [accepted, resolved] = r.routeParents.get('HTTPRoute/shop/kinds')![0]!.conditions;
  assert.deepEqual([accepted!.type, accepted!.status, resolved!.type, resolved!.status, resolved!.reason], ['Accepted', true, 'ResolvedRefs', false, 'InvalidKind']);
  assert.ok(r.findings.some((f) => f.name === 'kinds' && f.reason === 'InvalidKind' && f.path === 'spec.rules[0].backendRefs[0]'));
  const mirror = r.model.routes.get('shop/kinds/HTTPRoute/shop/payments')!.rules[0]!.filters[0]!;
  assert.deepEqual(mirror.type === 'RequestMirror' ? mirror.percent : undefined, 50);
});

test('TrafficPolicy retries without retryOn compile to no list, which the waypoint reads as Istio\'s default conditions', () => {
  const i = emptyInputs();
  i.services.push(svc('shop', 'reviews'));
  i.trafficPolicies.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'TrafficPolicy', metadata: { name: 'tp', namespace: 'shop' }, spec: { targetRef: { kind: 'Service', name: 'reviews' }, retries: { attempts: 3 } } });
  assert.deepEqual(compile(i).model.trafficPolicies.get('shop/tp')!.retries, { attempts: 3, retryOn: [] });
});

test('a TrafficPolicy quota compiles to a shared limit per window; a Waypoint quotaStore reaches its command line', () => {
  const i = emptyInputs();
  i.services.push(svc('shop', 'reviews'));
  i.trafficPolicies.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'TrafficPolicy', metadata: { name: 'tp', namespace: 'shop' }, spec: { targetRef: { kind: 'Service', name: 'reviews' }, quota: { requests: 100, window: '1m', per: 'source' } } });
  assert.deepEqual(compile(i).model.trafficPolicies.get('shop/tp')!.quota, { limit: 100, windowMs: 60_000, per: 'source' });
  const args = waypointContainerArgs({ name: 'wp', namespace: 'shop', serviceAccount: 'wp', spiffeId: 'x', replicas: 1, quotaStore: { redis: 'redis://redis.shop:6379', failureMode: 'closed' } }, { trustDomain: 'cluster.local', controllerNamespace: 'weft-system', controllerAddress: 'ctl:15012' });
  assert.deepEqual(args.slice(-4), ['--quota-redis', 'redis://redis.shop:6379', '--quota-failure-mode', 'closed']);
});

/**
 * A waypoint namespace with Service shop/payments, and an HTTPRoute `shop/r` on it whose one rule
 * sends to payments:80 with `rule` added (retry, filters).
 */
function oneRuleRoute(): { i: ReturnType<typeof emptyInputs>; route: (rule: Record<string, unknown>) => object; compiledRule: () => RouteRule } {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/use-waypoint': 'wp' }));
  i.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'shop' }, spec: {} });
  i.services.push(svc('shop', 'payments'));
  const route = (rule: Record<string, unknown>) => ({
    apiVersion: 'gateway.networking.k8s.io/v1' as const, kind: 'HTTPRoute' as const, metadata: { name: 'r', namespace: 'shop' },
    spec: { parentRefs: [{ group: '', kind: 'Service', name: 'payments' }], rules: [{ backendRefs: [{ name: 'payments', port: 80 }], ...rule }] },
  });
  return { i, route, compiledRule: () => compile(i).model.routes.get('shop/r/HTTPRoute/shop/payments')!.rules[0]! };
}

test('HTTPRoute retry (Gateway API HTTPRouteRetry, GEP-1731): compiled onto the rule; a bad field is refused with its path', async () => {
  const { validateObject } = await import('../../lib/model/validate.ts');
  const { i, route, compiledRule } = oneRuleRoute();
  const good = route({ retry: { codes: [500, 503], attempts: 3, backoff: '100ms' } });
  assert.deepEqual(validateObject(good), []);
  i.httpRoutes.push(good as never);
  assert.deepEqual(compiledRule().retry, { codes: [500, 503], attempts: 3, backoffMs: 100 });
  const bad = route({ retry: { codes: [500, 600, 'x'], attempts: -1, backoff: '1 second', budget: 3 } });
  assert.deepEqual(validateObject(bad).map((x) => x.path).sort(), [
    'spec.rules[0].retry.attempts', 'spec.rules[0].retry.backoff', 'spec.rules[0].retry.budget', 'spec.rules[0].retry.codes[1]', 'spec.rules[0].retry.codes[2]',
  ]);
});

// httproute_types.go (v1.6.1) HTTPHeaderMatch.Name and GRPCHeaderMatch.Name: "only the first entry
// with an equivalent name MUST be considered for a match. Subsequent entries with an equivalent
// header name MUST be ignored" ("foo" and "Foo" are equivalent); HTTPQueryParamMatch.Name: the same,
// names case-sensitive.
test('header matches with equivalent names: only the first counts, at compile and at the waypoint (HTTPHeaderMatch.Name, GRPCHeaderMatch.Name)', () => {
  const { i, route, compiledRule } = oneRuleRoute();
  i.httpRoutes.push(route({ matches: [{ headers: [{ name: 'X-Foo', value: 'a' }, { name: 'x-foo', value: 'b' }, { name: 'X-Bar', value: 'c' }], queryParams: [{ name: 'v', value: '1' }, { name: 'V', value: '2' }] }] }) as never);
  const m = compiledRule().matches[0]!;
  assert.deepEqual(m.headers, [{ type: 'Exact', name: 'x-foo', value: 'a' }, { type: 'Exact', name: 'x-bar', value: 'c' }]);
  assert.deepEqual(m.queryParams.map((q) => q.name), ['v', 'V']);
  const table = new RouteTable([...compile(i).model.routes.values()], new Set(['shop/payments']), []);
  assert.ok(table.match('shop/payments', 80, { method: 'GET', ...splitTarget('/?v=1&V=2'), headers: { 'x-foo': 'a', 'x-bar': 'c' } }));
  assert.equal(table.match('shop/payments', 80, { method: 'GET', ...splitTarget('/?v=1&V=2'), headers: { 'x-foo': 'b', 'x-bar': 'c' } }), undefined);

  const { pick } = grpcTable([['g', [{ name: 'first', matches: [{ method: { service: 'hello.Greeter' }, headers: [{ name: 'X-Foo', value: 'a' }, { name: 'x-foo', value: 'b' }] }], backendRefs: [{ name: 'greeter', port: 80 }] }]]]);
  assert.equal(pick('/hello.Greeter/M', { 'x-foo': 'a' }), 'g/first');
  assert.equal(pick('/hello.Greeter/M', { 'x-foo': 'b' }), undefined);
});

test('HTTPRoute CORS filter (HTTPCORSFilter, GEP-1767): compiled with the API\'s defaults; a bad field is refused with its path', async () => {
  const { validateObject } = await import('../../lib/model/validate.ts');
  const { i, route: withRule, compiledRule } = oneRuleRoute();
  const route = (cors: Record<string, unknown>) => withRule({ filters: [{ type: 'CORS', cors }] });
  const good = route({ allowOrigins: ['https://www.foo.com', 'https://*.bar.com', 'http://x.test:8080'], allowMethods: ['GET', 'OPTIONS'], allowCredentials: true });
  assert.deepEqual(validateObject(good), []);
  i.httpRoutes.push(good as never);
  assert.deepEqual(compiledRule().filters, [{
    type: 'CORS', allowOrigins: ['https://www.foo.com', 'https://*.bar.com', 'http://x.test:8080'], allowCredentials: true,
    allowMethods: ['GET', 'OPTIONS'], allowHeaders: [], exposeHeaders: [], maxAge: 5,
  }]);
  const bad = route({ allowOrigins: ['www.foo.com', 'https://a.*.com', 'https://*'], allowMethods: ['GET', '*'], allowHeaders: ['x y'], maxAge: 0, allowCredentials: 'yes' });
  assert.deepEqual(validateObject(bad).map((x) => x.path).sort(), [
    'spec.rules[0].filters[0].cors.allowCredentials', 'spec.rules[0].filters[0].cors.allowHeaders[0]', 'spec.rules[0].filters[0].cors.allowMethods',
    'spec.rules[0].filters[0].cors.allowOrigins[0]', 'spec.rules[0].filters[0].cors.allowOrigins[1]', 'spec.rules[0].filters[0].cors.allowOrigins[2]',
    'spec.rules[0].filters[0].cors.maxAge',
  ]);
});

test('a Waypoint status address or a Node address that is not an IP is left out with a finding, never sent to agents, which would refuse the whole config (agent/src/state.ts validateAgentConfig; validation refuses both first)', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  i.pods.push(pod('shop', 'web', { node: 'node-b' }));
  i.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'shop' }, spec: {}, status: { addresses: [{ type: 'IPAddress', value: 'not-an-ip' }, { type: 'IPAddress', value: '10.96.0.9' }], conditions: [{ type: 'Ready', status: 'True', reason: 'Ready', message: '' }] } } as never);
  i.nodes.push({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'node-b' }, status: { addresses: [{ type: 'InternalIP', address: 'not-an-ip' }] } } as never);
  const res = compile(i);
  const wp = res.model.waypoints.get('shop/wp')!;
  assert.equal(wp.address, '10.96.0.9');
  assert.equal([...res.model.workloads.values()][0]!.nodeIp, '192.168.0.2', 'the pod\'s hostIP, not the bad node address');
  assert.deepEqual(res.findings.map((f) => [f.kind, f.path, f.reason]).sort(), [['Node', 'status.addresses[0].address', 'InvalidAddress'], ['Waypoint', 'status.addresses[0].value', 'InvalidAddress']]);
  validateAgentConfig({ node: 'node-b', workloads: [...res.model.workloads.values()], services: [], policies: [], peerAuthentications: [], waypoints: [...res.model.waypoints.values()] });
});

// An east-west gateway dials a waypoint's every address at its HBONE port (eastwest/src/gateway.ts);
// a node's address there is its agent's 15008, which applies no gateway rule (docs/SECURITY.md). A
// Waypoint's written status address or a labelled (hostNetwork) pod at a node's address is left out,
// counted as a finding (weft_controller_findings) and named.
test('a Waypoint address that is a node\'s address (written status, or a hostNetwork pod labelled for it) is left out with a NodeAddress finding: the gateway and agents never dial a node\'s agent as the waypoint', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  i.pods.push(pod('shop', 'web', { node: 'node-b' }));
  i.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'shop' }, spec: {}, status: { addresses: [{ type: 'IPAddress', value: '192.168.0.2' }, { type: 'IPAddress', value: '10.96.0.9' }], conditions: [{ type: 'Ready', status: 'True', reason: 'Ready', message: '' }] } } as never);
  i.nodes.push({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'node-c' }, status: { addresses: [{ type: 'InternalIP', address: '192.168.0.3' }, { type: 'ExternalIP', address: '203.0.113.3' }] } } as never);
  let res = compile(i);
  assert.equal(res.model.waypoints.get('shop/wp')!.address, '10.96.0.9');
  assert.equal(res.model.waypoints.get('shop/wp')!.addresses, undefined);
  assert.deepEqual(res.findings.map((f) => [f.kind, f.path, f.reason]), [['Waypoint', 'status.addresses[0].value', 'NodeAddress']]);
  assert.match(res.findings[0]!.message, /192\.168\.0\.2 is the address of a node/);

  // Only node addresses: the status names one node's ExternalIP; a hostNetwork pod labelled for it.
  const j = emptyInputs();
  j.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  j.nodes.push(...i.nodes);
  j.waypoints.push({ ...i.waypoints[0]!, status: { ...i.waypoints[0]!.status, addresses: [{ type: 'IPAddress', value: '203.0.113.3' }] } } as never);
  res = compile(j);
  assert.equal(res.model.waypoints.get('shop/wp')!.address, undefined);
  assert.equal(res.model.waypoints.get('shop/wp')!.ready, false);
  assert.deepEqual(res.findings.map((f) => [f.path, f.reason]), [['status.addresses[0].value', 'NodeAddress']]);
  const k = emptyInputs();
  k.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  k.waypoints.push(waypoint('shop', 'wp'));
  const hostPod = pod('shop', 'wp-0', { node: 'node-b', labels: { 'weft.dev/waypoint': 'wp' }, ip: '192.168.0.2', hostIP: '192.168.0.2' });
  k.pods.push(hostPod, pod('shop', 'wp-1', { node: 'node-b', labels: { 'weft.dev/waypoint': 'wp' }, ip: '10.1.9.9' }));
  res = compile(k);
  assert.equal(res.model.waypoints.get('shop/wp')!.address, '10.1.9.9');
  assert.equal(res.model.waypoints.get('shop/wp')!.addresses, undefined);
  assert.deepEqual(res.findings.filter((f) => f.reason === 'NodeAddress').map((f) => [f.kind, f.path]), [['Waypoint', 'addresses']]);
});

// The API server allocates cluster IPs uniquely (a config directory need not). Agents index Services
// by VIP, last one wins (agent/src/state.ts apply), so a second claimant took over the first's
// address at every agent: "a bad object costs only itself". As for TrafficPolicies (Gateway API
// policy attachment), the oldest keeps it and the other is reported Conflicted at spec.clusterIP.
test('a Service claiming another Service\'s clusterIP loses it with a Conflicted finding at spec.clusterIP; the oldest (creationTimestamp, then namespace/name) keeps it, also at the agents and after an incremental compile', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), ns('web', { 'weft.dev/dataplane-mode': 'ambient' }));
  i.pods.push(pod('shop', 'reviews', { ip: '10.1.0.5' }), pod('web', 'thief', { ip: '10.1.0.6' }));
  const owner = svc('shop', 'reviews', { app: 'reviews' }, '10.96.0.10');
  owner.metadata.creationTimestamp = '2026-01-02T00:00:00Z';
  const thief = svc('web', 'thief', { app: 'thief' }, '10.96.0.10');
  thief.metadata.creationTimestamp = '2026-01-03T00:00:00Z';
  thief.spec.clusterIPs = ['10.96.0.10', 'fd00::10'];
  i.services.push(thief, owner); // listed first, but younger
  const cache = new CompileCache();
  const res = compile(i, { cache });
  assert.deepEqual(res.model.services.get('shop/reviews')!.vips, ['10.96.0.10']);
  assert.deepEqual(res.model.services.get('web/thief')!.vips, ['fd00::10'], 'it keeps the address nobody else claims');
  assert.deepEqual(res.findings.map((f) => [f.kind, f.namespace, f.name, f.path, f.reason]), [['Service', 'web', 'thief', 'spec.clusterIP', 'Conflicted']]);
  assert.match(res.findings[0]!.message, /10\.96\.0\.10 is already Service shop\/reviews's/);
  const st = new AgentState('node-a');
  st.apply({ node: 'node-a', workloads: [...res.model.workloads.values()], services: [...res.model.services.values()], policies: [], peerAuthentications: [], waypoints: [] });
  assert.equal(st.service('10.96.0.10')?.name, 'reviews');
  // The thief's endpoints churn (an incremental compile recompiles it): still without the VIP.
  const moved = pod('web', 'thief', { ip: '10.1.0.7' });
  i.pods[1] = moved;
  const inc = compileIncrementally(i, { cache }, new Set(['Pod/web/thief']));
  assert.ok(inc, 'a pod change compiles incrementally');
  assert.deepEqual(inc.model.services.get('web/thief')!.vips, ['fd00::10']);
  // Same age: namespace/name decides.
  delete owner.metadata.creationTimestamp;
  delete thief.metadata.creationTimestamp;
  const tie = compile(i);
  assert.deepEqual(tie.model.services.get('shop/reviews')!.vips, ['10.96.0.10']);
  assert.deepEqual(tie.findings.map((f) => `${f.namespace}/${f.name} ${f.path}`), ['web/thief spec.clusterIP']);
});

// An EndpointSlice is any tenant's to write (Kubernetes checks neither its addresses nor its
// targetRef; Istio's ztunnel keys a workload by its address, never by a slice's say-so): an entry
// naming a victim's address with the tenant's own pod as targetRef must not pass as the tenant's
// pod. Before, the workload came from targetRef.uid first, so the endpoint carried the tenant's
// namespace, passed exportedPods' same-namespace check with no Endpoint.waypoint, and
// VICTIM_IP:port was exported direct: the victim's waypoint guard erased at the east-west gateway
// and the agent's gateway port. An address no pod holds is no pod of this cluster to export.
test('an EndpointSlice entry naming another namespace\'s pod address with the writer\'s own pod as targetRef is that address\'s pod (identity, waypoint marking), and exportedPodsOf keeps the victim\'s waypoint guard and exports no address without a pod', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'wp' }), ns('evil', { 'weft.dev/dataplane-mode': 'ambient' }));
  i.waypoints.push(waypoint('shop', 'wp'));
  i.pods.push(pod('shop', 'victim', { ip: '10.1.0.8' }), pod('evil', 'attacker', { ip: '10.1.0.9' }));
  i.services.push(svc('shop', 'victim'), svc('evil', 'alias', {}, '10.96.0.66'));
  i.endpointSlices.push({
    apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', addressType: 'IPv4',
    metadata: { name: 'alias-x', namespace: 'evil', labels: { 'kubernetes.io/service-name': 'alias' } },
    endpoints: [
      { addresses: ['10.1.0.8'], nodeName: 'node-a', conditions: { ready: true }, targetRef: { kind: 'Pod', uid: 'uid-evil-attacker' } },
      { addresses: ['10.1.0.99'], nodeName: 'node-a', conditions: { ready: true } },
    ],
    ports: [{ name: 'http', port: 8080 }],
  });
  const { model } = compile(i);
  const alias = model.services.get('evil/alias')!;
  const spoofed = alias.endpoints.find((e) => e.ip === '10.1.0.8')!;
  assert.equal(spoofed.workloadUid, 'uid-shop-victim', 'the pod holding the address, not the targetRef\'s');
  assert.equal(spoofed.spiffeId, 'spiffe://cluster.local/ns/shop/sa/victim');
  assert.equal(spoofed.workload?.namespace, 'shop');
  assert.deepEqual(spoofed.waypoint, { namespace: 'shop', name: 'wp' }, 'marked with the victim\'s own waypoint');
  assert.deepEqual(model.services.get('shop/victim')!.waypoint, { namespace: 'shop', name: 'wp' });
  // A targetRef whose pod does hold the address is still read (the EndpointSlice controller's own entries).
  assert.equal(compile({ ...i, endpointSlices: [{ ...i.endpointSlices[0]!, endpoints: [{ addresses: ['10.1.0.9'], targetRef: { kind: 'Pod', uid: 'uid-evil-attacker' } }] }] }).model.services.get('evil/alias')!.endpoints[0]!.workloadUid, 'uid-evil-attacker');
  const pods = exportedPodsOf({ services: model.services.values(), waypoints: [...model.waypoints.values()].map(exportWaypoint) });
  assert.equal(pods.exported.has('10.1.0.8:8080'), true);
  assert.deepEqual([...pods.guards.get('10.1.0.8:8080')?.ids ?? []], ['spiffe://cluster.local/ns/shop/sa/wp'], 'still behind the victim\'s waypoint: not direct');
  assert.equal(pods.exported.has('10.1.0.99:8080'), false, 'an address with no pod behind it is not this cluster\'s pod to export');
});

// The node-address check compares addresses: it must see every spelling of one (RFC 5952;
// `::ffff:<IPv4>` is the IPv4 address, RFC 4291 2.5.5.2), and a waypoint address must be one a
// waypoint can listen at. A cluster IP is DNATed by kube-proxy onto its Service's endpoints (a
// selectorless Service's can be a node's 15008), so only the reconciler's own Service for the
// waypoint is dialled at one; unspecified, loopback and link-local addresses are refused as an
// import refuses them (isServiceAddress). Each left out once with a finding at its field path.
test('a Waypoint address spelt otherwise than the node\'s (IPv4-mapped, upper-case IPv6), unspecified, loopback, link-local or a Service\'s cluster IP is left out with a finding at its field path; the reconciler\'s own cluster IP is still dialled', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  i.pods.push(pod('shop', 'web', { node: 'node-b' }));
  i.services.push(svc('shop', 'web'));
  i.nodes.push({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'node-c' }, status: { addresses: [{ type: 'InternalIP', address: '192.168.0.3' }, { type: 'InternalIP', address: 'fd00::3' }] } } as never);
  const written = ['::ffff:192.168.0.2', '::FFFF:C0A8:3', 'FD00:0:0::3', '0.0.0.0', '127.0.0.1', '::1', '169.254.1.1', '10.96.0.10', '10.1.7.7'];
  i.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'shop' }, spec: {}, status: { addresses: written.map((value) => ({ type: 'IPAddress', value })), conditions: [{ type: 'Ready', status: 'True', reason: 'Ready', message: '' }] } } as never);
  const res = compile(i);
  const wp = res.model.waypoints.get('shop/wp')!;
  assert.deepEqual([wp.ready, wp.address, wp.addresses], [true, '10.1.7.7', undefined]);
  assert.deepEqual(res.findings.map((f) => [f.kind, f.path, f.reason]), [
    ['Waypoint', 'status.addresses[0].value', 'NodeAddress'],
    ['Waypoint', 'status.addresses[1].value', 'NodeAddress'],
    ['Waypoint', 'status.addresses[2].value', 'NodeAddress'],
    ['Waypoint', 'status.addresses[3].value', 'InvalidAddress'],
    ['Waypoint', 'status.addresses[4].value', 'InvalidAddress'],
    ['Waypoint', 'status.addresses[5].value', 'InvalidAddress'],
    ['Waypoint', 'status.addresses[6].value', 'InvalidAddress'],
    ['Waypoint', 'status.addresses[7].value', 'ServiceAddress'],
  ], 'each left out once, at its path');
  assert.match(res.findings[1]!.message, /^::FFFF:C0A8:3 is the address of a node/, 'named as written');
  assert.match(res.findings[7]!.message, /10\.96\.0\.10 is a Service's cluster IP/);
  // The reconciler dials its own Service's cluster IP for the waypoint until its pods are seen.
  const k = emptyInputs();
  k.waypoints.push(waypoint('a', 'wp'));
  k.services.push(svc('a', 'wp', { 'app.kubernetes.io/name': 'wp' }, '10.96.0.9'));
  const own = compile(k, { waypointRuntime: new Map([['a/wp', { address: '10.96.0.9', ready: true }]]) });
  assert.equal(own.model.waypoints.get('a/wp')!.address, '10.96.0.9');
  assert.deepEqual(own.findings.filter((f) => f.kind === 'Waypoint'), []);
});

// An IPv6 address with a zone (RFC 4007 11.2, `fe80::1%eth0`) is one isIP admits but the URL parser
// refuses; a writer of one Waypoint's status or one Node's addresses made canonicalIp throw and
// every compile fail, freezing the mesh's config. It is refused as an address at its field, once.
test('a Waypoint status address or a Node address with an IPv6 zone (fe80::1%eth0) is refused with an InvalidAddress finding at its field; the compile succeeds', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  i.pods.push(pod('shop', 'web', { node: 'node-b' }));
  i.nodes.push({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'node-b' }, status: { addresses: [{ type: 'InternalIP', address: 'fe80::2%eth0' }] } } as never);
  i.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'shop' }, spec: {}, status: { addresses: [{ type: 'IPAddress', value: 'fe80::1%eth0' }, { type: 'IPAddress', value: '10.1.7.7' }], conditions: [{ type: 'Ready', status: 'True', reason: 'Ready', message: '' }] } } as never);
  const res = compile(i);
  assert.equal(res.model.waypoints.get('shop/wp')!.address, '10.1.7.7');
  assert.equal([...res.model.workloads.values()][0]!.nodeIp, '192.168.0.2', 'the pod\'s hostIP, not the zoned node address');
  assert.deepEqual(res.findings.map((f) => [f.kind, f.path, f.reason]).sort(), [['Node', 'status.addresses[0].address', 'InvalidAddress'], ['Waypoint', 'status.addresses[0].value', 'InvalidAddress']]);
  assert.match(res.findings.find((f) => f.kind === 'Waypoint')!.message, /fe80::1%eth0/);
  validateAgentConfig({ node: 'node-b', workloads: [...res.model.workloads.values()], services: [], policies: [], peerAuthentications: [], waypoints: [...res.model.waypoints.values()] });
});

// The reconciler writes its own Service's cluster IP to the Waypoint's status.addresses
// (controller/src/sources/kube.ts); a restarted controller compiles before the reconciler reports,
// and refusing that address as ServiceAddress took the waypoint's address away until it did.
test('after a controller restart, before the reconciler reports, a Waypoint\'s status address that is the cluster IP of its own reconciler-made Service is dialled; another Service\'s, or one of that name not made by the reconciler, is still ServiceAddress', () => {
  const ownSvc = (labels: Record<string, string>) => {
    const s = svc('a', 'wp', { 'weft.dev/waypoint': 'wp' }, '10.96.0.9');
    s.metadata.labels = labels;
    return s;
  };
  const inputs = (s: ReturnType<typeof svc>) => {
    const k = emptyInputs();
    k.waypoints.push({ ...waypoint('a', 'wp'), status: { addresses: [{ type: 'IPAddress', value: '10.96.0.9' }], conditions: [{ type: 'Ready', status: 'True', reason: 'Ready', message: '' }] } } as never);
    k.services.push(s);
    return k;
  };
  const own = compile(inputs(ownSvc({ 'weft.dev/waypoint': 'wp', 'app.kubernetes.io/managed-by': 'weft' })));
  assert.deepEqual([own.model.waypoints.get('a/wp')!.ready, own.model.waypoints.get('a/wp')!.address], [true, '10.96.0.9']);
  assert.deepEqual(own.findings.filter((f) => f.kind === 'Waypoint'), []);
  const foreign = compile(inputs(ownSvc({ 'weft.dev/waypoint': 'wp' })));
  assert.equal(foreign.model.waypoints.get('a/wp')!.address, undefined);
  assert.deepEqual(foreign.findings.filter((f) => f.kind === 'Waypoint').map((f) => [f.path, f.reason]), [['status.addresses[0].value', 'ServiceAddress']]);
});

// A dual-stack pod holds every address of status.podIPs (Kubernetes API, PodStatus.podIPs); its
// IPv6 EndpointSlice (written by the EndpointSlice controller with a targetRef, or by hand without)
// names the second one (in its one spelling: validation refuses another, address-spellings.test.ts).
// Before, only the first address was indexed: the IPv6 entry resolved to no pod and lost its export.
test('an EndpointSlice entry naming a dual-stack pod\'s second address (status.podIPs), with or without targetRef, is that pod\'s endpoint and is exported; also after an incremental compile', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  const p = pod('shop', 'v6', { ip: '10.1.0.5' });
  p.status!.podIPs = [{ ip: '10.1.0.5' }, { ip: 'fd00::5' }];
  i.pods.push(p);
  i.services.push(svc('shop', 'v6'));
  const slice = (addresses: string[], targetRef?: { kind: string; uid: string }) => ({
    apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', addressType: 'IPv6',
    metadata: { name: `v6-${addresses[0]}`, namespace: 'shop', labels: { 'kubernetes.io/service-name': 'v6' } },
    endpoints: [{ addresses, nodeName: 'node-a', conditions: { ready: true }, ...(targetRef ? { targetRef } : {}) }],
    ports: [{ name: 'http', port: 8080 }],
  }) as never;
  for (const entry of [slice(['fd00::5']), slice(['fd00::5'], { kind: 'Pod', uid: 'uid-shop-v6' })]) {
    const cache = new CompileCache();
    const { model } = compile({ ...i, endpointSlices: [entry] }, { cache });
    const e = model.services.get('shop/v6')!.endpoints[0]!;
    assert.equal(e.workloadUid, 'uid-shop-v6');
    const pods = exportedPodsOf({ services: model.services.values() });
    assert.equal(pods.exported.has(`${e.ip}:8080`), true, `${e.ip} exported`);
  }
  // The pod's second address changes hands in an incremental compile: the index follows every address.
  const cache = new CompileCache();
  const j = { ...i, endpointSlices: [slice(['fd00::5'])] };
  compile(j, { cache });
  const moved = pod('shop', 'v6', { ip: '10.1.0.5' });
  moved.status!.podIPs = [{ ip: '10.1.0.5' }, { ip: 'fd00::6' }];
  j.pods = [moved];
  const inc = compileIncrementally(j, { cache }, new Set(['Pod/shop/v6'])) ?? compile(j);
  assert.equal(inc.model.services.get('shop/v6')!.endpoints[0]!.workloadUid, '', 'fd00::5 is no longer the pod\'s');
});

// kube-proxy DNATs a Service's spec.externalIPs and status.loadBalancer.ingress[].ip onto its
// endpoints as it does its cluster IP (Kubernetes Service docs, "External IPs"; any Service writer
// may set an external IP, CVE-2020-8554), so a waypoint address that is one is a Service's too.
test('a Waypoint status address that is a Service\'s external IP or load-balancer ingress IP is left out with a ServiceAddress finding at its field path, as a cluster IP is', () => {
  const i = emptyInputs();
  const s = svc('shop', 'web') as ReturnType<typeof svc> & { status?: unknown };
  s.spec.externalIPs = ['203.0.113.50'];
  s.status = { loadBalancer: { ingress: [{ hostname: 'lb.example' }, { ip: '198.51.100.7' }] } };
  i.services.push(s);
  i.waypoints.push({ ...waypoint('shop', 'wp'), status: { addresses: ['203.0.113.50', '198.51.100.7', '10.1.7.7'].map((value) => ({ type: 'IPAddress', value })), conditions: [{ type: 'Ready', status: 'True', reason: 'Ready', message: '' }] } } as never);
  const res = compile(i);
  assert.deepEqual([res.model.waypoints.get('shop/wp')!.address, res.model.waypoints.get('shop/wp')!.addresses], ['10.1.7.7', undefined]);
  assert.deepEqual(res.findings.map((f) => [f.kind, f.path, f.reason]), [['Waypoint', 'status.addresses[0].value', 'ServiceAddress'], ['Waypoint', 'status.addresses[1].value', 'ServiceAddress']]);
  assert.match(res.findings[0]!.message, /^203\.0\.113\.50 is a Service's/);
});

// A config directory (or any source without the API server's schema) can hand the compile a Service
// whose externalIPs or load-balancer ingress are not lists of addresses: the one that wrote it must
// not fail every compile (the last good config would serve for ever).
test('a Service whose externalIPs or status.loadBalancer.ingress are not lists of addresses fails no compile: the waypoint address check reads only the addresses there', () => {
  for (const [externalIPs, ingress] of [[5, 'x'], [[null, 7, '203.0.113.50'], [null, 3, { ip: 9 }, { ip: '198.51.100.7' }]], [{}, { ip: '1.2.3.4' }]] as const) {
    const i = emptyInputs();
    const s = svc('shop', 'web') as ReturnType<typeof svc> & { status?: unknown };
    (s.spec as Record<string, unknown>).externalIPs = externalIPs;
    s.status = { loadBalancer: { ingress } } as never;
    i.services.push(s);
    i.waypoints.push({ ...waypoint('shop', 'wp'), status: { addresses: ['203.0.113.50', '198.51.100.7', '10.1.7.7'].map((value) => ({ type: 'IPAddress', value })), conditions: [{ type: 'Ready', status: 'True', reason: 'Ready', message: '' }] } } as never);
    const res = compile(i);
    assert.ok(res.model.waypoints.get('shop/wp')!.address, JSON.stringify([externalIPs, ingress]));
  }
});

// Istio ValidateAuthorizationPolicy: "`from` must not be empty", "`to` must not be empty". The
// validator and the CRD refuse such a rule; one reaching the compiler past them (a caller of
// compile, a config directory read without the store) must not read its empty list as "any source"
// (lib/policy/authz.ts: a compiled rule's empty `from` matches every caller), which would turn an
// ALLOW into allow-all: the rule matches nothing, and a finding names its field.
test('an AuthorizationPolicy rule whose from or to is an empty list matches nothing at compile, fails closed, and is a finding at its field (Istio ValidateAuthorizationPolicy)', () => {
  const inputs = emptyInputs();
  inputs.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  inputs.pods.push(pod('shop', 'db'));
  const frontend = 'cluster.local/ns/web/sa/frontend';
  inputs.authorizationPolicies.push(
    authz('shop', 'nobody', { action: 'ALLOW', rules: [{ from: [] }] }),
    authz('shop', 'frontend', { action: 'ALLOW', rules: [{ from: [{ source: { principals: [frontend] } }] }, { to: [] }] }),
    authz('shop', 'gets', { action: 'ALLOW', rules: [{ from: [] }, { to: [{ operation: { methods: ['GET'] } }] }] }),
  );
  const { model, findings } = compile(inputs);
  const other = { sourcePrincipal: 'spiffe://cluster.local/ns/other/sa/client', sourceNamespace: 'other', sourceIp: '10.1.0.1', destinationPort: 8080 };
  assert.equal(evaluate(new CompiledPolicies([model.policies.get('shop/nobody')!]), other).allowed, false, 'from: [] allows no one');
  assert.equal(evaluate(new CompiledPolicies([model.policies.get('shop/frontend')!]), other).allowed, false, 'to: [] allows nothing');
  assert.equal(evaluate(new CompiledPolicies([model.policies.get('shop/frontend')!]), { ...other, sourcePrincipal: `spiffe://${frontend}`, sourceNamespace: 'web' }).allowed, true, 'the other rule still allows its caller');
  const named = findings.filter((f) => f.kind === 'AuthorizationPolicy' && f.reason === 'Invalid').map((f) => `${f.name} ${f.path}`).sort();
  assert.deepEqual(named, ['frontend spec.rules[1].to', 'gets spec.rules[0].from', 'nobody spec.rules[0].from']);
  // Other findings still name the rule where it was written.
  assert.deepEqual(findings.filter((f) => f.name === 'gets' && f.reason === 'UnsupportedValue').map((f) => f.path), ['spec.rules[1]']);
});
