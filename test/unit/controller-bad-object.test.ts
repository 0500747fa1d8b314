// A bad object costs only itself, end to end from the controller to a waypoint: an object the
// controller refuses is marked in its status with the field path and never reaches a data plane;
// one it accepts with a dangling reference (a missing backend, a cross-namespace backend without a
// ReferenceGrant) reaches the waypoint, which accepts the whole config and answers 500 only for
// the requests routed there. After both, a new DENY policy and an endpoint change still take effect.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MemorySource } from '../../controller/src/sources/memory.ts';
import { buildSnapshot } from '../../waypoint/src/config.ts';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import { authz, ns, pod, svc, waypoint } from './controller-fixtures.ts';
import { startHarness, until } from './controller-harness.ts';
import { validateAgentConfig } from '../../agent/src/state.ts';
import { Registry } from 'prom-client';

test('after a refused policy and a route to missing backends, a new DENY policy and an endpoint change still reach the waypoint and take effect', async () => {
  const route = {
    apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'dangling', namespace: 'shop' },
    spec: {
      parentRefs: [{ group: '', kind: 'Service', name: 'reviews' }],
      rules: [
        { matches: [{ path: { type: 'PathPrefix', value: '/ghost' } }], backendRefs: [{ name: 'ghost', port: 80 }] },
        { matches: [{ path: { type: 'PathPrefix', value: '/other' } }], backendRefs: [{ name: 'cache', namespace: 'web', port: 80 }] },
        { backendRefs: [{ name: 'reviews', port: 80 }, { name: 'ghost', port: 80, weight: 0 }] },
      ],
    },
  };
  // Istio refuses it too (ValidateAttribute: "replaced by the metadata.namespace").
  const badPolicy = authz('shop', 'sni', { action: 'DENY', rules: [{ when: [{ key: 'destination.namespace', values: ['x'] }] }] });
  // httproute_types.go (v1.6.1) HTTPRouteRule CEL: "RequestRedirect filter must not be used together with backendRefs".
  const badRoute = {
    apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'redirect', namespace: 'shop' },
    spec: {
      parentRefs: [{ group: '', kind: 'Service', name: 'reviews' }],
      rules: [{ filters: [{ type: 'RequestRedirect', requestRedirect: { hostname: 'elsewhere.example' } }], backendRefs: [{ name: 'reviews', port: 80 }] }],
    },
  };
  const source = new MemorySource([
    ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'wp' }), ns('web'),
    waypoint('shop', 'wp'), pod('shop', 'reviews', { ip: '10.1.9.1' }), svc('shop', 'reviews'), svc('web', 'cache', { app: 'cache' }, '10.96.0.30'),
    route, badPolicy, badRoute,
  ]);
  const h = await startHarness(source);
  const engine = new WaypointEngine({ namespace: 'shop', name: 'wp', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
  try {
    const wp = h.waypoint('shop');
    const applied: Array<{ version: number; issues: number }> = [];
    wp.on('snapshot', (cfg) => { const a = engine.applyConfig(cfg); applied.push({ version: a.version, issues: a.issues.length }); });
    await wp.ready();

    // The refused policy: Invalid with the field path, and absent from every data plane.
    await until('refused policy status', () => source.statuses.get('AuthorizationPolicy/shop/sni')?.reason === 'Invalid');
    const st = source.statuses.get('AuthorizationPolicy/shop/sni')!;
    assert.equal(st.path, 'spec.rules[0].when[0].key');
    assert.match(st.message, /destination\.namespace.*not a supported condition key/);
    assert.equal(wp.snapshot!.policies.some((p) => p.name === 'sni'), false);
    const agent = h.agent('node-a');
    await agent.ready();
    assert.equal(agent.snapshot!.policies.some((p) => p.name === 'sni'), false);

    // The refused route (a redirect with backendRefs): Invalid with the field path; the waypoint
    // gets the other route only.
    await until('refused route status', () => source.statuses.get('HTTPRoute/shop/redirect')?.reason === 'Invalid');
    const bad = source.statuses.get('HTTPRoute/shop/redirect')!;
    assert.equal(bad.path, 'spec.rules[0].filters[0]');
    assert.match(bad.message, /RequestRedirect filter must not be used together with backendRefs/);

    // The route with dangling backends: accepted by the controller with ResolvedRefs=False, and by
    // the waypoint without any issue.
    await until('route status', () => source.statuses.get('HTTPRoute/shop/dangling') !== undefined);
    const rs = source.statuses.get('HTTPRoute/shop/dangling')!;
    assert.deepEqual(rs.parents![0]!.conditions.map((c) => [c.type, c.status, c.reason]), [['Accepted', true, 'Accepted'], ['ResolvedRefs', false, 'BackendNotFound']]);
    assert.equal(wp.snapshot!.routes.length, 1);
    assert.deepEqual(applied.at(-1), { version: applied.at(-1)!.version, issues: 0 });

    // A new DENY policy takes effect at the waypoint.
    source.upsert(authz('shop', 'no-admin', { targetRefs: [{ kind: 'Service', name: 'reviews' }], action: 'DENY', rules: [{ to: [{ operation: { paths: ['/admin*'] } }] }] }));
    await until('DENY policy at the waypoint', () => engine.config.policies.some((p) => p.name === 'no-admin'));
    const snap = buildSnapshot(engine.config, 1);
    assert.deepEqual(snap.issues, []);
    const req = { sourcePrincipal: 'spiffe://cluster.local/ns/web/sa/x', destinationPort: 80, method: 'GET', target: '/admin', host: 'reviews', headers: {} };
    assert.equal(snap.policies.evaluate('shop/reviews', req).allowed, false);
    assert.equal(snap.policies.evaluate('shop/reviews', { ...req, target: '/' }).allowed, true);

    // An endpoint change takes effect at the waypoint.
    source.delete('Pod', 'shop', 'reviews');
    source.upsert(pod('shop', 'reviews-2', { ip: '10.1.9.2', labels: { app: 'reviews' } }));
    await until('new endpoint at the waypoint', () => engine.config.services.find((s) => s.name === 'reviews')?.endpoints.map((e) => e.ip).join() === '10.1.9.2');
    assert.equal(applied.every((a) => a.issues === 0), true, `every config applied whole: ${JSON.stringify(applied)}`);
  } finally {
    await engine.close();
    await h.close();
  }
});

