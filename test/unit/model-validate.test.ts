import { test } from 'node:test';
import assert from 'node:assert/strict';
import { validateObject, assertValid, ValidationError, parseDuration } from '../../lib/model/index.ts';
import { tooDeep, withoutNullFields } from '../../lib/model/validate.ts';

function policy(spec: unknown): unknown {
  return { apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'p', namespace: 'shop' }, spec };
}

test('accepts an Istio-style authorization policy', () => {
  const issues = validateObject(policy({
    selector: { matchLabels: { app: 'web' } },
    action: 'ALLOW',
    rules: [{
      from: [{ source: { principals: ['cluster.local/ns/shop/sa/front'], ipBlocks: ['10.0.0.0/8', '10.1.2.3'] } }],
      to: [{ operation: { ports: ['8080', 9090], methods: ['GET'], paths: ['/api/*'] } }],
      when: [{ key: 'request.headers[x-user]', values: ['alice'] }],
    }],
  }));
  assert.deepEqual(issues, []);
});

test('reports a bad ip block with the exact field path and the object name', () => {
  const issues = validateObject(policy({ rules: [{ from: [{ source: { ipBlocks: ['10.0.0.0/8', '10.0.0.300/8'] } }] }] }));
  assert.equal(issues.length, 1);
  assert.deepEqual(issues[0], {
    kind: 'AuthorizationPolicy', namespace: 'shop', name: 'p',
    path: 'spec.rules[0].from[0].source.ipBlocks[1]',
    message: '"10.0.0.300/8" is not an IP address or CIDR block',
  });
});

test('rejects unknown fields in weft specs so typos do not widen a policy', () => {
  const issues = validateObject(policy({ rules: [{ form: [] }] }));
  assert.equal(issues[0]?.path, 'spec.rules[0].form');
});

test('rejects selector and targetRefs together, and an action Istio does not have', () => {
  const issues = validateObject(policy({ selector: {}, targetRefs: [{ kind: 'Service', name: 'a' }], action: 'REDIRECT' }));
  assert.deepEqual(issues.map((i) => i.path).sort(), ['spec.action', 'spec.targetRefs']);
});

test('assertValid throws a ValidationError with a stable code naming object and field', () => {
  try {
    assertValid({ apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'pa', namespace: 'a' }, spec: { mtls: { mode: 'ISTIO_MUTUAL' } } });
    assert.fail('expected a throw');
  } catch (e) {
    assert.ok(e instanceof ValidationError);
    assert.equal(e.code, 'WEFT_INVALID_OBJECT');
    assert.match(e.message, /PeerAuthentication a\/pa: spec\.mtls\.mode: "ISTIO_MUTUAL" is not one of UNSET, STRICT, PERMISSIVE, DISABLE/);
  }
});

test('checks traffic policy durations, ranges and enums', () => {
  const issues = validateObject({
    apiVersion: 'weft.dev/v1alpha1', kind: 'TrafficPolicy', metadata: { name: 't', namespace: 'a' },
    spec: {
      targetRef: { kind: 'Service', name: 'web' },
      timeouts: { request: '1m30s', perTry: '3 seconds' },
      retries: { attempts: 3, retryOn: ['5xx', 'sometimes'] },
      outlierDetection: { maxEjectionPercent: 150 },
      loadBalancer: { policy: 'LEAST_REQUEST' },
      rateLimit: { tokens: 10, fillInterval: '1s', per: 'source' },
      fault: { abort: { httpStatus: 503, percentage: 10 } },
    },
  });
  assert.deepEqual(issues.map((i) => i.path), ['spec.timeouts.perTry', 'spec.retries.retryOn[1]', 'spec.outlierDetection.maxEjectionPercent']);
});

test('checks HTTPRoute matches, filters and parents in the mesh profile', () => {
  const issues = validateObject({
    apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'r', namespace: 'a' },
    spec: {
      parentRefs: [{ group: '', kind: 'Gateway', name: 'gw' }],
      rules: [{
        matches: [{ path: { type: 'RegularExpression', value: '([a-z' }, headers: [{ name: 'x-a', value: '1' }] }],
        filters: [{ type: 'URLRewrite', urlRewrite: { path: { type: 'ReplacePrefixMatch', replacePrefixMatch: '/v2' } } }],
        backendRefs: [{ name: 'web', port: 80, weight: 90 }, { name: 'web-v2', weight: 10 }],
      }],
    },
  });
  // ReplacePrefixMatch on a rule whose match is a RegularExpression: httproute_types.go HTTPRouteRule CEL.
  assert.deepEqual(issues.map((i) => i.path), ['spec.parentRefs[0].kind', 'spec.rules[0].matches[0].path.value', 'spec.rules[0].backendRefs[1].port', 'spec.rules[0].filters[0].urlRewrite.path.type']);
});

/** HTTPRoute a/r on Service web with the one rule `rule`; its issues as `path: message`. */
function httpRuleIssues(rule: Record<string, unknown>): string[] {
  return validateObject({
    apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'r', namespace: 'a' },
    spec: { parentRefs: [{ group: '', kind: 'Service', name: 'web' }], rules: [rule] },
  }).map((i) => `${i.path}: ${i.message}`);
}

// httproute_types.go (v1.6.1) HTTPRouteRule XValidation, lines 143-146: "When using URLRewrite
// [RequestRedirect] filter with path.replacePrefixMatch, exactly one PathPrefix match must be
// specified", and "Within backendRefs, ..." the same for a backendRef's filters. Rule matches and a
// match's path default to PathPrefix `/` (lines 128, 214, 766).
test('ReplacePrefixMatch (URLRewrite or RequestRedirect, on the rule or a backendRef) needs exactly one PathPrefix match (httproute_types.go HTTPRouteRule CEL)', () => {
  const rewrite = { type: 'URLRewrite', urlRewrite: { path: { type: 'ReplacePrefixMatch', replacePrefixMatch: '/bar' } } };
  const redirect = { type: 'RequestRedirect', requestRedirect: { path: { type: 'ReplacePrefixMatch', replacePrefixMatch: '/c' } } };
  const to = [{ name: 'web', port: 80 }];
  assert.deepEqual(httpRuleIssues({ matches: [{ path: { type: 'Exact', value: '/foo' } }], filters: [rewrite], backendRefs: to }), [
    'spec.rules[0].filters[0].urlRewrite.path.type: When using URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified (its match is not a PathPrefix)',
  ]);
  assert.deepEqual(httpRuleIssues({ matches: [{ path: { type: 'PathPrefix', value: '/a' } }, { path: { type: 'PathPrefix', value: '/b' } }], filters: [redirect] }), [
    'spec.rules[0].filters[0].requestRedirect.path.type: When using RequestRedirect filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified (the rule has 2 matches)',
  ]);
  assert.deepEqual(httpRuleIssues({ matches: [{ path: { type: 'Exact', value: '/a' } }], backendRefs: [{ ...to[0], filters: [rewrite] }] }), [
    'spec.rules[0].backendRefs[0].filters[0].urlRewrite.path.type: Within backendRefs, when using URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified (its match is not a PathPrefix)',
  ]);
  // One PathPrefix match, a match without a path, and no matches at all are PathPrefix.
  assert.deepEqual(httpRuleIssues({ matches: [{ path: { type: 'PathPrefix', value: '/foo' } }], filters: [rewrite], backendRefs: to }), []);
  assert.deepEqual(httpRuleIssues({ matches: [{ headers: [{ name: 'x', value: '1' }] }], filters: [rewrite], backendRefs: to }), []);
  assert.deepEqual(httpRuleIssues({ filters: [redirect] }), []);
});

