// Live flows: the agent's and waypoint's /flows stream (lib/tap.ts) never waits for a watcher, and
// the flows weftctl tap and the dashboard read are one shape whoever reported them.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { once } from 'node:events';
import { FlowTap } from '../../lib/tap.ts';
import { FlowEnricher, flowMatches, toFlow } from '../../cli/flows.ts';
import type { Service, Workload } from '../../lib/model/mesh.ts';
import { flowLine } from '../../cli/commands/tap.ts';
import { until } from '../lab/wait.ts';

const servers: http.Server[] = [];
after(() => { for (const s of servers) { s.closeAllConnections(); s.close(); } });

async function serve(tap: FlowTap): Promise<number> {
  const s = http.createServer((req, res) => tap.serve(req, res));
  servers.push(s);
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  return (s.address() as AddressInfo).port;
}

test('a watcher that stops reading never holds the publisher up: what it misses is dropped, counted, and reported once it reads again', async () => {
  const tap = new FlowTap();
  const port = await serve(tap);
  // A raw client that sends the request and then does not read.
  const sock = connect(port, '127.0.0.1');
  sock.write('GET /flows HTTP/1.1\r\nhost: x\r\n\r\n');
  sock.pause();
  await until('the watcher is registered', () => tap.stats().watchers === 1, 5_000, { intervalMs: 5 });
  const entry = { type: 'access', direction: 'inbound', src: '10.0.0.1:1234', dst: '10.0.0.2:8080', pad: 'x'.repeat(900) };
  const started = process.hrtime.bigint();
  for (let i = 0; i < 20_000; i++) tap.publish({ ...entry, n: i });
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  assert.ok(tap.stats().dropped > 0, `entries beyond the socket's buffer are dropped (${JSON.stringify(tap.stats())})`);
  assert.equal(tap.stats().published, 20_000);
  assert.ok(ms < 5_000, `publishing 20,000 entries with a stuck watcher took ${ms} ms`);
  // It reads again: the backlog arrives, then a line saying how many it missed.
  let got = '';
  sock.on('data', (c: Buffer) => (got += c.toString()));
  sock.resume();
  await until('the watcher hears how many it missed', () => /"type":"dropped","count":\d+/.test(got), 10_000, { intervalMs: 20 });
  const missed = Number(/"type":"dropped","count":(\d+)/.exec(got)![1]);
  assert.equal(missed, tap.stats().dropped, 'the count it hears is the count the tap kept');
  sock.destroy();
  await until('the watcher is gone', () => tap.stats().watchers === 0, 5_000, { intervalMs: 5 });
});

test('/flows?recent=1 starts with what the tap remembers; only GET is served; watchers are bounded', async () => {
  const tap = new FlowTap({ recent: 3, maxWatchers: 1 });
  for (let i = 0; i < 5; i++) tap.publish({ type: 'access', n: i });
  const port = await serve(tap);
  const lines: string[] = [];
  const req = http.get({ port, host: '127.0.0.1', path: '/flows?recent=1' });
  const [res] = (await once(req, 'response')) as [http.IncomingMessage];
  res.setEncoding('utf8');
  res.on('data', (c: string) => lines.push(...c.split('\n').filter(Boolean)));
  await until('the remembered entries and the hello arrive', () => lines.length >= 4, 5_000, { intervalMs: 5 });
  assert.deepEqual(lines.slice(0, 3).map((l) => (JSON.parse(l) as { n: number }).n), [2, 3, 4]);
  assert.equal((JSON.parse(lines[3]!) as { type: string }).type, 'hello');
  const second = await fetch(`http://127.0.0.1:${port}/flows`);
  assert.equal(second.status, 503, 'a watcher beyond the limit is refused');
  await second.body?.cancel();
  const post = await fetch(`http://127.0.0.1:${port}/flows`, { method: 'POST' });
  assert.equal(post.status, 405);
  req.destroy();
});

