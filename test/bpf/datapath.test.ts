// The eBPF L4 datapath against a real kernel: one node netns with pods joined by veths, each pod in
// its own cgroup under the lab folder the cgroup programs attach to. Applications are real
// processes inside the pods; the agent is stood in for by a listener in the node netns that asks
// the datapath for each connection's original destination.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { existsSync } from 'node:fs';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Lab } from '../lab/lab.ts';
import { BpfMap, btfStruct, createSocketInNetns, layoutDiff, netnsCookie } from '../../agent/libbpf/index.ts';
import { STRUCTS } from '../../agent/src/datapath/codecs.ts';
import { COUNTER_FIELDS, Datapath, MAX_DESTS, type OriginalDestination } from '../../agent/src/datapath/index.ts';
import type { ChildProcess } from 'node:child_process';
import { addRemoteNode, bpftoolJson, buildNode, connectFrom, mapSnapshot, rawSyn, startServer, stopAll, type LabPod } from './datapath-lab.ts';

const OBJECT_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'build', 'bpf');
const VIP = '10.96.0.10';
const AGENT_PORT = 15001;
const APP_PORT = 8080;
const APP_PORT6 = 8081;

interface Accepted {
  remote: string;
  remotePort: number;
  orig: OriginalDestination | undefined;
}

