// The local mesh's network, without the mesh: pods reach pods on their own and other nodes,
// pods reach their node's agent address, and destroy() leaves nothing behind.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { LocalNetwork } from '../../cli/local/network.ts';
import { listNetns } from '../../lib/sys/netns.ts';
import { runIn } from '../../lib/sys/exec.ts';
import { Lab } from '../lab/lab.ts';

const lab = new Lab();
const net = LocalNetwork.create(lab.id);
after(async () => {
  await net.destroy();
  await lab.cleanup();
});

test('pods reach pods on the same node, on other nodes, and their node address', () => {
  const n1 = net.addNode('node1');
  const n2 = net.addNode('node2');
  const a = net.addPod('node1', 'default', 'a');
  const b = net.addPod('node1', 'default', 'b');
  const c = net.addPod('node2', 'other', 'c');
  const ping = (from: string, to: string) => runIn(from, 'ping', ['-c', '1', '-W', '2', to]);
  assert.match(ping(a.netns, b.ip), /1 received/);
  assert.match(ping(a.netns, c.ip), /1 received/);
  assert.match(ping(c.netns, a.ip), /1 received/);
  assert.match(ping(a.netns, n1.ip), /1 received/);
  assert.match(ping(c.netns, n2.ip), /1 received/);
  assert.match(ping(n1.netns, c.ip), /1 received/);
  assert.equal(a.ip, '10.77.1.1');
  assert.equal(c.ip, '10.77.2.1');
});

test('destroy removes every namespace, cgroup and pin folder of the network', async () => {
  const p = net.addPod('node2', 'other', 'd');
  const child = net.spawn(p, 'sleep', ['30']);
  await new Promise((r) => child.once('spawn', r));
  await net.destroy();
  assert.deepEqual(listNetns().filter((n) => n.startsWith(`${lab.id}-`)), []);
  assert.equal(existsSync(net.cgroupDir), false);
  assert.equal(existsSync(net.pinDir), false);
});
