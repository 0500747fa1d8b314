// Core and extended HTTPRoute conformance tests that upstream writes against a Gateway but whose
// behaviour a mesh route must have too, translated with a Service (`echo`, port 80) as the parent.
// Upstream's infra-backend-v1/v2/v3 are echo-v1, echo-v2 and backend-v3 here; its
// gateway-conformance-web-backend namespace is `gamma-consumer` (Service web-backend). Route
// `hostnames` are left out: in the mesh profile the parent Service already selects the traffic.
import { randomUUID } from 'node:crypto';
import type { ConformanceTest } from './features.ts';
import { CONSUMER_NS, NS, describe, runCases, type ConformanceMesh, type Expected } from './harness.ts';
import type { ClientRequest } from './client-protocol.ts';
import { joined, mismatches } from './expect.ts';
import { until } from '../lab/wait.ts';
import { backend, exact, header, httpRoute, prefix, redirect, requestHeaders, rewrite } from './manifests.ts';

type Case = { name: string; request: ClientRequest; expect: Expected };
const cases = (list: Case[]) => (cm: ConformanceMesh) => runCases(cm.client(`${NS}/echo-v1`), list);
const req = (path: string, extra: Partial<ClientRequest> = {}): ClientRequest => ({ host: 'echo', path, ...extra });
const PARENT = { service: 'echo', port: 80 };
const v = (n: 1 | 2 | 3) => backend(n === 3 ? 'backend-v3' : `echo-v${n}`, 8080);
const B = { 1: 'echo-v1', 2: 'echo-v2', 3: 'backend-v3' } as const;

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
  },
  {
    name: 'HTTPRouteInvalidCrossNamespaceBackendRef',
    upstream: 'httproute-invalid-cross-namespace-backend-ref.go',
    description: 'a backendRef to another namespace without a ReferenceGrant there answers 500',
    features: ['Mesh', 'HTTPRoute', 'ReferenceGrant'],
    manifests: [httpRoute('cross-ns-no-grant', PARENT, [{ backendRefs: [backend('web-backend', 80, { namespace: CONSUMER_NS })] }])],
    run: cases([{ name: 'GET /', request: req('/'), expect: { status: 500 } }]),
  },
  {
    name: 'HTTPRoutePartiallyInvalidViaInvalidReferenceGrant',
    upstream: 'httproute-partially-invalid-via-invalid-reference-grant.go',
    description: 'a ReferenceGrant for one Service does not cover another in its namespace: that rule answers 500, the granted rule forwards',
    features: ['Mesh', 'HTTPRoute', 'ReferenceGrant'],
    manifests: [
      {
        apiVersion: 'gateway.networking.k8s.io/v1beta1', kind: 'ReferenceGrant', metadata: { name: 'only-web-backend', namespace: CONSUMER_NS },
        spec: { from: [{ group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', namespace: NS }], to: [{ group: '', kind: 'Service', name: 'web-backend' }] },
      },
      httpRoute('partly-granted', PARENT, [
        { matches: [prefix('/v2')], backendRefs: [backend('web-backend-v2', 80, { namespace: CONSUMER_NS })] },
        { backendRefs: [backend('web-backend', 80, { namespace: CONSUMER_NS })] },
      ]),
    ],
    run: cases([
      { name: 'not granted', request: req('/v2'), expect: { status: 500 } },
      { name: 'granted', request: req('/'), expect: { backend: 'echo-v1', namespace: CONSUMER_NS } },
    ]),
  },
  {
    name: 'HTTPRouteInvalidBackendRefUnknownKind',
    upstream: 'httproute-invalid-backendref-unknown-kind.go',
    description: 'a backendRef of a kind the implementation does not know answers 500 (ResolvedRefs InvalidKind), even when a Service of that name exists',
    features: ['Mesh', 'HTTPRoute'],
    manifests: [httpRoute('unknown-kind-backend', PARENT, [{ backendRefs: [backend('echo-v1', 8080, { group: 'unknownkind.example.com', kind: 'NonExistent' })] }])],
    run: cases([{ name: 'GET /v2', request: req('/v2'), expect: { status: 500 } }]),
  },
  {
    name: 'HTTPRouteReferenceGrant',
    upstream: 'httproute-reference-grant.go',
    description: 'with a ReferenceGrant in the backend namespace, a cross-namespace backendRef is followed; without it (deleted), 500',
    features: ['Mesh', 'HTTPRoute', 'ReferenceGrant'],
    manifests: [
      // ReferenceGrant v1 (Gateway API v1.5+); HTTPRoutePartiallyInvalidViaInvalidReferenceGrant uses v1beta1.
      {
        apiVersion: 'gateway.networking.k8s.io/v1', kind: 'ReferenceGrant', metadata: { name: 'routes-from-gamma', namespace: CONSUMER_NS },
        spec: { from: [{ group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', namespace: NS }], to: [{ group: '', kind: 'Service', name: 'web-backend' }] },
      },
      httpRoute('cross-ns-granted', PARENT, [{ backendRefs: [backend('web-backend', 80, { namespace: CONSUMER_NS })] }]),
    ],
    run: async (cm) => {
      const granted = await runCases(cm.client(`${NS}/echo-v1`), [{ name: 'granted', request: req('/'), expect: { backend: 'echo-v1', namespace: CONSUMER_NS } }]);
      if (granted.length > 0) return granted;
      // Upstream then deletes the grant and expects 500, eventually: the route set stays the same,
      // so apply() cannot tell when the waypoint has the change; wait for the answer instead.
      await cm.apply('HTTPRouteReferenceGrant without its grant', [httpRoute('cross-ns-granted', PARENT, [{ backendRefs: [backend('web-backend', 80, { namespace: CONSUMER_NS })] }])]);
      let failures: string[] = [];
      await until('grant deleted: 500', async () => {
        failures = await runCases(cm.client(`${NS}/echo-v1`), [{ name: 'grant deleted', request: req('/'), expect: { status: 500 } }]);
        return failures.length === 0;
      }, 15_000).catch(() => undefined);
      return failures;
    },
  },
];

/**
 * RequestMirror to each of `mirrors` (upstream: infra-backend-v2, and -v3 for multiple mirrors):
 * the answer comes from echo-v1, and every mirror backend logs a copy of the request, header
 * edits included. Copies are fire-and-forget, so the check waits for the mirrors' request logs.
 */
function mirrorTest(name: string, upstream: string, mirrors: string[]): ConformanceTest {
  const mirror = (to: string) => ({ type: 'RequestMirror', requestMirror: { backendRef: { name: to, namespace: NS, port: 8080 } } });
  const base = mirrors.length > 1 ? '/multi-mirror' : '/mirror';
  const editedPath = mirrors.length > 1 ? '/multi-mirror-and-modify-request-headers' : '/mirror-and-modify-headers';
  const editedHeaders = { 'X-Header-Add': 'header-val-1', 'X-Header-Add-Append': 'append-val-1,header-val-2', 'X-Header-Set': 'set-overwrites-values' };
  return {
    name,
    upstream,
    description: `RequestMirror sends a copy (after the rule's header edits) to ${mirrors.join(' and ')} while the answer comes from the route's backend`,
    features: ['Mesh', 'HTTPRoute', 'HTTPRouteRequestMirror', ...(mirrors.length > 1 ? ['HTTPRouteRequestMultipleMirrors' as const] : [])],
    manifests: [httpRoute(name.replace(/^HTTPRoute/, '').toLowerCase(), PARENT, [
      { matches: [prefix(base)], filters: mirrors.map(mirror), backendRefs: [backend('echo-v1', 8080, { namespace: NS })] },
      {
        matches: [prefix(editedPath)],
        filters: [requestHeaders({ set: [['X-Header-Set', 'set-overwrites-values']], add: [['X-Header-Add', 'header-val-1'], ['X-Header-Add-Append', 'header-val-2']], remove: ['X-Header-Remove'] }), ...mirrors.map(mirror)],
        backendRefs: [backend('echo-v1', 8080, { namespace: NS })],
      },
    ])],
    run: async (cm) => {
      const id = () => `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
      const plain = `${base}?request-id=${id()}`;
      const edited = `${editedPath}?request-id=${id()}`;
      const failures = await runCases(cm.client(`${NS}/echo-v1`), [
        { name: 'mirrored', request: req(plain), expect: { backend: B[1], path: plain } },
        { name: 'mirrored with header edits', request: req(edited, { headers: { 'X-Header-Remove': 'remove-val', 'X-Header-Add-Append': 'append-val-1' } }), expect: { backend: B[1], path: edited, requestHeaders: editedHeaders, absentRequestHeaders: ['X-Header-Remove'] } },
      ], 1);
      for (const to of mirrors) {
        const copyOf = (path: string) => cm.requestsSeen(`${NS}/${to}`).find((r) => r.path === path);
        await until(`copies at ${to}`, () => copyOf(plain) !== undefined && copyOf(edited) !== undefined, 5_000).catch(() => undefined);
        if (!copyOf(plain)) failures.push(`no copy of ${plain} reached ${to}`);
        const copy = copyOf(edited);
        if (!copy) {
          failures.push(`no copy of ${edited} reached ${to}`);
          continue;
        }
        const h = Object.fromEntries(Object.entries(copy.headers).map(([k, val]) => [k.toLowerCase(), joined(val)]));
        for (const [k, val] of Object.entries(editedHeaders)) if (h[k.toLowerCase()] !== val) failures.push(`the copy of ${edited} at ${to} carried ${k}: ${h[k.toLowerCase()] ?? '(absent)'} (want ${val})`);
        if (h['x-header-remove'] !== undefined) failures.push(`the copy of ${edited} at ${to} still carried X-Header-Remove`);
      }
      return failures;
    },
  };
}

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
  mirrorTest('HTTPRouteRequestMirror', 'httproute-request-mirror.go', ['echo-v2']),
  mirrorTest('HTTPRouteRequestMultipleMirrors', 'httproute-request-multiple-mirrors.go', ['echo-v2', 'backend-v3']),
);

CORE_HTTP_TESTS.push(
  {
    name: 'HTTPRouteBackendRequestRedirect',
    upstream: 'httproute-backend-request-redirect.go',
    description: 'RequestRedirect as a filter of a backendRef',
    features: ['Mesh', 'HTTPRoute', 'HTTPRouteBackendRequestRedirect'],
    manifests: [httpRoute('backend-redirect', PARENT, [
      { matches: [prefix('/full')], backendRefs: [backend('echo-v1', 8080, { filters: [redirect({ path: { type: 'ReplaceFullPath', value: '/redirected-full' } })] })] },
      { matches: [prefix('/prefix')], backendRefs: [backend('echo-v1', 8080, { filters: [redirect({ path: { type: 'ReplacePrefixMatch', value: '/redirected-prefix' } })] })] },
    ])],
    run: cases([
      { name: 'full path', request: req('/full/original'), expect: { status: 302, redirect: { path: '/redirected-full' } } },
      { name: 'prefix', request: req('/prefix/original'), expect: { status: 302, redirect: { path: '/redirected-prefix/original' } } },
    ]),
  },
  {
    name: 'HTTPRouteBackendURLRewrite',
    upstream: 'httproute-backend-url-rewrite.go',
    description: 'URLRewrite as a filter of a backendRef',
    features: ['Mesh', 'HTTPRoute', 'HTTPRouteBackendURLRewrite'],
    manifests: [httpRoute('backend-rewrite', PARENT, [
      { matches: [prefix('/full')], backendRefs: [backend('echo-v1', 8080, { filters: [rewrite('ReplaceFullPath', '/rewritten-full')] })] },
      { matches: [prefix('/prefix')], backendRefs: [backend('echo-v1', 8080, { filters: [rewrite('ReplacePrefixMatch', '/rewritten-prefix')] })] },
    ])],
    run: cases([
      { name: 'full path', request: req('/full/original'), expect: { backend: B[1], path: '/rewritten-full' } },
      { name: 'prefix', request: req('/prefix/original'), expect: { backend: B[1], path: '/rewritten-prefix/original' } },
    ]),
  },
  {
    name: 'HTTPRouteRequestHeaderModifierBackendWeights',
    upstream: 'httproute-request-header-modifier-backend-weights.go',
    description: "each weighted backend's own header edit reaches that backend and no other (100 requests)",
    features: ['Mesh', 'HTTPRoute', 'HTTPRouteBackendRequestHeaderModification'],
    manifests: [httpRoute('backend-weights-headers', PARENT, [{
      backendRefs: [1, 2].map((n) => backend(`echo-v${n}`, 8080, { weight: 10, filters: [requestHeaders({ set: [['Backend', `echo-v${n}`]] })] })),
    }])],
    run: async (cm) => {
      const responses = await cm.client(`${NS}/echo-v1`).send(req('/'), 100);
      const failures: string[] = [];
      for (const r of responses) {
        if (r.status !== 200 || !r.echo) { failures.push(`a request got ${r.status} ${r.error ?? r.body ?? ''}`); break; }
        const sent = r.echo.headers['backend'];
        const values = Array.isArray(sent) ? sent : sent === undefined ? [] : [sent];
        if (values.length !== 1 || values[0] !== r.echo.pod) { failures.push(`${r.echo.pod} received Backend: ${values.join(',') || '(absent)'}`); break; }
      }
      return failures;
    },
  },
  {
    name: 'HTTPRouteBackendProtocolH2C',
    upstream: 'httproute-backend-protocol-h2c.go',
    description: 'an h2c prior-knowledge request reaches a backend port declared kubernetes.io/h2c, over HTTP/2',
    features: ['Mesh', 'HTTPRoute', 'HTTPRouteBackendProtocolH2C'],
    manifests: [httpRoute('backend-h2c', PARENT, [{ backendRefs: [backend('echo-v1', 8081)] }])],
    run: cases([
      // Not upstream: the echo app sees HTTP/2 pseudo-headers only when the waypoint spoke h2c to it.
      { name: 'h2c prior knowledge', request: req('/', { protocol: 'h2c' }), expect: { backend: B[1], requestHeaders: { ':scheme': 'http' } } },
    ]),
  },
  {
    name: 'HTTPRouteCORS',
    upstream: 'httproute-cors.go',
    description: 'the CORS filter answers preflight requests itself and adds CORS response headers for the origins it allows, and nothing for others',
    features: ['Mesh', 'HTTPRoute', 'HTTPRouteCORS'],
    manifests: [httpRoute('cors', PARENT, [
      { matches: [prefix('/cors-1')], filters: [{ type: 'CORS', cors: { allowOrigins: ['https://www.foo.com', 'https://*.bar.com'], allowMethods: ['GET', 'OPTIONS'], allowHeaders: ['x-header-1', 'x-header-2'], exposeHeaders: ['x-header-3', 'x-header-4'], allowCredentials: true, maxAge: 3600 } }], backendRefs: [v(1)] },
      { matches: [prefix('/cors-2')], filters: [{ type: 'CORS', cors: { allowOrigins: ['https://www.foo.com'], allowMethods: ['*'] } }], backendRefs: [v(1)] },
      { matches: [prefix('/cors-wildcard-origin')], filters: [{ type: 'CORS', cors: { allowOrigins: ['*'], allowMethods: ['PUT'], allowCredentials: false } }], backendRefs: [v(1)] },
      { matches: [prefix('/cors-wildcard-methods-headers')], filters: [{ type: 'CORS', cors: { allowOrigins: ['https://other.foo.com'], allowMethods: ['*'], allowHeaders: ['*'], allowCredentials: true } }], backendRefs: [v(1)] },
      { matches: [prefix('/cors-wildcard-methods-headers-unauth')], filters: [{ type: 'CORS', cors: { allowOrigins: ['https://other.foo.com'], allowMethods: ['*'], allowHeaders: ['*'] } }], backendRefs: [v(1)] },
    ])],
    run: async (cm) => {
      const client = cm.client(`${NS}/echo-v1`);
      // Upstream compares comma lists ignoring whitespace and accepts either order.
      const set = (v: string[] | undefined): string => (v ?? []).join(',').split(',').map((x) => x.trim()).filter(Boolean).sort().join(',');
      type Want = { statuses: number[]; equal?: Record<string, string[]>; absent?: string[]; backend?: boolean };
      const check = async (name: string, method: string, path: string, headers: Record<string, string>, want: Want): Promise<string[]> => {
        const [r] = await client.send(req(path, { method, headers }));
        const out: string[] = [];
        if (!r || !want.statuses.includes(r.status)) out.push(`${name}: status ${r?.status} ${r?.error ?? ''}, want ${want.statuses.join(' or ')}`);
        for (const [h, options] of Object.entries(want.equal ?? {})) if (!options.map((o) => set([o])).includes(set(r?.headers[h]))) out.push(`${name}: ${h} is ${JSON.stringify(r?.headers[h])}, want one of ${JSON.stringify(options)}`);
        for (const h of want.absent ?? []) if (r?.headers[h] !== undefined) out.push(`${name}: ${h} present (${r.headers[h]}), want none`);
        if (want.backend === false && r?.echo) out.push(`${name}: the preflight reached ${r.echo.pod}`);
        if (want.backend === true && r?.echo?.pod !== B[1]) out.push(`${name}: answered by ${r?.echo?.pod ?? 'the waypoint'}, want ${B[1]}`);
        return out;
      };
      const full = (origin: string): Want => ({
        statuses: [200, 204], backend: false,
        equal: {
          'access-control-allow-origin': [origin], 'access-control-allow-methods': ['GET, OPTIONS'], 'access-control-allow-headers': ['x-header-1, x-header-2'],
          'access-control-expose-headers': ['x-header-3, x-header-4'], 'access-control-max-age': ['3600'], 'access-control-allow-credentials': ['true'],
        },
      });
      const ask = { 'access-control-request-method': 'GET', 'access-control-request-headers': 'x-header-1, x-header-2' };
      return (await Promise.all([
        check('preflight, exact origin', 'OPTIONS', '/cors-1', { origin: 'https://www.foo.com', ...ask }, full('https://www.foo.com')),
        check('preflight, wildcard origin', 'OPTIONS', '/cors-1', { origin: 'https://www.bar.com', ...ask }, full('https://www.bar.com')),
        check('preflight, wildcard origin with more labels', 'OPTIONS', '/cors-1', { origin: 'https://xpto.www.bar.com', ...ask }, full('https://xpto.www.bar.com')),
        check('preflight, origin not allowed', 'OPTIONS', '/cors-1', { origin: 'https://foobar.com', 'access-control-request-method': 'GET' }, { statuses: [200, 204, 403], absent: ['access-control-allow-origin'] }),
        check('simple request, exact origin', 'GET', '/cors-1', { origin: 'https://www.foo.com', ...ask }, { statuses: [200, 204], backend: true, equal: { 'access-control-allow-origin': ['https://www.foo.com'] } }),
        check('simple request, wildcard origin', 'GET', '/cors-1', { origin: 'https://www.bar.com', ...ask }, { statuses: [200, 204], backend: true, equal: { 'access-control-allow-origin': ['https://www.bar.com'] } }),
        check('simple request, origin not allowed', 'GET', '/cors-1', { origin: 'https://foobar.com', 'access-control-request-method': 'GET' }, { statuses: [200], backend: true, absent: ['access-control-allow-origin'] }),
        check('preflight POST, allowMethods *', 'OPTIONS', '/cors-2', { origin: 'https://www.foo.com', 'access-control-request-method': 'POST' }, { statuses: [200, 204], equal: { 'access-control-allow-methods': ['POST', '*'], 'access-control-allow-origin': ['https://www.foo.com'] }, absent: ['access-control-allow-credentials'] }),
        check('preflight, any origin', 'OPTIONS', '/cors-wildcard-origin', { origin: 'https://foobar.com', 'access-control-request-method': 'PUT' }, { statuses: [200, 204], equal: { 'access-control-allow-origin': ['https://foobar.com', '*'], 'access-control-allow-methods': ['PUT'] }, absent: ['access-control-allow-credentials'] }),
        check('preflight, any origin with a port', 'OPTIONS', '/cors-wildcard-origin', { origin: 'https://foobar.com:12345', 'access-control-request-method': 'PUT' }, { statuses: [200, 204], equal: { 'access-control-allow-origin': ['https://foobar.com:12345', '*'], 'access-control-allow-methods': ['PUT'] }, absent: ['access-control-allow-credentials'] }),
        check('request, any origin with a port', 'PUT', '/cors-wildcard-origin', { origin: 'https://foobar.com:12345' }, { statuses: [200], backend: true, equal: { 'access-control-allow-origin': ['https://foobar.com:12345', '*'] } }),
        check('request, any origin', 'PUT', '/cors-wildcard-origin', { origin: 'https://foobar.com' }, { statuses: [200, 204], backend: true, equal: { 'access-control-allow-origin': ['https://foobar.com', '*'] }, absent: ['access-control-allow-credentials'] }),
        check('preflight with credentials, wildcards echo the request', 'OPTIONS', '/cors-wildcard-methods-headers', { origin: 'https://other.foo.com', 'access-control-request-method': 'PUT', 'access-control-request-headers': 'x-header-1, x-header-2' }, { statuses: [200], equal: { 'access-control-allow-origin': ['https://other.foo.com'], 'access-control-allow-methods': ['PUT'], 'access-control-allow-headers': ['x-header-1, x-header-2'], 'access-control-allow-credentials': ['true'] } }),
        check('preflight without credentials', 'OPTIONS', '/cors-wildcard-methods-headers-unauth', { origin: 'https://other.foo.com', 'access-control-request-method': 'PUT', 'access-control-request-headers': 'x-header-1, x-header-2' }, { statuses: [200], equal: { 'access-control-allow-origin': ['https://other.foo.com', '*'], 'access-control-allow-methods': ['PUT', '*'], 'access-control-allow-headers': ['x-header-1, x-header-2', '*'] }, absent: ['access-control-allow-credentials'] }),
        check('request with credentials', 'GET', '/cors-wildcard-methods-headers', { origin: 'https://other.foo.com', authorization: 'Bearer test' }, { statuses: [200], backend: true, equal: { 'access-control-allow-origin': ['https://other.foo.com'], 'access-control-allow-credentials': ['true'] } }),
        check('request with credentials on the path without them', 'GET', '/cors-wildcard-methods-headers-unauth', { origin: 'https://other.foo.com', authorization: 'Bearer test' }, { statuses: [200], backend: true, equal: { 'access-control-allow-origin': ['https://other.foo.com'] }, absent: ['access-control-allow-credentials'] }),
      ])).flat();
    },
  },
  {
    name: 'HTTPRouteBackendProtocolWebSocket',
    upstream: 'httproute-backend-protocol-websocket.go',
    description: 'a WebSocket reaches a backend port declared kubernetes.io/ws: a text and a binary message come back as sent',
    features: ['Mesh', 'HTTPRoute', 'HTTPRouteBackendProtocolWebSocket'],
    manifests: [httpRoute('backend-protocol-ws', PARENT, [{ backendRefs: [backend('echo-v1', 8082)] }])],
    run: async (cm) => {
      const want = `text=Websocket Support!;binary=${Buffer.from([1, 2, 3, 4, 5, 6, 7]).toString('hex')}`;
      const [r] = await cm.client(`${NS}/echo-v2`).send({ protocol: 'ws', host: 'echo', path: '/ws' });
      if (!r || r.status !== 101) return [`the WebSocket did not open: ${r?.error ?? r?.status}`];
      return r.body === want ? [] : [`got ${r.body}, want ${want}`];
    },
  },
  {
    name: 'HTTPRouteRetry',
    upstream: 'httproute-retry.go',
    description: "the route rule's retry field: listed codes are retried up to `attempts` times, others are not, attempts 0 retries nothing",
    features: ['Mesh', 'HTTPRoute', 'HTTPRouteRetry'],
    manifests: [httpRoute('retries', PARENT, [
      { matches: [prefix('/retry/code-500-attempts-3')], retry: { codes: [500], attempts: 3 }, backendRefs: [v(3)] },
      { matches: [prefix('/retry/code-all-attempts-2')], retry: { codes: [500, 502, 503, 504], attempts: 2 }, backendRefs: [v(3)] },
      { matches: [prefix('/retry/code-all-attempts-0')], retry: { codes: [500, 502, 503, 504], attempts: 0 }, backendRefs: [v(3)] },
    ])],
    run: async (cm) => {
      // Upstream's cases; each request carries a fresh uuid, so the backend's retry simulation
      // (responseCode for the first succeedAfter requests of that uuid, then 200) counts it alone.
      const list: Array<[string, number, number, number]> = [
        ['/retry/code-500-attempts-3', 500, 2, 200], ['/retry/code-500-attempts-3', 500, 4, 500], ['/retry/code-500-attempts-3', 503, 2, 503],
        ['/retry/code-all-attempts-2', 500, 1, 200], ['/retry/code-all-attempts-2', 500, 3, 500],
        ['/retry/code-all-attempts-2', 502, 1, 200], ['/retry/code-all-attempts-2', 502, 3, 502],
        ['/retry/code-all-attempts-2', 503, 1, 200], ['/retry/code-all-attempts-2', 503, 3, 503],
        ['/retry/code-all-attempts-2', 504, 1, 200], ['/retry/code-all-attempts-2', 504, 3, 504],
        // Not upstream (its manifest has the rule, no case): attempts 0 retries nothing.
        ['/retry/code-all-attempts-0', 503, 1, 503],
      ];
      const failures: string[] = [];
      for (const [path, code, after, want] of list) {
        const q = `uuid=${randomUUID()}&responseCode=${code}&succeedAfter=${after}`;
        const [r] = await cm.client(`${NS}/echo-v1`).send(req(`${path}?${q}`));
        if (r?.status !== want || r.echo?.pod !== B[3]) failures.push(`${path} (${code} for the first ${after}): got ${r?.status} from ${r?.echo?.pod ?? r?.error ?? '?'}, want ${want} from ${B[3]}`);
      }
      return failures;
    },
  },
  {
    name: 'HTTPRouteRetryConnectionError',
    upstream: 'httproute-retry-connection-error.go',
    description: 'a rule with retry (no codes) retries attempts that end in a TCP reset, up to `attempts` times; past that the client gets a 5xx',
    features: ['Mesh', 'HTTPRoute', 'HTTPRouteRetry', 'HTTPRouteRetryConnectionError'],
    manifests: [httpRoute('retries-connection-error', PARENT, [
      { matches: [prefix('/retry/no-status-code-attempts-3')], retry: { attempts: 3 }, backendRefs: [v(3)] },
    ])],
    // Without responseCode the backend's retry simulation resets the connection (echo-basic hijacks
    // it and closes with SO_LINGER 0) for the first succeedAfter requests of a uuid.
    run: async (cm) => [
      // Two resets, then the third attempt (of 1 + 3) is answered...
      ...await consistentRetryBehaviour(cm, '/retry/no-status-code-attempts-3', { succeedAfter: '2' }, [200]),
      // ...four resets outlast them: an error (upstream accepts 500 or 503).
      ...await consistentRetryBehaviour(cm, '/retry/no-status-code-attempts-3', { succeedAfter: '4' }, [500, 503]),
    ],
  },
  {
    name: 'HTTPRouteRetryWithTimeouts',
    upstream: 'httproute-retry-with-timeouts.go',
    description: 'retry with timeouts: an attempt past backendRequest is retried (no codes listed), the request timeout bounds every attempt and backoff (504)',
    features: ['Mesh', 'HTTPRoute', 'HTTPRouteRetry', 'HTTPRouteRequestTimeout', 'HTTPRouteBackendTimeout', 'HTTPRouteRetryBackendTimeout'],
    proves: 'HTTPRouteRetryBackendTimeout',
    manifests: [httpRoute('retries-with-timeouts', PARENT, [
      { matches: [prefix('/retry/backend-request-timeout-200ms')], retry: { attempts: 2 }, timeouts: { backendRequest: '200ms' }, backendRefs: [v(3)] },
      { matches: [prefix('/retry/request-timeout-200ms')], retry: { codes: [500], attempts: 5 }, timeouts: { backendRequest: '200ms', request: '400ms' }, backendRefs: [v(3)] },
    ])],
    // delayRetry holds each failing answer back (the attempt still counts when the waypoint gave up on it).
    run: async (cm) => {
      const failures: string[] = [];
      // One case at a time, as upstream runs them (its backend serializes the retry simulation).
      for (const [path, q, want] of [
        // 300 ms failures against a 200 ms backendRequest: two attempts time out, the third (of 1 + 2) succeeds...
        ['/retry/backend-request-timeout-200ms', { responseCode: '500', succeedAfter: '2', delayRetry: '300ms' }, [200]],
        // ...and with three slow failures every attempt times out.
        ['/retry/backend-request-timeout-200ms', { responseCode: '500', succeedAfter: '3', delayRetry: '300ms' }, TIMEOUT],
        ['/retry/request-timeout-200ms', { responseCode: '500', succeedAfter: '1' }, [200]],
        // Four 100 ms failures and their backoffs outlast the 400 ms request timeout before the fifth attempt.
        ['/retry/request-timeout-200ms', { responseCode: '500', succeedAfter: '4', delayRetry: '100ms' }, TIMEOUT],
      ] as Array<[string, Record<string, string>, number[]]>) {
        failures.push(...await consistentRetryBehaviour(cm, path, q, want));
      }
      return failures;
    },
  },
);

/** Upstream's timeout answers (roundtripper.IsTimeoutError): a case expecting 504 accepts 408 too. */
const TIMEOUT = [504, 408];

/**
 * Upstream's assertConsistentRetryBehaviour (httproute-retry.go): a request whose query carries the
 * backend's retry simulation parameters and a fresh uuid (so the backend counts its attempts alone),
 * answered with one of `statuses`, and a 200 by backend-v3 with the path as sent. Upstream waits for
 * 3 such answers in a row (RequiredConsecutiveSuccesses); the config is in force once applied here,
 * so each of 3 requests, sent one after the other, must conform.
 */
async function consistentRetryBehaviour(cm: ConformanceMesh, path: string, query: Record<string, string>, statuses: number[]): Promise<string[]> {
  const failures: string[] = [];
  for (let i = 0; i < 3; i++) {
    const request = req(`${path}?${new URLSearchParams({ ...query, uuid: randomUUID() }).toString()}`);
    const started = Date.now();
    const [r] = await cm.client(`${NS}/echo-v1`).send(request);
    const ms = Date.now() - started;
    if (!r) { failures.push(`${describe(request)}: no answer`); break; }
    const status = statuses.includes(r.status) ? r.status : statuses[0]!;
    const bad = mismatches(request, r, status === 200 ? { status, backend: B[3], path: request.path! } : { status });
    if (bad.length > 0) {
      failures.push(`${describe(request)} (want ${statuses.join(' or ')}), request ${i + 1} of 3 after ${ms} ms: ${bad.join('; ')}`);
      break;
    }
  }
  return failures;
}

/**
 * HTTPRouteRequestPercentageMirror: `percent` (and `fraction`) of the requests are copied to
 * echo-v2. Upstream accepts a copy count within 3 standard deviations of the binomial mean and retries
 * a statistical miss (here up to 3 times).
 */
function percentageMirror(): ConformanceTest {
  const mirror = (share: Record<string, unknown>) => ({ type: 'RequestMirror', requestMirror: { backendRef: { name: 'echo-v2', namespace: NS, port: 8080 }, ...share } });
  const edits = requestHeaders({ set: [['X-Header-Set', 'set-overwrites-values']], add: [['X-Header-Add', 'header-val-1'], ['X-Header-Add-Append', 'header-val-2']], remove: ['X-Header-Remove'] });
  const list = [
    { path: '/percent-mirror', percent: 20, filters: [mirror({ percent: 20 })] },
    { path: '/percent-mirror-fraction', percent: 50, filters: [mirror({ fraction: { numerator: 25, denominator: 50 } })] },
    { path: '/percent-mirror-and-modify-headers', percent: 35, filters: [edits, mirror({ percent: 35 })], headers: { 'X-Header-Remove': 'remove-val', 'X-Header-Add-Append': 'append-val-1' } },
  ];
  // Upstream sends 500; 300 keeps the case under 10 s on a loaded 2-core machine, and the band
  // (3 standard deviations) is computed for the count actually sent.
  const COUNT = 300;
  return {
    name: 'HTTPRouteRequestPercentageMirror',
    upstream: 'httproute-request-percentage-mirror.go',
    description: 'RequestMirror with percent or fraction copies that share of the requests (within 3 standard deviations)',
    features: ['Mesh', 'HTTPRoute', 'HTTPRouteRequestMirror', 'HTTPRouteRequestPercentageMirror'],
    manifests: [httpRoute('percentage-mirror', PARENT, list.map((c) => ({ matches: [prefix(c.path)], filters: c.filters, backendRefs: [backend('echo-v1', 8080, { namespace: NS })] })))],
    run: async (cm) => {
      const failures: string[] = [];
      for (const c of list) {
        let last = '';
        for (let attempt = 0; attempt < 3; attempt++) {
          const path = `${c.path}?request-id=${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
          const answers = await cm.client(`${NS}/echo-v1`).send(req(path, c.headers ? { headers: c.headers } : {}), COUNT);
          const bad = answers.find((r) => r.status !== 200 || r.echo?.pod !== B[1]);
          if (bad) { last = `${c.path}: a request got ${bad.status} from ${bad.echo?.pod ?? '-'} ${bad.error ?? ''}`; continue; }
          const p = c.percent / 100;
          const sd = Math.sqrt(COUNT * p * (1 - p));
          const [lo, hi] = [COUNT * p - 3 * sd, COUNT * p + 3 * sd];
          // Copies are fire-and-forget: wait until the count settles inside the band, or give up.
          const copies = () => cm.requestsSeen(`${NS}/echo-v2`).filter((r) => r.path === path).length;
          await until(`${c.path} copies`, () => copies() >= lo, 5_000).catch(() => undefined);
          const n = copies();
          last = n < lo || n > hi ? `${c.path}: ${n} of ${COUNT} requests copied to echo-v2 (want ${c.percent}%: ${Math.ceil(lo)}-${Math.floor(hi)})` : '';
          if (last === '') break;
        }
        if (last) failures.push(last);
      }
      return failures;
    },
  };
}

CORE_HTTP_TESTS.push(percentageMirror());
