// The agent's Prometheus metrics (Istio's names and labels: lib/telemetry/labels.ts) and its access
// log. Both directions describe each connection with one ConnectionRecord, as ztunnel's
// ConnectionResult does: opened when the agent has decided to carry it (counted then), closed once
// with its bytes and outcome (counted, and one access-log line written from the same labels).
import { Counter, Gauge, Registry } from 'prom-client';
import type { CertManager } from './certs/index.ts';
import type { Service, TelemetrySettings, Workload } from '../../lib/model/mesh.ts';
import { registerProcessMetrics } from '../../lib/telemetry/process.ts';
import { LogBudget, clip, escapeControls, type Logger, REFUSAL_LOG_PER_SECOND } from '../../lib/log.ts';
import { DRY_RUN_METRIC } from '../../lib/policy/authz.ts';
import type { OnSidePortRefusal, SidePortRefusal } from './admin.ts';

/** The log line of each side-port refusal (the reason is the metric label). */
const SIDE_PORT_REFUSAL_MESSAGES: Record<SidePortRefusal, string> = {
  bad_target: 'request refused: the request target is not a URL',
  peer_uid: 'connection refused: the admin port answers only root on this node',
  source_connections: 'connection refused: its source holds too many connections',
  header_timeout: 'connection closed: no whole request head in time',
  idle: 'connection closed: idle',
  'debug-token-missing': 'request refused: a debug path without the install\'s debug token',
  'debug-token-wrong': 'request refused: a debug path with another token than the install\'s',
  'debug-token-unset': 'request refused: a debug path while the agent cannot read the install\'s debug token',
};
import { FLAG_NONE, TRAFFIC_LABELS, trafficLabels, type Peer, type Reporter, type SecurityPolicy, type ServiceRef, type TrafficLabel } from '../../lib/telemetry/labels.ts';

export type TcpLabels = Record<TrafficLabel, string>;

/** A workload's access-log settings (its Telemetry); undefined: on, JSON, stdout only. */
export type AccessLogging = TelemetrySettings['accessLogging'];

/**
 * Receives one access-log entry (the agent adds time, type and node) with the access-log settings
 * of each workload whose line it is (none given: the defaults).
 */
export type AccessLogSink = (entry: Record<string, unknown>, logging?: ReadonlyArray<AccessLogging | undefined>, theirs?: Record<string, unknown>) => void;

/** Where the agent's access-log lines go: stdout, a Telemetry's OTLP endpoint, and /flows. */
export interface AccessLogOutputs {
  node: string;
  /** One line to stdout. */
  write: (line: string) => void;
  /** One line to the OTLP collector at `endpoint` (the entry's fields beside it). */
  otlp: (endpoint: string, text: string, fields: Record<string, unknown>) => void;
  /** Every entry, whatever the settings (weftctl tap, the dashboard); its JSON text when one was made. */
  publish: (entry: Record<string, unknown>, json: string | undefined) => void;
}

/**
 * The agent's access log: each entry stamped (time, type, node) and sent where the settings of
 * each workload whose line it is say, each workload's settings its own: a line no workload switched
 * off is written once per encoding they ask for, and sent to each OTLP endpoint one names (in that
 * one's encoding). A workload switching its log off so removes only its own copy: a same-node
 * connection's one line is its destination's inbound line too, which its source's Telemetry (another
 * namespace's, perhaps) cannot take away.
 */
