// The upstream mesh HTTP conformance tests (gateway-api conformance/tests/mesh/*.go), translated:
// each keeps the upstream test's name, features, requests and expected outcome; the manifests are
// written for Weft's local mesh (namespace `gamma`, harness.ts). Stricter than upstream where the
// upstream echo client could not look: the path the backend received and the whole Location URL.
import type { ConformanceTest } from './features.ts';
import { CONSUMER_NS, NS, runCases, type ConformanceMesh, type Expected } from './harness.ts';
import type { ClientRequest } from './client-protocol.ts';
import { backend, exact, header, httpRoute, prefix, redirect, requestHeaders, rewrite, setResponseHeader } from './manifests.ts';

const CLIENT = `${NS}/echo-v1`;
type Case = { name: string; request: ClientRequest; expect: Expected };
const cases = (list: Case[], client = CLIENT) => (cm: ConformanceMesh) => runCases(cm.client(client), list);
const get = (path: string, headers?: Record<string, string>, host = 'echo'): ClientRequest => ({ host, path, ...(headers ? { headers } : {}) });

/**
 * Upstream's weighted-distribution check: `count` requests, each backend's share within
 * `tolerance` of its weight; a statistical miss is retried (upstream: up to 10 times).
 */
export async function distribution(cm: ConformanceMesh, request: ClientRequest, weights: Record<string, number>, opts: { count?: number; tolerance?: number; attempts?: number } = {}): Promise<string[]> {
  const count = opts.count ?? 500;
  const tolerance = opts.tolerance ?? 0.05;
  let last: string[] = [];
  for (let attempt = 0; attempt < (opts.attempts ?? 3); attempt++) {
    const responses = await cm.client(CLIENT).send(request, count);
    const seen: Record<string, number> = {};
    last = [];
    for (const r of responses) {
      const ok = request.protocol === 'grpc' ? r.status === 0 : r.status === 200;
      if (!ok || !r.echo) { last.push(`a request failed: ${r.status} ${r.error ?? r.body ?? ''}`.trim()); break; }
      seen[r.echo.pod] = (seen[r.echo.pod] ?? 0) + 1;
    }
    if (last.length > 0) continue;
    for (const pod of Object.keys(seen)) if (!(pod in weights) || weights[pod] === 0) last.push(`${pod} got ${seen[pod]} requests (weight ${weights[pod] ?? 'none'})`);
    for (const [pod, w] of Object.entries(weights)) {
      const share = (seen[pod] ?? 0) / count;
      if (Math.abs(share - w) > tolerance) last.push(`${pod} got ${(share * 100).toFixed(1)}% (want ${w * 100}% ± ${tolerance * 100})`);
    }
    if (last.length === 0) return [];
  }
  return last;
}

