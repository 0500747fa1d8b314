// weftctl apply/delete input handling: several files, directories and stdin; hostile input (a
// directory where a file was expected, alias bombs, huge, binary, deeply nested YAML) answers with
// one line naming the source and exit code 2, never a stack trace; --dry-run validates without a mesh.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { applyCommand, checkManifest, deleteCommand } from '../../cli/commands/apply.ts';
import { readManifests, ManifestInputError } from '../../cli/commands/manifests.ts';
import { aliasBomb, runCommands } from './cli-harness.ts';

const dir = mkdtempSync(join(tmpdir(), 'weft-cli-apply-'));
after(() => rmSync(dir, { recursive: true, force: true }));
/** A state folder with no mesh: apply without --dry-run must refuse, never write. */
const NO_MESH = ['--prefix', 'wtnomesh', '--state-dir', join(dir, 'no-state')];

const POLICY = `apiVersion: weft.dev/v1alpha1
kind: PeerAuthentication
metadata: { name: strict, namespace: shop }
spec: { mtls: { mode: STRICT } }
`;
const NAMESPACE = `apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { weft.dev/dataplane-mode: ambient } }
`;

function file(name: string, text: string | Buffer): string {
  const p = join(dir, name);
  mkdirSync(join(p, '..'), { recursive: true });
  writeFileSync(p, text);
  return p;
}

const apply = (args: string[], stdin?: string) => runCommands((io) => [applyCommand(io, () => Buffer.from(stdin ?? ''))], ['apply', ...args]);

test('a manifest with a bad field is refused with the object and the field named', () => {
  const { problems } = checkManifest(`
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: deny-admin, namespace: shop }
spec:
  action: DENY
  rules:
    - from: [{ source: { ipBlocks: ["10.0.0.0/33"] } }]
`, 'policy.yaml');
  assert.equal(problems.length, 1);
  assert.match(problems[0]!, /^policy\.yaml: AuthorizationPolicy shop\/deny-admin: spec\.rules\[0\]\.from\[0\]\.source\.ipBlocks\[0\]: /);
});

test('broken YAML and empty files are refused', () => {
  assert.match(checkManifest('kind: [unclosed', 'x.yaml').problems[0]!, /^x\.yaml: document 1 \(line 1\) does not parse/);
  assert.deepEqual(checkManifest('', 'empty.yaml').problems, ['empty.yaml: no objects in the file']);
});

test('a valid multi-document manifest passes with every object', () => {
  const { objects, problems } = checkManifest(`${NAMESPACE}---\n${POLICY}`, 'ok.yaml');
  assert.deepEqual(problems, []);
  assert.equal(objects.length, 2);
});

test('apply --dry-run validates several files, a directory and stdin without a running mesh', async () => {
  const a = file('multi/a.yaml', NAMESPACE);
  file('tree/sub/b.yml', POLICY);
  file('tree/.hidden/c.yaml', 'not: [valid');
  file('tree/notes.txt', 'ignored');
  const r = await apply(['--dry-run', '-f', a, '-f', join(dir, 'tree'), '-f', '-', ...NO_MESH], POLICY.replace('strict', 'from-stdin'));
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, 'namespace/shop valid (dry run)\npeerauthentication/shop/strict valid (dry run)\npeerauthentication/shop/from-stdin valid (dry run)\n');
});

test('apply validates first: an invalid object is named and the exit code is 1, even with no mesh', async () => {
  const bad = file('bad.yaml', POLICY.replace('STRICT', 'STRICTEST'));
  const r = await apply(['-f', bad, ...NO_MESH]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /bad\.yaml: PeerAuthentication shop\/strict: spec\.mtls\.mode: /);
  assert.doesNotMatch(r.stderr, /no local mesh/);
});

test('apply of valid objects with no mesh says how to start one (exit 1)', async () => {
  const r = await apply(['-f', file('good.yaml', POLICY), ...NO_MESH]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /no local mesh "wtnomesh" is running; start one with `weftctl up`/);
});

// Each hostile input: what it is, and the one line it must print (exit 2, no stack trace).
const HOSTILE: Array<{ name: string; make: () => string[]; stdin?: string; error: RegExp }> = [
  { name: 'a missing file', make: () => [join(dir, 'nope.yaml')], error: /nope\.yaml: no such file or directory$/m },
  { name: 'a directory with no manifest', make: () => { mkdirSync(join(dir, 'empty-dir'), { recursive: true }); return [join(dir, 'empty-dir')]; }, error: /empty-dir: holds no \*\.yaml, \*\.yml or \*\.json file/ },
  { name: 'a YAML alias bomb', make: () => [file('bomb.yaml', aliasBomb())], error: /bomb\.yaml: document 1 cannot be read: .*alias/i },
  { name: 'an alias bomb on stdin', make: () => ['-'], stdin: aliasBomb(), error: /^weftctl apply: -: document 1 cannot be read/m },
  { name: 'a binary file', make: () => [file('bin.yaml', Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0, 1, 2, 3]))], error: /bin\.yaml: is binary/ },
  { name: 'invalid UTF-8', make: () => [file('latin1.yaml', Buffer.from([0x6b, 0x3a, 0x20, 0xe9, 0xff]))], error: /latin1\.yaml: is not UTF-8 text/ },
  { name: 'a file larger than 8 MiB', make: () => [file('huge.yaml', Buffer.alloc(8 * 1024 * 1024 + 1, 0x20))], error: /huge\.yaml: is larger than the 8388608 bytes/ },
  { name: 'nesting 100000 deep', make: () => [file('deep.yaml', '['.repeat(100_000))], error: /deep\.yaml: document 1 \(line 1\) nests deeper than 100 levels/ },
  { name: 'block nesting 300 deep', make: () => [file('indent.yaml', Array.from({ length: 300 }, (_, i) => `${' '.repeat(i)}k:`).join('\n'))], error: /indent\.yaml: document 1 \(line 202\) nests deeper/ },
  { name: 'a document that is not an object', make: () => [file('scalar.yaml', '"just a string"\n')], error: /scalar\.yaml: document 1 is not an object/ },
];
for (const h of HOSTILE) {
  test(`apply -f with ${h.name} answers one clean line and exit 2`, async () => {
    const r = await apply(['--dry-run', '-f', ...h.make()], h.stdin);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, h.error);
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
    assert.equal(r.stdout, '');
  });
}

