// The status ports every part serves (docs/ARCHITECTURE.md, "Ports"): Prometheus /metrics on
// 15020, /healthz/ready and /healthz/live on 15021, and the one way to open a listener. The
// controller, waypoints and the east-west gateway serve these handlers; the agent answers the same
// paths from its JSON route server (agent/src/admin.ts), which its side ports share with /debug.
// Every status listener is bounded by lib/listener-limits.ts.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { LIVENESS_PATH, READINESS_PATH } from './defaults.ts';

const pathOf = (req: http.IncomingMessage): string => (req.url ?? '/').split('?')[0]!;

/** Answers /metrics from `registry` (500 with the error when it cannot be read); any other path 404. */
export function metricsHandler(registry: Registry): http.RequestListener {
  return (req, res) => {
    if (pathOf(req) !== '/metrics') { res.writeHead(404).end(); return; }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (e: Error) => res.writeHead(500).end(e.message),
    );
  };
}

/**
 * /healthz/ready: 200 once `ready()` returns true, else 503 with the reason it returns.
 * /healthz/live: 200 while the event loop turns (the liveness probe). Any other path 404.
 */
export function readinessServer(ready: () => true | string): http.Server {
  return http.createServer((req, res) => {
    const path = pathOf(req);
    if (path === LIVENESS_PATH) { res.writeHead(200, { 'content-type': 'text/plain' }).end('live\n'); return; }
    if (path !== READINESS_PATH) { res.writeHead(404).end(); return; }
    const r = ready();
    res.writeHead(r === true ? 200 : 503, { 'content-type': 'text/plain' }).end(r === true ? 'ready\n' : `${r}\n`);
  });
}

/**
 * Listens and resolves with the address (its port, when 0 was asked). `reusePort` lets an upgraded
 * process bind the same port while the old one drains (the agent's side ports).
 */
export function listenHttp(server: http.Server, port: number, host: string, opts: { reusePort?: boolean } = {}): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port, host, ...(opts.reusePort ? { reusePort: true } : {}) }, () => {
      server.off('error', reject);
      resolve(server.address() as AddressInfo);
    });
  });
}
