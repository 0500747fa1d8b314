// `weftctl waypoint apply | list | status | delete` on a running local mesh. The mesh runs detached
// (weftctl up), so this reconstructs what it needs from state.json (nodes, pods), the state folder
// (tokens, CA) and the network namespaces, starts or removes waypoint pods like LocalMesh does, and
// writes state.json back. Listing and status are transport-neutral (cli/waypoints.ts).
import { readdirSync, readFileSync, renameSync, writeFileSync, existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments, stringify } from 'yaml';
import { LABEL_USE_WAYPOINT } from '../../lib/model/objects.ts';
import { escapeRegex } from '../../lib/regex.ts';
import { LocalMesh } from './mesh.ts';
import { LocalNetwork } from './network.ts';
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
  /** How long to wait for the pod to be ready; default 60 s. */
  timeoutMs?: number;
}

const podPattern = (name: string) => new RegExp(`^${escapeRegex(name)}-\\d+$`);

/** The pods of a waypoint recorded in state.json, `<name>-0` first. */
export function waypointPods(st: LocalState, namespace: string, name: string): LocalState['pods'] {
  const re = podPattern(name);
  return st.pods.filter((p) => p.namespace === namespace && re.test(p.name)).sort((a, b) => a.name.localeCompare(b.name, 'en', { numeric: true }));
}

/**
 * The Waypoint a local pod runs for (`<name>-<i>` with a Waypoint object `<name>` in its namespace
 * in the config folder), or undefined for any other pod.
 */
export function waypointOfPod(st: Pick<LocalState, 'stateDir'>, pod: { namespace: string; name: string }): string | undefined {
  const m = /^(.+)-\d+$/.exec(pod.name);
  return m && existsSync(join(st.stateDir, 'config', `waypoint-${pod.namespace}-${m[1]}.yaml`)) ? m[1] : undefined;
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

/**
 * Writes the Waypoint object and starts its pod, waits for the pod's readiness (and labels the
 * namespace when asked); whether every agent sees it ready is the caller's wait (cli/waypoints.ts).
 */
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
  if (namespaceUses(configDir, namespace, name)) say(stillLabelled(namespace, name));
  return true;
}

/**
 * Not unlabelled on purpose: L7 policies hold only at the waypoint, so traffic that must pass it
 * fails closed instead of silently skipping them.
 */
export function stillLabelled(namespace: string, name: string): string {
  return `namespace ${namespace} still has ${LABEL_USE_WAYPOINT}=${name}: its services fail closed until the waypoint is applied again or the label is removed`;
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
