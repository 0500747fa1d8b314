// RequestAuthentication token checks (lib/policy/jwt.ts), each way, against Istio's reference
// (https://istio.io/latest/docs/reference/config/security/request_authentication/) and Envoy's
// jwt_authn (statuses and codes of jwt_verify_lib): what passes, what is refused and why, and the
// attacker's tokens (forged, alg none, key confusion, a kid not in the JWKS, two tokens, oversized).
import assert from 'node:assert/strict';
import crypto, { generateKeyPairSync } from 'node:crypto';
import { syncBuiltinESMExports } from 'node:module';
import { describe, it, mock } from 'node:test';
import { JWT_CLOCK_SKEW_SECONDS, MAX_KEYS_PER_TOKEN, MAX_TOKEN_BYTES, authenticateRequest, jwksProblem, parseJwks, type JwtRule, type TokenSources } from '../../lib/policy/jwt.ts';
import { hs256WithPublicKey, jwksOf, nowSeconds, signToken, tamper, testKey, unsignedToken } from './jwt-fixtures.ts';

const ISS = 'https://issuer.example';
const rsa = testKey('rsa', 'rsa-1');
const ec = testKey('ec256', 'ec-1');
const ec384 = testKey('ec384', 'ec-2');
const ed = testKey('ed25519', 'ed-1');
const stranger = testKey('rsa', 'rsa-1');
const rule: JwtRule = { issuer: ISS, jwks: jwksOf(rsa, ec, ec384, ed) };
const claims = (extra: Record<string, unknown> = {}): Record<string, unknown> => ({ iss: ISS, sub: 'alice', exp: nowSeconds() + 300, ...extra });
const bearer = (token: string, extra: TokenSources['headers'] = {}): TokenSources => ({ headers: { authorization: `Bearer ${token}`, ...extra }, query: '' });

function refused(rules: JwtRule[], src: TokenSources, reason: string, status = 401, nowMs?: number): void {
  const out = authenticateRequest(rules, src, nowMs);
  assert.equal(out.kind, 'refused', JSON.stringify(out));
  if (out.kind !== 'refused') return;
  assert.equal(out.reason, reason, out.detail);
  assert.equal(out.status, status);
}

