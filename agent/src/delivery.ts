// Local delivery: the last step of every connection into a pod on this node, whatever brought it
// (an HBONE tunnel, a same-node mesh client, plaintext the kernel steered to the agent). One place
// authorizes it against the pod's L4 AuthorizationPolicies and one place connects to the pod.
//
// The agent connects from a socket it creates inside the pod's network namespace, bound to the
// pod's own address, to the pod's address: the connection never leaves the namespace. That is how
// the kernel tells the agent's deliveries from everyone else's: weft_lookup lets through a
// connection whose source is the pod's own address (no packet from outside the namespace can
// carry it: the kernel drops it as a martian) and steers the rest to the agent; no node address,
// which every process on the node could use, is trusted. The socket is tagged in weft_sk_tag
// first so connect4 does not capture it, and the pod's accept() reports the real client
// (weft_peer_override).
import type { Duplex } from 'node:stream';
import { closeSync } from 'node:fs';
import { createBoundSocketInNetns, localPortRange, PortCursor } from '../libbpf/index.ts';

/** net.ipv4.ip_local_port_range's default, for a namespace whose own cannot be read. */
const DEFAULT_LOCAL_PORT_RANGE = { from: 32768, to: 60999 };

/**
 * Connects to one pod that may wait for its application to accept at once. Envoy's circuit breaker
 * allows 1,024 pending requests; a delivery is a TCP connect, and with a CPU hog beside
 * test/e2e/reliability-load.test.ts more than 1,024 waited in bursts that all completed (SYNs a
 * full accept queue dropped, retransmitted a second later), so the bound is four times that: it is
 * there to stop a pile-up that can only end in timeouts, not to shape bursts.
 */
export const DEFAULT_MAX_PENDING_CONNECTS = 4096;
import { dryRunLabels, dryRunLogFields, dryRunOf, evaluate, type CompiledPolicies, type ConnectionAttributes, type Decision, type DryRunResult, type ShadowEngine } from '../../lib/policy/authz.ts';
import type { AgentConfig, Workload } from '../../lib/model/mesh.ts';
import { LogBudget, type Logger, REFUSAL_LOG_PER_SECOND } from '../../lib/log.ts';
import type { AgentState } from './state.ts';
import type { AgentMetrics } from './metrics.ts';
import { connectTcp, OverloadedError, UpstreamConnectError } from './connect.ts';

export class DeniedError extends Error {
  readonly code = 'WEFT_DENIED';
  readonly status: number;
  readonly policy: string | undefined;
  /** The label of weft_connections_denied_total: 'policy', 'plaintext_strict'. */
  readonly reason: string;
  /** What the dry-run policies would have decided (the access log's istio_dry_run_* fields). */
  readonly dryRun: DryRunResult[] | undefined;
  constructor(message: string, status = 403, policy?: string, reason = 'policy', dryRun?: DryRunResult[]) {
    super(message);
    this.name = 'DeniedError';
    this.status = status;
    this.policy = policy;
    this.reason = reason;
    this.dryRun = dryRun;
  }
}

/** What delivery needs from the datapath (the real Datapath, or a test double). */
export interface DeliveryDatapath {
  registerPeer(reg: { local: { ip: string; port: number }; remote: { ip: string; port: number }; client: { ip: string; port: number } }): void;
  unregisterPeer(reg: { local: { ip: string; port: number }; remote: { ip: string; port: number } }): boolean;
  /** Marks one of the agent's sockets so connect4 never captures it. */
  tagAgentSocket(fd: number): void;
  /** The pod socket that accepts a connection from `bound` is filed for a splice (bpf/include/weft_splice.h). */
  expectSplice?(bound: { ip: string; port: number }): void;
  unexpectSplice?(bound: { ip: string; port: number }): void;
}

/** What an open delivery's last verdict rested on besides the policies. */
interface JudgedOn {
  dest: Workload;
  owner: string | undefined;
}

