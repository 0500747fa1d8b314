// There is no Docker engine on the build machines, so the image is checked statically: the
// stages use the project's Node major, everything COPY takes from the repository exists, and
// everything taken from the build stage is either a repository path or an output of `make build`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const DOCKERFILE = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
const MAKEFILE = readFileSync(join(ROOT, 'Makefile'), 'utf8');

interface Instruction {
  op: string;
  args: string;
}

/** Instructions with continuation lines joined; heredoc bodies and comments skipped. */
function instructions(text: string): Instruction[] {
  const out: Instruction[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    let line = lines[i] ?? '';
    if (!line.trim() || line.trimStart().startsWith('#')) continue;
    while (line.endsWith('\\') && i + 1 < lines.length) line = line.slice(0, -1) + ' ' + (lines[++i] ?? '').trim();
    const m = /^([A-Z]+)\s+(.*)$/.exec(line.trim());
    if (!m) continue;
    out.push({ op: m[1] ?? '', args: m[2] ?? '' });
    const heredoc = /<<-?'?(\w+)'?/.exec(line);
    if (heredoc) while (i + 1 < lines.length && lines[++i]?.trim() !== heredoc[1]) { /* body */ }
  }
  return out;
}

const INSTR = instructions(DOCKERFILE);

/** Whether a clean checkout has `rel`: tracked by git (the working tree when git is unavailable). */
function inRepository(rel: string): boolean {
  try {
    return execFileSync('git', ['ls-files', '--', rel], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() !== '';
  } catch {
    return existsSync(join(ROOT, rel));
  }
}
const projectNodeMajor = Number(/NODE_MAJOR_MIN := (\d+)/.exec(MAKEFILE)?.[1]);

function nodeImage(): string {
  const arg = INSTR.find((i) => i.op === 'ARG' && i.args.startsWith('NODE_IMAGE='));
  return arg?.args.split('=')[1] ?? '';
}

test('both stages use node:<project Node major>-bookworm-slim', () => {
  assert.equal(projectNodeMajor, 24);
  const engines = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { engines: { node: string } }).engines.node;
  assert.equal(engines, `>=${projectNodeMajor}`);
  assert.equal(nodeImage(), `node:${projectNodeMajor}-bookworm-slim`);
  const froms = INSTR.filter((i) => i.op === 'FROM').map((i) => i.args);
  assert.deepEqual(froms, ['${NODE_IMAGE} AS build', '${NODE_IMAGE} AS runtime']);
});

test('the build stage installs the BPF and addon toolchain and runs npm ci and make build', () => {
  const build = DOCKERFILE.slice(DOCKERFILE.indexOf('AS build'), DOCKERFILE.indexOf('AS runtime'));
  for (const pkg of ['clang', 'llvm', 'libbpf-dev', 'libelf-dev', 'make', 'g++', 'python3']) {
    assert.match(build, new RegExp(`\\s${pkg.replace('+', '\\+')}\\s`), pkg);
  }
  assert.match(build, /RUN npm ci/);
  assert.match(build, /make build/);
  assert.match(MAKEFILE, /^build: bpf addon cni typecheck cli compile-cache$/m);
});

test('the runtime stage fills Node\'s compile cache for every part, after the sources are in place, where NODE_COMPILE_CACHE points', async () => {
  const { COMPILE_CACHE_DIR, COMPILE_CACHE_PARTS } = await import('../../cli/install/compile-cache.ts');
  const runtime = INSTR.slice(INSTR.findIndex((i) => i.op === 'FROM' && i.args.includes('AS runtime')));
  const env = runtime.findIndex((i) => i.op === 'ENV' && i.args === `NODE_COMPILE_CACHE=/opt/weft/${COMPILE_CACHE_DIR}`);
  const run = runtime.findIndex((i) => i.op === 'RUN' && i.args.startsWith(`node cli/install/compile-cache.ts ${COMPILE_CACHE_DIR} `));
  assert.ok(env >= 0 && run > env, 'ENV NODE_COMPILE_CACHE, then the RUN that fills it');
  assert.deepEqual(runtime[run]!.args.split(/\s+/).slice(3).sort(), Object.keys(COMPILE_CACHE_PARTS).sort());
  const lastCopy = runtime.findLastIndex((i) => i.op === 'COPY' && !i.args.includes('<<'));
  assert.ok(run > lastCopy, 'filled after every source is copied (entries are keyed by path and content)');
  assert.ok(run < runtime.findIndex((i) => i.op === 'USER'), 'filled as root, before USER');
});

test('the runtime stage has the libraries the addon links and iproute2, and no compiler', () => {
  const runtime = DOCKERFILE.slice(DOCKERFILE.indexOf('AS runtime'));
  for (const pkg of ['libbpf1', 'libelf1', 'iproute2']) assert.match(runtime, new RegExp(`\\s${pkg}\\s`), pkg);
  assert.doesNotMatch(runtime, /\sclang\s|\sg\+\+\s|-dev\s/);
});

test('every path COPY takes from the repository exists', () => {
  const dockerignore = readFileSync(join(ROOT, '.dockerignore'), 'utf8');
  for (const i of INSTR.filter((x) => x.op === 'COPY' && !x.args.includes('--from') && !x.args.includes('<<'))) {
    const parts = i.args.split(/\s+/).filter((p) => !p.startsWith('--'));
    for (const src of parts.slice(0, -1)) {
      assert.ok(src === '.' || inRepository(src), `COPY ${src}: missing in the repository`);
      assert.ok(!dockerignore.split('\n').includes(src), `COPY ${src}: excluded by .dockerignore`);
    }
  }
});

