// The config stream server (proto/weft/xds.proto): delta-xDS-style pushes of the compiled model
// to agents and waypoints. publish() takes a new model; every connected client whose view changed
// gets one response per subscribed type, all at the same system version, and ACKs or NACKs each.
import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { MeshModel } from '../../../lib/model/mesh.ts';
import {
  CLIENT_TYPES,
  LEGACY_CLIENT_TYPES,
  TYPE_URLS,
  configStreamServiceDefinition,
  resourceTypeOf,
  type ClientKind,
  type ConfigStreamCall,
  type DeltaConfigRequest,
  type DeltaConfigResponse,
  type ResourceType,
} from '../../../lib/xds/protocol.ts';
import { silentLogger, type Logger } from '../log.ts';
import { LogBudget, clip, REFUSAL_LOG_PER_SECOND } from '../../../lib/log.ts';
import type { StreamAuthorizer } from './authz.ts';
import { AddressOwnerTable } from './address-owners.ts';
import { EncodedResponse, responseSerializer } from './wire.ts';
import { HeldVersions, SharedBases } from './held-versions.ts';
import { deltaOf } from '../model-delta.ts';
import {
  AGENT_TYPES_FOLLOWING_LOCAL_WORKLOADS,
  WAYPOINT_TYPES_FOLLOWING_BINDINGS,
  WAYPOINT_VIEW_DEPENDS_ON,
  reboundWaypointNamespaces,
  agentHolds,
  agentView,
  buildIndex,
  remoteWorkload,
  sentWhole,
  modelResources,
  waypointHolds,
  waypointView,
  type Published,
  type PublishedSet,
  type ModelResourceType,
  type ViewIndex,
} from './views.ts';

/** A client's request was malformed (missing node id, unknown kind, unknown type URL). */
export class ConfigStreamRequestError extends Error {
  readonly code: string = 'WEFT_XDS_BAD_REQUEST';
  readonly grpcCode: grpc.status = grpc.status.INVALID_ARGUMENT;
  constructor(message: string) {
    super(message);
    this.name = 'ConfigStreamRequestError';
  }
}

/** The client's identity may not read the config it asked for. */
export class ConfigStreamDeniedError extends ConfigStreamRequestError {
  override readonly code = 'WEFT_XDS_DENIED';
  override readonly grpcCode = grpc.status.PERMISSION_DENIED;
  constructor(message: string) {
    super(message);
    this.name = 'ConfigStreamDeniedError';
  }
}

/** A client subscribed to more resource names than any view could hold (RFC 9113 10.5: bound what a peer can commit). */
export class ConfigStreamExhaustedError extends ConfigStreamRequestError {
  override readonly code = 'WEFT_XDS_RESOURCE_EXHAUSTED';
  override readonly grpcCode = grpc.status.RESOURCE_EXHAUSTED;
  constructor(message: string) {
    super(message);
    this.name = 'ConfigStreamExhaustedError';
  }
}

/** Names a stream may subscribe to per type: at least this, or as many as are published of the type. */
export const MIN_SUBSCRIBED_NAMES_LIMIT = 10_000;

/**
 * Why a config stream was refused: the `reason` label of weft_xds_streams_refused_total and of
 * the 'config stream refused' log line (stable strings).
 */
export type StreamRefusal = 'denied' | 'resource_exhausted' | 'bad_request' | 'internal';

function refusalOf(err: Error): StreamRefusal {
  if (err instanceof ConfigStreamDeniedError) return 'denied';
  if (err instanceof ConfigStreamExhaustedError) return 'resource_exhausted';
  if (err instanceof ConfigStreamRequestError) return 'bad_request';
  return 'internal';
}

const ALL_TYPES = Object.keys(TYPE_URLS) as ResourceType[];
/** The types published straight from the model; the others are derived from it (AddressOwner). */
const MODEL_TYPES = ALL_TYPES.filter((t): t is ModelResourceType => t !== 'AddressOwner');

/** Bytes of pushed, not yet acknowledged config across all clients before further pushes wait. */
export const DEFAULT_MAX_UNACKED_BYTES = 32 * 1024 * 1024;
/** A response unacknowledged for this long stops counting against the budget (a stuck client must not stall everyone). */
export const UNACKED_TIMEOUT_MS = 10_000;
export interface ConfigServerOptions {
  /** Flow control: default DEFAULT_MAX_UNACKED_BYTES. Big pushes (initial syncs) wait for ACKs; small deltas rarely do. */
  maxUnackedBytes?: number;
  logger?: Logger;
  /** Checks the client's TLS identity against the node it claims; default: everyone is allowed. */
  authorize?: StreamAuthorizer;
  /** Registers weft_xds_* metrics when given. */
  registry?: Registry;
}

