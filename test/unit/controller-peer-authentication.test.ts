// PeerAuthentication semantics against Istio's, from the controller's compile to the agent's
// judgement of plaintext. Istio's rules: the PeerAuthentication reference
// (https://istio.io/latest/docs/reference/config/security/peer_authentication/), its validation
// (istio/istio pkg/config/validation ValidatePeerAuthentication) and the ambient conversion
// (pilot/pkg/serviceregistry/kube/controller/ambient/policies.go convertedSelectorPeerAuthentications,
// convertPeerAuthentication): a selector without labels is no selector (namespace-wide, mesh-wide
// in the root namespace); at each level only the oldest policy counts; UNSET inherits from the
// level above; DISABLE is PERMISSIVE to ztunnel, which enforces only STRICT.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DeniedError, LocalDelivery } from '../../agent/src/delivery.ts';
import { AgentMetrics } from '../../agent/src/metrics.ts';
import { AgentState } from '../../agent/src/state.ts';
import { compile, emptyInputs } from '../../controller/src/compile.ts';
import type { Logger } from '../../lib/log.ts';
import type { AgentConfig } from '../../lib/model/mesh.ts';
import type { PeerAuthentication } from '../../lib/model/objects.ts';
import { validateObject } from '../../lib/model/validate.ts';
import { ns, pod } from './controller-fixtures.ts';

const ROOT = 'weft-system';
let age = 0;
/** A PeerAuthentication created after every one before it (the age decides between equals). */
function pa(namespace: string, name: string, spec: PeerAuthentication['spec']): PeerAuthentication {
  const creationTimestamp = new Date(Date.UTC(2026, 0, 1, 0, 0, age++)).toISOString();
  return { apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name, namespace, creationTimestamp }, ...(spec ? { spec } : {}) };
}

