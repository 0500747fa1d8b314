// weft east-west gateway (eastwest/src/gateway.ts): HBONE on the network's edge for callers in
// other networks.
//   node eastwest/src/main.ts --listen <ip>[:15008] --cert <chain.pem> --key <key.pem>
//     --trust-bundle <root.pem> --controller https://<ip>:15014 [--trust-domain cluster.local]
//     [--trust-domain-alias <td>]... [--controller-id <spiffe id>] [--log-level info]
// Metrics on <listen ip>:15020 (/metrics), readiness on <listen ip>:15021 (/healthz/ready).
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';
import { Registry } from 'prom-client';
import { jsonLogger, type LogLevel } from '../../lib/log.ts';
import { DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN, HBONE_PORT } from '../../lib/model/mesh.ts';
import { controllerSpiffeId, PORTS, READINESS_PATH } from '../../lib/defaults.ts';
import { splitPemCertificates } from '../../lib/identity/x509.ts';
import { EastWestGateway } from './gateway.ts';

const USAGE = 'usage: eastwest/src/main.ts --listen <ip>[:port] --cert <file> --key <file> --trust-bundle <file> --controller https://<ip>:<port> [--trust-domain <td>] [--trust-domain-alias <td>]... [--controller-id <id>] [--log-level <level>]';

try {
  const { values } = parseArgs({
    options: {
      listen: { type: 'string' },
      cert: { type: 'string' },
      key: { type: 'string' },
      'trust-bundle': { type: 'string' },
      controller: { type: 'string' },
      'controller-id': { type: 'string' },
      'trust-domain': { type: 'string', default: DEFAULT_TRUST_DOMAIN },
      'trust-domain-alias': { type: 'string', multiple: true },
      'log-level': { type: 'string', default: 'info' },
    },
    strict: true,
  });
  for (const f of ['listen', 'cert', 'key', 'trust-bundle', 'controller'] as const) if (!values[f]) throw new Error(`--${f} is required\n${USAGE}`);
  const m = /^(\d{1,3}(?:\.\d{1,3}){3})(?::(\d{1,5}))?$/.exec(values.listen!);
  if (!m) throw new Error(`--listen: "${values.listen}" is not <ipv4>[:port]`);
  const host = m[1]!;
  const port = m[2] ? Number(m[2]) : HBONE_PORT;
  const log = jsonLogger('eastwest', values['log-level'] as LogLevel);
  const td = values['trust-domain']!;
  const registry = new Registry();
  const gw = new EastWestGateway({
    tls: { key: readFileSync(values.key!, 'utf8'), cert: readFileSync(values.cert!, 'utf8'), ca: splitPemCertificates(readFileSync(values['trust-bundle']!, 'utf8')) },
    trustDomains: [td, ...(values['trust-domain-alias'] ?? [])],
    controllerUrl: values.controller!,
    controllerId: values['controller-id'] ?? controllerSpiffeId(td, DEFAULT_ROOT_NAMESPACE),
    log, registry,
  });
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
  const stop = () => void gw.close().then(() => process.exit(0));
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
} catch (e) {
  process.stderr.write(`${(e as Error).message}\n`);
  process.exit(2);
}
