// `weftctl waypoint apply | list | status | delete` on a running local mesh. The mesh runs detached
// (weftctl up), so this reconstructs what it needs from state.json (nodes, pods), the state folder
// (tokens, CA) and the network namespaces, starts or removes waypoint pods like LocalMesh does, and
// writes state.json back. Agents' views come from their admin endpoints.
import { readdirSync, readFileSync, renameSync, writeFileSync, existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments, stringify } from 'yaml';
import type { AgentConfig, Waypoint } from '../../lib/model/mesh.ts';
import { LABEL_USE_WAYPOINT } from '../../lib/model/objects.ts';
import { LocalMesh } from './mesh.ts';
import { LocalNetwork } from './network.ts';
import { getJsonInNetns, requestInNetns } from './netns-http.ts';
import { writeState, type LocalState } from './up.ts';

export class WaypointCommandError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'WaypointCommandError';
    this.code = code;
  }
}

export interface WaypointApplyOptions {
  namespace: string;
  /** Default `waypoint`. */
  name: string;
  /** Default: the node with the fewest pods. */
  node?: string;
  /** Label the namespace `weft.dev/use-waypoint: <name>` so its services use the waypoint. */
  enrollNamespace?: boolean;
  /** The Waypoint's spec.maxRequests (the waypoint's --max-requests). */
  maxRequests?: number;
  /** The Waypoint's spec.quotaStore (the waypoint's --quota-redis, --quota-failure-mode). */
  quotaStore?: { redis: string; failureMode?: 'open' | 'closed' };
  say: (line: string) => void;
  /** How long to wait for the pod and the agents to see it ready; default 60 s. */
  timeoutMs?: number;
}

const podPattern = (name: string) => new RegExp(`^${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}-\\d+$`);

/** The pods of a waypoint recorded in state.json, `<name>-0` first. */
export function waypointPods(st: LocalState, namespace: string, name: string): LocalState['pods'] {
  const re = podPattern(name);
  return st.pods.filter((p) => p.namespace === namespace && re.test(p.name)).sort((a, b) => a.name.localeCompare(b.name, 'en', { numeric: true }));
}

/** The node with the fewest pods (the first such node in order), as a scheduler would spread them. */
export function leastLoadedNode(st: LocalState): string {
  const count = (n: string) => st.pods.filter((p) => p.node === n).length;
  return st.nodes.reduce((best, n) => (count(n.name) < count(best.name) ? n : best), st.nodes[0]!).name;
}

/**
 * Sets (or, with `value` undefined, removes) a label on a Namespace object in the config folder,
 * in the file that declares it; a namespace declared nowhere gets a file of its own. Returns the
 * file written, or undefined when nothing changed.
 */
export function labelNamespace(configDir: string, namespace: string, key: string, value: string | undefined): string | undefined {
  for (const f of readdirSync(configDir).filter((x) => /\.ya?ml$/.test(x) && !x.startsWith('.')).sort()) {
    const file = join(configDir, f);
    const docs = parseAllDocuments(readFileSync(file, 'utf8'));
    const objs = docs.map((d) => d.toJS() as { kind?: string; metadata?: { name?: string; labels?: Record<string, string> } } | null);
    const ns = objs.find((o) => o?.kind === 'Namespace' && o.metadata?.name === namespace);
    if (!ns) continue;
    const labels = ns.metadata!.labels ?? {};
    if (labels[key] === value) return undefined;
    if (value === undefined) delete labels[key];
    else labels[key] = value;
    ns.metadata!.labels = labels;
    atomicWrite(file, objs.filter((o) => o !== null).map((o) => stringify(o)).join('---\n'));
    return file;
  }
  if (value === undefined) return undefined;
  const file = join(configDir, `namespace-${namespace}.yaml`);
  atomicWrite(file, stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: namespace, labels: { [key]: value } } }));
  return file;
}

function atomicWrite(file: string, text: string): void {
  const dir = join(file, '..');
  const tmp = join(dir, `.${file.split('/').pop()}.tmp`);
  writeFileSync(tmp, text);
  renameSync(tmp, file);
}

function attach(st: LocalState): LocalMesh {
  const net = LocalNetwork.adopt(st.prefix, st.nodes, st.pods);
  return LocalMesh.attach({ prefix: st.prefix, stateDir: st.stateDir, nodes: st.nodes.map((n) => n.name) }, net);
}

interface AgentDump { config: AgentConfig }

