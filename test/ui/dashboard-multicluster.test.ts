// The dashboard on a local multi-cluster mesh (`weftctl up --clusters 2`: two clusters on two
// networks, demo/echo in both, cluster1's client answered by both): one box per cluster holding its
// namespaces' boxes, demo/echo drawn once per cluster (not merged), and cluster1's client → cluster2's
// echo marked cross-cluster and drawn through cluster2's east-west gateway; a DENY in cluster2 turns
// only that edge red, with cluster2's policy and the denial named by cluster2's agent. Leaves a screenshot
// (docs/dashboard-multicluster.png is one, refreshed with WEFT_UPDATE_SCREENSHOT=1).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import type { Browser, Page } from 'playwright-core';
import { Lab } from '../lab/lab.ts';
import { until } from '../lab/wait.ts';
import { downClusters } from '../../cli/local/multicluster-up.ts';
import { REPO_ROOT } from '../../cli/local/mesh.ts';
import type { LocalState } from '../../cli/local/up.ts';
import { weftctl } from '../e2e/weftctl-run.ts';
import { launchChromium, screenshotPath, startDashboard } from './harness.ts';

const lab = new Lab();
const stateDir = mkdtempSync(join(tmpdir(), 'weft-ui-mc-'));
const common = ['--prefix', lab.id, '--state-dir', stateDir];
const CROSS = 'workload:cluster1/demo/client->service:cluster2/demo/echo';
const LOCAL = 'workload:cluster1/demo/client->service:cluster1/demo/echo';
const GATEWAY = 'gateway:cluster2/weft-system/weft-eastwest';
let dashboard: ChildProcess | undefined;
let loadgen: ChildProcess | undefined;

/** The sample load generator in cluster1's demo/client pod (its cgroup and network namespace), to echo's VIP. */
function startLoad(): ChildProcess {
  const st = JSON.parse(readFileSync(join(stateDir, 'cluster1', 'state.json'), 'utf8')) as LocalState;
  const pod = st.pods.find((p) => p.namespace === 'demo' && p.name === 'client')!;
  const cgroup = join(st.nodes.find((n) => n.name === pod.node)!.cgroup, 'pods', `${pod.namespace}_${pod.name}`);
  return spawn('sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec nsenter --net="/var/run/netns/$1" "$2" "$3" --rate 4 http://10.96.0.10/', cgroup, pod.netns, process.execPath, join(REPO_ROOT, 'cli/local/apps/loadgen.ts')], { stdio: 'ignore' });
}
let browser: Browser | undefined;
let page: Page;

before(async () => {
  const started = Date.now();
  // Up sends 20 requests from cluster1's client and fails unless both clusters answered.
  const up = await weftctl(['up', ...common, '--clusters', '2']);
  assert.equal(up.code, 0, `${up.out}\n${up.err}`);
  console.log(`# weftctl up --clusters 2 took ${Date.now() - started} ms`);
  loadgen = startLoad();
  let url: string;
  ({ child: dashboard, url } = await startDashboard(common));
  browser = await launchChromium();
  page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  await page.goto(url);
  console.log(`# dashboard and browser ready ${Date.now() - started} ms after the start`);
});

after(async () => {
  await browser?.close();
  dashboard?.kill('SIGTERM');
  loadgen?.kill('SIGTERM');
  await downClusters(lab.id, stateDir, () => {});
  await lab.cleanup();
  rmSync(stateDir, { recursive: true, force: true });
});

interface Cy { getElementById(i: string): { nonempty(): boolean; isNode(): boolean; hasClass(c: string): boolean; data(k: string): unknown; parent(): { id(): string | undefined } } }
/** What the page's cytoscape holds for an element: whether it is there, its parent box and classes. */
const drawn = (id: string) => page.evaluate((i) => {
  const cy = (globalThis as unknown as { weftDashboard: { cy: Cy } }).weftDashboard.cy;
  const x = cy.getElementById(i);
  return x.nonempty() ? { parent: x.isNode() ? x.parent().id() ?? null : null, cross: x.hasClass('cross'), kind: x.data('kind') } : undefined;
}, id);

