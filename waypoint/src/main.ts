// weft waypoint: one per namespace that declares a Waypoint. Terminates HBONE (mTLS, HTTP/2
// CONNECT) on --listen, applies the namespace's routes, resilience and L7 policy from the config
// stream, and originates HBONE to endpoints with its own identity.
//
//   node waypoint/src/main.ts --namespace shop --name waypoint --controller weft-controller:15012
//
// Identity: --cert-file/--key-file/--ca-file (static material, e.g. mounted), or a certificate from
// the controller's certificate service authenticated with --token-file, renewed at half its life,
// retried with backoff, and following root rotations (lib/identity/issued.ts; its metrics in waypoint/src/identity.ts).
import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { countFlag, oneOfFlag, runMain, trustDomainFlags } from '../../lib/main.ts';
import * as grpc from '@grpc/grpc-js';
import { Counter, Gauge, type Registry } from 'prom-client';
import { registerProcessMetrics } from '../../lib/telemetry/process.ts';
import { registerHbonePoolMetrics } from '../../lib/telemetry/hbone-pool.ts';
import { statusListenerLimits } from '../../lib/listener-limits.ts';
import { debugGrantAudience, debugGrantSigners } from '../../lib/identity/debug-grant.ts';
import { HboneServer, HbonePool, HBONE_PORT } from '../../lib/hbone/index.ts';
import { DEFAULT_MAX_WORKLOAD_CERT_LIFETIME_MS, splitPemCertificates, tlsMaterial } from '../../lib/identity/index.ts';
import { clip, jsonLogger, LogBudget, type Logger, REFUSAL_LOG_PER_SECOND } from '../../lib/log.ts';
import { withMemoryRelease } from '../../lib/sys/memory.ts';
import { DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN, spiffeIdOf } from '../../lib/model/mesh.ts';
import { waypointConfigClient, type ConfigClient } from '../../lib/xds/index.ts';
import { adminServer, metricsServer } from './admin.ts';
import { listenHttp, readinessServer } from '../../lib/status-http.ts';
import { FlowTap } from '../../lib/tap.ts';
import { DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_REQUEST_HEADERS_TIMEOUT_MS, WaypointEngine } from './engine.ts';
import { FlagError, formatConfigIssue } from './errors.ts';
import { HboneUpstream, tunnelHandler } from './hbone.ts';
import { ControllerSigner, IssuedIdentity } from '../../lib/identity/index.ts';
import { controllerChannelCredentials, staticWaypointIdentity, watchIdentity, type WaypointIdentity } from './identity.ts';
import { DEFAULT_MAX_REQUESTS, MAX_REQUESTS_CEILING } from './overload.ts';
import { ESCAPED_SLASHES_ACTIONS, PATH_NORMALIZATIONS, type EscapedSlashesAction, type PathNormalization } from './normalize.ts';
import { MAX_TRUSTED_PROXIES } from '../../lib/model/mesh.ts';
import { isDuration, parseDuration } from '../../lib/model/duration.ts';
import type { QuotaRule } from './quota.ts';
import type http from 'node:http';
import { stdoutLines } from '../../lib/sys/line-batch.ts';

