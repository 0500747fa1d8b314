import assert from 'node:assert/strict';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import { after, afterEach, describe, it } from 'node:test';
import type { AuthorizationPolicy } from '../../lib/model/mesh.ts';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import {
  CALLER, backend, config, endpoint, metricSamples, route, service, startTunnelListener, trafficPolicy, type Listener,
} from '../../waypoint/testing/harness.ts';

interface TcpBackend { port: number; close(): Promise<void> }

async function startTcpBackend(onConn: (s: net.Socket) => void): Promise<TcpBackend> {
  const socks = new Set<net.Socket>();
  const server = net.createServer((s) => { socks.add(s); s.on('close', () => socks.delete(s)); s.on('error', () => {}); onConn(s); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise((r) => { for (const s of socks) s.destroy(); server.close(() => r()); }),
  };
}

/** Connects, optionally writes, and collects what arrives until `until` matches or the socket closes. */
function talk(port: number, send: Buffer | undefined, until: (got: Buffer) => boolean, timeoutMs = 3000): Promise<{ got: Buffer; closed: boolean }> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let got = Buffer.alloc(0);
    let closed = false;
    const finish = (): void => { clearTimeout(t); s.destroy(); resolve({ got, closed }); };
    const t = setTimeout(finish, timeoutMs);
    s.on('connect', () => { if (send) s.write(send); });
    s.on('data', (c: Buffer) => { got = Buffer.concat([got, c]); if (until(got)) finish(); });
    s.on('error', () => {});
    s.on('close', () => { closed = true; finish(); });
  });
}

