// The Weft dashboard: polls /api/graph for the service graph and its table, follows /api/flows
// (server-sent events) for live flows, and shows /api/nodes. Plain JavaScript, no build step;
// cytoscape draws the graph. window.weftDashboard exposes the graph for tests and curious users.
'use strict';
const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') n.className = v;
    else if (k.startsWith('data-')) n.setAttribute(k, v);
    else n[k] = v;
  }
  for (const kid of kids) n.append(kid instanceof Node ? kid : document.createTextNode(String(kid ?? '')));
  return n;
};
const fmt = (v, d = 1) => (v === undefined || v === null ? '-' : Number(v).toFixed(d));
const secure = (e) => e.security === 'mutual_tls';
// A node by its id: `namespace/name`, with `cluster: ` in front when the mesh has several clusters.
const nodeOf = (id) => state.graph?.nodes.find((n) => n.id === id);
const multi = () => (state.graph?.clusters.length ?? 0) > 1;
const label = (id) => {
  const n = nodeOf(id);
  if (!n) return id.replace(/^\w+:/, '');
  return `${multi() ? `${n.cluster}: ` : ''}${n.namespace}/${n.name}`;
};
const state = { graph: null, selected: null, paused: false, held: [], view: 'graph' };

// ---- views ----
for (const b of document.querySelectorAll('nav button')) {
  b.addEventListener('click', () => {
    state.view = b.dataset.view;
    for (const x of document.querySelectorAll('nav button')) x.classList.toggle('active', x === b);
    for (const v of document.querySelectorAll('.view')) v.classList.toggle('active', v.id === `view-${state.view}`);
    if (state.view === 'graph') cy.resize();
    if (state.view === 'nodes') loadNodes();
  });
}

// ---- graph ----
const cy = cytoscape({
  container: $('#cy'),
  wheelSensitivity: 0.3,
  style: [
    { selector: 'node', style: { label: 'data(label)', 'font-size': 11, 'text-valign': 'bottom', 'text-margin-y': 4, 'background-color': '#546e7a', width: 22, height: 22 } },
    { selector: 'node[kind = "service"]', style: { shape: 'round-rectangle', 'background-color': '#1565c0' } },
    { selector: 'node[kind = "waypoint"]', style: { shape: 'diamond', 'background-color': '#6a1b9a' } },
    { selector: 'node[kind = "gateway"]', style: { shape: 'hexagon', 'background-color': '#00838f', width: 26, height: 26 } },
    { selector: ':parent', style: { 'background-opacity': 0.06, 'border-color': '#90a4ae', 'border-width': 1, label: 'data(label)', 'text-valign': 'top', 'font-size': 12, shape: 'round-rectangle' } },
    { selector: 'node[kind = "cluster"]', style: { 'background-color': '#1e2a38', 'background-opacity': 0.04, 'border-color': '#1e2a38', 'border-width': 2, 'font-size': 14, 'font-weight': 'bold', padding: 18 } },
    { selector: 'edge', style: { width: 2, 'curve-style': 'bezier', 'target-arrow-shape': 'triangle', label: 'data(label)', 'font-size': 10, 'text-background-color': '#fff', 'text-background-opacity': 0.8, 'text-background-padding': 2 } },
    { selector: 'edge.secure', style: { 'line-color': '#2e7d32', 'target-arrow-color': '#2e7d32' } },
    { selector: 'edge.plain', style: { 'line-color': '#ef6c00', 'target-arrow-color': '#ef6c00', 'line-style': 'dashed' } },
    { selector: 'edge.denied', style: { 'line-color': '#c62828', 'target-arrow-color': '#c62828', width: 3 } },
    { selector: 'edge.via', style: { 'line-style': 'dotted' } },
    { selector: 'edge.cross', style: { 'underlay-color': '#00838f', 'underlay-opacity': 0.25, 'underlay-padding': 5 } },
    { selector: ':selected', style: { 'overlay-opacity': 0.15 } },
  ],
});
window.weftDashboard = { cy, state };

