import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findCgroup2Root, readMounts } from '../../lib/sys/mounts.ts';

function mountinfo(text: string): string {
  const file = join(mkdtempSync(join(tmpdir(), 'weft-')), 'mountinfo');
  writeFileSync(file, text);
  return file;
}

test('finds the cgroup v2 mount wherever the distribution put it', () => {
  const file = mountinfo([
    '30 25 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755',
    '35 30 0:31 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw',
    '36 30 0:32 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu',
  ].join('\n'));
  assert.equal(findCgroup2Root(readMounts(file)), '/sys/fs/cgroup/unified');
});

test('decodes octal escapes in mount points', () => {
  const file = mountinfo('40 25 0:40 / /mnt/with\\040space rw - bpf bpf rw\n');
  assert.equal(readMounts(file)[0]?.mountPoint, '/mnt/with space');
});

test('says what to do when no cgroup v2 hierarchy is mounted', () => {
  const file = mountinfo('36 30 0:32 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n');
  assert.throws(() => findCgroup2Root(readMounts(file)), (err: Error & { code?: string }) =>
    err.code === 'WEFT_NO_CGROUP2' && /mount -t cgroup2/.test(err.message));
});
