import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HeldVersions, MIN_SHARED, SharedBases } from '../../controller/src/xds/held-versions.ts';

/** A small deterministic PRNG (the failures must be reproducible). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** SharedBases.adopt from [name, version] pairs. */
function adopt(bases: SharedBases, key: string, held: HeldVersions, pairs: ReadonlyArray<readonly [string, string]>): void {
  bases.adopt(key, held, pairs.map(([n]) => n), pairs.map(([, v]) => v));
}

function same(held: HeldVersions, map: Map<string, string>, what: string): void {
  assert.equal(held.size, map.size, `${what}: size`);
  assert.deepEqual([...held.keys()], [...map.keys()], `${what}: keys in the same order`);
  assert.deepEqual([...held.entries()], [...map.entries()], `${what}: entries in the same order`);
}

test('a HeldVersions answers as a Map would, order included, through sets, deletes, re-adds and rebuilds over shared bases', () => {
  for (let seed = 1; seed <= 30; seed++) {
    const r = rng(seed);
    const bases = new SharedBases();
    const names = Array.from({ length: 2 * MIN_SHARED }, (_, i) => `n${i}`);
    // Several clients start from the same entries (as clients of one view do), some with a tail
    // of their own, then each goes its own way.
    const common: Array<[string, string]> = names.slice(0, MIN_SHARED + 100).map((n) => [n, 'v0']);
    const clients = Array.from({ length: 4 }, (_, c) => {
      const own: Array<[string, string]> = c % 2 === 0 ? [] : names.slice(MIN_SHARED + 100 + c * 10, MIN_SHARED + 110 + c * 10).map((n) => [n, 'own']);
      const held = new HeldVersions();
      adopt(bases, 'agent/Workload', held, [...common, ...own]);
      return { held, map: new Map([...common, ...own]) };
    });
    assert.equal(clients[0]!.held.base, clients[1]!.held.base, 'clients with the same entries share one base');
    assert.equal(clients[0]!.held.base, clients[3]!.held.base);
    for (const [i, { held, map }] of clients.entries()) same(held, map, `seed ${seed} client ${i} adopted`);
    for (let step = 0; step < 3000; step++) {
      const { held, map } = clients[Math.floor(r() * clients.length)]!;
      const name = names[Math.floor(r() * names.length)]!;
      const op = r();
      if (op < 0.45) {
        const v = r() < 0.3 ? 'v0' : `v${Math.floor(r() * 5)}`;
        held.set(name, v);
        map.set(name, v);
      } else if (op < 0.9) {
        assert.equal(held.delete(name), map.delete(name), `seed ${seed} step ${step}: delete's answer`);
      } else if (held.overLimit || op < 0.92) {
        bases.compact('agent/Workload', held);
      }
      assert.equal(held.get(name), map.get(name), `seed ${seed} step ${step}: get`);
      assert.equal(held.has(name), map.has(name), `seed ${seed} step ${step}: has`);
      if (step % 100 === 0) same(held, map, `seed ${seed} step ${step}`);
    }
    for (const [i, { held, map }] of clients.entries()) same(held, map, `seed ${seed} client ${i} at the end`);
  }
});

test('versions a reconnecting client reports are held as given and rebuilt over a shared base at the first change', () => {
  const bases = new SharedBases();
  const entries: Array<[string, string]> = Array.from({ length: MIN_SHARED * 2 }, (_, i) => [`w${i}`, 'e2.1']);
  const first = new HeldVersions();
  adopt(bases, 'agent/Workload', first, entries);
  const back = new HeldVersions(entries.map(([n]) => [n, 'e1.9']));
  assert.equal(back.get('w3'), 'e1.9');
  assert.ok(back.overLimit, 'due for a rebuild at once (the server rebuilds after its first change)');
  for (const [n, v] of entries) back.set(n, v);
  bases.compact('agent/Workload', back);
  assert.equal(back.base, first.base, 'the same entries in the same order share the first client\'s base');
  assert.equal(back.overlaySize, 0);
  same(back, new Map(entries), 'after the rebuild');
});