export function accessLogSink(out: AccessLogOutputs): AccessLogSink {
  return (entry, logging = [undefined], theirs) => {
    const line = { time: new Date().toISOString(), type: 'access', node: out.node, ...entry };
    // The first settings are the reporter's, whose copy is `entry`; another workload's copy is
    // `theirs` where given (a same-node destination's inbound line: ConnectionRecord).
    let inbound: Record<string, unknown> | undefined;
    const lineOf = (own: boolean): Record<string, unknown> => {
      if (own || !theirs) return line;
      return (inbound ??= { time: line.time, type: line.type, node: line.node, ...theirs });
    };
    const texts = new Map<string, string>();
    const text = (own: boolean, encoding: 'JSON' | 'TEXT'): string => {
      const key = `${own || !theirs} ${encoding}`;
      let t = texts.get(key);
      if (t === undefined) texts.set(key, (t = formatAccessLog(lineOf(own), encoding)));
      return t;
    };
    const written = new Set<string>();
    const sent = new Set<string>();
    logging.forEach((l, i) => {
      if (l?.disabled) return;
      const own = i === 0;
      const encoding = l?.encoding ?? 'JSON';
      // One stdout line per encoding: the reporter's where it writes one (the node's log), else the other's.
      if (!written.has(encoding)) {
        written.add(encoding);
        out.write(text(own, encoding));
      }
      if (l?.otlpEndpoint && !sent.has(`${encoding} ${l.otlpEndpoint}`)) {
        sent.add(`${encoding} ${l.otlpEndpoint}`);
        out.otlp(l.otlpEndpoint, text(own, encoding), lineOf(own));
      }
    });
    out.publish(line, texts.get('true JSON'));
  };
}

/**
 * One access-log line: JSON, or ztunnel's text form (`<time> info access <msg> key=value ...`,
 * values with spaces or controls quoted, each line one line). Undefined values are left out of both.
 */
export function formatAccessLog(entry: Record<string, unknown>, encoding: 'JSON' | 'TEXT' = 'JSON'): string {
  if (encoding === 'JSON') return JSON.stringify(entry);
  const { time, msg, ...rest } = entry;
  const kv = Object.entries(rest).filter(([, v]) => v !== undefined).map(([k, v]) => {
    const s = typeof v === 'string' ? v : JSON.stringify(v);
    // Quoted when it holds a space, a quote, `=` or a control (a peer's refusal reason can):
    // JSON escapes C0; DEL and C1 (U+009B is CSI to a terminal) are escaped the same way.
    return `${k}=${/[\s"=\x00-\x1f\x7f-\x9f]/.test(s) ? escapeControls(JSON.stringify(s)) : s}`;
  });
  return [String(time ?? new Date().toISOString()), 'info', 'access', String(msg ?? ''), ...kv].join(' ');
}

export class AgentMetrics {
  readonly registry = new Registry();
  readonly opened: Counter<TrafficLabel>;
  readonly closed: Counter<TrafficLabel>;
  readonly sent: Counter<TrafficLabel>;
  readonly received: Counter<TrafficLabel>;
  readonly denied: Counter<'reporter' | 'reason' | 'destination_workload' | 'destination_workload_namespace'>;
  readonly failed: Counter<'reporter' | 'reason'>;
  readonly forwardedIgnored: Counter<'reason'>;
  readonly active: Gauge<'direction'>;
  readonly sidePortRefused: Counter<'port' | 'reason'>;
  readonly enrolmentRefused: Counter<'reason'>;
  readonly plaintextListenerFailures: Counter<'reason'>;
  readonly enrolmentFailures: Counter<'reason'>;
  readonly podsEnrolmentStale: Gauge;
  /** weft_authz_dry_run_total: each shadow engine's verdict on a connection (lib/policy/authz.ts dryRunOf). */
  readonly dryRun: Counter<(typeof DRY_RUN_METRIC.labelNames)[number]>;
  /** weft_node_certificate_renewals_total{reason}: agent/src/config-stream.ts NodeRenewalReason. */
  readonly nodeCertificateRenewals: Counter<'reason'>;

