// Zero trust in the kernel, tried as an attacker would (issue 15): nothing reaches an enrolled pod
// but what passes the agent, the agent's own deliveries and the kubelet's probes. One node netns
// with pods joined by veths and a second node; the agent is stood in for by this process (its
// listener inside pod B's netns, registered in weft_pod_listeners) and by small processes in the
// lab's cgroup (an agent delivery, a kubelet). Each test asserts the attack fails and that the
// counter naming why moved.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { existsSync } from 'node:fs';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { collectOutput } from '../../lib/sys/exec.ts';
import type { ChildProcess } from 'node:child_process';
import { Lab } from '../lab/lab.ts';
import { createSocketInNetns, netnsCookie } from '../../agent/libbpf/index.ts';
import { Datapath, type Counters, type Refusal } from '../../agent/src/datapath/index.ts';
import * as codec from '../../agent/src/datapath/codecs.ts';
import type { BpfMap } from '../../agent/libbpf/index.ts';
import { cgroupId } from '../../lib/sys/cgroup.ts';
import { PLAINTEXT_HOST, PLAINTEXT_PORT } from '../../agent/src/plaintext.ts';
import { addRemoteNode, bpftoolJson, buildNode, connectFrom, craftedSyn, framedSyn, macOf, NODE_BIN, startServer, stopAll, type LabPod, type SynFrame } from './datapath-lab.ts';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const OBJECT_DIR = join(REPO, 'build', 'bpf');
const APP_PORT = 8080;
const APP_PORT6 = 8081;
const POD_B6 = 'fd00:77:2::2';

// The agent delivering into a pod: a socket made inside the pod's netns, bound to the pod's own
// address, tagged in weft_sk_tag (or not, argv[5]), connected to the pod. Prints the server's reply.
const DELIVER_JS = `
import net from 'node:net';
import { BpfMap, createBoundSocketInNetns } from '${REPO}/agent/libbpf/index.ts';
import { encodeSkTag, fdKey, SK_TAG } from '${REPO}/agent/src/datapath/codecs.ts';
const [pin, netns, ip, port, tag] = process.argv.slice(1);
const b = createBoundSocketInNetns(netns, { bind: { host: ip, port: 0 } });
if (tag === 'tag') BpfMap.openPinned(pin).update(fdKey(b.fd), encodeSkTag(SK_TAG.AGENT));
const s = new net.Socket({ fd: b.fd, readable: true, writable: true });
let reply = '';
s.on('data', (d) => { reply += d; });
s.on('end', () => { process.stdout.write(reply + '\\n'); process.exit(0); });
s.on('error', (e) => { process.stdout.write(JSON.stringify({ error: e.code }) + '\\n'); process.exit(0); });
s.connect(Number(port), ip);
`;

