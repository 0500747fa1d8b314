// THIS IS NOT A KUBERNETES API SERVER. It stands in for a real kube-apiserver in tests and in the
// kube lab (no kube-apiserver can be installed on these machines), and is made faithful where Weft
// and kubectl depend on the real one. Where it differs, the real server is right.
//
// In-process, plain HTTP on loopback. What it does the way the real server does:
//   - discovery: /api, /apis, /api/v1, /apis/<group>/<version> (APIVersions, APIGroupList,
//     APIResourceList), /version; enough for the real `kubectl` to find every resource;
//   - list: GET /api/v1/<plural>, /apis/<group>/<version>/<plural> (all namespaces) and the
//     /namespaces/<ns>/<plural> forms, answering a <Kind>List with metadata.resourceVersion;
//     labelSelector (equality) and fieldSelector (metadata.name, metadata.namespace);
//   - watch: the same paths with ?watch=true&resourceVersion=N stream JSON lines {type, object}
//     (ADDED, MODIFIED, DELETED) for every change after N, then live changes; a resourceVersion
//     older than the retained history gets an ERROR event with a 410 Gone Status and the stream
//     closes (the client must relist) — or, with `goneAsHttpStatus`, a plain HTTP 410; with
//     allowWatchBookmarks=true, BOOKMARK events carry the current resourceVersion;
//   - get, create (POST), replace (PUT, optimistic concurrency on resourceVersion), patches (PATCH):
//     JSON merge, strategic merge (as merge), JSON patch (RFC 6902) and server-side apply
//     (application/apply-patch+yaml, per-field-manager ownership: fields a manager stops applying
//     are removed), delete (a Namespace takes its namespaced objects with it);
//   - the status subresource (…/<name>/status): PUT and PATCH change only `status`, and changes
//     outside /status leave `status` alone, for core kinds and CRDs that enable it;
//   - CustomResourceDefinitions: creating one serves its resource; its objects are pruned and
//     validated against the CRD's structural openAPIV3Schema with ajv (crd-schema.ts), 422 Invalid
//     naming the field otherwise;
//   - ServiceAccount tokens: TokenRequest (POST …/serviceaccounts/<sa>/token) issues a signed JWT
//     bound to audiences, an expiry and optionally a pod and node; TokenReview (POST
//     /apis/authentication.k8s.io/v1/tokenreviews) checks signature, expiry, audience (the
//     server's own, https://kubernetes.default.svc.cluster.local, when the review names none) and
//     that the bound ServiceAccount and pod still exist, and answers the user with the
//     authentication.kubernetes.io/node-name extra;
//   - Services get a cluster IP; generation moves with spec changes; uid, creationTimestamp.
//   - tables: `kubectl get` asks for a meta.k8s.io/v1 Table and gets the real server's columns for
//     Pods, Deployments, DaemonSets and Services (Name and Age for other kinds; table.ts);
//   - the pod proxy (GET /api/v1/namespaces/<ns>/pods/<pod>:<port>/proxy/<path>): forwarded over
//     HTTP to the pod's status.podIP:<port> (or where `podProxyTarget` says), 503 when the pod
//     does not run or the port does not answer, as the real server does; the node proxy (GET
//     /api/v1/nodes/<node>/proxy/<path>, the kubelet's endpoints) where `nodeProxyTarget` says,
//     503 when it says nothing (no kubelet serves HTTP in the lab).
// Not done: authorization (RBAC objects are stored, not enforced), admission, defaulting,
// garbage collection by ownerReferences (the lab kubelet deletes what it owns), protobuf.
// One global resourceVersion counter orders all changes, as etcd does. Tests drive it directly
// (apply, remove, compact, dropWatches) and read back what the controller wrote.
import { createServer, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { parse as parseYaml } from 'yaml';
import { CrdVersionSchema, SchemaInvalidError } from './crd-schema.ts';
import { toTable, wantsTable } from './table.ts';
import { groupOf } from '../../../lib/model/objects.ts';

export interface ResourceType {
  group: string;
  version: string;
  kind: string;
  plural: string;
  namespaced: boolean;
}

const apiVersionOf = (r: ResourceType) => (r.group ? `${r.group}/${r.version}` : r.version);

/** Istio's security CRDs (security.istio.io), which Weft reads beside its own: served only when a test asks (`resources`), as a cluster with Istio's CRDs installed. */
export const ISTIO_SECURITY_RESOURCES: ResourceType[] = [
  { group: 'security.istio.io', version: 'v1', kind: 'AuthorizationPolicy', plural: 'authorizationpolicies', namespaced: true },
  { group: 'security.istio.io', version: 'v1', kind: 'PeerAuthentication', plural: 'peerauthentications', namespaced: true },
  { group: 'security.istio.io', version: 'v1', kind: 'RequestAuthentication', plural: 'requestauthentications', namespaced: true },
];

export const DEFAULT_RESOURCES: ResourceType[] = [
  { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces', namespaced: false },
  { group: '', version: 'v1', kind: 'Node', plural: 'nodes', namespaced: false },
  { group: '', version: 'v1', kind: 'Pod', plural: 'pods', namespaced: true },
  { group: '', version: 'v1', kind: 'Service', plural: 'services', namespaced: true },
  { group: '', version: 'v1', kind: 'ServiceAccount', plural: 'serviceaccounts', namespaced: true },
  { group: 'discovery.k8s.io', version: 'v1', kind: 'EndpointSlice', plural: 'endpointslices', namespaced: true },
  { group: 'apps', version: 'v1', kind: 'Deployment', plural: 'deployments', namespaced: true },
  { group: 'weft.dev', version: 'v1alpha1', kind: 'Waypoint', plural: 'waypoints', namespaced: true },
  { group: 'weft.dev', version: 'v1alpha1', kind: 'AuthorizationPolicy', plural: 'authorizationpolicies', namespaced: true },
  { group: 'weft.dev', version: 'v1alpha1', kind: 'RequestAuthentication', plural: 'requestauthentications', namespaced: true },
  { group: 'weft.dev', version: 'v1alpha1', kind: 'PeerAuthentication', plural: 'peerauthentications', namespaced: true },
  { group: 'weft.dev', version: 'v1alpha1', kind: 'TrafficPolicy', plural: 'trafficpolicies', namespaced: true },
  { group: 'weft.dev', version: 'v1alpha1', kind: 'Telemetry', plural: 'telemetries', namespaced: true },
  { group: 'gateway.networking.k8s.io', version: 'v1', kind: 'HTTPRoute', plural: 'httproutes', namespaced: true },
  { group: 'gateway.networking.k8s.io', version: 'v1', kind: 'GRPCRoute', plural: 'grpcroutes', namespaced: true },
  { group: 'gateway.networking.k8s.io', version: 'v1beta1', kind: 'ReferenceGrant', plural: 'referencegrants', namespaced: true },
];

/** Built-in kinds of a cluster beyond the ones the controller reads (always served). */
export const CLUSTER_RESOURCES: ResourceType[] = [
  { group: '', version: 'v1', kind: 'ConfigMap', plural: 'configmaps', namespaced: true },
  { group: '', version: 'v1', kind: 'Secret', plural: 'secrets', namespaced: true },
  { group: '', version: 'v1', kind: 'Event', plural: 'events', namespaced: true },
  { group: '', version: 'v1', kind: 'Endpoints', plural: 'endpoints', namespaced: true },
  { group: 'coordination.k8s.io', version: 'v1', kind: 'Lease', plural: 'leases', namespaced: true },
  { group: 'apps', version: 'v1', kind: 'DaemonSet', plural: 'daemonsets', namespaced: true },
  { group: 'apps', version: 'v1', kind: 'ReplicaSet', plural: 'replicasets', namespaced: true },
  { group: 'policy', version: 'v1', kind: 'PodDisruptionBudget', plural: 'poddisruptionbudgets', namespaced: true },
  { group: 'apiextensions.k8s.io', version: 'v1', kind: 'CustomResourceDefinition', plural: 'customresourcedefinitions', namespaced: false },
  { group: 'rbac.authorization.k8s.io', version: 'v1', kind: 'ClusterRole', plural: 'clusterroles', namespaced: false },
  { group: 'rbac.authorization.k8s.io', version: 'v1', kind: 'ClusterRoleBinding', plural: 'clusterrolebindings', namespaced: false },
  { group: 'rbac.authorization.k8s.io', version: 'v1', kind: 'Role', plural: 'roles', namespaced: true },
  { group: 'rbac.authorization.k8s.io', version: 'v1', kind: 'RoleBinding', plural: 'rolebindings', namespaced: true },
  { group: 'monitoring.coreos.com', version: 'v1', kind: 'PodMonitor', plural: 'podmonitors', namespaced: true },
];

/** The Weft and Gateway API kinds: served only once their CRD is created (`crdsFromApi`). */
const CUSTOM_GROUPS = new Set(['weft.dev', 'gateway.networking.k8s.io', 'monitoring.coreos.com']);

/** Kinds whose status is only written through /status (core kinds; CRDs say so in their spec). */
const STATUS_SUBRESOURCE = new Set(['Waypoint', 'AuthorizationPolicy', 'RequestAuthentication', 'PeerAuthentication', 'TrafficPolicy', 'Telemetry', 'HTTPRoute', 'GRPCRoute', 'Deployment', 'DaemonSet', 'ReplicaSet', 'Pod', 'Node', 'Namespace', 'PodDisruptionBudget']);

/** kubectl's short names of the built-in kinds (`kubectl get ns`). */
const SHORT_NAMES: Record<string, string[]> = {
  Namespace: ['ns'], Node: ['no'], Pod: ['po'], Service: ['svc'], ServiceAccount: ['sa'], ConfigMap: ['cm'], Event: ['ev'],
  Endpoints: ['ep'], Deployment: ['deploy'], DaemonSet: ['ds'], ReplicaSet: ['rs'], PodDisruptionBudget: ['pdb'], CustomResourceDefinition: ['crd', 'crds'],
};

/** The API server's own audience: what a TokenReview without audiences checks against. */
export const API_SERVER_AUDIENCE = 'https://kubernetes.default.svc.cluster.local';
export const NODE_NAME_EXTRA = 'authentication.kubernetes.io/node-name';

type Meta = { name: string; namespace?: string; resourceVersion?: string; uid?: string; generation?: number; creationTimestamp?: string; labels?: Record<string, string>; managedFields?: unknown[]; [k: string]: unknown };
type Obj = { apiVersion?: string; kind?: string; metadata: Meta; [k: string]: unknown };

interface WatchEvent {
  rv: number;
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  object: Obj;
}

interface Watcher {
  rt: ResourceType;
  selector: (o: Obj) => boolean;
  namespace?: string;
  res: ServerResponse;
  bookmarks: boolean;
}

/** Where the pod or node proxy sends a request; `connect` makes the connection when the target is elsewhere. */
export interface ProxyTarget {
  host: string;
  port: number;
  connect?: () => Socket;
}

export interface FakeApiServerOptions {
  resources?: ResourceType[];
  /** Answer too-old watches with HTTP 410 instead of an ERROR event. */
  goneAsHttpStatus?: boolean;
  /**
   * Serve weft.dev and gateway.networking.k8s.io kinds only after their CRD is created through the
   * API, and validate their objects against its schema (the kube lab). Default false: they are
   * served from the start without schemas (controller unit tests).
   */
  crdsFromApi?: boolean;
  /** First two octets of the /16 cluster IPs are allocated from; default 10.96 (the real server's default range). */
  serviceNet?: string;
}

export interface Request {
  method: string;
  path: string;
  body?: unknown;
}

/** What a projected ServiceAccount token is bound to. */
export interface TokenBinding {
  namespace: string;
  serviceAccount: string;
  audiences: string[];
  expirationSeconds?: number;
  /** Bound pod: the token dies with it. */
  pod?: { name: string; uid?: string };
  node?: string;
}

interface TokenClaims {
  iss: string;
  aud: string[];
  exp: number;
  iat: number;
  sub: string;
  'kubernetes.io': { namespace: string; serviceaccount: { name: string; uid: string }; pod?: { name: string; uid: string }; node?: { name: string } };
}

const b64u = (b: Buffer | string) => Buffer.from(b).toString('base64url');

export class FakeApiServer {
  readonly #resources: ResourceType[];
  readonly #opts: FakeApiServerOptions;
  #server: Server | undefined;
  #rv = 1;
  /** Oldest resourceVersion still watchable; older ones get 410. */
  #compactedRv = 0;
  #nextClusterIp = 100;
  readonly #store = new Map<string, Map<string, Obj>>();
  readonly #history = new Map<string, WatchEvent[]>();
  readonly #watchers = new Set<Watcher>();
  readonly #sockets = new Set<Socket>();
  readonly #schemas = new Map<string, CrdVersionSchema>();
  readonly #statusKinds = new Set(STATUS_SUBRESOURCE);
  readonly #tokenKey = randomBytes(32);
  readonly #shortNames = new Map<string, string[]>();
  /** Every request served (tests assert on writes). */
  readonly requests: Request[] = [];
  /** Clock for token expiry (seconds); tests move it. */
  now: () => number = () => Math.floor(Date.now() / 1000);
  /**
   * Where the pod proxy connects for a pod's port; default its status.podIP and that port, from
   * this process's network (the kube lab connects from its wire namespace with `connect`).
   */
  podProxyTarget: ((namespace: string, pod: string, port: number) => ProxyTarget | undefined) | undefined;
  /** Where the node proxy connects for a node's kubelet; undefined: 503. */
  nodeProxyTarget: ((node: string) => ProxyTarget | undefined) | undefined;
  port = 0;

  constructor(options: FakeApiServerOptions = {}) {
    this.#opts = options;
    const base = options.resources ?? DEFAULT_RESOURCES;
    const all = [...base, ...CLUSTER_RESOURCES.filter((c) => !base.some((b) => b.kind === c.kind))];
    this.#resources = options.crdsFromApi ? all.filter((r) => !CUSTOM_GROUPS.has(r.group)) : all;
    for (const r of this.#resources) this.#addType(r);
  }

  #addType(r: ResourceType): void {
    if (!this.#resources.includes(r)) this.#resources.push(r);
    if (!this.#store.has(r.plural + '.' + r.group)) {
      this.#store.set(r.plural + '.' + r.group, new Map());
      this.#history.set(r.plural + '.' + r.group, []);
    }
  }

  #bucket(rt: ResourceType): Map<string, Obj> {
    return this.#store.get(rt.plural + '.' + rt.group)!;
  }

  #hist(rt: ResourceType): WatchEvent[] {
    return this.#history.get(rt.plural + '.' + rt.group)!;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get resourceVersion(): string {
    return String(this.#rv);
  }

  /** Kinds served now. */
  served(): ResourceType[] {
    return [...this.#resources];
  }

  async start(): Promise<void> {
    return this.startOn(0);
  }

  /** Listens on a given port (tests that bring an API server back where it was). */
  async startOn(port: number): Promise<void> {
    this.#server = createServer((req, res) => void this.#handle(req, res));
    this.#server.on('connection', (s) => {
      this.#sockets.add(s);
      s.on('close', () => this.#sockets.delete(s));
    });
    await new Promise<void>((resolve) => this.#server!.listen(port, '127.0.0.1', resolve));
    this.port = (this.#server.address() as { port: number }).port;
  }

  async stop(): Promise<void> {
    for (const w of this.#watchers) w.res.end();
    this.#watchers.clear();
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => (this.#server ? this.#server.close(() => resolve()) : resolve()));
  }

  /** A kubeconfig (YAML) for kubectl and client-node pointing here, with a bearer token. */
  kubeconfig(user = 'admin'): string {
    return [
      'apiVersion: v1', 'kind: Config', 'current-context: lab',
      'clusters:', `- name: lab`, `  cluster:`, `    server: ${this.url}`, '    insecure-skip-tls-verify: true',
      'users:', `- name: ${user}`, `  user:`, `    token: lab-${user}`,
      'contexts:', `- name: lab`, `  context:`, `    cluster: lab`, `    user: ${user}`, '',
    ].join('\n');
  }

  // -------------------------------------------------------------------------------------------
  // Test controls

  /** Creates or replaces an object (spec and metadata; keeps the stored status unless given). */
  apply(input: object): Obj {
    const obj = structuredClone(input) as Obj;
    const rt = this.#typeOfObject(obj);
    const key = this.#key(rt, obj.metadata.namespace, obj.metadata.name);
    const prev = this.#bucket(rt).get(key);
    return prev ? this.#write(rt, mergeForUpdate(prev, obj, false), 'MODIFIED') : this.#create(rt, obj);
  }

  /** `apiVersion` picks the group of a kind served in two (AuthorizationPolicy in weft.dev and security.istio.io); default the first served. */
  remove(kind: string, namespace: string | undefined, name: string, apiVersion?: string): boolean {
    const rt = this.#type(kind, apiVersion);
    const key = this.#key(rt, namespace, name);
    const prev = this.#bucket(rt).get(key);
    if (!prev) return false;
    this.#bucket(rt).delete(key);
    const obj = { ...prev, metadata: { ...prev.metadata, resourceVersion: String(++this.#rv) } };
    this.#emit(rt, { rv: this.#rv, type: 'DELETED', object: obj });
    if (rt.kind === 'Namespace') {
      // Namespace deletion takes everything in it (the real server finalizes asynchronously).
      for (const t of this.#resources) {
        if (!t.namespaced) continue;
        for (const o of [...this.#bucket(t).values()]) if (o.metadata.namespace === name) this.remove(t.kind, name, o.metadata.name, apiVersionOf(t));
      }
    }
    if (rt.kind === 'CustomResourceDefinition') this.#unregisterCrd(prev);
    return true;
  }

  get(kind: string, namespace: string | undefined, name: string, apiVersion?: string): Obj | undefined {
    const rt = this.#type(kind, apiVersion);
    const o = this.#bucket(rt).get(this.#key(rt, namespace, name));
    return o ? structuredClone(o) : undefined;
  }

  list(kind: string, apiVersion?: string): Obj[] {
    return [...this.#bucket(this.#type(kind, apiVersion)).values()].map((o) => structuredClone(o));
  }

  /** Forgets the change history: every watch from an older resourceVersion now gets 410 Gone. */
  compact(): void {
    this.#compactedRv = this.#rv;
    for (const h of this.#history.values()) h.length = 0;
  }

  /** Ends every open watch stream cleanly (as an API server does on timeout). */
  closeWatches(): void {
    for (const w of this.#watchers) w.res.end();
    this.#watchers.clear();
  }

  /** Resets every connection (as a crashed API server or a broken network does). */
  dropConnections(): void {
    this.#watchers.clear();
    for (const s of this.#sockets) s.destroy();
  }

  /** Sends a BOOKMARK with the current resourceVersion to every watch that asked for bookmarks. */
  bookmark(): void {
    for (const w of this.#watchers) if (w.bookmarks) this.#sendBookmark(w);
  }

  /** Number of open watch streams. */
  get watchCount(): number {
    return this.#watchers.size;
  }

  /** Open watch streams of one kind. */
  watchers(kind: string): number {
    let n = 0;
    for (const w of this.#watchers) if (w.rt.kind === kind) n++;
    return n;
  }

  /** Issues a bound ServiceAccount token (what the kubelet asks for a projected token volume). */
  issueToken(b: TokenBinding): { token: string; expirationTimestamp: string } {
    const sa = this.get('ServiceAccount', b.namespace, b.serviceAccount);
    const iat = this.now();
    const exp = iat + (b.expirationSeconds ?? 3600);
    const podUid = b.pod ? (b.pod.uid ?? (this.get('Pod', b.namespace, b.pod.name)?.metadata.uid as string | undefined) ?? '') : undefined;
    const claims: TokenClaims = {
      iss: API_SERVER_AUDIENCE, aud: b.audiences.length ? b.audiences : [API_SERVER_AUDIENCE], iat, exp,
      sub: `system:serviceaccount:${b.namespace}:${b.serviceAccount}`,
      'kubernetes.io': {
        namespace: b.namespace,
        serviceaccount: { name: b.serviceAccount, uid: (sa?.metadata.uid as string | undefined) ?? '' },
        ...(b.pod ? { pod: { name: b.pod.name, uid: podUid ?? '' } } : {}),
        ...(b.node ? { node: { name: b.node } } : {}),
      },
    };
    const unsigned = `${b64u(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64u(JSON.stringify(claims))}`;
    const sig = createHmac('sha256', this.#tokenKey).update(unsigned).digest('base64url');
    return { token: `${unsigned}.${sig}`, expirationTimestamp: new Date(exp * 1000).toISOString() };
  }

  /** A TokenReview's status, as the real server computes it. */
  reviewToken(token: string, audiences: readonly string[] = []): Record<string, unknown> {
    const fail = (error: string) => ({ authenticated: false, error });
    const parts = token.split('.');
    if (parts.length !== 3) return fail('invalid bearer token');
    const expect = createHmac('sha256', this.#tokenKey).update(`${parts[0]}.${parts[1]}`).digest();
    const got = Buffer.from(parts[2]!, 'base64url');
    if (got.length !== expect.length || !timingSafeEqual(got, expect)) return fail('invalid bearer token, square/go-jose: error in cryptographic primitive');
    const c = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString()) as TokenClaims;
    if (c.exp <= this.now()) return fail('invalid bearer token, service account token has expired');
    const wanted = audiences.length ? audiences : [API_SERVER_AUDIENCE];
    const matched = c.aud.filter((a) => wanted.includes(a));
    if (matched.length === 0) return fail('invalid bearer token, token audiences ["' + c.aud.join('","') + '"] is invalid for the target audiences ["' + wanted.join('","') + '"]');
    const k = c['kubernetes.io'];
    const sa = this.get('ServiceAccount', k.namespace, k.serviceaccount.name);
    if (!sa || (k.serviceaccount.uid && sa.metadata.uid !== k.serviceaccount.uid)) return fail(`invalid bearer token, service account ${k.namespace}/${k.serviceaccount.name} has been deleted`);
    if (k.pod) {
      const pod = this.get('Pod', k.namespace, k.pod.name);
      if (!pod || (k.pod.uid && pod.metadata.uid !== k.pod.uid)) return fail(`invalid bearer token, pod ${k.namespace}/${k.pod.name} has been deleted`);
    }
    return {
      authenticated: true,
      audiences: matched,
      user: {
        username: c.sub,
        uid: k.serviceaccount.uid,
        groups: ['system:serviceaccounts', `system:serviceaccounts:${k.namespace}`, 'system:authenticated'],
        extra: {
          ...(k.pod ? { 'authentication.kubernetes.io/pod-name': [k.pod.name], 'authentication.kubernetes.io/pod-uid': [k.pod.uid] } : {}),
          ...(k.node ? { [NODE_NAME_EXTRA]: [k.node.name] } : {}),
        },
      },
    };
  }

  // -------------------------------------------------------------------------------------------

  #type(kind: string, apiVersion?: string): ResourceType {
    const rt = this.#resources.find((r) => r.kind === kind && (apiVersion === undefined || apiVersionOf(r) === apiVersion))
      // Another version of the same group (security.istio.io v1beta1 of a v1 type) is the same object.
      ?? (apiVersion === undefined ? undefined : this.#resources.find((r) => r.kind === kind && r.group === groupOf(apiVersion)));
    if (!rt) throw new Error(`fake API server: unknown kind ${kind}${apiVersion ? ` in ${apiVersion}` : ''}`);
    return rt;
  }

  #typeOfObject(obj: Obj): ResourceType {
    if (!obj.kind || !obj.metadata?.name) throw new Error('fake API server: objects need kind and metadata.name');
    return this.#type(obj.kind, typeof obj.apiVersion === 'string' ? obj.apiVersion : undefined);
  }

  #key(rt: ResourceType, namespace: string | undefined, name: string): string {
    return rt.namespaced ? `${namespace ?? 'default'}/${name}` : name;
  }

  /** Prunes and validates a custom resource against its CRD schema (throws SchemaInvalidError). */
  #validate(rt: ResourceType, obj: Obj): void {
    const schema = this.#schemas.get(`${rt.group}/${rt.version}/${rt.plural}`);
    if (!schema) return;
    const status = obj['status'];
    schema.check(obj as Obj & Record<string, unknown>);
    // status is validated through /status only; keep what the caller had (stripped by mergeForUpdate as needed).
    if (status !== undefined && obj['status'] === undefined) obj['status'] = status;
  }

  #registerCrd(crd: Obj): void {
    const spec = crd['spec'] as { group: string; names: { kind: string; plural: string }; scope: string; versions: Array<{ name: string; served?: boolean; schema?: { openAPIV3Schema?: Record<string, unknown> }; subresources?: { status?: unknown } }> };
    for (const v of spec.versions) {
      if (v.served === false) continue;
      let rt = this.#resources.find((r) => r.group === spec.group && r.version === v.name && r.plural === spec.names.plural);
      if (!rt) {
        rt = { group: spec.group, version: v.name, kind: spec.names.kind, plural: spec.names.plural, namespaced: spec.scope === 'Namespaced' };
        this.#addType(rt);
      }
      if (v.subresources?.status) this.#statusKinds.add(spec.names.kind);
      const short = (spec.names as { shortNames?: string[] }).shortNames;
      if (short) this.#shortNames.set(spec.names.kind, short);
      if (v.schema?.openAPIV3Schema) this.#schemas.set(`${spec.group}/${v.name}/${spec.names.plural}`, new CrdVersionSchema(spec.names.kind, spec.group, v.schema.openAPIV3Schema));
    }
    (crd as { status?: unknown }).status = {
      acceptedNames: spec.names,
      storedVersions: spec.versions.filter((v) => (v as { storage?: boolean }).storage !== false).map((v) => v.name).slice(0, 1),
      conditions: [{ type: 'Established', status: 'True', reason: 'InitialNamesAccepted', lastTransitionTime: new Date().toISOString() }, { type: 'NamesAccepted', status: 'True', reason: 'NoConflicts', lastTransitionTime: new Date().toISOString() }],
    };
  }

  #unregisterCrd(crd: Obj): void {
    const spec = crd['spec'] as { group: string; names: { plural: string } };
    for (const rt of this.#resources.filter((r) => r.group === spec.group && r.plural === spec.names.plural)) {
      for (const o of [...this.#bucket(rt).values()]) this.remove(rt.kind, o.metadata.namespace, o.metadata.name, apiVersionOf(rt));
      this.#resources.splice(this.#resources.indexOf(rt), 1);
      this.#schemas.delete(`${rt.group}/${rt.version}/${rt.plural}`);
    }
  }

  #create(rt: ResourceType, obj: Obj): Obj {
    obj.apiVersion = rt.group ? `${rt.group}/${rt.version}` : rt.version;
    obj.kind = rt.kind;
    if (rt.namespaced) obj.metadata.namespace ??= 'default';
    else delete obj.metadata.namespace;
    if (obj.metadata.generateName && !obj.metadata.name) obj.metadata.name = `${obj.metadata.generateName as string}${randomBytes(3).toString('hex').slice(0, 5)}`;
    obj.metadata.uid ??= randomUUID();
    obj.metadata.generation = 1;
    obj.metadata.creationTimestamp ??= new Date().toISOString();
    this.#validate(rt, obj);
    if (rt.kind === 'Service') {
      // Like the real server: allocate a cluster IP from its service range when none is given.
      const spec = ((obj.spec ??= {}) as { clusterIP?: string; type?: string });
      if (!spec.clusterIP && spec.type !== 'ExternalName') {
        const n = ++this.#nextClusterIp;
        spec.clusterIP = `${this.#opts.serviceNet ?? '10.96'}.${(n >> 8) & 255}.${n & 255}`;
      }
    }
    if (rt.kind === 'Namespace') (obj as { status?: unknown }).status = { phase: 'Active' };
    if (rt.kind === 'CustomResourceDefinition') this.#registerCrd(obj);
    return this.#write(rt, obj, 'ADDED');
  }

  #write(rt: ResourceType, obj: Obj, type: 'ADDED' | 'MODIFIED'): Obj {
    obj.metadata.resourceVersion = String(++this.#rv);
    this.#bucket(rt).set(this.#key(rt, obj.metadata.namespace, obj.metadata.name), obj);
    this.#emit(rt, { rv: this.#rv, type, object: structuredClone(obj) });
    return structuredClone(obj);
  }

  #emit(rt: ResourceType, ev: WatchEvent): void {
    this.#hist(rt).push(ev);
    for (const w of this.#watchers) {
      if (w.rt !== rt) continue;
      if (w.namespace && ev.object.metadata.namespace !== w.namespace) continue;
      if (!w.selector(ev.object)) continue;
      w.res.write(JSON.stringify({ type: ev.type, object: ev.object }) + '\n');
    }
  }

  #sendBookmark(w: Watcher): void {
    const rt = w.rt;
    w.res.write(JSON.stringify({ type: 'BOOKMARK', object: { apiVersion: rt.group ? `${rt.group}/${rt.version}` : rt.version, kind: rt.kind, metadata: { resourceVersion: String(this.#rv) } } }) + '\n');
  }

  /** Tests: requests whose path starts with a key are answered with its HTTP status (403 Forbidden, 5xx). */
  readonly failing = new Map<string, number>();
  /** Tests: requests whose path starts with a key are answered only once its promise settles (a slow API server). */
  readonly stalled = new Map<string, Promise<void>>();

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    let body: unknown;
    if (req.method === 'POST' || req.method === 'PUT' || req.method === 'PATCH') {
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c as Buffer);
      const text = Buffer.concat(chunks).toString('utf8');
      try {
        // Server-side apply bodies are YAML (JSON is YAML too).
        body = /yaml/.test(req.headers['content-type'] ?? '') ? parseYaml(text) : JSON.parse(text || 'null');
      } catch {
        return status(res, 400, 'BadRequest', 'request body is not JSON');
      }
    }
    this.requests.push({ method: req.method ?? 'GET', path: url.pathname + url.search, ...(body !== undefined ? { body } : {}) });
    for (const [prefix, until] of this.stalled) if (url.pathname.startsWith(prefix)) await until;
    for (const [prefix, code] of this.failing) if (url.pathname.startsWith(prefix)) return status(res, code, code === 403 ? 'Forbidden' : 'InternalError', `injected failure for ${prefix}`);
    const proxy = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/:]+):(\d+)\/proxy(\/.*)?$/.exec(url.pathname);
    if (proxy && req.method === 'GET') return this.#podProxy(decodeURIComponent(proxy[1]!), decodeURIComponent(proxy[2]!), Number(proxy[3]), (proxy[4] ?? '/') + url.search, res, req.headers);
    const nodeProxy = /^\/api\/v1\/nodes\/([^/]+)\/proxy(\/.*)?$/.exec(url.pathname);
    if (nodeProxy && req.method === 'GET') return this.#nodeProxy(decodeURIComponent(nodeProxy[1]!), (nodeProxy[2] ?? '/') + url.search, res);
    if (req.method === 'GET' && this.#discovery(url.pathname, res)) return;
    if (req.method === 'POST' && url.pathname === '/apis/authentication.k8s.io/v1/tokenreviews') {
      const review = body as { spec?: { token?: string; audiences?: string[] } };
      return json(res, 201, { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', metadata: { creationTimestamp: null }, spec: review.spec ?? {}, status: this.reviewToken(review.spec?.token ?? '', review.spec?.audiences ?? []) });
    }
    const tokenRequest = /^\/api\/v1\/namespaces\/([^/]+)\/serviceaccounts\/([^/]+)\/token$/.exec(url.pathname);
    if (req.method === 'POST' && tokenRequest) {
      const [, namespace, sa] = tokenRequest as unknown as [string, string, string];
      if (!this.get('ServiceAccount', namespace, sa)) return status(res, 404, 'NotFound', `serviceaccounts "${sa}" not found`);
      const spec = (body as { spec?: { audiences?: string[]; expirationSeconds?: number; boundObjectRef?: { kind: string; name: string; uid?: string } } }).spec ?? {};
      const bound = spec.boundObjectRef?.kind === 'Pod' ? this.get('Pod', namespace, spec.boundObjectRef.name) : undefined;
      if (spec.boundObjectRef && !bound) return status(res, 404, 'NotFound', `pods "${spec.boundObjectRef.name}" not found`);
      const node = (bound?.['spec'] as { nodeName?: string } | undefined)?.nodeName;
      const issued = this.issueToken({
        namespace, serviceAccount: sa, audiences: spec.audiences ?? [], expirationSeconds: spec.expirationSeconds ?? 3600,
        ...(bound ? { pod: { name: bound.metadata.name, uid: bound.metadata.uid as string } } : {}), ...(node ? { node } : {}),
      });
      return json(res, 201, { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenRequest', metadata: { name: sa, namespace }, spec, status: issued });
    }
    const route = this.#route(url.pathname);
    if (!route) return status(res, 404, 'NotFound', `the server could not find the requested resource ${url.pathname}`);
    const { rt, namespace, name, subresource } = route;
    const store = this.#bucket(rt);
    const apiVersion = rt.group ? `${rt.group}/${rt.version}` : rt.version;
    try {
      if (!name) {
        const selector = and(parseSelector(url.searchParams.get('labelSelector')), parseFieldSelector(url.searchParams.get('fieldSelector')));
        if (req.method === 'GET' && url.searchParams.get('watch') === 'true') return this.#watch(rt, namespace, url.searchParams.get('resourceVersion') ?? '', selector, url.searchParams.get('allowWatchBookmarks') === 'true', res);
        if (req.method === 'GET') {
          let items = [...store.values()].filter((o) => (!namespace || o.metadata.namespace === namespace) && selector(o));
          const limit = Number(url.searchParams.get('limit') ?? 0);
          if (limit > 0) items = items.slice(0, limit);
          if (wantsTable(req.headers.accept)) return json(res, 200, toTable(rt.kind, items, String(this.#rv)));
          return json(res, 200, { apiVersion, kind: `${rt.kind}List`, metadata: { resourceVersion: String(this.#rv) }, items });
        }
        if (req.method === 'POST') {
          const obj = body as Obj;
          if (!obj?.metadata?.name && !obj?.metadata?.generateName) return status(res, 422, 'Invalid', 'metadata.name: Required value');
          if (rt.namespaced) obj.metadata.namespace = namespace ?? obj.metadata.namespace;
          if (rt.namespaced && rt.kind !== 'Event' && !this.get('Namespace', undefined, obj.metadata.namespace ?? 'default') && this.#opts.crdsFromApi) return status(res, 404, 'NotFound', `namespaces "${obj.metadata.namespace}" not found`);
          if (obj.metadata.name && store.has(this.#key(rt, obj.metadata.namespace, obj.metadata.name))) return status(res, 409, 'AlreadyExists', `${rt.plural} "${obj.metadata.name}" already exists`);
          if (url.searchParams.get('dryRun') === 'All') return json(res, 201, obj);
          return json(res, 201, this.#create(rt, obj));
        }
        return status(res, 405, 'MethodNotAllowed', `${req.method} is not allowed on a collection`);
      }
      const key = this.#key(rt, namespace, name);
      const prev = store.get(key);
      if (req.method === 'GET' && prev && !subresource && wantsTable(req.headers.accept)) return json(res, 200, toTable(rt.kind, [prev], String(this.#rv)));
      if (req.method === 'GET') return prev ? json(res, 200, prev) : notFound(res, rt, name);
      if (req.method === 'DELETE') {
        if (!prev) return notFound(res, rt, name);
        this.remove(rt.kind, namespace, name, apiVersionOf(rt));
        return json(res, 200, prev);
      }
      const ct = req.headers['content-type'] ?? '';
      if (req.method === 'PATCH' && /apply-patch/.test(ct)) {
        const manager = url.searchParams.get('fieldManager');
        if (!manager) return status(res, 400, 'BadRequest', 'PATCH with apply-patch+yaml requires the fieldManager query parameter');
        return this.#serverSideApply(res, rt, namespace, name, subresource, body as Obj, manager, url.searchParams.get('force') === 'true');
      }
      if (!prev) return notFound(res, rt, name);
      let next: Obj;
      const keepStatus = this.#statusKinds.has(rt.kind);
      if (req.method === 'PUT') {
        const obj = body as Obj;
        const wantRv = obj?.metadata?.resourceVersion;
        if (wantRv && wantRv !== prev.metadata.resourceVersion) return conflict(res, rt, name);
        next = subresource === 'status' ? { ...structuredClone(prev), status: obj['status'] } : mergeForUpdate(prev, obj, keepStatus);
      } else if (req.method === 'PATCH') {
        let patched: Obj;
        if (/json-patch\+json/.test(ct)) patched = jsonPatch(structuredClone(prev), body as JsonPatchOp[]) as Obj;
        else if (/merge-patch\+json|strategic-merge-patch\+json/.test(ct)) patched = mergePatch(structuredClone(prev), body) as Obj;
        else return status(res, 415, 'UnsupportedMediaType', `the server does not support the patch type ${ct}`);
        next = subresource === 'status' ? { ...structuredClone(prev), status: patched['status'] } : mergeForUpdate(prev, patched, keepStatus);
      } else return status(res, 405, 'MethodNotAllowed', `${req.method} is not allowed`);
      if (subresource !== 'status') this.#validate(rt, next);
      if (JSON.stringify(next) === JSON.stringify(prev)) return json(res, 200, prev);
      // As a real API server does, a write through /status records its manager's Update there
      // (managedFields, with the time): the object seen back differs in more than its status.
      if (subresource === 'status') {
        const manager = url.searchParams.get('fieldManager') ?? 'unknown';
        const mf = (prev.metadata.managedFields ?? []) as Array<{ manager: string; operation: string; subresource?: string }>;
        next.metadata.managedFields = [...mf.filter((m) => !(m.manager === manager && m.operation === 'Update' && m.subresource === 'status')), { manager, operation: 'Update', apiVersion: prev.apiVersion, time: new Date().toISOString(), fieldsType: 'FieldsV1', fieldsV1: { 'f:status': {} }, subresource: 'status' }];
      }
      if (url.searchParams.get('dryRun') === 'All') return json(res, 200, next);
      return json(res, 200, this.#write(rt, next, 'MODIFIED'));
    } catch (e) {
      if (e instanceof SchemaInvalidError) return invalid(res, rt, name ?? (body as Obj | undefined)?.metadata?.name ?? "", e);
      if (e instanceof JsonPatchError) return status(res, 422, 'Invalid', e.message);
      return status(res, 500, 'InternalError', (e as Error).message);
    }
  }

  /**
   * Server-side apply: the applied configuration is merged over the live object; fields this
   * manager applied before and does not apply now are removed; fields other managers set stay.
   * Ownership is kept per manager as the set of leaf paths (lists are atomic), in
   * metadata.managedFields (FieldsV1-like).
   */
  #serverSideApply(res: ServerResponse, rt: ResourceType, namespace: string | undefined, name: string, subresource: string | undefined, applied: Obj, manager: string, _force: boolean): void {
    const key = this.#key(rt, namespace, name);
    const prev = this.#bucket(rt).get(key);
    if (!applied || typeof applied !== 'object') return status(res, 400, 'BadRequest', 'apply body is not an object');
    const apiVersion = rt.group ? `${rt.group}/${rt.version}` : rt.version;
    if (applied.kind !== rt.kind || (applied.apiVersion && applied.apiVersion !== apiVersion)) return status(res, 400, 'BadRequest', `apply body is ${String(applied.apiVersion)}/${String(applied.kind)}, not ${apiVersion}/${rt.kind}`);
    if (applied.metadata?.name !== name) return status(res, 400, 'BadRequest', `the name of the object (${String(applied.metadata?.name)}) does not match the name on the URL (${name})`);
    const owned = leafPaths(stripMeta(applied));
    if (!prev) {
      const obj = structuredClone(applied);
      if (rt.namespaced) obj.metadata.namespace = namespace ?? 'default';
      obj.metadata.managedFields = [{ manager, operation: 'Apply', apiVersion, fieldsType: 'FieldsV1', fieldsV1: Object.fromEntries(owned.map((p) => [p, {}])), time: new Date().toISOString() }];
      return json(res, 201, this.#create(rt, obj));
    }
    const mf = (prev.metadata.managedFields ?? []) as Array<{ manager: string; operation: string; fieldsV1: Record<string, unknown> }>;
    const mine = mf.find((m) => m.manager === manager && m.operation === 'Apply');
    let next = structuredClone(prev);
    for (const p of Object.keys(mine?.fieldsV1 ?? {})) if (!owned.includes(p)) deletePath(next, p);
    next = deepMerge(next, stripMeta(applied)) as Obj;
    next.metadata = { ...next.metadata, ...(applied.metadata.labels ? { labels: { ...(next.metadata.labels ?? {}), ...applied.metadata.labels } } : {}), ...(applied.metadata['annotations'] ? { annotations: { ...((next.metadata['annotations'] as object | undefined) ?? {}), ...(applied.metadata['annotations'] as object) } } : {}) };
    next.metadata.managedFields = [...mf.filter((m) => !(m.manager === manager && m.operation === 'Apply')), { manager, operation: 'Apply', apiVersion, fieldsType: 'FieldsV1', fieldsV1: Object.fromEntries(owned.map((p) => [p, {}])), time: new Date().toISOString() }];
    if (subresource === 'status') next = { ...structuredClone(prev), status: next['status'] };
    else next = mergeForUpdate(prev, next, this.#statusKinds.has(rt.kind));
    try {
      if (subresource !== 'status') this.#validate(rt, next);
    } catch (e) {
      if (e instanceof SchemaInvalidError) return invalid(res, rt, name, e);
      throw e;
    }
    const same = JSON.stringify({ ...next, metadata: { ...next.metadata, managedFields: undefined } }) === JSON.stringify({ ...prev, metadata: { ...prev.metadata, managedFields: undefined } });
    if (same) return json(res, 200, prev);
    return json(res, 200, this.#write(rt, next, 'MODIFIED'));
  }

  /** Discovery documents; true when answered. */
  #discovery(path: string, res: ServerResponse): boolean {
    const p = path.replace(/\/$/, '');
    if (p === '/version') {
      json(res, 200, { major: '1', minor: '31', gitVersion: 'v1.31.0-weft-lab', platform: 'linux/amd64' });
      return true;
    }
    if (p === '/api') {
      json(res, 200, { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress: `127.0.0.1:${this.port}` }] });
      return true;
    }
    if (p === '/apis') {
      const groups = new Map<string, Set<string>>();
      for (const r of this.#resources) if (r.group) groups.set(r.group, (groups.get(r.group) ?? new Set()).add(r.version));
      json(res, 200, {
        kind: 'APIGroupList', apiVersion: 'v1',
        groups: [...groups].map(([name, vs]) => {
          const versions = [...vs].map((v) => ({ groupVersion: `${name}/${v}`, version: v }));
          return { name, versions, preferredVersion: versions[0] };
        }),
      });
      return true;
    }
    if (p === '/openapi/v2') {
      // kubectl before 1.27 (Debian's 1.20) validates client-side with the protobuf OpenAPI v2
      // document. This one is honest about what the lab knows: no definitions, so kubectl skips
      // client-side validation of every kind and the server validates custom resources itself.
      // gnostic openapi_v2.Document { swagger = 1: "2.0"; info = 2: { title = 1, version = 2 } }.
      const str = (field: number, v: string) => Buffer.concat([Buffer.from([(field << 3) | 2, Buffer.byteLength(v)]), Buffer.from(v)]);
      const info = Buffer.concat([str(1, 'Kubernetes (weft lab)'), str(2, 'v1.31.0')]);
      const doc = Buffer.concat([str(1, '2.0'), Buffer.from([(2 << 3) | 2, info.length]), info]);
      res.writeHead(200, { 'content-type': 'application/com.github.proto-openapiv2.v2.v1.0+protobuf', 'content-length': doc.length });
      res.end(doc);
      return true;
    }
    if (p === '/openapi/v3') {
      // Only what kubectl asks before it lets the server validate fields (fieldValidation=Strict):
      // per group version, the PATCH operations and their parameters. No schemas.
      const gvs = new Set(this.#resources.map((r) => (r.group ? `apis/${r.group}/${r.version}` : `api/${r.version}`)));
      json(res, 200, { paths: Object.fromEntries([...gvs].map((gv) => [gv, { serverRelativeURL: `/openapi/v3/${gv}?hash=${this.#rv}` }])) });
      return true;
    }
    const oa = /^\/openapi\/v3\/(api\/v1|apis\/[^/]+\/[^/]+)$/.exec(p);
    if (oa) {
      const paths: Record<string, unknown> = {};
      const params = [{ name: 'fieldValidation', in: 'query', schema: { type: 'string' } }, { name: 'fieldManager', in: 'query', schema: { type: 'string' } }, { name: 'dryRun', in: 'query', schema: { type: 'string' } }];
      for (const r of this.#resources) {
        const gv = r.group ? `apis/${r.group}/${r.version}` : `api/${r.version}`;
        if (gv !== oa[1]) continue;
        const gvk = [{ group: r.group, version: r.version, kind: r.kind }];
        const item = `/${gv}${r.namespaced ? '/namespaces/{namespace}' : ''}/${r.plural}/{name}`;
        const coll = `/${gv}${r.namespaced ? '/namespaces/{namespace}' : ''}/${r.plural}`;
        paths[item] = { patch: { parameters: params, 'x-kubernetes-group-version-kind': gvk[0] }, put: { parameters: params, 'x-kubernetes-group-version-kind': gvk[0] } };
        paths[coll] = { post: { parameters: params, 'x-kubernetes-group-version-kind': gvk[0] } };
      }
      json(res, 200, { openapi: '3.0.0', info: { title: 'Kubernetes (weft lab)', version: 'v1.31.0' }, paths, components: { schemas: {} } });
      return true;
    }
    const m = /^\/(?:api\/(v1)|apis\/([^/]+)\/([^/]+))$/.exec(p);
    if (!m) return false;
    const group = m[2] ?? '';
    const version = m[1] ?? m[3]!;
    const rts = this.#resources.filter((r) => r.group === group && r.version === version);
    if (rts.length === 0) return false;
    const verbs = ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'];
    const resources: unknown[] = [];
    for (const r of rts) {
      const shortNames = SHORT_NAMES[r.kind] ?? this.#shortNames.get(r.kind);
      resources.push({ name: r.plural, singularName: r.kind.toLowerCase(), namespaced: r.namespaced, kind: r.kind, verbs, ...(shortNames ? { shortNames } : {}) });
      if (this.#statusKinds.has(r.kind)) resources.push({ name: `${r.plural}/status`, singularName: '', namespaced: r.namespaced, kind: r.kind, verbs: ['get', 'patch', 'update'] });
      if (r.kind === 'ServiceAccount') resources.push({ name: 'serviceaccounts/token', singularName: '', namespaced: true, group: 'authentication.k8s.io', version: 'v1', kind: 'TokenRequest', verbs: ['create'] });
    }
    if (group === 'authentication.k8s.io') resources.push({ name: 'tokenreviews', singularName: 'tokenreview', namespaced: false, kind: 'TokenReview', verbs: ['create'] });
    json(res, 200, { kind: 'APIResourceList', apiVersion: 'v1', groupVersion: group ? `${group}/${version}` : version, resources });
    return true;
  }

  #podProxy(namespace: string, name: string, port: number, path: string, res: ServerResponse, headers: IncomingHttpHeaders = {}): void {
    const pod = this.get('Pod', namespace, name);
    if (!pod) return status(res, 404, 'NotFound', `pods "${name}" not found`);
    const podIP = (pod.status as { podIP?: string } | undefined)?.podIP;
    const target = this.podProxyTarget?.(namespace, name, port) ?? (podIP ? { host: podIP, port } : undefined);
    if (!target) return status(res, 503, 'ServiceUnavailable', `pod ${namespace}/${name} has no IP address`);
    this.#forward(target, path, res, proxiedHeaders(headers));
  }

  #nodeProxy(name: string, path: string, res: ServerResponse): void {
    if (!this.get('Node', undefined, name)) return status(res, 404, 'NotFound', `nodes "${name}" not found`);
    const target = this.nodeProxyTarget?.(name);
    if (!target) return status(res, 503, 'ServiceUnavailable', `no kubelet endpoint for node ${name}`);
    this.#forward(target, path, res);
  }

  #forward(target: ProxyTarget, path: string, res: ServerResponse, headers: Record<string, string> = {}): void {
    const up = httpRequest({ host: target.host, port: target.port, path, method: 'GET', headers, timeout: 5_000, ...(target.connect ? { createConnection: target.connect } : {}) }, (r) => {
      res.writeHead(r.statusCode ?? 502, { 'content-type': r.headers['content-type'] ?? 'text/plain' });
      r.pipe(res);
    });
    up.on('timeout', () => up.destroy(new Error('timed out')));
    up.on('error', (e) => { if (!res.headersSent) status(res, 503, 'ServiceUnavailable', `error trying to reach service: ${e.message}`); else res.destroy(); });
    up.end();
  }

  #route(path: string): { rt: ResourceType; namespace?: string; name?: string; subresource?: string } | undefined {
    const parts = path.split('/').filter(Boolean);
    let group = '';
    let version: string;
    let rest: string[];
    if (parts[0] === 'api') {
      version = parts[1] ?? '';
      rest = parts.slice(2);
    } else if (parts[0] === 'apis') {
      group = parts[1] ?? '';
      version = parts[2] ?? '';
      rest = parts.slice(3);
    } else return undefined;
    let namespace: string | undefined;
    // /namespaces/<ns>/<plural>/... but not /namespaces or /namespaces/<name> themselves
    if (rest[0] === 'namespaces' && rest.length >= 3) {
      namespace = rest[1];
      rest = rest.slice(2);
    }
    const rt = this.#resources.find((r) => r.group === group && r.version === version && r.plural === rest[0]);
    if (!rt) return undefined;
    return { rt, ...(namespace ? { namespace } : {}), ...(rest[1] ? { name: rest[1] } : {}), ...(rest[2] ? { subresource: rest[2] } : {}) };
  }

  #watch(rt: ResourceType, namespace: string | undefined, rvParam: string, selector: (o: Obj) => boolean, bookmarks: boolean, res: ServerResponse): void {
    const from = rvParam === '' || rvParam === '0' ? undefined : Number(rvParam);
    if (from !== undefined && from < this.#compactedRv) {
      const gone = { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: `too old resource version: ${from} (${this.#compactedRv})`, reason: 'Expired', code: 410 };
      if (this.#opts.goneAsHttpStatus) return json(res, 410, gone);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ type: 'ERROR', object: gone }) + '\n');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
    res.flushHeaders();
    const inNs = (o: Obj) => (!namespace || o.metadata.namespace === namespace) && selector(o);
    if (from === undefined) {
      // No resourceVersion: synthetic ADDED for everything, then changes.
      for (const o of this.#bucket(rt).values()) if (inNs(o)) res.write(JSON.stringify({ type: 'ADDED', object: o }) + '\n');
    } else {
      for (const ev of this.#hist(rt)) if (ev.rv > from && inNs(ev.object)) res.write(JSON.stringify({ type: ev.type, object: ev.object }) + '\n');
    }
    const w: Watcher = { rt, res, selector, bookmarks, ...(namespace ? { namespace } : {}) };
    this.#watchers.add(w);
    if (bookmarks) this.#sendBookmark(w);
    res.on('close', () => this.#watchers.delete(w));
  }
}

function and(a: (o: Obj) => boolean, b: (o: Obj) => boolean): (o: Obj) => boolean {
  return (o) => a(o) && b(o);
}

/** Equality-based label selectors: `a=b,c!=d,e` (what client-node informers send). */
function parseSelector(text: string | null): (o: Obj) => boolean {
  if (!text) return () => true;
  const terms = text.split(',').map((t) => t.trim()).filter(Boolean).map((t) => {
    const m = /^([^!=]+)(==|=|!=)?(.*)$/.exec(t)!;
    return { key: m[1]!.trim(), op: m[2], value: m[3]!.trim() };
  });
  return (o) => {
    const labels = (o.metadata.labels ?? {}) as Record<string, string>;
    return terms.every((t) => (t.op === undefined ? t.key in labels : t.op === '!=' ? labels[t.key] !== t.value : labels[t.key] === t.value));
  };
}

/** Field selectors every kind supports: metadata.name and metadata.namespace (what kubectl's waits send). */
function parseFieldSelector(text: string | null): (o: Obj) => boolean {
  if (!text) return () => true;
  const terms = text.split(',').map((t) => /^([^!=]+)(==|=|!=)(.*)$/.exec(t.trim())).filter((m): m is RegExpExecArray => !!m);
  return (o) => terms.every((m) => {
    const field = m[1]!.trim();
    const v = field === 'metadata.name' ? o.metadata.name : field === 'metadata.namespace' ? o.metadata.namespace : field === 'spec.nodeName' ? (o['spec'] as { nodeName?: string } | undefined)?.nodeName : undefined;
    return m[2] === '!=' ? v !== m[3] : v === m[3];
  });
}

function json(res: ServerResponse, code: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/**
 * The request's headers as the API server's pod proxy passes them on: Authorization is gone (the
 * authentication filter drops it once it has authenticated), as are Host and the hop-by-hop ones.
 */
function proxiedHeaders(h: IncomingHttpHeaders): Record<string, string> {
  const dropped = new Set(['authorization', 'host', 'connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'proxy-authorization']);
  return Object.fromEntries(Object.entries(h).filter((e): e is [string, string] => typeof e[1] === 'string' && !dropped.has(e[0])));
}

function status(res: ServerResponse, code: number, reason: string, message: string): void {
  json(res, code, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code });
}

function notFound(res: ServerResponse, rt: ResourceType, name: string): void {
  status(res, 404, 'NotFound', `${rt.plural}${rt.group ? `.${rt.group}` : ''} "${name}" not found`);
}

/** 422 Invalid with one cause per field, as the API server answers (kubectl prints the causes). */
function invalid(res: ServerResponse, rt: ResourceType, name: string, e: SchemaInvalidError): void {
  const causes = e.causes.map((c) => {
    const i = c.indexOf(': ');
    return { reason: 'FieldValueInvalid', field: c.slice(0, i), message: c.slice(i + 2) };
  });
  json(res, 422, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: e.message, reason: 'Invalid', details: { name, group: rt.group, kind: rt.kind, causes }, code: 422 });
}

function conflict(res: ServerResponse, rt: ResourceType, name: string): void {
  status(res, 409, 'Conflict', `Operation cannot be fulfilled on ${rt.plural} "${name}": the object has been modified; please apply your changes to the latest version and try again`);
}

/** Update semantics: identity fields stay, generation moves on spec changes, status per subresource rule. */
function mergeForUpdate(prev: Obj, next: Obj, keepStatus: boolean): Obj {
  const out = structuredClone(next);
  out.apiVersion = prev.apiVersion;
  out.kind = prev.kind;
  out.metadata = { ...out.metadata, uid: prev.metadata.uid, creationTimestamp: prev.metadata.creationTimestamp, generation: prev.metadata.generation };
  if (prev.metadata.namespace !== undefined) out.metadata.namespace = prev.metadata.namespace;
  if (out.metadata.managedFields === undefined && prev.metadata.managedFields !== undefined) out.metadata.managedFields = prev.metadata.managedFields;
  if (keepStatus) {
    if (prev['status'] !== undefined) out['status'] = structuredClone(prev['status']);
    else delete out['status'];
  }
  const strip = (o: Obj) => {
    const { metadata: _m, status: _s, ...rest } = o;
    return JSON.stringify(rest);
  };
  if (strip(prev) !== strip(out)) out.metadata.generation = (prev.metadata.generation ?? 1) + 1;
  return out;
}

/** RFC 7386 JSON merge patch. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) return patch;
  const out: Record<string, unknown> = target !== null && typeof target === 'object' && !Array.isArray(target) ? { ...(target as Record<string, unknown>) } : {};
  for (const [k, v] of Object.entries(patch as Record<string, unknown>)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

interface JsonPatchOp { op: string; path: string; value?: unknown; from?: string }
class JsonPatchError extends Error {}

/** RFC 6902 JSON patch: add, remove, replace, test. */
function jsonPatch(doc: unknown, ops: JsonPatchOp[]): unknown {
  const seg = (p: string) => p.split('/').slice(1).map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
  for (const op of ops) {
    const parts = seg(op.path);
    const last = parts.pop()!;
    let parent = doc as Record<string, unknown> | unknown[];
    for (const p of parts) {
      parent = (parent as Record<string, unknown>)[p] as Record<string, unknown>;
      if (parent === undefined || parent === null) throw new JsonPatchError(`jsonpatch ${op.op} operation does not apply: doc is missing path: ${op.path}`);
    }
    const arr = Array.isArray(parent) ? parent : undefined;
    const idx = arr ? (last === '-' ? arr.length : Number(last)) : -1;
    if (op.op === 'add') arr ? arr.splice(idx, 0, op.value) : ((parent as Record<string, unknown>)[last] = op.value);
    else if (op.op === 'replace') arr ? (arr[idx] = op.value) : ((parent as Record<string, unknown>)[last] = op.value);
    else if (op.op === 'remove') arr ? arr.splice(idx, 1) : delete (parent as Record<string, unknown>)[last];
    else if (op.op === 'test') {
      const v = arr ? arr[idx] : (parent as Record<string, unknown>)[last];
      if (JSON.stringify(v) !== JSON.stringify(op.value)) throw new JsonPatchError(`testing value ${op.path} failed`);
    } else throw new JsonPatchError(`unsupported JSON patch operation ${op.op}`);
  }
  return doc;
}

function stripMeta(o: Obj): Record<string, unknown> {
  const { metadata: _m, apiVersion: _a, kind: _k, ...rest } = o;
  return rest;
}

/** Leaf paths (`spec.template.spec.containers`), lists atomic. */
function leafPaths(o: unknown, prefix = ''): string[] {
  if (o === null || typeof o !== 'object' || Array.isArray(o)) return prefix ? [prefix] : [];
  const out: string[] = [];
  for (const [k, v] of Object.entries(o as Record<string, unknown>)) out.push(...leafPaths(v, prefix ? `${prefix}.${k}` : k));
  return out;
}

function deletePath(o: Record<string, unknown>, path: string): void {
  const parts = path.split('.');
  const last = parts.pop()!;
  let cur: Record<string, unknown> | undefined = o;
  for (const p of parts) cur = cur?.[p] as Record<string, unknown> | undefined;
  if (cur) delete cur[last];
}

function deepMerge(base: unknown, over: unknown): unknown {
  if (over === null || typeof over !== 'object' || Array.isArray(over)) return over;
  const out: Record<string, unknown> = base !== null && typeof base === 'object' && !Array.isArray(base) ? { ...(base as Record<string, unknown>) } : {};
  for (const [k, v] of Object.entries(over as Record<string, unknown>)) out[k] = deepMerge(out[k], v);
  return out;
}