// GEP-1294 (v1.6.1, "Route types"): of an HTTPRoute and a GRPCRoute on one Service port only the
// GRPCRoute applies; the HTTPRoute gets Accepted False with reason Conflicted, and costs only itself.
test('an HTTPRoute on a Service port a GRPCRoute holds is Conflicted in its status and never reaches the waypoint; the GRPCRoute does', async () => {
  const parentRefs = [{ group: '', kind: 'Service', name: 'reviews' }];
  const source = new MemorySource([
    ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'wp' }),
    waypoint('shop', 'wp'), pod('shop', 'reviews', { ip: '10.1.9.1' }), svc('shop', 'reviews'),
    { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'h', namespace: 'shop' }, spec: { parentRefs, rules: [{ backendRefs: [{ name: 'reviews', port: 80 }] }] } },
    { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'GRPCRoute', metadata: { name: 'g', namespace: 'shop' }, spec: { parentRefs, rules: [{ matches: [{ method: { service: 'hello.Greeter' } }], backendRefs: [{ name: 'reviews', port: 80 }] }] } },
  ]);
  const h = await startHarness(source);
  try {
    const wp = h.waypoint('shop');
    await wp.ready();
    await until('route statuses', () => source.statuses.has('HTTPRoute/shop/h') && source.statuses.has('GRPCRoute/shop/g'));
    const st = source.statuses.get('HTTPRoute/shop/h')!;
    assert.deepEqual([st.ok, st.reason, st.path], [false, 'Conflicted', 'spec.parentRefs[0]']);
    assert.match(st.message, /GRPCRoute shop\/g is attached to Service shop\/reviews/);
    assert.deepEqual(st.parents![0]!.conditions.map((c) => [c.type, c.status, c.reason]), [['Accepted', false, 'Conflicted'], ['ResolvedRefs', true, 'ResolvedRefs']]);
    assert.equal(source.statuses.get('GRPCRoute/shop/g')!.ok, true);
    await until('GRPCRoute at the waypoint', () => wp.snapshot?.routes.some((r) => r.kind === 'GRPCRoute') === true);
    assert.deepEqual(wp.snapshot!.routes.map((r) => `${r.kind}/${r.name}`), ['GRPCRoute/g']);
  } finally {
    await h.close();
  }
});

