// lib/hbone/session-buffer.ts on a real HTTP/2 session pair over loopback.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { test, type TestContext } from 'node:test';
import { SessionBuffer, type SessionBufferOptions } from '../../lib/hbone/session-buffer.ts';
import { SETTINGS_ACK_TIMEOUT_MS } from '../../lib/hbone/tuning.ts';
import { until } from '../lab/wait.ts';

/**
 * An HTTP/2 server whose streams never read, each session's watched by a SessionBuffer of one
 * byte with `opts`; returns a function that sends 32 KiB on a new session (closed after the test).
 */
async function unreadServer(t: TestContext, opts: Pick<SessionBufferOptions, 'onThrottled' | 'onSettingsTimeout'>, onSession: (s: http2.Http2Session) => void = () => {}): Promise<() => void> {
  const server = http2.createServer();
  server.on('stream', (stream) => {
    stream.pause(); // a reader that does not read: the session goes over its budget of one byte
    onSession(stream.session!);
    new SessionBuffer(stream.session!, { budget: 1, streamWindow: 65_535, ...opts }).watch(stream);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => server.close());
  return () => {
    const client = http2.connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
    client.on('error', () => {});
    t.after(() => client.destroy());
    const req = client.request({ ':method': 'POST', ':path': '/' });
    req.on('error', () => {});
    req.write(Buffer.alloc(32 * 1024));
  };
}

// A session that closes while its shrunk window is unacknowledged owes no acknowledgement: Node
// never calls back for it, and the pending timer once counted and logged a settings-timeout for a
// session that had simply ended (a pool retiring one as its last tunnel closed).
test('a session closed while its SETTINGS wait for their acknowledgement is not counted as a settings timeout', async (t) => {
  const timeouts: string[] = [];
  let throttled = 0;
  let session: http2.Http2Session | undefined;
  const send = await unreadServer(t, {
    onThrottled: () => { throttled++; process.nextTick(() => session?.destroy()); },
    onSettingsTimeout: (reason) => timeouts.push(reason),
  }, (s) => { session = s; });
  send();
  await until('the session went over its budget and was closed', () => throttled === 1, 5_000);
  // Nothing to wait for but the acknowledgement deadline itself: it must pass with no timeout.
  await new Promise((r) => setTimeout(r, SETTINGS_ACK_TIMEOUT_MS + 500));
  assert.deepEqual(timeouts, []);
});

// One timer checks every session with tunnels (SESSION_BUFFER_CHECK_MS), not one per session: a
// node with a thousand sessions woke five thousand times a second for the checks alone. Each is
// still throttled on its own.
test('sessions with tunnels share one check timer, and each is still held to its own budget', async (t) => {
  const realSetInterval = globalThis.setInterval;
  let intervals = 0;
  globalThis.setInterval = ((...args: Parameters<typeof setInterval>) => { intervals++; return realSetInterval(...args); }) as typeof setInterval;
  t.after(() => { globalThis.setInterval = realSetInterval; });
  let throttled = 0;
  const send = await unreadServer(t, { onThrottled: () => { throttled++; }, onSettingsTimeout: () => {} });
  for (let i = 0; i < 3; i++) send();
  await until('each of the three sessions went over its budget', () => throttled === 3, 5_000);
  assert.equal(intervals, 1);
});