export interface OpenDelivery {
  dest: Workload;
  port: number;
  source: Omit<ConnectionAttributes, 'destinationPort' | 'destinationIp'>;
  /** The identity a waypoint said it carries (authorize's `caller`). */
  caller?: string | undefined;
  /** The agent's socket to the pod: destroyed when a new policy no longer allows the delivery. */
  upstream: Duplex;
  /** Steered plaintext (no identity): judged again as plaintext, the pod's mTLS mode included. */
  plaintext?: boolean;
  /**
   * Came through the east-west gateway (the agent's gateway port): judged again by the gateway's
   * rules too (AgentState.gatewayRefusal), which the exported Services and waypoints decide.
   */
  throughGateway?: boolean;
  /**
   * The state's version (AgentState.version) its judgement before connecting read: a push applied
   * while it connected is one reauthorize did not see, so track judges it again at once.
   */
  judgedAt: number;
}

/**
 * What of the config changed (LocalDelivery.reauthorize): the policies, the workloads, the Services
 * or waypoints (`services`). A kind left out did not change.
 */
export interface ConfigChanges {
  policies?: boolean;
  workloads?: boolean;
  services?: boolean;
}

/** Everything changed: every open delivery judged again by everything. */
const EVERYTHING: Readonly<ConfigChanges> = { policies: true, workloads: true, services: true };

export interface LocalDeliveryOptions {
  state: AgentState;
  datapath: DeliveryDatapath;
  metrics: AgentMetrics;
  log: Logger;
  /** Connects to one pod waiting for its application to accept, beyond which new ones are refused at once. Default 1,024. */
  maxPendingConnects?: number;
}

export class LocalDelivery {
  readonly #state: AgentState;
  readonly #datapath: DeliveryDatapath;
  readonly #metrics: AgentMetrics;
  readonly #log: Logger;
  /**
   * pod IP → its network-namespace file, the source ports handed out there and the connects to it
   * not yet accepted, for every pod this agent enrolled.
   */
  readonly #netns = new Map<string, { path: string; ports: PortCursor; pending: number }>();
  readonly #maxPending: number;
  /**
   * Every open delivery, whatever brought it, until its pod side closes, with what its last
   * verdict rested on besides the policies (#sameInputs; reauthorize).
   */
  readonly #open = new Map<OpenDelivery, JudgedOn>();
  /**
   * The open deliveries whose verdict reads the Services or waypoints too, a part of #open: those
   * the east-west gateway carried (its rules are the exported Services, AgentState.gatewayRefusal)
   * and steered plaintext (the client's address may be a Service endpoint's, addressOwner). A push
   * changing only Services or waypoints, as every endpoint change anywhere does, judges these only.
   */
  readonly #onServices = new Set<OpenDelivery>();
  /** 'connection denied' lines a second: anyone who can reach a pod can cause them (each is counted). */
  readonly #deniedLog: LogBudget;
  /** The config last applied (configApplied): what of it changed says what to judge again. */
  #applied: AgentConfig | undefined;
  /** 'connection dry-run denied' lines a second, for the same reason. */
  readonly #dryRunLog: LogBudget;

