// Server-side printing for the kube lab's API server stand-in (fake-apiserver.ts): the
// meta.k8s.io/v1 Table that `kubectl get` asks for (Accept: application/json;as=Table;…), so its
// output has the columns a real cluster prints. The columns follow kube-apiserver's printers
// (pkg/printers/internalversion) for the kinds the lab runs; every other kind gets Name and Age,
// as the real server prints a resource without printer columns. Where it differs, the real
// server is right.

type Obj = { kind?: string; metadata: { name: string; namespace?: string; creationTimestamp?: string; deletionTimestamp?: string; [k: string]: unknown }; [k: string]: unknown };

interface Column { name: string; type: 'string' | 'integer' | 'date'; format?: string; description: string; priority: number }

const col = (name: string, type: Column['type'] = 'string', priority = 0, format?: string): Column => ({ name, type, priority, description: name, ...(format ? { format } : {}) });

/** kubectl's human duration (k8s.io/apimachinery/pkg/util/duration.HumanDuration), to the day. */
export function humanAge(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  const m = Math.floor(s / 60);
  const h = Math.floor(m / 60);
  const d = Math.floor(h / 24);
  if (s < 120) return `${s}s`;
  if (m < 10) return s % 60 === 0 ? `${m}m` : `${m}m${s % 60}s`;
  if (m < 180) return `${m}m`;
  if (h < 8) return m % 60 === 0 ? `${h}h` : `${h}h${m % 60}m`;
  if (h < 48) return `${h}h`;
  if (h < 192) return h % 24 === 0 ? `${d}d` : `${d}d${h % 24}h`;
  return `${d}d`;
}

const age = (o: Obj, now: number) => (o.metadata.creationTimestamp ? humanAge((now - Date.parse(o.metadata.creationTimestamp)) / 1000) : '<unknown>');
const num = (v: unknown) => (typeof v === 'number' ? v : 0);

interface Printer { columns: Column[]; cells: (o: Obj, now: number) => unknown[] }

const PRINTERS: Record<string, Printer> = {
  Pod: {
    columns: [col('Name', 'string', 0, 'name'), col('Ready'), col('Status'), col('Restarts', 'integer'), col('Age'), col('IP', 'string', 1), col('Node', 'string', 1)],
    cells: (o, now) => {
      const spec = (o['spec'] ?? {}) as { containers?: unknown[]; nodeName?: string };
      const st = (o['status'] ?? {}) as { phase?: string; podIP?: string; containerStatuses?: Array<{ ready?: boolean; restartCount?: number; state?: { waiting?: { reason?: string } } }> };
      const cs = st.containerStatuses ?? [];
      const waiting = cs.find((c) => c.state?.waiting?.reason)?.state?.waiting?.reason;
      const status = o.metadata.deletionTimestamp ? 'Terminating' : waiting ?? st.phase ?? 'Pending';
      return [o.metadata.name, `${cs.filter((c) => c.ready).length}/${spec.containers?.length ?? 0}`, status, cs.reduce((n, c) => n + num(c.restartCount), 0), age(o, now), st.podIP ?? '<none>', spec.nodeName ?? '<none>'];
    },
  },
  Deployment: {
    columns: [col('Name', 'string', 0, 'name'), col('Ready'), col('Up-to-date', 'integer'), col('Available', 'integer'), col('Age')],
    cells: (o, now) => {
      const st = (o['status'] ?? {}) as Record<string, unknown>;
      const want = num(((o['spec'] ?? {}) as { replicas?: number }).replicas ?? 1);
      return [o.metadata.name, `${num(st['readyReplicas'])}/${want}`, num(st['updatedReplicas']), num(st['availableReplicas']), age(o, now)];
    },
  },
  DaemonSet: {
    columns: [col('Name', 'string', 0, 'name'), col('Desired', 'integer'), col('Current', 'integer'), col('Ready', 'integer'), col('Up-to-date', 'integer'), col('Available', 'integer'), col('Age')],
    cells: (o, now) => {
      const st = (o['status'] ?? {}) as Record<string, unknown>;
      return [o.metadata.name, num(st['desiredNumberScheduled']), num(st['currentNumberScheduled']), num(st['numberReady']), num(st['updatedNumberScheduled']), num(st['numberAvailable']), age(o, now)];
    },
  },
  Service: {
    columns: [col('Name', 'string', 0, 'name'), col('Type'), col('Cluster-IP'), col('External-IP'), col('Port(s)'), col('Age')],
    cells: (o, now) => {
      const spec = (o['spec'] ?? {}) as { type?: string; clusterIP?: string; ports?: Array<{ port: number; protocol?: string }> };
      return [o.metadata.name, spec.type ?? 'ClusterIP', spec.clusterIP ?? '<none>', '<none>', (spec.ports ?? []).map((p) => `${p.port}/${p.protocol ?? 'TCP'}`).join(',') || '<none>', age(o, now)];
    },
  },
};

const DEFAULT_PRINTER: Printer = { columns: [col('Name', 'string', 0, 'name'), col('Age')], cells: (o, now) => [o.metadata.name, age(o, now)] };

/** Whether a request's Accept header asks for a meta.k8s.io/v1 Table. */
export function wantsTable(accept: string | undefined): boolean {
  return !!accept && accept.split(',').some((a) => a.includes('as=Table') && a.includes('v=v1') && !a.includes('v=v1beta1') && a.includes('g=meta.k8s.io'));
}

/** The Table for these objects of one kind. */
export function toTable(kind: string, items: Obj[], resourceVersion: string, now = Date.now()): object {
  const p = PRINTERS[kind] ?? DEFAULT_PRINTER;
  return {
    kind: 'Table', apiVersion: 'meta.k8s.io/v1', metadata: { resourceVersion },
    columnDefinitions: p.columns,
    rows: items.map((o) => ({ cells: p.cells(o, now), object: { kind: 'PartialObjectMetadata', apiVersion: 'meta.k8s.io/v1', metadata: o.metadata } })),
  };
}
