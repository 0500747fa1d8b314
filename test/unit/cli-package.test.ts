// weftctl without the repository: the bundle (cli/bundle.ts, what `make build` writes to
// build/weftctl/) installed with npm into a fresh folder far from this checkout and its
// node_modules (the bundle's folder removed afterwards), and run from there.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { bundleWeftctl } from '../../cli/bundle.ts';
import { CLIENT_VERSION } from '../../cli/commands/version.ts';

const work = mkdtempSync(join(tmpdir(), 'weft-cli-pkg-'));
after(() => rmSync(work, { recursive: true, force: true }));
/** npm from PATH (Node's own bin folder may not carry it). */
const npm = 'npm';

test('the bundled weftctl installs with npm into a fresh folder and runs there', { timeout: 120_000 }, async () => {
  const pkgDir = join(work, 'pkg');
  await bundleWeftctl(pkgDir);
  const env = { ...process.env, npm_config_cache: join(work, 'npm-cache'), npm_config_update_notifier: 'false', npm_config_audit: 'false', npm_config_fund: 'false' };
  const fresh = join(work, 'fresh');
  // --install-links copies the package as a tarball install would (no symlink back to pkgDir).
  execFileSync(npm, ['install', '--offline', '--install-links', '--prefix', fresh, pkgDir], { env, stdio: 'pipe' });
  rmSync(pkgDir, { recursive: true });
  const bin = join(fresh, 'node_modules', '.bin', 'weftctl');
  const run = (args: string[], input?: string) => spawnSync(bin, args, { cwd: fresh, encoding: 'utf8', input, env: { PATH: `${dirname(process.execPath)}:/usr/bin:/bin`, HOME: fresh } });

  const v = run(['version', '--client']);
  assert.equal(v.status, 0, v.stderr);
  assert.match(v.stdout, new RegExp(`^client\\s+weftctl\\s+${CLIENT_VERSION.replace(/\./g, '\\.')}`, 'm'));

  writeFileSync(join(fresh, 'policy.yaml'), 'apiVersion: weft.dev/v1alpha1\nkind: PeerAuthentication\nmetadata: { name: p, namespace: shop }\nspec: { mtls: { mode: STRICTER } }\n');
  const a = run(['analyze', '-f', 'policy.yaml']);
  assert.equal(a.status, 1, a.stderr);
  assert.match(a.stdout, /^Error \[Invalid\] PeerAuthentication shop\/p spec\.mtls\.mode \(policy\.yaml\): /m);
  const d = run(['apply', '--dry-run', '-f', '-'], 'apiVersion: v1\nkind: Namespace\nmetadata: { name: shop }\n');
  assert.equal(d.status, 0, d.stderr);
  assert.equal(d.stdout, 'namespace/shop valid (dry run)\n');
  const c = run(['completion', 'bash']);
  assert.match(c.stdout, /complete -F _weftctl weftctl/);
  const none = run(['analyze']);
  assert.equal(none.status, 2, 'no mesh and no kubeconfig is a usage error');
  assert.match(none.stderr, /no cluster and no local mesh/);
});
