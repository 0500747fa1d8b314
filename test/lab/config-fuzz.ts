// Seeded random mutations of valid mesh config, shared by the config-directory fuzz test
// (test/e2e/reliability-controller.test.ts) and the Kubernetes-watch one
// (test/unit/controller-kube-fuzz.test.ts). The seeds live in namespace `fuzz`; kind, name and
// namespace are never mutated, so a test knows which object each mutation replaces.
import { stringify } from 'yaml';

/** mulberry32: small, seeded, good enough to pick mutations reproducibly. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Valid objects in namespace `fuzz` (nothing of `demo` depends on them). */
export const FUZZ_SEEDS: Array<Record<string, unknown>> = [
  { apiVersion: 'v1', kind: 'Service', metadata: { name: 'svc', namespace: 'fuzz' }, spec: { clusterIP: '10.96.9.10', selector: { app: 'x' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
  {
    apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'ap', namespace: 'fuzz' },
    spec: { selector: { matchLabels: { app: 'x' } }, action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/fuzz/sa/a'], ipBlocks: ['10.77.0.0/16'] } }], to: [{ operation: { ports: ['8080'] } }] }] },
  },
  { apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'pa', namespace: 'fuzz' }, spec: { selector: { matchLabels: { app: 'x' } }, mtls: { mode: 'PERMISSIVE' } } },
  {
    apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'rt', namespace: 'fuzz' },
    spec: { parentRefs: [{ group: '', kind: 'Service', name: 'svc', port: 80 }], rules: [{ matches: [{ path: { type: 'PathPrefix', value: '/a' } }], backendRefs: [{ name: 'svc', port: 80, weight: 1 }] }] },
  },
  { apiVersion: 'weft.dev/v1alpha1', kind: 'TrafficPolicy', metadata: { name: 'svc', namespace: 'fuzz' }, spec: { targetRef: { kind: 'Service', name: 'svc' }, retries: { attempts: 2, retryOn: ['5xx'] } } },
];

/** Paths never mutated: the object stays in namespace `fuzz` and keeps its kind and name. */
const PINNED = new Set(['apiVersion', 'kind', 'metadata', 'metadata.namespace', 'metadata.name']);

function paths(v: unknown, prefix = ''): string[] {
  if (v === null || typeof v !== 'object') return [];
  const out: string[] = [];
  for (const [k, child] of Object.entries(v)) {
    const p = prefix ? `${prefix}.${k}` : k;
    if (!PINNED.has(p)) out.push(p);
    out.push(...paths(child, p));
  }
  return out;
}

function nested(depth: number): unknown {
  let v: unknown = 'leaf';
  for (let i = 0; i < depth; i++) v = i % 2 ? [v] : { n: v };
  return v;
}

/** One mutation of one seed object, or a broken file; returns the file text and what was done. */
export function mutateFile(rand: () => number): { text: string; what: string } {
  const r = rand();
  if (r < 0.08) return { text: 'a: [unclosed\n  b: {', what: 'broken YAML' };
  if (r < 0.12) return { text: `a: &a ["x","x","x","x","x","x","x","x","x"]\n${Array.from({ length: 9 }, (_, i) => `${String.fromCharCode(98 + i)}: &${String.fromCharCode(98 + i)} [*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)}]`).join('\n')}\n`, what: 'alias bomb' };
  if (r < 0.15) return { text: String.fromCharCode(...Array.from({ length: 512 }, () => Math.floor(rand() * 256))), what: 'random bytes' };
  const { obj, what } = mutateObject(rand);
  let text: string;
  try {
    text = stringify(obj, { aliasDuplicateObjects: false });
  } catch {
    text = JSON.stringify(obj);
  }
  return { text, what };
}

/**
 * One to three random mutations of one seed object (a deep copy); kind, name and namespace stay.
 * `maxNest` bounds the depth of the nesting mutation (2,000 for files; lower where the transport
 * itself cannot carry deeper documents).
 */
export function mutateObject(rand: () => number, opts: { maxNest?: number } = {}): { obj: Record<string, unknown>; what: string } {
  const maxNest = opts.maxNest ?? 2_000;
  const pick = <T,>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const obj = structuredClone(pick(FUZZ_SEEDS));
  const n = 1 + Math.floor(rand() * 3);
  const done: string[] = [];
  for (let i = 0; i < n; i++) {
    const all = paths(obj);
    if (all.length === 0) break;
    const p = pick(all);
    const keys = p.split('.');
    let parent = obj as Record<string, unknown>;
    for (const k of keys.slice(0, -1)) parent = parent[k] as Record<string, unknown>;
    const last = keys[keys.length - 1]!;
    const op = pick(['delete', 'type', 'huge', 'cidr', 'nest', 'null', 'number', 'negative']);
    done.push(`${op} ${p}`);
    switch (op) {
      case 'delete': delete parent[last]; break;
      case 'type': parent[last] = Array.isArray(parent[last]) ? 'not-a-list' : typeof parent[last] === 'object' ? ['not', 'an', 'object'] : { wrapped: parent[last] }; break;
      case 'huge': parent[last] = 'x'.repeat(1 + Math.floor(rand() * 1_000_000)); break;
      case 'cidr': parent[last] = pick(['10.0.0.0/33', '999.1.1.1', '10.96.9.10/', '::/129', '1.2.3.4/-1', '']); break;
      case 'nest': parent[last] = nested(50 + Math.floor(rand() * (maxNest - 50))); break;
      case 'null': parent[last] = null; break;
      case 'number': parent[last] = pick([0, -1, 65536, 1e308, Number.MAX_SAFE_INTEGER, 0.5]); break;
      case 'negative': parent[last] = pick([true, false, '', '-', '\u0000', '../../etc/passwd']); break;
    }
  }
  return { obj, what: `${obj.kind as string}: ${done.join(', ')}` };
}
