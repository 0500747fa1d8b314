// RequestAuthentication in the controller: validation with field paths (a bad object costs only
// itself), attachment by targetRefs as AuthorizationPolicy's (lib/model/mesh.ts waypointTargets),
// what each client is sent, and requestPrincipals / request.auth.* at the agents (Istio: ztunnel
// reports them UnsupportedValue; an ALLOW rule with them never matches at L4, a DENY rule does).
// https://istio.io/latest/docs/reference/config/security/request_authentication/
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DeniedError, LocalDelivery } from '../../agent/src/delivery.ts';
import { AgentMetrics } from '../../agent/src/metrics.ts';
import { AgentState } from '../../agent/src/state.ts';
import { compile, emptyInputs } from '../../controller/src/compile.ts';
import { buildIndex, waypointHolds, waypointView, agentView } from '../../controller/src/xds/views.ts';
import { silentLogger } from '../../lib/log.ts';
import type { AuthorizationPolicy, RequestAuthentication } from '../../lib/model/objects.ts';
import { validateObject } from '../../lib/model/validate.ts';
import * as grpc from '@grpc/grpc-js';
import { ConfigServer } from '../../controller/src/xds/server.ts';
import { ConfigClient } from '../../lib/xds/client.ts';
import { configStreamServiceDefinition, type ConfigStreamCall } from '../../lib/xds/protocol.ts';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import { request, startTunnelListener } from '../../waypoint/testing/harness.ts';
import { authz, ns, pod, svc, waypoint } from './controller-fixtures.ts';
import { startHarness, until } from './controller-harness.ts';
import { MemorySource } from '../../controller/src/sources/memory.ts';
import { jwksOf, nowSeconds, signToken, testKey } from './jwt-fixtures.ts';

const ISSUER_KEY = testKey('ec256', 'k1');
const JWKS = jwksOf(ISSUER_KEY);

function ra(name: string, spec: unknown, namespace = 'shop'): RequestAuthentication {
  return { apiVersion: 'weft.dev/v1alpha1', kind: 'RequestAuthentication', metadata: { name, namespace }, spec } as RequestAuthentication;
}

test('validates a RequestAuthentication field by field, naming each path (istio.io request_authentication JWTRule)', () => {
  assert.deepEqual(validateObject(ra('ok', {
    targetRefs: [{ kind: 'Service', group: '', name: 'reviews' }],
    jwtRules: [{ issuer: 'https://issuer.example', audiences: ['shop'], jwks: JWKS, fromHeaders: [{ name: 'x-jwt', prefix: 'Bearer ' }], fromParams: ['token'], fromCookies: ['session'], forwardOriginalToken: true, outputPayloadToHeader: 'x-jwt-payload', outputClaimToHeaders: [{ header: 'x-sub', claim: 'sub' }] }],
  })), []);
  const issues = validateObject(ra('bad', {
    selector: { matchLabels: { app: 'x' } },
    jwtRules: [
      { jwks: JWKS },
      { issuer: 'a', jwksUri: 'file:///etc/passwd' },
      { issuer: 'b', jwks: '{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}' },
      { issuer: 'c', jwks: JWKS, fromHeaders: [{ name: 'bad header' }], outputPayloadToHeader: 'host', outputClaimToHeaders: [{ header: 'x-a' }], forwardOriginalToken: 'yes', timeout: '5s' },
    ],
  }));
  const byPath = Object.fromEntries(issues.map((i) => [i.path, i.message]));
  assert.match(byPath['spec.selector']!, /enforced only by a waypoint .* attach it with spec\.targetRefs/);
  assert.match(byPath['spec.jwtRules[0].issuer']!, /is required/);
  assert.match(byPath['spec.jwtRules[1].jwksUri']!, /URI scheme "file" is not supported/);
  assert.match(byPath['spec.jwtRules[2].jwks']!, /keys\[0\]: symmetric \(oct\) keys are not accepted/);
  assert.match(byPath['spec.jwtRules[3].fromHeaders[0].name']!, /not an HTTP header name/);
  assert.match(byPath['spec.jwtRules[3].outputPayloadToHeader']!, /"host" is a header the waypoint owns/);
  assert.match(byPath['spec.jwtRules[3].outputClaimToHeaders[0].claim']!, /is required/);
  assert.match(byPath['spec.jwtRules[3].forwardOriginalToken']!, /must be true or false/);
  assert.match(byPath['spec.jwtRules[3].timeout']!, /unknown field/);
  assert.match(validateObject(ra('none', { jwtRules: [] }))[0]!.message, /targetRefs.*is required|is required/);
});

