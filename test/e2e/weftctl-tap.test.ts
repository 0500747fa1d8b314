// weftctl tap on a running local mesh (`weftctl up`, whose demo client calls echo a few times a
// second): flows stream from every agent, filters pick by namespace, workload and verdict, a DENY
// shows as denied naming its policy, and a watcher that stops reading never stalls an agent.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import net from 'node:net';
import { Lab } from '../lab/lab.ts';
import { until } from '../lab/wait.ts';
import { destroyLocalNetwork } from '../../cli/local/network.ts';
import { readState, type LocalState } from '../../cli/local/up.ts';
import { getJsonInNetns } from '../../cli/local/netns-http.ts';
import { createSocketInNetns } from '../../agent/libbpf/index.ts';
import type { Flow } from '../../cli/flows.ts';
import { collectOutput } from '../../lib/sys/exec.ts';
import { weftctl } from './weftctl-run.ts';

const lab = new Lab();
const stateDir = mkdtempSync(join(tmpdir(), 'weft-tap-'));
const common = ['--prefix', lab.id, '--state-dir', stateDir];
let st: LocalState;

before(async () => {
  const up = await weftctl(['up', ...common]);
  assert.equal(up.code, 0, `${up.out}\n${up.err}`);
  st = readState(stateDir)!;
});
after(async () => {
  await destroyLocalNetwork(lab.id);
  await lab.cleanup();
  rmSync(stateDir, { recursive: true, force: true });
});

const flows = (out: string) => out.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Flow);

test('tap streams the demo client\'s connections, filtered by namespace and workload, as JSON lines', async () => {
  const r = await weftctl(['tap', ...common, '-n', 'demo', '--workload', 'echo', '--count', '4', '--duration', '30', '-o', 'json']);
  assert.equal(r.code, 0, r.err);
  const got = flows(r.out);
  assert.equal(got.length, 4, r.out);
  for (const f of got) {
    assert.equal(f.verdict, 'allowed', JSON.stringify(f));
    assert.ok([f.source.namespace, f.destination.namespace].includes('demo') || f.destination.address?.startsWith('10.96.0.10'), JSON.stringify(f));
  }
  assert.ok(got.some((f) => f.reporter === 'agent node1' && f.direction === 'outbound'), 'the source agent reports');
  const line = await weftctl(['tap', ...common, '-n', 'shop', '--count', '1', '--duration', '30']);
  assert.equal(line.code, 0, line.err);
  assert.match(line.out, /ALLOWED\s+.*→/, 'one line per flow for people');
});

test('with a DENY on echo for the client, tap --verdict denied shows the refusals naming the policy', async () => {
  const file = join(stateDir, 'deny.yaml');
  writeFileSync(file, [
    'apiVersion: weft.dev/v1alpha1', 'kind: AuthorizationPolicy', 'metadata: {name: deny-client, namespace: demo}',
    'spec:', '  selector: {matchLabels: {app: echo}}', '  action: DENY', '  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]', '',
  ].join('\n'));
  const applied = await weftctl(['apply', ...common, '-f', file]);
  assert.equal(applied.code, 0, applied.err);
  try {
    const r = await weftctl(['tap', ...common, '--verdict', 'denied', '--workload', 'echo', '--count', '2', '--duration', '40', '-o', 'json']);
    assert.equal(r.code, 0, r.err);
    const got = flows(r.out);
    assert.equal(got.length, 2, r.out);
    for (const f of got) assert.equal(f.verdict, 'denied');
    assert.ok(got.some((f) => f.policy === 'demo/deny-client' || /deny-client/.test(f.reason ?? '')), `the policy is named: ${r.out}`);
  } finally {
    const del = await weftctl(['delete', ...common, '-f', file]);
    assert.equal(del.code, 0, del.err);
  }
});

test('a watcher that never reads does not stall the agent: 500 concurrent connections still complete and its admin port answers', async () => {
  const node2 = st.nodes.find((n) => n.name === 'node2')!;
  const netns = `/var/run/netns/${node2.netns}`;
  const stuck = new net.Socket({ fd: createSocketInNetns(netns, { bind: { host: '0.0.0.0', port: 0 } }), readable: true, writable: true });
  stuck.connect(15000, '127.0.0.1');
  stuck.write('GET /flows HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n');
  stuck.pause();
  stuck.on('error', () => {});
  try {
    await until('the stuck watcher is registered', async () => (await getJsonInNetns<{ flows: { watchers: number } }>(netns, 'http://127.0.0.1:15000/stats')).flows.watchers >= 1, 10_000);
    const before = (await getJsonInNetns<{ flows: { published: number } }>(netns, 'http://127.0.0.1:15000/stats')).flows.published;
    const client = st.pods.find((p) => p.namespace === 'demo' && p.name === 'client')!;
    const node1 = st.nodes.find((n) => n.name === client.node)!;
    const cgroup = join(node1.cgroup, 'pods', 'demo_client');
    const { spawn } = await import('node:child_process');
    const child = spawn('sh', ['-c', `echo $$ > "${cgroup}/cgroup.procs" && exec nsenter --net=/var/run/netns/${client.netns} "${process.execPath}" "${join(import.meta.dirname, 'fixtures', 'concurrent.ts')}" --host 10.96.0.10 --port 80 --count 500`]);
    const r = await collectOutput(child, 120_000);
    const res = JSON.parse(r.stdout.trim()) as { connected: number; answered: number };
    assert.deepEqual({ connected: res.connected, answered: res.answered }, { connected: 500, answered: 500 }, r.stderr);
    const after = (await getJsonInNetns<{ flows: { published: number; watchers: number } }>(netns, 'http://127.0.0.1:15000/stats')).flows;
    assert.ok(after.published - before >= 500, `node2 published the inbound flows meanwhile (${after.published - before})`);
  } finally {
    stuck.destroy();
  }
});
