import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { validateObject } from '../../lib/model/validate.ts';
import { KINDS } from '../../lib/model/objects.ts';

const DIR = join(import.meta.dirname, '..', '..', 'deploy', 'crds');

type Schema = {
  type?: string; properties?: Record<string, Schema>; required?: string[]; enum?: unknown[]; items?: Schema;
  additionalProperties?: Schema; minimum?: number; maximum?: number; pattern?: string; minItems?: number; maxItems?: number;
  minProperties?: number; minLength?: number; maxLength?: number; 'x-kubernetes-int-or-string'?: boolean; default?: unknown;
};

/** The subset of OpenAPI v3 that the API server applies to these CRDs (no CEL). Returns the paths at fault. */
function check(schema: Schema, v: unknown, path: string, out: string[]): void {
  if (schema['x-kubernetes-int-or-string']) {
    if (typeof v !== 'string' && !Number.isInteger(v)) out.push(path);
    return;
  }
  const t = schema.type;
  const ok = t === undefined || (t === 'object' ? typeof v === 'object' && v !== null && !Array.isArray(v) : t === 'array' ? Array.isArray(v) : t === 'integer' ? Number.isInteger(v) : t === 'number' ? typeof v === 'number' : typeof v === t);
  if (!ok) return void out.push(path);
  if (schema.enum && !schema.enum.includes(v)) out.push(path);
  if (typeof v === 'number' && ((schema.minimum !== undefined && v < schema.minimum) || (schema.maximum !== undefined && v > schema.maximum))) out.push(path);
  if (typeof v === 'string' && ((schema.pattern && !new RegExp(schema.pattern).test(v)) || (schema.minLength !== undefined && v.length < schema.minLength) || (schema.maxLength !== undefined && v.length > schema.maxLength))) out.push(path);
  if (Array.isArray(v)) {
    if ((schema.minItems !== undefined && v.length < schema.minItems) || (schema.maxItems !== undefined && v.length > schema.maxItems)) out.push(path);
    if (schema.items) v.forEach((x, i) => check(schema.items!, x, `${path}[${i}]`, out));
  } else if (t === 'object') {
    const o = v as Record<string, unknown>;
    for (const r of schema.required ?? []) if (!(r in o)) out.push(`${path}.${r}`);
    if (schema.minProperties !== undefined && Object.keys(o).length < schema.minProperties) out.push(path);
    for (const [k, x] of Object.entries(o)) {
      const sub = schema.properties?.[k] ?? schema.additionalProperties;
      if (sub) check(sub, x, `${path}.${k}`, out);
      else if (schema.properties && path !== '.metadata') out.push(`${path}.${k} (pruned: not in schema)`);
    }
  }
}

const crds = new Map<string, { schema: Schema; doc: Record<string, any> }>();
for (const f of readdirSync(DIR).filter((f) => f.endsWith('.yaml'))) {
  const doc = parse(readFileSync(join(DIR, f), 'utf8'));
  crds.set(doc.spec.names.kind, { schema: doc.spec.versions[0].schema.openAPIV3Schema, doc });
}

function schemaErrors(obj: { kind: string }): string[] {
  const out: string[] = [];
  check(crds.get(obj.kind)!.schema, obj, '', out);
  return out;
}

test('ships a CRD with the status subresource for every weft.dev kind, named as the API expects', () => {
  const weftKinds = Object.values(KINDS).filter((k) => k.group === 'weft.dev');
  assert.deepEqual([...crds.keys()].sort(), weftKinds.map((k) => k.kind).sort());
  for (const k of weftKinds) {
    const { doc } = crds.get(k.kind)!;
    assert.equal(doc.metadata.name, `${k.plural}.weft.dev`);
    assert.equal(doc.spec.names.plural, k.plural);
    assert.equal(doc.spec.scope, 'Namespaced');
    assert.deepEqual(doc.spec.versions[0].subresources, { status: {} });
    assert.equal(doc.spec.versions[0].name, k.version);
  }
});

const samples = [
  { apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'p', namespace: 'a' }, spec: { selector: { matchLabels: { app: 'x' } }, action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster.local/ns/a/sa/b'], notIpBlocks: ['10.0.0.0/8'] } }], to: [{ operation: { ports: ['80', 443], methods: ['GET'] } }], when: [{ key: 'request.headers[x]', values: ['1'] }] }] } },
  { apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'p', namespace: 'a' }, spec: { selector: { matchLabels: { app: 'x' } }, mtls: { mode: 'STRICT' }, portLevelMtls: { '8080': { mode: 'PERMISSIVE' } } } },
  { apiVersion: 'weft.dev/v1alpha1', kind: 'TrafficPolicy', metadata: { name: 't', namespace: 'a' }, spec: { targetRef: { group: '', kind: 'Service', name: 'web' }, timeouts: { request: '1m30s', perTry: '250ms', idle: '1h', connect: '2s' }, retries: { attempts: 3, retryOn: ['5xx', '503'], budget: { percent: 20, minRetryConcurrency: 3 } }, connectionLimits: { maxConnections: 100, maxPendingRequests: 10, maxRequests: 1000 }, outlierDetection: { consecutive5xx: 5, interval: '10s', baseEjectionTime: '30s', maxEjectionPercent: 50 }, loadBalancer: { policy: 'LEAST_REQUEST' }, rateLimit: { tokens: 100, fillInterval: '1s', per: 'source' }, fault: { delay: { fixedDelay: '100ms', percentage: 5 }, abort: { httpStatus: 503, percentage: 1.5 } } } },
  { apiVersion: 'weft.dev/v1alpha1', kind: 'Waypoint', metadata: { name: 'wp', namespace: 'a' }, spec: { serviceAccountName: 'wp', replicas: 2, image: 'weft/waypoint:1', allowedNamespaces: { from: 'Selector', selector: { matchLabels: { team: 'b' }, matchExpressions: [{ key: 'env', operator: 'In', values: ['prod'] }] } } }, status: { conditions: [{ type: 'Ready', status: 'True', reason: 'Ready', message: 'ok', lastTransitionTime: '2026-01-01T00:00:00Z', observedGeneration: 1 }], addresses: [{ type: 'IPAddress', value: '10.96.0.1' }] } },
];