export const USAGE = `usage: waypoint/src/main.ts --namespace <ns> --name <name> [options]
  --controller <host:port>     config stream and certificate service (env WEFT_CONTROLLER)
  --listen <host:port>         HBONE (default 0.0.0.0:15008)
  --admin <host:port>          admin: /config_dump /clusters /rejection /stats /certs (default 127.0.0.1:15000)
  --metrics <host:port>        Prometheus /metrics (default 0.0.0.0:15020)
  --ready <host:port>          /healthz/ready (default 0.0.0.0:15021)
  --trust-domain <td>          (default cluster.local)
  --trust-domain-alias <td>    also admit workload identities of this trust domain on HBONE, as the
                               agents and the east-west gateway do (repeatable; multi-cluster with a
                               trust domain per cluster: the controller passes its own)
  --spiffe-id <id>             own identity (env WEFT_SPIFFE_ID; default spiffe://<td>/ns/<ns>/sa/<name>)
  --id <instance>              instance name on the config stream (env POD_NAME; default host name)
  --cert-file <f> --key-file <f> --ca-file <f>   static identity material (PEM)
  --token-file <f>             token for the certificate service (default the service account token)
  --cert-lifetime <seconds>    requested lifetime of the issued certificate (default: the CA's, 24 h);
                               renewed at half of it
  --ca-bundle <f>              roots that sign the controller's certificate (default --ca-file)
  --controller-identity <id>   expected controller SPIFFE ID (default spiffe://<td>/ns/weft-system/sa/weft-controller)
  --insecure-xds               plaintext config stream (debugging only; needs static identity material)
  --quota <service=ns/name,limit=N,window=1m[,per=source]>   shared quota (repeatable; needs --quota-redis)
  --quota-redis <redis://host:port>   --quota-failure-mode <open|closed> (default open)
  --otlp-endpoint <url>        OTLP/HTTP traces endpoint, e.g. http://otel-collector:4318/v1/traces
  --access-log <stdout|off>    JSON access log, one line per request (default stdout)
  --debug-endpoints            also serve the read-only admin paths as /debug/<path> on the metrics
                               port, for weftctl and the dashboard on a cluster, to requests carrying
                               a debug grant for this pod (--id) of this waypoint signed by the mesh
                               CA (weftctl gets one from the controller) (default off)
  --header-timeout <seconds>   a client must send complete request headers within this long, or gets
                               408 (HTTP/1.1) or GOAWAY (HTTP/2); bodies and responses are not limited
                               (default 10)
  --idle-timeout <seconds>     close a client connection with no request in progress after this long
                               (default 60)
  --max-requests <n>           requests in progress at once in this waypoint; beyond it a request gets
                               503 (gRPC: UNAVAILABLE) with x-weft-overloaded and is not forwarded
                               (default ${DEFAULT_MAX_REQUESTS})
  --path-normalization <mode>  NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES, as Istio's
                               MeshConfig pathNormalization; applied before routing and policy, and
                               what is forwarded (default: the controller's mesh-wide
                               --path-normalization, else BASE)
  --escaped-slashes <action>   %2F/%5C in paths (except under DECODE_AND_MERGE_SLASHES): KEEP_UNCHANGED
                               or REJECT_REQUEST (400) (default: the controller's, else KEEP_UNCHANGED)
  --num-trusted-proxies <n>    proxies in front of this waypoint that append X-Forwarded-For; remote.ip
                               is the entry n places from the right (Istio numTrustedProxies; default:
                               the controller's, else 0)`;

export interface HostPort { host: string; port: number }

export interface WaypointMainOptions {
  namespace: string;
  name: string;
  controller?: string;
  listen: HostPort;
  admin: HostPort;
  metrics: HostPort;
  ready: HostPort;
  trustDomain: string;
  /** --trust-domain-alias: more trust domains whose workload identities HBONE admits. Default none. */
  trustDomainAliases: string[];
  spiffeId: string;
  id: string;
  certFile?: string;
  keyFile?: string;
  caFile?: string;
  tokenFile: string;
  caBundle?: string;
  controllerIdentity: string;
  insecureXds: boolean;
  quotas: QuotaRule[];
  quotaRedis?: string;
  quotaFailureMode: 'open' | 'closed';
  otlpEndpoint?: string;
  accessLog: boolean;
  /** Serve the read-only admin paths also as /debug/<path> on the metrics port. Default false. */
  debugEndpoints?: boolean;
  /** The clock debug grants are judged by (DebugGrantAccess.now; tests). Default Date.now. */
  debugClock?: () => number;
  /** --header-timeout, in ms. */
  headerTimeoutMs: number;
  /** --idle-timeout, in ms. */
  idleTimeoutMs: number;
  /** --cert-lifetime in seconds; 0 = the CA's default. */
  certLifetimeSeconds: number;
  /** --max-requests. */
  maxRequests: number;
  /** --path-normalization; unset: the controller's mesh-wide setting, else BASE. */
  pathNormalization?: PathNormalization;
  /** --escaped-slashes; unset: the controller's, else KEEP_UNCHANGED. */
  escapedSlashes?: EscapedSlashesAction;
  /** --num-trusted-proxies; unset: the controller's, else 0. */
  numTrustedProxies?: number;
}

