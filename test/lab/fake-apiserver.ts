// A fake Kubernetes API server, in-process, over plain HTTP on loopback.
//
// No Kubernetes API server can be installed on these machines, so controller tests point
// @kubernetes/client-node at this instead. It speaks the parts of the API protocol the controller
// uses, the way the real server does:
//   - list: GET /api/v1/<plural>, /apis/<group>/<version>/<plural> (all namespaces) and the
//     /namespaces/<ns>/<plural> forms, answering a <Kind>List with metadata.resourceVersion;
//   - watch: the same paths with ?watch=true&resourceVersion=N stream JSON lines {type, object}
//     (ADDED, MODIFIED, DELETED) for every change after N, then live changes; a resourceVersion
//     older than the retained history gets an ERROR event with a 410 Gone Status and the stream
//     closes (the client must relist) — or, with `goneAsHttpStatus`, a plain HTTP 410;
//   - get, create (POST), replace (PUT), merge/strategic-merge patch (PATCH), delete;
//   - the status subresource (…/<name>/status): PUT and PATCH change only `status`, and changes
//     outside /status leave `status` alone, as for CRDs with the status subresource enabled.
// One global resourceVersion counter orders all changes, as etcd does. Tests drive it directly
// (apply, remove, compact, dropWatches) and read back what the controller wrote.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { randomUUID } from 'node:crypto';

export interface ResourceType {
  group: string;
  version: string;
  kind: string;
  plural: string;
  namespaced: boolean;
}

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
  { group: 'weft.dev', version: 'v1alpha1', kind: 'PeerAuthentication', plural: 'peerauthentications', namespaced: true },
  { group: 'weft.dev', version: 'v1alpha1', kind: 'TrafficPolicy', plural: 'trafficpolicies', namespaced: true },
  { group: 'gateway.networking.k8s.io', version: 'v1', kind: 'HTTPRoute', plural: 'httproutes', namespaced: true },
  { group: 'gateway.networking.k8s.io', version: 'v1', kind: 'GRPCRoute', plural: 'grpcroutes', namespaced: true },
];

/** Kinds whose status is only written through /status (CRDs with the subresource, and core kinds). */
const STATUS_SUBRESOURCE = new Set(['Waypoint', 'AuthorizationPolicy', 'PeerAuthentication', 'TrafficPolicy', 'HTTPRoute', 'GRPCRoute', 'Deployment', 'Pod', 'Node']);

type Obj = { apiVersion?: string; kind?: string; metadata: { name: string; namespace?: string; resourceVersion?: string; uid?: string; generation?: number; creationTimestamp?: string; [k: string]: unknown }; [k: string]: unknown };

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
}

export interface FakeApiServerOptions {
  resources?: ResourceType[];
  /** Answer too-old watches with HTTP 410 instead of an ERROR event. */
  goneAsHttpStatus?: boolean;
}

