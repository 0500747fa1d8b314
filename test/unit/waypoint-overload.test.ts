// Downstream overload: --max-requests caps the requests in progress in a waypoint. Beyond it a request
// gets 503 at once (gRPC: UNAVAILABLE) with x-weft-overloaded and flag OM, counted and logged,
// and never reaches a backend; slots come back when requests end, however they end.
import assert from 'node:assert/strict';
import type http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { describe, it } from 'node:test';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { FlagError } from '../../waypoint/src/errors.ts';
import { parseFlags } from '../../waypoint/src/main.ts';
import { DEFAULT_MAX_REQUESTS, RequestAdmission } from '../../waypoint/src/overload.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import {
  config, endpoint, h2request, metricSamples, request, service, startHttpBackend, startTunnelListener, type Backend, type Listener,
} from '../../waypoint/testing/harness.ts';
import { holds, until } from '../lab/wait.ts';

/** A backend that holds every request until release(). */
async function heldBackend(): Promise<Backend & { held: http.ServerResponse[]; release(): void }> {
  const held: http.ServerResponse[] = [];
  const b = await startHttpBackend((req, res) => {
    req.resume();
    held.push(res);
  }) as Backend & { held: http.ServerResponse[]; release(): void };
  b.held = held;
  b.release = () => { for (const r of held.splice(0)) r.end('done\n'); };
  return b;
}

interface Rig { b: Awaited<ReturnType<typeof heldBackend>>; engine: WaypointEngine; l: Listener; log: Array<Record<string, unknown>>; warnings: Array<{ msg: string; fields: Record<string, unknown> }>; close(): Promise<void> }

async function rig(maxRequests: number): Promise<Rig> {
  const b = await heldBackend();
  const log: Array<Record<string, unknown>> = [];
  const warnings: Rig['warnings'] = [];
  const engine = new WaypointEngine({
    namespace: 'shop', name: 'wp', upstream: new TcpUpstream(), maxRequests,
    telemetry: { accessLog: (line) => log.push(JSON.parse(line) as Record<string, unknown>), warn: (msg, fields) => warnings.push({ msg, fields }) },
  });
  engine.applyConfig(config({ services: [service('reviews', '10.96.0.10', [endpoint(b.port)])] }));
  const l = await startTunnelListener(engine, '10.96.0.10:80');
  return { b, engine, l, log, warnings, async close() { b.release(); await l.close(); await engine.close(); await b.close(); } };
}

const active = async (engine: WaypointEngine): Promise<number> => (await metricSamples(engine, 'weft_waypoint_downstream_requests_active'))[0]?.value ?? -1;