for (const s of samples) {
  test(`a valid ${s.kind} passes both the controller's validation and the CRD schema without pruning`, () => {
    assert.deepEqual(validateObject(s), []);
    assert.deepEqual(schemaErrors(s), []);
  });
}

test('the Waypoint CRD schema refuses an allowedNamespaces.from or a selector operator the controller refuses (Gateway API RouteNamespaces)', () => {
  const bad = structuredClone(samples[3]!) as any;
  bad.spec.allowedNamespaces.from = 'Everyone';
  bad.spec.allowedNamespaces.selector.matchExpressions[0].operator = 'Has';
  assert.deepEqual(schemaErrors(bad).sort(), ['.spec.allowedNamespaces.from', '.spec.allowedNamespaces.selector.matchExpressions[0].operator']);
  assert.deepEqual(validateObject(bad).map((i) => i.path).sort(), ['spec.allowedNamespaces.from', 'spec.allowedNamespaces.selector', 'spec.allowedNamespaces.selector.matchExpressions[0].operator']);
});

test('the CRD schemas refuse what the controller refuses where a schema can say it', () => {
  const bad = structuredClone(samples[2]!) as any;
  bad.spec.timeouts.request = '3 seconds';
  bad.spec.loadBalancer.policy = 'MAGLEV';
  assert.deepEqual(schemaErrors(bad).sort(), ['.spec.loadBalancer.policy', '.spec.timeouts.request']);
  assert.deepEqual(validateObject(bad).map((i) => i.path).sort(), ['spec.loadBalancer.policy', 'spec.timeouts.request']);
  // A targetRef naming another namespace (Istio's CRD: `self.size() == 0`) is refused, not pruned into the policy's own namespace.
  for (const kind of ['AuthorizationPolicy', 'RequestAuthentication']) {
    const reach = { apiVersion: 'weft.dev/v1alpha1', kind, metadata: { name: 'reach', namespace: 'evil' }, spec: { targetRefs: [{ group: '', kind: 'Service', name: 'db', namespace: 'shop' }], targetRef: { kind: 'Service', name: 'db', namespace: 'shop' } } };
    assert.deepEqual(schemaErrors(reach).sort(), ['.spec.targetRef.namespace', '.spec.targetRefs[0].namespace'], kind);
    reach.spec.targetRefs[0]!.namespace = '';
    reach.spec.targetRef.namespace = '';
    assert.deepEqual(schemaErrors(reach), [], kind);
  }
});

// The API server prunes a field its schema does not name before validating, silently: a source of
// `namespaces` and `requestPrincipals` became one of `namespaces` alone, an ALLOW that no longer
// asked for a token. Every field the controller reads (lib/policy/keys.ts, each with its not-form)
// is in the schema, and an empty list passes it as Istio's CRD lets it (the controller then reads
// it as unset, or refuses the source or operation it leaves empty, at its field).
test('the AuthorizationPolicy CRD schema names every source and operation field the controller reads, so the API server prunes none', async () => {
  const { SOURCE_FIELDS, OPERATION_FIELDS } = await import('../../lib/policy/keys.ts');
  const both = (table: Record<string, unknown>) => Object.keys(table).flatMap((f) => [f, `not${f[0]!.toUpperCase()}${f.slice(1)}`]);
  const valueOf = (f: string) => (/[pP]orts$/.test(f) ? ['80'] : /[iI]pBlocks$/.test(f) ? ['10.0.0.0/8'] : /[sS]erviceAccounts$/.test(f) ? ['web/sa'] : ['x']);
  for (const f of both(SOURCE_FIELDS)) {
    const p = { ...samples[0]!, spec: { rules: [{ from: [{ source: { [f]: valueOf(f) } }] }] } };
    assert.deepEqual(schemaErrors(p), [], f);
    assert.deepEqual(validateObject(p), [], f);
  }
  for (const f of both(OPERATION_FIELDS)) {
    const p = { ...samples[0]!, spec: { rules: [{ to: [{ operation: { [f]: valueOf(f) } }] }] } };
    assert.deepEqual(schemaErrors(p), [], f);
    assert.deepEqual(validateObject(p), [], f);
  }
  const core = { ...samples[0]!, spec: { targetRefs: [{ kind: 'Service', group: 'core', name: 'reviews' }], rules: [{}] } };
  assert.deepEqual(schemaErrors(core), [], 'Istio\'s canonical core group');
  assert.deepEqual(validateObject(core), []);
  const custom = { ...samples[0]!, spec: { action: 'CUSTOM', provider: { name: 'opa' }, rules: [{ to: [{ operation: { paths: ['/x'] } }] }] } };
  assert.deepEqual(schemaErrors(custom), []);
  assert.deepEqual(validateObject(custom), []);
  const empty = { ...samples[0]!, spec: { rules: [{ to: [{ operation: { methods: ['GET'], paths: [] } }] }] } };
  assert.deepEqual(schemaErrors(empty), []);
  assert.deepEqual(validateObject(empty), []);
});
