// Core and extended HTTPRoute conformance tests that upstream writes against a Gateway but whose
// behaviour a mesh route must have too, translated with a Service (`echo`, port 80) as the parent.
// Upstream's infra-backend-v1/v2/v3 are echo-v1, echo-v2 and backend-v3 here; its
// gateway-conformance-web-backend namespace is `gamma-consumer` (Service web-backend). Route
// `hostnames` are left out: in the mesh profile the parent Service already selects the traffic.
import type { ConformanceTest } from './features.ts';
import { CONSUMER_NS, NS, runCases, type ConformanceMesh, type Expected } from './harness.ts';
import type { ClientRequest } from './client-protocol.ts';
import { backend, exact, header, httpRoute, prefix, requestHeaders } from './manifests.ts';

type Case = { name: string; request: ClientRequest; expect: Expected };
const cases = (list: Case[]) => (cm: ConformanceMesh) => runCases(cm.client(`${NS}/echo-v1`), list);
const req = (path: string, extra: Partial<ClientRequest> = {}): ClientRequest => ({ host: 'echo', path, ...extra });
const PARENT = { service: 'echo', port: 80 };
const v = (n: 1 | 2 | 3) => backend(n === 3 ? 'backend-v3' : `echo-v${n}`, 8080);
const B = { 1: 'echo-v1', 2: 'echo-v2', 3: 'backend-v3' } as const;
const NO_RULE_TODO = 'issue 16 item 6: a request matching no rule goes to the Service instead of 404 (wp-proxy branch)';

function responseHeaderModifier(): Record<string, unknown> {
  const edits = (set: Array<[string, string]>, add: Array<[string, string]>, remove: string[]) => ({
    type: 'ResponseHeaderModifier',
    responseHeaderModifier: { ...(set.length ? { set: set.map(([name, value]) => ({ name, value })) } : {}), ...(add.length ? { add: add.map(([name, value]) => ({ name, value })) } : {}), ...(remove.length ? { remove } : {}) },
  });
  return httpRoute('response-headers', PARENT, [
    { matches: [prefix('/set')], filters: [edits([['X-Header-Set', 'set-overwrites-values']], [], [])], backendRefs: [v(1)] },
    { matches: [prefix('/add')], filters: [edits([], [['X-Header-Add', 'add-appends-values']], [])], backendRefs: [v(1)] },
    { matches: [prefix('/remove')], filters: [edits([], [], ['X-Header-Remove'])], backendRefs: [v(1)] },
    {
      matches: [prefix('/multiple')],
      filters: [edits([['X-Header-Set-1', 'header-set-1'], ['X-Header-Set-2', 'header-set-2']], [['X-Header-Add-1', 'header-add-1'], ['X-Header-Add-2', 'header-add-2'], ['X-Header-Add-3', 'header-add-3']], ['X-Header-Remove-1', 'X-Header-Remove-2'])],
      backendRefs: [v(1)],
    },
    {
      matches: [prefix('/case-insensitivity')],
      filters: [edits([['X-Header-Set', 'header-set']], [['X-Header-Add', 'header-add'], ['x-lowercase-add', 'lowercase-add'], ['x-Mixedcase-ADD-1', 'mixedcase-add-1'], ['X-mixeDcase-add-2', 'mixedcase-add-2'], ['X-UPPERCASE-ADD', 'uppercase-add']], ['X-Header-Remove'])],
      backendRefs: [v(1)],
    },
    {
      matches: [prefix('/response-and-request-header-modifiers')],
      filters: [
        edits([['X-Header-Set-1', 'header-set-1'], ['X-Header-Set-2', 'header-set-2']], [['X-Header-Add-1', 'header-add-1'], ['X-Header-Add-2', 'header-add-2']], ['X-Header-Remove-1', 'X-Header-Remove-2']),
        requestHeaders({ set: [['X-Header-Set', 'set-overwrites-values']], add: [['X-Header-Add', 'header-val-1'], ['X-Header-Add-Append', 'header-val-2']], remove: ['X-Header-Remove'] }),
      ],
      backendRefs: [v(1)],
    },
  ]);
}

