// Test support for the waypoint: loopback backends, tunnel listeners that feed the engine through
// handleTunnel, and builders for compiled config objects. Used by test/unit/waypoint-*.test.ts.
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import type { Endpoint, Route, RouteBackend, RouteFilter, RouteMatch, Service, TrafficPolicy, WaypointConfig, WorkloadMeta } from '../../lib/model/mesh.ts';
import type { WaypointEngine } from '../src/engine.ts';

export const NS = 'shop';
export const CALLER = 'spiffe://cluster.local/ns/shop/sa/tester';
/** The caller's workload, as its agent's baggage would describe it. */
export const CALLER_META: WorkloadMeta = { workloadName: 'tester', namespace: NS, canonicalService: 'tester-app', canonicalRevision: 'v1', cluster: 'Kubernetes' };

export interface Backend {
  port: number;
  hits: number;
  close(): Promise<void>;
}

/** An HTTP/1.1 backend on a free loopback port; counts requests. */
export async function startHttpBackend(handler: (req: http.IncomingMessage, res: http.ServerResponse, n: number) => void): Promise<Backend> {
  const b = { port: 0, hits: 0 } as Backend;
  const server = http.createServer((req, res) => { b.hits++; handler(req, res, b.hits); });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  b.port = (server.address() as AddressInfo).port;
  b.close = () => new Promise((r) => { server.closeAllConnections(); server.close(() => r()); });
  return b;
}

/** Answers 200 with a JSON body naming `name` and echoing the request. */
export function echo(name: string): (req: http.IncomingMessage, res: http.ServerResponse) => void {
  return (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = JSON.stringify({ backend: name, method: req.method, url: req.url, headers: req.headers, body: Buffer.concat(chunks).toString() });
      res.writeHead(200, { 'content-type': 'application/json', 'x-backend': name });
      res.end(body);
    });
  };
}

export interface Listener {
  port: number;
  close(): Promise<void>;
}

/** A loopback TCP listener whose connections become engine tunnels (the HBONE server's role). */
export async function startTunnelListener(engine: WaypointEngine, target: string, peerSpiffeId: string | undefined = CALLER, peerMeta: WorkloadMeta | undefined = peerSpiffeId === CALLER ? CALLER_META : undefined): Promise<Listener> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ noDelay: true }, (sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    const info: { target: string; peerSpiffeId?: string; peerMeta?: WorkloadMeta; clientAddress?: string } = { target };
    if (peerSpiffeId) info.peerSpiffeId = peerSpiffeId;
    if (peerMeta) info.peerMeta = peerMeta;
    if (sock.remoteAddress) info.clientAddress = sock.remoteAddress;
    engine.handleTunnel(sock, info);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  };
}

export interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One HTTP/1.1 request through a listener. */
export function request(port: number, opts: { method?: string; path?: string; host?: string; headers?: Record<string, string>; body?: string; agent?: http.Agent | false } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1', port, method: opts.method ?? 'GET', path: opts.path ?? '/',
      headers: { host: opts.host ?? 'reviews.shop.svc.cluster.local', ...opts.headers },
      agent: opts.agent ?? false,
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** One HTTP/2 (prior knowledge) request on a session. */
export function h2request(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders, body?: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const s = session.request(headers, { endStream: body === undefined });
    const chunks: Buffer[] = [];
    let head: http2.IncomingHttpHeaders = {};
    s.on('response', (h) => { head = h; });
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('end', () => resolve({ status: Number(head[':status']), headers: head as http.IncomingHttpHeaders, body: Buffer.concat(chunks).toString() }));
    s.on('error', reject);
    if (body !== undefined) s.end(body);
  });
}

// ---------------------------------------------------------------------------------------------
// Compiled-config builders

export function endpoint(port: number, ip = '127.0.0.1', uid = `pod-${port}`): Endpoint {
  return {
    workloadUid: uid, ip, node: 'node-a', port, ports: {}, enrolled: false, ready: true,
    workload: { workloadName: uid, namespace: NS, canonicalService: uid, canonicalRevision: 'latest', cluster: 'Kubernetes' },
  };
}

export function service(name: string, vip: string, endpoints: Endpoint[], opts: { port?: number; appProtocol?: 'http' | 'http2' | 'grpc' | 'tcp'; namespace?: string } = {}): Service {
  const ns = opts.namespace ?? NS;
  const port = opts.port ?? 80;
  return {
    name, namespace: ns, hostname: `${name}.${ns}.svc.cluster.local`, vips: [vip],
    ports: [{ name: 'http', port, targetPort: port, protocol: 'TCP', appProtocol: opts.appProtocol ?? 'tcp' }],
    endpoints: endpoints.map((e) => ({ ...e, ports: { [String(port)]: e.port! } })),
  };
}

export function backend(name: string, weight = 1, filters: RouteFilter[] = [], ns = NS): RouteBackend {
  return { service: `${ns}/${name}`, hostname: `${name}.${ns}.svc.cluster.local`, weight, filters };
}

export function match(m: Partial<RouteMatch> = {}): RouteMatch {
  return { headers: [], queryParams: [], ...m };
}

export function route(name: string, parent: string, rules: Array<Partial<Route['rules'][number]> & { backends: RouteBackend[] }>, opts: { kind?: 'HTTPRoute' | 'GRPCRoute'; order?: string } = {}): Route {
  return {
    name, namespace: NS, kind: opts.kind ?? 'HTTPRoute', service: `${NS}/${parent}`, hostnames: [],
    order: opts.order ?? `2026-01-01T00:00:00Z/${NS}/${name}`,
    rules: rules.map((r) => ({ matches: [], filters: [], timeouts: {}, ...r })),
  };
}

export function trafficPolicy(service: string, spec: Partial<Omit<TrafficPolicy, 'name' | 'namespace' | 'service'>>): TrafficPolicy {
  return { name: `${service}-tp`, namespace: NS, service: `${NS}/${service}`, timeouts: {}, loadBalancer: 'ROUND_ROBIN', ...spec };
}

export function config(parts: Partial<WaypointConfig>): WaypointConfig {
  return { namespace: NS, services: [], routes: [], trafficPolicies: [], policies: [], waypoints: [], ...parts };
}

/** Reads a metric's samples from the engine's registry as `labels → value`. */
export async function metricSamples(engine: WaypointEngine, name: string): Promise<Array<{ labels: Record<string, string | number>; value: number }>> {
  const m = engine.telemetry.registry.getSingleMetric(name);
  if (!m) return [];
  const data = await m.get();
  return data.values.map((v) => ({ labels: v.labels as Record<string, string | number>, value: v.value }));
}
