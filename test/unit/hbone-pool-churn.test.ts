// Churn next to long-lived tunnels on one pooled HBONE session: short tunnels that the caller
// resets (an application connection aborted) end with RST_STREAM. nghttp2's default rapid-reset
// limit (a burst of 1,000 resets, then 33/s) counted those and tore down the whole session with
// GOAWAY INTERNAL_ERROR, taking every long-lived tunnel on it along (seen in
// test/e2e/reliability-load.test.ts: exactly 1,000 idle connections, one session's worth, dropped
// at once). The HBONE server's own guard counts only streams reset before they were answered.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import type { Duplex } from 'node:stream';
import { HbonePool } from '../../lib/hbone/index.ts';
import { startHbone, tcpServer } from './hbone-certs.ts';

const cleanups: Array<() => unknown> = [];
after(async () => { for (const c of cleanups.reverse()) await c(); });

function echoOnce(s: Duplex, text: string): Promise<boolean> {
  return new Promise((resolve) => {
    s.once('data', (c: Buffer) => resolve(c.toString() === text));
    s.once('error', () => resolve(false));
    s.once('close', () => resolve(false));
    s.write(text);
  });
}

async function churn(LIMIT: number, workers: number): Promise<void> {
  const echo = await tcpServer((s) => { s.on('error', () => {}); s.pipe(s); });
  cleanups.push(() => echo.server.close());
  const hb = await startHbone({ maxConcurrentStreams: LIMIT });
  cleanups.push(() => hb.close());
  const pool = new HbonePool();
  cleanups.push(() => pool.close(100));
  const target = `127.0.0.1:${echo.port}`;

  // Half the session: long-lived tunnels.
  const idle = await Promise.all(Array.from({ length: LIMIT / 2 }, () => pool.connect(hb.to(target))));
  for (const [i, s] of idle.entries()) assert.equal(await echoOnce(s, `idle-${i}`), true);
  let idleClosed = 0;
  let idleError = '';
  for (const s of idle) {
    s.once('close', () => idleClosed++);
    s.once('error', (e: Error) => { idleError ||= `${(e as Error & { code?: string }).code ?? ''} ${e.message}`; });
  }

  // Churn: `workers` at once, each opening a tunnel, echoing a byte and resetting it, 1,500 in all.
  let ok = 0;
  let failed = 0;
  let left = 1_500;
  const errors = new Set<string>();
  await Promise.all(Array.from({ length: workers }, async () => {
    while (left-- > 0) {
      try {
        const s = await pool.connect(hb.to(target));
        if (await echoOnce(s, 'x')) ok++;
        else failed++;
        s.destroy();
      } catch (err) {
        failed++;
        errors.add((err as Error).message.slice(0, 160));
      }
    }
  }));
  const stats = hb.server.stats();
  assert.equal(idleClosed, 0, `no long-lived tunnel was closed (${idleClosed} were, first error ${idleError}, pool ${JSON.stringify(pool.stats())}; server: ${JSON.stringify(stats)})`);
  for (const [i, s] of idle.entries()) assert.equal(await echoOnce(s, `again-${i}`), true, `long-lived tunnel ${i} still carries data`);
  assert.equal(failed, 0, `every short tunnel worked (${ok} ok, ${failed} failed: ${[...errors].join(' | ')}; server ${JSON.stringify(stats)})`);
  for (const s of idle) s.destroy();
}

test('1,500 short tunnels reset by the caller beside long-lived ones on one session leave the long-lived ones alone (nghttp2\'s blanket RST_STREAM limit is lifted)', () => churn(100, 8));

