// A RequestAuthentication's jwksUri, fetched by the controller as Istio's istiod fetches it
// (istio/istio pilot/pkg/model/jwks_resolver.go; https://istio.io/latest/docs/reference/config/security/request_authentication/#JWTRule
// "jwksUri"): the keys reach the waypoint inline; until a fetch succeeds the rule verifies nothing
// (istiod's CreateFakeJwks: every token of the issuer 401, requests without one pass) and the object
// says why at spec.jwtRules[i].jwksUri; a failed refresh keeps the last good keys. A tenant chooses
// the URL and the controller fetches it from inside the cluster: each bound (size, deadline, no
// redirect, a JWKS or nothing) is an attack here, refused, counted and named. Served by local HTTP
// and HTTPS servers on 127.0.0.1.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { Registry } from 'prom-client';
import { MAX_FETCHED_JWKS_BYTES_PER_NAMESPACE, compile, emptyInputs, jwksUrisOf } from '../../controller/src/compile.ts';
import { JWKS_FETCH_TIMEOUT_MS, JWKS_REFRESH_JITTER, JwksFetchError, JwksResolver, fetchJwks, unfetchedJwks, type JwksFetchResult } from '../../controller/src/jwks-resolver.ts';
import { silentLogger } from '../../controller/src/log.ts';
import { parseControllerArgs, runController } from '../../controller/src/main.ts';
import { MemorySource } from '../../controller/src/sources/memory.ts';
import { DEFAULT_BACKOFF } from '../../lib/backoff.ts';
import { withDefaultCas } from '../../lib/bounded-get.ts';
import type { RequestAuthentication } from '../../lib/model/objects.ts';
import { validateObject } from '../../lib/model/validate.ts';
import { MAX_JWKS_BYTES, jwksProblem } from '../../lib/policy/jwt.ts';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import { request, startTunnelListener } from '../../waypoint/testing/harness.ts';
import { ns, pod, svc, waypoint } from './controller-fixtures.ts';
import { startHarness, until, type Harness } from './controller-harness.ts';
import { createTestCa } from './hbone-certs.ts';
import { jwksOf, nowSeconds, signToken, testKey } from './jwt-fixtures.ts';

const ISSUER = 'https://issuer.example';
const KEY = testKey('ec256', 'k1');
const JWKS = jwksOf(KEY);

/** What the JWKS server answers; tests switch it while it runs. */
type Answer = { kind: 'jwks'; body: string; delayMs?: number } | { kind: 'status'; code: number } | { kind: 'redirect'; to: string } | { kind: 'oversize'; declare: boolean } | { kind: 'slow' } | { kind: 'body'; body: string };

interface JwksServer {
  url: string;
  answer: Answer;
  hits: number;
  /** Answers still being written ('slow'). */
  readonly pending: number;
  /** Stops listening (connections refused) until `up`. */
  down(): Promise<void>;
  up(): Promise<void>;
  close(): Promise<void>;
}

async function startJwksServer(answer: Answer, tls?: { key: string; cert: string }): Promise<JwksServer> {
  const open = new Set<ServerResponse>();
  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    s.hits++;
    const a = s.answer;
    switch (a.kind) {
      case 'jwks': {
        const t = setTimeout(() => res.writeHead(200, { 'content-type': 'application/json' }).end(a.body), a.delayMs ?? 0);
        res.on('close', () => clearTimeout(t));
        return;
      }
      case 'body': res.writeHead(200, { 'content-type': 'text/html' }).end(a.body); return;
      case 'status': res.writeHead(a.code).end('internal detail'); return;
      case 'redirect': res.writeHead(302, { location: a.to }).end(); return;
      case 'oversize': {
        const body = JSON.stringify({ keys: [], pad: 'x'.repeat(MAX_JWKS_BYTES) });
        res.writeHead(200, a.declare ? { 'content-length': Buffer.byteLength(body) } : {});
        res.end(body);
        return;
      }
      case 'slow':
        // Headers at once, then a byte now and then: never the whole body within the deadline.
        res.writeHead(200, { 'content-type': 'application/json' });
        res.write('{"keys":[');
        open.add(res);
        { const t = setInterval(() => res.write(' '), 50); res.on('close', () => { clearInterval(t); open.delete(res); }); }
        req.resume();
        return;
    }
  };
  const make = (): Server => (tls ? createHttpsServer(tls, handler) : createServer(handler));
  let server = make();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  const s: JwksServer = {
    url: `${tls ? 'https' : 'http'}://127.0.0.1:${port}/.well-known/jwks.json`,
    answer,
    hits: 0,
    get pending() { return open.size; },
    async down() {
      for (const r of open) r.destroy();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
    async up() {
      server = make();
      server.listen(port, '127.0.0.1');
      await once(server, 'listening');
    },
    async close() {
      for (const r of open) r.destroy();
      if (server.listening) await s.down();
    },
  };
  return s;
}

async function fetched(registry: Registry, result: JwksFetchResult): Promise<number> {
  const m = await registry.getSingleMetric('weft_controller_jwks_fetch_total')?.get();
  return m?.values.find((v) => v.labels.result === result)?.value ?? 0;
}