/** The longest timeout a flag takes: a day (timers take at most 2^31-1 ms). */
const MAX_TIMEOUT_SECONDS = 86_400;

/** A positive number of seconds (fractions allowed, at least 1 ms), returned in ms. */
export function secondsFlag(flag: string, v: string): number {
  const n = /^\s*[0-9]*\.?[0-9]+\s*$/.test(v) ? Number(v) : NaN;
  if (!Number.isFinite(n) || n <= 0) throw new FlagError(`--${flag}: "${v}" is not a positive number of seconds`);
  if (n > MAX_TIMEOUT_SECONDS) throw new FlagError(`--${flag}: ${v} s is more than ${MAX_TIMEOUT_SECONDS} s (a day)`);
  const ms = Math.round(n * 1000);
  if (ms < 1) throw new FlagError(`--${flag}: ${v} s is less than a millisecond`);
  return ms;
}

/** The waypoint's usage error, for lib/main.ts's flag readers. */
const flagError = (message: string): FlagError => new FlagError(message);

function hostPort(flag: string, v: string): HostPort {
  const i = v.lastIndexOf(':');
  const host = i < 0 ? '' : v.slice(0, i).replace(/^\[|\]$/g, '');
  const port = Number(v.slice(i + 1));
  if (i < 0 || !Number.isInteger(port) || port < 0 || port > 65535) throw new FlagError(`--${flag}: "${v}" is not host:port`);
  return { host: host || '0.0.0.0', port };
}

/** A Gateway API duration (lib/model/duration.ts), refused naming the flag. */
function durationMs(flag: string, v: string): number {
  if (!isDuration(v)) throw new FlagError(`--${flag}: window "${v}" is not a duration like 500ms, 1s, 1m or 1h`);
  return parseDuration(v);
}

export function parseQuotaFlag(v: string): QuotaRule {
  const kv = new Map(v.split(',').map((p) => { const i = p.indexOf('='); return [p.slice(0, i).trim(), p.slice(i + 1).trim()] as const; }));
  const service = kv.get('service');
  const limit = Number(kv.get('limit'));
  if (!service || !/^[^/]+\/[^/]+$/.test(service)) throw new FlagError(`--quota ${v}: service=<namespace/name> is required`);
  if (!Number.isInteger(limit) || limit < 0) throw new FlagError(`--quota ${v}: limit=<requests> must be a non-negative integer`);
  const per = kv.get('per') ?? 'service';
  if (per !== 'service' && per !== 'source') throw new FlagError(`--quota ${v}: per must be service or source`);
  return { service, limit, windowMs: durationMs('quota', kv.get('window') ?? '1m'), per };
}