// Outputs of `make build` (the Makefile's BPF_OBJ, CNI_PLUGIN and ADDON) the runtime stage copies.
const BUILD_OUTPUTS: Record<string, RegExp> = {
  'build/bpf': /^BPF_OBJ := .*build\/bpf\//m,
  'build/cni': /^CNI_PLUGIN := build\/cni\/weft-cni$/m,
  'agent/native/build/Release/weft_bpf.node': /^ADDON := agent\/native\/build\/Release\/weft_bpf\.node$/m,
  node_modules: /npm ci/,
  deploy: /mkdir -p deploy\/crds/,
};

test('every path the runtime stage copies from the build stage is in the repository or made by the build', () => {
  const copies = INSTR.filter((i) => i.op === 'COPY' && i.args.includes('--from=build'));
  assert.ok(copies.length >= 10);
  for (const c of copies) {
    const src = c.args.split(/\s+/).filter((p) => !p.startsWith('--'))[0] ?? '';
    assert.ok(src.startsWith('/src/'), src);
    const rel = src.slice('/src/'.length);
    const made = BUILD_OUTPUTS[rel];
    if (made) {
      assert.match(rel.startsWith('agent/') || rel.startsWith('build/') ? MAKEFILE : DOCKERFILE, made, `${rel} is not made by the build`);
    } else {
      assert.ok(inRepository(rel), `COPY --from=build ${src}: ${rel} is missing in the repository`);
    }
  }
});

test('the entrypoint runs agent, controller, waypoint and weftctl from their main files (the controller with CONTROLLER_V8_FLAGS)', async () => {
  const { CONTROLLER_V8_FLAGS } = await import('../../cli/install/names.ts');
  const entry = { agent: 'agent/src/main.ts', controller: `${CONTROLLER_V8_FLAGS} controller/src/main.ts`, waypoint: 'waypoint/src/main.ts', weftctl: 'cli/weftctl.ts' };
  for (const [cmd, file] of Object.entries(entry)) {
    assert.match(DOCKERFILE, new RegExp(`^\\s+${cmd}\\)\\s+exec node ${file.replace(/\./g, '\\.')} "\\$@" ;;$`, 'm'), cmd);
  }
  assert.match(DOCKERFILE, /^ENTRYPOINT \["\/usr\/local\/bin\/weft"\]$/m);
});

test('the manifests start the parts the entrypoint knows', async () => {
  const { renderInstall } = await import('../../cli/install/render.ts');
  const objects = renderInstall({ image: 'weft:dev', trustDomain: 'cluster.local', warn: () => {} });
  const args = objects.flatMap((o) => {
    const spec = (o as { spec?: { template?: { spec?: { containers?: { args?: string[] }[] } } } }).spec?.template?.spec;
    return (spec?.containers ?? []).map((c) => c.args?.[0]);
  });
  assert.deepEqual(args.sort(), ['agent', 'controller']);
});

// The entry files are written by the owners of each part; until all exist this is a todo, which
// reports without failing the run.
const ENTRY_FILES = ['agent/src/main.ts', 'controller/src/main.ts', 'waypoint/src/main.ts', 'cli/weftctl.ts'];
const missingEntries = ENTRY_FILES.filter((f) => !inRepository(f));
test('every file the entrypoint runs is in the repository', { todo: missingEntries.length ? `not yet written: ${missingEntries.join(', ')}` : false }, () => {
  assert.deepEqual(missingEntries, []);
});

test('the entrypoint script passes the remaining arguments to the chosen part and exits 2 on an unknown one', () => {
  const body = /<<'EOF_WEFT' \/usr\/local\/bin\/weft\n([\s\S]*?)\nEOF_WEFT\n/.exec(DOCKERFILE)?.[1];
  assert.ok(body, 'heredoc of /usr/local/bin/weft');
  const dir = mkdtempSync(join(tmpdir(), 'weft-entry-'));
  const bin = join(dir, 'bin');
  mkdirSync(bin);
  // A stand-in node that prints what it was asked to run.
  writeFileSync(join(bin, 'node'), '#!/bin/sh\necho "$PWD $*"\n', { mode: 0o755 });
  const script = join(dir, 'weft');
  writeFileSync(script, body.replace('cd /opt/weft', `cd ${dir}`), { mode: 0o755 });
  const run = (...args: string[]) => spawnSync('/bin/sh', [script, ...args], { encoding: 'utf8', env: { PATH: `${bin}:/usr/bin:/bin` } });
  assert.equal(run('agent', '--node', 'n 1').stdout, `${dir} agent/src/main.ts --node n 1\n`);
  assert.equal(run('controller', '--kube').stdout, `${dir} --heap-growing-percent=20 controller/src/main.ts --kube\n`);
  assert.equal(run('waypoint').stdout, `${dir} waypoint/src/main.ts\n`);
  assert.equal(run('weftctl', 'check').stdout, `${dir} cli/weftctl.ts check\n`);
  const bad = run('--namespace', 'x');
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /usage: weft agent\|controller\|waypoint\|weftctl/);
});