export const MESH_HTTP_TESTS: ConformanceTest[] = [
  {
    name: 'MeshBasic',
    upstream: 'mesh/mesh-basic.go',
    description: 'a mesh client reaches a mesh Service with no route applied',
    features: ['Mesh'],
    manifests: [],
    run: cases([{ name: 'plain GET to the Service', request: get('/'), expect: { status: 200 } }]),
  },
  {
    name: 'MeshFrontend',
    upstream: 'mesh/mesh-frontend.go',
    description: 'a route on a Service applies to traffic sent to that Service, not to traffic sent to its pods directly',
    features: ['Mesh', 'HTTPRoute', 'HTTPRouteResponseHeaderModification'],
    proves: 'Mesh',
    manifests: [httpRoute('frontend-v2', { service: 'echo-v2' }, [{ filters: [setResponseHeader('X-Header-Set', 'set')], backendRefs: [backend('echo-v2', 80)] }])],
    run: async (cm) => runCases(cm.client(CLIENT), [
      { name: 'to the Service', request: get('/', undefined, 'echo-v2'), expect: { backend: 'echo-v2', responseHeaders: { 'X-Header-Set': 'set' } } },
      { name: 'to the pod IP', request: get('/', undefined, `${cm.podIp(`${NS}/echo-v2`)}:8080`), expect: { backend: 'echo-v2', absentResponseHeaders: ['X-Header-Set'] } },
    ]),
  },
  {
    name: 'MeshFrontendHostname',
    upstream: 'mesh/mesh-frontend-hostname.go',
    description: 'the parent Service is chosen by the address dialled (cluster IP), never by the Host header',
    features: ['Mesh', 'MeshClusterIPMatching', 'HTTPRoute', 'HTTPRouteResponseHeaderModification'],
    proves: 'MeshClusterIPMatching',
    manifests: [httpRoute('frontend-v2', { service: 'echo-v2' }, [{ filters: [setResponseHeader('X-Header-Set', 'set')], backendRefs: [backend('echo-v2', 80)] }])],
    run: cases([
      { name: 'to echo-v2 with Host echo-v1', request: get('/', { Host: 'echo-v1' }, 'echo-v2'), expect: { backend: 'echo-v2', responseHeaders: { 'X-Header-Set': 'set' } } },
      { name: 'to echo-v1 with Host echo-v2', request: get('/', { Host: 'echo-v2' }, 'echo-v1'), expect: { backend: 'echo-v1', absentResponseHeaders: ['X-Header-Set'] } },
    ]),
  },
  {
    name: 'MeshPorts',
    upstream: 'mesh/mesh-ports.go',
    description: 'a parentRef with a port applies to that Service port only; without a port, to all of them',
    features: ['Mesh', 'HTTPRoute', 'HTTPRouteParentRefPort', 'HTTPRouteResponseHeaderModification'],
    proves: 'HTTPRouteParentRefPort',
    manifests: [
      httpRoute('ports-v1', { service: 'echo-v1', port: 80 }, [{ filters: [setResponseHeader('X-Header-Set', 'v1')], backendRefs: [backend('echo-v1', 80)] }]),
      httpRoute('ports-v2', { service: 'echo-v2' }, [{ filters: [setResponseHeader('X-Header-Set', 'v2')], backendRefs: [backend('echo-v2', 80)] }]),
    ],
    run: cases([
      { name: 'port given, request on it', request: get('/', undefined, 'echo-v1'), expect: { backend: 'echo-v1', responseHeaders: { 'X-Header-Set': 'v1' } } },
      { name: 'port given, request on another port', request: get('/', undefined, 'echo-v1:8080'), expect: { backend: 'echo-v1', absentResponseHeaders: ['X-Header-Set'] } },
      { name: 'no port, request on 80', request: get('/', undefined, 'echo-v2'), expect: { backend: 'echo-v2', responseHeaders: { 'X-Header-Set': 'v2' } } },
      { name: 'no port, request on 8080', request: get('/', undefined, 'echo-v2:8080'), expect: { backend: 'echo-v2', responseHeaders: { 'X-Header-Set': 'v2' } } },
    ]),
  },
  {
    name: 'MeshTrafficSplit',
    upstream: 'mesh/mesh-split.go',
    description: 'exact path matches on a Service split its traffic between two versions',
    features: ['Mesh', 'HTTPRoute'],
    manifests: [httpRoute('split', { service: 'echo' }, [
      { matches: [exact('/v1')], backendRefs: [backend('echo-v1', 80)] },
      { matches: [exact('/v2')], backendRefs: [backend('echo-v2', 80)] },
    ])],
    run: cases([
      { name: '/v1', request: get('/v1'), expect: { backend: 'echo-v1', path: '/v1' } },
      { name: '/v2', request: get('/v2'), expect: { backend: 'echo-v2', path: '/v2' } },
    ]),
  },
  {
    name: 'MeshConsumerRoute',
    upstream: 'mesh/mesh-consumer-route.go',
    description: "a route in another namespace than its parent Service (a consumer route) applies only to clients in the route's namespace",
    features: ['Mesh', 'MeshConsumerRoute', 'HTTPRoute', 'HTTPRouteResponseHeaderModification'],
    proves: 'MeshConsumerRoute',
    manifests: [httpRoute('consumer-add-header', { service: 'echo-v1', namespace: NS }, [
      { filters: [setResponseHeader('X-Header-Set', 'set')], backendRefs: [backend('echo-v1', 80, { namespace: NS })] },
    ], CONSUMER_NS)],
    run: async (cm) => [
      ...await runCases(cm.client(`${CONSUMER_NS}/echo-v1`), [
        { name: 'client in the route namespace', request: get('/', undefined, `echo-v1.${NS}`), expect: { backend: 'echo-v1', responseHeaders: { 'X-Header-Set': 'set' } } },
      ]),
      ...await runCases(cm.client(CLIENT), [
        { name: 'client in the Service namespace', request: get('/', undefined, `echo-v1.${NS}`), expect: { backend: 'echo-v1', absentResponseHeaders: ['X-Header-Set'] } },
      ]),
    ],
  },
  {
    name: 'MeshHTTPRouteSimpleSameNamespace',
    upstream: 'mesh/httproute-simple-same-namespace.go',
    description: 'a route in the Service namespace sends its traffic to the named backend',
    features: ['Mesh', 'HTTPRoute'],
    manifests: [httpRoute('same-namespace', { service: 'echo', port: 80 }, [{ backendRefs: [backend('echo-v1', 8080)] }])],
    run: cases([{ name: 'GET /', request: get('/'), expect: { backend: 'echo-v1', path: '/' } }]),
  },
  {
    name: 'MeshHTTPRouteMatching',
    upstream: 'mesh/httproute-matching.go',
    description: 'path prefix and header matches (ORed within a rule) choose between two backends',
    features: ['Mesh', 'HTTPRoute'],
    manifests: [httpRoute('matching', { service: 'echo', port: 80 }, [
      { matches: [prefix('/'), { headers: [header('version', 'one')] }], backendRefs: [backend('echo-v1', 8080)] },
      { matches: [prefix('/v2'), { headers: [header('version', 'two')] }], backendRefs: [backend('echo-v2', 8080)] },
    ])],
    run: cases([
      { name: '/', request: get('/'), expect: { backend: 'echo-v1' } },
      { name: '/example', request: get('/example'), expect: { backend: 'echo-v1' } },
      { name: 'version: one', request: get('/', { Version: 'one' }), expect: { backend: 'echo-v1' } },
      { name: '/v2', request: get('/v2'), expect: { backend: 'echo-v2' } },
      { name: '/v2/example', request: get('/v2/example'), expect: { backend: 'echo-v2' } },
      { name: 'version: two', request: get('/', { Version: 'two' }), expect: { backend: 'echo-v2' } },
      { name: '/v2/', request: get('/v2/'), expect: { backend: 'echo-v2' } },
      { name: '/v2example is not under /v2', request: get('/v2example'), expect: { backend: 'echo-v1' } },
      { name: '/foo/v2/example', request: get('/foo/v2/example'), expect: { backend: 'echo-v1' } },
    ]),
  },
  {
    name: 'MeshHTTPRouteQueryParamMatching',
    upstream: 'mesh/httproute-query-param-matching.go',
    description: 'query parameter matches, alone and ANDed with path and header matches, with the spec precedence; no match is 404',
    features: ['Mesh', 'HTTPRoute', 'MeshHTTPRouteQueryParamMatching'],
    manifests: [httpRoute('query-params', { service: 'echo', port: 80 }, [
      { matches: [{ queryParams: [header('animal', 'whale')] }], backendRefs: [backend('echo-v1', 8080)] },
      { matches: [{ queryParams: [header('animal', 'dolphin')] }], backendRefs: [backend('echo-v2', 8080)] },
      { matches: [{ ...prefix('/path1'), queryParams: [header('animal', 'whale')] }], backendRefs: [backend('echo-v1', 8080)] },
      { matches: [{ headers: [header('version', 'one')], queryParams: [header('animal', 'whale')] }], backendRefs: [backend('echo-v2', 8080)] },
      {
        matches: [
          { ...prefix('/path3'), queryParams: [header('animal', 'shark')] },
          { ...prefix('/path4'), headers: [header('version', 'three')], queryParams: [header('animal', 'kraken')] },
        ],
        backendRefs: [backend('echo-v1', 8080)],
      },
      { matches: [prefix('/path5')], backendRefs: [backend('echo-v1', 8080)] },
      { matches: [{ queryParams: [header('animal', 'hydra')] }], backendRefs: [backend('echo-v2', 8080)] },
    ])],
    run: cases([
      { name: 'animal=whale', request: get('/?animal=whale'), expect: { backend: 'echo-v1' } },
      { name: 'animal=dolphin', request: get('/?animal=dolphin'), expect: { backend: 'echo-v2' } },
      { name: 'whale and another param', request: get('/?animal=whale&otherparam=irrelevant'), expect: { backend: 'echo-v1' } },
      { name: 'dolphin and another param', request: get('/?animal=dolphin&color=yellow'), expect: { backend: 'echo-v2' } },
      { name: 'unmatched param name', request: get('/?color=blue'), expect: { status: 404 } },
      { name: 'unmatched value', request: get('/?animal=dog'), expect: { status: 404 } },
      { name: 'value is not a substring match', request: get('/?animal=whaledolphin'), expect: { status: 404 } },
      { name: 'no query', request: get('/'), expect: { status: 404 } },
      { name: 'path and query', request: get('/path1?animal=whale'), expect: { backend: 'echo-v1' } },
      { name: 'header and query beat query alone', request: get('/?animal=whale', { version: 'one' }), expect: { backend: 'echo-v2' } },
      { name: 'first ORed match', request: get('/path3?animal=shark'), expect: { backend: 'echo-v1' } },
      { name: 'second ORed match', request: get('/path4?animal=kraken', { version: 'three' }), expect: { backend: 'echo-v1' } },
      { name: 'query without its ANDed path', request: get('/?animal=shark'), expect: { status: 404 } },
      { name: 'path and query without the ANDed header', request: get('/path4?animal=kraken'), expect: { status: 404 } },
      { name: 'a path match takes precedence over a query match', request: get('/path5?animal=hydra'), expect: { backend: 'echo-v1' } },
    ]),
  },
  {
    name: 'MeshHTTPRouteNamedRule',
    upstream: 'mesh/httproute-named-rule.go',
    description: 'a rule may carry a name; named and unnamed rules both route',
    features: ['Mesh', 'HTTPRoute', 'MeshHTTPRouteNamedRouteRule'],
    provisional: true,
    manifests: [httpRoute('named-rules', { service: 'echo', port: 80 }, [
      { name: 'the-named-rule', matches: [prefix('/named')], backendRefs: [backend('echo-v1', 8080)] },
      { matches: [prefix('/unnamed')], backendRefs: [backend('echo-v2', 8080)] },
    ])],
    run: cases([
      { name: '/named', request: get('/named'), expect: { backend: 'echo-v1', path: '/named' } },
      { name: '/unnamed', request: get('/unnamed'), expect: { backend: 'echo-v2', path: '/unnamed' } },
    ]),
  },
  {
    name: 'MeshHTTPRouteWeight',
    upstream: 'mesh/httproute-weight.go',
    description: 'a 70/30 split between two backends holds within 5 points over 500 requests',
    features: ['Mesh', 'HTTPRoute'],
    manifests: [httpRoute('weights', { service: 'echo', port: 80 }, [{ backendRefs: [backend('echo-v1', 8080, { weight: 70 }), backend('echo-v2', 8080, { weight: 30 })] }])],
    run: async (cm) => {
      const first = await runCases(cm.client(CLIENT), [{ name: 'GET /', request: get('/'), expect: { status: 200 } }], 1);
      if (first.length > 0) return first;
      return distribution(cm, get('/'), { 'echo-v1': 0.7, 'echo-v2': 0.3 });
    },
  },
  {
    name: 'MeshHTTPRouteRewritePath',
    upstream: 'mesh/httproute-rewrite-path.go',
    description: 'URLRewrite replaces a matched prefix or the full path, alone and with header edits',
    features: ['Mesh', 'HTTPRoute', 'MeshHTTPRouteRewritePath'],
    manifests: [httpRoute('rewrite-path', { service: 'echo', port: 80 }, [
      { matches: [prefix('/prefix/one')], filters: [rewrite('ReplacePrefixMatch', '/one')], backendRefs: [backend('echo-v1', 80)] },
      { matches: [prefix('/strip-prefix')], filters: [rewrite('ReplacePrefixMatch', '/')], backendRefs: [backend('echo-v1', 80)] },
      { matches: [prefix('/full/one')], filters: [rewrite('ReplaceFullPath', '/one')], backendRefs: [backend('echo-v1', 80)] },
      {
        matches: [prefix('/full/rewrite-path-and-modify-headers')],
        filters: [rewrite('ReplaceFullPath', '/test'), requestHeaders({ set: [['X-Header-Set', 'set-overwrites-values']], add: [['X-Header-Add', 'header-val-1'], ['X-Header-Add-Append', 'header-val-2']], remove: ['X-Header-Remove'] })],
        backendRefs: [backend('echo-v1', 80)],
      },
      {
        matches: [prefix('/prefix/rewrite-path-and-modify-headers')],
        filters: [rewrite('ReplacePrefixMatch', '/prefix'), requestHeaders({ set: [['X-Header-Set', 'set-overwrites-values']], add: [['X-Header-Add', 'header-val-1'], ['X-Header-Add-Append', 'header-val-2']], remove: ['X-Header-Remove'] })],
        backendRefs: [backend('echo-v1', 80)],
      },
    ])],
    run: cases(((): Case[] => {
      const sent = { 'X-Header-Remove': 'remove-val', 'X-Header-Add-Append': 'append-val-1', 'X-Header-Set': 'set-val' };
      const edited = { requestHeaders: { 'X-Header-Add': 'header-val-1', 'X-Header-Add-Append': 'append-val-1,header-val-2', 'X-Header-Set': 'set-overwrites-values' }, absentRequestHeaders: ['X-Header-Remove'] };
      return [
        { name: 'prefix replaced', request: get('/prefix/one/two'), expect: { backend: 'echo-v1', path: '/one/two' } },
        { name: 'prefix stripped', request: get('/strip-prefix/three'), expect: { backend: 'echo-v1', path: '/three' } },
        { name: 'whole path stripped', request: get('/strip-prefix'), expect: { backend: 'echo-v1', path: '/' } },
        { name: 'full path replaced', request: get('/full/one/two'), expect: { backend: 'echo-v1', path: '/one' } },
        { name: 'full path and headers', request: get('/full/rewrite-path-and-modify-headers/test', sent), expect: { backend: 'echo-v1', path: '/test', ...edited } },
        { name: 'prefix and headers', request: get('/prefix/rewrite-path-and-modify-headers/one', sent), expect: { backend: 'echo-v1', path: '/prefix/one', ...edited } },
      ];
    })()),
  },
  ...requestHeaderModifierTests(),
  ...redirectTests(),
];

