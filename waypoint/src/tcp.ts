// TCP passthrough: tunnels that do not carry HTTP (TLS from the application, databases, anything
// server-first) still reach the service. The waypoint authorizes the connection on what it can see
// (peer identity, source address, port), picks an endpoint with the service's load balancer and
// outlier state, and copies bytes both ways.
import type { Duplex } from 'node:stream';
import { pipeBidirectional } from '../../lib/hbone/index.ts';
import type { Service } from '../../lib/model/mesh.ts';
import { serviceKey, type Snapshot } from './config.ts';
import { UpstreamConnectError } from './errors.ts';
import * as F from './flags.ts';
import { splitHostPort } from './headers.ts';
import { OVERFLOW, type Cluster } from './resilience.ts';
import type { TcpRecord, Telemetry } from './telemetry.ts';
import type { UpstreamEndpoint, UpstreamPool } from './upstream.ts';
import type { ConnContext } from './proxy.ts';

/**
 * A passed-through connection with no bytes either way for this long is closed, both sides (Envoy's
 * tcp_proxy idle_timeout, Istio connectionPool.tcp.idleTimeout, both 1 h by default); the service's
 * TrafficPolicy `timeouts.idle` sets it (`0s`: never).
 */
export const DEFAULT_TCP_IDLE_TIMEOUT_MS = 3_600_000;

export interface TcpEnv {
  snapshot(): Snapshot;
  cluster(service: Service, port: number): Cluster;
  pool: UpstreamPool;
  telemetry: Telemetry;
  random: () => number;
}

function reject(d: Duplex): void {
  const s = d as Duplex & { resetAndDestroy?: () => void };
  try {
    if (typeof s.resetAndDestroy === 'function') { s.resetAndDestroy(); return; }
  } catch {
    // Not a TCP handle: a plain destroy below.
  }
  d.destroy();
}

/** Serves one non-HTTP tunnel until either side closes. */
export async function proxyTcp(env: TcpEnv, d: Duplex, conn: ConnContext): Promise<void> {
  const start = Date.now();
  const rec: TcpRecord = { startTime: start, responseFlags: '-' };
  if (conn.peerSpiffeId) rec.sourcePrincipal = conn.peerSpiffeId;
  if (conn.peerMeta) rec.sourceMeta = conn.peerMeta;
  if (conn.clientAddress) rec.sourceAddress = conn.clientAddress;
  const flags = new F.ResponseFlags();
  const fail = (flag: string, detail: string): void => {
    flags.add(flag);
    rec.responseFlags = flags.toString();
    rec.detail = detail;
    rec.durationMs = Date.now() - start;
    reject(d);
    env.telemetry.tcpClose(rec);
  };

  const snap = env.snapshot();
  const service = snap.byAddress.get(conn.target);
  const { host: targetIp, port } = splitHostPort(conn.target);
  if (!service || port === undefined) { fail(F.FLAG_NO_ROUTE, `no service at ${conn.target}`); return; }
  const svcKey = serviceKey(service);
  rec.destinationService = service.hostname;
  rec.destinationServiceKey = svcKey;
  const decision = snap.policies.evaluate(svcKey, {
    ...(conn.peerSpiffeId ? { sourcePrincipal: conn.peerSpiffeId } : {}),
    ...(conn.clientAddress ? { sourceIp: conn.clientAddress } : {}),
    destinationIp: targetIp, destinationPort: port,
  });
  if (decision.audit) rec.auditPolicies = decision.audit;
  if (decision.dryRun) {
    rec.dryRun = decision.dryRun;
    env.telemetry.dryRunResults(decision.dryRun);
  }
  if (!decision.allowed) { fail(F.FLAG_POLICY_DENIED, `denied by AuthorizationPolicy ${decision.policy}: ${decision.reason}`); return; }

  const cluster = env.cluster(service, port);
  const settings = snap.settings.get(svcKey)!;
  const release = await cluster.acquireConnection();
  if (release === OVERFLOW) { fail(F.FLAG_UPSTREAM_OVERFLOW, `${cluster.name} is at maxConnections`); return; }
  const tried = new Set<string>();
  let upstream: Duplex | undefined;
  let lastError: Error | undefined;
  for (let attempt = 0; attempt <= settings.retries.attempts && !d.destroyed; attempt++) {
    const ep = cluster.pick(env.random, tried);
    if (!ep) break;
    tried.add(ep.key);
    rec.upstreamHost = ep.key;
    rec.destinationEndpoint = ep.endpoint;
    const target: UpstreamEndpoint = { ip: ep.ip, port: ep.port };
    if (ep.endpoint.enrolled && ep.endpoint.nodeIp && ep.endpoint.spiffeId) {
      target.node = ep.endpoint.nodeIp;
      target.spiffeId = ep.endpoint.spiffeId;
      if (ep.endpoint.gateway) target.gateway = ep.endpoint.gateway;
    }
    try {
      // One stream per caller: the destination's agent learns the original client (RFC 7239 for=),
      // which it believes because it comes from a waypoint serving the destination.
      upstream = await env.pool.openStream(target, settings.timeouts.connectMs, conn.clientAddress ? { ip: conn.clientAddress, port: conn.clientPort ?? 0 } : undefined, conn.peerSpiffeId);
      cluster.report(ep, { kind: 'response', status: 200 });
      ep.active++;
      upstream.once('close', () => { ep.active--; });
      break;
    } catch (err) {
      lastError = err as Error;
      cluster.report(ep, { kind: 'connect-failure' });
    }
  }
  if (!upstream) {
    release();
    if (!lastError) fail(F.FLAG_NO_HEALTHY_UPSTREAM, `no endpoint for ${cluster.name}`);
    else fail(F.FLAG_UPSTREAM_CONNECT_FAILURE, lastError instanceof UpstreamConnectError ? lastError.message : `connect failed: ${lastError.message}`);
    return;
  }
  env.telemetry.tcpOpen(rec);
  const idleMs = settings.timeouts.idleMs ?? DEFAULT_TCP_IDLE_TIMEOUT_MS;
  const piping = pipeBidirectional(d, upstream, { idleTimeoutMs: idleMs });
  // Protocol detection left the tunnel paused with its first bytes put back.
  if (d.readableFlowing === false) d.resume();
  const result = await piping;
  release();
  if (result.idledOut) {
    flags.add(F.FLAG_STREAM_IDLE_TIMEOUT);
    rec.detail = `idle_timeout: no bytes either way for ${idleMs} ms`;
    env.telemetry.downstreamTimeouts.inc({ protocol: 'tcp', timeout: 'idle' });
  }
  rec.receivedBytes = result.bytesAtoB;
  rec.sentBytes = result.bytesBtoA;
  rec.durationMs = Date.now() - start;
  // An idle timeout closed both sides itself and names no side: no peer reset them.
  if (result.abortedBy === 'b') flags.add(F.FLAG_UPSTREAM_RESET);
  else if (result.abortedBy === 'a') flags.add(F.FLAG_DOWNSTREAM_TERMINATED);
  rec.responseFlags = flags.toString();
  env.telemetry.tcpClose(rec);
}