export interface Request {
  method: string;
  path: string;
  body?: unknown;
}

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
  /** Every request served (tests assert on writes). */
  readonly requests: Request[] = [];
  port = 0;

  constructor(options: FakeApiServerOptions = {}) {
    this.#opts = options;
    this.#resources = options.resources ?? DEFAULT_RESOURCES;
    for (const r of this.#resources) {
      this.#store.set(r.plural, new Map());
      this.#history.set(r.plural, []);
    }
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get resourceVersion(): string {
    return String(this.#rv);
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

  // -------------------------------------------------------------------------------------------
  // Test controls

  /** Creates or replaces an object (spec and metadata; keeps the stored status unless given). */
  apply(input: object): Obj {
    const obj = structuredClone(input) as Obj;
    const rt = this.#typeOfObject(obj);
    const key = this.#key(rt, obj.metadata.namespace, obj.metadata.name);
    const prev = this.#store.get(rt.plural)!.get(key);
    return prev ? this.#write(rt, mergeForUpdate(prev, obj, false), 'MODIFIED') : this.#create(rt, obj);
  }

  remove(kind: string, namespace: string | undefined, name: string): boolean {
    const rt = this.#type(kind);
    const key = this.#key(rt, namespace, name);
    const prev = this.#store.get(rt.plural)!.get(key);
    if (!prev) return false;
    this.#store.get(rt.plural)!.delete(key);
    const obj = { ...prev, metadata: { ...prev.metadata, resourceVersion: String(++this.#rv) } };
    this.#emit(rt, { rv: this.#rv, type: 'DELETED', object: obj });
    return true;
  }

  get(kind: string, namespace: string | undefined, name: string): Obj | undefined {
    const rt = this.#type(kind);
    const o = this.#store.get(rt.plural)!.get(this.#key(rt, namespace, name));
    return o ? structuredClone(o) : undefined;
  }

  list(kind: string): Obj[] {
    return [...this.#store.get(this.#type(kind).plural)!.values()].map((o) => structuredClone(o));
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

  // -------------------------------------------------------------------------------------------

  #type(kind: string): ResourceType {
    const rt = this.#resources.find((r) => r.kind === kind);
    if (!rt) throw new Error(`fake API server: unknown kind ${kind}`);
    return rt;
  }

  #typeOfObject(obj: Obj): ResourceType {
    if (!obj.kind || !obj.metadata?.name) throw new Error('fake API server: objects need kind and metadata.name');
    return this.#type(obj.kind);
  }

  #key(rt: ResourceType, namespace: string | undefined, name: string): string {
    return rt.namespaced ? `${namespace ?? 'default'}/${name}` : name;
  }

  #create(rt: ResourceType, obj: Obj): Obj {
    obj.apiVersion = rt.group ? `${rt.group}/${rt.version}` : rt.version;
    obj.kind = rt.kind;
    if (rt.namespaced) obj.metadata.namespace ??= 'default';
    else delete obj.metadata.namespace;
    obj.metadata.uid ??= randomUUID();
    obj.metadata.generation = 1;
    obj.metadata.creationTimestamp ??= new Date().toISOString();
    if (rt.kind === 'Service') {
      // Like the real server: allocate a cluster IP from 10.96.0.0/16 when none is given.
      const spec = ((obj.spec ??= {}) as { clusterIP?: string; type?: string });
      if (!spec.clusterIP && spec.type !== 'ExternalName') {
        const n = ++this.#nextClusterIp;
        spec.clusterIP = `10.96.${(n >> 8) & 255}.${n & 255}`;
      }
    }
    return this.#write(rt, obj, 'ADDED');
  }

  #write(rt: ResourceType, obj: Obj, type: 'ADDED' | 'MODIFIED'): Obj {
    obj.metadata.resourceVersion = String(++this.#rv);
    this.#store.get(rt.plural)!.set(this.#key(rt, obj.metadata.namespace, obj.metadata.name), obj);
    this.#emit(rt, { rv: this.#rv, type, object: structuredClone(obj) });
    return structuredClone(obj);
  }

  #emit(rt: ResourceType, ev: WatchEvent): void {
    this.#history.get(rt.plural)!.push(ev);
    for (const w of this.#watchers) {
      if (w.rt !== rt) continue;
      if (w.namespace && ev.object.metadata.namespace !== w.namespace) continue;
      if (!w.selector(ev.object)) continue;
      w.res.write(JSON.stringify({ type: ev.type, object: ev.object }) + '\n');
    }
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    let body: unknown;
    if (req.method === 'POST' || req.method === 'PUT' || req.method === 'PATCH') {
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c as Buffer);
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8') || 'null');
      } catch {
        return status(res, 400, 'BadRequest', 'request body is not JSON');
      }
    }
    this.requests.push({ method: req.method ?? 'GET', path: url.pathname + url.search, ...(body !== undefined ? { body } : {}) });
    const route = this.#route(url.pathname);
    if (!route) return status(res, 404, 'NotFound', `the server could not find the requested resource ${url.pathname}`);
    const { rt, namespace, name, subresource } = route;
    const store = this.#store.get(rt.plural)!;
    try {
      if (!name) {
        const selector = parseSelector(url.searchParams.get('labelSelector'));
        if (req.method === 'GET' && url.searchParams.get('watch') === 'true') return this.#watch(rt, namespace, url.searchParams.get('resourceVersion') ?? '', selector, res);
        if (req.method === 'GET') {
          const items = [...store.values()].filter((o) => (!namespace || o.metadata.namespace === namespace) && selector(o));
          return json(res, 200, { apiVersion: rt.group ? `${rt.group}/${rt.version}` : rt.version, kind: `${rt.kind}List`, metadata: { resourceVersion: String(this.#rv) }, items });
        }
        if (req.method === 'POST') {
          const obj = body as Obj;
          if (!obj?.metadata?.name) return status(res, 422, 'Invalid', 'metadata.name: Required value');
          if (rt.namespaced) obj.metadata.namespace = namespace ?? obj.metadata.namespace;
          if (store.has(this.#key(rt, obj.metadata.namespace, obj.metadata.name))) return status(res, 409, 'AlreadyExists', `${rt.plural} "${obj.metadata.name}" already exists`);
          return json(res, 201, this.#create(rt, obj));
        }
        return status(res, 405, 'MethodNotAllowed', `${req.method} is not allowed on a collection`);
      }
      const key = this.#key(rt, namespace, name);
      const prev = store.get(key);
      if (req.method === 'GET') return prev ? json(res, 200, prev) : notFound(res, rt, name);
      if (req.method === 'DELETE') {
        if (!prev) return notFound(res, rt, name);
        this.remove(rt.kind, namespace, name);
        return json(res, 200, prev);
      }
      if (!prev) return notFound(res, rt, name);
      let next: Obj;
      if (req.method === 'PUT') {
        const obj = body as Obj;
        const wantRv = obj?.metadata?.resourceVersion;
        if (wantRv && wantRv !== prev.metadata.resourceVersion) return status(res, 409, 'Conflict', `Operation cannot be fulfilled on ${rt.plural} "${name}": the object has been modified; please apply your changes to the latest version and try again`);
        next = subresource === 'status' ? { ...structuredClone(prev), status: obj.status } : mergeForUpdate(prev, obj, STATUS_SUBRESOURCE.has(rt.kind));
      } else if (req.method === 'PATCH') {
        const ct = req.headers['content-type'] ?? '';
        if (!/merge-patch\+json|strategic-merge-patch\+json/.test(ct)) return status(res, 415, 'UnsupportedMediaType', `the fake API server supports merge patches only, not ${ct}`);
        const patched = mergePatch(structuredClone(prev), body) as Obj;
        next = subresource === 'status' ? { ...structuredClone(prev), status: patched.status } : mergeForUpdate(prev, patched, STATUS_SUBRESOURCE.has(rt.kind));
      } else return status(res, 405, 'MethodNotAllowed', `${req.method} is not allowed`);
      if (JSON.stringify(next) === JSON.stringify(prev)) return json(res, 200, prev);
      return json(res, 200, this.#write(rt, next, 'MODIFIED'));
    } catch (e) {
      return status(res, 500, 'InternalError', (e as Error).message);
    }
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

  #watch(rt: ResourceType, namespace: string | undefined, rvParam: string, selector: (o: Obj) => boolean, res: ServerResponse): void {
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
      for (const o of this.#store.get(rt.plural)!.values()) if (inNs(o)) res.write(JSON.stringify({ type: 'ADDED', object: o }) + '\n');
    } else {
      for (const ev of this.#history.get(rt.plural)!) if (ev.rv > from && inNs(ev.object)) res.write(JSON.stringify({ type: ev.type, object: ev.object }) + '\n');
    }
    const w: Watcher = { rt, res, selector, ...(namespace ? { namespace } : {}) };
    this.#watchers.add(w);
    res.on('close', () => this.#watchers.delete(w));
  }
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

function json(res: ServerResponse, code: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function status(res: ServerResponse, code: number, reason: string, message: string): void {
  json(res, code, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code });
}

function notFound(res: ServerResponse, rt: ResourceType, name: string): void {
  status(res, 404, 'NotFound', `${rt.plural} "${name}" not found`);
}

/** Update semantics: identity fields stay, generation moves on spec changes, status per subresource rule. */
function mergeForUpdate(prev: Obj, next: Obj, keepStatus: boolean): Obj {
  const out = structuredClone(next);
  out.apiVersion = prev.apiVersion;
  out.kind = prev.kind;
  out.metadata = { ...out.metadata, uid: prev.metadata.uid, creationTimestamp: prev.metadata.creationTimestamp, generation: prev.metadata.generation };
  if (prev.metadata.namespace !== undefined) out.metadata.namespace = prev.metadata.namespace;
  if (keepStatus) {
    if (prev.status !== undefined) out.status = structuredClone(prev.status);
    else delete out.status;
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
