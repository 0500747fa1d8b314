// The chained CNI plugin (agent/cni/weft-cni.c, built by `make build`) against the agent's CNI
// socket (agent/src/cni.ts) with a recording backend, following the CNI spec 1.1: CNI_COMMAND
// from the environment, the network configuration on stdin, prevResult passed through by a
// chained plugin that changes nothing, errors as { cniVersion, code, msg, details } on stdout with
// a non-zero exit, and a pod whose enrolment fails never gets its network (issue 15, item 5).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CniError, CNI_ERROR, CniServer, type CniBackend, type CniPod } from '../../agent/src/cni.ts';
import { CNI_PLUGIN } from '../../cli/local/mesh.ts';
import { silentLogger } from '../../lib/log.ts';

const dir = mkdtempSync(join(tmpdir(), 'weft-cni-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const PREV = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: '/var/run/netns/p1' }], ips: [{ address: '10.77.1.9/32', interface: 0 }] };

function netconf(socket: string, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'weft-cni', agentSocket: socket, prevResult: PREV, ...extra });
}

async function plugin(command: string, stdin: string, env: Record<string, string> = {}): Promise<{ code: number | null; out: unknown; raw: string }> {
  assert.ok(existsSync(CNI_PLUGIN), `${CNI_PLUGIN} is missing: run make build`);
  const child = spawn(CNI_PLUGIN, [], {
    env: {
      CNI_COMMAND: command, CNI_CONTAINERID: 'c0ffee', CNI_NETNS: '/var/run/netns/p1', CNI_IFNAME: 'eth0',
      CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1;K8S_POD_UID=1234-abcd', CNI_PATH: '/opt/cni/bin', ...env,
    },
  });
  let raw = '';
  child.stdout.on('data', (c: Buffer) => (raw += c));
  child.stdin.on('error', () => {});
  child.stdin.end(stdin);
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
  let out: unknown;
  try { out = raw.trim() ? JSON.parse(raw) : undefined; } catch { out = raw; }
  return { code, out, raw };
}

/** A CniServer on a fresh socket with a backend that records calls and answers with `impl`. */
async function agent(impl: Partial<CniBackend> = {}) {
  const calls: Array<[string, unknown]> = [];
  const backend: CniBackend = {
    add: async (pod: CniPod) => { calls.push(['add', pod]); return impl.add ? impl.add(pod) : { enrolled: true, mode: 'STRICT' }; },
    del: async (pod) => { calls.push(['del', pod]); return impl.del?.(pod); },
    check: async (pod) => { calls.push(['check', pod]); return impl.check?.(pod); },
  };
  const server = new CniServer(backend, silentLogger);
  const socket = join(dir, `agent-${Math.random().toString(36).slice(2)}.sock`);
  await server.listen(socket);
  after(() => server.close());
  return { socket, calls, server };
}

test('VERSION is answered by the plugin itself', async () => {
  const r = await plugin('VERSION', '{"cniVersion":"1.1.0"}');
  assert.equal(r.code, 0);
  assert.deepEqual(r.out, { cniVersion: '1.1.0', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] });
});

test('ADD enrols the pod through the agent and passes prevResult through unchanged', async () => {
  const a = await agent();
  const r = await plugin('ADD', netconf(a.socket));
  assert.equal(r.code, 0, r.raw);
  assert.deepEqual(r.out, PREV);
  assert.deepEqual(a.calls, [['add', { containerId: 'c0ffee', netns: '/var/run/netns/p1', ifname: 'eth0', namespace: 'demo', name: 'web-1', uid: '1234-abcd', ips: ['10.77.1.9'] }]]);
  assert.equal(statSync(a.socket).mode & 0o777, 0o600, 'only root may ask the agent to enrol pods');
});

test('ADD fails the pod\'s network when the agent cannot enrol it, with the agent\'s code and reason', async () => {
  const a = await agent({ add: async () => { throw new CniError(CNI_ERROR.tryAgainLater, 'pod demo/web-1 is not in node n1\'s mesh config after 10000 ms'); } });
  const r = await plugin('ADD', netconf(a.socket, { cniVersion: '0.4.0' }));
  assert.equal(r.code, 1);
  assert.deepEqual(r.out, { cniVersion: '0.4.0', code: 11, msg: 'pod demo/web-1 is not in node n1\'s mesh config after 10000 ms' });
  const b = await agent({ add: async () => { throw new Error('attach tcx: ENOENT'); } });
  const s = await plugin('ADD', netconf(b.socket));
  assert.equal(s.code, 1);
  assert.deepEqual(s.out, { cniVersion: '1.0.0', code: 100, msg: 'attach tcx: ENOENT' });
});

