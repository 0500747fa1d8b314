// The agent's end of the chained CNI plugin (agent/cni/weft-cni.c): a unix socket on which the
// plugin relays each CNI call (the CNI_* variables and the network configuration). ADD enrols the
// pod before the runtime starts its containers, so an ambient pod is protected from its
// application's first packet; if it cannot, the call fails and so does the pod's network setup
// (the kubelet retries). The answer is exactly what the plugin prints: the result (ADD passes
// prevResult through, this plugin changes no interface or address) or a CNI error
// `{ cniVersion, code, msg, details }` (CNI spec 1.1, "Error").
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { chmodSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { isIPv4 } from 'node:net';
import type { Logger } from '../../lib/log.ts';

/** CNI error codes (spec section "Error"); 100 and above are this plugin's own. */
export const CNI_ERROR = {
  incompatibleVersion: 1,
  invalidEnvironment: 4,
  io: 5,
  decode: 6,
  invalidConfig: 7,
  tryAgainLater: 11,
  /** The agent could not enrol the pod into the datapath. */
  enrolmentFailed: 100,
  /** CHECK: an ambient pod is not enrolled (any more). */
  notEnrolled: 101,
} as const;

export class CniError extends Error {
  readonly code = 'WEFT_CNI';
  readonly cniCode: number;
  readonly details: string | undefined;
  constructor(cniCode: number, msg: string, details?: string) {
    super(msg);
    this.name = 'CniError';
    this.cniCode = cniCode;
    this.details = details;
  }
}

/** One pod as a CNI call names it. */
export interface CniPod {
  containerId: string;
  /** The pod's network namespace file (CNI_NETNS). */
  netns: string;
  /** The pod-side interface (CNI_IFNAME). */
  ifname: string;
  namespace: string;
  name: string;
  /** K8S_POD_UID when the runtime passes it. */
  uid: string | undefined;
  /** IPv4 addresses the main plugin gave the pod (prevResult.ips). */
  ips: string[];
}

/** What the agent does for each call. */
export interface CniBackend {
  /** Enrols the pod if the mesh says it is ambient; resolves when it is protected (or not meshed). */
  add(pod: CniPod): Promise<{ enrolled: boolean; mode?: string }>;
  /** Undoes add; succeeds when there is nothing to undo. */
  del(pod: Partial<CniPod> & { netns: string }): Promise<void>;
  /** Fails when an ambient pod is not enrolled. */
  check(pod: CniPod): Promise<void>;
}

/** The plugin's request body. */
interface CniCall {
  command: string;
  containerId: string;
  netns: string;
  ifname: string;
  args: string;
  path: string;
  config: Record<string, unknown>;
}

const MAX_BODY = 1 << 20;

/** `K8S_POD_NAMESPACE=a;K8S_POD_NAME=b` → { K8S_POD_NAMESPACE: 'a', ... }. */
export function parseCniArgs(args: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of args.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0) out[part.slice(0, eq)] = part.slice(eq + 1);
  }
  return out;
}

/** The pod a call names, validated; throws CniError naming the missing or bad field. */
export function podOf(call: CniCall, needNetns: boolean): CniPod {
  const args = parseCniArgs(call.args ?? '');
  const namespace = args['K8S_POD_NAMESPACE'] ?? '';
  const name = args['K8S_POD_NAME'] ?? '';
  if (!namespace || !name) {
    throw new CniError(CNI_ERROR.invalidEnvironment, 'CNI_ARGS must name the pod (K8S_POD_NAMESPACE and K8S_POD_NAME)', `CNI_ARGS=${call.args}`);
  }
  if (needNetns && !call.netns) throw new CniError(CNI_ERROR.invalidEnvironment, 'CNI_NETNS is not set', `pod ${namespace}/${name}`);
  if (needNetns && !call.ifname) throw new CniError(CNI_ERROR.invalidEnvironment, 'CNI_IFNAME is not set', `pod ${namespace}/${name}`);
  const prev = call.config['prevResult'] as { ips?: Array<{ address?: unknown }> } | undefined;
  const ips: string[] = [];
  for (const [i, entry] of (Array.isArray(prev?.ips) ? prev!.ips : []).entries()) {
    const addr = typeof entry?.address === 'string' ? entry.address.split('/')[0]! : '';
    if (!addr) throw new CniError(CNI_ERROR.invalidConfig, `prevResult.ips[${i}].address is not an address in CIDR form`, JSON.stringify(entry));
    if (isIPv4(addr)) ips.push(addr);
  }
  const uid = args['K8S_POD_UID'];
  return { containerId: call.containerId ?? '', netns: call.netns ?? '', ifname: call.ifname ?? '', namespace, name, uid: uid || undefined, ips };
}

export class CniServer {
  readonly #backend: CniBackend;
  readonly #log: Logger;
  readonly #server: Server;
  #path: string | undefined;
  #inode: number | undefined;

  constructor(backend: CniBackend, log: Logger) {
    this.#backend = backend;
    this.#log = log;
    this.#server = createServer((req, res) => { void this.#serve(req, res); });
  }

