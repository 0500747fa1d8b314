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
  const records: Array<{ msg: string; fields: Record<string, unknown> | undefined }> = [];
  const push = (m: string, f?: Record<string, unknown>) => { lines.push(m); records.push({ msg: m, fields: f }); };
  const log: Logger = { debug() {}, info: push, warn: push, error: push };
  const metrics = new AgentMetrics();
  const delivery = new LocalDelivery({ state, metrics, log, datapath: { registerPeer() {}, unregisterPeer() { return true; }, tagAgentSocket() {} } });
  return { state, delivery, metrics, lines, records, config };
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

// One judgement, one count, one line: the refusal of plaintext from a mesh workload's address says
// whose address it came from, as every 'connection denied' line names its source, and an AUDIT
// policy's match is logged once (Istio: AUDIT never decides; each match is one log entry).
test('plaintext from a mesh workload\'s address refused by the ALLOW side is counted once and logged once, naming its source', async () => {
  const audit: AuthorizationPolicy = { ...policy('watch', 'AUDIT', []), rules: [{ from: [], to: [], when: [], layer: 'L4' }] };
  const s = setup([policy('from-ip', 'ALLOW', [{ ipBlocks: [`${client.ip}/32`] }]), audit]);
  assert.equal(judge(s, 8080, client.ip).delivered, false);
  assert.equal(await denied(s.metrics, 'policy'), 1);
  const deniedLines = s.records.filter((r) => r.msg === 'connection denied');
  assert.equal(deniedLines.length, 1, JSON.stringify(s.records));
  assert.equal(deniedLines[0]!.fields?.['source'], client.ip);
  assert.match(String(deniedLines[0]!.fields?.['reason']), /the address of mesh workload/);
  assert.equal(s.records.filter((r) => r.msg === 'connection audited').length, 1, 'audited once');
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
    s.delivery.track({ dest: s.state.localWorkload(echo.ip)!, port: 8080, source: { sourceIp: '192.0.2.7' }, upstream, plaintext: true, judgedAt: s.state.version });
    // A mesh client's delivery to the same pod is not plaintext: it stays.
    const meshed = new PassThrough();
    s.delivery.track({ dest: s.state.localWorkload(echo.ip)!, port: 8080, source: { sourceIp: client.ip, sourcePrincipal: client.spiffeId }, upstream: meshed, judgedAt: s.state.version });
    s.state.apply({ ...s.config, workloads: [client, remote, { ...echo, mode: 'STRICT' }] });
    // Only the workloads changed (the mode is compiled into them), as the agent says.
    assert.equal(s.delivery.reauthorize({ workloads: true }), 1);
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

// ztunnel re-judges its connections when the policies change (istio/ztunnel proxy/connection_manager.rs,
// ConnectionManager::close on a policy update); what else a verdict here rests on is the pod itself
// (labels pick its policies, its mode) and, for plaintext, whose address the client's is. A push
// that changes only another workload judges nothing again: an AUDIT policy logs each evaluation.
test('a workload change re-judges only the deliveries it concerns: none for an unrelated pod, and a now-denied one is closed', async () => {
  const audit: AuthorizationPolicy = { ...policy('watch', 'AUDIT', []), rules: [{ from: [], to: [], when: [], layer: 'L4' }] };
  const locked: AuthorizationPolicy = { ...policy('locked', 'DENY', []), selector: { app: 'echo', tier: 'locked' }, rules: [{ from: [], to: [], when: [], layer: 'L4' }] };
  const s = setup([audit, locked]);
  const evaluations = () => s.records.filter((r) => r.msg === 'connection audited').length;
  const meshed = new PassThrough();
  s.delivery.track({ dest: s.state.localWorkload(echo.ip)!, port: 8080, source: { sourceIp: client.ip, sourcePrincipal: client.spiffeId }, upstream: meshed, judgedAt: s.state.version });
  const plain = new PassThrough();
  s.delivery.track({ dest: s.state.localWorkload(echo.ip)!, port: 8080, source: { sourceIp: '192.0.2.7' }, upstream: plain, plaintext: true, judgedAt: s.state.version });
  // Another pod's labels change: nothing to judge again.
  s.state.apply({ ...s.config, workloads: [client, { ...remote, labels: { app: 'remote', v: '2' } }, echo] });
  assert.equal(s.delivery.reauthorize({ workloads: true }), 0);
  assert.equal(evaluations(), 0, 'no evaluation for an unrelated workload change');
  // The client's address becomes a mesh workload's: the plaintext one is judged again (and passes), not the meshed one.
  const impostor = workload('moved', 'node2', '192.0.2.7');
  s.state.apply({ ...s.config, workloads: [client, remote, echo, impostor] });
  assert.equal(s.delivery.reauthorize({ workloads: true }), 0);
  assert.equal(evaluations(), 1, 'the plaintext delivery whose client address changed owner');
  // The destination's labels now select the DENY: both are closed, and counted.
  s.state.apply({ ...s.config, workloads: [client, remote, { ...echo, labels: { app: 'echo', tier: 'locked' } }, impostor] });
  assert.equal(s.delivery.reauthorize({ workloads: true }), 2);
  assert.equal(meshed.destroyed, true);
  assert.equal(plain.destroyed, true);
  assert.equal(await denied(s.metrics, 'policy'), 2);
  // A policy change judges every open delivery, whatever changed.
  const s2 = setup([audit]);
  s2.delivery.track({ dest: s2.state.localWorkload(echo.ip)!, port: 8080, source: { sourceIp: client.ip, sourcePrincipal: client.spiffeId }, upstream: new PassThrough(), judgedAt: s2.state.version });
  assert.equal(s2.delivery.reauthorize({ policies: true }), 0);
  assert.equal(s2.records.filter((r) => r.msg === 'connection audited').length, 1);
});