describe('waypoint TCP passthrough', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => { for (const c of cleanups.splice(0).reverse()) await c(); });
  after(async () => { for (const c of cleanups.splice(0).reverse()) await c(); });

  async function setup(b: TcpBackend, extra: { routes?: boolean; policies?: AuthorizationPolicy[]; appProtocol?: 'http' | 'tcp'; trafficPolicy?: Parameters<typeof trafficPolicy>[1]; accessLog?: (line: string) => void } = {}, peer = CALLER): Promise<{ engine: WaypointEngine; listener: Listener }> {
    const engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), serverFirstTimeoutMs: 100, telemetry: { accessLog: extra.accessLog ?? null } });
    engine.applyConfig(config({
      services: [service('db', '10.96.0.40', [endpoint(b.port)], { port: 5432, appProtocol: extra.appProtocol ?? 'tcp' })],
      routes: extra.routes ? [route('db', 'db', [{ backends: [{ ...backend('db'), port: 5432 }] }])] : [],
      policies: extra.policies ?? [],
      trafficPolicies: extra.trafficPolicy ? [trafficPolicy('db', extra.trafficPolicy)] : [],
    }));
    const listener = await startTunnelListener(engine, '10.96.0.40:5432', peer);
    cleanups.push(async () => { await listener.close(); await engine.close(); await b.close(); });
    return { engine, listener };
  }

  // Envoy's tcp_proxy idle_timeout (Istio connectionPool.tcp.idleTimeout, default 1 h): a passed-through
  // connection with no bytes either way for that long is closed, so a client cannot hold a tunnel
  // and an endpoint connection forever by saying nothing. TrafficPolicy timeouts.idle sets it.
  it('closes a passed-through connection idle for the TrafficPolicy idle timeout, counted and named', async () => {
    let serverClosed = false;
    const echo = await startTcpBackend((s) => { s.pipe(s); s.on('close', () => { serverClosed = true; }); });
    const lines: string[] = [];
    const { engine, listener } = await setup(echo, { trafficPolicy: { timeouts: { idleMs: 300 } }, accessLog: (l) => lines.push(l) });
    const hello = Buffer.from([0x16, 0x03, 0x01, 0x00, 0x01, 7]);
    const started = Date.now();
    // Talks once, then says nothing: the waypoint closes both sides once 300 ms pass without a byte.
    const r = await talk(listener.port, hello, () => false, 5_000);
    const lasted = Date.now() - started;
    assert.deepEqual(r.got, hello);
    assert.equal(r.closed, true);
    assert.ok(lasted >= 250 && lasted < 4_000, `closed after ${lasted} ms`);
    const deadline = Date.now() + 3_000;
    while (!serverClosed && Date.now() < deadline) await delay(20);
    assert.equal(serverClosed, true, 'the endpoint connection is closed too');
    const counted = async (): Promise<boolean> => (await metricSamples(engine, 'weft_waypoint_downstream_timeouts_total'))
      .some((v) => v.labels['protocol'] === 'tcp' && v.labels['timeout'] === 'idle' && v.value === 1);
    while (!(await counted()) && Date.now() < deadline) await delay(20);
    assert.ok(await counted(), JSON.stringify(await metricSamples(engine, 'weft_waypoint_downstream_timeouts_total')));
    assert.ok(lines.some((l) => /idle_timeout/.test(l)), lines.join('\n'));
  });

  it('passes a client-first binary protocol through to the endpoint and counts it', async () => {
    const echo = await startTcpBackend((s) => s.pipe(s));
    const { engine, listener } = await setup(echo);
    const hello = Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]);
    const r = await talk(listener.port, hello, (g) => g.length >= hello.length);
    assert.deepEqual(r.got, hello);
    await delay(50);
    const opened = await metricSamples(engine, 'istio_tcp_connections_opened_total');
    assert.equal(opened[0]?.value, 1);
    assert.equal(opened[0]?.labels['destination_service'], 'db.shop.svc.cluster.local');
    assert.equal(opened[0]?.labels['source_principal'], CALLER);
    const received = await metricSamples(engine, 'istio_tcp_received_bytes_total');
    assert.equal(received[0]?.value, hello.length);
  });

  it('passes a server-first protocol through after the client stays silent', async () => {
    const greeter = await startTcpBackend((s) => s.write('220 db ready\r\n'));
    const { listener } = await setup(greeter);
    const r = await talk(listener.port, undefined, (g) => g.toString().includes('\n'));
    assert.equal(r.got.toString(), '220 db ready\r\n');
  });

  it('does not pass a silent tunnel through to a service with HTTP routes', async () => {
    const greeter = await startTcpBackend((s) => s.write('220 db ready\r\n'));
    const { listener } = await setup(greeter, { routes: true });
    const r = await talk(listener.port, undefined, (g) => g.length > 0);
    assert.equal(r.got.length, 0);
    assert.equal(r.closed, true);
  });

  it('applies a DENY rule with HTTP fields to the whole connection of that principal, as Istio does', async () => {
    const echo = await startTcpBackend((s) => s.pipe(s));
    const deny: AuthorizationPolicy = {
      name: 'no-admin', namespace: 'shop', action: 'DENY', scope: 'service', targetServices: ['shop/db'], layer: 'L7',
      rules: [{ from: [{ principals: [CALLER] }], to: [{ paths: ['/admin'] }], when: [], layer: 'L7' }],
    };
    const { engine, listener } = await setup(echo, { policies: [deny] });
    const denied = await talk(listener.port, Buffer.from([0x00, 0x01]), (g) => g.length >= 2, 1000);
    assert.equal(denied.got.length, 0);
    assert.equal(denied.closed, true);
    const other = await startTunnelListener(engine, '10.96.0.40:5432', 'spiffe://cluster.local/ns/shop/sa/other');
    cleanups.push(() => other.close());
    const passed = await talk(other.port, Buffer.from([0x00, 0x01]), (g) => g.length >= 2);
    assert.deepEqual([...passed.got], [0x00, 0x01]);
    const closed = await metricSamples(engine, 'istio_tcp_connections_closed_total');
    assert.ok(closed.some((s) => s.labels['response_flags'] === 'RBAC'), JSON.stringify(closed));
  });

  // A request led by a space or tab, or with a lower-case method, does not open like HTTP/1.1; were it
  // passed through as TCP, a backend that tolerates it (Python's http.server splits the request line
  // on whitespace) would serve it with the Service's routes, limits and faults skipped. Gateway API
  // GAMMA: a request to a routed Service port is judged by its routes; Istio: a declared protocol is
  // not sniffed, and a method not in upper case is refused (Authorization Policy Normalization).
  for (const [what, extra] of [['a Service port with HTTP routes', { routes: true }], ['a Service port declared HTTP', { appProtocol: 'http' as const }]] as const) {
    it(`does not pass bytes that only look almost like HTTP through to ${what}: 400, counted`, async () => {
      const seen: Buffer[] = [];
      const sink = await startTcpBackend((s) => s.on('data', (c: Buffer) => seen.push(c)));
      const { engine, listener } = await setup(sink, extra);
      for (const lead of [' GET', '\tGET', 'get']) {
        const r = await talk(listener.port, Buffer.from(`${lead} /admin HTTP/1.1\r\nHost: db\r\nConnection: close\r\n\r\n`), (g) => g.includes('\r\n\r\n'));
        assert.match(r.got.toString(), /^HTTP\/1\.1 400 /, `${JSON.stringify(lead)}: ${JSON.stringify(r.got.toString().slice(0, 40))}`);
      }
      assert.equal(Buffer.concat(seen).length, 0, 'nothing reached the endpoint');
      const refused = (await metricSamples(engine, 'istio_requests_total')).filter((x) => x.labels['response_code'] === '400' && x.labels['response_flags'] === 'DPE');
      assert.equal(refused.reduce((n, x) => n + x.value, 0), 3, 'each refusal is counted');
    });
  }

  it('still speaks HTTP when the request starts with empty lines', async () => {
    const echo = await startTcpBackend((s) => s.pipe(s));
    const { listener } = await setup(echo, { routes: true });
    const r = await talk(listener.port, Buffer.from('\r\nGET / HTTP/1.1\r\nHost: db\r\n\r\n'), (g) => g.includes('\r\n\r\n'));
    // The HTTP pipeline answered (the echo backend is not HTTP), not a byte copy of the request.
    assert.match(r.got.toString(), /^HTTP\/1\.1 /);
  });
});
