// The kustomize base `weftctl install --kustomize` writes is the same installation: checked with
// the real `kubectl kustomize`, and an overlay on it patches what values.yaml does not cover.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { renderInstall, toKustomizeBase } from '../../cli/install/render.ts';

const skip = spawnSync('kubectl', ['version', '--client']).status !== 0 && 'kubectl is not installed';

test('kubectl kustomize of the generated base gives back exactly the rendered objects; an overlay patches it', { skip }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-kustomize-'));
  try {
    const objects = renderInstall({ image: 'registry.example/weft:0.2.0', trustDomain: 'cluster.local', namespace: 'mesh', warn: () => {} });
    const base = join(dir, 'base');
    mkdirSync(base);
    for (const [name, text] of toKustomizeBase(objects)) writeFileSync(join(base, name), text);
    const built = execFileSync('kubectl', ['kustomize', base], { encoding: 'utf8', env: { ...process.env, HOME: dir } });
    const key = (o: { kind: string; metadata: { namespace?: string; name: string } }) => `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`;
    const sorted = (list: unknown[]) => (list as Array<{ kind: string; metadata: { namespace?: string; name: string } }>).sort((a, b) => key(a).localeCompare(key(b)));
    const docs = parseAllDocuments(built).map((d) => d.toJS());
    assert.deepEqual(sorted(docs), sorted(JSON.parse(JSON.stringify(objects))));

    const overlay = join(dir, 'overlay');
    mkdirSync(overlay);
    writeFileSync(join(overlay, 'kustomization.yaml'), [
      'apiVersion: kustomize.config.k8s.io/v1beta1', 'kind: Kustomization', 'bases: [../base]', // kustomize v2 (kubectl 1.20) takes a directory only under bases
      'patchesJson6902:', '- target: {group: apps, version: v1, kind: Deployment, name: weft-controller, namespace: mesh}', '  path: priority.yaml', '',
    ].join('\n'));
    writeFileSync(join(overlay, 'priority.yaml'), '- op: replace\n  path: /spec/template/spec/priorityClassName\n  value: platform-critical\n');
    const patched = parseAllDocuments(execFileSync('kubectl', ['kustomize', overlay], { encoding: 'utf8', env: { ...process.env, HOME: dir } })).map((d) => d.toJS() as { kind: string; spec?: { template?: { spec?: { priorityClassName?: string } } } });
    assert.equal(patched.find((o) => o.kind === 'Deployment')?.spec?.template?.spec?.priorityClassName, 'platform-critical');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
