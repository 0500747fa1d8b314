// weft east-west gateway (eastwest/src/gateway.ts): HBONE on the network's edge for callers in
// other networks.
//   node eastwest/src/main.ts --listen <ip>[:15008] (--cert <chain.pem> --key <key.pem> |
//     --ca-address <ip>:15012 --token-file <f>) --trust-bundle <root.pem>
//     --controller https://<ip>:15014 [--trust-domain cluster.local] [--trust-domain-alias <td>]...
//     [--controller-id <spiffe id>] [--log-level info]
// Identity: static files (read once, never renewed), or issued by the cluster's controller CA
// (--ca-address, authenticated with the token in --token-file) and renewed at half its life, with
// backoff and root rotations, by the same machinery as a waypoint's (lib/identity/issued.ts).
// Metrics on <listen ip>:15020 (/metrics), readiness on <listen ip>:15021 (/healthz/ready): on the
// network's edge, so bounded as the federation listener is (lib/listener-limits.ts: a slow or
// silent client is cut at 5 s, one source holds at most 16 connections), each connection closed
// counted in weft_eastwest_listener_refused_total{listener,reason} and logged.
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';
import { Registry } from 'prom-client';
import { isLogLevel, jsonLogger, type Logger, type LogLevel } from '../../lib/log.ts';
import { statusListenerLimits, type HttpListenerLimits } from '../../lib/listener-limits.ts';
import { withMemoryRelease } from '../../lib/sys/memory.ts';
import { DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN, HBONE_PORT, spiffeIdOf } from '../../lib/model/mesh.ts';
import { EASTWEST_SERVICE_ACCOUNT } from '../../lib/model/federation.ts';
import { ControllerSigner, IssuedIdentity } from '../../lib/identity/index.ts';
import { controllerSpiffeId, PORTS } from '../../lib/defaults.ts';
import { listenHttp, metricsHandler, readinessServer } from '../../lib/status-http.ts';
import { splitPemCertificates } from '../../lib/identity/x509.ts';
import { EastWestGateway, type GatewayTls } from './gateway.ts';
import { runMain, trustDomainFlags, UsageError, type Running } from '../../lib/main.ts';

const USAGE = 'usage: eastwest/src/main.ts --listen <ip>[:port] (--cert <file> --key <file> | --ca-address <ip:port> --token-file <file>) --trust-bundle <file> --controller https://<ip>:<port> [--trust-domain <td>] [--trust-domain-alias <td>]... [--controller-id <id>] [--log-level <level>]';

export interface EastWestOptions {
  host: string;
  port: number;
  /** Static identity files, or the controller CA's address and the token file. */
  identity: { kind: 'static'; certFile: string; keyFile: string } | { kind: 'issued'; caAddress: string; tokenFile: string };
  trustBundleFile: string;
  controllerUrl: string;
  controllerId?: string;
  trustDomain: string;
  trustDomainAliases: string[];
  logLevel: LogLevel;
  /** Where it logs; default JSON lines on stderr at `logLevel` (tests pass their own). */
  logger?: Logger;
  /** The metrics and readiness listeners' bounds (DEFAULT_STATUS_LISTENER_LIMITS). */
  statusLimits?: Partial<HttpListenerLimits>;
}

/** The command line → options (pure; throws a UsageError naming the flag). */
export function parseEastWestArgs(argv: string[]): EastWestOptions {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        listen: { type: 'string' },
        cert: { type: 'string' },
        key: { type: 'string' },
        'ca-address': { type: 'string' },
        'token-file': { type: 'string' },
        'trust-bundle': { type: 'string' },
        controller: { type: 'string' },
        'controller-id': { type: 'string' },
        'trust-domain': { type: 'string', default: DEFAULT_TRUST_DOMAIN },
        'trust-domain-alias': { type: 'string', multiple: true },
        'log-level': { type: 'string', default: 'info' },
      },
      strict: true,
    }));
  } catch (e) {
    throw new UsageError(`${(e as Error).message}\n${USAGE}`);
  }
  for (const f of ['listen', 'trust-bundle', 'controller'] as const) if (!values[f]) throw new UsageError(`--${f} is required\n${USAGE}`);
  const issued = values['ca-address'] !== undefined || values['token-file'] !== undefined;
  if (issued ? !(values['ca-address'] && values['token-file']) || values.cert || values.key : !(values.cert && values.key)) {
    throw new UsageError(`give either --cert and --key (static identity) or --ca-address and --token-file (issued by the controller)\n${USAGE}`);
  }
  const m = /^(\d{1,3}(?:\.\d{1,3}){3})(?::(\d{1,5}))?$/.exec(values.listen!);
  if (!m || (m[2] !== undefined && Number(m[2]) > 65535)) throw new UsageError(`--listen: "${values.listen}" is not <ipv4>[:port]`);
  const level = values['log-level']!;
  if (!isLogLevel(level)) throw new UsageError(`--log-level: "${level}" is not one of debug, info, warn, error`);
  return {
    host: m[1]!,
    port: m[2] ? Number(m[2]) : HBONE_PORT,
    identity: issued ? { kind: 'issued', caAddress: values['ca-address']!, tokenFile: values['token-file']! } : { kind: 'static', certFile: values.cert!, keyFile: values.key! },
    trustBundleFile: values['trust-bundle']!,
    controllerUrl: values.controller!,
    ...(values['controller-id'] ? { controllerId: values['controller-id'] } : {}),
    trustDomain: values['trust-domain']!,
    trustDomainAliases: trustDomainFlags(values['trust-domain'], values['trust-domain-alias']),
    logLevel: level as LogLevel,
  };
}

