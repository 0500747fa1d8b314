// Validation of input objects. Every field the mesh reads is checked; each problem is reported as
// { kind, namespace, name, path, message } with the exact field path, e.g.
// `spec.rules[0].from[0].source.ipBlocks[1]`. weft.dev and Gateway API specs are checked strictly
// (unknown fields are errors, so a typo does not silently widen a policy); core kinds only in the
// fields Weft uses, since the API server has validated the rest.
import { addressProblem, ipProblem } from './address.ts';
import { badFieldChar } from '../field-bytes.ts';
import { CONDITION_KEYS, OPERATION_FIELDS, SOURCE_FIELDS, conditionKey, isCidr, valueProblem, type FieldSpec } from '../policy/keys.ts';
import { isDuration, parseDuration } from './duration.ts';
import { ValidationError, type ValidationIssue } from './errors.ts';
import { ANNOTATION_DRY_RUN, KINDS, WAYPOINT_GATEWAY_CLASSES, isMeshKind, parseDryRun, type MeshKind, type MeshObject } from './objects.ts';
import { RegexBudget, grpcMethodPattern, regexProblem } from '../regex.ts';
import { jwksUriProblem, parseJwks } from '../policy/jwt.ts';
import { MAX_NESTING } from './manifest.ts';

export type { ValidationIssue };

type Json = Record<string, unknown>;

/** A DNS-1123 label: a Namespace's, a Service's, a Waypoint's name; at most 63 characters, as Kubernetes holds them. */
export const DNS1123_LABEL = /^(?=.{1,63}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
export const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const LABEL_NAME = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
const LABEL_VALUE = /^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$/;
const HEADER_NAME = /^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$/;
const HOSTNAME = /^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const GATEWAY_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH'];
const RETRY_ON = ['5xx', 'gateway-error', 'reset', 'connect-failure', 'retriable-4xx', 'refused-stream', 'cancelled', 'deadline-exceeded', 'unavailable', 'resource-exhausted'];
/** `when` keys an agent can evaluate (L4) and those that need a waypoint (L7), from lib/policy/keys.ts. */
export const L4_CONDITION_KEYS = Object.keys(CONDITION_KEYS).filter((k) => CONDITION_KEYS[k]!.layer === 'L4');
export const L7_CONDITION_KEYS = Object.entries(CONDITION_KEYS).filter(([, s]) => s.layer === 'L7').map(([k, s]) => (s.arg ? `${k}[` : k));
export { isCidr };

/**
 * The longest duration Weft takes for a timeout, delay or interval: 2^31-1 ms (about 24.8 days),
 * the longest Node.js timer (setTimeout runs a longer delay after 1 ms). A Weft limit: Gateway API
 * durations (GEP-2257) go up to 99999h.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;
/**
 * Ports one PeerAuthentication may name in portLevelMtls. The kernel's weft_port_modes, which
 * holds them, is node-wide (WEFT_MAX_PORT_MODES, 16,384 entries in bpf/include/weft.h): 128 a pod
 * times the kubelet's default 110 pods a node (14,080) fits, so no tenant fills it for the others,
 * and a pod rarely exposes more than a handful of ports. Istio sets no such limit.
 */
export const MAX_PORT_LEVEL_MTLS = 128;

/** Collects issues for one object. */
class Checker {
  readonly issues: ValidationIssue[] = [];
  readonly kind: string;
  readonly namespace: string;
  readonly name: string;
  /** What the object's patterns may still compile (lib/regex.ts RegexBudget): every regex checked takes from it. */
  readonly regexBudget = new RegexBudget();

  constructor(kind: string, namespace: string, name: string) {
    this.kind = kind;
    this.namespace = namespace;
    this.name = name;
  }

  fail(path: string, message: string): void {
    this.issues.push({ kind: this.kind, namespace: this.namespace, name: this.name, path, message });
  }

  /** An object; reports and returns undefined when it is something else. */
  obj(v: unknown, path: string, required = false): Json | undefined {
    if (v === undefined || v === null) {
      if (required) this.fail(path, 'is required');
      return undefined;
    }
    if (typeof v !== 'object' || Array.isArray(v)) {
      this.fail(path, `must be an object, not ${describe(v)}`);
      return undefined;
    }
    return v as Json;
  }

  /** Reports fields not in `allowed`. */
  only(o: Json, path: string, allowed: readonly string[]): void {
    for (const k of Object.keys(o)) {
      if (!allowed.includes(k)) this.fail(join(path, k), `unknown field (expected one of: ${allowed.join(', ')})`);
    }
  }

  arr(v: unknown, path: string, required = false): unknown[] | undefined {
    if (v === undefined || v === null) {
      if (required) this.fail(path, 'is required');
      return undefined;
    }
    if (!Array.isArray(v)) {
      this.fail(path, `must be a list, not ${describe(v)}`);
      return undefined;
    }
    return v;
  }

  /**
   * `list` when it holds at most `max` entries; past it reported (its entries left unread) and
   * undefined. For the Gateway API CRDs' maxItems, which the API server checks and the config
   * directory does not (nor the kube lab's stand-in CRD, which keeps a route's spec whole).
   */
  atMost<T>(list: T[] | undefined, path: string, max: number, why = 'the Gateway API CRD\'s maxItems'): T[] | undefined {
    if (!list || list.length <= max) return list;
    this.fail(path, `has ${list.length} entries; at most ${max} (${why})`);
    return undefined;
  }

  str(v: unknown, path: string, opts: { required?: boolean; pattern?: RegExp; patternText?: string; oneOf?: readonly string[]; nonEmpty?: boolean } = {}): string | undefined {
    if (v === undefined || v === null) {
      if (opts.required) this.fail(path, 'is required');
      return undefined;
    }
    if (typeof v !== 'string') {
      this.fail(path, `must be a string, not ${describe(v)}`);
      return undefined;
    }
    if ((opts.nonEmpty || opts.required) && v === '') {
      this.fail(path, 'must not be empty');
      return undefined;
    }
    if (opts.oneOf && !opts.oneOf.includes(v)) {
      this.fail(path, `"${v}" is not one of ${opts.oneOf.join(', ')}`);
      return undefined;
    }
    if (opts.pattern && !opts.pattern.test(v)) {
      this.fail(path, `"${v}" is not ${opts.patternText ?? `a match for ${opts.pattern}`}`);
      return undefined;
    }
    return v;
  }

  int(v: unknown, path: string, opts: { required?: boolean; min?: number; max?: number } = {}): number | undefined {
    if (v === undefined || v === null) {
      if (opts.required) this.fail(path, 'is required');
      return undefined;
    }
    if (typeof v !== 'number' || !Number.isInteger(v)) {
      this.fail(path, `must be an integer, not ${describe(v)}`);
      return undefined;
    }
    if (opts.min !== undefined && v < opts.min) this.fail(path, `${v} is below the minimum ${opts.min}`);
    else if (opts.max !== undefined && v > opts.max) this.fail(path, `${v} is above the maximum ${opts.max}`);
    else return v;
    return undefined;
  }

  num(v: unknown, path: string, opts: { min?: number; max?: number } = {}): number | undefined {
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v)) {
      this.fail(path, `must be a number, not ${describe(v)}`);
      return undefined;
    }
    if (opts.min !== undefined && v < opts.min) this.fail(path, `${v} is below the minimum ${opts.min}`);
    else if (opts.max !== undefined && v > opts.max) this.fail(path, `${v} is above the maximum ${opts.max}`);
    else return v;
    return undefined;
  }

  bool(v: unknown, path: string): boolean | undefined {
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'boolean') {
      this.fail(path, `must be true or false, not ${describe(v)}`);
      return undefined;
    }
    return v;
  }

  strList(v: unknown, path: string, each?: (s: string, p: string) => void, opts: { nonEmpty?: boolean } = {}): string[] | undefined {
    const a = this.arr(v, path);
    if (!a) return undefined;
    if (opts.nonEmpty && a.length === 0) this.fail(path, 'must not be an empty list (leave the field out instead)');
    const out: string[] = [];
    a.forEach((x, i) => {
      const p = `${path}[${i}]`;
      if (x === null) {
        this.fail(p, 'must be a string, not null');
        return;
      }
      const s = this.str(x, p, { nonEmpty: true });
      if (s === undefined) return;
      out.push(s);
      each?.(s, p);
    });
    return out;
  }

  stringMap(v: unknown, path: string, keyRe: RegExp, valueRe: RegExp): void {
    const o = this.obj(v, path);
    if (!o) return;
    for (const [k, val] of Object.entries(o)) {
      const p = join(path, k);
      if (!keyRe.test(k) || k.length > 317) this.fail(p, `"${k}" is not a valid label name`);
      const s = this.str(val, p);
      if (s !== undefined && (!valueRe.test(s) || s.length > 63)) this.fail(p, `"${s}" is not a valid label value`);
    }
  }

  /**
   * A Gateway API duration. `timer` (the default): the waypoint arms a timer with it, so it may be
   * no longer than MAX_TIMER_MS; Node.js runs a longer timer after 1 ms.
   */
  duration(v: unknown, path: string, required = false, opts: { timer?: boolean } = {}): number | undefined {
    const s = this.str(v, path, { required });
    if (s === undefined) return undefined;
    if (!isDuration(s)) {
      this.fail(path, `"${s}" is not a duration (e.g. 250ms, 30s, 1m30s)`);
      return undefined;
    }
    const ms = parseDuration(s);
    if ((opts.timer ?? true) && ms > MAX_TIMER_MS) {
      this.fail(path, `"${s}" is longer than ${MAX_TIMER_MS} ms (about 24.8 days), a Weft limit: Gateway API durations go up to 99999h, but the waypoint times with Node.js timers, which fire at once past that`);
      return undefined;
    }
    return ms;
  }

  regex(v: unknown, path: string): void {
    const s = this.str(v, path, { required: true });
    if (s === undefined) return;
    // RE2, as the waypoint matches them (lib/regex.ts).
    const why = regexProblem(s, this.regexBudget);
    if (why) this.fail(path, `"${s.slice(0, 80)}" is not a valid regular expression: it ${why}`);
  }
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'an object';
  return `${typeof v} ${JSON.stringify(v)}`;
}

function join(path: string, field: string): string {
  return /^[A-Za-z_][A-Za-z0-9_]*$/.test(field) ? `${path}.${field}` : `${path}["${field}"]`;
}


// ---------------------------------------------------------------------------------------------

/**
 * `v` without the object fields whose value is null: Kubernetes reads a null field as unset (and a
 * merge patch deletes it), so `principals: null` means no principals. Nulls inside lists stay, for
 * validation to report. Only the objects and lists on the way to a null are copied; without any
 * null (the usual case, on every object the controller reads) `v` itself comes back.
 */