/** MeshHTTPRouteRequestHeaderModifier, and its twin with the filters on the backendRefs. */
function requestHeaderModifierTests(): ConformanceTest[] {
  const edits: Array<{ path: string; filter: Record<string, unknown> }> = [
    { path: '/set', filter: requestHeaders({ set: [['X-Header-Set', 'set-overwrites-values']] }) },
    { path: '/add', filter: requestHeaders({ add: [['X-Header-Add', 'add-appends-values']] }) },
    { path: '/remove', filter: requestHeaders({ remove: ['X-Header-Remove'] }) },
    {
      path: '/multiple',
      filter: requestHeaders({
        set: [['X-Header-Set-1', 'header-set-1'], ['X-Header-Set-2', 'header-set-2']],
        add: [['X-Header-Add-1', 'header-add-1'], ['X-Header-Add-2', 'header-add-2'], ['X-Header-Add-3', 'header-add-3']],
        remove: ['X-Header-Remove-1', 'X-Header-Remove-2'],
      }),
    },
    { path: '/case-insensitivity', filter: requestHeaders({ set: [['X-Header-Set', 'header-set']], add: [['X-Header-Add', 'header-add']], remove: ['X-Header-Remove'] }) },
  ];
  const list: Case[] = [
    { name: 'set adds a missing header', request: get('/set', { 'Some-Other-Header': 'val' }), expect: { backend: 'echo-v1', path: '/set', requestHeaders: { 'Some-Other-Header': 'val', 'X-Header-Set': 'set-overwrites-values' } } },
    { name: 'set overwrites', request: get('/set', { 'Some-Other-Header': 'val', 'X-Header-Set': 'some-other-value' }), expect: { backend: 'echo-v1', requestHeaders: { 'Some-Other-Header': 'val', 'X-Header-Set': 'set-overwrites-values' } } },
    { name: 'add creates', request: get('/add', { 'Some-Other-Header': 'val' }), expect: { backend: 'echo-v1', path: '/add', requestHeaders: { 'Some-Other-Header': 'val', 'X-Header-Add': 'add-appends-values' } } },
    { name: 'add appends', request: get('/add', { 'Some-Other-Header': 'val', 'X-Header-Add': 'some-other-value' }), expect: { backend: 'echo-v1', requestHeaders: { 'Some-Other-Header': 'val', 'X-Header-Add': 'some-other-value,add-appends-values' } } },
    { name: 'remove', request: get('/remove', { 'X-Header-Remove': 'val' }), expect: { backend: 'echo-v1', path: '/remove', absentRequestHeaders: ['X-Header-Remove'] } },
    {
      name: 'several edits at once',
      request: get('/multiple', { 'X-Header-Set-2': 'set-val-2', 'X-Header-Add-2': 'add-val-2', 'X-Header-Remove-2': 'remove-val-2', 'Another-Header': 'another-header-val' }),
      expect: {
        backend: 'echo-v1', path: '/multiple',
        requestHeaders: { 'X-Header-Set-1': 'header-set-1', 'X-Header-Set-2': 'header-set-2', 'X-Header-Add-1': 'header-add-1', 'X-Header-Add-2': 'add-val-2,header-add-2', 'X-Header-Add-3': 'header-add-3', 'Another-Header': 'another-header-val' },
        absentRequestHeaders: ['X-Header-Remove-1', 'X-Header-Remove-2'],
      },
    },
    {
      name: 'names compare case-insensitively',
      request: get('/case-insensitivity', { 'x-header-set': 'original-val-set', 'x-header-add': 'original-val-add', 'x-header-remove': 'original-val-remove', 'Another-Header': 'another-header-val' }),
      expect: { backend: 'echo-v1', requestHeaders: { 'X-Header-Set': 'header-set', 'X-Header-Add': 'original-val-add,header-add', 'Another-Header': 'another-header-val' }, absentRequestHeaders: ['x-header-remove'] },
    },
  ];
  return [
    {
      name: 'MeshHTTPRouteRequestHeaderModifier',
      upstream: 'mesh/httproute-request-header-modifier.go',
      description: 'RequestHeaderModifier on a rule sets, appends and removes request headers, names case-insensitive',
      features: ['Mesh', 'HTTPRoute'],
      manifests: [httpRoute('request-headers', { service: 'echo', port: 80 }, edits.map((e) => ({ matches: [prefix(e.path)], filters: [e.filter], backendRefs: [backend('echo-v1', 8080)] })))],
      run: cases(list),
    },
    {
      name: 'MeshHTTPRouteBackendRequestHeaderModifier',
      upstream: 'mesh/httproute-request-header-modifier.go',
      description: 'the same header edits as filters of a backendRef',
      features: ['Mesh', 'HTTPRoute', 'MeshHTTPRouteBackendRequestHeaderModification'],
      manifests: [httpRoute('backend-request-headers', { service: 'echo', port: 80 }, edits.map((e) => ({ matches: [prefix(e.path)], backendRefs: [backend('echo-v1', 8080, { filters: [e.filter] })] })))],
      run: cases(list),
    },
  ];
}

