// weftctl's way to a cluster: a kubeconfig (--kubeconfig, $KUBECONFIG or ~/.kube/config, and
// --context), and plain GETs against the API server with the credentials it names (client
// certificates, bearer tokens, exec plugins: @kubernetes/client-node applies them). Lists of the
// kinds the mesh reads, and the API server's pod proxy to reach a component's HTTP port.
import http from 'node:http';
import https from 'node:https';
import type { KubeConfig } from '@kubernetes/client-node';
import { KINDS, groupOf, groupsOf, type KindInfo, type MeshKind } from '../lib/model/objects.ts';
import { readLines } from './http-lines.ts';

/** How long one API request may take. */
export const KUBE_REQUEST_TIMEOUT_MS = 10_000;
/** Largest response read from the API server. */
export const KUBE_MAX_RESPONSE_BYTES = 64 * 1024 * 1024;

/** Field manager of weftctl's server-side applies. */
export const FIELD_MANAGER = 'weftctl';

export class KubeApiError extends Error {
  readonly code = 'WEFT_KUBE_API';
  readonly status: number;
  /** The server's own words (its Status message, or the body), without the request. */
  readonly detail: string;
  constructor(path: string, status: number, message: string, method = 'GET') {
    super(`${method} ${path}: ${status ? `${status} ` : ''}${message}`);
    this.name = 'KubeApiError';
    this.status = status;
    this.detail = message;
  }
}

export class KubeConfigError extends Error {
  readonly code = 'WEFT_KUBECONFIG';
  constructor(message: string) {
    super(message);
    this.name = 'KubeConfigError';
  }
}

export interface KubeFlags {
  kubeconfig?: string;
  context?: string;
}

/**
 * @kubernetes/client-node, loaded on first use and not when weftctl starts: it is 870 modules and
 * 0.6 s of every command's start, and the local mesh's commands never need it. weftctl's modules
 * import only its types statically, and its classes through this.
 */
export function clientNode(): Promise<typeof import('@kubernetes/client-node')> {
  return import('@kubernetes/client-node');
}

/** The kubeconfig the flags (or the environment) name; KubeConfigError when there is none usable. */
export async function loadKubeConfig(f: KubeFlags): Promise<KubeConfig> {
  const kc = new (await clientNode()).KubeConfig();
  try {
    if (f.kubeconfig) kc.loadFromFile(f.kubeconfig);
    else kc.loadFromDefault();
  } catch (e) {
    throw new KubeConfigError(`cannot read kubeconfig ${f.kubeconfig ?? process.env.KUBECONFIG ?? '~/.kube/config'}: ${(e as Error).message.split('\n')[0]}`);
  }
  if (f.context) {
    if (!kc.getContextObject(f.context)) throw new KubeConfigError(`no context "${f.context}" in the kubeconfig (contexts: ${kc.getContexts().map((c) => c.name).join(', ') || 'none'})`);
    kc.setCurrentContext(f.context);
  }
  if (!kc.getCurrentCluster()) throw new KubeConfigError('the kubeconfig names no cluster for its current context');
  return kc;
}

export class KubeClient {
  readonly kc: KubeConfig;
  readonly server: URL;

  constructor(kc: KubeConfig) {
    this.kc = kc;
    this.server = new URL(kc.getCurrentCluster()!.server);
  }

  /** The namespace of the current context (kubectl's default), or `default`. */
  get contextNamespace(): string {
    return this.kc.getContextObject(this.kc.getCurrentContext())?.namespace ?? 'default';
  }

  async getText(path: string, headers?: Record<string, string>): Promise<string> {
    return this.send('GET', path, undefined, undefined, headers);
  }

