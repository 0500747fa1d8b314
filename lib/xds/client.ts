// Config stream client for agents and waypoints. Keeps one DeltaConfig stream to the controller,
// reconnecting with exponential backoff and jitter; on every (re)connect it tells the server which
// resource versions it holds, so it receives only the difference and then a consistent snapshot.
// Every complete update is checked by the caller's `validate` hook: accepted → applied, emitted
// and ACKed; rejected → NACKed with the reason, and the last good config stays.
// Snapshots share the arrays of types an update did not touch with the previous snapshot:
// treat them as immutable.
import { EventEmitter } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import type { AgentConfig, WaypointConfig } from '../model/mesh.ts';
import { backoffDelay, type BackoffOptions } from '../backoff.ts';
import {
  CLIENT_TYPES,
  TYPE_URLS,
  configStreamClientConstructor,
  resourceTypeOf,
  type ClientKind,
  type ConfigStreamClientCall,
  type DeltaConfigRequest,
  type DeltaConfigResponse,
  type ResourceType,
} from './protocol.ts';

export type { ClientKind };
export type SnapshotOf<K extends ClientKind> = K extends 'agent' ? AgentConfig : WaypointConfig;

/** The controller sent something that is not a valid config stream response. */
export class ConfigStreamProtocolError extends Error {
  readonly code = 'WEFT_XDS_PROTOCOL';
  constructor(message: string) {
    super(message);
    this.name = 'ConfigStreamProtocolError';
  }
}

/** The caller's validate hook rejected an update; the client NACKed it. */
export class ConfigRejectedError extends Error {
  readonly code = 'WEFT_XDS_REJECTED';
  readonly version: string;
  constructor(version: string, reason: string) {
    super(`config version ${version} rejected: ${reason}; keeping the previous config`);
    this.name = 'ConfigRejectedError';
    this.version = version;
  }
}


export interface ConfigClientOptions<K extends ClientKind> {
  /** `host:port` of the controller (port 15012). */
  target: string;
  credentials: grpc.ChannelCredentials;
  channelOptions?: grpc.ChannelOptions;
  kind: K;
  /** Agents: the node name. Waypoints: the instance (pod) name. */
  id: string;
  /** Waypoints: the namespace they serve. */
  namespace?: string;
  userAgent?: string;
  /** Throw (or reject) to refuse an update; the message goes back to the controller as the NACK reason. */
  validate?: (config: SnapshotOf<K>, version: string) => void | Promise<void>;
  backoff?: BackoffOptions;
}

interface ClientEvents<K extends ClientKind> {
  /** A new config was accepted (not emitted again for a version that changes nothing). */
  snapshot: [config: SnapshotOf<K>, version: string];
  /** An update was rejected by `validate` (and NACKed). */
  rejected: [error: ConfigRejectedError];
  /** A stream was opened (its requests sent); the controller has not answered yet. */
  connected: [];
  /** The controller answered on the stream opened last (connected is true from now on). */
  answered: [];
  disconnected: [error: Error | undefined];
  /** Protocol problems (only emitted when someone listens); the stream is restarted. */
  error: [error: Error];
}

export type Stored = Map<string, { version: string; body: unknown }>;
/** Changes of a batch not yet applied, by name: the new resource, or null for a removal. */
export type Overlay = Map<string, { version: string; body: unknown } | null>;

/**
 * Largest config stream message taken (grpc.max_receive_message_length). The controller sends all
 * of a type's changes in one response (a first sync: every Service of the view), and grpc-js
 * refuses a message past 4 MiB by default (RESOURCE_EXHAUSTED, gRPC A70): a Service of 12,000 pods,
 * or one tenant's Service of 40,000 ports, ended the stream at that response on every agent and
 * waypoint, at each reconnect, so no one's config got through. The controller is the peer, checked
 * by TLS; this bounds what a broken one can make a client buffer.
 */
export const MAX_CONFIG_MESSAGE_BYTES = 256 * 1024 * 1024;