describe('zero trust in the kernel: every connection into an enrolled pod passes the agent', () => {
  let lab: Lab;
  let dp: Datapath;
  let node: LabPod['ns'];
  let pa: LabPod; // enrolled client pod
  let pb: LabPod; // the pod under attack
  let pc: LabPod; // a pod outside the mesh, same node
  let pd: LabPod; // a pod outside the mesh, other node
  let capture: Server; // the agent's capture port (15001) in the node netns
  let inPod: Server | undefined; // the agent's plaintext listener in pod B's netns
  let kubeletCg: string;
  let daemonCg: string;
  const procs: ChildProcess[] = [];
  const refusals: Refusal[] = [];
  let ring: { close(): void } | undefined;

  /** Waits (up to 5 s) for the kernel's refusal record matching `want`, among those from the `since`th on. */
  async function refusal(want: (r: Refusal) => boolean, since = 0): Promise<Refusal> {
    const deadline = Date.now() + 5_000;
    for (;;) {
      const r = refusals.slice(since).find(want);
      if (r) return r;
      if (Date.now() > deadline) throw new Error(`no such refusal record; got ${JSON.stringify(refusals, (_k, v) => typeof v === 'bigint' ? String(v) : v)}`);
      await new Promise((res) => setTimeout(res, 50));
    }
  }

  const delta = (a: Counters, b: Counters, k: keyof Counters) => b[k] - a[k];

  /** A SYN framed by the node onto pod B's link: from its gateway to its address and application port unless `over` says otherwise. */
  const synToPodB = (over: Partial<SynFrame> = {}) =>
    framedSyn({ ns: node }, { ifname: lab.ifname('n1'), dmac: macOf(pb.ns, pb.ifname), src: pb.gateway, dst: pb.ip, port: APP_PORT, ...over });

  async function openInPodListener(): Promise<void> {
    const fd = createSocketInNetns(pb.ns.path, { listen: { host: PLAINTEXT_HOST, port: PLAINTEXT_PORT }, reusePort: true });
    dp.setPodListener(pb.ip, fd);
    inPod = createServer((s: Socket) => {
      s.end(JSON.stringify({ server: 'agent-in-pod', localAddress: s.localAddress, localPort: s.localPort, remoteAddress: s.remoteAddress, remotePort: s.remotePort }));
    });
    await new Promise<void>((r) => inPod!.listen({ fd }, r));
  }

  async function deliver(tag: boolean): Promise<Record<string, unknown>> {
    const child = lab.spawn(NODE_BIN, ['--input-type=module', '-e', DELIVER_JS, dp.mapPin('weft_sk_tag'), pb.ns.path, pb.ip, String(APP_PORT), tag ? 'tag' : 'no'],
      { cgroup: lab.cgroup('agent') });
    const { stdout: out, stderr: err } = await collectOutput(child);
    assert.ok(out.trim(), `delivery printed nothing: ${err}`);
    return JSON.parse(out.trim().split('\n').pop()!) as Record<string, unknown>;
  }

  before(async () => {
    assert.ok(existsSync(join(OBJECT_DIR, 'inbound.bpf.o')), 'run `make bpf` first');
    lab = new Lab();
    const built = buildNode(lab, ['pa', 'pb', 'pc']);
    node = built.node;
    pa = built.pods.pa!;
    pb = built.pods.pb!;
    pc = built.pods.pc!;
    pd = addRemoteNode(lab, node, 'pd').pod;
    // Dual stack on pod B's link, so IPv6 can be tried against it.
    node.exec('ip', '-6', 'addr', 'add', 'fd00:77:2::1/64', 'dev', lab.ifname('n1'), 'nodad');
    pb.ns.exec('ip', '-6', 'addr', 'add', `${POD_B6}/64`, 'dev', pb.ifname, 'nodad');
    kubeletCg = lab.cgroup('system.slice/kubelet.service');
    daemonCg = lab.cgroup('system.slice/some-daemon.service');
    dp = Datapath.open({ pinRoot: lab.pinRoot, cgroupPath: lab.cgroupDir, objectDir: OBJECT_DIR });
    dp.setProberCgroups([cgroupId(kubeletCg)]);
    ring = dp.watchRefusals((r) => refusals.push(r));
    const fd = createSocketInNetns(node.path, { listen: { host: '0.0.0.0', port: 15001 } });
    capture = createServer((s: Socket) => s.end(JSON.stringify({ server: 'agent' })));
    await new Promise<void>((r) => capture.listen({ fd }, r));
    procs.push(await startServer(lab, pb, 'pb', [`0.0.0.0:${APP_PORT}`, `:::${APP_PORT6}`]));
    dp.enroll({ netnsPath: pa.ns.path, podIp: pa.ip, mode: 'PERMISSIVE', agentIp: pa.gateway, ifname: pa.ifname });
    dp.enroll({ netnsPath: pb.ns.path, podIp: pb.ip, mode: 'PERMISSIVE', agentIp: pb.gateway, ifname: pb.ifname });
    await openInPodListener();
  });

  after(async () => {
    ring?.close();
    capture?.close();
    inPod?.close();
    await stopAll(procs);
    try { dp?.teardown(); } catch { /* the lab removes the pins anyway */ }
    await lab?.cleanup();
  });

  test('plaintext into a PERMISSIVE pod from a node process, a pod outside the mesh and another node is steered to the agent, which sees the dialled address and the real client', async () => {
    const before = dp.counters();
    const cookie = netnsCookie(pb.ns.path);
    const podBefore = dp.podCounters().get(cookie)!;
    for (const [who, from, ip] of [['node', { ns: node, cgroup: daemonCg }, pb.gateway], ['pod outside the mesh', pc, pc.ip], ['other node', pd, pd.ip]] as const) {
      const r = await connectFrom(lab, from, pb.ip, APP_PORT);
      assert.equal(r.ok, true, `${who}: ${r.code}`);
      const seen = JSON.parse(r.reply!);
      assert.equal(seen.server, 'agent-in-pod', `${who}: the agent got it, not the application`);
      assert.equal(seen.localAddress, pb.ip, `${who}: the agent sees the pod address that was dialled`);
      assert.equal(seen.localPort, APP_PORT);
      assert.equal(seen.remoteAddress, ip, `${who}: and the real client`);
      assert.equal(r.remoteAddress, pb.ip, `${who}: the client sees the address it dialled`);
    }
    const after = dp.counters();
    assert.equal(delta(before, after, 'lookup_steered'), 3);
    assert.equal(delta(before, after, 'permissive_plaintext'), 3);
    assert.equal(dp.podCounters().get(cookie)!.steered - podBefore.steered, 3);
  });

  test('with no agent listener in the pod, its plaintext is refused (fail closed) and counted as lookup_no_agent', async () => {
    inPod!.close();
    inPod = undefined;
    assert.equal(dp.hasPodListener(pb.ip), false, 'a closed listener leaves the map by itself');
    const before = dp.counters();
    const r = await connectFrom(lab, pc, pb.ip, APP_PORT);
    assert.equal(r.code, 'ECONNREFUSED');
    assert.equal(delta(before, dp.counters(), 'lookup_no_agent'), 1);
    await openInPodListener();
  });

  test('the agent\'s own delivery (a tagged socket inside the pod\'s netns) reaches the application uncaptured; an untagged one is captured', async () => {
    dp.setDestinations([{ ip: pb.ip, port: APP_PORT }]);
    try {
      const before = dp.counters();
      const delivered = await deliver(true);
      assert.equal(delivered.server, 'pb', `the application answered: ${JSON.stringify(delivered)}`);
      assert.equal(delivered.remoteAddress, pb.ip);
      assert.equal(delta(before, dp.counters(), 'connect_agent_skipped'), 1);
      const captured = await deliver(false);
      assert.equal(captured.server, 'agent', 'a socket the agent did not tag is captured like any pod connection');
    } finally {
      dp.setDestinations([]);
    }
  });

  test('STRICT: the kubelet\'s probe (its cgroup) reaches the pod; a node daemon in another cgroup is refused; the probe\'s tuple goes when it closes', async () => {
    dp.enroll({ netnsPath: pb.ns.path, podIp: pb.ip, mode: 'STRICT', agentIp: pb.gateway, ifname: pb.ifname });
    const before = dp.counters();
    const probe = await connectFrom(lab, { ns: node, cgroup: kubeletCg }, pb.ip, APP_PORT);
    assert.equal(probe.ok, true, `probe failed: ${probe.code}`);
    assert.equal(JSON.parse(probe.reply!).server, 'pb', 'the probe reached the application');
    const daemon = await connectFrom(lab, { ns: node, cgroup: daemonCg }, pb.ip, APP_PORT);
    assert.equal(daemon.code, 'ECONNREFUSED', 'any other node process is a client like any other');
    const root = await connectFrom(lab, { ns: node }, pb.ip, APP_PORT);
    assert.equal(root.code, 'ECONNREFUSED', 'a process outside the node\'s cgroup programs too');
    const rec = await refusal((x) => x.reason === 'strict_denied' && x.src.ip === pb.gateway && x.dst.port === APP_PORT);
    assert.equal(rec.dst.ip, pb.ip);
    const after = dp.counters();
    assert.equal(delta(before, after, 'probe_tagged'), 1);
    assert.equal(delta(before, after, 'probe_allowed'), 1);
    assert.equal(delta(before, after, 'lookup_probe_allowed'), 1);
    assert.equal(delta(before, after, 'strict_denied'), 2);
    assert.deepEqual(bpftoolJson<unknown[]>('map', 'dump', 'pinned', dp.mapPin('weft_probe_tuples')), [], 'no probe tuple outlives its socket');
  });

  test('STRICT: a node daemon reusing a finished probe\'s 4-tuple, while the pod holds that connection in TIME-WAIT (RFC 9293 3.6.1, a new SYN may reopen it), is refused like any other', async () => {
    dp.enroll({ netnsPath: pb.ns.path, podIp: pb.ip, mode: 'STRICT', agentIp: pb.gateway, ifname: pb.ifname });
    const probe = await connectFrom(lab, { ns: node, cgroup: kubeletCg }, pb.ip, APP_PORT);
    assert.equal(probe.ok, true, `probe failed: ${probe.code}`);
    // The application closed first (it ends its reply), so the pod's side is in TIME-WAIT.
    assert.match(pb.ns.exec('ss', '-Htn', 'state', 'time-wait', 'dst', `${pb.gateway}:${probe.localPort}`), new RegExp(`${pb.ip}:${APP_PORT}`));
    const before = dp.counters();
    const mark = refusals.length;
    const reuse = await connectFrom(lab, { ns: node, cgroup: daemonCg }, pb.ip, APP_PORT, { host: pb.gateway, port: probe.localPort! });
    assert.equal(reuse.code, 'ECONNREFUSED', 'the exemption went with the probe\'s socket');
    assert.equal(delta(before, dp.counters(), 'probe_allowed'), 0);
    assert.equal(delta(before, dp.counters(), 'strict_denied'), 1);
    await refusal((x) => x.reason === 'strict_denied' && x.src.port === probe.localPort, mark);
  });

  test('STRICT: a SYN in two IPv4 fragments (8 bytes of TCP header in the first) from another node gets no answer and is counted fragment_dropped', async () => {
    const before = dp.counters();
    const r = craftedSyn(pd, 'fragments', pd.ip, pb.ip, APP_PORT);
    assert.equal(r.answered, false, `the pod answered: flags ${r.flags}`);
    const after = dp.counters();
    assert.equal(delta(before, after, 'fragment_dropped'), 2, 'both fragments');
    assert.equal(dp.podCounters().get(netnsCookie(pb.ns.path))!.fragment_dropped >= 2, true);
    // The agent hears of it too (its access log): who, to whom, why.
    const rec = await refusal((x) => x.reason === 'fragment_dropped');
    assert.deepEqual({ src: rec.src.ip, dst: rec.dst.ip, cookie: rec.netnsCookie }, { src: pd.ip, dst: pb.ip, cookie: netnsCookie(pb.ns.path) });
  });

  test('PERMISSIVE: the same fragments are reassembled by the pod and meet the agent, not the application', () => {
    dp.enroll({ netnsPath: pb.ns.path, podIp: pb.ip, mode: 'PERMISSIVE', agentIp: pb.gateway, ifname: pb.ifname });
    const before = dp.counters();
    const r = craftedSyn(pd, 'fragments', pd.ip, pb.ip, APP_PORT);
    assert.equal(r.answered, true, 'the agent\'s listener answers');
    assert.equal(r.flags, 0x12, 'SYN|ACK');
    assert.equal(delta(before, dp.counters(), 'lookup_steered'), 1, 'steered to the agent after reassembly');
  });

  test('a TCP header cut short (8 of 20 bytes, not a fragment) is dropped and counted header_unreadable, never passed unjudged', () => {
    const before = dp.counters();
    const r = craftedSyn(pd, 'short', pd.ip, pb.ip, APP_PORT);
    assert.equal(r.answered, false);
    assert.equal(delta(before, dp.counters(), 'header_unreadable'), 1);
  });

  test('a SYN with IP options (IHL 6, RFC 791 3.1) or carrying data with a Fast Open cookie (RFC 7413 4.1.1) gets no answer from a STRICT pod (strict_denied), and meets the agent at a PERMISSIVE one, which takes none of the data', async () => {
    const syns = {
      // Four NOPs (RFC 791 3.1, option type 1): the TCP header starts at byte 24.
      'IP options': { ipOptions: Buffer.from([1, 1, 1, 1]) },
      // Kind 34, length 10: an 8-byte cookie (one the pod never issued), then two NOPs; a request in the SYN.
      'Fast Open': { tcpOptions: Buffer.from([34, 10, 1, 2, 3, 4, 5, 6, 7, 8, 1, 1]), data: Buffer.from('GET / HTTP/1.0\r\n\r\n') },
    };
    for (const [what, extra] of Object.entries(syns)) {
      dp.enroll({ netnsPath: pb.ns.path, podIp: pb.ip, mode: 'STRICT', agentIp: pb.gateway, ifname: pb.ifname });
      let before = dp.counters();
      const strict = synToPodB(extra);
      assert.equal(strict.answered, false, `STRICT, ${what}: answered, flags ${strict.flags}`);
      assert.equal(delta(before, dp.counters(), 'strict_denied'), 1, `STRICT, ${what}: counted`);
      dp.enroll({ netnsPath: pb.ns.path, podIp: pb.ip, mode: 'PERMISSIVE', agentIp: pb.gateway, ifname: pb.ifname });
      before = dp.counters();
      const permissive = synToPodB(extra);
      assert.deepEqual([permissive.answered, permissive.flags, permissive.acked], [true, 0x12, 0], `PERMISSIVE, ${what}: a SYN|ACK of the SYN alone`);
      assert.equal(delta(before, dp.counters(), 'lookup_steered'), 1, `PERMISSIVE, ${what}: steered to the agent`);
    }
  });

  test('STRICT: a SYN behind two stacked priority tags (802.1Q VID 0, IEEE 802.1Q-2018 9.6), which the pod\'s stack strips only after tc, is dropped at the interface and counted vlan_dropped', async () => {
    dp.enroll({ netnsPath: pb.ns.path, podIp: pb.ip, mode: 'STRICT', agentIp: pb.gateway, ifname: pb.ifname });
    // One tag the kernel takes off before tc: the SYN is judged like any other.
    let before = dp.counters();
    const one = synToPodB({ vlanTags: [0x8100] });
    assert.equal(delta(before, dp.counters(), 'strict_denied'), 1, `one priority tag: judged (answer ${JSON.stringify(one)})`);
    // Two (802.1ad outside 802.1Q, or 802.1Q twice): tc sees the inner tag, not IPv4; the stack
    // then strips it too and takes the SYN. Dropped at the interface, counted, reported.
    const mark = refusals.length;
    for (const vlanTags of [[0x8100, 0x8100], [0x88a8, 0x8100]]) {
      before = dp.counters();
      const r = synToPodB({ vlanTags });
      assert.equal(r.answered, false, `${vlanTags.map((t) => t.toString(16))}: answered, flags ${r.flags} from ${r.from}`);
      assert.equal(delta(before, dp.counters(), 'vlan_dropped'), 1, `${vlanTags.map((t) => t.toString(16))}: counted`);
    }
    // Named: what the inner tag carries (addresses, ports) and the pod.
    const rec = await refusal((x) => x.reason === 'vlan_dropped', mark);
    assert.deepEqual([rec.src.ip, rec.dst.ip, rec.dst.port, rec.netnsCookie], [pb.gateway, pb.ip, APP_PORT, netnsCookie(pb.ns.path)]);
  });

  test('a SYN to the pod\'s loopback (127.0.0.1, RFC 1122 3.2.1.3: never on a wire) through its interface, routable in a pod namespace that inherited route_localnet=1 from a kube-proxy node, is dropped at the interface and counted martian', async () => {
    // IPv4 interface settings of a new network namespace are copied from the node's
    // (net.core.devconf_inherit_init_net=0), and kube-proxy's iptables mode sets
    // net.ipv4.conf.all.route_localnet=1 on the node for localhost NodePorts.
    pb.ns.exec('sysctl', '-qw', 'net.ipv4.conf.all.route_localnet=1');
    try {
      for (const mode of ['PERMISSIVE', 'STRICT'] as const) {
        dp.enroll({ netnsPath: pb.ns.path, podIp: pb.ip, mode, agentIp: pb.gateway, ifname: pb.ifname });
        const before = dp.counters();
        const mark = refusals.length;
        const r = synToPodB({ dst: '127.0.0.1' });
        assert.equal(r.answered, false, `${mode}: answered, flags ${r.flags} from ${r.from}`);
        const after = dp.counters();
        assert.equal(delta(before, after, 'martian'), 1, `${mode}: counted`);
        assert.equal(delta(before, after, 'lookup_no_agent'), 0, `${mode}: not taken for an agent that is down`);
        const rec = await refusal((x) => x.reason === 'martian' && x.dst.ip === '127.0.0.1', mark);
        assert.equal(rec.src.ip, pb.gateway);
      }
      // From a loopback address to itself (not 127.0.0.1, no address of an interface, so the
      // stack's martian-source check lets it by): weft_lookup passes src == dst as made inside the
      // namespace. Blind (the answer stays in the pod), still dropped and counted at the interface.
      let before = dp.counters();
      synToPodB({ src: '127.0.0.2', dst: '127.0.0.2' });
      assert.equal(delta(before, dp.counters(), 'martian'), 1, 'src = dst = 127.0.0.2: counted');
      // From loopback to the pod's address: the pod is known, and named.
      before = dp.counters();
      const mark = refusals.length;
      synToPodB({ src: '127.0.0.1' });
      assert.equal(delta(before, dp.counters(), 'martian'), 1, '127.0.0.1 to the pod: counted');
      const rec = await refusal((x) => x.reason === 'martian' && x.src.ip === '127.0.0.1' && x.dst.ip === pb.ip, mark);
      assert.equal(rec.netnsCookie, netnsCookie(pb.ns.path), 'the pod is named');
    } finally {
      pb.ns.exec('sysctl', '-qw', 'net.ipv4.conf.all.route_localnet=0');
    }
  });

  test('IPv6 into an enrolled pod is refused (the mesh is IPv4 only) and counted ipv6_refused', async () => {
    for (const mode of ['STRICT', 'PERMISSIVE'] as const) {
      dp.enroll({ netnsPath: pb.ns.path, podIp: pb.ip, mode, agentIp: pb.gateway, ifname: pb.ifname });
      const before = dp.counters();
      const r = await connectFrom(lab, { ns: node, cgroup: daemonCg }, POD_B6, APP_PORT6);
      assert.equal(r.ok, false, `${mode}: served over IPv6`);
      assert.ok(delta(before, dp.counters(), 'ipv6_refused') >= 1, `${mode}: counted`);
    }
    // The application does listen on IPv6: from inside the pod it answers.
    const inside = await connectFrom(lab, { ns: pb.ns }, POD_B6, APP_PORT6);
    assert.equal(inside.ok, true, `the pod's own IPv6 connection: ${inside.code}`);
  });

  test('a SYN from the pod\'s own address arriving on its interface (what weft_lookup lets by as made inside the namespace) is dropped at the interface and counted martian, even where the pod\'s namespace inherited accept_local=1', async () => {
    // accept_local=1 lets the stack take a packet whose source is one of its own addresses
    // (a new namespace copies it from the node's, as route_localnet above).
    pb.ns.exec('sysctl', '-qw', 'net.ipv4.conf.all.accept_local=1', `net.ipv4.conf.${pb.ifname}.accept_local=1`);
    try {
      dp.enroll({ netnsPath: pb.ns.path, podIp: pb.ip, mode: 'PERMISSIVE', agentIp: pb.gateway, ifname: pb.ifname });
      const before = dp.counters();
      const mark = refusals.length;
      synToPodB({ src: pb.ip, dst: pb.ip });
      const after = dp.counters();
      assert.equal(delta(before, after, 'martian'), 1, 'counted');
      assert.equal(delta(before, after, 'permissive_plaintext'), 0, 'never judged as plaintext: dropped first');
      const rec = await refusal((x) => x.reason === 'martian' && x.src.ip === pb.ip, mark);
      assert.equal(rec.netnsCookie, netnsCookie(pb.ns.path), 'the pod is named');
    } finally {
      pb.ns.exec('sysctl', '-qw', 'net.ipv4.conf.all.accept_local=0', `net.ipv4.conf.${pb.ifname}.accept_local=0`);
    }
  });

  test('a SYN from a second address of the pod to itself (an address Weft does not know, accept_local=1) is dropped at the interface and counted martian: weft_lookup lets src = dst by for any local address', async () => {
    // `ip addr add` in the pod (or a CNI giving it two addresses): only the first is in
    // weft_inbound_pods, yet weft_lookup passes src == dst whatever the address.
    const second = '10.77.2.99';
    pb.ns.exec('ip', 'addr', 'add', `${second}/32`, 'dev', pb.ifname);
    pb.ns.exec('sysctl', '-qw', 'net.ipv4.conf.all.accept_local=1', `net.ipv4.conf.${pb.ifname}.accept_local=1`);
    try {
      dp.enroll({ netnsPath: pb.ns.path, podIp: pb.ip, mode: 'STRICT', agentIp: pb.gateway, ifname: pb.ifname });
      const before = dp.counters();
      const mark = refusals.length;
      synToPodB({ src: second, dst: second });
      const after = dp.counters();
      assert.equal(delta(before, after, 'martian'), 1, 'src = dst = a second address: dropped at the interface');
      const rec = await refusal((x) => x.reason === 'martian' && x.src.ip === second, mark);
      assert.equal(rec.dst.ip, second);
      assert.equal(rec.netnsCookie, 0n, 'no pod is known by that address');
    } finally {
      pb.ns.exec('sysctl', '-qw', 'net.ipv4.conf.all.accept_local=0', `net.ipv4.conf.${pb.ifname}.accept_local=0`);
      pb.ns.exec('ip', 'addr', 'del', `${second}/32`, 'dev', pb.ifname);
    }
  });

  test('a node process\'s IPv6 socket dialling the pod\'s IPv4-mapped address (::ffff:a.b.c.d, RFC 4291 2.5.5.2) is IPv4 on the wire and judged as such: PERMISSIVE steered to the agent, STRICT refused', async () => {
    const mapped = `::ffff:${pb.ip}`;
    const daemon = { ns: node, cgroup: daemonCg };
    dp.enroll({ netnsPath: pb.ns.path, podIp: pb.ip, mode: 'PERMISSIVE', agentIp: pb.gateway, ifname: pb.ifname });
    let before = dp.counters();
    const steered = await connectFrom(lab, daemon, mapped, APP_PORT);
    assert.equal(steered.ok, true, `PERMISSIVE: ${steered.code}`);
    assert.equal(JSON.parse(steered.reply!).server, 'agent-in-pod', 'the agent got it, not the application');
    assert.equal(delta(before, dp.counters(), 'lookup_steered'), 1);
    dp.enroll({ netnsPath: pb.ns.path, podIp: pb.ip, mode: 'STRICT', agentIp: pb.gateway, ifname: pb.ifname });
    before = dp.counters();
    const mark = refusals.length;
    assert.equal((await connectFrom(lab, daemon, mapped, APP_PORT)).code, 'ECONNREFUSED');
    assert.equal(delta(before, dp.counters(), 'strict_denied'), 1);
    await refusal((x) => x.reason === 'strict_denied' && x.src.ip === pb.gateway && x.dst.ip === pb.ip, mark);
  });

  test('an IPv6 SYN from the pod\'s own address behind a Destination Options header (RFC 8200 4.6), left by weft_inbound to weft_lookup, which lets src = dst by as made inside the namespace (IPv6 has no martian-source check), is dropped at the interface and counted martian', async () => {
    dp.enroll({ netnsPath: pb.ns.path, podIp: pb.ip, mode: 'STRICT', agentIp: pb.gateway, ifname: pb.ifname });
    // A PadN option of 4 bytes: an 8-byte header, then TCP.
    const frame = { dst: POD_B6, port: APP_PORT6, ipOptions: Buffer.from([1, 4, 0, 0, 0, 0]) };
    // From another address the same SYN meets weft_lookup, which refuses IPv6.
    let before = dp.counters();
    synToPodB({ ...frame, src: 'fd00:77:2::1' });
    assert.equal(delta(before, dp.counters(), 'lookup_ipv6_refused'), 1, 'behind the header, the SYN reaches weft_lookup');
    before = dp.counters();
    const mark = refusals.length;
    synToPodB({ ...frame, src: POD_B6 });
    assert.equal(delta(before, dp.counters(), 'martian'), 1, 'src = dst: dropped at the interface');
    await refusal((x) => x.reason === 'martian', mark);
    // With TCP right after the IPv6 header, the record names its ports (it holds IPv4 addresses only).
    const mark2 = refusals.length;
    synToPodB({ dst: POD_B6, src: POD_B6, port: APP_PORT6 });
    const rec = await refusal((x) => x.reason === 'martian', mark2);
    assert.equal(rec.dst.port, APP_PORT6, 'the IPv6 martian names its port');
  });

  test('a port excluded from outbound capture stays closed inbound; an inbound exclusion is explicit and listed', async () => {
    dp.enroll({ netnsPath: pb.ns.path, podIp: pb.ip, mode: 'STRICT', agentIp: pb.gateway, ifname: pb.ifname });
    dp.setExcludedPorts([APP_PORT]);
    try {
      const r = await connectFrom(lab, pc, pb.ip, APP_PORT);
      assert.equal(r.code, 'ECONNREFUSED', 'an outbound exclusion opens nothing inbound');
      assert.deepEqual(dp.inboundExcludedPorts(), []);
      dp.setInboundExcludedPorts([APP_PORT]);
      const before = dp.counters();
      const open = await connectFrom(lab, pc, pb.ip, APP_PORT);
      assert.equal(open.ok, true, `inbound exclusion: ${open.code}`);
      assert.equal(JSON.parse(open.reply!).server, 'pb');
      assert.deepEqual(dp.inboundExcludedPorts(), [APP_PORT]);
      const after = dp.counters();
      assert.equal(delta(before, after, 'inbound_excluded'), 1);
      assert.equal(delta(before, after, 'lookup_excluded'), 1);
    } finally {
      dp.setExcludedPorts([]);
      dp.setInboundExcludedPorts([]);
    }
  });

  test('portLevelMtls in the kernel: a PERMISSIVE port of a STRICT pod is steered to the agent, a STRICT port of a PERMISSIVE pod is refused, and a change of modes never passes through a looser one', async () => {
    dp.enroll({ netnsPath: pb.ns.path, podIp: pb.ip, mode: 'STRICT', portModes: { [APP_PORT6]: 'PERMISSIVE' }, agentIp: pb.gateway, ifname: pb.ifname });
    assert.deepEqual(dp.pods().find((p) => p.podIp === pb.ip)!.portModes, { [APP_PORT6]: 'PERMISSIVE' });
    assert.equal((await connectFrom(lab, pc, pb.ip, APP_PORT)).code, 'ECONNREFUSED', 'the pod is STRICT');
    const permissive = await connectFrom(lab, pc, pb.ip, APP_PORT6);
    assert.equal(JSON.parse(permissive.reply!).server, 'agent-in-pod', 'its PERMISSIVE port goes to the agent');

    dp.enroll({ netnsPath: pb.ns.path, podIp: pb.ip, mode: 'PERMISSIVE', portModes: { [APP_PORT]: 'STRICT' }, agentIp: pb.gateway, ifname: pb.ifname });
    const before = dp.counters();
    assert.equal((await connectFrom(lab, pc, pb.ip, APP_PORT)).code, 'ECONNREFUSED', 'the STRICT port refuses');
    assert.equal(delta(before, dp.counters(), 'strict_denied'), 1);
    assert.equal(JSON.parse((await connectFrom(lab, pc, pb.ip, APP_PORT6)).reply!).server, 'agent-in-pod');
    // The STRICT port's pod turning STRICT as a whole: at no step between the map writes is that
    // port judged PERMISSIVE by the programs (the pod entry's mode and flags, then the port's entry).
    const judged: string[] = [];
    const inner = (dp as unknown as { map(name: string): BpfMap }).map.bind(dp);
    const judge = () => {
      const pod = inner('weft_inbound_pods').lookup(codec.ipKey(pb.ip));
      if (!pod) { judged.push('none'); return; }
      const { mode, flags } = codec.decodePodIn(pod);
      const port = (flags & codec.POD_F.PORT_MODES) !== 0 ? inner('weft_port_modes').lookup(codec.encodePodPort(pb.ip, APP_PORT)) : undefined;
      judged.push(port ? codec.decodePortMode(port) : mode);
    };
    (dp as unknown as { map(name: string): unknown }).map = (name: string) => {
      const m = inner(name);
      if (name !== 'weft_inbound_pods' && name !== 'weft_port_modes') return m;
      return { ...m, lookup: m.lookup.bind(m), keys: m.keys.bind(m), entries: m.entries.bind(m),
        update: (...a: Parameters<BpfMap['update']>) => { m.update(...a); judge(); },
        delete: (...a: Parameters<BpfMap['delete']>) => { const r = m.delete(...a); judge(); return r; } };
    };
    try {
      dp.enroll({ netnsPath: pb.ns.path, podIp: pb.ip, mode: 'STRICT', agentIp: pb.gateway, ifname: pb.ifname });
    } finally {
      delete (dp as unknown as { map?: unknown }).map;
    }
    assert.ok(judged.length > 0 && judged.every((m) => m === 'STRICT'), `port ${APP_PORT} judged ${judged.join(' → ')} while its pod turned STRICT`);
    assert.equal((await connectFrom(lab, pc, pb.ip, APP_PORT)).code, 'ECONNREFUSED');
    dp.enroll({ netnsPath: pb.ns.path, podIp: pb.ip, mode: 'PERMISSIVE', portModes: { [APP_PORT]: 'STRICT' }, agentIp: pb.gateway, ifname: pb.ifname });
    // Re-enrolling without port modes removes them.
    dp.enroll({ netnsPath: pb.ns.path, podIp: pb.ip, mode: 'PERMISSIVE', agentIp: pb.gateway, ifname: pb.ifname });
    assert.deepEqual(dp.pods().find((p) => p.podIp === pb.ip)!.portModes, {});
    assert.deepEqual(bpftoolJson<unknown[]>('map', 'dump', 'pinned', dp.mapPin('weft_port_modes')), []);
  });
});
