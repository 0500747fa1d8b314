// Finding the kubelet's cgroup (the one exemption from inbound enforcement) on a node: systemd's
// kubelet.service under the agent's cgroup root, or the cgroup of a process named kubelet that runs as root
// in the host's mount namespace.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { findKubeletCgroups, kubeletRefusalDetail, SYSTEMD_KUBELET_CGROUP } from '../../lib/sys/cgroup.ts';

function fakeHost(): { mount: string; proc: string; done: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'weft-kubelet-'));
  const mount = join(dir, 'cgroup');
  const proc = join(dir, 'proc');
  mkdirSync(mount, { recursive: true });
  mkdirSync(proc, { recursive: true });
  fakeProcess(proc, 1, 'systemd', '/init.scope');
  return { mount, proc, done: () => rmSync(dir, { recursive: true, force: true }) };
}

/** The host's mount namespace (PID 1's); a container has one of its own. */
const HOST_MNT = 'mnt:[4026531841]';

/** /proc/<pid> as findKubeletCgroups reads it: comm, cgroup, the uids in status, the mount namespace. */
function fakeProcess(proc: string, pid: number, comm: string, cgroup: string, o: { uid?: number; mnt?: string } = {}): void {
  const dir = join(proc, String(pid));
  mkdirSync(join(dir, 'ns'), { recursive: true });
  writeFileSync(join(dir, 'comm'), `${comm}\n`);
  writeFileSync(join(dir, 'cgroup'), `0::${cgroup}\n`);
  const uid = o.uid ?? 0;
  writeFileSync(join(dir, 'status'), `Name:\t${comm}\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t${uid}\t${uid}\t${uid}\t${uid}\nGid:\t0\t0\t0\t0\n`);
  symlinkSync(o.mnt ?? HOST_MNT, join(dir, 'ns', 'mnt'));
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

test('a process that only calls itself kubelet is no kubelet: an unprivileged user\'s, or a container\'s (a pod\'s, root in its own mount namespace), gets no exemption', () => {
  // Anyone may name a process kubelet (its executable's name, or prctl PR_SET_NAME): a pod outside
  // the mesh whose cgroup were taken for the kubelet's would reach STRICT pods past both gates.
  const h = fakeHost();
  try {
    const node = join(h.mount, 'node1');
    for (const d of ['kube', 'user.slice/user-1000.slice', 'kubepods.slice/pod1']) mkdirSync(join(node, d), { recursive: true });
    fakeProcess(h.proc, 100, 'kubelet', '/node1/kube');
    fakeProcess(h.proc, 200, 'kubelet', '/node1/user.slice/user-1000.slice', { uid: 1000 });
    fakeProcess(h.proc, 300, 'kubelet', '/node1/kubepods.slice/pod1', { mnt: 'mnt:[4026532999]' });
    const refused: Array<{ pid: number }> = [];
    assert.deepEqual(findKubeletCgroups(node, h.mount, h.proc, (p) => refused.push(p)), [join(node, 'kube')]);
    assert.deepEqual(refused.sort((a, b) => a.pid - b.pid), [
      { pid: 200, cgroup: join(node, 'user.slice/user-1000.slice'), reason: 'uid' },
      { pid: 300, cgroup: join(node, 'kubepods.slice/pod1'), reason: 'mount_namespace' },
    ], 'each named, with why');
    // Without PID 1's namespace to compare with, no process is taken for the kubelet.
    rmSync(join(h.proc, '1'), { recursive: true });
    assert.deepEqual(findKubeletCgroups(node, h.mount, h.proc), []);
  } finally {
    h.done();
  }
});

test('a containerised kubelet (Talos, RKE1: named kubelet, root, in a container\'s mount namespace) is not taken, refused as mount_namespace, and the refusal says to declare it with --kubelet-cgroup', () => {
  // It cannot be told from a pod's process that calls itself kubelet and runs as root in its own
  // mount namespace; the stricter rule stays, and the operator declares the real one.
  const h = fakeHost();
  try {
    const node = join(h.mount, 'node1');
    mkdirSync(join(node, 'system.slice/containerd.service'), { recursive: true });
    fakeProcess(h.proc, 400, 'kubelet', '/node1/system.slice/containerd.service', { mnt: 'mnt:[4026533000]' });
    const refused: Array<{ pid: number; cgroup: string; reason: 'uid' | 'mount_namespace' }> = [];
    assert.deepEqual(findKubeletCgroups(node, h.mount, h.proc, (p) => refused.push(p)), [], 'not taken');
    assert.deepEqual(refused, [{ pid: 400, cgroup: join(node, 'system.slice/containerd.service'), reason: 'mount_namespace' }]);
    assert.match(kubeletRefusalDetail('mount_namespace'), /--kubelet-cgroup/, 'the warning names the way to declare it');
    assert.match(kubeletRefusalDetail('uid'), /not run as root/);
  } finally {
    h.done();
  }
});