  constructor() {
    const registers = [this.registry];
    this.opened = new Counter({ name: 'istio_tcp_connections_opened_total', help: 'The total number of TCP connections opened', labelNames: TRAFFIC_LABELS, registers });
    this.closed = new Counter({ name: 'istio_tcp_connections_closed_total', help: 'The total number of TCP connections closed', labelNames: TRAFFIC_LABELS, registers });
    const metrics = this;
    // Bytes of open connections are added at every scrape (and the rest at the close), so a
    // long-lived connection's bytes show while it lasts, as Envoy's and ztunnel's do.
    const collect = () => metrics.countOpenBytes();
    this.sent = new Counter({ name: 'istio_tcp_sent_bytes_total', help: 'Bytes sent during response (destination to source) of TCP connections', labelNames: TRAFFIC_LABELS, registers, collect });
    this.received = new Counter({ name: 'istio_tcp_received_bytes_total', help: 'Bytes received during request (source to destination) of TCP connections', labelNames: TRAFFIC_LABELS, registers, collect });
    this.denied = new Counter({
      name: 'weft_connections_denied_total',
      help: 'Connections refused by authorization, identity or mTLS mode, by reason (reporter="kernel": refused by the BPF programs)',
      labelNames: ['reporter', 'reason', 'destination_workload', 'destination_workload_namespace'],
      registers,
      collect() {
        metrics.#refreshKernel?.();
      },
    });
    this.dryRun = new Counter({ ...DRY_RUN_METRIC, labelNames: [...DRY_RUN_METRIC.labelNames], registers });
    this.failed = new Counter({ name: 'weft_connections_failed_total', help: 'Connections that could not be established, by reason', labelNames: ['reporter', 'reason'], registers });
    this.forwardedIgnored = new Counter({
      name: 'weft_hbone_forwarded_ignored_total',
      help: 'HBONE forwarded for= claims not honoured (the peer may not speak for that client), by reason',
      labelNames: ['reason'],
      registers,
    });
    this.active = new Gauge({ name: 'weft_connections_active', help: 'Connections currently proxied', labelNames: ['direction'], registers });
    this.sidePortRefused = new Counter({
      name: 'weft_side_port_requests_refused_total',
      help: 'Requests and connections the admin, metrics or readiness port refused by itself, by port and reason (bad_target: the request target is not a URL; peer_uid: an admin client not root; source_connections: its source holds too many; header_timeout, idle: deadlines; debug-token-<why>: a /debug path without the install\'s token, why missing, wrong or unset)',
      labelNames: ['port', 'reason'],
      registers,
    });
    this.nodeCertificateRenewals = new Counter({
      name: 'weft_node_certificate_renewals_total',
      help: 'Renewals of the node certificate the config stream presents, by reason (scheduled: half its lifetime; roots-changed; signer-changed: the CA announced a signing certificate that did not issue it; config-stream-refused: the controller refused the stream, PERMISSION_DENIED, e.g. after it moved to a new intermediate)',
      labelNames: ['reason'],
      registers,
    });
    this.enrolmentRefused = new Counter({
      name: 'weft_pod_enrolment_refused_total',
      help: 'Pods the config lists on this node that were not enrolled at their address because another pod holds it now, by reason (address_reused: the CNI plugin set it up for another pod; network_removed: the plugin removed the listed pod\'s network)',
      labelNames: ['reason'],
      registers,
    });
    this.plaintextListenerFailures = new Counter({
      name: 'weft_plaintext_listener_failures_total',
      help: 'Attempts to open the agent\'s plaintext listener (127.0.0.1:15006) in an enrolled pod that failed, by error code (EADDRINUSE: a process in the pod holds the address); the pod stays enrolled and its plaintext is refused until one succeeds',
      labelNames: ['reason'],
      registers,
    });
    this.enrolmentFailures = new Counter({
      name: 'weft_pod_enrolment_failures_total',
      help: 'Enrolments (or updates of one) of a local pod in the datapath that failed, by error code; a pod already enrolled keeps its enrolment as it was',
      labelNames: ['reason'],
      registers,
    });
    this.podsEnrolmentStale = new Gauge({
      name: 'weft_pods_enrolment_stale',
      help: 'Local pods whose enrolment could not be updated to what the config says and run with the enrolment they had (their plaintext still judged, by the old modes); each is tried again on its own timer',
      registers,
    });
    registerProcessMetrics(this.registry, 'agent');
  }