/** The redirect tests: status codes, hostname, path, port and scheme. */
function redirectTests(): ConformanceTest[] {
  const r = (path: string) => get(path);
  const status = (code: 303 | 307 | 308, path: string): ConformanceTest => ({
    name: `MeshHTTPRoute${code}Redirect`,
    upstream: `mesh/httproute-${code}-redirect.go`,
    description: `RequestRedirect with statusCode ${code}`,
    features: ['Mesh', 'HTTPRoute', `HTTPRoute${code}RedirectStatusCode`],
    provisional: true,
    manifests: [httpRoute(`redirect-${code}`, { service: 'echo', port: 80 }, [{ matches: [prefix(path)], filters: [redirect({ statusCode: code })] }])],
    run: cases([{ name: `${path} answers ${code}`, request: r(path), expect: { status: code, redirect: { path } } }]),
  });
  return [
    status(303, '/redirect'),
    status(307, '/temporary'),
    status(308, '/permanent'),
    {
      name: 'MeshHTTPRouteRedirectHostAndStatus',
      upstream: 'mesh/httproute-redirect-host-and-status.go',
      description: 'RequestRedirect to another hostname, with the default 302 and with 301',
      features: ['Mesh', 'HTTPRoute'],
      manifests: [httpRoute('redirect-host', { service: 'echo', port: 80 }, [
        { matches: [prefix('/hostname-redirect')], filters: [redirect({ hostname: 'example.org' })] },
        { matches: [prefix('/host-and-status')], filters: [redirect({ hostname: 'example.org', statusCode: 301 })] },
      ])],
      run: cases([
        { name: 'hostname', request: r('/hostname-redirect'), expect: { status: 302, redirect: { host: 'example.org' } } },
        { name: 'hostname and 301', request: r('/host-and-status'), expect: { status: 301, redirect: { host: 'example.org' } } },
      ]),
    },
    {
      name: 'MeshHTTPRouteRedirectPath',
      upstream: 'mesh/httproute-redirect-path.go',
      description: 'RequestRedirect replacing the matched prefix or the full path, alone and with hostname or status',
      features: ['Mesh', 'HTTPRoute', 'MeshHTTPRouteRedirectPath'],
      manifests: [httpRoute('redirect-path', { service: 'echo', port: 80 }, [
        { matches: [prefix('/original-prefix')], filters: [redirect({ path: { type: 'ReplacePrefixMatch', value: '/replacement-prefix' } })] },
        { matches: [prefix('/full')], filters: [redirect({ path: { type: 'ReplaceFullPath', value: '/full-path-replacement' } })] },
        { matches: [prefix('/path-and-host')], filters: [redirect({ hostname: 'example.org', path: { type: 'ReplacePrefixMatch', value: '/replacement-prefix' } })] },
        { matches: [prefix('/path-and-status')], filters: [redirect({ statusCode: 301, path: { type: 'ReplacePrefixMatch', value: '/replacement-prefix' } })] },
        { matches: [prefix('/full-path-and-host')], filters: [redirect({ hostname: 'example.org', path: { type: 'ReplaceFullPath', value: '/replacement-full' } })] },
        { matches: [prefix('/full-path-and-status')], filters: [redirect({ statusCode: 301, path: { type: 'ReplaceFullPath', value: '/replacement-full' } })] },
      ])],
      run: cases([
        { name: 'prefix replaced', request: r('/original-prefix/lemon'), expect: { status: 302, redirect: { path: '/replacement-prefix/lemon' } } },
        { name: 'full path replaced', request: r('/full/path/original'), expect: { status: 302, redirect: { path: '/full-path-replacement' } } },
        { name: 'prefix and hostname', request: r('/path-and-host'), expect: { status: 302, redirect: { host: 'example.org', path: '/replacement-prefix' } } },
        { name: 'prefix and 301', request: r('/path-and-status'), expect: { status: 301, redirect: { path: '/replacement-prefix' } } },
        { name: 'full path and hostname', request: r('/full-path-and-host'), expect: { status: 302, redirect: { host: 'example.org', path: '/replacement-full' } } },
        { name: 'full path and 301', request: r('/full-path-and-status'), expect: { status: 301, redirect: { path: '/replacement-full' } } },
      ]),
    },
    {
      name: 'MeshHTTPRouteRedirectPort',
      upstream: 'mesh/httproute-redirect-port.go',
      description: 'RequestRedirect to another port, alone and with hostname or status',
      features: ['Mesh', 'HTTPRoute', 'MeshHTTPRouteRedirectPort'],
      manifests: [httpRoute('redirect-port', { service: 'echo', port: 80 }, [
        { matches: [prefix('/port')], filters: [redirect({ port: 8083 })] },
        { matches: [prefix('/port-and-host')], filters: [redirect({ hostname: 'example.org', port: 8083 })] },
        { matches: [prefix('/port-and-status')], filters: [redirect({ port: 8083, statusCode: 301 })] },
        { matches: [prefix('/port-and-host-and-status')], filters: [redirect({ port: 8083, hostname: 'example.org', statusCode: 302 })] },
      ])],
      run: cases([
        { name: 'port', request: r('/port'), expect: { status: 302, redirect: { port: '8083' } } },
        { name: 'port and hostname', request: r('/port-and-host'), expect: { status: 302, redirect: { host: 'example.org', port: '8083' } } },
        { name: 'port and 301', request: r('/port-and-status'), expect: { status: 301, redirect: { port: '8083' } } },
        { name: 'port, hostname and 302', request: r('/port-and-host-and-status'), expect: { status: 302, redirect: { host: 'example.org', port: '8083' } } },
      ]),
    },
    {
      name: 'MeshHTTPRouteSchemeRedirect',
      upstream: 'mesh/httproute-redirect-scheme.go',
      description: 'RequestRedirect to https (its well-known port, so no port in Location), alone and with hostname or status',
      features: ['Mesh', 'HTTPRoute', 'MeshHTTPRouteSchemeRedirect'],
      manifests: [httpRoute('redirect-scheme', { service: 'echo', port: 80 }, [
        { matches: [prefix('/scheme')], filters: [redirect({ scheme: 'https' })] },
        { matches: [prefix('/scheme-and-host')], filters: [redirect({ hostname: 'example.org', scheme: 'https' })] },
        { matches: [prefix('/scheme-and-status')], filters: [redirect({ scheme: 'https', statusCode: 301 })] },
        { matches: [prefix('/scheme-and-host-and-status')], filters: [redirect({ scheme: 'https', statusCode: 302, hostname: 'example.org' })] },
      ])],
      run: cases([
        { name: 'scheme', request: r('/scheme'), expect: { status: 302, redirect: { scheme: 'https' } } },
        { name: 'scheme and hostname', request: r('/scheme-and-host'), expect: { status: 302, redirect: { scheme: 'https', host: 'example.org' } } },
        { name: 'scheme and 301', request: r('/scheme-and-status'), expect: { status: 301, redirect: { scheme: 'https' } } },
        { name: 'scheme, hostname and 302', request: r('/scheme-and-host-and-status'), expect: { status: 302, redirect: { scheme: 'https', host: 'example.org' } } },
      ]),
    },
  ];
}
