// Pooled double HBONE (HbonePool's `gateway`): a destination on another network is reached through
// that network's east-west gateway, and the inner session to the destination agent is pooled like
// any other. Here on loopback: an HBONE "agent" (SERVER_ID) in front of an echo, and a "gateway"
// (another HboneServer, as eastwest/src/gateway.ts) that pipes each outer CONNECT to the agent's
// TCP port and keeps what it pipes, so the tests can read it as the gateway would.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { HbonePeerIdentityError, HbonePool, HboneRefusedError, HboneServer, type HboneConnectOptions } from '../../lib/hbone/index.ts';
import { CLIENT_ID, createTestCa, readAll, SERVER_ID, startHbone, tcpServer, type HboneFixture } from './hbone-certs.ts';

const GW_ID = 'spiffe://test.local/ns/weft-system/sa/weft-eastwest';
const cleanups: Array<() => unknown> = [];
after(async () => { for (const c of cleanups.reverse()) await c(); });

async function until(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

interface Net {
  agent: HboneFixture;
  gateway: HboneServer;
  /** The outer CONNECTs' authorities, as the gateway read them. */
  authorities: string[];
  /** Every byte the gateway piped, both ways. */
  piped: Buffer[];
  /** The gateway's TCP connections to the agent (one per outer CONNECT). */
  upstreams: Socket[];
  /** The peers the agent authenticated, per tunnel. */
  agentPeers: Array<string | undefined>;
  /** Connect options to the echo behind the agent, through the gateway. */
  to(overrides?: Partial<HboneConnectOptions>): HboneConnectOptions;
}

async function network(agentOpts: { maxConcurrentStreams?: number } = {}): Promise<Net> {
  const echo = await tcpServer((s) => { s.on('error', () => {}); s.pipe(s); });
  cleanups.push(() => echo.server.close());
  const ca = createTestCa();
  const agentPeers: Array<string | undefined> = [];
  const agent = await startHbone({
    ...agentOpts,
    handler: async (req) => {
      agentPeers.push(req.peer.spiffeId);
      const up = connect({ host: '127.0.0.1', port: echo.port, noDelay: true });
      await new Promise<void>((resolve, reject) => { up.once('connect', resolve); up.once('error', reject); });
      return { upstream: up };
    },
  }, ca);
  cleanups.push(() => agent.close());
  const authorities: string[] = [];
  const piped: Buffer[] = [];
  const upstreams: Socket[] = [];
  const gateway = new HboneServer({
    tls: ca.issue(GW_ID),
    handler: async (req) => {
      authorities.push(req.authority);
      const up = connect({ host: '127.0.0.1', port: agent.port, noDelay: true });
      await new Promise<void>((resolve, reject) => { up.once('connect', resolve); up.once('error', reject); });
      up.on('error', () => {});
      const write = up.write.bind(up) as (chunk: Buffer) => boolean;
      up.write = ((chunk: Buffer) => { piped.push(Buffer.from(chunk)); return write(chunk); }) as typeof up.write;
      up.on('data', (c: Buffer) => piped.push(Buffer.from(c)));
      upstreams.push(up);
      return { upstream: up };
    },
  });
  const { port: gwPort } = await gateway.listen(0, '127.0.0.1');
  cleanups.push(() => gateway.close(200));
  return {
    agent, gateway, authorities, piped, upstreams, agentPeers,
    // The endpoint lives on the other network: the address is the agent's there (here loopback).
    to: (overrides = {}) => ({
      ...agent.to(`127.0.0.1:${echo.port}`),
      dest: { host: '127.0.0.1', port: agent.port },
      gateway: { host: '127.0.0.1', port: gwPort, expectPeer: GW_ID },
      ...overrides,
    }),
  };
}

async function roundTrip(stream: Duplex, text: string): Promise<string> {
  const got = readAll(stream);
  stream.end(text);
  return (await got).toString();
}

test('sequential cross-network connections share one inner TLS session carried in one outer CONNECT; the gateway pipes only ciphertext and the agent sees the caller (double HBONE, pooled)', async () => {
  const net = await network();
  const sessions: Array<{ dest: string; via?: string }> = [];
  const pool = new HbonePool({ onSession: (e) => sessions.push({ dest: e.dest, ...(e.via ? { via: e.via } : {}) }) });
  cleanups.push(() => pool.close(100));
  for (let i = 0; i < 20; i++) assert.equal(await roundTrip(await pool.connect(net.to()), `secret-payload-${i}`), `secret-payload-${i}`);
  assert.equal(net.gateway.stats().sessionsOpened, 1, 'one outer TLS session to the gateway');
  assert.equal(net.gateway.stats().tunnelsOpened, 1, 'one outer CONNECT');
  assert.equal(net.agent.server.stats().sessionsOpened, 1, 'one inner TLS handshake with the destination agent');
  assert.equal(net.agent.server.stats().tunnelsOpened, 20, 'twenty inner CONNECTs');
  assert.equal(sessions.length, 2);
  assert.equal(sessions.filter((s) => s.via).length, 1, 'the inner session is the one through the gateway');
  assert.deepEqual(new Set(net.agentPeers), new Set([CLIENT_ID]), 'the agent authenticated the caller itself, not the gateway');
  assert.equal(net.authorities.length, 1);
  const seen = Buffer.concat(net.piped);
  assert.ok(seen.length > 0);
  assert.equal(seen.includes('secret-payload'), false, 'the gateway piped no plaintext of the inner tunnel');
  assert.equal(seen.includes('CONNECT'), false);
});

test('concurrent cross-network connections respect the destination agent\'s stream limit: more inner sessions, each in its own outer CONNECT, on one session to the gateway', async () => {
  const net = await network({ maxConcurrentStreams: 4 });
  const pool = new HbonePool({ connectTimeoutMs: 5_000 });
  cleanups.push(() => pool.close(100));
  const streams = await Promise.all(Array.from({ length: 10 }, () => pool.connect(net.to())));
  const inner = net.agent.server.stats().sessionsOpened;
  assert.equal(inner, 3, 'ten tunnels at four per session');
  assert.equal(net.gateway.stats().tunnelsOpened, inner, 'one outer CONNECT per inner session');
  assert.equal(net.gateway.stats().sessionsOpened, 1);
  const replies = await Promise.all(streams.map((s, i) => roundTrip(s, `m${i}`)));
  replies.forEach((r, i) => assert.equal(r, `m${i}`));
  // Once they end, new connects reuse the inner sessions that exist.
  assert.equal(await roundTrip(await pool.connect(net.to()), 'again'), 'again');
  assert.equal(net.agent.server.stats().sessionsOpened, inner);
  assert.equal(net.gateway.stats().tunnelsOpened, inner);
});

test('an idle inner session closes after the pool\'s idle timeout, and its outer CONNECT (and then the session to the gateway) with it', async () => {
  const net = await network();
  const pool = new HbonePool({ idleTimeoutMs: 300 });
  cleanups.push(() => pool.close(100));
  assert.equal(await roundTrip(await pool.connect(net.to()), 'once'), 'once');
  assert.equal(pool.stats().sessionsActive, 2);
  await until('the inner session closed at the agent', () => net.agent.server.stats().sessionsActive === 0);
  await until('the outer tunnel closed at the gateway', () => net.gateway.stats().tunnelsActive === 0);
  await until('the session to the gateway closed', () => net.gateway.stats().sessionsActive === 0);
  await until('the pool holds nothing', () => pool.stats().sessionsActive === 0);
  // The next connection builds both again.
  assert.equal(await roundTrip(await pool.connect(net.to()), 'again'), 'again');
  assert.equal(net.agent.server.stats().sessionsOpened, 2);
  assert.equal(net.gateway.stats().sessionsOpened, 2);
});

test('an outer tunnel reset under open inner tunnels fails them cleanly (error and close, no hang), and the next connection gets a new inner session over the same session to the gateway', async () => {
  const net = await network();
  const pool = new HbonePool();
  cleanups.push(() => pool.close(100));
  const open = await Promise.all([pool.connect(net.to()), pool.connect(net.to())]);
  const ended = open.map((s) => new Promise<string>((resolve) => {
    s.on('error', (e: Error & { code?: string }) => resolve(`error ${e.code ?? e.message}`));
    s.once('close', () => resolve('closed'));
    s.resume();
  }));
  assert.equal(net.upstreams.length, 1);
  net.upstreams[0]!.destroy();
  const outcomes = await Promise.race([Promise.all(ended), new Promise<string[]>((r) => setTimeout(() => r(['hung']), 10_000))]);
  assert.equal(outcomes.length, 2, `inner tunnels: ${outcomes.join(', ')}`);
  await until('the pool dropped the dead inner session', () => pool.stats().sessionsActive === 1);
  assert.equal(await roundTrip(await pool.connect(net.to()), 'recovered'), 'recovered');
  assert.equal(net.agent.server.stats().sessionsOpened, 2, 'a new inner session');
  assert.equal(net.gateway.stats().tunnelsOpened, 2, 'in a new outer CONNECT');
  assert.equal(net.gateway.stats().sessionsOpened, 1, 'on the same session to the gateway');
});

test('a different source identity gets its own inner session (its own client certificate at the agent) and its own session to the gateway', async () => {
  const net = await network();
  const pool = new HbonePool();
  cleanups.push(() => pool.close(100));
  const other = net.agent.ca.issue('spiffe://test.local/ns/src/sa/other');
  assert.equal(await roundTrip(await pool.connect(net.to()), 'a'), 'a');
  assert.equal(await roundTrip(await pool.connect(net.to({ sourceKey: other.spiffeId!, tls: other })), 'b'), 'b');
  assert.equal(await roundTrip(await pool.connect(net.to()), 'c'), 'c');
  assert.equal(net.agent.server.stats().sessionsOpened, 2);
  assert.equal(net.gateway.stats().sessionsOpened, 2);
  assert.deepEqual(net.agentPeers, [CLIENT_ID, other.spiffeId, CLIENT_ID], 'each tunnel carried its own caller\'s identity');
});

test('the destination identity is checked end to end through the gateway: an agent that is not who the caller expects is refused, and the outer tunnel is closed with the failed inner session', async () => {
  const net = await network();
  const pool = new HbonePool();
  cleanups.push(() => pool.close(100));
  await assert.rejects(pool.connect(net.to({ expectPeer: 'spiffe://test.local/ns/dest/sa/someone-else' })),
    (e: Error) => e instanceof HbonePeerIdentityError && e.peerSpiffeId === SERVER_ID);
  await until('the outer tunnel of the refused session closed', () => net.gateway.stats().tunnelsActive === 0);
  assert.equal(net.agent.server.stats().tunnelsOpened, 0, 'no CONNECT reached the agent');
  // The caller's right expectation still works, on a session of its own.
  assert.equal(await roundTrip(await pool.connect(net.to()), 'ok'), 'ok');
});

test('a gateway that is not who the caller expects is refused before any inner byte; a gateway refusal (403) reaches the caller as such', async () => {
  const net = await network();
  const pool = new HbonePool();
  cleanups.push(() => pool.close(100));
  await assert.rejects(pool.connect(net.to({ gateway: { ...net.to().gateway!, expectPeer: 'spiffe://test.local/ns/demo/sa/impostor' } })),
    (e: Error) => e instanceof HbonePeerIdentityError && e.peerSpiffeId === GW_ID);
  assert.equal(net.gateway.stats().tunnelsOpened, 0);
  const refusing = new HboneServer({ tls: net.agent.ca.issue(GW_ID), handler: async () => ({ status: 403, reason: 'not an endpoint of this cluster' }) });
  const { port } = await refusing.listen(0, '127.0.0.1');
  cleanups.push(() => refusing.close(100));
  await assert.rejects(pool.connect(net.to({ gateway: { host: '127.0.0.1', port, expectPeer: GW_ID } })),
    (e: Error) => e instanceof HboneRefusedError && e.status === 403 && /not an endpoint/.test(e.message));
  await until('the failed session left the pool (the session to the refusing gateway stays)', () => pool.stats().sessionsActive === 1);
  assert.equal(net.agent.server.stats().sessionsOpened, 0);
});

test('a gateway that drains (GOAWAY on the outer session) retires the inner sessions it carries: open tunnels finish, are told (onRetired), and new connections get a new path', async () => {
  const net = await network();
  const pool = new HbonePool();
  cleanups.push(() => pool.close(100));
  let told = 0;
  const open = await pool.connect({ ...net.to(), onRetired: () => { told++; } });
  const reply = readAll(open);
  assert.equal(net.gateway.dropSessions(), 1);
  await until('the open tunnel was told its session left the pool', () => told === 1);
  open.end('still carried');
  assert.equal((await reply).toString(), 'still carried');
  assert.equal(await roundTrip(await pool.connect(net.to()), 'new path'), 'new path');
  assert.equal(net.gateway.stats().sessionsOpened, 2);
  assert.equal(net.agent.server.stats().sessionsOpened, 2);
});
