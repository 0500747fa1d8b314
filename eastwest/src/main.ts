// weft east-west gateway (eastwest/src/gateway.ts): HBONE on the network's edge for callers in
// other networks.
//   node eastwest/src/main.ts --listen <ip>[:15008] (--cert <chain.pem> --key <key.pem> |
//     --ca-address <ip>:15012 --token-file <f>) --trust-bundle <root.pem>
//     --controller https://<ip>:15014 [--trust-domain cluster.local] [--trust-domain-alias <td>]...
//     [--controller-id <spiffe id>] [--log-level info]
// Identity: static files (read once, never renewed), or issued by the cluster's controller CA
// (--ca-address, authenticated with the token in --token-file) and renewed at half its life, with
// backoff and root rotations, by the same machinery as a waypoint's (lib/identity/issued.ts).
// Metrics on <listen ip>:15020 (/metrics), readiness on <listen ip>:15021 (/healthz/ready).
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';
import { Registry } from 'prom-client';
import { jsonLogger, type LogLevel } from '../../lib/log.ts';
import { DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN, HBONE_PORT, spiffeIdOf } from '../../lib/model/mesh.ts';
import { EASTWEST_SERVICE_ACCOUNT } from '../../lib/model/federation.ts';
import { ControllerSigner, IssuedIdentity } from '../../lib/identity/index.ts';
import { controllerSpiffeId, PORTS, READINESS_PATH } from '../../lib/defaults.ts';
import { splitPemCertificates } from '../../lib/identity/x509.ts';
import { EastWestGateway, type GatewayTls } from './gateway.ts';

const USAGE = 'usage: eastwest/src/main.ts --listen <ip>[:port] (--cert <file> --key <file> | --ca-address <ip:port> --token-file <file>) --trust-bundle <file> --controller https://<ip>:<port> [--trust-domain <td>] [--trust-domain-alias <td>]... [--controller-id <id>] [--log-level <level>]';

try {
  const { values } = parseArgs({
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
  });
  for (const f of ['listen', 'trust-bundle', 'controller'] as const) if (!values[f]) throw new Error(`--${f} is required\n${USAGE}`);
  const issued = values['ca-address'] !== undefined || values['token-file'] !== undefined;
  if (issued ? !(values['ca-address'] && values['token-file']) || values.cert || values.key : !(values.cert && values.key)) {
    throw new Error(`give either --cert and --key (static identity) or --ca-address and --token-file (issued by the controller)\n${USAGE}`);
  }
  const m = /^(\d{1,3}(?:\.\d{1,3}){3})(?::(\d{1,5}))?$/.exec(values.listen!);
  if (!m) throw new Error(`--listen: "${values.listen}" is not <ipv4>[:port]`);
  const host = m[1]!;
  const port = m[2] ? Number(m[2]) : HBONE_PORT;
  const log = jsonLogger('eastwest', values['log-level'] as LogLevel);
  const td = values['trust-domain']!;
  const registry = new Registry();
  const roots = splitPemCertificates(readFileSync(values['trust-bundle']!, 'utf8'));
  const controllerId = values['controller-id'] ?? controllerSpiffeId(td, DEFAULT_ROOT_NAMESPACE);
  let tls: GatewayTls;
  let identity: IssuedIdentity | undefined;
  if (issued) {
    const tokenFile = values['token-file']!;
    const signer = new ControllerSigner({ address: values['ca-address']!, trustBundle: roots, serverIdentity: controllerId, log, token: async () => (await readFile(tokenFile, 'utf8')).trim() });
    identity = new IssuedIdentity({ spiffeId: spiffeIdOf(td, DEFAULT_ROOT_NAMESPACE, EASTWEST_SERVICE_ACCOUNT), signer, trustBundle: roots });
    identity.on('renewalFailed', (err, retry) => log.warn('gateway certificate renewal failed', { code: err.code, error: err.message, failures: retry.failures, retryInMs: Math.round(retry.retryInMs) }));
    await identity.start();
    const v = identity.view();
    log.info('gateway certificate issued', { identity: v.identity, serial: v.serial, issuer: v.issuer, notAfter: v.notAfter });
    tls = tlsOf(identity);
  } else {
    tls = { key: readFileSync(values.key!, 'utf8'), cert: readFileSync(values.cert!, 'utf8'), ca: roots };
  }
  const gw = new EastWestGateway({
    tls,
    trustDomains: [td, ...(values['trust-domain-alias'] ?? [])],
    controllerUrl: values.controller!,
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
  await gw.listen(port, host);
  createServer((req, res) => {
    const path = req.url?.split('?')[0];
    if (path === '/metrics') {
      registry.metrics().then((t) => res.writeHead(200, { 'content-type': registry.contentType }).end(t), (e: Error) => res.writeHead(500).end(e.message));
    } else res.writeHead(404).end();
  }).listen(PORTS.metrics, host);
  createServer((req, res) => {
    if (req.url?.split('?')[0] === READINESS_PATH && gw.endpoints > 0) res.writeHead(200).end('ready\n');
    else res.writeHead(503).end('no endpoints of this cluster known yet\n');
  }).listen(PORTS.readiness, host);
  log.info('east-west gateway ready', { listen: `${host}:${port}`, controller: values.controller });
  const stop = () => void gw.close().then(() => {
    identity?.close();
    process.exit(0);
  });
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
} catch (e) {
  process.stderr.write(`${(e as Error).message}\n`);
  process.exit(2);
}

function tlsOf(id: IssuedIdentity): GatewayTls {
  const c = id.current();
  return { key: c.key, cert: c.certChain.join(''), ca: [...c.trustBundle] };
}
