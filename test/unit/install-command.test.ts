import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import { Command } from 'commander';
import { installCommand, type CommandIo } from '../../cli/commands/install.ts';
import { checkCommand, formatResults } from '../../cli/commands/check.ts';
import type { CheckResult } from '../../cli/check.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

class Exit extends Error {
  readonly exitCode: number;
  constructor(code: number) {
    super(`exit ${code}`);
    this.exitCode = code;
  }
}

function io(): CommandIo & { stdout: string; stderr: string; code: number | undefined } {
  const s = {
    stdout: '', stderr: '', code: undefined as number | undefined,
    out(text: string) { s.stdout += text; },
    err(text: string) { s.stderr += text; },
    exit(code: number): never { s.code = code; throw new Exit(code); },
    setExitCode(code: number) { s.code = code; },
  };
  return s;
}

async function run(cmd: (io: CommandIo) => Command, args: string[]) {
  const out = io();
  const program = new Command('weftctl').exitOverride().addCommand(cmd(out));
  try {
    await program.parseAsync(args, { from: 'user' });
  } catch (err) {
    if (!(err instanceof Exit)) throw err;
  }
  return out;
}

test('install prints YAML for kubectl and exits 0', async () => {
  const r = await run(installCommand, ['install', '--image', 'ghcr.io/acme/weft:0.1.0', '--trust-domain', 'example.org']);
  assert.equal(r.code, 0);
  const kinds = parseAllDocuments(r.stdout).map((d) => (d.toJS() as { kind: string }).kind);
  assert.equal(kinds[0], 'Namespace');
  assert.ok(kinds.includes('DaemonSet') && kinds.includes('Deployment'));
  assert.match(r.stdout, /- --trust-domain\n +- example\.org\n/);
});

test('install --trust-domain-alias (repeatable) hands every alias to the controller and the agents; a bad one exits 2 naming the flag', async () => {
  const r = await run(installCommand, ['install', '--image', 'weft:dev', '--trust-domain', 'new-td', '--trust-domain-alias', 'old-td', '--trust-domain-alias', 'older-td']);
  assert.equal(r.code, 0, r.stderr);
  const docs = parseAllDocuments(r.stdout).map((d) => d.toJS() as { kind: string; spec?: { template?: { spec?: { containers: Array<{ args?: string[] }> } } } });
  for (const kind of ['DaemonSet', 'Deployment']) {
    const args = docs.find((d) => d.kind === kind)?.spec?.template?.spec?.containers[0]?.args ?? [];
    assert.deepEqual(args.flatMap((a, i) => (a === '--trust-domain-alias' ? [args[i + 1]] : [])), ['old-td', 'older-td'], kind);
  }
  const bad = await run(installCommand, ['install', '--image', 'weft:dev', '--trust-domain-alias', 'Old TD']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--trust-domain-alias: trust domain "Old TD" is invalid/);
});

test('install --ca-secret mounts the CA into the controller', async () => {
  const r = await run(installCommand, ['install', '--image', 'weft:dev', '--ca-secret', 'weft-ca', '--controller-replicas', '2']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /secretName: weft-ca/);
  assert.doesNotMatch(r.stderr, /--ca-secret/);
});

test('install -o json prints a v1 List', async () => {
  const r = await run(installCommand, ['install', '--image', 'weft:dev', '-o', 'json', '--namespace', 'mesh']);
  assert.equal(r.code, 0);
  const list = JSON.parse(r.stdout) as { kind: string; items: { metadata: { name: string } }[] };
  assert.equal(list.kind, 'List');
  assert.equal(list.items[0]?.metadata.name, 'mesh');
});

test('install exits 2 and names the option for an empty image or a bad trust domain', async () => {
  const empty = await run(installCommand, ['install', '--image', '']);
  assert.equal(empty.code, 2);
  assert.match(empty.stderr, /^weftctl install: --image is empty/);
  assert.equal(empty.stdout, '');
  const td = await run(installCommand, ['install', '--image', 'weft:dev', '--trust-domain', 'Bad!']);
  assert.equal(td.code, 2);
  assert.match(td.stderr, /--trust-domain: trust domain "Bad!" is invalid/);
});

test('install exits 2 on commander usage errors: missing --image, bad -o, bad replicas', async () => {
  // --image may come from -f values.yaml, so its absence is the renderer's usage error.
  const missing = await run(installCommand, ['install']);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /--image is empty/);
  for (const args of [['install', '--image', 'weft', '-o', 'xml'], ['install', '--image', 'weft', '--controller-replicas', 'two']]) {
    const r = await run(installCommand, args);
    assert.equal(r.code, 2, args.join(' '));
    assert.match(r.stderr, /error: /);
  }
});

test('check exits 1 when a check fails and 0 when all pass, printing the remedy', async () => {
  const failing = await run((o) => checkCommand(o, { kernelRelease: '5.4.0-generic', vmlinuxBtf: '/nonexistent/vmlinux', capLastCap: '38' }), ['check']);
  assert.equal(failing.code, 1);
  assert.match(failing.stdout, /FAIL\s+tcx links/);
  assert.match(failing.stdout, /-> upgrade the kernel to Linux 6\.6/);

  const results: CheckResult[] = [{ id: 'a', title: 'a', status: 'pass', detail: 'fine' }];
  assert.match(formatResults(results), /all checks passed/);
});

test('check -o json prints the results', async () => {
  const r = await run((o) => checkCommand(o, { kernelRelease: '6.8.0', vmlinuxBtf: '/nonexistent/vmlinux' }), ['check', '-o', 'json']);
  const results = JSON.parse(r.stdout) as CheckResult[];
  assert.ok(results.some((x) => x.id === 'kernel.tcx' && x.status === 'pass'));
});

test('a real process exits 2 for a usage error and 0 for help', () => {
  const script = "import { Command } from 'commander'; import { installCommand } from './cli/commands/install.ts';" +
    'await new Command("weftctl").addCommand(installCommand()).parseAsync(process.argv.slice(1), { from: "user" });';
  const node = (args: string[]) => spawnSync(process.execPath, ['--input-type=module', '-e', script, '--', ...args], { cwd: ROOT, encoding: 'utf8' });
  const usage = node(['install', '--image', 'weft', '--bogus']);
  assert.equal(usage.status, 2, usage.stderr);
  assert.match(usage.stderr, /unknown option '--bogus'/);
  const bad = node(['install', '--image', '']);
  assert.equal(bad.status, 2, bad.stderr);
  const help = node(['install', '--help']);
  assert.equal(help.status, 0, help.stderr);
  assert.match(help.stdout, /--trust-domain/);
});
