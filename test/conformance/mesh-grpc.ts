// GRPCRoute conformance tests for the mesh: the upstream mesh GRPCRoute tests and the core
// GRPCRoute matching tests (written upstream against a Gateway), with a Service as the parent.
// The backend is the echo app's gRPC side (cli/local/apps/echo-grpc.ts, service weft.echo.Echo).
import type { ConformanceTest } from './features.ts';
import { NS, runCases, type ConformanceMesh, type Expected } from './harness.ts';
import type { ClientRequest } from './client-protocol.ts';
import { backend, grpcRoute, header, requestHeaders } from './manifests.ts';
import { distribution } from './mesh-http.ts';

const GRPC_OK = 0;
const GRPC_UNIMPLEMENTED = 12;
type Case = { name: string; request: ClientRequest; expect: Expected };
const call = (metadata?: Record<string, string>, grpcMethod: ClientRequest['grpcMethod'] = 'Echo'): ClientRequest => ({ protocol: 'grpc', host: 'echo:7070', grpcMethod, ...(metadata ? { headers: metadata } : {}) });
const cases = (list: Case[], client = `${NS}/echo-v1`) => (cm: ConformanceMesh) => runCases(cm.client(client), list);
const SERVICE = 'weft.echo.Echo';

export const MESH_GRPC_TESTS: ConformanceTest[] = [
  {
    name: 'MeshGRPCRouteWeight',
    upstream: 'mesh/grpcroute-weight.go',
    description: 'a 70/30 split of gRPC calls between two backends, and a weight-0 backend naming a missing Service that must cost nothing',
    features: ['Mesh', 'GRPCRoute'],
    manifests: [grpcRoute('grpc-weights', { service: 'echo', port: 7070 }, [{
      backendRefs: [backend('echo-v1', 7070, { weight: 70 }), backend('echo-v2', 7070, { weight: 30 }), backend('echo-v3', 7070, { weight: 0 })],
    }])],
    run: async (cm) => {
      const first = await runCases(cm.client(`${NS}/echo-v1`), [{ name: 'one call', request: call(), expect: { status: GRPC_OK } }], 1);
      if (first.length > 0) return first;
      return distribution(cm, call(), { 'echo-v1': 0.7, 'echo-v2': 0.3 });
    },
  },
  {
    name: 'MeshGRPCRouteRequestHeaderModifier',
    upstream: 'mesh/grpcroute-request-header-modifier.go',
    description: 'RequestHeaderModifier on GRPCRoute rules chosen by a metadata match sets, appends and removes metadata',
    features: ['Mesh', 'GRPCRoute'],
    manifests: [grpcRoute('grpc-request-headers', { service: 'echo', port: 7070 }, [
      { matches: [{ headers: [header('x-test-case', 'set')] }], filters: [requestHeaders({ set: [['x-header-set', 'set-overwrites-values']] })], backendRefs: [backend('echo-v1', 7070)] },
      { matches: [{ headers: [header('x-test-case', 'add')] }], filters: [requestHeaders({ add: [['x-header-add', 'add-appends-values']] })], backendRefs: [backend('echo-v1', 7070)] },
      { matches: [{ headers: [header('x-test-case', 'remove')] }], filters: [requestHeaders({ remove: ['x-header-remove'] })], backendRefs: [backend('echo-v1', 7070)] },
      {
        matches: [{ headers: [header('x-test-case', 'multi')] }],
        filters: [requestHeaders({ set: [['x-header-set-1', 'header-set-1'], ['x-header-set-2', 'header-set-2']], add: [['x-header-add-1', 'header-add-1'], ['x-header-add-2', 'header-add-2']], remove: ['x-header-remove-1', 'x-header-remove-2'] })],
        backendRefs: [backend('echo-v2', 7070)],
      },
    ])],
    run: async (cm) => [
      ...await runCases(cm.client(`${NS}/echo-v1`), [
        { name: 'set overwrites', request: call({ 'x-test-case': 'set', 'some-other-header': 'this-header-should-be-set', 'x-header-set': 'this-value-should-be-overwritten' }), expect: { status: GRPC_OK, backend: 'echo-v1', requestHeaders: { 'x-test-case': 'set', 'some-other-header': 'this-header-should-be-set', 'x-header-set': 'set-overwrites-values' } } },
        { name: 'add appends', request: call({ 'x-test-case': 'add', 'x-header-add': 'this-value-should-be-appended' }), expect: { status: GRPC_OK, backend: 'echo-v1', requestHeaders: { 'x-test-case': 'add', 'x-header-add': 'this-value-should-be-appended,add-appends-values' } } },
        { name: 'remove', request: call({ 'x-test-case': 'remove', 'x-header-remove': 'this-should-be-removed' }), expect: { status: GRPC_OK, backend: 'echo-v1', requestHeaders: { 'x-test-case': 'remove' }, absentRequestHeaders: ['x-header-remove'] } },
      ]),
      ...await runCases(cm.client(`${NS}/echo-v2`), [
        {
          name: 'set, add and remove together',
          request: call({ 'x-test-case': 'multi', 'x-header-set-2': 'set-header-2', 'x-header-add-2': 'add-header-2', 'x-header-remove-2': 'should-be-removed-2' }),
          expect: { status: GRPC_OK, backend: 'echo-v2', requestHeaders: { 'x-test-case': 'multi', 'x-header-set-1': 'header-set-1', 'x-header-set-2': 'header-set-2', 'x-header-add-1': 'header-add-1', 'x-header-add-2': 'add-header-2,header-add-2' }, absentRequestHeaders: ['x-header-remove-1', 'x-header-remove-2'] },
        },
      ]),
    ],
  },
  {
    name: 'GRPCRouteExactMethodMatching',
    upstream: 'grpcroute-exact-method-matching.go',
    description: 'exact service/method matches choose the backend; a method no rule names answers UNIMPLEMENTED from the waypoint',
    features: ['Mesh', 'GRPCRoute'],
    manifests: [grpcRoute('grpc-exact-method', { service: 'echo', port: 7070 }, [
      { matches: [{ method: { service: SERVICE, method: 'Echo' } }], backendRefs: [backend('echo-v1', 7070)] },
      { matches: [{ method: { service: SERVICE, method: 'EchoTwo' } }], backendRefs: [backend('echo-v2', 7070)] },
    ])],
    run: cases([
      { name: 'Echo', request: call(undefined, 'Echo'), expect: { status: GRPC_OK, backend: 'echo-v1', path: `/${SERVICE}/Echo` } },
      { name: 'EchoTwo', request: call(undefined, 'EchoTwo'), expect: { status: GRPC_OK, backend: 'echo-v2', path: `/${SERVICE}/EchoTwo` } },
      { name: 'EchoThree matches no rule', request: call(undefined, 'EchoThree'), expect: { status: GRPC_UNIMPLEMENTED } },
    ]),
  },
  {
    name: 'GRPCRouteHeaderMatching',
    upstream: 'grpcroute-header-matching.go',
    description: 'metadata matches, ANDed within a match and ORed across matches, with more matched headers taking precedence',
    features: ['Mesh', 'GRPCRoute'],
    manifests: [grpcRoute('grpc-header-matching', { service: 'echo', port: 7070 }, [
      { matches: [{ headers: [header('version', 'one')] }], backendRefs: [backend('echo-v1', 7070)] },
      { matches: [{ headers: [header('version', 'two')] }], backendRefs: [backend('echo-v2', 7070)] },
      { matches: [{ headers: [header('version', 'two'), header('color', 'orange')] }], backendRefs: [backend('echo-v1', 7070)] },
      { matches: [{ headers: [header('color', 'blue')] }, { headers: [header('color', 'green')] }], backendRefs: [backend('echo-v1', 7070)] },
      { matches: [{ headers: [header('color', 'red')] }, { headers: [header('color', 'yellow')] }], backendRefs: [backend('echo-v2', 7070)] },
    ])],
    run: cases([
      { name: 'version one', request: call({ version: 'one' }), expect: { status: GRPC_OK, backend: 'echo-v1' } },
      { name: 'version two', request: call({ version: 'two' }), expect: { status: GRPC_OK, backend: 'echo-v2' } },
      { name: 'version two and color orange', request: call({ version: 'two', color: 'orange' }), expect: { status: GRPC_OK, backend: 'echo-v1' } },
      { name: 'version two and color blue', request: call({ version: 'two', color: 'blue' }), expect: { status: GRPC_OK, backend: 'echo-v2' } },
      { name: 'color orange alone', request: call({ color: 'orange' }), expect: { status: GRPC_UNIMPLEMENTED } },
      { name: 'an unrelated header', request: call({ 'some-other-header': 'one' }), expect: { status: GRPC_UNIMPLEMENTED } },
      { name: 'color blue', request: call({ color: 'blue' }), expect: { status: GRPC_OK, backend: 'echo-v1' } },
      { name: 'color green', request: call({ color: 'green' }), expect: { status: GRPC_OK, backend: 'echo-v1' } },
      { name: 'color red', request: call({ color: 'red' }), expect: { status: GRPC_OK, backend: 'echo-v2' } },
      { name: 'color yellow', request: call({ color: 'yellow' }), expect: { status: GRPC_OK, backend: 'echo-v2' } },
      { name: 'color purple', request: call({ color: 'purple' }), expect: { status: GRPC_UNIMPLEMENTED } },
    ]),
  },
  {
    name: 'GRPCRouteNamedRule',
    upstream: 'grpcroute-named-rule.go',
    description: 'a GRPCRoute rule may carry a name; named and unnamed rules both route',
    features: ['Mesh', 'GRPCRoute', 'GRPCRouteNamedRouteRule'],
    provisional: true,
    manifests: [grpcRoute('grpc-named-rules', { service: 'echo', port: 7070 }, [
      { name: 'the-named-rule', matches: [{ method: { service: SERVICE, method: 'Echo' } }], backendRefs: [backend('echo-v1', 7070)] },
      { matches: [{ method: { service: SERVICE, method: 'EchoTwo' } }], backendRefs: [backend('echo-v2', 7070)] },
    ])],
    run: cases([
      { name: 'Echo (named rule)', request: call(undefined, 'Echo'), expect: { status: GRPC_OK, backend: 'echo-v1' } },
      { name: 'EchoTwo (unnamed rule)', request: call(undefined, 'EchoTwo'), expect: { status: GRPC_OK, backend: 'echo-v2' } },
    ]),
  },
];