test('attaches by targetRefs as AuthorizationPolicy does; only the waypoint of the targets\' namespace is sent it, never an agent', () => {
  const inputs = emptyInputs();
  inputs.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'wp' }), ns('web', { 'weft.dev/dataplane-mode': 'ambient' }));
  inputs.pods.push(pod('shop', 'db', { labels: { app: 'db' }, ip: '10.1.8.8' }));
  inputs.services.push(svc('shop', 'db', { app: 'db' }, '10.96.0.61'), svc('shop', 'web', { app: 'web' }, '10.96.0.62'), svc('web', 'front', { app: 'front' }, '10.96.0.70'));
  inputs.waypoints.push({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'shop' }, spec: {} });
  const rule = { issuer: 'https://issuer.example', jwks: JWKS };
  inputs.requestAuthentications.push(
    ra('on-db', { targetRefs: [{ group: '', kind: 'Service', name: 'db' }], jwtRules: [rule] }),
    ra('on-wp', { targetRefs: [{ group: 'weft.dev', kind: 'Waypoint', name: 'wp' }], jwtRules: [rule] }),
    ra('unbound', { targetRefs: [{ group: '', kind: 'Service', name: 'front' }], jwtRules: [rule] }, 'web'),
  );
  for (const o of inputs.requestAuthentications) assert.deepEqual(validateObject(o), [], o.metadata.name);
  const { model, findings } = compile(inputs);
  assert.deepEqual(model.requestAuthentications.get('shop/on-db')?.targetServices, ['shop/db']);
  assert.deepEqual(model.requestAuthentications.get('shop/on-wp')?.targetServices, ['shop/db', 'shop/web']);
  assert.equal(model.requestAuthentications.get('shop/on-db')?.jwtRules[0]?.jwks, JWKS);
  assert.deepEqual(findings.filter((f) => f.kind === 'RequestAuthentication').map((f) => `${f.name} ${f.reason} ${f.path}`), ['unbound AncestorNotBound spec.targetRefs[0].name']);
  const ix = buildIndex(model);
  assert.deepEqual([...waypointView(ix, 'shop', 'RequestAuthentication')!].sort(), ['shop/on-db', 'shop/on-wp']);
  assert.equal(waypointHolds(ix, 'web', 'RequestAuthentication', 'shop/on-db'), false);
  assert.deepEqual([...agentView(ix, 'node-a', 'RequestAuthentication')!], []);
});

// Istio's ztunnel cannot see a request's JWT: it reports requestPrincipals / request.auth.* in a
// policy it enforces as UnsupportedValue, never matches an ALLOW rule with them, and keeps a DENY
// rule with them, narrowed to what it sees (pilot/pkg/security/authz/model: L4 ignores HTTP fields
// of DENY rules), so it denies more, never less.
test('enforced by the agents, requestPrincipals and request.auth.* are UnsupportedValue: an ALLOW rule with them never matches, a DENY rule with them matches', () => {
  const judge = (p: AuthorizationPolicy) => {
    const inputs = emptyInputs();
    inputs.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
    inputs.pods.push(pod('shop', 'db', { labels: { app: 'db' }, ip: '10.1.8.8' }));
    inputs.services.push(svc('shop', 'db', { app: 'db' }, '10.96.0.60'));
    inputs.authorizationPolicies.push(p);
    assert.deepEqual(validateObject(p), []);
    const { model, findings } = compile(inputs);
    const state = new AgentState('node-a');
    state.apply({ node: 'node-a', workloads: [...model.workloads.values()], services: [...model.services.values()], policies: [...model.policies.values()], peerAuthentications: [], waypoints: [] });
    const delivery = new LocalDelivery({ state, metrics: new AgentMetrics(), log: silentLogger, datapath: { registerPeer() {}, unregisterPeer() { return true; }, tagAgentSocket() {} } });
    let verdict = 'allowed';
    try {
      delivery.authorize(state.localWorkload('10.1.8.8')!, 8080, { sourcePrincipal: 'spiffe://cluster.local/ns/other/sa/client', sourceNamespace: 'other', sourceIp: '10.1.0.1' });
    } catch (err) {
      if (!(err instanceof DeniedError)) throw err;
      verdict = `denied by ${err.policy}`;
    }
    return { verdict, finding: findings.find((f) => f.reason === 'UnsupportedValue') };
  };
  const allow = judge(authz('shop', 'need-jwt', { action: 'ALLOW', rules: [{ from: [{ source: { requestPrincipals: ['*'] } }] }] }));
  assert.equal(allow.verdict, 'denied by shop/need-jwt');
  assert.match(allow.finding!.message, /found: requestPrincipals/);
  assert.equal(allow.finding!.path, 'spec.rules[0]');
  const deny = judge(authz('shop', 'no-dev', { action: 'DENY', rules: [{ when: [{ key: 'request.auth.claims[groups]', values: ['dev'] }] }] }));
  assert.equal(deny.verdict, 'denied by shop/no-dev');
  assert.match(deny.finding!.message, /found: request\.auth\.claims\[groups\]/);
  assert.match(deny.finding!.message, /DENY is enforced without its HTTP attributes/);
});