export function withoutNullFields<T>(v: T, depth = 1): T {
  // Deeper than validation reads (tooDeep), left as it is: validation refuses it.
  if (v === null || typeof v !== 'object' || depth > MAX_NESTING) return v;
  if (Array.isArray(v)) {
    let out: unknown[] | undefined;
    v.forEach((x, i) => {
      const y = withoutNullFields(x, depth + 1);
      if (y !== x) (out ??= v.slice())[i] = y;
    });
    return (out ?? v) as T;
  }
  let out: Record<string, unknown> | undefined;
  for (const [k, x] of Object.entries(v)) {
    const y = x === null ? undefined : withoutNullFields(x, depth + 1);
    if (y === x) continue;
    out ??= { ...(v as Record<string, unknown>) };
    if (x === null) delete out[k];
    else out[k] = y;
  }
  return (out ?? v) as T;
}

/**
 * The path of the first object or list nested deeper than MAX_NESTING (the top is level 1), or
 * undefined. Walked without recursion: a recursive walk (withoutNullFields, JSON.stringify)
 * overflows the stack at a few thousand levels, and the API server keeps up to 10,000 (Go's
 * encoding/json limit) in a field that preserves unknown fields, such as a RequestAuthentication's
 * spec.selector: a tenant's one object of 30 KB stopped the controller at its start, everyone's
 * config with it. Objects Weft reads nest a dozen levels (managedFields included).
 */
export function tooDeep(v: unknown): string | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  // First only whether (values and their depths), then where, in a second walk with parent links.
  const values: object[] = [v];
  const depths: number[] = [1];
  let deep = false;
  while (values.length > 0 && !deep) {
    const x = values.pop()!;
    const d = depths.pop()!;
    for (const y of Array.isArray(x) ? x : Object.values(x)) {
      if (typeof y !== 'object' || y === null) continue;
      if (d + 1 > MAX_NESTING) deep = true;
      values.push(y);
      depths.push(d + 1);
    }
  }
  if (!deep) return undefined;
  interface Frame { v: object; depth: number; key?: string | number; up?: Frame }
  const stack: Frame[] = [{ v, depth: 1 }];
  for (;;) {
    const f = stack.pop()!;
    if (f.depth > MAX_NESTING) {
      const keys: Array<string | number> = [];
      for (let x: Frame | undefined = f; x?.key !== undefined; x = x.up) keys.push(x.key);
      return keys.reverse().reduce<string>((p, k) => (typeof k === 'number' ? `${p}[${k}]` : p === '' ? k : join(p, k)), '');
    }
    const entries: Array<[string | number, unknown]> = Array.isArray(f.v) ? Array.from(f.v.entries()) : Object.entries(f.v);
    for (const [key, y] of entries) if (typeof y === 'object' && y !== null) stack.push({ v: y, depth: f.depth + 1, key, up: f });
  }
}

/** Validates one object of any mesh kind. An empty list means valid. */
export function validateObject(input: unknown): ValidationIssue[] {
  const top = typeof input === 'object' && input !== null && !Array.isArray(input) ? (input as Json) : undefined;
  const meta = top && typeof top.metadata === 'object' && top.metadata !== null ? (top.metadata as Json) : undefined;
  const kind = top && typeof top.kind === 'string' ? top.kind : '<unknown kind>';
  const name = meta && typeof meta.name === 'string' ? meta.name : '<unnamed>';
  const namespace = meta && typeof meta.namespace === 'string' ? meta.namespace : '';
  const c = new Checker(kind, namespace, name);
  if (!top) {
    c.fail('', `must be an object, not ${describe(input)}`);
    return c.issues;
  }
  const deep = tooDeep(top);
  if (deep !== undefined) {
    c.fail(deep, `nests deeper than ${MAX_NESTING} levels of objects and lists; refused without reading further`);
    return c.issues;
  }
  if (!isMeshKind(top.kind)) {
    c.fail('kind', `${describe(top.kind)} is not a kind Weft reads (${Object.keys(KINDS).join(', ')})`);
    return c.issues;
  }
  const info = KINDS[top.kind];
  if (!info.apiVersions.includes(top.apiVersion as string)) c.fail('apiVersion', `must be ${info.apiVersions.join(' or ')} for ${info.kind}, not ${describe(top.apiVersion)}`);
  checkMetadata(c, top.metadata, info.namespaced, info.kind);
  VALIDATORS[info.kind](c, top);
  return c.issues;
}

/** Validates and returns the object typed, or throws ValidationError listing every issue. */
export function assertValid(input: unknown): MeshObject {
  const issues = validateObject(input);
  if (issues.length > 0) throw new ValidationError(issues);
  return input as MeshObject;
}

/** Istio's kinds Weft reads (as weft.dev ones) on which Istio refuses `istio.io/dry-run`. */
const ISTIO_KINDS_WITHOUT_DRY_RUN: ReadonlySet<MeshKind> = new Set(['PeerAuthentication', 'RequestAuthentication', 'Telemetry']);

function checkMetadata(c: Checker, v: unknown, namespaced: boolean, kind: MeshKind): void {
  const m = c.obj(v, 'metadata', true);
  if (!m) return;
  const nameRe = kind === 'Namespace' || kind === 'Service' || kind === 'Waypoint' ? DNS1123_LABEL : DNS1123_SUBDOMAIN;
  const name = c.str(m.name, 'metadata.name', { required: true });
  if (name !== undefined && (!nameRe.test(name) || name.length > 253)) {
    c.fail('metadata.name', `"${name.slice(0, 300)}" is not a valid name (lower-case letters, digits and '-'${nameRe === DNS1123_SUBDOMAIN ? ", '.', at most 253 characters" : ', at most 63 characters'})`);
  }
  if (namespaced) {
    const ns = c.str(m.namespace, 'metadata.namespace', { required: true });
    if (ns !== undefined && !DNS1123_LABEL.test(ns)) c.fail('metadata.namespace', `"${ns.slice(0, 300)}" is not a valid namespace name (lower-case letters, digits and '-', at most 63 characters)`);
  } else if (m.namespace !== undefined && m.namespace !== '') {
    c.fail('metadata.namespace', `${kind} is cluster-scoped and has no namespace`);
  }
  c.str(m.uid, 'metadata.uid');
  const owners = c.arr(m.ownerReferences, 'metadata.ownerReferences');
  owners?.forEach((o, i) => {
    const p = `metadata.ownerReferences[${i}]`;
    const r = c.obj(o, p, true);
    if (!r) return;
    c.str(r.kind, `${p}.kind`, { required: true, nonEmpty: true });
    c.str(r.name, `${p}.name`, { required: true, nonEmpty: true });
    c.bool(r.controller, `${p}.controller`);
  });
  c.str(m.resourceVersion, 'metadata.resourceVersion');
  c.int(m.generation, 'metadata.generation', { min: 0 });
  c.stringMap(m.labels, 'metadata.labels', LABEL_NAME, LABEL_VALUE);
  const ann = c.obj(m.annotations, 'metadata.annotations');
  if (ann) for (const [k, val] of Object.entries(ann)) c.str(val, join('metadata.annotations', k));
  // Istio refuses its dry-run annotation on every kind of its own but AuthorizationPolicy
  // (validateAnnotationDryRun): a PeerAuthentication an operator believes in dry run would be enforced.
  if (ann && Object.hasOwn(ann, ANNOTATION_DRY_RUN) && ISTIO_KINDS_WITHOUT_DRY_RUN.has(kind)) {
    c.fail(`metadata.annotations["${ANNOTATION_DRY_RUN}"]`, `${kind} has no dry-run mode (only an AuthorizationPolicy has, as in Istio); remove the annotation`);
  }
  // The mesh labels are checked where they mean something; elsewhere they are ignored, as
  // Kubernetes ignores labels nobody selects on.
  const labels = (m.labels ?? {}) as Record<string, unknown>;
  const mode = labels['weft.dev/dataplane-mode'];
  if ((kind === 'Namespace' || kind === 'Pod') && mode !== undefined && mode !== 'ambient' && mode !== 'none') {
    c.fail('metadata.labels["weft.dev/dataplane-mode"]', `"${String(mode)}" is not ambient or none`);
  }
  const wp = labels['weft.dev/use-waypoint'];
  if ((kind === 'Namespace' || kind === 'Service' || kind === 'Pod') && wp !== undefined && (typeof wp !== 'string' || !DNS1123_LABEL.test(wp))) {
    c.fail('metadata.labels["weft.dev/use-waypoint"]', `"${String(wp)}" is not a Waypoint name`);
  }
  const wpNs = labels['weft.dev/use-waypoint-namespace'];
  if ((kind === 'Namespace' || kind === 'Service' || kind === 'Pod') && wpNs !== undefined && (typeof wpNs !== 'string' || !DNS1123_LABEL.test(wpNs) || wpNs.length > 63)) {
    c.fail('metadata.labels["weft.dev/use-waypoint-namespace"]', `"${String(wpNs)}" is not a namespace name (a DNS-1123 label: lower-case letters, digits and '-', at most 63)`);
  }
}

type Validator = (c: Checker, o: Json) => void;

const VALIDATORS: Record<MeshKind, Validator> = {
  Namespace: () => {},
  Node: (c, o) => {
    const st = c.obj(o.status, 'status');
    const addrs = st && c.arr(st.addresses, 'status.addresses');
    addrs?.forEach((a, i) => {
      const p = `status.addresses[${i}]`;
      const ao = c.obj(a, p, true);
      if (!ao) return;
      const type = c.str(ao.type, `${p}.type`, { required: true });
      // Agents are given the node's InternalIP (else its first address) to tunnel to, and refuse a
      // whole config holding an address that does not parse (agent/src/state.ts validateAgentConfig).
      // Hostname and DNS addresses are names.
      // The compile writes them in canonicalIp's spelling (nodeIpsOf).
      if (type === 'InternalIP' || type === 'ExternalIP') ip(c, ao.address, `${p}.address`, true, addressProblem);
      else c.str(ao.address, `${p}.address`, { required: true });
    });
  },
  Pod: validatePod,
  Service: validateService,
  EndpointSlice: validateEndpointSlice,
  Waypoint: validateWaypoint,
  AuthorizationPolicy: validateAuthorizationPolicy,
  RequestAuthentication: validateRequestAuthentication,
  PeerAuthentication: validatePeerAuthentication,
  TrafficPolicy: validateTrafficPolicy,
  Telemetry: validateTelemetry,
  HTTPRoute: (c, o) => validateRoute(c, o, 'HTTPRoute'),
  GRPCRoute: (c, o) => validateRoute(c, o, 'GRPCRoute'),
  ReferenceGrant: validateReferenceGrant,
};

const GATEWAY_GROUP = 'gateway.networking.k8s.io';

