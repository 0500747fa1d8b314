// The waypoint pools upstream HTTP/1.1 connections per endpoint and caller (each names its caller to
// the destination agent as `forwarded: for=`). Callers come and go, so an agent whose connections
// have all closed (idle timeout, or the peer closing) is dropped: the pool does not grow with every
// address that ever called.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { TcpUpstream, UpstreamPool } from '../../waypoint/src/upstream.ts';
import { until } from '../lab/wait.ts';

test('an upstream agent per caller is dropped once its connections have closed', async () => {
  const server = http.createServer((_req, res) => res.end('ok'));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const ep = { ip: '127.0.0.1', port: (server.address() as AddressInfo).port };
  const pool = new UpstreamPool(new TcpUpstream(), { idleTimeoutMs: 200 });
  try {
    for (const client of ['10.0.0.1', '10.0.0.2', '10.0.0.3']) {
      const resp = await pool.request(ep, 'http1', { method: 'GET', path: '/', authority: 'x', headers: {}, body: null, signal: new AbortController().signal, client }, 1_000);
      assert.equal(resp.status, 200);
      resp.body.resume();
      await new Promise((r) => resp.body.once('end', r));
    }
    assert.equal(pool.agentsHeld, 3, 'one agent per caller');
    await until('every caller\'s idle connection closed and its agent dropped', () => pool.agentsHeld === 0, 10_000);
  } finally {
    await pool.close();
    server.close();
  }
});
