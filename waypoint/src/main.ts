// weft waypoint: one per namespace that declares a Waypoint. Terminates HBONE (mTLS, HTTP/2
// CONNECT) on --listen, applies the namespace's routes, resilience and L7 policy from the config
// stream, and originates HBONE to endpoints with its own identity.
//
//   node waypoint/src/main.ts --namespace shop --name waypoint --controller weft-controller:15012
//
// Identity: --cert-file/--key-file/--ca-file (static material, e.g. mounted), or a certificate from
// the controller's certificate service authenticated with --token-file, renewed at half its life.
import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { HboneServer, HbonePool, HBONE_PORT } from '../../lib/hbone/index.ts';
import {
  CertificateServiceClient, createCsr, generateKeyPair, parseCertificate, privateKeyToPem, spiffeIdOfCertificate, splitPemCertificates, tlsMaterial,
  type TlsCredentials,
} from '../../lib/identity/index.ts';
import { jsonLogger, type Logger } from '../../lib/log.ts';
import { DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN, spiffeIdOf } from '../../lib/model/mesh.ts';
import { waypointConfigClient, type ConfigClient } from '../../lib/xds/index.ts';
import { adminServer, listenOn, metricsServer, readyServer } from './admin.ts';
import { DEFAULT_IDLE_TIMEOUT_MS, DEFAULT_REQUEST_HEADERS_TIMEOUT_MS, WaypointEngine } from './engine.ts';
import { FlagError } from './errors.ts';
import { HboneUpstream, tunnelHandler } from './hbone.ts';
import type { QuotaRule } from './quota.ts';
import type http from 'node:http';

export const USAGE = `usage: waypoint/src/main.ts --namespace <ns> --name <name> [options]
  --controller <host:port>     config stream and certificate service (env WEFT_CONTROLLER)
  --listen <host:port>         HBONE (default 0.0.0.0:15008)
  --admin <host:port>          admin: /config_dump /clusters /rejection /stats (default 127.0.0.1:15000)
  --metrics <host:port>        Prometheus /metrics (default 0.0.0.0:15020)
  --ready <host:port>          /healthz/ready (default 0.0.0.0:15021)
  --trust-domain <td>          (default cluster.local)
  --spiffe-id <id>             own identity (env WEFT_SPIFFE_ID; default spiffe://<td>/ns/<ns>/sa/<name>)
  --id <instance>              instance name on the config stream (env POD_NAME; default host name)
  --cert-file <f> --key-file <f> --ca-file <f>   static identity material (PEM)
  --token-file <f>             token for the certificate service (default the service account token)
  --ca-bundle <f>              roots that sign the controller's certificate (default --ca-file)
  --controller-identity <id>   expected controller SPIFFE ID (default spiffe://<td>/ns/weft-system/sa/weft-controller)
  --insecure-xds               plaintext config stream (debugging only; needs static identity material)
  --quota <service=ns/name,limit=N,window=1m[,per=source]>   shared quota (repeatable; needs --quota-redis)
  --quota-redis <redis://host:port>   --quota-failure-mode <open|closed> (default open)
  --otlp-endpoint <url>        OTLP/HTTP traces endpoint, e.g. http://otel-collector:4318/v1/traces
  --access-log <stdout|off>    JSON access log, one line per request (default stdout)
  --header-timeout <seconds>   a client must send complete request headers within this long, or gets
                               408 (HTTP/1.1) or GOAWAY (HTTP/2); bodies and responses are not limited
                               (default 10)
  --idle-timeout <seconds>     close a client connection with no request in progress after this long
                               (default 60)`;

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
  /** --header-timeout, in ms. */
  headerTimeoutMs: number;
  /** --idle-timeout, in ms. */
  idleTimeoutMs: number;
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

function hostPort(flag: string, v: string): HostPort {
  const i = v.lastIndexOf(':');
  const host = i < 0 ? '' : v.slice(0, i).replace(/^\[|\]$/g, '');
  const port = Number(v.slice(i + 1));
  if (i < 0 || !Number.isInteger(port) || port < 0 || port > 65535) throw new FlagError(`--${flag}: "${v}" is not host:port`);
  return { host: host || '0.0.0.0', port };
}