  /**
   * What a side port (`admin`, `metrics`, `ready`) does with a request or connection it refuses by
   * itself: counts it and logs the reason, the peer and what names it (the target, the uid), at
   * most REFUSAL_LOG_PER_SECOND lines a second per port (the metrics and readiness ports take
   * requests from any pod, the admin port connections from any node process).
   */
  sidePortRefusals(port: 'admin' | 'metrics' | 'ready', log: Logger): OnSidePortRefusal {
    const budget = new LogBudget(REFUSAL_LOG_PER_SECOND, (count) =>
      log.warn('side port refusals not logged (rate limit)', { port, count, perSecond: REFUSAL_LOG_PER_SECOND }));
    return (reason, socket, fields = {}) => {
      this.sidePortRefused.inc({ port, reason });
      if (!budget.take()) return;
      const named = Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, typeof v === 'string' ? clip(v) : v]));
      log.warn(`side port ${SIDE_PORT_REFUSAL_MESSAGES[reason]}`, { port, reason, peer: `${socket.remoteAddress}:${socket.remotePort}`, ...named });
    };
  }

  /** Open connections whose bytes are counted while they last (ConnectionRecord.countWhileOpen). */
  readonly #open = new Set<ConnectionRecord>();

  /** @internal ConnectionRecord's registration of a connection counted while open. */
  trackOpen(r: ConnectionRecord, open: boolean): void {
    if (open) this.#open.add(r);
    else this.#open.delete(r);
  }

  /** Adds the bytes every open connection has moved since the last count (each scrape calls it). */
  countOpenBytes(): void {
    for (const r of this.#open) r.countBytes();
  }

  #certs: CertManager | undefined;
  /** Per kernel refusal reason: events counted with labels, counts added as `unknown`, the counter at the last scrape. */
  #kernel = new Map<string, { events: number; unknown: number; prev: number | undefined }>();
  #refreshKernel: (() => void) | undefined;

  #kernelState(reason: string): { events: number; unknown: number; prev: number | undefined } {
    let st = this.#kernel.get(reason);
    if (!st) this.#kernel.set(reason, st = { events: 0, unknown: 0, prev: undefined });
    return st;
  }

  /**
   * One refusal the kernel reported on its ring buffer (weft_refusals), counted in
   * weft_connections_denied_total{reporter="kernel", reason} with the refused destination's workload
   * labels from the model (`unknown` when the address is no local workload's).
   */
  kernelRefusal(reason: string, dest: { name: string; namespace: string } | undefined): void {
    this.denied.inc({ reporter: 'kernel', reason, destination_workload: dest?.name ?? 'unknown', destination_workload_namespace: dest?.namespace ?? 'unknown' });
    this.#kernelState(reason).events++;
  }

  /**
   * Refusals the kernel made before any connection reached the agent (a RST to a STRICT pod, a
   * dropped fragment, IPv6, no agent listener) are counted per ring-buffer event (kernelRefusal);
   * the node-wide BPF counters (`read`, by name) are the total. At each scrape, what the counters
   * counted up to the previous scrape and no event accounted for (a full ring, refusals from before
   * this agent started) is added with destination `unknown`: one scrape late, so that an event
   * still on its way is not counted twice.
   */
  watchKernelRefusals(read: () => Record<string, number>): void {
    this.#refreshKernel = () => {
      let now: Record<string, number>;
      try { now = read(); } catch { return; }
      for (const [reason, n] of Object.entries(now)) {
        const st = this.#kernelState(reason);
        const due = st.prev === undefined ? 0 : st.prev - st.events - st.unknown;
        if (due > 0) {
          this.denied.inc({ reporter: 'kernel', reason, destination_workload: 'unknown', destination_workload_namespace: 'unknown' }, due);
          st.unknown += due;
        }
        st.prev = n;
      }
    };
  }

  /**
   * weft_splice_sockets_total{event}: what the same-node splice's readers' tracepoints counted on
   * this node (`read`, the node-wide BPF counters by name): `splice_reader`, pod sockets seen
   * reading with splice(2), sendfile(2) or zerocopy receive (nothing is redirected to them);
   * `stranded`, those that turned to it with redirected bytes unread (the agent reset their
   * connection); `fionread`, those that asked FIONREAD (answered from the redirect queue only).
   * Follows the counters at each scrape; they live as long as the node's maps, across agents.
   */
  watchSpliceCounters(read: () => { splice_reader_splice: number; splice_stranded: number; splice_reader_fionread: number }): void {
    const events = { splice_reader: 'splice_reader_splice', stranded: 'splice_stranded', fionread: 'splice_reader_fionread' } as const;
    const counted = new Map<string, number>();
    new Counter({
      name: 'weft_splice_sockets_total',
      help: 'Same-node splice: pod sockets read with splice(2) (splice_reader), stranded with redirected bytes unread (stranded: connection reset), asking FIONREAD (fionread), from the node\'s BPF counters',
      labelNames: ['event'],
      registers: [this.registry],
      collect() {
        let now: ReturnType<typeof read>;
        try { now = read(); } catch { return; }
        for (const [event, field] of Object.entries(events)) {
          const due = now[field] - (counted.get(event) ?? 0);
          this.inc({ event }, Math.max(0, due));
          counted.set(event, Math.max(now[field], counted.get(event) ?? 0));
        }
      },
    });
  }

  /**
   * Certificate metrics of `certs` (call once, after creating the CertManager):
   * - weft_certificate_renewal_failures_total{reason}: failed signing attempts (initial issue or
   *   renewal), by error code (WEFT_CA_UNAVAILABLE while the controller is down);
   * - weft_certificate_rotations_total: certificates replaced by a renewed one;
   * - weft_certificates{state}: certificates held, by state (valid, renewing, expired);
   * - weft_certificate_expiry_timestamp_seconds{identity}: when each held certificate expires
   *   (alert on `... - time() < 3600`).
   */
  watchCertificates(certs: CertManager): void {
    if (this.#certs) throw new Error('AgentMetrics.watchCertificates: already watching a certificate manager');
    this.#certs = certs;
    const registers = [this.registry];
    const failures = new Counter({
      name: 'weft_certificate_renewal_failures_total',
      help: 'Failed attempts to get a workload certificate signed (initial or renewal), by error code',
      labelNames: ['reason'],
      registers,
    });
    const rotations = new Counter({ name: 'weft_certificate_rotations_total', help: 'Workload certificates replaced by a renewed one', registers });
    new Gauge({
      name: 'weft_certificates',
      help: 'Workload certificates held, by state (valid, renewing, expired)',
      labelNames: ['state'],
      registers,
      collect() {
        const counts = { valid: 0, renewing: 0, expired: 0 };
        for (const c of certs.list()) counts[c.state]++;
        for (const [state, n] of Object.entries(counts)) this.set({ state }, n);
      },
    });
    new Gauge({
      name: 'weft_certificate_expiry_timestamp_seconds',
      help: 'Expiry (notAfter, Unix seconds) of each workload certificate the agent holds, by SPIFFE identity',
      labelNames: ['identity'],
      registers,
      collect() {
        this.reset();
        for (const c of certs.list()) this.set({ identity: c.identity }, Math.floor(c.notAfter.getTime() / 1000));
      },
    });
    certs.on('renewalFailed', (_identity, err) => failures.inc({ reason: err.code }));
    certs.on('rotated', () => rotations.inc());
  }
}