function ra(name: string, rules: unknown[], target = 'reviews'): RequestAuthentication {
  return { apiVersion: 'weft.dev/v1alpha1', kind: 'RequestAuthentication', metadata: { name, namespace: 'shop', generation: 1 }, spec: { targetRefs: [{ group: '', kind: 'Service', name: target }], jwtRules: rules } } as RequestAuthentication;
}

/**
 * What the waypoint answers a request that passed authentication: the Service's port has no route
 * here (404), after the JWT check (a refused token is 401 before it).
 */
const PASSED = 404;

const token = (key = KEY): string => signToken(key, { iss: ISSUER, sub: 'alice', exp: nowSeconds() + 300 });

/** A controller (loopback config stream) for the mesh `shop` with `objects`, and a WaypointEngine fed by it. */
async function startMesh(objects: unknown[], jwks: ConstructorParameters<typeof JwksResolver>[0] = {}) {
  const source = new MemorySource([ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'waypoint' }), waypoint('shop', 'waypoint'), pod('shop', 'reviews', { ip: '10.4.0.1' }), svc('shop', 'reviews', { app: 'reviews' }, '10.96.0.20'), ...objects] as never);
  const registry = new Registry();
  const h: Harness = await startHarness(source, undefined, { jwks, registry });
  const engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null } });
  const wp = h.waypoint('shop', { validate: (cfg) => engine.validateConfig(cfg) });
  wp.on('snapshot', (cfg) => engine.applyConfig(cfg));
  const l = await startTunnelListener(engine, '10.96.0.20:80');
  await wp.ready();
  return {
    source, registry, h, wp,
    /** The waypoint's answer to a request with `tok` (none: no Authorization). */
    status: async (tok?: string): Promise<number> => (await request(l.port, { host: 'reviews.shop', headers: tok ? { authorization: `Bearer ${tok}` } : {} })).status,
    raStatus: () => source.statuses.get('RequestAuthentication/shop/jwt'),
    async close() {
      await l.close();
      await engine.close();
      await h.close();
    },
  };
}

test('validation: jwksUri is an http or https URL (Istio ParseJwksURI: URI scheme is not supported), named at its field', () => {
  const issues = (rules: unknown[]) => validateObject(ra('jwt', rules)).map((i) => `${i.path}: ${i.message}`);
  assert.deepEqual(issues([{ issuer: ISSUER, jwksUri: 'https://issuer.example/jwks.json' }]), []);
  assert.deepEqual(issues([{ issuer: ISSUER, jwksUri: 'http://keys.idp.svc:8080/jwks' }]), []);
  assert.deepEqual(issues([{ issuer: ISSUER, jwks: JWKS, jwksUri: 'https://issuer.example/jwks.json' }]), []);
  assert.match(issues([{ issuer: ISSUER, jwksUri: 'file:///etc/passwd' }]).join(), /spec\.jwtRules\[0\]\.jwksUri: URI scheme "file" is not supported/);
  assert.match(issues([{ issuer: ISSUER, jwksUri: 'gopher://x/' }]).join(), /spec\.jwtRules\[0\]\.jwksUri: URI scheme "gopher"/);
  assert.match(issues([{ issuer: ISSUER, jwksUri: 'not a url' }]).join(), /spec\.jwtRules\[0\]\.jwksUri: "not a url" is not a URL/);
  assert.match(issues([{ issuer: ISSUER, jwksUri: '' }]).join(), /spec\.jwtRules\[0\]\.jwksUri: must not be empty/);
  assert.match(issues([{ issuer: ISSUER }]).join(), /spec\.jwtRules\[0\]\.jwks: is required, or jwksUri: the controller does not discover an issuer's keys \(OpenID Connect discovery\)/);
});

test('compile: a fetched jwksUri is compiled inline; inline jwks wins over jwksUri (Istio: istiod fetches only for a rule without jwks); none fetched is a JWKS that verifies nothing, reported at the field', () => {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'wp' }));
  i.waypoints.push(waypoint('shop', 'wp'));
  i.services.push(svc('shop', 'reviews'));
  i.requestAuthentications.push(ra('jwt', [
    { issuer: ISSUER, jwksUri: 'https://a.example/jwks' },
    { issuer: 'inline', jwks: JWKS, jwksUri: 'https://b.example/jwks' },
    { issuer: 'pending', jwksUri: 'https://c.example/jwks' },
    { issuer: 'failed', jwksUri: 'https://d.example/jwks' },
  ]));
  const other = jwksOf(testKey('ec256', 'k2'));
  const { model, findings } = compile(i, { jwks: new Map([
    ['https://a.example/jwks', { jwks: other, version: 1 }],
    ['https://c.example/jwks', { version: 2 }],
    ['https://d.example/jwks', { error: 'connect ECONNREFUSED 10.0.0.9:443', result: 'unreachable', version: 3 }],
  ]) });
  assert.deepEqual(jwksUrisOf(i.requestAuthentications), [['https://a.example/jwks', 'shop'], ['https://c.example/jwks', 'shop'], ['https://d.example/jwks', 'shop']], 'a rule with inline keys fetches nothing');
  const rules = model.requestAuthentications.get('shop/jwt')!.jwtRules;
  assert.equal(rules[0]!.jwks, other);
  assert.equal(rules[1]!.jwks, JWKS);
  // istiod's CreateFakeJwks: a JWKS every waypoint takes (nothing reported, nothing left out) whose one key no one can sign for.
  assert.equal(rules[2]!.jwks, unfetchedJwks('https://c.example/jwks'));
  assert.equal(rules[3]!.jwks, unfetchedJwks('https://d.example/jwks'));
  assert.deepEqual(jwksProblem(rules[2]!), { skipped: [] });
  assert.notEqual(unfetchedJwks('https://c.example/jwks'), unfetchedJwks('https://d.example/jwks'));
  assert.deepEqual(findings.map((f) => `${f.path} ${f.reason}`), ['spec.jwtRules[2].jwksUri JwksPending', 'spec.jwtRules[3].jwksUri JwksFetchFailed']);
  assert.match(findings[1]!.message, /no keys fetched from https:\/\/d\.example\/jwks: the last fetch failed: the host could not be reached; tokens of issuer failed are refused \(401\) until a fetch succeeds, requests without a token pass/);
  assert.doesNotMatch(findings[1]!.message, /10\.0\.0\.9|ECONNREFUSED/, 'what the controller reached inside the cluster stays in its log');
  // weftctl analyze compiles offline, fetching nothing: no finding, the rule verifies nothing.
  const offline = compile(i);
  assert.deepEqual(offline.findings, []);
  assert.equal(offline.model.requestAuthentications.get('shop/jwt')!.jwtRules[0]!.jwks, unfetchedJwks('https://a.example/jwks'));
});

