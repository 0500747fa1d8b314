// HTTP requests from this process into another network namespace (an agent's localhost admin
// port, a node's metrics): the socket is created inside that namespace by the binding, then Node
// connects it there.
import http from 'node:http';
import net from 'node:net';
import { createSocketInNetns } from '../../agent/libbpf/index.ts';
import { readLines } from '../http-lines.ts';

export interface NetnsResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

export function requestInNetns(netnsPath: string, url: string, opts: { method?: string; body?: string; timeoutMs?: number } = {}): Promise<NetnsResponse> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        method: opts.method ?? 'GET',
        host: u.hostname,
        port: Number(u.port || 80),
        path: u.pathname + u.search,
        timeout: opts.timeoutMs ?? 5_000,
        createConnection: () => {
          const fd = createSocketInNetns(netnsPath, { bind: { host: '0.0.0.0', port: 0 } });
          const s = new net.Socket({ fd, readable: true, writable: true });
          return s.connect(Number(u.port || 80), u.hostname);
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString() }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`request to ${url} in ${netnsPath} timed out`)));
    req.on('error', reject);
    req.end(opts.body);
  });
}

export async function getJsonInNetns<T>(netnsPath: string, url: string): Promise<T> {
  const r = await requestInNetns(netnsPath, url);
  if (r.status !== 200) throw new Error(`GET ${url} in ${netnsPath}: ${r.status} ${r.body.trim()}`);
  return JSON.parse(r.body) as T;
}

/**
 * Streams a newline-delimited response from inside a netns: `onLine` gets each line as it arrives.
 * Resolves when the stream ends (the server closed it) and rejects on a connection error or a
 * status other than 200; `signal` ends it from this side.
 */
export function streamLinesInNetns(netnsPath: string, url: string, onLine: (line: string) => void, signal?: AbortSignal): Promise<void> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: u.hostname,
        port: Number(u.port || 80),
        path: u.pathname + u.search,
        ...(signal ? { signal } : {}),
        createConnection: () => {
          const fd = createSocketInNetns(netnsPath, { bind: { host: '0.0.0.0', port: 0 } });
          const s = new net.Socket({ fd, readable: true, writable: true });
          return s.connect(Number(u.port || 80), u.hostname);
        },
      },
      (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          reject(new Error(`GET ${url} in ${netnsPath}: ${res.statusCode}`));
          return;
        }
        readLines(res, onLine, signal).then(resolve, reject);
      },
    );
    req.on('error', (e) => (signal?.aborted ? resolve() : reject(e)));
    req.end();
  });
}

/** Whether a TCP connection to host:port opens from inside a netns within `timeoutMs` (closed at once). */
export function tcpConnectsInNetns(netnsPath: string, host: string, port: number, timeoutMs = 2_000): Promise<{ ok: true } | { ok: false; error: string }> {
  return new Promise((resolve) => {
    let s: net.Socket;
    try {
      const fd = createSocketInNetns(netnsPath, { bind: { host: '0.0.0.0', port: 0 } });
      s = new net.Socket({ fd, readable: true, writable: true });
    } catch (e) {
      resolve({ ok: false, error: (e as Error).message });
      return;
    }
    const timer = setTimeout(() => {
      s.destroy();
      resolve({ ok: false, error: `no answer within ${timeoutMs} ms` });
    }, timeoutMs);
    s.once('connect', () => {
      clearTimeout(timer);
      s.destroy();
      resolve({ ok: true });
    });
    s.once('error', (e) => {
      clearTimeout(timer);
      s.destroy();
      resolve({ ok: false, error: e.message });
    });
    s.connect(port, host);
  });
}
