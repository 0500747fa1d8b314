// weftctl as a new user runs it: `up` brings the local mesh up and shows traffic, `top` shows the
// canary split, `bpf` shows the enrolled pods, `down` leaves nothing behind. Runs the real CLI as a
// child process, with this run's prefix so it cannot touch a mesh the user has running.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { Lab } from '../lab/lab.ts';
import { destroyLocalNetwork } from '../../cli/local/network.ts';
import { listNetns } from '../../lib/sys/netns.ts';

import { weftctl } from './weftctl-run.ts';
import { mirrorLocalMesh } from './cluster-mirror.ts';

const lab = new Lab();
const stateDir = mkdtempSync(join(tmpdir(), 'weft-ctl-'));
const common = ['--prefix', lab.id, '--state-dir', stateDir];


after(async () => {
  await destroyLocalNetwork(lab.id);
  await lab.cleanup();
  rmSync(stateDir, { recursive: true, force: true });
});

test('up shows traffic flowing, top the canary split, bpf the enrolled pods, and down leaves nothing', async () => {
  const up = await weftctl(['up', ...common]);
  assert.equal(up.code, 0, `${up.out}\n${up.err}`);
  assert.match(up.out, /demo\/client → echo\.demo \(10\.96\.0\.10:80\): 20× echo \(server saw client 10\.77\.1\.\d+\)/);
  assert.match(up.out, /reviews\.shop .*reviews-v1 \(via the shop waypoint/);

  const again = await weftctl(['up', ...common]);
  assert.equal(again.code, 0);
  assert.match(again.out, /already running/);

  // Drive 150 requests to the canary while top measures.
  const top = weftctl(['top', ...common, '--once', '-i', '8']);
  const st = JSON.parse(execFileSync('cat', [join(stateDir, 'state.json')], { encoding: 'utf8' }));
  const client = st.pods.find((p: { name: string }) => p.name === 'client');
  const cgroup = join(st.nodes.find((n: { name: string }) => n.name === client.node).cgroup, 'pods', 'demo_client');
  execFileSync('sh', ['-c', `echo $$ > ${cgroup}/cgroup.procs; exec nsenter --net=/var/run/netns/${client.netns} sh -c 'for i in $(seq 150); do curl -s -o /dev/null --max-time 5 http://10.96.1.10/; done'`]);
  const t = await top;
  assert.equal(t.code, 0, t.err);
  assert.match(t.out, /reviews\.shop\.svc\.cluster\.local\s+L7 → \S*reviews-v1\s+[\d.]+\s+(8\d|9\d)%/, t.out);
  assert.match(t.out, /reviews\.shop\.svc\.cluster\.local\s+L7 → \S*reviews-v2\s+[\d.]+\s+([1-9]|1\d)%/, t.out);

  const bpf = await weftctl(['bpf', ...common, '--node', 'node1']);
  assert.equal(bpf.code, 0, bpf.err);
  assert.match(bpf.out, /weft_connect4\s+\d+\s+\d+\s+bpftool prog show id \d+/);
  assert.match(bpf.out, new RegExp(`${client.ip.replace(/\./g, '\\.')}\\s+PERMISSIVE`));
  assert.match(bpf.out, /bpftool map dump pinned \S+\/weft_pods/);

  const certs = await weftctl(['certs', ...common, '--node', 'node1']);
  assert.equal(certs.code, 0, certs.err);
  assert.match(certs.out, /IDENTITY\s+SERIAL\s+EXPIRES\s+STATE\s+ISSUER/);
  assert.match(certs.out, /node1\s+spiffe:\/\/cluster\.local\/ns\/shop\/sa\/\S+\s+[0-9a-f]+\s+\S+\s+valid\s+O=weft, CN=weft root CA/);

  // Every agent and waypoint acknowledged its latest config and refused none.
  const ps = await weftctl(['proxy-status', ...common]);
  assert.equal(ps.code, 0, `${ps.out}\n${ps.err}`);
  assert.match(ps.out, /^agent\s+node1\s+\d+\s+-\s+\d+\s+ACKED$/m);
  assert.match(ps.out, /^agent\s+node2\s+\d+\s+-\s+\d+\s+ACKED$/m);
  assert.match(ps.out, /^waypoint\s+\S+\s+\d+\s+-\s+\d+\s+ACKED$/m);
  // describe pod: identity, enrolment and the certificate its agent holds.
  const d = await weftctl(['describe', 'pod', 'client', '-n', 'demo', ...common]);
  assert.equal(d.code, 0, d.err);
  assert.match(d.out, /^Identity:   spiffe:\/\/cluster\.local\/ns\/demo\/sa\/\S+$/m);
  assert.match(d.out, /^Enrolled:   yes \(/m);
  assert.match(d.out, /^Certificate: valid, serial [0-9a-f]+, expires /m);
  // The same rows as JSON, filtered by namespace.
  const wl = await weftctl(['workloads', '-n', 'demo', '-o', 'json', ...common]);
  assert.ok(JSON.parse(wl.out).every((w: { namespace: string }) => w.namespace === 'demo'));

  // One CLI, two transports: the same mesh seen as a cluster (the lab API server holding its
  // objects, the pod proxy reaching its agents, waypoint and controller) gives the same rows and
  // columns as the local transport, command by command.
  const mirror = await mirrorLocalMesh(st, stateDir, stateDir);
  try {
    for (const args of [['workloads', '-o', 'wide'], ['services', '-o', 'wide'], ['policies', '-o', 'wide'], ['waypoints'], ['routes', '-o', 'wide'], ['certs', '-o', 'wide'], ['bpf', '-o', 'json'], ['proxy-status'],
      ['config-dump'], ['config-dump', '--waypoints', '-o', 'yaml'], ['waypoint', 'list', '-o', 'wide'], ['waypoint', 'status', '-n', 'shop']]) {
      const [local, cluster] = await Promise.all([weftctl([...args, ...common]), weftctl([...args, '--kubeconfig', mirror.kubeconfig])]);
      assert.equal(local.code, 0, `${args.join(' ')} (local): ${local.err}`);
      assert.equal(cluster.code, 0, `${args.join(' ')} (cluster): ${cluster.err}`);
      // The sample mesh has no node-level policy: `policies` compares its (empty) table too.
      if (args[0] !== 'policies') assert.ok(local.out.split('\n').length > 2, `${args.join(' ')}: rows to compare`);
      // Live traffic moves the BPF counters between the two reads: those values are left out of the comparison.
      const same = (out: string) => (args[0] === 'bpf' ? JSON.stringify(JSON.parse(out), (k, v) => (['counters', 'podCounters', 'refusals'].includes(k) ? Object.keys(v as object).sort() : v)) : out);
      assert.equal(same(cluster.out), same(local.out), `weftctl ${args.join(' ')}: the same output on both transports`);
    }
    const tap = await weftctl(['tap', '--kubeconfig', mirror.kubeconfig, '--recent', '--count', '3', '-o', 'json']);
    assert.equal(tap.code, 0, tap.err);
    assert.equal(tap.out.trim().split('\n').length, 3, 'tap follows the flows through the pod proxy');
  } finally {
    await mirror.stop();
  }

  const down = await weftctl(['down', ...common]);
  assert.equal(down.code, 0, down.err);
  assert.deepEqual(listNetns().filter((n) => n.startsWith(`${lab.id}-`)), []);
  assert.equal(existsSync(lab.cgroupDir) && readdirSync(lab.cgroupDir).length > 0, false, 'no cgroups left');
  assert.equal(existsSync(lab.pinRoot) && readdirSync(lab.pinRoot).length > 0, false, 'no pins left');
  const procs = execFileSync('ps', ['-eo', 'args'], { encoding: 'utf8' }).split('\n').filter((l) => l.includes(stateDir));
  assert.deepEqual(procs, [], 'no process of the mesh left');
});

test('inspection without a running mesh says how to start one and fails', async () => {
  const r = await weftctl(['workloads', ...common]);
  assert.equal(r.code, 1);
  assert.match(r.err, /no local mesh ".+" is running; start one with `weftctl up`/);
});