test('the keys of a jwksUri reach the waypoint inline over the config stream and a token signed by them verifies; the controller fetches each distinct URI once', async () => {
  const server = await startJwksServer({ kind: 'jwks', body: JWKS });
  const m = await startMesh([ra('jwt', [{ issuer: ISSUER, jwksUri: server.url }]), { ...ra('jwt2', [{ issuer: ISSUER, jwksUri: server.url }]) }]);
  try {
    await until('the waypoint holds the fetched keys', () => m.wp.snapshot?.requestAuthentications?.find((r) => r.name === 'jwt')?.jwtRules[0]?.jwks === JWKS);
    assert.equal(await m.status(token()), PASSED, 'verified');
    assert.equal(await m.status(token(testKey('ec256', 'k1'))), 401, 'a token of another key with the same kid');
    await until('status Accepted', () => m.raStatus()?.reason === 'Accepted');
    assert.equal(server.hits, 1);
    assert.equal(await fetched(m.registry, 'ok'), 1);
  } finally {
    await m.close();
    await server.close();
  }
});

test('the JWKS server down: every token of the issuer is refused 401, requests without one pass, the finding names spec.jwtRules[0].jwksUri and the error, counted; back up, the retry recovers (istiod: refresh on failure)', async () => {
  const server = await startJwksServer({ kind: 'jwks', body: JWKS });
  await server.down();
  const m = await startMesh([ra('jwt', [{ issuer: ISSUER, jwksUri: server.url }])], { retryMs: 50, maxRetryMs: 100 });
  try {
    await until('status names the field and the error', () => m.raStatus()?.reason === 'JwksFetchFailed');
    const st = m.raStatus()!;
    assert.equal(st.path, 'spec.jwtRules[0].jwksUri');
    assert.match(st.message, /no keys fetched from http:\/\/127\.0\.0\.1:\d+\/\.well-known\/jwks\.json: the last fetch failed: the host could not be reached; tokens of issuer https:\/\/issuer\.example are refused \(401\)/);
    assert.ok(await fetched(m.registry, 'unreachable') >= 1);
    assert.ok(m.h.logs.some((l) => l.msg.startsWith('JWKS fetch failed') && l.fields.uri === server.url), 'logged with the URI');
    await until('the waypoint holds the rule', () => m.wp.snapshot?.requestAuthentications?.length === 1);
    assert.equal(await m.status(token()), 401, 'a good token: no keys to verify it yet');
    assert.equal(await m.status(signToken(KEY, { iss: ISSUER, sub: 'alice', exp: nowSeconds() + 300 }, { kid: null })), 401, 'nor one without kid');
    assert.equal(await m.status(), PASSED, 'no token: passes');
    await server.up();
    await until('recovered', () => m.raStatus()?.reason === 'Accepted');
    await until('the waypoint holds the keys', () => m.wp.snapshot?.requestAuthentications?.[0]?.jwtRules[0]?.jwks === JWKS);
    assert.equal(await m.status(token()), PASSED);
    assert.ok(await fetched(m.registry, 'ok') >= 1);
  } finally {
    await m.close();
    await server.close();
  }
});