/** What is known about a connection when the agent decides to carry (or refuse) it. */
export interface ConnectionOpen {
  reporter: Exclude<Reporter, 'waypoint'>;
  source: Peer;
  destination: Peer;
  service?: ServiceRef | undefined;
  security: SecurityPolicy;
  /** Client address as `ip:port`. */
  srcAddr: string;
  /** Pod name of the source, when it is a pod the reporter knows (access log only). */
  srcPod?: string | undefined;
  /** Address the connection goes to (the pod's, or the service address it dialled), `ip:port`. */
  dstAddr: string;
  /** The HBONE `:authority` when tunnelled (the address inside the tunnel). */
  hboneAddr?: string | undefined;
  dstPod?: string | undefined;
  /** Extra access-log fields (`via` for a waypoint). */
  extra?: Record<string, unknown>;
  /**
   * The access-log settings (Telemetry) of each workload whose line this is: the reporter's own; a
   * same-node connection's destination's too, whose agent is this one and writes no other line of it.
   */
  logging?: ReadonlyArray<AccessLogging | undefined>;
  /**
   * Given (a same-node connection), the line is the destination's inbound line as well: its copy
   * (accessLogSink) says direction "inbound", counts bytes as the destination does, and leaves out
   * these fields of `extra`, which only the reporter (the client) knew.
   */
  clientOnly?: readonly string[];
}