/** The waypoint as each node agent sees it (undefined where the agent does not know it). */
export async function agentViews(st: LocalState, namespace: string, name: string): Promise<Array<{ node: string; waypoint?: Waypoint; error?: string }>> {
  const out: Array<{ node: string; waypoint?: Waypoint; error?: string }> = [];
  for (const n of st.nodes) {
    try {
      const d = await getJsonInNetns<AgentDump>(`/var/run/netns/${n.netns}`, 'http://127.0.0.1:15000/config_dump');
      const w = d.config.waypoints.find((x) => x.namespace === namespace && x.name === name);
      out.push({ node: n.name, ...(w ? { waypoint: w } : {}) });
    } catch (err) {
      out.push({ node: n.name, error: (err as Error).message });
    }
  }
  return out;
}

/** Writes the Waypoint object and starts its pod, then waits until it and every agent say ready. */
export async function applyWaypoint(st: LocalState, o: WaypointApplyOptions): Promise<LocalState> {
  const node = o.node ?? leastLoadedNode(st);
  if (!st.nodes.some((n) => n.name === node)) {
    throw new WaypointCommandError('WEFT_NO_SUCH_NODE', `no node named ${node} (nodes: ${st.nodes.map((n) => n.name).join(', ')})`);
  }
  const mesh = attach(st);
  const existing = waypointPods(st, o.namespace, o.name);
  if (existing.length > 0) {
    o.say(`waypoint ${o.namespace}/${o.name} already runs (${existing.map((p) => `${p.name} on ${p.node}`).join(', ')}); unchanged`);
  } else {
    const w = mesh.startWaypoint(node, o.namespace, o.name, { ...(o.maxRequests !== undefined ? { maxRequests: o.maxRequests } : {}), ...(o.quotaStore ? { quotaStore: o.quotaStore } : {}) });
    st.pods.push({ namespace: o.namespace, name: w.spec.name, node, ip: w.pod.ip, netns: w.pod.netns });
    writeState(st);
    o.say(`waypoint ${o.namespace}/${o.name} created: pod ${w.spec.name} on ${node} (${w.pod.ip}), log ${join(mesh.logDir, `pod-${o.namespace}-${w.spec.name}.log`)}`);
    await mesh.waitWaypointReady(o.namespace, o.name, o.timeoutMs ?? 60_000);
  }
  if (o.enrollNamespace) {
    const f = labelNamespace(mesh.configDir, o.namespace, LABEL_USE_WAYPOINT, o.name);
    o.say(f ? `namespace ${o.namespace} labelled ${LABEL_USE_WAYPOINT}=${o.name}: its services now use the waypoint` : `namespace ${o.namespace} already uses waypoint ${o.name}`);
  }
  // Agents learn the address from the controller; the waypoint is usable once they all have it.
  const deadline = Date.now() + (o.timeoutMs ?? 60_000);
  for (;;) {
    const views = await agentViews(st, o.namespace, o.name);
    if (views.every((v) => v.waypoint?.ready)) break;
    if (Date.now() > deadline) {
      const why = views.filter((v) => !v.waypoint?.ready).map((v) => `${v.node}: ${v.error ?? v.waypoint?.reason ?? 'unknown to the agent'}`).join('; ');
      throw new WaypointCommandError('WEFT_WAYPOINT_NOT_READY', `waypoint ${o.namespace}/${o.name} is not ready at every agent (${why}); see ${mesh.logDir}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  const addr = (await agentViews(st, o.namespace, o.name))[0]?.waypoint;
  o.say(`waypoint ${o.namespace}/${o.name} ready at ${(addr?.addresses ?? [addr?.address]).join(', ')}, identity ${addr?.spiffeId}`);
  return st;
}

/** Stops the waypoint's pods, removes their namespaces and cgroups, its Waypoint and Pod objects. */
export async function deleteWaypoint(st: LocalState, namespace: string, name: string, say: (l: string) => void): Promise<boolean> {
  const pods = waypointPods(st, namespace, name);
  const configDir = join(st.stateDir, 'config');
  const objectFile = join(configDir, `waypoint-${namespace}-${name}.yaml`);
  if (pods.length === 0 && !existsSync(objectFile)) {
    say(`no waypoint ${namespace}/${name} in this mesh`);
    return false;
  }
  rmSync(objectFile, { force: true });
  const net = LocalNetwork.adopt(st.prefix, st.nodes, st.pods);
  for (const p of pods) {
    rmSync(join(configDir, `pod-${namespace}-${p.name}.yaml`), { force: true });
    await net.removePod(namespace, p.name);
    st.pods = st.pods.filter((x) => !(x.namespace === namespace && x.name === p.name));
  }
  writeState(st);
  say(`waypoint ${namespace}/${name} deleted${pods.length ? ` (pods ${pods.map((p) => p.name).join(', ')} stopped and removed)` : ''}`);
  if (namespaceUses(configDir, namespace, name)) {
    // Not unlabelled on purpose: L7 policies hold only at the waypoint, so traffic that must pass
    // it fails closed instead of silently skipping them.
    say(`namespace ${namespace} still has ${LABEL_USE_WAYPOINT}=${name}: its services fail closed until the waypoint is applied again or the label is removed`);
  }
  return true;
}

function namespaceUses(configDir: string, namespace: string, name: string): boolean {
  for (const f of readdirSync(configDir).filter((x) => /\.ya?ml$/.test(x) && !x.startsWith('.'))) {
    for (const d of parseAllDocuments(readFileSync(join(configDir, f), 'utf8'))) {
      const o = d.toJS() as { kind?: string; metadata?: { name?: string; labels?: Record<string, string> } } | null;
      if (o?.kind === 'Namespace' && o.metadata?.name === namespace && o.metadata.labels?.[LABEL_USE_WAYPOINT] === name) return true;
    }
  }
  return false;
}

export interface WaypointStatus {
  namespace: string;
  name: string;
  /** As the agents see it: ready everywhere, and the address(es) they send to. */
  ready: boolean;
  addresses: string[];
  reason?: string;
  identity?: string;
  pods: Array<{ name: string; node: string; ip: string; ready: boolean; detail: string; configVersion?: number }>;
  agents: Array<{ node: string; ready: boolean; detail: string }>;
}

/** Every waypoint the agents or state.json know, with pod readiness and the agents' view. */
export async function waypointStatuses(st: LocalState, filter: { namespace?: string; name?: string } = {}): Promise<WaypointStatus[]> {
  const known = new Map<string, { namespace: string; name: string }>();
  const dumps: Array<{ node: string; config?: AgentConfig; error?: string }> = [];
  for (const n of st.nodes) {
    try {
      dumps.push({ node: n.name, config: (await getJsonInNetns<AgentDump>(`/var/run/netns/${n.netns}`, 'http://127.0.0.1:15000/config_dump')).config });
    } catch (err) {
      dumps.push({ node: n.name, error: (err as Error).message });
    }
  }
  for (const d of dumps) for (const w of d.config?.waypoints ?? []) known.set(`${w.namespace}/${w.name}`, { namespace: w.namespace, name: w.name });
  for (const p of st.pods) {
    const m = /^(.+)-\d+$/.exec(p.name);
    if (m && existsSync(join(st.stateDir, 'config', `waypoint-${p.namespace}-${m[1]}.yaml`))) known.set(`${p.namespace}/${m[1]}`, { namespace: p.namespace, name: m[1]! });
  }
  const out: WaypointStatus[] = [];
  for (const { namespace, name } of [...known.values()].sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`))) {
    if (filter.namespace && namespace !== filter.namespace) continue;
    if (filter.name && name !== filter.name) continue;
    const agents = dumps.map((d) => {
      if (d.error) return { node: d.node, ready: false, detail: `agent admin unreachable: ${d.error}` };
      const w = d.config!.waypoints.find((x) => x.namespace === namespace && x.name === name);
      if (!w) return { node: d.node, ready: false, detail: 'unknown to the agent' };
      return { node: d.node, ready: w.ready, detail: w.ready ? `sends to ${(w.addresses ?? [w.address]).join(', ')}` : (w.reason ?? 'not ready') };
    });
    const seen = dumps.map((d) => d.config?.waypoints.find((x) => x.namespace === namespace && x.name === name)).find((w) => w !== undefined);
    const pods: WaypointStatus['pods'] = [];
    for (const p of waypointPods(st, namespace, name)) {
      const netns = `/var/run/netns/${p.netns}`;
      let ready = false;
      let detail: string;
      let configVersion: number | undefined;
      try {
        const r = await requestInNetns(netns, `http://${p.ip}:15021/healthz/ready`, { timeoutMs: 2_000 });
        ready = r.status === 200;
        detail = r.body.trim() || `HTTP ${r.status}`;
        configVersion = (await getJsonInNetns<{ version: number }>(netns, 'http://127.0.0.1:15000/config_dump')).version;
      } catch (err) {
        detail = (err as Error).message;
      }
      pods.push({ name: p.name, node: p.node, ip: p.ip, ready, detail, ...(configVersion !== undefined ? { configVersion } : {}) });
    }
    const ready = agents.every((a) => a.ready) && pods.length > 0 && pods.every((p) => p.ready);
    const reason = ready ? undefined
      : pods.length === 0 ? 'no waypoint pod runs'
        : [...pods.filter((p) => !p.ready).map((p) => `pod ${p.name}: ${p.detail}`), ...agents.filter((a) => !a.ready).map((a) => `agent ${a.node}: ${a.detail}`)].join('; ');
    out.push({
      namespace, name, ready, addresses: seen ? (seen.addresses ?? (seen.address ? [seen.address] : [])) : [],
      ...(reason ? { reason } : {}), ...(seen ? { identity: seen.spiffeId } : {}), pods, agents,
    });
  }
  return out;
}
