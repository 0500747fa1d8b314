// make clean-lab: removes every network namespace, cgroup, BPF pin folder and process that a test
// run (prefix `wt`) or a local mesh left behind. Safe to run at any time: it touches only names
// that carry the lab tag.
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ensureBpffs, findCgroup2Root } from '../../lib/sys/mounts.ts';
import { removeCgroupTree } from '../../lib/sys/cgroup.ts';
import { deleteNetns, listNetns } from '../../lib/sys/netns.ts';
import { LAB_TAG } from './lab.ts';

const tagged = (name: string) => new RegExp(`^${LAB_TAG}[0-9a-z]{4}(-|$)`).test(name);
let removed = 0;

for (const name of listNetns()) {
  if (!tagged(name)) continue;
  deleteNetns(name);
  removed++;
}

const cgroupRoot = findCgroup2Root();
for (const name of readdirSync(cgroupRoot)) {
  if (!tagged(name)) continue;
  await removeCgroupTree(join(cgroupRoot, name));
  removed++;
}

const bpffs = ensureBpffs();
for (const name of existsSync(bpffs) ? readdirSync(bpffs) : []) {
  if (!tagged(name)) continue;
  rmSync(join(bpffs, name), { recursive: true, force: true });
  removed++;
}

console.log(removed ? `clean-lab: removed ${removed} leftover lab object(s)` : 'clean-lab: nothing left over');