test('a failed refresh keeps the last good keys (istiod keeps the cached pubKey); a later refresh takes rotated keys', async () => {
  const server = await startJwksServer({ kind: 'jwks', body: JWKS });
  const m = await startMesh([ra('jwt', [{ issuer: ISSUER, jwksUri: server.url }])], { refreshMs: 50, retryMs: 50, maxRetryMs: 50 });
  try {
    await until('keys fetched', () => m.wp.snapshot?.requestAuthentications?.[0]?.jwtRules[0]?.jwks === JWKS);
    server.answer = { kind: 'status', code: 500 };
    await until('a refresh failed', async () => (await fetched(m.registry, 'http-status')) >= 2);
    server.answer = { kind: 'body', body: '<html>down for maintenance</html>' };
    await until('another refresh failed', async () => (await fetched(m.registry, 'not-jwks')) >= 1);
    await m.h.controller.settled();
    assert.equal(m.wp.snapshot?.requestAuthentications?.[0]?.jwtRules[0]?.jwks, JWKS, 'the last good keys still apply');
    assert.equal(await m.status(token()), PASSED, 'a token of those keys still verifies');
    assert.equal(m.raStatus()?.reason, 'Accepted', 'the rule is in force');
    assert.ok(m.h.logs.some((l) => l.msg === 'JWKS refresh failed; the keys fetched before keep serving' && l.fields.result === 'http-status'));
    const rotated = testKey('ec256', 'k2');
    server.answer = { kind: 'jwks', body: jwksOf(rotated) };
    await until('the rotated keys reach the waypoint', () => m.wp.snapshot?.requestAuthentications?.[0]?.jwtRules[0]?.jwks === jwksOf(rotated) || m.wp.snapshot?.requestAuthentications?.[0]?.jwtRules[0]?.jwks.includes('"kid":"k2"') === true);
    assert.equal(await m.status(token(rotated)), PASSED);
    assert.equal(await m.status(token()), 401, 'the old key no longer verifies');
  } finally {
    await m.close();
    await server.close();
  }
});

// Attacks: the tenant chooses the URL. Each answer below is refused with its reason counted, named in
// the object's status at the field, and costs only this rule (its tokens 401).
test('a tenant\'s jwksUri cannot make the controller read without bound: oversize (declared or not), slow, redirect, not a JWKS, an error status are each refused, counted and named; the body is never quoted', async () => {
  const cases: Array<{ answer: Answer; result: JwksFetchResult; message: RegExp }> = [
    { answer: { kind: 'oversize', declare: true }, result: 'too-large', message: /declares a body of \d+ bytes; the JWKS is read up to 65536 bytes/ },
    { answer: { kind: 'oversize', declare: false }, result: 'too-large', message: /JWKS larger than 65536 bytes/ },
    { answer: { kind: 'slow' }, result: 'timeout', message: /no complete JWKS within 300 ms/ },
    { answer: { kind: 'redirect', to: 'http://169.254.169.254/latest/meta-data/' }, result: 'redirect', message: /answered 302 redirecting to http:\/\/169\.254\.169\.254\/latest\/meta-data\/; redirects are not followed/ },
    { answer: { kind: 'body', body: 'secret-token=abc' }, result: 'not-jwks', message: /answered a body that is not JSON/ },
    { answer: { kind: 'jwks', body: '{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}' }, result: 'not-jwks', message: /answered a document that keys\[0\]: symmetric \(oct\) keys are not accepted/ },
    { answer: { kind: 'jwks', body: '{"keys":[]}' }, result: 'not-jwks', message: /has no usable signing key/ },
    { answer: { kind: 'status', code: 404 }, result: 'http-status', message: /answered HTTP 404$/ },
  ];
  for (const c of cases) {
    const server = await startJwksServer(c.answer);
    const registry = new Registry();
    const r = new JwksResolver({ registry, timeoutMs: 300, retryMs: 60_000 });
    const started = Date.now();
    try {
      r.want([[server.url, 'shop']]);
      await until(`${c.result}: counted`, async () => (await fetched(registry, c.result)) === 1);
      const st = r.snapshot().get(server.url)!;
      assert.equal(st.result, c.result, c.result);
      assert.match(st.error!, c.message, c.result);
      assert.doesNotMatch(st.error!, /secret-token|internal detail/, 'the body is not quoted');
      assert.equal(st.jwks, undefined);
      assert.ok(Date.now() - started < 3000, `${c.result} within the deadline`);
    } finally {
      r.stop();
      await server.close();
    }
  }
  assert.equal(JWKS_FETCH_TIMEOUT_MS, 5000, 'istiod jwksHTTPTimeOutInSec');
});

test('through the controller, a refused answer is 401 for the issuer\'s tokens and named in status at the field, and another rule of the same object keeps verifying', async () => {
  const bad = await startJwksServer({ kind: 'redirect', to: 'http://10.0.0.1/' });
  const good = await startJwksServer({ kind: 'jwks', body: JWKS });
  const m = await startMesh([ra('jwt', [{ issuer: 'https://other.example', jwksUri: bad.url }, { issuer: ISSUER, jwksUri: good.url }])]);
  try {
    await until('status names the field and the refusal', () => m.raStatus()?.reason === 'JwksFetchFailed');
    assert.equal(m.raStatus()!.path, 'spec.jwtRules[0].jwksUri');
    assert.match(m.raStatus()!.message, /redirects are not followed/);
    assert.doesNotMatch(m.raStatus()!.message, /10\.0\.0\.1/, "the Location it named stays in the controller's log");
    assert.equal(await fetched(m.registry, 'redirect'), 1);
    await until('the good rule\'s keys', () => m.wp.snapshot?.requestAuthentications?.[0]?.jwtRules[1]?.jwks === JWKS);
    assert.equal(await m.status(token()), PASSED, 'the other rule verifies');
    assert.equal(await m.status(signToken(KEY, { iss: 'https://other.example', exp: nowSeconds() + 60 })), 401);
  } finally {
    await m.close();
    await bad.close();
    await good.close();
  }
});

