// Multi-cluster discovery for one controller: it serves its own cluster's export (services and
// endpoints, its network and gateway; lib/model/federation.ts) over mutual TLS to the other
// clusters' controllers and to its own east-west gateway, and takes in every remote cluster's
// export: polled from a remote controller's listener, or pushed as it changes by the watches on a
// remote API server (controller/src/sources/remote-secrets.ts). The compiled model is merged with
// the remote endpoints before it is published. A remote that stops answering keeps its last known
// endpoints for `staleAfterMs`, then they are removed. The listener is reachable from other
// networks and any mesh certificate passes its TLS (who may read is judged per request): its
// handshake, headers, request and idle time and the connections one source address may hold are
// bounded well under Node's defaults (DEFAULT_FEDERATION_LISTENER_LIMITS), each refusal counted in
// `weft_federation_listener_refused_total{reason}` and logged. What one remote may add to this
// cluster's config is bounded (`importQuota`, DEFAULT_IMPORT_QUOTA): past it the remote's import
// is cut deterministically, the first QUOTA_NAMED left out refused as any other import (`reason=
// "quota"`, counted once, named and logged), how many in all in `/debug/federation`.
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:https';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import { Gauge, Counter, type Registry } from 'prom-client';
import { clip, LogBudget, REFUSAL_LOG_PER_SECOND, type Logger } from '../../lib/log.ts';
import { limitHttpListener, type HttpListenerLimits, type HttpListenerRefusal } from '../../lib/listener-limits.ts';
import { listenHttp } from '../../lib/status-http.ts';
import { DEFAULT_HANDSHAKE_TIMEOUT_MS } from '../../lib/hbone/tuning.ts';
import { DEFAULT_EXPORT_READ_DEADLINE_MS, readExport, type ExportRead } from '../../lib/federation-read.ts';
import type { MeshModel, NetworkGateway, Waypoint } from '../../lib/model/mesh.ts';
import { DEFAULT_IMPORT_QUOTA, exportSelection, FEDERATION_PATH, type ExportLeftOut, type ExportSelection, type ImportQuota, mergeRemoteServices, parseClusterExport, type ClusterExport, type ImportRefusal, type RemoteStatus } from '../../lib/model/federation.ts';
import { spiffeIdFromCert } from '../../lib/hbone/peer.ts';

/** How often a remote controller's export is read. */
export const DEFAULT_FEDERATION_POLL_MS = 1_000;
/** How long a remote that stopped answering keeps its last known endpoints. */
export const DEFAULT_REMOTE_STALE_AFTER_MS = 30_000;
/** A remote's whole export must be read within this (a remote that answers a byte at a time fails here). */
export const DEFAULT_FETCH_DEADLINE_MS = DEFAULT_EXPORT_READ_DEADLINE_MS;

/** Bounds of the federation listener; Node's defaults are a TLS handshake of 120 s, headers of 60 s, a request of 300 s and no connection cap. */
export interface FederationListenerLimits extends HttpListenerLimits {
  /** A connection must finish its TLS handshake within this. */
  handshakeTimeoutMs: number;
}

/**
 * An export read has no body; its readers are the other clusters' controllers and this cluster's
 * gateways, each one read at a time (a few may share an address behind a NAT).
 */
export const DEFAULT_FEDERATION_LISTENER_LIMITS: Readonly<FederationListenerLimits> = {
  handshakeTimeoutMs: DEFAULT_HANDSHAKE_TIMEOUT_MS,
  headersTimeoutMs: 5_000,
  requestTimeoutMs: 10_000,
  idleTimeoutMs: 5_000,
  maxConnectionsPerSource: 64,
};


export interface RemoteCluster {
  /** The cluster ID it must report. */
  name: string;
  /** `https://<ip>:<port>` of its controller's federation listener, or (pushed) its API server and Secret; named in status and logs. */
  url: string;
  /**
   * Its export is pushed with `Federation.report` whenever it changes or the remote stops (or
   * starts again) answering: the watches on a remote API server through a kubeconfig Secret
   * (`controller/src/sources/remote-secrets.ts`). Absent: fetched from `url` over mutual TLS
   * every `pollMs`.
   */
  pushed?: boolean;
}

/** What a pushed remote reports: its export (JSON text, checked like one read over the network), or why it cannot be read now. */
export type RemoteReport = { export: string } | { error: string };