interface Pending {
  type: ResourceType;
  systemVersion: string;
  /** Body bytes sent and not yet acknowledged (flow control). */
  bytes: number;
  sentAt: number;
  /**
   * The names of the resources it carries (a NACK undoes them). Names and entries are parallel
   * arrays, not [name, entry] pairs: an initial sync's 10,000 pairs per client were 0.7 MB each,
   * held until the client acknowledged.
   */
  upserts: readonly string[];
  /** Their versions (a NACK applies the other pending responses again). */
  versions: readonly string[];
  removed: string[];
  /**
   * The versions `sent` held before this response for the names it replaced or removed (a name it
   * added had none): a NACK undoes pending responses from these, instead of every client keeping a
   * second, acknowledged copy of its whole view.
   */
  before: Array<[string, string]>;
}

interface Subscription {
  wildcard: boolean;
  names: Set<string>;
}

class Subscriber {
  readonly call: ConfigStreamCall;
  readonly streamId: string;
  id = '';
  kind: ClientKind | undefined;
  namespace = '';
  readonly subs = new Map<ResourceType, Subscription>();
  /**
   * What the client holds once every sent response is applied. What it confirmed is this with the
   * pending responses undone (Pending.before). Stored over bases shared with other clients
   * (held-versions.ts).
   */
  readonly sent = new Map<ResourceType, HeldVersions>();
  readonly pending = new Map<string, Pending>();
  /**
   * Per type, what may differ between `sent` and the client's view since the last flush: the
   * names published changes touched, or 'all' (a new subscription, a NACK, a change its view
   * depends on as a whole). A flush diffs only these, not the whole view.
   */
  readonly dirty = new Map<ResourceType, Set<string> | 'all'>();
  force = false;
  /** System version the client rejected; not re-sent until the model moves on. */
  nackedVersion: string | undefined;
  /** Latest system version acknowledged for every type. */
  ackedVersion = '';
  /**
   * The stream has not taken the last batch yet (HTTP/2 flow control: the client does not read).
   * A blocked client gets nothing more until it does; what changes meanwhile merges into `dirty`,
   * so it costs one batch, not one per publish (Istio keeps one push in flight per connection).
   */
  blocked = false;
  /** A push waits for it (counted once per blocked spell in weft_xds_pushes_held_total). */
  held = false;
  constructor(call: ConfigStreamCall, streamId: string) {
    this.call = call;
    this.streamId = streamId;
  }
  get label(): string {
    return this.kind === 'waypoint' ? `waypoint ${this.namespace}/${this.id}` : `agent ${this.id}`;
  }
}

export interface ConfigStreamClientInfo {
  id: string;
  kind: ClientKind | undefined;
  namespace: string;
  /** Latest system version the client acknowledged (all its types). */
  ackedVersion: string;
  nackedVersion?: string;
  /** Everything the client's view calls for has been sent and acknowledged (Istio's SYNCED). */
  synced: boolean;
  /** Its stream has not taken the last batch (the client does not read); changes wait and merge. */
  blocked: boolean;
}

export class ConfigServer {
  readonly #log: Logger;
  readonly #authorize: StreamAuthorizer | undefined;
  #systemVersion = 0;
  #published: PublishedSet = emptyPublished();
  #index: ViewIndex | undefined;
  /**
   * Each workload as every client but its own node's agent is sent it (views.ts remoteWorkload):
   * one shared "remote view" beside the published one, not a copy per client.
   */
  readonly #remoteWorkloads = new Map<string, Published>();
  /** Derived from the model's workloads at each publish: what waypoints get instead of them. */
  readonly #owners = new AddressOwnerTable();
  readonly #subscribers = new Set<Subscriber>();
  readonly #flushQueue = new Set<Subscriber>();
  #bodies = new WeakMap<object, string>();
  /** The frozen name → version maps clients' `sent` share (held-versions.ts). */
  readonly #bases = new SharedBases();
  /**
   * Resource versions are `<epoch>.<n>`: a client reconnecting to a restarted controller must not
   * mistake an old version number for a new resource's (it would keep stale config).
   */
  readonly #epoch = randomBytes(4).toString('hex');
  #pumpScheduled = false;
  #unackedBytes = 0;
  readonly #maxUnackedBytes: number;
  readonly #ackListeners = new Set<(c: ConfigStreamClientInfo) => void>();
  readonly #refusalLog: LogBudget;
  readonly #metrics?: { pushes: Counter; nacks: Counter; refused: Counter; held: Counter; clients: Gauge; resources: Gauge; publishSeconds: Histogram };