// httproute_types.go (v1.6.1) HTTPRouteRule XValidation, line 142.
test('a RequestRedirect filter together with backendRefs is refused (httproute_types.go HTTPRouteRule CEL)', () => {
  assert.deepEqual(httpRuleIssues({ filters: [{ type: 'RequestRedirect', requestRedirect: { statusCode: 301, hostname: 'x.example' } }], backendRefs: [{ name: 'web', port: 80 }] }), [
    'spec.rules[0].filters[0]: RequestRedirect filter must not be used together with backendRefs (a redirect answers the request itself)',
  ]);
  assert.deepEqual(httpRuleIssues({ filters: [{ type: 'RequestRedirect', requestRedirect: { statusCode: 301 } }], backendRefs: [] }), []);
});

// httproute_types.go (v1.6.1) HTTPRouteTimeouts XValidation, line 334: "backendRequest timeout cannot be
// longer than request timeout", unless request is 0s (no timeout).
test('timeouts.backendRequest longer than timeouts.request is refused, unless request is 0s (httproute_types.go HTTPRouteTimeouts CEL)', () => {
  const to = [{ name: 'web', port: 80 }];
  assert.deepEqual(httpRuleIssues({ timeouts: { request: '1s', backendRequest: '5s' }, backendRefs: to }), [
    'spec.rules[0].timeouts.backendRequest: backendRequest timeout 5s cannot be longer than request timeout 1s',
  ]);
  assert.deepEqual(httpRuleIssues({ timeouts: { request: '1m', backendRequest: '60s' }, backendRefs: to }), []);
  assert.deepEqual(httpRuleIssues({ timeouts: { request: '0s', backendRequest: '5s' }, backendRefs: to }), []);
  assert.deepEqual(httpRuleIssues({ timeouts: { backendRequest: '5s' }, backendRefs: to }), []);
});

// httproute_types.go (v1.6.1) HTTPHeaderMatch.Name: "If multiple entries specify equivalent header
// names, only the first entry with an equivalent name MUST be considered for a match ... "foo" and
// "Foo" are considered equivalent" (GRPCHeaderMatch.Name the same); HTTPQueryParamMatch.Name: the
// same rule, names case-sensitive. HTTPRouteMatch.Headers/QueryParams are `listType=map`,
// `listMapKey=name`: the API server refuses only a name written twice as it is.
test('header matches with equivalent names (X-Foo, x-foo) are accepted, a name written twice is refused (HTTPHeaderMatch.Name, listMapKey=name)', () => {
  const route = (kind: 'HTTPRoute' | 'GRPCRoute', match: Record<string, unknown>) => ({
    apiVersion: 'gateway.networking.k8s.io/v1', kind, metadata: { name: 'r', namespace: 'a' },
    spec: { parentRefs: [{ group: '', kind: 'Service', name: 'web' }], rules: [{ matches: [match], backendRefs: [{ name: 'web', port: 80 }] }] },
  });
  const equivalent = [{ name: 'X-Foo', value: 'a' }, { name: 'x-foo', value: 'b' }];
  assert.deepEqual(validateObject(route('HTTPRoute', { headers: equivalent })), []);
  assert.deepEqual(validateObject(route('GRPCRoute', { headers: equivalent })), []);
  assert.deepEqual(validateObject(route('HTTPRoute', { queryParams: [{ name: 'v', value: '1' }, { name: 'V', value: '2' }] })), []);
  const twice = validateObject(route('HTTPRoute', { headers: [{ name: 'x-foo', value: 'a' }, { name: 'x-foo', value: 'b' }], queryParams: [{ name: 'v', value: '1' }, { name: 'v', value: '2' }] }));
  assert.deepEqual(twice.map((i) => i.path), ['spec.rules[0].matches[0].headers[1].name', 'spec.rules[0].matches[0].queryParams[1].name']);
});

test('checks the dataplane-mode label value', () => {
  const issues = validateObject({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'a', labels: { 'weft.dev/dataplane-mode': 'sidecar' } } });
  assert.equal(issues[0]?.path, 'metadata.labels["weft.dev/dataplane-mode"]');
});

test('parses Gateway API durations to milliseconds', () => {
  assert.equal(parseDuration('1m30s'), 90_000);
  assert.equal(parseDuration('250ms'), 250);
  assert.equal(parseDuration('1h'), 3_600_000);
  assert.throws(() => parseDuration('1.5s'), { code: 'WEFT_BAD_DURATION' });
});

test('checks GRPCRoute method matches and refuses HTTP-only filters', () => {
  const issues = validateObject({
    apiVersion: 'gateway.networking.k8s.io/v1', kind: 'GRPCRoute', metadata: { name: 'g', namespace: 'a' },
    spec: {
      parentRefs: [{ group: '', kind: 'Service', name: 'greeter' }],
      rules: [{
        matches: [{ method: { service: 'hello.Greeter', method: 'Say Hello' } }, { method: {} }],
        filters: [{ type: 'URLRewrite', urlRewrite: {} }],
        backendRefs: [{ name: 'greeter', port: 50051 }],
      }],
    },
  });
  assert.deepEqual(issues.map((i) => i.path), ['spec.rules[0].matches[0].method.method', 'spec.rules[0].matches[1].method', 'spec.rules[0].filters[0].type']);
});

