// Applying a WaypointConfig atomically: validate everything, build the new route, policy and service
// tables, then swap one reference. A bad object costs only itself: it is left out (a route, a
// TrafficPolicy, a Service claiming a taken address) or fails closed (an AuthorizationPolicy that
// cannot be evaluated denies what it applies to), and its issue is reported; everything else in the
// config takes effect. Only a config whose shape is broken is rejected as a whole, and then the
// last good snapshot keeps serving. The controller validates with the same code (lib/policy), so
// issues here mean a version skew between controller and waypoint.
import { ipProblem } from '../../lib/model/address.ts';
import { isConsumerRoute, servesService, waypointTargets, type AddressOwner, type JwtRule, type Route, type RouteBackend, type Service, type TrafficPolicy, type WaypointConfig } from '../../lib/model/mesh.ts';
import { namespaceOfPrincipal } from '../../lib/policy/authz.ts';
import { ConfigRejectedError, type ConfigIssue } from './errors.ts';
import { isKnownLoadBalancer } from './loadbalancer.ts';
import { PolicyTable } from '../../lib/policy/authz.ts';
import { jwksProblem } from '../../lib/policy/jwt.ts';
import { clusterSettings, validateTrafficPolicy, type ClusterSettings } from './resilience.ts';
import { RouteTable } from './router.ts';
import { RegexCache } from '../../lib/regex.ts';

/** One immutable, validated configuration. */
export interface Snapshot {
  version: number;
  namespace: string;
  config: WaypointConfig;
  /** `namespace/name` → service. */
  services: ReadonlyMap<string, Service>;
  /** `vip:port` → service, and `vip` → service: the Services this waypoint serves (servesService), the tunnel targets it accepts. */
  byAddress: ReadonlyMap<string, Service>;
  /** Lower-case host names (`name.ns.svc.cluster.local`, `name.ns.svc`, `name.ns`, and `name` in the waypoint's namespace). */
  byHost: ReadonlyMap<string, Service>;
  /** Producer routes: what clients see that have no consumer route for the Service. */
  routes: RouteTable;
  /**
   * Per client namespace with consumer routes (GAMMA, GEP-1294): its consumer routes, and the
   * producer routes of the Services it has none for.
   */
  consumerRoutes: ReadonlyMap<string, RouteTable>;
  /** The route patterns compiled for this snapshot, reused by the next (RegexCache). */
  regexes: RegexCache;
  policies: PolicyTable;
  /**
   * `namespace/name` of a service → the JWT rules of every RequestAuthentication attached to it
   * (merged, as Istio merges them); absent: no RequestAuthentication, tokens are not looked at.
   */
  jwtRules: ReadonlyMap<string, readonly JwtRule[]>;
  /** `namespace/name` of a service → its resilience settings (defaults when no TrafficPolicy). */
  settings: ReadonlyMap<string, ClusterSettings>;
  /** Objects left out or failing closed, each naming the object and field. */
  issues: readonly ConfigIssue[];
  /** Client address → its workload's identity (when enrolled) and node (for `forwarded: for=` claims; the controller's address-owner table). */
  addressOwners: OwnerTable;
}

export function serviceKey(s: { namespace: string; name: string }): string {
  return `${s.namespace}/${s.name}`;
}

/**
 * The Service a route backend sends to; undefined (its requests get 500, as the Gateway API says)
 * when the configuration lacks it or the controller refused the reference (no ReferenceGrant).
 */
export function backendService(snap: Pick<Snapshot, 'services'>, backend: RouteBackend): Service | undefined {
  return backend.refused === undefined ? snap.services.get(backend.service) : undefined;
}

/** The route table for a client: its namespace's consumer routes first (GAMMA), else the producers'. */
export function routesFor(snap: Pick<Snapshot, 'routes' | 'consumerRoutes'>, clientPrincipal: string | undefined): RouteTable {
  const ns = namespaceOfPrincipal(clientPrincipal);
  return (ns !== undefined ? snap.consumerRoutes.get(ns) : undefined) ?? snap.routes;
}

/**
 * The producer routes a consumer namespace still sees beside its own (GEP-1294): a consumer route
 * replaces the producers' routes of its Service on the ports it binds (every port without
 * `parentRef.port`), and only there. A producer route bound to every port, beside consumer routes
 * bound to some, stays on the Service's other ports.
 */