  /** Listens on a unix socket only root may use (the runtime runs plugins as root). */
  listen(path: string): Promise<void> {
    mkdirSync(dirname(path), { recursive: true });
    // A socket file left by a predecessor (upgrade or crash) would make listen() fail; the
    // newest agent serves the node's CNI calls.
    rmSync(path, { force: true });
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(path, () => {
        this.#server.off('error', reject);
        chmodSync(path, 0o600);
        this.#path = path;
        this.#inode = statSync(path).ino;
        resolve();
      });
    });
  }

  /**
   * Stops serving. Closing a unix listener unlinks its path, so when a successor has bound the
   * path since (an upgrade: both agents run side by side), this one only stops holding the
   * process open and leaves the path to the successor.
   */
  close(): Promise<void> {
    let ours = false;
    try { ours = this.#path !== undefined && statSync(this.#path).ino === this.#inode; } catch { /* gone */ }
    if (!ours && this.#path !== undefined) {
      this.#server.unref();
      return Promise.resolve();
    }
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }

  get path(): string | undefined {
    return this.#path;
  }

  async #serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let cniVersion = '1.0.0';
    const answer = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json', connection: 'close' });
      res.end(JSON.stringify(body) + '\n');
    };
    const error = (err: CniError, call?: CniCall) => {
      this.#log.warn('CNI call failed', { command: call?.command, pod: call ? describe(call) : undefined, code: err.cniCode, error: err.message, details: err.details });
      answer(500, { cniVersion, code: err.cniCode, msg: err.message, ...(err.details ? { details: err.details } : {}) });
    };
    if (req.method !== 'POST' || req.url !== '/v1/cni') {
      error(new CniError(CNI_ERROR.io, `${req.method} ${req.url}: the agent's CNI socket serves POST /v1/cni only`));
      return;
    }
    let call: CniCall;
    try {
      call = await readJson(req) as CniCall;
      if (typeof call !== 'object' || call === null || typeof call.config !== 'object' || call.config === null) {
        throw new CniError(CNI_ERROR.decode, 'the request has no network configuration object');
      }
    } catch (err) {
      error(err instanceof CniError ? err : new CniError(CNI_ERROR.decode, 'the request is not JSON', (err as Error).message));
      return;
    }
    if (typeof call.config['cniVersion'] === 'string') cniVersion = call.config['cniVersion'];
    try {
      switch (call.command) {
        case 'ADD': {
          if (call.config['prevResult'] === undefined) {
            throw new CniError(CNI_ERROR.invalidConfig, 'weft-cni is a chained plugin: list it after the main plugin in a conflist (no prevResult)');
          }
          const pod = podOf(call, true);
          const started = Date.now();
          const r = await this.#backend.add(pod);
          this.#log.info('CNI ADD', { pod: `${pod.namespace}/${pod.name}`, netns: pod.netns, enrolled: r.enrolled, mode: r.mode, ms: Date.now() - started });
          // A chained plugin that changes nothing returns prevResult, in the configuration's version.
          answer(200, { ...(call.config['prevResult'] as object), cniVersion });
          return;
        }
        case 'DEL': {
          const args = parseCniArgs(call.args ?? '');
          await this.#backend.del({
            netns: call.netns ?? '', containerId: call.containerId ?? '',
            ...(args['K8S_POD_NAMESPACE'] ? { namespace: args['K8S_POD_NAMESPACE'] } : {}),
            ...(args['K8S_POD_NAME'] ? { name: args['K8S_POD_NAME'] } : {}),
            ...(args['K8S_POD_UID'] ? { uid: args['K8S_POD_UID'] } : {}),
          });
          this.#log.info('CNI DEL', { pod: describe(call), netns: call.netns });
          res.writeHead(200, { connection: 'close' }).end();
          return;
        }
        case 'CHECK':
          await this.#backend.check(podOf(call, true));
          res.writeHead(200, { connection: 'close' }).end();
          return;
        case 'STATUS':
        case 'GC':
          // Ready once this socket answers; enrolments of deleted pods are pruned from the config.
          res.writeHead(200, { connection: 'close' }).end();
          return;
        default:
          throw new CniError(CNI_ERROR.invalidEnvironment, `CNI_COMMAND ${JSON.stringify(call.command)} is not one of ADD, DEL, CHECK, STATUS, GC`);
      }
    } catch (err) {
      error(err instanceof CniError ? err : new CniError(CNI_ERROR.enrolmentFailed, (err as Error).message), call);
    }
  }
}

function describe(call: CniCall): string {
  const a = parseCniArgs(call.args ?? '');
  return `${a['K8S_POD_NAMESPACE'] ?? '?'}/${a['K8S_POD_NAME'] ?? '?'}`;
}

function readJson(req: IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new CniError(CNI_ERROR.decode, `request larger than ${MAX_BODY} bytes`));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.once('end', () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch (err) {
        reject(err);
      }
    });
    req.once('error', reject);
  });
}