function validateReferenceGrant(c: Checker, o: Json): void {
  const spec = c.obj(o.spec, 'spec', true);
  if (!spec) return;
  c.only(spec, 'spec', ['from', 'to']);
  const from = c.arr(spec.from, 'spec.from', true);
  if (from && from.length === 0) c.fail('spec.from', 'needs at least one entry');
  from?.forEach((f, i) => {
    const p = `spec.from[${i}]`;
    const fo = c.obj(f, p, true);
    if (!fo) return;
    c.only(fo, p, ['group', 'kind', 'namespace']);
    c.str(fo.group, `${p}.group`, { pattern: /^$|^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, patternText: 'an API group' });
    if (fo.group === undefined) c.fail(`${p}.group`, 'is required');
    c.str(fo.kind, `${p}.kind`, { required: true });
    c.str(fo.namespace, `${p}.namespace`, { required: true, pattern: DNS1123_LABEL, patternText: 'a namespace name' });
  });
  const to = c.arr(spec.to, 'spec.to', true);
  if (to && to.length === 0) c.fail('spec.to', 'needs at least one entry');
  to?.forEach((t, i) => {
    const p = `spec.to[${i}]`;
    const tobj = c.obj(t, p, true);
    if (!tobj) return;
    c.only(tobj, p, ['group', 'kind', 'name']);
    c.str(tobj.group, `${p}.group`, { pattern: /^$|^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, patternText: 'an API group' });
    if (tobj.group === undefined) c.fail(`${p}.group`, 'is required');
    c.str(tobj.kind, `${p}.kind`, { required: true });
    c.str(tobj.name, `${p}.name`, { pattern: DNS1123_SUBDOMAIN, patternText: 'an object name' });
  });
}

/**
 * An address field: ipProblem (one spelling) where the mesh compares it as written; `problem`
 * addressProblem (a zone only) where the compile writes it in canonicalIp's spelling before any
 * comparison and its writer is not the tenant or Kubernetes takes any spelling (a load balancer's
 * ingress IP, external IPs, a Node's addresses): one spelling there refused a whole Service or Node
 * over a spelling the compile writes in its one anyway.
 */
function ip(c: Checker, v: unknown, path: string, required = false, problem: (s: string) => string | undefined = ipProblem): void {
  const s = c.str(v, path, { required });
  const why = s !== undefined && s !== '' ? problem(s) : undefined;
  if (why) c.fail(path, why);
}

/** status.conditions as the controller reads them (type and status; other fields are left alone). */
function conditions(c: Checker, v: unknown, path: string): void {
  c.arr(v, path)?.forEach((x, i) => {
    const p = `${path}[${i}]`;
    const co = c.obj(x, p, true);
    if (!co) return;
    c.str(co.type, `${p}.type`, { required: true });
    c.str(co.status, `${p}.status`, { required: true });
    c.str(co.reason, `${p}.reason`);
    c.str(co.message, `${p}.message`);
  });
}

function validatePod(c: Checker, o: Json): void {
  const spec = c.obj(o.spec, 'spec', true);
  if (spec) {
    c.str(spec.nodeName, 'spec.nodeName');
    c.str(spec.serviceAccountName, 'spec.serviceAccountName', { pattern: DNS1123_SUBDOMAIN, patternText: 'a valid service account name' });
    c.bool(spec.hostNetwork, 'spec.hostNetwork');
    c.arr(spec.containers, 'spec.containers')?.forEach((ct, i) => {
      const p = `spec.containers[${i}]`;
      const co = c.obj(ct, p, true);
      if (!co) return;
      c.arr(co.ports, `${p}.ports`)?.forEach((port, j) => {
        const pp = `${p}.ports[${j}]`;
        const po = c.obj(port, pp, true);
        if (!po) return;
        c.int(po.containerPort, `${pp}.containerPort`, { required: true, min: 1, max: 65535 });
        c.str(po.name, `${pp}.name`);
      });
    });
  }
  const st = c.obj(o.status, 'status');
  if (st) {
    conditions(c, st.conditions, 'status.conditions');
    ip(c, st.podIP, 'status.podIP');
    ip(c, st.hostIP, 'status.hostIP');
    c.arr(st.podIPs, 'status.podIPs')?.forEach((x, i) => {
      const xo = c.obj(x, `status.podIPs[${i}]`, true);
      if (xo) ip(c, xo.ip, `status.podIPs[${i}].ip`, true);
    });
  }
}

