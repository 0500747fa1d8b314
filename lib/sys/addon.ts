// The loader of Weft's native addon, weft_bpf.node (agent/native/: node-gyp over the system's
// libbpf). The agent's BPF layer (agent/libbpf) is its main user; every process also takes its
// memory functions (lib/sys/memory.ts) from it.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Where the addon is looked for, in order: $WEFT_BPF_ADDON, then the node-gyp build folders. */
export function addonCandidates(): string[] {
  const here = dirname(fileURLToPath(import.meta.url));
  const nativeDir = resolve(here, '..', '..', 'agent', 'native');
  const out: string[] = [];
  if (process.env.WEFT_BPF_ADDON) out.push(resolve(process.env.WEFT_BPF_ADDON));
  out.push(join(nativeDir, 'build', 'Release', 'weft_bpf.node'), join(nativeDir, 'build', 'Debug', 'weft_bpf.node'));
  return out;
}

export class AddonNotFoundError extends Error {
  readonly code = 'WEFT_ADDON_NOT_FOUND';
  readonly tried: string[];
  constructor(tried: string[], cause?: unknown) {
    super(`the libbpf addon weft_bpf.node could not be loaded; tried ${tried.join(', ')}. ` +
      'Build it with `make addon` (needs libbpf-dev, libelf-dev, zlib1g-dev; `make deps` installs them)' +
      (cause instanceof Error ? `; last error: ${cause.message}` : ''), { cause });
    this.name = 'AddonNotFoundError';
    this.tried = tried;
  }
}

let loaded: unknown;

/** The addon's exports, loaded on first use. Throws AddonNotFoundError naming every path it tried. */
export function loadAddon(): unknown {
  if (loaded) return loaded;
  const require = createRequire(import.meta.url);
  const tried = addonCandidates();
  let lastError: unknown;
  for (const path of tried) {
    if (!existsSync(path)) continue;
    try {
      loaded = require(path) as unknown;
      return loaded;
    } catch (err) {
      lastError = err;
    }
  }
  throw new AddonNotFoundError(tried, lastError);
}
