// lib/sys/listeners.ts: /proc/net/tcp parsing (against fixed text and against a real listener of
// this process) and the tcp_migrate_req switch (on a scratch file, never the real sysctl).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { decodeProcIPv4, enableRequestMigration, encodeProcAddress, isListening, parseProcNetTcp, socketOwnerIn, tcpListeners } from '../../lib/sys/listeners.ts';

const PROC_TCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:3A98 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0 0 10 0
   1: 02004D0A:3AA1 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0 100 0 0 10 0
   2: 02004D0A:3AA1 01004D0A:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0 100 0 0 10 0
   3: 00000000:3AAC 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1004 1 0 100 0 0 10 0
`;

test('/proc/net/tcp rows in LISTEN state are decoded; established ones are not listeners', () => {
  const l = parseProcNetTcp(PROC_TCP, 4, true);
  assert.deepEqual(l, [
    { address: '127.0.0.1', port: 15000 },
    { address: '10.77.0.2', port: 15009 },
    { address: '0.0.0.0', port: 15020 },
  ]);
  assert.equal(decodeProcIPv4('0100007F', false), '1.0.0.127', 'big-endian hosts print the address as is');
  assert.ok(isListening('10.77.0.2', 15009, l));
  assert.ok(isListening('10.77.0.9', 15020, l), 'a wildcard listener counts for every address');
  assert.ok(!isListening('10.77.0.9', 15009, l));
  assert.ok(!isListening('10.77.0.2', 40000, l), 'the established row is not a listener');
});

test('a socket this process listens on shows up, and is gone once closed', async () => {
  const server = net.createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  try {
    assert.ok(isListening('127.0.0.1', port, tcpListeners()), `127.0.0.1:${port} is listed`);
  } finally {
    await new Promise((r) => server.close(r));
  }
  assert.ok(!isListening('127.0.0.1', port, tcpListeners()));
});

test('enableRequestMigration sets the switch once, says so, and reports an unwritable one without throwing', () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-sysctl-'));
  try {
    const f = join(dir, 'tcp_migrate_req');
    writeFileSync(f, '0\n');
    assert.deepEqual(enableRequestMigration(f), { enabled: true, changed: true });
    assert.equal(readFileSync(f, 'utf8').trim(), '1');
    assert.deepEqual(enableRequestMigration(f), { enabled: true, changed: false });
    const missing = enableRequestMigration(join(dir, 'nope', 'tcp_migrate_req'));
    assert.equal(missing.enabled, false);
    assert.match(missing.error ?? '', /ENOENT/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the owner of a connected socket is read by both its ends; a TIME_WAIT remnant (listed as uid 0) and a mapped IPv4 end in tcp6', () => {
  const tcp = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:3A98 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0 0 10 0
   1: 0100007F:C350 0100007F:3A98 01 00000000:00000000 00:00000000 00000000 65534        0 1002 1 0 100 0 0 10 0
   2: 0100007F:C351 0100007F:3A98 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0
`;
  const admin = { address: '127.0.0.1', port: 15000 };
  assert.equal(socketOwnerIn(tcp, 4, { address: '127.0.0.1', port: 50000 }, admin, true), 65534);
  assert.equal(socketOwnerIn(tcp, 4, { address: '127.0.0.1', port: 50001 }, admin, true), undefined, 'TIME_WAIT is no live socket');
  assert.equal(socketOwnerIn(tcp, 4, admin, { address: '127.0.0.1', port: 50000 }, true), undefined, 'the ends are not swapped');
  assert.equal(encodeProcAddress('127.0.0.1', 6, true), '0000000000000000FFFF00000100007F');
  const tcp6 = `  sl  local_address                         remote_address                        st
   0: 0000000000000000FFFF00000100007F:C352 0000000000000000FFFF00000100007F:3A98 01 00000000:00000000 00:00000000 00000000  1000        0 1003 1 0
`;
  assert.equal(socketOwnerIn(tcp6, 6, { address: '127.0.0.1', port: 50002 }, admin, true), 1000);
});
