// A NACK while other responses of the same type are still unacknowledged: the config server keeps one
// copy of what each client holds (`sent`) and undoes pending responses from what they replaced,
// instead of a second, acknowledged copy of every client's view. What it sends next must be what
// the client lacks relative to what it acknowledged, whichever of the pending responses it refused.
import { EventEmitter } from 'node:events';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compile, emptyInputs } from '../../controller/src/compile.ts';
import { ConfigServer } from '../../controller/src/xds/server.ts';
import { TYPE_URLS, type ConfigStreamCall, type DeltaConfigRequest, type DeltaConfigResponse } from '../../lib/xds/protocol.ts';
import { ns, pod } from './controller-fixtures.ts';
import { until } from './controller-harness.ts';

/** The model with pods `names` (all enrolled, on node-a), `changed` ones with a different label. */
function model(names: string[], changed: string[] = []) {
  const i = emptyInputs();
  i.namespaces.push(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
  for (const [k, n] of names.entries()) i.pods.push(pod('shop', n, { ip: `10.7.0.${k + 1}`, labels: { app: n, ...(changed.includes(n) ? { rev: '2' } : {}) } }));
  return compile(i).model;
}

/** An agent on a fake stream, subscribed to Workload only; it answers nothing by itself. */
function agent(configServer: ConfigServer) {
  const written: DeltaConfigResponse[] = [];
  const call = Object.assign(new EventEmitter(), { write: (m: DeltaConfigResponse) => { written.push(m); return true; }, end: () => {} });
  configServer.handle(call as unknown as ConfigStreamCall);
  const send = (r: Partial<DeltaConfigRequest>) => call.emit('data', { type_url: TYPE_URLS.Workload, resource_names_subscribe: [], resource_names_unsubscribe: [], initial_resource_versions: {}, response_nonce: '', ...r } satisfies DeltaConfigRequest);
  send({ node: { id: 'node-a', kind: 'agent', namespace: '', user_agent: 't' }, resource_names_subscribe: ['*'] });
  return {
    written,
    ack: (r: DeltaConfigResponse) => send({ response_nonce: r.nonce }),
    nack: (r: DeltaConfigResponse) => send({ response_nonce: r.nonce, error_detail: { code: 3, message: 'refused' } }),
  };
}

const names = (r: DeltaConfigResponse) => r.resources.map((x) => x.name.replace('uid-shop-', '')).sort();

for (const refused of ['earlier', 'later'] as const) {
  test(`a NACK of the ${refused} of two pending responses: the next push is what the client lacks against what it acknowledged`, async () => {
    const configServer = new ConfigServer();
    configServer.publish(model(['a', 'b']));
    const c = agent(configServer);
    await until('first response', () => c.written.length === 1);
    const first = c.written[0]!;
    assert.deepEqual(names(first), ['a', 'b']);
    // A second version goes out while the first is unacknowledged: a changes, c is new.
    configServer.publish(model(['a', 'b', 'c'], ['a']));
    await until('second response', () => c.written.length === 2);
    const second = c.written[1]!;
    assert.deepEqual(names(second), ['a', 'c']);

    if (refused === 'earlier') {
      c.nack(first);
      c.ack(second);
    } else {
      c.ack(first);
      c.nack(second);
    }
    // The next version (d is new) is pushed relative to what the client holds.
    configServer.publish(model(['a', 'b', 'c', 'd'], ['a']));
    await until('third response', () => c.written.length === 3);
    const third = c.written[2]!;
    // Refused the earlier: the client applied only the second (a at rev 2, c), so b and d are missing.
    // Refused the later: it holds the first (a, b), so a's new version, c and d are missing.
    assert.deepEqual(names(third), refused === 'earlier' ? ['b', 'd'] : ['a', 'c', 'd']);
    assert.deepEqual(third.removed_resources, []);
    configServer.closeAll();
  });
}