function validateService(c: Checker, o: Json): void {
  const spec = c.obj(o.spec, 'spec', true);
  if (!spec) return;
  c.stringMap(spec.selector, 'spec.selector', LABEL_NAME, LABEL_VALUE);
  const cip = c.str(spec.clusterIP, 'spec.clusterIP');
  if (cip !== undefined && cip !== 'None' && cip !== '') ip(c, cip, 'spec.clusterIP');
  c.strList(spec.clusterIPs, 'spec.clusterIPs', (s, p) => {
    if (s !== 'None') ip(c, s, p);
  });
  // kube-proxy carries these to the Service's endpoints too; the API server checks them as addresses
  // (a config directory has no API server), and the compile compares them with waypoint addresses,
  // in canonicalIp's spelling (forwardedAddresses).
  c.strList(spec.externalIPs, 'spec.externalIPs', (s, p) => ip(c, s, p, false, addressProblem));
  const lb = c.obj(c.obj(o.status, 'status')?.loadBalancer, 'status.loadBalancer');
  c.arr(lb?.ingress, 'status.loadBalancer.ingress')?.forEach((x, i) => {
    const xo = c.obj(x, `status.loadBalancer.ingress[${i}]`, true);
    if (xo) ip(c, xo.ip, `status.loadBalancer.ingress[${i}].ip`, false, addressProblem);
  });
  const names = new Set<string>();
  const ports = c.arr(spec.ports, 'spec.ports');
  ports?.forEach((port, i) => {
    const p = `spec.ports[${i}]`;
    const po = c.obj(port, p, true);
    if (!po) return;
    c.int(po.port, `${p}.port`, { required: true, min: 1, max: 65535 });
    const name = c.str(po.name, `${p}.name`, { pattern: DNS1123_LABEL, patternText: 'a valid port name' });
    if (name === undefined && ports.length > 1) c.fail(`${p}.name`, 'is required when a Service has more than one port');
    if (name !== undefined) {
      if (names.has(name)) c.fail(`${p}.name`, `duplicate port name "${name}"`);
      names.add(name);
    }
    if (typeof po.targetPort === 'number') c.int(po.targetPort, `${p}.targetPort`, { min: 1, max: 65535 });
    else c.str(po.targetPort, `${p}.targetPort`, { pattern: /^([0-9]+|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$/, patternText: 'a port number or name' });
    c.str(po.protocol, `${p}.protocol`, { oneOf: ['TCP', 'UDP', 'SCTP'] });
    c.str(po.appProtocol, `${p}.appProtocol`);
  });
}

function validateEndpointSlice(c: Checker, o: Json): void {
  const addressType = c.str(o.addressType, 'addressType', { required: true, oneOf: ['IPv4', 'IPv6', 'FQDN'] });
  const labels = ((o.metadata as Json | undefined)?.labels ?? {}) as Record<string, unknown>;
  if (typeof labels['kubernetes.io/service-name'] !== 'string') {
    c.fail('metadata.labels["kubernetes.io/service-name"]', 'is required: it names the Service of this slice');
  }
  c.arr(o.endpoints, 'endpoints', true)?.forEach((e, i) => {
    const p = `endpoints[${i}]`;
    const eo = c.obj(e, p, true);
    if (!eo) return;
    c.strList(eo.addresses, `${p}.addresses`, (s, ap) => {
      const why = addressType === 'IPv4' || addressType === 'IPv6' ? ipProblem(s, addressType === 'IPv4' ? 4 : 6) : undefined;
      if (why) c.fail(ap, why);
    });
    if (eo.addresses === undefined) c.fail(`${p}.addresses`, 'is required');
    const cond = c.obj(eo.conditions, `${p}.conditions`);
    if (cond) for (const k of ['ready', 'serving', 'terminating']) c.bool(cond[k], `${p}.conditions.${k}`);
    c.str(eo.nodeName, `${p}.nodeName`);
    const t = c.obj(eo.targetRef, `${p}.targetRef`);
    if (t) for (const k of ['kind', 'name', 'namespace', 'uid']) c.str(t[k], `${p}.targetRef.${k}`);
  });
  c.arr(o.ports, 'ports')?.forEach((port, i) => {
    const p = `ports[${i}]`;
    const po = c.obj(port, p, true);
    if (!po) return;
    c.str(po.name, `${p}.name`);
    c.int(po.port, `${p}.port`, { min: 1, max: 65535 });
    c.str(po.protocol, `${p}.protocol`, { oneOf: ['TCP', 'UDP', 'SCTP'] });
    c.str(po.appProtocol, `${p}.appProtocol`);
  });
}

function validateWaypoint(c: Checker, o: Json): void {
  const spec = c.obj(o.spec, 'spec') ?? {};
  c.only(spec, 'spec', ['serviceAccountName', 'replicas', 'image', 'maxRequests', 'quotaStore', 'allowedNamespaces']);
  // Gateway API RouteNamespaces (a listener's allowedRoutes.namespaces): Same (default), All, or
  // Selector with a namespace label selector, required there and meaningless elsewhere.
  const an = c.obj(spec.allowedNamespaces, 'spec.allowedNamespaces');
  if (an) {
    c.only(an, 'spec.allowedNamespaces', ['from', 'selector']);
    const from = c.str(an.from, 'spec.allowedNamespaces.from', { oneOf: ['Same', 'All', 'Selector'] });
    if (from === 'Selector' && an.selector === undefined) c.fail('spec.allowedNamespaces.selector', 'is required with from: Selector (an empty selector {} allows every namespace)');
    if (from !== 'Selector' && an.selector !== undefined) c.fail('spec.allowedNamespaces.selector', `applies only with from: Selector (from is ${from ?? 'Same, the default'}); set from: Selector or remove it`);
    fullSelector(c, an.selector, 'spec.allowedNamespaces.selector');
  }
  const qs = c.obj(spec.quotaStore, 'spec.quotaStore');
  if (qs) {
    c.only(qs, 'spec.quotaStore', ['redis', 'failureMode']);
    c.str(qs.redis, 'spec.quotaStore.redis', { required: true, pattern: /^rediss?:\/\/[^\s/]+(\/[0-9]*)?$/, patternText: 'a redis://host:port URL' });
    c.str(qs.failureMode, 'spec.quotaStore.failureMode', { oneOf: ['open', 'closed'] });
  }
  c.int(spec.maxRequests, 'spec.maxRequests', { min: 1, max: 1_000_000 });
  const sa = c.str(spec.serviceAccountName, 'spec.serviceAccountName', { pattern: DNS1123_SUBDOMAIN, patternText: 'a valid service account name' });
  // Every pod of the namespace runs as `default`; as the waypoint's identity it would let each of
  // them pass as "the waypoint itself" (controller/src/waypoint-admission.ts has the allow-list).
  // A Waypoint without spec.serviceAccountName runs as its own name, so one named `default` too.
  const name = (o.metadata as Json | undefined)?.name;
  if (sa === 'default') c.fail('spec.serviceAccountName', '"default" is never allowed: every pod of the namespace runs as it and would count as the waypoint');
  else if (spec.serviceAccountName === undefined && name === 'default') c.fail('metadata.name', '"default" is never allowed: a Waypoint without spec.serviceAccountName runs as its own name, and every pod of the namespace runs as ServiceAccount "default" and would count as the waypoint (rename it, or set spec.serviceAccountName)');
  c.int(spec.replicas, 'spec.replicas', { min: 0, max: 100 });
  c.str(spec.image, 'spec.image', { nonEmpty: true });
  // The status the controller compiles from where no reconciler runs (compile.ts): Ready, and the
  // address agents tunnel to, which every agent refuses whole if it does not parse.
  const st = c.obj(o.status, 'status');
  if (st) {
    conditions(c, st.conditions, 'status.conditions');
    c.arr(st.addresses, 'status.addresses')?.forEach((a, i) => {
      const p = `status.addresses[${i}]`;
      const ao = c.obj(a, p, true);
      if (!ao) return;
      c.str(ao.type, `${p}.type`, { oneOf: ['IPAddress'] });
      ip(c, ao.value, `${p}.value`, true);
    });
  }
}

function selector(c: Checker, v: unknown, path: string): void {
  const s = c.obj(v, path);
  if (!s) return;
  c.only(s, path, ['matchLabels']);
  c.stringMap(s.matchLabels, `${path}.matchLabels`, LABEL_NAME, LABEL_VALUE);
}

/** A whole metav1.LabelSelector: matchLabels and matchExpressions, with the API server's rules for each operator's values. */
function fullSelector(c: Checker, v: unknown, path: string): void {
  const s = c.obj(v, path);
  if (!s) return;
  c.only(s, path, ['matchLabels', 'matchExpressions']);
  c.stringMap(s.matchLabels, `${path}.matchLabels`, LABEL_NAME, LABEL_VALUE);
  c.arr(s.matchExpressions, `${path}.matchExpressions`)?.forEach((e, i) => {
    const p = `${path}.matchExpressions[${i}]`;
    const eo = c.obj(e, p, true);
    if (!eo) return;
    c.only(eo, p, ['key', 'operator', 'values']);
    c.str(eo.key, `${p}.key`, { required: true, pattern: LABEL_NAME, patternText: 'a label name' });
    const op = c.str(eo.operator, `${p}.operator`, { required: true, oneOf: ['In', 'NotIn', 'Exists', 'DoesNotExist'] });
    const values = c.arr(eo.values, `${p}.values`);
    values?.forEach((x, j) => c.str(x, `${p}.values[${j}]`, { required: true, pattern: LABEL_VALUE, patternText: 'a label value' }));
    if ((op === 'In' || op === 'NotIn') && (values ?? []).length === 0) c.fail(`${p}.values`, `must be non-empty when operator is ${op}`);
    if ((op === 'Exists' || op === 'DoesNotExist') && (values ?? []).length > 0) c.fail(`${p}.values`, `must be empty when operator is ${op}`);
  });
}

/** The kinds an AuthorizationPolicy may target, each with its API group. */
const POLICY_TARGET_GROUPS: Record<string, string> = { Service: '', Waypoint: 'weft.dev', Gateway: 'gateway.networking.k8s.io', GatewayClass: 'gateway.networking.k8s.io' };

/**
 * `targetRefs` (or the deprecated `targetRef`) of an AuthorizationPolicy or RequestAuthentication.
 * Istio (validateOneOfSelectorType): selector, targetRef and a targetRefs that lists something
 * exclude one another; an empty targetRefs counts as none (model.GetTargetRefs). Returns whether
 * the object names a target.
 */
function policyTargetRefs(c: Checker, spec: Json): boolean {
  const refs = c.arr(spec.targetRefs, 'spec.targetRefs');
  if (refs && refs.length > 0 && spec.selector !== undefined) c.fail('spec.targetRefs', 'cannot be combined with spec.selector');
  if (spec.targetRef !== undefined && (spec.selector !== undefined || (refs && refs.length > 0))) c.fail('spec.targetRef', 'cannot be combined with spec.selector or spec.targetRefs (only one of selector, targetRef, targetRefs)');
  // A Service, or the whole waypoint: a weft.dev Waypoint, or a Gateway as Istio names its waypoint;
  // in the root namespace, every waypoint: GatewayClass weft-waypoint (istio-waypoint).
  const targetRef = (ro: Json, p: string) => {
    c.only(ro, p, ['group', 'kind', 'name', 'namespace']);
    // Istio (validatePolicyTargetReference; the CRD's CEL rule `self.size() == 0`): a policy attaches
    // to targets of its own namespace only, so another namespace's owner need not consent to it.
    const ns = c.str(ro.namespace, `${p}.namespace`);
    if (ns !== undefined && ns !== '') c.fail(`${p}.namespace`, `must not be set ("${ns.slice(0, 63)}"): cross-namespace referencing is not supported (Istio); the target is the policy's own namespace's`);
    const kind = c.str(ro.kind, `${p}.kind`, { required: true, oneOf: Object.keys(POLICY_TARGET_GROUPS) });
    const group = POLICY_TARGET_GROUPS[kind ?? 'Service'] ?? '';
    // Istio (validatePolicyTargetReference) compares canonical groups, the core group's being
    // "core": its own tests target a Service with `group: core`.
    c.str(ro.group, `${p}.group`, { oneOf: group === '' ? ['', 'core'] : [group] });
    if (group !== '' && ro.group === undefined) c.fail(`${p}.group`, `a ${kind} target needs group "${group}"`);
    if (kind === 'GatewayClass') c.str(ro.name, `${p}.name`, { required: true, oneOf: [...WAYPOINT_GATEWAY_CLASSES] });
    else c.str(ro.name, `${p}.name`, { required: true, pattern: DNS1123_LABEL, patternText: `a ${kind ?? 'Service'} name` });
  };
  refs?.forEach((r, i) => {
    const ro = c.obj(r, `spec.targetRefs[${i}]`, true);
    if (ro) targetRef(ro, `spec.targetRefs[${i}]`);
  });
  const single = c.obj(spec.targetRef, 'spec.targetRef');
  if (single) targetRef(single, 'spec.targetRef');
  return (refs !== undefined && refs.length > 0) || single !== undefined;
}

function validateAuthorizationPolicy(c: Checker, o: Json): void {
  const spec = c.obj(o.spec, 'spec') ?? {};
  c.only(spec, 'spec', ['selector', 'targetRefs', 'targetRef', 'action', 'provider', 'rules']);
  selector(c, spec.selector, 'spec.selector');
  policyTargetRefs(c, spec);
  const action = c.str(spec.action, 'spec.action', { oneOf: ['ALLOW', 'DENY', 'AUDIT', 'CUSTOM'] });
  // An empty list is no rules (a protobuf repeated field).
  const noRules = !Array.isArray(spec.rules) || spec.rules.length === 0;
  // Istio (ValidateAuthorizationPolicy): CUSTOM names its provider and has rules, which judge
  // neither identities nor tokens; `provider` is for CUSTOM only.
  const provider = c.obj(spec.provider, 'spec.provider');
  if (provider) c.only(provider, 'spec.provider', ['name']);
  if (action === 'CUSTOM') {
    if (noRules) c.fail('spec.rules', 'is required for a CUSTOM policy: without rules it would never apply; add an empty rule {} to apply it to every request');
    else c.str(provider?.name, 'spec.provider.name', { required: true, nonEmpty: true });
  } else if (spec.provider !== undefined) c.fail('spec.provider', `is only for a CUSTOM action, not ${action ?? 'ALLOW'}`);
  // Istio (checkDryRunAnnotation): istio.io/dry-run is a boolean, on an ALLOW or DENY only.
  const annotations = typeof o.metadata === 'object' && o.metadata !== null ? (o.metadata as Json).annotations : undefined;
  const dryRun = typeof annotations === 'object' && annotations !== null ? (annotations as Json)[ANNOTATION_DRY_RUN] : undefined;
  if (typeof dryRun === 'string') {
    const at = `metadata.annotations["${ANNOTATION_DRY_RUN}"]`;
    if (action === 'AUDIT' || action === 'CUSTOM') c.fail(at, `the annotation supports only action ALLOW or DENY (Istio's), not ${action}`);
    else if (parseDryRun(dryRun) === undefined) c.fail(at, `${JSON.stringify(dryRun.slice(0, 100))} is not a boolean (true, false, 1, 0, t, f, TRUE, FALSE, True, False, as Istio reads it)`);
  }
  // Istio (ValidateAuthorizationPolicy): "DENY action without `rules` is meaningless as it will never
  // be triggered, add an empty rule `{}` if you want it be triggered for every request".
  if (spec.action === 'DENY' && noRules) c.fail('spec.rules', 'is required for a DENY policy: without rules it would never deny anything; add an empty rule {} to deny every request it applies to');
  c.arr(spec.rules, 'spec.rules')?.forEach((r, i) => {
    const p = `spec.rules[${i}]`;
    const ro = c.obj(r, p, true);
    if (!ro) return;
    c.only(ro, p, ['from', 'to', 'when']);
    // Istio ValidateAuthorizationPolicy: "`from` must not be empty", "`to` must not be empty". Left
    // out, a rule takes any source (operation); an empty list, what a template renders for "no one",
    // would read the same and turn an ALLOW into allow-all.
    for (const f of ['from', 'to'] as const) {
      if (Array.isArray(ro[f]) && ro[f].length === 0) c.fail(`${p}.${f}`, `must not be an empty list (leave the field out for any ${f === 'from' ? 'source' : 'operation'})`);
    }
    c.arr(ro.from, `${p}.from`)?.forEach((f, j) => {
      const fp = `${p}.from[${j}]`;
      const fo = c.obj(f, fp, true);
      if (!fo) return;
      c.only(fo, fp, ['source']);
      policyFields(c, fo.source, `${fp}.source`, SOURCE_FIELDS, action === 'CUSTOM');
      serviceAccountRules(c, fo.source, `${fp}.source`);
    });
    c.arr(ro.to, `${p}.to`)?.forEach((t, j) => {
      const tp = `${p}.to[${j}]`;
      const to = c.obj(t, tp, true);
      if (!to) return;
      c.only(to, tp, ['operation']);
      policyFields(c, to.operation, `${tp}.operation`, OPERATION_FIELDS);
    });
    c.arr(ro.when, `${p}.when`)?.forEach((w, j) => {
      const wp = `${p}.when[${j}]`;
      const wo = c.obj(w, wp, true);
      if (!wo) return;
      c.only(wo, wp, ['key', 'values', 'notValues']);
      const key = c.str(wo.key, `${wp}.key`, { required: true });
      const k = key === undefined ? undefined : conditionKey(key);
      if (k && 'error' in k) c.fail(`${wp}.key`, k.error);
      const spec = k && 'spec' in k ? k.spec : undefined;
      if (action === 'CUSTOM' && spec?.identity) c.fail(`${wp}.key`, `"${key}" is not supported with a CUSTOM action (Istio)`);
      const values = c.strList(wo.values, `${wp}.values`, spec && ((s, vp) => policyValue(c, spec, s, vp)));
      const notValues = c.strList(wo.notValues, `${wp}.notValues`, spec && ((s, vp) => policyValue(c, spec, s, vp)));
      if (!values?.length && !notValues?.length) c.fail(wp, 'needs values or notValues');
    });
  });
}

/** A header a waypoint writes or reads a token from: a field name, not a pseudo-header, not one the waypoint owns. */
const RESERVED_HEADERS = ['host', 'connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'content-length', 'x-forwarded-for', 'x-request-id', 'via'];
function jwtHeaderName(c: Checker, v: unknown, path: string): string | undefined {
  const name = c.str(v, path, { required: true, pattern: HEADER_NAME, patternText: 'an HTTP header name' });
  if (name !== undefined && RESERVED_HEADERS.includes(name.toLowerCase())) c.fail(path, `"${name}" is a header the waypoint owns; choose another`);
  return name;
}

/**
 * RequestAuthentication (Istio's, https://istio.io/latest/docs/reference/config/security/request_authentication/).
 * Only a waypoint sees a request's token, so it needs targetRefs (a selector would apply to
 * sidecars, which Weft has none of); `jwks` inline or `jwksUri`, which the controller fetches.
 */
function validateRequestAuthentication(c: Checker, o: Json): void {
  const spec = c.obj(o.spec, 'spec', true) ?? {};
  c.only(spec, 'spec', ['selector', 'targetRefs', 'targetRef', 'jwtRules']);
  if (spec.selector !== undefined) c.fail('spec.selector', 'is not supported: a RequestAuthentication is enforced only by a waypoint (Weft has no sidecars); attach it with spec.targetRefs');
  if (!policyTargetRefs(c, spec) && spec.selector === undefined) c.fail('spec.targetRefs', 'is required: a RequestAuthentication is enforced only by a waypoint, for the Services (or waypoint) it targets');
  c.arr(spec.jwtRules, 'spec.jwtRules')?.forEach((r, i) => {
    const p = `spec.jwtRules[${i}]`;
    const ro = c.obj(r, p, true);
    if (!ro) return;
    c.only(ro, p, ['issuer', 'audiences', 'jwks', 'jwksUri', 'fromHeaders', 'fromParams', 'fromCookies', 'forwardOriginalToken', 'outputPayloadToHeader', 'outputClaimToHeaders', 'spaceDelimitedClaims']);
    c.strList(ro.spaceDelimitedClaims, `${p}.spaceDelimitedClaims`);
    c.str(ro.issuer, `${p}.issuer`, { required: true });
    c.strList(ro.audiences, `${p}.audiences`);
    // Istio: jwks, when set, is used and jwksUri ignored (pilot policy_applier: istiod fetches
    // only for a rule without inline keys); the controller fetches the URI (controller/src/jwks-resolver.ts).
    const uri = c.str(ro.jwksUri, `${p}.jwksUri`, { nonEmpty: true });
    const uriProblem = uri !== undefined ? jwksUriProblem(uri) : undefined;
    if (uriProblem !== undefined) c.fail(`${p}.jwksUri`, uriProblem);
    // Istio discovers the keys of a rule with neither from the issuer (OpenID Connect discovery); Weft does not.
    if (ro.jwks === undefined && ro.jwksUri === undefined) c.fail(`${p}.jwks`, 'is required, or jwksUri: the controller does not discover an issuer\'s keys (OpenID Connect discovery)');
    const jwks = c.str(ro.jwks, `${p}.jwks`);
    if (jwks !== undefined) {
      try {
        parseJwks(jwks);
      } catch (e) {
        c.fail(`${p}.jwks`, (e as Error).message);
      }
    }
    c.arr(ro.fromHeaders, `${p}.fromHeaders`)?.forEach((h, j) => {
      const hp = `${p}.fromHeaders[${j}]`;
      const ho = c.obj(h, hp, true);
      if (!ho) return;
      c.only(ho, hp, ['name', 'prefix']);
      jwtHeaderName(c, ho.name, `${hp}.name`);
      c.str(ho.prefix, `${hp}.prefix`);
    });
    c.strList(ro.fromParams, `${p}.fromParams`);
    c.strList(ro.fromCookies, `${p}.fromCookies`);
    c.bool(ro.forwardOriginalToken, `${p}.forwardOriginalToken`);
    if (ro.outputPayloadToHeader !== undefined) jwtHeaderName(c, ro.outputPayloadToHeader, `${p}.outputPayloadToHeader`);
    c.arr(ro.outputClaimToHeaders, `${p}.outputClaimToHeaders`)?.forEach((h, j) => {
      const hp = `${p}.outputClaimToHeaders[${j}]`;
      const ho = c.obj(h, hp, true);
      if (!ho) return;
      c.only(ho, hp, ['header', 'claim']);
      jwtHeaderName(c, ho.header, `${hp}.header`);
      c.str(ho.claim, `${hp}.claim`, { required: true });
    });
  });
}

/**
 * A `source` or `operation`: fields from lib/policy/keys.ts, each value checked for its kind.
 * `custom`: the policy's action is CUSTOM, which takes no identity field (FieldSpec.identity).
 */
function policyFields(c: Checker, v: unknown, path: string, table: Readonly<Record<string, FieldSpec>>, custom = false): void {
  const o = c.obj(v, path, true);
  if (!o) return;
  const fields = Object.keys(table).flatMap((f) => [f, `not${f[0]!.toUpperCase()}${f.slice(1)}`]);
  for (const k of Object.keys(o)) {
    if (!fields.includes(k)) c.fail(join(path, k), `unknown field (expected one of: ${fields.join(', ')})`);
  }
  // Istio: a source or operation sets at least one field; an empty list is a field left unset.
  if (!Object.values(o).some((x) => !Array.isArray(x) || x.length > 0)) c.fail(path, 'must set at least one field (an empty list counts as unset)');
  for (const f of fields) {
    if (o[f] === undefined) continue;
    const spec = table[f.startsWith('not') && !table[f] ? f[3]!.toLowerCase() + f.slice(4) : f]!;
    const fp = `${path}.${f}`;
    if (custom && spec.identity && Array.isArray(o[f]) && o[f].length > 0) c.fail(fp, 'is not supported with a CUSTOM action (Istio)');
    if (spec.kind === 'port') {
      // Istio writes ports as strings; numbers are accepted too. 0-65535 (Istio ValidatePorts).
      c.arr(o[f], fp)?.forEach((x, i) => {
        const n = typeof x === 'string' && /^[0-9]+$/.test(x) ? Number(x) : x;
        c.int(n, `${fp}[${i}]`, { required: true, min: 0, max: 65535 });
      });
      continue;
    }
    c.strList(o[f], fp, (s, vp) => {
      policyValue(c, spec, s, vp);
      // Istio (CheckTrustDomainValues): a source's trust domain holds no `/`.
      if (spec.kind === 'trustDomain' && s.includes('/')) c.fail(vp, `${JSON.stringify(s)}: a trust domain holds no /`);
    });
  }
}

/** Istio: `serviceAccounts` (or its negation) stands alone, without principals or namespaces, and lists at most 16. */
function serviceAccountRules(c: Checker, v: unknown, path: string): void {
  if (typeof v !== 'object' || v === null) return;
  const o = v as Record<string, unknown>;
  for (const f of ['serviceAccounts', 'notServiceAccounts']) {
    if (o[f] === undefined) continue;
    if (Array.isArray(o[f]) && o[f].length > 16) c.fail(`${path}.${f}`, `lists ${o[f].length} service accounts; at most 16`);
    const other = ['principals', 'notPrincipals', 'namespaces', 'notNamespaces'].find((k) => o[k] !== undefined);
    if (other) c.fail(`${path}.${f}`, `cannot be combined with ${other} (Istio)`);
  }
}

function policyValue(c: Checker, spec: FieldSpec, s: string, path: string): void {
  const problem = valueProblem(spec.kind, s, c.regexBudget);
  if (problem) c.fail(path, problem);
}

// Istio's PeerAuthentication.MutualTLS.Mode: UNSET inherits, DISABLE is PERMISSIVE to an ambient data plane.
const MTLS_MODES = ['UNSET', 'STRICT', 'PERMISSIVE', 'DISABLE'] as const;

/** An OTLP/HTTP endpoint: an absolute http(s) URL. */
function otlpEndpoint(c: Checker, v: unknown, path: string): void {
  const o = c.obj(v, path);
  if (!o) return;
  c.only(o, path, ['endpoint']);
  const e = c.str(o.endpoint, `${path}.endpoint`, { required: true, nonEmpty: true });
  if (e === undefined) return;
  let u: URL | undefined;
  try {
    u = new URL(e);
  } catch {
    u = undefined;
  }
  if (!u || (u.protocol !== 'http:' && u.protocol !== 'https:') || !u.hostname) c.fail(`${path}.endpoint`, `"${e}" is not an http:// or https:// URL (e.g. http://otel-collector:4318/v1/traces)`);
}

function validateTelemetry(c: Checker, o: Json): void {
  const spec = c.obj(o.spec, 'spec') ?? {};
  c.only(spec, 'spec', ['selector', 'tracing', 'accessLogging']);
  selector(c, spec.selector, 'spec.selector');
  const t = c.obj(spec.tracing, 'spec.tracing');
  if (t) {
    c.only(t, 'spec.tracing', ['otlp', 'randomSamplingPercentage', 'disableSpanReporting']);
    otlpEndpoint(c, t.otlp, 'spec.tracing.otlp');
    c.num(t.randomSamplingPercentage, 'spec.tracing.randomSamplingPercentage', { min: 0, max: 100 });
    c.bool(t.disableSpanReporting, 'spec.tracing.disableSpanReporting');
  }
  const a = c.obj(spec.accessLogging, 'spec.accessLogging');
  if (a) {
    c.only(a, 'spec.accessLogging', ['disabled', 'encoding', 'otlp']);
    c.bool(a.disabled, 'spec.accessLogging.disabled');
    c.str(a.encoding, 'spec.accessLogging.encoding', { oneOf: ['JSON', 'TEXT'] });
    otlpEndpoint(c, a.otlp, 'spec.accessLogging.otlp');
  }
}

function validatePeerAuthentication(c: Checker, o: Json): void {
  const spec = c.obj(o.spec, 'spec') ?? {};
  c.only(spec, 'spec', ['selector', 'mtls', 'portLevelMtls']);
  selector(c, spec.selector, 'spec.selector');
  const m = c.obj(spec.mtls, 'spec.mtls');
  if (m) {
    c.only(m, 'spec.mtls', ['mode']);
    c.str(m.mode, 'spec.mtls.mode', { required: true, oneOf: MTLS_MODES });
  }
  const pl = c.obj(spec.portLevelMtls, 'spec.portLevelMtls');
  if (pl) {
    // Istio (pkg/config/validation ValidatePeerAuthentication): a selector without labels is
    // namespace- or mesh-wide, which takes no port-level modes; an empty map is refused too.
    const labels = (spec.selector as { matchLabels?: unknown } | undefined)?.matchLabels;
    const hasLabels = typeof labels === 'object' && labels !== null && Object.keys(labels).length > 0;
    if (!hasLabels) c.fail('spec.portLevelMtls', 'needs spec.selector.matchLabels with at least one label: a policy without labels is namespace-wide (mesh-wide in the root namespace) and takes no port-level modes');
    const n = Object.keys(pl).length;
    if (n === 0) c.fail('spec.portLevelMtls', 'names no port; leave it out or name at least one');
    if (n > MAX_PORT_LEVEL_MTLS) {
      c.fail('spec.portLevelMtls', `names ${n} ports; a policy may name at most ${MAX_PORT_LEVEL_MTLS} (a Weft limit: the kernel's port-mode map is shared by every pod of the node)`);
      return;
    }
    for (const [port, v] of Object.entries(pl)) {
      const p = `spec.portLevelMtls["${port}"]`;
      // One spelling per port: the kernel's map takes the number, the agent looks up the key as written.
      if (!/^[0-9]+$/.test(port) || Number(port) < 1 || Number(port) > 65535) c.fail(p, `"${port}" is not a port number`);
      else if (String(Number(port)) !== port) c.fail(p, `"${port}" is not written as a port number: write ${Number(port)}`);
      const vo = c.obj(v, p, true);
      if (!vo) continue;
      c.only(vo, p, ['mode']);
      c.str(vo.mode, `${p}.mode`, { required: true, oneOf: MTLS_MODES });
    }
  }
}

function percentage(c: Checker, v: unknown, path: string): void {
  c.num(v, path, { min: 0, max: 100 });
}

function validateTrafficPolicy(c: Checker, o: Json): void {
  const spec = c.obj(o.spec, 'spec', true);
  if (!spec) return;
  c.only(spec, 'spec', ['targetRef', 'timeouts', 'retries', 'connectionLimits', 'outlierDetection', 'loadBalancer', 'locality', 'rateLimit', 'quota', 'fault']);
  const q = c.obj(spec.quota, 'spec.quota');
  if (q) {
    c.only(q, 'spec.quota', ['requests', 'window', 'per']);
    c.int(q.requests, 'spec.quota.requests', { required: true, min: 0 });
    // A quota window is counted, not timed (waypoint/src/quota.ts): a month is fine.
    // Zero in any spelling ("0s", "0m0s"): the waypoint drops a TrafficPolicy with a zero window or fill interval (waypoint/src/resilience.ts).
    if (c.duration(q.window, 'spec.quota.window', true, { timer: false }) === 0) c.fail('spec.quota.window', 'must be longer than zero');
    c.str(q.per, 'spec.quota.per', { oneOf: ['service', 'source'] });
  }
  const t = c.obj(spec.targetRef, 'spec.targetRef', true);
  if (t) {
    c.only(t, 'spec.targetRef', ['group', 'kind', 'name']);
    c.str(t.group, 'spec.targetRef.group', { oneOf: [''] });
    c.str(t.kind, 'spec.targetRef.kind', { required: true, oneOf: ['Service'] });
    c.str(t.name, 'spec.targetRef.name', { required: true, pattern: DNS1123_LABEL, patternText: 'a Service name' });
  }
  const to = c.obj(spec.timeouts, 'spec.timeouts');
  if (to) {
    c.only(to, 'spec.timeouts', ['request', 'perTry', 'idle', 'connect']);
    for (const k of ['request', 'perTry', 'idle', 'connect']) c.duration(to[k], `spec.timeouts.${k}`);
  }
  const r = c.obj(spec.retries, 'spec.retries');
  if (r) {
    c.only(r, 'spec.retries', ['attempts', 'retryOn', 'budget']);
    c.int(r.attempts, 'spec.retries.attempts', { required: true, min: 0, max: 10 });
    c.strList(r.retryOn, 'spec.retries.retryOn', (s, p) => {
      if (!RETRY_ON.includes(s) && !/^[1-5][0-9][0-9]$/.test(s)) c.fail(p, `"${s}" is not a retry condition (${RETRY_ON.join(', ')}, or a status code)`);
    });
    const b = c.obj(r.budget, 'spec.retries.budget');
    if (b) {
      c.only(b, 'spec.retries.budget', ['percent', 'minRetryConcurrency']);
      if (b.percent === undefined) c.fail('spec.retries.budget.percent', 'is required');
      percentage(c, b.percent, 'spec.retries.budget.percent');
      c.int(b.minRetryConcurrency, 'spec.retries.budget.minRetryConcurrency', { min: 0 });
    }
  }
  const cl = c.obj(spec.connectionLimits, 'spec.connectionLimits');
  if (cl) {
    c.only(cl, 'spec.connectionLimits', ['maxConnections', 'maxPendingRequests', 'maxRequests']);
    for (const k of ['maxConnections', 'maxPendingRequests', 'maxRequests']) c.int(cl[k], `spec.connectionLimits.${k}`, { min: 1 });
  }
  const od = c.obj(spec.outlierDetection, 'spec.outlierDetection');
  if (od) {
    c.only(od, 'spec.outlierDetection', ['consecutive5xx', 'interval', 'baseEjectionTime', 'maxEjectionPercent']);
    c.int(od.consecutive5xx, 'spec.outlierDetection.consecutive5xx', { min: 1 });
    c.duration(od.interval, 'spec.outlierDetection.interval');
    c.duration(od.baseEjectionTime, 'spec.outlierDetection.baseEjectionTime');
    c.int(od.maxEjectionPercent, 'spec.outlierDetection.maxEjectionPercent', { min: 0, max: 100 });
  }
  const lb = c.obj(spec.loadBalancer, 'spec.loadBalancer');
  if (lb) {
    c.only(lb, 'spec.loadBalancer', ['policy']);
    c.str(lb.policy, 'spec.loadBalancer.policy', { required: true, oneOf: ['ROUND_ROBIN', 'LEAST_REQUEST', 'RANDOM'] });
  }
  const loc = c.obj(spec.locality, 'spec.locality');
  if (loc) {
    c.only(loc, 'spec.locality', ['mode', 'weights']);
    c.str(loc.mode, 'spec.locality.mode', { required: true, oneOf: ['PreferLocal', 'LocalOnly', 'Weighted'] });
    if (loc.weights !== undefined) {
      if (!Array.isArray(loc.weights)) c.fail('spec.locality.weights', 'must be a list of {cluster, weight}');
      else loc.weights.forEach((w: unknown, i: number) => {
        const wo = c.obj(w, `spec.locality.weights[${i}]`);
        if (!wo) return;
        c.only(wo, `spec.locality.weights[${i}]`, ['cluster', 'weight']);
        c.str(wo.cluster, `spec.locality.weights[${i}].cluster`, { required: true });
        c.int(wo.weight, `spec.locality.weights[${i}].weight`, { required: true, min: 0, max: 1_000_000 });
      });
    }
    if (loc.mode === 'Weighted' && !(Array.isArray(loc.weights) && loc.weights.length > 0)) c.fail('spec.locality.weights', 'mode Weighted needs at least one {cluster, weight}');
  }
  const rl = c.obj(spec.rateLimit, 'spec.rateLimit');
  if (rl) {
    c.only(rl, 'spec.rateLimit', ['tokens', 'fillInterval', 'per']);
    c.int(rl.tokens, 'spec.rateLimit.tokens', { required: true, min: 1 });
    if (c.duration(rl.fillInterval, 'spec.rateLimit.fillInterval', true) === 0) c.fail('spec.rateLimit.fillInterval', 'must be longer than zero');
    c.str(rl.per, 'spec.rateLimit.per', { oneOf: ['route', 'source'] });
  }
  const f = c.obj(spec.fault, 'spec.fault');
  if (f) {
    c.only(f, 'spec.fault', ['delay', 'abort']);
    const d = c.obj(f.delay, 'spec.fault.delay');
    if (d) {
      c.only(d, 'spec.fault.delay', ['fixedDelay', 'percentage']);
      c.duration(d.fixedDelay, 'spec.fault.delay.fixedDelay', true);
      percentage(c, d.percentage, 'spec.fault.delay.percentage');
    }
    const a = c.obj(f.abort, 'spec.fault.abort');
    if (a) {
      c.only(a, 'spec.fault.abort', ['httpStatus', 'percentage']);
      c.int(a.httpStatus, 'spec.fault.abort.httpStatus', { required: true, min: 200, max: 599 });
      percentage(c, a.percentage, 'spec.fault.abort.percentage');
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Gateway API routes

/**
 * The Gateway API CRDs' list bounds (kubebuilder MaxItems and the rules' CEL total, v1.2
 * httproute_types.go, grpcroute_types.go, shared_types.go, httproute_types.go HTTPHeaderFilter).
 */
const ROUTE_MAX_ITEMS = {
  parentRefs: 32, hostnames: 16, rules: 16, matches: 64, totalMatches: 128, filters: 16, backendRefs: 16, headers: 16, headerEdits: 16,
  // HTTPCORSFilter.
  allowOrigins: 64, allowMethods: 9, allowHeaders: 64, exposeHeaders: 64,
} as const;

/** HTTPRouteRetry.codes has no maxItems; its values are 400 to 599 (GEP-1731), so more only repeat them. */
const RETRY_MAX_CODES = 200;

function parentRef(c: Checker, v: unknown, p: string): void {
  const o = c.obj(v, p, true);
  if (!o) return;
  c.only(o, p, ['group', 'kind', 'name', 'namespace', 'port', 'sectionName']);
  // A Gateway parent is another controller's (an ingress): accepted and left alone, so a route
  // with both kinds of parents is not refused (GEP-1426 allows them side by side).
  // The spec's defaults are group gateway.networking.k8s.io, kind Gateway; a Service parent says
  // kind: Service (group "" or left out).
  const group = c.str(o.group, `${p}.group`, { oneOf: ['', GATEWAY_GROUP] });
  const kinds = group === '' ? ['Service'] : group === GATEWAY_GROUP ? ['Gateway', 'ListenerSet'] : ['Service', 'Gateway', 'ListenerSet'];
  const kind = c.str(o.kind, `${p}.kind`, { required: group === '', oneOf: kinds });
  const service = kind === 'Service';
  c.str(o.name, `${p}.name`, { required: true, pattern: service ? DNS1123_LABEL : DNS1123_SUBDOMAIN, patternText: service ? 'a Service name' : 'a name' });
  c.str(o.namespace, `${p}.namespace`, { pattern: DNS1123_LABEL, patternText: 'a namespace name' });
  c.int(o.port, `${p}.port`, { min: 1, max: 65535 });
  c.str(o.sectionName, `${p}.sectionName`);
}

function backendRef(c: Checker, v: unknown, p: string, extra: readonly string[] = []): Json | undefined {
  const o = c.obj(v, p, true);
  if (!o) return undefined;
  c.only(o, p, ['group', 'kind', 'name', 'namespace', 'port', 'weight', ...extra]);
  // Any group and kind is accepted: a kind Weft cannot send to costs only its own requests (the
  // controller marks the route ResolvedRefs False, InvalidKind, and they get 500; Gateway API
  // HTTPRouteInvalidBackendRefUnknownKind), it never refuses the whole route.
  const group = c.str(o.group, `${p}.group`, { pattern: /^$|^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, patternText: 'an API group' });
  const kind = c.str(o.kind, `${p}.kind`, { pattern: /^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$/, patternText: 'a kind' });
  const isService = (group ?? '') === '' && (kind ?? 'Service') === 'Service';
  c.str(o.name, `${p}.name`, { required: true, ...(isService ? { pattern: DNS1123_LABEL, patternText: 'a Service name' } : {}) });
  c.str(o.namespace, `${p}.namespace`, { pattern: DNS1123_LABEL, patternText: 'a namespace name' });
  c.int(o.port, `${p}.port`, { required: true, min: 1, max: 65535 });
  c.int(o.weight, `${p}.weight`, { min: 0, max: 1_000_000 });
  return o;
}

function headerMatches(c: Checker, v: unknown, p: string, what: string): void {
  const seen = new Set<string>();
  c.atMost(c.arr(v, p), p, ROUTE_MAX_ITEMS.headers)?.forEach((h, i) => {
    const hp = `${p}[${i}]`;
    const ho = c.obj(h, hp, true);
    if (!ho) return;
    c.only(ho, hp, ['type', 'name', 'value']);
    const type = c.str(ho.type, `${hp}.type`, { oneOf: ['Exact', 'RegularExpression'] });
    const name = c.str(ho.name, `${hp}.name`, { required: true, pattern: HEADER_NAME, patternText: `a ${what} name` });
    // The CRD keeps these lists as maps keyed by name (listType=map, listMapKey=name): the API
    // server refuses a name written twice. Names that are only equivalent (header names differing
    // in case) are allowed, and only the first of them counts (HTTPHeaderMatch.Name,
    // GRPCHeaderMatch.Name; the controller compiles that one).
    if (name !== undefined) {
      if (seen.has(name)) c.fail(`${hp}.name`, `duplicate ${what} name "${name}" (a name may appear once in a match)`);
      seen.add(name);
    }
    if (type === 'RegularExpression') c.regex(ho.value, `${hp}.value`);
    else c.str(ho.value, `${hp}.value`, { required: true });
  });
}

function headerModifier(c: Checker, v: unknown, p: string): void {
  const o = c.obj(v, p, true);
  if (!o) return;
  c.only(o, p, ['set', 'add', 'remove']);
  for (const k of ['set', 'add']) {
    c.atMost(c.arr(o[k], `${p}.${k}`), `${p}.${k}`, ROUTE_MAX_ITEMS.headerEdits)?.forEach((h, i) => {
      const hp = `${p}.${k}[${i}]`;
      const ho = c.obj(h, hp, true);
      if (!ho) return;
      c.only(ho, hp, ['name', 'value']);
      c.str(ho.name, `${hp}.name`, { required: true, pattern: HEADER_NAME, patternText: 'a header name' });
      const value = c.str(ho.value, `${hp}.value`);
      if (ho.value === undefined) c.fail(`${hp}.value`, 'is required');
      // Written as its UTF-8 bytes, as Envoy writes it (lib/field-bytes.ts): any character but a control.
      const bad = value === undefined ? undefined : badFieldChar(value);
      if (bad !== undefined) c.fail(`${hp}.value`, `contains ${JSON.stringify(bad)} (U+${bad.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}), which a header field value may not hold (RFC 9110 section 5.5: visible characters, space and tab, any other character sent as its UTF-8 bytes; never CR, LF, NUL or another control)`);
    });
  }
  if (c.atMost(c.arr(o.remove, `${p}.remove`), `${p}.remove`, ROUTE_MAX_ITEMS.headerEdits)) {
    c.strList(o.remove, `${p}.remove`, (s, sp) => {
      if (!HEADER_NAME.test(s)) c.fail(sp, `"${s}" is not a header name`);
    });
  }
}

/**
 * Why a rewrite path is not in the normalized form the waypoint judges and sends (normalize.ts,
 * RFC 3986 section 6.2.2), or undefined: the waypoint normalizes the rewritten target again, but a
 * value that changes under it says something other than what it does (`/public/../admin` is /admin).
 */
export function rewritePathProblem(value: string): string | undefined {
  if (/(^|\/)\.\.?(\/|$)/.test(value)) return 'has a dot segment (`.` or `..`)';
  if (value.includes('\\')) return 'has a backslash (read as `/`)';
  for (const m of value.matchAll(/%(.{0,2})/gs)) {
    if (!/^[0-9A-Fa-f]{2}$/.test(m[1]!)) return `has "%${m[1]}", not a percent-encoded byte`;
    const ch = String.fromCharCode(parseInt(m[1]!, 16));
    if (/[A-Za-z0-9._~-]/.test(ch)) return `percent-encodes the unreserved character "${ch}" (write it as is)`;
    if (ch === '/' || ch === '\\') return `percent-encodes a ${ch === '/' ? 'slash' : 'backslash'}`;
  }
  return undefined;
}

function rewritePath(c: Checker, value: string | undefined, p: string): void {
  const why = value === undefined ? undefined : rewritePathProblem(value);
  if (why) c.fail(p, `"${value!.slice(0, 80)}" is not in normalized form: it ${why}`);
}

function pathModifier(c: Checker, v: unknown, p: string): void {
  const o = c.obj(v, p);
  if (!o) return;
  c.only(o, p, ['type', 'replaceFullPath', 'replacePrefixMatch']);
  const type = c.str(o.type, `${p}.type`, { required: true, oneOf: ['ReplaceFullPath', 'ReplacePrefixMatch'] });
  if (type === 'ReplaceFullPath') rewritePath(c, c.str(o.replaceFullPath, `${p}.replaceFullPath`, { required: true, pattern: /^\//, patternText: 'a path starting with /' }), `${p}.replaceFullPath`);
  // Gateway API HTTPPathModifier: an empty ReplacePrefixMatch is allowed (`/foo/bar` under prefix `/foo` becomes `/bar`).
  if (type === 'ReplacePrefixMatch') {
    if (o.replacePrefixMatch === undefined || o.replacePrefixMatch === null) c.fail(`${p}.replacePrefixMatch`, 'is required');
    else rewritePath(c, c.str(o.replacePrefixMatch, `${p}.replacePrefixMatch`, { pattern: /^(\/|$)/, patternText: 'a path starting with /, or empty' }), `${p}.replacePrefixMatch`);
  }
}

const HTTP_FILTERS = ['RequestHeaderModifier', 'ResponseHeaderModifier', 'URLRewrite', 'RequestRedirect', 'RequestMirror', 'CORS'] as const;
const GRPC_FILTERS = ['RequestHeaderModifier', 'ResponseHeaderModifier', 'RequestMirror'] as const;
const FILTER_FIELD: Record<string, string> = {
  RequestHeaderModifier: 'requestHeaderModifier',
  ResponseHeaderModifier: 'responseHeaderModifier',
  URLRewrite: 'urlRewrite',
  RequestRedirect: 'requestRedirect',
  RequestMirror: 'requestMirror',
  CORS: 'cors',
};
/** Gateway API CORSOrigin: `*`, or scheme://host[:port] where the host may start with a `*.` label. */
const CORS_ORIGIN = /^\*$|^[a-z][a-z0-9+.-]*:\/\/(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$/;

/** Whether `s` is an entry a CORS filter's allowOrigins may hold (the waypoint checks compiled filters with it too). */
export function isCorsOrigin(s: string): boolean {
  return CORS_ORIGIN.test(s);
}
const CORS_METHODS = [...GATEWAY_METHODS, '*'];

function filters(c: Checker, v: unknown, p: string, allowed: readonly string[]): string[] {
  const types: string[] = [];
  c.atMost(c.arr(v, p), p, ROUTE_MAX_ITEMS.filters)?.forEach((f, i) => {
    const fp = `${p}[${i}]`;
    const fo = c.obj(f, fp, true);
    if (!fo) return;
    const type = c.str(fo.type, `${fp}.type`, { required: true, oneOf: allowed });
    if (type === undefined) return;
    const field = FILTER_FIELD[type]!;
    c.only(fo, fp, ['type', field]);
    types.push(type);
    const bp = `${fp}.${field}`;
    switch (type) {
      case 'RequestHeaderModifier':
      case 'ResponseHeaderModifier':
        headerModifier(c, fo[field], bp);
        break;
      case 'URLRewrite': {
        const o = c.obj(fo[field], bp, true);
        if (!o) break;
        c.only(o, bp, ['hostname', 'path']);
        c.str(o.hostname, `${bp}.hostname`, { pattern: HOSTNAME, patternText: 'a hostname' });
        pathModifier(c, o.path, `${bp}.path`);
        break;
      }
      case 'RequestRedirect': {
        const o = c.obj(fo[field], bp, true);
        if (!o) break;
        c.only(o, bp, ['scheme', 'hostname', 'path', 'port', 'statusCode']);
        c.str(o.scheme, `${bp}.scheme`, { oneOf: ['http', 'https'] });
        c.str(o.hostname, `${bp}.hostname`, { pattern: HOSTNAME, patternText: 'a hostname' });
        pathModifier(c, o.path, `${bp}.path`);
        c.int(o.port, `${bp}.port`, { min: 1, max: 65535 });
        const code = c.int(o.statusCode, `${bp}.statusCode`);
        if (code !== undefined && ![301, 302, 303, 307, 308].includes(code)) c.fail(`${bp}.statusCode`, `${code} is not one of 301, 302, 303, 307, 308`);
        break;
      }
      case 'CORS': {
        const o = c.obj(fo[field], bp, true);
        if (!o) break;
        c.only(o, bp, ['allowOrigins', 'allowCredentials', 'allowMethods', 'allowHeaders', 'exposeHeaders', 'maxAge']);
        const bounded = (k: 'allowOrigins' | 'allowMethods' | 'allowHeaders' | 'exposeHeaders') => c.atMost(c.arr(o[k], `${bp}.${k}`), `${bp}.${k}`, ROUTE_MAX_ITEMS[k]);
        c.strList(bounded('allowOrigins'), `${bp}.allowOrigins`, (s, sp) => { if (!isCorsOrigin(s)) c.fail(sp, `"${s}" is not an origin (scheme://host[:port], a leading *. label, or *)`); });
        c.bool(o.allowCredentials, `${bp}.allowCredentials`);
        const methods = c.strList(bounded('allowMethods'), `${bp}.allowMethods`, (s, sp) => { if (!CORS_METHODS.includes(s)) c.fail(sp, `"${s}" is not one of ${CORS_METHODS.join(', ')}`); });
        if (methods && methods.includes('*') && methods.length > 1) c.fail(`${bp}.allowMethods`, '"*" must be the only entry');
        for (const k of ['allowHeaders', 'exposeHeaders'] as const) {
          const list = c.strList(bounded(k), `${bp}.${k}`, (s, sp) => { if (!HEADER_NAME.test(s)) c.fail(sp, `"${s}" is not a header name`); });
          if (list && list.includes('*') && list.length > 1) c.fail(`${bp}.${k}`, '"*" must be the only entry');
        }
        c.int(o.maxAge, `${bp}.maxAge`, { min: 1 });
        break;
      }
      case 'RequestMirror': {
        const o = c.obj(fo[field], bp, true);
        if (!o) break;
        c.only(o, bp, ['backendRef', 'percent', 'fraction']);
        backendRef(c, o.backendRef, `${bp}.backendRef`);
        c.int(o.percent, `${bp}.percent`, { min: 0, max: 100 });
        // Gateway API HTTPRequestMirrorFilter: percent or fraction (numerator / denominator,
        // denominator default 100), not both.
        if (o.percent !== undefined && o.fraction !== undefined) c.fail(bp, 'only one of percent or fraction may be specified');
        const fr = c.obj(o.fraction, `${bp}.fraction`);
        if (fr) {
          c.only(fr, `${bp}.fraction`, ['numerator', 'denominator']);
          const num = c.int(fr.numerator, `${bp}.fraction.numerator`, { required: true, min: 0 });
          const den = c.int(fr.denominator, `${bp}.fraction.denominator`, { min: 1 }) ?? 100;
          if (num !== undefined && num > den) c.fail(`${bp}.fraction`, `numerator ${num} is greater than denominator ${den}`);
        }
        break;
      }
    }
  });
  for (const t of ['RequestHeaderModifier', 'ResponseHeaderModifier', 'URLRewrite', 'RequestRedirect', 'CORS']) {
    if (types.filter((x) => x === t).length > 1) c.fail(p, `${t} may appear only once`);
  }
  if (types.includes('URLRewrite') && types.includes('RequestRedirect')) c.fail(p, 'URLRewrite and RequestRedirect cannot be combined');
  return types;
}

/** The filters of a list that are objects, with their index. */
function filterObjects(v: unknown): Array<[Json, number]> {
  if (!Array.isArray(v)) return [];
  return v.flatMap((f, i): Array<[Json, number]> => (typeof f === 'object' && f !== null && !Array.isArray(f) ? [[f as Json, i]] : []));
}

/**
 * HTTPRouteRule's CEL rules (httproute_types.go, v1.6.1) that tie filters to the rest of the rule:
 * a RequestRedirect filter with backendRefs; a URLRewrite or RequestRedirect path of type
 * ReplacePrefixMatch, on the rule or on one of its backendRefs, when the rule has not exactly one
 * match with a PathPrefix path (matches and a match's path default to PathPrefix `/`).
 */
function httpRuleFilterRules(c: Checker, ro: Json, p: string): void {
  const backendRefs = Array.isArray(ro.backendRefs) ? ro.backendRefs : [];
  const matches = ro.matches === undefined ? [{}] : Array.isArray(ro.matches) ? ro.matches : undefined;
  const onePrefixMatch = (): boolean => {
    if (matches?.length !== 1) return false;
    const path = (matches[0] as Json | null)?.path as Json | undefined;
    return path === undefined || path === null || (path.type ?? 'PathPrefix') === 'PathPrefix';
  };
  const prefixRule = (filters: unknown, fp: string, within: boolean): void => {
    for (const [f, i] of filterObjects(filters)) {
      const field = f.type === 'URLRewrite' ? 'urlRewrite' : f.type === 'RequestRedirect' ? 'requestRedirect' : undefined;
      if (!field) continue;
      const path = (f[field] as Json | undefined)?.path as Json | undefined;
      if (path?.type !== 'ReplacePrefixMatch' || onePrefixMatch()) continue;
      const got = matches === undefined ? 'matches is not a list' : matches.length !== 1 ? `the rule has ${matches.length} matches` : 'its match is not a PathPrefix';
      c.fail(`${fp}[${i}].${field}.path.type`, `${within ? 'Within backendRefs, when' : 'When'} using ${f.type} filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified (${got})`);
    }
  };
  prefixRule(ro.filters, `${p}.filters`, false);
  backendRefs.forEach((b, j) => {
    if (typeof b === 'object' && b !== null) prefixRule((b as Json).filters, `${p}.backendRefs[${j}].filters`, true);
  });
  if (backendRefs.length > 0) {
    for (const [f, i] of filterObjects(ro.filters)) {
      if (f.type === 'RequestRedirect') c.fail(`${p}.filters[${i}]`, 'RequestRedirect filter must not be used together with backendRefs (a redirect answers the request itself)');
    }
  }
}

function validateRoute(c: Checker, o: Json, kind: 'HTTPRoute' | 'GRPCRoute'): void {
  const spec = c.obj(o.spec, 'spec', true);
  if (!spec) return;
  c.only(spec, 'spec', ['parentRefs', 'hostnames', 'rules']);
  const parents = c.atMost(c.arr(spec.parentRefs, 'spec.parentRefs', true), 'spec.parentRefs', ROUTE_MAX_ITEMS.parentRefs);
  if (parents && parents.length === 0) c.fail('spec.parentRefs', 'needs at least one Service (the mesh profile routes traffic addressed to a Service)');
  parents?.forEach((r, i) => parentRef(c, r, `spec.parentRefs[${i}]`));
  if (c.atMost(c.arr(spec.hostnames, 'spec.hostnames'), 'spec.hostnames', ROUTE_MAX_ITEMS.hostnames)) {
    c.strList(spec.hostnames, 'spec.hostnames', (s, p) => {
      if (!HOSTNAME.test(s)) c.fail(p, `"${s}" is not a hostname`);
    });
  }
  const allowed = kind === 'HTTPRoute' ? HTTP_FILTERS : GRPC_FILTERS;
  const rules = c.atMost(c.arr(spec.rules, 'spec.rules'), 'spec.rules', ROUTE_MAX_ITEMS.rules);
  // httproute_types.go, grpcroute_types.go (v1.2): "While 16 rules and 64 matches per rule are
  // allowed, the total number of matches across all rules in a route must be less than 128".
  const totalMatches = (rules ?? []).reduce<number>((n, r) => n + (Array.isArray((r as Json | null)?.matches) ? ((r as Json).matches as unknown[]).length : 0), 0);
  if (totalMatches > ROUTE_MAX_ITEMS.totalMatches) c.fail('spec.rules', `has ${totalMatches} matches in all; at most ${ROUTE_MAX_ITEMS.totalMatches} (While 16 rules and 64 matches per rule are allowed, the total number of matches across all rules in a route must be less than 128)`);
  rules?.forEach((r, i) => {
    const p = `spec.rules[${i}]`;
    const ro = c.obj(r, p, true);
    if (!ro) return;
    c.only(ro, p, kind === 'HTTPRoute' ? ['name', 'matches', 'filters', 'backendRefs', 'timeouts', 'retry'] : ['name', 'matches', 'filters', 'backendRefs']);
    c.str(ro.name, `${p}.name`, { pattern: DNS1123_LABEL, patternText: 'a rule name' });
    c.atMost(c.arr(ro.matches, `${p}.matches`), `${p}.matches`, ROUTE_MAX_ITEMS.matches)?.forEach((m, j) => {
      const mp = `${p}.matches[${j}]`;
      const mo = c.obj(m, mp, true);
      if (!mo) return;
      if (kind === 'HTTPRoute') {
        c.only(mo, mp, ['path', 'headers', 'queryParams', 'method']);
        const path = c.obj(mo.path, `${mp}.path`);
        if (path) {
          c.only(path, `${mp}.path`, ['type', 'value']);
          const type = c.str(path.type, `${mp}.path.type`, { oneOf: ['Exact', 'PathPrefix', 'RegularExpression'] });
          if (type === 'RegularExpression') c.regex(path.value, `${mp}.path.value`);
          else {
            const value = c.str(path.value, `${mp}.path.value`, { pattern: /^\//, patternText: 'a path starting with /' });
            if (value !== undefined && /\/\/|\/\.\.?(\/|$)|[?#]/.test(value)) c.fail(`${mp}.path.value`, `"${value}" must not contain //, /./, /../, ? or #`);
          }
        }
        headerMatches(c, mo.headers, `${mp}.headers`, 'header');
        headerMatches(c, mo.queryParams, `${mp}.queryParams`, 'query parameter');
        c.str(mo.method, `${mp}.method`, { oneOf: GATEWAY_METHODS });
      } else {
        c.only(mo, mp, ['method', 'headers']);
        const mm = c.obj(mo.method, `${mp}.method`);
        if (mm) {
          c.only(mm, `${mp}.method`, ['type', 'service', 'method']);
          const type = c.str(mm.type, `${mp}.method.type`, { oneOf: ['Exact', 'RegularExpression'] });
          if (mm.service === undefined && mm.method === undefined) c.fail(`${mp}.method`, 'needs service or method');
          const before = c.issues.length;
          for (const k of ['service', 'method']) {
            if (mm[k] === undefined) continue;
            if (type === 'RegularExpression') c.regex(mm[k], `${mp}.method.${k}`);
            else c.str(mm[k], `${mp}.method.${k}`, { pattern: k === 'service' ? /^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/ : /^[A-Za-z_][A-Za-z0-9_]*$/, patternText: k === 'service' ? 'a gRPC service name' : 'a gRPC method name' });
          }
          // Each part may pass alone and the path pattern the controller compiles them to
          // (`^/(?:service)/(?:method)$`) still be too long or too large for the waypoint.
          if (type === 'RegularExpression' && c.issues.length === before && (mm.service !== undefined || mm.method !== undefined)) {
            const why = regexProblem(grpcMethodPattern(mm.service as string | undefined, mm.method as string | undefined), c.regexBudget);
            if (why) c.fail(`${mp}.method`, `service and method together are not a usable regular expression: the path pattern ^/(?:service)/(?:method)$ ${why}`);
          }
        }
        headerMatches(c, mo.headers, `${mp}.headers`, 'header');
      }
    });
    filters(c, ro.filters, `${p}.filters`, allowed);
    c.atMost(c.arr(ro.backendRefs, `${p}.backendRefs`), `${p}.backendRefs`, ROUTE_MAX_ITEMS.backendRefs)?.forEach((b, j) => {
      const bp = `${p}.backendRefs[${j}]`;
      const bo = backendRef(c, b, bp, ['filters']);
      if (bo) filters(c, bo.filters, `${bp}.filters`, allowed);
    });
    if (kind === 'HTTPRoute') {
      httpRuleFilterRules(c, ro, p);
      const t = c.obj(ro.timeouts, `${p}.timeouts`);
      if (t) {
        c.only(t, `${p}.timeouts`, ['request', 'backendRequest']);
        const request = c.duration(t.request, `${p}.timeouts.request`);
        const backendRequest = c.duration(t.backendRequest, `${p}.timeouts.backendRequest`);
        // HTTPRouteTimeouts CEL: "backendRequest timeout cannot be longer than request timeout"
        // (a request timeout of 0s is no timeout).
        if (request !== undefined && backendRequest !== undefined && request !== 0 && backendRequest > request) {
          c.fail(`${p}.timeouts.backendRequest`, `backendRequest timeout ${t.backendRequest} cannot be longer than request timeout ${t.request}`);
        }
      }
      // GEP-1731 (HTTPRouteRetry): codes are HTTPRouteRetryStatusCode, 400-599.
      const rt = c.obj(ro.retry, `${p}.retry`);
      if (rt) {
        c.only(rt, `${p}.retry`, ['codes', 'attempts', 'backoff']);
        c.atMost(c.arr(rt.codes, `${p}.retry.codes`), `${p}.retry.codes`, RETRY_MAX_CODES, 'the codes 400 to 599, each once')
          ?.forEach((code, j) => c.int(code, `${p}.retry.codes[${j}]`, { required: true, min: 400, max: 599 }));
        c.int(rt.attempts, `${p}.retry.attempts`, { min: 0 });
        c.duration(rt.backoff, `${p}.retry.backoff`);
      }
    }
  });
}
