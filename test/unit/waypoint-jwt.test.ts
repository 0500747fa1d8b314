// RequestAuthentication at the waypoint, end to end through the engine: tokens checked as Istio
// documents (https://istio.io/latest/docs/reference/config/security/request_authentication/ and
// https://istio.io/latest/docs/tasks/security/authentication/authn-policy/#end-user-authentication),
// refusals answered as Envoy's jwt_authn answers them (401, WWW-Authenticate, response code details),
// counted by reason and logged within the refusal budget; AuthorizationPolicy's requestPrincipals
// and request.auth.* judged on what was verified.
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { AuthorizationPolicy, RequestAuthentication } from '../../lib/model/mesh.ts';
import type { JwtRule } from '../../lib/policy/jwt.ts';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import {
  CALLER, backend, config, echo, endpoint, h2request, match, metricSamples, request, route, service, startHttpBackend, startTunnelListener,
  type Backend, type Listener,
} from '../../waypoint/testing/harness.ts';
import { H2, H2_PREFACE, h2Frame, hpackLiteral } from '../lab/h2-frames.ts';
import { until } from '../lab/wait.ts';
import { hs256WithPublicKey, jwksOf, nowSeconds, signToken, testKey, unsignedToken } from './jwt-fixtures.ts';

const ISS = 'testing@secure.istio.io';
const key = testKey('rsa', 'istio-test');
const stranger = testKey('rsa', 'istio-test');
const claims = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({ iss: ISS, sub: 'alice', exp: nowSeconds() + 600, ...extra });

function ra(name: string, rules: JwtRule[], targets = ['shop/reviews']): RequestAuthentication {
  return { name, namespace: 'shop', targetServices: targets, jwtRules: rules };
}
function policy(name: string, action: AuthorizationPolicy['action'], rules: AuthorizationPolicy['rules']): AuthorizationPolicy {
  return { name, namespace: 'shop', action, scope: 'service', targetServices: ['shop/reviews'], rules, layer: 'L7' };
}

/** One HTTP/1.1 request written by hand (two Authorization lines, which http.request cannot send). */
function rawRequest(port: number, head: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(`${head}\r\n`));
    let out = '';
    s.on('data', (c: Buffer) => { out += c.toString(); if (/\r\n\r\n/.test(out) && /content-length: 0|\r\n\r\n[^]+/i.test(out)) s.end(); });
    s.on('end', () => resolve(out));
    s.on('close', () => resolve(out));
    s.on('error', reject);
    s.setTimeout(5000, () => { s.destroy(); reject(new Error('raw request timed out')); });
  });
}

async function refusals(engine: WaypointEngine): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const s of await metricSamples(engine, 'weft_waypoint_jwt_refused_total')) out[String(s.labels['reason'])] = s.value;
  return out;
}

type Warning = { msg: string; fields: Record<string, unknown> };

/**
 * A waypoint of namespace shop applying `cfg` (given each echo backend's port by name), reached as
 * 10.96.0.10:80 by CALLER, its warnings pushed to `warnings`; `close` ends it and its backends.
 */
async function jwtWaypoint(names: readonly string[], warnings: Warning[], cfg: (port: (name: string) => number) => Parameters<typeof config>[0]) {
  const backends = new Map<string, Backend>();
  for (const n of names) backends.set(n, await startHttpBackend(echo(n)));
  const engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), telemetry: { accessLog: null, warn: (msg, fields) => warnings.push({ msg, fields }) } });
  engine.applyConfig(config(cfg((n) => backends.get(n)!.port)));
  const l = await startTunnelListener(engine, '10.96.0.10:80', CALLER);
  return {
    engine, l, backend: (n: string) => backends.get(n)!,
    close: async () => {
      await l.close();
      await engine.close();
      for (const b of backends.values()) await b.close();
    },
  };
}

