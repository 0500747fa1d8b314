// Local delivery into a pod's network namespace under load, with real sockets in a lab netns: the
// agent's source ports come from its own cursor over the pod's ephemeral range (the kernel's pick
// scans half the range once more than half is taken), and connects to a pod whose application
// does not accept are bounded: past the bound they are refused at once, named, instead of each
// holding a port and a tunnel until its timeout.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync } from 'node:fs';
import type { Duplex } from 'node:stream';
import { Lab, type Netns } from '../lab/lab.ts';
import { createSocketInNetns } from '../../agent/libbpf/index.ts';
import { DEFAULT_MAX_PENDING_CONNECTS, LocalDelivery } from '../../agent/src/delivery.ts';
import { OverloadedError } from '../../agent/src/connect.ts';
import { AgentState } from '../../agent/src/state.ts';
import { AgentMetrics } from '../../agent/src/metrics.ts';
import { silentLogger } from '../../lib/log.ts';
import type { Workload } from '../../lib/model/mesh.ts';

const POD_IP = '10.79.0.5';
const PORT = 7000;
let lab: Lab;
const fds: number[] = [];
const sockets: Duplex[] = [];

before(() => {
  lab = new Lab();
});

/** A pod's namespace: loopback up, the pod's address on it, an ephemeral range of 1,000 ports. */
function podNetns(name: string): Netns {
  const ns = lab.netns(name);
  ns.exec('ip', 'link', 'set', 'lo', 'up');
  ns.exec('ip', 'addr', 'add', `${POD_IP}/32`, 'dev', 'lo');
  ns.exec('sysctl', '-qw', 'net.ipv4.ip_local_port_range=42000 42999');
  return ns;
}

after(async () => {
  for (const s of sockets) s.destroy();
  for (const fd of fds) closeSync(fd);
  await lab?.cleanup();
});

function delivery(ns: Netns, maxPendingConnects?: number): { d: LocalDelivery; pod: Workload } {
  const pod = {
    uid: 'load/sink', name: 'sink', namespace: 'load', node: 'node1', ip: POD_IP, serviceAccount: 'sink',
    spiffeId: 'spiffe://cluster.local/ns/load/sa/sink', labels: {}, enrolled: true, mode: 'STRICT', services: [],
  } as unknown as Workload;
  const state = new AgentState('node1');
  state.apply({ node: 'node1', workloads: [pod], services: [], policies: [], peerAuthentications: [], waypoints: [] });
  const d = new LocalDelivery({
    state, metrics: new AgentMetrics(), log: silentLogger,
    datapath: { registerPeer: () => {}, unregisterPeer: () => true, tagAgentSocket: () => {} },
    ...(maxPendingConnects !== undefined ? { maxPendingConnects } : {}),
  });
  d.podEnrolled(POD_IP, ns.path);
  return { d, pod };
}

test('a pod whose application does not accept gets at most maxPendingConnects connects waiting; the next is refused at once, naming the pod and the bound; once they end, connects are tried again', async () => {
  assert.equal(DEFAULT_MAX_PENDING_CONNECTS, 4096);
  // An application that listens and never accepts, with the smallest queue the kernel allows: one
  // connection completes into the queue, the SYNs after it are dropped and retransmitted.
  const ns = podNetns('pending');
  fds.push(createSocketInNetns(ns.path, { listen: { host: POD_IP, port: PORT, backlog: 0 } }));
  const { d, pod } = delivery(ns, 3);
  const client = { ip: '10.79.9.9', port: 5555 };
  const first = await d.connectToPod(pod, PORT, client, 2_000);
  sockets.push(first);
  const waiting = [1, 2, 3].map(() => d.connectToPod(pod, PORT, client, 1_500).then((s) => { sockets.push(s); return 'connected'; }, (e: Error & { code?: string }) => e.code ?? e.message));
  const started = performance.now();
  const refused = await d.connectToPod(pod, PORT, client, 1_500).then(() => 'connected', (e: unknown) => e);
  assert.ok(refused instanceof OverloadedError, String(refused));
  assert.ok(performance.now() - started < 1_000, 'refused at once, not after the timeout');
  assert.equal(refused.code, 'WEFT_OVERLOADED');
  assert.match(refused.message, new RegExp(`cannot connect to ${POD_IP.replaceAll('.', '\\.')}:${PORT}: 3 connections to pod load/sink are waiting for it to accept \\(the agent allows 3\\)`));
  // The three that waited time out (nothing accepts); the bound is free again.
  assert.deepEqual(await Promise.all(waiting), ['WEFT_UPSTREAM_CONNECT', 'WEFT_UPSTREAM_CONNECT', 'WEFT_UPSTREAM_CONNECT']);
  const again = await d.connectToPod(pod, PORT, client, 300).then(() => 'connected', (e: Error & { code?: string }) => e.code);
  assert.equal(again, 'WEFT_UPSTREAM_CONNECT', 'tried (and timed out), not refused as overloaded');
});

test('the pod enrolled again in the same namespace (a reconcile, an enrolment retry) keeps its pending count: the limit still refuses the next connect at once', async () => {
  // Before, podEnrolled replaced the pod's entry, pending 0: a reconcile every second (an agent
  // retrying a squatted plaintext listener) lifted the limit every second.
  const ns = podNetns('pending-again');
  fds.push(createSocketInNetns(ns.path, { listen: { host: POD_IP, port: PORT, backlog: 0 } }));
  const { d, pod } = delivery(ns, 2);
  const client = { ip: '10.79.9.9', port: 5555 };
  sockets.push(await d.connectToPod(pod, PORT, client, 2_000));
  const waiting = [1, 2].map(() => d.connectToPod(pod, PORT, client, 1_500).then((s) => { sockets.push(s); return 'connected'; }, (e: Error & { code?: string }) => e.code ?? e.message));
  d.podEnrolled(POD_IP, ns.path);
  const started = performance.now();
  const refused = await d.connectToPod(pod, PORT, client, 1_500).then(() => 'connected', (e: unknown) => e);
  assert.ok(refused instanceof OverloadedError, `not refused as overloaded: ${String(refused)}`);
  assert.ok(performance.now() - started < 1_000, 'refused at once, not after the timeout');
  await Promise.all(waiting);
});

test('source ports come from the pod\'s own ephemeral range, in turn, also when most of it is taken', async () => {
  const ns = podNetns('ports');
  const { d, pod } = delivery(ns);
  const listener = createSocketInNetns(ns.path, { listen: { host: POD_IP, port: PORT + 1, backlog: 4096 } });
  fds.push(listener);
  // Take 900 of the range's 1,000 ports with sockets bound and left unconnected.
  const held: number[] = [];
  for (let p = 42000; p < 42900; p++) held.push(createSocketInNetns(ns.path, { bind: { host: POD_IP, port: p } }));
  fds.push(...held);
  const ports = new Set<number>();
  for (let i = 0; i < 50; i++) {
    const s = await d.connectToPod(pod, PORT + 1, { ip: '10.79.9.9', port: 6000 + i }, 2_000);
    sockets.push(s);
    const local = (s as unknown as { localPort: number }).localPort;
    assert.ok(local >= 42900 && local <= 42999, `port ${local} is one of the free ones`);
    ports.add(local);
  }
  assert.equal(ports.size, 50, 'every connection has its own port');
});