test('https: verified against Node\'s CAs (an unknown CA is refused, counted tls); with the CA added (istiod extra.pem) the keys are fetched', async () => {
  const ca = createTestCa('JWKS test CA');
  const leaf = ca.issue(undefined, ['127.0.0.1']);
  const server = await startJwksServer({ kind: 'jwks', body: JWKS }, leaf);
  const registry = new Registry();
  const plain = new JwksResolver({ registry, retryMs: 60_000 });
  const trusting = new JwksResolver({ extraCas: [ca.cert], retryMs: 60_000 });
  try {
    plain.want([[server.url, 'shop']]);
    trusting.want([[server.url, 'shop']]);
    await until('refused', async () => (await fetched(registry, 'tls')) === 1);
    assert.match(plain.snapshot().get(server.url)!.error!, /^TLS: /);
    await until('fetched with the CA', () => trusting.snapshot().get(server.url)?.jwks === JWKS);
    await assert.rejects(fetchJwks(server.url.replace('127.0.0.1', 'localhost'), { ca: withDefaultCas([ca.cert]) }), (e: Error & { code?: string }) => e.code === 'tls' || e.code === 'unreachable', 'a name the certificate does not hold');
  } finally {
    plain.stop();
    trusting.stop();
    await server.close();
  }
});

test('the resolver builds its CA list (Node\'s default CAs and extraCas) once: every fetch is handed the same list', async () => {
  const extra = createTestCa('JWKS extra CA').cert;
  const lists: Array<string[] | undefined> = [];
  const r = new JwksResolver({ extraCas: [extra], retryMs: 60_000, fetch: (_uri, o) => { lists.push(o.ca); return Promise.resolve(JWKS); } });
  try {
    r.want([['https://a.example/jwks', 'shop'], ['https://b.example/jwks', 'shop']]);
    await r.settled();
    assert.equal(lists.length, 2);
    assert.deepEqual(lists[0], withDefaultCas([extra]));
    assert.equal(lists[1], lists[0], 'the same list, not built again');
  } finally {
    r.stop();
  }
});

test('at most maxUris distinct URIs are held; one past it is refused, counted over-limit and named, and admitted once another is no longer named', async () => {
  const a = await startJwksServer({ kind: 'jwks', body: JWKS });
  const b = await startJwksServer({ kind: 'jwks', body: JWKS });
  const registry = new Registry();
  const changes: number[] = [];
  const r = new JwksResolver({ registry, maxUris: 1 });
  r.onChange(() => changes.push(1));
  try {
    const [first, second] = [a.url, b.url].sort() as [string, string];
    r.want([[first, 'a'], [second, 'b']]);
    r.want([[first, 'a'], [second, 'b']]);
    assert.equal(await fetched(registry, 'over-limit'), 1, 'counted once while named');
    assert.match(r.snapshot().get(second)!.error!, /fetches at most 1 distinct jwksUri/);
    await until('the first fetched', () => r.snapshot().get(first)?.jwks === JWKS);
    r.want([[second, 'b']]);
    assert.equal(r.snapshot().has(first), false, 'forgotten');
    await until('the second fetched', () => r.snapshot().get(second)?.jwks === JWKS);
    assert.equal(a.hits + b.hits, 2);
  } finally {
    r.stop();
    await a.close();
    await b.close();
  }
});

test('forgetting a URI, or stopping, ends its fetch under way (a slow server holds no socket of the controller past it)', async () => {
  const server = await startJwksServer({ kind: 'slow' });
  const r = new JwksResolver();
  try {
    r.want([[server.url, 'shop']]);
    await until('the answer is being written', () => server.pending === 1);
    r.want([]);
    await until('the connection is closed', () => server.pending === 0);
    r.want([[server.url, 'shop']]);
    await until('asked again', () => server.pending === 1);
    r.stop();
    await until('closed at stop', () => server.pending === 0);
  } finally {
    r.stop();
    await server.close();
  }
});