// docs/RELIABILITY.md: the controller "never fails a compile" and agents never get a config they
// must reject; lib/model/validate.ts: "Every field the mesh reads is checked". compile.ts reads a
// Waypoint's status.conditions and status.addresses, a Pod's status.conditions and a Node's
// addresses; each of these, malformed, used to fail every compile (freezing all config) or reach
// every agent and be NACKed there (validateAgentConfig), so that no later change got through.
const hostileStatus: Array<[string, object, string]> = [
  ['Waypoint status.conditions as a string', { ...waypoint('shop', 'evil'), status: { conditions: 'x' } }, 'status.conditions'],
  ['Waypoint status.addresses as a string', { ...waypoint('shop', 'evil'), status: { addresses: 'x' } }, 'status.addresses'],
  ['Pod status.conditions as a string', { ...pod('shop', 'evil', { labels: { app: 'reviews' } }), status: { phase: 'Running', podIP: '10.1.7.7', conditions: 'x' } }, 'status.conditions'],
  ['Waypoint status.addresses[0].value "not-an-ip" with Ready=True', { ...waypoint('web', 'evil'), status: { addresses: [{ type: 'IPAddress', value: 'not-an-ip' }], conditions: [{ type: 'Ready', status: 'True', reason: 'x', message: 'x' }] } }, 'status.addresses[0].value'],
  ['Node status.addresses[0].address "not-an-ip" (InternalIP)', { apiVersion: 'v1', kind: 'Node', metadata: { name: 'node-a' }, status: { addresses: [{ type: 'InternalIP', address: 'not-an-ip' }] } }, 'status.addresses[0].address'],
];

for (const [what, bad, path] of hostileStatus) {
  test(`RELIABILITY.md "never fails a compile", "agents never get a config they must reject": ${what} is refused at ${path} and a later good policy still reaches the agent`, async () => {
    const source = new MemorySource([ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), ns('web'), pod('shop', 'reviews'), svc('shop', 'reviews')]);
    const h = await startHarness(source);
    try {
      const rejected: string[] = [];
      const agent = h.agent('node-a', { validate: (c) => { try { validateAgentConfig(c); } catch (e) { rejected.push((e as Error).message); throw e; } } });
      await agent.ready();
      source.upsert(bad);
      source.upsert(authz('shop', 'later-good', { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['web'] } }] }] }));
      await h.controller.settled();
      await until('the later good policy reaches the agent, or the agent refuses a config', () => agent.snapshot!.policies.some((p) => p.name === 'later-good') || rejected.length > 0, 2000).catch(() => {});
      assert.deepEqual(h.logs.filter((l) => l.msg.startsWith('compile failed')).map((l) => l.fields.error), [], 'no compile failure');
      assert.deepEqual(rejected, [], 'the agent refused no config');
      assert.ok(agent.snapshot!.policies.some((p) => p.name === 'later-good'), 'the later good policy is in force at the agent');
      const o = bad as { kind: string; metadata: { name: string; namespace?: string } };
      const st = source.statuses.get(`${o.kind}/${o.metadata.namespace ? `${o.metadata.namespace}/` : ''}${o.metadata.name}`);
      if (o.kind === 'Waypoint') assert.equal(st?.path, path, 'refused with its field path');
    } finally {
      await h.close();
    }
  });
}

