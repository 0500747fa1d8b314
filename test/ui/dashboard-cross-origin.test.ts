// A web page the operator visits, on another origin (here another port of 127.0.0.1: same-site,
// cross-origin), makes Debian's Chromium send GETs to the dashboard: an <img>, a <script>, a
// no-cors fetch, an EventSource. It cannot read the answers (no CORS), but each /api/graph reads
// every agent's config dump (on a cluster through the API server, with the operator's credentials)
// and each /api/flows holds a stream. The dashboard refuses them by Fetch Metadata (Sec-Fetch-Site,
// https://www.w3.org/TR/fetch-metadata/) before any work, and tells each refusal; following a link
// from that page to the dashboard still opens it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import type { Browser, Page } from 'playwright-core';
import { until } from '../lab/wait.ts';
import { launchChromium } from './harness.ts';
import { dashboardServer, type DashboardRefusal } from '../../cli/dashboard/server.ts';
import type { MeshData } from '../../cli/dashboard/data.ts';

let graphs = 0;
let streams = 0;
const refused: Array<{ reason: DashboardRefusal; path: string }> = [];
const dashboard = dashboardServer({
  data: {
    graph: async () => { graphs++; return { nodes: [], edges: [], clusters: [], windowSeconds: 30 }; },
    nodes: async () => [],
    recentFlows: () => { streams++; return []; },
    onFlow: () => () => {},
  } as unknown as MeshData,
  refused: (reason, req) => refused.push({ reason, path: req.url ?? '' }),
});
let dash: string;
const attacker = http.createServer((_req, res) => {
  res.writeHead(200, { 'content-type': 'text/html' }).end(`<!doctype html><title>elsewhere</title>
<img src="${dash}api/graph?img">
<script src="${dash}api/graph?script"></script>
<script>
  fetch('${dash}api/graph?fetch', { mode: 'no-cors' }).catch(() => {});
  new EventSource('${dash}api/flows?recent=1');
</script>
<a id="go" href="${dash}">the mesh</a>`);
});
let browser: Browser | undefined;
let page: Page;

before(async () => {
  dashboard.listen(0, '127.0.0.1');
  attacker.listen(0, '127.0.0.1');
  await Promise.all([once(dashboard, 'listening'), once(attacker, 'listening')]);
  dash = `http://127.0.0.1:${(dashboard.address() as AddressInfo).port}/`;
  browser = await launchChromium();
  page = await browser.newPage();
});

after(async () => {
  await browser?.close();
  for (const s of [dashboard, attacker]) { s.closeAllConnections(); s.close(); }
});

test('a page of another origin gets its <img>, <script>, fetch and EventSource to the dashboard refused before any work; a followed link opens the dashboard', async () => {
  await page.goto(`http://127.0.0.1:${(attacker.address() as AddressInfo).port}/`);
  await until('the four requests are refused', () => refused.length >= 4, 15_000, { intervalMs: 100, explain: () => JSON.stringify(refused) });
  assert.ok(refused.every((r) => r.reason === 'cross_site'), JSON.stringify(refused));
  assert.deepEqual(new Set(refused.map((r) => r.path.replace(/^\/api\/(\w+)\?(\w+).*$/, '$1 $2'))), new Set(['graph img', 'graph script', 'graph fetch', 'flows recent']));
  assert.equal(graphs, 0, 'no config dump read for another origin');
  assert.equal(streams, 0, 'no flow stream opened for another origin');
  const before = refused.length;
  await page.click('#go');
  await until('the dashboard opened by the link reads the graph', () => graphs > 0 && streams > 0, 15_000, { intervalMs: 100 });
  assert.equal(refused.length, before, 'the dashboard\'s own page and its requests are not refused');
});