function producerRoutesBeside(own: readonly Route[], producer: readonly Route[], services: ReadonlyMap<string, Service>): Route[] {
  const out: Route[] = [];
  for (const r of producer) {
    const mine = own.filter((c) => c.service === r.service);
    if (mine.length === 0) { out.push(r); continue; }
    if (mine.some((c) => c.port === undefined)) continue;
    const bound = new Set(mine.map((c) => c.port));
    if (r.port !== undefined) {
      if (!bound.has(r.port)) out.push(r);
      continue;
    }
    for (const p of services.get(r.service)?.ports ?? []) if (!bound.has(p.port)) out.push({ ...r, port: p.port });
  }
  return out;
}

function addressKey(ip: string, port: number): string {
  return ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
}

function checkShape(cfg: unknown, issues: ConfigIssue[]): cfg is WaypointConfig {
  const c = cfg as Partial<Record<keyof WaypointConfig, unknown>> | null;
  const issue = (path: string, message: string): void => { issues.push({ kind: 'WaypointConfig', object: '-', path, message }); };
  if (typeof c !== 'object' || c === null) { issue('', 'not an object'); return false; }
  if (typeof c.namespace !== 'string' || c.namespace === '') issue('namespace', 'must be a non-empty string');
  for (const f of ['services', 'routes', 'trafficPolicies', 'policies', 'waypoints'] as const) {
    if (!Array.isArray(c[f])) issue(f, 'must be an array');
  }
  return issues.length === 0;
}

function validateService(s: Service, issues: ConfigIssue[]): void {
  const object = serviceKey(s);
  const issue = (path: string, message: string): void => { issues.push({ kind: 'Service', object, path, message }); };
  if (typeof s.hostname !== 'string' || s.hostname === '') issue('hostname', 'must be set');
  const address = (path: string, v: string): void => {
    const why = ipProblem(v);
    if (why) issue(path, why);
  };
  s.vips.forEach((v, i) => address(`vips[${i}]`, v));
  s.ports.forEach((p, i) => { if (!Number.isInteger(p.port) || p.port < 1 || p.port > 65535) issue(`ports[${i}].port`, `${p.port} is not a port`); });
  s.endpoints.forEach((e, i) => {
    address(`endpoints[${i}].ip`, e.ip);
    if (e.nodeIp !== undefined) address(`endpoints[${i}].nodeIp`, e.nodeIp);
  });
}

type Owner = { spiffeId: string | undefined; nodeIp: string | undefined; waypointNamespace?: string | undefined };

/**
 * Address → owner: the for= decision's table (lib/hbone/forwarded.ts ForwardedView.addressOwner).
 * A snapshot's table is either built whole from its list or, when the list differs from the
 * previous snapshot's in a few entries (pod churn: the config client keeps every untouched entry's
 * object and order), the previous table's whole part shared with an overlay of every change since
 * it was built (copied, so the previous table stays as it was). The whole part is built again once
 * the overlay reaches an eighth of it.
 */
export class OwnerTable {
  readonly #base: ReadonlyMap<string, Owner>;
  /** Changed addresses over `#base` (null: gone). */
  readonly #overlay: ReadonlyMap<string, Owner | null>;
  /** Addresses held. */
  readonly size: number;

  private constructor(base: ReadonlyMap<string, Owner>, overlay: ReadonlyMap<string, Owner | null>, size: number) {
    this.#base = base;
    this.#overlay = overlay;
    this.size = size;
  }

  static of(list: readonly AddressOwner[]): OwnerTable {
    const out = new Map<string, Owner>();
    for (const o of list) if (o.ip) out.set(o.ip, ownerOf(o));
    return new OwnerTable(out, new Map(), out.size);
  }

  get(ip: string): Owner | undefined {
    const o = this.#overlay.get(ip);
    return o !== undefined ? (o ?? undefined) : this.#base.get(ip);
  }