// One tenant's objects cannot make every agent's config stream fail: the controller sends a type's
// changes in one response, and grpc-js refuses a received message past 4 MiB by default
// (RESOURCE_EXHAUSTED, gRPC A70 "Resource and message size limits for XdsClient"), so a Service of
// 12,000 pods (about 4.7 MB of workloads) ended every agent's and waypoint's stream at its first
// response, over and over, and no config, the other tenants' included, reached any of them.
test('a Service of 12,000 pods (a config past gRPC\'s 4 MiB default message size) reaches the agents and the waypoints, and another tenant\'s later policy still does', async () => {
  const pods = Array.from({ length: 12_000 }, (_, i) => pod('big', `p${i}`, { labels: { app: 'big' }, ip: `10.2.${i >> 8}.${i & 255}`, node: `node-${i % 50}` }));
  const source = new MemorySource([
    ns('big', { 'weft.dev/dataplane-mode': 'ambient' }), ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'wp' }),
    waypoint('shop', 'wp'), pod('shop', 'reviews', { ip: '10.1.9.1' }), svc('shop', 'reviews'), ...pods, svc('big', 'big', { app: 'big' }, '10.96.1.1'),
  ]);
  const h = await startHarness(source);
  try {
    const failures: string[] = [];
    const agent = h.agent('node-a');
    const wp = h.waypoint('shop');
    for (const c of [agent, wp]) c.on('disconnected', (e) => { if (e) failures.push(e.message); });
    await until('the agent and the waypoint have a config', () => agent.snapshot !== undefined && wp.snapshot !== undefined, 30_000);
    assert.equal(agent.snapshot!.services.find((s) => s.name === 'big')?.endpoints.length, 12_000);
    source.upsert(authz('shop', 'later-good', { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['big'] } }] }] }));
    await until('the other tenant\'s policy reaches the agent', () => agent.snapshot!.policies.some((p) => p.name === 'later-good'), 30_000);
    assert.deepEqual(failures, [], 'no config stream ended');
  } finally {
    await h.close();
  }
});

// The Weft CRD keeps a RequestAuthentication's spec.selector as sent (x-kubernetes-preserve-unknown-
// fields), and the API server admits JSON nested up to 10,000 levels (Go's encoding/json). The
// controller read such an object with recursive walks (withoutNullFields, JSON.stringify) that
// overflow the stack at a few thousand: one tenant's object of 36 KB made the controller fail at
// its start (a crash loop in a cluster, no one's config served) and threw out of each later read.
test('a RequestAuthentication nested 6,000 levels deep, there at the start or written later, is refused at its field path and counted; the controller starts and another tenant\'s later policy still reaches the agent', async () => {
  const deep = (name: string) => JSON.parse(`{"apiVersion":"weft.dev/v1alpha1","kind":"RequestAuthentication","metadata":{"name":"${name}","namespace":"aaa","generation":1},"spec":{"selector":${'{"a":'.repeat(6000)}1${'}'.repeat(6000)},"jwtRules":[]}}`);
  const source = new MemorySource([ns('aaa'), ns('zzz', { 'weft.dev/dataplane-mode': 'ambient' }), pod('zzz', 'web'), svc('zzz', 'web'), deep('at-start')]);
  const registry = new Registry();
  const h = await startHarness(source, undefined, { registry });
  try {
    const agent = h.agent('node-a');
    await agent.ready();
    source.upsert(deep('later'));
    source.upsert(authz('zzz', 'later-good', { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['aaa'] } }] }] }));
    await until('the other tenant\'s policy reaches the agent', () => agent.snapshot!.policies.some((p) => p.name === 'later-good'));
    const path = `spec.selector${'.a'.repeat(98)}`;
    for (const name of ['at-start', 'later']) {
      await until(`${name} refused in its status`, () => source.statuses.get(`RequestAuthentication/aaa/${name}`)?.reason === 'Invalid');
      const st = source.statuses.get(`RequestAuthentication/aaa/${name}`)!;
      assert.equal(st.path, path);
      assert.match(st.message, /nests deeper than 100 levels of objects and lists/);
      assert.ok(h.logs.some((l) => l.msg.startsWith('invalid object refused') && l.fields.object === `RequestAuthentication/aaa/${name}`), `${name}: the refusal is logged with the object`);
    }
    const rejected = await registry.getSingleMetric('weft_controller_rejected_objects_total')?.get();
    assert.equal(rejected?.values.find((v) => v.labels.kind === 'RequestAuthentication')?.value, 2);
  } finally {
    await h.close();
  }
});

