// Reliability of the control plane, with the real controller and agents in namespaces:
// - the controller killed: traffic keeps flowing on the agents' last good config and certificates,
//   agents say they are disconnected but stay ready; restarted (same CA files), the agents
//   reconnect on their own and a config change written afterwards takes effect;
// - config fuzzing: seeded random mutations of valid objects (deleted keys, changed types, huge
//   strings, invalid CIDRs, deep nesting, broken YAML, alias bombs) written into the config
//   directory many times: the controller never exits, agents never receive a config they reject,
//   a known-good request keeps working, and the invalid objects are reported.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { localMeshSuite, until } from './mesh-suite.ts';
import { LocalMesh, CONTROLLER_IP } from '../../cli/local/mesh.ts';
import { requestInNetns } from '../../cli/local/netns-http.ts';
import { FUZZ_SEEDS, mutateFile, prng } from '../lab/config-fuzz.ts';

const suite = localMeshSuite();
let mesh: LocalMesh;
const VIP = '10.96.0.10';
const NEW_VIP = '10.96.0.11';
const SHOP_VIP = '10.96.0.20';
const NODES = ['node1', 'node2'];

before(async () => {
  mesh = await suite.create(NODES);
  mesh.writeConfig('10-demo.yaml', [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'demo', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'fuzz', labels: { 'weft.dev/dataplane-mode': 'ambient' } } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'echo', namespace: 'demo' }, spec: { clusterIP: VIP, selector: { app: 'echo' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
    { apiVersion: 'weft.dev/v1alpha1', kind: 'PeerAuthentication', metadata: { name: 'strict', namespace: 'demo' }, spec: { mtls: { mode: 'STRICT' } } },
    // L7 through a waypoint: its policy must hold while the controller is away.
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'shop', labels: { 'weft.dev/dataplane-mode': 'ambient', 'weft.dev/use-waypoint': 'waypoint' } } },
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'shop', namespace: 'shop' }, spec: { clusterIP: SHOP_VIP, selector: { app: 'shop' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
    {
      apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'no-admin', namespace: 'shop' },
      spec: { targetRefs: [{ kind: 'Service', group: '', name: 'shop' }], action: 'DENY', rules: [{ to: [{ operation: { paths: ['/admin*'] } }] }] },
    },
  ]);
  mesh.addWorkload({ node: 'node1', namespace: 'demo', name: 'client' });
  mesh.addWorkload({ node: 'node1', namespace: 'shop', name: 'buyer' });
  mesh.addWorkload({ node: 'node2', namespace: 'shop', name: 'shop', labels: { app: 'shop' }, command: ['cli/local/apps/echo.ts', '--port', '8080', '--name', 'shop'] });
  mesh.addWorkload({ node: 'node2', namespace: 'demo', name: 'echo', labels: { app: 'echo' }, command: ['cli/local/apps/echo.ts', '--port', '8080', '--name', 'echo'] });
  mesh.startController();
  await mesh.waitControllerReady();
  mesh.startAgents();
  mesh.startWaypoint('node2', 'shop');
  await mesh.waitReady();
  await mesh.waitWaypointReady('shop');
  await mesh.waitWorkloadsEnrolled(['demo/client', 'demo/echo', 'shop/buyer', 'shop/shop']);
});

const curl = (from: string, url: string) => mesh.exec(from, 'curl', ['-sS', '--max-time', '5', '-o', '/dev/null', '-w', '%{http_code}', url]);


const connected = async (node: string) => (await mesh.agentAdmin<{ controllerConnected: boolean }>(node, '/config_dump')).controllerConnected;

async function controllerMetrics(): Promise<string> {
  return (await requestInNetns(`/var/run/netns/${mesh.net.wireNetns}`, `http://${CONTROLLER_IP}:15020/metrics`, { timeoutMs: 2_000 })).body;
}

function metricSum(text: string, name: string): number {
  let sum = 0;
  for (const line of text.split('\n')) if (line.startsWith(name) && /^[a-z_]+(\{.*\})? /.test(line)) sum += Number(line.split(' ').pop());
  return sum;
}