describe('RequestAuthentication: tokens that pass (istio.io request_authentication)', () => {
  it('verifies RS256, ES256, ES384 and EdDSA (node:crypto JWK import) and names the request principal iss/sub', () => {
    for (const k of [rsa, ec, ec384, ed]) {
      const out = authenticateRequest([rule], bearer(signToken(k, claims())));
      assert.equal(out.kind, 'verified', `${k.alg}: ${JSON.stringify(out)}`);
      if (out.kind === 'verified') assert.deepEqual([out.auth.issuer, out.auth.subject], [ISS, 'alice']);
    }
  });

  it('verifies RS384, RS512 and PS256 with the RSA key', () => {
    for (const alg of ['RS384', 'RS512', 'PS256', 'PS384']) assert.equal(authenticateRequest([rule], bearer(signToken(rsa, claims(), { alg }))).kind, 'verified', alg);
  });

  it('admits a request without a token, with no request principal (an AuthorizationPolicy must require one)', () => {
    const out = authenticateRequest([rule], { headers: {}, query: '' });
    assert.equal(out.kind, 'none');
    assert.equal(authenticateRequest([rule], { headers: { authorization: 'Basic dXNlcjpwdw==' }, query: '' }).kind, 'none', 'another scheme in Authorization is no token');
  });

  it('reads the default locations: Authorization Bearer, then the access_token query parameter', () => {
    const t = signToken(rsa, claims());
    assert.equal(authenticateRequest([rule], { headers: {}, query: `a=1&access_token=${t}` }).kind, 'verified');
  });

  it('reads fromHeaders (with prefix), fromParams and fromCookies, and only those when set', () => {
    const t = signToken(rsa, claims());
    const custom: JwtRule = { ...rule, fromHeaders: [{ name: 'x-jwt', prefix: 'Token ' }], fromParams: ['jwt'], fromCookies: ['session'] };
    assert.equal(authenticateRequest([custom], { headers: { 'x-jwt': `Token ${t}` }, query: '' }).kind, 'verified');
    assert.equal(authenticateRequest([custom], { headers: {}, query: `jwt=${t}` }).kind, 'verified');
    assert.equal(authenticateRequest([custom], { headers: { cookie: `a=b; session=${t}` }, query: '' }).kind, 'verified');
    assert.equal(authenticateRequest([custom], bearer(t)).kind, 'none', 'Authorization is not read once fromHeaders is set');
  });

  it('accepts an audience from the list (aud as a string or a list), and any audience when audiences is empty', () => {
    const aud: JwtRule = { ...rule, audiences: ['shop', 'books'] };
    assert.equal(authenticateRequest([aud], bearer(signToken(rsa, claims({ aud: 'books' })))).kind, 'verified');
    const out = authenticateRequest([aud], bearer(signToken(rsa, claims({ aud: ['web', 'shop'], azp: 'front' }))));
    assert.equal(out.kind, 'verified');
    if (out.kind === 'verified') { assert.deepEqual(out.auth.audiences, ['web', 'shop']); assert.equal(out.auth.presenter, 'front'); }
    assert.equal(authenticateRequest([rule], bearer(signToken(rsa, claims({ aud: 'anything' })))).kind, 'verified');
  });

  it('allows Envoy\'s 60 s clock skew on exp and nbf, to the second', () => {
    const now = nowSeconds();
    assert.equal(authenticateRequest([rule], bearer(signToken(rsa, claims({ exp: now - JWT_CLOCK_SKEW_SECONDS }))), now * 1000).kind, 'verified');
    assert.equal(authenticateRequest([rule], bearer(signToken(rsa, claims({ nbf: now + JWT_CLOCK_SKEW_SECONDS }))), now * 1000).kind, 'verified');
    refused([rule], bearer(signToken(rsa, claims({ exp: now - JWT_CLOCK_SKEW_SECONDS - 1 }))), 'expired', 401, now * 1000);
    refused([rule], bearer(signToken(rsa, claims({ nbf: now + JWT_CLOCK_SKEW_SECONDS + 1 }))), 'not-yet-valid', 401, now * 1000);
  });

  it('removes the token header unless forwardOriginalToken, writes outputPayloadToHeader and outputClaimToHeaders', () => {
    const t = signToken(rsa, claims({ groups: ['a', 'b'], org: { team: 'blue' } }));
    const out = authenticateRequest([{ ...rule, outputPayloadToHeader: 'x-jwt-payload', outputClaimToHeaders: [{ header: 'x-groups', claim: 'groups' }, { header: 'x-team', claim: 'org.team' }, { header: 'x-none', claim: 'missing' }] }], bearer(t));
    assert.equal(out.kind, 'verified');
    if (out.kind !== 'verified') return;
    assert.ok(out.edits.remove.includes('authorization'));
    assert.deepEqual(out.edits.set, [{ name: 'x-jwt-payload', value: t.split('.')[1] }, { name: 'x-groups', value: 'a,b' }, { name: 'x-team', value: 'blue' }]);
    const kept = authenticateRequest([{ ...rule, forwardOriginalToken: true }], bearer(t));
    assert.ok(kept.kind === 'verified' && !kept.edits.remove.includes('authorization'));
  });

  it('names the space-delimited claims Istio normalizes for policy (scope, permission, and the rule\'s spaceDelimitedClaims); the claim headers keep the token\'s text', () => {
    const t = signToken(rsa, claims({ scope: 'read admin', roles: 'a b' }));
    const withRoles: JwtRule = { ...rule, spaceDelimitedClaims: ['roles'], outputClaimToHeaders: [{ header: 'x-scope', claim: 'scope' }] };
    const out = authenticateRequest([withRoles], bearer(t));
    assert.equal(out.kind, 'verified');
    if (out.kind !== 'verified') return;
    // Split once, when the token is verified (the verified-token cache keeps the words with it).
    assert.deepEqual(Object.fromEntries(out.auth.claimWords ?? []), { scope: ['read', 'admin'], roles: ['a', 'b'] });
    assert.deepEqual(out.edits.set, [{ name: 'x-scope', value: 'read admin' }]);
    const plain = authenticateRequest([rule], bearer(t));
    assert.ok(plain.kind === 'verified');
    assert.deepEqual(Object.fromEntries(plain.auth.claimWords ?? []), { scope: ['read', 'admin'] }, 'Istio\'s default set');
  });

  it('tries every rule of the token\'s issuer (two RequestAuthentications for one issuer merge)', () => {
    const other: JwtRule = { issuer: ISS, jwks: jwksOf(testKey('rsa', 'rsa-9')) };
    assert.equal(authenticateRequest([other, rule], bearer(signToken(rsa, claims()))).kind, 'verified');
  });
});