  constructor(options: ConfigServerOptions = {}) {
    this.#log = options.logger ?? silentLogger;
    this.#authorize = options.authorize;
    this.#maxUnackedBytes = options.maxUnackedBytes ?? DEFAULT_MAX_UNACKED_BYTES;
    this.#refusalLog = new LogBudget(REFUSAL_LOG_PER_SECOND, (count) => this.#log.warn('config stream refusals not logged (rate limit); weft_xds_streams_refused_total counts them', { count }));
    if (options.registry) {
      const registers = [options.registry];
      this.#metrics = {
        pushes: new Counter({ name: 'weft_xds_pushes_total', help: 'Config stream responses sent', labelNames: ['type'], registers }),
        nacks: new Counter({ name: 'weft_xds_nacks_total', help: 'Config stream responses rejected by clients', labelNames: ['type'], registers }),
        held: new Counter({ name: 'weft_xds_pushes_held_total', help: 'Pushes held back because the client\'s stream had not taken its previous batch (it does not read); what changes meanwhile merges into one later push', labelNames: ['kind'], registers }),
        refused: new Counter({ name: 'weft_xds_streams_refused_total', help: 'Config streams the controller refused and closed, by reason (denied, resource_exhausted, bad_request, internal)', labelNames: ['reason'], registers }),
        clients: new Gauge({ name: 'weft_xds_clients', help: 'Connected config stream clients', labelNames: ['kind'], registers }),
        resources: new Gauge({ name: 'weft_xds_resources', help: 'Published resources', labelNames: ['type'], registers }),
        publishSeconds: new Histogram({ name: 'weft_xds_publish_seconds', help: 'Time to diff and publish a model', registers }),
      };
    }
  }

  #lastPublishMs = 0;
  readonly #pushedBytes: Record<ClientKind, number> = { agent: 0, waypoint: 0 };

  /** Resource body bytes sent so far, by client kind (what pushes cost the network and the clients). */
  get pushedBytes(): Readonly<Record<ClientKind, number>> {
    return { ...this.#pushedBytes };
  }

  /** Duration of the most recent publish (versioning and diffing, before the pushes). */
  get lastPublishMs(): number {
    return this.#lastPublishMs;
  }

  get systemVersion(): string {
    return String(this.#systemVersion);
  }

  /** Publishes a new model: versions every changed resource and pushes to clients whose view changed. */
  publish(model: MeshModel): string {
    const started = process.hrtime.bigint();
    const next = String(this.#systemVersion + 1);
    const resources = modelResources(model);
    const published = emptyPublished();
    const changes = new Map<ResourceType, string[]>();
    const before = this.#index ? modelResources(this.#index.model) : undefined;
    for (const type of MODEL_TYPES) {
      const prev = this.#published[type];
      // An incremental compile hands over the maps it did not touch as they were.
      if (before && resources[type] === before[type]) {
        published[type] = prev;
        continue;
      }
      // Start from what was published and replace what changed: an unchanged model object keeps
      // its identity across compilations (CompileCache), so its entry stays as it is. After an
      // incremental compile only the names it recorded can differ: the published map (held by
      // nothing else) is updated in place for those, instead of copied and walked whole.
      const delta = before ? deltaOf(resources[type]) : undefined;
      const incremental = delta !== undefined && delta.from === before![type];
      const out = incremental ? prev : new Map(prev);
      const touched: string[] = [];
      const candidates: Iterable<[string, unknown]> = incremental ? namesIn(resources[type], delta.names, out, touched) : resources[type];
      for (const [name, obj] of candidates) {
        const old = out.get(name);
        if (old?.source === obj) continue;
        let body = this.#bodies.get(obj as object);
        if (body === undefined) {
          body = JSON.stringify(obj);
          this.#bodies.set(obj as object, body);
        }
        if (old && old.body === body) out.set(name, { ...old, source: obj as object });
        else {
          out.set(name, { version: `${this.#epoch}.${next}`, body, source: obj as object });
          touched.push(name);
        }
      }
      if (!incremental && out.size !== resources[type].size) {
        for (const name of prev.keys()) {
          if (resources[type].has(name)) continue;
          out.delete(name);
          touched.push(name);
        }
      }
      if (touched.length > 0) changes.set(type, touched);
      published[type] = out;
      this.#metrics?.resources.set({ type }, out.size);
    }
    published.AddressOwner = this.#publishAddressOwners(model, changes, `${this.#epoch}.${next}`);
    this.#publishRemoteWorkloads(model, changes.get('Workload') ?? [], `${this.#epoch}.${next}`);
    // Nodes whose workloads changed (before or after): their agents' policy views follow them.
    const nodes = new Set<string>();
    for (const name of changes.get('Workload') ?? []) {
      const before = this.#index?.model.workloads.get(name);
      const after = model.workloads.get(name);
      if (before) nodes.add(before.node);
      if (after) nodes.add(after.node);
    }
    // Waypoint namespaces that gained or lost a Service of another namespace (use-waypoint-namespace on it or its pods).
    const rebound = reboundWaypointNamespaces(this.#index?.model.services, model.services, changes.get('Service') ?? [], this.#index?.model.workloads, model.workloads, changes.get('Workload') ?? []);
    this.#index = buildIndex(model, this.#owners.table);
    this.#published = published;
    if (changes.size > 0 || this.#systemVersion === 0) {
      this.#systemVersion += 1;
      for (const s of this.#subscribers) {
        this.#markChanged(s, changes, nodes, rebound);
        this.#scheduleFlush(s);
      }
    }
    this.#lastPublishMs = Number(process.hrtime.bigint() - started) / 1e6;
    this.#metrics?.publishSeconds.observe(this.#lastPublishMs / 1000);
    return this.systemVersion;
  }

  /**
   * The remote form of the workloads this publish changed. One whose remote form is as it was keeps
   * its version, so a change only its own node reads (a label) is pushed to no other client. A new
   * remote form takes the publish's version, as the whole one does: both forms of a workload then
   * mostly hold the same version, so agents still share their held versions' bases
   * (held-versions.ts). A client never takes one form's version for the other's: it is sent the
   * whole form only while the workload is on its node, and a workload whose node changes has both
   * forms changed (node is in both), versioned anew.
   */
  #publishRemoteWorkloads(model: MeshModel, changed: readonly string[], version: string): void {
    for (const uid of changed) {
      const w = model.workloads.get(uid);
      if (!w) {
        this.#remoteWorkloads.delete(uid);
        continue;
      }
      const remote = remoteWorkload(w);
      const body = JSON.stringify(remote);
      const old = this.#remoteWorkloads.get(uid);
      // Its source is the remote form: the whole workload (its labels) is not kept alive by it.
      if (old?.body !== body) this.#remoteWorkloads.set(uid, { version, body, source: remote });
    }
  }

  /**
   * The address-owner table (waypoints' for= decision) follows the workloads this publish found
   * changed: only their addresses' entries are looked at. The published map is updated in place
   * (nothing else holds it), so pod churn costs its entries, not a pass over every address.
   */
  #publishAddressOwners(model: MeshModel, changes: Map<ResourceType, string[]>, version: string): Map<string, Published> {
    const out = this.#published.AddressOwner;
    const touched = this.#owners.update(this.#index?.model.workloads, model.workloads, changes.get('Workload') ?? []);
    for (const ip of touched) {
      const owner = this.#owners.table.get(ip);
      if (owner) out.set(ip, { version, body: JSON.stringify(owner), source: owner });
      else out.delete(ip);
    }
    if (touched.length > 0) changes.set('AddressOwner', touched);
    this.#metrics?.resources.set({ type: 'AddressOwner' }, out.size);
    return out;
  }

  /** Records on `sub` what a publish changed, as far as its view can tell. */
  #markChanged(sub: Subscriber, changes: ReadonlyMap<ResourceType, readonly string[]>, nodes: ReadonlySet<string>, rebound: ReadonlySet<string>): void {
    for (const type of sub.subs.keys()) {
      let d = sub.dirty.get(type);
      if (d === 'all') continue;
      // Most views decide each name from the resource alone; where one depends on more (an agent's
      // policies on its node's workloads, a waypoint's Services on its routes, what it serves on
      // the Services bound to it from other namespaces), it is recomputed whole.
      const whole = sub.kind === 'waypoint'
        ? (WAYPOINT_VIEW_DEPENDS_ON[type] ?? []).some((t) => changes.has(t)) || (rebound.has(sub.namespace) && WAYPOINT_TYPES_FOLLOWING_BINDINGS.includes(type))
        : AGENT_TYPES_FOLLOWING_LOCAL_WORKLOADS.includes(type) && nodes.has(sub.id);
      if (whole) {
        sub.dirty.set(type, 'all');
        continue;
      }
      const names = changes.get(type);
      if (!names) continue;
      if (!d) sub.dirty.set(type, (d = new Set()));
      for (const n of names) d.add(n);
    }
  }

  clients(): ConfigStreamClientInfo[] {
    return [...this.#subscribers].map((s) => ({ ...this.#info(s), ...(s.nackedVersion ? { nackedVersion: s.nackedVersion } : {}) }));
  }

  #info(s: Subscriber): ConfigStreamClientInfo {
    const synced = s.pending.size === 0 && s.dirty.size === 0 && !s.force && !this.#flushQueue.has(s);
    return { id: s.id, kind: s.kind, namespace: s.namespace, ackedVersion: s.ackedVersion, synced, blocked: s.blocked };
  }

  /** Called whenever a client acknowledges a complete system version. */
  onAck(listener: (c: ConfigStreamClientInfo) => void): () => void {
    this.#ackListeners.add(listener);
    return () => this.#ackListeners.delete(listener);
  }

  /** Ends every stream (clients reconnect to whichever controller is up). */
  closeAll(): void {
    for (const s of this.#subscribers) {
      for (const p of s.pending.values()) this.#release(p);
      s.call.end();
    }
    this.#subscribers.clear();
    this.#flushQueue.clear();
  }

  /** The gRPC handler of DeltaConfig. */
  handle(call: ConfigStreamCall): void {
    const sub = new Subscriber(call, randomBytes(4).toString('hex'));
    this.#subscribers.add(sub);
    const done = () => {
      this.#flushQueue.delete(sub);
      for (const p of sub.pending.values()) this.#release(p);
      if (!this.#subscribers.delete(sub)) return;
      if (sub.kind) this.#metrics?.clients.dec({ kind: sub.kind });
      this.#log.info('config stream closed', { client: sub.label, stream: sub.streamId });
    };
    call.on('data', (req: DeltaConfigRequest) => {
      try {
        this.#onRequest(sub, req);
      } catch (e) {
        const err = e as Error;
        const reason = refusalOf(err);
        this.#metrics?.refused.inc({ reason });
        // Who: what the stream claimed (its first request's node, before authorization) and where it came from.
        const claimed = sub.kind ? { kind: sub.kind, id: sub.id, namespace: sub.namespace } : { kind: req.node?.kind, id: req.node?.id, namespace: req.node?.namespace };
        if (this.#refusalLog.take()) {
          this.#log.warn('config stream request refused', {
            reason, error: clip(err.message, 1024), claimedKind: clip(claimed.kind) ?? null, claimedId: clip(claimed.id) ?? null, claimedNamespace: clip(claimed.namespace) ?? null, peer: peerOf(call), stream: sub.streamId,
          });
        }
        const code = err instanceof ConfigStreamRequestError ? err.grpcCode : grpc.status.INTERNAL;
        call.emit('error', { code, details: err.message } as grpc.ServiceError);
        done();
      }
    });
    call.on('drain', () => this.#unblock(sub));
    call.on('end', () => {
      done();
      call.end();
    });
    call.on('error', done);
    call.on('cancelled', done);
    call.on('close', done);
  }

  #onRequest(sub: Subscriber, req: DeltaConfigRequest): void {
    if (req.node && !sub.kind) {
      const kind = req.node.kind;
      if (kind !== 'agent' && kind !== 'waypoint') throw new ConfigStreamRequestError(`node.kind "${kind}" is not agent or waypoint`);
      if (!req.node.id) throw new ConfigStreamRequestError('node.id is required (agents: the node name)');
      if (kind === 'waypoint' && !req.node.namespace) throw new ConfigStreamRequestError(`node.namespace is required for waypoint ${req.node.id}`);
      const denied = this.#authorize?.({ kind, id: req.node.id, namespace: req.node.namespace }, sub.call.getAuthContext?.()?.sslPeerCertificate);
      if (denied) throw new ConfigStreamDeniedError(denied);
      sub.kind = kind;
      sub.id = req.node.id;
      sub.namespace = req.node.namespace;
      this.#metrics?.clients.inc({ kind });
      this.#log.info('config stream opened', { client: sub.label, stream: sub.streamId, userAgent: req.node.user_agent });
    }
    if (!sub.kind) throw new ConfigStreamRequestError('the first request must carry node (id, kind)');
    const type = resourceTypeOf(req.type_url);
    if (!type) throw new ConfigStreamRequestError(`type_url "${req.type_url}" is not one of ${Object.values(TYPE_URLS).join(', ')}`);
    if (!CLIENT_TYPES[sub.kind].includes(type) && !LEGACY_CLIENT_TYPES[sub.kind].includes(type)) throw new ConfigStreamRequestError(`a ${sub.kind} cannot subscribe to ${req.type_url}`);

    if (req.response_nonce) {
      const p = sub.pending.get(req.response_nonce);
      if (p) {
        // A NACK undoes p among the pending responses, so it looks before p leaves them.
        if (req.error_detail) this.#nack(sub, req.response_nonce, p, req.error_detail.message);
        sub.pending.delete(req.response_nonce);
        this.#release(p);
        if (!req.error_detail) this.#ack(sub, p);
      }
    }

    let sub0 = sub.subs.get(type);
    const isNew = !sub0;
    if (!sub0) {
      sub0 = { wildcard: false, names: new Set() };
      sub.subs.set(type, sub0);
      sub.sent.set(type, new HeldVersions(Object.entries(req.initial_resource_versions ?? {})));
      if (req.resource_names_subscribe.length === 0) sub0.wildcard = true;
    }
    // Names beyond what is published serve no one; a stream may not make the controller hold more.
    const limit = Math.max(MIN_SUBSCRIBED_NAMES_LIMIT, this.#published[type].size);
    for (const n of req.resource_names_subscribe) {
      if (n === '*') sub0.wildcard = true;
      else if (sub0.names.size >= limit && !sub0.names.has(n)) {
        throw new ConfigStreamExhaustedError(`${sub.label} subscribed to more than ${limit} ${type} names (${this.#published[type].size} are published); subscribe with '*' or to names that exist`);
      } else sub0.names.add(n);
    }
    for (const n of req.resource_names_unsubscribe) {
      if (n === '*') sub0.wildcard = false;
      else sub0.names.delete(n);
    }
    if (isNew || req.resource_names_subscribe.length > 0 || req.resource_names_unsubscribe.length > 0) {
      sub.force = true;
      this.#scheduleFlush(sub);
    }
  }

  #ack(sub: Subscriber, p: Pending): void {
    // A version is acknowledged once no response of it (or older) is outstanding.
    let outstanding = false;
    for (const q of sub.pending.values()) if (Number(q.systemVersion) <= Number(p.systemVersion)) outstanding = true;
    if (!outstanding && Number(p.systemVersion) > Number(sub.ackedVersion || 0)) {
      sub.ackedVersion = p.systemVersion;
      const info = this.#info(sub);
      for (const l of this.#ackListeners) l(info);
    }
  }

  #nack(sub: Subscriber, nonce: string, p: Pending, reason: string): void {
    this.#metrics?.nacks.inc({ type: p.type });
    if (sub.nackedVersion !== p.systemVersion) {
      this.#log.warn('config rejected by client (NACK); it keeps its previous config', {
        client: sub.label,
        type: TYPE_URLS[p.type],
        version: p.systemVersion,
        nonce,
        reason,
      });
    }
    sub.nackedVersion = p.systemVersion;
    // The client reverted to what it acknowledged; later responses of this type build on that.
    // What it acknowledged is `sent` with every pending response of the type undone, latest first;
    // then the others (not p) are applied again, in the order they were sent.
    const sent = sub.sent.get(p.type)!;
    const ofType = [...sub.pending.values()].filter((q) => q.type === p.type);
    for (const q of ofType.reverse()) {
      for (const n of q.upserts) sent.delete(n);
      for (const [n, v] of q.before) sent.set(n, v);
    }
    for (const q of ofType.reverse()) if (q !== p) applyTo(sent, q);
    if (sent.overLimit) this.#bases.compact(`${sub.kind}/${p.type}`, sent);
    sub.dirty.set(p.type, 'all');
  }

  #scheduleFlush(sub: Subscriber): void {
    this.#flushQueue.add(sub);
    this.#schedulePump();
  }

  #schedulePump(): void {
    if (this.#pumpScheduled) return;
    this.#pumpScheduled = true;
    setImmediate(() => {
      this.#pumpScheduled = false;
      this.#pump();
    });
  }

  /**
   * Flushes queued clients while the unacknowledged-bytes budget allows. A client that still has
   * responses outstanding is already admitted and is never held back: its batch may be incomplete,
   * and it ACKs only complete batches.
   */
  #pump(): void {
    for (const sub of this.#flushQueue) {
      // Stays queued: its stream calls #unblock once it has taken the last batch.
      if (sub.blocked) {
        if (!sub.held) this.#metrics?.held.inc({ kind: sub.kind! });
        sub.held = true;
        continue;
      }
      if (sub.pending.size === 0 && this.#unackedBytes >= this.#maxUnackedBytes) {
        this.#expireUnacked();
        if (this.#unackedBytes >= this.#maxUnackedBytes) continue;
      }
      this.#flushQueue.delete(sub);
      try {
        this.#flush(sub);
      } catch (e) {
        this.#log.error('config push failed', { client: sub.label, error: (e as Error).message });
      }
    }
  }

  /** The stream took everything written to it: flush what changed meanwhile. */
  #unblock(sub: Subscriber): void {
    if (!sub.blocked) return;
    sub.blocked = false;
    sub.held = false;
    if (this.#flushQueue.has(sub)) this.#schedulePump();
  }

  #release(p: Pending): void {
    if (p.bytes === 0) return;
    this.#unackedBytes -= p.bytes;
    p.bytes = 0;
    if (this.#flushQueue.size > 0) this.#schedulePump();
  }

  #expireUnacked(): void {
    const cutoff = Date.now() - UNACKED_TIMEOUT_MS;
    for (const s of this.#subscribers) for (const p of s.pending.values()) if (p.sentAt < cutoff) this.#release(p);
  }

  /** Calls `each` with every published resource of `type` that `sub` may see (its whole view). */
  #view(sub: Subscriber, type: ResourceType, each: (name: string, p: Published) => void): void {
    const all = this.#published[type];
    const ix = this.#index;
    const s = sub.subs.get(type)!;
    if (!ix) return;
    const names = sub.kind === 'agent' ? agentView(ix, sub.id, type) : waypointView(ix, sub.namespace, type);
    const send = (n: string, p: Published): void => {
      const form = this.#formFor(sub, type, n, p);
      if (form) each(n, form);
    };
    if (names === undefined) {
      for (const [n, p] of all) if (s.wildcard || s.names.has(n)) send(n, p);
    } else {
      for (const n of names) {
        const p = all.get(n);
        if (p && (s.wildcard || s.names.has(n))) send(n, p);
      }
    }
  }

  /** The published resource if `sub` may see it (the one-name form of #view), in the form it is sent. */
  #holds(sub: Subscriber, type: ResourceType, name: string): Published | undefined {
    const p = this.#published[type].get(name);
    const s = sub.subs.get(type)!;
    if (!p || !this.#index || !(s.wildcard || s.names.has(name))) return undefined;
    const holds = sub.kind === 'agent' ? agentHolds(this.#index, sub.id, type, name) : waypointHolds(this.#index, sub.namespace, type, name);
    return holds ? this.#formFor(sub, type, name, p) : undefined;
  }

  /**
   * The form of published `p` that `sub` is sent (views.ts sentWhole): a workload whole to its own
   * node's agent, its remote form (views.ts remoteWorkload) to every other client.
   */
  #formFor(sub: Subscriber, type: ResourceType, name: string, p: Published): Published | undefined {
    return sentWhole(type, p.source, sub.kind === 'agent' ? sub.id : undefined) ? p : this.#remoteWorkloads.get(name);
  }

  #flush(sub: Subscriber): void {
    if (!this.#subscribers.has(sub) || sub.subs.size === 0 || !this.#index) return;
    const version = this.systemVersion;
    if (!sub.force && sub.nackedVersion === version) return;
    const responses: Array<{ type: ResourceType; names: string[]; entries: Published[]; removed: string[] }> = [];
    let any = sub.force;
    for (const type of sub.subs.keys()) {
      const sent = sub.sent.get(type)!;
      // The upserts, as parallel arrays (Pending.upserts).
      const names: string[] = [];
      const entries: Published[] = [];
      const removed: string[] = [];
      const dirty = sub.force ? 'all' : sub.dirty.get(type);
      if (dirty === 'all') {
        this.#view(sub, type, (n, p) => {
          if (sent.get(n) !== p.version) names.push(n), entries.push(p);
        });
        // #holds is the one-name form of #view (test/unit/controller-xds-views.test.ts).
        for (const n of sent.keys()) if (!this.#holds(sub, type, n)) removed.push(n);
      } else if (dirty) {
        for (const n of dirty) {
          const p = this.#holds(sub, type, n);
          if (p && sent.get(n) !== p.version) names.push(n), entries.push(p);
          else if (!p && sent.has(n)) removed.push(n);
        }
      }
      if (names.length > 0 || removed.length > 0) any = true;
      responses.push({ type, names, entries, removed });
    }
    sub.force = false;
    sub.dirty.clear();
    if (!any) return;
    let taken = true;
    const last = responses.length - 1;
    for (const [i, r] of responses.entries()) {
      const nonce = randomBytes(8).toString('hex');
      let bytes = 0;
      for (const p of r.entries) bytes += p.body.length;
      this.#unackedBytes += bytes;
      this.#pushedBytes[sub.kind!] += bytes;
      const pending: Pending = { type: r.type, systemVersion: version, bytes, sentAt: Date.now(), upserts: r.names, versions: r.entries.map((p) => p.version), removed: r.removed, before: [] };
      const held = sub.sent.get(r.type)!;
      const key = `${sub.kind}/${r.type}`;
      // A client that holds nothing of the type (a new subscription) holds exactly the upserts
      // afterwards, as other clients of the same view do: it shares their base instead of
      // building a Map of its own. It replaced nothing, so a NACK has nothing to restore.
      if (held.size === 0) this.#bases.adopt(key, held, pending.upserts, pending.versions);
      else {
        applyTo(held, pending);
        if (held.overLimit) this.#bases.compact(key, held);
      }
      sub.pending.set(nonce, pending);
      // Encoded by the service's serializer when grpc-js takes it from the stream (wire.ts). The
      // last write's callback runs once grpc-js has handed the whole batch to HTTP/2, which holds
      // it until the client's window opens.
      const response = new EncodedResponse({ system_version_info: version, type_url: TYPE_URLS[r.type], removed_resources: r.removed, nonce }, r.names, r.entries);
      const accepted = i === last ? sub.call.write(response, () => this.#unblock(sub)) : sub.call.write(response);
      if (accepted === false) taken = false;
      this.#metrics?.pushes.inc({ type: r.type });
    }
    // Blocked while the stream still buffers any of it (a stream without that count, a test's
    // fake, is never blocked unless write() said so). The callback above or 'drain' unblocks.
    const buffered = sub.call.writableLength;
    if (!taken || (typeof buffered === 'number' && buffered > 0)) sub.blocked = true;
  }
}