test('with the agent down, ADD and CHECK fail (try again later) and DEL succeeds', async () => {
  const gone = join(dir, 'nobody-listens.sock');
  const add = await plugin('ADD', netconf(gone));
  assert.equal(add.code, 1);
  const out = add.out as { cniVersion: string; code: number; msg: string; details: string };
  assert.equal(out.cniVersion, '1.0.0');
  assert.equal(out.code, 11);
  assert.match(out.msg, /agent on this node cannot be reached/);
  assert.match(out.details, /nobody-listens\.sock: No such file/);
  assert.equal((await plugin('CHECK', netconf(gone))).code, 1);
  const del = await plugin('DEL', netconf(gone));
  assert.equal(del.code, 0);
  assert.equal(del.raw, '');
});

test('DEL and CHECK reach the agent; CHECK reports a pod that is not enrolled', async () => {
  const a = await agent({ check: async () => { throw new CniError(CNI_ERROR.notEnrolled, 'ambient pod demo/web-1 is not enrolled in the datapath'); } });
  const del = await plugin('DEL', netconf(a.socket, { prevResult: undefined }), { CNI_NETNS: '' });
  assert.equal(del.code, 0, del.raw);
  assert.deepEqual(a.calls[0], ['del', { netns: '', containerId: 'c0ffee', namespace: 'demo', name: 'web-1', uid: '1234-abcd' }]);
  const check = await plugin('CHECK', netconf(a.socket));
  assert.equal(check.code, 1);
  assert.deepEqual(check.out, { cniVersion: '1.0.0', code: 101, msg: 'ambient pod demo/web-1 is not enrolled in the datapath' });
});

test('an excluded namespace is passed through without asking the agent, even when it is down', async () => {
  const gone = join(dir, 'down.sock');
  const r = await plugin('ADD', netconf(gone, { excludeNamespaces: ['kube-system', 'demo'] }));
  assert.equal(r.code, 0, r.raw);
  assert.deepEqual(r.out, PREV);
  const other = await plugin('ADD', netconf(gone, { excludeNamespaces: ['kube-system', 'dem'] }));
  assert.equal(other.code, 1, 'a prefix of an excluded name is not excluded');
});

test('bad input costs only itself: each gets a CNI error naming what was wrong', async () => {
  const a = await agent();
  const cases: Array<[string, string, Record<string, string>, number, RegExp]> = [
    ['ADD', 'not json', {}, CNI_ERROR.decode, /not a JSON object/],
    ['ADD', '{"cniVersion":"1.0.0","prevResult":{}', {}, CNI_ERROR.decode, /not a JSON object/],
    ['ADD', netconf(a.socket, { prevResult: undefined }), {}, CNI_ERROR.invalidConfig, /chained plugin/],
    ['ADD', netconf(a.socket), { CNI_ARGS: 'K8S_POD_NAME=web-1' }, CNI_ERROR.invalidEnvironment, /K8S_POD_NAMESPACE/],
    ['ADD', netconf(a.socket), { CNI_NETNS: '' }, CNI_ERROR.invalidEnvironment, /CNI_NETNS/],
    ['ADD', netconf(a.socket, { prevResult: { ips: [{ address: 7 }] } }), {}, CNI_ERROR.invalidConfig, /prevResult\.ips\[0\]\.address/],
    ['ADD', netconf(a.socket, { agentSocket: 42 }), {}, CNI_ERROR.invalidConfig, /agentSocket/],
    ['ADD', netconf(a.socket, { timeoutSeconds: 0 }), {}, CNI_ERROR.invalidConfig, /timeoutSeconds/],
    ['FROB', netconf(a.socket), {}, CNI_ERROR.invalidEnvironment, /CNI_COMMAND/],
    ['', netconf(a.socket), {}, CNI_ERROR.invalidEnvironment, /CNI_COMMAND is not set/],
  ];
  for (const [command, stdin, env, code, msg] of cases) {
    const r = await plugin(command, stdin, env);
    assert.equal(r.code, 1, `${command} ${stdin} ${JSON.stringify(env)}: ${r.raw}`);
    const out = r.out as { code: number; msg: string };
    assert.equal(out.code, code, r.raw);
    assert.match(out.msg, msg);
  }
  assert.equal(a.calls.length, 0, 'nothing malformed reached the backend');
  // The socket still serves after all that.
  assert.equal((await plugin('ADD', netconf(a.socket))).code, 0);
});