export function parseFlags(argv: string[], env: NodeJS.ProcessEnv = process.env): WaypointMainOptions {
  let values: Record<string, string | boolean | string[] | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        namespace: { type: 'string' }, name: { type: 'string' }, controller: { type: 'string' },
        listen: { type: 'string' }, admin: { type: 'string' }, metrics: { type: 'string' }, ready: { type: 'string' },
        'trust-domain': { type: 'string' }, 'trust-domain-alias': { type: 'string', multiple: true }, 'spiffe-id': { type: 'string' }, id: { type: 'string' },
        'cert-file': { type: 'string' }, 'key-file': { type: 'string' }, 'ca-file': { type: 'string' },
        'token-file': { type: 'string' }, 'ca-bundle': { type: 'string' }, 'controller-identity': { type: 'string' },
        'insecure-xds': { type: 'boolean' }, quota: { type: 'string', multiple: true }, 'quota-redis': { type: 'string' },
        'quota-failure-mode': { type: 'string' }, 'otlp-endpoint': { type: 'string' }, 'access-log': { type: 'string' }, 'debug-endpoints': { type: 'boolean' },
        'header-timeout': { type: 'string' }, 'idle-timeout': { type: 'string' },
        'cert-lifetime': { type: 'string' }, 'max-requests': { type: 'string' },
        'path-normalization': { type: 'string' }, 'escaped-slashes': { type: 'string' }, 'num-trusted-proxies': { type: 'string' },
      },
      strict: true,
    }));
  } catch (e) {
    throw new FlagError(`${(e as Error).message}\n${USAGE}`);
  }
  const s = (k: string): string | undefined => values[k] as string | undefined;
  const namespace = s('namespace');
  const name = s('name');
  if (!namespace || !name) throw new FlagError(`--namespace and --name are required\n${USAGE}`);
  const trustDomain = s('trust-domain') ?? DEFAULT_TRUST_DOMAIN;
  const trustDomainAliases = trustDomainFlags(trustDomain, values['trust-domain-alias'] as string[] | undefined, flagError);
  const o: WaypointMainOptions = {
    namespace, name,
    listen: hostPort('listen', s('listen') ?? `0.0.0.0:${HBONE_PORT}`),
    admin: hostPort('admin', s('admin') ?? '127.0.0.1:15000'),
    metrics: hostPort('metrics', s('metrics') ?? '0.0.0.0:15020'),
    ready: hostPort('ready', s('ready') ?? '0.0.0.0:15021'),
    trustDomain,
    trustDomainAliases,
    spiffeId: s('spiffe-id') ?? env['WEFT_SPIFFE_ID'] ?? spiffeIdOf(trustDomain, namespace, name),
    id: s('id') ?? env['POD_NAME'] ?? hostname(),
    tokenFile: s('token-file') ?? '/var/run/secrets/kubernetes.io/serviceaccount/token',
    controllerIdentity: s('controller-identity') ?? spiffeIdOf(trustDomain, DEFAULT_ROOT_NAMESPACE, 'weft-controller'),
    insecureXds: values['insecure-xds'] === true,
    quotas: ((values['quota'] as string[] | undefined) ?? []).map(parseQuotaFlag),
    quotaFailureMode: 'open',
    accessLog: true,
    headerTimeoutMs: DEFAULT_REQUEST_HEADERS_TIMEOUT_MS,
    idleTimeoutMs: DEFAULT_IDLE_TIMEOUT_MS,
    certLifetimeSeconds: 0,
    maxRequests: DEFAULT_MAX_REQUESTS,
  };
  const pn = s('path-normalization');
  if (pn !== undefined) o.pathNormalization = oneOfFlag('path-normalization', pn, PATH_NORMALIZATIONS, flagError);
  const es = s('escaped-slashes');
  if (es !== undefined) o.escapedSlashes = oneOfFlag('escaped-slashes', es, ESCAPED_SLASHES_ACTIONS, flagError);
  const ntp = s('num-trusted-proxies');
  if (ntp !== undefined) o.numTrustedProxies = countFlag('num-trusted-proxies', ntp, 'proxies', 0, MAX_TRUSTED_PROXIES, flagError);
  const mr = s('max-requests');
  if (mr !== undefined) o.maxRequests = countFlag('max-requests', mr, 'requests', 1, MAX_REQUESTS_CEILING, flagError);
  const cl = s('cert-lifetime');
  if (cl !== undefined) o.certLifetimeSeconds = countFlag('cert-lifetime', cl, 'seconds', 1, DEFAULT_MAX_WORKLOAD_CERT_LIFETIME_MS / 1000, flagError);
  const ht = s('header-timeout');
  if (ht !== undefined) o.headerTimeoutMs = secondsFlag('header-timeout', ht);
  const it = s('idle-timeout');
  if (it !== undefined) o.idleTimeoutMs = secondsFlag('idle-timeout', it);
  const al = s('access-log');
  if (al !== undefined && al !== 'stdout' && al !== 'off') throw new FlagError(`--access-log: "${al}" is not stdout or off`);
  if (al === 'off') o.accessLog = false;
  if (values['debug-endpoints'] === true) o.debugEndpoints = true;
  const controller = s('controller') ?? env['WEFT_CONTROLLER'];
  if (controller) o.controller = controller;
  for (const [flag, key] of [['cert-file', 'certFile'], ['key-file', 'keyFile'], ['ca-file', 'caFile'], ['ca-bundle', 'caBundle'], ['quota-redis', 'quotaRedis'], ['otlp-endpoint', 'otlpEndpoint']] as const) {
    const v = s(flag);
    if (v !== undefined) o[key] = v;
  }
  const fm = s('quota-failure-mode');
  if (fm !== undefined) {
    if (fm !== 'open' && fm !== 'closed') throw new FlagError(`--quota-failure-mode: "${fm}" is not open or closed`);
    o.quotaFailureMode = fm;
  }
  const staticFiles = [o.certFile, o.keyFile, o.caFile].filter((f) => f !== undefined).length;
  if (staticFiles !== 0 && staticFiles !== 3) throw new FlagError('--cert-file, --key-file and --ca-file go together');
  if (o.quotas.length > 0 && !o.quotaRedis) throw new FlagError('--quota needs --quota-redis');
  if (o.insecureXds && staticFiles === 0) throw new FlagError('--insecure-xds needs static identity material (--cert-file, --key-file, --ca-file) for HBONE');
  if (staticFiles === 0 && !o.controller) throw new FlagError('without --cert-file/--key-file/--ca-file the identity comes from the controller: give --controller');
  if (staticFiles !== 0 && cl !== undefined) throw new FlagError('--cert-lifetime applies to a certificate from the controller, not to --cert-file');
  return o;
}

