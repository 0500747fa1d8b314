// Which network namespace each pod the config lists on this node is enrolled in (agent/src/pods.ts
// planEnrolment), when addresses are reused. A deleted pod's address may be given to a new pod of
// any namespace and ServiceAccount before the controller's config drops the old pod; enrolling by
// address would then give the new pod the old one's identity (its certificate on every outbound
// tunnel), mTLS mode and policies. Istio's CNI agent finds a pod's namespace by its uid, never its
// address (istio/istio cni/pkg/nodeagent/podcgroupns.go).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { planEnrolment, podUidOfCgroup, type PodNetns } from '../../agent/src/pods.ts';

const X = '10.77.1.9';
const old = { uid: 'uid-old', ip: X, name: 'finance/payments' };
const other = { uid: 'uid-other', ip: '10.77.1.10', name: 'default/web' };
const netns = (path: string): PodNetns => ({ path, ifname: 'eth0' });
/** A scan that finds `found` (planEnrolment asks it for the addresses it must look up). */
const scanning = (found: ReadonlyMap<string, PodNetns>) => () => found;

test('a pod the CNI plugin set up is enrolled in the namespace it named, found without a scan', () => {
  const plan = planEnrolment([old], new Map([[X, { ...netns('/run/netns/a'), uid: 'uid-old' }]]), scanning(new Map()), new Set());
  assert.deepEqual(plan.enrol, [{ workload: old, ns: netns('/run/netns/a') }]);
  assert.deepEqual([plan.missing, plan.refused], [[], []]);
});

test('the config\'s stale pod is refused (address_reused) at an address the CNI plugin set up for a new pod, which keeps it', () => {
  const cni = new Map([[X, { ...netns('/run/netns/new'), uid: 'uid-new' }]]);
  const plan = planEnrolment([old, other], cni, scanning(new Map([[other.ip, netns('/proc/9/ns/net')]])), new Set());
  assert.deepEqual(plan.refused, [{ workload: old, reason: 'address_reused', holder: 'uid-new' }]);
  assert.deepEqual(plan.enrol, [{ workload: other, ns: netns('/proc/9/ns/net') }], 'other pods are unaffected');
});

test('a pod whose network the CNI plugin removed is never enrolled again by a scan of its address (network_removed)', () => {
  // The scan finds the new pod's namespace at the old pod's address: exactly what must not be taken.
  const plan = planEnrolment([old], new Map(), scanning(new Map([[X, netns('/proc/42/ns/net')]])), new Set(['uid-old']));
  assert.deepEqual(plan.refused, [{ workload: old, reason: 'network_removed' }]);
  assert.deepEqual([plan.enrol, plan.missing], [[], []]);
});

test('a pod the plugin never reported (it ran before the agent) is enrolled where a scan finds its address, else looked for again', () => {
  assert.deepEqual(planEnrolment([old], new Map(), scanning(new Map([[X, netns('/proc/42/ns/net')]])), new Set()).enrol, [{ workload: old, ns: netns('/proc/42/ns/net') }]);
  assert.deepEqual(planEnrolment([old], new Map(), scanning(new Map()), new Set()).missing, [old]);
});

test('a scanned namespace whose processes run in another pod\'s cgroup is that pod\'s, never the listed one\'s (address_reused)', () => {
  // An agent that missed the old pod's DEL (it was restarting) scans for the address and finds the new pod.
  const found = new Map([[X, { ...netns('/proc/42/ns/net'), podUids: ['0a1b2c3d-0000-4000-8000-00000000beef'] }]]);
  const plan = planEnrolment([old], new Map(), scanning(found), new Set());
  assert.deepEqual(plan.refused, [{ workload: old, reason: 'address_reused', holder: '0a1b2c3d-0000-4000-8000-00000000beef' }]);
  assert.deepEqual(plan.enrol, []);
  // Its own pod's processes (uids are compared as the kubelet writes them, lower case) enrol it.
  const own = { uid: '0A1B2C3D-0000-4000-8000-00000000BEEF', ip: X };
  assert.equal(planEnrolment([own], new Map(), scanning(found), new Set()).enrol.length, 1);
});

test('only pods neither the plugin reported nor removed are looked for by address, in one scan', () => {
  const removed = { uid: 'uid-removed', ip: '10.77.1.11' };
  const asked: string[][] = [];
  const plan = planEnrolment([old, other, removed], new Map([[X, { ...netns('/run/netns/a'), uid: 'uid-old' }]]), (ips) => { asked.push(ips); return new Map(); }, new Set(['uid-removed']));
  assert.deepEqual(asked, [[other.ip]]);
  assert.deepEqual(plan.missing, [other]);
});

test('the pod uid of a process is read from its cgroup as the kubelet lays it out (cgroupfs and systemd drivers)', () => {
  const uid = '6f0b3a52-1c2d-4e5f-8a9b-0c1d2e3f4a5b';
  assert.equal(podUidOfCgroup(`0::/kubepods/besteffort/pod${uid}/3f1e2d`), uid);
  assert.equal(podUidOfCgroup(`0::/kubepods/pod${uid}/3f1e2d\n`), uid);
  assert.equal(podUidOfCgroup(`0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${uid.replace(/-/g, '_')}.slice/cri-containerd-ab12.scope`), uid);
  assert.equal(podUidOfCgroup('12:pids:/kubepods/burstable/pod' + uid.toUpperCase() + '/x\n0::/'), uid);
  assert.equal(podUidOfCgroup('0::/system.slice/containerd.service'), undefined, 'a node daemon names no pod');
  assert.equal(podUidOfCgroup('0::/user.slice/podman-pod1234.scope'), undefined, 'nor anything shaped otherwise');
});
