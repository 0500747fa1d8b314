// weftctl starts without @kubernetes/client-node (870 modules, 0.6 s of every command's start on
// this machine): it is loaded when a command first reads a kubeconfig (cli/kube.ts loadKubeConfig).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';

const WEFTCTL = resolve(import.meta.dirname, '../../cli/weftctl.ts');

/** The modules a weftctl run loaded, from a module hook preloaded into it. */
async function loadedModules(args: string[]): Promise<{ modules: string[]; stdout: string; stderr: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'weft-startup-'));
  try {
    const hook = join(dir, 'hook.mjs');
    const list = join(dir, 'modules.txt');
    writeFileSync(hook, `import { registerHooks } from 'node:module';
import { writeFileSync } from 'node:fs';
const seen = [];
registerHooks({ load(url, context, next) { seen.push(url); return next(url, context); } });
process.on('exit', () => writeFileSync(${JSON.stringify(list)}, seen.join('\\n')));
`);
    const r = await promisify(execFile)(process.execPath, ['--import', hook, WEFTCTL, ...args], { env: { ...process.env, KUBECONFIG: '' } })
      .catch((e: { stdout: string; stderr: string }) => e);
    return { modules: readFileSync(list, 'utf8').split('\n'), stdout: r.stdout, stderr: r.stderr };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const kubeClient = (m: string) => m.includes('/node_modules/@kubernetes/client-node/');

test('weftctl version --client and a local-mesh command start without loading @kubernetes/client-node', async () => {
  const v = await loadedModules(['version', '--client']);
  assert.match(v.stdout, /weftctl/);
  assert.ok(v.modules.length > 50, 'the hook saw weftctl\'s modules');
  assert.deepEqual(v.modules.filter(kubeClient), []);
  const w = await loadedModules(['workloads', '--prefix', 'weftnone', '--state-dir', '/nonexistent']);
  assert.match(w.stderr, /no local mesh "weftnone" is running/);
  assert.deepEqual(w.modules.filter(kubeClient), []);
});

test('a command given a kubeconfig loads @kubernetes/client-node when it reads it, and a bad one is one clear line', async () => {
  const r = await loadedModules(['workloads', '--kubeconfig', '/nonexistent/kubeconfig']);
  assert.match(r.stderr, /^weftctl: cannot read kubeconfig \/nonexistent\/kubeconfig: ENOENT/);
  assert.ok(r.modules.some(kubeClient), 'loaded on use');
  const u = await loadedModules(['uninstall', '--kubeconfig', '/nonexistent/kubeconfig']);
  assert.match(u.stderr, /^uninstall: cannot read kubeconfig \/nonexistent\/kubeconfig: ENOENT/);
});
