import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CompiledPolicies, PolicyTable, compilePolicy, evaluate, globMatch, ipInBlocks } from '../../lib/policy/authz.ts';
import { positiveField } from '../../lib/policy/keys.ts';
import type { AuthorizationPolicy, CompiledRule } from '../../lib/model/mesh.ts';
import { compile, emptyInputs } from '../../controller/src/compile.ts';
import { authz } from './controller-fixtures.ts';

const rule = (r: Partial<CompiledRule>): CompiledRule => ({ from: [], to: [], when: [], layer: 'L4', ...r });
const policy = (name: string, action: 'ALLOW' | 'DENY', rules: CompiledRule[]): AuthorizationPolicy => ({
  name,
  namespace: 'shop',
  action,
  scope: 'namespace',
  rules,
  layer: rules.some((r) => r.layer === 'L7') ? 'L7' : 'L4',
});
const conn = {
  sourcePrincipal: 'spiffe://cluster.local/ns/web/sa/frontend',
  sourceNamespace: 'web',
  sourceIp: '10.77.1.4',
  destinationPort: 8080,
};

test('no policy allows', () => {
  assert.equal(evaluate(new CompiledPolicies([]), conn).allowed, true);
});

test('an ALLOW policy without rules denies everything', () => {
  const d = evaluate(new CompiledPolicies([policy('lockdown', 'ALLOW', [])]), conn);
  assert.equal(d.allowed, false);
  assert.match(d.reason, /shop\/lockdown/);
});

test('ALLOW by principal, with or without the spiffe:// scheme, and by namespace glob', () => {
  const byPrincipal = policy('p', 'ALLOW', [rule({ from: [{ principals: ['cluster.local/ns/web/sa/frontend'] }] })]);
  assert.deepEqual(evaluate(new CompiledPolicies([byPrincipal]), conn), { allowed: true, policy: 'shop/p', reason: 'allowed by shop/p' });
  const byNs = policy('n', 'ALLOW', [rule({ from: [{ namespaces: ['we*'] }] })]);
  assert.equal(evaluate(new CompiledPolicies([byNs]), conn).allowed, true);
  assert.equal(evaluate(new CompiledPolicies([byNs]), { ...conn, sourceNamespace: 'batch' }).allowed, false);
});

test('a plaintext peer has no principal and matches no principal rule', () => {
  const p = policy('p', 'ALLOW', [rule({ from: [{ principals: ['*'] }] })]);
  assert.equal(evaluate(new CompiledPolicies([p]), { sourceIp: '10.77.1.4', destinationPort: 80 }).allowed, false);
});

test('DENY wins over ALLOW and names the policy', () => {
  const allow = policy('allow-all', 'ALLOW', [rule({})]);
  const deny = policy('no-batch', 'DENY', [rule({ from: [{ ipBlocks: ['10.77.1.0/24'] }], to: [{ ports: [8080] }] })]);
  const d = evaluate(new CompiledPolicies([allow, deny]), conn);
  assert.equal(d.allowed, false);
  assert.equal(d.policy, 'shop/no-batch');
  assert.equal(evaluate(new CompiledPolicies([allow, deny]), { ...conn, destinationPort: 9090 }).allowed, true);
});

test('notIpBlocks and notPrincipals exclude', () => {
  const p = policy('p', 'ALLOW', [rule({ from: [{ notIpBlocks: ['10.77.1.4'], notPrincipals: ['*/sa/evil'] }] })]);
  assert.equal(evaluate(new CompiledPolicies([p]), conn).allowed, false);
  assert.equal(evaluate(new CompiledPolicies([p]), { ...conn, sourceIp: '10.77.2.9' }).allowed, true);
  assert.equal(evaluate(new CompiledPolicies([p]), { ...conn, sourceIp: '10.77.2.9', sourcePrincipal: 'spiffe://cluster.local/ns/web/sa/evil' }).allowed, false);
});

test('at L4 an ALLOW rule with L7 attributes fails closed', () => {
  const p = policy('get-only', 'ALLOW', [rule({ to: [{ methods: ['GET'] }], layer: 'L7' })]);
  const d = evaluate(new CompiledPolicies([p]), conn);
  assert.equal(d.allowed, false);
  assert.match(d.reason, /without a waypoint/);
});

