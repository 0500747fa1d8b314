// CRDs and Services fuzzed through the Kubernetes watch: the controller (in process, real gRPC
// config stream) against cli/local/kube/fake-apiserver.ts, the stand-in for the API server, which speaks
// its list/watch protocol and status subresource. Each round replaces one valid object with a
// random mutation of it (test/lab/config-fuzz.ts). Checked every round: the controller keeps
// running and every config it sends validates at the agent; an AuthorizationPolicy it marks
// Invalid leaves the previous compiled one in force. At the end the valid objects are restored and served.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KubeSource, kubeConfigForServer } from '../../controller/src/sources/kube.ts';
import { validateAgentConfig } from '../../agent/src/state.ts';
import type { AgentConfig } from '../../lib/model/mesh.ts';
import { FakeApiServer } from '../../cli/local/kube/fake-apiserver.ts';
import { FUZZ_SEEDS, mutateObject, prng } from '../lab/config-fuzz.ts';
import { ns, pod } from './controller-fixtures.ts';
import { startHarness, until } from './controller-harness.ts';

interface Condition { type: string; status: string; reason: string; observedGeneration?: number }
const conditionsOf = (o: object | undefined): Condition[] => (((o as { status?: { conditions?: Condition[] } } | undefined)?.status)?.conditions ?? []);
const policyAp = (c: AgentConfig | undefined) => c?.policies.find((p) => p.namespace === 'fuzz' && p.name === 'ap');

test('randomly mutated CRDs and Services from the Kubernetes watch never stop the controller, never reach an agent invalid, and a rejected policy leaves the accepted one serving', async () => {
  const seed = Number(process.env.WEFT_FUZZ_SEED ?? Date.now() % 2 ** 31);
  const rounds = Number(process.env.WEFT_FUZZ_ROUNDS ?? 150);
  console.log(`# kube fuzz seed ${seed} (rerun with WEFT_FUZZ_SEED=${seed}), ${rounds} rounds`);
  const rand = prng(seed);
  const api = new FakeApiServer();
  await api.start();
  const h = await startHarness(new KubeSource({ kubeConfig: kubeConfigForServer(api.url), restartDelayMs: 20 }));
  const rejectedByAgent: string[] = [];
  try {
    api.apply(ns('fuzz', { 'weft.dev/dataplane-mode': 'ambient' }));
    api.apply(pod('fuzz', 'x', { labels: { app: 'x' } }));
    for (const o of FUZZ_SEEDS) api.apply(o);
    const agent = h.agent('node-a', { validate: (c) => validateAgentConfig(c) });
    agent.on('rejected', (err: Error) => rejectedByAgent.push(err.message));
    await until('the seeds are served', () => policyAp(agent.snapshot) !== undefined && (agent.snapshot?.services.some((s) => s.namespace === 'fuzz') ?? false), 10_000);

    let invalidPolicies = 0;
    for (let i = 0; i < rounds; i++) {
      // The compiled policy in force (the previous AuthorizationPolicy round waited for its verdict).
      const before = structuredClone(h.controller.model?.policies.get('fuzz/ap'));
      // Nesting up to 500 levels: the stand-in API server deep-copies objects (structuredClone).
      const m = mutateObject(rand, { maxNest: 500 });
      const applied = api.apply(m.obj);
      const what = `round ${i} (seed ${seed}): ${m.what}`;
      if (m.obj.kind === 'AuthorizationPolicy') {
        // The controller's verdict on exactly this version: its condition carries the generation.
        const gen = applied.metadata.generation;
        await until(`a status for generation ${gen}, ${what}; status now ${JSON.stringify(conditionsOf(api.get('AuthorizationPolicy', 'fuzz', 'ap')))}; last logs ${JSON.stringify(h.logs.slice(-3))}`, () => conditionsOf(api.get('AuthorizationPolicy', 'fuzz', 'ap')).some((c) => c.observedGeneration === gen), 5_000);
        const verdict = conditionsOf(api.get('AuthorizationPolicy', 'fuzz', 'ap')).find((c) => c.type === 'Accepted')!;
        if (verdict.status === 'False') {
          invalidPolicies++;
          assert.ok(before, `a policy was in force before ${what}`);
          assert.deepEqual(h.controller.model?.policies.get('fuzz/ap'), before, `a rejected policy leaves the accepted one in force, ${what}`);
        }
      } else {
        await new Promise((r) => setTimeout(r, 10));
      }
      assert.deepEqual(rejectedByAgent, [], `every config the agent got validates, ${what}`);
    }
    const errors = h.logs.filter((l) => l.level === 'error');
    assert.deepEqual(errors.map((l) => `${l.msg}: ${String(l.fields.error ?? '')}`), [], 'the controller logged no internal error');

    // Restore the valid objects: they are served again, exactly.
    for (const o of FUZZ_SEEDS) api.apply(o);
    await until('the restored policy is served', () => {
      const p = policyAp(agent.snapshot);
      return p !== undefined && JSON.stringify(p).includes('cluster.local/ns/fuzz/sa/a') && JSON.stringify(p).includes('10.77.0.0/16');
    }, 10_000);
    assert.ok(agent.snapshot!.services.some((s) => s.namespace === 'fuzz' && s.name === 'svc'), 'the restored Service is served');
    assert.deepEqual(rejectedByAgent, []);
    const rejectedLogged = h.logs.filter((l) => l.level === 'warn').length;
    console.log(`# kube fuzz: ${invalidPolicies} invalid AuthorizationPolicy versions kept out, ${rejectedLogged} warnings logged, 0 configs rejected by the agent`);
    assert.ok(rejectedLogged > 0, 'invalid objects are reported');
  } finally {
    await h.close();
    await api.stop();
  }
});