test('a client whose entries differ from the shared ones only at the end shares the common part; small views are not shared', () => {
  const bases = new SharedBases();
  const common: Array<[string, string]> = Array.from({ length: MIN_SHARED * 2 }, (_, i) => [`w${i}`, 'v']);
  const a = new HeldVersions();
  const b = new HeldVersions();
  const c = new HeldVersions();
  adopt(bases, 'agent/Workload', a, [...common, ['plain-a', 'v']]);
  adopt(bases, 'agent/Workload', b, [...common, ['plain-b', 'v']]);
  adopt(bases, 'agent/Workload', c, [...common, ['plain-c', 'v'], ['plain-c2', 'v']]);
  assert.equal(b.base.size, common.length, 'the second builds a base of the common part');
  assert.equal(c.base, b.base, 'the third finds it');
  assert.equal(c.overlaySize, 2);
  same(c, new Map([...common, ['plain-c', 'v'], ['plain-c2', 'v']]), 'c');
  // Another kind's view of the same type is kept apart.
  const w = new HeldVersions();
  adopt(bases, 'waypoint/Workload', w, common);
  assert.notEqual(w.base, b.base);
  const small = new HeldVersions();
  adopt(bases, 'agent/Service', small, [['s', 'v']]);
  assert.equal(small.base.size, 0);
  same(small, new Map([['s', 'v']]), 'small');
  assert.throws(() => adopt(bases, 'agent/Service', small, [] as Array<[string, string]>), /already holds/);
});

