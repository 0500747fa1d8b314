import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { parseAllDocuments } from 'yaml';
import { AGENT_CGROUP_PROGRAMS, checkMesh, type MeshFacts } from '../../cli/check.ts';
import { checkCommand } from '../../cli/commands/check.ts';
import { labelNamespace, leastLoadedNode, waypointPods } from '../../cli/local/waypoints.ts';
import type { LocalState } from '../../cli/local/up.ts';

const NOW = Date.parse('2026-11-25T12:00:00Z');
const hours = (h: number) => new Date(NOW + h * 3600_000).toISOString();

function healthy(): MeshFacts {
  return {
    now: NOW,
    logDir: '/state/logs',
    controller: { ready: true, detail: 'ready' },
    agents: ['node1', 'node2'].map((node) => ({
      node, ready: true, detail: 'ready',
      certificates: [{ identity: `spiffe://cluster.local/node/${node}`, notAfter: hours(20) }],
      links: AGENT_CGROUP_PROGRAMS.map((program, id) => ({ program, id })),
    })),
    waypoints: [{ namespace: 'shop', name: 'waypoint', ready: true }],
  };
}

const failing = (f: MeshFacts) => checkMesh(f).filter((r) => r.status !== 'pass');

test('a healthy mesh passes every check: controller, each agent, its links and certificates, each waypoint', () => {
  const r = checkMesh(healthy());
  assert.deepEqual(r.map((x) => `${x.id}:${x.status}`), [
    'mesh.controller:pass',
    'mesh.agent.node1:pass', 'mesh.bpf.node1:pass', 'mesh.certs.node1:pass',
    'mesh.agent.node2:pass', 'mesh.bpf.node2:pass', 'mesh.certs.node2:pass',
    'mesh.waypoint.shop.waypoint:pass',
  ]);
});

test('an unready agent fails and points at its log', () => {
  const f = healthy();
  f.agents[1]!.ready = false;
  f.agents[1]!.detail = 'waiting for config';
  const [r] = failing(f);
  assert.equal(r?.id, 'mesh.agent.node2');
  assert.equal(r?.status, 'fail');
  assert.match(r?.status === 'fail' ? r.remedy : '', /\/state\/logs\/agent-node2\.log/);
});

test('a missing cgroup link fails naming the program and how to list links', () => {
  const f = healthy();
  f.agents[0]!.links = f.agents[0]!.links!.filter((l) => l.program !== 'weft_connect4');
  const [r] = failing(f);
  assert.equal(r?.id, 'mesh.bpf.node1');
  assert.match(r?.detail ?? '', /weft_connect4/);
  assert.match(r?.status === 'fail' ? r.remedy : '', /weftctl bpf --node node1/);
});

test('a certificate within 2 h of expiry warns, an expired one fails, each naming the identity', () => {
  const f = healthy();
  f.agents[0]!.certificates!.push({ identity: 'spiffe://cluster.local/ns/shop/sa/reviews', notAfter: hours(1) });
  let [r] = failing(f);
  assert.equal(r?.status, 'warn');
  assert.match(r?.detail ?? '', /ns\/shop\/sa\/reviews expires in 60 min/);
  f.agents[0]!.certificates!.push({ identity: 'spiffe://cluster.local/ns/shop/sa/old', notAfter: hours(-1) });
  [r] = failing(f);
  assert.equal(r?.status, 'fail');
  assert.match(r?.detail ?? '', /ns\/shop\/sa\/old expired/);
});

test('an unready waypoint and a controller that does not answer fail with what to do', () => {
  const f = healthy();
  f.controller = { ready: false, detail: 'no answer' };
  f.waypoints[0] = { namespace: 'shop', name: 'waypoint', ready: false, reason: 'no waypoint pod runs' };
  const r = failing(f);
  assert.deepEqual(r.map((x) => x.id), ['mesh.controller', 'mesh.waypoint.shop.waypoint']);
  assert.match(r[1]?.status === 'fail' ? r[1].remedy : '', /weftctl waypoint apply -n shop/);
});

test('agents whose admin did not answer get no certificate or link verdict beyond their readiness', () => {
  const f = healthy();
  f.agents[0] = { node: 'node1', ready: false, detail: 'no answer' };
  assert.deepEqual(checkMesh(f).filter((x) => x.id.endsWith('node1')).map((x) => x.id), ['mesh.agent.node1']);
});

