// weftctl apply -f … / delete -f …: change the running local mesh. Every source (files,
// directories, `-` for stdin) is read and every object validated first (a bad field is named and
// nothing is written; `--dry-run` stops there and needs no mesh), then each source's text lands in
// the config directory the controller watches; delete removes what an earlier apply of the same
// source added.
//
// Exit codes: 0 done; 1 an object is invalid, or no mesh runs; 2 usage or unusable input
// (missing, unreadable, too large, binary, YAML that does not parse).
import { existsSync, rmSync, writeFileSync, renameSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Command } from 'commander';
import { validateObject, withoutNullFields } from '../../lib/model/validate.ts';
import { parseManifest, formatManifestProblem } from '../../lib/model/manifest.ts';
import { localMeshOptions, runningMesh, type LocalMeshFlags } from './local-mesh.ts';
import { ManifestInputError, readManifestTexts, readStdin, type ManifestText, type StdinReader } from './manifests.ts';
import { processIo, exitUsageOnCommanderError, EXIT_FAILED, EXIT_USAGE, type CommandIo } from './install.ts';

interface Flags extends LocalMeshFlags {
  filename: string[];
  dryRun?: boolean;
}

/** Parses and validates every document; returns the problems, one line each. */
export function checkManifest(text: string, file: string): { objects: unknown[]; problems: string[]; unusable: boolean } {
  const problems: string[] = [];
  const parsed = parseManifest(text);
  for (const p of parsed.problems) problems.push(`${file}: ${formatManifestProblem(p)}`);
  if (parsed.problems.some((p) => p.fatal)) return { objects: [], problems, unusable: true };
  const objects: unknown[] = [];
  for (const raw of parsed.objects) {
    const obj = withoutNullFields(raw);
    objects.push(obj);
    for (const i of validateObject(obj)) {
      problems.push(`${file}: ${i.kind} ${i.namespace ? `${i.namespace}/` : ''}${i.name}: ${i.path ? `${i.path}: ` : ''}${i.message}`);
    }
  }
  if (objects.length === 0 && problems.length === 0) problems.push(`${file}: no objects in the file`);
  return { objects, problems, unusable: false };
}

/** Where a source lands in the mesh's config folder: one file per source, named after it. */
export function configTarget(stateDir: string, source: string): string {
  const name = source === '-' ? 'stdin.yaml' : resolve(source).slice(1);
  return join(stateDir, 'config', `50-user-${name.replace(/[^A-Za-z0-9._-]/g, '_')}`);
}

/** -f may be given several times. */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

function base(name: string, description: string, io: CommandIo): Command {
  return localMeshOptions(exitUsageOnCommanderError(new Command(name), io))
    .description(description)
    .requiredOption('-f, --filename <path>', 'a YAML/JSON file, a directory of them, or - for standard input (repeatable)', collect);
}

/** Every source's text, or undefined after reporting why the input is unusable (exit 2). */
function readSources(io: CommandIo, cmd: string, sources: string[], stdin: StdinReader): ManifestText[] | undefined {
  try {
    return readManifestTexts(sources, stdin);
  } catch (e) {
    if (!(e instanceof ManifestInputError)) throw e;
    io.err(`weftctl ${cmd}: ${e.message}\n`);
    io.setExitCode(EXIT_USAGE);
    return undefined;
  }
}

export function applyCommand(io: CommandIo = processIo, stdin: StdinReader = readStdin): Command {
  return base('apply', 'add or change objects in the running local mesh (validated first; --dry-run only validates)', io)
    .option('--dry-run', 'validate only: print what would be applied, change nothing (no mesh needed)')
    .action((f: Flags) => {
      const texts = readSources(io, 'apply', f.filename, stdin);
      if (!texts) return;
      const checked = texts.map((t) => ({ ...t, ...checkManifest(t.text, t.source) }));
      const problems = checked.flatMap((c) => c.problems);
      if (problems.length > 0) {
        for (const p of problems) io.err(`weftctl apply: ${p}\n`);
        // A file that cannot be parsed is unusable input; a parsed object with a bad field is a finding.
        io.setExitCode(checked.some((c) => c.unusable) ? EXIT_USAGE : EXIT_FAILED);
        return;
      }
      if (!f.dryRun && !runningMesh(io, f)) return;
      for (const c of checked) {
        if (!f.dryRun) {
          const dest = configTarget(f.stateDir, c.source);
          writeFileSync(`${dest}.tmp`, c.text);
          renameSync(`${dest}.tmp`, dest);
        }
        for (const o of c.objects as Array<{ kind: string; metadata: { name: string; namespace?: string } }>) {
          io.out(`${o.kind.toLowerCase()}/${o.metadata.namespace ? `${o.metadata.namespace}/` : ''}${o.metadata.name} ${f.dryRun ? 'valid (dry run)' : 'applied'}\n`);
        }
      }
    });
}

export function deleteCommand(io: CommandIo = processIo, stdin: StdinReader = readStdin): Command {
  return base('delete', 'remove objects an earlier `weftctl apply -f` of the same sources added', io).action((f: Flags) => {
    const texts = readSources(io, 'delete', f.filename, stdin);
    if (!texts) return;
    if (!runningMesh(io, f)) return;
    const missing = texts.filter((t) => !existsSync(configTarget(f.stateDir, t.source)));
    if (missing.length > 0) {
      for (const t of missing) io.err(`weftctl delete: ${t.source} was not applied to this mesh\n`);
      io.setExitCode(EXIT_FAILED);
      return;
    }
    for (const t of texts) {
      rmSync(configTarget(f.stateDir, t.source));
      io.out(`${t.source}: objects deleted\n`);
    }
  });
}
