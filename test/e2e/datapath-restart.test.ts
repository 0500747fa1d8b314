// The datapath outlives the agent: an agent-like process (Datapath.open + enroll) is killed, and
// while it is gone enrolled pods' connections are still captured and a STRICT pod still refuses
// plaintext; the restarted agent adopts the pinned links (atomic program update) and nothing ends
// up attached twice.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Lab } from '../lab/lab.ts';
import { netnsCookie } from '../../agent/libbpf/index.ts';
import { bpftoolJson, buildNode, connectFrom, NODE_BIN, startServer, stopAll, type LabPod } from '../bpf/datapath-lab.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const OBJECT_DIR = join(ROOT, 'build', 'bpf');
const VIP = '10.96.0.20';
const APP_PORT = 8080;

// The agent: opens the datapath, enrols the pods, publishes the mesh destinations, reports what it
// holds and then idles like a real agent would.
const AGENT_JS = `
const { Datapath } = await import(${JSON.stringify(pathToFileURL(join(ROOT, 'agent/src/datapath/index.ts')).href)});
const cfg = JSON.parse(process.argv[1]);
const dp = Datapath.open({ pinRoot: cfg.pinRoot, cgroupPath: cfg.cgroupPath, objectDir: cfg.objectDir });
for (const pod of cfg.pods) dp.enroll(pod);
dp.setDestinations(cfg.destinations);
process.stdout.write(JSON.stringify({ links: dp.cgroupLinks(), programs: dp.programs() }) + '\\n');
setInterval(() => {}, 1 << 30);
`;

// The capture listener, a process of its own (it keeps running while the agent is down), listening
// in the node netns: answers with the original destination it finds in the pinned
// weft_orig_by_tuple map.
const LISTENER_JS = `
const { BpfMap, createSocketInNetns } = await import(${JSON.stringify(pathToFileURL(join(ROOT, 'agent/libbpf/index.ts')).href)});
const c = await import(${JSON.stringify(pathToFileURL(join(ROOT, 'agent/src/datapath/codecs.ts')).href)});
const net = await import('node:net');
const [pin, port, netns] = process.argv.slice(1);
const orig = BpfMap.openPinned(pin);
net.createServer((s) => {
  const key = c.encodeTuple4({ ip: s.remoteAddress, port: s.remotePort }, { ip: s.localAddress, port: s.localPort });
  const v = orig.lookup(key);
  if (v) orig.delete(key);
  const o = v && c.decodeOrig(v);
  s.end(JSON.stringify({ server: 'listener', orig: o && { ip: o.ip, port: o.port } }));
}).listen({ fd: createSocketInNetns(netns, { listen: { host: '0.0.0.0', port: Number(port) } }) }, () => process.stdout.write('ready\\n'));
`;

interface AgentReport {
  links: { program: string; id: number; progId: number }[];
  programs: { name: string; id: number }[];
}

