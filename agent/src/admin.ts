// The agent's HTTP side doors: admin on localhost (config dump, certificates, BPF state, log
// level), Prometheus metrics, and readiness.
import http from 'node:http';
import type { AddressInfo } from 'node:net';

/** Why a side port answered a request by itself, without a route: a metric label. */
export type SidePortRefusal = 'bad_target';
/** Hears of each refused request (the agent counts and logs it). */
export type OnSidePortRefusal = (reason: SidePortRefusal, req: http.IncomingMessage) => void;

export type Route = (url: URL, req: http.IncomingMessage) => Promise<unknown> | unknown;

export class HttpStatusError extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

/** A small JSON (or text) HTTP server over a table of routes; unknown paths list the known ones. */
export function jsonServer(routes: Record<string, Route>, opts: {
  text?: Record<string, () => Promise<{ type: string; body: string }>>;
  /** Paths that answer by themselves (streams such as /flows). */
  raw?: Record<string, (req: http.IncomingMessage, res: http.ServerResponse) => void>;
  /** Told of each request answered 400 because its target is not a URL. */
  refused?: OnSidePortRefusal;
} = {}): http.Server {
  return http.createServer((req, res) => {
    // RFC 9112 3.2: origin-form or absolute-form. A target that is neither (`http://[`) is the
    // client's mistake, answered here; `new URL` would throw out of the handler and end the process.
    const url = URL.parse(req.url ?? '/', 'http://localhost');
    if (!url) {
      opts.refused?.('bad_target', req);
      res.writeHead(400, { 'content-type': 'application/json', connection: 'close' }).end(JSON.stringify({ error: 'the request target is not a URL (RFC 9112 section 3.2)' }) + '\n');
      return;
    }
    const raw = opts.raw?.[url.pathname];
    if (raw) {
      raw(req, res);
      return;
    }
    const text = opts.text?.[url.pathname];
    if (text) {
      text().then(
        (r) => res.writeHead(200, { 'content-type': r.type }).end(r.body),
        (e: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${e.message}\n`),
      );
      return;
    }
    const route = routes[url.pathname];
    if (!route) {
      res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: `no ${url.pathname}`, paths: Object.keys(routes) }) + '\n');
      return;
    }
    Promise.resolve()
      .then(() => route(url, req))
      .then(
        (body) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body, jsonReplacer, 2) + '\n'),
        (e: Error) => {
          const status = e instanceof HttpStatusError ? e.status : 500;
          res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify({ error: e.message }) + '\n');
        },
      );
  });
}

/** bigint (netns cookies) and Map survive JSON. */
export function jsonReplacer(_k: string, v: unknown): unknown {
  if (typeof v === 'bigint') return v.toString();
  if (v instanceof Map) return Object.fromEntries([...v.entries()].map(([k, x]) => [String(k), x]));
  return v;
}

/** Listens with SO_REUSEPORT, so an upgraded agent can bind the same port while the old one drains. */
export function listen(server: http.Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port, host, reusePort: true }, () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}