test('requires names on multi-port Services and valid target ports', () => {
  const issues = validateObject({
    apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: 'a' },
    spec: { clusterIP: '10.96.0.300', ports: [{ port: 80 }, { name: 'grpc', port: 90, targetPort: 'Not_A_Name' }] },
  });
  assert.deepEqual(issues.map((i) => i.path), ['spec.clusterIP', 'spec.ports[0].name', 'spec.ports[1].targetPort']);
});

test('checks EndpointSlice addresses against their address type and needs the service-name label', () => {
  const issues = validateObject({
    apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: 's', namespace: 'a' }, addressType: 'IPv4',
    endpoints: [{ addresses: ['10.0.0.1', 'fd00::1'] }],
  });
  assert.deepEqual(issues.map((i) => i.path), ['metadata.labels["kubernetes.io/service-name"]', 'endpoints[0].addresses[1]']);
});

test('refuses port-level mTLS without a selector, and unknown Waypoint fields', () => {
  assert.deepEqual(validateObject({ apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'p', namespace: 'a' }, spec: { portLevelMtls: { '80': { mode: 'STRICT' }, x: { mode: 'STRICT' } } } }).map((i) => i.path),
    ['spec.portLevelMtls', 'spec.portLevelMtls["x"]']);
  assert.deepEqual(validateObject({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'w', namespace: 'a' }, spec: { replica: 2 } }).map((i) => i.path), ['spec.replica']);
});

test('refuses a PeerAuthentication naming more than 128 ports in portLevelMtls, at spec.portLevelMtls naming the limit: the kernel\'s weft_port_modes is node-wide (16,384 entries), one tenant must not fill it for every pod of the node', () => {
  const ports = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [String(20_000 + i), { mode: 'STRICT' }]));
  const pa = (n: number) => validateObject({ apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'p', namespace: 'a' }, spec: { selector: { matchLabels: { app: 'x' } }, portLevelMtls: ports(n) } });
  assert.deepEqual(pa(128), []);
  const issues = pa(129);
  assert.deepEqual(issues.map((i) => i.path), ['spec.portLevelMtls']);
  assert.match(issues[0]!.message, /129 ports.*at most 128/);
  assert.deepEqual(pa(16_385).map((i) => i.path), ['spec.portLevelMtls'], 'refused once, without a line per port');
});

test('names the object even when the kind or apiVersion is wrong, and refuses namespaces on cluster-scoped kinds', () => {
  const [wrongVersion] = validateObject({ apiVersion: 'weft.dev/v1', kind: 'Waypoint', metadata: { name: 'w', namespace: 'a' }, spec: {} });
  assert.deepEqual([wrongVersion!.kind, wrongVersion!.namespace, wrongVersion!.name, wrongVersion!.path], ['Waypoint', 'a', 'w', 'apiVersion']);
  assert.equal(validateObject({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'c' } })[0]!.path, 'kind');
  assert.equal(validateObject({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'n', namespace: 'x' } })[0]!.path, 'metadata.namespace');
});

test('checks authorization condition keys and their values', () => {
  const issues = validateObject(policy({
    rules: [{ when: [{ key: 'source.ip', values: ['10.0.0.0/33'] }, { key: 'destination.port', notValues: ['http'] }, { key: 'request.cookie', values: ['a'] }, { key: 'source.namespace' }] }],
  }));
  assert.deepEqual(issues.map((i) => i.path), ['spec.rules[0].when[0].values[0]', 'spec.rules[0].when[1].notValues[0]', 'spec.rules[0].when[2].key', 'spec.rules[0].when[3]']);
});

test('null fields are unset (as Kubernetes reads them) but a null inside a list of strings is an error naming its index', () => {
  assert.deepEqual(validateObject(withoutNullFields(policy({ selector: null, rules: [{ from: [{ source: { principals: null, ipBlocks: ['10.0.0.0/8'] } }] }] }))), []);
  const issues = validateObject(policy({ rules: [{ from: [{ source: { principals: ['cluster.local/ns/a/sa/b', null] } }] }] }));
  assert.deepEqual(issues.map((i) => [i.path, i.message]), [['spec.rules[0].from[0].source.principals[1]', 'must be a string, not null']]);
  const input = { a: null, b: [null, { c: null, d: 1 }], e: { f: [1] } };
  assert.deepEqual(withoutNullFields(input), { b: [null, { d: 1 }], e: { f: [1] } });
  assert.deepEqual(input, { a: null, b: [null, { c: null, d: 1 }], e: { f: [1] } }, 'the input is left alone');
  assert.equal(withoutNullFields(input).e, input.e, 'branches without a null are shared, not copied');
  const clean = { spec: { rules: [{ to: [] }] } };
  assert.equal(withoutNullFields(clean), clean, 'an object without nulls comes back as is');
});

test('a Waypoint\'s maxRequests is a whole number from 1 to 1,000,000', () => {
  const wp = (spec: unknown) => ({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'shop' }, spec });
  assert.deepEqual(validateObject(wp({ maxRequests: 500 })), []);
  assert.deepEqual(validateObject(wp({ maxRequests: 0 })).map((i) => [i.path, i.message]), [['spec.maxRequests', '0 is below the minimum 1']]);
  assert.deepEqual(validateObject(wp({ maxRequests: 2.5 })).map((i) => i.path), ['spec.maxRequests']);
});

test('a Waypoint may never run as the namespace\'s default ServiceAccount', () => {
  const issues = validateObject({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'shop' }, spec: { serviceAccountName: 'default' } });
  assert.deepEqual(issues.map((i) => [i.path, /never allowed/.test(i.message)]), [['spec.serviceAccountName', true]]);
});

test('TrafficPolicy quota and Waypoint quotaStore are checked field by field', () => {
  const tp = (quota: unknown) => validateObject({ apiVersion: 'weft.dev/v1alpha1', kind: 'TrafficPolicy', metadata: { name: 't', namespace: 'shop' }, spec: { targetRef: { kind: 'Service', name: 'r' }, quota } });
  assert.deepEqual(tp({ requests: 10, window: '1m', per: 'source' }), []);
  assert.deepEqual(tp({ requests: -1, window: '0s', per: 'route' }).map((i) => i.path), ['spec.quota.requests', 'spec.quota.window', 'spec.quota.per']);
  const wp = (quotaStore: unknown) => validateObject({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'shop' }, spec: { quotaStore } });
  assert.deepEqual(wp({ redis: 'redis://redis.shop:6379', failureMode: 'closed' }), []);
  assert.deepEqual(wp({ redis: 'http://x', failureMode: 'maybe' }).map((i) => i.path), ['spec.quotaStore.redis', 'spec.quotaStore.failureMode']);
});