test('at L4 a DENY rule with L7 attributes denies on its L4 parts', () => {
  const p = policy('no-admin', 'DENY', [rule({ from: [{ namespaces: ['web'] }], to: [{ paths: ['/admin*'] }], layer: 'L7' })]);
  assert.equal(evaluate(new CompiledPolicies([p]), conn).allowed, false);
  assert.equal(evaluate(new CompiledPolicies([p]), { ...conn, sourceNamespace: 'other' }).allowed, true);
});

test('at L7 methods, paths and headers are checked', () => {
  const p = policy('no-post-admin', 'DENY', [rule({ to: [{ methods: ['POST'], paths: ['/admin*'] }], layer: 'L7' })]);
  const req = { ...conn, method: 'POST', target: '/admin/users?x=1', headers: {} };
  assert.equal(evaluate(new CompiledPolicies([p]), req).allowed, false);
  assert.equal(evaluate(new CompiledPolicies([p]), { ...req, method: 'GET' }).allowed, true);
  const h = policy('tester', 'ALLOW', [rule({ when: [{ key: 'request.headers[X-User]', values: ['tester'] }], layer: 'L7' })]);
  assert.equal(evaluate(new CompiledPolicies([h]), { ...req, headers: { 'x-user': 'tester' } }).allowed, true);
  assert.equal(evaluate(new CompiledPolicies([h]), { ...req, headers: {} }).allowed, false);
});

// Istio pathGenerator (Envoy's path matcher on the path without the query) and request.headers[:path]
// (Envoy's :path header, query included): the caller gives the request target alone and the engine
// splits it, so no caller can hand a path with its query to `paths` (/secret?x past a DENY on /secret)
// or leave the query out of :path.
test('the request target is the one input: paths read it without the query, request.headers[:path] with it', () => {
  const secret = new CompiledPolicies([policy('deny-secret', 'DENY', [rule({ to: [{ paths: ['/secret'] }], layer: 'L7' })])]);
  const d = evaluate(secret, { ...conn, method: 'GET', target: '/secret?x=1', headers: {} });
  assert.equal(d.allowed, false, '/secret?x=1 is /secret for paths');
  assert.equal(d.policy, 'shop/deny-secret', 'named');
  assert.equal(evaluate(secret, { ...conn, method: 'GET', target: '/secret/x?y=1', headers: {} }).allowed, true);
  const header = new CompiledPolicies([policy('deny-debug', 'DENY', [rule({ when: [{ key: 'request.headers[:path]', values: ['*?debug=1'] }], layer: 'L7' })])]);
  const h = evaluate(header, { ...conn, method: 'GET', target: '/items?debug=1', headers: {} });
  assert.equal(h.allowed, false, ':path holds the query');
  assert.equal(h.policy, 'shop/deny-debug');
  assert.equal(evaluate(header, { ...conn, method: 'GET', target: '/items', headers: {} }).allowed, true);
});

test('when conditions on source.ip take CIDRs', () => {
  const p = policy('p', 'ALLOW', [rule({ when: [{ key: 'source.ip', values: ['10.77.0.0/16'] }] })]);
  assert.equal(evaluate(new CompiledPolicies([p]), conn).allowed, true);
  assert.equal(evaluate(new CompiledPolicies([p]), { ...conn, sourceIp: '192.168.1.1' }).allowed, false);
});

test('globs and address blocks', () => {
  assert.ok(globMatch('*', 'x'));
  assert.ok(globMatch('/api/*', '/api/v1'));
  assert.ok(globMatch('*.html', '/index.html'));
  assert.ok(!globMatch('/api', '/api/v1'));
  assert.ok(ipInBlocks(['10.0.0.0/8'], '::ffff:10.1.2.3'));
  assert.ok(ipInBlocks(['fd00::/8'], 'fd00::1'));
  assert.ok(!ipInBlocks(['not-an-ip'], '10.0.0.1'));
});

