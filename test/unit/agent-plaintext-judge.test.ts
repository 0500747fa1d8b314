// The agent's judgement of steered plaintext (a connection into an enrolled pod without HBONE:
// LocalDelivery.authorizePlaintext, what agent/src/plaintext.ts asks), from the attacker's side:
// an address is no identity, and a pod's turn to STRICT ends the plaintext already open to it.
import assert from 'node:assert/strict';
import { refusalLineBound } from '../lab/log-bound.ts';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import { DeniedError, LocalDelivery } from '../../agent/src/delivery.ts';
import { AgentMetrics } from '../../agent/src/metrics.ts';
import { AgentState } from '../../agent/src/state.ts';
import type { Logger } from '../../lib/log.ts';
import type { AgentConfig, AuthorizationPolicy, CompiledSource, Workload } from '../../lib/model/mesh.ts';

const TD = 'cluster.local';
function workload(name: string, node: string, ip: string, extra: Partial<Workload> = {}): Workload {
  return {
    uid: `demo/${name}`, name, namespace: 'demo', node, nodeIp: node === 'node1' ? '10.77.0.1' : '10.77.0.2', ip,
    serviceAccount: name, spiffeId: `spiffe://${TD}/ns/demo/sa/${name}`, labels: { app: name },
    enrolled: true, mode: 'PERMISSIVE', services: [], workloadName: name, canonicalService: name, canonicalRevision: 'latest', cluster: 'Kubernetes', ...extra,
  };
}
function policy(name: string, action: AuthorizationPolicy['action'], from: CompiledSource[]): AuthorizationPolicy {
  return { name, namespace: 'demo', action, scope: 'workload', selector: { app: 'echo' }, rules: [{ from, to: [], when: [], layer: 'L4' }], layer: 'L4' };
}

const client = workload('client', 'node1', '10.77.1.1');
const remote = workload('remote', 'node2', '10.77.2.5');
const echo = workload('echo', 'node1', '10.77.1.2');

function setup(policies: AuthorizationPolicy[], workloads: Workload[] = [client, remote, echo]) {
  const state = new AgentState('node1');
  const config: AgentConfig = { node: 'node1', workloads, services: [], policies, peerAuthentications: [], waypoints: [] };
  state.apply(config);
  const lines: string[] = [];
  const log: Logger = { debug() {}, info: (m) => lines.push(m), warn: (m) => lines.push(m), error: (m) => lines.push(m) };
  const metrics = new AgentMetrics();
  const delivery = new LocalDelivery({ state, metrics, log, datapath: { registerPeer() {}, unregisterPeer() { return true; }, tagAgentSocket() {} } });
  return { state, delivery, metrics, lines, config };
}

function judge(s: ReturnType<typeof setup>, port: number, srcIp: string): { delivered: boolean; reason?: string; message?: string } {
  try {
    s.delivery.authorizePlaintext(s.state.localWorkload(echo.ip)!, port, srcIp);
    return { delivered: true };
  } catch (err) {
    if (!(err instanceof DeniedError)) throw err;
    return { delivered: false, reason: err.reason, message: err.message };
  }
}

const denied = async (m: AgentMetrics, reason: string): Promise<number> => (await m.denied.get()).values.filter((v) => v.labels['reason'] === reason).reduce((n, v) => n + v.value, 0);

// docs/SECURITY.md: no address is trusted. An enrolled workload's own connections always carry its
// identity (HBONE, or the same-node path), never steered plaintext: plaintext from its address is
// someone else using it (root on a node with the address on lo; a host on the path). The HBONE path
// refuses the same claim in `forwarded: for=` (identity-mismatch).
test('plaintext from an enrolled workload\'s address is not let in by an ALLOW ipBlocks naming it, on this node or another; a DENY naming it still refuses', async () => {
  for (const victim of [client, remote]) {
    const s = setup([policy('from-ip', 'ALLOW', [{ ipBlocks: [`${victim.ip}/32`] }])]);
    const r = judge(s, 8080, victim.ip);
    assert.equal(r.delivered, false, `plaintext from ${victim.ip} (${victim.node})`);
    assert.match(r.message!, /the address of mesh workload spiffe:\/\/cluster\.local\/ns\/demo\/sa\/\w+, whose own connections carry its identity/);
    assert.equal(await denied(s.metrics, 'policy'), 1, 'counted');
  }
  // An address outside the mesh is judged by it as before.
  const outside = setup([policy('from-ip', 'ALLOW', [{ ipBlocks: ['192.0.2.0/24'] }])]);
  assert.deepEqual(judge(outside, 8080, '192.0.2.7'), { delivered: true });
  // Without policy a PERMISSIVE pod takes plaintext, whoever's address it carries (nothing to fool).
  assert.deepEqual(judge(setup([]), 8080, client.ip), { delivered: true });
  // The DENY side sees the address.
  const deny = setup([policy('not-client', 'DENY', [{ ipBlocks: [`${client.ip}/32`] }])]);
  assert.equal(judge(deny, 8080, client.ip).delivered, false);
});

// Istio turns a STRICT PeerAuthentication into a ztunnel authorization rule
// (convertPeerAuthentication, "istio_converted_static_strict"), and ztunnel closes open
// connections a policy change denies; docs/SECURITY.md: each open delivery, steered plaintext
// included, is judged again at every change.
test('plaintext opened while the pod was PERMISSIVE is closed when it, or its port, turns STRICT, and counted', async () => {
  for (const before of [echo, { ...echo, mode: 'STRICT' as const, portModes: { '8080': 'PERMISSIVE' as const } }]) {
    const s = setup([], [client, remote, before]);
    assert.deepEqual(judge(s, 8080, '192.0.2.7'), { delivered: true });
    const upstream = new PassThrough();
    s.delivery.track({ dest: s.state.localWorkload(echo.ip)!, port: 8080, source: { sourceIp: '192.0.2.7' }, upstream, plaintext: true });
    // A mesh client's delivery to the same pod is not plaintext: it stays.
    const meshed = new PassThrough();
    s.delivery.track({ dest: s.state.localWorkload(echo.ip)!, port: 8080, source: { sourceIp: client.ip, sourcePrincipal: client.spiffeId }, upstream: meshed });
    s.state.apply({ ...s.config, workloads: [client, remote, { ...echo, mode: 'STRICT' }] });
    assert.equal(s.delivery.reauthorize(), 1);
    assert.equal(upstream.destroyed, true);
    assert.equal(meshed.destroyed, false);
    assert.equal(await denied(s.metrics, 'plaintext_strict'), 1);
  }
});

// Anyone who can route to a pod can make the agent refuse: every refusal is counted, the log keeps
// REFUSAL_LOG_PER_SECOND lines a second and says how many it left out.
test('a flood of refused plaintext is counted in full and logged at most REFUSAL_LOG_PER_SECOND lines a second', async () => {
  const s = setup([policy('mesh-only', 'ALLOW', [{ principals: ['*'] }])]);
  const started = Date.now();
  for (let i = 0; i < 2000; i++) assert.equal(judge(s, 8080, `192.0.2.${i % 200}`).delivered, false);
  assert.equal(await denied(s.metrics, 'policy'), 2000);
  assert.ok(s.lines.filter((l) => l === 'connection denied').length <= refusalLineBound(started), `${s.lines.length} lines`);
});