// Gateway API: ReferenceGrant is served as v1 (v1.5+) and v1beta1; HTTPRequestMirrorFilter takes
// `percent` or `fraction`, not both; a backendRef of an unknown kind is the controller's to report
// (ResolvedRefs InvalidKind), not a reason to refuse the route.
test('ReferenceGrant v1 and v1beta1, mirror percent or fraction, backendRefs of any kind', () => {
  const grant = (apiVersion: string) => validateObject({
    apiVersion, kind: 'ReferenceGrant', metadata: { name: 'g', namespace: 'web' },
    spec: { from: [{ group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', namespace: 'shop' }], to: [{ group: '', kind: 'Service' }] },
  });
  assert.deepEqual(grant('gateway.networking.k8s.io/v1'), []);
  assert.deepEqual(grant('gateway.networking.k8s.io/v1beta1'), []);
  assert.deepEqual(grant('gateway.networking.k8s.io/v1alpha2').map((i) => i.path), ['apiVersion']);
  const route = (requestMirror: object, backendRef: object = { name: 'web', port: 80 }) => validateObject({
    apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'r', namespace: 'a' },
    spec: { parentRefs: [{ group: '', kind: 'Service', name: 'web' }], rules: [{ filters: [{ type: 'RequestMirror', requestMirror: { backendRef: { name: 'm', port: 80 }, ...requestMirror } }], backendRefs: [backendRef] }] },
  }).map((i) => `${i.path}: ${i.message}`);
  assert.deepEqual(route({ fraction: { numerator: 25, denominator: 50 } }), []);
  assert.deepEqual(route({ fraction: { numerator: 5 } }), []);
  const m = 'spec.rules[0].filters[0].requestMirror';
  assert.deepEqual(route({ percent: 10, fraction: { numerator: 1 } }), [`${m}: only one of percent or fraction may be specified`]);
  assert.deepEqual(route({ fraction: { numerator: 60, denominator: 50 } }), [`${m}.fraction: numerator 60 is greater than denominator 50`]);
  assert.match(route({ fraction: { numerator: 1, denominator: 0 } })[0] ?? '', /^spec\.rules\[0\]\.filters\[0\]\.requestMirror\.fraction\.denominator: /);
  assert.match(route({ fraction: {} })[0] ?? '', /fraction\.numerator: is required/);
  assert.deepEqual(route({}, { group: 'unknownkind.example.com', kind: 'NonExistent', name: 'echo-v1', port: 8080 }), []);
  assert.match(route({}, { group: 'Not A Group!', kind: 'X', name: 'echo', port: 8080 })[0] ?? '', /^spec\.rules\[0\]\.backendRefs\[0\]\.group: /);
});

test('a Waypoint named "default" without spec.serviceAccountName runs as ServiceAccount default and is refused at metadata.name (waypoint-admission.ts "default never")', () => {
  const wp = (spec: unknown) => ({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'default', namespace: 'shop' }, spec });
  assert.deepEqual(validateObject(wp({})).map((i) => [i.path, /never allowed/.test(i.message)]), [['metadata.name', true]]);
  assert.deepEqual(validateObject(wp({ serviceAccountName: 'mesh-proxy' })), [], 'named default, running as an account of its own');
});

test('the status fields the controller compiles from are checked: Waypoint status.conditions and status.addresses[].value (an IP), Pod status.conditions, a Node\'s InternalIP / ExternalIP (validate.ts "Every field the mesh reads is checked"; agent/src/state.ts validateAgentConfig)', () => {
  const wp = (status: unknown) => ({ apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'shop' }, spec: {}, status });
  assert.deepEqual(validateObject(wp({ conditions: [{ type: 'Ready', status: 'True', reason: 'R', message: 'm', lastTransitionTime: 'x' }], addresses: [{ type: 'IPAddress', value: '10.96.0.9' }] })), []);
  assert.deepEqual(validateObject(wp({ conditions: 'x' })).map((i) => i.path), ['status.conditions']);
  assert.deepEqual(validateObject(wp({ conditions: [{ status: 'True' }] })).map((i) => i.path), ['status.conditions[0].type']);
  assert.deepEqual(validateObject(wp({ addresses: 'x' })).map((i) => i.path), ['status.addresses']);
  assert.deepEqual(validateObject(wp({ addresses: [{ type: 'IPAddress', value: 'not-an-ip' }] })).map((i) => [i.path, i.message]), [['status.addresses[0].value', '"not-an-ip" is not an IP address']]);
  const pod = (status: unknown) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p', namespace: 'shop' }, spec: {}, status });
  assert.deepEqual(validateObject(pod({ conditions: [{ type: 'Ready', status: 'True', lastProbeTime: null }] })), []);
  assert.deepEqual(validateObject(pod({ conditions: 'x' })).map((i) => i.path), ['status.conditions']);
  assert.deepEqual(validateObject(pod({ conditions: [{ type: 'Ready', status: true }] })).map((i) => i.path), ['status.conditions[0].status']);
  const node = (addresses: unknown) => ({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'n' }, status: { addresses } });
  assert.deepEqual(validateObject(node([{ type: 'Hostname', address: 'n' }, { type: 'InternalIP', address: '192.168.0.1' }])), []);
  assert.deepEqual(validateObject(node([{ type: 'InternalIP', address: 'not-an-ip' }, { type: 'ExternalIP', address: 'n.example' }])).map((i) => i.path), ['status.addresses[0].address', 'status.addresses[1].address']);
});

// Node.js runs a setTimeout longer than 2^31-1 ms after 1 ms, and the waypoint arms route and
// TrafficPolicy timeouts with setTimeout (waypoint/src/proxy.ts): "600h" timed every request out at
// once. Gateway API (GEP-2257) allows up to 99999h; the limit is Weft's (docs/ARCHITECTURE.md, Routes).
test('durations the waypoint times are at most 2^31-1 ms (about 24.8 days), a Weft limit below Gateway API\'s 99999h; a quota window is not timed', () => {
  const route = (timeouts: unknown) => ({ apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'r', namespace: 'shop' }, spec: { parentRefs: [{ group: '', kind: 'Service', name: 'reviews' }], rules: [{ timeouts, backendRefs: [{ name: 'reviews', port: 80 }] }] } });
  const issues = validateObject(route({ request: '600h', backendRequest: '596h31m23s648ms' }));
  assert.deepEqual(issues.map((i) => i.path), ['spec.rules[0].timeouts.request', 'spec.rules[0].timeouts.backendRequest']);
  assert.match(issues[0]!.message, /2147483647 ms \(about 24\.8 days\), a Weft limit: Gateway API durations go up to 99999h/);
  assert.deepEqual(validateObject(route({ request: '596h31m23s647ms' })), [], 'exactly 2^31-1 ms');
  const tp = (spec: object) => ({ apiVersion: 'weft.dev/v1alpha1', kind: 'TrafficPolicy', metadata: { name: 'tp', namespace: 'shop' }, spec: { targetRef: { kind: 'Service', name: 'reviews' }, ...spec } });
  assert.deepEqual(validateObject(tp({ timeouts: { request: '9999h', perTry: '1h', idle: '700h', connect: '30s' } })).map((i) => i.path), ['spec.timeouts.request', 'spec.timeouts.idle']);
  assert.deepEqual(validateObject(tp({ outlierDetection: { interval: '9999h', baseEjectionTime: '9999h' }, fault: { delay: { fixedDelay: '9999h' } } })).map((i) => i.path), ['spec.outlierDetection.interval', 'spec.outlierDetection.baseEjectionTime', 'spec.fault.delay.fixedDelay']);
  assert.deepEqual(validateObject(tp({ quota: { requests: 1000, window: '720h' } })), [], 'a 30-day quota window is counted, not timed');
});

