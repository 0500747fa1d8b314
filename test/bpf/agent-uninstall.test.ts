// Uninstall (issue 17, defect 8): the datapath's pins outlive the agent on purpose (restarts are
// seamless), so deleting the agents alone leaves every enrolled pod's connect() to a mesh address
// redirected to port 15001, where nobody listens any more. `agent --uninstall` (what weftctl
// uninstall's cleanup DaemonSet runs on each node) detaches the programs and removes the pins, and
// the pod reaches its destination directly again.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Lab } from '../lab/lab.ts';
import { createSocketInNetns } from '../../agent/libbpf/index.ts';
import { Datapath } from '../../agent/src/datapath/index.ts';
import { buildNode, connectFrom, startServer, stopAll } from './datapath-lab.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const OBJECT_DIR = join(ROOT, 'build', 'bpf');
const AGENT_PORT = 15001;
const APP_PORT = 8080;

test('after the agent is gone an enrolled pod is still redirected to a port nobody listens on; agent --uninstall detaches and unpins everything and the pod reaches its server directly', async () => {
  const lab = new Lab();
  const servers: ChildProcess[] = [];
  let agent: Server | undefined;
  let dp: Datapath | undefined;
  try {
    const { node, pods } = buildNode(lab, ['pa', 'pb']);
    const pa = pods.pa!;
    const pb = pods.pb!;
    servers.push(await startServer(lab, pb, 'pb', [`0.0.0.0:${APP_PORT}`]));
    dp = Datapath.open({ pinRoot: lab.pinRoot, cgroupPath: lab.cgroupDir, objectDir: OBJECT_DIR });
    const fd = createSocketInNetns(node.path, { listen: { host: '0.0.0.0', port: AGENT_PORT } });
    agent = createServer((s) => s.end(JSON.stringify({ server: 'agent' })));
    await new Promise<void>((r) => agent!.listen({ fd }, r));
    dp.enroll({ netnsPath: pa.ns.path, podIp: pa.ip, mode: 'PERMISSIVE', agentIp: pa.gateway, agentPort: AGENT_PORT, ifname: pa.ifname });
    dp.setDestinations([{ ip: pb.ip, port: APP_PORT }]);
    const viaAgent = await connectFrom(lab, pa, pb.ip, APP_PORT);
    assert.equal(viaAgent.ok, true, JSON.stringify(viaAgent));
    assert.equal(JSON.parse(viaAgent.reply!).server, 'agent', 'enrolled: redirected to the agent');

    // The agent stops (DaemonSet deleted): its fds go, the pins stay.
    dp.close();
    dp = undefined;
    await new Promise<void>((r) => agent!.close(() => r()));
    agent = undefined;
    const stranded = await connectFrom(lab, pa, pb.ip, APP_PORT);
    assert.equal(stranded.ok, false, 'the defect: still redirected, to a port nobody listens on');
    assert.equal(stranded.code, 'ECONNREFUSED');

    // The cleanup pod: the real agent program in uninstall mode.
    const r = spawnSync(process.execPath, [join(ROOT, 'agent/src/main.ts'), '--uninstall', '--pin-root', lab.pinRoot, '--cgroup', lab.cgroupDir, '--bpf-objects', OBJECT_DIR], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 0, r.stderr);
    const log = JSON.parse(r.stdout.trim().split('\n').pop()!) as { msg: string; pods: number; cgroupLinks: number };
    assert.equal(log.msg, 'datapath removed: pods are no longer redirected');
    assert.equal(log.pods, 1);
    assert.equal(log.cgroupLinks, 5);
    assert.ok(!existsSync(lab.pinRoot) || readdirSync(lab.pinRoot).length === 0, 'no pins left');
    // bpftool prints nothing at all for a cgroup without programs.
    const attached = spawnSync('bpftool', ['-j', 'cgroup', 'show', lab.cgroupDir], { encoding: 'utf8' }).stdout.trim();
    assert.deepEqual((attached ? JSON.parse(attached) as Array<{ name: string }> : []).filter((p) => p.name.startsWith('weft_')), [], 'no Weft program attached to the cgroup');

    const direct = await connectFrom(lab, pa, pb.ip, APP_PORT);
    assert.equal(direct.ok, true, `pod reaches its server: ${direct.code}`);
    assert.equal(JSON.parse(direct.reply!).server, 'pb');

    // Idempotent: a node with nothing pinned is left alone.
    const again = spawnSync(process.execPath, [join(ROOT, 'agent/src/main.ts'), '--uninstall', '--pin-root', lab.pinRoot, '--cgroup', lab.cgroupDir, '--bpf-objects', OBJECT_DIR], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(again.status, 0, again.stderr);
    assert.match(again.stdout, /no Weft datapath pinned on this node/);
  } finally {
    agent?.close();
    try { dp?.teardown(); } catch { /* the lab removes the pins anyway */ }
    await stopAll(servers);
    await lab.cleanup();
  }
});