  constructor(opts: LocalDeliveryOptions) {
    this.#state = opts.state;
    this.#datapath = opts.datapath;
    this.#metrics = opts.metrics;
    this.#log = opts.log;
    this.#maxPending = opts.maxPendingConnects ?? DEFAULT_MAX_PENDING_CONNECTS;
    this.#deniedLog = new LogBudget(REFUSAL_LOG_PER_SECOND, (count) =>
      opts.log.warn('connection denials not logged (rate limit; every one is counted)', { count, perSecond: REFUSAL_LOG_PER_SECOND }));
    this.#dryRunLog = new LogBudget(REFUSAL_LOG_PER_SECOND, (count) =>
      opts.log.warn('dry-run denials not logged (rate limit; every one is counted in weft_authz_dry_run_total)', { count, perSecond: REFUSAL_LOG_PER_SECOND }));
  }

  /**
   * The agent enrolled a pod: deliveries to it go through this namespace. Enrolled again in the same
   * namespace (every reconcile), it keeps its entry: its count of connects waiting to be accepted
   * (the limit) and its port cursor.
   */
  podEnrolled(podIp: string, netnsPath: string): void {
    if (this.#netns.get(podIp)?.path === netnsPath) return;
    let range = DEFAULT_LOCAL_PORT_RANGE;
    try {
      range = localPortRange(netnsPath);
    } catch (err) {
      this.#log.warn('cannot read the pod\'s local port range; using the kernel default', { netns: netnsPath, error: (err as Error).message });
    }
    this.#netns.set(podIp, { path: netnsPath, ports: new PortCursor(range), pending: 0 });
  }

  podRemoved(podIp: string): void {
    this.#netns.delete(podIp);
  }

  /**
   * Throws DeniedError (and counts it) unless the destination's policies allow the connection.
   * `caller`: the identity a waypoint says it carries (lib/hbone/forwarded.ts CALLER_HEADER). The
   * peer (the waypoint) is judged as Istio's ztunnel judges it; the DENY policies judge the caller
   * too, so a DENY naming a client holds whatever waypoint, in whatever cluster, it came through.
   * That can only refuse more, which is why a claim needs no entitlement.
   */
  authorize(dest: Workload, port: number, src: Omit<ConnectionAttributes, 'destinationPort'>, caller?: string): DryRunResult[] | undefined {
    return this.#judge(dest, port, src, { caller });
  }

  /**
   * Judges plaintext (a connection without identity) to a local pod: refused when the pod's mode on
   * that port is STRICT (`plaintext_strict`), else by its policies as a caller without identity.
   * An address that belongs to an enrolled workload grants nothing: such a workload's own
   * connections always come with its identity (HBONE or the same-node path), so plaintext from its
   * address is someone else using it (root on a node, a host on the path). Its DENY policies still
   * see the address; an ALLOW must admit the connection without it (an `ipBlocks` naming the
   * workload does not let the impostor in), as the HBONE path refuses a `for=` claim naming another
   * workload's address.
   */
  authorizePlaintext(dest: Workload, port: number, clientIp: string): DryRunResult[] | undefined {
    return this.#judgePlaintext(dest, port, clientIp, false);
  }

  /** authorizePlaintext's judgement; `rejudge`: see #judge. */
  #judgePlaintext(dest: Workload, port: number, clientIp: string, rejudge: boolean): DryRunResult[] | undefined {
    if (this.#state.modeFor(dest, port) === 'STRICT') {
      this.#metrics.denied.inc({ reporter: 'destination', reason: 'plaintext_strict', destination_workload: dest.workloadName, destination_workload_namespace: dest.namespace });
      if (this.#deniedLog.take()) this.#log.info('connection denied', { reason: 'plaintext to a STRICT pod', source: clientIp, destination: `${dest.namespace}/${dest.name}:${port}` });
      throw new DeniedError(`plaintext to ${dest.namespace}/${dest.name}:${port}, whose PeerAuthentication mode is STRICT`, 403, 'mtls:STRICT', 'plaintext_strict');
    }
    return this.#judge(dest, port, { sourceIp: clientIp }, { addressOf: this.#state.addressOwner(clientIp)?.spiffeId, rejudge });
  }

  /**
   * The one judgement of a delivery by the destination's policies, counted and logged once
   * whatever it rests on. `caller`: see authorize. `addressOf`: the mesh workload whose address a
   * plaintext client's is (see authorizePlaintext); the ALLOW side must then admit it without
   * the address. Dry-run policies (Istio's istio.io/dry-run) never decide: each shadow engine makes
   * the same judgement with its policies alone, counted in weft_authz_dry_run_total at the first
   * judgement (`rejudge`: a policy change judging an open delivery again counts nothing) and
   * returned for the access log.
   */
  #judge(dest: Workload, port: number, src: Omit<ConnectionAttributes, 'destinationPort'>, opts: { caller?: string | undefined; addressOf?: string | undefined; rejudge?: boolean }): DryRunResult[] | undefined {
    const { caller } = opts;
    const policies = this.#state.policiesFor(dest);
    const attributes: ConnectionAttributes = { ...src, destinationIp: dest.ip, destinationPort: port };
    const decision = this.#decide(policies, attributes, opts, 'enforced');
    const dryRun = opts.rejudge ? undefined : dryRunOf(policies, (engine) => this.#decide(policies, attributes, opts, engine));
    const source = src.sourcePrincipal ?? src.sourceIp;
    const destination = `${dest.namespace}/${dest.name}:${port}`;
    // AUDIT policies never decide; a match is logged.
    if (decision.audit) this.#log.info('connection audited', { policies: decision.audit, allowed: decision.allowed, source, destination });
    for (const r of dryRun ?? []) {
      this.#metrics.dryRun.inc(dryRunLabels(r));
      if (r.result === 'denied' && this.#dryRunLog.take()) this.#log.info('connection dry-run denied', { engine: r.action, ...(r.policy !== undefined ? { policy: r.policy } : { dryRunPolicies: r.policies }), reason: r.reason, allowed: decision.allowed, source, ...(caller !== undefined ? { caller } : {}), destination });
    }
    if (decision.allowed) return dryRun;
    // A DENY names itself; a refusal for want of a matching ALLOW names the ALLOW policies in force.
    const policy = decision.policy ?? policies.list.filter((p) => p.action === 'ALLOW' && !p.dryRun).map((p) => p.id).join(',');
    this.#metrics.denied.inc({ reporter: 'destination', reason: 'policy', destination_workload: dest.workloadName, destination_workload_namespace: dest.namespace });
    if (this.#deniedLog.take()) this.#log.info('connection denied', { reason: decision.reason, policy, source, ...(caller !== undefined ? { caller } : {}), destination, ...dryRunLogFields(dryRun) });
    throw new DeniedError(decision.reason, 403, policy, 'policy', dryRun);
  }

  /**
   * One judgement (`engine`: the enforced policies, or one shadow engine's dry-run policies): the
   * peer, then, for DENY, the caller a waypoint carries, then for plaintext from a mesh workload's
   * address the same without the address.
   */
  #decide(policies: CompiledPolicies, attributes: ConnectionAttributes, opts: { caller?: string | undefined; addressOf?: string | undefined }, engine: ShadowEngine | 'enforced'): Decision {
    const { caller, addressOf } = opts;
    let decision = evaluate(policies, attributes, { engine });
    if (decision.allowed && caller !== undefined && caller !== attributes.sourcePrincipal) {
      const { deny } = policies;
      const { sourceNamespace: _peers, ...rest } = attributes;
      const asCaller = deny.list.length > 0 ? evaluate(deny, { ...rest, sourcePrincipal: caller }, { engine }) : undefined;
      if (asCaller && !asCaller.allowed) decision = { ...asCaller, reason: `${asCaller.reason} (the caller ${caller}, carried by ${attributes.sourcePrincipal ?? 'a peer without identity'})` };
    }
    if (decision.allowed && addressOf !== undefined) {
      const { sourceIp: _address, ...rest } = attributes;
      const without = evaluate(policies, rest, { engine });
      if (!without.allowed) {
        const { audit: _audit, ...refusal } = without;
        decision = { ...refusal, ...(decision.audit ? { audit: decision.audit } : {}), reason: `${without.reason} (plaintext from ${attributes.sourceIp}, the address of mesh workload ${addressOf}, whose own connections carry its identity: the address grants nothing)` };
      }
    }
    return decision;
  }

  /**
   * Keeps an open delivery until its pod side closes, so that a policy change judges it again:
   * an HBONE tunnel's, a same-node mesh client's (spliced or piped) and steered plaintext's alike.
   * One judged by an older config than the state's now (`judgedAt`: a push applied while it
   * connected, which reauthorize did not see) is judged again at once by everything, as a push
   * would: returns why it was closed (counted and logged as reauthorize does; its upstream
   * destroyed), or undefined while it stays open.
   */
  track(d: OpenDelivery): string | undefined {
    this.#open.set(d, { dest: d.dest, owner: this.#ownerOf(d) });
    if (d.throughGateway || d.plaintext) this.#onServices.add(d);
    d.upstream.once('close', () => this.#forget(d));
    return d.judgedAt === this.#state.version ? undefined : this.#rejudge(d, EVERYTHING);
  }

  #forget(d: OpenDelivery): void {
    this.#open.delete(d);
    this.#onServices.delete(d);
  }

  /**
   * The state applied a new config: the open deliveries are judged again (reauthorize) when what
   * decided them changed. New or changed policies judge every one. The config stream's client
   * (lib/xds/client.ts) hands over the same array for a kind none of whose resources changed, so
   * comparing references is enough, whatever the size of the config. Changed workloads (a pod's
   * labels pick its policies; its mode and port modes, compiled from PeerAuthentication into the
   * workload, say STRICT: plaintext opened while a pod was PERMISSIVE must not outlive its turn to
   * STRICT) re-judge only the deliveries whose pod (or plaintext client's address) changed; changed
   * Services or waypoints, the deliveries the east-west gateway carried (what it carries,
   * AgentState.gatewayRefusal, is decided by them) and plaintext whose client's address changed
   * owner. The first config judges nothing (nothing was open before it). Returns how many were closed.
   */
  configApplied(config: AgentConfig): number {
    const was = this.#applied;
    this.#applied = config;
    if (!was) return 0;
    const changed: ConfigChanges = {
      policies: config.policies !== was.policies,
      workloads: config.workloads !== was.workloads,
      services: config.services !== was.services || config.waypoints !== was.waypoints,
    };
    return changed.policies || changed.workloads || changed.services ? this.reauthorize(changed) : 0;
  }

  /**
   * What `changed` says changed (default everything): an open delivery is judged again, and one
   * no longer allowed is closed (its denial counted and logged by authorize, as any), as Istio's
   * ztunnel closes connections a new policy denies. Without this a long-lived connection, such as
   * a waypoint's pooled one, would keep carrying a caller a new DENY names. Unless the policies
   * changed, a delivery is judged again only if what its verdict rests on besides them changed
   * (#sameInputs): a push about another pod costs no evaluation; one changing only the Services or
   * waypoints, as every endpoint change anywhere does, looks only at the deliveries that read them
   * (#onServices). A delivery that came through the east-west gateway is judged again by the
   * gateway's rules when the Services or waypoints changed (a lookup in the exported pods, built
   * once per config): a Service no longer exported or no longer sending to the port, or a pod now
   * behind a waypoint, closes it, counted under its label (`not_exported`, `behind_waypoint`) and
   * logged, as at its CONNECT; the gateway's open outer tunnels are judged again likewise
   * (eastwest/src/gateway.ts). Returns how many were closed.
   */
  reauthorize(changed: Readonly<ConfigChanges> = EVERYTHING): number {
    let closed = 0;
    for (const d of changed.policies || changed.workloads ? this.#open.keys() : this.#onServices) {
      if (this.#rejudge(d, changed) !== undefined) closed++;
    }
    return closed;
  }

  /** Judges one open delivery again by what changed (reauthorize); closes it if refused and says why. */
  #rejudge(d: OpenDelivery, changed: Readonly<ConfigChanges>): string | undefined {
    const judged = this.#open.get(d);
    if (!judged) return undefined;
    const dest = this.#state.localWorkload(d.dest.ip) ?? d.dest;
    const notCarried = changed.services && d.throughGateway ? this.#state.gatewayRefusal(dest.ip, d.port, d.source.sourcePrincipal) : undefined;
    if (notCarried) {
      this.#close(d);
      this.#metrics.denied.inc({ reporter: 'destination', reason: notCarried.label, destination_workload: dest.workloadName, destination_workload_namespace: dest.namespace });
      if (this.#deniedLog.take()) this.#log.info('open connection closed: the east-west gateway no longer carries it', { destination: `${dest.namespace}/${dest.name}:${d.port}`, source: d.source.sourcePrincipal, reason: notCarried.reason, label: notCarried.label });
      return notCarried.reason;
    }
    const owner = this.#ownerOf(d);
    if (!changed.policies && owner === judged.owner && this.#sameInputs(judged.dest, dest, d.port)) return undefined;
    try {
      if (d.plaintext && d.source.sourceIp !== undefined) this.#judgePlaintext(dest, d.port, d.source.sourceIp, true);
      else this.#judge(dest, d.port, d.source, { caller: d.caller, rejudge: true });
      this.#open.set(d, { dest, owner });
      return undefined;
    } catch (err) {
      if (!(err instanceof DeniedError)) throw err;
      this.#close(d);
      this.#log.info('open connection closed: the policies no longer allow it', { destination: `${d.dest.namespace}/${d.dest.name}:${d.port}`, source: d.source.sourcePrincipal ?? d.source.sourceIp, ...(d.caller ? { caller: d.caller } : {}), policy: err.policy });
      return err.message;
    }
  }

  #close(d: OpenDelivery): void {
    this.#forget(d);
    d.upstream.destroy();
  }

  /** For plaintext, the mesh workload whose address the client's is (authorizePlaintext judges by it). */
  #ownerOf(d: OpenDelivery): string | undefined {
    return d.plaintext && d.source.sourceIp !== undefined ? this.#state.addressOwner(d.source.sourceIp)?.spiffeId : undefined;
  }

  /**
   * Whether a pod decides a delivery as it did: its uid, namespace and labels (policySelectsWorkload)
   * and its mode on the port (a plaintext one is refused under STRICT). Compared only at a push.
   */
  #sameInputs(was: Workload, now: Workload, port: number): boolean {
    if (was === now) return true;
    if (was.uid !== now.uid || was.namespace !== now.namespace || this.#state.modeFor(was, port) !== this.#state.modeFor(now, port)) return false;
    const a = was.labels ?? {};
    const b = now.labels ?? {};
    const keys = Object.keys(a);
    return keys.length === Object.keys(b).length && keys.every((k) => a[k] === b[k]);
  }

  /**
   * Connects to a local pod from inside its network namespace, so that the pod sees `client` as
   * its peer. Rejects with UpstreamConnectError when the pod's namespace is unknown (not enrolled
   * by this agent) or the pod refuses. With `splice`, the pod's socket is filed for a same-node
   * splice as it accepts (agent/src/splice.ts).
   */
  async connectToPod(dest: Workload, port: number, client: { ip: string; port: number }, timeoutMs: number, opts: { splice?: boolean; signal?: AbortSignal } = {}): Promise<Duplex> {
    const target = `${dest.ip}:${port}`;
    const netns = this.#netns.get(dest.ip);
    if (!netns) throw new UpstreamConnectError(target, Object.assign(new Error(`pod ${dest.namespace}/${dest.name} is not enrolled by this agent`), { code: 'WEFT_NOT_ENROLLED' }));
    if (netns.pending >= this.#maxPending) {
      // The application is not accepting as fast as connections come (its listen queue is full,
      // so the kernel drops SYNs and each connect waits out retransmissions). Queueing more would
      // only hold a source port and a tunnel each until they time out, and the callers' retries
      // would add to the pile: refuse at once, as Envoy's circuit breaker does past its pending
      // limit, and the caller learns in a round trip instead of a timeout.
      throw new OverloadedError(target, `${netns.pending} connections to pod ${dest.namespace}/${dest.name} are waiting for it to accept (the agent allows ${this.#maxPending}); refused at once`);
    }
    let bound: { fd: number; port: number } | undefined;
    try {
      bound = createBoundSocketInNetns(netns.path, { bind: { host: dest.ip, port: 0 }, portSearch: netns.ports.next });
      netns.ports.used(bound.port);
      this.#datapath.tagAgentSocket(bound.fd);
    } catch (err) {
      if (bound) closeSync(bound.fd);
      throw new UpstreamConnectError(target, err as Error);
    }
    const reg = { local: { ip: dest.ip, port }, remote: { ip: dest.ip, port: bound.port } };
    let registered = false;
    try {
      this.#datapath.registerPeer({ ...reg, client: { ip: client.ip, port: client.port || bound.port } });
      registered = true;
    } catch (err) {
      this.#log.warn('cannot register the client address for the pod', { error: (err as Error).message });
    }
    const expect = opts.splice && this.#datapath.expectSplice ? { ip: dest.ip, port: bound.port } : undefined;
    if (expect) {
      try {
        this.#datapath.expectSplice!(expect);
      } catch (err) {
        this.#log.warn('cannot file the connection for a splice; the agent carries it', { error: (err as Error).message });
      }
    }
    netns.pending++;
    const socket = await connectTcp(target, { bound, timeoutMs, ...(opts.signal ? { signal: opts.signal } : {}) }).catch((err: Error) => {
      if (registered) this.#datapath.unregisterPeer(reg);
      if (expect) this.#datapath.unexpectSplice?.(expect);
      throw err;
    }).finally(() => { netns.pending--; });
    if (registered) socket.once('close', () => this.#datapath.unregisterPeer(reg));
    // Kept while the socket lives (its bound port is its own till then): the pod's accept may
    // complete a moment after our connect does.
    if (expect) socket.once('close', () => this.#datapath.unexpectSplice?.(expect));
    return socket;
  }
}