// GEP-2257 spells zero many ways ("0s", "0s0ms", "0m0s"); the waypoint drops a TrafficPolicy with a
// zero quota window or fill interval (waypoint/src/resilience.ts "must be positive") after the
// controller reported it Accepted, so the limit the tenant asked for silently did not apply.
test('a zero rateLimit.fillInterval or quota.window is refused in every spelling (GEP-2257 durations: "0s0ms", "0m0s"), by its parsed value', () => {
  const tp = (spec: object) => ({ apiVersion: 'weft.dev/v1alpha1', kind: 'TrafficPolicy', metadata: { name: 'tp', namespace: 'shop' }, spec: { targetRef: { kind: 'Service', name: 'reviews' }, ...spec } });
  for (const zero of ['0s', '0s0ms', '0m0s', '00h0m']) {
    assert.deepEqual(validateObject(tp({ rateLimit: { tokens: 1, fillInterval: zero } })).map((i) => [i.path, i.message]), [['spec.rateLimit.fillInterval', 'must be longer than zero']], zero);
    assert.deepEqual(validateObject(tp({ quota: { requests: 1, window: zero } })).map((i) => [i.path, i.message]), [['spec.quota.window', 'must be longer than zero']], zero);
  }
  assert.deepEqual(validateObject(tp({ rateLimit: { tokens: 1, fillInterval: '0s1ms' }, quota: { requests: 1, window: '0m1s' } })), []);
});

// RFC 9110 section 5.5: a field value is visible characters, SP, HTAB and obs-text (0x80-0xFF);
// never CR, LF or NUL. The waypoint's request edit then failed every request on the rule (503) and
// its response edit dropped the client's connection, while the route was reported Accepted. Any
// other character is written as its UTF-8 bytes, as Envoy writes it (lib/field-bytes.ts): `€` and
// `管理者` are values the Gateway API allows, no longer refused.
for (const [what, value] of [['CR LF', 'a\r\nx-injected: 1'], ['NUL', 'a\u0000b'], ['DEL', 'a\u007fb'], ['CR LF behind a character past U+00FF', '€\r\nx-injected: 1']] as const) {
  test(`RFC 9110 5.5: a RequestHeaderModifier / ResponseHeaderModifier value with ${what} is refused at its field path`, () => {
    const issues = validateObject({
      apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'h', namespace: 'shop' },
      spec: { parentRefs: [{ group: '', kind: 'Service', name: 'reviews' }], rules: [{ filters: [
        { type: 'RequestHeaderModifier', requestHeaderModifier: { set: [{ name: 'x-a', value }, { name: 'x-ok', value: 'tab\tand space, "quotes", é (obs-text), € 管理者 👋' }] } },
        { type: 'ResponseHeaderModifier', responseHeaderModifier: { add: [{ name: 'x-b', value }] } },
      ], backendRefs: [{ name: 'reviews', port: 80 }] }] },
    });
    assert.deepEqual(issues.map((i) => i.path), ['spec.rules[0].filters[0].requestHeaderModifier.set[0].value', 'spec.rules[0].filters[1].responseHeaderModifier.add[0].value']);
    assert.match(issues[0]!.message, /RFC 9110 section 5\.5/);
  });
}

// The controller compiles a GRPCMethodMatch of type RegularExpression to one path pattern,
// ^/(?:service)/(?:method)$ (lib/regex.ts grpcMethodPattern); each part within the limits
// (1,024 characters, 2,000 RE2 instructions, as Envoy's max_program_size) could exceed them
// together, and the waypoint then left the route out while it was reported Accepted
// (waypoint/src/config.ts: "issues here mean a version skew between controller and waypoint").
for (const [what, method] of [
  ['two 1000-character parts (too long together)', { service: 'a'.repeat(1000), method: 'b'.repeat(1000) }],
  ['two [a-z]{1,600} parts (too many RE2 instructions together)', { service: '[a-z]{1,600}', method: '[a-z]{1,600}' }],
] as const) {
  test(`GRPCRoute RegularExpression service and method valid alone but not joined are refused at the match's method field: ${what}`, () => {
    const issues = validateObject({
      apiVersion: 'gateway.networking.k8s.io/v1', kind: 'GRPCRoute', metadata: { name: 'g', namespace: 'shop' },
      spec: { parentRefs: [{ group: '', kind: 'Service', name: 'ratings' }], rules: [{ matches: [{ method: { type: 'RegularExpression', ...method } }], backendRefs: [{ name: 'ratings', port: 9000 }] }] },
    });
    assert.deepEqual(issues.map((i) => i.path), ['spec.rules[0].matches[0].method']);
    assert.match(issues[0]!.message, /service and method together/);
  });
}