describe('RequestAuthentication: the attacker\'s tokens are refused (401, Envoy\'s status) and say why', () => {
  // Envoy's extractor finds a prefix with absl find, as written (extractor.cc extract): a value
  // without `Bearer ` holds no token for it, whatever case the scheme is in or wherever "bearer "
  // appears in another scheme's parameters. The request goes on without a principal, so a policy
  // asking for one (requestPrincipals) refuses it; the header is passed on as it came.
  it('a prefix is found as written (Envoy: absl find): "bearer <token>" or "realm=\\"bearer area\\"" holds no token, and the header is left as it came', () => {
    for (const value of [`bearer ${signToken(stranger, claims())}`, `BEARER ${signToken(rsa, claims())}`, 'Digest username="u", realm="bearer area"']) {
      const o = authenticateRequest([rule], { headers: { authorization: value }, query: '' });
      assert.equal(o.kind, 'none', value.slice(0, 12));
      assert.deepEqual(o.edits.remove, []);
    }
  });

  // Stricter than Envoy, whose exact find takes the valid token and passes the whole value on: a
  // value whose token was found under the prefix as written but which also holds a case variant of
  // it before (`bearer <forged>, Bearer <valid>`) is refused as two tokens, since a backend may read
  // the scheme case-insensitively (RFC 9110 section 11.1) and take the forged one, which
  // forwardOriginalToken would pass on.
  it('a case variant of the prefix before the token found ("bearer <forged>, Bearer <valid>") is refused as two tokens (stricter than Envoy)', () => {
    const valid = signToken(rsa, claims());
    const forged = signToken(stranger, claims({ sub: 'admin' }));
    for (const forward of [false, true]) {
      for (const value of [`bearer ${forged}, Bearer ${valid}`, `BEARER ${forged}, Bearer ${valid}`, `Basic Zm9v, bEaReR ${forged}, Bearer ${valid}`]) {
        refused([{ ...rule, forwardOriginalToken: forward }], { headers: { authorization: value }, query: '' }, 'multiple-tokens');
      }
    }
    const token: JwtRule = { issuer: ISS, jwks: jwksOf(rsa), fromHeaders: [{ name: 'x-auth', prefix: 'Token ' }] };
    refused([token], { headers: { 'x-auth': `token ${forged}, Token ${valid}` }, query: '' }, 'multiple-tokens');
    // A case variant only after the token found is inside it: malformed, as before.
    refused([rule], { headers: { authorization: `Bearer ${valid}, bearer ${forged}` }, query: '' }, 'malformed');
    assert.equal(authenticateRequest([rule], bearer(valid)).kind, 'verified');
  });

  it('a forged signature: a key of the same kid not in the JWKS, and a payload changed after signing', () => {
    refused([rule], bearer(signToken(stranger, claims())), 'bad-signature');
    refused([rule], bearer(tamper(signToken(rsa, claims()), claims({ sub: 'admin' }))), 'bad-signature');
  });

  it('alg none (RFC 7519 section 6) is refused, also with an empty or dropped signature', () => {
    refused([rule], bearer(unsignedToken(claims())), 'unsupported-alg');
    refused([rule], bearer(unsignedToken(claims()).slice(0, -1)), 'malformed');
  });

  it('key confusion: HS256 keyed with the issuer\'s RSA public key is refused (no HMAC algorithm at all)', () => {
    refused([rule], bearer(hs256WithPublicKey(rsa, claims())), 'unsupported-alg');
  });

  it('an algorithm the key does not fit: ES256 signed by an RSA kid, RS256 under an EC kid', () => {
    refused([rule], bearer(signToken(ec, claims(), { kid: 'rsa-1' })), 'unknown-kid');
    refused([rule], bearer(signToken(rsa, claims(), { alg: 'RS256', kid: 'ec-1' })), 'unknown-kid');
  });

  it('a kid not in the JWKS', () => {
    refused([rule], bearer(signToken(rsa, claims(), { kid: 'rotated-away' })), 'unknown-kid');
  });

  it('expired exp and future nbf beyond the 60 s skew', () => {
    refused([rule], bearer(signToken(rsa, claims({ exp: nowSeconds() - JWT_CLOCK_SKEW_SECONDS - 5 }))), 'expired');
    refused([rule], bearer(signToken(rsa, claims({ nbf: nowSeconds() + JWT_CLOCK_SKEW_SECONDS + 30 }))), 'not-yet-valid');
  });

  it('a wrong issuer, or none: "Jwt issuer is not configured"', () => {
    refused([rule], bearer(signToken(rsa, claims({ iss: 'https://evil.example' }))), 'unknown-issuer');
    const { iss: _i, ...noIss } = claims();
    refused([rule], bearer(signToken(rsa, noIss)), 'unknown-issuer');
  });

  it('a token of an issuer whose rule reads another location is not verified by it', () => {
    const other: JwtRule = { issuer: 'https://other.example', jwks: jwksOf(rsa), fromHeaders: [{ name: 'x-other' }] };
    refused([rule, other], bearer(signToken(rsa, claims({ iss: 'https://other.example' }))), 'unknown-issuer');
  });

  it('a wrong audience: 403, as Envoy answers JwtAudienceNotAllowed', () => {
    refused([{ ...rule, audiences: ['shop'] }], bearer(signToken(rsa, claims({ aud: ['web'] }))), 'audience-not-allowed', 403);
    refused([{ ...rule, audiences: ['shop'] }], bearer(signToken(rsa, claims())), 'audience-not-allowed', 403);
  });

  // Envoy's CheckAudience (source/common/jwt/check_audience.cc) compares audiences with an `http://`
  // or `https://` prefix and one trailing `/` taken off, in the rule and in the token alike; its
  // check_audience_test.cc table. Nothing else is taken off: another scheme, a second slash, case.
  it('audiences are compared as Envoy\'s CheckAudience: without http(s):// and one trailing slash, nothing more', () => {
    for (const [configured, aud] of [['shop', 'https://shop/'], ['shop', 'http://shop'], ['shop', 'shop/'], ['https://shop/', 'shop'], ['http://shop', 'https://shop/']]) {
      assert.equal(authenticateRequest([{ ...rule, audiences: [configured!] }], bearer(signToken(rsa, claims({ aud })))).kind, 'verified', `${configured} and ${aud}`);
    }
    for (const [configured, aud] of [['shop', 'ftp://shop'], ['shop', 'shop//'], ['shop', 'Shop'], ['shop', 'https://shop/x'], ['shop', 'HTTPS://shop'], ['shop', '']]) {
      refused([{ ...rule, audiences: [configured!] }], bearer(signToken(rsa, claims({ aud }))), 'audience-not-allowed', 403);
    }
  });

  it('two different tokens (header and query, or two Authorization lines) are refused: Found multiple Jwt tokens; the same token twice is one', () => {
    const good = signToken(rsa, claims());
    const forged = signToken(stranger, claims({ sub: 'admin' }));
    refused([rule], { headers: { authorization: `Bearer ${good}` }, query: `access_token=${forged}` }, 'multiple-tokens');
    refused([rule], { headers: { authorization: [`Bearer ${forged}`, `Bearer ${good}`] }, query: '' }, 'multiple-tokens');
    refused([rule], { headers: { authorization: [`Bearer ${good}`, `Bearer ${signToken(rsa, claims({ sub: 'bob' }))}`] }, query: '' }, 'multiple-tokens');
    const same = authenticateRequest([rule], { headers: { authorization: `Bearer ${good}` }, query: `access_token=${good}` });
    assert.equal(same.kind, 'verified');
    refused([rule], { headers: { authorization: `Bearer ${forged}` }, query: `access_token=${forged}` }, 'bad-signature');
  });

  // Envoy's jwt_authn keys a header location by name and prefix (extractor.cc addHeaderConfig:
  // header + value_prefix), so two rules reading one header with different prefixes each read it
  // (https://istio.io/latest/docs/reference/config/security/request_authentication/ JWTHeader.prefix).
  it('Envoy extractor: two rules reading Authorization with different prefixes each read it; a forged "Token " token is 401, not passed on', () => {
    const token: JwtRule = { issuer: 'https://other.example', jwks: jwksOf(rsa, ec), fromHeaders: [{ name: 'Authorization', prefix: 'Token ' }] };
    const forged = signToken(stranger, claims({ iss: 'https://other.example' }));
    refused([rule, token], { headers: { authorization: `Token ${forged}` }, query: '' }, 'bad-signature');
    refused([token, rule], { headers: { authorization: `Token ${forged}` }, query: '' }, 'bad-signature');
    assert.equal(authenticateRequest([token, rule], bearer(signToken(rsa, claims()))).kind, 'verified', 'reversed, a valid Bearer token still verifies');
    assert.equal(authenticateRequest([rule, token], { headers: { authorization: `Token ${signToken(ec, claims({ iss: 'https://other.example' }))}` }, query: '' }).kind, 'verified');
    // Every location reads the value on its own: `Token <forged>, Bearer <valid>` holds two tokens,
    // refused together, where one value gave one token and the valid one was verified alone.
    const valid = signToken(rsa, claims());
    refused([rule, token], { headers: { authorization: `Token ${forged}, Bearer ${valid}` }, query: '' }, 'multiple-tokens');
    refused([rule, token], { headers: { authorization: `Bearer ${valid}, Token ${forged}` }, query: '' }, 'multiple-tokens');
    // Overlapping prefixes ("Bearer " and "" on one header): each reads its own token, `<token>` and
    // `Bearer <token>`, two different ones (Envoy would refuse the second as malformed).
    const bare: JwtRule = { ...rule, fromHeaders: [{ name: 'authorization' }] };
    refused([rule, bare], bearer(valid), 'multiple-tokens');
  });

  // The token runs from the first base64url or `.` after the prefix to the end of the value, as in
  // Envoy since envoyproxy/envoy#28678 (extractJWT no longer cuts it at the next other character):
  // text after a valid token makes it malformed.
  it('Envoy extractJWT: a valid token followed by other text (",", " realm=x") is malformed, not verified', () => {
    const valid = signToken(rsa, claims());
    for (const tail of [',', ' realm=x', ' ', '#']) refused([rule], bearer(valid + tail), 'malformed');
    assert.equal(authenticateRequest([rule], { headers: { authorization: `Bearer  \t${valid}` }, query: '' }).kind, 'verified', 'what precedes the token is skipped');
  });

  it('a CORS preflight is not checked (Istio: Envoy bypass_cors_preflight), but callers\' output headers are still dropped', () => {
    const r: JwtRule = { ...rule, outputPayloadToHeader: 'x-jwt-payload' };
    const pre = authenticateRequest([r], { headers: { authorization: `Bearer ${signToken(stranger, claims())}`, origin: 'https://a.example', 'access-control-request-method': 'POST', 'x-jwt-payload': 'forged' }, query: '', method: 'OPTIONS' });
    assert.equal(pre.kind, 'none');
    assert.deepEqual(pre.kind === 'none' && pre.edits.remove, ['x-jwt-payload']);
    refused([r], { headers: { authorization: `Bearer ${signToken(stranger, claims())}`, origin: 'https://a.example' }, query: '', method: 'OPTIONS' }, 'bad-signature');
  });

  it('an oversized token is refused unparsed', () => {
    refused([rule], bearer(signToken(rsa, claims({ pad: 'x'.repeat(MAX_TOKEN_BYTES) }))), 'too-large');
  });

  // RFC 7515 section 4.1.11: a JWS naming critical extensions its reader does not know is invalid
  // (lib/identity/jws.ts, as the waypoint's debug grant already refused it).
  it('RFC 7515 4.1.11: a token naming critical header extensions (crit) is refused as malformed, signature valid or not', () => {
    refused([rule], bearer(signToken(rsa, claims(), { header: { crit: ['exp'], exp: 1 } })), 'malformed');
  });

  it('malformed: two parts, bad base64url, a payload that is not a JSON object', () => {
    refused([rule], bearer('abc.def'), 'malformed');
    refused([rule], bearer('a*c.def.ghi'), 'malformed');
    refused([rule], bearer(`${Buffer.from('{"alg":"RS256"}').toString('base64url')}.${Buffer.from('[1,2]').toString('base64url')}.AA`), 'malformed');
  });

  it('registered claims of the wrong type: exp as a string, sub as a number, aud as a list of numbers, iat as a string (Envoy jwt_verify_lib JwtPayloadParseErrorIatNotInteger)', () => {
    refused([rule], bearer(signToken(rsa, claims({ exp: 'never' }))), 'bad-claim');
    refused([rule], bearer(signToken(rsa, claims({ iat: 'yesterday' }))), 'bad-claim');
    assert.equal(authenticateRequest([rule], bearer(signToken(rsa, claims({ iat: nowSeconds() - 10 })))).kind, 'verified');
    refused([rule], bearer(signToken(rsa, claims({ sub: 7 }))), 'bad-claim');
    refused([rule], bearer(signToken(rsa, claims({ aud: [1] }))), 'bad-claim');
  });

  it('clears callers\' copies of the output headers on every request, token or not', () => {
    const out = authenticateRequest([{ ...rule, outputPayloadToHeader: 'x-jwt-payload', outputClaimToHeaders: [{ header: 'X-User', claim: 'sub' }] }], { headers: { 'x-jwt-payload': 'forged', 'x-user': 'admin' }, query: '' });
    assert.equal(out.kind, 'none');
    if (out.kind === 'none') assert.deepEqual(out.edits.remove.sort(), ['x-jwt-payload', 'x-user']);
  });

  it('a claim with a CR or LF is not copied into a header', () => {
    const out = authenticateRequest([{ ...rule, outputClaimToHeaders: [{ header: 'x-user', claim: 'name' }] }], bearer(signToken(rsa, claims({ name: 'a\r\nx-admin: 1' }))));
    assert.ok(out.kind === 'verified');
    assert.deepEqual(out.edits.set, []);
  });
});