function durationMs(flag: string, v: string): number {
  const m = /^([0-9]+)(ms|s|m|h)$/.exec(v);
  if (!m) throw new FlagError(`--${flag}: window "${v}" is not a duration like 500ms, 1s, 1m or 1h`);
  return Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h'];
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
        'trust-domain': { type: 'string' }, 'spiffe-id': { type: 'string' }, id: { type: 'string' },
        'cert-file': { type: 'string' }, 'key-file': { type: 'string' }, 'ca-file': { type: 'string' },
        'token-file': { type: 'string' }, 'ca-bundle': { type: 'string' }, 'controller-identity': { type: 'string' },
        'insecure-xds': { type: 'boolean' }, quota: { type: 'string', multiple: true }, 'quota-redis': { type: 'string' },
        'quota-failure-mode': { type: 'string' }, 'otlp-endpoint': { type: 'string' }, 'access-log': { type: 'string' },
        'header-timeout': { type: 'string' }, 'idle-timeout': { type: 'string' },
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
  const o: WaypointMainOptions = {
    namespace, name,
    listen: hostPort('listen', s('listen') ?? `0.0.0.0:${HBONE_PORT}`),
    admin: hostPort('admin', s('admin') ?? '127.0.0.1:15000'),
    metrics: hostPort('metrics', s('metrics') ?? '0.0.0.0:15020'),
    ready: hostPort('ready', s('ready') ?? '0.0.0.0:15021'),
    trustDomain,
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
  };
  const ht = s('header-timeout');
  if (ht !== undefined) o.headerTimeoutMs = secondsFlag('header-timeout', ht);
  const it = s('idle-timeout');
  if (it !== undefined) o.idleTimeoutMs = secondsFlag('idle-timeout', it);
  const al = s('access-log');
  if (al !== undefined && al !== 'stdout' && al !== 'off') throw new FlagError(`--access-log: "${al}" is not stdout or off`);
  if (al === 'off') o.accessLog = false;
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

interface IdentitySource {
  current(): TlsCredentials;
  /** Calls `onRotate` with new credentials until closed. */
  start(onRotate: (c: TlsCredentials) => void): void;
  close(): void;
}

async function staticIdentity(o: WaypointMainOptions): Promise<IdentitySource> {
  const [cert, key, ca] = await Promise.all([readFile(o.certFile!, 'utf8'), readFile(o.keyFile!, 'utf8'), readFile(o.caFile!, 'utf8')]);
  const creds: TlsCredentials = { key, certChain: splitPemCertificates(cert), trustBundle: splitPemCertificates(ca) };
  const id = spiffeIdOfCertificate(parseCertificate(creds.certChain[0]!).der).uri;
  if (id !== o.spiffeId) throw new FlagError(`--cert-file holds ${id}, not the waypoint identity ${o.spiffeId} (--spiffe-id)`);
  return { current: () => creds, start: () => {}, close: () => {} };
}

async function issuedIdentity(o: WaypointMainOptions, log: Logger): Promise<IdentitySource> {
  const roots = splitPemCertificates(await readFile(o.caBundle ?? o.caFile ?? '/var/run/secrets/weft/ca.crt', 'utf8'));
  const client = new CertificateServiceClient({
    address: o.controller!, trustBundle: roots, serverIdentity: o.controllerIdentity,
    credentials: { kind: 'token', token: async () => (await readFile(o.tokenFile, 'utf8')).trim() },
  });
  const issue = async (): Promise<{ creds: TlsCredentials; notAfter: number; notBefore: number }> => {
    const { privateKey } = await generateKeyPair();
    const res = await client.createCertificate(o.spiffeId, createCsr(o.spiffeId, privateKey));
    const leaf = parseCertificate(res.certChain[0]!);
    return {
      creds: { key: privateKeyToPem(privateKey), certChain: res.certChain, trustBundle: res.trustBundle.length > 0 ? res.trustBundle : roots },
      notAfter: leaf.notAfter.getTime(), notBefore: leaf.notBefore.getTime(),
    };
  };
  let cur = await issue();
  let timer: NodeJS.Timeout | undefined;
  let closed = false;
  return {
    current: () => cur.creds,
    start(onRotate) {
      const schedule = (delayMs: number): void => {
        timer = setTimeout(() => {
          issue().then((next) => {
            cur = next;
            log.info('waypoint certificate renewed', { notAfter: new Date(next.notAfter).toISOString() });
            onRotate(next.creds);
            if (!closed) schedule((next.notAfter - next.notBefore) / 2);
          }, (err: Error) => {
            log.warn('waypoint certificate renewal failed; retrying in 30 s', { error: err.message });
            if (!closed) schedule(30_000);
          });
        }, Math.max(1000, delayMs));
        timer.unref();
      };
      schedule(cur.notBefore + (cur.notAfter - cur.notBefore) / 2 - Date.now());
    },
    close() { closed = true; clearTimeout(timer); client.close(); },
  };
}

/** Starts a waypoint: identity, HBONE server, engine, config stream and the side ports. */
export async function runWaypoint(o: WaypointMainOptions, log: Logger = jsonLogger('waypoint')): Promise<RunningWaypoint> {
  const identity = o.certFile ? await staticIdentity(o) : await issuedIdentity(o, log);
  const pool = new HbonePool();
  const engine = new WaypointEngine({
    namespace: o.namespace, name: o.name,
    upstream: new HboneUpstream({ pool, credentials: () => identity.current(), spiffeId: o.spiffeId }),
    requestHeadersTimeoutMs: o.headerTimeoutMs,
    idleTimeoutMs: o.idleTimeoutMs,
    telemetry: {
      ...(o.accessLog ? {} : { accessLog: null }),
      ...(o.otlpEndpoint ? { tracing: { endpoint: o.otlpEndpoint, serviceName: `${o.name}.${o.namespace}` } } : {}),
    },
    ...(o.quotaRedis ? { quota: { redis: o.quotaRedis, rules: o.quotas, failureMode: o.quotaFailureMode, keyPrefix: `weft:quota:${o.namespace}/${o.name}` } } : {}),
  });
  const hbone = new HboneServer({
    tls: tlsMaterial(identity.current()),
    handler: tunnelHandler(engine),
    onRefusal: (r) => log.warn('HBONE refusal', { kind: r.kind, reason: r.reason, peer: r.peer?.spiffeId }),
  });
  identity.start((creds) => {
    hbone.setTls(tlsMaterial(creds));
    pool.retire(o.spiffeId);
  });
  const hboneAddr = await hbone.listen(o.listen.port, o.listen.host);

  let xds: ConfigClient<'waypoint'> | undefined;
  let configured = false;
  if (o.controller) {
    const creds = identity.current();
    const credentials = o.insecureXds
      ? grpc.credentials.createInsecure()
      : grpc.credentials.createSsl(Buffer.from(creds.trustBundle.join('')), Buffer.from(creds.key), Buffer.from(creds.certChain.join('')), {
          checkServerIdentity: (_host, cert) => {
            try {
              const id = spiffeIdOfCertificate(cert).uri;
              return id === o.controllerIdentity ? undefined : new Error(`controller presented ${id}, expected ${o.controllerIdentity} (--controller-identity)`);
            } catch (err) {
              return err as Error;
            }
          },
        });
    xds = waypointConfigClient({
      target: o.controller, credentials, id: o.id, namespace: o.namespace, userAgent: 'weft-waypoint',
      ...(o.insecureXds ? {} : { channelOptions: { 'grpc.ssl_target_name_override': 'weft-controller' } }),
      validate: (cfg) => engine.validateConfig(cfg),
    });
    xds.on('snapshot', (cfg, version) => {
      try {
        const applied = engine.applyConfig(cfg);
        configured = true;
        log.info('config applied', { streamVersion: version, ...applied });
      } catch (err) {
        log.error('config rejected after validation', { version, error: (err as Error).message });
      }
    });
    xds.on('rejected', (err) => log.warn('config rejected', { error: err.message }));
    xds.on('disconnected', (err) => log.warn('config stream disconnected', { error: err?.message }));
    xds.on('error', (err) => log.warn('config stream error', { error: err.message }));
  }

  const servers: http.Server[] = [];
  const admin = adminServer(engine, () => ({ identity: o.spiffeId, hbone: `${hboneAddr.address}:${hboneAddr.port}` }));
  const metrics = metricsServer(engine);
  const ready = readyServer(() => (configured || !o.controller ? true : 'waiting for the first configuration from the controller'));
  const adminAddr = await listenOn(admin, o.admin);
  const metricsAddr = await listenOn(metrics, o.metrics);
  const readyAddr = await listenOn(ready, o.ready);
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
      identity.close();
      await hbone.close(1000);
      await engine.close();
      await pool.close(1000);
      for (const s of servers) { s.closeAllConnections(); await new Promise((r) => s.close(r)); }
    },
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const log = jsonLogger('waypoint');
  let opts: WaypointMainOptions;
  try {
    opts = parseFlags(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`);
    process.exit(2);
  }
  runWaypoint(opts, log).then((w) => {
    const stop = (): void => { log.info('shutting down'); w.close().then(() => process.exit(0), () => process.exit(1)); };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  }, (err: Error & { code?: string }) => {
    log.error('waypoint failed to start', { error: err.message, code: err.code });
    process.exit(1);
  });
}
