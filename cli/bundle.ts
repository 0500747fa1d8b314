// weftctl as a package that runs without this repository: one JavaScript file bundled by esbuild
// (Node refuses to strip types under node_modules, so the .ts sources cannot be installed as they
// are) and a package.json naming it as the `weftctl` bin. `make build` writes build/weftctl/;
// `npm install build/weftctl` (or the tarball `npm pack` makes of it) installs it anywhere.
// Commands that run the local mesh (up, and inspection inside its network namespaces) still need
// a checkout: they start the repository's processes and load its libbpf addon.
//
//   node cli/bundle.ts [out-dir]      (default build/weftctl)
import { build } from 'esbuild';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pkg from '../package.json' with { type: 'json' };

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** Writes `<outDir>/weftctl.mjs` and `<outDir>/package.json`; returns the bin's path. */
export async function bundleWeftctl(outDir: string): Promise<string> {
  mkdirSync(outDir, { recursive: true });
  const bin = join(outDir, 'weftctl.mjs');
  await build({
    // In one file every module's import.meta.main would be true, and each module with a main block
    // (a supervisor, a part's main) would run it: they are all false here, and this entry runs
    // weftctl's program.
    stdin: {
      contents: "#!/usr/bin/env node\nimport { program } from './cli/weftctl.ts';\nawait program().parseAsync(process.argv);\n",
      resolveDir: ROOT,
      sourcefile: 'weftctl-bin.ts',
      loader: 'ts',
    },
    define: { 'import.meta.main': 'false' },
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node24',
    outfile: bin,
    logLevel: 'warning',
    // CommonJS dependencies call require(); an ES module has none of its own.
    // The entry file's own #! line stays first.
    banner: { js: "import { createRequire as __weftRequire } from 'node:module';\nconst require = __weftRequire(import.meta.url);" },
    legalComments: 'none',
  });
  chmodSync(bin, 0o755);
  writeFileSync(join(outDir, 'package.json'), JSON.stringify({
    name: 'weftctl',
    version: pkg.version,
    description: 'The Weft service mesh command line (bundled)',
    type: 'module',
    bin: { weftctl: 'weftctl.mjs' },
    files: ['weftctl.mjs'],
    engines: pkg.engines,
  }, null, 2) + '\n');
  return bin;
}

if (import.meta.main) {
  const out = resolve(process.argv[2] ?? join(ROOT, 'build/weftctl'));
  console.log(await bundleWeftctl(out));
}