  /**
   * The table of `list`, given that this table is `was`'s: this one's whole part with the
   * differences added to its overlay when they are few and the lists hold distinct addresses, else
   * undefined (build it whole).
   */
  layer(was: readonly AddressOwner[], list: readonly AddressOwner[]): OwnerTable | undefined {
    const limit = Math.max(OVERLAY_MIN, this.#base.size / 8) - this.#overlay.size;
    if (was.length !== this.size || limit <= 0) return undefined;
    const removed: AddressOwner[] = [];
    const added: AddressOwner[] = [];
    let i = 0;
    let j = 0;
    while (i < was.length && j < list.length) {
      const a = was[i]!;
      const b = list[j]!;
      if (a === b) { i++; j++; continue; }
      removed.push(a);
      i++;
      // The same address at the same place: replaced; else `a` left the list.
      if (a.ip === b.ip) { added.push(b); j++; }
      if (removed.length > limit) return undefined;
    }
    for (; i < was.length; i++) removed.push(was[i]!);
    for (; j < list.length; j++) added.push(list[j]!);
    if (removed.length + added.length > limit) return undefined;
    const changes = new Map<string, Owner | null>();
    for (const o of removed) if (o.ip) changes.set(o.ip, null);
    let size = this.size - removed.length;
    for (const o of added) {
      if (!o.ip) return undefined;
      // An address listed twice, or still held by an entry that stayed: built whole (the last one wins there).
      if (changes.get(o.ip) || (!changes.has(o.ip) && this.get(o.ip))) return undefined;
      changes.set(o.ip, ownerOf(o));
      size++;
    }
    if (size !== list.length) return undefined;
    const overlay = new Map(this.#overlay);
    for (const [ip, o] of changes) {
      // An address the whole part never had needs no tombstone.
      if (o === null && !this.#base.has(ip)) overlay.delete(ip);
      else overlay.set(ip, o);
    }
    return new OwnerTable(this.#base, overlay, size);
  }
}

function ownerOf(o: AddressOwner): Owner {
  return { spiffeId: o.spiffeId, nodeIp: o.nodeIp, ...(o.waypointNamespace ? { waypointNamespace: o.waypointNamespace } : {}) };
}

/** Overlay entries allowed whatever the whole part's size. */
const OVERLAY_MIN = 256;

function addressOwnersOf(cfg: WaypointConfig, prev: Snapshot | undefined): OwnerTable {
  const list = cfg.addressOwners ?? [];
  const was = prev?.config.addressOwners;
  return (prev && was ? prev.addressOwners.layer(was, list) : undefined) ?? OwnerTable.of(list);
}

/** The inputs of a snapshot's route, policy and service tables are the same arrays (the config client reuses an untouched type's). */
function sameTables(a: WaypointConfig, b: WaypointConfig): boolean {
  return a.namespace === b.namespace && a.services === b.services && a.routes === b.routes && a.trafficPolicies === b.trafficPolicies && a.policies === b.policies && a.requestAuthentications === b.requestAuthentications;
}

/**
 * Validates and compiles. Throws ConfigRejectedError only for a broken shape; a bad object is left
 * out (or fails closed) and listed in `issues`. With `prev`, what `cfg` shares with prev's config
 * is taken over as it is: a change to the address-owner table alone (pod churn elsewhere in the
 * mesh) rebuilds that table, not the routes, policies and services.
 */
export function buildSnapshot(cfg: WaypointConfig, version: number, prev?: Snapshot): Snapshot {
  const issues: ConfigIssue[] = [];
  if (!checkShape(cfg, issues)) throw new ConfigRejectedError(issues);
  const addressOwners = prev && prev.config.addressOwners === cfg.addressOwners ? prev.addressOwners : addressOwnersOf(cfg, prev);
  if (prev && sameTables(prev.config, cfg)) return { ...prev, version, config: cfg, addressOwners };

  const services = new Map<string, Service>();
  const claimed = new Map<string, Service>();
  // Tunnel targets: the Services this waypoint serves (servesService). Another namespace's that is
  // not bound to it (a route backend, here to be sent to) is not served: a tunnel addressed to it
  // would reach its pods under this namespace's policies and limits, around its own waypoint's.
  const byAddress = new Map<string, Service>();
  const byHost = new Map<string, Service>();
  for (const s of cfg.services) {
    const key = serviceKey(s);
    if (services.has(key)) { issues.push({ kind: 'Service', object: key, path: '', message: 'listed twice; the first one is used' }); continue; }
    const before = issues.length;
    validateService(s, issues);
    const claims = s.vips.flatMap((vip) => [vip, ...s.ports.map((p) => addressKey(vip, p.port))]);
    for (const k of claims) {
      const other = claimed.get(k);
      if (other) issues.push({ kind: 'Service', object: key, path: 'vips', message: `address ${k} is also claimed by ${serviceKey(other)}; ${key} is left out` });
    }
    if (issues.length !== before) continue;
    services.set(key, s);
    for (const k of claims) {
      claimed.set(k, s);
      if (servesService(cfg.namespace, s)) byAddress.set(k, s);
    }
    const host = s.hostname.toLowerCase();
    const names = [host, `${s.name}.${s.namespace}.svc`, `${s.name}.${s.namespace}`];
    if (s.namespace === cfg.namespace) names.push(s.name);
    for (const n of names) if (!byHost.has(n.toLowerCase())) byHost.set(n.toLowerCase(), s);
  }
  leaveOutGuardedPods(services, [byAddress, byHost], issues);

  const settings = new Map<string, ClusterSettings>();
  const policyOf = new Map<string, TrafficPolicy>();
  for (const tp of cfg.trafficPolicies) {
    const object = serviceKey(tp);
    const problems = validateTrafficPolicy(tp);
    if (!isKnownLoadBalancer(tp.loadBalancer)) problems.push(['loadBalancer', `${JSON.stringify(tp.loadBalancer)} is not ROUND_ROBIN, LEAST_REQUEST or RANDOM`]);
    const prev = policyOf.get(tp.service);
    if (prev) problems.push(['targetRef', `service ${tp.service} already has TrafficPolicy ${serviceKey(prev)}; merge them into one`]);
    for (const [path, message] of problems) issues.push({ kind: 'TrafficPolicy', object, path, message });
    if (problems.length === 0) policyOf.set(tp.service, tp);
  }
  for (const key of services.keys()) settings.set(key, clusterSettings(policyOf.get(key)));

  const known = new Set(services.keys());
  const producer = cfg.routes.filter((r) => !isConsumerRoute(r));
  // Patterns the snapshot before compiled are reused: a rebuild for a Service's endpoints
  // compiles none again, however many routes (other namespaces' consumer routes too) there are.
  const regexes = prev?.regexes ?? new RegexCache();
  const routes = new RouteTable(producer, known, issues, regexes);
  const consumerRoutes = new Map<string, RouteTable>();
  const byConsumer = new Map<string, Route[]>();
  for (const r of cfg.routes) if (isConsumerRoute(r)) byConsumer.set(r.namespace, [...(byConsumer.get(r.namespace) ?? []), r]);
  for (const [ns, own] of byConsumer) {
    const scratch: ConfigIssue[] = [];
    consumerRoutes.set(ns, new RouteTable([...own, ...producerRoutesBeside(own, producer, services)], known, scratch, regexes));
    issues.push(...scratch.filter((i) => i.object.startsWith(`${ns}/`)));
  }
  regexes.sweep();
  const policies = new PolicyTable(cfg.policies);
  for (const { policy, error } of policies.errors) {
    issues.push({ kind: 'AuthorizationPolicy', object: policy, path: error.path, message: `${error.message.slice(error.path.length + 2)} (the policy fails closed)` });
  }
  const jwtRules = jwtRulesByService(cfg, issues);
  return { version, namespace: cfg.namespace, config: cfg, services, byAddress, byHost, routes, consumerRoutes, regexes, policies, jwtRules, settings, issues, addressOwners };
}

/**
 * The JWT rules per Service (waypointTargets, the rule for AuthorizationPolicy too). A rule whose
 * keys do not parse here (a version skew: the controller validates them with the same code) is
 * kept and reported: its tokens then fail to verify (401), requests without one pass as before.
 */
function jwtRulesByService(cfg: WaypointConfig, issues: ConfigIssue[]): Map<string, JwtRule[]> {
  const out = new Map<string, JwtRule[]>();
  const list = cfg.requestAuthentications ?? [];
  if (!Array.isArray(list)) { issues.push({ kind: 'WaypointConfig', object: '-', path: 'requestAuthentications', message: 'must be an array; no RequestAuthentication applies' }); return out; }
  for (const ra of list) {
    const object = serviceKey(ra);
    const issue = (path: string, message: string): void => { issues.push({ kind: 'RequestAuthentication', object, path, message }); };
    if (!Array.isArray(ra.jwtRules) || !Array.isArray(ra.targetServices)) { issue('', 'jwtRules and targetServices must be lists; left out'); continue; }
    const rules = ra.jwtRules.filter((r, i) => {
      const shape = jwtRuleShapeProblem(r);
      if (shape) { issue(`jwtRules[${i}]`, `${shape}; left out (its tokens verify nothing: refused where another rule reads their location, else no request principal)`); return false; }
      const problem = jwksProblem(r);
      if (problem.error !== undefined) issue(`jwtRules[${i}].jwks`, `${problem.error} (its tokens are refused)`);
      for (const why of problem.skipped) issue(`jwtRules[${i}].jwks`, `${why}; left out, the other keys verify`);
      return true;
    });
    for (const svc of waypointTargets(ra)) out.set(svc, [...(out.get(svc) ?? []), ...rules]);
  }
  return out;
}

/**
 * A pod of another namespace than its Service's (a hand-written EndpointSlice) that has a waypoint
 * of its own (Endpoint.waypoint) is reached only through that waypoint, as an agent sends it
 * (agent/src/state.ts foreignWaypoint): from here it would be reached with only this Service's
 * namespace's policies, around the pod's. That holds for a waypoint of another namespace, and for
 * this one when shared (its namespaces trust it: their agents believe its for=, and a namespace
 * ALLOW names its identity). Such endpoints are left out of every Service (served or a route
 * backend), each named in `issues`; a Service left without endpoints answers 503 `UH`. The
 * Services are replaced in `services` and in every index that holds them.
 */
function leaveOutGuardedPods(services: Map<string, Service>, indexes: ReadonlyArray<Map<string, Service>>, issues: ConfigIssue[]): void {
  const replaced = new Map<Service, Service>();
  for (const [key, s] of services) {
    const kept = s.endpoints.filter((e, i) => {
      if (e.waypoint === undefined || e.cluster !== undefined) return true;
      issues.push({ kind: 'Service', object: key, path: `endpoints[${i}]`, message: `${e.ip} is a pod of namespace ${e.workload?.namespace ?? 'another'} behind waypoint ${e.waypoint.namespace}/${e.waypoint.name}; left out: through this Service it would be reached with only namespace ${s.namespace}'s policies, around that waypoint's` });
      return false;
    });
    if (kept.length === s.endpoints.length) continue;
    const copy = { ...s, endpoints: kept };
    replaced.set(s, copy);
    services.set(key, copy);
  }
  if (replaced.size === 0) return;
  for (const index of indexes) for (const [k, s] of index) { const r = replaced.get(s); if (r) index.set(k, r); }
}

/** What about a rule's shape lib/policy/jwt.ts could not read (a controller of another version); undefined when it is fine. */
function jwtRuleShapeProblem(r: JwtRule): string | undefined {
  if (typeof r !== 'object' || r === null) return 'not an object';
  if (typeof r.issuer !== 'string' || typeof r.jwks !== 'string') return 'issuer and jwks must be strings';
  const strings = (v: unknown): boolean => v === undefined || (Array.isArray(v) && v.every((x) => typeof x === 'string'));
  if (!strings(r.audiences) || !strings(r.fromParams) || !strings(r.fromCookies)) return 'audiences, fromParams and fromCookies must be lists of strings';
  if (r.fromHeaders !== undefined && !(Array.isArray(r.fromHeaders) && r.fromHeaders.every((h) => typeof h?.name === 'string' && (h.prefix === undefined || typeof h.prefix === 'string')))) return 'fromHeaders must list {name, prefix}';
  if (r.outputClaimToHeaders !== undefined && !(Array.isArray(r.outputClaimToHeaders) && r.outputClaimToHeaders.every((h) => typeof h?.header === 'string' && typeof h.claim === 'string'))) return 'outputClaimToHeaders must list {header, claim}';
  if (r.outputPayloadToHeader !== undefined && typeof r.outputPayloadToHeader !== 'string') return 'outputPayloadToHeader must be a string';
  return undefined;
}

export function emptyConfig(namespace: string): WaypointConfig {
  return { namespace, services: [], routes: [], trafficPolicies: [], policies: [], waypoints: [] };
}