export interface ConnectionOutcome {
  /** Source to destination (request direction). */
  bytesToDestination: number;
  /** Destination to source. */
  bytesToSource: number;
  error?: string | undefined;
  /** response_flags: DENY, CONNECT, or none. */
  flags?: string;
}

/**
 * One connection, for metrics and the access log alike (ztunnel's ConnectionResult): created when
 * the agent decides, which counts istio_tcp_connections_opened_total; `close()` once, which counts
 * the close and the bytes and writes the line. Istio's byte metrics are from the destination's
 * view in both reporters: received = request bytes, sent = response bytes; the log's
 * bytes_sent / bytes_recv are the reporter's own pod's (as ztunnel writes them).
 */
export class ConnectionRecord {
  readonly labels: TcpLabels;
  readonly #m: AgentMetrics;
  readonly #open: ConnectionOpen;
  readonly #log: AccessLogSink;
  readonly #started: number;
  #closed = false;
  /** Bytes already added to the counters (request direction, response direction). */
  #counted = { toDestination: 0, toSource: 0 };
  #live: (() => { toDestination: number; toSource: number }) | undefined;
  #extra: Record<string, unknown> | undefined;

  /** `started`: when the connection was accepted (default now). */
  constructor(metrics: AgentMetrics, open: ConnectionOpen, log: AccessLogSink, started = Date.now()) {
    this.#started = started;
    this.#m = metrics;
    this.#open = open;
    this.#log = log;
    this.labels = trafficLabels({ ...open, protocol: 'tcp', flags: FLAG_NONE });
    metrics.opened.inc(this.labels);
  }

  /** Adds access-log fields known only once the connection was judged (the dry-run results). */
  annotate(fields: Record<string, unknown>): void {
    if (Object.keys(fields).length > 0) this.#extra = { ...this.#extra, ...fields };
  }

