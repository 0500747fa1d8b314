import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { ConfigDirSource, type ConfigFileError } from '../../controller/src/sources/files.ts';
import { authz, ns, pod, svc } from './controller-fixtures.ts';
import { startHarness, until } from './controller-harness.ts';
import { holds } from '../lab/wait.ts';

function yamlDocs(...objects: unknown[]): string {
  return objects.map((o) => stringify(o)).join('---\n');
}

async function withDir(fn: (dir: string, write: (file: string, ...objects: unknown[]) => void) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'weft-ctl-'));
  try {
    await fn(dir, (file, ...objects) => writeFileSync(join(dir, file), yamlDocs(...objects)));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const names = (ws: Array<{ name: string }>) => ws.map((w) => w.name).sort();

test('labelling a namespace enrols its pods for the agent of their node only, and unlabelling removes them', () =>
  withDir(async (dir, write) => {
    write('ns.yaml', ns('shop'));
    write('pods.yaml',
      pod('shop', 'web', { node: 'node-a' }),
      pod('shop', 'api', { node: 'node-b' }),
      pod('shop', 'legacy', { node: 'node-a', labels: { app: 'legacy', 'weft.dev/dataplane-mode': 'none' } }),
      svc('shop', 'web'));
    const h = await startHarness(new ConfigDirSource({ dir, debounceMs: 10 }));
    try {
      const a = h.agent('node-a');
      const b = h.agent('node-b');
      await a.ready();
      await b.ready();
      const enrolledHere = (c: typeof a, node: string) => names(c.snapshot!.workloads.filter((w) => w.enrolled && w.node === node)).join();
      assert.equal(enrolledHere(a, 'node-a'), '');
      // Its own node's plain pods only (the CNI plugin asks the agent about them), nothing of node-b's.
      assert.deepEqual(names(a.snapshot!.workloads.filter((w) => !w.enrolled)), ['legacy', 'web']);
      assert.equal(a.snapshot!.services.length, 1);

      write('ns.yaml', ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }));
      await until('node-a agent enrols web', () => enrolledHere(a, 'node-a') === 'web');
      await until('node-b agent enrols api', () => enrolledHere(b, 'node-b') === 'api');
      assert.equal(a.snapshot!.workloads.find((w) => w.name === 'web')!.spiffeId, 'spiffe://cluster.local/ns/shop/sa/web');
      assert.equal(a.snapshot!.services[0]!.endpoints[0]!.enrolled, true);

      write('ns.yaml', ns('shop'));
      await until('enrolment removed on node-a', () => enrolledHere(a, 'node-a') === '' && a.snapshot!.workloads.every((w) => w.node === 'node-a'));
      await until('enrolment removed on node-b', () => enrolledHere(b, 'node-b') === '' && b.snapshot!.workloads.every((w) => w.node === 'node-b'));
    } finally {
      await h.close();
    }
  }));

test('an invalid AuthorizationPolicy is marked Invalid with the field path and the previous one keeps serving', () =>
  withDir(async (dir, write) => {
    write('mesh.yaml', ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), pod('shop', 'web'));
    const good = authz('shop', 'allow-front', { selector: { matchLabels: { app: 'web' } }, rules: [{ from: [{ source: { ipBlocks: ['10.0.0.0/8'] } }] }] });
    write('policy.yaml', good);
    const source = new ConfigDirSource({ dir, debounceMs: 10 });
    const h = await startHarness(source);
    try {
      const a = h.agent('node-a');
      await until('policy delivered', () => a.snapshot?.policies.length === 1);
      const before = structuredClone(a.snapshot);
      const versionBefore = a.version;

      const bad = authz('shop', 'allow-front', { selector: { matchLabels: { app: 'web' } }, rules: [{ from: [{ source: { ipBlocks: ['10.0.0.0/8', '10.0.0.0/99'] } }] }] });
      bad.metadata.generation = 2;
      write('policy.yaml', bad);
      await until('status Invalid', () => source.statuses().get('AuthorizationPolicy/shop/allow-front')?.ok === false);
      const st = source.statuses().get('AuthorizationPolicy/shop/allow-front')!;
      assert.equal(st.reason, 'Invalid');
      assert.equal(st.path, 'spec.rules[0].from[0].source.ipBlocks[1]');
      assert.match(st.message, /AuthorizationPolicy shop\/allow-front/);
      assert.ok(h.logs.some((l) => l.msg.startsWith('invalid object refused') && l.fields.file === 'policy.yaml'));
      await holds('the agent keeps the last good snapshot', () => JSON.stringify(a.snapshot) === JSON.stringify(before), 100);
      assert.deepEqual(a.snapshot, before);
      assert.equal(a.version, versionBefore);
      assert.deepEqual(h.controller.model!.policies.get('shop/allow-front')!.rules[0]!.from[0]!.ipBlocks, ['10.0.0.0/8']);

      write('policy.yaml', good);
      await until('status Accepted again', () => source.statuses().get('AuthorizationPolicy/shop/allow-front')?.ok === true);
    } finally {
      await h.close();
    }
  }));

