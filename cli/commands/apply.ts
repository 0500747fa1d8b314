// weftctl apply -f FILE / delete -f FILE: change the running local mesh. Objects are validated
// here first (a bad field is named and nothing is written), then the file lands in the config
// directory the controller watches; delete removes what an earlier apply of that file added.
import { existsSync, readFileSync, rmSync, writeFileSync, renameSync } from 'node:fs';
import { basename, join } from 'node:path';
import { Command } from 'commander';
import { parseAllDocuments } from 'yaml';
import { validateObject } from '../../lib/model/validate.ts';
import { localMeshOptions, runningMesh } from './local-mesh.ts';
import { processIo, exitUsageOnCommanderError, EXIT_FAILED, EXIT_USAGE, type CommandIo } from './install.ts';

interface Flags {
  filename: string;
  prefix: string;
  stateDir: string;
}

/** Parses and validates every document; returns the problems, one line each. */
export function checkManifest(text: string, file: string): { objects: unknown[]; problems: string[] } {
  const problems: string[] = [];
  const objects: unknown[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length > 0) {
      problems.push(`${file}: YAML error: ${doc.errors[0]!.message.split('\n')[0]}`);
      continue;
    }
    const obj = doc.toJS() as unknown;
    if (obj === null || obj === undefined) continue;
    objects.push(obj);
    for (const i of validateObject(obj)) {
      problems.push(`${file}: ${i.kind} ${i.namespace ? `${i.namespace}/` : ''}${i.name}: ${i.path ? `${i.path}: ` : ''}${i.message}`);
    }
  }
  if (objects.length === 0 && problems.length === 0) problems.push(`${file}: no objects in the file`);
  return { objects, problems };
}

function target(stateDir: string, file: string): string {
  return join(stateDir, 'config', `50-user-${basename(file).replace(/[^A-Za-z0-9._-]/g, '_')}`);
}

function base(name: string, description: string, io: CommandIo): Command {
  return localMeshOptions(exitUsageOnCommanderError(new Command(name), io))
    .description(description)
    .requiredOption('-f, --filename <file>', 'YAML file with one or more objects');
}

function meshRunning(io: CommandIo, f: Flags): boolean {
  return runningMesh(io, f) !== undefined;
}

export function applyCommand(io: CommandIo = processIo): Command {
  return base('apply', 'add or change objects in the running local mesh', io).action((f: Flags) => {
    if (!existsSync(f.filename)) {
      io.err(`weftctl apply: ${f.filename}: no such file\n`);
      io.setExitCode(EXIT_USAGE);
      return;
    }
    const { objects, problems } = checkManifest(readFileSync(f.filename, 'utf8'), f.filename);
    if (problems.length > 0) {
      for (const p of problems) io.err(`weftctl apply: ${p}\n`);
      io.setExitCode(EXIT_FAILED);
      return;
    }
    if (!meshRunning(io, f)) return;
    const dest = target(f.stateDir, f.filename);
    writeFileSync(`${dest}.tmp`, readFileSync(f.filename));
    renameSync(`${dest}.tmp`, dest);
    for (const o of objects as Array<{ kind: string; metadata: { name: string; namespace?: string } }>) {
      io.out(`${o.kind.toLowerCase()}/${o.metadata.namespace ? `${o.metadata.namespace}/` : ''}${o.metadata.name} applied\n`);
    }
  });
}

export function deleteCommand(io: CommandIo = processIo): Command {
  return base('delete', 'remove objects an earlier `weftctl apply -f` of the same file added', io).action((f: Flags) => {
    if (!meshRunning(io, f)) return;
    const dest = target(f.stateDir, f.filename);
    if (!existsSync(dest)) {
      io.err(`weftctl delete: ${basename(f.filename)} was not applied to this mesh\n`);
      io.setExitCode(EXIT_FAILED);
      return;
    }
    rmSync(dest);
    io.out(`${basename(f.filename)}: objects deleted\n`);
  });
}
