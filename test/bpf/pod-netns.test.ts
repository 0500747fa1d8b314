// The agent finds a pod's network namespace from its IP, in named namespaces and in processes'.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { Lab } from '../lab/lab.ts';
import { PodNetnsResolver } from '../../agent/src/pods.ts';
import { until } from '../lab/wait.ts';

const lab = new Lab();
after(() => lab.cleanup());

test('finds a named pod namespace by its address and a late-assigned address on the next scan', async () => {
  const a = lab.netns('pa');
  const b = lab.netns('pb');
  lab.veth({ ns: a, name: 'a', addr: '10.251.0.1/24' }, { ns: b, name: 'b' });
  // The kernel gives b's interface an fe80:: address once its link is up, before the pod address
  // is assigned: the first scan must see that and still look again later (this used to be a race
  // the first scan sometimes lost, and then the late address was never found).
  await until('b holds its link-local address', () => /inet6 fe80:/.test(b.exec('ip', '-o', 'addr', 'show', 'dev', `${lab.id}b`)), 10_000);
  const r = new PodNetnsResolver();
  const first = r.resolve(['10.251.0.1', '10.251.0.2']);
  assert.equal(first.get('10.251.0.1')?.ifname, `${lab.id}a`);
  assert.equal(statSync(first.get('10.251.0.1')!.path).ino, statSync(a.path).ino);
  assert.equal(first.has('10.251.0.2'), false);
  b.exec('ip', 'addr', 'add', '10.251.0.2/24', 'dev', `${lab.id}b`);
  assert.equal(statSync(r.resolve(['10.251.0.2']).get('10.251.0.2')!.path).ino, statSync(b.path).ino);
});

test('finds the namespace of a process when the namespace has no name', async () => {
  const n = lab.netns('pc');
  n.exec('ip', 'addr', 'add', '10.251.1.1/32', 'dev', 'lo');
  // unshare a fresh unnamed netns from inside a process, give it an address, and keep it alive.
  const child = lab.spawn('unshare', ['--net', 'sh', '-c', 'ip link set lo up; ip addr add 10.251.2.1/32 dev lo; echo ready; exec sleep 30']);
  const [chunk] = (await once(child.stdout!, 'data')) as [Buffer];
  assert.match(chunk.toString(), /ready/);
  const found = new PodNetnsResolver().resolve(['10.251.2.1']);
  assert.match(found.get('10.251.2.1')?.path ?? '', /^\/proc\/\d+\/ns\/net$/);
  assert.equal(found.get('10.251.2.1')?.ifname, 'lo');
  child.kill('SIGKILL');
});

test('with a name prefix, only that mesh\'s namespaces are considered, even for an address another holds', () => {
  const mine = lab.netns('pm');
  const other = lab.netns('xo');
  mine.exec('ip', 'addr', 'add', '10.251.3.1/32', 'dev', 'lo');
  other.exec('ip', 'addr', 'add', '10.251.3.2/32', 'dev', 'lo');
  const r = new PodNetnsResolver({ namePrefix: `${lab.id}-p` });
  const found = r.resolve(['10.251.3.1', '10.251.3.2']);
  assert.equal(found.get('10.251.3.1')?.path, mine.path);
  assert.equal(found.has('10.251.3.2'), false, 'a namespace outside the prefix is never chosen');
});

test('a process namespace is reported with the pod uids its processes\' cgroups name, so an address cannot stand for another pod', async () => {
  // A stand-in /proc: one "process" whose namespace is a real one holding the address, and whose
  // cgroup is a kubelet pod's (systemd driver). Istio's CNI agent matches pods to namespaces by
  // this uid (istio/istio cni/pkg/nodeagent/podcgroupns.go); the agent's planEnrolment refuses a
  // listed pod at an address whose namespace is another pod's (test/unit/agent-enrolment.test.ts).
  const child = lab.spawn('unshare', ['--net', 'sh', '-c', 'ip link set lo up; ip addr add 10.251.4.1/32 dev lo; echo ready; exec sleep 30']);
  const root = mkdtempSync(join(tmpdir(), `${lab.id}-proc-`));
  try {
    const [chunk] = (await once(child.stdout!, 'data')) as [Buffer];
    assert.match(chunk.toString(), /ready/);
    const uid = '6f0b3a52-1c2d-4e5f-8a9b-0c1d2e3f4a5b';
    mkdirSync(join(root, '4242', 'ns'), { recursive: true });
    symlinkSync(`/proc/${child.pid}/ns/net`, join(root, '4242', 'ns', 'net'));
    writeFileSync(join(root, '4242', 'cgroup'), `0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${uid.replace(/-/g, '_')}.slice/cri-containerd-0123.scope\n`);
    const found = new PodNetnsResolver({ procRoot: root, netnsDir: join(root, 'none') }).resolve(['10.251.4.1']);
    assert.deepEqual(found.get('10.251.4.1')?.podUids, [uid]);
  } finally {
    child.kill('SIGKILL');
    rmSync(root, { recursive: true, force: true });
  }
});