describe('eBPF L4 datapath', () => {
  let lab: Lab;
  let dp: Datapath;
  let agent: Server;
  let pa: LabPod; // enrolled client pod
  let pb: LabPod; // server pod (enrolled STRICT/PERMISSIVE in the enforcement tests)
  let pc: LabPod; // never enrolled
  let pd: LabPod; // on a second node, never enrolled
  let node: LabPod['ns'];
  const accepted: Accepted[] = [];
  const servers: ChildProcess[] = [];

  before(async () => {
    assert.ok(existsSync(join(OBJECT_DIR, 'redirect.bpf.o')), 'run `make bpf` first');
    lab = new Lab();
    const built = buildNode(lab, ['pa', 'pb', 'pc']);
    node = built.node;
    pa = built.pods.pa!;
    pb = built.pods.pb!;
    pc = built.pods.pc!;
    pd = addRemoteNode(lab, node, 'pd').pod;
    dp = Datapath.open({ pinRoot: lab.pinRoot, cgroupPath: lab.cgroupDir, objectDir: OBJECT_DIR });

    // The agent stand-in: listens in the node netns on every address, like the real agent.
    const fd = createSocketInNetns(node.path, { listen: { host: '0.0.0.0', port: AGENT_PORT } });
    agent = createServer((s: Socket) => {
      const orig = dp.originalDestination(s);
      accepted.push({ remote: s.remoteAddress!, remotePort: s.remotePort!, orig });
      s.end(JSON.stringify({ server: 'agent', orig: orig && { ip: orig.ip, port: orig.port } }));
    });
    await new Promise<void>((r) => agent.listen({ fd }, r));

    // The real application in pod B, on IPv4 and on a dual-stack IPv6 socket.
    servers.push(await startServer(lab, pb, 'pb', [`0.0.0.0:${APP_PORT}`, `:::${APP_PORT6}`]));
  });

  after(async () => {
    agent?.close();
    await stopAll(servers);
    try { dp?.teardown(); } catch { /* the lab removes the pins anyway */ }
    await lab?.cleanup();
  });

  /** Links running this datapath's inbound program (other test runs may create links meanwhile). */
  function inboundLinks(): number[] {
    const prog = dp.programs().find((p) => p.name === 'weft_inbound')!.id;
    return bpftoolJson<Array<{ id: number; prog_id: number }>>('link', 'show').filter((l) => l.prog_id === prog).map((l) => l.id);
  }

  test('loads every program named weft_* and attaches each cgroup program exactly once, even when opened twice', () => {
    const second = Datapath.open({ pinRoot: lab.pinRoot, cgroupPath: lab.cgroupDir, objectDir: OBJECT_DIR });
    try {
      assert.deepEqual(second.cgroupLinks().map((l) => l.id).sort(), dp.cgroupLinks().map((l) => l.id).sort(),
        'the second open adopted the pinned links instead of creating new ones');
      const attached = bpftoolJson<Array<{ name: string; attach_type: string }>>('cgroup', 'show', lab.cgroupDir);
      const names = attached.map((a) => a.name).sort();
      assert.deepEqual(names, ['weft_connect4', 'weft_connect6', 'weft_getpeer4', 'weft_getpeer6', 'weft_sockops']);
    } finally {
      second.close();
    }
  });

  test('every struct codec of the agent matches the layout clang emitted in each object\'s BTF', () => {
    // Offsets are compared by member name, so the counters' order (COUNTER_FIELDS, whose indices
    // name a refusal's reason) is the struct's.
    for (const object of ['redirect', 'inbound', 'splice']) {
      const path = join(OBJECT_DIR, `${object}.bpf.o`);
      for (const codec of STRUCTS) {
        assert.deepEqual(layoutDiff(codec, btfStruct(path, codec.name.replace(/^struct /, ''))), [], `${object}.bpf.o`);
      }
    }
  });

  test('redirects an enrolled pod\'s connection to a mesh address to the agent, which reads the original destination; the client still sees the dialled address', async () => {
    dp.enroll({ netnsPath: pa.ns.path, podIp: pa.ip, mode: 'PERMISSIVE', agentIp: pa.gateway, agentPort: AGENT_PORT, ifname: pa.ifname });
    dp.setDestinations([{ ip: VIP, port: 80 }]);
    const before = dp.counters();
    accepted.length = 0;

    const r = await connectFrom(lab, pa, VIP, 80);
    assert.equal(r.ok, true, `client failed: ${r.code}`);
    assert.equal(JSON.parse(r.reply!).server, 'agent', 'the connection landed on the agent');
    assert.equal(r.remoteAddress, VIP, 'getpeername shows the dialled address');
    assert.equal(r.remotePort, 80);
    assert.equal(accepted.length, 1);
    assert.equal(accepted[0]!.remote, pa.ip);
    assert.deepEqual(accepted[0]!.orig, { ip: VIP, port: 80, clientNetnsCookie: netnsCookie(pa.ns.path) });
    // Read-then-delete: the entry is gone once the agent has it.
    assert.equal(dp.takeOriginal({ ip: pa.ip, port: r.localPort! }, { ip: pa.gateway, port: AGENT_PORT }), undefined);

    const after = dp.counters();
    assert.equal(after.connect4_redirected - before.connect4_redirected, 1);
    assert.equal(after.sockops_rekeyed - before.sockops_rekeyed, 1);
    assert.ok(after.getpeername_rewritten > before.getpeername_rewritten);
    assert.ok(dp.podCounters().get(netnsCookie(pa.ns.path))!.connect_redirected >= 1);
  });

  test('redirects a v4-mapped IPv6 connect() the same way and reports the v4-mapped dialled address', async () => {
    accepted.length = 0;
    const r = await connectFrom(lab, pa, `::ffff:${VIP}`, 80);
    assert.equal(r.ok, true, `client failed: ${r.code}`);
    assert.equal(JSON.parse(r.reply!).server, 'agent');
    assert.equal(r.remoteAddress, `::ffff:${VIP}`);
    assert.equal(r.remotePort, 80);
    assert.deepEqual(accepted[0]!.orig, { ip: VIP, port: 80, clientNetnsCookie: netnsCookie(pa.ns.path) });
  });

  test('a destination given as an address with port 0 captures every port of it', async () => {
    dp.setDestinations([{ ip: VIP, port: 80 }, { ip: '10.96.0.11' }]);
    const r = await connectFrom(lab, pa, '10.96.0.11', 5432);
    assert.equal(r.ok, true, `client failed: ${r.code}`);
    assert.deepEqual(JSON.parse(r.reply!).orig, { ip: '10.96.0.11', port: 5432 });
  });

  test('leaves a pod that is not enrolled, a destination outside the mesh and an excluded port untouched', async () => {
    dp.setDestinations([{ ip: VIP, port: 80 }, { ip: pb.ip, port: APP_PORT }]);
    accepted.length = 0;
    // pod C is not enrolled: its connection to a mesh destination reaches the real server.
    const fromC = await connectFrom(lab, pc, pb.ip, APP_PORT);
    assert.equal(fromC.ok, true, `client failed: ${fromC.code}`);
    assert.equal(JSON.parse(fromC.reply!).server, 'pb');
    assert.equal(JSON.parse(fromC.reply!).remoteAddress, pc.ip);

    // pod A is enrolled, but pod B's dual-stack port is not a mesh destination.
    const outside = await connectFrom(lab, pa, pb.ip, APP_PORT6);
    assert.equal(outside.ok, true, `client failed: ${outside.code}`);
    assert.equal(JSON.parse(outside.reply!).server, 'pb');

    // A mesh destination on an excluded port is not captured either.
    dp.setExcludedPorts([APP_PORT]);
    try {
      const excluded = await connectFrom(lab, pa, pb.ip, APP_PORT);
      assert.equal(excluded.ok, true, `client failed: ${excluded.code}`);
      assert.equal(JSON.parse(excluded.reply!).server, 'pb');
    } finally {
      dp.setExcludedPorts([]);
    }
    assert.deepEqual(dp.excludedPorts(), [15001, 15008, 15009, 15020, 15021]);
    assert.equal(accepted.length, 0, 'nothing reached the agent');

    // And once the excluded port is released, the same connection is captured.
    const captured = await connectFrom(lab, pa, pb.ip, APP_PORT);
    assert.equal(JSON.parse(captured.reply!).server, 'agent');
  });

  test('setDestinations reconciles to exactly the given list', () => {
    dp.setDestinations([{ ip: '10.96.0.1', port: 443 }, { ip: '10.96.0.2' }, { ip: '10.96.0.1', port: 443 }]);
    assert.deepEqual(dp.destinations().sort((a, b) => a.ip.localeCompare(b.ip)), [{ ip: '10.96.0.1', port: 443 }, { ip: '10.96.0.2', port: 0 }]);
    assert.deepEqual(dp.setDestinations([{ ip: '10.96.0.2' }, { ip: 'fd00::1', port: 80 }]), { applied: 1, skipped: [{ ip: 'fd00::1', port: 80 }], overflow: 0 },
      'IPv6 destinations are reported as skipped (not meshed yet), not an error');
    assert.deepEqual(dp.destinations(), [{ ip: '10.96.0.2', port: 0 }]);
    assert.throws(() => dp.setDestinations([{ ip: '10.96.0.3' }, { ip: 'nope' }]), { code: 'WEFT_BAD_ADDRESS' });
    assert.deepEqual(dp.destinations(), [{ ip: '10.96.0.2', port: 0 }], 'a bad list changes nothing');
  });

  // A remote cluster's Services are VIPs and ports in every agent's weft_dests (WEFT_MAX_DESTS): a list
  // past the map's capacity failed the kernel's insert halfway, and with it the agent's whole config.
  test('setDestinations past the map\'s capacity keeps the list\'s head and reports the rest as overflow; a full map is replaced by another full list', () => {
    const list = (base: number, n: number) => Array.from({ length: n }, (_, i) => ({ ip: `10.${base + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`, port: 80 }));
    try {
      const first = list(100, MAX_DESTS + 1_000);
      assert.deepEqual(dp.setDestinations(first), { applied: MAX_DESTS, skipped: [], overflow: 1_000 });
      const held = new Set(dp.destinations().map((d) => d.ip));
      assert.equal(held.size, MAX_DESTS);
      assert.ok(held.has(first[0]!.ip) && held.has(first[MAX_DESTS - 1]!.ip) && !held.has(first[MAX_DESTS]!.ip), 'the head is kept, the tail left out');
      // Every entry replaced: what left makes room first.
      assert.deepEqual(dp.setDestinations(list(110, MAX_DESTS)), { applied: MAX_DESTS, skipped: [], overflow: 0 });
      assert.ok(dp.destinations().every((d) => d.ip.startsWith('10.11')));
    } finally {
      dp.setDestinations([]);
    }
  });

  // Every config sets the whole list: each key already there was written again (65,536 bpf()
  // updates a config at capacity, though the value is always the same), and a list of millions
  // (5,000 imported Services of 8 VIPs x 100 ports) was checked and encoded entry by entry past
  // the capacity it would never be given.
  test('setDestinations writes only the keys missing from weft_dests, and does not read the list past the map\'s capacity', (t) => {
    const list = (base: number, n: number) => Array.from({ length: n }, (_, i) => ({ ip: `10.${base + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`, port: 80 }));
    let updates = 0;
    const update = BpfMap.prototype.update;
    t.mock.method(BpfMap.prototype, 'update', function (this: BpfMap, ...args: Parameters<BpfMap['update']>) {
      updates++;
      return update.apply(this, args);
    });
    try {
      const full = list(100, MAX_DESTS);
      dp.setDestinations(full);
      updates = 0;
      // The same list with one destination changed: one update.
      const changed = [...full.slice(0, -1), { ip: '10.99.0.1', port: 80 }];
      assert.deepEqual(dp.setDestinations(changed), { applied: MAX_DESTS, skipped: [], overflow: 0 });
      assert.equal(updates, 1, 'only the new key is written');
      assert.ok(dp.destinations().some((d) => d.ip === '10.99.0.1'));
      // A tail past the capacity is counted, not read.
      let reads = 0;
      const tail = Array.from({ length: 100_000 }, (_, i) => Object.defineProperty({ port: 80 }, 'ip', { get: () => (reads++, `10.120.${(i >> 8) & 255}.${i & 255}`), enumerable: true }) as { ip: string; port: number });
      updates = 0;
      assert.deepEqual(dp.setDestinations([...changed, ...tail]), { applied: MAX_DESTS, skipped: [], overflow: 100_000 });
      assert.equal(reads, 0, 'the tail past the capacity is not read');
      assert.equal(updates, 0, 'nothing changed, nothing written');
    } finally {
      dp.setDestinations([]);
    }
  });

  test('denies plaintext to a STRICT pod from other pods (same and other node) and from its own node with a RST, and counts it', async () => {
    dp.setDestinations([]);
    const cookie = netnsCookie(pb.ns.path);
    dp.enroll({ netnsPath: pb.ns.path, podIp: pb.ip, mode: 'STRICT', agentIp: pb.gateway, ifname: pb.ifname });
    const before = dp.counters();

    const denied = await connectFrom(lab, pc, pb.ip, APP_PORT);
    assert.equal(denied.ok, false);
    assert.equal(denied.code, 'ECONNREFUSED', 'the client is refused at once (RST), not left to time out');
    const deniedA = await connectFrom(lab, pa, pb.ip, APP_PORT);
    assert.equal(deniedA.code, 'ECONNREFUSED', 'an enrolled pod dialling directly is refused too');
    const deniedRemote = await connectFrom(lab, pd, pb.ip, APP_PORT);
    assert.equal(deniedRemote.code, 'ECONNREFUSED', 'a pod on another node is refused, the RST routed back across nodes');

    // The node's own address is no pass: every process on the node can use it.
    const fromNode = await connectFrom(lab, { ns: node }, pb.ip, APP_PORT);
    assert.equal(fromNode.code, 'ECONNREFUSED', 'a node process is refused like any other client');

    const after = dp.counters();
    assert.equal(after.strict_denied - before.strict_denied, 4);
    assert.equal(after.strict_rst_sent - before.strict_rst_sent, 4);
    assert.equal(dp.podCounters().get(cookie)!.strict_denied, 4);
  });

  test('the RST for a SYN with options and a complete checksum is well formed: RST|ACK, ack = seq + 1, no options, both checksums valid', () => {
    // pod B is STRICT since the previous test; a raw SYN bypasses checksum offload.
    const answer = rawSyn(pc, pc.ip, pb.ip, APP_PORT);
    assert.equal(answer.timeout, undefined, 'an answer came back');
    assert.equal(answer.flags, 0x14, 'RST|ACK');
    assert.equal(answer.doff, 5, 'options trimmed');
    assert.equal(answer.len, 40, 'IP + bare TCP header');
    assert.equal(answer.seq, 0);
    assert.equal(answer.ack, answer.sentSeq + 1);
    assert.equal(answer.ipChecksumOk, true, 'IP header checksum');
    assert.equal(answer.tcpChecksumOk, true, 'TCP checksum');
  });

  test('a server in an enrolled pod sees the registered client address on accept (IPv4 and dual-stack sockets)', async () => {
    // As the agent delivers: from inside the pod's netns, to the pod's own address.
    const client = { ip: '10.200.0.7', port: 43210 };
    for (const [port, srcPort] of [[APP_PORT, 41001], [APP_PORT6, 41002]] as const) {
      const reg = { local: { ip: pb.ip, port }, remote: { ip: pb.ip, port: srcPort }, client };
      dp.registerPeer(reg);
      const r = await connectFrom(lab, { ns: pb.ns }, pb.ip, port, { host: pb.ip, port: srcPort });
      assert.equal(r.ok, true, `client failed: ${r.code}`);
      const seen = JSON.parse(r.reply!);
      assert.equal(seen.remoteAddress.replace(/^::ffff:/, ''), client.ip, `server on ${port} sees the real client`);
      assert.equal(seen.remotePort, client.port);
      assert.equal(dp.unregisterPeer(reg), true);
    }
    // Without a registration the server sees the agent.
    const plain = await connectFrom(lab, { ns: pb.ns }, pb.ip, APP_PORT, { host: pb.ip, port: 41003 });
    assert.equal(JSON.parse(plain.reply!).remoteAddress, pb.ip);
    assert.ok(dp.counters().getpeername_peer_override >= 2);
  });

  test('refuses to enrol a missing netns or a malformed address, naming it, and changes no map', () => {
    const pins = ['weft_pods', 'weft_inbound_pods', 'weft_port_modes', 'weft_pod_counters'].map((m) => dp.mapPin(m));
    const snapshot = () => pins.map(mapSnapshot).join('\n');
    const links = () => inboundLinks().length;
    const before = snapshot();
    const linksBefore = links();
    const good = { netnsPath: pc.ns.path, podIp: pc.ip, mode: 'STRICT' as const, agentIp: pc.gateway, ifname: pc.ifname };

    const missing = `/var/run/netns/${lab.id}-nosuchpod`;
    assert.throws(() => dp.enroll({ ...good, netnsPath: missing }),
      (e: Error & { code?: string }) => e.code === 'WEFT_NETNS_NOT_FOUND' && e.message.includes(missing));
    assert.throws(() => dp.enroll({ ...good, podIp: '10.77.3.300' }),
      (e: Error & { code?: string }) => e.code === 'WEFT_BAD_ADDRESS' && e.message.includes('10.77.3.300'));
    assert.throws(() => dp.enroll({ ...good, agentIp: 'gateway' }),
      (e: Error & { code?: string }) => e.code === 'WEFT_BAD_ADDRESS' && e.message.includes('gateway'));
    assert.throws(() => dp.enroll({ ...good, portModes: { 8080: 'LOOSE' as 'STRICT' } }),
      (e: Error & { code?: string }) => e.code === 'WEFT_BAD_MODE' && e.message.includes('portModes[8080]'));
    assert.throws(() => dp.enroll({ ...good, portModes: { 70000: 'STRICT' } }),
      (e: Error & { code?: string }) => e.code === 'WEFT_BAD_PORT' && e.message.includes('70000'));
    assert.throws(() => dp.enroll({ ...good, ifname: 'nosuchif0' }),
      (e: Error & { code?: string }) => e.code === 'WEFT_INTERFACE' && e.message.includes('nosuchif0'));
    assert.throws(() => dp.enroll({ ...good, mode: 'LOOSE' as 'STRICT' }), { code: 'WEFT_BAD_MODE' });

    assert.equal(snapshot(), before, 'no map changed');
    assert.equal(links(), linksBefore, 'no link was left behind');
    assert.equal(existsSync(join(lab.pinRoot, 'links', 'pods', netnsCookie(pc.ns.path).toString())), false);
    assert.equal(existsSync(join(lab.pinRoot, 'links', 'lookup', netnsCookie(pc.ns.path).toString())), false);
  });

  test('re-enrolling is idempotent and unenroll removes the pod\'s entries and its link', () => {
    const cookie = netnsCookie(pc.ns.path);
    const pin = join(lab.pinRoot, 'links', 'pods', cookie.toString());
    const opts = { netnsPath: pc.ns.path, podIp: pc.ip, mode: 'PERMISSIVE' as const, agentIp: pc.gateway, ifname: pc.ifname };
    dp.enroll(opts);
    const linkId = bpftoolJson<{ id: number }>('link', 'show', 'pinned', pin).id;
    const linkCount = inboundLinks().length;
    dp.enroll(opts);
    assert.equal(bpftoolJson<{ id: number }>('link', 'show', 'pinned', pin).id, linkId, 'the same tcx link was adopted');
    assert.equal(inboundLinks().length, linkCount, 'no second link');
    assert.equal(dp.pods().filter((p) => p.netnsCookie === cookie).length, 1);

    assert.equal(dp.unenroll(pc.ns.path), true);
    assert.equal(dp.pods().some((p) => p.netnsCookie === cookie), false);
    assert.equal(dp.podCounters().has(cookie), false);
    assert.equal(existsSync(pin), false);
    assert.equal(existsSync(join(lab.pinRoot, 'links', 'lookup', cookie.toString())), false, 'the sk_lookup link went too');
    assert.equal(inboundLinks().length, linkCount - 1);
    assert.equal(dp.unenroll(pc.ns.path), false, 'unenrolling twice is a no-op');

    // A restarted agent's reconcile drops pods it no longer has, and keeps the others.
    dp.enroll(opts);
    const kept = dp.pods().map((p) => p.netnsCookie).filter((c) => c !== cookie);
    assert.deepEqual(dp.prune(kept), [cookie]);
    assert.equal(existsSync(pin), false);
    assert.deepEqual(dp.pods().map((p) => p.netnsCookie).sort(), kept.sort());
  });

  test('counters read through the module agree with bpftool map dump, which shows BTF field names', () => {
    type Dump = Array<{ formatted?: { values: Array<{ cpu: number; value: Record<string, number> }> } }>;
    const dump = bpftoolJson<Dump>('map', 'dump', 'pinned', dp.mapPin('weft_counters'));
    const perCpu = dump[0]!.formatted!.values;
    const mine = dp.counters();
    for (const field of COUNTER_FIELDS) {
      const sum = perCpu.reduce((acc, v) => acc + Number(v.value[field]), 0);
      assert.equal(sum, mine[field], `counter ${field}`);
    }
    assert.ok(mine.connect4_redirected > 0 && mine.strict_denied > 0);

    type PodDump = Array<{ formatted?: { key: number; value: Record<string, number> } }>;
    const pods = bpftoolJson<PodDump>('map', 'dump', 'pinned', dp.mapPin('weft_pod_counters'));
    const cookie = Number(netnsCookie(pb.ns.path));
    const entry = pods.find((p) => Number(p.formatted?.key) === cookie);
    assert.ok(entry, 'pod B has a counters entry');
    assert.equal(Number(entry.formatted!.value.strict_denied), dp.podCounters().get(BigInt(cookie))!.strict_denied);
  });
});