export interface RunningWaypoint {
  engine: WaypointEngine;
  hbone: { host: string; port: number };
  admin: { port: number };
  metrics: { port: number };
  ready: { port: number };
  close(): Promise<void>;
}

/** The identity from static files, or issued by the controller (its first certificate obtained). */
async function waypointIdentity(o: WaypointMainOptions, registry: Registry, log: Logger): Promise<WaypointIdentity> {
  if (o.certFile) {
    const id = await staticWaypointIdentity({ certFile: o.certFile, keyFile: o.keyFile!, caFile: o.caFile! }, o.spiffeId);
    watchIdentity(id, registry, log);
    return id;
  }
  const roots = splitPemCertificates(await readFile(o.caBundle ?? o.caFile ?? '/var/run/secrets/weft/ca.crt', 'utf8'));
  const signer = new ControllerSigner({
    address: o.controller!, trustBundle: roots, serverIdentity: o.controllerIdentity, log,
    token: async () => (await readFile(o.tokenFile, 'utf8')).trim(),
  });
  const id = new IssuedIdentity({ spiffeId: o.spiffeId, signer, trustBundle: roots, lifetimeSeconds: o.certLifetimeSeconds });
  // Before start(): failures of the first issuance are logged and counted too.
  watchIdentity(id, registry, log);
  await id.start();
  const v = id.view();
  log.info('waypoint certificate issued', { serial: v.serial, issuer: v.issuer, notAfter: v.notAfter, roots: v.trustBundle });
  return id;
}

