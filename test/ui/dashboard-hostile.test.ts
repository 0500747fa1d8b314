// Stored XSS against the dashboard, in Debian's Chromium: every string the page shows comes from
// the mesh (workload, namespace, service and cluster names, policy names, denial reasons, request
// paths and methods from flows, node names and BPF state), and a tenant or a caller chooses many of
// them (a request to `/<img src=x onerror=...>`, a policy named `<svg onload=...>`). Here
// `weftctl dashboard`'s server serves such data (no mesh needed) and the page must show it as
// text: no script runs, no element is made from it, and the content security policy
// (`default-src 'self'`, OWASP XSS Prevention Cheat Sheet rule #1: output encoding, plus CSP as
// defence in depth) is in force.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import type { Browser, Page } from 'playwright-core';
import { until } from '../lab/wait.ts';
import { launchChromium } from './harness.ts';
import { dashboardServer } from '../../cli/dashboard/server.ts';
import type { MeshData } from '../../cli/dashboard/data.ts';
import type { MeshGraph } from '../../cli/dashboard/graph.ts';
import type { Flow } from '../../cli/flows.ts';

/** Each payload sets window.__xss (or opens a dialog) if it ever runs. */
const P = (tag: string) => `<img src=x onerror="window.__xss=(window.__xss||[]).concat('${tag}')">`;
const S = (tag: string) => `<svg onload="window.__xss=(window.__xss||[]).concat('${tag}')"></svg><script>window.__xss=(window.__xss||[]).concat('${tag}-script')</script>`;
const A = (tag: string) => `"><a href="javascript:alert('${tag}')" id="xss-${tag}">x</a>`;

const src = `workload:${P('cluster')}/${P('ns')}/${P('wl')}`;
const dst = `service:c2/${S('ns2')}/${A('svc')}`;
const graph: MeshGraph = {
  clusters: [P('cluster'), 'c2'],
  windowSeconds: 30,
  nodes: [
    { id: src, kind: 'workload', cluster: P('cluster'), namespace: P('ns'), name: P('wl') },
    { id: dst, kind: 'service', cluster: 'c2', namespace: S('ns2'), name: A('svc') },
  ],
  edges: [{
    id: `${src}->${dst}`, source: src, target: dst, protocol: 'http', requestRate: 1, errorRate: 0.5, p99Ms: 12,
    security: `mutual_tls${P('sec')}`, crossCluster: true, via: [], denied: 1,
    denials: [{ time: '2026-12-06T10:00:00.000Z', reporter: P('reporter'), reason: S('reason'), policy: P('denial-policy') }],
    policies: [{ name: S('policy'), action: P('action') }],
  } as MeshGraph['edges'][number]],
};
const flow: Flow = {
  time: '2026-12-06T10:00:00.000Z', reporter: P('flow-reporter'), cluster: P('flow-cluster'), kind: 'http', direction: 'waypoint', verdict: 'allowed',
  source: { namespace: P('flow-ns'), workload: S('flow-wl') }, destination: { service: A('flow-svc') },
  method: P('method'), path: `/${P('path')}`, status: 200, security: S('flow-sec'),
} as Flow & { cluster: string };
const denied: Flow = { ...flow, verdict: 'denied', policy: P('flow-policy'), reason: S('flow-reason') };

let browser: Browser | undefined;
let page: Page;
let base: string;
const dialogs: string[] = [];
const server = dashboardServer({
  data: {
    graph: async () => graph,
    nodes: async () => [{ node: P('node'), ip: S('ip'), bpf: { programs: [P('prog')], links: [], pods: [{ podIp: P('pod'), mode: S('mode') }], counters: { [P('counter')]: 1 } } }],
    recentFlows: () => [flow, denied],
    onFlow: () => () => {},
  } as unknown as MeshData,
});

before(async () => {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  browser = await launchChromium();
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on('dialog', (d) => { dialogs.push(d.message()); void d.dismiss(); });
  await page.goto(base);
});

after(async () => {
  await browser?.close();
  server.closeAllConnections();
  server.close();
});

const xss = () => page.evaluate(() => (globalThis as unknown as { __xss?: string[] }).__xss ?? []);
/** Elements the payloads would make, anywhere in the document. */
const injected = () => page.locator('img, svg:not(.lock), script:not([src]), a[href^="javascript"], [id^="xss-"]').count();

test('hostile names, policies and denial reasons in the graph and its detail are shown as text; nothing runs', async () => {
  await until('the edge row is drawn', async () => (await page.locator('#edges tbody tr').count()) === 1, 15_000, { intervalMs: 100 });
  await page.locator('#edges tbody tr').first().click();
  await until('the edge detail lists the denial', async () => ((await page.locator('#edge-denials').textContent()) ?? '').includes('onerror'), 10_000, { intervalMs: 100 });
  const table = (await page.locator('#edges').textContent()) ?? '';
  assert.ok(table.includes(P('wl')) && table.includes(A('svc')) && table.includes(S('policy')), 'the names are shown as they are, as text');
  assert.ok(((await page.locator('#edge-title').textContent()) ?? '').includes(P('ns')));
  assert.ok(((await page.locator('#edge-denials').textContent()) ?? '').includes(S('reason')));
  assert.deepEqual(await xss(), []);
  assert.equal(await injected(), 0, 'no element was made from the data');
  assert.deepEqual(dialogs, []);
});

test('hostile paths, methods and names in the flows view are shown as text; nothing runs', async () => {
  await page.locator('nav button[data-view="flows"]').click();
  await until('both flows are listed', async () => (await page.locator('#flows tbody tr').count()) === 2, 15_000, { intervalMs: 100 });
  const text = (await page.locator('#flows').textContent()) ?? '';
  assert.ok(text.includes(`/${P('path')}`) && text.includes(S('flow-reason')) && text.includes(A('flow-svc')), text);
  assert.deepEqual(await xss(), []);
  assert.equal(await injected(), 0);
  assert.deepEqual(dialogs, []);
});

test('hostile node names and BPF state in the nodes view are shown as text; the page runs under its CSP', async () => {
  await page.locator('nav button[data-view="nodes"]').click();
  await until('the node card is drawn', async () => (await page.locator('.node-card').count()) === 1, 15_000, { intervalMs: 100 });
  assert.ok(((await page.locator('.node-card h2').textContent()) ?? '').includes(P('node')));
  assert.deepEqual(await xss(), []);
  assert.equal(await injected(), 0);
  assert.deepEqual(dialogs, []);
  // Defence in depth: were an element ever made from data, inline handlers would not run.
  const ran = await page.evaluate(`(async () => {
    const d = document.createElement('div');
    d.innerHTML = '<img src=x onerror="window.__csp=1">';
    // The inline handler (registered first) has had its turn once a listener added after it hears
    // the image's error.
    const failed = new Promise((r) => d.firstChild.addEventListener('error', r, { once: true }));
    document.body.append(d);
    await failed;
    d.remove();
    return window.__csp === 1;
  })()`);
  assert.equal(ran, false, 'the content security policy refuses inline handlers');
});