describe('RequestAuthentication at the waypoint (istio.io request_authentication)', () => {
  let b: Backend;
  let engine: WaypointEngine;
  let l: Listener;
  let close: () => Promise<void>;
  const warnings: Warning[] = [];

  before(async () => {
    let backend: (n: string) => Backend;
    ({ engine, l, backend, close } = await jwtWaypoint(['reviews'], warnings, (port) => ({
      services: [service('reviews', '10.96.0.10', [endpoint(port('reviews'))])],
      requestAuthentications: [ra('jwt', [{ issuer: ISS, jwks: jwksOf(key), outputPayloadToHeader: 'x-jwt-payload', outputClaimToHeaders: [{ header: 'x-jwt-sub', claim: 'sub' }] }])],
    })));
    b = backend('reviews');
  });

  after(() => close());

  it('a valid token passes; the token header is removed (forwardOriginalToken false) and the payload and claim headers written', async () => {
    const token = signToken(key, claims());
    const r = await request(l.port, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(r.status, 200, r.body);
    const seen = JSON.parse(r.body).headers as Record<string, string>;
    assert.equal(seen['authorization'], undefined);
    assert.equal(seen['x-jwt-payload'], token.split('.')[1]);
    assert.equal(seen['x-jwt-sub'], 'alice');
  });

  it('a request without a token passes with no principal, and a caller cannot supply the output headers itself', async () => {
    const r = await request(l.port, { headers: { 'x-jwt-payload': 'forged', 'x-jwt-sub': 'admin' } });
    assert.equal(r.status, 200);
    const seen = JSON.parse(r.body).headers as Record<string, string>;
    assert.equal(seen['x-jwt-payload'], undefined);
    assert.equal(seen['x-jwt-sub'], undefined);
  });

  it('refuses an invalid token with 401, Envoy\'s body, WWW-Authenticate and response code details; counts and logs each reason', async () => {
    warnings.length = 0;
    const before = await refusals(engine);
    const cases: Array<[string, string, number]> = [
      ['forged signature', signToken(stranger, claims({ sub: 'admin' })), 401],
      ['alg none', unsignedToken(claims()), 401],
      ['HS256 keyed with the RSA public key', hs256WithPublicKey(key, claims()), 401],
      ['expired', signToken(key, claims({ exp: nowSeconds() - 3600 })), 401],
      ['kid not in the JWKS', signToken(key, claims(), { kid: 'gone' }), 401],
      ['wrong issuer', signToken(key, claims({ iss: 'evil@example.com' })), 401],
    ];
    for (const [what, token, status] of cases) {
      const r = await request(l.port, { path: '/x?keep=1', headers: { authorization: `Bearer ${token}` } });
      assert.equal(r.status, status, `${what}: ${r.body}`);
      assert.equal(r.headers['www-authenticate'], 'Bearer realm="http://reviews.shop.svc.cluster.local/x", error="invalid_token"', what);
      assert.equal(r.headers['x-weft-flags'], undefined, `${what}: Envoy's jwt_authn sets no response flag`);
    }
    const after = await refusals(engine);
    for (const reason of ['bad-signature', 'unsupported-alg', 'expired', 'unknown-kid', 'unknown-issuer']) {
      assert.ok((after[reason] ?? 0) > (before[reason] ?? 0), `${reason} counted: ${JSON.stringify(after)}`);
    }
    const logged = warnings.filter((w) => w.msg === 'JWT refused');
    assert.equal(logged.length, cases.length);
    assert.equal(logged[0]!.fields['service'], 'shop/reviews');
    assert.equal(logged[0]!.fields['peer'], CALLER);
    const samples = await metricSamples(engine, 'istio_requests_total');
    const n = samples.filter((s) => s.labels['response_code'] === '401' && s.labels['response_flags'] === '-').reduce((x, s) => x + s.value, 0);
    assert.ok(n >= cases.length, JSON.stringify(samples));
  });

  it('a token in two places (Authorization twice, or header and access_token) is refused: Found multiple Jwt tokens', async () => {
    const good = signToken(key, claims());
    const forged = signToken(stranger, claims({ sub: 'admin' }));
    const twice = await rawRequest(l.port, `GET / HTTP/1.1\r\nhost: reviews.shop\r\nauthorization: Bearer ${good}\r\nauthorization: Bearer ${forged}\r\nconnection: close\r\n`);
    assert.match(twice, /^HTTP\/1\.1 401/);
    assert.match(twice, /Found multiple Jwt tokens/);
    const both = await request(l.port, { path: `/?access_token=${forged}`, headers: { authorization: `Bearer ${good}` } });
    assert.equal(both.status, 401);
    assert.ok(((await refusals(engine))['multiple-tokens'] ?? 0) >= 2);
  });

  // Istio: "requests with multiple tokens ... the output principal of such requests is undefined"
  // (https://istio.io/latest/docs/reference/config/security/request_authentication/); Envoy refuses
  // them (JwtMultipleTokens). node's HTTP/2 request keeps only the first Authorization field, so the
  // token view is built from the fields as received, for either protocol.
  it('HTTP/2 alike: two Authorization fields (a good token, then a forged one) are refused as multiple tokens, counted and logged, never forwarded', async () => {
    const good = signToken(key, claims());
    const forged = signToken(stranger, claims({ sub: 'admin' }));
    const before = (await refusals(engine))['multiple-tokens'] ?? 0;
    const hits = b.hits;
    warnings.length = 0;
    const block = Buffer.concat(([[':method', 'GET'], [':scheme', 'http'], [':path', '/h2-twice'], [':authority', 'reviews.shop'], ['authorization', `Bearer ${good}`], ['authorization', `Bearer ${forged}`]] as const).map(([n, v]) => hpackLiteral(n, v)));
    const sock = net.connect(l.port, '127.0.0.1');
    sock.on('error', () => {});
    try {
      sock.write(Buffer.concat([H2_PREFACE, h2Frame(H2.SETTINGS, 0, 0, Buffer.alloc(0)), h2Frame(H2.HEADERS, H2.END_HEADERS | H2.END_STREAM, 1, block)]));
      await until('the two tokens are refused (multiple-tokens counted)', async () => ((await refusals(engine))['multiple-tokens'] ?? 0) === before + 1, 10_000);
    } finally {
      sock.destroy();
    }
    const line = warnings.find((w) => w.msg === 'JWT refused' && w.fields['reason'] === 'multiple-tokens');
    assert.ok(line, `a warning names multiple-tokens: ${JSON.stringify(warnings)}`);
    assert.match(String(line.fields['detail']), /header:authorization/);
    assert.equal(b.hits, hits, 'the backend saw nothing');
  });

  it('HTTP/2 alike: a valid token passes with its header removed, a forged one is 401', async () => {
    const session = http2.connect(`http://127.0.0.1:${l.port}`);
    try {
      const ok = await h2request(session, { ':path': '/', ':authority': 'reviews.shop', authorization: `Bearer ${signToken(key, claims())}` });
      assert.equal(ok.status, 200, ok.body);
      assert.equal((JSON.parse(ok.body).headers as Record<string, string>)['authorization'], undefined);
      const forged = await h2request(session, { ':path': '/', ':authority': 'reviews.shop', authorization: `Bearer ${signToken(stranger, claims())}` });
      assert.equal(forged.status, 401);
    } finally {
      session.close();
    }
  });

  it('an oversized token never reaches the backend (the header bound answers 431 first)', async () => {
    const big = signToken(key, claims({ pad: 'x'.repeat(20_000) }));
    const r = await request(l.port, { headers: { authorization: `Bearer ${big}` } });
    assert.equal(r.status, 431);
  });
});

describe('AuthorizationPolicy on what RequestAuthentication verified, at the waypoint', () => {
  let b: Backend;
  let engine: WaypointEngine;
  let l: Listener;
  let close: () => Promise<void>;
  const warnings: Warning[] = [];

  before(async () => {
    let backend: (n: string) => Backend;
    ({ engine, l, backend, close } = await jwtWaypoint(['reviews'], warnings, (port) => ({
      services: [service('reviews', '10.96.0.10', [endpoint(port('reviews'))])],
      requestAuthentications: [ra('jwt', [{ issuer: ISS, jwks: jwksOf(key), audiences: ['reviews'] }])],
      // https://istio.io/latest/docs/tasks/security/authentication/authn-policy/#require-a-valid-token
      // and #require-valid-tokens-per-path: requestPrincipals ["*"], a claim in `when`.
      policies: [policy('require-jwt', 'ALLOW', [
        { from: [{ requestPrincipals: [`${ISS}/*`] }], to: [], when: [{ key: 'request.auth.claims[groups]', values: ['group1'] }], layer: 'L7' },
        { from: [{ requestPrincipals: ['*'] }], to: [{ paths: ['/public'] }], when: [], layer: 'L7' },
      ]), policy('no-admin-scope', 'DENY', [
        { from: [], to: [{ paths: ['/public'] }], when: [{ key: 'request.auth.claims[scope]', values: ['admin'] }], layer: 'L7' },
      ])],
    })));
    b = backend('reviews');
  });

  after(() => close());

  it('requestPrincipals ["*"]: no token is 403 (RBAC), a valid one 200', async () => {
    const none = await request(l.port, { path: '/public' });
    assert.equal(none.status, 403);
    assert.equal(none.headers['x-weft-flags'], 'RBAC');
    const ok = await request(l.port, { path: '/public', headers: { authorization: `Bearer ${signToken(key, claims({ aud: 'reviews' }))}` } });
    assert.equal(ok.status, 200, ok.body);
  });

  it('request.auth.claims[groups] with a list-of-strings claim: group1 passes, another group is 403', async () => {
    const yes = await request(l.port, { path: '/x', headers: { authorization: `Bearer ${signToken(key, claims({ aud: 'reviews', groups: ['group1', 'group2'] }))}` } });
    assert.equal(yes.status, 200, yes.body);
    const no = await request(l.port, { path: '/x', headers: { authorization: `Bearer ${signToken(key, claims({ aud: 'reviews', groups: ['group2'] }))}` } });
    assert.equal(no.status, 403);
    const wrongType = await request(l.port, { path: '/x', headers: { authorization: `Bearer ${signToken(key, claims({ aud: 'reviews', groups: 1 }))}` } });
    assert.equal(wrongType.status, 403, 'a claim of another type never matches');
  });

  // Istio has Envoy's jwt_authn turn `scope` (and `permission`) into the list of its words for
  // RBAC (pilot authn buildSpaceDelimitedClaims, normalize_payload_in_metadata; RFC 8693 4.2).
  it('a DENY on request.auth.claims[scope] holds for a token whose scope lists it among others: 403, counted RBAC, named', async () => {
    const r = await request(l.port, { path: '/public', headers: { authorization: `Bearer ${signToken(key, claims({ aud: 'reviews', scope: 'read admin' }))}` } });
    assert.equal(r.status, 403, r.body);
    assert.equal(r.headers['x-weft-flags'], 'RBAC');
    assert.match(r.body, /shop\/no-admin-scope/);
    const ok = await request(l.port, { path: '/public', headers: { authorization: `Bearer ${signToken(key, claims({ aud: 'reviews', scope: 'read administrator' }))}` } });
    assert.equal(ok.status, 200, ok.body);
    const samples = await metricSamples(engine, 'istio_requests_total');
    assert.ok(samples.some((x) => x.labels['response_code'] === '403' && x.labels['response_flags'] === 'RBAC' && x.value >= 1), JSON.stringify(samples));
  });

  it('an audience not allowed is 403 from the JWT check itself (Envoy JwtAudienceNotAllowed), counted', async () => {
    const r = await request(l.port, { path: '/public', headers: { authorization: `Bearer ${signToken(key, claims({ aud: 'other' }))}` } });
    assert.equal(r.status, 403);
    assert.match(r.body, /Audiences in Jwt are not allowed/);
    assert.equal(r.headers['x-weft-flags'], undefined);
    assert.ok(((await refusals(engine))['audience-not-allowed'] ?? 0) >= 1);
  });

  it('a RequestAuthentication that a new config drops stops applying; one with bad keys costs only its own tokens', async () => {
    const applied = engine.applyConfig(config({
      services: [service('reviews', '10.96.0.10', [endpoint(b.port)])],
      requestAuthentications: [ra('broken', [{ issuer: ISS, jwks: '{"keys": "nope"}' }])],
    }));
    const issues = applied.issues.filter((i) => i.kind === 'RequestAuthentication');
    assert.equal(issues[0]?.path, 'jwtRules[0].jwks');
    assert.equal((await request(l.port)).status, 200, 'requests without a token still pass');
    assert.equal((await request(l.port, { headers: { authorization: `Bearer ${signToken(key, claims())}` } })).status, 401);
    // A controller of another version sends a shape this waypoint cannot read: that rule is left
    // out and named, nothing throws, the rest of the config applies.
    const skew = engine.applyConfig(config({
      services: [service('reviews', '10.96.0.10', [endpoint(b.port)])],
      requestAuthentications: [ra('skew', [{ issuer: ISS, jwks: jwksOf(key), fromHeaders: 'authorization' } as unknown as JwtRule, { issuer: ISS, jwks: jwksOf(key) }])],
    }));
    assert.deepEqual(skew.issues.filter((i) => i.kind === 'RequestAuthentication').map((i) => i.path), ['jwtRules[0]']);
    assert.equal((await request(l.port, { headers: { authorization: `Bearer ${signToken(key, claims())}` } })).status, 200, 'the well-formed rule verifies');
    // Envoy's jwt_verify_lib skips a key it cannot use: the rest of the JWKS verifies, the left-out key is named.
    const mixed = engine.applyConfig(config({
      services: [service('reviews', '10.96.0.10', [endpoint(b.port)])],
      requestAuthentications: [ra('mixed', [{ issuer: ISS, jwks: JSON.stringify({ keys: [{ kty: 'XYZ' }, ...JSON.parse(jwksOf(key)).keys] }) }])],
    }));
    const skipped = mixed.issues.filter((i) => i.kind === 'RequestAuthentication');
    assert.deepEqual(skipped.map((i) => i.path), ['jwtRules[0].jwks']);
    assert.match(skipped[0]!.message, /keys\[0\]: kty "XYZ" is not RSA, EC or OKP; left out/);
    assert.equal((await request(l.port, { headers: { authorization: `Bearer ${signToken(key, claims())}` } })).status, 200, 'the usable key verifies');
  });

  // Envoy's extractor keys a header location by name and prefix (header + value_prefix): two
  // RequestAuthentications reading Authorization with `Bearer ` and `Token ` each read it
  // (https://istio.io/latest/docs/reference/config/security/request_authentication/ JWTHeader).
  it('Envoy extractor: a forged token under a second rule\'s prefix on Authorization is 401, counted and logged, never forwarded', async () => {
    engine.applyConfig(config({
      services: [service('reviews', '10.96.0.10', [endpoint(b.port)])],
      requestAuthentications: [ra('bearer', [{ issuer: ISS, jwks: jwksOf(key) }]), ra('token', [{ issuer: 'https://token.example', jwks: jwksOf(key), fromHeaders: [{ name: 'Authorization', prefix: 'Token ' }] }])],
    }));
    warnings.length = 0;
    const before = (await refusals(engine))['bad-signature'] ?? 0;
    const hits = b.hits;
    const r = await request(l.port, { headers: { authorization: `Token ${signToken(stranger, claims({ iss: 'https://token.example', sub: 'admin' }))}` } });
    assert.equal(r.status, 401, r.body);
    assert.equal(b.hits, hits, 'the backend saw nothing');
    assert.equal((await refusals(engine))['bad-signature'], before + 1);
    const line = warnings.find((w) => w.msg === 'JWT refused');
    assert.match(String(line?.fields['detail']), /token from header:authorization:Token /);
    assert.equal((await request(l.port, { headers: { authorization: `Token ${signToken(key, claims({ iss: 'https://token.example' }))}` } })).status, 200);
    assert.equal((await request(l.port, { headers: { authorization: `Bearer ${signToken(key, claims())}` } })).status, 200);
  });

  // Envoy's extractor (jwt_authn extractor.cc) finds a header location's prefix anywhere in the value
  // and reads the token from the first JWT character after it: `Basic Zm9v, Bearer <token>`, or a
  // prefix behind a byte a backend's trim takes off (`\xa0Bearer`: Python's str.strip), carries a
  // token that Envoy verifies. The waypoint read the prefix at the start only, so such a value held
  // no token: the request passed without a principal and the backend got the forged token.
  it('Envoy extractor: a forged token behind other text in Authorization is 401, counted, never forwarded; a good one is verified and removed', async () => {
    const forged = signToken(stranger, claims({ sub: 'admin' }));
    const before = (await refusals(engine))['bad-signature'] ?? 0;
    const hits = b.hits;
    for (const value of [`Basic Zm9v, Bearer ${forged}`, `\xa0Bearer ${forged}`, `x Bearer ${forged}`]) {
      const r = await request(l.port, { headers: { authorization: value } });
      assert.equal(r.status, 401, `${JSON.stringify(value.slice(0, 20))}: ${r.body}`);
    }
    assert.equal(b.hits, hits, 'the backend saw none of them');
    assert.equal((await refusals(engine))['bad-signature'], before + 3);
    const ok = await request(l.port, { headers: { authorization: `Basic Zm9v, Bearer ${signToken(key, claims())}` } });
    assert.equal(ok.status, 200, ok.body);
    assert.equal((JSON.parse(ok.body) as { headers: Record<string, string> }).headers['authorization'], undefined, 'the verified token is not forwarded');
  });

  // Envoy's extractor (jwt_authn extractor.cc extract) gives every location its own token: the
  // prefix found with absl find (case-sensitive), the token from the first base64url or `.` after it
  // to the end of the value (envoyproxy/envoy#28678 stopped cutting it at the next other character,
  // so `<token> junk` is malformed, not valid). Its authenticator then requires every token to
  // verify (authenticator.cc doneWithStatus: "a request has a good token and a bad one ... the
  // backend may mistakenly use the bad token"); the waypoint refuses two different tokens outright.
  // Before, one value gave one token, at the longest prefix found anywhere without regard to case:
  // `Token <forged>, Bearer <valid>` was verified as the valid one and the forged one forwarded.
  it('Envoy extractor: every prefix on Authorization yields its own token, so a forged one beside a valid one (or under a case variant of the prefix before it) is 401 (multiple tokens), counted, never forwarded', async () => {
    engine.applyConfig(config({
      services: [service('reviews', '10.96.0.10', [endpoint(b.port)])],
      requestAuthentications: [
        ra('bearer', [{ issuer: ISS, jwks: jwksOf(key), forwardOriginalToken: true }]),
        ra('token', [{ issuer: 'https://token.example', jwks: jwksOf(key), fromHeaders: [{ name: 'Authorization', prefix: 'Token ' }] }]),
      ],
    }));
    const valid = signToken(key, claims());
    const forged = signToken(stranger, claims({ iss: 'https://token.example', sub: 'admin' }));
    const before = await refusals(engine);
    const hits = b.hits;
    // A case variant of `Bearer ` before the token found is refused as two tokens too, stricter than
    // Envoy (which verifies the valid one and, with forwardOriginalToken, passes `bearer <forged>` on
    // first to a backend that may read the scheme case-insensitively, RFC 9110 section 11.1).
    const admin = signToken(stranger, claims({ sub: 'admin' }));
    for (const value of [`Token ${forged}, Bearer ${valid}`, `Bearer ${valid}, Token ${forged}`, `bearer ${admin}, Bearer ${valid}`, `BEARER ${admin}, Bearer ${valid}`]) {
      const r = await request(l.port, { headers: { authorization: value } });
      assert.equal(r.status, 401, `${value.slice(0, 8)}: ${r.body}`);
      assert.match(r.body, /Jwt authentication fails|multiple/i);
    }
    // The token runs to the end of the value, as in Envoy since #28678: trailing text makes it malformed.
    for (const value of [`Bearer ${valid},`, `Bearer ${valid} realm=x`]) {
      const r = await request(l.port, { headers: { authorization: value } });
      assert.equal(r.status, 401, `${JSON.stringify(value.slice(-10))}: ${r.body}`);
    }
    assert.equal(b.hits, hits, 'the backend saw none of them');
    const after = await refusals(engine);
    assert.equal(after['multiple-tokens'], (before['multiple-tokens'] ?? 0) + 4);
    const malformed = Object.entries(after).reduce((n, [k, v]) => n + v - (before[k] ?? 0), 0) - 4;
    assert.equal(malformed, 2, JSON.stringify(after));
    // The prefix is found as written (absl find): another scheme whose parameters hold "bearer "
    // carries no token, and neither does `bearer <token>` (Envoy passes both on unverified).
    for (const value of ['Digest username="u", realm="bearer area"', `bearer ${forged}`]) {
      const r = await request(l.port, { headers: { authorization: value } });
      assert.equal(r.status, 200, `${value.slice(0, 12)}: ${r.body}`);
      assert.equal((JSON.parse(r.body) as { headers: Record<string, string> }).headers['authorization'], value);
    }
    const ok = await request(l.port, { headers: { authorization: `Bearer ${valid}` } });
    assert.equal(ok.status, 200, ok.body);
    assert.equal((JSON.parse(ok.body) as { headers: Record<string, string> }).headers['authorization'], `Bearer ${valid}`, 'forwardOriginalToken keeps it');
  });
});

// https://istio.io/latest/docs/tasks/security/authentication/jwt-route/ routes on a verified claim;
// with the Gateway API, a claim copied to a header (outputClaimToHeaders) is matched by an HTTPRoute
// header match. The route sees the header the waypoint wrote, never one the caller sent.
describe('routing on a verified claim (istio.io jwt-route, with outputClaimToHeaders and an HTTPRoute header match)', () => {
  let l: Listener;
  let close: () => Promise<void>;

  before(async () => {
    ({ l, close } = await jwtWaypoint(['reviews', 'reviews-admin'], [], (port) => ({
      services: [service('reviews', '10.96.0.10', [endpoint(port('reviews'))]), service('reviews-admin', '10.96.0.11', [endpoint(port('reviews-admin'))])],
      routes: [route('by-group', 'reviews', [
        { matches: ['admin', 'Zoë', '管理者'].map((value) => match({ headers: [{ type: 'Exact', name: 'x-jwt-group', value }] })), backends: [backend('reviews-admin')] },
        { matches: [match()], backends: [backend('reviews')] },
      ])],
      requestAuthentications: [ra('jwt', [{ issuer: ISS, jwks: jwksOf(key), outputClaimToHeaders: [{ header: 'x-jwt-group', claim: 'group' }] }])],
    })));
  });

  after(() => close());

  it('a token with group admin goes to reviews-admin; a caller sending x-jwt-group itself does not', async () => {
    const routed = await request(l.port, { headers: { authorization: `Bearer ${signToken(key, claims({ group: 'admin' }))}` } });
    assert.equal(JSON.parse(routed.body).backend, 'reviews-admin');
    const spoofed = await request(l.port, { headers: { 'x-jwt-group': 'admin' } });
    assert.equal(JSON.parse(spoofed.body).backend, 'reviews');
    const other = await request(l.port, { headers: { authorization: `Bearer ${signToken(key, claims({ group: 'dev' }))}`, 'x-jwt-group': 'admin' } });
    assert.equal(JSON.parse(other.body).backend, 'reviews');
  });

  // Envoy's jwt_authn writes a claim's UTF-8 bytes (claim_to_headers); a claim outside ASCII was
  // written one byte a character (`ë` as the latin1 byte), or, past U+00FF, not at all.
  it('a claim outside ASCII is written as its UTF-8 bytes and matched as such', async () => {
    for (const group of ['Zoë', '管理者']) {
      const r = await request(l.port, { headers: { authorization: `Bearer ${signToken(key, claims({ group }))}` } });
      const seen = JSON.parse(r.body) as { backend: string; headers: Record<string, string> };
      assert.equal(seen.backend, 'reviews-admin', group);
      assert.equal(Buffer.from(seen.headers['x-jwt-group']!, 'latin1').toString('utf8'), group);
    }
  });
});