export class ConfigClient<K extends ClientKind> extends EventEmitter<ClientEvents<K>> {
  readonly #o: ConfigClientOptions<K>;
  readonly #types: readonly ResourceType[];
  #client: grpc.Client | undefined;
  #call: ConfigStreamClientCall | undefined;
  #closed = true;
  #attempt = 0;
  #timer: NodeJS.Timeout | undefined;
  #applied = new Map<ResourceType, Stored>();
  #appliedVersion = '';
  #snapshot: SnapshotOf<K> | undefined;
  /**
   * The batch being received: per type, its changes over `#applied` (an overlay, so that a small
   * update to a large config costs what it changes, not a copy of every map).
   */
  #pending: Map<ResourceType, Overlay> | undefined;
  #pendingVersion = '';
  #pendingTypes = new Set<ResourceType>();
  #pendingNonces: Array<{ type: ResourceType; nonce: string }> = [];
  /** The pending batch changes something (else it is ACKed without validating or emitting). */
  #pendingChanged = false;
  /** Per-type value arrays of the last accepted config, reused for types a batch left alone. */
  #arrays = new Map<ResourceType, unknown[]>();
  #queue: Promise<void> = Promise.resolve();
  #generation = 0;
  /** The current stream has had a response from the controller and has not ended. */
  #streamUp = false;

  constructor(options: ConfigClientOptions<K>) {
    super();
    if (options.kind === 'waypoint' && !options.namespace) throw new TypeError('ConfigClient: a waypoint client needs options.namespace');
    this.#o = options;
    this.#types = CLIENT_TYPES[options.kind];
    for (const t of this.#types) this.#applied.set(t, new Map());
  }

  /** The last accepted config, if any. */
  get snapshot(): SnapshotOf<K> | undefined {
    return this.#snapshot;
  }

  /** True while a stream is open and the controller has answered on it; false while reconnecting. */
  get connected(): boolean {
    return this.#streamUp;
  }

  /** System version of the last accepted config ('' before the first). */
  get version(): string {
    return this.#appliedVersion;
  }

  start(): void {
    if (!this.#closed) return;
    this.#closed = false;
    const Ctor = configStreamClientConstructor();
    this.#client = new Ctor(this.#o.target, this.#o.credentials, {
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      'grpc.max_receive_message_length': MAX_CONFIG_MESSAGE_BYTES,
      ...this.#o.channelOptions,
    });
    this.#connect();
  }

