// Every part starts the same way (issue 17, item 4; lib/main.ts): flags → options (an importable
// parse that names the wrong flag) → run → a signal stops it, with the same exit codes and error
// shape for the controller, the agent and the waypoint.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { countFlag, oneOfFlag, runMain, trustDomainFlags, UsageError, type MainIo } from '../../lib/main.ts';
import { parseAgentArgs } from '../../agent/src/main.ts';
import { parseEastWestArgs } from '../../eastwest/src/main.ts';
import { collectOutput } from '../../lib/sys/exec.ts';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { until } from '../lab/wait.ts';

function fakeIo(): MainIo & { lines: string[]; codes: number[]; signal: (sig: NodeJS.Signals) => void } {
  const handlers = new Map<string, Array<() => void>>();
  const io = {
    lines: [] as string[],
    codes: [] as number[],
    err: (l: string) => io.lines.push(l),
    exit: (c: number) => io.codes.push(c),
    onSignal: (sig: NodeJS.Signals, h: () => void) => handlers.set(sig, [...(handlers.get(sig) ?? []), h]),
    signal: (sig: NodeJS.Signals) => {
      const hs = handlers.get(sig) ?? [];
      handlers.set(sig, []);
      for (const h of hs) h();
    },
  };
  return io;
}

test('runMain: a parse error is a usage error (exit 2, the part and the message), nothing runs', async () => {
  const io = fakeIo();
  let ran = false;
  await runMain('agent', () => { throw new UsageError('--node is required'); }, async () => { ran = true; return undefined; }, io);
  assert.deepEqual(io.codes, [2]);
  assert.deepEqual(io.lines, ['agent: --node is required']);
  assert.equal(ran, false);
});

test('runMain: a failed start exits 1 with the error code; a failure after start too', async () => {
  const io = fakeIo();
  await runMain('controller', () => ({}), async () => { throw Object.assign(new Error('listen EADDRINUSE 10.0.0.1:15012'), { code: 'EADDRINUSE' }); }, io);
  assert.deepEqual(io.codes, [1]);
  assert.deepEqual(io.lines, ['controller: EADDRINUSE: listen EADDRINUSE 10.0.0.1:15012']);

  const later = fakeIo();
  const failed = Promise.withResolvers<void>();
  await runMain('agent', () => ({}), async () => ({ stop: async () => undefined, failed: failed.promise }), later);
  assert.deepEqual(later.codes, []);
  failed.reject(new Error('cannot listen on 10.0.0.1:15001'));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(later.codes, [1]);
  assert.deepEqual(later.lines, ['agent: cannot listen on 10.0.0.1:15001']);
});

test('runMain: SIGTERM stops the part, then exit 0; a second signal exits at once; a one-shot command exits 0', async () => {
  const io = fakeIo();
  const stopped: string[] = [];
  const release = Promise.withResolvers<void>();
  await runMain('waypoint', () => ({ n: 1 }), async (o) => {
    assert.deepEqual(o, { n: 1 });
    return { stop: async (sig) => { stopped.push(sig); await release.promise; } };
  }, io);
  io.signal('SIGTERM');
  assert.deepEqual(stopped, ['SIGTERM']);
  assert.deepEqual(io.codes, [], 'waits for stop');
  io.signal('SIGTERM');
  assert.deepEqual(io.codes, [0], 'the second signal exits at once');
  release.resolve();
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(io.codes, [0, 0]);

  const once = fakeIo();
  await runMain('agent', () => ({}), async () => undefined, once);
  assert.deepEqual(once.codes, [0]);
});

const AGENT_OK = ['--node', 'n1', '--node-ip', '10.0.0.1', '--controller', '10.0.0.254:15012', '--trust-bundle', '/b.pem', '--token', 't'];

test('countFlag: a whole number within its range, else a UsageError (or the part\'s own error) naming the flag and the range', () => {
  assert.equal(countFlag('n', '0', 'things', 0, 3), 0);
  assert.equal(countFlag('n', ' 3 ', 'things', 0, 3), 3);
  for (const bad of ['4', '-1', '1.5', '1e1', '0x1', '', 'x', '99999999999999999999']) {
    assert.throws(() => countFlag('n', bad, 'things', 0, 3), (e: Error) => e instanceof UsageError && e.message === `--n: "${bad}" is not a whole number of things from 0 to 3`, bad);
  }
  class OwnError extends Error {}
  assert.throws(() => countFlag('n', '4', 'things', 0, 3, (m) => new OwnError(m)), OwnError);
});

test('countFlag with no upper bound: a whole number from the least up (the controller\'s --remote-max-services, -endpoints, -destinations)', () => {
  assert.equal(countFlag('n', '5000000', 'things', 1), 5_000_000);
  for (const bad of ['0', '1.5', '1e3', '99999999999999999999']) {
    assert.throws(() => countFlag('n', bad, 'things', 1), (e: Error) => e instanceof UsageError && e.message === `--n: "${bad}" is not a whole number of things from 1 up`, bad);
  }
});

