// Hostile config files in the local config directory: a YAML alias bomb is refused like any
// unreadable file (it used to throw out of the watcher and kill the controller), and later valid
// changes are still read.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { ConfigDirSource, type ConfigFileError } from '../../controller/src/sources/files.ts';
import { ns, pod } from './controller-fixtures.ts';
import { startHarness, until } from './controller-harness.ts';

/** Nine levels of nine aliases each: 9^10 leaves once expanded. */
function aliasBomb(): string {
  const lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]'];
  for (let i = 1; i <= 9; i++) {
    const prev = String.fromCharCode(96 + i);
    const name = String.fromCharCode(97 + i);
    lines.push(`${name}: &${name} [${Array(9).fill(`*${prev}`).join(',')}]`);
  }
  return lines.join('\n') + '\n';
}

test('a YAML alias bomb in the config directory is refused as a file error, its last good objects stay, and later changes are still read', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-ctl-'));
  const errors: ConfigFileError[] = [];
  const h = await startHarness(new ConfigDirSource({ dir, debounceMs: 10, onFileError: (e) => errors.push(e) }));
  try {
    writeFileSync(join(dir, 'mesh.yaml'), [ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), pod('shop', 'web')].map((o) => stringify(o)).join('---\n'));
    const a = h.agent('node-a');
    await until('web delivered', () => a.snapshot?.workloads.length === 1);
    writeFileSync(join(dir, 'mesh.yaml'), aliasBomb());
    await until('the bomb is reported', () => errors.length > 0);
    assert.equal(errors[0]!.file, 'mesh.yaml');
    assert.match(errors[0]!.message, /alias/i);
    assert.equal(a.snapshot!.workloads.length, 1, 'the objects last read from the file stay');
    writeFileSync(join(dir, 'mesh.yaml'), [ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), pod('shop', 'web'), pod('shop', 'api')].map((o) => stringify(o)).join('---\n'));
    await until('a valid change after the bomb is read', () => a.snapshot?.workloads.length === 2);
  } finally {
    await h.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
