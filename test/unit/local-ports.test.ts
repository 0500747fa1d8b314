import { test } from 'node:test';
import assert from 'node:assert/strict';
import { busyAddressInLog, holdersFromSs } from '../../cli/local/ports.ts';

test('a bind failure in a daemon log yields the address and port that were taken', () => {
  const log = '{"msg":"datapath loaded"}\nagent: EADDRINUSE: listen EADDRINUSE: address already in use 10.77.0.1:15008\n';
  assert.deepEqual(busyAddressInLog(log), { host: '10.77.0.1', port: 15008 });
  assert.equal(busyAddressInLog('agent: ECONNREFUSED 10.77.0.254:15012\n'), undefined);
});

test('ss -ltnpH output names each process holding the port once', () => {
  const ss = 'LISTEN 0 128 127.0.0.1:15000 0.0.0.0:* users:(("python3",pid=8614,fd=3),("python3",pid=8614,fd=4))\nLISTEN 0 511 10.77.0.1:15000 0.0.0.0:* users:(("node",pid=77,fd=20))\n';
  assert.deepEqual(holdersFromSs(ss), ['python3 (pid 8614)', 'node (pid 77)']);
  assert.deepEqual(holdersFromSs(''), []);
});
