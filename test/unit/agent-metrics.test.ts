// The agent's connection record: bytes of a long-lived connection show in istio_tcp_*_bytes_total
// while it is open (added at each scrape), and the close adds only what remains (never twice).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AgentMetrics, ConnectionRecord } from '../../agent/src/metrics.ts';
import { registerHbonePoolMetrics } from '../../lib/telemetry/hbone-pool.ts';

const meta = (name: string) => ({ namespace: 'demo', name, workloadName: name, serviceAccount: name });

async function bytes(m: AgentMetrics): Promise<{ sent: number; received: number }> {
  const text = await m.registry.metrics();
  const sum = (name: string) => text.split('\n').filter((l) => l.startsWith(`${name}{`)).reduce((a, l) => a + Number(l.split(' ').pop()), 0);
  return { sent: sum('istio_tcp_sent_bytes_total'), received: sum('istio_tcp_received_bytes_total') };
}

for (const facing of ['source', 'destination'] as const) {
  test(`bytes of an open connection are counted at each scrape (socket facing the ${facing}), the close adds only the rest`, async () => {
    const m = new AgentMetrics();
    const lines: Array<Record<string, unknown>> = [];
    const r = new ConnectionRecord(m, {
      reporter: facing === 'source' ? 'source' : 'destination',
      source: { meta: meta('client') as never, principal: 'spiffe://cluster.local/ns/demo/sa/client' },
      destination: { meta: meta('echo') as never, principal: 'spiffe://cluster.local/ns/demo/sa/echo' },
      security: 'mutual_tls', srcAddr: '10.0.0.1:5000', dstAddr: '10.0.0.2:80',
    }, (e) => lines.push(e));
    // Request bytes are read from a socket facing the source and written to one facing the destination.
    const sock = { bytesRead: 0, bytesWritten: 0 };
    const move = (req: number, res: number) => {
      if (facing === 'source') { sock.bytesRead += req; sock.bytesWritten += res; } else { sock.bytesWritten += req; sock.bytesRead += res; }
    };
    r.countWhileOpen(sock, facing);
    assert.deepEqual(await bytes(m), { sent: 0, received: 0 });
    move(1000, 50);
    assert.deepEqual(await bytes(m), { sent: 50, received: 1000 });
    move(24, 0);
    assert.deepEqual(await bytes(m), { sent: 50, received: 1024 }, 'a second scrape adds only the new bytes');
    r.close({ bytesToDestination: 1500, bytesToSource: 70 });
    assert.deepEqual(await bytes(m), { sent: 70, received: 1500 }, 'the close adds the rest of the totals');
    move(9999, 9999);
    assert.deepEqual(await bytes(m), { sent: 70, received: 1500 }, 'a closed connection is no longer read');
    assert.equal(lines.length, 1);
    assert.equal(lines[0]![facing === 'source' ? 'bytes_sent' : 'bytes_recv'], 1500);
  });
}

test('a connection not counted while open still counts its bytes at the close', async () => {
  const m = new AgentMetrics();
  const r = new ConnectionRecord(m, { reporter: 'source', source: {}, destination: {}, security: 'none', srcAddr: 'a:1', dstAddr: 'b:2' }, () => {});
  r.close({ bytesToDestination: 10, bytesToSource: 20 });
  assert.deepEqual(await bytes(m), { sent: 20, received: 10 });
});

test('what destinations do to the outbound HBONE pool\'s sessions is counted by event at each scrape, each once', async () => {
  const m = new AgentMetrics();
  const stats = {
    sessionsOpened: 3, sessionsActive: 1, sessionFailures: 1, streamsOpened: 9, streamsActive: 0, streamsRefusedOverLimit: 2,
    sessionsSetupTimedOut: 1, sessionsRetiredNoStreams: 0, sessionsThrottled: 0, sessionsSettingsTimedOut: 0, sessionsPingTimedOut: 1,
  };
  registerHbonePoolMetrics(m.registry, () => stats);
  const events = async (): Promise<Record<string, number>> => Object.fromEntries((await m.registry.metrics()).split('\n')
    .filter((l) => l.startsWith('weft_hbone_client_session_events_total{'))
    .map((l) => [/event="([a-z_]+)"/.exec(l)![1]!, Number(l.split(' ').pop())]));
  assert.deepEqual(await events(), { failed: 1, setup_timeout: 1, ping_timeout: 1, refused_over_limit: 2 });
  stats.sessionsPingTimedOut = 3;
  stats.sessionsRetiredNoStreams = 1;
  assert.deepEqual(await events(), { failed: 1, setup_timeout: 1, ping_timeout: 3, refused_over_limit: 2, no_streams: 1 });
});