// istiod refreshes every jwksUri from one ticker, 20 minutes apart, and on failure from 1 minute
// doubling to an hour, without jitter (pilot/pkg/model/jwks_resolver.go refresher/refreshCache);
// Envoy's remote JWKS fetch retries with a fully jittered backoff (JitteredExponentialBackOffStrategy).
// Here each URI has its own timer, so without jitter the URIs a restart fetched together, and
// controllers started together, refresh and retry in lockstep against the same identity providers.
// Each wait is spread: a refresh by JWKS_REFRESH_JITTER either way, a retry by the mesh's backoff
// jitter (lib/backoff.ts DEFAULT_BACKOFF, 0.2, doubling), drawn from `random` (here injected, timers mocked).
test('jwksUri refreshes and retries carry jitter: with the random source injected, a refresh waits refreshMs ± JWKS_REFRESH_JITTER and a retry its doubled step ± the mesh\'s backoff jitter (DEFAULT_BACKOFF), so URIs fetched together do not refresh together', async (t) => {
  assert.equal(JWKS_REFRESH_JITTER, 0.1);
  assert.equal(DEFAULT_BACKOFF.jitter, 0.2);
  assert.equal(DEFAULT_BACKOFF.multiplier, 2);
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const calls = new Map<string, number>();
  const failing = new Set<string>();
  const draws: number[] = [];
  const r = new JwksResolver({
    refreshMs: 1_000, retryMs: 1_000, maxRetryMs: 4_000,
    random: () => draws.shift() ?? 0.5,
    fetch: (uri) => {
      calls.set(uri, (calls.get(uri) ?? 0) + 1);
      return failing.has(uri) ? Promise.reject(new JwksFetchError('unreachable', 'connect ECONNREFUSED')) : Promise.resolve(JWKS);
    },
  });
  const n = (uri: string): number => calls.get(uri) ?? 0;
  const A = 'https://a.example/jwks';
  const B = 'https://b.example/jwks';
  const C = 'https://c.example/jwks';
  try {
    // Refresh: A draws the low end (900 ms), B the high end (1,100 ms); fetched together, they refresh apart.
    draws.push(0, 1, 0);
    failing.add(C);
    r.want([[A, 'shop'], [B, 'shop'], [C, 'shop']]);
    await r.settled();
    assert.deepEqual([n(A), n(B), n(C)], [1, 1, 1]);
    t.mock.timers.tick(799);
    await r.settled();
    assert.equal(n(C), 1, 'C\'s first retry: 1,000 ms - 20 %');
    t.mock.timers.tick(1);
    assert.equal(n(C), 2, 'C retried at 800 ms');
    await r.settled();
    t.mock.timers.tick(99);
    assert.deepEqual([n(A), n(B)], [1, 1], 'not before 900 ms');
    t.mock.timers.tick(1);
    assert.deepEqual([n(A), n(B)], [2, 1], 'A refreshed at 900 ms (1,000 - 10 %), B not yet');
    t.mock.timers.tick(199);
    assert.equal(n(B), 1);
    t.mock.timers.tick(1);
    assert.equal(n(B), 2, 'B refreshed at 1,100 ms (1,000 + 10 %)');
    await r.settled();
    r.want([[C, 'shop']]);
    // C's second retry drew 0.5 (no spread): 2,000 ms after its failure at 800 ms; its third, drawn 1, 4,000 + 20 %.
    draws.push(1);
    t.mock.timers.tick(1_699);
    assert.equal(n(C), 2);
    t.mock.timers.tick(1);
    assert.equal(n(C), 3, 'the doubled step, 2,000 ms');
    await r.settled();
    t.mock.timers.tick(4_799);
    assert.equal(n(C), 3);
    t.mock.timers.tick(1);
    assert.equal(n(C), 4, 'capped at maxRetryMs, then + 20 %: 4,800 ms');
  } finally {
    r.stop();
  }
});

test('the last good keys serve at most maxStaleMs after the last success (istiod JwtPubKeyEvictionDuration, 7 days), then the rule verifies nothing', async () => {
  let calls = 0;
  const r = new JwksResolver({
    refreshMs: 10, retryMs: 10, maxRetryMs: 10, maxStaleMs: 0,
    fetch: () => (calls++ === 0 ? Promise.resolve(JWKS) : Promise.reject(new JwksFetchError('unreachable', 'connect ECONNREFUSED'))),
  });
  const held: Array<string | undefined> = [];
  r.onChange(() => held.push(r.snapshot().get('https://idp.example/jwks')?.jwks));
  try {
    r.want([['https://idp.example/jwks', 'shop']]);
    await until('fetched, then dropped after a failed refresh', () => held.length >= 2);
    assert.deepEqual(held.slice(0, 2), [JWKS, undefined]);
    assert.equal(r.snapshot().get('https://idp.example/jwks')?.error, 'connect ECONNREFUSED');
  } finally {
    r.stop();
  }
});

// Host name lookups run on libuv's threads (4, shared with the controller's file and crypto work)
// and outlive a fetch's deadline: a tenant naming hosts of a DNS zone that never answers cannot hold
// more than MAX_JWKS_LOOKUPS of them; a fetch past it waits for a slot within its deadline.
test('a tenant\'s slow DNS holds at most maxLookups lookups (libuv\'s threads); a fetch past it waits within its deadline (timeout, counted); answered, every fetch succeeds', async () => {
  const server = await startJwksServer({ kind: 'jwks', body: JWKS });
  const port = new URL(server.url).port;
  const stuck: Array<() => void> = [];
  let dnsSlow = true;
  const lookup = ((hostname: string, options: { all?: boolean }, cb: (err: Error | null, a: unknown, f?: number) => void) => {
    const answer = () => (options.all ? cb(null, [{ address: '127.0.0.1', family: 4 }]) : cb(null, '127.0.0.1', 4));
    if (dnsSlow && hostname.startsWith('slow')) stuck.push(answer);
    else answer();
  }) as never;
  const registry = new Registry();
  const r = new JwksResolver({ registry, lookup, maxLookups: 2, timeoutMs: 200, retryMs: 20, maxRetryMs: 20 });
  const uris = [`http://slow-a.test:${port}/jwks`, `http://slow-b.test:${port}/jwks`, `http://slow-c.test:${port}/jwks`];
  try {
    r.want(uris.map((u) => [u, 'shop'] as const));
    await until('every fetch timed out, two lookups held', async () => (await fetched(registry, 'timeout')) >= 3 && stuck.length === 2);
    assert.equal(stuck.length, 2, 'no more lookups while those two are held, whatever the retries');
    dnsSlow = false;
    for (const answer of stuck.splice(0)) answer();
    await until('answered, every URI fetched', () => uris.every((u) => r.snapshot().get(u)?.jwks === JWKS), 5000);
  } finally {
    r.stop();
    await server.close();
  }
});