test('two clusters: a box per cluster with its namespaces, demo/echo once per cluster, the cross-cluster edge through cluster2\'s east-west gateway', async () => {
  const row = (id: string) => page.locator(`#edges tr[data-edge="${id}"]`);
  const t0 = Date.now();
  await row(CROSS).waitFor({ timeout: 30_000 });
  console.log(`# the cross-cluster edge was listed after ${Date.now() - t0} ms`);
  await row(LOCAL).waitFor({ timeout: 10_000 });
  assert.equal(await row(CROSS).getAttribute('data-cross-cluster'), 'true');
  assert.equal(await row(LOCAL).getAttribute('data-cross-cluster'), 'false');
  assert.equal(await row(CROSS).getAttribute('data-security'), 'mutual_tls');
  // Requests answered by both clusters (the client's agent picks among both clusters' endpoints).
  for (const id of [CROSS, LOCAL]) {
    await until(`${id} carries traffic`, async () => /[1-9][\d.]* conn\/s|0\.[1-9]\d* conn\/s/.test((await row(id).textContent()) ?? ''), 20_000, { intervalMs: 250 });
  }
  assert.match((await row(CROSS).textContent()) ?? '', /cluster2: weft-system\/weft-eastwest/, 'the Via column names the gateway');

  await until('both clusters are drawn', async () => (await drawn('cluster:cluster2')) !== undefined, 10_000, { intervalMs: 250 });
  for (const c of ['cluster1', 'cluster2']) {
    assert.deepEqual(await drawn(`cluster:${c}`), { parent: null, cross: false, kind: 'cluster' }, `${c} is a top-level box`);
    assert.equal((await drawn(`ns:${c}/demo`))?.parent, `cluster:${c}`, `${c}'s demo namespace is inside ${c}'s box`);
    assert.equal((await drawn(`service:${c}/demo/echo`))?.parent, `ns:${c}/demo`, `demo/echo of ${c} is its own node`);
  }
  assert.deepEqual(await drawn(GATEWAY), { parent: 'ns:cluster2/weft-system', cross: false, kind: 'gateway' }, 'the gateway, inside the cluster it leads into');
  // client → gateway (labelled, the edge's id), gateway → cluster2's echo; both marked cross-cluster.
  assert.equal((await drawn(CROSS))?.cross, true);
  assert.equal((await drawn(`${CROSS}/via1`))?.cross, true);
  assert.equal((await drawn(LOCAL))?.cross, false);

  const shot = screenshotPath('dashboard-multicluster.png', stateDir);
  await page.screenshot({ path: shot, fullPage: true });
  assert.ok(existsSync(shot));
});

test('a DENY in cluster2 for cluster1\'s client turns only the cross-cluster edge red, with cluster2\'s policy and its agent\'s denial', async () => {
  const file = join(stateDir, 'deny.yaml');
  writeFileSync(file, [
    'apiVersion: weft.dev/v1alpha1', 'kind: AuthorizationPolicy', 'metadata: {name: deny-client, namespace: demo}',
    'spec:', '  selector: {matchLabels: {app: echo}}', '  action: DENY', '  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]', '',
  ].join('\n'));
  const cluster2 = ['--prefix', `${lab.id}c2`, '--state-dir', join(stateDir, 'cluster2')];
  const applied = await weftctl(['apply', ...cluster2, '-f', file]);
  assert.equal(applied.code, 0, applied.err);
  const denied = (id: string) => page.locator(`#edges tr[data-edge="${id}"]`).getAttribute('data-denied');
  await until('the cross-cluster edge has denials', async () => Number(await denied(CROSS)) > 0, 30_000, { intervalMs: 250 });
  assert.equal(await denied(LOCAL), '0', 'cluster1\'s own echo still answers its client');
  await page.locator(`#edges tr[data-edge="${CROSS}"]`).click();
  assert.match((await page.locator('#edge-policies').textContent()) ?? '', /DENY demo\/deny-client/, 'cluster2\'s policy is listed for cluster2\'s echo');
  await until('the denial names cluster2\'s agent', async () => /in cluster2/.test((await page.locator('#edge-denials').textContent()) ?? ''), 10_000, { intervalMs: 250 });
  await page.locator(`#edges tr[data-edge="${LOCAL}"]`).click();
  assert.doesNotMatch((await page.locator('#edge-policies').textContent()) ?? '', /deny-client/, 'cluster1 has no such policy');
});
