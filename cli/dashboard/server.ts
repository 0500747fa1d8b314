// weftctl dashboard's HTTP server: the static UI (cli/dashboard/ui, cytoscape from node_modules; no
// CDN) and a read-only JSON API over MeshData: /api/graph, /api/flows (server-sent events),
// /api/nodes. It binds to loopback by default, answers GET only, refuses a Host header that is not
// the address it serves (a web page elsewhere cannot read it through DNS rebinding) and requests a
// browser makes for a page of another origin (Fetch Metadata), and shows no secrets: no keys, no
// certificates, no tokens, only the state `weftctl` itself prints.
import http from 'node:http';
import { createRequire } from 'node:module';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { flowMatches, type FlowFilter, type Verdict } from '../flows.ts';
import type { MeshData } from './data.ts';

const UI_DIR = join(import.meta.dirname, 'ui');
const STATIC: Record<string, { file: () => string; type: string }> = {
  '/': { file: () => join(UI_DIR, 'index.html'), type: 'text/html; charset=utf-8' },
  '/app.js': { file: () => join(UI_DIR, 'app.js'), type: 'text/javascript; charset=utf-8' },
  '/style.css': { file: () => join(UI_DIR, 'style.css'), type: 'text/css; charset=utf-8' },
  '/vendor/cytoscape.min.js': { file: () => createRequire(import.meta.url).resolve('cytoscape/dist/cytoscape.min.js'), type: 'text/javascript; charset=utf-8' },
};
const SECURITY_HEADERS = {
  'content-security-policy': "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store',
};

export interface DashboardServerOptions {
  data: MeshData;
  /** Host names a request may carry besides the bound address (e.g. when served behind a proxy). */
  allowedHosts?: string[];
  /** Told of each request the server refuses (weftctl dashboard logs them). */
  refused?: (reason: DashboardRefusal, req: http.IncomingMessage) => void;
  /** Live flow streams (/api/flows) open at once; one more gets 503. Default DASHBOARD_MAX_STREAMS. */
  maxStreams?: number;
}

/** Live flow streams at once: a few browser tabs; every flow is written to each of them. */
export const DASHBOARD_MAX_STREAMS = 32;

/**
 * Why a request was refused: `method` (not GET or HEAD: 405), `host` (a Host that is not this
 * dashboard's address: 403), `cross_site` (a browser sent it for a page of another origin: 403),
 * `bad_target` (the request target is not a URL, RFC 9112 3.2: 400), `streams` (maxStreams live
 * flow streams are open already: 503).
 */
export type DashboardRefusal = 'method' | 'host' | 'cross_site' | 'bad_target' | 'streams';

/**
 * Whether a browser sent `req` for a page of another origin (another site, or another port of
 * localhost): Fetch Metadata's Resource Isolation Policy (https://www.w3.org/TR/fetch-metadata/,
 * https://web.dev/articles/fetch-metadata), and the Origin header where a browser sends no
 * Sec-Fetch-Site. Such a page cannot read the answers, but each /api/graph reads every agent's
 * config dump and each /api/flows holds a stream. A followed link (a navigation to a document)
 * opens the dashboard; `frame-ancestors 'none'` keeps it out of other pages' frames. Clients that
 * are not browsers send neither header.
 */
function fromAnotherOrigin(req: http.IncomingMessage): boolean {
  const site = req.headers['sec-fetch-site'];
  if (site !== undefined) {
    if (site === 'same-origin' || site === 'none') return false;
    return !(req.headers['sec-fetch-mode'] === 'navigate' && req.headers['sec-fetch-dest'] === 'document');
  }
  const origin = req.headers.origin;
  return origin !== undefined && URL.parse(origin)?.host !== req.headers.host;
}

function send(res: http.ServerResponse, status: number, type: string, body: string | Buffer): void {
  res.writeHead(status, { 'content-type': type, ...SECURITY_HEADERS }).end(body);
}
const json = (res: http.ServerResponse, status: number, body: unknown) => send(res, status, 'application/json', JSON.stringify(body) + '\n');

export function dashboardServer(o: DashboardServerOptions): http.Server {
  const maxStreams = o.maxStreams ?? DASHBOARD_MAX_STREAMS;
  let streams = 0;
  /** Each flow's event, made once for every stream that shows it. */
  const events = new WeakMap<object, string>();
  const eventOf = (f: object) => {
    let e = events.get(f);
    if (e === undefined) events.set(f, (e = `data: ${JSON.stringify(f)}\n\n`));
    return e;
  };
  const server = http.createServer((req, res) => {
    // `new URL` would throw out of the handler, and end the dashboard, at a target such as `http://[`.
    const url = URL.parse(req.url ?? '/', 'http://dashboard');
    if (!url) {
      o.refused?.('bad_target', req);
      return json(res, 400, { error: 'the request target is not a URL (RFC 9112 section 3.2)' });
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      o.refused?.('method', req);
      res.setHeader('allow', 'GET, HEAD');
      return json(res, 405, { error: 'the dashboard is read-only' });
    }
    const addr = server.address() as AddressInfo | null;
    const host = (req.headers.host ?? '').replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
    const allowed = new Set(['localhost', '127.0.0.1', '::1', addr?.address ?? '', ...(o.allowedHosts ?? [])]);
    if (!allowed.has(host)) {
      o.refused?.('host', req);
      return json(res, 403, { error: `host ${req.headers.host ?? '(none)'} is not this dashboard's address` });
    }
    if (fromAnotherOrigin(req)) {
      o.refused?.('cross_site', req);
      return json(res, 403, { error: 'a page of another origin may not use the dashboard (Sec-Fetch-Site, Origin)' });
    }
    const st = STATIC[url.pathname];
    if (st) {
      readFile(st.file()).then((b) => send(res, 200, st.type, b), (e: Error) => json(res, 500, { error: e.message }));
      return;
    }
    switch (url.pathname) {
      case '/api/graph':
        o.data.graph().then((g) => json(res, 200, g), (e: Error) => json(res, 502, { error: e.message }));
        return;
      case '/api/nodes':
        o.data.nodes().then((n) => json(res, 200, n), (e: Error) => json(res, 502, { error: e.message }));
        return;
      case '/api/flows': {
        const verdict = url.searchParams.get('verdict');
        const filter: FlowFilter = {
          ...(url.searchParams.get('namespace') ? { namespace: url.searchParams.get('namespace')! } : {}),
          ...(url.searchParams.get('workload') ? { workload: url.searchParams.get('workload')! } : {}),
          ...(verdict === 'allowed' || verdict === 'denied' || verdict === 'error' ? { verdict: verdict as Verdict } : {}),
        };
        if (streams >= maxStreams) {
          o.refused?.('streams', req);
          return json(res, 503, { error: `${maxStreams} live flow streams are open already; close one` });
        }
        streams++;
        res.on('close', () => streams--);
        res.writeHead(200, { 'content-type': 'text/event-stream', ...SECURITY_HEADERS });
        const write = (f: object) => { if (!res.writableNeedDrain) res.write(eventOf(f)); };
        if (url.searchParams.get('recent') === '1') for (const f of o.data.recentFlows().slice(-200)) if (flowMatches(f, filter)) write(f);
        res.write(': open\n\n');
        const off = o.data.onFlow((f) => { if (flowMatches(f, filter)) write(f); });
        req.on('close', off);
        return;
      }
    }
    json(res, 404, { error: `no ${url.pathname}`, paths: [...Object.keys(STATIC), '/api/graph', '/api/flows', '/api/nodes'] });
  });
  return server;
}