// A padlock, closed (mutual TLS) or open (plaintext), as inline SVG: no emoji font needed.
const SVG = 'http://www.w3.org/2000/svg';
function lockIcon(closed) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', '0 0 16 16');
  svg.setAttribute('width', '14');
  svg.setAttribute('height', '14');
  svg.setAttribute('class', `lock ${closed ? 'secure' : 'plain'}`);
  svg.setAttribute('data-lock', closed ? 'closed' : 'open');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', closed ? 'mutual TLS' : 'plaintext');
  const shackle = document.createElementNS(SVG, 'path');
  shackle.setAttribute('d', closed ? 'M4.5 7V5a3.5 3.5 0 0 1 7 0v2' : 'M4.5 7V5a3.5 3.5 0 0 1 6.8-1.2');
  shackle.setAttribute('fill', 'none');
  shackle.setAttribute('stroke', 'currentColor');
  shackle.setAttribute('stroke-width', '1.6');
  const body = document.createElementNS(SVG, 'rect');
  for (const [k, v] of Object.entries({ x: '2.5', y: '7', width: '11', height: '8', rx: '1.5', fill: 'currentColor' })) body.setAttribute(k, v);
  svg.append(shackle, body);
  return svg;
}

function edgeLabel(e) {
  const lock = secure(e) ? 'mTLS' : 'PLAINTEXT';
  const traffic = e.protocol === 'http'
    ? `${fmt(e.requestRate)} rps ${fmt((e.errorRate ?? 0) * 100, 0)}% p99 ${fmt(e.p99Ms, 0)}ms`
    : `${fmt(e.connectionRate)} conn/s ${fmt((e.bytesRate ?? 0) / 1024)} KiB/s`;
  const cross = e.crossCluster ? `${nodeOf(e.source)?.cluster} → ${nodeOf(e.target)?.cluster} · ` : '';
  return `${cross}${lock} · ${traffic}${e.denied ? ` · ${e.denied} denied` : ''}`;
}

// Compound nodes: with several clusters a box per cluster holding a box per namespace; a
// single-cluster mesh keeps one box per namespace (a lone cluster box would add nothing).
const namespaceBox = (n) => `ns:${n.cluster}/${n.namespace}`;
function boxes(g) {
  const out = [];
  const seen = new Set();
  for (const n of g.nodes) {
    if (multi() && !seen.has(`cluster:${n.cluster}`)) {
      seen.add(`cluster:${n.cluster}`);
      out.push({ group: 'nodes', data: { id: `cluster:${n.cluster}`, label: n.cluster, kind: 'cluster' } });
    }
    if (!seen.has(namespaceBox(n))) {
      seen.add(namespaceBox(n));
      out.push({ group: 'nodes', data: { id: namespaceBox(n), label: n.namespace, kind: 'namespace', ...(multi() ? { parent: `cluster:${n.cluster}` } : {}) } });
    }
  }
  return out;
}

function drawGraph(g) {
  const elements = boxes(g);
  for (const n of g.nodes) elements.push({ group: 'nodes', data: { id: n.id, label: n.name, kind: n.kind, cluster: n.cluster, parent: namespaceBox(n) } });
  for (const e of g.edges) {
    // One segment per hop (caller → waypoint → east-west gateway → service); the first carries the label.
    const cls = [e.denied ? 'denied' : secure(e) ? 'secure' : 'plain', ...(e.crossCluster ? ['cross'] : [])];
    const hops = [e.source, ...e.via, e.target];
    for (let i = 0; i + 1 < hops.length; i++) {
      elements.push({
        group: 'edges', data: { id: i === 0 ? e.id : `${e.id}/via${i}`, source: hops[i], target: hops[i + 1], label: i === 0 ? edgeLabel(e) : '', edge: e.id, cross: String(e.crossCluster) },
        classes: [...cls, ...(i > 0 ? ['via'] : [])].join(' '),
      });
    }
  }
  const ids = new Set(elements.map((x) => x.data.id));
  const before = new Set(cy.elements().map((x) => x.id()));
  const same = ids.size === before.size && [...ids].every((id) => before.has(id));
  cy.batch(() => {
    for (const x of elements) {
      const cur = cy.getElementById(x.data.id);
      if (cur.nonempty() && x.group === 'edges' && (cur.data('source') !== x.data.source || cur.data('target') !== x.data.target)) {
        cur.remove(); // a hop appeared or went (an edge's ends cannot move)
        cy.add(x);
      } else if (cur.nonempty()) {
        // A namespace box goes into its cluster's box when a second cluster appears (and back).
        if (x.group === 'nodes' && (cur.data('parent') ?? null) !== (x.data.parent ?? null)) cur.move({ parent: x.data.parent ?? null });
        cur.data(x.data);
        if (x.group === 'edges') cur.classes(x.classes);
      } else cy.add(x);
    }
    cy.elements().filter((x) => !ids.has(x.id())).remove();
  });
  if (!same) cy.layout({ name: 'preset', positions: positions(g), padding: 30, fit: true }).run();
}