// Kubernetes names (https://kubernetes.io/docs/concepts/overview/working-with-objects/names/): a
// Namespace, a Service (RFC 1035/1123 label) and a Waypoint (its CRD: a DNS label, for the
// Deployment's labels and the Service it makes) at most 63 characters, other names (DNS subdomain)
// at most 253. The config directory has no API server to hold them to it: a Service or namespace
// of 64 was taken, with a hostname no DNS serves.
test('names at Kubernetes limits are taken and one character over them refused at the field: a DNS label 63, a DNS subdomain 253', () => {
  const l = (n: number) => 'a'.repeat(n);
  const at = (o: unknown) => validateObject(o).map((i) => i.path);
  for (const kind of ['Service', 'Waypoint'] as const) {
    const obj = (name: string, namespace = 'shop') => ({ apiVersion: kind === 'Service' ? 'v1' : 'weft.dev/v1alpha1', kind, metadata: { name, namespace }, spec: kind === 'Service' ? { ports: [{ port: 80 }] } : {} });
    assert.deepEqual(at(obj(l(63))), [], `${kind} of 63`);
    assert.deepEqual(at(obj(l(64))), ['metadata.name'], `${kind} of 64`);
    assert.deepEqual(at(obj('x', l(64))), ['metadata.namespace'], `${kind} in a namespace of 64`);
  }
  assert.deepEqual(at({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: l(64) } }), ['metadata.name']);
  assert.deepEqual(at(policy({ action: 'DENY', rules: [{}] })), []);
  assert.deepEqual(at({ ...(policy({ action: 'DENY', rules: [{}] }) as object), metadata: { name: l(253), namespace: 'shop' } }), []);
  assert.deepEqual(at({ ...(policy({ action: 'DENY', rules: [{}] }) as object), metadata: { name: l(254), namespace: 'shop' } }), ['metadata.name']);
  assert.deepEqual(at(policy({ targetRefs: [{ kind: 'Service', name: l(64) }], action: 'DENY', rules: [{}] })), ['spec.targetRefs[0].name']);
});

// The Gateway API CRDs bound a route's lists (httproute_types.go v1.2: rules 16, matches 64 a rule
// and 128 in all, filters 16, backendRefs 16, hostnames 16, headers and query params 16; parentRefs
// 32; a CORS filter's allowOrigins 64, allowMethods 9, allowHeaders and exposeHeaders 64): the API
// server refuses more. The config directory, and the kube lab's stand-in CRD (which
// keeps a route's spec whole), took a route of 10,000 rules; a consumer route of another tenant's
// Service goes to that tenant's waypoint.
test('a route past the Gateway API CRDs\' maxItems is refused at the list, its entries unread; one at the bounds is taken', () => {
  const route = (spec: Record<string, unknown>) => ({ apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'r', namespace: 'shop' }, spec: { parentRefs: [{ group: '', kind: 'Service', name: 'web' }], ...spec } });
  const at = (o: unknown) => validateObject(o).map((i) => i.path);
  const n = <T>(k: number, f: (i: number) => T) => Array.from({ length: k }, (_, i) => f(i));
  const backend = { name: 'web', port: 80 };
  assert.deepEqual(at(route({
    parentRefs: n(32, (i) => ({ group: '', kind: 'Service', name: `web${i}` })), hostnames: n(16, (i) => `h${i}.example`),
    rules: n(16, (i) => ({ matches: n(8, (j) => ({ path: { type: 'PathPrefix', value: `/${i}/${j}` }, headers: n(16, (k) => ({ name: `x-${k}`, value: 'v' })) })), backendRefs: n(16, () => backend) })),
  })), [], 'at the bounds');
  // Its entries are not validated: the list counts every read of an entry, and validation reads
  // them once each, all in the walk that bounds nesting (tooDeep, which does no more than look).
  let reads = 0;
  const rules = new Proxy(n(10_000, (i) => ({ matches: [{ path: { type: 'PathPrefix', value: `/p${i}` } }], backendRefs: [backend] })), {
    get: (target, key, receiver) => {
      if (typeof key === 'string' && /^[0-9]+$/.test(key)) reads++;
      return Reflect.get(target, key, receiver) as unknown;
    },
  });
  const long = route({ rules });
  assert.equal(tooDeep(long), undefined);
  const walked = reads;
  reads = 0;
  assert.deepEqual(at(long), ['spec.rules']);
  assert.equal(reads, walked, 'refused without reading its 10,000 rules beyond the nesting walk');
  assert.deepEqual(at(route({ rules: [{ matches: n(65, () => ({})), backendRefs: [backend] }] })), ['spec.rules[0].matches']);
  assert.deepEqual(at(route({ rules: [64, 64, 1].map((k) => ({ matches: n(k, () => ({})), backendRefs: [backend] })) })), ['spec.rules']);
  assert.deepEqual(at(route({ rules: [{ backendRefs: n(17, () => backend) }] })), ['spec.rules[0].backendRefs']);
  assert.deepEqual(at(route({ rules: [{ filters: n(17, () => ({ type: 'RequestMirror', requestMirror: { backendRef: backend } })), backendRefs: [backend] }] })), ['spec.rules[0].filters']);
  assert.deepEqual(at(route({ rules: [{ matches: [{ headers: n(17, (k) => ({ name: `x-${k}`, value: 'v' })) }], backendRefs: [backend] }] })), ['spec.rules[0].matches[0].headers']);
  assert.deepEqual(at(route({ rules: [{ matches: [{ queryParams: n(17, (k) => ({ name: `q${k}`, value: 'v' })) }], backendRefs: [backend] }] })), ['spec.rules[0].matches[0].queryParams']);
  assert.deepEqual(at(route({ rules: [{ filters: [{ type: 'RequestHeaderModifier', requestHeaderModifier: { set: n(17, (k) => ({ name: `x-${k}`, value: 'v' })), remove: n(17, (k) => `y-${k}`) } }], backendRefs: [backend] }] })), ['spec.rules[0].filters[0].requestHeaderModifier.set', 'spec.rules[0].filters[0].requestHeaderModifier.remove']);
  assert.deepEqual(at(route({ hostnames: n(17, (i) => `h${i}.example`) })), ['spec.hostnames']);
  assert.deepEqual(at(route({ parentRefs: n(33, (i) => ({ group: '', kind: 'Service', name: `web${i}` })) })), ['spec.parentRefs']);
  assert.match(validateObject(route({ rules: n(17, () => ({ backendRefs: [backend] })) }))[0]!.message, /has 17 entries; at most 16 \(the Gateway API CRD's maxItems\)/);
  // HTTPCORSFilter (httproute_types.go): allowOrigins 64, allowMethods 9, allowHeaders 64, exposeHeaders 64.
  const cors = (o: Record<string, unknown>) => route({ rules: [{ filters: [{ type: 'CORS', cors: o }], backendRefs: [backend] }] });
  const methods = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH'];
  assert.deepEqual(at(cors({ allowOrigins: n(64, (i) => `https://o${i}.example`), allowMethods: methods, allowHeaders: n(64, (i) => `x-${i}`), exposeHeaders: n(64, (i) => `y-${i}`) })), [], 'CORS at the bounds');
  assert.deepEqual(at(cors({ allowOrigins: n(65, (i) => `https://o${i}.example`), allowMethods: [...methods, 'GET'], allowHeaders: n(65, (i) => `x-${i}`), exposeHeaders: n(65, (i) => `y-${i}`) })),
    ['allowOrigins', 'allowMethods', 'allowHeaders', 'exposeHeaders'].map((k) => `spec.rules[0].filters[0].cors.${k}`), 'each refused at the list, its entries unread');
  // HTTPRouteRetry.codes has no maxItems; its values are 400 to 599 (GEP-1731), so a longer list only repeats them.
  const retry = (k: number) => route({ rules: [{ retry: { codes: n(k, (i) => 400 + (i % 200)) }, backendRefs: [backend] }] });
  assert.deepEqual(at(retry(200)), []);
  const refused = validateObject(retry(100_000));
  assert.deepEqual(refused.map((i) => i.path), ['spec.rules[0].retry.codes']);
  assert.match(refused[0]!.message, /has 100000 entries; at most 200 \(the codes 400 to 599, each once\)/);
});

// The attack: the controller compiles every regular expression of an object it validates, in its
// one thread, with re2js (2 to 5 us an RE2 instruction: 6 ms for `x[a-z]{1,900}`). Within the
// Gateway API CRDs' bounds a route holds 128 matches of a path and 16 headers, and a policy's
// `namespaces` have no bound at all: one HTTPRoute of 100 KB (a consumer route, whose writer needs
// no grant from the Service's namespace) took 12 s of the controller's thread at each write, an
// AuthorizationPolicy of 20,000 namespace patterns 1.1 s, holding every tenant's pushes. Now one
// object's patterns are compiled within a budget (MAX_OBJECT_REGEX_COST RE2 instructions, each
// pattern at least MIN_REGEX_COST); past it each is refused at its field, not compiled.
test('one object\'s regular expressions are compiled within a budget: past it each is refused at its field unread, so a route or policy of thousands costs tens of milliseconds, not seconds', async () => {
  const { MAX_OBJECT_REGEX_COST, MAX_REGEX_PROGRAM_SIZE } = await import('../../lib/regex.ts');
  const big = (i: number) => `x${i}[a-z]{1,900}`; // 1,802 RE2 instructions, within MAX_REGEX_PROGRAM_SIZE
  assert.ok(1802 * 8 <= MAX_OBJECT_REGEX_COST && MAX_REGEX_PROGRAM_SIZE >= 1802);
  const regex = (value: string) => ({ type: 'RegularExpression', value });
  const route = (matches: unknown[]) => ({
    apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'r', namespace: 'evil' },
    spec: {
      parentRefs: [{ group: '', kind: 'Service', name: 'payments', namespace: 'shop' }],
      rules: [0, 1].map((r) => ({ matches: matches.slice(r * 64, r * 64 + 64), backendRefs: [{ name: 'payments', namespace: 'shop', port: 80 }] })),
    },
  });
  assert.deepEqual(validateObject(route(Array.from({ length: 8 }, (_, j) => ({ path: regex(big(j)) })))), [], 'eight patterns at 1,802 instructions are within the budget');
  const all = Array.from({ length: 128 }, (_, j) => ({
    path: regex(j === 127 ? '(?=look-ahead)' : big(j)),
    headers: Array.from({ length: 16 }, (_, h) => ({ type: 'RegularExpression', name: `x-h${h}`, value: big(j * 16 + h) })),
  }));
  const { regexCompiled } = await import('../../lib/regex.ts');
  const before = regexCompiled.instructions;
  const issues = validateObject(route(all));
  const compiled = regexCompiled.instructions - before;
  assert.ok(issues.length > 0, 'refused');
  assert.match(issues[0]!.path, /^spec\.rules\[0\]\.matches\[0\]\.headers\[\d+\]\.value$/);
  assert.match(issues[0]!.message, new RegExp(`past the budget of ${MAX_OBJECT_REGEX_COST} RE2 instructions`));
  assert.equal(issues.some((i) => /not an RE2 regular expression/.test(i.message)), false, 'the patterns past the budget are not compiled (the last one, invalid, is never looked at)');
  // Counted in what was compiled, not in time (about 12 s before: 2,176 patterns of 1,802 instructions).
  assert.ok(compiled <= MAX_OBJECT_REGEX_COST + MAX_REGEX_PROGRAM_SIZE, `${compiled} RE2 instructions compiled`);
  // A policy's namespace patterns (no list bound in Istio's API) take from the same budget.
  const namespaces = Array.from({ length: 20_000 }, (_, i) => `team-${i}-*-prod-*`);
  const p = validateObject(policy({ action: 'DENY', rules: [{ from: [{ source: { namespaces } }] }] }));
  assert.match(p[0]!.path, /^spec\.rules\[0\]\.from\[0\]\.source\.namespaces\[\d+\]$/);
  assert.match(p[0]!.message, /past the budget/);
  assert.ok(Number(/\[(\d+)\]$/.exec(p[0]!.path)![1]) <= MAX_OBJECT_REGEX_COST / 16, `the budget ends at ${p[0]!.path}`);
});