test('flows from the source agent, the destination agent and a waypoint read as one shape, and filters pick by namespace, workload and verdict', () => {
  const out = toFlow('agent node1', { time: '2026-12-04T10:00:00.000Z', type: 'access', direction: 'outbound', src: '10.77.1.3:41000', src_workload: 'client', src_namespace: 'demo', src_principal: 'spiffe://cluster.local/ns/demo/sa/client', dst: '10.96.0.10:80', security: 'mutual_tls', bytes_sent: 10, bytes_received: 20 })!;
  assert.deepEqual({ v: out.verdict, s: out.source.workload, ns: out.source.namespace, d: out.destination.address }, { v: 'allowed', s: 'client', ns: 'demo', d: '10.96.0.10:80' });
  const denied = toFlow('agent node2', { type: 'access', direction: 'inbound', src: '10.77.1.3:41000', src_principal: 'spiffe://cluster.local/ns/demo/sa/client', dst: '10.77.2.1:8080', dst_workload: 'echo', dst_namespace: 'demo', denied: 'denied by policy demo/deny-client', policy: 'demo/deny-client' })!;
  assert.deepEqual({ v: denied.verdict, p: denied.policy, ns: denied.source.namespace, w: denied.source.workload }, { v: 'denied', p: 'demo/deny-client', ns: 'demo', w: 'client' });
  const wp = toFlow('waypoint shop/waypoint', { start_time: '2026-12-04T10:00:01.000Z', method: 'GET', path: '/admin', protocol: 'HTTP/1.1', response_code: 403, source_principal: 'spiffe://cluster.local/ns/shop/sa/client', destination_service: 'reviews.shop.svc.cluster.local', detail: 'denied by policy shop/no-admin' })!;
  assert.deepEqual({ k: wp.kind, v: wp.verdict, p: wp.policy, st: wp.status }, { k: 'http', v: 'denied', p: 'shop/no-admin', st: 403 });
  const err = toFlow('waypoint shop/waypoint', { method: 'GET', path: '/', protocol: 'HTTP/2', response_code: 503, source_principal: 'spiffe://cluster.local/ns/shop/sa/client', destination_service: 'reviews.shop.svc.cluster.local' })!;
  assert.equal(err.verdict, 'error');
  assert.equal(toFlow('agent node1', { type: 'hello' }), undefined);
  assert.equal(toFlow('agent node1', { type: 'dropped', count: 3 }), undefined);
  assert.equal(toFlow('waypoint shop/wp', { type: 'closed', reason: 'the stream is closed: the grant that opened it expired at 2026-01-01T00:00:00.000Z' }), undefined);

  assert.ok(flowMatches(out, { namespace: 'demo' }));
  assert.ok(!flowMatches(out, { namespace: 'shop' }));
  assert.ok(flowMatches(wp, { namespace: 'shop', workload: 'reviews', verdict: 'denied' }), 'a service counts as the workload and namespace it names');
  assert.ok(!flowMatches(wp, { verdict: 'allowed' }));
  assert.ok(flowMatches(denied, { workload: 'echo', verdict: 'denied' }));
  assert.match(flowLine(denied), /DENIED .*demo\/client .*→ demo\/echo .*policy demo\/deny-client/);
});

test('a flow the source agent reported by VIP gets the service and its namespace; pod addresses get their workload', () => {
  const names = new FlowEnricher();
  names.update(
    [{ name: 'echo', namespace: 'demo', hostname: 'echo.demo.svc.cluster.local', vips: ['10.96.0.10'], ports: [], endpoints: [] } as Service],
    [{ uid: 'u1', name: 'client', namespace: 'demo', ip: '10.77.1.3', services: [] } as unknown as Workload],
  );
  const f = names.enrich(toFlow('agent node1', { type: 'access', direction: 'outbound', src: '10.77.1.3:41000', dst: '10.96.0.10:80' })!);
  assert.deepEqual({ s: f.destination.service, ns: f.destination.namespace, sw: f.source.workload, sns: f.source.namespace }, { s: 'echo.demo.svc.cluster.local', ns: 'demo', sw: 'client', sns: 'demo' });
  assert.ok(flowMatches(f, { namespace: 'demo', workload: 'echo' }));
});