// The bound must not turn a restart into refusals: more hosts than lookup slots, each answering at
// once, are all fetched at the first try (past the bound they failed at once, the keys of two
// published and the rest refused for minutes to hours).
test('more jwksUri hosts than lookup slots, each answering, are all fetched at the first try', async () => {
  const server = await startJwksServer({ kind: 'jwks', body: JWKS });
  const port = new URL(server.url).port;
  const lookup = ((_h: string, options: { all?: boolean }, cb: (err: Error | null, a: unknown, f?: number) => void) => {
    setImmediate(() => (options.all ? cb(null, [{ address: '127.0.0.1', family: 4 }]) : cb(null, '127.0.0.1', 4)));
  }) as never;
  const registry = new Registry();
  const r = new JwksResolver({ registry, lookup, maxLookups: 2, timeoutMs: 2_000, retryMs: 60_000, maxRetryMs: 60_000 });
  const uris = ['a', 'b', 'c', 'd', 'e', 'f'].map((h) => `http://${h}.test:${port}/jwks`);
  try {
    r.want(uris.map((u) => [u, 'shop'] as const));
    await until('every URI fetched', () => uris.every((u) => r.snapshot().get(u)?.jwks === JWKS), 5000);
    assert.equal(await fetched(registry, 'unreachable'), 0);
  } finally {
    r.stop();
    await server.close();
  }
});

// istiod fetches a jwksUri within the push that first needs it (GetPublicKey on the main flow): a
// restarted controller must not publish a JWKS that refuses every token while its fetches run.
test('a (re)started controller\'s first publish carries the keys of every jwksUri, never the JWKS that verifies nothing', async () => {
  const server = await startJwksServer({ kind: 'jwks', body: JWKS, delayMs: 150 });
  const m = await startMesh([ra('jwt', [{ issuer: ISSUER, jwksUri: server.url }])]);
  try {
    assert.equal(m.h.controller.model?.requestAuthentications.get('shop/jwt')?.jwtRules[0]?.jwks, JWKS, 'the first model');
    assert.equal(m.wp.snapshot?.requestAuthentications?.[0]?.jwtRules[0]?.jwks, JWKS, 'the waypoint\'s first snapshot');
    assert.equal(await m.status(token()), PASSED);
    assert.notEqual(m.raStatus()?.reason, 'JwksPending');
  } finally {
    await m.close();
    await server.close();
  }
});