/** The echo app sets the response headers a request asks for (`x-echo-set-header`). */
const backendSets = (path: string, headers: Record<string, string>, extra: Record<string, string> = {}): ClientRequest =>
  req(path, { headers: { 'x-echo-set-header': Object.entries(headers).map(([k, val]) => `${k}:${val}`).join(','), ...extra } });

export const CORE_HTTP_TESTS: ConformanceTest[] = [
  {
    name: 'HTTPRouteExactPathMatching',
    upstream: 'httproute-exact-path-matching.go',
    description: 'Exact path matches are whole and case-sensitive; anything else matches no rule (404)',
    features: ['Mesh', 'HTTPRoute'],
    manifests: [httpRoute('exact-path', PARENT, [{ matches: [exact('/one')], backendRefs: [v(1)] }, { matches: [exact('/two')], backendRefs: [v(2)] }])],
    run: cases([
      { name: '/one', request: req('/one'), expect: { backend: B[1] } },
      { name: '/two', request: req('/two'), expect: { backend: B[2] } },
      { name: '/', request: req('/'), expect: { status: 404 } },
      { name: '/one/example', request: req('/one/example'), expect: { status: 404 } },
      { name: '/two/', request: req('/two/'), expect: { status: 404 } },
      { name: '/Two', request: req('/Two'), expect: { status: 404 } },
    ]),
    todo: NO_RULE_TODO,
  },
  {
    name: 'HTTPRouteHeaderMatching',
    upstream: 'httproute-header-matching.go',
    description: 'header matches, ANDed within a match and ORed across matches, more matched headers first; no match is 404',
    features: ['Mesh', 'HTTPRoute'],
    manifests: [httpRoute('header-matching', PARENT, [
      { matches: [{ headers: [header('version', 'one')] }], backendRefs: [v(1)] },
      { matches: [{ headers: [header('version', 'two')] }], backendRefs: [v(2)] },
      { matches: [{ headers: [header('version', 'two'), header('color', 'orange')] }], backendRefs: [v(1)] },
      { matches: [{ headers: [header('color', 'blue')] }, { headers: [header('color', 'green')] }], backendRefs: [v(1)] },
      { matches: [{ headers: [header('color', 'red')] }, { headers: [header('color', 'yellow')] }], backendRefs: [v(2)] },
    ])],
    run: cases([
      { name: 'version one', request: req('/', { headers: { Version: 'one' } }), expect: { backend: B[1] } },
      { name: 'version two', request: req('/', { headers: { Version: 'two' } }), expect: { backend: B[2] } },
      { name: 'version two, color orange', request: req('/', { headers: { Version: 'two', Color: 'orange' } }), expect: { backend: B[1] } },
      { name: 'version two, color blue', request: req('/', { headers: { Version: 'two', Color: 'blue' } }), expect: { backend: B[2] } },
      { name: 'color orange alone', request: req('/', { headers: { Color: 'orange' } }), expect: { status: 404 } },
      { name: 'unrelated header', request: req('/', { headers: { 'Some-Other-Header': 'one' } }), expect: { status: 404 } },
      { name: 'color blue', request: req('/', { headers: { Color: 'blue' } }), expect: { backend: B[1] } },
      { name: 'color green', request: req('/', { headers: { Color: 'green' } }), expect: { backend: B[1] } },
      { name: 'color red', request: req('/', { headers: { Color: 'red' } }), expect: { backend: B[2] } },
      { name: 'color yellow', request: req('/', { headers: { Color: 'yellow' } }), expect: { backend: B[2] } },
      { name: 'color purple', request: req('/', { headers: { Color: 'purple' } }), expect: { status: 404 } },
    ]),
    todo: NO_RULE_TODO,
  },
  {
    name: 'HTTPRouteMethodMatching',
    upstream: 'httproute-method-matching.go',
    description: 'method matches alone and with path and header matches, ORed matches, and the spec precedence',
    features: ['Mesh', 'HTTPRoute', 'HTTPRouteMethodMatching'],
    manifests: [httpRoute('method-matching', PARENT, [
      { matches: [{ method: 'POST' }], backendRefs: [v(1)] },
      { matches: [{ method: 'GET' }], backendRefs: [v(2)] },
      { matches: [{ ...prefix('/path1'), method: 'GET' }], backendRefs: [v(1)] },
      { matches: [{ headers: [header('version', 'one')], method: 'PUT' }], backendRefs: [v(2)] },
      { matches: [{ ...prefix('/path2'), headers: [header('version', 'two')], method: 'POST' }], backendRefs: [v(3)] },
      { matches: [{ ...prefix('/path3'), method: 'PATCH' }, { ...prefix('/path4'), headers: [header('version', 'three')], method: 'DELETE' }], backendRefs: [v(1)] },
      { matches: [prefix('/path5')], backendRefs: [v(1)] },
      { matches: [{ method: 'PATCH' }], backendRefs: [v(2)] },
      { matches: [{ headers: [header('version', 'four')] }], backendRefs: [v(3)] },
    ])],
    run: cases([
      { name: 'POST /', request: req('/', { method: 'POST' }), expect: { backend: B[1] } },
      { name: 'GET /', request: req('/', { method: 'GET' }), expect: { backend: B[2] } },
      { name: 'HEAD / matches no rule', request: req('/', { method: 'HEAD' }), expect: { status: 404 } },
      { name: 'GET /path1', request: req('/path1', { method: 'GET' }), expect: { backend: B[1] } },
      { name: 'PUT with version one', request: req('/', { method: 'PUT', headers: { version: 'one' } }), expect: { backend: B[2] } },
      { name: 'POST /path2 with version two', request: req('/path2', { method: 'POST', headers: { version: 'two' } }), expect: { backend: B[3] } },
      { name: 'PATCH /path3', request: req('/path3', { method: 'PATCH' }), expect: { backend: B[1] } },
      { name: 'DELETE /path4 with version three', request: req('/path4', { method: 'DELETE', headers: { version: 'three' } }), expect: { backend: B[1] } },
      { name: 'PUT / without the ANDed header', request: req('/', { method: 'PUT' }), expect: { status: 404 } },
      { name: 'DELETE /path4 without the ANDed header', request: req('/path4', { method: 'DELETE' }), expect: { status: 404 } },
      { name: 'PATCH /path5: path beats method', request: req('/path5', { method: 'PATCH' }), expect: { backend: B[1] } },
      { name: 'PATCH with version four: method beats header', request: req('/', { method: 'PATCH', headers: { version: 'four' } }), expect: { backend: B[2] } },
    ]),
    todo: NO_RULE_TODO,
  },
  {
    name: 'HTTPRoutePathMatchOrder',
    upstream: 'httproute-path-match-order.go',
    description: 'Exact beats PathPrefix, and the longest prefix wins',
    features: ['Mesh', 'HTTPRoute'],
    manifests: [httpRoute('path-order', PARENT, [
      { matches: [exact('/match')], backendRefs: [v(1)] },
      { matches: [exact('/match/exact')], backendRefs: [v(2)] },
      { matches: [exact('/match/exact/one')], backendRefs: [v(3)] },
      { matches: [prefix('/match/')], backendRefs: [v(3)] },
      { matches: [prefix('/match/prefix/')], backendRefs: [v(1)] },
      { matches: [prefix('/match/prefix/one')], backendRefs: [v(2)] },
    ])],
    run: cases([
      { name: '/match/exact/one', request: req('/match/exact/one'), expect: { backend: B[3] } },
      { name: '/match/exact', request: req('/match/exact'), expect: { backend: B[2] } },
      { name: '/match', request: req('/match'), expect: { backend: B[1] } },
      { name: '/match/prefix/one/any', request: req('/match/prefix/one/any'), expect: { backend: B[2] } },
      { name: '/match/prefix/any', request: req('/match/prefix/any'), expect: { backend: B[1] } },
      { name: '/match/any', request: req('/match/any'), expect: { backend: B[3] } },
    ]),
  },
  {
    name: 'HTTPRouteResponseHeaderModifier',
    upstream: 'httproute-response-header-modifier.go',
    description: "ResponseHeaderModifier sets, appends to and removes the backend's response headers, names case-insensitive",
    features: ['Mesh', 'HTTPRoute', 'HTTPRouteResponseHeaderModification'],
    manifests: [responseHeaderModifier()],
    run: cases([
      { name: 'set adds', request: backendSets('/set', { 'Some-Other-Header': 'val' }), expect: { backend: B[1], responseHeaders: { 'Some-Other-Header': 'val', 'X-Header-Set': 'set-overwrites-values' } } },
      { name: 'set overwrites', request: backendSets('/set', { 'Some-Other-Header': 'val', 'X-Header-Set': 'some-other-value' }), expect: { backend: B[1], responseHeaders: { 'Some-Other-Header': 'val', 'X-Header-Set': 'set-overwrites-values' } } },
      { name: 'add creates', request: backendSets('/add', { 'Some-Other-Header': 'val' }), expect: { backend: B[1], responseHeaders: { 'Some-Other-Header': 'val', 'X-Header-Add': 'add-appends-values' } } },
      { name: 'add appends', request: backendSets('/add', { 'Some-Other-Header': 'val', 'X-Header-Add': 'some-other-value' }), expect: { backend: B[1], responseHeaders: { 'Some-Other-Header': 'val', 'X-Header-Add': 'some-other-value,add-appends-values' } } },
      { name: 'remove', request: backendSets('/remove', { 'X-Header-Remove': 'val' }), expect: { backend: B[1], absentResponseHeaders: ['X-Header-Remove'] } },
      {
        name: 'several edits',
        request: backendSets('/multiple', { 'X-Header-Set-2': 'set-val-2', 'X-Header-Add-2': 'add-val-2', 'X-Header-Remove-2': 'remove-val-2', 'Another-Header': 'another-header-val', 'X-Header-Remove-1': 'val' }),
        expect: { backend: B[1], responseHeaders: { 'X-Header-Set-1': 'header-set-1', 'X-Header-Set-2': 'header-set-2', 'X-Header-Add-1': 'header-add-1', 'X-Header-Add-2': 'add-val-2,header-add-2', 'X-Header-Add-3': 'header-add-3', 'Another-Header': 'another-header-val' }, absentResponseHeaders: ['X-Header-Remove-1', 'X-Header-Remove-2'] },
      },
      {
        name: 'names compare case-insensitively',
        request: backendSets('/case-insensitivity', { 'x-header-set': 'original-val-set', 'x-header-add': 'original-val-add', 'x-header-remove': 'original-val-remove', 'Another-Header': 'another-header-val' }),
        expect: { backend: B[1], responseHeaders: { 'X-Header-Set': 'header-set', 'X-Header-Add': 'original-val-add,header-add', 'X-Lowercase-Add': 'lowercase-add', 'X-Mixedcase-Add-1': 'mixedcase-add-1', 'X-Mixedcase-Add-2': 'mixedcase-add-2', 'X-Uppercase-Add': 'uppercase-add', 'Another-Header': 'another-header-val' }, absentResponseHeaders: ['X-Header-Remove'] },
      },
      {
        name: 'response and request edits together',
        request: backendSets('/response-and-request-header-modifiers', { 'X-Header-Set-2': 'set-val-2', 'X-Header-Add-2': 'add-val-2', 'X-Header-Remove-2': 'remove-val-2', 'Another-Header': 'another-header-val', 'X-Header-Remove-1': 'remove-val-1', 'X-Header-Echo': 'echo' }, { 'X-Header-Remove': 'remove-val', 'X-Header-Add-Append': 'append-val-1', 'X-Header-Echo': 'echo' }),
        expect: {
          backend: B[1], path: '/response-and-request-header-modifiers',
          requestHeaders: { 'X-Header-Add': 'header-val-1', 'X-Header-Set': 'set-overwrites-values', 'X-Header-Add-Append': 'append-val-1,header-val-2', 'X-Header-Echo': 'echo' },
          absentRequestHeaders: ['X-Header-Remove'],
          responseHeaders: { 'X-Header-Set-1': 'header-set-1', 'X-Header-Set-2': 'header-set-2', 'X-Header-Add-1': 'header-add-1', 'X-Header-Add-2': 'add-val-2,header-add-2', 'Another-Header': 'another-header-val', 'X-Header-Echo': 'echo' },
          absentResponseHeaders: ['X-Header-Remove-1', 'X-Header-Remove-2'],
        },
      },
    ]),
  },
  {
    name: 'HTTPRouteRewriteHost',
    upstream: 'httproute-rewrite-host.go',
    description: 'URLRewrite hostname replaces the Host the backend sees, alone and with header edits',
    features: ['Mesh', 'HTTPRoute', 'HTTPRouteHostRewrite'],
    manifests: [httpRoute('rewrite-host', PARENT, [
      { matches: [prefix('/one')], filters: [{ type: 'URLRewrite', urlRewrite: { hostname: 'one.example.org' } }], backendRefs: [v(1)] },
      { filters: [{ type: 'URLRewrite', urlRewrite: { hostname: 'example.org' } }], backendRefs: [v(2)] },
      {
        matches: [prefix('/rewrite-host-and-modify-headers')],
        filters: [{ type: 'URLRewrite', urlRewrite: { hostname: 'test.example.org' } }, requestHeaders({ set: [['X-Header-Set', 'set-overwrites-values']], add: [['X-Header-Add', 'header-val-1'], ['X-Header-Add-Append', 'header-val-2']], remove: ['X-Header-Remove'] })],
        backendRefs: [v(2)],
      },
    ])],
    run: cases([
      { name: '/one', request: req('/one'), expect: { backend: B[1], path: '/one', requestHeaders: { host: 'one.example.org' } } },
      { name: '/two', request: req('/two'), expect: { backend: B[2], path: '/two', requestHeaders: { host: 'example.org' } } },
      {
        name: 'host and headers',
        request: req('/rewrite-host-and-modify-headers', { headers: { 'X-Header-Remove': 'remove-val', 'X-Header-Add-Append': 'append-val-1' } }),
        expect: { backend: B[2], requestHeaders: { host: 'test.example.org', 'X-Header-Add': 'header-val-1', 'X-Header-Add-Append': 'append-val-1,header-val-2', 'X-Header-Set': 'set-overwrites-values' }, absentRequestHeaders: ['X-Header-Remove'] },
      },
    ]),
  },
  {
    name: 'HTTPRouteInvalidNonExistentBackendRef',
    upstream: 'httproute-invalid-nonexistent-backendref.go',
    description: 'a backendRef to a Service that does not exist answers 500 for the requests routed to it, and only for those',
    features: ['Mesh', 'HTTPRoute'],
    manifests: [httpRoute('nonexistent-backend', PARENT, [
      { matches: [prefix('/missing')], backendRefs: [backend('nonexistent', 8080)] },
      { backendRefs: [v(1)] },
    ])],
    run: cases([
      { name: 'routed to the missing Service', request: req('/missing'), expect: { status: 500 } },
      // Not in upstream: the route's other rule still works (issue 16: a bad object costs only itself).
      { name: 'another rule of the same route', request: req('/'), expect: { backend: B[1] } },
    ]),
    todo: 'issue 16 item 2: a backendRef to a missing Service makes the waypoint reject its whole config (wp-policy branch)',
  },
  {
    name: 'HTTPRouteInvalidCrossNamespaceBackendRef',
    upstream: 'httproute-invalid-cross-namespace-backend-ref.go',
    description: 'a backendRef to another namespace without a ReferenceGrant there answers 500',
    features: ['Mesh', 'HTTPRoute', 'ReferenceGrant'],
    manifests: [httpRoute('cross-ns-no-grant', PARENT, [{ backendRefs: [backend('web-backend', 80, { namespace: CONSUMER_NS })] }])],
    run: cases([{ name: 'GET /', request: req('/'), expect: { status: 500 } }]),
    todo: 'issue 16 item 6: cross-namespace backendRefs need no ReferenceGrant (wp-policy branch)',
  },
  {
    name: 'HTTPRouteReferenceGrant',
    upstream: 'httproute-reference-grant.go',
    description: 'with a ReferenceGrant in the backend namespace, a cross-namespace backendRef is followed; without it (deleted), 500',
    features: ['Mesh', 'HTTPRoute', 'ReferenceGrant'],
    manifests: [
      {
        apiVersion: 'gateway.networking.k8s.io/v1beta1', kind: 'ReferenceGrant', metadata: { name: 'routes-from-gamma', namespace: CONSUMER_NS },
        spec: { from: [{ group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', namespace: NS }], to: [{ group: '', kind: 'Service', name: 'web-backend' }] },
      },
      httpRoute('cross-ns-granted', PARENT, [{ backendRefs: [backend('web-backend', 80, { namespace: CONSUMER_NS })] }]),
    ],
    run: async (cm) => {
      const granted = await runCases(cm.client(`${NS}/echo-v1`), [{ name: 'granted', request: req('/'), expect: { backend: 'echo-v1', namespace: CONSUMER_NS } }]);
      if (granted.length > 0) return granted;
      // Upstream then deletes the grant and expects 500.
      await cm.apply('HTTPRouteReferenceGrant without its grant', [httpRoute('cross-ns-granted', PARENT, [{ backendRefs: [backend('web-backend', 80, { namespace: CONSUMER_NS })] }])]);
      return runCases(cm.client(`${NS}/echo-v1`), [{ name: 'grant deleted', request: req('/'), expect: { status: 500 } }]);
    },
    todo: 'issue 16 item 6: ReferenceGrant is not implemented, so deleting it changes nothing (wp-policy branch)',
  },
];

/** A route rule with timeouts on echo-v1 (upstream: infra-backend-v1). */
function timeoutRule(path: string, timeouts: Record<string, string>): Record<string, unknown> {
  return { matches: [prefix(path)], backendRefs: [v(1)], timeouts };
}

CORE_HTTP_TESTS.push(
  {
    name: 'HTTPRouteRequestTimeout',
    upstream: 'httproute-timeout-request.go',
    description: 'timeouts.request answers 504 when the backend is slower; 0s disables it',
    features: ['Mesh', 'HTTPRoute', 'HTTPRouteRequestTimeout'],
    manifests: [httpRoute('request-timeout', PARENT, [timeoutRule('/request-timeout', { request: '500ms' }), timeoutRule('/disable-request-timeout', { request: '0s' })])],
    run: cases([
      { name: 'fast backend', request: req('/request-timeout'), expect: { backend: B[1] } },
      { name: 'backend takes 1s', request: req('/request-timeout?delay=1s'), expect: { status: 504 } },
      { name: 'timeout disabled', request: req('/disable-request-timeout?delay=1s'), expect: { backend: B[1] } },
    ]),
  },
  {
    name: 'HTTPRouteBackendTimeout',
    upstream: 'httproute-timeout-backend-request.go',
    description: 'timeouts.backendRequest answers 504 when the backend is slower; 0s disables it',
    features: ['Mesh', 'HTTPRoute', 'HTTPRouteBackendTimeout'],
    manifests: [httpRoute('backend-timeout', PARENT, [timeoutRule('/backend-timeout', { backendRequest: '500ms' }), timeoutRule('/disable-backend-timeout', { backendRequest: '0s' })])],
    run: cases([
      { name: 'fast backend', request: req('/backend-timeout'), expect: { backend: B[1] } },
      { name: 'backend takes 1s', request: req('/backend-timeout?delay=1s'), expect: { status: 504 } },
      { name: 'timeout disabled', request: req('/disable-backend-timeout?delay=1s'), expect: { backend: B[1] } },
    ]),
  },
  {
    name: 'HTTPRouteOmittedBackendRefs',
    upstream: 'httproute-omitted-backendrefs.go',
    description: 'a rule with no backendRefs (omitted or empty) answers 500; other rules still forward',
    features: ['Mesh', 'HTTPRoute'],
    manifests: [httpRoute('omitted-backends', PARENT, [
      { matches: [exact('/omitted-no-forward')] },
      { matches: [exact('/empty-no-forward')], backendRefs: [] },
      { matches: [prefix('/')], backendRefs: [v(1)] },
    ])],
    run: cases([
      { name: 'forwarded', request: req('/forward'), expect: { backend: B[1] } },
      { name: 'backendRefs omitted', request: req('/omitted-no-forward'), expect: { status: 500 } },
      { name: 'backendRefs empty', request: req('/empty-no-forward'), expect: { status: 500 } },
    ]),
  },
  {
    name: 'HTTPRouteRequestMirror',
    upstream: 'httproute-request-mirror.go',
    description: 'RequestMirror sends a copy (after the rule\'s header edits) to another backend while the answer comes from the route\'s backend',
    features: ['Mesh', 'HTTPRoute', 'HTTPRouteRequestMirror'],
    manifests: [httpRoute('request-mirror', PARENT, [
      { matches: [prefix('/mirror')], filters: [{ type: 'RequestMirror', requestMirror: { backendRef: { name: 'echo-v2', namespace: NS, port: 8080 } } }], backendRefs: [backend('echo-v1', 8080, { namespace: NS })] },
      {
        matches: [prefix('/mirror-and-modify-headers')],
        filters: [
          requestHeaders({ set: [['X-Header-Set', 'set-overwrites-values']], add: [['X-Header-Add', 'header-val-1'], ['X-Header-Add-Append', 'header-val-2']], remove: ['X-Header-Remove'] }),
          { type: 'RequestMirror', requestMirror: { backendRef: { name: 'echo-v2', namespace: NS, port: 8080 } } },
        ],
        backendRefs: [backend('echo-v1', 8080, { namespace: NS })],
      },
    ])],
    run: async (cm) => {
      const id = () => `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
      const plain = `/mirror?request-id=${id()}`;
      const edited = `/mirror-and-modify-headers?request-id=${id()}`;
      const editedHeaders = { 'X-Header-Add': 'header-val-1', 'X-Header-Add-Append': 'append-val-1,header-val-2', 'X-Header-Set': 'set-overwrites-values' };
      const failures = await runCases(cm.client(`${NS}/echo-v1`), [
        { name: 'mirrored', request: req(plain), expect: { backend: B[1], path: plain } },
        { name: 'mirrored with header edits', request: req(edited, { headers: { 'X-Header-Remove': 'remove-val', 'X-Header-Add-Append': 'append-val-1' } }), expect: { backend: B[1], path: edited, requestHeaders: editedHeaders, absentRequestHeaders: ['X-Header-Remove'] } },
      ], 1);
      // The copy is fire-and-forget: wait for echo-v2 to log it.
      const mirrored = (path: string) => cm.requestsSeen(`${NS}/echo-v2`).find((r) => r.path === path);
      const deadline = Date.now() + 5_000;
      while ((!mirrored(plain) || !mirrored(edited)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      if (!mirrored(plain)) failures.push(`no copy of ${plain} reached echo-v2`);
      const copy = mirrored(edited);
      if (!copy) failures.push(`no copy of ${edited} reached echo-v2`);
      else {
        const h = Object.fromEntries(Object.entries(copy.headers).map(([k, val]) => [k.toLowerCase(), (Array.isArray(val) ? val : [val]).flatMap((x) => x.split(',')).map((x) => x.trim()).join(',')]));
        for (const [k, val] of Object.entries(editedHeaders)) if (h[k.toLowerCase()] !== val) failures.push(`the copy of ${edited} carried ${k}: ${h[k.toLowerCase()] ?? '(absent)'} (want ${val})`);
        if (h['x-header-remove'] !== undefined) failures.push(`the copy of ${edited} still carried X-Header-Remove`);
      }
      return failures;
    },
  },
);