/**
 * The entries of `names` that `map` holds; names it no longer holds are deleted from `out` and
 * listed in `touched` on the way.
 */
function* namesIn(map: ReadonlyMap<string, unknown>, names: ReadonlySet<string>, out: Map<string, Published>, touched: string[]): Generator<[string, unknown]> {
  for (const name of names) {
    const obj = map.get(name);
    if (obj !== undefined) yield [name, obj];
    else if (out.delete(name)) touched.push(name);
  }
}

/** Applies a response to what the client holds, recording in `before` what it replaced (for a NACK). */
function applyTo(sent: HeldVersions, p: Pending): void {
  p.before = [];
  for (let i = 0; i < p.upserts.length; i++) {
    const n = p.upserts[i]!;
    const old = sent.get(n);
    if (old !== undefined) p.before.push([n, old]);
    sent.set(n, p.versions[i]!);
  }
  for (const n of p.removed) {
    const old = sent.get(n);
    if (old !== undefined) p.before.push([n, old]);
    sent.delete(n);
  }
}

function peerOf(call: ConfigStreamCall): string | null {
  try {
    return call.getPeer();
  } catch {
    return null;
  }
}

function emptyPublished(): PublishedSet {
  return { Workload: new Map(), Service: new Map(), AuthorizationPolicy: new Map(), PeerAuthentication: new Map(), Waypoint: new Map(), TrafficPolicy: new Map(), Route: new Map(), AddressOwner: new Map(), RequestAuthentication: new Map() };
}

export interface ConfigStreamDeps {
  configServer: ConfigServer;
}

/** Mounts weft.xds.v1.ConfigStream on a gRPC server (next to the certificate service on :15012). */
export function addConfigStreamService(server: grpc.Server, deps: ConfigStreamDeps): void {
  const definition = configStreamServiceDefinition();
  const method = definition.DeltaConfig as grpc.MethodDefinition<DeltaConfigRequest, DeltaConfigResponse>;
  server.addService({ ...definition, DeltaConfig: { ...method, responseSerialize: responseSerializer(method.responseSerialize) } }, {
    DeltaConfig: (call: ConfigStreamCall) => deps.configServer.handle(call),
  });
}
