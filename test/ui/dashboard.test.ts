// make test-ui: Debian's Chromium, driven by playwright-core, loads `weftctl dashboard` against a
// running local mesh (`weftctl up`): demo/client → echo is drawn with its lock, a DENY policy turns
// that edge red and lists the denial with its policy within seconds, removing it turns it back,
// and the flows view shows new connections as they happen. Leaves a screenshot (docs/dashboard.png
// is one, refreshed with WEFT_UPDATE_SCREENSHOT=1).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import type { Browser, Page } from 'playwright-core';
import { Lab } from '../lab/lab.ts';
import { until } from '../lab/wait.ts';
import { destroyLocalNetwork } from '../../cli/local/network.ts';
import { weftctl } from '../e2e/weftctl-run.ts';
import { launchChromium, screenshotPath, startDashboard } from './harness.ts';

const lab = new Lab();
const stateDir = mkdtempSync(join(tmpdir(), 'weft-ui-'));
const common = ['--prefix', lab.id, '--state-dir', stateDir];
const EDGE = 'workload:Kubernetes/demo/client->service:Kubernetes/demo/echo';
let dashboard: ChildProcess | undefined;
let browser: Browser | undefined;
let page: Page;

before(async () => {
  const up = await weftctl(['up', ...common]);
  assert.equal(up.code, 0, `${up.out}\n${up.err}`);
  // A short window, so a removed DENY's last denials age out within the test.
  let url: string;
  ({ child: dashboard, url } = await startDashboard([...common, '--window', '6']));
  browser = await launchChromium();
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(url);
});

after(async () => {
  await browser?.close();
  dashboard?.kill('SIGTERM');
  await destroyLocalNetwork(lab.id);
  await lab.cleanup();
  rmSync(stateDir, { recursive: true, force: true });
});

const row = () => page.locator(`#edges tr[data-edge="${EDGE}"]`);
interface DashboardGlobal { weftDashboard: { cy: { getElementById(i: string): { hasClass(c: string): boolean } } } }
/** Whether the graph's edge carries a class (the page's cytoscape, as the user sees it drawn). */
const edgeClass = (cls: string) => page.evaluate(([id, c]) => (globalThis as unknown as DashboardGlobal).weftDashboard.cy.getElementById(id!).hasClass(c!), [EDGE, cls]);

test('the graph shows demo/client → echo with its lock, drawn as mutual TLS', async () => {
  await row().waitFor({ timeout: 30_000 });
  assert.equal(await row().getAttribute('data-security'), 'mutual_tls');
  assert.equal(await row().locator('.lock').getAttribute('data-lock'), 'closed', 'a closed padlock');
  await until('the edge is drawn green (secure)', () => edgeClass('secure'), 10_000);
  const shot = screenshotPath('dashboard.png', stateDir);
  await page.screenshot({ path: shot, fullPage: true });
  assert.ok(existsSync(shot));
});

test('a DENY on echo for the client turns the edge red and lists the denial with its policy; removing it turns it back', async () => {
  const file = join(stateDir, 'deny.yaml');
  writeFileSync(file, [
    'apiVersion: weft.dev/v1alpha1', 'kind: AuthorizationPolicy', 'metadata: {name: deny-client, namespace: demo}',
    'spec:', '  selector: {matchLabels: {app: echo}}', '  action: DENY', '  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]', '',
  ].join('\n'));
  assert.equal((await weftctl(['apply', ...common, '-f', file])).code, 0);
  const applied = Date.now();
  try {
    await until('the edge turns red', () => edgeClass('denied'), 30_000, { intervalMs: 250 });
    console.log(`# the edge turned red ${Date.now() - applied} ms after the DENY was applied`);
    await row().click();
    await until('the denial is listed with its policy', async () => /deny-client/.test((await page.locator('#edge-denials').textContent()) ?? ''), 10_000, { intervalMs: 250 });
    assert.match((await page.locator('#edge-policies').textContent()) ?? '', /DENY demo\/deny-client/);
  } finally {
    assert.equal((await weftctl(['delete', ...common, '-f', file])).code, 0);
  }
  await until('the edge is secure and not red again', async () => !(await edgeClass('denied')) && (await edgeClass('secure')), 40_000, { intervalMs: 500 });
  assert.equal(await row().getAttribute('data-denied'), '0');
});

test('the flows view shows new connections as they happen, and pausing holds them', async () => {
  await page.locator('nav button[data-view="flows"]').click();
  const rows = page.locator('#flows tbody tr.flow');
  await until('flows are listed', async () => (await rows.count()) > 0, 20_000, { intervalMs: 250 });
  // Newest first, at most 500 rows: a new flow shows as a new top row (the count may be at its cap).
  const top = async () => (await rows.count()) > 0 ? await rows.first().textContent() : '';
  const first = await top();
  await until('new flows arrive', async () => (await top()) !== first, 20_000, { intervalMs: 250 });
  await page.locator('#pause').click();
  const paused = await top();
  await until('flows are held while paused', async () => /new while paused/.test((await page.locator('#held').textContent()) ?? ''), 20_000, { intervalMs: 250 });
  assert.equal(await top(), paused, 'nothing is added while paused');
  await page.locator('#pause').click();
  await until('held flows are shown on resume', async () => (await top()) !== paused, 5_000, { intervalMs: 100 });
  await page.locator('nav button[data-view="nodes"]').click();
  await until('each node shows its BPF state', async () => (await page.locator('.node-card').count()) === 2, 10_000, { intervalMs: 250 });
  assert.match((await page.locator('.node-card[data-node="node1"]').textContent()) ?? '', /\d+ programs, \d+ links, \d+ enrolled pods/);
});