/** Compiles one ambient pod `shop/db` (app=db) under the policies and hands its node's config to an agent. */
function mesh(policies: PeerAuthentication[]) {
  const inputs = emptyInputs();
  inputs.namespaces.push(ns(ROOT), ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  inputs.pods.push(pod('shop', 'db', { labels: { app: 'db' }, ip: '10.1.9.9' }));
  inputs.peerAuthentications.push(...policies);
  const { model } = compile(inputs);
  const state = new AgentState('node-a');
  const config: AgentConfig = { node: 'node-a', workloads: [...model.workloads.values()], services: [], policies: [], peerAuthentications: [...model.peerAuthentications.values()], waypoints: [] };
  state.apply(config);
  const lines: Array<{ msg: string; fields: Record<string, unknown> | undefined }> = [];
  const log: Logger = { debug() {}, info: (msg, fields) => lines.push({ msg, fields }), warn: (msg, fields) => lines.push({ msg, fields }), error: (msg, fields) => lines.push({ msg, fields }) };
  const metrics = new AgentMetrics();
  const delivery = new LocalDelivery({ state, metrics, log, datapath: { registerPeer() {}, unregisterPeer() { return true; }, tagAgentSocket() {} } });
  const db = state.localWorkload('10.1.9.9')!;
  return { model, state, db, delivery, metrics, lines };
}

/** Plaintext from a node process (no identity) to shop/db on `port`: delivered, or the refusal's reason. */
function plaintext(m: ReturnType<typeof mesh>, port: number): string {
  try {
    m.delivery.authorizePlaintext(m.db, port, '192.168.0.1');
    return 'delivered';
  } catch (err) {
    if (!(err instanceof DeniedError)) throw err;
    return err.reason;
  }
}

const strictRefusals = async (m: ReturnType<typeof mesh>): Promise<number> =>
  (await m.metrics.denied.get()).values.filter((v) => v.labels['reason'] === 'plaintext_strict').reduce((n, v) => n + v.value, 0);

test('a root-namespace PeerAuthentication whose selector has no labels is mesh-wide, as in Istio: STRICT holds in every namespace, and plaintext is refused, counted and named', async () => {
  for (const selector of [{}, { matchLabels: {} }]) {
    const m = mesh([pa(ROOT, 'mesh-strict', { selector, mtls: { mode: 'STRICT' } })]);
    assert.equal(m.model.peerAuthentications.get(`${ROOT}/mesh-strict`)?.scope, 'mesh', JSON.stringify(selector));
    assert.equal(m.db.mode, 'STRICT', `selector ${JSON.stringify(selector)} in the root namespace`);
    assert.equal(plaintext(m, 5432), 'plaintext_strict');
    assert.equal(await strictRefusals(m), 1, 'counted');
    const line = m.lines.find((l) => l.msg === 'connection denied');
    assert.equal(line?.fields?.['destination'], 'shop/db:5432', 'the refusal names the pod and port');
  }
});

test('a namespace PeerAuthentication whose selector has no labels is namespace-wide: the oldest namespace-wide policy decides, not the younger one with an empty selector', () => {
  const m = mesh([
    pa('shop', 'ns-strict', { mtls: { mode: 'STRICT' } }),
    pa('shop', 'everyone-permissive', { selector: { matchLabels: {} }, mtls: { mode: 'PERMISSIVE' } }),
  ]);
  assert.equal(m.model.peerAuthentications.get('shop/everyone-permissive')?.scope, 'namespace');
  assert.equal(m.db.mode, 'STRICT', 'a younger namespace-wide policy does not loosen the older one');
  assert.equal(plaintext(m, 5432), 'plaintext_strict');
});

test('at each level only the oldest PeerAuthentication counts: one without a mode (or UNSET) inherits from the level above, not from a younger policy of its own level', () => {
  for (const spec of [undefined, {}, { mtls: { mode: 'UNSET' as const } }]) {
    const m = mesh([
      pa(ROOT, 'mesh-strict', { mtls: { mode: 'STRICT' } }),
      pa('shop', 'inherit', spec),
      pa('shop', 'later-permissive', { mtls: { mode: 'PERMISSIVE' } }),
    ]);
    assert.equal(m.db.mode, 'STRICT', `oldest namespace policy ${JSON.stringify(spec)} inherits the mesh's STRICT`);
    assert.equal(plaintext(m, 5432), 'plaintext_strict');
  }
  // The same at the workload level: the oldest selecting policy counts.
  const w = mesh([
    pa('shop', 'ns-strict', { mtls: { mode: 'STRICT' } }),
    pa('shop', 'db-inherit', { selector: { matchLabels: { app: 'db' } }, mtls: { mode: 'UNSET' } }),
    pa('shop', 'db-permissive', { selector: { matchLabels: { app: 'db' } }, mtls: { mode: 'PERMISSIVE' } }),
  ]);
  assert.equal(w.db.mode, 'STRICT');
});

test('UNSET and DISABLE are accepted as in Istio: an UNSET workload policy with a STRICT port enforces that port; DISABLE is PERMISSIVE; a port written UNSET inherits', async () => {
  const unset = pa('shop', 'db-port', { selector: { matchLabels: { app: 'db' } }, mtls: { mode: 'UNSET' }, portLevelMtls: { '5432': { mode: 'STRICT' }, '9090': { mode: 'UNSET' } } });
  assert.deepEqual(validateObject(unset), []);
  const m = mesh([unset]);
  assert.equal(m.db.mode, 'PERMISSIVE');
  assert.deepEqual(m.db.portModes, { '5432': 'STRICT' });
  assert.equal(plaintext(m, 5432), 'plaintext_strict', 'the STRICT port of a policy written UNSET is enforced');
  assert.equal(await strictRefusals(m), 1);
  assert.equal(plaintext(m, 8080), 'delivered');

  const disable = pa('shop', 'ns-disable', { mtls: { mode: 'DISABLE' } });
  assert.deepEqual(validateObject(disable), []);
  const d = mesh([pa(ROOT, 'mesh-strict', { mtls: { mode: 'STRICT' } }), disable]);
  assert.equal(d.db.mode, 'PERMISSIVE', 'DISABLE overrides the mesh STRICT as PERMISSIVE does');
  assert.equal(plaintext(d, 5432), 'delivered');

  // A port-level DISABLE under a STRICT namespace: that port only takes plaintext.
  const p = mesh([pa('shop', 'ns-strict', { mtls: { mode: 'STRICT' } }), pa('shop', 'db-metrics', { selector: { matchLabels: { app: 'db' } }, portLevelMtls: { '9090': { mode: 'DISABLE' } } })]);
  assert.equal(p.db.mode, 'STRICT');
  assert.equal(plaintext(p, 9090), 'delivered');
  assert.equal(plaintext(p, 5432), 'plaintext_strict');
});

test('portLevelMtls on a policy whose selector has no labels is refused at spec.portLevelMtls (Istio: "mesh/namespace peer authentication cannot have port level mTLS"), as is an empty portLevelMtls', () => {
  for (const selector of [undefined, {}, { matchLabels: {} }]) {
    const issues = validateObject(pa('shop', 'wide-ports', { ...(selector ? { selector } : {}), portLevelMtls: { '8080': { mode: 'PERMISSIVE' } } }));
    assert.equal(issues.length, 1, JSON.stringify(selector));
    assert.equal(issues[0]?.path, 'spec.portLevelMtls');
    assert.match(issues[0]!.message, /namespace-wide .* takes no port-level modes/);
  }
  const empty = validateObject(pa('shop', 'no-ports', { selector: { matchLabels: { app: 'db' } }, portLevelMtls: {} }));
  assert.deepEqual(empty.map((i) => i.path), ['spec.portLevelMtls']);
  // Should one reach the compiler (a config directory read without validation), its port modes are
  // not applied to every pod of the namespace.
  const m = mesh([pa('shop', 'ns-strict', { mtls: { mode: 'STRICT' } }), pa('shop', 'wide-ports', { selector: {}, portLevelMtls: { '5432': { mode: 'PERMISSIVE' } } })]);
  assert.equal(m.db.portModes, undefined);
  assert.equal(plaintext(m, 5432), 'plaintext_strict');
});

test('a portLevelMtls key is a port number written one way: "08080" is refused at its field, since the kernel (a number, 8080) and the agent (the key as written) would read it apart', () => {
  const issues = validateObject(pa('shop', 'db-port', { selector: { matchLabels: { app: 'db' } }, mtls: { mode: 'STRICT' }, portLevelMtls: { '08080': { mode: 'PERMISSIVE' } } }));
  assert.deepEqual(issues.map((i) => i.path), ['spec.portLevelMtls["08080"]']);
  assert.match(issues[0]!.message, /write 8080/);
  assert.deepEqual(validateObject(pa('shop', 'db-port', { selector: { matchLabels: { app: 'db' } }, portLevelMtls: { '8080': { mode: 'PERMISSIVE' } } })), []);
});

test('a younger mesh- or namespace-wide PeerAuthentication beside an older one is reported Conflicted (it is not in force), so a STRICT added beside an older PERMISSIVE does not look applied', () => {
  const inputs = emptyInputs();
  inputs.namespaces.push(ns(ROOT), ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  inputs.peerAuthentications.push(
    pa('shop', 'old-permissive', { mtls: { mode: 'PERMISSIVE' } }),
    pa('shop', 'new-strict', { selector: { matchLabels: {} }, mtls: { mode: 'STRICT' } }),
    pa(ROOT, 'mesh-a', { mtls: { mode: 'STRICT' } }),
    pa(ROOT, 'mesh-b', { mtls: { mode: 'PERMISSIVE' } }),
    pa('shop', 'db', { selector: { matchLabels: { app: 'db' } }, mtls: { mode: 'STRICT' } }),
  );
  const conflicted = compile(inputs).findings.filter((f) => f.reason === 'Conflicted');
  assert.deepEqual(conflicted.map((f) => `${f.namespace}/${f.name} ${f.path}`).sort(), ['shop/new-strict spec', `${ROOT}/mesh-b spec`].sort());
  assert.match(conflicted.find((f) => f.name === 'new-strict')!.message, /PeerAuthentication shop\/old-permissive is older and decides namespace shop's mode/);
});

// A tenant's PeerAuthentication reaching into another namespace: Istio applies one without a
// selector to its own namespace, and a selector only to its own namespace's workloads (the
// reference: "selector ... in the same namespace as the policy"), so evil's DISABLE, namespace-wide
// or selecting shop/db's labels with a port-level DISABLE on its port, loosens nothing of shop's.
test('a PeerAuthentication of another namespace (DISABLE namespace-wide, or a selector matching shop/db\'s labels with portLevelMtls DISABLE) loosens nothing of shop/db: its plaintext is still refused and counted', async () => {
  const m = mesh([
    pa('shop', 'strict', { mtls: { mode: 'STRICT' } }),
    pa('evil', 'open', { mtls: { mode: 'DISABLE' } }),
    pa('evil', 'open-db', { selector: { matchLabels: { app: 'db' } }, mtls: { mode: 'DISABLE' }, portLevelMtls: { '8080': { mode: 'DISABLE' } } }),
  ]);
  assert.equal(m.db.mode, 'STRICT');
  assert.equal(m.db.portModes, undefined);
  assert.deepEqual([...m.model.peerAuthentications.values()].filter((p) => p.namespace === 'evil').map((p) => p.name).sort(), ['open', 'open-db'], 'compiled, for evil alone');
  assert.equal(plaintext(m, 8080), 'plaintext_strict');
  assert.equal(await strictRefusals(m), 1);
});