describe('RequestAuthentication: JWKS', () => {
  it('parses RSA, EC and OKP public keys; refuses symmetric keys, private keys, and a document without keys, naming the key', () => {
    assert.equal(parseJwks(jwksOf(rsa, ec, ed)).keys.length, 3);
    assert.throws(() => parseJwks(JSON.stringify({ keys: [{ kty: 'oct', k: 'c2VjcmV0' }] })), /keys\[0\]: symmetric \(oct\) keys are not accepted/);
    assert.throws(() => parseJwks(JSON.stringify({ keys: [rsa.privateKey.export({ format: 'jwk' })] })), /keys\[0\] holds a private key/);
    assert.throws(() => parseJwks('{"keys": []}'), /has no usable signing key/);
    assert.throws(() => parseJwks('not json'), /is not JSON/);
    const weak = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ format: 'jwk' });
    assert.throws(() => parseJwks(JSON.stringify({ keys: [weak] })), /keys\[0\]: an RSA key of 1024 bits; at least 2048/);
  });

  // Envoy's jwt_verify_lib (Jwks::createFromJwksCore) skips a key it cannot use and fails the
  // document only when no key is left; an oct or private key still refuses it whole (validation).
  it('Envoy jwt_verify_lib: a JWKS with one unusable key (another kty, a 1024-bit RSA key) keeps its usable keys, and says which it left out', () => {
    const weak = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ format: 'jwk' });
    const text = JSON.stringify({ keys: [{ kty: 'XYZ', kid: 'future' }, weak, ...JSON.parse(jwksOf(rsa)).keys] });
    const parsed = parseJwks(text);
    assert.equal(parsed.keys.length, 1);
    assert.deepEqual(parsed.skipped.map((x) => x.slice(0, 8)), ['keys[0]:', 'keys[1]:']);
    const mixed: JwtRule = { issuer: ISS, jwks: text };
    assert.equal(authenticateRequest([mixed], bearer(signToken(rsa, claims()))).kind, 'verified');
    refused([mixed], bearer(signToken(stranger, claims())), 'bad-signature');
    assert.deepEqual(jwksProblem(mixed).error, undefined);
    assert.throws(() => parseJwks(JSON.stringify({ keys: [...JSON.parse(jwksOf(rsa)).keys, { kty: 'oct', k: 'c2VjcmV0' }] })), /keys\[1\]: symmetric \(oct\) keys are not accepted/);
  });

  it('a rule whose JWKS does not parse verifies nothing: its tokens are refused, requests without one pass', () => {
    const broken: JwtRule = { issuer: ISS, jwks: 'oops' };
    refused([broken], bearer(signToken(rsa, claims())), 'unknown-kid');
    assert.equal(authenticateRequest([broken], { headers: {}, query: '' }).kind, 'none');
  });
});

