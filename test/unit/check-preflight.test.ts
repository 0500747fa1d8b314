import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type AddressInfo } from 'node:net';
import { chmodSync, existsSync, mkdtempSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  checkIpv6, MIN_KERNEL, btfHasName, checkBpffs, checkCapabilities, checkCgroup2, checkKernel, checkPorts, checkTools, compareKernel,
  decodeCapEff, listeningPorts, parseKernelRelease, runPreflight, type CheckResult, type PreflightSources,
} from '../../cli/check.ts';

function assertRemedies(results: readonly CheckResult[]): void {
  for (const r of results) {
    if (r.status === 'pass') continue;
    assert.ok(r.remedy.trim().length > 10, `${r.id} has no remedy`);
    assert.ok(!r.remedy.includes('\n'), `${r.id} remedy is one line`);
  }
}

test('parses kernel releases of distribution, cloud and WSL kernels', () => {
  assert.deepEqual(parseKernelRelease('6.8.0-45-generic'), { major: 6, minor: 8, patch: 0 });
  assert.deepEqual(parseKernelRelease('5.15.153.1-microsoft-standard-WSL2'), { major: 5, minor: 15, patch: 153 });
  assert.deepEqual(parseKernelRelease('6.1'), { major: 6, minor: 1, patch: 0 });
  assert.deepEqual(parseKernelRelease('4.18.0-513.el8.x86_64'), { major: 4, minor: 18, patch: 0 });
  assert.equal(parseKernelRelease('linux'), undefined);
  assert.ok(compareKernel({ major: 6, minor: 10, patch: 0 }, { major: 6, minor: 6, patch: 0 }) > 0);
});

test('needs Linux 6.6 (tcx) and reports each feature a 5.10 kernel lacks', () => {
  assert.deepEqual(MIN_KERNEL, { major: 6, minor: 6, patch: 0 });
  const results = checkKernel('5.10.0-28-amd64');
  const failed = results.filter((r) => r.status === 'fail').map((r) => r.id);
  assert.deepEqual(failed, ['kernel.version', 'kernel.tcx']);
  assertRemedies(results);
  const old = checkKernel('5.4.0');
  assert.ok(old.some((r) => r.id === 'kernel.getpeername-hooks' && r.status === 'fail'));
  assert.ok(checkKernel('6.6.0').every((r) => r.status === 'pass'));
  const garbage = checkKernel('???');
  assert.equal(garbage[0]?.status, 'warn');
  assertRemedies(garbage);
});

/** A BTF blob with no types and the given strings (little-endian header, as on x86 and arm64). */
function btf(names: string[]): Buffer {
  const strings = Buffer.from(['', ...names].join('\0') + '\0', 'latin1');
  const header = Buffer.alloc(24);
  header.writeUInt16LE(0xeb9f, 0);
  header.writeUInt8(1, 2);
  header.writeUInt32LE(24, 4); // hdr_len
  header.writeUInt32LE(0, 8); // type_off
  header.writeUInt32LE(0, 12); // type_len
  header.writeUInt32LE(0, 16); // str_off
  header.writeUInt32LE(strings.length, 20);
  return Buffer.concat([header, strings]);
}

test('finds whole names in the BTF string section, not prefixes, and rejects non-BTF', () => {
  const blob = btf(['BPF_TCX_INGRESS', 'BPF_CGROUP_INET4_GETPEERNAME']);
  assert.equal(btfHasName(blob, 'BPF_TCX_INGRESS'), true);
  assert.equal(btfHasName(blob, 'BPF_TCX'), false);
  assert.equal(btfHasName(blob, 'BPF_MAP_TYPE_SK_STORAGE'), false);
  assert.equal(btfHasName(Buffer.from('not btf at all, just some bytes'), 'BPF_TCX_INGRESS'), undefined);
});

test('believes the kernel BTF over the version: a backported 5.14 kernel passes, a 6.8 without tcx fails', () => {
  const all = btf(['BPF_CGROUP_SOCK_OPS', 'BPF_CGROUP_INET4_CONNECT', 'BPF_MAP_TYPE_SK_STORAGE', 'BPF_FUNC_get_netns_cookie', 'BPF_CGROUP_INET4_GETPEERNAME', 'BPF_TCX_INGRESS', 'BPF_SK_LOOKUP']);
  const backported = checkKernel('5.14.0-427.el9.x86_64', { btf: all, capLastCap: 40 });
  assert.ok(backported.filter((r) => r.id !== 'kernel.version').every((r) => r.status === 'pass'));
  assert.equal(backported[0]?.status, 'warn');
  assertRemedies(backported);

  const noTcx = checkKernel('6.8.0', { btf: btf(['BPF_CGROUP_INET4_CONNECT']), capLastCap: 40 });
  const tcx = noTcx.find((r) => r.id === 'kernel.tcx');
  assert.equal(tcx?.status, 'fail');
  assert.match(tcx?.detail ?? '', /kernel BTF has no BPF_TCX_INGRESS/);
  assert.equal(noTcx.find((r) => r.id === 'kernel.cap-bpf')?.status, 'pass');
  assert.equal(checkKernel('6.8.0', { capLastCap: 38 }).find((r) => r.id === 'kernel.cap-bpf')?.status, 'fail');
  assertRemedies(noTcx);
});

test('reads the real kernel BTF when the machine has one', { skip: !existsSync('/sys/kernel/btf/vmlinux') && 'no /sys/kernel/btf/vmlinux' }, () => {
  const blob = readFileSync('/sys/kernel/btf/vmlinux');
  assert.equal(btfHasName(blob, 'BPF_CGROUP_INET4_CONNECT'), true);
  assert.equal(btfHasName(blob, 'BPF_WEFT_NO_SUCH_THING'), false);
});