test('a file that does not parse is reported by name and its last good objects stay', () =>
  withDir(async (dir, write) => {
    write('mesh.yaml', ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), pod('shop', 'web'));
    const errors: ConfigFileError[] = [];
    const h = await startHarness(new ConfigDirSource({ dir, debounceMs: 10, onFileError: (e) => errors.push(e) }));
    try {
      const a = h.agent('node-a');
      await until('web delivered', () => a.snapshot?.workloads.length === 1);
      writeFileSync(join(dir, 'mesh.yaml'), 'kind: Namespace\nmetadata: {name: shop\n  labels: [\n');
      await until('parse error reported', () => errors.length > 0);
      assert.equal(errors[0]!.file, 'mesh.yaml');
      assert.equal(errors[0]!.code, 'WEFT_CONFIG_FILE');
      await holds('the workload stays delivered after a file that does not parse', () => a.snapshot!.workloads.length === 1, 100);
      assert.equal(h.controller.store.objects('Pod').length, 1);
    } finally {
      await h.close();
    }
  }));

test('a client whose hook rejects an update NACKs it, keeps its last good config, and the server logs why', () =>
  withDir(async (dir, write) => {
    write('mesh.yaml', ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), pod('shop', 'web'));
    const h = await startHarness(new ConfigDirSource({ dir, debounceMs: 10 }));
    try {
      const rejected: string[] = [];
      const a = h.agent('node-a', {
        validate: (cfg) => {
          if (cfg.workloads.some((w) => w.name === 'evil')) throw new Error('workload evil is not welcome here');
        },
      });
      a.on('rejected', (e) => rejected.push(e.message));
      await until('first config', () => a.snapshot?.workloads.length === 1);
      const good = a.version;
      write('more.yaml', pod('shop', 'evil'));
      await until('NACK logged by server', () => h.logs.some((l) => l.msg.startsWith('config rejected by client') && String(l.fields.reason).includes('evil is not welcome')));
      assert.equal(a.version, good);
      assert.deepEqual(names(a.snapshot!.workloads), ['web']);
      assert.match(rejected[0]!, /rejected: workload evil is not welcome here/);
      assert.ok(h.configServer.clients().some((c) => c.nackedVersion !== undefined));

      // The next good change is accepted on top of the last good config.
      write('more.yaml', pod('shop', 'fine'));
      await until('next update accepted', () => names(a.snapshot!.workloads).join() === 'fine,web');
    } finally {
      await h.close();
    }
  }));

test('a waypoint receives only its own namespace', () =>
  withDir(async (dir, write) => {
    write('mesh.yaml', svc('a', 'one'), svc('b', 'two'),
      { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'r', namespace: 'a' }, spec: { parentRefs: [{ group: '', kind: 'Service', name: 'one' }], rules: [{ backendRefs: [{ name: 'one', port: 80 }] }] } },
      { apiVersion: 'weft.dev/v1alpha1', kind: 'TrafficPolicy', metadata: { name: 't', namespace: 'b' }, spec: { targetRef: { kind: 'Service', name: 'two' }, timeouts: { request: '2s' } } });
    const h = await startHarness(new ConfigDirSource({ dir, debounceMs: 10 }));
    try {
      const wa = h.waypoint('a');
      const wb = h.waypoint('b');
      const ca = await wa.ready();
      const cb = await wb.ready();
      assert.deepEqual(ca.services.map((s) => s.name), ['one']);
      assert.deepEqual(ca.routes.map((r) => r.name), ['r']);
      assert.deepEqual(ca.trafficPolicies, []);
      assert.deepEqual(cb.services.map((s) => s.name), ['two']);
      assert.deepEqual(cb.trafficPolicies.map((t) => t.timeouts.requestMs), [2000]);
    } finally {
      await h.close();
    }
  }));

test('reads a mounted ConfigMap layout (hidden timestamped folder, top-level symlinks) once, and refuses a missing directory', async () => {
  const { mkdirSync, symlinkSync } = await import('node:fs');
  await withDir(async (dir) => {
    mkdirSync(join(dir, '..2026_01_01'));
    writeFileSync(join(dir, '..2026_01_01', 'mesh.yaml'), yamlDocs(ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), pod('shop', 'web')));
    symlinkSync('..2026_01_01', join(dir, '..data'));
    symlinkSync(join('..data', 'mesh.yaml'), join(dir, 'mesh.yaml'));
    const h = await startHarness(new ConfigDirSource({ dir, debounceMs: 10 }));
    try {
      assert.equal(h.controller.store.objects('Pod').length, 1);
      assert.equal(h.controller.store.objects('Namespace').length, 1);
    } finally {
      await h.close();
    }
  });
  // A folder that surely does not exist: inside a fresh temporary one (a fixed path such as
  // /nonexistent/weft is a statement about the machine, and a test once created that one).
  const parent = mkdtempSync(join(tmpdir(), 'weft-missing-'));
  try {
    await assert.rejects(new ConfigDirSource({ dir: join(parent, 'missing') }).start(() => {}), { code: 'WEFT_CONFIG_FILE' });
  } finally {
    rmSync(parent, { recursive: true, force: true });
  }
});

test('an object removed from one file but still defined in another stays', () =>
  withDir(async (dir, write) => {
    write('a.yaml', ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), pod('shop', 'web'));
    write('b.yaml', pod('shop', 'web'));
    const h = await startHarness(new ConfigDirSource({ dir, debounceMs: 10 }));
    try {
      const a = h.agent('node-a');
      await until('web delivered', () => a.snapshot?.workloads.length === 1);
      rmSync(join(dir, 'b.yaml'));
      write('a.yaml', ns('shop', { 'weft.dev/dataplane-mode': 'ambient' }), pod('shop', 'web'), pod('shop', 'marker'));
      await until('rescan applied', () => a.snapshot!.workloads.length === 2);
      assert.deepEqual(names(a.snapshot!.workloads), ['marker', 'web']);
    } finally {
      await h.close();
    }
  }));
