// `weftctl up --kube` as a user runs it (issue 17): the real weftctl brings up the kube lab (its
// supervisor outlives the command), installs Weft with kubectl, runs the sample applications and
// shows traffic through the mesh; the printed kubeconfig works for kubectl and for weftctl; a plain
// `weftctl up` on the same state folder is refused instead of tearing the lab down; `weftctl down`
// leaves no process, network namespace, cgroup or BPF pin behind. With --clusters 2, two clusters
// on their own networks (cli/local/kube/multicluster.ts), answered from cluster1's client.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Lab } from '../lab/lab.ts';
import { weftctl } from './weftctl-run.ts';
import { destroyLocalNetwork } from '../../cli/local/network.ts';
import { listNetns } from '../../lib/sys/netns.ts';
import { ensureBpffs, findCgroup2Root } from '../../lib/sys/mounts.ts';

const run = promisify(execFile);
const skip = spawnSync('kubectl', ['version', '--client']).status !== 0 ? 'kubectl is not installed' : process.getuid?.() !== 0 ? 'needs root' : false;

const lab = new Lab();
const stateDir = mkdtempSync(join(tmpdir(), 'weft-up-kube-'));
const place = ['--prefix', lab.id, '--state-dir', stateDir];

/** Processes whose command line names this test's state folder (the supervisor) or prefix. */
function leftoverProcesses(): string[] {
  const out: string[] = [];
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p) && Number(p) !== process.pid)) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
      if (cmd.includes(stateDir) || new RegExp(`${lab.id}(c\\d)?-`).test(cmd)) out.push(`${pid}: ${cmd}`);
    } catch {
      /* gone */
    }
  }
  return out;
}

/** Whether the supervisor with this pid runs (a zombie waiting for init has an empty command line). */
function supervisorRuns(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('supervisor.ts');
  } catch {
    return false;
  }
}

after(async () => {
  if (!skip && existsSync(join(stateDir, 'kube.pid'))) await weftctl(['down', ...place]);
  for (const p of [lab.id, `${lab.id}c1`, `${lab.id}c2`]) await destroyLocalNetwork(p);
  await lab.cleanup();
  rmSync(stateDir, { recursive: true, force: true });
});

