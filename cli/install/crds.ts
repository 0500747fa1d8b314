// The weft.dev CustomResourceDefinitions. The real ones, with full OpenAPI schemas, live in
// deploy/crds/*.yaml and are read at render time. A kind that has no file there is rendered from
// a minimal built-in definition (schema-less spec, status subresource) and reported through
// `warn`, so an install never silently lacks a kind the controller watches.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import type { ICustomResourceDefinition } from 'kubernetes-models/apiextensions.k8s.io/v1/CustomResourceDefinition';
import { CrdLoadError } from './errors.ts';
import { labels } from './names.ts';
import { KINDS, WEFT_API_VERSION } from '../../lib/model/objects.ts';

const [group = 'weft.dev', version = 'v1alpha1'] = WEFT_API_VERSION.split('/');
export const WEFT_GROUP = group;
export const WEFT_VERSION = version;

/** deploy/crds of this repository (also present in the image). */
export const DEFAULT_CRD_DIR = fileURLToPath(new URL('../../deploy/crds/', import.meta.url));

interface KindNames {
  kind: string;
  plural: string;
}

/** The kinds Weft defines (lib/model's weft.dev kinds); each needs a CRD. */
export const WEFT_KINDS: readonly KindNames[] = Object.values(KINDS)
  .filter((k) => k.group === WEFT_GROUP)
  .map((k) => ({ kind: k.kind, plural: k.plural }));

/** A minimal CRD: served and stored v1alpha1, any spec, a status subresource. */
export function builtinCrd(k: KindNames): ICustomResourceDefinition {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: {
      name: `${k.plural}.${WEFT_GROUP}`,
      labels: labels('weft-crds'),
      annotations: { 'weft.dev/crd-source': 'builtin-minimal (no schema; install deploy/crds for validation)' },
    },
    spec: {
      group: WEFT_GROUP,
      scope: 'Namespaced',
      names: { kind: k.kind, listKind: `${k.kind}List`, plural: k.plural, singular: k.kind.toLowerCase() },
      versions: [{
        name: WEFT_VERSION,
        served: true,
        storage: true,
        subresources: { status: {} },
        schema: {
          openAPIV3Schema: {
            type: 'object',
            properties: {
              spec: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true },
              status: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true },
            },
          },
        },
      }],
    },
  };
}

function isCrd(doc: unknown): doc is ICustomResourceDefinition {
  const d = doc as { apiVersion?: unknown; kind?: unknown; metadata?: { name?: unknown } } | null;
  return !!d && d.apiVersion === 'apiextensions.k8s.io/v1' && d.kind === 'CustomResourceDefinition' && typeof d.metadata?.name === 'string';
}

/** Every CRD in the .yaml/.yml files of `dir`, in file-name order. Throws {@link CrdLoadError}. */
export function readCrdDir(dir: string): ICustomResourceDefinition[] {
  if (!existsSync(dir)) return [];
  const files = readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).sort();
  const out: ICustomResourceDefinition[] = [];
  for (const f of files) {
    const file = join(dir, f);
    let docs: unknown[];
    try {
      docs = parseAllDocuments(readFileSync(file, 'utf8')).map((d) => {
        if (d.errors.length) throw d.errors[0];
        return d.toJS() as unknown;
      });
    } catch (err) {
      throw new CrdLoadError(file, `${file} is not valid YAML (${(err as Error).message.split('\n')[0]}); fix or remove it`, { cause: err });
    }
    for (const doc of docs) {
      if (doc == null) continue;
      if (!isCrd(doc)) {
        const k = (doc as { kind?: unknown }).kind;
        throw new CrdLoadError(file, `${file} holds a ${typeof k === 'string' ? k : 'document'} that is not an apiextensions.k8s.io/v1 CustomResourceDefinition; keep only CRDs in the CRD folder`);
      }
      out.push(doc);
    }
  }
  return out;
}

/** CRDs from `dir`, plus a built-in one for each Weft kind the folder lacks (named in `warn`). */
export function loadCrds(dir: string = DEFAULT_CRD_DIR, warn: (message: string) => void = () => {}): ICustomResourceDefinition[] {
  const fromDir = readCrdDir(dir);
  const names = new Set(fromDir.map((c) => c.metadata?.name));
  const missing = WEFT_KINDS.filter((k) => !names.has(`${k.plural}.${WEFT_GROUP}`));
  if (missing.length) {
    warn(`no CRD for ${missing.map((k) => k.kind).join(', ')} in ${dir}; rendering minimal built-in definitions without a schema`);
  }
  return [...fromDir, ...missing.map(builtinCrd)];
}
