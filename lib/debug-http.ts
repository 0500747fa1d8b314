// Read-only debug paths on the metrics port. The admin port (15000) listens on loopback only, which
// the API server's pod proxy cannot reach (agents run on the host network: their pod address is
// the node's), so `weftctl` on a cluster and an in-cluster dashboard read a component's state as
// `GET :15020/debug/<path>` through /api/v1/namespaces/NS/pods/POD:15020/proxy/debug/<path>.
// Only the paths a component lists are served there, each by its own admin handler, GET only;
// nothing that writes (log level) and nothing secret (certificates are listed, keys never are).
import type http from 'node:http';

/** Prefix of the admin paths the metrics port also answers. */
export const DEBUG_PATH_PREFIX = '/debug';

/**
 * Serves `GET <prefix><path>` for each of `paths` on `metrics` by handing the request to
 * `admin`'s handler with the prefix taken off; every other request goes to `fallback`.
 */
export function debugThroughAdmin(admin: http.Server, paths: readonly string[], fallback: (req: http.IncomingMessage, res: http.ServerResponse) => void): (req: http.IncomingMessage, res: http.ServerResponse) => void {
  const allowed = new Set(paths);
  return (req, res) => {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    if (!path.startsWith(`${DEBUG_PATH_PREFIX}/`)) return fallback(req, res);
    const inner = path.slice(DEBUG_PATH_PREFIX.length);
    if (!allowed.has(inner)) {
      res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: `no ${path}`, paths: [...allowed].map((p) => DEBUG_PATH_PREFIX + p) }) + '\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    req.url = inner + (q < 0 ? '' : url.slice(q));
    admin.emit('request', req, res);
  };
}