test('--jwks-ca: the controller trusts an identity provider behind a private CA for https jwksUri (istiod\'s /cacerts/extra.pem)', async () => {
  assert.equal(parseControllerArgs(['--config-dir', '/x', '--jwks-ca', '/etc/weft/jwks-ca.pem']).jwksCaFile, '/etc/weft/jwks-ca.pem');
  const ca = createTestCa('IdP private CA');
  const server = await startJwksServer({ kind: 'jwks', body: JWKS }, ca.issue(undefined, ['127.0.0.1']));
  const dir = mkdtempSync(join(tmpdir(), 'weft-jwks-ca-'));
  writeFileSync(join(dir, 'ca.pem'), ca.cert);
  writeFileSync(join(dir, 'mesh.yaml'), [ns('shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'waypoint' }), waypoint('shop', 'waypoint'), svc('shop', 'reviews'), ra('jwt', [{ issuer: ISSUER, jwksUri: server.url }])].map((o) => stringify(o)).join('---\n'));
  const running = await runController({ configDir: dir, jwksCaFile: join(dir, 'ca.pem'), insecure: true, listenAddress: '127.0.0.1', grpcPort: 0, metricsPort: 0, readyPort: 0, adminPort: 0, logger: silentLogger });
  try {
    assert.equal(running.controller.model?.requestAuthentications.get('shop/jwt')?.jwtRules[0]?.jwks, JWKS);
  } finally {
    await running.stop();
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

// --jwks-ca adds to the CAs Node trusts by default (tls.getCACertificates('default'): the bundled
// roots and NODE_EXTRA_CA_CERTS), as istiod appends /cacerts/extra.pem to the system pool
// (pilot/pkg/model/jwks_resolver.go: x509.SystemCertPool, then AppendCertsFromPEM); it replaced
// them with the bundled roots, so an IdP behind a CA given by NODE_EXTRA_CA_CERTS was refused `tls`
// once an operator named any CA. NODE_EXTRA_CA_CERTS is read when a process starts: a child's fetch.
test('--jwks-ca adds to Node\'s default CAs: with it set, an IdP whose certificate chains to a CA given only by NODE_EXTRA_CA_CERTS is still fetched; an unknown CA is still refused tls', async (t) => {
  const viaEnv = createTestCa('CA of NODE_EXTRA_CA_CERTS');
  const jwksCa = createTestCa('CA of --jwks-ca');
  const unknown = createTestCa('CA nobody trusts');
  const server = await startJwksServer({ kind: 'jwks', body: JWKS }, viaEnv.issue(undefined, ['127.0.0.1']));
  const stranger = await startJwksServer({ kind: 'jwks', body: JWKS }, unknown.issue(undefined, ['127.0.0.1']));
  const dir = mkdtempSync(join(tmpdir(), 'weft-jwks-ca-default-'));
  t.after(async () => {
    await server.close();
    await stranger.close();
    rmSync(dir, { recursive: true, force: true });
  });
  writeFileSync(join(dir, 'extra.pem'), viaEnv.cert);
  const resolver = new URL('../../controller/src/jwks-resolver.ts', import.meta.url).href;
  const boundedGetUrl = new URL('../../lib/bounded-get.ts', import.meta.url).href;
  const script = `import { fetchJwks } from ${JSON.stringify(resolver)};
import { withDefaultCas } from ${JSON.stringify(boundedGetUrl)};
const ca = withDefaultCas([process.env.JWKS_CA]);
for (const url of process.argv.slice(1)) {
  const r = await fetchJwks(url, { ca, timeoutMs: 3000 }).then(() => 'ok', (e) => e.code);
  console.log(r);
}`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script, server.url, stranger.url], {
    env: { ...process.env, NODE_EXTRA_CA_CERTS: join(dir, 'extra.pem'), JWKS_CA: jwksCa.cert, NODE_OPTIONS: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => { if (child.exitCode === null) child.kill(); });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
  const [code] = await Promise.race([once(child, 'exit'), new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`the child did not finish within 20 s: ${out} ${err}`)), 20_000).unref())]);
  assert.equal(code, 0, err);
  assert.deepEqual(out.trim().split('\n'), ['ok', 'tls'], 'the CA of NODE_EXTRA_CA_CERTS is trusted beside --jwks-ca; an unknown CA is not');
});

test('one namespace holds at most maxUrisPerNamespace URIs: a tenant naming many cannot take the slots of the others; its URI past it is refused, counted over-limit and named', async () => {
  const registry = new Registry();
  const fetchedUris: string[] = [];
  const r = new JwksResolver({ registry, maxUris: 256, maxUrisPerNamespace: 2, fetch: (uri) => { fetchedUris.push(uri); return Promise.resolve(JWKS); } });
  try {
    const hostile = ['https://h1.example/jwks', 'https://h2.example/jwks', 'https://h3.example/jwks'];
    r.want([...hostile.map((u) => [u, 'hostile'] as const), ['https://idp.example/jwks', 'shop'], ['https://h3.example/jwks', 'web']]);
    r.want([...hostile.map((u) => [u, 'hostile'] as const), ['https://idp.example/jwks', 'shop'], ['https://shared.example/jwks', 'hostile'], ['https://shared.example/jwks', 'shop']]);
    assert.deepEqual(fetchedUris.sort(), ['https://h1.example/jwks', 'https://h2.example/jwks', 'https://h3.example/jwks', 'https://idp.example/jwks', 'https://shared.example/jwks'], 'h3 through web, shared through shop');
    r.want([...hostile.map((u) => [u, 'hostile'] as const), ['https://h4.example/jwks', 'hostile'], ['https://idp.example/jwks', 'shop']]);
    assert.match(r.snapshot().get('https://h4.example/jwks')!.error!, /namespace hostile names 2 or more held jwksUri already, the most the controller fetches for one namespace/);
    assert.equal(r.snapshot().get('https://h4.example/jwks')!.result, 'over-limit');
    assert.equal(await fetched(registry, 'over-limit'), 1);
    assert.equal(fetchedUris.includes('https://h4.example/jwks'), false);
  } finally {
    r.stop();
  }
});

// Fetched keys are inlined into every rule naming their URI: a tenant naming one large JWKS in
// thousands of rules made config bodies of hundreds of MB (past V8's string limit the compile
// threw). A namespace's rules carry at most MAX_FETCHED_JWKS_BYTES_PER_NAMESPACE of fetched keys;
// past it a rule verifies nothing (401 for its issuer) and the object says why at the field.
test('one namespace\'s rules carry at most MAX_FETCHED_JWKS_BYTES_PER_NAMESPACE of fetched keys; past it a rule verifies nothing, named JwksBudgetExceeded at its jwksUri, and another namespace keeps its keys', () => {
  const uri = 'https://idp.example/jwks';
  const big = JSON.stringify({ ...JSON.parse(JWKS), padding: 'x'.repeat(60_000) });
  const jwks = new Map([[uri, { jwks: big, version: 1 }]]);
  const rules = Array.from({ length: 40 }, (_, i) => ({ issuer: `${ISSUER}/${i}`, jwksUri: uri }));
  const other = { ...ra('other', [{ issuer: ISSUER, jwksUri: uri }]), metadata: { name: 'other', namespace: 'books', generation: 1 } } as RequestAuthentication;
  const inputs = { ...emptyInputs(), namespaces: [ns('shop'), ns('books')], services: [svc('shop', 'reviews'), svc('books', 'reviews')], requestAuthentications: [ra('many', rules), other] };
  const { model, findings } = compile(inputs, { jwks });
  const carried = model.requestAuthentications.get('shop/many')!.jwtRules.filter((r) => r.jwks === big).length;
  assert.equal(carried, Math.floor(MAX_FETCHED_JWKS_BYTES_PER_NAMESPACE / big.length));
  const over = findings.filter((f) => f.reason === 'JwksBudgetExceeded');
  assert.equal(over.length, rules.length - carried);
  assert.equal(over[0]!.path, `spec.jwtRules[${carried}].jwksUri`);
  assert.equal(model.requestAuthentications.get('shop/many')!.jwtRules[carried]!.jwks, unfetchedJwks(uri), 'past the budget: verifies nothing');
  assert.equal(model.requestAuthentications.get('books/other')!.jwtRules[0]!.jwks, big, 'another namespace keeps its keys');
});