test('weftctl up --kube: the kube lab with Weft installed by kubectl shows traffic through the mesh, its kubeconfig serves kubectl and weftctl, and weftctl down leaves nothing', { skip, timeout: 400_000 }, async (t) => {
  const started = Date.now();
  const up = await weftctl(['up', '--kube', ...place]);
  t.diagnostic(`weftctl up --kube took ${((Date.now() - started) / 1000).toFixed(1)} s`);
  assert.equal(up.code, 0, `weftctl up --kube failed:\n${up.out}\n${up.err}\n${existsSync(join(stateDir, 'supervisor.log')) ? readFileSync(join(stateDir, 'supervisor.log'), 'utf8') : ''}`);
  // The supervisor outlives the command that started it.
  const pid = Number(readFileSync(join(stateDir, 'kube.pid'), 'utf8'));
  assert.ok(supervisorRuns(pid), 'the kube lab supervisor runs after weftctl up returned');

  await t.test('traffic from demo/client reaches each sample service through the mesh, reviews through the shop waypoint', () => {
    const line = (svc: string) => up.out.split('\n').find((l) => l.includes(`demo/client → ${svc} (`)) ?? '';
    for (const svc of ['echo.demo', 'near.demo', 'reviews.shop']) {
      const answered = [...line(svc).matchAll(/(\d+)× (?!error)/g)].reduce((n, m) => n + Number(m[1]), 0);
      assert.equal(answered, 20, `all 20 requests to ${svc} answered:\n${up.out}`);
      assert.doesNotMatch(line(svc), /error/, `no failed request to ${svc}:\n${up.out}`);
    }
    // Captured by the mesh: the echo sees the client pod's own address (not the Service relay's).
    assert.match(line('echo.demo'), /echo-[0-9a-f]+-[0-9a-z]+ \(server saw client 10\.1\d\d\.1\.\d+\)/);
    const reviews = line('reviews.shop');
    assert.match(reviews, /via the shop waypoint/);
    assert.match(reviews, /reviews-v1-/);
    assert.match(reviews, /reviews-v2-/);
  });

  const kubeconfig = /^kubeconfig: +(\S+)$/m.exec(up.out)?.[1];
  assert.ok(kubeconfig && existsSync(kubeconfig), `a kubeconfig printed:\n${up.out}`);

  await t.test('kubectl get pods through the printed kubeconfig lists the install and the apps, all ready', async () => {
    const { stdout } = await run('kubectl', ['--kubeconfig', kubeconfig, 'get', 'pods', '-A', '-o', 'json'], { env: { ...process.env, HOME: stateDir } });
    const pods = (JSON.parse(stdout) as { items: Array<{ metadata: { namespace: string; name: string }; spec: { nodeName?: string }; status: { conditions?: Array<{ type: string; status: string }> } }> }).items;
    const ready = (p: (typeof pods)[number]) => p.status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true;
    const agents = pods.filter((p) => p.metadata.namespace === 'weft-system' && p.metadata.name.startsWith('weft-agent-'));
    assert.deepEqual(agents.map((p) => p.spec.nodeName).sort(), ['node1', 'node2'], 'one agent per node');
    for (const want of [['weft-system', 'weft-controller-'], ['demo', 'echo-'], ['demo', 'near-'], ['demo', 'client'], ['shop', 'reviews-v1-'], ['shop', 'reviews-v2-'], ['shop', 'waypoint-']]) {
      const p = pods.find((x) => x.metadata.namespace === want[0] && x.metadata.name.startsWith(want[1]!));
      assert.ok(p, `pod ${want.join('/')}* listed`);
    }
    assert.ok(pods.every(ready), `every pod ready: ${pods.filter((p) => !ready(p)).map((p) => p.metadata.name).join(', ')}`);
  });

  await t.test('weftctl --kubeconfig reads the lab as a cluster (agents through the API server\'s pod proxy)', async () => {
    const status = await weftctl(['status', '--kubeconfig', kubeconfig]);
    assert.equal(status.code, 0, status.out + status.err);
    assert.match(status.out, /^node1 +ready$/m);
    assert.match(status.out, /^node2 +ready$/m);
  });

  await t.test('a plain weftctl up on the kube lab\'s state folder is refused and leaves the lab running', async () => {
    const again = await weftctl(['up', ...place]);
    assert.equal(again.code, 1);
    assert.match(again.err, /a kube lab ".+" was started in .+ remove it first with `weftctl down`/);
    assert.ok(supervisorRuns(pid), 'the supervisor still runs');
  });

  await t.test('weftctl down stops the supervisor and leaves no process, network namespace, cgroup or BPF pin', async () => {
    const down = await weftctl(['down', ...place]);
    assert.equal(down.code, 0, down.out + down.err);
    assert.match(down.out, /kube lab ".+" removed/);
    assert.ok(!supervisorRuns(pid), 'the supervisor has exited');
    assert.deepEqual(leftoverProcesses(), [], 'no process of the lab');
    assert.deepEqual(listNetns().filter((n) => n.startsWith(`${lab.id}-`)), [], 'no network namespace');
    assert.ok(!existsSync(join(findCgroup2Root(), lab.id)), 'no cgroup');
    assert.ok(!existsSync(join(ensureBpffs(), lab.id)), 'no BPF pins');
    assert.ok(!existsSync(join(stateDir, 'kube.json')) && !existsSync(join(stateDir, 'lab')), 'no lab state');
  });
});

test('weftctl up --kube --clusters 2: two one-node clusters on their own networks, installed by kubectl with --cluster-id/--network/--eastwest and linked by remote secrets; cluster1\'s client is answered by both clusters, and weftctl down leaves nothing', { skip, timeout: 400_000 }, async (t) => {
  const started = Date.now();
  const up = await weftctl(['up', '--kube', '--clusters', '2', ...place]);
  t.diagnostic(`weftctl up --kube --clusters 2 took ${((Date.now() - started) / 1000).toFixed(1)} s`);
  assert.equal(up.code, 0, `weftctl up --kube --clusters 2 failed:\n${up.out}\n${up.err}\n${existsSync(join(stateDir, 'supervisor.log')) ? readFileSync(join(stateDir, 'supervisor.log'), 'utf8') : ''}`);
  for (const c of ['cluster1', 'cluster2']) assert.match(up.out, new RegExp(`^  ${c}: \\d+× echo-`, 'm'), `answers from ${c}:\n${up.out}`);
  assert.doesNotMatch(up.out, /^ {2}error:/m, `no failed request:\n${up.out}`);
  assert.match(up.out, /^cluster2: network network2, edge 192\.168\.77\.2 /m);
  const pid = Number(readFileSync(join(stateDir, 'kube.pid'), 'utf8'));
  const down = await weftctl(['down', ...place]);
  assert.equal(down.code, 0, down.out + down.err);
  assert.ok(!supervisorRuns(pid), 'the supervisor has exited');
  assert.deepEqual(leftoverProcesses(), [], 'no process of the labs');
  assert.deepEqual(listNetns().filter((n) => n.startsWith(lab.id)), [], 'no network namespace (clusters and exchange)');
  for (const i of [1, 2]) {
    assert.ok(!existsSync(join(findCgroup2Root(), `${lab.id}c${i}`)), `no cgroup of cluster${i}`);
    assert.ok(!existsSync(join(ensureBpffs(), `${lab.id}c${i}`)), `no BPF pins of cluster${i}`);
  }
});