  /**
   * One API request; resolves with the answer's body for a 2xx status, rejects with KubeApiError
   * (the Status message) otherwise. `body` is sent with `contentType` (default JSON).
   */
  async send(method: string, path: string, body?: string, contentType = 'application/json', headers: Record<string, string> = {}): Promise<string> {
    const url = new URL(this.server.pathname.replace(/\/$/, '') + path, this.server);
    const opts: https.RequestOptions = { method, headers: { ...headers, accept: 'application/json', ...(body !== undefined ? { 'content-type': contentType } : {}) }, timeout: KUBE_REQUEST_TIMEOUT_MS };
    await this.kc.applyToHTTPSOptions(opts);
    const lib = url.protocol === 'https:' ? https : http;
    return new Promise((resolve, reject) => {
      const req = lib.request(url, opts, (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > KUBE_MAX_RESPONSE_BYTES) req.destroy(new KubeApiError(path, 0, `response larger than ${KUBE_MAX_RESPONSE_BYTES} bytes`, method));
          else chunks.push(c);
        });
        res.on('end', () => {
          const body = Buffer.concat(chunks).toString('utf8');
          if (res.statusCode !== undefined && res.statusCode >= 200 && res.statusCode < 300) return resolve(body);
          let message = body.trim().slice(0, 300);
          try {
            message = (JSON.parse(body) as { message?: string }).message ?? message;
          } catch {
            /* not a Status */
          }
          reject(new KubeApiError(path, res.statusCode ?? 0, message, method));
        });
        res.on('error', reject);
      });
      req.on('timeout', () => req.destroy(new KubeApiError(path, 0, `no answer from ${this.server.origin} within ${KUBE_REQUEST_TIMEOUT_MS} ms`, method)));
      req.on('error', (e) => reject(e instanceof KubeApiError ? e : new KubeApiError(path, 0, `cannot reach the API server ${this.server.origin}: ${e.message}`, method)));
      req.end(body);
    });
  }

  /**
   * Streams a newline-delimited answer (a component's /flows through the pod proxy): `onLine` gets
   * each line; resolves when the stream ends or `signal` aborts, rejects on another status than 200.
   */
  async streamLines(path: string, onLine: (line: string) => void, signal: AbortSignal, headers: Record<string, string> = {}): Promise<void> {
    const url = new URL(this.server.pathname.replace(/\/$/, '') + path, this.server);
    const opts: https.RequestOptions = { method: 'GET', headers: { ...headers, accept: 'application/json' }, signal };
    await this.kc.applyToHTTPSOptions(opts);
    const lib = url.protocol === 'https:' ? https : http;
    return new Promise((resolve, reject) => {
      const req = lib.request(url, opts, (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          reject(new KubeApiError(path, res.statusCode ?? 0, 'the stream was refused'));
          return;
        }
        readLines(res, onLine, signal).then(resolve, reject);
      });
      req.on('error', (e) => (signal.aborted ? resolve() : reject(new KubeApiError(path, 0, `cannot reach the API server ${this.server.origin}: ${e.message}`))));
      req.end();
    });
  }

  /** Server-side apply of `object` at its API path, field manager weftctl. */
  async serverSideApply(path: string, object: unknown): Promise<void> {
    await this.send('PATCH', `${path}?fieldManager=${FIELD_MANAGER}`, JSON.stringify(object), 'application/apply-patch+yaml');
  }

  async get<T>(path: string, headers?: Record<string, string>): Promise<T> {
    const text = await this.getText(path, headers);
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new KubeApiError(path, 200, 'the answer is not JSON');
    }
  }

  /** Items of a collection; `namespace` undefined lists every namespace. A kind the server does not serve (404) lists empty. */
  async list<T = Record<string, unknown>>(apiVersion: string, plural: string, namespace?: string, opts: { labelSelector?: string; missingOk?: boolean } = {}): Promise<T[]> {
    const base = apiVersion.includes('/') ? `/apis/${apiVersion}` : `/api/${apiVersion}`;
    const qs = opts.labelSelector ? `?labelSelector=${encodeURIComponent(opts.labelSelector)}` : '';
    const path = `${base}${namespace ? `/namespaces/${encodeURIComponent(namespace)}` : ''}/${plural}${qs}`;
    try {
      const list = await this.get<{ kind?: string; items?: T[] }>(path);
      const kind = (list.kind ?? '').replace(/List$/, '');
      // A List's items carry no apiVersion/kind on the wire; give them back.
      return (list.items ?? []).map((i) => ({ apiVersion, ...(kind ? { kind } : {}), ...(i as object) }) as T);
    } catch (e) {
      if (opts.missingOk !== false && e instanceof KubeApiError && e.status === 404) return [];
      throw e;
    }
  }

  /**
   * Every object of the mesh's kinds (and `extra` kinds), in one namespace or all, listed at once.
   * A kind's other API group (Istio's security.istio.io) is skipped, as the controller skips it,
   * when not served (404) or not readable by this user (403): `warn` says which, for a 403.
   */
  async meshObjects(namespace?: string, extra: Array<{ apiVersion: string; plural: string; namespaced: boolean }> = [], warn: (note: string) => void = (note) => process.stderr.write(`weftctl: ${note}\n`)): Promise<Array<Record<string, unknown>>> {
    const kinds = [
      ...(Object.keys(KINDS) as MeshKind[]).map((k) => KINDS[k]).filter((k) => k.kind !== 'Node'),
      ...extra,
    ];
    const lists = await Promise.all([
      ...kinds.map((k) => this.list(k.apiVersion, k.plural, k.namespaced ? namespace : undefined)),
      ...Object.values(KINDS).map((k) => this.#inOtherGroup(k, namespace, warn)),
    ]);
    return lists.flat();
  }

  /**
   * A kind's objects in the other API group the controller reads it in (Istio's security.istio.io),
   * in the newest version the server serves; none when Istio's CRDs are not installed, or when this
   * user may not read them (said through `warn`).
   */
  async #inOtherGroup(k: KindInfo, namespace: string | undefined, warn: (note: string) => void): Promise<Array<Record<string, unknown>>> {
    const others = groupsOf(k.kind).slice(1);
    for (const apiVersion of k.apiVersions.filter((v) => others.includes(groupOf(v)))) {
      try {
        return await this.list(apiVersion, k.plural, k.namespaced ? namespace : undefined, { missingOk: false });
      } catch (e) {
        if (e instanceof KubeApiError && e.status === 403) {
          warn(`${k.plural}.${groupOf(apiVersion)} skipped: you may not list them (403); the controller may enforce objects not shown here`);
          return [];
        }
        if (!(e instanceof KubeApiError && e.status === 404)) throw e;
      }
    }
    return [];
  }

  /** GET through the API server's pod proxy: `/api/v1/namespaces/<ns>/pods/<pod>:<port>/proxy<path>`. */
  podProxyPath(namespace: string, pod: string, port: number, path: string): string {
    return `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(pod)}:${port}/proxy${path}`;
  }
}