test('install-cni copies the plugin and chains it last in the node\'s first conflist, once, leaving the others', async () => {
  const { withWeftPlugin } = await import('../../agent/cni/install.ts');
  const { mkdirSync, writeFileSync, readFileSync } = await import('node:fs');
  const bin = join(dir, 'host-bin');
  const conf = join(dir, 'host-conf');
  mkdirSync(bin);
  mkdirSync(conf);
  const main = { cniVersion: '1.0.0', name: 'k8s-pod-network', plugins: [{ type: 'ptp' }, { type: 'portmap', capabilities: { portMappings: true } }] };
  writeFileSync(join(conf, '10-ptp.conflist'), JSON.stringify(main));
  writeFileSync(join(conf, '99-other.conflist'), JSON.stringify(main));
  const run = () => new Promise<number | null>((resolve) => {
    const c = spawn(process.execPath, [join(import.meta.dirname, '..', '..', 'agent', 'cni', 'install.ts'), '--bin-dir', bin, '--conf-dir', conf,
      '--socket', '/var/run/weft/cni.sock', '--exclude-namespace', 'kube-system', '--exclude-namespace', 'weft-system'], { stdio: 'ignore' });
    c.once('close', resolve);
  });
  assert.equal(await run(), 0);
  assert.equal(await run(), 0, 'idempotent');
  const got = JSON.parse(readFileSync(join(conf, '10-ptp.conflist'), 'utf8'));
  assert.deepEqual(got.plugins.map((p: { type: string }) => p.type), ['ptp', 'portmap', 'weft-cni']);
  assert.deepEqual(got.plugins[2], { type: 'weft-cni', agentSocket: '/var/run/weft/cni.sock', excludeNamespaces: ['kube-system', 'weft-system'] });
  assert.deepEqual(JSON.parse(readFileSync(join(conf, '99-other.conflist'), 'utf8')), main, 'only the conflist the runtime uses');
  assert.equal(statSync(join(bin, 'weft-cni')).mode & 0o777, 0o755);
  assert.throws(() => withWeftPlugin({ name: 'x' }, {}), /no "plugins" array/);
  // No network configuration yet (the node's network plugin has not started): fail, the kubelet retries.
  rmSync(join(conf, '10-ptp.conflist'));
  rmSync(join(conf, '99-other.conflist'));
  assert.equal(await run(), 1);
});

// Issue 15: the plugin fails a pod's network setup when no agent answers, so uninstall must take it
// out of the chain, or every new pod on the node would fail to start once the agents are gone.
test('agent --uninstall takes weft-cni out of every conflist and removes its binary, leaving the other plugins; idempotent', async () => {
  const { mkdirSync, writeFileSync, readFileSync, copyFileSync } = await import('node:fs');
  const bin = join(dir, 'uninstall-bin');
  const conf = join(dir, 'uninstall-conf');
  mkdirSync(bin);
  mkdirSync(conf);
  copyFileSync(CNI_PLUGIN, join(bin, 'weft-cni'));
  const main = { cniVersion: '1.0.0', name: 'k8s-pod-network', plugins: [{ type: 'ptp' }, { type: 'portmap', capabilities: { portMappings: true } }] };
  const chained = { ...main, plugins: [...main.plugins, { type: 'weft-cni', agentSocket: '/var/run/weft/cni.sock', excludeNamespaces: ['kube-system'] }] };
  writeFileSync(join(conf, '10-ptp.conflist'), JSON.stringify(chained));
  writeFileSync(join(conf, '20-other.conflist'), JSON.stringify(main));
  writeFileSync(join(conf, '30-broken.conflist'), '{ not json');
  const other = readFileSync(join(conf, '20-other.conflist'), 'utf8');
  // The agent in uninstall mode, as the cleanup DaemonSet runs it (no BPF pinned under this root).
  const run = () => new Promise<{ code: number | null; out: string }>((resolve) => {
    const c = spawn(process.execPath, [join(import.meta.dirname, '..', '..', 'agent', 'src', 'main.ts'), '--uninstall',
      '--pin-root', join(dir, 'no-pins'), '--cni-conf-dir', conf, '--cni-bin-dir', bin], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    c.stderr.on('data', (d: Buffer) => { out += d.toString(); });
    c.once('close', (code) => resolve({ code, out }));
  });
  const first = await run();
  assert.equal(first.code, 0, first.out);
  assert.deepEqual(JSON.parse(readFileSync(join(conf, '10-ptp.conflist'), 'utf8')), main, 'the chain as the network plugin wrote it');
  assert.equal(readFileSync(join(conf, '20-other.conflist'), 'utf8'), other, 'a conflist without weft-cni is not rewritten');
  assert.equal(readFileSync(join(conf, '30-broken.conflist'), 'utf8'), '{ not json', 'an unreadable file is left alone');
  assert.equal(existsSync(join(bin, 'weft-cni')), false);
  const line = first.out.split('\n').map((l) => { try { return JSON.parse(l) as Record<string, unknown>; } catch { return undefined; } }).find((l) => l?.['msg'] !== undefined && String(l['msg']).includes('CNI'));
  assert.ok(line, first.out);
  assert.equal(line['level'], 'warn', 'the unreadable conflist is reported');
  assert.deepEqual(line['conflists'], [join(conf, '10-ptp.conflist')]);
  assert.deepEqual(line['unreadable'], [join(conf, '30-broken.conflist')]);
  const second = await run();
  assert.equal(second.code, 0, second.out);
  assert.match(second.out, /no chained CNI plugin on this node/);
});
