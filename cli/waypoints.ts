// Waypoints on either transport, for `weftctl waypoint` and `weftctl check`: which waypoints exist
// (the Waypoint objects, and any the agents know), each replica's readiness and config version,
// and whether every node agent sees it ready. One code path reads both transports through the
// component readers (cli/components.ts): on the local mesh each agent's admin port inside its
// node; on a cluster the agents' read-only /debug/ paths and the waypoint pods' readiness port
// through the API server's pod proxy.
//
// On a cluster `apply` writes the Waypoint object (server-side apply, field manager weftctl) and
// labels the namespace the same way; the controller then makes the waypoint's Deployment,
// Service and pods (controller/src/waypoints-kube.ts). `delete` removes the Waypoint object; the
// controller removes what it made. The local mesh's own way (a pod started from the state
// folder) is cli/local/waypoints.ts.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import type { AgentConfig } from '../lib/model/mesh.ts';
import { KINDS, LABEL_USE_WAYPOINT, LABEL_WAYPOINT_FOR } from '../lib/model/objects.ts';
import { assertValid } from '../lib/model/validate.ts';
import { components, type Component } from './components.ts';
import { KubeApiError, type KubeClient } from './kube.ts';
import type { Target } from './commands/target.ts';
import { stillLabelled, WaypointCommandError } from './local/waypoints.ts';

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

type Key = { namespace: string; name: string };
/** A Waypoint object: its key and, on a cluster, the controller's Ready condition. */
type Declared = Key & { condition?: { status?: string; reason?: string; message?: string } };
const WP = KINDS.Waypoint;

/** The Waypoint objects of the target: the local mesh's config folder, or the cluster's API. */
async function declaredWaypoints(t: Target): Promise<Declared[]> {
  if (t.kind === 'cluster') {
    type Cond = NonNullable<Declared['condition']> & { type?: string };
    const items = await t.kube.list<{ metadata: { name: string; namespace: string }; status?: { conditions?: Cond[] } }>(WP.apiVersion, WP.plural);
    return items.map((w) => {
      const c = w.status?.conditions?.find((x) => x.type === 'Ready');
      return { namespace: w.metadata.namespace, name: w.metadata.name, ...(c ? { condition: c } : {}) };
    });
  }
  const dir = join(t.st.stateDir, 'config');
  const out: Key[] = [];
  for (const f of readdirSync(dir).filter((x) => /\.ya?ml$/.test(x) && !x.startsWith('.'))) {
    for (const d of parseAllDocuments(readFileSync(join(dir, f), 'utf8'))) {
      const o = d.toJS() as { kind?: string; metadata?: { name?: string; namespace?: string } } | null;
      if (o?.kind === 'Waypoint' && o.metadata?.name) out.push({ namespace: o.metadata.namespace ?? 'default', name: o.metadata.name });
    }
  }
  return out;
}

const byName = (a: { name: string }, b: { name: string }) => a.name.localeCompare(b.name, 'en', { numeric: true });