// lib/regex.ts MAX_OBJECT_REGEX_COST: a consumer route (no grant needed from the Service's
// namespace) of 128 matches, a path and 16 headers each, every one a pattern of 1,802 RE2
// instructions, took 8.7 s of the controller's one thread to validate at each write (re2js), and
// every tenant's pushes waited. Now it is refused at the first pattern past the object's budget.
test('a consumer route whose regular expressions are past the object\'s budget is refused at that field and counted, and another tenant\'s policy written after it reaches its waypoint, the route validated once', async () => {
  const pattern = (i: number) => ({ type: 'RegularExpression', value: `x${i}[a-z]{1,900}` });
  const matches = Array.from({ length: 128 }, (_, j) => ({ path: pattern(j), headers: Array.from({ length: 16 }, (_, h) => ({ name: `x-h${h}`, ...pattern(j * 16 + h) })) }));
  const costly = {
    apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'costly', namespace: 'evil' },
    spec: { parentRefs: [{ group: '', kind: 'Service', name: 'reviews', namespace: 'shop' }], rules: [0, 1].map((r) => ({ matches: matches.slice(r * 64, r * 64 + 64), backendRefs: [{ name: 'reviews', namespace: 'shop', port: 80 }] })) },
  };
  const source = new MemorySource([ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'wp' }), ns('evil'), waypoint('shop', 'wp'), pod('shop', 'reviews'), svc('shop', 'reviews')]);
  const registry = new Registry();
  const h = await startHarness(source, undefined, { registry });
  try {
    const wp = h.waypoint('shop');
    await wp.ready();
    const { regexCompiled, MAX_OBJECT_REGEX_COST, MAX_REGEX_PROGRAM_SIZE } = await import('../../lib/regex.ts');
    const before = regexCompiled.instructions;
    source.upsert(costly);
    source.upsert(authz('shop', 'later-good', { action: 'DENY', targetRefs: [{ kind: 'Service', group: '', name: 'reviews' }], rules: [{ from: [{ source: { namespaces: ['evil'] } }] }] }));
    await until('shop\'s policy reaches its waypoint', () => wp.snapshot!.policies.some((p) => p.name === 'later-good'), 5000);
    await until('the route refused in its status', () => source.statuses.get('HTTPRoute/evil/costly')?.reason === 'Invalid');
    // Counted in what was compiled, not in time (8.7 s of validation before): the route's budget
    // once, though its Invalid status comes back as a new version (validated once by content).
    const compiled = regexCompiled.instructions - before;
    assert.ok(compiled <= MAX_OBJECT_REGEX_COST + MAX_REGEX_PROGRAM_SIZE, `${compiled} RE2 instructions compiled`);
    const st = source.statuses.get('HTTPRoute/evil/costly')!;
    assert.match(st.path ?? '', /^spec\.rules\[0\]\.matches\[0\]\.headers\[\d+\]\.value$/);
    assert.match(st.message, /past the budget of 16000 RE2 instructions/);
    assert.ok(h.logs.some((l) => l.msg.startsWith('invalid object refused') && l.fields.object === 'HTTPRoute/evil/costly'), 'the refusal is logged with the object');
    const rejected = await registry.getSingleMetric('weft_controller_rejected_objects_total')?.get();
    assert.equal(rejected?.values.find((v) => v.labels.kind === 'HTTPRoute')?.value, 1);
    assert.equal(wp.snapshot!.routes.some((r) => r.name === 'costly'), false, 'never sent to shop\'s waypoint');
  } finally {
    await h.close();
  }
});