  /** Resolves with the first accepted config (or immediately if there is one). */
  ready(): Promise<SnapshotOf<K>> {
    if (this.#snapshot) return Promise.resolve(this.#snapshot);
    return new Promise((resolve) => this.once('snapshot', (c) => resolve(c)));
  }

  close(): void {
    this.#closed = true;
    this.#streamUp = false;
    clearTimeout(this.#timer);
    this.#generation++;
    this.#call?.cancel();
    this.#call = undefined;
    this.#client?.close();
    this.#client = undefined;
  }

  #connect(): void {
    if (this.#closed || !this.#client) return;
    const gen = ++this.#generation;
    const call = this.#client.makeBidiStreamRequest(
      '/weft.xds.v1.ConfigStream/DeltaConfig',
      (req: DeltaConfigRequest) => serialize(req),
      (buf: Buffer) => deserialize(buf),
    ) as ConfigStreamClientCall;
    this.#call = call;
    this.#pending = undefined;
    this.#pendingTypes.clear();
    this.#pendingNonces = [];
    this.#pendingChanged = false;
    let gotResponse = false;
    let ended = false;
    const onEnd = (err?: Error) => {
      if (ended || gen !== this.#generation) return;
      ended = true;
      this.#call = undefined;
      this.#streamUp = false;
      this.emit('disconnected', err);
      if (this.#closed) return;
      const delay = backoffDelay(this.#attempt++, this.#o.backoff);
      this.#timer = setTimeout(() => this.#connect(), delay);
    };
    call.on('data', (res: DeltaConfigResponse) => {
      if (gen !== this.#generation) return;
      if (!gotResponse) {
        gotResponse = true;
        this.#streamUp = true;
        this.emit('answered');
      }
      this.#queue = this.#queue.then(() => this.#onResponse(gen, res)).catch((e: Error) => {
        // 'error' without a listener would throw; the stream restart is the recovery either way.
        if (this.listenerCount('error') > 0) this.emit('error', e);
        call.cancel();
      });
    });
    call.on('error', (e) => onEnd(e));
    call.on('end', () => onEnd());
    call.on('status', (s) => {
      if (s.code !== grpc.status.OK) onEnd(new Error(`config stream ended: ${grpc.status[s.code]} ${s.details}`));
    });
    this.emit('connected');
    const node = { id: this.#o.id, kind: this.#o.kind, namespace: this.#o.namespace ?? '', user_agent: this.#o.userAgent ?? 'weft' };
    for (const type of this.#types) {
      const initial: Record<string, string> = {};
      for (const [n, r] of this.#applied.get(type)!) initial[n] = r.version;
      call.write({
        node,
        type_url: TYPE_URLS[type],
        resource_names_subscribe: ['*'],
        resource_names_unsubscribe: [],
        initial_resource_versions: initial,
        response_nonce: '',
      });
    }
  }

  async #onResponse(gen: number, res: DeltaConfigResponse): Promise<void> {
    if (gen !== this.#generation) return;
    const type = resourceTypeOf(res.type_url);
    if (!type || !this.#types.includes(type)) throw new ConfigStreamProtocolError(`unexpected type_url "${res.type_url}"`);
    this.#pending ??= new Map();
    if (res.system_version_info !== this.#pendingVersion) {
      this.#pendingVersion = res.system_version_info;
      this.#pendingTypes.clear();
    }
    let store = this.#pending.get(type);
    if (!store && (res.resources.length > 0 || res.removed_resources.length > 0)) this.#pending.set(type, (store = new Map()));
    if (res.resources.length > 0 || res.removed_resources.length > 0) this.#pendingChanged = true;
    for (const r of res.resources) {
      let body: unknown;
      try {
        body = JSON.parse(r.body);
      } catch (e) {
        throw new ConfigStreamProtocolError(`resource ${r.name} of ${res.type_url} is not JSON: ${(e as Error).message}`);
      }
      store!.set(r.name, { version: r.version, body });
    }
    for (const n of res.removed_resources) store!.set(n, null);
    this.#pendingTypes.add(type);
    this.#pendingNonces.push({ type, nonce: res.nonce });
    if (!this.#types.every((t) => this.#pendingTypes.has(t))) return;
    // A whole version arrived: the stream works, and a later end reconnects at the initial delay.
    // Not at its first response: a stream that fails partway through every version (a response
    // the client cannot take) was reconnected at the initial delay for ever, each time pulling
    // the whole config from the controller again (gRPC connection backoff grows until a success).
    this.#attempt = 0;

    // A complete, consistent version: check it, then apply or refuse it.
    const version = this.#pendingVersion;
    const pending = this.#pending;
    const nonces = this.#pendingNonces;
    const changed = this.#pendingChanged || this.#snapshot === undefined;
    this.#pending = undefined;
    this.#pendingNonces = [];
    this.#pendingTypes.clear();
    this.#pendingChanged = false;
    const arrays = changed ? this.#arraysWith(pending) : this.#arrays;
    const config = changed ? this.#build(arrays) : this.#snapshot!;
    let error: string | undefined;
    if (changed) {
      try {
        await this.#o.validate?.(config, version);
      } catch (e) {
        error = e instanceof Error ? e.message : String(e);
      }
    }
    if (gen !== this.#generation) return;
    const call = this.#call;
    if (!changed) {
      // Same content under a new version (a reconnect, or a change that did not touch this client).
      this.#appliedVersion = version;
    } else if (error === undefined) {
      for (const [t, overlay] of pending) {
        const stored = this.#applied.get(t)!;
        for (const [n, r] of overlay) {
          if (r) stored.set(n, r);
          else stored.delete(n);
        }
      }
      this.#arrays = arrays;
      this.#appliedVersion = version;
      this.#snapshot = config;
      this.emit('snapshot', config, version);
    } else {
      this.emit('rejected', new ConfigRejectedError(version, error));
    }
    for (const { type: t, nonce } of nonces) {
      call?.write({
        type_url: TYPE_URLS[t],
        resource_names_subscribe: [],
        resource_names_unsubscribe: [],
        initial_resource_versions: {},
        response_nonce: nonce,
        ...(error !== undefined ? { error_detail: { code: grpc.status.INVALID_ARGUMENT, message: error } } : {}),
      });
    }
  }

  /** The value arrays of the applied config with `pending` on top; types it does not touch keep their array. */
  #arraysWith(pending: Map<ResourceType, Overlay>): Map<ResourceType, unknown[]> {
    const out = new Map<ResourceType, unknown[]>();
    for (const t of this.#types) {
      const stored = this.#applied.get(t)!;
      const overlay = pending.get(t);
      const cached = this.#arrays.get(t);
      if (!overlay && cached) {
        out.set(t, cached);
        continue;
      }
      const patched = overlay && cached ? patchValues(cached, stored, overlay) : undefined;
      if (patched) {
        out.set(t, patched);
        continue;
      }
      const values: unknown[] = [];
      for (const [n, r] of stored) {
        const o = overlay?.get(n);
        if (o === undefined) values.push(r.body);
        else if (o) values.push(o.body);
      }
      if (overlay) for (const [n, o] of overlay) if (o && !stored.has(n)) values.push(o.body);
      out.set(t, values);
    }
    return out;
  }

  #build(lists: Map<ResourceType, unknown[]>): SnapshotOf<K> {
    const l = <T>(t: ResourceType) => (lists.get(t) ?? []) as T[];
    const config = this.#o.kind === 'agent'
      ? { node: this.#o.id, workloads: l('Workload'), services: l('Service'), policies: l('AuthorizationPolicy'), peerAuthentications: l('PeerAuthentication'), waypoints: l('Waypoint'), trafficPolicies: l('TrafficPolicy') }
      : { namespace: this.#o.namespace!, services: l('Service'), routes: l('Route'), trafficPolicies: l('TrafficPolicy'), policies: l('AuthorizationPolicy'), requestAuthentications: l('RequestAuthentication'), waypoints: l('Waypoint'), addressOwners: l('AddressOwner') };
    return config as SnapshotOf<K>;
  }
}

/** Overlays up to this size patch a copy of the previous array; larger ones rebuild it from the maps. */
const PATCH_LIMIT = 16;

/**
 * The previous values array with a small overlay applied, in the order a rebuild would give
 * (stored order, replacements in place, additions at the end): a copy of the array and one
 * search per changed name, instead of a pass over every stored resource. A small change to a large
 * config (one pod of 10,000) then costs the copy, not a walk of the map. Undefined when the overlay
 * is too large or the array does not hold what `stored` says (then the caller rebuilds).
 */
export function patchValues(cached: readonly unknown[], stored: Stored, overlay: Overlay): unknown[] | undefined {
  if (overlay.size > PATCH_LIMIT) return undefined;
  const values = cached.slice();
  const removals: number[] = [];
  for (const [n, o] of overlay) {
    const old = stored.get(n);
    if (!old) {
      if (o) values.push(o.body);
      continue;
    }
    // Each body is its own parsed object, so its identity finds its place.
    const at = values.indexOf(old.body);
    if (at < 0) return undefined;
    if (o) values[at] = o.body;
    else removals.push(at);
  }
  for (const at of removals.sort((a, b) => b - a)) values.splice(at, 1);
  return values;
}

// Messages are encoded with the proto-loader definitions (one load, cached).
let codec: { req: grpc.MethodDefinition<DeltaConfigRequest, DeltaConfigResponse> } | undefined;
function method(): grpc.MethodDefinition<DeltaConfigRequest, DeltaConfigResponse> {
  if (!codec) {
    const def = configStreamClientConstructor().service as unknown as Record<string, grpc.MethodDefinition<DeltaConfigRequest, DeltaConfigResponse>>;
    codec = { req: def.DeltaConfig! };
  }
  return codec.req;
}
function serialize(req: DeltaConfigRequest): Buffer {
  return method().requestSerialize(req);
}
function deserialize(buf: Buffer): DeltaConfigResponse {
  return method().responseDeserialize(buf);
}

/** Creates and starts a client for one node's agent. */
export function agentConfigClient(options: Omit<ConfigClientOptions<'agent'>, 'kind'>): ConfigClient<'agent'> {
  const c = new ConfigClient<'agent'>({ ...options, kind: 'agent' });
  c.start();
  return c;
}

/** Creates and starts a client for one namespace's waypoint. */
export function waypointConfigClient(options: Omit<ConfigClientOptions<'waypoint'>, 'kind'> & { namespace: string }): ConfigClient<'waypoint'> {
  const c = new ConfigClient<'waypoint'>({ ...options, kind: 'waypoint' });
  c.start();
  return c;
}