/** Every waypoint the objects or the agents know, with its replicas' readiness and each agent's view. */
export async function waypointStatuses(t: Target, filter: { namespace?: string; name?: string } = {}): Promise<WaypointStatus[]> {
  const [comps, declared] = await Promise.all([components(t), declaredWaypoints(t)]);
  const agents = comps.filter((c) => c.role === 'agent').sort(byName);
  const dumps = await Promise.all(agents.map(async (c) => {
    try {
      return { node: c.name, config: (await c.admin<{ config: AgentConfig }>('/config_dump')).config };
    } catch (err) {
      return { node: c.name, error: (err as Error).message };
    }
  }));
  const known = new Map<string, Declared>();
  for (const k of declared) known.set(`${k.namespace}/${k.name}`, k);
  // This cluster's waypoints: another cluster's, imported with a Service only it has, are that cluster's to report.
  for (const d of dumps) for (const w of d.config?.waypoints ?? []) if (w.cluster === undefined && !known.has(`${w.namespace}/${w.name}`)) known.set(`${w.namespace}/${w.name}`, { namespace: w.namespace, name: w.name });
  const podsOf = (k: Key): Component[] => comps.filter((c) => c.role === 'waypoint' && c.reporter === `waypoint ${k.namespace}/${k.name}`)
    .map((c) => ({ c, name: c.name.slice(c.name.indexOf('/') + 1) })).sort(byName).map((x) => x.c);
  const out: WaypointStatus[] = [];
  for (const { namespace, name, condition } of [...known.values()].sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`))) {
    if (filter.namespace && namespace !== filter.namespace) continue;
    if (filter.name && name !== filter.name) continue;
    const views = dumps.map((d) => ({ d, w: d.config?.waypoints.find((x) => x.namespace === namespace && x.name === name && x.cluster === undefined) }));
    const agentRows = views.map(({ d, w }) => {
      if (d.error !== undefined) return { node: d.node, ready: false, detail: `agent admin unreachable: ${d.error}` };
      if (!w) return { node: d.node, ready: false, detail: 'unknown to the agent' };
      return { node: d.node, ready: w.ready, detail: w.ready ? `sends to ${(w.addresses ?? [w.address]).join(', ')}` : (w.reason ?? 'not ready') };
    });
    const seen = views.map((v) => v.w).find((w) => w !== undefined);
    const pods = await Promise.all(podsOf({ namespace, name }).map(async (c) => {
      const r = await c.ready();
      let configVersion: number | undefined;
      if (r.ready) {
        try {
          configVersion = (await c.admin<{ version: number }>('/config_dump')).version;
        } catch {
          /* the version column stays empty */
        }
      }
      return { name: c.name.slice(c.name.indexOf('/') + 1), node: c.node ?? '-', ip: c.address ?? '-', ready: r.ready, detail: r.reason || (r.ready ? 'ready' : 'not ready'), ...(configVersion !== undefined ? { configVersion } : {}) };
    }));
    const ready = agentRows.every((a) => a.ready) && pods.length > 0 && pods.every((p) => p.ready);
    const reason = ready ? undefined
      // On a cluster the controller's word on the object says why (DeploymentMissing, NoReadyReplicas, a refusal).
      : pods.length === 0 ? `no waypoint pod runs${condition && condition.status !== 'True' && condition.reason ? ` (Waypoint status: ${condition.reason}${condition.message ? `: ${condition.message}` : ''})` : ''}`
        : [...pods.filter((p) => !p.ready).map((p) => `pod ${p.name}: ${p.detail}`), ...agentRows.filter((a) => !a.ready).map((a) => `agent ${a.node}: ${a.detail}`)].join('; ');
    out.push({
      namespace, name, ready, addresses: seen ? (seen.addresses ?? (seen.address ? [seen.address] : [])) : [],
      ...(reason ? { reason } : {}), ...(seen ? { identity: seen.spiffeId } : {}), pods, agents: agentRows,
    });
  }
  return out;
}

/**
 * Waits until the waypoint's replicas are ready and every agent sees it ready; says where it is.
 * WaypointCommandError WEFT_WAYPOINT_NOT_READY (naming what is not ready, and `hint`) at the deadline.
 */
export async function waitWaypointReady(t: Target, namespace: string, name: string, o: { timeoutMs: number; say: (l: string) => void; hint: string }): Promise<WaypointStatus> {
  const deadline = Date.now() + o.timeoutMs;
  for (;;) {
    const [w] = await waypointStatuses(t, { namespace, name });
    if (w?.ready) {
      o.say(`waypoint ${namespace}/${name} ready at ${w.addresses.join(', ')}, identity ${w.identity}`);
      return w;
    }
    if (Date.now() > deadline) throw new WaypointCommandError('WEFT_WAYPOINT_NOT_READY', `waypoint ${namespace}/${name} is not ready at every agent (${w?.reason ?? 'unknown to every agent'}); ${o.hint}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** The Waypoint object `weftctl waypoint apply` writes, checked as the controller will check it. */
export function waypointObject(o: { namespace: string; name: string; maxRequests?: number; quotaStore?: { redis: string; failureMode?: 'open' | 'closed' } }): Record<string, unknown> {
  const spec = { ...(o.maxRequests !== undefined ? { maxRequests: o.maxRequests } : {}), ...(o.quotaStore ? { quotaStore: o.quotaStore } : {}) };
  const object = { apiVersion: WP.apiVersion, kind: 'Waypoint', metadata: { name: o.name, namespace: o.namespace }, ...(Object.keys(spec).length > 0 ? { spec } : {}) };
  assertValid(object);
  return object;
}

const wpPath = (ns: string, name: string) => `/apis/${WP.apiVersion}/namespaces/${encodeURIComponent(ns)}/${WP.plural}/${encodeURIComponent(name)}`;
const nsPath = (ns: string) => `/api/v1/namespaces/${encodeURIComponent(ns)}`;

async function getOrUndefined<T>(kube: KubeClient, path: string): Promise<T | undefined> {
  try {
    return await kube.get<T>(path);
  } catch (e) {
    if (e instanceof KubeApiError && e.status === 404) return undefined;
    throw e;
  }
}

/**
 * On a cluster: applies the Waypoint object (the controller then makes its Deployment, Service
 * and pods) and, when asked, labels the namespace `weft.dev/use-waypoint=<name>`. Says what changed.
 */
export async function applyWaypointObject(kube: KubeClient, o: Parameters<typeof waypointObject>[0] & { enrollNamespace: boolean; say: (l: string) => void }): Promise<void> {
  const object = waypointObject(o);
  const current = await getOrUndefined<{ spec?: unknown }>(kube, wpPath(o.namespace, o.name));
  await kube.serverSideApply(wpPath(o.namespace, o.name), object);
  const same = current !== undefined && JSON.stringify(current.spec ?? {}) === JSON.stringify((object as { spec?: unknown }).spec ?? {});
  o.say(current === undefined
    ? `waypoint ${o.namespace}/${o.name} created: the controller starts its Deployment and Service`
    : same ? `waypoint ${o.namespace}/${o.name} already exists; unchanged` : `waypoint ${o.namespace}/${o.name} configured`);
  if (o.enrollNamespace) {
    const ns = await getOrUndefined<{ metadata?: { labels?: Record<string, string> } }>(kube, nsPath(o.namespace));
    if (ns?.metadata?.labels?.[LABEL_USE_WAYPOINT] === o.name) o.say(`namespace ${o.namespace} already uses waypoint ${o.name}`);
    else {
      await kube.serverSideApply(nsPath(o.namespace), { apiVersion: 'v1', kind: 'Namespace', metadata: { name: o.namespace, labels: { [LABEL_USE_WAYPOINT]: o.name } } });
      o.say(`namespace ${o.namespace} labelled ${LABEL_USE_WAYPOINT}=${o.name}: its services now use the waypoint`);
    }
  }
}

/** On a cluster: deletes the Waypoint object (the controller removes its Deployment, Service and pods). False when there is none. */
export async function deleteWaypointObject(kube: KubeClient, namespace: string, name: string, say: (l: string) => void): Promise<boolean> {
  if (!(await getOrUndefined(kube, wpPath(namespace, name)))) {
    say(`no waypoint ${namespace}/${name} in this cluster`);
    return false;
  }
  const pods = await kube.list<{ metadata: { name: string } }>('v1', 'pods', namespace, { labelSelector: `${LABEL_WAYPOINT_FOR}=${name}` });
  await kube.send('DELETE', wpPath(namespace, name));
  const names = pods.map((p) => p.metadata.name).sort();
  say(`waypoint ${namespace}/${name} deleted (the controller removes its Deployment, Service${names.length ? ` and pods ${names.join(', ')}` : ''})`);
  const ns = await getOrUndefined<{ metadata?: { labels?: Record<string, string> } }>(kube, nsPath(namespace));
  if (ns?.metadata?.labels?.[LABEL_USE_WAYPOINT] === name) say(stillLabelled(namespace, name));
  return true;
}