// End to end from the object to the waypoint's answer: the controller compiles it, the config
// stream carries it to the waypoint of the targets' namespace (config type RequestAuthentication),
// the waypoint refuses a forged token with 401; deleting the object stops it.
test('a RequestAuthentication reaches the waypoint over the config stream and is enforced there; removing it stops it', async () => {
  const build = (withRa: boolean) => {
    const i = emptyInputs();
    i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'waypoint' }));
    i.waypoints.push(waypoint('shop', 'waypoint'));
    i.pods.push(pod('shop', 'reviews', { ip: '10.4.0.1' }));
    i.services.push(svc('shop', 'reviews', { app: 'reviews' }, '10.96.0.20'));
    if (withRa) i.requestAuthentications.push(ra('jwt', { targetRefs: [{ group: '', kind: 'Service', name: 'reviews' }], jwtRules: [{ issuer: 'https://issuer.example', jwks: JWKS }] }));
    return compile(i).model;
  };
  const configServer = new ConfigServer();
  configServer.publish(build(true));
  const server = new grpc.Server();
  server.addService(configStreamServiceDefinition(), { DeltaConfig: (call: ConfigStreamCall) => configServer.handle(call) });
  const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  const engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
  const wp = new ConfigClient({ target: `127.0.0.1:${port}`, credentials: grpc.credentials.createInsecure(), kind: 'waypoint', id: 'waypoint-0', namespace: 'shop', validate: (cfg) => engine.validateConfig(cfg) });
  wp.on('snapshot', (cfg) => engine.applyConfig(cfg));
  const l = await startTunnelListener(engine, '10.96.0.20:80');
  const forged = signToken(testKey('ec256', ISSUER_KEY.kid), { iss: 'https://issuer.example', sub: 'admin', exp: nowSeconds() + 60 });
  try {
    wp.start();
    await wp.ready();
    assert.deepEqual(wp.snapshot!.requestAuthentications?.map((r) => `${r.namespace}/${r.name}`), ['shop/jwt']);
    await until('the waypoint refuses the forged token', async () => (await request(l.port, { host: 'reviews.shop', headers: { authorization: `Bearer ${forged}` } })).status === 401);
    configServer.publish(build(false));
    await until('the waypoint applied the removal', () => wp.snapshot?.requestAuthentications?.length === 0);
    assert.notEqual((await request(l.port, { host: 'reviews.shop', headers: { authorization: `Bearer ${forged}` } })).status, 401);
  } finally {
    wp.close();
    await l.close();
    await engine.close();
    server.forceShutdown();
  }
});

// A bad object costs only itself: an update the controller refuses (here a jwksUri of a scheme it
// does not fetch) is Invalid in status at its field, and the last good version keeps serving at the waypoint.
test('a refused update of a RequestAuthentication is Invalid at its field path and the last good version stays in force at the waypoint', async () => {
  const good = ra('jwt', { targetRefs: [{ group: '', kind: 'Service', name: 'reviews' }], jwtRules: [{ issuer: 'https://issuer.example', jwks: JWKS }] });
  const source = new MemorySource([ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'wp' }), waypoint('shop', 'wp'), pod('shop', 'reviews', { ip: '10.1.9.1' }), svc('shop', 'reviews'), good]);
  const h = await startHarness(source);
  try {
    const wp = h.waypoint('shop');
    await wp.ready();
    await until('the waypoint holds the RequestAuthentication', () => wp.snapshot!.requestAuthentications?.some((r) => r.name === 'jwt') === true);
    source.upsert(ra('jwt', { targetRefs: [{ group: '', kind: 'Service', name: 'reviews' }], jwtRules: [{ issuer: 'https://issuer.example', jwksUri: 'ftp://issuer.example/jwks.json' }] }));
    await until('refused update status', () => source.statuses.get('RequestAuthentication/shop/jwt')?.reason === 'Invalid');
    const st = source.statuses.get('RequestAuthentication/shop/jwt')!;
    assert.equal(st.path, 'spec.jwtRules[0].jwksUri');
    assert.match(st.message, /URI scheme "ftp" is not supported/);
    await h.controller.settled();
    assert.equal(wp.snapshot!.requestAuthentications?.find((r) => r.name === 'jwt')?.jwtRules[0]?.jwks, JWKS, 'the last good keys still apply');
  } finally {
    await h.close();
  }
});