test('check --mesh without a running mesh fails and says how to start one', async () => {
  let out = '';
  let code = -1;
  const dir = mkdtempSync(join(tmpdir(), 'weft-check-'));
  try {
    const io = { out: (s: string) => { out += s; }, err: () => {}, setExitCode: (c: number) => { code = c; } };
    await checkCommand(io as never).parseAsync(['--mesh', '--prefix', 'nosuchmesh', '--state-dir', dir], { from: 'user' });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  assert.equal(code, 1);
  assert.match(out, /no local mesh "nosuchmesh" runs[\s\S]*weftctl up/);
});

const state = (pods: Array<[string, string, string]>): LocalState => ({
  prefix: 'x', stateDir: '/s', startedAt: '', services: [],
  nodes: ['node1', 'node2'].map((name, i) => ({ name, ip: `10.77.0.${i + 1}`, netns: `x-${name}`, pinRoot: '', cgroup: '' })),
  pods: pods.map(([namespace, name, node]) => ({ namespace, name, node, ip: '10.77.1.1', netns: `x-${namespace}-${name}` })),
});

test('waypoint pods are <name>-<i> of the namespace, in replica order, and a new one goes to the node with the fewest pods', () => {
  const st = state([['shop', 'waypoint-1', 'node1'], ['shop', 'waypoint-0', 'node2'], ['shop', 'waypoint-extra', 'node1'], ['demo', 'waypoint-0', 'node1'], ['shop', 'waypoint-10', 'node1']]);
  assert.deepEqual(waypointPods(st, 'shop', 'waypoint').map((p) => p.name), ['waypoint-0', 'waypoint-1', 'waypoint-10']);
  assert.equal(leastLoadedNode(st), 'node2');
  assert.equal(leastLoadedNode(state([])), 'node1');
});

test('enrolling a namespace labels it in the file that declares it, leaving the other objects there; unknown namespaces get a file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-label-'));
  try {
    writeFileSync(join(dir, '10-ns.yaml'), 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    weft.dev/dataplane-mode: ambient\n');
    assert.equal(labelNamespace(dir, 'shop', 'weft.dev/use-waypoint', 'waypoint'), join(dir, '10-ns.yaml'));
    const objs = parseAllDocuments(readFileSync(join(dir, '10-ns.yaml'), 'utf8')).map((d) => d.toJS());
    assert.deepEqual(objs.map((o) => [o.metadata.name, o.metadata.labels]), [['demo', undefined], ['shop', { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'waypoint' }]]);
    assert.equal(labelNamespace(dir, 'shop', 'weft.dev/use-waypoint', 'waypoint'), undefined, 'already labelled: nothing written');
    labelNamespace(dir, 'other', 'weft.dev/use-waypoint', 'wp');
    assert.deepEqual(readdirSync(dir).sort(), ['10-ns.yaml', 'namespace-other.yaml']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('inbound enforcement: IPv6 refusals and inbound-excluded ports warn, a missing kubelet cgroup warns, otherwise it passes', () => {
  const f = healthy();
  f.agents[0]!.inbound = { ipv6Refused: 0, kubeletCgroups: 1, inboundExcludedPorts: [] };
  f.agents[1]!.inbound = { ipv6Refused: 3, kubeletCgroups: 0, inboundExcludedPorts: [9090] };
  const r = checkMesh(f);
  const by = (id: string) => r.find((x) => x.id === id)!;
  assert.equal(by('mesh.ipv6.node1').status, 'pass');
  assert.equal(by('mesh.inbound.node1').status, 'pass');
  const v6 = by('mesh.ipv6.node2');
  assert.equal(v6.status, 'warn');
  assert.match(v6.detail, /3 IPv6 connection attempts refused/);
  const open = by('mesh.inbound.node2');
  assert.equal(open.status, 'warn');
  assert.match(open.detail, /9090/);
  f.agents[1]!.inbound = { ipv6Refused: 0, kubeletCgroups: 0, inboundExcludedPorts: [] };
  const noKubelet = checkMesh(f).find((x) => x.id === 'mesh.inbound.node2')!;
  assert.equal(noKubelet.status, 'warn');
  assert.match(noKubelet.status === 'warn' ? noKubelet.remedy : '', /--kubelet-cgroup/);
});