test('with the controller killed, traffic keeps flowing on the last good config and agents stay ready while reporting the stream down; restarted, they reconnect and converge on new config', async () => {
  assert.equal((await curl('demo/client', `http://${VIP}/`)).stdout, '200');
  await until('the waypoint serves and enforces its policy', async () => (await curl('shop/buyer', `http://${SHOP_VIP}/`)).stdout === '200' && (await curl('shop/buyer', `http://${SHOP_VIP}/admin`)).stdout === '403', 20_000);
  for (const n of NODES) assert.equal(await connected(n), true, `${n} is connected to start with`);
  const certsBefore = await mesh.agentAdmin<{ certificates: Array<{ serial: string }> }>('node1', '/certs');

  await mesh.stopController('SIGKILL');
  const downMs = await until('agents notice the controller is gone', async () => !(await connected('node1')) && !(await connected('node2')), 15_000);
  console.log(`# agents reported the config stream down ${downMs} ms after the controller was killed`);
  assert.match(await mesh.agentMetrics('node1'), /^weft_controller_connected 0$/m, 'the agent metric says disconnected');

  // Down for a while: every agent stays ready and keeps serving new connections across nodes (mTLS).
  for (let i = 0; i < 5; i++) {
    for (const n of NODES) assert.deepEqual((await mesh.agentReady(n)).ready, true, `${n} stays ready without a controller`);
    assert.equal((await curl('demo/client', `http://${VIP}/`)).stdout, '200', `request ${i} while the controller is down`);
    assert.equal((await curl('shop/buyer', `http://${SHOP_VIP}/`)).stdout, '200', `the waypoint keeps serving (request ${i})`);
    assert.equal((await curl('shop/buyer', `http://${SHOP_VIP}/admin`)).stdout, '403', `and keeps enforcing its L7 policy (request ${i})`);
    await sleep(400);
  }
  assert.deepEqual(
    (await mesh.agentAdmin<{ certificates: Array<{ serial: string }> }>('node1', '/certs')).certificates.map((c) => c.serial).sort(),
    certsBefore.certificates.map((c) => c.serial).sort(),
    'the agent keeps the certificates it had',
  );

  const restarted = Date.now();
  mesh.startController();
  await mesh.waitControllerReady();
  const reconnectMs = await until('agents reconnect', async () => (await connected('node1')) && (await connected('node2')), 30_000);
  console.log(`# controller ready ${Date.now() - restarted - reconnectMs} ms after restart; agents reconnected ${reconnectMs} ms later`);

  // A change made after the restart reaches the agents: a second Service VIP starts working.
  const written = Date.now();
  mesh.writeConfig('20-new-service.yaml', [
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'echo-new', namespace: 'demo' }, spec: { clusterIP: NEW_VIP, selector: { app: 'echo' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
  ]);
  const convergeMs = await until('the new Service works', async () => (await curl('demo/client', `http://${NEW_VIP}/`)).stdout === '200', 20_000);
  console.log(`# a Service written after the restart served traffic ${convergeMs} ms later`);
  // The waypoint reconnected too: a policy written after the restart is enforced there.
  const policyWritten = Date.now();
  mesh.writeConfig('30-shop-private.yaml', [{
    apiVersion: 'weft.dev/v1alpha1', kind: 'AuthorizationPolicy', metadata: { name: 'no-private', namespace: 'shop' },
    spec: { targetRefs: [{ kind: 'Service', group: '', name: 'shop' }], action: 'DENY', rules: [{ to: [{ operation: { paths: ['/private'] } }] }] },
  }]);
  const wpMs = await until('the waypoint enforces the new policy', async () => (await curl('shop/buyer', `http://${SHOP_VIP}/private`)).stdout === '403', 30_000);
  console.log(`# an L7 policy written after the restart was enforced by the waypoint ${wpMs} ms later`);
  assert.ok(Date.now() - policyWritten < 30_000);
  assert.equal((await curl('shop/buyer', `http://${SHOP_VIP}/`)).stdout, '200');
  assert.ok(Date.now() - written < 20_000);
  assert.equal((await curl('demo/client', `http://${VIP}/`)).stdout, '200');
});

// ---- config fuzzing (mutations: test/lab/config-fuzz.ts) -----------------------------------

test('randomly mutated config files never stop the controller or reach agents, a known-good request keeps working, and invalid objects are reported', async () => {
  const seed = Number(process.env.WEFT_FUZZ_SEED ?? Date.now() % 2 ** 31);
  const rounds = Number(process.env.WEFT_FUZZ_ROUNDS ?? 120);
  console.log(`# config fuzz seed ${seed} (rerun with WEFT_FUZZ_SEED=${seed}), ${rounds} rounds`);
  const rand = prng(seed);
  // The valid objects first, so the mutations replace something that is in force.
  mesh.writeConfig('90-fuzz.yaml', FUZZ_SEEDS);
  await sleep(300);
  const rejectedBefore = metricSum(await controllerMetrics(), 'weft_controller_rejected_objects_total');
  const logBefore = readFileSync(join(mesh.logDir, 'controller.log'), 'utf8').length;
  const history: string[] = [];
  for (let i = 0; i < rounds; i++) {
    const m = mutateFile(rand);
    history.push(`${i}: ${m.what}`);
    mesh.writeConfig('90-fuzz.yaml', m.text);
    await sleep(100);
    const c = mesh.controller!;
    assert.ok(c.exitCode === null && c.signalCode === null, `the controller is alive after round ${i} (seed ${seed}): ${m.what}\n${mesh.logTail('controller.log')}`);
    if (i % 30 === 29) {
      assert.equal((await curl('demo/client', `http://${VIP}/`)).stdout, '200', `known-good request after round ${i} (seed ${seed})\n${history.slice(-5).join('\n')}`);
    }
  }
  // Restore a valid file, let the controller settle, then check everything.
  mesh.writeConfig('90-fuzz.yaml', FUZZ_SEEDS);
  await until('the controller answers ready', async () => {
    const r = await requestInNetns(`/var/run/netns/${mesh.net.wireNetns}`, `http://${CONTROLLER_IP}:15021/healthz/ready`, { timeoutMs: 2_000 });
    return r.status === 200;
  }, 10_000);
  const m = await controllerMetrics();
  assert.equal(metricSum(m, 'weft_xds_nacks_total'), 0, 'no agent was ever sent a config it had to reject');
  const rejected = metricSum(m, 'weft_controller_rejected_objects_total') - rejectedBefore;
  const log = readFileSync(join(mesh.logDir, 'controller.log'), 'utf8').slice(logBefore);
  const refusedFiles = log.split('\n').filter((l) => l.includes('config file refused')).length;
  console.log(`# fuzz: ${rejected} invalid objects refused (metric), ${refusedFiles} unreadable files reported, over ${rounds} rounds`);
  assert.ok(rejected > rounds / 5, `invalid objects are counted (${rejected})`);
  assert.ok(refusedFiles > 0, 'unparsable files are reported');
  const internal = log.split('\n').filter((l) => l.includes('"level":"error"'));
  assert.deepEqual(internal, [], 'no mutation reached the compiler as an internal error (every bad object was refused by validation)');
  for (const n of NODES) {
    assert.equal((await mesh.agentReady(n)).ready, true, `${n} is still ready`);
    const agentLog = mesh.logTail(`agent-${n}.log`, 100_000);
    assert.doesNotMatch(agentLog, /config rejected/, `${n} never had to reject a config`);
  }
  assert.equal((await curl('demo/client', `http://${VIP}/`)).stdout, '200', 'the known-good request still works');
  // And the controller still applies valid changes after all that.
  mesh.writeConfig('20-new-service.yaml', [
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'echo-new', namespace: 'demo' }, spec: { clusterIP: '10.96.0.12', selector: { app: 'echo' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
  ]);
  await until('a valid change after fuzzing takes effect', async () => (await curl('demo/client', 'http://10.96.0.12/')).stdout === '200', 20_000);
});