/** Starts a waypoint: identity, HBONE server, engine, config stream and the side ports. */
export async function runWaypoint(o: WaypointMainOptions, log: Logger = jsonLogger('waypoint')): Promise<RunningWaypoint> {
  const pool = new HbonePool({
    onSessionThrottled: (e) => log.warn('upstream HBONE session holds more than its buffer for requests that do not read: its stream windows shrink until they catch up', {
      destination: e.dest, heldBytes: e.heldBytes, tunnels: e.tunnels,
    }),
  });
  let identity: WaypointIdentity | undefined;
  // Access-log lines go to stdout and to whoever watches /flows (weftctl tap, the dashboard).
  const flows = new FlowTap();
  const engine: WaypointEngine = new WaypointEngine({
    namespace: o.namespace, name: o.name,
    upstream: new HboneUpstream({ pool, credentials: () => identity!.current(), spiffeId: o.spiffeId, baggage: (): string | undefined => engine.telemetry.selfBaggage }),
    requestHeadersTimeoutMs: o.headerTimeoutMs,
    idleTimeoutMs: o.idleTimeoutMs,
    maxRequests: o.maxRequests,
    ...(o.pathNormalization ? { pathNormalization: o.pathNormalization } : {}),
    ...(o.escapedSlashes ? { escapedSlashes: o.escapedSlashes } : {}),
    ...(o.numTrustedProxies !== undefined ? { numTrustedProxies: o.numTrustedProxies } : {}),
    telemetry: {
      // One write per event-loop turn, not per request (lib/sys/line-batch.ts).
      accessLog: o.accessLog ? stdoutLines() : null,
      entries: (entry, json) => flows.publish(entry, json),
      warn: (msg: string, fields: Record<string, unknown>) => log.warn(msg, fields),
      ...(o.otlpEndpoint ? { tracing: { endpoint: o.otlpEndpoint, serviceName: `${o.name}.${o.namespace}` } } : {}),
    },
    ...(o.quotaRedis ? { quota: { redis: o.quotaRedis, rules: o.quotas, failureMode: o.quotaFailureMode, keyPrefix: `weft:quota:${o.namespace}/${o.name}` } } : {}),
  });
  try {
    identity = await waypointIdentity(o, engine.telemetry.registry, log);
  } catch (err) {
    await engine.close();
    throw err;
  }
  const id = identity;
  const hboneRefused = new Counter({ name: 'weft_waypoint_hbone_refused_total', help: 'HBONE CONNECTs and sessions the waypoint refused, by kind', labelNames: ['kind'], registers: [engine.telemetry.registry] });
  const refusalLog = new LogBudget(REFUSAL_LOG_PER_SECOND, (count) => log.warn('HBONE refusals not logged (rate limit; every one is counted in weft_waypoint_hbone_refused_total)', { count, perSecond: REFUSAL_LOG_PER_SECOND }));
  const hbone = new HboneServer({
    tls: tlsMaterial(id.current()),
    handler: tunnelHandler(engine, (f) => log.warn('forwarded for= not honoured: the caller may not speak for that address', f)),
    // Workload identities of this mesh only (agents carry workloads' tunnels; a node certificate
    // never): its trust domain and its aliases, as the agents' 15008 (agent/src/inbound.ts).
    trustDomains: [o.trustDomain, ...o.trustDomainAliases],
    // The authority and the reason quoting it are the caller's to choose (HPACK repeats a long one
    // for a byte): counted each, logged cut and at most REFUSAL_LOG_PER_SECOND lines a second.
    onRefusal: (r) => {
      hboneRefused.inc({ kind: r.kind });
      if (refusalLog.take()) log.warn('HBONE refusal', { kind: r.kind, status: r.status, reason: clip(r.reason), peer: r.peer?.spiffeId, address: r.peer?.address, authority: clip(r.authority) });
    },
    onSessionError: (e) => log.warn('HBONE session ended on an error, with every tunnel on it', { peer: e.peer.spiffeId, address: e.peer.address, error: e.error, code: e.code, tunnels: e.streams }),
  });
  log.info('HBONE memory budget', { ...hbone.memoryBudget });
  // New sessions, both ways, use the new certificate and roots; open ones carry on.
  const moveHbone = (): void => {
    hbone.setTls(tlsMaterial(id.current()));
    pool.retire(o.spiffeId);
  };
  id.on('rotated', moveHbone);
  id.on('trustBundleChanged', moveHbone);
  const hboneAddr = await hbone.listen(o.listen.port, o.listen.host);

  let xds: ConfigClient<'waypoint'> | undefined;
  let configured = false;
  if (o.controller) {
    // The credentials follow the identity: a reconnect presents the current certificate and
    // verifies the controller with the current roots.
    const credentials = o.insecureXds ? grpc.credentials.createInsecure() : controllerChannelCredentials(id, o.controllerIdentity);
    const openConfigStream = (): void => {
      const client = waypointConfigClient({
        target: o.controller!, credentials, id: o.id, namespace: o.namespace, userAgent: 'weft-waypoint',
        // Own subchannels: a reopened stream must not reuse the previous stream's TLS connection.
        channelOptions: { 'grpc.use_local_subchannel_pool': 1, ...(o.insecureXds ? {} : { 'grpc.ssl_target_name_override': 'weft-controller' }) },
        validate: (cfg) => engine.validateConfig(cfg),
      });
      client.on('snapshot', (cfg, version) => {
        try {
          const { issues, ...applied } = engine.applyConfig(cfg);
          configured = true;
          log.info('config applied', { streamVersion: version, ...applied });
          if (issues.length > 0) log.warn('config objects left out or failing closed', { streamVersion: version, issues: issues.map(formatConfigIssue) });
        } catch (err) {
          log.error('config rejected after validation', { version, error: (err as Error).message });
        }
      });
      client.on('rejected', (err) => log.warn('config rejected', { error: err.message }));
      client.on('disconnected', (err) => log.warn('config stream disconnected', { error: err?.message }));
      client.on('error', (err) => log.warn('config stream error', { error: err.message }));
      const previous = xds;
      xds = client;
      previous?.close();
    };
    openConfigStream();
    if (!o.insecureXds) {
      // Root rotation: the open stream was verified against the old roots (and may present a
      // certificate from a root being retired); reopen it under the new ones.
      id.on('trustBundleChanged', () => {
        log.info('trust bundle changed: reopening the config stream with the new roots');
        openConfigStream();
      });
    }
  }
  registerProcessMetrics(engine.telemetry.registry, 'waypoint');
  registerHbonePoolMetrics(engine.telemetry.registry, () => pool.stats());
  new Gauge({
    name: 'weft_waypoint_controller_connected', help: '1 while the config stream is open and the controller has answered on it',
    registers: [engine.telemetry.registry], collect() { this.set(xds?.connected ? 1 : 0); },
  });

  const servers: http.Server[] = [];
  const admin = adminServer(engine, () => ({
    identity: o.spiffeId, hbone: `${hboneAddr.address}:${hboneAddr.port}`,
    controllerConnected: xds?.connected ?? false, maxRequests: engine.admission.max, activeRequests: engine.admission.active,
  }), () => id.view(), flows);
  // Every pod reaches the metrics and readiness ports: bounded as the other components' (one source, a slowloris).
  const status = statusListenerLimits({ registry: engine.telemetry.registry, metric: 'weft_waypoint_listener_refused_total', log });
  // The debug paths answer a grant for this pod of this waypoint (o.id is POD_NAME), checked with
  // the key of the CA that issued this waypoint's certificate (it follows renewals, so rotations);
  // each refusal counted and logged as the listener's own.
  const metrics = metricsServer(engine, o.debugEndpoints ? {
    admin,
    access: {
      audience: debugGrantAudience(o.namespace, o.name, o.id),
      signers: debugGrantSigners(() => id.current()),
      ...(o.debugClock ? { now: o.debugClock } : {}),
      refused: (req, why, detail) => status.refused('metrics', `debug-grant-${why}`, req.socket.remoteAddress, `${req.url ?? ''}: ${detail}`),
    },
  } : undefined);
  const ready = readinessServer(() => (configured || !o.controller ? true : 'waiting for the first configuration from the controller'));
  status.limit({ metrics, readiness: ready });
  const adminAddr = await listenHttp(admin, o.admin.port, o.admin.host);
  const metricsAddr = await listenHttp(metrics, o.metrics.port, o.metrics.host);
  const readyAddr = await listenHttp(ready, o.ready.port, o.ready.host);
  servers.push(admin, metrics, ready);
  log.info('waypoint started', { namespace: o.namespace, name: o.name, identity: o.spiffeId, hbone: hboneAddr.port, admin: adminAddr.port, metrics: metricsAddr.port });

  return {
    engine,
    hbone: { host: hboneAddr.address, port: hboneAddr.port },
    admin: { port: adminAddr.port },
    metrics: { port: metricsAddr.port },
    ready: { port: readyAddr.port },
    async close() {
      xds?.close();
      id.close();
      await hbone.close(1000);
      await engine.close();
      await pool.close(1000);
      for (const s of servers) { s.closeAllConnections(); await new Promise((r) => s.close(r)); }
    },
  };
}

// Starts as every part does (lib/main.ts): parseFlags → runWaypoint → SIGTERM closes.
if (import.meta.main) {
  const log = jsonLogger('waypoint');
  await withMemoryRelease(log, () => runMain('waypoint', () => parseFlags(process.argv.slice(2)), async (o) => {
    const w = await runWaypoint(o, log);
    return { stop: () => (log.info('shutting down'), w.close()) };
  }));
}