test('decodes CapEff: full root, a bounding-limited container and an unprivileged user', () => {
  assert.deepEqual([...decodeCapEff('Name:\tx\nCapEff:\t000001ffffffffff\n')].sort(), ['BPF', 'NET_ADMIN', 'NET_RAW', 'PERFMON', 'SYS_ADMIN', 'SYS_PTRACE']);
  // CAP_NET_ADMIN (12) and CAP_BPF (39) only.
  const mask = ((1n << 12n) | (1n << 39n)).toString(16).padStart(16, '0');
  assert.deepEqual([...decodeCapEff(`CapEff:\t${mask}\n`)].sort(), ['BPF', 'NET_ADMIN']);
  assert.equal(decodeCapEff('CapEff:\t0000000000000000\n').size, 0);
  assert.equal(decodeCapEff('no caps line').size, 0);
});

test('privileges fail without CAP_SYS_ADMIN and say how to get it', () => {
  const mask = ((1n << 12n) | (1n << 39n)).toString(16);
  const r = checkCapabilities(`Uid:\t1000\t1000\t1000\t1000\nCapEff:\t${mask}\n`);
  assert.equal(r.status, 'fail');
  assert.match(r.detail, /uid 1000 lacks CAP_SYS_ADMIN/);
  assertRemedies([r]);
  assert.equal(checkCapabilities('Uid:\t0\t0\t0\t0\nCapEff:\t000001ffffffffff\n').status, 'pass');
});

test('finds LISTEN sockets in /proc/net/tcp and tcp6 text', () => {
  const text = [
    '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
    '   0: 00000000:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1',
    '   1: 0100007F:3A98 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1',
    '   2: 0100007F:3AA8 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3 1',
    '  sl  local_address                         remote_address                        st',
    '   0: 00000000000000000000000000000000:3AAC 00000000000000000000000000000000:0000 0A 0',
  ].join('\n');
  assert.deepEqual([...listeningPorts(text)].sort(), [15000, 15001, 15020]);
});

test('reports a port this test occupies as in use, with how to find the owner', async () => {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const port = (server.address() as AddressInfo).port;
    const proc = readFileSync('/proc/net/tcp', 'utf8') + readFileSync('/proc/net/tcp6', 'utf8');
    const [r] = checkPorts(listeningPorts(proc), [{ port, what: 'test' }]);
    assert.equal(r?.status, 'fail');
    assert.match(r?.status === 'fail' ? r.remedy : '', new RegExp(`ss -ltnp 'sport = :${port}'`));
  } finally {
    server.close();
  }
});

test('bpffs and cgroup v2 checks read the mount table', () => {
  const mounts = [
    { mountPoint: '/sys/fs/cgroup', fsType: 'cgroup2', source: 'cgroup2' },
    { mountPoint: '/sys/fs/bpf', fsType: 'bpf', source: 'bpf' },
  ];
  assert.equal(checkBpffs(mounts).status, 'pass');
  assert.equal(checkCgroup2(mounts).status, 'pass');
  const none = [{ mountPoint: '/sys/fs/cgroup/cpu', fsType: 'cgroup', source: 'cgroup' }];
  const results = [checkBpffs(none), checkCgroup2(none)];
  assert.deepEqual(results.map((r) => r.status), ['fail', 'fail']);
  assertRemedies(results);
  assert.match(results[0]?.status === 'fail' ? results[0].remedy : '', /mount -t bpf bpf \/sys\/fs\/bpf/);
});

test('finds clang and bpftool on PATH and says what to install when missing', () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-path-'));
  for (const tool of ['clang', 'bpftool']) {
    writeFileSync(join(dir, tool), '#!/bin/sh\n');
    chmodSync(join(dir, tool), 0o755);
  }
  assert.ok(checkTools(dir).every((r) => r.status === 'pass'));
  const missing = checkTools(mkdtempSync(join(tmpdir(), 'weft-empty-')));
  assert.deepEqual(missing.map((r) => r.status), ['fail', 'fail']);
  assertRemedies(missing);
});

test('a machine that fails everything gets a remedy for every failure', () => {
  const bad: PreflightSources = {
    kernelRelease: '4.19.0',
    vmlinuxBtf: '/nonexistent/vmlinux',
    capLastCap: '38',
    mounts: [],
    procStatus: 'Uid:\t1000\t1000\t1000\t1000\nCapEff:\t0000000000000000\n',
    procNetTcp: 'header\n   0: 00000000:3A99 00000000:0000 0A 0\n',
    pathEnv: '',
    disableIpv6: '0',
    ports: [{ port: 15001, what: 'outbound' }],
  };
  const results = runPreflight(bad);
  const failed = results.filter((r) => r.status === 'fail').map((r) => r.id);
  for (const id of ['kernel.version', 'kernel.tcx', 'kernel.cap-bpf', 'kernel.btf', 'fs.bpffs', 'fs.cgroup2', 'privileges', 'tool.clang', 'tool.bpftool', 'port.15001']) {
    assert.ok(failed.includes(id), `${id} should fail`);
  }
  assertRemedies(results);
  assert.equal(new Set(results.map((r) => r.id)).size, results.length, 'ids are unique');
});

test('runs against this machine without throwing', () => {
  const results = runPreflight();
  assert.ok(results.length > 10);
  assertRemedies(results);
});

test('IPv6 on the host is flagged: Weft meshes IPv4 only and refuses IPv6 into enrolled pods', () => {
  const on = checkIpv6('0\n');
  assert.equal(on.status, 'warn');
  assert.match(on.detail, /refuses IPv6 TCP into enrolled pods/);
  assertRemedies([on]);
  assert.equal(checkIpv6('1\n').status, 'pass');
  assert.equal(checkIpv6('').status, 'pass');
});