// Version skew (controller newer than an agent or waypoint): the previous release's data plane
// (lib/policy/keys.ts at 152999e) knew the source fields principals, namespaces, serviceAccounts,
// ipBlocks, remoteIpBlocks, requestPrincipals (and their not*) and the `when` keys source.ip,
// source.namespace, source.principal, source.serviceAccount, destination.ip, destination.port,
// remote.ip, request.headers, request.auth.{principal,audiences,presenter,claims}; it matched a
// namespace with globMatch, reading `team-*-prod` literally (Istio's srcNamespaceGenerator: each `*`
// any characters). A DENY sent with such a value in `namespaces` would deny nothing there.
const PREVIOUS_SOURCE_FIELDS = ['principals', 'namespaces', 'serviceAccounts', 'ipBlocks', 'remoteIpBlocks', 'requestPrincipals'];
const PREVIOUS_CONDITION_KEYS = ['source.ip', 'source.namespace', 'source.principal', 'source.serviceAccount', 'destination.ip', 'destination.port', 'remote.ip', 'request.headers', 'request.auth.principal', 'request.auth.audiences', 'request.auth.presenter', 'request.auth.claims'];

test('version skew: a namespace pattern an older data plane misreads is sent in a field and key it refuses (it fails closed), and judged as Istio by a current one', () => {
  const inputs = emptyInputs();
  inputs.authorizationPolicies.push(
    authz('shop', 'deny-teams', { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['team-*-prod*', 'web'], notNamespaces: ['*-prod-eu*'] } }] }, { when: [{ key: 'source.namespace', values: ['a*b'] }] }] }),
    authz('shop', 'deny-plain', { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['team-*', '*-prod', '*', 'web'] } }], when: [{ key: 'source.namespace', values: ['web*'] }] }] }),
  );
  const { model } = compile(inputs);
  const teams = model.policies.get('shop/deny-teams')!;
  const plain = model.policies.get('shop/deny-plain')!;
  // What the old matcher reads as Istio does is sent as written.
  assert.deepEqual(plain.rules[0]!.from, [{ namespaces: ['team-*', '*-prod', '*', 'web'] }]);
  assert.equal(plain.rules[0]!.when[0]!.key, 'source.namespace');
  // The rest in names the previous release did not know: its fieldClauses ("field is not
  // supported") and conditionClauses refuse them, and the DENY denies all it applies to.
  assert.deepEqual(teams.rules[0]!.from, [{ namespacePatterns: ['team-*-prod*', 'web'], notNamespacePatterns: ['*-prod-eu*'] }]);
  for (const field of Object.keys(teams.rules[0]!.from[0]!)) assert.ok(!PREVIOUS_SOURCE_FIELDS.includes(positiveField(field) ?? field), field);
  assert.equal(teams.rules[1]!.when[0]!.key, 'source.namespacePattern');
  assert.ok(!PREVIOUS_CONDITION_KEYS.includes(teams.rules[1]!.when[0]!.key));
  // A field the data plane does not know fails the policy closed, named (as the previous one did).
  const unknown = { ...teams, rules: [rule({ from: [{ namespaceFuture: ['x'] } as never] })] };
  const table = new PolicyTable([unknown]);
  assert.deepEqual(table.errors.map((e) => e.error.message), ['rules[0].from[0].namespaceFuture: field is not supported']);
  assert.equal(evaluate(new CompiledPolicies([unknown]), conn).allowed, false);
  // A current data plane: Istio's srcNamespaceGenerator, each `*` any characters.
  const as = (ns: string) => evaluate(new CompiledPolicies([teams]), { ...conn, sourceNamespace: ns, sourcePrincipal: `spiffe://cluster.local/ns/${ns}/sa/x` });
  assert.equal(as('team-a-prod').allowed, false);
  assert.equal(as('web').allowed, false);
  assert.equal(as('team-a-prod-eu').allowed, true, 'notNamespaces *-prod-eu* excludes it');
  assert.equal(as('axxb').allowed, false, 'source.namespace a*b');
  assert.equal(as('team-a-dev').allowed, true);
});

