// Structural-schema validation and pruning of custom resources, as the kube-apiserver does it for
// apiextensions.k8s.io/v1 CRDs, with a real JSON-schema validator (ajv) over the CRD's own
// openAPIV3Schema:
//   - pruning: fields a structural schema does not name are dropped silently (unless the schema
//     says x-kubernetes-preserve-unknown-fields), before validation, as the API server does;
//   - validation: types, enums, patterns, min/max, required; the error names the field path
//     (`spec.replicas: Invalid value: ...`) like the API server's 422 Invalid;
//   - x-kubernetes-int-or-string and nullable as Kubernetes defines them.
// metadata, apiVersion and kind are the API server's own business and never pruned here.
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';

type Schema = Record<string, unknown>;

/** Kubernetes schema extensions → plain JSON schema ajv understands; objects without preserve-unknown-fields get additionalProperties:false (pruning). */
function structural(schema: Schema, root = false): Schema {
  const out: Schema = {};
  for (const [k, v] of Object.entries(schema)) {
    if (k.startsWith('x-kubernetes-')) continue;
    if (k === 'properties' && v && typeof v === 'object') {
      out[k] = Object.fromEntries(Object.entries(v as Record<string, Schema>).map(([p, s]) => [p, structural(s)]));
    } else if ((k === 'items' || k === 'additionalProperties' || k === 'not') && v && typeof v === 'object') {
      out[k] = structural(v as Schema);
    } else if ((k === 'allOf' || k === 'anyOf' || k === 'oneOf') && Array.isArray(v)) {
      // In structural schemas these only validate; they carry no types of their own.
      out[k] = (v as Schema[]).map((s) => structural(s));
    } else out[k] = v;
  }
  if (schema['x-kubernetes-int-or-string'] === true) {
    delete out['type'];
    out['anyOf'] = [...((out['anyOf'] as Schema[] | undefined) ?? []), { type: 'integer' }, { type: 'string' }];
  }
  if (schema['nullable'] === true && typeof out['type'] === 'string') out['type'] = [out['type'], 'null'];
  delete out['nullable'];
  const preserve = schema['x-kubernetes-preserve-unknown-fields'] === true;
  if (root) {
    out['properties'] = { ...((out['properties'] as Schema | undefined) ?? {}), apiVersion: { type: 'string' }, kind: { type: 'string' }, metadata: { type: 'object' } };
  }
  if (!preserve && out['properties'] && out['additionalProperties'] === undefined) out['additionalProperties'] = false;
  return out;
}

export class SchemaInvalidError extends Error {
  readonly code = 'LAB_SCHEMA_INVALID';
  readonly causes: string[];
  /** `kind` as the API server names it: `Waypoint.weft.dev`. */
  constructor(kind: string, name: string, causes: string[]) {
    super(`${kind} "${name}" is invalid: ${causes.join(', ')}`);
    this.name = 'SchemaInvalidError';
    this.causes = causes;
  }
}

const ajv = new Ajv({ allErrors: true, strict: false, removeAdditional: true, validateFormats: false });

function fieldPath(e: ErrorObject): string {
  const parts = e.instancePath.split('/').filter(Boolean).map((p) => (/^\d+$/.test(p) ? `[${p}]` : `.${p}`));
  let path = parts.join('').replace(/^\./, '');
  if (e.keyword === 'required') path = `${path ? `${path}.` : ''}${(e.params as { missingProperty: string }).missingProperty}`;
  return path || '<root>';
}

function describe(e: ErrorObject, obj: unknown): string {
  const path = fieldPath(e);
  if (e.keyword === 'required') return `${path}: Required value`;
  let value: unknown = obj;
  for (const p of e.instancePath.split('/').filter(Boolean)) value = (value as Record<string, unknown> | undefined)?.[p];
  if (e.keyword === 'enum') return `${path}: Unsupported value: ${JSON.stringify(value)}: supported values: ${(e.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ')}`;
  if (e.keyword === 'type') return `${path}: Invalid value: "${typeof value}": ${path} in body must be of type ${(e.params as { type: string }).type}: ${JSON.stringify(value)}`;
  return `${path}: Invalid value: ${JSON.stringify(value)}: ${e.message ?? e.keyword}`;
}

/** One served version of one CRD: prunes and validates objects in place. */
export class CrdVersionSchema {
  readonly #validate: ValidateFunction;
  readonly kind: string;

  constructor(kind: string, group: string, openAPIV3Schema: Schema) {
    this.kind = `${kind}.${group}`;
    this.#validate = ajv.compile(structural(openAPIV3Schema, true));
  }

  /** Prunes unknown fields from `obj` (mutating it) and throws SchemaInvalidError naming every bad field. */
  check(obj: { metadata: { name: string } } & Record<string, unknown>): void {
    const metadata = obj.metadata;
    const ok = this.#validate(obj as unknown);
    obj.metadata = metadata;
    if (ok) return;
    const causes = [...new Set((this.#validate.errors ?? []).map((e) => describe(e, obj)))];
    throw new SchemaInvalidError(this.kind, metadata.name, causes);
  }
}
