// weftctl apply -f … / delete -f …: change the running mesh. Every source (files, directories,
// `-` for stdin) is read and every object validated first (a bad field is named and nothing is
// written; `--dry-run` stops there and needs no mesh). On the local mesh each source's text then
// lands in the config directory the controller watches, and delete removes what an earlier apply of
// the same source added; on a cluster each object goes to the API server by server-side apply
// (field manager `weftctl`, as `kubectl apply --server-side`), and delete deletes the objects the
// sources name.
//
// Exit codes: 0 done; 1 an object is invalid, or no mesh runs; 2 usage or unusable input
// (missing, unreadable, too large, binary, YAML that does not parse).
import { existsSync, rmSync, writeFileSync, renameSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Command } from 'commander';
import { validateObject, withoutNullFields } from '../../lib/model/validate.ts';
import { parseManifest, formatManifestProblem } from '../../lib/model/manifest.ts';
import { runningMesh } from './local-mesh.ts';
import { commandTarget, targetOptions, type TargetFlags } from './target.ts';
import { KINDS, type MeshKind } from '../../lib/model/objects.ts';
import type { KubeClient } from '../kube.ts';
import { ManifestInputError, readManifestTexts, readStdin, type ManifestText, type StdinReader } from './manifests.ts';
import { processIo, exitUsageOnCommanderError, EXIT_FAILED, EXIT_USAGE, type CommandIo } from './install.ts';

interface Flags extends TargetFlags {
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


type Obj = { apiVersion?: string; kind: string; metadata: { name: string; namespace?: string } };

/**
 * The API path of an object of the mesh's kinds (its namespace, else the context's), in the
 * apiVersion it is written in when the controller reads the kind in it (Istio's security.istio.io).
 */
function objectPath(kube: KubeClient, o: Obj): string {
  const k = KINDS[o.kind as MeshKind];
  if (!k || (o.apiVersion && !k.apiVersions.includes(o.apiVersion))) throw new Error(`${o.kind} ${o.apiVersion ?? ''} is not one of the mesh's kinds; apply it with kubectl`);
  const base = k.group ? `/apis/${o.apiVersion ?? k.apiVersion}` : `/api/${k.version}`;
  const ns = k.namespaced ? `/namespaces/${encodeURIComponent(o.metadata.namespace ?? kube.contextNamespace)}` : '';
  return `${base}${ns}/${k.plural}/${encodeURIComponent(o.metadata.name)}`;
}

/** Runs `one` per object in order; a failure is reported and the rest still run (exit 1). */
async function eachObject(io: CommandIo, label: string, objects: Obj[], one: (o: Obj) => Promise<string>): Promise<void> {
  for (const o of objects) {
    const name = `${o.kind.toLowerCase()}/${o.metadata.namespace ? `${o.metadata.namespace}/` : ''}${o.metadata.name}`;
    try {
      io.out(`${name} ${await one(o)}\n`);
    } catch (e) {
      io.err(`weftctl ${label}: ${name}: ${(e as Error).message}\n`);
      io.setExitCode(EXIT_FAILED);
    }
  }
}

function base(name: string, description: string, io: CommandIo): Command {
  return targetOptions(exitUsageOnCommanderError(new Command(name), io))
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
  const cmd: Command = base('apply', 'add or change objects in the running mesh (validated first; --dry-run only validates)', io)
    .option('--dry-run', 'validate only: print what would be applied, change nothing (no mesh needed)')
    .action(async (f: Flags) => {
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
      const t = f.dryRun ? undefined : await commandTarget(cmd, f, io);
      if (!f.dryRun && !t) return;
      if (t?.kind === 'cluster') {
        const kube = t.kube;
        await eachObject(io, 'apply', checked.flatMap((c) => c.objects as Obj[]), async (o) => {
          await kube.serverSideApply(objectPath(kube, o), o);
          return 'serverside-applied';
        });
        return;
      }
      if (!f.dryRun && !runningMesh(io, f)) return;
      for (const c of checked) {
        if (!f.dryRun) {
          const dest = configTarget(f.stateDir, c.source);
          writeFileSync(`${dest}.tmp`, c.text);
          renameSync(`${dest}.tmp`, dest);
        }
        for (const o of c.objects as Obj[]) {
          io.out(`${o.kind.toLowerCase()}/${o.metadata.namespace ? `${o.metadata.namespace}/` : ''}${o.metadata.name} ${f.dryRun ? 'valid (dry run)' : 'applied'}\n`);
        }
      }
    });
  return cmd;
}

export function deleteCommand(io: CommandIo = processIo, stdin: StdinReader = readStdin): Command {
  const cmd: Command = base('delete', 'remove the objects of the sources (local mesh: what an earlier `weftctl apply -f` of the same sources added)', io).action(async (f: Flags) => {
    const texts = readSources(io, 'delete', f.filename, stdin);
    if (!texts) return;
    const t = await commandTarget(cmd, f, io);
    if (!t) return;
    if (t.kind === 'cluster') {
      const checked = texts.map((x) => ({ ...x, ...checkManifest(x.text, x.source) }));
      if (checked.some((c) => c.unusable)) {
        for (const p of checked.flatMap((c) => c.problems)) io.err(`weftctl delete: ${p}\n`);
        io.setExitCode(EXIT_USAGE);
        return;
      }
      await eachObject(io, 'delete', checked.flatMap((c) => c.objects as Obj[]), async (o) => {
        await t.kube.send('DELETE', objectPath(t.kube, o));
        return 'deleted';
      });
      return;
    }
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
  return cmd;
}
