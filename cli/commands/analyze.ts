// weftctl analyze [-f FILE|DIR|-]… [-n NS | -A]: what the controller would find, and more, for
// manifests (no mesh needed), for the local mesh's config folder, or for a cluster's objects read
// from the API (cli/analyze.ts does the analysis).
//
// Exit codes: 0 no finding (Info allowed); 1 an Error or Warning; 2 unusable input or usage.
import { Command } from 'commander';
import { join } from 'node:path';
import { analyze, analyzeExitCode, formatFinding, type AnalyzeInput, type Finding } from '../analyze.ts';
import { collect } from './apply.ts';
import { ManifestInputError, readManifests, readStdin, type StdinReader } from './manifests.ts';
import { oneLine, outputOptions, namespaceOptions, renderData, type NamespaceFlags, type OutputFlags } from './output.ts';
import { chooseTarget, targetOptions, NoTargetError, KubeConfigError, type TargetFlags } from './target.ts';
import { KubeApiError } from '../kube.ts';
import { installCompileOptions } from '../mesh-view.ts';
import type { CompileOptions } from '../../controller/src/compile.ts';
import { EXIT_USAGE, exitUsageOnCommanderError, processIo, type CommandIo } from './install.ts';

interface Flags extends TargetFlags, OutputFlags, NamespaceFlags {
  filename?: string[];
}

/** Kinds read beside the mesh's own: ReferenceGrants and the pod templates of workload controllers. */
const EXTRA_KINDS = [
  { apiVersion: 'gateway.networking.k8s.io/v1beta1', plural: 'referencegrants', namespaced: true },
  { apiVersion: 'apps/v1', plural: 'deployments', namespaced: true },
  { apiVersion: 'apps/v1', plural: 'statefulsets', namespaced: true },
  { apiVersion: 'apps/v1', plural: 'daemonsets', namespaced: true },
];

export function analyzeCommand(io: CommandIo = processIo, stdin: StdinReader = readStdin): Command {
  const cmd = new Command('analyze')
    .description('find problems in mesh objects: invalid fields, unknown waypoints, routes and policies nothing enforces or that conflict, selectors that select nothing, L7 rules that fail closed, consumer routes, missing ReferenceGrants (files need no mesh; without -f: the local mesh or the cluster)')
    .option('-f, --filename <path>', 'a YAML/JSON file, a directory of them, or - for standard input (repeatable)', collect);
  namespaceOptions(targetOptions(outputOptions(cmd, ['table', 'json', 'yaml'])));
  return exitUsageOnCommanderError(cmd, io).action(async (f: Flags) => {
    let inputs: AnalyzeInput[];
    let complete = false;
    let compile: CompileOptions = {};
    let what: string;
    try {
      if (f.filename) {
        const files = readManifests(f.filename, stdin);
        for (const w of files.flatMap((x) => x.warnings)) io.err(`weftctl analyze: ${w}\n`);
        inputs = files.flatMap((x) => x.objects.map((object) => ({ object, source: x.source })));
        what = `${files.length} file(s)`;
      } else {
        const t = await chooseTarget(f);
        if (t.kind === 'local') {
          const files = readManifests([join(t.st.stateDir, 'config')], stdin);
          inputs = files.flatMap((x) => x.objects.map((object) => ({ object, source: x.source })));
          what = `local mesh "${t.st.prefix}"`;
        } else {
          const ns = f.allNamespaces ? undefined : f.namespace;
          const note = (line: string) => io.err(`weftctl analyze: ${line}\n`);
          const [objects, options] = await Promise.all([t.kube.meshObjects(ns, EXTRA_KINDS, note), installCompileOptions(t.kube, t.namespace, note)]);
          inputs = objects.map((object) => ({ object }));
          compile = options;
          what = `cluster ${t.kube.server.origin}${ns ? `, namespace ${ns}` : ''}`;
        }
        complete = true;
      }
    } catch (e) {
      if (e instanceof ManifestInputError || e instanceof NoTargetError || e instanceof KubeConfigError || e instanceof KubeApiError) {
        io.err(`weftctl analyze: ${e.message}\n`);
        io.setExitCode(EXIT_USAGE);
        return;
      }
      throw e;
    }
    const all = analyze(inputs, { complete, compile });
    const findings = all.filter((x) => f.allNamespaces || !f.namespace || x.namespace === f.namespace || x.namespace === '');
    if (!renderData(io, f, findings)) io.out(formatFindings(findings, inputs.length, what));
    io.setExitCode(analyzeExitCode(findings));
  });
}

/** One line per finding, then a summary. */
export function formatFindings(findings: readonly Finding[], objects: number, what: string): string {
  // A finding quotes names and values from the objects (a tenant's manifest): one line each, controls escaped.
  const lines = findings.map((x) => oneLine(formatFinding(x)));
  const count = (s: Finding['severity']) => findings.filter((x) => x.severity === s).length;
  lines.push(findings.length === 0
    ? `no problems found in ${objects} object(s) from ${what}`
    : `${count('Error')} error(s), ${count('Warning')} warning(s), ${count('Info')} info in ${objects} object(s) from ${what}`);
  return lines.join('\n') + '\n';
}