describe('datapath across an agent restart', () => {
  let lab: Lab;
  let node: LabPod['ns'];
  let pa: LabPod;
  let pb: LabPod;
  let pc: LabPod;
  const procs: ChildProcess[] = [];

  before(async () => {
    lab = new Lab();
    const built = buildNode(lab, ['pa', 'pb', 'pc']);
    node = built.node;
    pa = built.pods.pa!;
    pb = built.pods.pb!;
    pc = built.pods.pc!;
    procs.push(await startServer(lab, pb, 'pb', [`0.0.0.0:${APP_PORT}`]));
  });

  after(async () => {
    await stopAll(procs);
    await lab?.cleanup();
  });

  async function startAgent(): Promise<{ proc: ChildProcess; report: AgentReport }> {
    const cfg = {
      pinRoot: lab.pinRoot,
      cgroupPath: lab.cgroupDir,
      objectDir: OBJECT_DIR,
      pods: [
        { netnsPath: pa.ns.path, podIp: pa.ip, mode: 'PERMISSIVE', agentIp: pa.gateway, ifname: pa.ifname },
        { netnsPath: pb.ns.path, podIp: pb.ip, mode: 'STRICT', agentIp: pb.gateway, ifname: pb.ifname },
      ],
      destinations: [{ ip: VIP, port: 80 }],
    };
    // Not through `ip netns exec`: it remounts /sys, hiding bpffs and the cgroup tree. The agent
    // enters pod namespaces itself where it must (tcx attach).
    const proc = lab.spawn(NODE_BIN, ['--input-type=module', '-e', AGENT_JS, JSON.stringify(cfg)]);
    procs.push(proc);
    let out = '';
    let err = '';
    proc.stderr!.on('data', (d) => { err += d; });
    const line = await new Promise<string>((res, rej) => {
      proc.stdout!.on('data', (d) => {
        out += d;
        if (out.includes('\n')) res(out.split('\n')[0]!);
      });
      proc.once('exit', (code) => rej(new Error(`agent exited (${code}): ${err}`)));
    });
    return { proc, report: JSON.parse(line) as AgentReport };
  }

  /** Starts the capture listener; it opens the pinned map, so it starts after the first agent. */
  async function startListener(): Promise<void> {
    const proc = lab.spawn(NODE_BIN, ['--input-type=module', '-e', LISTENER_JS, join(lab.pinRoot, 'weft_orig_by_tuple'), '15001', node.path]);
    procs.push(proc);
    let out = '';
    let err = '';
    proc.stderr!.on('data', (d) => { err += d; });
    await new Promise<void>((res, rej) => {
      proc.stdout!.on('data', (d) => { out += d; if (out.includes('ready')) res(); });
      proc.once('exit', (code) => rej(new Error(`listener exited (${code}): ${err}`)));
    });
  }

  /** Redirection (with the original destination) and STRICT enforcement, as applications see them. */
  async function assertDatapathWorks(when: string): Promise<void> {
    const r = await connectFrom(lab, pa, VIP, 80);
    assert.equal(r.ok, true, `${when}: client failed: ${r.code}`);
    assert.deepEqual(JSON.parse(r.reply!), { server: 'listener', orig: { ip: VIP, port: 80 } }, `${when}: captured`);
    assert.equal(r.remoteAddress, VIP, `${when}: getpeername shows the dialled address`);
    const denied = await connectFrom(lab, pc, pb.ip, APP_PORT);
    assert.equal(denied.code, 'ECONNREFUSED', `${when}: STRICT pod refuses plaintext`);
    const fromNode = await connectFrom(lab, { ns: node }, pb.ip, APP_PORT);
    assert.equal(fromNode.code, 'ECONNREFUSED', `${when}: STRICT pod refuses a node process too (no address is trusted)`);
  }

  /** Ids of the links (bpftool link show) whose program is `progId`. */
  function linksOf(progId: number): number[] {
    return bpftoolJson<Array<{ id: number; prog_id: number }>>('link', 'show').filter((l) => l.prog_id === progId).map((l) => l.id);
  }

  function attachedToCgroup(): { id: number; name: string }[] {
    return bpftoolJson<Array<{ id: number; name: string }>>('cgroup', 'show', lab.cgroupDir);
  }

  test('keeps redirecting and enforcing while the agent is down, and the restarted agent attaches nothing twice', async () => {
    const first = await startAgent();
    await startListener();
    await assertDatapathWorks('agent running');
    const inbound1 = first.report.programs.find((p) => p.name === 'weft_inbound')!.id;
    assert.equal(linksOf(inbound1).length, 2, 'one tcx link per enrolled pod');

    const exited = once(first.proc, 'exit');
    first.proc.kill('SIGKILL');
    await exited;
    await assertDatapathWorks('agent killed');

    const second = await startAgent();
    await assertDatapathWorks('agent restarted');

    // Same links (adopted from the pins), now running the new agent's programs.
    const byProgram = (r: AgentReport) => Object.fromEntries(r.links.map((l) => [l.program, l.id]));
    assert.deepEqual(byProgram(second.report), byProgram(first.report), 'cgroup links adopted, not re-created');
    const progs2 = new Map(second.report.programs.map((p) => [p.name, p.id]));
    for (const l of second.report.links) assert.equal(l.progId, progs2.get(l.program), `${l.program} link runs the new program`);

    const cg = attachedToCgroup();
    assert.deepEqual(cg.map((a) => a.name).sort(), ['weft_connect4', 'weft_connect6', 'weft_getpeer4', 'weft_getpeer6', 'weft_sockops'],
      'exactly one attachment per cgroup program');
    for (const a of cg) assert.equal(a.id, progs2.get(a.name), `${a.name} attachment runs the new program`);

    const inbound2 = progs2.get('weft_inbound')!;
    assert.notEqual(inbound2, inbound1);
    assert.equal(linksOf(inbound2).length, 2, 'both pods\' tcx links moved to the new program');
    assert.equal(linksOf(inbound1).length, 0, 'no tcx link still runs the old program');
    const lookup1 = first.report.programs.find((p) => p.name === 'weft_lookup')!.id;
    assert.equal(linksOf(progs2.get('weft_lookup')!).length, 2, 'both pods\' sk_lookup links moved to the new program');
    assert.equal(linksOf(lookup1).length, 0);
    for (const pod of [pa, pb]) {
      const pin = join(lab.pinRoot, 'links', 'pods', netnsCookie(pod.ns.path).toString());
      assert.equal(bpftoolJson<{ prog_id: number }>('link', 'show', 'pinned', pin).prog_id, inbound2);
    }
  });
});