test('over the config server, agents that share bases hold exactly their own views after random changes, ACKs and NACKs', async () => {
  const { EventEmitter } = await import('node:events');
  const { compile, emptyInputs } = await import('../../controller/src/compile.ts');
  const { ConfigServer } = await import('../../controller/src/xds/server.ts');
  const { TYPE_URLS } = await import('../../lib/xds/protocol.ts');
  const { ns, pod } = await import('./controller-fixtures.ts');
  type Response = import('../../lib/xds/protocol.ts').DeltaConfigResponse;
  type Request = import('../../lib/xds/protocol.ts').DeltaConfigRequest;
  type Call = import('../../lib/xds/protocol.ts').ConfigStreamCall;

  const r = rng(7);
  // Enrolled pods on two nodes (more than MIN_SHARED, so agents share), and a few unenrolled
  // pods per node that only their own node's agent sees (listed last in its view).
  let next = 0;
  const pods = new Map<string, { node: string; plain: boolean; rev: number }>();
  const addPod = (plain: boolean) => pods.set(`p${next++}`, { node: r() < 0.5 ? 'node-a' : 'node-b', plain, rev: 0 });
  for (let k = 0; k < MIN_SHARED + 200; k++) addPod(false);
  for (let k = 0; k < 20; k++) addPod(true);
  const model = () => {
    const i = emptyInputs();
    i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), ns('plain'));
    let k = 0;
    for (const [name, p] of pods) {
      k++;
      i.pods.push(pod(p.plain ? 'plain' : 'shop', name, { node: p.node, ip: `10.9.${k >> 8}.${k & 255}`, labels: { app: name, rev: String(p.rev) } }));
    }
    return compile(i).model;
  };

  const configServer = new ConfigServer();
  configServer.publish(model());
  const agent = (id: string) => {
    const inbox: Response[] = [];
    const held = new Map<string, string>();
    const call = Object.assign(new EventEmitter(), { write: (m: Response) => { inbox.push(m); return true; }, end: () => {} });
    configServer.handle(call as unknown as Call);
    const send = (q: Partial<Request>) => call.emit('data', { type_url: TYPE_URLS.Workload, resource_names_subscribe: [], resource_names_unsubscribe: [], initial_resource_versions: {}, response_nonce: '', ...q } satisfies Request);
    send({ node: { id, kind: 'agent', namespace: '', user_agent: 't' }, resource_names_subscribe: ['*'] });
    return {
      id, inbox, held, send,
      /** Takes the oldest response: applies and ACKs it, or refuses it (keeps what it had). */
      answer(refuse: boolean): void {
        const m = inbox.shift()!;
        if (refuse) {
          send({ response_nonce: m.nonce, error_detail: { code: 3, message: 'refused' } });
          return;
        }
        for (const x of m.resources) held.set(x.name, x.version);
        for (const n of m.removed_resources) held.delete(n);
        send({ response_nonce: m.nonce });
      },
    };
  };
  const turn = () => new Promise((res) => setImmediate(res));
  const agents = [agent('node-a'), agent('node-b'), agent('node-a'), agent('node-b'), agent('node-a')];
  await turn();
  for (let round = 0; round < 60; round++) {
    const names = [...pods.keys()];
    for (let k = 1 + Math.floor(r() * 3); k > 0; k--) {
      const op = r();
      const name = names[Math.floor(r() * names.length)]!;
      if (op < 0.3) addPod(r() < 0.2);
      else if (op < 0.5) pods.delete(name);
      else if (op < 0.6) pods.get(name)!.node = pods.get(name)!.node === 'node-a' ? 'node-b' : 'node-a';
      else pods.get(name)!.rev++;
    }
    configServer.publish(model());
    await turn();
    for (const a of agents) {
      // Some responses stay pending across rounds; some are refused.
      for (let k = Math.floor(r() * (a.inbox.length + 1)); k > 0; k--) a.answer(r() < 0.15);
    }
    await turn();
  }
  // Every response still pending is applied (a client that refused the latest version is sent
  // nothing more until the model moves on).
  const drain = async () => {
    for (let quiet = 0; quiet < 3;) {
      await turn();
      if (agents.every((a) => a.inbox.length === 0)) quiet++;
      else quiet = 0;
      for (const a of agents) while (a.inbox.length > 0) a.answer(false);
    }
  };
  await drain();
  const before = agents.map((a) => new Map(a.held));
  // One more change: each agent is sent exactly what it lacks against what it holds, as with a
  // Map of its own: nothing it has, nothing missing.
  addPod(false);
  configServer.publish(model());
  await turn();
  const pushed = agents.map((a) => [...a.inbox]);
  await drain();
  assert.ok(configServer.clients().every((c) => c.synced));
  // Subscribing again makes the server compare the whole view with what it believes each agent
  // holds: it must believe exactly what the agent holds, so there is nothing to send.
  for (const a of agents) a.send({ resource_names_subscribe: ['*'] });
  await turn();
  for (const [k, a] of agents.entries()) {
    assert.ok(a.inbox.length > 0);
    assert.deepEqual(a.inbox.flatMap((m) => [...m.resources.map((x) => x.name), ...m.removed_resources]), [], `agent ${k}: nothing to resend`);
  }
  await drain();
  for (const [k, a] of agents.entries()) {
    const fresh = agent(a.id);
    await turn();
    while (fresh.inbox.length > 0) fresh.answer(false);
    assert.ok(fresh.held.size > MIN_SHARED);
    // A client that connects now gets its node's view whole: each agent must hold the same.
    assert.deepEqual([...a.held].sort(), [...fresh.held].sort(), `agent ${k} holds its view`);
    const upserts = pushed[k]!.flatMap((m) => m.resources.map((x) => x.name)).sort();
    const removed = pushed[k]!.flatMap((m) => m.removed_resources).sort();
    assert.deepEqual(upserts, [...fresh.held].filter(([n, v]) => before[k]!.get(n) !== v).map(([n]) => n).sort(), `agent ${k}: upserts`);
    assert.deepEqual(removed, [...before[k]!.keys()].filter((n) => !fresh.held.has(n)).sort(), `agent ${k}: removals`);
  }
});