// Envoy's header matcher compares a field's bytes with the UTF-8 bytes of the configured string
// (lib/field-bytes.ts). A backend reading fields as ISO-8859-1 sees `José` in the bytes `4a 6f 73 e9`
// too: a DENY or AUDIT (dry-run DENY alike) also matches that latin1 reading when every character of
// the value is up to U+00FF, so it denies more, never less; an ALLOW matches the UTF-8 bytes only
// (Envoy's), and a negated value (notValues) is not widened, which would exempt more.
test('a header value outside ASCII: DENY and AUDIT match its UTF-8 bytes and its latin1 reading, ALLOW the UTF-8 bytes only', () => {
  const utf8 = Buffer.from('José', 'utf8').toString('latin1');
  const latin1 = 'Jos\xe9';
  const req = (user: string) => ({ ...conn, method: 'GET', target: '/', headers: { 'x-user': user } });
  const when = [{ key: 'request.headers[x-user]', values: ['José', 'Zoë*'] }];
  const deny = new CompiledPolicies([policy('deny-jose', 'DENY', [rule({ when, layer: 'L7' })])]);
  for (const user of [utf8, latin1, 'Zo\xeb Smith', Buffer.from('Zoë Smith', 'utf8').toString('latin1')]) assert.equal(evaluate(deny, req(user)).allowed, false, JSON.stringify(user));
  assert.equal(evaluate(deny, req(Buffer.from('Jose\u0301', 'utf8').toString('latin1'))).allowed, true, 'another value');
  const allow = new CompiledPolicies([policy('allow-jose', 'ALLOW', [rule({ when, layer: 'L7' })])]);
  assert.equal(evaluate(allow, req(utf8)).allowed, true);
  assert.equal(evaluate(allow, req(latin1)).allowed, false, 'ALLOW: the UTF-8 bytes only');
  const audit = compilePolicy({ ...policy('audit-jose', 'DENY', [rule({ when, layer: 'L7' })]), action: 'AUDIT' });
  assert.equal(audit.matches(req(latin1), 'L7'), true, 'AUDIT');
  const dry = compilePolicy({ ...policy('dry-deny-jose', 'DENY', [rule({ when, layer: 'L7' })]), dryRun: 'DENY' });
  assert.equal(dry.matches(req(latin1), 'L7'), true, 'dry-run DENY');
  // A value past U+00FF has no latin1 reading; a negated value is not widened.
  const wide = new CompiledPolicies([policy('deny-kanji', 'DENY', [rule({ when: [{ key: 'request.headers[x-user]', values: ['管理者'] }], layer: 'L7' })])]);
  assert.equal(evaluate(wide, req(Buffer.from('管理者', 'utf8').toString('latin1'))).allowed, false);
  const except = new CompiledPolicies([policy('deny-but-jose', 'DENY', [rule({ when: [{ key: 'request.headers[x-user]', notValues: ['José'] }], layer: 'L7' })])]);
  assert.equal(evaluate(except, req(utf8)).allowed, true);
  assert.equal(evaluate(except, req(latin1)).allowed, false, 'the exemption is the UTF-8 bytes only');
});

// The latin1 reading is for a value that is not UTF-8 (a lone byte such as E9); a value that is valid
// UTF-8 is compared as UTF-8 only, as Envoy: read as latin1, its lead byte would let a `*` pattern
// deny an unrelated value (C3 is `Ã` and the lead byte of `ü`).
test('a DENY on a header value widens to the latin1 reading only of a value that is not UTF-8: a valid UTF-8 value is compared as UTF-8 only', () => {
  const bytes = (s: string) => Buffer.from(s, 'utf8').toString('latin1');
  const cases: { pattern: string; value: string; allowed: boolean }[] = [
    { pattern: 'Ã*', value: bytes('über'), allowed: true },
    { pattern: 'à*', value: bytes('हिन्दी'), allowed: true },
    { pattern: 'Zoë*', value: bytes('Zo냐'), allowed: true },
    { pattern: 'José', value: 'Jos\xe9', allowed: false },
    { pattern: 'Zoë*', value: 'Zo\xeb Smith', allowed: false },
    { pattern: 'Zoë*', value: bytes('Zoë Smith'), allowed: false },
  ];
  for (const { pattern, value, allowed } of cases) {
    const deny = new CompiledPolicies([policy('deny-user', 'DENY', [rule({ when: [{ key: 'request.headers[x-user]', values: [pattern] }], layer: 'L7' })])]);
    const req = { ...conn, method: 'GET', target: '/', headers: { 'x-user': value } };
    assert.equal(evaluate(deny, req).allowed, allowed, `DENY ${pattern} on ${JSON.stringify(value)}`);
  }
});