// Callers on the left, waypoints and gateways in the middle, what is called on the right; one
// horizontal band per namespace, the bands of a cluster together, so each box holds only its own.
function positions(g) {
  const hasOut = new Set(g.edges.map((e) => e.source));
  const hasIn = new Set(g.edges.map((e) => e.target));
  const column = (n) => (n.kind === 'waypoint' || n.kind === 'gateway' ? 1 : n.kind === 'service' || (hasIn.has(n.id) && !hasOut.has(n.id)) ? 2 : 0);
  const out = {};
  let band = 0;
  for (const cluster of g.clusters) {
    const mine = g.nodes.filter((n) => n.cluster === cluster);
    for (const ns of [...new Set(mine.map((n) => n.namespace))].sort()) {
      const rows = [0, 0, 0];
      for (const n of mine.filter((x) => x.namespace === ns).sort((a, b) => a.name.localeCompare(b.name))) {
        const c = column(n);
        out[n.id] = { x: 80 + c * 320, y: 60 + (band + rows[c]) * 110 };
        rows[c]++;
      }
      band += Math.max(...rows) + 0.6;
    }
    band += multi() ? 0.5 : 0;
  }
  return out;
}

function drawTable(g) {
  $('#window').textContent = fmt(g.windowSeconds, 0);
  const body = $('#edges tbody');
  body.replaceChildren(...g.edges.map((e) => {
    const tr = el('tr', { class: `edge${e.denied ? ' denied' : ''}${e.crossCluster ? ' cross' : ''}`, 'data-edge': e.id, 'data-security': e.security ?? 'unknown', 'data-denied': String(e.denied), 'data-cross-cluster': String(e.crossCluster) },
      el('td', {}, lockIcon(secure(e))),
      el('td', {}, label(e.source)), el('td', {}, label(e.target)),
      el('td', {}, e.protocol === 'http' ? `${fmt(e.requestRate)} req/s` : `${fmt(e.connectionRate)} conn/s`),
      el('td', {}, e.protocol === 'http' ? `${fmt((e.errorRate ?? 0) * 100, 0)}%` : '-'),
      el('td', {}, e.p99Ms === undefined ? '-' : `${fmt(e.p99Ms, 0)} ms`),
      el('td', {}, e.via.map(label).join(' → ') || '-'),
      el('td', {}, String(e.denied)),
      el('td', {}, e.policies.map((p) => `${p.name} (${p.action}${p.dryRun ? ', dry-run' : ''})`).join(', ') || '-'));
    tr.addEventListener('click', () => select(e.id));
    return tr;
  }));
}

