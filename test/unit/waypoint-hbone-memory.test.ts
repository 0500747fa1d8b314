// The waypoint's HBONE server under memory pressure: the handler hands the server one end of an
// in-memory pair (waypoint/src/hbone.ts) and the engine pipes the other to the endpoint, so a reset
// must reach the endpoint through the pair, and what the pair holds must count against the budget.
import assert from 'node:assert/strict';
import { connect as h2connect, type ClientHttp2Stream } from 'node:http2';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { after, test } from 'node:test';
import { WaypointEngine } from '../../waypoint/src/engine.ts';
import { tunnelHandler } from '../../waypoint/src/hbone.ts';
import { TcpUpstream } from '../../waypoint/src/upstream.ts';
import { config, endpoint, service } from '../../waypoint/testing/harness.ts';
import { until } from '../lab/wait.ts';
import { startHbone } from './hbone-certs.ts';

const cleanups: Array<() => unknown> = [];
after(async () => { for (const c of cleanups.splice(0).reverse()) await c(); });

// Envoy's reset_high_memory_stream resets the downstream stream and with it the upstream
// connection (source/common/buffer/watermark_buffer.cc, tcp_proxy): the endpoint sees it end.
test('waypoint: a peer with a zero stream window to endpoints that send cannot hold the waypoint past its memory budget: resets close the endpoint connections (RST) and the pair\'s bytes are counted', async () => {
  const TUNNELS = 32;
  const budget = 2 * 1024 * 1024;
  const chunk = Buffer.alloc(64 * 1024);
  const pods = new Set<net.Socket>();
  let podsClosed = 0;
  let podsReset = 0;
  const app = net.createServer((s) => {
    pods.add(s);
    s.on('error', (e: NodeJS.ErrnoException) => { if (e.code === 'ECONNRESET') podsReset++; });
    s.on('close', () => { podsClosed++; pods.delete(s); });
    const send = (): void => { while (!s.destroyed && s.write(chunk)); };
    s.on('drain', send);
    send();
  });
  await new Promise<void>((r) => app.listen(0, '127.0.0.1', r));
  cleanups.push(() => new Promise<void>((r) => { for (const s of pods) s.destroy(); app.close(() => r()); }));
  const engine = new WaypointEngine({ namespace: 'shop', name: 'waypoint', upstream: new TcpUpstream(), serverFirstTimeoutMs: 50, telemetry: { accessLog: null } });
  engine.applyConfig(config({ services: [service('db', '10.96.0.40', [endpoint((app.address() as AddressInfo).port)], { port: 5432, appProtocol: 'tcp' })] }));
  cleanups.push(() => engine.close());
  const hb = await startHbone({ memoryBudget: budget, handler: tunnelHandler(engine) });
  cleanups.push(() => hb.close());
  const s = h2connect(`https://127.0.0.1:${hb.port}`, { key: hb.clientLeaf.key, cert: hb.clientLeaf.cert, ca: hb.clientLeaf.ca, checkServerIdentity: () => undefined, settings: { initialWindowSize: 0 } });
  s.on('error', () => {});
  cleanups.push(() => s.destroy());
  const streams: ClientHttp2Stream[] = [];
  for (let i = 0; i < TUNNELS; i++) {
    const r = s.request({ ':method': 'CONNECT', ':authority': '10.96.0.40:5432' }, { endStream: false });
    r.on('error', () => {});
    streams.push(r);
  }
  const resets = (): number => hb.server.stats().refusals['memory-pressure'];
  await until('every endpoint connected', () => pods.size + podsClosed >= TUNNELS, 10_000, { explain: () => `${pods.size} open, ${podsClosed} closed` });
  await until('memory-pressure resets', () => resets() >= 8, 10_000, { explain: () => `${resets()} resets, heldBytes ${hb.server.stats().heldBytes}` });
  // Every reset tunnel's endpoint connection is closed by a TCP RST (RFC 9113 8.5), not left open
  // with the endpoint's bytes piling up inside the waypoint, unseen by the budget.
  await until('each reset tunnel closes its endpoint connection', () => podsReset >= resets() && podsClosed >= resets(), 10_000, {
    explain: () => `${resets()} resets, ${podsClosed} endpoint connections closed (${podsReset} by RST), ${pods.size} open`,
  });
  // What the waypoint holds stays within the budget once the resets are done: the pair counts.
  await until('under the budget', () => hb.server.stats().heldBytes <= budget, 10_000, { explain: () => `heldBytes ${hb.server.stats().heldBytes}` });
  assert.ok(hb.server.stats().tunnelsActive <= TUNNELS - resets(), `${hb.server.stats().tunnelsActive} tunnels active after ${resets()} resets`);
});
