// Finding the kubelet's cgroup (the one exemption from inbound enforcement) on a node: systemd's
// kubelet.service under the agent's cgroup root, or the cgroup of a process named kubelet.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { findKubeletCgroups, SYSTEMD_KUBELET_CGROUP } from '../../lib/sys/cgroup.ts';

function fakeHost(): { mount: string; proc: string; done: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'weft-kubelet-'));
  const mount = join(dir, 'cgroup');
  const proc = join(dir, 'proc');
  mkdirSync(mount, { recursive: true });
  mkdirSync(proc, { recursive: true });
  return { mount, proc, done: () => rmSync(dir, { recursive: true, force: true }) };
}

function fakeProcess(proc: string, pid: number, comm: string, cgroup: string): void {
  mkdirSync(join(proc, String(pid)));
  writeFileSync(join(proc, String(pid), 'comm'), `${comm}\n`);
  writeFileSync(join(proc, String(pid), 'cgroup'), `0::${cgroup}\n`);
}

test('a systemd kubelet: system.slice/kubelet.service under the agent\'s cgroup root', () => {
  const h = fakeHost();
  try {
    mkdirSync(join(h.mount, SYSTEMD_KUBELET_CGROUP), { recursive: true });
    assert.deepEqual(findKubeletCgroups(h.mount, h.mount, h.proc), [join(h.mount, SYSTEMD_KUBELET_CGROUP)]);
  } finally {
    h.done();
  }
});

test('a kubelet run elsewhere is found by its process name, only below the agent\'s cgroup root; other processes are not', () => {
  const h = fakeHost();
  try {
    const node = join(h.mount, 'node1');
    mkdirSync(join(node, 'kube'), { recursive: true });
    fakeProcess(h.proc, 100, 'kubelet', '/node1/kube');
    fakeProcess(h.proc, 101, 'kubelet', '/node2/kube'); // another node's, outside our root
    fakeProcess(h.proc, 102, 'sshd', '/node1/system.slice/ssh.service');
    mkdirSync(join(h.proc, 'self'));
    assert.deepEqual(findKubeletCgroups(node, h.mount, h.proc), [join(node, 'kube')]);
    assert.deepEqual(findKubeletCgroups(join(h.mount, 'node3'), h.mount, h.proc), [], 'none: the agent warns and exempts nothing');
  } finally {
    h.done();
  }
});