function select(id) {
  state.selected = id;
  const e = state.graph?.edges.find((x) => x.id === id);
  const aside = $('#edge-detail');
  if (!e) { aside.hidden = true; return; }
  aside.hidden = false;
  $('#edge-title').textContent = `${label(e.source)} → ${label(e.target)}`;
  const fig = [
    ['security', secure(e) ? 'mutual TLS' : 'plaintext'],
    ...(e.protocol === 'http' ? [['requests', `${fmt(e.requestRate)}/s`], ['errors', `${fmt((e.errorRate ?? 0) * 100, 1)}%`], ['p99', `${fmt(e.p99Ms, 0)} ms`]] : [['connections', `${fmt(e.connectionRate)}/s`], ['bytes', `${fmt((e.bytesRate ?? 0) / 1024)} KiB/s`]]),
    ...(e.crossCluster ? [['clusters', `${nodeOf(e.source)?.cluster} → ${nodeOf(e.target)?.cluster}`]] : []),
    ...(e.via.length ? [['via', e.via.map(label).join(' → ')]] : []),
  ];
  $('#edge-figures').replaceChildren(...fig.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
  $('#edge-policies').replaceChildren(...(e.policies.length ? e.policies.map((p) => el('li', { class: p.action === 'DENY' && !p.dryRun ? 'verdict-denied' : '' }, `${p.action}${p.dryRun ? ' (dry-run: not enforced)' : ''} ${p.name}`)) : [el('li', {}, 'none: every caller is allowed')]));
  $('#edge-denials').replaceChildren(...(e.denials.length ? e.denials.map((d) => el('li', { class: 'denial' }, `${d.time.slice(11, 19)} ${d.policy ? `policy ${d.policy}: ` : ''}${d.reason ?? 'denied'} (${d.reporter})`)) : [el('li', {}, 'none in the window')]));
}

cy.on('tap', 'edge', (ev) => select(ev.target.data('edge')));

async function refresh() {
  try {
    const res = await fetch('/api/graph');
    if (!res.ok) throw new Error(`${res.status}`);
    state.graph = await res.json();
    drawGraph(state.graph);
    drawTable(state.graph);
    if (state.selected) select(state.selected);
    $('#status').textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    $('#status').textContent = `graph unavailable: ${err.message}`;
  }
}
refresh();
setInterval(refresh, 2000);

// ---- flows ----
let source;
function flowRow(f) {
  const end = (x) => x.service ?? (x.namespace && x.workload ? `${x.namespace}/${x.workload}` : x.workload ?? x.address ?? '?');
  const detail = f.kind === 'http' ? `${f.method ?? ''} ${f.path ?? ''} ${f.status ?? ''}` : `${f.bytesSent ?? 0}B out, ${f.bytesReceived ?? 0}B in`;
  return el('tr', { class: 'flow', 'data-verdict': f.verdict },
    el('td', {}, f.time.slice(11, 23)), el('td', {}, f.cluster ? `${f.cluster}: ${f.reporter}` : f.reporter),
    el('td', { class: `verdict-${f.verdict}` }, f.verdict),
    el('td', {}, end(f.source)), el('td', {}, end(f.destination)),
    el('td', {}, f.verdict === 'allowed' ? `${detail} ${f.security ?? ''}` : `${f.policy ? `policy ${f.policy}: ` : ''}${f.reason ?? ''}`));
}
function addFlows(list) {
  const body = $('#flows tbody');
  for (const f of list) body.prepend(flowRow(f));
  while (body.children.length > 500) body.lastChild.remove();
}
function follow() {
  source?.close();
  const q = new URLSearchParams({ recent: '1' });
  for (const [k, v] of new FormData($('#flow-filters'))) if (v) q.set(k, String(v));
  $('#flows tbody').replaceChildren();
  source = new EventSource(`/api/flows?${q}`);
  source.onmessage = (m) => {
    const f = JSON.parse(m.data);
    if (state.paused) { state.held.push(f); $('#held').textContent = `${state.held.length} new while paused`; }
    else addFlows([f]);
  };
}
$('#flow-filters').addEventListener('change', follow);
$('#pause').addEventListener('click', () => {
  state.paused = !state.paused;
  $('#pause').textContent = state.paused ? 'Resume' : 'Pause';
  if (!state.paused) { addFlows(state.held); state.held = []; $('#held').textContent = ''; }
});
follow();

// ---- nodes ----
async function loadNodes() {
  const res = await fetch('/api/nodes');
  const nodes = await res.json();
  $('#nodes').replaceChildren(...nodes.map((n) => {
    const b = n.bpf ?? {};
    return el('div', { class: 'node-card', 'data-node': n.node },
      el('h2', {}, `${n.node} (${n.ip})`),
      el('p', {}, `${(b.programs ?? []).length} programs, ${(b.links ?? []).length} links, ${(b.pods ?? []).length} enrolled pods`),
      el('h3', {}, 'Enrolled pods'),
      el('ul', {}, ...(b.pods ?? []).map((p) => el('li', {}, `${p.podIp} ${p.mode}`))),
      el('h3', {}, 'Counters'),
      el('pre', {}, JSON.stringify(b.counters ?? b.error ?? {}, null, 1)));
  }));
}