test('a FIFO-like file that lies about its size is still bounded', () => {
  assert.throws(() => readManifests([file('small.yaml', 'a'.repeat(100))], undefined, 10), (e: unknown) => e instanceof ManifestInputError && /larger than the 10 bytes/.test(e.message));
});

test('delete names each source that was never applied (exit 1) and needs a mesh', async () => {
  const r = await runCommands((io) => [deleteCommand(io)], ['delete', '-f', file('d.yaml', POLICY), ...NO_MESH]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /no local mesh/);
});

test('apply and delete on a cluster: each object by server-side apply (field manager weftctl) and DELETE through the API server; a bad object writes nothing', async () => {
  const { FakeApiServer } = await import('../../cli/local/kube/fake-apiserver.ts');
  const { DEFAULT_RESOURCES, ISTIO_SECURITY_RESOURCES } = await import('../../cli/local/kube/fake-apiserver.ts');
  const api = new FakeApiServer({ resources: [...DEFAULT_RESOURCES, ...ISTIO_SECURITY_RESOURCES] });
  await api.start();
  const cdir = mkdtempSync(join(tmpdir(), 'weft-cli-apply-cluster-'));
  try {
    const kubeconfig = join(cdir, 'kubeconfig');
    writeFileSync(kubeconfig, api.kubeconfig());
    const file = join(cdir, 'mesh.yaml');
    writeFileSync(file, [
      'apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: shop}\nspec: {action: DENY, rules: [{to: [{operation: {paths: ["/admin*"]}}]}]}',
      'apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: shop}\nspec: {selector: {app: reviews}, ports: [{name: http, port: 80}]}',
      // Istio's group, which the controller reads too, goes to Istio's resource.
      'apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}}',
    ].join('\n---\n'));
    const k = ['--kubeconfig', kubeconfig];
    const a = await apply(['-f', file, ...k]);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(a.stdout, 'authorizationpolicy/shop/deny-admin serverside-applied\nservice/shop/reviews serverside-applied\npeerauthentication/shop/default serverside-applied\n');
    assert.ok(api.get('PeerAuthentication', 'shop', 'default', 'security.istio.io/v1'), 'in security.istio.io');
    assert.equal(api.get('PeerAuthentication', 'shop', 'default', 'weft.dev/v1alpha1'), undefined, 'not in weft.dev');
    const pol = api.get('AuthorizationPolicy', 'shop', 'deny-admin') as { spec: { action: string }; metadata: { managedFields?: Array<{ manager: string }> } } | undefined;
    assert.equal(pol?.spec.action, 'DENY');
    assert.ok(pol?.metadata.managedFields?.some((m) => m.manager === 'weftctl'), 'owned by field manager weftctl');
    const rv = api.resourceVersion;
    assert.equal((await apply(['-f', file, ...k])).code, 0);
    assert.equal(api.resourceVersion, rv, 'a second apply of the same objects changes nothing');
    // A bad field is named and nothing is sent.
    const bad = join(cdir, 'bad.yaml');
    writeFileSync(bad, 'apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: broken, namespace: shop}\nspec: {action: MAYBE}\n');
    const b = await apply(['-f', bad, ...k]);
    assert.equal(b.code, 1);
    assert.match(b.stderr, /spec\.action/);
    assert.equal(api.get('AuthorizationPolicy', 'shop', 'broken'), undefined);
    const d = await runCommands((io) => [deleteCommand(io)], ['delete', '-f', file, ...k]);
    assert.equal(d.code, 0, d.stderr);
    assert.equal(api.get('AuthorizationPolicy', 'shop', 'deny-admin'), undefined);
    assert.equal(api.get('Service', 'shop', 'reviews'), undefined);
    const again = await runCommands((io) => [deleteCommand(io)], ['delete', '-f', file, ...k]);
    assert.equal(again.code, 1, 'deleting what is gone fails, naming it');
    assert.match(again.stderr, /authorizationpolicy\/shop\/deny-admin: DELETE .* 404/);
  } finally {
    await api.stop();
    rmSync(cdir, { recursive: true, force: true });
  }
});
