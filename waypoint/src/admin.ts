// The waypoint's HTTP side ports: admin (localhost: config dump, clusters, last rejection),
// Prometheus metrics, and readiness.
import { debugAccessSignal, debugThroughAdmin, type DebugGrantAccess } from '../../lib/debug-http.ts';
import http from 'node:http';
import { metricsHandler } from '../../lib/status-http.ts';
import type { WaypointEngine } from './engine.ts';
import type { FlowTap } from '../../lib/tap.ts';

function json(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body, (_k, v: unknown) => (v === Infinity ? 'unlimited' : v), 2);
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(text + '\n');
}

/**
 * `/config_dump`, `/clusters`, `/stats` (Prometheus text), `/rejection`, `/certs` (the
 * waypoint's certificate: serial, issuer, validity, renewal state, trusted roots) when `certs` is given,
 * and `/flows` (live access-log entries, NDJSON; lib/tap.ts) when `flows` is given.
 */
export function adminServer(engine: WaypointEngine, extra: () => Record<string, unknown> = () => ({}), certs?: () => unknown, flows?: FlowTap): http.Server {
  return http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    switch (path) {
      case '/flows':
        if (!flows) break;
        // Through the metrics port, only while the grant that opened it lasts (lib/debug-http.ts).
        flows.serve(req, res, debugAccessSignal(req));
        return;
      case '/certs':
        if (!certs) break;
        json(res, 200, certs());
        return;
      case '/config_dump':
        json(res, 200, { version: engine.configVersion, config: engine.config, ...extra() });
        return;
      case '/clusters':
        json(res, 200, engine.clusterStats());
        return;
      case '/rejection':
        json(res, 200, engine.lastRejection
          ? { code: engine.lastRejection.code, message: engine.lastRejection.message, issues: engine.lastRejection.issues }
          : engine.configIssues.length > 0 ? { code: 'WEFT_WAYPOINT_CONFIG_PARTIAL', message: 'objects left out or failing closed', issues: engine.configIssues } : null);
        return;
      case '/stats':
        engine.telemetry.registry.metrics().then((t) => { res.writeHead(200, { 'content-type': 'text/plain' }); res.end(t); }, (e: Error) => { res.writeHead(500); res.end(e.message); });
        return;
    }
    json(res, 404, { error: `unknown admin path ${path}; try /config_dump, /clusters, /rejection, /stats${certs ? ' or /certs' : ''}` });
  });
}

/** Admin paths also served, read-only, as /debug/<path> on the metrics port (lib/debug-http.ts). */
export const WAYPOINT_DEBUG_PATHS = ['/config_dump', '/certs', '/flows', '/clusters', '/rejection'] as const;

/**
 * /metrics, and with `debug` the admin server's read-only paths under /debug/ (for the API server's
 * pod proxy), answered only to requests carrying a debug grant for this pod (`debug.access`,
 * lib/identity/debug-grant.ts): every pod reaches this port, and the waypoint holds no token.
 */
export function metricsServer(engine: WaypointEngine, debug?: { admin: http.Server; access: DebugGrantAccess }): http.Server {
  const prom = metricsHandler(engine.telemetry.registry);
  return http.createServer(debug ? debugThroughAdmin(debug.admin, WAYPOINT_DEBUG_PATHS, prom, debug.access) : prom);
}