// The attack (review of branch tc): a pattern past MAX_REGEX_PROGRAM_SIZE was compiled in full
// before its size was checked and then charged only MIN_REGEX_COST, so a route of 1,024 patterns
// `[a-z]{1000}` x 92 (1,023 characters, about 93,000 instructions each) took 57 s to validate. The
// size is now estimated from the pattern's syntax first (RE2's own parse-time bound, Go's
// regexp/syntax calcSize: counted repeats multiply), and a pattern past it is refused uncompiled and
// charged its estimate. Counted in compiled instructions, not in time.
test('a pattern past the program size is refused from its estimate, never compiled, and charged that estimate', async () => {
  const { regexProblem, RegexBudget, regexCompiled, estimateProgramSize, MAX_REGEX_PROGRAM_SIZE, MAX_OBJECT_REGEX_COST } = await import('../../lib/regex.ts');
  for (const p of ['[a-z]{1000}'.repeat(92) + 'x1', '.{1000}'.repeat(146), '(?:a{1000}){1000}', '((((a{2}){2}){2}){2}){1000}', '(?:\\p{L}{1,30}){1,300}']) {
    const before = regexCompiled.instructions;
    const b = new RegexBudget();
    assert.match(regexProblem(p, b) ?? '', new RegExp(`is estimated at \\d+ RE2 instructions; the limit is ${MAX_REGEX_PROGRAM_SIZE}`), p.slice(0, 30));
    assert.equal(regexCompiled.instructions, before, `${p.slice(0, 30)} is not compiled`);
    assert.ok(estimateProgramSize(p) > MAX_OBJECT_REGEX_COST || b.spent === false, 'charged its estimate');
  }
  const b = new RegexBudget();
  regexProblem('[a-z]{1000}'.repeat(92), b);
  assert.equal(b.spent, true, 'one such pattern spends the object\'s budget');
  // The estimate is never below the program RE2 compiles (so nothing past the limit gets through
  // to the compile), and near it for ordinary patterns.
  for (const p of ['x[a-z]{1,900}', '(?:\\p{L}{1,30}){1,30}', '^/api/v[0-9]+/users/[^/]+$', '(a|b|c)*d+e?', '(?i)hello\\.world', '\\Qa.b\\E{3}', '[\\p{L}]{1,100}', 'a{2,5}(?:bc){3,}', '(?P<x>[0-9]{4})-[0-9]{2}', '[]a]{2}', 'a\\{2}', '(?:)', '']) {
    const before = regexCompiled.instructions;
    assert.equal(regexProblem(p), undefined, p);
    const size = regexCompiled.instructions - before;
    const est = estimateProgramSize(p);
    assert.ok(est >= size && est <= size * 2 + 8, `${p}: estimated ${est}, compiled ${size}`);
  }
});