export interface FederationOptions {
  cluster: string;
  network: string;
  gateway?: NetworkGateway;
  /** Where to serve this cluster's export; absent: not served. */
  listen?: { host: string; port: number };
  remotes: readonly RemoteCluster[];
  /** This controller's identity (server and client certificate) and the trust bundle (the shared root). */
  tls: () => { key: string; cert: string; ca: readonly string[] };
  /** Who may read the export, by SPIFFE ID (other controllers, this cluster's gateway). */
  mayRead: (spiffeId: string) => boolean;
  /** Which identity a remote controller must present. */
  isController: (spiffeId: string) => boolean;
  pollMs?: number;
  staleAfterMs?: number;
  /** How long one read of a remote's export may take in all (DEFAULT_FETCH_DEADLINE_MS). */
  fetchDeadlineMs?: number;
  /** The listener's bounds, each defaulting to DEFAULT_FEDERATION_LISTENER_LIMITS'. */
  listenerLimits?: Partial<FederationListenerLimits>;
  /** What one remote may add to this cluster's config (the controller resolves it from its flags); DEFAULT_IMPORT_QUOTA when absent. */
  importQuota?: ImportQuota;
  log: Logger;
  registry?: Registry;
}

interface RemoteState {
  remote: RemoteCluster;
  export: ClusterExport | undefined;
  /** Text of the last good export: a poll that reads the same changes nothing. */
  text: string;
  /** The ETag `text` was served with (a polled remote): the next poll asks for it (If-None-Match), a 304 is `text` again. */
  etag?: string | undefined;
  lastOk: number;
  lastError: string | undefined;
  /** Its endpoints were dropped for staleness (until it answers again). */
  stale: boolean;
  /** Failing since lastOk (a pushed remote: its last report was an error). */
  failing: boolean;
  staleTimer?: NodeJS.Timeout;
  /** Its export is being read (a polled remote): the next round leaves it be. */
  reading?: boolean;
}

export class Federation {
  readonly #o: FederationOptions;
  #remotes: RemoteState[];
  readonly #listeners = new Set<() => void>();
  #server: Server | undefined;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  #started = false;
  readonly #metrics?: { up: Gauge; endpoints: Gauge; failures: Counter; reads: Counter; importRefused: Counter; exportRefused: Counter; listenerRefused: Counter };
  /** Lines of the listener's refusals (a reader's 403s, closed connections). */
  readonly #refusalLog: LogBudget;
  /** Lines of refused imports: a remote writes its export, and with it each refusal's message. */
  readonly #importLog: LogBudget;
  /** Lines of this cluster's Services left out of its export: its own, which no remote's refusals may silence. */
  readonly #exportLog: LogBudget;
  /** Remote-only Services not imported at the last merge, by `cluster/namespace/name`. */
  #refusedImports = new Map<string, ImportRefusal>();
  /** This cluster's Services and waypoints left out of its export at the last merge (exportSelection), by `kind/namespace/name`: the reason. */
  #refusedExports = new Map<string, ExportLeftOut['reason']>();
  /** What the export carries, chosen at each merge (exportSelection). */
  #selection: ExportSelection = { services: [], waypoints: [], left: [] };
  /**
   * The export's JSON text, made at its first read after a merge (the selection changes only
   * there): every east-west gateway replica and every remote reads it each second, and it may be
   * 16 MiB.
   */
  #served: { text: Buffer; etag: string } | undefined;
  readonly #quota: ImportQuota;

