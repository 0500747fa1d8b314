// The pod label that keeps a workload's same-node connections off the splice on a node that
// splices (agent/src/splice.ts SPLICE_LABEL): only `enabled` or no label allows it, so that a typo
// in an opt-out keeps the pod on the agent's pipe rather than splicing it.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SPLICE_LABEL, spliceAllowed } from '../../agent/src/splice.ts';

test('weft.dev/splice: a connection is spliced only when neither pod opted out; any value but enabled opts out', () => {
  const pod = (v?: string): { labels: Record<string, string> } => ({ labels: v === undefined ? { app: 'x' } : { app: 'x', [SPLICE_LABEL]: v } });
  assert.equal(SPLICE_LABEL, 'weft.dev/splice');
  assert.equal(spliceAllowed(pod(), pod()), true, 'no label: allowed');
  assert.equal(spliceAllowed(pod('enabled'), pod()), true);
  assert.equal(spliceAllowed(pod('disabled'), pod()), false, 'the client opted out');
  assert.equal(spliceAllowed(pod(), pod('disabled')), false, 'the server opted out');
  for (const v of ['false', 'Disabled', 'disable', '', 'off']) assert.equal(spliceAllowed(pod(v), pod()), false, `"${v}" keeps it off`);
});
