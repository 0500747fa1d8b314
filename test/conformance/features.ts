// Gateway API feature names and conformance profiles, as the upstream suite names them
// (sigs.k8s.io/gateway-api pkg/features and conformance/utils/suite/profiles.go), and the shape
// of one translated conformance test.
import type { ConformanceMesh } from './harness.ts';

/** The Gateway API release whose conformance tests this tier translates. */
export const GATEWAY_API_VERSION = 'v1.6.1';
/** Tests taken from the upstream main branch after that release (commit of the translation). */
export const GATEWAY_API_MAIN_COMMIT = '4564255ac2c35d582249b3cdf261bdf51c8bca32';

export type Feature =
  // Mesh core and extended.
  | 'Mesh' | 'MeshClusterIPMatching' | 'MeshConsumerRoute' | 'MeshHTTPRouteRewritePath'
  | 'MeshHTTPRouteSchemeRedirect' | 'MeshHTTPRouteRedirectPort' | 'MeshHTTPRouteRedirectPath'
  | 'MeshHTTPRouteBackendRequestHeaderModification' | 'MeshHTTPRouteQueryParamMatching'
  | 'MeshHTTPRouteNamedRouteRule'
  // HTTPRoute core and extended (those a mesh exercises).
  | 'HTTPRoute' | 'HTTPRouteResponseHeaderModification' | 'HTTPRouteParentRefPort'
  | 'HTTPRouteMethodMatching' | 'HTTPRouteHostRewrite' | 'HTTPRouteRequestMirror'
  | 'HTTPRouteRequestTimeout' | 'HTTPRouteBackendTimeout' | 'ReferenceGrant'
  | 'HTTPRoute303RedirectStatusCode' | 'HTTPRoute307RedirectStatusCode' | 'HTTPRoute308RedirectStatusCode'
  | 'HTTPRouteRequestMultipleMirrors' | 'HTTPRouteBackendRequestRedirect' | 'HTTPRouteBackendURLRewrite'
  | 'HTTPRouteBackendRequestHeaderModification' | 'HTTPRouteBackendProtocolH2C' | 'HTTPRouteCORS'
  | 'HTTPRouteBackendProtocolWebSocket' | 'HTTPRouteRetry' | 'HTTPRouteRequestPercentageMirror'
  | 'HTTPRouteRetryConnectionError' | 'HTTPRouteRetryBackendTimeout'
  // GRPCRoute.
  | 'GRPCRoute' | 'GRPCRouteNamedRouteRule';

export type ProfileName = 'MESH-HTTP' | 'MESH-GRPC';

export interface Profile {
  name: ProfileName;
  core: Feature[];
  extended: Feature[];
}

const MESH_EXTENDED: Feature[] = [
  'MeshClusterIPMatching', 'MeshConsumerRoute', 'MeshHTTPRouteRewritePath', 'MeshHTTPRouteSchemeRedirect',
  'MeshHTTPRouteRedirectPort', 'MeshHTTPRouteRedirectPath', 'MeshHTTPRouteBackendRequestHeaderModification',
  'MeshHTTPRouteQueryParamMatching', 'MeshHTTPRouteNamedRouteRule',
];

export const PROFILES: Profile[] = [
  { name: 'MESH-HTTP', core: ['Mesh', 'HTTPRoute'], extended: MESH_EXTENDED },
  { name: 'MESH-GRPC', core: ['Mesh', 'GRPCRoute'], extended: MESH_EXTENDED },
];

/** One upstream conformance test, translated: our own manifests, cases and checks. */
export interface ConformanceTest {
  /** The upstream ShortName (`MeshHTTPRouteMatching`). */
  name: string;
  /** The upstream file it translates, relative to conformance/tests/. */
  upstream: string;
  /** What it proves, in our words. */
  description: string;
  features: Feature[];
  /** The feature this test exists to prove (default: the last of `features`); its result is that feature's. */
  proves?: Feature;
  /** Upstream marks it provisional (not yet counted for a profile's result). */
  provisional?: boolean;
  /** Objects applied for this test (HTTPRoute, GRPCRoute, ReferenceGrant, ...). */
  manifests: object[];
  /** Runs the cases against the applied manifests; one line per failed case, empty when it conforms. */
  run(cm: ConformanceMesh): Promise<string[]>;
  /** A known bug the test exposes, with the issue and the branch fixing it; the test still runs. */
  todo?: string;
  /** A feature Weft does not implement (listed in docs/CONFORMANCE.md); the test does not run. */
  skip?: string;
}

/** The profile a test counts for: GRPCRoute tests for MESH-GRPC, the others for MESH-HTTP. */
export function profileOf(t: ConformanceTest): ProfileName {
  return t.features.includes('GRPCRoute') ? 'MESH-GRPC' : 'MESH-HTTP';
}

export function provedBy(t: ConformanceTest): Feature {
  return t.proves ?? t.features.at(-1)!;
}

/** Core when every feature it needs is a core feature of its profile. */
export function isCore(t: ConformanceTest): boolean {
  const p = PROFILES.find((x) => x.name === profileOf(t))!;
  return t.features.every((f) => p.core.includes(f));
}

/** Upstream HTTPRoute/GRPCRoute tests the tier does not translate, and why (for the report). */
export const NOT_TRANSLATED: Array<{ tests: string; why: string }> = [
  {
    tests: 'HTTPRouteListenerHostnameMatching, HTTPRouteListenerPortMatching, HTTPRouteHostnameIntersection, HTTPRouteMatchingAcrossRoutes, HTTPRouteHTTPSListener, HTTPRouteHTTPSListenerDetectMisdirectedRequests, HTTPRouteMultipleGateways, HTTPRouteDisallowedKind, HTTPRouteCrossNamespace, HTTPRouteInvalidCrossNamespaceParentRef, HTTPRouteInvalidParentRefNotMatchingListenerPort, HTTPRouteInvalidParentRefNotMatchingSectionName, HTTPRouteInvalidParentRefSectionNameNotMatchingPort, GRPCRouteListenerHostnameMatching',
    why: 'about Gateway listeners, listener hostnames or Gateway parents; a mesh route has a Service as parent',
  },
  {
    tests: 'HTTPRouteSimpleSameNamespace, HTTPRouteMatching, HTTPRouteQueryParamMatching, HTTPRouteWeight, HTTPRouteNamedRule, HTTPRouteRequestHeaderModifier, HTTPRouteRewritePath, HTTPRoute303/307/308Redirect, HTTPRouteRedirectHostAndStatus, HTTPRouteRedirectPath, HTTPRouteRedirectPort, HTTPRouteRedirectScheme, HTTPRouteRedirectPortAndScheme, GRPCRouteWeight, GRPCRouteRequestHeaderModifier',
    why: 'the tier runs their mesh versions (the Mesh... tests above), which make the same requests',
  },
  { tests: 'HTTPRouteObservedGenerationBump, and the route status conditions every upstream test also checks', why: 'the local mesh has no API server to hold status; route status is the kube tier\'s (issue 16, wp-policy)' },
  { tests: 'HTTPRouteServiceTypes', why: 'not translated yet (headless Services and EndpointSlices without a selector are implemented)' },
];
