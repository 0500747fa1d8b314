// `weftctl check` on a multi-cluster mesh: the east-west gateways and remote discovery (issue 18
// item 7), judged from the controller's /debug/federation and the gateways' probes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { checkFederation, FEDERATION_FRESH_MS, type FederationFacts } from '../../cli/check-federation.ts';
import { AGENT_CGROUP_PROGRAMS, type MeshFacts } from '../../cli/check.ts';
import { checkCommand } from '../../cli/commands/check.ts';
import type { LocalState } from '../../cli/local/up.ts';

const NOW = Date.parse('2026-12-04T12:00:00Z');
const ago = (ms: number) => new Date(NOW - ms).toISOString();
const ok = { reachable: true, ready: true, detail: 'ready' };

function healthy(): FederationFacts {
  return {
    now: NOW, cluster: 'cluster1', network: 'network1', logDir: '/s/logs',
    gateway: { address: '192.168.77.1', port: 15008, probe: ok },
    remotes: [{
      cluster: 'cluster2', url: 'https://192.168.77.2:15014', up: true, endpoints: 2, lastOk: ago(800), network: 'network2',
      gateway: { network: 'network2', address: '192.168.77.2', port: 15008, spiffeId: 'spiffe://cluster.local/ns/weft-system/sa/weft-eastwest' },
      gatewayProbe: ok,
    }],
  };
}

const verdicts = (f: FederationFacts) => checkFederation(f).map((r) => `${r.id}:${r.status}`);

test('a healthy federation passes: own gateway admitting, remote export fresh, the remote network\'s gateway reachable and admitting', () => {
  assert.deepEqual(verdicts(healthy()), ['mesh.eastwest:pass', 'mesh.remote.cluster2:pass', 'mesh.remote-gateway.cluster2:pass']);
});

test('a remote past this controller\'s import quota is a warning naming what was left out and the flags that raise it', () => {
  const f = healthy();
  f.remotes[0]!.quota = { refused: 3, message: 'cluster cluster2 exports 6 Services with 8 endpoints, past this cluster\'s import quota of 3 Services and 4 endpoints per remote cluster (--remote-max-services, --remote-max-endpoints); taken in namespace/name order, the 3 that did not fit are not imported: demo/a-big, demo/d, demo/e' };
  const r = checkFederation(f).find((x) => x.id === 'mesh.remote-quota.cluster2')!;
  assert.equal(r.status, 'warn');
  assert.match(r.detail, /the 3 that did not fit are not imported: demo\/a-big/);
  assert.match(r.status === 'warn' ? r.remedy : '', /--remote-max-services/);
  assert.equal(checkFederation(f).find((x) => x.id === 'mesh.remote.cluster2')!.status, 'pass', 'the remote itself is read');
});

test('a remote whose export was dropped (past the stale bound) fails with the read error and what to check', () => {
  const f = healthy();
  Object.assign(f.remotes[0]!, { up: false, endpoints: 0, lastOk: ago(60_000), lastError: 'connect ETIMEDOUT 192.168.77.2:15014' });
  const r = checkFederation(f).find((x) => x.id === 'mesh.remote.cluster2')!;
  assert.equal(r.status, 'fail');
  assert.match(r.detail, /ETIMEDOUT/);
  assert.match(r.status === 'fail' ? r.remedy : '', /https:\/\/192\.168\.77\.2:15014[\s\S]*controller\.log/);
});

test('a remote still up but not read for more than five polls is not fresh: a warning that its endpoints will be dropped', () => {
  const f = healthy();
  f.remotes[0]!.lastOk = ago(FEDERATION_FRESH_MS + 4_000);
  const r = checkFederation(f).find((x) => x.id === 'mesh.remote.cluster2')!;
  assert.equal(r.status, 'warn');
  assert.match(r.detail, /last read 9 s ago.*kept until the stale bound/);
});