// The attack (second review of branch tc): a pattern estimated within MAX_REGEX_PROGRAM_SIZE was
// compiled in full; one that then compiled past it was refused, charged only MIN_REGEX_COST. The
// estimate left out RE2's 2 fixed instructions (`a{1000}b{1000}`: estimated 2,000, compiled 2,002)
// and counted an empty alternative as nothing (`(?:a|){1000}`: 2,000, compiled 3,002), so one
// HTTPRoute of 64 matches x 16 such headers compiled 2,002,000 instructions (4 s). Now a pattern
// refused after its compile is charged what it compiled, and the estimate counts both.
test('a pattern refused after its compile is charged its compiled size: a route of 1,024 patterns just past the limit is bounded by the object\'s budget', async () => {
  const { regexCompiled, MAX_OBJECT_REGEX_COST, MAX_REGEX_PROGRAM_SIZE } = await import('../../lib/regex.ts');
  for (const pat of ['a{1000}b{1000}', '(?:a|){1000}']) {
    const matches = Array.from({ length: 64 }, () => ({ headers: Array.from({ length: 16 }, (_, h) => ({ type: 'RegularExpression', name: `x-h${h}`, value: pat })) }));
    const route = {
      apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'costly', namespace: 'evil' },
      spec: { parentRefs: [{ group: '', kind: 'Service', name: 'reviews', namespace: 'shop' }], rules: [{ matches, backendRefs: [{ name: 'reviews', namespace: 'shop', port: 80 }] }] },
    };
    const before = regexCompiled.instructions;
    const issues = validateObject(route);
    const compiled = regexCompiled.instructions - before;
    assert.match(issues[0]!.path, /^spec\.rules\[0\]\.matches\[0\]\.headers\[0\]\.value$/, pat);
    assert.match(issues[0]!.message, new RegExp(`RE2 instructions; the limit is ${MAX_REGEX_PROGRAM_SIZE}`), pat);
    assert.match(issues.at(-1)!.message, /past the budget/, pat);
    assert.ok(compiled <= MAX_OBJECT_REGEX_COST + 4 * MAX_REGEX_PROGRAM_SIZE, `${pat}: ${compiled} RE2 instructions compiled`);
  }
});

// Second review of branch tc: the estimate summed alternatives, where RE2 merges an alternation of
// single characters into one class (Go regexp/syntax parse.go, cleanAlt / mergeCharClass), so
// patterns accepted before the estimate (a DNS label, a set of letters) were refused: a route
// valid before an upgrade became Invalid after it. They are accepted, charged what they compile to.
test('an alternation of single characters is estimated as one class: patterns accepted before the estimate still are', async () => {
  const { regexProblem, regexCompiled, estimateProgramSize } = await import('../../lib/regex.ts');
  for (const [p, size] of [['/(?:[a-z0-9]|-|_|\\.){1,253}', 508], ['(?:a|b|c|d|e|f){1,300}', 601], ['(?:\\p{L}|\\p{N}|\\p{P}|\\p{S}|\\p{M}){400}', 402]] as const) {
    const before = regexCompiled.instructions;
    assert.equal(regexProblem(p), undefined, p);
    assert.equal(regexCompiled.instructions - before, size, `${p} compiles to ${size}`);
    assert.ok(estimateProgramSize(p) >= size && estimateProgramSize(p) <= size + 8, `${p}: estimated ${estimateProgramSize(p)}`);
  }
});

// Review of branch tc: a rewrite value was accepted if it started with `/`, so a consumer route
// rewrote to `/public/../admin` or `/%61dmin` (the waypoint now normalizes the rewritten target,
// proxy.ts route stage). A value not already in normalized form (RFC 3986 section 6.2.2: dot
// segments, percent-encoded unreserved characters; an encoded or raw backslash or encoded slash,
// which the normalization modes decode, merge or refuse) is refused here, naming the field.
test('a rewrite path not in normalized form (dot segments, encoded unreserved characters or slashes, a backslash) is refused at its field', () => {
  const rewrite = (path: Record<string, string>) => ({ matches: [{ path: { type: 'PathPrefix', value: '/pfx' } }], filters: [{ type: 'URLRewrite', urlRewrite: { path } }], backendRefs: [{ name: 'web', port: 80 }] });
  const full = (value: string) => httpRuleIssues(rewrite({ type: 'ReplaceFullPath', replaceFullPath: value }));
  const prefix = (value: string) => httpRuleIssues(rewrite({ type: 'ReplacePrefixMatch', replacePrefixMatch: value }));
  for (const value of ['/public/../admin', '/./admin', '/a/..', '/%61dmin', '/a%2Fb', '/a%5cb', '/a\\b', '/a%zz']) {
    const issues = full(value);
    assert.equal(issues.length, 1, `${value}: ${issues.join()}`);
    assert.match(issues[0]!, /^spec\.rules\[0\]\.filters\[0\]\.urlRewrite\.path\.replaceFullPath: .*not in normalized form/, value);
  }
  assert.match(prefix('/v2/..')[0] ?? '', /^spec\.rules\[0\]\.filters\[0\]\.urlRewrite\.path\.replacePrefixMatch: .*dot segment/);
  for (const ok of ['/admin', '/a/b.c/..d/...', '/%7Bx%7D', '/v2/', '/a%20b']) assert.deepEqual(full(ok), [], ok);
  assert.deepEqual(prefix(''), []);
});