  constructor(o: FederationOptions) {
    this.#o = o;
    this.#quota = o.importQuota ?? DEFAULT_IMPORT_QUOTA;
    const now = Date.now();
    this.#remotes = o.remotes.map((remote) => ({ remote, export: undefined, text: '', lastOk: now, lastError: undefined, stale: false, failing: false }));
    this.#refusalLog = new LogBudget(REFUSAL_LOG_PER_SECOND, (count) =>
      o.log.warn('federation listener refusals not logged (rate limit; every one is counted in weft_federation_listener_refused_total or weft_federation_export_reads_total{result="forbidden"})', { count, perSecond: REFUSAL_LOG_PER_SECOND }));
    this.#importLog = new LogBudget(REFUSAL_LOG_PER_SECOND, (count) =>
      o.log.warn('refused remote services not logged (rate limit; every one is counted in weft_federation_import_refused_total and named in /debug/federation)', { count, perSecond: REFUSAL_LOG_PER_SECOND }));
    this.#exportLog = new LogBudget(REFUSAL_LOG_PER_SECOND, (count) =>
      o.log.warn('services left out of the export not logged (rate limit; every one is counted in weft_federation_export_refused_total)', { count, perSecond: REFUSAL_LOG_PER_SECOND }));
    if (o.registry) {
      const registers = [o.registry];
      this.#metrics = {
        up: new Gauge({ name: 'weft_federation_remote_up', help: 'Whether the remote cluster\'s export was read within the stale bound (1) or its endpoints were dropped (0)', labelNames: ['cluster'], registers }),
        endpoints: new Gauge({ name: 'weft_federation_remote_endpoints', help: 'Endpoints imported from the remote cluster', labelNames: ['cluster'], registers }),
        failures: new Counter({ name: 'weft_federation_fetch_failures_total', help: 'Failed reads of a remote cluster\'s export', labelNames: ['cluster'], registers }),
        reads: new Counter({ name: 'weft_federation_export_reads_total', help: 'Reads of this cluster\'s export, by result', labelNames: ['result'], registers }),
        importRefused: new Counter({ name: 'weft_federation_import_refused_total', help: 'Services of a remote cluster (or some of their endpoints) not imported (counted when first refused), by cluster and reason (vip-in-use, waypoint, headless, no-gateway, invalid, endpoints, cluster-local, quota)', labelNames: ['cluster', 'reason'], registers }),
        exportRefused: new Counter({ name: 'weft_federation_export_refused_total', help: 'Services (and waypoints) of this cluster left out of its export (counted when first left out), by reason (invalid: every importer would refuse it, more than 100 ports or 8 VIPs; namespace-share: its namespace is past its share of the export\'s bytes, its largest Services left out first, its waypoints last; waypoint: a Service bound to a waypoint left out)', labelNames: ['reason'], registers }),
        listenerRefused: new Counter({ name: 'weft_federation_listener_refused_total', help: 'Connections the federation listener closed, by reason (too-many-connections from one source, tls-handshake failed or too slow, request-timeout: headers or request too slow, bad-request)', labelNames: ['reason'], registers }),
      };
    }
  }

  /** Called when imported endpoints change (the controller recompiles and republishes). */
  onChange(listener: () => void): void {
    this.#listeners.add(listener);
  }

  /** The compiled local model with every live remote's endpoints merged in; remembers the local one for the export. */
  merge(local: MeshModel): MeshModel {
    this.#noteRefusedExports(local);
    const live = this.#remotes.filter((r) => r.export && !r.stale).map((r) => r.export!);
    const { services, waypoints, refused } = live.length === 0
      ? { services: local.services, waypoints: new Map<string, Waypoint>(), refused: [] }
      : mergeRemoteServices({ services: local.services.values(), workloads: local.workloads.values() }, { network: this.#o.network }, live);
    const now = new Map(refused.map((x) => [`${x.cluster}/${x.service}`, x]));
    for (const [k, x] of now) {
      if (this.#refusedImports.get(k)?.message === x.message) continue;
      this.#metrics?.importRefused.inc({ cluster: x.cluster, reason: x.reason });
      if (this.#importLog.take()) this.#o.log.warn('remote service (or some of its endpoints) not imported; the others are unaffected', { cluster: x.cluster, service: x.service, reason: x.reason, error: clip(x.message, 1024) });
    }
    this.#refusedImports = now;
    if (live.length === 0) return local;
    return { ...local, services, ...(waypoints.size > 0 ? { waypoints: new Map([...local.waypoints, ...waypoints]) } : {}) };
  }

  /**
   * Chooses what the export carries (exportSelection) and counts and logs (once each, within the
   * refusal budget) the local Services and waypoints it leaves out.
   */
  #noteRefusedExports(local: MeshModel): void {
    this.#selection = exportSelection(local.services.values(), local.waypoints.values());
    this.#served = undefined;
    const now = new Map<string, ExportLeftOut['reason']>();
    for (const x of this.#selection.left) {
      const key = `${x.kind}/${x.namespace}/${x.name}`;
      now.set(key, x.reason);
      // By reason: an entry left out for its namespace's share stays so while pods churn and sizes move.
      if (this.#refusedExports.get(key) === x.reason) continue;
      this.#metrics?.exportRefused.inc({ reason: x.reason });
      if (this.#exportLog.take()) this.#o.log.warn(`${x.kind === 'Service' ? 'service' : 'waypoint'} not exported; the other namespaces' are exported`, { [x.kind === 'Service' ? 'service' : 'waypoint']: `${x.namespace}/${x.name}`, reason: x.reason, path: x.path, error: x.message, ...(x.bytes ? { bytes: x.bytes } : {}) });
    }
    this.#refusedExports = now;
  }

  /** This cluster's Services and waypoints the export leaves out at the last merge, each named with its field (the controller's findings). */
  leftOut(): readonly ExportLeftOut[] {
    return this.#selection.left;
  }

  /** This cluster's own services, endpoints and waypoints (nothing imported), as chosen at the last merge (exportSelection). */
  export(): ClusterExport {
    const { services, waypoints } = this.#selection;
    return { cluster: this.#o.cluster, network: this.#o.network, ...(this.#o.gateway ? { gateway: this.#o.gateway } : {}), services, waypoints };
  }

  /** The export as the listener serves it (export()'s JSON, UTF-8), serialized once per merge. */
  exportText(): Buffer {
    return this.#exportServed().text;
  }

  /**
   * The export's text and its ETag, made once per merge: a strong validator of the text (RFC 9110
   * 8.8.3; its SHA-256, so one export is one tag whichever replica serves it and however many merges
   * made it). A reader that sends it back in If-None-Match is answered 304 while the export is that
   * one: the east-west gateway, which reads it each second, neither transfers nor hashes nor parses it.
   */
  #exportServed(): { text: Buffer; etag: string } {
    if (this.#served) return this.#served;
    const text = Buffer.from(JSON.stringify(this.export()));
    return (this.#served = { text, etag: `"${createHash('sha256').update(text).digest('base64url')}"` });
  }

  /** Each remote as last read (`/debug/federation`, read by `weftctl check`): its network and gateway come from its last export. */
  status(): RemoteStatus[] {
    return this.#remotes.map((r) => ({
      cluster: r.remote.name, url: r.remote.url, up: !!r.export && !r.stale,
      endpoints: r.export ? r.export.services.reduce((n, s) => n + s.endpoints.length, 0) : 0,
      // A pushed remote whose watches work is read right now.
      lastOk: new Date(r.remote.pushed && r.export && !r.failing ? Date.now() : r.lastOk).toISOString(), ...(r.lastError ? { lastError: r.lastError } : {}),
      ...(r.export ? { network: r.export.network } : {}), ...(r.export?.gateway ? { gateway: r.export.gateway } : {}),
      ...this.#refusedOf(r),
    }));
  }

  #refusedOf(r: RemoteState): Pick<RemoteStatus, 'refusedServices' | 'quota'> {
    const out = [...this.#refusedImports.values()].filter((x) => x.cluster === r.remote.name).map((x): [string, string] => [x.service, x.message]);
    // Past the quota: how many were left out in all (the first QUOTA_NAMED are refusals above).
    const cut = r.export && !r.stale ? r.export.quota : undefined;
    return {
      ...(out.length > 0 ? { refusedServices: Object.fromEntries(out) } : {}),
      ...(cut ? { quota: { refused: cut.refused.length, message: cut.message } } : {}),
    };
  }

  /** The federation listener's port (undefined when not serving). */
  get port(): number | undefined {
    const a = this.#server?.address();
    return a && typeof a === 'object' ? a.port : undefined;
  }

  async start(): Promise<void> {
    if (this.#o.listen) await this.#serve(this.#o.listen);
    this.#started = true;
    this.#schedule(0);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    for (const r of this.#remotes) clearTimeout(r.staleTimer);
    if (this.#server) {
      this.#server.closeAllConnections();
      await new Promise<void>((r) => this.#server!.close(() => r()));
    }
  }

  /**
   * Adds a remote cluster (or replaces the one of that name: a changed kubeconfig Secret). Its
   * endpoints join at its first good read (or report).
   */
  addRemote(remote: RemoteCluster): void {
    const old = this.#remotes.find((r) => r.remote.name === remote.name);
    if (old) clearTimeout(old.staleTimer);
    this.#remotes = [...this.#remotes.filter((r) => r !== old), { remote, export: old?.export, text: old?.text ?? '', lastOk: old?.failing ? old.lastOk : Date.now(), lastError: undefined, stale: old?.stale ?? false, failing: false }];
    if (this.#started && !this.#timer) this.#schedule(0);
  }

  /** Removes a remote cluster (its Secret was deleted): its endpoints leave the model at once. */
  removeRemote(name: string): void {
    const old = this.#remotes.find((r) => r.remote.name === name);
    if (!old) return;
    clearTimeout(old.staleTimer);
    this.#remotes = this.#remotes.filter((r) => r !== old);
    this.#metrics?.up.remove({ cluster: name });
    this.#metrics?.endpoints.remove({ cluster: name });
    if (old.export && !old.stale) for (const l of this.#listeners) l();
  }

  /** A pushed remote's export changed, or it cannot be read now (or can again). */
  report(name: string, report: RemoteReport): void {
    const r = this.#remotes.find((x) => x.remote.name === name && x.remote.pushed);
    if (!r || this.#stopped) return;
    const changed = 'export' in report ? this.#took(r, report.export) : this.#failed(r, report.error);
    if (changed) for (const l of this.#listeners) l();
  }

  /** The identity certificate was renewed: new connections to the listener get the new one. */
  renewedTls(): void {
    const tls = this.#o.tls();
    this.#server?.setSecureContext({ key: tls.key, cert: tls.cert, ca: [...tls.ca], minVersion: 'TLSv1.3' });
  }

  /** A connection the listener closed: counted, logged within the budget. */
  #listenerRefused(reason: HttpListenerRefusal, address: string | undefined, detail: string): void {
    this.#metrics?.listenerRefused.inc({ reason });
    if (this.#refusalLog.take()) this.#o.log.warn('federation listener refused a connection', { reason, address, detail: clip(detail) });
  }

  async #serve(at: { host: string; port: number }): Promise<void> {
    const tls = this.#o.tls();
    const limits = { ...DEFAULT_FEDERATION_LISTENER_LIMITS, ...this.#o.listenerLimits };
    const server = createServer({
      key: tls.key, cert: tls.cert, ca: [...tls.ca], requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3',
      handshakeTimeout: limits.handshakeTimeoutMs,
    }, (req, res) => {
      const peer = spiffeIdFromCert((req.socket as TLSSocket).getPeerCertificate() as PeerCertificate)?.uri;
      if (!peer || !this.#o.mayRead(peer)) {
        this.#metrics?.reads.inc({ result: 'forbidden' });
        if (this.#refusalLog.take()) this.#o.log.warn('federation export refused', { peer: peer ?? 'none', address: req.socket.remoteAddress });
        res.writeHead(403, { 'content-type': 'text/plain' }).end(`${peer ?? 'a peer without a SPIFFE ID'} may not read this cluster's export\n`);
        return;
      }
      if (req.method !== 'GET' || req.url?.split('?')[0] !== FEDERATION_PATH) {
        res.writeHead(404).end();
        return;
      }
      const { text, etag } = this.#exportServed();
      if (ifNoneMatch(req.headers['if-none-match'], etag)) {
        this.#metrics?.reads.inc({ result: 'unchanged' });
        res.writeHead(304, { etag }).end();
        return;
      }
      this.#metrics?.reads.inc({ result: 'ok' });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': text.length, etag }).end(text);
    });
    limitHttpListener(server, limits, (r) => this.#listenerRefused(r.reason, r.socket.remoteAddress, r.detail));
    this.#server = server;
    await listenHttp(server, at.port, at.host);
  }

  #schedule(ms: number): void {
    if (this.#stopped || !this.#remotes.some((r) => !r.remote.pushed)) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#pollAll();
      this.#schedule(this.#o.pollMs ?? DEFAULT_FEDERATION_POLL_MS);
    }, ms);
    this.#timer.unref();
  }

  /**
   * Starts a read of every polled remote not still being read. Each is taken on its own: a remote
   * that answers slowly (up to the read deadline) delays no other.
   */
  #pollAll(): void {
    for (const r of this.#remotes) {
      if (r.remote.pushed || r.reading) continue;
      r.reading = true;
      const asked = r.export !== undefined ? r.etag : undefined;
      void this.#fetch(r.remote, asked).then(
        (read): { export: string; etag: string | undefined } => (read === 'unchanged' ? { export: r.text, etag: asked } : { export: read.text, etag: read.etag }),
        (e: Error): { error: string } => ({ error: e.message }),
      ).then((result) => {
        r.reading = false;
        // Removed while it was being read: nothing of it is kept.
        if (!this.#remotes.includes(r) || this.#stopped) return;
        const changed = 'export' in result ? this.#took(r, result.export) : this.#failed(r, result.error);
        // The tag goes with the text taken (one that did not parse leaves the last good one's).
        if ('export' in result && r.text === result.export) r.etag = result.etag;
        if (changed) for (const l of this.#listeners) l();
      });
    }
  }

  /**
   * A remote's export read (or pushed): whether the imported endpoints change. The same text as the
   * last good read is not parsed again (a polled remote's export is read every second, and parsing
   * and checking it is most of that work): only the time of the read is news.
   */
  #took(r: RemoteState, text: string): boolean {
    const same = !r.stale && r.export !== undefined && text === r.text;
    if (!same) {
      let parsed: ClusterExport;
      try {
        parsed = parseClusterExport(JSON.parse(text), { quota: this.#quota });
        if (parsed.cluster !== r.remote.name) throw new Error(`it says it is cluster ${JSON.stringify(parsed.cluster)}, not ${JSON.stringify(r.remote.name)}`);
      } catch (e) {
        return this.#failed(r, (e as Error).message);
      }
      if (r.stale) this.#o.log.info('remote cluster back; its endpoints are imported again', { cluster: r.remote.name });
      r.stale = false;
      r.text = text;
      r.export = parsed;
    }
    r.lastOk = Date.now();
    r.lastError = undefined;
    r.failing = false;
    clearTimeout(r.staleTimer);
    r.staleTimer = undefined;
    this.#gauges(r);
    return !same;
  }

  /**
   * A remote that cannot be read: its last known endpoints stay until the stale bound from its
   * last good read, then they are removed (by a timer, as a pushed remote may report nothing more).
   */
  #failed(r: RemoteState, msg: string): boolean {
    this.#metrics?.failures.inc({ cluster: r.remote.name });
    if (r.lastError !== msg) this.#o.log.warn('remote cluster export not read', { cluster: r.remote.name, url: r.remote.url, error: msg });
    r.lastError = msg;
    // A pushed remote was fine until its first error (it reports only changes).
    if (!r.failing && r.remote.pushed) r.lastOk = Date.now();
    r.failing = true;
    const bound = this.#o.staleAfterMs ?? DEFAULT_REMOTE_STALE_AFTER_MS;
    if (!r.stale && r.export && !r.staleTimer) {
      r.staleTimer = setTimeout(() => {
        r.staleTimer = undefined;
        if (this.#stopped || !this.#remotes.includes(r) || !r.failing || r.stale) return;
        r.stale = true;
        this.#o.log.warn('remote cluster unreachable past the stale bound; its endpoints are removed', { cluster: r.remote.name, staleAfterMs: bound, lastOk: new Date(r.lastOk).toISOString() });
        this.#gauges(r);
        for (const l of this.#listeners) l();
      }, Math.max(0, r.lastOk + bound - Date.now()));
      r.staleTimer.unref();
    }
    this.#gauges(r);
    return false;
  }

  #gauges(r: RemoteState): void {
    this.#metrics?.up.set({ cluster: r.remote.name }, r.export && !r.stale ? 1 : 0);
    this.#metrics?.endpoints.set({ cluster: r.remote.name }, r.export && !r.stale ? r.export.services.reduce((n, s) => n + s.endpoints.length, 0) : 0);
  }

  #fetch(remote: RemoteCluster, ifNoneMatch: string | undefined): Promise<ExportRead> {
    return readExport(remote.url, {
      tls: this.#o.tls(),
      checkPeer: (id) => (id && this.#o.isController(id) ? undefined : new Error(`the peer at ${remote.url} is ${id ?? 'no SPIFFE identity'}, not a controller of the mesh`)),
      deadlineMs: this.#o.fetchDeadlineMs ?? DEFAULT_FETCH_DEADLINE_MS,
      ...(ifNoneMatch !== undefined ? { ifNoneMatch } : {}),
    });
  }
}

/** Whether an If-None-Match header names `etag` (RFC 9110 13.1.2: `*`, or a list compared weakly). */
function ifNoneMatch(header: string | undefined, etag: string): boolean {
  if (!header) return false;
  return header.split(',').some((t) => {
    const tag = t.trim();
    return tag === '*' || (tag.startsWith('W/') ? tag.slice(2) : tag) === etag;
  });
}
