// The waypoint's address-owner table (the for= decision's) is layered over the previous snapshot's
// when its list changed in a few entries: every lookup must answer as a table built whole from the
// list, and the previous table must keep answering as before (a rejected or older snapshot uses it).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AddressOwner } from '../../lib/model/mesh.ts';
import { OwnerTable } from '../../waypoint/src/config.ts';

function same(t: OwnerTable, list: readonly AddressOwner[], ips: readonly string[], what: string): void {
  const whole = OwnerTable.of(list);
  for (const ip of ips) assert.deepEqual(t.get(ip), whole.get(ip), `${what}: ${ip}`);
  assert.equal(t.size, whole.size, `${what}: size`);
}

test('a layered owner table answers as one built whole, over random churn, and the previous ones stay as they were', () => {
  let seed = 11;
  const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
  const ip = (n: number) => `10.9.${n >> 8}.${n & 255}`;
  const ips = Array.from({ length: 400 }, (_, n) => ip(n));
  let list: AddressOwner[] = Array.from({ length: 200 }, (_, n) => ({ ip: ip(n), spiffeId: `id-${n}`, nodeIp: '192.168.0.1' }));
  let table = OwnerTable.of(list);
  const history: Array<[OwnerTable, AddressOwner[]]> = [];
  let layered = 0;
  for (let round = 0; round < 400; round++) {
    const next = list.slice();
    // As the config client patches: replacements in place, removals, additions at the end; now
    // and then something it never does (a reorder, an address listed twice), which must be built whole.
    for (let k = 1 + rand(round % 25 === 0 ? 300 : 4); k > 0; k--) {
      const op = rand(10);
      if (op < 4 && next.length > 0) { const at = rand(next.length); next[at] = { ...next[at]!, spiffeId: `id-r${round}` }; }
      else if (op < 6 && next.length > 0) next.splice(rand(next.length), 1);
      else if (op < 9) { const n = rand(400); if (!next.some((o) => o.ip === ip(n))) next.push({ ip: ip(n), spiffeId: `id-a${round}`, nodeIp: '192.168.0.2' }); }
      else if (round % 7 === 0 && next.length > 1) next.push({ ...next[rand(next.length)]!, nodeIp: '192.168.0.9' });
      else if (next.length > 1) next.reverse();
    }
    const layer = table.layer(list, next);
    if (layer) layered++;
    const t = layer ?? OwnerTable.of(next);
    same(t, next, ips, `round ${round}`);
    history.push([table, list]);
    table = t;
    list = next;
  }
  for (const [t, l] of history.slice(-20)) same(t, l, ips, 'an earlier table');
  assert.ok(layered > 200, `most rounds layered (${layered})`);
});