test('the other network\'s gateway failing: unreachable, or reachable but not admitting (not ready), fails naming the address', () => {
  const f = healthy();
  f.remotes[0]!.gatewayProbe = { reachable: false, ready: false, detail: 'HBONE port not reachable: connect ECONNREFUSED' };
  let r = checkFederation(f).find((x) => x.id === 'mesh.remote-gateway.cluster2')!;
  assert.equal(r.status, 'fail');
  assert.match(r.detail, /192\.168\.77\.2:15008: HBONE port not reachable/);
  f.remotes[0]!.gatewayProbe = { reachable: true, ready: false, detail: 'readiness 503: no endpoints of this cluster known yet' };
  r = checkFederation(f).find((x) => x.id === 'mesh.remote-gateway.cluster2')!;
  assert.equal(r.status, 'fail');
});

test('own gateway not ready fails; no own gateway while a remote is on another network warns; a remote on the same network needs no gateway', () => {
  const f = healthy();
  f.gateway!.probe = { reachable: true, ready: false, detail: 'readiness 503' };
  assert.equal(checkFederation(f)[0]!.status, 'fail');
  delete f.gateway;
  assert.deepEqual(verdicts(f)[0], 'mesh.eastwest:warn');
  const same = healthy();
  delete same.gateway;
  Object.assign(same.remotes[0]!, { network: 'network1' });
  delete same.remotes[0]!.gateway;
  delete same.remotes[0]!.gatewayProbe;
  assert.deepEqual(verdicts(same), ['mesh.remote.cluster2:pass']);
});

test('a remote that names no gateway on another network fails: its endpoints cannot be reached', () => {
  const f = healthy();
  delete f.remotes[0]!.gateway;
  delete f.remotes[0]!.gatewayProbe;
  const r = checkFederation(f).find((x) => x.id === 'mesh.remote-gateway.cluster2')!;
  assert.equal(r.status, 'fail');
  assert.match(r.detail, /names no gateway/);
});

test('weftctl check on a `weftctl up --clusters 2` state folder checks every cluster, naming it, and fails when a remote is down', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-check-mc-'));
  try {
    const clusters = ['cluster1', 'cluster2'].map((name, i) => ({ name, network: `network${i + 1}`, prefix: `pc${i + 1}`, stateDir: join(dir, name), edgeIp: `192.168.77.${i + 1}` }));
    writeFileSync(join(dir, 'clusters.json'), JSON.stringify({ prefix: 'p', stateDir: dir, startedAt: '', clusters }));
    for (const c of clusters) {
      mkdirSync(c.stateDir);
      const st: LocalState = { prefix: c.prefix, stateDir: c.stateDir, startedAt: '', nodes: [], pods: [], services: [] };
      writeFileSync(join(c.stateDir, 'state.json'), JSON.stringify(st));
    }
    const mesh = (): MeshFacts => ({
      now: NOW, logDir: '/s/logs', controller: { ready: true, detail: 'ready' }, waypoints: [],
      agents: [{ node: 'node1', ready: true, detail: 'ready', links: AGENT_CGROUP_PROGRAMS.map((program, id) => ({ program, id })) }],
    });
    const fed = (st: LocalState): FederationFacts => {
      const f = healthy();
      if (st.prefix === 'pc2') {
        Object.assign(f, { cluster: 'cluster2', network: 'network2' });
        Object.assign(f.remotes[0]!, { cluster: 'cluster1', network: 'network1', up: false, lastError: 'connect ECONNREFUSED' });
      }
      return f;
    };
    let out = '';
    let code = -1;
    const io = { out: (s: string) => { out += s; }, err: () => {}, setExitCode: (c: number) => { code = c; } };
    await checkCommand(io as never, {}, { meshFacts: async () => mesh(), federationFacts: async (st) => fed(st), isRunning: (p) => p === 'pc1' || p === 'pc2' })
      .parseAsync(['--mesh', '--prefix', 'p', '--state-dir', dir], { from: 'user' });
    assert.equal(code, 1, out);
    assert.match(out, /ok +cluster1: remote cluster cluster2 +export read 1 s ago: 2 endpoints on network2/);
    assert.match(out, /ok +cluster1: gateway into network2 \(cluster2\)/);
    assert.match(out, /FAIL +cluster2: remote cluster cluster1 .*ECONNREFUSED/);
    assert.match(out, /ok +cluster2: controller ready/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
