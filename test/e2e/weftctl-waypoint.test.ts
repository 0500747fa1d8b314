// weftctl waypoint apply | list | status | delete and weftctl check on a running local mesh, as a
// user runs them: the real CLI as child processes against a mesh that `weftctl up` left running
// (this run's prefix, so a mesh the user has running is never touched).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { Lab } from '../lab/lab.ts';
import { destroyLocalNetwork } from '../../cli/local/network.ts';
import { listNetns } from '../../lib/sys/netns.ts';
import { viaWaypoints, type LocalState } from '../../cli/local/up.ts';
import { until } from '../lab/wait.ts';

import { weftctl } from './weftctl-run.ts';
import { requestInNetns } from '../../cli/local/netns-http.ts';

const lab = new Lab();
const stateDir = mkdtempSync(join(tmpdir(), 'weft-ctlwp-'));
const common = ['--prefix', lab.id, '--state-dir', stateDir];


const readState = (): LocalState => JSON.parse(readFileSync(join(stateDir, 'state.json'), 'utf8')) as LocalState;

/** One request from demo/client (its cgroup and netns, so eBPF steers it); the echo body or curl's error. */
function fromClient(url: string): { ok: boolean; body: string } {
  const st = readState();
  const client = st.pods.find((p) => p.namespace === 'demo' && p.name === 'client')!;
  const cgroup = join(st.nodes.find((n) => n.name === client.node)!.cgroup, 'pods', 'demo_client');
  try {
    const body = execFileSync('sh', ['-c', `echo $$ > ${cgroup}/cgroup.procs; exec nsenter --net=/var/run/netns/${client.netns} curl -sS --max-time 3 ${url}`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    return { ok: true, body };
  } catch (err) {
    return { ok: false, body: String((err as { stderr?: string }).stderr ?? err) };
  }
}

before(async () => {
  const up = await weftctl(['up', ...common]);
  assert.equal(up.code, 0, `${up.out}\n${up.err}`);
});

after(async () => {
  await destroyLocalNetwork(lab.id);
  await lab.cleanup();
  rmSync(stateDir, { recursive: true, force: true });
});

test('waypoint apply --enroll-namespace starts a waypoint pod on the chosen node, and the namespace traffic then passes it', async () => {
  const bad = await weftctl(['waypoint', 'apply', ...common, '-n', 'demo', '--max-requests', '0']);
  assert.notEqual(bad.code, 0);
  assert.match(bad.err, /--max-requests 0: give a whole number of requests from 1 to 1000000/);
  const r = await weftctl(['waypoint', 'apply', ...common, '-n', 'demo', '--node', 'node1', '--enroll-namespace', '--max-requests', '300']);
  assert.equal(r.code, 0, `${r.out}\n${r.err}`);
  assert.match(r.out, /waypoint demo\/waypoint created: pod waypoint-0 on node1 \(10\.77\.1\.\d+\)/);
  assert.match(r.out, /namespace demo labelled weft\.dev\/use-waypoint=waypoint/);
  assert.match(r.out, /waypoint demo\/waypoint ready at 10\.77\.1\.\d+, identity spiffe:\/\/cluster\.local\/ns\/demo\/sa\/waypoint/);
  const wp = readState().pods.find((p) => p.namespace === 'demo' && p.name === 'waypoint-0');
  assert.ok(wp && wp.node === 'node1', 'state.json records the pod');
  const metrics = await requestInNetns(`/var/run/netns/${wp.netns}`, `http://${wp.ip}:15020/metrics`);
  assert.match(metrics.body, /^weft_waypoint_max_requests 300$/m, 'spec.maxRequests reached the waypoint');
  // The enrolment reaches the agents through the controller: wait for the request to pass the
  // waypoint (it names itself in Via, RFC 9110 section 7.6.3), while echo still sees the client.
  const client = readState().pods.find((p) => p.namespace === 'demo' && p.name === 'client')!;
  let seen = '';
  await until('requests to echo pass the demo waypoint', async () => {
    const res = fromClient('http://10.96.0.10/');
    seen = res.body;
    return res.ok && viaWaypoints((JSON.parse(res.body) as { headers: Record<string, string> }).headers['via']).some((w) => w.name === 'waypoint' && w.namespace === 'demo');
  }, 20_000, { explain: () => seen });
  const passed = JSON.parse(seen) as { peer: string };
  assert.equal(passed.peer.replace(/^::ffff:/, ''), client.ip, 'echo sees the client itself through the waypoint (the waypoint names it as for=)');

  const again = await weftctl(['waypoint', 'apply', ...common, '-n', 'demo']);
  assert.equal(again.code, 0, again.err);
  assert.match(again.out, /already runs \(waypoint-0 on node1\); unchanged/);
});

test('waypoint list shows both waypoints ready with their pods, and status one waypoint per pod and per agent', async () => {
  const list = await weftctl(['waypoint', 'list', ...common]);
  assert.equal(list.code, 0, list.err);
  assert.match(list.out, /^demo\s+waypoint\s+10\.77\.1\.\d+\s+True\s+waypoint-0@node1$/m);
  assert.match(list.out, /^shop\s+waypoint\s+10\.77\.2\.\d+\s+True\s+waypoint-0@node2$/m);
  const st = await weftctl(['waypoint', 'status', ...common, '-n', 'demo']);
  assert.equal(st.code, 0, st.err);
  assert.match(st.out, /waypoint demo\/waypoint: ready/);
  assert.match(st.out, /^waypoint-0\s+node1\s+10\.77\.1\.\d+\s+True\s+\d+/m);
  assert.match(st.out, /^node1\s+True\s+sends to 10\.77\.1\.\d+$/m);
  assert.match(st.out, /^node2\s+True\s+sends to 10\.77\.1\.\d+$/m);
});

test('check passes on the healthy mesh: controller, agents, BPF links, certificates, waypoints', async () => {
  const r = await weftctl(['check', ...common, '--mesh']);
  assert.equal(r.code, 0, `${r.out}\n${r.err}`);
  for (const line of [/ok\s+controller ready/, /ok\s+agent node1 ready/, /ok\s+agent node2 ready/, /ok\s+BPF programs on node1\s+5 cgroup links attached/,
    /ok\s+certificates on node2\s+\d+ valid/, /ok\s+waypoint demo\/waypoint ready/, /ok\s+waypoint shop\/waypoint ready/]) {
    assert.match(r.out, line);
  }
});

test('waypoint delete removes the pod, its namespace and object, says the namespace now fails closed, and check then fails naming what to do', async () => {
  const st0 = readState();
  const wp = st0.pods.find((p) => p.namespace === 'demo' && p.name === 'waypoint-0')!;
  const r = await weftctl(['waypoint', 'delete', ...common, '-n', 'demo']);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /waypoint demo\/waypoint deleted \(pods waypoint-0 stopped and removed\)/);
  assert.match(r.out, /namespace demo still has weft\.dev\/use-waypoint=waypoint: its services fail closed/);
  assert.equal(listNetns().includes(wp.netns), false, 'the pod namespace is gone');
  assert.equal(readState().pods.some((p) => p.netns === wp.netns), false, 'state.json forgets the pod');
  assert.equal(existsSync(join(stateDir, 'config', 'waypoint-demo-waypoint.yaml')), false);
  const status = await weftctl(['waypoint', 'status', ...common, '-n', 'demo']);
  assert.equal(status.code, 1);
  assert.match(status.err, /no waypoint demo\/waypoint \(`weftctl waypoint apply -n demo` creates one\)/);
  // Fail closed: demo's services must pass a waypoint that is gone.
  let res = fromClient('http://10.96.0.10/');
  for (let i = 0; i < 40 && res.ok; i++) {
    await new Promise((r2) => setTimeout(r2, 250));
    res = fromClient('http://10.96.0.10/');
  }
  assert.equal(res.ok, false, `traffic fails closed: ${res.body}`);

  // The shop waypoint's process dies: check fails and says what to do.
  const shop = readState().pods.find((p) => p.namespace === 'shop' && p.name === 'waypoint-0')!;
  const cgroup = join(readState().nodes.find((n) => n.name === shop.node)!.cgroup, 'pods', 'shop_waypoint-0');
  for (const pid of readFileSync(join(cgroup, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean)) process.kill(Number(pid), 'SIGKILL');
  const check = await weftctl(['check', ...common, '--mesh']);
  assert.equal(check.code, 1, check.out);
  assert.match(check.out, /FAIL\s+waypoint shop\/waypoint ready\s+pod waypoint-0: /);
  assert.match(check.out, /-> traffic through it fails closed; `weftctl waypoint status -n shop --name waypoint`/);
});