describe('waypoint overload (--max-requests)', () => {
  it('answers HTTP/1.1 request N+1 with 503 at once, never forwards it, and admits again once a slot is free', async () => {
    const r = await rig(3);
    try {
      const held = [0, 1, 2].map((i) => request(r.l.port, { path: `/held-${i}` }));
      await until('three requests at the backend', () => r.b.held.length === 3, 5_000);
      assert.equal(await active(r.engine), 3);
      const t0 = Date.now();
      const over = await request(r.l.port, { path: '/over' });
      const ms = Date.now() - t0;
      assert.equal(over.status, 503);
      assert.equal(over.headers['x-weft-overloaded'], 'waypoint shop/wp at 3 concurrent requests');
      assert.equal(over.headers['x-weft-flags'], 'OM');
      assert.match(over.body, /waypoint shop\/wp is overloaded: 3 requests in progress \(--max-requests\)/);
      assert.ok(ms < 1000, `answered at once (${ms} ms)`);
      // It was answered without the backend; nothing of it arrives later either (the window the check is given).
      await holds('the refused request never reached the backend', () => r.b.hits === 3, 50);
      assert.deepEqual(await metricSamples(r.engine, 'weft_waypoint_overload_rejections_total'), [{ labels: { protocol: 'HTTP/1.1' }, value: 1 }]);
      const line = r.log.find((x) => x.path === '/over')!;
      assert.equal(line.response_code, 503);
      assert.equal(line.response_flags, 'OM');
      const total = await metricSamples(r.engine, 'istio_requests_total');
      assert.equal(total.find((s) => s.labels.response_flags === 'OM')?.value, 1);

      r.b.release();
      assert.deepEqual((await Promise.all(held)).map((x) => x.status), [200, 200, 200]);
      await until('the slots are free', async () => (await active(r.engine)) === 0, 5_000);
      const next = request(r.l.port, { path: '/after' });
      await until('the next request at the backend', () => r.b.held.length === 1, 5_000);
      r.b.release();
      assert.equal((await next).status, 200);
    } finally {
      await r.close();
    }
  });

  it('gives a slot back when the client goes away, and counts local replies while they are made', async () => {
    const r = await rig(2);
    try {
      const held = request(r.l.port, { path: '/held' });
      // A raw client whose request is held, then abandoned.
      const sock = net.connect(r.l.port, '127.0.0.1');
      sock.on('error', () => {});
      sock.write('GET /abandoned HTTP/1.1\r\nhost: reviews.shop.svc.cluster.local\r\n\r\n');
      await until('both at the backend', () => r.b.held.length === 2, 5_000);
      assert.equal((await request(r.l.port)).status, 503);
      sock.destroy();
      await until('the abandoned slot is free', async () => (await active(r.engine)) === 1, 5_000);
      // A request for no known service gets its 404 under the limit, and the slot comes back after it.
      const nowhere = await startTunnelListener(r.engine, '10.96.9.9:80');
      assert.equal((await request(nowhere.port, { host: 'nope.example' })).status, 404);
      await nowhere.close();
      await until('the 404 slot is free', async () => (await active(r.engine)) === 1, 5_000);
      r.b.release();
      assert.equal((await held).status, 200);
      await until('all slots free', async () => (await active(r.engine)) === 0, 5_000);
    } finally {
      await r.close();
    }
  });

  it('refuses HTTP/2 streams beyond the limit with 503 on the same session', async () => {
    const r = await rig(2);
    const session = http2.connect(`http://127.0.0.1:${r.l.port}`);
    try {
      const headers = (path: string) => ({ ':method': 'GET', ':path': path, ':authority': 'reviews.shop.svc.cluster.local' });
      const held = [h2request(session, headers('/a')), h2request(session, headers('/b'))];
      await until('two streams at the backend', () => r.b.held.length === 2, 5_000);
      const over = await h2request(session, headers('/c'));
      assert.equal(over.status, 503);
      assert.equal(over.headers['x-weft-overloaded'], 'waypoint shop/wp at 2 concurrent requests');
      assert.equal(over.headers['x-weft-flags'], 'OM');
      assert.equal(r.b.hits, 2);
      r.b.release();
      assert.deepEqual((await Promise.all(held)).map((x) => x.status), [200, 200]);
      assert.deepEqual(await metricSamples(r.engine, 'weft_waypoint_overload_rejections_total'), [{ labels: { protocol: 'HTTP/2' }, value: 1 }]);
    } finally {
      session.close();
      await r.close();
    }
  });

  it('fails a gRPC call beyond the limit with UNAVAILABLE', async () => {
    const r = await rig(1);
    const grpcListener = await startTunnelListener(r.engine, '10.96.0.10:80');
    const raw = (b: Buffer): Buffer => b;
    const Ctor = grpc.makeGenericClientConstructor({
      Echo: { path: '/test.Echo/Echo', requestStream: false, responseStream: false, requestSerialize: raw, requestDeserialize: raw, responseSerialize: raw, responseDeserialize: raw },
    }, 'Echo');
    const client = new Ctor(`127.0.0.1:${grpcListener.port}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & { Echo(req: Buffer, md: grpc.Metadata, cb: (err: grpc.ServiceError | null) => void): grpc.ClientUnaryCall };
    try {
      const held = request(r.l.port, { path: '/held' });
      await until('the one slot is taken', () => r.b.held.length === 1, 5_000);
      let headers: grpc.Metadata | undefined;
      const err = await new Promise<grpc.ServiceError | null>((resolve) => {
        const c = client.Echo(Buffer.from('x'), new grpc.Metadata(), (e) => resolve(e));
        c.on('metadata', (m) => { headers = m; });
      });
      assert.equal(err?.code, grpc.status.UNAVAILABLE);
      assert.match(err!.details, /waypoint shop\/wp is overloaded: 1 requests in progress/);
      assert.deepEqual(headers?.get('x-weft-overloaded'), ['waypoint shop/wp at 1 concurrent requests']);
      assert.equal(r.b.hits, 1, 'the call never reached a backend');
      r.b.release();
      assert.equal((await held).status, 200);
    } finally {
      client.close();
      await grpcListener.close();
      await r.close();
    }
  });

  it('takes --max-requests from 1 to 1,000,000 and refuses anything else naming the flag', () => {
    const base = ['--namespace', 'shop', '--name', 'wp', '--controller', 'c:1'];
    assert.equal(parseFlags(base, {}).maxRequests, DEFAULT_MAX_REQUESTS);
    assert.equal(DEFAULT_MAX_REQUESTS, 10_000);
    assert.equal(parseFlags([...base, '--max-requests', '250'], {}).maxRequests, 250);
    for (const bad of ['0', '-1', '1.5', 'lots', '', '1000001', '1e3']) {
      assert.throws(() => parseFlags([...base, `--max-requests=${bad}`], {}), (e: Error) => e instanceof FlagError && /^--max-requests: ".*" is not a whole number of requests from 1 to 1000000$/.test(e.message), `"${bad}"`);
    }
    assert.throws(() => new RequestAdmission(0), RangeError);
    assert.throws(() => new WaypointEngine({ namespace: 'shop', name: 'wp', upstream: new TcpUpstream(), maxRequests: 2.5 }), /maxRequests/);
  });
});

// Envoy's HTTP/1 codec pauses dispatch after one request and the connection manager stops reading
// until it is answered (source/common/http/conn_manager_impl.cc onData): a connection carries one
// request at a time. node's server hands over every pipelined request it parsed at once, so one
// HTTP/1.1 connection writing 300 requests in one packet had 300 at the backend and took 300 of the
// waypoint's --max-requests places (an HTTP/2 session is held to 250 streams).
describe('HTTP/1.1 pipelining', () => {
  /** Writes `requests` on one connection; its responses' status lines, read until it closes. */
  function pipeline(port: number, requests: string[]): { statuses: Promise<string[]>; sock: net.Socket } {
    const sock = net.connect(port, '127.0.0.1', () => sock.write(requests.join('')));
    sock.on('error', () => {});
    let text = '';
    sock.on('data', (c: Buffer) => { text += c.toString('latin1'); });
    return { sock, statuses: new Promise((resolve) => sock.on('close', () => resolve(text.match(/^HTTP\/1\.1 \d{3}/gm) ?? []))) };
  }
  const get = (path: string, last = false): string => `GET ${path} HTTP/1.1\r\nHost: reviews\r\n${last ? 'Connection: close\r\n' : ''}\r\n`;

  it('serves pipelined requests one at a time, in order, each reaching the backend after the answer before it', async () => {
    const r = await rig(100);
    try {
      const paths = ['/p0', '/p1', '/p2', '/p3'];
      const seen: string[] = [];
      const { statuses } = pipeline(r.l.port, paths.map((p, i) => get(p, i === paths.length - 1)));
      for (const p of paths) {
        await until(`${p} at the backend`, () => r.b.held.length === 1, 5_000);
        // None of the others arrives while this one is held (the window the check is given).
        await holds('one request of the connection at the backend at a time', () => r.b.held.length === 1, 50);
        assert.equal(await active(r.engine), 1, 'one place of --max-requests taken');
        seen.push(r.b.held[0]!.req.url ?? '');
        r.b.release();
      }
      assert.deepEqual(seen, paths);
      assert.deepEqual(await statuses, paths.map(() => 'HTTP/1.1 200'));
    } finally {
      await r.close();
    }
  });

  it('closes a connection with more requests waiting than an HTTP/2 session may open streams, counted and logged; others are served', async () => {
    const r = await rig(10_000);
    try {
      const { statuses, sock } = pipeline(r.l.port, Array.from({ length: 300 }, (_, i) => get(`/flood-${i}`)));
      await until('the flooding connection closed', () => sock.destroyed, 10_000);
      assert.ok(r.b.held.length <= 1, `${r.b.held.length} of its requests reached the backend`);
      const closed = (await metricSamples(r.engine, 'weft_waypoint_h1_connections_closed_total')).find((s) => s.labels['reason'] === 'pipeline_depth');
      assert.equal(closed?.value, 1);
      const line = r.warnings.find((w) => w.fields['reason'] === 'pipeline_depth');
      assert.ok(line, JSON.stringify(r.warnings));
      assert.equal(line.fields['peer'], 'spiffe://cluster.local/ns/shop/sa/tester');
      r.b.release();
      await statuses;
      const other = request(r.l.port, { path: '/other' });
      await until('another client at the backend', () => r.b.held.length === 1, 5_000);
      r.b.release();
      assert.equal((await other).status, 200);
    } finally {
      await r.close();
    }
  });
});
