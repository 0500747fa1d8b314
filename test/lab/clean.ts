// make clean-lab: removes every network namespace, cgroup, BPF pin folder and process that a test
// run (prefix `wt`) or a local mesh left behind. Safe to run at any time: it touches only names
// that carry the lab tag. `node test/lab/clean.ts wt1a2b` removes only that one lab's objects (a
// test run killed before its cleanup, while other runs go on).
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ensureBpffs, findCgroup2Root } from '../../lib/sys/mounts.ts';
import { removeCgroupTree } from '../../lib/sys/cgroup.ts';
import { deleteNetns, listNetns } from '../../lib/sys/netns.ts';
import { isLabObject, LAB_PREFIX, LAB_TAG } from './lab.ts';

const only = process.argv[2];
if (only !== undefined && !new RegExp(`^${LAB_PREFIX}$`).test(only)) {
  console.error(`clean-lab: "${only}" is not a lab prefix (${LAB_TAG} and four letters or digits, e.g. ${LAB_TAG}1a2b)`);
  process.exit(2);
}
const tagged = (name: string) => isLabObject(name, only);
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