test('oneOfFlag and trustDomainFlags: the value, else a UsageError (or the part\'s own error) naming the flag and the value', () => {
  assert.equal(oneOfFlag('mode', 'b', ['a', 'b']), 'b');
  assert.throws(() => oneOfFlag('mode', 'c', ['a', 'b']), (e: Error) => e instanceof UsageError && e.message === '--mode: "c" is not one of a, b');
  assert.deepEqual(trustDomainFlags('cluster.local', ['c2.local']), ['c2.local']);
  assert.throws(() => trustDomainFlags('Bad/td', undefined), (e: Error) => e instanceof UsageError && /^--trust-domain: trust domain "Bad\/td" is invalid/.test(e.message));
  assert.throws(() => trustDomainFlags(undefined, ['ok.local', 'Bad/td']), (e: Error) => e instanceof UsageError && /^--trust-domain-alias: trust domain "Bad\/td" is invalid/.test(e.message));
  class OwnError extends Error {}
  assert.throws(() => oneOfFlag('mode', 'c', ['a'], (m) => new OwnError(m)), OwnError);
  assert.throws(() => trustDomainFlags(undefined, ['Bad/td'], (m) => new OwnError(m)), OwnError);
});

test('parseAgentArgs: each wrong flag is named (UsageError, WEFT_USAGE)', () => {
  const cases: Array<[string[], RegExp]> = [
    [AGENT_OK.slice(2), /--node is required/],
    [AGENT_OK.slice(0, -2), /one of --token or --token-file is required/],
    [[...AGENT_OK, '--hbone-port', '70000'], /--hbone-port 70000 is not a port/],
    [[...AGENT_OK, '--log-level', 'loud'], /--log-level loud is not one of/],
    [[...AGENT_OK, '--cert-lifetime', '0'], /--cert-lifetime: "0" is not a whole number of seconds from 1 to 604800/],
    // Past the CA's 7-day maximum the CA refuses every request (INVALID_ARGUMENT), as Istio's does.
    [[...AGENT_OK, '--cert-lifetime', '1209600'], /--cert-lifetime: "1209600" is not a whole number of seconds from 1 to 604800 \(the CA's maximum\)/],
    [[...AGENT_OK, '--cert-lifetime', '1e3'], /--cert-lifetime: "1e3" is not a whole number of seconds/],
    [[...AGENT_OK, '--drain-timeout', 'soon'], /--drain-timeout soon is not a number of seconds/],
    [[...AGENT_OK, '--trust-domain', 'Not A Domain'], /--trust-domain: trust domain "Not A Domain" is invalid/],
    [[...AGENT_OK, '--trust-domain-alias', 'cluster2.local', '--trust-domain-alias', 'Cluster3'], /--trust-domain-alias: trust domain "Cluster3" is invalid/],
    [[...AGENT_OK, '--bogus'], /Unknown option '--bogus'/],
    // Two listeners on one port (reusePort) split its connections between them; the gateway port
    // (15009) has no flag: the east-west gateway always dials it and the datapath excludes it.
    [[...AGENT_OK, '--hbone-port', '15009'], /--hbone-port 15009 is also the agent's gateway port \(15009\)/],
    [[...AGENT_OK, '--hbone-port', '16000', '--metrics-port', '16000'], /--hbone-port and --metrics-port are both 16000/],
    [[...AGENT_OK, '--admin-port', '15001'], /--outbound-port and --admin-port are both 15001/],
    [[...AGENT_OK, '--hbone-gateway-port', '15010'], /Unknown option '--hbone-gateway-port'/],
    [['--uninstall', '--cni-bin-dir', '/opt/cni/bin'], /--cni-bin-dir goes with --cni-conf-dir/],
  ];
  for (const [argv, want] of cases) {
    assert.throws(() => parseAgentArgs(argv), (e: Error & { code?: string }) => e instanceof UsageError && e.code === 'WEFT_USAGE' && want.test(e.message), argv.join(' '));
  }
});

test('parseAgentArgs: flags become the agent\'s options; --uninstall is its own command', () => {
  const c = parseAgentArgs([...AGENT_OK, '--hbone-port', '25008', '--drain-timeout', '5', '--exclude-port', '22', '--kubelet-cgroup', 'none']);
  assert.equal(c.kind, 'agent');
  if (c.kind !== 'agent') return;
  assert.equal(c.options.node, 'n1');
  assert.equal(c.options.trustDomain, 'cluster.local');
  assert.deepEqual(c.options.ports, { hbone: 25008 });
  assert.equal(c.options.drainTimeoutMs, 5000);
  assert.deepEqual(c.options.excludedPorts, [22]);
  assert.deepEqual(c.options.kubeletCgroups, []);
  assert.equal(c.options.token(), 't');
  const week = parseAgentArgs([...AGENT_OK, '--cert-lifetime', '604800']);
  assert.equal(week.kind === 'agent' && week.options.certLifetimeSeconds, 604800, 'the CA\'s maximum itself');
  assert.deepEqual(parseAgentArgs(['--uninstall', '--pin-root', '/sys/fs/bpf/weft', '--ready-file', '/tmp/r']), { kind: 'uninstall', pinRoot: '/sys/fs/bpf/weft', readyFile: '/tmp/r' });
});

test('parseAgentArgs: the same-node splice is off unless --splice turns it on (--no-splice and --splice=false say the default)', () => {
  const splice = (extra: string[]): boolean | undefined => {
    const c = parseAgentArgs([...AGENT_OK, ...extra]);
    assert.equal(c.kind, 'agent');
    return c.kind === 'agent' ? c.options.splice : undefined;
  };
  assert.equal(splice([]), undefined, 'default: the agent\'s own (off)');
  assert.equal(splice(['--no-splice']), undefined);
  assert.equal(splice(['--splice=false']), undefined);
  assert.equal(splice(['--splice']), true);
  assert.equal(splice(['--splice=true']), true);
});

test('parseEastWestArgs: each wrong flag is named (UsageError); flags become the gateway\'s options', () => {
  const OK = ['--listen', '10.0.0.1', '--trust-bundle', 'roots.pem', '--controller', 'https://10.0.0.9:15014'];
  const cases: Array<[string[], RegExp]> = [
    [OK.slice(2), /--listen is required/],
    [OK, /give either --cert and --key .* or --ca-address and --token-file/],
    [[...OK, '--cert', 'c.pem', '--key', 'k.pem', '--token-file', 't'], /give either/],
    [[...OK.slice(0, 1), '10.0.0.1:99999', ...OK.slice(2), '--cert', 'c', '--key', 'k'], /--listen: "10.0.0.1:99999" is not <ipv4>\[:port\]/],
    [[...OK, '--cert', 'c', '--key', 'k', '--log-level', 'loud'], /--log-level: "loud" is not one of/],
    [[...OK, '--bogus'], /Unknown option '--bogus'/],
    // Its aliases admit peers on the data port (runEastWest trustDomains): one that can never name a
    // SPIFFE ID is a typo, refused as every part refuses it (lib/main.ts trustDomainFlags).
    [[...OK, '--cert', 'c', '--key', 'k', '--trust-domain-alias', 'old.local', '--trust-domain-alias', 'Old Local'], /^--trust-domain-alias: trust domain "Old Local" is invalid/],
    [[...OK, '--cert', 'c', '--key', 'k', '--trust-domain', 'a/b'], /^--trust-domain: trust domain "a\/b" is invalid/],
  ];
  for (const [argv, want] of cases) {
    assert.throws(() => parseEastWestArgs(argv), (e: Error & { code?: string }) => e instanceof UsageError && e.code === 'WEFT_USAGE' && want.test(e.message), argv.join(' '));
  }
  assert.deepEqual(parseEastWestArgs([...OK, '--ca-address', '10.0.0.9:15012', '--token-file', '/t', '--trust-domain-alias', 'old.local']), {
    host: '10.0.0.1', port: 15008, identity: { kind: 'issued', caAddress: '10.0.0.9:15012', tokenFile: '/t' }, trustBundleFile: 'roots.pem',
    controllerUrl: 'https://10.0.0.9:15014', trustDomain: 'cluster.local', trustDomainAliases: ['old.local'], logLevel: 'info',
  });
});

test('controller, agent, waypoint and east-west gateway refuse an unknown flag the same way: exit 2, "<part>: " and the flag', async () => {
  for (const [part, file] of [['controller', 'controller/src/main.ts'], ['agent', 'agent/src/main.ts'], ['waypoint', 'waypoint/src/main.ts'], ['eastwest', 'eastwest/src/main.ts']] as const) {
    const child = spawn(process.execPath, [new URL(`../../${file}`, import.meta.url).pathname, '--no-such-flag'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const { code, stderr } = await collectOutput(child, 30_000);
    assert.equal(code, 2, `${part}: ${stderr}`);
    assert.match(stderr, new RegExp(`^${part}: .*--no-such-flag`), part);
  }
});

test('agent --uninstall --ready-file: with nothing pinned it writes the ready file, stays running (a DaemonSet pod stays ready), and SIGTERM ends it with 0', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-uninstall-'));
  try {
    const ready = join(dir, 'uninstalled');
    const child = spawn(process.execPath, [new URL('../../agent/src/main.ts', import.meta.url).pathname, '--uninstall', '--pin-root', join(dir, 'no-pins'), '--ready-file', ready], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out = collectOutput(child, 30_000);
    await until('the ready file exists', () => existsSync(ready), 20_000);
    // Still running well after it wrote the file (it used to exit right away, restarting the pod).
    await new Promise((r) => setTimeout(r, 1_000));
    assert.equal(child.exitCode, null, 'still running');
    child.kill('SIGTERM');
    const { code, stdout } = await out;
    assert.equal(code, 0);
    assert.match(stdout, /no Weft datapath pinned on this node/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
