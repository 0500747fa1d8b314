// The lab every root-tier test stands on: what it creates must exist while the test runs and be
// gone after cleanup, processes included.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { once } from 'node:events';
import { Lab } from '../lab/lab.ts';
import { listNetns } from '../../lib/sys/netns.ts';

test('lab namespaces, veths, cgroups and processes exist while used and vanish on cleanup', async () => {
  const lab = new Lab();
  try {
    const a = lab.netns('a');
    const b = lab.netns('b');
    lab.veth({ ns: a, name: 'a0', addr: '10.250.0.1/24' }, { ns: b, name: 'b0', addr: '10.250.0.2/24' });
    assert.match(a.exec('ping', '-c', '1', '-W', '2', '10.250.0.2'), /1 received/);

    const cg = lab.cgroup('pod');
    const child = lab.spawn('sleep', ['60'], { netns: b, cgroup: cg });
    await once(child, 'spawn');
    // The wrapper shell moves itself into the cgroup before exec, so poll briefly for the pid.
    let procs = '';
    for (let i = 0; i < 50 && !procs.includes(String(child.pid)); i++) {
      await new Promise((r) => setTimeout(r, 20));
      procs = readFileSync(`${cg}/cgroup.procs`, 'utf8');
    }
    assert.ok(procs.split('\n').includes(String(child.pid)), 'process joined the lab cgroup');
    assert.ok(b.exec('ip', '-o', 'addr').includes('10.250.0.2'), 'veth end has its address in netns b');

    await lab.cleanup();
    assert.ok(!listNetns().some((n) => n.startsWith(lab.id)), 'no lab netns left');
    assert.ok(!existsSync(lab.cgroupDir), 'lab cgroup folder removed');
    assert.ok(child.exitCode !== null || child.signalCode !== null || (await once(child, 'exit')), 'process ended');
  } finally {
    await lab.cleanup();
  }
});