  /**
   * Counts the bytes of this connection while it is open, read from the socket that faces the
   * source (bytes read = request direction) or the destination (bytes written = request
   * direction); the close adds what remains of the outcome's totals.
   */
  countWhileOpen(socket: { readonly bytesRead: number; readonly bytesWritten: number }, facing: 'source' | 'destination'): void {
    if (this.#closed) return;
    this.#live = facing === 'source'
      ? () => ({ toDestination: socket.bytesRead, toSource: socket.bytesWritten })
      : () => ({ toDestination: socket.bytesWritten, toSource: socket.bytesRead });
    this.#m.trackOpen(this, true);
  }

  /** @internal Adds the bytes moved since the last count (AgentMetrics.countOpenBytes). */
  countBytes(totals = this.#live?.()): void {
    if (!totals) return;
    const m = this.#m;
    const req = (totals.toDestination || 0) - this.#counted.toDestination;
    const res = (totals.toSource || 0) - this.#counted.toSource;
    if (req > 0) { m.received.inc(this.labels, req); this.#counted.toDestination += req; }
    if (res > 0) { m.sent.inc(this.labels, res); this.#counted.toSource += res; }
  }

  close(outcome: ConnectionOutcome): void {
    if (this.#closed) return;
    this.#closed = true;
    const labels = outcome.flags && outcome.flags !== FLAG_NONE ? { ...this.labels, response_flags: outcome.flags } : this.labels;
    const m = this.#m;
    m.closed.inc(labels);
    if (this.#live) {
      m.trackOpen(this, false);
      this.#live = undefined;
      this.countBytes({ toDestination: outcome.bytesToDestination, toSource: outcome.bytesToSource });
    } else {
      if (outcome.bytesToDestination) m.received.inc(labels, outcome.bytesToDestination);
      if (outcome.bytesToSource) m.sent.inc(labels, outcome.bytesToSource);
    }
    const o = this.#open;
    const mtls = o.security === 'mutual_tls';
    const l = labels;
    const known = (v: string) => (v === 'unknown' ? undefined : v);
    const outbound = o.reporter === 'source';
    // Keys as ztunnel writes them (src.*, dst.*, direction, bytes_sent, bytes_recv, duration, error).
    const entry: Record<string, unknown> = {
      msg: 'connection complete',
      'src.addr': o.srcAddr,
      'src.workload': o.srcPod ?? known(l.source_workload),
      'src.namespace': known(l.source_workload_namespace),
      'src.identity': mtls ? known(l.source_principal) : undefined,
      // Multi-cluster: the caller's cluster (its baggage), e.g. behind another network's gateway.
      'src.cluster': known(l.source_cluster),
      'dst.addr': o.dstAddr,
      'dst.hbone_addr': o.hboneAddr,
      'dst.service': known(l.destination_service),
      'dst.workload': o.dstPod ?? known(l.destination_workload),
      'dst.namespace': known(l.destination_workload_namespace),
      'dst.identity': mtls ? known(l.destination_principal) : undefined,
      'dst.cluster': known(l.destination_cluster),
      direction: outbound ? 'outbound' : 'inbound',
      connection_security_policy: o.security,
      ...o.extra,
      ...this.#extra,
      bytes_sent: outbound ? outcome.bytesToDestination : outcome.bytesToSource,
      bytes_recv: outbound ? outcome.bytesToSource : outcome.bytesToDestination,
      duration: `${Date.now() - this.#started}ms`,
      ...(l.response_flags !== FLAG_NONE ? { response_flags: l.response_flags } : {}),
      ...(outcome.error ? { error: outcome.error } : {}),
    };
    let theirs: Record<string, unknown> | undefined;
    if (o.clientOnly) {
      theirs = { ...entry, direction: 'inbound', bytes_sent: entry.bytes_recv, bytes_recv: entry.bytes_sent };
      for (const k of o.clientOnly) delete theirs[k];
    }
    this.#log(entry, o.logging, theirs);
  }
}

/**
 * The service an inbound connection to `workload:port` was most likely addressed to (the tunnel
 * names the pod, not the service; ztunnel guesses the same way): the first of the workload's
 * services, by name, with a port that targets `port`, else its only service.
 */
export function inboundService(services: readonly Service[], workload: Workload, port: number): Service | undefined {
  const mine = services.filter((s) => workload.services.includes(`${s.namespace}/${s.name}`)).sort((a, b) => (a.hostname < b.hostname ? -1 : 1));
  for (const s of mine) {
    const ep = s.endpoints.find((e) => e.ip === workload.ip);
    if (ep && Object.values(ep.ports).includes(port)) return s;
    if (!ep && s.ports.some((p) => p.targetPort === port)) return s;
  }
  return mine.length === 1 ? mine[0] : undefined;
}