/** Starts the gateway: its identity, the HBONE listener, metrics and readiness. */
export async function runEastWest(o: EastWestOptions): Promise<Running> {
  const log = o.logger ?? jsonLogger('eastwest', o.logLevel);
  const td = o.trustDomain;
  const registry = new Registry();
  const roots = splitPemCertificates(readFileSync(o.trustBundleFile, 'utf8'));
  const controllerId = o.controllerId ?? controllerSpiffeId(td, DEFAULT_ROOT_NAMESPACE);
  let tls: GatewayTls;
  let identity: IssuedIdentity | undefined;
  if (o.identity.kind === 'issued') {
    const tokenFile = o.identity.tokenFile;
    const signer = new ControllerSigner({ address: o.identity.caAddress, trustBundle: roots, serverIdentity: controllerId, log, token: async () => (await readFile(tokenFile, 'utf8')).trim() });
    identity = new IssuedIdentity({ spiffeId: spiffeIdOf(td, DEFAULT_ROOT_NAMESPACE, EASTWEST_SERVICE_ACCOUNT), signer, trustBundle: roots });
    identity.on('renewalFailed', (err, retry) => log.warn('gateway certificate renewal failed', { code: err.code, error: err.message, failures: retry.failures, retryInMs: Math.round(retry.retryInMs) }));
    await identity.start();
    const v = identity.view();
    log.info('gateway certificate issued', { identity: v.identity, serial: v.serial, issuer: v.issuer, notAfter: v.notAfter });
    tls = tlsOf(identity);
  } else {
    tls = { key: readFileSync(o.identity.keyFile, 'utf8'), cert: readFileSync(o.identity.certFile, 'utf8'), ca: roots };
  }
  const gw = new EastWestGateway({
    tls,
    trustDomains: [td, ...o.trustDomainAliases],
    controllerUrl: o.controllerUrl,
    controllerId,
    log, registry,
  });
  if (identity) {
    const id = identity;
    const move = (): void => gw.setTls(tlsOf(id));
    id.on('rotated', () => {
      move();
      const v = id.view();
      log.info('gateway certificate renewed', { serial: v.serial, notAfter: v.notAfter });
    });
    id.on('trustBundleChanged', move);
  }
  await gw.listen(o.port, o.host);
  const metrics = createServer(metricsHandler(registry));
  const ready = readinessServer(() => gw.endpoints > 0 || 'no endpoints of this cluster known yet');
  statusListenerLimits({ registry, metric: 'weft_eastwest_listener_refused_total', log, ...(o.statusLimits ? { limits: o.statusLimits } : {}) }).limit({ metrics, readiness: ready });
  await Promise.all([listenHttp(metrics, PORTS.metrics, o.host), listenHttp(ready, PORTS.readiness, o.host)]);
  log.info('east-west gateway ready', { listen: `${o.host}:${o.port}`, controller: o.controllerUrl });
  return {
    async stop() {
      await gw.close();
      identity?.close();
      for (const s of [metrics, ready]) {
        s.close();
        s.closeAllConnections();
      }
    },
  };
}

// Starts as every part does (lib/main.ts): parseEastWestArgs → runEastWest → SIGTERM stops.
if (import.meta.main) await withMemoryRelease(jsonLogger('eastwest'), () => runMain('eastwest', () => parseEastWestArgs(process.argv.slice(2)), runEastWest));

function tlsOf(id: IssuedIdentity): GatewayTls {
  const c = id.current();
  return { key: c.key, cert: c.certChain.join(''), ca: [...c.trustBundle] };
}