/** How many signature checks `fn` makes (node:crypto verify, counted through its builtin export). */
function verifications(fn: () => void): number {
  let n = 0;
  const real = crypto.verify;
  mock.method(crypto, 'verify', (...args: Parameters<typeof crypto.verify>) => { n++; return (real as (...a: unknown[]) => boolean)(...args); });
  syncBuiltinESMExports();
  try {
    fn();
  } finally {
    mock.restoreAll();
    syncBuiltinESMExports();
  }
  return n;
}

describe('RequestAuthentication: what a token costs', () => {
  // Envoy's jwt_cache_config (https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/jwt_authn/v3/config.proto
  // JwtCacheConfig): a verified token is not verified again until it expires.
  it('Envoy jwt_cache_config: a verified token is verified once, still refused past its exp, and not served to other rules', () => {
    const now = nowSeconds();
    const rules = [{ issuer: ISS, jwks: jwksOf(rsa) }];
    const t = signToken(rsa, claims({ sub: 'cached', exp: now + 100 }));
    assert.equal(verifications(() => {
      for (let i = 0; i < 5; i++) assert.equal(authenticateRequest(rules, bearer(t), now * 1000).kind, 'verified');
    }), 1);
    refused(rules, bearer(t), 'expired', 401, (now + 100 + JWT_CLOCK_SKEW_SECONDS + 1) * 1000);
    refused([{ issuer: ISS, jwks: jwksOf(stranger) }], bearer(t), 'bad-signature', 401, now * 1000);
  });

  it('a token without kid costs at most MAX_KEYS_PER_TOKEN signature checks, whatever the JWKS holds', () => {
    const many = Array.from({ length: MAX_KEYS_PER_TOKEN + 4 }, (_, i) => testKey('ec256', `k${i}`));
    const jwks = JSON.stringify({ keys: JSON.parse(jwksOf(...many)).keys.map(({ kid: _k, ...k }: Record<string, unknown>) => k) });
    const rules = [{ issuer: ISS, jwks }];
    const forged = signToken(testKey('ec256', 'x'), claims({ sub: 'costly' }), { kid: null });
    assert.equal(verifications(() => refused(rules, bearer(forged), 'bad-signature')), MAX_KEYS_PER_TOKEN);
    assert.equal(authenticateRequest(rules, bearer(signToken(many[0]!, claims({ sub: 'first' }), { kid: null }))).kind, 'verified');
  });

  it('a token naming its key by kid is verified with that key first, however many keys without a kid come before it in the JWKS (Envoy tries every key that fits)', () => {
    const anonymous = Array.from({ length: MAX_KEYS_PER_TOKEN + 1 }, (_, i) => testKey('ec256', `a${i}`));
    const named = testKey('ec256', 'named');
    const keys = [...JSON.parse(jwksOf(...anonymous)).keys.map(({ kid: _k, ...k }: Record<string, unknown>) => k), ...JSON.parse(jwksOf(named)).keys];
    const rules = [{ issuer: ISS, jwks: JSON.stringify({ keys }) }];
    const token = signToken(named, claims({ sub: 'named' }));
    assert.equal(verifications(() => assert.equal(authenticateRequest(rules, bearer(token)).kind, 'verified')), 1);
  });
});