// A response a client cannot take (here past a small receive limit; in a cluster, any per-message
// failure) ends its stream after the earlier responses of the same version arrived. The client
// took that first response for a working stream and reset its backoff, so it reconnected at the
// initial delay for ever, each time pulling the whole config from the controller again; the
// backoff now resets only once a whole version was taken.
test('a client whose stream keeps failing partway through a version backs off (gRPC connection backoff), instead of reconnecting at the initial delay for ever', async () => {
  const big = { ...svc('aaa', 'big', { app: 'x' }, '10.96.5.1'), spec: { clusterIP: '10.96.5.1', selector: { app: 'x' }, ports: Array.from({ length: 200 }, (_, i) => ({ name: `p${i}`, port: i + 1 })) } };
  const source = new MemorySource([ns('aaa'), big]);
  const h = await startHarness(source);
  try {
    let connects = 0;
    const failures = new Set<string>();
    const started = performance.now();
    const agent = h.agent('node-a', { channelOptions: { 'grpc.max_receive_message_length': 4096 }, backoff: { initialMs: 20, maxMs: 400, jitter: 0 } });
    agent.on('connected', () => connects++);
    agent.on('disconnected', (e) => { if (e) failures.add(e.message.replace(/\(\d+ vs/, '(n vs')); });
    await until('six connects', () => connects >= 6, 10_000);
    assert.ok([...failures].some((m) => /RESOURCE_EXHAUSTED/.test(m)), [...failures].join());
    // Five waits before the sixth connect: 20 + 40 + 80 + 160 + 320 ms backing off, 100 ms at the initial delay.
    const elapsed = performance.now() - started;
    assert.ok(elapsed >= 600, `six connects within ${Math.round(elapsed)} ms`);
  } finally {
    await h.close();
  }
});

// The status of a refused object said every issue in full, tenant-chosen values included: 50,000
// bad ipBlocks made a 5.7 MB message, a 1 MB bad value a 1 MB one. Kubernetes takes a condition
// message of at most 32,768 characters (metav1.Condition, the Gateway API CRDs check it), and an
// object plus its status of at most 1.5 MiB (etcd): the write failed and was tried again every
// second for ever, and each update of the object wrote its megabytes to the controller's log.
test('a refused object\'s status and log line name its first issues, cut, and how many more: 50,000 bad ipBlocks or a 1 MB bad value make a message within a Kubernetes condition\'s 32,768 characters', async () => {
  const many = authz('aaa', 'many', { action: 'DENY', rules: Array.from({ length: 50_000 }, () => ({ from: [{ source: { ipBlocks: ['not-an-address'] } }] })) });
  const huge = authz('aaa', 'huge', { action: 'DENY', rules: [{ from: [{ source: { ipBlocks: ['x'.repeat(1_000_000)] } }] }] });
  const source = new MemorySource([ns('aaa'), many, huge]);
  const h = await startHarness(source);
  try {
    for (const name of ['many', 'huge']) {
      await until(`${name} refused`, () => source.statuses.get(`AuthorizationPolicy/aaa/${name}`)?.reason === 'Invalid');
      const st = source.statuses.get(`AuthorizationPolicy/aaa/${name}`)!;
      assert.equal(st.path, 'spec.rules[0].from[0].source.ipBlocks[0]');
      assert.ok(st.message.length <= 32_768, `${name}: a status message of ${st.message.length} characters`);
      assert.match(st.message, /^AuthorizationPolicy aaa\/\w+: spec\.rules\[0\]\.from\[0\]\.source\.ipBlocks\[0\]: /);
      const line = h.logs.find((l) => l.msg.startsWith('invalid object refused') && l.fields.object === `AuthorizationPolicy/aaa/${name}`)!;
      assert.ok(JSON.stringify(line.fields).length <= 32_768, `${name}: a log line of ${JSON.stringify(line.fields).length} characters`);
    }
    assert.match(source.statuses.get('AuthorizationPolicy/aaa/many')!.message, /and 49,99\d more issues/);
  } finally {
    await h.close();
  }
});
