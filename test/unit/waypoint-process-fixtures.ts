// Shared by the tests that run the waypoint's main against an in-process controller
// (waypoint-main.test.ts, waypoint-identity.test.ts): Kubernetes objects for a `shop` service whose
// endpoint is a local backend, and one HTTP/1.1 request over a tunnel to it.
import http from 'node:http';
import type { Duplex } from 'node:stream';
import type { EndpointSlice, Service } from '../../lib/model/objects.ts';

export function service(name: string, ip: string): Service {
  return { apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: 'shop' }, spec: { clusterIP: ip, ports: [{ name: 'http', port: 80, targetPort: 80 }] } };
}

export function slice(name: string, port: number): EndpointSlice {
  return {
    apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', addressType: 'IPv4',
    metadata: { name: `${name}-1`, namespace: 'shop', labels: { 'kubernetes.io/service-name': name } },
    endpoints: [{ addresses: ['127.0.0.1'], conditions: { ready: true } }],
    ports: [{ name: 'http', port, protocol: 'TCP' }],
  };
}

/** GET `path` for reviews.shop over `tunnel`, with extra headers; resolves with status and body. */
export function get(tunnel: Duplex, opts: { path?: string; headers?: Record<string, string> } = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ createConnection: () => tunnel, path: opts.path ?? '/', headers: { host: 'reviews.shop.svc.cluster.local', ...opts.headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    req.end();
  });
}
